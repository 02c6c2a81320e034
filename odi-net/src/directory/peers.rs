//! The directory-to-directory (federation) API, `/peer/v1/...`, and its client side.
//!
//! Every request is signed with the sending directory's key (the RFC 9421 profile of
//! `odi_core::auth`, as relays sign theirs) and checked cheapest first: signature headers parsed
//! and fresh; a key that is not a pinned peer refused right there (except for `POST link`,
//! which must first show this directory's link token); then the signature over the head; then
//! the body, bounded per endpoint and with a deadline, against the signed `Content-Digest`; then
//! the nonce, in that key's replay guard.
//! - `POST /peer/v1/link` `{token, url, catalogs, tags}`: the handshake. The token is checked
//!   before the signature; the answer `{id, url, catalogs, tags, signature}` is signed by this
//!   directory's key over [`answer_bytes`], which binds it to the request's `Content-Digest`, so
//!   the caller pins the key that answered *this* request.
//! - `POST /peer/v1/notify` `{head}`: the sender's feed head; the receiver pulls if behind.
//! - `GET /peer/v1/changes?since=N`: a `federation::Batch` for that peer's link.
//! - `GET|HEAD /peer/v1/blobs/sha256/{hex}`: a blob this directory holds, with ranges, for the
//!   multi-source transfer engine.

use std::path::Path;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use odi_core::Digest;
use odi_core::auth::{Claim, ReplayGuard};
use odi_core::federation::FetchError;
use odi_core::manifest::ChunkManifest;
use odi_core::message::NodeId;
use odi_core::path::CatalogName;
use odi_core::storage::TokenRole;
use serde::{Deserialize, Serialize};

use super::effects::execute;
use super::{BODY_DEADLINE, Shared, lookup_error};
use crate::client::{self, HttpClient};
use crate::driver::Driver as _;
use crate::guard::ClientAddr;
use crate::http::{Body, error, json};
use crate::transfer::{Downloader, Redirects, Source};
use crate::{NetError, unix_now};

/// The prefix of every peer endpoint.
pub(super) const PREFIX: &str = "/peer/v1/";
/// Longest link request: read before the sender is known to hold the token.
const MAX_LINK_BODY: usize = 64 << 10;
/// A notify carries one number.
const MAX_NOTIFY_BODY: usize = 1 << 10;
/// Longest batch answer read from a peer (4096 entries of a few KiB at most).
pub(super) const MAX_BATCH_BODY: usize = 64 << 20;
/// Nonces remembered per peer: a few requests a second, each nonce kept about six minutes.
const NONCES_PER_PEER: usize = 8192;
/// How long a handshake, notify or pull may wait for its answer head.
pub(super) const PEER_TIMEOUT: Duration = Duration::from_secs(15);
/// Wrong link tokens accepted from one address per minute.
pub(super) const LINK_FAILURES_PER_MINUTE: u32 = 10;
/// Domain of the handshake answer's signature.
const ANSWER_DOMAIN: &[u8] = b"odi-peer-link-answer-v1\n";

/// `POST /peer/v1/link`: what the linking directory sends.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LinkRequest {
    /// The receiver's link token.
    pub token: String,
    /// The sender's base URL, where the receiver reaches it.
    pub url: String,
    #[serde(default)]
    pub catalogs: Vec<CatalogName>,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// The receiver's signed answer to a link request.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub(super) struct LinkAnswer {
    pub id: NodeId,
    pub url: String,
    /// Hex of the Ed25519 signature over [`answer_bytes`].
    pub signature: String,
}

/// `POST /peer/v1/notify`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Notify {
    pub head: u64,
}

