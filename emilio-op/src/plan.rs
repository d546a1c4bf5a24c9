//! What one call runs on a GPU, worked out in plain Rust: the kernels of `kernels/emilio.metal`
//! and `kernels/emilio.cu` (the same names, the same arguments in the same order), their
//! arguments, the temporary buffers and the grids.
//!
//! `crate::metal::exec` encodes a [`Plan`] on a Candle Metal device, `crate::cuda::exec`
//! launches it on a Candle CUDA device; a threadgroup there is a block, a SIMD-group a warp.
//! The tests (`plan/tests/`) run the same plans through the C++ SIMT emulator of
//! `kernels/check/` over both kernel sources, so the shapes, strides, offsets, dtype dispatch
//! and kernel names are exercised on machines without a GPU; only the encoding and the
//! launches themselves are not.
//!
//! Every call first splits its activations once into `ln|x|` (`f32`) and sign masks (`u32`),
//! reading them through their layout (any strides, broadcast batch dims), into a dense buffer
//! whose rows run along the reduction dimension `k`, as the CPU path does
//! ([`crate::cpu::split`]). Then:
//! - a linear layer with at most [`GEMV_MAX_M`] rows (decode) runs the GEMV kernel, one
//!   SIMD-group per output feature; more rows (prefill) run the tiled GEMM kernel;
//! - a product of two activations runs the batched tiled GEMM kernel, with the right operand
//!   split transposed (columns as `k`-runs), once for all batches when it is broadcast.

use candle_core::{bail, DType, Layout, Result, Shape};
use emilio_kernels::Backend;

use crate::check::mixed_dtypes;
use crate::packing::{sign_words_per_row, SIGN_BITS_PER_WORD};

/// SIMD-group width the GEMV kernel assumes (`EMILIO_SIMD_WIDTH`): lane `j` reads sign bit `j`.
pub(crate) const SIMD_WIDTH: usize = 32;
/// Output features per GEMV threadgroup, one SIMD-group each (`EMILIO_GEMV_ROWS_PER_GROUP`).
pub(crate) const GEMV_ROWS_PER_GROUP: usize = 4;
/// Most activation rows the GEMV kernel takes (`EMILIO_GEMV_MAX_M`); more go to the GEMM.
pub(crate) const GEMV_MAX_M: usize = 4;
/// GEMM output tile and `k` step (`EMILIO_GEMM_BM`, `_BN`, `_BK`).
pub(crate) const GEMM_BM: usize = 32;
pub(crate) const GEMM_BN: usize = 32;
#[allow(dead_code)] // the kernels' k step; the host only checks it against the source
pub(crate) const GEMM_BK: usize = 32;
/// Threads per GEMM threadgroup (`EMILIO_GEMM_THREADS`): 16 × 16, a 2 × 2 block of outputs each.
pub(crate) const GEMM_THREADS: usize = 256;
/// Threads per `ln_split` threadgroup, one element each.
pub(crate) const SPLIT_THREADS: usize = 256;

const _: () = assert!(SIGN_BITS_PER_WORD == SIMD_WIDTH);

/// A buffer a dispatch binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Buf {
    /// The op's `i`-th input storage.
    Operand(usize),
    /// The plan's `i`-th temporary buffer ([`Plan::temps`]).
    Temp(usize),
    /// The result.
    Output,
}

/// One kernel argument, at the binding index of its position.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Arg {
    /// A `constant uint &` scalar.
    U32(u32),
    /// A `constant uint *` array.
    U32s(Vec<u32>),
    /// A `device const T *` buffer the kernel reads, from `offset` bytes on.
    Read { buf: Buf, offset: usize },
    /// A `device T *` buffer the kernel writes, from `offset` bytes on.
    Write { buf: Buf, offset: usize },
}

/// One kernel launch: `groups` threadgroups of `threads` threads (`dispatchThreadgroups`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Dispatch {
    pub kernel: String,
    pub args: Vec<Arg>,
    pub groups: [usize; 3],
    pub threads: [usize; 3],
}

/// Everything one call runs, in order.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Label for the command encoder and the output buffer.
    pub label: &'static str,
    /// Sizes in bytes of the temporary buffers.
    pub temps: Vec<usize>,
    pub output_elems: usize,
    pub output_dtype: DType,
    pub output_shape: Shape,
    pub dispatches: Vec<Dispatch>,
}

