//! The Qwen2 fork: `candle_transformers::models::qwen2` with every linear layer a [`LogLinear`]
//! and both attention products [`log_matmul`]. It runs Llama-family models too ([`Config`]'s
//! architecture): the same model without the q/k/v biases, with Llama's rotary tables (and Llama
//! 3's frequency scaling), as stock `llama` computes them.
//!
//! Names, constructors, `forward` signatures and every non-product step (rotary embedding,
//! RMSNorm, the causal and sliding-window mask, the KV cache, tied embeddings) are stock's, so
//! an A/B against stock measures the log domain and nothing else. The additions are the
//! [`Options`] value, two input checks that turn stock's panics/opaque errors into clear ones
//! (an empty input, and a prompt running past `max_position_embeddings`), and
//! [`ModelForCausalLM::log_weight_bytes`].
//!
//! What differs from stock is arrangement only; each leaves every result bit for bit what
//! stock's arrangement gives, and makes a CPU decode step cheaper (measured in
//! `docs/decode-profile.md`; the whole data path is in `docs/architecture.md`):
//! - **stacked q/k/v and gate/up**: `q/k/v_proj` run as one layer of stacked weights, and so do
//!   `gate/up_proj`: each output is the same dot product over the same converted weight row,
//!   with one op call instead of three (two), so fewer fork/joins per token;
//! - **grouped GQA**: attention groups the query heads that share a KV head
//!   (`(b, kv_heads, groups·q_len, d)`) instead of `repeat_kv`: the same products, without
//!   copying and splitting into logs every cached key and value once per query head;
//! - **the pool hand-off**: on the CPU, [`ModelForCausalLM::forward`] and [`Model::forward`]
//!   run on rayon's pool, so the op calls of a step start their parallel work from a worker
//!   thread instead of handing it over from (and waking back) the caller's thread, ~220 times
//!   per token.

use candle_core::{bail, DType, Device, IndexOp, Module, Result, Tensor, D};
use candle_nn::{Activation, RmsNorm, VarBuilder};
use emilio_op::{
    log_linear_no_bias, log_matmul_with, ExpMode, LogConfig, LogLinear, LogWeight, WeightFormat,
};

use crate::architecture::StockFamily;
use crate::config::{Config, RopeScaling};

/// What the fork adds to stock's constructor arguments: the log domain's [`LogConfig`] (how
/// each linear layer's weight is stored, default [`WeightFormat::F16`], and how every
/// product's `exp` is taken, in the linear layers and both attention products, default
/// [`ExpMode::Exact`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Options {
    /// The linear layers' weight format and exp mode.
    pub log: LogConfig,
}

impl Options {
    /// Options with the given weight format and exact products.
    pub fn new(weight_format: WeightFormat) -> Self {
        Self {
            log: weight_format.into(),
        }
    }

    /// The same options with products in mode `exp`.
    pub fn with_exp(self, exp: ExpMode) -> Self {
        Self {
            log: self.log.with_exp(exp),
        }
    }

    /// The linear layers' [`LogConfig`]: the format and the exp mode.
    pub fn log_config(&self) -> LogConfig {
        self.log
    }
}

impl From<LogConfig> for Options {
    fn from(log: LogConfig) -> Self {
        Self { log }
    }
}

fn rms_norm(size: usize, eps: f64, vb: VarBuilder) -> Result<RmsNorm> {
    // Stock wraps `candle_nn::rms_norm` in a tracing span (`with_tracing::RmsNorm`); same math.
    candle_nn::rms_norm(size, eps, vb)
}

/// The rotary tables, grown as positions are used instead of computed for the whole
/// `max_position_embeddings` at load: a configuration is input, and its context can be far
/// longer than anything a run reaches (a million positions are ~1 GB of tables). Position `p`'s
/// row is the same whatever the table's length (each entry is one product `p · inv_freq`, no
/// sum), so a grown table is bit for bit stock's full one.
#[derive(Debug, Clone)]
struct RotaryEmbedding {
    sin: Tensor,
    cos: Tensor,
    /// Rows the tables have now.
    len: usize,
    /// The most rows they may grow to: the context.
    max_len: usize,
    dtype: DType,
    cfg: Config,
}

/// Rows the rotary tables start with (fewer when the context is shorter): enough for most
/// prompts, a few hundred kilobytes at a head dimension of 128.
const ROTARY_INITIAL_POSITIONS: usize = 4096;

