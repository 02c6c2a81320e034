//! The relays child: the relay table and each relay's lifecycle, the holders index (who may be
//! sent clients for what), enrollment rules, heartbeat bookkeeping, self-tests and health probes,
//! and (in `audits`) content audits, probation and quarantine.
//!
//! It changes only itself. What others must act on leaves as values the parent drains after
//! every call: effects (`SelfTest`, `Audit`) and events for the driver, relays forgotten (for
//! placement), decisions to make durable (for persistence), and whether the set of relays that
//! may take work changed (for placement). It reads catalogs and placement through `&` arguments.

pub(super) mod audits;
mod lifecycle;
mod table;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use self::audits::AuditState;
use self::lifecycle::Lifecycle;
use self::table::{Holders, Table};
use super::catalogs::Catalogs;
use super::placement::{Eligible, Placement};
use super::redirect::{Candidate, redirect_weight};
use super::{DirectoryConfig, Effect, Event, ExpungeView, RelayView};
use crate::digest::Digest;
use crate::held::HeldSum;
use crate::message::{Heartbeat, HeldDelta, NodeId, Refusal, RefusalCode, RelayUrl, Standing};
use crate::path::CatalogName;
use crate::rng::SeededRng;
use crate::storage::RelayRecord;
use crate::time::Instant;

/// Bandwidth assumed for a relay that states none (0 = unlimited): 1 Gbit/s.
const NOMINAL_BANDWIDTH: u64 = 125_000_000;

#[derive(Debug)]
pub(super) struct RelayState {
    record: RelayRecord,
    /// Passed a self-test since it enrolled, returned, or the directory restarted.
    tested: bool,
    /// Failed its last health check or audit fetch: no redirects until a self-test passes.
    suspended: bool,
    /// A self-test is under way (attempt number), or failed and waits until this instant.
    self_test: SelfTest,
    /// `None` until a heartbeat arrives after the directory (re)started.
    last_seen: Option<Instant>,
    /// Counts for assignment until then although not yet heard from (after a restart).
    presumed_until: Option<Instant>,
    /// What it reported held that the catalogs know (at the report, or since: see `dropped`).
    held: BTreeSet<Digest>,
    /// The sum over everything it reported held, known or not: its digest is the base the
    /// relay's next delta must name.
    held_sum: HeldSum,
    /// Counts changes to `held`.
    held_epoch: u64,
    /// Per catalog, the log position up to which it knows the names, as another process of the
    /// directory saw it (`heard_elsewhere`): by those names clients may be sent to it from here
    /// although this process sent it no state.
    names_at: BTreeMap<CatalogName, u64>,
    /// The placement generation and `held_epoch` at which it last held its whole assignment:
    /// while both stand, a heartbeat's standing skips comparing the two sets.
    synced_at: Option<(u64, u64)>,
    applied_generation: u64,
    lost: bool,
    next_probe: Instant,
    /// Audits of this relay: schedule, the one in flight, counts, probation, strikes.
    audit: AuditState,
    /// Responses in progress as last reported, plus redirects sent since (counted under the
    /// read lock that redirects take, so atomically).
    active: u32,
    redirected: AtomicU32,
    /// Why its last self-test, probe or audit fetch failed; cleared when one passes.
    failure: Option<String>,
    /// Has heartbeated since the directory started.
    reported: bool,
    /// The generation of the first full state sent since it was (re)admitted: a relay answers
    /// for names and serves at all only once it has applied one, so it is audited from then on.
    first_state: Option<u64>,
    /// Not heard from since this instant (lost, or known only from before a restart).
    absent_since: Option<Instant>,
}

#[derive(Clone, Copy, Debug, Eq, PartialEq)]
enum SelfTest {
    Idle,
    Running(u64),
    RetryAt(Instant),
}

/// What a heartbeat changed, for the parent to build the answer from.
#[derive(Debug)]
pub(super) struct Heard {
    /// The held set it reports differs from the last one.
    pub(super) held_changed: bool,
    /// Barred digests it still reports: it must delete them.
    pub(super) expunged: Vec<Digest>,
    /// The digest of the held set taken from the heartbeat; `None` when its delta was not
    /// taken (an unknown base, or another result): the relay must send its full set.
    pub(super) held: Option<Digest>,
}

/// A heartbeat's held report as a change to the relay's known set.
struct HeldChange {
    /// Known digests that leave the set.
    gone: Vec<Digest>,
    /// Known digests that join it.
    new: Vec<Digest>,
    /// The sum over everything now reported.
    sum: HeldSum,
}

#[derive(Debug)]
pub(super) struct Relays {
    config: DirectoryConfig,
    table: Table,
    /// Who may be sent clients for each blob (holders that are not quarantined or lost), by
    /// their index in `table`.
    holders: Holders,
    /// Relays that held an expunged digest and have not confirmed deleting it.
    expunge_pending: BTreeMap<Digest, BTreeSet<NodeId>>,
    /// When keys never seen before enrolled in the last minute, per enrollment token.
    recent_enrollments: BTreeMap<Option<String>, VecDeque<Instant>>,
    attempts: u64,
    effects: VecDeque<Effect>,
    events: VecDeque<Event>,
    /// Relays forgotten, for placement to forget too.
    forgotten: VecDeque<NodeId>,
    /// Relays whose record the directory changed on its own, to be made durable.
    decided: VecDeque<NodeId>,
    /// The set of relays that may take work changed.
    reshaped: bool,
}

impl Relays {
    pub(super) fn new(config: DirectoryConfig) -> Self {
        Self {
            config,
            table: Table::default(),
            holders: Holders::default(),
            expunge_pending: BTreeMap::new(),
            recent_enrollments: BTreeMap::new(),
            attempts: 0,
            effects: VecDeque::new(),
            events: VecDeque::new(),
            forgotten: VecDeque::new(),
            decided: VecDeque::new(),
            reshaped: false,
        }
    }

    // ---- output (drained by the parent after every call) ----

