//! `emilio sweep` as a user runs it, on a synthetic checkpoint: one row per pair asked with
//! the figures a separate `eval` of that pair gives, the Pareto flags consistent with the
//! figures, the SVG plot written with every pair's label, and unsupported or malformed pairs
//! refused before anything runs (the default set, every supported pair, is
//! `LogConfig::supported`, tested in `op_modes.rs`).

use emilio_tests::cli::{workspace_root, Sandbox};

fn text() -> String {
    workspace_root()
        .join("tests/data/apache-2.0.txt")
        .display()
        .to_string()
}

const QUICK: [&str; 10] = [
    "--ctx",
    "32",
    "--chunks",
    "2",
    "--prompt-tokens",
    "4",
    "--decode-tokens",
    "2",
    "--reps",
    "1",
];

#[test]
fn sweep_scores_and_times_each_pair_and_plots_them() {
    let sb = Sandbox::new();
    let model = sb.synth_tiny("m", 7, &[]);
    let m = model.to_str().unwrap();
    let t = text();
    let plot = sb.join("sweep.svg");
    let p = plot.to_str().unwrap();
    let reference = sb.join("stock.ref");
    let r = reference.to_str().unwrap();
    let pairs = "f32/exact,f16/mitchell,lns8/fast";
    let mut args = vec![
        "sweep", "--model", m, "--file", &t, "--pairs", pairs, "--plot", p,
    ];
    args.extend_from_slice(&QUICK);
    // Stock runs once, for the reference the sweep saves; the checks below reuse it.
    let saving = [&args[..], &["--json", "--save-reference", r]].concat();
    let json = sb.run(saving).ok().json();
    assert_eq!(json["reference"], r);
    let rows = json["pairs"].as_array().unwrap();
    let labels: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{}/{}",
                r["weight_format"].as_str().unwrap(),
                r["exp"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(labels.join(","), pairs);
    assert_eq!(json["scored_tokens"], 2 * 15);
    for (row, label) in rows.iter().zip(&labels) {
        // The figures are those of `eval` of the same pair.
        let (format, exp) = label.split_once('/').unwrap();
        let e = sb
            .run([
                "eval",
                "--model",
                m,
                "--file",
                &t,
                "--ctx",
                "32",
                "--chunks",
                "2",
                "--weight-format",
                format,
                "--exp",
                exp,
                "--json",
                "--reference",
                r,
            ])
            .ok()
            .json();
        let s = &e["summary"];
        assert_eq!(row["kl_mean"], s["kl"]["mean"]["value"], "{label}");
        assert_eq!(row["kl_p99"], s["kl"]["p99"], "{label}");
        assert_eq!(row["same_top1"], s["same_top1"]["value"], "{label}");
        assert_eq!(row["ln_ppl_ratio"], s["ln_ppl_ratio"]["value"], "{label}");
        for key in ["decode_ratio", "prefill_ratio", "resident_mb"] {
            let v = row[key].as_f64().unwrap();
            assert!(v.is_finite() && v > 0.0, "{label} {key} {v}");
        }
    }
    let bits: Vec<f64> = rows
        .iter()
        .map(|r| r["bits_per_weight"].as_f64().unwrap())
        .collect();
    assert_eq!(bits, [33.0, 17.0, 8.5]);
    // The exact f32 pair has the lowest KL, so nothing beats it on KL: it is on the front.
    assert_eq!(rows[0]["pareto"], true);
    for (i, r) in rows.iter().enumerate() {
        let (kl, speed) = (
            r["kl_mean"].as_f64().unwrap(),
            r["decode_ratio"].as_f64().unwrap(),
        );
        let beaten = rows.iter().enumerate().any(|(j, o)| {
            let (k2, s2) = (
                o["kl_mean"].as_f64().unwrap(),
                o["decode_ratio"].as_f64().unwrap(),
            );
            j != i && k2 <= kl && s2 >= speed && (k2 < kl || s2 > speed)
        });
        assert_eq!(r["pareto"], !beaten, "row {i}");
    }
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
    for label in &labels {
        assert!(
            svg.contains(label.as_str()),
            "{label} missing from the plot"
        );
    }
    assert!(svg.contains("Pareto front"));

    // The table: a row per pair.
    let table = sb.run([&args[..], &["--reference", r]].concat()).ok();
    for label in &labels {
        assert!(table.stdout.contains(label.as_str()), "{}", table.stdout);
    }
    assert!(table.stdout.contains("KL mean"), "{}", table.stdout);
}

#[test]
fn unsupported_and_malformed_pairs_are_refused_before_anything_runs() {
    let sb = Sandbox::new();
    let model = sb.synth_tiny("m", 8, &[]);
    let m = model.to_str().unwrap();
    let t = text();
    let err = sb
        .run([
            "sweep",
            "--model",
            m,
            "--file",
            &t,
            "--pairs",
            "f16/exact,lns8/lmul",
        ])
        .fails();
    assert!(err.stderr.contains("(lns8, lmul)"), "{}", err.stderr);
    let err = sb
        .run(["sweep", "--model", m, "--file", &t, "--pairs", "f16"])
        .fails();
    assert!(err.stderr.contains("FORMAT/EXP"), "{}", err.stderr);
    let err = sb
        .run(["sweep", "--model", m, "--file", &t, "--pairs", "f16/table"])
        .fails();
    assert!(err.stderr.contains("(f16, table)"), "{}", err.stderr);
    let err = sb
        .run(["sweep", "--model", m, "--file", &t, "--pairs", "f16/cordic"])
        .fails();
    assert!(err.stderr.contains("\"cordic\""), "{}", err.stderr);
    let err = sb
        .run([
            "generate",
            "--model",
            m,
            "--prompt",
            "hi",
            "--weight-format",
            "lns9",
        ])
        .fails();
    assert!(err.stderr.contains("\"lns8\""), "{}", err.stderr);
}
