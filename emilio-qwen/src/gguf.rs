//! llama.cpp's GGUF files as a checkpoint: the configuration from the metadata, and the tensors
//! through a `VarBuilder` under Hugging Face's names, dequantized one at a time.
//!
//! Every tensor type Candle's GGUF reader knows (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
//! Q8_1, the K-quants) is read. A tensor is read from the file and dequantized to f32 only when
//! the model asks for it; the model converts it to a log-domain weight and drops it, so loading
//! holds the model built so far plus about one tensor in f32 (`docs/architecture.md`).
//!
//! Two conventions of llama.cpp's converter are undone here so the model sees the Hugging Face
//! layout it was written for:
//! - names: `blk.N.attn_q.weight` is `model.layers.N.self_attn.q_proj.weight`, and so on
//!   ([`hf_to_gguf_name`]);
//! - for `llama` files, the rows of `attn_q` and `attn_k` are permuted within each head so that
//!   llama.cpp's interleaved rotary embedding (pairs `2i, 2i+1`) applies; the model uses the
//!   Hugging Face half-split rotary embedding (pairs `i, i + d/2`), so the permutation is
//!   inverted at load ([`unpermute_rows`]). Qwen2 files are written unpermuted (llama.cpp runs
//!   them with the half-split, "NeoX", rotary) and are read as they are.
//!
//! What differs between architectures (the permutation, whether the attention has biases, the
//! `general.architecture` name) is the architecture's [`GgufLayout`] in the registry
//! (`crate::architecture`); nothing here matches an architecture's name.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{bail, DType, Device, Error, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Activation, VarBuilder};

use crate::architecture::{GgufAttentionBias, GgufLayout};
use crate::config::{Architecture, Config};
use crate::weights::{TensorEntry, TensorTable};

mod header;

/// A GGUF file whose header (metadata and tensor table) has been read.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    architecture: Architecture,
    /// How llama.cpp wrote this architecture (its registry entry's layout).
    layout: GgufLayout,
}

