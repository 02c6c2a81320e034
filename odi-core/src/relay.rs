//! The relay machine: enrollment, heartbeats, and turning an assignment into verified downloads
//! inside a disk budget.
//!
//! `Relay` performs no I/O. **After every `handle_*` call, drain `poll_effect` and `poll_event`
//! to `None`, then re-arm one timer at `poll_timeout`.** Every `Effect::Send` must be answered
//! with `handle_message` (the reply) or `handle_send_failed`; every `Effect::Fetch` with
//! `handle_fetch`. A blob counts as held only after the driver reports it stored verified, and
//! stops counting the moment the driver reports its stored copy corrupt (`handle_corrupt`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use crate::digest::Digest;
use crate::manifest::ChunkManifest;
use crate::message::{Capacity, EnrollRequest, Heartbeat, Message, NodeId, RefusalCode, RelayUrl, Standing};
use crate::path::{ArtifactPath, CatalogName};
use crate::time::Instant;

/// Bytes a stored blob of `len` bytes takes on a relay's disk: its content plus its block
/// checksums (odi-storage `sums`: 28 bytes and 8 per MiB), all counted against the budget.
pub fn footprint(len: u64) -> u64 {
    len.saturating_add(28 + 8 * len.div_ceil(1 << 20))
}

#[derive(Clone, Debug)]
pub struct RelayConfig {
    pub public_url: RelayUrl,
    pub capacity: Capacity,
    pub catalogs: Vec<CatalogName>,
    /// Carry only artifacts with one of these tags; empty: any (`odi relay --tag`).
    pub tags: Vec<String>,
    pub enroll_token: String,
    /// Downloads run at once.
    pub max_fetches: usize,
    /// A request with no answer after this long counts as failed.
    pub request_timeout: Duration,
    /// Wait after a failed request or download before trying again.
    pub retry_backoff: Duration,
}

impl RelayConfig {
    pub fn new(public_url: RelayUrl, capacity: Capacity, enroll_token: String) -> Self {
        Self {
            public_url,
            capacity,
            catalogs: Vec::new(),
            tags: Vec::new(),
            enroll_token,
            max_fetches: 4,
            request_timeout: Duration::from_secs(10),
            retry_backoff: Duration::from_secs(2),
        }
    }
}

#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Effect {
    /// Send to the directory; answer with `handle_message` or `handle_send_failed`.
    Send(Message),
    /// Download and store `manifest.digest()` verified, from the directory and from `sources`
    /// (peer relays that hold it); answer with `handle_fetch`.
    Fetch { manifest: ChunkManifest, sources: Vec<RelayUrl> },
    /// Remove a blob from the store (not assigned any more, or expunged).
    Delete { digest: Digest },
    /// Remove the partial download of a blob that is no longer assigned.
    DiscardPartial { digest: Digest },
}

#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Event {
    Enrolled {
        relay: NodeId,
        directory: NodeId,
    },
    Refused {
        reason: String,
    },
    Ready {
        digest: Digest,
    },
    FetchFailed {
        digest: Digest,
        reason: String,
    },
    /// An assigned blob does not fit in the disk budget even after evicting unassigned ones.
    NoRoom {
        digest: Digest,
        size: u64,
    },
    Evicted {
        digest: Digest,
    },
    /// The directory sees the relay differently than before (for example: it failed its
    /// self-test, and why). The operator needs to hear it: the directory's log is not theirs.
    StandingChanged {
        standing: Standing,
    },
    /// The stored copy failed a read-side check and was dropped; it is fetched again if assigned.
    Corrupt {
        digest: Digest,
    },
}

#[derive(Clone, Copy, Debug, Eq, PartialEq)]
enum Phase {
    /// Not enrolled; send `Enroll` at the instant given.
    Enrolling,
    Active,
}

#[derive(Debug)]
struct Leaving {
    size: u64,
    /// A heartbeat without it has gone out.
    reported: bool,
    /// Set when that heartbeat was acknowledged.
    delete_at: Option<Instant>,
}

#[derive(Debug)]
struct Wanted {
    size: u64,
    manifest: Option<ChunkManifest>,
    sources: Vec<RelayUrl>,
}