impl RotaryEmbedding {
    fn new(dtype: DType, cfg: &Config, dev: &Device) -> Result<Self> {
        let max_len = cfg.max_position_embeddings;
        let len = max_len.min(ROTARY_INITIAL_POSITIONS);
        let (sin, cos) = Self::tables(dtype, cfg, dev, len)?;
        Ok(Self {
            sin,
            cos,
            len,
            max_len,
            dtype,
            cfg: cfg.clone(),
        })
    }

    /// Makes the tables hold positions `0..positions` (at most the context; callers check it),
    /// doubling their length, or more, when they are too short.
    fn ensure(&mut self, positions: usize) -> Result<()> {
        if positions <= self.len {
            return Ok(());
        }
        let len = positions
            .max(self.len.saturating_mul(2))
            .min(self.max_len)
            .max(positions);
        let (sin, cos) = Self::tables(self.dtype, &self.cfg, self.sin.device(), len)?;
        (self.sin, self.cos, self.len) = (sin, cos, len);
        Ok(())
    }

    /// The position tables for `0..max_seq_len`, computed as the architecture's stock family
    /// (its registry entry's [`StockFamily`]) computes them (Qwen2: the frequencies in f64, the
    /// table in `dtype`; Llama: in f32, with Llama 3's scaling), so the A/B against stock sees
    /// the same rotary embedding bit for bit. Not a model product.
    fn tables(
        dtype: DType,
        cfg: &Config,
        dev: &Device,
        max_seq_len: usize,
    ) -> Result<(Tensor, Tensor)> {
        let dim = cfg.head_dim();
        let positions = Tensor::arange(0u32, max_seq_len as u32, dev)?;
        let freqs = match cfg.architecture.spec().stock {
            StockFamily::Qwen2 => {
                let inv_freq: Vec<_> = (0..dim)
                    .step_by(2)
                    .map(|i| 1f32 / cfg.rope_theta.powf(i as f64 / dim as f64) as f32)
                    .collect();
                let inv_freq_len = inv_freq.len();
                let inv_freq =
                    Tensor::from_vec(inv_freq, (1, inv_freq_len), dev)?.to_dtype(dtype)?;
                let t = positions.to_dtype(dtype)?.reshape((max_seq_len, 1))?;
                t.matmul(&inv_freq)?
            }
            StockFamily::Llama => {
                let theta = cfg.rope_theta as f32;
                let inv_freq: Vec<f32> = (0..dim)
                    .step_by(2)
                    .map(|i| 1f32 / theta.powf(i as f32 / dim as f32))
                    .map(|f| cfg.rope_scaling.as_ref().map_or(f, |s| llama3_scaled(f, s)))
                    .collect();
                let inv_freq_len = inv_freq.len();
                let inv_freq = Tensor::from_vec(inv_freq, (1, inv_freq_len), dev)?;
                let t = positions.to_dtype(DType::F32)?.reshape((max_seq_len, 1))?;
                t.matmul(&inv_freq)?
            }
        };
        Ok((freqs.sin()?.to_dtype(dtype)?, freqs.cos()?.to_dtype(dtype)?))
    }

    fn apply_rotary_emb_qkv(
        &self,
        q: &Tensor,
        k: &Tensor,
        seqlen_offset: usize,
    ) -> Result<(Tensor, Tensor)> {
        let (_b_sz, _h, seq_len, _n_embd) = q.dims4()?;
        let cos = self.cos.narrow(0, seqlen_offset, seq_len)?;
        let sin = self.sin.narrow(0, seqlen_offset, seq_len)?;
        let q_embed = candle_nn::rotary_emb::rope(&q.contiguous()?, &cos, &sin)?;
        let k_embed = candle_nn::rotary_emb::rope(&k.contiguous()?, &cos, &sin)?;
        Ok((q_embed, k_embed))
    }
}

