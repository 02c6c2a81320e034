//! The transfer engine over real HTTP: faulty sources, metalinks, aria2c, and peers offloading
//! the directory.

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;
use odi_core::ChunkManifest;
use odi_core::transfer::TransferConfig;
use odi_net::HttpClient;
use odi_net::http::empty;
use odi_net::transfer::{Downloader, PartialFile, Redirects, Source};
use tokio::net::TcpListener;

type Faults = Arc<Mutex<BTreeMap<&'static str, u64>>>;

/// An HTTP server that serves `data` with Range support, and misbehaves on a fraction of
/// requests in one of eight ways.
async fn faulty_source(data: Arc<Vec<u8>>, rate: f64, seed: u64, faults: Faults) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/file", listener.local_addr().unwrap());
    let rng = Arc::new(Mutex::new(seed.wrapping_mul(6364136223846793005).wrapping_add(1)));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (data, rng, faults) = (data.clone(), rng.clone(), faults.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (data, rng, faults) = (data.clone(), rng.clone(), faults.clone());
                    async move { Ok::<_, Infallible>(misbehave(&req, &data, &rng, rate, &faults)) }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
            });
        }
    });
    url
}

fn next(rng: &Mutex<u64>) -> u64 {
    let mut s = rng.lock().unwrap();
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn misbehave(req: &http::Request<hyper::body::Incoming>, data: &[u8], rng: &Mutex<u64>, rate: f64, faults: &Faults) -> Response<odi_net::http::Body> {
    let len = data.len() as u64;
    let (start, end) = req
        .headers()
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()? + 1)))
        .unwrap_or((0, len));
    let mut body = data[start as usize..end as usize].to_vec();
    let mut status = StatusCode::PARTIAL_CONTENT;
    let mut content_range = format!("bytes {start}-{}/{len}", end - 1);
    let mut pace: Option<Duration> = None;
    let faulty = (next(rng) % 1000) as f64 / 1000.0 < rate;
    if faulty {
        let kind = ["corrupt", "truncate", "wrong-range", "ignore-range", "stall", "trickle", "error", "changed"][(next(rng) % 8) as usize];
        *faults.lock().unwrap().entry(kind).or_default() += 1;
        match kind {
            "corrupt" => {
                let at = (next(rng) % body.len().max(1) as u64) as usize;
                if let Some(b) = body.get_mut(at) {
                    *b ^= 0x01;
                }
            }
            "truncate" => body.truncate(body.len() / 2),
            "wrong-range" => content_range = format!("bytes {}-{}/{len}", start + 1, end),
            "ignore-range" => {
                status = StatusCode::OK;
                body = data.to_vec();
            }
            "stall" => pace = Some(Duration::from_secs(3600)),
            "trickle" => pace = Some(Duration::from_millis(50)),
            "error" => return odi_net::http::error(StatusCode::INTERNAL_SERVER_ERROR, "injected failure"),
            _ => body.iter_mut().for_each(|b| *b = b.wrapping_add(1)), // new content mid-way
        }
    }
    let body = match pace {
        None => odi_net::http::full(body),
        Some(delay) => {
            // Headers now, then the body one byte per `delay`.
            let stream = futures_util::stream::unfold((body, 0usize), move |(body, i)| async move {
                if i >= body.len() {
                    return None;
                }
                tokio::time::sleep(delay).await;
                Some((Ok::<_, odi_net::http::BoxError>(Frame::data(Bytes::copy_from_slice(&body[i..i + 1]))), (body, i + 1)))
            });
            StreamBody::new(stream).boxed_unsync()
        }
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    if status == StatusCode::PARTIAL_CONTENT {
        resp.headers_mut().insert("content-range", content_range.parse().unwrap());
    }
    resp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_are_exact_despite_a_thousand_http_faults() {
    let faults: Faults = Arc::default();
    let tmp = tempfile::tempdir().unwrap();
    let (mut transfers, mut rejected, mut failed_requests) = (0, 0, 0);
    let mut round = 0u64;
    while faults.lock().unwrap().values().sum::<u64>() < 1000 && round < 200 {
        round += 1;
        let data = Arc::new(sample(700_000 + round as usize * 13_001, round as u8));
        let manifest = ChunkManifest::of(&data, 4096).unwrap();
        let mut sources = Vec::new();
        for (i, rate) in [0.9, 0.7, 0.8].into_iter().enumerate() {
            sources.push(Source { url: faulty_source(data.clone(), rate, round * 10 + i as u64, faults.clone()).await, signed: false });
        }
        sources.push(Source { url: faulty_source(data.clone(), 0.0, 99, faults.clone()).await, signed: false });
        let config =
            TransferConfig { chunk_timeout: Duration::from_millis(300), max_strikes: 1000, chunks_per_request: 1 + round % 2, ..TransferConfig::default() };
        let downloader = Downloader { client: HttpClient::new(), key: None, limiter: None, config, redirects: Redirects::AnyHost };
        let path = tmp.path().join(format!("f{round}"));
        let (partial, have) = PartialFile::open(path.with_extension("part"), manifest.clone()).await.unwrap();
        let (partial, report) = downloader.download(&manifest, &sources, partial, have, &|_| {}).await.map_err(|(e, r)| format!("{e} {r:?}")).unwrap();
        partial.finish(&path).await.unwrap();
        assert_eq!(sha256_hex(&std::fs::read(&path).unwrap()), sha256_hex(&data), "round {round}");
        transfers += 1;
        rejected += report.chunks_rejected;
        failed_requests += report.requests_failed;
    }
    let faults = faults.lock().unwrap().clone();
    let total: u64 = faults.values().sum();
    println!(
        "http fault injection: {transfers} downloads, {total} injected faults {faults:?}, {failed_requests} failed requests, {rejected} bad chunks rejected, 0 bad bytes committed"
    );
    assert!(total >= 1000, "{total} faults in {round} rounds");
    assert_eq!(faults.len(), 8, "every kind of fault was injected: {faults:?}");
}

async fn network_with_relays(n: usize, replicas: u32, data: &[u8]) -> (tempfile::TempDir, Node, Vec<Node>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = start_directory(&tmp.path().join("dir"), None).await;
    create_catalog(&dir.url, "rel", replicas).await;
    publish(&dir.url, "rel", "big.bin", data).await;
    let mut relays = Vec::new();
    for i in 0..n {
        relays.push(start_relay(&tmp.path().join(format!("relay{i}")), &dir.url, 1 << 30, None).await);
        // One at a time, so later relays find earlier ones ready and sync from them too.
        wait_for(20, "relay ready", || async { relays_ready(&dir.url).await == i + 1 }).await;
    }
    (tmp, dir, relays)
}

async fn relays_ready(dir: &str) -> usize {
    relays(dir).await.iter().filter(|r| r["status"] == "ready").count()
}

async fn node_blob_bytes(dir: &str) -> u64 {
    admin(Method::GET, dir, "stats", empty()).await.json()["node_blob_bytes"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_sync_from_peers_and_offload_the_directory() {
    let data = sample(12 << 20, 3);
    let tmp = tempfile::tempdir().unwrap();
    let dir = start_directory(&tmp.path().join("dir"), None).await;
    create_catalog(&dir.url, "rel", 3).await;
    publish(&dir.url, "rel", "big.bin", &data).await;
    let _first = start_relay(&tmp.path().join("r0"), &dir.url, 1 << 30, None).await;
    wait_for(20, "first relay ready", || async { relays_ready(&dir.url).await == 1 }).await;
    let after_first = node_blob_bytes(&dir.url).await;
    assert_eq!(after_first, data.len() as u64, "the first relay had only the directory to sync from");
    let _second = start_relay(&tmp.path().join("r1"), &dir.url, 1 << 30, None).await;
    let _third = start_relay(&tmp.path().join("r2"), &dir.url, 1 << 30, None).await;
    wait_for(30, "all relays ready", || async { relays_ready(&dir.url).await == 3 }).await;
    let from_directory = node_blob_bytes(&dir.url).await - after_first;
    println!("peer offload: two relays synced {} bytes; {from_directory} came from the directory", 2 * data.len());
    assert!(from_directory < 2 * data.len() as u64, "peers served part of the second and third sync ({from_directory} bytes from the directory)");
    let (r, _) = follow(&format!("{}/r/rel/big.bin", dir.url), &[]).await;
    assert_eq!(sha256_hex(&r.body), sha256_hex(&data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_links_a_metalink_with_every_source_and_piece() {
    let data = sample((5 << 20) + 1, 4);
    let (_tmp, dir, relays) = network_with_relays(3, 3, &data).await;
    let head = request(Method::HEAD, &format!("{}/r/rel/big.bin", dir.url), &[], empty()).await;
    let links: Vec<&str> = head.headers.get_all("link").iter().filter_map(|v| v.to_str().ok()).collect();
    let meta = links.iter().find(|l| l.contains("rel=describedby")).expect("describedby link");
    assert!(meta.contains("type=\"application/metalink4+xml\""), "{meta}");
    assert_eq!(links.iter().filter(|l| l.contains("rel=duplicate")).count(), 2, "{links:?}");
    let url = meta.trim_start_matches('<').split('>').next().unwrap();
    let doc = get(url, &[]).await;
    assert_eq!(doc.header("content-type"), Some("application/metalink4+xml"));
    let parsed = odi_net::metalink::parse(&doc.text()).unwrap();
    assert_eq!(parsed.manifest, ChunkManifest::of(&data, 1 << 20).unwrap());
    assert_eq!(parsed.urls.len(), 4, "three relays and the directory: {:?}", parsed.urls);
    for r in &relays {
        assert!(parsed.urls.iter().any(|u| u.starts_with(&r.url)), "{} listed", r.url);
    }
    assert!(parsed.urls.last().unwrap().starts_with(&dir.url), "the directory comes last");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aria2c_gets_the_right_file_from_three_relays_one_corrupt() {
    if std::process::Command::new("aria2c").arg("--version").output().is_err() {
        panic!("aria2c is not installed: scripts/test installs the aria2 package");
    }
    let data = sample(6 << 20, 5);
    let (tmp, dir, relays) = network_with_relays(3, 3, &data).await;
    corrupt_relay_copy(&relays[0], &sha256_hex(&data), 1 << 20);
    let meta_url = format!("{}/metalink/r/rel/big.bin", dir.url);
    let meta_path = tmp.path().join("big.meta4");
    std::fs::write(&meta_path, get(&meta_url, &[]).await.body).unwrap();
    let out = tmp.path().join("aria2-out");
    let run = tokio::process::Command::new("aria2c")
        .args(["--metalink-file", meta_path.to_str().unwrap(), "--dir", out.to_str().unwrap(), "--split=4", "--min-split-size=1M"])
        .args([
            "--max-connection-per-server=1",
            "--metalink-enable-unique-protocol=false",
            "--console-log-level=warn",
            "--summary-interval=0",
            "--max-tries=10",
        ])
        .args(["--retry-wait=0", "--timeout=10", "--realtime-chunk-checksum=true", "--allow-overwrite=true"])
        .output()
        .await
        .expect("run aria2c");
    let log = String::from_utf8_lossy(&run.stdout).into_owned() + &String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "aria2c failed: {log}");
    assert_eq!(sha256_hex(&std::fs::read(out.join("big.bin")).unwrap()), sha256_hex(&data), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odi_get_style_download_is_exact_with_a_rotten_relay_among_its_sources() {
    let data = sample(6 << 20, 6);
    let (tmp, dir, relays) = network_with_relays(3, 3, &data).await;
    corrupt_relay_copy(&relays[1], &sha256_hex(&data), 1 << 20);
    let parsed = odi_net::metalink::parse(&get(&format!("{}/metalink/r/rel/big.bin", dir.url), &[]).await.text()).unwrap();
    let sources: Vec<Source> = parsed.urls.iter().map(|u| Source { url: u.clone(), signed: false }).collect();
    // One chunk per request spreads the six chunks over all four sources, the rotten one too.
    let config = TransferConfig { chunks_per_request: 1, ..TransferConfig::default() };
    let downloader = Downloader { client: HttpClient::new(), key: None, limiter: None, config, redirects: Redirects::AnyHost };
    let path = tmp.path().join("got.bin");
    let (partial, have) = PartialFile::open(tmp.path().join("got.part"), parsed.manifest.clone()).await.unwrap();
    let (partial, report) = downloader.download(&parsed.manifest, &sources, partial, have, &|_| {}).await.map_err(|(e, _)| e.to_string()).unwrap();
    partial.finish(&path).await.unwrap();
    assert_eq!(sha256_hex(&std::fs::read(&path).unwrap()), sha256_hex(&data));
    // The rotten relay checks what it reads: it cuts the answer rather than send the rot.
    assert_eq!(report.chunks_rejected, 0, "a relay sent bytes that failed their hash: {report:?}");
}
