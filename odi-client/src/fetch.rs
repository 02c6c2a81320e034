//! [`get`]: a verified download, as `odi get` and the language bindings run it.
//!
//! The URL is first asked (without following it) whether it is an ODI directory: its answers
//! carry `Link: <…>; rel=describedby; type="application/metalink4+xml"`. If so, the file comes
//! from every source the metalink lists at once, each chunk checked against its hash and bad
//! chunks fetched again elsewhere (the directory hears of every source that sent one). Otherwise
//! it is one plain `GET`, following redirects, checked against `Repr-Digest` (or the digest the
//! caller expects). Either way the bytes go to `DEST.part` and are renamed to `DEST` only when
//! they match; `resume` continues a `.part` file left by an earlier attempt.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures_util::StreamExt as _;
use http::{Request, StatusCode, header};
use http_body_util::BodyStream;
use odi_core::Digest;
use odi_core::transfer::TransferConfig;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::client::{STALL_TIMEOUT, read_body};
use crate::redirect::{self, Redirects};
use crate::transfer::{self, Downloader, PartialFile, Source};
use crate::{HttpClient, NetError, body, metalink};

/// How far a download has come, as told to [`GetOptions::progress`].
#[derive(Clone, Debug)]
pub struct Progress {
    /// Verified bytes so far (including bytes resumed from a `.part` file).
    pub done: u64,
    /// The artifact's length, when known.
    pub total: Option<u64>,
    /// Where the bytes come from: the URL asked, or the number of sources for a metalink.
    pub source: String,
}

/// A progress callback; called from the download task, often (every chunk or frame).
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// Options of [`get`].
#[derive(Clone, Default)]
pub struct GetOptions {
    /// Continue a `DEST.part` left by an earlier attempt instead of starting over.
    pub resume: bool,
    /// The SHA-256 the bytes must have; without it, the server's `Repr-Digest` (or the
    /// directory's manifest) is the check, and a plain server with neither leaves the download
    /// unverified (see [`Report::verified`]).
    pub sha256: Option<Digest>,
    /// Told the bytes verified so far.
    pub progress: Option<ProgressFn>,
    /// The client to use; a default [`HttpClient`] (the process's TLS trust) otherwise.
    pub client: Option<HttpClient>,
}

impl std::fmt::Debug for GetOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GetOptions").field("resume", &self.resume).field("sha256", &self.sha256).field("progress", &self.progress.is_some()).finish()
    }
}

/// What [`get`] did.
#[derive(Clone, Debug)]
pub struct Report {
    /// Where the file was saved (empty for [`get_stream`]).
    pub path: PathBuf,
    /// The SHA-256 of the bytes received.
    pub digest: Digest,
    /// The file's length in bytes.
    pub bytes: u64,
    /// Whether the digest was checked against an expected one (always, from a directory).
    pub verified: bool,
    /// Sources the bytes came from (1 for a plain server).
    pub sources: usize,
    /// The multi-source transfer's report, when the URL was an ODI directory.
    pub transfer: Option<transfer::Report>,
}

/// Why [`get`] failed; its `Display` is one line for a user.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GetError {
    /// The URL or an option cannot be used.
    #[error("{0}")]
    Invalid(String),
    /// The network failed (unreachable, refused, a broken protocol).
    #[error(transparent)]
    Net(#[from] NetError),
    /// The server answered with an error status.
    #[error("{url} answered {status}: {reason}")]
    Status {
        /// The URL that answered.
        url: String,
        /// Its status.
        status: StatusCode,
        /// Its one-line reason.
        reason: String,
    },
    /// The bytes do not have the expected digest; nothing was saved.
    #[error("downloaded bytes have {got}, expected {expected}; the file was discarded")]
    Mismatch {
        /// What the bytes hash to.
        got: Digest,
        /// What they should.
        expected: Digest,
    },
    /// The transfer stopped before the end; what was verified is kept for `resume`.
    #[error("{reason}; run again with resume to continue")]
    Incomplete {
        /// Why it stopped.
        reason: String,
        /// The transfer's report, for a metalink download.
        report: Option<Box<transfer::Report>>,
    },
    /// A local file could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> GetError {
    let context = context.into();
    move |source| GetError::Io { context, source }
}

