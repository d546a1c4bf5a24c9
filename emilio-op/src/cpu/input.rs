//! The storage dtypes the op accepts, and the float each one accumulates in.

use candle_core::WithDType;
use half::{bf16, f16};

use super::dot::LogDot;
use super::float::LogFloat;
use super::ln::split_row_f32;
use crate::ExpMode;

/// A float dtype the op reads and writes: its logs and sums are carried in [`Input::Acc`]
/// (`f32` for `f32`/`f16`/`bf16`, `f64` for `f64`), and the result is rounded back to `Self`
/// once, at the end, as stock matmul does.
pub(crate) trait Input: WithDType {
    type Acc: LogDot;
    fn from_acc(v: Self::Acc) -> Self;

    /// `(ln|x|, sign mask)` of a contiguous run. `f32`-accumulating dtypes use the vectorised
    /// log ([`super::ln`]), or Mitchell's for [`ExpMode::Lmul`]; `f64` keeps libm's (and has
    /// no other mode).
    fn split_run(
        mode: ExpMode,
        src: &[Self],
        logs: &mut [Self::Acc],
        masks: &mut [<Self::Acc as LogFloat>::Mask],
    );
}

/// Widens a run to f32 in chunks on the stack, then splits it with the vectorised log.
#[inline]
fn split_widened<S: Copy>(
    mode: ExpMode,
    src: &[S],
    widen: impl Fn(S) -> f32,
    logs: &mut [f32],
    masks: &mut [u32],
) {
    const CHUNK: usize = 256;
    let mut buf = [0f32; CHUNK];
    for ((src, logs), masks) in src
        .chunks(CHUNK)
        .zip(logs.chunks_mut(CHUNK))
        .zip(masks.chunks_mut(CHUNK))
    {
        for (b, &x) in buf.iter_mut().zip(src) {
            *b = widen(x);
        }
        split_row_f32(mode, &buf[..src.len()], logs, masks);
    }
}

impl Input for f32 {
    type Acc = f32;
    fn split_run(mode: ExpMode, src: &[f32], logs: &mut [f32], masks: &mut [u32]) {
        split_row_f32(mode, src, logs, masks)
    }
    #[inline(always)]
    fn from_acc(v: f32) -> Self {
        v
    }
}

impl Input for f64 {
    type Acc = f64;
    fn split_run(mode: ExpMode, src: &[f64], logs: &mut [f64], masks: &mut [u64]) {
        debug_assert_eq!(mode, ExpMode::Exact, "refused for f64 by the op");
        for ((x, l), m) in src.iter().zip(logs).zip(masks) {
            (*l, *m) = x.ln_split();
        }
    }
    #[inline(always)]
    fn from_acc(v: f64) -> Self {
        v
    }
}

impl Input for f16 {
    type Acc = f32;
    fn split_run(mode: ExpMode, src: &[f16], logs: &mut [f32], masks: &mut [u32]) {
        split_widened(mode, src, f16::to_f32, logs, masks)
    }
    #[inline(always)]
    fn from_acc(v: f32) -> Self {
        f16::from_f32(v)
    }
}

impl Input for bf16 {
    type Acc = f32;
    fn split_run(mode: ExpMode, src: &[bf16], logs: &mut [f32], masks: &mut [u32]) {
        split_widened(mode, src, bf16::to_f32, logs, masks)
    }
    #[inline(always)]
    fn from_acc(v: f32) -> Self {
        bf16::from_f32(v)
    }
}
