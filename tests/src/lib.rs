//! Shared helpers for the workspace's integration tests (see `tests/tests/`).
//!
//! - Seeded inputs: [`rng`], [`normal`], [`randn`], [`wide`], [`tensor_from_f32`],
//!   [`tensor_from_f64`].
//! - An `f64` reference for `log_matmul` with a per-output error bound derived from the op's
//!   error budget: [`Budget`], [`reference_matmul`], [`Reference`].
//! - Checkers that compare a result with the reference (and with stock `matmul`) and report the
//!   worst error/bound ratio, or panic with the first failing index and its values:
//!   [`Reference::check`], [`Reference::check_stock`], [`Reference::check_pair`].
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

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

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

// ---------------------------------------------------------------------------------------------
// Seeded inputs
// ---------------------------------------------------------------------------------------------

/// A seeded `StdRng` (rand 0.9).
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// One standard normal sample (Box–Muller).
pub fn normal(r: &mut StdRng) -> f64 {
    let u1: f64 = 1.0 - r.random::<f64>(); // (0, 1]
    let u2: f64 = r.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// `n` normal samples scaled by `scale`, as `f32`.
pub fn normal_vec(r: &mut StdRng, n: usize, scale: f64) -> Vec<f32> {
    (0..n).map(|_| (normal(r) * scale) as f32).collect()
}

/// `n` values with random sign and magnitude `e^x`, `x` uniform in `[-span, span]`: huge and tiny
/// magnitudes in one vector.
pub fn wide_vec(r: &mut StdRng, n: usize, span: f64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let m = (r.random_range(-span..=span)).exp();
            let s = if r.random_bool(0.5) { -1.0 } else { 1.0 };
            (s * m) as f32
        })
        .collect()
}

/// A CPU tensor of the given dims from `f32` values, converted to `dtype` (rounding for
/// `f16`/`bf16`, exact for `f64`).
pub fn tensor_from_f32(vals: Vec<f32>, dims: &[usize], dtype: DType) -> Tensor {
    let t = Tensor::from_vec(vals, dims, &Device::Cpu).expect("from_vec");
    t.to_dtype(dtype).expect("to_dtype")
}

/// A CPU tensor of the given dims from `f64` values, converted to `dtype`.
pub fn tensor_from_f64(vals: Vec<f64>, dims: &[usize], dtype: DType) -> Tensor {
    let t = Tensor::from_vec(vals, dims, &Device::Cpu).expect("from_vec");
    t.to_dtype(dtype).expect("to_dtype")
}

/// Normal values with standard deviation `scale`, seeded, as a contiguous tensor of `dtype`.
pub fn randn(seed: u64, dims: &[usize], scale: f64, dtype: DType) -> Tensor {
    let n = dims.iter().product();
    let mut r = rng(seed);
    tensor_from_f32(normal_vec(&mut r, n, scale), dims, dtype)
}

/// Wide-magnitude values (see [`wide_vec`]) as a tensor of `dtype`.
pub fn wide(seed: u64, dims: &[usize], span: f64, dtype: DType) -> Tensor {
    let n = dims.iter().product();
    let mut r = rng(seed);
    tensor_from_f32(wide_vec(&mut r, n, span), dims, dtype)
}

/// All elements of a float tensor (any dtype, any layout), row-major, converted exactly to
/// `f64` (signed zeros, infinities and NaN preserved).
pub fn to_f64_vec(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .expect("to_dtype f64")
        .flatten_all()
        .expect("flatten_all")
        .to_vec1::<f64>()
        .expect("to_vec1")
}

/// Raw bits of every element of an `f32` tensor, row-major.
pub fn f32_bits(t: &Tensor) -> Vec<u32> {
    assert_eq!(t.dtype(), DType::F32);
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

/// Raw bits of every element of an `f64` tensor, row-major.
pub fn f64_bits(t: &Tensor) -> Vec<u64> {
    assert_eq!(t.dtype(), DType::F64);
    t.flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
        .into_iter()
        .map(f64::to_bits)
        .collect()
}

/// Sign bit of every element of a float tensor (any dtype), row-major.
pub fn sign_bits(t: &Tensor) -> Vec<bool> {
    to_f64_vec(t)
        .into_iter()
        .map(|v| v.is_sign_negative())
        .collect()
}

/// Shape text as Candle prints a `Shape` in its errors (`Debug`): `[2, 3]`.
pub fn shape_text(dims: &[usize]) -> String {
    format!("{dims:?}")
}

// ---------------------------------------------------------------------------------------------
// Budget
// ---------------------------------------------------------------------------------------------

/// The error model of one `log_matmul`/`LogLinear` call (see the crate docs for the derivation).
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
            },
            DType::F64 => Self {
                out: dtype,
                u: U_F64,
                b_log_rel: 2.0 * U_F64,
                b_log_abs: 0.0,
                sub: pow2(-1074),
                acc_overflow: f64::MAX,
                stock_u: U_F64,
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

    /// Budget for `LogLinear` with `f16` weight magnitudes (the weight side's log rounded to
    /// `f16`: `|lb|·2^-11 + 2^-25`).
    pub fn linear_f16(x_dtype: DType) -> Self {
        let mut b = Self::linear_f32(x_dtype);
        b.b_log_rel = pow2(-11);
        b.b_log_abs = pow2(-25);
        b
    }

    /// Output rounding `(relative, absolute)` of the result dtype.
    fn out_rounding(&self) -> (f64, f64) {
        match self.out {
            DType::F32 => (U_F32, pow2(-150)),
            DType::F64 => (U_F64, pow2(-1074)),
            DType::F16 => (pow2(-11), pow2(-25)),
            DType::BF16 => (pow2(-8), pow2(-134)),
            d => panic!("no rounding for {d:?}"),
        }
    }

    /// Magnitude from which a value rounds to infinity in the output dtype.
    fn out_overflow(&self) -> f64 {
        match self.out {
            DType::F32 => F32_OVERFLOW,
            DType::F16 => F16_OVERFLOW,
            DType::BF16 => BF16_OVERFLOW,
            _ => f64::INFINITY,
        }
    }

    /// Relative error `δ` of one product given `la = ln|a|`, `lb = ln|b|` (finite).
    #[inline(always)]
    fn delta(&self, la: f64, lb: f64) -> f64 {
        let two_u = 2.0 * self.u;
        let d = two_u * (la.abs() + (la + lb).abs()) + self.b_log_rel * lb.abs() + self.b_log_abs;
        d * (1.0 + d) + 8.0 * self.u
    }
}

// ---------------------------------------------------------------------------------------------
// Reference
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Class {
    Finite,
    Nan,
    /// Infinity of this sign (+1.0 / -1.0).
    Inf(f64),
    /// Infinity of this sign from an infinite product, where the finite products of the other
    /// sign could also overflow a partial sum (to the opposite infinity) in some summation
    /// order, which then gives NaN: either is IEEE-correct for that order.
    InfOrNan(f64),
    /// Product near the overflow threshold, or partial sums may overflow.
    Ambiguous,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    class: Class,
    /// `Σ p_k` in `f64` (finite products only), plus the bias if any.
    value: f64,
    /// `Σ |p_k|` (finite products).
    abs_sum: f64,
    /// `Σ |p_k|·δ_k`.
    delta_sum: f64,
    /// Bias added to `value` (0 without bias).
    bias: f64,
}

