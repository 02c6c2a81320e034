//! What a name may be bound to (immutable and mutable catalogs), and what each form of expunge
//! covers (one path, or a digest everywhere), including across a directory restart.

use std::time::Duration;

use super::*;
use crate::catalog::{LogEntry, LogOp};
use crate::directory::{AdminError, LookupError};

const MB: u64 = 1 << 20;

fn plan(sim: &Sim, catalog: &CatalogName, path: &str, data: &[u8]) -> Result<Option<Record>, AdminError> {
    let manifest = ChunkManifest::of(data, MIN_CHUNK_SIZE).unwrap();
    sim.dir.plan_publish(catalog, ArtifactPath::new(path).unwrap(), manifest, "application/octet-stream".into(), sim.wall())
}

fn is_gone(sim: &mut Sim, catalog: &str, path: &str) -> bool {
    matches!(sim.redirect(catalog, path), Err(LookupError::Expunged(_)))
}

#[test]
fn an_immutable_catalog_refuses_other_bytes_for_a_bound_path() {
    let mut sim = Sim::new(40);
    let rel = sim.create_catalog("rel", 2);
    let v1 = sim.publish(&rel, "tool-1.0.tar", &Sim::data(1, 3000));
    assert_eq!(plan(&sim, &rel, "tool-1.0.tar", &Sim::data(1, 3000)), Ok(None), "the same bytes again: nothing to do");
    let err = plan(&sim, &rel, "tool-1.0.tar", &Sim::data(2, 3000)).unwrap_err();
    assert_eq!(err, AdminError::Rebind { catalog: rel.clone(), path: ArtifactPath::new("tool-1.0.tar").unwrap(), current: v1 });
    let line = err.to_string();
    assert!(!line.contains('\n') && line.contains("tool-1.0.tar") && line.contains(&v1.to_string()), "{line}");
    assert!(line.contains("publish under a new path, or create the catalog with --mutable"), "{line}");
    assert_eq!(sim.redirect("rel", "tool-1.0.tar").unwrap().digest, v1, "the name still holds its bytes");
    assert!(!sim.redirect("rel", "tool-1.0.tar").unwrap().mutable);

    // Withdrawn, the name still may not take other bytes: caches and users hold the old ones.
    sim.expunge(&rel, "tool-1.0.tar");
    let err = plan(&sim, &rel, "tool-1.0.tar", &Sim::data(2, 3000)).unwrap_err();
    assert!(matches!(&err, AdminError::ExpungedPath { previous, .. } if *previous == v1), "{err}");
    assert!(err.to_string().contains("new path"), "{err}");
    // The same bytes may come back under it (the binding never changed).
    assert!(plan(&sim, &rel, "tool-1.0.tar", &Sim::data(1, 3000)).unwrap().is_some());
    sim.publish(&rel, "tool-1.0.tar", &Sim::data(1, 3000));
    assert_eq!(sim.redirect("rel", "tool-1.0.tar").unwrap().digest, v1);
}

