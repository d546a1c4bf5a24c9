//! Log-domain weights, converted once at load time into a [`WeightFormat`]'s stored form
//! ([`crate::format`]).

use candle_core::{bail, DType, Device, Module, Result, Tensor};

use crate::backend::device_name;
use crate::check::{check_float, check_mode};
use crate::format::float::Logs;
use crate::format::{lns8, Stored, WeightFormat};
use crate::linear_op::LogLinearOp;
use crate::{ExpMode, LogConfig, OpError};

/// A `(out, in)` weight matrix held in the log domain, in a [`WeightFormat`]: for `f32`/`f16`
/// the magnitudes `ln|w|` and one sign bit per weight, laid out as [`crate::packing`]
/// describes; for the lns formats log codes against group offsets ([`crate::format`]).
///
/// The plain weight is not kept: a `LogWeight` costs [`WeightFormat::bits_per_weight`] per
/// weight ([`LogWeight::size_in_bytes`]). Both parts are ordinary tensors on the weight's
/// device, so the op runs wherever Candle does.
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
    stored: Stored,
    exp: ExpMode,
    /// `(out, in)`: the shape of the weight this was converted from.
    out_dim: usize,
    in_dim: usize,
}

impl LogWeight {
    /// Converts a `(out, in)` weight of any float dtype, on any device, for `config`: a
    /// [`WeightFormat`] (exact products) or a [`LogConfig`] with an [`ExpMode`].
    ///
    /// Logs are taken in f64 and rounded once to the format, so an `f32` magnitude is the
    /// correctly rounded `ln|w|` in all but the rarest cases and an `f16` one is never
    /// double-rounded.
    pub fn from_tensor(w: &Tensor, config: impl Into<LogConfig>) -> Result<Self> {
        let config = config.into();
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
        config.check()?;
        Ok(Self {
            stored: config.format.encode(w, config.exp)?,
            exp: config.exp,
            out_dim,
            in_dim,
        })
    }

    /// Rebuilds a weight from its parts, e.g. as saved by a converter, for exact products (see
    /// [`LogWeight::with_exp`] for another mode).
    ///
    /// `magnitudes` is `(out, in)`: `F32` or `F16` logs with `signs` the `(out, ceil(in/32))`
    /// `U32` sign words, or `U8` lns8 codes with `signs` their `(out, ceil(in/32))` `F16`
    /// group offsets.
    pub fn from_parts(magnitudes: Tensor, signs: Tensor) -> Result<Self> {
        let (out_dim, in_dim) = magnitudes.dims2()?;
        if !magnitudes.device().same_device(signs.device()) {
            bail!("log-weight magnitudes and signs are on different devices");
        }
        let stored = match magnitudes.dtype() {
            DType::F32 => Stored::F32(Logs::from_parts(magnitudes, signs)?),
            DType::F16 => Stored::F16(Logs::from_parts(magnitudes, signs)?),
            DType::U8 => Stored::Lns8(lns8::Codes::from_parts(magnitudes, signs)?),
            dtype => bail!("log-weight magnitudes must be f32, f16 or u8 (lns8), got {dtype:?}"),
        };
        Ok(Self {
            stored,
            exp: ExpMode::Exact,
            out_dim,
            in_dim,
        })
    }

