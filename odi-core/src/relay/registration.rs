//! One directory a relay is enrolled with: enrollment, heartbeats, the directory's standing for
//! the relay, and the assignment and names it sent (with its own generation). Every directory
//! has one, each on its own timers; what they hold is shared (`super::holdings`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use super::trust::{Trust, TrustState};
use super::{Event, RelayConfig, Upstream};
use crate::digest::Digest;
use crate::held::HeldSum;
use crate::manifest::ChunkManifest;
use crate::message::{Capacity, EnrollRequest, Heartbeat, HeartbeatAck, HeldDelta, Message, RefusalCode, RelayUrl, Standing};
use crate::path::{ArtifactPath, CatalogName};
use crate::time::Instant;

#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub(super) enum Phase {
    /// Not enrolled; send `Enroll` when due.
    Enrolling,
    Active,
}

#[derive(Debug)]
pub(super) struct Wanted {
    pub(super) size: u64,
    pub(super) manifest: Option<ChunkManifest>,
    pub(super) sources: Vec<RelayUrl>,
}

/// The held set a heartbeat awaiting its answer reported.
#[derive(Debug)]
struct Reported {
    /// Sorted.
    set: Vec<Digest>,
    digest: Digest,
    /// It went as a delta from `Registration::acked`.
    delta: bool,
}

/// What a reply changed, for the orchestrator to act on.
#[derive(Debug, Default)]
pub(super) struct Heard {
    /// The reply acknowledged a heartbeat: the directory took the held set it reported (a
    /// delta it did not take is answered, but not acknowledged).
    pub(super) acked: bool,
    /// Blobs the directory barred: deleted at once.
    pub(super) expunged: Vec<Digest>,
    /// A full state replaced the assignment.
    pub(super) assignment: bool,
    /// The directory refused the request: it will not acknowledge a heartbeat soon.
    pub(super) refused: bool,
}

#[derive(Debug)]
pub(super) struct Registration {
    pub(super) index: Upstream,
    pub(super) phase: Phase,
    /// What this directory is told it may fill (its share of the relay's budget).
    pub(super) capacity: Capacity,
    token: String,
    pub(super) heartbeat_interval: Duration,
    /// How long the directory keeps sending clients after the relay's last word.
    pub(super) lease: Duration,
    /// This directory's latest assignment.
    pub(super) wanted: BTreeMap<Digest, Wanted>,
    pub(super) names: BTreeMap<(CatalogName, ArtifactPath), Digest>,
    /// Bumped each time an assignment replaces `names`.
    pub(super) names_version: u64,
    /// Catalogs whose names may be rebound (answered `no-cache`, not `immutable`).
    pub(super) mutable: BTreeSet<CatalogName>,
    /// Catalogs named in the assignment: this directory serves them.
    pub(super) catalogs: BTreeSet<CatalogName>,
    /// Held blobs this directory has assigned since start (reported to it while held even when
    /// no longer assigned: it may send clients for a cached copy).
    pub(super) claimed: BTreeSet<Digest>,
    pub(super) generation: u64,
    /// When the next request may go out, and whether one is awaiting its answer.
    next_send: Instant,
    awaiting: Option<Instant>,
    /// A heartbeat should go out as soon as nothing is awaited (news to report).
    pub(super) report_soon: bool,
    /// How the directory last said it sees this relay.
    pub(super) standing: Option<Standing>,
    /// The held set this directory last took, sorted, with the digest its ack named it by: the
    /// base of the next delta. `None`: the next heartbeat reports the whole set.
    acked: Option<(Digest, Vec<Digest>)>,
    /// What the heartbeat awaiting its answer reported.
    sent: Option<Reported>,
    /// Deltas sent since the last whole report.
    deltas: u32,
    /// Its pinned key and the heads applied from it.
    pub(super) trust: TrustState,
}

impl Registration {
    pub(super) fn new(index: Upstream, capacity: Capacity, token: String, trust: &Trust, now: Instant) -> Self {
        Self {
            index,
            phase: Phase::Enrolling,
            capacity,
            token,
            heartbeat_interval: Duration::from_secs(5),
            lease: Duration::from_secs(15),
            wanted: BTreeMap::new(),
            names: BTreeMap::new(),
            names_version: 0,
            mutable: BTreeSet::new(),
            catalogs: BTreeSet::new(),
            claimed: BTreeSet::new(),
            generation: 0,
            next_send: now,
            awaiting: None,
            report_soon: false,
            standing: None,
            acked: None,
            sent: None,
            deltas: 0,
            trust: TrustState::new(trust),
        }
    }

