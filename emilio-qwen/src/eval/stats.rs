//! Per-position scores and the statistics over them, as llama-perplexity reports them.

use serde::Serialize;

use super::reference_file::ReferencePosition;
use crate::compare::{argmax, log_sum_exp};

/// How the model did at one scored position, against stock's reference.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Scored {
    /// Stock's negative log-likelihood of the correct token (nats).
    pub nll_stock: f64,
    /// The model's.
    pub nll: f64,
    /// KL(stock ‖ model) from the reference (nats): the full-vocabulary value to within
    /// [`Scored::kl_bound`].
    pub kl: f64,
    /// How far [`Scored::kl`] may be from the full-vocabulary KL (0 when the reference kept
    /// every token exactly).
    pub kl_bound: f64,
    /// The model's probability of the correct token minus stock's.
    pub delta_p: f64,
    /// Whether the model's top-1 token is stock's.
    pub same_top1: bool,
}

impl Scored {
    /// Scores the model's logits `row` at a position whose correct token is `target`, against
    /// stock's `at`. `kept` is scratch space (one flag per vocabulary entry), reused across
    /// calls.
    pub fn new(at: &ReferencePosition, row: &[f32], target: u32, kept: &mut Vec<bool>) -> Self {
        let lse_q = log_sum_exp(row);
        let ln_q = |v: u32| row[v as usize] as f64 - lse_q;
        let mut kl = 0.0;
        kept.clear();
        kept.resize(row.len(), false);
        for (&v, &logit) in at.top_ids.iter().zip(at.top_logits) {
            let ln_p = logit as f64 - at.lse;
            kl += ln_p.exp() * (ln_p - ln_q(v));
            kept[v as usize] = true;
        }
        let mut kl_bound = 0.0;
        let r = at.tail_mass;
        if r > 0.0 {
            // The tail, from its 16-bit log-probabilities (see `Reference` for the bound).
            let h = at.tail_step / 2.0;
            let (mut mass, mut sum, mut abs) = (0.0f64, 0.0f64, 0.0f64);
            for (v, _) in kept.iter().enumerate().filter(|(_, &k)| !k) {
                let ln_p = at.tail_ln_p(v);
                let p = ln_p.exp();
                let a = ln_p - ln_q(v as u32);
                mass += p;
                sum += p * a;
                abs += p * a.abs();
            }
            kl += sum + (r - mass);
            let grow = h.exp_m1();
            kl_bound = (grow - h) * mass + grow * (abs + h * mass);
        }
        let nll_stock = at.lse - at.target_logit as f64;
        let nll = -ln_q(target);
        Self {
            nll_stock,
            nll,
            kl,
            kl_bound,
            delta_p: (-nll).exp() - (-nll_stock).exp(),
            same_top1: at.top_ids.first() == Some(&argmax(row)),
        }
    }
}

/// A mean (or a function of means) and its standard uncertainty (`None` below 2 values).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimate {
    /// The figure.
    pub value: f64,
    /// Its standard uncertainty.
    pub uncertainty: Option<f64>,
}

/// The KL divergences' distribution.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct KlDistribution {
    /// The mean KL divergence (nats) and its standard error.
    pub mean: Estimate,
    /// The smallest.
    pub min: f64,
    /// The median.
    pub median: f64,
    /// The 90th percentile.
    pub p90: f64,
    /// The 99th percentile.
    pub p99: f64,
    /// The 99.9th percentile.
    pub p99_9: f64,
    /// The largest.
    pub max: f64,
    /// The largest [`Scored::kl_bound`]: every KL here is exact to within it.
    pub max_tail_bound: f64,
}

/// The change in the correct token's probability (the model's minus stock's).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DeltaP {
    /// The mean Δp and its standard error.
    pub mean: Estimate,
    /// `√mean(Δp²)` and its uncertainty.
    pub rms: Estimate,
    /// The smallest (most negative).
    pub min: f64,
    /// The 1st percentile.
    pub p1: f64,
    /// The median.
    pub median: f64,
    /// The 99th percentile.
    pub p99: f64,
    /// The largest.
    pub max: f64,
}

/// Every figure of an evaluation, as llama-perplexity's `--kl-divergence` prints them
/// (uncertainties are standard errors; percentiles interpolate linearly between ranks).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Scored tokens.
    pub tokens: usize,
    /// Stock's perplexity, `exp(mean NLL)`.
    pub ppl_stock: Estimate,
    /// The model's.
    pub ppl: Estimate,
    /// `mean(NLL − NLL_stock) = ln(PPL / PPL_stock)`, its uncertainty from the paired
    /// differences (so what both models find hard cancels).
    pub ln_ppl_ratio: Estimate,
    /// `PPL / PPL_stock`.
    pub ppl_ratio: Estimate,
    /// `PPL − PPL_stock`.
    pub ppl_diff: Estimate,
    /// Pearson correlation of the two models' per-token NLLs.
    pub nll_correlation: f64,
    /// KL(stock ‖ model) per position.
    pub kl: KlDistribution,
    /// How often the model's top-1 token is stock's (a fraction).
    pub same_top1: Estimate,
    /// Δp of the correct token.
    pub delta_p: DeltaP,
}

