//! A weight's stored magnitudes as the CPU kernels borrow them, one variant per stored form
//! ([`crate::format`]: `f32`/`f16` logs, `lns8` and `lns4` codes), and the widening of `f16`
//! logs to `f32`.
//!
//! The kernels read a weight in its stored form and widen or decode it in registers.

use half::f16;

use crate::format::lns4::codes as lns4;
use crate::format::lns8::codes as lns8;

/// Stored magnitudes, borrowed from the weight's CPU storage (a whole weight, or some rows).
#[derive(Clone, Copy)]
pub(crate) enum Magnitudes<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    /// `lns8` codes (sign in bit 7) and one offset per group of each row ([`crate::format::lns8`]).
    Lns8 {
        codes: &'a [u8],
        offsets: &'a [f16],
    },
    /// `lns4` bytes (two codes each, by groups of 32), offsets, and the tensor's step.
    Lns4 {
        bytes: &'a [u8],
        offsets: &'a [f16],
        step: f32,
    },
}

impl<'a> Magnitudes<'a> {
    /// Rows `j0..j1` of a weight with rows of `k`.
    pub(crate) fn rows(self, j0: usize, j1: usize, k: usize) -> Magnitudes<'a> {
        match self {
            Self::F32(m) => Self::F32(&m[j0 * k..j1 * k]),
            Self::F16(m) => Self::F16(&m[j0 * k..j1 * k]),
            Self::Lns8 { codes, offsets } => {
                let g = lns8::groups_per_row(k);
                Self::Lns8 {
                    codes: &codes[j0 * k..j1 * k],
                    offsets: &offsets[j0 * g..j1 * g],
                }
            }
            Self::Lns4 {
                bytes,
                offsets,
                step,
            } => {
                let (g, b) = (lns4::groups_per_row(k), lns4::bytes_per_row(k));
                Self::Lns4 {
                    bytes: &bytes[j0 * b..j1 * b],
                    offsets: &offsets[j0 * g..j1 * g],
                    step,
                }
            }
        }
    }
}

/// A stored log magnitude the kernel widens to `f32` in registers.
pub(crate) trait Magnitude: Copy + Send + Sync + 'static {
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
