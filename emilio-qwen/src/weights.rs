//! What the weight files hold, read from their headers before anything is mapped, allocated or
//! converted, and the configuration checked against it.
//!
//! A configuration is input: every size in it (layers, hidden and intermediate widths, head
//! counts, vocabulary) decides an allocation, so a wrong one either aborts the process (a
//! `num_hidden_layers` of 10⁹ asks for hundreds of gigabytes) or, worse, runs a different model
//! than the file holds (a config with fewer layers than the weights ran silently). The
//! [`TensorTable`] is the list of tensors the files actually hold, under Hugging Face names:
//! from the safetensors headers (a few kilobytes each) or from a GGUF file's tensor table.
//! [`TensorTable::check_config`] holds every size of the [`Config`] to it, and its errors name
//! the field, its value, the config file, and what the weights say.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{bail, Error, Result};
use serde_json::Value;

use crate::config::Config;

/// The name of the head, which tied checkpoints leave out.
pub const HEAD: &str = "lm_head.weight";
/// The name of the embedding table.
pub const EMBEDDING: &str = "model.embed_tokens.weight";

/// One tensor of the files: its shape, its dtype as the file names it, and the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    /// The dimensions, outermost first (Hugging Face order, also for GGUF files).
    pub shape: Vec<usize>,
    /// `F32`, `BF16`, ... for safetensors; the GGML type (`Q4_0`, `F16`, ...) for GGUF.
    pub dtype: String,
    /// The file that holds it.
    pub file: PathBuf,
}

/// The tensors a checkpoint's weight files hold, by Hugging Face name.
#[derive(Debug, Clone, Default)]
pub struct TensorTable {
    tensors: BTreeMap<String, TensorEntry>,
}

impl TensorTable {
    /// The table of safetensors files, from their headers only. Errors name the file: a header
    /// that is not one, a tensor of an integer or boolean dtype ([`check_float_dtype`]), or a
    /// tensor that two files both hold.
    pub fn from_safetensors(files: &[PathBuf]) -> Result<Self> {
        let mut tensors = BTreeMap::new();
        for file in files {
            for (name, entry) in read_safetensors_header(file)? {
                check_float_dtype(&name, &entry.dtype, file)?;
                if let Some(other) = tensors.insert(name.clone(), entry) {
                    bail!(
                        "tensor {name} is in both {} and {}: a checkpoint holds each tensor once",
                        other.file.display(),
                        file.display()
                    )
                }
            }
        }
        Ok(Self { tensors })
    }

    /// A table from entries already under Hugging Face names (a GGUF file's, `crate::gguf`).
    pub fn from_entries(entries: impl IntoIterator<Item = (String, TensorEntry)>) -> Self {
        Self {
            tensors: entries.into_iter().collect(),
        }
    }

    /// The tensor called `name`, if the files hold it.
    pub fn get(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.get(name)
    }

