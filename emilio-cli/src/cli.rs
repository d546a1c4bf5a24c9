//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use emilio_op::{ExpMode, LogConfig, WeightFormat};
use emilio_qwen::synthetic::gguf::GgufQuant;
use emilio_qwen::synthetic::Preset;

/// Qwen2-family models with every multiplication computed in the log domain
/// (a·b = sign·exp(ln|a| + ln|b|)), next to stock Candle.
#[derive(Debug, Parser)]
#[command(name = "emilio", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate text from a prompt, streaming tokens to stdout.
    Generate(GenerateArgs),
    /// Chat turn by turn: user lines from stdin, replies streamed to stdout.
    ///
    /// Each line read from stdin is a user turn (a pipe works too); the reply is streamed to
    /// stdout, while the prompt, notes and the answers to commands go to stderr. Earlier turns
    /// stay in the KV cache, so a turn prefills only its own tokens. Lines starting with `/` are
    /// commands: /reset (forget the conversation), /system TEXT (set the system message and
    /// reset; /system alone goes back to the template's default), /stats (context used, last
    /// turn's speeds), /help, /quit. Ctrl-D (end of input) ends the chat.
    Chat(ChatArgs),
    /// Compare the log-domain model with stock Candle on the same weights and prompt.
    Ab(AbArgs),
    /// Score a text with both backends: perplexity, KL divergence, Δp and top-1 agreement of
    /// the log-domain model against stock Candle, as llama-perplexity --kl-divergence reports
    /// them.
    ///
    /// The text is tokenized once and cut into chunks of --ctx tokens (each starting from an
    /// empty cache, with the tokenizer's BOS where it adds one); the logits at positions
    /// ctx/2..ctx-2 of each chunk score the next token. Stock runs first (or its saved
    /// --reference is read), then the log-domain model. A progress bar goes to stderr.
    Eval(EvalArgs),
    /// Benchmark the op or the model against stock Candle, in the same run.
    Bench(BenchArgs),
    /// The precision dial: every supported (--weight-format, --exp) pair scored by `eval`
    /// against one stock reference and timed by `bench model`, as one table and a plot of KL
    /// against decode speed with the Pareto front.
    ///
    /// Stock's reference is made once (or read with --reference); each pair then loads,
    /// scores the text and is timed against stock in the same run, so the speed ratios are
    /// each measured against their own stock run. The plot is SVG (--plot).
    Sweep(SweepArgs),
    /// Write an offline checkpoint with seeded random weights (no network needed).
    Synth(SynthArgs),
}

/// Which implementation runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// Every linear layer and attention product in the log domain.
    Emilio,
    /// Stock Candle's qwen2 / llama on the same weights (a GGUF's dequantized), plain matmuls.
    Stock,
    /// Candle's quantized_qwen2 / quantized_llama on a GGUF file, its weights left quantized.
    StockQuantized,
}

impl Backend {
    /// The name `--backend` takes, which the reports print.
    pub fn name(self) -> String {
        self.to_possible_value()
            .expect("no backend is hidden from --backend")
            .get_name()
            .to_string()
    }
}

/// Where tensors live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    Cpu,
    Cuda,
    Metal,
}

impl DeviceArg {
    /// The name `--device` takes (`cpu`, `cuda`, `metal`), which the reports print: clap's, so
    /// the two cannot differ.
    pub fn name(self) -> String {
        self.to_possible_value()
            .expect("no device is hidden from --device")
            .get_name()
            .to_string()
    }
}

/// A dtype as `--dtype` names it: of the activations (and stock Candle's weights) in `generate`,
/// `ab` and `bench model`; of the stored weights in `synth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DtypeArg {
    F32,
    F16,
    Bf16,
}

impl DtypeArg {
    pub fn dtype(self) -> candle_core::DType {
        match self {
            DtypeArg::F32 => candle_core::DType::F32,
            DtypeArg::F16 => candle_core::DType::F16,
            DtypeArg::Bf16 => candle_core::DType::BF16,
        }
    }
}

