//! `emilio_qwen::loading` and `emilio_qwen::synthetic`: every documented loading error is a clear
//! `Err` naming the culprit (never a panic), and the synthetic checkpoints are what they claim
//! (Qwen2 config and tensor names, seeded weights at the stated scales, a tokenizer that
//! round-trips any text).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use emilio_qwen::loading::{self, Checkpoint};
use emilio_qwen::synthetic::{
    qwen2_tensor_shapes, tokenizer_size, tokenizer_special_id, write_checkpoint, Preset,
    SyntheticSpec, ENDOFTEXT, IM_END, IM_START,
};
use emilio_qwen::{Options, WeightFormat};
use serde_json::Value;

/// The text of a Candle error without the backtrace `Display` appends under `RUST_BACKTRACE`.
fn text(e: &candle_core::Error) -> String {
    use candle_core::Error as E;
    match e {
        E::WithBacktrace { inner, .. } => text(inner),
        E::Context { inner, context } => format!("{context}\n{}", text(inner)),
        E::WithPath { inner, path } => format!("path: {path:?} {}", text(inner)),
        other => other.to_string(),
    }
}

/// Runs `f`, which must return `Err` (not `Ok`, not panic); returns the error text.
fn expect_err<T>(what: &str, f: impl FnOnce() -> candle_core::Result<T>) -> String {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(_)) => panic!("{what}: expected an error, got Ok"),
        Ok(Err(e)) => {
            let t = text(&e);
            eprintln!("{what}: {t}");
            t
        }
        Err(_) => panic!("{what}: panicked instead of returning an error"),
    }
}

fn tiny(dir: &Path) -> emilio_qwen::synthetic::SyntheticCheckpoint {
    write_checkpoint(dir, &SyntheticSpec::new(Preset::Tiny).with_seed(3)).unwrap()
}

