//! `emilio` on a real GGUF file, end to end: SmolLM2-135M-Instruct (Llama architecture, Q4_1,
//! `EMILIO_SMOLLM2_GGUF`; `.ci/run` fetches it with `scripts/smollm2.sh`).
//!
//! - `generate`, greedy, through the model's own chat template: both the log-domain model and
//!   stock Candle (f32 on the dequantized weights) answer "What is the capital of France?" with
//!   Paris; Candle's quantized model runs too (`--backend stock-quantized`).
//! - `ab` against stock f32 on the same dequantized weights, 128 teacher-forced positions per
//!   prompt (`--no-stop`): with f16 log weights, top-1 agreement ≥ 99% and mean KL ≤ 1e-4 on
//!   each of three prompts; with f32 log weights, max KL ≤ 1e-9 (48 positions).
//! - `bench model` times the three backends in one run, and the peak resident memory while
//!   loading the log-domain model stays within the loaded model plus the largest tensor in f32,
//!   plus 10%.
//! - Bad input: a file that is not GGUF, a truncated GGUF, `--backend stock-quantized` on a
//!   safetensors checkpoint, `--gguf` with a file.

use std::path::PathBuf;

use emilio_tests::cli::{Run, Sandbox};
use emilio_tests::models::smollm2_gguf;

fn gguf() -> String {
    smollm2_gguf().to_str().unwrap().to_string()
}

fn run(sb: &Sandbox, args: &[&str]) -> Run {
    sb.run(args).ok()
}

#[test]
fn generate_answers_paris_with_both_backends() {
    let sb = Sandbox::new();
    let model = gguf();
    for backend in ["emilio", "stock"] {
        let out = run(
            &sb,
            &[
                "generate",
                "--model",
                &model,
                "--prompt",
                "What is the capital of France?",
                "--max-tokens",
                "24",
                "--backend",
                backend,
            ],
        );
        assert!(
            out.stdout.contains("Paris"),
            "{backend}: {}\n{}",
            out.stdout,
            out.stderr
        );
        assert!(out.stderr.contains(backend), "{}", out.stderr);
    }
}

#[test]
fn stock_quantized_backend_generates() {
    let sb = Sandbox::new();
    let out = run(
        &sb,
        &[
            "generate",
            "--model",
            &gguf(),
            "--prompt",
            "Count from 1 to 20, separated by commas.",
            "--max-tokens",
            "4",
            "--backend",
            "stock-quantized",
        ],
    );
    // Its tokens are checked against stock's in tests/tests/smollm2.rs; here, that it runs.
    assert!(
        !out.stdout.trim().is_empty(),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stderr.contains("stock-quantized backend"),
        "{}",
        out.stderr
    );
}

fn ab(sb: &Sandbox, prompt: &str, format: &str, positions: &str) -> serde_json::Value {
    run(
        sb,
        &[
            "ab",
            "--model",
            &gguf(),
            "--prompt",
            prompt,
            "--weight-format",
            format,
            "--max-tokens",
            positions,
            "--no-stop",
            "--json",
        ],
    )
    .json()
}

#[test]
fn ab_f16_agrees_with_stock_on_three_prompts() {
    let sb = Sandbox::new();
    for prompt in [
        "What is the capital of France?",
        "Write a short poem about the sea.",
        "Explain in two sentences why the sky is blue.",
    ] {
        let r = ab(&sb, prompt, "f16", "128");
        let s = &r["summary"];
        let (positions, top1, kl_mean) = (
            s["positions"].as_u64().unwrap(),
            s["top1_agreement"].as_f64().unwrap(),
            s["kl_mean"].as_f64().unwrap(),
        );
        eprintln!("{prompt:?}: {positions} positions, top-1 {top1}, KL mean {kl_mean:.3e}");
        assert!(positions >= 128, "{prompt:?}: {positions} positions");
        assert!(top1 >= 0.99, "{prompt:?}: top-1 agreement {top1}");
        assert!(kl_mean <= 1e-4, "{prompt:?}: KL mean {kl_mean}");
    }
}