/// Where the model comes from and what runs it.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// A Hugging Face model ID (downloaded to the standard cache; HF_HOME and HF_TOKEN are
    /// honoured), a local checkpoint directory (config.json, model.safetensors or a sharded
    /// index, tokenizer.json), e.g. one written by `emilio synth`, or a GGUF file. Qwen2 and
    /// Llama-family models.
    #[arg(long, short, default_value = "Qwen/Qwen2.5-0.5B-Instruct")]
    pub model: String,
    /// One GGUF file of the hub repository (or directory) named by --model, e.g. --model
    /// Qwen/Qwen2.5-0.5B-Instruct-GGUF --gguf qwen2.5-0.5b-instruct-q8_0.gguf.
    #[arg(long, value_name = "FILE.gguf")]
    pub gguf: Option<String>,
    /// Git revision of a hub model (branch, tag or commit; main when not given). An error with
    /// a local directory or file, which has no revisions.
    #[arg(long)]
    pub revision: Option<String>,
    /// Device to run on; cuda and metal need a build with `--features cuda` / `metal`.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
    // The help of these two is generated from the library's lists (`crate::advice`).
    #[arg(
        long,
        default_value_t = WeightFormat::F16,
        value_parser = parse_format,
        help = crate::advice::weight_format_help(),
        long_help = crate::advice::weight_format_long_help()
    )]
    pub weight_format: WeightFormat,
    #[arg(
        long = "exp",
        default_value_t = ExpMode::Exact,
        value_parser = parse_exp,
        help = crate::advice::exp_help(),
        long_help = crate::advice::exp_long_help()
    )]
    pub exp: ExpMode,
    /// Dtype of the activations, the KV cache and stock Candle's weights (f16 or bf16 is what
    /// GPUs usually run); log-domain products always accumulate in f32.
    #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
    pub dtype: DtypeArg,
}

impl ModelArgs {
    /// `--weight-format` and `--exp` together.
    pub fn log_config(&self) -> LogConfig {
        LogConfig::new(self.weight_format, self.exp)
    }

    /// The fork's options: `--weight-format` and `--exp`.
    pub fn options(&self) -> emilio_qwen::Options {
        self.log_config().into()
    }

    /// How the log-domain backend is named in reports: the format, and the exp mode unless it
    /// is exact (`f16`, `f16/mitchell`).
    pub fn log_label(&self) -> String {
        log_label(&self.weight_format.to_string(), &self.exp.to_string())
    }
}

/// `format`, with `/exp` unless the exp mode is exact: how reports name the log-domain backend.
pub fn log_label(format: &str, exp: &str) -> String {
    if exp == ExpMode::Exact.name() {
        format.to_string()
    } else {
        format!("{format}/{exp}")
    }
}

/// How the prompt is built.
#[derive(Debug, Args)]
pub struct PromptArgs {
    /// The prompt (or the user message, with the chat template).
    #[arg(long, short)]
    pub prompt: String,
    /// System message for the model's chat template. Without it the template decides (most
    /// instruct models' templates insert a default one); `--system ""` passes an empty system
    /// message, which replaces that default.
    #[arg(long)]
    pub system: Option<String>,
    /// Raw completion: send the prompt as is, without the chat template.
    #[arg(long)]
    pub no_chat: bool,
}

/// How the next token is chosen.
#[derive(Debug, Args)]
pub struct SamplingArgs {
    /// Sampling temperature; 0 means greedy (argmax).
    #[arg(long, default_value_t = 0.0, value_parser = parse_temperature, allow_negative_numbers = true)]
    pub temperature: f64,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches p (0 < p ≤ 1).
    #[arg(long, value_parser = parse_top_p, allow_negative_numbers = true)]
    pub top_p: Option<f64>,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 299_792_458)]
    pub seed: u64,
    /// Penalty for repeating recent tokens (1.0 = none).
    #[arg(long, default_value_t = 1.1, value_parser = parse_penalty, allow_negative_numbers = true)]
    pub repeat_penalty: f32,
    /// How many recent tokens the repeat penalty looks at.
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub prompt: PromptArgs,
    /// Which implementation runs the model.
    #[arg(long, value_enum, default_value_t = Backend::Emilio)]
    pub backend: Backend,
    /// Most tokens to generate (generation also stops at the model's end-of-sequence tokens).
    #[arg(long, default_value_t = 256, value_parser = at_least_one())]
    pub max_tokens: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

#[derive(Debug, Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// System message for the model's chat template. Without it the template decides (most
    /// instruct models' templates insert a default one); `--system ""` passes an empty system
    /// message, which replaces that default. `/system TEXT` changes it during the chat.
    #[arg(long)]
    pub system: Option<String>,
    /// Which implementation runs the model.
    #[arg(long, value_enum, default_value_t = Backend::Emilio)]
    pub backend: Backend,
    /// Most tokens of one reply (a reply also stops at the model's end-of-sequence tokens).
    #[arg(long, default_value_t = 256, value_parser = at_least_one())]
    pub max_tokens: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// After each reply, print on stderr what the turn cost: the tokens it prefilled (its own
    /// only; earlier turns stay in the KV cache), the tokens it decoded, and their speeds.
    #[arg(long, short)]
    pub verbose: bool,
}

