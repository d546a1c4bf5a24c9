//! A [`LogWeight`](crate::LogWeight)'s rows as kernel columns, widened tile by tile.

use super::dot::LogDot;
use super::gemm::Columns;
use super::magnitude::Magnitudes;
use crate::lns::{
    decode_log, decode_log4, groups_per_row, lns4_bytes_per_row, lns4_code, LNS4_GROUP, LNS8_GROUP,
};
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
        match self.magnitudes.rows(j0, j1, k) {
            Magnitudes::F32(m) => T::convert_f32(m, &mut scratch.logs),
            Magnitudes::F16(m) => T::convert_f16(m, &mut scratch.logs),
            Magnitudes::Lns8 { codes, offsets } => {
                // The sign is in each code: logs and masks both come from it.
                let g = groups_per_row(k);
                let rows = scratch.logs.chunks_exact_mut(k.max(1));
                let mask_rows = scratch.masks.chunks_exact_mut(k.max(1));
                for (j, (logs, masks)) in rows.zip(mask_rows).enumerate() {
                    let codes = &codes[j * k..(j + 1) * k];
                    let offsets = &offsets[j * g..(j + 1) * g];
                    let groups = codes.chunks(LNS8_GROUP).zip(offsets).zip(
                        logs.chunks_mut(LNS8_GROUP)
                            .zip(masks.chunks_mut(LNS8_GROUP)),
                    );
                    for ((codes, offset), (logs, masks)) in groups {
                        let offset = offset.to_f32();
                        for ((&c, l), m) in codes.iter().zip(logs).zip(masks) {
                            *l = T::from_f32(decode_log(c, offset));
                            *m = T::mask_from_bit(u32::from(c >> 7));
                        }
                    }
                }
                return (&scratch.logs, &scratch.masks);
            }
            Magnitudes::Lns4 {
                bytes,
                offsets,
                step,
            } => {
                let (g, b) = (groups_per_row(k), lns4_bytes_per_row(k));
                let rows = scratch.logs.chunks_exact_mut(k.max(1));
                let mask_rows = scratch.masks.chunks_exact_mut(k.max(1));
                for (j, (logs, masks)) in rows.zip(mask_rows).enumerate() {
                    let bytes = &bytes[j * b..(j + 1) * b];
                    let offsets = &offsets[j * g..(j + 1) * g];
                    for (i, (l, m)) in logs.iter_mut().zip(masks.iter_mut()).enumerate() {
                        let c = lns4_code(bytes, i);
                        let offset = offsets[i / LNS4_GROUP].to_f32();
                        *l = T::from_f32(decode_log4(c, offset, step));
                        *m = T::mask_from_bit(u32::from(c >> 3));
                    }
                }
                return (&scratch.logs, &scratch.masks);
            }
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
            self.magnitudes.rows(j, j + 1, k),
            self.signs.get(j * words..(j + 1) * words).unwrap_or(&[]),
        )
    }
}