/// What the handshake answer signs: the domain, the request's `Content-Digest` (so an answer
/// cannot be replayed to another request), the answering key and its URL.
pub(super) fn answer_bytes(request_digest: &str, id: &NodeId, url: &str) -> Vec<u8> {
    let mut out = ANSWER_DOMAIN.to_vec();
    out.extend_from_slice(request_digest.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(id.to_string().as_bytes());
    out.push(b'\n');
    out.extend_from_slice(url.as_bytes());
    out
}

pub(super) fn sign_answer(key: &SigningKey, request_digest: &str, url: &str) -> LinkAnswer {
    let id = NodeId(key.verifying_key().to_bytes());
    let sig = key.sign(&answer_bytes(request_digest, &id, url));
    LinkAnswer { id, url: url.to_owned(), signature: hex::encode(sig.to_bytes()) }
}

fn check_answer(answer: &LinkAnswer, request_digest: &str) -> Result<(), String> {
    let key = VerifyingKey::from_bytes(&answer.id.0).map_err(|_| format!("the peer answered with an invalid key {}", answer.id))?;
    let mut sig = [0u8; 64];
    hex::decode_to_slice(answer.signature.trim(), &mut sig).map_err(|_| "the peer's answer carries a malformed signature".to_owned())?;
    key.verify(&answer_bytes(request_digest, &answer.id, &answer.url), &ed25519_dalek::Signature::from_bytes(&sig))
        .map_err(|_| format!("the peer's answer does not verify under the key it names ({}); not linking", answer.id))
}

/// Why a handshake failed, as the admin who asked for it should read it.
#[derive(Debug, thiserror::Error)]
pub(super) enum HandshakeError {
    #[error("cannot reach the peer at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the peer at {url} refused the link token (403); set ODI_PEER_TOKEN to the link.token of that directory")]
    BadToken { url: String },
    #[error("the peer at {url} refused the link: {status} {reason}")]
    Refused { url: String, status: StatusCode, reason: String },
    #[error("the peer at {url} answered badly: {0}", url = .1)]
    BadAnswer(String, String),
}

/// Runs the handshake as the linking side: a request signed with `key` to `peer_url`,
/// answered by a signature of the peer's key, which the caller then pins.
pub(super) async fn handshake(client: &HttpClient, key: &SigningKey, peer_url: &str, request: &LinkRequest) -> Result<LinkAnswer, HandshakeError> {
    let body = serde_json::to_vec(request).map_err(|e| HandshakeError::BadAnswer(e.to_string(), peer_url.to_owned()))?;
    let digest = odi_core::auth::content_digest(&body);
    let url = format!("{peer_url}{PREFIX}link");
    let resp = client.signed(key, Method::POST, &url, body, PEER_TIMEOUT).await.map_err(|e| match e {
        NetError::Unreachable { reason, .. } => HandshakeError::Unreachable { url: peer_url.to_owned(), reason },
        other => HandshakeError::Unreachable { url: peer_url.to_owned(), reason: other.to_string() },
    })?;
    let status = resp.status();
    let bytes = client::read_body(resp.into_body(), MAX_LINK_BODY).await.map_err(|e| HandshakeError::BadAnswer(e.to_string(), peer_url.to_owned()))?;
    if status == StatusCode::FORBIDDEN {
        return Err(HandshakeError::BadToken { url: peer_url.to_owned() });
    }
    if !status.is_success() {
        let reason = String::from_utf8_lossy(&bytes).trim().chars().take(300).collect();
        return Err(HandshakeError::Refused { url: peer_url.to_owned(), status, reason });
    }
    let answer: LinkAnswer = serde_json::from_slice(&bytes)
        .map_err(|_| HandshakeError::BadAnswer("its answer is not a directory's link answer (is it an ODI directory?)".into(), peer_url.to_owned()))?;
    check_answer(&answer, &digest).map_err(|why| HandshakeError::BadAnswer(why, peer_url.to_owned()))?;
    Ok(answer)
}

/// Which body limit each peer endpoint gets.
fn peer_body_limit(rest: &str) -> usize {
    match rest {
        "link" => MAX_LINK_BODY,
        "notify" => MAX_NOTIFY_BODY,
        _ => MAX_NOTIFY_BODY,
    }
}

/// A peer request that passed every check: who signed it, its body, and the request's
/// `Content-Digest` (the handshake answer signs over it).
pub(super) struct PeerRequest {
    pub from: NodeId,
    pub body: Bytes,
    pub content_digest: String,
}

/// Authenticates a peer request, cheapest check first (see the module doc). `is_peer` says
/// whether a key is pinned; `POST link` is let through to the token check instead.
pub(super) async fn authenticate(
    shared: &Shared,
    parts: &http::request::Parts,
    body: Incoming,
    rest: &str,
    is_peer: impl Fn(&NodeId) -> bool,
) -> Result<PeerRequest, Response<Body>> {
    let client = parts.extensions.get::<ClientAddr>().map(|c| c.0);
    let refuse = |status: StatusCode, why: String| {
        if let Some(held_back) = shared.refusal_log.allow() {
            tracing::info!(client = ?client, %status, reason = %why, held_back, "refused a peer request");
        }
        error(status, format!("peer request refused: {why}"))
    };
    let head = super::node::signed_head(parts);
    let now = unix_now();
    let claim = Claim::parse(&head, now, shared.started).map_err(|e| refuse(StatusCode::UNAUTHORIZED, e.to_string()))?;
    let from = claim.keyid();
    let linking = parts.method == Method::POST && rest == "link";
    if !linking && !is_peer(&from) {
        return Err(refuse(StatusCode::FORBIDDEN, format!("{from} is not a linked directory; link it first with `odi link add`")));
    }
    if linking
        && let Some(addr) = client
        && let Err(wait) = shared.link_failures.check(addr)
    {
        return Err(refuse(StatusCode::TOO_MANY_REQUESTS, format!("too many wrong link tokens from this address; retry in {}s", wait.as_secs().max(1))));
    }
    if !linking {
        claim.verify().map_err(|e| refuse(StatusCode::UNAUTHORIZED, e.to_string()))?;
    }
    let limit = peer_body_limit(rest);
    let body = match tokio::time::timeout(BODY_DEADLINE, http_body_util::Limited::new(body, limit).collect()).await {
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(refuse(StatusCode::PAYLOAD_TOO_LARGE, format!("body over {limit} bytes for {PREFIX}{rest}")));
        }
        Ok(Err(e)) => return Err(refuse(StatusCode::BAD_REQUEST, format!("cannot read the body: {e}"))),
        Err(_) => return Err(refuse(StatusCode::REQUEST_TIMEOUT, format!("the body did not arrive within {} s", BODY_DEADLINE.as_secs()))),
    };
    claim.check_body(&body).map_err(|e| refuse(StatusCode::UNAUTHORIZED, e.to_string()))?;
    if linking {
        // The token first (one hash), the signature only for a holder of the token.
        let token_ok = match serde_json::from_slice::<LinkRequest>(&body) {
            Ok(req) => shared.lock().check_token(TokenRole::Link, req.token.trim()),
            Err(e) => return Err(refuse(StatusCode::BAD_REQUEST, format!("{PREFIX}link takes {{token, url, catalogs, tags}}: {e}"))),
        };
        if !token_ok {
            if let Some(addr) = client {
                shared.link_failures.failed(addr);
            }
            return Err(refuse(StatusCode::FORBIDDEN, "the link token is wrong; give this directory's link.token as ODI_PEER_TOKEN".into()));
        }
        claim.verify().map_err(|e| refuse(StatusCode::UNAUTHORIZED, e.to_string()))?;
    }
    let remembered = {
        let mut guards = shared.peer_replay.lock().unwrap_or_else(PoisonError::into_inner);
        guards.entry(from).or_insert_with(|| ReplayGuard::new(NONCES_PER_PEER)).check_and_insert(claim.params(), now)
    };
    remembered.map_err(|e| refuse(StatusCode::UNAUTHORIZED, e.to_string()))?;
    let content_digest = head.content_digest.unwrap_or_default().to_owned();
    Ok(PeerRequest { from, body, content_digest })
}

