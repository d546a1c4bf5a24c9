//! `emilio eval`: corpus-level fidelity of the log-domain model against stock Candle, with
//! llama-perplexity's statistics (the method is `emilio_qwen::eval`'s).

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use serde::Serialize;

use emilio_qwen::eval::{self, Corpus, Estimate, Reference, ReferenceInfo, Summary};

use crate::cli::{Backend, EvalArgs};
use crate::runner::Runner;
use crate::{device, source};

/// Where stock's side came from.
#[derive(Debug, Serialize)]
pub struct ReferenceSource {
    /// `--reference FILE` when read from a file, else `None` (stock ran in this run).
    pub loaded_from: Option<String>,
    /// `--save-reference FILE`, when saved.
    pub saved_to: Option<String>,
    /// Stock logits kept exactly per position, on average (the rest in 16 bits).
    pub exact_logits_per_position: f64,
}

/// Wall times and rates (tokens fed to the model per second).
#[derive(Debug, Serialize)]
pub struct Times {
    /// Stock's pass (none when read from a reference).
    pub stock_secs: Option<f64>,
    pub stock_tok_s: Option<f64>,
    pub emilio_secs: f64,
    pub emilio_tok_s: f64,
    /// The whole command: loading, hashing, both passes.
    pub total_secs: f64,
}

#[derive(Debug, Serialize)]
pub struct EvalReport {
    pub model: String,
    pub model_sha256: String,
    pub tokenizer_sha256: String,
    pub file: String,
    pub text_sha256: String,
    pub weight_format: String,
    /// How the products' exp is taken (`--exp`).
    pub exp: String,
    /// Activations' and stock weights' dtype.
    pub dtype: String,
    pub device: String,
    pub ctx: usize,
    pub chunks: usize,
    pub chunks_available: usize,
    pub text_tokens: usize,
    /// The tokens each chunk starts with (the tokenizer's BOS; empty when it adds none).
    pub bos: Vec<u32>,
    pub reference: ReferenceSource,
    pub summary: Summary,
    pub time: Times,
}

