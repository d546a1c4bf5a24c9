//! Models from the Hugging Face hub, end to end, against the fake hub of
//! `emilio_tests::fake_hub` on 127.0.0.1: sharded and single-file repositories download into
//! the cache layout hf-hub and `huggingface_hub` share and then load without a request; every
//! way a download can go wrong (a status, a cut or stalled body, a sha256 that does not match,
//! hostile headers, an unwritable cache) fails with a message naming the URL or path, and
//! leaves nothing in the cache that a later run would trust.

use std::path::{Path, PathBuf};
use std::time::Duration;

use emilio_qwen::synthetic::{write_checkpoint, Preset, SyntheticSpec};
use emilio_tests::cli::{generate, run, Run, Sandbox};
use emilio_tests::fake_hub::{sha256_hex, FakeHub, Fault};

const PROMPT: &str = "Once upon a time";
/// Greedy and short: the same model gives the same text from any source.
const ARGS: [&str; 5] = ["--no-chat", "--max-tokens", "6", "--repeat-penalty", "3.0"];
const SHARDS: [&str; 2] = [
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
];

/// A tiny synthetic checkpoint in `sb/name` with `shards` weight files.
fn checkpoint(sb: &Sandbox, name: &str, seed: u64, shards: usize) -> PathBuf {
    let dir = sb.join(name);
    let spec = SyntheticSpec::new(Preset::Tiny)
        .with_seed(seed)
        .with_shards(shards);
    write_checkpoint(&dir, &spec).unwrap();
    dir
}

/// `emilio generate --model ID ...ARGS EXTRA` against `hub`, not checked.
fn hub_generate(hub: &FakeHub, sb: &Sandbox, id: &str, extra: &[&str]) -> Run {
    let mut args = vec!["generate", "--model", id, "--prompt", PROMPT];
    args.extend(ARGS);
    args.extend_from_slice(extra);
    hub.run(sb, args)
}

/// The cache folder of repository `id` in the sandbox's `HF_HOME`.
fn repo_cache(sb: &Sandbox, id: &str) -> PathBuf {
    sb.hf_home()
        .join("hub")
        .join(format!("models--{}", id.replace('/', "--")))
}

/// Every path under `dir` (recursively, links not followed).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        out.push(path.clone());
        if std::fs::symlink_metadata(&path).unwrap().is_dir() {
            out.extend(walk(&path));
        }
    }
    out
}

/// The files of `dir`'s tree whose name contains `needle`.
fn named(dir: &Path, needle: &str) -> Vec<PathBuf> {
    walk(dir)
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains(needle))
        .collect()
}

#[test]
fn a_sharded_repository_downloads_its_index_then_every_shard() {
    let sb = Sandbox::new();
    let hub = FakeHub::start();
    let single = checkpoint(&sb, "single", 3, 1);
    let sharded = checkpoint(&sb, "sharded", 3, 2);
    for shard in SHARDS {
        assert!(sharded.join(shard).is_file(), "{shard}");
    }
    hub.add_repo("org/sharded", &sharded);
    let expected = generate(&sb, &single, PROMPT, &ARGS);

    let run = hub_generate(&hub, &sb, "org/sharded", &[]).ok();
    assert_eq!(run.stdout, expected.stdout, "{run}\n{expected}");
    // The single file was asked for once (a 404), then the index and both shards fetched.
    assert_eq!(hub.count("HEAD", "model.safetensors"), 1, "{run}");
    assert_eq!(hub.count("GET", "model.safetensors"), 0, "{run}");
    assert_eq!(hub.count("GET", "model.safetensors.index.json"), 1);
    for shard in SHARDS {
        assert_eq!(
            hub.count("GET", shard),
            2,
            "{shard}: its resolve URL and the CDN's"
        );
    }
    // From the cache now, the 404 of the single file included: no request at all.
    let before = hub.requests().len();
    let again = hub_generate(&hub, &sb, "org/sharded", &[]).ok();
    assert_eq!(again.stdout, expected.stdout, "{again}");
    assert_eq!(
        hub.requests()[before..],
        [],
        "a cached model made requests: {again}"
    );
}