/// Sends a signed notify of `head` to the peer at `url`.
pub(super) async fn send_notify(client: &HttpClient, key: &SigningKey, url: &str, head: u64) -> Result<(), NetError> {
    let body = serde_json::to_vec(&Notify { head }).map_err(|e| NetError::Protocol(e.to_string()))?;
    let resp = client.signed(key, Method::POST, &format!("{url}{PREFIX}notify"), body, PEER_TIMEOUT).await?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let reason = client::read_body(resp.into_body(), MAX_NOTIFY_BODY * 4).await.map(|b| String::from_utf8_lossy(&b).trim().to_owned()).unwrap_or_default();
    Err(NetError::Status { status, reason })
}

/// Pulls the changes after `since` from the peer at `url`.
pub(super) async fn pull(client: &HttpClient, key: &SigningKey, url: &str, since: u64) -> Result<odi_core::federation::Batch, NetError> {
    let resp = client.signed(key, Method::GET, &format!("{url}{PREFIX}changes?since={since}"), Vec::new(), PEER_TIMEOUT).await?;
    let status = resp.status();
    let body = client::read_body(resp.into_body(), MAX_BATCH_BODY).await?;
    if !status.is_success() {
        return Err(NetError::Status { status, reason: String::from_utf8_lossy(&body).trim().chars().take(300).collect() });
    }
    serde_json::from_slice(&body).map_err(|e| NetError::Protocol(format!("malformed batch: {e}")))
}

