//! Log-domain weights: `ln|w|` and packed sign bits, converted once at load time.

use std::fmt;
use std::str::FromStr;

use candle_core::{bail, DType, Device, Module, Result, Tensor};
use half::f16;
use rayon::prelude::*;

use crate::backend::device_name;
use crate::check::{check_float, check_mode};
use crate::linear_op::LogLinearOp;
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
}

impl WeightFormat {
    /// The dtype of [`LogWeight::magnitudes`] in this format.
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
        }
    }

    /// Bytes of magnitude per weight (the sign bit comes on top).
    pub fn magnitude_bytes(self) -> usize {
        self.dtype().size_in_bytes()
    }
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
        })
    }
}

impl FromStr for WeightFormat {
    type Err = candle_core::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            _ => bail!("unknown log-weight format {s:?}: expected \"f32\" or \"f16\""),
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

/// Fills `mags` with `round(log(w))` (the log of [`weight_log`]) and `signs` with the packed
/// sign bits of the `(out, in)` weight `w`, a block of rows at a time, rows spread over threads.
fn convert_rows<M: Copy + Send>(
    mode: ExpMode,
    w: &Tensor,
    mags: &mut [M],
    signs: &mut [u32],
    round: impl Fn(f64) -> M + Sync,
) -> Result<()> {
    let (out_dim, in_dim) = w.dims2()?;
    if out_dim == 0 || in_dim == 0 {
        return Ok(());
    }
    let words = sign_words_per_row(in_dim);
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
        let mags = &mut mags[r0 * in_dim..(r0 + rows) * in_dim];
        let signs = &mut signs[r0 * words..(r0 + rows) * words];
        values
            .par_chunks(in_dim)
            .zip(mags.par_chunks_mut(in_dim))
            .zip(signs.par_chunks_mut(words))
            .for_each(|((row, mags), packed)| {
                pack_sign_row(row.iter().map(|v| v.is_sign_negative()), packed);
                for (m, v) in mags.iter_mut().zip(row) {
                    *m = round(weight_log(mode, *v));
                }
            });
    }
    Ok(())
}

/// A `(out, in)` weight matrix held in the log domain: magnitudes `ln|w|` and one sign bit per
/// weight, laid out as [`crate::packing`] describes.
///
/// The plain weight is not kept: a `LogWeight` costs [`WeightFormat::magnitude_bytes`] plus
/// 1/8 byte per weight. Both parts are ordinary tensors on the weight's device, so the op runs
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
    magnitudes: Tensor,
    signs: Tensor,
    format: WeightFormat,
    exp: ExpMode,
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
        let words = sign_words_per_row(in_dim);
        let mut signs = vec![0u32; out_dim * words];
        let device = w.device();
        let magnitudes = match format {
            WeightFormat::F32 => {
                let mut mags = vec![0f32; out_dim * in_dim];
                convert_rows(exp, w, &mut mags, &mut signs, |l| l as f32)?;
                Tensor::from_vec(mags, (out_dim, in_dim), device)?
            }
            WeightFormat::F16 => {
                let mut mags = vec![f16::ZERO; out_dim * in_dim];
                convert_rows(exp, w, &mut mags, &mut signs, f16::from_f64)?;
                Tensor::from_vec(mags, (out_dim, in_dim), device)?
            }
        };
        let signs = Tensor::from_vec(signs, (out_dim, words), device)?;
        Ok(Self {
            magnitudes,
            signs,
            format,
            exp,
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
            dtype => bail!("log-weight magnitudes must be f32 or f16, got {dtype:?}"),
        };
        let (out_dim, in_dim) = magnitudes.dims2()?;
        let want = (out_dim, sign_words_per_row(in_dim));
        if signs.dtype() != DType::U32 || signs.dims2()? != want {
            bail!(
                "log-weight signs must be a u32 tensor of shape {want:?} for magnitudes of \
                 shape {:?}, got {:?} {:?}",
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
        })
    }

    /// The same stored weight with its products taken in mode `exp`.
    ///
    /// The modes that read natural logs (`exact`, `fast`, `mitchell`) share one stored form, so
    /// a weight converts once and switches among them for free; `lmul` stores Mitchell's logs
    /// instead, so switching to or from it is refused (convert with [`LogWeight::from_tensor`]
    /// and a [`LogConfig`] in that mode).
    pub fn with_exp(&self, exp: ExpMode) -> Result<Self> {
        if exp.reads_logs_from_bits() != self.exp.reads_logs_from_bits() {
            bail!(
                "a log-domain weight converted for the {} exp mode cannot switch to {exp}: the two                  store different logs; convert the plain weight again with LogConfig::new({}, {exp})",
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
        let d = self.magnitudes.dims();
        (d[0], d[1])
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

    /// Packed sign bits, shape `(out, ceil(in/32))`, `U32` (see [`crate::packing`]).
    pub fn signs(&self) -> &Tensor {
        &self.signs
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
        })
    }

    /// Bytes the weight occupies (and a decode step reads): magnitudes plus sign words.
    pub fn size_in_bytes(&self) -> usize {
        self.magnitudes.elem_count() * self.format.magnitude_bytes() + self.signs.elem_count() * 4
    }

    /// `x · wᵀ` in the log domain, for `x` of shape `(..., in)` and any float dtype; the result
    /// has shape `(..., out)` and `x`'s dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        const OP: &str = "a log-domain linear layer";
        check_float(OP, x)?;
        check_mode(OP, self.exp, x)?;
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
        let op = LogLinearOp { exp: self.exp };
        x.apply_op3_no_bwd(&self.magnitudes, &self.signs, &op)
    }
}

/// A weight is a layer without a bias: `x · wᵀ` ([`LogWeight::forward`]).
impl Module for LogWeight {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        LogWeight::forward(self, x)
    }
}
