//! IEEE edge cases of `log_matmul` and `LogLinear`: signed zeros (bit-exact for `K = 1`),
//! subnormal inputs and results, infinities, `0·inf = NaN`, NaN propagation, overflow and
//! underflow only where the true product does, zero rows/columns, and huge and tiny magnitudes
//! in one sum; in `f32` and `f64` (and `f16`/`bf16` where representable), and through
//! `LogLinear` with both weight formats. Everything else is held to the `f64` reference under
//! the error budget documented in `emilio_tests`.

use candle_core::{DType, Module, Tensor};
use emilio_op::{log_matmul, LogLinear, WeightFormat};
use emilio_tests::{
    f32_bits, f64_bits, reference_matmul, tensor_from_f64, to_f64_vec, wide, Budget,
};

const INF: f64 = f64::INFINITY;
const NAN: f64 = f64::NAN;

fn t(vals: &[f64], dims: &[usize], dtype: DType) -> Tensor {
    tensor_from_f64(vals.to_vec(), dims, dtype)
}

/// `log_matmul(a, b)` checked against the reference; returns the result as `f64`s.
fn checked(what: &str, a: &Tensor, b: &Tensor) -> Vec<f64> {
    let c = log_matmul(a, b).unwrap_or_else(|e| panic!("{what}: {e}"));
    reference_matmul(a, b, Budget::for_dtype(a.dtype())).check(what, &c);
    to_f64_vec(&c)
}

fn smallest_subnormal(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => f32::from_bits(1) as f64,
        DType::F64 => f64::from_bits(1),
        DType::F16 => half::f16::from_bits(1).to_f64(),
        DType::BF16 => half::bf16::from_bits(1).to_f64(),
        _ => unreachable!(),
    }
}

/// Every pair of special operands as a `K = 1` product, each dtype. Zero, infinite and NaN
/// results are exact IEEE (sign of zero and of infinity included); finite non-zero results are
/// held to the reference.
#[test]
fn k1_special_products_are_ieee() {
    for dtype in [DType::F32, DType::F64, DType::F16, DType::BF16] {
        let sub = smallest_subnormal(dtype);
        let specials = [0.0, -0.0, INF, -INF, NAN, 3.0, -3.0, sub, -sub, 0.5];
        let n = specials.len();
        let a = t(&specials, &[n, 1], dtype);
        let b = t(&specials, &[1, n], dtype);
        let c = log_matmul(&a, &b).unwrap();
        assert_eq!(c.dtype(), dtype);
        let got = to_f64_vec(&c);
        for (i, &x) in specials.iter().enumerate() {
            for (j, &y) in specials.iter().enumerate() {
                let g = got[i * n + j];
                // The exact product's class; finite non-zero products are left to the
                // reference (their rounding, even to 0 for half the smallest subnormal, is
                // within the budget).
                let sign = if x.is_sign_negative() != y.is_sign_negative() {
                    -1.0
                } else {
                    1.0
                };
                let want = if x.is_nan()
                    || y.is_nan()
                    || (x == 0.0 && y.is_infinite())
                    || (x.is_infinite() && y == 0.0)
                {
                    NAN
                } else if x.is_infinite() || y.is_infinite() {
                    sign * INF
                } else if x == 0.0 || y == 0.0 {
                    sign * 0.0
                } else {
                    continue;
                };
                let ctx = format!("{dtype:?}: ({x:e})·({y:e}) gave {g:e}, want {want:e}");
                if want.is_nan() {
                    assert!(g.is_nan(), "{ctx}");
                } else if want.is_infinite() || want == 0.0 {
                    assert!(
                        g == want && g.is_sign_negative() == want.is_sign_negative(),
                        "{ctx} (sign bit included)"
                    );
                }
            }
        }
        reference_matmul(&a, &b, Budget::for_dtype(dtype)).check(&format!("k1 {dtype:?}"), &c);
    }
}