#[derive(Debug)]
pub struct Relay {
    config: RelayConfig,
    phase: Phase,
    heartbeat_interval: Duration,
    /// Blobs stored verified, with their sizes.
    held: BTreeMap<Digest, u64>,
    /// How much each held blob is worth keeping: client requests served, and since when held.
    value: BTreeMap<Digest, (u64, Instant)>,
    /// Client responses in progress, per blob: never evicted while served.
    serving: BTreeMap<Digest, u32>,
    /// Evicted blobs still on disk until the directory knows they are gone.
    leaving: BTreeMap<Digest, Leaving>,
    /// Copies dropped as corrupt and not held again yet: the directory may still send clients
    /// for them until it has our heartbeat, and they are sent back to it (`was_dropped`).
    dropped: BTreeSet<Digest>,
    /// The directory's latest assignment.
    wanted: BTreeMap<Digest, Wanted>,
    /// Downloads under way, with the bytes reserved for each.
    fetching: BTreeMap<Digest, u64>,
    /// Partial downloads on disk that are not running now (after a restart, or a failure),
    /// with the bytes reserved for each: they count against the budget until resumed or removed.
    partials: BTreeMap<Digest, u64>,
    retry_at: BTreeMap<Digest, Instant>,
    names: BTreeMap<(CatalogName, ArtifactPath), Digest>,
    /// Catalogs whose names may be rebound (answered `no-cache`, not `immutable`).
    mutable: BTreeSet<CatalogName>,
    generation: u64,
    /// When the next request may go out, and whether one is awaiting its answer.
    next_send: Instant,
    awaiting: Option<Instant>,
    /// A heartbeat should go out as soon as nothing is awaited (news to report).
    report_soon: bool,
    /// How the directory last said it sees this relay.
    standing: Option<Standing>,
    effects: VecDeque<Effect>,
    events: VecDeque<Event>,
}

impl Relay {
    /// A relay that starts holding `held` (the verified blobs found in its store) and
    /// `partials` (resumable downloads found on disk, with the bytes they may grow to).
    pub fn new(config: RelayConfig, held: impl IntoIterator<Item = (Digest, u64)>, partials: impl IntoIterator<Item = (Digest, u64)>, now: Instant) -> Self {
        let held: BTreeMap<Digest, u64> = held.into_iter().map(|(d, len)| (d, footprint(len))).collect();
        let value = held.keys().map(|d| (*d, (0, now))).collect();
        let mut relay = Self {
            config,
            phase: Phase::Enrolling,
            heartbeat_interval: Duration::from_secs(5),
            held,
            value,
            serving: BTreeMap::new(),
            leaving: BTreeMap::new(),
            dropped: BTreeSet::new(),
            wanted: BTreeMap::new(),
            fetching: BTreeMap::new(),
            partials: partials.into_iter().collect(),
            retry_at: BTreeMap::new(),
            names: BTreeMap::new(),
            mutable: BTreeSet::new(),
            generation: 0,
            next_send: now,
            awaiting: None,
            report_soon: false,
            standing: None,
            effects: VecDeque::new(),
            events: VecDeque::new(),
        };
        // The operator may have lowered the budget since the last run.
        relay.enforce_budget();
        relay
    }

    // ---- inputs ----

