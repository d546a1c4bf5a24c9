//! Tests of the GPU paths on machines without a GPU: the [`Plan`]s the Metal and CUDA ops would
//! run, executed by the C++ SIMT emulator (`kernels/check/emulate.cpp`) on the kernels' own
//! source, compiled as C++ against a stub of the platform (`kernels/emilio.metal` with
//! `kernels/check/metal_stdlib_stub.h`; `kernels/emilio.cu` with `kernels/check/cuda_stub.h`),
//! and compared with the CPU path. Every emulated test runs once per backend
//! (`tests::metal::NAME`, `tests::cuda::NAME`).
//!
//! What this covers: the plans (kernel choice and names, argument order, strides and offsets,
//! temporary buffers, grids), the kernels' index arithmetic, tiling, barriers, SIMD-group and
//! warp exchanges (CUDA's butterfly sums in the hardware's order, exactly: they are explicit
//! shuffles), the CUDA GEMV's vectorised and scalar loops (which one ran is counted), and their
//! arithmetic as C++ executes it (bit for bit the CPU's `exp`/`ln` with fused multiply-add).
//! What it cannot: the Metal and CUDA compilers, the GPUs' own arithmetic, memory ordering
//! beyond the barriers, and the device code (`metal/exec.rs`, `cuda/`); those need the
//! hardware (`tests/tests/metal_*.rs`, `tests/tests/cuda_*.rs`).
//!
//! Each emulator (one per backend) is built once per test process with the first C++ compiler
//! found (`$CXX`, `c++`, `g++`, `clang++`), with AddressSanitizer and the alignment sanitizer
//! where the toolchain has them, so that any access past a buffer, or a misaligned 16-byte
//! load, fails the test. Without a compiler the tests are skipped with a note, except under
//! `CI=true`, where they fail.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Device, Layout, Storage, Tensor};

use crate::plan::{Arg, Buf, Gpu, Plan};

/// The backend's name in messages and file names.
fn backend_name(gpu: Gpu) -> &'static str {
    match gpu {
        Gpu::Metal => "Metal",
        Gpu::Cuda => "CUDA",
    }
}

/// The files an emulator build compiles (the hash of its binary's name covers them).
fn sources(gpu: Gpu) -> [&'static str; 3] {
    match gpu {
        Gpu::Metal => [
            "kernels/check/emulate.cpp",
            "kernels/check/metal_stdlib_stub.h",
            "kernels/emilio.metal",
        ],
        Gpu::Cuda => [
            "kernels/check/emulate.cpp",
            "kernels/check/cuda_stub.h",
            "kernels/emilio.cu",
        ],
    }
}

/// The define that selects the backend in `emulate.cpp`.
fn defines(gpu: Gpu) -> &'static [&'static str] {
    match gpu {
        Gpu::Metal => &[],
        Gpu::Cuda => &["-DEMILIO_EMULATE_CUDA"],
    }
}

/// An emulator binary and the backend whose kernels it runs.
struct Emulator {
    exe: PathBuf,
    gpu: Gpu,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("emilio-op lives in the workspace")
        .to_path_buf()
}

fn find_cxx() -> Option<String> {
    let candidates = std::env::var("CXX")
        .ok()
        .into_iter()
        .chain(["c++", "g++", "clang++"].map(String::from));
    candidates.into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

const FLAGS: [&str; 6] = [
    "-std=c++17",
    "-O1",
    "-ffp-contract=off",
    "-fno-strict-aliasing",
    "-Wno-attributes",
    "-pthread",
];

/// Sanitizers, best first: AddressSanitizer and the alignment check, AddressSanitizer alone,
/// none (a toolchain without them still checks everything else).
const SANITIZERS: [&[&str]; 3] = [
    &[
        "-fsanitize=address,alignment",
        "-fno-sanitize-recover=all",
        "-fno-omit-frame-pointer",
    ],
    &["-fsanitize=address", "-fno-omit-frame-pointer"],
    &[],
];

/// Compiles the emulator of `gpu`'s kernels, or reuses the one built from the same sources,
/// compiler and flags (in the temp dir, named by a hash of all of them).
fn build(gpu: Gpu) -> Option<Emulator> {
    let name = backend_name(gpu);
    let Some(cxx) = find_cxx() else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "no C++ compiler found (tried $CXX, c++, g++, clang++): the {name} kernels \
                 cannot be checked; install g++"
            );
        }
        eprintln!("note: no C++ compiler found; skipping the emulated {name} kernel tests");
        return None;
    };
    let root = repo_root();
    let source = root.join(sources(gpu)[0]);
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for file in sources(gpu) {
        std::fs::read(root.join(file)).unwrap().hash(&mut hasher);
    }
    (&cxx, FLAGS, defines(gpu), SANITIZERS).hash(&mut hasher);
    let exe = std::env::temp_dir().join(format!(
        "emilio-{}-emulate-{:016x}",
        name.to_lowercase(),
        hasher.finish()
    ));
    if exe.is_file() {
        return Some(Emulator { exe, gpu });
    }
    // Built under a private name, then renamed into place: concurrent test processes race
    // harmlessly.
    let building = exe.with_extension(format!("building-{}", std::process::id()));
    let compile = |extra: &[&str]| {
        Command::new(&cxx)
            .args(FLAGS)
            .args(defines(gpu))
            .args(extra)
            .arg(&source)
            .arg("-o")
            .arg(&building)
            .output()
            .expect("running the C++ compiler")
    };
    let mut last = None;
    for sanitizers in SANITIZERS {
        let out = compile(sanitizers);
        if out.status.success() {
            last = None;
            break;
        }
        last = Some(out);
    }
    if let Some(failed) = last {
        panic!(
            "{cxx} cannot compile kernels/check/emulate.cpp (with {}):\n{}",
            sources(gpu)[2],
            String::from_utf8_lossy(&failed.stderr)
        );
    }
    std::fs::rename(&building, &exe).expect("moving the emulator into place");
    Some(Emulator { exe, gpu })
}