/// One rotary frequency under Llama 3's scaling (as Hugging Face and stock Candle's `llama`):
/// wavelengths shorter than `original / high_freq_factor` are kept, longer than
/// `original / low_freq_factor` slowed by `factor`, and those between blended smoothly.
fn llama3_scaled(freq: f32, s: &RopeScaling) -> f32 {
    let original = s.original_max_position_embeddings as f32;
    let wavelen = 2. * std::f32::consts::PI / freq;
    if wavelen < original / s.high_freq_factor {
        freq
    } else if wavelen > original / s.low_freq_factor {
        freq / s.factor
    } else {
        let smooth =
            (original / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        (1. - smooth) * freq / s.factor + smooth * freq
    }
}

#[derive(Debug, Clone)]
#[allow(clippy::upper_case_acronyms)]
struct MLP {
    /// `gate_proj` and `up_proj` stacked: `(2·intermediate, hidden)`, gate rows first.
    gate_up_proj: LogLinear,
    intermediate_size: usize,
    down_proj: LogLinear,
    act_fn: Activation,
}

impl MLP {
    fn new(cfg: &Config, vb: VarBuilder, opts: &Options) -> Result<Self> {
        let hidden_sz = cfg.hidden_size;
        let intermediate_sz = cfg.intermediate_size;
        let f = opts.log_config();
        // Read, stacked and converted on the CPU, then moved (see `on_cpu`).
        let cpu = on_cpu(&vb);
        let gate = cpu
            .pp("gate_proj")
            .get((intermediate_sz, hidden_sz), "weight")?;
        let up = cpu
            .pp("up_proj")
            .get((intermediate_sz, hidden_sz), "weight")?;
        let gate_up_proj = LogLinear::from_weights(&Tensor::cat(&[&gate, &up], 0)?, None, f)?
            .to_device(vb.device())?;
        let down_proj = log_linear_no_bias(intermediate_sz, hidden_sz, f, vb.pp("down_proj"))?;
        Ok(Self {
            gate_up_proj,
            intermediate_size: intermediate_sz,
            down_proj,
            act_fn: cfg.hidden_act,
        })
    }

    fn log_weight_bytes(&self) -> usize {
        [&self.gate_up_proj, &self.down_proj]
            .iter()
            .map(|l| l.weight().size_in_bytes())
            .sum()
    }
}

impl Module for MLP {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let gate_up = xs.apply(&self.gate_up_proj)?;
        let n = self.intermediate_size;
        let lhs = gate_up.narrow(D::Minus1, 0, n)?.apply(&self.act_fn)?;
        let rhs = gate_up.narrow(D::Minus1, n, n)?;
        (lhs * rhs)?.apply(&self.down_proj)
    }
}

#[derive(Debug, Clone)]
struct Attention {
    /// `q_proj`, `k_proj` and `v_proj` stacked: `((heads + 2·kv_heads)·head_dim, hidden)`,
    /// with their biases, in that order.
    qkv_proj: LogLinear,
    o_proj: LogLinear,
    num_heads: usize,
    num_kv_heads: usize,
    num_kv_groups: usize,
    head_dim: usize,
    hidden_size: usize,
    /// The exp mode of `Q·Kᵀ` and `P·V` (the linear layers carry theirs in their weights; for
    /// `table`, which needs weight codes, the exact one).
    exp: ExpMode,
    kv_cache: Option<(Tensor, Tensor)>,
}

impl Attention {
    fn new(cfg: &Config, vb: VarBuilder, opts: &Options) -> Result<Self> {
        let hidden_sz = cfg.hidden_size;
        let num_heads = cfg.num_attention_heads;
        let num_kv_heads = cfg.num_key_value_heads;
        let num_kv_groups = num_heads / num_kv_heads;
        let head_dim = hidden_sz / num_heads;
        let f = opts.log_config();
        // Read, stacked and converted on the CPU, then moved (see `on_cpu`).
        let cpu = on_cpu(&vb);
        // Qwen2 has q/k/v biases; Llama has none (unless its config says `attention_bias`).
        let get = |name: &str, out: usize| -> Result<(Tensor, Option<Tensor>)> {
            let vb = cpu.pp(name);
            let bias = match cfg.attention_bias {
                true => Some(vb.get(out, "bias")?),
                false => None,
            };
            Ok((vb.get((out, hidden_sz), "weight")?, bias))
        };
        let (q_w, q_b) = get("q_proj", num_heads * head_dim)?;
        let (k_w, k_b) = get("k_proj", num_kv_heads * head_dim)?;
        let (v_w, v_b) = get("v_proj", num_kv_heads * head_dim)?;
        let bias = match (q_b, k_b, v_b) {
            (Some(q), Some(k), Some(v)) => Some(Tensor::cat(&[&q, &k, &v], 0)?),
            _ => None,
        };
        let qkv_proj = LogLinear::from_weights(&Tensor::cat(&[&q_w, &k_w, &v_w], 0)?, bias, f)?
            .to_device(vb.device())?;
        let o_proj = log_linear_no_bias(num_heads * head_dim, hidden_sz, f, vb.pp("o_proj"))?;
        Ok(Self {
            qkv_proj,
            o_proj,
            num_heads,
            num_kv_heads,
            num_kv_groups,
            head_dim,
            hidden_size: hidden_sz,
            exp: opts.log.exp.for_activations(),
            kv_cache: None,
        })
    }

