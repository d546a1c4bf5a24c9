//! Qwen2 and Llama in which every linear layer and both attention products run through
//! [`emilio_op`]'s log-domain matmul.
//!
//! - [`ModelForCausalLM`] / [`Model`]: a fork of `candle_transformers::models::qwen2` with the
//!   same structure, tensor names, constructors and `forward` signatures. q/k/v/o, gate/up/down
//!   and `lm_head` are [`emilio_op::LogLinear`]; `Q·Kᵀ` and `softmax·V` are
//!   [`emilio_op::log_matmul`]. Rotary embedding, RMSNorm, the causal mask, the KV cache and
//!   tied embeddings are stock's, so an A/B against stock measures the log domain alone. What
//!   differs is arrangement, each bit for bit stock's results: q/k/v (and gate/up) run as one
//!   stacked layer, and grouped-query attention stacks the query heads that share a KV head as
//!   rows against that one head instead of copying it per query head as stock's `repeat_kv`
//!   does. Llama is the same model without the q/k/v biases (and with Llama 3's rotary
//!   scaling). [`Options`] picks the [`WeightFormat`].
//! - [`Config`] (module [`config`]): stock `qwen2::Config`'s fields plus the [`Architecture`],
//!   read from a Qwen2 or Llama `config.json` or from GGUF metadata.
//! - [`mod@architecture`]: the registry of architectures: one entry per architecture (Qwen2,
//!   Llama) with everything that differs between them (names, `config.json` reader, GGUF
//!   layout, stock reference), and the one place a name is looked up.
//! - [`loading`]: a checkpoint directory (`model.safetensors` or a sharded index, memory-mapped)
//!   or a GGUF file ([`gguf`], dequantized tensor by tensor), converted layer by layer, with
//!   clear errors; also builds stock's model for A/B runs ([`mod@reference`]). [`files`] refuses a
//!   path that is not a regular file (a FIFO would block the read) before it is opened.
//! - [`synthetic`]: seeded offline checkpoints (config, weights, tokenizer) at preset sizes.
//! - [`chat`]: a model's own chat template (Hugging Face's Jinja, from `tokenizer_config.json`
//!   or GGUF metadata), rendered as transformers renders it.
//! - [`generation`]: the generation engine every command runs (prefill, decode steps, stop
//!   tokens, sampling, timings), over this model or stock's.
//! - [`tokenizer`]: a Hugging Face tokenizer rebuilt from a GGUF file's `tokenizer.ggml.*`
//!   metadata (byte-level BPE, llama.cpp's pre-tokenizer names), so a GGUF model needs no
//!   `tokenizer.json`; and the inverse, the metadata of a tokenizer, which the synthetic GGUF
//!   writer uses.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use emilio_qwen::synthetic::{write_checkpoint, Preset, SyntheticSpec};
//! use emilio_qwen::{loading, Options, WeightFormat};
//!
//! let dir = std::env::temp_dir().join(format!("emilio-qwen-lib-doc-{}", std::process::id()));
//! write_checkpoint(&dir, &SyntheticSpec::new(Preset::Tiny).with_seed(1))?;
//! let opts = Options::new(WeightFormat::F32);
//! let (cfg, mut model) = loading::load(&dir, DType::F32, &Device::Cpu, &opts)?;
//! let logits = model.forward(&Tensor::new(&[[3u32, 1, 4, 1, 5]], &Device::Cpu)?, 0)?;
//! assert_eq!(logits.dims(), &[1, 1, cfg.vocab_size]);
//! std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), candle_core::Error>(())
//! ```

#![warn(missing_docs)]

pub mod architecture;
pub mod chat;
pub mod compare;
pub mod config;
pub mod eval;
pub mod files;
pub mod generation;
pub mod gguf;
pub mod loading;
mod model;
pub mod reference;
pub mod synthetic;
// Where tests find real model files (one environment variable each); for tests, not the API.
#[doc(hidden)]
pub mod test_models;
pub mod tokenizer;
pub mod weights;

pub use config::{Architecture, Config};
pub use emilio_op::WeightFormat;
pub use model::{Model, ModelForCausalLM, Options};
