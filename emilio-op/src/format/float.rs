//! The float log formats, `f32` and `f16`: `ln|w|` rounded once to the float, and one packed sign
//! bit per weight ([`crate::packing`]). They are the only formats the GPU plans read.

use candle_core::{bail, CpuStorage, DType, Layout, Result, Shape, Tensor};
use half::f16;

use super::convert::convert_rows;
use super::{cpu_slice, with_cpu_operands, Format, StoredForm};
use crate::cpu::magnitude::Magnitudes;
use crate::cpu::weight_columns::{weight_linear, WeightColumns};
use crate::packing::{pack_sign_row, sign_bit, sign_words_per_row};
use crate::ExpMode;

/// `f32` logs: the exact reference format.
pub(crate) struct F32;

/// `f16` logs: half the bytes, `ln|w|` rounded to 11 significant bits.
pub(crate) struct F16;

/// A float log type: how a log is rounded into it.
trait LogType: Copy + Send + Sync + candle_core::WithDType {
    fn round(log: f64) -> Self;
}

impl LogType for f32 {
    fn round(log: f64) -> Self {
        log as f32
    }
}

impl LogType for f16 {
    fn round(log: f64) -> Self {
        f16::from_f64(log)
    }
}

/// Why the float formats have no `table` mode.
fn supports(exp: ExpMode) -> std::result::Result<(), String> {
    if exp == ExpMode::Table {
        return Err(
            "the table mode looks each product up in a table per activation indexed by \
             a weight's code, and the float formats store logs, not codes; use this format with \
             another mode, or an lns format with table"
                .into(),
        );
    }
    Ok(())
}

impl Format for F32 {
    type Stored = Logs;
    const NAME: &'static str = "f32";
    const BITS_PER_WEIGHT: f64 = 33.0;
    const SUMMARY: &'static str = "ln|w| as f32 + a sign bit (33 bits/weight): the exact reference";
    const CPU_ONLY: bool = false;

    fn supports(exp: ExpMode) -> std::result::Result<(), String> {
        supports(exp)
    }

    fn encode(w: &Tensor, exp: ExpMode) -> Result<Logs> {
        encode::<f32>(Self::NAME, w, exp)
    }
}

impl Format for F16 {
    type Stored = Logs;
    const NAME: &'static str = "f16";
    const BITS_PER_WEIGHT: f64 = 17.0;
    const SUMMARY: &'static str =
        "ln|w| as f16 + a sign bit (17 bits/weight): ≈|ln|w||·2⁻¹¹ relative per weight";
    const CPU_ONLY: bool = false;

    fn supports(exp: ExpMode) -> std::result::Result<(), String> {
        supports(exp)
    }

    fn encode(w: &Tensor, exp: ExpMode) -> Result<Logs> {
        encode::<f16>(Self::NAME, w, exp)
    }
}

/// A float-format weight: `(out, in)` logs (`f32` or `f16`) and `(out, ceil(in/32))` `u32`
/// sign words.
#[derive(Debug, Clone)]
pub(crate) struct Logs {
    pub(crate) logs: Tensor,
    pub(crate) signs: Tensor,
}

impl Logs {
    /// Checks two tensors as a float-format weight's parts (a converter's output).
    pub(crate) fn from_parts(logs: Tensor, signs: Tensor) -> Result<Self> {
        let (out_dim, in_dim) = logs.dims2()?;
        let want = (out_dim, sign_words_per_row(in_dim));
        if signs.dtype() != DType::U32 || signs.dims2()? != want {
            bail!(
                "log-weight signs must be a U32 tensor of shape {want:?} for magnitudes of shape \
                 {:?}, got {:?} {:?}",
                (out_dim, in_dim),
                signs.dtype(),
                signs.dims()
            );
        }
        Ok(Self {
            logs: logs.contiguous()?,
            signs: signs.contiguous()?,
        })
    }
}

fn encode<M: LogType>(name: &'static str, w: &Tensor, exp: ExpMode) -> Result<Logs> {
    let (out_dim, in_dim) = w.dims2()?;
    let words = sign_words_per_row(in_dim);
    let mut signs = vec![0u32; out_dim * words];
    let mut logs = vec![M::round(0.0); out_dim * in_dim];
    let fill = |row: &[f64], logs: &mut [M], packed: &mut [u32]| {
        pack_sign_row(row.iter().map(|v| v.is_sign_negative()), packed);
        for (m, v) in logs.iter_mut().zip(row) {
            *m = M::round(weight_log(exp, *v));
        }
        Ok(())
    };
    convert_rows(name, w, &mut logs, in_dim, &mut signs, words, fill)?;
    let device = w.device();
    Ok(Logs {
        logs: Tensor::from_vec(logs, (out_dim, in_dim), device)?,
        signs: Tensor::from_vec(signs, (out_dim, words), device)?,
    })
}

