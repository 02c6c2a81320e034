//! Heartbeats shared between the processes of one directory whose store they share
//! ([`DirectoryConfig::share_heartbeats`](super::DirectoryConfig::share_heartbeats)). A relay talks to whichever process its request
//! reaches; what the process learns from it (that it is alive, its load, what it holds) is
//! batched into a [`Record::Heard`] for the store's change feed, and every other process
//! books it as if it had taken the heartbeat itself, checked against its own copy of the
//! relay's set ([`HeldDelta`]'s base and result). So every process sends clients to the same
//! holders. What stays per process: generations and the states sent (each process answers
//! the heartbeats it takes), self-tests and audits (each process runs its own), and hot
//! counters.

use std::time::Duration;

use super::{Directory, Effect, Event, Write};
use crate::digest::Digest;
use crate::message::{Heartbeat, HeldDelta, NodeId};
use crate::storage::{HeardRelay, Record};
use crate::time::Instant;

/// Heartbeats taken are written for the other processes at most this long after the first.
pub(super) const HEARD_EVERY: Duration = Duration::from_secs(1);

/// Heartbeats taken and not yet written for the other processes.
#[derive(Debug, Default)]
pub(super) struct HeardBatch {
    relays: Vec<HeardRelay>,
    due: Option<Instant>,
}

impl HeardBatch {
    fn push(&mut self, heard: HeardRelay, now: Instant) {
        self.due.get_or_insert(now + HEARD_EVERY);
        self.relays.push(heard);
    }

    /// When the batch is to be written.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.due
    }
}

impl Directory {
    /// Queues what the other processes must learn of a heartbeat this one took: `before` is the
    /// digest of the relay's set before it, `taken` after it (`None`: its delta was not taken,
    /// and the whole set it sends next is what they will learn).
    pub(super) fn share_heartbeat(&mut self, from: NodeId, hb: &Heartbeat, before: Option<Digest>, taken: Option<Digest>, now: Instant) {
        let Some(digest) = taken else { return };
        let delta = match (&hb.delta, before) {
            (Some(delta), _) => Some(delta.clone()),
            // A whole set that named the same set as before: an empty change, to be checked.
            (None, Some(before)) if before == digest => Some(HeldDelta { base: digest, added: Vec::new(), removed: Vec::new(), digest }),
            (None, _) => None,
        };
        let held = if delta.is_some() { Vec::new() } else { hb.held.clone() };
        let report = Heartbeat { generation: 0, held, used: hb.used, active: hb.active, delta };
        // Current with this process: it knows every name this process knows in its catalogs.
        let names = if hb.generation == self.placement.generation() && self.relays.is_tested(&from) {
            let carried = self.relays.record(&from).map(|r| r.catalogs.clone()).unwrap_or_default();
            let catalogs = if carried.is_empty() { self.catalogs.names() } else { carried };
            catalogs.into_iter().filter_map(|c| self.catalogs.seq(&c).map(|seq| (c, seq))).collect()
        } else {
            Vec::new()
        };
        self.heard.push(HeardRelay { relay: from, report, names }, now);
    }

    /// Books heartbeats another process took.
    pub(super) fn apply_heard(&mut self, relays: &[HeardRelay], now: Instant) {
        for heard in relays {
            if heard.report.delta.is_some() && !heard.report.held.is_empty() {
                continue;
            }
            self.relays.heard_elsewhere(heard.relay, &heard.report, &heard.names, now, &self.catalogs);
        }
        self.drain_relays(now);
        self.refresh_assignment(now);
    }

    /// Writes the batch once it is due. Soft state: a failed write is not retried (the next
    /// heartbeats tell the same again).
    pub(super) fn flush_heard(&mut self, now: Instant) {
        if self.heard.due.is_none_or(|due| due > now) {
            return;
        }
        self.heard.due = None;
        let relays = std::mem::take(&mut self.heard.relays);
        if relays.is_empty() {
            return;
        }
        let id = self.persist.begin(Write::Soft).expect("a soft write concerns no relay");
        self.effects.push_back(Effect::Persist { id, records: vec![Record::Heard { relays }] });
    }

    /// The outcome of a `flush_heard` write.
    pub(super) fn heard_written(&mut self, outcome: Result<(), String>) {
        if let Err(error) = outcome {
            self.events.push_back(Event::PersistFailed { what: "heartbeats shared with the other processes (not retried)".into(), error });
        }
    }
}
