//! The loaders' fuzz targets: one function per input file a user hands Emilio, which writes the
//! bytes where the loader expects that file, beside valid others, and runs the library's real
//! entry points on it (`Checkpoint::from_dir` / `from_gguf`, then the load and one forward
//! step; `tokenizer::from_file` / `from_gguf`, then an encode and a decode).
//!
//! The invariant ([`Target::run`]): any byte string gives a loaded model or an error whose
//! message names the file (its directory), never a panic, an abort or a hang. The allocation
//! bound is the caller's to enforce (a counting allocator in `tests/tests/fuzz_loaders.rs`;
//! libFuzzer's `-rss_limit_mb`/`-malloc_limit_mb` in `scripts/fuzz.sh`).
//!
//! This file is shared: `emilio_tests::fuzz_targets` for the replay and property tests under
//! `cargo test`, and included by path (`#[path]`) in the cargo-fuzz crate `tests/fuzz/`, which
//! depends on `emilio-qwen`, `candle-core` and `serde_json` only. Its seeds ([`Target::seed`])
//! are a micro model (hidden 8, one layer, 32 tokens) so that each is a few kilobytes.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::quantized::gguf_file::{self, Value as Gguf};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use emilio_qwen::loading::Checkpoint;
use emilio_qwen::{Options, WeightFormat};
use serde_json::json;

/// The input files fuzzed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `config.json`, beside a valid `model.safetensors`.
    Config,
    /// `model.safetensors` (header and body), beside a valid `config.json`.
    Safetensors,
    /// `model.safetensors.index.json`, beside a valid config and two shards.
    Index,
    /// `tokenizer.json`.
    Tokenizer,
    /// A GGUF file (header, metadata with its tokenizer, tensors).
    Gguf,
}

impl Target {
    /// Every target.
    pub const ALL: [Target; 5] = [
        Target::Config,
        Target::Safetensors,
        Target::Index,
        Target::Tokenizer,
        Target::Gguf,
    ];

    /// The name of the target (its cargo-fuzz binary, its corpus directory).
    pub fn name(self) -> &'static str {
        match self {
            Target::Config => "config_json",
            Target::Safetensors => "safetensors",
            Target::Index => "index_json",
            Target::Tokenizer => "tokenizer_json",
            Target::Gguf => "gguf",
        }
    }

    /// The file the bytes are written to, in the target's directory.
    fn file_name(self) -> &'static str {
        match self {
            Target::Config => "config.json",
            Target::Safetensors => "model.safetensors",
            Target::Index => "model.safetensors.index.json",
            Target::Tokenizer => "tokenizer.json",
            Target::Gguf => "model.gguf",
        }
    }

    /// A valid input: the micro model's file (what the corpus starts from).
    pub fn seed(self) -> Vec<u8> {
        let root = fixtures();
        let path = match self {
            Target::Config => root.join("dir/config.json"),
            Target::Safetensors => root.join("dir/model.safetensors"),
            Target::Index => root.join("sharded/model.safetensors.index.json"),
            Target::Tokenizer => root.join("tokenizer.json"),
            Target::Gguf => root.join("model.gguf"),
        };
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Writes `data` as the target's file and loads it. `Ok` when it loads (or is refused with
    /// an error naming the file); `Err` with what broke the invariant otherwise: an error that
    /// names no file. Panics are the caller's to catch (libFuzzer aborts on them).
    pub fn run(self, data: &[u8]) -> Result<(), String> {
        let dir = work_dir(self);
        match self.load(data) {
            Ok(()) => Ok(()),
            Err(text) if text.contains(&*dir.to_string_lossy()) => Ok(()),
            Err(text) => Err(format!("the error names no file: {text}")),
        }
    }
}

impl Target {
    /// Writes `data` as the target's file and loads it: `Err` with the loader's error text when
    /// it is refused (the seeds must load: `tests/tests/fuzz_loaders.rs`).
    pub fn load(self, data: &[u8]) -> Result<(), String> {
        let dir = work_dir(self);
        let path = dir.join(self.file_name());
        std::fs::write(&path, data).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        match self {
            Target::Config | Target::Safetensors | Target::Index => load_dir(&dir),
            Target::Tokenizer => tokenizer_json(&path),
            Target::Gguf => gguf(&path),
        }
    }
}

/// The text of an error without a backtrace, with its contexts.
fn text(e: &candle_core::Error) -> String {
    use candle_core::Error as E;
    match e {
        E::WithBacktrace { inner, .. } => text(inner),
        E::Context { inner, context } => format!("{context}\n{}", text(inner)),
        E::WithPath { inner, path } => format!("{} {}", path.display(), text(inner)),
        other => other.to_string(),
    }
}

/// One forward step of one token: what a load that succeeded must survive. Its errors are
/// runtime ones (Candle's, naming no file) and are not part of the invariant; a panic is.
fn step(mut forward: impl FnMut(&Tensor) -> candle_core::Result<Tensor>) {
    if let Ok(ids) = Tensor::new(&[[1u32]], &Device::Cpu) {
        let _ = forward(&ids);
    }
}

