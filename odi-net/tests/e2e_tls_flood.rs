//! A TLS directory under a handshake flood: from eight other loopback addresses, hundreds of
//! connections that stall their handshake (nothing sent, or half a ClientHello) and tasks that
//! complete handshake after handshake and hang up, while a legitimate client keeps fetching an
//! artifact on fresh connections. At least 99 % of its fetches must succeed; their latency is
//! printed (no timing is asserted).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const LEGIT_FETCHES: usize = 200;
const STALLERS_PER_ADDRESS: usize = 80;
const FLOOD_TASKS: usize = 4;
const ATTACKERS: [&str; 8] = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6", "127.0.0.7", "127.0.0.8", "127.0.0.9"];

async fn connect_from(source: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse().unwrap())?;
    socket.connect(to).await
}

/// The first bytes of a TLS 1.3 ClientHello record header and handshake header, and no more.
const HALF_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_flooded_tls_handshakes_do_not_starve_a_legitimate_client() {
    let certs = test_certs();
    let tmp = tempfile::tempdir().unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let url = format!("https://{addr}");
    let listener = odi_net::Listener::tls(tcp, odi_net::tls::ServerTls::from_pem_files(&certs.cert, &certs.key).unwrap());
    let mut options = odi_net::directory::DirectoryOptions::new(tmp.path().join("dir"));
    options.admin_token = Some(ADMIN.into());
    options.enroll_token = Some(ENROLL.into());
    options.public_url = Some(url.clone());
    let server = odi_net::directory::DirectoryServer::open(options).await.unwrap();
    let (stop, signal) = shutdown();
    let task = tokio::spawn(server.run(listener, signal));
    create_catalog(&url, "alpha", 1).await;
    let data = sample(64 << 10, 3);
    publish(&url, "alpha", "file.bin", &data).await;
    let fetch_url = format!("{url}/blobs/sha256/{}", sha256_hex(&data));

    let stop_flood = Arc::new(AtomicBool::new(false));
    let (handshakes, stalled) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut attackers = Vec::new();
    // Stallers: connect, send nothing or half a ClientHello, hold the connection; reconnect when
    // the server drops it.
    for (i, source) in ATTACKERS.iter().enumerate() {
        for j in 0..STALLERS_PER_ADDRESS {
            let (stop, stalled) = (stop_flood.clone(), stalled.clone());
            attackers.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut s) = connect_from(source, addr).await else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    if (i + j) % 2 == 0 {
                        let _ = s.write_all(HALF_HELLO).await;
                    }
                    stalled.fetch_add(1, Ordering::Relaxed);
                    let mut buf = [0u8; 64];
                    // Held until the server gives up on it (or the test ends).
                    let _ = tokio::time::timeout(Duration::from_secs(30), tokio::io::AsyncReadExt::read(&mut s, &mut buf)).await;
                }
            }));
        }
    }
    // Flooders: complete handshakes as fast as they can, then hang up without a request.
    let connector = tokio_rustls::TlsConnector::from(odi_net::tls::client_config());
    for k in 0..FLOOD_TASKS {
        let (stop, handshakes, connector) = (stop_flood.clone(), handshakes.clone(), connector.clone());
        attackers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(s) = connect_from(ATTACKERS[k % ATTACKERS.len()], addr).await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
                if tokio::time::timeout(Duration::from_secs(10), connector.connect(name, s)).await.is_ok_and(|r| r.is_ok()) {
                    handshakes.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut ok = 0;
    let mut latencies = Vec::with_capacity(LEGIT_FETCHES);
    let mut failures = Vec::new();
    let started = Instant::now();
    for _ in 0..LEGIT_FETCHES {
        // A fresh client each time: every fetch pays its own handshake, as a new client would.
        let client = odi_net::HttpClient::new();
        let t = Instant::now();
        let req = http::Request::get(&fetch_url).body(odi_net::http::empty()).unwrap();
        match client.send(req, Duration::from_secs(20)).await {
            Ok(resp) if resp.status() == StatusCode::OK => match odi_net::client::read_body(resp.into_body(), 1 << 20).await {
                Ok(body) if body == data => {
                    ok += 1;
                    latencies.push(t.elapsed());
                }
                other => failures.push(format!("body: {:?}", other.map(|b| b.len()))),
            },
            Ok(resp) => failures.push(format!("status {}", resp.status())),
            Err(e) => failures.push(e.to_string()),
        }
    }
    let took = started.elapsed();
    stop_flood.store(true, Ordering::Relaxed);
    for a in attackers {
        a.abort();
    }
    latencies.sort();
    let pct = |p: usize| latencies.get((latencies.len() * p / 100).min(latencies.len().saturating_sub(1))).copied().unwrap_or_default();
    eprintln!(
        "TLS flood: {ok}/{LEGIT_FETCHES} legitimate fetches in {took:.1?} (p50 {:.1?}, p99 {:.1?}, max {:.1?}); meanwhile {} flood handshakes completed and {} stalled connections opened from {} addresses",
        pct(50),
        pct(99),
        latencies.last().copied().unwrap_or_default(),
        handshakes.load(Ordering::Relaxed),
        stalled.load(Ordering::Relaxed),
        ATTACKERS.len()
    );
    assert!(ok * 100 >= LEGIT_FETCHES * 99, "only {ok}/{LEGIT_FETCHES} legitimate fetches succeeded: {failures:?}");
    assert!(
        handshakes.load(Ordering::Relaxed) > 0 && stalled.load(Ordering::Relaxed) >= (ATTACKERS.len() * STALLERS_PER_ADDRESS) as u64,
        "the flood did not run"
    );
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}
