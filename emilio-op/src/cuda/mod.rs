//! The CUDA path (feature `cuda`): `kernels/emilio.cu`, compiled to PTX by `build.rs`, driven
//! through Candle's CUDA device.
//!
//! The kernels have the names and argument lists of the Metal ones, so the same
//! [`crate::plan`] describes a call on either GPU; [`exec`] launches a plan on a
//! `candle_core::CudaDevice`: one launch per dispatch, blocks for threadgroups, warps for
//! SIMD-groups, on the device's stream.
//!
//! The kernels' logic is checked on every platform by emilio-op's emulator tests
//! (`src/emulate.rs`, which runs `kernels/emilio.cu` compiled as C++); what needs a GPU (nvcc's
//! code, the launches, the hardware's arithmetic) is tested by `tests/tests/cuda_*.rs` with
//! `--features cuda` on a machine with an NVIDIA GPU.

mod exec;

pub(crate) use exec::run;
