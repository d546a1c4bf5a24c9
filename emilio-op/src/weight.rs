//! Log-domain weights, converted once at load time: `ln|w|` with packed sign bits (`f32`,
//! `f16`), or log codes against group offsets (`lns8`, `lns4`: [`crate::lns`]).

use std::fmt;
use std::str::FromStr;

use candle_core::{bail, DType, Device, Module, Result, Tensor};
use half::f16;
use rayon::prelude::*;

use crate::backend::device_name;
use crate::check::{check_float, check_mode};
use crate::linear_op::LogLinearOp;
use crate::lns;
use crate::packing::{pack_sign_row, sign_words_per_row};
use crate::ExpMode;

/// How the magnitudes `ln|w|` of a [`LogWeight`] are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WeightFormat {
    /// `f32` magnitudes: the exact reference format (4 bytes + 1 bit per weight).
    F32,
    /// `f16` magnitudes (2 bytes + 1 bit per weight). Rounding `ln|w|` to 11 significant bits
    /// costs a relative error of about `|ln|w||·2⁻¹¹` per product, ≈0.1–0.2% for typical
    /// weights, in exchange for half the bytes a decode step must read.
    #[default]
    F16,
    /// `lns8`: per weight a sign bit and a 7-bit log code against an `f16` offset per group of
    /// 32 weights along `in` (8.5 bits per weight): relative error ≤ 2.19% per weight down to
    /// 1/235 of its group's largest, the rest to the nearest of zero and that smallest code
    /// ([`crate::lns`] states it exactly). A quarter of `f32`'s bytes.
    Lns8,
    /// `lns4`: per weight a sign bit and a 3-bit log code (two to a byte) against an `f16`
    /// offset per group of 32, with a step chosen per tensor by the least log-domain error
    /// (4.5 bits per weight; [`crate::lns`] states the error).
    Lns4,
}

impl WeightFormat {
    /// Every format, from the widest to the narrowest.
    pub const ALL: [WeightFormat; 4] = [Self::F32, Self::F16, Self::Lns8, Self::Lns4];

    /// Whether the format stores log codes against group offsets (`lns8`, `lns4`) rather than
    /// float logs with packed sign bits.
    pub fn is_lns(self) -> bool {
        matches!(self, Self::Lns8 | Self::Lns4)
    }

    /// The dtype of [`LogWeight::magnitudes`] in this format (`u8` codes for `lns8`).
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::Lns8 | Self::Lns4 => DType::U8,
        }
    }

    /// Bytes of the stored magnitudes' dtype (for `f32`/`f16` the sign bit comes on top; an
    /// lns code holds its sign, and a byte holds two `lns4` codes: see
    /// [`WeightFormat::bits_per_weight`]).
    pub fn magnitude_bytes(self) -> usize {
        self.dtype().size_in_bytes()
    }

    /// Bits per weight in all: magnitude, sign and group overhead (33, 17, 8.5).
    pub fn bits_per_weight(self) -> f64 {
        match self {
            Self::F32 => 33.0,
            Self::F16 => 17.0,
            Self::Lns8 => 8.0 + 16.0 / lns::LNS8_GROUP as f64,
            Self::Lns4 => 4.0 + 16.0 / lns::LNS4_GROUP as f64,
        }
    }
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Lns8 => "lns8",
            Self::Lns4 => "lns4",
        })
    }
}

impl FromStr for WeightFormat {
    type Err = candle_core::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "lns8" => Ok(Self::Lns8),
            "lns4" => Ok(Self::Lns4),
            _ => bail!(
                "unknown log-weight format {s:?}: expected \"f32\", \"f16\", \"lns8\" or \"lns4\""
            ),
        }
    }
}

/// How a [`LogWeight`] is stored and how its products are computed: a [`WeightFormat`] and an
/// [`ExpMode`]. A `WeightFormat` alone converts to the exact mode, so every function that takes
/// a `LogConfig` also takes a plain format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct LogConfig {
    /// How `ln|w|` is stored.
    pub format: WeightFormat,
    /// How each product's `exp` is taken; [`ExpMode::Lmul`] also stores Mitchell's logs of
    /// the weights (read from their `f32` bits) instead of the natural ones.
    pub exp: ExpMode,
}

