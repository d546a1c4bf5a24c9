//! Offline Qwen2 checkpoints with seeded random weights, for tests, demos and benchmarks on
//! machines without a network.
//!
//! [`write_checkpoint`] writes, into one directory, what a Hugging Face Qwen2 checkpoint has:
//! - `config.json` in Qwen2's format (`architectures: ["Qwen2ForCausalLM"]`, `model_type: "qwen2"`,
//!   `torch_dtype`), loadable by [`crate::loading`] and by stock Candle;
//! - `model.safetensors` (or shards plus `model.safetensors.index.json`) with every tensor under
//!   its real Qwen2 name: normal weights with standard deviation 0.02, norm weights near 1,
//!   stored as the spec's dtype (`bf16` by default, as published checkpoints are);
//! - `tokenizer.json`: a byte-level BPE (Qwen2's pre-tokenizer regex, the 256 byte tokens, a few
//!   hundred merges of common English, and the special tokens `<|endoftext|>`, `<|im_start|>`,
//!   `<|im_end|>`), so that any text round-trips through encode/decode and every id fits in the
//!   vocabulary; plus `tokenizer_config.json` with a ChatML chat template and
//!   `generation_config.json`.
//!
//! [`gguf::write_gguf`] writes the same weights and tokenizer as one Qwen2 GGUF file.
//!
//! Weights depend only on the seed and the tensor's name (each tensor, and each chunk of it, has
//! its own generator), so tied and untied checkpoints with one seed share every common tensor,
//! and the result does not depend on the number of threads.
//!
//! ```
//! use emilio_qwen::synthetic::{write_checkpoint, Preset, SyntheticSpec};
//!
//! let dir = std::env::temp_dir().join(format!("emilio-synth-doc-{}", std::process::id()));
//! let spec = SyntheticSpec::new(Preset::Tiny).with_seed(7).with_tied(false).with_gqa_ratio(1);
//! let ckpt = write_checkpoint(&dir, &spec)?;
//! assert_eq!(ckpt.config.num_key_value_heads, ckpt.config.num_attention_heads);
//! let tok = tokenizers::Tokenizer::from_file(&ckpt.tokenizer_path).unwrap();
//! let ids = tok.encode("Hello, world! <|im_end|>", false).unwrap().get_ids().to_vec();
//! assert!(ids.iter().all(|&i| (i as usize) < ckpt.config.vocab_size));
//! assert_eq!(tok.decode(&ids, false).unwrap(), "Hello, world! <|im_end|>");
//! std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), candle_core::Error>(())
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::{bail, DType, Device, Error, Result, Tensor};
use half::{bf16, f16};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde_json::{json, Value};

use crate::config::Config;
use crate::loading::{
    CONFIG_FILE, GENERATION_CONFIG_FILE, INDEX_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE,
    WEIGHTS_FILE,
};

/// The special tokens the synthetic tokenizer has, named where generation stops at them.
pub use crate::generation::{ENDOFTEXT, IM_END, IM_START};

// The same checkpoints as one Qwen2 GGUF file (llama.cpp's tensor names, f16/q8_0/q4_0 weights,
// the tokenizer in tokenizer.ggml.* metadata), for the GGUF path without a network. Its docs are
// the module's own (one doc comment, so its links resolve inside it).
pub mod gguf;

/// Standard deviation of the synthetic linear, bias and embedding weights.
pub const WEIGHT_STD: f64 = 0.02;

/// A model size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Preset {
    /// 3 layers, hidden 64, 4 query heads of 16, intermediate 160, vocabulary 512, 128
    /// positions: a model that runs in milliseconds, for CI.
    Tiny,
    /// The real shapes of Qwen2.5-0.5B: 24 layers, hidden 896, 14 query / 2 key-value heads of
    /// 64, intermediate 4864, vocabulary 151936, `rope_theta` 1e6, 32768 positions, tied
    /// embeddings (494M parameters).
    Qwen25_05B,
}

impl Preset {
    /// Every preset, smallest first.
    pub const ALL: [Preset; 2] = [Preset::Tiny, Preset::Qwen25_05B];

