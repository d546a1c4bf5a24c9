//! AVX-512 kernels written with intrinsics: the same arithmetic as the portable kernels, in
//! about half the instructions.
//!
//! The portable `exp` spends a third of its work applying `2ⁿ` through integer tricks and
//! guarding NaN; AVX-512 does both in one `vscalefps` (`p·2^⌊n⌋`, correctly rounded, gradual
//! underflow and overflow included). f16 magnitudes widen with one `vcvtph2ps`, and a packed
//! sign word becomes a lane mask as it is. Lane assignment, accumulation and reduction order are
//! those of the portable kernels with 32 accumulators, so results are bit-identical to them
//! (tested below), and the portable code stays the reference.

use std::arch::x86_64::*;

use half::f16;

use super::exp_kernel::{Exact, ExpKernel, Fast, Lmul, Mitchell};

/// `e^x` for 16 lanes: the reduction and polynomial of [`super::exp::exp_f32`] with fused
/// multiply-adds, and `2ⁿ` applied by `vscalefps`. Bit-identical to `exp_f32::<true>`.
#[inline]
#[target_feature(enable = "avx512f")]
fn exp16(x: __m512) -> __m512 {
    use super::exp::consts::*;
    // MINPS/MAXPS return their second operand when either is NaN: with `x` second, a NaN
    // passes both clamps and propagates through the arithmetic to the result.
    let x = _mm512_min_ps(_mm512_set1_ps(X_MAX), x);
    let x = _mm512_max_ps(_mm512_set1_ps(X_MIN), x);
    let magic = _mm512_set1_ps(ROUND_MAGIC);
    let t = _mm512_fmadd_ps(x, _mm512_set1_ps(LOG2E), magic);
    let n = _mm512_sub_ps(t, magic);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let mut p = _mm512_set1_ps(POLY[0]);
    for &c in &POLY[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(p, n)
}

/// The `exp` of `fast`: [`super::approx::exp_fast`] for 16 lanes, bit for bit.
#[inline]
#[target_feature(enable = "avx512f")]
fn exp16_fast(x: __m512) -> __m512 {
    use super::approx::{FAST_POLY, X_MIN};
    use super::exp::consts::{LOG2E, X_MAX};
    let x = _mm512_min_ps(_mm512_set1_ps(X_MAX), x);
    let x = _mm512_max_ps(_mm512_set1_ps(X_MIN), x);
    let t = _mm512_mul_ps(x, _mm512_set1_ps(LOG2E));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
    let f = _mm512_sub_ps(t, n);
    let mut p = _mm512_set1_ps(FAST_POLY[0]);
    for &c in &FAST_POLY[1..] {
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(p, n)
}

/// Mitchell's `exp` with offset `sigma`: [`super::approx::exp_mitchell`] for 16 lanes, bit
/// for bit: `2^⌊t⌋·(1 + t − ⌊t⌋)` in 7 instructions.
#[inline]
#[target_feature(enable = "avx512f")]
fn exp16_mitchell(x: __m512, sigma: f32) -> __m512 {
    use super::approx::X_MIN;
    use super::exp::consts::{LOG2E, X_MAX};
    let x = _mm512_min_ps(_mm512_set1_ps(X_MAX), x);
    let x = _mm512_max_ps(_mm512_set1_ps(X_MIN), x);
    let t = _mm512_fmadd_ps(x, _mm512_set1_ps(LOG2E), _mm512_set1_ps(sigma));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(t);
    let m = _mm512_add_ps(_mm512_set1_ps(1.0), _mm512_sub_ps(t, n));
    _mm512_scalef_ps(m, n)
}

/// An [`ExpKernel`]'s `exp` for 16 lanes, bit-identical to its portable one with FMA.
pub(crate) trait Exp16: ExpKernel {
    /// # Safety
    /// The CPU must support AVX-512F.
    unsafe fn exp16(x: __m512) -> __m512;
}

impl Exp16 for Exact {
    #[inline(always)]
    unsafe fn exp16(x: __m512) -> __m512 {
        // SAFETY: the caller guarantees AVX-512F.
        unsafe { exp16(x) }
    }
}

impl Exp16 for Fast {
    #[inline(always)]
    unsafe fn exp16(x: __m512) -> __m512 {
        // SAFETY: the caller guarantees AVX-512F.
        unsafe { exp16_fast(x) }
    }
}

impl Exp16 for Mitchell {
    #[inline(always)]
    unsafe fn exp16(x: __m512) -> __m512 {
        // SAFETY: the caller guarantees AVX-512F.
        unsafe { exp16_mitchell(x, super::approx::MITCHELL_SIGMA) }
    }
}

impl Exp16 for Lmul {
    #[inline(always)]
    unsafe fn exp16(x: __m512) -> __m512 {
        // SAFETY: the caller guarantees AVX-512F.
        unsafe { exp16_mitchell(x, super::approx::LMUL_OFFSET) }
    }
}

/// `acc + s·exp(l)`, the sign given as a mask of sign bits.
#[inline]
#[target_feature(enable = "avx512f")]
fn accumulate<E: Exp16>(acc: __m512, l: __m512, sign: __m512i) -> __m512 {
    // SAFETY: this function runs only with AVX-512F, its target feature.
    let e = _mm512_castps_si512(unsafe { E::exp16(l) });
    _mm512_add_ps(acc, _mm512_castsi512_ps(_mm512_xor_si512(e, sign)))
}

/// Loads 16 lanes from `s[i..]`, zero past the end of the slice (masked lanes are not read).
#[inline]
#[target_feature(enable = "avx512f")]
fn load_ps(s: &[f32], i: usize) -> (__m512, __mmask16) {
    let n = s.len().saturating_sub(i).min(16);
    let mask = ((1u32 << n) - 1) as __mmask16;
    // SAFETY: lanes past `n` are masked off, and masked lanes are never accessed (AVX-512
    // masked loads suppress faults), so only `s[i..i + n]` is read.
    let v = unsafe { _mm512_maskz_loadu_ps(mask, s.as_ptr().wrapping_add(i)) };
    (v, mask)
}

#[inline]
#[target_feature(enable = "avx512f")]
fn load_epi32(s: &[u32], i: usize) -> __m512i {
    let n = s.len().saturating_sub(i).min(16);
    let mask = ((1u32 << n) - 1) as __mmask16;
    // SAFETY: as in `load_ps`: only the `n` in-bounds lanes are read.
    unsafe { _mm512_maskz_loadu_epi32(mask, s.as_ptr().wrapping_add(i) as *const i32) }
}

/// The sum of 32 accumulator lanes in the portable kernels' pairwise order (lane `l` takes
/// lane `l + width`, halving the width), spelled out rather than left to a library reduction
/// whose order is unspecified.
#[inline]
#[target_feature(enable = "avx512f")]
fn reduce(a: __m512, b: __m512) -> f32 {
    let mut lanes = [0f32; 16];
    // SAFETY: stores 16 lanes into a 16-float array.
    unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), _mm512_add_ps(a, b)) };
    super::reduce::pairwise_sum(&mut lanes)
}

