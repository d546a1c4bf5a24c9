//! `log_matmul` and `broadcast_log_matmul`: both operands are activations.

use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CudaStorage, CustomOp2, Layout, MetalStorage, Result, Shape, Tensor,
};
use emilio_kernels::Backend;

use crate::backend::unsupported;
use crate::check::{check_float, check_mode, check_same, mixed_dtypes};
use crate::cpu::gemm::{log_gemm, SplitColumns};
use crate::cpu::input::Input;
use crate::cpu::split::{ln_split, MatrixView};
use crate::ExpMode;

/// The log-domain matrix product of two activations, as a Candle [`CustomOp2`].
///
/// Crate-private: users call [`log_matmul`], which checks shapes and handles empty products
/// first.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LogMatMul {
    /// How each product's `exp` is taken (the CPU kernels; GPUs take only the exact mode, which
    /// [`log_matmul_with`] checks before the op runs).
    pub exp: ExpMode,
}

impl CustomOp2 for LogMatMul {
    fn name(&self) -> &'static str {
        "emilio-log-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = matmul_dims(l1.dims(), l2.dims())?;
        let mode = self.exp;
        match (s1, s2) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => Ok(cpu_matmul(mode, a, l1, b, l2, dims)),
            (CpuStorage::F64(a), CpuStorage::F64(b)) if mode == ExpMode::Exact => {
                Ok(cpu_matmul(mode, a, l1, b, l2, dims))
            }
            (CpuStorage::F16(a), CpuStorage::F16(b)) => Ok(cpu_matmul(mode, a, l1, b, l2, dims)),
            (CpuStorage::BF16(a), CpuStorage::BF16(b)) => Ok(cpu_matmul(mode, a, l1, b, l2, dims)),
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                bail!("log_matmul: the {mode} exp mode has no f64 kernel; use the exact mode")
            }
            _ => Err(mixed_dtypes("f32, f64, f16, bf16", s1.dtype(), s2.dtype())),
        }
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        #[cfg(feature = "cuda")]
        {
            let dims = matmul_dims(l1.dims(), l2.dims())?;
            let (gpu, d1, d2) = (Backend::Cuda, s1.dtype(), s2.dtype());
            let plan = crate::plan::log_matmul(gpu, d1, d2, l1, l2, dims)?;
            Ok((crate::cuda::run(&plan, &[s1, s2])?, plan.output_shape))
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (s1, l1, s2, l2);
            Err(unsupported("log_matmul", Backend::Cuda))
        }
    }

    fn metal_fwd(
        &self,
        s1: &MetalStorage,
        l1: &Layout,
        s2: &MetalStorage,
        l2: &Layout,
    ) -> Result<(MetalStorage, Shape)> {
        #[cfg(emilio_metal)]
        {
            let dims = matmul_dims(l1.dims(), l2.dims())?;
            let (gpu, d1, d2) = (Backend::Metal, s1.dtype(), s2.dtype());
            let plan = crate::plan::log_matmul(gpu, d1, d2, l1, l2, dims)?;
            Ok((crate::metal::run(&plan, &[s1, s2])?, plan.output_shape))
        }
        #[cfg(not(emilio_metal))]
        {
            let _ = (s1, l1, s2, l2);
            Err(unsupported("log_matmul", Backend::Metal))
        }
    }
}

/// `(m, k, n)` of a `(…, m, k) · (…, k, n)` product, or an error naming both shapes.
fn matmul_dims(a: &[usize], b: &[usize]) -> Result<(usize, usize, usize)> {
    let rank = a.len();
    if rank < 2 || b.len() != rank {
        bail!(
            "log_matmul needs two operands of the same rank, at least 2 ((…, m, k) and (…, k, n)), \
             got shapes {a:?} and {b:?}"
        );
    }
    let (m, k) = (a[rank - 2], a[rank - 1]);
    let (k2, n) = (b[rank - 2], b[rank - 1]);
    if k != k2 {
        bail!("log_matmul inner dimensions differ: lhs {a:?} has k = {k}, rhs {b:?} has k = {k2}");
    }
    if a[..rank - 2] != b[..rank - 2] {
        bail!(
            "log_matmul batch dimensions differ: lhs {a:?}, rhs {b:?}; \
             use broadcast_log_matmul to broadcast them"
        );
    }
    Ok((m, k, n))
}

fn cpu_matmul<S: Input>(
    mode: ExpMode,
    a: &[S],
    la: &Layout,
    b: &[S],
    lb: &Layout,
    (m, k, n): (usize, usize, usize),
) -> (CpuStorage, Shape) {
    let va = MatrixView::new(la);
    let mut vb = MatrixView::new(lb).transposed();
    // An operand broadcast over the batch (every batch at one offset) is split once.
    let shared = vb.batch_offsets.windows(2).all(|w| w[0] == w[1]);
    if shared {
        vb.batch_offsets.truncate(1);
    }
    let batch = va.batch();
    let split_a = ln_split(mode, a, &va);
    let cols = SplitColumns {
        split: ln_split(mode, b, &vb),
        n,
        k,
        shared,
    };
    let c = log_gemm(mode, batch, (m, n, k), &split_a, &cols);
    let out: Vec<S> = c.into_iter().map(S::from_acc).collect();
    let rank = la.dims().len();
    let shape = Shape::from(&la.dims()[..rank - 2]).extend(&[m, n]);
    (S::to_cpu_storage_owned(out), shape)
}