    pub(super) fn is_active(&self) -> bool {
        self.phase == Phase::Active
    }

    /// True once an assignment has arrived from this directory since start.
    pub(super) fn has_assignment(&self) -> bool {
        self.generation > 0
    }

    /// The directory's reply to the last request.
    pub(super) fn handle_reply(&mut self, msg: Message, retry_backoff: Duration, now: Instant, events: &mut VecDeque<Event>) -> Heard {
        self.awaiting = None;
        let mut heard = Heard::default();
        match msg {
            Message::Enrolled(ok) => {
                self.phase = Phase::Active;
                // The first heartbeat after an enrollment reports the whole set.
                self.acked = None;
                self.heartbeat_interval = Duration::from_millis(ok.heartbeat_interval_ms.clamp(100, 300_000));
                self.lease = Duration::from_millis(ok.lease_ms.clamp(100, 3_600_000));
                self.next_send = now;
                events.push_back(Event::Enrolled { upstream: self.index, relay: ok.relay, directory: ok.directory });
            }
            Message::HeartbeatAck(ack) => heard = self.acked(ack, now, events),
            Message::Refused(refusal) => {
                heard.refused = true;
                self.acked = None;
                self.sent = None;
                events.push_back(Event::Refused { upstream: self.index, reason: refusal.reason });
                if refusal.code == RefusalCode::UnknownRelay {
                    self.phase = Phase::Enrolling;
                }
                self.next_send = now + retry_backoff;
            }
            Message::Enroll(_) | Message::Heartbeat(_) => self.next_send = now + retry_backoff,
        }
        heard
    }

    fn acked(&mut self, ack: HeartbeatAck, now: Instant, events: &mut VecDeque<Event>) -> Heard {
        let mut heard = Heard { acked: true, expunged: ack.expunged, ..Heard::default() };
        let sent = self.sent.take();
        let was_delta = sent.as_ref().is_some_and(|s| s.delta);
        match (ack.held, sent) {
            (Some(name), Some(sent)) if name == sent.digest => self.acked = Some((name, sent.set)),
            (None, Some(sent)) if sent.delta => {
                // The directory does not have the base (it restarted, or another process of it
                // answered) or came out elsewhere: the whole set, at once. Not an acknowledgement:
                // an eviction it reported waits for the whole set's.
                heard.acked = false;
                self.acked = None;
                self.report_soon = true;
            }
            // A directory before deltas, or one that took a set other than the one sent.
            _ => self.acked = None,
        }
        for digest in &heard.expunged {
            self.claimed.remove(digest);
        }
        if let Some(standing) = ack.standing
            && self.standing.as_ref() != Some(&standing)
        {
            self.standing = Some(standing.clone());
            events.push_back(Event::StandingChanged { upstream: self.index, standing });
        }
        if let Some(state) = ack.state {
            self.wanted = state.assigned.into_iter().map(|a| (a.digest, Wanted { size: a.size, manifest: a.manifest, sources: a.sources })).collect();
            self.claimed.extend(self.wanted.keys().copied());
            // Names of blobs still downloading are kept: `lookup` checks the holdings, and a
            // finished download must be servable by name before the next ack.
            self.mutable = state.names.iter().filter(|n| n.mutable).map(|n| n.catalog.clone()).collect();
            self.catalogs = state.names.iter().map(|n| n.catalog.clone()).collect();
            self.names = state.names.into_iter().map(|n| ((n.catalog, n.path), n.digest)).collect();
            self.names_version += 1;
            heard.assignment = true;
            // A manifest is sent for what the directory does not count held. For a digest the
            // delta it took reported, the directory missed it (it did not know the digest then):
            // the whole set, at once.
            if was_delta
                && let Some((_, set)) = &self.acked
                && self.wanted.iter().any(|(d, w)| w.manifest.is_some() && set.binary_search(d).is_ok())
            {
                self.acked = None;
                self.report_soon = true;
            }
        }
        self.generation = ack.generation;
        self.next_send = now + self.heartbeat_interval;
        heard
    }

