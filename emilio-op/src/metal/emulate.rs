//! Tests of the Metal path on machines without an Apple GPU: the [`Plan`]s the Metal ops would
//! encode, run by the C++ SIMT emulator (`kernels/check/emulate.cpp`), which executes the
//! kernels' own source compiled against `kernels/check/metal_stdlib_stub.h`, compared with the
//! CPU path.
//!
//! What this covers: the plans (kernel choice and names, argument order, strides and offsets,
//! temporary buffers, grids), the kernels' index arithmetic, tiling, barriers, SIMD-group
//! reductions and dtype conversions, and their arithmetic as C++ executes it (bit for bit the
//! CPU's `exp`/`ln` with fused multiply-add). What it cannot: the Metal compiler, the GPU's own
//! arithmetic and the encoding in `exec.rs`; those need a Mac (`tests/tests/metal_*.rs`).
//!
//! The emulator is built once per test process with the first C++ compiler found (`$CXX`, `c++`,
//! `g++`, `clang++`), with AddressSanitizer where the toolchain has it, so that any access past
//! a buffer fails the test. Without a compiler the tests are skipped with a note, except under
//! `CI=true`, where they fail.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Device, Layout, Storage, Tensor};

use super::plan::{Arg, Buf, Plan};

struct Emulator {
    exe: PathBuf,
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

/// Compiles the emulator, or reuses the one built from the same sources, compiler and flags
/// (in the temp dir, named by a hash of all of them).
fn build() -> Option<Emulator> {
    let Some(cxx) = find_cxx() else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "no C++ compiler found (tried $CXX, c++, g++, clang++): the Metal kernels \
                 cannot be checked; install g++"
            );
        }
        eprintln!("note: no C++ compiler found; skipping the emulated Metal kernel tests");
        return None;
    };
    let root = repo_root();
    let source = root.join("kernels/check/emulate.cpp");
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for file in [
        "kernels/check/emulate.cpp",
        "kernels/check/metal_stdlib_stub.h",
        "kernels/emilio.metal",
    ] {
        std::fs::read(root.join(file)).unwrap().hash(&mut hasher);
    }
    (&cxx, FLAGS).hash(&mut hasher);
    let exe = std::env::temp_dir().join(format!("emilio-metal-emulate-{:016x}", hasher.finish()));
    if exe.is_file() {
        return Some(Emulator { exe });
    }
    // Built under a private name, then renamed into place: concurrent test processes race
    // harmlessly.
    let building = exe.with_extension(format!("building-{}", std::process::id()));
    let compile = |extra: &[&str]| {
        Command::new(&cxx)
            .args(FLAGS)
            .args(extra)
            .arg(&source)
            .arg("-o")
            .arg(&building)
            .output()
            .expect("running the C++ compiler")
    };
    // AddressSanitizer where available; a toolchain without it still checks everything else.
    if !compile(&["-fsanitize=address", "-fno-omit-frame-pointer"])
        .status
        .success()
    {
        let plain = compile(&[]);
        assert!(
            plain.status.success(),
            "{cxx} cannot compile kernels/check/emulate.cpp (with kernels/emilio.metal):\n{}",
            String::from_utf8_lossy(&plain.stderr)
        );
    }
    std::fs::rename(&building, &exe).expect("moving the emulator into place");
    Some(Emulator { exe })
}

fn emulator() -> Option<&'static Emulator> {
    static EMULATOR: OnceLock<Option<Emulator>> = OnceLock::new();
    EMULATOR.get_or_init(build).as_ref()
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

/// A tensor's whole storage (as a Metal buffer would hold it) and its layout.
fn operand(t: &Tensor) -> (Vec<u8>, Layout) {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => (storage_bytes(s), layout.clone()),
        _ => panic!("emulator operands are CPU tensors"),
    }
}

