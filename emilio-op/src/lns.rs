//! The log-number-system weight formats, `lns8` and `lns4` (below).
//!
//! **`lns8`**: a sign bit and a 7-bit fixed-point log magnitude per weight,
//! relative to one `f16` offset per group of [`LNS8_GROUP`] weights along `K` (8.5 bits per
//! weight in all), so a decode step reads about half the bytes of the `f16` log format.
//!
//! A code `c` stands for `ln|w| = offset + q·STEP` with `q = c & 0x7f` in `1..=127` and
//! `STEP = ln 2 / 2^LNS8_FRAC_BITS` (a sixteenth of an octave); `q = 0` is zero, and bit 7 is
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
//!
//! **`lns4`**: a sign bit and a 3-bit log code per weight, packed two to a byte, against an
//! `f16` offset per group of [`LNS4_GROUP`] (4.5 bits per weight). Seven magnitudes are too few
//! for a fixed step, so the step is chosen per tensor (`lns4_step`: the least squared error in
//! value over the tensor), and each group's offset puts its largest magnitude at the top code or
//! up to half a step above it, whichever leaves the group the least squared error. Error per
//! weight, with `s` the tensor's step: relative at most `e^(s/2) − 1` down to `v₁`, the smallest
//! code's value (`M·e^(−6.5s)` to `M·e^(−6s)`), the rest to the nearer of zero and `v₁`. Seven
//! magnitudes are coarse for a trained model: SmolLM2's mean KL against stock is ≈0.4
//! (`docs/performance.md`); `lns4` is the dial's far end, not a faithful format.

use half::f16;

/// Weights per offset, along `K`.
pub const LNS8_GROUP: usize = 32;
/// Fractional bits of the log code: the step is `2^−LNS8_FRAC_BITS` of an octave.
pub const LNS8_FRAC_BITS: u32 = 4;
/// The step between codes in natural-log units, as the kernels hold it (`f32`).
pub(crate) const STEP: f32 = (std::f64::consts::LN_2 / (1u32 << LNS8_FRAC_BITS) as f64) as f32;
/// The largest magnitude code.
const MAX_Q: f64 = 127.0;