    /// The same stored weight with its products taken in mode `exp`.
    ///
    /// The modes that read natural logs (`exact`, `fast`, `mitchell`) share one stored form, so
    /// a weight converts once and switches among them for free; `lmul` stores Mitchell's logs
    /// and `table` orders lns4 codes by blocks of rows, so switching to or from either is
    /// refused (convert with [`LogWeight::from_tensor`] and a [`LogConfig`] in that mode).
    pub fn with_exp(&self, exp: ExpMode) -> Result<Self> {
        let format = self.format();
        LogConfig::new(format, exp).check()?;
        if let Err(why) = format.switch_exp(self.exp, exp) {
            return Err(OpError::ExpSwitch {
                format: format.name(),
                from: self.exp,
                to: exp,
                why,
            }
            .into());
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
        match &self.stored {
            Stored::Lns4(codes) => Some(codes.step),
            _ => None,
        }
    }

    /// How the magnitudes are stored.
    pub fn format(&self) -> WeightFormat {
        self.stored.format()
    }

    /// How each product's `exp` is taken.
    pub fn exp(&self) -> ExpMode {
        self.exp
    }

    /// The format and the exp mode together.
    pub fn config(&self) -> LogConfig {
        LogConfig::new(self.format(), self.exp)
    }

    /// The first stored tensor: `ln|w|` (`(out, in)`, dtype [`WeightFormat::dtype`]) for the
    /// float formats, the codes (`u8`) for the lns formats.
    pub fn magnitudes(&self) -> &Tensor {
        self.stored.operands()[0]
    }

    /// Packed sign bits, shape `(out, ceil(in/32))`, `U32` (see [`crate::packing`]); `None` for
    /// the lns formats, whose codes hold their signs.
    pub fn signs(&self) -> Option<&Tensor> {
        match &self.stored {
            Stored::F32(logs) | Stored::F16(logs) => Some(&logs.signs),
            _ => None,
        }
    }

    /// The lns group offsets (`F16`, one per 32 weights of a row; for an lns4 weight converted
    /// for the table mode by blocks of 16 rows); `None` for the float formats.
    pub fn group_offsets(&self) -> Option<&Tensor> {
        match &self.stored {
            Stored::Lns8(codes) => Some(&codes.offsets),
            Stored::Lns4(codes) => Some(&codes.offsets),
            _ => None,
        }
    }

    /// Rows `rows` of the weight as stored, as plain `f32` values `(rows.len(), in)` on the
    /// CPU, decoded in place (nothing else is copied): an embedding lookup served from the
    /// stored weight, which for the lns formats is all there is of it.
    pub fn dequantize_rows(&self, rows: &[u32]) -> Result<Tensor> {
        let (out_dim, in_dim) = self.dims();
        if let Some(&r) = rows.iter().find(|&&r| r as usize >= out_dim) {
            bail!("row {r} is past the weight's {out_dim} rows");
        }
        if !self.device().is_cpu() {
            bail!(
                "dequantize_rows reads the stored weight in place, and it is on {}; move it to \
                 the CPU with to_device first",
                device_name(self.device())
            );
        }
        let values = self.stored.dequantize(self.exp, Some(rows))?;
        Tensor::from_vec(values, (rows.len(), in_dim), &Device::Cpu)
    }

    /// The weight as stored, as plain `f32` values `(out, in)` on the CPU: what the op
    /// multiplies by, so that a reference can tell the format's error from the op's.
    pub fn dequantize(&self) -> Result<Tensor> {
        let values = self.stored.dequantize(self.exp, None)?;
        Tensor::from_vec(values, self.dims(), &Device::Cpu)
    }

    /// The device both parts live on.
    pub fn device(&self) -> &Device {
        self.magnitudes().device()
    }

    /// The same weight on `device` (both parts copied; a no-op on the same device).
    ///
    /// Converting on the CPU and moving the result is the cheap way to put a weight on a GPU:
    /// reading the plain weight onto the GPU first would upload it in full precision only to
    /// read it back for the conversion.
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Self {
            stored: self.stored.to_device(device)?,
            ..self.clone()
        })
    }

    /// Bytes the weight occupies (and a decode step reads): both stored tensors.
    pub fn size_in_bytes(&self) -> usize {
        self.stored
            .operands()
            .iter()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }

    /// `x · wᵀ` in the log domain, for `x` of shape `(..., in)` and any float dtype; the result
    /// has shape `(..., out)` and `x`'s dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        const OP: &str = "a log-domain linear layer";
        check_float(OP, x)?;
        check_mode(OP, self.exp, x)?;
        self.config().check_device(x.device())?;
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
            stored: self.stored.clone(),
        };
        let [a, b] = self.stored.operands();
        x.apply_op3_no_bwd(a, b, &op)
    }
}

/// A weight is a layer without a bias: `x · wᵀ` ([`LogWeight::forward`]).
impl Module for LogWeight {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        LogWeight::forward(self, x)
    }
}