/// `gpu`'s emulator, built on first use.
fn emulator(gpu: Gpu) -> Option<&'static Emulator> {
    static METAL: OnceLock<Option<Emulator>> = OnceLock::new();
    static CUDA: OnceLock<Option<Emulator>> = OnceLock::new();
    let cell = match gpu {
        Gpu::Metal => &METAL,
        Gpu::Cuda => &CUDA,
    };
    cell.get_or_init(|| build(gpu)).as_ref()
}

/// The raw bytes of a CPU storage (little-endian elements).
fn storage_bytes(s: &CpuStorage) -> Vec<u8> {
    match s {
        CpuStorage::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        CpuStorage::F16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        CpuStorage::BF16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        CpuStorage::U32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        other => panic!("no emulator input of dtype {:?}", other.dtype()),
    }
}

/// A tensor's whole storage (as a device buffer would hold it) and its layout.
fn operand(t: &Tensor) -> (Vec<u8>, Layout) {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => (storage_bytes(s), layout.clone()),
        _ => panic!("emulator operands are CPU tensors"),
    }
}

/// What one emulator run gives back.
struct Ran {
    /// The output buffer.
    output: Vec<u8>,
    /// Per dispatch, the 16-byte loads the CUDA kernels made through `uint4` (0 for Metal).
    vector_loads: Vec<usize>,
}

impl Emulator {
    /// Runs `plan` over `operands` (whole storages).
    fn run(&self, plan: &Plan, operands: &[Vec<u8>]) -> Ran {
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "emilio-emulate-run-{}-{}",
            std::process::id(),
            RUNS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        const OUTPUT: usize = 1000;
        const TEMP: usize = 2000;
        let id = |b: Buf| match b {
            Buf::Operand(i) => i,
            Buf::Temp(i) => TEMP + i,
            Buf::Output => OUTPUT,
        };
        let mut manifest = String::new();
        for (i, bytes) in operands.iter().enumerate() {
            let path = dir.join(format!("operand{i}.bin"));
            std::fs::write(&path, bytes).unwrap();
            manifest += &format!("buffer {i} {} {}\n", bytes.len(), path.display());
        }
        for (i, bytes) in plan.temps.iter().enumerate() {
            manifest += &format!("buffer {} {bytes} -\n", TEMP + i);
        }
        let out_bytes = plan.output_elems * plan.output_dtype.size_in_bytes();
        manifest += &format!("buffer {OUTPUT} {out_bytes} -\n");
        for d in &plan.dispatches {
            let [gx, gy, gz] = d.groups;
            let [tx, ty, tz] = d.threads;
            manifest += &format!("dispatch {} {gx} {gy} {gz} {tx} {ty} {tz}\n", d.kernel);
            for a in &d.args {
                manifest += &match a {
                    Arg::U32(v) => format!("u32 {v}\n"),
                    Arg::U32s(v) => {
                        let vs: Vec<String> = v.iter().map(u32::to_string).collect();
                        format!("u32s {} {}\n", v.len(), vs.join(" "))
                    }
                    Arg::Read { buf, offset } | Arg::Write { buf, offset } => {
                        format!("buf {} {offset}\n", id(*buf))
                    }
                };
            }
            manifest += "end\n";
        }
        let out_path = dir.join("output.bin");
        manifest += &format!("output {OUTPUT} {}\n", out_path.display());
        let manifest_path = dir.join("manifest.txt");
        std::fs::write(&manifest_path, manifest).unwrap();
        let run = Command::new(&self.exe)
            .arg(&manifest_path)
            .env("ASAN_OPTIONS", "detect_leaks=0")
            .output()
            .expect("running the emulator");
        assert!(
            run.status.success(),
            "the emulator ({}) failed on {} (inputs kept in {}):\n{}",
            self.exe.display(),
            plan.label,
            dir.display(),
            String::from_utf8_lossy(&run.stderr)
        );
        // One line per dispatch: `ran KERNEL vector_loads N`.
        let report = String::from_utf8(run.stdout).expect("the emulator reports in UTF-8");
        let vector_loads: Vec<usize> = report
            .lines()
            .map(
                |line| match line.split_whitespace().collect::<Vec<_>>()[..] {
                    ["ran", _, "vector_loads", n] => n.parse().expect("a count"),
                    _ => panic!("unexpected emulator report line {line:?}"),
                },
            )
            .collect();
        assert_eq!(vector_loads.len(), plan.dispatches.len(), "{report}");
        let output = std::fs::read(&out_path).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        Ran {
            output,
            vector_loads,
        }
    }
}

fn output_tensor(plan: &Plan, bytes: &[u8]) -> Tensor {
    Tensor::from_raw_buffer(
        bytes,
        plan.output_dtype,
        plan.output_shape.dims(),
        &Device::Cpu,
    )
    .unwrap()
}

