//! Webhooks end to end with the real binary: a receiver on loopback that checks every
//! signature answers 500 for a while, then hangs past the attempt timeout, then recovers; the
//! directory is killed and restarted in between; every one of 1,000 notices arrives, exactly
//! once after dedupe by `ODI-Delivery`.

mod common;

use std::collections::HashSet;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use hmac::{KeyInit as _, Mac as _};

const ADMIN: &str = "7e6d5c4b3a29180f7e6d5c4b3a29180f7e6d5c4b3a29180f7e6d5c4b3a29180f";
const NOTICES: usize = 1000;
/// Requests answered 500, then requests left hanging past the directory's attempt timeout.
const FAILING: usize = 300;
const HANGING: usize = 40;
/// Deliveries accepted before the receiver answers 503 until the directory has restarted.
const BEFORE_RESTART: usize = 100;

#[derive(Default)]
struct Received {
    requests: AtomicUsize,
    /// Delivery ids answered 200, with how often each came.
    ok: Mutex<Vec<String>>,
    bad_signatures: AtomicUsize,
    secret: Mutex<String>,
    /// Set once the directory has restarted: 503s stop.
    restarted: std::sync::atomic::AtomicBool,
}

/// Reads one HTTP/1.1 request: (headers lower-cased, body); `None` at end of stream.
/// Headers (name lower-cased, value) and body.
type Request = (Vec<(String, String)>, Vec<u8>);

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let len: usize = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some((headers, body))
}

fn valid(secret: &str, sig: &str, body: &[u8]) -> bool {
    let (Some(t), Some(v1)) = (sig.split(',').find_map(|p| p.strip_prefix("t=")), sig.split(',').find_map(|p| p.strip_prefix("v1="))) else { return false };
    let Ok(t_num) = t.parse::<u64>() else { return false };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    if t_num.abs_diff(now) > 300 {
        return false;
    }
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    hex_decode(v1).is_some_and(|want| mac.verify_slice(&want).is_ok())
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok())).collect()
}

fn serve(conn: TcpStream, state: Arc<Received>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    while let Some((headers, body)) = read_request(&mut reader) {
        let n = state.requests.fetch_add(1, Ordering::SeqCst);
        let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default();
        if n < FAILING {
            let _ = conn.write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n");
            continue;
        }
        if n < FAILING + HANGING {
            std::thread::sleep(Duration::from_millis(1500));
            return;
        }
        let secret = state.secret.lock().unwrap().clone();
        if !valid(&secret, &header("odi-signature"), &body) {
            state.bad_signatures.fetch_add(1, Ordering::SeqCst);
            let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
            continue;
        }
        let notice: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(notice["kind"], header("odi-event"));
        {
            let mut ok = state.ok.lock().unwrap();
            if ok.len() >= BEFORE_RESTART && !state.restarted.load(Ordering::SeqCst) {
                let _ = conn.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n");
                continue;
            }
            ok.push(header("odi-delivery"));
        }
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
    }
}

