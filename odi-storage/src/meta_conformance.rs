//! The [`MetaStore`] conformance suite: every check a metadata backend must pass, as
//! `pub async fn`s over `&dyn MetaStore`, plus
//! [`meta_conformance_tests!`](crate::meta_conformance_tests) to mount them all as tests.
//! Behind the `conformance` feature, and outside semver, like the blob suite.
//!
//! Each check expects a fresh, empty store.

use odi_core::catalog::{Artifact, CatalogConfig, LogEntry, LogOp};
use odi_core::digest::Digest;
use odi_core::federation::{Entry, FedRecord, Link, Op, Signature, SignedEntry};
use odi_core::message::{Capacity, NodeId, RelayUrl};
use odi_core::path::{ArtifactPath, CatalogName};
use odi_core::storage::{Changes, EnrollTokenRecord, MetaStore, Record, RelayRecord, StorageError, TokenRole};
use odi_core::time::UnixTime;

fn catalog(name: &str) -> CatalogName {
    CatalogName::new(name).unwrap()
}

/// A log entry: each kind of expunge in turn.
pub fn log(name: &str, seq: u64) -> Record {
    let (path, digest) = (ArtifactPath::new(&format!("dir/file-{seq}.tar")).unwrap(), Digest::of(&seq.to_be_bytes()));
    let op = match seq % 3 {
        0 => LogOp::ExpungePath { path, digest },
        1 => LogOp::ExpungeDigest { digest },
        _ => LogOp::Expunge { path, digest },
    };
    Record::Log { catalog: catalog(name), entry: LogEntry { seq, at: UnixTime(1_700_000_000 + seq), op } }
}

/// A relay whose flags vary with `id`.
pub fn relay(id: u8, catalogs: &[&str]) -> Record {
    Record::Relay(RelayRecord {
        id: NodeId([id; 32]),
        public_url: RelayUrl::new(&format!("https://relay-{id}.example.org")).unwrap(),
        capacity: Capacity { disk_budget: 1 << 40, bandwidth: 0 },
        catalogs: catalogs.iter().map(|c| catalog(c)).collect(),
        enrolled_at: UnixTime(1_700_000_000),
        quarantined: id.is_multiple_of(2).then(|| "served wrong bytes".to_owned()),
        draining: id.is_multiple_of(3),
        proven: id.is_multiple_of(5),
        token: id.is_multiple_of(7).then(|| "alice".to_owned()),
        tags: if id.is_multiple_of(4) { vec!["gpu".to_owned()] } else { Vec::new() },
    })
}

pub fn catalog_record(name: &str) -> Record {
    Record::Catalog(CatalogConfig {
        name: catalog(name),
        replicas: 3,
        chunk_size: 1 << 20,
        created_at: UnixTime(1_700_000_000),
        mutable: name == "beta",
        origin: None,
    })
}

pub fn token(role: TokenRole, seed: &[u8]) -> Record {
    Record::Token { role, hash: Digest::of(seed) }
}

fn put(seq: u64) -> Record {
    Record::Log {
        catalog: catalog("alpha"),
        entry: LogEntry {
            seq,
            at: UnixTime(1_700_000_100),
            op: LogOp::Put(Artifact {
                catalog: catalog("alpha"),
                path: ArtifactPath::new("v1/tool.tar.gz").unwrap(),
                media_type: "application/gzip".into(),
                tags: vec!["stable".to_owned()],
                manifest: odi_core::ChunkManifest::of(b"tool", 4096).unwrap().into(),
                published_at: UnixTime(1_700_000_100),
            }),
        },
    }
}

pub async fn a_new_store_is_empty(meta: &dyn MetaStore) {
    assert_eq!(meta.load().await.unwrap(), vec![]);
    meta.apply(&[]).await.unwrap();
    assert_eq!(meta.load().await.unwrap(), vec![]);
}

