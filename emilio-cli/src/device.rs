//! `--device` to a Candle device, with an error that says how to get the backend.

use anyhow::{bail, Context, Result};
use candle_core::Device;

use crate::cli::{DeviceArg, ModelArgs};

/// Opens the device, or explains which build feature it needs.
pub fn open(arg: DeviceArg) -> Result<Device> {
    match arg {
        DeviceArg::Cpu => Ok(Device::Cpu),
        DeviceArg::Cuda => {
            if !cfg!(feature = "cuda") {
                bail!(
                    "this emilio was built without CUDA support: rebuild with \
                     `cargo build --release --features cuda` (needs the CUDA toolkit), \
                     or use --device cpu"
                )
            }
            Device::new_cuda(0).context("opening CUDA device 0")
        }
        DeviceArg::Metal => {
            if !cfg!(feature = "metal") {
                bail!(
                    "this emilio was built without Metal support: on a Mac rebuild with \
                     `cargo build --release --features metal`, or use --device cpu"
                )
            }
            Device::new_metal(0).context("opening Metal device 0")
        }
    }
}

/// Opens `--device` for a command that runs the log-domain model (`emilio` is true) and checks
/// `--weight-format` and `--exp` against each other and the device, before any file is read:
/// a pair the op cannot run is refused at once, with advice in flags.
pub fn open_for(args: &ModelArgs, emilio: bool) -> Result<Device> {
    let device = open(args.device)?;
    if emilio {
        crate::advice::check_log_config(args.log_config(), &device)?;
    }
    Ok(device)
}
