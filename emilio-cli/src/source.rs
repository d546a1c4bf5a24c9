//! Where a model comes from: a local checkpoint directory, a local GGUF file, or the Hugging
//! Face hub (a model ID, or one GGUF file of a repository with `--gguf`), through [`crate::hub`].

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use emilio_qwen::chat::ChatTemplate;
use emilio_qwen::files::{kind, regular_file_exists};
use emilio_qwen::generation::stop_ids;
use emilio_qwen::loading::{
    shard_names, Checkpoint, CONFIG_FILE, GENERATION_CONFIG_FILE, INDEX_FILE,
    TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE,
};
use tokenizers::Tokenizer;

use crate::cli::ModelArgs;
use crate::hub::{Hub, Repo};

/// A model located on disk, ready to load.
pub struct ModelFiles {
    /// Configuration and weights.
    pub checkpoint: Checkpoint,
    /// `tokenizer.json`; `None` for a GGUF file without one beside it (its metadata has one).
    pub tokenizer_path: Option<PathBuf>,
    /// `tokenizer_config.json` (the chat template), when the model has one.
    pub tokenizer_config_path: Option<PathBuf>,
    /// What the user named, for messages.
    pub label: String,
}

impl ModelFiles {
    /// The tokenizer: `tokenizer.json`, else the one a GGUF file's metadata describes; errors
    /// name the file.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        let (tokenizer, source) = if let Some(path) = &self.tokenizer_path {
            let tokenizer = emilio_qwen::tokenizer::from_file(path)?;
            (tokenizer, path.display().to_string())
        } else {
            match &self.checkpoint.gguf {
                Some(gguf) => {
                    let source = gguf.path().display().to_string();
                    let tokenizer = emilio_qwen::tokenizer::from_gguf(gguf.metadata(), &source)?;
                    (tokenizer, source)
                }
                None => bail!("{} has no tokenizer", self.label),
            }
        };
        let vocab = self.checkpoint.config.vocab_size;
        let config_source = self.checkpoint.config_path.display().to_string();
        emilio_qwen::tokenizer::check_ids(&tokenizer, &source, vocab, &config_source)?;
        // Ids the model can emit but the tokenizer has no text for decode to nothing in
        // `tokenizers`; they are shown as placeholders (`crate::stream::decode`), and a gap
        // larger than padding is said at load. Checkpoints pad the embedding table to a
        // multiple of 64 rows or more (Qwen2.5: 151936 rows, 151665 tokens): that alone is
        // not worth a warning on every run.
        let tokens = tokenizer
            .get_vocab(true)
            .values()
            .max()
            .map_or(0, |&id| id as usize + 1);
        let padding = vocab.is_multiple_of(64) && vocab - tokens < 1024;
        if vocab > tokens && !padding {
            eprintln!(
                "warning: the model has {vocab} embeddings (vocab_size in {}) but the tokenizer \
                 {source} only {tokens} tokens: ids {tokens} and above have no text and are \
                 printed as <|unknown id N|>",
                self.checkpoint.config_path.display()
            );
        }
        Ok(tokenizer)
    }

    /// Where the tokenizer is read from, for messages: `tokenizer.json`, or the GGUF file.
    pub fn tokenizer_source(&self) -> String {
        match (&self.tokenizer_path, &self.checkpoint.gguf) {
            (Some(path), _) => path.display().to_string(),
            (None, Some(gguf)) => gguf.path().display().to_string(),
            (None, None) => self.label.clone(),
        }
    }

    /// The model's own chat template: from `tokenizer_config.json` when the model has one,
    /// else a GGUF file's `tokenizer.chat_template`; `None` when it has neither (a base model).
    pub fn chat_template(&self) -> Result<Option<ChatTemplate>> {
        if let Some(path) = &self.tokenizer_config_path {
            if let Some(template) = ChatTemplate::from_tokenizer_config(path)? {
                return Ok(Some(template));
            }
        }
        match &self.checkpoint.gguf {
            Some(gguf) => Ok(ChatTemplate::from_gguf_metadata(gguf.metadata())
                .with_context(|| format!("the chat template of {}", gguf.path().display()))?),
            None => Ok(None),
        }
    }

    /// The ids generation stops at: the files' end-of-sequence ids
    /// ([`Checkpoint::stop_token_ids`]), else those of the standard stop tokens the tokenizer
    /// has.
    pub fn stop_tokens(&self, tokenizer: &Tokenizer) -> Result<Vec<u32>> {
        let ids = self.checkpoint.stop_token_ids()?;
        Ok(if ids.is_empty() {
            stop_ids(tokenizer)
        } else {
            ids
        })
    }

    /// The model's context: positions it has rotary tables for.
    pub fn max_positions(&self) -> usize {
        self.checkpoint.config.max_position_embeddings
    }
}

