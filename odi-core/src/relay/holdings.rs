//! The relay's one store, shared by every directory it is enrolled with: blobs held verified,
//! downloads under way, partial files, evictions waiting for the directories to hear, and the one
//! disk budget all of that counts against.
//!
//! It knows nothing of directories but their indexes: the orchestrator (`super::Relay`) tells it
//! which digests some directory still assigns (`wanted`), and which directories must hear of an
//! eviction before the bytes may go.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::{Effect, Event, Outputs, Upstream};
use crate::digest::Digest;
use crate::manifest::ChunkManifest;
use crate::message::RelayUrl;
use crate::time::Instant;

/// Bytes a stored blob of `len` bytes takes on a relay's disk: its content plus its block
/// checksums (odi-storage `sums`: 28 bytes and 8 per MiB), all counted against the budget.
pub fn footprint(len: u64) -> u64 {
    len.saturating_add(28 + 8 * len.div_ceil(1 << 20))
}

/// An evicted blob still on disk (and servable) until every directory that may send clients for
/// it has acknowledged a heartbeat without it, plus one heartbeat interval.
#[derive(Debug)]
pub(super) struct Leaving {
    pub(super) size: u64,
    /// Directories that have not been sent a heartbeat without it yet.
    unsent: BTreeSet<Upstream>,
    /// Directories sent one, waiting for its acknowledgement.
    unacked: BTreeSet<Upstream>,
    /// Not deleted before this (a directory that could not be told stops sending clients when
    /// its lease runs out).
    not_before: Instant,
    /// Set once every directory has heard.
    delete_at: Option<Instant>,
}

/// One download to start: what a directory asked for, with the directory to fetch it from.
pub(super) struct Want {
    pub(super) digest: Digest,
    pub(super) size: u64,
    pub(super) manifest: ChunkManifest,
    pub(super) sources: Vec<RelayUrl>,
    pub(super) upstream: Upstream,
}

#[derive(Debug)]
pub(super) struct Holdings {
    pub(super) budget: u64,
    pub(super) max_fetches: usize,
    pub(super) retry_backoff: Duration,
    /// Blobs stored verified, with their footprints.
    pub(super) held: BTreeMap<Digest, u64>,
    /// How much each held blob is worth keeping: client requests served, and since when held.
    value: BTreeMap<Digest, (u64, Instant)>,
    /// Client responses in progress, per blob: never evicted while served.
    serving: BTreeMap<Digest, u32>,
    pub(super) leaving: BTreeMap<Digest, Leaving>,
    /// Copies dropped (corrupt, or expunged by one directory while another still assigns them)
    /// and not held again yet: clients sent here for them meanwhile go back to a directory.
    pub(super) dropped: BTreeSet<Digest>,
    /// Downloads under way, with the bytes reserved for each.
    pub(super) fetching: BTreeMap<Digest, u64>,
    /// Partial downloads on disk that are not running now (after a restart, or a failure),
    /// with the bytes reserved for each: they count against the budget until resumed or removed.
    pub(super) partials: BTreeMap<Digest, u64>,
    retry_at: BTreeMap<Digest, Instant>,
    /// Set whenever the set of held blobs changed: the directories should hear soon.
    pub(super) changed: bool,
}

impl Holdings {
    pub(super) fn new(
        budget: u64,
        max_fetches: usize,
        retry_backoff: Duration,
        held: impl IntoIterator<Item = (Digest, u64)>,
        partials: impl IntoIterator<Item = (Digest, u64)>,
        now: Instant,
    ) -> Self {
        let held: BTreeMap<Digest, u64> = held.into_iter().map(|(d, len)| (d, footprint(len))).collect();
        let value = held.keys().map(|d| (*d, (0, now))).collect();
        Self {
            budget,
            max_fetches,
            retry_backoff,
            held,
            value,
            serving: BTreeMap::new(),
            leaving: BTreeMap::new(),
            dropped: BTreeSet::new(),
            fetching: BTreeMap::new(),
            partials: partials.into_iter().collect(),
            retry_at: BTreeMap::new(),
            changed: false,
        }
    }

    // ---- bookkeeping ----

    /// Bytes held plus bytes reserved for downloads under way; never above the budget.
    pub(super) fn used(&self) -> u64 {
        self.held.values().chain(self.fetching.values()).chain(self.partials.values()).chain(self.leaving.values().map(|l| &l.size)).sum()
    }

    pub(super) fn has_bytes(&self, digest: &Digest) -> bool {
        self.held.contains_key(digest) || self.leaving.contains_key(digest)
    }

