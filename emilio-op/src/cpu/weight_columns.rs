//! A [`LogWeight`](crate::LogWeight)'s rows as kernel columns, widened tile by tile.

use super::dot::LogDot;
use super::gemm::Columns;
use super::magnitude::Magnitudes;
use crate::packing::{sign_bit, sign_words_per_row};
use crate::ExpMode;

/// Weight rows read as columns of the right-hand operand: each task widens its tile's
/// magnitudes to `T` and unpacks its sign bits to masks once, then reuses them for every
/// activation row.
pub(crate) struct WeightColumns<'a> {
    pub magnitudes: Magnitudes<'a>,
    pub signs: &'a [u32],
    pub k: usize,
}

pub(crate) struct TileScratch<T: LogDot> {
    logs: Vec<T>,
    masks: Vec<T::Mask>,
}

impl<T: LogDot> Default for TileScratch<T> {
    fn default() -> Self {
        Self {
            logs: Vec::new(),
            masks: Vec::new(),
        }
    }
}

impl<T: LogDot> Columns<T> for WeightColumns<'_> {
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

    fn dot_direct(&self, mode: ExpMode, _b: usize, j: usize, la: &[T], sa: &[T::Mask]) -> T {
        let (k, words) = (self.k, sign_words_per_row(self.k));
        T::log_dot_weight_row(
            mode,
            la,
            sa,
            self.magnitudes.range(j * k..(j + 1) * k),
            &self.signs[j * words..(j + 1) * words],
        )
    }
}
