//! The op on a GPU: `log_matmul` and `LogLinear` on the device against the `f64` reference under
//! the same error budget as the CPU tests (`op_matmul.rs`, `op_linear.rs`, `op_edges.rs`), and
//! against the CPU op itself. Every suite function takes the device and its label ("metal",
//! "cuda"); see `gpu/mod.rs` for how a backend runs them.
//!
//! Both backends take the same paths here: `f32`, `f16` and `bf16` operands (`f64` is refused
//! with an error naming it); a linear layer's inputs of at most 4 rows take the GEMV kernel and
//! more rows the tiled GEMM; the CUDA GEMV reads a weight row 16 bytes at a time only when rows
//! are 16-byte aligned, so `in` dimensions that are not a multiple of 8 are covered too.

use candle_core::{DType, Device, Module, Tensor};
use emilio_op::{broadcast_log_matmul, log_matmul, LogLinear, LogWeight, WeightFormat};
use emilio_tests::{
    broadcast_operands, expect_err, randn, reference_linear, reference_matmul, tensor_from_f64,
    to_f64_vec, Budget, SMALL_SHAPES,
};

use crate::gpu::Gpu;

impl Gpu<'_> {
    /// The device's result against the reference (op's budget) and against the CPU op (both
    /// under the op's budget: the same products, summed in another order).
    fn case(&self, what: &str, a: &Tensor, b: &Tensor) {
        let what = format!(
            "{} {what} {:?}x{:?} {:?}",
            self.label,
            a.dims(),
            b.dims(),
            a.dtype()
        );
        let ours = log_matmul(&self.on(a), &self.on(b))
            .unwrap_or_else(|e| panic!("{what}: log_matmul failed: {e}"));
        assert_eq!(ours.dtype(), a.dtype(), "{what}: dtype");
        let ours = self.cpu(&ours);
        let on_cpu = log_matmul(a, b).unwrap();
        assert_eq!(ours.dims(), on_cpu.dims(), "{what}: dims");
        let r = reference_matmul(a, b, Budget::for_dtype(a.dtype()));
        r.check(&what, &ours);
        r.check(&format!("{what} (CPU op)"), &on_cpu);
    }

    /// `log_matmul` of CPU operands `a` and `b` on the device, back on the CPU.
    fn log_matmul(&self, a: &Tensor, b: &Tensor) -> Tensor {
        self.cpu(&log_matmul(&self.on(a), &self.on(b)).unwrap())
    }

    /// A layer built on the device from CPU weights `w` (and bias `b`), run on `x`, checked
    /// against the reference over the original weights (the budget of `format`).
    fn linear_case(
        &self,
        what: &str,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        format: WeightFormat,
    ) {
        let what = format!(
            "{} {what} x{:?} w{:?} {format} {:?}",
            self.label,
            x.dims(),
            w.dims(),
            x.dtype()
        );
        let layer = LogLinear::from_weights(&self.on(w), b.map(|b| self.on(b)), format).unwrap();
        assert!(
            layer.weight().magnitudes().device().same_device(self.dev),
            "{what}: the converted weight stays on the device"
        );
        let y = layer
            .forward(&self.on(x))
            .unwrap_or_else(|e| panic!("{what}: forward failed: {e}"));
        let y = self.cpu(&y);
        reference_linear(x, w, b, format).check(&what, &y);
    }
}

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];
const FORMATS: [WeightFormat; 2] = [WeightFormat::F32, WeightFormat::F16];

pub fn small_and_odd_shapes(dev: &Device, label: &str) {
    let g = Gpu { dev, label };
    for (d, &dtype) in DTYPES.iter().enumerate() {
        for (i, &(m, k, n)) in SMALL_SHAPES.iter().enumerate() {
            let s = 1000 * (d as u64 + 1) + 2 * i as u64;
            let a = randn(s, &[m, k], 1.0, dtype);
            let b = randn(s + 1, &[k, n], 1.0, dtype);
            g.case(&format!("small #{i}"), &a, &b);
        }
    }
}