/// The `f64` reference of a batched matmul with a per-output error model.
pub struct Reference {
    dims: Vec<usize>,
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    budget: Budget,
    has_bias: bool,
    entries: Vec<Entry>,
    /// Inputs (for diagnostics): `a` as (batch, m, k), `b` transposed as (batch, n, k).
    a: Vec<f64>,
    bt: Vec<f64>,
}

/// What a checker found: the worst `error / bound` ratio (≤ 1 passes) and where.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub checked: usize,
    pub worst_ratio: f64,
    pub worst_at: String,
    pub nonfinite: usize,
    pub ambiguous: usize,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} outputs, worst error/bound {:.3e} at {}, {} non-finite, {} ambiguous",
            self.checked, self.worst_ratio, self.worst_at, self.nonfinite, self.ambiguous
        )
    }
}

/// Which error bound a result is held to.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Side {
    Ours,
    Stock,
}

/// Broadcast two operands like `Tensor::broadcast_matmul` (batch dims broadcast numpy-style,
/// the last two kept), returning views of equal batch dims.
pub fn broadcast_operands(a: &Tensor, b: &Tensor) -> (Tensor, Tensor) {
    let (ad, bd) = (a.dims(), b.dims());
    assert!(ad.len() >= 2 && bd.len() >= 2);
    let ab = &ad[..ad.len() - 2];
    let bb = &bd[..bd.len() - 2];
    let rank = ab.len().max(bb.len());
    let mut batch = vec![0; rank];
    for (i, slot) in batch.iter_mut().enumerate() {
        let x = if i + ab.len() >= rank {
            ab[i + ab.len() - rank]
        } else {
            1
        };
        let y = if i + bb.len() >= rank {
            bb[i + bb.len() - rank]
        } else {
            1
        };
        assert!(
            x == y || x == 1 || y == 1,
            "incompatible batch dims {ad:?} {bd:?}"
        );
        *slot = x.max(y);
    }
    let la: Vec<usize> = batch.iter().chain(&ad[ad.len() - 2..]).copied().collect();
    let lb: Vec<usize> = batch.iter().chain(&bd[bd.len() - 2..]).copied().collect();
    (a.broadcast_as(la).unwrap(), b.broadcast_as(lb).unwrap())
}

/// Natural log of `|x|` for the error model: `0` for a zero (its product is `±0` and carries no
/// relative error), `ln|x|` otherwise (`inf`/NaN propagate and send the entry to the slow path).
#[inline(always)]
fn log_abs(x: f64) -> f64 {
    if x == 0.0 {
        0.0
    } else {
        x.abs().ln()
    }
}

/// Small and odd `(m, k, n)` product shapes: single elements, `k` of 1 and around the SIMD
/// widths, ragged tiles. The CPU and GPU suites both run them.
pub const SMALL_SHAPES: [(usize, usize, usize); 16] = [
    (1, 1, 1),
    (1, 3, 1),
    (2, 7, 3),
    (5, 31, 4),
    (3, 33, 7),
    (8, 63, 9),
    (7, 65, 5),
    (16, 127, 17),
    (1, 128, 1),
    (33, 1, 65),
    (64, 64, 64),
    (17, 256, 31),
    (2, 1000, 3),
    (129, 65, 130),
    (1, 33, 257),
    (40, 9, 1),
];

/// The reference of a linear layer, `x·wᵀ (+ bias)`, over the original (unconverted) weight `w`
/// `(out, in)` with the budget of the weight format; shaped like the layer's output
/// `(..., out)` for `x` `(..., in)` of any layout.
pub fn reference_linear(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    format: emilio_op::WeightFormat,
) -> Reference {
    let budget = match format {
        emilio_op::WeightFormat::F32 => Budget::linear_f32(x.dtype()),
        emilio_op::WeightFormat::F16 => Budget::linear_f16(x.dtype()),
    };
    let in_dim = w.dim(1).expect("a (out, in) weight");
    let rows = x.elem_count() / in_dim;
    let x2 = x.reshape((rows, in_dim)).expect("x is (..., in)");
    let mut r = reference_matmul(&x2, &w.t().expect("a 2-D weight"), budget);
    if let Some(b) = bias {
        r = r.with_bias(b);
    }
    let mut out_dims = x.dims().to_vec();
    *out_dims.last_mut().expect("x has a last dim") = w.dim(0).expect("a (out, in) weight");
    r.reshaped(&out_dims)
}

