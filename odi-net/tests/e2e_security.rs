//! Relays are run by strangers: relay URLs cannot aim the directory or other relays at internal
//! services, relay answers never reach logs, and tokens resist guessing.

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use http::{Method, Request, Response, StatusCode};
use odi_core::ChunkManifest;
use odi_core::message::AddressPolicy;
use odi_core::transfer::TransferConfig;
use odi_net::HttpClient;
use odi_net::client::AddressGuard;
use odi_net::directory::{DirectoryOptions, DirectoryServer};
use odi_net::http::{Body, empty, full};
use odi_net::transfer::{Downloader, PartialFile, Redirects, Source};
use tokio::net::TcpListener;

/// An address no test connects to: the public URL a directory announces but is not reached at.
const PUBLIC_DIRECTORY: &str = "http://203.0.113.7:7700";

/// A loopback HTTP server answering every request with `answer`; counts the requests.
async fn server<F>(answer: F) -> (String, Arc<AtomicU64>)
where
    F: Fn(&Request<hyper::body::Incoming>) -> Response<Body> + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (answer, count) = (Arc::new(answer), Arc::new(AtomicU64::new(0)));
    let counted = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (answer, count) = (answer.clone(), counted.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    count.fetch_add(1, Ordering::SeqCst);
                    let resp = answer(&req);
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
            });
        }
    });
    (url, count)
}

/// A source serving `data` with Range support.
fn ranges(data: Arc<Vec<u8>>) -> impl Fn(&Request<hyper::body::Incoming>) -> Response<Body> {
    move |req| {
        let len = data.len();
        let (start, end) = req
            .headers()
            .get("range")
            .and_then(|v| v.to_str().ok()?.strip_prefix("bytes=")?.split_once('-').map(|(a, b)| (a.parse::<usize>(), b.parse::<usize>())))
            .and_then(|(a, b)| Some((a.ok()?, b.ok()? + 1)))
            .unwrap_or((0, len));
        let mut resp = Response::new(full(data[start..end].to_vec()));
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        resp.headers_mut().insert("content-range", format!("bytes {start}-{}/{len}", end - 1).parse().unwrap());
        resp
    }
}

