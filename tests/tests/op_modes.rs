//! The precision dial ([`ExpMode`]): every mode against the `f64` reference within the mode's
//! stated per-product bound (`ExpMode::error_bound`, composed into the op's budget by
//! `Budget::with_exp`) over the op suite's shapes, strided layouts, dtypes and both weight
//! formats; the IEEE specials in every mode; each approximate product against an independent
//! `f64` model of its formula (Mitchell's exp, L-Mul's integer sum of bit patterns); the exact
//! mode through the new entry points bit for bit the old one; and the refusals (f64, switching
//! to or from `lmul`). CI reruns this suite under `EMILIO_CPU_ISA=avx2` and `baseline`.

use candle_core::{DType, Device, Module, Tensor};
use emilio_op::{
    broadcast_log_matmul_with, log_matmul, log_matmul_with, ExpMode, LogConfig, LogLinear,
    LogWeight, WeightFormat,
};
use emilio_tests::{
    f32_bits, randn, reference_linear, reference_matmul, to_f64_vec, wide, Budget, SMALL_SHAPES,
};

const APPROXIMATE: [ExpMode; 3] = [ExpMode::Fast, ExpMode::Mitchell, ExpMode::Lmul];
const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

fn check_matmul(what: &str, mode: ExpMode, a: &Tensor, b: &Tensor) {
    let what = format!(
        "{mode} {what} {:?}x{:?} {:?}",
        a.dims(),
        b.dims(),
        a.dtype()
    );
    let got = log_matmul_with(a, b, mode).unwrap_or_else(|e| panic!("{what}: {e}"));
    let budget = Budget::for_dtype(a.dtype()).with_exp(mode);
    reference_matmul(a, b, budget).check(&what, &got);
}

#[test]
fn matmul_in_every_mode_is_within_its_bound_over_the_small_shapes() {
    for mode in APPROXIMATE {
        for (s, &(m, k, n)) in SMALL_SHAPES.iter().enumerate() {
            for dtype in DTYPES {
                let seed = 100 * s as u64;
                let a = randn(seed, &[m, k], 1.0, dtype);
                let b = randn(seed + 1, &[k, n], 0.5, dtype);
                check_matmul("randn", mode, &a, &b);
                // Magnitudes over e^±20: the |x| term of the bounds.
                let a = wide(seed + 2, &[m, k], 20.0, dtype);
                let b = wide(seed + 3, &[k, n], 20.0, dtype);
                check_matmul("wide", mode, &a, &b);
            }
        }
    }
}

#[test]
fn strided_batched_and_broadcast_operands_in_every_mode() {
    for mode in APPROXIMATE {
        // Attention's Q·Kᵀ: K transposed, read through its strides.
        let q = randn(1, &[2, 3, 9, 64], 1.0, DType::F32);
        let k = randn(2, &[2, 3, 11, 64], 1.0, DType::F32);
        let kt = k.transpose(2, 3).unwrap();
        check_matmul("q·kᵀ", mode, &q, &kt);
        // A narrowed operand.
        let wide_a = randn(3, &[7, 40], 1.0, DType::F32);
        let a = wide_a.narrow(1, 5, 33).unwrap();
        let b = randn(4, &[33, 6], 1.0, DType::F32);
        check_matmul("narrowed", mode, &a, &b);
        // broadcast_log_matmul_with: a rank-2 rhs against a batch.
        let a = randn(5, &[4, 5, 17], 1.0, DType::F32);
        let b = randn(6, &[17, 3], 1.0, DType::F32);
        let got = broadcast_log_matmul_with(&a, &b, mode).unwrap();
        let (ab, bb) = emilio_tests::broadcast_operands(&a, &b);
        let budget = Budget::for_dtype(DType::F32).with_exp(mode);
        reference_matmul(&ab, &bb, budget).check(&format!("{mode} broadcast"), &got);
    }
}

