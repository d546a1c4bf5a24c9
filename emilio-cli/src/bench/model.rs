//! `emilio bench model`: prefill and decode tokens/s of each backend on one model, through the
//! generation engine every command runs, with the ratios of emilio to each other backend.
//!
//! On a GGUF file the three backends are emilio (log-domain weights converted from the
//! dequantized tensors), stock Candle f32 on the same dequantized weights, and Candle's own
//! quantized model on the file (what a Candle user runs a GGUF with today).

use anyhow::{bail, Result};
use candle_core::Device;
use emilio_qwen::generation::{Generator, Greedy};
use serde::Serialize;

use super::{linear_layers, median};
use crate::cli::{Backend, BenchModelArgs};
use crate::memory::LoadMemory;
use crate::runner::Runner;
use crate::source::ModelFiles;
use crate::{device, source};

#[derive(Debug, Serialize)]
struct ModelSide {
    /// `emilio`, `stock` or `stock-quantized`.
    backend: String,
    prefill_tok_s: f64,
    decode_tok_s: f64,
    /// Weight bytes read per decoded token (every linear layer and the head once).
    weight_bytes_per_token: usize,
    load_secs: f64,
    /// Resident memory around the load (Linux only).
    load_memory: Option<LoadMemory>,
}

/// emilio's speed over another backend's (above 1: emilio is faster).
#[derive(Debug, Serialize)]
struct Ratio {
    versus: String,
    prefill_ratio: f64,
    decode_ratio: f64,
    /// emilio's weight bytes per token over the other's (below 1: emilio reads fewer).
    weight_bytes_ratio: f64,
}

#[derive(Debug, Serialize)]
pub struct ModelReport {
    model: String,
    /// `qwen2` or `llama`.
    architecture: String,
    weight_format: String,
    /// How the products' exp is taken (`--exp`).
    exp: String,
    /// Activations' and stock weights' dtype (`f32`, `f16`, `bf16`).
    dtype: String,
    /// `cpu`, `cuda` or `metal`.
    device: String,
    /// The CPU kernels' instruction set (used on the CPU device only).
    isa: &'static str,
    prompt_tokens: usize,
    decode_tokens: usize,
    reps: usize,
    /// Bytes of the largest tensor in f32 (GGUF files): what loading may hold beyond the model.
    largest_tensor_f32_bytes: Option<usize>,
    /// Bytes the emilio model holds once loaded (log weights, embedding, norms, rotary tables).
    pub emilio_model_bytes: Option<usize>,
    backends: Vec<ModelSide>,
    /// emilio against every other backend timed.
    ratios: Vec<Ratio>,
    /// emilio / stock (also in `ratios`), when both were timed.
    pub prefill_ratio: Option<f64>,
    pub decode_ratio: Option<f64>,
}

/// (prefill seconds, decode seconds) of one run: the prompt, then `decode` greedy steps (no
/// stop tokens, so every run does the same work).
fn time_run(m: &mut Runner, prompt: &[u32], decode: usize, dev: &Device) -> Result<(f64, f64)> {
    let run = Generator::new(m, Greedy, dev)
        .run(prompt, decode + 1, |_| Ok::<_, candle_core::Error>(()))?;
    Ok((run.timings.prefill_secs(), run.timings.decode_secs()))
}

/// The backends to time: those asked for (each once, in order), else emilio and stock, and
/// Candle's quantized model for a GGUF file.
fn backends(args: &BenchModelArgs, files: &ModelFiles) -> Result<Vec<Backend>> {
    let mut chosen: Vec<Backend> = Vec::new();
    for &b in &args.backends {
        if !chosen.contains(&b) {
            chosen.push(b);
        }
    }
    if chosen.is_empty() {
        chosen = vec![Backend::Emilio, Backend::Stock];
        if files.checkpoint.gguf.is_some() {
            chosen.push(Backend::StockQuantized);
        }
    }
    if chosen.contains(&Backend::StockQuantized) && files.checkpoint.gguf.is_none() {
        bail!(
            "--backends stock-quantized times Candle's quantized model on a GGUF file, and {} is \
             not one",
            files.label
        )
    }
    Ok(chosen)
}

