//! Argument checks shared by the public entry points, so every message reads the same.

use candle_core::{bail, DType, Error, Result, Tensor};

use crate::backend::device_name;
use crate::{ExpMode, OpError};

/// `t` must be a float tensor.
pub(crate) fn check_float(op: &str, t: &Tensor) -> Result<()> {
    if !t.dtype().is_float() {
        bail!(
            "{op} needs a float tensor (f32, f64, f16 or bf16), got dtype {:?} for shape {:?}",
            t.dtype(),
            t.dims()
        );
    }
    Ok(())
}

/// `a` and `b` must share a dtype and a device.
pub(crate) fn check_same(op: &str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.dtype() != b.dtype() {
        bail!(
            "{op} needs operands of one dtype, got {:?} {:?} and {:?} {:?}; convert one with to_dtype",
            a.dtype(),
            a.dims(),
            b.dtype(),
            b.dims()
        );
    }
    if !a.device().same_device(b.device()) {
        bail!(
            "{op} needs operands on one device, got {} and {}; move one with to_device",
            device_name(a.device()),
            device_name(b.device())
        );
    }
    Ok(())
}

/// The error for a product of two activations whose dtypes are not one float dtype the device's
/// kernels have (`supported`, e.g. "f32, f64, f16, bf16"): the CPU kernels' and the GPU plans'
/// own check, for callers that reach them without [`check_same`].
pub(crate) fn mixed_dtypes(supported: &str, a: DType, b: DType) -> Error {
    Error::Msg(format!(
        "log_matmul supports two operands of the same float dtype ({supported}), got {a:?} and {b:?}"
    ))
}

/// The approximate exp modes have `f32` CPU kernels only: `x` must be an `f32`, `f16` or `bf16`
/// tensor on the CPU unless `mode` is [`ExpMode::Exact`].
pub(crate) fn check_mode(op: &str, mode: ExpMode, x: &Tensor) -> Result<()> {
    if mode == ExpMode::Exact {
        return Ok(());
    }
    if mode == ExpMode::Table && op == "log_matmul" {
        bail!(
            "log_matmul: the table mode looks products up by a weight's lns codes, and \
             log_matmul's operands are activations; use another mode (a model running table takes \
             ExpMode::for_activations, the exact mode, for attention)"
        );
    }
    if !x.device().is_cpu() {
        let err = OpError::CpuOnly {
            what: format!("the {mode} exp mode"),
            device: device_name(x.device()),
            instead: "use ExpMode::Exact".into(),
        };
        bail!("{op}: {err}");
    }
    if x.dtype() == DType::F64 {
        bail!("{op}: {}", OpError::NoF64Kernel { exp: mode });
    }
    Ok(())
}
