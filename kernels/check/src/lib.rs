//! Checks of the GPU kernels in `kernels/` on machines without a GPU, kept apart from the
//! library crates the way llama.cpp keeps `tests/test-backend-ops.cpp` apart from `ggml/src`.
//!
//! - [`cxx`]: the C++ compiler every check uses (found once, here);
//! - [`emulator`]: the SIMT emulator (`emulate.cpp`), which runs a kernel source compiled as
//!   C++ against a stub of its platform (`metal_stdlib_stub.h`, `cuda_stub.h`), and its
//!   driver: a backend-neutral [`emulator::Program`] (kernel names, buffers, scalars, grids) in,
//!   the output buffer out. emilio-op's plan tests (`emilio-op/src/plan/tests/`) turn its GPU
//!   plans into programs and compare the results with its CPU path;
//! - [`source`]: what a kernel source defines: its kernels, and its shared-constants block;
//! - `tests/`: the sources compile as C++ against the stubs (`metal_source.rs`), and with nvcc
//!   when it is installed (`cuda_source.rs`).
//!
//! A check that needs a tool the machine lacks (a C++ compiler, nvcc) is skipped with a note,
//! except under `CI=true`, where it fails.

use std::path::{Path, PathBuf};

use emilio_kernels::Backend;

pub mod cxx;
pub mod emulator;
pub mod source;

/// `kernels/check/`: the emulator and the platform stubs.
pub fn check_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `kernels/`: the kernel sources.
pub fn kernels_dir() -> &'static Path {
    check_dir()
        .parent()
        .expect("kernels/check lives in kernels/")
}

/// The file of `backend`'s kernel source (`kernels/emilio.metal`, `kernels/emilio.cu`).
pub fn source_path(backend: Backend) -> PathBuf {
    kernels_dir().join(backend.source_file())
}

/// The stand-in for `backend`'s platform headers that lets its source compile as C++.
pub fn stub_path(backend: Backend) -> PathBuf {
    check_dir().join(match backend {
        Backend::Metal => "metal_stdlib_stub.h",
        Backend::Cuda => "cuda_stub.h",
    })
}

/// Whether a check that lacks a tool must fail instead of being skipped: `CI=true`.
pub fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}
