//! The directory's persistence path with a metadata store that fails on demand: nothing is
//! acknowledged before it is durable, and nothing the directory decided is lost.

use std::time::Duration;

use super::*;
use crate::directory::RelayStatus;
use crate::storage::RelayRecord;

const MB: u64 = 1 << 20;

fn status(sim: &Sim, id: NodeId) -> Option<RelayStatus> {
    sim.dir.relays(sim.now).into_iter().find(|v| v.id == id).map(|v| v.status)
}

fn stored_relay(sim: &Sim, id: NodeId) -> Option<RelayRecord> {
    sim.durable.iter().rev().find_map(|r| match r {
        Record::Relay(r) if r.id == id => Some(r.clone()),
        _ => None,
    })
}

fn enrolled(sim: &Sim, id: NodeId) -> bool {
    sim.relay_events.iter().any(|(r, e)| *r == id && matches!(e, relay::Event::Enrolled { .. }))
}

#[test]
fn a_failing_store_never_acknowledges_an_enrollment() {
    let mut sim = Sim::new(71);
    sim.store_fails = true;
    let id = sim.add_relay(1, 10 * MB);
    sim.run_for(Duration::from_secs(10));
    // The relay asked again and again; every attempt wrote nothing and was refused.
    assert!(!enrolled(&sim, id), "acknowledged an enrollment that is not durable");
    assert_eq!(status(&sim, id), None, "a relay whose record failed to save is not in the table");
    assert!(stored_relay(&sim, id).is_none());
    let refusals = sim.relay_events.iter().filter(|(r, e)| *r == id && matches!(e, relay::Event::Refused { .. })).count();
    assert!(refusals >= 3, "the relay was told to retry, and did ({refusals} refusals)");
    assert!(sim.dir_events.iter().any(|e| matches!(e, directory::Event::PersistFailed { .. })));

    // The store heals: the next attempt is written, then acknowledged.
    sim.store_fails = false;
    sim.run_for(Duration::from_secs(10));
    assert!(enrolled(&sim, id));
    assert!(stored_relay(&sim, id).is_some());
    assert_eq!(status(&sim, id), Some(RelayStatus::Ready));
    // A restart finds it.
    sim.restart_directory();
    assert!(status(&sim, id).is_some(), "the acknowledged enrollment survived the restart");
}

#[test]
fn a_quarantine_is_in_force_at_once_and_written_once_the_store_heals() {
    let mut sim = Sim::with_config(72, |c| c.audit_interval = Duration::from_secs(1));
    let cat = sim.create_catalog("c", 2);
    let ids: Vec<NodeId> = (1..=2).map(|n| sim.add_relay(n, 100 * MB)).collect();
    sim.publish(&cat, "f", &Sim::data(1, 3 * MIN_CHUNK_SIZE as usize));
    sim.run_for(Duration::from_secs(10));
    assert_eq!(status(&sim, ids[0]), Some(RelayStatus::Ready));

    sim.store_fails = true;
    sim.relays.get_mut(&ids[0]).unwrap().corrupt = 1.0;
    sim.run_for(Duration::from_secs(5));
    assert_eq!(status(&sim, ids[0]), Some(RelayStatus::Quarantined), "safety does not wait for the disk");
    assert!(stored_relay(&sim, ids[0]).is_some_and(|r| r.quarantined.is_none()), "nothing could be written yet");
    let failed = sim.dir_events.iter().filter(|e| matches!(e, directory::Event::PersistFailed { .. })).count();
    sim.run_for(Duration::from_secs(20));
    let retried = sim.dir_events.iter().filter(|e| matches!(e, directory::Event::PersistFailed { .. })).count();
    assert!(retried > failed, "the write is retried while the store fails");
    assert!(retried < failed + 20, "with backoff, not in a loop ({} retries in 20 s)", retried - failed);

    sim.store_fails = false;
    sim.run_for(Duration::from_secs(35));
    assert!(stored_relay(&sim, ids[0]).is_some_and(|r| r.quarantined.is_some()), "written once the store took writes again");
    sim.restart_directory();
    sim.run_for(Duration::from_secs(10));
    assert_eq!(status(&sim, ids[0]), Some(RelayStatus::Quarantined), "and survives a restart");
}