fn load_ours(dir: &Path) -> candle_core::Result<emilio_qwen::ModelForCausalLM> {
    let (_, m) = loading::load(dir, DType::F32, &Device::Cpu, &Options::default())?;
    Ok(m)
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(v.as_object_mut().unwrap());
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

fn edit_weights(path: &Path, f: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let mut t = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    f(&mut t);
    candle_core::safetensors::save(&t, path).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Loading errors
// ---------------------------------------------------------------------------------------------

#[test]
fn non_qwen2_config_is_rejected_naming_what_was_found() {
    let dir = tempfile::tempdir().unwrap();
    let ck = tiny(dir.path());
    edit_json(&ck.config_path, |c| {
        c.insert("model_type".into(), "llama".into());
        c.insert(
            "architectures".into(),
            serde_json::json!(["LlamaForCausalLM"]),
        );
    });
    // Llama is supported, but Qwen2's q/k/v biases do not belong to a Llama model: an error,
    // not a model run without them.
    let e = expect_err("llama config", || load_ours(dir.path()));
    assert!(
        e.contains("q_proj.bias") && e.contains("attention_bias"),
        "{e}"
    );
    assert!(e.contains("config.json") && e.contains("llama"), "{e}");

    edit_json(&ck.config_path, |c| {
        c.insert("model_type".into(), "mistral".into());
        c.insert(
            "architectures".into(),
            serde_json::json!(["MistralForCausalLM"]),
        );
    });
    let e = expect_err("mistral config", || load_ours(dir.path()));
    assert!(
        e.contains("config.json") && e.contains("\"mistral\""),
        "{e}"
    );
    assert!(
        e.contains("MistralForCausalLM") && e.contains("Qwen2"),
        "{e}"
    );

    // A Qwen2 model_type with another architecture (e.g. a vision-language head) is no better.
    edit_json(&ck.config_path, |c| {
        c.insert("model_type".into(), "qwen2".into());
        c.insert(
            "architectures".into(),
            serde_json::json!(["Qwen2VLForConditionalGeneration"]),
        );
    });
    let e = expect_err("qwen2-vl architecture", || load_ours(dir.path()));
    assert!(e.contains("Qwen2VLForConditionalGeneration"), "{e}");

    edit_json(&ck.config_path, |c| {
        c.insert("model_type".into(), "qwen3".into());
        c.remove("architectures");
    });
    let e = expect_err("qwen3 model_type", || load_ours(dir.path()));
    assert!(e.contains("\"qwen3\""), "{e}");
}

#[test]
fn physically_impossible_config_values_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let ck = tiny(dir.path());
    let original = std::fs::read(&ck.config_path).unwrap();
    for (field, value) in [
        ("rope_theta", serde_json::json!(0.0)),
        ("rope_theta", serde_json::json!(-10000.0)),
        ("rms_norm_eps", serde_json::json!(-1e-6)),
    ] {
        std::fs::write(&ck.config_path, &original).unwrap();
        edit_json(&ck.config_path, |c| {
            c.insert(field.into(), value.clone());
        });
        let e = expect_err(field, || load_ours(dir.path()));
        assert!(
            e.contains(field) && e.contains("config.json"),
            "{field} {value}: {e}"
        );
    }
}

#[test]
fn missing_or_corrupt_config_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ck = tiny(dir.path());
    std::fs::write(&ck.config_path, "{ not json").unwrap();
    let e = expect_err("corrupt config", || load_ours(dir.path()));
    assert!(
        e.contains("config.json") && e.contains("not valid JSON"),
        "{e}"
    );

    std::fs::write(
        &ck.config_path,
        r#"{"model_type": "qwen2", "hidden_size": 64}"#,
    )
    .unwrap();
    let e = expect_err("incomplete config", || load_ours(dir.path()));
    assert!(
        e.contains("config.json") && e.contains("missing field"),
        "{e}"
    );

    std::fs::remove_file(&ck.config_path).unwrap();
    let e = expect_err("missing config", || load_ours(dir.path()));
    assert!(e.contains("config.json") && e.contains("not found"), "{e}");

    let e = expect_err("missing directory", || load_ours(&dir.path().join("nope")));
    assert!(e.contains("nope") && e.contains("does not exist"), "{e}");
}

#[test]
fn config_without_sliding_window_fields_loads() {
    // Some published Qwen2 configs set sliding_window to null or leave fields out.
    let dir = tempfile::tempdir().unwrap();
    let ck = tiny(dir.path());
    edit_json(&ck.config_path, |c| {
        c.insert("sliding_window".into(), Value::Null);
        c.remove("use_sliding_window");
        c.remove("max_window_layers");
    });
    let cfg = loading::read_config(&ck.config_path).unwrap();
    assert_eq!(cfg.sliding_window, cfg.max_position_embeddings);
    assert!(!cfg.use_sliding_window);
    assert_eq!(cfg.max_window_layers, cfg.num_hidden_layers);
    load_ours(dir.path()).unwrap();
}

#[test]
fn missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let ck = tiny(dir.path());
    let name = "model.layers.1.mlp.up_proj.weight";
    edit_weights(&ck.weight_files[0], |t| {
        t.remove(name).unwrap();
    });
    let e = expect_err("missing tensor", || load_ours(dir.path()));
    assert!(e.contains(name), "{e}");
    // A missing bias too (q/k/v have biases).
    let name = "model.layers.0.self_attn.k_proj.bias";
    edit_weights(&ck.weight_files[0], |t| {
        t.remove(name).unwrap();
    });
    let e = expect_err("missing bias", || load_ours(dir.path()));
    assert!(e.contains(name), "{e}");
}

#[test]
fn misshapen_tensor_is_named_with_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let ck = tiny(dir.path());
    let name = "model.layers.2.self_attn.k_proj.weight";
    edit_weights(&ck.weight_files[0], |t| {
        let bad = Tensor::zeros((16, 64), DType::BF16, &Device::Cpu).unwrap();
        t.insert(name.to_string(), bad);
    });
    let e = expect_err("misshapen tensor", || load_ours(dir.path()));
    assert!(e.contains(name), "{e}");
    assert!(e.contains("[32, 64]") && e.contains("[16, 64]"), "{e}");
}

