//! Heartbeats shared between two processes of one directory (`share_heartbeats`): what one
//! takes, the other books as its own, checked against its own copy of the relay's set.

use super::held_tests::{T0, beat, delta, directory_with, drain, enroll, holds, name};
use super::*;

/// Two processes of one directory, each knowing the relay (its record came through the store).
fn two() -> (Directory, Directory, Vec<Digest>) {
    let (mut a, d) = directory_with(3, |c| c.share_heartbeats = true);
    let (mut b, _) = directory_with(3, |c| c.share_heartbeats = true);
    enroll(&mut a, T0);
    enroll(&mut b, T0);
    (a, b, d)
}

/// What `dir` writes for the other processes by `now`: the `Heard` records, each write durable.
fn heard(dir: &mut Directory, now: Instant) -> Vec<Record> {
    dir.handle_timeout(now);
    let mut out = Vec::new();
    while let Some(effect) = dir.poll_effect() {
        match effect {
            Effect::Persist { id, records } => {
                out.extend(records.into_iter().filter(|r| matches!(r, Record::Heard { .. })));
                dir.handle_storage(id, Ok(()), now);
            }
            Effect::SelfTest { relay, attempt, .. } => dir.handle_self_test(relay, attempt, Ok(relay), now),
            _ => {}
        }
    }
    drain(dir, now);
    out
}

/// `to` applies what `from` wrote by `now`, and carries out what that sets off (its own
/// self-test of the relay).
fn relay_heard(from: &mut Directory, to: &mut Directory, now: Instant) -> usize {
    let records = heard(from, now);
    for r in &records {
        assert!(to.apply(r, now));
    }
    drain(to, now);
    records.len()
}

#[test]
fn every_process_sends_clients_to_the_relay_whichever_it_talks_to() {
    let (mut a, mut b, d) = two();
    let t = T0 + Duration::from_secs(1);
    beat(&mut a, 0, vec![d[0], d[1]], None, t).unwrap();
    assert!(!holds(&b, &d, 0, t), "b has heard nothing yet");
    let t1 = t + shared::HEARD_EVERY;
    assert_eq!(relay_heard(&mut a, &mut b, t1), 1, "one batch");
    assert!(holds(&b, &d, 0, t1) && holds(&b, &d, 1, t1) && !holds(&b, &d, 2, t1), "b holds what a took");

    // The relay's next heartbeat reaches b, as a delta from the set a named: b has that set.
    let ack = beat(&mut b, 0, Vec::new(), delta(&[d[0], d[1]], &[d[2]], &[d[0]], &[d[1], d[2]]), t1).unwrap();
    assert_eq!(ack.held, Some(name(&[d[1], d[2]])), "taken by the process that did not name the base");
    let t2 = t1 + shared::HEARD_EVERY;
    relay_heard(&mut b, &mut a, t2);
    assert!(!holds(&a, &d, 0, t2) && holds(&a, &d, 1, t2) && holds(&a, &d, 2, t2), "a follows b's delta");

    // A whole set naming the same set again goes out as an empty change, and keeps both as they are.
    beat(&mut a, 0, vec![d[1], d[2]], None, t2).unwrap();
    let t3 = t2 + shared::HEARD_EVERY;
    let records = heard(&mut a, t3);
    let [Record::Heard { relays }] = &records[..] else { panic!("{records:?}") };
    let report = &relays[0].report;
    assert!(report.held.is_empty() && report.delta.as_ref().is_some_and(|x| x.added.is_empty() && x.removed.is_empty()), "{report:?}");
    assert!(b.apply(&records[0], t3));
    assert!(holds(&b, &d, 1, t3) && holds(&b, &d, 2, t3));
}

