//! Node request signing: a small, fixed profile of HTTP Message Signatures (RFC 9421).
//!
//! A signed request carries
//! ```text
//! Content-Digest: sha-256=:{base64 of SHA-256(body)}:
//! Signature-Input: odi=("@method" "@path" "@query" "content-digest");created=T;expires=T+60;nonce="N";keyid="{hex key}";alg="ed25519"
//! Signature: odi=:{base64 Ed25519 signature over the signature base}:
//! ```
//! Verification recomputes the base, checks the Ed25519 signature with the key named by `keyid`,
//! refuses expired, far-future or overlong signatures, and refuses a nonce seen before
//! (`ReplayGuard`). Only this profile is accepted; anything else is refused, never guessed at.

use std::collections::{BTreeSet, HashSet};

use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};

use crate::digest::Digest;
use crate::message::{CatalogHead, NodeId, SignedHead};
use crate::time::UnixTime;

/// How long a signature is valid for.
pub const SIGNATURE_LIFETIME: u64 = 60;
/// Longest lifetime accepted from a peer.
pub const MAX_SIGNATURE_LIFETIME: u64 = 300;
/// Clock skew tolerated between nodes.
pub const MAX_CLOCK_SKEW: u64 = 60;
const COMPONENTS: &str = r#"("@method" "@path" "@query" "content-digest")"#;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Why a signed request, answer or catalog head was refused.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SigError {
    /// The named signature header is absent.
    #[error("request is not signed: missing {0} header")]
    Missing(&'static str),
    /// The named header (or the head signature) is not in this profile's form.
    #[error("malformed {0} header")]
    Malformed(&'static str),
    /// The body is not the one `Content-Digest` names.
    #[error("Content-Digest does not match the body")]
    BodyDigest,
    /// Outside its validity window (with `MAX_CLOCK_SKEW` either side), or its lifetime is
    /// not positive or over `MAX_SIGNATURE_LIFETIME`.
    #[error("signature has expired or is not yet valid")]
    Expired,
    /// The signature does not verify under the key it names (or that key is not a valid
    /// Ed25519 point).
    #[error("signature is invalid for key {0}")]
    BadSignature(NodeId),
    /// The signer used this nonce before, in a signature not yet expired.
    #[error("nonce was already used: replay refused")]
    Replay,
    /// The [`ReplayGuard`] is full of unexpired nonces; the request may be sent again later.
    #[error("too many requests in flight to track their nonces; retry shortly")]
    ReplayCacheFull,
    /// Made before the verifying server started, so its nonce cannot have been remembered.
    #[error("signed before this node started; sign the request again")]
    BeforeStart,
    /// An answer whose nonce is not the request's.
    #[error("the answer is bound to another request (a replayed or misdirected answer)")]
    NotBound,
    /// An answer signed by a key other than the directory key the requester pinned.
    #[error("signed by {got}, not by the pinned directory key {pinned}")]
    WrongKey {
        /// The key the requester trusts.
        pinned: NodeId,
        /// The key that signed.
        got: NodeId,
    },
}

/// The parameters of one signature.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct SigParams {
    /// Unix seconds when it was made.
    pub created: u64,
    /// Unix seconds after which it no longer holds.
    pub expires: u64,
    /// Hex of the signer's fresh random bytes (1 to 64 alphanumerics when parsed): what
    /// [`ReplayGuard`] remembers, and what binds an answer to its request.
    pub nonce: String,
    /// The key that claims to have signed.
    pub keyid: NodeId,
}

impl SigParams {
    fn serialize(&self) -> String {
        self.serialize_with(COMPONENTS)
    }

    fn serialize_with(&self, components: &str) -> String {
        format!(r#"{components};created={};expires={};nonce="{}";keyid="{}";alg="ed25519""#, self.created, self.expires, self.nonce, self.keyid)
    }
}

/// The headers that carry a signature.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct SignedHeaders {
    /// `Content-Digest`: the SHA-256 of the body.
    pub content_digest: String,
    /// `Signature-Input`: what is covered, and the [`SigParams`].
    pub signature_input: String,
    /// `Signature`: the Ed25519 signature over the signature base.
    pub signature: String,
}