/// The zero cases of the contract, bit for bit: `(-0)·3 = -0`, `(-0)·(-3) = +0`, `0·(-3) = -0`.
#[test]
fn k1_signed_zero_bit_exact() {
    let cases = [
        (-0.0, 3.0),
        (-0.0, -3.0),
        (0.0, -3.0),
        (0.0, 3.0),
        (-0.0, -0.0),
        (0.0, -0.0),
    ];
    for (x, y) in cases {
        let a32 = t(&[x], &[1, 1], DType::F32);
        let b32 = t(&[y], &[1, 1], DType::F32);
        let c = log_matmul(&a32, &b32).unwrap();
        assert_eq!(
            f32_bits(&c),
            vec![(x as f32 * y as f32).to_bits()],
            "f32 ({x:e})·({y:e})"
        );
        let c = log_matmul(&t(&[x], &[1, 1], DType::F64), &t(&[y], &[1, 1], DType::F64)).unwrap();
        assert_eq!(f64_bits(&c), vec![(x * y).to_bits()], "f64 ({x:e})·({y:e})");
    }
}

/// The accumulator starts at `-0.0` (the additive identity): a sum of `-0` products is `-0`.
#[test]
fn all_negative_zero_products_sum_to_negative_zero() {
    for k in [2usize, 3, 31, 64, 100] {
        for (dtype, name) in [(DType::F32, "f32"), (DType::F64, "f64")] {
            // a = -0, b > 0 and a = +0, b < 0 both give -0 products.
            let a1 = t(&vec![-0.0; 3 * k], &[3, k], dtype);
            let b1 = t(&vec![2.5; k * 2], &[k, 2], dtype);
            let a2 = t(&vec![0.0; 3 * k], &[3, k], dtype);
            let b2 = t(&vec![-2.5; k * 2], &[k, 2], dtype);
            for (a, b) in [(&a1, &b1), (&a2, &b2)] {
                let c = log_matmul(a, b).unwrap();
                let got = to_f64_vec(&c);
                assert!(
                    got.iter().all(|v| *v == 0.0 && v.is_sign_negative()),
                    "{name} k={k}: sum of -0 products must be -0.0, got {got:?}"
                );
            }
        }
    }
}

#[test]
fn zero_rows_and_columns() {
    for (i, dtype) in [DType::F32, DType::F64].into_iter().enumerate() {
        let (m, k, n) = (4, 33, 5);
        let mut av = to_f64_vec(&emilio_tests::randn(40 + i as u64, &[m, k], 1.0, dtype));
        let mut bv = to_f64_vec(&emilio_tests::randn(50 + i as u64, &[k, n], 1.0, dtype));
        for (t_, v) in av[k..2 * k].iter_mut().enumerate() {
            *v = if t_ % 2 == 0 { 0.0 } else { -0.0 }; // row 1
        }
        for t_ in 0..k {
            bv[t_ * n + 2] = if t_ % 3 == 0 { -0.0 } else { 0.0 }; // column 2
        }
        let a = t(&av, &[m, k], dtype);
        let b = t(&bv, &[k, n], dtype);
        let got = checked(&format!("zero row/col {dtype:?}"), &a, &b);
        for j in 0..n {
            assert_eq!(got[n + j], 0.0, "{dtype:?}: zero row gave {}", got[n + j]);
        }
        for r in 0..m {
            assert_eq!(
                got[r * n + 2],
                0.0,
                "{dtype:?}: zero column gave {}",
                got[r * n + 2]
            );
        }
        // A whole zero matrix.
        let z = t(&vec![0.0; m * k], &[m, k], dtype);
        let got = checked(&format!("zero matrix {dtype:?}"), &z, &b);
        assert!(got.iter().all(|v| *v == 0.0), "{got:?}");
    }
}

