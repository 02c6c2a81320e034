//! The node API against strangers: what an unknown key, a wrong token, an oversized body, a
//! replayed capture or a forged `Host` header can and cannot do.

mod common;

use std::time::Duration;

use common::*;
use ed25519_dalek::SigningKey;
use http::{Method, StatusCode};
use odi_net::http::full;

fn signed(key: &SigningKey, path: &str, body: &str, nonce: u8) -> Vec<(String, String)> {
    let h = odi_core::auth::sign(key, "POST", path, "", body.as_bytes(), odi_net::unix_now(), &[nonce; 16]);
    vec![("content-digest".into(), h.content_digest), ("signature-input".into(), h.signature_input), ("signature".into(), h.signature)]
}

async fn post(url: &str, headers: &[(String, String)], body: &str) -> Reply {
    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    request(Method::POST, url, &h, full(body.to_owned())).await
}

fn enroll_body(token: &str) -> String {
    format!(r#"{{"type":"enroll","token":"{token}","public_url":"http://127.0.0.1:9","capacity":{{"disk_budget":1048576,"bandwidth":0}}}}"#)
}

const HEARTBEAT: &str = r#"{"type":"heartbeat","generation":0,"held":[],"used":0}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_heartbeat_is_refused_after_a_directory_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("dir");
    let mut dir = start_directory(&data, None).await;
    let key = SigningKey::from_bytes(&[42; 32]);
    let enroll = enroll_body(ENROLL);
    let r = post(&format!("{}/odi/v1/enroll", dir.url), &signed(&key, "/odi/v1/enroll", &enroll, 1), &enroll).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let capture = signed(&key, "/odi/v1/heartbeat", HEARTBEAT, 2);
    let r = post(&format!("{}/odi/v1/heartbeat", dir.url), &capture, HEARTBEAT).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = post(&format!("{}/odi/v1/heartbeat", dir.url), &capture, HEARTBEAT).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "replayed at once: {}", r.text());
    // Restart within the signature's lifetime: the nonce cache is new, the capture still too old.
    let addr: std::net::SocketAddr = dir.url.split_once("://").unwrap().1.parse().unwrap();
    dir.stop().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let dir = start_directory(&data, Some(addr)).await;
    let r = post(&format!("{}/odi/v1/heartbeat", dir.url), &capture, HEARTBEAT).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    assert!(r.text().contains("before this node started"), "{}", r.text());
    // A fresh signature from the same relay goes through.
    let r = post(&format!("{}/odi/v1/heartbeat", dir.url), &signed(&key, "/odi/v1/heartbeat", HEARTBEAT, 3), HEARTBEAT).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_refused_before_anything_is_verified_or_remembered() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = start_directory(&tmp.path().join("dir"), None).await;
    // An unknown key's heartbeat: told to enroll (what a relay the directory forgot needs), even
    // with a signature that would not verify.
    let stranger = SigningKey::from_bytes(&[7; 32]);
    let mut headers = signed(&stranger, "/odi/v1/heartbeat", HEARTBEAT, 1);
    headers[2].1 = format!("odi=:{}:", base64_64());
    let r = post(&format!("{}/odi/v1/heartbeat", dir.url), &headers, HEARTBEAT).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    assert_eq!(r.json()["code"], "unknown_relay");
    // An enrollment body larger than an enrollment can be: refused unread.
    let big = format!(r#"{{"type":"enroll","token":"{}"}}"#, "x".repeat(100 << 10));
    let r = post(&format!("{}/odi/v1/enroll", dir.url), &signed(&stranger, "/odi/v1/enroll", &big, 2), &big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
    // Wrong tokens: ten a minute from one address, then 429 without a check.
    let mut statuses = Vec::new();
    for i in 0..12u8 {
        let body = enroll_body(&format!("wrong-{i}"));
        statuses.push(post(&format!("{}/odi/v1/enroll", dir.url), &signed(&stranger, "/odi/v1/enroll", &body, 10 + i), &body).await.status);
    }
    assert!(statuses[..10].iter().all(|s| *s == StatusCode::FORBIDDEN), "{statuses:?}");
    assert!(statuses[10..].iter().all(|s| *s == StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
    assert!(relays(&dir.url).await.is_empty());
}

fn base64_64() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode([9u8; 64])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_never_name_the_host_a_client_claims() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = start_directory_with(&tmp.path().join("dir"), None, |o| o.public_url = None).await;
    create_catalog(&dir.url, "rel", 1).await;
    publish(&dir.url, "rel", "a.txt", b"hello").await;
    let r = get(&format!("{}/r/rel/a.txt", dir.url), &[("host", "evil.example")]).await;
    let link = r.header("link").unwrap_or_default().to_owned();
    assert!(!link.contains("evil.example"), "{link}");
    assert!(link.contains(&dir.url), "links name the address the directory listens on: {link}");
    let m = get(&format!("{}/metalink/r/rel/a.txt", dir.url), &[("host", "evil.example")]).await;
    assert!(!m.text().contains("evil.example"), "{}", m.text());
}