/// Offsets per row of `k` weights.
pub(crate) fn groups_per_row(k: usize) -> usize {
    k.div_ceil(LNS8_GROUP)
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
        .chunks(LNS8_GROUP)
        .zip(codes.chunks_mut(LNS8_GROUP))
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

/// The offset that puts `max_log` at the top code `max_q`: `max_log − max_q·step` rounded to
/// `f16`, moved up by f16 ulps while the rounding left `max_log` more than half a step above
/// the top code.
fn group_offset_for(max_log: f64, step: f64, max_q: f64) -> f16 {
    if !max_log.is_finite() {
        return f16::ZERO; // an all-zero group
    }
    let mut offset = f16::from_f64(max_log - max_q * step);
    while (max_log - offset.to_f64()) / step > max_q + 0.5 {
        offset = next_up(offset);
    }
    offset
}

/// The next `f16` above `x` (finite `x`).
fn next_up(x: f16) -> f16 {
    let bits = x.to_bits();
    if x.to_f64() >= 0.0 {
        if bits == 0x8000 {
            f16::from_bits(1)
        } else {
            f16::from_bits(bits + 1)
        }
    } else {
        f16::from_bits(bits - 1)
    }
}

// ---------------------------------------------------------------------------------------------
// lns4
// ---------------------------------------------------------------------------------------------

/// `lns4`'s group: weights per offset along `K`, and the 16 bytes that hold their codes (byte
/// `i` holds weight `i` in its low nibble and weight `16 + i` in its high one, so that a SIMD
/// lane `l` reads weight `l` of the group without a shuffle).
pub const LNS4_GROUP: usize = 32;
const LNS4_GROUP_BYTES: usize = LNS4_GROUP / 2;
/// The largest `lns4` magnitude code (3 bits; 0 is zero).
const MAX_Q4: f64 = 7.0;

/// Code bytes per row of `k` weights (whole groups: a partial last one is padded with zeros).
pub(crate) fn lns4_bytes_per_row(k: usize) -> usize {
    groups_per_row(k) * LNS4_GROUP_BYTES
}

/// The code of weight `i` of a row of `lns4` bytes: sign in bit 3, magnitude in bits 0–2.
#[inline(always)]
pub(crate) fn lns4_code(bytes: &[u8], i: usize) -> u8 {
    let (g, l) = (i / LNS4_GROUP, i % LNS4_GROUP);
    let byte = bytes[g * LNS4_GROUP_BYTES + l % LNS4_GROUP_BYTES];
    if l < LNS4_GROUP_BYTES {
        byte & 0x0f
    } else {
        byte >> 4
    }
}

/// `ln|w|` of an `lns4` code, as the tile conversion computes it (unfused): `-inf` for zero.
#[inline(always)]
pub(crate) fn decode_log4(code: u8, offset: f32, step: f32) -> f32 {
    let q = code & 7;
    if q == 0 {
        f32::NEG_INFINITY
    } else {
        q as f32 * step + offset
    }
}

/// The weight an `lns4` code stands for, in `f64`.
pub(crate) fn decode_value4(code: u8, offset: f16, step: f32) -> f64 {
    let q = code & 7;
    let magnitude = if q == 0 {
        0.0
    } else {
        (f64::from(q) * f64::from(step) + offset.to_f64()).exp()
    };
    if code & 8 != 0 {
        -magnitude
    } else {
        magnitude
    }
}

/// The tensor's step for `lns4`, in natural-log units: of the candidates 0.05, 0.075, …, 1.2,
/// the one whose codes have the least squared error in value, `Σ(|w| − |ŵ|)²`, over `values`
/// (all of a tensor, or a sample of its rows, as `row`-long runs), each group's offset chosen
/// by [`lns4_group_offset`].
///
/// Why value and not log error: what a matmul adds up is the weights' values, so a small
/// weight's error costs little and a large one's much. The least *log* error (every weight
/// alike, a zeroed one counted as the smallest code) spends the codes on range the small
/// weights need and the sums do not: on SmolLM2 (`emilio eval`, 2 chunks of 512 tokens) its
/// median KL against stock was 1.39 and the same top-1 41.6%; with this objective and the
/// offset search, 0.37 and 66.7%, at steps of 0.325–0.375. This objective is the log error
/// weighted by `w²` to first order.
pub(crate) fn lns4_step(values: &[f64], row: usize) -> f32 {
    let candidates = (2..=48).map(|i| i as f64 * 0.025);
    let mut best = (f64::INFINITY, 0.25);
    for step in candidates {
        let step = step as f32;
        let mut err = 0.0;
        for group in values.chunks(row.max(1)).flat_map(|r| r.chunks(LNS4_GROUP)) {
            err += lns4_group_offset(group, f64::from(step)).1;
        }
        if err < best.0 {
            best = (err, step);
        }
    }
    best.1
}

/// A group's `lns4` offset for `step` and its squared value error: of the offsets that put the
/// group's largest magnitude at the top code or up to half a step above it (so it is still
/// within half a step of the log, the stated bound), the one with the least `Σ(|w| − |ŵ|)²`.
/// Moving the codes down a little trades the few largest weights' precision for the many small
/// ones'.
fn lns4_group_offset(group: &[f64], step: f64) -> (f16, f64) {
    let max_log = group_max_log(group);
    if !max_log.is_finite() {
        return (f16::ZERO, 0.0);
    }
    let mut best = (f16::ZERO, f64::INFINITY);
    for shift in [0.0, 0.125, 0.25, 0.375, 0.5] {
        let offset = group_offset_for(max_log - shift * step, step, MAX_Q4);
        // The f16 rounding of the offset may not leave the largest weight above the top code
        // by more than half a step.
        if (max_log - offset.to_f64()) / step > MAX_Q4 + 0.5 {
            continue;
        }
        let off = offset.to_f64();
        let err: f64 = group
            .iter()
            .map(|&w| {
                let q = quantize(w, off, step, MAX_Q4);
                let got = if q == 0 {
                    0.0
                } else {
                    (f64::from(q) * step + off).exp()
                };
                (w.abs() - got).powi(2)
            })
            .sum();
        if err < best.1 {
            best = (offset, err);
        }
    }
    best
}

/// Encodes one row into `lns4` bytes (`lns4_bytes_per_row`) and one offset per group.
/// Returns the index of the first non-finite weight.
pub(crate) fn encode_row4(
    row: &[f64],
    bytes: &mut [u8],
    offsets: &mut [f16],
    step: f32,
) -> Result<(), usize> {
    if let Some(i) = row.iter().position(|w| !w.is_finite()) {
        return Err(i);
    }
    let step = f64::from(step);
    bytes.fill(0);
    for (g, (group, offset)) in row.chunks(LNS4_GROUP).zip(offsets.iter_mut()).enumerate() {
        *offset = lns4_group_offset(group, step).0;
        let off = offset.to_f64();
        for (l, &w) in group.iter().enumerate() {
            let q = quantize(w, off, step, MAX_Q4);
            let code = q | if w.is_sign_negative() { 8 } else { 0 };
            let byte = &mut bytes[g * LNS4_GROUP_BYTES + l % LNS4_GROUP_BYTES];
            *byte |= if l < LNS4_GROUP_BYTES {
                code
            } else {
                code << 4
            };
        }
    }
    Ok(())
}

/// Rows per block of the table mode's layout ([`crate::ExpMode::Table`]).
pub(crate) const TABLE_ROWS: usize = 16;

/// Rearranges row-major `lns4` bytes and offsets (`n` rows of `k`) into the table mode's
/// blocks of [`TABLE_ROWS`] rows: per block and pair of columns `(2p, 2p+1)` 16 bytes, byte
/// `r` holding row `r`'s code of `2p` (low nibble) and `2p+1` (high); offsets per block,
/// group, row. Rows past `n` are zero codes.
pub(crate) fn lns4_table_blocks(
    bytes: &[u8],
    offsets: &[f16],
    n: usize,
    k: usize,
) -> (Vec<u8>, Vec<f16>) {
    let (groups, per_row) = (groups_per_row(k), lns4_bytes_per_row(k));
    let k_pad = groups * LNS4_GROUP;
    let blocks = n.div_ceil(TABLE_ROWS);
    let mut out = vec![0u8; blocks * TABLE_ROWS * k_pad / 2];
    let mut out_offsets = vec![f16::ZERO; blocks * groups * TABLE_ROWS];
    for j in 0..n {
        let (b, r) = (j / TABLE_ROWS, j % TABLE_ROWS);
        let row = &bytes[j * per_row..(j + 1) * per_row];
        for p in 0..k_pad / 2 {
            let (c0, c1) = (lns4_code(row, 2 * p), lns4_code(row, 2 * p + 1));
            out[b * TABLE_ROWS * k_pad / 2 + p * TABLE_ROWS + r] = c0 | (c1 << 4);
        }
        for g in 0..groups {
            out_offsets[(b * groups + g) * TABLE_ROWS + r] = offsets[j * groups + g];
        }
    }
    (out, out_offsets)
}

/// The code of weight `(j, i)` in the table mode's blocks (see [`lns4_table_blocks`]).
pub(crate) fn lns4_table_code(blocks: &[u8], k: usize, j: usize, i: usize) -> u8 {
    let k_pad = groups_per_row(k) * LNS4_GROUP;
    let (b, r) = (j / TABLE_ROWS, j % TABLE_ROWS);
    let byte = blocks[b * TABLE_ROWS * k_pad / 2 + (i / 2) * TABLE_ROWS + r];
    if i.is_multiple_of(2) {
        byte & 0x0f
    } else {
        byte >> 4
    }
}

/// `max ln|w|` over a group's non-zero weights (`-inf` for an all-zero group).
fn group_max_log(group: &[f64]) -> f64 {
    group
        .iter()
        .filter(|w| **w != 0.0)
        .map(|w| w.abs().ln())
        .fold(f64::NEG_INFINITY, f64::max)
}

/// The magnitude code of `w` against offset `off`: the nearest of `1..=max_q`, or zero when
/// `w` is nearer zero than the smallest code.
fn quantize(w: f64, off: f64, step: f64, max_q: f64) -> u8 {
    if w == 0.0 {
        return 0;
    }
    let q = ((w.abs().ln() - off) / step).round().min(max_q);
    if q >= 1.0 {
        q as u8
    } else if w.abs() >= 0.5 * (off + step).exp() {
        1
    } else {
        0
    }
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
                let half_step = 0.5 / f64::from(1u32 << LNS8_FRAC_BITS); // octaves
                let rel_bound = 2f64.powf(half_step) - 1.0;
                for (g, group) in row.chunks(LNS8_GROUP).enumerate() {
                    let max = group.iter().map(|w| w.abs()).fold(0.0, f64::max);
                    // The smallest code's value, ≈ max·2^(−126 steps) (the f16 offset moves it).
                    let v1 = decode_value(1, offsets[g]).abs();
                    let nominal = max * 2f64.powf(-126.0 * 2.0 * half_step);
                    assert!(
                        (v1 / nominal - 1.0).abs() < 0.03 || max == 0.0,
                        "{v1} vs {nominal}"
                    );
                    for (i, &w) in group.iter().enumerate() {
                        let c = codes[g * LNS8_GROUP + i];
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
    fn lns4_encoding_is_within_the_stated_error_for_its_step() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        for k in [1usize, 7, 31, 32, 33, 96, 200] {
            let rows: Vec<f64> = (0..8 * k)
                .map(|_| {
                    let v: f64 = rng.random_range(-1.0..1.0);
                    if rng.random_bool(0.03) {
                        0.0
                    } else {
                        v * 0.05
                    }
                })
                .collect();
            let step = lns4_step(&rows, k);
            assert!((0.05..=1.2).contains(&step), "{step}");
            let rel_bound = (f64::from(step) / 2.0).exp() - 1.0;
            for row in rows.chunks(k) {
                let mut bytes = vec![0xffu8; lns4_bytes_per_row(k)];
                let mut offsets = vec![f16::ZERO; groups_per_row(k)];
                encode_row4(row, &mut bytes, &mut offsets, step).unwrap();
                for (i, &w) in row.iter().enumerate() {
                    let (g, c) = (i / LNS4_GROUP, lns4_code(&bytes, i));
                    let got = decode_value4(c, offsets[g], step);
                    assert_eq!(got.is_sign_negative(), w.is_sign_negative(), "{w} → {got}");
                    let v1 = decode_value4(1, offsets[g], step);
                    let err = (got - w).abs();
                    let ok = if w.abs() >= v1 * (-f64::from(step) / 2.0).exp() {
                        err <= w.abs() * (rel_bound + 1e-6)
                    } else {
                        err <= v1 * (0.5 + 1e-6)
                    };
                    assert!(ok, "k {k} step {step}: {w:e} → {got:e}");
                }
                // Padding nibbles past the row are zero codes.
                for i in k..groups_per_row(k) * LNS4_GROUP {
                    assert_eq!(lns4_code(&bytes, i), 0);
                }
            }
        }
    }

    #[test]
    fn lns4_nibbles_are_laid_out_for_the_lanes() {
        // Weight i of a group in byte i's low nibble, weight 16 + i in its high one.
        let row: Vec<f64> = (0..32)
            .map(|i| {
                if i == 3 {
                    -1.0
                } else if i == 19 {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        let mut bytes = vec![0u8; 16];
        let mut offsets = vec![f16::ZERO; 1];
        encode_row4(&row, &mut bytes, &mut offsets, 0.5).unwrap();
        assert_eq!(
            bytes[3], 0x7f,
            "weight 3: −, code 7 (0xf); weight 19: +, code 7 (0x7)"
        );
        assert!(bytes.iter().enumerate().all(|(i, &b)| i == 3 || b == 0));
    }

    #[test]
    fn the_lns4_step_is_the_least_error_candidate() {
        // Gaussian-like weights (a sum of uniforms), as trained layers have, and uniform ones.
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let values: Vec<f64> = (0..4096)
            .map(|i| {
                if i < 2048 {
                    (0..4).map(|_| rng.random_range(-1.0..1.0f64)).sum::<f64>() * 0.02
                } else {
                    rng.random_range(-1.0..1.0f64) * 0.1
                }
            })
            .collect();
        let chosen = lns4_step(&values, 256);
        let err = |step: f32| {
            let mut e = 0.0;
            for row in values.chunks(256) {
                let mut bytes = vec![0u8; lns4_bytes_per_row(256)];
                let mut offsets = vec![f16::ZERO; groups_per_row(256)];
                encode_row4(row, &mut bytes, &mut offsets, step).unwrap();
                for (i, &w) in row.iter().enumerate() {
                    let c = lns4_code(&bytes, i);
                    let got = decode_value4(c, offsets[i / LNS4_GROUP], step);
                    e += (got - w).powi(2);
                }
            }
            e
        };
        for other in [0.1f32, 0.2, 0.3, 0.5, 0.8, 1.1] {
            assert!(err(chosen) <= err(other) * 1.0001, "{chosen} vs {other}");
        }
        // Each group's offset is the best of those its bound allows: no shift of it by a
        // fraction of a step within half a step of the largest weight does better.
        let step = f64::from(chosen);
        for group in values.chunks(LNS4_GROUP) {
            let (offset, err) = lns4_group_offset(group, step);
            let mut bytes = vec![0u8; LNS4_GROUP_BYTES];
            let mut offsets = [f16::ZERO];
            encode_row4(group, &mut bytes, &mut offsets, chosen).unwrap();
            assert_eq!(offsets[0], offset);
            let max_log = group_max_log(group);
            for t in 0..=20 {
                let off = f16::from_f64(max_log - 7.0 * step - 0.5 * step * f64::from(t) / 20.0);
                if (max_log - off.to_f64()) / step > MAX_Q4 + 0.5 {
                    continue;
                }
                let e: f64 = group
                    .iter()
                    .map(|&w| {
                        let q = quantize(w, off.to_f64(), step, MAX_Q4);
                        let got = if q == 0 {
                            0.0
                        } else {
                            (f64::from(q) * step + off.to_f64()).exp()
                        };
                        (w.abs() - got).powi(2)
                    })
                    .sum();
                // The search tries five shifts; a finer one may gain a little, not much.
                assert!(err <= e * 1.25 + 1e-300, "shift {t}/20: {err:e} vs {e:e}");
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
