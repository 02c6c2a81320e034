//! The relay-facing node API, `/odi/v1/...`, every request signed by the node's key:
//! `POST enroll` and `POST heartbeat` (fed to `handle_message`), `GET watch` (a long poll on the
//! generation) and `GET|HEAD blobs/sha256/{hex}` (what a relay syncs from the directory).

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use odi_core::Digest;
use odi_core::auth::{Claim, ReplayGuard, SignedRequest};
use odi_core::directory::{Outcome, Reply};
use odi_core::message::{Message, NodeId, Refusal, RefusalCode};

use super::effects::execute;
use super::{BODY_DEADLINE, Shared, admin, lookup_error};
use crate::driver::Driver as _;
use crate::guard::ClientAddr;
use crate::http::{BlobRequest, Body, error, json, serve_blob};
use crate::unix_now;

/// Longest enrollment body: read before the sender is known to hold the token.
const MAX_ENROLL_BODY: usize = 64 << 10;
/// Node endpoints that carry no body still get a little slack.
const MAX_EMPTY_BODY: usize = 1 << 10;
/// Nonces remembered per node: a relay sends a few requests a second, and a nonce is kept for at
/// most its lifetime plus the clock skew (about six minutes).
const NONCES_PER_NODE: usize = 8192;
/// Past this many per-node guards, the empty ones are dropped.
const REPLAY_SWEEP_AT: usize = 4096;
/// Wrong enrollment tokens accepted from one address per minute.
pub(super) const ENROLL_FAILURES_PER_MINUTE: u32 = 10;
/// How long a watch request is held before it answers with no news.
const WATCH_HOLD: Duration = Duration::from_secs(25);

/// Longest body a node may send to each endpoint: an enrollment is small; a heartbeat lists what
/// the relay holds; the rest carry none.
fn node_body_limit(rest: &str) -> usize {
    match rest {
        "enroll" => MAX_ENROLL_BODY,
        "heartbeat" => admin::MAX_REQUEST_JSON,
        _ => MAX_EMPTY_BODY,
    }
}

