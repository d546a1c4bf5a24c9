//! The CPU kernels: split activations into logs, then a parallel tiled log-domain product.

#[cfg(target_arch = "x86_64")]
mod avx512;
pub(crate) mod dot;
pub(crate) mod exp;
pub(crate) mod gemm;
pub(crate) mod gemv;
pub(crate) mod input;
pub(crate) mod isa;
pub(crate) mod ln;
pub(crate) mod split;
pub(crate) mod weight_columns;
