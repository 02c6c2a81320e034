//! One relay process enrolled with two independent directories (not linked), each with its own
//! catalog and its own enrollment token: both catalogs are served through the relay, within one
//! disk budget split between them, and an expunge on one directory deletes only its bytes.

mod common;

use std::path::Path;

use common::*;

const ADMIN: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const ENROLL_A: &str = "e1e2e3e4e5e6e7e8e9eaebecedeeeff0e1e2e3e4e5e6e7e8e9eaebecedeeeff0";
const ENROLL_B: &str = "f1f2f3f4f5f6f7f8f9fafbfcfdfeff00f1f2f3f4f5f6f7f8f9fafbfcfdfeff00";
const MIB: u64 = 1 << 20;
const BUDGET: u64 = 8 * MIB;

fn odi_ok(args: &[&str]) -> String {
    odi_ok_as(ADMIN, args)
}

fn start_directory(data: &Path, port: u16, enroll: &str) -> Proc {
    let listen = format!("127.0.0.1:{port}");
    let args = ["directory", "--listen", &listen, "--data", data.to_str().unwrap(), "--heartbeat-interval", "300ms", "--lease", "1500ms", "--probation", "0s"];
    let p = Proc(spawn_odi(ADMIN, enroll, &args));
    wait_for(20, "a directory to answer", || curl(&[&format!("http://{listen}/healthz")]).status.success());
    p
}

fn relay_view(dir: &str) -> Option<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(&odi_ok(&["relays", "--directory", dir, "--json"])).unwrap();
    v.as_array()?.first().cloned()
}

/// Blob files under the relay's store, and their total size.
fn stored(data: &Path) -> (Vec<String>, u64) {
    let (mut names, mut total) = (Vec::new(), 0);
    let mut stack = vec![data.join("blobs")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                names.push(e.file_name().to_string_lossy().into_owned());
                total += e.metadata().unwrap().len();
            }
        }
    }
    (names, total)
}

fn holds(data: &Path, hex: &str) -> bool {
    stored(data).0.iter().any(|n| n.contains(hex))
}

/// `curl -L` through `url`: the bytes, and the URL that answered them.
fn fetch(url: &str, out: &Path) -> (Vec<u8>, String) {
    let res = curl(&["-fL", "-o", out.to_str().unwrap(), "-w", "%{url_effective}", url]);
    assert!(res.status.success(), "curl {url}: {}", String::from_utf8_lossy(&res.stderr));
    (std::fs::read(out).unwrap(), String::from_utf8_lossy(&res.stdout).into_owned())
}

#[test]
fn one_relay_serves_two_directories_within_one_budget_and_obeys_each_ones_expunge() {
    let tmp = tempfile::tempdir().unwrap();
    let (aport, bport, rport) = (free_port(), free_port(), free_port());
    let (a_url, b_url, relay_url) = (format!("http://127.0.0.1:{aport}"), format!("http://127.0.0.1:{bport}"), format!("http://127.0.0.1:{rport}"));
    let _a = start_directory(&tmp.path().join("dir-a"), aport, ENROLL_A);
    let _b = start_directory(&tmp.path().join("dir-b"), bport, ENROLL_B);
    odi_ok(&["catalog", "create", "alpha", "--directory", &a_url, "--replicas", "1"]);
    odi_ok(&["catalog", "create", "beta", "--directory", &b_url, "--replicas", "1"]);
    let mut files = Vec::new();
    for (dir, catalog, name, len, seed) in [
        (&a_url, "alpha", "a.bin", 3 * MIB + 5, 3u8),
        (&b_url, "beta", "b.bin", 2 * MIB + 7, 11),
        (&b_url, "beta", "c.bin", 1000, 17),
        (&a_url, "alpha", "d.bin", 4 * MIB + 3, 23),
    ] {
        let path = tmp.path().join(name);
        let bytes: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed)).collect();
        std::fs::write(&path, &bytes).unwrap();
        odi_ok(&["publish", "--directory", dir, "--catalog", catalog, path.to_str().unwrap()]);
        files.push((dir.clone(), catalog, name, sha256_hex(&bytes)));
    }
    let data = tmp.path().join("relay");
    let budget = "8MiB";
    let args = [
        "relay",
        "--listen",
        &format!("127.0.0.1:{rport}"),
        "--data",
        data.to_str().unwrap(),
        "--directory",
        &a_url,
        "--directory",
        &b_url,
        "--public-url",
        &relay_url,
        "--disk-budget",
        budget,
    ];
    let _relay = Proc(spawn_odi(ADMIN, &format!("{ENROLL_A},{ENROLL_B}"), &args));
    for dir in [&a_url, &b_url] {
        wait_for(40, "the relay to be ready and synced with both directories", || {
            relay_view(dir).is_some_and(|v| v["status"] == "ready" && v["held"] == v["assigned"] && v["assigned"].as_u64() > Some(0))
        });
        // Each directory is offered half the budget.
        let v = relay_view(dir).unwrap();
        assert_eq!(v["capacity"]["disk_budget"].as_u64(), Some(BUDGET / 2), "{v}");
    }
    // Both catalogs come through the relay, the bytes verified; except alpha's second file,
    // which is bigger than alpha's half of the budget (4 MiB): alpha serves it itself.
    for (dir, catalog, name, hex) in &files {
        let (bytes, effective) = fetch(&format!("{dir}/r/{catalog}/{name}"), &tmp.path().join(format!("{name}.got")));
        assert_eq!(sha256_hex(&bytes), *hex, "{catalog}/{name}");
        if *name == "d.bin" {
            assert!(effective.starts_with(&a_url), "{catalog}/{name} came from {effective}, over alpha's share");
        } else {
            assert!(effective.starts_with(&relay_url), "{catalog}/{name} came from {effective}, not the relay");
        }
    }
    assert!(!holds(&data, &files[3].3), "what does not fit its directory's share is not held");
    for dir in [&a_url, &b_url] {
        let v = relay_view(dir).unwrap();
        assert!(v["held_bytes"].as_u64().unwrap() <= BUDGET / 2, "{v}");
    }
    // A name the relay does not have, in a catalog one directory serves, goes back to it.
    let res = curl(&["-s", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", &format!("{relay_url}/r/beta/none.bin")]);
    assert_eq!(String::from_utf8_lossy(&res.stdout), format!("302 {b_url}/r/beta/none.bin"));
    let (names, total) = stored(&data);
    assert!(total <= BUDGET, "{total} bytes on disk over the {BUDGET}-byte budget: {names:?}");
    assert!(holds(&data, &files[0].3) && holds(&data, &files[1].3));

    // Directory A bars its bytes: the relay deletes them and keeps B's.
    odi_ok(&["expunge", "--directory", &a_url, "--digest", &format!("sha256:{}", files[0].3)]);
    wait_for(20, "the relay to delete the expunged bytes", || !holds(&data, &files[0].3));
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert!(holds(&data, &files[1].3) && holds(&data, &files[2].3), "B's bytes stay");
    let (bytes, effective) = fetch(&format!("{b_url}/r/beta/b.bin"), &tmp.path().join("b.again"));
    assert_eq!(sha256_hex(&bytes), files[1].3);
    assert!(effective.starts_with(&relay_url), "{effective}");
    let gone = curl(&["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("{relay_url}/r/alpha/a.bin")]);
    assert_ne!(String::from_utf8_lossy(&gone.stdout), "200", "the relay no longer serves the expunged bytes");
}