/// The `f64` reference of `a·b` (`a`: (..., m, k), `b`: (..., k, n), equal batch dims; any float
/// dtypes and layouts) with the error model `budget`.
pub fn reference_matmul(a: &Tensor, b: &Tensor, budget: Budget) -> Reference {
    let (ad, bd) = (a.dims().to_vec(), b.dims().to_vec());
    let r = ad.len();
    assert!(r >= 2 && bd.len() == r, "reference: ranks {ad:?} {bd:?}");
    assert_eq!(ad[..r - 2], bd[..r - 2], "reference: batch dims");
    let (m, k, n) = (ad[r - 2], ad[r - 1], bd[r - 1]);
    assert_eq!(bd[r - 2], k, "reference: inner dims");
    let batch: usize = ad[..r - 2].iter().product();
    let a3 = to_f64_vec(a);
    // b transposed to (batch, n, k) so that a column is contiguous.
    let bt3 = to_f64_vec(&b.transpose(r - 2, r - 1).unwrap());
    let mut dims = ad[..r - 2].to_vec();
    dims.extend([m, n]);

    let la3: Vec<f64> = a3.iter().map(|&x| log_abs(x)).collect();
    let lbt3: Vec<f64> = bt3.iter().map(|&x| log_abs(x)).collect();
    // Precomputed parts of δ that depend on one side only.
    let two_u = 2.0 * budget.u;
    let wa: Vec<f64> = la3.iter().map(|l| two_u * l.abs()).collect();
    let wb: Vec<f64> = lbt3
        .iter()
        .map(|l| budget.b_log_rel * l.abs() + budget.b_log_abs)
        .collect();

    let mut entries = vec![
        Entry {
            class: Class::Finite,
            value: 0.0,
            abs_sum: 0.0,
            delta_sum: 0.0,
            bias: 0.0,
        };
        batch * m * n
    ];
    let threads = std::thread::available_parallelism()
        .map(|x| x.get())
        .unwrap_or(1)
        .min(n.max(1));
    let work = batch * m * n * k.max(1);
    let threads = if work < 1 << 20 { 1 } else { threads };
    let gk = gamma(k, budget.u);

    for bi in 0..batch {
        let ao = bi * m * k;
        let bo = bi * n * k;
        let ctx = RowCtx {
            a: &a3[ao..ao + m * k],
            la: &la3[ao..ao + m * k],
            wa: &wa[ao..ao + m * k],
            b: &bt3[bo..bo + n * k],
            lb: &lbt3[bo..bo + n * k],
            wb: &wb[bo..bo + n * k],
            k,
            budget,
            gk,
        };
        let out = &mut entries[bi * m * n..(bi + 1) * m * n];
        // Columns split between threads; each thread walks row tiles so that its columns of b
        // stay in cache while a tile of rows of a is reused.
        let chunk = n.div_ceil(threads).max(1);
        let results: Vec<(usize, Vec<Entry>)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .step_by(chunk)
                .map(|j0| {
                    let ctx = &ctx;
                    s.spawn(move || {
                        let j1 = (j0 + chunk).min(n);
                        let w = j1 - j0;
                        let mut local = vec![
                            Entry {
                                class: Class::Finite,
                                value: 0.0,
                                abs_sum: 0.0,
                                delta_sum: 0.0,
                                bias: 0.0,
                            };
                            m * w
                        ];
                        const TILE: usize = 16;
                        for i0 in (0..m).step_by(TILE) {
                            let i1 = (i0 + TILE).min(m);
                            for j in j0..j1 {
                                for i in i0..i1 {
                                    local[i * w + (j - j0)] = ctx.entry(i, j);
                                }
                            }
                        }
                        (j0, local)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (j0, local) in results {
            let w = local.len() / m.max(1);
            for i in 0..m {
                out[i * n + j0..i * n + j0 + w].copy_from_slice(&local[i * w..(i + 1) * w]);
            }
        }
    }

    Reference {
        dims,
        batch,
        m,
        k,
        n,
        budget,
        has_bias: false,
        entries,
        a: a3,
        bt: bt3,
    }
}

struct RowCtx<'a> {
    a: &'a [f64],
    la: &'a [f64],
    wa: &'a [f64],
    b: &'a [f64],
    lb: &'a [f64],
    wb: &'a [f64],
    k: usize,
    budget: Budget,
    gk: f64,
}

impl RowCtx<'_> {
    /// Output (i, j): fast path assuming finite products, slow path otherwise.
    #[inline]
    fn entry(&self, i: usize, j: usize) -> Entry {
        let k = self.k;
        let (a, la, wa) = (
            &self.a[i * k..(i + 1) * k],
            &self.la[i * k..(i + 1) * k],
            &self.wa[i * k..(i + 1) * k],
        );
        let (b, lb, wb) = (
            &self.b[j * k..(j + 1) * k],
            &self.lb[j * k..(j + 1) * k],
            &self.wb[j * k..(j + 1) * k],
        );
        let two_u = 2.0 * self.budget.u;
        let eight_u = 8.0 * self.budget.u;
        // Four independent chains so that the loop pipelines.
        let mut s = [0.0f64; 4];
        let mut sa = [0.0f64; 4];
        let mut sd = [0.0f64; 4];
        let mut t = 0;
        while t + 4 <= k {
            for l in 0..4 {
                let p = a[t + l] * b[t + l];
                let ap = p.abs();
                let d = wa[t + l] + wb[t + l] + two_u * (la[t + l] + lb[t + l]).abs();
                s[l] += p;
                sa[l] += ap;
                sd[l] += ap * (d * (1.0 + d) + eight_u);
            }
            t += 4;
        }
        while t < k {
            let p = a[t] * b[t];
            let ap = p.abs();
            let d = wa[t] + wb[t] + two_u * (la[t] + lb[t]).abs();
            s[0] += p;
            sa[0] += ap;
            sd[0] += ap * (d * (1.0 + d) + eight_u);
            t += 1;
        }
        let value = (s[0] + s[1]) + (s[2] + s[3]);
        let abs_sum = (sa[0] + sa[1]) + (sa[2] + sa[3]);
        let delta_sum = (sd[0] + sd[1]) + (sd[2] + sd[3]);
        if value.is_finite()
            && delta_sum.is_finite()
            && (abs_sum + delta_sum) * (1.0 + self.gk) < 0.25 * self.budget.acc_overflow
        {
            return Entry {
                class: Class::Finite,
                value,
                abs_sum,
                delta_sum,
                bias: 0.0,
            };
        }
        self.slow(a, b, la, lb)
    }

    fn slow(&self, a: &[f64], b: &[f64], la: &[f64], lb: &[f64]) -> Entry {
        let bud = &self.budget;
        let (mut s, mut sa, mut sd) = (0.0f64, 0.0f64, 0.0f64);
        // Upper bounds of the finite positive and negative products' magnitudes.
        let (mut pos_mag, mut neg_mag) = (0.0f64, 0.0f64);
        let (mut nan, mut pos, mut neg, mut amb) = (false, false, false, false);
        for t in 0..self.k {
            let p = a[t] * b[t];
            if p.is_nan() {
                nan = true;
                continue;
            }
            if p.is_infinite() {
                if p > 0.0 {
                    pos = true
                } else {
                    neg = true
                }
                continue;
            }
            let ap = p.abs();
            let d = if ap == 0.0 {
                0.0
            } else {
                bud.delta(la[t], lb[t])
            };
            if ap * (1.0 - d) >= bud.acc_overflow {
                if p > 0.0 {
                    pos = true
                } else {
                    neg = true
                }
                continue;
            }
            if ap * (1.0 + d) >= bud.acc_overflow {
                amb = true;
                continue;
            }
            s += p;
            sa += ap;
            sd += ap * d;
            if p > 0.0 {
                pos_mag += ap * (1.0 + d);
            } else {
                neg_mag += ap * (1.0 + d);
            }
        }
        let may_overflow = |mag: f64| mag * (1.0 + self.gk) >= bud.acc_overflow;
        let class = if nan || (pos && neg) {
            Class::Nan
        } else if amb {
            Class::Ambiguous
        } else if pos && may_overflow(neg_mag) {
            Class::InfOrNan(1.0)
        } else if pos {
            Class::Inf(1.0)
        } else if neg && may_overflow(pos_mag) {
            Class::InfOrNan(-1.0)
        } else if neg {
            Class::Inf(-1.0)
        } else if (sa + sd) * (1.0 + self.gk) >= bud.acc_overflow {
            Class::Ambiguous
        } else {
            Class::Finite
        };
        Entry {
            class,
            value: s,
            abs_sum: sa,
            delta_sum: sd,
            bias: 0.0,
        }
    }
}

/// Outcome of checking one value.
enum Verdict {
    /// Within the bound; `ratio` = error / bound (0 for matching specials).
    Pass {
        ratio: f64,
        nonfinite: bool,
        ambiguous: bool,
    },
    Fail {
        why: String,
        ratio: f64,
    },
}

impl Reference {
    /// Dims of the expected output.
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// Inner dimension `K`.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Number of matrices in the batch (product of the batch dims).
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The reference values (`f64`, before rounding to the output dtype).
    pub fn values(&self) -> Vec<f64> {
        self.entries
            .iter()
            .map(|e| match e.class {
                Class::Finite | Class::Ambiguous => e.value,
                Class::Nan => f64::NAN,
                Class::Inf(s) | Class::InfOrNan(s) => s * f64::INFINITY,
            })
            .collect()
    }

    /// The reference of `a·b + bias` with `bias` (n,) added to every row in the output dtype,
    /// as `candle_nn::Linear` does (one more rounding).
    pub fn with_bias(mut self, bias: &Tensor) -> Self {
        let bv = to_f64_vec(bias);
        assert_eq!(bv.len(), self.n, "bias length");
        assert!(
            bv.iter().all(|v| v.is_finite()),
            "reference: finite bias only"
        );
        for (idx, e) in self.entries.iter_mut().enumerate() {
            let j = idx % self.n;
            e.bias = bv[j];
            e.value += bv[j];
        }
        self.has_bias = true;
        self
    }

    /// Reshape the expected output dims (same element count), e.g. back to `(b, s, out)` after a
    /// `Linear`'s flattening.
    pub fn reshaped(mut self, dims: &[usize]) -> Self {
        assert_eq!(
            dims.iter().product::<usize>(),
            self.dims.iter().product::<usize>()
        );
        self.dims = dims.to_vec();
        self
    }

    /// The error bound of one output for `side`.
    fn bound(&self, e: &Entry, side: Side) -> f64 {
        let k = self.k;
        let b = &self.budget;
        let ref_err = gamma(k, U_F64) * e.abs_sum + k as f64 * pow2(-1074);
        let mut err = match side {
            Side::Ours => {
                e.delta_sum
                    + gamma(k, b.u) * (e.abs_sum + e.delta_sum)
                    + (k as f64 + 1.0) * 4.0 * b.sub
            }
            Side::Stock => gamma(k, b.stock_u) * e.abs_sum + (k as f64 + 1.0) * b.sub,
        } + ref_err;
        let (rel, abs) = b.out_rounding();
        let unbiased = e.value - e.bias;
        if matches!(b.out, DType::F16 | DType::BF16) {
            err += (unbiased.abs() + err) * rel + abs;
        }
        if self.has_bias {
            err += (e.value.abs() + err) * rel + abs;
        }
        err
    }

    fn verdict(&self, e: &Entry, got: f64, side: Side) -> Verdict {
        let err = self.bound(e, side);
        let v = e.value;
        let within = |g: f64| (g - v).abs() <= err;
        let ratio = if got.is_finite() {
            (got - v).abs() / err
        } else {
            f64::INFINITY
        };
        let same_inf = |g: f64, s: f64| g.is_infinite() && g.signum() == s;
        match e.class {
            Class::Nan => {
                if got.is_nan() {
                    Verdict::Pass {
                        ratio: 0.0,
                        nonfinite: true,
                        ambiguous: false,
                    }
                } else {
                    Verdict::Fail {
                        why: "expected NaN".into(),
                        ratio,
                    }
                }
            }
            Class::Inf(s) => {
                if same_inf(got, s) {
                    Verdict::Pass {
                        ratio: 0.0,
                        nonfinite: true,
                        ambiguous: false,
                    }
                } else {
                    Verdict::Fail {
                        why: format!("expected {}", s * f64::INFINITY),
                        ratio,
                    }
                }
            }
            Class::InfOrNan(s) => {
                if same_inf(got, s) || got.is_nan() {
                    Verdict::Pass {
                        ratio: 0.0,
                        nonfinite: true,
                        ambiguous: true,
                    }
                } else {
                    Verdict::Fail {
                        why: format!(
                            "expected {} (or NaN, from partial sums overflowing the other way)",
                            s * f64::INFINITY
                        ),
                        ratio,
                    }
                }
            }
            Class::Ambiguous => {
                if !got.is_finite() || within(got) {
                    Verdict::Pass {
                        ratio: if got.is_finite() { ratio } else { 0.0 },
                        nonfinite: !got.is_finite(),
                        ambiguous: true,
                    }
                } else {
                    Verdict::Fail {
                        why: "ambiguous (near overflow) but finite and outside the bound".into(),
                        ratio,
                    }
                }
            }
            Class::Finite => {
                let thr = self.budget.out_overflow();
                let sign = if v < 0.0 { -1.0 } else { 1.0 };
                if v.abs() - err >= thr {
                    if same_inf(got, sign) {
                        Verdict::Pass {
                            ratio: 0.0,
                            nonfinite: true,
                            ambiguous: false,
                        }
                    } else {
                        Verdict::Fail {
                            why: format!(
                                "overflows the output dtype: expected {}",
                                sign * f64::INFINITY
                            ),
                            ratio,
                        }
                    }
                } else if v.abs() + err >= thr {
                    if same_inf(got, sign) || (got.is_finite() && within(got)) {
                        Verdict::Pass {
                            ratio: if got.is_finite() { ratio } else { 0.0 },
                            nonfinite: !got.is_finite(),
                            ambiguous: true,
                        }
                    } else {
                        Verdict::Fail {
                            why: "near the output overflow threshold".into(),
                            ratio,
                        }
                    }
                } else if got.is_finite() && within(got) {
                    Verdict::Pass {
                        ratio,
                        nonfinite: false,
                        ambiguous: false,
                    }
                } else {
                    Verdict::Fail {
                        why: "outside the error bound".into(),
                        ratio,
                    }
                }
            }
        }
    }

    fn index_text(&self, flat: usize) -> String {
        let mut idx = vec![0; self.dims.len()];
        let mut rem = flat;
        for (d, slot) in self.dims.iter().zip(idx.iter_mut()).rev() {
            *slot = rem % d;
            rem /= d;
        }
        format!("{idx:?}")
    }

    /// Inputs of one output, for diagnostics (at most 8 terms shown).
    fn inputs_text(&self, flat: usize) -> String {
        let (m, n, k) = (self.m, self.n, self.k);
        let bi = flat / (m * n);
        let i = (flat / n) % m;
        let j = flat % n;
        let arow = &self.a[(bi * m + i) * k..(bi * m + i + 1) * k];
        let bcol = &self.bt[(bi * n + j) * k..(bi * n + j + 1) * k];
        let show = |v: &[f64]| {
            let mut s: Vec<String> = v.iter().take(8).map(|x| format!("{x:e}")).collect();
            if v.len() > 8 {
                s.push(format!("... ({} in all)", v.len()));
            }
            s.join(", ")
        };
        format!("a row = [{}], b column = [{}]", show(arow), show(bcol))
    }

    fn run_check(
        &self,
        what: &str,
        got: &Tensor,
        side: Side,
    ) -> std::result::Result<Report, String> {
        if got.dtype() != self.budget.out {
            return Err(format!(
                "{what}: dtype {:?}, expected {:?}",
                got.dtype(),
                self.budget.out
            ));
        }
        if got.dims() != self.dims.as_slice() {
            return Err(format!(
                "{what}: dims {:?}, expected {:?}",
                got.dims(),
                self.dims
            ));
        }
        let g = to_f64_vec(got);
        let mut rep = Report {
            checked: g.len(),
            worst_at: "-".into(),
            ..Default::default()
        };
        let mut first_fail: Option<String> = None;
        let mut fails = 0usize;
        for (idx, (e, &gv)) in self.entries.iter().zip(&g).enumerate() {
            match self.verdict(e, gv, side) {
                Verdict::Pass {
                    ratio,
                    nonfinite,
                    ambiguous,
                } => {
                    rep.nonfinite += nonfinite as usize;
                    rep.ambiguous += ambiguous as usize;
                    if ratio > rep.worst_ratio {
                        rep.worst_ratio = ratio;
                        rep.worst_at = self.index_text(idx);
                    }
                }
                Verdict::Fail { why, ratio } => {
                    fails += 1;
                    if ratio > rep.worst_ratio {
                        rep.worst_ratio = ratio;
                        rep.worst_at = self.index_text(idx);
                    }
                    if first_fail.is_none() {
                        first_fail = Some(format!(
                            "first failure at {} ({why}): got {gv:e}, reference {:e}, bound {:e} \
                             (error/bound {ratio:.3e}), K = {}, Σ|p| = {:e}; {}",
                            self.index_text(idx),
                            e.value,
                            self.bound(e, side),
                            self.k,
                            e.abs_sum,
                            self.inputs_text(idx)
                        ));
                    }
                }
            }
        }
        match first_fail {
            None => Ok(rep),
            Some(f) => Err(format!(
                "{what}: {fails} of {} outputs fail the {side:?} budget; {f}; overall: {rep}",
                g.len()
            )),
        }
    }

    /// Check the op's result against the reference under the op's budget. Panics with the first
    /// failing index, the values and the bound; returns the report otherwise.
    pub fn check(&self, what: &str, got: &Tensor) -> Report {
        match self.run_check(what, got, Side::Ours) {
            Ok(r) => {
                eprintln!("{what}: {r}");
                r
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`Reference::check`], returning the failure text instead of panicking.
    pub fn try_check(&self, what: &str, got: &Tensor) -> std::result::Result<Report, String> {
        self.run_check(what, got, Side::Ours)
    }

    /// Check a stock result against the reference under stock's budget (validates the helper
    /// and the reference itself).
    pub fn check_stock(&self, what: &str, stock: &Tensor) -> Report {
        match self.run_check(what, stock, Side::Stock) {
            Ok(r) => r,
            Err(e) => panic!("stock result fails its own budget (helper or reference bug): {e}"),
        }
    }

    /// Check the op's result against the reference (op's budget), stock's against the
    /// reference (stock's budget), and the two against each other: NaN where the other is NaN,
    /// the same infinities, and `|ours − stock| ≤ bound_ours + bound_stock`.
    pub fn check_pair(&self, what: &str, ours: &Tensor, stock: &Tensor) -> Report {
        self.check_stock(&format!("{what} (stock)"), stock);
        let rep = self.check(what, ours);
        match self.compare(ours, stock, Side::Stock) {
            Ok((worst, at)) => {
                eprintln!("{what}: vs stock worst |ours-stock|/tol {worst:.3e} at {at}")
            }
            Err(e) => panic!("{what}: ours vs stock: {e}"),
        }
        rep
    }

    /// Two results of the op for the same products (e.g. computed through different layouts):
    /// both within the budget of the reference, NaN and infinities in the same places (except
    /// where the reference is ambiguous), and `|x − y| ≤ 2·bound`.
    pub fn try_check_agree(
        &self,
        what: &str,
        x: &Tensor,
        y: &Tensor,
    ) -> std::result::Result<(), String> {
        self.try_check(&format!("{what} (first)"), x)?;
        self.try_check(&format!("{what} (second)"), y)?;
        self.compare(x, y, Side::Ours)
            .map(|_| ())
            .map_err(|e| format!("{what}: {e}"))
    }

    /// Pairwise comparison of `x` (op's budget) and `y` (`side`'s budget).
    fn compare(
        &self,
        x: &Tensor,
        y: &Tensor,
        side: Side,
    ) -> std::result::Result<(f64, String), String> {
        let (o, s) = (to_f64_vec(x), to_f64_vec(y));
        let mut worst = 0.0f64;
        let mut worst_at = String::from("-");
        for (idx, e) in self.entries.iter().enumerate() {
            let (x, y) = (o[idx], s[idx]);
            let at = self.index_text(idx);
            if e.class == Class::Ambiguous {
                continue;
            }
            if x.is_nan() || y.is_nan() {
                if !(x.is_nan() && y.is_nan()) {
                    return Err(format!("at {at}: {x:e} vs {y:e}: NaN on one side only"));
                }
                continue;
            }
            if x.is_infinite() || y.is_infinite() {
                if x != y {
                    return Err(format!("at {at}: {x:e} vs {y:e}: infinities differ"));
                }
                continue;
            }
            let tol = self.bound(e, Side::Ours) + self.bound(e, side);
            let r = (x - y).abs() / tol;
            if r > worst {
                worst = r;
                worst_at = at.clone();
            }
            if r > 1.0 {
                return Err(format!(
                    "at {at}: {x:e} vs {y:e}: |diff| {:e} > tolerance {tol:e}; {}",
                    (x - y).abs(),
                    self.inputs_text(idx)
                ));
            }
        }
        Ok((worst, worst_at))
    }
}

/// The text of a Candle error without any captured backtrace (which `Display` appends when
/// `RUST_BACKTRACE` is set, and whose symbol names could match a dtype or shape by accident).
pub fn error_text(e: &candle_core::Error) -> String {
    use candle_core::Error as E;
    match e {
        E::WithBacktrace { inner, .. } => error_text(inner),
        E::Context { inner, context } => format!("{context}\n{}", error_text(inner)),
        E::WithPath { inner, path } => format!("path: {path:?} {}", error_text(inner)),
        other => other.to_string(),
    }
}

/// Run `f`, which must return `Err` (not `Ok`, not a panic); returns the error's text without
/// backtrace, lowercased.
pub fn expect_err<T>(what: &str, f: impl FnOnce() -> candle_core::Result<T>) -> String {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(_)) => panic!("{what}: expected an error, got Ok"),
        Ok(Err(e)) => {
            let text = error_text(&e);
            eprintln!("{what}: {text}");
            text.to_lowercase()
        }
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{what}: panicked instead of returning an error: {msg}")
        }
    }
}

/// Whether an error text names `dims`, as Candle prints shapes (`[2, 3]`) or as a tuple
/// (`(2, 3)`).
pub fn names_shape(msg: &str, dims: &[usize]) -> bool {
    let list = dims
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    msg.contains(&format!("[{list}]")) || msg.contains(&format!("({list})"))
}

#[cfg(test)]
mod tests {
    //! Self-tests of the reference and the checker against stock matmul: stock passes stock's
    //! budget, and results perturbed past the bound are rejected.
    use super::*;

    fn stock_case(seed: u64, m: usize, k: usize, n: usize, dtype: DType) {
        let a = randn(seed, &[m, k], 1.0, dtype);
        let b = randn(seed + 1, &[k, n], 1.0, dtype);
        let r = reference_matmul(&a, &b, Budget::for_dtype(dtype));
        let stock = a.matmul(&b).unwrap();
        r.check_stock("stock", &stock);
        // Stock is also within the op's (looser) budget for f32/f64.
        r.check("stock under the op's budget", &stock);
    }

    #[test]
    fn stock_matmul_is_within_its_budget() {
        for (i, &(m, k, n)) in [(1, 1, 1), (3, 7, 5), (17, 65, 9), (64, 896, 33)]
            .iter()
            .enumerate()
        {
            stock_case(10 + i as u64, m, k, n, DType::F32);
            stock_case(20 + i as u64, m, k, n, DType::F64);
        }
    }

    #[test]
    fn checker_rejects_a_result_past_the_bound() {
        let a = randn(1, &[4, 33], 1.0, DType::F32);
        let b = randn(2, &[33, 5], 1.0, DType::F32);
        let r = reference_matmul(&a, &b, Budget::for_dtype(DType::F32));
        let e = r.entries[7];
        let bound = r.bound(&e, Side::Ours);
        let mut vals: Vec<f32> = r.values().iter().map(|&v| v as f32).collect();
        // Within: the rounded reference itself.
        let ok = Tensor::from_vec(vals.clone(), (4, 5), &Device::Cpu).unwrap();
        r.try_check("rounded reference", &ok).unwrap();
        // Past: one element moved by 1.5 bounds.
        vals[7] = (e.value + 1.5 * bound) as f32;
        let bad = Tensor::from_vec(vals.clone(), (4, 5), &Device::Cpu).unwrap();
        let msg = r.try_check("perturbed", &bad).unwrap_err();
        assert!(msg.contains("[1, 2]"), "{msg}");
        // NaN where a finite value is expected.
        vals[7] = f32::NAN;
        let bad = Tensor::from_vec(vals, (4, 5), &Device::Cpu).unwrap();
        assert!(r.try_check("nan", &bad).is_err());
        // Wrong dtype.
        assert!(r
            .try_check("dtype", &ok.to_dtype(DType::F64).unwrap())
            .is_err());
    }

    #[test]
    fn special_values_are_classified() {
        let inf = f32::INFINITY;
        let nan = f32::NAN;
        // rows: [inf, 1], [inf, -inf], [0, inf], [nan, 1], [1e30, 0], [3e38, 3e38]
        let a = Tensor::from_vec(
            vec![inf, 1., inf, -inf, 0., inf, nan, 1., 1e30, 0., 3e38, 3e38],
            (6, 2),
            &Device::Cpu,
        )
        .unwrap();
        let b = Tensor::from_vec(vec![1f32, 1e30, 1., 1.], (2, 2), &Device::Cpu).unwrap();
        let r = reference_matmul(&a, &b, Budget::for_dtype(DType::F32));
        let c: Vec<Class> = r.entries.iter().map(|e| e.class).collect();
        assert_eq!(c[0], Class::Inf(1.0)); // inf + 1
        assert_eq!(c[1], Class::Inf(1.0)); // inf·1e30 + 1
        assert_eq!(c[2], Class::Nan); // inf - inf
        assert_eq!(c[3], Class::Nan);
        assert_eq!(c[4], Class::Inf(1.0)); // 0·1 + inf·1
        assert_eq!(c[6], Class::Nan); // NaN
        assert_eq!(c[8], Class::Finite); // 1e30·1 + 0
        assert_eq!(c[9], Class::Inf(1.0)); // 1e30·1e30 overflows
        assert_eq!(c[10], Class::Ambiguous); // 3e38 + 3e38: partial sum overflow
        assert_eq!(c[11], Class::Inf(1.0)); // 3e38·1e30 + 3e38
        let z = Tensor::from_vec(vec![0f32, -0.0], (1, 2), &Device::Cpu).unwrap();
        let i = Tensor::from_vec(vec![inf, 1.0], (2, 1), &Device::Cpu).unwrap();
        let r = reference_matmul(&z, &i, Budget::for_dtype(DType::F32));
        assert_eq!(r.entries[0].class, Class::Nan); // 0·inf
                                                    // -inf plus finite positives that can overflow a partial sum: -inf or NaN.
        let a =
            Tensor::from_vec(vec![inf, 3e38, 3e38, inf, 1.0, 1.0], (2, 3), &Device::Cpu).unwrap();
        let b = Tensor::from_vec(vec![-1f32, 1., 1.], (3, 1), &Device::Cpu).unwrap();
        let r = reference_matmul(&a, &b, Budget::for_dtype(DType::F32));
        assert_eq!(r.entries[0].class, Class::InfOrNan(-1.0));
        assert_eq!(r.entries[1].class, Class::Inf(-1.0)); // small finite part: exactly -inf
        let bad = Tensor::from_vec(vec![-inf, f32::NAN], (2, 1), &Device::Cpu).unwrap();
        r.try_check("nan in row 1", &bad).unwrap_err(); // NaN only allowed in row 0
        let ok = Tensor::from_vec(vec![f32::NAN, f32::NEG_INFINITY], (2, 1), &Device::Cpu).unwrap();
        r.try_check("nan where allowed", &ok).unwrap();
    }

    /// An emulated log-domain matmul: `Σ s·exp(round(ln|a|) + round(ln|b|))` with the logs
    /// rounded by `round`, the exp in f64 and the result optionally flushed to zero below the
    /// f32 normal range.
    fn emulate(a: &Tensor, b: &Tensor, round: impl Fn(f64) -> f64, ftz: bool) -> Tensor {
        emulate2(a, b, &round, &round, ftz)
    }

    fn emulate2(
        a: &Tensor,
        b: &Tensor,
        round_a: &dyn Fn(f64) -> f64,
        round_b: &dyn Fn(f64) -> f64,
        ftz: bool,
    ) -> Tensor {
        let (m, k) = a.dims2().unwrap();
        let n = b.dim(1).unwrap();
        let (av, bv) = (to_f64_vec(a), to_f64_vec(b));
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for t in 0..k {
                    let (x, y) = (av[i * k + t], bv[t * n + j]);
                    let sign = if x.is_sign_negative() != y.is_sign_negative() {
                        -1.0
                    } else {
                        1.0
                    };
                    let mut p = sign * (round_a(x.abs().ln()) + round_b(y.abs().ln())).exp();
                    if ftz && p.abs() < f32::MIN_POSITIVE as f64 {
                        p = 0.0;
                    }
                    s += p;
                }
                out[i * n + j] = s as f32;
            }
        }
        Tensor::from_vec(out, (m, n), &Device::Cpu).unwrap()
    }

    #[test]
    fn budget_accepts_f32_logs_and_rejects_f16_logs() {
        let a = randn(5, &[6, 33], 1.0, DType::F32);
        let b = randn(6, &[33, 7], 1.0, DType::F32);
        let r = reference_matmul(&a, &b, Budget::for_dtype(DType::F32));
        let f32_logs = emulate(&a, &b, |l| l as f32 as f64, false);
        r.try_check("f32 logs", &f32_logs).unwrap();
        let f16_logs = emulate(&a, &b, |l| half::f16::from_f64(l).to_f64(), false);
        assert!(r.try_check("f16 logs", &f16_logs).is_err());
        // Only b's logs in f16 (the weight format): accepted by the f16-weight budget, rejected
        // by the f32 one.
        let f32 = |l: f64| l as f32 as f64;
        let f16 = |l: f64| half::f16::from_f64(l).to_f64();
        let w16 = emulate2(&a, &b, &f32, &f16, false);
        let rw = reference_matmul(&a, &b, Budget::linear_f16(DType::F32));
        rw.try_check("f16 weight logs", &w16).unwrap();
        assert!(r
            .try_check("f16 weight logs under the f32 budget", &w16)
            .is_err());
    }

    #[test]
    fn overflow_thresholds_are_exact() {
        assert_eq!(F32_OVERFLOW, pow2(128) - pow2(103));
        assert_eq!(BF16_OVERFLOW, pow2(128) - pow2(119));
        assert_eq!(F16_OVERFLOW, 65504.0 + 16.0);
        // Just below rounds to MAX, at the threshold rounds to inf (ties-to-even goes up).
        assert_eq!((F32_OVERFLOW * (1.0 - 1e-12)) as f32, f32::MAX);
        assert_eq!(F32_OVERFLOW as f32, f32::INFINITY);
        assert_eq!(half::f16::from_f64(F16_OVERFLOW - 0.01), half::f16::MAX);
        assert!(half::f16::from_f64(F16_OVERFLOW).is_infinite());
        assert_eq!(
            half::bf16::from_f64(BF16_OVERFLOW * (1.0 - 1e-12)),
            half::bf16::MAX
        );
        assert!(half::bf16::from_f64(BF16_OVERFLOW).is_infinite());
    }

    #[test]
    fn budget_rejects_flush_to_zero() {
        let a = Tensor::from_vec(vec![1e-20f32, 2e-20], (1, 2), &Device::Cpu).unwrap();
        let b = Tensor::from_vec(vec![1e-22f32, 3e-22], (2, 1), &Device::Cpu).unwrap();
        let r = reference_matmul(&a, &b, Budget::for_dtype(DType::F32));
        r.try_check("gradual", &emulate(&a, &b, |l| l as f32 as f64, false))
            .unwrap();
        assert!(r
            .try_check("ftz", &emulate(&a, &b, |l| l as f32 as f64, true))
            .is_err());
    }
}