/// Fetches `manifest`'s blob from `sources` with the verified multi-source transfer engine
/// (every chunk checked against the manifest before it is written; a source that sends a
/// wrong chunk is struck and the chunk fetched elsewhere) into a resumable partial file under
/// `partials`, then stores it in the directory's blob store, which checks it whole once more.
/// Returns the bytes fetched (not counting resumed chunks).
pub(super) async fn fetch_blob(
    shared: &Shared,
    partials: &Path,
    manifest: &ChunkManifest,
    sources: &[Source],
) -> Result<crate::transfer::Report, (String, FetchError)> {
    let failed = |e: String| (e, FetchError::Unavailable);
    let digest = manifest.digest();
    if sources.is_empty() {
        return Err(failed(format!("no source known for {digest}")));
    }
    tokio::fs::create_dir_all(partials).await.map_err(|e| failed(format!("cannot create {}: {e}", partials.display())))?;
    let part = partials.join(format!("{}.part", digest.to_hex()));
    let done = partials.join(format!("{}.blob", digest.to_hex()));
    let (partial, have) = crate::transfer::PartialFile::open(&part, manifest.clone()).await.map_err(|e| failed(e.to_string()))?;
    let downloader = Downloader {
        client: shared.client.clone(),
        key: Some(shared.key.clone()),
        limiter: None,
        config: odi_core::transfer::TransferConfig::default(),
        redirects: Redirects::SameOrigin,
    };
    let (partial, report) = match downloader.download(manifest, sources, partial, have, &|_| {}).await {
        Ok(ok) => ok,
        Err((e, report)) => {
            log_rejected(&digest, &report);
            // Every source that answered sent wrong bytes, or none could be reached.
            let why = if report.chunks_rejected > 0 && report.bytes_fetched == 0 { FetchError::Verify } else { FetchError::Unavailable };
            return Err((e.to_string(), why));
        }
    };
    log_rejected(&digest, &report);
    partial.finish(&done).await.map_err(|e| (e.to_string(), FetchError::Verify))?;
    let stored = async {
        use tokio::io::AsyncReadExt as _;
        let file = tokio::fs::File::open(&done).await.map_err(|e| e.to_string())?;
        let stream = futures_util::stream::unfold(file, |mut f| async move {
            let mut buf = vec![0u8; 256 << 10];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Bytes::from(buf)), f))
                }
                Err(e) => Some((Err(odi_core::storage::StorageError::Input(e.to_string())), f)),
            }
        });
        shared.store.put_verified(manifest, Box::pin(stream)).await.map_err(|e| e.to_string())
    }
    .await;
    let _ = tokio::fs::remove_file(&done).await;
    stored.map(|()| report).map_err(failed)
}

