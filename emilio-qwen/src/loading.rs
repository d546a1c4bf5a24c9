//! Loading Qwen2/Qwen2.5 checkpoints as users have them: a directory with `config.json` and
//! either one `model.safetensors` or a sharded `model.safetensors.index.json`.
//!
//! The weight files are memory-mapped and each linear layer converts its weight to the log
//! domain as the model is built, layer by layer, dropping the plain tensor right away: the
//! process never holds all plain weights at once, so peak memory stays near the size of the
//! converted model (plus the file pages the kernel maps in while reading).
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

use candle_core::{bail, DType, Device, Error, Result};
use candle_nn::VarBuilder;
use serde_json::Value;

use crate::model::{Config, ModelForCausalLM, Options};

/// The configuration file of a checkpoint directory.
pub const CONFIG_FILE: &str = "config.json";
/// The single weight file of an unsharded checkpoint.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The index of a sharded checkpoint (its `weight_map` names the shard of every tensor).
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// The tokenizer file of a checkpoint directory (not needed to build the model).
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// A checkpoint located on disk: its parsed configuration and its weight files.
///
/// Nothing is mapped or converted until [`Checkpoint::load`] (or [`Checkpoint::load_stock`]).
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The parsed `config.json` (checked to describe a Qwen2 model).
    pub config: Config,
    /// Where the configuration was read from.
    pub config_path: PathBuf,
    /// The safetensors files holding the weights (one, or every shard of the index).
    pub weight_files: Vec<PathBuf>,
}

impl Checkpoint {
    /// Locates `config.json` and the weights in `dir`: `model.safetensors` if present, else the
    /// shards listed by `model.safetensors.index.json`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            bail!("checkpoint directory {} does not exist", dir.display())
        }
        let config_path = dir.join(CONFIG_FILE);
        let config = read_config(&config_path)?;
        let weight_files = find_weight_files(dir)?;
        Ok(Self {
            config,
            config_path,
            weight_files,
        })
    }

    /// A checkpoint from an explicit configuration file and list of weight files (each must
    /// exist; together they must hold every tensor).
    pub fn from_files(config_path: impl AsRef<Path>, weight_files: &[PathBuf]) -> Result<Self> {
        let config_path = config_path.as_ref().to_path_buf();
        let config = read_config(&config_path)?;
        if weight_files.is_empty() {
            bail!("no weight files given for {}", config_path.display())
        }
        if let Some(missing) = weight_files.iter().find(|f| !f.is_file()) {
            bail!("weight file {} does not exist", missing.display())
        }
        Ok(Self {
            config,
            config_path,
            weight_files: weight_files.to_vec(),
        })
    }

    /// A `VarBuilder` over the memory-mapped weight files, producing tensors of `dtype` on
    /// `device`. Tensors are read (and converted) one at a time, as the model asks for them.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
        // SAFETY: `from_mmaped_safetensors` maps the files read-only. Mapping is unsound only if
        // a file is truncated or modified while mapped (the mapped bytes would change under
        // safe code, or reading them would fault). These are checkpoint files we only read, and
        // the mapping lives only as long as the returned `VarBuilder`: `load`/`load_stock` drop
        // it before returning, and every tensor taken from it is copied into memory Candle owns
        // (a dtype conversion or a device upload), so the model never refers to the mapping.
        // Like every Candle loader, we rely on nobody rewriting the checkpoint during a load.
        unsafe { VarBuilder::from_mmaped_safetensors(&self.weight_files, dtype, device) }
            .map_err(|e| e.context(format!("mapping the weights of {}", self.describe())))
    }

    /// Builds the log-domain model: activations (embedding, norms, rotary tables, KV cache) in
    /// `dtype`, weights converted to `options.weight_format` one linear layer at a time.
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

    /// Builds stock Candle's Qwen2 from the same files (plain weights in `dtype`), for A/B runs.
    pub fn load_stock(
        &self,
        dtype: DType,
        device: &Device,
    ) -> Result<candle_transformers::models::qwen2::ModelForCausalLM> {
        let vb = self.var_builder(dtype, device)?;
        self.check_head(&vb)?;
        candle_transformers::models::qwen2::ModelForCausalLM::new(&self.config, vb)
            .map_err(|e| e.context(format!("loading the weights of {}", self.describe())))
    }

    /// Stock (and this fork) tie the head to the embedding whenever `lm_head.weight` is absent.
    /// When the configuration says the embeddings are *not* tied, an absent head means a broken
    /// checkpoint: say so instead of silently using the embedding.
    fn check_head(&self, vb: &VarBuilder) -> Result<()> {
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

/// The weight files of a checkpoint directory: `model.safetensors` if present, else every shard
/// named by `model.safetensors.index.json` (sorted, deduplicated). The error names the directory
/// when neither exists and every shard file that is missing.
pub fn find_weight_files(dir: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
    let dir = dir.as_ref();
    let single = dir.join(WEIGHTS_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join(INDEX_FILE);
    if index.is_file() {
        return read_index(&index);
    }
    bail!(
        "no weights in {}: expected {WEIGHTS_FILE} or {INDEX_FILE}",
        dir.display()
    )
}

/// The shard files named by a `model.safetensors.index.json` (paths relative to its directory).
pub fn read_index(index: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
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
        names.insert(file.to_string());
    }
    if names.is_empty() {
        bail!("{} lists no tensors in its weight_map", index.display())
    }
    let dir = index.parent().unwrap_or(Path::new("."));
    let files: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
    let missing: Vec<String> = files
        .iter()
        .filter(|f| !f.is_file())
        .map(|f| f.display().to_string())
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} names shard file(s) that do not exist: {}",
            index.display(),
            missing.join(", ")
        )
    }
    Ok(files)
}