/// Helpers for the end-to-end tests of the `emilio` binary (`tests/tests/cli_*.rs`).
///
/// - [`cli::emilio_bin`] builds the binary once per test process (`cargo build --profile test`,
///   so it reuses the artifacts of the test build) and returns its path.
/// - [`cli::Sandbox`] is a temp directory the commands run in, with an environment that cannot
///   reach the network: `HF_HOME` inside the sandbox, `HF_HUB_OFFLINE=1`, `HF_ENDPOINT` pointing
///   at a closed local port (hf-hub 0.4 ignores `HF_HUB_OFFLINE` but honours `HF_ENDPOINT`), no
///   proxy, no token, and no `RUST_BACKTRACE` (so a panic shows its "run with RUST_BACKTRACE"
///   note, which the error checks look for).
/// - [`cli::Run`] is a finished command: exit status, stdout, stderr, with assertions that print
///   all of them on failure ([`cli::Run::ok`], [`cli::Run::fails_with`]).
/// - [`cli::Timing`] parses `generate`'s timing line; [`cli::safetensors_header`] reads a weight
///   file's header.
pub mod cli {
    use std::ffi::OsStr;
    use std::fmt;
    use std::io::Read;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, ExitStatus, Stdio};
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    use serde_json::Value;

    /// The hub endpoint every command gets: a closed port on the loopback interface, so a hub
    /// request fails at once with "connection refused" whether or not the machine has a network.
    pub const OFFLINE_ENDPOINT: &str = "http://127.0.0.1:9";

    /// Longest one command may run before the test kills it and fails (commands on the `tiny`
    /// preset take well under a second; `bench op` takes seconds).
    pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

    /// Environment variables removed from every command: credentials, proxies (a proxy would
    /// route hub requests off the machine) and backtrace switches.
    const REMOVED_ENV: [&str; 12] = [
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "RUST_BACKTRACE",
        "RUST_LIB_BACKTRACE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ];

    /// The workspace root (the parent of this package).
    pub fn workspace_root() -> &'static Path {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the tests package lives inside the workspace")
    }

    /// The `emilio` executable, built on first use in this process.
    ///
    /// Runs `$CARGO build -p emilio-cli --bin emilio --profile test` (the profile `cargo test`
    /// builds with, so the dependencies are already compiled) and takes the executable's path
    /// from cargo's JSON messages. Concurrent test processes are serialised by cargo's own
    /// build-directory lock; within a process the other tests wait for the first build.
    /// Panics with cargo's output when the build fails.
    pub fn emilio_bin() -> &'static Path {
        static BIN: OnceLock<PathBuf> = OnceLock::new();
        BIN.get_or_init(build_emilio)
    }

    fn build_emilio() -> PathBuf {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let output = Command::new(&cargo)
            .current_dir(workspace_root())
            .args([
                "build",
                "-p",
                "emilio-cli",
                "--bin",
                "emilio",
                "--profile",
                "test",
                "--message-format=json-render-diagnostics",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cargo:?} to build the emilio binary: {e}"));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            panic!(
                "building the emilio binary failed ({}):\n--- cargo stderr ---\n{stderr}\n\
                 --- cargo stdout ---\n{stdout}",
                output.status
            );
        }
        let executable = stdout
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|msg| msg["reason"] == "compiler-artifact" && msg["target"]["name"] == "emilio")
            .filter_map(|msg| msg["executable"].as_str().map(PathBuf::from))
            .next_back();
        match executable {
            Some(path) if path.is_file() => path,
            Some(path) => panic!("cargo reported {} but it is not a file", path.display()),
            None => panic!(
                "cargo built no `emilio` executable:\n--- cargo stderr ---\n{stderr}\n\
                 --- cargo stdout ---\n{stdout}"
            ),
        }
    }

    /// A temp directory that commands run in, with an offline environment (see the module docs).
    pub struct Sandbox {
        dir: tempfile::TempDir,
    }

    impl Default for Sandbox {
        fn default() -> Self {
            Self::new()
        }
    }

    impl Sandbox {
        /// A fresh, empty sandbox (removed when dropped).
        pub fn new() -> Self {
            let dir = tempfile::Builder::new()
                .prefix("emilio-cli-test-")
                .tempdir()
                .expect("creating a temp dir");
            Self { dir }
        }

        /// The sandbox directory.
        pub fn path(&self) -> &Path {
            self.dir.path()
        }

        /// `path` inside the sandbox.
        pub fn join(&self, path: impl AsRef<Path>) -> PathBuf {
            self.dir.path().join(path)
        }

        /// The `HF_HOME` of every command (the hub cache is its `hub/` folder).
        pub fn hf_home(&self) -> PathBuf {
            self.join("hf-home")
        }

        /// `emilio ARGS`, in the sandbox, with the offline environment; stdin is empty.
        pub fn command<I, S>(&self, args: I) -> Command
        where
            I: IntoIterator<Item = S>,
            S: AsRef<OsStr>,
        {
            let mut cmd = Command::new(emilio_bin());
            cmd.args(args)
                .current_dir(self.path())
                .env("HF_HOME", self.hf_home())
                .env("HF_HUB_OFFLINE", "1")
                .env("HF_ENDPOINT", OFFLINE_ENDPOINT)
                .stdin(Stdio::null());
            for var in REMOVED_ENV {
                cmd.env_remove(var);
            }
            cmd
        }

        /// Runs `emilio ARGS` to completion (see [`Sandbox::command`]).
        pub fn run<I, S>(&self, args: I) -> Run
        where
            I: IntoIterator<Item = S>,
            S: AsRef<OsStr>,
        {
            run(self.command(args))
        }

        /// `emilio synth --preset tiny --seed SEED --out NAME EXTRA...` in the sandbox; panics
        /// unless it succeeds. Returns the checkpoint directory.
        pub fn synth_tiny(&self, name: &str, seed: u64, extra: &[&str]) -> PathBuf {
            let out = self.join(name);
            let seed = seed.to_string();
            let mut args: Vec<&OsStr> = ["synth", "--preset", "tiny", "--seed", &seed, "--out"]
                .into_iter()
                .map(OsStr::new)
                .collect();
            args.push(out.as_os_str());
            args.extend(extra.iter().map(OsStr::new));
            self.run(args).ok();
            out
        }
    }

    /// Runs `cmd` with piped stdout and stderr, killing it (and failing) after
    /// [`COMMAND_TIMEOUT`].
    pub fn run(mut cmd: Command) -> Run {
        let cmdline = describe(&cmd);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{cmdline}`: {e}"));
        let stdout = read_in_background(child.stdout.take());
        let stderr = read_in_background(child.stderr.take());
        let status = wait_with_timeout(&mut child, &cmdline, COMMAND_TIMEOUT);
        Run {
            cmdline,
            status,
            stdout: stdout.join().expect("stdout reader"),
            stderr: stderr.join().expect("stderr reader"),
            elapsed: start.elapsed(),
        }
    }

    /// Waits for `child`, killing it and panicking after `timeout`.
    pub fn wait_with_timeout(child: &mut Child, cmdline: &str, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("`{cmdline}` did not finish within {timeout:?} and was killed");
                }
                Err(e) => panic!("waiting for `{cmdline}`: {e}"),
            }
        }
    }

    fn read_in_background(
        pipe: Option<impl Read + Send + 'static>,
    ) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
    }

    /// `emilio arg arg ...` for messages (long arguments shortened).
    fn describe(cmd: &Command) -> String {
        let mut s = String::from("emilio");
        for arg in cmd.get_args() {
            let arg = arg.to_string_lossy();
            let arg = if arg.chars().count() > 80 {
                format!("{}…", arg.chars().take(80).collect::<String>())
            } else {
                arg.into_owned()
            };
            if arg.is_empty() || arg.contains(char::is_whitespace) {
                s.push_str(&format!(" {arg:?}"));
            } else {
                s.push(' ');
                s.push_str(&arg);
            }
        }
        s
    }

    /// A finished command.
    pub struct Run {
        /// The command line, for messages.
        pub cmdline: String,
        pub status: ExitStatus,
        pub stdout: String,
        pub stderr: String,
        /// Wall time from start to exit.
        pub elapsed: Duration,
    }

    impl fmt::Display for Run {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let clip = |s: &str| {
                if s.chars().count() > 4000 {
                    format!("{}… (clipped)", s.chars().take(4000).collect::<String>())
                } else {
                    s.to_string()
                }
            };
            write!(
                f,
                "`{}` ({}, {:.2?})\n--- stdout ---\n{}\n--- stderr ---\n{}",
                self.cmdline,
                self.status,
                self.elapsed,
                clip(&self.stdout),
                clip(&self.stderr)
            )
        }
    }

    impl fmt::Debug for Run {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            fmt::Display::fmt(self, f)
        }
    }

    impl Run {
        /// Asserts exit status 0.
        #[track_caller]
        pub fn ok(self) -> Self {
            assert!(self.status.success(), "expected success: {self}");
            self
        }

        /// Asserts a user-facing failure: a non-zero exit status (not a signal, not a panic's
        /// 101), a stderr without a panic message or a backtrace (or the note suggesting
        /// one), and an `error:` line.
        #[track_caller]
        pub fn fails(self) -> Self {
            assert!(!self.status.success(), "expected a failure: {self}");
            let code = self.status.code();
            assert!(
                code.is_some() && code != Some(101),
                "expected a plain error exit (not a panic or a signal): {self}"
            );
            for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
                assert!(
                    !self.stderr.contains(bad),
                    "stderr contains {bad:?}: {self}"
                );
            }
            assert!(
                self.stderr.contains("error:"),
                "stderr has no `error:` line: {self}"
            );
            self
        }

        /// [`Run::fails`], and stderr contains every one of `needles` (case-insensitively).
        #[track_caller]
        pub fn fails_with(self, needles: &[&str]) -> Self {
            let run = self.fails();
            let stderr = run.stderr.to_lowercase();
            for needle in needles {
                assert!(
                    stderr.contains(&needle.to_lowercase()),
                    "stderr does not mention {needle:?}: {run}"
                );
            }
            run
        }

        /// stdout parsed as one JSON value.
        #[track_caller]
        pub fn json(&self) -> Value {
            serde_json::from_str(&self.stdout)
                .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self}"))
        }

        /// The timing line of `generate` on stderr.
        #[track_caller]
        pub fn timing(&self) -> Timing {
            Timing::find(&self.stderr).unwrap_or_else(|| panic!("no timing line on stderr: {self}"))
        }
    }

    /// `generate`'s timing line: "BACKEND backend: loaded in Ls; prefill P tokens at R tok/s;
    /// decode D tokens at S tok/s".
    #[derive(Debug, Clone, PartialEq)]
    pub struct Timing {
        /// The line itself.
        pub line: String,
        pub load_secs: f64,
        pub prefill_tokens: usize,
        pub prefill_tok_s: f64,
        pub decode_tokens: usize,
        pub decode_tok_s: f64,
    }

    impl Timing {
        /// The first line of `stderr` that parses as a timing line.
        pub fn find(stderr: &str) -> Option<Self> {
            stderr.lines().find_map(Self::parse)
        }

        /// Parses one line.
        pub fn parse(line: &str) -> Option<Self> {
            let prefill = &line[line.find("prefill ")?..];
            let decode = &line[line.find("decode ")?..];
            let loaded = &line[line.find("loaded in ")?..];
            Some(Self {
                line: line.to_string(),
                load_secs: number_after(loaded, "loaded in ")?,
                prefill_tokens: number_after(prefill, "prefill ")?
                    .to_string()
                    .parse()
                    .ok()?,
                prefill_tok_s: number_after(prefill, " tokens at ")?,
                decode_tokens: number_after(decode, "decode ")?.to_string().parse().ok()?,
                decode_tok_s: number_after(decode, " tokens at ")?,
            })
        }
    }

    /// The number right after the first `key` in `s`.
    fn number_after(s: &str, key: &str) -> Option<f64> {
        let rest = &s[s.find(key)? + key.len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+')))
            .unwrap_or(rest.len());
        rest[..end].trim_end_matches('.').parse().ok()
    }

    /// The JSON header of a safetensors file: tensor name → `{dtype, shape, data_offsets}`
    /// (plus `__metadata__` when present).
    pub fn safetensors_header(path: &Path) -> Value {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            bytes.len() >= 8,
            "{} is shorter than 8 bytes",
            path.display()
        );
        let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header = bytes
            .get(8..8 + len)
            .unwrap_or_else(|| panic!("{}: header of {len} bytes is truncated", path.display()));
        serde_json::from_slice(header)
            .unwrap_or_else(|e| panic!("{}: header is not JSON: {e}", path.display()))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn timing_lines_parse() {
            let t = Timing::parse(
                "emilio (f32) backend: loaded in 0.01s; prefill 77 tokens at 1729.2 tok/s; \
                 decode 11 tokens at 448.2 tok/s",
            )
            .unwrap();
            assert_eq!(t.load_secs, 0.01);
            assert_eq!((t.prefill_tokens, t.decode_tokens), (77, 11));
            assert_eq!((t.prefill_tok_s, t.decode_tok_s), (1729.2, 448.2));
            assert!(Timing::parse("note: --max-tokens 256 lowered to 57").is_none());
        }
    }
}
