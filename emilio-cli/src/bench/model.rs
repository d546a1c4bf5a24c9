//! `emilio bench model`: prefill and decode tokens/s of both backends on one checkpoint, through
//! the generation engine every command runs.

use anyhow::{Context, Result};
use candle_core::Device;
use emilio_qwen::generation::{Generator, Greedy};
use serde::Serialize;

use super::{linear_layers, median};
use crate::cli::{Backend, BenchModelArgs};
use crate::runner::Runner;
use crate::{device, source};

#[derive(Debug, Serialize)]
struct ModelSide {
    prefill_tok_s: f64,
    decode_tok_s: f64,
    /// Weight bytes read per decoded token (every linear layer and the head once).
    weight_bytes_per_token: usize,
    load_secs: f64,
}

#[derive(Debug, Serialize)]
struct ModelReport {
    model: String,
    weight_format: String,
    /// Activations' and stock weights' dtype (`f32`, `f16`, `bf16`).
    dtype: String,
    /// `cpu`, `cuda` or `metal`.
    device: String,
    /// The CPU kernels' instruction set (used on the CPU device only).
    isa: &'static str,
    prompt_tokens: usize,
    decode_tokens: usize,
    reps: usize,
    stock: ModelSide,
    emilio: ModelSide,
    /// emilio / stock tokens per second (above 1: emilio is faster).
    prefill_ratio: f64,
    decode_ratio: f64,
}

/// (prefill seconds, decode seconds) of one run: the prompt, then `decode` greedy steps (no
/// stop tokens, so every run does the same work).
fn time_run(m: &mut Runner, prompt: &[u32], decode: usize, dev: &Device) -> Result<(f64, f64)> {
    let run = Generator::new(m, Greedy, dev)
        .run(prompt, decode + 1, |_| Ok::<_, candle_core::Error>(()))?;
    Ok((run.timings.prefill_secs(), run.timings.decode_secs()))
}

pub fn run(args: &BenchModelArgs) -> Result<()> {
    let dev = device::open(args.model.device)?;
    let files = source::resolve(&args.model.model, &args.model.revision)?;
    let cfg = files.checkpoint.config.clone();
    let needed = args.prompt_tokens + args.decode_tokens;
    // Both rates need something to time: zero tokens would be a 0/0 ratio ("NaNx").
    if args.prompt_tokens == 0 || args.decode_tokens == 0 || needed > cfg.max_position_embeddings {
        anyhow::bail!(
            "--prompt-tokens {} and --decode-tokens {} must each be at least 1, and together at \
             most the model's context of {}",
            args.prompt_tokens,
            args.decode_tokens,
            cfg.max_position_embeddings
        )
    }
    // A fixed pseudo-random prompt of ordinary token ids (no specials).
    let vocab = files.tokenizer()?.get_vocab_size(false).min(cfg.vocab_size) as u64;
    let prompt: Vec<u32> = (0..args.prompt_tokens as u64)
        .map(|i| ((i * 2_654_435_761 + 12_345) % vocab.max(1)) as u32)
        .collect();
    let format = args.model.weight_format;
    let dtype = args.model.dtype.dtype();
    let (mut stock, stock_load) = Runner::load(&files, Backend::Stock, format, dtype, &dev)?;
    let (mut emilio, emilio_load) = Runner::load(&files, Backend::Emilio, format, dtype, &dev)?;
    let (mut sp, mut sd, mut ep, mut ed) = (vec![], vec![], vec![], vec![]);
    // Alternate the backends so drift in machine load affects both alike.
    for _ in 0..args.reps.max(1) {
        let (p, d) = time_run(&mut stock, &prompt, args.decode_tokens, &dev)?;
        sp.push(p);
        sd.push(d);
        let (p, d) = time_run(&mut emilio, &prompt, args.decode_tokens, &dev)?;
        ep.push(p);
        ed.push(d);
    }
    let params = linear_params(&cfg);
    let log_bytes = emilio
        .log_weight_bytes()
        .context("the emilio backend reports its weight bytes")?;
    let tok_s = |n: usize, secs: f64| n as f64 / secs.max(1e-9);
    let stock_side = ModelSide {
        prefill_tok_s: tok_s(args.prompt_tokens, median(sp)),
        decode_tok_s: tok_s(args.decode_tokens, median(sd)),
        weight_bytes_per_token: params * dtype.size_in_bytes(),
        load_secs: stock_load.as_secs_f64(),
    };
    let emilio_side = ModelSide {
        prefill_tok_s: tok_s(args.prompt_tokens, median(ep)),
        decode_tok_s: tok_s(args.decode_tokens, median(ed)),
        weight_bytes_per_token: log_bytes,
        load_secs: emilio_load.as_secs_f64(),
    };
    let report = ModelReport {
        model: files.label.clone(),
        weight_format: format.to_string(),
        dtype: dtype.as_str().to_string(),
        device: args.model.device.name(),
        isa: emilio_op::cpu_isa(),
        prompt_tokens: args.prompt_tokens,
        decode_tokens: args.decode_tokens,
        reps: args.reps.max(1),
        prefill_ratio: emilio_side.prefill_tok_s / stock_side.prefill_tok_s,
        decode_ratio: emilio_side.decode_tok_s / stock_side.decode_tok_s,
        stock: stock_side,
        emilio: emilio_side,
    };
    if args.json {
        crate::output::emit(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
        return Ok(());
    }
    let mut o = String::new();
    outln!(
        o,
        "emilio bench model: {} | {} | prompt {} tokens, decode {} tokens | median of {} | {}",
        report.model,
        report.dtype,
        report.prompt_tokens,
        report.decode_tokens,
        report.reps,
        if report.device == "cpu" {
            format!("CPU kernels {}", report.isa)
        } else {
            format!("{} device", report.device)
        }
    );
    outln!(
        o,
        "{:<16} {:>14} {:>13} {:>16} {:>9}",
        "backend",
        "prefill tok/s",
        "decode tok/s",
        "weight MB/token",
        "load (s)"
    );
    for (name, s) in [
        (format!("stock {}", report.dtype), &report.stock),
        (format!("emilio {}", report.weight_format), &report.emilio),
    ] {
        outln!(
            o,
            "{:<16} {:>14.2} {:>13.2} {:>16.1} {:>9.2}",
            name,
            s.prefill_tok_s,
            s.decode_tok_s,
            s.weight_bytes_per_token as f64 / 1e6,
            s.load_secs
        );
    }
    outln!(
        o,
        "{:<16} {:>13.3}x {:>12.3}x {:>15.3}x",
        "emilio / stock",
        report.prefill_ratio,
        report.decode_ratio,
        report.emilio.weight_bytes_per_token as f64 / report.stock.weight_bytes_per_token as f64
    );
    crate::output::emit(&o)
}

/// Weights of every linear layer and the head: what a decode step reads.
fn linear_params(cfg: &emilio_qwen::Config) -> usize {
    linear_layers(cfg).iter().map(|l| l.count * l.k * l.n).sum()
}
