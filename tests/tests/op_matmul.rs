//! `log_matmul` / `broadcast_log_matmul` against the `f64` reference (the op's error budget, see
//! the crate docs of `emilio_tests`) and against stock `Tensor::matmul` (budget plus stock's own):
//! 2-D shapes from 1×1×1 through odd `K` to model scale, batched 3-D/4-D and attention shapes,
//! transposed, narrowed and stride-0 broadcast operands, `broadcast_log_matmul`, every float
//! dtype, and `k == 0` / empty outputs.

use candle_core::{DType, Device, Tensor, D};
use emilio_op::{broadcast_log_matmul, log_matmul};
use emilio_tests::{broadcast_operands, randn, reference_matmul, to_f64_vec, Budget, SMALL_SHAPES};

const DTYPES: [DType; 4] = [DType::F32, DType::F64, DType::F16, DType::BF16];

/// Stock matmul of the same operands (made contiguous if stock refuses the layout), when Candle
/// has a CPU matmul for the dtype and stock's budget is meaningful for this `K`.
fn stock(a: &Tensor, b: &Tensor, broadcast: bool) -> Option<Tensor> {
    let k = a.dim(D::Minus1).unwrap();
    match a.dtype() {
        DType::F32 | DType::F64 => {}
        // gemm-f16 rounds partial sums through f16: its bound γ_K(2^-11) is only useful for small K.
        DType::F16 if (k as f64) * 2f64.powi(-11) < 0.25 => {}
        _ => return None,
    }
    let mm = |x: &Tensor, y: &Tensor| {
        if broadcast {
            x.broadcast_matmul(y)
        } else {
            x.matmul(y)
        }
    };
    Some(
        mm(a, b)
            .or_else(|_| mm(&a.contiguous()?, &b.contiguous()?))
            .expect("stock matmul"),
    )
}

/// `log_matmul(a, b)` against the reference (and stock where available).
fn case(what: &str, a: &Tensor, b: &Tensor) {
    let what = format!("{what} {:?}x{:?} {:?}", a.dims(), b.dims(), a.dtype());
    let ours = log_matmul(a, b).unwrap_or_else(|e| panic!("{what}: log_matmul failed: {e}"));
    let r = reference_matmul(a, b, Budget::for_dtype(a.dtype()));
    match stock(a, b, false) {
        Some(s) => r.check_pair(&what, &ours, &s),
        None => r.check(&what, &ours),
    };
}

/// `broadcast_log_matmul(a, b)` against the reference of the broadcast operands and stock
/// `broadcast_matmul`.
fn broadcast_case(what: &str, a: &Tensor, b: &Tensor, expected_dims: &[usize]) {
    let what = format!("{what} {:?}x{:?} {:?}", a.dims(), b.dims(), a.dtype());
    let ours = broadcast_log_matmul(a, b)
        .unwrap_or_else(|e| panic!("{what}: broadcast_log_matmul failed: {e}"));
    assert_eq!(ours.dims(), expected_dims, "{what}");
    let (ba, bb) = broadcast_operands(a, b);
    let r = reference_matmul(&ba, &bb, Budget::for_dtype(a.dtype()));
    match stock(a, b, true) {
        Some(s) => r.check_pair(&what, &ours, &s),
        None => r.check(&what, &ours),
    };
}

fn small_shapes(dtype: DType, seed0: u64) {
    for (i, &(m, k, n)) in SMALL_SHAPES.iter().enumerate() {
        let s = seed0 + 2 * i as u64;
        let a = randn(s, &[m, k], 1.0, dtype);
        let b = randn(s + 1, &[k, n], 1.0, dtype);
        case(&format!("small #{i}"), &a, &b);
    }
}

#[test]
fn small_and_odd_shapes_f32() {
    small_shapes(DType::F32, 1000);
}

#[test]
fn small_and_odd_shapes_f64() {
    small_shapes(DType::F64, 2000);
}

#[test]
fn small_and_odd_shapes_f16() {
    small_shapes(DType::F16, 3000);
}

#[test]
fn small_and_odd_shapes_bf16() {
    small_shapes(DType::BF16, 4000);
}

/// Activations ~ N(0, 1) times a weight-like matrix ~ N(0, 0.03²), optionally given as the
/// transpose of a contiguous `(n, k)` weight (the `Linear` layout).
fn model_case(m: usize, k: usize, n: usize, transposed_b: bool, dtype: DType, seed: u64) {
    let a = randn(seed, &[m, k], 1.0, dtype);
    let b = if transposed_b {
        randn(seed + 1, &[n, k], 0.03, dtype).t().unwrap()
    } else {
        randn(seed + 1, &[k, n], 0.03, dtype)
    };
    case(
        &format!("model m={m} k={k} n={n} bT={transposed_b}"),
        &a,
        &b,
    );
}