impl Summary {
    /// The statistics of `scored` (at least one position).
    pub fn new(scored: &[Scored]) -> Self {
        let n = scored.len();
        let nll_s: Vec<f64> = scored.iter().map(|s| s.nll_stock).collect();
        let nll_q: Vec<f64> = scored.iter().map(|s| s.nll).collect();
        let diff: Vec<f64> = scored.iter().map(|s| s.nll - s.nll_stock).collect();
        let (ms, mq) = (mean_se(&nll_s), mean_se(&nll_q));
        let ppl_stock = ms.value.exp();
        let ppl = mq.value.exp();
        let ln_ratio = mean_se(&diff);
        let ratio = ln_ratio.value.exp();
        // PPL − PPL_stock: first-order propagation through both exps, with the covariance.
        let cov = covariance(&nll_s, &nll_q) / (n as f64 - 1.0);
        let ppl_diff_unc = ms.uncertainty.zip(mq.uncertainty).map(|(es, eq)| {
            (ppl * ppl * eq * eq + ppl_stock * ppl_stock * es * es - 2.0 * ppl * ppl_stock * cov)
                .max(0.0)
                .sqrt()
        });
        let kls: Vec<f64> = scored.iter().map(|s| s.kl).collect();
        let sorted_kl = sorted(&kls);
        let dps: Vec<f64> = scored.iter().map(|s| s.delta_p).collect();
        let sorted_dp = sorted(&dps);
        let dp2: Vec<f64> = dps.iter().map(|d| d * d).collect();
        let dp2_mean = mean_se(&dp2);
        let rms = dp2_mean.value.sqrt();
        let same = scored.iter().filter(|s| s.same_top1).count() as f64 / n as f64;
        Self {
            tokens: n,
            ppl_stock: scaled(ms, ppl_stock),
            ppl: scaled(mq, ppl),
            ln_ppl_ratio: ln_ratio,
            ppl_ratio: scaled(ln_ratio, ratio),
            ppl_diff: Estimate {
                value: ppl - ppl_stock,
                uncertainty: ppl_diff_unc,
            },
            nll_correlation: covariance(&nll_s, &nll_q)
                / (covariance(&nll_s, &nll_s) * covariance(&nll_q, &nll_q)).sqrt(),
            kl: KlDistribution {
                mean: mean_se(&kls),
                min: sorted_kl[0],
                median: percentile(&sorted_kl, 0.5),
                p90: percentile(&sorted_kl, 0.9),
                p99: percentile(&sorted_kl, 0.99),
                p99_9: percentile(&sorted_kl, 0.999),
                max: sorted_kl[n - 1],
                max_tail_bound: scored.iter().fold(0.0, |m, s| m.max(s.kl_bound)),
            },
            same_top1: Estimate {
                value: same,
                uncertainty: (n > 1).then(|| (same * (1.0 - same) / (n as f64 - 1.0)).sqrt()),
            },
            delta_p: DeltaP {
                mean: mean_se(&dps),
                // d(√m) = dm / (2√m).
                rms: Estimate {
                    value: rms,
                    uncertainty: dp2_mean.uncertainty.map(|e| {
                        if rms > 0.0 {
                            0.5 * e / rms
                        } else {
                            0.0
                        }
                    }),
                },
                min: sorted_dp[0],
                p1: percentile(&sorted_dp, 0.01),
                median: percentile(&sorted_dp, 0.5),
                p99: percentile(&sorted_dp, 0.99),
                max: sorted_dp[n - 1],
            },
        }
    }
}

/// The mean and its standard error `√(var / (n − 1))`.
fn mean_se(x: &[f64]) -> Estimate {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    Estimate {
        value: mean,
        uncertainty: (x.len() > 1).then(|| (covariance(x, x) / (n - 1.0)).sqrt()),
    }
}

/// `exp` of an estimated mean: the value given, the uncertainty scaled by it (first order).
fn scaled(ln: Estimate, value: f64) -> Estimate {
    Estimate {
        value,
        uncertainty: ln.uncertainty.map(|e| e * value),
    }
}

/// The population covariance `mean(xy) − mean(x) mean(y)`, computed about the means.
fn covariance(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    x.iter()
        .zip(y)
        .map(|(a, b)| (a - mx) * (b - my))
        .sum::<f64>()
        / n
}

fn sorted(x: &[f64]) -> Vec<f64> {
    let mut v = x.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

/// The `q` quantile of `sorted` values, interpolating linearly between ranks (`q (n − 1)`).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}
