//! Every error a user can hit, end to end: a non-zero exit status (not a panic's 101), no panic
//! message and no backtrace on stderr, and an `error:` line naming the culprit (the model ID,
//! the file, the flag) and, where there is one, the way out.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use emilio_qwen::synthetic::{write_checkpoint, Preset, SyntheticSpec};
use emilio_tests::cli::{run_within, wait_with_timeout, Run, Sandbox, COMMAND_TIMEOUT};
use serde_json::Value;

/// `emilio generate --model MODEL --prompt hi EXTRA...`, not checked.
fn generate(sb: &Sandbox, model: &str, extra: &[&str]) -> Run {
    let mut args = vec!["generate", "--model", model, "--prompt", "hi"];
    args.extend_from_slice(extra);
    sb.run(args)
}

/// A copy of a fresh tiny checkpoint in `name`, for breaking.
fn checkpoint(sb: &Sandbox, name: &str) -> PathBuf {
    sb.synth_tiny(name, 0, &[])
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `generate`, `ab` and `bench model` all resolve and load the model the same way: each must
/// fail with `needles` on `model`.
fn every_model_command_fails(sb: &Sandbox, model: &str, needles: &[&str]) {
    generate(sb, model, &[]).fails_with(needles);
    sb.run([
        "ab",
        "--model",
        model,
        "--prompt",
        "hi",
        "--max-tokens",
        "2",
    ])
    .fails_with(needles);
    sb.run([
        "bench",
        "model",
        "--model",
        model,
        "--prompt-tokens",
        "4",
        "--decode-tokens",
        "2",
        "--reps",
        "1",
    ])
    .fails_with(needles);
}

#[test]
fn unknown_model_id_without_a_network_suggests_synth() {
    let sb = Sandbox::new();
    for id in ["some-org/does-not-exist", "no-such-model"] {
        let run = generate(&sb, id, &[]).fails_with(&[id, "emilio synth", "local"]);
        assert!(
            run.elapsed < Duration::from_secs(30),
            "the hub error took {:?}: {run}",
            run.elapsed
        );
    }
    every_model_command_fails(&sb, "some-org/does-not-exist", &["emilio synth"]);
    // A revision that is not in the cache is fetched (and fails) too, naming the model.
    generate(&sb, "some-org/does-not-exist", &["--revision", "v2.0"])
        .fails_with(&["some-org/does-not-exist", "v2.0"]);
}

#[test]
fn nonexistent_local_path() {
    let sb = Sandbox::new();
    let missing = sb.join("no/such/checkpoint");
    every_model_command_fails(&sb, s(&missing), &[s(&missing), "emilio synth"]);
    generate(&sb, "./no/such/dir", &[]).fails_with(&["./no/such/dir", "emilio synth"]);
}

#[test]
fn a_file_is_not_a_checkpoint() {
    let sb = Sandbox::new();
    let dir = checkpoint(&sb, "ckpt");
    let file = dir.join("config.json");
    every_model_command_fails(&sb, s(&file), &[s(&file), "directory"]);
}

#[test]
fn missing_config_json() {
    let sb = Sandbox::new();
    let dir = checkpoint(&sb, "ckpt");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let path = dir.join("config.json");
    every_model_command_fails(&sb, s(&dir), &[s(&path)]);
}

#[test]
fn corrupt_config_json() {
    let sb = Sandbox::new();
    let dir = checkpoint(&sb, "ckpt");
    let path = dir.join("config.json");
    std::fs::write(&path, "{\"model_type\": \"qwen2\", ").unwrap();
    generate(&sb, s(&dir), &[]).fails_with(&[s(&path), "JSON"]);
    // Valid JSON that lacks a required field.
    let mut cfg: Value =
        serde_json::from_slice(&std::fs::read(checkpoint(&sb, "ok").join("config.json")).unwrap())
            .unwrap();
    cfg.as_object_mut().unwrap().remove("hidden_size");
    std::fs::write(&path, cfg.to_string()).unwrap();
    generate(&sb, s(&dir), &[]).fails_with(&[s(&path), "hidden_size"]);
}

#[test]
fn missing_tokenizer_json() {
    let sb = Sandbox::new();
    let dir = checkpoint(&sb, "ckpt");
    let path = dir.join("tokenizer.json");
    std::fs::remove_file(&path).unwrap();
    every_model_command_fails(&sb, s(&dir), &[s(&path)]);
}

#[test]
fn corrupt_tokenizer_json() {
    let sb = Sandbox::new();
    let dir = checkpoint(&sb, "ckpt");
    let path = dir.join("tokenizer.json");
    for junk in [
        "{\"version\": \"1.0\", \"model\": ",
        "not json at all",
        "{}",
    ] {
        std::fs::write(&path, junk).unwrap();
        every_model_command_fails(&sb, s(&dir), &[s(&path)]);
    }
}

#[test]
fn missing_weights() {
    let sb = Sandbox::new();
    let dir = checkpoint(&sb, "ckpt");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    every_model_command_fails(&sb, s(&dir), &[s(&dir), "model.safetensors"]);
}

#[test]
fn truncated_weights_name_the_file() {
    let sb = Sandbox::new();
    let dir = checkpoint(&sb, "ckpt");
    let path = dir.join("model.safetensors");
    let full = std::fs::read(&path).unwrap();
    // Cut inside the header, and cut inside the tensor data.
    for len in [4, 1000, full.len() / 2, full.len() - 1] {
        std::fs::write(&path, &full[..len]).unwrap();
        every_model_command_fails(&sb, s(&dir), &[s(&path)]);
        for backend in ["emilio", "stock"] {
            generate(&sb, s(&dir), &["--backend", backend]).fails_with(&[s(&path)]);
        }
    }
}

#[test]
fn missing_shard_is_named() {
    let sb = Sandbox::new();
    let dir = sb.join("sharded");
    write_checkpoint(&dir, &SyntheticSpec::new(Preset::Tiny).with_shards(2)).unwrap();
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    let shard = index["weight_map"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();
    std::fs::remove_file(dir.join(&shard)).unwrap();
    every_model_command_fails(&sb, s(&dir), &[&shard]);
}

/// The index of a sharded checkpoint in `sb/name` with one shard name replaced by `shard`.
fn sharded_with_shard_name(sb: &Sandbox, name: &str, shard: &str) -> PathBuf {
    let dir = sb.join(name);
    write_checkpoint(&dir, &SyntheticSpec::new(Preset::Tiny).with_shards(2)).unwrap();
    let path = dir.join("model.safetensors.index.json");
    let mut index: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    index["weight_map"]["model.norm.weight"] = Value::String(shard.to_string());
    std::fs::write(&path, index.to_string()).unwrap();
    dir
}

#[test]
fn shard_names_outside_the_checkpoint_are_refused() {
    let sb = Sandbox::new();
    // A real file at each place, so that only the name's check can refuse it.
    let outside = sb.join("outside.safetensors");
    let donor = checkpoint(&sb, "donor");
    std::fs::copy(donor.join("model.safetensors"), &outside).unwrap();
    let absolute = outside.to_str().unwrap().to_string();
    for (i, shard) in [
        "../outside.safetensors",
        absolute.as_str(),
        "sub/x.safetensors",
    ]
    .into_iter()
    .enumerate()
    {
        let dir = sharded_with_shard_name(&sb, &format!("sharded-{i}"), shard);
        generate(&sb, s(&dir), &[]).fails_with(&[shard, "plain file name", "index.json"]);
    }
}

/// `mkfifo PATH`.
#[cfg(unix)]
fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("running mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
}

#[test]
#[cfg(unix)]
fn a_fifo_in_place_of_a_file_is_refused_not_read() {
    // Reading a FIFO blocks until a writer opens it: each of these used to hang forever.
    let sb = Sandbox::new();
    let within = Duration::from_secs(60);
    for file in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        let dir = checkpoint(&sb, &format!("fifo-{file}"));
        let path = dir.join(file);
        std::fs::remove_file(&path).unwrap();
        mkfifo(&path);
        let cmd = sb.command(["generate", "--model", s(&dir), "--prompt", "hi"]);
        run_within(cmd, within).fails_with(&[s(&path), "FIFO", "not a regular file"]);
    }
    let fifo = sb.join("model.gguf");
    mkfifo(&fifo);
    let cmd = sb.command(["generate", "--model", s(&fifo), "--prompt", "hi"]);
    run_within(cmd, within).fails_with(&[s(&fifo), "FIFO"]);
}

#[test]
fn a_directory_in_place_of_the_weights_is_named_as_one() {
    let sb = Sandbox::new();
    let dir = checkpoint(&sb, "ckpt");
    let weights = dir.join("model.safetensors");
    std::fs::remove_file(&weights).unwrap();
    std::fs::create_dir(&weights).unwrap();
    every_model_command_fails(&sb, s(&dir), &[s(&weights), "is a directory"]);
    // A shard too.
    let sharded = sb.join("sharded");
    write_checkpoint(&sharded, &SyntheticSpec::new(Preset::Tiny).with_shards(2)).unwrap();
    let shard = sharded.join("model-00001-of-00002.safetensors");
    std::fs::remove_file(&shard).unwrap();
    std::fs::create_dir(&shard).unwrap();
    generate(&sb, s(&sharded), &[]).fails_with(&[s(&shard), "is a directory"]);
}

#[test]
fn revision_with_a_local_model_is_an_error_naming_the_flag() {
    let sb = Sandbox::new();
    let dir = checkpoint(&sb, "ckpt");
    for extra in [["--revision", "v2.0"], ["--revision", "main"]] {
        generate(&sb, s(&dir), &extra).fails_with(&["--revision", extra[1], s(&dir), "directory"]);
    }
    let gguf = sb.join("tiny.gguf");
    sb.run(["synth", "--format", "gguf", "--out", s(&gguf)])
        .ok();
    generate(&sb, s(&gguf), &["--revision", "v2.0"]).fails_with(&["--revision", s(&gguf), "file"]);
}

#[test]
fn integer_weights_are_refused_not_cast_to_float() {
    let sb = Sandbox::new();
    let dir = checkpoint(&sb, "ckpt");
    let weights = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + len].to_vec()).unwrap();
    // The same byte width (2), so the file stays consistent: BF16 -> I16, padded to length.
    let name = "model.layers.0.self_attn.q_proj.weight";
    let at = header.find(name).unwrap();
    let dtype_at = at + header[at..].find("\"BF16\"").unwrap();
    let mut edited = header.clone();
    edited.replace_range(dtype_at..dtype_at + 6, " \"I16\"");
    assert_eq!(edited.len(), header.len());
    bytes[8..8 + len].copy_from_slice(edited.as_bytes());
    std::fs::write(&weights, bytes).unwrap();
    every_model_command_fails(
        &sb,
        s(&dir),
        &[
            name,
            "I16",
            "not a floating-point type",
            "model.safetensors",
        ],
    );
}