#[test]
fn subnormal_inputs() {
    // f32: subnormal × large gives normal results; the log of a subnormal must be right.
    let a = [
        1e-40,
        -3e-42,
        f32::from_bits(1) as f64,
        1.0e-38,
        5e-39,
        -7e-45,
    ];
    let b = [1e30, 1e35, 1e38, 2.0, -1e20, 3e38];
    let (n, k) = (a.len(), 1);
    let at = t(&a, &[n, k], DType::F32);
    let bt = t(&b, &[k, n], DType::F32);
    let got = checked("f32 subnormal k=1", &at, &bt);
    // 1e-40·1e30 ≈ 1e-10: a normal result that must not be lost.
    assert!(
        (got[0] / (a[0] as f32 as f64 * 1e30) - 1.0).abs() < 1e-4,
        "{}",
        got[0]
    );
    // Summed in a row.
    let at = t(&a, &[1, 6], DType::F32);
    let bt = t(&b, &[6, 1], DType::F32);
    checked("f32 subnormal row", &at, &bt);

    let a = [1e-310, 5e-324, -2e-315, 1e-308, 4e-320];
    let b = [1e300, 1e308, 1e10, -1.0, 1e307];
    let at = t(&a, &[5, 1], DType::F64);
    let bt = t(&b, &[1, 5], DType::F64);
    let got = checked("f64 subnormal k=1", &at, &bt);
    assert!((got[0] / 1e-10 - 1.0).abs() < 1e-9, "{}", got[0]);
    checked(
        "f64 subnormal row",
        &t(&a, &[1, 5], DType::F64),
        &t(&b, &[5, 1], DType::F64),
    );
}

#[test]
fn infinities_and_nan_in_sums() {
    for dtype in [DType::F32, DType::F64] {
        // rows of a (K = 2) times columns of b; expectations by IEEE.
        let a = [
            INF, 1.0, // inf + ...
            -INF, 1.0, // -inf + ...
            INF, -INF, // inf - inf
            INF, 0.0, // inf·b0 + 0·b1
            1.0, 2.0, // finite
            NAN, 1.0, // NaN
        ];
        let b = [
            1.0, -2.0, 0.0, // b0
            1.0, 1.0, INF, // b1
        ];
        let at = t(&a, &[6, 2], dtype);
        let bt = t(&b, &[2, 3], dtype);
        let got = checked(&format!("infinities {dtype:?}"), &at, &bt);
        let want = [
            [INF, -INF, NAN], // column 2 holds inf·0 = NaN
            [-INF, INF, NAN],
            [NAN, -INF, NAN],
            [INF, -INF, NAN],
            [3.0, 0.0, INF],
            [NAN, NAN, NAN],
        ];
        for r in 0..6 {
            for c in 0..3 {
                let (g, w) = (got[r * 3 + c], want[r][c]);
                let ok = if w.is_nan() {
                    g.is_nan()
                } else if w.is_infinite() {
                    g == w
                } else {
                    g.is_finite()
                };
                assert!(
                    ok,
                    "{dtype:?}: a row {r} · b col {c}: got {g:e}, want {w:e}"
                );
            }
        }
    }
}

#[test]
fn nan_propagates_along_its_row_and_column() {
    for (s, dtype) in [(60u64, DType::F32), (61, DType::F64)] {
        let (m, k, n) = (5, 17, 6);
        let mut av = to_f64_vec(&emilio_tests::randn(s, &[m, k], 1.0, dtype));
        let mut bv = to_f64_vec(&emilio_tests::randn(s + 10, &[k, n], 1.0, dtype));
        av[2 * k + 7] = NAN; // row 2
        bv[16 * n + 4] = NAN; // column 4 (last k)
        let got = checked(
            &format!("nan {dtype:?}"),
            &t(&av, &[m, k], dtype),
            &t(&bv, &[k, n], dtype),
        );
        for i in 0..m {
            for j in 0..n {
                let g = got[i * n + j];
                assert_eq!(g.is_nan(), i == 2 || j == 4, "{dtype:?} [{i}, {j}] = {g}");
            }
        }
    }
}

