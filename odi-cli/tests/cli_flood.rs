//! Anonymous floods against a real `odi directory` process with the common 1,024 open-file
//! limit: requests signed by throwaway keys, wrong enrollment tokens, slow and stalled bodies.
//! Relays must stay healthy and their heartbeats accepted, legitimate clients must be served,
//! and the directory's memory must not grow with the attack. `ODI_FLOOD_REQUESTS` sets the size
//! of the throwaway-key flood (1,000,000 by default).

mod common;

use std::io::Read as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ed25519_dalek::SigningKey;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

use common::*;

const ADMIN: &str = "flood-admin-token-0123456789abcdef0123456789abcdef";
const ENROLL: &str = "flood-enroll-token-0123456789abcdef0123456789abcdef";

fn odi(args: &[&str]) -> std::process::Output {
    Command::new(ODI).args(args).env("ODI_ADMIN_TOKEN", ADMIN).output().unwrap()
}

fn relays(dir: &str) -> Vec<serde_json::Value> {
    let out = odi(&["relays", "--directory", dir, "--json"]);
    serde_json::from_slice::<serde_json::Value>(&out.stdout).ok().and_then(|v| v.as_array().cloned()).unwrap_or_default()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn wait_for(secs: u64, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

async fn connect_from(source: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse().unwrap())?;
    socket.connect(to).await
}

/// A heartbeat signed (or claimed to be signed) by a key the directory has never seen.
fn throwaway_request(n: u64, properly_signed: bool, enroll: bool) -> Vec<u8> {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&n.to_le_bytes());
    seed[8] = 0xa5;
    let key = SigningKey::from_bytes(&seed);
    let (path, body) = if enroll {
        ("/odi/v1/enroll", format!(r#"{{"type":"enroll","token":"guess-{n}","public_url":"http://127.0.0.1:9","capacity":{{"disk_budget":1,"bandwidth":0}}}}"#))
    } else {
        ("/odi/v1/heartbeat", r#"{"type":"heartbeat","generation":0,"held":[],"used":0}"#.to_owned())
    };
    let now = unix_now();
    let mut nonce = [0u8; 16];
    nonce[..8].copy_from_slice(&n.to_le_bytes());
    let signed = odi_core::auth::sign(&key, "POST", path, "", body.as_bytes(), odi_core::time::UnixTime(now), &nonce);
    let (input, signature) = if properly_signed {
        (signed.signature_input, signed.signature)
    } else {
        // Only the key is fresh; the signature is noise (cheap for the attacker too).
        let keyid = hex(&seed);
        let input =
            format!(r#"odi=("@method" "@path" "@query" "content-digest");created={now};expires={};nonce="{n:032x}";keyid="{keyid}";alg="ed25519""#, now + 60);
        (input, format!("odi=:{}:", base64::engine::general_purpose::STANDARD.encode([7u8; 64])))
    };
    format!(
        "POST {path} HTTP/1.1\r\nHost: dir\r\nContent-Type: application/json\r\nContent-Digest: {}\r\nSignature-Input: {input}\r\nSignature: {signature}\r\nContent-Length: {}\r\n\r\n{body}",
        signed.content_digest,
        body.len()
    )
    .into_bytes()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Sends `count` requests over one keep-alive connection, pipelined in batches; returns how many
/// got an answer (any status).
async fn flood(addr: SocketAddr, source: &str, first: u64, count: u64) -> u64 {
    let mut answered = 0;
    let mut n = first;
    let end = first + count;
    'reconnect: while n < end {
        let Ok(mut s) = connect_from(source, addr).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let mut buf = Vec::with_capacity(1 << 16);
        while n < end {
            let batch = (end - n).min(32);
            let mut out = Vec::new();
            for i in 0..batch {
                let k = n + i;
                out.extend(throwaway_request(k, k.is_multiple_of(2), k.is_multiple_of(10)));
            }
            if s.write_all(&out).await.is_err() {
                continue 'reconnect;
            }
            let mut got = 0;
            while got < batch {
                if let Some(len) = parse_response(&buf) {
                    buf.drain(..len);
                    got += 1;
                    continue;
                }
                let mut chunk = [0u8; 16384];
                match tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => {
                        answered += got;
                        n += batch;
                        continue 'reconnect;
                    }
                    Ok(Ok(k)) => buf.extend_from_slice(&chunk[..k]),
                }
            }
            answered += got;
            n += batch;
        }
    }
    answered
}

/// The length of the first complete response in `buf`, if there is one.
fn parse_response(buf: &[u8]) -> Option<usize> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let len: usize = head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0))).unwrap_or(0);
    (buf.len() >= head_end + len).then_some(head_end + len)
}