/// `DEST.part`: where [`get`] writes until the bytes are verified.
pub fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

/// Downloads `url` into `dest`, verified (see the module documentation).
pub async fn get(url: &str, dest: &Path, options: &GetOptions) -> Result<Report, GetError> {
    let client = options.client.clone().unwrap_or_default();
    if let Some(metalink) = discover_metalink(&client, url).await? {
        return odi_download(&client, metalink, url, dest, options).await;
    }
    let part = part_path(dest);
    let mut offset = 0u64;
    let mut hasher = Sha256::new();
    if options.resume
        && let Ok(mut f) = tokio::fs::File::open(&part).await
    {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).await.map_err(io(format!("cannot read {}", part.display())))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            offset += n as u64;
        }
    }
    let (resp, url, expected) = open(&client, url, offset, options.sha256).await?;
    let status = resp.status();
    if status == StatusCode::RANGE_NOT_SATISFIABLE && offset > 0 {
        // The part file is already whole (or longer than the artifact): check it as it is.
        return finish(&part, dest, hasher, offset, expected).await;
    }
    if !status.is_success() {
        return Err(status_error(&url, resp).await);
    }
    if offset > 0 && status != StatusCode::PARTIAL_CONTENT {
        // The server ignored the range: start over.
        offset = 0;
        hasher = Sha256::new();
    }
    let mut options_open = tokio::fs::OpenOptions::new();
    options_open.create(true).write(true);
    if offset > 0 {
        options_open.append(true);
    } else {
        options_open.truncate(true);
    }
    let mut file = options_open.open(&part).await.map_err(io(format!("cannot write {}", part.display())))?;
    let total = resp.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok()).map(|n| n + offset);
    let done = stream_body(resp, &url, &mut file, &mut hasher, offset, total, options).await?;
    file.flush().await.map_err(io("cannot write the download"))?;
    drop(file);
    finish(&part, dest, hasher, done, expected).await
}

/// Like [`get`] from a plain server, but writes the bytes to `sink` as they arrive (for
/// standard output); a digest mismatch is reported after the bytes were written.
pub async fn get_stream(url: &str, sink: &mut (dyn AsyncWrite + Unpin + Send), options: &GetOptions) -> Result<Report, GetError> {
    let client = options.client.clone().unwrap_or_default();
    let (resp, url, expected) = open(&client, url, 0, options.sha256).await?;
    if !resp.status().is_success() {
        return Err(status_error(&url, resp).await);
    }
    let total = resp.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let mut hasher = Sha256::new();
    let done = stream_body(resp, &url, sink, &mut hasher, 0, total, options).await?;
    sink.flush().await.map_err(io("cannot write the download"))?;
    let got = Digest::from_bytes(hasher.finalize().into());
    if let Some(expected) = expected
        && got != expected
    {
        return Err(GetError::Mismatch { got, expected });
    }
    Ok(Report { path: PathBuf::new(), digest: got, bytes: done, verified: expected.is_some(), sources: 1, transfer: None })
}

/// `GET url` (from `offset` on), following redirects under the one policy; returns the final
/// response, its URL and the digest to check (the caller's, else the first `Repr-Digest` seen).
async fn open(
    client: &HttpClient,
    first: &str,
    offset: u64,
    mut expected: Option<Digest>,
) -> Result<(hyper::Response<hyper::body::Incoming>, String, Option<Digest>), GetError> {
    let mut url = first.to_owned();
    let mut hops = 0;
    loop {
        let mut req = Request::get(&url);
        if offset > 0 {
            req = req.header(header::RANGE, format!("bytes={offset}-"));
        }
        let req = req.body(body::empty()).map_err(|_| GetError::Invalid(format!("`{url}` is not a valid URL")))?;
        let resp = client.send(req, Duration::from_secs(30)).await?;
        if expected.is_none() {
            expected = repr_digest(resp.headers());
        }
        match redirect::next(Redirects::AnyHost, first, &url, resp.status(), resp.headers(), hops).map_err(|e| GetError::Net(NetError::Protocol(e)))? {
            Some(next) => {
                url = next;
                hops += 1;
            }
            None => return Ok((resp, url, expected)),
        }
    }
}

