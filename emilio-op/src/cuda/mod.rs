//! The CUDA path (feature `cuda`): `kernels/emilio.cu`, compiled to PTX by the kernels crate
//! (`emilio_kernels::PTX`, built by `kernels/build.rs`), driven through Candle's CUDA device.
//!
//! The kernels have the names and argument lists of the Metal ones, so the same
//! [`crate::plan`] describes a call on either GPU; [`exec`] launches a plan on a
//! `candle_core::CudaDevice`: one launch per dispatch, blocks for threadgroups, warps for
//! SIMD-groups, on the device's stream.
//!
//! The kernels' logic is checked on every platform by the plan's emulated tests
//! (`src/plan/tests/emulated.rs`, which run `kernels/emilio.cu` compiled as C++ in the SIMT
//! emulator of `kernels/check/`); what needs a GPU (nvcc's code, the launches, the hardware's
//! arithmetic) is tested by `tests/tests/cuda_*.rs` with `--features cuda` on a machine with an
//! NVIDIA GPU.

mod exec;

pub(crate) use exec::run;
