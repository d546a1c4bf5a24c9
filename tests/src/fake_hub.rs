//! A fake of the Hugging Face hub's file endpoints on 127.0.0.1, for the CLI's hub tests
//! (`tests/tests/cli_hub.rs`): a `std::net::TcpListener` on port 0 and a thread per connection.
//!
//! It answers what the hub answers to `HEAD` and `GET` of `/{repo}/resolve/{revision}/{file}`
//! (any revision is the repository's one commit):
//! - a plain file: `200`, `x-repo-commit`, `etag` (a quoted hash) and `content-length`;
//! - an LFS file (`*.safetensors`, `*.gguf`): `302` to `/cdn/N` on the same server (the hub
//!   redirects to its CDN), with `x-repo-commit`, `x-linked-etag` (the quoted sha256 of the
//!   body, as the hub sends it), `x-linked-size` and `etag`; `GET /cdn/N` serves the body;
//! - a missing file: `404` with `x-error-code: EntryNotFound` (and `x-repo-commit`); a missing
//!   repository: `404` with `x-error-code: RepoNotFound`.
//!
//! Each answer has `Connection: close`. A `GET` with `Range: bytes=A-` or `bytes=A-B` gets `206`
//! and `Content-Range` (hf-hub 0.4 reads a file's size from the `Content-Range` of a one-byte
//! `GET` and downloads with `bytes=0-`), so that the same tests run against either client. A [`Fault`] per file breaks one thing (a status, a cut or stalled body, a
//! hostile header), and every request is logged ([`FakeHub::requests`]) so that tests can check
//! what was (not) fetched. [`FakeHub::run`] runs `emilio` in a [`Sandbox`] against it.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::cli::{run, Run, Sandbox};

/// The timeout every command run by [`FakeHub::run`] gets (`EMILIO_HUB_TIMEOUT_SECS`): short,
/// so that a stalled answer fails a test in seconds, long enough for a loaded CI machine.
pub const TEST_TIMEOUT_SECS: &str = "2";

/// What one file's answers get wrong.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Fault {
    /// Nothing.
    #[default]
    None,
    /// `HEAD` and `GET` answer this status, with this `x-error-code` (when not empty).
    Status(u16, &'static str),
    /// The metadata is right; the body's `GET` answers this status.
    BodyStatus(u16),
    /// The body's `GET` announces the whole length but sends only this many bytes, then closes.
    Truncate(usize),
    /// The body's `GET` sends this many bytes, then nothing, keeping the connection open.
    StallBody(usize),
    /// `HEAD` gets no answer at all (the connection stays open).
    StallHead,
    /// The file's etag header (`x-linked-etag` for an LFS file, else `etag`) has this value.
    Etag(String),
    /// `x-repo-commit` has this value.
    Commit(String),
    /// `x-repo-commit` is absent.
    NoCommit,
}

/// One logged request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// `HEAD` or `GET`.
    pub method: String,
    /// The path, as sent (percent-encoded).
    pub path: String,
}

#[derive(Clone)]
struct FakeFile {
    body: Vec<u8>,
    lfs: bool,
    fault: Fault,
}

struct FakeRepo {
    commit: String,
    files: BTreeMap<String, FakeFile>,
}

#[derive(Default)]
struct State {
    repos: HashMap<String, FakeRepo>,
    /// `/cdn/N` → (repository, file).
    cdn: Vec<(String, String)>,
    log: Vec<Request>,
}

