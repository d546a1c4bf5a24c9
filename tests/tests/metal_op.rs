//! The op on an Apple GPU (`--features metal`): `log_matmul` and `LogLinear` on
//! `Device::new_metal(0)` against the `f64` reference under the same error budget as the CPU
//! tests (`op_matmul.rs`, `op_linear.rs`, `op_edges.rs`), and against the CPU op itself.
//!
//! Run on a Mac with:
//! `cargo test -p emilio-tests --features metal --test metal_op --test metal_model`
//!
//! Without the feature these tests are compiled (so they keep building) and reported as ignored.
//! The kernels' logic is also checked on every platform by emilio-op's emulator tests
//! (`emilio-op/src/metal/emulate.rs`); these tests are what only Apple hardware can answer: the
//! Metal compiler, the GPU's arithmetic (subnormals, conversions) and the encoding.

use candle_core::{DType, Device, Module, Tensor};
use emilio_op::{broadcast_log_matmul, log_matmul, LogLinear, LogWeight, WeightFormat};
use emilio_tests::{
    broadcast_operands, expect_err, randn, reference_matmul, tensor_from_f64, to_f64_vec, Budget,
};

/// The Metal device every test runs on.
fn metal() -> Device {
    Device::new_metal(0).expect("Device::new_metal(0): these tests need an Apple GPU")
}

/// A CPU tensor moved to `dev` with its layout (strides, offset) unchanged.
fn on(dev: &Device, t: &Tensor) -> Tensor {
    let moved = t.to_device(dev).unwrap();
    assert_eq!(moved.stride(), t.stride(), "to_device keeps the layout");
    moved
}

fn cpu(t: &Tensor) -> Tensor {
    assert!(
        t.device().is_metal(),
        "the result stays on the Metal device"
    );
    t.to_device(&Device::Cpu).unwrap()
}

/// The Metal result against the reference (op's budget) and against the CPU op (both under the
/// op's budget: the same products, summed in another order).
fn case(what: &str, a: &Tensor, b: &Tensor) {
    let dev = metal();
    let what = format!("metal {what} {:?}x{:?} {:?}", a.dims(), b.dims(), a.dtype());
    let ours = log_matmul(&on(&dev, a), &on(&dev, b))
        .unwrap_or_else(|e| panic!("{what}: log_matmul failed: {e}"));
    assert_eq!(ours.dtype(), a.dtype(), "{what}: dtype");
    let ours = cpu(&ours);
    let on_cpu = log_matmul(a, b).unwrap();
    assert_eq!(ours.dims(), on_cpu.dims(), "{what}: dims");
    let r = reference_matmul(a, b, Budget::for_dtype(a.dtype()));
    r.check(&what, &ours);
    r.check(&format!("{what} (CPU op)"), &on_cpu);
}

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

const SMALL: [(usize, usize, usize); 12] = [
    (1, 1, 1),
    (1, 3, 1),
    (2, 7, 3),
    (5, 31, 4),
    (3, 33, 7),
    (7, 65, 5),
    (33, 1, 65),
    (64, 64, 64),
    (17, 256, 31),
    (2, 1000, 3),
    (129, 65, 130),
    (1, 33, 257),
];

#[test]
#[cfg_attr(
    not(feature = "metal"),
    ignore = "needs --features metal and an Apple GPU"
)]
fn small_and_odd_shapes() {
    for (d, &dtype) in DTYPES.iter().enumerate() {
        for (i, &(m, k, n)) in SMALL.iter().enumerate() {
            let s = 1000 * (d as u64 + 1) + 2 * i as u64;
            let a = randn(s, &[m, k], 1.0, dtype);
            let b = randn(s + 1, &[k, n], 1.0, dtype);
            case(&format!("small #{i}"), &a, &b);
        }
    }
}

#[test]
#[cfg_attr(
    not(feature = "metal"),
    ignore = "needs --features metal and an Apple GPU"
)]
fn model_scale_products() {
    // Prefill up-projection, decode against a Linear-layout (transposed) weight, down-projection.
    let a = randn(11, &[128, 896], 1.0, DType::F32);
    let b = randn(12, &[896, 4864], 0.03, DType::F32);
    case("prefill 128x896x4864", &a, &b);
    let a = randn(13, &[1, 896], 1.0, DType::F32);
    let b = randn(14, &[4864, 896], 0.03, DType::F32).t().unwrap();
    case("decode 1x896x4864 bT", &a, &b);
    let a = randn(15, &[16, 4864], 1.0, DType::F32);
    let b = randn(16, &[4864, 896], 0.03, DType::F32);
    case("down 16x4864x896", &a, &b);
}

