//! The Hugging Face hub client: files of a model repository, downloaded into the cache that
//! hf-hub and Python's `huggingface_hub` share, and checked before anything is stored.
//!
//! The cache is `HF_HUB_CACHE`, else `HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
//! `~/.cache/huggingface/hub` (`huggingface_hub`'s order; hf-hub reads `HF_HOME/hub`). Its layout:
//!
//! ```text
//! models--OWNER--NAME/
//!   refs/REVISION            the commit the revision resolved to
//!   blobs/ETAG               a file's bytes, named by the hub's etag (for LFS files, the sha256)
//!   snapshots/COMMIT/FILE    a relative symbolic link to ../../blobs/ETAG
//!   .no_exist/COMMIT/FILE    an empty marker: the hub said that commit has no such file
//! ```
//!
//! A file in the snapshot of the revision's ref is used without a network. Otherwise a `HEAD`
//! request of `ENDPOINT/REPO/resolve/REVISION/FILE` (redirects not followed, except the hub's
//! relative ones) gives the commit (`x-repo-commit`), the etag (`x-linked-etag` for LFS files,
//! else `etag`) and the size (`x-linked-size`, else `content-length`); a `GET` of the same URL,
//! following redirects to the CDN, streams the body into a temporary file in `blobs/`, which is
//! renamed to its etag only once its size is the announced one and, when the etag is a sha256,
//! its sha256 matches. Once a file fixed the commit, the others are requested at that commit, so
//! one run's files are of one snapshot even if the branch moves meanwhile.
//!
//! Why not hf-hub 0.4's `ApiRepo::get`, which this replaces: it joins the server's `etag` and
//! `x-repo-commit` into cache paths unchecked (`../` writes outside the cache, or panics after
//! creating directories outside it), stores a body shorter than announced as the blob and uses
//! it from then on, has no timeouts (a stalled server hangs the command), and reports 403, 500,
//! an unwritable cache and a missing header alike, without the URL. It offers no hook between
//! reading the metadata and writing the file, so checks cannot be wrapped around it; a newer
//! hf-hub is not in this workspace's lock file. ureq, which hf-hub used, does the HTTP.
//!
//! Every request has [`TIMEOUT_ENV`] seconds ([`DEFAULT_TIMEOUT`] unless set) to connect and
//! for each read: a server that stops sending fails the command instead of hanging it.

use std::cell::OnceCell;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

/// Seconds every hub request may wait to connect, and for each read of a response.
pub const TIMEOUT_ENV: &str = "EMILIO_HUB_TIMEOUT_SECS";
/// The timeout without [`TIMEOUT_ENV`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The hub without `HF_ENDPOINT`.
const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// Relative redirects followed by a metadata request (the hub sends them for renamed repos).
const MAX_REDIRECTS: usize = 5;

/// What to do when the hub cannot be reached at all.
const OFFLINE_HINT: &str = "Without a network, make an offline checkpoint with `emilio synth \
                            --preset qwen2.5-0.5b --out DIR` and pass --model DIR, or use a \
                            local copy of the model";

/// The hub endpoint, the cache and the credentials, from the environment.
pub struct Hub {
    /// `HF_ENDPOINT` without a trailing `/`.
    endpoint: String,
    /// The hub cache directory (holding `models--OWNER--NAME`).
    cache: PathBuf,
    token: Option<String>,
    timeout: Duration,
    /// For metadata: no redirects, so the hub's own headers are read even when it redirects
    /// an LFS file to its CDN.
    metadata_agent: ureq::Agent,
    /// For bodies: follows redirects, keeping `Authorization` only on the same host.
    download_agent: ureq::Agent,
}

