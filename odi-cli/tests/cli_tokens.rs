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

fn directory(data: &Path) -> (Proc, String) {
    let port = free_port();
    let dir = format!("http://127.0.0.1:{port}");
    let child = Command::new(ODI)
        .args(["directory", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(data)
        .args(["--heartbeat-interval", "300ms", "--lease", "1500ms", "--probation", "0s"])
        .env("ODI_ADMIN_TOKEN", ADMIN)
        .env("ODI_ENROLL_TOKEN", ENROLL)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let proc = Proc(child);
    wait_for(20, "the directory", || Command::new("curl").args(["-sf", &format!("{dir}/healthz")]).output().is_ok_and(|o| o.status.success()));
    (proc, dir)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_publisher_token_publishes_to_its_catalog_only_until_it_is_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let (_directory, dir) = directory(&tmp.path().join("dir"));
    odi_ok(&["catalog", "create", "c", "--directory", &dir]);
    odi_ok(&["catalog", "create", "d", "--directory", &dir]);
    let refused = odi(&["token", "add", "nowhere", "--catalog", "x", "--directory", &dir]);
    assert!(!refused.status.success() && stderr(&refused).contains("x"), "a token for a catalog that does not exist: {refused:?}");
    let token = odi_ok(&["token", "add", "ci-c", "--catalog", "c", "--directory", &dir]).trim().to_owned();
    assert_eq!(token.len(), 64, "{token:?}");
    let file = tmp.path().join("release.tar.gz");
    std::fs::write(&file, b"a release of c").unwrap();
    let file = file.to_str().unwrap();

    let published = odi_as(&token, &["publish", "--directory", &dir, "--catalog", "c", file]);
    assert!(published.status.success(), "{}", stderr(&published));
    let tagged = odi_as(&token, &["tag", "--directory", &dir, "--catalog", "c", "release.tar.gz", "--add", "stable"]);
    assert!(tagged.status.success(), "{}", stderr(&tagged));
    let listing = odi_ok(&["ls", "--directory", &dir, "--catalog", "c"]);
    assert!(listing.contains("release.tar.gz") && listing.contains("stable"), "{listing}");

    // Another catalog, and every admin action: 403 with the reason.
    let elsewhere = odi_as(&token, &["publish", "--directory", &dir, "--catalog", "d", file]);
    assert!(
        !elsewhere.status.success() && stderr(&elsewhere).contains("403") && stderr(&elsewhere).contains("only list, publish and tag in catalog `c`"),
        "{elsewhere:?}"
    );
    for action in [
        vec!["catalog", "create", "e", "--directory", &dir],
        vec!["token", "add", "mine", "--directory", &dir],
        vec!["token", "ls", "--directory", &dir],
        vec!["relays", "--directory", &dir],
        vec!["expunge", "--directory", &dir, "--catalog", "c", "release.tar.gz"],
    ] {
        let out = odi_as(&token, &action);
        assert!(!out.status.success() && stderr(&out).contains("403"), "{action:?} with a publisher token: {out:?}");
    }
    let raw = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", &format!("Authorization: Bearer {token}")])
        .arg(format!("{dir}/api/v1/stats"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&raw.stdout), "403");

    let table = odi_ok(&["token", "ls", "--directory", &dir]);
    assert!(table.lines().any(|l| l.starts_with("ci-c") && l.contains("publish") && l.contains(" c ")), "{table}");
    odi_ok(&["token", "rm", "ci-c", "--directory", &dir]);
    std::fs::write(tmp.path().join("later.tar.gz"), b"after rm").unwrap();
    let after = odi_as(&token, &["publish", "--directory", &dir, "--catalog", "c", tmp.path().join("later.tar.gz").to_str().unwrap()]);
    assert!(!after.status.success() && stderr(&after).contains("403"), "a removed token still publishes: {after:?}");
    assert!(!odi_ok(&["ls", "--directory", &dir, "--catalog", "c"]).contains("later.tar.gz"));
}

#[test]
fn a_single_use_enrollment_token_enrolls_one_relay() {
    let tmp = tempfile::tempdir().unwrap();
    let (_directory, dir) = directory(&tmp.path().join("dir"));
    let once = odi_ok(&["token", "add", "once", "--single-use", "--directory", &dir]).trim().to_owned();
    let (mut first, first_url) = relay(&tmp.path().join("first"), &dir, &once);
    wait_for(30, "the first relay ready", || relays(&dir).iter().any(|r| r["url"] == first_url && r["status"] == "ready"));
    let table = odi_ok(&["token", "ls", "--directory", &dir]);
    assert!(table.lines().any(|l| l.starts_with("once") && l.contains("enroll") && l.contains("used")), "{table}");

    // A second relay, run by hand to read its answer: refused, and told why.
    let port = free_port();
    let second_url = format!("http://127.0.0.1:{port}");
    let mut second = Command::new(ODI)
        .args(["relay", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(tmp.path().join("second"))
        .args(["--directory", &dir, "--public-url", &second_url, "--disk-budget", "1GiB"])
        .env("ODI_ENROLL_TOKEN", &once)
        .env("ODI_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let _ = second.kill();
    let out = second.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("single-use enrollment token `once` already enrolled relay"), "{log}");
    assert!(relays(&dir).iter().all(|r| r["url"] != second_url), "the second relay enrolled");

    // The first relay, restarted, enrolls again with its spent token.
    drop(first.0.kill());
    let _ = first.0.wait();
    let (_again, _) = relay_at(&tmp.path().join("first"), &dir, &once, &first_url);
    std::thread::sleep(Duration::from_secs(1));
    wait_for(30, "the first relay back", || relays(&dir).iter().any(|r| r["url"] == first_url && r["status"] == "ready"));
    assert_eq!(relays(&dir).len(), 1);
}

fn relay_at(data: &Path, directory: &str, token: &str, url: &str) -> (Proc, String) {
    let listen = url.trim_start_matches("http://");
    let child = Command::new(ODI)
        .args(["relay", "--listen", listen, "--data"])
        .arg(data)
        .args(["--directory", directory, "--public-url", url, "--disk-budget", "1GiB"])
        .env("ODI_ENROLL_TOKEN", token)
        .env("ODI_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (Proc(child), url.to_owned())
}
