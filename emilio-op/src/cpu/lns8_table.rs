//! The `table` mode's product for `lns8` weights: no `exp` per product.
//!
//! An `lns8` code's magnitude `q = 16e + r` (a step of 1/16 octave) splits the product as
//!
//! `x·w = (x·2^(r/16)) · 2^e · exp(offset)`.
//!
//! Per activation `x_k` the 16 values `T[r] = x_k·2^(r/16)` (one multiply of a broadcast `x_k`
//! by a constant vector, each correctly rounded) and their negations make a 32-entry table that
//! every output shares; a product is then one lookup (`vpermt2ps` of 16 rows' codes at once:
//! the code's low five bits are `r` and the weight's sign), one integer add of `e << 23` into
//! the float's exponent field (exact: the power of two is applied without rounding) and an add
//! into the group's sum; each group of 32 is scaled once by `exp(offset)`, an exact `exp` per
//! output and group. The weight's codes are stored by blocks of 16 rows for it
//! ([`crate::format::lns8`]), so one 16-byte load gives one column of 16 outputs.
//!
//! **Error per product** against the f64 value of the code, `x·exp(q·STEP + offset)`: the
//! rounding of `2^(r/16)` and of `x·2^(r/16)` (2⁻²⁴ each), the scale's `exp` (≤ 2 ulp) and its
//! multiply (2⁻²⁴), and `q·(STEP − ln 2/16)` (≤ 1.6·10⁻⁸, the `f32` rounding of the step the
//! code is defined with): within `4·2⁻²³`, under the table mode's stated `6·2⁻²³`.
//!
//! **The edges.** The exponent add is exact only for a normal table entry whose product stays
//! below `f32::MAX`, so an activation row is computed this way only when each of its values
//! is zero or has `2⁻¹²⁶ ≤ |x| < 2¹²⁰` (every activation a model produces). Zero activations are
//! skipped (their products are zeros) and zero codes are masked out of the sums; an output
//! that comes out `±0` is recomputed in `f64` so its sign is IEEE's, and a row holding an
//! infinity, a NaN, a subnormal or a value past `2¹²⁰` is computed in `f64` throughout (the
//! weight as stored times the activation, each product exact, summed, rounded once): there the
//! specials and the overflow of each product are the true product's. Every step is the same on every ISA
//! (no fused multiply-add anywhere), so AVX-512, AVX2 and the portable code agree bit for bit.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, Layout, Result, Shape, WithDType};
use half::f16;
use rayon::prelude::*;

use super::exp::exp_f32;
use super::isa::Isa;
use super::magnitude::Magnitude;
use super::split::MatrixView;
use crate::format::lns8::codes::{decode_value, groups_per_row, GROUP, TABLE_ROWS as ROWS};

/// Blocks of 16 rows one task computes: the table entry of a column is built once per task
/// and read by all of them.
const TILE_BLOCKS: usize = 8;

/// `2^(r/16)` for `r` in `0..16`, rounded to `f32`.
fn powers() -> [f32; 16] {
    std::array::from_fn(|r| (r as f64 / 16.0).exp2() as f32)
}

/// An `lns8` weight stored for the table mode.
#[derive(Clone, Copy)]
pub(crate) struct Lns8TableWeight<'a> {
    /// `blocks × k_pad × 16` table bytes (`crate::format::lns8::codes::table_byte`).
    pub codes: &'a [u8],
    /// `blocks × groups × 16` offsets (block, group, row within the block).
    pub offsets: &'a [f16],
    pub n: usize,
    pub k: usize,
}

impl Lns8TableWeight<'_> {
    fn k_pad(&self) -> usize {
        groups_per_row(self.k) * GROUP
    }

    /// Weight `(j, i)` as stored: the code's value rounded to `f32`, as
    /// [`LogWeight::dequantize`](crate::LogWeight::dequantize) gives it.
    fn value(&self, j: usize, i: usize) -> f32 {
        let groups = groups_per_row(self.k);
        let (b, r) = (j / ROWS, j % ROWS);
        let code = crate::format::lns8::codes::table_code(self.codes, self.k, j, i);
        decode_value(code, self.offsets[(b * groups + i / GROUP) * ROWS + r]) as f32
    }
}

