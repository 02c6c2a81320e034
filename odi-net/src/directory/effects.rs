//! Carrying out what the directory's machine asks for: storage writes (awaited, their outcome
//! fed back), relay self-tests and content audits (in the background, reported back), and the
//! log line for each of its events.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::header;
use http::{Request, StatusCode};
use odi_core::Digest;
use odi_core::directory::{AuditError, AuditRequest, AuditShape, Directory, Effect, Event, PeerFailure};
use odi_core::federation;
use odi_core::manifest::ChunkManifest;
use odi_core::message::{NodeId, RelayUrl};
use serde::Deserialize;

use super::{Shared, peers};
use crate::client;
use crate::driver::{Core, Driver};

/// How long a relay's self-test, a probe or an audit fetch may take.
pub(super) const SELF_TEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest `/healthz` answer read from a relay.
const HEALTH_BODY_LIMIT: usize = 4096;

impl Driver for Shared {
    type Machine = Directory;

    fn core(&self) -> &Core<Directory> {
        &self.core
    }

    /// Logs the event; a new generation also wakes the relays' watch requests.
    fn on_event(&self, event: Event) {
        log_event(&event);
        count_event(&self.metrics.counters, &event);
        if let Some(what) = super::events::What::of_event(&event) {
            self.announce(what);
        }
        if let Event::GenerationChanged { generation } = event {
            self.generation.send_replace(generation);
        }
    }

    fn execute(self: &Arc<Self>, effects: Vec<Effect>) -> impl Future<Output = ()> + Send {
        execute(self, effects)
    }
}

/// Feeds the `/metrics` counters (atomics: the machine's lock is held here).
fn count_event(c: &crate::metrics::DirectoryCounters, event: &Event) {
    let counter = match event {
        Event::RelayEnrolled { .. } => &c.relays_enrolled,
        Event::RelayAdmitted { .. } => &c.relays_admitted,
        Event::RelayForgotten { .. } => &c.relays_forgotten,
        Event::RelayProven { .. } => &c.relays_proven,
        Event::SelfTestFailed { .. } => &c.self_tests_failed,
        Event::RelayLost { .. } => &c.relays_lost,
        Event::RelaySuspended { .. } => &c.suspensions,
        Event::RelayQuarantined { .. } => &c.quarantines,
        Event::AuditPassed { .. } => &c.audits_passed,
        Event::RelayRefused { .. } => &c.relay_refusals,
        Event::PersistFailed { .. } => &c.persist_failures,
        Event::PeerRefused { .. } => &c.peer_refusals,
        Event::HotnessChanged { .. } | Event::GenerationChanged { .. } => return,
    };
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

fn log_event(event: &Event) {
    match event {
        Event::RelayEnrolled { relay, url } => tracing::info!(%relay, %url, "relay enrolled"),
        Event::RelayAdmitted { relay } => tracing::info!(%relay, "relay passed its self-test"),
        Event::RelayForgotten { relay } => tracing::info!(%relay, "relay forgotten (gone for long, or replaced at its URL)"),
        Event::RelayProven { relay } => tracing::info!(%relay, "relay passed its probation: plain clients may be sent to it"),
        Event::SelfTestFailed { relay, reason } => tracing::warn!(%relay, %reason, "relay failed its self-test"),
        Event::RelayLost { relay } => tracing::warn!(%relay, "relay missed its lease; no more redirects to it"),
        Event::RelaySuspended { relay, reason } => tracing::warn!(%relay, %reason, "relay failed a check; no redirects until it passes a self-test"),
        Event::RelayQuarantined { relay, reason } => tracing::error!(%relay, %reason, "relay quarantined"),
        Event::AuditPassed { relay, digest, index } => tracing::debug!(%relay, %digest, index, "audit passed"),
        Event::HotnessChanged { digest, extra } => tracing::info!(%digest, extra, "extra replicas changed with demand"),
        Event::RelayRefused { relay, reason } => tracing::info!(%relay, %reason, "refused a relay request"),
        Event::GenerationChanged { generation } => tracing::debug!(generation, "generation changed"),
        Event::PersistFailed { what, error } => tracing::error!(%what, %error, "cannot save directory state"),
        Event::PeerRefused { peer, reason } => tracing::warn!(%peer, %reason, "refused a batch from a linked directory"),
    }
}

/// Runs effects: writes are awaited and their outcome reported to the machine (so a caller that
/// awaits this may then take the outcome of its own write); self-tests and audits run in the
/// background and report back. An outcome may yield effects that start more: they run before
/// the rest of the list, as a nested call would, from a worklist (a chain of writes, such as
/// every relay's state saved after a restart, must not grow the stack).
pub(super) fn execute(shared: &Arc<Shared>, effects: Vec<Effect>) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
    Box::pin(async move {
        let mut pending: Vec<std::vec::IntoIter<Effect>> = vec![effects.into_iter()];
        while let Some(list) = pending.last_mut() {
            let Some(effect) = list.next() else {
                pending.pop();
                continue;
            };
            match effect {
                Effect::Persist { id, records } => {
                    let outcome = shared.meta.apply(&records).await.map_err(|e| e.to_string());
                    let (_, more) = shared.with_machine(|d, now| d.handle_storage(id, outcome, now));
                    if !more.is_empty() {
                        pending.push(more.into_iter());
                    }
                }
                Effect::SelfTest { relay, url, attempt } => {
                    tokio::spawn(self_test(shared.clone(), relay, url, attempt));
                }
                Effect::Audit { relay, url, digest: _, index: _, range, attempt, ask } => {
                    tokio::spawn(audit(shared.clone(), relay, url, range, attempt, ask));
                }
                Effect::Peer(effect) => peer_effect(shared, effect),
            }
        }
    })
}

