//! `emilio bench model` on a `tiny` checkpoint and `emilio bench op` at the Qwen2.5-0.5B
//! shapes: both run, their JSON parses, and every ratio is positive and finite.

use std::time::Duration;

use emilio_tests::cli::Sandbox;
use serde_json::Value;

fn positive(v: &Value, what: &str) -> f64 {
    let x = v
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"));
    assert!(x > 0.0 && x.is_finite(), "{what} = {x}");
    x
}

#[test]
fn bench_model_json() {
    let sb = Sandbox::new();
    let model = sb.synth_tiny("tiny", 1, &[]);
    let model = model.to_str().unwrap();
    for format in ["f16", "f32"] {
        let run = sb
            .run([
                "bench",
                "model",
                "--model",
                model,
                "--prompt-tokens",
                "8",
                "--decode-tokens",
                "4",
                "--reps",
                "1",
                "--weight-format",
                format,
                "--json",
            ])
            .ok();
        let r = run.json();
        assert_eq!(r["model"], model, "{run}");
        assert_eq!(r["weight_format"], format, "{run}");
        assert_eq!(r["prompt_tokens"], 8, "{run}");
        assert_eq!(r["decode_tokens"], 4, "{run}");
        assert_eq!(r["reps"], 1, "{run}");
        let prefill = positive(&r["prefill_ratio"], "prefill_ratio");
        let decode = positive(&r["decode_ratio"], "decode_ratio");
        let side = |name: &str| -> &Value {
            r["backends"]
                .as_array()
                .expect("backends")
                .iter()
                .find(|b| b["backend"] == name)
                .unwrap_or_else(|| panic!("no {name} backend: {run}"))
        };
        assert_eq!(r["backends"].as_array().unwrap().len(), 2, "{run}");
        for name in ["stock", "emilio"] {
            let s = side(name);
            positive(&s["prefill_tok_s"], "prefill_tok_s");
            positive(&s["decode_tok_s"], "decode_tok_s");
            positive(&s["weight_bytes_per_token"], "weight_bytes_per_token");
            let load = s["load_secs"].as_f64().expect("load_secs");
            assert!(load >= 0.0 && load.is_finite(), "{run}");
        }
        let ratio = |key: &str| {
            side("emilio")[key].as_f64().unwrap() / side("stock")[key].as_f64().unwrap()
        };
        assert!(
            (prefill / ratio("prefill_tok_s") - 1.0).abs() < 1e-9,
            "{run}"
        );
        assert!((decode / ratio("decode_tok_s") - 1.0).abs() < 1e-9, "{run}");
        // Stock reads f32 weights; emilio's f16 format reads about half as many bytes.
        let bytes = ratio("weight_bytes_per_token");
        let reported = positive(&r["ratios"][0]["weight_bytes_ratio"], "weight_bytes_ratio");
        assert!((reported / bytes - 1.0).abs() < 1e-9, "{run}");
        assert_eq!(r["ratios"][0]["versus"], "stock", "{run}");
        if format == "f16" {
            assert!(
                bytes > 0.4 && bytes < 0.75,
                "f16 bytes ratio {bytes}: {run}"
            );
        } else {
            assert!(bytes > 0.75, "f32 bytes ratio {bytes}: {run}");
        }
    }
}

#[test]
fn bench_model_table() {
    let sb = Sandbox::new();
    let model = sb.synth_tiny("tiny", 1, &[]);
    let run = sb
        .run([
            "bench",
            "model",
            "--model",
            model.to_str().unwrap(),
            "--prompt-tokens",
            "8",
            "--decode-tokens",
            "4",
            "--reps",
            "1",
        ])
        .ok();
    for needle in ["emilio / stock", "stock f32", "emilio f16", "prefill tok/s"] {
        assert!(run.stdout.contains(needle), "table lacks {needle:?}: {run}");
    }
    let ratios = run
        .stdout
        .lines()
        .find(|l| l.starts_with("emilio / stock"))
        .expect("ratio row");
    let values: Vec<f64> = ratios
        .split_whitespace()
        .filter_map(|w| w.strip_suffix('x')?.parse().ok())
        .collect();
    assert_eq!(values.len(), 3, "prefill, decode and bytes ratios: {run}");
    assert!(values.iter().all(|v| *v > 0.0 && v.is_finite()), "{run}");
}

#[test]
fn bench_op_json() {
    let sb = Sandbox::new();
    let run = sb
        .run([
            "bench",
            "op",
            "--reps",
            "1",
            "--prefill-rows",
            "4",
            "--json",
        ])
        .ok();
    eprintln!("bench op took {:.1?}", run.elapsed);
    let r = run.json();
    assert_eq!(r["reps"], 1, "{run}");
    positive(&r["threads"], "threads");
    assert!(r["isa"].as_str().is_some_and(|s| !s.is_empty()), "{run}");
    assert_eq!(r["device"], "cpu", "{run}");
    positive(&r["exp_ceiling_gprod_s"], "exp_ceiling_gprod_s");
    positive(&r["memory_read_gb_s"], "memory_read_gb_s");
    let cases = r["cases"].as_array().expect("cases");
    // Five layer shapes at 1 row, and all but lm_head at 4 rows.
    assert_eq!(cases.len(), 9, "{run}");
    let mut layers: Vec<&str> = cases.iter().map(|c| c["layer"].as_str().unwrap()).collect();
    layers.dedup();
    assert_eq!(layers.len(), 5, "{layers:?}");
    for c in cases {
        let rows = c["rows"].as_u64().unwrap();
        assert!(rows == 1 || rows == 4, "{c}");
        for key in [
            "stock_ms",
            "emilio_f32_ms",
            "emilio_f16_ms",
            "speedup_f32",
            "speedup_f16",
            "emilio_f16_gb_s",
            "emilio_f16_gprod_s",
            "exp_ceiling_fraction",
            "bandwidth_fraction",
        ] {
            positive(&c[key], key);
        }
        let (k, n) = (c["k"].as_u64().unwrap(), c["n"].as_u64().unwrap());
        assert_eq!(c["stock_bytes"].as_u64().unwrap(), k * n * 4, "{c}");
        let speedup = c["speedup_f16"].as_f64().unwrap();
        let times = c["stock_ms"].as_f64().unwrap() / c["emilio_f16_ms"].as_f64().unwrap();
        assert!((speedup / times - 1.0).abs() < 1e-9, "{c}");
    }
    assert!(
        cases
            .iter()
            .any(|c| c["layer"] == "lm_head" && c["n"] == 151_936 && c["rows"] == 1),
        "{run}"
    );
    // Reported, not enforced beyond a generous bound: the heaviest cli test.
    assert!(
        run.elapsed < Duration::from_secs(120),
        "bench op --reps 1 took {:?}",
        run.elapsed
    );
}