#[test]
fn untied_config_without_head_is_an_error() {
    // Stock silently ties the head when lm_head.weight is absent; with tie_word_embeddings =
    // false that means a broken checkpoint.
    let dir = tempfile::tempdir().unwrap();
    let ck = write_checkpoint(
        dir.path(),
        &SyntheticSpec::new(Preset::Tiny).with_tied(false),
    )
    .unwrap();
    edit_weights(&ck.weight_files[0], |t| {
        t.remove("lm_head.weight").unwrap();
    });
    let e = expect_err("missing head", || load_ours(dir.path()));
    assert!(
        e.contains("lm_head.weight") && e.contains("tie_word_embeddings"),
        "{e}"
    );
}

#[test]
fn sharded_checkpoint_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ck =
        write_checkpoint(dir.path(), &SyntheticSpec::new(Preset::Tiny).with_shards(3)).unwrap();
    assert_eq!(ck.weight_files.len(), 3);
    let found = loading::find_weight_files(dir.path()).unwrap();
    assert_eq!(found, ck.weight_files);
    load_ours(dir.path()).unwrap();

    let gone = &ck.weight_files[1];
    std::fs::remove_file(gone).unwrap();
    let e = expect_err("missing shard", || load_ours(dir.path()));
    assert!(e.contains(&gone.display().to_string()), "{e}");
    assert!(e.contains("model.safetensors.index.json"), "{e}");

    std::fs::remove_file(ck.index_path.as_ref().unwrap()).unwrap();
    let e = expect_err("no weights", || load_ours(dir.path()));
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn explicit_file_list_loads_and_checks_files() {
    let dir = tempfile::tempdir().unwrap();
    let ck =
        write_checkpoint(dir.path(), &SyntheticSpec::new(Preset::Tiny).with_shards(2)).unwrap();
    let c = Checkpoint::from_files(&ck.config_path, &ck.weight_files).unwrap();
    c.load(DType::F32, &Device::Cpu, &Options::new(WeightFormat::F32))
        .unwrap();
    // One shard only: the layers of the other are missing, by name, before anything is loaded.
    let e = expect_err("half the shards", || {
        Checkpoint::from_files(&ck.config_path, &ck.weight_files[..1])
    });
    assert!(
        e.contains("num_hidden_layers") && e.contains("has no model.layers."),
        "{e}"
    );
    let e = expect_err("no such file", || {
        Checkpoint::from_files(&ck.config_path, &[dir.path().join("absent.safetensors")])
    });
    assert!(e.contains("absent.safetensors"), "{e}");
}

