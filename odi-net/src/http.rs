//! HTTP plumbing shared by the directory and the relay: the accept loop ([`serve`], plain or
//! TLS), body types, one-line error responses, `Range` parsing, and serving a blob with the
//! client-facing headers of the contract.

use std::convert::Infallible;
use std::future::Future;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use std::sync::Arc;

use futures_util::{StreamExt as _, TryStreamExt as _};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;
use odi_core::Digest;
use odi_core::storage::{BlobStore, ByteStream, StorageError};
use odi_storage::LocalStore;

use crate::limit::RateLimiter;

pub use odi_client::body::{Body, BoxError, empty, full};

/// A plain-text response whose body is one line saying what went wrong.
pub fn error(status: StatusCode, reason: impl std::fmt::Display) -> Response<Body> {
    let mut line = reason.to_string().replace(['\r', '\n'], " ");
    line.push('\n');
    let mut resp = Response::new(full(line));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

pub fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(mut body) => {
            body.push(b'\n');
            let mut resp = Response::new(full(body));
            *resp.status_mut() = status;
            resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode response: {e}")),
    }
}

pub const REPR_DIGEST: HeaderName = HeaderName::from_static("repr-digest");
pub const DIGEST: HeaderName = HeaderName::from_static("digest");

/// The header values of one response, written into one buffer and split off as each is
/// finished: one allocation for all of them, where `format!` and `HeaderValue::from_str` take
/// one or two per value. Redirects and small-blob answers are mostly headers, so this is most of
/// their cost.
pub struct Values(BytesMut);

impl Values {
    /// `capacity`: about the total length of the values to come (the buffer grows if needed).
    pub fn with_capacity(capacity: usize) -> Self {
        Self(BytesMut::with_capacity(capacity))
    }

    pub fn text(&mut self, s: &str) -> &mut Self {
        self.0.extend_from_slice(s.as_bytes());
        self
    }

    /// Each of `pieces`, one after the other.
    pub fn texts(&mut self, pieces: &[&str]) -> &mut Self {
        for piece in pieces {
            self.text(piece);
        }
        self
    }

    pub fn number(&mut self, n: u64) -> &mut Self {
        self.text(itoa::Buffer::new().format(n))
    }

    pub fn base64(&mut self, bytes: &[u8]) -> &mut Self {
        use base64::Engine as _;
        let start = self.0.len();
        self.0.resize(start + base64::encoded_len(bytes.len(), true).unwrap_or(0), 0);
        let written = base64::engine::general_purpose::STANDARD.encode_slice(bytes, &mut self.0[start..]).unwrap_or(0);
        self.0.truncate(start + written);
        self
    }

    pub fn hex(&mut self, bytes: &[u8]) -> &mut Self {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for b in bytes {
            self.0.extend_from_slice(&[DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]]);
        }
        self
    }

    /// The value written since the last `finish`, or `None` if it holds a byte no header value
    /// may hold (a control character); either way the next value starts empty.
    pub fn finish(&mut self) -> Option<HeaderValue> {
        HeaderValue::from_maybe_shared(self.0.split().freeze()).ok()
    }
}

/// Blobs whose digest headers a server keeps ready (about 4 MiB).
pub const DIGEST_HEADERS_KEPT: usize = 16 << 10;

/// The header values that depend only on a blob's digest: `ETag`, `Repr-Digest` (RFC 9530) and
/// the legacy `Digest` aria2 reads. Built once per blob in demand, not once per answer: a
/// digest's base64 and hex forms were a tenth of the work of a `302`.
pub struct DigestHeaders(quick_cache::sync::Cache<Digest, Arc<[HeaderValue; 3]>>);

impl DigestHeaders {
    /// Keeps the values of up to `blobs` blobs (about 250 bytes each).
    pub fn new(blobs: usize) -> Self {
        Self(quick_cache::sync::Cache::new(blobs.max(1)))
    }

