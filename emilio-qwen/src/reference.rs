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
//!
//! Which stock model runs an architecture is its registry entry's [`StockFamily`]
//! (`crate::architecture`), not its name: a new architecture of an existing family needs nothing
//! here.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::Mutex;

use candle_core::quantized::gguf_file::{self, Content};
use candle_core::{bail, DType, Device, Error, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{linear_no_bias, Init, Linear, VarBuilder};
use candle_transformers::models::{llama, quantized_llama, quantized_qwen2, qwen2};

use crate::architecture::StockFamily;
use crate::config::{Architecture, Config, MAX_CONTEXT};
use crate::generation::{forward_from_by_steps, CausalLM};
use crate::model::check_first;

/// Stock Candle's model of the configuration's architecture (of its [`StockFamily`]).
pub enum StockModel {
    /// `candle_transformers::models::qwen2`.
    Qwen2(StockQwen2),
    /// `candle_transformers::models::llama`, with the cache it keeps outside the model.
    Llama(Box<StockLlama>),
}

/// Stock Qwen2: `qwen2::ModelForCausalLM` rebuilt from its public parts (stock's `Model` and a
/// `candle_nn::Linear` head, made as stock makes them), because stock keeps them private and
/// its `forward` returns only the last position, while a corpus evaluation needs every
/// position's logits from one pass.
pub struct StockQwen2 {
    model: qwen2::Model,
    lm_head: Linear,
}

impl StockQwen2 {
    /// As `qwen2::ModelForCausalLM::new`: `lm_head.weight` when `vb` has it, else the head
    /// tied to the embedding table, sharing its storage (the builder below hands the model
    /// and the head the same tensor, as stock's `embeddings().clone()` does).
    pub fn new(cfg: &qwen2::Config, vb: VarBuilder) -> Result<Self> {
        let vb = VarBuilder::from_backend(
            Box::new(Remembering {
                inner: vb.clone(),
                seen: Mutex::new(HashMap::new()),
            }),
            vb.dtype(),
            vb.device().clone(),
        );
        let model = qwen2::Model::new(cfg, vb.clone())?;
        let lm_head = if vb.contains_tensor("lm_head.weight") {
            linear_no_bias(cfg.hidden_size, cfg.vocab_size, vb.pp("lm_head"))?
        } else {
            let embeddings = vb.get(
                (cfg.vocab_size, cfg.hidden_size),
                "model.embed_tokens.weight",
            )?;
            Linear::new(embeddings, None)
        };
        Ok(Self { model, lm_head })
    }

    /// Logits `(batch, seq − first, vocab)` of positions `first..seq` (stock's forward is the
    /// case `first = seq − 1`).
    fn forward_from(
        &mut self,
        input_ids: &Tensor,
        seqlen_offset: usize,
        first: usize,
    ) -> Result<Tensor> {
        let (_, seq) = input_ids.dims2()?;
        check_first(first, seq)?;
        self.model
            .forward(input_ids, seqlen_offset, None)?
            .narrow(1, first, seq - first)?
            .apply(&self.lm_head)
    }
}

/// A `VarBuilder` backend that hands out one tensor per name: a second request returns the
/// first one's storage, so a tied head shares the embedding table instead of copying it.
struct Remembering<'a> {
    inner: VarBuilder<'a>,
    seen: Mutex<HashMap<String, Tensor>>,
}

