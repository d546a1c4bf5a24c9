//! The Metal path (feature `metal`, Apple targets): `kernels/emilio.metal` driven through
//! Candle's Metal backend.
//!
//! - [`source`]: the kernel source, embedded, and the constants it shares with the CPU path.
//! - [`crate::plan`]: what a call runs (kernels, arguments, buffers, grids), in plain Rust,
//!   shared with the CUDA path.
//! - `device`: the compiled library and pipelines, cached per device (Apple targets only).
//! - `exec`: encodes a plan on the device's command encoder (Apple targets only).
//!
//! `source` and `plan` are also built for the tests on every platform: the constants are
//! checked against [`crate::packing`] and the CPU kernels, and the plans run through the C++
//! SIMT emulator (`crate::emulate`, tests only, shared with the CUDA kernels), which executes
//! the kernels' own source.
//!
//! Not yet run on Apple hardware by the project: see the README's "Apple GPUs (Metal)".

// `source` and `plan` serve the Apple build and the tests; elsewhere (the Linux CI with the
// feature off) only the tests use them.
#![cfg_attr(
    not(all(
        feature = "metal",
        any(target_vendor = "apple", emilio_metal_typecheck)
    )),
    allow(dead_code)
)]

pub(crate) mod source;

#[cfg(all(
    feature = "metal",
    any(target_vendor = "apple", emilio_metal_typecheck)
))]
mod device;
#[cfg(all(
    feature = "metal",
    any(target_vendor = "apple", emilio_metal_typecheck)
))]
mod exec;

#[cfg(all(
    feature = "metal",
    any(target_vendor = "apple", emilio_metal_typecheck)
))]
pub(crate) use ops::{log_linear, log_matmul};

#[cfg(all(
    feature = "metal",
    any(target_vendor = "apple", emilio_metal_typecheck)
))]
mod ops {
    use candle_core::backend::BackendStorage;
    use candle_core::{bail, Layout, MetalStorage, Result, Shape};

    use super::exec;
    use crate::plan::{self, Gpu};

    /// `LogMatMul::metal_fwd`: `(m, k, n)` as `crate::matmul` checked them.
    pub(crate) fn log_matmul(
        a: &MetalStorage,
        la: &Layout,
        b: &MetalStorage,
        lb: &Layout,
        dims: (usize, usize, usize),
    ) -> Result<(MetalStorage, Shape)> {
        if a.dtype() != b.dtype() {
            bail!(
                "log_matmul supports two operands of the same float dtype (f32, f16, bf16 on \
                 Metal), got {:?} and {:?}",
                a.dtype(),
                b.dtype()
            );
        }
        let plan = plan::log_matmul(Gpu::Metal, a.dtype(), la, lb, dims)?;
        let out = exec::run(&plan, &[a, b])?;
        Ok((out, plan.output_shape))
    }

    /// `LogLinearOp::metal_fwd`.
    pub(crate) fn log_linear(
        x: &MetalStorage,
        lx: &Layout,
        mags: &MetalStorage,
        lm: &Layout,
        signs: &MetalStorage,
        ls: &Layout,
    ) -> Result<(MetalStorage, Shape)> {
        let plan = plan::log_linear(
            Gpu::Metal,
            x.dtype(),
            lx,
            mags.dtype(),
            lm,
            signs.dtype(),
            ls,
        )?;
        let out = exec::run(&plan, &[x, mags, signs])?;
        Ok((out, plan.output_shape))
    }
}