/// Records applied out of order, across batches, load in replay order; upserts replace.
pub async fn records_load_in_replay_order(meta: &dyn MetaStore) {
    meta.apply(&[relay(9, &["beta"]), catalog_record("beta"), log("beta", 1)]).await.unwrap();
    meta.apply(&[catalog_record("alpha"), log("alpha", 1), put(2), token(TokenRole::Enroll, b"e1")]).await.unwrap();
    meta.apply(&[log("beta", 2), relay(3, &["alpha", "beta"]), token(TokenRole::Admin, b"a1")]).await.unwrap();
    // Sequence numbers compare as numbers, not as text.
    meta.apply(&[log("beta", 3)]).await.unwrap();
    meta.apply(&[log("beta", 10)]).await.unwrap();
    meta.apply(&[token(TokenRole::Enroll, b"e2"), relay(9, &["alpha"])]).await.unwrap();
    let alice = |revoked| Record::EnrollToken(EnrollTokenRecord { revoked, ..EnrollTokenRecord::enroll("alice", Digest::of(b"t"), UnixTime(5)) });
    meta.apply(&[alice(false)]).await.unwrap();
    meta.apply(&[alice(true)]).await.unwrap();
    meta.apply(&[relay(20, &[]), relay(21, &[])]).await.unwrap();
    let forget = Record::RelayForgotten { id: NodeId([20; 32]) };
    meta.apply(&[forget]).await.unwrap();
    let want = vec![
        token(TokenRole::Admin, b"a1"),
        token(TokenRole::Enroll, b"e2"),
        alice(true),
        catalog_record("alpha"),
        catalog_record("beta"),
        log("alpha", 1),
        put(2),
        log("beta", 1),
        log("beta", 2),
        log("beta", 3),
        log("beta", 10),
        relay(3, &["alpha", "beta"]),
        relay(9, &["alpha"]),
        relay(21, &[]),
    ];
    assert_eq!(meta.load().await.unwrap(), want);
}

/// A batch with one bad record leaves nothing of itself behind.
pub async fn a_duplicate_log_entry_rejects_the_whole_batch(meta: &dyn MetaStore) {
    meta.apply(&[catalog_record("alpha"), log("alpha", 1)]).await.unwrap();
    let batch = [token(TokenRole::Admin, b"a"), relay(1, &["alpha"]), log("alpha", 2), log("alpha", 1)];
    let err = meta.apply(&batch).await.unwrap_err();
    assert!(err.to_string().contains("log entry 1 of catalog alpha is already stored"), "{err}");
    assert_eq!(meta.load().await.unwrap(), vec![catalog_record("alpha"), log("alpha", 1)]);
    let err = meta.apply(&[log("alpha", 2), log("alpha", 2)]).await.unwrap_err();
    assert!(matches!(err, StorageError::Backend { .. }), "{err}");
    assert_eq!(meta.load().await.unwrap(), vec![catalog_record("alpha"), log("alpha", 1)]);
    // The store still takes good batches.
    meta.apply(&[log("alpha", 2)]).await.unwrap();
    assert_eq!(meta.load().await.unwrap(), vec![catalog_record("alpha"), log("alpha", 1), log("alpha", 2)]);
}

pub async fn a_duplicate_catalog_is_rejected(meta: &dyn MetaStore) {
    meta.apply(&[catalog_record("alpha")]).await.unwrap();
    let err = meta.apply(&[token(TokenRole::Admin, b"a"), catalog_record("alpha")]).await.unwrap_err();
    assert!(err.to_string().contains("catalog alpha already exists"), "{err}");
    assert_eq!(meta.load().await.unwrap(), vec![catalog_record("alpha")]);
}

/// Federation records as written, and as a store loads them back after them: the latest link
/// per peer (b removed, with its cursor), the log in order, the highest cursor.
pub fn fed_records() -> (Vec<Record>, Vec<Record>) {
    let origin = NodeId([4; 32]);
    let (a, b) = (NodeId([0xa1; 32]), NodeId([0xb2; 32]));
    let entry = |seq: u64| SignedEntry {
        entry: Entry { origin, seq, at: UnixTime(seq), catalog: catalog("alpha"), op: Op::ExpungeDigest { digest: Digest::of(&[seq as u8]) } },
        sig: Signature([seq as u8; 64]),
    };
    let link = |peer: NodeId, tags: &[&str]| Link {
        peer,
        url: format!("http://{peer}.example"),
        catalogs: vec![],
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
    };
    let written = vec![
        Record::Fed(FedRecord::Link(link(a, &[]))),
        Record::Fed(FedRecord::Link(link(b, &[]))),
        Record::Fed(FedRecord::Local { entry: entry(1) }),
        Record::Fed(FedRecord::Entry { feed: 1, entry: entry(1) }),
        Record::Fed(FedRecord::Cursor { peer: a, seq: 5 }),
        Record::Fed(FedRecord::Cursor { peer: a, seq: 3 }),
        Record::Fed(FedRecord::BlobHeld { digest: Digest::of(b"x") }),
        Record::Fed(FedRecord::Link(link(a, &["prod"]))),
        Record::Fed(FedRecord::Cursor { peer: b, seq: 2 }),
        Record::Fed(FedRecord::LinkRemoved { peer: b }),
        Record::Fed(FedRecord::BlobDropped { digest: Digest::of(b"x") }),
    ];
    let loaded = vec![
        Record::Fed(FedRecord::Link(link(a, &["prod"]))),
        Record::Fed(FedRecord::Local { entry: entry(1) }),
        Record::Fed(FedRecord::Entry { feed: 1, entry: entry(1) }),
        Record::Fed(FedRecord::BlobHeld { digest: Digest::of(b"x") }),
        Record::Fed(FedRecord::BlobDropped { digest: Digest::of(b"x") }),
        Record::Fed(FedRecord::Cursor { peer: a, seq: 5 }),
    ];
    (written, loaded)
}

