//! The log-domain Qwen2 on an Apple GPU (`--features metal`): the device-generic suite
//! `gpu/model.rs` (against stock Candle and the CPU model, prefill then decode, under the
//! tolerance of `qwen_parity.rs`) on `Device::new_metal(0)`.
//!
//! Run on a Mac with:
//! `cargo test -p emilio-tests --features metal --test metal_op --test metal_model`
//!
//! Without the feature these tests are compiled and reported as ignored.

#[macro_use]
mod gpu;
#[path = "gpu/model.rs"]
mod model;
mod parity;

gpu_tests!(
    model,
    candle_core::Device::new_metal(0),
    "metal",
    #[cfg_attr(not(feature = "metal"), ignore = "needs --features metal and an Apple GPU")]
);
