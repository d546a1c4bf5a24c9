//! How each product's `exp` is computed: the precision dial of the op.

use std::fmt;
use std::str::FromStr;

use candle_core::{bail, Result};

/// How the op turns the sum of two logs back into a product.
///
/// Every mode keeps the IEEE meaning of the specials, because the logs of zeros, infinities and
/// NaN are `-inf`, `+inf` and NaN and their sum is formed in IEEE arithmetic before any `exp`:
/// a zero operand contributes a zero with the product's sign, an infinite operand an infinite
/// product (or NaN against a zero), NaN propagates. They differ in error and cost, stated per
/// product as a relative error bound `|p̂ − p| ≤ δ·|p|` for a normal result `p`, on top of
/// the rounding of the operands' logs (the op's error budget, `docs/architecture.md`):
///
/// | mode | `exp` | bound `δ` | operations per 16 products (AVX-512) |
/// | --- | --- | --- | --- |
/// | `exact` | degree-6 polynomial, ≤ 2 ulp | `2·2⁻²³` | 13 |
/// | `fast` | degree-4 polynomial of `2^f` | `3·10⁻⁶ + |x|·2⁻²³` | 10 |
/// | `mitchell` | `2^⌊t⌋·(1 + frac t)`, zero-mean offset | `0.0392 + |x|·2⁻²³` | 7 |
/// | `lmul` | Mitchell's log *and* exp (L-Mul) | `0.0729 + |x|·2⁻²²` | 7 |
/// | `table` | lns weights only: a lookup in a per-activation table (`lns8`: and an exponent add) | `6·2⁻²³` | none (a lookup, an add; `lns8`: and an integer add) |
///
/// where `x = ln|a| + ln|b|` is the sum the `exp` is applied to; the `|x|` term is the
/// rounding of `t = x·log₂e` (twice where the CPU has no fused multiply-add). Overflow gives `+inf` and
/// underflow a subnormal or zero in every mode, at the thresholds of the approximated product
/// (so near `f32`'s limits a product may overflow or flush where the exact one does not: by at
/// most the mode's `δ`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ExpMode {
    /// The exact `exp` (within 2 ulp): the reference, and the default.
    #[default]
    Exact,
    /// A degree-4 polynomial of `2^f` on `|f| ≤ ½` after a base-2 range reduction: relative
    /// error ≤ `3·10⁻⁶ + |x|·2⁻²³`, a tenth or less of the `f16` weight format's own storage
    /// error (`|ln|w||·2⁻¹²` on average) for every weight with `|ln|w|| ≥ 0.2`, three
    /// multiply-adds fewer than `exact`.
    Fast,
    /// Mitchell's piecewise-linear `2^t ≈ 2^⌊t⌋·(1 + (t − ⌊t⌋))`, which is what reading the
    /// fixed-point bits of `t` as a float's exponent and mantissa computes, with `t` shifted by
    /// `σ = log₂(1/E[(1+v)·2^−v]) ≈ −0.05753` so that the mean relative error over the
    /// fractional part `v` is zero. Per product the error lies in `[−3.91%, +2.00%]`.
    Mitchell,
    /// L-Mul (Luo & Sun, 2024, "Addition is all you need"): the logs of both operands are read
    /// from their float bits too (Mitchell's `log₂(2^e·(1+m)) ≈ e + m`, in the activation split
    /// and in the weight conversion), the paper's offset `2⁻⁴` (its `l(m) = 4` for mantissas of
    /// more than 4 bits) is added, and the sum is read back as Mitchell's exp: the product of
    /// two normal floats is then the integer sum of their bit patterns plus a constant. Per
    /// product the error lies in `[−7.29%, +6.25%]` (mean +0.41%). The integer adds are done
    /// here in `f32` lanes on `ln 2·(e + m)`, which rounds each log to 24 bits (the `2⁻²²` term
    /// of the bound, with the rounding of `t`). A subnormal
    /// operand is normalised before its bits are read, so the bound holds for it too.
    Lmul,
    /// The lns formats' table mode (as in T-MAC and LUT-GEMM): per activation `x_k` a table
    /// shared by every output, so a product is one lookup of 16 outputs' codes at once and an
    /// add, and each group of 32 is scaled once by `exp(offset)` (an exact exp per output and
    /// group). Error per product within `6·2⁻²³`.
    /// - `lns4`: the table holds the 16 signed products `±exp(ln|x_k| + q·step)` of every code,
    ///   each an exact exp (`vpermps`); the two exps and the scaling make the bound. A product
    ///   overflows where `exp(ln|x| + q·step)` does, before its group's scale.
    /// - `lns8`: a code `q = 16e + r` looks up `±x_k·2^(r/16)` (32 entries, `vpermt2ps`) and adds
    ///   `e` to the float's exponent field: no exp per product at all, within `4·2⁻²³`
    ///   ([`crate::format::lns8`]); products overflow and underflow where the true ones do.
    ///
    /// The codes are stored by blocks of 16 rows for it, so a weight converted for `table` runs
    /// only in `table`; attention's products, which have no codes, are exact when a model runs
    /// `table`.
    Table,
}