    #[must_use]
    pub(super) fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    #[must_use]
    pub(super) fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    #[must_use]
    pub(super) fn poll_forgotten(&mut self) -> Option<NodeId> {
        self.forgotten.pop_front()
    }

    #[must_use]
    pub(super) fn poll_decided(&mut self) -> Option<NodeId> {
        self.decided.pop_front()
    }

    /// True once after the set of relays that may take work changed.
    #[must_use]
    pub(super) fn poll_reshaped(&mut self) -> bool {
        std::mem::take(&mut self.reshaped)
    }

    // ---- queries ----

    pub(super) fn record(&self, id: &NodeId) -> Option<&RelayRecord> {
        self.table.get(id).map(|r| &r.record)
    }

    pub(super) fn contains(&self, id: &NodeId) -> bool {
        self.table.contains_key(id)
    }

    /// How many relays enrolled with the named token.
    pub(super) fn enrolled_with(&self, token: &str) -> usize {
        self.table.values().filter(|r| r.record.token.as_deref() == Some(token)).count()
    }

    /// Relays that may take new work now, for placement.
    pub(super) fn eligible(&self, now: Instant) -> Vec<Eligible> {
        self.table
            .values()
            .filter(|r| r.assignable(now, self.config.lease))
            .map(|r| Eligible {
                id: r.record.id,
                weight: assignment_weight(r),
                catalogs: r.record.catalogs.clone(),
                tags: r.record.tags.clone(),
                budget: r.record.capacity.disk_budget,
            })
            .collect()
    }

    pub(super) fn held(&self, id: &NodeId) -> Option<&BTreeSet<Digest>> {
        self.table.get(id).map(|r| &r.held)
    }

    pub(super) fn is_tested(&self, id: &NodeId) -> bool {
        self.table.get(id).is_some_and(|r| r.tested)
    }

    pub(super) fn expunges_pending(&self) -> Vec<ExpungeView> {
        self.expunge_pending.iter().map(|(d, p)| ExpungeView { digest: *d, pending: p.iter().copied().collect() }).collect()
    }

    pub(super) fn views(&self, now: Instant, placement: &Placement, catalogs: &Catalogs) -> Vec<RelayView> {
        let bytes = |set: &mut dyn Iterator<Item = &Digest>| -> u64 { set.filter_map(|d| catalogs.blob(d)).map(|b| b.manifest.total_len()).sum() };
        self.table
            .values()
            .map(|r| {
                let assigned = placement.assigned(&r.record.id);
                let standing = self.standing(r, now, placement);
                RelayView {
                    id: r.record.id,
                    url: r.record.public_url.clone(),
                    status: standing.status,
                    capacity: r.record.capacity,
                    catalogs: r.record.catalogs.clone(),
                    tags: r.record.tags.clone(),
                    held: r.held.len(),
                    held_bytes: bytes(&mut r.held.iter()),
                    assigned: assigned.map_or(0, BTreeSet::len),
                    assigned_bytes: bytes(&mut assigned.into_iter().flatten()),
                    active: r.active,
                    audits_passed: r.audit.passed,
                    audits_failed: r.audit.failed,
                    quarantined: r.record.quarantined.clone(),
                    reason: standing.reason,
                    proven: r.record.proven,
                    token: r.record.token.clone(),
                    last_seen_ms: r.last_seen.map(|t| now.saturating_since(t).as_millis() as u64),
                }
            })
            .collect()
    }

    /// A relay's status with the reason it gets no clients, as the relay itself is told on
    /// every heartbeat: whether it holds its whole assignment is remembered until either changes.
    pub(super) fn standing_of(&mut self, id: &NodeId, now: Instant, placement: &Placement) -> Option<Standing> {
        let r = self.table.get_mut(id)?;
        let at = (placement.generation(), r.held_epoch);
        if r.synced_at != Some(at) && placement.assigned(id).is_none_or(|a| a.is_subset(&r.held)) {
            r.synced_at = Some(at);
        }
        let r = self.table.get(id)?;
        Some(self.standing(r, now, placement))
    }

    fn standing(&self, r: &RelayState, now: Instant, placement: &Placement) -> Standing {
        let lifecycle = r.lifecycle(now, self.config.lease);
        // A pending rebalance may give it work: not ready until its assignment is current.
        let synced = r.synced_at == Some((placement.generation(), r.held_epoch)) || placement.assigned(&r.record.id).is_none_or(|a| a.is_subset(&r.held));
        let syncing = placement.is_settling() || !r.audit.unverified.is_empty() || !synced;
        let reason = match lifecycle {
            Lifecycle::Quarantined { reason } => Some(reason.to_owned()),
            Lifecycle::Lost => Some(format!("no heartbeat within the lease ({} ms)", self.config.lease.as_millis())),
            Lifecycle::Testing => Some(match &r.failure {
                Some(why) => format!("the self-test of {} failed: {why}", r.record.public_url),
                None => format!("waiting for the self-test of {}", r.record.public_url),
            }),
            Lifecycle::Suspended => Some(format!("a check of {} failed: {}", r.record.public_url, r.failure.as_deref().unwrap_or("no answer"))),
            Lifecycle::Draining => Some("drained by an admin: no new work; clients go elsewhere once others hold its artifacts".into()),
            Lifecycle::Probation => Some(format!(
                "on probation (at least {} s and {} clean audits): only clients that verify what they get (metalink, odi get) are sent here yet",
                self.config.probation.as_secs(),
                self.config.probation_audits
            )),
            Lifecycle::Serving => None,
        };
        Standing { status: lifecycle.status(syncing), reason }
    }