impl Hub {
    /// `HF_ENDPOINT`, the cache (module docs), `HF_TOKEN` (else the `token` file in `HF_HOME`,
    /// where `huggingface-cli login` writes it) and [`TIMEOUT_ENV`].
    pub fn from_env() -> Result<Self> {
        let endpoint = match std::env::var("HF_ENDPOINT") {
            Ok(e) if !e.trim().is_empty() => e.trim().trim_end_matches('/').to_string(),
            _ => DEFAULT_ENDPOINT.to_string(),
        };
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            bail!("HF_ENDPOINT={endpoint} is not an http:// or https:// URL; fix or unset it")
        }
        let timeout = timeout_from_env()?;
        let home = hf_home()?;
        let cache = match std::env::var_os("HF_HUB_CACHE") {
            Some(c) if !c.is_empty() => PathBuf::from(c),
            _ => home.join("hub"),
        };
        let token = match std::env::var("HF_TOKEN") {
            Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
            _ => std::fs::read_to_string(home.join("token"))
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty()),
        };
        let agent = |redirects: u32| {
            ureq::AgentBuilder::new()
                .try_proxy_from_env(true)
                .timeout_connect(timeout)
                .timeout_read(timeout)
                .timeout_write(timeout)
                .redirects(redirects)
                .redirect_auth_headers(ureq::RedirectAuthHeaders::SameHost)
                .user_agent(concat!("emilio/", env!("CARGO_PKG_VERSION")))
                .build()
        };
        Ok(Self {
            endpoint,
            cache,
            token,
            timeout,
            metadata_agent: agent(0),
            download_agent: agent(10),
        })
    }

    /// The repository `id` (`owner/name`) at `revision` (a branch, tag or commit).
    pub fn repo(&self, id: &str, revision: &str) -> Result<Repo<'_>> {
        if !is_relative_path(revision) {
            bail!(
                "--revision {revision:?} is not a branch, tag or commit name (empty parts, `.`, \
                 `..`, backslashes and control characters are refused)"
            )
        }
        let dir = self
            .cache
            .join(format!("models--{}", id.replace('/', "--")));
        let commit = OnceCell::new();
        if is_commit(revision) {
            let _ = commit.set(revision.to_string());
        }
        Ok(Repo {
            hub: self,
            id: id.to_string(),
            revision: revision.to_string(),
            dir,
            commit,
        })
    }

    /// A request to `url` with the token, when `url` is on the endpoint's own host.
    fn request(&self, agent: &ureq::Agent, method: &str, url: &str) -> ureq::Request {
        // No compression: the body must be the bytes whose size and sha256 the hub names.
        let mut request = agent
            .request(method, url)
            .set("Accept-Encoding", "identity");
        if let Some(token) = &self.token {
            if origin(url) == origin(&self.endpoint) {
                request = request.set("Authorization", &format!("Bearer {token}"));
            }
        }
        request
    }

    /// The message of a request that failed without an HTTP status, naming the URL.
    fn transport_error(&self, url: &str, e: &ureq::Transport) -> anyhow::Error {
        if is_timeout(e) {
            return anyhow!(
                "{url} did not answer within {}s: the hub or the network stalled. {}",
                self.timeout.as_secs_f64(),
                timeout_advice()
            );
        }
        // ureq's own text starts with the URL again.
        let mut detail = e.kind().to_string();
        if let Some(message) = e.message() {
            detail.push_str(&format!(": {message}"));
        }
        if let Some(source) = std::error::Error::source(e) {
            detail.push_str(&format!(": {source}"));
        }
        anyhow!("cannot reach the Hugging Face hub at {url} ({detail}). {OFFLINE_HINT}")
    }
}

/// What to do about a timeout.
fn timeout_advice() -> String {
    format!(
        "Try again, or allow a slower server more time with {TIMEOUT_ENV}=SECONDS ({}s by \
         default)",
        DEFAULT_TIMEOUT.as_secs()
    )
}

/// One repository of the hub at one revision, with its part of the cache.
pub struct Repo<'h> {
    hub: &'h Hub,
    id: String,
    revision: String,
    /// `CACHE/models--OWNER--NAME`.
    dir: PathBuf,
    /// The commit every file comes from, once the revision's ref or a response fixed it.
    commit: OnceCell<String>,
}

/// A file's metadata, from the hub's answer to `HEAD`.
struct Metadata {
    /// The resolve URL (after the hub's relative redirects): what the body is fetched from.
    url: String,
    commit: String,
    /// The etag, unquoted: the blob's file name.
    etag: String,
    /// Which header gave the etag, for messages.
    etag_header: &'static str,
    size: u64,
    size_header: &'static str,
}

