//! Encodes a [`Plan`] on a Candle Metal device, the way candle-nn 0.11's custom ops do
//! (`SoftmaxLastDim::metal_fwd`, `RmsNorm::metal_fwd`, `Sdpa::metal_fwd` in `candle-nn/src/ops.rs`,
//! and the `call_*` helpers of candle-metal-kernels they use):
//! - output and temporary buffers from `device.new_buffer_builder().with_size_for(..)` (the
//!   device's pooled, GPU-private buffers), allocated before the encoder is taken;
//! - one `device.command_encoder()` for the call: the device's shared concurrent compute encoder,
//!   holding its command lock until dropped, with every dispatch of the plan encoded on it in
//!   order, as `call_sdpa_vector_2pass` encodes its two passes;
//! - arguments bound with `candle_metal_kernels::utils::set_param`, buffers wrapped in `Input` /
//!   `Output` so the encoder's hazard tracking inserts a barrier between a dispatch that writes
//!   a buffer and the next one that reads it (the split, then the product);
//! - `dispatch_thread_groups`, then `MetalStorage::new(output, device.clone(), count, dtype)`.

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::{bail, MetalStorage, Result};
use candle_metal_kernels::metal::{Buffer, ComputeCommandEncoder};
use candle_metal_kernels::utils::{set_param, Input, Output};
use objc2_metal::MTLSize;

use super::device::kernels;
use crate::plan::{Arg, Buf, Plan};

fn size(v: [usize; 3]) -> MTLSize {
    MTLSize {
        width: v[0],
        height: v[1],
        depth: v[2],
    }
}

/// Runs `plan` with `operands` as its [`Buf::Operand`]s; returns the result's storage.
pub(crate) fn run(plan: &Plan, operands: &[&MetalStorage]) -> Result<MetalStorage> {
    let device = operands[0].device();
    for (i, s) in operands.iter().enumerate() {
        if !s.device().same_device(device) {
            bail!("{}: operand {i} is on another Metal device", plan.label);
        }
    }
    let kernels = kernels(device)?;
    let pipelines = plan
        .dispatches
        .iter()
        .map(|d| {
            let pipeline = kernels.pipeline(device, &d.kernel)?;
            let threads: usize = d.threads.iter().product();
            let max = pipeline.max_total_threads_per_threadgroup();
            if threads > max {
                bail!(
                    "{} needs {threads} threads per threadgroup, this GPU allows {max}",
                    d.kernel
                );
            }
            Ok(pipeline)
        })
        .collect::<Result<Vec<_>>>()?;
    // A temporary holds f32 logs and u32 masks: sized in u32s (never 0, the pool's minimum is
    // one element anyway).
    let temps = plan
        .temps
        .iter()
        .map(|&bytes| {
            device
                .new_buffer_builder()
                .with_size_for(bytes.div_ceil(4).max(1), candle_core::DType::U32)
                .with_label("emilio_split")
                .build()
        })
        .collect::<Result<Vec<_>>>()?;
    let output = device
        .new_buffer_builder()
        .with_size_for(plan.output_elems, plan.output_dtype)
        .with_label(plan.label)
        .build()?;
    let buffer = |b: Buf| -> &Buffer {
        match b {
            Buf::Operand(i) => operands[i].buffer(),
            Buf::Temp(i) => &temps[i],
            Buf::Output => &output,
        }
    };

    if !plan.dispatches.is_empty() {
        let encoder = device.command_encoder()?;
        encoder.set_label(plan.label);
        let encoder: &ComputeCommandEncoder = encoder.as_ref();
        for (d, pipeline) in plan.dispatches.iter().zip(&pipelines) {
            encoder.set_compute_pipeline_state(pipeline);
            for (index, arg) in d.args.iter().enumerate() {
                match arg {
                    Arg::U32(v) => set_param(encoder, index, *v),
                    Arg::U32s(v) => set_param(encoder, index, v.as_slice()),
                    Arg::Read { buf, offset } => {
                        set_param(encoder, index, Input::with_offset(buffer(*buf), *offset))
                    }
                    Arg::Write { buf, offset } => {
                        set_param(encoder, index, Output::with_offset(buffer(*buf), *offset))
                    }
                }
            }
            encoder.dispatch_thread_groups(size(d.groups), size(d.threads));
        }
    }
    Ok(MetalStorage::new(
        output,
        device.clone(),
        plan.output_elems,
        plan.output_dtype,
    ))
}
