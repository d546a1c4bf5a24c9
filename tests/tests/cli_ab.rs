//! `emilio ab`, end to end on a `tiny` checkpoint: the JSON report (exact agreement with
//! stock Candle in f32, consistent fields, positive speeds), the f16 report, and the table.

use std::path::Path;

use emilio_tests::cli::{Run, Sandbox};
use serde_json::Value;

fn ab(sb: &Sandbox, model: &Path, prompt: &str, extra: &[&str]) -> Run {
    let mut args = vec!["ab", "--model", model.to_str().unwrap(), "--prompt", prompt];
    args.extend_from_slice(extra);
    sb.run(args).ok()
}

fn f64_of(v: &Value, what: &str) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"))
}

fn tokens_of(v: &Value) -> Vec<u64> {
    v.as_array()
        .expect("token list")
        .iter()
        .map(|t| t.as_u64().expect("token id"))
        .collect()
}

/// Checks the fields every report has, whatever the weight format; returns the number of
/// compared positions.
fn check_report_shape(r: &Value, model: &Path, max_tokens: usize) -> usize {
    let label = model.to_str().unwrap();
    assert_eq!(r["model"], label, "{r:#}");
    assert_eq!(r["device"], "cpu", "{r:#}");
    let prompt_tokens = r["prompt_tokens"].as_u64().expect("prompt_tokens") as usize;
    assert!(prompt_tokens > 0, "{r:#}");
    let per = r["per_position"].as_array().expect("per_position");
    let positions = r["summary"]["positions"].as_u64().expect("positions") as usize;
    let stock_tokens = tokens_of(&r["stock"]["tokens"]);
    let emilio_tokens = tokens_of(&r["emilio"]["tokens"]);
    assert_eq!(per.len(), positions, "{r:#}");
    assert_eq!(
        per.len(),
        stock_tokens.len(),
        "one position per stock token: {r:#}"
    );
    assert!(!per.is_empty() && per.len() <= max_tokens, "{r:#}");
    assert!(
        !emilio_tokens.is_empty() && emilio_tokens.len() <= max_tokens,
        "{r:#}"
    );
    let mut matches = 0;
    for (i, p) in per.iter().enumerate() {
        assert_eq!(
            p["position"].as_u64().unwrap() as usize,
            prompt_tokens - 1 + i,
            "{p}"
        );
        assert_eq!(p["stock_token"].as_u64().unwrap(), stock_tokens[i], "{p}");
        let kl = f64_of(&p["kl"], "kl");
        let rel = f64_of(&p["max_rel_err"], "max_rel_err");
        assert!(kl >= 0.0 && kl.is_finite(), "{p}");
        assert!(rel >= 0.0 && rel.is_finite(), "{p}");
        let top1 = p["top1_match"].as_bool().expect("top1_match");
        assert_eq!(
            top1,
            p["emilio_token"] == p["stock_token"],
            "top1_match says whether emilio's argmax is stock's token: {p}"
        );
        matches += top1 as usize;
    }
    let s = &r["summary"];
    let agreement = f64_of(&s["top1_agreement"], "top1_agreement");
    assert!(
        (agreement - matches as f64 / per.len() as f64).abs() < 1e-12,
        "{r:#}"
    );
    let kl_max = per
        .iter()
        .map(|p| p["kl"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert_eq!(f64_of(&s["kl_max"], "kl_max"), kl_max, "{r:#}");
    assert!(f64_of(&s["kl_mean"], "kl_mean") <= kl_max, "{r:#}");

    // The first divergence is where the free-running continuations part.
    let expected_divergence = stock_tokens
        .iter()
        .zip(&emilio_tokens)
        .position(|(a, b)| a != b)
        .or((stock_tokens.len() != emilio_tokens.len())
            .then(|| stock_tokens.len().min(emilio_tokens.len())));
    assert_eq!(
        r["first_divergence"].as_u64().map(|d| d as usize),
        expected_divergence,
        "{r:#}"
    );
    for side in ["stock", "emilio"] {
        let c = &r[side];
        let text = c["text"].as_str().unwrap();
        let head = c["head"].as_str().unwrap();
        let tail = c["tail"].as_str().unwrap();
        assert!(
            text.starts_with(head) || text.contains('\u{fffd}'),
            "{side}: head is not a prefix of text: {c}"
        );
        if r["first_divergence"].is_null() {
            assert_eq!(head, text, "{c}");
            assert_eq!(tail, "", "{c}");
        }
    }

    // Speeds: positive, and the ratios are the quotients of the sides.
    for side in ["stock_speed", "emilio_speed"] {
        let sp = &r[side];
        let load = f64_of(&sp["load_secs"], "load_secs");
        assert!(load >= 0.0 && load.is_finite(), "{side}: {sp}");
        let prefill = f64_of(&sp["prefill_tok_s"], "prefill_tok_s");
        assert!(prefill > 0.0 && prefill.is_finite(), "{side}: {sp}");
        let decode = f64_of(&sp["decode_tok_s"], "decode_tok_s");
        assert!(decode >= 0.0 && decode.is_finite(), "{side}: {sp}");
    }
    for ratio in ["prefill_ratio", "decode_ratio"] {
        let v = f64_of(&r[ratio], ratio);
        assert!(v > 0.0 && v.is_finite(), "{ratio}: {r:#}");
    }
    let prefill_ratio = f64_of(&r["emilio_speed"]["prefill_tok_s"], "")
        / f64_of(&r["stock_speed"]["prefill_tok_s"], "");
    assert!(
        (f64_of(&r["prefill_ratio"], "") / prefill_ratio - 1.0).abs() < 1e-9,
        "{r:#}"
    );
    per.len()
}

#[test]
fn ab_json_on_tiny_f32_agrees_exactly() {
    let sb = Sandbox::new();
    let model = sb.synth_tiny("tiny", 1, &[]);
    let cases: [(&str, &[&str]); 3] = [
        ("The quick brown fox", &["--no-chat"]),
        ("Hello world", &[]),
        (
            "1 2 3 4",
            &["--no-chat", "--system", "ignored without chat"],
        ),
    ];
    for (prompt, extra) in cases {
        let mut args = vec!["--weight-format", "f32", "--max-tokens", "8", "--json"];
        args.extend_from_slice(extra);
        let run = ab(&sb, &model, prompt, &args);
        let r = run.json();
        assert_eq!(r["weight_format"], "f32", "{run}");
        let positions = check_report_shape(&r, &model, 8);
        // The greedy runs here hit no stop token: all 8 positions are compared.
        assert_eq!(positions, 8, "{run}");
        let s = &r["summary"];
        assert_eq!(s["top1_agreement"], 1.0, "{run}");
        assert!(r["first_divergence"].is_null(), "{run}");
        let kl_max = f64_of(&s["kl_max"], "kl_max");
        assert!(kl_max < 1e-9, "kl_max {kl_max}: {run}");
        let rel = f64_of(&s["max_rel_err"], "max_rel_err");
        assert!(rel < 1e-5, "max_rel_err {rel}: {run}");
        assert_eq!(r["stock"]["tokens"], r["emilio"]["tokens"], "{run}");
        assert_eq!(r["stock"]["text"], r["emilio"]["text"], "{run}");
        for side in ["stock_speed", "emilio_speed"] {
            let decode = f64_of(&r[side]["decode_tok_s"], "decode_tok_s");
            assert!(decode > 0.0, "{side}: {run}");
        }
    }
}

#[test]
fn ab_matches_generate() {
    // ab's greedy continuation is generate's greedy output without the repeat penalty.
    let sb = Sandbox::new();
    let model = sb.synth_tiny("tiny", 2, &[]);
    let prompt = "The quick brown fox";
    let r = ab(
        &sb,
        &model,
        prompt,
        &[
            "--no-chat",
            "--max-tokens",
            "10",
            "--weight-format",
            "f32",
            "--json",
        ],
    )
    .json();
    let generated = sb
        .run([
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            prompt,
            "--no-chat",
            "--max-tokens",
            "10",
            "--repeat-penalty",
            "1",
            "--backend",
            "stock",
        ])
        .ok();
    let tok = tokenizers::Tokenizer::from_file(model.join("tokenizer.json")).unwrap();
    let ids: Vec<u32> = tokens_of(&r["stock"]["tokens"])
        .iter()
        .map(|&t| t as u32)
        .collect();
    let text = tok.decode(&ids, true).unwrap();
    assert_eq!(format!("{text}\n"), generated.stdout, "{r:#}\n{generated}");
}

#[test]
fn ab_json_on_tiny_f16_is_close() {
    let sb = Sandbox::new();
    let model = sb.synth_tiny("tiny", 1, &[]);
    let run = ab(
        &sb,
        &model,
        "The quick brown fox",
        &["--no-chat", "--max-tokens", "6", "--json"],
    );
    let r = run.json();
    assert_eq!(r["weight_format"], "f16", "f16 is the default: {run}");
    check_report_shape(&r, &model, 6);
    // Weight logs in f16 carry a relative error of 2^-11: far from exact, far from wrong.
    let rel = f64_of(&r["summary"]["max_rel_err"], "max_rel_err");
    assert!(rel > 0.0 && rel < 0.05, "max_rel_err {rel}: {run}");
    let kl = f64_of(&r["summary"]["kl_max"], "kl_max");
    assert!(kl < 1e-2, "kl_max {kl}: {run}");
}

#[test]
fn ab_half_precision_activations() {
    // --dtype runs both backends' activations (and stock's weights) in f16 or bf16: the report
    // says so, and the two stay close (both round every activation to 11 or 8 bits).
    let sb = Sandbox::new();
    let model = sb.synth_tiny("tiny", 2, &[]);
    for (dtype, bound) in [("f16", 0.05), ("bf16", 0.2)] {
        let run = ab(
            &sb,
            &model,
            "The quick brown fox",
            &["--no-chat", "--max-tokens", "4", "--dtype", dtype, "--json"],
        );
        let r = run.json();
        assert_eq!(r["dtype"], dtype, "{run}");
        check_report_shape(&r, &model, 4);
        let rel = f64_of(&r["summary"]["max_rel_err"], "max_rel_err");
        assert!(
            rel > 0.0 && rel < bound,
            "{dtype}: max_rel_err {rel}: {run}"
        );
    }
    let run = ab(
        &sb,
        &model,
        "The quick brown fox",
        &["--no-chat", "--max-tokens", "2", "--dtype", "bf16"],
    );
    assert!(
        run.stdout.contains("activations bf16") && run.stdout.contains("stock bf16"),
        "{run}"
    );
}

#[test]
fn ab_table_mode() {
    let sb = Sandbox::new();
    let model = sb.synth_tiny("tiny", 1, &[]);
    let run = ab(
        &sb,
        &model,
        "The quick brown fox",
        &["--no-chat", "--max-tokens", "5", "--weight-format", "f32"],
    );
    for needle in [
        "top-1 agreement",
        "emilio / stock",
        "100.0% of 5 positions",
        "identical",
        "stock f32",
        "emilio f32",
        "KL",
    ] {
        assert!(run.stdout.contains(needle), "table lacks {needle:?}: {run}");
    }
    // One row per compared position, marked as a top-1 match.
    let rows = run.stdout.lines().filter(|l| l.contains(" yes ")).count();
    assert_eq!(rows, 5, "{run}");
    assert!(!run.stdout.contains(" NO "), "{run}");
    assert!(
        serde_json::from_str::<Value>(&run.stdout).is_err(),
        "the table is not JSON"
    );
}

/// A NaN in the weights makes every logit NaN: `ab` and `generate` fail naming the position,
/// instead of reporting "KL 0, top-1 100%" or printing token 0.
#[test]
fn nan_weights_fail_instead_of_agreeing() {
    let sb = Sandbox::new();
    let model = sb.synth_tiny("nan", 2, &[]);
    emilio_tests::cli::poison_with_nan(&model, "model.norm.weight");
    let m = model.to_str().unwrap();
    sb.run(["ab", "--model", m, "--prompt", "hello", "--json"])
        .fails_with(&["logits at position", "not finite"]);
    sb.run(["generate", "--model", m, "--prompt", "hello"])
        .fails_with(&["logits at position", "not finite"]);
}
