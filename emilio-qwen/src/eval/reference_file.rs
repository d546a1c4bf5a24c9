//! Stock's log-probabilities, kept compactly enough to be saved: the reference an evaluation
//! scores against.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use candle_core::{bail, Error, Result};
use safetensors::{Dtype, SafeTensors, View};
use serde::{Deserialize, Serialize};

use super::corpus::Corpus;
use crate::compare::log_sum_exp;

/// Stock's largest probabilities are kept exactly until the rest (the tail) holds at most this
/// mass...
const TAIL_MASS: f64 = 1e-3;
/// ... or this many are kept.
const MAX_KEPT: usize = 4096;
/// The tail's log-probabilities are stored in 16 bits each, over the tail's own range.
const CODE_STEPS: f64 = u16::MAX as f64;

/// What a reference was made from: an evaluation refuses a reference whose model, tokenizer,
/// text, context or dtype differ from its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceInfo {
    /// The model as the user named it.
    pub model: String,
    /// SHA-256 of the model's configuration and weight files.
    pub model_sha256: String,
    /// SHA-256 of the tokenizer (its JSON form).
    pub tokenizer_sha256: String,
    /// The text file as the user named it.
    pub text: String,
    /// SHA-256 of the text's bytes.
    pub text_sha256: String,
    /// Tokens per chunk.
    pub ctx: usize,
    /// Chunks scored.
    pub chunks: usize,
    /// Logits per position.
    pub vocab: usize,
    /// Stock's dtype (of its weights and activations).
    pub dtype: String,
}

/// Stock's log-probabilities at every scored position.
///
/// Per position it keeps the log-sum-exp of stock's logits (in f64), stock's logit of the
/// correct token, stock's largest logits exactly (f32, as stock computed them) until the tail
/// left holds at most 0.1% of the probability (or 4096 are kept), the tail's exact mass `R`,
/// and every tail token's log-probability in 16 bits over the tail's range (a step `2h` of
/// about 25/65535 nats, so each is within `h ≈ 2e-4` nats). The perplexity, Δp and top-1
/// figures are exact.
///
/// The KL divergence is exact over the kept tokens; over the tail it is estimated as
/// `T̂ = Σ p̃ (ln p̃ − ln q) + (R − Σ p̃)` (`p̃` the stored probabilities, `q` the model's), which
/// differs from the tail's true `Σ p ln(p / q)` by at most
///
/// `(e^h − 1 − h) Σ p̃ + (e^h − 1) (Σ p̃ |ln p̃ − ln q| + h Σ p̃)`
///
/// (write `p = p̃ e^ε`, `|ε| ≤ h`; the exact error is `Σ p̃ [(e^ε − 1 − ε) − (e^ε − 1) ln(p/q)]`,
/// since `Σ p = R`). With `R ≤ 1e-3` this is below 1e-9 nats for models as close as the log
/// formats keep them, and it is computed at every position ([`super::Scored::kl_bound`]) and
/// reported, never assumed. The file holds 2 bytes per vocabulary entry per position, as
/// llama-perplexity's does, and the KL computed from it is as good as the full logits' to
/// within that bound (llama-perplexity's 16-bit log-probabilities over a 16-nat window floor
/// its KL near 1e-4 nats).
#[derive(Debug, Clone)]
pub struct Reference {
    info: ReferenceInfo,
    /// Every chunk's tokens, as the corpus cut them.
    tokens: Vec<u32>,
    lse: Vec<f64>,
    tail_mass: Vec<f64>,
    target_logit: Vec<f32>,
    /// Position `i` keeps `top_ids[offsets[i]..offsets[i + 1]]`.
    offsets: Vec<u64>,
    top_ids: Vec<u32>,
    top_logits: Vec<f32>,
    /// Per position: the tail's smallest log-probability and the code step; a tail token's
    /// log-probability is `tail_lo + code · tail_step` (within half a step).
    tail_lo: Vec<f64>,
    tail_step: Vec<f64>,
    /// `vocab` codes per position (a kept token's code is 0 and unused).
    tail_codes: Vec<u16>,
}

