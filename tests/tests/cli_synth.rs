//! `emilio synth`, end to end: the files it writes, seeded reproducibility, `--untied`,
//! `--dtype`, and that its checkpoint is what `generate` loads with no network.

use emilio_tests::cli::{safetensors_header, Sandbox};
use serde_json::Value;

const FILES: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];

fn read(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn config(dir: &std::path::Path) -> Value {
    serde_json::from_slice(&read(&dir.join("config.json"))).expect("config.json is JSON")
}

#[test]
fn synth_writes_a_checkpoint_and_names_it() {
    let sb = Sandbox::new();
    let out = sb.join("ckpt");
    let run = sb
        .run([
            "synth",
            "--preset",
            "tiny",
            "--seed",
            "3",
            "--out",
            out.to_str().unwrap(),
        ])
        .ok();
    for file in FILES {
        let path = out.join(file);
        assert!(
            path.is_file() && std::fs::metadata(&path).unwrap().len() > 0,
            "{} was not written: {run}",
            path.display()
        );
    }
    assert!(
        run.stdout.contains(out.to_str().unwrap()),
        "stdout does not name the output directory {}: {run}",
        out.display()
    );
    // No probe or temp file is left behind.
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(
        names.iter().all(|n| !n.starts_with('.')),
        "hidden files left in the checkpoint: {names:?}"
    );

    let cfg = config(&out);
    assert_eq!(cfg["model_type"], "qwen2", "{cfg}");
    assert_eq!(cfg["max_position_embeddings"], 128, "{cfg}");
    assert_eq!(cfg["tie_word_embeddings"], true, "{cfg}");
    let header = safetensors_header(&out.join("model.safetensors"));
    assert!(
        header.get("model.embed_tokens.weight").is_some(),
        "{header}"
    );
    assert!(
        header.get("lm_head.weight").is_none(),
        "a tied checkpoint holds lm_head.weight: {header}"
    );
    // Published Qwen checkpoints are bf16, and so is synth's default.
    assert_eq!(header["model.embed_tokens.weight"]["dtype"], "BF16");
    // The tokenizer loads and knows the chat tokens.
    let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    assert!(tok.token_to_id("<|im_start|>").is_some());
    assert!(tok.token_to_id("<|im_end|>").is_some());
}

#[test]
fn synth_relative_out_is_relative_to_the_working_directory() {
    let sb = Sandbox::new();
    sb.run(["synth", "--preset", "tiny", "--out", "nested/dir/ckpt"])
        .ok();
    for file in FILES {
        assert!(sb.join("nested/dir/ckpt").join(file).is_file(), "{file}");
    }
}

#[test]
fn synth_is_seeded() {
    let sb = Sandbox::new();
    let a = sb.synth_tiny("a", 11, &[]);
    let b = sb.synth_tiny("b", 11, &[]);
    let c = sb.synth_tiny("c", 12, &[]);
    for file in FILES {
        assert!(
            read(&a.join(file)) == read(&b.join(file)),
            "same seed, different {file}"
        );
    }
    assert!(
        read(&a.join("model.safetensors")) != read(&c.join("model.safetensors")),
        "seeds 11 and 12 wrote identical weights"
    );
    // Only the weights (and the seed recorded in the config) depend on the seed.
    let without_seed = |dir: &std::path::Path| {
        let mut cfg = config(dir);
        assert_eq!(cfg["emilio_synthetic"]["preset"], "tiny", "{cfg}");
        cfg["emilio_synthetic"]["seed"] = Value::Null;
        cfg
    };
    assert_eq!(config(&c)["emilio_synthetic"]["seed"], 12);
    assert_eq!(without_seed(&a), without_seed(&c));
    assert_eq!(
        read(&a.join("tokenizer.json")),
        read(&c.join("tokenizer.json"))
    );
}

#[test]
fn synth_overwrites_an_existing_checkpoint_in_place_with_force() {
    let sb = Sandbox::new();
    let dir = sb.synth_tiny("ckpt", 1, &[]);
    let first = read(&dir.join("model.safetensors"));
    sb.synth_tiny("ckpt", 2, &["--force"]);
    let second = read(&dir.join("model.safetensors"));
    assert!(
        first != second,
        "rewriting with another seed changed nothing"
    );
    sb.synth_tiny("ckpt", 1, &["--force"]);
    assert!(
        first == read(&dir.join("model.safetensors")),
        "rewriting with the first seed did not restore its weights"
    );
}

#[test]
fn synth_refuses_to_overwrite_without_force_naming_the_file() {
    let sb = Sandbox::new();
    let dir = sb.synth_tiny("ckpt", 1, &[]);
    let weights = read(&dir.join("model.safetensors"));
    let synth = |out: &std::path::Path, extra: &[&str]| {
        let mut args = vec!["synth", "--seed", "2", "--out", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        sb.run(args)
    };
    let config = dir.join("config.json");
    synth(&dir, &[]).fails_with(&[config.to_str().unwrap(), "--force"]);
    assert!(
        weights == read(&dir.join("model.safetensors")),
        "a refused synth wrote"
    );
    // One file of a checkpoint is enough to refuse, and it is named.
    let partial = sb.join("partial");
    std::fs::create_dir_all(&partial).unwrap();
    let tokenizer = partial.join("tokenizer.json");
    std::fs::write(&tokenizer, "mine").unwrap();
    synth(&partial, &[]).fails_with(&[tokenizer.to_str().unwrap(), "--force"]);
    assert_eq!(std::fs::read_to_string(&tokenizer).unwrap(), "mine");
    // Other files of the directory do not count.
    let other = sb.join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    synth(&other, &[]).ok();
    // A GGUF file likewise.
    let gguf = sb.join("m.gguf");
    std::fs::write(&gguf, "mine").unwrap();
    synth(&gguf, &["--format", "gguf"]).fails_with(&[gguf.to_str().unwrap(), "--force"]);
    assert_eq!(std::fs::read_to_string(&gguf).unwrap(), "mine");
    synth(&gguf, &["--format", "gguf", "--force"]).ok();
    assert!(read(&gguf).starts_with(b"GGUF"));
}

#[test]
#[cfg(unix)]
fn synth_gives_every_file_the_same_mode() {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new();
    // What a file the process creates gets under its umask (the tests' umask is the command's).
    let probe = sb.join("probe");
    std::fs::write(&probe, "").unwrap();
    let expected = std::fs::metadata(&probe).unwrap().permissions().mode() & 0o777;
    let dir = sb.synth_tiny("ckpt", 1, &[]);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode,
            expected,
            "{}: {mode:o}, not {expected:o}",
            path.display()
        );
    }
}