    pub(super) fn serving_started(&mut self, digest: Digest) {
        *self.serving.entry(digest).or_default() += 1;
        if let Some((hits, _)) = self.value.get_mut(&digest) {
            *hits += 1;
        }
    }

    pub(super) fn serving_ended(&mut self, digest: Digest) {
        if let Some(n) = self.serving.get_mut(&digest) {
            *n -= 1;
            if *n == 0 {
                self.serving.remove(&digest);
            }
        }
    }

    pub(super) fn active(&self) -> u32 {
        self.serving.values().sum()
    }

    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.retry_at.values().copied().chain(self.leaving.values().filter_map(|l| l.delete_at)).min()
    }

    // ---- what the directories said ----

    /// The assignments changed: partial downloads nobody wants any more are removed, and copies
    /// dropped that nobody wants are forgotten.
    pub(super) fn assignment_changed(&mut self, wanted: &BTreeSet<Digest>, out: &mut Outputs) {
        self.dropped.retain(|d| wanted.contains(d));
        let stale: Vec<Digest> = self.partials.keys().filter(|d| !wanted.contains(*d)).copied().collect();
        for digest in stale {
            self.partials.remove(&digest);
            out.effects.push_back(Effect::DiscardPartial { digest });
        }
    }

    /// `upstream` is being sent a heartbeat (without any leaving blob).
    pub(super) fn heartbeat_sent(&mut self, upstream: Upstream) {
        for leaving in self.leaving.values_mut() {
            if leaving.unsent.remove(&upstream) {
                leaving.unacked.insert(upstream);
            }
        }
    }

    /// `upstream` acknowledged a heartbeat: evictions it was told of may proceed.
    pub(super) fn heartbeat_acked(&mut self, upstream: Upstream, linger: Duration, now: Instant) {
        for leaving in self.leaving.values_mut() {
            leaving.unacked.remove(&upstream);
        }
        self.schedule_departures(linger, now);
    }

    /// A message to `upstream` got no answer: it may never hear of an eviction, but it stops
    /// sending clients here once `lease` has passed without a word from this relay.
    pub(super) fn upstream_unreachable(&mut self, upstream: Upstream, lease: Duration, linger: Duration, now: Instant) {
        for leaving in self.leaving.values_mut() {
            if leaving.unsent.remove(&upstream) | leaving.unacked.remove(&upstream) {
                leaving.not_before = leaving.not_before.max(now + lease);
            }
        }
        self.schedule_departures(linger, now);
    }

    fn schedule_departures(&mut self, linger: Duration, now: Instant) {
        for leaving in self.leaving.values_mut().filter(|l| l.delete_at.is_none() && l.unsent.is_empty() && l.unacked.is_empty()) {
            leaving.delete_at = Some(leaving.not_before.max(now + linger));
        }
    }

    // ---- downloads ----

    /// A download finished. Returns true when the blob is held now.
    pub(super) fn fetched(&mut self, digest: Digest, outcome: Result<(), String>, wanted: &BTreeSet<Digest>, now: Instant, out: &mut Outputs) {
        let Some(size) = self.fetching.remove(&digest) else { return };
        match outcome {
            Ok(()) => {
                // A fresh copy replaces any evicted one: its pending deletion must not run.
                self.leaving.remove(&digest);
                self.dropped.remove(&digest);
                self.held.insert(digest, size);
                self.value.insert(digest, (0, now));
                out.events.push_back(Event::Ready { digest });
                if !wanted.contains(&digest) {
                    self.drop_blob(digest, out); // unassigned while downloading
                }
                self.changed = true;
            }
            Err(reason) => {
                // What was verified so far stays on disk for the retry, and stays reserved.
                self.partials.insert(digest, size);
                self.retry_at.insert(digest, now + self.retry_backoff);
                out.events.push_back(Event::FetchFailed { digest, reason });
            }
        }
    }

    /// The stored copy failed a check: it stops counting at once and is deleted. False when it
    /// was already gone.
    pub(super) fn corrupt(&mut self, digest: Digest, out: &mut Outputs) -> bool {
        let held = self.held.remove(&digest).is_some();
        let leaving = self.leaving.remove(&digest).is_some();
        if !held && !leaving {
            return false;
        }
        self.value.remove(&digest);
        self.retry_at.remove(&digest);
        self.dropped.insert(digest);
        out.effects.push_back(Effect::Delete { digest });
        out.events.push_back(Event::Corrupt { digest });
        self.changed = true;
        true
    }

    pub(super) fn timeout(&mut self, now: Instant, out: &mut Outputs) {
        self.retry_at.retain(|_, t| *t > now);
        let due: Vec<Digest> = self.leaving.iter().filter(|(_, l)| l.delete_at.is_some_and(|t| t <= now)).map(|(d, _)| *d).collect();
        for digest in due {
            self.leaving.remove(&digest);
            out.deleted.push(digest);
            out.effects.push_back(Effect::Delete { digest });
        }
    }

    /// Starts the downloads that fit: `todo` is every assigned blob (from whichever directory),
    /// `upstreams` the directories that must hear of an eviction made to fit one.
    pub(super) fn start_fetches(&mut self, todo: Vec<Want>, wanted: &BTreeSet<Digest>, upstreams: &BTreeSet<Upstream>, now: Instant, out: &mut Outputs) {
        // An evicted blob still on disk that is wanted again is taken back, not downloaded (a
        // download would race its pending deletion).
        let back: Vec<Digest> = self.leaving.keys().filter(|d| wanted.contains(*d)).copied().collect();
        for digest in back {
            if let Some(leaving) = self.leaving.remove(&digest) {
                self.held.insert(digest, leaving.size);
                self.value.insert(digest, (0, now));
                self.changed = true;
            }
        }
        let mut todo: Vec<Want> = todo
            .into_iter()
            .filter(|w| !self.held.contains_key(&w.digest) && !self.fetching.contains_key(&w.digest) && self.retry_at.get(&w.digest).is_none_or(|t| *t <= now))
            .collect();
        // Resume partial downloads first: their bytes are already on disk.
        todo.sort_by_key(|w| !self.partials.contains_key(&w.digest));
        for Want { digest, size, manifest, sources, upstream } in todo {
            if self.fetching.len() >= self.max_fetches {
                break;
            }
            if manifest.digest() != digest || manifest.total_len() != size {
                out.events.push_back(Event::FetchFailed { digest, reason: "the directory sent a manifest for other bytes".into() });
                continue;
            }
            // A partial download's reservation becomes the fetch's.
            let reserved = self.partials.remove(&digest).unwrap_or(0);
            let size = footprint(size);
            if !self.make_room(size.saturating_sub(reserved), wanted, upstreams, out) {
                if reserved > 0 {
                    self.partials.insert(digest, reserved);
                }
                if self.leaving.is_empty() {
                    out.events.push_back(Event::NoRoom { digest, size });
                }
                continue;
            }
            self.fetching.insert(digest, size);
            out.effects.push_back(Effect::Fetch { upstream, manifest, sources });
        }
    }

    /// Evicts held blobs that no directory assigns, least valuable first (fewest requests
    /// served, then oldest), until `size` more bytes fit in the budget. Never touches assigned
    /// blobs, blobs being served, or downloads under way.
    ///
    /// Evicted blobs leave only once the directories know (see `evict`): this evicts enough for
    /// the room to come, and answers whether the room is there now.
    fn make_room(&mut self, size: u64, wanted: &BTreeSet<Digest>, upstreams: &BTreeSet<Upstream>, out: &mut Outputs) -> bool {
        let staying = |h: &Self| h.used() - h.leaving.values().map(|l| l.size).sum::<u64>();
        while staying(self).saturating_add(size) > self.budget {
            let Some(victim) = self.least_valuable(|d| !wanted.contains(d)) else { break };
            self.evict(victim, upstreams, out);
        }
        self.used().saturating_add(size) <= self.budget
    }

    /// Brings the disk back within the budget after it shrank: unassigned blobs first, then
    /// assigned ones, least valuable first, never one being served.
    pub(super) fn enforce_budget(&mut self, wanted: &BTreeSet<Digest>, out: &mut Outputs) {
        while self.used() > self.budget {
            let victim = self.least_valuable(|d| !wanted.contains(d)).or_else(|| self.least_valuable(|_| true));
            let Some(victim) = victim else { return };
            self.drop_blob(victim, out);
            out.events.push_back(Event::Evicted { digest: victim });
        }
    }

    fn least_valuable(&self, eligible: impl Fn(&Digest) -> bool) -> Option<Digest> {
        self.held
            .keys()
            .filter(|d| eligible(d) && !self.serving.contains_key(*d) && !self.fetching.contains_key(*d))
            .min_by_key(|d| (self.value.get(*d).copied().unwrap_or((0, Instant::ZERO)), **d))
            .copied()
    }

    /// Deletes a held blob at once: for expunged blobs (the directory already stopped sending
    /// clients) and blobs no directory ever heard of. True when it was held.
    pub(super) fn drop_blob(&mut self, digest: Digest, out: &mut Outputs) -> bool {
        self.dropped.remove(&digest);
        if self.held.remove(&digest).is_some() {
            self.value.remove(&digest);
            out.deleted.push(digest);
            out.effects.push_back(Effect::Delete { digest });
            self.changed = true;
            true
        } else {
            false
        }
    }

    /// Evicts a held blob in two phases: it stops being reported as held but stays on disk and
    /// servable until every directory in `upstreams` has acknowledged a heartbeat without it
    /// (plus one heartbeat interval for clients already redirected), so no client is sent to
    /// bytes that are gone.
    fn evict(&mut self, digest: Digest, upstreams: &BTreeSet<Upstream>, out: &mut Outputs) {
        if let Some(size) = self.held.remove(&digest) {
            self.value.remove(&digest);
            self.leaving.insert(digest, Leaving { size, unsent: upstreams.clone(), unacked: BTreeSet::new(), not_before: Instant::ZERO, delete_at: None });
            self.changed = true;
            out.events.push_back(Event::Evicted { digest });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::from_bytes([n; 32])
    }

    fn want(n: u8, len: usize, upstream: Upstream) -> Want {
        let manifest = ChunkManifest::of(&vec![n; len], crate::manifest::MIN_CHUNK_SIZE).unwrap();
        Want { digest: manifest.digest(), size: len as u64, manifest, sources: Vec::new(), upstream }
    }

    fn deletes(out: &mut Outputs) -> Vec<Digest> {
        out.effects.drain(..).filter_map(|e| if let Effect::Delete { digest } = e { Some(digest) } else { None }).collect()
    }

    #[test]
    fn an_eviction_waits_for_every_directory_to_hear_and_a_silent_one_for_its_lease() {
        let mut h = Holdings::new(footprint(4000) * 2, 4, Duration::from_secs(1), [(d(1), 4000), (d(2), 4000)], [], Instant::ZERO);
        let mut out = Outputs::default();
        let both: BTreeSet<Upstream> = [0, 1].into();
        // d(1) is assigned (by someone); a new blob needs d(2)'s room.
        let new = want(9, 4000, 1);
        let wanted: BTreeSet<Digest> = [d(1), new.digest].into();
        h.start_fetches(vec![new], &wanted, &both, Instant::ZERO, &mut out);
        assert!(h.leaving.contains_key(&d(2)) && h.held.contains_key(&d(1)), "only the unassigned blob is evicted");
        assert!(!out.effects.iter().any(|e| matches!(e, Effect::Fetch { .. })), "no room until it is gone");
        h.heartbeat_sent(0);
        h.heartbeat_acked(0, Duration::from_secs(2), Instant::from_millis(10));
        assert_eq!(h.poll_timeout(), None, "directory 1 has not heard yet");
        // Directory 1 is unreachable: it stops sending clients when its lease (15 s) runs out.
        h.upstream_unreachable(1, Duration::from_secs(15), Duration::from_secs(2), Instant::from_millis(20));
        assert_eq!(h.poll_timeout(), Some(Instant::from_millis(15_020)));
        h.timeout(Instant::from_millis(15_000), &mut out);
        assert!(deletes(&mut out).is_empty());
        h.timeout(Instant::from_millis(15_020), &mut out);
        assert_eq!(deletes(&mut out), vec![d(2)]);
        assert_eq!(out.deleted, vec![d(2)]);
    }

    #[test]
    fn a_blob_assigned_by_anyone_is_never_evicted_and_what_does_not_fit_is_not_fetched() {
        let mut h = Holdings::new(footprint(4000), 4, Duration::from_secs(1), [(d(1), 4000)], [], Instant::ZERO);
        let mut out = Outputs::default();
        let new = want(9, 4000, 0);
        let wanted: BTreeSet<Digest> = [d(1), new.digest].into();
        h.start_fetches(vec![new], &wanted, &[0].into(), Instant::ZERO, &mut out);
        assert!(h.held.contains_key(&d(1)) && h.leaving.is_empty());
        assert!(out.events.iter().any(|e| matches!(e, Event::NoRoom { .. })), "{:?}", out.events);
        assert!(!out.effects.iter().any(|e| matches!(e, Effect::Fetch { .. })));
        assert!(h.used() <= h.budget);
    }
}