/// 16 floats from the start of `s`, which must hold at least 16.
#[inline]
#[target_feature(enable = "avx512f")]
fn load16_ps(s: &[f32]) -> __m512 {
    assert!(s.len() >= 16);
    // SAFETY: `s` holds at least 16 floats (asserted; the check folds away at the call sites,
    // which slice exactly 16 or 32 elements).
    unsafe { _mm512_loadu_ps(s.as_ptr()) }
}

#[inline]
#[target_feature(enable = "avx512f")]
fn load16_epi32(s: &[u32]) -> __m512i {
    assert!(s.len() >= 16);
    // SAFETY: as in `load16_ps`.
    unsafe { _mm512_loadu_epi32(s.as_ptr() as *const i32) }
}

/// [`super::dot::LogDot::log_dot`] for `f32` on activations: logs and per-element sign masks on both sides.
#[target_feature(enable = "avx512f")]
pub(super) fn log_dot<E: Exp16>(la: &[f32], sa: &[u32], lb: &[f32], sb: &[u32]) -> f32 {
    let k = la.len();
    assert!(sa.len() == k && lb.len() == k && sb.len() == k);
    let body = k - k % 32;
    let mut acc0 = _mm512_set1_ps(-0.0);
    let mut acc1 = _mm512_set1_ps(-0.0);
    for j in (0..body).step_by(32) {
        let (la, sa, lb, sb) = (
            &la[j..j + 32],
            &sa[j..j + 32],
            &lb[j..j + 32],
            &sb[j..j + 32],
        );
        let l0 = _mm512_add_ps(load16_ps(la), load16_ps(lb));
        let l1 = _mm512_add_ps(load16_ps(&la[16..]), load16_ps(&lb[16..]));
        let s0 = _mm512_xor_si512(load16_epi32(sa), load16_epi32(sb));
        let s1 = _mm512_xor_si512(load16_epi32(&sa[16..]), load16_epi32(&sb[16..]));
        acc0 = accumulate::<E>(acc0, l0, s0);
        acc1 = accumulate::<E>(acc1, l1, s1);
    }
    // The last k % 32 elements, with masked loads; lanes past the end leave the sums alone.
    for (h, acc) in [&mut acc0, &mut acc1].into_iter().enumerate() {
        let j = body + 16 * h;
        if j >= k {
            break;
        }
        let (a, mask) = load_ps(la, j);
        let (b, _) = load_ps(lb, j);
        let sign = _mm512_xor_si512(load_epi32(sa, j), load_epi32(sb, j));
        *acc = _mm512_mask_mov_ps(*acc, mask, accumulate::<E>(*acc, _mm512_add_ps(a, b), sign));
    }
    reduce(acc0, acc1)
}