#[derive(Debug, Args)]
pub struct AbArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub prompt: PromptArgs,
    /// Greedy tokens generated by each backend (and teacher-forced through both).
    #[arg(long, default_value_t = 32, value_parser = at_least_one())]
    pub max_tokens: usize,
    /// Generate all --max-tokens tokens, past the model's stop tokens: every run then compares
    /// the same number of positions.
    #[arg(long)]
    pub no_stop: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text to score (UTF-8), e.g. wikitext-2's wiki.test.raw.
    #[arg(long, short)]
    pub file: PathBuf,
    /// Tokens per chunk (each chunk's second half is scored).
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Score at most this many chunks (default: every whole chunk of the text).
    #[arg(long, value_name = "N")]
    pub chunks: Option<usize>,
    /// Save stock's log-probabilities to FILE (a safetensors file), for later runs'
    /// --reference: a sweep of formats then runs stock once.
    #[arg(long, value_name = "FILE", conflicts_with = "reference")]
    pub save_reference: Option<PathBuf>,
    /// Score against stock's log-probabilities saved by --save-reference instead of running
    /// stock (refused if the model, tokenizer, text, --ctx or --dtype differ).
    #[arg(long, value_name = "FILE")]
    pub reference: Option<PathBuf>,
    /// Print one JSON object (every figure and the settings) instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub target: BenchTarget,
}

#[derive(Debug, Subcommand)]
pub enum BenchTarget {
    /// The op against Candle's matmul at Qwen2.5-0.5B shapes, decode and prefill rows.
    Op(BenchOpArgs),
    /// Prefill and decode tokens/s of each backend on a model (emilio, stock, and Candle's
    /// quantized model for a GGUF file), with the ratios.
    Model(BenchModelArgs),
}

