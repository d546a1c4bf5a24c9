//! `ln_split`: activations → (ln|x|, sign mask), once per call, in the order the kernels read.
//!
//! This pass is also where layouts are resolved: it walks the operand through its strides
//! (transposed, narrowed, broadcast with stride 0) and writes a dense buffer whose rows run along
//! the reduction dimension `k`, so the kernels only ever see contiguous `k`-runs.

use candle_core::Layout;
use rayon::prelude::*;

use super::float::LogFloat;
use super::input::Input;
use crate::ExpMode;

/// Below this many elements the split runs on the calling thread: spawning costs more.
const PARALLEL_SPLIT_MIN: usize = 1 << 15;

/// A batch of matrices read through a [`Layout`]: the last two dims are rows and columns, every
/// leading dim is a batch dim.
#[derive(Debug, Clone)]
pub(crate) struct MatrixView {
    /// Storage offset of each batch's `[0, 0]` element.
    pub batch_offsets: Vec<usize>,
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl MatrixView {
    /// The caller guarantees `layout` has rank ≥ 2.
    pub fn new(layout: &Layout) -> Self {
        let dims = layout.dims();
        let stride = layout.stride();
        let rank = dims.len();
        debug_assert!(rank >= 2);
        let batch_dims = &dims[..rank - 2];
        let batch_strides = &stride[..rank - 2];
        let batch: usize = batch_dims.iter().product();
        let mut batch_offsets = Vec::with_capacity(batch);
        let mut index = vec![0usize; batch_dims.len()];
        for _ in 0..batch {
            let off: usize = index.iter().zip(batch_strides).map(|(i, s)| i * s).sum();
            batch_offsets.push(layout.start_offset() + off);
            // Odometer increment over the batch dims, last dim fastest.
            for d in (0..index.len()).rev() {
                index[d] += 1;
                if index[d] < batch_dims[d] {
                    break;
                }
                index[d] = 0;
            }
        }
        Self {
            batch_offsets,
            rows: dims[rank - 2],
            cols: dims[rank - 1],
            row_stride: stride[rank - 2],
            col_stride: stride[rank - 1],
        }
    }

    /// A tensor of shape `(…, k)` read as rows of `k`: every leading dim is a row, and a rank-1
    /// tensor is one row. The caller guarantees rank ≥ 1.
    pub fn rows_of(layout: &Layout) -> Self {
        if layout.dims().len() >= 2 {
            return Self::new(layout);
        }
        Self {
            batch_offsets: vec![layout.start_offset()],
            rows: 1,
            cols: layout.dims()[0],
            row_stride: 0,
            col_stride: layout.stride()[0],
        }
    }

    /// The same matrices with rows and columns swapped (no data moves).
    pub fn transposed(&self) -> Self {
        Self {
            batch_offsets: self.batch_offsets.clone(),
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    pub fn batch(&self) -> usize {
        self.batch_offsets.len()
    }
}

/// Activation logs in `[batch][row][k]` order, plus one sign mask per element.
pub(crate) struct SplitOperand<T: LogFloat> {
    pub logs: Vec<T>,
    pub masks: Vec<T::Mask>,
}

/// Splits every matrix of `view` (rows × k) into logs and sign masks, row-major; the logs are
/// the ones `mode` multiplies with (see [`Input::split_run`]).
pub(crate) fn ln_split<S: Input>(
    mode: ExpMode,
    src: &[S],
    view: &MatrixView,
) -> SplitOperand<S::Acc> {
    let (rows, k) = (view.rows, view.cols);
    let total = view.batch() * rows * k;
    let mut logs = vec![S::Acc::NEG_ZERO; total];
    let mut masks = vec![<S::Acc as LogFloat>::Mask::default(); total];
    if k == 0 {
        return SplitOperand { logs, masks };
    }
    // `gather` is a per-thread buffer for strided rows (a transposed operand, e.g. V in P·V):
    // they are gathered into it, then split as one run, with no allocation per row.
    let split_row = |gather: &mut Vec<S>,
                     r: usize,
                     logs: &mut [S::Acc],
                     masks: &mut [<S::Acc as LogFloat>::Mask]| {
        let (b, i) = (r / rows, r % rows);
        let base = view.batch_offsets[b] + i * view.row_stride;
        if view.col_stride == 1 {
            S::split_run(mode, &src[base..base + k], logs, masks);
        } else {
            gather.clear();
            gather.extend((0..k).map(|c| src[base + c * view.col_stride]));
            S::split_run(mode, gather, logs, masks);
        }
    };
    if total >= PARALLEL_SPLIT_MIN {
        logs.par_chunks_mut(k)
            .zip(masks.par_chunks_mut(k))
            .enumerate()
            .for_each_init(Vec::new, |gather, (r, (l, m))| split_row(gather, r, l, m));
    } else {
        let mut gather = Vec::new();
        logs.chunks_mut(k)
            .zip(masks.chunks_mut(k))
            .enumerate()
            .for_each(|(r, (l, m))| split_row(&mut gather, r, l, m));
    }
    SplitOperand { logs, masks }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Shape;

    #[test]
    fn view_walks_transposed_and_broadcast_layouts() {
        // A (2, 3) matrix transposed to (3, 2), then broadcast over a batch of 2.
        let base = Layout::contiguous(Shape::from((2, 3)));
        let t = base.transpose(0, 1).unwrap();
        let b = t.broadcast_as((2, 3, 2)).unwrap();
        let view = MatrixView::new(&b);
        assert_eq!(view.batch_offsets, vec![0, 0]);
        assert_eq!((view.rows, view.cols), (3, 2));
        let src: Vec<f32> = vec![1.0, -2.0, 4.0, 0.5, -0.0, 8.0];
        let split = ln_split(ExpMode::Exact, &src, &view);
        // Row i of the transposed view is column i of the original.
        let expect = [1.0f32, 0.5, -2.0, -0.0, 4.0, 8.0];
        for (n, &e) in expect.iter().cycle().take(12).enumerate() {
            assert_eq!(split.logs[n], e.abs().ln(), "element {n}");
            assert_eq!(split.masks[n], e.to_bits() & 0x8000_0000, "element {n}");
        }
    }
}
