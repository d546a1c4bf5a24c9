//! The log-domain Qwen2 on an NVIDIA GPU (`--features cuda`): the device-generic suite
//! `gpu/model.rs` (against stock Candle and the CPU model, prefill then decode, under the
//! tolerance of `qwen_parity.rs`) on `Device::new_cuda(0)`.
//!
//! Run on a machine with an NVIDIA GPU and the CUDA toolkit (README, "NVIDIA GPUs (CUDA)", says
//! how to get one) with:
//! `cargo test -p emilio-tests --features cuda --test cuda_op --test cuda_model`
//!
//! Without the feature these tests are compiled and reported as ignored.

#[macro_use]
mod gpu;
#[path = "gpu/model.rs"]
mod model;
mod parity;

gpu_tests!(
    model,
    candle_core::Device::new_cuda(0),
    "cuda",
    #[cfg_attr(not(feature = "cuda"), ignore = "needs --features cuda and an NVIDIA GPU")]
);
