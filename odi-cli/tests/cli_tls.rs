//! The first network and its transfers over HTTPS, as separate `odi` processes with a test CA:
//! curl `--cacert`, aria2c `--ca-certificate`, `odi get --ca-file` and `ODI_CA_FILE`; a
//! certificate replaced on disk and picked up without a restart; `odi dev --tls`.

mod common;

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

const ADMIN: &str = "7a1c3e5f7b9d1f3a5c7e9b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1c3e5b7d9f1a";
const ENROLL: &str = "8b2d4f6a8c0e2b4d6f8a0c2e4b6d8f0a2c4e6b8d0f2a4c6e8b0d2f4a6c8e0b2d";

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn err(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn odi_ok(args: &[&str]) -> String {
    let out = odi_as(ADMIN, args);
    assert!(out.status.success(), "odi {args:?} failed: {}", err(&out));
    text(&out)
}

fn certs(dir: &Path) -> odi_net::tls::DevCerts {
    odi_net::tls::write_dev_ca(dir, &["127.0.0.1", "localhost"]).unwrap()
}

fn start_directory(data: &Path, port: u16, certs: &odi_net::tls::DevCerts) -> Proc {
    let listen = format!("127.0.0.1:{port}");
    #[rustfmt::skip]
    let args = [
        "directory", "--listen", &listen, "--data", path(data), "--heartbeat-interval", "300ms", "--lease", "1500ms", "--probation", "0s",
        "--probe-interval", "1s", "--tls-cert", path(&certs.cert), "--tls-key", path(&certs.key), "--ca-file", path(&certs.ca),
    ];
    let p = Proc(spawn_odi(ADMIN, ENROLL, &args));
    wait_for(20, "the directory to answer over HTTPS", || curl(&["--cacert", path(&certs.ca), &format!("https://{listen}/healthz")]).status.success());
    p
}

fn start_relay(data: &Path, dir: &str, port: u16, certs: &odi_net::tls::DevCerts) -> Proc {
    let (listen, url) = (format!("127.0.0.1:{port}"), format!("https://127.0.0.1:{port}"));
    #[rustfmt::skip]
    let args = [
        "relay", "--listen", &listen, "--data", path(data), "--directory", dir, "--public-url", &url, "--disk-budget", "1GiB",
        "--tls-cert", path(&certs.cert), "--tls-key", path(&certs.key),
    ];
    // The CA comes from the environment here, the flag for the directory.
    let child = Command::new(ODI)
        .args(args)
        .env("ODI_ENROLL_TOKEN", ENROLL)
        .env("ODI_CA_FILE", &certs.ca)
        .env("ODI_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Proc(child)
}

fn ready_count(dir: &str, ca: &Path) -> usize {
    let list: serde_json::Value = serde_json::from_str(&odi_ok(&["relays", "--ca-file", path(ca), "--directory", dir, "--json"])).unwrap();
    list.as_array().unwrap().iter().filter(|r| r["status"] == "ready").count()
}

fn sha256_file(p: &Path) -> String {
    sha256_hex(&std::fs::read(p).unwrap())
}

#[test]
fn first_network_and_transfers_over_tls_with_a_test_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = certs(&tmp.path().join("tls"));
    let ca = path(&certs.ca).to_owned();
    let (dport, r1port, r2port) = (free_port(), free_port(), free_port());
    let dir_url = format!("https://127.0.0.1:{dport}");
    let _dir = start_directory(&tmp.path().join("dir"), dport, &certs);

    // Verification is real: without the CA an admin command and curl are refused.
    let untrusted = odi_as(ADMIN, &["catalog", "ls", "--directory", &dir_url]);
    assert!(!untrusted.status.success(), "an unknown CA must not be trusted: {}", text(&untrusted));
    assert!(err(&untrusted).to_lowercase().contains("certificate"), "the error names the certificate: {}", err(&untrusted));
    assert_eq!(err(&untrusted).trim().lines().count(), 1, "one line: {}", err(&untrusted));
    assert!(!curl(&[&format!("{dir_url}/healthz")]).status.success(), "curl without --cacert");
    // Plain HTTP to the TLS port gets no answer.
    assert!(!curl(&[&format!("http://127.0.0.1:{dport}/healthz")]).status.success());

    odi_ok(&["catalog", "create", "rel", "--ca-file", &ca, "--directory", &dir_url, "--replicas", "2"]);
    let files = [("empty.txt", 0usize), ("one.bin", 1), ("big.bin", (5 << 20) + 1)];
    for (name, len) in files {
        let file = tmp.path().join(name);
        std::fs::write(&file, (0..len).map(|i| (i * 7 % 253) as u8).collect::<Vec<_>>()).unwrap();
        let out = odi_ok(&["publish", "--ca-file", &ca, "--directory", &dir_url, "--catalog", "rel", path(&file)]);
        assert!(out.starts_with("published rel/"), "{out}");
    }
    let _r1 = start_relay(&tmp.path().join("r1"), &dir_url, r1port, &certs);
    let r2 = start_relay(&tmp.path().join("r2"), &dir_url, r2port, &certs);
    // Ready means: enrolled over HTTPS, self-tested by the directory at its https:// URL, and
    // synced every artifact over HTTPS.
    wait_for(40, "two ready relays", || ready_count(&dir_url, &certs.ca) == 2);
    let listed = odi_ok(&["relays", "--ca-file", &ca, "--directory", &dir_url]);
    assert_eq!(listed.lines().filter(|l| l.contains(" https://127.0.0.1:")).count(), 2, "{listed}");

    for (name, _) in files {
        let out = tmp.path().join(format!("{name}.curl"));
        let res = curl(&["--cacert", &ca, "-L", "-o", path(&out), "-w", "%{url_effective}", &format!("{dir_url}/r/rel/{name}")]);
        assert!(res.status.success(), "curl {name}: {}", err(&res));
        let effective = text(&res);
        assert!(
            effective.starts_with(&format!("https://127.0.0.1:{r1port}/")) || effective.starts_with(&format!("https://127.0.0.1:{r2port}/")),
            "answered by a relay over HTTPS: {effective}"
        );
        assert_eq!(sha256_file(&out), sha256_file(&tmp.path().join(name)), "{name}");
    }
    // HTTP/2 by ALPN, on the directory and on a relay.
    let head = curl(&["--cacert", &ca, "--http2", "-sI", &format!("{dir_url}/r/rel/big.bin")]);
    assert!(text(&head).starts_with("HTTP/2 302"), "{}", text(&head));
    let head = curl(&["--cacert", &ca, "--http2", "-sI", &format!("https://127.0.0.1:{r1port}/r/rel/big.bin")]);
    assert!(text(&head).starts_with("HTTP/2 200"), "{}", text(&head));
    let h2 = tmp.path().join("big.h2");
    let res = curl(&["--cacert", &ca, "--http2", "-L", "-o", path(&h2), &format!("{dir_url}/r/rel/big.bin")]);
    assert!(res.status.success(), "{}", err(&res));
    assert_eq!(sha256_file(&h2), sha256_file(&tmp.path().join("big.bin")));

    // odi get, with the flag and with the environment variable.
    let got = tmp.path().join("big.get");
    odi_ok(&["get", "--ca-file", &ca, &format!("{dir_url}/r/rel/big.bin"), "-o", path(&got)]);
    assert_eq!(sha256_file(&got), sha256_file(&tmp.path().join("big.bin")));
    let got_env = tmp.path().join("one.get");
    let out = Command::new(ODI).args(["get", &format!("{dir_url}/r/rel/one.bin"), "-o", path(&got_env)]).env("ODI_CA_FILE", &ca).output().unwrap();
    assert!(out.status.success(), "{}", err(&out));
    assert_eq!(sha256_file(&got_env), sha256_file(&tmp.path().join("one.bin")));

    // aria2c from the metalink: every source is https://, every piece checked.
    let aria = tmp.path().join("aria");
    std::fs::create_dir_all(&aria).unwrap();
    let out = Command::new("aria2c")
        .args(["--ca-certificate", &ca, "--follow-metalink=mem", "-q", "-d", path(&aria), "--allow-overwrite=true"])
        .arg(format!("{dir_url}/metalink/r/rel/big.bin"))
        .output()
        .expect("aria2c is installed (scripts/test installs it)");
    assert!(out.status.success(), "aria2c: {} {}", text(&out), err(&out));
    assert_eq!(sha256_file(&aria.join("big.bin")), sha256_file(&tmp.path().join("big.bin")));
    let meta = curl(&["--cacert", &ca, &format!("{dir_url}/metalink/r/rel/big.bin")]);
    let doc = text(&meta);
    assert!(doc.contains(&format!("https://127.0.0.1:{r1port}/")) && !doc.contains("http://"), "{doc}");

    // A relay killed: the directory stops sending clients there, downloads go on over HTTPS.
    drop(r2);
    wait_for(20, "one ready relay", || ready_count(&dir_url, &certs.ca) == 1);
    for _ in 0..5 {
        let res = curl(&["--cacert", &ca, "-L", "-o", "/dev/null", "-w", "%{url_effective}", &format!("{dir_url}/r/rel/big.bin")]);
        assert!(res.status.success(), "{}", err(&res));
        assert!(!text(&res).contains(&format!(":{r2port}/")), "{}", text(&res));
    }
}

/// `openssl x509 -fingerprint` of the certificate a server at `port` shows, by `curl -w %{certs}`.
fn served_cert(port: u16, ca: &Path) -> Option<String> {
    let out = curl(&["--cacert", path(ca), "-o", "/dev/null", "-w", "%{certs}", &format!("https://127.0.0.1:{port}/healthz")]);
    out.status.success().then(|| text(&out).split("-----END CERTIFICATE-----").next().unwrap_or_default().to_owned())
}

#[test]
fn a_renewed_certificate_is_served_without_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let first = certs(&tmp.path().join("first"));
    // The daemon's files live apart from the CAs, as an operator's renewal job would have them.
    let live = tmp.path().join("live");
    std::fs::create_dir_all(&live).unwrap();
    let served = odi_net::tls::DevCerts { ca: first.ca.clone(), cert: live.join("cert.pem"), key: live.join("key.pem") };
    std::fs::copy(&first.cert, &served.cert).unwrap();
    std::fs::copy(&first.key, &served.key).unwrap();
    let port = free_port();
    let dir = start_directory(&tmp.path().join("dir"), port, &served);
    let pid = dir.0.id();
    let before = served_cert(port, &first.ca).expect("the first certificate is served");

    // A client that connected and never finished its handshake is cut at the deadline, and
    // meanwhile others are served.
    let mut stalled = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let stalled_at = Instant::now();

    // A long download on one connection, started before the renewal.
    let big = tmp.path().join("big.bin");
    std::fs::write(&big, vec![7u8; 3 << 20]).unwrap();
    let ca = path(&first.ca).to_owned();
    let dir_url = format!("https://127.0.0.1:{port}");
    odi_ok(&["catalog", "create", "c", "--ca-file", &ca, "--directory", &dir_url]);
    odi_ok(&["publish", "--ca-file", &ca, "--directory", &dir_url, "--catalog", "c", path(&big)]);
    let slow = Command::new("curl")
        .args(["-sS", "--cacert", &ca, "--limit-rate", "1M", "-o", path(&tmp.path().join("slow.bin")), &format!("{dir_url}/r/c/big.bin")])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Renewal by another CA, written in place (cert then key, as `cp` would), not atomically.
    let second = certs(&tmp.path().join("second"));
    std::fs::write(&served.cert, std::fs::read(&second.cert).unwrap()).unwrap();
    // Half way (the new certificate with the old key) must not be taken up.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(served_cert(port, &first.ca).as_deref(), Some(before.as_str()), "a certificate without its key is not served");
    std::fs::write(&served.key, std::fs::read(&second.key).unwrap()).unwrap();
    wait_for(5, "the renewed certificate", || served_cert(port, &second.ca).is_some());
    let after = served_cert(port, &second.ca).unwrap();
    assert_ne!(before, after);
    assert!(served_cert(port, &first.ca).is_none(), "new connections no longer get the old certificate");
    assert_eq!(dir.0.id(), pid);

    // The download that began on the old certificate finished intact.
    let out = slow.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", err(&out));
    assert_eq!(sha256_file(&tmp.path().join("slow.bin")), sha256_file(&big));

    // A renewal by atomic rename (certbot, `odi_net::tls::write_file`) is picked up as well.
    let third = certs(&tmp.path().join("third"));
    odi_net::tls::write_file(&served.key, &std::fs::read(&third.key).unwrap(), 0o600).unwrap();
    odi_net::tls::write_file(&served.cert, &std::fs::read(&third.cert).unwrap(), 0o644).unwrap();
    wait_for(5, "the third certificate", || served_cert(port, &third.ca).is_some());

    // The stalled handshake: closed by the server at its deadline (10 s), not held open.
    stalled.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut buf = [0u8; 16];
    let n = stalled.read(&mut buf).unwrap_or(0);
    let held = stalled_at.elapsed();
    assert_eq!(n, 0, "nothing is sent to a client that sent no hello");
    assert!(held >= Duration::from_secs(9) && held < Duration::from_secs(14), "the stalled handshake was cut after {held:?}");
}

