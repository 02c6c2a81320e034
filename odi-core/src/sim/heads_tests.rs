//! Adversarial directories: one signing with another key (a forger holding a copy of the data),
//! one restored from an old backup (or replaying old heads), one withholding renewals. In every
//! case no relay applies anything from it, checked against a reference: the names each relay
//! serves are at all times a subset of what the honest directory stated last, with the same
//! bytes, and after the heads expire, nothing.

use std::time::Duration;

use super::*;

const MB: u64 = 1 << 20;
const SEEDS: std::ops::RangeInclusive<u64> = 1..=8;

struct Net {
    sim: Sim,
    cat: CatalogName,
    relays: Vec<NodeId>,
    /// Every path published, by the honest directory or the adversary.
    paths: Vec<String>,
}

fn network(seed: u64) -> Net {
    let mut sim = Sim::new(seed);
    sim.faults.loss = 0.02;
    let cat = sim.create_catalog("releases", 2);
    let relays = (1..=4).map(|n| sim.add_relay(n, 100 * MB)).collect();
    Net { sim, cat, relays, paths: Vec::new() }
}

impl Net {
    fn publish(&mut self, path: &str, tag: u8) -> Digest {
        self.paths.push(path.to_owned());
        self.sim.publish(&self.cat, path, &Sim::data(tag, 3000 + usize::from(tag)))
    }

    /// What relay `id` serves by name now, over every path ever published.
    fn served(&self, id: NodeId) -> BTreeMap<String, Digest> {
        let m = &self.sim.relays[&id].machine;
        self.paths.iter().filter_map(|p| m.lookup("releases", &ArtifactPath::new(p).unwrap()).map(|d| (p.clone(), d))).collect()
    }

    /// The honest directory's names now: the reference.
    fn reference(&self) -> BTreeMap<String, Digest> {
        self.sim.dir.artifacts(&self.cat).into_iter().flatten().map(|a| (a.path.to_string(), a.digest())).collect()
    }

    fn seqs(&self) -> Vec<u64> {
        self.relays.iter().map(|id| self.sim.relays[id].machine.trust(0).unwrap().heads[&self.cat].seq).collect()
    }

    /// Runs `duration` in steps of a second, checking after each that every relay serves only
    /// names of `reference` with their bytes, and never holds `never`.
    fn run_checked(&mut self, duration: Duration, reference: &BTreeMap<String, Digest>, never: &[Digest]) {
        let mut left = duration;
        while !left.is_zero() {
            let step = left.min(Duration::from_secs(1));
            self.sim.run_for(step);
            left -= step;
            for id in &self.relays {
                for (path, digest) in self.served(*id) {
                    assert_eq!(reference.get(&path), Some(&digest), "relay {id:?} serves {path} as {digest}, which the honest directory never stated");
                }
                for d in never {
                    assert!(!self.sim.relays[id].store.contains_key(d), "relay {id:?} fetched {d}, which only the adversary assigns");
                }
            }
        }
    }

    fn refusals(&self, needle: &str) -> usize {
        self.sim
            .relay_events
            .iter()
            .filter(|(_, e)| matches!(e, relay::Event::Distrusted { upstream: 0, reason } if reason.contains(needle)))
            .map(|(id, _)| *id)
            .collect::<BTreeSet<_>>()
            .len()
    }

    fn frozen(&self) -> usize {
        self.sim.relay_events.iter().filter(|(_, e)| matches!(e, relay::Event::Frozen { upstream: 0, .. })).map(|(id, _)| *id).collect::<BTreeSet<_>>().len()
    }

    fn serving_nothing(&self) -> bool {
        self.relays.iter().all(|id| self.served(*id).is_empty())
    }
}

#[test]
fn a_directory_signing_with_another_key_is_applied_by_no_relay() {
    for seed in SEEDS {
        let mut net = network(seed);
        net.publish("a.tar.gz", 1);
        net.sim.run_for(Duration::from_secs(6));
        let honest = net.reference();
        assert!(net.relays.iter().any(|id| !net.served(*id).is_empty()), "seed {seed}: relays serve before the attack");
        let pinned = key_id(&dir_key(0));
        // A forger with a copy of the data dir, but not the key, takes over the address.
        let records = net.sim.durable.len();
        net.sim.restore_directory(records, SigningKey::from_bytes(&[0x66; 32]));
        let evil = net.publish("evil.tar.gz", 9);
        net.run_checked(Duration::from_secs(10), &honest, &[evil]);
        assert_eq!(net.refusals("not by the pinned directory key"), net.relays.len(), "seed {seed}: every relay refused and said why");
        for id in &net.relays {
            assert_eq!(net.sim.relays[id].machine.pinned_key(0), Some(pinned), "seed {seed}: the pin holds");
        }
        net.run_checked(SIM_HEAD_TTL, &honest, &[evil]);
        assert!(net.serving_nothing(), "seed {seed}: with no renewal from the pinned key, the catalog froze");
        assert_eq!(net.frozen(), net.relays.len(), "seed {seed}");
    }
}

