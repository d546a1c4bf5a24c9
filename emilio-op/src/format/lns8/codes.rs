//! The codes of `lns8`, as slices: encoding a row, decoding a code. The kernels read these.
//!
//! Per weight a sign bit and a 7-bit fixed-point log magnitude,
//! relative to one `f16` offset per group of [`GROUP`] weights along `K` (8.5 bits per
//! weight in all), so a decode step reads about half the bytes of the `f16` log format.
//!
//! A code `c` stands for `ln|w| = offset + q·STEP` with `q = c & 0x7f` in `1..=127` and
//! `STEP = ln 2 / 2^FRAC_BITS` (a sixteenth of an octave); `q = 0` is zero, and bit 7 is
//! the sign (`0x80` is `-0.0`). Each group's offset puts its largest magnitude at the top code,
//! so the 127 codes span `126/16 ≈ 7.9` octaves below it.
//!
//! **Error per weight** (`M` the group's largest `|w|`):
//! - `|w| ≥ v₁·2^(−1/32)`, where `v₁ ≈ M·2^(−126/16) ≈ M/235` is the smallest code's value
//!   (within the `f16` rounding of the offset, < 1%): relative error at most `2^(1/32) − 1 =
//!   2.19%` (half a step of the log, rounded to nearest);
//! - smaller weights become `v₁` or zero, whichever is nearer: absolute error at most `v₁/2`.
//!
//! The fractional bits were chosen by measurement: mean KL of SmolLM2-135M's predictions
//! against stock over 16 chunks of 512 tokens (`emilio eval`, `docs/performance.md`) was
//! 1.43e-2 with 3 bits (4.4% per weight, 15.9 octaves), 3.48e-3 with 4 and 3.69e-2 with 5
//! (1.1%, but only 4 octaves: a tenth of a group's weights fall below its range). Four bits
//! balance precision against range; none reaches 1e-3 in 8.5 bits.

use half::f16;

use crate::format::lns::{group_max_log, group_offset_for, quantize};

/// Weights per offset, along `K`.
pub const GROUP: usize = 32;
/// Fractional bits of the log code: the step is `2^−FRAC_BITS` of an octave.
pub const FRAC_BITS: u32 = 4;
/// The step between codes in natural-log units, as the kernels hold it (`f32`).
pub(crate) const STEP: f32 = (std::f64::consts::LN_2 / (1u32 << FRAC_BITS) as f64) as f32;
/// The largest magnitude code.
const MAX_Q: f64 = 127.0;

/// Offsets per row of `k` weights.
pub(crate) fn groups_per_row(k: usize) -> usize {
    k.div_ceil(GROUP)
}

/// `ln|w|` of a code against its group's offset, as the tile conversion computes it (a multiply
/// and an add, unfused, so every CPU gets the same bits): `-inf` for the zero code.
#[inline(always)]
pub(crate) fn decode_log(code: u8, offset: f32) -> f32 {
    let q = code & 0x7f;
    if q == 0 {
        f32::NEG_INFINITY
    } else {
        q as f32 * STEP + offset
    }
}

/// The weight a code stands for, in `f64` (what a reference multiplies by).
pub(crate) fn decode_value(code: u8, offset: f16) -> f64 {
    let q = code & 0x7f;
    let magnitude = if q == 0 {
        0.0
    } else {
        (f64::from(q) * f64::from(STEP) + offset.to_f64()).exp()
    };
    if code & 0x80 != 0 {
        -magnitude
    } else {
        magnitude
    }
}

/// Rows per block of the table mode's layout ([`crate::ExpMode::Table`]).
pub(crate) const TABLE_ROWS: usize = 16;

/// A code as the table mode stores it: `r | s << 4 | e << 5` for the code's magnitude
/// `q = 16e + r` and sign `s`, so that the low five bits index a 32-entry table of the signed
/// `±|x|·2^(r/16)` and `e` is the power of two left to apply (`crate::cpu::lns8_table`).
pub(crate) fn table_byte(code: u8) -> u8 {
    let q = code & 0x7f;
    (q & 15) | ((code >> 7) << 4) | ((q >> 4) << 5)
}