#[test]
fn model_scale_prefill_up_proj_128x896x4864() {
    model_case(128, 896, 4864, false, DType::F32, 11);
}

#[test]
fn model_scale_decode_up_proj_1x896x4864() {
    model_case(1, 896, 4864, true, DType::F32, 13);
}

#[test]
fn model_scale_prefill_o_proj_128x896x896() {
    model_case(128, 896, 896, true, DType::F32, 15);
}

#[test]
fn model_scale_down_proj_large_k() {
    // K = 4864 through both the one-row and the many-row path.
    model_case(1, 4864, 896, true, DType::F32, 17);
    model_case(16, 4864, 896, false, DType::F32, 19);
}

#[test]
fn model_scale_other_dtypes() {
    model_case(128, 896, 896, true, DType::F16, 21);
    model_case(128, 896, 896, false, DType::BF16, 23);
    model_case(64, 896, 256, true, DType::F64, 25);
    model_case(1, 896, 4864, true, DType::F16, 27);
}

#[test]
fn batched_3d_and_4d() {
    for (i, &dtype) in DTYPES.iter().enumerate() {
        let s = 100 + 10 * i as u64;
        let a = randn(s, &[3, 5, 33], 1.0, dtype);
        let b = randn(s + 1, &[3, 33, 7], 1.0, dtype);
        case("3-D", &a, &b);
        let a = randn(s + 2, &[2, 3, 4, 17], 1.0, dtype);
        let b = randn(s + 3, &[2, 3, 17, 5], 1.0, dtype);
        case("4-D", &a, &b);
        let a = randn(s + 4, &[1, 1, 1, 65], 1.0, dtype);
        let b = randn(s + 5, &[1, 1, 65, 3], 1.0, dtype);
        case("4-D unit batch", &a, &b);
    }
}

#[test]
fn attention_shapes() {
    for (i, &dtype) in DTYPES.iter().enumerate() {
        let s = 200 + 10 * i as u64;
        // Q·Kᵀ with contiguous q, k and k.transpose(2, 3).
        let q = randn(s, &[1, 14, 7, 64], 1.0, dtype);
        let k = randn(s + 1, &[1, 14, 7, 64], 1.0, dtype);
        case("QK^T contiguous", &q, &k.transpose(2, 3).unwrap());
        // As the model produces them: (b, s, h, d).transpose(1, 2), not contiguous.
        let q = randn(s + 2, &[1, 7, 14, 64], 1.0, dtype)
            .transpose(1, 2)
            .unwrap();
        let k = randn(s + 3, &[1, 7, 14, 64], 1.0, dtype)
            .transpose(1, 2)
            .unwrap();
        case("QK^T strided", &q, &k.transpose(2, 3).unwrap());
        // P·V.
        let p = candle_nn::ops::softmax_last_dim(&randn(s + 4, &[1, 14, 7, 7], 1.0, DType::F32))
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let v = randn(s + 5, &[1, 14, 7, 64], 1.0, dtype);
        case("PV", &p, &v);
        // Decode step against a 20-long cache.
        let q = randn(s + 6, &[1, 14, 1, 64], 1.0, dtype);
        let k = randn(s + 7, &[1, 14, 20, 64], 1.0, dtype);
        case("decode QK^T", &q, &k.transpose(2, 3).unwrap());
        let p = randn(s + 8, &[1, 14, 1, 20], 0.2, dtype);
        let v = randn(s + 9, &[1, 14, 20, 64], 1.0, dtype);
        case("decode PV", &p, &v);
    }
}

#[test]
fn transposed_operands() {
    for (i, &dtype) in DTYPES.iter().enumerate() {
        let s = 300 + 10 * i as u64;
        for &(m, k, n) in &[(5, 33, 7), (1, 64, 9), (17, 3, 1), (32, 65, 31)] {
            let x = randn(s, &[k, m], 1.0, dtype); // a = x.t()
            let y = randn(s + 1, &[n, k], 1.0, dtype); // b = y.t()
            let a = randn(s + 2, &[m, k], 1.0, dtype);
            let b = randn(s + 3, &[k, n], 1.0, dtype);
            case("a^T", &x.t().unwrap(), &b);
            case("b^T", &a, &y.t().unwrap());
            case("a^T b^T", &x.t().unwrap(), &y.t().unwrap());
        }
        // Batched, transposing the last two dims.
        let x = randn(s + 4, &[3, 17, 6], 1.0, dtype);
        let y = randn(s + 5, &[3, 4, 17], 1.0, dtype);
        case(
            "batched a^T b^T",
            &x.transpose(1, 2).unwrap(),
            &y.transpose(1, 2).unwrap(),
        );
    }
}

