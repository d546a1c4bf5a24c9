//! The cheaper `exp`s of [`ExpMode`](crate::ExpMode) (`fast`, `mitchell`, `lmul`) and
//! Mitchell's log, for one `f32` lane, branch-free so that loops over lanes vectorise.
//!
//! All three reduce in base 2: `t = x·log₂e` (plus a mode's offset), `n` an integer near `t`,
//! `f = t − n` (exact), then `2ⁿ` is applied as in [`super::exp::exp_f32`], by two exact
//! power-of-two factors, so that overflow gives `+inf` and underflow rounds once (gradually).
//! The AVX-512 kernels compute the same with `vroundscaleps` and `vscalefps`, bit for bit.

use super::exp::consts::{LOG2E, ROUND_MAGIC, X_MAX};
use super::exp::madd;

/// `2^f ≈ c₀ + c₁f + … + c₄f⁴` on `|f| ≤ ½`, highest degree first: a relative-minimax fit
/// (iteratively reweighted least squares on Chebyshev nodes, rounded to f32) with a maximum
/// relative error of 2.64·10⁻⁶.
pub(crate) const FAST_POLY: [f32; 5] = [
    0.009_570_097,
    0.055_917_863,
    0.240_247_44,
    0.693_121_8,
    0.999_999_3,
];

/// Mitchell's offset: `log₂(1/E[(1+v)·2^−v])` for `v` uniform on `[0, 1)`, the shift of `t`
/// that makes the mean relative error of `2^⌊t⌋·(1 + frac t)` zero.
pub(crate) const MITCHELL_SIGMA: f32 = -0.057_532_746;

/// L-Mul's offset `2^−l(m)` with `l(m) = 4` (mantissas of more than 4 bits), in units of the
/// exponent: the term that stands for the dropped product of the two mantissas.
pub(crate) const LMUL_OFFSET: f32 = 0.0625;

/// Below this every mode's `e^x` is zero: one unit lower than the exact exp's clamp, since
/// L-Mul's positive offset would otherwise round `e^−104` up to the smallest subnormal.
/// Clamping keeps `n` in `[−152, 128]`, where both power-of-two factors stay normal numbers.
pub(crate) const X_MIN: f32 = -105.0;

/// `ln 2 · 2⁻²³`: one unit of a float's bit pattern, as a natural log.
const LN2_PER_BIT: f32 = std::f32::consts::LN_2 / 8_388_608.0;

/// `t` rounded to the nearest integer, ties to even, for `|t| < 2²²`.
#[inline(always)]
fn round_even(t: f32) -> f32 {
    (t + ROUND_MAGIC) - ROUND_MAGIC
}

/// `p·2ⁿ` for an integer `n` in `[−152, 128]`, rounded once (as `vscalefps`).
#[inline(always)]
fn scale(p: f32, n: f32) -> f32 {
    let n = n as i32;
    let n1 = n >> 1;
    let n2 = n - n1;
    let s1 = f32::from_bits(((n1 + 127) as u32) << 23);
    let s2 = f32::from_bits(((n2 + 127) as u32) << 23);
    (p * s1) * s2
}

/// The `fast` mode's `e^x`: relative error ≤ 3·10⁻⁶ + |x|·2⁻²³.
#[inline(always)]
pub(crate) fn exp_fast<const FMA: bool>(x: f32) -> f32 {
    let t = x.clamp(X_MIN, X_MAX) * LOG2E;
    let n = round_even(t);
    let f = t - n;
    let mut p = FAST_POLY[0];
    for &c in &FAST_POLY[1..] {
        p = madd::<FMA>(p, f, c);
    }
    let y = scale(p, n);
    if x.is_nan() {
        x
    } else {
        y
    }
}

