//! `x · wᵀ` against a [`LogWeight`](crate::LogWeight): the op behind [`crate::LogLinear`].

// The GPU paths read their storages' dtypes.
#[cfg(any(feature = "cuda", emilio_metal))]
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp3, Layout, MetalStorage, Result, Shape};
use emilio_kernels::Backend;

use crate::backend::unsupported;
use crate::format::Stored;
use crate::ExpMode;

/// The log-domain product of activations `x` (`(…, in)`) with a [`LogWeight`]'s transpose, as a
/// Candle [`CustomOp3`] over `(x, a, b)`, `a` and `b` the stored form's two tensors.
///
/// Crate-private: users call [`LogWeight::forward`](crate::LogWeight::forward) or
/// [`crate::LogLinear`], which check shapes first.
///
/// [`LogWeight`]: crate::LogWeight
#[derive(Debug, Clone)]
pub(crate) struct LogLinearOp {
    /// The weight's exp mode (the CPU kernels; GPUs take only the exact mode, which
    /// [`LogWeight::forward`](crate::LogWeight::forward) checks before the op runs).
    pub exp: ExpMode,
    /// The weight as its format stores it: the CPU path asks it for its kernels.
    pub stored: Stored,
}

impl CustomOp3 for LogLinearOp {
    fn name(&self) -> &'static str {
        "emilio-log-linear"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        a: &CpuStorage,
        la: &Layout,
        b: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.stored.cpu_forward(self.exp, x, lx, a, la, b, lb)
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        lx: &Layout,
        mags: &CudaStorage,
        lm: &Layout,
        signs: &CudaStorage,
        ls: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        #[cfg(feature = "cuda")]
        {
            let gpu = Backend::Cuda;
            let (xd, md, sd) = (x.dtype(), mags.dtype(), signs.dtype());
            let plan = crate::plan::log_linear(gpu, xd, lx, md, lm, sd, ls)?;
            Ok((
                crate::cuda::run(&plan, &[x, mags, signs])?,
                plan.output_shape,
            ))
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (x, lx, mags, lm, signs, ls);
            Err(unsupported("the log-domain linear layer", Backend::Cuda))
        }
    }

    fn metal_fwd(
        &self,
        x: &MetalStorage,
        lx: &Layout,
        mags: &MetalStorage,
        lm: &Layout,
        signs: &MetalStorage,
        ls: &Layout,
    ) -> Result<(MetalStorage, Shape)> {
        #[cfg(emilio_metal)]
        {
            let gpu = Backend::Metal;
            let (xd, md, sd) = (x.dtype(), mags.dtype(), signs.dtype());
            let plan = crate::plan::log_linear(gpu, xd, lx, md, lm, sd, ls)?;
            Ok((
                crate::metal::run(&plan, &[x, mags, signs])?,
                plan.output_shape,
            ))
        }
        #[cfg(not(emilio_metal))]
        {
            let _ = (x, lx, mags, lm, signs, ls);
            Err(unsupported("the log-domain linear layer", Backend::Metal))
        }
    }
}