fn directory(data: &Path, port: u16) -> Proc {
    Proc(
        Command::new(ODI)
            .args(["directory", "--listen", &format!("127.0.0.1:{port}"), "--data"])
            .arg(data)
            .args(["--allow-private-origins", "--webhook-retry-base", "50ms", "--webhook-retry-cap", "400ms", "--webhook-timeout", "500ms"])
            .env("ODI_ADMIN_TOKEN", ADMIN)
            .env("ODI_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    )
}

fn healthy(dir: &str) -> bool {
    curl(&["-f", &format!("{dir}/healthz")]).status.success()
}

#[test]
fn a_thousand_notices_arrive_once_each_through_failures_hangs_and_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let dir = format!("http://127.0.0.1:{port}");
    let mut directory_proc = directory(&tmp.path().join("dir"), port);
    wait_for(30, "the directory", || healthy(&dir));

    let state = Arc::new(Received::default());
    let receiver = TcpListener::bind("127.0.0.1:0").unwrap();
    let hook_url = format!("http://{}/hook", receiver.local_addr().unwrap());
    {
        let state = state.clone();
        std::thread::spawn(move || {
            for conn in receiver.incoming().flatten() {
                let state = state.clone();
                std::thread::spawn(move || serve(conn, state));
            }
        });
    }

    let unknown = odi_as(ADMIN, &["webhook", "add", "--directory", &dir, "--url", &hook_url, "--event", "catalog.made"]);
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(!unknown.status.success() && stderr.contains("unknown event kind `catalog.made`") && stderr.contains("catalog.created"), "{stderr}");

    let secret = odi_ok_as(ADMIN, &["webhook", "add", "--directory", &dir, "--url", &hook_url, "--event", "catalog.created"]).trim().to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    *state.secret.lock().unwrap() = secret;
    let listed = odi_ok_as(ADMIN, &["webhook", "ls", "--directory", &dir]);
    assert!(listed.contains(&hook_url) && listed.contains("catalog.created"), "{listed}");
    let hooks: serde_json::Value = serde_json::from_str(&odi_ok_as(ADMIN, &["webhook", "ls", "--directory", &dir, "--json"])).unwrap();
    let id = hooks[0]["id"].as_str().unwrap().to_owned();

    // 1,000 admin changes over one keep-alive connection.
    let started = Instant::now();
    let config = tmp.path().join("requests.curl");
    let create = |range: std::ops::Range<usize>| {
        let mut text = String::new();
        for i in range.clone() {
            text.push_str(&format!(
            "url = \"{dir}/api/v1/catalogs\"\nrequest = \"POST\"\nheader = \"Authorization: Bearer {ADMIN}\"\nheader = \"Content-Type: application/json\"\ndata = \"{{\\\"name\\\": \\\"c{i}\\\"}}\"\noutput = \"/dev/null\"\nwrite-out = \"%{{http_code}}\\\\n\"\nnext\n"
        ));
        }
        std::fs::write(&config, text).unwrap();
        let out = curl(&["--max-time", "300", "-K", config.to_str().unwrap()]);
        let codes = String::from_utf8_lossy(&out.stdout);
        assert_eq!(codes.lines().filter(|c| *c == "201").count(), range.len(), "every catalog created: {}", String::from_utf8_lossy(&out.stderr));
    };
    create(0..NOTICES / 2);

    // Killed in the middle: after 500 failures and hangs and some deliveries, with the rest
    // pending (the receiver answers 503 past BEFORE_RESTART); they resume after the restart.
    wait_for(60, "deliveries before the restart", || state.ok.lock().unwrap().len() >= BEFORE_RESTART);
    let log: Vec<serde_json::Value> =
        serde_json::from_str(&odi_ok_as(ADMIN, &["webhook", "deliveries", &id, "--directory", &dir, "--limit", "2000", "--json"])).unwrap();
    let pending = log.iter().filter(|d| d["status"] == "pending").count();
    assert!(pending >= NOTICES / 2 - BEFORE_RESTART, "pending at the restart: {pending}");
    drop(directory_proc);
    directory_proc = directory(&tmp.path().join("dir"), port);
    wait_for(30, "the directory again", || healthy(&dir));
    state.restarted.store(true, Ordering::SeqCst);
    create(NOTICES / 2..NOTICES);
    let made = started.elapsed();

    wait_for(120, "every notice delivered", || state.ok.lock().unwrap().iter().collect::<HashSet<_>>().len() >= NOTICES);
    let elapsed = started.elapsed();
    let ok = state.ok.lock().unwrap().clone();
    let unique: HashSet<&String> = ok.iter().collect();
    assert_eq!(unique.len(), NOTICES, "exactly the 1,000 deliveries, by id");
    assert_eq!(state.bad_signatures.load(Ordering::SeqCst), 0, "every signature valid");
    assert!(state.requests.load(Ordering::SeqCst) >= NOTICES + FAILING + HANGING);

    let log: Vec<serde_json::Value> =
        serde_json::from_str(&odi_ok_as(ADMIN, &["webhook", "deliveries", &id, "--directory", &dir, "--limit", "2000", "--json"])).unwrap();
    wait_for(10, "the log to show them delivered", || {
        let log: Vec<serde_json::Value> =
            serde_json::from_str(&odi_ok_as(ADMIN, &["webhook", "deliveries", &id, "--directory", &dir, "--limit", "2000", "--json"])).unwrap();
        log.iter().filter(|d| d["status"] == "delivered").count() == NOTICES
    });
    assert_eq!(log.len(), NOTICES);
    let retried = log.iter().filter(|d| d["attempts"].as_u64().unwrap_or(0) > 1).count();
    assert!(retried > 0, "some deliveries needed more than one attempt");
    eprintln!(
        "webhooks: {NOTICES} notices made in {made:.2?}, all delivered in {elapsed:.2?} with {} requests ({} delivered and {pending} pending at the restart, {} duplicates deduped, {retried} deliveries retried)",
        state.requests.load(Ordering::SeqCst),
        BEFORE_RESTART,
        ok.len() - unique.len()
    );

    let removed = odi_ok_as(ADMIN, &["webhook", "rm", &id, "--directory", &dir]);
    assert!(removed.contains(&id), "{removed}");
    assert!(odi_ok_as(ADMIN, &["webhook", "ls", "--directory", &dir, "--json"]).trim() == "[]");
    drop(directory_proc);
}

#[test]
fn a_loopback_receiver_needs_allow_private_origins() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let dir = format!("http://127.0.0.1:{port}");
    let _directory = Proc(
        Command::new(ODI)
            .args(["directory", "--listen", &format!("127.0.0.1:{port}"), "--data"])
            .arg(tmp.path().join("dir"))
            .env("ODI_ADMIN_TOKEN", ADMIN)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(30, "the directory", || healthy(&dir));
    let refused = odi_as(ADMIN, &["webhook", "add", "--directory", &dir, "--url", "http://127.0.0.1:9/hook"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("loopback") && stderr.contains("--allow-private-origins"), "{stderr}");
    assert_eq!(odi_ok_as(ADMIN, &["webhook", "ls", "--directory", &dir, "--json"]).trim(), "[]");
}