impl Emulator {
    /// Runs `plan` over `operands` (whole storages); returns the output bytes.
    fn run(&self, plan: &Plan, operands: &[Vec<u8>]) -> Vec<u8> {
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "emilio-metal-run-{}-{}",
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
            "the emulator failed on {} (inputs kept in {}):\n{}",
            plan.label,
            dir.display(),
            String::from_utf8_lossy(&run.stderr)
        );
        let out = std::fs::read(&out_path).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        out
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

/// `log_matmul(a, b)` as the Metal path computes it, emulated.
fn emulated_matmul(em: &Emulator, a: &Tensor, b: &Tensor) -> Tensor {
    let r = a.rank();
    let dims = (a.dims()[r - 2], a.dims()[r - 1], b.dims()[r - 1]);
    let (ab, la) = operand(a);
    let (bb, lb) = operand(b);
    let plan = super::plan::log_matmul(a.dtype(), &la, &lb, dims).unwrap();
    output_tensor(&plan, &em.run(&plan, &[ab, bb]))
}

/// `w.forward(x)` as the Metal path computes it, emulated; also returns the kernel used.
fn emulated_linear(em: &Emulator, x: &Tensor, w: &crate::LogWeight) -> (Tensor, String) {
    let (xb, lx) = operand(x);
    let (mb, lm) = operand(w.magnitudes());
    let (sb, ls) = operand(w.signs());
    let plan = super::plan::log_linear(
        x.dtype(),
        &lx,
        w.magnitudes().dtype(),
        &lm,
        w.signs().dtype(),
        &ls,
    )
    .unwrap();
    let kernel = plan.dispatches.last().unwrap().kernel.clone();
    (output_tensor(&plan, &em.run(&plan, &[xb, mb, sb])), kernel)
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

macro_rules! emulator_or_skip {
    () => {
        match emulator() {
            Some(em) => em,
            None => return,
        }
    };
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};
    use half::{bf16, f16};

    use super::*;
    use crate::metal::plan;
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

    #[test]
    fn products_are_the_cpu_arithmetic_bit_for_bit() {
        // k = 1: every output is one product, exp(ln|a| + ln|b|) with the sign XOR-ed on, so
        // the kernels' ln and exp must give the CPU's (fused multiply-add) results exactly,
        // over every exponent, subnormals, zeros, infinities and NaN.
        let em = emulator_or_skip!();
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
        use crate::metal::plan::{Arg, Buf, Dispatch, Plan, SPLIT_THREADS};
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
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        (out[..n].to_vec(), out[n..].to_vec())
    }

    #[test]
    fn ln_split_is_the_cpu_ln_bit_for_bit() {
        // The kernels' ln against cpu/ln.rs (fused multiply-add build) on a sweep of every
        // 997th positive f32 (subnormals to the largest finite), both signs, the specials, and
        // every f16 and bf16 bit pattern through their widening loads.
        let em = emulator_or_skip!();
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

    #[test]
    fn matmul_shapes_and_layouts_match_the_cpu() {
        let em = emulator_or_skip!();
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

    #[test]
    fn linear_decode_and_prefill_match_the_cpu() {
        let em = emulator_or_skip!();
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
                let w = LogWeight::from_tensor(
                    &randn(seed, &[out_dim, in_dim], DType::F32)
                        .affine(0.05, 0.0)
                        .unwrap(),
                    format,
                )
                .unwrap();
                let kernel = if rows <= plan::GEMV_MAX_M {
                    "gemv"
                } else {
                    "gemm_w"
                };
                let x = randn(seed * 100 + rows as u64, &[rows, in_dim], dtype);
                let what = format!("{format} {dtype:?} x({rows}, {in_dim}) w({out_dim}, {in_dim})");
                let (got, used) = emulated_linear(em, &x, &w);
                assert!(
                    used.starts_with(&format!("emilio_{kernel}_")),
                    "{what}: ran {used}"
                );
                let want = w.forward(&x).unwrap();
                let sums = abs_sums(&x, &w_plain(&w).t().unwrap());
                assert_matches_cpu(&what, &got, &want, &sums, in_dim);
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

    #[test]
    fn linear_strided_inputs_match_the_cpu() {
        let em = emulator_or_skip!();
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
            let (got, _) = emulated_linear(em, &x, &w);
            let want = w.forward(&x).unwrap();
            let x2 = x.reshape(((), 40)).unwrap();
            let sums = abs_sums(&x2, &plain.t().unwrap());
            assert_matches_cpu(what, &got, &want, &sums, 40);
        }
    }

    #[test]
    fn ieee_edges_match_the_cpu() {
        let em = emulator_or_skip!();
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
        for (i, (g, w)) in g.iter().zip(&w).enumerate() {
            // Zeros, infinities and NaN exactly; finite products within a few ulp (the CPU's
            // exp may be a build without fused multiply-add).
            let ok = if w.is_nan() {
                g.is_nan()
            } else if w.is_infinite() || *w == 0.0 {
                g.to_bits() == w.to_bits()
            } else {
                ((g - w) / w).abs() < 1e-6
            };
            assert!(
                ok,
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
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                // The same products; sums of specials are exact or special, whatever the order,
                // except for finite sums with rounding (compared loosely).
                let ok = if w.is_nan() {
                    g.is_nan()
                } else if w.is_infinite() || *w == 0.0 {
                    g.to_bits() == w.to_bits()
                } else {
                    ((g - w) / w).abs() < 1e-5
                };
                assert!(ok, "k = {k}, output {i}: emulated {g:e}, CPU {w:e}");
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
            let (got, _) = emulated_linear(em, &x, &w);
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

    #[test]
    fn outputs_round_as_the_cpu_casts() {
        // f16/bf16 results are the f32 sum rounded once; with k = 1 the sum is the product, so
        // the rounding itself is compared bit for bit with the half crate's (what the CPU op
        // uses), overflow to infinity included.
        let em = emulator_or_skip!();
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

    #[test]
    fn empty_and_k0_products() {
        let em = emulator_or_skip!();
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
}

#[cfg(test)]
mod plan_tests {
    //! The plans' own checks: these need no emulator.

    use candle_core::{DType, Layout, Shape};

    use crate::metal::plan;

    fn contiguous(dims: &[usize]) -> Layout {
        Layout::contiguous(Shape::from(dims))
    }

    #[test]
    fn f64_and_integer_inputs_are_refused_clearly() {
        let err = plan::log_matmul(
            DType::F64,
            &contiguous(&[2, 3]),
            &contiguous(&[3, 4]),
            (2, 3, 4),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("f64") && err.contains("Metal") && err.contains("to_dtype"),
            "{err}"
        );
        let err = plan::log_matmul(
            DType::U32,
            &contiguous(&[2, 3]),
            &contiguous(&[3, 4]),
            (2, 3, 4),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("U32"), "{err}");
        let err = plan::log_linear(
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

    #[test]
    fn malformed_weights_are_refused() {
        let x = contiguous(&[1, 40]);
        let mags = contiguous(&[8, 40]);
        let signs = contiguous(&[8, 2]);
        let ok = plan::log_linear(DType::F32, &x, DType::F16, &mags, DType::U32, &signs);
        assert!(ok.is_ok());
        let t = contiguous(&[40, 8]).transpose(0, 1).unwrap();
        let err = plan::log_linear(DType::F32, &x, DType::F16, &t, DType::U32, &signs).unwrap_err();
        assert!(err.to_string().contains("contiguous"), "{err}");
        let err =
            plan::log_linear(DType::F32, &x, DType::BF16, &mags, DType::U32, &signs).unwrap_err();
        assert!(err.to_string().contains("f32 or f16"), "{err}");
        let err = plan::log_linear(
            DType::F32,
            &x,
            DType::F16,
            &mags,
            DType::U32,
            &contiguous(&[8, 1]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("(8, 2)"), "{err}");
        let err = plan::log_linear(
            DType::F32,
            &contiguous(&[1, 39]),
            DType::F16,
            &mags,
            DType::U32,
            &signs,
        )
        .unwrap_err();
        assert!(err.to_string().contains("(…, 40)"), "{err}");
    }

    #[test]
    fn kernel_choice_follows_the_row_count() {
        let mags = contiguous(&[8, 40]);
        let signs = contiguous(&[8, 2]);
        for (rows, kernel) in [
            (1, "emilio_gemv_f16_f16"),
            (4, "emilio_gemv_f16_f16"),
            (5, "emilio_gemm_w_f16_f16"),
        ] {
            let p = plan::log_linear(
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
        let p = plan::log_matmul(DType::F32, &contiguous(&[3, 7, 20]), &b, (7, 20, 5)).unwrap();
        assert_eq!(p.temps, vec![8 * 3 * 7 * 20, 8 * 20 * 5]);
        assert_eq!(p.dispatches[1].kernel, "emilio_ln_split_strided_f32");
        assert_eq!(p.dispatches[2].args[3], plan::Arg::U32(0));
    }
}
