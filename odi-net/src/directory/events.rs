//! The directory's live event stream: one numbered [`Notice`] for each thing an operator may want
//! to hear about as it happens (a relay enrolled, quarantined, lost; an admin change). The machine's
//! events come in through `Driver::on_event`; admin changes are published by the routes that make
//! them. Readers subscribe (the dashboard's `/api/v1/events`, webhook delivery) or read the recent
//! ones kept in memory. Nothing here is durable: a reader that needs every notice across restarts
//! keeps its own queue.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;

use bytes::Bytes;
use futures_util::stream;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::{Frame, Incoming};
use odi_core::directory::Event;
use serde::Serialize;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use crate::http::{Body, BoxError};

/// Notices kept in memory for readers that join late (`recent`), and the channel's depth: a
/// subscriber that falls further behind misses notices (told by `RecvError::Lagged`).
pub(super) const KEPT: usize = 512;

/// One thing that happened, numbered in the order this process saw them.
#[derive(Clone, Debug, Serialize)]
pub(super) struct Notice {
    /// Increasing from 1 in each process (not across restarts).
    pub(super) seq: u64,
    /// Unix time in milliseconds.
    pub(super) time_ms: u64,
    #[serde(flatten)]
    pub(super) what: What,
}

impl Notice {
    /// The kind as webhooks filter on it: `relay.enrolled`, `relay.quarantined`, ...
    pub(super) fn kind(&self) -> &'static str {
        self.what.kind()
    }
}

/// What happened. Serialized with its kind in `"kind"` and its fields beside it.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind")]
pub(super) enum What {
    #[serde(rename = "relay.enrolled")]
    RelayEnrolled { relay: String, url: String },
    #[serde(rename = "relay.admitted")]
    RelayAdmitted { relay: String },
    #[serde(rename = "relay.proven")]
    RelayProven { relay: String },
    #[serde(rename = "relay.self_test_failed")]
    SelfTestFailed { relay: String, reason: String },
    #[serde(rename = "relay.suspended")]
    RelaySuspended { relay: String, reason: String },
    #[serde(rename = "relay.quarantined")]
    RelayQuarantined { relay: String, reason: String },
    #[serde(rename = "relay.lost")]
    RelayLost { relay: String },
    #[serde(rename = "relay.forgotten")]
    RelayForgotten { relay: String },
    #[serde(rename = "relay.refused")]
    RelayRefused { relay: String, reason: String },
    #[serde(rename = "artifact.hotness")]
    HotnessChanged { digest: String, extra: u32 },
    #[serde(rename = "directory.persist_failed")]
    PersistFailed { what: String, error: String },
    #[serde(rename = "link.refused")]
    PeerRefused { peer: String, reason: String },
    // Admin changes, published once durable.
    #[serde(rename = "catalog.created")]
    CatalogCreated { catalog: String },
    #[serde(rename = "artifact.published")]
    ArtifactPublished { catalog: String, path: String, digest: String, size: u64 },
    /// By path (`path` set) or by digest under every name (`path` none).
    #[serde(rename = "artifact.expunged")]
    ArtifactExpunged { catalog: Option<String>, path: Option<String>, digest: Option<String> },
    #[serde(rename = "tag.set")]
    TagSet { catalog: String, path: String, tags: Vec<String> },
    #[serde(rename = "relay.drained")]
    RelayDrained { relay: String },
    #[serde(rename = "relay.undrained")]
    RelayUndrained { relay: String },
    #[serde(rename = "relay.readmitted")]
    RelayReadmitted { relay: String },
    #[serde(rename = "token.added")]
    TokenAdded { name: String, role: String },
    #[serde(rename = "token.revoked")]
    TokenRevoked { name: String },
    #[serde(rename = "link.added")]
    LinkAdded { peer: String, url: String },
    #[serde(rename = "link.removed")]
    LinkRemoved { peer: String, url: String },
    #[serde(rename = "webhook.added")]
    WebhookAdded { id: String, url: String },
    #[serde(rename = "webhook.removed")]
    WebhookRemoved { id: String, url: String },
}

/// Every kind a notice can have, for validating filters (`--event KIND`).
pub(super) const KINDS: &[&str] = &[
    "relay.enrolled",
    "relay.admitted",
    "relay.proven",
    "relay.self_test_failed",
    "relay.suspended",
    "relay.quarantined",
    "relay.lost",
    "relay.forgotten",
    "relay.refused",
    "artifact.hotness",
    "directory.persist_failed",
    "link.refused",
    "catalog.created",
    "artifact.published",
    "artifact.expunged",
    "tag.set",
    "relay.drained",
    "relay.undrained",
    "relay.readmitted",
    "token.added",
    "token.revoked",
    "link.added",
    "link.removed",
    "webhook.added",
    "webhook.removed",
];

