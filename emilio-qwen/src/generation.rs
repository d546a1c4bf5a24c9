//! The one generation engine: a prompt's token ids in, a prefill, then one decode step per token
//! until a stop token or the token budget; every command that generates runs it.
//!
//! [`Generator`] plays the part of the `TextGeneration` struct of Candle's examples, without the
//! tokenizer, so the same loop serves streaming text, A/B comparisons, benchmarks and evaluation:
//! - it drives any [`CausalLM`]: this crate's model and the stock references of
//!   [`crate::reference`] (Candle's `qwen2`, `llama` and their quantized versions);
//! - a [`Sampler`] chooses each token from the logits of the last position: [`Greedy`],
//!   [`Sampled`] (Candle's seeded temperature / top-p sampling with a repeat penalty), or
//!   [`Recorder`], which keeps every step's logits and can teacher-force given tokens;
//! - [`Timings`] holds the prefill time and each decode step's, each covering the model's forward
//!   and the choice of the next token (not the caller's callback);
//! - [`Generator::run`] goes to a stop and calls back once per token (a CLI streams the text
//!   there); [`Generator::prefill`] and [`Generator::step`] are the same loop one call at a time,
//!   for a caller that feeds its own tokens (a chat turn after a reply, a corpus).
//!
//! ```
//! use candle_core::{DType, Device};
//! use emilio_qwen::generation::{Finish, Generator, Greedy, IM_END};
//! use emilio_qwen::synthetic::{tokenizer_special_id, write_checkpoint, Preset, SyntheticSpec};
//! use emilio_qwen::{loading, Options, WeightFormat};
//!
//! let dir = std::env::temp_dir().join(format!("emilio-generation-doc-{}", std::process::id()));
//! write_checkpoint(&dir, &SyntheticSpec::new(Preset::Tiny).with_seed(3))?;
//! let (_, mut model) = loading::load(&dir, DType::F32, &Device::Cpu, &Options::new(WeightFormat::F16))?;
//! let mut gen = Generator::new(&mut model, Greedy, &Device::Cpu)
//!     .with_stop_tokens([tokenizer_special_id(IM_END)]);
//! let mut streamed = Vec::new();
//! let out = gen.run(&[3, 1, 4, 1, 5], 8, |token| {
//!     streamed.push(token); // a CLI decodes and prints it here
//!     Ok::<_, candle_core::Error>(())
//! })?;
//! assert!(!out.tokens.is_empty() && out.tokens.len() <= 8);
//! assert_eq!(out.finish == Finish::StopToken, streamed.len() < out.tokens.len());
//! assert_eq!(out.timings.prefill_tokens, 5);
//! assert_eq!(out.timings.decode.len(), out.tokens.len() - 1);
//! std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), candle_core::Error>(())
//! ```

use std::time::{Duration, Instant};

use candle_core::{bail, DType, Device, Error, Result, Tensor, D};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::qwen2 as stock;
use tokenizers::Tokenizer;

use crate::compare::argmax;

/// The end-of-text special token (also the padding and, for base models, the EOS token).
pub const ENDOFTEXT: &str = "<|endoftext|>";
/// Opens a ChatML turn.
pub const IM_START: &str = "<|im_start|>";
/// Closes a ChatML turn (the EOS token of chat models).
pub const IM_END: &str = "<|im_end|>";

/// The tokens that end a reply: the end of a ChatML turn (instruct models) and the end of text
/// (base models).
pub const STOP_TOKENS: [&str; 2] = [IM_END, ENDOFTEXT];

/// Ids of the [`STOP_TOKENS`] that `tokenizer` has.
pub fn stop_ids(tokenizer: &Tokenizer) -> Vec<u32> {
    STOP_TOKENS
        .iter()
        .filter_map(|t| tokenizer.token_to_id(t))
        .collect()
}

/// A causal language model the engine can drive: [`crate::ModelForCausalLM`] and stock
/// Candle's `qwen2::ModelForCausalLM`, which share these two methods but no trait.
pub trait CausalLM {
    /// Logits `(batch, 1, vocab)` of the last position of `input_ids` `(batch, seq)`, whose
    /// positions follow the `seqlen_offset` already in the KV cache (which they are appended to).
    fn forward(&mut self, input_ids: &Tensor, seqlen_offset: usize) -> Result<Tensor>;

    /// Logits `(batch, seq − first, vocab)` of positions `first..seq` of `input_ids`
    /// `(batch, seq)`, which follow the `seqlen_offset` positions in the KV cache: what a corpus
    /// evaluation scores.
    ///
    /// The default is for models whose `forward` returns only the last position's logits
    /// (stock Llama, Candle's quantized models): one forward over positions `..=first`, then one
    /// position per forward through the KV cache, each giving the logits a single pass would
    /// (up to rounding). A model that has every position's hidden states overrides it with one
    /// pass.
    fn forward_from(
        &mut self,
        input_ids: &Tensor,
        seqlen_offset: usize,
        first: usize,
    ) -> Result<Tensor> {
        forward_from_by_steps(self, input_ids, seqlen_offset, first)
    }