pub fn run(args: &BenchModelArgs) -> Result<()> {
    let report = measure(args)?;
    if args.json {
        crate::output::emit(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
        return Ok(());
    }
    crate::output::emit(&table(&report))
}

/// Everything `emilio bench model` measures, as its report (what `emilio sweep` runs per pair).
pub fn measure(args: &BenchModelArgs) -> Result<ModelReport> {
    let dev = device::open_for(&args.model, true)?;
    let files = source::open(&args.model)?;
    let cfg = files.checkpoint.config.clone();
    let chosen = backends(args, &files)?;
    let format = args.model.weight_format;
    let dtype = args.model.dtype.dtype();
    let mut loaded = Vec::with_capacity(chosen.len());
    for &b in &chosen {
        let (runner, load) = Runner::load(&files, b, &args.model, &dev)?;
        loaded.push((b, runner, load));
    }
    let context = loaded
        .iter()
        .map(|(_, r, _)| r.max_positions(&files))
        .min()
        .unwrap_or(cfg.max_position_embeddings);
    let needed = args.prompt_tokens + args.decode_tokens;
    // Both rates need something to time: zero tokens would be a 0/0 ratio ("NaNx").
    if args.prompt_tokens == 0 || args.decode_tokens == 0 || needed > context {
        bail!(
            "--prompt-tokens {} and --decode-tokens {} must each be at least 1, and together at \
             most the context of {context} (the shortest of the backends timed)",
            args.prompt_tokens,
            args.decode_tokens,
        )
    }
    // A fixed pseudo-random prompt of ordinary token ids (no specials).
    let vocab = files.tokenizer()?.get_vocab_size(false).min(cfg.vocab_size) as u64;
    let prompt: Vec<u32> = (0..args.prompt_tokens as u64)
        .map(|i| ((i * 2_654_435_761 + 12_345) % vocab.max(1)) as u32)
        .collect();
    let reps = args.reps.max(1);
    let mut times: Vec<(Vec<f64>, Vec<f64>)> = vec![(vec![], vec![]); loaded.len()];
    // Alternate the backends so drift in machine load affects all alike.
    for _ in 0..reps {
        for ((_, runner, _), (p, d)) in loaded.iter_mut().zip(times.iter_mut()) {
            let (pt, dt) = time_run(runner, &prompt, args.decode_tokens, &dev)?;
            p.push(pt);
            d.push(dt);
        }
    }
    let params = linear_params(&cfg);
    let tok_s = |n: usize, secs: f64| n as f64 / secs.max(1e-9);
    let mut emilio_model_bytes = None;
    let sides: Vec<ModelSide> = loaded
        .iter()
        .zip(times)
        .map(|((b, runner, load), (p, d))| {
            if let Runner::Emilio(m) = runner {
                emilio_model_bytes = Some(m.memory_bytes());
            }
            ModelSide {
                backend: b.name(),
                prefill_tok_s: tok_s(args.prompt_tokens, median(p)),
                decode_tok_s: tok_s(args.decode_tokens, median(d)),
                weight_bytes_per_token: match runner {
                    Runner::Emilio(m) => m.log_weight_bytes(),
                    Runner::Stock(_) => params * dtype.size_in_bytes(),
                    Runner::StockQuantized(_) => files
                        .checkpoint
                        .gguf
                        .as_ref()
                        .map_or(0, |g| g.linear_weight_bytes()),
                },
                load_secs: load.time.as_secs_f64(),
                load_memory: load.memory,
            }
        })
        .collect();
    let ratios: Vec<Ratio> = match sides.iter().find(|s| s.backend == Backend::Emilio.name()) {
        None => Vec::new(),
        Some(e) => sides
            .iter()
            .filter(|s| s.backend != e.backend)
            .map(|s| Ratio {
                versus: s.backend.clone(),
                prefill_ratio: e.prefill_tok_s / s.prefill_tok_s,
                decode_ratio: e.decode_tok_s / s.decode_tok_s,
                weight_bytes_ratio: e.weight_bytes_per_token as f64
                    / s.weight_bytes_per_token.max(1) as f64,
            })
            .collect(),
    };
    let vs_stock = ratios.iter().find(|r| r.versus == Backend::Stock.name());
    let report = ModelReport {
        model: files.label.clone(),
        architecture: cfg.architecture.to_string(),
        weight_format: format.to_string(),
        exp: args.model.exp.to_string(),
        dtype: dtype.as_str().to_string(),
        device: args.model.device.name(),
        isa: emilio_op::cpu_isa(),
        prompt_tokens: args.prompt_tokens,
        decode_tokens: args.decode_tokens,
        reps,
        largest_tensor_f32_bytes: files
            .checkpoint
            .gguf
            .as_ref()
            .map(|g| g.largest_tensor_f32_bytes()),
        emilio_model_bytes,
        prefill_ratio: vs_stock.map(|r| r.prefill_ratio),
        decode_ratio: vs_stock.map(|r| r.decode_ratio),
        backends: sides,
        ratios,
    };
    Ok(report)
}

fn table(report: &ModelReport) -> String {
    let mut o = String::new();
    outln!(
        o,
        "emilio bench model: {} ({}) | {} | prompt {} tokens, decode {} tokens | median of {} | {}",
        report.model,
        report.architecture,
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
        "{:<22} {:>14} {:>13} {:>16} {:>9} {:>16}",
        "backend",
        "prefill tok/s",
        "decode tok/s",
        "weight MB/token",
        "load (s)",
        "load peak +MB"
    );
    for s in &report.backends {
        let name = if s.backend == Backend::Emilio.name() {
            format!(
                "emilio {}",
                crate::cli::log_label(&report.weight_format, &report.exp)
            )
        } else if s.backend == Backend::Stock.name() {
            format!("stock {}", report.dtype)
        } else {
            s.backend.clone()
        };
        outln!(
            o,
            "{:<22} {:>14.2} {:>13.2} {:>16.1} {:>9.2} {:>16}",
            name,
            s.prefill_tok_s,
            s.decode_tok_s,
            s.weight_bytes_per_token as f64 / 1e6,
            s.load_secs,
            s.load_memory.map_or("-".to_string(), |m| format!(
                "{:.0}",
                m.peak_growth_bytes() as f64 / 1e6
            ))
        );
    }
    for r in &report.ratios {
        outln!(
            o,
            "{:<22} {:>13.3}x {:>12.3}x {:>15.3}x",
            format!("emilio / {}", r.versus),
            r.prefill_ratio,
            r.decode_ratio,
            r.weight_bytes_ratio
        );
    }
    if let (Some(model), Some(largest)) =
        (report.emilio_model_bytes, report.largest_tensor_f32_bytes)
    {
        outln!(
            o,
            "emilio model {:.0} MB; largest tensor in f32 {:.0} MB",
            model as f64 / 1e6,
            largest as f64 / 1e6
        );
    }
    o
}

/// Weights of every linear layer and the head: what a decode step reads.
fn linear_params(cfg: &emilio_qwen::Config) -> usize {
    linear_layers(cfg).iter().map(|l| l.count * l.k * l.n).sum()
}
