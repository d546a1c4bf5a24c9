//! The loaders' fuzz targets (`emilio_tests::fuzz_targets`, the functions cargo-fuzz runs from
//! `tests/fuzz/`) under `cargo test`, on stable:
//! - every file of `tests/fuzz/corpus/<target>/` and `tests/fuzz/regressions/<target>/` (the
//!   crashes fuzzing found, each fixed) is replayed;
//! - proptest mutations of each target's valid seed (truncations, flipped bytes, huge lengths
//!   and counts written over the header, JSON values replaced by huge numbers, wrong types,
//!   deep nesting) run for a bounded number of cases and time.
//!
//! Each input must give a loaded model or an error naming the file: never a panic (caught with
//! `catch_unwind` and reported with the input, saved to a file), a hang (a watchdog aborts a
//! case after [`HANG_SECS`], naming the saved input), or an allocation beyond
//! [`bound`]`(input) = 64 MiB + 16 × input size`, single or live at once, which the counting
//! `#[global_allocator]` below measures. The tests run one at a time (a lock) so that the
//! process's allocations are the case's.
//!
//! Bounds: `EMILIO_FUZZ_CASES` proptest cases per target (default 200) and `EMILIO_FUZZ_SECS`
//! seconds per target at most (default 4); the whole binary takes about 10 s on 2 cores.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use emilio_tests::fuzz_targets::Target;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// The counting allocator
// ---------------------------------------------------------------------------------------------

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

fn grew(size: usize) {
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(live, Ordering::Relaxed);
    LARGEST.fetch_max(size, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are updated.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The most one case may allocate, in one allocation or live at once: 64 MiB (the micro model
/// loaded, the tokenizer's regexes, the fixtures) plus 16 bytes per input byte (a parsed JSON or
/// GGUF header holds its values in a few times the bytes they take in the file).
fn bound(input: &[u8]) -> usize {
    (64 << 20) + 16 * input.len()
}

// ---------------------------------------------------------------------------------------------
// One case
// ---------------------------------------------------------------------------------------------

/// A case running longer than this is a hang: the watchdog aborts the process, naming the input.
const HANG_SECS: u64 = 60;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
/// When the running case started (ms since the watchdog's epoch; 0 when none runs).
static CASE_STARTED_MS: AtomicU64 = AtomicU64::new(0);
static CASE_INPUT: Mutex<Option<PathBuf>> = Mutex::new(None);

fn watchdog_epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(|| {
        let epoch = Instant::now();
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            let started = CASE_STARTED_MS.load(Ordering::Relaxed);
            let now = epoch.elapsed().as_millis() as u64;
            if started != 0 && now.saturating_sub(started) > HANG_SECS * 1000 {
                let input = CASE_INPUT.lock().map(|p| p.clone()).unwrap_or(None);
                eprintln!("a fuzz case hung for over {HANG_SECS} s; its input is {input:?}");
                std::process::abort();
            }
        });
        epoch
    })
}

