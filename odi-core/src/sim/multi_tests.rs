//! Relays enrolled with two independent directories (not linked), each with its own catalog:
//! one store and one disk budget hold the union of both assignments.

use std::time::Duration;

use super::*;
use crate::relay::footprint;

const KB: u64 = 1 << 10;

/// Two directories, `n` relays each enrolled with both, a catalog on each.
fn two_directories(seed: u64, relays: u8, budget: u64, replicas: u32) -> (Sim, Vec<NodeId>, CatalogName, CatalogName) {
    let mut sim = Sim::new(seed);
    let second = sim.add_directory();
    assert_eq!(second, 1);
    let a = sim.create_catalog_on(0, "alpha", replicas, false);
    let b = sim.create_catalog_on(1, "beta", replicas, false);
    let ids = (1..=relays).map(|n| sim.add_relay_with(n, budget, 2)).collect();
    (sim, ids, a, b)
}

/// Bytes on a relay's disk as the budget counts them.
fn on_disk(sim: &Sim, id: NodeId) -> u64 {
    sim.relays[&id].store.values().map(|s| footprint(*s)).sum()
}

fn holds(sim: &Sim, id: NodeId, digest: &Digest) -> bool {
    sim.relays[&id].store.contains_key(digest)
}

#[test]
fn each_directory_is_told_an_equal_share_and_the_union_is_held_within_budget() {
    let budget = 400 * KB;
    let (mut sim, ids, a, b) = two_directories(301, 1, budget, 1);
    let id = ids[0];
    let mut ours = Vec::new();
    for i in 0..3 {
        ours.push(sim.publish_on(0, &a, &format!("a{i}.bin"), &Sim::data(i, 40 * KB as usize)));
        ours.push(sim.publish_on(1, &b, &format!("b{i}.bin"), &Sim::data(10 + i, 40 * KB as usize)));
    }
    sim.run_for(Duration::from_secs(20));
    // Each directory sees half the budget as the relay's capacity.
    for upstream in 0..2 {
        let now = sim.now;
        let view = sim.directory(upstream).relays(now).into_iter().find(|v| v.id == id).expect("enrolled with both");
        assert_eq!(view.capacity.disk_budget, budget / 2, "directory {upstream}");
    }
    for digest in &ours {
        assert!(holds(&sim, id, digest), "the union of both assignments is held");
    }
    assert!(sim.relays[&id].machine.is_synced());
    assert_eq!(sim.relays[&id].machine.used(), on_disk(&sim, id));
    assert!(on_disk(&sim, id) <= budget);
    // Each directory redirects its own names to the relay (checked by the invariants too).
    let r = sim.redirect("alpha", "a0.bin").unwrap();
    assert_eq!(r.target.as_ref().map(|u| sim.relay_at(u)), Some(id), "{r:?}");
    let now = sim.now;
    let r = sim.directory(1).redirect("beta", &ArtifactPath::new("b2.bin").unwrap(), now).unwrap();
    assert_eq!(r.target.as_ref().map(|u| sim.relay_at(u)), Some(id), "{r:?}");
    // Serving answers from the union of names.
    let m = &sim.relays[&id].machine;
    assert_eq!(m.lookup("alpha", &ArtifactPath::new("a1.bin").unwrap()), Some(ours[2]));
    assert_eq!(m.lookup("beta", &ArtifactPath::new("b1.bin").unwrap()), Some(ours[3]));
    assert_eq!(m.upstream_for("beta", &ArtifactPath::new("nope.bin").unwrap()), Some(1), "an unknown name goes back to the catalog's directory");
    assert_eq!(m.upstream_for("gamma", &ArtifactPath::new("x").unwrap()), None);
    // Each directory hears only of what it assigned: beta's digests are not reported to alpha.
    let told: BTreeSet<Digest> = m.reported_to(0).into_iter().collect();
    assert!(told.contains(&ours[0]) && !told.contains(&ours[1]), "{told:?}");
}

#[test]
fn a_digest_both_directories_assign_is_stored_and_counted_once() {
    let budget = 300 * KB;
    let (mut sim, ids, a, b) = two_directories(302, 1, budget, 1);
    let id = ids[0];
    let data = Sim::data(7, 100 * KB as usize);
    let shared = sim.publish_on(0, &a, "same.bin", &data);
    assert_eq!(sim.publish_on(1, &b, "also-same.bin", &data), shared);
    let other = sim.publish_on(1, &b, "other.bin", &Sim::data(8, 30 * KB as usize));
    sim.run_for(Duration::from_secs(20));
    let r = &sim.relays[&id];
    assert!(r.machine.is_synced());
    assert_eq!(r.fetches, 2, "the shared digest is downloaded once");
    assert_eq!(r.machine.used(), footprint(100 * KB) + footprint(30 * KB), "and counted once");
    assert!(holds(&sim, id, &shared) && holds(&sim, id, &other));
    // Both names serve the one copy.
    assert_eq!(r.machine.lookup("alpha", &ArtifactPath::new("same.bin").unwrap()), Some(shared));
    assert_eq!(r.machine.lookup("beta", &ArtifactPath::new("also-same.bin").unwrap()), Some(shared));
}