    /// The last request got no answer (connection refused, timeout, bad response).
    pub(super) fn send_failed(&mut self, retry_backoff: Duration, now: Instant) {
        self.awaiting = None;
        // It may or may not have been taken: the next delta names the base acknowledged before,
        // which the directory refuses if it took this one (unless nothing changed).
        self.sent = None;
        self.next_send = now + retry_backoff;
    }

    /// The directory announced a new generation: report in now rather than at the next beat.
    /// True when a heartbeat should go out.
    pub(super) fn notify(&mut self, generation: u64) -> bool {
        if generation != self.generation && self.phase == Phase::Active {
            self.report_soon = true;
            return true;
        }
        false
    }

    /// The request awaiting an answer timed out at `now`.
    pub(super) fn timed_out(&self, now: Instant) -> bool {
        self.awaiting.is_some_and(|t| now >= t)
    }

    pub(super) fn is_due(&self, now: Instant) -> bool {
        self.awaiting.is_none() && (now >= self.next_send || (self.report_soon && self.phase == Phase::Active))
    }

    /// The request to send now (call when `is_due`): an enrollment, or a heartbeat reporting
    /// `held` (sorted), whole or as the change from the set the directory last took.
    pub(super) fn request(&mut self, config: &RelayConfig, held: Vec<Digest>, used: u64, active: u32, now: Instant) -> Message {
        let msg = match self.phase {
            Phase::Enrolling => Message::Enroll(EnrollRequest {
                token: self.token.clone(),
                public_url: config.public_url.clone(),
                capacity: self.capacity,
                catalogs: config.catalogs.clone(),
                tags: config.tags.clone(),
            }),
            Phase::Active => {
                let digest = HeldSum::of(&held).digest();
                let delta = match &self.acked {
                    Some((base, base_set)) if self.deltas + 1 < config.full_report_every => {
                        let (added, removed) = diff(&held, base_set);
                        Some(HeldDelta { base: *base, added, removed, digest })
                    }
                    _ => None,
                };
                self.deltas = if delta.is_some() { self.deltas + 1 } else { 0 };
                let whole = if delta.is_some() { Vec::new() } else { held.clone() };
                self.sent = Some(Reported { set: held, digest, delta: delta.is_some() });
                Message::Heartbeat(Heartbeat { generation: self.generation, held: whole, used, active, delta })
            }
        };
        self.report_soon = false;
        self.awaiting = Some(now + config.request_timeout);
        msg
    }

    pub(super) fn poll_timeout(&self) -> Instant {
        let send = match self.awaiting {
            Some(deadline) => deadline,
            None => self.next_send,
        };
        self.trust.poll_timeout().map_or(send, |t| t.min(send))
    }

    /// The digest this directory names `catalog/path`, held or not; `None` while the catalog's
    /// head does not hold (frozen, or not renewed since start).
    pub(super) fn name_of(&self, catalog: &CatalogName, path: &ArtifactPath) -> Option<Digest> {
        if !self.trust.serves(catalog) {
            return None;
        }
        self.names.get(&(catalog.clone(), path.clone())).copied()
    }

    /// True when this directory's names include `catalog` (it serves that catalog) and its
    /// head holds.
    pub(super) fn serves_catalog(&self, catalog: &CatalogName) -> bool {
        self.catalogs.contains(catalog) && self.trust.serves(catalog)
    }
}

