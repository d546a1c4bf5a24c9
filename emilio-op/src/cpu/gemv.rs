//! The decode kernel: one activation row against one weight row read straight from its stored
//! form (f16 or f32 magnitudes, packed sign bits), nothing widened into a buffer first.
//!
//! Decode reads every weight once per token, so the bytes read decide its speed: the f16
//! magnitudes are widened in registers and each sign word is broadcast to the 32 lanes it
//! covers, lane `j` taking bit `j` ([`crate::packing`]).

use half::f16;

use super::dot::pairwise_sum;
use super::exp::exp_f32;
use super::isa::Isa;
use crate::packing::SIGN_BITS_PER_WORD;

const W: usize = SIGN_BITS_PER_WORD;

#[cfg(target_arch = "x86_64")]
pub(crate) use super::avx512::Magnitude16 as MagnitudeSimd;

/// Where no intrinsics kernel exists, nothing more is asked of a magnitude type.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) trait MagnitudeSimd {}
#[cfg(not(target_arch = "x86_64"))]
impl<T> MagnitudeSimd for T {}

/// A stored log magnitude the kernel widens to `f32` in registers.
pub(crate) trait Magnitude: Copy + Send + Sync + 'static + MagnitudeSimd {
    fn widen(self) -> f32;
}

impl Magnitude for f32 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
}

impl Magnitude for f16 {
    /// Exact for every f16 (normal, subnormal, ±inf, NaN) and branch-free, so it vectorises
    /// (`half`'s own conversion is a call per element unless used on whole slices).
    #[inline(always)]
    fn widen(self) -> f32 {
        let h = self.to_bits() as u32;
        let sign = (h & 0x8000) << 16;
        let magnitude = h & 0x7fff;
        // Exponent and mantissa moved into f32 position, then rebiased by 2^(127-15); the
        // multiply by a power of two is exact, and also normalises f16 subnormals.
        let scaled = f32::from_bits(magnitude << 13) * f32::from_bits((127 + 112) << 23);
        let value = if magnitude >= 0x7c00 {
            f32::from_bits((magnitude << 13) | 0x7f80_0000) // inf and NaN
        } else {
            scaled
        };
        f32::from_bits(value.to_bits() | sign)
    }
}

/// `Σ_k s(x)·s(w)·exp(ln|x| + ln|w|)` for one activation row (`la`, `sa`) and one weight row
/// (`mags`, packed `signs`), with 32 accumulators: one per lane of a sign word.
#[inline(always)]
pub(crate) fn log_dot_packed_lanes<M: Magnitude, const FMA: bool>(
    la: &[f32],
    sa: &[u32],
    mags: &[M],
    signs: &[u32],
) -> f32 {
    let k = la.len();
    let mut acc = [-0.0f32; W];
    let full = k / W;
    for (q, &word) in signs[..full].iter().enumerate() {
        let r = q * W..(q + 1) * W;
        let (la, sa, mags) = (&la[r.clone()], &sa[r.clone()], &mags[r]);
        for l in 0..W {
            let mask = ((word >> l) & 1) << 31;
            let e = exp_f32::<FMA>(la[l] + mags[l].widen());
            acc[l] += f32::from_bits(e.to_bits() ^ sa[l] ^ mask);
        }
    }
    if full * W < k {
        let word = signs[full];
        for (l, i) in (full * W..k).enumerate() {
            let mask = ((word >> l) & 1) << 31;
            let e = exp_f32::<FMA>(la[i] + mags[i].widen());
            acc[l] += f32::from_bits(e.to_bits() ^ sa[i] ^ mask);
        }
    }
    pairwise_sum(&mut acc)
}

/// The decode kernel for this CPU (see [`Isa`]).
pub(crate) fn log_dot_packed<M: Magnitude>(
    la: &[f32],
    sa: &[u32],
    mags: &[M],
    signs: &[u32],
) -> f32 {
    debug_assert!(sa.len() == la.len() && mags.len() == la.len());
    debug_assert!(signs.len() == la.len().div_ceil(W));
    match Isa::get() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only detected on CPUs with AVX-512F, AVX2 and FMA.
        Isa::Avx512 => unsafe { super::avx512::log_dot_packed(la, sa, mags, signs) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only detected on CPUs with AVX2 and FMA.
        Isa::Avx2 => unsafe { x86::packed_avx2(la, sa, mags, signs) },
        Isa::Neon => log_dot_packed_lanes::<M, true>(la, sa, mags, signs),
        _ => log_dot_packed_lanes::<M, false>(la, sa, mags, signs),
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{log_dot_packed_lanes, Magnitude};

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn packed_avx2<M: Magnitude>(
        la: &[f32],
        sa: &[u32],
        mags: &[M],
        signs: &[u32],
    ) -> f32 {
        log_dot_packed_lanes::<M, true>(la, sa, mags, signs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_widening_is_exact_for_every_f16() {
        for bits in 0..=u16::MAX {
            let h = f16::from_bits(bits);
            let (got, want) = (h.widen(), h.to_f32());
            if want.is_nan() {
                assert!(got.is_nan(), "{bits:#06x}");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{bits:#06x}");
            }
        }
    }
}