/// `x · wᵀ` for activations `x` (`(…, k)`, any layout; `f32`, `f16` or `bf16`) against an
/// `lns8` weight stored for the table mode.
pub(crate) fn lns8_table_forward(
    x: &CpuStorage,
    lx: &Layout,
    w: &Lns8TableWeight,
) -> Result<(CpuStorage, Shape)> {
    match x {
        CpuStorage::F32(x) => Ok(linear(x, lx, w)),
        CpuStorage::F16(x) => Ok(linear(x, lx, w)),
        CpuStorage::BF16(x) => Ok(linear(x, lx, w)),
        _ => bail!(
            "a log-domain linear layer in the table mode needs f32, f16 or bf16 activations, got {:?}",
            x.dtype()
        ),
    }
}

/// Whether a row's values all suit the table path (zero, or `2⁻¹²⁶ ≤ |x| < 2¹²⁰`).
fn row_fits_tables(row: &[f32]) -> bool {
    row.iter().all(|x| {
        *x == 0.0 || (f32::MIN_POSITIVE..f32::from_bits((127 + 120) << 23)).contains(&x.abs())
    })
}

fn linear<S: WithDType>(x: &[S], lx: &Layout, w: &Lns8TableWeight) -> (CpuStorage, Shape) {
    let view = MatrixView::rows_of(lx);
    let (m, n, k) = (view.batch() * view.rows, w.n, w.k);
    // The activations as dense f32 rows (exact: every input dtype widens to f32 exactly).
    let mut rows = vec![0f32; m * k];
    for (b, &base) in view.batch_offsets.iter().enumerate() {
        for i in 0..view.rows {
            let row = &mut rows[(b * view.rows + i) * k..(b * view.rows + i + 1) * k];
            for (c, v) in row.iter_mut().enumerate() {
                *v = x[base + i * view.row_stride + c * view.col_stride].to_f64() as f32;
            }
        }
    }
    let fits: Vec<bool> = rows.chunks(k.max(1)).map(row_fits_tables).collect();
    let (blocks, groups, k_pad) = (n.div_ceil(ROWS), groups_per_row(k), w.k_pad());
    // Outputs by tile: `yt[tile][row][block in tile][16]`.
    // Blocks per task: a whole tile where there are enough blocks to keep every thread busy
    // or too little work to be worth a split (under 2¹⁸ products a row, a task costs more than
    // it saves), fewer on the layers between.
    let threads = rayon::current_num_threads();
    let tb = match blocks {
        b if b >= 64 * threads || b * k_pad * ROWS < 1 << 18 => TILE_BLOCKS,
        b if b >= 4 * threads => 4,
        _ => 1,
    };
    let tile_len = TILE_BLOCKS * ROWS;
    let mut yt = vec![0f32; blocks.div_ceil(tb) * m * tile_len];
    yt.par_chunks_mut(m * tile_len)
        .enumerate()
        .for_each(|(t, out)| {
            let b0 = t * tb;
            let nb = tb.min(blocks - b0);
            let codes = &w.codes[b0 * k_pad * ROWS..(b0 + nb) * k_pad * ROWS];
            let offsets = &w.offsets[b0 * groups * ROWS..(b0 + nb) * groups * ROWS];
            tile(&rows, k, &fits, codes, offsets, k_pad, nb, out);
        });
    let mut y = vec![S::zero(); m * n];
    for i in 0..m {
        let row = &rows[i * k..(i + 1) * k];
        for j in 0..n {
            let (t, jt) = (j / (tb * ROWS), j % (tb * ROWS));
            let v = yt[(t * m + i) * tile_len + jt];
            // A row outside the table's range, or a zero whose sign IEEE decides from every
            // product: the f64 value of the codes, summed and rounded once.
            let v = if !fits[i] || v == 0.0 {
                exact_output(row, w, j)
            } else {
                v
            };
            y[i * n + j] = S::from_f64(f64::from(v));
        }
    }
    let dims = lx.dims();
    let shape = Shape::from(&dims[..dims.len() - 1]).extend(&[n]);
    (S::to_cpu_storage_owned(y), shape)
}

/// Output `j` of one row in `f64`: `Σ x_k·w_jk` over the weights as stored from `-0.0`,
/// rounded to `f32` once (IEEE's specials, signed zeros and overflow of the true products;
/// each `f32` product is exact in `f64`).
fn exact_output(row: &[f32], w: &Lns8TableWeight, j: usize) -> f32 {
    let mut acc = -0.0f64;
    for (i, &x) in row.iter().enumerate() {
        acc += f64::from(x) * f64::from(w.value(j, i));
    }
    acc as f32
}

/// Rows at which the AVX-512 kernel widens each group's codes once for all rows instead of
/// once per row.
const WIDEN_ROWS: usize = 3;