#[test]
fn linear_layers_in_every_mode_and_format_are_within_their_bound() {
    let shapes = [
        (1, 896, 256),
        (1, 33, 7),
        (3, 130, 65),
        (17, 64, 40),
        (4, 4864, 96),
    ];
    for (s, &(rows, in_dim, out_dim)) in shapes.iter().enumerate() {
        let w = randn(10 + s as u64, &[out_dim, in_dim], 0.03, DType::F32);
        let bias = randn(20 + s as u64, &[out_dim], 0.1, DType::F32);
        for mode in APPROXIMATE {
            for format in [WeightFormat::F32, WeightFormat::F16] {
                let config = LogConfig::new(format, mode);
                for dtype in DTYPES {
                    // The bias in the activations' dtype, as a model would hold it.
                    let b = bias.to_dtype(dtype).unwrap();
                    let layer = LogLinear::from_weights(&w, Some(b.clone()), config).unwrap();
                    assert_eq!(layer.weight().config(), config);
                    let x = randn(30 + s as u64, &[rows, in_dim], 1.0, dtype);
                    let got = layer.forward(&x).unwrap();
                    let what = format!("{config} x{:?} {dtype:?}", x.dims());
                    reference_linear(&x, &w, Some(&b), config).check(&what, &got);
                }
                // A transposed (strided) input, without bias.
                let layer = LogLinear::from_weights(&w, None, config).unwrap();
                let xt = randn(40 + s as u64, &[in_dim, rows], 1.0, DType::F32)
                    .t()
                    .unwrap();
                let got = layer.forward(&xt).unwrap();
                reference_linear(&xt, &w, None, config)
                    .check(&format!("{config} transposed"), &got);
            }
        }
    }
}

/// Every pair of special operands as a `1×1·1×1` product, in every mode: the reference's IEEE
/// classes (NaN, infinities, signed zeros) and the bound for the finite ones.
#[test]
fn ieee_specials_keep_their_meaning_in_every_mode() {
    let sub = f32::from_bits(3); // subnormal
    let specials = [
        0.0f32,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        3.0,
        -3.0,
        sub,
        -sub,
        1e-30,
        1e30,
        -0.5,
        f32::MIN_POSITIVE,
        f32::MAX,
    ];
    let n = specials.len();
    let a = Tensor::from_vec(specials.to_vec(), (n, 1), &Device::Cpu).unwrap();
    let b = Tensor::from_vec(specials.to_vec(), (1, n), &Device::Cpu).unwrap();
    for mode in ExpMode::PER_PRODUCT {
        check_matmul("specials", mode, &a, &b);
        let got = log_matmul_with(&a, &b, mode)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (i, &x) in specials.iter().enumerate() {
            for (j, &y) in specials.iter().enumerate() {
                let (p, want) = (got[i][j], x * y);
                let what = format!("{mode}: {x:e} · {y:e} = {p:e}, IEEE {want:e}");
                if want.is_nan() {
                    assert!(p.is_nan(), "{what}");
                } else if want == 0.0 && (x == 0.0 || y == 0.0) {
                    // A zero operand: exactly zero, with the product's sign.
                    assert_eq!(p.to_bits(), want.to_bits(), "{what}");
                } else if want.is_infinite() && (x.is_infinite() || y.is_infinite()) {
                    assert_eq!(p, want, "{what}");
                } else {
                    assert_eq!(p.is_sign_negative(), want.is_sign_negative(), "{what}");
                }
            }
        }
    }
}