/// The `Content-Digest` value of `body`: `sha-256=:{base64 of SHA-256(body)}:`.
pub fn content_digest(body: &[u8]) -> String {
    format!("sha-256=:{}:", Digest::of(body).to_base64())
}

fn signature_base(method: &str, path: &str, query: &str, content_digest: &str, params: &SigParams) -> String {
    let query = if query.is_empty() { "?".to_owned() } else { format!("?{query}") };
    format!(
        "\"@method\": {}\n\"@path\": {path}\n\"@query\": {query}\n\"content-digest\": {content_digest}\n\"@signature-params\": {}",
        method.to_ascii_uppercase(),
        params.serialize()
    )
}

/// Signs a request. `nonce` must be fresh randomness from the caller (the core draws none).
pub fn sign(key: &SigningKey, method: &str, path: &str, query: &str, body: &[u8], now: UnixTime, nonce: &[u8; 16]) -> SignedHeaders {
    let params = SigParams { created: now.0, expires: now.0 + SIGNATURE_LIFETIME, nonce: hex::encode(nonce), keyid: NodeId(key.verifying_key().to_bytes()) };
    let content_digest = content_digest(body);
    let base = signature_base(method, path, query, &content_digest, &params);
    let signature = key.sign(base.as_bytes());
    SignedHeaders { content_digest, signature_input: format!("odi={}", params.serialize()), signature: format!("odi=:{}:", B64.encode(signature.to_bytes())) }
}

/// Parses `odi=(...);created=..;expires=..;nonce="..";keyid="..";alg="ed25519"` (our profile only).
pub fn parse_signature_input(value: &str) -> Result<SigParams, SigError> {
    parse_params(value, COMPONENTS)
}

fn parse_params(value: &str, components: &str) -> Result<SigParams, SigError> {
    let bad = || SigError::Malformed("Signature-Input");
    let rest = value.trim().strip_prefix("odi=").ok_or_else(bad)?;
    let rest = rest.strip_prefix(components).ok_or_else(bad)?;
    let (mut created, mut expires, mut nonce, mut keyid, mut alg) = (None, None, None, None, None);
    for param in rest.split(';').skip(1) {
        let (name, val) = param.split_once('=').ok_or_else(bad)?;
        let quoted = || val.strip_prefix('"').and_then(|v| v.strip_suffix('"')).ok_or_else(bad);
        match name {
            "created" if created.is_none() => created = Some(val.parse::<u64>().map_err(|_| bad())?),
            "expires" if expires.is_none() => expires = Some(val.parse::<u64>().map_err(|_| bad())?),
            "nonce" if nonce.is_none() => {
                let n = quoted()?;
                if n.is_empty() || n.len() > 64 || !n.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(bad());
                }
                nonce = Some(n.to_owned());
            }
            "keyid" if keyid.is_none() => keyid = Some(quoted()?.parse::<NodeId>().map_err(|_| bad())?),
            "alg" if alg.is_none() => alg = Some(quoted()?),
            _ => return Err(bad()),
        }
    }
    if rest.split(';').next() != Some("") || alg != Some("ed25519") {
        return Err(bad());
    }
    Ok(SigParams { created: created.ok_or_else(bad)?, expires: expires.ok_or_else(bad)?, nonce: nonce.ok_or_else(bad)?, keyid: keyid.ok_or_else(bad)? })
}

/// A request as seen by the verifier.
#[derive(Clone, Copy, Debug)]
pub struct SignedRequest<'a> {
    /// The HTTP method (upper-cased in the signature base).
    pub method: &'a str,
    /// The request's path, without its query.
    pub path: &'a str,
    /// The query string without its `?`; empty when there is none.
    pub query: &'a str,
    /// The body, checked against `content_digest` (not read by [`Claim::parse`]).
    pub body: &'a [u8],
    /// The `Content-Digest` header, if present.
    pub content_digest: Option<&'a str>,
    /// The `Signature-Input` header, if present.
    pub signature_input: Option<&'a str>,
    /// The `Signature` header, if present.
    pub signature: Option<&'a str>,
}