impl LogConfig {
    /// A format with an exp mode.
    pub fn new(format: WeightFormat, exp: ExpMode) -> Self {
        Self { format, exp }
    }

    /// Whether the op has kernels for this pair: every one but `lns8` with `lmul`, whose logs
    /// come from float bits that an lns8 code does not have.
    pub fn is_supported(self) -> bool {
        if self.exp == ExpMode::Table {
            return self.format == WeightFormat::Lns4;
        }
        !(self.format.is_lns() && self.exp.reads_logs_from_bits())
    }

    /// Every supported pair, formats from the widest, modes from the most exact.
    pub fn supported() -> Vec<LogConfig> {
        WeightFormat::ALL
            .into_iter()
            .flat_map(|f| ExpMode::ALL.map(|e| LogConfig::new(f, e)))
            .filter(|c| c.is_supported())
            .collect()
    }

    /// `Ok` for a supported pair, else an error naming it and what to use instead.
    pub fn check(self) -> Result<()> {
        let (format, exp) = (self.format, self.exp);
        if exp == ExpMode::Table && format != WeightFormat::Lns4 {
            bail!(
                "the pair ({format}, {exp}) is not supported: the table mode looks each product up \
                 in a 16-entry table per activation, which only lns4's codes index (lns8 has 256, \
                 the float formats none); use lns4 with table, or {format} with another mode"
            );
        }
        if !self.is_supported() {
            bail!(
                "the pair ({format}, {exp}) is not supported: {exp} reads both operands' logs \
                 from their float bits, and {format} codes are not float bits; use {exp} with f16 \
                 or f32 weights, or {format} with the exact, fast or mitchell exp"
            );
        }
        Ok(())
    }
}

impl From<WeightFormat> for LogConfig {
    fn from(format: WeightFormat) -> Self {
        Self::new(format, ExpMode::Exact)
    }
}

impl fmt::Display for LogConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.format, self.exp)
    }
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

/// Rows converted per block: bounds the plain copy alive at once (a 151936-row LM head is
/// converted 4 Mi weights at a time instead of all at once).
const CONVERT_BLOCK_ELEMS: usize = 1 << 22;

/// Converts the `(out, in)` weight `w` a block of rows at a time, rows spread over threads:
/// `fill(row, mags, side)` writes one row's stored magnitudes (`in` of them) and its side data
/// (`side_per_row` of them: packed sign words, or lns8 group offsets), or returns the column of
/// a weight the format cannot store.
fn convert_rows<M: Copy + Send, S: Copy + Send>(
    w: &Tensor,
    mags: &mut [M],
    mags_per_row: usize,
    side: &mut [S],
    side_per_row: usize,
    fill: impl Fn(&[f64], &mut [M], &mut [S]) -> std::result::Result<(), usize> + Sync,
) -> Result<()> {
    let (out_dim, in_dim) = w.dims2()?;
    if out_dim == 0 || in_dim == 0 {
        return Ok(());
    }
    let block_rows = (CONVERT_BLOCK_ELEMS / in_dim).max(1);
    for r0 in (0..out_dim).step_by(block_rows) {
        let rows = block_rows.min(out_dim - r0);
        let block = w.narrow(0, r0, rows)?.to_device(&Device::Cpu)?;
        // f64 weights keep their precision; every narrower float widens to f32 exactly.
        let values: Vec<f64> = if block.dtype() == DType::F64 {
            block.flatten_all()?.to_vec1::<f64>()?
        } else {
            let v = block
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            v.into_iter().map(f64::from).collect()
        };
        let mags = &mut mags[r0 * mags_per_row..(r0 + rows) * mags_per_row];
        let side = &mut side[r0 * side_per_row..(r0 + rows) * side_per_row];
        let bad = values
            .par_chunks(in_dim)
            .zip(mags.par_chunks_mut(mags_per_row.max(1)))
            .zip(side.par_chunks_mut(side_per_row.max(1)))
            .enumerate()
            .try_for_each(|(r, ((row, mags), side))| {
                fill(row, mags, side).map_err(|c| (r0 + r, c, row[c]))
            });
        if let Err((r, c, v)) = bad {
            bail!(
                "weight ({r}, {c}) is {v}, which the lns formats cannot store (they have codes \
                 for finite values only); convert with the f16 or f32 format, or fix the checkpoint"
            );
        }
    }
    Ok(())
}

