//! What the op says on devices it has no kernel for.

use candle_core::{Device, Error};

const BUILT_WITH_METAL: bool = cfg!(feature = "metal");
const BUILT_WITH_CUDA: bool = cfg!(feature = "cuda");

/// The error for running `op` on a GPU backend whose kernels this build lacks.
///
/// Candle's own default ("no cuda implementation for …") does not tell the user what to do;
/// this one names the feature to build with, or the CPU as the way out.
pub(crate) fn unsupported(op: &str, device: &str) -> Error {
    let feature = device.to_ascii_lowercase();
    let built = if feature == "metal" {
        BUILT_WITH_METAL
    } else {
        BUILT_WITH_CUDA
    };
    let msg = if built {
        format!(
            "emilio-op has no {device} kernel for {op} yet; run on the CPU (--device cpu) \
             until the {device} kernels land"
        )
    } else {
        format!(
            "emilio-op was built without its `{feature}` feature, so {op} cannot run on a \
             {device} device; rebuild with `--features {feature}` or run on the CPU (--device cpu)"
        )
    };
    Error::Msg(msg)
}

/// A short name for the device in messages.
pub(crate) fn device_name(device: &Device) -> &'static str {
    match device {
        Device::Cpu => "cpu",
        Device::Cuda(_) => "CUDA",
        Device::Metal(_) => "Metal",
    }
}