#[test]
fn a_single_file_repository_downloads_into_the_shared_cache_layout() {
    let sb = Sandbox::new();
    let hub = FakeHub::start();
    let local = checkpoint(&sb, "tiny", 4, 1);
    let commit = hub.add_repo("org/tiny", &local);
    let expected = generate(&sb, &local, PROMPT, &ARGS);
    let run = hub_generate(&hub, &sb, "org/tiny", &[]).ok();
    assert_eq!(run.stdout, expected.stdout, "{run}\n{expected}");

    // hf-hub's and huggingface_hub's layout: the ref, blobs named by etag (the sha256 for LFS
    // files), the snapshot's relative links to them, nothing left half-written.
    let cache = repo_cache(&sb, "org/tiny");
    assert_eq!(
        std::fs::read_to_string(cache.join("refs/main")).unwrap(),
        commit
    );
    let weights = std::fs::read(local.join("model.safetensors")).unwrap();
    let pointer = cache
        .join("snapshots")
        .join(&commit)
        .join("model.safetensors");
    assert_eq!(
        std::fs::read_link(&pointer).unwrap(),
        Path::new("../../blobs").join(sha256_hex(&weights))
    );
    assert!(std::fs::read(&pointer).unwrap() == weights);
    let config = cache.join("snapshots").join(&commit).join("config.json");
    assert_eq!(
        std::fs::read(&config).unwrap(),
        std::fs::read(local.join("config.json")).unwrap()
    );
    assert_eq!(named(&cache, ".incomplete"), Vec::<PathBuf>::new());

    // A second run needs no request; another revision at the same commit downloads nothing.
    let before = hub.requests().len();
    hub_generate(&hub, &sb, "org/tiny", &[]).ok();
    assert_eq!(hub.requests().len(), before, "a cached model made requests");
    let gets = hub.count("GET", "model.safetensors");
    let v1 = hub_generate(&hub, &sb, "org/tiny", &["--revision", "v1"]).ok();
    assert_eq!(v1.stdout, expected.stdout, "{v1}");
    assert_eq!(
        hub.count("GET", "model.safetensors"),
        gets,
        "the blob is shared"
    );
    assert_eq!(
        std::fs::read_to_string(cache.join("refs/v1")).unwrap(),
        commit
    );
}

#[test]
fn one_gguf_file_of_a_repository_downloads_with_gguf() {
    let sb = Sandbox::new();
    let hub = FakeHub::start();
    let dir = sb.join("gguf-repo");
    std::fs::create_dir_all(&dir).unwrap();
    let gguf = dir.join("tiny-q8_0.gguf");
    sb.run([
        "synth",
        "--format",
        "gguf",
        "--seed",
        "2",
        "--out",
        gguf.to_str().unwrap(),
    ])
    .ok();
    hub.add_repo("org/tiny-gguf", &dir);
    let expected = generate(&sb, &gguf, PROMPT, &ARGS);
    let run = hub_generate(&hub, &sb, "org/tiny-gguf", &["--gguf", "tiny-q8_0.gguf"]).ok();
    assert_eq!(run.stdout, expected.stdout, "{run}");
}

#[test]
fn a_failed_weights_download_is_reported_as_such_not_as_a_missing_index() {
    let sb = Sandbox::new();
    let hub = FakeHub::start();
    let local = checkpoint(&sb, "tiny", 5, 1);
    hub.add_repo("org/tiny", &local);
    hub.set_fault("org/tiny", "model.safetensors", Fault::BodyStatus(500));
    let run = hub_generate(&hub, &sb, "org/tiny", &[]).fails_with(&[
        "500",
        "model.safetensors",
        &hub.url(),
        "try again",
    ]);
    assert!(!run.stderr.contains("index"), "{run}");
    assert_eq!(hub.count("HEAD", "model.safetensors.index.json"), 0);
    // The metadata request failing is not a 404 either.
    hub.set_fault("org/tiny", "model.safetensors", Fault::Status(503, ""));
    let run = hub_generate(&hub, &sb, "org/tiny", &[]).fails_with(&["503", "model.safetensors"]);
    assert!(!run.stderr.contains("index"), "{run}");
    assert_eq!(hub.count("HEAD", "model.safetensors.index.json"), 0);
    // Nor does an optional file that fails count as absent (another repository: this one's
    // optional files are in the cache by now).
    hub.add_repo("org/tiny-2", &local);
    hub.set_fault(
        "org/tiny-2",
        "tokenizer_config.json",
        Fault::BodyStatus(500),
    );
    hub_generate(&hub, &sb, "org/tiny-2", &[]).fails_with(&["500", "tokenizer_config.json"]);
}