/// The running fake; stops accepting when dropped.
pub struct FakeHub {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Default for FakeHub {
    fn default() -> Self {
        Self::start()
    }
}

impl FakeHub {
    /// Listens on 127.0.0.1, on a port the system picks.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let addr = listener.local_addr().expect("the listener's address");
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (state, stop) = (state.clone(), stop.clone());
                    std::thread::spawn(move || serve(stream, addr, &state, &stop));
                }
            })
        };
        Self {
            addr,
            state,
            stop,
            accept: Some(accept),
        }
    }

    /// `http://127.0.0.1:PORT`, the `HF_ENDPOINT` of the commands.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serves every file of `dir` as repository `id` (`*.safetensors` and `*.gguf` as LFS
    /// files), at a commit derived from `id`, which it returns.
    pub fn add_repo(&self, id: &str, dir: &Path) -> String {
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("a directory entry").path();
            if !path.is_file() {
                continue;
            }
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let lfs = name.ends_with(".safetensors") || name.ends_with(".gguf");
            let body = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            files.insert(
                name,
                FakeFile {
                    body,
                    lfs,
                    fault: Fault::None,
                },
            );
        }
        let commit = sha256_hex(id.as_bytes())[..40].to_string();
        let repo = FakeRepo {
            commit: commit.clone(),
            files,
        };
        self.lock().repos.insert(id.to_string(), repo);
        commit
    }

    /// Makes `file` of `id` answer with `fault` from now on.
    pub fn set_fault(&self, id: &str, file: &str, fault: Fault) {
        let mut state = self.lock();
        let f = state
            .repos
            .get_mut(id)
            .and_then(|r| r.files.get_mut(file))
            .unwrap_or_else(|| panic!("the fake hub has no {file} in {id}"));
        f.fault = fault;
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.lock().log.clone()
    }

    /// How many `method` requests named `file` (by the end of their path) so far. A `GET` of an
    /// LFS file counts once for the resolve URL and once for its `/cdn/N` (logged as
    /// `/cdn/N:FILE`).
    pub fn count(&self, method: &str, file: &str) -> usize {
        let suffix = format!("/{file}");
        let cdn_suffix = format!(":{file}");
        self.lock()
            .log
            .iter()
            .filter(|r| r.method == method)
            .filter(|r| r.path.ends_with(&suffix) || r.path.ends_with(&cdn_suffix))
            .count()
    }

    /// `emilio ARGS` in `sb` against this hub, with a short [`TEST_TIMEOUT_SECS`].
    pub fn command<I, S>(&self, sb: &Sandbox, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = sb.command(args);
        cmd.env("HF_ENDPOINT", self.url())
            .env("EMILIO_HUB_TIMEOUT_SECS", TEST_TIMEOUT_SECS);
        cmd
    }

    /// Runs [`FakeHub::command`] to completion.
    pub fn run<I, S>(&self, sb: &Sandbox, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(self.command(sb, args))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// The lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What to send back.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    /// The body of a `GET` (a `HEAD` gets none), and how it goes wrong.
    body: Vec<u8>,
    /// Announced length when it is not the body's.
    content_length: Option<usize>,
    cut: Option<usize>,
    stall_after: Option<usize>,
    /// No answer at all.
    silent: bool,
}

impl Answer {
    fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            content_length: None,
            cut: None,
            stall_after: None,
            silent: false,
        }
    }

    fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }
}

