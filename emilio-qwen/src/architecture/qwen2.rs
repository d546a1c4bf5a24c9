//! Qwen2 / Qwen2.5: q/k/v biases always, an optional sliding window; stock Candle's `qwen2` is
//! its reference, and llama.cpp writes its GGUF files without permuting the q/k rows.

use candle_core::{Error, Result};
use candle_transformers::models::qwen2;
use serde_json::{Map, Value};

use super::spec::{ArchitectureSpec, GgufAttentionBias, GgufLayout, StockFamily};
use crate::config::{Architecture, Config};

impl Architecture {
    /// Qwen2 / Qwen2.5: biases on q/k/v, an optional sliding window.
    // Spelled as the enum variant it was, so code written against the enum reads the same.
    #[allow(non_upper_case_globals)]
    pub const Qwen2: Architecture = Architecture::named("qwen2");
}

/// Qwen2's entry in the registry.
pub(super) static SPEC: ArchitectureSpec = ArchitectureSpec {
    architecture: Architecture::Qwen2,
    family: "Qwen2/Qwen2.5",
    model_types: &["qwen2"],
    class_names: &["Qwen2ForCausalLM", "Qwen2Model"],
    config_from_json,
    gguf: Some(GgufLayout {
        name: "qwen2",
        // llama.cpp runs Qwen2 with the half-split ("NeoX") rotary, as Hugging Face does, so
        // its converter leaves the rows as they are.
        qk_rows_permuted: false,
        attention_bias: GgufAttentionBias::Always,
    }),
    stock: StockFamily::Qwen2,
};

/// A Qwen2 `config.json`, read through stock's `qwen2::Config` (so a config stock reads, this
/// reads the same). Fields stock requires but that some published configs leave out or set to
/// `null` get the value that means "no sliding window", which is what those configs mean:
/// `sliding_window` → `max_position_embeddings`, `use_sliding_window` → `false`,
/// `max_window_layers` → `num_hidden_layers`, `hidden_act` → `"silu"`.
fn config_from_json(mut obj: Map<String, Value>, source: &str) -> Result<Config> {
    let get = |obj: &Map<String, Value>, k: &str| obj.get(k).cloned();
    let fill = |obj: &mut Map<String, Value>, k: &str, v: Option<Value>| {
        if obj.get(k).is_none_or(Value::is_null) {
            if let Some(v) = v {
                obj.insert(k.to_string(), v);
            }
        }
    };
    let max_pos = get(&obj, "max_position_embeddings");
    let layers = get(&obj, "num_hidden_layers");
    fill(&mut obj, "sliding_window", max_pos);
    fill(&mut obj, "use_sliding_window", Some(Value::Bool(false)));
    fill(&mut obj, "max_window_layers", layers);
    fill(&mut obj, "hidden_act", Some(Value::String("silu".into())));
    let stock: qwen2::Config = serde_json::from_value(Value::Object(obj))
        .map_err(|e| Error::msg(format!("{source} is not a valid Qwen2 config: {e}")))?;
    Ok(stock.into())
}

/// Stock's Qwen2 configuration as this crate's: a Qwen2 model, so q/k/v have biases and there
/// is no rotary scaling.
impl From<qwen2::Config> for Config {
    fn from(c: qwen2::Config) -> Self {
        Self {
            architecture: Architecture::Qwen2,
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_hidden_layers: c.num_hidden_layers,
            num_attention_heads: c.num_attention_heads,
            num_key_value_heads: c.num_key_value_heads,
            max_position_embeddings: c.max_position_embeddings,
            sliding_window: c.sliding_window,
            max_window_layers: c.max_window_layers,
            tie_word_embeddings: c.tie_word_embeddings,
            rope_theta: c.rope_theta,
            rms_norm_eps: c.rms_norm_eps,
            use_sliding_window: c.use_sliding_window,
            hidden_act: c.hidden_act,
            attention_bias: true,
            rope_scaling: None,
        }
    }
}