    /// The directory's reply to our last `Send`.
    pub fn handle_message(&mut self, msg: Message, now: Instant) {
        self.awaiting = None;
        match msg {
            Message::Enrolled(ok) => {
                self.phase = Phase::Active;
                self.heartbeat_interval = Duration::from_millis(ok.heartbeat_interval_ms.clamp(100, 300_000));
                self.next_send = now;
                self.events.push_back(Event::Enrolled { relay: ok.relay, directory: ok.directory });
            }
            Message::HeartbeatAck(ack) => {
                for digest in ack.expunged {
                    self.drop_blob(digest);
                }
                if let Some(standing) = ack.standing
                    && self.standing.as_ref() != Some(&standing)
                {
                    self.standing = Some(standing.clone());
                    self.events.push_back(Event::StandingChanged { standing });
                }
                if let Some(state) = ack.state {
                    self.wanted = state.assigned.into_iter().map(|a| (a.digest, Wanted { size: a.size, manifest: a.manifest, sources: a.sources })).collect();
                    let wanted = &self.wanted;
                    self.dropped.retain(|d| wanted.contains_key(d));
                    let stale: Vec<Digest> = self.partials.keys().filter(|d| !self.wanted.contains_key(*d)).copied().collect();
                    for digest in stale {
                        self.partials.remove(&digest);
                        self.effects.push_back(Effect::DiscardPartial { digest });
                    }
                    // Names of blobs still downloading are kept: `lookup` checks `held`, and a
                    // finished download must be servable by name before the next ack.
                    self.mutable = state.names.iter().filter(|n| n.mutable).map(|n| n.catalog.clone()).collect();
                    self.names = state.names.into_iter().map(|n| ((n.catalog, n.path), n.digest)).collect();
                }
                self.generation = ack.generation;
                self.next_send = now + self.heartbeat_interval;
                let linger = self.heartbeat_interval;
                for leaving in self.leaving.values_mut().filter(|l| l.reported && l.delete_at.is_none()) {
                    leaving.delete_at = Some(now + linger);
                }
                self.start_fetches(now);
            }
            Message::Refused(refusal) => {
                self.events.push_back(Event::Refused { reason: refusal.reason });
                if refusal.code == RefusalCode::UnknownRelay {
                    self.phase = Phase::Enrolling;
                }
                self.next_send = now + self.config.retry_backoff;
            }
            Message::Enroll(_) | Message::Heartbeat(_) => self.next_send = now + self.config.retry_backoff,
        }
        self.send_if_due(now);
    }

    /// The last `Send` got no answer (connection refused, timeout, bad response).
    pub fn handle_send_failed(&mut self, now: Instant) {
        self.awaiting = None;
        self.next_send = now + self.config.retry_backoff;
    }

    /// The directory announced a new generation: report in now rather than at the next beat.
    pub fn handle_notify(&mut self, generation: u64, now: Instant) {
        if generation != self.generation && self.phase == Phase::Active {
            self.report_soon = true;
            self.send_if_due(now);
        }
    }

    /// The outcome of an `Effect::Fetch`.
    pub fn handle_fetch(&mut self, digest: Digest, outcome: Result<(), String>, now: Instant) {
        let Some(size) = self.fetching.remove(&digest) else { return };
        match outcome {
            Ok(()) => {
                // A fresh copy replaces any evicted one: its pending deletion must not run.
                self.leaving.remove(&digest);
                self.dropped.remove(&digest);
                self.held.insert(digest, size);
                self.value.insert(digest, (0, now));
                self.events.push_back(Event::Ready { digest });
                if !self.wanted.contains_key(&digest) {
                    self.drop_blob(digest); // unassigned while downloading
                }
                self.report_soon = true;
            }
            Err(reason) => {
                // What was verified so far stays on disk for the retry, and stays reserved.
                self.partials.insert(digest, size);
                self.retry_at.insert(digest, now + self.config.retry_backoff);
                self.events.push_back(Event::FetchFailed { digest, reason });
            }
        }
        self.start_fetches(now);
        self.send_if_due(now);
    }

    /// The driver found that its stored copy of `digest` no longer matches what was verified
    /// (a read-side check while serving, or the scrub). It stops counting as held or servable
    /// at once and is deleted (`Effect::Delete`), the directory hears at once (a heartbeat
    /// without it, so it stops sending clients here), and it is downloaded again while it is
    /// assigned (the directory sends its manifest again to a relay that does not hold it).
    ///
    /// A report that arrives late, after a fresh copy was stored, drops the fresh copy too:
    /// wasted work, never a wrong byte served.
    pub fn handle_corrupt(&mut self, digest: Digest, now: Instant) {
        let held = self.held.remove(&digest).is_some();
        let leaving = self.leaving.remove(&digest).is_some();
        if !held && !leaving {
            return; // already dropped (several reads may find the same rot)
        }
        self.value.remove(&digest);
        self.retry_at.remove(&digest);
        self.dropped.insert(digest);
        self.effects.push_back(Effect::Delete { digest });
        self.events.push_back(Event::Corrupt { digest });
        self.report_soon = true;
        self.start_fetches(now);
        self.send_if_due(now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.awaiting.is_some_and(|t| now >= t) {
            self.handle_send_failed(now);
        }
        self.retry_at.retain(|_, t| *t > now);
        self.delete_departed(now);
        self.start_fetches(now);
        self.send_if_due(now);
    }

    // ---- outputs ----

    #[must_use]
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let send = match self.awaiting {
            Some(deadline) => deadline,
            None => self.next_send,
        };
        self.retry_at.values().copied().chain(self.leaving.values().filter_map(|l| l.delete_at)).chain([send]).min()
    }