/// `log_matmul(a, b)` as the emulator's GPU path computes it.
fn emulated_matmul(em: &Emulator, a: &Tensor, b: &Tensor) -> Tensor {
    let r = a.rank();
    let dims = (a.dims()[r - 2], a.dims()[r - 1], b.dims()[r - 1]);
    let (ab, la) = operand(a);
    let (bb, lb) = operand(b);
    let plan = crate::plan::log_matmul(em.gpu, a.dtype(), b.dtype(), &la, &lb, dims).unwrap();
    output_tensor(&plan, &em.run(&plan, &[ab, bb]).output)
}

/// A linear layer as a GPU path computes it, emulated.
struct Linear {
    y: Tensor,
    /// The kernel of the product (the last dispatch).
    kernel: String,
    /// Its 16-byte loads (CUDA's vectorised GEMV loop).
    vector_loads: usize,
}

/// `x` against the log-domain weight `(magnitudes, signs)` (whatever their layouts), as the
/// emulator's GPU path computes it.
fn emulated_linear_parts(em: &Emulator, x: &Tensor, magnitudes: &Tensor, signs: &Tensor) -> Linear {
    let (xb, lx) = operand(x);
    let (mb, lm) = operand(magnitudes);
    let (sb, ls) = operand(signs);
    let plan = crate::plan::log_linear(
        em.gpu,
        x.dtype(),
        &lx,
        magnitudes.dtype(),
        &lm,
        signs.dtype(),
        &ls,
    )
    .unwrap();
    let ran = em.run(&plan, &[xb, mb, sb]);
    Linear {
        y: output_tensor(&plan, &ran.output),
        kernel: plan.dispatches.last().unwrap().kernel.clone(),
        vector_loads: ran.vector_loads.last().copied().unwrap_or(0),
    }
}

/// `w.forward(x)` as the emulator's GPU path computes it.
fn emulated_linear(em: &Emulator, x: &Tensor, w: &crate::LogWeight) -> Linear {
    emulated_linear_parts(em, x, w.magnitudes(), w.signs())
}

/// Values of a float tensor as f64, row-major.
fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// `Σ_k |a_ik|·|b_kj|` in f64 (finite inputs): the scale of each output's rounding error.
fn abs_sums(a: &Tensor, b: &Tensor) -> Vec<f64> {
    let a = a.to_dtype(DType::F64).unwrap().abs().unwrap();
    let b = b.to_dtype(DType::F64).unwrap().abs().unwrap();
    values(&a.matmul(&b).unwrap())
}

/// The emulated result against the CPU op's: the same products summed in another order, so
/// within `(2k + 64)·2⁻²⁴·Σ|p|` (plus the output dtype's rounding); NaN where the CPU has NaN,
/// the same infinity, and the same signed zero where every product is zero.
fn assert_matches_cpu(what: &str, got: &Tensor, want: &Tensor, sums: &[f64], k: usize) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    assert_eq!(got.dtype(), want.dtype(), "{what}: dtype");
    let (g, w) = (values(got), values(want));
    let (rel, abs) = match got.dtype() {
        DType::F16 => (2f64.powi(-10), 2f64.powi(-24)),
        DType::BF16 => (2f64.powi(-7), 2f64.powi(-133)),
        _ => (0.0, 0.0),
    };
    for (i, ((&g, &w), &s)) in g.iter().zip(&w).zip(sums).enumerate() {
        let ok = if w.is_nan() {
            g.is_nan()
        } else if w.is_infinite() || s == 0.0 {
            g.to_bits() == w.to_bits()
        } else {
            let tol = s * (2 * k + 64) as f64 * 2f64.powi(-24)
                + (k + 1) as f64 * 2f64.powi(-148)
                + w.abs() * rel
                + abs;
            (g - w).abs() <= tol
        };
        assert!(
            ok,
            "{what}: output {i}: emulated {g:e}, CPU {w:e} (Σ|p| = {s:e}, k = {k})"
        );
    }
}

/// `gpu`'s emulator, or return from the test (no C++ compiler, outside CI).
macro_rules! emulator_or_skip {
    ($gpu:expr) => {
        match emulator($gpu) {
            Some(em) => em,
            None => return,
        }
    };
}

/// One `#[test]` per backend for each named function `fn NAME(gpu: Gpu)` of the enclosing
/// module: `metal::NAME` and `cuda::NAME`.
macro_rules! per_backend {
    ($($name:ident),+ $(,)?) => {
        mod metal {
            $(
                #[test]
                fn $name() {
                    super::$name(crate::plan::Gpu::Metal)
                }
            )+
        }
        mod cuda {
            $(
                #[test]
                fn $name() {
                    super::$name(crate::plan::Gpu::Cuda)
                }
            )+
        }
    };
}

mod tests {
    use candle_core::{DType, Device, Tensor};
    use half::{bf16, f16};

    use super::*;
    use crate::plan;
    use crate::{log_matmul, LogWeight, WeightFormat};

