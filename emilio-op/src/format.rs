//! Weight formats: how a [`LogWeight`](crate::LogWeight) stores a `(out, in)` weight in the log
//! domain. Each format is one module behind one trait ([`Format`], its stored form a
//! [`StoredForm`]), registered by one line of the list at the foot of this file, in the way
//! Candle gives each quantized type one file and one `GgmlType` impl.
//!
//! | format | stored as | bits per weight |
//! | --- | --- | --- |
//! | `f32` | `ln|w|` as `f32`, packed sign bits ([`crate::packing`]) | 33 |
//! | `f16` | `ln|w|` as `f16`, packed sign bits | 17 |
//! | `lns8` ([`lns8`]) | a sign and a 7-bit log code per weight, an `f16` offset per 32 | 8.5 |
//! | `lns4` ([`lns4`]) | a sign and a 3-bit log code, two to a byte, an `f16` offset per 32, a step per tensor | 4.5 |
//!
//! Adding a format: a module here implementing [`Format`] and [`StoredForm`], its CPU kernels
//! under `cpu/`, and one line in the list below (`docs/architecture.md`, "Adding a weight
//! format").

use std::fmt;
use std::str::FromStr;

use candle_core::backend::BackendStorage;
use candle_core::WithDType;
use candle_core::{bail, CpuStorage, DType, Device, Layout, Result, Shape, Storage, Tensor};

use crate::ExpMode;

mod convert;
pub(crate) mod float;
mod lns;
pub mod lns4;
pub mod lns8;

/// One weight format: what it is called, what it costs and how a weight is converted to it.
///
/// The conversion runs on the CPU (the plain weight is read there a block of rows at a time)
/// and puts the stored form on the weight's device.
pub(crate) trait Format {
    /// What a converted weight holds.
    type Stored: StoredForm;
    /// The name users write (`--weight-format`, [`WeightFormat::from_str`]).
    const NAME: &'static str;
    /// Bits per weight in all: magnitude, sign and group overhead.
    const BITS_PER_WEIGHT: f64;
    /// One line: what a weight is stored as and the error that costs per weight.
    const SUMMARY: &'static str;
    /// Whether the format has CPU kernels only (no GPU plan reads it yet).
    const CPU_ONLY: bool;

    /// `Ok` when the format has kernels for `exp`, else why not and what to use instead.
    fn supports(exp: ExpMode) -> std::result::Result<(), String>;

    /// `Ok` when a weight converted for mode `from` also serves mode `to` (both supported),
    /// else what differs between their stored forms. By default the modes that read natural
    /// logs share one form and `lmul`, which stores Mitchell's logs, has its own.
    fn switch_exp(from: ExpMode, to: ExpMode) -> std::result::Result<(), &'static str> {
        if from.reads_logs_from_bits() != to.reads_logs_from_bits() {
            return Err("the two store different logs");
        }
        Ok(())
    }

    /// Converts the `(out, in)` float weight `w` for products in mode `exp` (a supported one).
    fn encode(w: &Tensor, exp: ExpMode) -> Result<Self::Stored>;
}

/// A weight as a format stores it: two tensors the op is applied to (the kernels' operands),
/// and whatever else its kernels need to read them.
pub(crate) trait StoredForm: Clone + fmt::Debug + Send + Sync {
    /// The tensors the op reads, in the order its kernels take them.
    fn operands(&self) -> [&Tensor; 2];

    /// The same form over other tensors holding the same data (moved to another device).
    fn with_operands(&self, operands: [Tensor; 2]) -> Self;

    /// The weights of `rows` (every row when `None`) as the products see them, row after row,
    /// decoded on the CPU from the stored form in place.
    fn dequantize(&self, exp: ExpMode, rows: Option<&[u32]>) -> Result<Vec<f32>>;

    /// `x · wᵀ` on the CPU: `x` in any layout, `a`/`b` the storages of [`StoredForm::operands`].
    #[allow(clippy::too_many_arguments)]
    fn cpu_forward(
        &self,
        exp: ExpMode,
        x: &CpuStorage,
        lx: &Layout,
        a: &CpuStorage,
        la: &Layout,
        b: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)>;
}