    /// Forgets every position: the next forward starts at offset 0.
    fn clear_kv_cache(&mut self);
}

/// [`CausalLM::forward_from`] from `forward` alone: positions `..=first` in one forward, then
/// one position per forward through the KV cache.
pub fn forward_from_by_steps<M: CausalLM + ?Sized>(
    model: &mut M,
    input_ids: &Tensor,
    seqlen_offset: usize,
    first: usize,
) -> Result<Tensor> {
    let (_, seq) = input_ids.dims2()?;
    crate::model::check_first(first, seq)?;
    let mut rows = vec![model.forward(&input_ids.narrow(1, 0, first + 1)?, seqlen_offset)?];
    for i in first + 1..seq {
        rows.push(model.forward(&input_ids.narrow(1, i, 1)?, seqlen_offset + i)?);
    }
    Tensor::cat(&rows, 1)
}

impl CausalLM for crate::ModelForCausalLM {
    fn forward(&mut self, input_ids: &Tensor, seqlen_offset: usize) -> Result<Tensor> {
        crate::ModelForCausalLM::forward(self, input_ids, seqlen_offset)
    }

    fn forward_from(
        &mut self,
        input_ids: &Tensor,
        seqlen_offset: usize,
        first: usize,
    ) -> Result<Tensor> {
        crate::ModelForCausalLM::forward_from(self, input_ids, seqlen_offset, first)
    }

    fn clear_kv_cache(&mut self) {
        crate::ModelForCausalLM::clear_kv_cache(self)
    }
}

impl CausalLM for stock::ModelForCausalLM {
    fn forward(&mut self, input_ids: &Tensor, seqlen_offset: usize) -> Result<Tensor> {
        stock::ModelForCausalLM::forward(self, input_ids, seqlen_offset)
    }

    fn clear_kv_cache(&mut self) {
        stock::ModelForCausalLM::clear_kv_cache(self)
    }
}

/// A borrowed model, so a caller keeps it across runs (and backends) while a [`Generator`] runs it.
impl<M: CausalLM + ?Sized> CausalLM for &mut M {
    fn forward(&mut self, input_ids: &Tensor, seqlen_offset: usize) -> Result<Tensor> {
        (**self).forward(input_ids, seqlen_offset)
    }

    fn forward_from(
        &mut self,
        input_ids: &Tensor,
        seqlen_offset: usize,
        first: usize,
    ) -> Result<Tensor> {
        (**self).forward_from(input_ids, seqlen_offset, first)
    }

    fn clear_kv_cache(&mut self) {
        (**self).clear_kv_cache()
    }
}

/// Chooses the next token.
pub trait Sampler {
    /// The next token, from the logits `(vocab,)` of the last position (in the model's dtype, on
    /// its device) and every token in the KV cache so far, the prompt's included.
    fn sample(&mut self, logits: &Tensor, context: &[u32]) -> Result<u32>;
}

/// Any closure `(logits, context) -> token` is a sampler.
impl<F: FnMut(&Tensor, &[u32]) -> Result<u32>> Sampler for F {
    fn sample(&mut self, logits: &Tensor, context: &[u32]) -> Result<u32> {
        self(logits, context)
    }
}

/// The most likely token: the argmax of the logits, computed on their device (the first of equal
/// maxima on the CPU), so only one id crosses back to the host per step.
#[derive(Debug, Clone, Copy, Default)]
pub struct Greedy;

impl Sampler for Greedy {
    fn sample(&mut self, logits: &Tensor, _context: &[u32]) -> Result<u32> {
        logits.argmax(D::Minus1)?.to_scalar::<u32>()
    }
}

/// Candle's [`LogitsProcessor`] (seeded sampling, or argmax), after an optional repeat penalty
/// over the last tokens of the context (Candle's `apply_repeat_penalty`).
pub struct Sampled {
    processor: LogitsProcessor,
    repeat_penalty: f32,
    repeat_last_n: usize,
}

impl Sampled {
    /// Samples as `sampling` says, from a generator seeded with `seed`; no repeat penalty.
    pub fn new(seed: u64, sampling: Sampling) -> Self {
        Self {
            processor: LogitsProcessor::from_sampling(seed, sampling),
            repeat_penalty: 1.0,
            repeat_last_n: 0,
        }
    }

    /// Divides positive (multiplies negative) logits of the tokens among the last `last_n` of
    /// the context by `penalty`; 1 is none.
    pub fn with_repeat_penalty(mut self, penalty: f32, last_n: usize) -> Self {
        self.repeat_penalty = penalty;
        self.repeat_last_n = last_n;
        self
    }
}