    fn forward(
        &mut self,
        xs: &Tensor,
        rotary_emb: &RotaryEmbedding,
        attention_mask: Option<&Tensor>,
        seqlen_offset: usize,
    ) -> Result<Tensor> {
        let (b_sz, q_len, _) = xs.dims3()?;

        let qkv = self.qkv_proj.forward(xs)?;
        let (q_dim, kv_dim) = (
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
        );
        let query_states = qkv.narrow(D::Minus1, 0, q_dim)?;
        let key_states = qkv.narrow(D::Minus1, q_dim, kv_dim)?;
        let value_states = qkv.narrow(D::Minus1, q_dim + kv_dim, kv_dim)?;

        let query_states = query_states
            .reshape((b_sz, q_len, self.num_heads, self.head_dim))?
            .transpose(1, 2)?;
        let key_states = key_states
            .reshape((b_sz, q_len, self.num_kv_heads, self.head_dim))?
            .transpose(1, 2)?;
        let value_states = value_states
            .reshape((b_sz, q_len, self.num_kv_heads, self.head_dim))?
            .transpose(1, 2)?;

        let (query_states, key_states) =
            rotary_emb.apply_rotary_emb_qkv(&query_states, &key_states, seqlen_offset)?;

        let (key_states, value_states) = match &self.kv_cache {
            None => (key_states, value_states),
            Some((prev_k, prev_v)) => {
                let key_states = Tensor::cat(&[prev_k, &key_states], 2)?;
                let value_states = Tensor::cat(&[prev_v, &value_states], 2)?;
                (key_states, value_states)
            }
        };
        self.kv_cache = Some((key_states.clone(), value_states.clone()));

        // Stock repeats each KV head for its `num_kv_groups` query heads (`repeat_kv`); here
        // the query heads of a group are stacked as rows against their one KV head instead
        // (head h = kv·groups + g, repeat_kv's order), which gives the same products without
        // copying, and splitting into logs, every cached key and value once per query head.
        let kv_len = key_states.dim(2)?;
        let grouped_rows = self.num_kv_groups * q_len;
        let attn_output = {
            let scale = 1f64 / f64::sqrt(self.head_dim as f64);
            let query_states =
                query_states.reshape((b_sz, self.num_kv_heads, grouped_rows, self.head_dim))?;
            // Q·Kᵀ in the log domain; the transposed operand is read through its strides.
            let attn_weights =
                log_matmul_with(&query_states, &key_states.transpose(2, 3)?, self.exp)?
                    .reshape((b_sz, self.num_heads, q_len, kv_len))?;
            let attn_weights = (attn_weights * scale)?;

            let attn_weights = match attention_mask {
                None => attn_weights,
                Some(mask) => attn_weights.broadcast_add(mask)?,
            };
            let attn_weights = candle_nn::ops::softmax_last_dim(&attn_weights)?.reshape((
                b_sz,
                self.num_kv_heads,
                grouped_rows,
                kv_len,
            ))?;
            // softmax·V in the log domain; masked positions are exact zeros (ln 0 = -inf).
            log_matmul_with(&attn_weights, &value_states, self.exp)?.reshape((
                b_sz,
                self.num_heads,
                q_len,
                self.head_dim,
            ))?
        };
        attn_output
            .transpose(1, 2)?
            .reshape((b_sz, q_len, self.hidden_size))?
            .apply(&self.o_proj)
    }

    fn clear_kv_cache(&mut self) {
        self.kv_cache = None
    }

    fn log_weight_bytes(&self) -> usize {
        [&self.qkv_proj, &self.o_proj]
            .iter()
            .map(|l| l.weight().size_in_bytes())
            .sum()
    }
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    self_attn: Attention,
    mlp: MLP,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
}

impl DecoderLayer {
    fn new(cfg: &Config, vb: VarBuilder, opts: &Options) -> Result<Self> {
        let self_attn = Attention::new(cfg, vb.pp("self_attn"), opts)?;
        let mlp = MLP::new(cfg, vb.pp("mlp"), opts)?;
        let input_layernorm =
            rms_norm(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("input_layernorm"))?;
        let post_attention_layernorm = rms_norm(
            cfg.hidden_size,
            cfg.rms_norm_eps,
            vb.pp("post_attention_layernorm"),
        )?;
        Ok(Self {
            self_attn,
            mlp,
            input_layernorm,
            post_attention_layernorm,
        })
    }

    fn forward(
        &mut self,
        xs: &Tensor,
        rotary_emb: &RotaryEmbedding,
        attention_mask: Option<&Tensor>,
        seqlen_offset: usize,
    ) -> Result<Tensor> {
        let residual = xs;
        let xs = self.input_layernorm.forward(xs)?;
        let xs = self
            .self_attn
            .forward(&xs, rotary_emb, attention_mask, seqlen_offset)?;
        let xs = (xs + residual)?;
        let residual = &xs;
        let xs = xs.apply(&self.post_attention_layernorm)?.apply(&self.mlp)?;
        residual + xs
    }

