//! The portable kernels: plain per-lane arithmetic over a fixed number of accumulators, for any
//! CPU. Compiled inside a `#[target_feature]` function (see [`super::dot`], [`super::gemv`]) the
//! compiler turns the lanes into SIMD registers; they are also the reference the intrinsics
//! kernels ([`super::avx512`]) are held to, bit for bit.

use half::f16;

use super::exp::madd;
use super::exp_kernel::ExpKernel;
use super::float::LogFloat;
use super::magnitude::{Magnitude, Magnitudes};
use super::reduce::pairwise_sum;
use crate::format::lns4::codes::{self as lns4, TABLE_ROWS};
use crate::format::lns8::codes::{self as lns8, STEP};

/// Table entries per activation in the table mode: every 4-bit code.
const TABLE_CODES: usize = 16;
use crate::packing::{sign_bit, SIGN_BITS_PER_WORD};

const W: usize = SIGN_BITS_PER_WORD;
// The lns8 kernel gives lane `l` element `l` of each group: one offset per 32 lanes.
const _: () = assert!(lns8::GROUP == W);

/// The portable body: `LANES` independent accumulators break the add dependency chain so
/// consecutive `exp`s overlap, and give the vectoriser a fixed-width loop.
#[inline(always)]
pub(crate) fn log_dot_lanes<T: LogFloat, E: ExpKernel, const LANES: usize, const FMA: bool>(
    la: &[T],
    sa: &[T::Mask],
    lb: &[T],
    sb: &[T::Mask],
) -> T {
    let k = la.len();
    let mut acc = [T::NEG_ZERO; LANES];
    let body = k - k % LANES;
    let chunks = la[..body]
        .chunks_exact(LANES)
        .zip(sa[..body].chunks_exact(LANES))
        .zip(lb[..body].chunks_exact(LANES))
        .zip(sb[..body].chunks_exact(LANES));
    for (((la, sa), lb), sb) in chunks {
        for l in 0..LANES {
            acc[l] = acc[l] + T::signed_exp::<E, FMA>(la[l] + lb[l], sa[l] ^ sb[l]);
        }
    }
    for i in body..k {
        let l = i - body;
        acc[l] = acc[l] + T::signed_exp::<E, FMA>(la[i] + lb[i], sa[i] ^ sb[i]);
    }
    pairwise_sum(&mut acc)
}

/// `Σ_k s(x)·s(w)·exp(ln|x| + ln|w|)` for one activation row (`la`, `sa`) and one weight row
/// (`mags`, packed `signs`), with 32 accumulators: one per lane of a sign word.
#[inline(always)]
pub(crate) fn log_dot_packed_lanes<M: Magnitude, E: ExpKernel, const FMA: bool>(
    la: &[f32],
    sa: &[u32],
    mags: &[M],
    signs: &[u32],
) -> f32 {
    let k = la.len();
    let mut acc = [-0.0f32; W];
    let full = k / W;
    for (q, &word) in signs[..full].iter().enumerate() {
        let r = q * W..(q + 1) * W;
        let (la, sa, mags) = (&la[r.clone()], &sa[r.clone()], &mags[r]);
        for l in 0..W {
            let mask = ((word >> l) & 1) << 31;
            let e = E::exp::<FMA>(la[l] + mags[l].widen());
            acc[l] += f32::from_bits(e.to_bits() ^ sa[l] ^ mask);
        }
    }
    if full * W < k {
        let word = signs[full];
        for (l, i) in (full * W..k).enumerate() {
            let mask = ((word >> l) & 1) << 31;
            let e = E::exp::<FMA>(la[i] + mags[i].widen());
            acc[l] += f32::from_bits(e.to_bits() ^ sa[i] ^ mask);
        }
    }
    pairwise_sum(&mut acc)
}

/// `Σ_k s(x)·s(w)·exp(ln|x| + ln|w|)` for one activation row and one `lns8` weight row (codes
/// with their sign bit, one offset per group of 32), with 32 accumulators: lane `l` takes
/// element `l` of each group. The code's log is `q·STEP + offset` (fused where the CPU has
/// FMA), `-inf` for the zero code, so a zero weight is an exact zero product (NaN against an
/// infinite activation, as IEEE has it).
#[inline(always)]
pub(crate) fn log_dot_lns8_lanes<E: ExpKernel, const FMA: bool>(
    la: &[f32],
    sa: &[u32],
    codes: &[u8],
    offsets: &[f16],
) -> f32 {
    let k = la.len();
    let mut acc = [-0.0f32; W];
    let full = k / W;
    let term = |l: f32, s: u32, c: u8, offset: f32| {
        let q = c & 0x7f;
        let lw = if q == 0 {
            f32::NEG_INFINITY
        } else {
            madd::<FMA>(q as f32, STEP, offset)
        };
        let e = E::exp::<FMA>(l + lw);
        f32::from_bits(e.to_bits() ^ s ^ (u32::from(c & 0x80) << 24))
    };
    for (g, offset) in offsets[..full].iter().enumerate() {
        let r = g * W..(g + 1) * W;
        let (la, sa, codes) = (&la[r.clone()], &sa[r.clone()], &codes[r]);
        let offset = offset.widen();
        for l in 0..W {
            acc[l] += term(la[l], sa[l], codes[l], offset);
        }
    }
    if full * W < k {
        let offset = offsets[full].widen();
        for (l, i) in (full * W..k).enumerate() {
            acc[l] += term(la[i], sa[i], codes[i], offset);
        }
    }
    pairwise_sum(&mut acc)
}