    /// Whether the files hold `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Every tensor, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &TensorEntry)> {
        self.tensors.iter()
    }

    /// The decoder layers the files hold tensors of (`model.layers.N.`), by index.
    pub fn layers(&self) -> BTreeSet<usize> {
        self.tensors
            .keys()
            .filter_map(|n| n.strip_prefix("model.layers.")?.split_once('.'))
            .filter_map(|(l, _)| l.parse().ok())
            .collect()
    }

    /// A description of where the tensors are, for messages: the one file, or the directory
    /// and the number of files.
    fn describe(&self) -> String {
        let files: BTreeSet<&Path> = self.tensors.values().map(|e| e.file.as_path()).collect();
        match files.iter().next() {
            None => "the weight files".to_string(),
            Some(one) if files.len() == 1 => one.display().to_string(),
            Some(first) => format!(
                "{} ({} files)",
                first.parent().unwrap_or(Path::new(".")).display(),
                files.len()
            ),
        }
    }

    fn file_of(&self, name: &str) -> String {
        self.get(name)
            .map_or_else(|| self.describe(), |e| e.file.display().to_string())
    }

    /// Holds every size of `config` (read from `config_source`) to the tensors: the embedding's
    /// rows and width (`vocab_size`, `hidden_size`), the layer count (`num_hidden_layers`: fewer
    /// than the files hold is as much an error as more), and then every tensor the configuration
    /// implies, present and of its shape (`intermediate_size`, `num_key_value_heads` through the
    /// key/value widths, the biases). Runs before any allocation the sizes decide.
    ///
    /// `num_attention_heads` alone is not visible in the shapes (the query projection is
    /// `hidden × hidden` for any head count): only its ratio to `num_key_value_heads` is.
    ///
    /// `field` spells a [`Config`] field as the source names it (`num_hidden_layers` in a
    /// config.json, `qwen2.block_count` in GGUF metadata).
    pub fn check_config(
        &self,
        config: &Config,
        config_source: &str,
        field: &dyn Fn(&str) -> String,
    ) -> Result<()> {
        let Some(embed) = self.get(EMBEDDING) else {
            bail!(
                "cannot find tensor {EMBEDDING} in {}: not a Qwen2/Llama checkpoint, or the \
                 wrong files for {config_source}",
                self.describe()
            )
        };
        let &[rows, width] = embed.shape.as_slice() else {
            bail!(
                "tensor {EMBEDDING} in {} has shape {:?}, not (vocabulary, hidden)",
                embed.file.display(),
                embed.shape
            )
        };
        let says = |name: &str, value: usize, what: String| {
            Error::msg(format!(
                "{config_source}: {} is {value}, but the weights say {what}: the \
                 configuration belongs to another model (or the weights do)",
                field(name)
            ))
        };
        if config.vocab_size != rows {
            return Err(says(
                "vocab_size",
                config.vocab_size,
                format!(
                    "{rows} ({EMBEDDING} in {} is {:?})",
                    embed.file.display(),
                    embed.shape
                ),
            ));
        }
        if config.hidden_size != width {
            return Err(says(
                "hidden_size",
                config.hidden_size,
                format!(
                    "{width} ({EMBEDDING} in {} is {:?})",
                    embed.file.display(),
                    embed.shape
                ),
            ));
        }
        let layers = self.layers();
        let wanted = config.num_hidden_layers;
        if let Some(&last) = layers.last() {
            if last >= wanted || layers.len() > wanted {
                return Err(says(
                    "num_hidden_layers",
                    wanted,
                    format!(
                        "{} layers ({} holds model.layers.0 to model.layers.{last}); running only \
                         the first {wanted} would be another model",
                        layers.len(),
                        self.describe()
                    ),
                ));
            }
        }
        // The first layer the config wants that the files do not have: at most one past the
        // layers present, so this never counts to a huge `num_hidden_layers`.
        if let Some(missing) = (0..wanted.min(layers.len() + 1)).find(|l| !layers.contains(l)) {
            return Err(says(
                "num_hidden_layers",
                wanted,
                format!(
                    "{} layers: {} has no model.layers.{missing}",
                    layers.len(),
                    self.describe()
                ),
            ));
        }
        for (name, expected) in config.tensor_shapes() {
            match self.get(&name) {
                None => bail!(
                    "cannot find tensor {name} in {}{}",
                    self.describe(),
                    why_expected(&name, config, config_source)
                ),
                Some(entry) if entry.shape != expected => bail!(
                    "tensor {name} in {} has shape {:?}, but {config_source} implies {expected:?} \
                     ({})",
                    entry.file.display(),
                    entry.shape,
                    sizes_behind(&name, config, field)
                ),
                Some(_) => {}
            }
        }
        if let Some(head) = self.get(HEAD) {
            if head.shape != [config.vocab_size, config.hidden_size] {
                bail!(
                    "tensor {HEAD} in {} has shape {:?}, but {config_source} implies {:?} \
                     ({}, {})",
                    self.file_of(HEAD),
                    head.shape,
                    [config.vocab_size, config.hidden_size],
                    field("vocab_size"),
                    field("hidden_size")
                )
            }
        }
        Ok(())
    }
}

/// Why the configuration expects a tensor, when the files lack it.
fn why_expected(name: &str, config: &Config, source: &str) -> String {
    if name.ends_with(".bias") {
        format!(
            ": {source} describes a {} model, whose attention has q/k/v biases",
            config.architecture
        )
    } else if name == HEAD {
        format!(
            ": {source} has tie_word_embeddings = false, so the checkpoint must hold its own head"
        )
    } else {
        String::new()
    }
}

/// The configuration fields a tensor's expected shape comes from, with their values.
fn sizes_behind(name: &str, c: &Config, field: &dyn Fn(&str) -> String) -> String {
    let (h, i, v) = (
        field("hidden_size"),
        field("intermediate_size"),
        field("vocab_size"),
    );
    if name.contains("k_proj") || name.contains("v_proj") {
        format!(
            "{} {} × head_dim {} ({h} {} / {} {})",
            field("num_key_value_heads"),
            c.num_key_value_heads,
            c.head_dim(),
            c.hidden_size,
            field("num_attention_heads"),
            c.num_attention_heads
        )
    } else if name.contains("mlp.") {
        format!("{i} {}, {h} {}", c.intermediate_size, c.hidden_size)
    } else if name == EMBEDDING || name == HEAD {
        format!("{v} {}, {h} {}", c.vocab_size, c.hidden_size)
    } else {
        format!("{h} {}", c.hidden_size)
    }
}

