//! `emilio generate`: prompt in, tokens streamed out, timings on stderr.

use std::io::Write;
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use candle_core::Tensor;
use candle_transformers::generation::{LogitsProcessor, Sampling};
use tokenizers::Tokenizer;

use crate::cli::{GenerateArgs, PromptArgs};
use crate::runner::Runner;
use crate::stream::TextStream;
use crate::{device, source};

/// Tokens that end a reply.
const STOP_TOKENS: [&str; 2] = ["<|im_end|>", "<|endoftext|>"];

pub fn run(args: &GenerateArgs) -> Result<()> {
    let device = device::open(args.model.device)?;
    let files = source::resolve(&args.model.model, &args.model.revision)?;
    let tokenizer = files.tokenizer()?;
    let prompt = encode_prompt(&tokenizer, &args.prompt)?;
    let max_pos = files.checkpoint.config.max_position_embeddings;
    let max_tokens = fit_context(prompt.len(), args.max_tokens, max_pos)?;
    let (mut model, load_time) = Runner::load(
        &files,
        args.backend,
        args.model.weight_format,
        args.model.dtype.dtype(),
        &device,
    )?;

    let sampling = match (args.temperature, args.top_p) {
        (0.0, _) => Sampling::ArgMax,
        (temperature, Some(p)) => Sampling::TopP { p, temperature },
        (temperature, None) => Sampling::All { temperature },
    };
    let mut sampler = LogitsProcessor::from_sampling(args.seed, sampling);
    let stops = stop_ids(&tokenizer);

    let mut tokens = prompt.clone();
    let mut stream = TextStream::new(&tokenizer);
    let mut out = std::io::stdout().lock();
    let start = Instant::now();
    let mut prefill_secs = 0.0;
    let mut generated = 0usize;
    for step in 0..max_tokens {
        let (input, offset) = if step == 0 {
            (&tokens[..], 0)
        } else {
            (&tokens[tokens.len() - 1..], tokens.len() - 1)
        };
        let ids = Tensor::new(input, &device)?.unsqueeze(0)?;
        let mut logits = model.forward(&ids, offset)?.squeeze(0)?;
        if args.repeat_penalty != 1.0 {
            let from = tokens.len().saturating_sub(args.repeat_last_n);
            logits = candle_transformers::utils::apply_repeat_penalty(
                &logits,
                args.repeat_penalty,
                &tokens[from..],
            )?;
        }
        let next = sampler.sample(&logits)?;
        if step == 0 {
            prefill_secs = start.elapsed().as_secs_f64();
        }
        generated += 1;
        tokens.push(next);
        if stops.contains(&next) {
            break;
        }
        if let Some(text) = stream.push(next)? {
            write!(out, "{text}")?;
            out.flush()?;
        }
    }
    if let Some(text) = stream.finish()? {
        write!(out, "{text}")?;
    }
    writeln!(out)?;
    let total = start.elapsed().as_secs_f64();
    let decode_steps = generated.saturating_sub(1);
    let decode_secs = total - prefill_secs;
    eprintln!(
        "{} backend: loaded in {:.2}s; prefill {} tokens at {:.1} tok/s; decode {} tokens at {:.1} tok/s",
        match args.backend {
            crate::cli::Backend::Emilio => format!("emilio ({})", args.model.weight_format),
            crate::cli::Backend::Stock => "stock".to_string(),
        },
        load_time.as_secs_f64(),
        prompt.len(),
        prompt.len() as f64 / prefill_secs.max(1e-9),
        decode_steps,
        if decode_steps > 0 {
            decode_steps as f64 / decode_secs.max(1e-9)
        } else {
            0.0
        },
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

/// Ids of the tokens that end generation, among those the tokenizer has.
pub fn stop_ids(tokenizer: &Tokenizer) -> Vec<u32> {
    STOP_TOKENS
        .iter()
        .filter_map(|t| tokenizer.token_to_id(t))
        .collect()
}
