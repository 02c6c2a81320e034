//! Origin catalogs against a real nginx with `autoindex on` on loopback: a tree with a
//! SHA256SUMS that changes between syncs (a file added, a file replaced, a checksum that lies),
//! `odi catalog sync`, the schedule, on-demand fetches for a client that asks first, files
//! removed at the origin staying, and SSRF: an origin redirecting to 169.254.169.254 and to a
//! loopback port it was not configured with. Then the same over `https://`: an nginx with a
//! certificate from a test CA the directory trusts (`--ca-file`), a redirect that downgrades to
//! `http://`, and an origin whose certificate comes from a CA it does not trust.

mod common;

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::Path;
use std::process::Output;

use common::*;

const ADMIN: &str = "b0a1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c7";
const ENROLL: &str = "b1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e7";

fn odi(args: &[&str]) -> Output {
    odi_as(ADMIN, args)
}

fn odi_ok(args: &[&str]) -> String {
    let out = odi(args);
    assert!(out.status.success(), "odi {args:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// nginx serving `www` with `autoindex on`, plus two traps: `/meta/` redirects to the cloud
/// metadata address, and `/pub/trap.bin` to another loopback port. With `tls` (certificate and
/// key), it serves HTTPS, the traps redirect to `https://`, and `/pub/down.bin` redirects to
/// `http://` on its own host and port (a downgrade).
fn start_nginx(prefix: &Path, www: &Path, port: u16, canary: u16, tls: Option<&odi_net::tls::DevCerts>) -> Proc {
    let mut c = String::new();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let ssl = if tls.is_some() { " ssl" } else { "" };
    let _ = writeln!(c, "  server {{ listen 127.0.0.1:{port}{ssl}; root {}; autoindex on;", www.display());
    if let Some(certs) = tls {
        let _ = writeln!(c, "    ssl_certificate {}; ssl_certificate_key {};", certs.cert.display(), certs.key.display());
        let _ = writeln!(c, "    location = /pub/down.bin {{ return 302 http://127.0.0.1:{port}/pub/a.txt; }}");
    }
    let _ = writeln!(c, "    location /meta/ {{ return 302 {scheme}://169.254.169.254/latest/meta-data/; }}");
    let _ = writeln!(c, "    location = /pub/trap.bin {{ return 302 {scheme}://127.0.0.1:{canary}/secret; }}");
    let _ = writeln!(c, "  }}");
    common::start_nginx(prefix, port, &c)
}

fn sha256sums(www: &Path, entries: &[(&str, &str)]) {
    let text: String = entries.iter().map(|(hex, name)| format!("{hex}  {name}\n")).collect();
    std::fs::write(www.join("pub/SHA256SUMS"), text).unwrap();
}

fn write(www: &Path, rel: &str, bytes: &[u8]) -> String {
    let path = www.join("pub").join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    sha256_hex(bytes)
}

fn paths(dir: &str, catalog: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(&odi_ok(&["ls", "--directory", dir, "--catalog", catalog, "--json"])).unwrap();
    let mut p: Vec<String> = v["artifacts"].as_array().unwrap().iter().map(|a| a["path"].as_str().unwrap().to_owned()).collect();
    p.sort();
    p
}

fn fetch(url: &str, out: &Path) -> Option<String> {
    let res = curl(&["-fL", "-o", out.to_str().unwrap(), url]);
    res.status.success().then(|| sha256_hex(&std::fs::read(out).unwrap()))
}

#[test]
fn an_origin_catalog_follows_an_nginx_tree_and_checks_its_checksums() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let www = t.join("www");
    let a = write(&www, "a.txt", b"release notes 1.0\n");
    let b = write(&www, "sub/b.bin", &(0..70_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
    write(&www, "lie.iso", b"the real bytes of lie.iso");
    std::fs::write(www.join("pub/lie.iso.sha256"), format!("{}\n", sha256_hex(b"something else"))).unwrap();
    write(&www, "trap.bin", b"never served: nginx redirects this path");
    sha256sums(&www, &[(&a, "a.txt"), (&b, "sub/b.bin")]);

    // A canary on another loopback port: nothing may ever connect to it.
    let canary = TcpListener::bind("127.0.0.1:0").unwrap();
    canary.set_nonblocking(true).unwrap();
    let (nport, dport) = (free_port(), free_port());
    let _nginx = start_nginx(&t.join("nginx"), &www, nport, canary.local_addr().unwrap().port(), None);
    let origin = format!("http://127.0.0.1:{nport}/pub/");
    let dir = format!("http://127.0.0.1:{dport}");
    let data = t.join("dir");
    let _d = Proc(spawn_odi(
        ADMIN,
        ENROLL,
        &["directory", "--listen", &format!("127.0.0.1:{dport}"), "--data", data.to_str().unwrap(), "--probation", "0s", "--allow-private-origins"],
    ));
    wait_for(20, "the directory", || curl(&[&format!("{dir}/healthz")]).status.success());

    // The first sync runs when the catalog is made (the schedule starts with one).
    odi_ok(&["catalog", "create", "mirror", "--directory", &dir, "--origin", &origin, "--origin-interval", "1h"]);
    wait_for(20, "the first sync", || paths(&dir, "mirror").contains(&"sub/b.bin".to_owned()));
    let listed = paths(&dir, "mirror");
    assert!(listed.contains(&"a.txt".to_owned()) && listed.contains(&"SHA256SUMS".to_owned()), "{listed:?}");
    assert!(!listed.contains(&"lie.iso".to_owned()), "a file whose checksum lies is not published: {listed:?}");
    assert!(!listed.contains(&"trap.bin".to_owned()), "a redirect to an unconfigured loopback port is not followed");
    assert_eq!(fetch(&format!("{dir}/r/mirror/sub/b.bin"), &t.join("b")), Some(b.clone()));

    // `odi catalog sync` reports the lie and the refused redirect, and exits non-zero.
    let out = odi(&["catalog", "sync", "mirror", "--directory", &dir]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.lines().any(|l| l.starts_with("refused mirror/lie.iso: ") && l.contains("lie.iso.sha256")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("failed mirror/trap.bin: ") && l.contains("not configured")), "{text}");
    assert!(text.contains("published 0, unchanged 4"), "{text}");

    // A new file: published by the next sync. A replaced file in an immutable catalog: refused
    // and reported, the old bytes still served. A file removed at the origin: stays.
    let new = write(&www, "v2/new.tar", b"version 2");
    let a2 = write(&www, "a.txt", b"release notes, rewritten\n");
    std::fs::remove_file(www.join("pub/sub/b.bin")).unwrap();
    sha256sums(&www, &[(&a2, "a.txt"), (&new, "v2/new.tar")]);
    let out = odi(&["catalog", "sync", "mirror", "--directory", &dir]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l == "published mirror/v2/new.tar"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("refused mirror/a.txt: the catalog refused it")), "{text}");
    assert!(text.lines().any(|l| l == "published mirror/SHA256SUMS") || text.contains("refused mirror/SHA256SUMS"), "{text}");
    assert_eq!(fetch(&format!("{dir}/r/mirror/v2/new.tar"), &t.join("new")), Some(new));
    assert_eq!(fetch(&format!("{dir}/r/mirror/a.txt"), &t.join("a")), Some(a), "the first bytes stay");
    assert_eq!(fetch(&format!("{dir}/r/mirror/sub/b.bin"), &t.join("b2")), Some(b), "removed at the origin, kept here");

    // On demand: a client asking for a file no sync has seen yet gets its bytes.
    let late = write(&www, "v2/late.bin", b"published after the last sync");
    assert!(!paths(&dir, "mirror").contains(&"v2/late.bin".to_owned()));
    assert_eq!(fetch(&format!("{dir}/r/mirror/v2/late.bin"), &t.join("late")), Some(late));
    let missing = curl(&["-o", "/dev/null", "-w", "%{http_code}", &format!("{dir}/r/mirror/v2/not-there.bin")]);
    assert_eq!(String::from_utf8_lossy(&missing.stdout), "404");
    // On demand checks checksums too: a lying one is still refused.
    let lie2 = write(&www, "v3/lie2.bin", b"bytes");
    std::fs::write(www.join("pub/v3/lie2.bin.sha256"), format!("{}\n", sha256_hex(b"other"))).unwrap();
    assert_ne!(sha256_hex(b"other"), lie2);
    let refused = curl(&["-o", "/dev/null", "-w", "%{http_code}", &format!("{dir}/r/mirror/v3/lie2.bin")]);
    assert_eq!(String::from_utf8_lossy(&refused.stdout), "404");

    // The schedule: a catalog synced every 2 s picks up a new file without being asked.
    odi_ok(&["catalog", "create", "sched", "--directory", &dir, "--origin", &origin, "--origin-interval", "2s"]);
    wait_for(20, "the first scheduled sync", || paths(&dir, "sched").contains(&"v2/new.tar".to_owned()));
    let fresh = write(&www, "v4/fresh.txt", b"fresh");
    wait_for(20, "the schedule to publish a new file", || paths(&dir, "sched").contains(&"v4/fresh.txt".to_owned()));
    assert_eq!(fetch(&format!("{dir}/r/sched/v4/fresh.txt"), &t.join("fresh")), Some(fresh));

    // SSRF: an origin that redirects to the metadata address; an origin naming it outright.
    odi_ok(&["catalog", "create", "meta", "--directory", &dir, "--origin", &format!("http://127.0.0.1:{nport}/meta/")]);
    let out = odi(&["catalog", "sync", "meta", "--directory", &dir]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("169.254.169.254") && err.contains("metadata"), "{err}");
    let out = odi(&["catalog", "create", "direct", "--directory", &dir, "--origin", "http://169.254.169.254/latest/"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("metadata") && err.lines().count() == 1, "{err}");
    assert!(canary.accept().is_err(), "nothing connected to the unconfigured loopback port");
}

#[test]
fn without_allow_private_origins_a_loopback_origin_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dport = free_port();
    let dir = format!("http://127.0.0.1:{dport}");
    let data = tmp.path().join("dir");
    let _d = Proc(spawn_odi(ADMIN, ENROLL, &["directory", "--listen", &format!("127.0.0.1:{dport}"), "--data", data.to_str().unwrap()]));
    wait_for(20, "the directory", || curl(&[&format!("{dir}/healthz")]).status.success());
    let out = odi(&["catalog", "create", "m", "--directory", &dir, "--origin", "http://127.0.0.1:9/pub/"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--allow-private-origins"), "{err}");
    let out = odi(&["catalog", "create", "m", "--directory", &dir, "--origin", "http://user:pw@example.org/pub/"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("credentials"));
    odi_ok(&["catalog", "create", "plain", "--directory", &dir]);
    let out = odi(&["catalog", "sync", "plain", "--directory", &dir]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("has no origin"));
}

#[test]
fn an_https_origin_is_verified_against_the_directory_ca_file_and_an_unknown_ca_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let www = t.join("www");
    let a = write(&www, "a.txt", b"release notes over TLS\n");
    let b = write(&www, "sub/b.bin", &(0..50_000u32).map(|i| (i % 239) as u8).collect::<Vec<_>>());
    write(&www, "lie.iso", b"bytes that do not match");
    std::fs::write(www.join("pub/lie.iso.sha256"), format!("{}\n", sha256_hex(b"other bytes"))).unwrap();
    write(&www, "trap.bin", b"never served: nginx redirects this path");
    write(&www, "down.bin", b"never served: nginx redirects this path to http://");
    sha256sums(&www, &[(&a, "a.txt"), (&b, "sub/b.bin")]);

    // The directory trusts `known` (its --ca-file); `unknown` signed the other origin's certificate.
    let known = odi_net::tls::write_dev_ca(&t.join("known"), &["127.0.0.1"]).unwrap();
    let unknown = odi_net::tls::write_dev_ca(&t.join("unknown"), &["127.0.0.1"]).unwrap();
    let canary = TcpListener::bind("127.0.0.1:0").unwrap();
    canary.set_nonblocking(true).unwrap();
    let cport = canary.local_addr().unwrap().port();
    let (good_port, bad_port, dport) = (free_port(), free_port(), free_port());
    let _good = start_nginx(&t.join("nginx-good"), &www, good_port, cport, Some(&known));
    let _bad = start_nginx(&t.join("nginx-bad"), &www, bad_port, cport, Some(&unknown));
    let dir = format!("http://127.0.0.1:{dport}");
    let data = t.join("dir");
    let _d = Proc(spawn_odi(
        ADMIN,
        ENROLL,
        &[
            "directory",
            "--listen",
            &format!("127.0.0.1:{dport}"),
            "--data",
            data.to_str().unwrap(),
            "--probation",
            "0s",
            "--allow-private-origins",
            "--ca-file",
            known.ca.to_str().unwrap(),
        ],
    ));
    wait_for(20, "the directory", || curl(&[&format!("{dir}/healthz")]).status.success());

    // A long interval: only `odi catalog sync` and on-demand fetches pull after the first sync.
    let origin = format!("https://127.0.0.1:{good_port}/pub/");
    odi_ok(&["catalog", "create", "secure", "--directory", &dir, "--origin", &origin, "--origin-interval", "1h", "--mutable"]);
    wait_for(20, "the first sync over https", || paths(&dir, "secure").contains(&"sub/b.bin".to_owned()));
    let out = odi(&["catalog", "sync", "secure", "--directory", &dir]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "the lie is reported: {text}");
    assert!(text.lines().any(|l| l.starts_with("refused secure/lie.iso: ") && l.contains("lie.iso.sha256")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("failed secure/trap.bin: ") && l.contains("not configured")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("failed secure/down.bin: ") && l.contains("downgrade")), "{text}");
    let listed = paths(&dir, "secure");
    for published in ["SHA256SUMS", "a.txt", "sub/b.bin"] {
        assert!(listed.contains(&published.to_owned()), "{published} in {listed:?}");
    }
    for refused in ["lie.iso", "trap.bin", "down.bin"] {
        assert!(!listed.contains(&refused.to_owned()), "{refused} is not published: {listed:?}");
    }
    assert_eq!(fetch(&format!("{dir}/r/secure/sub/b.bin"), &t.join("b")), Some(b));

    // A file added at the origin is published by the next `odi catalog sync`, with its bytes;
    // a file replaced at the origin is republished in this mutable catalog.
    let new = write(&www, "v2/new.tar", b"version 2, over TLS");
    let a2 = write(&www, "a.txt", b"release notes over TLS, corrected\n");
    sha256sums(&www, &[(&a2, "a.txt"), (&new, "v2/new.tar")]);
    let out = odi(&["catalog", "sync", "secure", "--directory", &dir]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l == "published secure/v2/new.tar"), "{text}");
    assert!(text.lines().any(|l| l == "published secure/a.txt"), "{text}");
    assert_eq!(fetch(&format!("{dir}/r/secure/v2/new.tar"), &t.join("new")), Some(new));
    assert_eq!(fetch(&format!("{dir}/r/secure/a.txt"), &t.join("a2")), Some(a2), "the replaced bytes");
    // And on demand, for a client that asks before any sync saw it.
    let late = write(&www, "v3/late.bin", b"asked for before a sync");
    assert_eq!(fetch(&format!("{dir}/r/secure/v3/late.bin"), &t.join("late")), Some(late));

    // SSRF over https: a redirect to the metadata address is refused before any connection.
    odi_ok(&["catalog", "create", "meta", "--directory", &dir, "--origin", &format!("https://127.0.0.1:{good_port}/meta/")]);
    let out = odi(&["catalog", "sync", "meta", "--directory", &dir]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("169.254.169.254") && err.contains("metadata"), "{err}");

    // A certificate from a CA the directory does not trust: refused, and the error says so.
    odi_ok(&["catalog", "create", "stranger", "--directory", &dir, "--origin", &format!("https://127.0.0.1:{bad_port}/pub/")]);
    let out = odi(&["catalog", "sync", "stranger", "--directory", &dir]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("certificate") && err.contains("--ca-file") && err.trim().lines().count() == 1, "one clear line: {err}");
    assert!(paths(&dir, "stranger").is_empty(), "nothing from an untrusted origin is published");
    let refused = curl(&["-o", "/dev/null", "-w", "%{http_code}", &format!("{dir}/r/stranger/a.txt")]);
    assert_eq!(String::from_utf8_lossy(&refused.stdout), "404", "nor fetched on demand");
    assert!(canary.accept().is_err(), "nothing connected to the unconfigured loopback port");
}