/// `lns4`'s step for `w` ([`lns::lns4_step`]), from up to 256 of its rows spread over it.
fn lns4_tensor_step(w: &Tensor) -> Result<f32> {
    let (out_dim, in_dim) = w.dims2()?;
    let every = out_dim.div_ceil(256).max(1);
    let mut sample = Vec::new();
    for r in (0..out_dim).step_by(every) {
        let row = w
            .narrow(0, r, 1)?
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F64)?;
        sample.extend(row.flatten_all()?.to_vec1::<f64>()?);
    }
    Ok(lns::lns4_step(&sample, in_dim))
}

/// One row of an `f32`/`f16` log weight: `round(log(w))` (the log of [`weight_log`]) and the
/// packed sign bits.
fn log_row<M>(
    mode: ExpMode,
    round: impl Fn(f64) -> M,
) -> impl Fn(&[f64], &mut [M], &mut [u32]) -> std::result::Result<(), usize> {
    move |row, mags, packed| {
        pack_sign_row(row.iter().map(|v| v.is_sign_negative()), packed);
        for (m, v) in mags.iter_mut().zip(row) {
            *m = round(weight_log(mode, *v));
        }
        Ok(())
    }
}

/// A `(out, in)` weight matrix held in the log domain: magnitudes `ln|w|` and one sign bit per
/// weight, laid out as [`crate::packing`] describes.
///
/// The plain weight is not kept: a `LogWeight` costs [`WeightFormat::bits_per_weight`] per
/// weight ([`LogWeight::size_in_bytes`]). Both parts are ordinary tensors on the weight's device, so the op runs
/// wherever Candle does.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use emilio_op::{LogWeight, WeightFormat};
///
/// let w = Tensor::new(&[[1.0f32, -2.0, 0.0], [0.5, 4.0, -0.25]], &Device::Cpu)?;
/// let lw = LogWeight::from_tensor(&w, WeightFormat::F32)?;
/// assert_eq!(lw.dims(), (2, 3));
/// let x = Tensor::new(&[[1.0f32, 1.0, 1.0]], &Device::Cpu)?;
/// let y = lw.forward(&x)?; // x · wᵀ
/// let y = y.to_vec2::<f32>()?;
/// assert!((y[0][0] - -1.0).abs() < 1e-6 && (y[0][1] - 4.25).abs() < 1e-6);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct LogWeight {
    /// `ln|w|` (`f32`, `f16`), or lns codes (`u8`; two per byte for `lns4`).
    magnitudes: Tensor,
    /// Packed sign bits (`f32`, `f16`), or the lns group offsets (`f16`).
    signs: Tensor,
    format: WeightFormat,
    exp: ExpMode,
    /// `(out, in)`: the magnitudes' shape, except for `lns4`'s packed bytes.
    out_dim: usize,
    in_dim: usize,
    /// `lns4`'s step in natural-log units (0 for the other formats).
    step: f32,
}

