//! Relays that verify their directory, as an operator meets it: real `odi` processes on
//! loopback. A directory restored from an older copy of its data dir (a rolled-back state), and
//! a directory started on a new key at the same URL (a forged one): the relay applies and serves
//! nothing from either, says why in its log, and freezes the catalogs once their heads expire.

mod common;

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use common::*;

const ADMIN: &str = "c0a1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1";
const ENROLL: &str = "c1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2";
/// Heads hold 3 s without renewal (ten heartbeats), so a frozen catalog is seen soon.
const HEAD_TTL: &str = "3s";

fn odi_ok(args: &[&str]) -> String {
    odi_ok_as(ADMIN, args)
}

fn start_directory(data: &Path, port: u16) -> Proc {
    let listen = format!("127.0.0.1:{port}");
    let args = [
        "directory",
        "--listen",
        &listen,
        "--data",
        data.to_str().unwrap(),
        "--heartbeat-interval",
        "300ms",
        "--lease",
        "1500ms",
        "--probation",
        "0s",
        "--head-ttl",
        HEAD_TTL,
    ];
    let p = Proc(spawn_odi(ADMIN, ENROLL, &args));
    wait_for(20, "the directory to answer", || curl(&[&format!("http://{listen}/healthz")]).status.success());
    p
}

/// A relay whose log lines are kept (and echoed) for the test to read.
struct Relay {
    _proc: Proc,
    url: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Relay {
    fn start(data: &Path, dir: &str, port: u16, key: Option<&str>) -> Self {
        let url = format!("http://127.0.0.1:{port}");
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec!["relay", "--listen", &listen, "--data", data.to_str().unwrap(), "--directory", dir, "--public-url", &url, "--disk-budget", "1GiB"];
        if let Some(key) = key {
            args.extend(["--directory-key", key]);
        }
        let mut child = Command::new(ODI)
            .args(&args)
            .env("ODI_ENROLL_TOKEN", ENROLL)
            .env("ODI_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn odi relay");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("relay: {line}");
                lines.lock().unwrap().push(line);
            }
        });
        Self { _proc: Proc(child), url, log }
    }

    fn status(&self, path: &str) -> String {
        let out = curl(&["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("{}/r/rel/{path}", self.url)]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn body(&self, path: &str) -> Vec<u8> {
        curl(&["-s", &format!("{}/r/rel/{path}", self.url)]).stdout
    }

    fn logged(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }
}

fn publish(dir_url: &str, tmp: &Path, name: &str, content: &[u8]) {
    let path = tmp.join(name);
    std::fs::write(&path, content).unwrap();
    let out = odi_ok(&["publish", "--directory", dir_url, "--catalog", "rel", path.to_str().unwrap()]);
    assert!(out.starts_with("published rel/"), "{out}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

#[test]
fn a_directory_restored_from_an_old_copy_of_its_data_dir_is_refused_and_its_catalog_freezes() {
    let tmp = tempfile::tempdir().unwrap();
    let (dport, rport) = (free_port(), free_port());
    let dir_url = format!("http://127.0.0.1:{dport}");
    let data = tmp.path().join("dir");
    let dir = start_directory(&data, dport);
    let key = std::fs::read_to_string(data.join("directory.pub")).unwrap().trim().to_owned();
    assert_eq!(key.len(), 64, "the directory keeps its public key for operators to hand out");
    odi_ok(&["catalog", "create", "rel", "--directory", &dir_url, "--replicas", "1"]);
    publish(&dir_url, tmp.path(), "v1.txt", b"version one\n");
    let relay = Relay::start(&tmp.path().join("relay"), &dir_url, rport, Some(&key));
    wait_for(30, "the relay to serve v1", || relay.status("v1.txt") == "200");

    // The backup: a copy of the data dir, taken while the directory is stopped.
    drop(dir);
    copy_dir(&data, &tmp.path().join("backup"));
    let dir = start_directory(&data, dport);
    publish(&dir_url, tmp.path(), "v2.txt", b"version two\n");
    odi_ok(&["expunge", "--directory", &dir_url, "--catalog", "rel", "v1.txt"]);
    wait_for(30, "the relay to serve v2 and drop v1", || relay.status("v2.txt") == "200" && relay.status("v1.txt") == "404");
    let trust = std::fs::read_to_string(tmp.path().join("relay").join("trust.json")).unwrap();
    assert!(trust.contains(&key) && trust.contains("\"seq\": 3"), "the pin and the highest head are kept: {trust}");

    // Restore the old copy and start it: it still names v1, at an older sequence.
    drop(dir);
    std::fs::remove_dir_all(&data).unwrap();
    copy_dir(&tmp.path().join("backup"), &data);
    let _dir = start_directory(&data, dport);
    publish(&dir_url, tmp.path(), "v3.txt", b"version three, published on the restored directory\n");
    wait_for(30, "the relay to refuse the rolled-back directory and say why", || relay.logged("rolled back"));
    assert!(relay.logged("older than sequence 3"), "the log names the sequences");
    // Nothing of the rolled-back state is served: not the expunged v1, not v3; and once the
    // head of what it verified expires unrenewed, not v2 either.
    wait_for(30, "the catalog to freeze", || relay.logged("is frozen"));
    for path in ["v1.txt", "v2.txt", "v3.txt"] {
        assert_eq!(relay.status(path), "404", "{path} is not served from a rolled-back or frozen state");
    }
    assert!(!relay.body("v1.txt").starts_with(b"version one"), "the expunged artifact never comes back");
}

#[test]
fn a_directory_on_a_new_key_at_the_same_url_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (dport, rport) = (free_port(), free_port());
    let dir_url = format!("http://127.0.0.1:{dport}");
    let dir = start_directory(&tmp.path().join("dir"), dport);
    odi_ok(&["catalog", "create", "rel", "--directory", &dir_url, "--replicas", "1"]);
    publish(&dir_url, tmp.path(), "app.txt", b"the real app\n");
    // No --directory-key: the key is pinned on first use.
    let relay = Relay::start(&tmp.path().join("relay"), &dir_url, rport, None);
    wait_for(30, "the relay to serve app.txt", || relay.status("app.txt") == "200");
    assert!(relay.logged("pinned the key of the directory"), "the pin is announced");

    // A forger takes the URL with a fresh data dir (a new key) and other bytes under the name.
    drop(dir);
    let forged = tmp.path().join("forged");
    let _forged = start_directory(&forged, dport);
    odi_ok(&["catalog", "create", "rel", "--directory", &dir_url, "--replicas", "1"]);
    publish(&dir_url, tmp.path(), "app.txt", b"a trojan\n");
    publish(&dir_url, tmp.path(), "extra.txt", b"more of the forger's\n");
    wait_for(30, "the relay to refuse the forged directory and say why", || relay.logged("not by the pinned directory key"));
    wait_for(30, "the catalog to freeze", || relay.logged("is frozen"));
    assert_eq!(relay.status("extra.txt"), "404");
    assert_eq!(relay.status("app.txt"), "404", "frozen: not the real bytes any more, and never the forger's");
    assert!(!relay.body("app.txt").starts_with(b"a trojan"));
    // A restart does not forget the pin.
    drop(relay);
    let relay = Relay::start(&tmp.path().join("relay"), &dir_url, rport, None);
    wait_for(30, "the restarted relay to refuse the forged directory", || relay.logged("not by the pinned directory key"));
    assert!(relay.logged("is pinned to key"));
    assert_eq!(relay.status("extra.txt"), "404");
}