impl GgufFile {
    /// Reads the header of `path`; errors name the file and say what is wrong with it (missing,
    /// not a GGUF file, an architecture the registry does not have: `qwen2` and `llama` are).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let mut file = open_file(&path)?;
        let source = path.display().to_string();
        header::prescan(&mut file, &source)?;
        let content = Content::read(&mut file).map_err(|e| {
            Error::msg(format!(
                "{} is not a readable GGUF file ({e}); download it again, or pass a checkpoint \
                 directory",
                path.display()
            ))
        })?;
        let (spec, layout) =
            crate::architecture::from_gguf(content.metadata.get("general.architecture"), &source)?;
        let size = file
            .metadata()
            .map_err(|e| Error::msg(format!("cannot read {source}: {e}")))?
            .len();
        header::check_tensors(&content, size, &source)?;
        Ok(Self {
            path,
            content,
            architecture: spec.architecture,
            layout,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The header as Candle reads it (metadata, tensor table).
    pub fn content(&self) -> &Content {
        &self.content
    }

    /// The metadata (`general.*`, `ARCH.*`, `tokenizer.*`).
    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    /// The architecture `general.architecture` names (`qwen2`, `llama`).
    pub fn architecture(&self) -> Architecture {
        self.architecture
    }

    /// How llama.cpp wrote the file's architecture: its `general.architecture` (the prefix of
    /// the `ARCH.*` keys), the q/k row permutation, the attention biases.
    pub fn layout(&self) -> GgufLayout {
        self.layout
    }

    /// The tensors of the file under Hugging Face names (those [`gguf_to_hf_name`] knows; the
    /// rest, such as `rope_freqs.weight`, are left out), with their GGML types.
    pub fn tensor_table(&self) -> TensorTable {
        TensorTable::from_entries(self.content.tensor_infos.iter().filter_map(|(name, info)| {
            Some((
                gguf_to_hf_name(name)?,
                TensorEntry {
                    shape: info.shape.dims().to_vec(),
                    dtype: format!("{:?}", info.ggml_dtype),
                    file: self.path.clone(),
                },
            ))
        }))
    }

    /// The model's configuration from the `ARCH.*` metadata and the tensor table (the
    /// vocabulary from the embedding's rows when `ARCH.vocab_size` is absent, tied embeddings
    /// when there is no `output.weight`, attention biases when `blk.0.attn_q.bias` exists).
    ///
    /// Rotary embeddings scaled by a frequency-factor tensor (`rope_freqs.weight`, how llama.cpp
    /// stores Llama 3.1's scaling) or by `ARCH.rope.scaling.type` are refused by name.
    pub fn config(&self) -> Result<Config> {
        let arch = self.layout.name;
        let src = self.path.display().to_string();
        let get = |key: &str| self.metadata().get(&format!("{arch}.{key}"));
        let count = |key: &str| -> Result<Option<usize>> {
            get(key)
                .map(|v| {
                    metadata_u64(v).map(|x| x as usize).ok_or_else(|| {
                        Error::msg(format!("{src}: {arch}.{key} is {v:?}, not an integer"))
                    })
                })
                .transpose()
        };
        let required = |key: &str| -> Result<usize> {
            count(key)?.ok_or_else(|| {
                Error::msg(format!(
                    "{src} has no {arch}.{key} in its metadata: the file is incomplete"
                ))
            })
        };
        let float = |key: &str| -> Result<Option<f64>> {
            get(key)
                .map(|v| {
                    metadata_f64(v).ok_or_else(|| {
                        Error::msg(format!("{src}: {arch}.{key} is {v:?}, not a number"))
                    })
                })
                .transpose()
        };
        if let Some(kind) = get("rope.scaling.type") {
            if !matches!(kind, Value::String(k) if k == "none") {
                bail!("{src}: {arch}.rope.scaling.type {kind:?} is not supported")
            }
        }
        if self.content.tensor_infos.contains_key("rope_freqs.weight") {
            bail!(
                "{src} scales its rotary embedding with rope_freqs.weight (llama.cpp's form of \
                 Llama 3.1 rope scaling), which is not supported for GGUF files yet; use the \
                 model's Hugging Face checkpoint (its config.json rope_scaling is supported)"
            )
        }
        let heads = required("attention.head_count")?;
        let hidden = required("embedding_length")?;
        let layers = required("block_count")?;
        let context = required("context_length")?;
        let vocab = match count("vocab_size")? {
            Some(v) => v,
            None => match self.tensor_shape("token_embd.weight")?.dims() {
                [rows, _] => *rows,
                dims => {
                    bail!("{src}: token_embd.weight has shape {dims:?}, not (vocabulary, hidden)")
                }
            },
        };
        let config = Config {
            architecture: self.architecture,
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: required("feed_forward_length")?,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: count("attention.head_count_kv")?.unwrap_or(heads),
            max_position_embeddings: context,
            sliding_window: context,
            max_window_layers: layers,
            tie_word_embeddings: !self.content.tensor_infos.contains_key("output.weight"),
            rope_theta: float("rope.freq_base")?.unwrap_or(10_000.0),
            rms_norm_eps: float("attention.layer_norm_rms_epsilon")?.ok_or_else(|| {
                Error::msg(format!(
                    "{src} has no {arch}.attention.layer_norm_rms_epsilon in its metadata"
                ))
            })?,
            use_sliding_window: false,
            hidden_act: Activation::Silu,
            attention_bias: match self.layout.attention_bias {
                GgufAttentionBias::Always => true,
                GgufAttentionBias::IfPresent => {
                    self.content.tensor_infos.contains_key("blk.0.attn_q.bias")
                }
            },
            rope_scaling: None,
        };
        config.check(&src)?;
        if let Some(dim) = count("rope.dimension_count")? {
            if dim != config.head_dim() {
                bail!(
                    "{src}: {arch}.rope.dimension_count {dim} differs from the head dimension {} \
                     (partial rotary embeddings are not supported)",
                    config.head_dim()
                )
            }
        }
        Ok(config)
    }

    /// The ids generation stops at: `tokenizer.ggml.eos_token_id`, and the end-of-turn id
    /// where the file names one (`crate::tokenizer::GgufSpecialTokens::stop_ids`).
    pub fn stop_token_ids(&self) -> Result<Vec<u32>> {
        let source = self.path.display().to_string();
        Ok(crate::tokenizer::special_tokens(self.metadata(), &source)?.stop_ids())
    }

    /// Bytes of the largest tensor once dequantized to f32: the most that loading holds beyond
    /// the model built so far.
    pub fn largest_tensor_f32_bytes(&self) -> usize {
        self.content
            .tensor_infos
            .values()
            .map(|t| t.shape.elem_count() * 4)
            .max()
            .unwrap_or(0)
    }

    /// Bytes of the linear layers' and the head's weights as stored in the file: what Candle's
    /// quantized model reads per decoded token.
    pub fn linear_weight_bytes(&self) -> usize {
        let head = match self.content.tensor_infos.contains_key("output.weight") {
            true => "output.weight",
            false => "token_embd.weight",
        };
        self.content
            .tensor_infos
            .iter()
            .filter(|(name, _)| {
                *name == head
                    || (name.starts_with("blk.")
                        && name.ends_with(".weight")
                        && (name.contains(".attn_") || name.contains(".ffn_"))
                        && !name.contains("_norm"))
            })
            .map(|(_, t)| {
                t.shape.elem_count() / t.ggml_dtype.block_size() * t.ggml_dtype.type_size()
            })
            .sum()
    }

    fn tensor_shape(&self, name: &str) -> Result<&Shape> {
        match self.content.tensor_infos.get(name) {
            Some(info) => Ok(&info.shape),
            None => bail!("cannot find tensor {name} in {}", self.path.display()),
        }
    }

    /// A `VarBuilder` over the file's tensors under Hugging Face names, producing tensors of
    /// `dtype` on `device`, each read and dequantized when asked for (see the module docs).
    pub fn var_builder(
        self: &Arc<Self>,
        dtype: DType,
        device: &Device,
    ) -> Result<VarBuilder<'static>> {
        let config = self.config()?;
        let backend = GgufBackend {
            file: self.clone(),
            reader: Mutex::new(open_file(&self.path)?),
            heads: config.num_attention_heads,
            kv_heads: config.num_key_value_heads,
        };
        Ok(VarBuilder::from_backend(
            Box::new(backend),
            dtype,
            device.clone(),
        ))
    }
}

fn open_file(path: &Path) -> Result<File> {
    crate::files::check_regular_file(path)?;
    File::open(path).map_err(|e| {
        Error::msg(if e.kind() == std::io::ErrorKind::NotFound {
            format!("{} not found", path.display())
        } else {
            format!("cannot read {}: {e}", path.display())
        })
    })
}

fn metadata_u64(v: &Value) -> Option<u64> {
    match *v {
        Value::U8(x) => Some(x.into()),
        Value::U16(x) => Some(x.into()),
        Value::U32(x) => Some(x.into()),
        Value::U64(x) => Some(x),
        Value::I8(x) => u64::try_from(x).ok(),
        Value::I16(x) => u64::try_from(x).ok(),
        Value::I32(x) => u64::try_from(x).ok(),
        Value::I64(x) => u64::try_from(x).ok(),
        _ => None,
    }
}

fn metadata_f64(v: &Value) -> Option<f64> {
    match *v {
        Value::F32(x) => Some(x.into()),
        Value::F64(x) => Some(x),
        _ => metadata_u64(v).map(|x| x as f64),
    }
}

/// The GGUF name of a Hugging Face Qwen2/Llama tensor name, or `None` for a name with no GGUF
/// counterpart.
///
/// ```
/// use emilio_qwen::gguf::hf_to_gguf_name;
/// assert_eq!(hf_to_gguf_name("model.layers.3.self_attn.q_proj.bias").as_deref(), Some("blk.3.attn_q.bias"));
/// assert_eq!(hf_to_gguf_name("lm_head.weight").as_deref(), Some("output.weight"));
/// assert_eq!(hf_to_gguf_name("model.layers.3.mlp.experts.0.w1.weight"), None);
/// ```
pub fn hf_to_gguf_name(name: &str) -> Option<String> {
    match name {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let (module, param) = rest.rsplit_once('.')?;
    let module = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    matches!(param, "weight" | "bias").then(|| format!("blk.{layer}.{module}.{param}"))
}

/// The GGUF metadata key a [`Config`] field is read from (`num_hidden_layers` →
/// `qwen2.block_count`), for messages; the field itself for one without a key.
pub fn metadata_key(field: &str, arch: &str) -> String {
    let key = match field {
        "num_hidden_layers" => "block_count",
        "hidden_size" => "embedding_length",
        "intermediate_size" => "feed_forward_length",
        "num_attention_heads" => "attention.head_count",
        "num_key_value_heads" => "attention.head_count_kv",
        "max_position_embeddings" => "context_length",
        "vocab_size" => "vocab_size",
        other => return other.to_string(),
    };
    format!("{arch}.{key}")
}

/// The Hugging Face name of a GGUF tensor name: the inverse of [`hf_to_gguf_name`].
///
/// ```
/// use emilio_qwen::gguf::{gguf_to_hf_name, hf_to_gguf_name};
/// for hf in ["model.layers.3.self_attn.q_proj.bias", "lm_head.weight", "model.norm.weight"] {
///     assert_eq!(gguf_to_hf_name(&hf_to_gguf_name(hf).unwrap()).as_deref(), Some(hf));
/// }
/// assert_eq!(gguf_to_hf_name("rope_freqs.weight"), None);
/// ```
pub fn gguf_to_hf_name(name: &str) -> Option<String> {
    match name {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let (module, param) = rest.rsplit_once('.')?;
    let module = match module {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    matches!(param, "weight" | "bias").then(|| format!("model.layers.{layer}.{module}.{param}"))
}

/// Inverts llama.cpp's q/k row permutation for `heads` heads: in the file, the rows of each head
/// are ordered `(j, i)` for `i ∈ {0, 1}`, `j < d/2` (interleaved rotary pairs); the Hugging Face
/// layout orders them `(i, j)`. Works on weights `(heads·d, in)` and biases `(heads·d,)`.
pub fn unpermute_rows(t: &Tensor, heads: usize) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    if heads == 0 || !rows.is_multiple_of(2 * heads) {
        bail!("cannot unpermute {rows} rows into {heads} heads of an even size")
    }
    let half = rows / heads / 2;
    let rest: usize = dims[1..].iter().product();
    t.reshape((heads, half, 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)
}

/// The `VarBuilder` backend: Hugging Face names in, dequantized tensors out.
struct GgufBackend {
    file: Arc<GgufFile>,
    /// One reader: a tensor is a seek and a read, and `VarBuilder` asks for one at a time.
    reader: Mutex<File>,
    heads: usize,
    kv_heads: usize,
}

impl GgufBackend {
    fn read(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        let path = self.file.path.display();
        let Some(gguf) =
            hf_to_gguf_name(name).filter(|n| self.file.content.tensor_infos.contains_key(n))
        else {
            bail!("cannot find tensor {name} in {path}")
        };
        let qtensor = {
            let mut reader = self
                .reader
                .lock()
                .map_err(|_| Error::msg("GGUF reader poisoned"))?;
            self.file
                .content
                .tensor(&mut *reader, &gguf, &Device::Cpu)
                .map_err(|e| Error::msg(format!("reading tensor {gguf} of {path}: {e}")))?
        };
        let mut t = qtensor
            .dequantize(&Device::Cpu)
            .map_err(|e| Error::msg(format!("dequantizing tensor {gguf} of {path}: {e}")))?;
        drop(qtensor);
        if self.file.layout.qk_rows_permuted {
            if gguf.contains(".attn_q.") {
                t = unpermute_rows(&t, self.heads)?;
            } else if gguf.contains(".attn_k.") {
                t = unpermute_rows(&t, self.kv_heads)?;
            }
        }
        t.to_dtype(dtype)?.to_device(dev)
    }
}

impl SimpleBackend for GgufBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        // The shape is checked from the tensor table before anything is read.
        if let Some(info) =
            hf_to_gguf_name(name).and_then(|n| self.file.content.tensor_infos.get(&n))
        {
            if info.shape != s {
                bail!(
                    "tensor {name} in {} has shape {:?}, expected {:?} from the metadata",
                    self.file.path.display(),
                    info.shape.dims(),
                    s.dims()
                )
            }
        }
        self.read(name, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        self.read(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        hf_to_gguf_name(name).is_some_and(|n| self.file.content.tensor_infos.contains_key(&n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llama.cpp's converter, written out: `w.reshape(heads, 2, d/2, in).swapaxes(1, 2)`.
    fn permute_like_llama_cpp(w: &[f32], heads: usize, rows: usize, cols: usize) -> Vec<f32> {
        let half = rows / heads / 2;
        let mut out = vec![0.0; w.len()];
        for h in 0..heads {
            for i in 0..2 {
                for j in 0..half {
                    let hf_row = h * 2 * half + i * half + j;
                    let gguf_row = h * 2 * half + j * 2 + i;
                    out[gguf_row * cols..(gguf_row + 1) * cols]
                        .copy_from_slice(&w[hf_row * cols..(hf_row + 1) * cols]);
                }
            }
        }
        out
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() -> Result<()> {
        for (heads, head_dim, cols) in [(1, 2, 1), (3, 8, 5), (9, 64, 7), (2, 6, 3)] {
            let rows = heads * head_dim;
            let hf: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
            let gguf = permute_like_llama_cpp(&hf, heads, rows, cols);
            let t = Tensor::from_vec(gguf, (rows, cols), &Device::Cpu)?;
            let back = unpermute_rows(&t, heads)?.flatten_all()?.to_vec1::<f32>()?;
            assert_eq!(back, hf, "heads {heads} head_dim {head_dim}");
            // Biases: one column.
            let hf_b: Vec<f32> = (0..rows).map(|x| x as f32).collect();
            let b = Tensor::from_vec(
                permute_like_llama_cpp(&hf_b, heads, rows, 1),
                rows,
                &Device::Cpu,
            )?;
            assert_eq!(unpermute_rows(&b, heads)?.to_vec1::<f32>()?, hf_b);
        }
        assert!(unpermute_rows(&Tensor::zeros((6, 2), DType::F32, &Device::Cpu)?, 4).is_err());
        Ok(())
    }
}
