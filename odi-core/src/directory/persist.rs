//! The directory's one persistence path: every record leaves as an [`Effect::Persist`] with a
//! [`RequestId`], and its outcome comes back through `Directory::handle_storage`.
//!
//! Three kinds of write go through it, and each has its own rule for what happens before the
//! store answers:
//! - **Admin changes** (`Directory::commit`, or `commit_all` for records that are durable together,
//!   such as an expunge by digest's entry in every catalog) are applied only once durable; their
//!   caller learns the outcome from `Directory::take_outcome`.
//! - **Enrollments** are answered only once durable: the relay gets `Enrolled` after the record is
//!   stored, or a refusal it retries; a failed write changes nothing in memory.
//! - **Federation writes** (see `federated`): one at a time, in the order the federation made
//!   them; what the federation emitted after a write is released only once it is durable, and
//!   a failed one is retried with backoff.
//! - **The directory's own decisions** (a quarantine) take effect at once, because safety cannot
//!   wait for a disk; their record is then written, and a failed write is retried with backoff
//!   until it is durable, so a restart never forgets one.
//!
//! Writes of one relay's record never overlap: a relay has at most one write in flight, and a
//! decision taken meanwhile is written after it, with the record as it is then. So the last
//! record stored for a relay is always the latest decision.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::message::NodeId;
use crate::storage::{Record, RelayRecord};
use crate::time::Instant;

/// Names one storage request, so its outcome can be matched to it in any order.
#[derive(Clone, Copy, Debug, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub struct RequestId(pub u64);

/// The first wait before a failed write of a decision is tried again; it doubles up to
/// [`MAX_RETRY`].
pub(super) const FIRST_RETRY: Duration = Duration::from_millis(500);
pub(super) const MAX_RETRY: Duration = Duration::from_secs(30);

/// What a write in flight is for.
#[derive(Clone, Debug)]
pub(super) enum Write {
    /// An admin change (one or more records, durable together): apply it once durable.
    Admin(Vec<Record>),
    /// An enrollment: applied and answered once durable; it may replace a relay that was
    /// enrolled at the same URL with another key.
    Enroll(RelayRecord, Option<NodeId>),
    /// The relay's record as the directory decided it (already in force in memory); `backoff` is
    /// how long to wait before trying again if this write fails.
    Decision { relay: NodeId, backoff: Duration },
    /// Federation records (see `federated`): the federation's output behind it waits for it.
    Fed,
    /// Soft state for the other processes of the directory (see `shared`): not retried.
    Soft,
}

impl Write {
    fn relay(&self) -> Option<NodeId> {
        match self {
            Self::Admin(records) => records.iter().find_map(|r| match r {
                Record::Relay(r) => Some(r.id),
                _ => None,
            }),
            Self::Enroll(r, _) => Some(r.id),
            Self::Decision { relay, .. } => Some(*relay),
            Self::Fed | Self::Soft => None,
        }
    }
}

/// Writes in flight and decisions waiting to be written.
#[derive(Debug, Default)]
pub(super) struct Persistence {
    next: u64,
    in_flight: BTreeMap<RequestId, Write>,
    /// The relays with a write in flight, and which.
    writing: BTreeMap<NodeId, RequestId>,
    /// Relays whose decided record is not durable yet: written once `retry_at` has passed and no
    /// other write of theirs is in flight.
    unsaved: BTreeMap<NodeId, Unsaved>,
}

#[derive(Clone, Copy, Debug)]
struct Unsaved {
    retry_at: Instant,
    backoff: Duration,
}

impl Persistence {
    /// Starts `write`, unless the relay it concerns has a write in flight (`None`: try later).
    pub(super) fn begin(&mut self, write: Write) -> Option<RequestId> {
        let relay = write.relay();
        if relay.is_some_and(|r| self.writing.contains_key(&r)) {
            return None;
        }
        self.next += 1;
        let id = RequestId(self.next);
        if let Some(relay) = relay {
            self.writing.insert(relay, id);
        }
        self.in_flight.insert(id, write);
        Some(id)
    }

    /// Ends a write; `None` for an id that is not in flight (reported twice, or never started).
    /// A failed decision is queued again, after its backoff, unless a newer one already is.
    pub(super) fn finish(&mut self, id: RequestId, ok: bool, now: Instant) -> Option<Write> {
        let write = self.in_flight.remove(&id)?;
        if let Some(relay) = write.relay()
            && self.writing.get(&relay) == Some(&id)
        {
            self.writing.remove(&relay);
        }
        if let Write::Decision { relay, backoff } = write
            && !ok
        {
            self.unsaved.entry(relay).or_insert(Unsaved { retry_at: now + backoff, backoff: (backoff * 2).min(MAX_RETRY) });
        }
        Some(write)
    }

    /// Marks a relay's decided record as not durable yet.
    pub(super) fn decided(&mut self, relay: NodeId, now: Instant) {
        self.unsaved.entry(relay).or_insert(Unsaved { retry_at: now, backoff: FIRST_RETRY });
    }

