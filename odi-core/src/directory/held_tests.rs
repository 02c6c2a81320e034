//! Held reports as deltas, through the directory's public API: a delta is taken only from the
//! set the directory has and to the set the relay says it has; anything else is answered without
//! a base, and the relay's full set puts it right.

use super::*;
use crate::held::HeldSum;
use crate::message::{Capacity, HeldDelta, RelayUrl};

const TOKEN: &str = "6b2f0a7c3d9e41f58a2b7c6d0e1f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f";
pub(super) const WALL: UnixTime = UnixTime(1_800_000_000);
pub(super) const RELAY: NodeId = NodeId([0x11; 32]);
pub(super) const T0: Instant = Instant::ZERO;

/// A directory with one catalog of `n` one-chunk artifacts (`a0`, `a1`, …), one replica each.
pub(super) fn directory(n: u8) -> (Directory, Vec<Digest>) {
    directory_with(n, |_| {})
}

/// `directory`, with its configuration changed by `f` first.
pub(super) fn directory_with(n: u8, f: impl FnOnce(&mut DirectoryConfig)) -> (Directory, Vec<Digest>) {
    let mut config = DirectoryConfig::new(NodeId([0xd1; 32]));
    config.probation = Duration::ZERO;
    config.check_possession = false;
    f(&mut config);
    let mut dir = Directory::new(config, Seed(1));
    let catalog = CatalogName::new("c").unwrap();
    let mut records = vec![
        dir.plan_token(TokenRole::Enroll, TOKEN).unwrap(),
        Record::Catalog(CatalogConfig { name: catalog.clone(), replicas: 1, chunk_size: 1 << 20, created_at: WALL, mutable: false, origin: None }),
    ];
    let mut digests = Vec::new();
    for i in 0..n {
        let digest = Digest::of(&[i]);
        digests.push(digest);
        let artifact = Artifact {
            catalog: catalog.clone(),
            path: ArtifactPath::new(&format!("a{i}")).unwrap(),
            media_type: "application/octet-stream".into(),
            tags: Vec::new(),
            published_at: WALL,
            manifest: ChunkManifest::new(1, 1 << 20, digest, vec![digest]).unwrap().into(),
        };
        records.push(Record::Log { catalog: catalog.clone(), entry: LogEntry { seq: u64::from(i) + 1, at: WALL, op: LogOp::Put(artifact) } });
    }
    for record in &records {
        assert!(dir.apply(record, T0));
    }
    (dir, digests)
}

/// Carries out effects: self-tests pass, writes are durable.
pub(super) fn drain(dir: &mut Directory, now: Instant) {
    loop {
        let mut idle = true;
        while let Some(effect) = dir.poll_effect() {
            idle = false;
            match effect {
                Effect::SelfTest { relay, attempt, .. } => dir.handle_self_test(relay, attempt, Ok(relay), now),
                Effect::Persist { id, .. } => dir.handle_storage(id, Ok(()), now),
                _ => {}
            }
        }
        while dir.poll_event().is_some() {
            idle = false;
        }
        if idle {
            return;
        }
    }
}

pub(super) fn enroll(dir: &mut Directory, now: Instant) {
    let req = EnrollRequest {
        token: TOKEN.into(),
        public_url: RelayUrl::new("http://relay.example:8080").unwrap(),
        capacity: Capacity { disk_budget: 1 << 30, bandwidth: 0 },
        catalogs: Vec::new(),
        tags: Vec::new(),
    };
    let reply = dir.handle_message(RELAY, Message::Enroll(req), now, WALL);
    drain(dir, now);
    if let Reply::AfterStorage(id) = reply {
        assert!(matches!(dir.take_outcome(id), Some(Outcome::Reply(Message::Enrolled(_)))));
    }
    // The rebalance the new relay asks for.
    let later = now + dir.config().rebalance_delay;
    while dir.poll_timeout().is_some_and(|t| t <= later) {
        dir.handle_timeout(later);
        drain(dir, later);
    }
}

pub(super) fn beat(dir: &mut Directory, generation: u64, held: Vec<Digest>, delta: Option<HeldDelta>, now: Instant) -> Result<HeartbeatAck, Refusal> {
    let reply = dir.handle_message(RELAY, Message::Heartbeat(Heartbeat { generation, held, used: 0, active: 0, delta }), now, WALL);
    drain(dir, now);
    match reply {
        Reply::Now(Message::HeartbeatAck(ack)) => Ok(ack),
        Reply::Now(Message::Refused(refusal)) => Err(refusal),
        other => panic!("{other:?}"),
    }
}

pub(super) fn name(set: &[Digest]) -> Digest {
    HeldSum::of(set).digest()
}

pub(super) fn delta(base: &[Digest], added: &[Digest], removed: &[Digest], now: &[Digest]) -> Option<HeldDelta> {
    Some(HeldDelta { base: name(base), added: added.to_vec(), removed: removed.to_vec(), digest: name(now) })
}