pub fn model_scale_products(dev: &Device, label: &str) {
    let g = Gpu { dev, label };
    // Prefill up-projection, decode against a Linear-layout (transposed) weight, down-projection.
    let a = randn(11, &[128, 896], 1.0, DType::F32);
    let b = randn(12, &[896, 4864], 0.03, DType::F32);
    g.case("prefill 128x896x4864", &a, &b);
    let a = randn(13, &[1, 896], 1.0, DType::F32);
    let b = randn(14, &[4864, 896], 0.03, DType::F32).t().unwrap();
    g.case("decode 1x896x4864 bT", &a, &b);
    let a = randn(15, &[16, 4864], 1.0, DType::F32);
    let b = randn(16, &[4864, 896], 0.03, DType::F32);
    g.case("down 16x4864x896", &a, &b);
}

pub fn batched_attention_and_strided_operands(dev: &Device, label: &str) {
    let g = Gpu { dev, label };
    for (d, &dtype) in DTYPES.iter().enumerate() {
        let s = 100 * (d as u64 + 1);
        let r = |o: u64, dims: &[usize]| randn(s + o, dims, 1.0, dtype);
        g.case("3-D", &r(0, &[3, 5, 17]), &r(1, &[3, 17, 6]));
        g.case("4-D", &r(2, &[2, 3, 9, 40]), &r(3, &[2, 3, 40, 17]));
        // Qwen2.5-0.5B attention: 14 heads of 64, prefill q·kᵀ and p·v, then decode.
        let q = r(4, &[1, 14, 13, 64]);
        let k = r(5, &[1, 14, 13, 64]);
        g.case("q·kᵀ prefill", &q, &k.transpose(2, 3).unwrap());
        let p = r(6, &[1, 14, 13, 13]);
        let v = r(7, &[1, 14, 13, 64]);
        g.case("p·v prefill", &p, &v);
        let q1 = r(8, &[1, 14, 1, 64]);
        let kc = r(9, &[1, 14, 70, 64]);
        g.case("q·kᵀ decode", &q1, &kc.transpose(2, 3).unwrap());
        // Transposed, narrowed and stride-0 broadcast operands.
        g.case(
            "both transposed",
            &r(10, &[9, 7]).t().unwrap(),
            &r(11, &[5, 9]).t().unwrap(),
        );
        g.case(
            "narrowed",
            &r(12, &[6, 50]).narrow(1, 3, 40).unwrap(),
            &r(13, &[45, 8]).narrow(0, 2, 40).unwrap(),
        );
        g.case(
            "stride-0 batch a",
            &r(14, &[1, 4, 9]).broadcast_as((3, 4, 9)).unwrap(),
            &r(15, &[3, 9, 5]),
        );
        g.case(
            "stride-0 batch b",
            &r(16, &[3, 4, 9]),
            &r(17, &[1, 9, 5]).broadcast_as((3, 9, 5)).unwrap(),
        );
    }
}

pub fn broadcast_log_matmul_on_device(dev: &Device, label: &str) {
    let g = Gpu { dev, label };
    let a = randn(300, &[2, 3, 5, 17], 1.0, DType::F32);
    let b = randn(301, &[17, 4], 1.0, DType::F32);
    let ours = g.cpu(&broadcast_log_matmul(&g.on(&a), &g.on(&b)).unwrap());
    let (ba, bb) = broadcast_operands(&a, &b);
    reference_matmul(&ba, &bb, Budget::for_dtype(DType::F32))
        .check(&format!("{label} broadcast"), &ours);
}