    /// The name `FromStr` accepts: `tiny`, `qwen2.5-0.5b`.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Tiny => "tiny",
            Preset::Qwen25_05B => "qwen2.5-0.5b",
        }
    }

    fn shape(self) -> Shape {
        match self {
            Preset::Tiny => Shape {
                hidden: 64,
                intermediate: 160,
                layers: 3,
                heads: 4,
                kv_heads: 2,
                vocab: 512,
                max_positions: 128,
                rope_theta: 10_000.0,
                rms_norm_eps: 1e-6,
                tied: true,
            },
            Preset::Qwen25_05B => Shape {
                hidden: 896,
                intermediate: 4864,
                layers: 24,
                heads: 14,
                kv_heads: 2,
                vocab: 151_936,
                max_positions: 32_768,
                rope_theta: 1_000_000.0,
                rms_norm_eps: 1e-6,
                tied: true,
            },
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preset {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let lower = s.to_ascii_lowercase();
        match Preset::ALL.iter().find(|p| p.name() == lower) {
            Some(&p) => Ok(p),
            None => bail!(
                "unknown preset {s:?}: expected one of {}",
                Preset::ALL.map(|p| format!("{:?}", p.name())).join(", ")
            ),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Shape {
    hidden: usize,
    intermediate: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    vocab: usize,
    max_positions: usize,
    rope_theta: f64,
    rms_norm_eps: f64,
    tied: bool,
}

/// What to write: a preset and the variations tests need.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticSpec {
    /// The model size.
    pub preset: Preset,
    /// Seed of every weight.
    pub seed: u64,
    /// Whether the head is tied to the embedding (no `lm_head.weight` written) or has its own.
    pub tie_word_embeddings: bool,
    /// Query heads per key-value head (`num_attention_heads / num_key_value_heads`); 1 is plain
    /// multi-head attention. Must divide the preset's head count.
    pub gqa_ratio: usize,
    /// The stored dtype of every tensor: `bf16` (default, as published), `f16` or `f32`.
    pub dtype: DType,
    /// Number of safetensors files; above 1 the checkpoint is sharded by layer, with a
    /// `model.safetensors.index.json`. At most the layer count.
    pub shards: usize,
}

impl SyntheticSpec {
    /// The preset's own configuration (tied embeddings, its GQA ratio, `bf16`, one file), seed 0.
    pub fn new(preset: Preset) -> Self {
        let s = preset.shape();
        Self {
            preset,
            seed: 0,
            tie_word_embeddings: s.tied,
            gqa_ratio: s.heads / s.kv_heads,
            dtype: DType::BF16,
            shards: 1,
        }
    }

    /// With another seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Tied (`true`) or untied (`false`) embeddings.
    pub fn with_tied(mut self, tied: bool) -> Self {
        self.tie_word_embeddings = tied;
        self
    }

    /// With `gqa_ratio` query heads per key-value head.
    pub fn with_gqa_ratio(mut self, gqa_ratio: usize) -> Self {
        self.gqa_ratio = gqa_ratio;
        self
    }

    /// With another stored dtype.
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    /// Written as `shards` files plus an index.
    pub fn with_shards(mut self, shards: usize) -> Self {
        self.shards = shards;
        self
    }

    fn check(&self) -> Result<Shape> {
        let mut s = self.preset.shape();
        if self.gqa_ratio == 0 || !s.heads.is_multiple_of(self.gqa_ratio) {
            bail!(
                "GQA ratio {} does not divide the {} query heads of preset {}",
                self.gqa_ratio,
                s.heads,
                self.preset
            )
        }
        s.kv_heads = s.heads / self.gqa_ratio;
        s.tied = self.tie_word_embeddings;
        if !matches!(self.dtype, DType::BF16 | DType::F16 | DType::F32) {
            bail!(
                "synthetic weights are stored as bf16, f16 or f32, not {:?}",
                self.dtype
            )
        }
        if self.shards == 0 || self.shards > s.layers {
            bail!(
                "{} shards for {} layers: use 1 to {} shards",
                self.shards,
                s.layers,
                s.layers
            )
        }
        if tokenizer_size() > s.vocab {
            bail!(
                "the synthetic tokenizer has {} ids, more than the vocabulary of {}",
                tokenizer_size(),
                s.vocab
            )
        }
        Ok(s)
    }

    /// The `config.json` this spec writes.
    pub fn config_json(&self) -> Result<Value> {
        let s = self.check()?;
        let torch_dtype = match self.dtype {
            DType::BF16 => "bfloat16",
            DType::F16 => "float16",
            _ => "float32",
        };
        let eos = tokenizer_special_id(ENDOFTEXT);
        Ok(json!({
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "attention_dropout": 0.0,
            "bos_token_id": eos,
            "eos_token_id": eos,
            "hidden_act": "silu",
            "hidden_size": s.hidden,
            "initializer_range": WEIGHT_STD,
            "intermediate_size": s.intermediate,
            "max_position_embeddings": s.max_positions,
            "max_window_layers": s.layers,
            "num_attention_heads": s.heads,
            "num_hidden_layers": s.layers,
            "num_key_value_heads": s.kv_heads,
            "rms_norm_eps": s.rms_norm_eps,
            "rope_theta": s.rope_theta,
            "sliding_window": s.max_positions,
            "tie_word_embeddings": s.tied,
            "torch_dtype": torch_dtype,
            "transformers_version": "4.43.1",
            "use_cache": true,
            "use_sliding_window": false,
            "vocab_size": s.vocab,
            "emilio_synthetic": { "preset": self.preset.name(), "seed": self.seed },
        }))
    }

    /// The configuration this spec writes, as the model reads it.
    pub fn config(&self) -> Result<Config> {
        serde_json::from_value::<candle_transformers::models::qwen2::Config>(self.config_json()?)
            .map(Config::from)
            .map_err(Error::wrap)
    }
}

/// What [`write_checkpoint`] wrote.
#[derive(Debug, Clone)]
pub struct SyntheticCheckpoint {
    /// The checkpoint directory (pass it to [`crate::loading::Checkpoint::from_dir`]).
    pub dir: PathBuf,
    /// The written configuration.
    pub config: Config,
    /// `config.json`.
    pub config_path: PathBuf,
    /// The safetensors files (one, or the shards in order).
    pub weight_files: Vec<PathBuf>,
    /// `model.safetensors.index.json` when sharded.
    pub index_path: Option<PathBuf>,
    /// `tokenizer.json`.
    pub tokenizer_path: PathBuf,
}

/// The names and shapes of a Qwen2 checkpoint's tensors, in file order (`lm_head.weight` only
/// when the embeddings are untied): [`Config::tensor_shapes`].
pub fn qwen2_tensor_shapes(cfg: &Config) -> Vec<(String, Vec<usize>)> {
    cfg.tensor_shapes()
}

/// The shard (0-based) a tensor goes to: the embedding with the first layers, the final norm
/// and head with the last.
fn shard_of(name: &str, layers: usize, shards: usize) -> usize {
    match name
        .strip_prefix("model.layers.")
        .and_then(|r| r.split('.').next())
        .and_then(|n| n.parse::<usize>().ok())
    {
        Some(l) => l * shards / layers,
        None if name.starts_with("model.embed_tokens") => 0,
        None => shards - 1,
    }
}

/// Writes a synthetic checkpoint into `dir` (created if needed; existing files of the same names
/// are replaced): `config.json`, the weights, `tokenizer.json`, `tokenizer_config.json` and
/// `generation_config.json`.
///
/// Tensors are generated one shard at a time (in parallel within a tensor) directly in the
/// stored dtype, so writing the 0.5B preset holds about one copy of the stored weights (1 GB in
/// `bf16`); more shards hold less.
pub fn write_checkpoint(
    dir: impl AsRef<Path>,
    spec: &SyntheticSpec,
) -> Result<SyntheticCheckpoint> {
    let dir = dir.as_ref();
    let shape = spec.check()?;
    let config = spec.config()?;
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::msg(format!("cannot create {}: {e}", dir.display())))?;

    let config_path = dir.join(CONFIG_FILE);
    write_json(&config_path, &spec.config_json()?)?;

    // safetensors writes each file through a temporary file, which tempfile creates with mode
    // 0600, and renames it into place: the weights would be private while every other file is
    // created under the process's umask. They get config.json's mode, so a checkpoint is
    // readable (or not) as a whole.
    let mode = std::fs::metadata(&config_path)
        .map_err(|e| Error::msg(format!("cannot read {}: {e}", config_path.display())))?
        .permissions();

    let tensors = qwen2_tensor_shapes(&config);
    let shards = spec.shards;
    let file_name = |s: usize| shard_file_name(s, shards);
    let mut weight_files = Vec::with_capacity(shards);
    let mut weight_map = BTreeMap::new();
    let mut total_size = 0usize;
    for s in 0..shards {
        let mut map = HashMap::new();
        for (name, dims) in tensors
            .iter()
            .filter(|(n, _)| shard_of(n, shape.layers, shards) == s)
        {
            let t = synthetic_tensor(name, dims, spec.seed, spec.dtype)?;
            total_size += t.elem_count() * spec.dtype.size_in_bytes();
            weight_map.insert(name.clone(), Value::String(file_name(s)));
            map.insert(name.clone(), t);
        }
        let path = dir.join(file_name(s));
        candle_core::safetensors::save(&map, &path)
            .map_err(|e| e.context(format!("writing {}", path.display())))?;
        std::fs::set_permissions(&path, mode.clone())
            .map_err(|e| Error::msg(format!("cannot set the mode of {}: {e}", path.display())))?;
        weight_files.push(path);
    }
    let index_path = if shards > 1 {
        let index = dir.join(INDEX_FILE);
        write_json(
            &index,
            &json!({ "metadata": { "total_size": total_size }, "weight_map": weight_map }),
        )?;
        // A stale single file would take precedence over the index when loading.
        let _ = std::fs::remove_file(dir.join(WEIGHTS_FILE));
        Some(index)
    } else {
        None
    };

    let tokenizer_path = dir.join(TOKENIZER_FILE);
    write_tokenizer(&tokenizer_path)?;
    write_json(&dir.join(TOKENIZER_CONFIG_FILE), &tokenizer_config_json())?;
    let eos = tokenizer_special_id(ENDOFTEXT);
    let im_end = tokenizer_special_id(IM_END);
    write_json(
        &dir.join(GENERATION_CONFIG_FILE),
        &json!({ "bos_token_id": eos, "eos_token_id": [eos, im_end], "do_sample": false }),
    )?;

    Ok(SyntheticCheckpoint {
        dir: dir.to_path_buf(),
        config,
        config_path,
        weight_files,
        index_path,
        tokenizer_path,
    })
}

/// The names of the files [`write_checkpoint`] writes for `spec`: what a caller checks before
/// it lets a new checkpoint replace an existing one.
pub fn checkpoint_file_names(spec: &SyntheticSpec) -> Vec<String> {
    let mut names = vec![CONFIG_FILE.to_string()];
    names.extend((0..spec.shards).map(|s| shard_file_name(s, spec.shards)));
    if spec.shards > 1 {
        names.push(INDEX_FILE.to_string());
    }
    names.extend(
        [
            TOKENIZER_FILE,
            TOKENIZER_CONFIG_FILE,
            GENERATION_CONFIG_FILE,
        ]
        .map(str::to_string),
    );
    names
}

/// The weight file `s` (0-based) of `shards`: `model.safetensors` alone, else Hugging Face's
/// `model-00001-of-00002.safetensors`.
fn shard_file_name(s: usize, shards: usize) -> String {
    if shards == 1 {
        WEIGHTS_FILE.to_string()
    } else {
        format!("model-{:05}-of-{:05}.safetensors", s + 1, shards)
    }
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(Error::wrap)?;
    std::fs::write(path, text + "\n")
        .map_err(|e| Error::msg(format!("cannot write {}: {e}", path.display())))
}

/// The seeded tensor `name` of shape `dims`, in `dtype`: norm weights `1 + 0.02·N(0,1)`,
/// everything else `0.02·N(0,1)`.
pub fn synthetic_tensor(name: &str, dims: &[usize], seed: u64, dtype: DType) -> Result<Tensor> {
    let n: usize = dims.iter().product();
    let offset = if name.ends_with("norm.weight") {
        1.0
    } else {
        0.0
    };
    let seed = mix(seed ^ fnv1a(name.as_bytes()));
    let dev = &Device::Cpu;
    match dtype {
        DType::F32 => Tensor::from_vec(fill(n, seed, offset, |x| x), dims, dev),
        DType::BF16 => Tensor::from_vec(fill(n, seed, offset, bf16::from_f32), dims, dev),
        DType::F16 => Tensor::from_vec(fill(n, seed, offset, f16::from_f32), dims, dev),
        other => bail!("synthetic tensors are bf16, f16 or f32, not {other:?}"),
    }
}

/// Values generated per independently seeded chunk (parallel and thread-count independent).
const CHUNK: usize = 1 << 16;

fn fill<T: Send + Copy + Default>(n: usize, seed: u64, offset: f64, conv: fn(f32) -> T) -> Vec<T> {
    let mut out = vec![T::default(); n];
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            let mut rng = StdRng::seed_from_u64(mix(seed.wrapping_add(c as u64)));
            for pair in chunk.chunks_mut(2) {
                // Box–Muller: two independent standard normals from two uniforms.
                let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
                let u2: f64 = rng.random::<f64>();
                let r = (-2.0 * u1.ln()).sqrt();
                let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
                pair[0] = conv((offset + WEIGHT_STD * r * c) as f32);
                if let Some(x) = pair.get_mut(1) {
                    *x = conv((offset + WEIGHT_STD * r * s) as f32);
                }
            }
        });
    out
}