#[test]
fn a_mutable_catalog_rebinds_names_and_says_so() {
    let (mut sim, ids) = (Sim::new(41), [1u8, 2]);
    let idx = sim.create_catalog_with("idx", 2, true);
    let rel = sim.create_catalog("rel", 2);
    let ids: Vec<NodeId> = ids.iter().map(|n| sim.add_relay(*n, 100 * MB)).collect();
    let v1 = sim.publish(&idx, "latest.txt", b"1.0\n");
    sim.publish(&rel, "tool-1.0.tar", &Sim::data(1, 3000));
    sim.run_for(Duration::from_secs(5));
    assert!(sim.dir.catalogs().iter().any(|c| c.name == idx && c.mutable));
    assert!(sim.redirect("idx", "latest.txt").unwrap().mutable, "a mutable name's answers must be revalidated");
    assert!(!sim.redirect("rel", "tool-1.0.tar").unwrap().mutable);
    for id in &ids {
        let relay = &sim.relays[id].machine;
        assert!(relay.is_mutable("idx") && !relay.is_mutable("rel"), "relays learn which names may change");
    }

    let v2 = sim.publish(&idx, "latest.txt", b"1.1\n");
    assert_ne!(v1, v2);
    sim.run_for(Duration::from_secs(5));
    let r = sim.redirect("idx", "latest.txt").unwrap();
    assert_eq!(r.digest, v2);
    assert!(r.target.is_some_and(|u| sim.relays[&sim.relay_at(&u)].machine.lookup("idx", &ArtifactPath::new("latest.txt").unwrap()) == Some(v2)));

    // Expunged, a mutable name may take other bytes again.
    sim.expunge(&idx, "latest.txt");
    assert!(is_gone(&mut sim, "idx", "latest.txt"));
    let v3 = sim.publish(&idx, "latest.txt", b"1.2\n");
    assert_eq!(sim.redirect("idx", "latest.txt").unwrap().digest, v3);
}

#[test]
fn expunging_a_path_withdraws_that_name_only() {
    let mut sim = Sim::new(42);
    let rel = sim.create_catalog("rel", 2);
    let mirror = sim.create_catalog("mirror", 2);
    let ids: Vec<NodeId> = (1..=2).map(|n| sim.add_relay(n, 100 * MB)).collect();
    let data = Sim::data(7, 5000);
    let digest = sim.publish(&rel, "tool.tar", &data);
    sim.publish(&rel, "tool-1.0.tar", &data);
    sim.publish(&mirror, "tool.tar", &data);
    sim.run_for(Duration::from_secs(5));
    assert_eq!(sim.holders_of(&digest).len(), 2);

    sim.expunge(&rel, "tool.tar");
    assert!(is_gone(&mut sim, "rel", "tool.tar"));
    sim.run_for(Duration::from_secs(5));
    for (catalog, path) in [("rel", "tool-1.0.tar"), ("mirror", "tool.tar")] {
        let r = sim.redirect(catalog, path).unwrap();
        assert_eq!(r.digest, digest);
        assert!(r.target.is_some(), "{catalog}/{path} is still served by relays");
    }
    assert!(sim.dir.manifest(&digest).is_ok(), "the bytes stay servable by digest");
    assert_eq!(sim.holders_of(&digest).len(), 2, "relays keep bytes that other names hold");
    assert!(sim.dir.expunges_pending().is_empty(), "nothing for relays to delete");
    let mut names = sim.dir.names_of(&digest);
    names.sort();
    assert_eq!(names, ["mirror/tool.tar", "rel/tool-1.0.tar"]);
    // Publishing those bytes elsewhere is fine: the bytes were not barred.
    sim.publish(&rel, "again.tar", &data);

    // Once no name holds the bytes, nothing is assigned them; relays keep them only as
    // unassigned (evictable) blobs, and the digest is unknown, not gone.
    for (catalog, path) in [(&rel, "tool-1.0.tar"), (&rel, "again.tar"), (&mirror, "tool.tar")] {
        sim.expunge(catalog, path);
    }
    sim.run_for(Duration::from_secs(5));
    assert!(sim.dir.assigned_to(&digest).is_empty());
    assert_eq!(sim.dir.manifest(&digest).unwrap_err(), LookupError::UnknownDigest(digest));
    assert!(ids.iter().all(|id| !sim.relays[id].machine.wants(&digest)));

    sim.restart_directory();
    assert!(is_gone(&mut sim, "rel", "tool.tar") && is_gone(&mut sim, "mirror", "tool.tar"), "replayed");
    assert!(plan(&sim, &mirror, "tool.tar", &data).unwrap().is_some(), "the same bytes may come back");
}

