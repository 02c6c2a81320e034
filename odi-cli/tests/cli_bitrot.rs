//! Bit rot on a relay's disk, met by plain clients as users type them: `curl -L`, `wget` and
//! `pip download` through the directory never complete a wrong file, and the relay drops its
//! rotten copy and holds a good one again. Separate `odi` processes on loopback.

mod common;

use std::path::{Path, PathBuf};

use common::*;

const ADMIN: &str = "b17e0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7";
const ENROLL: &str = "b17e1f2e3d4c5b6a79880716253443526170f8e9d0c1b2a3f4e5d6c7b8a9f0e1";
const MIB: usize = 1 << 20;
/// Downloads through the directory per client and artifact.
const DOWNLOADS: usize = 20;

/// Kills `old` (and waits for it), then starts its replacement.
fn start_relay_after_kill(old: &mut Proc, start: impl FnOnce() -> Proc) -> Proc {
    let _ = old.0.kill();
    let _ = old.0.wait();
    start()
}

fn odi_ok(args: &[&str]) -> String {
    odi_ok_as(ADMIN, args)
}

fn spawn(args: &[&str]) -> Proc {
    Proc(spawn_odi(ADMIN, ENROLL, args))
}

fn sha256(bytes: &[u8]) -> String {
    odi_core::Digest::of(bytes).to_hex()
}

fn ready_count(dir: &str) -> usize {
    ready_count_as(ADMIN, dir)
}

