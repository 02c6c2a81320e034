//! The oras Python client's own pytest suite (PyPI `oras`, which scripts/test installs) run
//! against a directory on loopback: push, pull, tags, delete, login, the registry token flow.
//! Deselected: the tests that need the internet, a TLS registry or a 16 GB file
//! (`ssl`, `many_tags`, `chunked_push`).
//!
//! The suite runs three times, as its conftest allows:
//! - without `ORAS_AUTH`: its pushes find the admin token in `$HOME/.docker/config.json`, as
//!   after `oras login`; the OCI-layout tests, which build a bare `Registry` that would push
//!   anonymously, get the same credentials from the `oras_logged_in.py` plugin beside this file;
//! - with `ORAS_AUTH=true` and `odi` / the admin token as user and password: its login tests;
//! - the same against a directory serving HTTPS (a test CA): the two login tests that reach the
//!   registry by `https://` with `tls_verify=False`.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const ADMIN: &str = "0c1a0b1c2d3e4f50617283a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";
const ENROLL: &str = "0c1e1f2e3d4c5b6a79880716253443526170f8e9d0c1b2a3f4e5d6c7b8a9f0e1";
/// The tests left out: they reach ghcr.io (`ssl`, `many_tags`) or push a 16 GB file
/// (`chunked_push`).
const DESELECT: &str = "not ssl and not many_tags and not chunked_push";
/// The login tests that reach the registry by `https://` (`tls_verify=False`).
const HTTPS_ONLY: &str = "(selfsigned or custom_docker_config)";

/// The site-packages directory holding `oras` (its tests import from there).
fn site_packages() -> String {
    let out = run("python3", &["-c", "import os, oras.client, pytest; print(os.path.dirname(os.path.dirname(oras.__file__)))"]);
    assert!(
        out.status.success(),
        "the oras pytest suite needs `python3 -m pip install oras pytest` (scripts/test does it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `(passed, failed, skipped)` from pytest's summary line, and the whole output, for the
/// tests `select` picks.
fn pytest(site: &str, home: &Path, port: u16, auth: bool, select: &str) -> ((usize, usize, usize), String) {
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", "oras/tests", "-k", select])
        .current_dir(site)
        .env("PYTHONPATH", concat!(env!("CARGO_MANIFEST_DIR"), "/tests"))
        .env("HOME", home)
        .env("ORAS_HOST", "127.0.0.1")
        .env("ORAS_PORT", port.to_string())
        .env_remove("DOCKER_CONFIG")
        .env_remove("REQUESTS_CA_BUNDLE");
    if auth {
        cmd.env("ORAS_AUTH", "true").env("ORAS_USER", "odi").env("ORAS_PASS", ADMIN);
    } else {
        cmd.env_remove("ORAS_AUTH").args(["-p", "oras_logged_in"]).env("ODI_ORAS_USER", "odi").env("ODI_ORAS_PASS", ADMIN);
    }
    let out = cmd.output().expect("run python3 -m pytest");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let summary = text.lines().rev().find(|l| l.contains(" in ") && (l.contains("passed") || l.contains("failed"))).unwrap_or_default();
    let count = |what: &str| -> usize {
        let words: Vec<&str> = summary.split([' ', ',', '=']).filter(|w| !w.is_empty()).collect();
        words.windows(2).find(|w| w[1].starts_with(what)).and_then(|w| w[0].parse().ok()).unwrap_or(0)
    };
    ((count("passed"), count("failed") + count("error"), count("skipped")), text)
}

/// A directory on a free port with a mutable catalog `dinosaur` (the suite's repositories),
/// serving HTTPS with `certs`.
fn directory(data: &Path, certs: Option<&odi_net::tls::DevCerts>) -> (Proc, u16) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["directory", "--listen", &listen, "--data", data.to_str().unwrap()];
    let (scheme, mut trust) = ("http", vec![]);
    let scheme = match certs {
        Some(c) => {
            args.extend(["--tls-cert", c.cert.to_str().unwrap(), "--tls-key", c.key.to_str().unwrap()]);
            trust = vec!["--cacert", c.ca.to_str().unwrap()];
            "https"
        }
        None => scheme,
    };
    let dir = Proc(spawn_odi(ADMIN, ENROLL, &args));
    let url = format!("{scheme}://{listen}");
    wait_for(20, "the directory to answer", || curl(&[&trust[..], &[&format!("{url}/healthz")]].concat()).status.success());
    let mut create = vec!["catalog", "create", "dinosaur", "--directory", &url, "--mutable"];
    if let Some(c) = certs {
        create.extend(["--ca-file", c.ca.to_str().unwrap()]);
    }
    odi_ok_as(ADMIN, &create);
    (dir, port)
}

#[test]
fn the_oras_test_suite_passes_against_a_directory() {
    let site = site_packages();
    let tmp = tempfile::tempdir().unwrap();
    let (_dir, port) = directory(&tmp.path().join("dir"), None);

    // The credentials a user has after `oras login 127.0.0.1:PORT -u odi -p TOKEN`.
    use base64::Engine as _;
    let home = tmp.path().join("home");
    std::fs::create_dir_all(home.join(".docker")).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("odi:{ADMIN}"));
    let config = serde_json::json!({ "auths": { format!("127.0.0.1:{port}"): { "auth": auth } } });
    std::fs::write(home.join(".docker/config.json"), config.to_string()).unwrap();
    let ((passed, failed, skipped), text) = pytest(&site, &home, port, false, DESELECT);
    eprintln!("oras suite without ORAS_AUTH: {passed} passed, {failed} failed, {skipped} skipped");
    assert_eq!(failed, 0, "oras suite failures:\n{text}");
    // Every test that talks to the registry without logging in ran: push/pull, tags, layouts.
    assert!(passed >= 60, "too few oras tests ran ({passed}):\n{text}");

    // With ORAS_AUTH: the login tests, from an empty HOME; the two that need HTTPS next.
    let bare = tmp.path().join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    let ((passed, failed, skipped), text) = pytest(&site, &bare, port, true, &format!("{DESELECT} and not {HTTPS_ONLY}"));
    eprintln!("oras suite with ORAS_AUTH=true: {passed} passed, {failed} failed, {skipped} skipped");
    assert_eq!(failed, 0, "oras suite failures with ORAS_AUTH:\n{text}");
    assert!(text.contains("passed"), "{text}");
    assert!(!text.contains("SKIPPED [1] oras/tests/test_oras.py:26"), "the login test did not run:\n{text}");

    let certs = odi_net::tls::write_dev_ca(&tmp.path().join("tls"), &["127.0.0.1", "localhost"]).unwrap();
    let (_tls_dir, tls_port) = directory(&tmp.path().join("tls-dir"), Some(&certs));
    let ((passed, failed, skipped), text) = pytest(&site, &bare, tls_port, true, HTTPS_ONLY);
    eprintln!("oras suite's HTTPS login tests: {passed} passed, {failed} failed, {skipped} skipped");
    assert_eq!((passed, failed), (2, 0), "oras HTTPS login tests:\n{text}");
}