#[test]
fn prompt_beyond_max_position_embeddings_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let ck = tiny(dir.path());
    let max = ck.config.max_position_embeddings;
    assert_eq!(max, 128);
    let mut model = load_ours(dir.path()).unwrap();
    let ids = |n: usize| Tensor::from_vec(vec![7u32; n], (1, n), &Device::Cpu).unwrap();

    // One prompt longer than the table.
    let e = expect_err("long prompt", || model.forward(&ids(max + 1), 0));
    assert!(
        e.contains("max_position_embeddings") && e.contains("128"),
        "{e}"
    );

    // Exactly full is fine; one more decode step is not.
    model.clear_kv_cache();
    model.forward(&ids(max - 1), 0).unwrap();
    model.forward(&ids(1), max - 1).unwrap();
    let e = expect_err("decode past the end", || model.forward(&ids(1), max));
    assert!(e.contains("max_position_embeddings"), "{e}");

    // An empty input is an error too, not a panic (stock underflows `seq_len - 1`).
    let empty = Tensor::zeros((1, 0), DType::U32, &Device::Cpu).unwrap();
    let e = expect_err("empty input", || model.forward(&empty, 0));
    assert!(e.contains("no tokens"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Synthetic checkpoints
// ---------------------------------------------------------------------------------------------

#[test]
fn presets_parse_and_have_the_real_shapes() {
    assert_eq!("tiny".parse::<Preset>().unwrap(), Preset::Tiny);
    assert_eq!(
        "Qwen2.5-0.5B".parse::<Preset>().unwrap(),
        Preset::Qwen25_05B
    );
    for p in Preset::ALL {
        assert_eq!(p.to_string().parse::<Preset>().unwrap(), p);
    }
    let e = expect_err("unknown preset", || "qwen2.5-7b".parse::<Preset>());
    assert!(e.contains("qwen2.5-7b") && e.contains("tiny"), "{e}");

    let c = SyntheticSpec::new(Preset::Qwen25_05B).config().unwrap();
    assert_eq!(
        (c.hidden_size, c.intermediate_size, c.num_hidden_layers),
        (896, 4864, 24)
    );
    assert_eq!((c.num_attention_heads, c.num_key_value_heads), (14, 2));
    assert_eq!(c.hidden_size / c.num_attention_heads, 64);
    assert_eq!((c.vocab_size, c.max_position_embeddings), (151_936, 32_768));
    assert_eq!(c.rope_theta, 1e6);
    assert_eq!(c.rms_norm_eps, 1e-6);
    assert!(c.tie_word_embeddings);
    let params: usize = qwen2_tensor_shapes(&c)
        .iter()
        .map(|(_, d)| d.iter().product::<usize>())
        .sum();
    assert_eq!(params, 494_032_768, "Qwen2.5-0.5B has 494M parameters");

    let t = SyntheticSpec::new(Preset::Tiny).config().unwrap();
    assert_eq!((t.hidden_size, t.num_attention_heads), (64, 4));
    assert_eq!(t.num_key_value_heads, 2);
    assert!((2..=4).contains(&t.num_hidden_layers));
    assert!(t.vocab_size >= tokenizer_size());
    let e = expect_err("bad GQA ratio", || {
        SyntheticSpec::new(Preset::Tiny).with_gqa_ratio(3).config()
    });
    assert!(e.contains("GQA ratio 3"), "{e}");
}

/// The op's benchmark and accuracy example cannot see the preset (`emilio-op` is below
/// `emilio-qwen`), so they keep their own table of its shapes: it must be the preset's.
#[path = "../../emilio-op/benches/common/qwen_shapes.rs"]
mod op_bench_shapes;

#[test]
fn the_op_benchmarks_table_is_the_qwen25_05b_presets_shapes() {
    use op_bench_shapes::{ATTENTION, KEY_VALUE, LM_HEAD, MLP_DOWN, MLP_UP};
    let c = SyntheticSpec::new(Preset::Qwen25_05B).config().unwrap();
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let kv = c.num_key_value_heads * (h / c.num_attention_heads);
    assert_eq!(ATTENTION, (h, h));
    assert_eq!(KEY_VALUE, (h, kv));
    assert_eq!(MLP_UP, (h, i));
    assert_eq!(MLP_DOWN, (i, h));
    assert_eq!(LM_HEAD, (h, c.vocab_size));
}

#[test]
fn written_checkpoint_has_qwen2_names_config_and_scales() {
    let dir = tempfile::tempdir().unwrap();
    let spec = SyntheticSpec::new(Preset::Tiny)
        .with_seed(5)
        .with_tied(false)
        .with_dtype(DType::F32);
    let ck = write_checkpoint(dir.path(), &spec).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(dir.path().join(f).is_file(), "{f}");
    }
    let raw: Value =
        serde_json::from_str(&std::fs::read_to_string(&ck.config_path).unwrap()).unwrap();
    assert_eq!(raw["architectures"][0], "Qwen2ForCausalLM");
    assert_eq!(raw["model_type"], "qwen2");
    assert_eq!(raw["torch_dtype"], "float32");
    // Stock's Config reads it as is.
    let stock_cfg: candle_transformers::models::qwen2::Config =
        serde_json::from_value(raw).unwrap();
    assert_eq!(emilio_qwen::Config::from(stock_cfg), ck.config);

    let tensors = candle_core::safetensors::load(&ck.weight_files[0], &Device::Cpu).unwrap();
    let want = qwen2_tensor_shapes(&ck.config);
    assert_eq!(tensors.len(), want.len());
    assert!(want.iter().any(|(n, _)| n == "lm_head.weight"));
    assert!(want
        .iter()
        .any(|(n, _)| n == "model.layers.2.self_attn.q_proj.bias"));
    for (name, dims) in &want {
        let t = &tensors[name];
        assert_eq!(t.dims(), dims.as_slice(), "{name}");
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let std = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        if name.ends_with("norm.weight") {
            assert!(
                (mean - 1.0).abs() < 0.02 && std < 0.04,
                "{name}: {mean} {std}"
            );
        } else if n > 1000.0 {
            assert!(
                mean.abs() < 0.003 && (std - 0.02).abs() < 0.002,
                "{name}: {mean} {std}"
            );
        }
    }

    // Same seed, same weights; the tied variant shares every common tensor; another seed
    // differs.
    let dir2 = tempfile::tempdir().unwrap();
    let ck2 = write_checkpoint(dir2.path(), &spec.clone().with_tied(true)).unwrap();
    let t2 = candle_core::safetensors::load(&ck2.weight_files[0], &Device::Cpu).unwrap();
    assert!(!t2.contains_key("lm_head.weight"));
    assert_eq!(t2.len(), tensors.len() - 1);
    for (name, t) in &t2 {
        let d = (t - &tensors[name])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0, "{name}");
    }
    let dir3 = tempfile::tempdir().unwrap();
    let ck3 = write_checkpoint(dir3.path(), &spec.clone().with_seed(6)).unwrap();
    let t3 = candle_core::safetensors::load(&ck3.weight_files[0], &Device::Cpu).unwrap();
    let name = "model.layers.0.mlp.gate_proj.weight";
    let d = (&t3[name] - &tensors[name])
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert!(d.to_scalar::<f32>().unwrap() > 0.0);
}