/// Whether a client asking for artifact `i` by digest may be sent to the relay.
pub(super) fn holds(dir: &Directory, d: &[Digest], i: usize, now: Instant) -> bool {
    dir.redirect_blob(&d[i], now).is_ok_and(|r| r.target.is_some() || !r.alternates.is_empty())
}

#[test]
fn a_delta_from_the_set_taken_is_taken() {
    let (mut dir, d) = directory(3);
    enroll(&mut dir, T0);
    let t = T0 + Duration::from_secs(1);
    let ack = beat(&mut dir, 0, vec![d[0], d[1]], None, t).unwrap();
    assert_eq!(ack.held, Some(name(&[d[0], d[1]])), "a full set is taken and named");
    let generation = ack.generation;
    assert!(holds(&dir, &d, 0, t) && holds(&dir, &d, 1, t) && !holds(&dir, &d, 2, t));

    let ack = beat(&mut dir, generation, Vec::new(), delta(&[d[0], d[1]], &[d[2]], &[d[0]], &[d[1], d[2]]), t).unwrap();
    assert_eq!(ack.held, Some(name(&[d[1], d[2]])));
    assert!(ack.state.is_some(), "what it holds moved: the state comes again");
    assert!(!holds(&dir, &d, 0, t) && holds(&dir, &d, 1, t) && holds(&dir, &d, 2, t));
    assert_eq!(dir.relays(t)[0].held, 2);

    // Nothing new: an empty delta, no state.
    let ack = beat(&mut dir, generation, Vec::new(), delta(&[d[1], d[2]], &[], &[], &[d[1], d[2]]), t).unwrap();
    assert_eq!((ack.held, ack.state), (Some(name(&[d[1], d[2]])), None));
    assert!(holds(&dir, &d, 1, t) && holds(&dir, &d, 2, t));
}

#[test]
fn a_delta_from_another_set_or_to_another_set_is_answered_without_a_base() {
    let (mut dir, d) = directory(3);
    enroll(&mut dir, T0);
    let t = T0 + Duration::from_secs(1);
    let generation = beat(&mut dir, 0, vec![d[0], d[1]], None, t).unwrap().generation;
    for (why, bad) in [
        ("another base", delta(&[d[0]], &[d[2]], &[], &[d[0], d[2]])),
        ("another result", delta(&[d[0], d[1]], &[d[2]], &[], &[d[0], d[1]])),
        ("adds what it had", delta(&[d[0], d[1]], &[d[1]], &[], &[d[0], d[1]])),
        ("adds one twice", delta(&[d[0], d[1]], &[d[2], d[2]], &[], &[d[0], d[1], d[2]])),
        ("adds and removes one", delta(&[d[0], d[1]], &[d[2]], &[d[2]], &[d[0], d[1]])),
    ] {
        let ack = beat(&mut dir, generation, Vec::new(), bad, t).unwrap();
        assert_eq!(ack.held, None, "{why}: not taken");
        assert!(ack.state.is_none(), "{why}: the full set comes next, then the state");
        assert!(holds(&dir, &d, 0, t) && holds(&dir, &d, 1, t) && !holds(&dir, &d, 2, t), "{why}: nothing changed");
    }
    let refused = beat(&mut dir, generation, vec![d[0]], delta(&[d[0], d[1]], &[], &[], &[d[0], d[1]]), t).unwrap_err();
    assert_eq!(refused.code, RefusalCode::BadRequest, "{}", refused.reason);
    // The full set that follows is taken, and a delta from it again.
    let ack = beat(&mut dir, generation, vec![d[0], d[1], d[2]], None, t).unwrap();
    assert_eq!(ack.held, Some(name(&[d[0], d[1], d[2]])));
    assert!(holds(&dir, &d, 2, t));
}

#[test]
fn a_restarted_directory_takes_a_delta_only_from_the_set_it_has() {
    let (mut dir, d) = directory(2);
    enroll(&mut dir, T0);
    let t = T0 + Duration::from_secs(1);
    beat(&mut dir, 0, vec![d[0]], None, t).unwrap();
    // Another process (or this one restarted) knows the relay but not its set.
    let (mut other, _) = directory(2);
    enroll(&mut other, T0);
    let ack = beat(&mut other, 0, Vec::new(), delta(&[d[0]], &[d[1]], &[], &[d[0], d[1]]), t).unwrap();
    assert_eq!(ack.held, None);
    assert!(!holds(&other, &d, 0, t) && !holds(&other, &d, 1, t));
    // The base names a set, not a moment: from the empty set, which it has, a delta is taken.
    let ack = beat(&mut other, 0, Vec::new(), delta(&[], &[d[0], d[1]], &[], &[d[0], d[1]]), t).unwrap();
    assert_eq!(ack.held, Some(name(&[d[0], d[1]])));
    assert!(holds(&other, &d, 0, t) && holds(&other, &d, 1, t));
}