#[test]
fn narrowed_and_strided_operands() {
    for (i, &dtype) in DTYPES.iter().enumerate() {
        let s = 400 + 10 * i as u64;
        let big_a = randn(s, &[10, 50], 1.0, dtype);
        let big_b = randn(s + 1, &[40, 20], 1.0, dtype);
        let a = big_a.narrow(0, 2, 5).unwrap().narrow(1, 3, 33).unwrap();
        let b = big_b.narrow(0, 4, 33).unwrap().narrow(1, 5, 7).unwrap();
        case("narrowed", &a, &b);
        // Narrowed and transposed.
        let bt = big_b
            .narrow(0, 1, 7)
            .unwrap()
            .narrow(1, 2, 17)
            .unwrap()
            .t()
            .unwrap();
        let a = big_a.narrow(1, 10, 17).unwrap();
        case("narrowed b^T", &a, &bt);
        // A middle index selected out of a 3-D tensor: row stride 5·33.
        let a3 = randn(s + 2, &[4, 5, 33], 1.0, dtype);
        let a = a3.narrow(1, 2, 1).unwrap().squeeze(1).unwrap();
        let b = randn(s + 3, &[33, 6], 1.0, dtype);
        case("selected rows", &a, &b);
        // Narrowed batch dim.
        let a = randn(s + 4, &[5, 4, 9], 1.0, dtype)
            .narrow(0, 1, 3)
            .unwrap();
        let b = randn(s + 5, &[6, 9, 3], 1.0, dtype)
            .narrow(0, 2, 3)
            .unwrap();
        case("narrowed batch", &a, &b);
        // Column vector out of a wider matrix (n = 1, column stride 50).
        let b = big_a.narrow(1, 7, 1).unwrap(); // (10, 1)
        let a = randn(s + 6, &[3, 10], 1.0, dtype);
        case("narrowed column", &a, &b);
    }
}

#[test]
fn stride_zero_broadcast_operands() {
    for (i, &dtype) in DTYPES.iter().enumerate() {
        let s = 500 + 10 * i as u64;
        let row = randn(s, &[1, 17], 1.0, dtype);
        let col = randn(s + 1, &[17, 1], 1.0, dtype);
        let a = row.broadcast_as((6, 17)).unwrap(); // strides [0, 1]
        let b = col.broadcast_as((17, 5)).unwrap(); // strides [1, 0]
        case("stride-0 a", &a, &randn(s + 2, &[17, 5], 1.0, dtype));
        case("stride-0 b", &randn(s + 3, &[6, 17], 1.0, dtype), &b);
        case("stride-0 both", &a, &b);
        // Stride-0 batch dim on either side.
        let a = randn(s + 4, &[1, 4, 9], 1.0, dtype)
            .broadcast_as((3, 4, 9))
            .unwrap();
        let b = randn(s + 5, &[3, 9, 5], 1.0, dtype);
        case("stride-0 batch a", &a, &b);
        let a = randn(s + 6, &[3, 4, 9], 1.0, dtype);
        let b = randn(s + 7, &[1, 9, 5], 1.0, dtype)
            .broadcast_as((3, 9, 5))
            .unwrap();
        case("stride-0 batch b", &a, &b);
    }
}

#[test]
fn broadcast_log_matmul_shapes() {
    for (i, &dtype) in DTYPES.iter().enumerate() {
        let s = 600 + 20 * i as u64;
        let r = |o: u64, d: &[usize]| randn(s + o, d, 1.0, dtype);
        broadcast_case(
            "rank-2 rhs",
            &r(0, &[2, 3, 5, 17]),
            &r(1, &[17, 4]),
            &[2, 3, 5, 4],
        );
        broadcast_case(
            "rank-2 rhs 3-D",
            &r(2, &[3, 5, 17]),
            &r(3, &[17, 4]),
            &[3, 5, 4],
        );
        broadcast_case(
            "size-1 batch dims",
            &r(4, &[2, 1, 5, 17]),
            &r(5, &[1, 4, 17, 6]),
            &[2, 4, 5, 6],
        );
        broadcast_case(
            "rank-2 lhs",
            &r(6, &[5, 17]),
            &r(7, &[3, 17, 6]),
            &[3, 5, 6],
        );
        broadcast_case(
            "missing leading dim",
            &r(8, &[3, 5, 17]),
            &r(9, &[2, 1, 17, 6]),
            &[2, 3, 5, 6],
        );
        broadcast_case(
            "non-contiguous lhs, rank-2 rhs",
            &r(10, &[3, 17, 5]).transpose(1, 2).unwrap(),
            &r(11, &[17, 4]),
            &[3, 5, 4],
        );
        broadcast_case(
            "rank-2 rhs transposed",
            &r(12, &[2, 7, 33]),
            &r(13, &[9, 33]).t().unwrap(),
            &[2, 7, 9],
        );
        broadcast_case(
            "no broadcast",
            &r(14, &[2, 5, 17]),
            &r(15, &[2, 17, 3]),
            &[2, 5, 3],
        );
        broadcast_case("2-D", &r(16, &[5, 17]), &r(17, &[17, 3]), &[5, 3]);
    }
}