/// SplitMix64's finaliser: decorrelates nearby seeds.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

// ---------------------------------------------------------------------------------------------
// Tokenizer
// ---------------------------------------------------------------------------------------------

/// Qwen2's pre-tokenizer split (as in its published `tokenizer.json`).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Words whose byte-level spellings (bare and after a space) become BPE merges.
const WORDS: &[&str] = &[
    "the", "and", "of", "to", "in", "is", "that", "it", "for", "was", "on", "with", "as", "be",
    "at", "by", "this", "have", "from", "or", "are", "not", "but", "you", "all", "can", "one",
    "an", "they", "we", "what", "will", "hello", "world", "model", "token", "user", "Qwen", "log",
    "ing", "ed", "er", "tion", "ly", "The",
];

/// GPT-2's byte-to-character map used by byte-level BPE: printable bytes map to themselves,
/// the rest to `U+0100` onwards, so every byte sequence is a string of "visible" characters.
fn byte_chars() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut extra = 0u32;
    for (b, slot) in out.iter_mut().enumerate() {
        let printable = (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
        *slot = if printable {
            char::from_u32(b as u32).unwrap()
        } else {
            extra += 1;
            char::from_u32(255 + extra).unwrap()
        };
    }
    out
}

/// The BPE vocabulary (token → id) and merges, in rank order.
fn bpe_vocab_and_merges() -> (Vec<String>, Vec<(String, String)>) {
    let chars = byte_chars();
    let mut vocab: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
    let mut known: std::collections::HashSet<String> = vocab.iter().cloned().collect();
    let mut merges = Vec::new();
    let spellings = WORDS
        .iter()
        .flat_map(|w| [w.to_string(), format!(" {w}")])
        .chain(["\n\n".to_string(), "  ".to_string(), "    ".to_string()]);
    for word in spellings {
        let mut symbols = word.bytes().map(|b| chars[b as usize].to_string());
        let Some(mut cur) = symbols.next() else {
            continue;
        };
        for next in symbols {
            let joined = format!("{cur}{next}");
            if known.insert(joined.clone()) {
                vocab.push(joined.clone());
                merges.push((cur, next));
            }
            cur = joined;
        }
    }
    (vocab, merges)
}

