//! Checks of the CUDA kernel source with NVIDIA's own compiler, no GPU needed (they run in CI,
//! which installs nvcc from PyPI with `scripts/cuda-toolkit.sh --compiler-only`):
//!
//! - `kernels/emilio.cu` compiles to PTX with the flags `kernels/build.rs` uses, for the oldest
//!   and the newest architecture the project names (sm_80, sm_90), and the PTX has an `.entry`
//!   for every `__global__` kernel of the source ([`source::kernels`]), and no other; that
//!   these are exactly the kernels emilio-op's plans launch is a plan test
//!   (`emilio-op/src/plan/tests/kernel_source.rs`);
//! - ptxas, for sm_90, gives every kernel a frame of 0 bytes and no spills: the per-row
//!   accumulators and the GEMM tiles stay in registers and shared memory, as written;
//! - the f16 and f32 GEMV kernels contain 16-byte global loads (`ld.global[.nc].v4`): the vectorised
//!   loop survives compilation, the coalesced reads the decode path is designed around;
//! - the PTX contains no approximate transcendental (`ex2.approx`, `lg2.approx`): the kernels'
//!   exp and ln are the CPU's polynomials, not the hardware's.
//!
//! The kernels' behaviour is tested by emilio-op's plan tests (`emilio-op/src/plan/tests/`),
//! which run them compiled as C++ in the SIMT emulator (`emilio_kernels_check::emulator`). nvcc
//! is `$NVCC`, else `nvcc` on `PATH`, else `$CUDA_HOME/bin/nvcc`; without one these tests are
//! skipped with a note, except under `CI=true`, where they fail.

use std::path::{Path, PathBuf};
use std::process::Command;

use emilio_kernels::{Backend, CUDA_SOURCE};
use emilio_kernels_check::source;

/// Every kernel of kernels/emilio.cu.
fn kernels() -> Vec<String> {
    let names = source::kernels(CUDA_SOURCE);
    assert!(!names.is_empty(), "kernels/emilio.cu defines no kernel");
    names
}

/// The flags of `kernels/build.rs` that the arithmetic depends on, plus its language level.
const FLAGS: [&str; 3] = ["--fmad=false", "-std=c++17", "-O3"];

fn nvcc() -> Option<PathBuf> {
    let candidates = std::env::var_os("NVCC")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from("nvcc")])
        .chain(std::env::var_os("CUDA_HOME").map(|h| PathBuf::from(h).join("bin/nvcc")));
    for c in candidates {
        let works = Command::new(&c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if works {
            return Some(c);
        }
    }
    assert!(
        !emilio_kernels_check::in_ci(),
        "no nvcc found ($NVCC, PATH, $CUDA_HOME/bin): kernels/emilio.cu cannot be checked; \
         run scripts/cuda-toolkit.sh --compiler-only and eval its --env output"
    );
    eprintln!("note: no nvcc found; skipping the CUDA source checks");
    None
}

/// Runs nvcc on kernels/emilio.cu with [`FLAGS`] and `args`; returns stdout + stderr.
fn compile(nvcc: &Path, args: &[&str], out: &Path) -> String {
    let output = Command::new(nvcc)
        .args(FLAGS)
        .args(args)
        .arg(emilio_kernels_check::source_path(Backend::Cuda))
        .arg("-o")
        .arg(out)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", nvcc.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "nvcc {args:?} rejects kernels/emilio.cu:\n{text}"
    );
    text
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("emilio-cuda-source-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// The PTX of one `.entry`, from its name to the end of its body.
fn entry<'a>(ptx: &'a str, name: &str) -> &'a str {
    let start = ptx
        .find(&format!(".entry {name}("))
        .unwrap_or_else(|| panic!("the PTX has no kernel {name}"));
    let rest = &ptx[start..];
    let end = rest[1..].find(".entry ").map_or(rest.len(), |e| e + 1);
    &rest[..end]
}

#[test]
fn compiles_to_ptx_with_every_kernel_of_the_source() {
    let Some(nvcc) = nvcc() else { return };
    let kernels = kernels();
    for arch in ["compute_80", "compute_90"] {
        let out = scratch(&format!("emilio-{arch}.ptx"));
        compile(&nvcc, &["--ptx", &format!("-arch={arch}")], &out);
        let ptx = std::fs::read_to_string(&out).unwrap();
        let entries = ptx.matches(".entry ").count();
        assert_eq!(entries, kernels.len(), "{arch}: kernels in the PTX");
        for name in &kernels {
            entry(&ptx, name);
        }
        for approx in ["ex2.approx", "lg2.approx"] {
            assert!(
                !ptx.contains(approx),
                "{arch}: the PTX uses {approx}; the kernels must use the CPU's exp and ln"
            );
        }
        for name in kernels.iter().filter(|k| k.starts_with("emilio_gemv_")) {
            let body = entry(&ptx, name);
            assert!(
                body.contains("ld.global.v4.") || body.contains("ld.global.nc.v4."),
                "{arch}: {name} has no 16-byte (v4) load: the vectorised GEMV loop is gone"
            );
        }
        eprintln!("nvcc {arch}: {entries} kernels, 16-byte GEMV loads, no approximate exp/ln");
    }
}

#[test]
fn every_kernel_keeps_its_state_in_registers_on_sm_90() {
    let Some(nvcc) = nvcc() else { return };
    let out = scratch("emilio-sm_90.cubin");
    let report = compile(&nvcc, &["-cubin", "-arch=sm_90", "--resource-usage"], &out);
    let mut seen = 0;
    for line in report.lines() {
        if let Some(rest) = line.split("Function properties for ").nth(1) {
            seen += 1;
            let name = rest.trim();
            let props = report
                .lines()
                .skip_while(|l| !l.ends_with(&format!("Function properties for {name}")))
                .nth(1)
                .unwrap_or_default();
            assert!(
                props.contains("0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads"),
                "{name} on sm_90: {props}"
            );
        }
    }
    assert_eq!(seen, kernels().len(), "ptxas reported:\n{report}");
    eprintln!("ptxas sm_90: {seen} kernels, no stack frame, no spills");
}
