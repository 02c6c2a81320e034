//! The relay machine: enrollment and heartbeats with each directory it serves, and turning
//! their assignments into verified downloads inside one disk budget.
//!
//! `Relay` is an orchestrator of children and performs no I/O:
//! - one `registration::Registration` per directory (`Upstream` is its index, in the order
//!   the directories were configured): enrollment, heartbeats, standing, the assignment and
//!   names it sent, its own generation and timers;
//! - one `holdings::Holdings`, shared: blobs held, downloads in flight, partial files, the
//!   disk budget, eviction and deletion.
//!
//! The budget rule: each directory is told an equal share of the budget as its capacity
//! ([`RelayConfig::share`]), so the union of what they assign fits by construction (a digest
//! assigned by two is stored and counted once); the holdings enforce the whole budget anyway,
//! and an assigned blob that does not fit is not fetched and not reported held (`Event::NoRoom`),
//! so no directory sends clients here for it. A held blob is evicted only when no directory
//! assigns it; an expunge from any directory deletes it at once.
//!
//! **After every `handle_*` call, drain `poll_effect` and `poll_event` to `None`, then re-arm
//! one timer at `poll_timeout`.** Every `Effect::Send` must be answered with `handle_message`
//! (the reply) or `handle_send_failed`, for the same upstream; every `Effect::Fetch` with
//! `handle_fetch`. A blob counts as held only after the driver reports it stored verified, and
//! stops counting the moment the driver reports its stored copy corrupt (`handle_corrupt`).

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use crate::digest::Digest;
use crate::manifest::ChunkManifest;
use crate::message::{Capacity, Message, NodeId, RelayUrl, Standing};
use crate::path::{ArtifactPath, CatalogName};
use crate::time::{Instant, UnixTime};

mod holdings;
mod registration;
mod trust;

pub use holdings::footprint;
use holdings::{Holdings, Want};
use registration::Registration;
use trust::Verdict;
pub use trust::{AppliedHead, MAX_HEAD_TTL, Trust};

/// Index of a directory among those the relay is configured with (`RelayConfig::directories`).
pub type Upstream = usize;

/// One directory to enroll with.
#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    /// How the operator named it (its URL): for messages only, the driver keeps the address.
    pub name: String,
    /// The token sent in every enrollment with this directory.
    pub enroll_token: String,
    /// The directory's pinned key (`--directory-key`, or pinned on first use and persisted) and
    /// the highest heads applied from it before this start.
    pub trust: Trust,
}

/// What a relay is and offers: its URL, its budget, what it carries, and its directories.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Where clients and other relays reach this relay; sent in every enrollment.
    pub public_url: RelayUrl,
    /// The whole relay's: every directory together gets no more (see `share`).
    pub capacity: Capacity,
    /// Catalogs to carry; empty: all.
    pub catalogs: Vec<CatalogName>,
    /// Carry only artifacts with one of these tags; empty: any (`odi relay --tag`).
    pub tags: Vec<String>,
    /// The directories to enroll with; at least one.
    pub directories: Vec<UpstreamConfig>,
    /// Downloads run at once.
    pub max_fetches: usize,
    /// A request with no answer after this long counts as failed.
    pub request_timeout: Duration,
    /// Wait after a failed request or download before trying again.
    pub retry_backoff: Duration,
    /// Every this many heartbeats to a directory reports the whole held set; those between
    /// report what changed since the set it last took (`HeldDelta`). At least 1 (always whole).
    pub full_report_every: u32,
}

/// Heartbeats per whole held report, by default: with 5 s heartbeats, one every 5 minutes.
pub const FULL_REPORT_EVERY: u32 = 60;

impl RelayConfig {
    /// A relay for one directory.
    pub fn new(public_url: RelayUrl, capacity: Capacity, enroll_token: String) -> Self {
        Self {
            public_url,
            capacity,
            catalogs: Vec::new(),
            tags: Vec::new(),
            directories: vec![UpstreamConfig { name: "the directory".into(), enroll_token, trust: Trust::default() }],
            max_fetches: 4,
            request_timeout: Duration::from_secs(10),
            retry_backoff: Duration::from_secs(2),
            full_report_every: FULL_REPORT_EVERY,
        }
    }

    /// The capacity directory `upstream` is told: an equal share of the disk budget and of the
    /// bandwidth (the first takes what the division leaves over). The shares add up to the
    /// whole, so what the directories assign together fits.
    pub fn share(&self, upstream: Upstream) -> Capacity {
        let n = self.directories.len().max(1) as u64;
        let split = |total: u64| total / n + if upstream == 0 { total % n } else { 0 };
        Capacity { disk_budget: split(self.capacity.disk_budget), bandwidth: split(self.capacity.bandwidth) }
    }
}