#[test]
fn overflow_only_where_the_true_product_overflows() {
    // (a, b, overflows?) in f32.
    let f32_cases = [
        (1e30, 1e30, true),
        (-1e30, 1e30, true),
        (2e19, 2e19, true),
        (1e30, 1e-30, false),
        (1e38, 1e-38, false),
        (3e38, 0.5, false),
        (3.4e38, 1.0, false),
        (1.8e19, 1.8e19, false),
        (1e38, 1e-45, false),
    ];
    for (x, y, over) in f32_cases {
        let got = checked(
            &format!("f32 {x:e}·{y:e}"),
            &t(&[x], &[1, 1], DType::F32),
            &t(&[y], &[1, 1], DType::F32),
        )[0];
        assert_eq!(got.is_infinite(), over, "f32 {x:e}·{y:e} = {got:e}");
        if over {
            assert_eq!(got.is_sign_negative(), (x * y) < 0.0);
        }
    }
    let f64_cases = [
        (1e200, 1e200, true),
        (-1e155, 1e154, true),
        (1e200, 1e-200, false),
        (1e154, 1e154, false),
        (1e308, 1e-320, false),
        // Finite in f64 although both logs are far outside the f32 range.
        (1e30, 1e30, false),
    ];
    for (x, y, over) in f64_cases {
        let got = checked(
            &format!("f64 {x:e}·{y:e}"),
            &t(&[x], &[1, 1], DType::F64),
            &t(&[y], &[1, 1], DType::F64),
        )[0];
        assert_eq!(got.is_infinite(), over, "f64 {x:e}·{y:e} = {got:e}");
    }
    // Opposite-signed overflowing products: inf - inf = NaN in f32, but a finite 0 in f64.
    let a = [1e30, 1e30];
    let b = [1e30, -1e30];
    let g32 = checked(
        "f32 inf-inf",
        &t(&a, &[1, 2], DType::F32),
        &t(&b, &[2, 1], DType::F32),
    );
    assert!(
        g32[0].is_nan(),
        "f32 1e60 - 1e60 must be inf - inf = NaN, got {}",
        g32[0]
    );
    let g64 = checked(
        "f64 1e60-1e60",
        &t(&a, &[1, 2], DType::F64),
        &t(&b, &[2, 1], DType::F64),
    );
    assert!(
        g64[0].is_finite(),
        "f64 1e60 - 1e60 must be finite, got {}",
        g64[0]
    );
}

#[test]
fn underflow_only_where_the_true_product_underflows() {
    // f32: (a, b, true product)
    let cases = [
        (1e-30, 1e-30, 1e-60), // underflows to 0
        (1e-30, 1e30, 1.0),
        (1e-40, 1e35, 1e-5),
        (1e-20, 1e-22, 1e-42), // subnormal result
        (-1e-20, 1e-22, -1e-42),
        (1e-19, 1e-19, 1e-38), // just below the normal range
        (3e-23, 1e-22, 3e-45),
    ];
    for (x, y, _) in cases {
        let got = checked(
            &format!("f32 {x:e}·{y:e}"),
            &t(&[x], &[1, 1], DType::F32),
            &t(&[y], &[1, 1], DType::F32),
        )[0];
        let exact = (x as f32 as f64) * (y as f32 as f64);
        if exact.abs() < 1e-46 {
            assert_eq!(got, 0.0, "f32 {x:e}·{y:e} = {got:e}: must underflow to 0");
        } else {
            assert!(
                got != 0.0,
                "f32 {x:e}·{y:e} underflowed to 0 (true {exact:e})"
            );
            assert_eq!(got.is_sign_negative(), exact < 0.0);
        }
    }
    // Gradual underflow, explicitly: 1e-20·1e-22 within a few subnormal ulps of 1e-42.
    let got = checked(
        "f32 1e-42",
        &t(&[1e-20], &[1, 1], DType::F32),
        &t(&[1e-22], &[1, 1], DType::F32),
    )[0];
    let exact = (1e-20f32 as f64) * (1e-22f32 as f64);
    assert!(
        (got - exact).abs() <= 4.0 * f32::from_bits(1) as f64,
        "{got:e} vs {exact:e}"
    );

    let cases64 = [
        (1e-200, 1e-200),
        (1e-160, 1e-160),
        (1e-300, 1e-20),
        (1e-170, 1e170),
    ];
    for (x, y) in cases64 {
        let got = checked(
            &format!("f64 {x:e}·{y:e}"),
            &t(&[x], &[1, 1], DType::F64),
            &t(&[y], &[1, 1], DType::F64),
        )[0];
        let exact = x * y;
        if exact == 0.0 {
            assert_eq!(got, 0.0);
        } else {
            assert!(
                got != 0.0,
                "f64 {x:e}·{y:e} underflowed to 0 (true {exact:e})"
            );
        }
    }
}

