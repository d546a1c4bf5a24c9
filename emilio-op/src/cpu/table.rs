//! The `table` mode's product (`lns4` weights, T-MAC / LUT-GEMM style): per activation a table
//! of the 16 signed products of every code, then per block of 16 weight rows one lookup
//! (`vpermps`) and one add per 16 products, and one scaling per group of 32.
//!
//! The weight's codes are stored by blocks of [`ROWS`] rows ([`crate::format::lns4`]): for each pair of
//! columns `(2p, 2p+1)`, 16 bytes, byte `r` holding row `r`'s code of column `2p` in its low
//! nibble and of column `2p + 1` in its high one. So 16 bytes give 32 products of 16 outputs
//! with no shuffle, and the same table entry is read by all 16 outputs.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, Layout, Result, Shape};
use half::f16;
use rayon::prelude::*;

use super::exp::{exp_f32, madd};
use super::input::Input;
use super::isa::Isa;
use super::portable::table_block_lanes;
use super::split::{ln_split, MatrixView};
use crate::format::lns4::codes::{groups_per_row, GROUP, TABLE_ROWS as ROWS};
use crate::ExpMode;

/// Table entries per activation: every 4-bit code.
pub(crate) const CODES: usize = 16;

/// An `lns4` weight stored for the table mode.
#[derive(Clone, Copy)]
pub(crate) struct TableWeight<'a> {
    /// `blocks × (8·k_pad)` bytes, `k_pad` = `k` rounded up to whole groups.
    pub bytes: &'a [u8],
    /// `blocks × groups × 16` offsets (block, group, row within the block).
    pub offsets: &'a [f16],
    pub step: f32,
    pub n: usize,
    pub k: usize,
}

/// `x · wᵀ` for activations `x` (`(…, k)`, any layout, `f32`, `f16` or `bf16`) against a
/// table-mode weight.
pub(crate) fn table_forward(
    x: &CpuStorage,
    lx: &Layout,
    w: &TableWeight,
) -> Result<(CpuStorage, Shape)> {
    match x {
        CpuStorage::F32(x) => Ok(table_linear(x, lx, w)),
        CpuStorage::F16(x) => Ok(table_linear(x, lx, w)),
        CpuStorage::BF16(x) => Ok(table_linear(x, lx, w)),
        _ => bail!(
            "a log-domain linear layer in the table mode needs f32, f16 or bf16 activations, got {:?}",
            x.dtype()
        ),
    }
}

/// `x · wᵀ` for activations `x` (`(…, k)`, any layout) against a table-mode weight.
fn table_linear<S: Input<Acc = f32>>(x: &[S], lx: &Layout, w: &TableWeight) -> (CpuStorage, Shape) {
    let view = MatrixView::rows_of(lx);
    let m = view.batch() * view.rows;
    let split = ln_split(ExpMode::Exact, x, &view);
    let (k, n) = (w.k, w.n);
    let k_pad = groups_per_row(k) * GROUP;
    let groups = groups_per_row(k);
    let blocks = n.div_ceil(ROWS);
    // Every row's table, then every (row, group)'s scale exp(offset).
    // Columns past `k` (a partial last group) add -0.0, the additive identity, so that a sum
    // of signed zeros keeps its sign.
    let mut tables = vec![-0.0f32; m * k_pad * CODES];
    tables
        .par_chunks_mut(k_pad * CODES)
        .zip(split.logs.par_chunks(k.max(1)))
        .zip(split.masks.par_chunks(k.max(1)))
        .for_each(|((t, la), sa)| fill_tables(la, sa, w.step, t));
    let scales: Vec<f32> = w
        .offsets
        .par_iter()
        .map(|o| exp_exact(o.to_f32()))
        .collect();
    let mut yt = vec![0f32; blocks * ROWS * m];
    yt.par_chunks_mut(ROWS * m)
        .enumerate()
        .for_each(|(b, out)| {
            let bytes = &w.bytes[b * 8 * k_pad..(b + 1) * 8 * k_pad];
            let scales = &scales[b * groups * ROWS..(b + 1) * groups * ROWS];
            for i in 0..m {
                let t = &tables[i * k_pad * CODES..(i + 1) * k_pad * CODES];
                let y = table_block(t, bytes, scales);
                out[i * ROWS..(i + 1) * ROWS].copy_from_slice(&y);
            }
        });
    let mut y = vec![S::from_acc(0.0); m * n];
    for (b, out) in yt.chunks_exact(ROWS * m).enumerate() {
        for i in 0..m {
            for r in 0..ROWS.min(n - b * ROWS) {
                y[i * n + b * ROWS + r] = S::from_acc(out[i * ROWS + r]);
            }
        }
    }
    let dims = lx.dims();
    let shape = Shape::from(&dims[..dims.len() - 1]).extend(&[n]);
    (S::to_cpu_storage_owned(y), shape)
}