/// A request head whose signature parameters parsed and are fresh: who *claims* to have signed
/// it. Nothing is proven yet; the checks that cost something come after, in the order a server
/// wants them: [`Claim::verify`] (one Ed25519 verification over the head, which binds the body
/// through its `Content-Digest`), then [`Claim::check_body`] once the body is read, then the
/// nonce, in the signer's own [`ReplayGuard`]. So a server can refuse a key it does not know
/// before it verifies, reads or remembers anything.
#[derive(Clone, Debug)]
pub struct Claim {
    params: SigParams,
    content_digest: String,
    base: String,
    signature: [u8; 64],
}

impl Claim {
    /// Parses the signature headers of `req` (its body is not looked at) and checks that the
    /// signature is fresh at `now` and was made no earlier than `not_before` (a server refuses
    /// signatures made before it started, whose nonces it cannot have remembered).
    pub fn parse(req: &SignedRequest<'_>, now: UnixTime, not_before: UnixTime) -> Result<Self, SigError> {
        let content_digest = req.content_digest.ok_or(SigError::Missing("Content-Digest"))?;
        let params = parse_signature_input(req.signature_input.ok_or(SigError::Missing("Signature-Input"))?)?;
        let sig_b64 = req
            .signature
            .ok_or(SigError::Missing("Signature"))?
            .trim()
            .strip_prefix("odi=:")
            .and_then(|s| s.strip_suffix(':'))
            .ok_or(SigError::Malformed("Signature"))?;
        let signature: [u8; 64] = B64.decode(sig_b64).ok().and_then(|b| b.try_into().ok()).ok_or(SigError::Malformed("Signature"))?;
        if content_digest.len() > 100 {
            return Err(SigError::Malformed("Content-Digest"));
        }
        let fresh = params.created <= now.0 + MAX_CLOCK_SKEW
            && params.expires + MAX_CLOCK_SKEW > now.0
            && params.expires > params.created
            && params.expires - params.created <= MAX_SIGNATURE_LIFETIME;
        if !fresh {
            return Err(SigError::Expired);
        }
        if params.created < not_before.0 {
            return Err(SigError::BeforeStart);
        }
        let base = signature_base(req.method, req.path, req.query, content_digest, &params);
        Ok(Self { params, content_digest: content_digest.to_owned(), base, signature })
    }

    /// The key that claims to have signed.
    pub fn keyid(&self) -> NodeId {
        self.params.keyid
    }

    /// The signature's parameters, as parsed (for [`ReplayGuard::check_and_insert`]).
    pub fn params(&self) -> &SigParams {
        &self.params
    }

    /// Checks the Ed25519 signature over the head (method, path, query, `Content-Digest`).
    pub fn verify(&self) -> Result<(), SigError> {
        let key = VerifyingKey::from_bytes(&self.params.keyid.0).map_err(|_| SigError::BadSignature(self.params.keyid))?;
        key.verify_strict(self.base.as_bytes(), &ed25519_dalek::Signature::from_bytes(&self.signature)).map_err(|_| SigError::BadSignature(self.params.keyid))
    }

    /// Checks that `body` is the one the signed `Content-Digest` names.
    pub fn check_body(&self, body: &[u8]) -> Result<(), SigError> {
        if self.content_digest == content_digest(body) { Ok(()) } else { Err(SigError::BodyDigest) }
    }
}

/// Verifies a request's signature and freshness and records its nonce. Returns the signer.
/// (All steps of [`Claim`] at once, for a caller with one guard for every signer.)
pub fn verify(req: &SignedRequest<'_>, now: UnixTime, replay: &mut ReplayGuard) -> Result<NodeId, SigError> {
    let claim = Claim::parse(req, now, UnixTime(0))?;
    claim.check_body(req.body)?;
    claim.verify()?;
    replay.check_and_insert(claim.params(), now)?;
    Ok(claim.keyid())
}