/// A stored magnitude type the AVX-512 decode kernel widens in registers.
pub(crate) trait Magnitude16: Copy {
    /// 16 magnitudes from the start of `s` (which holds at least 16) as f32.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    unsafe fn load16(s: &[Self]) -> __m512;

    /// Up to 16 magnitudes from `s[i..]` as f32, zero past the end.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    unsafe fn load16_tail(s: &[Self], i: usize) -> __m512;
}

impl Magnitude16 for f32 {
    #[inline(always)]
    unsafe fn load16(s: &[f32]) -> __m512 {
        // SAFETY: the caller guarantees AVX-512F.
        unsafe { load16_ps(s) }
    }

    #[inline(always)]
    unsafe fn load16_tail(s: &[f32], i: usize) -> __m512 {
        // SAFETY: the caller guarantees AVX-512F.
        unsafe { load_ps(s, i).0 }
    }
}

impl Magnitude16 for f16 {
    #[inline(always)]
    unsafe fn load16(s: &[f16]) -> __m512 {
        assert!(s.len() >= 16);
        // SAFETY: `s` holds at least 16 f16 (32 bytes, asserted); the caller guarantees
        // AVX-512F, which has the 512-bit half conversion.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(s.as_ptr() as *const __m256i)) }
    }

    #[inline(always)]
    unsafe fn load16_tail(s: &[f16], i: usize) -> __m512 {
        let n = s.len().saturating_sub(i).min(16);
        let mut tail = [f16::ZERO; 16];
        tail[..n].copy_from_slice(&s[i..i + n]);
        // SAFETY: `tail` holds 16; the caller guarantees AVX-512F.
        unsafe { Self::load16(&tail) }
    }
}

