//! The inner kernel: one log-domain dot product over a pair of contiguous `k`-runs.

use crate::float::LogFloat;

/// Independent accumulators: they break the add dependency chain so consecutive `exp`s overlap,
/// and give the compiler a fixed-width body to vectorise the adds and XORs of.
const LANES: usize = 8;

/// `Σ_k s_a[k]·s_b[k]·exp(la[k] + lb[k])`, accumulated in `T`.
///
/// Every slice has the same length. Each accumulator starts at `-0.0`, the IEEE additive
/// identity, so with a single term the result is that product bit for bit (signed zeros kept).
#[inline]
pub(crate) fn log_dot<T: LogFloat>(la: &[T], sa: &[T::Mask], lb: &[T], sb: &[T::Mask]) -> T {
    let k = la.len();
    debug_assert!(sa.len() == k && lb.len() == k && sb.len() == k);
    let mut acc = [T::NEG_ZERO; LANES];
    let body = k - k % LANES;
    let chunks = la[..body]
        .chunks_exact(LANES)
        .zip(sa[..body].chunks_exact(LANES))
        .zip(lb[..body].chunks_exact(LANES))
        .zip(sb[..body].chunks_exact(LANES));
    for (((la, sa), lb), sb) in chunks {
        for l in 0..LANES {
            acc[l] = acc[l] + T::signed_exp(la[l] + lb[l], sa[l] ^ sb[l]);
        }
    }
    for i in body..k {
        let l = i - body;
        acc[l] = acc[l] + T::signed_exp(la[i] + lb[i], sa[i] ^ sb[i]);
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
}