fn log_rejected(digest: &Digest, report: &crate::transfer::Report) {
    for (source, chunk) in &report.rejected {
        tracing::warn!(%digest, %source, chunk, "a source sent a chunk that does not match its hash; refused, fetched elsewhere");
    }
}

/// Sources for a blob: each peer's blob endpoint (signed), then relays' public blob URLs.
pub(super) fn blob_sources(digest: &Digest, peers: &[String], relays: &[String]) -> Vec<Source> {
    let hex = digest.to_hex();
    let mut out: Vec<Source> = peers.iter().map(|u| Source { url: format!("{u}{PREFIX}blobs/sha256/{hex}"), signed: true }).collect();
    out.extend(relays.iter().map(|u| Source { url: format!("{u}/blobs/sha256/{hex}"), signed: false }));
    out
}

/// Routes `/peer/v1/{rest}` after [`authenticate`].
pub(super) async fn peer(shared: &Arc<Shared>, req: Request<Incoming>, rest: &str) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let request = match authenticate(shared, &parts, body, rest, |k| shared.lock().is_peer(k)).await {
        Ok(r) => r,
        Err(refusal) => return refusal,
    };
    let from = request.from;
    match (&parts.method, rest) {
        (&Method::POST, "link") => accept_link(shared, request).await,
        (&Method::POST, "notify") => {
            let Ok(Notify { head }) = serde_json::from_slice::<Notify>(&request.body) else {
                return error(StatusCode::BAD_REQUEST, format!("{PREFIX}notify takes {{\"head\": N}}"));
            };
            let (outcome, effects) = shared.with_machine(|d, now| d.handle_peer_notify(from, head, now));
            execute(shared, effects).await;
            match outcome {
                Ok(()) => no_content(),
                Err(refusal) => refused(from, &refusal),
            }
        }
        (&Method::GET, "changes") => {
            let Some(since) = query_u64(parts.uri.query(), "since") else {
                return error(StatusCode::BAD_REQUEST, format!("{PREFIX}changes takes ?since=N"));
            };
            let (batch, effects) = shared.with_machine(|d, _| d.peer_changes(from, since, odi_core::federation::MAX_BATCH_ENTRIES));
            execute(shared, effects).await;
            match batch {
                Ok(batch) => json(StatusCode::OK, &batch),
                Err(refusal) => refused(from, &refusal),
            }
        }
        (&Method::GET, "holders") => {
            // Relays of this directory that hold a digest: more sources for the peer's fetch.
            let Some(digest) = parts.uri.query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("digest="))).and_then(|d| d.parse::<Digest>().ok())
            else {
                return error(StatusCode::BAD_REQUEST, format!("{PREFIX}holders takes ?digest=sha256:HEX"));
            };
            json(StatusCode::OK, &relay_holders(shared, &digest))
        }
        (&Method::GET | &Method::HEAD, blob) if blob.starts_with("blobs/sha256/") => {
            let digest = match Digest::from_hex(&blob["blobs/sha256/".len()..]) {
                Ok(d) => d,
                Err(e) => return error(StatusCode::BAD_REQUEST, e),
            };
            // Barred bytes are never served. Anything else the store holds is, bound or not:
            // a conflict's loser, or a blob a received entry waits on, is held verified here
            // and the peer checks every chunk against the signed manifest anyway.
            if let Err(e @ odi_core::directory::LookupError::Expunged(_)) = shared.lock().manifest(&digest) {
                return lookup_error(&e);
            }
            super::node::serve_held_blob(shared, &parts, &digest, &shared.peer_blob_bytes_sent).await
        }
        _ => error(StatusCode::NOT_FOUND, format!("no such peer endpoint: {} {PREFIX}{rest}", parts.method)),
    }
}

