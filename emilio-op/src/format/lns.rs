//! What the lns formats share: a group's offset and a weight's nearest code.

use half::f16;

/// Why no lns format runs the `lmul` mode.
pub(crate) fn lmul_reason(format: &str) -> String {
    format!(
        "lmul reads both operands' logs from their float bits, and {format} codes are not float \
         bits; use lmul with f16 or f32 weights, or {format} with the exact, fast or mitchell exp"
    )
}

/// The offset that puts `max_log` at the top code `max_q`: `max_log − max_q·step` rounded to
/// `f16`, moved up by f16 ulps while the rounding left `max_log` more than half a step above
/// the top code.
pub(crate) fn group_offset_for(max_log: f64, step: f64, max_q: f64) -> f16 {
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

/// `max ln|w|` over a group's non-zero weights (`-inf` for an all-zero group).
pub(crate) fn group_max_log(group: &[f64]) -> f64 {
    group
        .iter()
        .filter(|w| **w != 0.0)
        .map(|w| w.abs().ln())
        .fold(f64::NEG_INFINITY, f64::max)
}

/// The magnitude code of `w` against offset `off`: the nearest of `1..=max_q`, or zero when
/// `w` is nearer zero than the smallest code.
pub(crate) fn quantize(w: f64, off: f64, step: f64, max_q: f64) -> u8 {
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