#[test]
fn a_quarantine_decided_during_a_slow_write_is_the_last_record_stored() {
    let mut sim = Sim::with_config(73, |c| c.audit_interval = Duration::from_secs(1));
    let cat = sim.create_catalog("c", 2);
    sim.publish(&cat, "f", &Sim::data(1, 3 * MIN_CHUNK_SIZE as usize));
    sim.storage_delay = Duration::from_millis(400);
    let ids: Vec<NodeId> = (1..=2).map(|n| sim.add_relay(n, 100 * MB)).collect();
    sim.run_for(Duration::from_secs(10));
    assert_eq!(status(&sim, ids[0]), Some(RelayStatus::Ready), "enrolled through slow writes");
    // The relay re-enrolls with a new URL (its write takes 3 s) while it serves bad bytes: the
    // quarantine is decided while the enrollment's record, without it, is being written.
    sim.storage_delay = Duration::from_secs(3);
    sim.relays.get_mut(&ids[0]).unwrap().corrupt = 1.0;
    let mut config = sim.relays[&ids[0]].config.clone();
    config.public_url = RelayUrl::new("http://relay-1.sim/moved").unwrap();
    let disk: Vec<(Digest, u64)> = sim.relays[&ids[0]].store.iter().map(|(d, s)| (*d, *s)).collect();
    sim.relays.get_mut(&ids[0]).unwrap().machine = Relay::new(config, disk, [], sim.now);
    sim.run_for(Duration::from_secs(2));
    assert_eq!(status(&sim, ids[0]), Some(RelayStatus::Quarantined), "quarantined while the enrollment is being written");
    assert!(stored_relay(&sim, ids[0]).is_some_and(|r| r.quarantined.is_none() && !r.public_url.as_str().ends_with("moved")));
    // From here it serves good bytes: only the decision keeps it out, not a new audit.
    sim.relays.get_mut(&ids[0]).unwrap().corrupt = 0.0;
    sim.run_for(Duration::from_secs(10));
    assert_eq!(status(&sim, ids[0]), Some(RelayStatus::Quarantined));
    let stored = stored_relay(&sim, ids[0]).unwrap();
    assert!(stored.quarantined.is_some(), "the last record written carries the quarantine: {stored:?}");
    assert!(stored.public_url.as_str().ends_with("moved"), "and the enrollment: {stored:?}");
    sim.restart_directory();
    sim.run_for(Duration::from_secs(5));
    assert_eq!(status(&sim, ids[0]), Some(RelayStatus::Quarantined));
}

#[test]
fn a_relay_hears_why_it_gets_no_clients() {
    let mut sim = Sim::new(74);
    let id = sim.add_relay(1, 10 * MB);
    sim.probe_down.insert(id);
    sim.run_for(Duration::from_secs(10));
    let standing = sim.relays[&id].machine.standing().cloned().expect("told by its heartbeat acks");
    assert_eq!(standing.status, RelayStatus::Enrolled);
    let reason = standing.reason.unwrap_or_default();
    assert!(reason.contains("self-test") && reason.contains("connection refused"), "{reason}");
    let view = sim.dir.relays(sim.now).into_iter().find(|v| v.id == id).unwrap();
    assert_eq!(view.reason.as_deref(), Some(reason.as_str()), "odi relays shows the same reason");

    sim.probe_down.remove(&id);
    sim.run_for(Duration::from_secs(10));
    let standing = sim.relays[&id].machine.standing().cloned().unwrap();
    assert!(matches!(standing.status, RelayStatus::Ready | RelayStatus::Syncing), "{standing:?}");
    assert_eq!(standing.reason, None);
    let changes = sim.relay_events.iter().filter(|(r, e)| *r == id && matches!(e, relay::Event::StandingChanged { .. })).count();
    assert!(changes <= 4, "told of changes, not on every heartbeat ({changes})");
}
