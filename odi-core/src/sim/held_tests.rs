//! Heartbeats that report the held set as a delta, across the network: steady state is deltas,
//! a restarted directory gets whole sets, and a digest the directory learns of after the relay
//! reported it is counted held without a download.

use std::time::Duration;

use super::*;

const MB: u64 = 1 << 20;

#[test]
fn steady_heartbeats_are_deltas_and_a_restarted_directory_is_sent_whole_sets() {
    let mut sim = Sim::new(41);
    let cat = sim.create_catalog("releases", 2);
    let ids: Vec<NodeId> = (1..=2).map(|n| sim.add_relay(n, 100 * MB)).collect();
    let digests: Vec<Digest> = (0..6u8).map(|i| sim.publish(&cat, &format!("f{i}"), &Sim::data(i, 3000 + usize::from(i)))).collect();
    sim.run_for(Duration::from_secs(60));
    let reports = sim.held_reports;
    assert!(reports.deltas > 3 * reports.whole, "mostly deltas: {reports:?}");
    assert!(reports.whole >= 2 * 2, "an enrollment's and the periodic whole sets: {reports:?}");
    assert_eq!(reports.not_taken, 0, "{reports:?}");
    let fetches: Vec<u64> = ids.iter().map(|id| sim.relays[id].fetches).collect();

    sim.restart_directory();
    sim.held_reports = HeldReports::default();
    sim.run_for(Duration::from_secs(10));
    let reports = sim.held_reports;
    assert_eq!(reports.not_taken, 2, "each relay's first delta names a set the new process does not have: {reports:?}");
    assert!(reports.whole >= 2 && reports.deltas > reports.not_taken, "{reports:?}");
    for (i, d) in digests.iter().enumerate() {
        let eligible = sim.dir.eligible("releases", &ArtifactPath::new(&format!("f{i}")).unwrap(), sim.now).unwrap();
        assert_eq!(eligible.into_iter().collect::<BTreeSet<_>>(), sim.holders_of(d), "f{i}: counted held again");
    }
    assert!(sim.dir.relays(sim.now).iter().all(|v| v.held == v.assigned && v.held == digests.len()));
    assert_eq!(ids.iter().map(|id| sim.relays[id].fetches).collect::<Vec<_>>(), fetches, "nothing fetched again");
}

#[test]
fn a_digest_held_before_it_was_published_is_counted_without_a_download() {
    let mut sim = Sim::new(42);
    let cat = sim.create_catalog("releases", 1);
    let id = sim.add_relay(1, 100 * MB);
    sim.publish(&cat, "a", &Sim::data(1, 3000));
    sim.run_for(Duration::from_secs(5));
    // Bytes on its disk the directory does not know yet: reported, counted only in the sum.
    let data = Sim::data(2, 5000);
    let digest = ChunkManifest::of(&data, MIN_CHUNK_SIZE).unwrap().digest();
    sim.kill(id);
    sim.relays.get_mut(&id).unwrap().store.insert(digest, data.len() as u64);
    sim.revive(id);
    sim.run_for(Duration::from_secs(10));
    assert!(sim.held_reports.deltas > 0);
    let fetches = sim.relays[&id].fetches;

    assert_eq!(sim.publish(&cat, "b", &data), digest);
    // Well within the periodic whole set (8 beats of 4 s): the assignment's manifest for what
    // the relay's delta reported tells it that the directory missed it.
    sim.run_for(Duration::from_secs(6));
    let eligible = sim.dir.eligible("releases", &ArtifactPath::new("b").unwrap(), sim.now).unwrap();
    assert_eq!(eligible, vec![id]);
    assert_eq!(sim.relays[&id].fetches, fetches, "its copy was counted, not fetched again");
    assert_eq!(sim.held_reports.not_taken, 0);
}