/// How a [`LogWeight`](crate::LogWeight) is stored and how its products are computed: a
/// [`WeightFormat`] and an [`ExpMode`]. A `WeightFormat` alone converts to the exact mode, so
/// every function that takes a `LogConfig` also takes a plain format.
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

    /// The same format with products in mode `exp`.
    pub fn with_exp(self, exp: ExpMode) -> Self {
        Self { exp, ..self }
    }

    /// Whether the op has kernels for this pair (the format says: [`LogConfig::check`]).
    pub fn is_supported(self) -> bool {
        self.check().is_ok()
    }

    /// Every supported pair, formats from the widest, modes from the most exact.
    pub fn supported() -> Vec<LogConfig> {
        WeightFormat::ALL
            .into_iter()
            .flat_map(|f| ExpMode::ALL.map(|e| LogConfig::new(f, e)))
            .filter(|c| c.is_supported())
            .collect()
    }

    /// `Ok` for a supported pair, else an error naming it, why, and what to use instead.
    pub fn check(self) -> std::result::Result<(), crate::OpError> {
        self.format
            .supports(self.exp)
            .map_err(|reason| crate::OpError::UnsupportedPair {
                format: self.format.name(),
                exp: self.exp,
                reason,
            })
    }

    /// `Ok` when this pair has kernels on `device`: the lns formats and every exp mode but
    /// `exact` have CPU kernels only so far.
    pub fn check_device(self, device: &Device) -> std::result::Result<(), crate::OpError> {
        self.check()?;
        if device.is_cpu() {
            return Ok(());
        }
        let device = crate::backend::device_name(device);
        if self.format.is_cpu_only() {
            return Err(crate::OpError::CpuOnly {
                what: format!("the {} weight format", self.format),
                device,
                instead: "use WeightFormat::F16 or F32".into(),
            });
        }
        if self.exp != ExpMode::Exact {
            return Err(crate::OpError::CpuOnly {
                what: format!("the {} exp mode", self.exp),
                device,
                instead: "use ExpMode::Exact".into(),
            });
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

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for WeightFormat {
    type Err = candle_core::Error;

    fn from_str(s: &str) -> Result<Self> {
        let lower = s.to_ascii_lowercase();
        match Self::ALL.into_iter().find(|f| f.name() == lower) {
            Some(format) => Ok(format),
            None => bail!(
                "unknown log-weight format {s:?}: expected one of {}",
                Self::ALL.map(|f| format!("\"{f}\"")).join(", ")
            ),
        }
    }
}

impl WeightFormat {
    /// Whether the format stores log codes against group offsets (`lns8`, `lns4`) rather than
    /// float logs with packed sign bits.
    pub fn is_lns(self) -> bool {
        !matches!(self, Self::F32 | Self::F16)
    }

    /// Bytes per weight of the first stored tensor's dtype ([`LogWeight::magnitudes`]); the
    /// whole cost is [`WeightFormat::bits_per_weight`].
    ///
    /// [`LogWeight::magnitudes`]: crate::LogWeight::magnitudes
    pub fn magnitude_bytes(self) -> usize {
        self.dtype().size_in_bytes()
    }

    /// The dtype of [`LogWeight::magnitudes`](crate::LogWeight::magnitudes) in this format
    /// (`u8` codes for the lns formats).
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            _ => DType::U8,
        }
    }
}

/// The two operands of a stored form as contiguous CPU slices, read in place (copied to the CPU
/// first when they live elsewhere), handed to `f`.
pub(crate) fn with_cpu_operands<A: WithDType, B: WithDType, R>(
    operands: [&Tensor; 2],
    f: impl FnOnce(&[A], &[B]) -> Result<R>,
) -> Result<R> {
    let [a, b] = operands.map(|t| t.to_device(&Device::Cpu));
    let (a, b) = (a?, b?);
    let (sa, la) = a.storage_and_layout();
    let (sb, lb) = b.storage_and_layout();
    let (Storage::Cpu(sa), Storage::Cpu(sb)) = (&*sa, &*sb) else {
        bail!("a stored log weight copied to the CPU is not on the CPU");
    };
    f(
        cpu_slice(sa, la, "stored weight")?,
        cpu_slice(sb, lb, "stored weight")?,
    )
}

/// `s` as a contiguous slice of `T` through its layout, or an error naming `what`.
pub(crate) fn cpu_slice<'a, T: WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> Result<&'a [T]> {
    let Some((lo, hi)) = l.contiguous_offsets() else {
        bail!("{what} must be contiguous, got strides {:?}", l.stride());
    };
    match T::cpu_storage_as_slice(s) {
        Ok(v) => Ok(&v[lo..hi]),
        Err(_) => bail!(
            "{what} must be {:?}, got {:?} {:?}",
            T::DTYPE,
            s.dtype(),
            l.dims()
        ),
    }
}