    /// Starts the writes of every decision that is due: the relays they are for.
    pub(super) fn begin_due(&mut self, now: Instant) -> Vec<(RequestId, NodeId)> {
        let due: Vec<NodeId> = self.unsaved.iter().filter(|(id, u)| u.retry_at <= now && !self.writing.contains_key(id)).map(|(id, _)| *id).collect();
        due.into_iter()
            .filter_map(|relay| {
                let u = self.unsaved.remove(&relay)?;
                self.begin(Write::Decision { relay, backoff: u.backoff }).map(|id| (id, relay))
            })
            .collect()
    }

    /// A decision of this relay is not durable yet.
    #[cfg(test)]
    pub(super) fn is_unsaved(&self, relay: &NodeId) -> bool {
        self.unsaved.contains_key(relay) || self.writing.get(relay).is_some_and(|id| matches!(self.in_flight.get(id), Some(Write::Decision { .. })))
    }

    /// When the next write of an unsaved decision is due.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.unsaved.iter().filter(|(id, _)| !self.writing.contains_key(id)).map(|(_, u)| u.retry_at).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Capacity, RelayUrl};
    use crate::time::UnixTime;

    fn record(n: u8) -> RelayRecord {
        RelayRecord {
            id: NodeId([n; 32]),
            public_url: RelayUrl::new("http://relay.test").unwrap(),
            capacity: Capacity::default(),
            catalogs: Vec::new(),
            enrolled_at: UnixTime(0),
            quarantined: None,
            draining: false,
            proven: false,
            token: None,
            tags: Vec::new(),
        }
    }

    #[test]
    fn one_write_per_relay_at_a_time() {
        let mut p = Persistence::default();
        let t0 = Instant::ZERO;
        let first = p.begin(Write::Enroll(record(1), None)).expect("nothing in flight");
        assert_eq!(p.begin(Write::Decision { relay: NodeId([1; 32]), backoff: FIRST_RETRY }), None, "a second write of the same relay waits");
        let other = p.begin(Write::Decision { relay: NodeId([2; 32]), backoff: FIRST_RETRY }).expect("another relay is independent");
        assert_ne!(first, other);
        assert!(matches!(p.finish(first, true, t0), Some(Write::Enroll(..))));
        assert!(p.finish(first, true, t0).is_none(), "an outcome reported twice is ignored");
        assert!(p.begin(Write::Admin(vec![Record::Relay(record(1))])).is_some(), "free again");
    }

    #[test]
    fn a_decision_waits_for_the_write_in_flight() {
        let mut p = Persistence::default();
        let relay = NodeId([1; 32]);
        let t0 = Instant::ZERO;
        let enroll = p.begin(Write::Enroll(record(1), None)).unwrap();
        p.decided(relay, t0);
        assert!(p.begin_due(t0).is_empty(), "the enrollment is still being written");
        assert!(p.is_unsaved(&relay));
        p.finish(enroll, true, t0);
        let started = p.begin_due(t0);
        assert_eq!(started.len(), 1);
        assert!(p.is_unsaved(&relay), "written, not yet durable");
        p.finish(started[0].0, true, t0);
        assert!(!p.is_unsaved(&relay));
        assert_eq!(p.poll_timeout(), None);
    }

    #[test]
    fn failed_decisions_back_off_until_written() {
        let mut p = Persistence::default();
        let relay = NodeId([3; 32]);
        let t0 = Instant::ZERO;
        p.decided(relay, t0);
        let [(id, r)] = p.begin_due(t0)[..] else { panic!("one write due") };
        assert_eq!(r, relay);
        assert_eq!(p.poll_timeout(), None, "no timer while the write is in flight");
        p.finish(id, false, t0);
        assert!(p.begin_due(t0).is_empty(), "backing off");
        assert_eq!(p.poll_timeout(), Some(t0 + FIRST_RETRY));
        let t1 = t0 + FIRST_RETRY;
        let [(id, _)] = p.begin_due(t1)[..] else { panic!("retried") };
        p.finish(id, false, t1);
        assert_eq!(p.poll_timeout(), Some(t1 + FIRST_RETRY * 2), "doubled");
        let t2 = t1 + FIRST_RETRY * 2;
        let [(id, _)] = p.begin_due(t2)[..] else { panic!("retried") };
        p.finish(id, true, t2);
        assert!(!p.is_unsaved(&relay));
        assert_eq!(p.poll_timeout(), None);
    }

    #[test]
    fn a_newer_decision_during_a_write_is_written_after_it() {
        let mut p = Persistence::default();
        let relay = NodeId([5; 32]);
        let t0 = Instant::ZERO;
        p.decided(relay, t0);
        let [(id, _)] = p.begin_due(t0)[..] else { panic!("due") };
        p.decided(relay, t0); // decided again while the first write is in flight
        p.finish(id, true, t0);
        assert_eq!(p.begin_due(t0).len(), 1, "the newer record is written too");
    }

    #[test]
    fn backoff_is_capped() {
        let mut p = Persistence::default();
        let relay = NodeId([4; 32]);
        let mut now = Instant::ZERO;
        p.decided(relay, now);
        for _ in 0..20 {
            let [(id, _)] = p.begin_due(now)[..] else { panic!("due") };
            p.finish(id, false, now);
            now = p.poll_timeout().unwrap();
        }
        let [(id, _)] = p.begin_due(now)[..] else { panic!("due") };
        p.finish(id, false, now);
        assert_eq!(p.poll_timeout(), Some(now + MAX_RETRY));
    }
}