/// The model the command-line options name: [`resolve`] of `--model`, `--revision`, `--gguf`.
///
/// What the checkpoint notes about how its files are read (a context capped, a head ignored)
/// goes to stderr as warnings: a model run otherwise than its files say is never silent.
pub fn open(args: &ModelArgs) -> Result<ModelFiles> {
    let files = resolve(&args.model, args.revision.as_deref(), args.gguf.as_deref())?;
    for note in &files.checkpoint.notes {
        eprintln!("warning: {note}");
    }
    Ok(files)
}

/// Resolves `--model` (and `--gguf`, `--revision`):
/// - a `.gguf` file (or any GGUF file) is loaded as one;
/// - an existing directory is a checkpoint directory, or with `--gguf NAME` the GGUF file in it;
/// - anything shaped like `owner/name` is fetched from the Hugging Face hub (or found in its
///   cache) at `revision` (default `main`): the safetensors checkpoint, or with `--gguf FILE`
///   that one GGUF file.
///
/// `--revision` names a version of a hub repository; a local path has none, so it is an error
/// there rather than a flag silently ignored. A path that exists but is neither a file nor a
/// directory (a FIFO, a socket) is named as what it is.
pub fn resolve(model: &str, revision: Option<&str>, gguf: Option<&str>) -> Result<ModelFiles> {
    let path = Path::new(model);
    let local_kind = std::fs::metadata(path).ok().map(|m| m.file_type());
    if let (Some(file_type), Some(rev)) = (local_kind, revision) {
        bail!(
            "--revision {rev} applies to a Hugging Face model ID, but --model {model} is {} on \
             this machine, which has no revisions; drop --revision",
            kind(&file_type)
        )
    }
    if path.is_file() {
        if let Some(file) = gguf {
            bail!("--model {model} is a file, so --gguf {file} has nothing to pick from: pass one of them")
        }
        if is_gguf(path)? {
            return local_gguf(path);
        }
        bail!(
            "--model {model} is a file but not a GGUF file; pass a GGUF file, or the checkpoint \
             directory that holds {CONFIG_FILE}, {WEIGHTS_FILE} and {TOKENIZER_FILE}"
        )
    }
    if path.is_dir() {
        return match gguf {
            Some(file) => {
                let file = path.join(file);
                if !regular_file_exists(&file)? {
                    bail!("--gguf: {} does not exist", file.display())
                }
                local_gguf(&file)
            }
            None => local(path),
        };
    }
    if let Some(file_type) = local_kind {
        bail!(
            "--model {model} is {}, not a checkpoint directory or a GGUF file",
            kind(&file_type)
        )
    }
    if !looks_like_hub_id(model) {
        bail!(
            "--model {model}: no such file or directory, and not a Hugging Face model ID \
             (owner/name). Make an offline checkpoint with `emilio synth --out DIR` and pass \
             --model DIR"
        )
    }
    let revision = revision.unwrap_or("main");
    match gguf {
        Some(file) => hub_gguf(model, revision, file),
        None => hub(model, revision),
    }
}

/// Whether `path` starts with GGUF's magic bytes.
fn is_gguf(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(f.read_exact(&mut magic).is_ok() && &magic == b"GGUF")
}

fn local(dir: &Path) -> Result<ModelFiles> {
    if !dir.join(CONFIG_FILE).is_file() {
        let ggufs: Vec<String> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".gguf"))
                    .collect()
            })
            .unwrap_or_default();
        if !ggufs.is_empty() {
            bail!(
                "{} has no {CONFIG_FILE} but GGUF files ({}): pass one with --model {}/FILE.gguf \
                 or --gguf FILE.gguf",
                dir.display(),
                ggufs.join(", "),
                dir.display()
            )
        }
    }
    let checkpoint = Checkpoint::from_dir(dir)?;
    let tokenizer_path = dir.join(TOKENIZER_FILE);
    if !regular_file_exists(&tokenizer_path)? {
        bail!(
            "{} is missing: the checkpoint directory {} needs the model's tokenizer too",
            tokenizer_path.display(),
            dir.display()
        )
    }
    Ok(ModelFiles {
        checkpoint,
        tokenizer_path: Some(tokenizer_path),
        tokenizer_config_path: optional_file(dir.join(TOKENIZER_CONFIG_FILE))?,
        label: dir.display().to_string(),
    })
}

