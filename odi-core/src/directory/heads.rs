//! Signed catalog heads: for each catalog a relay may serve, the directory's signed statement
//! of its state (the catalog's log position, the digest of its names, an expiry), renewed on
//! every heartbeat. A relay refuses a head older than one it applied (rollback) and stops
//! serving a catalog whose head expired (freeze): see `crate::relay`.
//!
//! A head is signed once per catalog and change, and again when a quarter of its lifetime has
//! passed, so every heartbeat carries a head with at least three quarters of the lifetime left
//! and a directory signs a few heads per catalog per lifetime, whatever the number of relays.

use std::collections::BTreeMap;
use std::time::Duration;

use ed25519_dalek::SigningKey;

use crate::auth;
use crate::digest::Digest;
use crate::message::{CatalogHead, SignedHead};
use crate::path::CatalogName;
use crate::time::UnixTime;

/// How long a head holds without renewal by default: a relay keeps serving through a directory
/// outage this long, and no longer.
pub const DEFAULT_HEAD_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug)]
pub(super) struct Heads {
    key: Option<SigningKey>,
    ttl: Duration,
    signed: BTreeMap<CatalogName, SignedHead>,
}

impl Default for Heads {
    fn default() -> Self {
        Self { key: None, ttl: DEFAULT_HEAD_TTL, signed: BTreeMap::new() }
    }
}

impl Heads {
    pub(super) fn new(key: SigningKey, ttl: Duration) -> Self {
        Self { key: Some(key), ttl: ttl.max(Duration::from_secs(1)), signed: BTreeMap::new() }
    }

    /// The signed head of `catalog` at `(seq, digest)`, signed anew if the state moved or a
    /// quarter of its lifetime has passed. `None` without a key.
    pub(super) fn head(&mut self, catalog: &CatalogName, seq: u64, digest: Digest, wall: UnixTime) -> Option<SignedHead> {
        let key = self.key.as_ref()?;
        let ttl = self.ttl.as_secs();
        let renew_after = ttl - ttl / 4;
        let current = self.signed.get(catalog).filter(|h| h.head.seq == seq && h.head.digest == digest && h.head.expires >= wall.0 + renew_after);
        if let Some(head) = current {
            return Some(head.clone());
        }
        let head = auth::sign_head(key, CatalogHead { catalog: catalog.clone(), seq, digest, expires: wall.0 + ttl });
        self.signed.insert(catalog.clone(), head.clone());
        Some(head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::NodeId;

    #[test]
    fn heads_are_reused_until_the_state_moves_or_a_quarter_of_the_lifetime_passed() {
        let key = SigningKey::from_bytes(&[4; 32]);
        let id = NodeId(key.verifying_key().to_bytes());
        let mut heads = Heads::new(key, Duration::from_secs(100));
        let cat = CatalogName::new("rel").unwrap();
        let d = Digest::of(b"state");
        let first = heads.head(&cat, 3, d, UnixTime(1000)).unwrap();
        assert_eq!((first.head.seq, first.head.expires), (3, 1100));
        auth::verify_head(&first, &id).unwrap();
        assert_eq!(heads.head(&cat, 3, d, UnixTime(1025)).unwrap(), first, "still three quarters left");
        assert_eq!(heads.head(&cat, 3, d, UnixTime(1026)).unwrap().head.expires, 1126, "renewed");
        assert_eq!(heads.head(&cat, 4, d, UnixTime(1027)).unwrap().head.seq, 4, "a new state, a new head");
        assert!(Heads::default().head(&cat, 1, d, UnixTime(0)).is_none(), "no key, no heads");
    }
}
