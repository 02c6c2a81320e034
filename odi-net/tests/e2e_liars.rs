//! Relays that lie to whoever they think is not watching, as proxies in front of honest relays:
//! one that corrupts only answers to requests without `Range` (what plain clients send, and what
//! audits used never to send), and one that answers with redirects instead of bytes. Plain
//! clients, sent through the directory, must never complete a wrong file.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use tokio::net::TcpListener;

#[derive(Clone, Copy)]
enum Lie {
    /// Flip a byte of every answer to a request without `Range`.
    CorruptUnranged,
    /// Answer every request but `/healthz` with a `302` elsewhere.
    Redirect,
    /// Flip a byte of every answer.
    CorruptAll,
    /// Pass everything through untouched (an honest relay; the scenario lies another way).
    None,
}

/// A relay's public face that lies per request: `/healthz` goes to the honest relay behind it
/// (so self-tests pass), everything else is answered as `lie` says.
async fn liar(listener: TcpListener, target: String, lie: Lie) {
    let client = odi_net::HttpClient::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else { return };
        let (target, client) = (target.clone(), client.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let (target, client) = (target.clone(), client.clone());
                async move { Ok::<_, std::convert::Infallible>(answer(req, &target, &client, lie).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
        });
    }
}

async fn answer(req: http::Request<hyper::body::Incoming>, target: &str, client: &odi_net::HttpClient, lie: Lie) -> http::Response<odi_net::http::Body> {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    if matches!(lie, Lie::Redirect) && path != "/healthz" {
        let mut resp = http::Response::new(odi_net::http::empty());
        *resp.status_mut() = http::StatusCode::FOUND;
        resp.headers_mut().insert(http::header::LOCATION, http::HeaderValue::from_static("http://127.0.0.1:9/elsewhere"));
        return resp;
    }
    let ranged = req.headers().contains_key(http::header::RANGE);
    let mut up = http::Request::builder().method(req.method().clone()).uri(format!("http://{target}{path}"));
    for name in [http::header::RANGE, http::header::IF_NONE_MATCH] {
        if let Some(v) = req.headers().get(&name) {
            up = up.header(name, v);
        }
    }
    let Ok(resp) = client.send(up.body(odi_net::http::empty()).unwrap(), Duration::from_secs(10)).await else {
        let mut resp = http::Response::new(odi_net::http::empty());
        *resp.status_mut() = http::StatusCode::BAD_GATEWAY;
        return resp;
    };
    let (parts, body) = resp.into_parts();
    let mut bytes = odi_net::client::read_body(body, 64 << 20).await.unwrap_or_default().to_vec();
    let corrupt = match lie {
        Lie::CorruptUnranged => !ranged,
        Lie::CorruptAll => true,
        Lie::Redirect | Lie::None => false,
    };
    if corrupt && path != "/healthz" && bytes.len() > 2048 {
        bytes[2048] ^= 0x01;
    }
    http::Response::from_parts(parts, odi_net::http::full(bytes))
}

async fn relay_view(dir: &str, url: &str) -> Option<serde_json::Value> {
    relays(dir).await.into_iter().find(|r| r["url"] == url)
}

/// `curl -L` through the directory, `n` times: how many completed (exit 0) with wrong bytes, and
/// how many with the right ones.
fn plain_downloads(url: &str, data: &[u8], n: usize, dir: &std::path::Path) -> (usize, usize) {
    let out = dir.join("dl");
    let (mut wrong, mut right) = (0, 0);
    for _ in 0..n {
        let _ = std::fs::remove_file(&out);
        let res = Command::new("curl").args(["-sSL", "--max-time", "10", "-w", "%{url_effective}", "-o"]).arg(&out).arg(url).output();
        if let Ok(res) = res
            && res.status.success()
        {
            if std::fs::read(&out).is_ok_and(|b| b == data) {
                right += 1
            } else {
                eprintln!("wrong bytes from {}", String::from_utf8_lossy(&res.stdout));
                wrong += 1
            }
        }
    }
    (wrong, right)
}

/// A directory (200 ms audits, 3 s probation), a relay behind a lying front and an honest one.
/// Returns the front's URL and the address the lying relay listens on behind it.
async fn network_with(lie: Lie, seed: u8) -> (tempfile::TempDir, Node, String, Vec<Node>, Vec<u8>, std::net::SocketAddr) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = start_directory_with(&tmp.path().join("dir"), None, |o| {
        o.audit_interval = Duration::from_millis(200);
        o.probation = Duration::from_secs(3);
    })
    .await;
    create_catalog(&dir.url, "rel", 2).await;
    let data = sample(3 << 20, seed);
    publish(&dir.url, "rel", "big.bin", &data).await;
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let public = format!("http://{}", front.local_addr().unwrap());
    let behind = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let behind_addr = behind.local_addr().unwrap();
    tokio::spawn(liar(front, behind_addr.to_string(), lie));
    let relays = vec![
        start_relay_on(behind, &public, &tmp.path().join("r0"), &dir.url, 1 << 30, 0, ENROLL).await,
        start_relay(&tmp.path().join("r1"), &dir.url, 1 << 30, None).await,
    ];
    (tmp, dir, public, relays, data, behind_addr)
}