    fn clear_kv_cache(&mut self) {
        self.self_attn.clear_kv_cache()
    }
}

/// The token embedding. For `f32`/`f16` log weights stock's plain table (a lookup, not a
/// product). For the lns formats the table is held as codes like every other weight and a
/// lookup decodes its rows (`LogWeight::dequantize_rows`): the format's error then applies to
/// the embedding as well, and a tied head shares the codes, so the model holds the table once,
/// at the format's bits per weight.
#[derive(Debug, Clone)]
enum TokenEmbedding {
    Plain(candle_nn::Embedding),
    Codes { weight: LogWeight, dtype: DType },
}

impl TokenEmbedding {
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            Self::Plain(e) => e.forward(ids),
            Self::Codes { weight, dtype } => {
                let mut dims = ids.dims().to_vec();
                let flat = ids.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
                dims.push(weight.dims().1);
                weight
                    .dequantize_rows(&flat)?
                    .to_dtype(*dtype)?
                    .to_device(ids.device())?
                    .reshape(dims)
            }
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Self::Plain(e) => tensor_bytes(e.embeddings()),
            Self::Codes { weight, .. } => weight.size_in_bytes(),
        }
    }
}

/// The Qwen2 decoder stack (embedding, layers, final norm), as stock's `qwen2::Model`.
#[derive(Debug, Clone)]
pub struct Model {
    embed_tokens: TokenEmbedding,
    rotary_emb: RotaryEmbedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    sliding_window: usize,
    max_position_embeddings: usize,
    device: Device,
    dtype: DType,
}

