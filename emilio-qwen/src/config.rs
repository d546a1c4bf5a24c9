//! The model's configuration: one type for every architecture the fork runs.
//!
//! Llama is Qwen2 without the q/k/v biases (and with Llama 3's optional rotary frequency
//! scaling), so one [`Config`] describes both and one model serves both. It has stock
//! `qwen2::Config`'s fields, so code written against stock reads the same, plus the
//! [`Architecture`], whether attention has biases, and the [`RopeScaling`]. It converts to
//! each stock configuration ([`Config::to_stock_qwen2`], [`Config::to_stock_llama`]) for the
//! A/B reference, and from stock's qwen2 one.
//!
//! It is read from a Hugging Face `config.json` (`crate::architecture::read_config`, which
//! looks the architecture up in the registry and calls its entry's reader) or from GGUF
//! metadata (`crate::gguf`); both check the shapes the same way ([`Config::check`]).
//!
//! This module knows no architecture by name: what differs between them lives in their entries
//! of the registry (`crate::architecture`), which sits above this module because an entry's
//! reader builds a [`Config`]. That is why [`Architecture`] is a handle (a registered name)
//! rather than an enum here: an enum would make this file change with every architecture.

use std::fmt;
use std::path::Path;

use candle_core::{bail, Error, Result};
use candle_nn::Activation;
use candle_transformers::models::{llama, qwen2};
use serde_json::Value;

/// Which architecture a model is: a handle to its entry in the registry
/// (`crate::architecture`), which holds everything that differs between architectures (its
/// names, its `config.json` reader, its GGUF layout, its stock reference).
///
/// Each entry declares its handle as an associated constant ([`Architecture::Qwen2`],
/// [`Architecture::Llama`]); `Architecture::spec` (in `crate::architecture`) gives the entry.
/// Handles compare, hash and print by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Architecture(&'static str);

impl Architecture {
    /// The handle of the registry entry named `name`: for the registry's entries only, which
    /// is why it is not public (a handle with no entry would have no reader, no layout).
    pub(crate) const fn named(name: &'static str) -> Self {
        Self(name)
    }

    /// The entry's name: the `model_type` its `config.json` gives (for Qwen2 and Llama also
    /// GGUF's `general.architecture`).
    pub fn name(self) -> &'static str {
        self.0
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Llama 3.x's rotary frequency scaling (`rope_scaling` with `rope_type: "llama3"`): low
/// frequencies divided by `factor`, high ones kept, a smooth blend between.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeScaling {
    /// How much the low frequencies are slowed.
    pub factor: f32,
    /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are scaled.
    pub low_freq_factor: f32,
    /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are kept.
    pub high_freq_factor: f32,
    /// The context the model was first trained at.
    pub original_max_position_embeddings: usize,
}

/// What the model is: stock `qwen2::Config`'s fields plus the architecture, the attention
/// biases and the rotary scaling.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Which registered architecture (Qwen2, Llama): its entry says what differs.
    pub architecture: Architecture,
    /// Rows of the embedding table (and of the head).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than the query heads).
    pub num_key_value_heads: usize,
    /// The longest context: the rotary tables' length.
    pub max_position_embeddings: usize,
    /// Qwen2's attention window (`max_position_embeddings` when there is none).
    pub sliding_window: usize,
    /// Qwen2's `max_window_layers` (kept for stock's configuration).
    pub max_window_layers: usize,
    /// The head is the embedding table when true.
    pub tie_word_embeddings: bool,
    /// Base of the rotary frequencies.
    pub rope_theta: f64,
    /// RMSNorm's epsilon.
    pub rms_norm_eps: f64,
    /// Qwen2's `use_sliding_window` (kept for stock's configuration).
    pub use_sliding_window: bool,
    /// The MLP's activation (SiLU for both families).
    pub hidden_act: Activation,
    /// Whether q/k/v have biases (Qwen2: always; Llama: when `attention_bias` says so).
    pub attention_bias: bool,
    /// Llama 3.x rotary scaling, if any.
    pub rope_scaling: Option<RopeScaling>,
}

/// The longest context a model is run with, whatever its configuration claims: 2²⁰ positions
/// (the longest published Qwen2/Llama contexts, Qwen2.5-1M's 1 010 000, fit). Stock Candle
/// computes its rotary tables for the whole context when it builds a model (about 0.8 GB at
/// this length and a head dimension of 128), and a configuration is input: a
/// `max_position_embeddings` of 2⁶³ would make those tables, and the KV cache that the limit
/// bounds, grow without end.
pub const MAX_CONTEXT: usize = 1 << 20;

impl Config {
    /// Caps `max_position_embeddings` at [`MAX_CONTEXT`] (returning a note that names the field
    /// as `source` spells it, `field`, its value and `source`, when it did), and `sliding_window` at the context: a window at
    /// least as long as the context masks nothing, so the capped one masks the same positions,
    /// and the mask's `j + window` cannot overflow.
    pub fn cap_context(&mut self, source: &str, field: &str) -> Option<String> {
        let claimed = self.max_position_embeddings;
        let note = (claimed > MAX_CONTEXT).then(|| {
            self.max_position_embeddings = MAX_CONTEXT;
            format!(
                "{source}: {field} is {claimed}, more than any supported model \
                 runs: the context is capped at {MAX_CONTEXT} positions (a longer generation is \
                 an error)"
            )
        });
        self.sliding_window = self.sliding_window.min(self.max_position_embeddings);
        note
    }