/// `acc + s·exp(l + w)` where the sign is the activation's mask XOR the weight's sign bits
/// (`negative`, one bit per lane).
#[inline]
#[target_feature(enable = "avx512f")]
fn accumulate_packed<E: Exp16>(
    acc: __m512,
    l: __m512,
    w: __m512,
    x_sign: __m512i,
    negative: __mmask16,
) -> __m512 {
    let sign = _mm512_mask_xor_epi32(x_sign, negative, x_sign, _mm512_set1_epi32(i32::MIN));
    accumulate::<E>(acc, _mm512_add_ps(l, w), sign)
}

/// [`super::gemv::log_dot_packed`]: activation logs and masks against one stored weight row.
#[target_feature(enable = "avx512f")]
pub(super) fn log_dot_packed<M: Magnitude16, E: Exp16>(
    la: &[f32],
    sa: &[u32],
    mags: &[M],
    signs: &[u32],
) -> f32 {
    let k = la.len();
    assert!(sa.len() == k && mags.len() == k && signs.len() == k.div_ceil(32));
    let full = k / 32;
    let mut acc0 = _mm512_set1_ps(-0.0);
    let mut acc1 = _mm512_set1_ps(-0.0);
    for (q, &word) in signs[..full].iter().enumerate() {
        let j = 32 * q;
        let (la, sa, mags) = (&la[j..j + 32], &sa[j..j + 32], &mags[j..j + 32]);
        // SAFETY (both loads): this function runs only with AVX-512F, its target feature.
        let (w0, w1) = unsafe { (M::load16(mags), M::load16(&mags[16..])) };
        // Lane l of the low half takes bit l of the word, of the high half bit 16 + l.
        acc0 = accumulate_packed::<E>(acc0, load16_ps(la), w0, load16_epi32(sa), word as __mmask16);
        acc1 = accumulate_packed::<E>(
            acc1,
            load16_ps(&la[16..]),
            w1,
            load16_epi32(&sa[16..]),
            (word >> 16) as __mmask16,
        );
    }
    if full < signs.len() {
        let word = signs[full];
        for (h, acc) in [&mut acc0, &mut acc1].into_iter().enumerate() {
            let j = 32 * full + 16 * h;
            if j >= k {
                break;
            }
            let (a, mask) = load_ps(la, j);
            // SAFETY: as above.
            let w = unsafe { M::load16_tail(mags, j) };
            let negative = (word >> (16 * h)) as __mmask16;
            let sum = accumulate_packed::<E>(*acc, a, w, load_epi32(sa, j), negative);
            *acc = _mm512_mask_mov_ps(*acc, mask, sum);
        }
    }
    reduce(acc0, acc1)
}

/// 16 `lns8` codes as `(ln|w|, sign mask)`: `q·STEP + offset` (fused), `-inf` for the zero
/// code, and the code's bit 7 moved to bit 31 and XOR-ed with the activation's sign mask.
#[inline]
#[target_feature(enable = "avx512f")]
fn lns8_terms(codes: __m128i, offset: __m512, x_sign: __m512i) -> (__m512, __m512i) {
    let d = _mm512_cvtepu8_epi32(codes);
    let q = _mm512_and_si512(d, _mm512_set1_epi32(0x7f));
    let zero = _mm512_testn_epi32_mask(d, _mm512_set1_epi32(0x7f));
    let lw = _mm512_fmadd_ps(
        _mm512_cvtepi32_ps(q),
        _mm512_set1_ps(crate::format::lns8::codes::STEP),
        offset,
    );
    let lw = _mm512_mask_mov_ps(lw, zero, _mm512_set1_ps(f32::NEG_INFINITY));
    // (d << 24) & 0x8000_0000 ^ x_sign in one ternary-logic op: (A & C) ^ B = 0x6c.
    let sign = _mm512_ternarylogic_epi32::<0x6c>(
        _mm512_slli_epi32::<24>(d),
        x_sign,
        _mm512_set1_epi32(i32::MIN),
    );
    (lw, sign)
}

