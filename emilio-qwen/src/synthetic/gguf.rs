//! The synthetic presets as a Qwen2 GGUF file, so that the GGUF path is tested without a
//! network.
//!
//! [`write_gguf`] writes what llama.cpp's converter writes for a Qwen2 model: the same seeded
//! tensors as [`write_checkpoint`](super::write_checkpoint) (one spec, one seed, the same values,
//! rounded to the spec's dtype first) under llama.cpp's tensor names, the linear weights and
//! the embedding in the chosen [`GgufQuant`], norms and biases in `f32`; the `qwen2.*`
//! hyper-parameters Candle's `quantized_qwen2::ModelWeights::from_gguf` reads; and the
//! synthetic tokenizer as
//! `tokenizer.ggml.*` keys, from the one builder [`crate::tokenizer::gguf_metadata`] (so that
//! [`crate::tokenizer::from_gguf`] on the file gives back the synthetic `tokenizer.json`), with
//! ChatML's special ids and chat template.

use std::fmt;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{bail, DType, Error, Result};

use super::{
    qwen2_tensor_shapes, synthetic_tensor, tokenizer, tokenizer_special_id, SyntheticSpec,
    CHAT_TEMPLATE, ENDOFTEXT, IM_END,
};
use crate::config::Config;
use crate::gguf::hf_to_gguf_name;
use crate::tokenizer::{gguf_metadata, GgufSpecialTokens, CHAT_TEMPLATE_KEY};

/// The storage type of a synthetic GGUF's linear weights and embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgufQuant {
    /// Half precision: the spec's values, nearly exact (bf16 values fit f16 but for the smallest).
    F16,
    /// 8-bit blocks of 32 with an f16 scale (8.5 bits per weight).
    Q8_0,
    /// 4-bit blocks of 32 with an f16 scale (4.5 bits per weight).
    Q4_0,
}

impl GgufQuant {
    /// Every quant, widest first.
    pub const ALL: [GgufQuant; 3] = [GgufQuant::F16, GgufQuant::Q8_0, GgufQuant::Q4_0];

    /// The name `FromStr` accepts: `f16`, `q8_0`, `q4_0`.
    pub fn name(self) -> &'static str {
        match self {
            GgufQuant::F16 => "f16",
            GgufQuant::Q8_0 => "q8_0",
            GgufQuant::Q4_0 => "q4_0",
        }
    }

    /// The GGML type of the quantized tensors.
    pub fn ggml_dtype(self) -> GgmlDType {
        match self {
            GgufQuant::F16 => GgmlDType::F16,
            GgufQuant::Q8_0 => GgmlDType::Q8_0,
            GgufQuant::Q4_0 => GgmlDType::Q4_0,
        }
    }

    /// `general.file_type`: llama.cpp's `llama_ftype` (`MOSTLY_F16` 1, `MOSTLY_Q4_0` 2,
    /// `MOSTLY_Q8_0` 7).
    pub fn file_type(self) -> u32 {
        match self {
            GgufQuant::F16 => 1,
            GgufQuant::Q4_0 => 2,
            GgufQuant::Q8_0 => 7,
        }
    }
}

impl fmt::Display for GgufQuant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for GgufQuant {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let lower = s.to_ascii_lowercase();
        match GgufQuant::ALL.iter().find(|q| q.name() == lower) {
            Some(&q) => Ok(q),
            None => bail!(
                "unknown GGUF quant {s:?}: expected one of {}",
                GgufQuant::ALL.map(|q| format!("{:?}", q.name())).join(", ")
            ),
        }
    }
}

/// What [`write_gguf`] wrote.
#[derive(Debug, Clone)]
pub struct SyntheticGguf {
    /// The GGUF file.
    pub path: PathBuf,
    /// The configuration its metadata describes (as `config.json` would).
    pub config: Config,
    /// The storage type of its linear weights and embedding.
    pub quant: GgufQuant,
    /// Every tensor: GGUF name, shape (Candle's order, `[out, in]`) and type, in file order.
    pub tensors: Vec<(String, Vec<usize>, GgmlDType)>,
}

/// The GGML type a Qwen2 tensor is stored as: norms and biases (1-D) in `f32`, as llama.cpp
/// keeps them; matrices (linear weights, embedding, head) in `quant`.
fn stored_type(dims: &[usize], quant: GgufQuant) -> GgmlDType {
    if dims.len() == 1 {
        GgmlDType::F32
    } else {
        quant.ggml_dtype()
    }
}