/// Errors, naming the tensor and the file, when `dtype` is not a floating-point type: Candle
/// would convert an integer or boolean tensor to the model's float dtype without a word (a
/// quantized export's packed `U8`/`I32` weights become small integers), and the model would run
/// on numbers that mean nothing.
pub fn check_float_dtype(name: &str, dtype: &str, file: &Path) -> Result<()> {
    if matches!(dtype, "F16" | "BF16" | "F32" | "F64") {
        return Ok(());
    }
    bail!(
        "{}: tensor {name} is {dtype}, not a floating-point type: this is not a plain \
         checkpoint (a quantized export?); use the original float weights, or a GGUF file",
        file.display()
    )
}

/// The largest safetensors header read: the safetensors crate's own cap (a header is never
/// near 100 MB; a real checkpoint's is tens of kilobytes).
const MAX_HEADER: u64 = 100_000_000;

/// The tensors a safetensors file's header lists (names, shapes, dtypes); the body is not read.
/// Errors name the file: too short, a header length past the file, a header that is not a JSON
/// object of tensors with a dtype, a shape and data offsets inside the body matching the shape.
pub fn read_safetensors_header(file: &Path) -> Result<Vec<(String, TensorEntry)>> {
    crate::files::check_regular_file(file)?;
    let fail = |why: String| Error::msg(format!("{}: {why}", file.display()));
    let mut f = std::fs::File::open(file).map_err(|e| fail(format!("cannot read it: {e}")))?;
    let size = f.metadata().map_err(|e| fail(e.to_string()))?.len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| fail("too short for a safetensors file (no header length)".into()))?;
    let len = u64::from_le_bytes(len);
    if len > size.saturating_sub(8) || len > MAX_HEADER {
        return Err(fail(format!(
            "its header claims {len} bytes, the file has {size}: it is not a safetensors file, \
             or is truncated"
        )));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header)
        .map_err(|e| fail(format!("cannot read its header: {e}")))?;
    let header: serde_json::Map<String, Value> = serde_json::from_slice(&header)
        .map_err(|e| fail(format!("its header is not a JSON object: {e}")))?;
    let body = size - 8 - len;
    let mut out = Vec::with_capacity(header.len());
    for (name, info) in header {
        if name == "__metadata__" {
            continue;
        }
        let bad = |what: &str| fail(format!("tensor {name} in its header {what}"));
        let dtype = info
            .get("dtype")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("has no dtype"))?
            .to_string();
        let shape = info
            .get("shape")
            .and_then(Value::as_array)
            .and_then(|dims| {
                dims.iter()
                    .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                    .collect::<Option<Vec<usize>>>()
            })
            .ok_or_else(|| bad("has no shape (a list of sizes)"))?;
        let offsets = info
            .get("data_offsets")
            .and_then(Value::as_array)
            .and_then(|o| match o.as_slice() {
                [a, b] => Some((a.as_u64()?, b.as_u64()?)),
                _ => None,
            })
            .ok_or_else(|| bad("has no data_offsets [begin, end]"))?;
        let Some(bits) = dtype_bits(&dtype) else {
            return Err(bad(&format!(
                "has dtype {dtype:?}, which safetensors does not define"
            )));
        };
        let bytes = shape
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
            .and_then(|n| n.checked_mul(bits))
            .map(|bits| bits.div_ceil(8));
        match bytes {
            Some(bytes) if offsets.0 <= offsets.1 && offsets.1 - offsets.0 == bytes => {}
            _ => {
                return Err(bad(&format!(
                    "has data_offsets {offsets:?}, which do not hold a {dtype} tensor of shape \
                     {shape:?}"
                )))
            }
        }
        if offsets.1 > body {
            return Err(bad(&format!(
                "ends at byte {} of a body of {body}: the file is truncated",
                offsets.1
            )));
        }
        out.push((
            name,
            TensorEntry {
                shape,
                dtype,
                file: file.to_path_buf(),
            },
        ));
    }
    Ok(out)
}

/// Bits of one element of a safetensors dtype, `None` for a name safetensors does not have.
fn dtype_bits(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 8,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "I64" | "U64" | "F64" => 64,
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        _ => return None,
    })
}
