//! The directory's persistence path against a metadata store that fails on demand: an
//! enrollment is acknowledged only once durable, and a quarantine decided while the store fails
//! is written once it heals, so a restart keeps it. A relay learns why it gets no clients.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use odi_core::storage::{MetaStore, Record};
use odi_storage::{FaultSwitch, FaultyMeta, SqliteMeta};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

fn sqlite(dir: &std::path::Path) -> SqliteMeta {
    std::fs::create_dir_all(dir).unwrap();
    SqliteMeta::open(dir.join("directory.sqlite3")).unwrap()
}

async fn faulty_directory(data: &std::path::Path, tune: impl FnOnce(&mut odi_net::directory::DirectoryOptions)) -> (Node, FaultSwitch) {
    let (meta, switch) = FaultyMeta::new(sqlite(data));
    let meta: Arc<dyn MetaStore> = Arc::new(meta);
    let node = start_directory_with(data, None, |o| {
        o.meta = Some(meta);
        tune(o);
    })
    .await;
    (node, switch)
}

async fn healthz(url: &str) -> serde_json::Value {
    get(&format!("{url}/healthz"), &[]).await.json()
}

async fn relay_view(dir: &str, url: &str) -> Option<serde_json::Value> {
    relays(dir).await.into_iter().find(|r| r["url"] == url)
}

async fn stored_quarantine(data: &std::path::Path, url: &str) -> Option<String> {
    let records = sqlite(data).load().await.unwrap();
    records.into_iter().rev().find_map(|r| match r {
        Record::Relay(r) if r.public_url.as_str() == url => Some(r.quarantined),
        _ => None,
    })?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_metadata_store_never_acknowledges_an_enrollment() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("dir");
    let (mut dir, switch) = faulty_directory(&data, |_| {}).await;
    switch.set_failing(true);
    let relay = start_relay(&tmp.path().join("r0"), &dir.url, 1 << 30, None).await;
    wait_for(10, "enrollment attempts to be refused", || async { switch.refused() >= 2 }).await;
    assert!(relays(&dir.url).await.is_empty(), "an enrollment that could not be saved is not in the relay table");
    let health = healthz(&relay.url).await;
    assert_eq!(health["status"], "enrolling", "{health}");
    assert_eq!(health["enrolled"], false, "never acknowledged: {health}");

    switch.set_failing(false);
    wait_for(15, "the relay to enroll and get ready once the store heals", || async {
        relay_view(&dir.url, &relay.url).await.is_some_and(|r| r["status"] == "ready")
    })
    .await;
    wait_for(10, "the relay to hear it is ready", || async { healthz(&relay.url).await["status"] == "ready" }).await;
    dir.stop().await;
    let dir = start_directory(&data, None).await;
    assert!(relay_view(&dir.url, &relay.url).await.is_some(), "the acknowledged enrollment survived a restart");
}

