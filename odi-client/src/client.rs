//! The HTTP client nodes and the CLI use: HTTP/1.1 over hyper, plain or over TLS (verified
//! against the process's trust, [`crate::tls::client_config`]), with signed node requests and
//! bounded waits. It never follows a redirect itself: callers that do decide what the next
//! request carries (odi-net's `transfer::Redirects`), so no credential is sent to a host it was not
//! meant for.
//!
//! A client made with [`HttpClient::guarded`] connects only to addresses its [`AddressPolicy`]
//! accepts: IP literals are checked before the request is sent, and names are checked by the
//! resolver, on every connection, so a relay's DNS cannot point the directory elsewhere later.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use futures_util::StreamExt as _;
use http::{HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt as _, BodyStream};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::rt::TokioExecutor;
use odi_core::auth;
use odi_core::message::{AddressPolicy, classify_ip};
use odi_core::storage::{ByteStream, StorageError};

use crate::body::{Body, full};
use crate::{NetError, unix_now};

/// Longest JSON body a node or the CLI reads from a peer.
pub const MAX_JSON_BODY: usize = 64 << 20;
/// A body that sends nothing for this long is abandoned as stalled.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// An HTTP/1.1 client for plain and TLS URLs; cheap to clone (clones share the connection pool).
#[derive(Clone, Debug)]
pub struct HttpClient {
    inner: Client<hyper_rustls::HttpsConnector<HttpConnector<GuardedResolver>>, Body>,
    guard: Option<AddressGuard>,
}

/// The address policy a guarded client enforces; shared, so its owner may change it later.
#[derive(Clone, Debug)]
pub struct AddressGuard(Arc<RwLock<AddressPolicy>>);

impl AddressGuard {
    /// A guard enforcing `policy`.
    pub fn new(policy: AddressPolicy) -> Self {
        Self(Arc::new(RwLock::new(policy)))
    }

    /// Replaces the policy; connections made from then on follow it.
    pub fn set(&self, policy: AddressPolicy) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = policy;
    }

    /// The policy in force.
    pub fn policy(&self) -> AddressPolicy {
        *self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// `Err` names the address and the rule it breaks.
    pub fn check(&self, host: &str, ip: IpAddr) -> Result<(), String> {
        self.policy()
            .check(classify_ip(ip))
            .map_err(|why| if host == ip.to_string() { format!("{ip} {why}") } else { format!("{host} resolves to {ip}, which {why}") })
    }
}

/// The system resolver, with every answer checked against the guard (if any) before a
/// connection may use it.
#[derive(Clone, Debug)]
struct GuardedResolver {
    inner: GaiResolver,
    guard: Option<AddressGuard>,
}

type Addrs = std::vec::IntoIter<SocketAddr>;

impl tower_service::Service<Name> for GuardedResolver {
    type Response = Addrs;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Addrs, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let host = name.as_str().to_owned();
        let lookup = self.inner.call(name);
        let guard = self.guard.clone();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = lookup.await?.collect();
            if let Some(guard) = guard {
                // One refused answer refuses the name: a relay does not get to pick per attempt.
                for addr in &addrs {
                    guard.check(&host, addr.ip()).map_err(|why| std::io::Error::new(std::io::ErrorKind::PermissionDenied, why))?;
                }
            }
            Ok(addrs.into_iter())
        })
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    /// A client trusting the system roots and the process's CA files ([`crate::tls`]).
    pub fn new() -> Self {
        Self::build(None, crate::tls::client_config())
    }

    /// A client that connects only to addresses `guard` accepts (the directory's, for relays).
    pub fn guarded(guard: AddressGuard) -> Self {
        Self::build(Some(guard), crate::tls::client_config())
    }

    /// A client verifying `https://` servers with `tls` instead of the process's trust.
    pub fn with_tls(tls: Arc<rustls::ClientConfig>) -> Self {
        Self::build(None, tls)
    }

    fn build(guard: Option<AddressGuard>, tls: Arc<rustls::ClientConfig>) -> Self {
        let mut connector = HttpConnector::new_with_resolver(GuardedResolver { inner: GaiResolver::new(), guard: guard.clone() });
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        // The TLS layer wraps it, so the plain connector must let `https://` through.
        connector.enforce_http(false);
        let connector =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(Arc::unwrap_or_clone(tls)).https_or_http().enable_http1().wrap_connector(connector);
        Self { inner: Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector), guard }
    }

    /// Sends a request; waits at most `timeout` for the response head.
    pub async fn send(&self, req: Request<Body>, timeout: Duration) -> Result<Response<Incoming>, NetError> {
        let uri = req.uri().to_string();
        if !(uri.starts_with("http://") || uri.starts_with("https://")) {
            return Err(NetError::Config(format!("{uri}: only http:// and https:// URLs are supported")));
        }
        if let (Some(guard), Some(host)) = (&self.guard, req.uri().host()) {
            // Names are checked by the resolver; IP literals never reach it.
            if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
                guard.check(&ip.to_string(), ip).map_err(|reason| NetError::Unreachable { url: uri.clone(), reason: format!("not connecting: {reason}") })?;
            }
        }
        match tokio::time::timeout(timeout, self.inner.request(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                let mut reason = error_chain(&e);
                if reason.contains("invalid peer certificate") {
                    reason.push_str(" (to trust a private CA, pass --ca-file FILE or set ODI_CA_FILE)");
                }
                Err(NetError::Unreachable { url: uri, reason })
            }
            Err(_) => Err(NetError::Unreachable { url: uri, reason: format!("no answer within {}s", timeout.as_secs()) }),
        }
    }

    /// Builds and sends a request signed by `key` (the node API).
    pub async fn signed(&self, key: &SigningKey, method: Method, url: &str, body: Vec<u8>, timeout: Duration) -> Result<Response<Incoming>, NetError> {
        self.signed_exchange(key, method, url, body, timeout).await.map(|(resp, _)| resp)
    }

    /// Like [`Self::signed`], and returns the signature headers the request was sent with, which
    /// a signed answer is bound to ([`auth::verify_answer`]).
    pub async fn signed_exchange(
        &self,
        key: &SigningKey,
        method: Method,
        url: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<(Response<Incoming>, auth::SignedHeaders), NetError> {
        let uri: http::Uri = url.parse().map_err(|_| NetError::Config(format!("`{url}` is not a URL")))?;
        let (path, query) = (uri.path().to_owned(), uri.query().unwrap_or("").to_owned());
        let signed = auth::sign(key, method.as_str(), &path, &query, &body, unix_now(), &crate::random_bytes::<16>());
        let sent = signed.clone();
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(h) = req.headers_mut() {
            for (name, value) in [("content-digest", signed.content_digest), ("signature-input", signed.signature_input), ("signature", signed.signature)] {
                h.insert(name, HeaderValue::from_str(&value).map_err(|_| NetError::Config("unencodable signature header".into()))?);
            }
            if !body.is_empty() {
                h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            }
        }
        let req = req.body(full(body)).map_err(|e| NetError::Config(e.to_string()))?;
        Ok((self.send(req, timeout).await?, sent))
    }
}

