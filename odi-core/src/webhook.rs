//! Webhook deliveries, sans IO: the signature a receiver checks (`ODI-Signature`, the Stripe
//! scheme) and the retry schedule. The directory's driver keeps the queue and sends.
//!
//! `ODI-Signature: t={unix seconds},v1={hex HMAC-SHA256(secret, "{t}.{body}")}`. A receiver
//! recomputes the MAC over the raw body it got, compares in constant time, and refuses a `t`
//! more than [`TOLERANCE`] away from its own clock (a replayed delivery).

use std::time::Duration;

use hmac::{KeyInit as _, Mac as _};
use serde::{Deserialize, Serialize};

/// A hook as the admin API shows it (never its secret, which `add` returns once).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hook {
    /// Random, 16 hex digits; names the hook in `DELETE /api/v1/webhooks/{id}`.
    pub id: String,
    /// Where deliveries are POSTed (`http://` or `https://`).
    pub url: String,
    /// Kinds delivered; empty: every kind.
    pub events: Vec<String>,
    /// When the hook was added, in unix milliseconds.
    pub created_ms: u64,
}

/// One delivery as `GET /api/v1/webhooks/{id}/deliveries` lists it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Delivery {
    /// Random, 32 hex digits; sent as the `ODI-Delivery` header, the same on every attempt.
    pub id: String,
    /// The event kind (`relay.enrolled`, ...), sent as the `ODI-Event` header.
    pub kind: String,
    /// The notice's number in the directory process that queued it (not kept across restarts).
    pub seq: u64,
    /// `pending`, `delivered` or `failed` (gave up).
    pub status: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// The HTTP status the last attempt got; `None` before any attempt or when it got no answer.
    pub last_status: Option<u16>,
    /// Why the last attempt failed; `None` before any attempt and once delivered.
    pub last_error: Option<String>,
    /// When the delivery was queued, in unix milliseconds.
    pub created_ms: u64,
    /// When the next attempt is due, in unix milliseconds; `None` unless `pending`.
    pub next_attempt_ms: Option<u64>,
    /// When a 2xx answer came, in unix milliseconds; `None` until then.
    pub delivered_ms: Option<u64>,
}

/// How far a signature's time may be from the receiver's clock.
pub const TOLERANCE: Duration = Duration::from_secs(300);

/// When to give up and when to wait between attempts.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct RetryPolicy {
    /// The wait after the first failed attempt; doubled after each further one.
    pub base: Duration,
    /// The longest wait between two attempts.
    pub cap: Duration,
    /// A delivery still failing this long after it was queued is marked failed.
    pub give_up: Duration,
    /// How long one attempt may take (connect, send, response head).
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { base: Duration::from_secs(1), cap: Duration::from_secs(3600), give_up: Duration::from_secs(24 * 3600), timeout: Duration::from_secs(10) }
    }
}

impl RetryPolicy {
    /// The wait after `attempts` failed attempts (1 for the first), with "equal jitter": half the
    /// exponential step fixed, the other half scaled by `random` (any `u64`, uniform), so that
    /// many deliveries failing together do not retry together.
    pub fn backoff(&self, attempts: u32, random: u64) -> Duration {
        let step = self.base.saturating_mul(1u32 << attempts.saturating_sub(1).min(30)).min(self.cap);
        let half = step / 2;
        let jitter = half.mul_f64((random >> 11) as f64 / (1u64 << 53) as f64);
        half + jitter
    }
}

/// The `ODI-Signature` value for `body` sent at unix time `t`.
pub fn signature(secret: &str, t: u64, body: &[u8]) -> String {
    format!("t={t},v1={}", hex::encode(mac(secret, t, body)))
}

fn mac(secret: &str, t: u64, body: &[u8]) -> [u8; 32] {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// Why a receiver refuses a delivery.
#[derive(Debug, Eq, PartialEq, thiserror::Error)]
pub enum VerifyError {
    /// The header lacks a `t`, has no `v1`, or one of them does not parse.
    #[error("ODI-Signature is not `t=UNIX,v1=HEX`")]
    Malformed,
    /// `t` is more than [`TOLERANCE`] from the receiver's clock: a late or replayed delivery.
    #[error("ODI-Signature time is more than 5 minutes from this clock")]
    Stale,
    /// No `v1` is the MAC of this body under this secret.
    #[error("ODI-Signature does not match the body")]
    Mismatch,
}

/// What a receiver does with `header` (the `ODI-Signature` value) and the raw `body`, at unix
/// time `now`: accepts when some `v1` matches and `t` is within [`TOLERANCE`].
pub fn verify(secret: &str, header: &str, body: &[u8], now: u64) -> Result<(), VerifyError> {
    let mut t = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.parse::<u64>().map_err(|_| VerifyError::Malformed)?),
            Some(("v1", v)) => sigs.push(hex::decode(v).map_err(|_| VerifyError::Malformed)?),
            _ => {}
        }
    }
    let t = t.ok_or(VerifyError::Malformed)?;
    if sigs.is_empty() {
        return Err(VerifyError::Malformed);
    }
    if t.abs_diff(now) > TOLERANCE.as_secs() {
        return Err(VerifyError::Stale);
    }
    let want = mac(secret, t, body);
    // Constant time in the bytes compared.
    let matches = |s: &Vec<u8>| s.len() == want.len() && s.iter().zip(want.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if sigs.iter().any(matches) { Ok(()) } else { Err(VerifyError::Mismatch) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_for_its_body_secret_and_time() {
        let sig = signature("whsec_x", 1_700_000_000, b"{\"seq\":1}");
        assert!(sig.starts_with("t=1700000000,v1="));
        assert_eq!(verify("whsec_x", &sig, b"{\"seq\":1}", 1_700_000_100), Ok(()));
        assert_eq!(verify("whsec_x", &sig, b"{\"seq\":2}", 1_700_000_100), Err(VerifyError::Mismatch));
        assert_eq!(verify("whsec_y", &sig, b"{\"seq\":1}", 1_700_000_100), Err(VerifyError::Mismatch));
        assert_eq!(verify("whsec_x", &sig, b"{\"seq\":1}", 1_700_000_301), Err(VerifyError::Stale));
        assert_eq!(verify("whsec_x", "v1=00", b"", 0), Err(VerifyError::Malformed));
        assert_eq!(verify("whsec_x", "t=1,v1=zz", b"", 1), Err(VerifyError::Malformed));
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_in_the_upper_half() {
        let p = RetryPolicy { base: Duration::from_secs(1), cap: Duration::from_secs(60), ..RetryPolicy::default() };
        assert_eq!(p.backoff(1, 0), Duration::from_millis(500));
        assert!(p.backoff(1, u64::MAX) <= Duration::from_secs(1) && p.backoff(1, u64::MAX) > Duration::from_millis(999));
        assert_eq!(p.backoff(4, 0), Duration::from_secs(4));
        assert_eq!(p.backoff(10, 0), Duration::from_secs(30));
        assert_eq!(p.backoff(u32::MAX, 0), Duration::from_secs(30));
    }
}