    /// The relays a client may be sent to for `digest` (in `slot`): holders that are tested,
    /// alive, not suspended or quarantined and know the name `name` (when asked by name). With
    /// bandwidth weight and current load.
    pub(super) fn candidates(&self, digest: &Digest, slot: u32, name: Option<NameAt<'_>>, now: Instant) -> Vec<Candidate> {
        let mut candidates: Vec<Candidate> = self
            .holders
            .of(slot)
            .iter()
            .filter_map(|ix| self.table.at(*ix))
            .filter(|r| r.redirectable(now, self.config.lease) && name.is_none_or(|n| n.known_by(r)))
            .map(|r| Candidate {
                id: r.record.id,
                weight: redirect_weight(bandwidth(r), r.audit.measured),
                load: f64::from(r.active.saturating_add(r.redirected.load(Ordering::Relaxed))),
                draining: r.record.draining,
                proven: r.record.proven && !r.audit.unverified.contains(digest),
                url: r.record.public_url.clone(),
            })
            .collect();
        // In id order, whatever their indexes: the choice draws over this order.
        candidates.sort_unstable_by_key(|c| c.id);
        candidates
    }

    /// Up to eight serving relays other than `except` that hold the blob in `slot`.
    pub(super) fn peer_sources(&self, slot: u32, except: NodeId, now: Instant) -> Vec<RelayUrl> {
        let mut sources: Vec<&RelayState> = self
            .holders
            .of(slot)
            .iter()
            .filter_map(|ix| self.table.at(*ix))
            .filter(|r| r.record.id != except && r.redirectable(now, self.config.lease))
            .collect();
        sources.sort_unstable_by_key(|r| r.record.id);
        sources.into_iter().map(|r| r.record.public_url.clone()).take(8).collect()
    }

