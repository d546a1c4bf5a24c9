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
pub(crate) use exec::run;