/// The code a table-mode byte stores ([`table_byte`] inverted).
pub(crate) fn code_of_table_byte(byte: u8) -> u8 {
    ((byte >> 4 & 1) << 7) | ((byte >> 5) << 4) | (byte & 15)
}

/// Rearranges row-major codes and offsets (`n` rows of `k`) into the table mode's blocks of
/// [`TABLE_ROWS`] rows: per block and column 16 bytes, byte `r` holding row `r`'s
/// [`table_byte`]; offsets per block, group, row. Rows past `n` and columns past `k` (to whole
/// groups) are zero codes.
pub(crate) fn table_blocks(
    codes: &[u8],
    offsets: &[f16],
    n: usize,
    k: usize,
) -> (Vec<u8>, Vec<f16>) {
    let groups = groups_per_row(k);
    let k_pad = groups * GROUP;
    let blocks = n.div_ceil(TABLE_ROWS);
    let mut out = vec![0u8; blocks * k_pad * TABLE_ROWS];
    let mut out_offsets = vec![f16::ZERO; blocks * groups * TABLE_ROWS];
    for j in 0..n {
        let (b, r) = (j / TABLE_ROWS, j % TABLE_ROWS);
        let block = &mut out[b * k_pad * TABLE_ROWS..(b + 1) * k_pad * TABLE_ROWS];
        for (i, &c) in codes[j * k..(j + 1) * k].iter().enumerate() {
            block[i * TABLE_ROWS + r] = table_byte(c);
        }
        for g in 0..groups {
            out_offsets[(b * groups + g) * TABLE_ROWS + r] = offsets[j * groups + g];
        }
    }
    (out, out_offsets)
}

/// The code of weight `(j, i)` in the table mode's blocks (see [`table_blocks`]).
pub(crate) fn table_code(blocks: &[u8], k: usize, j: usize, i: usize) -> u8 {
    let k_pad = groups_per_row(k) * GROUP;
    let (b, r) = (j / TABLE_ROWS, j % TABLE_ROWS);
    code_of_table_byte(blocks[(b * k_pad + i) * TABLE_ROWS + r])
}

