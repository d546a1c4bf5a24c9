//! `emilio ab`: the same prompt and weights through both backends.
//!
//! Stock runs greedily and its logits at every position are recorded; the log-domain model is
//! then teacher-forced along stock's tokens so both are compared on the same context at every
//! position; finally the log-domain model generates greedily on its own, for the side-by-side
//! continuation and its speed.

use anyhow::Result;
use candle_core::Device;
use serde::Serialize;
use tokenizers::Tokenizer;

use emilio_qwen::compare::{argmax, kl_divergence, max_rel_err};
use emilio_qwen::generation::{Generator, Recorder, Timings};

use crate::cli::{AbArgs, Backend};
use crate::generate::fit_context;
use crate::prompt::encode_prompt;
use crate::runner::{Load, Runner};
use crate::{device, source};

/// How closely two logit vectors agree at one position.
#[derive(Debug, Serialize)]
pub struct PositionReport {
    /// Position in the sequence (prompt included).
    pub position: usize,
    /// The token stock chose there (and the log-domain model was fed next).
    pub stock_token: u32,
    pub stock_text: String,
    /// The log-domain model's top-1 token there.
    pub emilio_token: u32,
    pub top1_match: bool,
    /// KL(stock ‖ emilio) of the softmax distributions, in nats.
    pub kl: f64,
    /// max_v |emilio_v − stock_v| / max_v |stock_v|.
    pub max_rel_err: f64,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub positions: usize,
    pub top1_agreement: f64,
    pub kl_mean: f64,
    pub kl_max: f64,
    pub max_rel_err: f64,
}

#[derive(Debug, Serialize)]
pub struct Continuation {
    pub tokens: Vec<u32>,
    pub text: String,
    /// The text up to the first divergence, and from it on (all in `head` when none).
    pub head: String,
    pub tail: String,
}

