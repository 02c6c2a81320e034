//! One directory a relay is enrolled with: enrollment, heartbeats, the directory's standing for
//! the relay, and the assignment and names it sent (with its own generation). Every directory
//! has one, each on its own timers; what they hold is shared (`super::holdings`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use super::trust::{Trust, TrustState};
use super::{Event, RelayConfig, Upstream};
use crate::digest::Digest;
use crate::manifest::ChunkManifest;
use crate::message::{Capacity, EnrollRequest, Heartbeat, HeartbeatAck, Message, RefusalCode, RelayUrl, Standing};
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

/// What a reply changed, for the orchestrator to act on.
#[derive(Debug, Default)]
pub(super) struct Heard {
    /// The reply acknowledged a heartbeat.
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
                self.heartbeat_interval = Duration::from_millis(ok.heartbeat_interval_ms.clamp(100, 300_000));
                self.lease = Duration::from_millis(ok.lease_ms.clamp(100, 3_600_000));
                self.next_send = now;
                events.push_back(Event::Enrolled { upstream: self.index, relay: ok.relay, directory: ok.directory });
            }
            Message::HeartbeatAck(ack) => heard = self.acked(ack, now, events),
            Message::Refused(refusal) => {
                heard.refused = true;
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
        }
        self.generation = ack.generation;
        self.next_send = now + self.heartbeat_interval;
        heard
    }

    /// The last request got no answer (connection refused, timeout, bad response).
    pub(super) fn send_failed(&mut self, retry_backoff: Duration, now: Instant) {
        self.awaiting = None;
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
    /// `held`.
    pub(super) fn request(&mut self, config: &RelayConfig, held: Vec<Digest>, used: u64, active: u32, now: Instant) -> Message {
        let msg = match self.phase {
            Phase::Enrolling => Message::Enroll(EnrollRequest {
                token: self.token.clone(),
                public_url: config.public_url.clone(),
                capacity: self.capacity,
                catalogs: config.catalogs.clone(),
                tags: config.tags.clone(),
            }),
            Phase::Active => Message::Heartbeat(Heartbeat { generation: self.generation, held, used, active }),
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