/// Where a failing input is kept, for the report (and to copy into `regressions/`).
fn save_input(target: Target, data: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("emilio-fuzz-inputs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hash = emilio_qwen::files::sha256_of_bytes(data);
    let path = dir.join(format!("{}-{}", target.name(), &hash[..16]));
    std::fs::write(&path, data).unwrap();
    path
}

/// Holds every other test of this binary off: the allocation counters are process-wide, so a
/// test measures only while no other runs (each takes this first).
///
/// It also turns backtraces off (`RUST_BACKTRACE=0`) before any error is made: with them on,
/// each Candle error captures one, and formatting it into a message symbolises it, ~170 MB of
/// debug information that measures the test's environment, not the loader.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static NO_BACKTRACES: std::sync::Once = std::sync::Once::new();
    NO_BACKTRACES.call_once(|| std::env::set_var("RUST_BACKTRACE", "0"));
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs one input through `target` and checks the invariant (the caller holds [`serial`]); `Err` says what broke it, with the
/// input saved to a file.
fn check(target: Target, data: &[u8]) -> Result<(), String> {
    let epoch = watchdog_epoch();
    let input = save_input(target, data);
    *CASE_INPUT.lock().unwrap() = Some(input.clone());
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    LARGEST.store(0, Ordering::Relaxed);
    CASE_STARTED_MS.store(epoch.elapsed().as_millis().max(1) as u64, Ordering::Relaxed);
    let outcome = std::panic::catch_unwind(|| target.run(data));
    CASE_STARTED_MS.store(0, Ordering::Relaxed);
    let (peak, largest) = (
        PEAK.load(Ordering::Relaxed).saturating_sub(base),
        LARGEST.load(Ordering::Relaxed),
    );
    let limit = bound(data);
    let broken = match outcome {
        Err(panic) => Some(format!(
            "panicked: {}",
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        )),
        Ok(Err(broken)) => Some(broken),
        Ok(Ok(())) if largest > limit || peak > limit => Some(format!(
            "allocated {largest} bytes at once and {peak} live, over the bound of {limit} for \
             {} input bytes",
            data.len()
        )),
        Ok(Ok(())) => None,
    };
    match broken {
        None => {
            let _ = std::fs::remove_file(&input);
            Ok(())
        }
        Some(why) => Err(format!(
            "{}: {why} (input: {})",
            target.name(),
            input.display()
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Replaying the corpus and the regressions
// ---------------------------------------------------------------------------------------------

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Replays the seed, the corpus and the regressions of `target`. With `EMILIO_FUZZ_WRITE_SEEDS`
/// set, first writes the seed to `tests/fuzz/corpus/TARGET/seed` (how the corpus starts).
fn replay(target: Target) {
    let _serial = serial();
    if std::env::var_os("EMILIO_FUZZ_WRITE_SEEDS").is_some() {
        let dir = fuzz_dir().join("corpus").join(target.name());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("seed"), target.seed()).unwrap();
    }
    let mut failures = Vec::new();
    let mut inputs = vec![target.seed()];
    for kind in ["corpus", "regressions"] {
        for file in files_in(&fuzz_dir().join(kind).join(target.name())) {
            inputs.push(std::fs::read(&file).unwrap());
        }
    }
    assert!(
        inputs.len() > 1,
        "{}: no corpus in tests/fuzz",
        target.name()
    );
    for data in &inputs {
        if let Err(e) = check(target, data) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn config_json_corpus_and_regressions_replay() {
    replay(Target::Config);
}

#[test]
fn safetensors_corpus_and_regressions_replay() {
    replay(Target::Safetensors);
}

#[test]
fn index_json_corpus_and_regressions_replay() {
    replay(Target::Index);
}

#[test]
fn tokenizer_json_corpus_and_regressions_replay() {
    replay(Target::Tokenizer);
}

#[test]
fn gguf_corpus_and_regressions_replay() {
    replay(Target::Gguf);
}

// ---------------------------------------------------------------------------------------------
// Hostile mutations of valid files
// ---------------------------------------------------------------------------------------------

/// What replaces a JSON value: the sizes and types a hostile file would put there.
fn hostile_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::from(u64::MAX)),
        Just(Value::from(i64::MAX)),
        Just(Value::from(1u64 << 40)),
        Just(Value::from(1_000_000_000u64)),
        Just(Value::from(-1)),
        Just(Value::from(0)),
        Just(Value::from(1e300)),
        Just(Value::from(-0.0)),
        Just(Value::Null),
        Just(Value::from(true)),
        Just(Value::from("")),
        Just(Value::from("../../etc/passwd")),
        Just(Value::Array(vec![])),
        Just(serde_json::json!({})),
        Just(serde_json::json!([u64::MAX, -1, 1e300])),
        // Deeper than serde_json's recursion limit.
        Just(
            serde_json::from_str(&format!("{}{}", "[".repeat(200), "]".repeat(200)))
                .unwrap_or(Value::Null)
        ),
        any::<i64>().prop_map(Value::from),
        "[a-z<|>./]{0,12}".prop_map(Value::from),
    ]
}

/// Every value of `v`, depth first (the root first).
fn nodes(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(nodes).sum(),
        Value::Object(o) => o.values().map(nodes).sum(),
        _ => 0,
    }
}

/// Replaces the `n`-th value (depth first) of `v` with `with`; returns whether it did.
fn replace_nth(v: &mut Value, n: &mut usize, with: &Value) -> bool {
    if *n == 0 {
        *v = with.clone();
        return true;
    }
    *n -= 1;
    match v {
        Value::Array(a) => a.iter_mut().any(|x| replace_nth(x, n, with)),
        Value::Object(o) => o.values_mut().any(|x| replace_nth(x, n, with)),
        _ => false,
    }
}

/// A mutation of a file's bytes.
#[derive(Debug, Clone)]
enum Mutation {
    /// Keep the first `fraction` of the bytes (out of 1000).
    Truncate(u32),
    /// XOR bytes at positions (fractions of the length out of 10⁶) with values.
    Flip(Vec<(u32, u8)>),
    /// Write a little-endian number over 8 bytes at an offset (in the first 4 KiB, where headers,
    /// counts and lengths are).
    Huge(u16, u64),
    /// Replace one JSON value (of the file, or of a safetensors header) by a hostile one.
    Json(usize, Value),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0u32..1000).prop_map(Mutation::Truncate),
        prop::collection::vec((0u32..1_000_000, 1u8..=255), 1..8).prop_map(Mutation::Flip),
        (
            0u16..4096,
            prop_oneof![
                Just(u64::MAX),
                Just(1u64 << 40),
                Just(1u64 << 32),
                Just(0xFFFF_FFFF),
                Just(0),
                any::<u64>()
            ]
        )
            .prop_map(|(at, v)| Mutation::Huge(at, v)),
        (any::<usize>(), hostile_value()).prop_map(|(n, v)| Mutation::Json(n, v)),
    ]
}