#[test]
fn synth_untied_writes_its_own_head() {
    let sb = Sandbox::new();
    let tied = sb.synth_tiny("tied", 5, &[]);
    let untied = sb.synth_tiny("untied", 5, &["--untied"]);
    assert_eq!(config(&untied)["tie_word_embeddings"], false);
    let header = safetensors_header(&untied.join("model.safetensors"));
    let head = header
        .get("lm_head.weight")
        .unwrap_or_else(|| panic!("--untied wrote no lm_head.weight: {header}"));
    let embed = &header["model.embed_tokens.weight"];
    assert_eq!(head["shape"], embed["shape"], "{header}");
    assert!(safetensors_header(&tied.join("model.safetensors"))
        .get("lm_head.weight")
        .is_none());

    // Both load in both backends (ab loads stock and emilio), and agree exactly in f32.
    let report = sb
        .run([
            "ab",
            "--model",
            untied.to_str().unwrap(),
            "--prompt",
            "Once upon a time",
            "--no-chat",
            "--max-tokens",
            "4",
            "--weight-format",
            "f32",
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(report["summary"]["top1_agreement"], 1.0, "{report:#}");
}

#[test]
fn synth_dtype_sets_the_stored_dtype() {
    let sb = Sandbox::new();
    for (dtype, stored) in [("f32", "F32"), ("f16", "F16"), ("bf16", "BF16")] {
        let dir = sb.synth_tiny(dtype, 0, &["--dtype", dtype]);
        let header = safetensors_header(&dir.join("model.safetensors"));
        for (name, info) in header.as_object().unwrap() {
            if name != "__metadata__" {
                assert_eq!(info["dtype"], stored, "--dtype {dtype}: {name}");
            }
        }
    }
}