// ---- answers: the directory's signed response to a signed node request ----
//
// An answer carries the same three headers, in a response profile:
// ```text
// Signature-Input: odi=("@status" "content-digest" "signature";req);created=T;expires=T+60;nonce="{the request's nonce}";keyid="{hex key}";alg="ed25519"
// ```
// The base covers the status, the answer's body (through its `Content-Digest`) and the request's
// own `Signature` header, which itself covers the request's method, path, query, body and
// nonce: an answer verifies for the one request it was made for, and for no other.

const ANSWER_COMPONENTS: &str = r#"("@status" "content-digest" "signature";req)"#;

fn answer_base(status: u16, content_digest: &str, request_signature: &str, params: &SigParams) -> String {
    format!(
        "\"@status\": {status}\n\"content-digest\": {content_digest}\n\"signature\";req: {}\n\"@signature-params\": {}",
        request_signature.trim(),
        params.serialize_with(ANSWER_COMPONENTS)
    )
}

/// The nonce of a signed request, from its `Signature-Input` header.
pub fn request_nonce(signature_input: &str) -> Result<String, SigError> {
    parse_signature_input(signature_input).map(|p| p.nonce)
}

/// Signs the answer (`status`, `body`) to the request whose headers were `request_signature_input`
/// and `request_signature`.
pub fn sign_answer(
    key: &SigningKey,
    status: u16,
    body: &[u8],
    request_signature_input: &str,
    request_signature: &str,
    now: UnixTime,
) -> Result<SignedHeaders, SigError> {
    let nonce = request_nonce(request_signature_input)?;
    let params = SigParams { created: now.0, expires: now.0 + SIGNATURE_LIFETIME, nonce, keyid: NodeId(key.verifying_key().to_bytes()) };
    let content_digest = content_digest(body);
    let base = answer_base(status, &content_digest, request_signature, &params);
    let signature = key.sign(base.as_bytes());
    Ok(SignedHeaders {
        content_digest,
        signature_input: format!("odi={}", params.serialize_with(ANSWER_COMPONENTS)),
        signature: format!("odi=:{}:", B64.encode(signature.to_bytes())),
    })
}

/// An answer as the requester sees it, with the headers of the request it answers.
#[derive(Clone, Copy, Debug)]
pub struct SignedAnswer<'a> {
    /// The HTTP status of the answer, which the signature covers.
    pub status: u16,
    /// The answer's body.
    pub body: &'a [u8],
    /// The answer's `Content-Digest` header, if present.
    pub content_digest: Option<&'a str>,
    /// The answer's `Signature-Input` header, if present.
    pub signature_input: Option<&'a str>,
    /// The answer's `Signature` header, if present.
    pub signature: Option<&'a str>,
    /// The `Signature-Input` and `Signature` the request was sent with.
    pub request_signature_input: &'a str,
    /// The `Signature` header the request was sent with.
    pub request_signature: &'a str,
}

/// Verifies that an answer is fresh, matches its body, is bound to its request (the request's
/// nonce and signature) and is signed by the key it names. Returns that key: whether it is the
/// one the requester trusts is the caller's decision (`odi_core::relay` pins it).
pub fn verify_answer(answer: &SignedAnswer<'_>, now: UnixTime) -> Result<NodeId, SigError> {
    let content_digest = answer.content_digest.ok_or(SigError::Missing("Content-Digest"))?;
    let params = parse_params(answer.signature_input.ok_or(SigError::Missing("Signature-Input"))?, ANSWER_COMPONENTS)?;
    let signature = decode_signature(answer.signature.ok_or(SigError::Missing("Signature"))?)?;
    let fresh = params.created <= now.0 + MAX_CLOCK_SKEW
        && params.expires + MAX_CLOCK_SKEW > now.0
        && params.expires > params.created
        && params.expires - params.created <= MAX_SIGNATURE_LIFETIME;
    if !fresh {
        return Err(SigError::Expired);
    }
    if request_nonce(answer.request_signature_input).ok().as_deref() != Some(params.nonce.as_str()) {
        return Err(SigError::NotBound);
    }
    if content_digest != self::content_digest(answer.body) {
        return Err(SigError::BodyDigest);
    }
    let base = answer_base(answer.status, content_digest, answer.request_signature, &params);
    let key = VerifyingKey::from_bytes(&params.keyid.0).map_err(|_| SigError::BadSignature(params.keyid))?;
    key.verify_strict(base.as_bytes(), &ed25519_dalek::Signature::from_bytes(&signature)).map_err(|_| SigError::BadSignature(params.keyid))?;
    Ok(params.keyid)
}