impl What {
    pub(super) fn kind(&self) -> &'static str {
        match self {
            What::RelayEnrolled { .. } => "relay.enrolled",
            What::RelayAdmitted { .. } => "relay.admitted",
            What::RelayProven { .. } => "relay.proven",
            What::SelfTestFailed { .. } => "relay.self_test_failed",
            What::RelaySuspended { .. } => "relay.suspended",
            What::RelayQuarantined { .. } => "relay.quarantined",
            What::RelayLost { .. } => "relay.lost",
            What::RelayForgotten { .. } => "relay.forgotten",
            What::RelayRefused { .. } => "relay.refused",
            What::HotnessChanged { .. } => "artifact.hotness",
            What::PersistFailed { .. } => "directory.persist_failed",
            What::PeerRefused { .. } => "link.refused",
            What::CatalogCreated { .. } => "catalog.created",
            What::ArtifactPublished { .. } => "artifact.published",
            What::ArtifactExpunged { .. } => "artifact.expunged",
            What::TagSet { .. } => "tag.set",
            What::RelayDrained { .. } => "relay.drained",
            What::RelayUndrained { .. } => "relay.undrained",
            What::RelayReadmitted { .. } => "relay.readmitted",
            What::TokenAdded { .. } => "token.added",
            What::TokenRevoked { .. } => "token.revoked",
            What::LinkAdded { .. } => "link.added",
            What::LinkRemoved { .. } => "link.removed",
            What::WebhookAdded { .. } => "webhook.added",
            What::WebhookRemoved { .. } => "webhook.removed",
        }
    }

    /// The notice for a machine event, or `None` for the ones too frequent or internal to
    /// announce (each passed audit, a generation change).
    pub(super) fn of_event(event: &Event) -> Option<What> {
        Some(match event {
            Event::RelayEnrolled { relay, url } => What::RelayEnrolled { relay: relay.to_string(), url: url.to_string() },
            Event::RelayAdmitted { relay } => What::RelayAdmitted { relay: relay.to_string() },
            Event::RelayProven { relay } => What::RelayProven { relay: relay.to_string() },
            Event::SelfTestFailed { relay, reason } => What::SelfTestFailed { relay: relay.to_string(), reason: reason.clone() },
            Event::RelaySuspended { relay, reason } => What::RelaySuspended { relay: relay.to_string(), reason: reason.clone() },
            Event::RelayQuarantined { relay, reason } => What::RelayQuarantined { relay: relay.to_string(), reason: reason.clone() },
            Event::RelayLost { relay } => What::RelayLost { relay: relay.to_string() },
            Event::RelayForgotten { relay } => What::RelayForgotten { relay: relay.to_string() },
            Event::RelayRefused { relay, reason } => What::RelayRefused { relay: relay.to_string(), reason: reason.clone() },
            Event::HotnessChanged { digest, extra } => What::HotnessChanged { digest: digest.to_string(), extra: *extra },
            Event::PersistFailed { what, error } => What::PersistFailed { what: what.clone(), error: error.clone() },
            Event::PeerRefused { peer, reason } => What::PeerRefused { peer: peer.to_string(), reason: reason.clone() },
            Event::AuditPassed { .. } | Event::GenerationChanged { .. } => return None,
        })
    }
}

/// The stream: a broadcast channel, and the last [`KEPT`] notices.
pub(super) struct EventBus {
    tx: broadcast::Sender<Arc<Notice>>,
    /// The last notices, oldest first; also what numbers them (under the lock, so that the
    /// channel carries them in `seq` order).
    recent: Mutex<(u64, VecDeque<Arc<Notice>>)>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    pub(super) fn new() -> Self {
        let (tx, _) = broadcast::channel(KEPT);
        Self { tx, recent: Mutex::new((0, VecDeque::with_capacity(KEPT))) }
    }

    /// Numbers, keeps and sends `what`. Never blocks on readers.
    pub(super) fn publish(&self, what: What) -> Arc<Notice> {
        let time_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.0 += 1;
        let notice = Arc::new(Notice { seq: recent.0, time_ms, what });
        if recent.1.len() == KEPT {
            recent.1.pop_front();
        }
        recent.1.push_back(notice.clone());
        // No receiver is not an error: nobody is listening right now.
        let _ = self.tx.send(notice.clone());
        notice
    }

    /// The kept notices numbered after `after`, oldest first, and a receiver of those that
    /// follow, with none missed or repeated between the two (for `Last-Event-ID`).
    pub(super) fn since(&self, after: u64) -> (Vec<Arc<Notice>>, broadcast::Receiver<Arc<Notice>>) {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let rx = self.tx.subscribe();
        let kept = recent.1.iter().filter(|n| n.seq > after).cloned().collect();
        (kept, rx)
    }
}

/// How often an idle stream sends a comment, so that proxies keep it open and a client sees a
/// dead connection.
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(15);