    // ---- queries ----

    /// A client response for `digest` started: it counts toward the blob's value and load,
    /// and the blob is not evicted until `serving_ended`.
    pub fn serving_started(&mut self, digest: Digest) {
        *self.serving.entry(digest).or_default() += 1;
        if let Some((hits, _)) = self.value.get_mut(&digest) {
            *hits += 1;
        }
    }

    pub fn serving_ended(&mut self, digest: Digest) {
        if let Some(n) = self.serving.get_mut(&digest) {
            *n -= 1;
            if *n == 0 {
                self.serving.remove(&digest);
            }
        }
    }

    /// How the directory last said it sees this relay (`None` before its first answer).
    pub fn standing(&self) -> Option<&Standing> {
        self.standing.as_ref()
    }

    /// Client responses in progress.
    pub fn active(&self) -> u32 {
        self.serving.values().sum()
    }

    /// The digest served at `catalog/path`, if this relay has its bytes.
    pub fn lookup(&self, catalog: &str, path: &ArtifactPath) -> Option<Digest> {
        let catalog = CatalogName::new(catalog).ok()?;
        self.names.get(&(catalog, path.clone())).copied().filter(|d| self.has_bytes(d))
    }

    /// True when names in `catalog` may be bound to other bytes later, as the directory said.
    pub fn is_mutable(&self, catalog: &str) -> bool {
        self.mutable.contains(catalog)
    }

    /// The digest named `catalog/path` in the latest assignment, held or not.
    pub fn name_of(&self, catalog: &str, path: &ArtifactPath) -> Option<Digest> {
        let catalog = CatalogName::new(catalog).ok()?;
        self.names.get(&(catalog, path.clone())).copied()
    }

    /// True when this relay dropped its copy of `digest` as corrupt and has not stored it again:
    /// a client sent here for it (the directory had not heard yet) is sent back to the directory.
    pub fn was_dropped(&self, digest: &Digest) -> bool {
        self.dropped.contains(digest) && !self.has_bytes(digest)
    }

    /// True when `digest` is in the latest assignment (a partial download of it is worth keeping).
    pub fn wants(&self, digest: &Digest) -> bool {
        self.wanted.contains_key(digest)
    }

    /// True when the blob's bytes are on disk and may be served: held, or evicted but not yet
    /// deleted.
    pub fn has_bytes(&self, digest: &Digest) -> bool {
        self.held.contains_key(digest) || self.leaving.contains_key(digest)
    }

    /// True once an assignment has arrived since start.
    pub fn has_assignment(&self) -> bool {
        self.generation > 0
    }

    pub fn holds(&self, digest: &Digest) -> bool {
        self.held.contains_key(digest)
    }

    pub fn held(&self) -> impl Iterator<Item = (&Digest, &u64)> {
        self.held.iter()
    }