/// One position of a [`Reference`].
#[derive(Debug, Clone, Copy)]
pub struct ReferencePosition<'a> {
    /// `ln Σ_v exp(stock_v)`.
    pub lse: f64,
    /// Stock's probability mass outside `top_ids` (exact).
    pub tail_mass: f64,
    /// Stock's logit of the correct token.
    pub target_logit: f32,
    /// Stock's largest logits' token ids, largest first (ties: lower id first, so the first is
    /// stock's greedy choice).
    pub top_ids: &'a [u32],
    /// Those logits.
    pub top_logits: &'a [f32],
    /// The tail's smallest log-probability.
    pub tail_lo: f64,
    /// The code step (0 when the tail has one value or none).
    pub tail_step: f64,
    /// Every token's code (those of `top_ids` unused).
    pub tail_codes: &'a [u16],
}

impl ReferencePosition<'_> {
    /// Stock's stored log-probability of tail token `v` (within `tail_step / 2`).
    pub fn tail_ln_p(&self, v: usize) -> f64 {
        self.tail_lo + self.tail_codes[v] as f64 * self.tail_step
    }
}

const FORMAT: &str = "emilio-eval-reference";
const VERSION: &str = "1";

impl Reference {
    /// An empty reference for `corpus`'s chunks, to [`Reference::push`] stock's rows into.
    pub fn new(info: ReferenceInfo, corpus: &Corpus) -> Result<Self> {
        if info.ctx != corpus.ctx() || info.chunks != corpus.chunks() {
            bail!("reference info (ctx {}, {} chunks) does not describe the corpus (ctx {}, {} chunks)", info.ctx, info.chunks, corpus.ctx(), corpus.chunks())
        }
        let positions = corpus.scored();
        Ok(Self {
            info,
            tokens: corpus.tokens().to_vec(),
            lse: Vec::with_capacity(positions),
            tail_mass: Vec::with_capacity(positions),
            target_logit: Vec::with_capacity(positions),
            offsets: vec![0],
            top_ids: Vec::new(),
            top_logits: Vec::new(),
            tail_lo: Vec::with_capacity(positions),
            tail_step: Vec::with_capacity(positions),
            tail_codes: Vec::new(),
        })
    }

    /// Adds the next position: stock's logits `row` and the token it should predict.
    pub fn push(&mut self, row: &[f32], target: u32) -> Result<()> {
        if row.len() != self.info.vocab || target as usize >= row.len() {
            bail!(
                "a reference row has {} logits (expected {}) and target {target}",
                row.len(),
                self.info.vocab
            )
        }
        let lse = log_sum_exp(row);
        let mut order: Vec<u32> = (0..row.len() as u32).collect();
        order
            .sort_unstable_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
        let ln_p = |v: u32| row[v as usize] as f64 - lse;
        // tail[k]: the mass of order[k..], summed from the smallest up.
        let mut tail = vec![0.0f64; order.len() + 1];
        for k in (0..order.len()).rev() {
            tail[k] = tail[k + 1] + ln_p(order[k]).exp();
        }
        let keep = (1..=order.len().min(MAX_KEPT))
            .find(|&k| tail[k] <= TAIL_MASS)
            .unwrap_or(order.len().min(MAX_KEPT));
        let rest = &order[keep..];
        let (lo, hi) = match (rest.last(), rest.first()) {
            (Some(&min), Some(&max)) => (ln_p(min), ln_p(max)),
            _ => (0.0, 0.0),
        };
        let step = (hi - lo) / CODE_STEPS;
        let start = self.tail_codes.len();
        self.tail_codes.resize(start + row.len(), 0);
        if step > 0.0 {
            for &v in rest {
                let code = ((ln_p(v) - lo) / step).round().clamp(0.0, CODE_STEPS);
                self.tail_codes[start + v as usize] = code as u16;
            }
        }
        self.lse.push(lse);
        self.tail_mass.push(tail[keep]);
        self.target_logit.push(row[target as usize]);
        self.top_ids.extend_from_slice(&order[..keep]);
        self.top_logits
            .extend(order[..keep].iter().map(|&v| row[v as usize]));
        self.offsets.push(self.top_ids.len() as u64);
        self.tail_lo.push(lo);
        self.tail_step.push(step);
        Ok(())
    }