    /// Seeded normal-ish values (sum of uniforms), no dependency on rand's streams.
    fn randn(seed: u64, dims: &[usize], dtype: DType) -> Tensor {
        let n: usize = dims.iter().product();
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        let v: Vec<f32> = (0..n)
            .map(|_| ((0..4).map(|_| next()).sum::<f64>() - 2.0) as f32 * 1.7)
            .collect();
        Tensor::from_vec(v, dims, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }

    fn check_matmul(em: &Emulator, what: &str, a: &Tensor, b: &Tensor) {
        let got = emulated_matmul(em, a, b);
        let want = log_matmul(a, b).unwrap();
        let k = a.dims()[a.rank() - 1];
        assert_matches_cpu(what, &got, &want, &abs_sums(a, b), k);
    }

    fn products_are_the_cpu_arithmetic_bit_for_bit(gpu: Gpu) {
        // k = 1: every output is one product, exp(ln|a| + ln|b|) with the sign XOR-ed on, so
        // the kernels' ln and exp must give the CPU's (fused multiply-add) results exactly,
        // over every exponent, subnormals, zeros, infinities and NaN.
        let em = emulator_or_skip!(gpu);
        let mut a: Vec<f32> = (0..=255u32)
            .flat_map(|e| [0u32, 0x2a_5a5a, 0x7f_ffff, 0x40_0001].map(|m| (e << 23) | m))
            .map(f32::from_bits)
            .collect();
        a.extend([1e-45, -1e-45, 1.0, -1.0, 0.0, -0.0, f32::MIN_POSITIVE / 3.0]);
        let a: Vec<f32> = a
            .iter()
            .enumerate()
            .map(|(i, &x)| if i % 3 == 1 { -x } else { x })
            .collect();
        let b = vec![
            1.0f32,
            -1.0,
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            3e38,
            -1e-38,
            1e-42,
            2.5,
            -7e-3,
            1e20,
            -1e-20,
            65504.0,
            0.333,
        ];
        let (m, n) = (a.len(), b.len());
        let at = Tensor::from_vec(a.clone(), (m, 1), &Device::Cpu).unwrap();
        let bt = Tensor::from_vec(b.clone(), (1, n), &Device::Cpu).unwrap();
        let got = emulated_matmul(em, &at, &bt).to_vec2::<f32>().unwrap();
        use crate::cpu::{exp::exp_f32, ln::ln_f32};
        for (i, &x) in a.iter().enumerate() {
            for (j, &y) in b.iter().enumerate() {
                let l = ln_f32::<true>(x.abs()) + ln_f32::<true>(y.abs());
                let sign = (x.to_bits() ^ y.to_bits()) & 0x8000_0000;
                let want = f32::from_bits(exp_f32::<true>(l).to_bits() ^ sign);
                let g = got[i][j];
                assert!(
                    g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                    "{x:e} · {y:e}: emulated {g:e} ({:#010x}), CPU arithmetic {want:e} ({:#010x})",
                    g.to_bits(),
                    want.to_bits()
                );
            }
        }
    }

    /// Runs one contiguous `ln_split` kernel over `bytes` (`n` elements) and returns
    /// `(logs, masks)` as bits.
    fn split_only(em: &Emulator, suffix: &str, bytes: Vec<u8>, n: usize) -> (Vec<u32>, Vec<u32>) {
        use crate::plan::{Arg, Buf, Dispatch, Plan, SPLIT_THREADS};
        let plan = Plan {
            label: "ln_split",
            temps: vec![],
            output_elems: 2 * n,
            output_dtype: DType::U32,
            output_shape: candle_core::Shape::from(2 * n),
            dispatches: vec![Dispatch {
                kernel: format!("emilio_ln_split_contiguous_{suffix}"),
                args: vec![
                    Arg::U32(n as u32),
                    Arg::Read {
                        buf: Buf::Operand(0),
                        offset: 0,
                    },
                    Arg::Write {
                        buf: Buf::Output,
                        offset: 0,
                    },
                    Arg::Write {
                        buf: Buf::Output,
                        offset: 4 * n,
                    },
                ],
                groups: [n.div_ceil(SPLIT_THREADS), 1, 1],
                threads: [SPLIT_THREADS, 1, 1],
            }],
        };
        let out: Vec<u32> = em
            .run(&plan, &[bytes])
            .output
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        (out[..n].to_vec(), out[n..].to_vec())
    }

    fn ln_split_is_the_cpu_ln_bit_for_bit(gpu: Gpu) {
        // The kernels' ln against cpu/ln.rs (fused multiply-add build) on a sweep of every
        // 997th positive f32 (subnormals to the largest finite), both signs, the specials, and
        // every f16 and bf16 bit pattern through their widening loads.
        let em = emulator_or_skip!(gpu);
        use crate::cpu::ln::ln_f32;
        let check = |what: &str, x: &[f32], logs: &[u32], masks: &[u32]| {
            for (i, &x) in x.iter().enumerate() {
                let want = ln_f32::<true>(x.abs());
                let got = f32::from_bits(logs[i]);
                assert!(
                    logs[i] == want.to_bits() || (got.is_nan() && want.is_nan()),
                    "{what}: ln|{x:e}|: kernel {got:e}, CPU {want:e}"
                );
                assert_eq!(masks[i], x.to_bits() & 0x8000_0000, "{what}: sign of {x:e}");
            }
        };
        let mut x: Vec<f32> = (0..0x7f80_0000u32)
            .step_by(997)
            .map(|b| f32::from_bits(b ^ if b % 2 == 1 { 0x8000_0000 } else { 0 }))
            .collect();
        x.extend([
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MAX,
            1e-45,
        ]);
        let bytes = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        let (logs, masks) = split_only(em, "f32", bytes, x.len());
        check("f32", &x, &logs, &masks);

        let all: Vec<u16> = (0..=u16::MAX).collect();
        let bytes: Vec<u8> = all.iter().flat_map(|v| v.to_le_bytes()).collect();
        let (logs, masks) = split_only(em, "f16", bytes.clone(), all.len());
        let x: Vec<f32> = all.iter().map(|&b| f16::from_bits(b).to_f32()).collect();
        check("f16", &x, &logs, &masks);
        let (logs, masks) = split_only(em, "bf16", bytes, all.len());
        let x: Vec<f32> = all.iter().map(|&b| bf16::from_bits(b).to_f32()).collect();
        check("bf16", &x, &logs, &masks);
    }

    fn matmul_shapes_and_layouts_match_the_cpu(gpu: Gpu) {
        let em = emulator_or_skip!(gpu);
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let w = |s: &str| format!("{s} {dtype:?}");
            let t = |seed, dims: &[usize]| randn(seed, dims, dtype);
            check_matmul(em, &w("1x1x1"), &t(1, &[1, 1]), &t(2, &[1, 1]));
            check_matmul(em, &w("odd k"), &t(3, &[5, 31]), &t(4, &[31, 7]));
            check_matmul(em, &w("tiles"), &t(5, &[33, 65]), &t(6, &[65, 40]));
            check_matmul(
                em,
                &w("batched"),
                &t(7, &[2, 3, 9, 40]),
                &t(8, &[2, 3, 40, 17]),
            );
            // Attention: q·kᵀ with k transposed, p·v with v narrowed.
            let q = t(9, &[1, 2, 6, 16]);
            let kk = t(10, &[1, 2, 11, 16]);
            check_matmul(em, &w("q·kᵀ"), &q, &kk.transpose(2, 3).unwrap());
            let p = t(11, &[1, 2, 6, 11]);
            let v = t(12, &[1, 2, 11, 40]).narrow(3, 5, 16).unwrap();
            check_matmul(em, &w("p·v narrowed"), &p, &v);
            // A transposed (column-major) and B broadcast over the batch (stride 0).
            let a = t(13, &[3, 20, 7]).transpose(1, 2).unwrap();
            let b = t(14, &[20, 5]).broadcast_as((3, 20, 5)).unwrap();
            check_matmul(em, &w("broadcast b"), &a, &b);
            // A broadcast over the batch, and size-1 batch dims with odd strides.
            let a = t(17, &[1, 4, 9]).broadcast_as((3, 4, 9)).unwrap();
            check_matmul(em, &w("broadcast a"), &a, &t(18, &[3, 9, 5]));
            let a = t(19, &[2, 1, 30, 9]).narrow(2, 3, 4).unwrap();
            let b = t(20, &[2, 1, 9, 6]);
            check_matmul(em, &w("size-1 batch dim, narrowed a"), &a, &b);
            // Decode attention: one query row against a long key cache.
            check_matmul(em, &w("decode"), &t(15, &[2, 1, 64]), &t(16, &[2, 64, 70]));
        }
    }