/// The outputs of `nb` blocks against every activation row whose values fit the tables
/// (`fits`): `out[row][block][16]`, rows `TILE_BLOCKS × 16` apart; with the widest kernel the
/// CPU runs.
#[allow(clippy::too_many_arguments)]
fn tile(
    rows: &[f32],
    k: usize,
    fits: &[bool],
    codes: &[u8],
    offsets: &[f16],
    k_pad: usize,
    nb: usize,
    out: &mut [f32],
) {
    let tile_len = TILE_BLOCKS * ROWS;
    #[cfg(target_arch = "x86_64")]
    if Isa::get() == Isa::Avx512 && fits.len() >= WIDEN_ROWS {
        // SAFETY: `Isa::Avx512` is only detected on CPUs with AVX-512F.
        unsafe { x86::tile_rows_avx512(rows, k, fits, codes, offsets, k_pad, nb, out) };
        return;
    }
    for (i, row) in rows.chunks(k.max(1)).enumerate() {
        if !fits[i] {
            continue;
        }
        let out = &mut out[i * tile_len..i * tile_len + nb * ROWS];
        match Isa::get() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::Avx512` is only detected on CPUs with AVX-512F, AVX2 and FMA.
            Isa::Avx512 => unsafe { x86::tile_avx512(row, codes, offsets, k_pad, nb, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::Avx2` is only detected on CPUs with AVX2 and FMA.
            Isa::Avx2 => unsafe { x86::tile_avx2(row, codes, offsets, k_pad, nb, out) },
            _ => tile_lanes(row, codes, offsets, k_pad, nb, out),
        }
    }
}

/// The 16 rows' scales `exp(offset)` of one block and group: an exact exp each, with no fused
/// multiply-add so that every ISA gets the same bits (a loop the compiler vectorises).
#[inline(always)]
fn scales(offsets: &[f16]) -> [f32; ROWS] {
    let mut s = [0f32; ROWS];
    for (s, o) in s.iter_mut().zip(offsets) {
        *s = exp_f32::<false>(o.widen());
    }
    s
}

