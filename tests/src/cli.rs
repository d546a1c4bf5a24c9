//! Helpers for the end-to-end tests of the `emilio` binary (`tests/tests/cli_*.rs`).
//!
//! - [`emilio_bin`] builds the binary once per test process (`cargo build --profile test`,
//!   so it reuses the artifacts of the test build) and returns its path.
//! - [`Sandbox`] is a temp directory the commands run in, with an environment that cannot
//!   reach the network: `HF_HOME` inside the sandbox, `HF_HUB_OFFLINE=1`, `HF_ENDPOINT` pointing
//!   at a closed local port (the hub client ignores `HF_HUB_OFFLINE` but honours `HF_ENDPOINT`;
//!   `emilio_tests::fake_hub` points it at a fake hub instead), no proxy, no token, no hub cache
//!   or timeout of the caller's, and no `RUST_BACKTRACE` (so a panic shows its "run with
//!   RUST_BACKTRACE" note, which the error checks look for).
//! - [`Sandbox::run_with_input`] pipes text into a command's stdin (`emilio chat`);
//!   [`run_within`] runs a command under a shorter limit, for one that would hang on a bug.
//! - [`Run`] is a finished command: exit status, stdout, stderr, with assertions that print
//!   all of them on failure ([`Run::ok`], [`Run::fails_with`]).
//! - [`Timing`] parses `generate`'s timing line; [`safetensors_header`] reads a weight
//!   file's header.

use std::ffi::OsStr;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The hub endpoint every command gets: a closed port on the loopback interface, so a hub
/// request fails at once with "connection refused" whether or not the machine has a network.
pub const OFFLINE_ENDPOINT: &str = "http://127.0.0.1:9";

/// Longest one command may run before the test kills it and fails (commands on the `tiny`
/// preset take well under a second; `bench op` takes seconds).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// Environment variables removed from every command: credentials, proxies (a proxy would
/// route hub requests off the machine), a hub cache or timeout of the caller's (the cache must
/// be the sandbox's `HF_HOME`) and backtrace switches.
const REMOVED_ENV: [&str; 15] = [
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_HUB_CACHE",
    "XDG_CACHE_HOME",
    "EMILIO_HUB_TIMEOUT_SECS",
    "RUST_BACKTRACE",
    "RUST_LIB_BACKTRACE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// The workspace root (the parent of this package).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests package lives inside the workspace")
}

/// The `emilio` executable, built on first use in this process.
///
/// Runs `$CARGO build -p emilio-cli --bin emilio --profile test` (the profile `cargo test`
/// builds with, so the dependencies are already compiled) and takes the executable's path
/// from cargo's JSON messages. Concurrent test processes are serialised by cargo's own
/// build-directory lock; within a process the other tests wait for the first build.
/// Panics with cargo's output when the build fails.
pub fn emilio_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(build_emilio)
}

fn build_emilio() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(&cargo)
        .current_dir(workspace_root())
        .args([
            "build",
            "-p",
            "emilio-cli",
            "--bin",
            "emilio",
            "--profile",
            "test",
            "--message-format=json-render-diagnostics",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cargo:?} to build the emilio binary: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        panic!(
            "building the emilio binary failed ({}):\n--- cargo stderr ---\n{stderr}\n\
             --- cargo stdout ---\n{stdout}",
            output.status
        );
    }
    let executable = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact" && msg["target"]["name"] == "emilio")
        .filter_map(|msg| msg["executable"].as_str().map(PathBuf::from))
        .next_back();
    match executable {
        Some(path) if path.is_file() => path,
        Some(path) => panic!("cargo reported {} but it is not a file", path.display()),
        None => panic!(
            "cargo built no `emilio` executable:\n--- cargo stderr ---\n{stderr}\n\
             --- cargo stdout ---\n{stdout}"
        ),
    }
}

