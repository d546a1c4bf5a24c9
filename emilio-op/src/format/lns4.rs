//! `lns4`: per weight a sign bit and a 3-bit log code, two to a byte, against an `f16` offset
//! per group of [`GROUP`] and a step chosen per tensor (4.5 bits per weight). The codes, the
//! step search and the error per weight: [`codes`].
//!
//! A weight converted for [`ExpMode::Table`] stores its codes by blocks of
//! [`codes::TABLE_ROWS`] rows, the order the table kernel reads ([`crate::cpu::table`]); one
//! converted for any other mode stores them row by row.

pub(crate) mod codes;

use candle_core::{CpuStorage, Layout, Result, Shape, Tensor};
use half::f16;

pub use codes::GROUP;

use super::convert::{convert_rows_with, plain_rows};
use super::{cpu_slice, with_cpu_operands, Format, StoredForm};
use crate::cpu::magnitude::Magnitudes;
use crate::cpu::table::{table_forward, TableWeight};
use crate::cpu::weight_columns::{weight_linear, WeightColumns};
use crate::ExpMode;
use codes::{
    bytes_per_row, choose_step, code_at, decode_value, groups_per_row, table_blocks, table_code,
    RowEncoder, TABLE_ROWS,
};

/// The `lns4` format.
pub(crate) struct Lns4;

impl Format for Lns4 {
    type Stored = Codes;
    const NAME: &'static str = "lns4";
    const BITS_PER_WEIGHT: f64 = 4.0 + 16.0 / GROUP as f64;
    const SUMMARY: &'static str = "a sign + 3-bit log code per weight, an f16 offset per 32, a \
        step per tensor (4.5 bits/weight): ≤ e^(step/2) − 1 per weight, coarse (the dial's far end)";
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
        let step = tensor_step(w)?;
        let groups = groups_per_row(in_dim);
        let per_row = bytes_per_row(in_dim);
        let mut bytes = vec![0u8; out_dim * per_row];
        let mut offsets = vec![f16::ZERO; out_dim * groups];
        // One encoder per worker: the rows share their groups' offsets' code values.
        convert_rows_with(
            Self::NAME,
            w,
            (&mut bytes, per_row),
            (&mut offsets, groups),
            || RowEncoder::new(step),
            |enc: &mut RowEncoder, row, b, o| enc.encode(row, b, o),
        )?;
        let device = w.device();
        let (order, bytes, offsets) = if exp == ExpMode::Table {
            // By blocks of 16 rows, as the table kernel reads them.
            let (blocks, offsets) = table_blocks(&bytes, &offsets, out_dim, in_dim);
            let n_blocks = out_dim.div_ceil(TABLE_ROWS);
            (
                CodeOrder::Blocks,
                Tensor::from_vec(blocks, (n_blocks, 8 * groups * GROUP), device)?,
                Tensor::from_vec(offsets, (n_blocks, groups * TABLE_ROWS), device)?,
            )
        } else {
            (
                CodeOrder::Rows,
                Tensor::from_vec(bytes, (out_dim, per_row), device)?,
                Tensor::from_vec(offsets, (out_dim, groups), device)?,
            )
        };
        Ok(Codes {
            bytes,
            offsets,
            step,
            order,
            out_dim,
            in_dim,
        })
    }
}

/// `lns4`'s step for `w` ([`choose_step`]), from up to 256 of its rows spread over it.
fn tensor_step(w: &Tensor) -> Result<f32> {
    let (out_dim, in_dim) = w.dims2()?;
    let every = out_dim.div_ceil(256).max(1);
    let mut sample = Vec::new();
    for r in (0..out_dim).step_by(every) {
        sample.extend(plain_rows(w, r, 1)?);
    }
    Ok(choose_step(&sample, in_dim))
}

/// The order an `lns4` weight's codes are stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CodeOrder {
    /// Row by row, 16 bytes per group ([`codes::code_at`]): every mode but `table`.
    Rows,
    /// By blocks of [`TABLE_ROWS`] rows ([`codes::table_blocks`]): the `table` mode.
    Blocks,
}

/// An `lns4` weight: code bytes and `f16` group offsets in [`CodeOrder`], and the tensor's step.
#[derive(Debug, Clone)]
pub(crate) struct Codes {
    pub(crate) bytes: Tensor,
    pub(crate) offsets: Tensor,
    /// The step between codes in natural-log units, chosen for this tensor.
    pub(crate) step: f32,
    pub(crate) order: CodeOrder,
    out_dim: usize,
    in_dim: usize,
}

impl StoredForm for Codes {
    fn operands(&self) -> [&Tensor; 2] {
        [&self.bytes, &self.offsets]
    }

    fn with_operands(&self, [bytes, offsets]: [Tensor; 2]) -> Self {
        Self {
            bytes,
            offsets,
            ..self.clone()
        }
    }

    fn dequantize(&self, _exp: ExpMode, rows: Option<&[u32]>) -> Result<Vec<f32>> {
        let (out_dim, in_dim, step) = (self.out_dim, self.in_dim, self.step);
        let (groups, per_row) = (groups_per_row(in_dim), bytes_per_row(in_dim));
        let order = self.order;
        with_cpu_operands(self.operands(), |bytes: &[u8], offsets: &[f16]| {
            let row = |r: usize| {
                (0..in_dim).map(move |col| {
                    let g = col / GROUP;
                    let (code, offset) = match order {
                        CodeOrder::Blocks => {
                            let (b, rr) = (r / TABLE_ROWS, r % TABLE_ROWS);
                            (
                                table_code(bytes, in_dim, r, col),
                                offsets[(b * groups + g) * TABLE_ROWS + rr],
                            )
                        }
                        CodeOrder::Rows => (
                            code_at(&bytes[r * per_row..(r + 1) * per_row], col),
                            offsets[r * groups + g],
                        ),
                    };
                    decode_value(code, offset, step) as f32
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
        let bytes = cpu_slice(a, la, "lns4 codes")?;
        let offsets = cpu_slice(b, lb, "lns4 group offsets")?;
        match self.order {
            CodeOrder::Blocks => {
                let w = TableWeight {
                    bytes,
                    offsets,
                    step: self.step,
                    n,
                    k,
                };
                table_forward(x, lx, &w)
            }
            CodeOrder::Rows => {
                let cols = WeightColumns {
                    magnitudes: Magnitudes::Lns4 {
                        bytes,
                        offsets,
                        step: self.step,
                    },
                    signs: &[],
                    k,
                };
                weight_linear(exp, x, lx, n, &cols)
            }
        }
    }
}