fn load_dir(dir: &Path) -> Result<(), String> {
    let ckpt = Checkpoint::from_dir(dir).map_err(|e| text(&e))?;
    let mut model = ckpt
        .load(DType::F32, &Device::Cpu, &Options::new(WeightFormat::F32))
        .map_err(|e| text(&e))?;
    step(|ids| model.forward(ids, 0));
    Ok(())
}

fn tokenizer_json(path: &Path) -> Result<(), String> {
    let tokenizer = emilio_qwen::tokenizer::from_file(path).map_err(|e| text(&e))?;
    let source = path.display().to_string();
    emilio_qwen::tokenizer::check_ids(&tokenizer, &source, MICRO_VOCAB, "config.json")
        .map_err(|e| text(&e))?;
    exercise(&tokenizer);
    Ok(())
}

/// An encode and a decode, special tokens and all: a tokenizer that loads must run.
fn exercise(tokenizer: &tokenizers::Tokenizer) {
    if let Ok(enc) = tokenizer.encode("<|im_start|>user\nab ba 12 é\n<|im_end|>", false) {
        let _ = tokenizer.decode(enc.get_ids(), false);
        let _ = tokenizer.decode(&[0, 1, 5, u32::MAX], true);
    }
}

fn gguf(path: &Path) -> Result<(), String> {
    let ckpt = Checkpoint::from_gguf(path).map_err(|e| text(&e))?;
    let gguf = ckpt.gguf.clone().expect("a GGUF checkpoint has its header");
    let source = path.display().to_string();
    let _ = ckpt.stop_token_ids().map_err(|e| text(&e))?;
    let _ = emilio_qwen::chat::ChatTemplate::from_gguf_metadata(gguf.metadata())
        .map_err(|e| format!("{source}: {}", text(&e)))?;
    let tokenizer =
        emilio_qwen::tokenizer::from_gguf(gguf.metadata(), &source).map_err(|e| text(&e))?;
    exercise(&tokenizer);
    let mut model = ckpt
        .load(DType::F32, &Device::Cpu, &Options::new(WeightFormat::F32))
        .map_err(|e| text(&e))?;
    step(|ids| model.forward(ids, 0));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The micro model the targets load, written once per process
// ---------------------------------------------------------------------------------------------

const MICRO_VOCAB: usize = 32;

/// The micro model's `config.json`: Qwen2, hidden 8, two query heads and one key/value head of
/// 4, intermediate 16, one layer, 32 tokens, 64 positions.
fn micro_config() -> serde_json::Value {
    json!({
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": MICRO_VOCAB,
        "hidden_size": 8,
        "intermediate_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 64,
        "sliding_window": 64,
        "max_window_layers": 1,
        "use_sliding_window": false,
        "tie_word_embeddings": true,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "eos_token_id": 2
    })
}

/// Small deterministic values (no RNG: the seeds must be the same bytes every time).
fn values(n: usize, salt: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 7 + salt * 13) % 17) as f32 - 8.0) / 32.0)
        .collect()
}

fn micro_tensors(config: &emilio_qwen::Config) -> Vec<(String, Tensor)> {
    config
        .tensor_shapes()
        .into_iter()
        .enumerate()
        .map(|(salt, (name, shape))| {
            let n = shape.iter().product();
            let v = if name.ends_with("norm.weight") {
                vec![1.0; n]
            } else {
                values(n, salt)
            };
            let t = Tensor::from_vec(v, shape, &Device::Cpu).expect("micro tensor");
            (name, t.to_dtype(DType::F16).expect("f16"))
        })
        .collect()
}

/// The micro tokenizer: byte-level BPE over 29 tokens and three specials (ids 29..32).
fn micro_tokenizer() -> tokenizers::Tokenizer {
    let tokens: Vec<String> = "a b c d e f g h i j k l m n o p q r s t u v w x y z Ġ Ċ ab"
        .split(' ')
        .map(String::from)
        .chain(["<|endoftext|>", "<|im_start|>", "<|im_end|>"].map(String::from))
        .collect();
    let mut md = std::collections::HashMap::new();
    md.insert(
        "tokenizer.ggml.model".to_string(),
        Gguf::String("gpt2".into()),
    );
    md.insert(
        "tokenizer.ggml.pre".to_string(),
        Gguf::String("qwen2".into()),
    );
    md.insert(
        "tokenizer.ggml.token_type".to_string(),
        Gguf::Array(
            (0..tokens.len())
                .map(|i| Gguf::I32(if i >= 29 { 3 } else { 1 }))
                .collect(),
        ),
    );
    md.insert(
        "tokenizer.ggml.tokens".to_string(),
        Gguf::Array(tokens.into_iter().map(Gguf::String).collect()),
    );
    md.insert(
        "tokenizer.ggml.merges".to_string(),
        Gguf::Array(vec![Gguf::String("a b".into())]),
    );
    emilio_qwen::tokenizer::from_gguf(&md, "micro tokenizer").expect("the micro tokenizer builds")
}

