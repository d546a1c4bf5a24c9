//! The prompt a command sends: the user's text through the model's own chat template.
//!
//! A model's template is found beside its tokenizer (`tokenizer_config.json`, fetched from the
//! hub for a hub model when it is not in the cache). A model without one gets plain ChatML when
//! its tokenizer has `<|im_start|>` (Qwen base models), and the raw text otherwise. Whoever
//! finds a template elsewhere (in a GGUF file's metadata, say) passes it to [`encode_prompt`]
//! directly.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use emilio_qwen::chat::{ChatTemplate, Message};
use emilio_qwen::generation::IM_START;
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Repo, RepoType};
use tokenizers::Tokenizer;

use crate::cli::{ModelArgs, PromptArgs};

/// The Hugging Face file that holds a model's chat template and special tokens.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";

/// The chat template of the model whose `tokenizer.json` is at `tokenizer_path`: from the
/// `tokenizer_config.json` beside it or, for a hub model (`--model` not a directory), the one
/// on the hub. `None` when the model has none (a base model) or, with a note on stderr, when
/// the hub cannot be reached.
pub fn model_template(model: &ModelArgs, tokenizer_path: &Path) -> Result<Option<ChatTemplate>> {
    let beside = tokenizer_path
        .parent()
        .unwrap_or(Path::new("."))
        .join(TOKENIZER_CONFIG_FILE);
    if beside.is_file() || Path::new(&model.model).is_dir() {
        return Ok(ChatTemplate::from_tokenizer_config(&beside)?);
    }
    match hub_file(&model.model, &model.revision, TOKENIZER_CONFIG_FILE) {
        Ok(path) => Ok(ChatTemplate::from_tokenizer_config(&path)?),
        Err(e) => {
            let detail = format!("{e:#}");
            if !detail.contains("404") {
                eprintln!(
                    "note: could not fetch {TOKENIZER_CONFIG_FILE} of {} ({detail}); \
                     prompts go without the model's chat template",
                    model.model
                );
            }
            Ok(None)
        }
    }
}

/// One file of a hub model, from the cache or downloaded.
fn hub_file(model_id: &str, revision: &str, file: &str) -> Result<PathBuf> {
    let mut builder = ApiBuilder::from_env().with_progress(false);
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
    Ok(repo.get(file)?)
}

/// The template that formats chat prompts for `tokenizer`: the model's own, else plain ChatML
/// when the tokenizer has ChatML's tokens, else none (the text goes in raw).
pub fn chat_template(tokenizer: &Tokenizer, own: Option<&ChatTemplate>) -> Option<ChatTemplate> {
    match own {
        Some(t) => Some(t.clone()),
        None if tokenizer.token_to_id(IM_START).is_some() => Some(ChatTemplate::chatml()),
        None => None,
    }
}

/// The prompt's token ids: `--prompt` as the user's turn through `template` (the model's own,
/// see [`chat_template`] for a model without one), after `--system` if given; or the raw text
/// with `--no-chat` or when there is no template at all.
pub fn encode_prompt(
    tokenizer: &Tokenizer,
    template: Option<&ChatTemplate>,
    args: &PromptArgs,
) -> Result<Vec<u32>> {
    if args.prompt.trim().is_empty() {
        bail!("the prompt is empty: pass some text with --prompt")
    }
    let template = if args.no_chat {
        None
    } else {
        chat_template(tokenizer, template)
    };
    let text = match template {
        Some(template) => {
            let mut messages = Vec::with_capacity(2);
            if let Some(system) = &args.system {
                messages.push(Message::system(system.as_str()));
            }
            messages.push(Message::user(args.prompt.as_str()));
            template.render(&messages, true)?
        }
        None => args.prompt.clone(),
    };
    let ids = encode(tokenizer, &text)?;
    if ids.is_empty() {
        bail!("the prompt tokenizes to no tokens")
    }
    Ok(ids)
}

/// The token ids of `text`, special tokens (`<|im_start|>` ...) recognised, none added: a
/// rendered template already holds every special token the model expects, as transformers'
/// `apply_chat_template` assumes.
pub fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    let encoding = tokenizer
        .encode(text, false)
        .map_err(|e| anyhow!("cannot tokenize the prompt: {e}"))?;
    Ok(encoding.get_ids().to_vec())
}