#[test]
fn a_report_that_does_not_fit_leaves_a_process_not_knowing_until_the_whole_set() {
    let (mut a, mut b, d) = two();
    let t = T0 + Duration::from_secs(1);
    beat(&mut a, 0, vec![d[0]], None, t).unwrap();
    beat(&mut b, 0, vec![d[0], d[1]], None, t).unwrap();
    // Both batches are lost on the way (b never learns a's {d0}).
    let t1 = t + shared::HEARD_EVERY;
    heard(&mut a, t1);
    heard(&mut b, t1);
    // a's next batch says {d0} → {d0} (an empty change from {d0}); b has {d0, d1}: it cannot tell.
    beat(&mut a, 0, vec![d[0]], None, t1).unwrap();
    let t2 = t1 + shared::HEARD_EVERY;
    relay_heard(&mut a, &mut b, t2);
    assert!(!holds(&b, &d, 0, t2) && !holds(&b, &d, 1, t2), "b sends no client to it on a set it does not know");
    // The relay's next delta to b names a set b no longer has: not taken; the whole set is.
    assert_eq!(beat(&mut b, 0, Vec::new(), delta(&[d[0]], &[d[2]], &[], &[d[0], d[2]]), t2).unwrap().held, None);
    assert_eq!(beat(&mut b, 0, vec![d[0], d[2]], None, t2).unwrap().held, Some(name(&[d[0], d[2]])));
    assert!(holds(&b, &d, 0, t2) && holds(&b, &d, 2, t2) && !holds(&b, &d, 1, t2));
}

#[test]
fn a_relay_that_talks_only_to_another_process_stays_alive_here() {
    let (mut a, mut b, d) = two();
    let lease = a.config().lease;
    let mut t = T0 + Duration::from_secs(1);
    beat(&mut a, 0, vec![d[0]], None, t).unwrap();
    let generation = beat(&mut a, 0, Vec::new(), delta(&[d[0]], &[], &[], &[d[0]]), t).unwrap().generation;
    // Three leases of heartbeats to a alone, each batch applied by b.
    let end = t + lease * 3;
    while t < end {
        t = t + Duration::from_secs(1);
        beat(&mut a, generation, Vec::new(), delta(&[d[0]], &[], &[], &[d[0]]), t).unwrap();
        relay_heard(&mut a, &mut b, t + shared::HEARD_EVERY);
        b.handle_timeout(t + shared::HEARD_EVERY);
        drain(&mut b, t + shared::HEARD_EVERY);
    }
    let now = t + shared::HEARD_EVERY;
    assert_ne!(b.relays(now)[0].status, RelayStatus::Unhealthy, "alive in b: {:?}", b.relays(now)[0]);
    assert!(holds(&b, &d, 0, now));
    // Once a stops hearing it, so does b, a lease later.
    let late = now + lease + Duration::from_secs(1);
    b.handle_timeout(late);
    drain(&mut b, late);
    assert_eq!(b.relays(late)[0].status, RelayStatus::Unhealthy);
    assert!(!holds(&b, &d, 0, late));
}

#[test]
fn by_name_only_once_another_process_saw_it_know_the_names() {
    let (mut a, mut b, d) = two();
    let t = T0 + Duration::from_secs(1);
    let generation = beat(&mut a, 0, vec![d[0]], None, t).unwrap().generation;
    let t1 = t + shared::HEARD_EVERY;
    relay_heard(&mut a, &mut b, t1);
    let path = ArtifactPath::new("a0").unwrap();
    let by_name = |dir: &Directory, now| dir.redirect("c", &path, now).is_ok_and(|r| r.target.is_some() || !r.alternates.is_empty());
    assert!(holds(&b, &d, 0, t1), "by digest: it holds the bytes");
    assert!(!by_name(&b, t1), "by name: it has applied no state with the name yet");
    // Its next heartbeat to a says it applied a's state: it knows a's names, and b learns so.
    beat(&mut a, generation, Vec::new(), delta(&[d[0]], &[], &[], &[d[0]]), t1).unwrap();
    assert!(by_name(&a, t1));
    let t2 = t1 + shared::HEARD_EVERY;
    relay_heard(&mut a, &mut b, t2);
    assert!(by_name(&b, t2), "b sends clients to it by name");
}
