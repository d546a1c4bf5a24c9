//! Launches a [`Plan`] on a Candle CUDA device, the way candle-nn 0.11's custom ops do
//! (`SoftmaxLastDim::cuda_fwd`, `RmsNorm::cuda_fwd` in `candle-nn/src/ops.rs`):
//! - the module from `CudaDevice::get_or_load_custom_func`, loaded once per device and kept in
//!   the device's own module cache under the name [`MODULE`];
//! - output and temporary buffers from `CudaDevice::alloc` (uninitialised: every element is
//!   written by the plan's kernels before it is read), small `u32` arrays with `clone_htod`;
//! - one launch per dispatch, in order, on the device's stream, arguments pushed in the order the
//!   kernel declares them; stream order makes each launch see the previous one's writes.
//!
//! Buffers are passed as raw device pointers at byte offsets (a plan's offsets are in bytes and
//! its operands have several dtypes). They are taken with cudarc's `device_ptr` /
//! `device_ptr_mut`, whose guards are held until every launch is queued, so cudarc's
//! cross-stream event tracking sees every read and write, as it does for Candle's own kernels.

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg, SyncOnDrop,
};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{bail, CudaDevice, CudaStorage, DType, Result};
use half::{bf16, f16};

use crate::plan::{Arg, Buf, Plan};

/// The name of emilio's module in the device's cache of custom modules.
const MODULE: &str = "emilio";

/// The largest grid `y` and `z` CUDA allows.
const MAX_GRID_YZ: usize = 65_535;

/// The plan's result, allocated in its dtype.
enum Output {
    F32(CudaSlice<f32>),
    F16(CudaSlice<f16>),
    BF16(CudaSlice<bf16>),
}

impl Output {
    fn alloc(dev: &CudaDevice, dtype: DType, elems: usize) -> Result<Self> {
        // Never zero-sized: the driver refuses empty allocations, and a plan with no output
        // elements still returns a storage.
        let elems = elems.max(1);
        // SAFETY: uninitialised device memory; every element of the result is written by the
        // plan's last kernel before Candle reads it (a plan with no dispatches has no elements).
        Ok(match dtype {
            DType::F32 => Output::F32(unsafe { dev.alloc::<f32>(elems)? }),
            DType::F16 => Output::F16(unsafe { dev.alloc::<f16>(elems)? }),
            DType::BF16 => Output::BF16(unsafe { dev.alloc::<bf16>(elems)? }),
            other => bail!("emilio's CUDA kernels do not write {other:?} results"),
        })
    }

    fn ptr<'a>(&'a mut self, stream: &'a CudaStream) -> (u64, SyncOnDrop<'a>) {
        match self {
            Output::F32(s) => s.device_ptr_mut(stream),
            Output::F16(s) => s.device_ptr_mut(stream),
            Output::BF16(s) => s.device_ptr_mut(stream),
        }
    }

    fn into_storage(self, dev: &CudaDevice) -> CudaStorage {
        match self {
            Output::F32(s) => CudaStorage::wrap_cuda_slice(s, dev.clone()),
            Output::F16(s) => CudaStorage::wrap_cuda_slice(s, dev.clone()),
            Output::BF16(s) => CudaStorage::wrap_cuda_slice(s, dev.clone()),
        }
    }
}

/// The device address of an operand's storage, for reading.
fn operand_ptr<'a>(s: &'a CudaStorage, stream: &'a CudaStream) -> Result<(u64, SyncOnDrop<'a>)> {
    Ok(match &s.slice {
        CudaStorageSlice::F32(v) => v.device_ptr(stream),
        CudaStorageSlice::F16(v) => v.device_ptr(stream),
        CudaStorageSlice::BF16(v) => v.device_ptr(stream),
        CudaStorageSlice::U32(v) => v.device_ptr(stream),
        _ => bail!(
            "emilio's CUDA kernels read f32, f16, bf16 and u32 buffers, got {:?}",
            s.dtype()
        ),
    })
}

/// One kernel argument, resolved to what is pushed.
enum Value {
    U32(u32),
    Ptr(u64),
}