/// Encodes one row of weights into `codes` (one per weight) and `offsets` (one per group).
///
/// Returns the index of the first weight that is not finite: the format has no code for
/// infinities or NaN, and the caller names it.
pub(crate) fn encode_row(row: &[f64], codes: &mut [u8], offsets: &mut [f16]) -> Result<(), usize> {
    if let Some(i) = row.iter().position(|w| !w.is_finite()) {
        return Err(i);
    }
    let step = f64::from(STEP);
    for ((group, codes), offset) in row
        .chunks(GROUP)
        .zip(codes.chunks_mut(GROUP))
        .zip(offsets.iter_mut())
    {
        let max_log = group_max_log(group);
        *offset = group_offset_for(max_log, step, MAX_Q);
        let off = offset.to_f64();
        for (c, &w) in codes.iter_mut().zip(group) {
            let sign = if w.is_sign_negative() { 0x80 } else { 0 };
            *c = sign | quantize(w, off, step, MAX_Q);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Every weight's error is within the stated bound for its group.
    #[test]
    fn encoding_is_within_the_stated_error() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for k in [1usize, 5, 31, 32, 33, 64, 100, 896] {
            for scale in [1e-4f64, 0.02, 1.0, 300.0] {
                let row: Vec<f64> = (0..k)
                    .map(|_| {
                        let v: f64 = rng.random_range(-1.0..1.0);
                        let v = v * scale * 10f64.powi(rng.random_range(-3..1));
                        if rng.random_bool(0.05) {
                            0.0
                        } else {
                            v
                        }
                    })
                    .collect();
                let mut codes = vec![0u8; k];
                let mut offsets = vec![f16::ZERO; groups_per_row(k)];
                encode_row(&row, &mut codes, &mut offsets).unwrap();
                let half_step = 0.5 / f64::from(1u32 << FRAC_BITS); // octaves
                let rel_bound = 2f64.powf(half_step) - 1.0;
                for (g, group) in row.chunks(GROUP).enumerate() {
                    let max = group.iter().map(|w| w.abs()).fold(0.0, f64::max);
                    // The smallest code's value, ≈ max·2^(−126 steps) (the f16 offset moves it).
                    let v1 = decode_value(1, offsets[g]).abs();
                    let nominal = max * 2f64.powf(-126.0 * 2.0 * half_step);
                    assert!(
                        (v1 / nominal - 1.0).abs() < 0.03 || max == 0.0,
                        "{v1} vs {nominal}"
                    );
                    for (i, &w) in group.iter().enumerate() {
                        let c = codes[g * GROUP + i];
                        let got = decode_value(c, offsets[g]);
                        assert_eq!(got.is_sign_negative(), w.is_sign_negative(), "{w} → {got}");
                        let err = (got - w).abs();
                        // Rounding to the nearest code: half a step of the log, and 1e-6 of slack
                        // for the f64 arithmetic.
                        let ok = if w.abs() >= v1 * 2f64.powf(-half_step) {
                            err <= w.abs() * (rel_bound + 1e-6)
                        } else {
                            err <= v1 * (0.5 + 1e-6)
                        };
                        assert!(
                            ok,
                            "k {k}, group max {max:e}: {w:e} → {got:e} (code {c:#x})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn zeros_keep_their_sign_and_non_finite_weights_are_refused() {
        let row = [0.0, -0.0, 1.0, -2.0];
        let mut codes = [0u8; 4];
        let mut offsets = [f16::ZERO; 1];
        encode_row(&row, &mut codes, &mut offsets).unwrap();
        assert_eq!(&codes[..2], &[0x00, 0x80]);
        assert_eq!(
            codes[3] & 0x7f,
            127,
            "the group's largest magnitude is the top code"
        );
        assert_eq!(decode_log(0x80, 1.0), f32::NEG_INFINITY);
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let row = [1.0, 2.0, bad];
            assert_eq!(encode_row(&row, &mut codes[..3], &mut offsets), Err(2));
        }
        // An all-zero group.
        let mut codes = [1u8; 3];
        encode_row(&[0.0, -0.0, 0.0], &mut codes, &mut offsets).unwrap();
        assert_eq!(codes, [0, 0x80, 0]);
    }

    #[test]
    fn table_bytes_round_trip_and_blocks_hold_every_code() {
        for code in 0..=255u8 {
            let b = table_byte(code);
            assert_eq!(code_of_table_byte(b), code, "{code:#x}");
            let (q, r, e) = (code & 0x7f, b & 15, b >> 5);
            assert_eq!(u32::from(q), 16 * u32::from(e) + u32::from(r), "{code:#x}");
            assert_eq!(b >> 4 & 1, code >> 7, "{code:#x}");
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        for (n, k) in [(1usize, 1usize), (16, 32), (17, 33), (40, 100)] {
            let codes: Vec<u8> = (0..n * k).map(|_| rng.random()).collect();
            let offsets: Vec<f16> = (0..n * groups_per_row(k))
                .map(|_| f16::from_f32(rng.random_range(-9.0..1.0)))
                .collect();
            let (blocks, block_offsets) = table_blocks(&codes, &offsets, n, k);
            for j in 0..n {
                for i in 0..k {
                    assert_eq!(table_code(&blocks, k, j, i), codes[j * k + i]);
                }
                for g in 0..groups_per_row(k) {
                    let (b, r) = (j / TABLE_ROWS, j % TABLE_ROWS);
                    let at = (b * groups_per_row(k) + g) * TABLE_ROWS + r;
                    assert_eq!(block_offsets[at], offsets[j * groups_per_row(k) + g]);
                }
            }
            // Padding rows and columns are zero codes.
            let k_pad = groups_per_row(k) * GROUP;
            for j in n..n.div_ceil(TABLE_ROWS) * TABLE_ROWS {
                for i in 0..k_pad {
                    assert_eq!(table_code(&blocks, k, j, i), 0);
                }
            }
        }
    }

    #[test]
    fn the_kernels_log_is_the_references_value() {
        for code in 1..=127u8 {
            for off in [-9.25f32, -3.0, 0.0, 2.5] {
                let l = decode_log(code, off) as f64;
                let v = decode_value(code, f16::from_f32(off)).ln();
                assert!((l - v).abs() <= 1e-6 * (1.0 + v.abs()), "{code} {off}");
            }
        }
    }
}
