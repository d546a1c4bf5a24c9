//! The inner kernel: one log-domain dot product over a pair of contiguous `k`-runs.
//!
//! The body is plain per-lane arithmetic over a fixed number of accumulators; compiled inside a
//! `#[target_feature]` function the compiler turns the lanes into SIMD registers. The widest
//! instruction set the CPU has is picked at run time (AVX-512, AVX2+FMA, NEON, else SSE2).

use super::isa::Isa;
use crate::float::LogFloat;

/// `Σ_k s_a[k]·s_b[k]·exp(la[k] + lb[k])`, accumulated in `T`.
///
/// Every slice has the same length. Each accumulator starts at `-0.0`, the IEEE additive
/// identity, so with a single term the result is that product bit for bit (signed zeros kept).
#[inline]
pub(crate) fn log_dot<T: LogFloat>(la: &[T], sa: &[T::Mask], lb: &[T], sb: &[T::Mask]) -> T {
    debug_assert!(sa.len() == la.len() && lb.len() == la.len() && sb.len() == la.len());
    T::log_dot(la, sa, lb, sb)
}

/// The portable body: `LANES` independent accumulators break the add dependency chain so
/// consecutive `exp`s overlap, and give the vectoriser a fixed-width loop.
#[inline(always)]
pub(crate) fn log_dot_lanes<T: LogFloat, const LANES: usize, const FMA: bool>(
    la: &[T],
    sa: &[T::Mask],
    lb: &[T],
    sb: &[T::Mask],
) -> T {
    let k = la.len();
    let mut acc = [T::NEG_ZERO; LANES];
    let body = k - k % LANES;
    let chunks = la[..body]
        .chunks_exact(LANES)
        .zip(sa[..body].chunks_exact(LANES))
        .zip(lb[..body].chunks_exact(LANES))
        .zip(sb[..body].chunks_exact(LANES));
    for (((la, sa), lb), sb) in chunks {
        for l in 0..LANES {
            acc[l] = acc[l] + T::signed_exp::<FMA>(la[l] + lb[l], sa[l] ^ sb[l]);
        }
    }
    for i in body..k {
        let l = i - body;
        acc[l] = acc[l] + T::signed_exp::<FMA>(la[i] + lb[i], sa[i] ^ sb[i]);
    }
    pairwise_sum(&mut acc)
}

/// Sums accumulator lanes in the one order every kernel uses (lane `l` takes lane `l + width`,
/// halving the width), so the portable and intrinsics kernels agree bit for bit. `acc.len()` is
/// a power of two; the lanes are overwritten.
#[inline(always)]
pub(crate) fn pairwise_sum<T: Copy + std::ops::Add<Output = T>>(acc: &mut [T]) -> T {
    debug_assert!(acc.len().is_power_of_two());
    let mut width = acc.len();
    while width > 1 {
        width /= 2;
        for l in 0..width {
            acc[l] = acc[l] + acc[l + width];
        }
    }
    acc[0]
}

/// The `f32` kernel for this CPU.
pub(crate) fn log_dot_f32(la: &[f32], sa: &[u32], lb: &[f32], sb: &[u32]) -> f32 {
    match Isa::get() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only detected on CPUs with AVX-512F, AVX2 and FMA; the
        // function has no other precondition (it is safe Rust compiled for that ISA).
        Isa::Avx512 => unsafe { super::avx512::log_dot(la, sa, lb, sb) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only detected on CPUs with AVX2 and FMA.
        Isa::Avx2 => unsafe { x86::log_dot_avx2(la, sa, lb, sb) },
        // NEON and fused multiply-add are part of the aarch64 baseline.
        Isa::Neon => log_dot_lanes::<f32, 16, true>(la, sa, lb, sb),
        _ => log_dot_lanes::<f32, 8, false>(la, sa, lb, sb),
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::log_dot_lanes;

    /// Two 8-lane vectors of accumulators.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn log_dot_avx2(la: &[f32], sa: &[u32], lb: &[f32], sb: &[u32]) -> f32 {
        log_dot_lanes::<f32, 16, true>(la, sa, lb, sb)
    }
}
