//! What the op says about devices: their names in messages, and the error on a device it has no
//! kernel for.

use candle_core::{Device, Error};
use emilio_kernels::Backend;

use crate::OpError;

/// The error for running `op` on a GPU backend this build has no kernels for: emilio-op was
/// built without the backend's feature (the only way to hold a CUDA or Metal tensor and reach
/// it, since both paths implement every op).
///
/// Candle's own default ("no cuda implementation for …") does not tell the user what to do;
/// this one names the feature to build with, or the CPU as the way out.
pub(crate) fn unsupported(op: &str, backend: Backend) -> Error {
    OpError::BackendNotBuilt {
        op: op.to_string(),
        device: backend.name(),
        feature: match backend {
            Backend::Cuda => "cuda",
            Backend::Metal => "metal",
        },
    }
    .into()
}

/// A short name for the device in messages: `cpu`, or the GPU backend's name.
pub(crate) fn device_name(device: &Device) -> &'static str {
    match device {
        Device::Cpu => "cpu",
        Device::Cuda(_) => Backend::Cuda.name(),
        Device::Metal(_) => Backend::Metal.name(),
    }
}