#[test]
#[cfg_attr(
    not(feature = "metal"),
    ignore = "needs --features metal and an Apple GPU"
)]
fn batched_attention_and_strided_operands() {
    for (d, &dtype) in DTYPES.iter().enumerate() {
        let s = 100 * (d as u64 + 1);
        let r = |o: u64, dims: &[usize]| randn(s + o, dims, 1.0, dtype);
        case("3-D", &r(0, &[3, 5, 17]), &r(1, &[3, 17, 6]));
        case("4-D", &r(2, &[2, 3, 9, 40]), &r(3, &[2, 3, 40, 17]));
        // Qwen2.5-0.5B attention: 14 heads of 64, prefill q·kᵀ and p·v, then decode.
        let q = r(4, &[1, 14, 13, 64]);
        let k = r(5, &[1, 14, 13, 64]);
        case("q·kᵀ prefill", &q, &k.transpose(2, 3).unwrap());
        let p = r(6, &[1, 14, 13, 13]);
        let v = r(7, &[1, 14, 13, 64]);
        case("p·v prefill", &p, &v);
        let q1 = r(8, &[1, 14, 1, 64]);
        let kc = r(9, &[1, 14, 70, 64]);
        case("q·kᵀ decode", &q1, &kc.transpose(2, 3).unwrap());
        // Transposed, narrowed and stride-0 broadcast operands.
        case(
            "both transposed",
            &r(10, &[9, 7]).t().unwrap(),
            &r(11, &[5, 9]).t().unwrap(),
        );
        case(
            "narrowed",
            &r(12, &[6, 50]).narrow(1, 3, 40).unwrap(),
            &r(13, &[45, 8]).narrow(0, 2, 40).unwrap(),
        );
        case(
            "stride-0 batch a",
            &r(14, &[1, 4, 9]).broadcast_as((3, 4, 9)).unwrap(),
            &r(15, &[3, 9, 5]),
        );
        case(
            "stride-0 batch b",
            &r(16, &[3, 4, 9]),
            &r(17, &[1, 9, 5]).broadcast_as((3, 9, 5)).unwrap(),
        );
    }
}

#[test]
#[cfg_attr(
    not(feature = "metal"),
    ignore = "needs --features metal and an Apple GPU"
)]
fn broadcast_log_matmul_on_metal() {
    let dev = metal();
    let a = randn(300, &[2, 3, 5, 17], 1.0, DType::F32);
    let b = randn(301, &[17, 4], 1.0, DType::F32);
    let ours = cpu(&broadcast_log_matmul(&on(&dev, &a), &on(&dev, &b)).unwrap());
    let (ba, bb) = broadcast_operands(&a, &b);
    reference_matmul(&ba, &bb, Budget::for_dtype(DType::F32)).check("metal broadcast", &ours);
}

#[test]
#[cfg_attr(
    not(feature = "metal"),
    ignore = "needs --features metal and an Apple GPU"
)]
fn ieee_edges() {
    // Every pair of specials as a K = 1 product: zeros, infinities and NaN exactly as IEEE
    // (signs included), the rest within the budget; then short sums mixing them.
    let dev = metal();
    let inf = f64::INFINITY;
    for dtype in DTYPES {
        let sub = match dtype {
            DType::F32 => f32::from_bits(1) as f64,
            DType::F16 => half::f16::from_bits(1).to_f64(),
            _ => half::bf16::from_bits(1).to_f64(),
        };
        let specials = [0.0, -0.0, inf, -inf, f64::NAN, 3.0, -3.0, sub, -sub, 0.5];
        let n = specials.len();
        let a = tensor_from_f64(specials.to_vec(), &[n, 1], dtype);
        let b = tensor_from_f64(specials.to_vec(), &[1, n], dtype);
        let got = to_f64_vec(&cpu(&log_matmul(&on(&dev, &a), &on(&dev, &b)).unwrap()));
        let want = to_f64_vec(&log_matmul(&a, &b).unwrap());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let (x, y) = (specials[i / n], specials[i % n]);
            let ctx = format!("{dtype:?}: ({x:e})·({y:e}): metal {g:e}, CPU {w:e}");
            if w.is_nan() {
                assert!(g.is_nan(), "{ctx}");
            } else if w.is_infinite() || *w == 0.0 {
                assert_eq!(g.to_bits(), w.to_bits(), "{ctx}");
            }
        }
        let c = cpu(&log_matmul(&on(&dev, &a), &on(&dev, &b)).unwrap());
        // Finite non-zero products (subnormal ones included) under the budget.
        let finite = |v: &[f64]| {
            v.iter()
                .map(|x| if x.is_finite() { *x } else { 1.0 })
                .collect()
        };
        let (af, bf) = (finite(&specials), finite(&specials));
        let a2 = tensor_from_f64(af, &[n, 1], dtype);
        let b2 = tensor_from_f64(bf, &[1, n], dtype);
        let c2 = cpu(&log_matmul(&on(&dev, &a2), &on(&dev, &b2)).unwrap());
        reference_matmul(&a2, &b2, Budget::for_dtype(dtype)).check("finite specials", &c2);
        assert_eq!(c.dims(), &[n, n]);
    }
    // 0·inf inside a longer sum is NaN; +inf and -inf products give NaN; -0.0 terms keep -0.0.
    let a = tensor_from_f64(vec![0.0, 1.0, inf, -inf, -0.0, -0.0], &[3, 2], DType::F32);
    let b = tensor_from_f64(vec![inf, 1.0, 2.0, 1.0], &[2, 2], DType::F32);
    let got = to_f64_vec(&cpu(&log_matmul(&on(&dev, &a), &on(&dev, &b)).unwrap()));
    let want = to_f64_vec(&log_matmul(&a, &b).unwrap());
    for (g, w) in got.iter().zip(&want) {
        assert!(
            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
            "metal {g:e}, CPU {w:e}"
        );
    }
}

