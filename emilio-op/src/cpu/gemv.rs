//! The decode kernel's dispatch: one activation row against one weight row read straight from
//! its stored form (f16 or f32 magnitudes, packed sign bits), nothing widened into a buffer
//! first, with the widest kernel the CPU runs.
//!
//! Decode reads every weight once per token, so the bytes read decide its speed: the f16
//! magnitudes are widened in registers and each sign word is broadcast to the 32 lanes it
//! covers, lane `j` taking bit `j` ([`crate::packing`]).

use super::exp_kernel::ExpKernel;
use super::isa::Isa;
use super::magnitude::Magnitude;
use super::portable::{log_dot_lns4_lanes, log_dot_lns8_lanes, log_dot_packed_lanes};
use crate::packing::SIGN_BITS_PER_WORD;

#[cfg(target_arch = "x86_64")]
pub(crate) use super::avx512::{Exp16 as ExpSimd, Magnitude16 as MagnitudeSimd};

/// Where no intrinsics kernel exists, nothing more is asked of a magnitude type.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) trait MagnitudeSimd {}
#[cfg(not(target_arch = "x86_64"))]
impl<T> MagnitudeSimd for T {}
#[cfg(not(target_arch = "x86_64"))]
pub(crate) trait ExpSimd {}
#[cfg(not(target_arch = "x86_64"))]
impl<T> ExpSimd for T {}

/// The decode kernel for this CPU (see [`Isa`]), with the `exp` of `E`.
pub(crate) fn log_dot_packed<M: Magnitude + MagnitudeSimd, E: ExpKernel + ExpSimd>(
    la: &[f32],
    sa: &[u32],
    mags: &[M],
    signs: &[u32],
) -> f32 {
    debug_assert!(sa.len() == la.len() && mags.len() == la.len());
    debug_assert!(signs.len() == la.len().div_ceil(SIGN_BITS_PER_WORD));
    match Isa::get() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only detected on CPUs with AVX-512F, AVX2 and FMA.
        Isa::Avx512 => unsafe { super::avx512::log_dot_packed::<M, E>(la, sa, mags, signs) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only detected on CPUs with AVX2 and FMA.
        Isa::Avx2 => unsafe { x86::packed_avx2::<M, E>(la, sa, mags, signs) },
        Isa::Neon => log_dot_packed_lanes::<M, E, true>(la, sa, mags, signs),
        _ => log_dot_packed_lanes::<M, E, false>(la, sa, mags, signs),
    }
}

/// The `lns8` decode kernel for this CPU (see [`Isa`]), with the `exp` of `E`.
pub(crate) fn log_dot_lns8<E: ExpKernel + ExpSimd>(
    la: &[f32],
    sa: &[u32],
    codes: &[u8],
    offsets: &[half::f16],
) -> f32 {
    debug_assert!(sa.len() == la.len() && codes.len() == la.len());
    debug_assert!(offsets.len() == la.len().div_ceil(crate::format::lns8::GROUP));
    match Isa::get() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only detected on CPUs with AVX-512F, AVX2 and FMA.
        Isa::Avx512 => unsafe { super::avx512::log_dot_lns8::<E>(la, sa, codes, offsets) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only detected on CPUs with AVX2 and FMA.
        Isa::Avx2 => unsafe { x86::lns8_avx2::<E>(la, sa, codes, offsets) },
        Isa::Neon => log_dot_lns8_lanes::<E, true>(la, sa, codes, offsets),
        _ => log_dot_lns8_lanes::<E, false>(la, sa, codes, offsets),
    }
}

/// The `lns4` decode kernel for this CPU (see [`Isa`]), with the `exp` of `E`.
pub(crate) fn log_dot_lns4<E: ExpKernel + ExpSimd>(
    la: &[f32],
    sa: &[u32],
    bytes: &[u8],
    offsets: &[half::f16],
    step: f32,
) -> f32 {
    debug_assert!(sa.len() == la.len());
    debug_assert!(offsets.len() == la.len().div_ceil(crate::format::lns4::GROUP));
    match Isa::get() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only detected on CPUs with AVX-512F, AVX2 and FMA.
        Isa::Avx512 => unsafe { super::avx512::log_dot_lns4::<E>(la, sa, bytes, offsets, step) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only detected on CPUs with AVX2 and FMA.
        Isa::Avx2 => unsafe { x86::lns4_avx2::<E>(la, sa, bytes, offsets, step) },
        Isa::Neon => log_dot_lns4_lanes::<E, true>(la, sa, bytes, offsets, step),
        _ => log_dot_lns4_lanes::<E, false>(la, sa, bytes, offsets, step),
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{
        log_dot_lns4_lanes, log_dot_lns8_lanes, log_dot_packed_lanes, ExpKernel, Magnitude,
    };

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn lns4_avx2<E: ExpKernel>(
        la: &[f32],
        sa: &[u32],
        bytes: &[u8],
        offsets: &[half::f16],
        step: f32,
    ) -> f32 {
        log_dot_lns4_lanes::<E, true>(la, sa, bytes, offsets, step)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn lns8_avx2<E: ExpKernel>(
        la: &[f32],
        sa: &[u32],
        codes: &[u8],
        offsets: &[half::f16],
    ) -> f32 {
        log_dot_lns8_lanes::<E, true>(la, sa, codes, offsets)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn packed_avx2<M: Magnitude, E: ExpKernel>(
        la: &[f32],
        sa: &[u32],
        mags: &[M],
        signs: &[u32],
    ) -> f32 {
        log_dot_packed_lanes::<M, E, true>(la, sa, mags, signs)
    }
}