    fn values(&self, digest: &Digest) -> Arc<[HeaderValue; 3]> {
        if let Some(values) = self.0.get(digest) {
            return values;
        }
        let mut v = Values::with_capacity(200);
        let tag = etag(&mut v, digest);
        let repr = v.text("sha-256=:").base64(digest.as_bytes()).text(":").finish();
        let legacy = v.text("SHA-256=").base64(digest.as_bytes()).finish();
        // Base64 and hex are always valid header text.
        let values = Arc::new([tag, repr.unwrap_or(HeaderValue::from_static("")), legacy.unwrap_or(HeaderValue::from_static(""))]);
        self.0.insert(*digest, values.clone());
        values
    }

    /// Adds `Repr-Digest` and `Digest`.
    pub fn insert(&self, headers: &mut HeaderMap, digest: &Digest) {
        let [_, repr, legacy] = &*self.values(digest);
        headers.insert(REPR_DIGEST, repr.clone());
        headers.insert(DIGEST, legacy.clone());
    }

    /// The blob's strong `ETag`.
    pub fn etag(&self, digest: &Digest) -> HeaderValue {
        self.values(digest)[0].clone()
    }
}

impl std::fmt::Debug for DigestHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigestHeaders").field("blobs", &self.0.len()).finish()
    }
}

/// A blob's strong `ETag`: `"sha256:{hex}"`.
fn etag(values: &mut Values, digest: &Digest) -> HeaderValue {
    values.text("\"sha256:").hex(digest.as_bytes()).text("\"").finish().unwrap_or(HeaderValue::from_static("\"\""))
}

/// Whether caches may keep an answer for good or must ask again before each use.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Caching {
    /// Bytes that never change under this URL: a digest (`/blobs/sha256/...`), or a name in
    /// an immutable catalog, which is never bound to other bytes.
    Immutable,
    /// A name in a mutable catalog, which may be bound to other bytes later: a cache may keep
    /// the answer but must revalidate it (`If-None-Match` with the ETag) before each use.
    Revalidate,
}

impl Caching {
    /// For a name: `mutable` when its catalog may rebind it.
    pub fn of_name(mutable: bool) -> Self {
        if mutable { Self::Revalidate } else { Self::Immutable }
    }

    pub fn header(self) -> HeaderValue {
        match self {
            Self::Immutable => HeaderValue::from_static("public, max-age=31536000, immutable"),
            Self::Revalidate => HeaderValue::from_static("no-cache"),
        }
    }

    /// Sets `Cache-Control` on a blob answer (`200`, `206`, `304`) that `serve_blob` built as
    /// immutable; other answers are left as they are.
    pub fn apply<B>(self, resp: &mut Response<B>) {
        let status = resp.status();
        if self != Self::Immutable && (status.is_success() || status == StatusCode::NOT_MODIFIED) {
            resp.headers_mut().insert(header::CACHE_CONTROL, self.header());
        }
    }
}

/// True when an `If-None-Match` in `headers` matches the strong `tag` (or is `*`).
pub fn none_match(headers: &HeaderMap, tag: &HeaderValue) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|inm| inm.split(',').any(|t| t.trim() == "*" || t.trim().trim_start_matches("W/").as_bytes() == tag.as_bytes()))
}

/// What a `Range` header asks of a representation of `size` bytes.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum RangeRequest {
    /// No usable `Range`: send everything (also for multiple or malformed ranges, which a
    /// server may ignore).
    Full,
    Partial(Range<u64>),
    Unsatisfiable,
}

