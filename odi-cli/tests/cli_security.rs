//! `odi directory` as an operator runs it, against relays run by strangers: weak tokens stop it
//! at start, a public directory refuses loopback relays unless `--allow-private-relays`, and a
//! relay's answers to the self-test never reach the directory's log.

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const ADMIN: &str = "9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0";
const ENROLL: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
/// The public URL the directory announces; nothing connects to it.
const PUBLIC_DIRECTORY: &str = "http://203.0.113.7:7700";

fn directory(data: &Path, port: u16, log: &Path, extra: &[&str]) -> Proc {
    Proc(
        Command::new(ODI)
            .args(["directory", "--listen", &format!("127.0.0.1:{port}"), "--data"])
            .arg(data)
            .args(["--heartbeat-interval", "300ms", "--lease", "1500ms"])
            .args(extra)
            .env("ODI_ADMIN_TOKEN", ADMIN)
            .env("ODI_ENROLL_TOKEN", ENROLL)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    )
}

fn relay(data: &Path, directory: &str, public_url: &str, log: &Path) -> Proc {
    Proc(
        Command::new(ODI)
            .args(["relay", "--listen", &format!("127.0.0.1:{}", free_port()), "--data"])
            .arg(data)
            .args(["--directory", directory, "--public-url", public_url, "--disk-budget", "1GiB"])
            .env("ODI_ENROLL_TOKEN", ENROLL)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    )
}

fn read(path: &Path) -> String {
    let mut text = String::new();
    let _ = std::fs::File::open(path).and_then(|mut f| f.read_to_string(&mut text));
    text
}

fn wait_for_log(path: &Path, what: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let text = read(path);
        if text.contains(what) {
            return text;
        }
        assert!(Instant::now() < deadline, "{} never said `{what}`:\n{text}", path.display());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `cmd` to its end, which must come within 20 s (a daemon that starts is killed and fails
/// the test); returns its status and standard error.
fn must_exit(cmd: &mut Command, what: &str) -> (std::process::ExitStatus, String) {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} started instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (status, err)
}

#[test]
fn a_weak_token_stops_the_directory_and_says_how_to_make_one() {
    let tmp = tempfile::tempdir().unwrap();
    for (var, token) in [("ODI_ADMIN_TOKEN", "a"), ("ODI_ENROLL_TOKEN", "cli-enroll-token"), ("ODI_ADMIN_TOKEN", &"7".repeat(40))] {
        let (status, err) = must_exit(
            Command::new(ODI)
                .args(["directory", "--listen", &format!("127.0.0.1:{}", free_port()), "--data"])
                .arg(tmp.path().join(var))
                .env("ODI_ADMIN_TOKEN", ADMIN)
                .env("ODI_ENROLL_TOKEN", ENROLL)
                .env(var, token),
            &format!("the directory with {var}={token}"),
        );
        assert!(!status.success(), "{err}");
        assert!(err.contains(var) && err.contains("openssl rand -hex 32"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
}

#[test]
fn a_public_directory_refuses_loopback_relays_unless_allowed_and_never_logs_their_answers() {
    let tmp = tempfile::tempdir().unwrap();
    // Strict: the directory's public URL is public, the relay's is loopback.
    let port = free_port();
    let dir_log = tmp.path().join("strict.log");
    let _strict = directory(&tmp.path().join("strict"), port, &dir_log, &["--public-url", PUBLIC_DIRECTORY]);
    let relay_log = tmp.path().join("r1.log");
    let _r1 = relay(&tmp.path().join("r1"), &format!("http://127.0.0.1:{port}"), &format!("http://127.0.0.1:{}", free_port()), &relay_log);
    let text = wait_for_log(&relay_log, "--allow-private-relays", 20);
    assert!(text.contains("loopback address"), "{text}");

    // Allowed: the relay's public URL is a server answering its self-test with a long error.
    const MARK: &str = "QWZX-relay-answer-";
    let fake = TcpListener::bind("127.0.0.1:0").unwrap();
    let fake_url = format!("http://{}", fake.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut stream in fake.incoming().flatten() {
            let mut head = [0u8; 4096];
            let _ = stream.read(&mut head);
            let body = MARK.repeat(200);
            let _ = write!(stream, "HTTP/1.1 500 Internal Server Error\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
        }
    });
    let port = free_port();
    let dir_log = tmp.path().join("allowing.log");
    let _allowing = directory(&tmp.path().join("allowing"), port, &dir_log, &["--public-url", PUBLIC_DIRECTORY, "--allow-private-relays"]);
    let _r2 = relay(&tmp.path().join("r2"), &format!("http://127.0.0.1:{port}"), &fake_url, &tmp.path().join("r2.log"));
    let text = wait_for_log(&dir_log, "answered 500", 20);
    assert!(text.contains("relay enrolled"), "{text}");
    assert!(!text.contains("QWZX") && !text.contains("relay-answer"), "the directory logged the relay's body:\n{text}");
}

#[test]
fn a_relay_with_an_ambiguous_public_url_stops_at_start_naming_the_rule() {
    let tmp = tempfile::tempdir().unwrap();
    for (url, why) in [("http://a:b:c", "more than one `:`"), ("http://2130706433:80", "IPv4 host"), ("http://relay.example.org:99999", "port")] {
        let (status, err) = must_exit(
            Command::new(ODI)
                .args(["relay", "--listen", &format!("127.0.0.1:{}", free_port()), "--data"])
                .arg(tmp.path().join(format!("r{}", url.len())))
                .args(["--directory", "http://127.0.0.1:9", "--public-url", url, "--disk-budget", "1GiB"])
                .env("ODI_ENROLL_TOKEN", ENROLL),
            &format!("a relay at {url}"),
        );
        assert!(!status.success(), "{url}: {err}");
        assert!(err.contains(why) && err.trim().lines().count() == 1, "{url}: {err}");
    }
}