#[test]
fn a_directory_restored_from_an_old_backup_is_applied_by_no_relay() {
    for seed in SEEDS {
        let mut net = network(seed);
        net.publish("a.tar.gz", 1);
        net.sim.run_for(Duration::from_secs(6));
        let backup = net.sim.durable.len();
        net.publish("b.tar.gz", 2);
        net.sim.expunge(&net.cat.clone(), "a.tar.gz");
        net.sim.run_for(Duration::from_secs(6));
        let honest = net.reference();
        let before = net.seqs();
        assert!(before.iter().all(|s| *s == 3), "seed {seed}: every relay applied sequence 3: {before:?}");
        // The backup still names `a`, expunged since; and it publishes anew at a lower sequence.
        net.sim.restore_directory(backup, dir_key(0));
        let c = net.publish("c.tar.gz", 3);
        // (The relays may still hold `a`'s bytes, unassigned, until room is needed: they must
        // never serve them by name again, which the reference check sees.)
        net.run_checked(Duration::from_secs(10), &honest, &[c]);
        assert!(net.relays.iter().all(|id| !net.served(*id).contains_key("a.tar.gz")));
        assert_eq!(net.refusals("rolled back"), net.relays.len(), "seed {seed}: every relay refused and said why");
        assert_eq!(net.seqs(), before, "seed {seed}: no head went backwards");
        // A relay restarted meanwhile remembers the sequence it applied.
        net.sim.kill(net.relays[0]);
        net.sim.revive(net.relays[0]);
        net.run_checked(SIM_HEAD_TTL, &honest, &[c]);
        assert!(net.serving_nothing(), "seed {seed}: unrenewed, the catalog froze");
    }
}

#[test]
fn replayed_old_heads_are_refused() {
    for seed in SEEDS {
        let mut net = network(seed);
        net.publish("a.tar.gz", 1);
        net.sim.run_for(Duration::from_secs(6));
        let old: Vec<SignedHead> = net.sim.heads_sent.iter().filter(|h| h.head.seq == 1).take(1).cloned().collect();
        assert_eq!(old.len(), 1);
        net.publish("b.tar.gz", 2);
        net.sim.run_for(Duration::from_secs(6));
        let honest = net.reference();
        let before: Vec<BTreeMap<String, Digest>> = net.relays.iter().map(|id| net.served(*id)).collect();
        assert!(before.iter().any(|s| !s.is_empty()));
        net.sim.answers = Answers::ReplayHeads(old);
        net.run_checked(Duration::from_secs(10), &honest, &[]);
        assert_eq!(net.refusals("rolled back"), net.relays.len(), "seed {seed}");
        net.run_checked(SIM_HEAD_TTL, &honest, &[]);
        assert!(net.serving_nothing(), "seed {seed}");
        net.sim.answers = Answers::Honest;
        // Relays that lost their lease while refusing come back, are placed again and serve
        // again: within a bounded time (a rebalance delay and a sync), checked throughout.
        let serves_again = |net: &Net| {
            let after: Vec<BTreeMap<String, Digest>> = net.relays.iter().map(|id| net.served(*id)).collect();
            before.iter().zip(&after).all(|(b, a)| b.iter().all(|(p, d)| a.get(p) == Some(d)))
        };
        for _ in 0..10 {
            net.run_checked(Duration::from_secs(3), &honest, &[]);
            if serves_again(&net) {
                break;
            }
        }
        let after: Vec<BTreeMap<String, Digest>> = net.relays.iter().map(|id| net.served(*id)).collect();
        for (b, a) in before.iter().zip(&after) {
            assert!(b.iter().all(|(p, d)| a.get(p) == Some(d)), "seed {seed}: renewed by the honest directory, served again: {b:?} then {a:?}");
        }
    }
}

#[test]
fn withheld_renewals_freeze_the_catalog_until_a_head_comes_again() {
    for seed in SEEDS {
        let mut net = network(seed);
        net.publish("a.tar.gz", 1);
        net.sim.run_for(Duration::from_secs(6));
        let honest = net.reference();
        let serving: Vec<NodeId> = net.relays.iter().copied().filter(|id| !net.served(*id).is_empty()).collect();
        assert!(!serving.is_empty());
        net.sim.answers = Answers::WithholdHeads;
        // The last head a relay got may be a quarter of its lifetime old (heads are signed anew
        // when a quarter has passed).
        let holds = SIM_HEAD_TTL * 3 / 4 - Duration::from_secs(2);
        net.run_checked(holds, &honest, &[]);
        assert!(serving.iter().all(|id| !net.served(*id).is_empty()), "seed {seed}: served while the head holds");
        net.run_checked(SIM_HEAD_TTL - holds + Duration::from_secs(2), &honest, &[]);
        assert!(net.serving_nothing(), "seed {seed}: frozen once it expired");
        net.sim.answers = Answers::Honest;
        net.run_checked(Duration::from_secs(6), &honest, &[]);
        assert!(serving.iter().all(|id| !net.served(*id).is_empty()), "seed {seed}: a renewal thaws it");
    }
}
