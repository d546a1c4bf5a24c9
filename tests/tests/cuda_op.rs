//! The op on an NVIDIA GPU (`--features cuda`): the device-generic suite `gpu/op.rs`
//! (`log_matmul` and `LogLinear` against the `f64` reference and the CPU op) on
//! `Device::new_cuda(0)`.
//!
//! Run on a machine with an NVIDIA GPU and the CUDA toolkit (README, "NVIDIA GPUs (CUDA)", says
//! how to get one) with:
//! `cargo test -p emilio-tests --features cuda --test cuda_op --test cuda_model`
//!
//! Without the feature these tests are compiled (so they keep building) and reported as ignored.

#[macro_use]
mod gpu;
#[path = "gpu/op.rs"]
mod op;

gpu_tests!(
    op,
    candle_core::Device::new_cuda(0),
    "cuda",
    #[cfg_attr(not(feature = "cuda"), ignore = "needs --features cuda and an NVIDIA GPU")]
);
