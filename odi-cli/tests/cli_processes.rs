//! The `odi` binary as an operator runs it: separate processes on loopback, real `curl`,
//! `kill -9`, and a directory crash and restart.

mod common;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

const ADMIN: &str = "c0a1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1";
const ENROLL: &str = "c1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2";

struct Proc {
    child: Child,
    name: &'static str,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn kill9(mut self) {
        // SIGKILL: no shutdown code runs.
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("killed {}", self.name);
    }
}

fn odi(args: &[&str]) -> Output {
    odi_as(ADMIN, args)
}

fn odi_ok(args: &[&str]) -> String {
    let out = odi(args);
    assert!(out.status.success(), "odi {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn spawn(name: &'static str, args: &[&str]) -> Proc {
    Proc { child: spawn_odi(ADMIN, ENROLL, args), name }
}

fn start_directory(data: &Path, port: u16) -> Proc {
    let listen = format!("127.0.0.1:{port}");
    let p = spawn(
        "directory",
        &["directory", "--listen", &listen, "--data", data.to_str().unwrap(), "--heartbeat-interval", "300ms", "--lease", "1500ms", "--probation", "0s"],
    );
    wait_for(20, "the directory to answer", || curl(&[&format!("http://{listen}/healthz")]).status.success());
    p
}

fn start_relay(data: &Path, dir: &str, port: u16) -> Proc {
    let url = format!("http://127.0.0.1:{port}");
    spawn(
        "relay",
        &[
            "relay",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data",
            data.to_str().unwrap(),
            "--directory",
            dir,
            "--public-url",
            &url,
            "--disk-budget",
            "1GiB",
        ],
    )
}

fn relays_json(dir: &str) -> serde_json::Value {
    serde_json::from_str(&odi_ok(&["relays", "--directory", dir, "--json"])).unwrap()
}

fn ready_count(dir: &str) -> usize {
    relays_json(dir).as_array().unwrap().iter().filter(|r| r["status"] == "ready").count()
}

fn sha256_file(path: &Path) -> String {
    odi_core::Digest::of(&std::fs::read(path).unwrap()).to_hex()
}

fn blob_files(dir: &Path) -> Vec<(PathBuf, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.join("blobs").join("blobs")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push((e.path(), e.metadata().unwrap().modified().unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn operator_flow_with_kill_and_directory_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let (dport, r1port, r2port) = (free_port(), free_port(), free_port());
    let dir_url = format!("http://127.0.0.1:{dport}");
    let dir = start_directory(&tmp.path().join("dir"), dport);

    odi_ok(&["catalog", "create", "rel", "--directory", &dir_url, "--replicas", "2"]);
    let files = [("empty.txt", 0usize), ("one.bin", 1), ("big.bin", (5 << 20) + 1)];
    for (name, len) in files {
        let path = tmp.path().join(name);
        std::fs::write(&path, (0..len).map(|i| (i * 7 % 253) as u8).collect::<Vec<_>>()).unwrap();
        let out = odi_ok(&["publish", "--directory", &dir_url, "--catalog", "rel", path.to_str().unwrap()]);
        assert!(out.starts_with("published rel/"), "{out}");
    }
    let r1 = start_relay(&tmp.path().join("r1"), &dir_url, r1port);
    let _r2 = start_relay(&tmp.path().join("r2"), &dir_url, r2port);
    let t0 = Instant::now();
    wait_for(30, "two ready relays", || ready_count(&dir_url) == 2);
    eprintln!("relays ready {:.2}s after start", t0.elapsed().as_secs_f64());

    for (name, _) in files {
        let out = tmp.path().join(format!("{name}.curl"));
        let res = curl(&["-L", "-o", out.to_str().unwrap(), "-w", "%{url_effective}", &format!("{dir_url}/r/rel/{name}")]);
        assert!(res.status.success(), "curl {name}: {}", String::from_utf8_lossy(&res.stderr));
        let effective = String::from_utf8_lossy(&res.stdout).into_owned();
        assert!(effective.contains(&format!(":{r1port}/")) || effective.contains(&format!(":{r2port}/")), "answered by a relay: {effective}");
        assert_eq!(sha256_file(&out), sha256_file(&tmp.path().join(name)), "{name}");
    }
    let odi_get = tmp.path().join("big.get");
    odi_ok(&["get", &format!("{dir_url}/r/rel/big.bin"), "-o", odi_get.to_str().unwrap()]);
    assert_eq!(sha256_file(&odi_get), sha256_file(&tmp.path().join("big.bin")));

    // kill -9 one relay: within the lease the directory sends clients to the other one.
    let relay1_blobs = blob_files(&tmp.path().join("r1"));
    r1.kill9();
    wait_for(10, "redirects to avoid the killed relay", || {
        let head = curl(&["-sI", &format!("{dir_url}/r/rel/big.bin")]);
        let text = String::from_utf8_lossy(&head.stdout).to_lowercase();
        text.contains(&format!("location: http://127.0.0.1:{r2port}/")) && !text.contains(&format!(":{r1port}/"))
    });

    // Crash the directory (kill -9) and start it again on the same port and data.
    let r2_blobs = blob_files(&tmp.path().join("r2"));
    dir.kill9();
    let _dir = start_directory(&tmp.path().join("dir"), dport);
    let ls = odi_ok(&["catalog", "ls", "--directory", &dir_url]);
    assert!(ls.lines().any(|l| l.starts_with("rel ") && l.split_whitespace().nth(2) == Some("3")), "{ls}");
    assert_eq!(relays_json(&dir_url).as_array().unwrap().len(), 2, "no relay forgotten");
    wait_for(20, "the surviving relay to be ready again", || ready_count(&dir_url) == 1);
    let out = tmp.path().join("after-restart");
    assert!(curl(&["-L", "-o", out.to_str().unwrap(), &format!("{dir_url}/r/rel/big.bin")]).status.success());
    assert_eq!(sha256_file(&out), sha256_file(&tmp.path().join("big.bin")));
    assert_eq!(blob_files(&tmp.path().join("r2")), r2_blobs, "the relay did not download again");

    // The killed relay comes back with its disk and is ready without downloading again.
    let _r1 = start_relay(&tmp.path().join("r1"), &dir_url, r1port);
    wait_for(20, "the restarted relay to be ready", || ready_count(&dir_url) == 2);
    assert_eq!(blob_files(&tmp.path().join("r1")), relay1_blobs);
}

#[test]
fn cli_errors_are_one_line_and_exit_non_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let dir_url = format!("http://127.0.0.1:{port}");
    let _dir = start_directory(&tmp.path().join("dir"), port);
    let file = tmp.path().join("f.txt");
    std::fs::write(&file, "x").unwrap();

    let no_token =
        Command::new(ODI).args(["publish", "--directory", &dir_url, "--catalog", "c", file.to_str().unwrap()]).env_remove("ODI_ADMIN_TOKEN").output().unwrap();
    let wrong = Command::new(ODI).args(["catalog", "ls", "--directory", &dir_url]).env("ODI_ADMIN_TOKEN", "nope").output().unwrap();
    let unknown = odi(&["publish", "--directory", &dir_url, "--catalog", "nope", file.to_str().unwrap()]);
    let missing = odi(&["publish", "--directory", &dir_url, "--catalog", "nope", "/no/such/file"]);
    let down = odi(&["catalog", "ls", "--directory", &format!("http://127.0.0.1:{}", free_port())]);
    let size = odi(&["relay", "--listen", "127.0.0.1:0", "--data", "x", "--directory", &dir_url, "--public-url", "http://x", "--disk-budget", "lots"]);
    for (out, expect) in [
        (&no_token, "ODI_ADMIN_TOKEN"),
        (&wrong, "admin token is wrong"),
        (&unknown, "odi catalog create nope"),
        (&missing, "/no/such/file"),
        (&down, "cannot reach"),
        (&size, "not a size"),
    ] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "expected failure: {stderr}");
        assert!(stderr.contains(expect), "`{expect}` not in: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn odi_dev_prints_a_curl_command_that_works() {
    let tmp = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut child = Command::new(ODI).args(["dev", "--data", tmp.path().to_str().unwrap()]).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut curl_line = None;
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) {
        if line.trim_start().starts_with("curl -L ") {
            curl_line = Some(line.trim().to_owned());
        }
        if line.contains("Ctrl-C") {
            break;
        }
    }
    let curl_line = curl_line.expect("odi dev prints a curl -L command");
    let out = Command::new("sh").args(["-c", &format!("{curl_line} -sS --max-time 10")]).output().unwrap();
    eprintln!("odi dev: working curl {:.2}s after start", started.elapsed().as_secs_f64());
    assert!(out.status.success(), "{curl_line}: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Hello from ODI"), "{}", String::from_utf8_lossy(&out.stdout));

    // Ctrl-C stops everything cleanly.
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "odi dev exited with {status}");
            break;
        }
        assert!(Instant::now() < deadline, "odi dev did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn chunks_verified_on_disk(path: &Path, data: &[u8], chunk: usize) -> usize {
    let Ok(disk) = std::fs::read(path) else { return 0 };
    data.chunks(chunk).enumerate().filter(|(i, c)| disk.get(i * chunk..i * chunk + c.len()) == Some(*c)).count()
}

