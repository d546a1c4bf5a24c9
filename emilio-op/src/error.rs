//! What the op refuses, in the library's own terms.
//!
//! A crate used on its own cannot speak in an application's flags: these errors name the
//! values, types and methods of this crate's API, and an application (the `emilio` CLI) turns
//! them into advice about its own options. Every public function still returns
//! `candle_core::Result` (a custom op has to), with an [`OpError`] inside whose message is its
//! [`Display`](fmt::Display); the checks a caller can run before building anything
//! ([`LogConfig::check`](crate::LogConfig::check),
//! [`LogConfig::check_device`](crate::LogConfig::check_device)) return it typed.
//!
//! Formats are named by their [`WeightFormat::name`](crate::WeightFormat::name): this module
//! sits below the formats (which raise these errors), so it holds no format type.

use std::fmt;

use crate::ExpMode;

/// A request the op has no kernels for, or data it cannot store.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum OpError {
    /// The weight format has no kernels for this exp mode.
    UnsupportedPair {
        /// The weight format asked for ([`WeightFormat::name`](crate::WeightFormat::name)).
        format: &'static str,
        /// The exp mode asked for.
        exp: ExpMode,
        /// Why not, and what pairs to use instead.
        reason: String,
    },
    /// A weight format or an exp mode that has CPU kernels only, asked to run on a GPU.
    CpuOnly {
        /// What has CPU kernels only: `"the lns8 weight format"`, `"the fast exp mode"`.
        what: String,
        /// The device the data is on (`cuda`, `metal`).
        device: &'static str,
        /// The nearest thing that does run there.
        instead: String,
    },
    /// An approximate exp mode asked for `f64` arithmetic, which only the exact mode has.
    NoF64Kernel {
        /// The mode asked for.
        exp: ExpMode,
    },
    /// A GPU device whose backend this build of emilio-op was compiled without.
    BackendNotBuilt {
        /// What was asked to run there.
        op: String,
        /// The device's name (`CUDA`, `Metal`).
        device: &'static str,
        /// The cargo feature of emilio-op that builds its kernels (`cuda`, `metal`).
        feature: &'static str,
    },
    /// A converted weight asked to switch to an exp mode that reads a different stored form.
    ExpSwitch {
        /// The weight's format ([`WeightFormat::name`](crate::WeightFormat::name)).
        format: &'static str,
        /// The mode it was converted for.
        from: ExpMode,
        /// The mode asked for.
        to: ExpMode,
        /// What differs between the two stored forms.
        why: &'static str,
    },
    /// A weight value the format has no code for (the lns formats store finite values only).
    Unstorable {
        /// The format converted to ([`WeightFormat::name`](crate::WeightFormat::name)).
        format: &'static str,
        /// Where the value is in the `(out, in)` weight.
        row: usize,
        /// Its column.
        col: usize,
        /// The value.
        value: f64,
    },
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsupportedPair {
                format,
                exp,
                reason,
            } => write!(f, "the pair ({format}, {exp}) is not supported: {reason}"),
            Self::CpuOnly {
                what,
                device,
                instead,
            } => write!(
                f,
                "{what} has CPU kernels only so far, and the input is on {device}; {instead} on \
                 a GPU, or run on the CPU"
            ),
            Self::NoF64Kernel { exp } => write!(
                f,
                "the {exp} exp mode approximates f32 arithmetic and has no f64 kernel; cast the \
                 input to f32, or use ExpMode::Exact for f64"
            ),
            Self::BackendNotBuilt {
                op,
                device,
                feature,
            } => write!(
                f,
                "emilio-op was built without its `{feature}` feature, so {op} cannot run on a \
                 {device} device; build emilio-op with its `{feature}` feature, or run on \
                 Device::Cpu"
            ),
            Self::ExpSwitch {
                format,
                from,
                to,
                why,
            } => write!(
                f,
                "the {format} weight, converted for the {from} exp mode, cannot switch to {to}: \
                 {why}; convert the plain weight again with LogConfig::new({format}, {to})"
            ),
            Self::Unstorable {
                format,
                row,
                col,
                value,
            } => write!(
                f,
                "weight ({row}, {col}) is {value}, which the {format} format cannot store (it has \
                 codes for finite values only); convert to the f16 or f32 format, or fix the \
                 checkpoint"
            ),
        }
    }
}

impl std::error::Error for OpError {}

impl From<OpError> for candle_core::Error {
    fn from(e: OpError) -> Self {
        candle_core::Error::Msg(e.to_string()).bt()
    }
}