impl LogWeight {
    /// Converts a `(out, in)` weight of any float dtype, on any device, for `config`: a
    /// [`WeightFormat`] (exact products) or a [`LogConfig`] with an [`ExpMode`].
    ///
    /// Logs are taken in f64 and rounded once to the format, so an `f32` magnitude is the
    /// correctly rounded `ln|w|` in all but the rarest cases and an `f16` one is never
    /// double-rounded.
    pub fn from_tensor(w: &Tensor, config: impl Into<LogConfig>) -> Result<Self> {
        let LogConfig { format, exp } = config.into();
        let (out_dim, in_dim) = match w.dims() {
            &[o, i] => (o, i),
            dims => bail!(
                "a log-domain weight must be a (out, in) matrix, got shape {dims:?}: \
                 reshape it to 2-D first"
            ),
        };
        if !w.dtype().is_float() {
            bail!(
                "a log-domain weight must be a float tensor, got dtype {:?}",
                w.dtype()
            );
        }
        LogConfig::new(format, exp).check()?;
        let device = w.device();
        let mut step = 0f32;
        let (magnitudes, signs) = match format {
            WeightFormat::F32 | WeightFormat::F16 => {
                let words = sign_words_per_row(in_dim);
                let mut signs = vec![0u32; out_dim * words];
                let magnitudes = if format == WeightFormat::F32 {
                    let mut mags = vec![0f32; out_dim * in_dim];
                    let fill = log_row(exp, |l| l as f32);
                    convert_rows(w, &mut mags, in_dim, &mut signs, words, fill)?;
                    Tensor::from_vec(mags, (out_dim, in_dim), device)?
                } else {
                    let mut mags = vec![f16::ZERO; out_dim * in_dim];
                    let fill = log_row(exp, f16::from_f64);
                    convert_rows(w, &mut mags, in_dim, &mut signs, words, fill)?;
                    Tensor::from_vec(mags, (out_dim, in_dim), device)?
                };
                (
                    magnitudes,
                    Tensor::from_vec(signs, (out_dim, words), device)?,
                )
            }
            WeightFormat::Lns8 => {
                let groups = lns::groups_per_row(in_dim);
                let mut codes = vec![0u8; out_dim * in_dim];
                let mut offsets = vec![f16::ZERO; out_dim * groups];
                convert_rows(w, &mut codes, in_dim, &mut offsets, groups, lns::encode_row)?;
                (
                    Tensor::from_vec(codes, (out_dim, in_dim), device)?,
                    Tensor::from_vec(offsets, (out_dim, groups), device)?,
                )
            }
            WeightFormat::Lns4 => {
                step = lns4_tensor_step(w)?;
                let groups = lns::groups_per_row(in_dim);
                let bytes_per_row = lns::lns4_bytes_per_row(in_dim);
                let mut bytes = vec![0u8; out_dim * bytes_per_row];
                let mut offsets = vec![f16::ZERO; out_dim * groups];
                let fill =
                    |row: &[f64], b: &mut [u8], o: &mut [f16]| lns::encode_row4(row, b, o, step);
                convert_rows(w, &mut bytes, bytes_per_row, &mut offsets, groups, fill)?;
                if exp == ExpMode::Table {
                    // By blocks of 16 rows, as the table kernel reads them.
                    let (blocks, offsets) =
                        lns::lns4_table_blocks(&bytes, &offsets, out_dim, in_dim);
                    let n_blocks = out_dim.div_ceil(lns::TABLE_ROWS);
                    (
                        Tensor::from_vec(blocks, (n_blocks, 8 * groups * lns::LNS4_GROUP), device)?,
                        Tensor::from_vec(offsets, (n_blocks, groups * lns::TABLE_ROWS), device)?,
                    )
                } else {
                    (
                        Tensor::from_vec(bytes, (out_dim, bytes_per_row), device)?,
                        Tensor::from_vec(offsets, (out_dim, groups), device)?,
                    )
                }
            }
        };
        Ok(Self {
            magnitudes,
            signs,
            format,
            exp,
            out_dim,
            in_dim,
            step,
        })
    }

    /// Rebuilds a weight from its parts, e.g. as saved by a converter, for exact products (see
    /// [`LogWeight::with_exp`] for another mode).
    ///
    /// `magnitudes` is `(out, in)` in `F32` or `F16`; `signs` is `(out, ceil(in/32))` `U32`.
    pub fn from_parts(magnitudes: Tensor, signs: Tensor) -> Result<Self> {
        let format = match magnitudes.dtype() {
            DType::F32 => WeightFormat::F32,
            DType::F16 => WeightFormat::F16,
            DType::U8 => WeightFormat::Lns8,
            dtype => bail!("log-weight magnitudes must be f32, f16 or u8 (lns8), got {dtype:?}"),
        };
        let (out_dim, in_dim) = magnitudes.dims2()?;
        let (side, want) = match format {
            WeightFormat::Lns8 => (
                (DType::F16, "lns8 group offsets"),
                lns::groups_per_row(in_dim),
            ),
            _ => ((DType::U32, "log-weight signs"), sign_words_per_row(in_dim)),
        };
        let ((dtype, what), want) = (side, (out_dim, want));
        if signs.dtype() != dtype || signs.dims2()? != want {
            bail!(
                "{what} must be a {dtype:?} tensor of shape {want:?} for magnitudes of shape \
                 {:?}, got {:?} {:?}",
                (out_dim, in_dim),
                signs.dtype(),
                signs.dims()
            );
        }
        if !magnitudes.device().same_device(signs.device()) {
            bail!("log-weight magnitudes and signs are on different devices");
        }
        Ok(Self {
            magnitudes: magnitudes.contiguous()?,
            signs: signs.contiguous()?,
            format,
            exp: ExpMode::Exact,
            out_dim,
            in_dim,
            step: 0.0,
        })
    }