#[test]
fn tokenizer_round_trips_any_text_within_the_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    let ck = tiny(dir.path());
    let tok = tokenizers::Tokenizer::from_file(&ck.tokenizer_path).unwrap();
    assert_eq!(tok.get_vocab_size(true), tokenizer_size());
    for (s, id) in [
        (ENDOFTEXT, tokenizer_special_id(ENDOFTEXT)),
        (IM_START, tokenizer_special_id(IM_START)),
        (IM_END, tokenizer_special_id(IM_END)),
    ] {
        assert_eq!(tok.token_to_id(s), Some(id), "{s}");
        assert!((id as usize) < ck.config.vocab_size);
    }
    let texts = [
        "Hello, world!",
        "the model and the token",
        "  leading spaces, tabs\tand\nnew\r\nlines\n\n",
        "Ünïcödé: 日本語のテキスト, emoji 🦀🔥, math ∑∫√, RTL שלום",
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
        "bytes \u{0} \u{1f} \u{7f} \u{80} \u{ff} \u{fffd}",
        "",
    ];
    for text in texts {
        let enc = tok.encode(text, false).unwrap();
        let ids = enc.get_ids();
        assert!(
            ids.iter().all(|&i| (i as usize) < ck.config.vocab_size),
            "{text:?}: {ids:?}"
        );
        assert_eq!(tok.decode(ids, false).unwrap(), text, "{ids:?}");
    }
    // Special tokens are single ids; merges make common words shorter than their bytes.
    let chat = tok.encode("<|im_start|>user<|im_end|>", false).unwrap();
    assert_eq!(chat.get_ids()[0], tokenizer_special_id(IM_START));
    assert_eq!(
        *chat.get_ids().last().unwrap(),
        tokenizer_special_id(IM_END)
    );
    let words = tok.encode(" the model", false).unwrap();
    assert!(
        words.get_ids().len() < " the model".len(),
        "{:?}",
        words.get_ids()
    );
}