async fn self_test(shared: Arc<Shared>, relay: NodeId, url: RelayUrl, attempt: u64) {
    #[derive(Deserialize)]
    struct Health {
        id: NodeId,
    }
    // The relay's answers are never logged or shown: only a status and a fixed description.
    let probe = async {
        let req = Request::get(format!("{url}/healthz")).body(crate::http::empty()).map_err(|e| e.to_string())?;
        let resp = shared.client.send(req, SELF_TEST_TIMEOUT).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        if status != StatusCode::OK {
            return Err(format!("/healthz answered {status}"));
        }
        let body = client::read_body(resp.into_body(), HEALTH_BODY_LIMIT).await.map_err(|_| "/healthz sent no complete answer of at most 4 KiB".to_owned())?;
        let health: Health = serde_json::from_slice(&body).map_err(|_| "/healthz did not answer with a relay's JSON".to_owned())?;
        Ok(health.id)
    };
    let outcome: Result<NodeId, String> = probe.await;
    let (_, effects) = shared.with_machine(|d, now| d.handle_self_test(relay, attempt, outcome, now));
    execute(&shared, effects).await;
}

/// Fetches one chunk from a relay as a client would (`ask`: its path, request shape and user
/// agent), reading no further than the chunk's end, for `handle_audit` to check.
async fn audit(shared: Arc<Shared>, relay: NodeId, url: RelayUrl, range: std::ops::Range<u64>, attempt: u64, ask: AuditRequest) {
    let started = std::time::Instant::now();
    let fetch = async {
        let mut req = Request::get(format!("{url}/{}", ask.path)).header(header::USER_AGENT, ask.user_agent);
        req = match ask.shape {
            AuditShape::ChunkRange => req.header(header::RANGE, format!("bytes={}-{}", range.start, range.end - 1)),
            AuditShape::OpenRange => req.header(header::RANGE, format!("bytes={}-", range.start)),
            AuditShape::Whole => req,
        };
        let req = req.body(crate::http::empty()).map_err(|e| AuditError::Fetch(e.to_string()))?;
        let resp = shared.client.send(req, SELF_TEST_TIMEOUT).await.map_err(|e| AuditError::Fetch(e.to_string()))?;
        // Where the body starts in the file: a 206 says, a 200 is the whole file.
        let starts_at = match resp.status() {
            StatusCode::OK => 0,
            StatusCode::PARTIAL_CONTENT => resp
                .headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| AuditError::Fetch("a 206 without a usable Content-Range".into()))?,
            status => return Err(AuditError::Status(status.as_u16())),
        };
        if starts_at > range.start {
            return Err(AuditError::Fetch(format!("the answer starts at byte {starts_at}, after the chunk")));
        }
        let skip = range.start - starts_at;
        let exact = ask.shape == AuditShape::ChunkRange;
        client::read_span(resp.into_body(), skip, range.end - range.start, exact).await.map_err(|e| AuditError::Fetch(e.to_string()))
    };
    let outcome = fetch.await;
    let took = started.elapsed();
    let (_, effects) = shared.with_machine(|d, now| d.handle_audit(relay, attempt, outcome, took, now));
    execute(&shared, effects).await;
}