/// `seed` mutated. JSON edits apply to the file for the JSON targets, to the header of a
/// safetensors file (re-framed with its new length), and fall back to flipping for a GGUF file.
fn apply(target: Target, seed: &[u8], m: &Mutation) -> Vec<u8> {
    let mut data = seed.to_vec();
    match m {
        Mutation::Truncate(f) => data.truncate(data.len() * *f as usize / 1000),
        Mutation::Flip(flips) => {
            for &(at, x) in flips {
                let i = (data.len() as u64 * at as u64 / 1_000_000) as usize;
                if let Some(b) = data.get_mut(i) {
                    *b ^= x;
                }
            }
        }
        Mutation::Huge(at, v) => {
            let at = *at as usize % data.len().saturating_sub(8).max(1);
            if let Some(slot) = data.get_mut(at..at + 8) {
                slot.copy_from_slice(&v.to_le_bytes());
            }
        }
        Mutation::Json(n, with) => match target {
            Target::Config | Target::Index | Target::Tokenizer => {
                let mut v: Value = serde_json::from_slice(&data).unwrap();
                let mut n = n % nodes(&v);
                replace_nth(&mut v, &mut n, with);
                data = serde_json::to_vec(&v).unwrap();
            }
            Target::Safetensors => {
                let len = u64::from_le_bytes(data[..8].try_into().unwrap()) as usize;
                let mut header: Value = serde_json::from_slice(&data[8..8 + len]).unwrap();
                let mut n = n % nodes(&header);
                replace_nth(&mut header, &mut n, with);
                let header = serde_json::to_vec(&header).unwrap();
                let mut out = (header.len() as u64).to_le_bytes().to_vec();
                out.extend_from_slice(&header);
                out.extend_from_slice(&data[8 + len..]);
                data = out;
            }
            Target::Gguf => {
                let i = n % data.len().max(1);
                if let Some(b) = data.get_mut(i) {
                    *b ^= 0x80;
                }
            }
        },
    }
    data
}

fn env_or(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Up to `EMILIO_FUZZ_CASES` mutations of `target`'s seed, for at most `EMILIO_FUZZ_SECS`.
fn mutate(target: Target) {
    let _serial = serial();
    let cases = env_or("EMILIO_FUZZ_CASES", 200) as u32;
    let budget = Duration::from_secs(env_or("EMILIO_FUZZ_SECS", 4));
    let seed = target.seed();
    let started = Instant::now();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 64,
        ..Config::default()
    });
    let result = runner.run(&mutation(), |m| {
        if started.elapsed() > budget {
            return Ok(());
        }
        let data = apply(target, &seed, &m);
        check(target, &data).map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{}: {e}", target.name());
    }
}

#[test]
fn config_json_survives_hostile_mutations() {
    mutate(Target::Config);
}

#[test]
fn safetensors_survives_hostile_mutations() {
    mutate(Target::Safetensors);
}

#[test]
fn index_json_survives_hostile_mutations() {
    mutate(Target::Index);
}

#[test]
fn tokenizer_json_survives_hostile_mutations() {
    mutate(Target::Tokenizer);
}

#[test]
fn gguf_survives_hostile_mutations() {
    mutate(Target::Gguf);
}

/// The seeds are valid files that load, so that mutations start from the whole path.
#[test]
fn the_seeds_load() {
    let _serial = serial();
    for target in Target::ALL {
        if let Err(e) = target.load(&target.seed()) {
            panic!("{}: the seed does not load: {e}", target.name());
        }
    }
}

/// The bound is enforced: a target that allocates past it is reported, not passed.
#[test]
fn the_allocation_bound_catches_a_large_allocation() {
    let _serial = serial();
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    LARGEST.store(0, Ordering::Relaxed);
    // Twice the bound, so that whatever another thread frees meanwhile (the harness ending
    // the previous test) cannot pull the measured peak back under it.
    let v = std::hint::black_box(vec![1u8; 2 * bound(b"")]);
    assert!(LARGEST.load(Ordering::Relaxed) > bound(b""));
    assert!(PEAK.load(Ordering::Relaxed).saturating_sub(base) > bound(b""));
    drop(v);
}