/// [`log_dot_lns8_lanes`] for an `lns4` row: byte `i` of a group holds its weights `i` (low
/// nibble) and `16 + i` (high), lane `l` takes weight `l` of each group, a code's log is
/// `q·step + offset` (fused where the CPU has FMA) and its sign bit 3.
#[inline(always)]
pub(crate) fn log_dot_lns4_lanes<E: ExpKernel, const FMA: bool>(
    la: &[f32],
    sa: &[u32],
    bytes: &[u8],
    offsets: &[f16],
    step: f32,
) -> f32 {
    let k = la.len();
    let mut acc = [-0.0f32; W];
    let term = |l: f32, s: u32, c: u8, offset: f32| {
        let q = c & 7;
        let lw = if q == 0 {
            f32::NEG_INFINITY
        } else {
            madd::<FMA>(q as f32, step, offset)
        };
        let e = E::exp::<FMA>(l + lw);
        f32::from_bits(e.to_bits() ^ s ^ (u32::from(c & 8) << 28))
    };
    let full = k / W;
    for (g, offset) in offsets[..full].iter().enumerate() {
        let r = g * W..(g + 1) * W;
        let (la, sa) = (&la[r.clone()], &sa[r]);
        let bytes = &bytes[g * (W / 2)..(g + 1) * (W / 2)];
        let offset = offset.widen();
        for l in 0..W / 2 {
            acc[l] += term(la[l], sa[l], bytes[l] & 0x0f, offset);
            acc[l + W / 2] += term(la[l + W / 2], sa[l + W / 2], bytes[l] >> 4, offset);
        }
    }
    if full * W < k {
        let offset = offsets[full].widen();
        let bytes = &bytes[full * (W / 2)..];
        for (l, i) in (full * W..k).enumerate() {
            let b = bytes[l % (W / 2)];
            let c = if l < W / 2 { b & 0x0f } else { b >> 4 };
            acc[l] += term(la[i], sa[i], c, offset);
        }
    }
    pairwise_sum(&mut acc)
}

/// The table mode's block kernel ([`super::table`]), the reference of `avx512::table_block` (bit for bit with FMA):
/// per group, 16 lane sums of lookups in the order of the columns, then one fused
/// multiply-add by the group's scales.
#[inline(always)]
pub(crate) fn table_block_lanes<const FMA: bool>(
    tables: &[f32],
    bytes: &[u8],
    scales: &[f32],
) -> [f32; TABLE_ROWS] {
    let mut acc = [-0.0f32; TABLE_ROWS];
    for (g, scale) in scales.chunks_exact(TABLE_ROWS).enumerate() {
        let mut sum = [-0.0f32; TABLE_ROWS];
        for p in 0..lns4::GROUP / 2 {
            let k0 = g * lns4::GROUP + 2 * p;
            let b = &bytes[(k0 / 2) * TABLE_ROWS..(k0 / 2 + 1) * TABLE_ROWS];
            let (t0, t1) = (
                &tables[k0 * TABLE_CODES..(k0 + 1) * TABLE_CODES],
                &tables[(k0 + 1) * TABLE_CODES..(k0 + 2) * TABLE_CODES],
            );
            for r in 0..TABLE_ROWS {
                sum[r] += t0[(b[r] & 0x0f) as usize];
                sum[r] += t1[(b[r] >> 4) as usize];
            }
        }
        for r in 0..TABLE_ROWS {
            acc[r] = madd::<FMA>(sum[r], scale[r], acc[r]);
        }
    }
    acc
}

/// The decode kernel for accumulators without a SIMD build (`f64`): widen as it goes.
pub(crate) fn log_dot_weight_row_scalar<T: LogFloat, E: ExpKernel>(
    la: &[T],
    sa: &[T::Mask],
    mags: Magnitudes<'_>,
    signs: &[u32],
) -> T {
    // (log, sign bit) of weight i.
    let widen = |i: usize| match mags {
        Magnitudes::F32(m) => (T::from_f32(m[i]), sign_bit(signs, i)),
        Magnitudes::F16(m) => (T::from_f32(m[i].to_f32()), sign_bit(signs, i)),
        Magnitudes::Lns8 { codes, offsets } => {
            let offset = offsets[i / lns8::GROUP].to_f32();
            (
                T::from_f32(lns8::decode_log(codes[i], offset)),
                u32::from(codes[i] >> 7),
            )
        }
        Magnitudes::Lns4 {
            bytes,
            offsets,
            step,
        } => {
            let c = lns4::code_at(bytes, i);
            let offset = offsets[i / lns4::GROUP].to_f32();
            (
                T::from_f32(lns4::decode_log(c, offset, step)),
                u32::from(c >> 3),
            )
        }
    };
    let mut acc = [T::NEG_ZERO; 4];
    for i in 0..la.len() {
        let (lw, bit) = widen(i);
        let mask = T::mask_from_bit(bit);
        acc[i % 4] = acc[i % 4] + T::signed_exp::<E, false>(la[i] + lw, sa[i] ^ mask);
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3])
}