/// `GET /api/v1/events`: the notices as Server-Sent Events (`id:` its seq, `event:` its kind,
/// `data:` its JSON), starting after `Last-Event-ID` (or `?after=N`) with the kept ones, then live.
/// A reader too slow for the channel gets an `event: lagged` naming how many it missed, and goes on.
///
/// With `named` false the `event:` line is left out, so that a browser's `EventSource` hands
/// every notice to one `onmessage` (the kind is in the JSON).
pub(super) fn stream(bus: &EventBus, req: &Request<Incoming>, named: bool) -> Response<Body> {
    let after = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .or_else(|| req.uri().query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("after=")?.parse().ok())))
        .unwrap_or(u64::MAX);
    // Without a position a reader starts live: the kept notices are for reconnects. The receiver
    // is taken with the kept ones under one lock: none is missed or repeated between the two.
    let (kept, rx) = bus.since(after);
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.reset();
    let state = (VecDeque::from(kept), rx, heartbeat);
    let frames = stream::unfold(state, move |(mut kept, mut rx, mut heartbeat)| async move {
        let bytes = match kept.pop_front() {
            Some(n) => sse_frame(&n, named),
            None => tokio::select! {
                got = rx.recv() => match got {
                    Ok(n) => sse_frame(&n, named),
                    Err(RecvError::Lagged(missed)) => Bytes::from(format!("event: lagged\ndata: {{\"missed\":{missed}}}\n\n")),
                    Err(RecvError::Closed) => return None,
                },
                _ = heartbeat.tick() => Bytes::from_static(b": keep-alive\n\n"),
            },
        };
        Some((Ok::<_, BoxError>(Frame::data(bytes)), (kept, rx, heartbeat)))
    });
    let body = StreamBody::new(frames).boxed_unsync();
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // nginx and other buffering proxies pass the stream on as it comes.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// One notice as an SSE event.
fn sse_frame(n: &Notice, named: bool) -> Bytes {
    let json = serde_json::to_string(n).unwrap_or_else(|_| "{}".to_owned());
    if named { Bytes::from(format!("id: {}\nevent: {}\ndata: {json}\n\n", n.seq, n.kind())) } else { Bytes::from(format!("id: {}\ndata: {json}\n\n", n.seq)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_are_numbered_kept_and_serialized_with_their_kind() {
        let bus = EventBus::new();
        let (_, mut rx) = bus.since(0);
        bus.publish(What::RelayLost { relay: "r1".into() });
        let n = bus.publish(What::RelayQuarantined { relay: "r2".into(), reason: "bad chunk 3".into() });
        assert_eq!(n.seq, 2);
        assert_eq!(n.kind(), "relay.quarantined");
        let json = serde_json::to_value(&*n).unwrap();
        assert_eq!(json["kind"], "relay.quarantined");
        assert_eq!(json["reason"], "bad chunk 3");
        assert_eq!(rx.try_recv().unwrap().seq, 1);
        assert_eq!(rx.try_recv().unwrap().seq, 2);
        let (kept, _) = bus.since(1);
        assert_eq!(kept.iter().map(|n| n.seq).collect::<Vec<_>>(), vec![2]);
        let e = String::new;
        let every = [
            What::RelayEnrolled { relay: e(), url: e() },
            What::RelayAdmitted { relay: e() },
            What::RelayProven { relay: e() },
            What::SelfTestFailed { relay: e(), reason: e() },
            What::RelaySuspended { relay: e(), reason: e() },
            What::RelayQuarantined { relay: e(), reason: e() },
            What::RelayLost { relay: e() },
            What::RelayForgotten { relay: e() },
            What::RelayRefused { relay: e(), reason: e() },
            What::HotnessChanged { digest: e(), extra: 1 },
            What::PersistFailed { what: e(), error: e() },
            What::PeerRefused { peer: e(), reason: e() },
            What::CatalogCreated { catalog: e() },
            What::ArtifactPublished { catalog: e(), path: e(), digest: e(), size: 0 },
            What::ArtifactExpunged { catalog: None, path: None, digest: None },
            What::TagSet { catalog: e(), path: e(), tags: vec![] },
            What::RelayDrained { relay: e() },
            What::RelayUndrained { relay: e() },
            What::RelayReadmitted { relay: e() },
            What::TokenAdded { name: e(), role: e() },
            What::TokenRevoked { name: e() },
            What::LinkAdded { peer: e(), url: e() },
            What::LinkRemoved { peer: e(), url: e() },
            What::WebhookAdded { id: e(), url: e() },
            What::WebhookRemoved { id: e(), url: e() },
        ];
        let kinds: Vec<&str> = every.iter().map(What::kind).collect();
        assert_eq!(kinds, KINDS, "KINDS lists every variant's kind, in order");
        for what in &every {
            assert_eq!(serde_json::to_value(what).unwrap()["kind"], what.kind(), "serialized kind matches kind()");
        }
    }

    #[test]
    fn only_the_last_notices_are_kept() {
        let bus = EventBus::new();
        for i in 0..(KEPT + 10) {
            bus.publish(What::RelayLost { relay: i.to_string() });
        }
        let (kept, _) = bus.since(0);
        assert_eq!(kept.len(), KEPT);
        assert_eq!(kept[0].seq, 11);
    }
}