/// A real wheel, several MiB, its big member first (stored, not compressed), so that rot in
/// its middle lands in a member pip does not read to learn the metadata.
fn write_wheel(path: &Path) {
    let payload = path.with_extension("payload");
    std::fs::write(&payload, noise(3 * MIB + 777, 9)).unwrap();
    let script = r#"
import sys, zipfile
out, payload = sys.argv[1], sys.argv[2]
dist = "odi_test_pkg-1.0.dist-info"
with zipfile.ZipFile(out, "w") as z:
    z.write(payload, "odi_test_pkg/blob.bin", compress_type=zipfile.ZIP_STORED)
    z.writestr("odi_test_pkg/__init__.py", "")
    z.writestr(dist + "/METADATA", "Metadata-Version: 2.1\nName: odi-test-pkg\nVersion: 1.0\n")
    z.writestr(dist + "/WHEEL", "Wheel-Version: 1.0\nGenerator: odi-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    z.writestr(dist + "/RECORD", "")
"#;
    let out = run("python3", &["-c", script, path.to_str().unwrap(), payload.to_str().unwrap()]);
    assert!(out.status.success(), "cannot build the test wheel: {}", String::from_utf8_lossy(&out.stderr));
}

/// Where relay data dir `data` keeps the blob `hex`.
fn blob_path(data: &Path, hex: &str) -> PathBuf {
    data.join("blobs/blobs/sha256").join(&hex[..2]).join(hex)
}

/// Overwrites 16 bytes at `offset` of the file, as rot (or a hand) would.
fn rot(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt as _;
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut old = [0u8; 16];
    file.read_exact_at(&mut old, offset).unwrap();
    let new: Vec<u8> = old.iter().map(|b| !b).collect();
    file.write_all_at(&new, offset).unwrap();
    file.sync_all().unwrap();
}

#[derive(Clone, Copy, Debug)]
enum Client {
    Curl,
    Wget,
    Pip,
}

/// Downloads `url` with `client` as a user types it; the saved bytes if it exited 0.
fn download(client: Client, url: &str, out_dir: &Path, name: &str) -> Option<Vec<u8>> {
    let _ = std::fs::remove_dir_all(out_dir);
    std::fs::create_dir_all(out_dir).unwrap();
    let file = out_dir.join(name);
    let out = match client {
        Client::Curl => run("curl", &["-L", "-sS", "--max-time", "30", "-o", file.to_str().unwrap(), url]),
        Client::Wget => run("wget", &["-q", "--timeout=10", "--tries=3", "-O", file.to_str().unwrap(), url]),
        Client::Pip => run(
            "python3",
            &[
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-index",
                "--no-cache-dir",
                "--disable-pip-version-check",
                "--timeout",
                "10",
                "-d",
                out_dir.to_str().unwrap(),
                url,
            ],
        ),
    };
    out.status.success().then(|| std::fs::read(&file).unwrap_or_else(|e| panic!("{client:?} exited 0 but saved no {name}: {e}")))
}

#[test]
fn plain_clients_never_complete_a_rotten_file_and_the_relay_heals() {
    let tmp = tempfile::tempdir().unwrap();
    let dport = free_port();
    let dir_url = format!("http://127.0.0.1:{dport}");
    let listen = format!("127.0.0.1:{dport}");
    let dir_data = tmp.path().join("dir");
    // Audits and the scrub are slowed to a crawl: here the clients' own downloads meet the rot.
    let _dir = spawn(&[
        "directory",
        "--listen",
        &listen,
        "--data",
        dir_data.to_str().unwrap(),
        "--heartbeat-interval",
        "300ms",
        "--lease",
        "1500ms",
        "--audit-interval",
        "60m",
        "--probation",
        "0s",
    ]);
    wait_for(20, "the directory to answer", || run("curl", &["-sSf", &format!("{dir_url}/healthz")]).status.success());
    odi_ok(&["catalog", "create", "c", "--directory", &dir_url, "--replicas", "3"]);

    let mut relays = Vec::new();
    let start_relay = |port: u16, data: &Path| {
        spawn(&[
            "relay",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data",
            data.to_str().unwrap(),
            "--directory",
            &dir_url,
            "--public-url",
            &format!("http://127.0.0.1:{port}"),
            "--disk-budget",
            "1GiB",
            "--scrub-rate",
            "0",
        ])
    };
    let mut ports = Vec::new();
    for i in 0..3 {
        let port = free_port();
        let data = tmp.path().join(format!("r{i}"));
        let url = format!("http://127.0.0.1:{port}");
        relays.push((start_relay(port, &data), data, url));
        ports.push(port);
    }

    // A multi-chunk file, a small one (served from memory once verified) and a wheel.
    let files = tmp.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    let wheel = "odi_test_pkg-1.0-py3-none-any.whl";
    write_wheel(&files.join(wheel));
    std::fs::write(files.join("big.bin"), noise(6 * MIB + 12_345, 1)).unwrap();
    std::fs::write(files.join("small.txt"), noise(20_000, 2)).unwrap();
    for name in ["big.bin", "small.txt", wheel] {
        odi_ok(&["publish", "--directory", &dir_url, "--catalog", "c", "--path", name, files.join(name).to_str().unwrap()]);
    }
    wait_for(60, "three ready relays", || ready_count(&dir_url) == 3);

    let (rotten_data, rotten_url) = (relays[0].1.clone(), relays[0].2.clone());
    let mut wrong = Vec::new();
    let mut failed = 0;
    // (client, artifact, offset of the rot): the middle of a large file's third chunk, a small
    // blob before it was ever read, and a wheel's payload.
    let cases = [
        (Client::Curl, "small.txt", 100u64),
        (Client::Curl, "big.bin", 2 * MIB as u64 + 4321),
        (Client::Wget, "big.bin", 3 * MIB as u64 + 17),
        (Client::Pip, wheel, MIB as u64 + MIB as u64 / 2),
        (Client::Wget, "big.bin", 5 * MIB as u64),
    ];
    for (round, (client, name, offset)) in cases.into_iter().enumerate() {
        let expected = std::fs::read(files.join(name)).unwrap();
        let hex = sha256(&expected);
        let path = blob_path(&rotten_data, &hex);
        assert_eq!(sha256(&std::fs::read(&path).unwrap()), hex, "round {round}: the relay starts with a good copy");
        rot(&path, offset);
        if round == 0 {
            // The directory's possession check read the small blob, so the relay serves it from a
            // verified copy in memory (no wrong byte can come of the rot then). Restart the relay
            // so that this blob is read from its rotten disk copy, as after a reboot.
            relays[0].0 = start_relay_after_kill(&mut relays[0].0, || start_relay(ports[0], &rotten_data));
            wait_for(30, "the restarted relay to answer", || run("curl", &["-sSf", &format!("{rotten_url}/healthz")]).status.success());
        }
        // Once straight at the rotten relay (so the rot is surely met), then through the
        // directory, as users do.
        let direct = format!("{rotten_url}/r/c/{name}");
        let via_directory = format!("{dir_url}/r/c/{name}");
        for (i, url) in std::iter::once(&direct).chain(std::iter::repeat_n(&via_directory, DOWNLOADS)).enumerate() {
            match download(client, url, &tmp.path().join("out"), name) {
                Some(got) if got == expected => {}
                Some(got) => wrong.push(format!("round {round}: {client:?} download {i} of {name} from {url} exited 0 with wrong bytes ({} bytes)", got.len())),
                None if url == &direct => {} // the rot cut the transfer: a failure the user sees
                None => failed += 1,
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        // The relay dropped the rotten copy and holds a good one again, re-verified.
        wait_for(30, "the relay to hold a good copy again", || std::fs::read(&path).is_ok_and(|b| sha256(&b) == hex));
        wait_for(30, "all three relays ready again", || ready_count(&dir_url) == 3);
    }
    assert_eq!(failed, 0, "downloads through the directory must succeed: the directory sends them to good copies");
}