/// Authenticates a node request, cheapest check first, so that a stranger costs the directory
/// nothing a relay needs: the signature headers are parsed (and must be fresh, and made after this
/// directory started); a key that is not an enrolled relay is refused right there, unless it
/// enrolls, and then only a correct token (read from a body of at most 64 KiB) earns a signature
/// check. For a known relay the signature over the head is checked *before* its body is read;
/// the body (bounded per endpoint, with a deadline) must then match the signed `Content-Digest`.
/// Nonces are remembered per known key, in a guard of bounded size, so no stranger can fill it.
async fn authenticate_node(shared: &Arc<Shared>, parts: &http::request::Parts, body: Incoming, rest: &str) -> Result<(NodeId, Bytes), Response<Body>> {
    let client = parts.extensions.get::<ClientAddr>().map(|c| c.0);
    let log_refusal = |status: StatusCode, why: &str| {
        if let Some(held_back) = shared.refusal_log.allow() {
            tracing::info!(client = ?client, %status, reason = %why, held_back, "refused a node request");
        }
    };
    let refuse = |status: StatusCode, why: String| {
        log_refusal(status, &why);
        error(status, format!("node request refused: {why}"))
    };
    let head = signed_head(parts);
    let now = unix_now();
    let claim = match Claim::parse(&head, now, shared.started) {
        Ok(c) => c,
        Err(e) => return Err(refuse(StatusCode::UNAUTHORIZED, e.to_string())),
    };
    let from = claim.keyid();
    let enrolling = parts.method == Method::POST && rest == "enroll";
    if !enrolling && !shared.lock().knows_relay(&from) {
        log_refusal(StatusCode::NOT_FOUND, "not an enrolled relay");
        // The relay's machine enrolls again on this answer (the directory may have lost it).
        let reply = Message::Refused(Refusal { code: RefusalCode::UnknownRelay, reason: "this directory does not know the relay; enroll again".into() });
        return Err(json(StatusCode::NOT_FOUND, &reply));
    }
    if enrolling
        && let Some(addr) = client
        && let Err(wait) = shared.enroll_failures.check(addr)
    {
        let mut resp = error(StatusCode::TOO_MANY_REQUESTS, "too many wrong enrollment tokens from this address; wait and retry");
        if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return Err(resp);
    }
    if !enrolling && let Err(e) = claim.verify() {
        return Err(refuse(StatusCode::UNAUTHORIZED, e.to_string()));
    }
    let limit = node_body_limit(rest);
    let body = match tokio::time::timeout(BODY_DEADLINE, http_body_util::Limited::new(body, limit).collect()).await {
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(refuse(StatusCode::PAYLOAD_TOO_LARGE, format!("body over {limit} bytes for /odi/v1/{rest}")));
        }
        Ok(Err(e)) => return Err(refuse(StatusCode::BAD_REQUEST, format!("cannot read the body: {e}"))),
        Err(_) => return Err(refuse(StatusCode::REQUEST_TIMEOUT, format!("the body did not arrive within {} s", BODY_DEADLINE.as_secs()))),
    };
    if let Err(e) = claim.check_body(&body) {
        return Err(refuse(StatusCode::UNAUTHORIZED, e.to_string()));
    }
    if enrolling {
        // The token first (one keyed hash), the signature only for a holder of the token.
        let token_ok = match serde_json::from_slice::<Message>(&body) {
            Ok(Message::Enroll(req)) => shared.lock().accepts_enroll_token(&req.token),
            _ => return Err(refuse(StatusCode::BAD_REQUEST, "/odi/v1/enroll takes an enroll message".into())),
        };
        if !token_ok {
            if let Some(addr) = client {
                shared.enroll_failures.failed(addr);
            }
            return Err(refuse(StatusCode::FORBIDDEN, "enrollment token is wrong; set ODI_ENROLL_TOKEN to the directory's enroll token".into()));
        }
        if let Err(e) = claim.verify() {
            return Err(refuse(StatusCode::UNAUTHORIZED, e.to_string()));
        }
    }
    let remembered = {
        let mut guards = shared.replay.lock().unwrap_or_else(PoisonError::into_inner);
        let outcome = guards.entry(from).or_insert_with(|| ReplayGuard::new(NONCES_PER_NODE)).check_and_insert(claim.params(), now);
        if guards.len() > REPLAY_SWEEP_AT {
            guards.retain(|_, g| !g.is_empty());
        }
        outcome
    };
    match remembered {
        Ok(()) => Ok((from, body)),
        Err(e) => Err(refuse(StatusCode::UNAUTHORIZED, e.to_string())),
    }
}

/// Answers a node request. Every answer but a blob's is signed by this directory's key and
/// bound to the request (`odi_core::auth::sign_answer`): a relay applies only answers its pinned
/// directory key signed for the request it sent. Blob bodies are checked against the manifests
/// of a signed assignment, chunk by chunk, instead.
pub(super) async fn node(shared: &Arc<Shared>, req: Request<Incoming>, rest: &str) -> Response<Body> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let request_sig = header("signature-input").zip(header("signature"));
    let resp = answer(shared, req, rest).await;
    match request_sig {
        Some((input, signature)) if !rest.starts_with("blobs/") => sign_response(&shared.key, resp, &input, &signature).await,
        _ => resp,
    }
}

/// Signs an in-memory answer for the request whose signature headers were `input` and
/// `signature`; an answer to a request with an unreadable signature goes unsigned (a relay
/// refuses it, as it refuses any unsigned answer).
async fn sign_response(key: &ed25519_dalek::SigningKey, resp: Response<Body>, input: &str, signature: &str) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    let bytes = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot build the answer: {e}")),
    };
    if let Ok(signed) = odi_core::auth::sign_answer(key, parts.status.as_u16(), &bytes, input, signature, unix_now()) {
        for (name, value) in [("content-digest", signed.content_digest), ("signature-input", signed.signature_input), ("signature", signed.signature)] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                parts.headers.insert(name, v);
            }
        }
    }
    Response::from_parts(parts, crate::http::full(bytes))
}