impl Repo<'_> {
    /// `ID@REVISION`, for messages.
    pub fn label(&self) -> String {
        format!("{}@{}", self.id, self.revision)
    }

    /// The local path of `file` of the repository: from the cache, else downloaded (and
    /// checked) into it. `None` when the repository has no such file: the hub answered 404 for
    /// the file itself (not for the repository or the revision), now or in an earlier run.
    pub fn get(&self, file: &str) -> Result<Option<PathBuf>> {
        if !is_relative_path(file) {
            bail!("{file:?} is not a file name of a hub repository")
        }
        if let Some(path) = self.cached(file)? {
            return Ok(Some(path));
        }
        if let Some(commit) = self.cached_commit()? {
            if self.dir.join(".no_exist").join(&commit).join(file).exists() {
                return Ok(None);
            }
        }
        let Some(meta) = self.metadata(file)? else {
            return Ok(None);
        };
        self.download(file, &meta).map(Some)
    }

    /// [`Repo::get`], with a missing file an error naming the URL.
    pub fn require(&self, file: &str) -> Result<PathBuf> {
        self.get(file)?.ok_or_else(|| {
            anyhow!(
                "{} (revision {}) has no {file}: {} answered 404 Not Found. Check the model ID \
                 and --revision, or pass a local checkpoint directory",
                self.id,
                self.revision,
                self.url(file)
            )
        })
    }

    /// `file` in the cached snapshot of the revision, without a network; `None` when it is not
    /// there.
    pub fn cached(&self, file: &str) -> Result<Option<PathBuf>> {
        let Some(commit) = self.cached_commit()? else {
            return Ok(None);
        };
        let path = self.dir.join("snapshots").join(commit).join(file);
        Ok(emilio_qwen::files::regular_file_exists(&path)?.then_some(path))
    }

    /// The commit the cache (or this run) resolved the revision to.
    fn cached_commit(&self) -> Result<Option<String>> {
        if let Some(commit) = self.commit.get() {
            return Ok(Some(commit.clone()));
        }
        let ref_path = self.dir.join("refs").join(&self.revision);
        let text = match std::fs::read_to_string(&ref_path) {
            Ok(text) => text,
            Err(_) => return Ok(None),
        };
        let commit = text.trim();
        if !is_commit(commit) {
            bail!(
                "the hub cache's ref {} holds {commit:?}, not a commit hash; delete it (the next \
                 download writes it again)",
                ref_path.display()
            )
        }
        let _ = self.commit.set(commit.to_string());
        Ok(Some(commit.to_string()))
    }

    /// `ENDPOINT/REPO/resolve/REVISION/FILE`, at the fixed commit once there is one.
    fn url(&self, file: &str) -> String {
        let revision = self.commit.get().unwrap_or(&self.revision);
        let file = file
            .split('/')
            .map(percent_encode)
            .collect::<Vec<_>>()
            .join("/");
        format!(
            "{}/{}/resolve/{}/{file}",
            self.hub.endpoint,
            self.id,
            percent_encode(revision)
        )
    }

    /// The hub's metadata of `file` (`HEAD`); `None` for a 404 of the file itself.
    fn metadata(&self, file: &str) -> Result<Option<Metadata>> {
        let mut url = self.url(file);
        let mut hops = 0;
        let response = loop {
            let request = self.hub.request(&self.hub.metadata_agent, "HEAD", &url);
            match request.call() {
                Ok(r) if (300..400).contains(&r.status()) => {
                    let location = r.header("location").unwrap_or("");
                    if location.starts_with('/') && !location.starts_with("//") {
                        hops += 1;
                        if hops > MAX_REDIRECTS {
                            bail!("{url}: more than {MAX_REDIRECTS} redirects; is HF_ENDPOINT a Hugging Face hub?")
                        }
                        url = format!("{}{location}", origin(&url));
                        continue;
                    }
                    if location.is_empty() {
                        bail!(
                            "{url} answered {} without a Location header; is HF_ENDPOINT ({}) a \
                             Hugging Face hub?",
                            r.status(),
                            self.hub.endpoint
                        )
                    }
                    break r; // an LFS file on the CDN: the hub's headers are on this answer
                }
                Ok(r) if (200..300).contains(&r.status()) => break r,
                Ok(r) => bail!(
                    "{url} answered {} {}, which a hub never sends",
                    r.status(),
                    r.status_text()
                ),
                Err(ureq::Error::Status(404, r)) if is_missing_file(&r) => {
                    self.remember_missing(file, r.header("x-repo-commit"));
                    return Ok(None);
                }
                Err(ureq::Error::Status(code, r)) => {
                    return Err(self.status_error(&url, file, code, &r, "asking for"))
                }
                Err(ureq::Error::Transport(t)) => return Err(self.hub.transport_error(&url, &t)),
            }
        };
        let header = |name: &'static str| {
            response
                .header(name)
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let missing = |name: &str| {
            anyhow!(
                "{url} answered without an {name} header, so {file} cannot be stored in the hub \
                 cache; is HF_ENDPOINT ({}) a Hugging Face hub (or a proxy that drops headers)?",
                self.hub.endpoint
            )
        };
        let commit = header("x-repo-commit").ok_or_else(|| missing("x-repo-commit"))?;
        if !is_commit(commit) {
            bail!(
                "{url} answered x-repo-commit {commit:?}, which is not a commit hash (40 hex \
                 digits); refusing to use it as a cache path. Is HF_ENDPOINT ({}) a Hugging Face \
                 hub?",
                self.hub.endpoint
            )
        }
        if let Some(fixed) = self.commit.get() {
            if fixed != commit {
                bail!(
                    "{url} answered for commit {commit}, but the other files of {} come from \
                     commit {fixed}; try again (the revision may have moved)",
                    self.label()
                )
            }
        }
        let (etag_header, raw_etag) = match header("x-linked-etag") {
            Some(e) => ("x-linked-etag", e),
            None => ("etag", header("etag").ok_or_else(|| missing("etag"))?),
        };
        let etag = normalize_etag(raw_etag);
        if !is_safe_etag(&etag) {
            bail!(
                "{url} answered {etag_header} {raw_etag:?}, which is not a plain hash; refusing \
                 to use it as a cache file name. Is HF_ENDPOINT ({}) a Hugging Face hub?",
                self.hub.endpoint
            )
        }
        let (size_header, raw_size) = match header("x-linked-size") {
            Some(s) => ("x-linked-size", s),
            None if (200..300).contains(&response.status()) => (
                "content-length",
                header("content-length").ok_or_else(|| missing("content-length"))?,
            ),
            None => return Err(missing("x-linked-size")),
        };
        let size = raw_size.parse::<u64>().map_err(|_| {
            anyhow!("{url} answered {size_header} {raw_size:?}, which is not a size in bytes")
        })?;
        let _ = self.commit.set(commit.to_string());
        Ok(Some(Metadata {
            url,
            commit: commit.to_string(),
            etag,
            etag_header,
            size,
            size_header,
        }))
    }

    /// Notes in the cache that `commit` has no `file`, so later runs need no request for it.
    fn remember_missing(&self, file: &str, commit: Option<&str>) {
        let commit = commit
            .map(str::trim)
            .filter(|c| is_commit(c))
            .map(str::to_string)
            .or_else(|| self.commit.get().cloned());
        if let Some(commit) = commit {
            let marker = self.dir.join(".no_exist").join(commit).join(file);
            // Only an optimisation: without the marker the next run asks again.
            if let Some(parent) = marker.parent() {
                if std::fs::create_dir_all(parent).is_ok() {
                    let _ = File::create(&marker);
                }
            }
        }
    }

    /// Makes `file` of `meta` present in the cache and returns its snapshot path.
    fn download(&self, file: &str, meta: &Metadata) -> Result<PathBuf> {
        let blobs = self.dir.join("blobs");
        create_cache_dir(&blobs)?;
        let blob = blobs.join(&meta.etag);
        match std::fs::metadata(&blob) {
            Ok(m) if m.is_file() && m.len() == meta.size => {} // the same bytes, another revision
            Ok(m) => {
                eprintln!(
                    "note: removing {} from the hub cache: {} bytes, but {file} has {} ({})",
                    blob.display(),
                    m.len(),
                    meta.size,
                    meta.url
                );
                std::fs::remove_file(&blob)
                    .with_context(|| format!("cannot remove {}", blob.display()))?;
                self.fetch_blob(file, meta, &blob)?;
            }
            Err(_) => self.fetch_blob(file, meta, &blob)?,
        }
        let pointer = self.dir.join("snapshots").join(&meta.commit).join(file);
        if let Some(parent) = pointer.parent() {
            create_cache_dir(parent)?;
        }
        link_blob(&blob, &meta.etag, file, &pointer)?;
        if self.revision != meta.commit {
            let ref_path = self.dir.join("refs").join(&self.revision);
            if let Some(parent) = ref_path.parent() {
                create_cache_dir(parent)?;
            }
            std::fs::write(&ref_path, &meta.commit).with_context(|| {
                format!(
                    "cannot write {} in the hub cache; set HF_HOME (or HF_HUB_CACHE) to a \
                     writable directory",
                    ref_path.display()
                )
            })?;
        }
        Ok(pointer)
    }

    /// Streams the body into a temporary file beside `blob` and renames it to `blob` once it
    /// checks out; a body that does not is removed, never stored.
    fn fetch_blob(&self, file: &str, meta: &Metadata, blob: &Path) -> Result<()> {
        let name = format!("{}.{}.incomplete", meta.etag, std::process::id());
        let tmp = blob.with_file_name(name);
        let result = self.stream_into(file, meta, &tmp);
        let result = result.and_then(|()| {
            std::fs::rename(&tmp, blob)
                .with_context(|| format!("cannot move {} to {}", tmp.display(), blob.display()))
        });
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    fn stream_into(&self, file: &str, meta: &Metadata, tmp: &Path) -> Result<()> {
        let url = &meta.url;
        let request = self.hub.request(&self.hub.download_agent, "GET", url);
        let response = match request.call() {
            Ok(r) => r,
            Err(ureq::Error::Status(code, r)) => {
                let at = r.get_url().to_string();
                return Err(self.status_error(&at, file, code, &r, "downloading"));
            }
            Err(ureq::Error::Transport(t)) => return Err(self.hub.transport_error(url, &t)),
        };
        if response.status() != 200 {
            bail!(
                "downloading {file}: {} answered {} {} instead of the file",
                response.get_url(),
                response.status(),
                response.status_text()
            )
        }
        if let Some(length) = response.header("content-length") {
            if length.trim().parse::<u64>().ok() != Some(meta.size) {
                bail!(
                    "downloading {file}: {} announces {length} bytes, but the hub said {} (its \
                     {}); nothing was stored. Try again; if it persists, the server or a proxy \
                     serves a different file",
                    response.get_url(),
                    meta.size,
                    meta.size_header
                )
            }
        }
        let mut out = File::create(tmp).with_context(|| {
            format!(
                "cannot create {} in the hub cache; set HF_HOME (or HF_HUB_CACHE) to a writable \
                 directory",
                tmp.display()
            )
        })?;
        let mut progress = Progress::new(file, &self.id, meta.size);
        let mut reader = response.into_reader();
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut received = 0u64;
        const CUT: &str = "Try again; if it persists, the server or a proxy is cutting the \
                           transfer";
        let removed = |what: String, advice: &str| {
            anyhow!(
                "{what}; {} was removed from the hub cache and nothing was stored. {advice}",
                tmp.display()
            )
        };
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if is_timeout_io(&e) => {
                    progress.abandon();
                    let stalled = format!(
                        "{url} sent nothing for {}s after {received} of the {} bytes of {file}: \
                         the hub or the network stalled",
                        self.hub.timeout.as_secs_f64(),
                        meta.size
                    );
                    return Err(removed(stalled, &timeout_advice()));
                }
                Err(e) => {
                    progress.abandon();
                    return Err(removed(
                        format!(
                            "downloading {file} from {url} failed after {received} of {} bytes \
                             ({e})",
                            meta.size
                        ),
                        CUT,
                    ));
                }
            };
            received += n as u64;
            if received > meta.size {
                progress.abandon();
                return Err(removed(
                    format!(
                        "{url} sent more than the {} bytes of {file} the hub announced (its {})",
                        meta.size, meta.size_header
                    ),
                    "Try again; if it persists, the server or a proxy is serving a different file",
                ));
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            progress.update(received);
        }
        progress.finish();
        if received != meta.size {
            return Err(removed(
                format!(
                    "{url} ended after {received} of the {} bytes of {file} the hub announced \
                     (its {})",
                    meta.size, meta.size_header
                ),
                CUT,
            ));
        }
        out.sync_all()
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        drop(out);
        if is_sha256(&meta.etag) {
            let got = emilio_qwen::files::hex(&hasher.finalize());
            if got != meta.etag.to_ascii_lowercase() {
                return Err(removed(
                    format!(
                        "{file} from {url} has sha256 {got}, but the hub names {} (its {}): the \
                         download is corrupt",
                        meta.etag, meta.etag_header
                    ),
                    "Try again; if it persists, the server or a proxy is serving a corrupt file",
                ));
            }
        }
        Ok(())
    }

    /// The message of an HTTP error status, naming the URL and what to do.
    fn status_error(
        &self,
        url: &str,
        file: &str,
        code: u16,
        response: &ureq::Response,
        doing: &str,
    ) -> anyhow::Error {
        let id = &self.id;
        let error_code = response.header("x-error-code").unwrap_or("");
        let detail = match response.header("x-error-message") {
            Some(m) if !m.trim().is_empty() => format!(": {}", m.trim()),
            _ => String::new(),
        };
        let status = format!("{url} answered {code} {}{detail}", response.status_text());
        match (code, error_code) {
            (401 | 404, "RepoNotFound") | (401, _) => anyhow!(
                "{doing} {file} of {id}: {status}. There is no model {id} on the hub, or it is \
                 private or gated: check the model ID, and set HF_TOKEN to a token with access"
            ),
            (404, "RevisionNotFound") => anyhow!(
                "{doing} {file} of {id}: {status}. {id} has no revision {}: check --revision",
                self.revision
            ),
            (403, _) => anyhow!(
                "{doing} {file} of {id}: {status}. Access is refused: for a gated model, accept \
                 its conditions on the model's page on the hub, then set HF_TOKEN to a token of \
                 that account"
            ),
            (404, _) => anyhow!(
                "{doing} {file} of {id}: {status}, although the hub had listed it. Try again"
            ),
            (429, _) => anyhow!(
                "{doing} {file} of {id}: {status}. The hub limits requests: wait a few minutes, \
                 or set HF_TOKEN (logged-in users have higher limits)"
            ),
            (500..=599, _) => anyhow!(
                "{doing} {file} of {id}: {status}. The hub (or a proxy) failed; try again later"
            ),
            _ => anyhow!("{doing} {file} of {id}: {status}"),
        }
    }
}