    /// The same stored weight with its products taken in mode `exp`.
    ///
    /// The modes that read natural logs (`exact`, `fast`, `mitchell`) share one stored form, so
    /// a weight converts once and switches among them for free; `lmul` stores Mitchell's logs
    /// instead, so switching to or from it is refused (convert with [`LogWeight::from_tensor`]
    /// and a [`LogConfig`] in that mode).
    pub fn with_exp(&self, exp: ExpMode) -> Result<Self> {
        LogConfig::new(self.format, exp).check()?;
        if (exp == ExpMode::Table) != (self.exp == ExpMode::Table) {
            bail!(
                "an lns4 weight converted for the {} exp mode cannot switch to {exp}: the table \\
                 mode stores its codes by blocks of 16 rows; convert the plain weight again with \\
                 LogConfig::new(lns4, {exp})",
                self.exp
            );
        }
        if exp.reads_logs_from_bits() != self.exp.reads_logs_from_bits() {
            bail!(
                "a log-domain weight converted for the {} exp mode cannot switch to {exp}: the two \
                 store different logs; convert the plain weight again with LogConfig::new({}, {exp})",
                self.exp,
                self.format
            );
        }
        Ok(Self {
            exp,
            ..self.clone()
        })
    }

    /// `(out, in)`, the shape of the weight this was converted from.
    pub fn dims(&self) -> (usize, usize) {
        (self.out_dim, self.in_dim)
    }

    /// `lns4`'s step between codes in natural-log units, chosen for this tensor; `None` for the
    /// other formats.
    pub fn lns4_step(&self) -> Option<f32> {
        (self.format == WeightFormat::Lns4).then_some(self.step)
    }

    /// How the magnitudes are stored.
    pub fn format(&self) -> WeightFormat {
        self.format
    }

    /// How each product's `exp` is taken.
    pub fn exp(&self) -> ExpMode {
        self.exp
    }

    /// The format and the exp mode together.
    pub fn config(&self) -> LogConfig {
        LogConfig::new(self.format, self.exp)
    }

    /// `ln|w|`, shape `(out, in)`, dtype [`WeightFormat::dtype`].
    pub fn magnitudes(&self) -> &Tensor {
        &self.magnitudes
    }

    /// Packed sign bits, shape `(out, ceil(in/32))`, `U32` (see [`crate::packing`]); `None` for
    /// `lns8`, whose codes hold their signs.
    pub fn signs(&self) -> Option<&Tensor> {
        (!self.format.is_lns()).then_some(&self.signs)
    }

    /// The lns group offsets, shape `(out, ceil(in/32))`, `F16` ([`crate::lns`]); `None` for
    /// the float formats.
    pub fn group_offsets(&self) -> Option<&Tensor> {
        self.format.is_lns().then_some(&self.signs)
    }