fn decode_signature(value: &str) -> Result<[u8; 64], SigError> {
    let b64 = value.trim().strip_prefix("odi=:").and_then(|s| s.strip_suffix(':')).ok_or(SigError::Malformed("Signature"))?;
    B64.decode(b64).ok().and_then(|b| b.try_into().ok()).ok_or(SigError::Malformed("Signature"))
}

// ---- catalog heads ----

/// Domain of a catalog head's signature.
const HEAD_DOMAIN: &str = "odi-catalog-head-v1";

fn head_bytes(signer: &NodeId, head: &CatalogHead) -> String {
    format!("{HEAD_DOMAIN}\n{signer}\n{}\n{}\n{}\n{}", head.catalog, head.seq, head.digest.to_hex(), head.expires)
}

/// Signs `head` with the directory's key.
pub fn sign_head(key: &SigningKey, head: CatalogHead) -> SignedHead {
    let signer = NodeId(key.verifying_key().to_bytes());
    let signature = key.sign(head_bytes(&signer, &head).as_bytes());
    SignedHead { head, signature: hex::encode(signature.to_bytes()) }
}

/// Checks that `head` was signed by `key`.
pub fn verify_head(head: &SignedHead, key: &NodeId) -> Result<(), SigError> {
    let mut sig = [0u8; 64];
    hex::decode_to_slice(head.signature.trim(), &mut sig).map_err(|_| SigError::Malformed("head signature"))?;
    let verifying = VerifyingKey::from_bytes(&key.0).map_err(|_| SigError::BadSignature(*key))?;
    verifying.verify_strict(head_bytes(key, &head.head).as_bytes(), &ed25519_dalek::Signature::from_bytes(&sig)).map_err(|_| SigError::BadSignature(*key))
}

/// Remembers nonces until their signatures expire, so each signed request is accepted once.
/// Bounded: when full of unexpired nonces it refuses new requests instead of growing.
#[derive(Debug)]
pub struct ReplayGuard {
    by_expiry: BTreeSet<(u64, String)>,
    seen: HashSet<String>,
    capacity: usize,
}

impl ReplayGuard {
    /// A guard that remembers at most `capacity` unexpired nonces.
    pub fn new(capacity: usize) -> Self {
        Self { by_expiry: BTreeSet::new(), seen: HashSet::new(), capacity }
    }

    /// Accepts `params`' nonce once: refuses one seen before, and refuses rather than grows when
    /// full of unexpired nonces. Expired ones are forgotten first.
    pub fn check_and_insert(&mut self, params: &SigParams, now: UnixTime) -> Result<(), SigError> {
        while let Some((expires, _)) = self.by_expiry.first() {
            if *expires + MAX_CLOCK_SKEW > now.0 {
                break;
            }
            if let Some((_, nonce)) = self.by_expiry.pop_first() {
                self.seen.remove(&nonce);
            }
        }
        let key = format!("{}{}", params.keyid, params.nonce);
        if self.seen.contains(&key) {
            return Err(SigError::Replay);
        }
        if self.seen.len() >= self.capacity {
            return Err(SigError::ReplayCacheFull);
        }
        self.seen.insert(key.clone());
        self.by_expiry.insert((params.expires, key));
        Ok(())
    }

