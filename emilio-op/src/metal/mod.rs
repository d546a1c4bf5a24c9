//! The Metal path (feature `metal`, Apple targets: `cfg(emilio_metal)`): `kernels/emilio.metal`
//! (`emilio_kernels::METAL_SOURCE`) driven through Candle's Metal backend.
//!
//! - [`crate::plan`]: what a call runs (kernels, arguments, buffers, grids), in plain Rust,
//!   shared with the CUDA path;
//! - `device`: the compiled library and pipelines, cached per device;
//! - `exec`: encodes a plan on the device's command encoder.
//!
//! The plans and the kernel source are tested on every platform (`crate::plan`'s tests: the
//! source's constants against the CPU path's, the plans run by the C++ SIMT emulator of
//! `kernels/check/`, which executes the kernels' own source); the device code only on a Mac
//! (`tests/tests/metal_*.rs`).
//!
//! Not yet run on Apple hardware by the project: see the README's "Apple GPUs (Metal)".

mod device;
mod exec;

pub(crate) use exec::run;
