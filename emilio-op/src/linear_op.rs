//! `x · wᵀ` against a [`LogWeight`]: the op behind [`crate::LogLinear`].

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CudaStorage, CustomOp3, Layout, MetalStorage, Result, Shape};
use emilio_kernels::Backend;

use crate::backend::unsupported;
use crate::cpu::gemm::log_gemm;
use crate::cpu::input::Input;
use crate::cpu::magnitude::Magnitudes;
use crate::cpu::split::{ln_split, MatrixView};
use crate::cpu::table::{table_linear, TableWeight};
use crate::cpu::weight_columns::WeightColumns;
use crate::lns::groups_per_row;
use crate::packing::sign_words_per_row;
use crate::ExpMode;

/// The log-domain product of activations `x` (`(…, in)`) with a [`LogWeight`]'s transpose, as a
/// Candle [`CustomOp3`] over `(x, magnitudes, signs)`.
///
/// Crate-private: users call [`LogWeight::forward`](crate::LogWeight::forward) or
/// [`crate::LogLinear`], which check shapes first.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LogLinearOp {
    /// The weight's exp mode (the CPU kernels; GPUs take only the exact mode, which
    /// [`LogWeight::forward`](crate::LogWeight::forward) checks before the op runs).
    pub exp: ExpMode,
    /// `(out, in)`, which `lns4`'s packed bytes do not show.
    pub out_dim: usize,
    pub in_dim: usize,
    /// `lns4`'s step: `u8` magnitudes are `lns4` bytes with it, `lns8` codes without.
    pub lns4_step: Option<f32>,
}

impl CustomOp3 for LogLinearOp {
    fn name(&self) -> &'static str {
        "emilio-log-linear"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        mags: &CpuStorage,
        lm: &Layout,
        signs: &CpuStorage,
        ls: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, k) = (self.out_dim, self.in_dim);
        if self.exp == ExpMode::Table {
            return table_fwd(
                x,
                lx,
                mags,
                lm,
                signs,
                ls,
                n,
                k,
                self.lns4_step.unwrap_or(0.0),
            );
        }
        let (magnitudes, signs) = match (mags, lm.contiguous_offsets()) {
            (CpuStorage::F32(m), Some((lo, hi))) => {
                (Magnitudes::F32(&m[lo..hi]), packed_signs(signs, ls, n, k)?)
            }
            (CpuStorage::F16(m), Some((lo, hi))) => {
                (Magnitudes::F16(&m[lo..hi]), packed_signs(signs, ls, n, k)?)
            }
            // lns8 / lns4: codes with their signs, and the group offsets in the third operand.
            (CpuStorage::U8(c), Some((lo, hi))) => match (signs, ls.contiguous_offsets()) {
                (CpuStorage::F16(o), Some((olo, ohi))) if ohi - olo == n * groups_per_row(k) => {
                    let (codes, offsets) = (&c[lo..hi], &o[olo..ohi]);
                    let m = match self.lns4_step {
                        Some(step) => Magnitudes::Lns4 {
                            bytes: codes,
                            offsets,
                            step,
                        },
                        None => Magnitudes::Lns8 { codes, offsets },
                    };
                    (m, &[][..])
                }
                _ => bail!(
                    "lns8 group offsets must be contiguous f16 of shape ({n}, {}), got {:?} {:?}",
                    groups_per_row(k),
                    signs.dtype(),
                    ls.dims()
                ),
            },
            _ => bail!(
                "log-weight magnitudes must be contiguous f32, f16 or u8 (lns8 codes), got {:?}",
                mags.dtype()
            ),
        };
        let cols = WeightColumns {
            magnitudes,
            signs,
            k,
        };
        let mode = self.exp;
        match x {
            CpuStorage::F32(x) => Ok(cpu_linear(mode, x, lx, n, &cols)),
            CpuStorage::F64(x) if mode == ExpMode::Exact => Ok(cpu_linear(mode, x, lx, n, &cols)),
            CpuStorage::F16(x) => Ok(cpu_linear(mode, x, lx, n, &cols)),
            CpuStorage::BF16(x) => Ok(cpu_linear(mode, x, lx, n, &cols)),
            CpuStorage::F64(_) => bail!(
                "a log-domain linear layer: the {mode} exp mode has no f64 kernel; use the exact mode"
            ),
            _ => bail!(
                "a log-domain linear layer needs float activations (f32, f64, f16, bf16), got {:?}",
                x.dtype()
            ),
        }
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        lx: &Layout,
        mags: &CudaStorage,
        lm: &Layout,
        signs: &CudaStorage,
        ls: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        #[cfg(feature = "cuda")]
        {
            let gpu = Backend::Cuda;
            let (xd, md, sd) = (x.dtype(), mags.dtype(), signs.dtype());
            let plan = crate::plan::log_linear(gpu, xd, lx, md, lm, sd, ls)?;
            Ok((
                crate::cuda::run(&plan, &[x, mags, signs])?,
                plan.output_shape,
            ))
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (x, lx, mags, lm, signs, ls);
            Err(unsupported("the log-domain linear layer", Backend::Cuda))
        }
    }

    fn metal_fwd(
        &self,
        x: &MetalStorage,
        lx: &Layout,
        mags: &MetalStorage,
        lm: &Layout,
        signs: &MetalStorage,
        ls: &Layout,
    ) -> Result<(MetalStorage, Shape)> {
        #[cfg(emilio_metal)]
        {
            let gpu = Backend::Metal;
            let (xd, md, sd) = (x.dtype(), mags.dtype(), signs.dtype());
            let plan = crate::plan::log_linear(gpu, xd, lx, md, lm, sd, ls)?;
            Ok((
                crate::metal::run(&plan, &[x, mags, signs])?,
                plan.output_shape,
            ))
        }
        #[cfg(not(emilio_metal))]
        {
            let _ = (x, lx, mags, lm, signs, ls);
            Err(unsupported("the log-domain linear layer", Backend::Metal))
        }
    }
}