// ---------------------------------------------------------------------------------------------
// Sizes held to the weights and to what the machine can hold (#16 item 3), heads of the wrong
// kind (item 4)
// ---------------------------------------------------------------------------------------------

/// Every size of config.json is held to the tensors before anything is allocated: the error names
/// the field, its value, the config file, and what the weights say.
#[test]
fn config_sizes_are_held_to_the_weights() {
    let dir = tempfile::tempdir().unwrap();
    let ck = tiny(dir.path());
    let layers = ck.config.num_hidden_layers;
    let original = std::fs::read(&ck.config_path).unwrap();
    let cases: Vec<(&str, Value, Vec<String>)> = vec![
        // 10⁹ layers aborted on a 280 GB reservation; now the first missing layer is named.
        (
            "num_hidden_layers",
            serde_json::json!(1_000_000_000u64),
            vec![format!("model.layers.{layers}"), format!("{layers} layers")],
        ),
        (
            "num_hidden_layers",
            serde_json::json!(layers + 1),
            vec![format!("model.layers.{layers}")],
        ),
        // Fewer layers than the file ran silently: both counts are named.
        (
            "num_hidden_layers",
            serde_json::json!(layers - 1),
            vec![
                format!("{layers} layers"),
                format!("model.layers.{}", layers - 1),
            ],
        ),
        (
            "hidden_size",
            serde_json::json!(128),
            vec!["model.embed_tokens.weight".into(), "64".into()],
        ),
        (
            "vocab_size",
            serde_json::json!(1u64 << 40),
            vec!["model.embed_tokens.weight".into(), "512".into()],
        ),
        (
            "intermediate_size",
            serde_json::json!(999),
            vec!["gate_proj".into(), "160".into()],
        ),
        (
            "num_key_value_heads",
            serde_json::json!(1),
            vec!["k_proj".into(), "num_key_value_heads 1".into()],
        ),
    ];
    for (field, value, names) in cases {
        std::fs::write(&ck.config_path, &original).unwrap();
        edit_json(&ck.config_path, |c| {
            c.insert(field.into(), value.clone());
        });
        let e = expect_err(field, || Checkpoint::from_dir(dir.path()));
        assert!(
            e.contains(&format!("{field} is {value}")) || e.contains(&format!("{field} {value}")),
            "{field} {value}: {e}"
        );
        assert!(e.contains("config.json"), "{field} {value}: {e}");
        assert!(e.contains("model.safetensors"), "{field} {value}: {e}");
        for name in names {
            assert!(e.contains(&name), "{field} {value}: {name:?} in {e}");
        }
    }
}

/// A sharded checkpoint is held to the tensors of all its shards together.
#[test]
fn sharded_config_sizes_are_held_to_all_shards() {
    let dir = tempfile::tempdir().unwrap();
    let ck =
        write_checkpoint(dir.path(), &SyntheticSpec::new(Preset::Tiny).with_shards(3)).unwrap();
    let layers = ck.config.num_hidden_layers;
    Checkpoint::from_dir(dir.path()).unwrap();
    edit_json(&ck.config_path, |c| {
        c.insert("num_hidden_layers".into(), (layers + 5).into());
    });
    let e = expect_err("more layers, sharded", || Checkpoint::from_dir(dir.path()));
    assert!(
        e.contains("num_hidden_layers") && e.contains(&format!("model.layers.{layers}")),
        "{e}"
    );
    assert!(e.contains("3 files"), "{e}");
}

