//! `emilio eval` as a user runs it, on synthetic checkpoints: the table and `--json`, a saved
//! reference that reproduces the run that saved it, references of another model, text or
//! context refused, and every bad input (context too long, text too short, not UTF-8, NaN
//! weights) a clear error.

use emilio_tests::cli::{workspace_root, Sandbox};

/// The text the tests ship (the Apache-2.0 license, ~11 kB).
fn text() -> String {
    workspace_root()
        .join("tests/data/apache-2.0.txt")
        .display()
        .to_string()
}

fn eval(sb: &Sandbox, model: &str, file: &str, extra: &[&str]) -> emilio_tests::cli::Run {
    let mut args = vec!["eval", "--model", model, "--file", file];
    args.extend_from_slice(extra);
    sb.run(args)
}

#[test]
fn eval_prints_llama_perplexity_statistics_and_json() {
    let sb = Sandbox::new();
    let model = sb.synth_tiny("m", 3, &[]);
    let m = model.to_str().unwrap();
    let t = text();
    let table = eval(&sb, m, &t, &["--ctx", "64", "--chunks", "3"]).ok();
    for needle in [
        "3 chunks of 64",
        "93 tokens scored",
        "PPL(emilio)",
        "PPL(stock)",
        "ln(PPL(emilio)/PPL(stock))",
        "Mean    KLD:",
        "99.9%   KLD:",
        "RMS Δp",
        "Same top p:",
    ] {
        assert!(
            table.stdout.contains(needle),
            "{needle:?} missing:\n{}",
            table.stdout
        );
    }
    let json = eval(&sb, m, &t, &["--ctx", "64", "--chunks", "3", "--json"])
        .ok()
        .json();
    assert_eq!(json["chunks"], 3);
    assert_eq!(json["ctx"], 64);
    assert_eq!(json["weight_format"], "f16");
    let s = &json["summary"];
    assert_eq!(s["tokens"], 93);
    let ppl = s["ppl_stock"]["value"].as_f64().unwrap();
    // Random weights: near-uniform predictions over the 512-token vocabulary.
    assert!(ppl > 100.0 && ppl < 2000.0, "{ppl}");
    let kl = s["kl"]["mean"]["value"].as_f64().unwrap();
    assert!(
        kl > 0.0 && kl < 1e-3,
        "f16 log weights move the predictions a little: {kl}"
    );
    assert!(s["same_top1"]["value"].as_f64().unwrap() > 0.9);
    assert!(json["time"]["stock_secs"].as_f64().unwrap() > 0.0);
    // The table and the JSON are the same run's figures.
    let mean = format!("{:10.3e}", kl);
    assert!(
        table.stdout.contains(&mean),
        "{mean} not in\n{}",
        table.stdout
    );
}

