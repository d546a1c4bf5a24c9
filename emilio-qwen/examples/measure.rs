//! Accuracy and memory of the log-domain Qwen2 against stock Candle, on a synthetic checkpoint.
//!
//! ```text
//! # worst relative logit error, KL divergence and top-1 agreement per format, prefill + decode
//! cargo run --release -p emilio-qwen --example measure -- accuracy --preset tiny
//! cargo run --release -p emilio-qwen --example measure -- accuracy --preset qwen2.5-0.5b \
//!     --prompt-tokens 16 --decode 4 --dir /tmp/qwen05b
//! # peak resident memory while loading, each backend in a fresh process
//! cargo run --release -p emilio-qwen --example measure -- memory --preset qwen2.5-0.5b \
//!     --dir /tmp/qwen05b
//! ```
//!
//! `--dir` keeps the checkpoint (it is reused when it already holds one written with the same
//! preset and seed); without it a temporary directory is used and removed. Other options:
//! `--seed N` (default 0), `--stored bf16|f16|f32` (default bf16), `--untied`.
//!
//! Metrics, per position (the prefill's last position, then each decode step; both models are fed
//! stock's greedy tokens):
//! - `rel max`: `max_i |ours_i − stock_i| / max_i |stock_i|`;
//! - `rel l2`: `‖ours − stock‖₂ / ‖stock‖₂`;
//! - `KL`: `KL(softmax(stock) ‖ softmax(ours))` in nats, computed in `f64`;
//! - `top-1`: whether the argmaxes agree.
//!
//! Memory (Linux): each backend loads in a child process, which reports `VmHWM` (peak resident
//! set, including the pages of the memory-mapped weight file touched while loading), the peak of
//! `RssAnon` sampled every 2 ms during the load (memory the process owns, without file pages), and
//! `RssAnon` once loaded.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, IndexOp, Result, Tensor};
use emilio_qwen::compare::{argmax, kl_divergence};
use emilio_qwen::generation::CausalLM;
use emilio_qwen::loading::Checkpoint;
use emilio_qwen::synthetic::{write_checkpoint, Preset, SyntheticSpec};
use emilio_qwen::{Options, WeightFormat};

const PROMPT_TEXT: &str = "The model reads the prompt, and then it will write what the user \
    asked for: hello world, one token at a time, with the log domain for all of the products.";

struct Args {
    cmd: String,
    preset: Preset,
    dir: Option<PathBuf>,
    seed: u64,
    stored: DType,
    tied: Option<bool>,
    prompt_tokens: usize,
    decode: usize,
    backend: String,
}