    /// Rows `rows` of the weight as stored, as plain `f32` values `(rows.len(), in)` on the
    /// CPU, read in place (nothing else is copied): an embedding lookup served from the codes.
    /// Only for the lns formats on the CPU (the float formats keep their plain table).
    pub fn dequantize_rows(&self, rows: &[u32]) -> Result<Tensor> {
        use candle_core::{CpuStorage, Storage};
        let (out_dim, in_dim) = self.dims();
        if !self.format.is_lns() {
            bail!(
                "dequantize_rows reads lns codes; a {} weight has none",
                self.format
            );
        }
        if let Some(&r) = rows.iter().find(|&&r| r as usize >= out_dim) {
            bail!("row {r} is past the weight's {out_dim} rows");
        }
        let (codes, cl) = self.magnitudes.storage_and_layout();
        let (offsets, ol) = self.signs.storage_and_layout();
        let (Storage::Cpu(CpuStorage::U8(c)), Storage::Cpu(CpuStorage::F16(o))) =
            (&*codes, &*offsets)
        else {
            bail!("dequantize_rows needs the weight on the CPU: lns formats run there only");
        };
        let (c, o) = (&c[cl.start_offset()..], &o[ol.start_offset()..]);
        let groups = lns::groups_per_row(in_dim);
        let mut values = Vec::with_capacity(rows.len() * in_dim);
        for &r in rows {
            let r = r as usize;
            for col in 0..in_dim {
                let g = col / lns::LNS8_GROUP;
                let v = match (self.format, self.exp) {
                    (WeightFormat::Lns8, _) => {
                        lns::decode_value(c[r * in_dim + col], o[r * groups + g])
                    }
                    (_, ExpMode::Table) => {
                        let (b, rr) = (r / lns::TABLE_ROWS, r % lns::TABLE_ROWS);
                        let offset = o[(b * groups + g) * lns::TABLE_ROWS + rr];
                        let code = lns::lns4_table_code(c, in_dim, r, col);
                        lns::decode_value4(code, offset, self.step)
                    }
                    _ => {
                        let per_row = lns::lns4_bytes_per_row(in_dim);
                        let code = lns::lns4_code(&c[r * per_row..(r + 1) * per_row], col);
                        lns::decode_value4(code, o[r * groups + g], self.step)
                    }
                };
                values.push(v as f32);
            }
        }
        Tensor::from_vec(values, (rows.len(), in_dim), &Device::Cpu)
    }

    /// The weight as stored, as plain `f32` values `(out, in)` on the CPU: what the op
    /// multiplies by, so that a reference can tell the format's error from the op's.
    pub fn dequantize(&self) -> Result<Tensor> {
        let (out_dim, in_dim) = self.dims();
        let values: Vec<f32> = match self.format {
            WeightFormat::Lns4 => {
                let bytes = self.magnitudes.to_device(&Device::Cpu)?.flatten_all()?;
                let bytes = bytes.to_vec1::<u8>()?;
                let offsets = self.signs.to_device(&Device::Cpu)?.flatten_all()?;
                let offsets = offsets.to_vec1::<f16>()?;
                let (groups, per_row) =
                    (lns::groups_per_row(in_dim), lns::lns4_bytes_per_row(in_dim));
                (0..out_dim * in_dim)
                    .map(|i| {
                        let (r, col) = (i / in_dim, i % in_dim);
                        let (code, offset) = if self.exp == ExpMode::Table {
                            let g = col / lns::LNS4_GROUP;
                            let (b, rr) = (r / lns::TABLE_ROWS, r % lns::TABLE_ROWS);
                            (
                                lns::lns4_table_code(&bytes, in_dim, r, col),
                                offsets[(b * groups + g) * lns::TABLE_ROWS + rr],
                            )
                        } else {
                            let code = lns::lns4_code(&bytes[r * per_row..(r + 1) * per_row], col);
                            (code, offsets[r * groups + col / lns::LNS4_GROUP])
                        };
                        lns::decode_value4(code, offset, self.step) as f32
                    })
                    .collect()
            }
            WeightFormat::Lns8 => {
                let codes = self.magnitudes.to_device(&Device::Cpu)?.flatten_all()?;
                let codes = codes.to_vec1::<u8>()?;
                let offsets = self.signs.to_device(&Device::Cpu)?.flatten_all()?;
                let offsets = offsets.to_vec1::<f16>()?;
                let groups = lns::groups_per_row(in_dim);
                codes
                    .iter()
                    .enumerate()
                    .map(|(i, &c)| {
                        let (r, col) = (i / in_dim.max(1), i % in_dim.max(1));
                        lns::decode_value(c, offsets[r * groups + col / lns::LNS8_GROUP]) as f32
                    })
                    .collect()
            }
            WeightFormat::F32 | WeightFormat::F16 => {
                let logs = self.magnitudes.to_device(&Device::Cpu)?;
                let logs = logs.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
                let signs = self.signs.to_device(&Device::Cpu)?.flatten_all()?;
                let signs = signs.to_vec1::<u32>()?;
                let words = sign_words_per_row(in_dim);
                let value = |l: f64| {
                    if !self.exp.reads_logs_from_bits() || !l.is_finite() {
                        l.exp()
                    } else {
                        // Mitchell's log inverted: 2^⌊t⌋·(1 + t − ⌊t⌋).
                        let t = l / std::f64::consts::LN_2;
                        2f64.powf(t.floor()) * (1.0 + t - t.floor())
                    }
                };
                logs.iter()
                    .enumerate()
                    .map(|(i, &l)| {
                        let (r, col) = (i / in_dim.max(1), i % in_dim.max(1));
                        let negative = crate::packing::sign_bit(&signs[r * words..], col) == 1;
                        let v = value(l) as f32;
                        if negative {
                            -v
                        } else {
                            v
                        }
                    })
                    .collect()
            }
        };
        Tensor::from_vec(values, (out_dim, in_dim), &Device::Cpu)
    }

