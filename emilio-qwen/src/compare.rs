//! How close two logit vectors are: the measures `emilio ab` reports and the parity tooling
//! shares, so every report computes them the same way.

/// Index of the largest logit (the first one on ties), as greedy decoding picks it.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// `ln Σ_v exp(logits_v)` in f64 (the largest logit factored out, so no term overflows).
pub fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    max + logits
        .iter()
        .map(|&x| (x as f64 - max).exp())
        .sum::<f64>()
        .ln()
}

/// `log softmax` in f64.
fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let lse = log_sum_exp(logits);
    logits.iter().map(|&x| x as f64 - lse).collect()
}

/// `KL(softmax(p) ‖ softmax(q))` in nats, computed in f64 (`p` is the reference, e.g. stock).
pub fn kl_divergence(p: &[f32], q: &[f32]) -> f64 {
    let (lp, lq) = (log_softmax(p), log_softmax(q));
    lp.iter()
        .zip(&lq)
        .map(|(&a, &b)| {
            if a == f64::NEG_INFINITY {
                0.0
            } else {
                a.exp() * (a - b)
            }
        })
        .sum::<f64>()
        .max(0.0)
}

/// `max_v |q_v − p_v| / max_v |p_v|`: the worst logit error relative to the reference's scale
/// (the absolute error when the reference is all zeros).
pub fn max_rel_err(p: &[f32], q: &[f32]) -> f64 {
    let scale = p.iter().fold(0f64, |m, &x| m.max((x as f64).abs()));
    let err = p
        .iter()
        .zip(q)
        .fold(0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs()));
    if scale > 0.0 {
        err / scale
    } else {
        err
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_of_known_vectors() {
        assert_eq!(argmax(&[0.1, 3.0, 3.0, -1.0]), 1);
        assert_eq!(kl_divergence(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]), 0.0);
        // Shifting every logit leaves the distribution, so KL, unchanged.
        assert!(kl_divergence(&[1.0, 2.0, 3.0], &[11.0, 12.0, 13.0]) < 1e-12);
        // Two-point distributions: KL([.5,.5] ‖ [e/(1+e), 1/(1+e)]) by hand.
        let q1 = 1f64.exp() / (1.0 + 1f64.exp());
        let want = 0.5 * (0.5 / q1).ln() + 0.5 * (0.5 / (1.0 - q1)).ln();
        assert!((kl_divergence(&[0.0, 0.0], &[1.0, 0.0]) - want).abs() < 1e-12);
        assert_eq!(max_rel_err(&[2.0, -4.0], &[2.5, -4.0]), 0.125);
    }
}