#[derive(Debug, Args)]
pub struct BenchOpArgs {
    /// Device to run on; cuda and metal need a build with `--features cuda` / `metal`.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
    /// Timed repetitions per case (the median is reported).
    #[arg(long, default_value_t = 9, value_parser = at_least_one())]
    pub reps: usize,
    /// Rows of the prefill cases.
    #[arg(long, default_value_t = 128, value_parser = at_least_one())]
    pub prefill_rows: usize,
    /// More (weight format, exp mode) pairs to time besides f32 and f16 exact, comma-separated
    /// FORMAT/EXP (e.g. lns8/table,lns8/exact): each gets its time, speed ratio and share of
    /// the read bandwidth.
    #[arg(long, value_delimiter = ',', value_parser = parse_pair)]
    pub pairs: Vec<LogConfig>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct BenchModelArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt length of the prefill measurement, in tokens.
    #[arg(long, default_value_t = 32)]
    pub prompt_tokens: usize,
    /// Decode steps measured after the prompt.
    #[arg(long, default_value_t = 128)]
    pub decode_tokens: usize,
    /// Repetitions of the whole run per backend (the median is reported).
    #[arg(long, default_value_t = 3, value_parser = at_least_one())]
    pub reps: usize,
    /// The backends to time (comma-separated); default: emilio and stock, and stock-quantized
    /// for a GGUF file. Ratios are printed against each other backend timed.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub backends: Vec<Backend>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SweepArgs {
    /// The model to score and time, as for every command (--weight-format and --exp are set
    /// by the sweep, pair by pair).
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text to score (UTF-8).
    #[arg(long, short)]
    pub file: PathBuf,
    /// Tokens per chunk (as `eval --ctx`).
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Score at most this many chunks (default: every whole chunk of the text).
    #[arg(long, value_name = "N")]
    pub chunks: Option<usize>,
    /// Stock's saved reference (`eval --save-reference`); without it stock runs once first.
    #[arg(long, value_name = "FILE", conflicts_with = "save_reference")]
    pub reference: Option<PathBuf>,
    /// Where to save the reference stock makes (default: a temporary file, removed after).
    #[arg(long, value_name = "FILE")]
    pub save_reference: Option<PathBuf>,
    /// Time the pairs on another model (e.g. a synthetic qwen2.5-0.5b checkpoint), default
    /// the scored one.
    #[arg(long, value_name = "MODEL")]
    pub bench_model: Option<String>,
    /// `bench model --prompt-tokens` for each pair.
    #[arg(long, default_value_t = 32, value_parser = at_least_one())]
    pub prompt_tokens: usize,
    /// `bench model --decode-tokens` for each pair.
    #[arg(long, default_value_t = 64, value_parser = at_least_one())]
    pub decode_tokens: usize,
    /// `bench model --reps` for each pair.
    #[arg(long, default_value_t = 2, value_parser = at_least_one())]
    pub reps: usize,
    /// Only these pairs, comma-separated FORMAT/EXP (e.g. f16/exact,lns8/mitchell); default
    /// every supported pair.
    #[arg(long, value_delimiter = ',', value_parser = parse_pair)]
    pub pairs: Vec<LogConfig>,
    /// Where to write the plot (SVG).
    #[arg(long, default_value = "emilio-sweep.svg")]
    pub plot: PathBuf,
    /// Print one JSON object (every pair's figures) instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Model size: `tiny` (a few layers, hidden 64) or `qwen2.5-0.5b` (the real shapes).
    #[arg(long, default_value = "tiny", value_parser = parse_preset)]
    pub preset: Preset,
    /// Seed of every weight.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// With `--format dir`: the directory to write config.json, model.safetensors and
    /// tokenizer.json into. With `--format gguf`: the .gguf file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Give the checkpoint its own lm_head instead of tying it to the embedding.
    #[arg(long)]
    pub untied: bool,
    /// Stored dtype of the weights: bf16 (as published), f16 or f32. With `--format gguf`, the
    /// weights are rounded to it before quantizing, so they are the directory checkpoint's.
    #[arg(long, value_enum, default_value_t = DtypeArg::Bf16)]
    pub dtype: DtypeArg,
    /// What to write: a Hugging Face checkpoint directory, or one Qwen2 GGUF file (llama.cpp's
    /// layout, the tokenizer in its metadata).
    #[arg(long, value_enum, default_value_t = SynthFormat::Dir)]
    pub format: SynthFormat,
    /// With `--format gguf` only: the type of the linear weights and embedding, f16, q8_0
    /// (default) or q4_0; norms and biases stay f32.
    #[arg(long, value_parser = parse_quant)]
    pub quant: Option<GgufQuant>,
    /// Replace the files of an existing checkpoint (or GGUF file) at --out; without it, synth
    /// refuses to overwrite them.
    #[arg(long)]
    pub force: bool,
}

/// What `synth` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SynthFormat {
    /// A checkpoint directory (config.json, model.safetensors, tokenizer.json).
    Dir,
    /// One GGUF file.
    Gguf,
}

fn parse_pair(s: &str) -> Result<LogConfig, String> {
    let Some((format, exp)) = s.split_once('/') else {
        return Err(format!(
            "{s:?} is not a pair: write FORMAT/EXP, e.g. f16/exact or lns8/mitchell"
        ));
    };
    Ok(LogConfig::new(parse_format(format)?, parse_exp(exp)?))
}

fn parse_exp(s: &str) -> Result<ExpMode, String> {
    s.parse().map_err(|e: candle_core::Error| e.to_string())
}

fn parse_format(s: &str) -> Result<WeightFormat, String> {
    s.parse().map_err(|e: candle_core::Error| e.to_string())
}

fn parse_quant(s: &str) -> Result<GgufQuant, String> {
    s.parse().map_err(|e: candle_core::Error| e.to_string())
}

fn parse_preset(s: &str) -> Result<Preset, String> {
    s.parse().map_err(|e: candle_core::Error| e.to_string())
}

fn parse_top_p(s: &str) -> Result<f64, String> {
    let p: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if p > 0.0 && p <= 1.0 {
        Ok(p)
    } else {
        Err(format!("top-p must be in (0, 1], got {p}"))
    }
}

fn parse_temperature(s: &str) -> Result<f64, String> {
    let t: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if t >= 0.0 && t.is_finite() {
        Ok(t)
    } else {
        Err(format!(
            "temperature must be a finite number ≥ 0 (0 = greedy), got {t}"
        ))
    }
}

fn parse_penalty(s: &str) -> Result<f32, String> {
    let p: f32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if p > 0.0 && p.is_finite() {
        Ok(p)
    } else {
        Err(format!(
            "repeat penalty must be a finite number > 0 (1 = none), got {p}"
        ))
    }
}

/// A count that must be at least 1 (tokens, repetitions, rows).
fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
}