#[test]
#[cfg_attr(
    not(feature = "metal"),
    ignore = "needs --features metal and an Apple GPU"
)]
fn overflow_and_underflow_only_where_the_product_does() {
    let dev = metal();
    // e^50 · e^50 overflows f32 only as a product; e^-60 · e^-30 is a subnormal product.
    let big = (50f64).exp();
    let a = tensor_from_f64(vec![big, (-60f64).exp(), 1e-20], &[3, 1], DType::F32);
    let b = tensor_from_f64(vec![big, (-30f64).exp(), 1e20], &[1, 3], DType::F32);
    let got = cpu(&log_matmul(&on(&dev, &a), &on(&dev, &b)).unwrap());
    reference_matmul(&a, &b, Budget::for_dtype(DType::F32)).check("metal over/underflow", &got);
}

#[test]
#[cfg_attr(
    not(feature = "metal"),
    ignore = "needs --features metal and an Apple GPU"
)]
fn k_zero_and_empty() {
    let dev = metal();
    let a = Tensor::zeros((3, 0), DType::F32, &dev).unwrap();
    let b = Tensor::zeros((0, 4), DType::F32, &dev).unwrap();
    let c = cpu(&log_matmul(&a, &b).unwrap());
    assert_eq!(c.dims(), &[3, 4]);
    assert!(to_f64_vec(&c).iter().all(|v| *v == 0.0));
    let a = Tensor::zeros((2, 0, 5), DType::F32, &dev).unwrap();
    let b = Tensor::zeros((2, 5, 3), DType::F32, &dev).unwrap();
    assert_eq!(log_matmul(&a, &b).unwrap().dims(), &[2, 0, 3]);
}

