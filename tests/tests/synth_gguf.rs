//! `synthetic::gguf::write_gguf` and `emilio synth --format gguf`: the presets as a Qwen2 GGUF.
//!
//! - The file read back with Candle's GGUF reader: every metadata key with its type and value,
//!   every tensor's name, shape and type.
//! - The independent reference: Candle's own `quantized_qwen2::ModelWeights::from_gguf` on the
//!   file against stock `candle_transformers` Qwen2 on the safetensors checkpoint of the same
//!   spec and seed: logits within a tolerance per quant (each justified where it is set), and
//!   the same argmax (at every step for f16 and q8_0, most steps for q4_0).
//! - `tokenizer::from_gguf` on the file encodes as the synthetic `tokenizer.json`.
//! - The CLI: the file it writes, and its errors.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{quantized_qwen2, qwen2 as stock};
use emilio_qwen::gguf::hf_to_gguf_name;
use emilio_qwen::synthetic::gguf::{write_gguf, GgufQuant};
use emilio_qwen::synthetic::{
    self, qwen2_tensor_shapes, write_checkpoint, Preset, SyntheticSpec, ENDOFTEXT, IM_END,
};
use emilio_qwen::tokenizer;
use emilio_tests::cli::Sandbox;
use serde_json::Value as Json;

fn read(path: &Path) -> gguf_file::Content {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    gguf_file::Content::read(&mut f).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn u32_of(md: &HashMap<String, Value>, key: &str) -> u32 {
    match md.get(key) {
        Some(Value::U32(v)) => *v,
        other => panic!("{key}: expected a u32, found {other:?}"),
    }
}

fn f32_of(md: &HashMap<String, Value>, key: &str) -> f32 {
    match md.get(key) {
        Some(Value::F32(v)) => *v,
        other => panic!("{key}: expected an f32, found {other:?}"),
    }
}

fn str_of<'a>(md: &'a HashMap<String, Value>, key: &str) -> &'a str {
    match md.get(key) {
        Some(Value::String(v)) => v,
        other => panic!("{key}: expected a string, found {other:?}"),
    }
}