/// Mitchell's exp and L-Mul, product by product, against their formulas written in `f64`:
/// Mitchell takes `t = ln|a·b|·log₂e + σ` and returns `2^⌊t⌋·(1 + t − ⌊t⌋)`; L-Mul adds the
/// operands' bit patterns as integers (less the bias, plus `2⁻⁴` of mantissa) and reads the sum
/// as a float.
#[test]
fn approximate_products_are_their_formulas() {
    let mut r = emilio_tests::rng(7);
    let values: Vec<f32> = (0..64)
        .map(|_| (emilio_tests::normal(&mut r) * 3.0).exp() as f32)
        .collect();
    let n = values.len();
    let a = Tensor::from_vec(values.clone(), (n, 1), &Device::Cpu).unwrap();
    let b = Tensor::from_vec(values.clone(), (1, n), &Device::Cpu).unwrap();
    let mitchell = log_matmul_with(&a, &b, ExpMode::Mitchell)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let lmul = log_matmul_with(&a, &b, ExpMode::Lmul)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    const SIGMA: f64 = -0.057_532_745_889_780_725;
    for (i, &x) in values.iter().enumerate() {
        for (j, &y) in values.iter().enumerate() {
            let t = (x as f64 * y as f64).log2() + SIGMA;
            let want = 2f64.powf(t.floor()) * (1.0 + t - t.floor());
            let got = mitchell[i][j] as f64;
            assert!(
                (got / want - 1.0).abs() < 3e-6,
                "mitchell {x}·{y}: {got} vs {want}"
            );

            let bits = x.to_bits() as i64 + y.to_bits() as i64 - 0x3f80_0000 + (1 << 19);
            let want = f32::from_bits(bits as u32) as f64;
            let got = lmul[i][j] as f64;
            assert!(
                (got / want - 1.0).abs() < 3e-6,
                "lmul {x}·{y}: {got} vs {want}"
            );
        }
    }
    // 1.5 · 1.5: L-Mul gives 2·(1 + 0.5 + 0.5 + 1/16 − 1) = 2.125, Mitchell ≈ 2.2248.
    let one_and_half = Tensor::new(&[[1.5f32]], &Device::Cpu).unwrap();
    let p = |mode| {
        log_matmul_with(&one_and_half, &one_and_half, mode)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()[0][0]
    };
    assert!((p(ExpMode::Lmul) - 2.125).abs() < 1e-5);
    assert!((p(ExpMode::Mitchell) - 2.2248).abs() < 1e-3);
}

/// Mitchell's offset makes its error zero on average: over many products with spread-out
/// logs the mean relative error is near zero, while L-Mul's is its documented +0.41% and
/// `fast`'s is far below both.
#[test]
fn mean_errors_are_as_documented() {
    let n = 256;
    let a = wide(11, &[n, 1], 8.0, DType::F32);
    let b = wide(12, &[1, n], 8.0, DType::F32);
    let exact = to_f64_vec(&a.matmul(&b).unwrap());
    let mean = |mode| {
        let got = to_f64_vec(&log_matmul_with(&a, &b, mode).unwrap());
        let rel: Vec<f64> = got.iter().zip(&exact).map(|(g, e)| g / e - 1.0).collect();
        rel.iter().sum::<f64>() / rel.len() as f64
    };
    let (fast, mitchell, lmul) = (
        mean(ExpMode::Fast),
        mean(ExpMode::Mitchell),
        mean(ExpMode::Lmul),
    );
    assert!(fast.abs() < 2e-6, "fast mean {fast:e}");
    assert!(mitchell.abs() < 1.5e-3, "mitchell mean {mitchell:e}");
    assert!((lmul - 0.0041).abs() < 2e-3, "lmul mean {lmul:e}");
}

#[test]
fn exact_mode_through_the_new_entry_points_is_the_old_op_bit_for_bit() {
    let a = randn(1, &[5, 3, 70], 1.0, DType::F32);
    let b = randn(2, &[5, 70, 9], 1.0, DType::F32);
    let old = log_matmul(&a, &b).unwrap();
    let new = log_matmul_with(&a, &b, ExpMode::Exact).unwrap();
    assert_eq!(f32_bits(&old), f32_bits(&new));
    let w = randn(3, &[33, 70], 0.05, DType::F32);
    let x = randn(4, &[2, 70], 1.0, DType::F32);
    for format in [WeightFormat::F32, WeightFormat::F16] {
        let old = LogWeight::from_tensor(&w, format)
            .unwrap()
            .forward(&x)
            .unwrap();
        let new = LogWeight::from_tensor(&w, LogConfig::new(format, ExpMode::Exact))
            .unwrap()
            .forward(&x)
            .unwrap();
        assert_eq!(f32_bits(&old), f32_bits(&new));
    }
}