impl Model {
    /// Builds the stack from `vb` (tensors under `model.`) with default [`Options`].
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Self::new_with_options(cfg, vb, &Options::default())
    }

    /// Builds the stack from `vb` with the given options.
    ///
    /// Each linear layer converts its weight as it is created and the plain tensor is dropped
    /// right away, so at no point are all plain weights held at once.
    pub fn new_with_options(cfg: &Config, vb: VarBuilder, opts: &Options) -> Result<Self> {
        let vb_m = vb.pp("model");
        let embed_tokens = if opts.log.format.is_lns() {
            let table = on_cpu(&vb_m)
                .pp("embed_tokens")
                .get((cfg.vocab_size, cfg.hidden_size), "weight")?;
            TokenEmbedding::Codes {
                weight: LogWeight::from_tensor(&table, opts.log_config())?,
                dtype: vb.dtype(),
            }
        } else {
            TokenEmbedding::Plain(candle_nn::embedding(
                cfg.vocab_size,
                cfg.hidden_size,
                vb_m.pp("embed_tokens"),
            )?)
        };
        let rotary_emb = RotaryEmbedding::new(vb.dtype(), cfg, vb_m.device())?;
        // Grown as layers are built, not reserved from the count: a configuration is input, and
        // a count of 10⁹ must fail at the first missing layer, not abort on the reservation.
        let mut layers = Vec::new();
        let vb_l = vb_m.pp("layers");
        for layer_idx in 0..cfg.num_hidden_layers {
            let layer = DecoderLayer::new(cfg, vb_l.pp(layer_idx), opts)?;
            layers.push(layer)
        }
        let norm = rms_norm(cfg.hidden_size, cfg.rms_norm_eps, vb_m.pp("norm"))?;
        Ok(Self {
            embed_tokens,
            rotary_emb,
            layers,
            norm,
            sliding_window: cfg.sliding_window,
            max_position_embeddings: cfg.max_position_embeddings,
            device: vb.device().clone(),
            dtype: vb.dtype(),
        })
    }

    fn prepare_causal_attention_mask(
        &self,
        b_size: usize,
        tgt_len: usize,
        seqlen_offset: usize,
    ) -> Result<Tensor> {
        // Sliding window mask?
        let mask: Vec<_> = (0..tgt_len)
            .flat_map(|i| {
                (0..tgt_len).map(move |j| {
                    if i < j || j + self.sliding_window < i {
                        f32::NEG_INFINITY
                    } else {
                        0.
                    }
                })
            })
            .collect();
        let mask = Tensor::from_slice(&mask, (tgt_len, tgt_len), &self.device)?;
        let mask = if seqlen_offset > 0 {
            let mask0 = Tensor::zeros((tgt_len, seqlen_offset), self.dtype, &self.device)?;
            Tensor::cat(&[&mask0, &mask], D::Minus1)?
        } else {
            mask
        };
        mask.expand((b_size, 1, tgt_len, tgt_len + seqlen_offset))?
            .to_dtype(self.dtype)
    }

    fn prepare_attention_mask(&self, attn_mask: &Tensor) -> Result<Tensor> {
        let (b_sz, sql_len) = attn_mask.dims2()?;
        let mut mask: Vec<Tensor> = vec![];
        for b in 0..b_sz {
            mask.push(attn_mask.i((b, ..))?.expand((1, 1, sql_len, sql_len))?);
        }
        let mask = Tensor::cat(&mask, 0)?;
        let on_true = mask.zeros_like()?.to_dtype(self.dtype)?;
        let on_false = Tensor::new(f32::NEG_INFINITY, &self.device)?
            .broadcast_as(mask.shape())?
            .to_dtype(self.dtype)?;
        mask.where_cond(&on_true, &on_false)
    }

    /// Hidden states `(batch, seq_len, hidden)` after the final norm, for `input_ids`
    /// `(batch, seq_len)` at positions `seqlen_offset..seqlen_offset + seq_len`, appending to the
    /// KV cache. `attn_mask` is stock's optional `(batch, seq_len)` mask (no cache offset).
    ///
    /// Errors (where stock would panic or fail deep inside `narrow`) when `seq_len` is zero or
    /// the positions run past `max_position_embeddings`.
    pub fn forward(
        &mut self,
        input_ids: &Tensor,
        seqlen_offset: usize,
        attn_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        on_pool(input_ids.device(), || {
            self.forward_on_pool(input_ids, seqlen_offset, attn_mask)
        })
    }

    fn forward_on_pool(
        &mut self,
        input_ids: &Tensor,
        seqlen_offset: usize,
        attn_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b_size, seq_len) = input_ids.dims2()?;
        check_positions(seq_len, seqlen_offset, self.max_position_embeddings)?;
        let attention_mask: Option<Tensor> = match attn_mask {
            Some(mask) => Some(self.prepare_attention_mask(mask)?),
            None => {
                if seq_len <= 1 {
                    None
                } else {
                    Some(self.prepare_causal_attention_mask(b_size, seq_len, seqlen_offset)?)
                }
            }
        };
        self.rotary_emb.ensure(seqlen_offset + seq_len)?;
        let mut xs = self.embed_tokens.forward(input_ids)?;
        for layer in self.layers.iter_mut() {
            xs = layer.forward(
                &xs,
                &self.rotary_emb,
                attention_mask.as_ref(),
                seqlen_offset,
            )?
        }
        xs.apply(&self.norm)
    }

    /// Empties every layer's KV cache; the next call starts at `seqlen_offset = 0`.
    pub fn clear_kv_cache(&mut self) {
        for layer in self.layers.iter_mut() {
            layer.clear_kv_cache()
        }
    }

    /// The plain token embedding table (`f32`/`f16` log weights; the lns formats hold it as
    /// codes, and this is `None`).
    pub fn embed_tokens(&self) -> Option<&candle_nn::Embedding> {
        match &self.embed_tokens {
            TokenEmbedding::Plain(e) => Some(e),
            TokenEmbedding::Codes { .. } => None,
        }
    }

    /// Bytes held by the log-domain weights of all layers (magnitudes and sign bits).
    pub fn log_weight_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.self_attn.log_weight_bytes() + l.mlp.log_weight_bytes())
            .sum()
    }

    /// Bytes of every tensor the stack holds: log-domain weights, biases, the embedding table,
    /// the norms and the rotary tables as long as they are now (the KV cache, which grows with
    /// the context, excluded).
    pub fn memory_bytes(&self) -> usize {
        let rotary = tensor_bytes(&self.rotary_emb.sin) + tensor_bytes(&self.rotary_emb.cos);
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                let a = &l.self_attn;
                linear_bytes(&a.qkv_proj)
                    + linear_bytes(&a.o_proj)
                    + linear_bytes(&l.mlp.gate_up_proj)
                    + linear_bytes(&l.mlp.down_proj)
                    + norm_bytes(&l.input_layernorm)
                    + norm_bytes(&l.post_attention_layernorm)
            })
            .sum();
        self.embed_tokens.bytes() + norm_bytes(&self.norm) + rotary + layers
    }
}

fn tensor_bytes(t: &Tensor) -> usize {
    t.elem_count() * t.dtype().size_in_bytes()
}

/// Bytes a linear layer holds: its log-domain weight and its bias.
fn linear_bytes(l: &LogLinear) -> usize {
    l.weight().size_in_bytes() + l.bias().map_or(0, tensor_bytes)
}

fn norm_bytes(n: &RmsNorm) -> usize {
    tensor_bytes(n.weight())
}

