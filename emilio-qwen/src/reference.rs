//! The stock Candle models the log-domain model is compared with.
//!
//! - [`StockModel`]: stock `qwen2` or `llama` on the same weights (dequantized, for a GGUF), in
//!   plain matmuls: the fidelity reference of `ab`, and the speed reference of `bench`.
//! - [`QuantizedModel`]: Candle's own `quantized_qwen2` / `quantized_llama` on a GGUF file,
//!   its weights left quantized: what a Candle user runs a GGUF with today, the other speed
//!   reference. Its matmuls quantize the activations too (to 8 bits), so it is not a fidelity
//!   reference.
//!
//! Both implement [`CausalLM`], so the generation engine drives them as it drives the fork, and
//! both return logits `(batch, 1, vocab)` as the fork does.

use std::fs::File;
use std::path::Path;

use candle_core::quantized::gguf_file::Content;
use candle_core::{bail, Device, Error, Result, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{llama, quantized_llama, quantized_qwen2, qwen2};

use crate::config::{Architecture, Config};
use crate::generation::CausalLM;

/// Stock Candle's model of the configuration's architecture.
pub enum StockModel {
    /// `candle_transformers::models::qwen2`.
    Qwen2(qwen2::ModelForCausalLM),
    /// `candle_transformers::models::llama`, with the cache it keeps outside the model.
    Llama(Box<StockLlama>),
}

/// Stock Llama and its KV cache (stock keeps the cache outside the model).
pub struct StockLlama {
    model: llama::Llama,
    cache: llama::Cache,
    /// The cache as built at load (rotary tables, no keys or values): a reset clones it, so
    /// the tables are computed once and a reset cannot fail.
    empty: llama::Cache,
}

impl StockModel {
    /// Builds stock's model for `cfg` from `vb` (tensors under Hugging Face names).
    ///
    /// Stock's Llama loader panics on a missing tensor; every tensor it will ask for is looked
    /// up first, so a missing one is an error naming it.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        match cfg.architecture {
            Architecture::Qwen2 => Ok(StockModel::Qwen2(qwen2::ModelForCausalLM::new(
                &cfg.to_stock_qwen2(),
                vb,
            )?)),
            Architecture::Llama => {
                if cfg.attention_bias {
                    bail!(
                        "stock Candle's llama has no attention biases: it cannot run this model \
                         (attention_bias = true) as a reference"
                    )
                }
                for (name, _) in cfg.tensor_shapes() {
                    if !vb.contains_tensor(&name) {
                        bail!("cannot find tensor {name}")
                    }
                }
                let config = cfg.to_stock_llama();
                let (dtype, device) = (vb.dtype(), vb.device().clone());
                // Shapes are not checked up front: catch stock's `unwrap` of a shape error.
                let model = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    llama::Llama::load(vb, &config)
                }))
                .map_err(|panic| {
                    let msg = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    Error::msg(format!("stock Candle's llama failed to load: {msg}"))
                })??;
                let empty = llama::Cache::new(true, dtype, &config, &device)?;
                Ok(StockModel::Llama(Box::new(StockLlama {
                    model,
                    cache: empty.clone(),
                    empty,
                })))
            }
        }
    }
}

impl CausalLM for StockModel {
    fn forward(&mut self, input_ids: &Tensor, seqlen_offset: usize) -> Result<Tensor> {
        match self {
            StockModel::Qwen2(m) => m.forward(input_ids, seqlen_offset),
            StockModel::Llama(m) => {
                let logits = m.model.forward(input_ids, seqlen_offset, &mut m.cache)?;
                let (b, vocab) = logits.dims2()?;
                logits.reshape((b, 1, vocab))
            }
        }
    }

    fn clear_kv_cache(&mut self) {
        match self {
            StockModel::Qwen2(m) => m.clear_kv_cache(),
            // Stock's cache has no reset: back to the one built at load.
            StockModel::Llama(m) => m.cache = m.empty.clone(),
        }
    }
}

/// Candle's quantized model of a GGUF file's architecture.
pub enum QuantizedModel {
    /// `candle_transformers::models::quantized_qwen2`.
    Qwen2(quantized_qwen2::ModelWeights),
    /// `candle_transformers::models::quantized_llama`.
    Llama(quantized_llama::ModelWeights),
}

impl QuantizedModel {
    /// The most positions Candle's quantized Llama has rotary tables for.
    pub const LLAMA_MAX_POSITIONS: usize = quantized_llama::MAX_SEQ_LEN;

    /// Loads `path` (a `qwen2` or `llama` GGUF) with Candle's quantized model on `device`.
    pub fn load(path: &Path, architecture: Architecture, device: &Device) -> Result<Self> {
        let mut file = File::open(path)
            .map_err(|e| Error::msg(format!("cannot read {}: {e}", path.display())))?;
        let content = Content::read(&mut file).map_err(|e| {
            Error::msg(format!(
                "{} is not a readable GGUF file: {e}",
                path.display()
            ))
        })?;
        let context = |e: Error| {
            e.context(format!(
                "Candle's quantized {architecture} on {}",
                path.display()
            ))
        };
        Ok(match architecture {
            Architecture::Qwen2 => QuantizedModel::Qwen2(
                quantized_qwen2::ModelWeights::from_gguf(content, &mut file, device)
                    .map_err(context)?,
            ),
            Architecture::Llama => QuantizedModel::Llama(
                quantized_llama::ModelWeights::from_gguf(content, &mut file, device)
                    .map_err(context)?,
            ),
        })
    }

    /// The longest context it runs: its own rotary tables' length for Llama (4096), the file's
    /// for Qwen2.
    pub fn max_positions(&self, config: &Config) -> usize {
        match self {
            QuantizedModel::Qwen2(_) => config.max_position_embeddings,
            QuantizedModel::Llama(_) => config
                .max_position_embeddings
                .min(Self::LLAMA_MAX_POSITIONS),
        }
    }
}

impl CausalLM for QuantizedModel {
    fn forward(&mut self, input_ids: &Tensor, seqlen_offset: usize) -> Result<Tensor> {
        let logits = match self {
            QuantizedModel::Qwen2(m) => m.forward(input_ids, seqlen_offset)?,
            QuantizedModel::Llama(m) => m.forward(input_ids, seqlen_offset)?,
        };
        let (b, vocab) = logits.dims2()?;
        logits.reshape((b, 1, vocab))
    }

    fn clear_kv_cache(&mut self) {
        match self {
            QuantizedModel::Qwen2(m) => m.clear_kv_cache(),
            QuantizedModel::Llama(m) => m.clear_kv_cache(),
        }
    }
}
