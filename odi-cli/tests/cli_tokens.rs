//! Named enrollment tokens as an admin uses them: `odi token add` for one operator, their relay
//! enrolls with it, `odi token ls` counts it, `odi token revoke` quarantines it and keeps the
//! token from enrolling anything again.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const ADMIN: &str = "5c4b3a29180f7e6d5c4b3a29180f7e6d5c4b3a29180f7e6d5c4b3a29180f7e6d";
const ENROLL: &str = "6d5c4b3a29180f7e6d5c4b3a29180f7e6d5c4b3a29180f7e6d5c4b3a29180f7e";

fn odi(args: &[&str]) -> Output {
    odi_as(ADMIN, args)
}

fn odi_ok(args: &[&str]) -> String {
    let out = odi(args);
    assert!(out.status.success(), "odi {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn relay(data: &Path, directory: &str, token: &str) -> (Proc, String) {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let child = Command::new(ODI)
        .args(["relay", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(data)
        .args(["--directory", directory, "--public-url", &url, "--disk-budget", "1GiB"])
        .env("ODI_ENROLL_TOKEN", token)
        .env("ODI_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (Proc(child), url)
}

fn relays(dir: &str) -> Vec<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(&odi_ok(&["relays", "--directory", dir, "--json"])).unwrap().as_array().cloned().unwrap_or_default()
}

fn wait_for(secs: u64, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_operator_token_enrolls_their_relays_and_revoking_it_bars_them() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let dir = format!("http://127.0.0.1:{port}");
    let _directory = Proc(
        Command::new(ODI)
            .args(["directory", "--listen", &format!("127.0.0.1:{port}"), "--data"])
            .arg(tmp.path().join("dir"))
            .args(["--heartbeat-interval", "300ms", "--lease", "1500ms", "--probation", "0s"])
            .env("ODI_ADMIN_TOKEN", ADMIN)
            .env("ODI_ENROLL_TOKEN", ENROLL)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(20, "the directory", || Command::new("curl").args(["-sf", &format!("{dir}/healthz")]).output().is_ok_and(|o| o.status.success()));

    let alice = odi_ok(&["token", "add", "alice", "--directory", &dir]).trim().to_owned();
    assert_eq!(alice.len(), 64, "a 256-bit token on stdout, alone: {alice:?}");
    let again = odi(&["token", "add", "alice", "--directory", &dir]);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("exists already"), "{again:?}");

    let (_theirs, their_url) = relay(&tmp.path().join("alice-1"), &dir, &alice);
    let (_ours, our_url) = relay(&tmp.path().join("ours"), &dir, ENROLL);
    wait_for(30, "both relays ready", || relays(&dir).iter().filter(|r| r["status"] == "ready").count() == 2);
    let listed: serde_json::Value = serde_json::from_str(&odi_ok(&["token", "ls", "--directory", &dir, "--json"])).unwrap();
    assert_eq!(listed[0]["name"], "alice");
    assert_eq!(listed[0]["relays"], 1);
    let table = odi_ok(&["token", "ls", "--directory", &dir]);
    assert!(table.lines().nth(1).is_some_and(|l| l.starts_with("alice") && l.contains("valid")), "{table}");

    let out = odi_ok(&["token", "revoke", "alice", "--directory", &dir]);
    assert!(out.contains("1 relays enrolled with it are quarantined"), "{out}");
    let status = |url: &str| relays(&dir).into_iter().find(|r| r["url"] == url).map(|r| r["status"].as_str().unwrap_or("").to_owned());
    assert_eq!(status(&their_url).as_deref(), Some("quarantined"));
    wait_for(10, "the other operator's relay to stay ready", || status(&our_url).as_deref() == Some("ready"));

    // Another relay with the revoked token never gets in.
    let (_late, late_url) = relay(&tmp.path().join("alice-2"), &dir, &alice);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(status(&late_url), None, "a revoked token enrolls nothing");
    let unknown = odi(&["token", "revoke", "bob", "--directory", &dir]);
    assert!(!unknown.status.success() && String::from_utf8_lossy(&unknown.stderr).contains("odi token ls"), "{unknown:?}");
}
