//! The relay's side of the directory: messages (enroll, heartbeats), the long poll for a new
//! generation, downloads of its assignment (every chunk verified, from the directory and from
//! peers), and the background scrub of what it holds.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use odi_core::auth::{self, SigError, SignedAnswer, SignedHeaders};
use odi_core::message::{Message, NodeId, RelayUrl};
use odi_core::relay::Upstream;
use odi_core::{ChunkManifest, Digest};
use odi_storage::LocalStore;
use serde::Deserialize;

use super::{Shared, found_corrupt, step};
use crate::client;
use crate::driver::Driver as _;
use crate::limit::RateLimiter;
use crate::transfer::Source;
use crate::{NetError, crash, unix_now};

/// How long a message to the directory may take; the long poll gets longer.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
const WATCH_TIMEOUT: Duration = Duration::from_secs(40);
/// Wait between scrub passes (and before the first), so an idle relay does not spin.
const SCRUB_PAUSE: Duration = Duration::from_secs(5);

pub(super) async fn send(shared: Arc<Shared>, upstream: Upstream, msg: Message) {
    let endpoint = match &msg {
        Message::Enroll(_) => "enroll",
        _ => "heartbeat",
    };
    let url = format!("{}/odi/v1/{endpoint}", shared.url(upstream));
    let outcome = async {
        let body = serde_json::to_vec(&msg).map_err(|e| NetError::Protocol(e.to_string()))?;
        let (resp, sent) = shared.client.signed_exchange(&shared.key, Method::POST, &url, body, REQUEST_TIMEOUT).await?;
        let (status, headers) = (resp.status(), resp.headers().clone());
        let bytes = client::read_body(resp.into_body(), client::MAX_JSON_BODY).await?;
        let signer = match verify_answer(status, &headers, &bytes, &sent) {
            Ok(signer) => signer,
            Err(e) => return Ok(Err(format!("the directory's answer to {endpoint} is refused: {e}"))),
        };
        let reply = serde_json::from_slice::<Message>(&bytes)
            .map_err(|_| NetError::Status { status, reason: String::from_utf8_lossy(&bytes).trim().chars().take(300).collect() })?;
        Ok::<_, NetError>(Ok((reply, signer)))
    };
    match outcome.await {
        Ok(Ok((reply, signer))) => step(&shared, |m, now| m.handle_message(upstream, reply, signer, now, unix_now())),
        Ok(Err(refused)) => step(&shared, |m, now| m.handle_unverified(upstream, refused, now)),
        Err(e) => {
            tracing::warn!(error = %e, directory = shared.url(upstream), "cannot reach the directory; retrying");
            step(&shared, |m, now| m.handle_send_failed(upstream, now));
        }
    }
}

/// Checks that an answer is signed and bound to the request sent (`sent`); returns the key that
/// signed it (the machine checks it is the pinned one).
fn verify_answer(status: http::StatusCode, headers: &http::HeaderMap, body: &[u8], sent: &SignedHeaders) -> Result<NodeId, SigError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let answer = SignedAnswer {
        status: status.as_u16(),
        body,
        content_digest: header("content-digest"),
        signature_input: header("signature-input"),
        signature: header("signature"),
        request_signature_input: &sent.signature_input,
        request_signature: &sent.signature,
    };
    auth::verify_answer(&answer, unix_now())
}

/// Downloads one blob into the store: from the directory and from peer relays at once, every
/// chunk verified, resumable across crashes, published only after a whole-file check.
pub(super) async fn fetch(shared: Arc<Shared>, upstream: Upstream, manifest: ChunkManifest, peers: Vec<RelayUrl>) {
    let digest = manifest.digest();
    let hex = digest.to_hex();
    let directory = shared.url(upstream).to_owned();
    let mut sources = vec![Source { url: format!("{directory}/odi/v1/blobs/sha256/{hex}"), signed: true }];
    sources.extend(peers.iter().map(|p| Source { url: format!("{p}/blobs/sha256/{hex}"), signed: false }));
    if adopt_local(&shared, &manifest).await {
        if let Err(e) = shared.store.discard_partial(&digest).await {
            tracing::warn!(%digest, error = %e, "cannot remove the partial download of a blob taken from the local tree");
        }
        step(&shared, |m, now| m.handle_fetch(digest, Ok(()), now));
        return;
    }
    let outcome = async {
        let (partial, have) = shared.store.open_partial(manifest.clone()).await?;
        let result = shared.downloader.download(&manifest, &sources, partial, have, &|_| {}).await;
        let report = match &result {
            Ok((_, report)) | Err((_, report)) => report,
        };
        crate::transfer::report_rejected(&shared.client, &directory, digest, report).await;
        shared.metrics.counters.synced_bytes.fetch_add(report.bytes_fetched, std::sync::atomic::Ordering::Relaxed);
        let (partial, report) = result.map_err(|(e, _)| e)?;
        crash::point("before-fsync");
        let sealed = partial.seal().await?;
        crash::point("after-fsync");
        shared.store.commit_partial(sealed, &digest).await?;
        crash::point("after-rename");
        tracing::debug!(%digest, fetched = report.bytes_fetched, resumed_chunks = report.chunks_resumed, rejected = report.chunks_rejected, "synced");
        Ok::<_, NetError>(())
    };
    let outcome = outcome.await.map_err(|e| e.to_string());
    step(&shared, |m, now| m.handle_fetch(digest, outcome, now));
}