#[test]
fn a_saved_reference_gives_the_same_figures_without_running_stock() {
    let sb = Sandbox::new();
    let model = sb.synth_tiny("m", 5, &[]);
    let m = model.to_str().unwrap();
    let t = text();
    let saved = sb.join("stock.safetensors");
    let s = saved.to_str().unwrap();
    let first = eval(
        &sb,
        m,
        &t,
        &[
            "--ctx",
            "48",
            "--chunks",
            "4",
            "--save-reference",
            s,
            "--json",
        ],
    )
    .ok()
    .json();
    assert!(saved.is_file());
    let again = eval(
        &sb,
        m,
        &t,
        &["--ctx", "48", "--chunks", "4", "--reference", s, "--json"],
    )
    .ok()
    .json();
    assert_eq!(
        first["summary"], again["summary"],
        "the same figures, bit for bit"
    );
    assert!(again["time"]["stock_secs"].is_null(), "stock did not run");
    assert_eq!(again["reference"]["loaded_from"], s);
    // Fewer chunks than saved: the reference's first ones serve.
    let fewer = eval(
        &sb,
        m,
        &t,
        &["--ctx", "48", "--chunks", "2", "--reference", s, "--json"],
    )
    .ok()
    .json();
    assert_eq!(fewer["summary"]["tokens"], 2 * 23);
    // Another weight format against the same reference: f32 is far closer than f16.
    let f32 = eval(
        &sb,
        m,
        &t,
        &[
            "--ctx",
            "48",
            "--chunks",
            "4",
            "--reference",
            s,
            "--weight-format",
            "f32",
            "--json",
        ],
    )
    .ok()
    .json();
    let kl = |j: &serde_json::Value| j["summary"]["kl"]["mean"]["value"].as_f64().unwrap();
    assert!(
        kl(&f32) < 1e-9 && kl(&f32) < kl(&first) / 100.0,
        "{} vs {}",
        kl(&f32),
        kl(&first)
    );

    // What differs is named.
    eval(
        &sb,
        m,
        &t,
        &["--ctx", "32", "--chunks", "4", "--reference", s],
    )
    .fails_with(&["another context", "ctx 48", "make a new reference"]);
    eval(
        &sb,
        m,
        &t,
        &["--ctx", "48", "--chunks", "5", "--reference", s],
    )
    .fails_with(&["holds 4 chunks", "ask for 4 or fewer"]);
    eval(
        &sb,
        m,
        &t,
        &["--ctx", "48", "--dtype", "f16", "--reference", s],
    )
    .fails_with(&["another dtype"]);
    let other = sb.synth_tiny("other", 6, &[]);
    eval(
        &sb,
        other.to_str().unwrap(),
        &t,
        &["--ctx", "48", "--chunks", "4", "--reference", s],
    )
    .fails_with(&["another model", "sha256"]);
    let short = sb.join("other.txt");
    std::fs::write(
        &short,
        std::fs::read_to_string(&t)
            .unwrap()
            .replace("License", "Licence"),
    )
    .unwrap();
    eval(
        &sb,
        m,
        short.to_str().unwrap(),
        &["--ctx", "48", "--chunks", "4", "--reference", s],
    )
    .fails_with(&["another text", "other.txt"]);
    std::fs::write(&short, b"not a reference").unwrap();
    eval(
        &sb,
        m,
        &t,
        &["--ctx", "48", "--reference", short.to_str().unwrap()],
    )
    .fails_with(&["other.txt", "not a usable emilio eval reference"]);
    eval(&sb, m, &t, &["--reference", s, "--save-reference", s])
        .fails_with(&["cannot be used with"]);
}

#[test]
fn bad_inputs_are_clear_errors() {
    let sb = Sandbox::new();
    let model = sb.synth_tiny("m", 7, &[]);
    let m = model.to_str().unwrap();
    let t = text();
    eval(&sb, m, &t, &["--ctx", "4096"]).fails_with(&[
        "ctx 4096",
        "longer than the model's context (128 positions)",
    ]);
    let short = sb.join("short.txt");
    std::fs::write(&short, "A few words only.").unwrap();
    eval(&sb, m, short.to_str().unwrap(), &["--ctx", "64"])
        .fails_with(&["short.txt has", "fewer than one chunk of ctx 64"]);
    eval(&sb, m, &t, &["--ctx", "2"]).fails_with(&["ctx 2 is too small"]);
    eval(&sb, m, &t, &["--ctx", "64", "--chunks", "0"]).fails_with(&["max_chunks 0"]);
    let binary = sb.join("binary.txt");
    std::fs::write(&binary, [b'a', 0xff, 0xfe, b'b']).unwrap();
    eval(&sb, m, binary.to_str().unwrap(), &[]).fails_with(&["binary.txt", "not UTF-8"]);
    eval(&sb, m, sb.join("missing.txt").to_str().unwrap(), &[]).fails_with(&["missing.txt"]);
}

#[test]
fn nan_logits_are_reported_with_their_position_not_scored() {
    let sb = Sandbox::new();
    let model = sb.synth_tiny("nan", 2, &[]);
    emilio_tests::cli::poison_with_nan(&model, "model.norm.weight");
    eval(
        &sb,
        model.to_str().unwrap(),
        &text(),
        &["--ctx", "32", "--chunks", "1"],
    )
    .fails_with(&[
        "stock's logits are not finite at chunk 0, position 16",
        "token id",
    ]);
}