/// Reads a whole body of at most `limit` bytes.
pub async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, NetError> {
    let limited = http_body_util::Limited::new(body, limit);
    match tokio::time::timeout(STALL_TIMEOUT, limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) => Err(NetError::Protocol(format!("cannot read response body: {e}"))),
        Err(_) => Err(NetError::Protocol("response body stalled".into())),
    }
}

/// Reads a JSON response, turning a non-2xx status into an error carrying its one-line reason.
pub async fn read_json<T: serde::de::DeserializeOwned>(resp: Response<Incoming>) -> Result<T, NetError> {
    let status = resp.status();
    let body = read_body(resp.into_body(), MAX_JSON_BODY).await?;
    if !status.is_success() {
        return Err(NetError::Status { status, reason: String::from_utf8_lossy(&body).trim().chars().take(500).collect() });
    }
    serde_json::from_slice(&body).map_err(|e| NetError::Protocol(format!("malformed JSON from peer: {e}")))
}

/// A response body as a `ByteStream` for a store, failing if it stalls.
pub fn body_stream(body: Incoming) -> ByteStream<'static> {
    let stream = BodyStream::new(body).filter_map(|frame| async move {
        match frame {
            Ok(frame) => frame.into_data().ok().map(Ok),
            Err(e) => Some(Err(StorageError::Input(e.to_string()))),
        }
    });
    Box::pin(stall_guard(Box::pin(stream)))
}

fn stall_guard<S>(stream: S) -> impl futures_util::Stream<Item = Result<Bytes, StorageError>> + Send
where
    S: futures_util::Stream<Item = Result<Bytes, StorageError>> + Send + Unpin,
{
    futures_util::stream::unfold(stream, |mut s| async move {
        match tokio::time::timeout(STALL_TIMEOUT, s.next()).await {
            Ok(Some(item)) => Some((item, s)),
            Ok(None) => None,
            Err(_) => Some((Err(StorageError::Input(format!("no data for {}s", STALL_TIMEOUT.as_secs()))), s)),
        }
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Reads `take` bytes of a body after skipping its first `skip`, then stops (the rest is never
/// read: dropping the body ends the connection). With `exact`, one byte more is read if sent,
/// so that a caller checking the span's length sees an answer that sent too much.
pub async fn read_span(body: Incoming, skip: u64, take: u64, exact: bool) -> Result<Bytes, NetError> {
    let want = take + u64::from(exact);
    let read = async {
        let mut body = body;
        let mut seen = 0u64;
        let mut out = bytes::BytesMut::with_capacity(usize::try_from(want).unwrap_or(0).min(16 << 20));
        while (out.len() as u64) < want {
            let Some(frame) = body.frame().await else { break };
            let frame = frame.map_err(|e| NetError::Protocol(format!("cannot read response body: {e}")))?;
            let Ok(data) = frame.into_data() else { continue };
            let (start, end) = (seen, seen + data.len() as u64);
            seen = end;
            if end <= skip {
                continue;
            }
            let from = skip.saturating_sub(start) as usize;
            let room = (want - out.len() as u64) as usize;
            let to = data.len().min(from + room);
            out.extend_from_slice(&data[from..to]);
        }
        Ok(out.freeze())
    };
    match tokio::time::timeout(STALL_TIMEOUT, read).await {
        Ok(result) => result,
        Err(_) => Err(NetError::Protocol("response body stalled".into())),
    }
}