/// Opens a connection, sends a node request head announcing a 16 MiB body, then trickles it.
async fn slow_body(addr: SocketAddr, source: &str, stop: Arc<AtomicBool>, stalled_at: usize) {
    let Ok(mut s) = connect_from(source, addr).await else { return };
    let head = throwaway_request(u64::MAX / 2, true, true);
    let head_end = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&head[..head_end]).into_owned();
    let head = head.split("Content-Length:").next().unwrap().to_owned() + "Content-Length: 16777216\r\n\r\n";
    if s.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let mut sent = 0;
    let block = vec![b' '; 1 << 16];
    while sent < stalled_at && !stop.load(Ordering::Relaxed) {
        if s.write_all(&block).await.is_err() {
            return;
        }
        sent += block.len();
    }
    while !stop.load(Ordering::Relaxed) {
        if s.write_all(b" ").await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn legit_fetches(dir: &str, n: usize) -> usize {
    (0..n)
        .filter(|_| {
            Command::new("curl")
                .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", &format!("{dir}/r/rel/hello.txt")])
                .output()
                .is_ok_and(|o| o.status.success() && o.stdout == b"302")
        })
        .count()
}

#[test]
fn anonymous_floods_neither_stop_relays_nor_legitimate_clients() {
    let requests: u64 = std::env::var("ODI_FLOOD_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let tmp = tempfile::tempdir().unwrap();
    let dport = free_port();
    let dir = format!("http://127.0.0.1:{dport}");
    let addr: SocketAddr = format!("127.0.0.1:{dport}").parse().unwrap();
    let dir_log = tempfile::NamedTempFile::new().unwrap();
    let directory = Proc(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ulimit -n 1024 && exec {ODI} directory --listen 127.0.0.1:{dport} --data {} --heartbeat-interval 300ms --lease 1500ms --probation 0s",
                tmp.path().join("dir").display()
            ))
            .env("ODI_ADMIN_TOKEN", ADMIN)
            .env("ODI_ENROLL_TOKEN", ENROLL)
            .stdout(Stdio::null())
            .stderr(dir_log.reopen().unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for(20, "the directory", || Command::new("curl").args(["-sf", &format!("{dir}/healthz")]).output().is_ok_and(|o| o.status.success()));
    assert!(odi(&["catalog", "create", "rel", "--directory", &dir, "--replicas", "2"]).status.success());
    let file = tmp.path().join("hello.txt");
    std::fs::write(&file, b"hello through the flood\n").unwrap();
    assert!(odi(&["publish", "--directory", &dir, "--catalog", "rel", file.to_str().unwrap()]).status.success());
    let mut relay_logs = Vec::new();
    let _relays: Vec<Proc> = (0..2)
        .map(|i| {
            let port = free_port();
            let log = tempfile::NamedTempFile::new().unwrap();
            let child = Command::new(ODI)
                .args(["relay", "--listen", &format!("127.0.0.1:{port}"), "--data"])
                .arg(tmp.path().join(format!("r{i}")))
                .args(["--directory", &dir, "--public-url", &format!("http://127.0.0.1:{port}"), "--disk-budget", "1GiB"])
                .env("ODI_ENROLL_TOKEN", ENROLL)
                .stdout(Stdio::null())
                .stderr(log.reopen().unwrap())
                .spawn()
                .unwrap();
            relay_logs.push(log);
            Proc(child)
        })
        .collect();
    wait_for(30, "both relays ready", || relays(&dir).iter().filter(|r| r["status"] == "ready").count() == 2);
    let pid = directory.0.id();
    let rss_before = rss_kib(pid);

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // 1. Throwaway keys from 127.0.0.2 while relays heartbeat every 300 ms: half of them signed
    //    for real by a fresh key (the attack that filled one shared nonce cache), a tenth of them
    //    enrollments with a guessed token.
    let watching = Arc::new(AtomicBool::new(true));
    let unhealthy_samples = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (dir, watching, unhealthy, samples) = (dir.clone(), watching.clone(), unhealthy_samples.clone(), samples.clone());
        std::thread::spawn(move || {
            let mut worst_seen = 0u64;
            while watching.load(Ordering::Relaxed) {
                let rs = relays(&dir);
                samples.fetch_add(1, Ordering::Relaxed);
                if rs.len() != 2 || rs.iter().any(|r| r["status"] != "ready") {
                    unhealthy.fetch_add(1, Ordering::Relaxed);
                }
                worst_seen = rs.iter().filter_map(|r| r["last_seen_ms"].as_u64()).fold(worst_seen, u64::max);
                std::thread::sleep(Duration::from_millis(250));
            }
            worst_seen
        })
    };
    let started = Instant::now();
    let connections = 16u64;
    let answered: u64 = rt.block_on(async {
        let tasks: Vec<_> = (0..connections).map(|c| tokio::spawn(flood(addr, "127.0.0.2", c * (requests / connections), requests / connections))).collect();
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        total
    });
    let took = started.elapsed();
    let legit_during = legit_fetches(&dir, 20);
    watching.store(false, Ordering::Relaxed);
    let worst_last_seen = watcher.join().unwrap();
    let (unhealthy, samples) = (unhealthy_samples.load(Ordering::Relaxed), samples.load(Ordering::Relaxed));
    println!(
        "flood: {answered} of {requests} throwaway-key requests answered in {:.1}s ({:.0}/s); relays unhealthy in {unhealthy} of {samples} samples; longest since a heartbeat {worst_last_seen} ms",
        took.as_secs_f64(),
        answered as f64 / took.as_secs_f64()
    );
    assert_eq!(unhealthy, 0, "relays stayed ready through the flood");
    assert!(worst_last_seen < 1500, "no relay went a lease without an accepted heartbeat ({worst_last_seen} ms)");
    assert_eq!(legit_during, 20, "clients were served");
    for log in &mut relay_logs {
        let mut text = String::new();
        log.reopen().unwrap().read_to_string(&mut text).unwrap();
        let refused = text.lines().filter(|l| l.contains("refused") || l.contains("cannot reach")).count();
        let beats = took.as_millis() as usize / 300;
        assert!(refused * 100 <= beats, "heartbeats refused: {refused} of about {beats}:\n{text}");
    }

    // 2. 1,100 slow bodies and 64 bodies stalled after 15 MiB, from other addresses.
    let stop = Arc::new(AtomicBool::new(false));
    let attackers: Vec<_> = (0..1100)
        .map(|i| rt.spawn(slow_body(addr, if i % 2 == 0 { "127.0.0.3" } else { "127.0.0.4" }, stop.clone(), 0)))
        .chain((0..64).map(|_| rt.spawn(slow_body(addr, "127.0.0.5", stop.clone(), 15 << 20))))
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let legit = legit_fetches(&dir, 100);
    let rss_during = rss_kib(pid);
    let still_ready = relays(&dir).iter().filter(|r| r["status"] == "ready").count();
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for a in attackers {
            let _ = a.await;
        }
    });
    let growth_mib = rss_during.saturating_sub(rss_before) / 1024;
    println!("slow bodies: {legit} of 100 legitimate requests served; directory RSS {rss_before} KiB before, {rss_during} KiB during (+{growth_mib} MiB)");
    assert!(legit >= 99, "legitimate clients served during the slow-body attack: {legit}/100");
    assert_eq!(still_ready, 2);
    assert!(growth_mib < 100, "directory memory grew {growth_mib} MiB");
    let mut log = String::new();
    dir_log.reopen().unwrap().read_to_string(&mut log).unwrap();
    let lines = log.lines().count();
    assert!(lines < 2_000, "the directory's log stays short under the flood ({lines} lines)");
    drop(dir_log);
}
