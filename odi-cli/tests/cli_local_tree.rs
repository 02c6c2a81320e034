//! A relay beside an existing mirror (`odi relay --local-tree CATALOG=DIR`), as an operator
//! runs it: what the tree holds with the right bytes is linked in, not downloaded; a stale file
//! in the tree is left alone and the artifact downloaded; clients typing `curl -L` get the
//! published bytes from the relay either way. Separate `odi` processes on loopback.

mod common;

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use common::*;

const ADMIN: &str = "1ee71ee71ee71ee71ee71ee71ee71ee71ee71ee71ee71ee71ee71ee71ee71ee7";
const ENROLL: &str = "e1e1e1e11ee71ee71ee71ee71ee71ee71ee71ee71ee71ee71ee71ee71ee71ee7";
const MIB: usize = 1 << 20;

fn spawn(args: &[&str]) -> Proc {
    Proc(spawn_odi(ADMIN, ENROLL, args))
}

/// Where relay data dir `data` keeps the blob `hex`.
fn blob_path(data: &Path, hex: &str) -> PathBuf {
    data.join("blobs/blobs/sha256").join(&hex[..2]).join(hex)
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_relay_beside_a_mirror_links_what_the_mirror_holds_and_downloads_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let dport = free_port();
    let dir_url = format!("http://127.0.0.1:{dport}");
    let _dir = spawn(&[
        "directory",
        "--listen",
        &format!("127.0.0.1:{dport}"),
        "--data",
        tmp.path().join("dir").to_str().unwrap(),
        "--heartbeat-interval",
        "300ms",
        "--lease",
        "1500ms",
        "--probation",
        "0s",
    ]);
    wait_for(20, "the directory to answer", || run("curl", &["-sSf", &format!("{dir_url}/healthz")]).status.success());
    odi_ok_as(ADMIN, &["catalog", "create", "debian", "--directory", &dir_url]);

    // The release as published, and the mirror's tree: one file the same, one stale (same size,
    // other bytes, as a half-synced mirror has), one missing.
    let release = tmp.path().join("release");
    let mirror = tmp.path().join("mirror/debian");
    let same = noise(3 * MIB + 4321, 1);
    let current = noise(2 * MIB + 17, 2);
    let stale = noise(2 * MIB + 17, 3);
    let missing = noise(50_000, 4);
    let artifacts = [("pool/main/o/odi_1.0_amd64.deb", &same), ("pool/main/o/odi_1.1_amd64.deb", &current), ("dists/stable/Release", &missing)];
    for (path, bytes) in artifacts {
        write(&release.join(path), bytes);
        odi_ok_as(ADMIN, &["publish", "--directory", &dir_url, "--catalog", "debian", "--path", path, release.join(path).to_str().unwrap()]);
    }
    write(&mirror.join(artifacts[0].0), &same);
    write(&mirror.join(artifacts[1].0), &stale);

    // What an operator gets wrong is refused at start, with a reason.
    for (flag, reason) in [("debian", "is not CATALOG=DIR"), ("debian=/nonexistent/mirror", "not a directory")] {
        let out = std::process::Command::new(ODI)
            .args(["relay", "--listen", "127.0.0.1:0", "--data", tmp.path().join("bad").to_str().unwrap()])
            .args(["--directory", &dir_url, "--public-url", "http://127.0.0.1:9", "--disk-budget", "1GiB", "--local-tree", flag])
            .env("ODI_ENROLL_TOKEN", ENROLL)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(reason), "--local-tree {flag}: {stderr}");
    }

    let rport = free_port();
    let relay_url = format!("http://127.0.0.1:{rport}");
    let data = tmp.path().join("relay");
    let local_tree = format!("debian={}", mirror.display());
    let _relay = spawn(&[
        "relay",
        "--listen",
        &format!("127.0.0.1:{rport}"),
        "--data",
        data.to_str().unwrap(),
        "--directory",
        &dir_url,
        "--public-url",
        &relay_url,
        "--disk-budget",
        "1GiB",
        "--local-tree",
        &local_tree,
    ]);
    wait_for(60, "the relay to be ready", || ready_count_as(ADMIN, &dir_url) == 1);

    let blob = |bytes: &[u8]| blob_path(&data, &sha256_hex(bytes));
    let linked = std::fs::metadata(blob(&same)).expect("the relay holds the artifact the mirror had");
    assert_eq!(linked.ino(), std::fs::metadata(mirror.join(artifacts[0].0)).unwrap().ino(), "linked from the tree, not copied or downloaded");
    assert_eq!(std::fs::read(blob(&current)).unwrap(), current, "the stale file's artifact was downloaded");
    assert_eq!(std::fs::read(mirror.join(artifacts[1].0)).unwrap(), stale, "the tree is never written");
    assert_eq!(std::fs::read(blob(&missing)).unwrap(), missing);
    let metrics = String::from_utf8(curl(&[&format!("{relay_url}/metrics")]).stdout).unwrap();
    assert!(metrics.contains(&format!("odi_relay_adopted_bytes_total {}", same.len())), "{metrics}");

    // Clients as users type them, sent to the relay.
    for (path, bytes) in artifacts {
        let url = format!("{dir_url}/r/debian/{path}");
        wait_for(30, "the directory to send clients to the relay", || {
            let out = curl(&["-o", "/dev/null", "-w", "%{redirect_url}", &url]);
            String::from_utf8_lossy(&out.stdout).starts_with(&relay_url)
        });
        let out_file = tmp.path().join("got");
        let out = curl(&["-L", "-o", out_file.to_str().unwrap(), &url]);
        assert!(out.status.success(), "curl -L {url}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(std::fs::read(&out_file).unwrap(), *bytes, "curl -L {url}");
    }
}