#[test]
fn written_gguf_has_every_key_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    for (quant, tied, file_type, weight_type) in [
        (GgufQuant::F16, true, 1, GgmlDType::F16),
        (GgufQuant::Q8_0, false, 7, GgmlDType::Q8_0),
        (GgufQuant::Q4_0, true, 2, GgmlDType::Q4_0),
    ] {
        let spec = SyntheticSpec::new(Preset::Tiny)
            .with_seed(9)
            .with_tied(tied)
            .with_gqa_ratio(2);
        let path = dir.path().join(format!("{quant}.gguf"));
        let written = write_gguf(&path, &spec, quant).unwrap();
        let cfg = spec.config().unwrap();
        let content = read(&path);
        let md = &content.metadata;

        assert_eq!(str_of(md, "general.architecture"), "qwen2");
        assert!(str_of(md, "general.name").contains("tiny"));
        assert_eq!(u32_of(md, "general.file_type"), file_type, "{quant}");
        assert_eq!(u32_of(md, "general.quantization_version"), 2);
        for (key, want) in [
            ("qwen2.block_count", cfg.num_hidden_layers),
            ("qwen2.context_length", cfg.max_position_embeddings),
            ("qwen2.embedding_length", cfg.hidden_size),
            ("qwen2.feed_forward_length", cfg.intermediate_size),
            ("qwen2.attention.head_count", cfg.num_attention_heads),
            ("qwen2.attention.head_count_kv", cfg.num_key_value_heads),
        ] {
            assert_eq!(u32_of(md, key) as usize, want, "{key}");
        }
        assert_eq!(f32_of(md, "qwen2.rope.freq_base"), cfg.rope_theta as f32);
        assert_eq!(
            f32_of(md, "qwen2.attention.layer_norm_rms_epsilon"),
            cfg.rms_norm_eps as f32
        );

        // The tokenizer, with ChatML's ids and the checkpoint's own chat template.
        assert_eq!(str_of(md, tokenizer::MODEL_KEY), "gpt2");
        assert_eq!(str_of(md, tokenizer::PRE_KEY), "qwen2");
        for key in [
            tokenizer::TOKENS_KEY,
            tokenizer::TOKEN_TYPE_KEY,
            tokenizer::MERGES_KEY,
        ] {
            assert!(
                matches!(md.get(key), Some(Value::Array(a)) if !a.is_empty()),
                "{key}"
            );
        }
        let Some(Value::Array(tokens)) = md.get(tokenizer::TOKENS_KEY) else {
            unreachable!()
        };
        assert_eq!(tokens.len(), synthetic::tokenizer_size());
        let im_end = synthetic::tokenizer_special_id(IM_END);
        let eot = synthetic::tokenizer_special_id(ENDOFTEXT);
        assert_eq!(u32_of(md, tokenizer::EOS_KEY), im_end);
        assert_eq!(u32_of(md, tokenizer::BOS_KEY), eot);
        assert_eq!(u32_of(md, tokenizer::PAD_KEY), eot);
        assert!(matches!(
            md.get(tokenizer::ADD_BOS_KEY),
            Some(Value::Bool(false))
        ));
        let ckpt = write_checkpoint(dir.path().join("ckpt"), &spec).unwrap();
        let tok_cfg: Json =
            serde_json::from_slice(&std::fs::read(ckpt.dir.join("tokenizer_config.json")).unwrap())
                .unwrap();
        assert_eq!(
            str_of(md, tokenizer::CHAT_TEMPLATE_KEY),
            tok_cfg["chat_template"].as_str().unwrap()
        );
        // EOS is one of the stop ids the checkpoint's generation_config lists.
        let gen_cfg: Json = serde_json::from_slice(
            &std::fs::read(ckpt.dir.join("generation_config.json")).unwrap(),
        )
        .unwrap();
        assert!(gen_cfg["eos_token_id"]
            .as_array()
            .unwrap()
            .contains(&Json::from(im_end)));

        // Every tensor under llama.cpp's name, shape [out, in] as Candle reads it, matrices in
        // the quant and 1-D tensors in f32.
        let want: HashMap<String, (Vec<usize>, GgmlDType)> = qwen2_tensor_shapes(&cfg)
            .into_iter()
            .map(|(name, dims)| {
                let t = if dims.len() == 1 {
                    GgmlDType::F32
                } else {
                    weight_type
                };
                (hf_to_gguf_name(&name).unwrap(), (dims, t))
            })
            .collect();
        assert_eq!(content.tensor_infos.len(), want.len(), "{quant}");
        for (name, (dims, t)) in &want {
            let info = content
                .tensor_infos
                .get(name)
                .unwrap_or_else(|| panic!("{quant}: no tensor {name}"));
            assert_eq!(info.shape.dims(), &dims[..], "{name}");
            assert_eq!(info.ggml_dtype, *t, "{name}");
        }
        assert_eq!(content.tensor_infos.contains_key("output.weight"), !tied);
        let names: HashSet<&str> = written.tensors.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names.len(), want.len());
        for name in [
            "token_embd.weight",
            "output_norm.weight",
            "blk.0.attn_q.bias",
            "blk.2.ffn_down.weight",
        ] {
            assert!(names.contains(name), "{name}");
        }
    }
}

#[test]
fn gguf_weights_are_the_checkpoints() {
    // The f16 GGUF holds the bf16 checkpoint's values (bf16 → f32 → f16 is exact for normal
    // f16 numbers; only |w| < 2⁻¹⁴ lose bits to f16's subnormals).
    let dir = tempfile::tempdir().unwrap();
    let spec = SyntheticSpec::new(Preset::Tiny).with_seed(4);
    let path = dir.path().join("m.gguf");
    write_gguf(&path, &spec, GgufQuant::F16).unwrap();
    let content = read(&path);
    let mut f = std::fs::File::open(&path).unwrap();
    for (name, dims) in qwen2_tensor_shapes(&spec.config().unwrap()) {
        let want = synthetic::synthetic_tensor(&name, &dims, 4, DType::BF16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let got = content
            .tensor(&mut f, &hf_to_gguf_name(&name).unwrap(), &Device::Cpu)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            let tol = if w.abs() < 6.2e-5 { 3e-8 } else { 0.0 };
            assert!((w - g).abs() <= tol, "{name}[{i}]: {w} vs {g}");
        }
    }
}

