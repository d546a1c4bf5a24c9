//! Properties of `log_matmul` over random small shapes (rank 2 and 3, `k` from 0 to 40) and values
//! (normal-range, or mixed with ±0, ±inf, NaN, subnormals, huge and tiny magnitudes), every
//! float dtype:
//! - agreement with the `f64` reference under the error budget (see `emilio_tests`);
//! - `log_matmul(a, b) == log_matmul(bᵀ, aᵀ)ᵀ` within the budget (same NaN/infinities);
//! - sign symmetry: negating `a` negates `C` exactly, bit for bit except NaN (and except the
//!   sign of a zero sum of several products, which IEEE fixes to `+0` for `x + (−x)` whatever
//!   the operands' signs).

use candle_core::{DType, Tensor};
use emilio_op::log_matmul;
use emilio_tests::{reference_matmul, tensor_from_f64, to_f64_vec, Budget};
use proptest::prelude::*;
use proptest::sample::select;

const DTYPES: [DType; 4] = [DType::F32, DType::F64, DType::F16, DType::BF16];

#[derive(Debug, Clone)]
struct Case {
    dtype: DType,
    /// Leading batch dim (rank 3) or none (rank 2).
    batch: Option<usize>,
    m: usize,
    k: usize,
    n: usize,
    a: Vec<f64>,
    b: Vec<f64>,
}

impl Case {
    fn dims(&self, r: usize, c: usize) -> Vec<usize> {
        match self.batch {
            Some(b) => vec![b, r, c],
            None => vec![r, c],
        }
    }
    fn a(&self) -> Tensor {
        tensor_from_f64(self.a.clone(), &self.dims(self.m, self.k), self.dtype)
    }
    fn neg_a(&self) -> Tensor {
        let v = self.a.iter().map(|x| -x).collect();
        tensor_from_f64(v, &self.dims(self.m, self.k), self.dtype)
    }
    fn b(&self) -> Tensor {
        tensor_from_f64(self.b.clone(), &self.dims(self.k, self.n), self.dtype)
    }
}

fn value(specials: bool, dtype: DType) -> BoxedStrategy<f64> {
    if !specials {
        return (-4.0f64..4.0).boxed();
    }
    let extremes = if dtype == DType::F64 {
        vec![1e-310, -5e-324, 1e200, -1e-200, 1e154, -1e-160, 1e30]
    } else {
        vec![1e-40, -1e-42, 1e30, -1e30, 1e-30, 3e38, -1e-45, 1e19, 1e-22]
    };
    prop_oneof![
        24 => -4.0f64..4.0,
        1 => Just(0.0),
        1 => Just(-0.0),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => Just(f64::NAN),
        2 => select(extremes),
    ]
    .boxed()
}

fn case() -> impl Strategy<Value = Case> {
    (
        select(DTYPES.to_vec()),
        prop::option::of(1usize..=3),
        1usize..=8,
        prop_oneof![3 => 0usize..=9, 1 => 10usize..=40],
        1usize..=8,
        any::<bool>(),
    )
        .prop_flat_map(|(dtype, batch, m, k, n, specials)| {
            let bs = batch.unwrap_or(1);
            (
                Just((dtype, batch, m, k, n)),
                prop::collection::vec(value(specials, dtype), bs * m * k),
                prop::collection::vec(value(specials, dtype), bs * k * n),
            )
        })
        .prop_map(|((dtype, batch, m, k, n), a, b)| Case {
            dtype,
            batch,
            m,
            k,
            n,
            a,
            b,
        })
}

fn last_two_transposed(t: &Tensor) -> Tensor {
    let r = t.rank();
    t.transpose(r - 2, r - 1).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn agrees_with_f64_reference(c in case()) {
        let (a, b) = (c.a(), c.b());
        let got = log_matmul(&a, &b).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let r = reference_matmul(&a, &b, Budget::for_dtype(c.dtype));
        let res = r.try_check("reference", &got);
        prop_assert!(res.is_ok(), "{}", res.unwrap_err());
    }

    #[test]
    fn transpose_identity(c in case()) {
        let (a, b) = (c.a(), c.b());
        let c1 = log_matmul(&a, &b).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let c2 = log_matmul(&last_two_transposed(&b), &last_two_transposed(&a))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let c2 = last_two_transposed(&c2);
        let r = reference_matmul(&a, &b, Budget::for_dtype(c.dtype));
        let res = r.try_check_agree("(a·b) vs (bᵀ·aᵀ)ᵀ", &c1, &c2);
        prop_assert!(res.is_ok(), "{}", res.unwrap_err());
    }

    #[test]
    fn negating_a_negates_c(c in case()) {
        let (a, na, b) = (c.a(), c.neg_a(), c.b());
        let c1 = to_f64_vec(&log_matmul(&a, &b).map_err(|e| TestCaseError::fail(e.to_string()))?);
        let c2 = to_f64_vec(&log_matmul(&na, &b).map_err(|e| TestCaseError::fail(e.to_string()))?);
        for (i, (&x, &y)) in c1.iter().zip(&c2).enumerate() {
            if x.is_nan() || y.is_nan() {
                prop_assert!(x.is_nan() && y.is_nan(), "at {i}: {x:e} vs {y:e} (NaN on one side)");
            } else if x == 0.0 && c.k != 1 {
                prop_assert!(y == 0.0, "at {i}: {x:e} vs {y:e}");
            } else {
                prop_assert!(
                    y == -x && y.is_sign_negative() != x.is_sign_negative(),
                    "at {i}: C = {x:e} but C(−a) = {y:e}, not its negation"
                );
            }
        }
    }
}