async fn status_error(url: &str, resp: hyper::Response<hyper::body::Incoming>) -> GetError {
    let status = resp.status();
    let body = read_body(resp.into_body(), 4096).await.unwrap_or_default();
    let reason = String::from_utf8_lossy(&body).lines().next().unwrap_or("").trim().to_owned();
    GetError::Status { url: url.to_owned(), status, reason }
}

async fn stream_body(
    resp: hyper::Response<hyper::body::Incoming>,
    url: &str,
    sink: &mut (dyn AsyncWrite + Unpin + Send),
    hasher: &mut Sha256,
    mut done: u64,
    total: Option<u64>,
    options: &GetOptions,
) -> Result<u64, GetError> {
    let mut stream = BodyStream::new(resp.into_body());
    let incomplete = |reason: String| GetError::Incomplete { reason, report: None };
    while let Some(frame) = tokio::time::timeout(STALL_TIMEOUT, stream.next()).await.map_err(|_| incomplete(format!("download from {url} stalled")))? {
        let frame = frame.map_err(|e| incomplete(format!("download from {url} failed: {e}")))?;
        if let Ok(data) = frame.into_data() {
            hasher.update(&data);
            sink.write_all(&data).await.map_err(io("cannot write the download"))?;
            done += data.len() as u64;
            if let Some(progress) = &options.progress {
                progress(&Progress { done, total, source: url.to_owned() });
            }
        }
    }
    Ok(done)
}

async fn finish(part: &Path, dest: &Path, hasher: Sha256, bytes: u64, expected: Option<Digest>) -> Result<Report, GetError> {
    let got = Digest::from_bytes(hasher.finalize().into());
    if let Some(expected) = expected
        && got != expected
    {
        let _ = tokio::fs::remove_file(part).await;
        return Err(GetError::Mismatch { got, expected });
    }
    let f = tokio::fs::File::open(part).await.map_err(io(format!("cannot reopen {}", part.display())))?;
    f.sync_all().await.map_err(io("cannot sync the download"))?;
    tokio::fs::rename(part, dest).await.map_err(io(format!("cannot move the download to {}", dest.display())))?;
    sync_parent(dest).await?;
    Ok(Report { path: dest.to_path_buf(), digest: got, bytes, verified: expected.is_some(), sources: 1, transfer: None })
}

/// Makes the rename into the destination's directory durable; a bare file name lives in `.`.
async fn sync_parent(dest: &Path) -> Result<(), GetError> {
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = tokio::fs::File::open(parent).await.map_err(io(format!("cannot open directory {}", parent.display())))?;
    dir.sync_all().await.map_err(io(format!("cannot sync directory {}", parent.display())))
}

/// Asks the URL (without following it) whether it is an ODI directory, and if so reads the
/// metalink it points to.
async fn discover_metalink(client: &HttpClient, url: &str) -> Result<Option<metalink::Parsed>, GetError> {
    let req = Request::head(url).body(body::empty()).map_err(|_| GetError::Invalid(format!("`{url}` is not a valid URL")))?;
    let resp = client.send(req, Duration::from_secs(30)).await?;
    let link = resp.headers().get_all(header::LINK).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).find_map(|l| {
        let l = l.trim();
        (l.contains("rel=describedby") && l.contains(metalink::MEDIA_TYPE)).then(|| l.split('>').next().unwrap_or("").trim_start_matches('<').to_owned())
    });
    let Some(link) = link else { return Ok(None) };
    let link = redirect::resolve(url, &link).ok_or_else(|| GetError::Net(NetError::Protocol(format!("bad metalink URL `{link}`"))))?;
    let req = Request::get(&link).body(body::empty()).map_err(|_| GetError::Net(NetError::Protocol(format!("bad metalink URL `{link}`"))))?;
    let resp = client.send(req, Duration::from_secs(30)).await?;
    if !resp.status().is_success() {
        return Err(status_error(&link, resp).await);
    }
    let body = read_body(resp.into_body(), 64 << 20).await?;
    let parsed = metalink::parse(&String::from_utf8_lossy(&body)).map_err(|e| GetError::Net(NetError::Protocol(format!("{link}: {e}"))))?;
    Ok(Some(parsed))
}