    /// Nonces remembered now (expired ones are forgotten only on the next check).
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// True when no nonce is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn request<'a>(h: &'a SignedHeaders, body: &'a [u8]) -> SignedRequest<'a> {
        SignedRequest {
            method: "POST",
            path: "/odi/v1/heartbeat",
            query: "",
            body,
            content_digest: Some(&h.content_digest),
            signature_input: Some(&h.signature_input),
            signature: Some(&h.signature),
        }
    }

    #[test]
    fn a_signed_request_verifies_once() {
        let now = UnixTime(1_800_000_000);
        let h = sign(&key(1), "POST", "/odi/v1/heartbeat", "", b"{}", now, &[7; 16]);
        let mut guard = ReplayGuard::new(10);
        assert_eq!(verify(&request(&h, b"{}"), now, &mut guard), Ok(NodeId(key(1).verifying_key().to_bytes())));
        assert_eq!(verify(&request(&h, b"{}"), now, &mut guard), Err(SigError::Replay));
    }

    #[test]
    fn tampering_expiry_and_foreign_keys_are_refused() {
        let now = UnixTime(1_800_000_000);
        let mut guard = ReplayGuard::new(10);
        let h = sign(&key(1), "POST", "/odi/v1/heartbeat", "", b"{}", now, &[1; 16]);
        assert_eq!(verify(&request(&h, b"{ }"), now, &mut guard), Err(SigError::BodyDigest));
        let mut other_path = request(&h, b"{}");
        other_path.path = "/odi/v1/enroll";
        assert!(matches!(verify(&other_path, now, &mut guard), Err(SigError::BadSignature(_))));
        assert_eq!(verify(&request(&h, b"{}"), UnixTime(now.0 + 3600), &mut guard), Err(SigError::Expired));
        assert_eq!(verify(&request(&h, b"{}"), UnixTime(now.0 - 3600), &mut guard), Err(SigError::Expired));
        // Claim another node's key: the signature no longer verifies.
        let forged = SignedHeaders {
            signature_input: h
                .signature_input
                .replace(&NodeId(key(1).verifying_key().to_bytes()).to_hex(), &NodeId(key(2).verifying_key().to_bytes()).to_hex()),
            ..h.clone()
        };
        assert!(matches!(verify(&request(&forged, b"{}"), now, &mut guard), Err(SigError::BadSignature(_))));
        let unsigned = SignedRequest { signature: None, ..request(&h, b"{}") };
        assert_eq!(verify(&unsigned, now, &mut guard), Err(SigError::Missing("Signature")));
    }

    #[test]
    fn a_claim_is_checked_step_by_step_and_refused_if_signed_before_the_server_started() {
        let now = UnixTime(1_800_000_000);
        let h = sign(&key(1), "POST", "/odi/v1/heartbeat", "", b"{}", now, &[9; 16]);
        assert_eq!(Claim::parse(&request(&h, b""), now, UnixTime(now.0 + 1)).unwrap_err(), SigError::BeforeStart, "a capture replayed after a restart");
        let claim = Claim::parse(&request(&h, b""), now, now).expect("the head alone parses: the body is not needed yet");
        assert_eq!(claim.keyid(), NodeId(key(1).verifying_key().to_bytes()));
        claim.verify().expect("the head's signature holds");
        assert_eq!(claim.check_body(b"{ }"), Err(SigError::BodyDigest));
        claim.check_body(b"{}").expect("the body it named");
        // A claim of a key that did not sign: parses (cheap), fails only when verified.
        let forged = SignedHeaders {
            signature_input: h
                .signature_input
                .replace(&NodeId(key(1).verifying_key().to_bytes()).to_hex(), &NodeId(key(2).verifying_key().to_bytes()).to_hex()),
            ..h.clone()
        };
        let claim = Claim::parse(&request(&forged, b""), now, now).unwrap();
        assert!(matches!(claim.verify(), Err(SigError::BadSignature(_))));
    }

    #[test]
    fn malformed_inputs_are_refused_not_guessed() {
        for bad in [
            "",
            "odi=",
            "sig=(\"@method\")",
            r#"odi=("@method" "@path" "@query" "content-digest");created=1;expires=2;nonce="a";keyid="00";alg="ed25519""#,
            r#"odi=("@method" "@path" "@query" "content-digest");created=1;created=1;expires=2;nonce="a";alg="ed25519""#,
        ] {
            assert!(parse_signature_input(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn replay_guard_is_bounded_and_forgets_expired_nonces() {
        let now = UnixTime(1_800_000_000);
        let mut guard = ReplayGuard::new(2);
        for (i, expect) in [(1u8, true), (2, true), (3, false)] {
            let h = sign(&key(1), "POST", "/p", "", b"", now, &[i; 16]);
            assert_eq!(verify(&request(&h, b"").with_path("/p"), now, &mut guard).is_ok(), expect);
        }
        let later = UnixTime(now.0 + SIGNATURE_LIFETIME + MAX_CLOCK_SKEW + 1);
        let h = sign(&key(1), "POST", "/p", "", b"", later, &[4; 16]);
        assert!(verify(&request(&h, b"").with_path("/p"), later, &mut guard).is_ok());
        assert_eq!(guard.len(), 1);
    }

    #[test]
    fn an_answer_verifies_only_for_its_request_its_body_and_its_status() {
        let now = UnixTime(1_800_000_000);
        let req = sign(&key(1), "POST", "/odi/v1/heartbeat", "", b"{}", now, &[5; 16]);
        let other = sign(&key(1), "POST", "/odi/v1/heartbeat", "", b"{}", now, &[6; 16]);
        let ans = sign_answer(&key(2), 200, b"ok", &req.signature_input, &req.signature, now).unwrap();
        fn answer<'a>(status: u16, body: &'a [u8], to: &'a SignedHeaders, a: &'a SignedHeaders) -> SignedAnswer<'a> {
            SignedAnswer {
                status,
                body,
                content_digest: Some(&a.content_digest),
                signature_input: Some(&a.signature_input),
                signature: Some(&a.signature),
                request_signature_input: &to.signature_input,
                request_signature: &to.signature,
            }
        }
        let (req, other, ans) = (&req, &other, &ans);
        assert_eq!(verify_answer(&answer(200, b"ok", req, ans), now), Ok(NodeId(key(2).verifying_key().to_bytes())));
        assert_eq!(verify_answer(&answer(200, b"ok", other, ans), now), Err(SigError::NotBound), "replayed to another request");
        let same_nonce = SignedHeaders { signature: other.signature.clone(), ..req.clone() };
        assert!(matches!(verify_answer(&answer(200, b"ok", &same_nonce, ans), now), Err(SigError::BadSignature(_))), "bound to the request's signature");
        assert_eq!(verify_answer(&answer(200, b"no", req, ans), now), Err(SigError::BodyDigest));
        assert!(matches!(verify_answer(&answer(404, b"ok", req, ans), now), Err(SigError::BadSignature(_))), "status is covered");
        assert_eq!(verify_answer(&answer(200, b"ok", req, ans), UnixTime(now.0 + 3600)), Err(SigError::Expired));
        let unsigned = SignedAnswer { signature: None, ..answer(200, b"ok", req, ans) };
        assert_eq!(verify_answer(&unsigned, now), Err(SigError::Missing("Signature")));
        // A request signature is not an answer signature (another component list).
        let swapped = answer(200, b"{}", req, req);
        assert_eq!(verify_answer(&swapped, now), Err(SigError::Malformed("Signature-Input")));
    }

    #[test]
    fn a_head_verifies_under_its_signer_only_and_not_once_changed() {
        let head = CatalogHead { catalog: crate::path::CatalogName::new("rel").unwrap(), seq: 7, digest: Digest::of(b"s"), expires: 1_800_000_100 };
        let signed = sign_head(&key(3), head);
        let signer = NodeId(key(3).verifying_key().to_bytes());
        assert_eq!(verify_head(&signed, &signer), Ok(()));
        assert!(verify_head(&signed, &NodeId(key(4).verifying_key().to_bytes())).is_err(), "another key");
        for tampered in [
            SignedHead { head: CatalogHead { seq: 8, ..signed.head.clone() }, ..signed.clone() },
            SignedHead { head: CatalogHead { expires: 1_900_000_000, ..signed.head.clone() }, ..signed.clone() },
            SignedHead { head: CatalogHead { catalog: crate::path::CatalogName::new("other").unwrap(), ..signed.head.clone() }, ..signed.clone() },
            SignedHead { signature: "00".into(), ..signed.clone() },
        ] {
            assert!(verify_head(&tampered, &signer).is_err(), "{tampered:?}");
        }
    }

    impl<'a> SignedRequest<'a> {
        fn with_path(self, path: &'a str) -> Self {
            Self { path, ..self }
        }
    }
}
