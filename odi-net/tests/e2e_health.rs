//! The directory keeping the network healthy, end to end: audits and quarantine, health
//! checks, expunge during downloads, and relays inside small budgets.

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::{Method, StatusCode};
use odi_net::http::empty;
use tokio::net::{TcpListener, TcpStream};

async fn relay_status(dir: &str, url: &str) -> String {
    relays(dir).await.iter().find(|r| r["url"] == url).map(|r| r["status"].as_str().unwrap_or("").to_owned()).unwrap_or_default()
}

fn blob_path(relay: &Node, hex: &str) -> std::path::PathBuf {
    relay.data.join("blobs/blobs/sha256").join(&hex[..2]).join(hex)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_whose_disk_corrupted_a_file_drops_it_gets_no_clients_for_it_and_fetches_it_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = start_directory_with(&tmp.path().join("dir"), None, |o| o.audit_interval = Duration::from_millis(200)).await;
    create_catalog(&dir.url, "rel", 2).await;
    let data = sample(3 << 20, 1);
    publish(&dir.url, "rel", "big.bin", &data).await;
    let relays_up = [start_relay(&tmp.path().join("r0"), &dir.url, 1 << 30, None).await, start_relay(&tmp.path().join("r1"), &dir.url, 1 << 30, None).await];
    wait_for(20, "both relays ready", || async { relays(&dir.url).await.iter().filter(|r| r["status"] == "ready").count() == 2 }).await;
    // Bit rot on one relay's disk: every chunk of its copy has one flipped byte.
    let path = blob_path(&relays_up[0], &sha256_hex(&data));
    let good_copy = std::fs::read(&path).unwrap();
    let mut bytes = good_copy.clone();
    for at in (100..bytes.len()).step_by(1 << 20) {
        bytes[at] ^= 0x80;
    }
    std::fs::write(&path, bytes).unwrap();
    let started = Instant::now();
    // Its own read-side check finds the rot at the first audit (or client) that reads it: the
    // copy is dropped, the directory stops sending clients there, and the relay fetches it again.
    wait_for(15, "the rotten copy to be replaced by a good one", || async { std::fs::read(&path).is_ok_and(|b| b == good_copy) }).await;
    println!("bit rot: a good copy again {:.1}s after the corruption (audit interval 200ms)", started.elapsed().as_secs_f64());
    wait_for(15, "both relays ready again", || async { relays(&dir.url).await.iter().filter(|r| r["status"] == "ready").count() == 2 }).await;
    let view = relays(&dir.url).await.into_iter().find(|r| r["url"] == relays_up[0].url.as_str()).unwrap();
    assert!(view["quarantined"].is_null(), "an honest relay is not quarantined for its disk's rot: {view}");
    let (got, _) = follow(&format!("{}/blobs/sha256/{}", relays_up[0].url, sha256_hex(&data)), &[]).await;
    assert_eq!(&got.body[..], &data[..]);
    assert_eq!(admin(Method::POST, &dir.url, &format!("relays/{}/readmit", "0".repeat(64)), empty()).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scrub_finds_rot_in_a_blob_nobody_asks_for() {
    let tmp = tempfile::tempdir().unwrap();
    // No audits and no clients: only the relay's background scrub reads the blob.
    let dir = start_directory_with(&tmp.path().join("dir"), None, |o| o.audit_interval = Duration::from_secs(3600)).await;
    create_catalog(&dir.url, "rel", 1).await;
    let data = sample((2 << 20) + 99, 7);
    publish(&dir.url, "rel", "cold.bin", &data).await;
    let relay = start_relay(&tmp.path().join("r0"), &dir.url, 1 << 30, None).await;
    wait_for(20, "the relay ready", || async { relays(&dir.url).await.iter().any(|r| r["status"] == "ready") }).await;
    let path = blob_path(&relay, &sha256_hex(&data));
    let mut bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes, data);
    bytes[(1 << 20) + 5] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    wait_for(30, "the scrub to replace the rotten copy", || async { std::fs::read(&path).is_ok_and(|b| b == data) }).await;
    let view = relays(&dir.url).await.into_iter().next().unwrap();
    assert_eq!(view["audits_passed"].as_u64().unwrap() + view["audits_failed"].as_u64().unwrap(), 0, "no audit did it: {view}");
}

/// Forwards TCP connections from a listener to `target`; while `cut` is true it hangs up on
/// new connections and drops the open ones, as a host that went dark.
async fn proxy(listener: TcpListener, target: String, cut: tokio::sync::watch::Receiver<bool>) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else { return };
        if *cut.borrow() {
            drop(inbound);
            continue;
        }
        let (target, mut cut) = (target.clone(), cut.clone());
        tokio::spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(&target).await {
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = cut.wait_for(|c| *c) => {}
                }
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_whose_public_url_stops_answering_leaves_the_redirect_set() {
    let tmp = tempfile::tempdir().unwrap();
    let probe = Duration::from_millis(500);
    let dir = start_directory_with(&tmp.path().join("dir"), None, |o| o.probe_interval = probe).await;
    create_catalog(&dir.url, "rel", 2).await;
    publish(&dir.url, "rel", "f.txt", b"hello").await;
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let public = format!("http://{}", front.local_addr().unwrap());
    let behind = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let behind_addr = behind.local_addr().unwrap().to_string();
    let (cut, cut_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(proxy(front, behind_addr, cut_rx));
    let _proxied = start_relay_on(behind, &public, &tmp.path().join("r0"), &dir.url, 1 << 30, 0, ENROLL).await;
    let _other = start_relay(&tmp.path().join("r1"), &dir.url, 1 << 30, None).await;
    wait_for(20, "both relays ready", || async { relays(&dir.url).await.iter().filter(|r| r["status"] == "ready").count() == 2 }).await;
    // Its heartbeats still reach the directory, but clients cannot reach it any more.
    cut.send_replace(true);
    let cut_at = Instant::now();
    wait_for(10, "the unreachable relay to leave the redirect set", || async {
        let r = get(&format!("{}/r/rel/f.txt", dir.url), &[]).await;
        !r.header("location").unwrap_or("").starts_with(&public) && !r.header("link").unwrap_or("").contains(&public)
    })
    .await;
    let took = cut_at.elapsed();
    println!("health: an unreachable relay left the redirect set {:.2}s after its URL went dark (probe interval {probe:?})", took.as_secs_f64());
    assert_eq!(relay_status(&dir.url, &public).await, "suspended");
    // Back online: re-admitted after it passes a new self-test.
    cut.send_replace(false);
    wait_for(10, "re-admission", || async { relay_status(&dir.url, &public).await == "ready" }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expunge_during_active_downloads_stops_everything_and_relays_confirm() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = start_directory(&tmp.path().join("dir"), None).await;
    create_catalog(&dir.url, "rel", 2).await;
    let data = sample(6 << 20, 2);
    let hex = sha256_hex(&data);
    publish(&dir.url, "rel", "bad.iso", &data).await;
    publish(&dir.url, "rel", "good.iso", b"fine").await;
    let mut nodes = Vec::new();
    for i in 0..2 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        // 4 MB/s: a download of the 6 MiB file takes over a second.
        nodes.push(start_relay_on(listener, &url, &tmp.path().join(format!("r{i}")), &dir.url, 1 << 30, 4_000_000, ENROLL).await);
    }
    wait_for(30, "both relays ready", || async { relays(&dir.url).await.iter().filter(|r| r["status"] == "ready").count() == 2 }).await;
    let url = format!("{}/r/rel/bad.iso", dir.url);
    let downloads: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn({
                let url = url.clone();
                async move { follow(&url, &[]).await.0 }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A defective artifact: barred by digest, under every name.
    let r = admin(Method::DELETE, &dir.url, &format!("blobs/sha256/{hex}"), empty()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // From the moment the call returned: never redirected to, nor served, anywhere.
    for target in [url.clone(), format!("{}/blobs/sha256/{hex}", dir.url), format!("{}/metalink/r/rel/bad.iso", dir.url)] {
        assert_eq!(get(&target, &[]).await.status, StatusCode::GONE, "{target}");
    }
    for d in downloads {
        let reply = d.await.unwrap();
        // Responses already under way may finish; whatever arrived is never wrong bytes.
        if reply.status == StatusCode::OK {
            assert_eq!(sha256_hex(&reply.body), hex);
        }
    }
    wait_for(15, "both relays to delete and confirm", || async {
        let stats = admin(Method::GET, &dir.url, "stats", empty()).await.json();
        stats["expunges_pending"].as_array().is_some_and(Vec::is_empty) && nodes.iter().all(|n| !blob_path(n, &hex).exists())
    })
    .await;
    for n in &nodes {
        assert_eq!(get(&format!("{}/blobs/sha256/{hex}", n.url), &[]).await.status, StatusCode::NOT_FOUND);
    }
    let again = admin(Method::PUT, &dir.url, "catalogs/rel/artifacts/bad-again.iso", odi_net::http::full(data.clone())).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "an expunged digest is never published or synced again");
    let (good, _) = follow(&format!("{}/r/rel/good.iso", dir.url), &[]).await;
    assert_eq!(&good.body[..], b"fine");
}

fn disk_usage(relay_data: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![relay_data.join("blobs")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_with_half_the_space_of_its_catalog_stays_within_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = start_directory(&tmp.path().join("dir"), None).await;
    create_catalog(&dir.url, "rel", 1).await;
    let budget = 6 << 20;
    for i in 0..6u8 {
        publish(&dir.url, "rel", &format!("part{i}.bin"), &sample(2 << 20, i)).await;
    }
    let relay = start_relay(&tmp.path().join("small"), &dir.url, budget, None).await;
    let mut peak = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        peak = peak.max(disk_usage(&relay.data));
        assert!(peak <= budget, "{peak} bytes on disk, budget {budget}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let view = relays(&dir.url).await.into_iter().next().unwrap();
    println!("budget: a relay with a {budget}-byte budget was given a 12 MiB catalog; peak disk use {peak}, holds {} bytes", view["held_bytes"]);
    assert!(view["held_bytes"].as_u64().unwrap() >= 4 << 20, "it holds what fits: {view}");
    assert_eq!(view["status"], "ready");
    // Everything is still served: what the relay does not hold, the directory serves itself.
    for i in 0..6u8 {
        let (r, _) = follow(&format!("{}/r/rel/part{i}.bin", dir.url), &[]).await;
        assert_eq!(sha256_hex(&r.body), sha256_hex(&sample(2 << 20, i)));
    }
}