/// `vb` reading onto the CPU: the stacked layers are built there and moved to `vb`'s device as
/// log-domain weights, so on a GPU the plain f32/bf16 weights are never uploaded (and read back
/// for the conversion).
fn on_cpu<'a>(vb: &VarBuilder<'a>) -> VarBuilder<'a> {
    vb.clone().set_device(Device::Cpu)
}

/// Runs `f` on a thread of rayon's global pool (on the calling thread if it is one already)
/// when the model runs on the CPU; elsewhere on the calling thread.
///
/// A forward pass makes ~220 op calls per token whose CPU kernels fork onto that pool; called
/// from outside it, each call hands its work to a sleeping worker and blocks until woken again.
/// From a worker, the call starts its tasks in place and only the other workers are woken.
/// Only scheduling changes: every result is the same. GPU work is queued by the calling thread,
/// where the device's context already is, and gains nothing from the pool.
fn on_pool<R: Send>(device: &Device, f: impl FnOnce() -> R + Send) -> R {
    if device.is_cpu() {
        rayon::scope(|_| f())
    } else {
        f()
    }
}

/// Errors unless position `first` is one of the `seq` input positions of a `forward_from`.
pub(crate) fn check_first(first: usize, seq: usize) -> Result<()> {
    if first >= seq {
        bail!("forward_from: first scored position {first} is not among the {seq} input positions")
    }
    Ok(())
}

fn check_positions(seq_len: usize, seqlen_offset: usize, max_positions: usize) -> Result<()> {
    if seq_len == 0 {
        bail!("the input has no tokens: Qwen2 needs at least one token per forward call")
    }
    if seqlen_offset + seq_len > max_positions {
        bail!(
            "positions {seqlen_offset}..{} run past max_position_embeddings = {max_positions}: \
             {seq_len} new token(s) after {seqlen_offset} cached; shorten the prompt or the \
             generation (at most {max_positions} tokens in all)",
            seqlen_offset + seq_len
        )
    }
    Ok(())
}

/// Qwen2 with its language-model head, as stock's `qwen2::ModelForCausalLM`.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use emilio_qwen::loading::Checkpoint;
/// use emilio_qwen::synthetic::{write_checkpoint, Preset, SyntheticSpec};
/// use emilio_qwen::{Options, WeightFormat};
///
/// let dir = std::env::temp_dir().join(format!("emilio-qwen-doc-{}", std::process::id()));
/// write_checkpoint(&dir, &SyntheticSpec::new(Preset::Tiny))?;
/// let ckpt = Checkpoint::from_dir(&dir)?;
/// let opts = Options::new(WeightFormat::F16);
/// let mut model = ckpt.load(DType::F32, &Device::Cpu, &opts)?;
/// let prompt = Tensor::new(&[[1u32, 2, 3, 4]], &Device::Cpu)?;
/// let logits = model.forward(&prompt, 0)?; // (1, 1, vocab): the last position only
/// assert_eq!(logits.dims(), &[1, 1, ckpt.config.vocab_size]);
/// let next = Tensor::new(&[[5u32]], &Device::Cpu)?;
/// let logits = model.forward(&next, 4)?; // one decode step through the KV cache
/// assert_eq!(logits.dims(), &[1, 1, ckpt.config.vocab_size]);
/// std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ModelForCausalLM {
    base_model: Model,
    lm_head: LogLinear,
    /// The head is the embedding (no `lm_head.weight`).
    tied: bool,
}

