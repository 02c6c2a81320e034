//! What a relay trusts of one directory: the directory's pinned key and the highest catalog
//! heads it applied from it. Every answer must be signed by the pinned key (the first answer
//! pins it when none was given: trust on first use); a heartbeat ack is applied only if every
//! head in it verifies, none is older than one applied (rollback) or expired, and every catalog
//! its state names has a head. A catalog whose head was not renewed before it expired is frozen:
//! its names are not served until a newer head arrives. Nothing of a refused answer is applied.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::auth;
use crate::digest::Digest;
use crate::message::{HeartbeatAck, Message, NodeId, SignedHead};
use crate::path::CatalogName;
use crate::time::{Instant, UnixTime};

/// Longest a head is believed for, whatever expiry it states.
pub const MAX_HEAD_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// The highest head applied for one catalog, as persisted: what a later head must not go below.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct AppliedHead {
    /// The catalog's sequence the head stated.
    pub seq: u64,
    /// The digest of the catalog's names the head stated.
    pub digest: Digest,
}

/// What the driver persists per directory, and gives back to [`super::UpstreamConfig`] on start.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct Trust {
    /// The directory's pinned key; `None`: the signer of the first answer is pinned.
    pub key: Option<NodeId>,
    /// The highest head applied for each catalog. Restored heads start frozen: their names are
    /// served again once the directory renews them.
    pub heads: BTreeMap<CatalogName, AppliedHead>,
}

#[derive(Debug)]
struct Live {
    applied: AppliedHead,
    /// When the head stops holding (`None`: restored from disk, not renewed since start).
    until: Option<Instant>,
    frozen: bool,
}

#[derive(Debug)]
pub(super) struct TrustState {
    key: Option<NodeId>,
    heads: BTreeMap<CatalogName, Live>,
    /// Why the last answer was refused, while answers are refused (logged once per reason).
    pub(super) refusing: Option<String>,
}

/// What checking an answer decided.
pub(super) enum Verdict {
    /// Apply it; `changed`: the trust to persist moved.
    Accept {
        changed: bool,
        pinned: Option<NodeId>,
    },
    Refuse(String),
}

impl TrustState {
    pub(super) fn new(restored: &Trust) -> Self {
        let heads = restored.heads.iter().map(|(c, a)| (c.clone(), Live { applied: *a, until: None, frozen: true })).collect();
        Self { key: restored.key, heads, refusing: None }
    }

    pub(super) fn key(&self) -> Option<NodeId> {
        self.key
    }

    pub(super) fn snapshot(&self) -> Trust {
        Trust { key: self.key, heads: self.heads.iter().map(|(c, l)| (c.clone(), l.applied)).collect() }
    }

    /// Checks `msg`, signed by `signer`, against the pin and the heads applied, and applies its
    /// heads if it is accepted.
    pub(super) fn check(&mut self, msg: &Message, signer: NodeId, now: Instant, wall: UnixTime) -> Verdict {
        let mut pinned = None;
        match self.key {
            Some(key) if key != signer => {
                return Verdict::Refuse(format!(
                    "the answer is signed by key {signer}, not by the pinned directory key {key}: a forged directory, or its key changed (if so, start the relay with --directory-key NEW_KEY)"
                ));
            }
            Some(_) => {}
            None => {
                if let Message::Enrolled(ok) = msg
                    && ok.directory != signer
                {
                    return Verdict::Refuse(format!("the enrollment answer names directory key {} but is signed by {signer}", ok.directory));
                }
                pinned = Some(signer);
            }
        }
        let mut changed = pinned.is_some();
        if let Message::HeartbeatAck(ack) = msg {
            if let Err(why) = self.check_heads(ack, signer, wall) {
                return Verdict::Refuse(why);
            }
            changed |= self.apply_heads(&ack.heads, now, wall);
        }
        if let Some(key) = pinned {
            self.key = Some(key);
        }
        Verdict::Accept { changed, pinned }
    }

    fn check_heads(&self, ack: &HeartbeatAck, signer: NodeId, wall: UnixTime) -> Result<(), String> {
        let mut seen: BTreeMap<&CatalogName, &SignedHead> = BTreeMap::new();
        for head in &ack.heads {
            let h = &head.head;
            auth::verify_head(head, &signer).map_err(|e| format!("the head of catalog {} does not verify: {e}", h.catalog))?;
            if h.expires <= wall.0 {
                return Err(format!("the head of catalog {} (sequence {}) expired at {}: a replayed or stale head", h.catalog, h.seq, h.expires));
            }
            if let Some(applied) = self.heads.get(&h.catalog).map(|l| l.applied)
                && h.seq < applied.seq
            {
                return Err(format!(
                    "catalog {} is offered at sequence {}, older than sequence {} this relay applied: the directory was rolled back (restored from an old backup, or forged); nothing from it is applied",
                    h.catalog, h.seq, applied.seq
                ));
            }
            if seen.insert(&h.catalog, head).is_some_and(|other| other != head) {
                return Err(format!("the answer carries two heads for catalog {}", h.catalog));
            }
        }
        if let Some(state) = &ack.state
            && let Some(unheaded) = state.names.iter().find(|n| !seen.contains_key(&n.catalog))
        {
            return Err(format!("the state names catalog {} without a signed head for it", unheaded.catalog));
        }
        Ok(())
    }

    fn apply_heads(&mut self, heads: &[SignedHead], now: Instant, wall: UnixTime) -> bool {
        let mut changed = false;
        for head in heads {
            let h = &head.head;
            let until = now + Duration::from_secs(h.expires - wall.0).min(MAX_HEAD_TTL);
            let applied = AppliedHead { seq: h.seq, digest: h.digest };
            match self.heads.get_mut(&h.catalog) {
                Some(live) => {
                    changed |= live.applied != applied;
                    *live = Live { applied, until: Some(until), frozen: false };
                }
                None => {
                    changed = true;
                    self.heads.insert(h.catalog.clone(), Live { applied, until: Some(until), frozen: false });
                }
            }
        }
        changed
    }

    /// True when `catalog` has a head that holds now: its names may be served.
    pub(super) fn serves(&self, catalog: &CatalogName) -> bool {
        self.heads.get(catalog).is_some_and(|l| l.until.is_some() && !l.frozen)
    }

    /// The earliest expiry of a head still believed.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.heads.values().filter(|l| !l.frozen).filter_map(|l| l.until).min()
    }

    /// Freezes the catalogs whose head expired by `now`; returns them.
    pub(super) fn expire(&mut self, now: Instant) -> Vec<(CatalogName, u64)> {
        let mut frozen = Vec::new();
        for (catalog, live) in &mut self.heads {
            if !live.frozen && live.until.is_some_and(|u| u <= now) {
                live.frozen = true;
                frozen.push((catalog.clone(), live.applied.seq));
            }
        }
        frozen
    }
}