/// The exact `exp` of one value (a group's scale).
fn exp_exact(x: f32) -> f32 {
    exp_f32::<false>(x)
}

/// One activation row's tables: entry `16k + c` is `s(x_k)·s(c)·exp(ln|x_k| + q·step)` for the
/// code `c` (sign bit 3, magnitude `q = c & 7`), and `±0·exp(ln|x_k|)` for `q = 0` (a zero,
/// or NaN against an infinite activation, as IEEE has it). Columns past `k` are left as they
/// are (`-0.0`).
fn fill_tables(la: &[f32], sa: &[u32], step: f32, tables: &mut [f32]) {
    match Isa::get() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only detected on CPUs with AVX-512F, AVX2 and FMA.
        Isa::Avx512 => unsafe { x86::fill_avx512(la, sa, step, tables) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only detected on CPUs with AVX2 and FMA.
        Isa::Avx2 => unsafe { x86::fill_avx2(la, sa, step, tables) },
        Isa::Neon => fill_lanes::<true>(la, sa, step, tables),
        _ => fill_lanes::<false>(la, sa, step, tables),
    }
}

#[inline(always)]
fn fill_lanes<const FMA: bool>(la: &[f32], sa: &[u32], step: f32, tables: &mut [f32]) {
    for ((t, &l), &s) in tables.chunks_exact_mut(CODES).zip(la).zip(sa) {
        let zero = 0.0 * exp_f32::<FMA>(l);
        for (c, e) in t.iter_mut().enumerate() {
            let q = (c & 7) as f32;
            let v = if c & 7 == 0 {
                zero
            } else {
                exp_f32::<FMA>(madd::<FMA>(q, step, l))
            };
            *e = f32::from_bits(v.to_bits() ^ s ^ (((c as u32) & 8) << 28));
        }
    }
}

/// 16 outputs of one block of rows against one activation row's tables.
fn table_block(tables: &[f32], bytes: &[u8], scales: &[f32]) -> [f32; ROWS] {
    match Isa::get() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only detected on CPUs with AVX-512F, AVX2 and FMA.
        Isa::Avx512 => unsafe { super::avx512::table_block(tables, bytes, scales) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only detected on CPUs with AVX2 and FMA.
        Isa::Avx2 => unsafe { x86::block_avx2(tables, bytes, scales) },
        Isa::Neon => table_block_lanes::<true>(tables, bytes, scales),
        _ => table_block_lanes::<false>(tables, bytes, scales),
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{fill_lanes, table_block_lanes, ROWS};

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) fn fill_avx512(la: &[f32], sa: &[u32], step: f32, tables: &mut [f32]) {
        fill_lanes::<true>(la, sa, step, tables)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn fill_avx2(la: &[f32], sa: &[u32], step: f32, tables: &mut [f32]) {
        fill_lanes::<true>(la, sa, step, tables)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn block_avx2(tables: &[f32], bytes: &[u8], scales: &[f32]) -> [f32; ROWS] {
        table_block_lanes::<true>(tables, bytes, scales)
    }
}