    /// The device both parts live on.
    pub fn device(&self) -> &Device {
        self.magnitudes.device()
    }

    /// The same weight on `device` (both parts copied; a no-op on the same device).
    ///
    /// Converting on the CPU and moving the result is the cheap way to put a weight on a GPU:
    /// reading the plain weight onto the GPU first would upload it in full precision only to
    /// read it back for the conversion.
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Self {
            magnitudes: self.magnitudes.to_device(device)?,
            signs: self.signs.to_device(device)?,
            format: self.format,
            exp: self.exp,
            out_dim: self.out_dim,
            in_dim: self.in_dim,
            step: self.step,
        })
    }

    /// Bytes the weight occupies (and a decode step reads): magnitudes plus sign words.
    pub fn size_in_bytes(&self) -> usize {
        self.magnitudes.elem_count() * self.format.magnitude_bytes()
            + self.signs.elem_count() * self.signs.dtype().size_in_bytes()
    }

    /// `x · wᵀ` in the log domain, for `x` of shape `(..., in)` and any float dtype; the result
    /// has shape `(..., out)` and `x`'s dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        const OP: &str = "a log-domain linear layer";
        check_float(OP, x)?;
        check_mode(OP, self.exp, x)?;
        if self.format.is_lns() && !x.device().is_cpu() {
            bail!(
                "{OP}: the {} weight format has CPU kernels only so far, and the input is on \
                 {}; use --weight-format f16 or f32 on a GPU, or run on the CPU",
                self.format,
                device_name(x.device())
            );
        }
        let (out_dim, in_dim) = self.dims();
        match x.dims().last() {
            Some(&k) if k == in_dim => {}
            _ => bail!(
                "{OP} with weight (out, in) = ({out_dim}, {in_dim}) needs input of shape \
                 (…, {in_dim}), got {:?}",
                x.dims()
            ),
        }
        if !x.device().same_device(self.device()) {
            bail!(
                "{OP}: the input is on {} but the weight is on {}; move one with to_device",
                device_name(x.device()),
                device_name(self.device())
            );
        }
        if in_dim == 0 || out_dim == 0 || x.elem_count() == 0 {
            let mut dims = x.dims().to_vec();
            *dims.last_mut().expect("rank ≥ 1") = out_dim;
            return Tensor::zeros(dims, x.dtype(), x.device());
        }
        let op = LogLinearOp {
            exp: self.exp,
            out_dim,
            in_dim,
            lns4_step: self.lns4_step(),
        };
        x.apply_op3_no_bwd(&self.magnitudes, &self.signs, &op)
    }
}

/// A weight is a layer without a bias: `x · wᵀ` ([`LogWeight::forward`]).
impl Module for LogWeight {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        LogWeight::forward(self, x)
    }
}