    fn linear_decode_and_prefill_match_the_cpu(gpu: Gpu) {
        let em = emulator_or_skip!(gpu);
        // Every weight shape in f32 activations, then the half-precision activation dtypes
        // on one shape (the dtype only changes the loads and the final store).
        let shapes = [(1, 9, 33), (2, 40, 100), (3, 5, 32), (4, 67, 31)];
        let cases = shapes
            .iter()
            .flat_map(|&s| [1, 3, 4, 5, 37].map(|rows| (s, DType::F32, rows)))
            .chain(
                [DType::F16, DType::BF16]
                    .into_iter()
                    .flat_map(|dtype| [1, 4, 5, 37].map(|rows| ((5, 17, 70), dtype, rows))),
            );
        for format in [WeightFormat::F32, WeightFormat::F16] {
            for ((seed, out_dim, in_dim), dtype, rows) in cases.clone() {
                let w = random_weight(seed, out_dim, in_dim, format);
                let kernel = if rows <= plan::GEMV_MAX_M {
                    "gemv"
                } else {
                    "gemm_w"
                };
                let x = randn(seed * 100 + rows as u64, &[rows, in_dim], dtype);
                let what = format!("{format} {dtype:?} x({rows}, {in_dim}) w({out_dim}, {in_dim})");
                let Linear {
                    y: got,
                    kernel: used,
                    ..
                } = emulated_linear(em, &x, &w);
                assert!(
                    used.starts_with(&format!("emilio_{kernel}_")),
                    "{what}: ran {used}"
                );
                check_linear(&what, &got, &x, &w);
            }
        }
    }

    /// A seeded `(out, in)` weight in `format`, values of about ±0.1.
    fn random_weight(seed: u64, out_dim: usize, in_dim: usize, format: WeightFormat) -> LogWeight {
        let w = randn(seed, &[out_dim, in_dim], DType::F32)
            .affine(0.05, 0.0)
            .unwrap();
        LogWeight::from_tensor(&w, format).unwrap()
    }

    /// An emulated linear layer's output `got` against the CPU's `w.forward(x)`.
    fn check_linear(what: &str, got: &Tensor, x: &Tensor, w: &LogWeight) {
        let want = w.forward(x).unwrap();
        let sums = abs_sums(x, &w_plain(w).t().unwrap());
        assert_matches_cpu(what, got, &want, &sums, w.dims().1);
    }