/// The registry: one line per format, `Variant => type implementing Format`, in order from the
/// widest to the narrowest. It defines [`WeightFormat`], the stored forms' enum and the
/// dispatch from one to the other.
macro_rules! formats {
    ($($(#[$attr:meta])* $variant:ident => $format:ty,)*) => {
        /// How the magnitudes `ln|w|` of a [`LogWeight`](crate::LogWeight) are stored; each
        /// format's [`WeightFormat::summary`] says how and at what error.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub enum WeightFormat {
            $($(#[$attr])* $variant,)*
        }

        impl WeightFormat {
            /// Every format, from the widest to the narrowest.
            pub const ALL: [WeightFormat; [$(stringify!($variant)),*].len()] =
                [$(Self::$variant),*];

            /// The format's name, as the CLI spells it.
            pub fn name(self) -> &'static str {
                match self { $(Self::$variant => <$format as Format>::NAME,)* }
            }

            /// Bits per weight in all: magnitude, sign and group overhead (33, 17, 8.5, 4.5).
            pub fn bits_per_weight(self) -> f64 {
                match self { $(Self::$variant => <$format as Format>::BITS_PER_WEIGHT,)* }
            }

            /// One line: what a weight is stored as and the error that costs per weight.
            pub fn summary(self) -> &'static str {
                match self { $(Self::$variant => <$format as Format>::SUMMARY,)* }
            }

            /// Whether the format has CPU kernels only so far.
            pub fn is_cpu_only(self) -> bool {
                match self { $(Self::$variant => <$format as Format>::CPU_ONLY,)* }
            }

            /// The exp modes this format has kernels for, from the most exact.
            pub fn exp_modes(self) -> Vec<ExpMode> {
                ExpMode::ALL.into_iter().filter(|&e| self.supports(e).is_ok()).collect()
            }

            /// `Ok` when the format has kernels for `exp`, else why not.
            pub(crate) fn supports(self, exp: ExpMode) -> std::result::Result<(), String> {
                match self { $(Self::$variant => <$format as Format>::supports(exp),)* }
            }

            /// See [`Format::switch_exp`].
            pub(crate) fn switch_exp(
                self,
                from: ExpMode,
                to: ExpMode,
            ) -> std::result::Result<(), &'static str> {
                match self { $(Self::$variant => <$format as Format>::switch_exp(from, to),)* }
            }

            /// Converts `w` into this format's stored form.
            pub(crate) fn encode(self, w: &Tensor, exp: ExpMode) -> Result<Stored> {
                Ok(match self {
                    $(Self::$variant => Stored::$variant(<$format as Format>::encode(w, exp)?),)*
                })
            }
        }

        /// A weight as its format stores it.
        #[derive(Debug, Clone)]
        pub(crate) enum Stored {
            $($variant(<$format as Format>::Stored),)*
        }

        impl Stored {
            /// The format this is stored in.
            pub(crate) fn format(&self) -> WeightFormat {
                match self { $(Self::$variant(_) => WeightFormat::$variant,)* }
            }

            /// See [`StoredForm::operands`].
            pub(crate) fn operands(&self) -> [&Tensor; 2] {
                match self { $(Self::$variant(s) => s.operands(),)* }
            }

            /// The same weight on `device`.
            pub(crate) fn to_device(&self, device: &Device) -> Result<Self> {
                let [a, b] = self.operands();
                let moved = [a.to_device(device)?, b.to_device(device)?];
                Ok(match self { $(Self::$variant(s) => Self::$variant(s.with_operands(moved)),)* })
            }

            /// See [`StoredForm::dequantize`].
            pub(crate) fn dequantize(&self, exp: ExpMode, rows: Option<&[u32]>) -> Result<Vec<f32>> {
                match self { $(Self::$variant(s) => s.dequantize(exp, rows),)* }
            }

            /// See [`StoredForm::cpu_forward`].
            #[allow(clippy::too_many_arguments)]
            pub(crate) fn cpu_forward(
                &self,
                exp: ExpMode,
                x: &CpuStorage,
                lx: &Layout,
                a: &CpuStorage,
                la: &Layout,
                b: &CpuStorage,
                lb: &Layout,
            ) -> Result<(CpuStorage, Shape)> {
                match self { $(Self::$variant(s) => s.cpu_forward(exp, x, lx, a, la, b, lb),)* }
            }
        }
    };
}

formats! {
    /// `f32` magnitudes: the exact reference format (4 bytes + 1 bit per weight).
    F32 => float::F32,
    /// `f16` magnitudes (2 bytes + 1 bit per weight). Rounding `ln|w|` to 11 significant bits
    /// costs a relative error of about `|ln|w||·2⁻¹¹` per product, ≈0.1–0.2% for typical
    /// weights, in exchange for half the bytes a decode step must read.
    #[default]
    F16 => float::F16,
    /// `lns8` ([`lns8`]): per weight a sign bit and a 7-bit log code against an `f16` offset
    /// per group of 32 weights along `in` (8.5 bits per weight): relative error ≤ 2.19% per
    /// weight down to 1/235 of its group's largest. A quarter of `f32`'s bytes.
    Lns8 => lns8::Lns8,
    /// `lns4` ([`lns4`]): per weight a sign bit and a 3-bit log code (two to a byte) against an
    /// `f16` offset per group of 32, with a step chosen per tensor (4.5 bits per weight).
    Lns4 => lns4::Lns4,
}