/// Carries out one federation effect in the background; its outcome goes back in through the
/// directory (`handle_peer_batch`, `handle_peer_failed`, `handle_peer_blob`).
fn peer_effect(shared: &Arc<Shared>, effect: federation::Effect) {
    match effect {
        federation::Effect::Pull { peer, since } => {
            tokio::spawn(pull(shared.clone(), peer, since));
        }
        federation::Effect::Notify { peer, head } => {
            tokio::spawn(notify(shared.clone(), peer, head));
        }
        federation::Effect::FetchBlob { digest, manifest, sources } => {
            tokio::spawn(fetch_blob(shared.clone(), digest, manifest, sources));
        }
        // The directory makes these durable through its own persistence path.
        federation::Effect::Persist(_) => tracing::error!("a federation Persist effect reached the driver; ignored"),
    }
}

async fn pull(shared: Arc<Shared>, peer: NodeId, since: u64) {
    let Some(url) = shared.lock().peer_url(&peer).map(str::to_owned) else {
        let (_, effects) = shared.with_machine(|d, now| d.handle_peer_failed(peer, PeerFailure::Pull, now));
        execute(&shared, effects).await;
        return;
    };
    let effects = match peers::pull(&shared.client, &shared.key, &url, since).await {
        Ok(batch) => {
            let entries = batch.entries.len();
            let (outcome, effects) = shared.with_machine(|d, now| d.handle_peer_batch(peer, batch, now));
            match outcome {
                Ok(_) => tracing::debug!(%peer, %url, since, entries, "pulled changes"),
                Err(refusal) => tracing::warn!(%peer, %url, reason = %refusal, "refused a batch from a linked directory; nothing of it applied"),
            }
            effects
        }
        Err(e) => {
            tracing::info!(%peer, %url, error = %e, "cannot pull from a linked directory; retrying with backoff");
            shared.with_machine(|d, now| d.handle_peer_failed(peer, PeerFailure::Pull, now)).1
        }
    };
    execute(&shared, effects).await;
}

async fn notify(shared: Arc<Shared>, peer: NodeId, head: u64) {
    let Some(url) = shared.lock().peer_url(&peer).map(str::to_owned) else { return };
    if let Err(e) = peers::send_notify(&shared.client, &shared.key, &url, head).await {
        tracing::info!(%peer, %url, error = %e, "cannot notify a linked directory; retrying with backoff");
        let (_, effects) = shared.with_machine(|d, now| d.handle_peer_failed(peer, PeerFailure::Notify, now));
        execute(&shared, effects).await;
    }
}

/// Fetches a blob a received entry names, verified chunk by chunk, from the sources the
/// federation names (linked directories by their link URL), the relays those directories say
/// hold it, and this directory's own relays; stores it; reports the outcome.
async fn fetch_blob(shared: Arc<Shared>, digest: Digest, manifest: ChunkManifest, sources: Vec<NodeId>) {
    let peer_urls: Vec<String> = {
        let m = shared.lock();
        sources.iter().filter_map(|id| m.peer_url(id).map(str::to_owned)).collect()
    };
    let mut relays = peers::relay_holders(&shared, &digest);
    for url in &peer_urls {
        relays.extend(peers::peer_holders(&shared.client, &shared.key, url, &digest).await);
    }
    relays.sort();
    relays.dedup();
    let all = peers::blob_sources(&digest, &peer_urls, &relays);
    let partials = shared.data_dir.join("federation-partial");
    let outcome = match peers::fetch_blob(&shared, &partials, &manifest, &all).await {
        Ok(report) => {
            shared.peer_blob_bytes_received.fetch_add(report.bytes_fetched, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(%digest, fetched = report.bytes_fetched, rejected = report.chunks_rejected, "fetched a blob for a linked entry");
            Ok(())
        }
        Err((e, why)) => {
            tracing::warn!(%digest, error = %e, "cannot fetch a blob for a linked entry; retrying later");
            Err(why)
        }
    };
    let (_, effects) = shared.with_machine(|d, now| d.handle_peer_blob(digest, outcome, now));
    execute(&shared, effects).await;
}