#[test]
fn a_blob_is_kept_while_any_directory_assigns_it_and_an_expunge_from_one_deletes_it_at_once() {
    let budget = 400 * KB;
    let (mut sim, ids, a, b) = two_directories(303, 1, budget, 1);
    let id = ids[0];
    let data = Sim::data(3, 50 * KB as usize);
    let shared = sim.publish_on(0, &a, "shared.bin", &data);
    sim.publish_on(1, &b, "shared.bin", &data);
    let only_a = sim.publish_on(0, &a, "only-a.bin", &Sim::data(4, 50 * KB as usize));
    let only_b = sim.publish_on(1, &b, "only-b.bin", &Sim::data(5, 50 * KB as usize));
    sim.run_for(Duration::from_secs(20));
    assert!([shared, only_a, only_b].iter().all(|d| holds(&sim, id, d)));

    // Alpha withdraws its name for the shared bytes: beta still assigns them, so they stay
    // (eviction under pressure is in `relay::tests`), also while alpha brings new work.
    sim.expunge(&a, "shared.bin");
    sim.run_for(Duration::from_secs(5));
    assert!(holds(&sim, id, &shared), "still assigned by beta");
    assert!(!sim.relays[&id].machine.wants(&only_b) || holds(&sim, id, &only_b));
    for i in 0..3 {
        sim.publish_on(0, &a, &format!("more{i}.bin"), &Sim::data(20 + i, 50 * KB as usize));
    }
    sim.run_for(Duration::from_secs(20));
    assert!(holds(&sim, id, &shared), "still assigned by beta after alpha's new work");
    assert!(on_disk(&sim, id) <= budget);

    // Beta bars the shared bytes: deleted at once, though alpha's copy of the name is gone too.
    let deletes_before = sim.relays[&id].store.len();
    sim.expunge_digest_on(1, shared);
    let until = sim.now + Duration::from_secs(10);
    while holds(&sim, id, &shared) {
        assert!(sim.now < until, "the expunged blob was not deleted");
        sim.step(until);
    }
    assert_eq!(sim.relays[&id].store.len(), deletes_before - 1);
    sim.run_for(Duration::from_secs(10));
    assert!(!holds(&sim, id, &shared), "nobody assigns it: not fetched again");
    // Alpha bars its own blob: deleted; beta's blob stays.
    sim.expunge_digest_on(0, only_a);
    sim.run_for(Duration::from_secs(10));
    assert!(!holds(&sim, id, &only_a), "expunged by alpha");
    assert!(holds(&sim, id, &only_b), "beta's blob is not touched");
}

#[test]
fn an_expunge_from_one_directory_deletes_bytes_another_still_assigns_and_they_come_back_for_it() {
    let (mut sim, ids, a, b) = two_directories(304, 1, 400 * KB, 1);
    let id = ids[0];
    let data = Sim::data(9, 60 * KB as usize);
    let shared = sim.publish_on(0, &a, "x.bin", &data);
    sim.publish_on(1, &b, "x.bin", &data);
    sim.run_for(Duration::from_secs(20));
    let fetches = sim.relays[&id].fetches;
    sim.expunge_digest_on(0, shared);
    let until = sim.now + Duration::from_secs(10);
    while holds(&sim, id, &shared) {
        assert!(sim.now < until, "alpha's expunge was not obeyed");
        sim.step(until);
    }
    // Beta's assignment stands: the bytes are fetched again for it, and alpha is not told.
    sim.run_for(Duration::from_secs(20));
    assert!(holds(&sim, id, &shared));
    assert_eq!(sim.relays[&id].fetches, fetches + 1);
    assert!(!sim.relays[&id].machine.reported_to(0).contains(&shared), "alpha barred it: it hears nothing of beta's copy");
}

#[test]
fn assignments_that_overflow_the_budget_are_not_held_nor_redirected_to() {
    // Three relays with small budgets, lossy network: whatever each directory assigns, no
    // relay goes over its budget and no directory redirects to a relay without the bytes.
    let budget = 200 * KB;
    let (mut sim, ids, a, b) = two_directories(305, 3, budget, 2);
    sim.faults.loss = 0.05;
    for i in 0..8u8 {
        sim.publish_on(0, &a, &format!("a{i}"), &Sim::data(i, 30 * KB as usize));
        sim.publish_on(1, &b, &format!("b{i}"), &Sim::data(100 + i, 30 * KB as usize));
    }
    sim.run_for(Duration::from_secs(60));
    for id in &ids {
        assert!(on_disk(&sim, *id) <= budget);
        assert!(sim.relays[id].machine.used() <= budget);
    }
    // Something of each catalog is held somewhere.
    for (upstream, catalog, tag) in [(0, "alpha", "a"), (1, "beta", "b")] {
        let held = (0..8).filter(|i| {
            let path = ArtifactPath::new(&format!("{tag}{i}")).unwrap();
            let digest = sim.directory(upstream).lookup(catalog, &path).unwrap().digest();
            !sim.holders_of(&digest).is_empty()
        });
        assert!(held.count() > 0, "{catalog}");
    }
}