const SPECIALS: [&str; 3] = [ENDOFTEXT, IM_START, IM_END];

/// Number of ids the synthetic tokenizer uses (BPE vocabulary plus the special tokens); every
/// preset's vocabulary is at least this large.
pub fn tokenizer_size() -> usize {
    bpe_vocab_and_merges().0.len() + SPECIALS.len()
}

/// The id of a special token ([`ENDOFTEXT`], [`IM_START`], [`IM_END`]) in the synthetic
/// tokenizer: they follow the BPE vocabulary. Panics for another string.
pub fn tokenizer_special_id(token: &str) -> u32 {
    let pos = SPECIALS
        .iter()
        .position(|s| *s == token)
        .unwrap_or_else(|| panic!("{token:?} is not a special token of the synthetic tokenizer"));
    (bpe_vocab_and_merges().0.len() + pos) as u32
}

/// The synthetic `tokenizer.json`, in the format of Qwen2's (minus its NFC normalizer, so that
/// any text round-trips byte for byte).
pub fn tokenizer_json() -> Value {
    let (vocab, merges) = bpe_vocab_and_merges();
    let vocab: serde_json::Map<String, Value> = vocab
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, Value::from(i)))
        .collect();
    let first_special = vocab.len();
    let merges: Vec<Value> = merges.into_iter().map(|(a, b)| json!([a, b])).collect();
    let added: Vec<Value> = SPECIALS
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({
                "id": first_special + i, "content": s, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true
            })
        })
        .collect();
    let byte_level = json!({ "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false });
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": { "Regex": QWEN2_SPLIT },
                    "behavior": "Isolated",
                    "invert": false
                },
                byte_level
            ]
        },
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": merges
        }
    })
}