/// What `now` adds to `base` and what it lacks of it; both sorted.
fn diff(now: &[Digest], base: &[Digest]) -> (Vec<Digest>, Vec<Digest>) {
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    let (mut a, mut b) = (now.iter().peekable(), base.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x == y => {
                a.next();
                b.next();
            }
            (Some(x), Some(y)) if x < y => added.extend(a.next()),
            (Some(_), Some(_)) | (None, Some(_)) => removed.extend(b.next()),
            (Some(_), None) => added.extend(a.next()),
            (None, None) => return (added, removed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Assigned, EnrollResponse, NodeId, Refusal, RelayAssignment};

    fn d(n: u8) -> Digest {
        Digest::from_bytes([n; 32])
    }

    fn config() -> RelayConfig {
        RelayConfig::new(RelayUrl::new("http://r").unwrap(), Capacity { disk_budget: 1000, bandwidth: 0 }, "t".into())
    }

    fn ack(expunged: Vec<Digest>, assigned: &[u8]) -> Message {
        let assigned = assigned.iter().map(|n| Assigned { digest: d(*n), size: 10, manifest: None, sources: Vec::new() }).collect();
        Message::HeartbeatAck(HeartbeatAck {
            generation: 3,
            state: Some(RelayAssignment { assigned, names: Vec::new() }),
            expunged,
            standing: None,
            heads: Vec::new(),
            held: None,
        })
    }

    #[test]
    fn enrolls_with_its_share_then_beats_and_claims_what_it_was_assigned() {
        let mut events = VecDeque::new();
        let share = Capacity { disk_budget: 500, bandwidth: 0 };
        let mut r = Registration::new(1, share, "tok".into(), &Trust::default(), Instant::ZERO);
        assert!(r.is_due(Instant::ZERO));
        match r.request(&config(), Vec::new(), 0, 0, Instant::ZERO) {
            Message::Enroll(e) => assert_eq!((e.capacity, e.token.as_str()), (share, "tok")),
            other => panic!("{other:?}"),
        }
        assert!(!r.is_due(Instant::ZERO), "one request at a time");
        let ok = EnrollResponse { relay: NodeId([1; 32]), directory: NodeId([2; 32]), heartbeat_interval_ms: 1000, lease_ms: 4000 };
        r.handle_reply(Message::Enrolled(ok), Duration::from_secs(1), Instant::ZERO, &mut events);
        assert!(matches!(events.pop_front(), Some(Event::Enrolled { upstream: 1, .. })));
        assert_eq!(r.lease, Duration::from_secs(4));
        assert!(matches!(r.request(&config(), vec![d(9)], 10, 0, Instant::ZERO), Message::Heartbeat(hb) if hb.held == [d(9)]));
        let heard = r.handle_reply(ack(Vec::new(), &[1, 2]), Duration::from_secs(1), Instant::ZERO, &mut events);
        assert!(heard.acked && heard.assignment && r.has_assignment());
        assert_eq!(r.claimed, [d(1), d(2)].into());
        assert_eq!(r.poll_timeout(), Instant::from_millis(1000), "next beat");
        // An expunge takes the claim away; a later state without the digest keeps it away.
        let heard = r.handle_reply(ack(vec![d(2)], &[1]), Duration::from_secs(1), Instant::ZERO, &mut events);
        assert_eq!(heard.expunged, vec![d(2)]);
        assert_eq!(r.claimed, [d(1)].into());
    }

    /// An active registration, as after its enrollment.
    fn active(config: &RelayConfig) -> Registration {
        let mut r = Registration::new(0, config.capacity, "tok".into(), &Trust::default(), Instant::ZERO);
        let ok = EnrollResponse { relay: NodeId([1; 32]), directory: NodeId([2; 32]), heartbeat_interval_ms: 1000, lease_ms: 4000 };
        r.handle_reply(Message::Enrolled(ok), Duration::from_secs(1), Instant::ZERO, &mut VecDeque::new());
        r
    }

    fn beat(r: &mut Registration, config: &RelayConfig, held: &[u8]) -> Heartbeat {
        match r.request(config, held.iter().map(|n| d(*n)).collect(), 0, 0, Instant::ZERO) {
            Message::Heartbeat(hb) => hb,
            other => panic!("{other:?}"),
        }
    }

    /// The directory's answer: it took the set `held` (or took nothing, `None`).
    fn answer(r: &mut Registration, held: Option<&[u8]>, assigned: Vec<Assigned>) -> Heard {
        let name = held.map(|h| HeldSum::of(&h.iter().map(|n| d(*n)).collect::<Vec<_>>()).digest());
        let state = (!assigned.is_empty()).then(|| RelayAssignment { assigned, names: Vec::new() });
        let ack = HeartbeatAck { generation: 3, state, expunged: Vec::new(), standing: None, heads: Vec::new(), held: name };
        r.handle_reply(Message::HeartbeatAck(ack), Duration::from_secs(1), Instant::ZERO, &mut VecDeque::new())
    }

    #[test]
    fn heartbeats_report_what_changed_since_the_set_the_directory_took() {
        let config = RelayConfig { full_report_every: 4, ..config() };
        let mut r = active(&config);
        let hb = beat(&mut r, &config, &[1, 2]);
        assert_eq!((hb.held, hb.delta), (vec![d(1), d(2)], None), "the whole set after an enrollment");
        assert!(answer(&mut r, Some(&[1, 2]), Vec::new()).acked);

        let hb = beat(&mut r, &config, &[2, 3, 4]);
        assert!(hb.held.is_empty());
        let delta = hb.delta.expect("a delta once the directory named a set");
        assert_eq!(delta.base, HeldSum::of(&[d(1), d(2)]).digest());
        assert_eq!((delta.added, delta.removed), (vec![d(3), d(4)], vec![d(1)]));
        assert_eq!(delta.digest, HeldSum::of(&[d(2), d(3), d(4)]).digest());
        assert!(answer(&mut r, Some(&[2, 3, 4]), Vec::new()).acked);

        // No answer: the next delta is from the set taken before.
        let _ = beat(&mut r, &config, &[2, 3]);
        r.send_failed(Duration::from_secs(1), Instant::ZERO);
        let delta = beat(&mut r, &config, &[2, 3]).delta.expect("a delta");
        assert_eq!((delta.base, delta.added, delta.removed), (HeldSum::of(&[d(2), d(3), d(4)]).digest(), vec![], vec![d(4)]));
        assert!(answer(&mut r, Some(&[2, 3]), Vec::new()).acked);
        // Every fourth heartbeat is whole.
        assert!(beat(&mut r, &config, &[2, 3]).delta.is_none(), "three deltas since the last whole set");
        assert!(answer(&mut r, Some(&[2, 3]), Vec::new()).acked);
        assert!(beat(&mut r, &config, &[2, 3]).delta.is_some());
    }

    #[test]
    fn a_delta_not_taken_is_no_acknowledgement_and_the_whole_set_goes_at_once() {
        let config = config();
        let mut r = active(&config);
        beat(&mut r, &config, &[1]);
        answer(&mut r, Some(&[1]), Vec::new());
        assert!(beat(&mut r, &config, &[]).delta.is_some());
        let heard = answer(&mut r, None, Vec::new());
        assert!(!heard.acked, "an eviction it reported must wait");
        assert!(r.is_due(Instant::ZERO), "at once");
        let hb = beat(&mut r, &config, &[]);
        assert!(hb.delta.is_none() && hb.held.is_empty(), "the whole (empty) set");
        assert!(answer(&mut r, Some(&[]), Vec::new()).acked);

        // A directory before deltas names no set: every heartbeat is whole, each acknowledged.
        let mut old = active(&config);
        for _ in 0..3 {
            assert!(beat(&mut old, &config, &[1]).delta.is_none());
            assert!(answer(&mut old, None, Vec::new()).acked);
        }
    }

    #[test]
    fn a_manifest_for_a_digest_the_delta_reported_sends_the_whole_set() {
        let config = config();
        let mut r = active(&config);
        beat(&mut r, &config, &[1]);
        answer(&mut r, Some(&[1]), Vec::new());
        beat(&mut r, &config, &[1, 2]);
        // The directory did not count 2 (it did not know it when the report came).
        let manifest = ChunkManifest::new(10, 1 << 20, d(2), vec![d(2)]).unwrap();
        let assigned = vec![Assigned { digest: d(2), size: 10, manifest: Some(manifest), sources: Vec::new() }];
        assert!(answer(&mut r, Some(&[1, 2]), assigned).acked);
        assert!(r.is_due(Instant::ZERO), "at once");
        assert!(beat(&mut r, &config, &[1, 2]).delta.is_none());
    }

    #[test]
    fn an_unknown_relay_refusal_enrolls_again() {
        let mut events = VecDeque::new();
        let mut r = Registration::new(0, Capacity::default(), "tok".into(), &Trust::default(), Instant::ZERO);
        r.phase = Phase::Active;
        let refusal = Refusal { code: RefusalCode::UnknownRelay, reason: "enroll again".into() };
        r.handle_reply(Message::Refused(refusal), Duration::from_secs(2), Instant::ZERO, &mut events);
        assert_eq!(r.phase, Phase::Enrolling);
        assert!(matches!(events.pop_front(), Some(Event::Refused { upstream: 0, .. })));
        assert!(!r.is_due(Instant::from_millis(1999)) && r.is_due(Instant::from_millis(2000)));
    }
}
