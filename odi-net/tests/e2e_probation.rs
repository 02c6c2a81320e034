//! A relay on probation, end to end: plain clients get the directory's own bytes, verifying
//! clients are told of the relay (`Link: rel=duplicate`, the metalink).

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_clients_are_not_sent_to_a_relay_on_probation() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = start_directory_with(&tmp.path().join("dir"), None, |o| o.probation = Duration::from_secs(3600)).await;
    create_catalog(&dir.url, "rel", 1).await;
    let data = sample(100_000, 3);
    publish(&dir.url, "rel", "f.bin", &data).await;
    let relay = start_relay(&tmp.path().join("r0"), &dir.url, 1 << 30, None).await;
    wait_for(20, "the relay to hold its share", || async { relays(&dir.url).await.iter().any(|r| r["held"] == 1) }).await;
    let view = relays(&dir.url).await.remove(0);
    assert_eq!(view["proven"], false, "{view}");
    assert!(view["reason"].as_str().unwrap_or("").contains("probation"), "{view}");
    for _ in 0..10 {
        let r = get(&format!("{}/r/rel/f.bin", dir.url), &[]).await;
        assert_eq!(r.status, http::StatusCode::OK, "the directory serves plain clients itself");
        assert_eq!(&r.body[..], &data[..]);
        let link = r.header("link").unwrap_or_default();
        assert!(link.contains(&format!("<{}/r/rel/f.bin>; rel=duplicate", relay.url)), "verifying clients learn of the relay: {link}");
    }
    let m = get(&format!("{}/metalink/r/rel/f.bin", dir.url), &[]).await;
    assert!(m.text().contains(&relay.url), "{}", m.text());
}