fn parse_args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let cmd = it.next().unwrap_or_else(|| "help".into());
    let mut a = Args {
        cmd,
        preset: Preset::Tiny,
        dir: None,
        seed: 0,
        stored: DType::BF16,
        tied: None,
        prompt_tokens: 16,
        decode: 8,
        backend: "f16".into(),
    };
    while let Some(flag) = it.next() {
        let mut val = || {
            it.next()
                .ok_or_else(|| candle_core::Error::msg(format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--preset" => a.preset = val()?.parse()?,
            "--dir" => a.dir = Some(PathBuf::from(val()?)),
            "--seed" => a.seed = val()?.parse().map_err(candle_core::Error::wrap)?,
            "--stored" => {
                a.stored = match val()?.as_str() {
                    "bf16" => DType::BF16,
                    "f16" => DType::F16,
                    "f32" => DType::F32,
                    other => candle_core::bail!("--stored {other}: expected bf16, f16 or f32"),
                }
            }
            "--untied" => a.tied = Some(false),
            "--prompt-tokens" => {
                a.prompt_tokens = val()?.parse().map_err(candle_core::Error::wrap)?
            }
            "--decode" => a.decode = val()?.parse().map_err(candle_core::Error::wrap)?,
            "--backend" => a.backend = val()?,
            other => candle_core::bail!("unknown option {other}"),
        }
    }
    Ok(a)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    match args.cmd.as_str() {
        "accuracy" => with_checkpoint(&args, |dir| accuracy(&args, dir)),
        "memory" => with_checkpoint(&args, memory),
        "load-rss" => load_rss(args.dir.as_deref().expect("--dir"), &args.backend),
        _ => {
            eprintln!(
                "usage: measure accuracy|memory [--preset tiny|qwen2.5-0.5b] [--dir DIR] \
                 [--seed N] [--stored bf16|f16|f32] [--untied] [--prompt-tokens N] [--decode N]"
            );
            Ok(())
        }
    }
}

/// Runs `f` on a checkpoint directory: `--dir` (written unless it already holds this spec's
/// checkpoint) or a temporary one.
fn with_checkpoint(args: &Args, f: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let mut spec = SyntheticSpec::new(args.preset)
        .with_seed(args.seed)
        .with_dtype(args.stored);
    if let Some(t) = args.tied {
        spec = spec.with_tied(t);
    }
    let (dir, temp) = match &args.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("emilio-measure-{}", std::process::id())),
            true,
        ),
    };
    let want = spec.config_json()?;
    let have: Option<serde_json::Value> = std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok());
    if have.as_ref() != Some(&want) || Checkpoint::from_dir(&dir).is_err() {
        let t = Instant::now();
        eprintln!("writing {} checkpoint to {}", args.preset, dir.display());
        write_checkpoint(&dir, &spec)?;
        eprintln!("  written in {:.1} s", t.elapsed().as_secs_f64());
    } else {
        eprintln!("reusing the checkpoint in {}", dir.display());
    }
    let r = f(&dir);
    if temp {
        let _ = std::fs::remove_dir_all(&dir);
    }
    r
}

fn prompt_ids(dir: &Path, n: usize) -> Result<Vec<u32>> {
    let tok = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))
        .map_err(|e| candle_core::Error::msg(format!("tokenizer: {e}")))?;
    let ids = tok
        .encode(PROMPT_TEXT, false)
        .map_err(|e| candle_core::Error::msg(format!("tokenizer: {e}")))?
        .get_ids()
        .to_vec();
    Ok(ids.iter().cycle().take(n).copied().collect())
}

fn last_logits(t: &Tensor) -> Result<Vec<f32>> {
    t.i((0, 0))?.to_dtype(DType::F32)?.to_vec1()
}

/// `(rel max, rel l2, KL(stock‖ours), top-1 agrees)`.
fn compare(s: &[f32], o: &[f32]) -> (f64, f64, f64, bool) {
    let max_s = s.iter().fold(0f64, |m, &x| m.max((x as f64).abs()));
    let max_d = s
        .iter()
        .zip(o)
        .fold(0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()));
    let l2_s = s.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let l2_d = s
        .iter()
        .zip(o)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let kl = kl_divergence(s, o);
    (max_d / max_s, l2_d / l2_s, kl, argmax(s) == argmax(o))
}

