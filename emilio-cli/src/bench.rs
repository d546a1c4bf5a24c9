//! `emilio bench`: speed against stock Candle, measured in the same run, as ratios.

use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{Device, Module, Tensor};
use emilio_op::{LogLinear, WeightFormat};
use emilio_qwen::generation::{Generator, Greedy};
use serde::Serialize;

use crate::cli::{Backend, BenchArgs, BenchModelArgs, BenchOpArgs, BenchTarget};
use crate::runner::Runner;
use crate::{device, source};

pub fn run(args: &BenchArgs) -> Result<()> {
    match &args.target {
        BenchTarget::Op(a) => op(a),
        BenchTarget::Model(a) => model(a),
    }
}

/// Median seconds of `reps` runs of `f`, after one warm-up run.
fn median_secs<T>(reps: usize, mut f: impl FnMut() -> Result<T>) -> Result<f64> {
    f()?;
    let mut times = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// The linear layers of Qwen2.5-0.5B: (name, in, out).
const QWEN25_05B_LINEARS: [(&str, usize, usize); 5] = [
    ("q_proj / o_proj", 896, 896),
    ("k_proj / v_proj", 896, 128),
    ("gate / up", 896, 4864),
    ("down", 4864, 896),
    ("lm_head", 896, 151_936),
];

#[derive(Debug, Serialize)]
struct OpCase {
    layer: String,
    rows: usize,
    k: usize,
    n: usize,
    stock_ms: f64,
    emilio_f32_ms: f64,
    emilio_f16_ms: f64,
    /// stock time / emilio time (above 1: emilio is faster).
    speedup_f32: f64,
    speedup_f16: f64,
    /// Weight bytes each implementation must read per call.
    stock_bytes: usize,
    emilio_f16_bytes: usize,
    /// Weight bytes read per second by emilio f16 (GB/s), meaningful for decode rows.
    emilio_f16_gb_s: f64,
    /// Products (exp evaluations) per second, emilio f16, in billions.
    emilio_f16_gprod_s: f64,
    /// emilio f16's products per second as a fraction of the machine's exp ceiling (CPU only).
    exp_ceiling_fraction: Option<f64>,
    /// emilio f16's weight bytes per second as a fraction of the machine's read bandwidth.
    bandwidth_fraction: f64,
}

#[derive(Debug, Serialize)]
struct OpReport {
    /// `cpu`, `cuda` or `metal`.
    device: &'static str,
    /// The CPU kernels' instruction set (CPU runs only).
    isa: Option<&'static str>,
    threads: usize,
    reps: usize,
    /// Products per second of the dot kernel with L1-resident operands on all threads
    /// (`emilio_op::machine::exp_ceiling`), in billions (CPU runs only).
    exp_ceiling_gprod_s: Option<f64>,
    /// The bandwidth the weights are read at, at best, in GB/s: on the CPU, all threads summing
    /// a 256 MiB buffer (`emilio_op::machine::memory_read_bandwidth`); on a GPU, a 512 MiB
    /// device-to-device copy, counting bytes read plus bytes written.
    memory_read_gb_s: f64,
    cases: Vec<OpCase>,
}

/// A GPU's memory bandwidth: a device-to-device copy of 512 MiB of random f32 (random, not
/// zeros, so no compression or zero shortcut flatters it), bytes read plus written, median of 5.
fn device_copy_bandwidth(dev: &Device) -> Result<f64> {
    let elems = 128usize << 20;
    let src = Tensor::randn(0f32, 1.0, elems, dev)?;
    let secs = median_secs(5, || {
        let copy = src.copy()?;
        dev.synchronize()?;
        Ok(copy)
    })?;
    Ok(2.0 * (elems * 4) as f64 / secs)
}

fn op(args: &BenchOpArgs) -> Result<()> {
    let dev = device::open(args.device)?;
    let (exp_ceiling, bandwidth) = if dev.is_cpu() {
        (
            Some(emilio_op::machine::exp_ceiling(
                std::time::Duration::from_millis(300),
            )),
            emilio_op::machine::memory_read_bandwidth(256 << 20, 3),
        )
    } else {
        (None, device_copy_bandwidth(&dev)?)
    };
    // Each timed call waits for the device, so GPU times are of finished work.
    let timed = |f: &dyn Fn() -> candle_core::Result<Tensor>| -> Result<Tensor> {
        let y = f()?;
        dev.synchronize()?;
        Ok(y)
    };
    let mut cases = Vec::new();
    for (layer, k, n) in QWEN25_05B_LINEARS {
        for rows in [1, args.prefill_rows] {
            if layer == "lm_head" && rows > 1 {
                continue; // generation applies the head to the last position only
            }
            let x = Tensor::randn(0f32, 1.0, (rows, k), &dev)?;
            let w = Tensor::randn(0f32, 0.02, (n, k), &dev)?;
            let stock = candle_nn::Linear::new(w.clone(), None);
            let f32w = LogLinear::from_weights(&w, None, WeightFormat::F32)?;
            let f16w = LogLinear::from_weights(&w, None, WeightFormat::F16)?;
            let reps = if rows == 1 { args.reps * 3 } else { args.reps };
            let stock_s = median_secs(reps, || timed(&|| stock.forward(&x)))?;
            let f32_s = median_secs(reps, || timed(&|| f32w.forward(&x)))?;
            let f16_s = median_secs(reps, || timed(&|| f16w.forward(&x)))?;
            let f16_bytes = f16w.weight().size_in_bytes();
            let products = (rows * k * n) as f64;
            cases.push(OpCase {
                layer: layer.to_string(),
                rows,
                k,
                n,
                stock_ms: stock_s * 1e3,
                emilio_f32_ms: f32_s * 1e3,
                emilio_f16_ms: f16_s * 1e3,
                speedup_f32: stock_s / f32_s,
                speedup_f16: stock_s / f16_s,
                stock_bytes: n * k * 4,
                emilio_f16_bytes: f16_bytes,
                emilio_f16_gb_s: f16_bytes as f64 / f16_s / 1e9,
                emilio_f16_gprod_s: products / f16_s / 1e9,
                exp_ceiling_fraction: exp_ceiling.map(|c| products / f16_s / c),
                bandwidth_fraction: f16_bytes as f64 / f16_s / bandwidth,
            });
        }
    }
    let report = OpReport {
        device: device::label(&dev),
        isa: dev.is_cpu().then(emilio_op::cpu_isa),
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        reps: args.reps,
        exp_ceiling_gprod_s: exp_ceiling.map(|c| c / 1e9),
        memory_read_gb_s: bandwidth / 1e9,
        cases,
    };
    if args.json {
        crate::output::emit(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
        return Ok(());
    }
    let mut o = String::new();
    match (report.isa, report.exp_ceiling_gprod_s) {
        (Some(isa), Some(exp)) => {
            outln!(
                o,
                "emilio bench op: Qwen2.5-0.5B linear shapes, CPU ({isa} kernels, {} threads), median of {} reps (3x for decode)",
                report.threads, report.reps
            );
            outln!(
                o,
                "machine ceilings: exp kernel {exp:.2} G products/s (L1-resident, all threads); memory read {:.1} GB/s",
                report.memory_read_gb_s
            );
        }
        _ => {
            outln!(
                o,
                "emilio bench op: Qwen2.5-0.5B linear shapes, {} device, median of {} reps (3x for decode)",
                report.device, report.reps
            );
            outln!(
                o,
                "device ceiling: memory {:.1} GB/s (device-to-device copy, bytes read + written)",
                report.memory_read_gb_s
            );
        }
    }
    outln!(
        o,
        "{:<18} {:>5} {:>6}  {:>10} {:>10} {:>10}  {:>8} {:>8}  {:>8} {:>5}  {:>9} {:>5}",
        "layer",
        "rows",
        "k→n",
        "stock ms",
        "f32 ms",
        "f16 ms",
        "f32 ×",
        "f16 ×",
        "f16 GB/s",
        "%bw",
        "f16 Gp/s",
        "%exp"
    );
    for c in &report.cases {
        outln!(
            o,
            "{:<18} {:>5} {:>6}  {:>10.3} {:>10.3} {:>10.3}  {:>7.3}x {:>7.3}x  {:>8.2} {:>4.0}%  {:>9.2} {:>5}",
            c.layer,
            c.rows,
            format!("{}→{}", c.k, c.n),
            c.stock_ms,
            c.emilio_f32_ms,
            c.emilio_f16_ms,
            c.speedup_f32,
            c.speedup_f16,
            c.emilio_f16_gb_s,
            c.bandwidth_fraction * 100.0,
            c.emilio_f16_gprod_s,
            c.exp_ceiling_fraction
                .map_or("-".to_string(), |f| format!("{:.0}%", f * 100.0))
        );
    }
    outln!(
        o,
        "× = stock time / emilio time (above 1: emilio faster). GB/s = log-weight bytes read per \
         second (%bw: of the memory read bandwidth); Gp/s = products per second (%exp: of the exp \
         ceiling)."
    );
    crate::output::emit(&o)
}

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
    device: &'static str,
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
    let run = Generator::new(m, Greedy, dev).run(prompt, decode + 1, |_| {
        Ok::<_, candle_core::Error>(())
    })?;
    Ok((run.timings.prefill_secs(), run.timings.decode_secs()))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn model(args: &BenchModelArgs) -> Result<()> {
    let dev = device::open(args.model.device)?;
    let files = source::resolve(&args.model.model, &args.model.revision)?;
    let cfg = files.checkpoint.config.clone();
    let needed = args.prompt_tokens + args.decode_tokens;
    if args.prompt_tokens == 0 || needed > cfg.max_position_embeddings {
        anyhow::bail!(
            "--prompt-tokens {} + --decode-tokens {} must be between 1 and the model's context of {}",
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
        device: device::label(&dev),
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
    let h = cfg.hidden_size;
    let head_dim = h / cfg.num_attention_heads;
    let kv = cfg.num_key_value_heads * head_dim;
    let per_layer = h * h * 2 + h * kv * 2 + 3 * h * cfg.intermediate_size;
    per_layer * cfg.num_hidden_layers + cfg.vocab_size * h
}
