//! What names mean, through the `odi` binary as an operator types it: `odi catalog create
//! --mutable`, republishing on both kinds of catalog, and the two forms of `odi expunge`
//! checked with real `curl`.

mod common;

use std::path::Path;
use std::process::Output;

use common::*;

const ADMIN: &str = "3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b";
const ENROLL: &str = "4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c";

fn odi(args: &[&str]) -> Output {
    odi_as(ADMIN, args)
}

fn odi_ok(args: &[&str]) -> String {
    let out = odi(args);
    assert!(out.status.success(), "odi {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `odi` expecting failure; returns its stderr.
fn odi_err(args: &[&str]) -> String {
    let out = odi(args);
    assert!(!out.status.success(), "odi {args:?} should have failed: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn spawn(args: &[&str]) -> Proc {
    Proc(spawn_odi(ADMIN, ENROLL, args))
}

/// `curl -sL -o FILE -w '%{http_code}' URL`: the final status and the saved bytes.
fn curl_l(url: &str, out: &Path) -> (String, Vec<u8>) {
    let _ = std::fs::remove_file(out);
    let res = curl(&["-L", "-o", out.to_str().unwrap(), "-w", "%{http_code}", url]);
    assert!(res.status.success(), "curl {url}: {}", String::from_utf8_lossy(&res.stderr));
    (String::from_utf8_lossy(&res.stdout).into_owned(), std::fs::read(out).unwrap_or_default())
}

#[test]
fn mutable_catalogs_republish_and_the_two_expunges_cover_what_they_say() {
    let tmp = tempfile::tempdir().unwrap();
    let (dport, rport) = (free_port(), free_port());
    let dir_url = format!("http://127.0.0.1:{dport}");
    let data = tmp.path().join("dir");
    let _dir = spawn(&[
        "directory",
        "--listen",
        &format!("127.0.0.1:{dport}"),
        "--data",
        data.to_str().unwrap(),
        "--heartbeat-interval",
        "300ms",
        "--lease",
        "1500ms",
        "--probation",
        "0s",
    ]);
    wait_for(20, "the directory to answer", || curl(&[&format!("{dir_url}/healthz")]).status.success());

    let out = odi_ok(&["catalog", "create", "idx", "--directory", &dir_url, "--replicas", "1", "--mutable"]);
    assert!(out.contains("mutable"), "{out}");
    odi_ok(&["catalog", "create", "rel", "--directory", &dir_url, "--replicas", "1"]);
    let ls = odi_ok(&["catalog", "ls", "--directory", &dir_url]);
    let mutable_of = |name: &str| ls.lines().find(|l| l.starts_with(&format!("{name} "))).and_then(|l| l.split_whitespace().last()).map(str::to_owned);
    assert_eq!((mutable_of("idx").as_deref(), mutable_of("rel").as_deref()), (Some("yes"), Some("no")), "{ls}");

    let write = |name: &str, bytes: &[u8]| {
        let path = tmp.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let tool = write("tool.tar", &(0..200_000u32).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>());
    let other = write("other.tar", b"other bytes");
    let publish =
        |catalog: &str, path: &str, file: &Path| odi(&["publish", "--directory", &dir_url, "--catalog", catalog, "--path", path, file.to_str().unwrap()]);
    for (catalog, path) in [("rel", "tool-1.0.tar"), ("rel", "tool-latest.tar")] {
        assert!(publish(catalog, path, &tool).status.success());
    }
    // An immutable name keeps its bytes; the refusal is one line that names the way out.
    let refused = publish("rel", "tool-1.0.tar", &other);
    let err = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(!refused.status.success(), "{err}");
    assert!(err.lines().any(|l| l.contains("tool-1.0.tar") && l.contains("--mutable") && l.contains("new path")), "{err}");
    // A mutable one takes new bytes.
    let v1 = write("latest-1", b"1.0\n");
    let v2 = write("latest-2", b"1.1\n");
    assert!(publish("idx", "latest.txt", &v1).status.success());
    assert!(publish("idx", "latest.txt", &v2).status.success(), "a mutable catalog rebinds");

    let _relay = spawn(&[
        "relay",
        "--listen",
        &format!("127.0.0.1:{rport}"),
        "--data",
        tmp.path().join("relay").to_str().unwrap(),
        "--directory",
        &dir_url,
        "--public-url",
        &format!("http://127.0.0.1:{rport}"),
        "--disk-budget",
        "1GiB",
    ]);
    let got = tmp.path().join("got");
    let tool_bytes = std::fs::read(&tool).unwrap();
    wait_for(30, "the relay to serve the release", || {
        let res = curl(&["-L", "-o", "/dev/null", "-w", "%{url_effective}", &format!("{dir_url}/r/rel/tool-latest.tar")]);
        String::from_utf8_lossy(&res.stdout).contains(&format!(":{rport}/"))
    });
    assert_eq!(curl_l(&format!("{dir_url}/r/idx/latest.txt"), &got), ("200".into(), b"1.1\n".to_vec()));

    // By path: only that name goes; the other keeps serving the same bytes.
    let out = odi_ok(&["expunge", "--directory", &dir_url, "--catalog", "rel", "tool-1.0.tar"]);
    assert!(out.contains("rel/tool-latest.tar") && out.contains("--digest"), "says what still serves the bytes and how to bar them: {out}");
    assert_eq!(curl_l(&format!("{dir_url}/r/rel/tool-1.0.tar"), &got).0, "410");
    let (status, bytes) = curl_l(&format!("{dir_url}/r/rel/tool-latest.tar"), &got);
    assert_eq!((status.as_str(), sha256_hex(&bytes)), ("200", sha256_hex(&tool_bytes)));

    // By digest: every name and the digest itself answer 410; publishing the bytes is refused.
    let digest = format!("sha256:{}", sha256_hex(&tool_bytes));
    let out = odi_ok(&["expunge", "--directory", &dir_url, "--digest", &digest]);
    assert!(out.contains(&digest) && out.contains("rel/tool-latest.tar"), "{out}");
    for url in [format!("{dir_url}/r/rel/tool-latest.tar"), format!("{dir_url}/blobs/sha256/{}", sha256_hex(&tool_bytes))] {
        assert_eq!(curl_l(&url, &got).0, "410", "{url}");
    }
    let err = String::from_utf8_lossy(&publish("idx", "renamed.tar", &tool).stderr).into_owned();
    assert!(err.contains("expunged"), "{err}");
    assert!(odi_ok(&["expunge", "--directory", &dir_url, "--digest", &digest]).contains("already"));
    let err = odi_err(&["expunge", "--directory", &dir_url, "--digest", &digest, "--catalog", "rel"]);
    assert!(err.contains("cannot be used with"), "{err}");
}
