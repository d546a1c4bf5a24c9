//! Dispatch of the dot kernels: for each accumulation type and this CPU, the widest kernel it
//! runs ([`Isa`]: AVX-512, AVX2+FMA, NEON, else the baseline), behind one trait the drivers
//! ([`super::gemm`], [`super::weight_columns`]) are generic over.

use super::exp_kernel::{with_exp_kernel, Exact, ExpKernel};
use super::float::LogFloat;
use super::gemv::{log_dot_lns4, log_dot_lns8, log_dot_packed, ExpSimd};
use super::isa::Isa;
use super::magnitude::Magnitudes;
use super::portable::{log_dot_lanes, log_dot_weight_row_scalar};
use crate::ExpMode;

/// An accumulation type with its dot kernels.
pub(crate) trait LogDot: LogFloat {
    /// `Σ_k s_a[k]·s_b[k]·exp(la[k] + lb[k])`, accumulated in `Self`, with the widest kernel
    /// the CPU runs.
    ///
    /// Every slice has the same length. Each accumulator starts at `-0.0`, the IEEE additive
    /// identity, so with a single term the result is that product bit for bit (signed zeros
    /// kept). `mode` picks the `exp` (only [`ExpMode::Exact`] for `f64`).
    fn log_dot(
        mode: ExpMode,
        la: &[Self],
        sa: &[Self::Mask],
        lb: &[Self],
        sb: &[Self::Mask],
    ) -> Self;

    /// One activation row against one stored weight row (magnitudes + packed signs): the
    /// decode kernel, reading the weight in its stored form.
    fn log_dot_weight_row(
        mode: ExpMode,
        la: &[Self],
        sa: &[Self::Mask],
        mags: Magnitudes<'_>,
        signs: &[u32],
    ) -> Self;
}

impl LogDot for f32 {
    fn log_dot(mode: ExpMode, la: &[f32], sa: &[u32], lb: &[f32], sb: &[u32]) -> f32 {
        debug_assert!(sa.len() == la.len() && lb.len() == la.len() && sb.len() == la.len());
        with_exp_kernel!(mode, E => log_dot_f32::<E>(la, sa, lb, sb))
    }

    fn log_dot_weight_row(
        mode: ExpMode,
        la: &[f32],
        sa: &[u32],
        mags: Magnitudes<'_>,
        signs: &[u32],
    ) -> f32 {
        with_exp_kernel!(mode, E => match mags {
            Magnitudes::F32(m) => log_dot_packed::<_, E>(la, sa, m, signs),
            Magnitudes::F16(m) => log_dot_packed::<_, E>(la, sa, m, signs),
            Magnitudes::Lns8 { codes, offsets } => log_dot_lns8::<E>(la, sa, codes, offsets),
            Magnitudes::Lns4 {
                bytes,
                offsets,
                step,
            } => log_dot_lns4::<E>(la, sa, bytes, offsets, step),
        })
    }
}

/// `f64` is the high-precision reference path: portable kernels only.
impl LogDot for f64 {
    fn log_dot(mode: ExpMode, la: &[f64], sa: &[u64], lb: &[f64], sb: &[u64]) -> f64 {
        debug_assert!(sa.len() == la.len() && lb.len() == la.len() && sb.len() == la.len());
        debug_assert_eq!(mode, ExpMode::Exact, "refused for f64 by the op");
        log_dot_lanes::<f64, Exact, 8, false>(la, sa, lb, sb)
    }

    fn log_dot_weight_row(
        mode: ExpMode,
        la: &[f64],
        sa: &[u64],
        mags: Magnitudes<'_>,
        signs: &[u32],
    ) -> f64 {
        debug_assert_eq!(mode, ExpMode::Exact, "refused for f64 by the op");
        log_dot_weight_row_scalar::<f64, Exact>(la, sa, mags, signs)
    }
}

/// The `f32` kernel for this CPU, with the `exp` of `E`.
pub(crate) fn log_dot_f32<E: ExpKernel + ExpSimd>(
    la: &[f32],
    sa: &[u32],
    lb: &[f32],
    sb: &[u32],
) -> f32 {
    match Isa::get() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only detected on CPUs with AVX-512F, AVX2 and FMA; the
        // function has no other precondition (it is safe Rust compiled for that ISA).
        Isa::Avx512 => unsafe { super::avx512::log_dot::<E>(la, sa, lb, sb) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only detected on CPUs with AVX2 and FMA.
        Isa::Avx2 => unsafe { x86::log_dot_avx2::<E>(la, sa, lb, sb) },
        // NEON and fused multiply-add are part of the aarch64 baseline.
        Isa::Neon => log_dot_lanes::<f32, E, 16, true>(la, sa, lb, sb),
        _ => log_dot_lanes::<f32, E, 8, false>(la, sa, lb, sb),
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{log_dot_lanes, ExpKernel};

    /// Two 8-lane vectors of accumulators.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn log_dot_avx2<E: ExpKernel>(
        la: &[f32],
        sa: &[u32],
        lb: &[f32],
        sb: &[u32],
    ) -> f32 {
        log_dot_lanes::<f32, E, 16, true>(la, sa, lb, sb)
    }
}
