//! HTTP semantics with real clients as users type them: `aria2c` on the metalink URL a
//! directory advertises (with one corrupt relay of three), cache headers and revalidation on
//! immutable and mutable catalogs (`curl -sI`, `If-None-Match`), and what each kind of expunge
//! takes away.

mod common;

use std::path::Path;
use std::process::Output;

use common::*;
use http::{Method, StatusCode};
use odi_net::http::{empty, full};

const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// `curl` as a user runs it, bounded in time.
async fn curl(args: &[&str]) -> Output {
    tokio::process::Command::new("curl").args(["-sS", "--max-time", "20"]).args(args).output().await.expect("curl is installed")
}

/// `curl -sI URL [extra]`: the status and headers (names lowercased) of a HEAD.
async fn curl_head(url: &str, extra: &[&str]) -> (u16, Vec<(String, String)>) {
    let out = curl(&[&["-I", url], extra].concat()).await;
    assert!(out.status.success(), "curl -sI {url}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status line: {text}"));
    let headers = lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned())).collect();
    (status, headers)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// `curl -s -o FILE -w '%{http_code}' [extra] URL`: the status and the saved bytes.
async fn curl_get(url: &str, extra: &[&str], out: &Path) -> (u16, Vec<u8>) {
    let _ = std::fs::remove_file(out);
    let run = curl(&[extra, &["-o", out.to_str().unwrap(), "-w", "%{http_code}", url]].concat()).await;
    assert!(run.status.success(), "curl {url}: {}", String::from_utf8_lossy(&run.stderr));
    let code = String::from_utf8_lossy(&run.stdout).trim().parse().unwrap();
    (code, std::fs::read(out).unwrap_or_default())
}

fn etag(data: &[u8]) -> String {
    format!("\"sha256:{}\"", sha256_hex(data))
}

