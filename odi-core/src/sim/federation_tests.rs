//! Federation simulations: random seeds over every topology with faults, and scripted cases.

use std::time::Duration;

use super::federation::{FedReport, FedScenario, FedSim, Topology, data};
use crate::federation::Op;
use crate::manifest::{ChunkManifest, MIN_CHUNK_SIZE};
use crate::path::{ArtifactPath, CatalogName};
use crate::time::Instant;

fn run_seed(seed: u64) -> FedReport {
    let mut sim = FedSim::new(seed, FedScenario::random(seed));
    let quiet = sim.run();
    sim.check_final();
    let mut report = sim.report.clone();
    if !quiet {
        report.violations.push(format!("seed {seed}: no quiescence after {} steps (livelock)", report.steps));
    }
    report
}

/// Sums over a range of seeds.
#[derive(Debug, Default)]
struct Totals {
    seeds: u64,
    steps: u64,
    messages: u64,
    entries: usize,
    divergences: usize,
    violations: usize,
    forged_refused: usize,
    blob_refusals: u64,
    seeds_with_conflicts: usize,
    /// Largest messages / ((entries + 10) · (links + 1)) of any seed.
    worst_message_ratio: f64,
}

fn run_seeds(seeds: std::ops::Range<u64>) -> Totals {
    let mut t = Totals::default();
    for seed in seeds {
        let r = run_seed(seed);
        assert!(r.violations.is_empty(), "seed {seed}: {:#?}", &r.violations[..r.violations.len().min(8)]);
        assert_eq!(r.divergences, 0, "seed {seed}");
        // Floods terminate: every message is owed to an entry, a retry or a restart.
        let bound = 10 * (r.entries as u64 + 10) * (r.links as u64 + 1);
        assert!(r.messages <= bound, "seed {seed}: {} messages for {} entries over {} links", r.messages, r.entries, r.links);
        t.seeds += 1;
        t.steps += r.steps;
        t.messages += r.messages;
        t.entries += r.entries;
        t.divergences += r.divergences;
        t.violations += r.violations.len();
        t.forged_refused += r.forged_refused;
        t.blob_refusals += r.blob_refusals;
        t.seeds_with_conflicts += usize::from(r.conflicts_seen > 0);
        t.worst_message_ratio = t.worst_message_ratio.max(r.messages as f64 / bound as f64 * 10.0);
    }
    eprintln!("{t:?}");
    t
}

// 1,000 seeds in every run, in four quarters the test threads share.
#[test]
fn federation_seeds_0_to_250_converge() {
    let t = run_seeds(0..250);
    assert!(t.forged_refused > 0 && t.blob_refusals > 0 && t.seeds_with_conflicts > 0, "the faults happen: {t:?}");
}

#[test]
fn federation_seeds_250_to_500_converge() {
    run_seeds(250..500);
}

#[test]
fn federation_seeds_500_to_750_converge() {
    run_seeds(500..750);
}

#[test]
fn federation_seeds_750_to_1000_converge() {
    run_seeds(750..1000);
}

fn quiet(nodes: usize, topology: Topology) -> FedScenario {
    FedScenario {
        nodes,
        topology,
        filtered: vec![],
        loss: 0.0,
        max_delay: Duration::from_millis(5),
        corrupt: 0.0,
        actions: 0,
        partitions: 0,
        crashes: 0,
        forgeries: 0,
        work: Duration::from_secs(1),
    }
}

#[test]
fn a_publish_on_a_reaches_c_through_b() {
    let mut sim = FedSim::new(1, quiet(3, Topology::Chain));
    assert!(sim.run());
    let put = sim.publish(0, "dist", "a.txt", b"hello", &["beta"]);
    assert!(sim.run());
    sim.check_final();
    assert!(sim.report.violations.is_empty(), "{:?}", sim.report.violations);
    let key = (CatalogName::new("dist").unwrap(), ArtifactPath::new("a.txt").unwrap());
    assert_eq!(sim.view(2).bindings[&key].entry, put.id());
    assert!(sim.holds(2, &put.entry.digest().unwrap()));
}

#[test]
fn concurrent_publishes_across_a_partition_converge_and_a_new_publish_resolves_them() {
    let mut sim = FedSim::new(2, quiet(3, Topology::FullMesh));
    assert!(sim.run());
    sim.partition(&[0], Duration::from_secs(10));
    let a = sim.publish(0, "idx", "latest.txt", b"one", &[]);
    let b = sim.publish(1, "idx", "latest.txt", b"two", &[]);
    sim.run_until(Instant::from_millis(5_000));
    let key = (CatalogName::new("idx").unwrap(), ArtifactPath::new("latest.txt").unwrap());
    assert_eq!(sim.view(0).bindings[&key].entry, a.id(), "each side serves its own during the partition");
    assert_eq!(sim.view(2).bindings[&key].entry, b.id());
    assert!(sim.run());
    let winner = sim.view(0).bindings[&key].clone();
    for n in 0..3 {
        assert_eq!(sim.view(n).bindings[&key], winner, "node {n}");
        assert_eq!(sim.view(n).conflicts[&key].len(), 1, "node {n} lists the loser");
    }
    let c = sim.publish(2, "idx", "latest.txt", b"three", &[]);
    assert!(sim.run());
    sim.check_final();
    assert!(sim.report.violations.is_empty(), "{:?}", sim.report.violations);
    for n in 0..3 {
        assert_eq!(sim.view(n).bindings[&key].entry, c.id());
        assert!(sim.view(n).conflicts.is_empty());
    }
}