/// The public URLs of this directory's ready relays assigned `digest`.
pub(super) fn relay_holders(shared: &Shared, digest: &Digest) -> Vec<String> {
    let now = shared.now();
    let m = shared.lock();
    let assigned = m.assigned_to(digest);
    m.relays(now).into_iter().filter(|r| assigned.contains(&r.id) && r.status == odi_core::directory::RelayStatus::Ready).map(|r| r.url.to_string()).collect()
}

fn query_u64(query: Option<&str>, key: &str) -> Option<u64> {
    query?.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')).and_then(|v| v.parse().ok())
}

fn no_content() -> Response<Body> {
    let mut resp = Response::new(crate::http::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}

/// A federation refusal: logged with the peer named, answered with its reason.
fn refused(from: NodeId, refusal: &odi_core::federation::Refusal) -> Response<Body> {
    tracing::warn!(peer = %from, reason = %refusal, "refused a peer's request");
    let status = match refusal {
        odi_core::federation::Refusal::UnknownPeer(_) => StatusCode::FORBIDDEN,
        _ => StatusCode::BAD_REQUEST,
    };
    error(status, refusal)
}

/// `POST /peer/v1/link`, the token already checked: pins the caller, stores the link, and
/// answers signed.
async fn accept_link(shared: &Arc<Shared>, request: PeerRequest) -> Response<Body> {
    let Ok(link) = serde_json::from_slice::<LinkRequest>(&request.body) else {
        return error(StatusCode::BAD_REQUEST, format!("{PREFIX}link takes {{token, url, catalogs, tags}}"));
    };
    let url = link.url.trim().trim_end_matches('/').to_owned();
    if let Err(e) = odi_core::message::RelayUrl::new(&url) {
        return error(StatusCode::BAD_REQUEST, format!("the linking directory's URL `{}` {}", e.url, e.why));
    }
    let Some(own_url) = shared.public_url.get().cloned() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "this directory does not know its own URL yet");
    };
    let fed = odi_core::federation::Link { peer: request.from, url: url.clone(), catalogs: link.catalogs, tags: link.tags };
    if let Err(resp) = super::admin::plan_and_commit(shared, |d| d.plan_link(fed)).await {
        return resp;
    }
    tracing::info!(peer = %request.from, %url, "linked with a directory (it asked, with the link token)");
    json(StatusCode::OK, &sign_answer(&shared.key, &request.content_digest, &own_url))
}

/// Asks the peer at `url` which of its relays hold `digest` (best effort: none on failure).
pub(super) async fn peer_holders(client: &HttpClient, key: &SigningKey, url: &str, digest: &Digest) -> Vec<String> {
    let ask = async {
        let resp = client.signed(key, Method::GET, &format!("{url}{PREFIX}holders?digest={digest}"), Vec::new(), PEER_TIMEOUT).await?;
        client::read_json::<Vec<String>>(resp).await
    };
    match ask.await {
        Ok(list) => list.into_iter().filter(|u| odi_core::message::RelayUrl::new(u).is_ok()).take(16).collect(),
        Err(e) => {
            tracing::debug!(peer = %url, error = %e, "cannot ask a linked directory which relays hold a blob");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handshake_answer_verifies_only_for_its_request_and_url() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let answer = sign_answer(&key, "sha-256=:AAAA:", "http://127.0.0.1:7800");
        assert!(check_answer(&answer, "sha-256=:AAAA:").is_ok());
        assert!(check_answer(&answer, "sha-256=:BBBB:").is_err(), "replayed to another request");
        let moved = LinkAnswer { url: "http://evil.example".into(), ..answer.clone() };
        assert!(check_answer(&moved, "sha-256=:AAAA:").is_err(), "URL changed");
        let other = LinkAnswer { id: NodeId(SigningKey::from_bytes(&[8; 32]).verifying_key().to_bytes()), ..answer };
        assert!(check_answer(&other, "sha-256=:AAAA:").is_err(), "another key");
    }
}