#[test]
#[cfg_attr(
    not(feature = "metal"),
    ignore = "needs --features metal and an Apple GPU"
)]
fn unsupported_dtypes_are_clear_errors() {
    let dev = metal();
    // Candle may refuse f64 on Metal before the op does; either way the error names f64.
    let err = expect_err("f64 on metal", || {
        let a = Tensor::zeros((2, 3), DType::F64, &dev)?;
        let b = Tensor::zeros((3, 4), DType::F64, &dev)?;
        log_matmul(&a, &b)
    });
    assert!(err.contains("f64"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// LogLinear
// ---------------------------------------------------------------------------------------------

fn budget(format: WeightFormat, x_dtype: DType) -> Budget {
    match format {
        WeightFormat::F32 => Budget::linear_f32(x_dtype),
        WeightFormat::F16 => Budget::linear_f16(x_dtype),
    }
}

/// A layer built on the Metal device from CPU weights `w` (and bias `b`), run on `x`, checked
/// against the reference over the original weights (the budget of `format`).
fn linear_case(what: &str, x: &Tensor, w: &Tensor, b: Option<&Tensor>, format: WeightFormat) {
    let dev = metal();
    let what = format!(
        "metal {what} x{:?} w{:?} {format} {:?}",
        x.dims(),
        w.dims(),
        x.dtype()
    );
    let layer = LogLinear::from_weights(&on(&dev, w), b.map(|b| on(&dev, b)), format).unwrap();
    assert!(layer.weight().magnitudes().device().is_metal());
    let y = cpu(&layer.forward(&on(&dev, x)).unwrap());
    let in_dim = w.dim(1).unwrap();
    let rows = x.elem_count() / in_dim;
    let x2 = x.reshape((rows, in_dim)).unwrap();
    let mut r = reference_matmul(&x2, &w.t().unwrap(), budget(format, x.dtype()));
    if let Some(b) = b {
        r = r.with_bias(b);
    }
    let mut out_dims = x.dims().to_vec();
    *out_dims.last_mut().unwrap() = w.dim(0).unwrap();
    r.reshaped(&out_dims).check(&what, &y);
}

#[test]
#[cfg_attr(
    not(feature = "metal"),
    ignore = "needs --features metal and an Apple GPU"
)]
fn linear_decode_and_prefill() {
    // Rows 1..=4 take the GEMV kernel, more the tiled GEMM.
    for format in [WeightFormat::F32, WeightFormat::F16] {
        let w = randn(1, &[4864, 896], 0.03, DType::F32);
        let b = randn(2, &[4864], 0.1, DType::F32);
        for rows in [1usize, 2, 4, 5, 128] {
            let x = randn(3 + rows as u64, &[1, rows, 896], 1.0, DType::F32);
            linear_case(&format!("{rows} rows"), &x, &w, Some(&b), format);
        }
        // Odd and small shapes.
        for (i, &(out_dim, in_dim, rows)) in [(1, 1, 3), (7, 31, 5), (5, 100, 2), (33, 33, 33)]
            .iter()
            .enumerate()
        {
            let w = randn(10 + i as u64, &[out_dim, in_dim], 0.05, DType::F32);
            let x = randn(20 + i as u64, &[rows, in_dim], 1.0, DType::F32);
            linear_case("odd", &x, &w, None, format);
        }
    }
}

#[test]
#[cfg_attr(
    not(feature = "metal"),
    ignore = "needs --features metal and an Apple GPU"
)]
fn linear_dtypes_and_layouts() {
    let w = randn(40, &[96, 72], 0.05, DType::F32);
    for format in [WeightFormat::F32, WeightFormat::F16] {
        for (i, dtype) in DTYPES.into_iter().enumerate() {
            for rows in [1usize, 7] {
                let x = randn(41 + i as u64, &[rows, 72], 1.0, dtype);
                linear_case("x dtype", &x, &w, None, format);
            }
        }
        let x = randn(50, &[5, 3, 72], 1.0, DType::F32)
            .transpose(0, 1)
            .unwrap();
        linear_case("transposed batch", &x, &w, None, format);
        let x = randn(51, &[2, 100], 1.0, DType::F32)
            .narrow(1, 20, 72)
            .unwrap();
        linear_case("narrowed", &x, &w, None, format);
        let x = randn(52, &[72, 4], 1.0, DType::F32).t().unwrap();
        linear_case("column-major", &x, &w, None, format);
        let x = randn(53, &[1, 3, 72], 1.0, DType::F32)
            .broadcast_as((2, 3, 72))
            .unwrap();
        linear_case("stride-0 batch", &x, &w, None, format);
    }
}

#[test]
#[cfg_attr(
    not(feature = "metal"),
    ignore = "needs --features metal and an Apple GPU"
)]
fn linear_signed_zeros_and_specials() {
    let dev = metal();
    let w = tensor_from_f64(
        vec![1.0, -2.0, 0.0, -0.0, 1e30, f64::INFINITY, 0.5, -0.25],
        &[2, 4],
        DType::F32,
    );
    for format in [WeightFormat::F32, WeightFormat::F16] {
        let lw = LogWeight::from_tensor(&w, format).unwrap();
        let lw_m = LogWeight::from_tensor(&on(&dev, &w), format).unwrap();
        for rows in [1usize, 6] {
            let vals: Vec<f64> = (0..rows * 4)
                .map(|i| [-0.0, 0.0, f64::NAN, 2.0, -0.0, 1e-30, -1e10, 0.0][i % 8])
                .collect();
            let x = tensor_from_f64(vals, &[rows, 4], DType::F32);
            let got = to_f64_vec(&cpu(&lw_m.forward(&on(&dev, &x)).unwrap()));
            let want = to_f64_vec(&lw.forward(&x).unwrap());
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let ctx = format!("{format} rows {rows} output {i}: metal {g:e}, CPU {w:e}");
                if w.is_nan() {
                    assert!(g.is_nan(), "{ctx}");
                } else if w.is_infinite() || *w == 0.0 {
                    assert_eq!(g.to_bits(), w.to_bits(), "{ctx}");
                } else {
                    assert!(((g - w) / w).abs() < 1e-5, "{ctx}");
                }
            }
        }
    }
}