#[test]
fn expunging_a_digest_bars_it_under_every_name_and_relays_delete_it() {
    let mut sim = Sim::new(43);
    let rel = sim.create_catalog("rel", 2);
    let mirror = sim.create_catalog_with("mirror", 2, true);
    sim.add_relay(1, 100 * MB);
    sim.add_relay(2, 100 * MB);
    let bad = Sim::data(9, 5000);
    let digest = sim.publish(&rel, "bad.iso", &bad);
    sim.publish(&mirror, "copy/bad.iso", &bad);
    let good = sim.publish(&rel, "good.iso", &Sim::data(8, 5000));
    sim.run_for(Duration::from_secs(5));
    assert_eq!(sim.holders_of(&digest).len(), 2);

    let records = sim.dir.plan_expunge_digest(digest, sim.wall()).unwrap();
    assert_eq!(records.len(), 2, "one entry in each catalog's log");
    assert!(records.iter().all(|r| matches!(r, Record::Log { entry: LogEntry { op: LogOp::ExpungeDigest { .. }, .. }, .. })));
    sim.expunge_digest(digest);
    assert!(is_gone(&mut sim, "rel", "bad.iso") && is_gone(&mut sim, "mirror", "copy/bad.iso"));
    assert!(matches!(sim.dir.manifest(&digest), Err(LookupError::Expunged(_))), "/blobs/ answers 410");
    assert!(sim.dir.plan_expunge_digest(digest, sim.wall()).unwrap().is_empty(), "barring twice writes nothing");
    sim.run_for(Duration::from_secs(5));
    assert!(sim.holders_of(&digest).is_empty(), "relays deleted the barred bytes");
    assert!(sim.dir.expunges_pending().is_empty(), "and the directory saw them confirm it");
    assert_eq!(sim.holders_of(&good).len(), 2, "other bytes are untouched");

    // Refused under any name, in any catalog, even one created afterwards and after a restart.
    let late = sim.create_catalog_with("late", 1, true);
    sim.restart_directory();
    for cat in [&rel, &mirror, &late] {
        assert_eq!(plan(&sim, cat, "new-name.iso", &bad), Err(AdminError::ExpungedDigest(digest)), "{cat}");
    }
    assert!(is_gone(&mut sim, "mirror", "copy/bad.iso"));
}

#[test]
fn a_stored_expunge_from_before_the_split_still_bars_the_digest() {
    let mut sim = Sim::new(44);
    let rel = sim.create_catalog("rel", 2);
    let data = Sim::data(3, 4000);
    let digest = sim.publish(&rel, "a.iso", &data);
    sim.publish(&rel, "b.iso", &data);
    // As earlier versions wrote it, and as its JSON is stored.
    let json = format!(r#"{{"seq":3,"at":1800000000,"op":{{"op":"expunge","path":"a.iso","digest":"{digest}"}}}}"#);
    let entry: LogEntry = serde_json::from_str(&json).unwrap();
    assert_eq!(entry.op, LogOp::Expunge { path: ArtifactPath::new("a.iso").unwrap(), digest });
    sim.commit(Record::Log { catalog: rel.clone(), entry });
    sim.restart_directory();
    assert!(is_gone(&mut sim, "rel", "a.iso") && is_gone(&mut sim, "rel", "b.iso"), "its meaning was: bar the bytes");
    assert_eq!(plan(&sim, &rel, "c.iso", &data), Err(AdminError::ExpungedDigest(digest)));
}

#[test]
fn stored_catalogs_from_before_mutable_load_as_immutable() {
    let json = r#"{"name":"rel","replicas":2,"chunk_size":1048576,"created_at":1700000000}"#;
    let config: crate::catalog::CatalogConfig = serde_json::from_str(json).unwrap();
    assert!(!config.mutable);
    let named: crate::message::Named = serde_json::from_str(&format!(r#"{{"catalog":"rel","path":"a","digest":"{}"}}"#, Digest::of(b"a"))).unwrap();
    assert!(!named.mutable, "a directory that does not send the field names immutable paths");
    assert!(!serde_json::to_string(&named).unwrap().contains("mutable"), "and the field costs nothing when false");
}
