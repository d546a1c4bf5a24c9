//! The storage dtypes the op accepts, and the float each one accumulates in.

use candle_core::WithDType;
use half::{bf16, f16};

use crate::float::LogFloat;

/// A float dtype the op reads and writes: its logs and sums are carried in [`Input::Acc`]
/// (`f32` for `f32`/`f16`/`bf16`, `f64` for `f64`), and the result is rounded back to `Self`
/// once, at the end, as stock matmul does.
pub(crate) trait Input: WithDType {
    type Acc: LogFloat;
    fn to_acc(self) -> Self::Acc;
    fn from_acc(v: Self::Acc) -> Self;
}

impl Input for f32 {
    type Acc = f32;
    #[inline(always)]
    fn to_acc(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_acc(v: f32) -> Self {
        v
    }
}

impl Input for f64 {
    type Acc = f64;
    #[inline(always)]
    fn to_acc(self) -> f64 {
        self
    }
    #[inline(always)]
    fn from_acc(v: f64) -> Self {
        v
    }
}

impl Input for f16 {
    type Acc = f32;
    #[inline(always)]
    fn to_acc(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn from_acc(v: f32) -> Self {
        f16::from_f32(v)
    }
}

impl Input for bf16 {
    type Acc = f32;
    #[inline(always)]
    fn to_acc(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn from_acc(v: f32) -> Self {
        bf16::from_f32(v)
    }
}
