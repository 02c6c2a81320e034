//! Bit rot on an honest relay's disk: found by audits or client reports through the relay's own
//! read-side check, dropped, reported, fetched again, and never held against the relay.

use std::collections::BTreeSet;
use std::time::Duration;

use super::*;
use crate::directory::{RelayStatus, ReportOutcome};

const MB: u64 = 1 << 20;

fn status(sim: &Sim, id: NodeId) -> RelayStatus {
    sim.dir.relays(sim.now).into_iter().find(|v| v.id == id).expect("known relay").status
}

fn targets(sim: &mut Sim, path: &str) -> Vec<NodeId> {
    let r = sim.redirect("c", path).unwrap();
    r.target.iter().chain(&r.alternates).map(|u| sim.relay_at(u)).collect()
}

#[test]
fn a_rotten_copy_found_by_an_audit_is_dropped_unlisted_fetched_again_and_not_held_against_the_relay() {
    let mut sim = Sim::with_config(81, |c| {
        c.audit_interval = Duration::from_secs(1);
        c.probe_interval = Duration::from_secs(30);
    });
    let cat = sim.create_catalog("c", 3);
    let ids: Vec<NodeId> = (1..=3).map(|n| sim.add_relay(n, 100 * MB)).collect();
    let digest = sim.publish(&cat, "f", &Sim::data(1, 3 * MIN_CHUNK_SIZE as usize));
    sim.run_for(Duration::from_secs(10));
    assert!(targets(&mut sim, "f").contains(&ids[0]));
    let fetched = sim.relays[&ids[0]].fetches;

    sim.relays.get_mut(&ids[0]).unwrap().rotten.insert(digest);
    let mut waited = 0;
    while !sim.relay_events.iter().any(|(id, e)| *id == ids[0] && *e == relay::Event::Corrupt { digest }) {
        sim.run_for(Duration::from_millis(100));
        waited += 1;
        assert!(waited < 200, "the rot was not found by 20 s of audits");
    }
    // At once: the relay no longer serves it, and within a heartbeat round trip the directory
    // no longer sends clients there.
    assert!(!sim.relays[&ids[0]].machine.has_bytes(&digest));
    sim.run_for(Duration::from_millis(50));
    assert!(!targets(&mut sim, "f").contains(&ids[0]), "still redirecting to the dropped copy");
    // Fetched again, listed again, and never quarantined for its own disk's rot.
    sim.run_for(Duration::from_secs(10));
    let r = &sim.relays[&ids[0]];
    assert!(r.fetches > fetched && r.store.contains_key(&digest) && !r.rotten.contains(&digest), "not fetched again");
    assert!(targets(&mut sim, "f").contains(&ids[0]));
    assert_ne!(status(&sim, ids[0]), RelayStatus::Quarantined);
    assert!(!sim.dir_events.iter().any(|e| matches!(e, directory::Event::RelayQuarantined { .. })));
}

#[test]
fn scheduled_audits_visit_every_held_chunk_once_per_cycle() {
    let mut sim = Sim::with_config(82, |c| {
        c.audit_interval = Duration::from_secs(1);
        c.probe_interval = Duration::from_secs(600);
    });
    let cat = sim.create_catalog("c", 1);
    let id = sim.add_relay(1, 100 * MB);
    let mut chunks = BTreeSet::new();
    for (i, n) in [1usize, 2, 3, 5, 7, 11].into_iter().enumerate() {
        let digest = sim.publish(&cat, &format!("f{i}"), &Sim::data(i as u8, n * MIN_CHUNK_SIZE as usize));
        chunks.extend((0..n as u64).map(|c| (digest, c)));
    }
    sim.run_for(Duration::from_secs(5));
    sim.dir_events.clear();
    // With a stable held set, any 2 × 29 consecutive audits hold one whole walk: every chunk
    // is audited within twice held chunks × audit interval (the window is the end of one walk,
    // one whole walk and the start of the next, so no chunk comes up more than three times).
    let mut seen = Vec::new();
    while seen.len() < 2 * chunks.len() {
        sim.run_for(Duration::from_millis(500));
        seen.extend(sim.dir_events.drain(..).filter_map(|e| match e {
            directory::Event::AuditPassed { relay, digest, index } if relay == id => Some((digest, index)),
            _ => None,
        }));
    }
    seen.truncate(2 * chunks.len());
    let distinct: BTreeSet<(Digest, u64)> = seen.iter().copied().collect();
    assert_eq!(distinct, chunks, "every held chunk audited");
    for chunk in &chunks {
        assert!(seen.iter().filter(|c| *c == chunk).count() <= 3, "{chunk:?} audited more than once per walk");
    }
}