#[test]
fn a_weight_switches_among_modes_that_share_its_logs_and_refuses_the_others() {
    let w = randn(1, &[16, 40], 0.05, DType::F32);
    let x = randn(2, &[3, 40], 1.0, DType::F32);
    let exact = LogWeight::from_tensor(&w, WeightFormat::F16).unwrap();
    for mode in [ExpMode::Fast, ExpMode::Mitchell] {
        let switched = exact.with_exp(mode).unwrap();
        let fresh = LogWeight::from_tensor(&w, LogConfig::new(WeightFormat::F16, mode)).unwrap();
        assert_eq!(
            f32_bits(&switched.forward(&x).unwrap()),
            f32_bits(&fresh.forward(&x).unwrap()),
            "{mode}"
        );
    }
    let err = exact.with_exp(ExpMode::Lmul).unwrap_err().to_string();
    assert!(
        err.contains("lmul") && err.contains("LogConfig::new"),
        "{err}"
    );
    let lmul =
        LogWeight::from_tensor(&w, LogConfig::new(WeightFormat::F32, ExpMode::Lmul)).unwrap();
    let err = lmul.with_exp(ExpMode::Exact).unwrap_err().to_string();
    assert!(err.contains("lmul") && err.contains("exact"), "{err}");
}

#[test]
fn f64_inputs_take_only_the_exact_mode() {
    let a = randn(1, &[2, 5], 1.0, DType::F64);
    let b = randn(2, &[5, 3], 1.0, DType::F64);
    assert!(log_matmul_with(&a, &b, ExpMode::Exact).is_ok());
    let w = randn(3, &[4, 5], 0.1, DType::F32);
    for mode in APPROXIMATE {
        let err = log_matmul_with(&a, &b, mode).unwrap_err().to_string();
        assert!(err.contains(mode.name()) && err.contains("f64"), "{err}");
        let layer = LogWeight::from_tensor(&w, LogConfig::new(WeightFormat::F32, mode)).unwrap();
        let err = layer.forward(&a).unwrap_err().to_string();
        assert!(err.contains(mode.name()) && err.contains("cast"), "{err}");
    }
}

#[test]
fn mode_names_round_trip_and_unknown_ones_are_refused() {
    for mode in ExpMode::ALL {
        assert_eq!(mode.name().parse::<ExpMode>().unwrap(), mode);
        assert_eq!(
            mode.to_string().to_uppercase().parse::<ExpMode>().unwrap(),
            mode
        );
    }
    let err = "cordic".parse::<ExpMode>().unwrap_err().to_string();
    assert!(
        err.contains("\"cordic\"") && err.contains("\"table\""),
        "{err}"
    );
    assert_eq!(ExpMode::default(), ExpMode::Exact);
    assert_eq!(
        LogConfig::from(WeightFormat::F16),
        LogConfig::new(WeightFormat::F16, ExpMode::Exact)
    );
}