/// Runs `plan` with `operands` as its [`Buf::Operand`]s; returns the result's storage.
pub(crate) fn run(plan: &Plan, operands: &[&CudaStorage]) -> Result<CudaStorage> {
    let dev = operands[0].device();
    for (i, s) in operands.iter().enumerate() {
        if !s.device().same_device(dev) {
            bail!("{}: operand {i} is on another CUDA device", plan.label);
        }
    }
    let stream = dev.cuda_stream();
    let stream: &CudaStream = &stream;

    // Temporaries hold f32 logs and u32 masks: sized in u32s.
    let mut temps = plan
        .temps
        .iter()
        // SAFETY: uninitialised; a split kernel writes every element a later kernel reads.
        .map(|&bytes| unsafe { dev.alloc::<u32>(bytes.div_ceil(4).max(1)) })
        .collect::<Result<Vec<_>>>()?;
    let mut output = Output::alloc(dev, plan.output_dtype, plan.output_elems)?;
    // `u32s` arguments (dims and strides of a strided split), one device array each.
    let arrays = plan
        .dispatches
        .iter()
        .flat_map(|d| &d.args)
        .filter_map(|a| match a {
            Arg::U32s(v) => Some(dev.clone_htod(v.as_slice())),
            _ => None,
        })
        .collect::<Result<Vec<_>>>()?;

    {
        // Device addresses, with the guards that record each use on the stream; held until
        // every launch below is queued.
        let mut guards = Vec::new();
        let mut operand_addrs = Vec::with_capacity(operands.len());
        for s in operands {
            let (addr, guard) = operand_ptr(s, stream)?;
            operand_addrs.push(addr);
            guards.push(guard);
        }
        let mut temp_addrs = Vec::with_capacity(temps.len());
        for t in temps.iter_mut() {
            let (addr, guard) = t.device_ptr_mut(stream);
            temp_addrs.push(addr);
            guards.push(guard);
        }
        let (output_addr, guard) = output.ptr(stream);
        guards.push(guard);
        let mut array_addrs = Vec::with_capacity(arrays.len());
        for a in &arrays {
            let (addr, guard) = a.device_ptr(stream);
            array_addrs.push(addr);
            guards.push(guard);
        }
        let addr = |buf: Buf, offset: usize| -> u64 {
            let base = match buf {
                Buf::Operand(i) => operand_addrs[i],
                Buf::Temp(i) => temp_addrs[i],
                Buf::Output => output_addr,
            };
            base + offset as u64
        };

        let mut next_array = 0;
        for d in &plan.dispatches {
            if d.groups[1] > MAX_GRID_YZ || d.groups[2] > MAX_GRID_YZ {
                bail!(
                    "{}: {} needs a grid of {:?} blocks; CUDA allows at most {MAX_GRID_YZ} in y \
                     and z (too many rows or batches for one call: split it, or run on the CPU)",
                    plan.label,
                    d.kernel,
                    d.groups
                );
            }
            let values: Vec<Value> = d
                .args
                .iter()
                .map(|a| match a {
                    Arg::U32(v) => Value::U32(*v),
                    Arg::U32s(_) => {
                        next_array += 1;
                        Value::Ptr(array_addrs[next_array - 1])
                    }
                    Arg::Read { buf, offset } | Arg::Write { buf, offset } => {
                        Value::Ptr(addr(*buf, *offset))
                    }
                })
                .collect();
            let func = dev.get_or_load_custom_func(&d.kernel, MODULE, emilio_kernels::PTX)?;
            let mut builder = func.builder();
            for v in &values {
                match v {
                    Value::U32(x) => builder.arg(x),
                    Value::Ptr(p) => builder.arg(p),
                };
            }
            let cfg = LaunchConfig {
                grid_dim: (
                    u32::try_from(d.groups[0]).map_err(|_| {
                        candle_core::Error::Msg(format!(
                            "{}: {} needs {} blocks in x, more than CUDA allows",
                            plan.label, d.kernel, d.groups[0]
                        ))
                    })?,
                    d.groups[1] as u32,
                    d.groups[2] as u32,
                ),
                block_dim: (
                    d.threads[0] as u32,
                    d.threads[1] as u32,
                    d.threads[2] as u32,
                ),
                // Every kernel's shared memory is static (the GEMM tiles).
                shared_mem_bytes: 0,
            };
            // SAFETY: the arguments match the kernel's parameters in number, order and size
            // (u32 by value, pointers as 64-bit device addresses; `crate::plan` builds them from
            // the kernels' signatures, and the emulator tests run the same plans against the
            // same source); every address lies inside a live allocation held above, at an offset
            // the plan computed from the operands' layouts.
            unsafe { builder.launch(cfg) }.w()?;
        }
        drop(guards);
    }
    drop(temps);
    drop(arrays);
    Ok(output.into_storage(dev))
}