#[test]
fn a_relay_back_after_its_lease_is_asked_for_its_full_set() {
    let (mut dir, d) = directory(1);
    enroll(&mut dir, T0);
    let t = T0 + Duration::from_secs(1);
    beat(&mut dir, 0, vec![d[0]], None, t).unwrap();
    let late = t + dir.config().lease + Duration::from_secs(1);
    dir.handle_timeout(late);
    drain(&mut dir, late);
    let ack = beat(&mut dir, 0, Vec::new(), delta(&[d[0]], &[], &[], &[d[0]]), late).unwrap();
    assert_eq!(ack.held, None, "what it held was forgotten with its lease");
    assert_eq!(beat(&mut dir, 0, vec![d[0]], None, late).unwrap().held, Some(name(&[d[0]])));
}

#[test]
fn digests_the_directory_does_not_know_count_in_the_sum_only() {
    let (mut dir, d) = directory(1);
    enroll(&mut dir, T0);
    let t = T0 + Duration::from_secs(1);
    let stranger = Digest::of(b"not published");
    let ack = beat(&mut dir, 0, vec![d[0], stranger], None, t).unwrap();
    assert_eq!(ack.held, Some(name(&[d[0], stranger])));
    assert_eq!(dir.relays(t)[0].held, 1, "only what the catalogs know is held");
    let ack = beat(&mut dir, ack.generation, Vec::new(), delta(&[d[0], stranger], &[], &[stranger], &[d[0]]), t).unwrap();
    assert_eq!(ack.held, Some(name(&[d[0]])));
    assert!(holds(&dir, &d, 0, t));
}

#[test]
fn an_expunge_is_told_until_a_delta_confirms_it() {
    let (mut dir, d) = directory(2);
    enroll(&mut dir, T0);
    let t = T0 + Duration::from_secs(1);
    let generation = beat(&mut dir, 0, vec![d[0], d[1]], None, t).unwrap().generation;
    let id = dir.commit_all(dir.plan_expunge_digest(d[0], WALL).unwrap()).unwrap();
    drain(&mut dir, t);
    assert!(matches!(dir.take_outcome(id), Some(Outcome::Applied)));
    assert!(!holds(&dir, &d, 0, t));
    for _ in 0..2 {
        // Not confirmed while its deltas do not remove it.
        let ack = beat(&mut dir, generation, Vec::new(), delta(&[d[0], d[1]], &[], &[], &[d[0], d[1]]), t).unwrap();
        assert_eq!(ack.expunged, vec![d[0]]);
        assert_eq!(dir.expunges_pending().len(), 1);
    }
    let ack = beat(&mut dir, generation, Vec::new(), delta(&[d[0], d[1]], &[], &[d[0]], &[d[1]]), t).unwrap();
    assert_eq!((ack.expunged, ack.held), (Vec::new(), Some(name(&[d[1]]))));
    assert!(dir.expunges_pending().is_empty(), "confirmed");
    // A barred digest reported again (fetched from elsewhere) is told again.
    let ack = beat(&mut dir, generation, Vec::new(), delta(&[d[1]], &[d[0]], &[], &[d[0], d[1]]), t).unwrap();
    assert_eq!(ack.expunged, vec![d[0]]);
}

#[test]
fn a_blob_in_the_slot_of_a_barred_one_has_none_of_its_holders() {
    let (mut dir, d) = directory(2);
    enroll(&mut dir, T0);
    let t = T0 + Duration::from_secs(1);
    beat(&mut dir, 0, vec![d[0], d[1]], None, t).unwrap();
    let slot = dir.catalogs.blob(&d[0]).unwrap().slot;
    let id = dir.commit_all(dir.plan_expunge_digest(d[0], WALL).unwrap()).unwrap();
    drain(&mut dir, t);
    assert!(matches!(dir.take_outcome(id), Some(Outcome::Applied)));
    // A new blob takes the slot d[0] left; the relay that held d[0] does not hold it.
    let fresh = Digest::of(b"fresh");
    let catalog = CatalogName::new("c").unwrap();
    let artifact = Artifact {
        catalog: catalog.clone(),
        path: ArtifactPath::new("fresh").unwrap(),
        media_type: "application/octet-stream".into(),
        tags: Vec::new(),
        published_at: WALL,
        manifest: ChunkManifest::new(1, 1 << 20, fresh, vec![fresh]).unwrap().into(),
    };
    let seq = dir.catalogs.seq(&catalog).unwrap() + 1;
    assert!(dir.apply(&Record::Log { catalog, entry: LogEntry { seq, at: WALL, op: LogOp::Put(artifact) } }, t));
    assert_eq!(dir.catalogs.blob(&fresh).unwrap().slot, slot, "the slot is used again");
    assert!(!holds(&dir, &[fresh], 0, t), "nobody reported it");
    assert!(holds(&dir, &d, 1, t), "the other blob keeps its holder");
    beat(&mut dir, 0, vec![d[1], fresh], None, t).unwrap();
    assert!(holds(&dir, &[fresh], 0, t), "reported now");
}