#[test]
fn an_audit_walk_is_a_permutation() {
    let mut rng = SeededRng::new(Seed(5));
    for n in [1u64, 2, 3, 4, 12, 97, 1000, 1024] {
        let mut cycle = directory::AuditCycle::default();
        let walk: BTreeSet<u64> = (0..n).map(|_| cycle.next(n, &mut rng)).collect();
        assert_eq!(walk.len() as u64, n, "n = {n}");
        assert!(walk.iter().all(|i| *i < n));
    }
}

#[test]
fn a_client_report_audits_that_chunk_at_once_and_costs_little() {
    let mut sim = Sim::with_config(83, |c| {
        c.audit_interval = Duration::from_secs(3600);
        c.probe_interval = Duration::from_secs(3600);
    });
    let cat = sim.create_catalog("c", 2);
    let ids: Vec<NodeId> = (1..=2).map(|n| sim.add_relay(n, 100 * MB)).collect();
    let digest = sim.publish(&cat, "f", &Sim::data(3, 4 * MIN_CHUNK_SIZE as usize));
    sim.run_for(Duration::from_secs(10));
    let url = format!("{}/r/c/f", sim.dir.relays(sim.now).into_iter().find(|v| v.id == ids[0]).unwrap().url);
    let now = sim.now;

    // Reports the directory cannot act on cost nothing.
    assert_eq!(sim.dir.handle_report("http://elsewhere.example/r/c/f", digest, 0, now), ReportOutcome::Ignored);
    assert_eq!(sim.dir.handle_report(&url, Digest::of(b"unknown"), 0, now), ReportOutcome::Ignored);
    assert_eq!(sim.dir.handle_report(&url, digest, 4, now), ReportOutcome::Ignored, "no chunk 4");
    assert_eq!(sim.dir.poll_effect(), None);

    // A real one audits exactly that chunk, at once; more reports meanwhile are dropped.
    assert_eq!(sim.dir.handle_report(&url, digest, 3, now), ReportOutcome::Auditing);
    assert_eq!(sim.dir.handle_report(&url, digest, 1, now), ReportOutcome::Busy);
    sim.drain();
    sim.run_for(Duration::from_millis(100));
    assert!(sim.dir_events.iter().any(|e| *e == directory::Event::AuditPassed { relay: ids[0], digest, index: 3 }), "{:?}", sim.dir_events);
    assert_eq!(sim.dir.handle_report(&url, digest, 1, sim.now), ReportOutcome::Busy, "one report-started audit per second");

    // On a relay whose copy rotted, the audited read finds the rot: dropped, fetched again.
    sim.run_for(Duration::from_secs(1));
    sim.relays.get_mut(&ids[0]).unwrap().rotten.insert(digest);
    assert_eq!(sim.dir.handle_report(&url, digest, 1, sim.now), ReportOutcome::Auditing);
    sim.drain();
    assert!(sim.relay_events.iter().any(|(id, e)| *id == ids[0] && *e == relay::Event::Corrupt { digest }));
    sim.run_for(Duration::from_millis(100));
    assert!(!targets(&mut sim, "f").contains(&ids[0]));
    sim.run_for(Duration::from_secs(10));
    assert!(sim.relays[&ids[0]].store.contains_key(&digest) && targets(&mut sim, "f").contains(&ids[0]));
    assert_ne!(status(&sim, ids[0]), RelayStatus::Quarantined);
}