/// `lns8` and `lns4` layers in every mode they pair with, against the reference over the weight as stored
/// (`dequantize`): decode (≤ 4 rows, the kernel that reads codes directly) and prefill shapes
/// (codes widened into tiles), odd `in` (a partial last group), f32/f16/bf16 and f64
/// activations. The formats' own error per weight is `emilio_op::format`'s unit tests.
#[test]
fn lns_layers_are_within_the_ops_bound_against_the_stored_weight() {
    let shapes = [
        (1, 896, 256),
        (2, 33, 7),
        (4, 130, 65),
        (17, 64, 40),
        (5, 4864, 96),
    ];
    for (s, &(rows, in_dim, out_dim)) in shapes.iter().enumerate() {
        let mut w = randn(50 + s as u64, &[out_dim, in_dim], 0.03, DType::F32);
        if s == 1 {
            // Zeros of both signs and a weight far below its group's largest.
            let mut v = to_f64_vec(&w);
            v[0] = 0.0;
            v[1] = -0.0;
            v[2] = 1e-9;
            w = emilio_tests::tensor_from_f64(v, &[out_dim, in_dim], DType::F32);
        }
        let pairs = [WeightFormat::Lns8, WeightFormat::Lns4]
            .into_iter()
            .flat_map(|f| [ExpMode::Exact, ExpMode::Fast, ExpMode::Mitchell].map(|m| (f, m)))
            .chain([
                (WeightFormat::Lns8, ExpMode::Table),
                (WeightFormat::Lns4, ExpMode::Table),
            ]);
        for (format, mode) in pairs {
            let config = LogConfig::new(format, mode);
            let weight = LogWeight::from_tensor(&w, config).unwrap();
            let stored = weight.dequantize().unwrap();
            let dtypes: &[DType] = if mode == ExpMode::Exact && format == WeightFormat::Lns8 {
                &[DType::F32, DType::F16, DType::BF16, DType::F64]
            } else {
                &DTYPES
            };
            for &dtype in dtypes {
                let x = randn(60 + s as u64, &[rows, in_dim], 1.0, dtype);
                let got = weight.forward(&x).unwrap();
                let what = format!("{config} x{:?} {dtype:?}", x.dims());
                reference_linear(&x, &stored, None, config).check(&what, &got);
            }
        }
    }
}

#[test]
fn lns8_stores_about_a_quarter_of_f32_and_refuses_what_it_cannot_hold() {
    let w = randn(1, &[64, 96], 0.05, DType::F32);
    let lns8 = LogWeight::from_tensor(&w, WeightFormat::Lns8).unwrap();
    let f16 = LogWeight::from_tensor(&w, WeightFormat::F16).unwrap();
    // 1 byte per weight and 2 per group of 32: 8.5 bits.
    assert_eq!(lns8.size_in_bytes(), 64 * 96 + 64 * 3 * 2);
    assert_eq!(WeightFormat::Lns8.bits_per_weight(), 8.5);
    assert!(lns8.size_in_bytes() * 2 <= f16.size_in_bytes());
    assert!(lns8.signs().is_none() && lns8.group_offsets().is_some());
    assert!(f16.signs().is_some() && f16.group_offsets().is_none());
    // lns4: half a byte per weight and the same offsets: 4.5 bits, and a step of its own.
    let lns4 = LogWeight::from_tensor(&w, WeightFormat::Lns4).unwrap();
    assert_eq!(lns4.size_in_bytes(), 64 * 48 + 64 * 3 * 2);
    assert_eq!(WeightFormat::Lns4.bits_per_weight(), 4.5);
    assert_eq!(lns4.dims(), (64, 96));
    let step = lns4.lns4_step().unwrap();
    assert!(step > 0.05 && step < 1.2, "{step}");
    assert!(lns8.lns4_step().is_none());
    // The stored weight is within the format's stated error of every weight: half a step of
    // the log relative, or half the smallest code's value (below 2^-(126 steps) of a group's
    // largest, at most 4.5σ = 0.225 here) absolute.
    let half_step = 0.5 / f64::from(1u32 << emilio_op::format::lns8::FRAC_BITS);
    let (rel, small) = (
        2f64.powf(half_step) - 1.0,
        0.225 * 2f64.powf(-126.0 * 2.0 * half_step),
    );
    let stored = to_f64_vec(&lns8.dequantize().unwrap());
    for (s, o) in stored.iter().zip(to_f64_vec(&w)) {
        assert!((s - o).abs() <= (rel + 1e-3) * o.abs() + small, "{o} → {s}");
    }

    let mut v = to_f64_vec(&w);
    v[3 * 96 + 5] = f64::NAN;
    let bad = emilio_tests::tensor_from_f64(v, &[64, 96], DType::F32);
    let err = LogWeight::from_tensor(&bad, WeightFormat::Lns8)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("(3, 5)") && err.contains("NaN") && err.contains("f16"),
        "{err}"
    );
    let err = LogWeight::from_tensor(&w, LogConfig::new(WeightFormat::Lns8, ExpMode::Lmul))
        .unwrap_err()
        .to_string();
    assert!(err.contains("(lns8, lmul)"), "{err}");
    let err = LogWeight::from_tensor(&w, LogConfig::new(WeightFormat::Lns4, ExpMode::Lmul))
        .unwrap_err()
        .to_string();
    assert!(err.contains("(lns4, lmul)"), "{err}");
    assert_eq!("LNS8".parse::<WeightFormat>().unwrap(), WeightFormat::Lns8);
}