    /// The size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Stock Candle's Qwen2 configuration (for the stock reference of a Qwen2 model).
    pub fn to_stock_qwen2(&self) -> qwen2::Config {
        qwen2::Config {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads,
            max_position_embeddings: self.max_position_embeddings,
            sliding_window: self.sliding_window,
            max_window_layers: self.max_window_layers,
            tie_word_embeddings: self.tie_word_embeddings,
            rope_theta: self.rope_theta,
            rms_norm_eps: self.rms_norm_eps,
            use_sliding_window: self.use_sliding_window,
            hidden_act: self.hidden_act,
        }
    }

    /// Stock Candle's Llama configuration (for the stock reference of a Llama model).
    pub fn to_stock_llama(&self) -> llama::Config {
        llama::Config {
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            vocab_size: self.vocab_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads,
            use_flash_attn: false,
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: self.rope_theta as f32,
            bos_token_id: None,
            eos_token_id: None,
            rope_scaling: self.rope_scaling.map(|s| llama::Llama3RopeConfig {
                factor: s.factor,
                low_freq_factor: s.low_freq_factor,
                high_freq_factor: s.high_freq_factor,
                original_max_position_embeddings: s.original_max_position_embeddings,
                rope_type: llama::Llama3RopeType::Llama3,
            }),
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings,
        }
    }

    /// The names and shapes of the model's tensors under their Hugging Face names, in the order
    /// checkpoints store them: the biases only with `attention_bias`, `lm_head.weight` only
    /// when the embeddings are untied.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let kv = self.num_key_value_heads * self.head_dim();
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            vec![self.vocab_size, h],
        )];
        for l in 0..self.num_hidden_layers {
            let p = format!("model.layers.{l}");
            for (proj, rows) in [("q_proj", h), ("k_proj", kv), ("v_proj", kv)] {
                out.push((format!("{p}.self_attn.{proj}.weight"), vec![rows, h]));
                if self.attention_bias {
                    out.push((format!("{p}.self_attn.{proj}.bias"), vec![rows]));
                }
            }
            out.extend([
                (format!("{p}.self_attn.o_proj.weight"), vec![h, h]),
                (format!("{p}.mlp.gate_proj.weight"), vec![i, h]),
                (format!("{p}.mlp.up_proj.weight"), vec![i, h]),
                (format!("{p}.mlp.down_proj.weight"), vec![h, i]),
                (format!("{p}.input_layernorm.weight"), vec![h]),
                (format!("{p}.post_attention_layernorm.weight"), vec![h]),
            ]);
        }
        out.push(("model.norm.weight".to_string(), vec![h]));
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), vec![self.vocab_size, h]));
        }
        out
    }

    /// Checks what the model relies on: positive sizes, a hidden size that is the query heads
    /// times an even head dimension, query heads a multiple of the key/value heads. `source`
    /// names the file in the error.
    pub fn check(&self, source: &str) -> Result<()> {
        let (h, q, kv) = (
            self.hidden_size,
            self.num_attention_heads,
            self.num_key_value_heads,
        );
        if h == 0
            || q == 0
            || kv == 0
            || self.vocab_size == 0
            || self.max_position_embeddings == 0
            || self.num_hidden_layers == 0
            || self.intermediate_size == 0
        {
            bail!(
                "{source}: hidden_size, intermediate_size, vocab_size, num_hidden_layers, \
                 max_position_embeddings and the head counts must be positive"
            )
        }
        if h % q != 0 || (h / q) % 2 != 0 {
            bail!("{source}: hidden_size {h} is not num_attention_heads {q} times an even head dimension")
        }
        if q % kv != 0 {
            bail!("{source}: num_attention_heads {q} is not a multiple of num_key_value_heads {kv}")
        }
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            bail!(
                "{source}: rope_theta {} is not a positive number",
                self.rope_theta
            )
        }
        if !(self.rms_norm_eps >= 0.0 && self.rms_norm_eps.is_finite()) {
            bail!(
                "{source}: rms_norm_eps {} is not a non-negative number",
                self.rms_norm_eps
            )
        }
        if let Some(s) = &self.rope_scaling {
            if !(s.factor > 0.0
                && s.low_freq_factor > 0.0
                && s.high_freq_factor > s.low_freq_factor)
                || s.original_max_position_embeddings == 0
            {
                bail!(
                    "{source}: rope_scaling {s:?} is not a valid llama3 scaling (factor and \
                     low_freq_factor > 0, high_freq_factor > low_freq_factor, \
                     original_max_position_embeddings > 0)"
                )
            }
        }
        Ok(())
    }
}

/// Reads `path` as JSON (a `config.json`, a `generation_config.json`), refusing a path that is
/// not a regular file first; errors name the file.
pub(crate) fn read_json(path: &Path) -> Result<Value> {
    crate::files::check_regular_file(path)?;
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::msg(if e.kind() == std::io::ErrorKind::NotFound {
            format!("{} not found", path.display())
        } else {
            format!("cannot read {}: {e}", path.display())
        })
    })?;
    serde_json::from_str(&text)
        .map_err(|e| Error::msg(format!("{} is not valid JSON: {e}", path.display())))
}
