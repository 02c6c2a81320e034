//! Probation: a relay nobody has watched yet serves only clients that verify what they get.

use std::time::Duration;

use super::*;
use crate::storage::RelayRecord;

const MB: u64 = 1 << 20;
const HOUR: Duration = Duration::from_secs(3600);

fn stored(sim: &Sim, id: NodeId) -> RelayRecord {
    sim.durable
        .iter()
        .rev()
        .find_map(|r| match r {
            Record::Relay(r) if r.id == id => Some(r.clone()),
            _ => None,
        })
        .expect("stored")
}

fn redirect_targets(sim: &mut Sim) -> Vec<NodeId> {
    let urls: Vec<RelayUrl> = (0..40).filter_map(|_| sim.redirect("c", "f").unwrap().target).collect();
    urls.iter().map(|u| sim.relay_at(u)).collect()
}

#[test]
fn a_new_relay_is_an_alternate_only_until_its_probation_ends() {
    let mut sim = Sim::with_config(91, |c| {
        c.probation = HOUR;
        c.audit_interval = Duration::from_secs(60);
    });
    sim.invariant_stride = 50;
    let cat = sim.create_catalog("c", 1);
    let id = sim.add_relay(1, 100 * MB);
    sim.publish(&cat, "f", &Sim::data(1, 3 * MIN_CHUNK_SIZE as usize));
    sim.run_for(Duration::from_secs(10));
    for _ in 0..20 {
        let r = sim.redirect("c", "f").unwrap();
        assert_eq!(r.target, None, "plain clients are not sent to a relay on probation");
        assert_eq!(r.alternates.len(), 1, "verifying clients are offered it");
    }
    let view = sim.dir.relays(sim.now).into_iter().find(|v| v.id == id).unwrap();
    assert!(!view.proven && view.reason.as_deref().is_some_and(|r| r.contains("probation")), "{view:?}");
    assert!(sim.relays[&id].machine.standing().and_then(|s| s.reason.as_deref()).is_some_and(|r| r.contains("probation")), "the relay is told");

    sim.run_for(HOUR);
    let r = sim.redirect("c", "f").unwrap();
    assert_eq!(r.target.as_ref().map(|u| sim.relay_at(u)), Some(id), "proven after an hour of clean audits");
    assert!(sim.dir_events.iter().any(|e| matches!(e, directory::Event::RelayProven { relay } if *relay == id)));
    assert!(stored(&sim, id).proven, "the decision is durable");
    sim.restart_directory();
    sim.run_for(Duration::from_secs(10));
    assert!(sim.redirect("c", "f").unwrap().target.is_some(), "and survives a restart");
}

#[test]
fn probation_needs_clean_audits_not_only_time() {
    let mut sim = Sim::with_config(92, |c| {
        c.probation = Duration::from_secs(60);
        c.probation_audits = 1_000; // more than an hour of audits at one a minute
        c.audit_interval = Duration::from_secs(60);
    });
    sim.invariant_stride = 50;
    let cat = sim.create_catalog("c", 1);
    sim.add_relay(1, 100 * MB);
    sim.publish(&cat, "f", &Sim::data(2, 2 * MIN_CHUNK_SIZE as usize));
    sim.run_for(HOUR);
    assert_eq!(sim.redirect("c", "f").unwrap().target, None);
}

#[test]
fn a_readmitted_relay_serves_plain_clients_again_only_after_a_new_probation() {
    let mut sim = Sim::with_config(93, |c| {
        c.probation = HOUR;
        c.probation_audits = 1;
        c.audit_interval = Duration::from_secs(1);
    });
    sim.invariant_stride = 50;
    let cat = sim.create_catalog("c", 2);
    let ids: Vec<NodeId> = (1..=2).map(|n| sim.add_relay(n, 100 * MB)).collect();
    sim.publish(&cat, "f", &Sim::data(3, 3 * MIN_CHUNK_SIZE as usize));
    sim.run_for(HOUR + Duration::from_secs(10));
    sim.relays.get_mut(&ids[0]).unwrap().corrupt = 1.0;
    sim.run_for(Duration::from_secs(10));
    sim.relays.get_mut(&ids[0]).unwrap().corrupt = 0.0;
    let record = sim.dir.plan_relay_admin(&ids[0], None, true).unwrap();
    sim.durable.push(record.clone());
    sim.dir.apply(&record, sim.now);
    sim.run_for(Duration::from_secs(30));
    let targets = redirect_targets(&mut sim);
    assert!(!targets.contains(&ids[0]), "back on probation after readmission");
    assert!(sim.redirect("c", "f").unwrap().alternates.iter().any(|u| sim.relay_at(u) == ids[0]), "but offered to verifying clients");
    sim.run_for(HOUR);
    let targets = redirect_targets(&mut sim);
    assert!(targets.contains(&ids[0]), "proven again");
}