fn node_blob_bytes(dir: &str) -> u64 {
    let out = Command::new("curl").args(["-sS", "-H", &format!("Authorization: Bearer {ADMIN}"), &format!("{dir}/api/v1/stats")]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["node_blob_bytes"].as_u64().unwrap()
}

#[test]
fn a_syncing_relay_killed_at_twenty_points_never_serves_bad_bytes_and_refetches_only_in_flight_chunks() {
    const CHUNK: usize = 1 << 20;
    // Most chunks one relay keeps in flight from the directory (4 requests of 4 chunks).
    const MAX_IN_FLIGHT: u64 = 16;
    let tmp = tempfile::tempdir().unwrap();
    let (dport, rport) = (free_port(), free_port());
    let dir_url = format!("http://127.0.0.1:{dport}");
    let _dir = start_directory(&tmp.path().join("dir"), dport);
    odi_ok(&["catalog", "create", "rel", "--directory", &dir_url, "--replicas", "1"]);
    let data: Vec<u8> = (0..96 * CHUNK).map(|i| ((i as u64).wrapping_mul(0x9E37_79B9) >> 13) as u8).collect();
    let file = tmp.path().join("big.bin");
    std::fs::write(&file, &data).unwrap();
    odi_ok(&["publish", "--directory", &dir_url, "--catalog", "rel", file.to_str().unwrap()]);
    let hex = odi_core::Digest::of(&data).to_hex();
    let relay_data = tmp.path().join("relay");
    let partial = relay_data.join("blobs/partial").join(&hex);
    let blob = relay_data.join("blobs/blobs/sha256").join(&hex[..2]).join(&hex);
    let points = [
        "mid-chunk:3",
        "chunk-received:2",
        "chunk-written:4",
        "mid-chunk:9",
        "chunk-written:1",
        "chunk-received:5",
        "mid-chunk:1",
        "chunk-written:3",
        "mid-chunk:6",
        "chunk-received:1",
        "chunk-written:2",
        "mid-chunk:2",
        "chunk-received:3",
        "chunk-written:5",
        "mid-chunk:4",
        "chunk-received:4",
        "chunk-written:1",
        "before-fsync:1",
        "after-fsync:1",
        "after-rename:1",
    ];
    let mut refetched_per_kill = Vec::new();
    for point in points {
        let served_before = node_blob_bytes(&dir_url);
        let on_disk_before = chunks_verified_on_disk(&partial, &data, CHUNK);
        let url = format!("http://127.0.0.1:{rport}");
        let mut child = Command::new(ODI)
            .args(["relay", "--listen", &format!("127.0.0.1:{rport}"), "--data", relay_data.to_str().unwrap(), "--directory", &dir_url, "--public-url", &url])
            .args(["--disk-budget", "1GiB", "--bandwidth", "200MB/s"])
            .env("ODI_ENROLL_TOKEN", ENROLL)
            .env("ODI_CRASH_POINT", point)
            .env("ODI_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the relay never reached crash point {point}");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(!status.success(), "{point}: the relay should have crashed");
        // Whatever was on disk at the crash: never a wrong blob in place.
        if let Ok(bytes) = std::fs::read(&blob) {
            assert_eq!(odi_core::Digest::of(&bytes).to_hex(), hex, "{point}: a published blob is always whole and right");
        }
        let served = node_blob_bytes(&dir_url) - served_before;
        let on_disk_after = if blob.exists() { data.len() / CHUNK } else { chunks_verified_on_disk(&partial, &data, CHUNK) };
        let kept = (on_disk_after.saturating_sub(on_disk_before) * CHUNK) as u64;
        let lost = served.saturating_sub(kept);
        assert!(lost <= MAX_IN_FLIGHT * CHUNK as u64, "{point}: {lost} bytes fetched and lost, more than the chunks in flight");
        refetched_per_kill.push(lost);
        eprintln!("{point}: fetched {served} bytes, kept {kept}, lost {lost}");
    }
    // The last start: no crash point; it holds the blob already and becomes ready without a download.
    let served_before = node_blob_bytes(&dir_url);
    let _relay = start_relay(&relay_data, &dir_url, rport);
    wait_for(30, "the relay to be ready", || ready_count(&dir_url) == 1);
    assert_eq!(node_blob_bytes(&dir_url), served_before, "nothing fetched after the blob was published");
    let out = tmp.path().join("after.bin");
    assert!(curl(&["-L", "-o", out.to_str().unwrap(), &format!("{dir_url}/r/rel/big.bin")]).status.success());
    assert_eq!(sha256_file(&out), hex);
    assert!(!partial.exists(), "no partial download left behind");
    let total: u64 = refetched_per_kill.iter().sum();
    println!(
        "crash test: {} kills, {} bytes fetched again in all, at most {} per kill (mean {:.1} chunks; bound {MAX_IN_FLIGHT} chunks in flight)",
        refetched_per_kill.len(),
        total,
        refetched_per_kill.iter().max().unwrap(),
        total as f64 / refetched_per_kill.len() as f64 / CHUNK as f64
    );
}
