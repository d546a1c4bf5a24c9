//! What a registry entry holds: [`ArchitectureSpec`], and the small types that name behaviours
//! implemented elsewhere (the stock models and the rotary tables in `crate::reference` and
//! `crate::model`, the GGUF reader in `crate::gguf`), which read the entry instead of matching an
//! architecture's name.
//!
//! Kept apart from the registry (`crate::architecture`) so that an entry's file can name these
//! types without importing the registry that lists it: modules only point down.

use candle_core::Result;
use serde_json::{Map, Value};

use crate::config::{Architecture, Config};

/// One architecture's entry in the registry: everything that differs between architectures.
/// Code that needs one of these facts reads it from the entry (`Architecture::spec`), so a new
/// architecture that reuses existing behaviours is a new entry and nothing else.
#[derive(Debug)]
pub struct ArchitectureSpec {
    /// Its handle, the value [`Config::architecture`] holds.
    pub architecture: Architecture,
    /// How messages name the family (`"Qwen2/Qwen2.5"`, `"Llama-family"`).
    pub family: &'static str,
    /// The `model_type` values of a `config.json` that name it; the first is the handle's name.
    pub model_types: &'static [&'static str],
    /// The `architectures` class names of a `config.json` that name it (`Qwen2ForCausalLM`,
    /// `Qwen2Model`).
    pub class_names: &'static [&'static str],
    /// Reads a `config.json` already found to name this architecture (the whole object) into a
    /// [`Config`]: its fields, the defaults published configs leave out, the variants it
    /// refuses; `source` names the file in errors. The caller checks the shapes afterwards
    /// ([`Config::check`]), the same for every architecture.
    pub config_from_json: fn(Map<String, Value>, &str) -> Result<Config>,
    /// How llama.cpp writes it as GGUF; `None` for an architecture whose GGUF files carry
    /// another one's name (llama.cpp writes Mistral as `llama`), so they are read as that one.
    pub gguf: Option<GgufLayout>,
    /// The stock Candle family that is its reference.
    pub stock: StockFamily,
}

/// An architecture as llama.cpp's converter writes it into a GGUF file: what the reader
/// (`crate::gguf`) must know beyond the tensor names, which are the same for every
/// architecture here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GgufLayout {
    /// Its `general.architecture`, which is also the prefix of its `ARCH.*` metadata keys.
    pub name: &'static str,
    /// Whether the converter permuted the rows of `attn_q`/`attn_k` within each head for
    /// llama.cpp's interleaved rotary embedding (`llama`: yes; `qwen2`: no, llama.cpp runs it
    /// with the half-split "NeoX" rotary). The model uses the half-split rotary, so the reader
    /// inverts the permutation where there is one.
    pub qk_rows_permuted: bool,
    /// Whether the attention has q/k/v biases: GGUF metadata has no `attention_bias` key.
    pub attention_bias: GgufAttentionBias,
}

/// Whether a GGUF file's attention has q/k/v biases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufAttentionBias {
    /// Always (Qwen2): a file without them is an error naming the missing tensor, not a model
    /// silently run without them.
    Always,
    /// When the file holds `blk.0.attn_q.bias` (Llama, whose biases are optional).
    IfPresent,
}

/// The stock Candle family an architecture is compared with. One choice fixes three things that
/// must agree for an A/B against stock to measure the log domain and nothing else:
/// - stock's model on the same weights (`reference::StockModel`: `qwen2` or `llama`);
/// - Candle's quantized model of a GGUF file (`reference::QuantizedModel`: `quantized_qwen2` or
///   `quantized_llama`);
/// - how the fork computes its rotary tables (`model`): as that stock model computes them, bit
///   for bit (Qwen2: the frequencies in f64, the table in the activation dtype; Llama: in f32,
///   with Llama 3's frequency scaling when the configuration has one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StockFamily {
    /// `candle_transformers::models::qwen2` and `quantized_qwen2`.
    Qwen2,
    /// `candle_transformers::models::llama` and `quantized_llama`.
    Llama,
}