/// A GGUF file, with `tokenizer.json` / `tokenizer_config.json` beside it when they are there.
fn local_gguf(path: &Path) -> Result<ModelFiles> {
    let checkpoint = Checkpoint::from_gguf(path)?;
    let beside = |name: &str| optional_file(path.parent().unwrap_or(Path::new(".")).join(name));
    Ok(ModelFiles {
        checkpoint,
        tokenizer_path: beside(TOKENIZER_FILE)?,
        tokenizer_config_path: beside(TOKENIZER_CONFIG_FILE)?,
        label: path.display().to_string(),
    })
}

/// `owner/name` (or a bare `name`) made of the characters the hub allows.
fn looks_like_hub_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() <= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
}

/// `path` when it is a regular file, `None` when nothing is there, an error naming what it is
/// otherwise (a directory or a FIFO where a file belongs is a mistake to report, not to skip).
fn optional_file(path: PathBuf) -> Result<Option<PathBuf>> {
    Ok(regular_file_exists(&path)?.then_some(path))
}

/// A safetensors checkpoint of the hub: configuration, tokenizer, the optional chat template and
/// generation defaults, then the weights.
///
/// The weights are `model.safetensors`, or, only when the hub answers 404 for it, the sharded
/// index and every shard it names (fetched after the index is checked: each shard must be a
/// plain file name). Any other failure (a 500, a broken transfer, a timeout) is reported as it
/// is, not taken as a sign of a sharded checkpoint. Likewise an optional file is skipped only on
/// a 404.
fn hub(model_id: &str, revision: &str) -> Result<ModelFiles> {
    let hub = Hub::from_env()?;
    let repo = hub.repo(model_id, revision)?;
    let config_path = repo.require(CONFIG_FILE)?;
    let tokenizer_path = repo.require(TOKENIZER_FILE)?;
    let tokenizer_config_path = repo.get(TOKENIZER_CONFIG_FILE)?;
    // Read beside config.json by `Checkpoint::stop_token_ids` when it is there.
    repo.get(GENERATION_CONFIG_FILE)?;
    // A sharded checkpoint already in the cache needs no request for the single file.
    let cached_sharded = repo.cached(WEIGHTS_FILE)?.is_none() && repo.cached(INDEX_FILE)?.is_some();
    let single = if cached_sharded {
        None
    } else {
        repo.get(WEIGHTS_FILE)?
    };
    let weight_files = match single {
        Some(single) => vec![single],
        None => hub_shards(&repo)?,
    };
    let checkpoint = Checkpoint::from_files(&config_path, &weight_files)?;
    Ok(ModelFiles {
        checkpoint,
        tokenizer_path: Some(tokenizer_path),
        tokenizer_config_path,
        label: repo.label(),
    })
}

/// The shards of a sharded hub checkpoint: its index, checked, then every shard it names.
fn hub_shards(repo: &Repo) -> Result<Vec<PathBuf>> {
    let index = repo.get(INDEX_FILE)?.ok_or_else(|| {
        anyhow!(
            "{} has neither {WEIGHTS_FILE} nor {INDEX_FILE} on the hub (both answered 404): it \
             is not a safetensors checkpoint. For a GGUF repository pass --gguf FILE.gguf",
            repo.label()
        )
    })?;
    let names =
        shard_names(&index).with_context(|| format!("the shard index of {}", repo.label()))?;
    names
        .iter()
        .map(|name| {
            repo.require(name)
                .with_context(|| format!("{} names the shard {name}", index.display()))
        })
        .collect()
}

/// One GGUF file of a hub repository (`Qwen/Qwen2.5-0.5B-Instruct-GGUF` with
/// `qwen2.5-0.5b-instruct-q8_0.gguf`): the file alone holds the model, tokenizer and template.
fn hub_gguf(model_id: &str, revision: &str, file: &str) -> Result<ModelFiles> {
    if !file.ends_with(".gguf") {
        bail!("--gguf {file}: expected the name of a .gguf file in {model_id}")
    }
    let hub = Hub::from_env()?;
    let repo = hub.repo(model_id, revision)?;
    let path = repo.require(file)?;
    let mut files = local_gguf(&path)?;
    files.label = format!("{}/{file}", repo.label());
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::looks_like_hub_id;

    #[test]
    fn hub_ids_are_told_from_paths() {
        for id in ["Qwen/Qwen2.5-0.5B-Instruct", "gpt2", "org/model_v1.5"] {
            assert!(looks_like_hub_id(id), "{id}");
        }
        for p in [
            "./ckpt",
            "/tmp/x",
            "a/b/c",
            "../up",
            "has space/x",
            "",
            "org/",
        ] {
            assert!(!looks_like_hub_id(p), "{p}");
        }
    }
}