#[test]
fn an_expunge_wins_everywhere_and_a_crashed_node_does_not_bring_the_bytes_back() {
    let mut sim = FedSim::new(3, quiet(4, Topology::Ring));
    assert!(sim.run());
    let put = sim.publish(0, "dist", "bad.bin", &data(1, 9000), &[]);
    assert!(sim.run());
    let digest = put.entry.digest().unwrap();
    sim.crash(2, Duration::from_secs(5));
    sim.record(1, "dist", Op::ExpungeDigest { digest });
    // Node 0 republishes the same bytes elsewhere before it hears of the expunge.
    sim.partition(&[0], Duration::from_secs(3));
    sim.publish(0, "dist", "again.bin", &data(1, 9000), &[]);
    assert!(sim.run());
    sim.check_final();
    assert!(sim.report.violations.is_empty(), "{:?}", sim.report.violations);
    for n in 0..4 {
        assert!(sim.view(n).barred.contains(&digest));
        assert!(sim.view(n).bindings.values().all(|b| b.digest() != digest), "node {n}");
        assert!(!sim.holds(n, &digest), "node {n} deleted the bytes");
    }
}

#[test]
fn a_tag_filtered_link_carries_only_prod_and_a_new_tag_brings_the_put_along() {
    let mut scenario = quiet(2, Topology::Chain);
    scenario.filtered = vec![(0, 1, vec![], vec!["prod"])];
    let mut sim = FedSim::new(4, scenario);
    assert!(sim.run());
    let beta = sim.publish(0, "dist", "beta.tar", b"beta bytes", &["beta"]);
    let prod = sim.publish(0, "dist", "prod.tar", b"prod bytes", &["prod"]);
    assert!(sim.run());
    let key = |p: &str| (CatalogName::new("dist").unwrap(), ArtifactPath::new(p).unwrap());
    assert!(sim.view(1).bindings.contains_key(&key("prod.tar")));
    assert!(!sim.view(1).bindings.contains_key(&key("beta.tar")), "beta stays on staging");
    assert!(sim.view(1).catalogs.contains_key(&CatalogName::new("idx").unwrap()), "catalogs cross whatever the tag filter");
    sim.record(
        0,
        "dist",
        Op::Tag { path: ArtifactPath::new("beta.tar").unwrap(), digest: beta.entry.digest().unwrap(), add: vec!["prod".into()], remove: vec![] },
    );
    assert!(sim.run());
    sim.check_final();
    assert!(sim.report.violations.is_empty(), "{:?}", sim.report.violations);
    assert_eq!(sim.view(1).bindings[&key("beta.tar")].entry, beta.id(), "the tag change carried its Put");
    assert!(sim.view(1).bindings[&key("beta.tar")].tags.contains("prod"));
    assert_eq!(sim.view(1).bindings[&key("prod.tar")].entry, prod.id());
}

#[test]
fn a_pending_fetch_survives_a_crash() {
    let mut scenario = quiet(2, Topology::Chain);
    scenario.corrupt = 0.6; // most answers are wrong bytes, refused
    let mut sim = FedSim::new(5, scenario);
    assert!(sim.run());
    let put = sim.publish(0, "dist", "big.bin", &data(7, 20_000), &[]);
    sim.run_until(Instant::from_millis(sim.now.as_millis() + 30));
    sim.crash(1, Duration::from_secs(2));
    assert!(sim.run());
    sim.check_final();
    assert!(sim.report.violations.is_empty(), "{:?}", sim.report.violations);
    assert!(sim.holds(1, &put.entry.digest().unwrap()));
    let manifest = ChunkManifest::of(&data(7, 20_000), MIN_CHUNK_SIZE).unwrap();
    assert_eq!(sim.view(1).bindings.values().next().unwrap().manifest, manifest);
}

#[test]
fn forged_batches_are_refused_by_every_node() {
    let mut scenario = quiet(4, Topology::FullMesh);
    scenario.actions = 12;
    scenario.forgeries = 6;
    scenario.work = Duration::from_secs(10);
    let mut sim = FedSim::new(6, scenario);
    assert!(sim.run());
    sim.check_final();
    assert!(sim.report.violations.is_empty(), "{:?}", sim.report.violations);
    assert!(sim.report.forged_refused >= 1, "{:?}", sim.report);
}
