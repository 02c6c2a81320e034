//! Who may enroll: keys are free, hosts are not. New keys are rate-limited, one relay per URL,
//! reputation (quarantine) follows the host, relays gone for long are forgotten, and a relay
//! that answers audits with anything but the bytes is quarantined.

use std::time::Duration;

use super::*;
use crate::directory::RelayStatus;

const MB: u64 = 1 << 20;

fn view(sim: &Sim, id: NodeId) -> Option<directory::RelayView> {
    sim.dir.relays(sim.now).into_iter().find(|v| v.id == id)
}

/// Restarts relay `id` with another public URL (the same machine, a new config).
fn move_to(sim: &mut Sim, id: NodeId, url: &str) {
    let now = sim.now;
    let r = sim.relays.get_mut(&id).unwrap();
    r.config.public_url = RelayUrl::new(url).unwrap();
    r.machine = Relay::new(r.config.clone(), [], [], now);
}

fn quarantine(sim: &mut Sim, id: NodeId) {
    sim.relays.get_mut(&id).unwrap().corrupt = 1.0;
    sim.run_for(Duration::from_secs(5));
    assert_eq!(view(sim, id).unwrap().status, RelayStatus::Quarantined);
}

fn setup(seed: u64) -> (Sim, CatalogName) {
    let mut sim = Sim::with_config(seed, |c| c.audit_interval = Duration::from_secs(1));
    let cat = sim.create_catalog("c", 1);
    sim.publish(&cat, "f", &Sim::data(1, 2 * MIN_CHUNK_SIZE as usize));
    (sim, cat)
}

#[test]
fn a_new_key_at_the_url_of_a_gone_relay_replaces_it_and_keeps_its_quarantine() {
    let (mut sim, _) = setup(101);
    let old = sim.add_relay(1, 100 * MB);
    sim.run_for(Duration::from_secs(10));
    quarantine(&mut sim, old);
    sim.kill(old);
    sim.run_for(Duration::from_secs(10)); // past the lease: gone
    // The same operator, a fresh node.key, the same URL.
    let new = sim.add_relay(2, 100 * MB);
    move_to(&mut sim, new, "http://relay-1.sim");
    sim.run_for(Duration::from_secs(10));
    assert!(view(&sim, old).is_none(), "the old key is replaced");
    let v = view(&sim, new).expect("enrolled");
    assert_eq!(v.status, RelayStatus::Quarantined, "a new key does not shed a quarantine: {v:?}");
    assert!(sim.durable.contains(&Record::RelayForgotten { id: old }));
    sim.restart_directory();
    assert!(view(&sim, old).is_none(), "forgotten for good");
    assert_eq!(view(&sim, new).unwrap().status, RelayStatus::Quarantined);
}

#[test]
fn a_new_key_at_the_url_of_a_live_relay_is_refused() {
    let (mut sim, _) = setup(102);
    let first = sim.add_relay(1, 100 * MB);
    sim.run_for(Duration::from_secs(10));
    let second = sim.add_relay(2, 100 * MB);
    move_to(&mut sim, second, "http://relay-1.sim");
    sim.run_for(Duration::from_secs(10));
    assert!(view(&sim, second).is_none());
    assert!(view(&sim, first).is_some_and(|v| v.status == RelayStatus::Ready));
    let refused =
        sim.relay_events.iter().any(|(r, e)| *r == second && matches!(e, relay::Event::Refused { reason, .. } if reason.contains("one relay per public URL")));
    assert!(refused, "told why");
}

#[test]
fn a_new_key_at_the_host_of_a_quarantined_relay_starts_out_quarantined() {
    let (mut sim, _) = setup(103);
    let liar = sim.add_relay(1, 100 * MB);
    sim.run_for(Duration::from_secs(10));
    quarantine(&mut sim, liar);
    // Same host, another port, a new key, while the liar is still up.
    let again = sim.add_relay(2, 100 * MB);
    move_to(&mut sim, again, "http://relay-1.sim:8443");
    sim.run_for(Duration::from_secs(10));
    let v = view(&sim, again).expect("enrolled");
    assert_eq!(v.status, RelayStatus::Quarantined, "{v:?}");
    assert!(v.quarantined.as_deref().is_some_and(|q| q.contains("same host")), "{v:?}");
    assert!(sim.redirect("c", "f").unwrap().target.is_none(), "no client goes to either");
}