/// Mitchell's `e^x`: `2^⌊t⌋·(1 + t − ⌊t⌋)` with `t = x·log₂e + sigma`.
#[inline(always)]
pub(crate) fn exp_mitchell<const FMA: bool>(x: f32, sigma: f32) -> f32 {
    let t = madd::<FMA>(x.clamp(X_MIN, X_MAX), LOG2E, sigma);
    let r = round_even(t);
    let n = if r > t { r - 1.0 } else { r };
    let y = scale(1.0 + (t - n), n);
    if x.is_nan() {
        x
    } else {
        y
    }
}

/// Mitchell's `ln|x|`: `ln 2·(e + m)` for `|x| = 2^e·(1 + m)`, read from the bits. A subnormal
/// is normalised first (scaled by 2²³, exactly, and its exponent lowered by 23), so that its
/// log errs no more than a normal number's. `ln 0 = −inf`; infinities and NaN keep their
/// meaning.
#[inline(always)]
pub(crate) fn ln_mitchell(x: f32) -> f32 {
    let bits = x.to_bits() & 0x7fff_ffff;
    let subnormal = bits < 0x0080_0000;
    let scaled = (f32::from_bits(bits) * 8_388_608.0).to_bits();
    let (bits_n, shift) = if subnormal {
        (scaled, 23 << 23)
    } else {
        (bits, 0)
    };
    let log = ((bits_n as i32) - 0x3f80_0000 - shift) as f32 * LN2_PER_BIT;
    if bits == 0 {
        f32::NEG_INFINITY
    } else if bits >= 0x7f80_0000 {
        f32::from_bits(bits) // +inf and NaN
    } else {
        log
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Relative error of `approx` against f64's exp over a dense sweep of `x`, excluding
    /// results outside the normal range (underflow and overflow are tested apart).
    fn sweep(approx: impl Fn(f32) -> f32) -> (f64, f64) {
        let (mut lo, mut hi) = (0f64, 0f64);
        let max = 87f32.to_bits();
        for bits in (0..=max).step_by(97) {
            for x in [f32::from_bits(bits), -f32::from_bits(bits)] {
                let want = (x as f64).exp();
                let rel = approx(x) as f64 / want - 1.0;
                lo = lo.min(rel);
                hi = hi.max(rel);
            }
        }
        (lo, hi)
    }

    #[test]
    fn fast_exp_is_within_its_bound() {
        for fma in [false, true] {
            let e = |x: f32| {
                if fma {
                    exp_fast::<true>(x)
                } else {
                    exp_fast::<false>(x)
                }
            };
            let max = 87f32.to_bits();
            for bits in (0..=max).step_by(97) {
                for x in [f32::from_bits(bits), -f32::from_bits(bits)] {
                    let bound = crate::ExpMode::Fast.error_bound(x as f64);
                    let rel = (e(x) as f64 / (x as f64).exp() - 1.0).abs();
                    assert!(rel <= bound, "fma {fma}, x = {x:e}: {rel:e} > {bound:e}");
                }
            }
        }
    }

    #[test]
    fn mitchell_exp_has_zero_mean_error_and_stays_in_its_range() {
        let (lo, hi) = sweep(|x| exp_mitchell::<true>(x, MITCHELL_SIGMA));
        assert!(lo >= -0.0392 && hi <= 0.0201, "[{lo}, {hi}]");
        assert!(
            lo < -0.039 && hi > 0.0199,
            "the sweep reaches both ends: [{lo}, {hi}]"
        );
        // The mean over a fine grid of fractional parts of t is zero.
        let n = 1 << 16;
        let mean: f64 = (0..n)
            .map(|i| {
                let t = 3.0 + i as f64 / n as f64;
                let x = (t * std::f64::consts::LN_2) as f32;
                exp_mitchell::<true>(x, MITCHELL_SIGMA) as f64 / (x as f64).exp() - 1.0
            })
            .sum::<f64>()
            / n as f64;
        assert!(mean.abs() < 1e-5, "mean relative error {mean:e}");
    }

    #[test]
    fn mitchell_exp_reads_the_fixed_point_bits_of_t() {
        // For a normal result, the value is the float whose bits are (t + 127)·2²³.
        for &t in &[-20.3f32, -1.0, -0.75, 0.0, 0.3, 5.999, 17.5, 100.01] {
            let x = t / LOG2E; // sigma = 0 and x·log2e = t up to rounding
            let t = x * LOG2E;
            let bits = ((t as f64 + 127.0) * 8_388_608.0).round() as u32;
            let got = exp_mitchell::<false>(x, 0.0).to_bits();
            assert!(got.abs_diff(bits) <= 1, "t = {t}: {got:#x} vs {bits:#x}");
        }
    }

    #[test]
    fn specials_keep_their_meaning() {
        type Exp = fn(f32) -> f32;
        let exps: [(&str, Exp); 3] = [
            ("fast", exp_fast::<true>),
            ("mitchell", |x| exp_mitchell::<true>(x, MITCHELL_SIGMA)),
            ("lmul", |x| exp_mitchell::<false>(x, LMUL_OFFSET)),
        ];
        for (name, e) in exps {
            assert_eq!(e(f32::NEG_INFINITY).to_bits(), 0, "{name}");
            assert_eq!(e(f32::INFINITY), f32::INFINITY, "{name}");
            assert!(e(f32::NAN).is_nan(), "{name}");
            assert_eq!(e(1e30), f32::INFINITY, "{name}");
            assert_eq!(e(-1e30).to_bits(), 0, "{name}");
            assert_eq!(e(89.0), f32::INFINITY, "{name}: overflow");
            // Gradual underflow: a subnormal, then zero.
            let sub = e(-95.0);
            assert!(sub > 0.0 && sub < f32::MIN_POSITIVE, "{name}: {sub:e}");
            assert!((sub as f64 / (-95f64).exp() - 1.0).abs() < 0.12, "{name}");
        }
    }

    #[test]
    fn mitchell_log_reads_the_bits() {
        for &(x, e_plus_m) in &[(1.0f32, 0.0f64), (2.0, 1.0), (3.0, 1.5), (0.75, -0.5)] {
            let want = e_plus_m * std::f64::consts::LN_2;
            assert!((ln_mitchell(x) as f64 - want).abs() < 1e-6, "{x}");
            assert_eq!(ln_mitchell(-x), ln_mitchell(x));
        }
        assert_eq!(ln_mitchell(0.0), f32::NEG_INFINITY);
        assert_eq!(ln_mitchell(-0.0), f32::NEG_INFINITY);
        assert_eq!(ln_mitchell(f32::NEG_INFINITY), f32::INFINITY);
        assert!(ln_mitchell(f32::NAN).is_nan());
        // Subnormals are normalised: the smallest is 2^−149 exactly, 3·2^−140 = 1.5·2^−139
        // reads as −139 + 0.5.
        let tiny = ln_mitchell(f32::from_bits(1)) as f64 / std::f64::consts::LN_2;
        assert!((tiny - -149.0).abs() < 1e-4, "{tiny}");
        let sub = ln_mitchell(f32::from_bits(3 << 9)) as f64 / std::f64::consts::LN_2;
        assert!((sub - -138.5).abs() < 1e-4, "{sub}");
    }

    #[test]
    fn lmul_of_two_normal_floats_is_within_its_range() {
        // L-Mul's error depends only on the two mantissas: sweep them on a grid.
        let (mut lo, mut hi) = (0f64, 0f64);
        for i in 0..512 {
            for j in 0..512 {
                let a = (1.0 + i as f32 / 512.0) * 4.0;
                let b = (1.0 + j as f32 / 512.0) / 8.0;
                let p = exp_mitchell::<true>(ln_mitchell(a) + ln_mitchell(b), LMUL_OFFSET);
                let rel = p as f64 / (a as f64 * b as f64) - 1.0;
                lo = lo.min(rel);
                hi = hi.max(rel);
            }
        }
        assert!(lo >= -0.0729 && hi <= 0.0626, "[{lo}, {hi}]");
        assert!(lo < -0.072 && hi > 0.062, "[{lo}, {hi}]");
    }
}