pub fn ieee_edges(dev: &Device, label: &str) {
    // Every pair of specials as a K = 1 product: zeros, infinities and NaN exactly as IEEE
    // (signs included), the rest within the budget; then short sums mixing them.
    let g = Gpu { dev, label };
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
        let c = g.log_matmul(&a, &b);
        assert_eq!(c.dims(), &[n, n]);
        let got = to_f64_vec(&c);
        let want = to_f64_vec(&log_matmul(&a, &b).unwrap());
        for (i, (got, want)) in got.iter().zip(&want).enumerate() {
            let (x, y) = (specials[i / n], specials[i % n]);
            let ctx = format!("{dtype:?}: ({x:e})·({y:e}): {label} {got:e}, CPU {want:e}");
            if want.is_nan() {
                assert!(got.is_nan(), "{ctx}");
            } else if want.is_infinite() || *want == 0.0 {
                assert_eq!(got.to_bits(), want.to_bits(), "{ctx}");
            }
        }
        // Finite non-zero products (subnormal ones included) under the budget.
        let finite: Vec<f64> = specials
            .iter()
            .map(|x| if x.is_finite() { *x } else { 1.0 })
            .collect();
        let a2 = tensor_from_f64(finite.clone(), &[n, 1], dtype);
        let b2 = tensor_from_f64(finite, &[1, n], dtype);
        let c2 = g.log_matmul(&a2, &b2);
        reference_matmul(&a2, &b2, Budget::for_dtype(dtype)).check("finite specials", &c2);
    }
    // 0·inf inside a longer sum is NaN; +inf and -inf products give NaN; -0.0 terms keep -0.0.
    let a = tensor_from_f64(vec![0.0, 1.0, inf, -inf, -0.0, -0.0], &[3, 2], DType::F32);
    let b = tensor_from_f64(vec![inf, 1.0, 2.0, 1.0], &[2, 2], DType::F32);
    let got = to_f64_vec(&g.log_matmul(&a, &b));
    let want = to_f64_vec(&log_matmul(&a, &b).unwrap());
    for (got, want) in got.iter().zip(&want) {
        assert!(
            got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
            "{label} {got:e}, CPU {want:e}"
        );
    }
}

pub fn overflow_and_underflow_only_where_the_product_does(dev: &Device, label: &str) {
    let g = Gpu { dev, label };
    // e^50 · e^50 overflows f32 only as a product; e^-60 · e^-30 is a subnormal product.
    let big = (50f64).exp();
    let a = tensor_from_f64(vec![big, (-60f64).exp(), 1e-20], &[3, 1], DType::F32);
    let b = tensor_from_f64(vec![big, (-30f64).exp(), 1e20], &[1, 3], DType::F32);
    let got = g.log_matmul(&a, &b);
    reference_matmul(&a, &b, Budget::for_dtype(DType::F32))
        .check(&format!("{label} over/underflow"), &got);
}

pub fn k_zero_and_empty(dev: &Device, label: &str) {
    let g = Gpu { dev, label };
    let a = Tensor::zeros((3, 0), DType::F32, dev).unwrap();
    let b = Tensor::zeros((0, 4), DType::F32, dev).unwrap();
    let c = g.cpu(&log_matmul(&a, &b).unwrap());
    assert_eq!(c.dims(), &[3, 4]);
    assert!(to_f64_vec(&c).iter().all(|v| *v == 0.0));
    let a = Tensor::zeros((2, 0, 5), DType::F32, dev).unwrap();
    let b = Tensor::zeros((2, 5, 3), DType::F32, dev).unwrap();
    assert_eq!(log_matmul(&a, &b).unwrap().dims(), &[2, 0, 3]);
}

pub fn unsupported_dtypes_are_clear_errors(dev: &Device, label: &str) {
    // Candle may refuse f64 on the device before the op does; either way the error names f64.
    let err = expect_err(&format!("f64 on {label}"), || {
        let a = Tensor::zeros((2, 3), DType::F64, dev)?;
        let b = Tensor::zeros((3, 4), DType::F64, dev)?;
        log_matmul(&a, &b)
    });
    assert!(err.contains("f64"), "{err}");
}

