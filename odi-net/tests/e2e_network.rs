//! The first working network, end to end over loopback: publish, join, sync, redirect, serve,
//! lose a relay, restart the directory, and refuse bad input.

mod common;

use std::time::Duration;

use common::*;
use http::{Method, StatusCode};
use odi_net::http::{empty, full};

const FIVE_MIB_PLUS_ONE: usize = (5 << 20) + 1;

async fn ready_network() -> (tempfile::TempDir, Node, Vec<Node>, Vec<(String, Vec<u8>)>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = start_directory(&tmp.path().join("dir"), None).await;
    create_catalog(&dir.url, "rel", 2).await;
    let files = vec![("empty.txt".to_owned(), Vec::new()), ("one.bin".to_owned(), vec![0x42]), ("v1/big.tar.gz".to_owned(), sample(FIVE_MIB_PLUS_ONE, 7))];
    for (path, data) in &files {
        let out = publish(&dir.url, "rel", path, data).await;
        assert_eq!(out["digest"], format!("sha256:{}", sha256_hex(data)));
        assert_eq!(out["size"], data.len());
    }
    let mut relays = Vec::new();
    for i in 0..2 {
        relays.push(start_relay(&tmp.path().join(format!("relay{i}")), &dir.url, 1 << 30, None).await);
    }
    wait_for(15, "both relays ready", || async { relays_ready(&dir.url).await == 2 }).await;
    (tmp, dir, relays, files)
}

