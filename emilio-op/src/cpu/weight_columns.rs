//! A [`LogWeight`](crate::LogWeight)'s rows as kernel columns, widened tile by tile.

use half::f16;

use super::gemm::Columns;
use crate::float::LogFloat;
use crate::packing::{sign_bit, sign_words_per_row};

/// Stored magnitudes, borrowed from the weight's CPU storage (a whole weight, or one row).
#[derive(Clone, Copy)]
pub(crate) enum Magnitudes<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

/// The magnitudes of one weight row.
pub(crate) type RowMagnitudes<'a> = Magnitudes<'a>;

impl<'a> Magnitudes<'a> {
    fn range(self, r: std::ops::Range<usize>) -> Magnitudes<'a> {
        match self {
            Self::F32(m) => Self::F32(&m[r]),
            Self::F16(m) => Self::F16(&m[r]),
        }
    }
}

/// The decode kernel for accumulators without a SIMD build (`f64`): widen as it goes.
pub(crate) fn log_dot_weight_row_scalar<T: LogFloat>(
    la: &[T],
    sa: &[T::Mask],
    mags: RowMagnitudes<'_>,
    signs: &[u32],
) -> T {
    let widen = |i: usize| match mags {
        Magnitudes::F32(m) => T::from_f32(m[i]),
        Magnitudes::F16(m) => T::from_f32(m[i].to_f32()),
    };
    let mut acc = [T::NEG_ZERO; 4];
    for i in 0..la.len() {
        let mask = T::mask_from_bit(sign_bit(signs, i));
        acc[i % 4] = acc[i % 4] + T::signed_exp::<false>(la[i] + widen(i), sa[i] ^ mask);
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3])
}

/// Weight rows read as columns of the right-hand operand: each task widens its tile's
/// magnitudes to `T` and unpacks its sign bits to masks once, then reuses them for every
/// activation row.
pub(crate) struct WeightColumns<'a> {
    pub magnitudes: Magnitudes<'a>,
    pub signs: &'a [u32],
    pub k: usize,
}

pub(crate) struct TileScratch<T: LogFloat> {
    logs: Vec<T>,
    masks: Vec<T::Mask>,
}

impl<T: LogFloat> Default for TileScratch<T> {
    fn default() -> Self {
        Self {
            logs: Vec::new(),
            masks: Vec::new(),
        }
    }
}

impl<T: LogFloat> Columns<T> for WeightColumns<'_> {
    type Scratch = TileScratch<T>;

    fn tile<'s>(
        &'s self,
        _b: usize,
        j0: usize,
        j1: usize,
        scratch: &'s mut TileScratch<T>,
    ) -> (&'s [T], &'s [T::Mask]) {
        let k = self.k;
        let len = (j1 - j0) * k;
        scratch.logs.resize(len, T::NEG_ZERO);
        scratch.masks.resize(len, T::Mask::default());
        let range = j0 * k..j1 * k;
        match self.magnitudes {
            Magnitudes::F32(m) => T::convert_f32(&m[range], &mut scratch.logs),
            Magnitudes::F16(m) => T::convert_f16(&m[range], &mut scratch.logs),
        }
        let words = sign_words_per_row(k);
        for (j, masks) in scratch.masks.chunks_exact_mut(k.max(1)).enumerate() {
            let row = &self.signs[(j0 + j) * words..(j0 + j + 1) * words];
            for (c, mask) in masks.iter_mut().enumerate() {
                *mask = T::mask_from_bit(sign_bit(row, c));
            }
        }
        (&scratch.logs, &scratch.masks)
    }

    fn dot_direct(&self, _b: usize, j: usize, la: &[T], sa: &[T::Mask]) -> T {
        let (k, words) = (self.k, sign_words_per_row(self.k));
        T::log_dot_weight_row(
            la,
            sa,
            self.magnitudes.range(j * k..(j + 1) * k),
            &self.signs[j * words..(j + 1) * words],
        )
    }
}