/// Checks that every tensor stored in `quant` has rows of whole blocks (GGML quantizes each
/// row in blocks of 32 for `q8_0` and `q4_0`), naming the first that has not.
fn check_blocks(preset: &str, shapes: &[(String, Vec<usize>)], quant: GgufQuant) -> Result<()> {
    let block = quant.ggml_dtype().block_size();
    for (name, dims) in shapes {
        let row = *dims.last().unwrap_or(&0);
        if stored_type(dims, quant) != GgmlDType::F32 && !row.is_multiple_of(block) {
            bail!(
                "cannot store preset {preset} as {quant}: the rows of {name} ({dims:?}) hold \
                 {row} values, not a multiple of {quant}'s block of {block}"
            )
        }
    }
    Ok(())
}

/// The synthetic tokenizer's GGUF keys: [`crate::tokenizer::gguf_metadata`] with the `qwen2`
/// pre-tokenizer, ChatML's special ids as a Qwen2 instruct GGUF has them (EOS `<|im_end|>`, the
/// end of an assistant turn; BOS and padding `<|endoftext|>`; no BOS prepended), and the chat
/// template of the synthetic `tokenizer_config.json`.
pub fn tokenizer_gguf_metadata() -> Result<Vec<(String, Value)>> {
    let mut out = gguf_metadata(&tokenizer()?, "qwen2")?;
    let eot = tokenizer_special_id(ENDOFTEXT);
    let special = GgufSpecialTokens {
        bos: Some(eot),
        eos: Some(tokenizer_special_id(IM_END)),
        pad: Some(eot),
        add_bos: false,
        ..Default::default()
    };
    out.extend(special.metadata());
    out.push((
        CHAT_TEMPLATE_KEY.to_string(),
        Value::String(CHAT_TEMPLATE.to_string()),
    ));
    Ok(out)
}

/// Every metadata key of the synthetic GGUF of `spec` in `quant`: `general.*`, the `qwen2.*`
/// hyper-parameters and [`tokenizer_gguf_metadata`].
pub fn gguf_file_metadata(spec: &SyntheticSpec, quant: GgufQuant) -> Result<Vec<(String, Value)>> {
    let cfg = spec.config()?;
    let u32_of = |what: &str, n: usize| {
        u32::try_from(n).map_err(|_| Error::msg(format!("{what} {n} does not fit a GGUF u32")))
    };
    let s = |x: &str| Value::String(x.to_string());
    let mut out = vec![
        ("general.architecture".to_string(), s("qwen2")),
        (
            "general.name".to_string(),
            s(&format!(
                "emilio synthetic {} seed {} ({})",
                spec.preset, spec.seed, quant
            )),
        ),
        (
            "general.file_type".to_string(),
            Value::U32(quant.file_type()),
        ),
        ("general.quantization_version".to_string(), Value::U32(2)),
        (
            "qwen2.block_count".to_string(),
            Value::U32(u32_of("layers", cfg.num_hidden_layers)?),
        ),
        (
            "qwen2.context_length".to_string(),
            Value::U32(u32_of("positions", cfg.max_position_embeddings)?),
        ),
        (
            "qwen2.embedding_length".to_string(),
            Value::U32(u32_of("hidden size", cfg.hidden_size)?),
        ),
        (
            "qwen2.feed_forward_length".to_string(),
            Value::U32(u32_of("intermediate size", cfg.intermediate_size)?),
        ),
        (
            "qwen2.attention.head_count".to_string(),
            Value::U32(u32_of("heads", cfg.num_attention_heads)?),
        ),
        (
            "qwen2.attention.head_count_kv".to_string(),
            Value::U32(u32_of("key-value heads", cfg.num_key_value_heads)?),
        ),
        (
            "qwen2.rope.freq_base".to_string(),
            Value::F32(cfg.rope_theta as f32),
        ),
        (
            "qwen2.attention.layer_norm_rms_epsilon".to_string(),
            Value::F32(cfg.rms_norm_eps as f32),
        ),
        // Where the weights came from, as config.json's `emilio_synthetic` records it.
        ("emilio.synthetic.preset".to_string(), s(spec.preset.name())),
        ("emilio.synthetic.seed".to_string(), Value::U64(spec.seed)),
    ];
    out.extend(tokenizer_gguf_metadata()?);
    Ok(out)
}