/// Activations split into logs and sign masks: `count` of each in temporary buffer `temp`,
/// logs (`f32`) from byte 0, masks (`u32`) from byte `4·count`.
struct Split {
    temp: usize,
    count: usize,
}

impl Split {
    fn logs(&self) -> Arg {
        Arg::Read {
            buf: Buf::Temp(self.temp),
            offset: 0,
        }
    }

    fn masks(&self) -> Arg {
        Arg::Read {
            buf: Buf::Temp(self.temp),
            offset: 4 * self.count,
        }
    }
}

/// A tensor's elements as the split reads them: dims (row-major order of the dense result),
/// element strides and the start offset, in elements.
#[derive(Debug, Clone)]
struct View {
    dims: Vec<usize>,
    strides: Vec<usize>,
    start: usize,
}

impl View {
    fn of(layout: &Layout) -> Self {
        Self {
            dims: layout.dims().to_vec(),
            strides: layout.stride().to_vec(),
            start: layout.start_offset(),
        }
    }

    fn elems(&self) -> usize {
        self.dims.iter().product()
    }

    /// Dense row-major: every dim longer than 1 has the stride of the dims after it.
    fn is_contiguous(&self) -> bool {
        let mut expect = 1;
        for (&d, &s) in self.dims.iter().zip(&self.strides).rev() {
            if d > 1 && s != expect {
                return false;
            }
            expect *= d;
        }
        true
    }

    /// The farthest element from the start, in elements.
    fn span(&self) -> usize {
        self.dims
            .iter()
            .zip(&self.strides)
            .map(|(&d, &s)| d.saturating_sub(1) * s)
            .sum()
    }
}

/// `v` as a kernel's 32-bit index, or an error naming what is too large.
fn u32_of(what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| {
        candle_core::Error::Msg(format!(
            "emilio's GPU kernels index with 32 bits, but {what} is {v} (more than 2^32 - 1); \
             split the call or run it on the CPU"
        ))
    })
}

/// Why `gpu` refuses f64.
fn no_f64(gpu: Backend) -> &'static str {
    match gpu {
        Backend::Metal => "Apple GPUs have no f64 arithmetic",
        Backend::Cuda => "emilio's CUDA kernels compute in f32 (f64 runs on the CPU)",
    }
}

/// Kernel-name suffix of an activation dtype, or the error for one the GPU kernels cannot run.
fn act_suffix(gpu: Backend, op: &str, dtype: DType) -> Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::F64 => bail!(
            "{op} cannot run in f64 on a {} device: {}; \
             convert the input with to_dtype(DType::F32), or run on the CPU (Device::Cpu)",
            gpu.name(),
            no_f64(gpu)
        ),
        other => bail!(
            "{op} needs float activations (f32, f16 or bf16 on {}), got {other:?}",
            gpu.name()
        ),
    })
}

/// Kernel-name suffix of a log-weight magnitude dtype, or the error for one no kernel reads.
fn mag_suffix(dtype: DType) -> Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        other => bail!("log-weight magnitudes must be contiguous f32 or f16, got {other:?}"),
    })
}

// The kernel families, named as both sources name them (`act`/`mag`: the suffixes above).

fn split_kernel(contiguous: bool, act: &str) -> String {
    let layout = if contiguous { "contiguous" } else { "strided" };
    format!("emilio_ln_split_{layout}_{act}")
}

fn gemv_kernel(act: &str, mag: &str) -> String {
    format!("emilio_gemv_{act}_{mag}")
}

fn gemm_w_kernel(act: &str, mag: &str) -> String {
    format!("emilio_gemm_w_{act}_{mag}")
}

fn gemm_a_kernel(act: &str) -> String {
    format!("emilio_gemm_a_{act}")
}

/// Every kernel name a plan can form: each family for each suffix [`act_suffix`] and
/// [`mag_suffix`] give. The tests hold this to the kernels both sources define, and the CUDA
/// source's kernels to nvcc's PTX (`kernels/check/tests/cuda_source.rs`).
#[cfg(test)]
pub(crate) fn kernel_names() -> Vec<String> {
    use DType::*;
    let dtypes = [U8, U32, I16, I32, I64, BF16, F16, F32, F64, F8E4M3];
    let acts: Vec<&str> = dtypes
        .iter()
        .filter_map(|&d| act_suffix(Backend::Cuda, "", d).ok())
        .collect();
    let mags: Vec<&str> = dtypes.iter().filter_map(|&d| mag_suffix(d).ok()).collect();
    let mut names = Vec::new();
    for &act in &acts {
        names.push(split_kernel(true, act));
        names.push(split_kernel(false, act));
        for &mag in &mags {
            names.push(gemv_kernel(act, mag));
            names.push(gemm_w_kernel(act, mag));
        }
        names.push(gemm_a_kernel(act));
    }
    names
}

