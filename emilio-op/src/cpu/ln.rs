//! A branch-free `f32` natural log that the compiler vectorises, for splitting activations.
//!
//! Splitting runs once per operand element per call, which in decode attention is as often as
//! the products themselves (every cached key and value, every step): libm's `logf`, one call
//! per element, cost as much there as all the `exp`s. This is Cephes' `logf` (reduction to
//! `m ∈ [√½, √2)`, a degree-8 polynomial for `ln(1+f)`, `ln 2` in two parts) written without
//! branches, with subnormal inputs normalised first. It takes `|x|`, as the split does.
//! Measured error: see the sweep test (≤ 1 ulp required: the error budget assumes a log no
//! worse than libm's).

use super::approx::ln_mitchell;
use super::exp::madd;
use super::isa::Isa;
use crate::ExpMode;

/// Cephes `logf` polynomial, highest degree first.
const P: [f32; 9] = [
    0.070_376_836,
    -0.115_146_11,
    0.116_769_99,
    -0.124_201_41,
    0.142_493_23,
    -0.166_680_57,
    0.200_007_16,
    -0.249_999_94,
    0.333_333_3,
];
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const SQRT_HALF_BITS: i32 = 0x3f35_04f3;

/// `ln(x)` for `x ≥ 0` (or NaN): `ln 0 = -inf`, `ln inf = inf`, NaN stays NaN.
#[inline(always)]
pub(crate) fn ln_f32<const FMA: bool>(x: f32) -> f32 {
    let subnormal = x < f32::MIN_POSITIVE;
    let xs = if subnormal { x * 8_388_608.0 } else { x }; // · 2²³, exact
                                                          // Split xs = 2^e · m with m in [√½, √2): offset the bits so the mantissa range starts at √½.
    let t = (xs.to_bits() as i32).wrapping_sub(SQRT_HALF_BITS);
    let e = (t >> 23) - if subnormal { 23 } else { 0 };
    let m = f32::from_bits(((t & 0x007f_ffff) + SQRT_HALF_BITS) as u32);
    let f = m - 1.0;
    let e = e as f32;
    let z = f * f;
    let mut p = P[0];
    for &c in &P[1..] {
        p = madd::<FMA>(p, f, c);
    }
    let y = f * z * p;
    let y = madd::<FMA>(e, LN2_LO, y);
    let y = madd::<FMA>(-0.5, z, y);
    let r = madd::<FMA>(e, LN2_HI, f + y);
    if x == 0.0 {
        f32::NEG_INFINITY
    } else if x.is_nan() || x == f32::INFINITY {
        x // +inf and NaN
    } else {
        r
    }
}

/// `(ln|x|, sign mask)` of every element of `src`: the split of one contiguous row.
#[inline(always)]
fn split_row_lanes<const FMA: bool>(src: &[f32], logs: &mut [f32], masks: &mut [u32]) {
    for ((x, l), m) in src.iter().zip(logs.iter_mut()).zip(masks.iter_mut()) {
        *l = ln_f32::<FMA>(x.abs());
        *m = x.to_bits() & 0x8000_0000;
    }
}

/// The split of a contiguous `f32` row, vectorised for this CPU: natural logs, or with
/// `mode` [`ExpMode::Lmul`] Mitchell's, read from the bits.
pub(crate) fn split_row_f32(mode: ExpMode, src: &[f32], logs: &mut [f32], masks: &mut [u32]) {
    assert!(logs.len() == src.len() && masks.len() == src.len());
    if mode.reads_logs_from_bits() {
        for ((x, l), m) in src.iter().zip(logs.iter_mut()).zip(masks.iter_mut()) {
            *l = ln_mitchell(*x);
            *m = x.to_bits() & 0x8000_0000;
        }
        return;
    }
    match Isa::get() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only detected on CPUs with AVX-512F, AVX2 and FMA.
        Isa::Avx512 => unsafe { x86::split_avx512(src, logs, masks) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only detected on CPUs with AVX2 and FMA.
        Isa::Avx2 => unsafe { x86::split_avx2(src, logs, masks) },
        Isa::Neon => split_row_lanes::<true>(src, logs, masks),
        _ => split_row_lanes::<false>(src, logs, masks),
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::split_row_lanes;

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) fn split_avx512(src: &[f32], logs: &mut [f32], masks: &mut [u32]) {
        split_row_lanes::<true>(src, logs, masks)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn split_avx2(src: &[f32], logs: &mut [f32], masks: &mut [u32]) {
        split_row_lanes::<true>(src, logs, masks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> u32 {
        if a.to_bits() >> 31 != b.to_bits() >> 31 {
            return (a.to_bits() & 0x7fff_ffff) + (b.to_bits() & 0x7fff_ffff);
        }
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    fn sweep<const FMA: bool>() -> (u32, f32) {
        let (mut worst, mut at) = (0, 0.0);
        // Every 37th bit pattern of the positive floats, subnormals to the largest finite.
        for bits in (1..0x7f80_0000u32)
            .step_by(37)
            .chain([0x7f7f_ffff, 1, 0x0080_0000])
        {
            let x = f32::from_bits(bits);
            let want = (x as f64).ln() as f32;
            let u = ulps(ln_f32::<FMA>(x), want);
            if u > worst {
                (worst, at) = (u, x);
            }
        }
        (worst, at)
    }

    #[test]
    fn within_one_ulp_over_all_positive_floats() {
        for (fma, (worst, at)) in [(false, sweep::<false>()), (true, sweep::<true>())] {
            eprintln!("ln_f32 (fma {fma}): worst {worst} ulp at x = {at:e}");
            assert!(worst <= 1, "fma {fma}: {worst} ulp at x = {at:e}");
        }
    }

    #[test]
    fn specials() {
        assert_eq!(ln_f32::<true>(0.0), f32::NEG_INFINITY);
        assert_eq!(ln_f32::<true>(f32::INFINITY), f32::INFINITY);
        assert!(ln_f32::<true>(f32::NAN).is_nan());
        assert_eq!(ln_f32::<true>(1.0), 0.0);
    }

    #[test]
    fn split_row_matches_the_scalar_split() {
        let src: Vec<f32> = (0..1000)
            .map(|i| match i % 7 {
                0 => -0.0,
                1 => f32::from_bits(i as u32 * 977),
                2 => -(i as f32) * 1e-3,
                3 => f32::INFINITY,
                4 => f32::NAN,
                _ => (i as f32).sin() * 1e3,
            })
            .collect();
        let (mut logs, mut masks) = (vec![0f32; src.len()], vec![0u32; src.len()]);
        split_row_f32(ExpMode::Exact, &src, &mut logs, &mut masks);
        for (i, &x) in src.iter().enumerate() {
            // Whichever build runs (EMILIO_CPU_ISA may select one without FMA).
            let (a, b) = (ln_f32::<true>(x.abs()), ln_f32::<false>(x.abs()));
            let got = logs[i];
            assert!(
                got.to_bits() == a.to_bits()
                    || got.to_bits() == b.to_bits()
                    || (a.is_nan() && got.is_nan()),
                "element {i}"
            );
            assert_eq!(masks[i], x.to_bits() & 0x8000_0000);
        }
    }
}
