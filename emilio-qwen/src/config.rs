//! The model's configuration: one type for the two architectures the fork runs.
//!
//! Llama is Qwen2 without the q/k/v biases (and with Llama 3's optional rotary frequency
//! scaling), so one [`Config`] describes both and one model serves both. It has stock
//! `qwen2::Config`'s fields, so code written against stock reads the same, plus the
//! [`Architecture`], whether attention has biases, and the [`RopeScaling`]. It converts to
//! each stock configuration ([`Config::to_stock_qwen2`], [`Config::to_stock_llama`]) for the
//! A/B reference, and from stock's qwen2 one.
//!
//! It is read from a Hugging Face `config.json` ([`read_config`]) or from GGUF metadata
//! (`crate::gguf`); both check the shapes the same way ([`Config::check`]).

use std::fmt;
use std::path::Path;

use candle_core::{bail, Error, Result};
use candle_nn::Activation;
use candle_transformers::models::{llama, qwen2};
use serde_json::{Map, Value};

/// The model families the fork runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Architecture {
    /// Qwen2 / Qwen2.5: biases on q/k/v, an optional sliding window.
    Qwen2,
    /// Llama 2 / 3.x and its descendants (SmolLM, TinyLlama, ...): no biases, optional Llama 3
    /// rotary scaling.
    Llama,
}

impl Architecture {
    /// The name GGUF's `general.architecture` and `config.json`'s `model_type` use.
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Qwen2 => "qwen2",
            Architecture::Llama => "llama",
        }
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
    /// Qwen2 or Llama.
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

/// Reads and checks a Hugging Face `config.json` of a Qwen2 or Llama model.
///
/// - The file must exist and parse as JSON (the error names the file).
/// - The architecture comes from `architectures` (`Qwen2ForCausalLM`, `LlamaForCausalLM`) or
///   `model_type` (`qwen2`, `llama`); anything else, or the two disagreeing, is an error naming
///   what was found.
/// - Qwen2: fields stock's config requires but that some published configs leave out or set to
///   `null` get the value that means "no sliding window", which is what those configs mean:
///   `sliding_window` → `max_position_embeddings`, `use_sliding_window` → `false`,
///   `max_window_layers` → `num_hidden_layers`, `hidden_act` → `"silu"`.
/// - Llama: `num_key_value_heads` defaults to the query heads, `rope_theta` to 10000,
///   `tie_word_embeddings` to false, `attention_bias` to false; `rope_scaling` must be absent,
///   `null`, of type `default`, or of type `llama3` (any other scaling is an error naming it); a
///   `head_dim` other than `hidden_size / num_attention_heads`, or an activation other than SiLU,
///   is an error.
/// - The shapes are checked ([`Config::check`]).
pub fn read_config(path: impl AsRef<Path>) -> Result<Config> {
    let path = path.as_ref();
    let value = read_json(path)?;
    let source = path.display().to_string();
    let config = match architecture_of(&value, &source)? {
        Architecture::Qwen2 => qwen2_config(value, &source)?,
        Architecture::Llama => llama_config(value, &source)?,
    };
    config.check(&source)?;
    Ok(config)
}

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

fn architecture_of(value: &Value, source: &str) -> Result<Architecture> {
    let Some(obj) = value.as_object() else {
        bail!("{source} is not a JSON object")
    };
    let model_type = obj.get("model_type").filter(|v| !v.is_null());
    let architectures = obj.get("architectures").filter(|v| !v.is_null());
    let found = || {
        format!(
            "model_type {}, architectures {}",
            model_type.map_or("(absent)".to_string(), Value::to_string),
            architectures.map_or("(absent)".to_string(), Value::to_string)
        )
    };
    let unsupported = || {
        Error::msg(format!(
            "{source} does not describe a supported model ({}): emilio-qwen loads Qwen2/Qwen2.5 \
             (model_type \"qwen2\", architectures [\"Qwen2ForCausalLM\"]) and Llama-family \
             (model_type \"llama\", architectures [\"LlamaForCausalLM\"]) checkpoints",
            found()
        ))
    };
    let by_type = match model_type {
        None => None,
        Some(t) => Some(match t.as_str() {
            Some("qwen2") => Architecture::Qwen2,
            Some("llama") => Architecture::Llama,
            _ => return Err(unsupported()),
        }),
    };
    let by_arch = match architectures {
        None => None,
        Some(a) => {
            let names: Vec<&str> = a
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if names
                .iter()
                .any(|n| matches!(*n, "Qwen2ForCausalLM" | "Qwen2Model"))
            {
                Some(Architecture::Qwen2)
            } else if names
                .iter()
                .any(|n| matches!(*n, "LlamaForCausalLM" | "LlamaModel"))
            {
                Some(Architecture::Llama)
            } else {
                return Err(unsupported());
            }
        }
    };
    match (by_type, by_arch) {
        (Some(t), Some(a)) if t != a => bail!(
            "{source} contradicts itself ({}): model_type and architectures name different \
             families",
            found()
        ),
        (Some(x), _) | (None, Some(x)) => Ok(x),
        (None, None) => bail!(
            "{source} names no model_type or architectures; expected model_type \"qwen2\" or \
             \"llama\""
        ),
    }
}

fn qwen2_config(mut value: Value, source: &str) -> Result<Config> {
    if let Some(obj) = value.as_object_mut() {
        let get = |obj: &Map<String, Value>, k: &str| obj.get(k).cloned();
        let fill = |obj: &mut Map<String, Value>, k: &str, v: Option<Value>| {
            if obj.get(k).is_none_or(Value::is_null) {
                if let Some(v) = v {
                    obj.insert(k.to_string(), v);
                }
            }
        };
        let max_pos = get(obj, "max_position_embeddings");
        let layers = get(obj, "num_hidden_layers");
        fill(obj, "sliding_window", max_pos);
        fill(obj, "use_sliding_window", Some(Value::Bool(false)));
        fill(obj, "max_window_layers", layers);
        fill(obj, "hidden_act", Some(Value::String("silu".into())));
    }
    let stock: qwen2::Config = serde_json::from_value(value)
        .map_err(|e| Error::msg(format!("{source} is not a valid Qwen2 config: {e}")))?;
    Ok(stock.into())
}

fn llama_config(value: Value, source: &str) -> Result<Config> {
    let obj = value.as_object().expect("checked by architecture_of");
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
