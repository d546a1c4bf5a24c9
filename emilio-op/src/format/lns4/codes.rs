//! The codes of `lns4`, as slices: the step search, encoding a row, decoding a code, and the
//! table mode's blocks of rows. The kernels read these.
//!
//! Per weight a sign bit and a 3-bit log code, packed two to a byte, against an
//! `f16` offset per group of [`GROUP`] (4.5 bits per weight). Seven magnitudes are too few
//! for a fixed step, so the step is chosen per tensor (`choose_step`: the least squared error in
//! value over the tensor), and each group's offset puts its largest magnitude at the top code or
//! up to half a step above it, whichever leaves the group the least squared error. Error per
//! weight, with `s` the tensor's step: relative at most `e^(s/2) − 1` down to `v₁`, the smallest
//! code's value (`M·e^(−6.5s)` to `M·e^(−6s)`), the rest to the nearer of zero and `v₁`. Seven
//! magnitudes are coarse for a trained model: SmolLM2's mean KL against stock is ≈0.4
//! (`docs/performance.md`); `lns4` is the dial's far end, not a faithful format.

use half::f16;

use crate::format::lns::{group_max_log, group_offset_for, quantize};

/// `lns4`'s group: weights per offset along `K`, and the 16 bytes that hold their codes (byte
/// `i` holds weight `i` in its low nibble and weight `16 + i` in its high one, so that a SIMD
/// lane `l` reads weight `l` of the group without a shuffle).
pub const GROUP: usize = 32;
const GROUP_BYTES: usize = GROUP / 2;
/// The largest `lns4` magnitude code (3 bits; 0 is zero).
const MAX_Q: f64 = 7.0;

/// Offsets per row of `k` weights.
pub(crate) fn groups_per_row(k: usize) -> usize {
    k.div_ceil(GROUP)
}

/// Code bytes per row of `k` weights (whole groups: a partial last one is padded with zeros).
pub(crate) fn bytes_per_row(k: usize) -> usize {
    groups_per_row(k) * GROUP_BYTES
}

/// The code of weight `i` of a row of `lns4` bytes: sign in bit 3, magnitude in bits 0–2.
#[inline(always)]
pub(crate) fn code_at(bytes: &[u8], i: usize) -> u8 {
    let (g, l) = (i / GROUP, i % GROUP);
    let byte = bytes[g * GROUP_BYTES + l % GROUP_BYTES];
    if l < GROUP_BYTES {
        byte & 0x0f
    } else {
        byte >> 4
    }
}

/// `ln|w|` of an `lns4` code, as the tile conversion computes it (unfused): `-inf` for zero.
#[inline(always)]
pub(crate) fn decode_log(code: u8, offset: f32, step: f32) -> f32 {
    let q = code & 7;
    if q == 0 {
        f32::NEG_INFINITY
    } else {
        q as f32 * step + offset
    }
}