/// A temp directory that commands run in, with an offline environment (see the module docs).
pub struct Sandbox {
    dir: tempfile::TempDir,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    /// A fresh, empty sandbox (removed when dropped).
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("emilio-cli-test-")
            .tempdir()
            .expect("creating a temp dir");
        Self { dir }
    }

    /// The sandbox directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `path` inside the sandbox.
    pub fn join(&self, path: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(path)
    }

    /// The `HF_HOME` of every command (the hub cache is its `hub/` folder).
    pub fn hf_home(&self) -> PathBuf {
        self.join("hf-home")
    }

    /// `emilio ARGS`, in the sandbox, with the offline environment; stdin is empty.
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(emilio_bin());
        cmd.args(args)
            .current_dir(self.path())
            .env("HF_HOME", self.hf_home())
            .env("HF_HUB_OFFLINE", "1")
            .env("HF_ENDPOINT", OFFLINE_ENDPOINT)
            .stdin(Stdio::null());
        for var in REMOVED_ENV {
            cmd.env_remove(var);
        }
        cmd
    }

    /// Runs `emilio ARGS` to completion (see [`Sandbox::command`]).
    pub fn run<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(self.command(args))
    }

    /// Runs `emilio ARGS` with `input` on its stdin (see [`Sandbox::command`]).
    pub fn run_with_input<I, S>(&self, args: I, input: &str) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_with_input(self.command(args), input)
    }

    /// `emilio synth --preset tiny --seed SEED --out NAME EXTRA...` in the sandbox; panics
    /// unless it succeeds. Returns the checkpoint directory.
    pub fn synth_tiny(&self, name: &str, seed: u64, extra: &[&str]) -> PathBuf {
        let out = self.join(name);
        let seed = seed.to_string();
        let mut args: Vec<&OsStr> = ["synth", "--preset", "tiny", "--seed", &seed, "--out"]
            .into_iter()
            .map(OsStr::new)
            .collect();
        args.push(out.as_os_str());
        args.extend(extra.iter().map(OsStr::new));
        self.run(args).ok();
        out
    }
}

/// `emilio generate --model MODEL --prompt PROMPT EXTRA...` in `sb`; panics unless it succeeds.
pub fn generate(sb: &Sandbox, model: &Path, prompt: &str, extra: &[&str]) -> Run {
    let mut args = vec![
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        prompt,
    ];
    args.extend_from_slice(extra);
    sb.run(args).ok()
}

/// Runs `cmd` with piped stdout and stderr, killing it (and failing) after
/// [`COMMAND_TIMEOUT`].
pub fn run(cmd: Command) -> Run {
    run_inner(cmd, None, COMMAND_TIMEOUT)
}

/// [`run`], failing after `timeout` instead: for a command that would hang if a bug came back.
pub fn run_within(cmd: Command, timeout: Duration) -> Run {
    run_inner(cmd, None, timeout)
}

/// [`run`], with `input` written to the command's stdin (which is then closed).
pub fn run_with_input(mut cmd: Command, input: &str) -> Run {
    cmd.stdin(Stdio::piped());
    run_inner(cmd, Some(input.to_string()), COMMAND_TIMEOUT)
}