impl ExpMode {
    /// Every mode, from the most exact to the cheapest.
    pub const ALL: [ExpMode; 5] = [
        Self::Exact,
        Self::Fast,
        Self::Mitchell,
        Self::Lmul,
        Self::Table,
    ];

    /// The modes that take an `exp` per product (every one but `table`): the ones
    /// [`log_matmul_with`](crate::log_matmul_with) and the float formats run.
    pub const PER_PRODUCT: [ExpMode; 4] = [Self::Exact, Self::Fast, Self::Mitchell, Self::Lmul];

    /// The mode's name, as the CLI spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Exact => "exact",
            Self::Fast => "fast",
            Self::Mitchell => "mitchell",
            Self::Lmul => "lmul",
            Self::Table => "table",
        }
    }

    /// One line: how the mode takes each product's `exp`, and its error per product.
    pub fn summary(self) -> &'static str {
        match self {
            Self::Exact => "degree-6 polynomial exp, ≤ 2 ulp per product: the reference",
            Self::Fast => "degree-4 polynomial of 2^f, ≤ 3e-6 + |x|·2⁻²³ per product",
            Self::Mitchell => "Mitchell's piecewise-linear 2^t, −3.91% … +2.00% per product",
            Self::Lmul => {
                "L-Mul: both logs read from the float bits too, −7.29% … +6.25% per product"
            }
            Self::Table => {
                "lns codes looked up in per-activation tables, no exp per product, ≤ 6·2⁻²³ per product"
            }
        }
    }

    /// The constant part of the mode's relative error bound per product (see the table on
    /// [`ExpMode`]); [`ExpMode::error_bound`] adds the part that grows with the exponent.
    pub fn error_bound_constant(self) -> f64 {
        match self {
            Self::Exact => 2.0 * f64::from(f32::EPSILON),
            Self::Fast => 3e-6,
            Self::Mitchell => 0.0392,
            Self::Lmul => 0.0729,
            Self::Table => 6.0 * f64::from(f32::EPSILON),
        }
    }

    /// The relative error bound of one product whose logs sum to `x` (`x = ln|a| + ln|b|`),
    /// not counting the rounding of the logs themselves (the op's error budget covers that).
    pub fn error_bound(self, x: f64) -> f64 {
        let u = f64::from(f32::EPSILON) / 2.0;
        self.error_bound_constant()
            + match self {
                Self::Exact | Self::Table => 0.0,
                Self::Fast | Self::Mitchell => x.abs() * 2.0 * u,
                Self::Lmul => x.abs() * 4.0 * u,
            }
    }

    /// Whether the operands' logs are Mitchell's, read from the float bits (`lmul`), rather
    /// than the natural logarithm.
    pub fn reads_logs_from_bits(self) -> bool {
        self == Self::Lmul
    }

    /// The mode of products that have no weight codes (attention's): `table` runs them
    /// exactly, every other mode as itself.
    pub fn for_activations(self) -> ExpMode {
        match self {
            Self::Table => Self::Exact,
            mode => mode,
        }
    }
}

impl fmt::Display for ExpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ExpMode {
    type Err = candle_core::Error;

    fn from_str(s: &str) -> Result<Self> {
        let lower = s.to_ascii_lowercase();
        match Self::ALL.into_iter().find(|m| m.name() == lower) {
            Some(mode) => Ok(mode),
            None => bail!(
                "unknown exp mode {s:?}: expected one of {}",
                Self::ALL.map(|m| format!("\"{m}\"")).join(", ")
            ),
        }
    }
}