pub fn run(args: &EvalArgs) -> Result<()> {
    let report = evaluate(args)?;
    if args.json {
        crate::output::emit(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
    } else {
        crate::output::emit(&table(&report))?;
    }
    Ok(())
}

/// Everything `emilio eval` measures, as its report (what `emilio sweep` runs per pair).
pub fn evaluate(args: &EvalArgs) -> Result<EvalReport> {
    let start = Instant::now();
    let device = device::open_for(&args.model, true)?;
    let files = source::open(&args.model)?;
    let tokenizer = files.tokenizer()?;
    let file = args.file.display().to_string();
    let text = read_text(&args.file)?;
    let corpus = Corpus::from_text(
        &tokenizer,
        &text,
        args.ctx,
        args.chunks,
        files.max_positions(),
        &file,
    )?;
    let ckpt = &files.checkpoint;
    let mut model_files: Vec<&Path> = vec![ckpt.config_path.as_path()];
    for w in &ckpt.weight_files {
        if !model_files.contains(&w.as_path()) {
            model_files.push(w);
        }
    }
    let tokenizer_json = tokenizer
        .to_string(false)
        .map_err(|e| anyhow::anyhow!("cannot serialise the tokenizer to fingerprint it: {e}"))?;
    let info = ReferenceInfo {
        model: files.label.clone(),
        model_sha256: emilio_qwen::files::sha256_of_files(&model_files)?,
        tokenizer_sha256: emilio_qwen::files::sha256_of_bytes(tokenizer_json.as_bytes()),
        text: file.clone(),
        text_sha256: emilio_qwen::files::sha256_of_bytes(text.as_bytes()),
        ctx: corpus.ctx(),
        chunks: corpus.chunks(),
        vocab: ckpt.config.vocab_size,
        dtype: args.model.dtype.dtype().as_str().to_string(),
    };
    let fed = corpus.chunks() * (corpus.ctx() - 1);

    let (reference, stock_secs) = match &args.reference {
        Some(path) => {
            let reference = Reference::load(path)?;
            reference.check_matches(&info, &corpus, path)?;
            (reference, None)
        }
        None => {
            let (mut stock, _) = Runner::load(&files, Backend::Stock, &args.model, &device)?;
            let bar = progress_bar("stock", &corpus);
            let t = Instant::now();
            let reference =
                eval::stock_reference(&mut stock, &corpus, &device, info.clone(), &mut |done| {
                    bar.set_position((done * (corpus.ctx() - 1)) as u64)
                })?;
            let secs = t.elapsed().as_secs_f64();
            bar.finish_and_clear();
            drop(stock);
            if let Some(path) = &args.save_reference {
                reference.save(path)?;
                eprintln!("saved stock's reference to {}", path.display());
            }
            (reference, Some(secs))
        }
    };

    let (mut emilio, _) = Runner::load(&files, Backend::Emilio, &args.model, &device)?;
    let bar = progress_bar("emilio", &corpus);
    let t = Instant::now();
    let scored = eval::score(&mut emilio, &corpus, &reference, &device, &mut |done| {
        bar.set_position((done * (corpus.ctx() - 1)) as u64)
    })?;
    let emilio_secs = t.elapsed().as_secs_f64();
    bar.finish_and_clear();
    if scored.is_empty() {
        bail!("no position was scored");
    }

    let report = EvalReport {
        model: files.label.clone(),
        model_sha256: info.model_sha256.clone(),
        tokenizer_sha256: info.tokenizer_sha256.clone(),
        file,
        text_sha256: info.text_sha256.clone(),
        weight_format: args.model.weight_format.to_string(),
        exp: args.model.exp.to_string(),
        dtype: info.dtype.clone(),
        device: args.model.device.name(),
        ctx: corpus.ctx(),
        chunks: corpus.chunks(),
        chunks_available: corpus.available_chunks(),
        text_tokens: corpus.text_tokens(),
        bos: corpus.bos().to_vec(),
        reference: ReferenceSource {
            loaded_from: args.reference.as_ref().map(|p| p.display().to_string()),
            saved_to: args
                .save_reference
                .as_ref()
                .map(|p| p.display().to_string()),
            exact_logits_per_position: reference.kept_logits() as f64 / reference.len() as f64,
        },
        summary: Summary::new(&scored),
        time: Times {
            stock_secs,
            stock_tok_s: stock_secs.map(|s| fed as f64 / s),
            emilio_secs,
            emilio_tok_s: fed as f64 / emilio_secs,
            total_secs: start.elapsed().as_secs_f64(),
        },
    };
    Ok(report)
}

fn read_text(path: &Path) -> Result<String> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read the text {}", path.display()))?;
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is not UTF-8 text (invalid byte at offset {}): pass a UTF-8 text file",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

/// A bar of the tokens a pass feeds its model.
fn progress_bar(name: &str, corpus: &Corpus) -> ProgressBar {
    let tokens = (corpus.chunks() * (corpus.ctx() - 1)) as u64;
    crate::progress::bar(tokens, &format!("{name:>7}"), "{pos}/{len} tokens")
}

/// `value ± uncertainty` with `f` for both (the uncertainty omitted when there is none).
fn est(e: &Estimate, f: fn(f64) -> String) -> String {
    match e.uncertainty {
        Some(u) => format!("{} ± {}", f(e.value), f(u)),
        None => f(e.value),
    }
}

fn fixed(x: f64) -> String {
    format!("{x:10.6}")
}

fn sci(x: f64) -> String {
    format!("{x:10.3e}")
}

fn pct(x: f64) -> String {
    format!("{:7.3}%", x * 100.0)
}

fn table(r: &EvalReport) -> String {
    let s = &r.summary;
    let mut o = String::new();
    outln!(
        o,
        "emilio eval: {} | log weights {} | activations {} | device {}",
        r.model,
        crate::cli::log_label(&r.weight_format, &r.exp),
        r.dtype,
        r.device
    );
    outln!(
        o,
        "text {}: {} tokens, {} chunks of {} (of {} in the text), {} tokens scored",
        r.file,
        r.text_tokens,
        r.chunks,
        r.ctx,
        r.chunks_available,
        s.tokens
    );
    let reference = match (&r.reference.loaded_from, &r.reference.saved_to) {
        (Some(from), _) => format!("read from {from}"),
        (None, Some(to)) => format!("stock run here, saved to {to}"),
        (None, None) => "stock run here".to_string(),
    };
    outln!(
        o,
        "reference: {reference} ({:.0} exact logits per position, the rest in 16 bits)",
        r.reference.exact_logits_per_position
    );
    let t = &r.time;
    let stock = match (t.stock_secs, t.stock_tok_s) {
        (Some(secs), Some(rate)) => format!("stock {secs:.1} s ({rate:.1} tok/s), "),
        _ => String::new(),
    };
    outln!(
        o,
        "time: {stock}emilio {:.1} s ({:.1} tok/s), total {:.1} s",
        t.emilio_secs,
        t.emilio_tok_s,
        t.total_secs
    );
    outln!(o);
    outln!(o, "====== Perplexity statistics ======");
    outln!(o, "PPL(emilio)                    : {}", est(&s.ppl, fixed));
    outln!(
        o,
        "PPL(stock)                     : {}",
        est(&s.ppl_stock, fixed)
    );
    outln!(
        o,
        "Cor(ln PPL(emilio), ln PPL(stock)): {}",
        pct(s.nll_correlation)
    );
    outln!(
        o,
        "ln(PPL(emilio)/PPL(stock))     : {}",
        est(&s.ln_ppl_ratio, sci)
    );
    outln!(
        o,
        "PPL(emilio)/PPL(stock)         : {}",
        est(&s.ppl_ratio, fixed)
    );
    outln!(
        o,
        "PPL(emilio)-PPL(stock)         : {}",
        est(&s.ppl_diff, sci)
    );
    outln!(o);
    outln!(
        o,
        "====== KL divergence statistics (stock ‖ emilio, nats) ======"
    );
    let kl = &s.kl;
    outln!(o, "Mean    KLD: {}", est(&kl.mean, sci));
    outln!(o, "Maximum KLD: {}", sci(kl.max));
    outln!(o, "99.9%   KLD: {}", sci(kl.p99_9));
    outln!(o, "99.0%   KLD: {}", sci(kl.p99));
    outln!(o, "90.0%   KLD: {}", sci(kl.p90));
    outln!(o, "Median  KLD: {}", sci(kl.median));
    outln!(o, "Minimum KLD: {}", sci(kl.min));
    outln!(
        o,
        "(each KLD is the full-vocabulary value to within {:.1e}, the reference's bound)",
        kl.max_tail_bound
    );
    outln!(o);
    outln!(o, "====== Token probability statistics ======");
    let dp = &s.delta_p;
    outln!(o, "Mean    Δp: {}", est(&dp.mean, pct));
    outln!(o, "Maximum Δp: {}", pct(dp.max));
    outln!(o, "99.0%   Δp: {}", pct(dp.p99));
    outln!(o, "Median  Δp: {}", pct(dp.median));
    outln!(o, " 1.0%   Δp: {}", pct(dp.p1));
    outln!(o, "Minimum Δp: {}", pct(dp.min));
    outln!(o, "RMS Δp    : {}", est(&dp.rms, pct));
    outln!(o, "Same top p: {}", est(&s.same_top1, pct));
    o
}