#[test]
fn ab_f32_agrees_with_stock_to_a_kl_below_1e_9() {
    let sb = Sandbox::new();
    let r = ab(&sb, "What is the capital of France?", "f32", "48");
    let s = &r["summary"];
    let kl_max = s["kl_max"].as_f64().unwrap();
    eprintln!("f32: KL max {kl_max:.3e} over {} positions", s["positions"]);
    assert!(s["positions"].as_u64().unwrap() >= 48);
    assert!(kl_max <= 1e-9, "KL max {kl_max}");
    assert_eq!(s["top1_agreement"].as_f64().unwrap(), 1.0);
}

#[test]
fn bench_model_times_three_backends_and_loading_stays_within_its_memory_bound() {
    let sb = Sandbox::new();
    let r = run(
        &sb,
        &[
            "bench",
            "model",
            "--model",
            &gguf(),
            "--prompt-tokens",
            "4",
            "--decode-tokens",
            "2",
            "--reps",
            "1",
            "--json",
        ],
    )
    .json();
    let names: Vec<&str> = r["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["backend"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["emilio", "stock", "stock-quantized"], "{r}");
    let versus: Vec<&str> = r["ratios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["versus"].as_str().unwrap())
        .collect();
    assert_eq!(versus, ["stock", "stock-quantized"], "{r}");
    for x in r["ratios"].as_array().unwrap() {
        for key in ["prefill_ratio", "decode_ratio"] {
            let v = x[key].as_f64().unwrap();
            assert!(v.is_finite() && v > 0.0, "{key} {v}");
        }
    }
    let model = r["emilio_model_bytes"].as_f64().unwrap();
    let largest = r["largest_tensor_f32_bytes"].as_f64().unwrap();
    let m = &r["backends"][0]["load_memory"];
    let growth = m["peak_rss_bytes"].as_f64().unwrap() - m["rss_before_bytes"].as_f64().unwrap();
    let bound = 1.1 * (model + largest);
    eprintln!(
        "loading: peak +{:.0} MB; model {:.0} MB, largest tensor in f32 {:.0} MB, bound {:.0} MB",
        growth / 1e6,
        model / 1e6,
        largest / 1e6,
        bound / 1e6
    );
    // The figure is real: the model itself had to become resident.
    assert!(
        growth >= 0.9 * model,
        "peak growth {growth} below the model's {model} bytes"
    );
    assert!(
        growth <= bound,
        "peak growth {growth} above the bound {bound}"
    );
}

#[test]
fn bad_gguf_input_is_a_clear_error() {
    let sb = Sandbox::new();
    let model = gguf();
    // Not a GGUF file.
    let text = sb.join("notes.gguf");
    std::fs::write(&text, "hello").unwrap();
    sb.run([
        "generate",
        "--model",
        text.to_str().unwrap(),
        "--prompt",
        "hi",
    ])
    .fails_with(&["notes.gguf", "not a GGUF file"]);
    // Truncated: the header is cut off in the middle of the metadata.
    let truncated = sb.join("cut.gguf");
    let bytes = std::fs::read(smollm2_gguf()).unwrap();
    std::fs::write(&truncated, &bytes[..100_000]).unwrap();
    sb.run([
        "generate",
        "--model",
        truncated.to_str().unwrap(),
        "--prompt",
        "hi",
    ])
    .fails_with(&["cut.gguf"]);
    // Truncated in the tensor data: the header reads, a tensor does not.
    let short = sb.join("short.gguf");
    std::fs::write(&short, &bytes[..bytes.len() / 2]).unwrap();
    sb.run([
        "generate",
        "--model",
        short.to_str().unwrap(),
        "--prompt",
        "hi",
    ])
    .fails_with(&["short.gguf", "tensor"]);
    // Candle's quantized model needs a GGUF file.
    let dir: PathBuf = sb.synth_tiny("tiny", 1, &[]);
    let d = dir.to_str().unwrap();
    sb.run([
        "generate",
        "--model",
        d,
        "--prompt",
        "hi",
        "--backend",
        "stock-quantized",
    ])
    .fails_with(&["stock-quantized", "GGUF"]);
    sb.run([
        "generate", "--model", &model, "--gguf", "x.gguf", "--prompt", "hi",
    ])
    .fails_with(&["--gguf"]);
    sb.run([
        "generate",
        "--model",
        d,
        "--gguf",
        "missing.gguf",
        "--prompt",
        "hi",
    ])
    .fails_with(&["missing.gguf", "does not exist"]);
}
