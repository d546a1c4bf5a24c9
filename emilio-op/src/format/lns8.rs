//! `lns8`: per weight a sign bit and a 7-bit log code against an `f16` offset per group of
//! [`GROUP`] weights along `in` (8.5 bits per weight, a quarter of `f32`'s bytes). The codes,
//! their error per weight and why four fractional bits: [`codes`].
//!
//! A weight converted for [`ExpMode::Table`] stores its codes by blocks of
//! [`codes::TABLE_ROWS`] rows, each code rearranged so its low five bits index the table
//! ([`codes::table_byte`]): the order the table kernel reads ([`crate::cpu::lns8_table`]). One
//! converted for any other mode stores them row by row.

pub(crate) mod codes;

use candle_core::{bail, CpuStorage, DType, Layout, Result, Shape, Tensor};
use half::f16;

pub use codes::{FRAC_BITS, GROUP};

use super::convert::convert_rows;
use super::{cpu_slice, with_cpu_operands, Format, StoredForm};
use crate::cpu::lns8_table::{lns8_table_forward, Lns8TableWeight};
use crate::cpu::magnitude::Magnitudes;
use crate::cpu::weight_columns::{weight_linear, WeightColumns};
use crate::ExpMode;
use codes::{decode_value, encode_row, groups_per_row, table_blocks, table_code, TABLE_ROWS};

/// The `lns8` format.
pub(crate) struct Lns8;

impl Format for Lns8 {
    type Stored = Codes;
    const NAME: &'static str = "lns8";
    const BITS_PER_WEIGHT: f64 = 8.0 + 16.0 / GROUP as f64;
    const SUMMARY: &'static str = "a sign + 7-bit log code per weight, an f16 offset per 32 \
        (8.5 bits/weight): ≤ 2.19% per weight down to 1/235 of its group's largest; with table, \
        no exp per product";
    const CPU_ONLY: bool = true;

    fn supports(exp: ExpMode) -> std::result::Result<(), String> {
        match exp {
            ExpMode::Lmul => Err(super::lns::lmul_reason(Self::NAME)),
            _ => Ok(()),
        }
    }

    fn switch_exp(from: ExpMode, to: ExpMode) -> std::result::Result<(), &'static str> {
        if (from == ExpMode::Table) != (to == ExpMode::Table) {
            return Err("the table mode stores its codes by blocks of 16 rows");
        }
        Ok(())
    }

    fn encode(w: &Tensor, exp: ExpMode) -> Result<Codes> {
        let (out_dim, in_dim) = w.dims2()?;
        let groups = groups_per_row(in_dim);
        let mut codes = vec![0u8; out_dim * in_dim];
        let mut offsets = vec![f16::ZERO; out_dim * groups];
        convert_rows(
            Self::NAME,
            w,
            &mut codes,
            in_dim,
            &mut offsets,
            groups,
            encode_row,
        )?;
        let device = w.device();
        if exp == ExpMode::Table {
            let (blocks, offsets) = table_blocks(&codes, &offsets, out_dim, in_dim);
            let n_blocks = out_dim.div_ceil(TABLE_ROWS);
            return Ok(Codes {
                codes: Tensor::from_vec(blocks, (n_blocks, groups * GROUP * TABLE_ROWS), device)?,
                offsets: Tensor::from_vec(offsets, (n_blocks, groups * TABLE_ROWS), device)?,
                order: CodeOrder::Blocks,
                out_dim,
                in_dim,
            });
        }
        Ok(Codes {
            codes: Tensor::from_vec(codes, (out_dim, in_dim), device)?,
            offsets: Tensor::from_vec(offsets, (out_dim, groups), device)?,
            order: CodeOrder::Rows,
            out_dim,
            in_dim,
        })
    }
}

