//! The prompt a command sends: the user's text through the model's own chat template.
//!
//! A model's template comes with its files (`source::ModelFiles::chat_template`:
//! `tokenizer_config.json`, or a GGUF file's `tokenizer.chat_template`). A model without one
//! gets plain ChatML when its tokenizer has `<|im_start|>` (Qwen base models), and the raw text
//! otherwise.

use anyhow::{anyhow, bail, Result};
use emilio_qwen::chat::{ChatTemplate, Message};
use emilio_qwen::generation::IM_START;
use tokenizers::Tokenizer;

use crate::cli::PromptArgs;

/// The template that formats chat prompts for `tokenizer`: the model's own, else plain ChatML
/// when the tokenizer has ChatML's tokens, else none (the text goes in raw).
///
/// Every special token the template writes ([`ChatTemplate::special_tokens`]) must be a token
/// of the tokenizer (read from `tokenizer_source`, named in the error): otherwise its markup,
/// `<|im_start|>` and the like, would be tokenized as plain text and the model would get a
/// prompt it was never trained on, without a word.
pub fn chat_template(
    tokenizer: &Tokenizer,
    own: Option<&ChatTemplate>,
    tokenizer_source: &str,
) -> Result<Option<ChatTemplate>> {
    let template = match own {
        Some(t) => t.clone(),
        None if tokenizer.token_to_id(IM_START).is_some() => ChatTemplate::chatml(),
        None => return Ok(None),
    };
    if let Some(missing) = template
        .special_tokens()
        .into_iter()
        .find(|token| tokenizer.token_to_id(token).is_none())
    {
        bail!(
            "the chat template writes {missing:?}, but the tokenizer {tokenizer_source} has no \
             such token: the template's markup would reach the model as plain text. Use the \
             model's own tokenizer, or `emilio generate --no-chat` to send the text as it is"
        )
    }
    Ok(Some(template))
}

/// The prompt's token ids: `--prompt` as the user's turn through `template` (the model's own,
/// see [`chat_template`] for a model without one), after `--system` if given; or the raw text
/// with `--no-chat` or when there is no template at all.
pub fn encode_prompt(
    tokenizer: &Tokenizer,
    template: Option<&ChatTemplate>,
    args: &PromptArgs,
    tokenizer_source: &str,
) -> Result<Vec<u32>> {
    if args.prompt.trim().is_empty() {
        bail!("the prompt is empty: pass some text with --prompt")
    }
    let template = if args.no_chat {
        None
    } else {
        chat_template(tokenizer, template, tokenizer_source)?
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