pub fn mixed_devices_are_clear_errors(dev: &Device, label: &str) {
    // An error (not a panic) that names both devices or says how to fix it.
    let g = Gpu { dev, label };
    let clear = |err: &str| {
        let err = err.to_lowercase();
        err.contains("to_device") || (err.contains("cpu") && err.contains(label))
    };
    let w = randn(60, &[6, 8], 0.1, DType::F32);
    let b = randn(61, &[6], 0.1, DType::F32);
    let x = randn(62, &[3, 8], 1.0, DType::F32);
    for format in FORMATS {
        let on_gpu = LogLinear::from_weights(&g.on(&w), Some(g.on(&b)), format).unwrap();
        let err = expect_err(&format!("{label} {format} layer, CPU input"), || {
            on_gpu.forward(&x)
        });
        assert!(clear(&err), "{err}");
        let on_cpu = LogLinear::from_weights(&w, Some(b.clone()), format).unwrap();
        let err = expect_err(&format!("CPU {format} layer, {label} input"), || {
            on_cpu.forward(&g.on(&x))
        });
        assert!(clear(&err), "{err}");
    }
    let err = expect_err(
        &format!("log_matmul of a {label} and a CPU operand"),
        || log_matmul(&g.on(&x), &w.t()?),
    );
    assert!(clear(&err), "{err}");
}

// ---------------------------------------------------------------------------------------------
// LogLinear
// ---------------------------------------------------------------------------------------------

pub fn linear_decode_and_prefill(dev: &Device, label: &str) {
    let g = Gpu { dev, label };
    // Rows 1..=4 take the GEMV kernel, more the tiled GEMM.
    for format in FORMATS {
        let w = randn(1, &[4864, 896], 0.03, DType::F32);
        let b = randn(2, &[4864], 0.1, DType::F32);
        for rows in [1usize, 2, 4, 5, 128] {
            let x = randn(3 + rows as u64, &[1, rows, 896], 1.0, DType::F32);
            g.linear_case(&format!("{rows} rows"), &x, &w, Some(&b), format);
        }
        // Odd and small shapes.
        for (i, &(out_dim, in_dim, rows)) in [(1, 1, 3), (7, 31, 5), (5, 100, 2), (33, 33, 33)]
            .iter()
            .enumerate()
        {
            let w = randn(10 + i as u64, &[out_dim, in_dim], 0.05, DType::F32);
            let x = randn(20 + i as u64, &[rows, in_dim], 1.0, DType::F32);
            g.linear_case("odd", &x, &w, None, format);
        }
    }
}

pub fn linear_unaligned_and_long_rows(dev: &Device, label: &str) {
    // The GEMV (rows ≤ 4) over rows that are not all 16-byte aligned (`in` not a multiple of 8:
    // f16 rows, and f32 rows for odd `in`, are not a multiple of 16 bytes long), and over long
    // aligned ones (`in` = 4864: the vectorised path), in every input dtype.
    let g = Gpu { dev, label };
    for format in FORMATS {
        for (d, dtype) in DTYPES.into_iter().enumerate() {
            let s = 100 * d as u64;
            for (i, in_dim) in [37usize, 100, 899].into_iter().enumerate() {
                let w = randn(70 + s + i as u64, &[45, in_dim], 0.05, DType::F32);
                let b = randn(75 + s + i as u64, &[45], 0.1, dtype);
                for rows in [1usize, 3] {
                    let x = randn(80 + s + rows as u64, &[rows, in_dim], 1.0, dtype);
                    g.linear_case(&format!("in {in_dim}"), &x, &w, Some(&b), format);
                }
            }
            let w = randn(90 + s, &[896, 4864], 0.03, DType::F32);
            let x = randn(91 + s, &[1, 4864], 1.0, dtype);
            g.linear_case("long rows", &x, &w, None, format);
            // The same input starting one element past an aligned address.
            let x = randn(92 + s, &[1, 4865], 1.0, dtype)
                .narrow(1, 1, 4864)
                .unwrap();
            g.linear_case("long rows, offset input", &x, &w, None, format);
        }
    }
}