/// The order an `lns8` weight's codes are stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CodeOrder {
    /// Row by row, one code per weight: every mode but `table`.
    Rows,
    /// By blocks of [`TABLE_ROWS`] rows as [`codes::table_blocks`] lays them out: `table`.
    Blocks,
}

/// An `lns8` weight: `u8` codes and `f16` group offsets in [`CodeOrder`]: row by row,
/// `(out, in)` codes (sign in bit 7) and `(out, ceil(in/32))` offsets.
#[derive(Debug, Clone)]
pub(crate) struct Codes {
    pub(crate) codes: Tensor,
    pub(crate) offsets: Tensor,
    pub(crate) order: CodeOrder,
    out_dim: usize,
    in_dim: usize,
}

impl Codes {
    /// Checks two tensors as an `lns8` weight's parts (a converter's output).
    pub(crate) fn from_parts(codes: Tensor, offsets: Tensor) -> Result<Self> {
        let (out_dim, in_dim) = codes.dims2()?;
        let want = (out_dim, groups_per_row(in_dim));
        if offsets.dtype() != DType::F16 || offsets.dims2()? != want {
            bail!(
                "lns8 group offsets must be a F16 tensor of shape {want:?} for magnitudes of \
                 shape {:?}, got {:?} {:?}",
                (out_dim, in_dim),
                offsets.dtype(),
                offsets.dims()
            );
        }
        Ok(Self {
            codes: codes.contiguous()?,
            offsets: offsets.contiguous()?,
            order: CodeOrder::Rows,
            out_dim,
            in_dim,
        })
    }
}

impl StoredForm for Codes {
    fn operands(&self) -> [&Tensor; 2] {
        [&self.codes, &self.offsets]
    }

    fn with_operands(&self, [codes, offsets]: [Tensor; 2]) -> Self {
        Self {
            codes,
            offsets,
            ..self.clone()
        }
    }

    fn dequantize(&self, _exp: ExpMode, rows: Option<&[u32]>) -> Result<Vec<f32>> {
        let (out_dim, in_dim, order) = (self.out_dim, self.in_dim, self.order);
        let groups = groups_per_row(in_dim);
        with_cpu_operands(self.operands(), |codes: &[u8], offsets: &[f16]| {
            let row = |r: usize| {
                (0..in_dim).map(move |c| {
                    let (code, offset) = match order {
                        CodeOrder::Rows => (codes[r * in_dim + c], offsets[r * groups + c / GROUP]),
                        CodeOrder::Blocks => {
                            let (b, rr) = (r / TABLE_ROWS, r % TABLE_ROWS);
                            let at = (b * groups + c / GROUP) * TABLE_ROWS + rr;
                            (table_code(codes, in_dim, r, c), offsets[at])
                        }
                    };
                    decode_value(code, offset) as f32
                })
            };
            Ok(match rows {
                Some(rows) => rows.iter().flat_map(|&r| row(r as usize)).collect(),
                None => (0..out_dim).flat_map(row).collect(),
            })
        })
    }

    fn cpu_forward(
        &self,
        exp: ExpMode,
        x: &CpuStorage,
        lx: &Layout,
        a: &CpuStorage,
        la: &Layout,
        b: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, k) = (self.out_dim, self.in_dim);
        let codes = cpu_slice(a, la, "lns8 codes")?;
        let offsets = cpu_slice(b, lb, "lns8 group offsets")?;
        if self.order == CodeOrder::Blocks {
            let w = Lns8TableWeight {
                codes,
                offsets,
                n,
                k,
            };
            return lns8_table_forward(x, lx, &w);
        }
        if offsets.len() != n * groups_per_row(k) {
            bail!(
                "lns8 group offsets must be f16 of shape ({n}, {}), got {:?}",
                groups_per_row(k),
                lb.dims()
            );
        }
        let cols = WeightColumns {
            magnitudes: Magnitudes::Lns8 { codes, offsets },
            signs: &[],
            k,
        };
        weight_linear(exp, x, lx, n, &cols)
    }
}
