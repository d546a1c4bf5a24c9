//! Qwen2 in which every linear layer and both attention products run through
//! [`emilio_op`]'s log-domain matmul.
//!
//! - [`ModelForCausalLM`] / [`Model`]: a fork of `candle_transformers::models::qwen2` with the
//!   same structure, tensor names, constructors and `forward` signatures. q/k/v/o, gate/up/down
//!   and `lm_head` are [`emilio_op::LogLinear`]; `Q·Kᵀ` and `softmax·V` are
//!   [`emilio_op::log_matmul`]. Rotary embedding, RMSNorm, GQA (`repeat_kv`), the causal mask,
//!   the KV cache and tied embeddings are stock's, so an A/B against stock measures the log
//!   domain alone. [`Options`] picks the [`WeightFormat`].
//! - [`Config`] is stock's type, so every Qwen2/Qwen2.5 `config.json` deserialises.
//! - [`loading`]: a checkpoint directory (`model.safetensors` or a sharded index), memory-mapped
//!   and converted layer by layer, with clear errors; also builds stock's model for A/B runs.
//! - [`synthetic`]: seeded offline checkpoints (config, weights, tokenizer) at preset sizes.
//! - [`chat`]: a model's own chat template (Hugging Face's Jinja, from `tokenizer_config.json`
//!   or GGUF metadata), rendered as transformers renders it.
//! - [`generation`]: the generation engine every command runs (prefill, decode steps, stop
//!   tokens, sampling, timings), over this model or stock's.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use emilio_qwen::synthetic::{write_checkpoint, Preset, SyntheticSpec};
//! use emilio_qwen::{loading, Options, WeightFormat};
//!
//! let dir = std::env::temp_dir().join(format!("emilio-qwen-lib-doc-{}", std::process::id()));
//! write_checkpoint(&dir, &SyntheticSpec::new(Preset::Tiny).with_seed(1))?;
//! let opts = Options { weight_format: WeightFormat::F32 };
//! let (cfg, mut model) = loading::load(&dir, DType::F32, &Device::Cpu, &opts)?;
//! let logits = model.forward(&Tensor::new(&[[3u32, 1, 4, 1, 5]], &Device::Cpu)?, 0)?;
//! assert_eq!(logits.dims(), &[1, 1, cfg.vocab_size]);
//! std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), candle_core::Error>(())
//! ```

#![warn(missing_docs)]

pub mod chat;
pub mod compare;
pub mod generation;
pub mod loading;
mod model;
pub mod synthetic;

pub use emilio_op::WeightFormat;
pub use model::{Config, Model, ModelForCausalLM, Options};