    /// The generation of the last assignment applied.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn is_enrolled(&self) -> bool {
        self.phase == Phase::Active
    }

    /// Bytes held plus bytes reserved for downloads under way; never above the budget.
    pub fn used(&self) -> u64 {
        self.held.values().chain(self.fetching.values()).chain(self.partials.values()).chain(self.leaving.values().map(|l| &l.size)).sum()
    }

    pub fn fetching(&self) -> usize {
        self.fetching.len()
    }

    /// True when every assigned blob is held.
    pub fn is_synced(&self) -> bool {
        self.wanted.keys().all(|d| self.held.contains_key(d))
    }

    // ---- internals ----

    fn send_if_due(&mut self, now: Instant) {
        if self.awaiting.is_some() || (now < self.next_send && !(self.report_soon && self.phase == Phase::Active)) {
            return;
        }
        let msg = match self.phase {
            Phase::Enrolling => Message::Enroll(EnrollRequest {
                token: self.config.enroll_token.clone(),
                public_url: self.config.public_url.clone(),
                capacity: self.config.capacity,
                catalogs: self.config.catalogs.clone(),
                tags: self.config.tags.clone(),
            }),
            Phase::Active => {
                self.leaving.values_mut().for_each(|l| l.reported = true);
                Message::Heartbeat(Heartbeat {
                    generation: self.generation,
                    held: self.held.keys().copied().collect(),
                    used: self.used(),
                    active: self.active(),
                })
            }
        };
        self.report_soon = false;
        self.awaiting = Some(now + self.config.request_timeout);
        self.effects.push_back(Effect::Send(msg));
    }

    fn start_fetches(&mut self, now: Instant) {
        // An evicted blob still on disk that is wanted again is taken back, not downloaded (a
        // download would race its pending deletion).
        let back: Vec<Digest> = self.leaving.keys().filter(|d| self.wanted.contains_key(*d)).copied().collect();
        for digest in back {
            if let Some(leaving) = self.leaving.remove(&digest) {
                self.held.insert(digest, leaving.size);
                self.value.insert(digest, (0, now));
                self.report_soon = true;
            }
        }
        let budget = self.config.capacity.disk_budget;
        let mut todo: Vec<(Digest, u64, ChunkManifest, Vec<RelayUrl>)> = self
            .wanted
            .iter()
            .filter(|(d, _)| !self.held.contains_key(d) && !self.fetching.contains_key(d) && self.retry_at.get(d).is_none_or(|t| *t <= now))
            .filter_map(|(d, w)| w.manifest.clone().map(|m| (*d, w.size, m, w.sources.clone())))
            .collect();
        // Resume partial downloads first: their bytes are already on disk.
        todo.sort_by_key(|(d, ..)| !self.partials.contains_key(d));
        for (digest, size, manifest, sources) in todo {
            if self.fetching.len() >= self.config.max_fetches {
                break;
            }
            if manifest.digest() != digest || manifest.total_len() != size {
                self.events.push_back(Event::FetchFailed { digest, reason: "the directory sent a manifest for other bytes".into() });
                continue;
            }
            // A partial download's reservation becomes the fetch's.
            let reserved = self.partials.remove(&digest).unwrap_or(0);
            let size = footprint(size);
            if !self.make_room(size.saturating_sub(reserved), budget) {
                if reserved > 0 {
                    self.partials.insert(digest, reserved);
                }
                if self.leaving.is_empty() {
                    self.events.push_back(Event::NoRoom { digest, size });
                }
                continue;
            }
            self.fetching.insert(digest, size);
            self.effects.push_back(Effect::Fetch { manifest, sources });
        }
    }

    /// Evicts held blobs that are no longer assigned, least valuable first (fewest requests
    /// served, then oldest), until `size` more bytes fit in `budget`. Never touches assigned
    /// blobs, blobs being served, or downloads under way.
    ///
    /// Evicted blobs leave only once the directory knows (see `evict`): this evicts enough for
    /// the room to come, and answers whether the room is there now.
    fn make_room(&mut self, size: u64, budget: u64) -> bool {
        let staying = |r: &Self| r.used() - r.leaving.values().map(|l| l.size).sum::<u64>();
        while staying(self).saturating_add(size) > budget {
            let Some(victim) = self.least_valuable(|d| !self.wanted.contains_key(d)) else { break };
            self.evict(victim);
        }
        self.used().saturating_add(size) <= budget
    }

    /// Brings the disk back within the budget after it shrank: unassigned blobs first, then
    /// assigned ones, least valuable first, never one being served.
    fn enforce_budget(&mut self) {
        let budget = self.config.capacity.disk_budget;
        while self.used() > budget {
            let victim = self.least_valuable(|d| !self.wanted.contains_key(d)).or_else(|| self.least_valuable(|_| true));
            let Some(victim) = victim else { return };
            self.drop_blob(victim);
            self.events.push_back(Event::Evicted { digest: victim });
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
    /// clients) and blobs the directory never heard of.
    fn drop_blob(&mut self, digest: Digest) {
        self.dropped.remove(&digest);
        if self.held.remove(&digest).is_some() {
            self.value.remove(&digest);
            self.names.retain(|_, d| *d != digest);
            self.effects.push_back(Effect::Delete { digest });
            self.report_soon = true;
        }
    }

    /// Evicts a held blob in two phases: it stops being reported as held but stays on disk and
    /// servable until the directory has acknowledged a heartbeat without it (plus one heartbeat
    /// interval for clients already redirected), so no client is sent to bytes that are gone.
    fn evict(&mut self, digest: Digest) {
        if let Some(size) = self.held.remove(&digest) {
            self.value.remove(&digest);
            self.leaving.insert(digest, Leaving { size, reported: false, delete_at: None });
            self.report_soon = true;
            self.events.push_back(Event::Evicted { digest });
        }
    }

    fn delete_departed(&mut self, now: Instant) {
        let due: Vec<Digest> = self.leaving.iter().filter(|(_, l)| l.delete_at.is_some_and(|t| t <= now)).map(|(d, _)| *d).collect();
        for digest in due {
            self.leaving.remove(&digest);
            self.names.retain(|_, d| *d != digest);
            self.effects.push_back(Effect::Delete { digest });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Assigned, HeartbeatAck, RelayAssignment};

    fn d(n: u8) -> Digest {
        Digest::from_bytes([n; 32])
    }

    fn relay(budget: u64, held: &[(u8, u64)]) -> Relay {
        let config = RelayConfig::new(RelayUrl::new("http://r").unwrap(), Capacity { disk_budget: budget, bandwidth: 0 }, "t".into());
        Relay::new(config, held.iter().map(|(n, s)| (d(*n), *s)), [], Instant::ZERO)
    }

    fn assign(r: &mut Relay, generation: u64, wanted: &[(u8, u64)], now: Instant) {
        let assigned = wanted
            .iter()
            .map(|(n, size)| {
                let data = vec![*n; *size as usize];
                let manifest = ChunkManifest::of(&data, crate::manifest::MIN_CHUNK_SIZE).unwrap();
                Assigned { digest: manifest.digest(), size: *size, manifest: Some(manifest), sources: Vec::new() }
            })
            .collect();
        r.phase = Phase::Active;
        r.handle_message(
            Message::HeartbeatAck(HeartbeatAck {
                generation,
                state: Some(RelayAssignment { assigned, names: Vec::new() }),
                expunged: Vec::new(),
                standing: None,
            }),
            now,
        );
    }

    fn deleted(r: &mut Relay) -> Vec<Digest> {
        std::iter::from_fn(|| r.poll_effect())
            .filter_map(|e| match e {
                Effect::Delete { digest } => Some(digest),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_lowered_budget_evicts_least_valuable_first_and_never_a_blob_being_served() {
        let mut r = relay(10_000, &[(1, 4000), (2, 4000), (3, 4000), (4, 4000)]);
        assert_eq!(deleted(&mut r).len(), 2, "16 000 bytes held, 10 000 allowed: two go");
        assert!(r.used() <= 10_000);

        let mut r = relay(100_000, &[(1, 4000), (2, 4000), (3, 4000)]);
        for _ in 0..5 {
            r.serving_started(d(1));
        }
        r.serving_started(d(2));
        r.serving_ended(d(2));
        // d(3) was never requested: it goes first. d(1) is being served: it never goes.
        r.config.capacity.disk_budget = 5000;
        r.enforce_budget();
        assert_eq!(deleted(&mut r), vec![d(3), d(2)]);
        assert!(r.holds(&d(1)), "being served, so kept even over budget until it is done");
    }

    #[test]
    fn room_for_an_assignment_comes_from_unassigned_blobs_only() {
        let mut r = relay(12_200, &[(1, 4000), (2, 4000)]);
        let _ = deleted(&mut r);
        // Assigned: a new 8000-byte blob; d(1) and d(2) are no longer assigned.
        assign(&mut r, 2, &[(9, 8000)], Instant::ZERO);
        let count = |effects: &[Effect]| {
            let deletes = effects.iter().filter(|e| matches!(e, Effect::Delete { .. })).count();
            let fetches = effects.iter().filter(|e| matches!(e, Effect::Fetch { .. })).count();
            (deletes, fetches)
        };
        // One 4000-byte blob is evicted to fit 8000 in 12 000, but it is not deleted (nor the
        // download started) before the directory has heard it is gone.
        let effects: Vec<Effect> = std::iter::from_fn(|| r.poll_effect()).collect();
        assert_eq!(count(&effects), (0, 0), "{effects:?}");
        let reported: Vec<Digest> = effects
            .iter()
            .find_map(|e| match e {
                Effect::Send(Message::Heartbeat(hb)) => Some(hb.held.clone()),
                _ => None,
            })
            .expect("a heartbeat reports the eviction");
        assert_eq!(reported.len(), 1);
        let evicted = if reported[0] == d(1) { d(2) } else { d(1) };
        assert!(r.has_bytes(&evicted), "still servable until the directory knows");
        assign(&mut r, 3, &[(9, 8000)], Instant::from_millis(100));
        let _ = std::iter::from_fn(|| r.poll_effect()).count();
        let later = Instant::from_millis(100) + r.heartbeat_interval;
        r.handle_timeout(later);
        let effects: Vec<Effect> = std::iter::from_fn(|| r.poll_effect()).collect();
        assert_eq!(count(&effects), (1, 1), "{effects:?}");
        assert!(!r.has_bytes(&evicted));
        assert!(r.used() <= 12_200);
    }

    #[test]
    fn a_corrupt_copy_stops_being_held_is_reported_at_once_and_is_fetched_again() {
        let data = vec![5u8; 10_000];
        let manifest = ChunkManifest::of(&data, crate::manifest::MIN_CHUNK_SIZE).unwrap();
        let digest = manifest.digest();
        let mut r = relay(100_000, &[]);
        r.held.insert(digest, 10_000);
        // Assigned and held: the directory sends no manifest.
        let held = Assigned { digest, size: 10_000, manifest: None, sources: Vec::new() };
        r.phase = Phase::Active;
        let ack = |assigned: Assigned| {
            Message::HeartbeatAck(HeartbeatAck {
                generation: 2,
                state: Some(RelayAssignment { assigned: vec![assigned], names: Vec::new() }),
                expunged: Vec::new(),
                standing: None,
            })
        };
        r.handle_message(ack(held), Instant::ZERO);
        let _ = std::iter::from_fn(|| r.poll_effect()).count();
        r.awaiting = None;

        r.handle_corrupt(digest, Instant::from_millis(10));
        assert!(!r.holds(&digest) && !r.has_bytes(&digest), "neither counted nor served");
        assert!(r.was_dropped(&digest), "clients sent here meanwhile go back to the directory");
        assert_eq!(r.poll_event(), Some(Event::Corrupt { digest }));
        let effects: Vec<Effect> = std::iter::from_fn(|| r.poll_effect()).collect();
        assert!(
            matches!(&effects[..], [Effect::Delete { digest: d }, Effect::Send(Message::Heartbeat(hb))] if hb.held.is_empty() && *d == digest),
            "the directory hears at once, before the next beat: {effects:?}"
        );
        r.handle_corrupt(digest, Instant::from_millis(11));
        assert_eq!(r.poll_effect(), None, "a second report of the same rot changes nothing");

        // The directory, no longer believing it held, sends the manifest: fetched again.
        let missing = Assigned { digest, size: 10_000, manifest: Some(manifest.clone()), sources: Vec::new() };
        r.handle_message(ack(missing), Instant::from_millis(20));
        let effects: Vec<Effect> = std::iter::from_fn(|| r.poll_effect()).collect();
        assert!(effects.iter().any(|e| matches!(e, Effect::Fetch { manifest: m, .. } if m.digest() == digest)), "{effects:?}");
        r.handle_fetch(digest, Ok(()), Instant::from_millis(30));
        assert!(r.holds(&digest) && !r.was_dropped(&digest));
    }

    #[test]
    fn partial_downloads_count_against_the_budget_and_are_dropped_when_unassigned() {
        let config = RelayConfig::new(RelayUrl::new("http://r").unwrap(), Capacity { disk_budget: 10_000, bandwidth: 0 }, "t".into());
        let mut r = Relay::new(config, [], [(d(7), 6000)], Instant::ZERO);
        assert_eq!(r.used(), 6000);
        assign(&mut r, 2, &[(8, 3000)], Instant::ZERO);
        let effects: Vec<Effect> = std::iter::from_fn(|| r.poll_effect()).collect();
        assert!(effects.contains(&Effect::DiscardPartial { digest: d(7) }), "{effects:?}");
        assert_eq!(r.used(), footprint(3000), "only the new download is reserved");
    }
}