/// A 404 that says the file is missing, not the repository or the revision: the hub's
/// `EntryNotFound`, or a 404 without an error code (from a server that sends none).
fn is_missing_file(response: &ureq::Response) -> bool {
    matches!(
        response.header("x-error-code"),
        None | Some("EntryNotFound")
    )
}

/// `HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
fn hf_home() -> Result<PathBuf> {
    let nonempty = |var: &str| std::env::var_os(var).filter(|v| !v.is_empty());
    if let Some(home) = nonempty("HF_HOME") {
        return Ok(PathBuf::from(home));
    }
    if let Some(xdg) = nonempty("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(xdg).join("huggingface"));
    }
    match nonempty("HOME").or_else(|| nonempty("USERPROFILE")) {
        Some(home) => Ok(PathBuf::from(home).join(".cache").join("huggingface")),
        None => bail!("cannot find the Hugging Face cache: set HF_HOME to a writable directory"),
    }
}

/// [`TIMEOUT_ENV`] in seconds, else [`DEFAULT_TIMEOUT`].
fn timeout_from_env() -> Result<Duration> {
    let Ok(value) = std::env::var(TIMEOUT_ENV) else {
        return Ok(DEFAULT_TIMEOUT);
    };
    match value.trim().parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs.is_finite() && secs < 1e9 => {
            Ok(Duration::from_secs_f64(secs))
        }
        _ => bail!("{TIMEOUT_ENV}={value:?}: expected a number of seconds above 0, e.g. 60"),
    }
}