/// The micro model as a Qwen2 GGUF file: f32 tensors under llama.cpp's names, the `qwen2.*`
/// hyper-parameters, the micro tokenizer and a ChatML template.
fn write_micro_gguf(path: &Path, tensors: &[(String, Tensor)]) {
    let mut md: Vec<(String, Gguf)> = vec![
        ("general.architecture".into(), Gguf::String("qwen2".into())),
        ("qwen2.block_count".into(), Gguf::U32(1)),
        ("qwen2.context_length".into(), Gguf::U32(64)),
        ("qwen2.embedding_length".into(), Gguf::U32(8)),
        ("qwen2.feed_forward_length".into(), Gguf::U32(16)),
        ("qwen2.attention.head_count".into(), Gguf::U32(2)),
        ("qwen2.attention.head_count_kv".into(), Gguf::U32(1)),
        ("qwen2.rope.freq_base".into(), Gguf::F32(10000.0)),
        (
            "qwen2.attention.layer_norm_rms_epsilon".into(),
            Gguf::F32(1e-6),
        ),
        ("tokenizer.ggml.eos_token_id".into(), Gguf::U32(31)),
        (
            "tokenizer.chat_template".into(),
            Gguf::String(
                "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                    .into(),
            ),
        ),
    ];
    md.extend(
        emilio_qwen::tokenizer::gguf_metadata(&micro_tokenizer(), "qwen2")
            .expect("micro tokenizer metadata"),
    );
    let q: Vec<(String, QTensor)> = tensors
        .iter()
        .map(|(name, t)| {
            let gguf = emilio_qwen::gguf::hf_to_gguf_name(name).expect("a GGUF name");
            let t = t.to_dtype(DType::F32).expect("f32");
            (
                gguf,
                QTensor::quantize(&t, GgmlDType::F32).expect("f32 qtensor"),
            )
        })
        .collect();
    let md_refs: Vec<(&str, &Gguf)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = q.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).expect("create the micro GGUF");
    gguf_file::write(&mut f, &md_refs, &t_refs).expect("write the micro GGUF");
}

/// The fixture files, written once per process: `dir/` (config and one safetensors file),
/// `sharded/` (config, index, two shards), `tokenizer.json`, `model.gguf`.
fn fixtures() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root =
            std::env::temp_dir().join(format!("emilio-fuzz-fixtures-{}", std::process::id()));
        let (dir, sharded) = (root.join("dir"), root.join("sharded"));
        for d in [&dir, &sharded] {
            std::fs::create_dir_all(d).expect("fixture directory");
        }
        let config = serde_json::to_vec_pretty(&micro_config()).expect("config");
        std::fs::write(dir.join("config.json"), &config).expect("config");
        std::fs::write(sharded.join("config.json"), &config).expect("config");
        let parsed = emilio_qwen::loading::read_config(dir.join("config.json"))
            .expect("the micro config is valid");
        let tensors = micro_tensors(&parsed);
        let all: std::collections::HashMap<String, Tensor> = tensors.iter().cloned().collect();
        candle_core::safetensors::save(&all, dir.join("model.safetensors")).expect("weights");
        // Two shards: the embedding and the final norm in one, the layer in the other.
        let (a, b): (Vec<_>, Vec<_>) = tensors
            .iter()
            .cloned()
            .partition(|(n, _)| !n.starts_with("model.layers."));
        let mut map = serde_json::Map::new();
        for (i, part) in [a, b].into_iter().enumerate() {
            let file = format!("model-0000{}-of-00002.safetensors", i + 1);
            for (n, _) in &part {
                map.insert(n.clone(), file.clone().into());
            }
            let part: std::collections::HashMap<String, Tensor> = part.into_iter().collect();
            candle_core::safetensors::save(&part, sharded.join(&file)).expect("shard");
        }
        let index = json!({"metadata": {"total_size": 0}, "weight_map": map});
        std::fs::write(
            sharded.join("model.safetensors.index.json"),
            serde_json::to_vec_pretty(&index).expect("index"),
        )
        .expect("index");
        micro_tokenizer()
            .save(root.join("tokenizer.json"), false)
            .expect("tokenizer");
        write_micro_gguf(&root.join("model.gguf"), &tensors);
        root
    })
}

/// The directory a target writes its input to: the fixture files it needs beside it.
fn work_dir(target: Target) -> PathBuf {
    let dir = fixtures().join(format!("work-{}", target.name()));
    if !dir.exists() {
        std::fs::create_dir_all(&dir).expect("work directory");
        let copy = |from: &str, to: &str| {
            std::fs::copy(fixtures().join(from), dir.join(to)).expect("fixture copy");
        };
        match target {
            Target::Config => copy("dir/model.safetensors", "model.safetensors"),
            Target::Safetensors => copy("dir/config.json", "config.json"),
            Target::Index => {
                copy("sharded/config.json", "config.json");
                for i in 1..=2 {
                    let shard = format!("model-0000{i}-of-00002.safetensors");
                    copy(&format!("sharded/{shard}"), &shard);
                }
            }
            Target::Tokenizer | Target::Gguf => {}
        }
    }
    dir
}