/// Links and cursors keep their latest value per peer (the highest cursor); the rest of the
/// federation records is a log replayed in the order written.
pub async fn federation_records_load_as_they_replay(meta: &dyn MetaStore) {
    let (written, loaded) = fed_records();
    for record in &written {
        meta.apply(std::slice::from_ref(record)).await.unwrap();
    }
    meta.apply(&[catalog_record("alpha"), token(TokenRole::Link, b"l")]).await.unwrap();
    let mut want = vec![token(TokenRole::Link, b"l"), catalog_record("alpha")];
    want.extend(loaded);
    assert_eq!(meta.load().await.unwrap(), want);
}

/// Concurrent writers each land whole: no batch is lost or torn.
pub async fn concurrent_batches_all_land(meta: &dyn MetaStore) {
    let names: Vec<String> = (0..8).map(|i| format!("c{i}")).collect();
    let batches: Vec<Vec<Record>> = names.iter().map(|n| vec![catalog_record(n), log(n, 1), log(n, 2)]).collect();
    let results = futures_util::future::join_all(batches.iter().map(|b| meta.apply(b))).await;
    for result in results {
        result.unwrap();
    }
    let mut want = Vec::new();
    want.extend(names.iter().map(|n| catalog_record(n)));
    for n in &names {
        want.extend([log(n, 1), log(n, 2)]);
    }
    assert_eq!(meta.load().await.unwrap(), want);
}

/// `load_at` reads what `load` reads, and a handle's change feed never repeats its own
/// writes to it: after its own applies, `changes` has no records (the cursor may move past them).
pub async fn a_handle_is_not_told_its_own_changes(meta: &dyn MetaStore) {
    let (loaded, at) = meta.load_at().await.unwrap();
    assert!(loaded.is_empty());
    meta.apply(&[catalog_record("alpha"), log("alpha", 1)]).await.unwrap();
    meta.apply(&[relay(1, &["alpha"])]).await.unwrap();
    let Changes::Records { records, cursor } = meta.changes(at).await.unwrap() else { panic!("a fresh feed asks for no reload") };
    assert!(records.is_empty(), "{records:?}");
    assert!(cursor >= at);
    let (loaded, end) = meta.load_at().await.unwrap();
    assert_eq!(loaded, meta.load().await.unwrap());
    assert!(end >= cursor);
    assert_eq!(meta.changes(end).await.unwrap(), Changes::Records { records: Vec::new(), cursor: end });
}

/// Mounts every metadata-store check as a `#[tokio::test]` in a module named `$name`;
/// `$make` yields a fresh, empty store and a guard kept alive until the test ends.
#[macro_export]
macro_rules! meta_conformance_tests {
    ($name:ident, $make:expr) => {
        $crate::meta_conformance_tests!(@mount $name, $make;
            a_new_store_is_empty,
            records_load_in_replay_order,
            a_duplicate_log_entry_rejects_the_whole_batch,
            a_duplicate_catalog_is_rejected,
            federation_records_load_as_they_replay,
            concurrent_batches_all_land,
            a_handle_is_not_told_its_own_changes,
        );
    };
    (@mount $name:ident, $make:expr; $($check:ident,)*) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let (store, _guard) = $make;
                    $crate::meta_conformance::$check(&store).await;
                }
            )*
        }
    };
}
