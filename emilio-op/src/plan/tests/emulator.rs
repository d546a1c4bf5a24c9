//! The bridge from a [`Plan`] to the SIMT emulator of `kernels/check/`
//! ([`emilio_kernels_check::emulator`]): a plan's buffers and dispatches in the emulator's
//! backend-neutral terms, CPU tensors in and out as the bytes a device buffer would hold, and
//! the comparison of an emulated result with the CPU op's.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Device, Layout, Storage, Tensor};
use emilio_kernels_check::emulator::{self, Emulator, Program, Ran};

use crate::plan::{Arg, Buf, Plan};

/// `plan` as an emulator program over `operands` (whole storages): the operands, then the
/// plan's temporary buffers and its output, poisoned until a kernel writes them.
fn program(plan: &Plan, operands: Vec<Vec<u8>>) -> Program {
    let temps = operands.len();
    let output = temps + plan.temps.len();
    let index = |b: Buf| match b {
        Buf::Operand(i) => i,
        Buf::Temp(i) => temps + i,
        Buf::Output => output,
    };
    let mut buffers: Vec<emulator::Buffer> =
        operands.into_iter().map(emulator::Buffer::Data).collect();
    buffers.extend(
        plan.temps
            .iter()
            .map(|&bytes| emulator::Buffer::Poisoned(bytes)),
    );
    let out_bytes = plan.output_elems * plan.output_dtype.size_in_bytes();
    buffers.push(emulator::Buffer::Poisoned(out_bytes));
    let dispatches = plan
        .dispatches
        .iter()
        .map(|d| emulator::Dispatch {
            kernel: d.kernel.clone(),
            args: d
                .args
                .iter()
                .map(|a| match a {
                    Arg::U32(v) => emulator::Arg::U32(*v),
                    Arg::U32s(v) => emulator::Arg::U32s(v.clone()),
                    Arg::Read { buf, offset } | Arg::Write { buf, offset } => {
                        emulator::Arg::Buffer {
                            index: index(*buf),
                            offset: *offset,
                        }
                    }
                })
                .collect(),
            groups: d.groups,
            threads: d.threads,
        })
        .collect();
    Program {
        label: plan.label.to_string(),
        buffers,
        dispatches,
        output,
    }
}

/// Runs `plan` over `operands` (whole storages) in `em`.
pub(super) fn run(em: &Emulator, plan: &Plan, operands: Vec<Vec<u8>>) -> Ran {
    em.run(&program(plan, operands))
}

/// The raw bytes of a CPU storage (little-endian elements).
fn storage_bytes(s: &CpuStorage) -> Vec<u8> {
    match s {
        CpuStorage::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        CpuStorage::F16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        CpuStorage::BF16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        CpuStorage::U32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        other => panic!("no emulator input of dtype {:?}", other.dtype()),
    }
}

/// A tensor's whole storage (as a device buffer would hold it) and its layout.
fn operand(t: &Tensor) -> (Vec<u8>, Layout) {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => (storage_bytes(s), layout.clone()),
        _ => panic!("emulator operands are CPU tensors"),
    }
}

/// The output of a run of `plan` as a CPU tensor of its dtype and shape.
fn output_tensor(plan: &Plan, bytes: &[u8]) -> Tensor {
    Tensor::from_raw_buffer(
        bytes,
        plan.output_dtype,
        plan.output_shape.dims(),
        &Device::Cpu,
    )
    .unwrap()
}

/// `log_matmul(a, b)` as the emulator's GPU path computes it.
pub(super) fn emulated_matmul(em: &Emulator, a: &Tensor, b: &Tensor) -> Tensor {
    let r = a.rank();
    let dims = (a.dims()[r - 2], a.dims()[r - 1], b.dims()[r - 1]);
    let (ab, la) = operand(a);
    let (bb, lb) = operand(b);
    let plan = crate::plan::log_matmul(em.backend(), a.dtype(), b.dtype(), &la, &lb, dims).unwrap();
    output_tensor(&plan, &run(em, &plan, vec![ab, bb]).output)
}

/// A linear layer as a GPU path computes it, emulated.
pub(super) struct Linear {
    pub y: Tensor,
    /// The kernel of the product (the last dispatch).
    pub kernel: String,
    /// Its 16-byte loads (CUDA's vectorised GEMV loop).
    pub vector_loads: usize,
}

/// `x` against the log-domain weight `(magnitudes, signs)` (whatever their layouts), as the
/// emulator's GPU path computes it.
pub(super) fn emulated_linear_parts(
    em: &Emulator,
    x: &Tensor,
    magnitudes: &Tensor,
    signs: &Tensor,
) -> Linear {
    let (xb, lx) = operand(x);
    let (mb, lm) = operand(magnitudes);
    let (sb, ls) = operand(signs);
    let plan = crate::plan::log_linear(
        em.backend(),
        x.dtype(),
        &lx,
        magnitudes.dtype(),
        &lm,
        signs.dtype(),
        &ls,
    )
    .unwrap();
    let ran = run(em, &plan, vec![xb, mb, sb]);
    Linear {
        y: output_tensor(&plan, &ran.output),
        kernel: plan.dispatches.last().unwrap().kernel.clone(),
        vector_loads: ran.vector_loads.last().copied().unwrap_or(0),
    }
}

/// `w.forward(x)` as the emulator's GPU path computes it.
pub(super) fn emulated_linear(em: &Emulator, x: &Tensor, w: &crate::LogWeight) -> Linear {
    emulated_linear_parts(
        em,
        x,
        w.magnitudes(),
        w.signs().expect("an f32/f16 weight has sign bits"),
    )
}

/// Values of a float tensor as f64, row-major.
pub(super) fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// `Σ_k |a_ik|·|b_kj|` in f64 (finite inputs): the scale of each output's rounding error.
pub(super) fn abs_sums(a: &Tensor, b: &Tensor) -> Vec<f64> {
    let a = a.to_dtype(DType::F64).unwrap().abs().unwrap();
    let b = b.to_dtype(DType::F64).unwrap().abs().unwrap();
    values(&a.matmul(&b).unwrap())
}

/// The emulated result against the CPU op's: the same products summed in another order, so
/// within `(2k + 64)·2⁻²⁴·Σ|p|` (plus the output dtype's rounding); NaN where the CPU has NaN,
/// the same infinity, and the same signed zero where every product is zero.
pub(super) fn assert_matches_cpu(what: &str, got: &Tensor, want: &Tensor, sums: &[f64], k: usize) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    assert_eq!(got.dtype(), want.dtype(), "{what}: dtype");
    let (g, w) = (values(got), values(want));
    let (rel, abs) = match got.dtype() {
        DType::F16 => (2f64.powi(-10), 2f64.powi(-24)),
        DType::BF16 => (2f64.powi(-7), 2f64.powi(-133)),
        _ => (0.0, 0.0),
    };
    for (i, ((&g, &w), &s)) in g.iter().zip(&w).zip(sums).enumerate() {
        let ok = if w.is_nan() {
            g.is_nan()
        } else if w.is_infinite() || s == 0.0 {
            g.to_bits() == w.to_bits()
        } else {
            let tol = s * (2 * k + 64) as f64 * 2f64.powi(-24)
                + (k + 1) as f64 * 2f64.powi(-148)
                + w.abs() * rel
                + abs;
            (g - w).abs() <= tol
        };
        assert!(
            ok,
            "{what}: output {i}: emulated {g:e}, CPU {w:e} (Σ|p| = {s:e}, k = {k})"
        );
    }
}
