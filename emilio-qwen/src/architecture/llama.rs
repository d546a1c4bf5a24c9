//! Llama 2 / 3.x and its descendants (SmolLM, TinyLlama, ...): no q/k/v biases unless
//! `attention_bias` says so, Llama 3's optional rotary scaling; stock Candle's `llama` is its
//! reference, and llama.cpp's converter permutes its GGUF files' q/k rows.

use candle_core::{bail, Error, Result};
use candle_nn::Activation;
use serde_json::{Map, Value};

use super::spec::{ArchitectureSpec, GgufAttentionBias, GgufLayout, StockFamily};
use crate::config::{Architecture, Config, RopeScaling};

impl Architecture {
    /// Llama 2 / 3.x and its descendants (SmolLM, TinyLlama, ...): no biases, optional Llama 3
    /// rotary scaling.
    // Spelled as the enum variant it was, so code written against the enum reads the same.
    #[allow(non_upper_case_globals)]
    pub const Llama: Architecture = Architecture::named("llama");
}

/// Llama's entry in the registry.
pub(super) static SPEC: ArchitectureSpec = ArchitectureSpec {
    architecture: Architecture::Llama,
    family: "Llama-family",
    model_types: &["llama"],
    class_names: &["LlamaForCausalLM", "LlamaModel"],
    config_from_json,
    gguf: Some(GgufLayout {
        name: "llama",
        // llama.cpp runs Llama with the interleaved rotary (pairs 2i, 2i+1), so its converter
        // permutes the q/k rows of each head to match; the reader undoes it.
        qk_rows_permuted: true,
        // GGUF has no attention_bias key: the file's tensors say.
        attention_bias: GgufAttentionBias::IfPresent,
    }),
    stock: StockFamily::Llama,
};

/// A Llama `config.json`, read field by field (stock's `llama::LlamaConfig` has no
/// `attention_bias` and silently ignores what it does not run):
/// - `num_key_value_heads` defaults to the query heads, `rope_theta` to 10000,
///   `rms_norm_eps` to 1e-6, `tie_word_embeddings` to false, `attention_bias` to false;
/// - `rope_scaling` must be absent, `null`, of type `default`, or of type `llama3` (any other
///   scaling is an error naming it);
/// - a `head_dim` other than `hidden_size / num_attention_heads`, an activation other than
///   SiLU, or `mlp_bias = true` is an error.
///
/// A Llama-shaped entry (the same tensors under other names, other defaults) can call this and
/// change what differs: `Config { architecture: ..., ..config_from_json(obj, source)? }`.
pub(super) fn config_from_json(obj: Map<String, Value>, source: &str) -> Result<Config> {
    let field = |k: &str| obj.get(k).filter(|v| !v.is_null());
    let usize_field = |k: &str| -> Result<Option<usize>> {
        field(k)
            .map(|v| {
                v.as_u64().map(|x| x as usize).ok_or_else(|| {
                    Error::msg(format!("{source}: {k} is {v}, not a non-negative integer"))
                })
            })
            .transpose()
    };
    let required = |k: &str| -> Result<usize> {
        usize_field(k)?.ok_or_else(|| {
            Error::msg(format!(
                "{source} is not a valid Llama config: {k} is missing"
            ))
        })
    };
    let f64_field = |k: &str, default: f64| -> Result<f64> {
        match field(k) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| Error::msg(format!("{source}: {k} is {v}, not a number"))),
        }
    };
    let bool_field = |k: &str| -> Result<bool> {
        match field(k) {
            None => Ok(false),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| Error::msg(format!("{source}: {k} is {v}, not true or false"))),
        }
    };
    let hidden_size = required("hidden_size")?;
    let num_attention_heads = required("num_attention_heads")?;
    let max_position_embeddings = required("max_position_embeddings")?;
    let num_hidden_layers = required("num_hidden_layers")?;
    if let Some(act) = field("hidden_act") {
        if act.as_str() != Some("silu") {
            bail!("{source}: hidden_act {act} is not supported: Llama models here use \"silu\"")
        }
    }
    if let Some(head_dim) = usize_field("head_dim")? {
        if num_attention_heads > 0 && head_dim.checked_mul(num_attention_heads) != Some(hidden_size)
        {
            bail!(
                "{source}: head_dim {head_dim} is not hidden_size {hidden_size} / \
                 num_attention_heads {num_attention_heads}; models with a separate head \
                 dimension are not supported"
            )
        }
    }
    if bool_field("mlp_bias")? {
        bail!("{source}: mlp_bias = true is not supported (no Llama-family model here has MLP biases)")
    }
    let config = Config {
        architecture: Architecture::Llama,
        vocab_size: required("vocab_size")?,
        hidden_size,
        intermediate_size: required("intermediate_size")?,
        num_hidden_layers,
        num_attention_heads,
        num_key_value_heads: usize_field("num_key_value_heads")?.unwrap_or(num_attention_heads),
        max_position_embeddings,
        sliding_window: max_position_embeddings,
        max_window_layers: num_hidden_layers,
        tie_word_embeddings: bool_field("tie_word_embeddings")?,
        rope_theta: f64_field("rope_theta", 10_000.0)?,
        rms_norm_eps: f64_field("rms_norm_eps", 1e-6)?,
        use_sliding_window: false,
        hidden_act: Activation::Silu,
        attention_bias: bool_field("attention_bias")?,
        rope_scaling: rope_scaling(field("rope_scaling"), source)?,
    };
    Ok(config)
}

/// `rope_scaling` of a Llama config: absent, `null` or `default` → none; `llama3` → its four
/// numbers; anything else (linear, dynamic, yarn, longrope, ...) → an error naming it.
fn rope_scaling(value: Option<&Value>, source: &str) -> Result<Option<RopeScaling>> {
    let Some(value) = value else { return Ok(None) };
    let Some(obj) = value.as_object() else {
        bail!("{source}: rope_scaling is {value}, not an object")
    };
    let kind = obj
        .get("rope_type")
        .or_else(|| obj.get("type"))
        .and_then(Value::as_str);
    match kind {
        Some("default") => return Ok(None),
        Some("llama3") => {}
        other => bail!(
            "{source}: rope_scaling of type {} is not supported; Llama models here take none \
             or type \"llama3\"",
            other.map_or("(none given)".to_string(), |k| format!("\"{k}\""))
        ),
    }
    let num = |k: &str| -> Result<f64> {
        obj.get(k).and_then(Value::as_f64).ok_or_else(|| {
            Error::msg(format!(
                "{source}: rope_scaling of type \"llama3\" needs a number {k}"
            ))
        })
    };
    Ok(Some(RopeScaling {
        factor: num("factor")? as f32,
        low_freq_factor: num("low_freq_factor")? as f32,
        high_freq_factor: num("high_freq_factor")? as f32,
        original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
    }))
}