    /// The next instant `handle_timeout` has work to do.
    #[must_use]
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.table
            .values()
            .flat_map(|r| {
                let checked = r.tested && !r.lost && r.record.quarantined.is_none();
                let audit_free = r.auditable() && !r.suspended && r.audit.running.is_none();
                [
                    (!r.lost).then_some(r.last_seen).flatten().map(|t| t + self.config.lease),
                    r.presumed_until,
                    (checked && r.self_test == SelfTest::Idle).then_some(r.next_probe),
                    match r.self_test {
                        SelfTest::RetryAt(t) if checked => Some(t),
                        _ => None,
                    },
                    (audit_free && !r.held.is_empty()).then_some(r.audit.next),
                    (audit_free && !r.audit.unverified.is_empty()).then_some(Instant::ZERO),
                    r.absent_since.filter(|_| r.record.quarantined.is_none()).map(|t| t + self.config.forget_after),
                ]
            })
            .flatten()
            .min()
    }

    // ---- enrollment ----

    /// What the directory decided about `id` that enrolling again keeps: quarantine, draining,
    /// and being proven (only at the same URL: a relay that moves is on probation again).
    pub(super) fn kept_decisions(&self, id: &NodeId, url: &RelayUrl) -> (Option<String>, bool, bool) {
        self.table.get(id).map(|r| (r.record.quarantined.clone(), r.record.draining, r.record.proven && r.record.public_url == *url)).unwrap_or_default()
    }

    /// Rules for a key the directory has never seen: at most `new_relays_per_minute` of them per
    /// token; one relay per public URL (a new key at the URL of a relay that is gone replaces it,
    /// and keeps its quarantine and draining); and a key at the host of a quarantined relay starts
    /// out quarantined too, since keys cost nothing and hosts do. Returns the relay it replaces.
    pub(super) fn admit_new_key(&mut self, record: &mut RelayRecord, now: Instant) -> Result<Option<NodeId>, Refusal> {
        // Counted per token: one operator's flood does not keep the others out.
        let recent = self.recent_enrollments.entry(record.token.clone()).or_default();
        while recent.front().is_some_and(|t| now >= *t + Duration::from_secs(60)) {
            recent.pop_front();
        }
        if recent.len() >= self.config.new_relays_per_minute as usize {
            return Err(Refusal {
                code: RefusalCode::Unavailable,
                reason: "too many new relays are enrolling with this token right now; try again in a minute".into(),
            });
        }
        let mut replaces = None;
        if let Some(other) = self.table.values().find(|r| r.record.public_url == record.public_url) {
            if other.alive(now, self.config.lease) {
                return Err(Refusal {
                    code: RefusalCode::BadRequest,
                    reason: format!(
                        "relay {} is enrolled at {} and alive; one relay per public URL: stop it, or give this one a URL of its own",
                        other.record.id, record.public_url
                    ),
                });
            }
            replaces = Some(other.record.id);
            record.quarantined = other.record.quarantined.clone();
            record.draining = other.record.draining;
        }
        if record.quarantined.is_none()
            && let Some(q) = self.table.values().find(|r| r.record.quarantined.is_some() && url_host(&r.record.public_url) == url_host(&record.public_url))
        {
            let why = q.record.quarantined.as_deref().unwrap_or_default();
            record.quarantined = Some(format!("relay {} at the same host is quarantined ({why}); an admin readmits the host", q.record.id));
        }
        self.recent_enrollments.entry(record.token.clone()).or_default().push_back(now);
        Ok(replaces)
    }

    /// Takes in an enrollment whose record is durable (or unchanged).
    pub(super) fn enrolled(&mut self, record: RelayRecord, now: Instant) {
        let from = record.id;
        let is_new = !self.table.contains_key(&from);
        let (_, relay) = self.table.get_or_insert_with(from, || RelayState::new(record.clone(), now));
        // A decision taken while the enrollment was being written stays in force.
        let record = RelayRecord {
            quarantined: relay.record.quarantined.clone(),
            draining: relay.record.draining,
            proven: record.proven && relay.record.proven,
            ..record
        };
        if is_new || relay.record != (RelayRecord { enrolled_at: relay.record.enrolled_at, ..record.clone() }) {
            // New relay, or a new URL or capacity: test it again before trusting it.
            relay.record = record.clone();
            relay.tested = false;
            relay.first_state = None;
            self.events.push_back(Event::RelayEnrolled { relay: from, url: record.public_url });
            self.reshaped = true;
        }
        if relay.lost {
            // Back after its lease ran out: what it held is reported again by its next heartbeat.
            relay.held.clear();
            relay.held_sum = HeldSum::default();
            relay.held_epoch += 1;
            relay.lost = false;
            relay.tested = false;
            relay.first_state = None;
        }
        relay.last_seen = Some(now);
        relay.absent_since = None;
        self.start_self_test(from, now);
    }

    /// Forgets a relay entirely (its record is gone from the store, or about to be).
    pub(super) fn forget(&mut self, id: NodeId) {
        let Some((ix, _)) = self.table.remove(&id) else { return };
        // Before its index can name another relay.
        self.holders.remove_everywhere(ix);
        for pending in self.expunge_pending.values_mut() {
            pending.remove(&id);
        }
        self.expunge_pending.retain(|_, p| !p.is_empty());
        self.events.push_back(Event::RelayForgotten { relay: id });
        self.forgotten.push_back(id);
        self.reshaped = true;
    }

    // ---- durable records ----

    /// Applies a durable `Record::Relay` (an enrollment, an admin change, a decision, or one
    /// replayed after a restart).
    pub(super) fn apply_record(&mut self, record: &RelayRecord, now: Instant, catalogs: &Catalogs) {
        let presumed_until = Some(now + self.config.lease);
        let (ix, relay) = self.table.get_or_insert_with(record.id, || RelayState::new(record.clone(), now));
        let newly_quarantined = record.quarantined.is_some() && relay.record.quarantined.is_none();
        let readmitted = record.quarantined.is_none() && relay.record.quarantined.is_some();
        relay.record = record.clone();
        if relay.last_seen.is_none() {
            relay.presumed_until = presumed_until;
        }
        if newly_quarantined || record.quarantined.is_some() {
            self.unhold(record.id);
        } else if readmitted && !relay.lost {
            // Readmitted: what it holds can be served again once it passes a self-test.
            relay.tested = false;
            relay.first_state = None;
            relay.suspended = false;
            for b in relay.held.iter().filter_map(|d| catalogs.blob(d)) {
                self.holders.insert(b.slot, ix);
            }
        }
        self.reshaped = true;
    }

    /// An enrollment token was revoked: every relay its operator enrolled with it is barred.
    pub(super) fn token_revoked(&mut self, name: &str) {
        let barred: Vec<NodeId> =
            self.table.values().filter(|r| r.record.token.as_deref() == Some(name) && r.record.quarantined.is_none()).map(|r| r.record.id).collect();
        for relay in barred {
            self.quarantine(relay, format!("its enrollment token `{name}` was revoked by an admin"));
        }
    }

    /// A barred digest: every relay that reported it (online or not) must confirm deleting it,
    /// and nobody is sent clients for it.
    /// It leaves every held set (still counted in their sums: the relays report its deletion).
    pub(super) fn barred(&mut self, digest: &Digest, slot: Option<u32>) {
        let mut pending = BTreeSet::new();
        for (id, ix) in &self.table.index {
            let Some(r) = self.table.slots.get_mut(*ix as usize) else { continue };
            if r.held.remove(digest) {
                r.audit.unverified.remove(digest);
                r.held_epoch += 1;
                pending.insert(*id);
            }
        }
        if !pending.is_empty() {
            self.expunge_pending.entry(*digest).or_default().extend(pending);
        }
        if let Some(slot) = slot {
            self.holders.take(slot);
        }
    }

    /// A digest no name holds any more: it leaves its holders' known sets (their sums keep it,
    /// as the relays still report it until they evict it).
    pub(super) fn dropped(&mut self, digest: &Digest, slot: u32) {
        for ix in self.holders.take(slot).as_slice() {
            if let Some(r) = self.table.at_mut(*ix)
                && r.held.remove(digest)
            {
                r.audit.unverified.remove(digest);
                r.held_epoch += 1;
            }
        }
    }

    // ---- heartbeats ----

    /// Books a heartbeat: liveness, load, what it holds (its full set, or a delta from the set
    /// last taken; unknown digests are counted in the sum but not held), and the expunges it
    /// confirmed. `generation` is the directory's. `None` for an unknown relay.
    pub(super) fn heartbeat(&mut self, from: NodeId, hb: &Heartbeat, now: Instant, generation: u64, catalogs: &Catalogs) -> Option<Heard> {
        self.book(from, hb, now, Some(generation), catalogs)
    }

    /// The digest of the held set this process has for the relay (the base its next delta
    /// must name).
    pub(super) fn held_digest(&self, id: &NodeId) -> Option<Digest> {
        self.table.get(id).map(|r| r.held_sum.digest())
    }

    /// Books a heartbeat another process of this directory took (`Record::Heard`): liveness,
    /// load and holdings as from its own, but for the generation, which only the process that
    /// answered knows. A held report that does not fit this process's copy of the relay's set
    /// leaves it not knowing what the relay holds (no clients sent to it from here) until the
    /// relay's whole set comes, from a heartbeat to this process or to another.
    pub(super) fn heard_elsewhere(&mut self, from: NodeId, hb: &Heartbeat, names: &[(CatalogName, u64)], now: Instant, catalogs: &Catalogs) {
        if let Some(relay) = self.table.get_mut(&from) {
            for (catalog, seq) in names {
                let at = relay.names_at.entry(catalog.clone()).or_default();
                *at = (*at).max(*seq);
            }
        }
        if self.book(from, hb, now, None, catalogs).is_some_and(|heard| heard.held.is_none())
            && let Some(ix) = self.table.ix(&from)
            && let Some(relay) = self.table.at_mut(ix)
        {
            for b in std::mem::take(&mut relay.held).iter().filter_map(|d| catalogs.blob(d)) {
                self.holders.remove(b.slot, ix);
            }
            relay.audit.unverified.clear();
            relay.held_sum = HeldSum::default();
            relay.held_epoch += 1;
        }
    }

    /// `heartbeat` and `heard_elsewhere`: `generation` is the directory's when the relay talks
    /// to this process, `None` when it talked to another.
    fn book(&mut self, from: NodeId, hb: &Heartbeat, now: Instant, generation: Option<u64>, catalogs: &Catalogs) -> Option<Heard> {
        let lease = self.config.lease;
        let ix = self.table.ix(&from)?;
        let relay = self.table.at_mut(ix)?;
        let was_alive = !relay.lost && relay.last_seen.is_some_and(|t| now < t + lease);
        relay.last_seen = Some(now);
        relay.absent_since = None;
        relay.presumed_until = None;
        relay.active = hb.active;
        *relay.redirected.get_mut() = 0;
        if relay.lost || !was_alive {
            // Back after its lease ran out (or first word since a restart): test it again.
            if relay.lost {
                relay.held.clear();
                relay.held_sum = HeldSum::default();
                relay.held_epoch += 1;
            }
            relay.lost = false;
            relay.tested = false;
            relay.first_state = None;
            self.reshaped = true;
        }
        if let Some(generation) = generation {
            relay.applied_generation = hb.generation.min(generation);
        }
        let change = match &hb.delta {
            None => Some(full_change(relay, &hb.held, catalogs)),
            Some(delta) => delta_change(relay, delta, catalogs),
        };
        // Expunges: what it no longer reports is confirmed deleted; barred digests it reports
        // are pending until it does.
        match &hb.delta {
            None => {
                let reported: BTreeSet<&Digest> = hb.held.iter().collect();
                self.confirm_expunges(from, |d| !reported.contains(d));
                self.pend_expunges(from, hb.held.iter(), catalogs);
            }
            Some(delta) if change.is_some() => {
                let removed: BTreeSet<&Digest> = delta.removed.iter().collect();
                self.confirm_expunges(from, |d| removed.contains(d));
                self.pend_expunges(from, delta.added.iter(), catalogs);
            }
            Some(_) => {}
        }
        let expunged = self.expunge_pending.iter().filter(|(_, p)| p.contains(&from)).map(|(d, _)| *d).collect();
        let relay = self.table.get_mut(&from).expect("looked up above");
        let Some(HeldChange { gone, new, sum }) = change else {
            if !relay.tested {
                self.start_self_test(from, now);
            }
            return Some(Heard { held_changed: false, expunged, held: None });
        };
        let quarantined = relay.record.quarantined.is_some();
        // What a relay newly reports holding is checked (one chunk, asked as a client would)
        // before a plain client is sent to it for that artifact. Only a proven relay's first
        // report after a directory restart is taken on trust, and what another process of the
        // directory took: that process checks it (and a relay that fails is quarantined for all).
        let trusted = (relay.record.proven && !relay.reported) || generation.is_none();
        relay.reported = true;
        let held_changed = !gone.is_empty() || !new.is_empty();
        relay.held_epoch += u64::from(held_changed);
        for d in &gone {
            relay.held.remove(d);
            relay.audit.unverified.remove(d);
            if let Some(b) = catalogs.blob(d) {
                self.holders.remove(b.slot, ix);
            }
        }
        for d in new {
            relay.held.insert(d);
            if !quarantined && let Some(b) = catalogs.blob(&d) {
                self.holders.insert(b.slot, ix);
                if self.config.check_possession && !trusted {
                    relay.audit.unverified.insert(d);
                }
            }
        }
        relay.held_sum = sum;
        let held = Some(sum.digest());
        if !relay.tested {
            self.start_self_test(from, now);
        }
        Some(Heard { held_changed, expunged, held })
    }

    /// Expunges `from` confirmed: it no longer holds the pending digests `done` picks.
    fn confirm_expunges(&mut self, from: NodeId, done: impl Fn(&Digest) -> bool) {
        self.expunge_pending.retain(|d, pending| {
            if done(d) {
                pending.remove(&from);
            }
            !pending.is_empty()
        });
    }

    /// `from` reports barred digests among `reported`: it must delete them, and confirm it.
    fn pend_expunges<'a>(&mut self, from: NodeId, reported: impl Iterator<Item = &'a Digest>, catalogs: &Catalogs) {
        for d in reported.filter(|d| catalogs.is_barred(d)) {
            self.expunge_pending.entry(*d).or_default().insert(from);
        }
    }

    /// A full state at `generation` went to the relay: it is audited once it has applied one.
    pub(super) fn state_sent(&mut self, id: &NodeId, generation: u64) {
        if let Some(relay) = self.table.get_mut(id) {
            relay.first_state.get_or_insert(generation);
        }
    }

    /// A client was sent to the relay (it counts as load until the next heartbeat).
    pub(super) fn redirected(&self, id: &NodeId) {
        if let Some(r) = self.table.get(id) {
            // Saturating: a relay that stops heartbeating must not wrap round to "idle".
            let _ = r.redirected.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_add(1));
        }
    }

    // ---- self-tests and probes ----

    fn start_self_test(&mut self, relay: NodeId, now: Instant) {
        let Some(r) = self.table.get_mut(&relay) else { return };
        match r.self_test {
            SelfTest::Running(_) => return,
            SelfTest::RetryAt(t) if now < t => return,
            _ => {}
        }
        self.attempts += 1;
        r.self_test = SelfTest::Running(self.attempts);
        r.next_probe = now + self.config.probe_interval;
        self.effects.push_back(Effect::SelfTest { relay, url: r.record.public_url.clone(), attempt: self.attempts });
    }

    /// The outcome of an `Effect::SelfTest`: `Ok(id)` is the relay id its `/healthz` reported.
    pub(super) fn handle_self_test(&mut self, relay: NodeId, attempt: u64, outcome: Result<NodeId, String>, now: Instant) {
        let retry = self.config.self_test_retry;
        let Some(r) = self.table.get_mut(&relay) else { return };
        if r.self_test != SelfTest::Running(attempt) {
            return; // a stale answer
        }
        match outcome {
            Ok(id) if id == relay => {
                r.self_test = SelfTest::Idle;
                r.failure = None;
                let admitted = !r.tested || r.suspended;
                r.tested = true;
                r.suspended = false;
                if admitted {
                    r.audit.next = now + self.config.audit_interval;
                    if !r.record.proven {
                        r.audit.probation.get_or_insert((now, 0));
                    }
                    self.events.push_back(Event::RelayAdmitted { relay });
                    self.reshaped = true;
                }
                self.end_probation(relay, now);
            }
            other => {
                r.self_test = SelfTest::RetryAt(now + retry);
                let reason = match other {
                    Ok(id) => format!("its public URL answered as another relay ({id})"),
                    Err(e) => e,
                };
                r.failure = Some(reason.clone());
                if r.tested && !r.suspended {
                    r.suspended = true;
                    self.events.push_back(Event::RelaySuspended { relay, reason: reason.clone() });
                }
                self.events.push_back(Event::SelfTestFailed { relay, reason });
            }
        }
    }

    /// Removes `relay` from every holder set (it gets no more redirects for anything).
    fn unhold(&mut self, relay: NodeId) {
        let Some(ix) = self.table.ix(&relay) else { return };
        self.holders.remove_everywhere(ix);
    }

    /// Expires relays whose lease ran out, forgets those gone for `forget_after`, and starts
    /// the health probes and audits that are due.
    pub(super) fn handle_timeout(&mut self, now: Instant, catalogs: &Catalogs, rng: &mut SeededRng) {
        let lease = self.config.lease;
        let mut lost = Vec::new();
        let mut probes = Vec::new();
        let mut audits = Vec::new();
        let mut gone = Vec::new();
        let forget_after = self.config.forget_after;
        for (id, ix) in &self.table.index {
            let Some(r) = self.table.slots.get_mut(*ix as usize) else { continue };
            if !r.lost && r.last_seen.is_some_and(|t| now >= t + lease) {
                r.lost = true;
                r.tested = false;
                r.first_state = None;
                r.absent_since = Some(now);
                lost.push(*id);
            }
            if r.record.quarantined.is_none() && r.absent_since.is_some_and(|t| now >= t + forget_after) {
                gone.push(*id);
            }
            if r.presumed_until.is_some_and(|t| now >= t) {
                r.presumed_until = None;
                self.reshaped = true;
            }
            let checked = r.tested && !r.lost && r.record.quarantined.is_none();
            let probe_due = match r.self_test {
                SelfTest::Idle => now >= r.next_probe,
                SelfTest::RetryAt(t) => now >= t,
                SelfTest::Running(_) => false,
            };
            if checked && probe_due {
                probes.push(*id);
            }
            let auditable = r.auditable() && !r.suspended && r.audit.running.is_none();
            if auditable && !r.audit.unverified.is_empty() {
                audits.push(*id); // a possession check, at once; the regular walk keeps its time
            } else if auditable && now >= r.audit.next {
                r.audit.next = now + self.config.audit_interval;
                audits.push(*id);
            }
        }
        for id in lost {
            self.unhold(id);
            self.events.push_back(Event::RelayLost { relay: id });
            self.reshaped = true;
        }
        for id in gone {
            // Its deletion is written like any decision of the directory's (retried until durable).
            self.forget(id);
            self.decided.push_back(id);
        }
        for id in probes {
            self.start_self_test(id, now);
        }
        for id in audits {
            self.start_audit(id, catalogs, rng);
        }
    }
}

