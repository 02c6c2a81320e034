//! Certificates from an ACME CA: Debian's `pebble` (a real RFC 8555 server) on loopback issues
//! the directory's and a relay's certificates after validating tls-alpn-01 on their own
//! listeners; curl verifies them against pebble's root; a restart reuses the stored certificate.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

const ADMIN: &str = "3c5e7a9b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1c3e5b7d9f1a3c5e7b9d1f3a5c";
const ENROLL: &str = "4d6f8b0a2c4e6b8d0f2a4c6e8b0d2f4a6c8e0b2d4f6a8c0e2b4d6f8a0c2e4b6d";

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A pebble CA on loopback whose validations of tls-alpn-01 connect to `validate_port`.
struct Pebble {
    _proc: Proc,
    dir_url: String,
    /// Pebble's issuing root (made anew at each start), as PEM in a file.
    root: PathBuf,
}

/// Certificates it issues are valid for `validity_secs`.
fn start_pebble(work: &Path, own_tls: &odi_net::tls::DevCerts, validate_port: u16, validity_secs: u64) -> Pebble {
    let (port, management) = (free_port(), free_port());
    let config = serde_json::json!({ "pebble": {
        "listenAddress": format!("127.0.0.1:{port}"),
        "managementListenAddress": format!("127.0.0.1:{management}"),
        "certificate": own_tls.cert, "privateKey": own_tls.key,
        "httpPort": free_port(), "tlsPort": validate_port,
        "ocspResponderURL": "", "externalAccountBindingRequired": false,
        "certificateValidityPeriod": validity_secs,
    }});
    std::fs::create_dir_all(work).unwrap();
    let config_path = work.join("pebble.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let child = Command::new("pebble")
        .args(["-config", path(&config_path)])
        // No random waits before validating; every good nonce accepted (the retry on a rejected
        // one has a test of its own in instant-acme).
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pebble is installed (scripts/test installs it)");
    let proc = Proc(child);
    let roots = format!("https://127.0.0.1:{management}/roots/0");
    wait_for(20, "pebble to answer", || curl(&["--cacert", path(&own_tls.ca), &roots]).status.success());
    let root = work.join("pebble-root.pem");
    let out = curl(&["--cacert", path(&own_tls.ca), &roots]);
    std::fs::write(&root, &out.stdout).unwrap();
    Pebble { _proc: proc, dir_url: format!("https://127.0.0.1:{port}/dir"), root }
}

/// `curl --cacert ROOT https://localhost:PORT/healthz` succeeds: the listener serves a
/// certificate for `localhost` that chains to `root`.
fn verified(root: &Path, port: u16) -> bool {
    curl(&["--cacert", path(root), &format!("https://localhost:{port}/healthz")]).status.success()
}

#[test]
fn a_directory_and_a_relay_get_their_certificates_from_an_acme_ca_and_keep_them_across_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    // Pebble's own HTTPS endpoint uses a test CA that every odi process trusts (--ca-file).
    let own = odi_net::tls::write_dev_ca(&tmp.path().join("pebble-tls"), &["127.0.0.1", "localhost"]).unwrap();
    let (dir_port, relay_port) = (free_port(), free_port());
    // The directory's certificates live 45 s, so that the test sees one renewed (after 30 s).
    let ca_dir = start_pebble(&tmp.path().join("ca-dir"), &own, dir_port, 45);
    let ca_relay = start_pebble(&tmp.path().join("ca-relay"), &own, relay_port, 90 * 86_400);

    let data = tmp.path().join("dir");
    let listen = format!("127.0.0.1:{dir_port}");
    let public = format!("https://localhost:{dir_port}");
    #[rustfmt::skip]
    let dir_args = [
        "directory", "--listen", &listen, "--data", path(&data), "--public-url", &public, "--heartbeat-interval", "300ms",
        "--lease", "1500ms", "--probation", "0s", "--probe-interval", "1s",
        "--acme-directory", &ca_dir.dir_url, "--acme-email", "ops@example.org",
        "--ca-file", path(&own.ca), "--ca-file", path(&ca_dir.root), "--ca-file", path(&ca_relay.root),
    ];
    let directory = Proc(spawn_odi(ADMIN, ENROLL, &dir_args));
    wait_for(60, "the directory's certificate from the ACME CA", || verified(&ca_dir.root, dir_port));
    let cert = data.join("acme/cert.pem");
    let issued = std::fs::read(&cert).unwrap();
    assert!(issued.starts_with(b"-----BEGIN CERTIFICATE-----"));
    assert!(data.join("acme/account.json").exists());
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(data.join("acme/key.pem")).unwrap().permissions().mode() & 0o077, 0, "the key is private");
    // Another CA's root does not verify it: the certificate really is pebble's.
    assert!(!verified(&ca_relay.root, dir_port));

    // A relay gets its own, from the other CA, and passes the directory's self-test over it.
    let relay_data = tmp.path().join("relay");
    let (relay_listen, relay_public) = (format!("127.0.0.1:{relay_port}"), format!("https://localhost:{relay_port}"));
    #[rustfmt::skip]
    let relay_args = [
        "relay", "--listen", &relay_listen, "--data", path(&relay_data), "--directory", &public, "--public-url", &relay_public,
        "--disk-budget", "1GiB", "--acme-directory", &ca_relay.dir_url,
        "--ca-file", path(&own.ca), "--ca-file", path(&ca_dir.root),
    ];
    let _relay = Proc(spawn_odi(ADMIN, ENROLL, &relay_args));
    wait_for(60, "the relay's certificate from the ACME CA", || verified(&ca_relay.root, relay_port));
    wait_for(60, "the relay to pass its self-test over its ACME certificate", || {
        let out = odi_as(ADMIN, &["relays", "--ca-file", path(&ca_dir.root), "--directory", &public, "--json"]);
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        list.as_array().is_some_and(|l| l.iter().any(|r| r["status"] == "ready"))
    });

    // Restarted, the directory serves the stored certificate: no new order, same bytes.
    drop(directory);
    let _directory = Proc(spawn_odi(ADMIN, ENROLL, &dir_args));
    wait_for(20, "the restarted directory to serve the stored certificate", || verified(&ca_dir.root, dir_port));
    assert_eq!(std::fs::read(&cert).unwrap(), issued, "a valid stored certificate is not ordered again");

    // With a third of its life left it is renewed in place: new bytes, served without a restart.
    wait_for(60, "the directory's certificate renewed", || std::fs::read(&cert).is_ok_and(|now| now != issued));
    wait_for(10, "the renewed certificate served", || {
        let out = Command::new("openssl").args(["s_client", "-connect", &listen, "-servername", "localhost"]).stdin(Stdio::null()).output().expect("openssl");
        let served = String::from_utf8_lossy(&out.stdout).into_owned();
        let pem = String::from_utf8_lossy(&std::fs::read(&cert).unwrap()).into_owned();
        let leaf = pem.split("-----END CERTIFICATE-----").next().unwrap_or_default().replace("-----BEGIN CERTIFICATE-----", "");
        served.replace('\n', "").contains(&leaf.replace('\n', ""))
    });
    assert!(verified(&ca_dir.root, dir_port));
}

#[test]
fn acme_flags_that_cannot_work_are_refused_with_a_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    let listen = format!("127.0.0.1:{}", free_port());
    let cases: [(&[&str], &str); 4] = [
        (&["--acme-directory", "https://ca.example/dir"], "ACME needs a name"),
        (&["--acme-directory", "http://ca.example/dir", "--acme-domain", "d.example.org"], "must be an https:// URL"),
        (&["--acme-directory", "https://ca.example/dir", "--acme-domain", "127.0.0.1"], "is not a DNS name"),
        (&["--acme-domain", "d.example.org"], "need --acme-directory"),
    ];
    for (extra, reason) in cases {
        let mut args = vec!["directory", "--listen", &listen, "--data", path(&data)];
        args.extend_from_slice(extra);
        let out = odi_as(ADMIN, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} was accepted");
        assert!(stderr.contains(reason), "{extra:?}: {stderr}");
    }
}