    /// The CUDA GEMV reads magnitudes 16 bytes at a time (8 f16 or 4 f32 per lane) when `in` is
    /// a multiple of that and of 4 and the rows are 16-byte aligned, and one element per lane
    /// otherwise: both loops, for 1 to 4 rows, `out` not a multiple of the 4 features per block,
    /// against the CPU, with the loop that ran told by its 16-byte loads (`out·in/W` of them:
    /// each magnitude read once). Metal has the scalar loop only. Then a weight whose magnitudes
    /// start one element into their buffer: misaligned rows take the scalar loop.
    fn gemv_vector_and_scalar_loops_match_the_cpu(gpu: Gpu) {
        let em = emulator_or_skip!(gpu);
        let dtypes = [DType::F32, DType::F32, DType::F16, DType::BF16];
        for format in [WeightFormat::F32, WeightFormat::F16] {
            let width = 16 / format.dtype().size_in_bytes();
            for in_dim in [8, 16, 36, 64, 100, 264, 1, 7, 33, 65] {
                for rows in 1..=4 {
                    let out_dim = 2 * rows + 3;
                    let seed = (in_dim * 10 + rows) as u64;
                    let w = random_weight(seed, out_dim, in_dim, format);
                    let dtype = dtypes[rows - 1];
                    let x = randn(seed + 1, &[rows, in_dim], dtype);
                    let what = format!(
                        "{gpu:?} {format} {dtype:?} x({rows}, {in_dim}) w({out_dim}, {in_dim})"
                    );
                    let got = emulated_linear(em, &x, &w);
                    assert!(
                        got.kernel.starts_with("emilio_gemv_"),
                        "{what}: ran {}",
                        got.kernel
                    );
                    let vectorised = gpu == Gpu::Cuda && in_dim % width == 0 && in_dim % 4 == 0;
                    let loads = if vectorised {
                        out_dim * in_dim / width
                    } else {
                        0
                    };
                    assert_eq!(got.vector_loads, loads, "{what}: 16-byte loads");
                    check_linear(&what, &got.y, &x, &w);
                }
            }
            // The same magnitudes one element into their buffer: the rows are not 16-byte
            // aligned, whatever `in`.
            let (out_dim, in_dim) = (7, 64);
            let w = random_weight(70, out_dim, in_dim, format);
            let shifted = Tensor::cat(
                &[
                    &Tensor::zeros(1, format.dtype(), &Device::Cpu).unwrap(),
                    &w.magnitudes().flatten_all().unwrap(),
                ],
                0,
            )
            .unwrap()
            .narrow(0, 1, out_dim * in_dim)
            .unwrap()
            .reshape((out_dim, in_dim))
            .unwrap();
            assert_eq!(shifted.layout().start_offset(), 1);
            for rows in [1, 4] {
                let x = randn(71 + rows as u64, &[rows, in_dim], DType::F32);
                let what = format!("{gpu:?} {format} x({rows}, {in_dim}), magnitudes at offset 1");
                let got = emulated_linear_parts(em, &x, &shifted, w.signs());
                assert_eq!(got.vector_loads, 0, "{what}: 16-byte loads");
                check_linear(&what, &got.y, &x, &w);
            }
        }
    }

    /// The weight as the op sees it: `s·exp(stored log)`, in f64.
    fn w_plain(w: &LogWeight) -> Tensor {
        let (o, i) = w.dims();
        let mags = values(w.magnitudes());
        let signs = w.signs().flatten_all().unwrap().to_vec1::<u32>().unwrap();
        let words = crate::packing::sign_words_per_row(i);
        let v: Vec<f64> = (0..o * i)
            .map(|e| {
                let (r, c) = (e / i, e % i);
                let s = crate::packing::sign_bit(&signs[r * words..(r + 1) * words], c);
                let m = mags[e].exp();
                if s == 1 {
                    -m
                } else {
                    m
                }
            })
            .collect();
        Tensor::from_vec(v, (o, i), &Device::Cpu).unwrap()
    }

    fn linear_strided_inputs_match_the_cpu(gpu: Gpu) {
        let em = emulator_or_skip!(gpu);
        let w = LogWeight::from_tensor(
            &randn(20, &[24, 40], DType::F32).affine(0.05, 0.0).unwrap(),
            WeightFormat::F16,
        )
        .unwrap();
        let plain = w_plain(&w);
        let cases = [
            (
                "batch transposed",
                randn(21, &[5, 3, 40], DType::F32).transpose(0, 1).unwrap(),
            ),
            (
                "narrowed rows",
                randn(22, &[2, 60], DType::F32).narrow(1, 7, 40).unwrap(),
            ),
            ("column-major", randn(23, &[40, 2], DType::F32).t().unwrap()),
            (
                "stride-0 batch",
                randn(24, &[1, 3, 40], DType::F32)
                    .broadcast_as((2, 3, 40))
                    .unwrap(),
            ),
            ("1-D", randn(25, &[40], DType::F32)),
        ];
        for (what, x) in cases {
            let got = emulated_linear(em, &x, &w).y;
            let want = w.forward(&x).unwrap();
            let x2 = x.reshape(((), 40)).unwrap();
            let sums = abs_sums(&x2, &plain.t().unwrap());
            assert_matches_cpu(what, &got, &want, &sums, 40);
        }
    }

    /// `got` against `want`: NaN for NaN, the same bits for an infinity or a zero, otherwise
    /// within a relative `rel`.
    fn special_or_close(got: f64, want: f64, rel: f64) -> bool {
        if want.is_nan() {
            got.is_nan()
        } else if want.is_infinite() || want == 0.0 {
            got.to_bits() == want.to_bits()
        } else {
            ((got - want) / want).abs() < rel
        }
    }