#[test]
fn subnormal_results_summed() {
    // 64 products of ~1e-42 each: the sum lives in the f32 subnormal range.
    let k = 64;
    let mut r = emilio_tests::rng(70);
    let a: Vec<f64> = (0..2 * k)
        .map(|_| 1e-20 * (1.0 + emilio_tests::normal(&mut r).abs()))
        .collect();
    let b: Vec<f64> = (0..k * 3)
        .map(|_| 1e-22 * (1.0 + emilio_tests::normal(&mut r).abs()))
        .collect();
    let got = checked(
        "f32 subnormal sums",
        &t(&a, &[2, k], DType::F32),
        &t(&b, &[k, 3], DType::F32),
    );
    assert!(got.iter().all(|v| *v > 0.0 && *v < 1.17e-38), "{got:?}");
    let a: Vec<f64> = a.iter().map(|v| v * 1e-140).collect();
    let b: Vec<f64> = b.iter().map(|v| v * 1e-133).collect();
    let got = checked(
        "f64 subnormal sums",
        &t(&a, &[2, k], DType::F64),
        &t(&b, &[k, 3], DType::F64),
    );
    assert!(got.iter().all(|v| *v > 0.0 && *v < 2.3e-308), "{got:?}");
}

#[test]
fn huge_and_tiny_magnitudes_in_one_sum() {
    for (i, &(m, k, n)) in [(9, 64, 7), (3, 257, 5), (1, 1024, 3)].iter().enumerate() {
        let s = 80 + 2 * i as u64;
        // f32: magnitudes e^±40, products e^±80, all inside the f32 range.
        checked(
            "f32 wide",
            &wide(s, &[m, k], 40.0, DType::F32),
            &wide(s + 1, &[k, n], 40.0, DType::F32),
        );
        // Products reaching the subnormal range and near overflow, mixed.
        checked(
            "f32 very wide",
            &wide(s, &[m, k], 44.0, DType::F32),
            &wide(s + 1, &[k, n], 44.0, DType::F32),
        );
        // f64: magnitudes e^±300 (beyond f32) converted from f32 seeds scaled in f64.
        let a: Vec<f64> = to_f64_vec(&wide(s, &[m, k], 40.0, DType::F64))
            .iter()
            .map(|v| v.signum() * v.abs().powf(7.0))
            .collect();
        let b: Vec<f64> = to_f64_vec(&wide(s + 1, &[k, n], 40.0, DType::F64))
            .iter()
            .map(|v| v.signum() * v.abs().powf(7.0))
            .collect();
        checked(
            "f64 wide",
            &t(&a, &[m, k], DType::F64),
            &t(&b, &[k, n], DType::F64),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Through LogLinear (both weight formats)
// ---------------------------------------------------------------------------------------------

fn linear_budget(format: WeightFormat) -> Budget {
    match format {
        WeightFormat::F32 => Budget::linear_f32(DType::F32),
        WeightFormat::F16 => Budget::linear_f16(DType::F32),
        // lns8 stores finite weights only: its edges are in op_modes.rs.
        WeightFormat::Lns8 | WeightFormat::Lns4 => unreachable!("no lns case here"),
    }
}

/// `LogLinear` (no bias) on special weights and inputs against the reference of `x·Wᵀ`.
fn linear_edges(format: WeightFormat) -> Vec<f64> {
    let w = [
        [0.0, -0.0, 1.0, -1.0, 2.0],
        [1e-40, 3e-42, 1e-30, 1e30, 3.0],
        [INF, 1.0, 2.0, 3.0, 4.0],
        [-INF, 0.0, 1.0, 1.0, 1.0],
        [NAN, 1.0, 1.0, 1.0, 1.0],
        [1e38, 1e-38, 0.5, -0.25, 7.0],
        [1.0, 1.0, 1.0, 1.0, 1.0],
    ];
    let x = [
        [1.0, 2.0, 3.0, 4.0, 5.0],
        [0.0, -0.0, 0.0, -0.0, 0.0],
        [1e-40, 1.0, -1.0, 1e30, 1e-30],
        [INF, 1.0, 1.0, 1.0, 1.0],
        [1e30, 1e30, 1e30, 1e30, 1e30],
        [NAN, 0.0, 0.0, 0.0, 0.0],
        [-0.0, 1.0, 1.0, 1.0, -1.0],
        [1e-20, 1e-22, 1e-30, 1e-25, 1e-21],
    ];
    let wv: Vec<f64> = w.iter().flatten().copied().collect();
    let xv: Vec<f64> = x.iter().flatten().copied().collect();
    let wt = t(&wv, &[7, 5], DType::F32);
    let xt = t(&xv, &[8, 5], DType::F32);
    let lin = LogLinear::from_weights(&wt, None, format).unwrap();
    let y = lin.forward(&xt).unwrap();
    let r = reference_matmul(&xt, &wt.t().unwrap(), linear_budget(format));
    r.check(&format!("LogLinear edges {format}"), &y);
    to_f64_vec(&y)
}

#[test]
fn log_linear_edges_f32() {
    let y = linear_edges(WeightFormat::F32);
    // x row 3 = [inf, 1, 1, 1, 1] · w row 0 = [0, ...]: inf·0 = NaN.
    assert!(y[3 * 7].is_nan());
    // x row 0 · w row 2 (inf first): +inf; · w row 3: -inf; · w row 4 (NaN): NaN.
    assert_eq!(y[2], INF);
    assert_eq!(y[3], -INF);
    assert!(y[4].is_nan());
}

#[test]
fn log_linear_edges_f16() {
    let y = linear_edges(WeightFormat::F16);
    assert!(y[3 * 7].is_nan());
    assert_eq!(y[2], INF);
    assert_eq!(y[3], -INF);
    assert!(y[4].is_nan());
}

/// `in = 1`: every output is one product, so the sign of zero is exact through `LogLinear`.
#[test]
fn log_linear_signed_zero_bit_exact() {
    for format in [WeightFormat::F32, WeightFormat::F16] {
        let wv = [3.0, -3.0, 0.0, -0.0];
        let xv = [0.0, -0.0, 2.0, -2.0];
        let w = t(&wv, &[4, 1], DType::F32);
        let x = t(&xv, &[4, 1], DType::F32);
        let lin = LogLinear::from_weights(&w, None, format).unwrap();
        let y = f32_bits(&lin.forward(&x).unwrap());
        for (i, &xi) in xv.iter().enumerate() {
            for (o, &wo) in wv.iter().enumerate() {
                let p = xi as f32 * wo as f32;
                if p == 0.0 {
                    assert_eq!(
                        y[i * 4 + o],
                        p.to_bits(),
                        "{format}: ({xi:e})·({wo:e}) gave {}",
                        f32::from_bits(y[i * 4 + o])
                    );
                }
            }
        }
        // Also in f64 activations.
        let y = lin.forward(&x.to_dtype(DType::F64).unwrap()).unwrap();
        assert_eq!(y.dtype(), DType::F64);
        let y = f64_bits(&y);
        for (i, &xi) in xv.iter().enumerate() {
            for (o, &wo) in wv.iter().enumerate() {
                let p = xi * wo;
                if p == 0.0 {
                    assert_eq!(y[i * 4 + o], p.to_bits(), "{format} f64: ({xi:e})·({wo:e})");
                }
            }
        }
    }
}

#[test]
fn log_linear_huge_and_tiny_weights() {
    for format in [WeightFormat::F32, WeightFormat::F16] {
        let w = wide(90, &[13, 65], 30.0, DType::F32);
        let x = wide(91, &[4, 65], 30.0, DType::F32);
        let lin = LogLinear::from_weights(&w, None, format).unwrap();
        let y = lin.forward(&x).unwrap();
        reference_matmul(&x, &w.t().unwrap(), linear_budget(format))
            .check(&format!("LogLinear wide {format}"), &y);
    }
}
