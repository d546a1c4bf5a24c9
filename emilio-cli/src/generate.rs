//! `emilio generate`: prompt in, tokens streamed out, timings on stderr.

use std::io::Write;

use anyhow::{bail, Result};
use emilio_qwen::generation::{sampling, Generator, Sampled};

use crate::cli::{GenerateArgs, SamplingArgs};
use crate::prompt::encode_prompt;
use crate::runner::Runner;
use crate::stream::TextStream;
use crate::{device, source};

pub fn run(args: &GenerateArgs) -> Result<()> {
    let device = device::open_for(&args.model, args.backend == crate::cli::Backend::Emilio)?;
    let files = source::open(&args.model)?;
    let tokenizer = files.tokenizer()?;
    let template = files.chat_template()?;
    let prompt = encode_prompt(
        &tokenizer,
        template.as_ref(),
        &args.prompt,
        &files.tokenizer_source(),
    )?;
    let stops = files.stop_tokens(&tokenizer)?;
    let (mut model, load) = Runner::load(&files, args.backend, &args.model, &device)?;
    let max_tokens = fit_context(prompt.len(), args.max_tokens, model.max_positions(&files))?;
    crate::memory::check_kv_cache(
        &files.checkpoint.config,
        prompt.len() + max_tokens,
        args.model.dtype.dtype(),
        1,
    )?;

    let mut generator =
        Generator::new(&mut model, sampler(&args.sampling), &device).with_stop_tokens(stops);
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
            crate::cli::Backend::Emilio => format!("emilio ({})", args.model.log_label()),
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

/// The sampler `--temperature`, `--top-p`, `--seed` and `--repeat-penalty` ask for.
pub fn sampler(args: &SamplingArgs) -> Sampled {
    Sampled::new(args.seed, sampling(args.temperature, args.top_p))
        .with_repeat_penalty(args.repeat_penalty, args.repeat_last_n)
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