/// A zero code is an exact zero product with its sign, and NaN against an infinite input.
#[test]
fn lns8_zero_codes_are_ieee_zeros() {
    let w = Tensor::new(&[[0.0f32, 1.0], [-0.0, 0.0], [2.0, -3.0]], &Device::Cpu).unwrap();
    let weight = LogWeight::from_tensor(&w, WeightFormat::Lns8).unwrap();
    let x = Tensor::new(
        &[[f32::INFINITY, 0.0], [1.0, -0.0], [-2.0, 0.0]],
        &Device::Cpu,
    )
    .unwrap();
    let y = weight.forward(&x).unwrap().to_vec2::<f32>().unwrap();
    assert!(
        y[0][0].is_nan() && y[0][1].is_nan(),
        "inf·0 is NaN: {:?}",
        y[0]
    );
    assert_eq!(
        y[1][0].to_bits(),
        0.0f32.to_bits(),
        "1·0 + (−0)·1: {:?}",
        y[1]
    );
    assert_eq!(
        y[1][1].to_bits(),
        (-0.0f32).to_bits(),
        "−0 + −0·−0 … : {:?}",
        y[1]
    );
    assert!((y[2][2] - -4.0).abs() < 4.0 * 0.05, "{:?}", y[2]);
}

#[test]
fn the_supported_pairs_are_the_ones_with_kernels() {
    let pairs = LogConfig::supported();
    // 4 formats × 4 per-product modes, less lns8/lmul and lns4/lmul; and lns8/lns4 table.
    assert_eq!(pairs.len(), 4 * 4 - 2 + 2);
    for format in WeightFormat::ALL {
        for exp in ExpMode::ALL {
            let config = LogConfig::new(format, exp);
            let supported = match exp {
                ExpMode::Table => format.is_lns(),
                _ => !(format.is_lns() && exp == ExpMode::Lmul),
            };
            assert_eq!(config.is_supported(), supported, "{config}");
            assert_eq!(pairs.contains(&config), supported, "{config}");
            assert_eq!(config.check().is_ok(), supported, "{config}");
        }
    }
}

