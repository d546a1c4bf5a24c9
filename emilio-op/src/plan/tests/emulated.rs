//! The plans of both backends run by the SIMT emulator on the kernels' own source, against
//! the CPU path: the kernels' arithmetic bit for bit where it must be (ln, exp, the output
//! casts), the shapes, layouts and strides the plans describe, the GEMV and GEMM choice, the
//! CUDA GEMV's vectorised and scalar loops, and the IEEE edges. Every test runs once per
//! backend (`metal::NAME`, `cuda::NAME`); without a C++ compiler they are skipped with a note,
//! except under `CI=true`, where they fail.

use candle_core::{DType, Device, Tensor};
use emilio_kernels::Backend;
use emilio_kernels_check::emulator::Emulator;
use half::{bf16, f16};

use super::emulator::{
    abs_sums, assert_matches_cpu, emulated_linear, emulated_linear_parts, emulated_matmul, run,
    values, Linear,
};
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

fn products_are_the_cpu_arithmetic_bit_for_bit(gpu: Backend) {
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
    let out: Vec<u32> = run(em, &plan, vec![bytes])
        .output
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (out[..n].to_vec(), out[n..].to_vec())
}

fn ln_split_is_the_cpu_ln_bit_for_bit(gpu: Backend) {
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

fn matmul_shapes_and_layouts_match_the_cpu(gpu: Backend) {
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

fn linear_decode_and_prefill_match_the_cpu(gpu: Backend) {
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
/// against the CPU, with the loop that ran told by its 16-byte loads (`out·in/W` of them for
/// the magnitudes, each read once, and `2·out·rows·in/4` for the activations' logs and masks).
/// Metal has the scalar loop only. Then a weight whose magnitudes start one element into their
/// buffer: misaligned rows take the scalar loop.
fn gemv_vector_and_scalar_loops_match_the_cpu(gpu: Backend) {
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
                let vectorised = gpu == Backend::Cuda && in_dim % width == 0 && in_dim % 4 == 0;
                // Each magnitude once, and each output's rows of activation logs and masks
                // four at a time.
                let loads = if vectorised {
                    out_dim * in_dim / width + out_dim * rows * (in_dim / 4) * 2
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
            let got = emulated_linear_parts(
                em,
                &x,
                &shifted,
                w.signs().expect("an f32/f16 weight has sign bits"),
            );
            assert_eq!(got.vector_loads, 0, "{what}: 16-byte loads");
            check_linear(&what, &got.y, &x, &w);
        }
    }
}

/// The weight as the op sees it: `s·exp(stored log)`, in f64.
fn w_plain(w: &LogWeight) -> Tensor {
    let (o, i) = w.dims();
    let mags = values(w.magnitudes());
    let signs = w
        .signs()
        .expect("an f32/f16 weight has sign bits")
        .flatten_all()
        .unwrap()
        .to_vec1::<u32>()
        .unwrap();
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

fn linear_strided_inputs_match_the_cpu(gpu: Backend) {
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

fn ieee_edges_match_the_cpu(gpu: Backend) {
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

fn outputs_round_as_the_cpu_casts(gpu: Backend) {
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

fn empty_and_k0_products(gpu: Backend) {
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