/// Work for the driver to carry out: messages, downloads, deletions, persistence.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Effect {
    /// Send to directory `upstream`; answer with `handle_message` or `handle_send_failed`.
    Send {
        /// The directory to send to.
        upstream: Upstream,
        /// The request: an enrollment or a heartbeat.
        msg: Message,
    },
    /// Download and store `manifest.digest()` verified, from directory `upstream` (which
    /// assigned it) and from `sources` (peer relays that hold it); answer with `handle_fetch`.
    Fetch {
        /// The directory that sent the manifest.
        upstream: Upstream,
        /// The blob's chunk manifest, which every chunk is verified against.
        manifest: ChunkManifest,
        /// Ready relays the directories named as holding it, without repeats.
        sources: Vec<RelayUrl>,
    },
    /// Remove a blob from the store (not assigned any more, or expunged).
    Delete {
        /// The blob to remove.
        digest: Digest,
    },
    /// Remove the partial download of a blob that is no longer assigned.
    DiscardPartial {
        /// The blob whose partial download to remove.
        digest: Digest,
    },
    /// Persist what `trust(upstream)` returns (a key pinned, a newer head applied), so that a
    /// restart neither forgets the pin nor accepts an older head.
    SaveTrust {
        /// The directory whose trust moved.
        upstream: Upstream,
    },
}

/// What happened, for the driver to log, count or show the operator.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Event {
    /// Directory `upstream` accepted the enrollment.
    Enrolled {
        /// The directory that accepted.
        upstream: Upstream,
        /// This relay's id as the directory recorded it.
        relay: NodeId,
        /// The directory's key, as its answer states it.
        directory: NodeId,
    },
    /// Directory `upstream` refused a request; the relay tries again after its backoff (an
    /// enrollment first, when the directory no longer knows it).
    Refused {
        /// The directory that refused.
        upstream: Upstream,
        /// The directory's one-line reason.
        reason: String,
    },
    /// A download finished and was stored verified: the blob is held.
    Ready {
        /// The blob now held.
        digest: Digest,
    },
    /// A download failed, or the directory's manifest names other bytes; tried again later
    /// while assigned.
    FetchFailed {
        /// The blob not fetched.
        digest: Digest,
        /// What went wrong.
        reason: String,
    },
    /// An assigned blob does not fit in the disk budget even after evicting unassigned ones.
    /// It is not reported held, so its directories send no clients here for it.
    NoRoom {
        /// The blob that does not fit.
        digest: Digest,
        /// The bytes it would take on disk (its `footprint`).
        size: u64,
    },
    /// A held blob stopped being held to make room: its bytes go once every directory has
    /// heard, or at once when the budget was lowered below what is held.
    Evicted {
        /// The blob let go.
        digest: Digest,
    },
    /// A directory sees the relay differently than before (for example: it failed its
    /// self-test, and why). The operator needs to hear it: the directory's log is not theirs.
    StandingChanged {
        /// The directory whose view changed.
        upstream: Upstream,
        /// Its view now.
        standing: Standing,
    },
    /// The stored copy failed a read-side check and was dropped; it is fetched again if assigned.
    Corrupt {
        /// The blob whose copy was dropped.
        digest: Digest,
    },
    /// The directory's key was pinned on first use.
    Pinned {
        /// The directory pinned.
        upstream: Upstream,
        /// The key every later answer from it must be signed by.
        key: NodeId,
    },
    /// An answer was refused and nothing of it applied (a forged signature, a rollback, an
    /// expired head): reported once per reason while answers are refused.
    Distrusted {
        /// The directory whose answer was refused.
        upstream: Upstream,
        /// Why, worded for the operator.
        reason: String,
    },
    /// Answers are accepted again after being refused.
    Trusted {
        /// The directory trusted again.
        upstream: Upstream,
    },
    /// The head of `catalog` expired without renewal: its names are no longer served.
    Frozen {
        /// The directory whose head expired.
        upstream: Upstream,
        /// The catalog no longer served.
        catalog: CatalogName,
        /// The sequence of the last head applied for it.
        seq: u64,
    },
}

/// What the children queue for the driver, and the deletions the orchestrator must reflect.
#[derive(Debug, Default)]
struct Outputs {
    effects: VecDeque<Effect>,
    events: VecDeque<Event>,
    /// Blobs deleted from the store: their names are forgotten.
    deleted: Vec<Digest>,
}

