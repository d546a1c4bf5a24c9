//! [`LogLinear`]: a drop-in replacement for `candle_nn::Linear`.

use candle_core::{bail, Device, Result, Tensor};
use candle_nn::{Module, VarBuilder};

use crate::{LogConfig, LogWeight};

/// A linear layer `y = x·wᵀ + b` whose products are computed in the log domain.
///
/// Built like `candle_nn::Linear` (same tensor names, `weight` of shape `(out, in)` and an
/// optional `bias` of shape `(out,)`), it implements [`Module`], so it replaces `Linear` in any
/// Candle model. The weight is converted to a [`LogWeight`] once and the plain weight dropped;
/// the bias stays as loaded and is added after the product, as `Linear` does.
///
/// ```
/// use std::collections::HashMap;
/// use candle_core::{DType, Device, Module, Tensor};
/// use candle_nn::VarBuilder;
/// use emilio_op::{log_linear, ExpMode, LogConfig, WeightFormat};
///
/// // Any model's VarBuilder works; here one over two tensors.
/// let dev = Device::Cpu;
/// let tensors = HashMap::from([
///     ("proj.weight".to_string(), Tensor::randn(0f32, 0.02, (8, 16), &dev)?),
///     ("proj.bias".to_string(), Tensor::zeros(8, DType::F32, &dev)?),
/// ]);
/// let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
/// let proj = log_linear(16, 8, WeightFormat::F16, vb.pp("proj"))?;
/// let x = Tensor::randn(0f32, 1.0, (2, 5, 16), &dev)?;
/// assert_eq!(proj.forward(&x)?.dims(), &[2, 5, 8]);
/// // The same layer with the cheaper `fast` exp (a format alone means exact products).
/// let fast = log_linear(16, 8, LogConfig::new(WeightFormat::F16, ExpMode::Fast), vb.pp("proj"))?;
/// assert_eq!(fast.forward(&x)?.dims(), &[2, 5, 8]);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct LogLinear {
    weight: LogWeight,
    bias: Option<Tensor>,
}

impl LogLinear {
    /// A layer from a converted weight and an optional `(out,)` bias.
    pub fn new(weight: LogWeight, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// Converts a `(out, in)` weight and optional bias; the caller's tensors are not kept.
    pub fn from_weights(
        weight: &Tensor,
        bias: Option<Tensor>,
        config: impl Into<LogConfig>,
    ) -> Result<Self> {
        let weight = LogWeight::from_tensor(weight, config)?;
        if let Some(b) = &bias {
            let out_dim = weight.dims().0;
            if b.dims() != [out_dim] {
                bail!(
                    "a linear bias must have shape ({out_dim},) to match weight {:?}, got {:?}",
                    weight.dims(),
                    b.dims()
                );
            }
        }
        Ok(Self::new(weight, bias))
    }

    /// Converts an existing stock layer, consuming it so its plain weight is freed.
    pub fn from_linear(linear: candle_nn::Linear, config: impl Into<LogConfig>) -> Result<Self> {
        Self::from_weights(linear.weight(), linear.bias().cloned(), config)
    }

    /// The same layer on `device` (see [`LogWeight::to_device`]).
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Self {
            weight: self.weight.to_device(device)?,
            bias: self
                .bias
                .as_ref()
                .map(|b| b.to_device(device))
                .transpose()?,
        })
    }

    /// The log-domain weight.
    pub fn weight(&self) -> &LogWeight {
        &self.weight
    }

    /// The bias, in the dtype it was loaded with.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

impl Module for LogLinear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.weight.forward(x)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// A [`LogLinear`] with bias, loaded like `candle_nn::linear`: tensors `weight` `(out, in)` and
/// `bias` `(out,)` under `vb`.
pub fn log_linear(
    in_dim: usize,
    out_dim: usize,
    config: impl Into<LogConfig>,
    vb: VarBuilder,
) -> Result<LogLinear> {
    log_linear_b(in_dim, out_dim, true, config, vb)
}

/// A [`LogLinear`] without bias, loaded like `candle_nn::linear_no_bias`.
pub fn log_linear_no_bias(
    in_dim: usize,
    out_dim: usize,
    config: impl Into<LogConfig>,
    vb: VarBuilder,
) -> Result<LogLinear> {
    log_linear_b(in_dim, out_dim, false, config, vb)
}

/// A [`LogLinear`] with or without bias, loaded like `candle_nn::linear_b`.
pub fn log_linear_b(
    in_dim: usize,
    out_dim: usize,
    bias: bool,
    config: impl Into<LogConfig>,
    vb: VarBuilder,
) -> Result<LogLinear> {
    // Read and converted on the CPU, then moved: on a GPU the plain weight never is.
    let cpu = vb.clone().set_device(Device::Cpu);
    let weight = LogWeight::from_tensor(&cpu.get((out_dim, in_dim), "weight")?, config)?
        .to_device(vb.device())?;
    let bias = if bias {
        Some(vb.get(out_dim, "bias")?)
    } else {
        None
    };
    Ok(LogLinear::new(weight, bias))
}
