//! Federation by links over real `odi` processes on loopback: directories linked with
//! `odi link add`, each with a relay; what is published, tagged or expunged on one reaches the
//! others (checked with `curl -L` and the bytes' SHA-256), across a crash, a chain and a
//! partition.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use common::*;
use serde_json::Value;

const ADMIN: &str = "f0a1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1";
const ENROLL: &str = "f1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2";

/// One directory and, optionally, its relay.
struct Node {
    name: &'static str,
    data: PathBuf,
    port: u16,
    link_token: String,
    dir: Option<Child>,
    relay: Option<Child>,
    relay_port: u16,
}

impl Drop for Node {
    fn drop(&mut self) {
        for c in [self.dir.as_mut(), self.relay.as_mut()].into_iter().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Node {
    fn new(root: &Path, name: &'static str) -> Self {
        let link_token = format!("{:0<64}", format!("{name}11223344556677889900aabbccddeeff"));
        Self { name, data: root.join(name), port: free_port(), link_token, dir: None, relay: None, relay_port: free_port() }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn relay_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.relay_port)
    }

    fn start(&mut self) {
        let listen = format!("127.0.0.1:{}", self.port);
        let child = Command::new(ODI)
            .args(["directory", "--listen", &listen, "--data", self.data.to_str().unwrap()])
            .args(["--heartbeat-interval", "300ms", "--lease", "1500ms", "--probation", "0s", "--probe-interval", "1s"])
            .env("ODI_ADMIN_TOKEN", ADMIN)
            .env("ODI_ENROLL_TOKEN", ENROLL)
            .env("ODI_LINK_TOKEN", &self.link_token)
            .env("ODI_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn odi directory");
        self.dir = Some(child);
        let url = self.url();
        wait_for(20, &format!("directory {} to answer", self.name), || curl(&[&format!("{url}/healthz")]).status.success());
    }

    fn start_relay(&mut self, tags: &[&str]) {
        let mut args: Vec<String> = ["relay", "--listen", &format!("127.0.0.1:{}", self.relay_port), "--data"].iter().map(|s| (*s).to_owned()).collect();
        args.push(self.data.with_extension("relay").to_str().unwrap().to_owned());
        args.extend(["--directory".to_owned(), self.url(), "--public-url".to_owned(), self.relay_url(), "--disk-budget".to_owned(), "1GiB".to_owned()]);
        for t in tags {
            args.extend(["--tag".to_owned(), (*t).to_owned()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.relay = Some(spawn_odi(ADMIN, ENROLL, &args));
    }

    /// SIGKILL: no shutdown code runs.
    fn kill(&mut self) {
        if let Some(mut c) = self.dir.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn relay_ready(&self) -> bool {
        let out = odi(&["relays", "--directory", &self.url(), "--json"]);
        out.status.success()
            && serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|v| v.as_array().is_some_and(|a| a.iter().any(|r| r["status"] == "ready")))
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

/// `odi link add --directory a --peer b`, with b's link token.
fn link(a: &Node, b: &Node, extra: &[&str]) {
    let (da, db) = (a.url(), b.url());
    let mut args = vec!["link", "add", "--directory", &da, "--peer", &db];
    args.extend_from_slice(extra);
    let out = Command::new(ODI).args(&args).env("ODI_ADMIN_TOKEN", ADMIN).env("ODI_PEER_TOKEN", &b.link_token).output().unwrap();
    assert!(out.status.success(), "odi link add {} -> {}: {}", a.name, b.name, String::from_utf8_lossy(&out.stderr));
}

/// The SHA-256 of what `curl -L url` returns, and the URL that answered; `None` unless 200.
fn fetch(url: &str) -> Option<(String, String)> {
    let out = curl(&["-L", "-o", "-", "-w", "\n%{http_code} %{url_effective}", url]);
    if !out.status.success() {
        return None;
    }
    let split = out.stdout.iter().rposition(|b| *b == b'\n')?;
    let (body, tail) = out.stdout.split_at(split);
    let tail = String::from_utf8_lossy(&tail[1..]).into_owned();
    let (code, effective) = tail.split_once(' ')?;
    (code == "200").then(|| (sha256_hex(body), effective.to_owned()))
}

fn status(url: &str) -> String {
    let out = curl(&["-o", "/dev/null", "-w", "%{http_code}", url]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| ((i * 31) as u8) ^ seed).collect()
}

fn publish(node: &Node, root: &Path, path: &str, data: &[u8], tags: &[&str]) {
    let file = root.join(format!("{}-{}", node.name, path.replace('/', "_")));
    std::fs::write(&file, data).unwrap();
    let url = node.url();
    let mut args = vec!["publish", "--directory", &url, "--catalog", "rel", "--path", path];
    for t in tags {
        args.extend(["--tag", t]);
    }
    args.push(file.to_str().unwrap());
    odi_ok(&args);
}

/// Waits until `node` serves `path` with `want`'s SHA-256, through one of its relays when
/// `via_relay`.
fn wait_served(node: &Node, path: &str, want: &[u8], via_relay: bool, secs: u64) {
    let want = sha256_hex(want);
    let url = format!("{}/r/rel/{path}", node.url());
    let relay = format!(":{}/", node.relay_port);
    wait_for(secs, &format!("{} to serve {path}{}", node.name, if via_relay { " from its relay" } else { "" }), || {
        fetch(&url).is_some_and(|(sha, effective)| sha == want && (!via_relay || effective.contains(&relay)))
    });
}

fn listing(node: &Node) -> Value {
    serde_json::from_str(&odi_ok(&["ls", "--directory", &node.url(), "--catalog", "rel", "--json"])).unwrap()
}

#[test]
fn three_linked_directories_serve_every_publish_and_catch_up_after_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (mut a, mut b, mut c) = (Node::new(root, "a"), Node::new(root, "b"), Node::new(root, "c"));
    for n in [&mut a, &mut b, &mut c] {
        n.start();
        n.start_relay(&[]);
    }
    link(&a, &b, &[]);
    link(&b, &c, &[]);
    link(&a, &c, &[]);
    let links: Value = serde_json::from_str(&odi_ok(&["link", "ls", "--directory", &b.url(), "--json"])).unwrap();
    assert_eq!(links.as_array().unwrap().len(), 2, "b is linked both ways by the handshakes: {links}");

    // A catalog created on one side appears on the others.
    odi_ok(&["catalog", "create", "rel", "--directory", &a.url(), "--replicas", "1"]);
    for n in [&b, &c] {
        wait_for(15, &format!("catalog rel on {}", n.name), || odi(&["ls", "--directory", &n.url(), "--catalog", "rel"]).status.success());
    }
    for n in [&a, &b, &c] {
        wait_for(30, &format!("the relay of {} to be ready", n.name), || n.relay_ready());
    }

    // A publish on any of them is served by all three and their relays.
    for (i, origin) in [&a, &b, &c].into_iter().enumerate() {
        let path = format!("small-{}.bin", origin.name);
        let data = bytes(3000 + i, i as u8);
        publish(origin, root, &path, &data, &[]);
        for n in [&a, &b, &c] {
            wait_served(n, &path, &data, true, 30);
        }
    }

    // Kill b while a large publish goes into a: c still gets it from a; b catches up on restart.
    let large = bytes(12 << 20, 0x5a);
    let file = root.join("large.bin");
    std::fs::write(&file, &large).unwrap();
    let a_url = a.url();
    let publisher = Command::new(ODI)
        .args(["publish", "--directory", &a_url, "--catalog", "rel", file.to_str().unwrap()])
        .env("ODI_ADMIN_TOKEN", ADMIN)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // b dies in the middle of it: once it has begun fetching the blob from its peers (or, on a
    // machine fast enough to finish first, once it serves it; then the restart has less to do).
    let partials = b.data.join("federation-partial");
    let fetching = || std::fs::read_dir(&partials).into_iter().flatten().flatten().any(|e| e.path().extension().is_some_and(|x| x == "part"));
    let b_large = format!("{}/r/rel/large.bin", b.url());
    let t0 = std::time::Instant::now();
    let mut polls = 0u32;
    while !fetching() && t0.elapsed() < std::time::Duration::from_secs(60) {
        polls += 1;
        if polls.is_multiple_of(50) && status(&b_large) == "200" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    eprintln!("killing b {}", if fetching() { "while it fetches the large blob" } else { "once it serves the large blob" });
    b.kill();
    let out = publisher.wait_with_output().unwrap();
    assert!(out.status.success(), "the publish on a fails not for b being down");
    wait_served(&c, "large.bin", &large, false, 60);
    b.start();
    wait_served(&b, "large.bin", &large, false, 60);
    for n in [&a, &b, &c] {
        let list = listing(n);
        let names: Vec<&str> = list["artifacts"].as_array().unwrap().iter().filter_map(|x| x["path"].as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len(), "nothing duplicated on {}: {names:?}", n.name);
        assert_eq!(names.len(), 4, "nothing lost on {}: {names:?}", n.name);
    }

    // Expunge on c: 410 on a, b and c, and no relay keeps the bytes.
    let digest = sha256_hex(&bytes(3000, 0));
    odi_ok(&["expunge", "--directory", &c.url(), "--digest", &format!("sha256:{digest}")]);
    for n in [&a, &b, &c] {
        let url = format!("{}/r/rel/small-a.bin", n.url());
        wait_for(20, &format!("410 from {}", n.name), || status(&url) == "410");
        let relay_blob = format!("{}/blobs/sha256/{digest}", n.relay_url());
        wait_for(20, &format!("the relay of {} to drop the bytes", n.name), || status(&relay_blob) != "200");
    }
}

#[test]
fn a_chain_propagates_through_the_middle_and_a_partition_converges_on_one_conflict() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (mut a, mut b, mut c) = (Node::new(root, "a"), Node::new(root, "b"), Node::new(root, "c"));
    for n in [&mut a, &mut b, &mut c] {
        n.start();
    }
    link(&a, &b, &[]);
    link(&b, &c, &[]);
    odi_ok(&["catalog", "create", "rel", "--directory", &a.url(), "--replicas", "1"]);
    let data = bytes(5000, 1);
    publish(&a, root, "chain.bin", &data, &[]);
    wait_served(&c, "chain.bin", &data, false, 20);

    // Partition: b, the only way between a and c, is down while both publish one path.
    b.kill();
    let (on_a, on_c) = (bytes(4000, 2), bytes(4000, 3));
    publish(&a, root, "same.bin", &on_a, &[]);
    publish(&c, root, "same.bin", &on_c, &[]);
    b.start();
    let digest_of = |n: &Node| fetch(&format!("{}/r/rel/same.bin", n.url())).map(|(sha, _)| sha);
    wait_for(30, "all three to serve the same bytes for same.bin", || {
        let all: Vec<Option<String>> = [&a, &b, &c].iter().map(|n| digest_of(n)).collect();
        all[0].is_some() && all.iter().all(|d| *d == all[0])
    });
    let winner = digest_of(&a).unwrap();
    assert!(winner == sha256_hex(&on_a) || winner == sha256_hex(&on_c));
    for n in [&a, &b, &c] {
        // The loser is listed once its blob is held too (it is kept, verified, like the winner).
        let conflicts = || -> Value { serde_json::from_str(&odi_ok(&["catalog", "conflicts", "rel", "--directory", &n.url(), "--json"])).unwrap() };
        wait_for(20, &format!("the conflict to be listed on {}", n.name), || conflicts().as_array().is_some_and(|l| !l.is_empty()));
        let list = conflicts();
        let list = list.as_array().unwrap();
        assert_eq!(list.len(), 1, "one conflict on {}: {list:?}", n.name);
        assert_eq!(list[0]["path"], "same.bin");
        assert_eq!(list[0]["winner"], format!("sha256:{winner}"), "{list:?}");
        assert_eq!(listing(n)["conflicts"].as_array().map_or(0, Vec::len), 1, "odi ls --json shows it on {}", n.name);
    }
}

#[test]
fn staging_tags_hold_an_artifact_back_until_it_is_tagged_prod() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (mut staging, mut prod) = (Node::new(root, "staging"), Node::new(root, "prod"));
    staging.start();
    prod.start();
    staging.start_relay(&["prod"]);
    odi_ok(&["catalog", "create", "rel", "--directory", &staging.url(), "--replicas", "1"]);
    link(&staging, &prod, &["--tag", "prod"]);
    wait_for(15, "catalog rel on prod", || odi(&["ls", "--directory", &prod.url(), "--catalog", "rel"]).status.success());
    wait_for(30, "the staging relay to be ready", || staging.relay_ready());
    let data = bytes(6000, 9);
    publish(&staging, root, "rc.bin", &data, &["beta"]);
    wait_served(&staging, "rc.bin", &data, false, 10);
    // Give the link and the relay time to (wrongly) carry it.
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(status(&format!("{}/r/rel/rc.bin", prod.url())), "404", "a beta artifact does not cross a --tag prod link");
    let digest = sha256_hex(&data);
    assert_ne!(status(&format!("{}/blobs/sha256/{digest}", staging.relay_url())), "200", "nor reach a --tag prod relay");
    odi_ok(&["tag", "--directory", &staging.url(), "--catalog", "rel", "rc.bin", "--add", "prod"]);
    wait_served(&prod, "rc.bin", &data, false, 20);
    wait_served(&staging, "rc.bin", &data, true, 30);
}

#[test]
fn link_errors_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut a, mut b) = (Node::new(tmp.path(), "a"), Node::new(tmp.path(), "b"));
    a.start();
    b.start();
    let (au, bu) = (a.url(), b.url());
    let run = |token: Option<&str>, peer: &str| {
        let mut cmd = Command::new(ODI);
        cmd.args(["link", "add", "--directory", &au, "--peer", peer]).env("ODI_ADMIN_TOKEN", ADMIN).env_remove("ODI_PEER_TOKEN");
        if let Some(t) = token {
            cmd.env("ODI_PEER_TOKEN", t);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(run(None, &bu).contains("ODI_PEER_TOKEN"));
    let wrong = run(Some("0000000000000000000000000000000000000000000000000000000000000001"), &bu);
    assert!(wrong.contains("refused the link token"), "{wrong}");
    let down = run(Some(&b.link_token), &format!("http://127.0.0.1:{}", free_port()));
    assert!(down.contains("cannot reach the peer"), "{down}");
    let ls = odi_ok(&["link", "ls", "--directory", &au, "--json"]);
    assert_eq!(serde_json::from_str::<Value>(&ls).unwrap(), Value::Array(vec![]), "no link was made");
    link(&a, &b, &[]);
    let rm = odi_ok(&["link", "rm", "--directory", &au, "--peer", &bu]);
    assert!(rm.starts_with("unlinked"), "{rm}");
    let gone = odi(&["link", "rm", "--directory", &au, "--peer", &bu]);
    assert!(String::from_utf8_lossy(&gone.stderr).contains("no link to"));
}