impl Plan {
    fn new(label: &'static str, dtype: DType, shape: Shape) -> Self {
        Self {
            label,
            temps: Vec::new(),
            output_elems: shape.elem_count(),
            output_dtype: dtype,
            output_shape: shape,
            dispatches: Vec::new(),
        }
    }

    /// Splits the elements of operand `src` seen through `view` into a new temporary buffer,
    /// in the row-major order of `view.dims`.
    fn split(&mut self, src: usize, dtype: DType, suffix: &str, view: &View) -> Result<Split> {
        let count = view.elems();
        let temp = self.temps.len();
        self.temps.push(8 * count);
        let split = Split { temp, count };
        if count == 0 {
            return Ok(split);
        }
        let count32 = u32_of("the number of activation elements", count)?;
        let input = Arg::Read {
            buf: Buf::Operand(src),
            offset: view.start * dtype.size_in_bytes(),
        };
        let logs = Arg::Write {
            buf: Buf::Temp(temp),
            offset: 0,
        };
        let masks = Arg::Write {
            buf: Buf::Temp(temp),
            offset: 4 * count,
        };
        let (kernel, args) = if view.is_contiguous() {
            (
                split_kernel(true, suffix),
                vec![Arg::U32(count32), input, logs, masks],
            )
        } else {
            u32_of("the extent of a strided activation", view.span())?;
            let to32 = |v: &[usize], what| v.iter().map(|&x| u32_of(what, x)).collect();
            let dims: Result<Vec<u32>> = to32(&view.dims, "a dimension");
            let strides: Result<Vec<u32>> = to32(&view.strides, "a stride");
            (
                split_kernel(false, suffix),
                vec![
                    Arg::U32(count32),
                    Arg::U32(u32_of("a rank", view.dims.len())?),
                    Arg::U32s(dims?),
                    Arg::U32s(strides?),
                    input,
                    logs,
                    masks,
                ],
            )
        };
        self.dispatches.push(Dispatch {
            kernel,
            args,
            groups: [count.div_ceil(SPLIT_THREADS), 1, 1],
            threads: [SPLIT_THREADS, 1, 1],
        });
        Ok(split)
    }
}

/// The plan of `log_matmul` for operands `a` (`(…, m, k)`, layout `la`) and `b` (`(…, k, n)`,
/// layout `lb`) of one `dtype`, whose dims the caller has checked (`crate::matmul`).
pub(crate) fn log_matmul(
    gpu: Backend,
    dtype: DType,
    b_dtype: DType,
    la: &Layout,
    lb: &Layout,
    (m, k, n): (usize, usize, usize),
) -> Result<Plan> {
    if dtype != b_dtype {
        let supported = format!("f32, f16, bf16 on {}", gpu.name());
        return Err(mixed_dtypes(&supported, dtype, b_dtype));
    }
    let suffix = act_suffix(gpu, "log_matmul", dtype)?;
    let rank = la.dims().len();
    let batch_dims = &la.dims()[..rank - 2];
    let batch: usize = batch_dims.iter().product();
    let shape = Shape::from(batch_dims).extend(&[m, n]);
    let mut plan = Plan::new("emilio_log_matmul", dtype, shape);
    u32_of("the result's element count", plan.output_elems)?;

    // A as (batch, m, k).
    let a = plan.split(0, dtype, suffix, &View::of(la))?;
    // B (…, k, n) read transposed, as (…, n, k): each output column a contiguous k-run. A B
    // broadcast over the batch (every batch dim of size 1 or stride 0) is split once.
    let mut vb = View::of(lb);
    vb.dims.swap(rank - 2, rank - 1);
    vb.strides.swap(rank - 2, rank - 1);
    let shared = vb.dims[..rank - 2]
        .iter()
        .zip(&vb.strides[..rank - 2])
        .all(|(&d, &s)| d == 1 || s == 0);
    if shared {
        vb.dims.drain(..rank - 2);
        vb.strides.drain(..rank - 2);
    }
    let b = plan.split(1, dtype, suffix, &vb)?;
    let b_batch_stride = if shared { 0 } else { n * k };

    if plan.output_elems > 0 {
        plan.dispatches.push(Dispatch {
            kernel: gemm_a_kernel(suffix),
            args: vec![
                Arg::U32(u32_of("m", m)?),
                Arg::U32(u32_of("n", n)?),
                Arg::U32(u32_of("k", k)?),
                Arg::U32(u32_of("the right operand's batch stride", b_batch_stride)?),
                a.logs(),
                a.masks(),
                b.logs(),
                b.masks(),
                Arg::Write {
                    buf: Buf::Output,
                    offset: 0,
                },
            ],
            groups: [n.div_ceil(GEMM_BN), m.div_ceil(GEMM_BM), batch],
            threads: [GEMM_THREADS, 1, 1],
        });
    }
    Ok(plan)
}