/// Sends a signed enrollment from a fresh key, with `public_url` as raw JSON text (so that URLs
/// the types refuse can still be sent).
async fn enroll(dir: &str, public_url: &str, token: &str) -> (StatusCode, String) {
    let key = ed25519_dalek::SigningKey::from_bytes(&odi_net::keys::random_bytes::<32>());
    let body = serde_json::json!({
        "type": "enroll", "token": token, "public_url": public_url,
        "capacity": { "disk_budget": 1 << 30, "bandwidth": 0 }
    });
    let resp = HttpClient::new()
        .signed(&key, Method::POST, &format!("{dir}/odi/v1/enroll"), serde_json::to_vec(&body).unwrap(), Duration::from_secs(10))
        .await
        .expect("the directory answers");
    let status = resp.status();
    let body = odi_net::client::read_body(resp.into_body(), 1 << 20).await.unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_refuses_every_ssrf_url_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = start_directory_with(tmp.path(), None, |o| o.public_url = Some(PUBLIC_DIRECTORY.into())).await;
    for (url, why) in [
        ("http://127.0.0.1:8080", "loopback address, accepted only when"),
        ("http://[::1]:8080", "loopback address"),
        ("http://localhost:8080", "loopback address"),
        ("http://10.0.0.5:8080", "private address"),
        ("http://192.168.1.10", "private address"),
        ("http://[fd00::5]", "private address"),
        ("http://169.254.169.254", "never accepted"),
        ("http://[fe80::1]:80", "never accepted"),
        ("http://[fd00:ec2::254]", "never accepted"),
        ("http://metadata.google.internal", "never accepted"),
        ("http://instance-data", "never accepted"),
        ("http://0.0.0.0:80", "never accepted"),
    ] {
        let (status, body) = enroll(&dir.url, url, ENROLL).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {body}");
        assert!(body.contains(why), "{url}: {body}");
    }
    // Authorities that do not parse never make an enrollment message (the relay itself refuses
    // to start with them, naming the rule: see `RelayUrl`'s tests).
    for url in [
        "http://2130706433:80",
        "http://0x7f.1",
        "http://017.0.0.1",
        "http://h.example.org:0",
        "http://h.example.org:99999",
        "http://h.example.org:",
        "http://a:b:c",
    ] {
        let (status, body) = enroll(&dir.url, url, ENROLL).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {body}");
    }
    let (status, body) = enroll(&dir.url, "http://127.0.0.1:8080", ENROLL).await;
    assert!(status == StatusCode::BAD_REQUEST && body.contains("--allow-private-relays"), "names the flag: {body}");
    assert!(relays(&dir.url).await.is_empty(), "nothing enrolled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_directory_takes_loopback_relays_only_with_allow_private_relays() {
    let tmp = tempfile::tempdir().unwrap();
    let strict = start_directory_with(&tmp.path().join("strict"), None, |o| o.public_url = Some(PUBLIC_DIRECTORY.into())).await;
    let refused = start_relay(&tmp.path().join("r1"), &strict.url, 1 << 20, None).await;
    let allowing = start_directory_with(&tmp.path().join("allowing"), None, |o| {
        o.public_url = Some(PUBLIC_DIRECTORY.into());
        o.allow_private_relays = true;
    })
    .await;
    let relay = start_relay(&tmp.path().join("r2"), &allowing.url, 1 << 20, None).await;
    wait_for(20, "the loopback relay to pass its self-test", || async {
        relays(&allowing.url).await.iter().any(|r| r["url"] == relay.url.as_str() && r["status"] != "enrolled")
    })
    .await;
    let (status, body) = enroll(&strict.url, &refused.url, ENROLL).await;
    assert!(status == StatusCode::BAD_REQUEST && body.contains("--allow-private-relays"), "{body}");
    assert!(relays(&strict.url).await.is_empty(), "the strict directory enrolled nothing, the real relay neither");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_client_connects_to_no_refused_address_even_through_a_name() {
    let (url, count) = server(|_| Response::new(full("{}"))).await;
    let port = url.rsplit(':').next().unwrap();
    let guard = AddressGuard::new(AddressPolicy::PUBLIC);
    let client = HttpClient::guarded(guard.clone());
    for target in [format!("http://localhost:{port}/healthz"), format!("{url}/healthz"), format!("http://[::ffff:127.0.0.1]:{port}/")] {
        let req = Request::get(&target).body(empty()).unwrap();
        let err = client.send(req, Duration::from_secs(5)).await.expect_err(&target).to_string();
        assert!(err.contains("loopback address"), "{target}: {err}");
    }
    assert_eq!(count.load(Ordering::SeqCst), 0, "no request reached the loopback service");
    guard.set(AddressPolicy::ANY);
    let resp = client.send(Request::get(format!("{url}/healthz")).body(empty()).unwrap(), Duration::from_secs(5)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_redirecting_to_another_host_is_not_followed_and_the_sync_completes() {
    let data = Arc::new(sample(300_000, 9));
    let manifest = ChunkManifest::of(&data, 16_384).unwrap();
    let (target, target_hits) = server(ranges(data.clone())).await;
    let location = format!("{target}/latest/meta-data/");
    let (evil, evil_hits) = server(move |_| {
        let mut resp = Response::new(empty());
        *resp.status_mut() = StatusCode::FOUND;
        resp.headers_mut().insert("location", location.parse().unwrap());
        resp
    })
    .await;
    let (good, _) = server(ranges(data.clone())).await;
    let sources = [Source { url: format!("{evil}/blobs/x"), signed: false }, Source { url: format!("{good}/blobs/x"), signed: false }];
    // One chunk per request: the redirecting peer is asked for some of them.
    let config = TransferConfig { chunks_per_request: 1, ..TransferConfig::default() };
    let downloader = Downloader { client: HttpClient::new(), key: None, limiter: None, config, redirects: Redirects::SameOrigin };
    let tmp = tempfile::tempdir().unwrap();
    let (partial, have) = PartialFile::open(tmp.path().join("f.part"), manifest.clone()).await.unwrap();
    let (partial, report) = downloader.download(&manifest, &sources, partial, have, &|_| {}).await.map_err(|(e, r)| format!("{e} {r:?}")).unwrap();
    partial.finish(&tmp.path().join("f")).await.unwrap();
    assert_eq!(sha256_hex(&std::fs::read(tmp.path().join("f")).unwrap()), sha256_hex(&data));
    assert!(evil_hits.load(Ordering::SeqCst) >= 1, "the redirecting peer was asked");
    assert_eq!(target_hits.load(Ordering::SeqCst), 0, "its redirect was never followed");
    assert!(report.failures.iter().any(|f| f.contains("redirected to another host") && !f.contains("meta-data")), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_test_failure_never_shows_the_relays_answer() {
    const MARK: &str = "ZQXJ-relay-body-";
    let tmp = tempfile::tempdir().unwrap();
    let dir = start_directory(&tmp.path().join("dir"), None).await;
    let (fake, hits) = server(|_| {
        let mut resp = Response::new(full(MARK.repeat(400)));
        *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        resp
    })
    .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let _relay = start_relay_on(listener, &fake, &tmp.path().join("relay"), &dir.url, 1 << 20, 0, ENROLL).await;
    wait_for(20, "the failed self-test to show", || async {
        relays(&dir.url).await.iter().any(|r| r["reason"].as_str().is_some_and(|s| s.contains("answered 500")))
    })
    .await;
    assert!(hits.load(Ordering::SeqCst) >= 1);
    let view = admin(Method::GET, &dir.url, "relays", empty()).await.text();
    assert!(!view.contains("ZQXJ") && !view.contains("relay-body"), "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_wrong_admin_tokens_get_429_and_another_address_still_gets_in() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = start_directory(tmp.path(), None).await;
    let url = format!("{}/api/v1/catalogs", dir.url);
    let curl = |interface: &str, token: &str| {
        let out = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-D", "-", "--max-time", "10", "--interface", interface, "-H"])
            .arg(format!("Authorization: Bearer {token}"))
            .arg(&url)
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let wrong = "f".repeat(31) + &"0".repeat(33);
    let heads: Vec<String> = (0..20).map(|_| curl("127.0.0.1", &wrong)).collect();
    let status = |head: &str| head.split_whitespace().nth(1).unwrap_or("").to_owned();
    let codes: Vec<String> = heads.iter().map(|h| status(h)).collect();
    assert!(codes[..10].iter().all(|c| c == "403"), "{codes:?}");
    assert!(codes[10..].iter().all(|c| c == "429"), "{codes:?}");
    let last = heads.last().unwrap().to_ascii_lowercase();
    let retry: u64 = last.lines().find_map(|l| l.strip_prefix("retry-after:")).expect("Retry-After on a 429").trim().parse().unwrap();
    assert!((1..=60).contains(&retry), "{last}");
    assert_eq!(status(&curl("127.0.0.1", ADMIN)), "429", "a blocked address is not even checked");
    assert_eq!(status(&curl("127.0.0.2", ADMIN)), "200", "another address gets in");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_and_its_files_are_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("dir");
    let server = DirectoryServer::open(DirectoryOptions::new(&data)).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, signal) = shutdown();
    let task = tokio::spawn(server.run(listener, signal));
    assert_eq!(get(&format!("{base}/healthz"), &[]).await.status, StatusCode::OK);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "data directory");
    for name in ["node.key", "token.key", "admin.token", "enroll.token", "directory.sqlite3", "directory.sqlite3-wal", "directory.sqlite3-shm"] {
        assert_eq!(mode(&data.join(name)), 0o600, "{name}");
    }
    let key = std::fs::read_to_string(data.join("token.key")).unwrap();
    assert_eq!(key.trim().len(), 64, "a 32-byte key in hex");
    let admin_token = std::fs::read_to_string(data.join("admin.token")).unwrap();
    assert_eq!(admin_token.trim().len(), 64, "a 256-bit generated token");
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weak_tokens_are_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    for (admin, enroll, name) in
        [(Some("a"), None, "ODI_ADMIN_TOKEN"), (Some("test-admin-token"), None, "ODI_ADMIN_TOKEN"), (None, Some("x".repeat(64)), "ODI_ENROLL_TOKEN")]
    {
        let mut options = DirectoryOptions::new(tmp.path().join(name).join(admin.unwrap_or("none")));
        options.admin_token = admin.map(str::to_owned).or(Some(ADMIN.into()));
        options.enroll_token = enroll.clone().or(Some(ENROLL.into()));
        let err = DirectoryServer::open(options).await.err().expect("refused").to_string();
        assert!(err.contains(name) && err.contains("openssl rand -hex 32"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upload_reports_the_refusal_not_the_reset_that_cut_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = start_directory(tmp.path(), None).await;
    create_catalog(&dir.url, "c", 1).await;
    let wrong = odi_client::admin::AdminClient::new(&dir.url, "e".repeat(31) + &"1".repeat(33));
    // Far more than the socket buffers hold, so the directory answers and closes mid-upload.
    let data = bytes::Bytes::from(sample(64 << 20, 3));
    for _ in 0..3 {
        let err = wrong.publish("c", "big.bin", &[], "application/octet-stream", full(data.clone())).await.unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::FORBIDDEN), "{err}");
    }
    let missing = odi_client::admin::AdminClient::new(&dir.url, ADMIN);
    let err = missing.publish("nope", "big.bin", &[], "application/octet-stream", full(data)).await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::NOT_FOUND), "{err}");
}