/// The log a weight is stored as for `mode`, computed in f64: `ln|w|`, or for `lmul` Mitchell's
/// `ln 2·(e + m)` of `w`'s `f32` bits, the log L-Mul's integer adder reads (`-inf` for zeros,
/// `+inf` and NaN kept, subnormals normalised first).
fn weight_log(mode: ExpMode, w: f64) -> f64 {
    if !mode.reads_logs_from_bits() {
        return w.abs().ln();
    }
    let bits = (w as f32).to_bits() & 0x7fff_ffff;
    let mitchell = |bits: u32| {
        (f64::from(bits) - f64::from(0x3f80_0000u32)) * std::f64::consts::LN_2 / 8_388_608.0
    };
    if bits == 0 {
        f64::NEG_INFINITY
    } else if bits >= 0x7f80_0000 {
        f64::from(f32::from_bits(bits))
    } else if bits < 0x0080_0000 {
        // A subnormal, normalised first (as the activation split does).
        let scaled = (f32::from_bits(bits) * 8_388_608.0).to_bits();
        mitchell(scaled) - 23.0 * std::f64::consts::LN_2
    } else {
        mitchell(bits)
    }
}

/// The value a stored log stands for in `mode`: `exp(l)`, or for `lmul` Mitchell's log
/// inverted, `2^⌊t⌋·(1 + t − ⌊t⌋)` with `t = l/ln 2`.
fn log_value(mode: ExpMode, l: f64) -> f64 {
    if !mode.reads_logs_from_bits() || !l.is_finite() {
        l.exp()
    } else {
        let t = l / std::f64::consts::LN_2;
        2f64.powf(t.floor()) * (1.0 + t - t.floor())
    }
}

fn dequantize_logs<M: LogType>(
    logs: &Tensor,
    signs: &Tensor,
    exp: ExpMode,
    rows: Option<&[u32]>,
) -> Result<Vec<f32>>
where
    f64: From<M>,
{
    let (out_dim, in_dim) = logs.dims2()?;
    let words = sign_words_per_row(in_dim);
    with_cpu_operands([logs, signs], |logs: &[M], signs: &[u32]| {
        let row = |r: usize| {
            let (logs, signs) = (&logs[r * in_dim..], &signs[r * words..]);
            (0..in_dim).map(move |c| {
                let v = log_value(exp, f64::from(logs[c])) as f32;
                if sign_bit(signs, c) == 1 {
                    -v
                } else {
                    v
                }
            })
        };
        Ok(match rows {
            Some(rows) => rows.iter().flat_map(|&r| row(r as usize)).collect(),
            None => (0..out_dim).flat_map(row).collect(),
        })
    })
}

impl StoredForm for Logs {
    fn operands(&self) -> [&Tensor; 2] {
        [&self.logs, &self.signs]
    }

    fn with_operands(&self, [logs, signs]: [Tensor; 2]) -> Self {
        Self { logs, signs }
    }

    fn dequantize(&self, exp: ExpMode, rows: Option<&[u32]>) -> Result<Vec<f32>> {
        match self.logs.dtype() {
            DType::F32 => dequantize_logs::<f32>(&self.logs, &self.signs, exp, rows),
            _ => dequantize_logs::<f16>(&self.logs, &self.signs, exp, rows),
        }
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
        let (n, k) = self.logs.dims2()?;
        let magnitudes = match a {
            CpuStorage::F32(_) => Magnitudes::F32(cpu_slice(a, la, "log-weight magnitudes")?),
            _ => Magnitudes::F16(cpu_slice(a, la, "log-weight magnitudes")?),
        };
        let signs: &[u32] = cpu_slice(b, lb, "log-weight signs")?;
        if signs.len() != n * sign_words_per_row(k) {
            bail!(
                "log-weight signs must be u32 of shape ({n}, {}), got {:?}",
                sign_words_per_row(k),
                lb.dims()
            );
        }
        let cols = WeightColumns {
            magnitudes,
            signs,
            k,
        };
        weight_linear(exp, x, lx, n, &cols)
    }
}