/// The sampling a temperature and an optional top-p ask for: argmax at temperature 0, nucleus
/// sampling with a `top_p`, otherwise the whole softmax.
pub fn sampling(temperature: f64, top_p: Option<f64>) -> Sampling {
    match (temperature, top_p) {
        (0.0, _) => Sampling::ArgMax,
        (temperature, Some(p)) => Sampling::TopP { p, temperature },
        (temperature, None) => Sampling::All { temperature },
    }
}

impl Sampler for Sampled {
    fn sample(&mut self, logits: &Tensor, context: &[u32]) -> Result<u32> {
        if self.repeat_penalty == 1.0 {
            return self.processor.sample(logits);
        }
        let from = context.len().saturating_sub(self.repeat_last_n);
        let logits = candle_transformers::utils::apply_repeat_penalty(
            logits,
            self.repeat_penalty,
            &context[from..],
        )?;
        self.processor.sample(&logits)
    }
}

/// Keeps every step's logits, as `f32` on the host, and chooses the argmax of them
/// ([`crate::compare::argmax`]), or at step `i` the `i`-th of the tokens it forces: what
/// comparing two models position by position (`emilio ab`) or scoring a text needs.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    forced: Option<Vec<u32>>,
    logits: Vec<Vec<f32>>,
}

impl Recorder {
    /// Greedy, recording.
    pub fn greedy() -> Self {
        Self::default()
    }

    /// Teacher-forces `tokens`, recording the logits before each; a step past the last is an
    /// error.
    pub fn forced(tokens: Vec<u32>) -> Self {
        Self {
            forced: Some(tokens),
            logits: Vec::new(),
        }
    }

    /// The logits recorded so far, one vector per step.
    pub fn logits(&self) -> &[Vec<f32>] {
        &self.logits
    }

    /// The recorded logits.
    pub fn into_logits(self) -> Vec<Vec<f32>> {
        self.logits
    }
}

impl Sampler for Recorder {
    fn sample(&mut self, logits: &Tensor, _context: &[u32]) -> Result<u32> {
        let logits = logits.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let step = self.logits.len();
        let next = match &self.forced {
            None => argmax(&logits),
            Some(tokens) => match tokens.get(step) {
                Some(&t) => t,
                None => bail!(
                    "teacher forcing has {} tokens but step {step} asked for another",
                    tokens.len()
                ),
            },
        };
        self.logits.push(logits);
        Ok(next)
    }
}

/// Where the time of a generation went. Each figure covers the model's forward and the
/// sampler's choice of the next token; the callback of [`Generator::run`] is not timed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timings {
    /// Tokens run through prefill (the prompt).
    pub prefill_tokens: usize,
    /// Time of the prefill: the prompt's forward and the first token's choice.
    pub prefill: Duration,
    /// Each decode step: one token's forward and the next token's choice.
    pub decode: Vec<Duration>,
}

impl Timings {
    /// Seconds of prefill.
    pub fn prefill_secs(&self) -> f64 {
        self.prefill.as_secs_f64()
    }

    /// Seconds of all decode steps.
    pub fn decode_secs(&self) -> f64 {
        self.decode.iter().sum::<Duration>().as_secs_f64()
    }

    /// Prompt tokens per second of prefill.
    pub fn prefill_tok_s(&self) -> f64 {
        self.prefill_tokens as f64 / self.prefill_secs().max(1e-9)
    }

    /// Decode steps per second (0 when there were none).
    pub fn decode_tok_s(&self) -> f64 {
        if self.decode.is_empty() {
            0.0
        } else {
            self.decode.len() as f64 / self.decode_secs().max(1e-9)
        }
    }
}

/// Why [`Generator::run`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The model chose a stop token.
    StopToken,
    /// The token budget ran out.
    MaxTokens,
}

/// What [`Generator::run`] produced.
#[derive(Debug, Clone)]
pub struct Generated {
    /// Every chosen token, in order; the last is the stop token when one ended generation.
    pub tokens: Vec<u32>,
    /// Why generation ended.
    pub finish: Finish,
    /// The run's prefill and decode times.
    pub timings: Timings,
}

/// The generation loop over a model `M` with a sampler `S`; see the [module docs](self).
///
/// State: the tokens in the model's KV cache ([`Generator::tokens`]) and the [`Timings`] since
/// the last [`Generator::reset`]. A chosen token enters the cache when it is passed to
/// [`Generator::step`].
pub struct Generator<M, S> {
    model: M,
    sampler: S,
    device: Device,
    stop_tokens: Vec<u32>,
    tokens: Vec<u32>,
    timings: Timings,
}