/// The plan of `LogLinearOp`: activations `x` (`(…, in)`, any float dtype, any layout) against a
/// log-domain weight, magnitudes `(out, in)` (`f32` or `f16`, contiguous) and packed signs
/// `(out, ⌈in/32⌉)` (`u32`, contiguous), as [`crate::packing`] lays them out.
pub(crate) fn log_linear(
    gpu: Backend,
    x_dtype: DType,
    lx: &Layout,
    mag_dtype: DType,
    lm: &Layout,
    sign_dtype: DType,
    ls: &Layout,
) -> Result<Plan> {
    const OP: &str = "a log-domain linear layer";
    let (n, k) = lm.shape().dims2()?;
    let mag = mag_suffix(mag_dtype)?;
    if !lm.is_contiguous() {
        bail!("log-weight magnitudes must be contiguous f32 or f16, got a strided {mag_dtype:?} tensor");
    }
    let words = sign_words_per_row(k);
    if sign_dtype != DType::U32 || !ls.is_contiguous() || ls.shape().elem_count() != n * words {
        bail!(
            "log-weight signs must be contiguous u32 of shape ({n}, {words}), got {sign_dtype:?} {:?}",
            ls.dims()
        );
    }
    let suffix = act_suffix(gpu, OP, x_dtype)?;
    let dims = lx.dims();
    match dims.last() {
        Some(&last) if last == k => {}
        _ => bail!(
            "{OP} with weight (out, in) = ({n}, {k}) needs input of shape (…, {k}), got {dims:?}"
        ),
    }
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let shape = Shape::from(&dims[..dims.len() - 1]).extend(&[n]);
    let mut plan = Plan::new("emilio_log_linear", x_dtype, shape);
    u32_of("the result's element count", plan.output_elems)?;
    u32_of("the weight's element count", n * k)?;

    // x as (rows, k).
    let x = plan.split(0, x_dtype, suffix, &View::of(lx))?;
    if plan.output_elems == 0 {
        return Ok(plan);
    }
    let args = vec![
        Arg::U32(u32_of("the number of rows", rows)?),
        Arg::U32(u32_of("out", n)?),
        Arg::U32(u32_of("in", k)?),
        x.logs(),
        x.masks(),
        Arg::Read {
            buf: Buf::Operand(1),
            offset: lm.start_offset() * mag_dtype.size_in_bytes(),
        },
        Arg::Read {
            buf: Buf::Operand(2),
            offset: ls.start_offset() * DType::U32.size_in_bytes(),
        },
        Arg::Write {
            buf: Buf::Output,
            offset: 0,
        },
    ];
    plan.dispatches.push(if rows <= GEMV_MAX_M {
        Dispatch {
            kernel: gemv_kernel(suffix, mag),
            args,
            groups: [n.div_ceil(GEMV_ROWS_PER_GROUP), 1, 1],
            threads: [GEMV_ROWS_PER_GROUP * SIMD_WIDTH, 1, 1],
        }
    } else {
        Dispatch {
            kernel: gemm_w_kernel(suffix, mag),
            args,
            groups: [n.div_ceil(GEMM_BN), rows.div_ceil(GEMM_BM), 1],
            threads: [GEMM_THREADS, 1, 1],
        }
    });
    Ok(plan)
}

#[cfg(test)]
mod tests;