/// The table mode: its products against the weight as stored, for decode and prefill rows
/// and outputs that are not a multiple of its 16-row blocks; the same as `exact` on the same
/// codes to within both modes' bounds; its IEEE edges; and its refusals.
#[test]
fn table_mode_products_are_the_stored_codes_values() {
    let shapes = [
        (1, 896, 256),
        (3, 33, 7),
        (17, 64, 40),
        (2, 4864, 19),
        (4, 100, 130),
    ];
    let cases = [WeightFormat::Lns8, WeightFormat::Lns4]
        .into_iter()
        .flat_map(|f| {
            shapes
                .iter()
                .enumerate()
                .map(move |(s, shape)| (f, s, *shape))
        });
    for (format, s, (rows, in_dim, out_dim)) in cases {
        let w = randn(70 + s as u64, &[out_dim, in_dim], 0.03, DType::F32);
        let table = LogWeight::from_tensor(&w, LogConfig::new(format, ExpMode::Table)).unwrap();
        let plain = LogWeight::from_tensor(&w, format).unwrap();
        // One conversion, two layouts: the same stored weight.
        let stored = table.dequantize().unwrap();
        assert_eq!(f32_bits(&stored), f32_bits(&plain.dequantize().unwrap()));
        for dtype in DTYPES {
            let x = randn(80 + s as u64, &[rows, in_dim], 1.0, dtype);
            let got = table.forward(&x).unwrap();
            assert_eq!(got.dims(), &[rows, out_dim]);
            reference_linear(&x, &stored, None, table.config())
                .check(&format!("{format}/table {dtype:?}"), &got);
        }
    }
    // IEEE: an infinite activation against a zero code is NaN; zeros keep their sign.
    let w = Tensor::new(&[[0.0f32, 1.0], [-0.0, 0.0], [2.0, -3.0]], &Device::Cpu).unwrap();
    let table =
        LogWeight::from_tensor(&w, LogConfig::new(WeightFormat::Lns4, ExpMode::Table)).unwrap();
    let x = Tensor::new(
        &[[f32::INFINITY, 0.0], [1.0, -0.0], [f32::NAN, 1.0]],
        &Device::Cpu,
    )
    .unwrap();
    let y = table.forward(&x).unwrap().to_vec2::<f32>().unwrap();
    assert!(y[0][0].is_nan() && y[0][1].is_nan(), "{:?}", y[0]);
    assert_eq!(y[1][0].to_bits(), 0.0f32.to_bits(), "{:?}", y[1]);
    assert_eq!(y[1][1].to_bits(), (-0.0f32).to_bits(), "{:?}", y[1]);
    assert!(y[2].iter().all(|v| v.is_nan()), "{:?}", y[2]);
    // Refusals: the pair for other formats, activation products, switching layouts.
    for format in [WeightFormat::F32, WeightFormat::F16] {
        let err = LogWeight::from_tensor(&w, LogConfig::new(format, ExpMode::Table))
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("({format}, table)")), "{err}");
    }
    let a = randn(1, &[2, 3], 1.0, DType::F32);
    let err = log_matmul_with(&a, &a.t().unwrap(), ExpMode::Table)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("table") && err.contains("activations"),
        "{err}"
    );
    let err = emilio_tests::error_text(&table.with_exp(ExpMode::Exact).unwrap_err());
    assert!(err.contains("blocks of 16 rows"), "{err}");
    // One sentence: no escaped line break left in it (a `\\` once printed a backslash and the
    // next line's indentation), and it says how to get a weight for the other mode.
    assert!(!err.contains('\\') && !err.contains("  "), "{err:?}");
    assert!(err.contains("LogConfig::new(lns4, exact)"), "{err}");
    let plain = LogWeight::from_tensor(&w, WeightFormat::Lns4).unwrap();
    let err = emilio_tests::error_text(&plain.with_exp(ExpMode::Table).unwrap_err());
    assert!(
        err.contains("blocks of 16 rows") && !err.contains('\\') && !err.contains("  "),
        "{err:?}"
    );
}

