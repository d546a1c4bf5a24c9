//! `emilio generate`: prompt in, tokens streamed out, timings on stderr.

use std::io::Write;

use anyhow::{anyhow, bail, Result};
use emilio_qwen::generation::{sampling, Generator, Sampled};
use tokenizers::Tokenizer;

use crate::cli::{GenerateArgs, PromptArgs};
use crate::runner::Runner;
use crate::stream::TextStream;
use crate::{device, source};

pub fn run(args: &GenerateArgs) -> Result<()> {
    let device = device::open(args.model.device)?;
    let files = source::resolve(
        &args.model.model,
        &args.model.revision,
        args.model.gguf.as_deref(),
    )?;
    let tokenizer = files.tokenizer()?;
    let prompt = encode_prompt(&tokenizer, &args.prompt)?;
    let stops = files.stop_tokens(&tokenizer)?;
    let (mut model, load) = Runner::load(
        &files,
        args.backend,
        args.model.weight_format,
        args.model.dtype.dtype(),
        &device,
    )?;
    let max_tokens = fit_context(prompt.len(), args.max_tokens, model.max_positions(&files))?;

    let sampler = Sampled::new(args.seed, sampling(args.temperature, args.top_p))
        .with_repeat_penalty(args.repeat_penalty, args.repeat_last_n);
    let mut generator = Generator::new(&mut model, sampler, &device).with_stop_tokens(stops);
    let mut stream = TextStream::new(&tokenizer);
    let mut out = std::io::stdout().lock();
    let generated = generator.run(&prompt, max_tokens, |token| -> Result<()> {
        if let Some(text) = stream.push(token)? {
            write!(out, "{text}")?;
            out.flush()?;
        }
        Ok(())
    })?;
    if let Some(text) = stream.finish()? {
        write!(out, "{text}")?;
    }
    writeln!(out)?;
    let t = &generated.timings;
    eprintln!(
        "{} backend: loaded in {:.2}s{}; prefill {} tokens at {:.1} tok/s; decode {} tokens at {:.1} tok/s",
        match args.backend {
            crate::cli::Backend::Emilio => format!("emilio ({})", args.model.weight_format),
            other => other.name(),
        },
        load.time.as_secs_f64(),
        load.memory.map_or(String::new(), |m| format!(
            " (peak memory +{:.0} MB)",
            m.peak_growth_bytes() as f64 / 1e6
        )),
        t.prefill_tokens,
        t.prefill_tok_s(),
        t.decode.len(),
        t.decode_tok_s(),
    );
    Ok(())
}

/// The prompt's token ids: through the ChatML template of Qwen instruct models unless
/// `--no-chat`, or when the tokenizer has no `<|im_start|>` (a base model's).
pub fn encode_prompt(tokenizer: &Tokenizer, args: &PromptArgs) -> Result<Vec<u32>> {
    if args.prompt.trim().is_empty() {
        bail!("the prompt is empty: pass some text with --prompt")
    }
    let chat = !args.no_chat && tokenizer.token_to_id("<|im_start|>").is_some();
    let text = if chat {
        format!(
            "<|im_start|>system\n{}<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
            args.system, args.prompt
        )
    } else {
        args.prompt.clone()
    };
    let encoding = tokenizer
        .encode(text, false)
        .map_err(|e| anyhow!("cannot tokenize the prompt: {e}"))?;
    let ids = encoding.get_ids().to_vec();
    if ids.is_empty() {
        bail!("the prompt tokenizes to no tokens")
    }
    Ok(ids)
}

/// How many tokens can be generated after `prompt_len` within a context of `max_pos`.
pub fn fit_context(prompt_len: usize, max_tokens: usize, max_pos: usize) -> Result<usize> {
    if prompt_len >= max_pos {
        bail!(
            "the prompt is {prompt_len} tokens but the model's context (max_position_embeddings) \
             is {max_pos}: shorten the prompt"
        )
    }
    let room = max_pos - prompt_len;
    if max_tokens > room {
        eprintln!(
            "note: --max-tokens {max_tokens} lowered to {room} to stay within the {max_pos}-token context"
        );
    }
    Ok(max_tokens.min(room))
}
