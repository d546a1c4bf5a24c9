//! The `exp` of each [`ExpMode`](crate::ExpMode) as a type, so that the kernels are compiled once per mode
//! (the mode is chosen per call, outside the inner loops).

use super::approx::{exp_fast, exp_mitchell, LMUL_OFFSET, MITCHELL_SIGMA};
use super::exp::exp_f32;

/// One mode's `exp` for an `f32` lane. `FMA` may only be `true` in code compiled with fused
/// multiply-add available (see [`super::isa`]).
pub(crate) trait ExpKernel: Copy + Send + Sync + 'static {
    /// `true` for the exact `exp` only: the `f64` path has no other.
    const EXACT: bool = false;

    fn exp<const FMA: bool>(x: f32) -> f32;
}

/// [`crate::ExpMode::Exact`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Exact;
/// [`crate::ExpMode::Fast`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fast;
/// [`crate::ExpMode::Mitchell`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mitchell;
/// [`crate::ExpMode::Lmul`]'s `exp` (its logs are read from the bits by the split).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lmul;

impl ExpKernel for Exact {
    const EXACT: bool = true;

    #[inline(always)]
    fn exp<const FMA: bool>(x: f32) -> f32 {
        exp_f32::<FMA>(x)
    }
}

impl ExpKernel for Fast {
    #[inline(always)]
    fn exp<const FMA: bool>(x: f32) -> f32 {
        exp_fast::<FMA>(x)
    }
}

impl ExpKernel for Mitchell {
    #[inline(always)]
    fn exp<const FMA: bool>(x: f32) -> f32 {
        exp_mitchell::<FMA>(x, MITCHELL_SIGMA)
    }
}

impl ExpKernel for Lmul {
    #[inline(always)]
    fn exp<const FMA: bool>(x: f32) -> f32 {
        exp_mitchell::<FMA>(x, LMUL_OFFSET)
    }
}

/// Runs `$body` with `$E` bound to the [`ExpKernel`] type of `$mode`.
macro_rules! with_exp_kernel {
    ($mode:expr, $E:ident => $body:expr) => {
        match $mode {
            $crate::ExpMode::Exact => {
                type $E = $crate::cpu::exp_kernel::Exact;
                $body
            }
            $crate::ExpMode::Fast => {
                type $E = $crate::cpu::exp_kernel::Fast;
                $body
            }
            $crate::ExpMode::Mitchell => {
                type $E = $crate::cpu::exp_kernel::Mitchell;
                $body
            }
            $crate::ExpMode::Lmul => {
                type $E = $crate::cpu::exp_kernel::Lmul;
                $body
            }
            // `table` has no per-product exp: the op runs it apart (`cpu::table`) and refuses it
            // for activation products, so it never reaches a kernel; exact is its entries' exp.
            $crate::ExpMode::Table => {
                type $E = $crate::cpu::exp_kernel::Exact;
                $body
            }
        }
    };
}
pub(crate) use with_exp_kernel;