/// Parses a single `bytes=` range against `size`.
pub fn parse_range(value: Option<&HeaderValue>, size: u64) -> RangeRequest {
    let Some(spec) = value.and_then(|v| v.to_str().ok()).and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((start, end)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let (start, end) = (start.trim(), end.trim());
    let parse = |s: &str| {
        if s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty() && s.len() <= 20 { s.parse::<u64>().ok() } else { None }
    };
    match (start.is_empty(), end.is_empty()) {
        (true, true) => RangeRequest::Full,
        (true, false) => match parse(end) {
            Some(0) => RangeRequest::Unsatisfiable,
            Some(n) if size == 0 => {
                let _ = n;
                RangeRequest::Unsatisfiable
            }
            Some(n) => RangeRequest::Partial(size.saturating_sub(n)..size),
            None => RangeRequest::Full,
        },
        (false, _) => {
            let Some(first) = parse(start) else { return RangeRequest::Full };
            let last = if end.is_empty() { Some(u64::MAX) } else { parse(end) };
            match last {
                Some(last) if last < first => RangeRequest::Full,
                Some(_) if first >= size => RangeRequest::Unsatisfiable,
                Some(last) => RangeRequest::Partial(first..last.saturating_add(1).min(size)),
                None => RangeRequest::Full,
            }
        }
    }
}

/// What a blob answer is made from, besides the store: the request, the blob, and the server's
/// digest headers and bandwidth limit.
pub struct BlobRequest<'a> {
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    pub digest: &'a Digest,
    pub digests: &'a DigestHeaders,
    pub media_type: &'a str,
    pub limiter: Option<&'a Arc<RateLimiter>>,
}

/// Serves a stored blob: `200`, `206` for one satisfiable range, `416`, `304` on a matching
/// `If-None-Match`, `404` when the store does not have it; HEAD gets the headers alone.
pub async fn serve_blob(store: &dyn BlobStore, req: &BlobRequest<'_>) -> Response<Body> {
    let size = match store.size(req.digest).await {
        Ok(size) => size,
        Err(e) => return storage_error(req.digest, e),
    };
    let (builder, range) = match head(req, size) {
        Ok(head) => head,
        Err(resp) => return resp,
    };
    match store.get(req.digest, Some(range)).await {
        Ok(got) => respond(builder, got.stream, req.limiter),
        Err(e) => storage_error(req.digest, e),
    }
}

/// Set on an answer refused because the stored copy failed its check when opened, so the
/// server can drop it (a check failing mid-body shows as a `StorageError::Corrupt` body error).
#[derive(Clone, Copy, Debug)]
pub struct CorruptBlob(pub Digest);

/// The digest whose stored copy failed its check, if `error` (a body error) says so.
pub fn corrupt_blob(error: &BoxError) -> Option<Digest> {
    match error.downcast_ref::<StorageError>() {
        Some(StorageError::Corrupt { digest, .. }) => Some(*digest),
        _ => None,
    }
}

/// `serve_blob` for a relay's local store: one trip to the blocking pool opens the file, learns
/// its size and, for a small blob, reads it whole. Every byte is checked as it is read (see
/// `LocalStore`): a copy found corrupt is refused with `503` (and a [`CorruptBlob`] extension)
/// when opened, or ends the body with an error mid-way, so hyper cuts the connection and the
/// client sees a failed transfer, never a complete wrong file.
pub async fn serve_local(store: &LocalStore, req: &BlobRequest<'_>) -> Response<Body> {
    let blob = match store.open_blob(req.digest, SMALL_BLOB).await {
        Ok(blob) => blob,
        Err(e) => return storage_error(req.digest, e),
    };
    let (builder, range) = match head(req, blob.size) {
        Ok(head) => head,
        Err(resp) => return resp,
    };
    respond(builder, blob.stream(range), req.limiter)
}

/// Blobs up to this size are read whole when opened for serving (and kept in memory, verified,
/// while they are in demand).
const SMALL_BLOB: u64 = odi_storage::local::CACHED_BLOB_MAX;