async fn relays_ready(dir: &str) -> usize {
    relays(dir).await.iter().filter(|r| r["status"] == "ready").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_files_are_served_by_relays_with_the_right_bytes() {
    let (_tmp, dir, relays, files) = ready_network().await;
    let relay_urls: Vec<&str> = relays.iter().map(|r| r.url.as_str()).collect();
    for (path, data) in &files {
        let url = format!("{}/r/rel/{path}", dir.url);
        let first = get(&url, &[]).await;
        assert_eq!(first.status, StatusCode::FOUND, "{path}: {}", first.text());
        let location = first.header("location").unwrap();
        assert!(relay_urls.iter().any(|r| location == format!("{r}/r/rel/{path}")), "{location}");
        let b64 = odi_core::Digest::of(data).to_base64();
        assert_eq!(first.header("repr-digest"), Some(format!("sha-256=:{b64}:").as_str()));
        assert_eq!(first.header("digest"), Some(format!("SHA-256={b64}").as_str()));
        assert!(first.header("link").is_some_and(|l| l.contains("rel=duplicate")), "names the other relay");

        let (last, visited) = follow(&url, &[]).await;
        assert_eq!((last.status, visited.len()), (StatusCode::OK, 2), "one redirect, then the bytes");
        assert_eq!(sha256_hex(&last.body), sha256_hex(data), "{path}");
        assert_eq!(last.header("content-length"), Some(data.len().to_string().as_str()));
        assert_eq!(last.header("etag"), Some(format!("\"sha256:{}\"", sha256_hex(data)).as_str()));
        assert_eq!(last.header("accept-ranges"), Some("bytes"));

        // HEAD on the directory and on the relay: headers, no body.
        let head = request(Method::HEAD, &url, &[], empty()).await;
        assert_eq!((head.status, head.body.len()), (StatusCode::FOUND, 0));
        let head = request(Method::HEAD, location, &[], empty()).await;
        assert_eq!((head.status, head.body.len()), (StatusCode::OK, 0));
        assert_eq!(head.header("content-length"), Some(data.len().to_string().as_str()));

        // If-None-Match with the ETag: 304.
        let etag = last.header("etag").unwrap().to_owned();
        assert_eq!(get(location, &[("if-none-match", &etag)]).await.status, StatusCode::NOT_MODIFIED);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_range_answers_are_byte_exact() {
    let (_tmp, dir, _relays, files) = ready_network().await;
    let data = &files[2].1;
    let location = get(&format!("{}/r/rel/v1/big.tar.gz", dir.url), &[]).await.header("location").unwrap().to_owned();
    let len = data.len();
    for (spec, range) in [
        ("bytes=0-0", 0..1),
        ("bytes=0-1048575", 0..1_048_576),
        ("bytes=1048575-1048577", 1_048_575..1_048_578),
        (&format!("bytes={}-", len - 10) as &str, len - 10..len),
        ("bytes=-7", len - 7..len),
        (&format!("bytes=5-{}", len * 2) as &str, 5..len),
    ] {
        let r = get(&location, &[("range", spec)]).await;
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{spec}");
        assert_eq!(&r.body[..], &data[range.clone()], "{spec}");
        assert_eq!(r.header("content-range"), Some(format!("bytes {}-{}/{len}", range.start, range.end - 1).as_str()), "{spec}");
    }
    for spec in [format!("bytes={len}-"), format!("bytes={}-{}", len + 5, len + 10), "bytes=-0".to_owned()] {
        let r = get(&location, &[("range", &spec)]).await;
        assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE, "{spec}");
        assert_eq!(r.header("content-range"), Some(format!("bytes */{len}").as_str()));
    }
    // The directory itself (serving when no relay qualifies) honours ranges the same way.
    let blob = format!("{}/blobs/sha256/{}", dir.url, sha256_hex(data));
    let (r, _) = follow(&blob, &[("range", "bytes=100-199")]).await;
    assert_eq!(&r.body[..], &data[100..200]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_relay_stops_getting_redirects_within_the_lease() {
    let (_tmp, dir, mut relays, _files) = ready_network().await;
    let url = format!("{}/r/rel/one.bin", dir.url);
    let gone = relays[0].url.clone();
    relays[0].stop().await;
    let stopped_at = tokio::time::Instant::now();
    wait_for(10, "no redirect to the stopped relay", || async {
        let r = get(&url, &[]).await;
        !r.header("location").is_some_and(|l| l.starts_with(&gone)) && !r.header("link").is_some_and(|l| l.contains(&gone))
    })
    .await;
    let took = stopped_at.elapsed();
    assert!(took <= LEASE + Duration::from_millis(1000), "took {took:?}, lease is {LEASE:?}");
    for _ in 0..20 {
        let r = get(&url, &[]).await;
        assert_eq!(r.status, StatusCode::FOUND);
        assert!(r.header("location").unwrap().starts_with(&relays[1].url));
    }
    relays[1].stop().await;
    wait_for(10, "the directory serving the bytes itself", || async { get(&url, &[]).await.status == StatusCode::OK }).await;
    assert_eq!(&get(&url, &[]).await.body[..], &[0x42]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_restart_loses_nothing_and_relays_do_not_refetch() {
    let (tmp, mut dir, relay_nodes, files) = ready_network().await;
    let before: Vec<_> = relay_nodes.iter().map(|r| blob_files(&r.data)).collect();
    assert!(before.iter().all(|f| f.len() == 3), "{before:?}");
    let addr: std::net::SocketAddr = dir.url.split_once("://").unwrap().1.parse().unwrap();
    dir.stop().await;
    let dir = start_directory(&tmp.path().join("dir"), Some(addr)).await;

    let cats = admin(Method::GET, &dir.url, "catalogs/rel", empty()).await;
    assert_eq!(cats.status, StatusCode::OK, "{}", cats.text());
    assert_eq!(cats.json()["artifacts"].as_array().unwrap().len(), 3);
    assert_eq!(relays_ready(&dir.url).await + relays(&dir.url).await.iter().filter(|r| r["status"] == "unhealthy").count(), 2, "both relays are known");
    wait_for(15, "relays ready again", || async { relays_ready(&dir.url).await == 2 }).await;
    for (path, data) in &files {
        let (r, visited) = follow(&format!("{}/r/rel/{path}", dir.url), &[]).await;
        assert_eq!(visited.len(), 2);
        assert_eq!(sha256_hex(&r.body), sha256_hex(data));
    }
    let after: Vec<_> = relay_nodes.iter().map(|r| blob_files(&r.data)).collect();
    assert_eq!(before, after, "no blob was downloaded again");
    // Tokens survived: the old admin token still works, and the enrollment token is accepted.
    assert_eq!(admin(Method::GET, &dir.url, "relays", empty()).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = start_directory(&tmp.path().join("dir"), None).await;
    create_catalog(&dir.url, "rel", 1).await;
    publish(&dir.url, "rel", "ok.txt", b"fine").await;
    let d = &dir.url;

    let r = get(&format!("{d}/r/nope/ok.txt"), &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.text().contains("no catalog named `nope`"), "{}", r.text());
    let r = get(&format!("{d}/r/rel/missing.txt"), &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.text().contains("missing.txt"), "{}", r.text());

    for bad in [
        "../etc/passwd",
        "%2e%2e/%2e%2e/etc/passwd",
        "a/%2e%2e/%2e%2e/x",
        "a%2f..%2f..%2fx",
        "%2fetc%2fpasswd",
        "a%00b",
        "a%5cb",
        "a\\b",
        "a//b",
        "./x",
        &"x".repeat(5000),
        "%ff",
    ] {
        for base in [format!("{d}/r/rel/{bad}"), format!("{d}/r/{bad}")] {
            let r = get(&base, &[]).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{base}: {}", r.text());
            assert!(!r.text().contains("root:"), "never a byte from outside the data");
        }
    }
    assert_eq!(get(&format!("{d}/blobs/sha256/xyz"), &[]).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(get(&format!("{d}/blobs/sha256/{}", "0".repeat(64)), &[]).await.status, StatusCode::NOT_FOUND);

    // Admin API: no token 401, wrong token 403, malformed JSON 400.
    let r = request(Method::PUT, &format!("{d}/api/v1/catalogs/rel/artifacts/x"), &[], full("x")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let r = request(Method::PUT, &format!("{d}/api/v1/catalogs/rel/artifacts/x"), &[("authorization", "Bearer nope")], full("x")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(get(&format!("{d}/r/rel/x"), &[]).await.status, StatusCode::NOT_FOUND, "the refused publish left nothing");
    for body in
        ["{", "[]", r#"{"name": 5}"#, r#"{"name":"ok","extra":1}"#, r#"{"name":"Bad Name"}"#, r#"{"name":"c","replicas":0}"#, r#"{"name":"c","chunk_size":1}"#]
    {
        let r = admin(Method::POST, d, "catalogs", full(body)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text());
    }
    let r = admin(Method::POST, d, "catalogs", full(r#"{"name":"rel"}"#)).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = admin(Method::PUT, d, "catalogs/nope/artifacts/x", full("x")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.text().contains("odi catalog create"), "{}", r.text());
    let r = admin(Method::PUT, d, "catalogs/rel/artifacts/..%2fx", full("x")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // Node API: unsigned 401; a relay with the wrong enrollment token is never enrolled.
    let r = request(Method::POST, &format!("{d}/odi/v1/heartbeat"), &[], full("{}")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.text().contains("not signed"), "{}", r.text());
    let mut intruder = start_relay_with_token(&tmp.path().join("intruder"), d, 1 << 20, None, "wrong-token").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(relays(d).await.is_empty(), "a relay with a wrong token is refused");
    intruder.stop().await;
    assert_eq!(get(&format!("{d}/healthz"), &[]).await.status, StatusCode::OK, "still serving after all that");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn republish_and_expunge() {
    let (_tmp, dir, _relays, _files) = ready_network().await;
    let d = &dir.url;
    let v2 = sample(3000, 9);
    // `rel` is immutable: its names keep their first bytes.
    let r = admin(Method::PUT, d, "catalogs/rel/artifacts/one.bin", full(v2.clone())).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    let r = admin(Method::POST, d, "catalogs", full(r#"{"name":"idx","replicas":2,"mutable":true}"#)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    publish(d, "idx", "one.bin", &[0x42]).await;
    wait_for(10, "relays to serve the first bytes", || async { follow(&format!("{d}/r/idx/one.bin"), &[]).await.1.len() == 2 }).await;
    let out = publish(d, "idx", "one.bin", &v2).await;
    assert_eq!(out["created"], true);
    assert_eq!(publish(d, "idx", "one.bin", &v2).await["created"], false, "same bytes again: unchanged");
    // Every answer for the path carries the new digest; a redirect goes only where the new
    // bytes are (possibly after the relays caught up).
    wait_for(10, "relays to serve the new bytes", || async {
        let (r, visited) = follow(&format!("{d}/r/idx/one.bin"), &[]).await;
        assert_eq!(sha256_hex(&r.body), sha256_hex(&v2), "never the old bytes once republished");
        visited.len() == 2
    })
    .await;
    // By path: the name goes; the bytes, named nowhere else, are unknown but not barred.
    let r = admin(Method::DELETE, d, "catalogs/idx/artifacts/one.bin", empty()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = get(&format!("{d}/r/idx/one.bin"), &[]).await;
    assert_eq!(r.status, StatusCode::GONE, "{}", r.text());
    assert_eq!(get(&format!("{d}/blobs/sha256/{}", sha256_hex(&v2)), &[]).await.status, StatusCode::NOT_FOUND);
    publish(d, "idx", "again.bin", &v2).await;
    // By digest: barred for good.
    let r = admin(Method::DELETE, d, &format!("blobs/sha256/{}", sha256_hex(&v2)), empty()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(get(&format!("{d}/r/idx/again.bin"), &[]).await.status, StatusCode::GONE);
    assert_eq!(get(&format!("{d}/blobs/sha256/{}", sha256_hex(&v2)), &[]).await.status, StatusCode::GONE);
    let r = admin(Method::PUT, d, "catalogs/idx/artifacts/third.bin", full(v2.clone())).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "expunged bytes may not come back: {}", r.text());
}