async fn run(lie: Lie, seed: u8) -> (usize, usize, f64) {
    let (tmp, dir, public, _relays, data, _) = network_with(lie, seed).await;
    let started = Instant::now();
    let url = format!("{}/r/rel/big.bin", dir.url);
    let (mut wrong, mut right) = (0, 0);
    let mut caught = None;
    // 500 plain downloads while the liar enrolls, syncs, is on probation and (is) caught.
    for _ in 0..10 {
        let (w, r) = tokio::task::block_in_place(|| plain_downloads(&url, &data, 50, tmp.path()));
        wrong += w;
        right += r;
        if caught.is_none() && relay_view(&dir.url, &public).await.is_some_and(|v| v["status"] == "quarantined") {
            caught = Some(started.elapsed());
        }
    }
    wait_for(20, "the liar to be quarantined", || async { relay_view(&dir.url, &public).await.is_some_and(|v| v["status"] == "quarantined") }).await;
    let caught = caught.unwrap_or_else(|| started.elapsed());
    (wrong, right, caught.as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_corrupts_only_unranged_answers_never_reaches_a_plain_client() {
    let (wrong, right, caught) = run(Lie::CorruptUnranged, 11).await;
    println!("selective liar: {wrong} wrong and {right} right of 500 curl -L downloads; quarantined {caught:.1}s after it started");
    assert_eq!(wrong, 0, "no plain client completed a wrong file");
    assert_eq!(right, 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_answers_audits_with_redirects_is_quarantined() {
    let (wrong, right, caught) = run(Lie::Redirect, 12).await;
    println!("redirecting relay: {wrong} wrong and {right} right of 500 curl -L downloads; quarantined {caught:.1}s after it started");
    assert_eq!(wrong, 0);
    assert_eq!(right, 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_flips_bytes_in_every_answer_is_quarantined_before_any_plain_client() {
    let (wrong, right, caught) = run(Lie::CorruptAll, 13).await;
    println!("byte-flipping relay: {wrong} wrong and {right} right of 500 curl -L downloads; quarantined {caught:.1}s after it started");
    assert_eq!((wrong, right), (0, 500));
}

/// A relay that lies about what it holds: its blob files are deleted under it while it goes on
/// reporting them (what a fake relay claiming every digest does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_claiming_what_it_does_not_hold_is_quarantined_and_serves_no_plain_client() {
    let (tmp, dir, public, relays, data, _) = network_with(Lie::None, 14).await;
    let url = format!("{}/r/rel/big.bin", dir.url);
    wait_for(20, "both relays ready", || async { relays_ready(&dir.url).await == 2 }).await;
    let hex = sha256_hex(&data);
    let blob = relays[0].data.join("blobs/blobs/sha256").join(&hex[..2]).join(&hex);
    let started = Instant::now();
    std::fs::remove_file(&blob).unwrap();
    let (mut wrong, mut right) = (0, 0);
    for _ in 0..10 {
        let (w, r) = tokio::task::block_in_place(|| plain_downloads(&url, &data, 50, tmp.path()));
        wrong += w;
        right += r;
    }
    wait_for(20, "the relay to be quarantined or to drop its claim", || async {
        relay_view(&dir.url, &public).await.is_some_and(|v| v["status"] == "quarantined" || v["held"] == 0)
    })
    .await;
    let view = relay_view(&dir.url, &public).await.unwrap();
    println!(
        "relay without its bytes: {wrong} wrong and {right} right of 500 curl -L downloads; {} after {:.1}s",
        view["status"],
        started.elapsed().as_secs_f64()
    );
    assert_eq!((wrong, right), (0, 500));
}

/// The liar is quarantined; its operator starts again with a new key at the same URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantined_relay_back_with_a_new_key_stays_quarantined() {
    let (tmp, dir, public, mut relays, data, behind) = network_with(Lie::CorruptAll, 15).await;
    wait_for(20, "the liar to be quarantined", || async { relay_view(&dir.url, &public).await.is_some_and(|v| v["status"] == "quarantined") }).await;
    relays[0].stop().await;
    // Wait out the lease, then a fresh data dir (a new node.key) behind the same lying front.
    tokio::time::sleep(LEASE + Duration::from_millis(500)).await;
    let listener = TcpListener::bind(behind).await.unwrap();
    let reborn = start_relay_on(listener, &public, &tmp.path().join("r0-new-key"), &dir.url, 1 << 30, 0, ENROLL).await;
    let url = format!("{}/r/rel/big.bin", dir.url);
    let (mut wrong, mut right) = (0, 0);
    for _ in 0..10 {
        let (w, r) = tokio::task::block_in_place(|| plain_downloads(&url, &data, 50, tmp.path()));
        wrong += w;
        right += r;
    }
    let views = relays_at(&dir.url, &public).await;
    println!("new key at a quarantined URL: {wrong} wrong and {right} right of 500 curl -L downloads; views {views:?}");
    assert_eq!((wrong, right), (0, 500));
    assert!(!views.is_empty() && views.iter().all(|v| v["status"] == "quarantined"), "{views:?}");
    let _ = reborn;
}

async fn relays_ready(dir: &str) -> usize {
    relays(dir).await.iter().filter(|r| r["status"] == "ready").count()
}

async fn relays_at(dir: &str, url: &str) -> Vec<serde_json::Value> {
    relays(dir).await.into_iter().filter(|r| r["url"] == url).collect()
}