/// The weight an `lns4` code stands for, in `f64`.
pub(crate) fn decode_value(code: u8, offset: f16, step: f32) -> f64 {
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
/// by [`group_offset`].
///
/// Why value and not log error: what a matmul adds up is the weights' values, so a small
/// weight's error costs little and a large one's much. The least *log* error (every weight
/// alike, a zeroed one counted as the smallest code) spends the codes on range the small
/// weights need and the sums do not: on SmolLM2 (`emilio eval`, 2 chunks of 512 tokens) its
/// median KL against stock was 1.39 and the same top-1 41.6%; with this objective and the
/// offset search, 0.37 and 66.7%, at steps of 0.325–0.375. This objective is the log error
/// weighted by `w²` to first order.
pub(crate) fn choose_step(values: &[f64], row: usize) -> f32 {
    let candidates = (2..=48).map(|i| i as f64 * 0.025);
    let mut best = (f64::INFINITY, 0.25);
    for step in candidates {
        let step = step as f32;
        let mut err = 0.0;
        for group in values.chunks(row.max(1)).flat_map(|r| r.chunks(GROUP)) {
            err += group_offset(group, f64::from(step)).1;
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
fn group_offset(group: &[f64], step: f64) -> (f16, f64) {
    let max_log = group_max_log(group);
    if !max_log.is_finite() {
        return (f16::ZERO, 0.0);
    }
    let mut best = (f16::ZERO, f64::INFINITY);
    for shift in [0.0, 0.125, 0.25, 0.375, 0.5] {
        let offset = group_offset_for(max_log - shift * step, step, MAX_Q);
        // The f16 rounding of the offset may not leave the largest weight above the top code
        // by more than half a step.
        if (max_log - offset.to_f64()) / step > MAX_Q + 0.5 {
            continue;
        }
        let off = offset.to_f64();
        let err: f64 = group
            .iter()
            .map(|&w| {
                let q = quantize(w, off, step, MAX_Q);
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

/// Encodes one row into `lns4` bytes (`bytes_per_row`) and one offset per group.
/// Returns the index of the first non-finite weight.
pub(crate) fn encode_row(
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
    for (g, (group, offset)) in row.chunks(GROUP).zip(offsets.iter_mut()).enumerate() {
        *offset = group_offset(group, step).0;
        let off = offset.to_f64();
        for (l, &w) in group.iter().enumerate() {
            let q = quantize(w, off, step, MAX_Q);
            let code = q | if w.is_sign_negative() { 8 } else { 0 };
            let byte = &mut bytes[g * GROUP_BYTES + l % GROUP_BYTES];
            *byte |= if l < GROUP_BYTES { code } else { code << 4 };
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
pub(crate) fn table_blocks(
    bytes: &[u8],
    offsets: &[f16],
    n: usize,
    k: usize,
) -> (Vec<u8>, Vec<f16>) {
    let (groups, per_row) = (groups_per_row(k), bytes_per_row(k));
    let k_pad = groups * GROUP;
    let blocks = n.div_ceil(TABLE_ROWS);
    let mut out = vec![0u8; blocks * TABLE_ROWS * k_pad / 2];
    let mut out_offsets = vec![f16::ZERO; blocks * groups * TABLE_ROWS];
    for j in 0..n {
        let (b, r) = (j / TABLE_ROWS, j % TABLE_ROWS);
        let row = &bytes[j * per_row..(j + 1) * per_row];
        for p in 0..k_pad / 2 {
            let (c0, c1) = (code_at(row, 2 * p), code_at(row, 2 * p + 1));
            out[b * TABLE_ROWS * k_pad / 2 + p * TABLE_ROWS + r] = c0 | (c1 << 4);
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
    let byte = blocks[b * TABLE_ROWS * k_pad / 2 + (i / 2) * TABLE_ROWS + r];
    if i.is_multiple_of(2) {
        byte & 0x0f
    } else {
        byte >> 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

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
            let step = choose_step(&rows, k);
            assert!((0.05..=1.2).contains(&step), "{step}");
            let rel_bound = (f64::from(step) / 2.0).exp() - 1.0;
            for row in rows.chunks(k) {
                let mut bytes = vec![0xffu8; bytes_per_row(k)];
                let mut offsets = vec![f16::ZERO; groups_per_row(k)];
                encode_row(row, &mut bytes, &mut offsets, step).unwrap();
                for (i, &w) in row.iter().enumerate() {
                    let (g, c) = (i / GROUP, code_at(&bytes, i));
                    let got = decode_value(c, offsets[g], step);
                    assert_eq!(got.is_sign_negative(), w.is_sign_negative(), "{w} → {got}");
                    let v1 = decode_value(1, offsets[g], step);
                    let err = (got - w).abs();
                    let ok = if w.abs() >= v1 * (-f64::from(step) / 2.0).exp() {
                        err <= w.abs() * (rel_bound + 1e-6)
                    } else {
                        err <= v1 * (0.5 + 1e-6)
                    };
                    assert!(ok, "k {k} step {step}: {w:e} → {got:e}");
                }
                // Padding nibbles past the row are zero codes.
                for i in k..groups_per_row(k) * GROUP {
                    assert_eq!(code_at(&bytes, i), 0);
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
        encode_row(&row, &mut bytes, &mut offsets, 0.5).unwrap();
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
        let chosen = choose_step(&values, 256);
        let err = |step: f32| {
            let mut e = 0.0;
            for row in values.chunks(256) {
                let mut bytes = vec![0u8; bytes_per_row(256)];
                let mut offsets = vec![f16::ZERO; groups_per_row(256)];
                encode_row(row, &mut bytes, &mut offsets, step).unwrap();
                for (i, &w) in row.iter().enumerate() {
                    let c = code_at(&bytes, i);
                    let got = decode_value(c, offsets[i / GROUP], step);
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
        for group in values.chunks(GROUP) {
            let (offset, err) = group_offset(group, step);
            let mut bytes = vec![0u8; GROUP_BYTES];
            let mut offsets = [f16::ZERO];
            encode_row(group, &mut bytes, &mut offsets, chosen).unwrap();
            assert_eq!(offsets[0], offset);
            let max_log = group_max_log(group);
            for t in 0..=20 {
                let off = f16::from_f64(max_log - 7.0 * step - 0.5 * step * f64::from(t) / 20.0);
                if (max_log - off.to_f64()) / step > MAX_Q + 0.5 {
                    continue;
                }
                let e: f64 = group
                    .iter()
                    .map(|&w| {
                        let q = quantize(w, off.to_f64(), step, MAX_Q);
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
}
