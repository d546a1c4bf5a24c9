//! The parallel driver: tiles of output columns spread over rayon's pool.
//!
//! Work is split over output columns (`docs/architecture.md`, "Kernel families"): for a linear
//! layer a column is one weight row, so each weight byte is read by exactly one task, once per
//! call, whatever the number of activation rows. Each task writes a contiguous block of the column-major result `Cᵀ`, which
//! is transposed into `C` at the end (free when there is one row, as in decode).

use rayon::prelude::*;

use super::dot::LogDot;
use super::split::SplitOperand;
use crate::ExpMode;

/// Widest column tile: a wider one only costs load balance.
const MAX_TILE: usize = 64;
/// Aim for this many tiles per thread so that uneven tasks even out.
const TILES_PER_THREAD: usize = 8;
/// Activation rows taken together against one column tile, sized so their logs stay in L2.
const ROW_BLOCK: usize = 16;
/// Up to this many rows (decode, small batches) columns are read as stored, not widened into a
/// tile first: a tile costs a pass over the weight that only pays when reused by many rows.
const DIRECT_MAX_ROWS: usize = 4;

/// The right-hand operand as the kernels read it: columns as contiguous `k`-runs of logs and
/// sign masks, possibly produced on the fly (f16 weights widened, packed sign bits unpacked).
pub(crate) trait Columns<T: LogDot>: Sync {
    /// Per-task buffers for columns that must be materialised.
    type Scratch: Default + Send;

    /// Logs and masks of columns `j0..j1` of batch `b`, column after column.
    fn tile<'a>(
        &'a self,
        b: usize,
        j0: usize,
        j1: usize,
        scratch: &'a mut Self::Scratch,
    ) -> (&'a [T], &'a [T::Mask]);

    /// Output column `j` of batch `b` for one activation row, reading B as stored: for a few
    /// rows this beats materialising a tile that would be used only once or twice.
    fn dot_direct(&self, mode: ExpMode, b: usize, j: usize, la: &[T], sa: &[T::Mask]) -> T;
}

/// Split activations as columns: `[batch][n][k]`, or one shared batch when broadcast.
pub(crate) struct SplitColumns<T: LogDot> {
    pub split: SplitOperand<T>,
    pub n: usize,
    pub k: usize,
    /// `true` when every batch reads the same matrix (a broadcast operand split once).
    pub shared: bool,
}

impl<T: LogDot> Columns<T> for SplitColumns<T> {
    type Scratch = ();

    fn tile<'a>(
        &'a self,
        b: usize,
        j0: usize,
        j1: usize,
        _: &'a mut (),
    ) -> (&'a [T], &'a [T::Mask]) {
        let b = if self.shared { 0 } else { b };
        let range = (b * self.n + j0) * self.k..(b * self.n + j1) * self.k;
        (&self.split.logs[range.clone()], &self.split.masks[range])
    }

    fn dot_direct(&self, mode: ExpMode, b: usize, j: usize, la: &[T], sa: &[T::Mask]) -> T {
        let mut no_scratch = ();
        let (lb, sb) = self.tile(b, j, j + 1, &mut no_scratch);
        T::log_dot(mode, la, sa, lb, sb)
    }
}

/// `C[b] = A[b] ⊗ B[b]` for `batch` products of `(m × k)` by `(k × n)`, with `a` split row-major
/// and `cols` giving B's columns, each product's `exp` that of `mode`. Returns `C` row-major,
/// `[batch][m][n]`.
pub(crate) fn log_gemm<T: LogDot, C: Columns<T>>(
    mode: ExpMode,
    batch: usize,
    (m, n, k): (usize, usize, usize),
    a: &SplitOperand<T>,
    cols: &C,
) -> Vec<T> {
    let mut ct = vec![T::NEG_ZERO; batch * m * n];
    if ct.is_empty() {
        return ct;
    }
    let threads = rayon::current_num_threads().max(1);
    let tile = (batch * n)
        .div_ceil(threads * TILES_PER_THREAD)
        .clamp(1, MAX_TILE);
    ct.par_chunks_mut(n * m).enumerate().for_each(|(b, ct_b)| {
        let a_logs = &a.logs[b * m * k..(b + 1) * m * k];
        let a_masks = &a.masks[b * m * k..(b + 1) * m * k];
        ct_b.par_chunks_mut(tile * m).enumerate().for_each_init(
            C::Scratch::default,
            |scratch, (t, ct_tile)| {
                let j0 = t * tile;
                let j1 = (j0 + tile).min(n);
                if m <= DIRECT_MAX_ROWS {
                    for j in 0..j1 - j0 {
                        for i in 0..m {
                            let la = &a_logs[i * k..(i + 1) * k];
                            let sa = &a_masks[i * k..(i + 1) * k];
                            ct_tile[j * m + i] = cols.dot_direct(mode, b, j0 + j, la, sa);
                        }
                    }
                    return;
                }
                let (b_logs, b_masks) = cols.tile(b, j0, j1, scratch);
                for i0 in (0..m).step_by(ROW_BLOCK) {
                    let i1 = (i0 + ROW_BLOCK).min(m);
                    for j in 0..j1 - j0 {
                        let lb = &b_logs[j * k..(j + 1) * k];
                        let sb = &b_masks[j * k..(j + 1) * k];
                        for i in i0..i1 {
                            let la = &a_logs[i * k..(i + 1) * k];
                            let sa = &a_masks[i * k..(i + 1) * k];
                            ct_tile[j * m + i] = T::log_dot(mode, la, sa, lb, sb);
                        }
                    }
                }
            },
        );
    });
    if m == 1 {
        return ct;
    }
    let mut c = vec![T::NEG_ZERO; batch * m * n];
    c.par_chunks_mut(m * n)
        .zip(ct.par_chunks(m * n))
        .for_each(|(c_b, ct_b)| {
            for (j, col) in ct_b.chunks_exact(m).enumerate() {
                for (i, &v) in col.iter().enumerate() {
                    c_b[i * n + j] = v;
                }
            }
        });
    c
}
