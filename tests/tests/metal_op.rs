//! The op on an Apple GPU (`--features metal`): the device-generic suite `gpu/op.rs`
//! (`log_matmul` and `LogLinear` against the `f64` reference and the CPU op) on
//! `Device::new_metal(0)`.
//!
//! Run on a Mac with:
//! `cargo test -p emilio-tests --features metal --test metal_op --test metal_model`
//!
//! Without the feature these tests are compiled (so they keep building) and reported as ignored.
//! The kernels' logic is also checked on every platform by emilio-op's emulated plan tests
//! (`emilio-op/src/plan/tests/emulated.rs`); these tests are what only Apple hardware can answer: the
//! Metal compiler, the GPU's arithmetic (subnormals, conversions) and the encoding.

#[macro_use]
mod gpu;
#[path = "gpu/op.rs"]
mod op;

gpu_tests!(
    op,
    candle_core::Device::new_metal(0),
    "metal",
    #[cfg_attr(not(feature = "metal"), ignore = "needs --features metal and an Apple GPU")]
);
