//! The GPU kernels of [emilio-op](https://crates.io/crates/emilio-op), as candle-kernels and
//! candle-metal-kernels hold Candle's: the sources, and the PTX built from the CUDA one.
//!
//! Both sources define the same kernel families with the same names and argument lists
//! (`emilio_ln_split_{contiguous,strided}_{dtype}`, `emilio_gemv_{out}_{mag}`,
//! `emilio_gemm_w_{out}_{mag}`, `emilio_gemm_a_{out}`), so one host-side plan in emilio-op
//! drives either GPU. Their arithmetic is the op's CPU path, operation for operation, and both
//! open with the same block of `#define EMILIO_…` constants, which emilio-op's tests hold to its
//! Rust constants. `kernels/check/` (the `emilio-kernels-check` crate, not published) compiles
//! them as C++ and runs them in a SIMT emulator, so they are tested without a GPU.

/// The Metal Shading Language source of every kernel (`emilio.metal`), compiled at run time by
/// the Metal device, with fast math off.
pub const METAL_SOURCE: &str = include_str!("../emilio.metal");

/// The CUDA C++ source of every kernel (`emilio.cu`); with the `cuda` feature, `PTX` is its
/// build.
pub const CUDA_SOURCE: &str = include_str!("../emilio.cu");

#[cfg(feature = "cuda")]
mod ptx {
    // `pub const EMILIO: &str`, written by build.rs.
    include!(concat!(env!("OUT_DIR"), "/ptx.rs"));
}

/// The PTX of [`CUDA_SOURCE`], compiled at build time by nvcc with `--fmad=false -O3` (no
/// fused multiply-add where the source does not ask for one, no fast math).
#[cfg(feature = "cuda")]
pub const PTX: &str = ptx::EMILIO;

/// A GPU backend with emilio kernels: the kernels are the same on both, some messages are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Apple GPUs, through Metal ([`METAL_SOURCE`]).
    Metal,
    /// NVIDIA GPUs, through CUDA ([`CUDA_SOURCE`]).
    Cuda,
}

impl Backend {
    /// Both backends.
    pub const ALL: [Backend; 2] = [Backend::Metal, Backend::Cuda];

    /// The backend's name in messages: `Metal` or `CUDA`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Metal => "Metal",
            Backend::Cuda => "CUDA",
        }
    }

    /// The backend's kernel source.
    pub fn source(self) -> &'static str {
        match self {
            Backend::Metal => METAL_SOURCE,
            Backend::Cuda => CUDA_SOURCE,
        }
    }

    /// The file name of the backend's kernel source in `kernels/`.
    pub fn source_file(self) -> &'static str {
        match self {
            Backend::Metal => "emilio.metal",
            Backend::Cuda => "emilio.cu",
        }
    }
}
