//! The error budget of one `log_matmul`/`LogLinear` call, and the floating-point constants it
//! is written in: what every checker in [`crate::reference`](mod@crate::reference) holds a result to.
//!
//! # Error budget
//!
//! Let `u` be the unit roundoff of the op's arithmetic (`2^-24` for `f32`/`f16`/`bf16` inputs,
//! whose logs, sums of logs, `exp` and accumulation are `f32`; `2^-53` for `f64` inputs).
//!
//! **One product.** The op computes `p̂ = s(a)s(b)·exp(l̂a + l̂b)` where `l̂a = ln|a|·(1+ε₁)`,
//! `l̂b = ln|b|·(1+ε₂)` (`|ε| ≤ 2u`: the log is within 2 ulp), the sum of the logs is rounded
//! (`|la+lb|·2u`, generous) and `exp` is within 2 ulp (`4u` relative, counted as `8u` so the
//! rounding of the result is covered too). So the exponent is off by at most
//! `Δ = (|la| + |lb| + |la+lb|)·2u` and
//! `|p̂ − p| ≤ |p|·δ`, `δ = (e^Δ − 1) + 8u ≤ Δ(1+Δ) + 8u` (for `Δ ≤ 1`), which is the budget's
//! `(|la| + |lb| + |la+lb| + 4)·2u` made exact to second order (`Δ²` matters only for the `f16`
//! weight format, where `Δ` reaches a few percent for `|ln|w|| ≈ 90`).
//!
//! With the `f16` weight format the weight's log is stored as `f16::from_f64(ln|w|)`: relative
//! error `2^-11` while it is a normal `f16`, absolute error `2^-25` (half the `f16` subnormal
//! spacing) below `2^-14`. The weight side's `|lb|·2u` becomes `|lb|·2^-11 + 2^-25`.
//!
//! **The sum.** Accumulating `K` computed products in any order, in precision `u`, adds at most
//! `γ_K·Σ|p̂_k|` with `γ_K = K·u/(1 − K·u)` (Higham, Thm 3.1; `γ_K ≥ γ_{K−1}`; this is the
//! budget's `K·u` made rigorous for `K·u` not small). `Σ|p̂_k| ≤ Σ|p_k|(1+δ_k)`.
//!
//! **Subnormals.** A product or partial sum in the subnormal range is rounded on an absolute grid
//! of `2^-149` (`2^-1074` in `f64`); each of the `K` products and the result may lose up to that,
//! so `(K+1)·4·2^-149` (the budget's `(K+1)·2^-147`) covers it.
//!
//! **The reference** is an `f64` loop over the same (already rounded) inputs. For
//! `f32`/`f16`/`bf16` inputs every product is exact in `f64`; the `f64` sum adds
//! `γ_K(2^-53)·Σ|p|`. For `f64` inputs the reference's own products round too; the same term
//! plus `K·2^-1074` covers both. This error is added to the bound (it is negligible next to the
//! op's error for `f32`, and of the same size as the op's for `f64`).
//!
//! So for every output `|C − ref| ≤ Σ_k |p_k|·δ_k + γ_K·Σ_k |p_k|(1+δ_k) + (K+1)·2^-147 + ref_err`.
//!
//! **Output rounding.** For `f16`/`bf16` inputs the `f32` result is cast to the input dtype:
//! add `(|ref| + e)·2^-11 + 2^-25` (`f16`: relative half ulp, half the subnormal spacing) or
//! `(|ref| + e)·2^-8 + 2^-134` (`bf16`). A bias added afterwards (as `candle_nn::Linear` does, in
//! the output dtype) adds one more rounding of the same kind.
//!
//! **Stock matmul** (gemm) computes exact-or-FMA products and sums them: `γ_K(u_s)·Σ|p| +
//! (K+1)·2^-149`, with `u_s = 2^-24` for `f32`, `2^-53` for `f64`, and `2^-11` for `f16`
//! (gemm-f16 multiplies in `f32` but rounds its partial sums through the `f16` destination
//! between `k`-blocks; `γ_K(2^-11)` bounds any such scheme and is only useful for small `K`).
//! Stock has no CPU `bf16` matmul. Against stock the tolerance is the op's bound plus stock's.
//!
//! **Special values.** Where the reference is NaN (`0·inf`, NaN inputs, `+inf + −inf`), the op
//! must give NaN; where a product's true value overflows the accumulator (`|p|(1−δ)` above the
//! rounding threshold), it is an infinity of the product's sign; infinities of both signs give
//! NaN. An output is *ambiguous* (any infinity/NaN accepted, else the finite bound applies) when a
//! product lies within its error `δ` of the overflow threshold, or when partial sums could
//! overflow (`Σ|p̂| ≥` threshold) although the products do not. Finite references whose rounded
//! value overflows the output dtype must be the infinity of their sign (ambiguous within the
//! bound of the threshold).

