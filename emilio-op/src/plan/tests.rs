//! Tests of the GPU plans, on every platform: no GPU is needed.
//!
//! - [`checks`]: what the plans refuse, and which kernels they choose;
//! - [`kernel_source`]: the kernel sources held to the Rust side (the shared constants against
//!   the CPU's `exp`/`ln`, the sign packing and the tiling; the kernels they define against the
//!   names the plans form);
//! - [`emulated`]: the plans run by the SIMT emulator of `kernels/check/` on both kernel
//!   sources, compared with the CPU path, through the bridge in [`emulator`].
//!
//! What this cannot cover: the Metal and CUDA compilers, the GPUs' own arithmetic and the
//! device code (`metal/exec.rs`, `cuda/`); those need the hardware (`tests/tests/metal_*.rs`,
//! `tests/tests/cuda_*.rs`).

/// One `#[test]` per backend for each named function `fn NAME(gpu: Backend)` of the enclosing
/// module: `metal::NAME` and `cuda::NAME`.
macro_rules! per_backend {
    ($($name:ident),+ $(,)?) => {
        mod metal {
            $(
                #[test]
                fn $name() {
                    super::$name(emilio_kernels::Backend::Metal)
                }
            )+
        }
        mod cuda {
            $(
                #[test]
                fn $name() {
                    super::$name(emilio_kernels::Backend::Cuda)
                }
            )+
        }
    };
}

/// `gpu`'s emulator, or return from the test (no C++ compiler, outside CI).
macro_rules! emulator_or_skip {
    ($gpu:expr) => {
        match Emulator::get($gpu) {
            Some(em) => em,
            None => return,
        }
    };
}

mod checks;
mod emulated;
mod emulator;
mod kernel_source;