#[test]
fn a_tokenizer_with_ids_past_the_vocabulary_is_named() {
    let sb = Sandbox::new();
    let dir = checkpoint(&sb, "ckpt");
    let path = dir.join("config.json");
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    cfg["vocab_size"] = Value::from(200);
    std::fs::write(&path, cfg.to_string()).unwrap();
    // The config alone no longer fits the weights (that is refused before the tokenizer is
    // read): cut the (tied) embedding to the 200 rows too, so that only the tokenizer is wrong.
    let weights = dir.join("model.safetensors");
    let mut t = candle_core::safetensors::load(&weights, &candle_core::Device::Cpu).unwrap();
    let embed = t["model.embed_tokens.weight"].narrow(0, 0, 200).unwrap();
    t.insert("model.embed_tokens.weight".into(), embed);
    candle_core::safetensors::save(&t, &weights).unwrap();
    sb.run(["generate", "--model", s(&dir), "--prompt", "hi"])
        .fails_with(&["tokenizer.json", "with id", "200 embeddings", "config.json"]);
}

#[test]
fn untied_config_without_a_head() {
    let sb = Sandbox::new();
    let dir = checkpoint(&sb, "ckpt");
    let path = dir.join("config.json");
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    cfg["tie_word_embeddings"] = Value::Bool(false);
    std::fs::write(&path, cfg.to_string()).unwrap();
    every_model_command_fails(&sb, s(&dir), &["lm_head.weight", "tie_word_embeddings"]);
}