#[test]
fn a_truncated_body_is_reported_and_not_cached() {
    let sb = Sandbox::new();
    let hub = FakeHub::start();
    let local = checkpoint(&sb, "tiny", 6, 1);
    hub.add_repo("org/tiny", &local);
    let weights = std::fs::read(local.join("model.safetensors")).unwrap();
    let len = weights.len().to_string();
    hub.set_fault(
        "org/tiny",
        "model.safetensors",
        Fault::Truncate(weights.len() / 2),
    );
    hub_generate(&hub, &sb, "org/tiny", &[]).fails_with(&[
        "model.safetensors",
        &len,
        "nothing was stored",
        &hub.url(),
    ]);
    let cache = repo_cache(&sb, "org/tiny");
    assert_eq!(named(&cache, &sha256_hex(&weights)), Vec::<PathBuf>::new());
    assert!(!cache.join("snapshots").exists() || named(&cache, "model.safetensors").is_empty());

    // Served whole, the next run downloads it again and runs.
    hub.set_fault("org/tiny", "model.safetensors", Fault::None);
    let gets = hub.count("GET", "model.safetensors");
    let run = hub_generate(&hub, &sb, "org/tiny", &[]).ok();
    assert!(hub.count("GET", "model.safetensors") > gets, "{run}");
    assert_eq!(
        run.stdout,
        generate(&sb, &local, PROMPT, &ARGS).stdout,
        "{run}"
    );
}

#[test]
fn a_sha256_mismatch_is_reported_and_the_file_removed() {
    let sb = Sandbox::new();
    let hub = FakeHub::start();
    let local = checkpoint(&sb, "tiny", 7, 1);
    hub.add_repo("org/tiny", &local);
    let actual = sha256_hex(&std::fs::read(local.join("model.safetensors")).unwrap());
    let named_sha = sha256_hex(b"another file");
    hub.set_fault(
        "org/tiny",
        "model.safetensors",
        Fault::Etag(format!("\"{named_sha}\"")),
    );
    hub_generate(&hub, &sb, "org/tiny", &[]).fails_with(&[
        "sha256",
        &actual,
        &named_sha,
        "x-linked-etag",
        "removed from the hub cache",
    ]);
    let cache = repo_cache(&sb, "org/tiny");
    for gone in [&actual, &named_sha, "model.safetensors", ".incomplete"] {
        assert_eq!(named(&cache, gone), Vec::<PathBuf>::new(), "{gone}");
    }
}

#[test]
fn hostile_etags_and_commits_are_refused_without_writing_outside_hf_home() {
    // Four levels up from blobs/ or snapshots/ is the sandbox, outside HF_HOME.
    let cases = [
        (
            "config.json",
            Fault::Etag("\"../../../../escape-etag\"".into()),
            "etag",
        ),
        (
            "model.safetensors",
            Fault::Etag("\"../../../../escape-lfs\"".into()),
            "x-linked-etag",
        ),
        (
            "config.json",
            Fault::Commit("../../../../escape-commit".into()),
            "x-repo-commit",
        ),
        ("config.json", Fault::NoCommit, "x-repo-commit"),
    ];
    for (file, fault, header) in cases {
        let sb = Sandbox::new();
        let hub = FakeHub::start();
        let local = checkpoint(&sb, "tiny", 8, 1);
        hub.add_repo("org/tiny", &local);
        hub.set_fault("org/tiny", file, fault.clone());
        let run = hub_generate(&hub, &sb, "org/tiny", &[]).fails_with(&[header, &hub.url(), file]);
        assert_eq!(
            named(sb.path(), "escape"),
            Vec::<PathBuf>::new(),
            "{fault:?}: {run}"
        );
        if fault != Fault::NoCommit {
            assert!(run.stderr.contains("../../../../escape"), "{run}");
        }
    }
}

