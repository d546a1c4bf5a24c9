//! `emilio sweep`: the precision dial measured, every supported (weight format, exp mode) pair
//! scored by [`crate::eval`] against one stock reference and timed by `bench model`, as one
//! table, its JSON and a plot of KL against decode speed with the Pareto front ([`plot`]).

mod plot;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use emilio_op::LogConfig;
use serde::Serialize;

use crate::bench::model::measure;
use crate::cli::{Backend, BenchModelArgs, EvalArgs, SweepArgs};
use crate::eval::evaluate;

/// One pair's figures.
#[derive(Debug, Clone, Serialize)]
pub struct PairRow {
    pub weight_format: String,
    pub exp: String,
    /// Bits per weight, sign and group overhead included.
    pub bits_per_weight: f64,
    pub kl_mean: f64,
    pub kl_p99: f64,
    pub same_top1: f64,
    pub ln_ppl_ratio: f64,
    /// emilio's decode and prefill tokens/s over stock f32's, measured in the same run.
    pub decode_ratio: f64,
    pub prefill_ratio: f64,
    /// What the loaded emilio model holds, in MB (log weights, embedding, norms, tables).
    pub resident_mb: f64,
    /// On the Pareto front of (lowest mean KL, highest decode ratio).
    pub pareto: bool,
}

impl PairRow {
    fn label(&self) -> String {
        format!("{}/{}", self.weight_format, self.exp)
    }
}

#[derive(Debug, Serialize)]
pub struct SweepReport {
    pub model: String,
    pub bench_model: String,
    pub file: String,
    pub ctx: usize,
    pub chunks: usize,
    pub scored_tokens: usize,
    pub reference: String,
    pub plot: String,
    pub pairs: Vec<PairRow>,
}