fn serve(mut stream: TcpStream, addr: SocketAddr, state: &Mutex<State>, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let Some((method, path, range)) = read_request(&mut stream) else {
        return;
    };
    let mut answer = answer(
        &mut state.lock().unwrap_or_else(|e| e.into_inner()),
        &method,
        &path,
        addr,
    );
    if let (Some((start, end)), 200, "GET") = (range, answer.status, method.as_str()) {
        answer = ranged(answer, start, end);
    }
    if answer.silent {
        stall(stop);
        return;
    }
    let reason = match answer.status {
        200 => "OK",
        206 => "Partial Content",
        416 => "Range Not Satisfiable",
        302 => "Found",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let mut head = format!("HTTP/1.1 {} {reason}\r\n", answer.status);
    for (name, value) in &answer.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let length = answer.content_length.unwrap_or(answer.body.len());
    head.push_str(&format!(
        "Content-Length: {length}\r\nConnection: close\r\n\r\n"
    ));
    if stream.write_all(head.as_bytes()).is_err() || method == "HEAD" {
        return;
    }
    let send = answer
        .cut
        .or(answer.stall_after)
        .unwrap_or(answer.body.len())
        .min(answer.body.len());
    let _ = stream.write_all(&answer.body[..send]);
    let _ = stream.flush();
    if answer.stall_after.is_some() {
        stall(stop);
    }
}

/// Holds the connection open, sending nothing, until the hub stops (or a minute passes).
fn stall(stop: &AtomicBool) {
    let start = Instant::now();
    while !stop.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `answer` cut to bytes `start..=end` of its body: `206` with `Content-Range`, its fault (a
/// cut, a stall) applied within the range.
fn ranged(mut answer: Answer, start: usize, end: Option<usize>) -> Answer {
    let total = answer.body.len();
    let end = end
        .unwrap_or(total.saturating_sub(1))
        .min(total.saturating_sub(1));
    if start >= total || start > end {
        return Answer::new(416).header("Content-Range", format!("bytes */{total}"));
    }
    answer.status = 206;
    answer.body = answer.body[start..=end].to_vec();
    answer.content_length = None;
    answer.header("Content-Range", format!("bytes {start}-{end}/{total}"))
}

/// The method, path and `Range` (`bytes=A-` or `bytes=A-B`) of one request.
type RequestLine = (String, String, Option<(usize, Option<usize>)>);

/// The method, path and byte range of one request (its other headers read and ignored).
fn read_request(stream: &mut TcpStream) -> Option<RequestLine> {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    while !bytes.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 || bytes.len() > 64 * 1024 {
            return None;
        }
        bytes.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut lines = text.lines();
    let mut parts = lines.next()?.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let range = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        if !name.trim().eq_ignore_ascii_case("range") {
            return None;
        }
        let (start, end) = value.trim().strip_prefix("bytes=")?.split_once('-')?;
        let end = match end.trim() {
            "" => None,
            e => Some(e.parse().ok()?),
        };
        Some((start.trim().parse().ok()?, end))
    });
    Some((method, path, range))
}

fn answer(state: &mut State, method: &str, path: &str, addr: SocketAddr) -> Answer {
    if let Some(n) = path.strip_prefix("/cdn/") {
        let (repo, file) = match n.parse::<usize>().ok().and_then(|n| state.cdn.get(n)) {
            Some(entry) => entry.clone(),
            None => return Answer::new(404),
        };
        state.log.push(Request {
            method: method.to_string(),
            path: format!("{path}:{file}"),
        });
        let f = state.repos[&repo].files[&file].clone();
        return body(&f);
    }
    state.log.push(Request {
        method: method.to_string(),
        path: path.to_string(),
    });
    let Some((repo_id, rest)) = path.trim_start_matches('/').split_once("/resolve/") else {
        return Answer::new(404);
    };
    let Some((_revision, file)) = rest.split_once('/') else {
        return Answer::new(404);
    };
    let file = percent_decode(file);
    let Some(repo) = state.repos.get(repo_id) else {
        return Answer::new(404)
            .header("x-error-code", "RepoNotFound")
            .header("x-error-message", "Repository not found");
    };
    let commit = repo.commit.clone();
    let Some(f) = repo.files.get(&file).cloned() else {
        return Answer::new(404)
            .header("x-repo-commit", commit)
            .header("x-error-code", "EntryNotFound")
            .header("x-error-message", "Entry not found");
    };
    match &f.fault {
        Fault::Status(code, error_code) => {
            let a = Answer::new(*code);
            return if error_code.is_empty() {
                a
            } else {
                a.header("x-error-code", *error_code)
            };
        }
        Fault::StallHead if method == "HEAD" => {
            let mut a = Answer::new(200);
            a.silent = true;
            return a;
        }
        _ => {}
    }
    let sha = sha256_hex(&f.body);
    let mut a = if f.lfs {
        let n = state.cdn.len();
        state.cdn.push((repo_id.to_string(), file.clone()));
        let etag = match &f.fault {
            Fault::Etag(e) => e.clone(),
            _ => format!("\"{sha}\""),
        };
        Answer::new(302)
            .header("location", format!("http://{addr}/cdn/{n}"))
            .header("x-linked-etag", etag)
            .header("x-linked-size", f.body.len().to_string())
            .header("etag", format!("\"{}\"", &sha[..40]))
    } else {
        let etag = match &f.fault {
            Fault::Etag(e) => e.clone(),
            _ => format!("\"{}\"", &sha[..40]),
        };
        let a = if method == "HEAD" {
            let mut a = Answer::new(200);
            a.content_length = Some(f.body.len());
            a
        } else {
            body(&f)
        };
        a.header("etag", etag)
    };
    match &f.fault {
        Fault::Commit(c) => a = a.header("x-repo-commit", c.clone()),
        Fault::NoCommit => {}
        _ => a = a.header("x-repo-commit", commit),
    }
    a
}

/// A `GET` of a file's bytes, with its body fault.
fn body(f: &FakeFile) -> Answer {
    let mut a = match f.fault {
        Fault::BodyStatus(code) => return Answer::new(code),
        _ => Answer::new(200),
    };
    a.body = f.body.clone();
    match f.fault {
        Fault::Truncate(n) => {
            a.content_length = Some(f.body.len());
            a.cut = Some(n);
        }
        Fault::StallBody(n) => {
            a.content_length = Some(f.body.len());
            a.stall_after = Some(n);
        }
        _ => {}
    }
    a
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