/// Forwards connections to `target`, flipping one byte of every answer longer than 4 KiB while
/// `lie` is set: a relay that serves wrong bytes to whoever asks.
async fn lying_proxy(listener: TcpListener, target: String, lie: tokio::sync::watch::Receiver<bool>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else { return };
        let (target, lie) = (target.clone(), lie.clone());
        tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(&target).await else { return };
            let (mut in_read, mut in_write) = inbound.into_split();
            let (mut out_read, mut out_write) = outbound.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut in_read, &mut out_write).await;
            });
            let mut buf = vec![0u8; 64 << 10];
            let mut seen = 0usize;
            loop {
                let n = match out_read.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let at = 4096usize;
                if *lie.borrow() && seen <= at && at < seen + n {
                    buf[at - seen] ^= 0x20;
                }
                seen += n;
                if in_write.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantine_decided_while_the_store_fails_is_kept_and_written_once_it_heals() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("dir");
    let (mut dir, switch) = faulty_directory(&data, |o| o.audit_interval = Duration::from_millis(200)).await;
    create_catalog(&dir.url, "rel", 2).await;
    publish(&dir.url, "rel", "big.bin", &sample(3 << 20, 7)).await;
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let public = format!("http://{}", front.local_addr().unwrap());
    let behind = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (lie, lie_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(lying_proxy(front, behind.local_addr().unwrap().to_string(), lie_rx));
    let liar = start_relay_on(behind, &public, &tmp.path().join("r0"), &dir.url, 1 << 30, 0, ENROLL).await;
    let _honest = start_relay(&tmp.path().join("r1"), &dir.url, 1 << 30, None).await;
    wait_for(20, "both relays ready", || async { relays(&dir.url).await.iter().filter(|r| r["status"] == "ready").count() == 2 }).await;

    switch.set_failing(true);
    lie.send_replace(true);
    wait_for(15, "the lying relay to be quarantined", || async { relay_view(&dir.url, &public).await.is_some_and(|r| r["status"] == "quarantined") }).await;
    let refused = switch.refused();
    assert!(refused >= 1, "the quarantine's write was tried");
    assert_eq!(stored_quarantine(&data, &public).await, None, "nothing written while the store fails");
    // The relay itself is told, and says so.
    wait_for(10, "the relay to report its quarantine", || async { healthz(&liar.url).await["status"] == "quarantined" }).await;
    let health = healthz(&liar.url).await;
    assert!(health["reason"].as_str().unwrap_or("").contains("wrong bytes"), "{health}");

    switch.set_failing(false);
    wait_for(40, "the quarantine to be written once the store heals", || async { stored_quarantine(&data, &public).await.is_some() }).await;
    dir.stop().await;
    lie.send_replace(false);
    let dir = start_directory(&data, None).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let view = relay_view(&dir.url, &public).await.expect("known after the restart");
    assert_eq!(view["status"], "quarantined", "kept across the restart: {view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_whose_public_url_is_unreachable_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = start_directory(&tmp.path().join("dir"), None).await;
    // Announces a URL where nothing listens.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = format!("http://{}", listener.local_addr().unwrap());
    let _relay = start_relay_on(listener, &dead_url, &tmp.path().join("r0"), &dir.url, 1 << 30, 0, ENROLL).await;
    wait_for(15, "the relay to learn its self-test failed", || async {
        let h = healthz(&local).await;
        h["status"] == "enrolled" && h["reason"].as_str().is_some_and(|r| r.contains("self-test") && r.contains(&dead_url))
    })
    .await;
    let view = relay_view(&dir.url, &dead_url).await.unwrap();
    assert!(view["reason"].as_str().unwrap_or("").contains("self-test"), "the admin sees the same reason: {view}");
}

/// A directory opened on the stored state of 2,000 artifacts and 300 relays: the writes its
/// start chains (each outcome asking for the next) run one after another without growing the
/// stack, where running them by recursion overflowed a worker thread's 2 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_opens_on_hundreds_of_stored_relays_and_thousands_of_artifacts() {
    use odi_core::catalog::{Artifact, CatalogConfig, LogEntry, LogOp};
    use odi_core::message::{Capacity, NodeId, RelayUrl};
    use odi_core::path::{ArtifactPath, CatalogName};
    use odi_core::storage::RelayRecord;
    use odi_core::time::UnixTime;
    use odi_core::{ChunkManifest, Digest};
    use odi_net::http::empty;

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("dir");
    let catalog = CatalogName::new("big").unwrap();
    let at = UnixTime(1_790_000_000);
    let mut records =
        vec![Record::Catalog(CatalogConfig { name: catalog.clone(), replicas: 2, chunk_size: 1 << 20, created_at: at, mutable: false, origin: None })];
    for i in 0..2000u64 {
        let digest = Digest::of(&i.to_le_bytes());
        let manifest = ChunkManifest::new(4096, 1 << 20, digest, vec![digest]).unwrap();
        let path = ArtifactPath::new(&format!("pool/p{}/a{i}.deb", i % 40)).unwrap();
        let artifact = Artifact {
            catalog: catalog.clone(),
            path,
            media_type: "application/octet-stream".into(),
            tags: Vec::new(),
            published_at: at,
            manifest: manifest.into(),
        };
        records.push(Record::Log { catalog: catalog.clone(), entry: LogEntry { seq: i + 1, at, op: LogOp::Put(artifact) } });
    }
    for i in 0..300u64 {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&(i + 1).to_le_bytes());
        records.push(Record::Relay(RelayRecord {
            id: NodeId(id),
            public_url: RelayUrl::new(&format!("http://relay-{i}.test.invalid:8080")).unwrap(),
            capacity: Capacity { disk_budget: 1 << 40, bandwidth: 0 },
            catalogs: vec![catalog.clone()],
            enrolled_at: at,
            quarantined: None,
            draining: false,
            proven: true,
            token: None,
            tags: Vec::new(),
        }));
    }
    sqlite(&data).apply(&records).await.unwrap();
    let mut dir = start_directory_with(&data, None, |o| {
        o.probe_interval = Duration::from_secs(3600);
        o.audit_interval = Duration::from_secs(3600);
    })
    .await;
    let relays = admin(http::Method::GET, &dir.url, "relays", empty()).await;
    assert_eq!(relays.status, http::StatusCode::OK);
    assert_eq!(relays.json().as_array().unwrap().len(), 300);
    let listing = admin(http::Method::GET, &dir.url, "catalogs/big", empty()).await.json();
    assert_eq!(listing["artifacts"].as_array().unwrap().len(), 2000);
    // Still taking changes, and answering after them.
    create_catalog(&dir.url, "more", 1).await;
    assert_eq!(get(&format!("{}/healthz", dir.url), &[]).await.status, http::StatusCode::OK);
    dir.stop().await;
}