#[test]
fn k_zero_gives_zeros() {
    for &dtype in &DTYPES {
        for (ad, bd, od) in [
            (vec![3, 0], vec![0, 4], vec![3, 4]),
            (vec![2, 3, 0], vec![2, 0, 4], vec![2, 3, 4]),
            (vec![1, 0], vec![0, 1], vec![1, 1]),
        ] {
            let a = Tensor::zeros(ad.as_slice(), dtype, &Device::Cpu).unwrap();
            let b = Tensor::zeros(bd.as_slice(), dtype, &Device::Cpu).unwrap();
            let c = log_matmul(&a, &b).unwrap();
            assert_eq!(c.dims(), od.as_slice(), "{ad:?}x{bd:?} {dtype:?}");
            assert_eq!(c.dtype(), dtype);
            assert!(
                to_f64_vec(&c).iter().all(|&v| v == 0.0),
                "{ad:?}x{bd:?} {dtype:?}: k = 0 must give zeros, got {:?}",
                to_f64_vec(&c)
            );
            let stock = a.matmul(&b).or_else(|_| {
                // bf16 has no CPU matmul; the k = 0 shortcut of stock does not depend on it.
                Tensor::zeros(od.as_slice(), dtype, &Device::Cpu)
            });
            assert_eq!(to_f64_vec(&c), to_f64_vec(&stock.unwrap()));
        }
        // Broadcast variant.
        let a = Tensor::zeros((2, 3, 0), dtype, &Device::Cpu).unwrap();
        let b = Tensor::zeros((0, 4), dtype, &Device::Cpu).unwrap();
        let c = broadcast_log_matmul(&a, &b).unwrap();
        assert_eq!(c.dims(), &[2, 3, 4]);
        assert!(to_f64_vec(&c).iter().all(|&v| v == 0.0));
    }
}

#[test]
fn empty_outputs_like_stock() {
    for &dtype in &DTYPES {
        for (ad, bd, od) in [
            (vec![0, 5], vec![5, 4], vec![0, 4]),
            (vec![3, 5], vec![5, 0], vec![3, 0]),
            (vec![0, 3, 5], vec![0, 5, 4], vec![0, 3, 4]),
        ] {
            let a = Tensor::zeros(ad.as_slice(), dtype, &Device::Cpu).unwrap();
            let b = Tensor::zeros(bd.as_slice(), dtype, &Device::Cpu).unwrap();
            let c = log_matmul(&a, &b).unwrap_or_else(|e| panic!("{ad:?}x{bd:?} {dtype:?}: {e}"));
            assert_eq!(c.dims(), od.as_slice(), "{ad:?}x{bd:?} {dtype:?}");
            assert_eq!(c.dtype(), dtype);
        }
    }
}

#[test]
fn results_depend_on_every_input() {
    // Guards against a kernel that skips a tail: changing only the last k (or the last row /
    // column) must change exactly the affected outputs.
    for &(m, k, n) in &[(3, 33, 5), (1, 65, 4), (17, 127, 9)] {
        let a = randn(700, &[m, k], 1.0, DType::F32);
        let b = randn(701, &[k, n], 1.0, DType::F32);
        let c0 = to_f64_vec(&log_matmul(&a, &b).unwrap());
        let mut av = to_f64_vec(&a);
        for i in 0..m {
            av[i * k + k - 1] += 100.0;
        }
        let a2 = Tensor::from_vec(
            av.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            (m, k),
            &Device::Cpu,
        )
        .unwrap();
        let c1 = to_f64_vec(&log_matmul(&a2, &b).unwrap());
        for (idx, (x, y)) in c0.iter().zip(&c1).enumerate() {
            assert!(
                x != y,
                "m={m} k={k} n={n}: output {idx} ignores the last k (got {x} both times)"
            );
        }
    }
}