fn start_dev(data: &Path, path_env: &str) -> (Proc, Vec<String>, PathBuf) {
    let mut child = Command::new(ODI)
        .args(["dev", "--tls", "--data", path(data)])
        .env("PATH", path_env)
        .env_remove("ODI_ADMIN_TOKEN")
        .env_remove("ODI_ENROLL_TOKEN")
        .env_remove("ODI_CA_FILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let proc = Proc(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (mut commands, mut in_try, mut ca) = (Vec::new(), false, None);
    loop {
        let line = rx.recv_timeout(Duration::from_secs(120)).expect("odi dev --tls prints its commands");
        if line.contains("Ctrl-C") {
            break;
        }
        if let Some(rest) = line.trim().strip_prefix("dev CA") {
            ca = rest.split_whitespace().next().map(PathBuf::from);
        }
        if line.trim() == "Try:" {
            in_try = true;
        } else if in_try && !line.trim().is_empty() {
            commands.push(line.trim().to_owned());
        }
    }
    (proc, commands, ca.expect("odi dev --tls names its CA"))
}

#[test]
fn every_command_odi_dev_tls_prints_works_as_printed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("odi-dev");
    let bin_dir = Path::new(ODI).parent().unwrap().to_str().unwrap().to_owned();
    let path_env = format!("{bin_dir}:{}", std::env::var("PATH").unwrap_or_default());
    let (_dev, commands, ca) = start_dev(&data, &path_env);
    assert_eq!(ca, data.join("tls/ca.pem"));
    let hello = std::fs::read(data.join("sample/hello.txt")).unwrap();
    let big = std::fs::read(data.join("sample/odi-sample-5MiB.bin")).unwrap();
    let cwd = tmp.path().join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    let mut seen = Vec::new();
    for command in &commands {
        assert!(command.contains("https://127.0.0.1:"), "over HTTPS: {command}");
        assert!(
            command.contains(&format!(" --cacert {}", ca.display())) || command.contains(&format!(" --ca-file {}", ca.display())),
            "names the CA: {command}"
        );
        let out = Command::new("sh")
            .args(["-c", command])
            .current_dir(&cwd)
            .env("PATH", &path_env)
            .env_remove("ODI_ADMIN_TOKEN")
            .env_remove("ODI_CA_FILE")
            .output()
            .unwrap();
        let stderr = err(&out);
        assert!(out.status.success() && !stderr.contains("error") && !stderr.contains("panicked"), "{command}: {stderr}");
        let out_text = text(&out);
        let kind = if command.starts_with("curl --cacert ") && command.contains(" -L ") {
            assert_eq!(out.stdout, hello, "{command}");
            "curl -L"
        } else if command.starts_with("curl --cacert ") && command.contains(" -sI ") {
            let head = out_text.to_ascii_lowercase();
            assert!(head.starts_with("http/2 302") || head.starts_with("http/2 200"), "{command}: {out_text}");
            assert!(head.contains("repr-digest: sha-256=:"), "{command}: {out_text}");
            "curl -sI"
        } else if command.starts_with("odi get ") {
            assert_eq!(std::fs::read(cwd.join("odi-sample-5MiB.bin")).unwrap(), big, "{command}");
            "odi get"
        } else if command.contains(" odi ls ") {
            assert!(out_text.contains("hello.txt") && out_text.contains("odi-sample-5MiB.bin"), "{command}: {out_text}");
            "odi ls"
        } else if command.contains(" odi relays ") {
            assert_eq!(out_text.lines().filter(|l| l.contains(" https://127.0.0.1:")).count(), 2, "{command}: {out_text}");
            "odi relays"
        } else if command.contains(" odi publish ") {
            assert_eq!(out_text.lines().last(), Some("published 0, unchanged 2, failed 0 (0 B)"), "{command}: {out_text}");
            "odi publish"
        } else {
            panic!("a printed command this test does not know: {command}");
        };
        seen.push(kind);
    }
    assert_eq!(seen, ["curl -L", "curl -sI", "odi get", "odi ls", "odi relays", "odi publish"], "{commands:?}");
    // Without the CA the same URL is refused: the printed flag is what makes it work.
    let bare = curl(&["-L", commands[0].rsplit(' ').next().unwrap()]);
    assert!(!bare.status.success());
}
