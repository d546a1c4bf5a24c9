//! The CUDA path (feature `cuda`): `kernels/emilio.cu`, compiled to PTX by `build.rs`, driven
//! through Candle's CUDA device.
//!
//! The kernels have the names and argument lists of the Metal ones, so the same
//! [`crate::plan`] describes a call on either GPU; [`exec`] launches a plan on a
//! `candle_core::CudaDevice`: one launch per dispatch, blocks for threadgroups, warps for
//! SIMD-groups, on the device's stream.
//!
//! The kernels' logic is checked on every platform by emilio-op's emulator tests
//! (`src/emulate.rs`, which runs `kernels/emilio.cu` compiled as C++); what needs a GPU (nvcc's
//! code, the launches, the hardware's arithmetic) is tested by `tests/tests/cuda_*.rs` with
//! `--features cuda` on a machine with an NVIDIA GPU.

mod exec;

use candle_core::backend::BackendStorage;
use candle_core::{bail, CudaStorage, Layout, Result, Shape};

use crate::plan::{self, Gpu};

/// `LogMatMul::cuda_fwd`: `(m, k, n)` as `crate::matmul` checked them.
pub(crate) fn log_matmul(
    a: &CudaStorage,
    la: &Layout,
    b: &CudaStorage,
    lb: &Layout,
    dims: (usize, usize, usize),
) -> Result<(CudaStorage, Shape)> {
    if a.dtype() != b.dtype() {
        bail!(
            "log_matmul supports two operands of the same float dtype (f32, f16, bf16 on \
             CUDA), got {:?} and {:?}",
            a.dtype(),
            b.dtype()
        );
    }
    let plan = plan::log_matmul(Gpu::Cuda, a.dtype(), la, lb, dims)?;
    let out = exec::run(&plan, &[a, b])?;
    Ok((out, plan.output_shape))
}

/// `LogLinearOp::cuda_fwd`.
pub(crate) fn log_linear(
    x: &CudaStorage,
    lx: &Layout,
    mags: &CudaStorage,
    lm: &Layout,
    signs: &CudaStorage,
    ls: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let plan = plan::log_linear(
        Gpu::Cuda,
        x.dtype(),
        lx,
        mags.dtype(),
        lm,
        signs.dtype(),
        ls,
    )?;
    let out = exec::run(&plan, &[x, mags, signs])?;
    Ok((out, plan.output_shape))
}