/// Reads and checks a Qwen2 `config.json`.
///
/// - The file must exist and parse as JSON (the error names the file).
/// - `model_type` (when present) must be `"qwen2"` and `architectures` (when present) must list
///   `Qwen2ForCausalLM` or `Qwen2Model`; at least one of the two must be present. The error
///   names what was found.
/// - Fields stock's [`Config`] requires but that some published configs leave out or set to
///   `null` get the value that means "no sliding window", which is what those configs mean:
///   `sliding_window` → `max_position_embeddings`, `use_sliding_window` → `false`,
///   `max_window_layers` → `num_hidden_layers`, `hidden_act` → `"silu"`.
/// - The head counts must divide evenly (`hidden_size` by `num_attention_heads`, that by
///   `num_key_value_heads`).
pub fn read_config(path: impl AsRef<Path>) -> Result<Config> {
    let path = path.as_ref();
    let mut value = read_json(path)?;
    check_qwen2(&value, path)?;
    if let Some(obj) = value.as_object_mut() {
        let get = |obj: &serde_json::Map<String, Value>, k: &str| obj.get(k).cloned();
        let fill = |obj: &mut serde_json::Map<String, Value>, k: &str, v: Option<Value>| {
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
    let config: Config = serde_json::from_value(value).map_err(|e| {
        Error::msg(format!(
            "{} is not a valid Qwen2 config: {e}",
            path.display()
        ))
    })?;
    check_shapes(&config, path)?;
    Ok(config)
}

fn read_json(path: &Path) -> Result<Value> {
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

fn check_qwen2(value: &Value, path: &Path) -> Result<()> {
    let Some(obj) = value.as_object() else {
        bail!("{} is not a JSON object", path.display())
    };
    let model_type = obj.get("model_type");
    let architectures = obj.get("architectures");
    let found = || {
        format!(
            "model_type {}, architectures {}",
            model_type.map_or("(absent)".to_string(), Value::to_string),
            architectures.map_or("(absent)".to_string(), Value::to_string)
        )
    };
    let type_ok = match model_type {
        None | Some(Value::Null) => None,
        Some(t) => Some(t.as_str() == Some("qwen2")),
    };
    let arch_ok = match architectures {
        None | Some(Value::Null) => None,
        Some(a) => Some(a.as_array().is_some_and(|a| {
            a.iter()
                .any(|x| matches!(x.as_str(), Some("Qwen2ForCausalLM") | Some("Qwen2Model")))
        })),
    };
    match (type_ok, arch_ok) {
        (Some(false), _) | (_, Some(false)) => bail!(
            "{} does not describe a Qwen2 model ({}): emilio-qwen loads Qwen2/Qwen2.5 \
             checkpoints (model_type \"qwen2\", architectures [\"Qwen2ForCausalLM\"])",
            path.display(),
            found()
        ),
        (None, None) => bail!(
            "{} names no model_type or architectures; expected model_type \"qwen2\"",
            path.display()
        ),
        _ => Ok(()),
    }
}

fn check_shapes(cfg: &Config, path: &Path) -> Result<()> {
    let (h, q, kv) = (
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
    );
    if h == 0 || q == 0 || kv == 0 || cfg.vocab_size == 0 || cfg.max_position_embeddings == 0 {
        bail!(
            "{}: hidden_size, vocab_size, max_position_embeddings and the head counts must be \
             positive",
            path.display()
        )
    }
    if h % q != 0 || (h / q) % 2 != 0 {
        bail!(
            "{}: hidden_size {h} is not num_attention_heads {q} times an even head dimension",
            path.display()
        )
    }
    if q % kv != 0 {
        bail!(
            "{}: num_attention_heads {q} is not a multiple of num_key_value_heads {kv}",
            path.display()
        )
    }
    Ok(())
}