fn create_cache_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create {} in the hub cache; set HF_HOME (or HF_HUB_CACHE) to a writable \
             directory",
            dir.display()
        )
    })
}

/// `pointer` (the snapshot's `file`) as a relative symbolic link to the blob, as hf-hub and
/// `huggingface_hub` make it; a copy where links are unavailable.
fn link_blob(blob: &Path, etag: &str, file: &str, pointer: &Path) -> Result<()> {
    if std::fs::symlink_metadata(pointer).is_ok() {
        // A link whose blob is gone (a cleaned cache), or an older version of the file.
        std::fs::remove_file(pointer)
            .with_context(|| format!("cannot replace {}", pointer.display()))?;
    }
    let depth = file.split('/').count() - 1;
    let target = format!("{}blobs/{etag}", "../".repeat(2 + depth));
    #[cfg(unix)]
    let linked = std::os::unix::fs::symlink(&target, pointer);
    #[cfg(not(unix))]
    let linked = {
        let _ = &target;
        std::fs::copy(blob, pointer).map(|_| ())
    };
    match linked {
        Ok(()) => Ok(()),
        // Another process linked it meanwhile.
        Err(_) if pointer.is_file() => Ok(()),
        Err(e) => Err(anyhow!(
            "cannot link {} to {} in the hub cache ({e}); set HF_HOME (or HF_HUB_CACHE) to a \
             writable directory",
            pointer.display(),
            blob.display()
        )),
    }
}

