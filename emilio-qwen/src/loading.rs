//! Loading Qwen2 and Llama checkpoints as users have them: a directory with `config.json` and
//! either one `model.safetensors` or a sharded `model.safetensors.index.json`, or one GGUF file
//! (`crate::gguf`).
//!
//! Safetensors files are memory-mapped; GGUF tensors are read and dequantized one at a time.
//! Either way each linear layer converts its weight to the log domain as the model is built,
//! layer by layer, dropping the plain tensor right away: the process never holds all plain
//! weights at once, so peak memory stays near the size of the converted model plus one tensor
//! in f32 (plus, for safetensors, the file pages the kernel maps in while reading).
//!
//! ```
//! use candle_core::{DType, Device};
//! use emilio_qwen::loading::Checkpoint;
//! use emilio_qwen::synthetic::{write_checkpoint, Preset, SyntheticSpec};
//! use emilio_qwen::Options;
//!
//! let dir = std::env::temp_dir().join(format!("emilio-qwen-loading-doc-{}", std::process::id()));
//! write_checkpoint(&dir, &SyntheticSpec::new(Preset::Tiny).with_shards(2))?;
//! let ckpt = Checkpoint::from_dir(&dir)?; // finds the index and both shards
//! assert_eq!(ckpt.weight_files.len(), 2);
//! let model = ckpt.load(DType::F32, &Device::Cpu, &Options::default())?;
//! let stock = ckpt.load_stock(DType::F32, &Device::Cpu)?; // for A/B runs
//! # drop((model, stock));
//! std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), candle_core::Error>(())
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{bail, DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use serde_json::Value;

pub use crate::architecture::read_config;
use crate::config::{read_json, Config};
use crate::files::regular_file_exists;
use crate::gguf::GgufFile;
use crate::model::{ModelForCausalLM, Options};
use crate::reference::StockModel;
use crate::weights::{check_float_dtype, read_safetensors_header, TensorTable, HEAD};

/// The configuration file of a checkpoint directory.
pub const CONFIG_FILE: &str = "config.json";
/// The single weight file of an unsharded checkpoint.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The index of a sharded checkpoint (its `weight_map` names the shard of every tensor).
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// The tokenizer file of a checkpoint directory (not needed to build the model).
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The tokenizer's settings, with the chat template.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// Generation defaults, with the end-of-sequence ids.
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";

/// A checkpoint located on disk: its parsed configuration and its weight files.
///
/// Nothing is mapped or converted until [`Checkpoint::load`] (or [`Checkpoint::load_stock`]).
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The configuration (from `config.json`, or a GGUF file's metadata), checked.
    pub config: Config,
    /// Where the configuration was read from (`config.json`, or the GGUF file).
    pub config_path: PathBuf,
    /// The files holding the weights: every safetensors shard, or the one GGUF file.
    pub weight_files: Vec<PathBuf>,
    /// The GGUF file's header, when the weights are a GGUF file.
    pub gguf: Option<Arc<GgufFile>>,
    /// What a user should know about how the files are read (a context capped, a head
    /// ignored): warnings for the command line to print, one sentence each.
    pub notes: Vec<String>,
    /// A tied configuration over weights that hold `lm_head.weight` anyway: the head is hidden.
    ignore_head: bool,
}

impl Checkpoint {
    /// Locates `config.json` and the weights in `dir`: `model.safetensors` if present, else the
    /// shards listed by `model.safetensors.index.json`. The configuration is checked against
    /// the weights' headers ([`TensorTable::check_config`]) before anything is loaded.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            bail!("checkpoint directory {} does not exist", dir.display())
        }
        let config_path = dir.join(CONFIG_FILE);
        let config = read_config(&config_path)?;
        let weight_files = find_weight_files(dir)?;
        let table = TensorTable::from_safetensors(&weight_files)?;
        Self::checked(config, config_path, weight_files, None, &table)
    }

    /// A GGUF file: the configuration from its metadata, the weights from its tensors, checked
    /// against each other as a directory's are.
    pub fn from_gguf(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = GgufFile::open(path)?;
        let config = file.config()?;
        let table = file.tensor_table();
        Self::checked(
            config,
            path.to_path_buf(),
            vec![path.to_path_buf()],
            Some(Arc::new(file)),
            &table,
        )
    }

    /// A checkpoint from an explicit configuration file and list of weight files (each must
    /// exist; together they must hold every tensor the configuration implies).
    pub fn from_files(config_path: impl AsRef<Path>, weight_files: &[PathBuf]) -> Result<Self> {
        let config_path = config_path.as_ref().to_path_buf();
        let config = read_config(&config_path)?;
        if weight_files.is_empty() {
            bail!("no weight files given for {}", config_path.display())
        }
        for file in weight_files {
            if !regular_file_exists(file)? {
                bail!("weight file {} does not exist", file.display())
            }
        }
        let table = TensorTable::from_safetensors(weight_files)?;
        Self::checked(config, config_path, weight_files.to_vec(), None, &table)
    }

    /// The configuration held to the tensors, its context capped ([`Config::cap_context`]),
    /// and a head that a tied configuration would ignore noted.
    fn checked(
        mut config: Config,
        config_path: PathBuf,
        weight_files: Vec<PathBuf>,
        gguf: Option<Arc<GgufFile>>,
        table: &TensorTable,
    ) -> Result<Self> {
        let source = config_path.display().to_string();
        // A GGUF file's fields are its `ARCH.*` keys, under the name the file gives.
        let field = |name: &str| match &gguf {
            None => name.to_string(),
            Some(file) => crate::gguf::metadata_key(name, file.layout().name),
        };
        table.check_config(&config, &source, &field)?;
        let mut notes = Vec::new();
        notes.extend(config.cap_context(&source, &field("max_position_embeddings")));
        // Transformers ties the head to the embedding whenever the configuration says so,
        // whatever the file holds (its `tie_weights` runs after loading), and so does stock
        // Candle's llama; stock's qwen2 would take the file's head instead. Following the
        // configuration, for both backends (the head is hidden from the VarBuilder), runs the
        // model transformers runs and keeps an A/B on the same weights.
        let ignore_head = config.tie_word_embeddings && table.contains(HEAD);
        if ignore_head {
            notes.push(format!(
                "{source} has tie_word_embeddings = true, but {} also holds {HEAD}: the head is \
                 the embedding table (model.embed_tokens.weight), as transformers runs it, and \
                 {HEAD} is ignored; set tie_word_embeddings to false to use it",
                table
                    .get(HEAD)
                    .map_or(String::new(), |e| e.file.display().to_string())
            ));
        }
        Ok(Self {
            config,
            config_path,
            weight_files,
            gguf,
            notes,
            ignore_head,
        })
    }

    /// A `VarBuilder` over the weight files (memory-mapped safetensors, or the GGUF file),
    /// producing tensors of `dtype` on `device` under Hugging Face names. Tensors are read (and
    /// converted, or dequantized) one at a time, as the model asks for them.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
        if let Some(gguf) = &self.gguf {
            return gguf.var_builder(dtype, device);
        }
        // SAFETY: `from_mmaped_safetensors` maps the files read-only. Mapping is unsound only if
        // a file is truncated or modified while mapped (the mapped bytes would change under
        // safe code, or reading them would fault). These are checkpoint files we only read, and
        // the mapping lives only as long as the returned `VarBuilder`: `load`/`load_stock` drop
        // it before returning, and every tensor taken from it is copied into memory Candle owns
        // (a dtype conversion or a device upload), so the model never refers to the mapping.
        // Like every Candle loader, we rely on nobody rewriting the checkpoint during a load.
        let tensors = unsafe { MmapedSafetensors::multi(&self.weight_files) }
            .map_err(|e| e.context(format!("mapping the weights of {}", self.describe())))?;
        let backend: Box<dyn SimpleBackend> = match self.ignore_head {
            true => Box::new(WithoutHead(tensors)),
            false => Box::new(tensors),
        };
        Ok(VarBuilder::from_backend(backend, dtype, device.clone()))
    }

    /// Builds the log-domain model: activations (embedding, norms, rotary tables, KV cache) in
    /// `dtype`, weights converted to `options.log` one linear layer at a time.
    ///
    /// Errors name the missing or misshapen tensor, and the checkpoint.
    pub fn load(
        &self,
        dtype: DType,
        device: &Device,
        options: &Options,
    ) -> Result<ModelForCausalLM> {
        let vb = self.var_builder(dtype, device)?;
        self.check_head(&vb)?;
        ModelForCausalLM::new_with_options(&self.config, vb, options)
            .map_err(|e| e.context(format!("loading the weights of {}", self.describe())))
    }

    /// Builds stock Candle's model of the architecture (`qwen2` or `llama`) from the same files
    /// (plain weights in `dtype`; a GGUF's dequantized), for A/B runs.
    pub fn load_stock(&self, dtype: DType, device: &Device) -> Result<StockModel> {
        let vb = self.var_builder(dtype, device)?;
        self.check_head(&vb)?;
        StockModel::new(&self.config, vb)
            .map_err(|e| e.context(format!("loading the weights of {}", self.describe())))
    }

    /// The ids generation stops at, as the files give them: a GGUF's end-of-sequence (and
    /// end-of-turn) ids; else `eos_token_id` (one id or a list) of `generation_config.json`
    /// beside `config.json`, else of `config.json`. Empty when the files name none (a caller
    /// then falls back to the tokenizer's `STOP_TOKENS`).
    pub fn stop_token_ids(&self) -> Result<Vec<u32>> {
        if let Some(gguf) = &self.gguf {
            return gguf.stop_token_ids();
        }
        let generation = self
            .config_path
            .parent()
            .unwrap_or(Path::new("."))
            .join(GENERATION_CONFIG_FILE);
        for path in [generation.as_path(), self.config_path.as_path()] {
            if !regular_file_exists(path)? {
                continue;
            }
            let value = read_json(path)?;
            let ids = match value.get("eos_token_id") {
                None | Some(Value::Null) => continue,
                Some(Value::Array(ids)) => {
                    ids.iter().map(Value::as_u64).collect::<Option<Vec<_>>>()
                }
                Some(id) => id.as_u64().map(|id| vec![id]),
            };
            let Some(ids) = ids else {
                bail!(
                    "{}: eos_token_id is {}, not a token id or a list of them",
                    path.display(),
                    value["eos_token_id"]
                )
            };
            return Ok(ids.into_iter().map(|id| id as u32).collect());
        }
        Ok(Vec::new())
    }

    /// Stock (and this fork) tie the head to the embedding whenever `lm_head.weight` is absent.
    /// When the configuration says the embeddings are *not* tied, an absent head means a broken
    /// checkpoint: say so instead of silently using the embedding.
    ///
    /// Likewise a checkpoint whose config says there are no attention biases (Llama) but whose
    /// weights have them would be run without them: an error, not a silently different model.
    fn check_head(&self, vb: &VarBuilder) -> Result<()> {
        let bias = "model.layers.0.self_attn.q_proj.bias";
        if !self.config.attention_bias && vb.contains_tensor(bias) {
            bail!(
                "{} holds {bias}, but its configuration ({}) says the attention has no biases \
                 ({} model, attention_bias false); fix attention_bias or the architecture",
                self.describe(),
                self.config_path.display(),
                self.config.architecture
            )
        }
        if !self.config.tie_word_embeddings && !vb.contains_tensor("lm_head.weight") {
            bail!(
                "cannot find tensor lm_head.weight in {}: the configuration has \
                 tie_word_embeddings = false, so the checkpoint must hold its own head",
                self.describe()
            )
        }
        Ok(())
    }

    fn describe(&self) -> String {
        match self.weight_files.as_slice() {
            [one] => one.display().to_string(),
            files => format!(
                "{} ({} shards)",
                files[0].parent().unwrap_or(Path::new(".")).display(),
                files.len()
            ),
        }
    }
}