fn accuracy(args: &Args, dir: &Path) -> Result<()> {
    let dev = Device::Cpu;
    let ckpt = Checkpoint::from_dir(dir)?;
    let prompt = prompt_ids(dir, args.prompt_tokens)?;
    println!(
        "preset {}, prompt {} tokens, {} decode steps, weights stored as {:?}, tied {}",
        args.preset,
        prompt.len(),
        args.decode,
        args.stored,
        ckpt.config.tie_word_embeddings
    );

    // Stock first: its greedy tokens drive both models (teacher forcing).
    let t = Instant::now();
    let mut stock = ckpt.load_stock(DType::F32, &dev)?;
    let load_s = t.elapsed().as_secs_f64();
    let mut inputs = vec![prompt.clone()];
    let mut stock_logits = Vec::new();
    let mut offset = 0;
    let t = Instant::now();
    for step in 0..=args.decode {
        let ids = Tensor::new(inputs[step].as_slice(), &dev)?.unsqueeze(0)?;
        let l = last_logits(&stock.forward(&ids, offset)?)?;
        offset += inputs[step].len();
        inputs.push(vec![argmax(&l)]);
        stock_logits.push(l);
    }
    println!(
        "stock f32: load {load_s:.2} s, prefill + {} decode steps {:.2} s",
        args.decode,
        t.elapsed().as_secs_f64()
    );
    drop(stock);

    for format in [WeightFormat::F32, WeightFormat::F16] {
        let t = Instant::now();
        let mut ours = ckpt.load(DType::F32, &dev, &Options::new(format))?;
        let load_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut offset = 0;
        let mut rows = Vec::new();
        for (step, want) in stock_logits.iter().enumerate() {
            let ids = Tensor::new(inputs[step].as_slice(), &dev)?.unsqueeze(0)?;
            let l = last_logits(&ours.forward(&ids, offset)?)?;
            offset += inputs[step].len();
            rows.push(compare(want, &l));
        }
        let run_s = t.elapsed().as_secs_f64();
        println!(
            "\nemilio {format}: load {load_s:.2} s, prefill + {} decode steps {run_s:.2} s, \
             log weights {:.1} MiB",
            args.decode,
            ours.log_weight_bytes() as f64 / (1 << 20) as f64
        );
        println!("  position   rel max     rel l2      KL (nats)   top-1");
        for (i, (rm, rl, kl, top)) in rows.iter().enumerate() {
            let what = if i == 0 {
                "prefill".to_string()
            } else {
                format!("decode {i}")
            };
            println!("  {what:<10} {rm:<11.3e} {rl:<11.3e} {kl:<11.3e} {top}");
        }
        let worst_rel = rows.iter().fold(0f64, |m, r| m.max(r.0));
        let worst_l2 = rows.iter().fold(0f64, |m, r| m.max(r.1));
        let worst_kl = rows.iter().fold(0f64, |m, r| m.max(r.2));
        let mean_kl = rows.iter().map(|r| r.2).sum::<f64>() / rows.len() as f64;
        let agree = rows.iter().filter(|r| r.3).count();
        println!(
            "  SUMMARY {} {format}: worst rel max {worst_rel:.3e}, worst rel l2 {worst_l2:.3e}, \
             worst KL {worst_kl:.3e}, mean KL {mean_kl:.3e}, top-1 {agree}/{}",
            args.preset,
            rows.len()
        );
    }
    let scale = stock_logits[0].iter().fold(0f32, |m, &x| m.max(x.abs()));
    println!("\n(stock max |logit| at the prefill position: {scale:.3})");
    Ok(())
}

fn memory(dir: &Path) -> Result<()> {
    let exe = std::env::current_exe()?;
    let size: u64 = Checkpoint::from_dir(dir)?
        .weight_files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    println!(
        "weights on disk: {:.1} MiB; each backend loads in its own process (activations f32)",
        size as f64 / (1 << 20) as f64
    );
    println!("  backend   VmHWM (MiB)  peak RssAnon (MiB)  RssAnon loaded (MiB)  load (s)");
    for backend in ["stock", "f32", "f16"] {
        let out = Command::new(&exe)
            .args(["load-rss", "--dir"])
            .arg(dir)
            .args(["--backend", backend])
            .output()?;
        if !out.status.success() {
            candle_core::bail!(
                "load-rss {backend} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        }
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
    Ok(())
}

/// `field` of /proc/self/status in KiB.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn load_rss(dir: &Path, backend: &str) -> Result<()> {
    let dev = Device::Cpu;
    let ckpt = Checkpoint::from_dir(dir)?;
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(status_kib("RssAnon:"));
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            peak.max(status_kib("RssAnon:"))
        })
    };
    let t = Instant::now();
    let mib = |k: u64| k as f64 / 1024.0;
    let model: Box<dyn std::any::Any> = match backend {
        "stock" => Box::new(ckpt.load_stock(DType::F32, &dev)?),
        f => Box::new(ckpt.load(DType::F32, &dev, &Options::new(f.parse::<WeightFormat>()?))?),
    };
    let load_s = t.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let peak_anon = sampler.join().unwrap();
    println!(
        "  {backend:<9} {:<12.1} {:<19.1} {:<21.1} {load_s:.2}",
        mib(status_kib("VmHWM:")),
        mib(peak_anon),
        mib(status_kib("RssAnon:"))
    );
    drop(model);
    Ok(())
}