#[test]
fn unsupported_architecture() {
    let sb = Sandbox::new();
    let dir = checkpoint(&sb, "ckpt");
    let path = dir.join("config.json");
    let original: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let mut mistral = original.clone();
    mistral["model_type"] = "mistral".into();
    mistral["architectures"] = serde_json::json!(["MistralForCausalLM"]);
    std::fs::write(&path, mistral.to_string()).unwrap();
    every_model_command_fails(&sb, s(&dir), &["mistral", "qwen2", "llama", s(&path)]);
    // The two fields naming different families.
    let mut contradiction = original.clone();
    contradiction["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
    std::fs::write(&path, contradiction.to_string()).unwrap();
    generate(&sb, s(&dir), &[]).fails_with(&["LlamaForCausalLM", "contradicts"]);
    // A Llama config with a rotary scaling other than llama3's.
    let mut yarn = original.clone();
    yarn["model_type"] = "llama".into();
    yarn["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
    yarn["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
    std::fs::write(&path, yarn.to_string()).unwrap();
    generate(&sb, s(&dir), &[]).fails_with(&["rope_scaling", "\"yarn\"", "llama3"]);
}

#[test]
fn empty_prompt() {
    let sb = Sandbox::new();
    let dir = checkpoint(&sb, "ckpt");
    for prompt in ["", "   ", "\n"] {
        for chat in [&[][..], &["--no-chat"][..]] {
            let mut args = vec!["generate", "--model", s(&dir), "--prompt", prompt];
            args.extend_from_slice(chat);
            sb.run(&args).fails_with(&["prompt", "empty"]);
            args[0] = "ab";
            sb.run(&args).fails_with(&["prompt", "empty"]);
        }
    }
}

#[test]
fn missing_prompt_flag() {
    let sb = Sandbox::new();
    sb.run(["generate", "--model", "whatever"])
        .fails_with(&["--prompt"]);
}

#[test]
fn prompt_beyond_the_context() {
    let sb = Sandbox::new();
    let dir = checkpoint(&sb, "ckpt");
    let long: String = (0..200).map(|i| format!("word{i} ")).collect();
    for cmd in ["generate", "ab"] {
        sb.run([cmd, "--model", s(&dir), "--no-chat", "--prompt", &long])
            .fails_with(&["prompt", "128", "context"]);
    }
    // With the chat template, a prompt that alone fits (111 tokens) can still overflow (151).
    let medium: String = (0..40).map(|i| format!("w{i} ")).collect();
    sb.run([
        "generate",
        "--model",
        s(&dir),
        "--no-chat",
        "--prompt",
        &medium,
        "--max-tokens",
        "1",
    ])
    .ok();
    sb.run(["generate", "--model", s(&dir), "--prompt", &medium])
        .fails_with(&["prompt", "128"]);
}

#[test]
fn top_p_out_of_range() {
    let sb = Sandbox::new();
    let dir = checkpoint(&sb, "ckpt");
    for p in ["0", "1.5", "-0.5", "nan", "abc"] {
        let flag = format!("--top-p={p}");
        generate(&sb, s(&dir), &["--temperature", "0.8", &flag]).fails_with(&["top-p", p]);
    }
    generate(&sb, s(&dir), &["--top-p", "0"]).fails_with(&["top-p"]);
    generate(&sb, s(&dir), &["--top-p", "1.5"]).fails_with(&["top-p"]);
    // The edges of (0, 1] are fine.
    generate(&sb, s(&dir), &["--top-p", "1", "--max-tokens", "2"]).ok();
    generate(&sb, s(&dir), &["--top-p", "1e-9", "--max-tokens", "2"]).ok();
}

/// `bench model` measures rates: zero tokens would be a 0/0 ratio ("NaNx"), so it is refused
/// by name before anything loads; one token of each is the smallest measurement.
#[test]
fn bench_model_needs_tokens_to_time() {
    let sb = Sandbox::new();
    let dir = checkpoint(&sb, "ckpt");
    for flag in ["--decode-tokens", "--prompt-tokens"] {
        sb.run(["bench", "model", "--model", s(&dir), flag, "0"])
            .fails_with(&[flag, "at least 1"]);
    }
    let out = sb
        .run([
            "bench",
            "model",
            "--model",
            s(&dir),
            "--decode-tokens",
            "1",
            "--prompt-tokens",
            "1",
            "--reps",
            "1",
            "--json",
        ])
        .ok();
    let v: Value = serde_json::from_str(&out.stdout).expect("bench model --json prints JSON");
    for key in ["prefill_ratio", "decode_ratio"] {
        let r = v[key].as_f64().unwrap_or(f64::NAN);
        assert!(r.is_finite() && r > 0.0, "{key} = {r} in {}", out.stdout);
    }
}

#[test]
fn negative_temperature_with_equals() {
    let sb = Sandbox::new();
    let dir = checkpoint(&sb, "ckpt");
    for t in ["-0.5", "-1", "inf", "nan", "hot"] {
        let flag = format!("--temperature={t}");
        generate(&sb, s(&dir), &[&flag]).fails_with(&["temperature"]);
    }
}

/// BUG CHECK: `--temperature -0.5` (the value as a separate argument, as users type it) is
/// rejected by clap as "unexpected argument '-0' found", which does not name the temperature
/// or say it must be ≥ 0 (the flag needs `allow_negative_numbers` or `allow_hyphen_values`).
#[test]
fn negative_temperature_as_separate_argument() {
    let sb = Sandbox::new();
    let dir = checkpoint(&sb, "ckpt");
    generate(&sb, s(&dir), &["--temperature", "-0.5"]).fails_with(&["temperature"]);
}

#[test]
fn bad_repeat_penalty() {
    let sb = Sandbox::new();
    let dir = checkpoint(&sb, "ckpt");
    for p in ["0", "-1", "inf"] {
        let flag = format!("--repeat-penalty={p}");
        generate(&sb, s(&dir), &[&flag]).fails_with(&["repeat penalty"]);
    }
}

#[test]
fn devices_missing_from_the_build() {
    let sb = Sandbox::new();
    let dir = checkpoint(&sb, "ckpt");
    let dir = s(&dir);
    // The tests build emilio without the cuda and metal features.
    for (device, feature) in [("cuda", "--features cuda"), ("metal", "--features metal")] {
        let needles = [device, feature, "rebuild", "--device cpu"];
        generate(&sb, dir, &["--device", device]).fails_with(&needles);
        sb.run(["ab", "--model", dir, "--prompt", "hi", "--device", device])
            .fails_with(&needles);
        sb.run([
            "bench",
            "model",
            "--model",
            dir,
            "--device",
            device,
            "--prompt-tokens",
            "4",
            "--decode-tokens",
            "2",
        ])
        .fails_with(&needles);
    }
    generate(&sb, dir, &["--device", "tpu"]).fails_with(&["tpu", "--device"]);
}

#[test]
fn unwritable_out() {
    let sb = Sandbox::new();
    let file = sb.join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    // The parent is a regular file (tests run as root, so permissions would not stop it).
    for out in [file.join("ckpt"), file.join("deeper/ckpt")] {
        sb.run(["synth", "--preset", "tiny", "--out", s(&out)])
            .fails_with(&[s(&out)]);
    }
    // The output path is itself a regular file.
    sb.run(["synth", "--preset", "tiny", "--out", s(&file)])
        .fails_with(&[s(&file), "not a directory"]);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a directory");
    sb.run(["synth", "--preset", "tiny"]).fails_with(&["--out"]);
}

#[test]
fn unknown_weight_format() {
    let sb = Sandbox::new();
    let dir = checkpoint(&sb, "ckpt");
    let dir = s(&dir);
    let needles = ["f8", "weight-format", "f16", "f32"];
    generate(&sb, dir, &["--weight-format", "f8"]).fails_with(&needles);
    sb.run([
        "ab",
        "--model",
        dir,
        "--prompt",
        "hi",
        "--weight-format",
        "f8",
    ])
    .fails_with(&needles);
    sb.run(["bench", "model", "--model", dir, "--weight-format", "f8"])
        .fails_with(&needles);
}

/// A pair the op has no kernels for is refused before anything loads, naming the pair, why,
/// and the --exp values that format does run with; the same on every model command.
#[test]
fn unsupported_pair_gets_flag_advice() {
    let sb = Sandbox::new();
    let dir = checkpoint(&sb, "ckpt");
    let dir = s(&dir);
    let pair = ["--weight-format", "lns8", "--exp", "lmul"];
    let needles = [
        "(lns8, lmul)",
        "float bits",
        "--weight-format lns8 runs with --exp exact, fast, mitchell",
    ];
    generate(&sb, dir, &pair).fails_with(&needles);
    let mut ab = vec!["ab", "--model", dir, "--prompt", "hi"];
    ab.extend_from_slice(&pair);
    sb.run(ab).fails_with(&needles);
    let table = ["--weight-format", "f16", "--exp", "table"];
    generate(&sb, dir, &table).fails_with(&["(f16, table)", "--weight-format f16 runs with --exp"]);
}

/// The help of --weight-format and --exp is the library's own list: every format and mode,
/// each with its summary; the top-level help names every command.
#[test]
fn help_lists_every_format_mode_and_command() {
    use emilio_op::{ExpMode, WeightFormat};
    let sb = Sandbox::new();
    let help = sb.run(["generate", "--help"]).ok();
    let text = help.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    for f in WeightFormat::ALL {
        let summary = f.summary().split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(text.contains(&format!("{f}: {summary}")), "{f}: {text}");
    }
    for e in ExpMode::ALL {
        let summary = e.summary().split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(text.contains(&format!("{e}: {summary}")), "{e}: {text}");
    }
    let top = sb.run(["--help"]).ok();
    for command in ["generate", "chat", "ab", "eval", "bench", "sweep", "synth"] {
        assert!(
            top.stdout.contains(&format!("  {command} ")),
            "{command}: {}",
            top.stdout
        );
    }
    let about = top.stdout.lines().next().unwrap_or_default();
    for word in [
        "generate",
        "chat",
        "evaluate",
        "benchmark",
        "sweep",
        "synthesise",
    ] {
        assert!(about.contains(word), "{word}: {about}");
    }
}

#[test]
fn unknown_preset_and_dtype() {
    let sb = Sandbox::new();
    let out = sb.join("x");
    sb.run(["synth", "--preset", "huge", "--out", s(&out)])
        .fails_with(&["huge", "--preset", "tiny", "qwen2.5-0.5b"]);
    sb.run(["synth", "--dtype", "f8", "--out", s(&out)])
        .fails_with(&["f8", "--dtype", "bf16"]);
    assert!(!out.exists(), "a failed synth created {}", out.display());
}

#[test]
fn bench_model_lengths_out_of_range() {
    let sb = Sandbox::new();
    let dir = checkpoint(&sb, "ckpt");
    let dir = s(&dir);
    for (prompt, decode) in [("0", "4"), ("100", "100"), ("129", "0")] {
        sb.run([
            "bench",
            "model",
            "--model",
            dir,
            "--prompt-tokens",
            prompt,
            "--decode-tokens",
            decode,
        ])
        .fails_with(&["--prompt-tokens", "--decode-tokens", "128"]);
    }
}

#[test]
fn unknown_subcommand_and_flag() {
    let sb = Sandbox::new();
    sb.run(["frobnicate"]).fails_with(&["frobnicate"]);
    sb.run(["bench", "gpu"]).fails_with(&["gpu"]);
    sb.run(["generate", "--prompt", "hi", "--no-such-flag"])
        .fails_with(&["--no-such-flag"]);
}

/// Runs `args` with stdout closed before the command writes anything, as in
/// `emilio ... | head -0`. The command may fail (there is nowhere to write) but must not panic.
fn with_closed_stdout(sb: &Sandbox, args: &[&str]) -> Run {
    let mut cmd = sb.command(args);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    drop(child.stdout.take()); // the reader is gone before the model is even loaded
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let cmdline = format!("emilio {} (stdout closed)", args.join(" "));
    let status = wait_with_timeout(&mut child, &cmdline, COMMAND_TIMEOUT);
    let run = Run {
        cmdline,
        status,
        stdout: String::new(),
        stderr: reader.join().unwrap(),
        elapsed: Duration::ZERO,
    };
    assert!(
        !run.stderr.contains("panicked") && run.status.code() != Some(101),
        "a closed stdout made it panic: {run}"
    );
    run
}

#[test]
fn closed_stdout_generate() {
    let sb = Sandbox::new();
    let dir = checkpoint(&sb, "ckpt");
    with_closed_stdout(
        &sb,
        &[
            "generate",
            "--model",
            s(&dir),
            "--prompt",
            "hi",
            "--max-tokens",
            "4",
        ],
    );
}

/// BUG CHECK: `ab`, `bench` and `synth` print with `println!`, which panics ("failed printing
/// to stdout: Broken pipe") when the reader has gone, e.g. `emilio ab --json ... | head -1`.
#[test]
fn closed_stdout_ab_json() {
    let sb = Sandbox::new();
    let dir = checkpoint(&sb, "ckpt");
    with_closed_stdout(
        &sb,
        &[
            "ab",
            "--model",
            s(&dir),
            "--prompt",
            "hi",
            "--max-tokens",
            "2",
            "--json",
        ],
    );
}

/// BUG CHECK: as [`closed_stdout_ab_json`], for `synth`'s two-line report.
#[test]
fn closed_stdout_synth() {
    let sb = Sandbox::new();
    let out = sb.join("ckpt");
    with_closed_stdout(&sb, &["synth", "--preset", "tiny", "--out", s(&out)]);
}

#[test]
fn stdin_is_not_read() {
    // generate takes its prompt from --prompt only: a command with stdin left open must not
    // block on it.
    let sb = Sandbox::new();
    let dir = checkpoint(&sb, "ckpt");
    let mut cmd = sb.command([
        "generate",
        "--model",
        s(&dir),
        "--prompt",
        "hi",
        "--max-tokens",
        "2",
    ]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let status = wait_with_timeout(
        &mut child,
        "emilio generate (stdin open)",
        Duration::from_secs(60),
    );
    let _ = stdin.write_all(b"ignored");
    assert!(status.success(), "{status}");
}

/// Edits a JSON file of a checkpoint in place.
fn edit_json_file(path: &Path, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(v.as_object_mut().unwrap());
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// A chat template whose special tokens the tokenizer lacks was sent as plain text without a
/// word; now `generate` (with the template) and `chat` refuse, naming the token and the
/// tokenizer file, and `--no-chat` still works.
#[test]
fn a_template_whose_tokens_the_tokenizer_lacks_is_refused() {
    let sb = Sandbox::new();
    let dir = checkpoint(&sb, "model");
    edit_json_file(&dir.join("tokenizer_config.json"), |c| {
        let t = c["chat_template"]
            .as_str()
            .unwrap()
            .replace("<|im_start|>", "<|begin_turn|>");
        c.insert("chat_template".into(), t.into());
    });
    let needles = ["<|begin_turn|>", "tokenizer.json", "--no-chat"];
    generate(&sb, s(&dir), &["--max-tokens", "2"]).fails_with(&needles);
    sb.run_with_input(["chat", "--model", s(&dir), "--max-tokens", "2"], "hi\n")
        .fails_with(&needles);
    generate(&sb, s(&dir), &["--max-tokens", "2", "--no-chat"]).ok();
}

/// What the files say but the run does otherwise is a warning on stderr: a context capped, a
/// head ignored because the config ties it, a model vocabulary larger than the tokenizer's.
#[test]
fn files_read_otherwise_than_they_say_are_warned_about() {
    let sb = Sandbox::new();
    let dir = checkpoint(&sb, "huge-context");
    edit_json_file(&dir.join("config.json"), |c| {
        c.insert("max_position_embeddings".into(), (i64::MAX as u64).into());
    });
    let run = generate(&sb, s(&dir), &["--max-tokens", "2"]).ok();
    assert!(
        run.stderr.contains("warning:")
            && run
                .stderr
                .contains("max_position_embeddings is 9223372036854775807")
            && run.stderr.contains("capped"),
        "{run}"
    );

    let dir = sb.synth_tiny("tied-with-head", 0, &["--untied"]);
    edit_json_file(&dir.join("config.json"), |c| {
        c.insert("tie_word_embeddings".into(), true.into());
    });
    let run = generate(&sb, s(&dir), &["--max-tokens", "2"]).ok();
    assert!(
        run.stderr.contains("warning:")
            && run.stderr.contains("lm_head.weight")
            && run.stderr.contains("ignored"),
        "{run}"
    );

    // 600 embeddings (not padding to a multiple of 64) over the tokenizer's ids.
    let dir = checkpoint(&sb, "big-vocab");
    let weights = dir.join("model.safetensors");
    let mut t = candle_core::safetensors::load(&weights, &candle_core::Device::Cpu).unwrap();
    let embed = &t["model.embed_tokens.weight"];
    let extra = embed.narrow(0, 0, 88).unwrap();
    let bigger = candle_core::Tensor::cat(&[embed, &extra], 0).unwrap();
    t.insert("model.embed_tokens.weight".into(), bigger);
    candle_core::safetensors::save(&t, &weights).unwrap();
    edit_json_file(&dir.join("config.json"), |c| {
        c.insert("vocab_size".into(), 600.into());
    });
    let tokens = emilio_qwen::synthetic::tokenizer_size();
    let run = generate(&sb, s(&dir), &["--max-tokens", "2"]).ok();
    assert!(
        run.stderr.contains("warning:")
            && run.stderr.contains("600 embeddings")
            && run.stderr.contains(&format!("only {tokens} tokens"))
            && run.stderr.contains("<|unknown id N|>"),
        "{run}"
    );
}