    /// What the reference was made from.
    pub fn info(&self) -> &ReferenceInfo {
        &self.info
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.lse.len()
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.lse.is_empty()
    }

    /// Stock's logits kept exactly, in all.
    pub fn kept_logits(&self) -> usize {
        self.top_ids.len()
    }

    /// Position `i` (chunk `i / scored_per_chunk`).
    pub fn position(&self, i: usize) -> ReferencePosition<'_> {
        let (a, b) = (self.offsets[i] as usize, self.offsets[i + 1] as usize);
        let vocab = self.info.vocab;
        ReferencePosition {
            lse: self.lse[i],
            tail_mass: self.tail_mass[i],
            target_logit: self.target_logit[i],
            top_ids: &self.top_ids[a..b],
            top_logits: &self.top_logits[a..b],
            tail_lo: self.tail_lo[i],
            tail_step: self.tail_step[i],
            tail_codes: &self.tail_codes[i * vocab..(i + 1) * vocab],
        }
    }

    /// Errors, naming what differs, unless this reference was made from the model, tokenizer,
    /// text, context and dtype of `expected` and holds at least its chunks of the same tokens.
    pub fn check_matches(
        &self,
        expected: &ReferenceInfo,
        corpus: &Corpus,
        path: &Path,
    ) -> Result<()> {
        let have = &self.info;
        // In this API's terms (the fields of `ReferenceInfo`, `Reference::save`), not a command
        // line's: a front end adds its own advice.
        let remake = "make a new reference from these inputs (Reference::save)";
        let differs = |what: &str, theirs: &str, ours: &str| -> Result<()> {
            bail!(
                "the reference {} was made from another {what} ({theirs}), not this one \
                 ({ours}): {remake}",
                path.display()
            )
        };
        if have.model_sha256 != expected.model_sha256 {
            differs(
                "model",
                &format!("{}, sha256 {}", have.model, have.model_sha256),
                &format!("{}, sha256 {}", expected.model, expected.model_sha256),
            )?
        }
        if have.tokenizer_sha256 != expected.tokenizer_sha256 {
            differs(
                "tokenizer",
                &format!("sha256 {}", have.tokenizer_sha256),
                &format!("sha256 {}", expected.tokenizer_sha256),
            )?
        }
        if have.text_sha256 != expected.text_sha256 {
            differs(
                "text",
                &format!("{}, sha256 {}", have.text, have.text_sha256),
                &format!("{}, sha256 {}", expected.text, expected.text_sha256),
            )?
        }
        if have.ctx != expected.ctx {
            differs(
                "context",
                &format!("ctx {}", have.ctx),
                &format!("ctx {}", expected.ctx),
            )?
        }
        if have.dtype != expected.dtype {
            differs(
                "dtype",
                &format!("dtype {}", have.dtype),
                &format!("dtype {}", expected.dtype),
            )?
        }
        if have.vocab != expected.vocab {
            differs(
                "vocabulary",
                &format!("{} logits", have.vocab),
                &format!("{} logits", expected.vocab),
            )?
        }
        if have.chunks < expected.chunks {
            bail!(
                "the reference {} holds {} chunks and {} are asked for: ask for {} or fewer, \
                 or {remake}",
                path.display(),
                have.chunks,
                expected.chunks,
                have.chunks
            )
        }
        let n = corpus.tokens().len();
        if self.tokens.get(..n) != Some(corpus.tokens()) {
            bail!(
                "the reference {} holds other tokens than this text gives (same model, tokenizer \
                 and text by their hashes): {remake}",
                path.display()
            )
        }
        Ok(())
    }

    /// Writes the reference to `path` as a safetensors file (readable by any safetensors
    /// library): tensors `tokens`, `lse`, `tail_mass`, `target_logit`, `top_offsets`,
    /// `top_ids`, `top_logits`, and the [`ReferenceInfo`] as JSON in the metadata.
    pub fn save(&self, path: &Path) -> Result<()> {
        let positions = self.lse.len();
        let tensors = [
            (
                "tokens",
                Raw::new(
                    Dtype::U32,
                    vec![self.info.chunks, self.info.ctx],
                    &self.tokens,
                ),
            ),
            ("lse", Raw::new(Dtype::F64, vec![positions], &self.lse)),
            (
                "tail_mass",
                Raw::new(Dtype::F64, vec![positions], &self.tail_mass),
            ),
            (
                "target_logit",
                Raw::new(Dtype::F32, vec![positions], &self.target_logit),
            ),
            (
                "top_offsets",
                Raw::new(Dtype::U64, vec![positions + 1], &self.offsets),
            ),
            (
                "top_ids",
                Raw::new(Dtype::U32, vec![self.top_ids.len()], &self.top_ids),
            ),
            (
                "top_logits",
                Raw::new(Dtype::F32, vec![self.top_logits.len()], &self.top_logits),
            ),
            (
                "tail_lo",
                Raw::new(Dtype::F64, vec![positions], &self.tail_lo),
            ),
            (
                "tail_step",
                Raw::new(Dtype::F64, vec![positions], &self.tail_step),
            ),
            (
                "tail_codes",
                Raw::new(
                    Dtype::U16,
                    vec![positions, self.info.vocab],
                    &self.tail_codes,
                ),
            ),
        ];
        let info = serde_json::to_string(&self.info).map_err(Error::wrap)?;
        let metadata = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("version".to_string(), VERSION.to_string()),
            ("info".to_string(), info),
        ]);
        // Serialised in memory and written with `std::fs::write`, so the file gets the usual
        // permissions (safetensors' own writer creates it readable by its owner only).
        let bytes = safetensors::serialize(tensors, Some(metadata)).map_err(|e| {
            Error::msg(format!(
                "cannot serialise the reference {}: {e}",
                path.display()
            ))
        })?;
        std::fs::write(path, bytes).map_err(|e| {
            Error::msg(format!(
                "cannot write the reference {}: {e}",
                path.display()
            ))
        })
    }

    /// Reads a reference [`Reference::save`] wrote, checking that it is whole and consistent.
    pub fn load(path: &Path) -> Result<Self> {
        let bad = |why: String| {
            Error::msg(format!(
                "{} is not a usable emilio eval reference: {why}; make a new one (Reference::save)",
                path.display()
            ))
        };
        let bytes = std::fs::read(path).map_err(|e| {
            Error::msg(format!("cannot read the reference {}: {e}", path.display()))
        })?;
        let file = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let (_, metadata) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let meta = metadata.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(bad(
                "its metadata has no `format: emilio-eval-reference`".into()
            ));
        }
        if meta.get("version").map(String::as_str) != Some(VERSION) {
            return Err(bad(format!(
                "it is version {}, this emilio reads version {VERSION}",
                meta.get("version").map_or("(none)", String::as_str)
            )));
        }
        let info: ReferenceInfo = serde_json::from_str(meta.get("info").map_or("", String::as_str))
            .map_err(|e| bad(format!("its `info` metadata: {e}")))?;
        let tensor = |name: &str, dtype: Dtype| -> Result<Vec<u8>> {
            let t = file
                .tensor(name)
                .map_err(|_| bad(format!("it has no tensor `{name}`")))?;
            if t.dtype() != dtype {
                return Err(bad(format!(
                    "tensor `{name}` is {:?}, not {dtype:?}",
                    t.dtype()
                )));
            }
            Ok(t.data().to_vec())
        };
        let tokens: Vec<u32> = from_le(&tensor("tokens", Dtype::U32)?, u32::from_le_bytes);
        let lse: Vec<f64> = from_le(&tensor("lse", Dtype::F64)?, f64::from_le_bytes);
        let tail_mass: Vec<f64> = from_le(&tensor("tail_mass", Dtype::F64)?, f64::from_le_bytes);
        let target_logit: Vec<f32> =
            from_le(&tensor("target_logit", Dtype::F32)?, f32::from_le_bytes);
        let offsets: Vec<u64> = from_le(&tensor("top_offsets", Dtype::U64)?, u64::from_le_bytes);
        let top_ids: Vec<u32> = from_le(&tensor("top_ids", Dtype::U32)?, u32::from_le_bytes);
        let top_logits: Vec<f32> = from_le(&tensor("top_logits", Dtype::F32)?, f32::from_le_bytes);
        let tail_lo: Vec<f64> = from_le(&tensor("tail_lo", Dtype::F64)?, f64::from_le_bytes);
        let tail_step: Vec<f64> = from_le(&tensor("tail_step", Dtype::F64)?, f64::from_le_bytes);
        let tail_codes: Vec<u16> = from_le(&tensor("tail_codes", Dtype::U16)?, u16::from_le_bytes);

        let ctx = info.ctx;
        let per_chunk = if ctx >= 3 { ctx - 1 - ctx / 2 } else { 0 };
        let positions = info.chunks * per_chunk;
        if per_chunk == 0 || info.chunks == 0 || info.vocab == 0 {
            return Err(bad(format!(
                "its info is empty (ctx {ctx}, {} chunks, vocab {})",
                info.chunks, info.vocab
            )));
        }
        if tokens.len() != info.chunks * ctx
            || [
                lse.len(),
                tail_mass.len(),
                target_logit.len(),
                tail_lo.len(),
                tail_step.len(),
            ] != [positions; 5]
            || offsets.len() != positions + 1
            || top_ids.len() != top_logits.len()
            || tail_codes.len() != positions * info.vocab
        {
            return Err(bad(format!(
                "its tensors' lengths do not fit {} chunks of ctx {ctx}",
                info.chunks
            )));
        }
        let ordered = offsets.first() == Some(&0)
            && offsets.windows(2).all(|w| w[0] < w[1])
            && offsets.last() == Some(&(top_ids.len() as u64));
        if !ordered {
            return Err(bad(
                "its `top_offsets` are not increasing from 0 to the kept count".into(),
            ));
        }
        if let Some(v) = top_ids
            .iter()
            .chain(&tokens)
            .find(|&&v| v as usize >= info.vocab)
        {
            return Err(bad(format!(
                "token id {v} is outside its vocabulary of {}",
                info.vocab
            )));
        }
        let finite = lse
            .iter()
            .chain(&tail_mass)
            .chain(&tail_lo)
            .chain(&tail_step)
            .all(|x| x.is_finite())
            && target_logit
                .iter()
                .chain(&top_logits)
                .all(|x| x.is_finite());
        if !finite {
            return Err(bad("it holds non-finite values".into()));
        }
        Ok(Self {
            info,
            tokens,
            lse,
            tail_mass,
            target_logit,
            offsets,
            top_ids,
            top_logits,
            tail_lo,
            tail_step,
            tail_codes,
        })
    }
}

fn from_le<T, const N: usize>(bytes: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| f(c.try_into().expect("chunks_exact gives N bytes")))
        .collect()
}

/// A tensor's little-endian bytes, for the safetensors writer.
struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl Raw {
    fn new<T: ToLe>(dtype: Dtype, shape: Vec<usize>, values: &[T]) -> Self {
        let mut bytes = Vec::with_capacity(std::mem::size_of_val(values));
        for v in values {
            v.put_le(&mut bytes);
        }
        Self {
            dtype,
            shape,
            bytes,
        }
    }
}

impl View for Raw {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// A stored value, written little-endian.
trait ToLe: Copy {
    fn put_le(self, out: &mut Vec<u8>);
}

macro_rules! to_le {
    ($($t:ty),*) => {$(
        impl ToLe for $t {
            fn put_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
to_le!(u16, u32, u64, f32, f64);
