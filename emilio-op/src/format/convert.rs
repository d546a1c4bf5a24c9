//! The conversion driver every format's encoder runs: the plain weight read a block of rows at
//! a time, rows spread over threads.

use candle_core::{DType, Device, Result, Tensor};
use rayon::prelude::*;

use crate::OpError;

/// Rows converted per block: bounds the plain copy alive at once (a 151936-row LM head is
/// converted 4 Mi weights at a time instead of all at once).
const CONVERT_BLOCK_ELEMS: usize = 1 << 22;

/// Converts the `(out, in)` weight `w` into the format named `format`, a block of rows at a time:
/// `fill(row, mags, side)` writes one row's stored magnitudes (`mags_per_row` of them) and its
/// side data (`side_per_row` of them: packed sign words, or lns group offsets), or returns the
/// column of a weight the format cannot store.
pub(crate) fn convert_rows<M: Copy + Send, S: Copy + Send>(
    format: &'static str,
    w: &Tensor,
    mags: &mut [M],
    mags_per_row: usize,
    side: &mut [S],
    side_per_row: usize,
    fill: impl Fn(&[f64], &mut [M], &mut [S]) -> std::result::Result<(), usize> + Sync,
) -> Result<()> {
    let fill = |_: &mut (), row: &[f64], mags: &mut [M], side: &mut [S]| fill(row, mags, side);
    convert_rows_with(
        format,
        w,
        (mags, mags_per_row),
        (side, side_per_row),
        || (),
        fill,
    )
}

/// [`convert_rows`] with a state per worker: `init` makes one for each run of rows a thread
/// converts, and `fill` gets it with every row, so that an encoder can keep what it computed
/// for one row (lns4: the code values of each group offset it met) for the next ones.
pub(crate) fn convert_rows_with<M: Copy + Send, S: Copy + Send, T>(
    format: &'static str,
    w: &Tensor,
    (mags, mags_per_row): (&mut [M], usize),
    (side, side_per_row): (&mut [S], usize),
    init: impl Fn() -> T + Sync + Send,
    fill: impl Fn(&mut T, &[f64], &mut [M], &mut [S]) -> std::result::Result<(), usize> + Sync,
) -> Result<()> {
    let (out_dim, in_dim) = w.dims2()?;
    if out_dim == 0 || in_dim == 0 {
        return Ok(());
    }
    let block_rows = (CONVERT_BLOCK_ELEMS / in_dim).max(1);
    for r0 in (0..out_dim).step_by(block_rows) {
        let rows = block_rows.min(out_dim - r0);
        let values = plain_rows(w, r0, rows)?;
        let mags = &mut mags[r0 * mags_per_row..(r0 + rows) * mags_per_row];
        let side = &mut side[r0 * side_per_row..(r0 + rows) * side_per_row];
        let bad = values
            .par_chunks(in_dim)
            .zip(mags.par_chunks_mut(mags_per_row.max(1)))
            .zip(side.par_chunks_mut(side_per_row.max(1)))
            .enumerate()
            .try_for_each_init(&init, |state, (r, ((row, mags), side))| {
                fill(state, row, mags, side).map_err(|c| (r0 + r, c, row[c]))
            });
        if let Err((row, col, value)) = bad {
            return Err(OpError::Unstorable {
                format,
                row,
                col,
                value,
            }
            .into());
        }
    }
    Ok(())
}

/// Rows `r0..r0 + rows` of `w` as `f64` values on the CPU: f64 weights keep their precision,
/// every narrower float widens to f32 exactly first.
pub(crate) fn plain_rows(w: &Tensor, r0: usize, rows: usize) -> Result<Vec<f64>> {
    let block = w.narrow(0, r0, rows)?.to_device(&Device::Cpu)?;
    Ok(if block.dtype() == DType::F64 {
        block.flatten_all()?.to_vec1::<f64>()?
    } else {
        let v = block
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        v.into_iter().map(f64::from).collect()
    })
}