impl RelayState {
    fn new(record: RelayRecord, now: Instant) -> Self {
        Self {
            record,
            tested: false,
            suspended: false,
            self_test: SelfTest::Idle,
            last_seen: None,
            presumed_until: None,
            held: BTreeSet::new(),
            held_sum: HeldSum::default(),
            held_epoch: 0,
            names_at: BTreeMap::new(),
            synced_at: None,
            applied_generation: 0,
            lost: false,
            next_probe: now,
            audit: AuditState::new(now),
            active: 0,
            redirected: AtomicU32::new(0),
            failure: None,
            reported: false,
            first_state: None,
            absent_since: Some(now),
        }
    }

    fn lifecycle(&self, now: Instant, lease: Duration) -> Lifecycle<'_> {
        if let Some(reason) = &self.record.quarantined {
            Lifecycle::Quarantined { reason }
        } else if !self.alive(now, lease) {
            Lifecycle::Lost
        } else if !self.tested {
            Lifecycle::Testing
        } else if self.suspended {
            Lifecycle::Suspended
        } else if self.record.draining {
            Lifecycle::Draining
        } else if !self.record.proven {
            Lifecycle::Probation
        } else {
            Lifecycle::Serving
        }
    }

    fn alive(&self, now: Instant, lease: Duration) -> bool {
        !self.lost && self.last_seen.is_some_and(|t| now < t + lease)
    }

    /// May receive new assignments.
    fn assignable(&self, now: Instant, lease: Duration) -> bool {
        self.record.quarantined.is_none()
            && !self.record.draining
            && ((self.tested && self.alive(now, lease)) || (!self.lost && self.presumed_until.is_some_and(|t| now < t)))
    }

    /// May be sent clients (draining relays are filtered per artifact in `redirect`).
    fn redirectable(&self, now: Instant, lease: Duration) -> bool {
        self.tested && !self.suspended && self.record.quarantined.is_none() && self.alive(now, lease)
    }

    /// Audits are fair only once the relay has applied a state since it was (re)admitted: before
    /// that an honest relay serves nothing (it waits for the directory's word on expunges) and
    /// knows no names.
    fn auditable(&self) -> bool {
        self.tested && !self.lost && self.record.quarantined.is_none() && self.first_state.is_some_and(|g| self.applied_generation >= g)
    }
}

