//! A meta-directory in front of three directories (EU, NA, global), each with a relay and the
//! same catalog: clients from 127.0.0.2 (DE in the test GeoIP database) and 127.0.0.3 (US) go to
//! their region's directory, others to the global one; a killed directory gets no clients within
//! seconds and gets them back when it returns; `X-Forwarded-For` counts only from trusted ranges.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use mmdb_writer::{Value, Writer};

const ADMIN: &str = "a0a1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c9";
const ENROLL: &str = "a1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e9";

fn spawn(args: &[&str]) -> Proc {
    Proc(spawn_odi(ADMIN, ENROLL, args))
}

fn odi_ok(args: &[&str]) -> String {
    odi_ok_as(ADMIN, args)
}

fn geo(country: &str, continent: &str) -> Value {
    let code = |k: &str, v: &str| Value::Map(BTreeMap::from([(k.to_owned(), Value::from(v))]));
    Value::Map(BTreeMap::from([("country".to_owned(), code("iso_code", country)), ("continent".to_owned(), code("code", continent))]))
}

/// A GeoIP database in the GeoLite2-Country layout: 127.0.0.2 in DE (EU), 127.0.0.3 in US (NA).
fn write_geoip(path: &Path) {
    let mut w = Writer::new("GeoLite2-Country");
    for (ip, country, continent) in [("127.0.0.2", "DE", "EU"), ("127.0.0.3", "US", "NA")] {
        let ip = ip.parse().unwrap();
        w.insert_range(ip, ip, &geo(country, continent)).unwrap();
    }
    std::fs::write(path, w.to_bytes().unwrap()).unwrap();
}

fn start_directory(data: &Path, port: u16) -> Proc {
    let listen = format!("127.0.0.1:{port}");
    let p =
        spawn(&["directory", "--listen", &listen, "--data", data.to_str().unwrap(), "--heartbeat-interval", "300ms", "--lease", "1500ms", "--probation", "0s"]);
    wait_for(20, "a directory to answer", || curl(&[&format!("http://{listen}/healthz")]).status.success());
    p
}

fn start_relay(data: &Path, dir: &str, port: u16) -> Proc {
    let url = format!("http://127.0.0.1:{port}");
    spawn(&[
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
    ])
}

fn ready_relays(dir: &str) -> usize {
    let list: serde_json::Value = serde_json::from_str(&odi_ok(&["relays", "--directory", dir, "--json"])).unwrap();
    list.as_array().unwrap().iter().filter(|r| r["status"] == "ready").count()
}

/// The `Location` the meta-directory answers a client at `source` with (and extra curl args).
fn location(source: &str, url: &str, extra: &[&str]) -> String {
    let out = curl(&[&["--interface", source, "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", url], extra].concat());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (code, loc) = text.split_once(' ').unwrap_or((&text, ""));
    assert_eq!(code, "302", "{url} from {source}: {text} {}", String::from_utf8_lossy(&out.stderr));
    loc.to_owned()
}

/// Follows the redirects as a client at `source` and returns the bytes' SHA-256.
fn fetch_sha(source: &str, url: &str, out: &Path) -> String {
    let res = curl(&["--interface", source, "-fL", "-o", out.to_str().unwrap(), url]);
    assert!(res.status.success(), "curl -L {url} from {source}: {}", String::from_utf8_lossy(&res.stderr));
    sha256_hex(&std::fs::read(out).unwrap())
}