/// A relay's state machine, over every directory it is configured with (see the module docs
/// for what it does and the order in which to drive it).
#[derive(Debug)]
pub struct Relay {
    config: RelayConfig,
    registrations: Vec<Registration>,
    holdings: Holdings,
    out: Outputs,
}

impl Relay {
    /// A relay that starts holding `held` (the verified blobs found in its store) and
    /// `partials` (resumable downloads found on disk, with the bytes they may grow to).
    pub fn new(config: RelayConfig, held: impl IntoIterator<Item = (Digest, u64)>, partials: impl IntoIterator<Item = (Digest, u64)>, now: Instant) -> Self {
        let holdings = Holdings::new(config.capacity.disk_budget, config.max_fetches, config.retry_backoff, held, partials, now);
        let registrations =
            config.directories.iter().enumerate().map(|(i, d)| Registration::new(i, config.share(i), d.enroll_token.clone(), &d.trust, now)).collect();
        let mut relay = Self { config, registrations, holdings, out: Outputs::default() };
        // The operator may have lowered the budget since the last run.
        let wanted = relay.wanted();
        relay.holdings.enforce_budget(&wanted, &mut relay.out);
        relay.settle();
        relay
    }

    // ---- inputs ----

    /// Directory `upstream`'s reply to our last `Send` to it, whose signature (bound to the
    /// request, checked by the driver) is by `signer`. It is applied only if `signer` is the
    /// pinned key (or pins it, on first use) and its heads pass (see `trust`); otherwise it
    /// counts as no answer, and nothing of it is applied. `wall` is the Unix time now, which
    /// head expiries are stated in.
    pub fn handle_message(&mut self, upstream: Upstream, msg: Message, signer: NodeId, now: Instant, wall: UnixTime) {
        let backoff = self.config.retry_backoff;
        let Some(reg) = self.registrations.get_mut(upstream) else { return };
        match reg.trust.check(&msg, signer, now, wall) {
            Verdict::Refuse(reason) => {
                self.handle_unverified(upstream, reason, now);
                return;
            }
            Verdict::Accept { changed, pinned } => {
                if reg.trust.refusing.take().is_some() {
                    self.out.events.push_back(Event::Trusted { upstream });
                }
                if let Some(key) = pinned {
                    self.out.events.push_back(Event::Pinned { upstream, key });
                }
                if changed {
                    self.out.effects.push_back(Effect::SaveTrust { upstream });
                }
            }
        }
        let heard = reg.handle_reply(msg, backoff, now, &mut self.out.events);
        for digest in heard.expunged {
            // Obeyed at once, whoever else assigns it: the bytes go now. Another directory that
            // still assigns the same bytes gets them fetched again (its clients, sent here
            // meanwhile, go back to a directory).
            self.registrations[upstream].wanted.remove(&digest);
            self.holdings.drop_blob(digest, &mut self.out);
            if self.registrations.iter().any(|r| r.wanted.contains_key(&digest)) {
                self.holdings.dropped.insert(digest);
            }
        }
        if heard.assignment {
            let wanted = self.wanted();
            self.holdings.assignment_changed(&wanted, &mut self.out);
        }
        if heard.acked {
            let linger = self.linger();
            self.holdings.heartbeat_acked(upstream, linger, now);
            self.start_fetches(now);
        }
        if heard.refused {
            // A directory that refuses (a wrong token, not enrolled) acknowledges no heartbeat:
            // an eviction waits for it only as long as a silent one.
            let (lease, linger) = (self.registrations[upstream].lease, self.linger());
            self.holdings.upstream_unreachable(upstream, lease, linger, now);
        }
        self.settle();
        self.send_due(now);
    }

    /// The answer to the last `Send` to `upstream` was refused before it reached the machine
    /// (unsigned, signed for another request, not verifying): it counts as no answer, and
    /// `reason` is reported (once while it stays the same).
    pub fn handle_unverified(&mut self, upstream: Upstream, reason: String, now: Instant) {
        let Some(reg) = self.registrations.get_mut(upstream) else { return };
        if reg.trust.refusing.as_ref() != Some(&reason) {
            reg.trust.refusing = Some(reason.clone());
            self.out.events.push_back(Event::Distrusted { upstream, reason });
        }
        self.handle_send_failed(upstream, now);
    }