/// Downloads from every source the metalink lists at once into `DEST.part` (kept for resume on
/// failure), and tells the directory at `url`'s origin of every source that sent a bad chunk.
async fn odi_download(client: &HttpClient, metalink: metalink::Parsed, url: &str, dest: &Path, options: &GetOptions) -> Result<Report, GetError> {
    let manifest = metalink.manifest;
    if let Some(expected) = options.sha256
        && expected != manifest.digest()
    {
        return Err(GetError::Invalid(format!("the directory announces {}, but the expected digest is {expected}", manifest.digest())));
    }
    let part = part_path(dest);
    if !options.resume {
        match tokio::fs::remove_file(&part).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(format!("cannot remove {}", part.display()))(e)),
        }
    }
    let (partial, have) = PartialFile::open(&part, manifest.clone()).await.map_err(|e| GetError::Invalid(format!("cannot open {}: {e}", part.display())))?;
    let sources: Vec<Source> = metalink.urls.iter().map(|u| Source { url: u.clone(), signed: false }).collect();
    let downloader = Downloader { client: client.clone(), key: None, limiter: None, config: TransferConfig::default(), redirects: Redirects::AnyHost };
    let total = manifest.total_len();
    let label = format!("{} sources", sources.len());
    let progress = |done: u64| {
        if let Some(progress) = &options.progress {
            progress(&Progress { done, total: Some(total), source: label.clone() });
        }
    };
    let result = downloader.download(&manifest, &sources, partial, have, &progress).await;
    let report = match &result {
        Ok((_, report)) | Err((_, report)) => report,
    };
    if let Some(directory) = redirect::resolve(url, "/") {
        transfer::report_rejected(client, &directory, manifest.digest(), report).await;
    }
    let (partial, report) = match result {
        Ok(ok) => ok,
        Err((e, report)) => {
            let detail = report.failures.first().map(|f| format!(" (last problem: {f})")).unwrap_or_default();
            return Err(GetError::Incomplete {
                reason: format!("{e}{detail}; the verified chunks are kept in {}", part.display()),
                report: Some(Box::new(report)),
            });
        }
    };
    let sealed = partial.seal().await.map_err(|e| GetError::Invalid(format!("cannot finish {}: {e}", part.display())))?;
    sealed.publish(dest).await.map_err(|e| GetError::Invalid(format!("cannot save {}: {e}", dest.display())))?;
    Ok(Report { path: dest.to_path_buf(), digest: manifest.digest(), bytes: total, verified: true, sources: sources.len(), transfer: Some(report) })
}

/// `sha-256=:{b64}:` from `Repr-Digest`, or the legacy `Digest: SHA-256={b64}`.
fn repr_digest(headers: &http::HeaderMap) -> Option<Digest> {
    let b64 = headers
        .get("repr-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').find_map(|item| item.trim().strip_prefix("sha-256=:")?.strip_suffix(':').map(str::to_owned)))
        .or_else(|| {
            headers.get("digest").and_then(|v| v.to_str().ok()).and_then(|v| v.split(',').find_map(|i| i.trim().strip_prefix("SHA-256=").map(str::to_owned)))
        })?;
    let bytes: [u8; 32] = base64::engine::general_purpose::STANDARD.decode(b64).ok()?.try_into().ok()?;
    Some(Digest::from_bytes(bytes))
}