async fn create(dir: &str, name: &str, replicas: u32, mutable: bool) {
    let r = admin(Method::POST, dir, "catalogs", full(format!(r#"{{"name":"{name}","replicas":{replicas},"mutable":{mutable}}}"#))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(r.json()["mutable"], mutable);
}

async fn put(dir: &str, catalog: &str, path: &str, data: &[u8]) -> (StatusCode, String) {
    let r = admin(Method::PUT, dir, &format!("catalogs/{catalog}/artifacts/{path}"), full(data.to_vec())).await;
    (r.status, r.text())
}

async fn ready(dir: &str) -> usize {
    relays(dir).await.iter().filter(|r| r["status"] == "ready").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aria2c_downloads_the_advertised_metalink_with_one_corrupt_relay_of_three() {
    if std::process::Command::new("aria2c").arg("--version").output().is_err() {
        panic!("aria2c is not installed: scripts/test installs the aria2 package");
    }
    let data = sample(6 << 20, 11);
    let tmp = tempfile::tempdir().unwrap();
    let dir = start_directory(&tmp.path().join("dir"), None).await;
    create(&dir.url, "rel", 3, false).await;
    publish(&dir.url, "rel", "tool-1.0.bin", &data).await;
    let mut relays = Vec::new();
    for i in 0..3 {
        // On three hosts, as relays are: aria2c takes one source per host (and all of 127/8 is
        // local on Linux). Relays sharing one host look like one mirror to it, and it gives up
        // on the file when that one mirror's pieces fail their hashes.
        let addr = format!("127.0.0.{}:0", i + 2).parse().unwrap();
        relays.push(start_relay(&tmp.path().join(format!("relay{i}")), &dir.url, 1 << 30, Some(addr)).await);
        wait_for(20, "relay ready", || async { ready(&dir.url).await == i + 1 }).await;
    }
    corrupt_relay_copy(&relays[0], &sha256_hex(&data), 1 << 20);

    // What a user sees: the answer for the artifact links its metalink.
    let (status, headers) = curl_head(&format!("{}/r/rel/tool-1.0.bin", dir.url), &[]).await;
    assert_eq!(status, 302);
    let link = headers.iter().filter(|(k, _)| k == "link").map(|(_, v)| v).find(|v| v.contains("rel=describedby")).expect("a describedby link");
    let meta_url = link.trim_start_matches('<').split('>').next().unwrap().to_owned();

    // The document's own answer: its type and file name, no digest claiming the artifact's.
    let (status, headers) = curl_head(&meta_url, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("application/metalink4+xml"));
    assert_eq!(header(&headers, "content-disposition"), Some("attachment; filename=\"tool-1.0.bin.meta4\""));
    assert_eq!(header(&headers, "repr-digest"), None, "{headers:?}");
    assert_eq!(header(&headers, "digest"), None, "{headers:?}");

    // aria2c picks its sources itself: over twenty downloads it meets the corrupt relay in many.
    let corrupt_host = relays[0].url.split_once("://").unwrap().1.to_owned();
    let (mut asked_corrupt, mut repaired) = (0, 0);
    for mode in [&["--follow-metalink=mem"][..], &[][..]].into_iter().cycle().take(20) {
        let work = tempfile::tempdir().unwrap();
        let log_file = work.path().join("aria2.log");
        // As a user types it, plus a log file to see which sources aria2c used.
        let run = tokio::process::Command::new("aria2c")
            .args(mode)
            .args(["--console-log-level=warn", "--summary-interval=0", "--timeout=10", "--log-level=info"])
            .arg(format!("--log={}", log_file.display()))
            .arg(&meta_url)
            .current_dir(work.path())
            .kill_on_drop(true)
            .output()
            .await
            .expect("run aria2c");
        let log = String::from_utf8_lossy(&run.stdout).into_owned() + &String::from_utf8_lossy(&run.stderr);
        let saved = std::fs::read(work.path().join("tool-1.0.bin")).unwrap_or_default();
        let detail = std::fs::read_to_string(&log_file).unwrap_or_default();
        std::fs::remove_file(&log_file).unwrap();
        asked_corrupt += usize::from(detail.contains(&format!("Connecting to {corrupt_host}")));
        repaired += usize::from(detail.contains("Chunk checksum validation failed"));
        // aria2c checks every piece against the metalink's hashes and fetches a bad one again
        // from another source: the corrupt relay costs retries, never the file.
        assert!(run.status.success(), "aria2c {mode:?} failed: {log}");
        assert_eq!(sha256_hex(&saved), sha256_hex(&data), "aria2c {mode:?} saved the artifact's bytes under its name: {log}");
        let mut files: Vec<String> = std::fs::read_dir(work.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        files.sort();
        let want: &[&str] = if mode.is_empty() { &["tool-1.0.bin", "tool-1.0.bin.meta4"] } else { &["tool-1.0.bin"] };
        assert_eq!(files, want, "aria2c {mode:?}: the document, when saved, is not under the artifact's name");
        if mode.is_empty() {
            let doc = std::fs::read_to_string(work.path().join("tool-1.0.bin.meta4")).unwrap();
            assert!(odi_net::metalink::parse(&doc).is_ok(), "the saved document is the metalink");
        }
    }
    println!("aria2c: 20 downloads, {asked_corrupt} asked the corrupt relay, {repaired} rejected a piece from it and fetched it again");
    assert!(asked_corrupt > 0, "aria2c never asked the corrupt relay: the test proved nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_cached_by_catalog_kind_and_revalidate_on_relay_and_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = start_directory(&tmp.path().join("dir"), None).await;
    create(&dir.url, "rel", 1, false).await;
    create(&dir.url, "idx", 1, true).await;
    let (tool, v1, v2) = (sample(70_000, 1), b"tool 1.0\n".to_vec(), b"tool 1.1\n".to_vec());
    assert_eq!(put(&dir.url, "rel", "tool-1.0.tar", &tool).await.0, StatusCode::CREATED);
    assert_eq!(put(&dir.url, "idx", "latest.txt", &v1).await.0, StatusCode::CREATED);
    let out = tmp.path().join("got");

    // With no relay the directory serves the bytes itself: the same cache model.
    let (status, h) = curl_head(&format!("{}/r/rel/tool-1.0.tar", dir.url), &[]).await;
    assert_eq!((status, header(&h, "cache-control"), header(&h, "etag")), (200, Some(IMMUTABLE), Some(etag(&tool).as_str())));
    let (status, h) = curl_head(&format!("{}/r/idx/latest.txt", dir.url), &[]).await;
    assert_eq!((status, header(&h, "cache-control"), header(&h, "etag")), (200, Some("no-cache"), Some(etag(&v1).as_str())));
    let inm = format!("If-None-Match: {}", etag(&v1));
    assert_eq!(curl_get(&format!("{}/r/idx/latest.txt", dir.url), &["-H", &inm], &out).await, (304, Vec::new()));

    // Republishing: refused on the immutable catalog with the reason, allowed on the mutable one.
    let (status, reason) = put(&dir.url, "rel", "tool-1.0.tar", &sample(70_000, 2)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{reason}");
    assert_eq!(reason.trim().lines().count(), 1, "{reason}");
    for part in ["tool-1.0.tar", &format!("sha256:{}", sha256_hex(&tool)), "publish under a new path, or create the catalog with --mutable"] {
        assert!(reason.contains(part), "{part} in: {reason}");
    }

    let relay = start_relay(&tmp.path().join("relay"), &dir.url, 1 << 30, None).await;
    wait_for(20, "relay ready", || async { ready(&dir.url).await == 1 }).await;

    // Through a relay: the directory's 302 is never stored; the relay answers by catalog kind.
    for (path, data, cache) in [("rel/tool-1.0.tar", &tool, IMMUTABLE), ("idx/latest.txt", &v1, "no-cache")] {
        let (status, h) = curl_head(&format!("{}/r/{path}", dir.url), &[]).await;
        assert_eq!((status, header(&h, "cache-control")), (302, Some("no-store")), "{path}: {h:?}");
        assert!(header(&h, "location").is_some_and(|l| l.starts_with(&relay.url)), "{h:?}");
        let (status, h) = curl_head(&format!("{}/r/{path}", relay.url), &[]).await;
        assert_eq!((status, header(&h, "cache-control"), header(&h, "etag")), (200, Some(cache), Some(etag(data).as_str())), "{path}: {h:?}");
        // Revalidation: the relay and the directory both answer 304 for the bytes the client has.
        let inm = format!("If-None-Match: {}", etag(data));
        for base in [&relay.url, &dir.url] {
            let (status, h) = curl_head(&format!("{base}/r/{path}"), &["-H", &inm]).await;
            assert_eq!((status, header(&h, "cache-control"), header(&h, "etag")), (304, Some(cache), Some(etag(data).as_str())), "{base}/r/{path}");
        }
    }
    // A part of the file: the digest headers still describe the whole representation (RFC 9530
    // `Repr-Digest`, RFC 3230 instance `Digest`), and nothing claims to digest this part.
    let (status, h) = curl_head(&format!("{}/r/rel/tool-1.0.tar", relay.url), &["-H", "Range: bytes=0-99"]).await;
    let whole = odi_core::Digest::of(&tool).to_base64();
    assert_eq!((status, header(&h, "content-length")), (206, Some("100")));
    assert_eq!(header(&h, "repr-digest"), Some(format!("sha-256=:{whole}:").as_str()));
    assert_eq!(header(&h, "digest"), Some(format!("SHA-256={whole}").as_str()));
    assert_eq!(header(&h, "content-digest"), None);
    let (status, h) = curl_head(&format!("{}/r/rel/tool-1.0.tar", relay.url), &["-H", "Range: bytes=70000-"]).await;
    assert_eq!((status, header(&h, "repr-digest"), header(&h, "cache-control")), (416, None, Some("no-store")), "an error line is not the file");
    // By digest, bytes never change.
    let (status, h) = curl_head(&format!("{}/blobs/sha256/{}", relay.url, sha256_hex(&v1)), &[]).await;
    assert_eq!((status, header(&h, "cache-control")), (200, Some(IMMUTABLE)));

    // A new version of the index: after it, the old ETag no longer matches anywhere.
    assert_eq!(put(&dir.url, "idx", "latest.txt", &v2).await.0, StatusCode::CREATED);
    let latest = format!("{}/r/idx/latest.txt", dir.url);
    wait_for(20, "the relay serves the new version", || async {
        let (r, visited) = follow(&latest, &[]).await;
        r.body[..] == v2[..] && visited.len() == 2
    })
    .await;
    let relay_latest = format!("{}/r/idx/latest.txt", relay.url);
    let inm = format!("If-None-Match: {}", etag(&v1));
    assert_eq!(curl_get(&relay_latest, &["-H", &inm], &out).await, (200, v2.clone()), "the relay does not confirm a stale copy");
    assert_eq!(curl_get(&latest, &["-L", "-H", &inm], &out).await, (200, v2.clone()), "nor does the directory");
    let (status, h) = curl_head(&relay_latest, &[]).await;
    assert_eq!((status, header(&h, "cache-control"), header(&h, "etag")), (200, Some("no-cache"), Some(etag(&v2).as_str())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expunge_by_path_keeps_other_names_and_expunge_by_digest_takes_them_all() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = start_directory(&tmp.path().join("dir"), None).await;
    create(&dir.url, "rel", 1, false).await;
    create(&dir.url, "mirror", 1, false).await;
    let data = sample(300_000, 7);
    let hex = sha256_hex(&data);
    for (catalog, path) in [("rel", "tool-1.0.tar"), ("rel", "tool-latest.tar"), ("mirror", "tool-1.0.tar")] {
        assert_eq!(put(&dir.url, catalog, path, &data).await.0, StatusCode::CREATED);
    }
    let relay = start_relay(&tmp.path().join("relay"), &dir.url, 1 << 30, None).await;
    wait_for(20, "relay ready", || async { ready(&dir.url).await == 1 }).await;
    let out = tmp.path().join("got");

    let r = admin(Method::DELETE, &dir.url, "catalogs/rel/artifacts/tool-1.0.tar", empty()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["digest"], format!("sha256:{hex}"));
    assert_eq!(r.json()["still_named"], serde_json::json!(["mirror/tool-1.0.tar", "rel/tool-latest.tar"]));
    assert_eq!(curl_get(&format!("{}/r/rel/tool-1.0.tar", dir.url), &["-L"], &out).await.0, 410);
    for url in [format!("{}/r/rel/tool-latest.tar", dir.url), format!("{}/r/mirror/tool-1.0.tar", dir.url), format!("{}/blobs/sha256/{hex}", dir.url)] {
        let (status, got) = curl_get(&url, &["-L"], &out).await;
        assert_eq!((status, sha256_hex(&got)), (200, hex.clone()), "{url} still serves the bytes");
    }
    // The relay keeps them (other names hold them) and stops answering the withdrawn name.
    wait_for(20, "the relay drops the withdrawn name", || async {
        get(&format!("{}/r/rel/tool-1.0.tar", relay.url), &[]).await.status == StatusCode::NOT_FOUND
    })
    .await;
    assert_eq!(curl_get(&format!("{}/r/rel/tool-latest.tar", relay.url), &[], &out).await.0, 200);
    let (status, reason) = put(&dir.url, "rel", "tool-1.0.tar", &sample(300_000, 8)).await;
    assert_eq!(status, StatusCode::CONFLICT, "an immutable name is not reused for other bytes");
    assert!(reason.contains("expunged") && reason.contains("new path"), "{reason}");

    // By digest: every name, the digest itself, and any future publish of the bytes.
    let r = admin(Method::DELETE, &dir.url, &format!("blobs/sha256/{hex}"), empty()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["expunged"], serde_json::json!(["mirror/tool-1.0.tar", "rel/tool-latest.tar"]));
    for url in [format!("{}/r/rel/tool-latest.tar", dir.url), format!("{}/r/mirror/tool-1.0.tar", dir.url), format!("{}/blobs/sha256/{hex}", dir.url)] {
        assert_eq!(curl_get(&url, &["-L"], &out).await.0, 410, "{url}");
    }
    let (status, reason) = put(&dir.url, "mirror", "another-name.tar", &data).await;
    assert_eq!(status, StatusCode::CONFLICT, "{reason}");
    wait_for(20, "the relay deletes the bytes", || async { get(&format!("{}/blobs/sha256/{hex}", relay.url), &[]).await.status == StatusCode::NOT_FOUND })
        .await;
    assert!(!relay.data.join("blobs/blobs/sha256").join(&hex[..2]).join(&hex).exists(), "gone from the relay's disk");
    let again = admin(Method::DELETE, &dir.url, &format!("blobs/sha256/{hex}"), empty()).await;
    assert_eq!((again.status, again.json()["already"].clone()), (StatusCode::OK, serde_json::json!(true)));
}