/// The log-domain matrix product `a · b`, with the shape rules of [`Tensor::matmul`].
///
/// `a` is `(…, m, k)`, `b` is `(…, k, n)` with the same batch dims; the result is `(…, m, n)`
/// where `C[i,j] = Σ_k s(a)·s(b)·exp(ln|a[i,k]| + ln|b[k,j]|)`. Operands may have any strides
/// (transposed, narrowed, broadcast), as attention produces them; they are read once, when
/// split into logs. Both must share one float dtype: `f32`, `f16` and `bf16` accumulate in
/// `f32`, `f64` in `f64`; the result has the operands' dtype.
///
/// ```
/// use candle_core::{Device, Tensor};
///
/// let q = Tensor::new(&[[[1.0f32, -2.0], [0.5, 4.0]]], &Device::Cpu)?; // (1, 2, 2)
/// let k = Tensor::new(&[[[3.0f32, 1.0], [-1.0, 0.0]]], &Device::Cpu)?;
/// let scores = emilio_op::log_matmul(&q, &k.transpose(1, 2)?)?;     // q · kᵀ
/// let stock = q.matmul(&k.transpose(1, 2)?)?;
/// let diff = (scores - stock)?.abs()?.max_all()?.to_scalar::<f32>()?;
/// assert!(diff < 1e-5);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn log_matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    log_matmul_with(a, b, ExpMode::Exact)
}

/// [`log_matmul`] with each product's `exp` taken as `exp` says (the precision dial; see
/// [`ExpMode`] for each mode's error bound). [`ExpMode::Exact`] is [`log_matmul`] itself; the
/// other modes run on the CPU, for `f32`, `f16` and `bf16` operands.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use emilio_op::{log_matmul_with, ExpMode};
///
/// let a = Tensor::new(&[[1.5f32, -2.0, 0.25]], &Device::Cpu)?;
/// let b = Tensor::new(&[[4.0f32], [1.0], [-8.0]], &Device::Cpu)?;
/// let exact = a.matmul(&b)?.to_vec2::<f32>()?[0][0]; // 1.5·4 − 2 − 2 = 2
/// let approx = log_matmul_with(&a, &b, ExpMode::Mitchell)?.to_vec2::<f32>()?[0][0];
/// // Each product is within 3.92% of the true one, so the sum within 3.92% of Σ|aᵢbᵢ| = 10.
/// assert!((approx - exact).abs() <= 0.0392 * 10.0 + 1e-5);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn log_matmul_with(a: &Tensor, b: &Tensor, exp: ExpMode) -> Result<Tensor> {
    check_float("log_matmul", a)?;
    check_same("log_matmul", a, b)?;
    check_mode("log_matmul", exp, a)?;
    let (m, k, n) = matmul_dims(a.dims(), b.dims())?;
    if k == 0 || m == 0 || n == 0 {
        // An empty sum is zero, as in stock matmul.
        let rank = a.rank();
        let shape = Shape::from(&a.dims()[..rank - 2]).extend(&[m, n]);
        return Tensor::zeros(shape, a.dtype(), a.device());
    }
    a.apply_op2_no_bwd(b, &LogMatMul { exp })
}

/// [`log_matmul`] with the broadcasting rules of [`Tensor::broadcast_matmul`]: batch dims of
/// size 1 or missing are broadcast.
///
/// Broadcast operands are never copied batch by batch: a rank-2 `b` against a contiguous `a` is
/// one `(batch·m, k) · (k, n)` product, and any other broadcast `b` is split into logs once.
pub fn broadcast_log_matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    broadcast_log_matmul_with(a, b, ExpMode::Exact)
}

/// [`broadcast_log_matmul`] with each product's `exp` taken as `exp` says (see
/// [`log_matmul_with`]).
pub fn broadcast_log_matmul_with(a: &Tensor, b: &Tensor, exp: ExpMode) -> Result<Tensor> {
    let (a_shape, b_shape) = broadcast_shapes(a, b)?;
    if b.rank() == 2 && a.rank() > 2 && a.is_contiguous() && a_shape == *a.shape() {
        let dims = a.dims();
        let (m, k) = (dims[a.rank() - 2], dims[a.rank() - 1]);
        let batch: usize = dims[..a.rank() - 2].iter().product();
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("rank > 2") = b.dim(1)?;
        return log_matmul_with(&a.reshape((batch * m, k))?, b, exp)?.reshape(out_dims);
    }
    log_matmul_with(&a.broadcast_as(a_shape)?, &b.broadcast_as(b_shape)?, exp)
}

/// The shapes both operands broadcast to, as [`Tensor::broadcast_matmul`] computes them.
fn broadcast_shapes(a: &Tensor, b: &Tensor) -> Result<(Shape, Shape)> {
    let (ad, bd) = (a.dims(), b.dims());
    if ad.len() < 2 || bd.len() < 2 {
        bail!(
            "broadcast_log_matmul needs operands of rank at least 2, got shapes {ad:?} and {bd:?}"
        );
    }
    let (m, k) = (ad[ad.len() - 2], ad[ad.len() - 1]);
    let (k2, n) = (bd[bd.len() - 2], bd[bd.len() - 1]);
    if k != k2 {
        bail!(
            "broadcast_log_matmul inner dimensions differ: lhs {ad:?} has k = {k}, rhs {bd:?} has k = {k2}"
        );
    }
    let a_batch = Shape::from(&ad[..ad.len() - 2]);
    let b_batch = Shape::from(&bd[..bd.len() - 2]);
    let batch = a_batch
        .broadcast_shape_binary_op(&b_batch, "broadcast_log_matmul")
        .map_err(|_| {
            candle_core::Error::Msg(format!(
                "broadcast_log_matmul batch dimensions cannot be broadcast: lhs {ad:?}, rhs {bd:?} \
                 (each batch dim must match or be 1)"
            ))
        })?;
    Ok((batch.clone().extend(&[m, k]), batch.extend(&[k, n])))
}