/// [`super::portable::log_dot_lns8_lanes`] with intrinsics, bit for bit: activation logs and
/// masks against one `lns8` weight row.
#[target_feature(enable = "avx512f")]
pub(super) fn log_dot_lns8<E: Exp16>(la: &[f32], sa: &[u32], codes: &[u8], offsets: &[f16]) -> f32 {
    let k = la.len();
    assert!(sa.len() == k && codes.len() == k && offsets.len() == k.div_ceil(32));
    let full = k / 32;
    let mut acc0 = _mm512_set1_ps(-0.0);
    let mut acc1 = _mm512_set1_ps(-0.0);
    for (g, offset) in offsets[..full].iter().enumerate() {
        let j = 32 * g;
        let (la, sa, codes) = (&la[j..j + 32], &sa[j..j + 32], &codes[j..j + 32]);
        let offset = _mm512_set1_ps(offset.to_f32());
        // SAFETY: `codes` holds 32 bytes; each load reads 16 of them.
        let (c0, c1) = unsafe {
            (
                _mm_loadu_si128(codes.as_ptr() as *const __m128i),
                _mm_loadu_si128(codes.as_ptr().add(16) as *const __m128i),
            )
        };
        let (w0, s0) = lns8_terms(c0, offset, load16_epi32(sa));
        let (w1, s1) = lns8_terms(c1, offset, load16_epi32(&sa[16..]));
        acc0 = accumulate::<E>(acc0, _mm512_add_ps(load16_ps(la), w0), s0);
        acc1 = accumulate::<E>(acc1, _mm512_add_ps(load16_ps(&la[16..]), w1), s1);
    }
    if full < offsets.len() {
        let offset = _mm512_set1_ps(offsets[full].to_f32());
        let mut tail = [0u8; 32];
        let rest = &codes[32 * full..];
        tail[..rest.len()].copy_from_slice(rest);
        for (h, acc) in [&mut acc0, &mut acc1].into_iter().enumerate() {
            let j = 32 * full + 16 * h;
            if j >= k {
                break;
            }
            let (a, mask) = load_ps(la, j);
            // SAFETY: `tail` holds 32 bytes; this reads 16 of them.
            let c = unsafe { _mm_loadu_si128(tail.as_ptr().add(16 * h) as *const __m128i) };
            let (w, sign) = lns8_terms(c, offset, load_epi32(sa, j));
            let sum = accumulate::<E>(*acc, _mm512_add_ps(a, w), sign);
            *acc = _mm512_mask_mov_ps(*acc, mask, sum);
        }
    }
    reduce(acc0, acc1)
}

/// 16 `lns4` codes (one per 32-bit lane) as `(ln|w|, sign mask)`, as [`lns8_terms`].
#[inline]
#[target_feature(enable = "avx512f")]
fn lns4_terms(codes: __m512i, step: __m512, offset: __m512, x_sign: __m512i) -> (__m512, __m512i) {
    let q = _mm512_and_si512(codes, _mm512_set1_epi32(7));
    let zero = _mm512_testn_epi32_mask(codes, _mm512_set1_epi32(7));
    let lw = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q), step, offset);
    let lw = _mm512_mask_mov_ps(lw, zero, _mm512_set1_ps(f32::NEG_INFINITY));
    // Bit 3 to bit 31, XOR-ed with the activation's sign: (A & C) ^ B = 0x6c.
    let sign = _mm512_ternarylogic_epi32::<0x6c>(
        _mm512_slli_epi32::<28>(codes),
        x_sign,
        _mm512_set1_epi32(i32::MIN),
    );
    (lw, sign)
}

