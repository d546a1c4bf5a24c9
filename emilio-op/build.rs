//! Sets `cfg(emilio_metal)` where the Metal path builds: the `metal` feature on an Apple target,
//! or anywhere under `--cfg emilio_metal_typecheck` (which `kernels/check/metal_host_typecheck.sh`
//! passes to type-check the Metal host code on Linux; nothing it builds is linked or run). The
//! Metal device code and the `metal_fwd` paths are gated on this one cfg.
//!
//! The CUDA path needs no cfg of its own: the `cuda` feature builds everywhere, and its PTX is
//! built by the kernels crate (`kernels/build.rs`).

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rustc-check-cfg=cfg(emilio_metal)");
    let metal = std::env::var_os("CARGO_FEATURE_METAL").is_some();
    let apple = std::env::var("CARGO_CFG_TARGET_VENDOR").as_deref() == Ok("apple");
    // Cargo gives build scripts the target's cfgs, RUSTFLAGS' `--cfg` ones included.
    let typecheck = std::env::var_os("CARGO_CFG_EMILIO_METAL_TYPECHECK").is_some();
    if metal && (apple || typecheck) {
        println!("cargo::rustc-cfg=emilio_metal");
    }
}