/// The synthetic tokenizer, parsed.
pub fn tokenizer() -> Result<tokenizers::Tokenizer> {
    tokenizer_json()
        .to_string()
        .parse::<tokenizers::Tokenizer>()
        .map_err(|e| Error::msg(format!("the synthetic tokenizer does not parse: {e}")))
}

/// Writes the synthetic `tokenizer.json` to `path`, after checking that it parses and that the
/// special tokens got the ids [`tokenizer_special_id`] promises.
pub fn write_tokenizer(path: impl AsRef<Path>) -> Result<()> {
    let tok = tokenizer()?;
    for s in SPECIALS {
        let want = tokenizer_special_id(s);
        if tok.token_to_id(s) != Some(want) {
            bail!(
                "synthetic tokenizer: {s} has id {:?}, expected {want}",
                tok.token_to_id(s)
            )
        }
    }
    write_json(path.as_ref(), &tokenizer_json())
}

/// ChatML, as Qwen2 instruct models format a conversation.
const CHAT_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

fn tokenizer_config_json() -> Value {
    let decoder: serde_json::Map<String, Value> = SPECIALS
        .iter()
        .map(|s| {
            (
                tokenizer_special_id(s).to_string(),
                json!({ "content": s, "lstrip": false, "normalized": false, "rstrip": false,
                        "single_word": false, "special": true }),
            )
        })
        .collect();
    json!({
        "added_tokens_decoder": decoder,
        "additional_special_tokens": [IM_START, IM_END],
        "bos_token": null,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": false,
        "eos_token": ENDOFTEXT,
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": ENDOFTEXT,
        "split_special_tokens": false,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": null
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_chars_is_a_bijection_onto_visible_characters() {
        let chars = byte_chars();
        let set: std::collections::HashSet<char> = chars.iter().copied().collect();
        assert_eq!(set.len(), 256);
        assert!(chars.iter().all(|c| !c.is_whitespace() && !c.is_control()));
        assert_eq!(chars[b'a' as usize], 'a');
        assert_eq!(chars[b' ' as usize], 'Ġ');
        assert_eq!(chars[b'\n' as usize], 'Ċ');
    }

    #[test]
    fn merges_only_join_known_tokens() {
        let (vocab, merges) = bpe_vocab_and_merges();
        let known: std::collections::HashSet<&String> = vocab.iter().collect();
        for (a, b) in &merges {
            assert!(known.contains(a) && known.contains(b), "{a} {b}");
            assert!(known.contains(&format!("{a}{b}")));
        }
        assert_eq!(vocab.len(), 256 + merges.len());
    }

    #[test]
    fn shards_split_by_layer() {
        assert_eq!(shard_of("model.embed_tokens.weight", 24, 4), 0);
        assert_eq!(shard_of("model.layers.0.mlp.up_proj.weight", 24, 4), 0);
        assert_eq!(shard_of("model.layers.6.mlp.up_proj.weight", 24, 4), 1);
        assert_eq!(shard_of("model.layers.23.input_layernorm.weight", 24, 4), 3);
        assert_eq!(shard_of("model.norm.weight", 24, 4), 3);
        assert_eq!(shard_of("lm_head.weight", 24, 4), 3);
    }

    #[test]
    fn weights_are_seeded_per_tensor_and_chunk() {
        let n = CHUNK + 3; // crosses a chunk boundary, odd length
        let a = fill(n, 42, 0.0, |x| x);
        assert_eq!(a, fill(n, 42, 0.0, |x| x));
        assert_ne!(a, fill(n, 43, 0.0, |x| x));
        // A shorter tensor with the same seed is a prefix: values depend on position only.
        assert_eq!(fill(17, 42, 0.0, |x| x)[..], a[..17]);
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        let std = (a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / n as f64).sqrt();
        assert!(
            mean.abs() < 1e-3 && (std - WEIGHT_STD).abs() < 1e-3,
            "{mean} {std}"
        );
    }
}
