//! The directory's live events over Server-Sent Events (`GET /api/v1/events`): admin only, live
//! from the moment of connecting, and resumed after `Last-Event-ID` with nothing missed.

mod common;

use std::time::Duration;

use common::*;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt as _;
use odi_net::client::HttpClient;
use odi_net::http::empty;

/// An open event stream, read event by event.
struct Events {
    body: hyper::body::Incoming,
    pending: String,
}

/// One SSE event: its `id:`, `event:` and `data:` lines.
#[derive(Debug)]
struct Sse {
    id: u64,
    kind: String,
    data: serde_json::Value,
}

impl Events {
    async fn open(dir: &str, last_id: Option<u64>) -> Events {
        let mut req = Request::builder().method(Method::GET).uri(format!("{dir}/api/v1/events")).header("authorization", format!("Bearer {ADMIN}"));
        if let Some(id) = last_id {
            req = req.header("last-event-id", id.to_string());
        }
        let resp = HttpClient::new().send(req.body(empty()).unwrap(), Duration::from_secs(10)).await.expect("events request");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Events { body: resp.into_body(), pending: String::new() }
    }

    /// The next event (comments skipped), within `secs`.
    async fn next(&mut self, secs: u64) -> Sse {
        let read = async {
            loop {
                if let Some(end) = self.pending.find("\n\n") {
                    let block: String = self.pending.drain(..end + 2).collect();
                    let (mut id, mut kind, mut data) = (None, None, None);
                    for line in block.lines() {
                        if let Some(v) = line.strip_prefix("id: ") {
                            id = v.parse().ok();
                        } else if let Some(v) = line.strip_prefix("event: ") {
                            kind = Some(v.to_owned());
                        } else if let Some(v) = line.strip_prefix("data: ") {
                            data = Some(serde_json::from_str(v).expect("data is JSON"));
                        }
                    }
                    if let (Some(id), Some(kind), Some(data)) = (id, kind, data) {
                        return Sse { id, kind, data };
                    }
                    continue;
                }
                let frame = self.body.frame().await.expect("stream open").expect("stream readable");
                if let Ok(data) = frame.into_data() {
                    self.pending.push_str(std::str::from_utf8(&data).expect("utf-8"));
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(secs), read).await.expect("an event in time")
    }

    /// Events up to the first of `kind`, that one included.
    async fn until(&mut self, kind: &str) -> Vec<Sse> {
        let mut seen = Vec::new();
        loop {
            let e = self.next(20).await;
            let done = e.kind == kind;
            seen.push(e);
            if done {
                return seen;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_watches_a_relay_enroll_and_pass_its_self_test_then_resumes_where_it_left_off() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = start_directory(&tmp.path().join("dir"), None).await;

    let anonymous = get(&format!("{}/api/v1/events", dir.url), &[]).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED, "{}", anonymous.text());

    let mut events = Events::open(&dir.url, None).await;
    let relay = start_relay(&tmp.path().join("r0"), &dir.url, 1 << 30, None).await;
    let seen = events.until("relay.admitted").await;
    let enrolled = seen.iter().find(|e| e.kind == "relay.enrolled").expect("relay.enrolled before relay.admitted");
    assert_eq!(enrolled.data["url"], relay.url.trim_end_matches('/'));
    assert_eq!(enrolled.data["kind"], "relay.enrolled");
    let admitted = seen.last().unwrap();
    assert_eq!(admitted.data["relay"], enrolled.data["relay"]);
    assert!(seen.windows(2).all(|w| w[1].id == w[0].id + 1), "ids follow one another: {seen:?}");
    drop(events);

    // A reconnect with Last-Event-ID gets what came after it, from the kept notices.
    let mut again = Events::open(&dir.url, Some(enrolled.id)).await;
    let first = again.next(5).await;
    assert_eq!(first.id, enrolled.id + 1);
    assert_eq!(first.kind, seen[1].kind);

    // And one from before the first notice gets them all.
    let mut all = Events::open(&dir.url, Some(0)).await;
    assert_eq!(all.next(5).await.id, 1);
}