/// Loads the log-domain model from a checkpoint directory: [`Checkpoint::from_dir`] then
/// [`Checkpoint::load`]. Returns the configuration too.
pub fn load(
    dir: impl AsRef<Path>,
    dtype: DType,
    device: &Device,
    options: &Options,
) -> Result<(Config, ModelForCausalLM)> {
    let ckpt = Checkpoint::from_dir(dir)?;
    let model = ckpt.load(dtype, device, options)?;
    Ok((ckpt.config, model))
}

/// Errors, naming the tensor and the file, when a safetensors file holds a tensor of an integer
/// or boolean dtype ([`crate::weights::check_float_dtype`]). Only the header is read.
pub fn check_float_tensors(file: &Path) -> Result<()> {
    for (name, entry) in read_safetensors_header(file)? {
        check_float_dtype(&name, &entry.dtype, file)?;
    }
    Ok(())
}

/// Safetensors without `lm_head.weight`: what a tied configuration's model is built from when
/// the file holds a head anyway (see `Checkpoint::checked`).
struct WithoutHead(MmapedSafetensors);

impl SimpleBackend for WithoutHead {
    fn get(
        &self,
        s: Shape,
        name: &str,
        init: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        if name == HEAD {
            bail!("{HEAD} is ignored: the configuration ties the head to the embedding")
        }
        SimpleBackend::get(&self.0, s, name, init, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        if name == HEAD {
            bail!("{HEAD} is ignored: the configuration ties the head to the embedding")
        }
        SimpleBackend::get_unchecked(&self.0, name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        name != HEAD && SimpleBackend::contains_tensor(&self.0, name)
    }
}

/// The weight files of a checkpoint directory: `model.safetensors` if present, else every shard
/// named by `model.safetensors.index.json` (sorted, deduplicated). The error names the directory
/// when neither exists, every shard file that is missing, and a weights path that is there but
/// is not a file (a directory, a FIFO), saying what it is.
pub fn find_weight_files(dir: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
    let dir = dir.as_ref();
    let single = dir.join(WEIGHTS_FILE);
    if regular_file_exists(&single)? {
        return Ok(vec![single]);
    }
    let index = dir.join(INDEX_FILE);
    if regular_file_exists(&index)? {
        return read_index(&index);
    }
    bail!(
        "no weights in {}: expected {WEIGHTS_FILE} or {INDEX_FILE}",
        dir.display()
    )
}

/// The shard files named by a `model.safetensors.index.json`, in its directory; each must exist.
pub fn read_index(index: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
    let index = index.as_ref();
    let dir = index.parent().unwrap_or(Path::new("."));
    let files: Vec<PathBuf> = shard_names(index)?.iter().map(|n| dir.join(n)).collect();
    let mut missing = Vec::new();
    for file in &files {
        if !regular_file_exists(file)? {
            missing.push(file.display().to_string());
        }
    }
    if !missing.is_empty() {
        bail!(
            "{} names shard file(s) that do not exist: {}",
            index.display(),
            missing.join(", ")
        )
    }
    Ok(files)
}

/// The shard file names a `model.safetensors.index.json` lists in its `weight_map` (sorted,
/// deduplicated), without looking for the files: what a download fetches before
/// [`read_index`] can find them.
///
/// Each name must be a plain file name, a file of the index's own directory: an index is input
/// (from the hub, from anyone), and a name such as `../../etc/passwd` or `/etc/passwd` would
/// otherwise make the loader map, and a download write, a file outside the checkpoint.
pub fn shard_names(index: impl AsRef<Path>) -> Result<Vec<String>> {
    let index = index.as_ref();
    let value = read_json(index)?;
    let Some(map) = value.get("weight_map").and_then(Value::as_object) else {
        bail!(
            "{} has no \"weight_map\" object mapping tensor names to shard files",
            index.display()
        )
    };
    let mut names = BTreeSet::new();
    for (tensor, file) in map {
        let Some(file) = file.as_str() else {
            bail!(
                "{}: the shard of tensor {tensor} is not a file name: {file}",
                index.display()
            )
        };
        if !is_plain_file_name(file) {
            bail!(
                "{}: the shard of tensor {tensor} is {file:?}, which is not a plain file name; \
                 shards must be files of the checkpoint directory, named like \
                 model-00001-of-00002.safetensors (no directories, no absolute paths)",
                index.display()
            )
        }
        names.insert(file.to_string());
    }
    if names.is_empty() {
        bail!("{} lists no tensors in its weight_map", index.display())
    }
    Ok(names.into_iter().collect())
}

/// A name that is one file of a directory: not empty, not `.` or `..`, no separator, no drive.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && Path::new(name).file_name() == Some(std::ffi::OsStr::new(name))
}

#[cfg(test)]
mod tests {
    use super::is_plain_file_name;

    #[test]
    fn shard_names_must_be_plain_file_names() {
        for ok in [
            "model-00001-of-00002.safetensors",
            "a.safetensors",
            "..weird",
        ] {
            assert!(is_plain_file_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../../etc/passwd",
            "/etc/passwd",
            "sub/model.safetensors",
            "..\\x",
            "a\0b",
        ] {
            assert!(!is_plain_file_name(bad), "{bad:?}");
        }
    }
}
