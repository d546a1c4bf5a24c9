//! The `f64` reference of a matmul or linear layer with a per-output error bound from
//! [`crate::budget`], and the checkers that hold a result (ours or stock's) to it and report
//! the worst error/bound ratio or the first failing index with its values.

use candle_core::{DType, Tensor};

use crate::budget::*;
use crate::inputs::to_f64_vec;

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

/// The reference of a linear layer, `x·wᵀ (+ bias)`, over the original (unconverted) weight `w`
/// `(out, in)` with the budget of the weight format and exp mode (a format alone: exact); for
/// `lns8` and `lns4`, whose error per weight is the format's own (`emilio_op::format`), `w` is the weight as
/// stored (`LogWeight::dequantize`) and the budget the op's alone; shaped like the layer's output
/// `(..., out)` for `x` `(..., in)` of any layout.
pub fn reference_linear(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    config: impl Into<emilio_op::LogConfig>,
) -> Reference {
    let config = config.into();
    let budget = match config.format {
        emilio_op::WeightFormat::F32 => Budget::linear_f32(x.dtype()),
        emilio_op::WeightFormat::F16 => Budget::linear_f16(x.dtype()),
        emilio_op::WeightFormat::Lns8 | emilio_op::WeightFormat::Lns4 => {
            Budget::linear_lns(x.dtype())
        }
    }
    .with_exp(config.exp);
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
    // The exp mode's constant error rides on the activation side's precomputed part.
    let wa: Vec<f64> = la3
        .iter()
        .map(|l| two_u * l.abs() + budget.exp_rel)
        .collect();
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
        let two_x = 2.0 * self.budget.u + self.budget.exp_x;
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
                let d = wa[t + l] + wb[t + l] + two_x * (la[t + l] + lb[t + l]).abs();
                s[l] += p;
                sa[l] += ap;
                sd[l] += ap * (d * (1.0 + d) + eight_u);
            }
            t += 4;
        }
        while t < k {
            let p = a[t] * b[t];
            let ap = p.abs();
            let d = wa[t] + wb[t] + two_x * (la[t] + lb[t]).abs();
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

#[cfg(test)]
mod tests {
    //! Self-tests of the reference and the checker against stock matmul: stock passes stock's
    //! budget, and results perturbed past the bound are rejected.
    use super::*;
    use crate::inputs::randn;
    use candle_core::Device;

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