/// `scheme://host[:port]` of a URL.
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

/// A git commit id: 40 (SHA-1) or 64 (SHA-256) hex digits.
fn is_commit(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// An etag as the hub sends it (`"abc"`, `W/"abc"`) without the weak mark and the quotes.
fn normalize_etag(raw: &str) -> String {
    let etag = raw.trim();
    let etag = etag.strip_prefix("W/").unwrap_or(etag);
    etag.trim_matches('"').to_string()
}

/// An etag usable as a file name: letters, digits, `-` and `_` (the hub sends hex hashes).
fn is_safe_etag(etag: &str) -> bool {
    !etag.is_empty()
        && etag.len() <= 128
        && etag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A `/`-separated relative path with no empty, `.` or `..` part and nothing a path or URL
/// would read differently (backslashes, control characters).
fn is_relative_path(s: &str) -> bool {
    !s.is_empty()
        && s.split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && !s.chars().any(|c| c == '\\' || c.is_control())
}

/// `s` with every byte but RFC 3986's unreserved characters percent-encoded (so `/` in a
/// revision becomes `%2F`, as the hub expects).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether a failed request timed out (ureq reports a socket timeout as an I/O error).
fn is_timeout(e: &ureq::Transport) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if is_timeout_io(io) {
                return true;
            }
        }
        source = err.source();
    }
    false
}