impl SimpleBackend for Remembering<'_> {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut seen = self
            .seen
            .lock()
            .map_err(|_| Error::msg("a weight load panicked"))?;
        if let Some(t) = seen.get(name) {
            if t.shape() == &s && t.dtype() == dtype && t.device().same_device(dev) {
                return Ok(t.clone());
            }
        }
        let t = self
            .inner
            .get_with_hints_dtype(s, name, h, dtype)?
            .to_device(dev)?;
        seen.insert(name.to_string(), t.clone());
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        self.inner.get_unchecked_dtype(name, dtype)?.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.contains_tensor(name)
    }
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
        match cfg.architecture.spec().stock {
            StockFamily::Qwen2 => Ok(StockModel::Qwen2(StockQwen2::new(
                &cfg.to_stock_qwen2(),
                vb,
            )?)),
            StockFamily::Llama => {
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
            StockModel::Qwen2(m) => {
                let (_, seq) = input_ids.dims2()?;
                m.forward_from(input_ids, seqlen_offset, seq.saturating_sub(1))
            }
            StockModel::Llama(m) => {
                let logits = m.model.forward(input_ids, seqlen_offset, &mut m.cache)?;
                let (b, vocab) = logits.dims2()?;
                logits.reshape((b, 1, vocab))
            }
        }
    }

    /// Qwen2 in one pass; Llama by the trait's default (stock's Llama gives only the last
    /// position's logits, and its blocks are private).
    fn forward_from(
        &mut self,
        input_ids: &Tensor,
        seqlen_offset: usize,
        first: usize,
    ) -> Result<Tensor> {
        match self {
            StockModel::Qwen2(m) => m.forward_from(input_ids, seqlen_offset, first),
            StockModel::Llama(_) => forward_from_by_steps(self, input_ids, seqlen_offset, first),
        }
    }

    fn clear_kv_cache(&mut self) {
        match self {
            StockModel::Qwen2(m) => m.model.clear_kv_cache(),
            // Stock's cache has no reset: back to the one built at load.
            StockModel::Llama(m) => m.cache = m.empty.clone(),
        }
    }
}

/// Candle's quantized model of a GGUF file's architecture (of its [`StockFamily`]).
pub enum QuantizedModel {
    /// `candle_transformers::models::quantized_qwen2`.
    Qwen2(quantized_qwen2::ModelWeights),
    /// `candle_transformers::models::quantized_llama`.
    Llama(quantized_llama::ModelWeights),
}

impl QuantizedModel {
    /// The most positions Candle's quantized Llama has rotary tables for.
    pub const LLAMA_MAX_POSITIONS: usize = quantized_llama::MAX_SEQ_LEN;

    /// Loads `path` (a GGUF file of `architecture`: `qwen2`, `llama`) with Candle's quantized
    /// model on `device`.
    pub fn load(path: &Path, architecture: Architecture, device: &Device) -> Result<Self> {
        let spec = architecture.spec();
        let Some(layout) = spec.gguf else {
            bail!(
                "{architecture} has no GGUF form of its own (its GGUF files name another \
                 architecture): {} cannot be run as a {architecture} GGUF",
                path.display()
            )
        };
        let mut file = File::open(path)
            .map_err(|e| Error::msg(format!("cannot read {}: {e}", path.display())))?;
        let mut content = Content::read(&mut file).map_err(|e| {
            Error::msg(format!(
                "{} is not a readable GGUF file: {e}",
                path.display()
            ))
        })?;
        // Candle's quantized Qwen2 computes its rotary tables for the file's whole context at
        // load: capped at MAX_CONTEXT, as every model here is (`Config::cap_context`).
        let key = format!("{}.context_length", layout.name);
        if content
            .metadata
            .get(&key)
            .and_then(|v| v.to_u64().ok())
            .is_some_and(|n| n > MAX_CONTEXT as u64)
        {
            content
                .metadata
                .insert(key, gguf_file::Value::U32(MAX_CONTEXT as u32));
        }
        let context = |e: Error| {
            e.context(format!(
                "Candle's quantized {architecture} on {}",
                path.display()
            ))
        };
        Ok(match spec.stock {
            StockFamily::Qwen2 => QuantizedModel::Qwen2(
                quantized_qwen2::ModelWeights::from_gguf(content, &mut file, device)
                    .map_err(context)?,
            ),
            StockFamily::Llama => QuantizedModel::Llama(
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