/// [`super::portable::log_dot_lns4_lanes`] with intrinsics, bit for bit: a group's 16 bytes
/// widen to 16 lanes once, their low nibbles are weights 0–15 and their high ones 16–31.
#[target_feature(enable = "avx512f")]
pub(super) fn log_dot_lns4<E: Exp16>(
    la: &[f32],
    sa: &[u32],
    bytes: &[u8],
    offsets: &[f16],
    step: f32,
) -> f32 {
    let k = la.len();
    assert!(sa.len() == k && offsets.len() == k.div_ceil(32) && bytes.len() == 16 * offsets.len());
    let full = k / 32;
    let step = _mm512_set1_ps(step);
    let mut acc0 = _mm512_set1_ps(-0.0);
    let mut acc1 = _mm512_set1_ps(-0.0);
    let nibbles = |b: &[u8]| {
        assert!(b.len() >= 16);
        // SAFETY: `b` holds at least 16 bytes (asserted); this reads 16.
        let d = _mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(b.as_ptr() as *const __m128i) });
        (
            _mm512_and_si512(d, _mm512_set1_epi32(0x0f)),
            _mm512_srli_epi32::<4>(d),
        )
    };
    for (g, offset) in offsets[..full].iter().enumerate() {
        let j = 32 * g;
        let (la, sa) = (&la[j..j + 32], &sa[j..j + 32]);
        let offset = _mm512_set1_ps(offset.to_f32());
        let (lo, hi) = nibbles(&bytes[16 * g..16 * g + 16]);
        let (w0, s0) = lns4_terms(lo, step, offset, load16_epi32(sa));
        let (w1, s1) = lns4_terms(hi, step, offset, load16_epi32(&sa[16..]));
        acc0 = accumulate::<E>(acc0, _mm512_add_ps(load16_ps(la), w0), s0);
        acc1 = accumulate::<E>(acc1, _mm512_add_ps(load16_ps(&la[16..]), w1), s1);
    }
    if full < offsets.len() {
        let offset = _mm512_set1_ps(offsets[full].to_f32());
        let halves = nibbles(&bytes[16 * full..16 * full + 16]);
        for (h, (acc, codes)) in [(&mut acc0, halves.0), (&mut acc1, halves.1)]
            .into_iter()
            .enumerate()
        {
            let j = 32 * full + 16 * h;
            if j >= k {
                break;
            }
            let (a, mask) = load_ps(la, j);
            let (w, sign) = lns4_terms(codes, step, offset, load_epi32(sa, j));
            let sum = accumulate::<E>(*acc, _mm512_add_ps(a, w), sign);
            *acc = _mm512_mask_mov_ps(*acc, mask, sum);
        }
    }
    reduce(acc0, acc1)
}