#[test]
fn keys_never_seen_before_enroll_at_a_bounded_rate() {
    let mut sim = Sim::with_config(104, |c| c.new_relays_per_minute = 3);
    let ids: Vec<NodeId> = (1..=5).map(|n| sim.add_relay(n, 10 * MB)).collect();
    sim.run_for(Duration::from_secs(20));
    let enrolled = ids.iter().filter(|id| view(&sim, **id).is_some()).count();
    assert_eq!(enrolled, 3, "three a minute");
    sim.run_for(Duration::from_secs(60));
    assert!(ids.iter().all(|id| view(&sim, *id).is_some()), "the others after the minute, by retrying");
    // Known keys re-enrolling are not new: a restart of all of them is not slowed.
    sim.restart_directory();
    sim.run_for(Duration::from_secs(10));
    assert!(ids.iter().all(|id| view(&sim, *id).is_some_and(|v| v.status == RelayStatus::Ready)));
}

#[test]
fn relays_gone_for_long_are_forgotten_but_quarantined_ones_are_kept() {
    let mut sim = Sim::with_config(105, |c| {
        c.forget_after = Duration::from_secs(3600);
        c.audit_interval = Duration::from_secs(1);
    });
    sim.invariant_stride = 100;
    let cat = sim.create_catalog("c", 2);
    sim.publish(&cat, "f", &Sim::data(1, 2 * MIN_CHUNK_SIZE as usize));
    let ids: Vec<NodeId> = (1..=3).map(|n| sim.add_relay(n, 100 * MB)).collect();
    sim.run_for(Duration::from_secs(10));
    quarantine(&mut sim, ids[1]);
    sim.kill(ids[0]);
    sim.kill(ids[1]);
    sim.run_for(Duration::from_secs(1800));
    assert!(view(&sim, ids[0]).is_some(), "half an hour away is not long");
    sim.run_for(Duration::from_secs(1900));
    assert!(view(&sim, ids[0]).is_none(), "an hour away: forgotten");
    assert!(view(&sim, ids[1]).is_some_and(|v| v.status == RelayStatus::Quarantined), "a quarantine is kept");
    assert!(view(&sim, ids[2]).is_some(), "a relay that heartbeats stays");
    assert!(sim.durable.contains(&Record::RelayForgotten { id: ids[0] }));
    sim.restart_directory();
    assert!(view(&sim, ids[0]).is_none());
    // It may come back: it enrolls as new.
    sim.revive(ids[0]);
    sim.run_for(Duration::from_secs(10));
    assert!(view(&sim, ids[0]).is_some());
}

#[test]
fn a_relay_claiming_blobs_it_does_not_serve_is_quarantined() {
    let (mut sim, _) = setup(106);
    let ids: Vec<NodeId> = (1..=2).map(|n| sim.add_relay(n, 100 * MB)).collect();
    sim.run_for(Duration::from_secs(10));
    // Its disk no longer has the blob, but it goes on reporting it held (a fake relay): every
    // audit gets a 404 instead of bytes.
    let holder = *ids.iter().find(|id| !sim.relays[*id].store.is_empty()).expect("one holds it");
    let fake = sim.relays.get_mut(&holder).unwrap();
    fake.store.clear();
    fake.fake = true;
    sim.run_for(Duration::from_secs(30));
    let v = view(&sim, holder).unwrap();
    assert_eq!(v.status, RelayStatus::Quarantined, "{v:?}");
    assert!(v.quarantined.as_deref().is_some_and(|q| q.contains("HTTP 404")), "{v:?}");
}

#[test]
fn a_relay_that_never_had_the_bytes_gets_no_plain_client_and_is_caught() {
    let mut sim = Sim::with_config(107, |c| c.audit_interval = Duration::from_secs(1));
    let cat = sim.create_catalog("c", 2);
    sim.publish(&cat, "f", &Sim::data(1, 2 * MIN_CHUNK_SIZE as usize));
    sim.add_relay(1, 100 * MB);
    // Reports every download done without storing a byte, from its first day.
    let fake = sim.add_relay(2, 100 * MB);
    sim.relays.get_mut(&fake).unwrap().fake = true;
    for _ in 0..100 {
        sim.run_for(Duration::from_millis(100));
        for _ in 0..3 {
            let target = sim.redirect("c", "f").unwrap().target.map(|u| sim.relay_at(&u));
            assert_ne!(target, Some(fake), "a plain client sent to a relay whose possession was never shown");
        }
    }
    assert_eq!(view(&sim, fake).unwrap().status, RelayStatus::Quarantined, "its possession checks got 404s");
}