pub fn run(args: &SweepArgs) -> Result<()> {
    let pairs = if args.pairs.is_empty() {
        LogConfig::supported()
    } else {
        args.pairs.clone()
    };
    let device = crate::device::open(args.model.device)?;
    for pair in &pairs {
        crate::advice::check_log_config(*pair, &device)?;
    }
    let eval_args = |config: LogConfig, reference: Option<PathBuf>, save: Option<PathBuf>| {
        let mut model = args.model.clone();
        model.weight_format = config.format;
        model.exp = config.exp;
        EvalArgs {
            model,
            file: args.file.clone(),
            ctx: args.ctx,
            chunks: args.chunks,
            save_reference: save,
            reference,
            json: true,
        }
    };
    // Stock's reference, made once by the first pair's eval unless one was given.
    let temporary = std::env::temp_dir().join(format!("emilio-sweep-{}.ref", std::process::id()));
    let (reference, mut first) = match &args.reference {
        Some(path) => (path.clone(), None),
        None => {
            let path = args.save_reference.clone().unwrap_or(temporary.clone());
            eprintln!("sweep: stock's reference → {}", path.display());
            let report = evaluate(&eval_args(pairs[0], None, Some(path.clone())))?;
            (path, Some(report))
        }
    };
    let mut rows = Vec::with_capacity(pairs.len());
    let (mut model, mut chunks, mut tokens) = (String::new(), 0, 0);
    for (i, &pair) in pairs.iter().enumerate() {
        eprintln!("sweep: {pair} ({}/{})", i + 1, pairs.len());
        let e = match first.take() {
            Some(report) if i == 0 => report,
            _ => evaluate(&eval_args(pair, Some(reference.clone()), None))
                .with_context(|| format!("sweep: eval of {pair}"))?,
        };
        (model, chunks, tokens) = (e.model.clone(), e.chunks, e.summary.tokens);
        let mut bench_model = args.model.clone();
        if let Some(m) = &args.bench_model {
            bench_model.model = m.clone();
            bench_model.gguf = None;
            bench_model.revision = None;
        }
        bench_model.weight_format = pair.format;
        bench_model.exp = pair.exp;
        let b = measure(&BenchModelArgs {
            model: bench_model,
            prompt_tokens: args.prompt_tokens,
            decode_tokens: args.decode_tokens,
            reps: args.reps,
            backends: vec![Backend::Emilio, Backend::Stock],
            json: true,
        })
        .with_context(|| format!("sweep: bench model of {pair}"))?;
        let (Some(decode_ratio), Some(prefill_ratio)) = (b.decode_ratio, b.prefill_ratio) else {
            bail!("sweep: bench model of {pair} timed no stock run to compare with");
        };
        let s = &e.summary;
        rows.push(PairRow {
            weight_format: pair.format.to_string(),
            exp: pair.exp.to_string(),
            bits_per_weight: pair.format.bits_per_weight(),
            kl_mean: s.kl.mean.value,
            kl_p99: s.kl.p99,
            same_top1: s.same_top1.value,
            ln_ppl_ratio: s.ln_ppl_ratio.value,
            decode_ratio,
            prefill_ratio,
            resident_mb: b.emilio_model_bytes.unwrap_or(0) as f64 / 1e6,
            pareto: false,
        });
        // A long sweep shows each pair's figures as they come, so a stopped run keeps them.
        let r = &rows[rows.len() - 1];
        eprintln!(
            "sweep: {pair}: KL mean {:.3e}, p99 {:.3e}, top-1 {:.2}%, ln PPL ratio {:.2e}, \
             decode {:.3}x, prefill {:.3}x, {:.1} MB",
            r.kl_mean,
            r.kl_p99,
            100.0 * r.same_top1,
            r.ln_ppl_ratio,
            r.decode_ratio,
            r.prefill_ratio,
            r.resident_mb
        );
    }
    if args.reference.is_none() && args.save_reference.is_none() {
        let _ = std::fs::remove_file(&temporary);
    }
    mark_pareto(&mut rows);
    plot::write(&args.plot, &rows, &model)?;
    let report = SweepReport {
        model,
        bench_model: args
            .bench_model
            .clone()
            .unwrap_or_else(|| args.model.model.clone()),
        file: args.file.display().to_string(),
        ctx: args.ctx,
        chunks,
        scored_tokens: tokens,
        reference: if args.reference.is_none() && args.save_reference.is_none() {
            "made by this run (not kept)".to_string()
        } else {
            reference.display().to_string()
        },
        plot: args.plot.display().to_string(),
        pairs: rows,
    };
    if args.json {
        crate::output::emit(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
    } else {
        crate::output::emit(&table(&report))?;
    }
    Ok(())
}

/// Marks the pairs no other pair beats on both axes: at most the KL and at least the speed,
/// strictly better on one. NaN never reaches here (eval refuses non-finite logits).
fn mark_pareto(rows: &mut [PairRow]) {
    let points: Vec<(f64, f64)> = rows.iter().map(|r| (r.kl_mean, r.decode_ratio)).collect();
    for (i, row) in rows.iter_mut().enumerate() {
        let (kl, speed) = points[i];
        row.pareto = !points
            .iter()
            .enumerate()
            .any(|(j, &(k2, s2))| j != i && k2 <= kl && s2 >= speed && (k2 < kl || s2 > speed));
    }
}

fn table(r: &SweepReport) -> String {
    let mut o = String::new();
    use std::fmt::Write;
    let _ = writeln!(
        o,
        "emilio sweep: {} | {} × {} tokens of {} | timed on {} | plot {}",
        r.model, r.chunks, r.ctx, r.file, r.bench_model, r.plot
    );
    let _ = writeln!(
        o,
        "{:<15} {:>5} {:>10} {:>10} {:>8} {:>10} {:>8} {:>8} {:>9}  pareto",
        "pair", "bits", "KL mean", "KL p99", "top-1", "ln PPL r", "decode", "prefill", "MB"
    );
    for p in &r.pairs {
        let _ = writeln!(
            o,
            "{:<15} {:>5.1} {:>10.3e} {:>10.3e} {:>7.2}% {:>10.2e} {:>7.3}x {:>7.3}x {:>9.1}  {}",
            p.label(),
            p.bits_per_weight,
            p.kl_mean,
            p.kl_p99,
            100.0 * p.same_top1,
            p.ln_ppl_ratio,
            p.decode_ratio,
            p.prefill_ratio,
            p.resident_mb,
            if p.pareto { "*" } else { "" }
        );
    }
    let _ = writeln!(
        o,
        "decode, prefill: emilio over stock f32 tokens/s, each measured in its own run; MB: the \
         loaded emilio model; * on the Pareto front of (KL, decode)"
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kl: f64, speed: f64) -> PairRow {
        PairRow {
            weight_format: "f16".into(),
            exp: "exact".into(),
            bits_per_weight: 17.0,
            kl_mean: kl,
            kl_p99: kl,
            same_top1: 1.0,
            ln_ppl_ratio: 0.0,
            decode_ratio: speed,
            prefill_ratio: 0.3,
            resident_mb: 1.0,
            pareto: false,
        }
    }

    #[test]
    fn the_pareto_front_is_the_pairs_nothing_beats_on_both_axes() {
        let mut rows = vec![
            row(1e-6, 1.0), // most exact
            row(1e-5, 0.9), // beaten by the first on both
            row(1e-3, 2.0), // faster
            row(1e-3, 2.0), // a tie: neither beats the other
            row(1e-2, 1.5), // beaten by the third
            row(5e-2, 3.0), // fastest
        ];
        mark_pareto(&mut rows);
        let front: Vec<bool> = rows.iter().map(|r| r.pareto).collect();
        assert_eq!(front, [true, false, true, true, false, true]);
    }
}