/// A context far past anything allocatable is capped, with a note naming the field, its value
/// and the file; the rotary tables grow with use instead of being built for the whole context,
/// and a position past the cap is a clear error. A window longer than any context is no window.
#[test]
fn a_huge_context_is_capped_and_costs_nothing_until_used() {
    use emilio_qwen::config::MAX_CONTEXT;
    let dir = tempfile::tempdir().unwrap();
    let ck = tiny(dir.path());
    let ids = |n: usize| Tensor::from_vec(vec![7u32; n], (1, n), &Device::Cpu).unwrap();
    let prompt = ids(6);
    let mut small = load_ours(dir.path()).unwrap();
    let small_bytes = small.memory_bytes();
    let want = small.forward(&prompt, 0).unwrap();

    edit_json(&ck.config_path, |c| {
        c.insert("max_position_embeddings".into(), (i64::MAX as u64).into());
        c.insert("sliding_window".into(), u64::MAX.into());
    });
    let started = std::time::Instant::now();
    let c = Checkpoint::from_dir(dir.path()).unwrap();
    assert_eq!(c.config.max_position_embeddings, MAX_CONTEXT);
    assert_eq!(c.config.sliding_window, MAX_CONTEXT);
    let note = c.notes.join("\n");
    assert!(
        note.contains("max_position_embeddings")
            && note.contains(&(i64::MAX as u64).to_string())
            && note.contains("config.json")
            && note.contains(&MAX_CONTEXT.to_string()),
        "{note}"
    );
    let mut big = c
        .load(DType::F32, &Device::Cpu, &Options::default())
        .unwrap();
    // The tables start at 4096 rows (16 columns of f32 at the tiny head size, sin and cos).
    let head_dim = c.config.head_dim();
    assert!(
        big.memory_bytes() <= small_bytes + 4096 * head_dim * 4,
        "{} vs {small_bytes}",
        big.memory_bytes()
    );
    // Same logits as with the short table, bit for bit.
    let got = big.forward(&prompt, 0).unwrap();
    let diff = (got - &want).unwrap().abs().unwrap().max_all().unwrap();
    assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    // Past the cap: an error naming the limit, not an allocation.
    big.clear_kv_cache();
    let e = expect_err("past the cap", || big.forward(&ids(1), MAX_CONTEXT));
    assert!(e.contains("max_position_embeddings"), "{e}");
    // Stock builds its tables for the capped context, not for 2⁶³ positions.
    c.load_stock(DType::F32, &Device::Cpu).unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
}

/// Stock transformers ties the head to the embedding whenever the config says so, whatever the
/// file holds; so does Emilio now, for both backends, with a note saying so.
#[test]
fn a_head_in_a_tied_checkpoint_is_ignored_with_a_note() {
    let dir = tempfile::tempdir().unwrap();
    let ck = write_checkpoint(
        dir.path(),
        &SyntheticSpec::new(Preset::Tiny)
            .with_tied(false)
            .with_seed(9),
    )
    .unwrap();
    edit_json(&ck.config_path, |c| {
        c.insert("tie_word_embeddings".into(), true.into());
    });
    let prompt = Tensor::new(&[[3u32, 1, 4, 1, 5]], &Device::Cpu).unwrap();
    let both = Checkpoint::from_dir(dir.path()).unwrap();
    let note = both.notes.join("\n");
    assert!(
        note.contains("lm_head.weight")
            && note.contains("tie_word_embeddings")
            && note.contains("ignored"),
        "{note}"
    );
    let ours = |c: &Checkpoint| {
        c.load(DType::F32, &Device::Cpu, &Options::new(WeightFormat::F32))
            .unwrap()
            .forward(&prompt, 0)
            .unwrap()
    };
    let stock = |c: &Checkpoint| {
        use emilio_qwen::generation::CausalLM;
        c.load_stock(DType::F32, &Device::Cpu)
            .unwrap()
            .forward(&prompt, 0)
            .unwrap()
    };
    let (ours_both, stock_both) = (ours(&both), stock(&both));
    edit_weights(&ck.weight_files[0], |t| {
        t.remove("lm_head.weight").unwrap();
    });
    let tied = Checkpoint::from_dir(dir.path()).unwrap();
    assert!(tied.notes.is_empty(), "{:?}", tied.notes);
    let same = |a: &Tensor, b: &Tensor| {
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        d.to_scalar::<f32>().unwrap() == 0.0
    };
    assert!(same(&ours_both, &ours(&tied)), "emilio used lm_head");
    assert!(same(&stock_both, &stock(&tied)), "stock used lm_head");
}