use candle_core::DType;

/// `2^e` as an `f64` (exact for the exponents used here).
pub fn pow2(e: i32) -> f64 {
    2f64.powi(e)
}

/// Unit roundoff of `f32`.
pub const U_F32: f64 = 1.0 / 16_777_216.0; // 2^-24
/// Unit roundoff of `f64`.
pub const U_F64: f64 = 1.0 / 9_007_199_254_740_992.0; // 2^-53
/// Magnitude from which round-to-nearest gives `inf` in `f32`: `MAX + ulp/2 = 2^128 − 2^103`.
pub const F32_OVERFLOW: f64 = 3.402_823_567_797_336_6e38;
/// Same for `f16`: `65504 + 16`.
pub const F16_OVERFLOW: f64 = 65520.0;
/// Same for `bf16`: `2^128 − 2^119`.
pub const BF16_OVERFLOW: f64 = 3.396_177_529_230_46e38;

/// `γ_K = K·u/(1 − K·u)`, infinite when `K·u ≥ 1` (the bound is then vacuous).
pub fn gamma(k: usize, u: f64) -> f64 {
    let ku = k as f64 * u;
    if ku >= 1.0 {
        f64::INFINITY
    } else {
        ku / (1.0 - ku)
    }
}

/// The error model of one `log_matmul`/`LogLinear` call (the module doc derives it).
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Dtype of the result (that of the activations).
    pub out: DType,
    /// Unit roundoff of the op's arithmetic: logs, their sum, `exp`, accumulation.
    pub u: f64,
    /// Relative error of `ln|b|` (`2u`, or `2^-11` for `f16` weight magnitudes).
    pub b_log_rel: f64,
    /// Absolute error of `ln|b|` (`0`, or `2^-25` for `f16` weight magnitudes).
    pub b_log_abs: f64,
    /// Smallest positive subnormal of the accumulator.
    pub sub: f64,
    /// Magnitude from which the accumulator rounds to infinity.
    pub acc_overflow: f64,
    /// Unit roundoff of stock matmul's accumulation for this dtype (NaN: no stock matmul).
    pub stock_u: f64,
    /// An approximate exp mode's relative error per product: `exp_rel + exp_x·|la + lb|`
    /// ([`emilio_op::ExpMode::error_bound`]; both 0 for the exact mode, whose `exp` is in the
    /// `8u` term), composed with the logs' own error as `Δ` is: `d(1+d)` with `d` their sum.
    pub exp_rel: f64,
    pub exp_x: f64,
}

impl Budget {
    /// Budget for `log_matmul` of two activations of `dtype`.
    pub fn for_dtype(dtype: DType) -> Self {
        match dtype {
            DType::F32 | DType::F16 | DType::BF16 => Self {
                out: dtype,
                u: U_F32,
                b_log_rel: 2.0 * U_F32,
                b_log_abs: 0.0,
                sub: pow2(-149),
                acc_overflow: F32_OVERFLOW,
                stock_u: match dtype {
                    DType::F32 => U_F32,
                    DType::F16 => pow2(-11),
                    _ => f64::NAN,
                },
                exp_rel: 0.0,
                exp_x: 0.0,
            },
            DType::F64 => Self {
                out: dtype,
                u: U_F64,
                b_log_rel: 2.0 * U_F64,
                b_log_abs: 0.0,
                sub: pow2(-1074),
                acc_overflow: f64::MAX,
                stock_u: U_F64,
                exp_rel: 0.0,
                exp_x: 0.0,
            },
            other => panic!("no budget for {other:?}"),
        }
    }

