//! Property tests: the invariants hold over random sequences of events. Failures shrink, and
//! proptest records them under `odi-core/proptest-regressions/` (committed, replayed first).

use std::time::Duration;

use proptest::collection::vec;
use proptest::prelude::*;

use super::*;
use crate::directory::{AdminError, LookupError};

#[derive(Clone, Debug)]
enum Op {
    Publish {
        file: u8,
        version: u8,
        len: u16,
    },
    /// By path (`digest: false`) or the path's bytes everywhere (`digest: true`).
    Expunge {
        file: u8,
        digest: bool,
    },
    Kill {
        relay: u8,
    },
    Revive {
        relay: u8,
    },
    Corrupt {
        relay: u8,
        percent: u8,
    },
    Requests {
        file: u8,
        count: u8,
    },
    Loss {
        percent: u8,
    },
    Wait {
        secs: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..6u8, 0..3u8, 0..20_000u16).prop_map(|(file, version, len)| Op::Publish { file, version, len }),
        1 => (0..6u8, any::<bool>()).prop_map(|(file, digest)| Op::Expunge { file, digest }),
        1 => (1..=4u8).prop_map(|relay| Op::Kill { relay }),
        1 => (1..=4u8).prop_map(|relay| Op::Revive { relay }),
        1 => (1..=4u8, 0..=100u8).prop_map(|(relay, percent)| Op::Corrupt { relay, percent }),
        2 => (0..6u8, 1..50u8).prop_map(|(file, count)| Op::Requests { file, count }),
        1 => (0..=30u8).prop_map(|percent| Op::Loss { percent }),
        2 => (1..20u8).prop_map(|secs| Op::Wait { secs }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Budget never exceeded; never a redirect to an unhealthy, suspended, quarantined or
    /// non-holding relay (both checked after every simulation step by `check_invariants`);
    /// an expunged artifact is never served again, and relays delete it once they are heard.
    #[test]
    fn invariants_hold_over_random_event_sequences(seed in any::<u64>(), ops in vec(op(), 1..40)) {
        let mut sim = Sim::with_config(seed, |c| {
            c.audit_interval = Duration::from_secs(2);
            c.probe_interval = Duration::from_secs(3);
            c.hot.half_life = Duration::from_secs(20);
            c.hot.tick = Duration::from_secs(2);
        });
        // Mutable, so that publishing a path again with other bytes (a new version) is allowed.
        let cat = sim.create_catalog_with("c", 2, true);
        let budgets = [40_000u64, 60_000, 120_000, 400_000];
        let ids: Vec<NodeId> = (1..=4u8).map(|n| sim.add_relay(n, budgets[usize::from(n - 1)])).collect();
        // Paths that must answer 410, and digests barred (relays must delete them).
        let mut expunged: Vec<(String, Digest)> = Vec::new();
        let mut barred: Vec<Digest> = Vec::new();
        for op in ops {
            match op {
                Op::Publish { file, version, len } => {
                    let data = Sim::data(file.wrapping_mul(7).wrapping_add(version), usize::from(len));
                    let manifest = ChunkManifest::of(&data, MIN_CHUNK_SIZE).unwrap();
                    let path = ArtifactPath::new(&format!("f{file}")).unwrap();
                    match sim.dir.plan_publish(&cat, path, manifest, "application/octet-stream".into(), sim.wall()) {
                        Ok(_) => {
                            sim.publish(&cat, &format!("f{file}"), &data);
                            expunged.retain(|(p, _)| p != &format!("f{file}"));
                        }
                        Err(AdminError::ExpungedDigest(_)) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                Op::Expunge { file, digest: by_digest } => {
                    let path = format!("f{file}");
                    if let Ok(a) = sim.dir.lookup("c", &ArtifactPath::new(&path).unwrap()) {
                        let digest = a.digest();
                        if by_digest {
                            // Every path holding those bytes goes with them.
                            for n in 0..6u8 {
                                let other = format!("f{n}");
                                if sim.dir.lookup("c", &ArtifactPath::new(&other).unwrap()).is_ok_and(|a| a.digest() == digest) {
                                    expunged.push((other, digest));
                                }
                            }
                            sim.expunge_digest(digest);
                            barred.push(digest);
                        } else {
                            sim.expunge(&cat, &path);
                            expunged.push((path, digest));
                        }
                    }
                }
                Op::Kill { relay } => {
                    if sim.relays[&ids[usize::from(relay - 1)]].up {
                        sim.kill(ids[usize::from(relay - 1)]);
                    }
                }
                Op::Revive { relay } => {
                    if !sim.relays[&ids[usize::from(relay - 1)]].up {
                        sim.revive(ids[usize::from(relay - 1)]);
                    }
                }
                Op::Corrupt { relay, percent } => sim.relays.get_mut(&ids[usize::from(relay - 1)]).unwrap().corrupt = f64::from(percent) / 100.0,
                Op::Requests { file, count } => {
                    for _ in 0..count {
                        match sim.redirect("c", &format!("f{file}")) {
                            Ok(_) | Err(LookupError::NotFound { .. } | LookupError::Expunged(_)) => {}
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
                Op::Loss { percent } => sim.faults.loss = f64::from(percent) / 100.0,
                Op::Wait { secs } => sim.run_for(Duration::from_secs(u64::from(secs))),
            }
            sim.run_for(Duration::from_millis(500));
            for (path, _) in &expunged {
                prop_assert!(matches!(sim.redirect("c", path), Err(LookupError::Expunged(_))), "{path} expunged but served");
            }
        }
        // Heal everything; every relay that comes back deletes what was expunged.
        sim.faults.loss = 0.0;
        for id in &ids {
            if !sim.relays[id].up {
                sim.revive(*id);
            }
        }
        sim.run_for(Duration::from_secs(20));
        for digest in &barred {
            prop_assert!(sim.holders_of(digest).is_empty(), "{digest:?} still on a relay after expunge");
            prop_assert!(sim.dir.expunges_pending().iter().all(|e| e.digest != *digest), "{digest:?}: deletion not confirmed");
        }
        for (path, digest) in &expunged {
            // A withdrawn name's bytes are assigned only while another name holds them.
            let named = (0..6u8).any(|n| sim.dir.lookup("c", &ArtifactPath::new(&format!("f{n}")).unwrap()).is_ok_and(|a| a.digest() == *digest));
            prop_assert!(named || sim.dir.assigned_to(digest).is_empty(), "{path} ({digest:?}) assigned with no name");
        }
    }
}
