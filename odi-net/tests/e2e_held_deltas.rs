//! Held reports as deltas over the node API, signed and in JSON as a relay sends them: a delta
//! from the set the directory named is taken, one from another set is answered without a name,
//! and a relay from before deltas is answered as before.

mod common;

use common::*;
use ed25519_dalek::SigningKey;
use http::{Method, StatusCode};
use odi_core::Digest;
use odi_core::held::HeldSum;
use odi_net::http::full;

fn signed(key: &SigningKey, path: &str, body: &str, nonce: u8) -> Vec<(String, String)> {
    let h = odi_core::auth::sign(key, "POST", path, "", body.as_bytes(), odi_net::unix_now(), &[nonce; 16]);
    vec![("content-digest".into(), h.content_digest), ("signature-input".into(), h.signature_input), ("signature".into(), h.signature)]
}

async fn post(url: &str, key: &SigningKey, path: &str, body: &str, nonce: u8) -> Reply {
    let headers = signed(key, path, body, nonce);
    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    request(Method::POST, &format!("{url}{path}"), &h, full(body.to_owned())).await
}

fn name(set: &[Digest]) -> String {
    HeldSum::of(set).digest().to_string()
}

fn list(set: &[Digest]) -> String {
    set.iter().map(|d| format!(r#""{d}""#)).collect::<Vec<_>>().join(",")
}

fn delta(base: &[Digest], added: &[Digest], removed: &[Digest], now: &[Digest]) -> String {
    format!(
        r#"{{"type":"heartbeat","generation":0,"held":[],"used":0,"delta":{{"base":"{}","added":[{}],"removed":[{}],"digest":"{}"}}}}"#,
        name(base),
        list(added),
        list(removed),
        name(now)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_from_the_named_set_is_taken_and_any_other_is_answered_without_a_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = start_directory(&tmp.path().join("dir"), None).await;
    create_catalog(&dir.url, "rel", 1).await;
    publish(&dir.url, "rel", "a.txt", b"hello").await;
    publish(&dir.url, "rel", "b.txt", b"world").await;
    let (a, b, stranger) = (Digest::of(b"hello"), Digest::of(b"world"), Digest::of(b"never published"));
    let key = SigningKey::from_bytes(&[43; 32]);
    let enroll = format!(r#"{{"type":"enroll","token":"{ENROLL}","public_url":"http://127.0.0.1:9","capacity":{{"disk_budget":1048576,"bandwidth":0}}}}"#);
    let r = post(&dir.url, &key, "/odi/v1/enroll", &enroll, 1).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let held = |views: Vec<serde_json::Value>| views[0]["held"].as_u64();

    // As a relay from before deltas sends it: taken, and named.
    let whole = format!(r#"{{"type":"heartbeat","generation":0,"held":[{}],"used":0}}"#, list(&[a, stranger]));
    let r = post(&dir.url, &key, "/odi/v1/heartbeat", &whole, 2).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["held"], name(&[a, stranger]), "{}", r.text());
    assert_eq!(held(relays(&dir.url).await), Some(1), "the digest it does not know is not held");

    let r = post(&dir.url, &key, "/odi/v1/heartbeat", &delta(&[a, stranger], &[b], &[stranger], &[a, b]), 3).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["held"], name(&[a, b]), "{}", r.text());
    assert_eq!(held(relays(&dir.url).await), Some(2));

    // From a set the directory does not have: nothing taken, no name; the whole set puts it right.
    let r = post(&dir.url, &key, "/odi/v1/heartbeat", &delta(&[a], &[], &[a], &[]), 4).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.json().get("held").is_none(), "{}", r.text());
    assert_eq!(held(relays(&dir.url).await), Some(2));
    let whole = format!(r#"{{"type":"heartbeat","generation":0,"held":[{}],"used":0}}"#, list(&[b]));
    let r = post(&dir.url, &key, "/odi/v1/heartbeat", &whole, 5).await;
    assert_eq!(r.json()["held"], name(&[b]), "{}", r.text());
    assert_eq!(held(relays(&dir.url).await), Some(1));

    // Both forms at once: refused.
    let both = delta(&[b], &[], &[], &[b]).replace(r#""held":[]"#, &format!(r#""held":[{}]"#, list(&[b])));
    let r = post(&dir.url, &key, "/odi/v1/heartbeat", &both, 6).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
}