fn is_timeout_io(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    )
}

/// `1.2 MB`, `3.4 kB`, `12 bytes`.
fn size(bytes: u64) -> String {
    match bytes {
        0..1_000 => format!("{bytes} bytes"),
        1_000..1_000_000 => format!("{:.1} kB", bytes as f64 / 1e3),
        _ => format!("{:.1} MB", bytes as f64 / 1e6),
    }
}

/// A download's progress on stderr: one line when it starts, and on a terminal a bar of the
/// bytes received ([`crate::progress`]).
struct Progress {
    bar: indicatif::ProgressBar,
}

impl Progress {
    fn new(file: &str, repo: &str, total: u64) -> Self {
        eprintln!("downloading {file} of {repo} ({})", size(total));
        Self {
            bar: crate::progress::bar(total, file, "{bytes}/{total_bytes}"),
        }
    }

    fn update(&mut self, received: u64) {
        self.bar.set_position(received);
    }

    fn finish(&mut self) {
        self.bar.finish();
    }

    fn abandon(&mut self) {
        self.bar.abandon();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_are_unquoted_and_only_plain_hashes_are_file_names() {
        assert_eq!(normalize_etag("\"abc123\""), "abc123");
        assert_eq!(normalize_etag("W/\"abc-1\""), "abc-1");
        for ok in ["0123abcdef", "a-b_c", &"f".repeat(64)] {
            assert!(is_safe_etag(ok), "{ok}");
        }
        for bad in [
            "",
            "../x",
            "a/b",
            "..",
            "a.b",
            "a\\b",
            " ",
            &"f".repeat(129),
        ] {
            assert!(!is_safe_etag(bad), "{bad:?}");
        }
    }

    #[test]
    fn commits_are_hex_hashes() {
        assert!(is_commit(&"a".repeat(40)));
        assert!(is_commit(&"0123456789abcdef".repeat(4)));
        for bad in ["main", "../../x", &"g".repeat(40), &"a".repeat(39)] {
            assert!(!is_commit(bad), "{bad}");
        }
    }

    #[test]
    fn revisions_and_file_names_stay_inside_their_directory() {
        for ok in ["main", "v1.0", "refs/pr/1", "sub/model.gguf"] {
            assert!(is_relative_path(ok), "{ok}");
        }
        for bad in [
            "", "..", "../x", "a/../b", "/abs", "a//b", "a/", "a\\b", "a\nb",
        ] {
            assert!(!is_relative_path(bad), "{bad:?}");
        }
    }

    #[test]
    fn urls_encode_revisions_and_keep_origins() {
        assert_eq!(percent_encode("refs/pr/1"), "refs%2Fpr%2F1");
        assert_eq!(percent_encode("a b.gguf"), "a%20b.gguf");
        assert_eq!(origin("http://127.0.0.1:8/a/b"), "http://127.0.0.1:8");
        assert_eq!(origin("https://huggingface.co"), "https://huggingface.co");
    }
}
