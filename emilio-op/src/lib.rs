//! Log-domain matrix products for [Candle](https://github.com/huggingface/candle).
//!
//! Every product is computed as `a·b = s(a)·s(b)·exp(ln|a| + ln|b|)`, with `s = ±1` from the
//! sign bit, and summed in `f32` (`f64` for `f64` inputs). The op follows IEEE semantics at
//! every edge (zeros with their signs, subnormals, infinities, NaN), and a product overflows or
//! underflows exactly where the true product does, because `exp` is only ever applied to the
//! sum of both logs.
//!
//! - [`log_matmul`] / [`broadcast_log_matmul`]: two activations, the shape rules of
//!   `Tensor::matmul` / `broadcast_matmul` (attention's `Q·Kᵀ` and `P·V`).
//! - [`LogWeight`]: a weight converted once into a [`WeightFormat`]: `ln|w|` (`f32` or
//!   `f16`) plus one sign bit per weight, or log codes against group offsets (`lns8`, `lns4`).
//! - [`LogLinear`] ([`log_linear`], [`log_linear_no_bias`]): a drop-in `candle_nn::Linear`.
//! - [`ExpMode`] and [`WeightFormat`]: the precision dial. `exact` by default; `fast`,
//!   `mitchell` (Mitchell's piecewise-linear exp) and `lmul` (L-Mul) trade a stated error per
//!   product for speed, in [`log_matmul_with`] and through a [`LogConfig`] in [`LogWeight`] and
//!   [`LogLinear`]; the `lns8` and `lns4` formats store 8.5 and 4.5 bits per weight
//!   ([`format`]: one module per format), and `table` looks `lns4` products up in
//!   per-activation tables of exact exps.
//! - [`OpError`]: what the op refuses, in this crate's terms, for an application to turn into
//!   advice about its own options.
//!
//! # Using the op in your own model
//! Swap `candle_nn::linear` for [`log_linear`] and `matmul` for [`log_matmul`]:
//!
//! ```
//! use std::collections::HashMap;
//! use candle_core::{DType, Device, Module, Result, Tensor, D};
//! use candle_nn::VarBuilder;
//! use emilio_op::{log_linear_no_bias, log_matmul, LogLinear, WeightFormat};
//!
//! /// A single-head self-attention block, every product in the log domain.
//! struct Attention {
//!     qkv: LogLinear,
//!     out: LogLinear,
//!     dim: usize,
//! }
//!
//! impl Attention {
//!     fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
//!         let f = WeightFormat::F16;
//!         Ok(Self {
//!             qkv: log_linear_no_bias(dim, 3 * dim, f, vb.pp("qkv"))?,
//!             out: log_linear_no_bias(dim, dim, f, vb.pp("out"))?,
//!             dim,
//!         })
//!     }
//!
//!     fn forward(&self, x: &Tensor) -> Result<Tensor> {
//!         let qkv = self.qkv.forward(x)?;
//!         let q = qkv.narrow(D::Minus1, 0, self.dim)?;
//!         let k = qkv.narrow(D::Minus1, self.dim, self.dim)?;
//!         let v = qkv.narrow(D::Minus1, 2 * self.dim, self.dim)?;
//!         // Strided operands are fine: the op reads them through their layout.
//!         let scores = (log_matmul(&q, &k.t()?)? / (self.dim as f64).sqrt())?;
//!         let probs = candle_nn::ops::softmax_last_dim(&scores)?;
//!         self.out.forward(&log_matmul(&probs, &v)?)
//!     }
//! }
//!
//! let dev = Device::Cpu;
//! let tensors = HashMap::from([
//!     ("qkv.weight".to_string(), Tensor::randn(0f32, 0.1, (48, 16), &dev)?),
//!     ("out.weight".to_string(), Tensor::randn(0f32, 0.1, (16, 16), &dev)?),
//! ]);
//! let attn = Attention::new(16, VarBuilder::from_tensors(tensors, DType::F32, &dev))?;
//! let y = attn.forward(&Tensor::randn(0f32, 1.0, (2, 7, 16), &dev)?)?;
//! assert_eq!(y.dims(), &[2, 7, 16]);
//! # Ok::<(), candle_core::Error>(())
//! ```
//!
//! # Accuracy
//! Relative error of one product in the `f32` path: `(|ln|a|| + |ln|b|| + |ln|a|+ln|b||)·2⁻²⁴`
//! from rounding the logs and their sum, plus the `exp`'s (≤ 2 ulp). With [`WeightFormat::F16`]
//! the weight's log is rounded to 11 bits: `|ln|w||·2⁻¹¹` on top. Sums are taken in a different
//! order from stock matmul, so compare with a tolerance that grows with `k`.
//!
//! # Devices
//! The CPU kernels are multi-threaded (rayon over output columns). CUDA and Metal kernels are
//! built with the `cuda` / `metal` features; without them the op returns an error naming the
//! feature to build with.

#![warn(missing_docs)]

mod backend;
mod check;
mod cpu;
mod error;
mod exp_mode;
pub mod format;
// The CUDA path: kernels/emilio.cu as PTX, launched through Candle's CUDA device.
#[cfg(feature = "cuda")]
mod cuda;
mod linear;
mod linear_op;
mod matmul;
// The Metal path: kernels/emilio.metal through Candle's Metal device (`cfg(emilio_metal)`: the
// `metal` feature on an Apple target, see build.rs).
#[cfg(emilio_metal)]
mod metal;
pub mod packing;
// What a GPU call runs, shared by the Metal and CUDA paths; its tests run the plans of both in
// the C++ SIMT emulator on every platform.
#[cfg(any(test, emilio_metal, feature = "cuda"))]
mod plan;
mod weight;

/// The SIMD instruction set the CPU kernels use in this process (`avx512`, `avx2`, `neon` or
/// `baseline`): the best the CPU has, or a narrower one named by the `EMILIO_CPU_ISA`
/// environment variable (read once; names the CPU lacks are ignored).
pub fn cpu_isa() -> &'static str {
    cpu::isa::Isa::get().name()
}

pub use error::OpError;
pub use exp_mode::ExpMode;
pub use format::{LogConfig, WeightFormat};
pub use linear::{log_linear, log_linear_b, log_linear_no_bias, LogLinear};
pub use matmul::{broadcast_log_matmul, broadcast_log_matmul_with, log_matmul, log_matmul_with};
pub use weight::LogWeight;