async fn answer(shared: &Arc<Shared>, req: Request<Incoming>, rest: &str) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let (from, body) = match authenticate_node(shared, &parts, body, rest).await {
        Ok(ok) => ok,
        Err(refusal) => return refusal,
    };
    let known = shared.lock().knows_relay(&from);
    match (&parts.method, rest) {
        (&Method::POST, "enroll" | "heartbeat") => {
            let msg: Message = match serde_json::from_slice(&body) {
                Ok(m) => m,
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")),
            };
            let expected = matches!((&msg, rest), (Message::Enroll(_), "enroll") | (Message::Heartbeat(_), "heartbeat"));
            if !expected {
                return error(StatusCode::BAD_REQUEST, format!("/odi/v1/{rest} takes a {rest} message"));
            }
            let wall = unix_now();
            let (reply, effects) = shared.with_machine(|d, now| d.handle_message(from, msg, now, wall));
            execute(shared, effects).await;
            let reply = match reply {
                Reply::Now(reply) => reply,
                // The write it waited for was reported by `execute`.
                Reply::AfterStorage(id) => match shared.with_machine(|d, _| d.take_outcome(id)).0 {
                    Some(Outcome::Reply(reply)) => reply,
                    other => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("the request ended unexpectedly: {other:?}")),
                },
            };
            let status = match &reply {
                Message::Refused(r) => match r.code {
                    RefusalCode::BadToken => StatusCode::FORBIDDEN,
                    RefusalCode::UnknownRelay => StatusCode::NOT_FOUND,
                    RefusalCode::BadRequest => StatusCode::BAD_REQUEST,
                    RefusalCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                },
                _ => StatusCode::OK,
            };
            json(status, &reply)
        }
        _ if !known => error(StatusCode::FORBIDDEN, "this node is not an enrolled relay"),
        (&Method::GET, "watch") => {
            let after: Option<u64> = parts.uri.query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("after="))).and_then(|v| v.parse().ok());
            let mut rx = shared.generation.subscribe();
            let current = *rx.borrow_and_update();
            if after == Some(current) {
                let _ = tokio::time::timeout(WATCH_HOLD, rx.changed()).await;
            }
            let generation = *rx.borrow();
            json(StatusCode::OK, &serde_json::json!({ "generation": generation }))
        }
        (&Method::GET | &Method::HEAD, blob) if blob.starts_with("blobs/sha256/") => {
            let hex = &blob["blobs/sha256/".len()..];
            let digest = match Digest::from_hex(hex) {
                Ok(d) => d,
                Err(e) => return error(StatusCode::BAD_REQUEST, e),
            };
            if let Err(e) = shared.lock().manifest(&digest) {
                return lookup_error(&e);
            }
            serve_held_blob(shared, &parts, &digest, &shared.node_blob_bytes).await
        }
        _ => error(StatusCode::NOT_FOUND, format!("no such node endpoint: {} /odi/v1/{rest}", parts.method)),
    }
}

/// Serves a blob the store holds to another node (a relay or a linked directory), with exact
/// ranges, and adds the bytes of a whole `GET` to `sent`.
pub(super) async fn serve_held_blob(shared: &Shared, parts: &http::request::Parts, digest: &Digest, sent: &std::sync::atomic::AtomicU64) -> Response<Body> {
    let blob =
        BlobRequest { method: &parts.method, headers: &parts.headers, digest, digests: &shared.digests, media_type: "application/octet-stream", limiter: None };
    let resp = serve_blob(shared.store.as_ref(), &blob).await;
    if parts.method == Method::GET && resp.status().is_success() {
        let len = resp.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        sent.fetch_add(len, std::sync::atomic::Ordering::Relaxed);
    }
    resp
}

/// The signature-bearing parts of a signed request's head, the body not yet read.
pub(super) fn signed_head(parts: &http::request::Parts) -> SignedRequest<'_> {
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    SignedRequest {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        body: &[],
        content_digest: header("content-digest"),
        signature_input: header("signature-input"),
        signature: header("signature"),
    }
}