#[test]
fn clients_go_to_their_region_fail_over_within_seconds_and_return() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let payload: Vec<u8> = (0..(300 << 10)).map(|i: u32| (i * 31 % 251) as u8).collect();
    std::fs::write(t.join("tool.tar"), &payload).unwrap();
    let want = sha256_hex(&payload);

    // Three directories with a relay each, all holding catalog `pub` with the same file.
    let mut dirs = BTreeMap::new();
    let mut keep = Vec::new();
    for name in ["eu", "us", "global"] {
        let (dport, rport) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{dport}");
        let dir = start_directory(&t.join(name), dport);
        odi_ok(&["catalog", "create", "pub", "--directory", &url]);
        odi_ok(&["publish", "--directory", &url, "--catalog", "pub", t.join("tool.tar").to_str().unwrap()]);
        keep.push(start_relay(&t.join(format!("{name}-relay")), &url, rport));
        dirs.insert(name, (url, dport, Some(dir)));
    }
    for (url, _, _) in dirs.values() {
        wait_for(30, "each directory's relay to be ready", || ready_relays(url) == 1);
    }

    let mmdb = t.join("test.mmdb");
    write_geoip(&mmdb);
    let (eu, us, global) = (dirs["eu"].0.clone(), dirs["us"].0.clone(), dirs["global"].0.clone());
    let mport = free_port();
    let meta_url = format!("http://127.0.0.1:{mport}");
    let refs = [format!("DE={eu}"), format!("NA={us}"), global.clone()];
    let (listen, data) = (format!("127.0.0.1:{mport}"), t.join("meta"));
    let mut args =
        vec!["directory", "--meta", "--listen", &listen, "--data", data.to_str().unwrap(), "--geoip", mmdb.to_str().unwrap(), "--probe-interval", "500ms"];
    for r in &refs {
        args.extend(["--reference", r.as_str()]);
    }
    args.extend(["--trust-forwarded-for", "127.0.0.1/32"]);
    let _meta = spawn(&args);
    let file = format!("{meta_url}/r/pub/tool.tar");
    wait_for(20, "the meta-directory to see all three directories", || {
        let out = curl(&[&format!("{meta_url}/healthz")]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["references"].as_array().is_some_and(|r| r.len() == 3 && r.iter().all(|r| r["healthy"] == true))
    });

    // Each client to its region, and the right bytes through the whole chain.
    for (source, dir) in [("127.0.0.2", &eu), ("127.0.0.3", &us), ("127.0.0.1", &global)] {
        assert_eq!(location(source, &file, &[]), format!("{dir}/r/pub/tool.tar"), "client {source}");
        assert_eq!(fetch_sha(source, &file, &t.join(format!("got-{source}"))), want, "client {source}");
    }
    let head = curl(&["-sI", &file]);
    let head = String::from_utf8_lossy(&head.stdout).to_lowercase();
    assert!(head.starts_with("http/1.1 302") && head.contains("cache-control: no-store"), "{head}");
    let unknown = curl(&["-o", "/dev/null", "-w", "%{http_code}", &format!("{meta_url}/r/nope/x")]);
    assert_eq!(String::from_utf8_lossy(&unknown.stdout), "404");
    let bad = curl(&["-o", "/dev/null", "-w", "%{http_code}", "--path-as-is", &format!("{meta_url}/r/pub/../x")]);
    assert_eq!(String::from_utf8_lossy(&bad.stdout), "400");

    // X-Forwarded-For from the trusted 127.0.0.1 places the client; from 127.0.0.4 it is ignored.
    assert_eq!(location("127.0.0.1", &file, &["-H", "X-Forwarded-For: 127.0.0.2"]), format!("{eu}/r/pub/tool.tar"));
    assert_eq!(location("127.0.0.1", &file, &["-H", "X-Forwarded-For: 127.0.0.9, 127.0.0.3"]), format!("{us}/r/pub/tool.tar"));
    assert_eq!(location("127.0.0.4", &file, &["-H", "X-Forwarded-For: 127.0.0.2"]), format!("{global}/r/pub/tool.tar"));

    // Kill the EU directory: within seconds its clients go elsewhere and still get the bytes.
    let (_, eu_port, eu_proc) = dirs.get_mut("eu").unwrap();
    let eu_port = *eu_port;
    drop(eu_proc.take());
    let killed = Instant::now();
    wait_for(5, "EU clients to be sent elsewhere", || location("127.0.0.2", &file, &[]) != format!("{eu}/r/pub/tool.tar"));
    let moved = killed.elapsed();
    eprintln!("EU clients moved {:.2}s after the kill", moved.as_secs_f64());
    assert!(moved < Duration::from_secs(5));
    assert_eq!(location("127.0.0.2", &file, &[]), format!("{global}/r/pub/tool.tar"), "to the reference with no region");
    assert_eq!(fetch_sha("127.0.0.2", &file, &t.join("got-eu-failover")), want);
    assert_eq!(location("127.0.0.3", &file, &[]), format!("{us}/r/pub/tool.tar"), "US clients are not affected");

    // It comes back: its clients return.
    let _eu_again = start_directory(&t.join("eu"), eu_port);
    wait_for(10, "EU clients to return", || location("127.0.0.2", &file, &[]) == format!("{eu}/r/pub/tool.tar"));
    assert_eq!(fetch_sha("127.0.0.2", &file, &t.join("got-eu-back")), want);
    drop(keep);
}

#[test]
fn forwarded_for_is_ignored_without_trust() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (eport, gport, mport) = (free_port(), free_port(), free_port());
    let (eu, global) = (format!("http://127.0.0.1:{eport}"), format!("http://127.0.0.1:{gport}"));
    let mut keep = Vec::new();
    for (name, port, url) in [("eu", eport, &eu), ("global", gport, &global)] {
        keep.push(start_directory(&t.join(name), port));
        odi_ok(&["catalog", "create", "pub", "--directory", url]);
    }
    let mmdb = t.join("test.mmdb");
    write_geoip(&mmdb);
    let listen = format!("127.0.0.1:{mport}");
    let eu_ref = format!("EU={eu}");
    let data = t.join("meta");
    let _meta = spawn(&[
        "directory",
        "--meta",
        "--listen",
        &listen,
        "--data",
        data.to_str().unwrap(),
        "--geoip",
        mmdb.to_str().unwrap(),
        "--reference",
        &eu_ref,
        "--reference",
        &global,
    ]);
    let file = format!("http://{listen}/r/pub/a.iso");
    wait_for(20, "the meta-directory to answer 302", || {
        let out = curl(&["-o", "/dev/null", "-w", "%{http_code}", &file]);
        out.stdout == b"302"
    });
    assert_eq!(location("127.0.0.1", &file, &["-H", "X-Forwarded-For: 127.0.0.2"]), format!("{global}/r/pub/a.iso"), "not trusted: ignored");
    assert_eq!(location("127.0.0.2", &file, &[]), format!("{eu}/r/pub/a.iso"), "a DE client matches the EU continent reference");
    wait_for(5, "both references healthy", || {
        let v: serde_json::Value = serde_json::from_slice(&curl(&[&format!("http://{listen}/healthz")]).stdout).unwrap_or_default();
        v["references"].as_array().is_some_and(|r| r.iter().all(|r| r["healthy"] == true))
    });
    let wrong = odi_as(ADMIN, &["directory", "--meta", "--listen", "127.0.0.1:0", "--data", data.to_str().unwrap(), "--reference", "EUROPE=http://x"]);
    assert!(!wrong.status.success());
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(err.contains("region `EUROPE`") && err.lines().count() == 1, "{err}");
}
