//! A branch-free `f32` exp that the compiler vectorises, within 2 ulp over the whole range.
//!
//! libm's `expf` is accurate but a call per element: it keeps the dot product scalar. This one
//! is plain arithmetic on one lane, written so that a loop over lanes compiles to SIMD
//! (AVX-512, AVX2, NEON, or SSE2 at worst) with no table and no branch:
//!
//! 1. `n = round(x·log₂e)` by the add-a-magic-number trick, `r = x − n·ln2` in two parts
//!    (Cody–Waite), so `|r| ≤ ln2/2` with an error far below an ulp of the result;
//! 2. `exp(r)` by a degree-6 polynomial (see [`consts::POLY`]: 0.06 ulp of approximation error);
//! 3. `2ⁿ` applied as two exact power-of-two factors `2^(n/2)·2^(n−n/2)`, so results that are
//!    subnormal are rounded once, by the last multiply: gradual underflow, as IEEE asks.
//!
//! Inputs past the overflow threshold give `+inf`, past the underflow threshold `+0`, `-inf`
//! gives `+0` and NaN stays NaN. Measured error: see the sweep test below (≤ 2 ulp required).

/// The constants of the algorithm, shared with the intrinsics kernels so both compute the same.
pub(crate) mod consts {
    pub const LOG2E: f32 = std::f32::consts::LOG2_E;
    /// `1.5·2²³`: adding it rounds to an integer held in the low mantissa bits.
    pub const ROUND_MAGIC: f32 = 12_582_912.0;
    /// `ln 2` split so that `n·LN2_HI` is exact for `|n| ≤ 2⁸`.
    pub const LN2_HI: f32 = 0.693_359_4;
    pub const LN2_LO: f32 = -2.121_944_4e-4;
    /// Beyond these `exp` is `+inf` / below the smallest subnormal; clamping keeps `n` in
    /// `[-150, 128]` so both power-of-two factors stay normal numbers.
    pub const X_MAX: f32 = 89.0;
    pub const X_MIN: f32 = -104.0;
    /// `e^r ≈ 1 + r + r²/2 + r³·(c₃ + c₄r + c₅r² + c₆r³)` on `|r| ≤ ln2/2`, highest degree
    /// first. The leading terms are exact; c₃…c₆ are a relative-minimax fit (iteratively
    /// reweighted least squares on Chebyshev nodes, then rounded to f32): approximation error
    /// 3.8·10⁻⁹ (0.06 ulp), one multiply-add fewer than the degree-7 Taylor series it replaces.
    pub const POLY: [f32; 7] = [
        0.001_386_378_7,
        0.008_367_476,
        0.041_667_238,
        0.166_665_35,
        0.5,
        1.0,
        1.0,
    ];
}

use consts::*;

/// `a·b + c`, fused where the target has FMA (`FMA = true`), else a multiply and an add: a
/// software `fma` call would cost more than the whole exp.
#[inline(always)]
pub(crate) fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `e^x` for one lane. `FMA` must only be `true` in code compiled with the `fma` feature.
#[inline(always)]
pub(crate) fn exp_f32<const FMA: bool>(x: f32) -> f32 {
    // A NaN goes through the arithmetic as garbage bits; the final select restores it.
    let xc = x.clamp(X_MIN, X_MAX);
    let t = madd::<FMA>(xc, LOG2E, ROUND_MAGIC);
    let n_f = t - ROUND_MAGIC;
    let n = (t.to_bits() as i32) - (ROUND_MAGIC.to_bits() as i32);
    let r = madd::<FMA>(-n_f, LN2_HI, xc);
    let r = madd::<FMA>(-n_f, LN2_LO, r);
    // Horner, highest degree first.
    let mut p = POLY[0];
    for &c in &POLY[1..] {
        p = madd::<FMA>(p, r, c);
    }
    let n1 = n >> 1;
    let n2 = n - n1;
    let s1 = f32::from_bits(((n1 + 127) as u32) << 23);
    let s2 = f32::from_bits(((n2 + 127) as u32) << 23);
    let y = (p * s1) * s2;
    if x.is_nan() {
        x
    } else {
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in representable f32 values between two non-negative finite-or-inf floats.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    /// The correctly rounded `e^x` (f64 exp is accurate to well under an f32 ulp; ties, where
    /// double rounding could differ, are vanishingly rare and within the 2-ulp allowance).
    fn reference(x: f32) -> f32 {
        (x as f64).exp() as f32
    }

    fn sweep<const FMA: bool>() -> (u32, f32) {
        let (mut worst, mut at) = (0u32, 0f32);
        // Every 61st f32 bit pattern of both signs up to |x| = 105 (≈ 35M points), dense
        // enough to cover every exponent and mantissa region, subnormal results included.
        let max = 105f32.to_bits();
        for bits in (0..=max).step_by(61).chain([max]) {
            for x in [f32::from_bits(bits), -f32::from_bits(bits)] {
                let (got, want) = (exp_f32::<FMA>(x), reference(x));
                let u = ulps(got, want);
                if u > worst {
                    (worst, at) = (u, x);
                }
            }
        }
        (worst, at)
    }

    #[test]
    fn within_two_ulp_over_the_whole_range_without_fma() {
        let (worst, at) = sweep::<false>();
        eprintln!("exp_f32 without FMA: worst {worst} ulp at x = {at:e}");
        assert!(worst <= 2, "{worst} ulp at x = {at:e}");
    }

    #[test]
    fn within_two_ulp_over_the_whole_range_with_fma() {
        // `mul_add` is exact with or without hardware FMA, so this runs everywhere.
        let (worst, at) = sweep::<true>();
        eprintln!("exp_f32 with FMA: worst {worst} ulp at x = {at:e}");
        assert!(worst <= 2, "{worst} ulp at x = {at:e}");
    }

    #[test]
    fn overflow_and_underflow_edges() {
        // Largest x with a finite exp, and the next float up.
        let last_finite = 88.722_83_f32;
        let first_inf = f32::from_bits(last_finite.to_bits() + 1);
        assert!(reference(last_finite).is_finite());
        for fma in [false, true] {
            let e = |x: f32| {
                if fma {
                    exp_f32::<true>(x)
                } else {
                    exp_f32::<false>(x)
                }
            };
            assert!(
                e(last_finite).is_finite() && ulps(e(last_finite), reference(last_finite)) <= 2
            );
            assert_eq!(
                e(first_inf),
                reference(first_inf),
                "first x past the overflow edge"
            );
            assert_eq!(e(f32::INFINITY), f32::INFINITY);
            assert_eq!(e(1e30), f32::INFINITY);
            assert_eq!(e(f32::NEG_INFINITY).to_bits(), 0);
            assert_eq!(e(-1e30).to_bits(), 0);
            assert!(e(f32::NAN).is_nan());
            assert_eq!(e(0.0), 1.0);
            assert_eq!(e(-0.0), 1.0);
            // Subnormal results, down to the smallest one and the rounding to zero below it.
            for x in [
                -87.5f32, -90.0, -100.0, -103.0, -103.27, -103.28, -103.9, -103.98,
            ] {
                let (got, want) = (e(x), reference(x));
                assert!(ulps(got, want) <= 2, "x = {x}: got {got:e}, want {want:e}");
            }
        }
    }
}