/// The reference kernel, lane by lane: what the intrinsics compute, bit for bit.
#[inline(always)]
fn tile_lanes(
    row: &[f32],
    codes: &[u8],
    offsets: &[f16],
    k_pad: usize,
    nb: usize,
    out: &mut [f32],
) {
    let powers = powers();
    let groups = k_pad / GROUP;
    for b in 0..nb {
        let codes = &codes[b * k_pad * ROWS..(b + 1) * k_pad * ROWS];
        let offsets = &offsets[b * groups * ROWS..(b + 1) * groups * ROWS];
        let mut acc = [-0.0f32; ROWS];
        for g in 0..groups {
            let mut sum = [-0.0f32; ROWS];
            let end = ((g + 1) * GROUP).min(row.len());
            for (c, &x) in row[g * GROUP..end].iter().enumerate() {
                let i = g * GROUP + c;
                if x == 0.0 {
                    continue;
                }
                let column = &codes[i * ROWS..(i + 1) * ROWS];
                for (s, &c) in sum.iter_mut().zip(column) {
                    if c & 0xef != 0 {
                        let t = (x * powers[usize::from(c & 15)]).to_bits();
                        let bits = (t ^ (u32::from(c >> 4 & 1) << 31)) + (u32::from(c >> 5) << 23);
                        *s += f32::from_bits(bits);
                    }
                }
            }
            let scale = scales(&offsets[g * ROWS..(g + 1) * ROWS]);
            for ((a, s), scale) in acc.iter_mut().zip(sum).zip(scale) {
                *a += s * scale;
            }
        }
        out[b * ROWS..(b + 1) * ROWS].copy_from_slice(&acc);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    use super::{powers, scales, tile_lanes, GROUP, ROWS, TILE_BLOCKS};

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn tile_avx2(
        row: &[f32],
        codes: &[u8],
        offsets: &[f16],
        k_pad: usize,
        nb: usize,
        out: &mut [f32],
    ) {
        tile_lanes(row, codes, offsets, k_pad, nb, out)
    }

    /// [`tile_lanes`] with intrinsics, bit for bit. Per column one 32-entry table: `T[i]`
    /// holds the bits of `±x·2^(r/16)` (sign `i >> 4`, `r = i & 15`) less `i << 18`, so that
    /// adding the widened byte shifted by 18, `(i << 18) + (e << 23)`, gives the entry's bits
    /// plus `e` in the exponent field in one integer add (the byte's low five bits are `i`).
    #[target_feature(enable = "avx512f")]
    pub(super) fn tile_avx512(
        row: &[f32],
        codes: &[u8],
        offsets: &[f16],
        k_pad: usize,
        nb: usize,
        out: &mut [f32],
    ) {
        // A whole tile with its sums in registers (a constant count unrolls); a short last
        // tile block by block.
        match nb {
            TILE_BLOCKS => return tile_n::<TILE_BLOCKS>(row, codes, offsets, k_pad, out),
            4 => return tile_n::<4>(row, codes, offsets, k_pad, out),
            _ => {}
        }
        let groups = k_pad / GROUP;
        for b in 0..nb {
            tile_n::<1>(
                row,
                &codes[b * k_pad * ROWS..],
                &offsets[b * groups * ROWS..],
                k_pad,
                &mut out[b * ROWS..],
            );
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn tile_n<const NB: usize>(
        row: &[f32],
        codes: &[u8],
        offsets: &[f16],
        k_pad: usize,
        out: &mut [f32],
    ) {
        let nb = NB;
        let groups = k_pad / GROUP;
        assert!(codes.len() >= nb * k_pad * ROWS && offsets.len() >= nb * groups * ROWS);
        assert!(row.len() <= k_pad && out.len() >= nb * ROWS);
        let powers = powers();
        // SAFETY: `powers` holds 16 floats.
        let powers = unsafe { _mm512_loadu_ps(powers.as_ptr()) };
        let index18 = _mm512_slli_epi32::<18>(_mm512_setr_epi32(
            0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
        ));
        // The negative half: the sign bit set, and the compensation of `i + 16` for `i`.
        let negate = _mm512_set1_epi32(0x8000_0000u32.wrapping_sub(16 << 18) as i32);
        let nonzero = _mm512_set1_epi32(0xef);
        let mut acc = [_mm512_set1_ps(-0.0); NB];
        for g in 0..groups {
            let mut sum = [_mm512_set1_ps(-0.0); NB];
            let end = ((g + 1) * GROUP).min(row.len());
            for (c, &x) in row[g * GROUP..end].iter().enumerate() {
                let i = g * GROUP + c;
                if x == 0.0 {
                    continue;
                }
                let t = _mm512_mul_ps(_mm512_set1_ps(x), powers);
                let lo = _mm512_sub_epi32(_mm512_castps_si512(t), index18);
                let hi = _mm512_add_epi32(lo, negate);
                let (lo, hi) = (_mm512_castsi512_ps(lo), _mm512_castsi512_ps(hi));
                for (b, s) in sum.iter_mut().enumerate() {
                    let at = (b * k_pad + i) * ROWS;
                    let column = &codes[at..at + ROWS];
                    // SAFETY: `column` holds 16 bytes.
                    let c = _mm512_cvtepu8_epi32(unsafe {
                        _mm_loadu_si128(column.as_ptr() as *const __m128i)
                    });
                    let p = _mm512_permutex2var_ps(lo, c, hi);
                    let p = _mm512_add_epi32(_mm512_castps_si512(p), _mm512_slli_epi32::<18>(c));
                    let m = _mm512_test_epi32_mask(c, nonzero);
                    *s = _mm512_mask_add_ps(*s, m, *s, _mm512_castsi512_ps(p));
                }
            }
            for (b, (a, s)) in acc.iter_mut().zip(sum).enumerate() {
                let at = (b * groups + g) * ROWS;
                let scale = scales(&offsets[at..at + ROWS]);
                // SAFETY: `scale` holds 16 floats.
                let scale = unsafe { _mm512_loadu_ps(scale.as_ptr()) };
                *a = _mm512_add_ps(*a, _mm512_mul_ps(s, scale));
            }
        }
        for (b, a) in acc.iter().enumerate() {
            // SAFETY: `out` holds 16 floats from `b·16` (asserted above).
            unsafe { _mm512_storeu_ps(out[b * ROWS..b * ROWS + ROWS].as_mut_ptr(), *a) };
        }
    }

    /// [`tile_lanes`] for many rows at once, bit for bit (each output's sums are taken in the
    /// same order): per group each block's 32 columns of codes are widened once into table
    /// indices with the exponent (`i | c << 18`, the table compensated by `i + (i << 18)`) and a
    /// mask of the non-zero codes, then every row reads them: per 16 products a lookup, an
    /// integer add and a masked add.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub(super) fn tile_rows_avx512(
        rows: &[f32],
        k: usize,
        fits: &[bool],
        codes: &[u8],
        offsets: &[f16],
        k_pad: usize,
        nb: usize,
        out: &mut [f32],
    ) {
        match nb {
            TILE_BLOCKS => {
                return tile_rows_n::<TILE_BLOCKS>(rows, k, fits, codes, offsets, k_pad, out)
            }
            4 => return tile_rows_n::<4>(rows, k, fits, codes, offsets, k_pad, out),
            _ => {}
        }
        let groups = k_pad / GROUP;
        for b in 0..nb {
            tile_rows_n::<1>(
                rows,
                k,
                fits,
                &codes[b * k_pad * ROWS..],
                &offsets[b * groups * ROWS..],
                k_pad,
                &mut out[b * ROWS..],
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn tile_rows_n<const NB: usize>(
        rows: &[f32],
        k: usize,
        fits: &[bool],
        codes: &[u8],
        offsets: &[f16],
        k_pad: usize,
        out: &mut [f32],
    ) {
        let nb = NB;
        let (groups, tile_len, m) = (k_pad / GROUP, TILE_BLOCKS * ROWS, fits.len());
        assert!(codes.len() >= nb * k_pad * ROWS && offsets.len() >= nb * groups * ROWS);
        assert!(rows.len() >= m * k && (m == 0 || out.len() >= (m - 1) * tile_len + nb * ROWS));
        assert!(k <= k_pad);
        let powers = powers();
        // SAFETY: `powers` holds 16 floats.
        let powers = unsafe { _mm512_loadu_ps(powers.as_ptr()) };
        let index = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        // Entry `i` less `i + (i << 18)`; the negative half likewise for `i + 16`.
        let compensation = _mm512_add_epi32(index, _mm512_slli_epi32::<18>(index));
        let negate = _mm512_set1_epi32(0x8000_0000u32.wrapping_sub(16 + (16 << 18)) as i32);
        let (nonzero, low5) = (_mm512_set1_epi32(0xef), _mm512_set1_epi32(31));
        let zero = _mm512_setzero_si512();
        let mut widened = [[zero; GROUP]; NB];
        let mut masks = [[0u16; GROUP]; NB];
        for (i, fit) in fits.iter().enumerate() {
            if *fit {
                out[i * tile_len..i * tile_len + nb * ROWS].fill(-0.0);
            }
        }
        for g in 0..groups {
            let cols = GROUP.min(k.saturating_sub(g * GROUP));
            for b in 0..nb {
                for c in 0..cols {
                    let at = (b * k_pad + g * GROUP + c) * ROWS;
                    let column = &codes[at..at + ROWS];
                    // SAFETY: `column` holds 16 bytes.
                    let v = _mm512_cvtepu8_epi32(unsafe {
                        _mm_loadu_si128(column.as_ptr() as *const __m128i)
                    });
                    masks[b][c] = _mm512_test_epi32_mask(v, nonzero);
                    widened[b][c] =
                        _mm512_or_si512(_mm512_and_si512(v, low5), _mm512_slli_epi32::<18>(v));
                }
            }
            let mut scale = [_mm512_setzero_ps(); NB];
            for (b, s) in scale.iter_mut().enumerate() {
                let at = (b * groups + g) * ROWS;
                let sc = scales(&offsets[at..at + ROWS]);
                // SAFETY: `sc` holds 16 floats.
                *s = unsafe { _mm512_loadu_ps(sc.as_ptr()) };
            }
            for (i, row) in rows.chunks(k.max(1)).enumerate().take(m) {
                if !fits[i] {
                    continue;
                }
                let mut sum = [_mm512_set1_ps(-0.0); NB];
                for (c, &x) in row[g * GROUP..g * GROUP + cols].iter().enumerate() {
                    if x == 0.0 {
                        continue;
                    }
                    let t = _mm512_mul_ps(_mm512_set1_ps(x), powers);
                    let lo = _mm512_sub_epi32(_mm512_castps_si512(t), compensation);
                    let hi = _mm512_add_epi32(lo, negate);
                    let (lo, hi) = (_mm512_castsi512_ps(lo), _mm512_castsi512_ps(hi));
                    for (b, s) in sum.iter_mut().enumerate() {
                        let v = widened[b][c];
                        let p = _mm512_permutex2var_ps(lo, v, hi);
                        let p = _mm512_add_epi32(_mm512_castps_si512(p), v);
                        *s = _mm512_mask_add_ps(*s, masks[b][c], *s, _mm512_castsi512_ps(p));
                    }
                }
                let out = &mut out[i * tile_len..i * tile_len + nb * ROWS];
                for (b, s) in sum.iter().enumerate() {
                    let o = &mut out[b * ROWS..b * ROWS + ROWS];
                    // SAFETY: `o` holds 16 floats.
                    unsafe {
                        let a = _mm512_loadu_ps(o.as_ptr());
                        let a = _mm512_add_ps(a, _mm512_mul_ps(*s, scale[b]));
                        _mm512_storeu_ps(o.as_mut_ptr(), a);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::lns8::codes::{encode_row, table_blocks};
    use rand::{Rng, SeedableRng};

    /// A random weight's table-mode blocks and offsets, `(codes, offsets, k_pad)`.
    fn random_blocks(rng: &mut impl Rng, n: usize, k: usize) -> (Vec<u8>, Vec<f16>, usize) {
        let groups = groups_per_row(k);
        let mut codes = vec![0u8; n * k];
        let mut offsets = vec![f16::ZERO; n * groups];
        for j in 0..n {
            let row: Vec<f64> = (0..k)
                .map(|_| {
                    if rng.random_bool(0.05) {
                        0.0
                    } else {
                        rng.random_range(-1.0..1.0) * 10f64.powi(rng.random_range(-4..1))
                    }
                })
                .collect();
            let (c, o) = (&mut codes[j * k..(j + 1) * k], &mut offsets[j * groups..]);
            encode_row(&row, c, &mut o[..groups]).unwrap();
        }
        let (blocks, offsets) = table_blocks(&codes, &offsets, n, k);
        (blocks, offsets, groups * GROUP)
    }

    /// The intrinsics kernel gives the lane kernel's bits, for every tile width and for rows
    /// with zeros, negative zeros and magnitudes across the table's range.
    #[test]
    fn avx512_is_bit_identical_to_the_lanes() {
        if !is_x86_feature_detected!("avx512f") {
            eprintln!("skipped: this CPU has no AVX-512F");
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(21);
        for (n, k) in [(16usize, 32usize), (128, 64), (40, 100), (17, 7), (130, 96)] {
            let (codes, offsets, k_pad) = random_blocks(&mut rng, n, k);
            let blocks = n.div_ceil(ROWS);
            let row: Vec<f32> = (0..k)
                .map(|i| match i % 11 {
                    0 => 0.0,
                    1 => -0.0,
                    2 => 1e30 * rng.random_range(-1.0..1.0f32),
                    3 => 1e-30 * rng.random_range(-1.0..1.0f32),
                    _ => rng.random_range(-3.0..3.0f32),
                })
                .collect();
            assert!(row_fits_tables(&row));
            for nb in 1..=blocks.min(TILE_BLOCKS) {
                let mut want = vec![0f32; nb * ROWS];
                let mut got = vec![0f32; nb * ROWS];
                tile_lanes(&row, &codes, &offsets, k_pad, nb, &mut want);
                // SAFETY: AVX-512F detected above.
                unsafe { x86::tile_avx512(&row, &codes, &offsets, k_pad, nb, &mut got) };
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "n {n} k {k} nb {nb}");
                // Many rows at once, one of them left out (it does not fit the tables).
                let rows: Vec<f32> = (0..5)
                    .flat_map(|i| row.iter().map(move |x| x * (i as f32 + 0.5)))
                    .collect();
                let fits = [true, true, false, true, true];
                let tile_len = TILE_BLOCKS * ROWS;
                let mut got = vec![1f32; 5 * tile_len];
                // SAFETY: AVX-512F detected above.
                unsafe {
                    x86::tile_rows_avx512(&rows, k, &fits, &codes, &offsets, k_pad, nb, &mut got)
                };
                for (i, fit) in fits.iter().enumerate() {
                    let out = &got[i * tile_len..i * tile_len + nb * ROWS];
                    if !fit {
                        assert!(out.iter().all(|v| *v == 1.0), "row {i} left as it was");
                        continue;
                    }
                    let mut want = vec![0f32; nb * ROWS];
                    tile_lanes(
                        &rows[i * k..(i + 1) * k],
                        &codes,
                        &offsets,
                        k_pad,
                        nb,
                        &mut want,
                    );
                    assert_eq!(bits(out), bits(&want), "rows: n {n} k {k} nb {nb} row {i}");
                }
            }
        }
    }
}