    /// The last `Send` to `upstream` got no answer (connection refused, timeout, bad response).
    pub fn handle_send_failed(&mut self, upstream: Upstream, now: Instant) {
        let backoff = self.config.retry_backoff;
        let linger = self.linger();
        let Some(reg) = self.registrations.get_mut(upstream) else { return };
        reg.send_failed(backoff, now);
        let lease = reg.lease;
        self.holdings.upstream_unreachable(upstream, lease, linger, now);
    }

    /// Directory `upstream` announced a new generation: report in now rather than at the next
    /// beat.
    pub fn handle_notify(&mut self, upstream: Upstream, generation: u64, now: Instant) {
        if self.registrations.get_mut(upstream).is_some_and(|r| r.notify(generation)) {
            self.send_due(now);
        }
    }

    /// The outcome of an `Effect::Fetch`.
    pub fn handle_fetch(&mut self, digest: Digest, outcome: Result<(), String>, now: Instant) {
        let wanted = self.wanted();
        self.holdings.fetched(digest, outcome, &wanted, now, &mut self.out);
        self.start_fetches(now);
        self.settle();
        self.send_due(now);
    }

    /// The driver found that its stored copy of `digest` no longer matches what was verified
    /// (a read-side check while serving, or the scrub). It stops counting as held or servable
    /// at once and is deleted (`Effect::Delete`), the directories hear at once (a heartbeat
    /// without it, so they stop sending clients here), and it is downloaded again while it is
    /// assigned (a directory sends its manifest again to a relay that does not hold it).
    ///
    /// A report that arrives late, after a fresh copy was stored, drops the fresh copy too:
    /// wasted work, never a wrong byte served.
    pub fn handle_corrupt(&mut self, digest: Digest, now: Instant) {
        if !self.holdings.corrupt(digest, &mut self.out) {
            return; // already dropped (several reads may find the same rot)
        }
        self.start_fetches(now);
        self.settle();
        self.send_due(now);
    }

    /// Timer input, due at `poll_timeout`: unanswered requests count as failed, expired heads
    /// freeze their catalogs, evicted blobs whose time came are deleted, and due downloads and
    /// requests go out.
    pub fn handle_timeout(&mut self, now: Instant) {
        for upstream in 0..self.registrations.len() {
            if self.registrations[upstream].timed_out(now) {
                self.handle_send_failed(upstream, now);
            }
            for (catalog, seq) in self.registrations[upstream].trust.expire(now) {
                self.out.events.push_back(Event::Frozen { upstream, catalog, seq });
            }
        }
        self.holdings.timeout(now, &mut self.out);
        self.start_fetches(now);
        self.settle();
        self.send_due(now);
    }

    // ---- outputs ----

