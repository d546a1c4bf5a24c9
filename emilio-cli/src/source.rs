//! Where a model comes from: a local checkpoint directory or a Hugging Face model ID.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use emilio_qwen::loading::{
    read_index, Checkpoint, CONFIG_FILE, INDEX_FILE, TOKENIZER_FILE, WEIGHTS_FILE,
};
use hf_hub::api::sync::{ApiBuilder, ApiRepo};
use hf_hub::{Repo, RepoType};
use tokenizers::Tokenizer;

/// A model located on disk, ready to load.
pub struct ModelFiles {
    /// Configuration and weights.
    pub checkpoint: Checkpoint,
    /// `tokenizer.json`.
    pub tokenizer_path: PathBuf,
    /// What the user named, for messages.
    pub label: String,
}

impl ModelFiles {
    /// The tokenizer, or an error naming its file.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        Tokenizer::from_file(&self.tokenizer_path).map_err(|e| {
            anyhow!(
                "cannot read tokenizer {}: {e}",
                self.tokenizer_path.display()
            )
        })
    }
}

/// Resolves `--model`: an existing directory is a local checkpoint; anything shaped like
/// `owner/name` is fetched from the Hugging Face hub (or found in its cache).
pub fn resolve(model: &str, revision: &str) -> Result<ModelFiles> {
    let path = Path::new(model);
    if path.is_dir() {
        return local(path);
    }
    if path.exists() {
        bail!(
            "--model {model} is a file; pass the checkpoint directory that holds \
             {CONFIG_FILE}, {WEIGHTS_FILE} and {TOKENIZER_FILE}"
        )
    }
    if !looks_like_hub_id(model) {
        bail!(
            "--model {model}: no such directory, and not a Hugging Face model ID (owner/name). \
             Make an offline checkpoint with `emilio synth --out DIR` and pass --model DIR"
        )
    }
    hub(model, revision)
}

fn local(dir: &Path) -> Result<ModelFiles> {
    let checkpoint = Checkpoint::from_dir(dir)?;
    let tokenizer_path = dir.join(TOKENIZER_FILE);
    if !tokenizer_path.is_file() {
        bail!(
            "{} is missing: the checkpoint directory {} needs the model's tokenizer too",
            tokenizer_path.display(),
            dir.display()
        )
    }
    Ok(ModelFiles {
        checkpoint,
        tokenizer_path,
        label: dir.display().to_string(),
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

fn hub(model_id: &str, revision: &str) -> Result<ModelFiles> {
    let mut builder = ApiBuilder::from_env().with_progress(true);
    if let Ok(token) = std::env::var("HF_TOKEN") {
        builder = builder.with_token(Some(token));
    }
    let api = builder
        .build()
        .context("setting up the Hugging Face hub client")?;
    let repo = api.repo(Repo::with_revision(
        model_id.to_string(),
        RepoType::Model,
        revision.to_string(),
    ));
    let fetch = |file: &str| fetch(&repo, model_id, revision, file);
    let config_path = fetch(CONFIG_FILE)?;
    let tokenizer_path = fetch(TOKENIZER_FILE)?;
    let weight_files = match fetch(WEIGHTS_FILE) {
        Ok(single) => vec![single],
        Err(single_err) => {
            // Larger models are sharded: fetch the index, then every shard it names.
            let index = fetch(INDEX_FILE).map_err(|_| single_err)?;
            let shards = read_index(&index)?;
            shards
                .iter()
                .map(|shard| {
                    let name = shard
                        .file_name()
                        .and_then(|n| n.to_str())
                        .ok_or_else(|| anyhow!("bad shard name {}", shard.display()))?;
                    fetch(name)
                })
                .collect::<Result<Vec<_>>>()?
        }
    };
    let checkpoint = Checkpoint::from_files(&config_path, &weight_files)?;
    Ok(ModelFiles {
        checkpoint,
        tokenizer_path,
        label: format!("{model_id}@{revision}"),
    })
}

/// One file from the hub (or its cache), with an error a user can act on.
fn fetch(repo: &ApiRepo, model_id: &str, revision: &str, file: &str) -> Result<PathBuf> {
    repo.get(file).map_err(|e| {
        let detail = e.to_string();
        if detail.contains("404") || detail.contains("401") {
            anyhow!(
                "{model_id} (revision {revision}) has no {file} on the Hugging Face hub, or the \
                 model does not exist or is gated ({detail}). Check the ID, set HF_TOKEN for \
                 gated models, or pass a local checkpoint directory"
            )
        } else {
            anyhow!(
                "could not fetch {file} of {model_id} from the Hugging Face hub ({detail}). \
                 Without a network, make an offline checkpoint with \
                 `emilio synth --preset qwen2.5-0.5b --out DIR` and pass --model DIR, or use a \
                 local copy of the model"
            )
        }
    })
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