#[test]
fn declaring_a_huge_bandwidth_wins_no_more_clients_than_serving_fast_does() {
    let mut sim = Sim::with_config(108, |c| c.audit_interval = Duration::from_millis(500));
    let cat = sim.create_catalog("c", 2);
    sim.publish(&cat, "f", &Sim::data(1, 2 * MIN_CHUNK_SIZE as usize));
    let honest = sim.add_relay(1, 100 * MB);
    let boaster = sim.add_relay(2, 100 * MB);
    let now = sim.now;
    let r = sim.relays.get_mut(&boaster).unwrap();
    r.config.capacity.bandwidth = 10_000_000_000; // claims 10 GB/s, serves like the other
    r.machine = Relay::new(r.config.clone(), [], [], now);
    sim.run_for(Duration::from_secs(30));
    let urls: Vec<RelayUrl> = (0..1000).filter_map(|_| sim.redirect("c", "f").unwrap().target).collect();
    let targets: Vec<NodeId> = urls.iter().map(|u| sim.relay_at(u)).collect();
    let won = targets.iter().filter(|t| **t == boaster).count();
    assert!(targets.len() == 1000 && targets.contains(&honest));
    assert!(won < 700, "the boaster won {won} of 1000 redirects");
}

#[test]
fn a_revoked_operator_token_bars_its_relays_and_enrolls_no_more() {
    let (mut sim, _) = setup(109);
    const ALICE: &str = "alice-token-0123456789abcdef0123456789abcdef0123456789";
    let record = sim.dir.plan_enroll_token("alice", ALICE, sim.wall()).unwrap();
    sim.commit(record);
    assert!(matches!(sim.dir.plan_enroll_token("alice", "other", sim.wall()), Err(directory::AdminError::TokenExists(_))));
    let theirs = sim.add_relay(1, 100 * MB);
    let ours = sim.add_relay(2, 100 * MB);
    let now = sim.now;
    let r = sim.relays.get_mut(&theirs).unwrap();
    r.config.directories[0].enroll_token = ALICE.into();
    r.machine = Relay::new(r.config.clone(), [], [], now);
    sim.run_for(Duration::from_secs(10));
    assert_eq!(view(&sim, theirs).unwrap().token.as_deref(), Some("alice"));
    assert_eq!(view(&sim, ours).unwrap().token, None, "the directory's own token");
    assert_eq!(sim.dir.enroll_tokens().iter().map(|t| (t.name.as_str(), t.relays, t.revoked)).collect::<Vec<_>>(), [("alice", 1, false)]);

    let record = sim.dir.plan_revoke_token("alice").unwrap();
    sim.commit(record);
    sim.run_for(Duration::from_secs(5));
    let v = view(&sim, theirs).unwrap();
    assert_eq!(v.status, RelayStatus::Quarantined);
    assert!(v.quarantined.as_deref().is_some_and(|q| q.contains("`alice` was revoked")), "{v:?}");
    assert_eq!(view(&sim, ours).unwrap().status, RelayStatus::Ready, "other operators are not touched");
    // A new relay with the revoked token is refused, and told why.
    let newcomer = sim.add_relay(3, 100 * MB);
    let r = sim.relays.get_mut(&newcomer).unwrap();
    r.config.directories[0].enroll_token = ALICE.into();
    r.machine = Relay::new(r.config.clone(), [], [], now);
    sim.run_for(Duration::from_secs(5));
    assert!(view(&sim, newcomer).is_none());
    assert!(sim.relay_events.iter().any(|(r, e)| *r == newcomer && matches!(e, relay::Event::Refused { reason, .. } if reason.contains("revoked"))));
    sim.restart_directory();
    sim.run_for(Duration::from_secs(5));
    assert_eq!(view(&sim, theirs).unwrap().status, RelayStatus::Quarantined, "kept across a restart");
    assert!(sim.dir.enroll_tokens()[0].revoked);
}