    /// The next effect to carry out; `None` once drained.
    #[must_use]
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.out.effects.pop_front()
    }

    /// The next event to report; `None` once drained.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.out.events.pop_front()
    }

    /// When to call `handle_timeout` next: the earliest request deadline, send, head expiry,
    /// download retry or pending deletion.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.registrations.iter().map(Registration::poll_timeout).chain(self.holdings.poll_timeout()).min()
    }

    // ---- queries ----

    /// A client response for `digest` started: it counts toward the blob's value and load,
    /// and the blob is not evicted until `serving_ended`.
    pub fn serving_started(&mut self, digest: Digest) {
        self.holdings.serving_started(digest);
    }

    /// The client response for `digest` that `serving_started` announced is over.
    pub fn serving_ended(&mut self, digest: Digest) {
        self.holdings.serving_ended(digest);
    }

    /// What to persist of directory `upstream` (see `Effect::SaveTrust`).
    pub fn trust(&self, upstream: Upstream) -> Option<Trust> {
        self.registrations.get(upstream).map(|r| r.trust.snapshot())
    }

    /// Directory `upstream`'s pinned key, if pinned yet.
    pub fn pinned_key(&self, upstream: Upstream) -> Option<NodeId> {
        self.registrations.get(upstream).and_then(|r| r.trust.key())
    }

    /// How many directories this relay is configured with.
    pub fn upstreams(&self) -> usize {
        self.registrations.len()
    }

    /// How directory `upstream` last said it sees this relay (`None` before its first answer).
    pub fn standing_with(&self, upstream: Upstream) -> Option<&Standing> {
        self.registrations.get(upstream)?.standing.as_ref()
    }

    /// How the first directory last said it sees this relay.
    pub fn standing(&self) -> Option<&Standing> {
        self.standing_with(0)
    }

    /// The capacity directory `upstream` is told (its share of the budget).
    pub fn capacity_of(&self, upstream: Upstream) -> Option<Capacity> {
        self.registrations.get(upstream).map(|r| r.capacity)
    }

    /// Client responses in progress.
    pub fn active(&self) -> u32 {
        self.holdings.active()
    }

    /// The digest served at `catalog/path`, if this relay has its bytes: the first directory
    /// (in configured order) that names it decides.
    pub fn lookup(&self, catalog: &str, path: &ArtifactPath) -> Option<Digest> {
        self.name_of(catalog, path).filter(|d| self.has_bytes(d))
    }

    /// True when names in `catalog` may be bound to other bytes later, as a directory said.
    pub fn is_mutable(&self, catalog: &str) -> bool {
        self.registrations.iter().any(|r| r.mutable.contains(catalog))
    }

    /// The digest named `catalog/path` in the latest assignments, held or not.
    pub fn name_of(&self, catalog: &str, path: &ArtifactPath) -> Option<Digest> {
        let catalog = CatalogName::new(catalog).ok()?;
        self.registrations.iter().find_map(|r| r.name_of(&catalog, path))
    }

    /// Every name the latest assignments give, with its digest, directory by directory (held
    /// or not, the catalog's head holding or not: `lookup` is what decides serving).
    pub fn names(&self) -> impl Iterator<Item = (&CatalogName, &ArtifactPath, &Digest)> {
        self.registrations.iter().flat_map(|r| r.names.iter().map(|((catalog, path), digest)| (catalog, path, digest)))
    }

    /// Changes whenever an assignment replaces a directory's names: an index of `names` built
    /// at one value is current while it holds.
    pub fn names_version(&self) -> u64 {
        self.registrations.iter().map(|r| r.names_version).sum()
    }

    /// The directory a client asking for a name here should go back to: the first that names
    /// it, else the first whose assignment names anything in `catalog`. `None` when no
    /// directory this relay knows serves the catalog.
    pub fn upstream_for(&self, catalog: &str, path: &ArtifactPath) -> Option<Upstream> {
        let catalog = CatalogName::new(catalog).ok()?;
        let named = self.registrations.iter().find(|r| r.name_of(&catalog, path).is_some());
        named.or_else(|| self.registrations.iter().find(|r| r.serves_catalog(&catalog))).map(|r| r.index)
    }

    /// The first directory (in configured order) whose assignment has `digest`.
    pub fn upstream_wanting(&self, digest: &Digest) -> Option<Upstream> {
        self.registrations.iter().find(|r| r.wanted.contains_key(digest)).map(|r| r.index)
    }

    /// True when this relay dropped its copy of `digest` (corrupt, or expunged by one directory
    /// while another assigns it) and has not stored it again: a client sent here for it is
    /// sent back to a directory.
    pub fn was_dropped(&self, digest: &Digest) -> bool {
        self.holdings.dropped.contains(digest) && !self.has_bytes(digest)
    }

    /// True when some directory's latest assignment has `digest` (a partial download of it is
    /// worth keeping).
    pub fn wants(&self, digest: &Digest) -> bool {
        self.registrations.iter().any(|r| r.wanted.contains_key(digest))
    }

    /// True when the blob's bytes are on disk and may be served: held, or evicted but not yet
    /// deleted.
    pub fn has_bytes(&self, digest: &Digest) -> bool {
        self.holdings.has_bytes(digest)
    }

    /// True once every directory has sent an assignment since start: before that a blob on
    /// disk may have been expunged while this relay was away.
    pub fn has_assignment(&self) -> bool {
        self.registrations.iter().all(Registration::has_assignment)
    }

    /// True when `digest` may be served now: every directory has answered since start, or one
    /// that has answered assigns or names it (its word is enough for its own content).
    pub fn may_serve(&self, digest: &Digest) -> bool {
        self.has_assignment()
            || self.registrations.iter().filter(|r| r.has_assignment()).any(|r| r.wanted.contains_key(digest) || r.names.values().any(|d| d == digest))
    }

    /// True when `digest` is held: stored verified and counted (not an evicted copy still on
    /// disk).
    pub fn holds(&self, digest: &Digest) -> bool {
        self.holdings.held.contains_key(digest)
    }

    /// Every held blob, with the bytes it takes on disk (its `footprint`).
    pub fn held(&self) -> impl Iterator<Item = (&Digest, &u64)> {
        self.holdings.held.iter()
    }

    /// The generation of the last assignment applied from directory `upstream`.
    pub fn generation_of(&self, upstream: Upstream) -> u64 {
        self.registrations.get(upstream).map_or(0, |r| r.generation)
    }

    /// The generation of the last assignment applied from the first directory.
    pub fn generation(&self) -> u64 {
        self.generation_of(0)
    }

    /// True when enrolled with directory `upstream`.
    pub fn is_enrolled_with(&self, upstream: Upstream) -> bool {
        self.registrations.get(upstream).is_some_and(Registration::is_active)
    }

    /// True when enrolled with every directory.
    pub fn is_enrolled(&self) -> bool {
        self.registrations.iter().all(Registration::is_active)
    }

    /// Bytes held plus bytes reserved for downloads under way; never above the budget.
    pub fn used(&self) -> u64 {
        self.holdings.used()
    }

    /// Downloads under way.
    pub fn fetching(&self) -> usize {
        self.holdings.fetching.len()
    }

    /// True when every blob some directory assigns is held.
    pub fn is_synced(&self) -> bool {
        self.registrations.iter().all(|r| r.wanted.keys().all(|d| self.holds(d)))
    }

    /// The held blobs directory `upstream` is told of: all of them, except those only other
    /// directories assigned (a directory learns nothing of another's content).
    pub fn reported_to(&self, upstream: Upstream) -> Vec<Digest> {
        let Some(me) = self.registrations.get(upstream) else { return Vec::new() };
        let mine = |r: &Registration, d: &Digest| r.claimed.contains(d) || r.wanted.contains_key(d);
        self.holdings.held.keys().filter(|d| mine(me, d) || !self.registrations.iter().any(|r| r.index != upstream && mine(r, d))).copied().collect()
    }

    // ---- internals ----

    /// Every digest some directory assigns.
    fn wanted(&self) -> BTreeSet<Digest> {
        self.registrations.iter().flat_map(|r| r.wanted.keys().copied()).collect()
    }

    /// How long an evicted blob stays after the directories heard: one heartbeat interval, the
    /// longest, for clients already redirected.
    fn linger(&self) -> Duration {
        self.registrations.iter().map(|r| r.heartbeat_interval).max().unwrap_or_default()
    }

    /// Reflects what the holdings did: deleted blobs lose their names and claims, and a change
    /// in what is held is reported to every directory soon.
    fn settle(&mut self) {
        for digest in std::mem::take(&mut self.out.deleted) {
            for reg in &mut self.registrations {
                reg.names.retain(|_, d| *d != digest);
                reg.claimed.remove(&digest);
            }
        }
        if std::mem::take(&mut self.holdings.changed) {
            self.registrations.iter_mut().for_each(|r| r.report_soon = true);
        }
    }

    fn send_due(&mut self, now: Instant) {
        for upstream in 0..self.registrations.len() {
            if !self.registrations[upstream].is_due(now) {
                continue;
            }
            let held = self.reported_to(upstream);
            let (used, active) = (self.holdings.used(), self.holdings.active());
            let reg = &mut self.registrations[upstream];
            if reg.is_active() {
                self.holdings.heartbeat_sent(upstream);
            }
            let msg = reg.request(&self.config, held, used, active, now);
            self.out.effects.push_back(Effect::Send { upstream, msg });
        }
    }

    fn start_fetches(&mut self, now: Instant) {
        let wanted = self.wanted();
        let todo: Vec<Want> = wanted
            .iter()
            .filter_map(|digest| {
                // The first directory that sent a manifest is fetched from; every directory's
                // peers are sources.
                let (upstream, size, manifest) =
                    self.registrations.iter().find_map(|r| r.wanted.get(digest).and_then(|w| w.manifest.clone().map(|m| (r.index, w.size, m))))?;
                let mut sources: Vec<RelayUrl> = Vec::new();
                for w in self.registrations.iter().filter_map(|r| r.wanted.get(digest)) {
                    for s in &w.sources {
                        if !sources.contains(s) {
                            sources.push(s.clone());
                        }
                    }
                }
                Some(Want { digest: *digest, size, manifest, sources, upstream })
            })
            .collect();
        let upstreams: BTreeSet<Upstream> = (0..self.registrations.len()).collect();
        self.holdings.start_fetches(todo, &wanted, &upstreams, now, &mut self.out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Assigned, HeartbeatAck, RelayAssignment};

    const DIR: NodeId = NodeId([0xd1; 32]);
    const WALL: UnixTime = UnixTime(1_800_000_000);

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
        r.registrations[0].phase = registration::Phase::Active;
        r.handle_message(
            0,
            Message::HeartbeatAck(HeartbeatAck {
                generation,
                state: Some(RelayAssignment { assigned, names: Vec::new() }),
                expunged: Vec::new(),
                standing: None,
                heads: Vec::new(),
                held: None,
            }),
            DIR,
            now,
            WALL,
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

    /// A relay enrolled (and active) with two directories.
    fn two(budget: u64) -> Relay {
        let mut config = RelayConfig::new(RelayUrl::new("http://r").unwrap(), Capacity { disk_budget: budget, bandwidth: 0 }, "t".into());
        config.directories.push(UpstreamConfig { name: "second".into(), enroll_token: "u".into(), trust: Trust::default() });
        let mut r = Relay::new(config, [], [], Instant::ZERO);
        for reg in &mut r.registrations {
            reg.phase = registration::Phase::Active;
        }
        r
    }

    fn state(upstream: Upstream, generation: u64, wanted: &[(u8, u64)]) -> (Upstream, Message, Vec<Digest>) {
        let assigned: Vec<Assigned> = wanted
            .iter()
            .map(|(n, size)| {
                let manifest = ChunkManifest::of(&vec![*n; *size as usize], crate::manifest::MIN_CHUNK_SIZE).unwrap();
                Assigned { digest: manifest.digest(), size: *size, manifest: Some(manifest), sources: Vec::new() }
            })
            .collect();
        let digests = assigned.iter().map(|a| a.digest).collect();
        let state = Some(RelayAssignment { assigned, names: Vec::new() });
        (upstream, Message::HeartbeatAck(HeartbeatAck { generation, state, expunged: Vec::new(), standing: None, heads: Vec::new(), held: None }), digests)
    }

    fn fetches(r: &mut Relay) -> Vec<(Upstream, Digest)> {
        std::iter::from_fn(|| r.poll_effect())
            .filter_map(|e| match e {
                Effect::Fetch { upstream, manifest, .. } => Some((upstream, manifest.digest())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn each_directory_is_told_its_share_and_the_shares_add_up_to_the_budget() {
        let mut config = RelayConfig::new(RelayUrl::new("http://r").unwrap(), Capacity { disk_budget: 1001, bandwidth: 10 }, "t".into());
        assert_eq!(config.share(0), config.capacity, "one directory: the whole budget");
        for name in ["b", "c"] {
            config.directories.push(UpstreamConfig { name: name.into(), enroll_token: "t".into(), trust: Trust::default() });
        }
        let shares: Vec<Capacity> = (0..3).map(|i| config.share(i)).collect();
        assert_eq!(shares.iter().map(|c| c.disk_budget).sum::<u64>(), 1001);
        assert_eq!(shares.iter().map(|c| c.bandwidth).sum::<u64>(), 10);
        assert_eq!(shares[1].disk_budget, 333);
    }

    #[test]
    fn a_blob_two_directories_assign_is_fetched_once_and_kept_until_neither_does() {
        let fp = footprint(8000);
        let mut r = two(2 * fp + 100);
        let (u, msg, one) = state(0, 2, &[(1, 8000)]);
        r.handle_message(u, msg, DIR, Instant::ZERO, WALL);
        let (u, msg, _) = state(1, 2, &[(1, 8000)]);
        r.handle_message(u, msg, DIR, Instant::ZERO, WALL);
        assert_eq!(fetches(&mut r), vec![(0, one[0])], "fetched once, from the first directory that asked");
        r.handle_fetch(one[0], Ok(()), Instant::ZERO);
        assert_eq!(r.used(), fp, "counted once");
        // Directory 0 moves on to another blob; directory 1 still assigns the first.
        let (u, msg, two_) = state(0, 3, &[(2, 8000)]);
        r.handle_message(u, msg, DIR, Instant::ZERO, WALL);
        assert_eq!(fetches(&mut r), vec![(0, two_[0])]);
        r.handle_fetch(two_[0], Ok(()), Instant::ZERO);
        // A third blob does not fit, and the first is not evicted for it: directory 1 assigns it.
        let (u, msg, three) = state(0, 4, &[(2, 8000), (3, 8000)]);
        r.handle_message(u, msg, DIR, Instant::ZERO, WALL);
        assert!(fetches(&mut r).is_empty());
        assert!(r.holds(&one[0]));
        assert!(std::iter::from_fn(|| r.poll_event()).any(|e| e == Event::NoRoom { digest: three[1], size: fp }));
        assert!(!r.reported_to(0).contains(&three[1]), "what does not fit is not reported held");
        // Directory 1 lets it go: now it is evicted (gone once both directories heard).
        let (u, msg, _) = state(1, 3, &[]);
        r.handle_message(u, msg, DIR, Instant::ZERO, WALL);
        assert!(!r.holds(&one[0]) && r.has_bytes(&one[0]), "evicted, still on disk until both heard");
        assert!(r.used() <= 2 * fp + 100);
    }

    #[test]
    fn an_eviction_waits_for_a_refusing_directory_no_longer_than_its_lease() {
        let fp = footprint(8000);
        let mut config = RelayConfig::new(RelayUrl::new("http://r").unwrap(), Capacity { disk_budget: fp + 50, bandwidth: 0 }, "t".into());
        config.directories.push(UpstreamConfig { name: "second".into(), enroll_token: "wrong".into(), trust: Trust::default() });
        let mut r = Relay::new(config, [(d(1), 8000)], [], Instant::ZERO);
        r.registrations.iter_mut().for_each(|reg| reg.phase = registration::Phase::Active);
        let (u, msg, _) = state(0, 2, &[(9, 8000)]);
        r.handle_message(u, msg, DIR, Instant::ZERO, WALL);
        assert!(r.has_bytes(&d(1)) && !r.holds(&d(1)), "evicted for the new blob, still on disk");
        let ack = Message::HeartbeatAck(HeartbeatAck { generation: 2, state: None, expunged: Vec::new(), standing: None, heads: Vec::new(), held: None });
        r.handle_message(0, ack, DIR, Instant::from_millis(10), WALL);
        let refusal = crate::message::Refusal { code: crate::message::RefusalCode::UnknownRelay, reason: "enroll again".into() };
        r.handle_message(1, Message::Refused(refusal), DIR, Instant::from_millis(20), WALL);
        assert!(deleted(&mut r).is_empty(), "not before the refusing directory's lease has run out");
        let lease = r.registrations[1].lease;
        r.handle_timeout(Instant::from_millis(20) + lease);
        assert_eq!(deleted(&mut r), vec![d(1)]);
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
        r.holdings.budget = 5000;
        let wanted = r.wanted();
        r.holdings.enforce_budget(&wanted, &mut r.out);
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
                Effect::Send { msg: Message::Heartbeat(hb), .. } => Some(hb.held.clone()),
                _ => None,
            })
            .expect("a heartbeat reports the eviction");
        assert_eq!(reported.len(), 1);
        let evicted = if reported[0] == d(1) { d(2) } else { d(1) };
        assert!(r.has_bytes(&evicted), "still servable until the directory knows");
        assign(&mut r, 3, &[(9, 8000)], Instant::from_millis(100));
        let _ = std::iter::from_fn(|| r.poll_effect()).count();
        let later = Instant::from_millis(100) + r.registrations[0].heartbeat_interval;
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
        r.holdings.held.insert(digest, 10_000);
        // Assigned and held: the directory sends no manifest.
        let held = Assigned { digest, size: 10_000, manifest: None, sources: Vec::new() };
        r.registrations[0].phase = registration::Phase::Active;
        let ack = |assigned: Assigned| {
            Message::HeartbeatAck(HeartbeatAck {
                generation: 2,
                state: Some(RelayAssignment { assigned: vec![assigned], names: Vec::new() }),
                expunged: Vec::new(),
                standing: None,
                heads: Vec::new(),
                held: None,
            })
        };
        r.handle_message(0, ack(held), DIR, Instant::ZERO, WALL);
        let _ = std::iter::from_fn(|| r.poll_effect()).count();
        let _ = std::iter::from_fn(|| r.poll_event()).count();
        r.registrations[0].send_failed(Duration::ZERO, Instant::ZERO);

        r.handle_corrupt(digest, Instant::from_millis(10));
        assert!(!r.holds(&digest) && !r.has_bytes(&digest), "neither counted nor served");
        assert!(r.was_dropped(&digest), "clients sent here meanwhile go back to the directory");
        assert_eq!(r.poll_event(), Some(Event::Corrupt { digest }));
        let effects: Vec<Effect> = std::iter::from_fn(|| r.poll_effect()).collect();
        assert!(
            matches!(&effects[..], [Effect::Delete { digest: d }, Effect::Send { msg: Message::Heartbeat(hb), .. }] if hb.held.is_empty() && *d == digest),
            "the directory hears at once, before the next beat: {effects:?}"
        );
        r.handle_corrupt(digest, Instant::from_millis(11));
        assert_eq!(r.poll_effect(), None, "a second report of the same rot changes nothing");

        // The directory, no longer believing it held, sends the manifest: fetched again.
        let missing = Assigned { digest, size: 10_000, manifest: Some(manifest.clone()), sources: Vec::new() };
        r.handle_message(0, ack(missing), DIR, Instant::from_millis(20), WALL);
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