/// Takes `manifest`'s blob from a `--local-tree` holding it under a name a directory gave it,
/// every chunk checked; true when the store now holds it. A file that is missing, of another
/// size or other bytes is passed over (and the blob downloaded).
async fn adopt_local(shared: &Shared, manifest: &ChunkManifest) -> bool {
    if shared.local_trees.is_empty() {
        return false;
    }
    let digest = manifest.digest();
    for (catalog, path) in shared.local_names(&digest) {
        for (_, dir) in shared.local_trees.iter().filter(|(c, _)| *c == catalog) {
            let file = dir.join(path.as_str());
            match tokio::fs::metadata(&file).await {
                Ok(m) if m.is_file() && m.len() == manifest.total_len() => {}
                _ => continue,
            }
            match shared.store.adopt(manifest, &file).await {
                Ok(how) => {
                    shared.metrics.counters.adopted_bytes.fetch_add(manifest.total_len(), std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(%digest, file = %file.display(), ?how, "took the artifact from the local tree instead of downloading it");
                    return true;
                }
                Err(e) => tracing::warn!(%digest, file = %file.display(), error = %e, "the local tree's file is not this artifact; downloading it instead"),
            }
        }
    }
    false
}

/// Re-reads every held blob from disk at `scrub_rate`, checking each block against its sums,
/// so rot in a blob nobody asks for is found within (bytes held / rate) and dropped the same
/// way as rot found while serving. Its own rate, not the serving limiter: it never takes
/// bandwidth from clients, and reads are what it spends.
pub(super) async fn scrub(shared: Arc<Shared>) {
    if shared.scrub_rate == 0 {
        return;
    }
    let limiter = RateLimiter::new(shared.scrub_rate);
    loop {
        tokio::time::sleep(SCRUB_PAUSE).await;
        let held: Vec<Digest> = shared.lock().held().map(|(d, _)| *d).collect();
        let mut checked = 0u64;
        for digest in held {
            if !shared.lock().holds(&digest) {
                continue; // evicted or expunged since the pass began
            }
            match scrub_one(&shared.store, &limiter, &digest).await {
                Ok(bytes) => checked += bytes,
                Err(odi_core::storage::StorageError::Corrupt { .. }) => found_corrupt(&shared, digest),
                Err(odi_core::storage::StorageError::NotFound { .. }) => {}
                Err(e) => tracing::warn!(%digest, error = %e, "scrub cannot read a held blob; will try again next pass"),
            }
        }
        tracing::debug!(bytes = checked, "scrub pass done");
    }
}

async fn scrub_one(store: &LocalStore, limiter: &RateLimiter, digest: &Digest) -> Result<u64, odi_core::storage::StorageError> {
    use futures_util::StreamExt as _;
    let blob = store.open_on_disk(digest).await?;
    let size = blob.size;
    let mut stream = blob.stream(0..size);
    while let Some(piece) = stream.next().await {
        limiter.take(piece?.len()).await;
    }
    Ok(size)
}

/// Long-polls directory `upstream` for a new generation, so changes arrive as pushes, not on the
/// next heartbeat.
pub(super) async fn watch_directory(shared: Arc<Shared>, upstream: Upstream) {
    #[derive(Deserialize)]
    struct Generation {
        generation: u64,
    }
    // The generation the directory last announced. Watching for a change from it (not from the
    // generation applied) keeps the watch a long poll while an assignment is withheld, e.g.
    // before the self-test passes: otherwise every answer would come back at once, and each
    // would spend a nonce and a heartbeat, many a second.
    let mut announced: Option<u64> = None;
    loop {
        let (enrolled, after) = {
            let m = shared.lock();
            (m.is_enrolled_with(upstream), announced.unwrap_or_else(|| m.generation_of(upstream)))
        };
        if !enrolled {
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        }
        let url = format!("{}/odi/v1/watch?after={after}", shared.url(upstream));
        let outcome = async {
            let (resp, sent) = shared.client.signed_exchange(&shared.key, Method::GET, &url, Vec::new(), WATCH_TIMEOUT).await?;
            let (status, headers) = (resp.status(), resp.headers().clone());
            let bytes = client::read_body(resp.into_body(), client::MAX_JSON_BODY).await?;
            // Only a hint to heartbeat now, but only the pinned directory's.
            let signer = verify_answer(status, &headers, &bytes, &sent).map_err(|e| NetError::Protocol(e.to_string()))?;
            if shared.lock().pinned_key(upstream).is_some_and(|k| k != signer) {
                return Err(NetError::Protocol("the watch answer is not signed by the pinned directory key".into()));
            }
            if !status.is_success() {
                return Err(NetError::Status { status, reason: String::from_utf8_lossy(&bytes).trim().chars().take(300).collect() });
            }
            serde_json::from_slice::<Generation>(&bytes).map_err(|e| NetError::Protocol(format!("malformed JSON from the directory: {e}")))
        };
        match outcome.await {
            Ok(g) if g.generation != after => {
                announced = Some(g.generation);
                step(&shared, |m, now| m.handle_notify(upstream, g.generation, now));
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}