/// Writes `path` again with `edit` applied to its metadata (tensors unchanged).
fn rewrite_gguf(
    path: &Path,
    edit: impl FnOnce(&mut HashMap<String, candle_core::quantized::gguf_file::Value>),
) {
    use candle_core::quantized::gguf_file;
    let mut f = std::fs::File::open(path).unwrap();
    let mut content = gguf_file::Content::read(&mut f).unwrap();
    let mut names: Vec<String> = content.tensor_infos.keys().cloned().collect();
    names.sort();
    let tensors: Vec<_> = names
        .iter()
        .map(|n| content.tensor(&mut f, n, &Device::Cpu).unwrap())
        .collect();
    edit(&mut content.metadata);
    let md: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let ts: Vec<(&str, &candle_core::quantized::QTensor)> = names
        .iter()
        .map(|n| n.as_str())
        .zip(tensors.iter())
        .collect();
    let mut out = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut out, &md, &ts).unwrap();
}

/// The GGUF path holds its metadata's sizes to its tensor table the same way, and a header
/// whose alignment Candle would divide by zero is refused.
#[test]
fn gguf_sizes_are_held_to_its_tensors() {
    use candle_core::quantized::gguf_file::Value as V;
    use emilio_qwen::synthetic::gguf::{write_gguf, GgufQuant};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    let spec = SyntheticSpec::new(Preset::Tiny);
    write_gguf(&path, &spec, GgufQuant::F16).unwrap();
    Checkpoint::from_gguf(&path).unwrap();
    let layers = spec.config().unwrap().num_hidden_layers;
    let original = std::fs::read(&path).unwrap();
    let cases: Vec<(&str, V, String)> = vec![
        (
            "qwen2.block_count",
            V::U32(1_000_000_000),
            format!("qwen2.block_count is 1000000000, but the weights say {layers} layers"),
        ),
        (
            "qwen2.block_count",
            V::U32(layers as u32 - 1),
            format!("{layers} layers"),
        ),
        (
            "qwen2.feed_forward_length",
            V::U32(999),
            "qwen2.feed_forward_length 999".into(),
        ),
        (
            "qwen2.vocab_size",
            V::U32(1 << 30),
            "model.embed_tokens.weight".into(),
        ),
        ("general.alignment", V::U32(0), "power of two".into()),
        ("qwen2.context_length", V::U64(u64::MAX), String::new()),
    ];
    for (key, value, name) in cases {
        std::fs::write(&path, &original).unwrap();
        rewrite_gguf(&path, |md| {
            md.insert(key.to_string(), value.clone());
        });
        if key == "qwen2.context_length" {
            // Capped, as a config.json's: not refused, not allocated.
            let c = Checkpoint::from_gguf(&path).unwrap();
            assert_eq!(
                c.config.max_position_embeddings,
                emilio_qwen::config::MAX_CONTEXT
            );
            assert!(
                c.notes.join(" ").contains("qwen2.context_length"),
                "{:?}",
                c.notes
            );
            continue;
        }
        let e = expect_err(key, || Checkpoint::from_gguf(&path));
        assert!(e.contains("tiny.gguf") && e.contains(&name), "{key}: {e}");
    }
}