#[test]
fn a_stalled_hub_times_out_naming_the_url_and_the_setting() {
    let sb = Sandbox::new();
    let hub = FakeHub::start();
    let local = checkpoint(&sb, "tiny", 9, 1);
    hub.add_repo("org/tiny", &local);
    for (file, fault) in [
        ("config.json", Fault::StallHead),
        ("model.safetensors", Fault::StallBody(100)),
    ] {
        hub.set_fault("org/tiny", file, fault.clone());
        let mut args = vec!["generate", "--model", "org/tiny", "--prompt", PROMPT];
        args.extend(ARGS);
        let mut cmd = hub.command(&sb, args);
        cmd.env("EMILIO_HUB_TIMEOUT_SECS", "1");
        let run = run(cmd).fails_with(&["EMILIO_HUB_TIMEOUT_SECS", file, &hub.url(), "1s"]);
        assert!(
            run.elapsed < Duration::from_secs(20),
            "{fault:?} took {:?}: {run}",
            run.elapsed
        );
        assert_eq!(
            named(&repo_cache(&sb, "org/tiny"), ".incomplete"),
            Vec::<PathBuf>::new()
        );
        hub.set_fault("org/tiny", file, Fault::None);
    }
    // The setting itself is checked.
    let mut cmd = hub.command(&sb, ["generate", "--model", "org/tiny", "--prompt", PROMPT]);
    cmd.env("EMILIO_HUB_TIMEOUT_SECS", "soon");
    run(cmd).fails_with(&["EMILIO_HUB_TIMEOUT_SECS", "soon"]);
}

#[test]
fn forbidden_missing_and_unwritable_each_have_their_own_message() {
    let sb = Sandbox::new();
    let hub = FakeHub::start();
    let local = checkpoint(&sb, "tiny", 10, 1);
    let url = |id: &str, file: &str| format!("{}/{id}/resolve/main/{file}", hub.url());

    hub.add_repo("org/gated", &local);
    hub.set_fault("org/gated", "config.json", Fault::Status(403, "GatedRepo"));
    hub_generate(&hub, &sb, "org/gated", &[]).fails_with(&[
        "403",
        &url("org/gated", "config.json"),
        "gated",
        "HF_TOKEN",
    ]);

    hub_generate(&hub, &sb, "org/nothing", &[]).fails_with(&[
        "404",
        &url("org/nothing", "config.json"),
        "no model org/nothing",
        "check the model ID",
    ]);

    hub.add_repo("org/no-revision", &local);
    hub.set_fault(
        "org/no-revision",
        "config.json",
        Fault::Status(404, "RevisionNotFound"),
    );
    hub_generate(&hub, &sb, "org/no-revision", &[]).fails_with(&[
        "404",
        "revision main",
        "--revision",
    ]);

    // Asked for at the commit config.json came from, which the URL names.
    let commit = hub.add_repo("org/no-tokenizer", &local);
    hub.set_fault(
        "org/no-tokenizer",
        "tokenizer.json",
        Fault::Status(404, "EntryNotFound"),
    );
    hub_generate(&hub, &sb, "org/no-tokenizer", &[]).fails_with(&[
        "has no tokenizer.json",
        "404",
        &format!(
            "{}/org/no-tokenizer/resolve/{commit}/tokenizer.json",
            hub.url()
        ),
    ]);

    // A regular file as HF_HOME: nothing can be created in it (permissions would not stop the
    // tests, which run as root).
    hub.add_repo("org/tiny", &local);
    let not_a_dir = sb.join("hf-home-file");
    std::fs::write(&not_a_dir, "").unwrap();
    let mut args = vec!["generate", "--model", "org/tiny", "--prompt", PROMPT];
    args.extend(ARGS);
    let mut cmd = hub.command(&sb, args);
    cmd.env("HF_HOME", &not_a_dir);
    run(cmd).fails_with(&[not_a_dir.to_str().unwrap(), "HF_HOME", "writable"]);
}

#[test]
fn a_hub_index_naming_paths_outside_the_checkpoint_is_refused_before_any_shard() {
    let sb = Sandbox::new();
    let hub = FakeHub::start();
    let sharded = checkpoint(&sb, "sharded", 11, 2);
    let index_path = sharded.join("model.safetensors.index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    index["weight_map"]["model.norm.weight"] = "../../escape.safetensors".into();
    std::fs::write(&index_path, index.to_string()).unwrap();
    hub.add_repo("org/sharded", &sharded);
    hub_generate(&hub, &sb, "org/sharded", &[])
        .fails_with(&["../../escape.safetensors", "plain file name"]);
    for shard in SHARDS {
        assert_eq!(hub.count("HEAD", shard), 0, "{shard} was asked for");
    }
    assert_eq!(hub.count("HEAD", "escape.safetensors"), 0);
}
