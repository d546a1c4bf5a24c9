//! The CPU kernels: split activations into logs, then a parallel tiled log-domain product.
//!
//! The modules form layers that only point down (`docs/architecture.md`, "Kernel families per backend"):
//!
//! 1. numbers and constants: [`float`] (the accumulation types), [`exp`], [`approx`] (the
//!    cheaper exps of the precision dial, Mitchell's log), [`exp_kernel`] (one type per mode), [`ln`],
//!    [`magnitude`] (stored weight magnitudes), [`reduce`] (the lane-reduction order), [`isa`];
//! 2. kernels: [`portable`] (any CPU, the reference) and `avx512` (intrinsics);
//! 3. dispatch per type and ISA: [`gemv`] (decode against a stored weight row), [`dot`];
//! 4. drivers: [`input`] and [`split`] (activations to logs), [`gemm`] (the tiled parallel
//!    product), [`weight_columns`] (a weight's rows as the product's columns), [`table`] and
//!    [`lns8_table`] (the table mode's products for `lns4` and `lns8`).

pub(crate) mod approx;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub(crate) mod dot;
pub(crate) mod exp;
pub(crate) mod exp_kernel;
pub(crate) mod float;
pub(crate) mod gemm;
pub(crate) mod gemv;
pub(crate) mod input;
pub(crate) mod isa;
pub(crate) mod ln;
pub(crate) mod lns8_table;
pub(crate) mod magnitude;
pub(crate) mod portable;
pub(crate) mod reduce;
pub(crate) mod split;
pub(crate) mod table;
pub(crate) mod weight_columns;