impl Continuation {
    fn new(tokenizer: &Tokenizer, tokens: Vec<u32>, divergence: Option<usize>) -> Self {
        let cut = divergence.unwrap_or(tokens.len()).min(tokens.len());
        Self {
            text: decode(tokenizer, &tokens),
            head: decode(tokenizer, &tokens[..cut]),
            tail: decode(tokenizer, &tokens[cut..]),
            tokens,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Speed {
    pub load_secs: f64,
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
}

#[derive(Debug, Serialize)]
pub struct AbReport {
    pub model: String,
    pub weight_format: String,
    /// How the products' exp is taken (`--exp`).
    pub exp: String,
    /// Activations' and stock weights' dtype (`f32`, `f16`, `bf16`).
    pub dtype: String,
    pub device: String,
    pub prompt_tokens: usize,
    pub per_position: Vec<PositionReport>,
    pub summary: Summary,
    pub stock: Continuation,
    pub emilio: Continuation,
    /// Index (within the continuations) of the first differing token, if any.
    pub first_divergence: Option<usize>,
    pub stock_speed: Speed,
    pub emilio_speed: Speed,
    /// emilio / stock tokens per second (above 1: emilio is faster).
    pub prefill_ratio: f64,
    pub decode_ratio: f64,
}

/// A greedy or teacher-forced run: tokens, the logits before each, and timings.
struct Run {
    tokens: Vec<u32>,
    logits: Vec<Vec<f32>>,
    timings: Timings,
}

/// Runs `model` over `prompt`, then chooses up to `n` tokens with `recorder` (greedy, stopping at
/// `stops`, or forced along given tokens, with no stops).
fn run_model(
    model: &mut Runner,
    prompt: &[u32],
    n: usize,
    recorder: Recorder,
    stops: &[u32],
    device: &Device,
) -> Result<Run> {
    let mut generator =
        Generator::new(model, recorder, device).with_stop_tokens(stops.iter().copied());
    let generated = generator.run(prompt, n, |_| Ok::<_, candle_core::Error>(()))?;
    Ok(Run {
        tokens: generated.tokens,
        logits: generator.into_parts().1.into_logits(),
        timings: generated.timings,
    })
}

fn decode(tokenizer: &Tokenizer, tokens: &[u32]) -> String {
    crate::stream::decode(tokenizer, tokens, false)
        .unwrap_or_else(|e| format!("<undecodable: {e}>"))
}

pub fn run(args: &AbArgs) -> Result<()> {
    let device = device::open_for(&args.model, true)?;
    let files = source::open(&args.model)?;
    let tokenizer = files.tokenizer()?;
    let template = files.chat_template()?;
    let prompt = encode_prompt(
        &tokenizer,
        template.as_ref(),
        &args.prompt,
        &files.tokenizer_source(),
    )?;
    let n = fit_context(prompt.len(), args.max_tokens, files.max_positions())?.max(1);
    crate::memory::check_kv_cache(
        &files.checkpoint.config,
        prompt.len() + n,
        args.model.dtype.dtype(),
        2,
    )?;
    // `--no-stop`: a fixed number of compared positions, past any end of the reply.
    let stops = match args.no_stop {
        true => Vec::new(),
        false => files.stop_tokens(&tokenizer)?,
    };
    let format = args.model.weight_format;
    let dtype = args.model.dtype.dtype();

    let (mut stock, stock_load) = Runner::load(&files, Backend::Stock, &args.model, &device)?;
    let stock_run = run_model(&mut stock, &prompt, n, Recorder::greedy(), &stops, &device)?;
    drop(stock);
    let (mut emilio, emilio_load) = Runner::load(&files, Backend::Emilio, &args.model, &device)?;
    let forced = run_model(
        &mut emilio,
        &prompt,
        stock_run.tokens.len(),
        Recorder::forced(stock_run.tokens.clone()),
        &[],
        &device,
    )?;
    let own = run_model(&mut emilio, &prompt, n, Recorder::greedy(), &stops, &device)?;

    let per_position: Vec<PositionReport> = stock_run
        .logits
        .iter()
        .zip(&forced.logits)
        .zip(&stock_run.tokens)
        .enumerate()
        .map(|(i, ((s, e), &tok))| PositionReport {
            position: prompt.len() - 1 + i,
            stock_token: tok,
            stock_text: decode(&tokenizer, &[tok]),
            emilio_token: argmax(e),
            top1_match: argmax(e) == argmax(s),
            kl: kl_divergence(s, e),
            max_rel_err: max_rel_err(s, e),
        })
        .collect();
    let count = per_position.len().max(1) as f64;
    let summary = Summary {
        positions: per_position.len(),
        top1_agreement: per_position.iter().filter(|p| p.top1_match).count() as f64 / count,
        kl_mean: per_position.iter().map(|p| p.kl).sum::<f64>() / count,
        kl_max: per_position.iter().fold(0.0, |m, p| m.max(p.kl)),
        max_rel_err: per_position.iter().fold(0.0, |m, p| m.max(p.max_rel_err)),
    };
    let first_divergence = stock_run
        .tokens
        .iter()
        .zip(&own.tokens)
        .position(|(a, b)| a != b)
        .or((stock_run.tokens.len() != own.tokens.len())
            .then(|| stock_run.tokens.len().min(own.tokens.len())));
    let speed = |r: &Run, load: Load| Speed {
        load_secs: load.time.as_secs_f64(),
        prefill_tok_s: r.timings.prefill_tok_s(),
        decode_tok_s: r.timings.decode_tok_s(),
    };
    let stock_speed = speed(&stock_run, stock_load);
    let emilio_speed = speed(&own, emilio_load);
    let report = AbReport {
        model: files.label.clone(),
        weight_format: format.to_string(),
        exp: args.model.exp.to_string(),
        dtype: dtype.as_str().to_string(),
        device: args.model.device.name(),
        prompt_tokens: prompt.len(),
        summary,
        per_position,
        stock: Continuation::new(&tokenizer, stock_run.tokens, first_divergence),
        emilio: Continuation::new(&tokenizer, own.tokens, first_divergence),
        first_divergence,
        prefill_ratio: emilio_speed.prefill_tok_s / stock_speed.prefill_tok_s,
        decode_ratio: emilio_speed.decode_tok_s / stock_speed.decode_tok_s.max(1e-9),
        stock_speed,
        emilio_speed,
    };
    if args.json {
        crate::output::emit(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
    } else {
        crate::output::emit(&table(&report))?;
    }
    Ok(())
}

fn table(r: &AbReport) -> String {
    let mut o = String::new();
    outln!(
        o,
        "emilio ab: {} | log weights {} | activations {} | device {} | prompt {} tokens",
        r.model,
        crate::cli::log_label(&r.weight_format, &r.exp),
        r.dtype,
        r.device,
        r.prompt_tokens
    );
    outln!(o);
    outln!(o, "teacher-forced along stock's greedy tokens:");
    outln!(
        o,
        "{:>5}  {:<22} {:>5}  {:>10}  {:>11}",
        "pos",
        "stock token",
        "top-1",
        "KL (nats)",
        "max rel err"
    );
    for p in &r.per_position {
        outln!(
            o,
            "{:>5}  {:<22} {:>5}  {:>10.3e}  {:>11.3e}",
            p.position,
            format!("{:>6} {:?}", p.stock_token, p.stock_text)
                .chars()
                .take(22)
                .collect::<String>(),
            if p.top1_match { "yes" } else { "NO" },
            p.kl,
            p.max_rel_err
        );
    }
    let s = &r.summary;
    outln!(
        o,
        "summary: top-1 agreement {:.1}% of {} positions | KL mean {:.3e}, max {:.3e} | max rel logit error {:.3e}",
        s.top1_agreement * 100.0,
        s.positions,
        s.kl_mean,
        s.kl_max,
        s.max_rel_err
    );
    outln!(o);
    match r.first_divergence {
        Some(i) => outln!(
            o,
            "greedy continuations (they part at generated token {i}, marked ▶):"
        ),
        None => outln!(o, "greedy continuations (identical):"),
    }
    for (name, c) in [("stock ", &r.stock), ("emilio", &r.emilio)] {
        if r.first_divergence.is_some() {
            outln!(o, "  {name}: {:?} ▶ {:?}", c.head, c.tail);
        } else {
            outln!(o, "  {name}: {:?}", c.text);
        }
    }
    outln!(o);
    outln!(
        o,
        "{:<16} {:>9} {:>14} {:>13}",
        "speed",
        "load (s)",
        "prefill tok/s",
        "decode tok/s"
    );
    outln!(
        o,
        "{:<16} {:>9.2} {:>14.1} {:>13.2}",
        format!("stock {}", r.dtype),
        r.stock_speed.load_secs,
        r.stock_speed.prefill_tok_s,
        r.stock_speed.decode_tok_s
    );
    outln!(
        o,
        "{:<16} {:>9.2} {:>14.1} {:>13.2}",
        format!("emilio {}", crate::cli::log_label(&r.weight_format, &r.exp)),
        r.emilio_speed.load_secs,
        r.emilio_speed.prefill_tok_s,
        r.emilio_speed.decode_tok_s
    );
    outln!(
        o,
        "{:<16} {:>9} {:>13.3}x {:>12.3}x",
        "emilio / stock",
        "",
        r.prefill_ratio,
        r.decode_ratio
    );
    o
}