/// `lns8`'s table mode at the edges: IEEE's specials and signed zeros, activations past the
/// range its exponent add is exact in (computed in f64, so a product overflows or underflows
/// where the true one does, no earlier), and bit for bit the f64 sum over the stored codes
/// wherever it leaves the table path.
#[test]
fn lns8_table_edges_are_the_true_products() {
    let config = LogConfig::new(WeightFormat::Lns8, ExpMode::Table);
    let w = Tensor::new(
        &[
            [0.0f32, 1.0, 0.5],
            [-0.0, 0.0, -0.0],
            [2.0, -3.0, 1.5],
            [1e30, 1e-30, -1.0],
        ],
        &Device::Cpu,
    )
    .unwrap();
    let weight = LogWeight::from_tensor(&w, config).unwrap();
    let stored = to_f64_vec(&weight.dequantize().unwrap());
    let big = f32::from_bits((127 + 121) << 23); // past the table's 2^120
    let rows: [[f32; 3]; 8] = [
        [f32::INFINITY, 0.0, 1.0], // inf·0: NaN
        [1.0, -0.0, 2.0],          // finite, with signed zeros among the products
        [0.0, 0.0, 0.0],           // every product a zero: the signs decide
        [-0.0, -0.0, -0.0],
        [f32::NAN, 1.0, 1.0],
        [3e38, 3e38, 1.0], // products past f32::MAX: +inf where the true ones are
        [1e-40, -1e-41, 0.0], // subnormal activations
        [big, 1.0, -big],
    ];
    let x = Tensor::new(&rows, &Device::Cpu).unwrap();
    let y = weight.forward(&x).unwrap().to_vec2::<f32>().unwrap();
    for (i, row) in rows.iter().enumerate() {
        for j in 0..4 {
            let mut want = -0.0f64;
            for (k, &a) in row.iter().enumerate() {
                want += f64::from(a) * stored[j * 3 + k];
            }
            let (got, want) = (y[i][j], want as f32);
            let same = got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan());
            // Rows 0 and 2–7 leave the table path (a special, or a zero result): bit for bit.
            // Row 1 stays on it: within the bound, and zero results are exact zeros.
            if i == 1 && want != 0.0 {
                assert!(
                    ((got - want) / want).abs() < 1e-6,
                    "row {i} out {j}: {got} vs {want}"
                );
            } else {
                assert!(
                    same,
                    "row {i} out {j}: {got:e} ({:#x}) vs {want:e}",
                    got.to_bits()
                );
            }
        }
    }
    assert!(y[0][0].is_nan() && y[4].iter().all(|v| v.is_nan()));
    assert_eq!(y[5][3], f32::INFINITY);
    // A large activation within the table's range: the exponent add does not overflow where
    // the true product is finite.
    let x = Tensor::new(&[[2f32.powi(119), 0.0, 0.0]], &Device::Cpu).unwrap();
    let y = weight.forward(&x).unwrap().to_vec2::<f32>().unwrap();
    let want = 2f64.powi(119) * stored[2 * 3];
    assert!(
        ((f64::from(y[0][2]) - want) / want).abs() < 1e-6,
        "{:?} vs {want:e}",
        y[0]
    );
}

/// The registry of formats: names round-trip, each format's stated bits per weight are what
/// a converted weight occupies, and the modes each format lists are the pairs the op runs.
#[test]
fn every_registered_format_is_what_it_says() {
    let w = randn(11, &[32, 96], 0.05, DType::F32);
    let x = randn(12, &[3, 96], 1.0, DType::F32);
    for format in WeightFormat::ALL {
        assert_eq!(format.name().parse::<WeightFormat>().unwrap(), format);
        assert_eq!(format.to_string(), format.name());
        assert!(!format.summary().is_empty());
        let modes = format.exp_modes();
        assert!(modes.contains(&ExpMode::Exact), "{format}: {modes:?}");
        for exp in ExpMode::ALL {
            let config = LogConfig::new(format, exp);
            assert_eq!(modes.contains(&exp), config.is_supported(), "{config}");
            let converted = LogWeight::from_tensor(&w, config);
            if !modes.contains(&exp) {
                assert!(converted.is_err(), "{config}");
                continue;
            }
            let lw = converted.unwrap();
            assert_eq!(lw.format(), format);
            let bits = lw.size_in_bytes() as f64 * 8.0 / (32.0 * 96.0);
            assert_eq!(bits, format.bits_per_weight(), "{config}");
            // Every supported pair runs on the CPU, and a GPU check names what does not.
            assert_eq!(lw.forward(&x).unwrap().dims(), &[3, 32]);
            assert!(config.check_device(&Device::Cpu).is_ok());
        }
    }
    let err = emilio_tests::error_text(&"lns16".parse::<WeightFormat>().unwrap_err());
    for format in WeightFormat::ALL {
        assert!(err.contains(&format!("\"{format}\"")), "{err}");
    }
}