/// [`super::table::table_block_lanes`] with intrinsics, bit for bit: per pair of columns one
/// 16-byte load widened to 16 lanes, whose low and high nibbles index the two columns' tables
/// with `vpermps`, 32 products in two lookups and two adds.
#[target_feature(enable = "avx512f")]
pub(super) fn table_block(tables: &[f32], bytes: &[u8], scales: &[f32]) -> [f32; 16] {
    let groups = scales.len() / 16;
    assert!(tables.len() >= groups * 32 * 16 && bytes.len() >= groups * 16 * 16);
    let mut acc = _mm512_set1_ps(-0.0);
    for g in 0..groups {
        let mut sum = _mm512_set1_ps(-0.0);
        for p in 0..16 {
            let k0 = g * 32 + 2 * p;
            let b = &bytes[(k0 / 2) * 16..(k0 / 2) * 16 + 16];
            // SAFETY: `b` holds 16 bytes.
            let d = _mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(b.as_ptr() as *const __m128i) });
            let lo = _mm512_and_si512(d, _mm512_set1_epi32(0x0f));
            let hi = _mm512_srli_epi32::<4>(d);
            let t0 = load16_ps(&tables[k0 * 16..]);
            let t1 = load16_ps(&tables[(k0 + 1) * 16..]);
            sum = _mm512_add_ps(sum, _mm512_permutexvar_ps(lo, t0));
            sum = _mm512_add_ps(sum, _mm512_permutexvar_ps(hi, t1));
        }
        acc = _mm512_fmadd_ps(sum, load16_ps(&scales[g * 16..]), acc);
    }
    let mut out = [0f32; 16];
    // SAFETY: stores 16 lanes into a 16-float array.
    unsafe { _mm512_storeu_ps(out.as_mut_ptr(), acc) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::exp_kernel::with_exp_kernel;
    use crate::cpu::portable::{
        log_dot_lanes, log_dot_lns4_lanes, log_dot_lns8_lanes, log_dot_packed_lanes,
    };
    use crate::packing::pack_sign_row;
    use crate::ExpMode;
    use rand::{Rng, SeedableRng};

    fn have_avx512() -> bool {
        let ok = is_x86_feature_detected!("avx512f");
        if !ok {
            eprintln!("skipped: this CPU has no AVX-512F");
        }
        ok
    }

    #[test]
    fn exp16_is_bit_identical_to_the_portable_exp_in_every_mode() {
        if !have_avx512() {
            return;
        }
        for mode in ExpMode::PER_PRODUCT {
            with_exp_kernel!(mode, E => exp16_matches::<E>(mode));
        }
    }

    fn exp16_matches<E: Exp16>(mode: ExpMode) {
        let max = 110f32.to_bits();
        // Every 97th bit pattern for the exact exp, every 389th for the others (their
        // arithmetic has no region the coarser sweep could skip: no table, no branch).
        let mut xs: Vec<f32> = (0..=max)
            .step_by(if E::EXACT { 97 } else { 389 })
            .flat_map(|b| [f32::from_bits(b), -f32::from_bits(b)])
            .collect();
        xs.extend([
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            1e30,
            -1e30,
            88.72283,
            88.72284,
        ]);
        for chunk in xs.chunks(16) {
            let mut lanes = [0f32; 16];
            lanes[..chunk.len()].copy_from_slice(chunk);
            let mut got = [0f32; 16];
            // SAFETY: AVX-512F checked above; the stores write 16 lanes into a 16-float array.
            unsafe {
                _mm512_storeu_ps(got.as_mut_ptr(), E::exp16(_mm512_loadu_ps(lanes.as_ptr())))
            };
            for (&x, &g) in chunk.iter().zip(&got) {
                let want = E::exp::<true>(x);
                assert!(
                    g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                    "{mode}, x = {x:e}: avx512 {g:e}, portable {want:e}"
                );
            }
        }
    }

    /// Logs of random magnitudes and specials, with random signs.
    fn operand(rng: &mut rand::rngs::StdRng, k: usize) -> (Vec<f32>, Vec<u32>, Vec<f32>) {
        let specials = [0.0f32, -0.0, f32::INFINITY, 1e-40, 3e38, 1e-30, f32::NAN];
        let values: Vec<f32> = (0..k)
            .map(|_| {
                let v = if rng.random_bool(0.05) {
                    specials[rng.random_range(0..specials.len())]
                } else {
                    let v: f32 = rng.random_range(-2.0..2.0);
                    v * 10f32.powi(rng.random_range(-3..3))
                };
                if rng.random_bool(0.5) {
                    -v
                } else {
                    v
                }
            })
            .collect();
        let logs = values.iter().map(|v| v.abs().ln()).collect();
        let masks = values.iter().map(|v| v.to_bits() & 0x8000_0000).collect();
        (logs, masks, values)
    }

    fn same(a: f32, b: f32) -> bool {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    #[test]
    fn kernels_are_bit_identical_to_the_portable_ones_in_every_mode() {
        if !have_avx512() {
            return;
        }
        for mode in ExpMode::PER_PRODUCT {
            with_exp_kernel!(mode, E => kernels_match::<E>(mode));
        }
    }

    #[test]
    fn the_table_kernel_is_bit_identical_to_the_portable_one() {
        if !have_avx512() {
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for groups in [1usize, 2, 7, 28] {
            let (la, sa, _) = operand(&mut rng, groups * 32 * 16);
            // Tables: any floats, specials included (the kernel only looks them up and adds).
            let tables: Vec<f32> = la
                .iter()
                .zip(&sa)
                .map(|(&l, &s)| f32::from_bits(l.exp().to_bits() ^ s))
                .collect();
            let bytes: Vec<u8> = (0..groups * 256).map(|_| rng.random()).collect();
            let scales: Vec<f32> = (0..groups * 16)
                .map(|_| rng.random_range(1e-4..3.0))
                .collect();
            // SAFETY: AVX-512F checked above.
            let got = unsafe { table_block(&tables, &bytes, &scales) };
            let want = crate::cpu::portable::table_block_lanes::<true>(&tables, &bytes, &scales);
            for (g, w) in got.iter().zip(&want) {
                assert!(same(*g, *w), "groups {groups}: {g:e} vs {w:e}");
            }
        }
    }

    fn kernels_match<E: Exp16>(mode: ExpMode) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for k in (0..100).chain([127, 128, 129, 896, 4864]) {
            for _ in 0..4 {
                let (la, sa, _) = operand(&mut rng, k);
                let (lb, sb, wb) = operand(&mut rng, k);
                // SAFETY: AVX-512F checked above.
                let got = unsafe { log_dot::<E>(&la, &sa, &lb, &sb) };
                let want = log_dot_lanes::<f32, E, 32, true>(&la, &sa, &lb, &sb);
                assert!(same(got, want), "{mode} log_dot k={k}: {got:e} vs {want:e}");

                let mut signs = vec![0u32; k.div_ceil(32)];
                pack_sign_row(wb.iter().map(|w| w.is_sign_negative()), &mut signs);
                let m16: Vec<f16> = lb.iter().map(|&l| f16::from_f32(l)).collect();
                // SAFETY: AVX-512F checked above.
                let got = unsafe { log_dot_packed::<_, E>(&la, &sa, &m16, &signs) };
                let want = log_dot_packed_lanes::<f16, E, true>(&la, &sa, &m16, &signs);
                assert!(
                    same(got, want),
                    "{mode} packed f16 k={k}: {got:e} vs {want:e}"
                );
                // SAFETY: AVX-512F checked above.
                let got = unsafe { log_dot_packed::<_, E>(&la, &sa, &lb, &signs) };
                let want = log_dot_packed_lanes::<f32, E, true>(&la, &sa, &lb, &signs);
                assert!(
                    same(got, want),
                    "{mode} packed f32 k={k}: {got:e} vs {want:e}"
                );

                let row: Vec<f64> = wb
                    .iter()
                    .map(|&w| if w.is_finite() { w as f64 } else { 1.0 })
                    .collect();
                let mut codes = vec![0u8; k];
                let mut offsets = vec![f16::ZERO; k.div_ceil(32)];
                crate::format::lns8::codes::encode_row(&row, &mut codes, &mut offsets).unwrap();
                // SAFETY: AVX-512F checked above.
                let got = unsafe { log_dot_lns8::<E>(&la, &sa, &codes, &offsets) };
                let want = log_dot_lns8_lanes::<E, true>(&la, &sa, &codes, &offsets);
                assert!(same(got, want), "{mode} lns8 k={k}: {got:e} vs {want:e}");

                let step = crate::format::lns4::codes::choose_step(&row, k.max(1));
                let mut bytes = vec![0u8; crate::format::lns4::codes::bytes_per_row(k)];
                crate::format::lns4::codes::encode_row(&row, &mut bytes, &mut offsets, step)
                    .unwrap();
                // SAFETY: AVX-512F checked above.
                let got = unsafe { log_dot_lns4::<E>(&la, &sa, &bytes, &offsets, step) };
                let want = log_dot_lns4_lanes::<E, true>(&la, &sa, &bytes, &offsets, step);
                assert!(same(got, want), "{mode} lns4 k={k}: {got:e} vs {want:e}");
            }
        }
    }
}
