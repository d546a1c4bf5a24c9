//! The two accumulation types of the op (`f32`, `f64`) behind one small trait: the bottom
//! layer of the CPU path, numbers only (the kernels that sum them are [`super::dot`]'s).
//!
//! A signed product is carried as a log magnitude `l = ln|x|` plus a sign *mask*: an integer of
//! the float's width holding only the sign bit. The product of two such numbers is
//! `exp(la + lb)` with the mask `sa ^ sb` XOR-ed onto its bits. `exp` never returns a negative
//! number, so the XOR sets the sign exactly as a multiply would, including on zeros
//! (`-0.0 · 3 = -0.0`), without a multiply.

use std::ops::{Add, BitXor};

use super::exp_kernel::ExpKernel;

/// A float type the op accumulates in: `f32` (for f32, f16 and bf16 inputs) or `f64`.
pub(crate) trait LogFloat:
    Copy + Send + Sync + Add<Output = Self> + PartialEq + std::fmt::Debug + 'static
{
    /// Same-width integer holding the sign bit.
    type Mask: Copy + Send + Sync + BitXor<Output = Self::Mask> + Default + 'static;

    /// The additive identity of IEEE arithmetic: `-0.0 + x == x` for every `x`, signed zeros
    /// included, so a sum that starts here equals the plain sum of its terms.
    const NEG_ZERO: Self;

    /// `(ln|x|, sign mask of x)`.
    fn ln_split(self) -> (Self, Self::Mask);

    /// `s · exp(l)` where `s` is the sign carried by `mask`, with the `exp` of `E` (`f64` has
    /// only the exact one: the op refuses other modes for `f64` before any kernel runs). `FMA`
    /// may only be `true` in code compiled with fused multiply-add available (see
    /// [`super::isa`]).
    fn signed_exp<E: ExpKernel, const FMA: bool>(l: Self, mask: Self::Mask) -> Self;

    /// Widens one stored `f32` magnitude.
    fn from_f32(v: f32) -> Self;

    /// The sign mask for bit `bit` (0 or 1) of a packed sign word.
    fn mask_from_bit(bit: u32) -> Self::Mask;

    /// Widens a run of f16 log magnitudes (F16C on x86 where the CPU has it).
    fn convert_f16(src: &[half::f16], dst: &mut [Self]);

    /// Widens (or copies) a run of f32 log magnitudes.
    fn convert_f32(src: &[f32], dst: &mut [Self]);
}

impl LogFloat for f32 {
    type Mask = u32;
    const NEG_ZERO: Self = -0.0;

    #[inline(always)]
    fn ln_split(self) -> (Self, u32) {
        (self.abs().ln(), self.to_bits() & 0x8000_0000)
    }

    #[inline(always)]
    fn signed_exp<E: ExpKernel, const FMA: bool>(l: Self, mask: u32) -> Self {
        f32::from_bits(E::exp::<FMA>(l).to_bits() ^ mask)
    }

    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }

    #[inline(always)]
    fn mask_from_bit(bit: u32) -> u32 {
        bit << 31
    }

    fn convert_f16(src: &[half::f16], dst: &mut [Self]) {
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(dst);
    }

    fn convert_f32(src: &[f32], dst: &mut [Self]) {
        dst.copy_from_slice(src);
    }
}

impl LogFloat for f64 {
    type Mask = u64;
    const NEG_ZERO: Self = -0.0;

    #[inline(always)]
    fn ln_split(self) -> (Self, u64) {
        (self.abs().ln(), self.to_bits() & 0x8000_0000_0000_0000)
    }

    /// The f64 path is the high-precision reference path: libm's exp, no vectorisation.
    #[inline(always)]
    fn signed_exp<E: ExpKernel, const FMA: bool>(l: Self, mask: u64) -> Self {
        debug_assert!(E::EXACT, "f64 products have only the exact exp");
        f64::from_bits(l.exp().to_bits() ^ mask)
    }

    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v as f64
    }

    #[inline(always)]
    fn mask_from_bit(bit: u32) -> u64 {
        (bit as u64) << 63
    }

    fn convert_f16(src: &[half::f16], dst: &mut [Self]) {
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f64_slice(dst);
    }

    fn convert_f32(src: &[f32], dst: &mut [Self]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = s as f64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::exp_kernel::Exact;

    #[test]
    fn signed_exp_reproduces_ieee_products_of_specials() {
        let values = [
            0.0f32,
            -0.0,
            1.0,
            -2.5,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1e-40,
            -3e38,
        ];
        for &a in &values {
            for &b in &values {
                let (la, sa) = a.ln_split();
                let (lb, sb) = b.ln_split();
                let got = f32::signed_exp::<Exact, false>(la + lb, sa ^ sb);
                let want = ((a as f64) * (b as f64)) as f32;
                if want.is_nan() {
                    assert!(got.is_nan(), "{a}·{b}: want NaN, got {got}");
                } else if want == 0.0 || want.is_infinite() {
                    assert_eq!(got.to_bits(), want.to_bits(), "{a}·{b}");
                } else {
                    let rel = ((got as f64 - want as f64) / want as f64).abs();
                    assert!(rel < 1e-5, "{a}·{b}: want {want}, got {got}");
                }
            }
        }
    }
}