fn run_inner(mut cmd: Command, input: Option<String>, timeout: Duration) -> Run {
    let cmdline = describe(&cmd);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{cmdline}`: {e}"));
    // Written from a thread, so a command that prints before reading all its input cannot
    // deadlock against us; dropping the pipe closes the command's stdin (end of input).
    let writer = input.map(|input| {
        let mut stdin = child.stdin.take().expect("stdin is piped");
        std::thread::spawn(move || {
            let _ = std::io::Write::write_all(&mut stdin, input.as_bytes());
        })
    });
    let stdout = read_in_background(child.stdout.take());
    let stderr = read_in_background(child.stderr.take());
    let status = wait_with_timeout(&mut child, &cmdline, timeout);
    if let Some(writer) = writer {
        writer.join().expect("stdin writer");
    }
    Run {
        cmdline,
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
        elapsed: start.elapsed(),
    }
}

/// Waits for `child`, killing it and panicking after `timeout`.
pub fn wait_with_timeout(child: &mut Child, cmdline: &str, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("`{cmdline}` did not finish within {timeout:?} and was killed");
            }
            Err(e) => panic!("waiting for `{cmdline}`: {e}"),
        }
    }
}

fn read_in_background(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// `emilio arg arg ...` for messages (long arguments shortened).
fn describe(cmd: &Command) -> String {
    let mut s = String::from("emilio");
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        let arg = if arg.chars().count() > 80 {
            format!("{}…", arg.chars().take(80).collect::<String>())
        } else {
            arg.into_owned()
        };
        if arg.is_empty() || arg.contains(char::is_whitespace) {
            s.push_str(&format!(" {arg:?}"));
        } else {
            s.push(' ');
            s.push_str(&arg);
        }
    }
    s
}

/// A finished command.
pub struct Run {
    /// The command line, for messages.
    pub cmdline: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// Wall time from start to exit.
    pub elapsed: Duration,
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let clip = |s: &str| {
            if s.chars().count() > 4000 {
                format!("{}… (clipped)", s.chars().take(4000).collect::<String>())
            } else {
                s.to_string()
            }
        };
        write!(
            f,
            "`{}` ({}, {:.2?})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline,
            self.status,
            self.elapsed,
            clip(&self.stdout),
            clip(&self.stderr)
        )
    }
}

impl fmt::Debug for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Run {
    /// Asserts exit status 0.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert!(self.status.success(), "expected success: {self}");
        self
    }

    /// Asserts a user-facing failure: a non-zero exit status (not a signal, not a panic's
    /// 101), a stderr without a panic message or a backtrace (or the note suggesting
    /// one), and an `error:` line.
    #[track_caller]
    pub fn fails(self) -> Self {
        assert!(!self.status.success(), "expected a failure: {self}");
        let code = self.status.code();
        assert!(
            code.is_some() && code != Some(101),
            "expected a plain error exit (not a panic or a signal): {self}"
        );
        for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
            assert!(
                !self.stderr.contains(bad),
                "stderr contains {bad:?}: {self}"
            );
        }
        assert!(
            self.stderr.contains("error:"),
            "stderr has no `error:` line: {self}"
        );
        self
    }

    /// [`Run::fails`], and stderr contains every one of `needles` (case-insensitively).
    #[track_caller]
    pub fn fails_with(self, needles: &[&str]) -> Self {
        let run = self.fails();
        let stderr = run.stderr.to_lowercase();
        for needle in needles {
            assert!(
                stderr.contains(&needle.to_lowercase()),
                "stderr does not mention {needle:?}: {run}"
            );
        }
        run
    }

    /// stdout parsed as one JSON value.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self}"))
    }

    /// The timing line of `generate` on stderr.
    #[track_caller]
    pub fn timing(&self) -> Timing {
        Timing::find(&self.stderr).unwrap_or_else(|| panic!("no timing line on stderr: {self}"))
    }
}

/// `generate`'s timing line: "BACKEND backend: loaded in Ls; prefill P tokens at R tok/s;
/// decode D tokens at S tok/s".
#[derive(Debug, Clone, PartialEq)]
pub struct Timing {
    /// The line itself.
    pub line: String,
    pub load_secs: f64,
    pub prefill_tokens: usize,
    pub prefill_tok_s: f64,
    pub decode_tokens: usize,
    pub decode_tok_s: f64,
}

impl Timing {
    /// The first line of `stderr` that parses as a timing line.
    pub fn find(stderr: &str) -> Option<Self> {
        stderr.lines().find_map(Self::parse)
    }

    /// Parses one line.
    pub fn parse(line: &str) -> Option<Self> {
        let prefill = &line[line.find("prefill ")?..];
        let decode = &line[line.find("decode ")?..];
        let loaded = &line[line.find("loaded in ")?..];
        Some(Self {
            line: line.to_string(),
            load_secs: number_after(loaded, "loaded in ")?,
            prefill_tokens: number_after(prefill, "prefill ")?
                .to_string()
                .parse()
                .ok()?,
            prefill_tok_s: number_after(prefill, " tokens at ")?,
            decode_tokens: number_after(decode, "decode ")?.to_string().parse().ok()?,
            decode_tok_s: number_after(decode, " tokens at ")?,
        })
    }
}

/// The number right after the first `key` in `s`.
fn number_after(s: &str, key: &str) -> Option<f64> {
    let rest = &s[s.find(key)? + key.len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+')))
        .unwrap_or(rest.len());
    rest[..end].trim_end_matches('.').parse().ok()
}

/// Writes a NaN over the first value of `tensor` (a bf16 tensor, as `emilio synth` writes
/// them) in `model_dir`'s `model.safetensors`.
pub fn poison_with_nan(model_dir: &Path, tensor: &str) {
    let weights = model_dir.join("model.safetensors");
    let header = safetensors_header(&weights);
    let mut bytes = std::fs::read(&weights).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    let info = &header[tensor];
    assert_eq!(info["dtype"], "BF16", "{info}");
    let start = 8 + header_len as usize + info["data_offsets"][0].as_u64().unwrap() as usize;
    bytes[start..start + 2].copy_from_slice(&0x7fc0u16.to_le_bytes()); // a bf16 NaN
    std::fs::write(&weights, bytes).unwrap();
}

/// The JSON header of a safetensors file: tensor name → `{dtype, shape, data_offsets}`
/// (plus `__metadata__` when present).
pub fn safetensors_header(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.len() >= 8,
        "{} is shorter than 8 bytes",
        path.display()
    );
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = bytes
        .get(8..8 + len)
        .unwrap_or_else(|| panic!("{}: header of {len} bytes is truncated", path.display()));
    serde_json::from_slice(header)
        .unwrap_or_else(|e| panic!("{}: header is not JSON: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_lines_parse() {
        let t = Timing::parse(
            "emilio (f32) backend: loaded in 0.01s; prefill 77 tokens at 1729.2 tok/s; \
             decode 11 tokens at 448.2 tok/s",
        )
        .unwrap();
        assert_eq!(t.load_secs, 0.01);
        assert_eq!((t.prefill_tokens, t.decode_tokens), (77, 11));
        assert_eq!((t.prefill_tok_s, t.decode_tok_s), (1729.2, 448.2));
        assert!(Timing::parse("note: --max-tokens 256 lowered to 57").is_none());
    }
}
