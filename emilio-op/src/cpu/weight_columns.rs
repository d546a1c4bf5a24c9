//! A [`LogWeight`](crate::LogWeight)'s rows as kernel columns, widened tile by tile, and the
//! product of activations with them ([`weight_linear`]): every stored form but the table
//! mode's runs through it.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, Layout, Result, Shape};

use super::dot::LogDot;
use super::gemm::{log_gemm, Columns};
use super::input::Input;
use super::magnitude::Magnitudes;
use super::split::{ln_split, MatrixView};
use crate::format::lns4::codes as lns4;
use crate::format::lns8::codes as lns8;
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
                let g = lns8::groups_per_row(k);
                let rows = scratch.logs.chunks_exact_mut(k.max(1));
                let mask_rows = scratch.masks.chunks_exact_mut(k.max(1));
                for (j, (logs, masks)) in rows.zip(mask_rows).enumerate() {
                    let codes = &codes[j * k..(j + 1) * k];
                    let offsets = &offsets[j * g..(j + 1) * g];
                    let groups = codes.chunks(lns8::GROUP).zip(offsets).zip(
                        logs.chunks_mut(lns8::GROUP)
                            .zip(masks.chunks_mut(lns8::GROUP)),
                    );
                    for ((codes, offset), (logs, masks)) in groups {
                        let offset = offset.to_f32();
                        for ((&c, l), m) in codes.iter().zip(logs).zip(masks) {
                            *l = T::from_f32(lns8::decode_log(c, offset));
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
                let (g, b) = (lns4::groups_per_row(k), lns4::bytes_per_row(k));
                let rows = scratch.logs.chunks_exact_mut(k.max(1));
                let mask_rows = scratch.masks.chunks_exact_mut(k.max(1));
                for (j, (logs, masks)) in rows.zip(mask_rows).enumerate() {
                    let bytes = &bytes[j * b..(j + 1) * b];
                    let offsets = &offsets[j * g..(j + 1) * g];
                    for (i, (l, m)) in logs.iter_mut().zip(masks.iter_mut()).enumerate() {
                        let c = lns4::code_at(bytes, i);
                        let offset = offsets[i / lns4::GROUP].to_f32();
                        *l = T::from_f32(lns4::decode_log(c, offset, step));
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

/// `x · wᵀ` for activations `x` (`(…, k)`, any layout, any float dtype) against the weight rows
/// `cols` (`n` of them), with the `exp` of `mode`.
pub(crate) fn weight_linear(
    mode: ExpMode,
    x: &CpuStorage,
    lx: &Layout,
    n: usize,
    cols: &WeightColumns,
) -> Result<(CpuStorage, Shape)> {
    match x {
        CpuStorage::F32(x) => Ok(linear(mode, x, lx, n, cols)),
        CpuStorage::F64(x) if mode == ExpMode::Exact => Ok(linear(mode, x, lx, n, cols)),
        CpuStorage::F16(x) => Ok(linear(mode, x, lx, n, cols)),
        CpuStorage::BF16(x) => Ok(linear(mode, x, lx, n, cols)),
        CpuStorage::F64(_) => bail!(
            "a log-domain linear layer: the {mode} exp mode has no f64 kernel; use the exact mode"
        ),
        _ => bail!(
            "a log-domain linear layer needs float activations (f32, f64, f16, bf16), got {:?}",
            x.dtype()
        ),
    }
}

fn linear<S: Input>(
    mode: ExpMode,
    x: &[S],
    lx: &Layout,
    n: usize,
    cols: &WeightColumns,
) -> (CpuStorage, Shape) {
    let view = MatrixView::rows_of(lx);
    let rows = view.batch() * view.rows;
    let split = ln_split(mode, x, &view);
    let y = log_gemm(mode, 1, (rows, n, cols.k), &split, cols);
    let y: Vec<S> = y.into_iter().map(S::from_acc).collect();
    let dims = lx.dims();
    let shape = Shape::from(&dims[..dims.len() - 1]).extend(&[n]);
    (S::to_cpu_storage_owned(y), shape)
}