/// A name a client asked for, which the relay sent the client must know: bound at `generation`
/// in this process, at log position `seq` of `catalog` in every process.
#[derive(Clone, Copy, Debug)]
pub(super) struct NameAt<'a> {
    pub(super) generation: u64,
    pub(super) catalog: &'a CatalogName,
    pub(super) seq: u64,
}

impl NameAt<'_> {
    /// It applied a state from this process that had the name, or another process saw it
    /// know the catalog that far.
    fn known_by(&self, r: &RelayState) -> bool {
        r.applied_generation >= self.generation || r.names_at.get(self.catalog).is_some_and(|s| *s >= self.seq)
    }
}

/// A full held report: everything it holds now, of which the known digests are held.
fn full_change(relay: &RelayState, reported: &[Digest], catalogs: &Catalogs) -> HeldChange {
    let reported: BTreeSet<Digest> = reported.iter().copied().collect();
    let sum = HeldSum::of(&reported);
    let known: BTreeSet<Digest> = reported.into_iter().filter(|d| catalogs.blob(d).is_some()).collect();
    HeldChange { gone: relay.held.difference(&known).copied().collect(), new: known.difference(&relay.held).copied().collect(), sum }
}

/// A delta, taken only if it starts from the set the directory has (`base`), ends at the set
/// the relay has (`digest`), and is a change of that set: no digest added twice or both added
/// and removed, none added that it had reported. `None`: the relay must send its full set.
fn delta_change(relay: &RelayState, delta: &HeldDelta, catalogs: &Catalogs) -> Option<HeldChange> {
    if relay.held_sum.digest() != delta.base {
        return None;
    }
    let added: BTreeSet<&Digest> = delta.added.iter().collect();
    let removed: BTreeSet<&Digest> = delta.removed.iter().collect();
    if added.len() != delta.added.len() || removed.len() != delta.removed.len() || !added.is_disjoint(&removed) {
        return None;
    }
    let mut sum = relay.held_sum;
    removed.iter().for_each(|d| sum.remove(d));
    added.iter().for_each(|d| sum.add(d));
    if sum.digest() != delta.digest {
        return None;
    }
    let new: Vec<Digest> = added.into_iter().filter(|d| catalogs.blob(d).is_some()).copied().collect();
    if new.iter().any(|d| relay.held.contains(d)) {
        return None;
    }
    // A removed digest it does not hold was reported before the catalogs knew it (or since
    // dropped): only its sum counted it.
    let gone = removed.into_iter().filter(|d| relay.held.contains(*d)).copied().collect();
    Some(HeldChange { gone, new, sum })
}