pub fn linear_dtypes_and_layouts(dev: &Device, label: &str) {
    let g = Gpu { dev, label };
    let w = randn(40, &[96, 72], 0.05, DType::F32);
    for format in FORMATS {
        for (i, dtype) in DTYPES.into_iter().enumerate() {
            for rows in [1usize, 7] {
                let x = randn(41 + i as u64, &[rows, 72], 1.0, dtype);
                g.linear_case("x dtype", &x, &w, None, format);
            }
        }
        let x = randn(50, &[5, 3, 72], 1.0, DType::F32)
            .transpose(0, 1)
            .unwrap();
        g.linear_case("transposed batch", &x, &w, None, format);
        let x = randn(51, &[2, 100], 1.0, DType::F32)
            .narrow(1, 20, 72)
            .unwrap();
        g.linear_case("narrowed", &x, &w, None, format);
        let x = randn(52, &[72, 4], 1.0, DType::F32).t().unwrap();
        g.linear_case("column-major", &x, &w, None, format);
        let x = randn(53, &[1, 3, 72], 1.0, DType::F32)
            .broadcast_as((2, 3, 72))
            .unwrap();
        g.linear_case("stride-0 batch", &x, &w, None, format);
    }
}

pub fn linear_signed_zeros_and_specials(dev: &Device, label: &str) {
    let g = Gpu { dev, label };
    let w = tensor_from_f64(
        vec![1.0, -2.0, 0.0, -0.0, 1e30, f64::INFINITY, 0.5, -0.25],
        &[2, 4],
        DType::F32,
    );
    for format in FORMATS {
        let lw = LogWeight::from_tensor(&w, format).unwrap();
        let lw_dev = LogWeight::from_tensor(&g.on(&w), format).unwrap();
        for rows in [1usize, 6] {
            let vals: Vec<f64> = (0..rows * 4)
                .map(|i| [-0.0, 0.0, f64::NAN, 2.0, -0.0, 1e-30, -1e10, 0.0][i % 8])
                .collect();
            let x = tensor_from_f64(vals, &[rows, 4], DType::F32);
            let got = to_f64_vec(&g.cpu(&lw_dev.forward(&g.on(&x)).unwrap()));
            let want = to_f64_vec(&lw.forward(&x).unwrap());
            for (i, (got, want)) in got.iter().zip(&want).enumerate() {
                let ctx = format!("{format} rows {rows} output {i}: {label} {got:e}, CPU {want:e}");
                if want.is_nan() {
                    assert!(got.is_nan(), "{ctx}");
                } else if want.is_infinite() || *want == 0.0 {
                    assert_eq!(got.to_bits(), want.to_bits(), "{ctx}");
                } else {
                    assert!(((got - want) / want).abs() < 1e-5, "{ctx}");
                }
            }
        }
    }
}

pub fn layers_moved_to_the_device_match_layers_built_there(dev: &Device, label: &str) {
    // `LogLinear::to_device` (how log_linear_b and the model put converted weights on a GPU)
    // against a layer converted on the device itself: the same parts, the same outputs.
    let g = Gpu { dev, label };
    let w = randn(70, &[48, 40], 0.05, DType::F32);
    let b = randn(71, &[48], 0.1, DType::F32);
    let x = randn(72, &[5, 40], 1.0, DType::F32);
    for format in FORMATS {
        let moved = LogLinear::from_weights(&w, Some(b.clone()), format)
            .unwrap()
            .to_device(dev)
            .unwrap();
        let built = LogLinear::from_weights(&g.on(&w), Some(g.on(&b)), format).unwrap();
        assert!(moved.weight().device().same_device(dev), "{label}");
        for (part, m, t) in [
            (
                "magnitudes",
                moved.weight().magnitudes(),
                built.weight().magnitudes(),
            ),
            (
                "signs",
                moved.weight().signs().unwrap(),
                built.weight().signs().unwrap(),
            ),
        ] {
            let (m, t) = (to_f64_vec(&g.cpu(m)), to_f64_vec(&g.cpu(t)));
            assert_eq!(m, t, "{label} {format}: the {part} differ");
        }
        let ym = to_f64_vec(&g.cpu(&moved.forward(&g.on(&x)).unwrap()));
        let yb = to_f64_vec(&g.cpu(&built.forward(&g.on(&x)).unwrap()));
        assert_eq!(ym, yb, "{label} {format}");
    }
}
