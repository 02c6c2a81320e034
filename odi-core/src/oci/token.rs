//! The registry token flow of `/v2/`, the one docker, oras and containers/image follow:
//! `GET /v2/`, or a write, without credentials answers `401` with
//! `WWW-Authenticate: Bearer realm="{directory}/v2/token",service="odi"`; the client asks
//! `GET /v2/token` (with its Basic credentials to push: the admin token as the password) and
//! sends the token it gets as `Bearer` until it expires.
//!
//! A token is `odi2.{access}.{expiry}.{mac}`: what it grants (`push`, or `pull` for a client
//! that asked without credentials), the expiry in Unix seconds, and HMAC-SHA256 of both under
//! a key derived from the directory's token key. Nothing is stored: a token stays valid across
//! a restart and in every process that shares the token key, and its MAC is checked in
//! constant time. A push token grants what the admin token grants on `/v2/` (pushes to every
//! repository), for [`LIFETIME_SECS`]; a pull token grants only what anyone may do (reads are
//! anonymous), and passes the `GET /v2/` check. The admin API accepts neither.

use hmac::{KeyInit as _, Mac as _};

/// How long an issued token is accepted, in seconds (`expires_in` of the answer).
pub const LIFETIME_SECS: u64 = 300;
/// The `service` of the challenge.
pub const SERVICE: &str = "odi";
/// What every token starts with.
const PREFIX: &str = "odi2.";

/// What a token grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reads, as anyone: the token of a client that asked without credentials.
    Pull,
    /// Everything the admin token may do on `/v2/`.
    Push,
}

impl Access {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pull => "pull",
            Self::Push => "push",
        }
    }
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Issues and checks tokens under one key.
#[derive(Clone)]
pub struct RegistryTokens {
    key: [u8; 32],
}

impl std::fmt::Debug for RegistryTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RegistryTokens(..)")
    }
}

impl RegistryTokens {
    /// Tokens under a key derived from `token_key` (the directory's token-hash key), so that a
    /// push token's MAC is never a stored token hash.
    pub fn new(token_key: &[u8; 32]) -> Self {
        let mut mac = HmacSha256::new_from_slice(token_key).expect("HMAC takes keys of any length");
        mac.update(b"odi /v2/ push tokens");
        Self { key: mac.finalize().into_bytes().into() }
    }

    fn mac(&self, access: Access, expiry: u64) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(access.as_str().as_bytes());
        mac.update(&expiry.to_be_bytes());
        mac
    }

    /// A new token granting `access`, accepted until `now + LIFETIME_SECS`.
    pub fn issue(&self, access: Access, now: u64) -> String {
        let expiry = now.saturating_add(LIFETIME_SECS);
        format!("{PREFIX}{}.{expiry}.{}", access.as_str(), hex::encode(self.mac(access, expiry).finalize().into_bytes()))
    }

    /// What `token` grants, if it was issued under this key and has not expired at `now`.
    pub fn check(&self, token: &str, now: u64) -> Option<Access> {
        let mut parts = token.strip_prefix(PREFIX)?.splitn(3, '.');
        let access = match parts.next()? {
            "pull" => Access::Pull,
            "push" => Access::Push,
            _ => return None,
        };
        let expiry = parts.next()?.parse::<u64>().ok()?;
        let mac = hex::decode(parts.next()?).ok()?;
        (expiry > now && self.mac(access, expiry).verify_slice(&mac).is_ok()).then_some(access)
    }
}

/// The `WWW-Authenticate` value sent to a client of the directory at `base` (`http://host:port`).
pub fn challenge(base: &str) -> String {
    format!("Bearer realm=\"{base}/v2/token\",service=\"{SERVICE}\"")
}

/// The JSON answer of `GET /v2/token` carrying `token`, issued at `now` (the fields docker's
/// token spec names; clients read `token` or `access_token`).
pub fn answer(token: &str, now: u64) -> Vec<u8> {
    let (y, mo, d, h, mi, s) = crate::time::UnixTime(now).civil();
    let issued_at = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z");
    serde_json::json!({ "token": token, "access_token": token, "expires_in": LIFETIME_SECS, "issued_at": issued_at }).to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_grants_its_access_until_it_expires_and_only_under_its_key() {
        let tokens = RegistryTokens::new(&[7; 32]);
        let t = tokens.issue(Access::Push, 1_000);
        assert!(t.starts_with("odi2.push.1300."), "{t}");
        assert_eq!(tokens.check(&t, 1_000), Some(Access::Push));
        assert_eq!(tokens.check(&t, 1_000 + LIFETIME_SECS - 1), Some(Access::Push));
        assert_eq!(tokens.check(&t, 1_000 + LIFETIME_SECS), None);
        let pull = tokens.issue(Access::Pull, 1_000);
        assert_eq!(tokens.check(&pull, 1_000), Some(Access::Pull));
        // A pull token turned into a push token, another directory's key, a moved expiry, a
        // cut MAC, junk.
        assert_eq!(tokens.check(&pull.replacen("pull", "push", 1), 1_000), None);
        assert_eq!(RegistryTokens::new(&[8; 32]).check(&t, 1_000), None);
        assert_eq!(tokens.check(&t.replacen("1300", "9999", 1), 1_000), None);
        assert_eq!(tokens.check(&t[..t.len() - 2], 1_000), None);
        for junk in ["", "odi2.", "odi2.push.1300", "odi2.push.x.00", "odi2.push.1300.zz", "odi2.root.1300.00", "Bearer odi2.push.1300.00"] {
            assert_eq!(tokens.check(junk, 1_000), None, "{junk}");
        }
        assert_eq!(tokens.check(&tokens.issue(Access::Push, u64::MAX), u64::MAX), None);
    }

    #[test]
    fn the_challenge_names_the_token_endpoint() {
        assert_eq!(challenge("http://127.0.0.1:8080"), "Bearer realm=\"http://127.0.0.1:8080/v2/token\",service=\"odi\"");
        let a: serde_json::Value = serde_json::from_slice(&answer("ab", 0)).unwrap();
        assert_eq!((a["token"].as_str(), a["access_token"].as_str(), a["expires_in"].as_u64()), (Some("ab"), Some("ab"), Some(LIFETIME_SECS)));
        assert_eq!(a["issued_at"], "1970-01-01T00:00:00Z");
    }
}