fn storage_error(digest: &Digest, e: StorageError) -> Response<Body> {
    match e {
        StorageError::NotFound { .. } => error(StatusCode::NOT_FOUND, format!("{digest} is not held here")),
        StorageError::Corrupt { .. } => {
            let mut resp =
                error(StatusCode::SERVICE_UNAVAILABLE, format!("the copy of {digest} here failed its check and is being fetched again; ask the directory"));
            resp.extensions_mut().insert(CorruptBlob(*digest));
            resp
        }
        e => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// The status and headers of a blob response, and the byte range its body must carry; or the
/// whole response when it has no body to stream (304, 416, HEAD).
#[allow(clippy::result_large_err, reason = "the error is the finished response, returned once per request")]
fn head(req: &BlobRequest<'_>, size: u64) -> Result<(Response<()>, Range<u64>), Response<Body>> {
    let BlobRequest { method, headers, digest, digests, media_type, .. } = *req;
    let mut values = Values::with_capacity(64 + media_type.len());
    let mut resp = Response::new(());
    let h = resp.headers_mut();
    // ETag, Accept-Ranges, Cache-Control, two digests, Content-Type, -Range and -Length.
    h.reserve(8);
    let tag = digests.etag(digest);
    let not_modified = none_match(headers, &tag);
    h.insert(header::ETAG, tag);
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CACHE_CONTROL, Caching::Immutable.header());
    digests.insert(h, digest);
    if not_modified {
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        return Err(resp.map(|()| empty()));
    }
    let span = match parse_range(headers.get(header::RANGE), size) {
        RangeRequest::Full => 0..size,
        RangeRequest::Partial(r) => {
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            if let Some(v) = values.text("bytes ").number(r.start).text("-").number(r.end - 1).text("/").number(size).finish() {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            r
        }
        RangeRequest::Unsatisfiable => {
            *resp.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            let h = resp.headers_mut();
            // The body is an error line, not the representation: no digest may describe it,
            // and no cache may keep it.
            h.remove(REPR_DIGEST);
            h.remove(DIGEST);
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            if let Some(v) = values.text("bytes */").number(size).finish() {
                h.insert(header::CONTENT_RANGE, v);
            }
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
            return Err(resp.map(|()| full(format!("range not satisfiable: the artifact has {size} bytes\n"))));
        }
    };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, values.text(media_type).finish().unwrap_or(HeaderValue::from_static("application/octet-stream")));
    if let Some(v) = values.number(span.end - span.start).finish() {
        h.insert(header::CONTENT_LENGTH, v);
    }
    if *method == Method::HEAD {
        return Err(resp.map(|()| empty()));
    }
    Ok((resp, span))
}

/// Finishes a blob response with its body, paced by `limiter` when there is one.
fn respond(head: Response<()>, stream: ByteStream<'static>, limiter: Option<&Arc<RateLimiter>>) -> Response<Body> {
    let frames = stream.map_ok(Frame::data).map_err(|e| Box::new(e) as BoxError);
    let body = match limiter {
        Some(limiter) => {
            let limiter = limiter.clone();
            let paced = frames.then(move |frame| {
                let limiter = limiter.clone();
                async move {
                    if let Ok(data) = frame.as_ref().map(|f| f.data_ref().map_or(0, Bytes::len)) {
                        limiter.take(data).await;
                    }
                    frame
                }
            });
            StreamBody::new(paced).boxed_unsync()
        }
        None => StreamBody::new(frames).boxed_unsync(),
    };
    head.map(|()| body)
}

/// Parses the `{catalog}/{path}` after `/r/`, or answers the `400` that says what is wrong.
#[allow(clippy::result_large_err, reason = "the error is the finished response, returned once per request")]
pub fn artifact_route(rest: &str) -> Result<(&str, odi_core::path::ArtifactPath), Response<Body>> {
    let Some((catalog, raw_path)) = split_catalog_path(rest) else {
        return Err(error(StatusCode::BAD_REQUEST, "expected /r/{catalog}/{path}"));
    };
    if odi_core::path::CatalogName::check(catalog).is_err() {
        return Err(error(StatusCode::BAD_REQUEST, format!("malformed catalog name `{}`", catalog.chars().take(70).collect::<String>())));
    }
    let path = odi_core::path::ArtifactPath::from_url(raw_path).map_err(|e| error(StatusCode::BAD_REQUEST, format!("bad artifact path: {e}")))?;
    Ok((catalog, path))
}

/// Splits `/{prefix}/{catalog}/{rest}` as it appears on the wire (still percent-encoded).
pub fn split_catalog_path(rest: &str) -> Option<(&str, &str)> {
    let (catalog, path) = rest.split_once('/')?;
    Some((catalog, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(v: &str, size: u64) -> RangeRequest {
        parse_range(Some(&HeaderValue::from_str(v).unwrap()), size)
    }

    #[test]
    fn values_share_one_buffer_and_refuse_control_characters() {
        let digest = Digest::of(b"odi");
        let mut values = Values::with_capacity(8);
        let digests = DigestHeaders::new(1);
        for _ in 0..2 {
            let mut headers = HeaderMap::new();
            digests.insert(&mut headers, &digest);
            assert_eq!(headers[REPR_DIGEST], format!("sha-256=:{}:", digest.to_base64()).as_str());
            assert_eq!(headers[DIGEST], format!("SHA-256={}", digest.to_base64()).as_str());
            assert_eq!(digests.etag(&digest), format!("\"sha256:{}\"", digest.to_hex()).as_str());
        }
        assert_eq!(etag(&mut values, &digest), format!("\"sha256:{}\"", digest.to_hex()).as_str());
        assert_eq!(values.number(0).text("-").number(u64::MAX).finish().unwrap(), "0-18446744073709551615");
        assert!(values.text("a\r\nb").finish().is_none());
        assert_eq!(values.text("after").finish().unwrap(), "after");
    }

    #[test]
    fn ranges() {
        use RangeRequest::*;
        assert_eq!(r("bytes=0-0", 10), Partial(0..1));
        assert_eq!(r("bytes=2-", 10), Partial(2..10));
        assert_eq!(r("bytes=2-100", 10), Partial(2..10));
        assert_eq!(r("bytes=-3", 10), Partial(7..10));
        assert_eq!(r("bytes=-30", 10), Partial(0..10));
        assert_eq!(r("bytes=10-", 10), Unsatisfiable);
        assert_eq!(r("bytes=-0", 10), Unsatisfiable);
        assert_eq!(r("bytes=0-", 0), Unsatisfiable);
        assert_eq!(r("bytes=5-2", 10), Full);
        assert_eq!(r("bytes=0-1,3-4", 10), Full);
        assert_eq!(r("items=0-1", 10), Full);
        assert_eq!(r("bytes=99999999999999999999999-", 10), Full);
        assert_eq!(r("bytes=0-18446744073709551615", 10), Partial(0..10));
        assert_eq!(parse_range(None, 10), Full);
    }
}

/// A bound listening socket, answering plain HTTP or, with a [`ServerTls`], HTTPS.
#[derive(Debug)]
pub struct Listener {
    tcp: tokio::net::TcpListener,
    tls: Option<crate::tls::ServerTls>,
}

impl Listener {
    pub fn plain(tcp: tokio::net::TcpListener) -> Self {
        Self { tcp, tls: None }
    }

    pub fn tls(tcp: tokio::net::TcpListener, tls: crate::tls::ServerTls) -> Self {
        Self { tcp, tls: Some(tls) }
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.tcp.local_addr()
    }

    /// `https` with TLS, else `http`: the scheme of a URL that reaches this listener.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}

impl From<tokio::net::TcpListener> for Listener {
    fn from(tcp: tokio::net::TcpListener) -> Self {
        Self::plain(tcp)
    }
}

/// Time allowed for a client to send its request head (slowloris guard).
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);
/// Connections still open this long after shutdown begins are cut.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
/// Requests in flight at once on one HTTP/2 connection.
const H2_MAX_STREAMS: u32 = 64;

/// The log filter directive that lets the access log through whatever `ODI_LOG` says.
pub const ACCESS_LOG_DIRECTIVE: &str = "odi::access=info";

static ACCESS_LOG: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Turns the access log on or off (`--access-log`): one `info` line per request answered, under
/// the `odi::access` target, with the client, method, path, status, `Content-Length` and the
/// milliseconds to the response head. Process-wide, like the log subscriber it writes to.
pub fn set_access_log(on: bool) {
    ACCESS_LOG.store(on, std::sync::atomic::Ordering::Relaxed);
}

fn access_log_enabled() -> bool {
    ACCESS_LOG.load(std::sync::atomic::Ordering::Relaxed)
}

/// Accepts connections on `listener` and answers each request with `handler` until `shutdown`
/// completes, then lets open connections finish for a short grace period. Plain connections
/// speak HTTP/1.1; TLS ones HTTP/2 or HTTP/1.1 as ALPN chose, after a handshake that must end
/// within [`crate::tls::HANDSHAKE_TIMEOUT`]. Every connection, handshaking or not, holds a
/// permit of the connection guard from accept to close.
pub(crate) async fn serve<H, F>(listener: Listener, handler: Arc<H>, shutdown: impl Future<Output = ()>) -> Result<(), crate::NetError>
where
    H: Fn(http::Request<hyper::body::Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use std::time::Duration;

    use crate::guard;

    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut h1 = hyper::server::conn::http1::Builder::new();
    h1.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).keep_alive(true);
    let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new()).max_concurrent_streams(H2_MAX_STREAMS).keep_alive_interval(Some(Duration::from_secs(30)));
    let conns = guard::ConnTracker::new(guard::ConnLimits::for_fd_limit(guard::raise_fd_limit()));
    let shed_log = guard::LogLimiter::new(1, Duration::from_secs(10));
    let handshake_log = Arc::new(guard::LogLimiter::new(1, Duration::from_secs(10)));
    let Listener { tcp: listener, tls } = listener;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Past its share (per address, or in all), a connection is closed before it costs more.
        let Some(permit) = conns.admit(peer.ip()) else {
            if let Some(held_back) = shed_log.allow() {
                tracing::warn!(client = %peer.ip(), open = conns.open(), shed = conns.shed(), held_back, "too many connections; closing new ones from this address");
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let client = guard::ClientAddr(peer.ip());
        let service = hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(client);
            let access = access_log_enabled().then(|| (std::time::Instant::now(), req.method().clone(), req.uri().path().to_owned()));
            let fut = handler(req);
            async move {
                let resp = fut.await;
                if let Some((started, method, path)) = access {
                    let bytes = resp.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).unwrap_or("-");
                    let status = resp.status().as_u16();
                    let ms = started.elapsed().as_secs_f64() * 1e3;
                    tracing::info!(target: "odi::access", client = %client.0, %method, path, status, bytes, ms, "{method} {path} {status}");
                }
                Ok::<_, Infallible>(resp)
            }
        });
        let watcher = graceful.watcher();
        match &tls {
            None => {
                let conn = watcher.watch(h1.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    drop(permit);
                });
            }
            Some(tls) => {
                let (acceptor, h1, h2, handshake_log) = (tls.acceptor().clone(), h1.clone(), h2.clone(), handshake_log.clone());
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::debug!(client = %peer.ip(), error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            if let Some(held_back) = handshake_log.allow() {
                                tracing::info!(client = %peer.ip(), held_back, "TLS handshake not done in time; connection closed");
                            }
                            return;
                        }
                    };
                    if stream.get_ref().1.alpn_protocol() == Some(crate::tls::ACME_TLS_ALPN) {
                        // An ACME validation: the handshake was the answer (RFC 8737 §3).
                        return;
                    }
                    let result = if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                        watcher.watch(h2.serve_connection(TokioIo::new(stream), service)).await
                    } else {
                        watcher.watch(h1.serve_connection(TokioIo::new(stream), service)).await
                    };
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
    Ok(())
}