impl ModelForCausalLM {
    /// Builds the model from `vb` with default [`Options`] (`f16` log weights), like stock's
    /// `ModelForCausalLM::new`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Self::new_with_options(cfg, vb, &Options::default())
    }

    /// Builds the model from `vb` with the given options.
    ///
    /// As stock: `lm_head.weight` is used when `vb` has it, otherwise the head is tied to
    /// `model.embed_tokens` (converted to the log domain; the plain table stays for the lookup,
    /// except in the lns formats, whose lookup reads the head's codes).
    pub fn new_with_options(cfg: &Config, vb: VarBuilder, opts: &Options) -> Result<Self> {
        let base_model = Model::new_with_options(cfg, vb.clone(), opts)?;
        let tied = !vb.contains_tensor("lm_head.weight");
        let lm_head = if !tied {
            log_linear_no_bias(
                cfg.hidden_size,
                cfg.vocab_size,
                opts.log_config(),
                vb.pp("lm_head"),
            )?
        } else {
            match &base_model.embed_tokens {
                TokenEmbedding::Plain(e) => {
                    LogLinear::from_weights(e.embeddings(), None, opts.log_config())?
                }
                // The codes the lookup reads are the head's weight: one copy.
                TokenEmbedding::Codes { weight, .. } => {
                    LogLinear::new(weight.to_device(vb.device())?, None)
                }
            }
        };
        Ok(Self {
            base_model,
            lm_head,
            tied,
        })
    }

    /// Logits `(batch, 1, vocab)` of the last position of `input_ids` `(batch, seq_len)`, which
    /// sit at positions `seqlen_offset..seqlen_offset + seq_len` (the KV cache holds the earlier
    /// ones). As stock, only the last position goes through the head.
    pub fn forward(&mut self, input_ids: &Tensor, seqlen_offset: usize) -> Result<Tensor> {
        on_pool(input_ids.device(), || {
            let (_b_size, seq_len) = input_ids.dims2()?;
            self.base_model
                .forward(input_ids, seqlen_offset, None)?
                .narrow(1, seq_len - 1, 1)?
                .apply(&self.lm_head)
        })
    }

    /// Logits `(batch, seq_len − first, vocab)` of positions `first..seq_len` of `input_ids`, in
    /// one pass (only those positions go through the head): what a corpus evaluation scores.
    pub fn forward_from(
        &mut self,
        input_ids: &Tensor,
        seqlen_offset: usize,
        first: usize,
    ) -> Result<Tensor> {
        on_pool(input_ids.device(), || {
            let (_b_size, seq_len) = input_ids.dims2()?;
            check_first(first, seq_len)?;
            self.base_model
                .forward(input_ids, seqlen_offset, None)?
                .narrow(1, first, seq_len - first)?
                .apply(&self.lm_head)
        })
    }

    /// Empties the KV cache; the next call starts at `seqlen_offset = 0`.
    pub fn clear_kv_cache(&mut self) {
        self.base_model.clear_kv_cache()
    }

    /// The decoder stack.
    pub fn base_model(&self) -> &Model {
        &self.base_model
    }

    /// The head (tied or not).
    pub fn lm_head(&self) -> &LogLinear {
        &self.lm_head
    }

    /// Bytes held by all log-domain weights, the head included: what a decode step reads.
    pub fn log_weight_bytes(&self) -> usize {
        self.base_model.log_weight_bytes() + self.lm_head.weight().size_in_bytes()
    }

    /// Bytes of every tensor the model holds once loaded ([`Model::memory_bytes`] and the
    /// head): what loading it must cost at least.
    pub fn memory_bytes(&self) -> usize {
        // A tied head in an lns format is the embedding's codes: held once.
        let shared = match &self.base_model.embed_tokens {
            TokenEmbedding::Codes { weight, .. } if self.tied => weight.size_in_bytes(),
            _ => 0,
        };
        self.base_model.memory_bytes() + linear_bytes(&self.lm_head) - shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Architecture;

    /// Four heads of 16 (the tiny preset's shape), written out: the model is below the
    /// synthetic checkpoints, which must not be imported from here.
    fn config(architecture: Architecture) -> Config {
        Config {
            architecture,
            vocab_size: 512,
            hidden_size: 64,
            intermediate_size: 160,
            num_hidden_layers: 1,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            max_position_embeddings: 10_000,
            sliding_window: 10_000,
            max_window_layers: 1,
            tie_word_embeddings: true,
            rope_theta: 10_000.0,
            rms_norm_eps: 1e-6,
            use_sliding_window: false,
            hidden_act: Activation::Silu,
            attention_bias: architecture == Architecture::Qwen2,
            rope_scaling: None,
        }
    }

    /// A table grown on demand holds, at every position, what stock's table for the whole
    /// context holds, bit for bit (each entry is one product, whatever the length).
    #[test]
    fn grown_rotary_tables_are_the_full_tables() -> Result<()> {
        let dev = Device::Cpu;
        for arch in [Architecture::Qwen2, Architecture::Llama] {
            for dtype in [DType::F32, DType::BF16, DType::F16] {
                let cfg = config(arch);
                let (sin, cos) = RotaryEmbedding::tables(dtype, &cfg, &dev, 10_000)?;
                let mut grown = RotaryEmbedding::new(dtype, &cfg, &dev)?;
                assert_eq!(grown.len, ROTARY_INITIAL_POSITIONS);
                grown.ensure(5_000)?;
                assert_eq!(grown.len, 8_192);
                grown.ensure(9_999)?;
                assert_eq!(grown.len, 10_000, "never past the context");
                for (a, b) in [(&grown.sin, &sin), (&grown.cos, &cos)] {
                    let a = a.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                    let b = b.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
                }
            }
        }
        Ok(())
    }
}