/// Logits of stock Qwen2 on the checkpoint of `spec` and of Candle's quantized Qwen2 on the GGUF
/// of `gguf_spec` (the same spec but in the negative control), step by step: the prompt at
/// once, then one token per step (teacher-forced: both models get the reference's argmax).
fn stock_and_gguf_logits(
    spec: &SyntheticSpec,
    gguf_spec: &SyntheticSpec,
    quant: GgufQuant,
    prompt: &[u32],
    steps: usize,
) -> Vec<(Vec<f32>, Vec<f32>)> {
    let dir = tempfile::tempdir().unwrap();
    let dev = Device::Cpu;
    let ckpt = write_checkpoint(dir.path().join("ckpt"), spec).unwrap();
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(&ckpt.weight_files, DType::F32, &dev).unwrap()
    };
    let mut reference = stock::ModelForCausalLM::new(&ckpt.config.to_stock_qwen2(), vb).unwrap();
    let path = dir.path().join("m.gguf");
    write_gguf(&path, gguf_spec, quant).unwrap();
    let mut f = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let mut gguf = quantized_qwen2::ModelWeights::from_gguf(content, &mut f, &dev).unwrap();

    let flat = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut out = Vec::new();
    let mut input = prompt.to_vec();
    let mut pos = 0;
    for _ in 0..=steps {
        let x = Tensor::new(&input[..], &dev).unwrap().unsqueeze(0).unwrap();
        let r = flat(reference.forward(&x, pos).unwrap());
        let g = flat(gguf.forward(&x, pos).unwrap());
        pos += input.len();
        input = vec![argmax(&r) as u32];
        out.push((r, g));
    }
    out
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0
}

/// How close the GGUF model's logits are to the reference's, over every step.
struct Agreement {
    /// The largest |Δlogit| of a step relative to that step's largest |logit|.
    rel_max_err: f32,
    /// Steps with the reference's argmax.
    argmax_matches: usize,
    steps: usize,
    /// The smallest ratio, over the steps, of the reference's top-1 − top-2 margin to the
    /// step's largest |Δlogit|: above 2 no error of that size can swap the top two.
    min_margin_ratio: f32,
    /// The smallest Pearson correlation of a step's logits with the reference's (a miswired
    /// file gives about 0).
    min_correlation: f64,
}

fn agreement(logits: &[(Vec<f32>, Vec<f32>)]) -> Agreement {
    let mut a = Agreement {
        rel_max_err: 0.0,
        argmax_matches: 0,
        steps: logits.len(),
        min_margin_ratio: f32::INFINITY,
        min_correlation: 1.0,
    };
    for (r, g) in logits {
        assert_eq!(r.len(), g.len());
        assert!(g.iter().all(|x| x.is_finite()), "non-finite GGUF logits");
        let scale = r.iter().fold(0f32, |m, x| m.max(x.abs()));
        let err = r.iter().zip(g).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        a.rel_max_err = a.rel_max_err.max(err / scale);
        let top = argmax(r);
        let second = r
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != top)
            .fold(f32::NEG_INFINITY, |m, (_, &x)| m.max(x));
        a.argmax_matches += (argmax(g) == top) as usize;
        a.min_margin_ratio = a.min_margin_ratio.min((r[top] - second) / err);
        a.min_correlation = a.min_correlation.min(correlation(r, g));
    }
    a
}

fn correlation(x: &[f32], y: &[f32]) -> f64 {
    let n = x.len() as f64;
    let mean = |v: &[f32]| v.iter().map(|&a| a as f64).sum::<f64>() / n;
    let (mx, my) = (mean(x), mean(y));
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (&a, &b) in x.iter().zip(y) {
        let (a, b) = (a as f64 - mx, b as f64 - my);
        sxy += a * b;
        sxx += a * a;
        syy += b * b;
    }
    sxy / (sxx * syy).sqrt()
}

fn prompt() -> Vec<u32> {
    synthetic::tokenizer()
        .unwrap()
        .encode("Hello world, the model is a log of what we have", false)
        .unwrap()
        .get_ids()
        .to_vec()
}

/// What a quant must reach on both specs over all 13 steps.
struct Tolerance {
    /// Largest |Δlogit| relative to the step's largest |logit|.
    rel_err: f32,
    /// Fewest steps with the reference's argmax.
    min_argmax: usize,
    /// Smallest correlation of a step's logits with the reference's.
    min_correlation: f64,
}

/// Both specs (tied with GQA, untied without), 13 steps each, held to `tol`.
fn check_quant(quant: GgufQuant, tol: Tolerance) {
    for spec in [
        SyntheticSpec::new(Preset::Tiny).with_seed(21),
        SyntheticSpec::new(Preset::Tiny)
            .with_seed(22)
            .with_tied(false)
            .with_gqa_ratio(1),
    ] {
        let logits = stock_and_gguf_logits(&spec, &spec, quant, &prompt(), 12);
        let a = agreement(&logits);
        println!(
            "{quant} tied={}: max |Δlogit| / max |logit| = {:.3e} (tolerance {:.1e}); argmax {} \
             of {}; smallest top-2 margin / max |Δlogit| = {:.2}; smallest correlation {:.6}",
            spec.tie_word_embeddings,
            a.rel_max_err,
            tol.rel_err,
            a.argmax_matches,
            a.steps,
            a.min_margin_ratio,
            a.min_correlation
        );
        assert!(
            a.rel_max_err <= tol.rel_err,
            "{quant}: relative logit error {:.3e} above {:.1e}",
            a.rel_max_err,
            tol.rel_err
        );
        assert!(
            a.argmax_matches >= tol.min_argmax,
            "{quant}: the argmax agrees at {} of {} steps, fewer than {}",
            a.argmax_matches,
            a.steps,
            tol.min_argmax
        );
        assert!(
            a.min_correlation >= tol.min_correlation,
            "{quant}: logit correlation {} below {}",
            a.min_correlation,
            tol.min_correlation
        );
    }
}