    fn ieee_edges_match_the_cpu(gpu: Gpu) {
        let em = emulator_or_skip!(gpu);
        let specials = [
            0.0f32,
            -0.0,
            1.0,
            -2.5,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            1e-40,
            -3e38,
            1e30,
            -1e-30,
        ];
        // Every pair of specials as a 1-term product, then short sums mixing them.
        let n = specials.len();
        let a = Tensor::from_vec(specials.to_vec(), (n, 1), &Device::Cpu).unwrap();
        let b = Tensor::from_vec(specials.to_vec(), (1, n), &Device::Cpu).unwrap();
        let got = emulated_matmul(em, &a, &b);
        let want = log_matmul(&a, &b).unwrap();
        let (g, w) = (values(&got), values(&want));
        for (i, (&g, &w)) in g.iter().zip(&w).enumerate() {
            // Zeros, infinities and NaN exactly; finite products within a few ulp (the CPU's
            // exp may be a build without fused multiply-add).
            assert!(
                special_or_close(g, w, 1e-6),
                "{} · {}: emulated {g:e}, CPU {w:e}",
                specials[i / n],
                specials[i % n]
            );
        }
        for k in [2usize, 3, 5, 33] {
            let pick = |seed: usize, len: usize| -> Vec<f32> {
                (0..len)
                    .map(|i| specials[(i * 7 + seed * 3 + i / 5) % n])
                    .collect()
            };
            let a = Tensor::from_vec(pick(k, 6 * k), (6, k), &Device::Cpu).unwrap();
            let b = Tensor::from_vec(pick(k + 1, k * 5), (k, 5), &Device::Cpu).unwrap();
            let got = values(&emulated_matmul(em, &a, &b));
            let want = values(&log_matmul(&a, &b).unwrap());
            for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                // The same products; sums of specials are exact or special, whatever the order,
                // except for finite sums with rounding (compared loosely).
                assert!(
                    special_or_close(g, w, 1e-5),
                    "k = {k}, output {i}: emulated {g:e}, CPU {w:e}"
                );
            }
        }
        // Signed zeros through a linear layer, GEMV (1 row) and GEMM (6 rows): every product
        // -0.0 gives -0.0, a +0.0 among them gives +0.0.
        let w = LogWeight::from_tensor(
            &Tensor::from_vec(vec![1.0f32, 2.0, -3.0, 0.5], (2, 2), &Device::Cpu).unwrap(),
            WeightFormat::F32,
        )
        .unwrap();
        for rows in [1usize, 6] {
            let x: Vec<f32> = (0..rows)
                .flat_map(|r| {
                    if r % 2 == 0 {
                        [-0.0, -0.0]
                    } else {
                        [0.0, -0.0]
                    }
                })
                .collect();
            let x = Tensor::from_vec(x, (rows, 2), &Device::Cpu).unwrap();
            let got = emulated_linear(em, &x, &w).y;
            let want = w.forward(&x).unwrap();
            let (g, w2) = (values(&got), values(&want));
            for (i, (g, w)) in g.iter().zip(&w2).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    w.to_bits(),
                    "rows {rows}, output {i}: emulated {g:e}, CPU {w:e}"
                );
            }
        }
    }

    fn outputs_round_as_the_cpu_casts(gpu: Gpu) {
        // f16/bf16 results are the f32 sum rounded once; with k = 1 the sum is the product, so
        // the rounding itself is compared bit for bit with the half crate's (what the CPU op
        // uses), overflow to infinity included.
        let em = emulator_or_skip!(gpu);
        use crate::cpu::{exp::exp_f32, ln::ln_f32};
        let a: Vec<f32> = (0..200)
            .map(|i| (i as f32 - 100.0) * 37.3 + 0.001 * i as f32)
            .collect();
        let b = [1.0f32, 17.77, -300.1, 1e-3, 7e-6];
        for dtype in [DType::F16, DType::BF16] {
            let at = Tensor::from_vec(a.clone(), (a.len(), 1), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let bt = Tensor::from_vec(b.to_vec(), (1, b.len()), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let (av, bv) = (values(&at), values(&bt));
            let got = emulated_matmul(em, &at, &bt).flatten_all().unwrap();
            let got: Vec<u16> = match dtype {
                DType::F16 => got
                    .to_vec1::<f16>()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect(),
                _ => got
                    .to_vec1::<bf16>()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect(),
            };
            for (i, &x) in av.iter().enumerate() {
                for (j, &y) in bv.iter().enumerate() {
                    let (x, y) = (x as f32, y as f32);
                    let l = ln_f32::<true>(x.abs()) + ln_f32::<true>(y.abs());
                    let sign = (x.to_bits() ^ y.to_bits()) & 0x8000_0000;
                    let p = f32::from_bits(exp_f32::<true>(l).to_bits() ^ sign);
                    let want = match dtype {
                        DType::F16 => f16::from_f32(p).to_bits(),
                        _ => bf16::from_f32(p).to_bits(),
                    };
                    let g = got[i * bv.len() + j];
                    assert_eq!(
                        g, want,
                        "{dtype:?}: {x:e} · {y:e} = {p:e}: emulated {g:#06x}, want {want:#06x}"
                    );
                }
            }
        }
    }

    fn empty_and_k0_products(gpu: Gpu) {
        let em = emulator_or_skip!(gpu);
        // k = 0 through the op itself (log_matmul returns early, so run the plan directly):
        // every output is the empty sum, -0.0 as the CPU kernels give.
        let a = Tensor::zeros((3, 0), DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros((0, 4), DType::F32, &Device::Cpu).unwrap();
        let got = emulated_matmul(em, &a, &b);
        assert_eq!(got.dims(), &[3, 4]);
        assert!(values(&got)
            .iter()
            .all(|v| v.to_bits() == (-0.0f64).to_bits()));
        // m = 0: nothing dispatched, an empty result.
        let a = Tensor::zeros((2, 0, 5), DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros((2, 5, 3), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(emulated_matmul(em, &a, &b).dims(), &[2, 0, 3]);
    }

    per_backend!(
        products_are_the_cpu_arithmetic_bit_for_bit,
        ln_split_is_the_cpu_ln_bit_for_bit,
        matmul_shapes_and_layouts_match_the_cpu,
        linear_decode_and_prefill_match_the_cpu,
        gemv_vector_and_scalar_loops_match_the_cpu,
        linear_strided_inputs_match_the_cpu,
        ieee_edges_match_the_cpu,
        outputs_round_as_the_cpu_casts,
        empty_and_k0_products,
    );
}
mod plan_tests {
    //! The plans' own checks: these need no emulator.

    use candle_core::{DType, Layout, Shape};

    use super::backend_name;
    use crate::plan::{self, Gpu};

    fn contiguous(dims: &[usize]) -> Layout {
        Layout::contiguous(Shape::from(dims))
    }

    fn f64_and_integer_inputs_are_refused_clearly(gpu: Gpu) {
        let matmul_err = |dtype| {
            plan::log_matmul(
                gpu,
                dtype,
                dtype,
                &contiguous(&[2, 3]),
                &contiguous(&[3, 4]),
                (2, 3, 4),
            )
            .unwrap_err()
            .to_string()
        };
        let err = matmul_err(DType::F64);
        assert!(
            err.contains("f64") && err.contains(backend_name(gpu)) && err.contains("to_dtype"),
            "{err}"
        );
        let err = matmul_err(DType::U32);
        assert!(err.contains("U32"), "{err}");
        let (a, b) = (contiguous(&[2, 3]), contiguous(&[3, 4]));
        let err = plan::log_matmul(gpu, DType::F32, DType::F16, &a, &b, (2, 3, 4))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("F32") && err.contains("F16") && err.contains(backend_name(gpu)),
            "{err}"
        );
        let err = plan::log_linear(
            gpu,
            DType::F64,
            &contiguous(&[1, 3]),
            DType::F16,
            &contiguous(&[4, 3]),
            DType::U32,
            &contiguous(&[4, 1]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("f64"), "{err}");
    }

    fn malformed_weights_are_refused(gpu: Gpu) {
        let x = contiguous(&[1, 40]);
        let mags = contiguous(&[8, 40]);
        let signs = contiguous(&[8, 2]);
        // f32 activations against magnitudes and signs of these dtypes and layouts.
        let linear = |x: &Layout, mag_dtype, mags: &Layout, signs: &Layout| {
            plan::log_linear(gpu, DType::F32, x, mag_dtype, mags, DType::U32, signs)
        };
        assert!(linear(&x, DType::F16, &mags, &signs).is_ok());
        let t = contiguous(&[40, 8]).transpose(0, 1).unwrap();
        let err = linear(&x, DType::F16, &t, &signs).unwrap_err();
        assert!(err.to_string().contains("contiguous"), "{err}");
        let err = linear(&x, DType::BF16, &mags, &signs).unwrap_err();
        assert!(err.to_string().contains("f32 or f16"), "{err}");
        let err = linear(&x, DType::F16, &mags, &contiguous(&[8, 1])).unwrap_err();
        assert!(err.to_string().contains("(8, 2)"), "{err}");
        let err = linear(&contiguous(&[1, 39]), DType::F16, &mags, &signs).unwrap_err();
        assert!(err.to_string().contains("(…, 40)"), "{err}");
    }

    fn kernel_choice_follows_the_row_count(gpu: Gpu) {
        let mags = contiguous(&[8, 40]);
        let signs = contiguous(&[8, 2]);
        for (rows, kernel) in [
            (1, "emilio_gemv_f16_f16"),
            (4, "emilio_gemv_f16_f16"),
            (5, "emilio_gemm_w_f16_f16"),
        ] {
            let p = plan::log_linear(
                gpu,
                DType::F16,
                &contiguous(&[rows, 40]),
                DType::F16,
                &mags,
                DType::U32,
                &signs,
            )
            .unwrap();
            assert_eq!(p.dispatches.len(), 2);
            assert_eq!(p.dispatches[0].kernel, "emilio_ln_split_contiguous_f16");
            assert_eq!(p.dispatches[1].kernel, kernel);
        }
        // A broadcast right operand is split once: its split covers one batch.
        let b = contiguous(&[20, 5]).broadcast_as((3, 20, 5)).unwrap();
        let p = plan::log_matmul(
            gpu,
            DType::F32,
            DType::F32,
            &contiguous(&[3, 7, 20]),
            &b,
            (7, 20, 5),
        )
        .unwrap();
        assert_eq!(p.temps, vec![8 * 3 * 7 * 20, 8 * 20 * 5]);
        assert_eq!(p.dispatches[1].kernel, "emilio_ln_split_strided_f32");
        assert_eq!(p.dispatches[2].args[3], plan::Arg::U32(0));
    }

    per_backend!(
        f64_and_integer_inputs_are_refused_clearly,
        malformed_weights_are_refused,
        kernel_choice_follows_the_row_count,
    );
}