/// The bandwidth a relay declares, or `NOMINAL_BANDWIDTH` when it declares none.
fn bandwidth(r: &RelayState) -> u64 {
    match r.record.capacity.bandwidth {
        0 => NOMINAL_BANDWIDTH,
        b => b,
    }
    .max(1)
}

/// A relay's share of assignments: the geometric mean of its disk budget (GiB) and bandwidth
/// (MB/s), so a relay with twice both gets twice the share, not four times.
fn assignment_weight(r: &RelayState) -> f64 {
    let disk = r.record.capacity.disk_budget as f64 / f64::from(1u32 << 30);
    let bw = bandwidth(r) as f64 / 1e6;
    (disk.max(1e-6) * bw).sqrt()
}

/// The host of a relay URL (`http://host:port/prefix` → `host`): reputation is bound to it, as an
/// operator can make keys at will but not hosts.
fn url_host(url: &RelayUrl) -> &str {
    let rest = url.as_str().split_once("://").map_or(url.as_str(), |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Capacity, RelayStatus};
    use crate::rng::Seed;
    use crate::time::UnixTime;

    const T0: Instant = Instant::ZERO;

    fn config() -> DirectoryConfig {
        DirectoryConfig::new(NodeId([0xd1; 32]))
    }

    fn record(n: u8, url: &str) -> RelayRecord {
        RelayRecord {
            id: NodeId([n; 32]),
            public_url: RelayUrl::new(url).unwrap(),
            capacity: Capacity { disk_budget: 1 << 30, bandwidth: 0 },
            catalogs: Vec::new(),
            enrolled_at: UnixTime(1),
            quarantined: None,
            draining: false,
            proven: false,
            token: None,
            tags: Vec::new(),
        }
    }

    fn lifecycle(relays: &Relays, n: u8, now: Instant) -> Lifecycle<'_> {
        relays.table.get(&NodeId([n; 32])).unwrap().lifecycle(now, relays.config.lease)
    }

    fn events(relays: &mut Relays) -> Vec<Event> {
        std::iter::from_fn(|| relays.poll_event()).collect()
    }

    /// Enrolls relay `n` and answers its first self-test as `answer`.
    fn enrolled(relays: &mut Relays, n: u8, url: &str, now: Instant, answer: Result<NodeId, String>) {
        relays.enrolled(record(n, url), now);
        let Some(Effect::SelfTest { relay, attempt, .. }) = relays.poll_effect() else { panic!("a self-test starts at once") };
        assert_eq!(relay, NodeId([n; 32]));
        relays.handle_self_test(relay, attempt, answer, now);
    }

    #[test]
    fn a_relay_goes_through_its_lifecycle() {
        let mut relays = Relays::new(config());
        let id = NodeId([1; 32]);
        relays.enrolled(record(1, "http://r1.example"), T0);
        assert_eq!(lifecycle(&relays, 1, T0), Lifecycle::Testing);
        assert_eq!(lifecycle(&relays, 1, T0).status(false), RelayStatus::Enrolled);
        let Some(Effect::SelfTest { attempt, .. }) = relays.poll_effect() else { panic!("a self-test") };
        relays.handle_self_test(id, attempt + 1, Ok(id), T0);
        assert_eq!(lifecycle(&relays, 1, T0), Lifecycle::Testing, "a stale answer changes nothing");
        relays.handle_self_test(id, attempt, Ok(id), T0);
        assert_eq!(lifecycle(&relays, 1, T0), Lifecycle::Probation);
        assert_eq!(lifecycle(&relays, 1, T0).status(true), RelayStatus::Syncing);
        assert_eq!(
            events(&mut relays),
            vec![Event::RelayEnrolled { relay: id, url: RelayUrl::new("http://r1.example").unwrap() }, Event::RelayAdmitted { relay: id }]
        );
        assert!(relays.poll_reshaped());

        // A failed probe suspends it; only a passed self-test lifts that.
        let probe = T0 + relays.config.probe_interval;
        let (catalogs, mut rng) = (Catalogs::default(), SeededRng::new(Seed(1)));
        relays.heartbeat(id, &Heartbeat { generation: 1, held: Vec::new(), used: 0, active: 0, delta: None }, probe, 1, &catalogs);
        relays.handle_timeout(probe, &catalogs, &mut rng);
        let Some(Effect::SelfTest { attempt, .. }) = relays.poll_effect() else { panic!("a probe is due") };
        relays.handle_self_test(id, attempt, Err("connection refused".into()), probe);
        assert_eq!(lifecycle(&relays, 1, probe), Lifecycle::Suspended);
        assert!(events(&mut relays).contains(&Event::RelaySuspended { relay: id, reason: "connection refused".into() }));
        assert!(relays.candidates(&Digest::of(b"x"), 0, None, probe).is_empty());

        // Silent past its lease: lost.
        let late = probe + relays.config.lease;
        relays.handle_timeout(late, &catalogs, &mut rng);
        assert_eq!(lifecycle(&relays, 1, late), Lifecycle::Lost);
        assert!(events(&mut relays).contains(&Event::RelayLost { relay: id }));

        // The directory's decisions, from durable records.
        let mut draining = record(1, "http://r1.example");
        draining.draining = true;
        relays.apply_record(&draining, late, &Catalogs::default());
        relays.enrolled(draining.clone(), late);
        let Some(Effect::SelfTest { attempt, .. }) = relays.poll_effect() else { panic!("tested again on return") };
        relays.handle_self_test(id, attempt, Ok(id), late);
        assert_eq!(lifecycle(&relays, 1, late), Lifecycle::Draining);
        let quarantined = RelayRecord { quarantined: Some("lied".into()), ..draining };
        relays.apply_record(&quarantined, late, &Catalogs::default());
        assert_eq!(lifecycle(&relays, 1, late), Lifecycle::Quarantined { reason: "lied" });
        assert_eq!(lifecycle(&relays, 1, late).status(false), RelayStatus::Quarantined);
    }

    #[test]
    fn new_keys_are_rate_limited_per_token() {
        let mut relays = Relays::new(DirectoryConfig { new_relays_per_minute: 2, ..config() });
        let admit = |relays: &mut Relays, n: u8, token: Option<&str>, now: Instant| {
            let mut r = RelayRecord { token: token.map(str::to_owned), ..record(n, &format!("http://r{n}.example")) };
            relays.admit_new_key(&mut r, now)
        };
        assert_eq!(admit(&mut relays, 1, Some("alice"), T0), Ok(None));
        assert_eq!(admit(&mut relays, 2, Some("alice"), T0), Ok(None));
        let refused = admit(&mut relays, 3, Some("alice"), T0).unwrap_err();
        assert_eq!(refused.code, RefusalCode::Unavailable);
        assert_eq!(admit(&mut relays, 4, Some("bob"), T0), Ok(None), "another operator's token is counted apart");
        assert_eq!(admit(&mut relays, 5, None, T0), Ok(None));
        assert_eq!(admit(&mut relays, 3, Some("alice"), T0 + Duration::from_secs(60)), Ok(None), "a minute later");
    }

    #[test]
    fn one_relay_per_url_and_a_new_key_replaces_one_that_is_gone() {
        let mut relays = Relays::new(config());
        let old = NodeId([1; 32]);
        enrolled(&mut relays, 1, "http://r1.example:8080", T0, Ok(old));
        relays.apply_record(&RelayRecord { draining: true, ..record(1, "http://r1.example:8080") }, T0, &Catalogs::default());
        let mut newcomer = record(2, "http://r1.example:8080");
        let refused = relays.admit_new_key(&mut newcomer, T0).unwrap_err();
        assert_eq!(refused.code, RefusalCode::BadRequest);
        assert!(refused.reason.contains("one relay per public URL"), "{}", refused.reason);
        let gone = T0 + relays.config.lease;
        assert_eq!(relays.admit_new_key(&mut newcomer, gone), Ok(Some(old)), "the old key is silent: replaced");
        assert!(newcomer.draining, "it keeps the decisions taken about its URL");

        // A host with a quarantined relay: every new key there starts quarantined.
        relays.apply_record(&RelayRecord { quarantined: Some("lied".into()), ..record(1, "http://r1.example:8080") }, gone, &Catalogs::default());
        let mut other_port = record(3, "http://r1.example:9090");
        assert_eq!(relays.admit_new_key(&mut other_port, gone), Ok(None));
        assert!(other_port.quarantined.as_deref().is_some_and(|q| q.contains("same host")), "{other_port:?}");
    }

    #[test]
    fn relays_absent_past_forget_after_are_forgotten_unless_quarantined() {
        let config = DirectoryConfig { forget_after: Duration::from_secs(3600), ..config() };
        let forget_after = config.forget_after;
        let mut relays = Relays::new(config);
        let (catalogs, mut rng) = (Catalogs::default(), SeededRng::new(Seed(1)));
        relays.apply_record(&record(1, "http://r1.example"), T0, &Catalogs::default());
        relays.apply_record(&RelayRecord { quarantined: Some("lied".into()), ..record(2, "http://r2.example") }, T0, &Catalogs::default());
        relays.handle_timeout(T0 + forget_after - Duration::from_secs(1), &catalogs, &mut rng);
        assert_eq!(relays.poll_forgotten(), None);
        assert_eq!(relays.poll_timeout(), Some(T0 + forget_after), "due when the first is to be forgotten");
        relays.handle_timeout(T0 + forget_after, &catalogs, &mut rng);
        assert_eq!(relays.poll_forgotten(), Some(NodeId([1; 32])));
        assert_eq!(relays.poll_decided(), Some(NodeId([1; 32])), "its deletion is to be written");
        assert_eq!(relays.poll_forgotten(), None, "a quarantine binds its host: kept");
        assert!(relays.contains(&NodeId([2; 32])) && !relays.contains(&NodeId([1; 32])));
    }
}