#[test]
fn f16_gguf_logits_match_stock_qwen2() {
    // Candle dequantizes f16 weights to f32 and runs f32 arithmetic, as stock does, on the same
    // values (see gguf_weights_are_the_checkpoints): only the order of f32 operations differs
    // between the two implementations (rotary embedding, mask, softmax), a few ulps per
    // operation through 3 layers (measured: 2e-7 to 4e-7 of the logit scale, 2 to 3 ulps).
    // 1e-5 is ~80 ulps: room for another CPU's instruction choice, while any wrong value in
    // any tensor shows up orders of magnitude above it. The top-2 margins are ≥ 10⁴ times the
    // error, so the argmax must agree everywhere.
    check_quant(
        GgufQuant::F16,
        Tolerance {
            rel_err: 1e-5,
            min_argmax: 13,
            min_correlation: 0.999_999,
        },
    );
}

#[test]
fn q8_0_gguf_logits_match_stock_qwen2() {
    // q8_0 rounds each weight to 1/254 of its block's largest magnitude (about 1% of a Gaussian
    // weight's standard deviation at worst, 0.5% rms), and Candle's q8_0 matmul also rounds the
    // activations to q8_0 blocks: two independent roundings per product, averaged over each dot
    // product and compounded through 3 layers and the head (measured: 1.6% to 1.7% of the logit
    // scale). 5% leaves room for that and is still far below a miswired tensor's error (of the
    // order of 100%). The argmax may swap once, at a near tie (the untied model's smallest
    // top-2 margin is 0.3 of the error).
    check_quant(
        GgufQuant::Q8_0,
        Tolerance {
            rel_err: 5e-2,
            min_argmax: 12,
            min_correlation: 0.999,
        },
    );
}

#[test]
fn q4_0_gguf_logits_follow_stock_qwen2() {
    // q4_0 rounds to 1/14 of the block's largest magnitude, 16 times q8_0's step: the logits
    // are near, not close (measured: 14% of the logit scale tied, 27% untied, where the head is
    // q4_0 too). What still tells a right file from a broken one is the correlation of the
    // logits (measured ≥ 0.98; another model's weights give about 0, see
    // tolerances_reject_other_weights) and a majority of the argmaxes.
    check_quant(
        GgufQuant::Q4_0,
        Tolerance {
            rel_err: 0.5,
            min_argmax: 7,
            min_correlation: 0.9,
        },
    );
}

#[test]
fn tolerances_reject_other_weights() {
    // The negative control of the three tests above: a GGUF of another seed, in f16 (no
    // quantization error at all), fails every tolerance, even q4_0's.
    let spec = SyntheticSpec::new(Preset::Tiny).with_seed(21);
    let other = SyntheticSpec::new(Preset::Tiny).with_seed(23);
    let a = agreement(&stock_and_gguf_logits(
        &spec,
        &other,
        GgufQuant::F16,
        &prompt(),
        12,
    ));
    println!(
        "another seed: max |Δlogit| / max |logit| = {:.3e}, argmax {} of {}, correlation {:.3}",
        a.rel_max_err, a.argmax_matches, a.steps, a.min_correlation
    );
    assert!(a.rel_max_err > 0.5, "{}", a.rel_max_err);
    assert!(a.min_correlation < 0.5, "{}", a.min_correlation);
    // Its argmax, though, agrees at every step: a tied model with random weights predicts the
    // token it was just given (the final hidden state stays close to that token's embedding, and
    // the head is the embedding), whatever the seed. The argmax checks above are a weak signal on
    // these models; the error and correlation bounds are what tell a right file from a wrong one.
}