/// Writes the synthetic checkpoint of `spec` as one Qwen2 GGUF file at `path` (replaced if it
/// exists; its directory must exist), linear weights and embedding in `quant`.
///
/// The tensors are [`synthetic_tensor`]'s for the spec's seed and dtype, so a GGUF and a
/// [`write_checkpoint`](super::write_checkpoint) of one spec hold the same weights before
/// quantization. The whole quantized model is held in memory until it is written (about 0.5 GB
/// for the 0.5B preset in `q8_0`, 1 GB in `f16`); the file is written beside `path` and renamed
/// into place, so a failure leaves no partial file. The spec's `shards` is ignored (one file).
///
/// Errors, naming the tensor, when a matrix's rows are not a whole number of `quant`'s blocks
/// (32 values for `q8_0` and `q4_0`); naming the path when it cannot be written.
pub fn write_gguf(path: &Path, spec: &SyntheticSpec, quant: GgufQuant) -> Result<SyntheticGguf> {
    let config = spec.config()?;
    let metadata = gguf_file_metadata(spec, quant)?;

    let shapes = qwen2_tensor_shapes(&config);
    check_blocks(spec.preset.name(), &shapes, quant)?;

    // Fail on an unwritable path before the (possibly long) quantization.
    let tmp = temp_path(path);
    let file = std::fs::File::create(&tmp)
        .map_err(|e| Error::msg(format!("cannot create {}: {e}", path.display())))?;
    let result = (|| -> Result<Vec<(String, Vec<usize>, GgmlDType)>> {
        let mut tensors = Vec::with_capacity(shapes.len());
        for (name, dims) in &shapes {
            let gguf_name = hf_to_gguf_name(name)
                .ok_or_else(|| Error::msg(format!("no GGUF name for tensor {name}")))?;
            let t = synthetic_tensor(name, dims, spec.seed, spec.dtype)?.to_dtype(DType::F32)?;
            let q = QTensor::quantize(&t, stored_type(dims, quant))
                .map_err(|e| e.context(format!("quantizing {name} to {quant}")))?;
            tensors.push((gguf_name, q));
        }
        let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, q)| (n.as_str(), q)).collect();
        let mut w = BufWriter::new(file);
        gguf_file::write(&mut w, &md, &ts)?;
        w.flush()?;
        w.into_inner()
            .map_err(|e| Error::msg(e.to_string()))?
            .sync_all()?;
        Ok(tensors
            .iter()
            .map(|(n, q)| (n.clone(), q.shape().dims().to_vec(), q.dtype()))
            .collect::<Vec<_>>())
    })();
    let tensors = match result {
        Ok(t) => t,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.context(format!("writing {}", path.display())));
        }
    };
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::msg(format!("cannot write {}: {e}", path.display()))
    })?;
    Ok(SyntheticGguf {
        path: path.to_path_buf(),
        config,
        quant,
        tensors,
    })
}

/// `dir/.name.tmp` beside `path`.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "synthetic.gguf".into());
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_must_be_whole_blocks() {
        let shapes = vec![
            ("model.norm.weight".to_string(), vec![48]),
            (
                "model.layers.0.mlp.down_proj.weight".to_string(),
                vec![64, 48],
            ),
        ];
        // f16 has no blocks; norms stay f32 whatever their length.
        check_blocks("p", &shapes, GgufQuant::F16).unwrap();
        for q in [GgufQuant::Q8_0, GgufQuant::Q4_0] {
            let e = check_blocks("p", &shapes, q).unwrap_err().to_string();
            for needle in ["model.layers.0.mlp.down_proj.weight", "48", "32", q.name()] {
                assert!(e.contains(needle), "{needle}: {e}");
            }
        }
        // Every preset fits every quant.
        for preset in super::super::Preset::ALL {
            let cfg = SyntheticSpec::new(preset).config().unwrap();
            for q in GgufQuant::ALL {
                check_blocks(preset.name(), &qwen2_tensor_shapes(&cfg), q).unwrap();
            }
        }
    }

    #[test]
    fn quant_names_parse() {
        for q in GgufQuant::ALL {
            assert_eq!(q.name().parse::<GgufQuant>().unwrap(), q);
            assert_eq!(q.name().to_uppercase().parse::<GgufQuant>().unwrap(), q);
        }
        let e = "q2_k".parse::<GgufQuant>().unwrap_err().to_string();
        assert!(
            e.contains("q2_k") && e.contains("q8_0") && e.contains("f16"),
            "{e}"
        );
    }

    #[test]
    fn every_model_tensor_has_a_gguf_name() {
        let cfg = crate::synthetic::SyntheticSpec::new(crate::synthetic::Preset::Tiny)
            .with_tied(false)
            .config()
            .unwrap();
        let mut seen = std::collections::HashSet::new();
        for (name, _) in crate::synthetic::qwen2_tensor_shapes(&cfg) {
            let g = hf_to_gguf_name(&name).unwrap_or_else(|| panic!("{name} has no GGUF name"));
            assert!(seen.insert(g.clone()), "{g} named twice");
        }
        for bad in [
            "model.layers.x.mlp.up_proj.weight",
            "model.layers.0.mlp.up_proj.scale",
            "foo",
        ] {
            assert_eq!(hf_to_gguf_name(bad), None, "{bad}");
        }
    }
}
