//! An operator whose relay gets no traffic reads why in the relay's own log and `/healthz`:
//! `odi directory` and `odi relay` as separate processes, the relay announcing a public URL
//! that nothing answers at.

mod common;

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn curl(url: &str) -> Option<String> {
    let out = Command::new("curl").args(["-sS", "--max-time", "5", url]).output().expect("curl is installed");
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn a_relay_with_an_unreachable_public_url_logs_the_reason_and_shows_it_in_healthz() {
    let tmp = tempfile::tempdir().unwrap();
    let (dport, rport, dead) = (free_port(), free_port(), free_port());
    let dir_url = format!("http://127.0.0.1:{dport}");
    let _dir = Proc(
        Command::new(ODI)
            .args(["directory", "--listen", &format!("127.0.0.1:{dport}"), "--data"])
            .arg(tmp.path().join("dir"))
            .args(["--heartbeat-interval", "300ms", "--lease", "1500ms"])
            .env("ODI_ENROLL_TOKEN", "5e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f")
            .env("ODI_ADMIN_TOKEN", "5a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while curl(&format!("{dir_url}/healthz")).is_none() {
        assert!(Instant::now() < deadline, "the directory did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = tmp.path().join("relay.log");
    let mut relay = Proc(
        Command::new(ODI)
            .args(["relay", "--listen", &format!("127.0.0.1:{rport}"), "--data"])
            .arg(tmp.path().join("relay"))
            .args(["--directory", &dir_url, "--public-url", &format!("http://127.0.0.1:{dead}"), "--disk-budget", "1GiB"])
            .env("ODI_ENROLL_TOKEN", "5e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let healthz = format!("http://127.0.0.1:{rport}/healthz");
    let deadline = Instant::now() + Duration::from_secs(20);
    let health = loop {
        if let Some(body) = curl(&healthz) {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            if v["reason"].as_str().is_some_and(|r| r.contains("self-test") && r.contains("failed")) {
                break v;
            }
        }
        assert!(Instant::now() < deadline, "healthz never showed why: {:?}", curl(&healthz));
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(health["status"], "enrolled", "{health}");
    assert!(health["reason"].as_str().unwrap().contains(&format!("127.0.0.1:{dead}")), "names the URL it tried: {health}");
    let _ = relay.0.kill();
    let _ = relay.0.wait();
    let mut text = String::new();
    std::fs::File::open(&log).unwrap().read_to_string(&mut text).unwrap();
    let line = text.lines().find(|l| l.contains("no clients")).unwrap_or_else(|| panic!("the relay's log does not say why:\n{text}"));
    assert!(line.contains("self-test") && line.contains(&format!("127.0.0.1:{dead}")), "{line}");
}