#[test]
fn gguf_tokenizer_encodes_as_the_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    write_gguf(&path, &SyntheticSpec::new(Preset::Tiny), GgufQuant::Q4_0).unwrap();
    let md = read(&path).metadata;
    let tok = tokenizer::from_gguf(&md, "m.gguf").unwrap();
    let reference = synthetic::tokenizer().unwrap();
    let mut r = emilio_tests::rng(0x66);
    let pieces = [
        "Hello",
        " world",
        "<|im_start|>",
        "<|im_end|>",
        "\n",
        "  ",
        "don't",
        "123",
        "🦀",
        "é",
        " the",
        "model",
        "\t",
        "WE'LL",
        "日本",
    ];
    for _ in 0..300 {
        let n = rand::Rng::random_range(&mut r, 0..16);
        let s: String = (0..n)
            .map(|_| pieces[rand::Rng::random_range(&mut r, 0..pieces.len())])
            .collect();
        let want = reference.encode(s.as_str(), false).unwrap();
        let got = tok.encode(s.as_str(), false).unwrap();
        assert_eq!(got.get_ids(), want.get_ids(), "{s:?}");
        assert_eq!(tok.decode(got.get_ids(), false).unwrap(), s);
    }
    let special = tokenizer::special_tokens(&md, "m.gguf").unwrap();
    assert_eq!(special.eos_token.as_deref(), Some(IM_END));
    assert_eq!(special.bos_token.as_deref(), Some(ENDOFTEXT));
    assert_eq!(
        special.stop_ids(),
        vec![synthetic::tokenizer_special_id(IM_END)]
    );
}

// ---------------------------------------------------------------------------------------------
// The CLI
// ---------------------------------------------------------------------------------------------

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn cli_synth_writes_a_gguf() {
    let sb = Sandbox::new();
    let out = sb.join("m.gguf");
    let run = sb
        .run([
            "synth",
            "--format",
            "gguf",
            "--quant",
            "q4_0",
            "--seed",
            "3",
            "--out",
            s(&out),
        ])
        .ok();
    assert!(run.stdout.contains(s(&out)), "{run}");
    assert!(run.stdout.contains("q4_0"), "{run}");
    let content = read(&out);
    assert_eq!(
        content.tensor_infos["blk.0.ffn_up.weight"].ggml_dtype,
        GgmlDType::Q4_0
    );
    // The library writes the same file for the same spec.
    let lib = sb.join("lib.gguf");
    write_gguf(
        &lib,
        &SyntheticSpec::new(Preset::Tiny).with_seed(3),
        GgufQuant::Q4_0,
    )
    .unwrap();
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&lib).unwrap());
    // No temp file is left beside it.
    let names: Vec<String> = std::fs::read_dir(sb.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");

    // q8_0 by default; --untied writes output.weight.
    let out = sb.join("d.gguf");
    sb.run(["synth", "--format", "gguf", "--untied", "--out", s(&out)])
        .ok();
    let content = read(&out);
    assert_eq!(
        content.tensor_infos["token_embd.weight"].ggml_dtype,
        GgmlDType::Q8_0
    );
    assert!(content.tensor_infos.contains_key("output.weight"));
}

#[test]
fn cli_synth_gguf_errors() {
    let sb = Sandbox::new();
    let dir_out = sb.join("ckpt");
    // --quant belongs to --format gguf.
    sb.run(["synth", "--quant", "q8_0", "--out", s(&dir_out)])
        .fails_with(&["--quant", "--format gguf"]);
    sb.run([
        "synth",
        "--format",
        "dir",
        "--quant",
        "f16",
        "--out",
        s(&dir_out),
    ])
    .fails_with(&["--quant", "--format gguf"]);
    assert!(
        !dir_out.exists(),
        "a failed synth created {}",
        dir_out.display()
    );
    // Unknown quant or format.
    let out = sb.join("m.gguf");
    sb.run([
        "synth",
        "--format",
        "gguf",
        "--quant",
        "q2_k",
        "--out",
        s(&out),
    ])
    .fails_with(&["q2_k", "--quant", "q8_0", "q4_0", "f16"]);
    sb.run(["synth", "--format", "onnx", "--out", s(&out)])
        .fails_with(&["onnx", "--format", "gguf"]);
    // The output must be a .gguf file.
    sb.run(["synth", "--format", "gguf", "--out", s(&dir_out)])
        .fails_with(&[s(&dir_out), ".gguf"]);
    // Unwritable: under a regular file, or an existing directory.
    let file = sb.join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let under = file.join("m.gguf");
    sb.run(["synth", "--format", "gguf", "--out", s(&under)])
        .fails_with(&[s(&under)]);
    let dir = sb.join("dir.gguf");
    std::fs::create_dir(&dir).unwrap();
    sb.run(["synth", "--format", "gguf", "--out", s(&dir)])
        .fails_with(&[s(&dir), "directory"]);
    assert!(!out.exists());
}