    /// Budget for `LogLinear` with `f32` weight magnitudes and activations of `x_dtype`.
    ///
    /// For `f64` activations the weight logs are `f32` and the `f32` budget is used (a superset
    /// of whatever the op does in `f64`, away from `f32` overflow/underflow); the output dtype
    /// stays `f64`.
    pub fn linear_f32(x_dtype: DType) -> Self {
        let mut b = Self::for_dtype(match x_dtype {
            DType::F64 => DType::F32,
            d => d,
        });
        b.out = x_dtype;
        if x_dtype == DType::F64 {
            b.stock_u = U_F64;
        }
        b
    }

    /// Budget for `LogLinear` with `lns8` or `lns4` weights, against the weight as stored (the
    /// formats' own error is tested apart, in `emilio_op::format`): the kernel decodes a code's log
    /// as `q·step + offset` in `f32`, two roundings, `≤ 3u·|lb| + 8.4u` (`|offset| ≤ |lb| +
    /// q·step`, `q·step ≤ 127/16·ln 2 = 5.5` for lns8 and `≤ 7·1.2 = 8.4` for lns4).
    pub fn linear_lns(x_dtype: DType) -> Self {
        let mut b = Self::linear_f32(x_dtype);
        b.b_log_rel = 4.0 * U_F32;
        b.b_log_abs = 12.0 * U_F32;
        b
    }

    /// Budget for `LogLinear` with `f16` weight magnitudes (the weight side's log rounded to
    /// `f16`: `|lb|·2^-11 + 2^-25`).
    pub fn linear_f16(x_dtype: DType) -> Self {
        let mut b = Self::linear_f32(x_dtype);
        b.b_log_rel = pow2(-11);
        b.b_log_abs = pow2(-25);
        b
    }

    /// This budget with each product's `exp` taken in `mode` (see [`emilio_op::ExpMode`]).
    ///
    /// For `lmul` the stored weight log is Mitchell's, up to `0.06` away from `ln|w|`, so the
    /// `f16` format's relative rounding of it is counted on `|lb| + 0.06`.
    pub fn with_exp(mut self, mode: emilio_op::ExpMode) -> Self {
        if mode == emilio_op::ExpMode::Exact {
            return self;
        }
        self.exp_rel = mode.error_bound_constant();
        self.exp_x = mode.error_bound(1.0) - mode.error_bound_constant();
        if mode.reads_logs_from_bits() {
            self.b_log_abs += 0.06 * self.b_log_rel;
        }
        self
    }

    /// Output rounding `(relative, absolute)` of the result dtype.
    pub(crate) fn out_rounding(&self) -> (f64, f64) {
        match self.out {
            DType::F32 => (U_F32, pow2(-150)),
            DType::F64 => (U_F64, pow2(-1074)),
            DType::F16 => (pow2(-11), pow2(-25)),
            DType::BF16 => (pow2(-8), pow2(-134)),
            d => panic!("no rounding for {d:?}"),
        }
    }

    /// Magnitude from which a value rounds to infinity in the output dtype.
    pub(crate) fn out_overflow(&self) -> f64 {
        match self.out {
            DType::F32 => F32_OVERFLOW,
            DType::F16 => F16_OVERFLOW,
            DType::BF16 => BF16_OVERFLOW,
            _ => f64::INFINITY,
        }
    }

    /// Relative error `δ` of one product given `la = ln|a|`, `lb = ln|b|` (finite).
    #[inline(always)]
    pub(crate) fn delta(&self, la: f64, lb: f64) -> f64 {
        let two_u = 2.0 * self.u;
        let x = (la + lb).abs();
        let d = two_u * (la.abs() + x) + self.b_log_rel * lb.abs() + self.b_log_abs;
        let d = d + self.exp_rel + self.exp_x * x;
        d * (1.0 + d) + 8.0 * self.u
    }
}