impl<M: CausalLM, S: Sampler> Generator<M, S> {
    /// A generator with an empty cache (call [`Generator::reset`] first if `model` has run
    /// before and its cache is not empty) and no stop tokens; token ids go to `device`.
    pub fn new(model: M, sampler: S, device: &Device) -> Self {
        Self {
            model,
            sampler,
            device: device.clone(),
            stop_tokens: Vec::new(),
            tokens: Vec::new(),
            timings: Timings::default(),
        }
    }

    /// Ends [`Generator::run`] when one of `ids` is chosen (see [`stop_ids`]).
    pub fn with_stop_tokens(mut self, ids: impl IntoIterator<Item = u32>) -> Self {
        self.stop_tokens = ids.into_iter().collect();
        self
    }

    /// Whether `token` ends a run.
    pub fn is_stop(&self, token: u32) -> bool {
        self.stop_tokens.contains(&token)
    }

    /// Empties the model's KV cache, the token list and the timings.
    pub fn reset(&mut self) {
        self.model.clear_kv_cache();
        self.tokens.clear();
        self.timings = Timings::default();
    }

    /// Runs `ids` in one forward after the tokens already cached (the prompt, or a chat's next
    /// turn) and returns the token chosen after them. Timed as prefill.
    pub fn prefill(&mut self, ids: &[u32]) -> Result<u32> {
        if ids.is_empty() {
            bail!("nothing to prefill: the prompt has no tokens")
        }
        let start = Instant::now();
        let next = self.forward_and_sample(ids)?;
        self.timings.prefill += start.elapsed();
        self.timings.prefill_tokens += ids.len();
        Ok(next)
    }

    /// One decode step: runs `token` (usually the one just chosen) and returns the next.
    pub fn step(&mut self, token: u32) -> Result<u32> {
        let start = Instant::now();
        let next = self.forward_and_sample(&[token])?;
        self.timings.decode.push(start.elapsed());
        Ok(next)
    }

    /// Generates from `prompt` on an emptied cache: prefill, then decode steps until a stop token
    /// is chosen or `max_tokens` are (nothing runs for 0). `on_token` is called with each chosen
    /// token except a stop token, in order, before the next step; its error ends the run.
    pub fn run<E: From<Error>>(
        &mut self,
        prompt: &[u32],
        max_tokens: usize,
        mut on_token: impl FnMut(u32) -> std::result::Result<(), E>,
    ) -> std::result::Result<Generated, E> {
        self.reset();
        let mut tokens = Vec::with_capacity(max_tokens.min(4096));
        let mut finish = Finish::MaxTokens;
        if max_tokens > 0 {
            let mut next = self.prefill(prompt)?;
            loop {
                tokens.push(next);
                if self.is_stop(next) {
                    finish = Finish::StopToken;
                    break;
                }
                on_token(next)?;
                if tokens.len() == max_tokens {
                    break;
                }
                next = self.step(next)?;
            }
        }
        Ok(Generated {
            tokens,
            finish,
            timings: self.timings.clone(),
        })
    }

    /// The tokens in the model's KV cache, in order.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Prefill and decode times since the last reset.
    pub fn timings(&self) -> &Timings {
        &self.timings
    }

    /// The sampler (a [`Recorder`]'s logits, say).
    pub fn sampler(&self) -> &S {
        &self.sampler
    }

    /// The model and the sampler back.
    pub fn into_parts(self) -> (M, S) {
        (self.model, self.sampler)
    }

    fn forward_and_sample(&mut self, ids: &[u32]) -> Result<u32> {
        let input = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        let logits = self
            .model
            .forward(&input, self.tokens.len())?
            .squeeze(0)?
            .squeeze(0)?;
        let position = self.tokens.len() + ids.len() - 1;
        check_finite(&logits, position)?;
        self.tokens.extend_from_slice(ids);
        self.sampler.sample(&logits, &self.tokens)
    }
}

/// Errors when `logits` hold a NaN or an infinity: a sampler would otherwise turn them into a
/// token (argmax of NaNs is token 0) and a comparison into perfect agreement. One reduction per
/// step on the logits' device (their sum is NaN exactly when a value is NaN or both infinities
/// appear, and infinite when one does; finite logits cannot overflow it in `f32`).
fn check_finite(logits: &Tensor, position: usize) -> Result<()> {
    let sum = logits.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
    if sum.is_finite() {
        return Ok(());
    }
    let values = logits
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let bad = values.iter().filter(|v| !v.is_finite()).count();
    let Some(first) = values.iter().position(|v| !v.is_finite()) else {
        return Ok(()); // finite values whose sum overflowed
    };
    bail!(
        "the model's logits at position {position} are not finite ({bad} of {} values NaN or \
         infinite, the first at token id {first}): a weight or activation is NaN or overflowed; \
         check the weights for non-finite values and the config (rope_theta, rms_norm_eps) for \
         impossible ones",
        values.len()
    )
}

#[cfg(test)]
mod tests;