/// The table mode's product ([`crate::cpu::table`]) over an `lns4` weight stored for it.
#[allow(clippy::too_many_arguments)]
fn table_fwd(
    x: &CpuStorage,
    lx: &Layout,
    bytes: &CpuStorage,
    lb: &Layout,
    offsets: &CpuStorage,
    lo: &Layout,
    n: usize,
    k: usize,
    step: f32,
) -> Result<(CpuStorage, Shape)> {
    let (CpuStorage::U8(b), Some((b0, b1)), CpuStorage::F16(o), Some((o0, o1))) = (
        bytes,
        lb.contiguous_offsets(),
        offsets,
        lo.contiguous_offsets(),
    ) else {
        bail!("a table-mode weight must be contiguous u8 codes and f16 offsets");
    };
    let w = TableWeight {
        bytes: &b[b0..b1],
        offsets: &o[o0..o1],
        step,
        n,
        k,
    };
    match x {
        CpuStorage::F32(x) => Ok(table_linear(x, lx, &w)),
        CpuStorage::F16(x) => Ok(table_linear(x, lx, &w)),
        CpuStorage::BF16(x) => Ok(table_linear(x, lx, &w)),
        _ => bail!(
            "a log-domain linear layer in the table mode needs f32, f16 or bf16 activations, got {:?}",
            x.dtype()
        ),
    }
}

/// The packed sign words of an `f32`/`f16` log weight, checked against its `(n, k)` shape.
fn packed_signs<'a>(signs: &'a CpuStorage, ls: &Layout, n: usize, k: usize) -> Result<&'a [u32]> {
    match (signs, ls.contiguous_offsets()) {
        (CpuStorage::U32(s), Some((lo, hi))) if hi - lo == n * sign_words_per_row(k) => {
            Ok(&s[lo..hi])
        }
        _ => bail!(
            "log-weight signs must be contiguous u32 of shape ({n}, {}), got {:?} {:?}",
            sign_words_per_row(k),
            signs.dtype(),
            ls.dims()
        ),
    }
}

fn cpu_linear<S: Input>(
    mode: ExpMode,
    x: &[S],
    lx: &Layout,
    n: usize,
    cols: &WeightColumns,
) -> (CpuStorage, Shape) {
    let view = MatrixView::rows_of(lx);
    let rows = view.batch() * view.rows;
    let split = ln_split(mode, x, &view);
    let y = log_gemm(mode, 1, (rows, n, cols.k), &split, cols);
    let y: Vec<S> = y.into_iter().map(S::from_acc).collect();
    let dims = lx.dims();
    let shape = Shape::from(&dims[..dims.len() - 1]).extend(&[n]);
    (S::to_cpu_storage_owned(y), shape)
}
