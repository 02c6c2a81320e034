//! The transfer driver: runs `odi_core::transfer::Transfer` over HTTP range requests to several
//! sources, writing verified chunks into a resumable `PartialFile`.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ed25519_dalek::SigningKey;
use futures_util::StreamExt as _;
use http::{Method, Request, StatusCode, header};
use http_body_util::BodyStream;
use odi_core::ChunkManifest;
use odi_core::transfer::{Effect, Event, Outcome, RequestId, Transfer, TransferConfig};
pub use odi_storage::{PartialFile, SealedPartial};

pub use crate::redirect::Redirects;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::client::HttpClient;
use crate::limit::RateLimiter;
use crate::{Clock, NetError, crash, redirect};

/// Bad chunks remembered per download for `report_rejected`.
const MAX_REJECTED: usize = 64;

/// Where chunks can come from.
#[derive(Clone, Debug)]
pub struct Source {
    /// The URL chunks are asked from with range requests.
    pub url: String,
    /// Sign requests with the node key (the directory's node API).
    pub signed: bool,
}

/// What a transfer did, for logs and for the caller's report.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Verified bytes fetched.
    pub bytes_fetched: u64,
    /// Bytes received that did not match their chunk's hash.
    pub bytes_rejected: u64,
    /// Chunks already held (resumed) before the transfer began.
    pub chunks_resumed: u64,
    /// Chunks that did not match their hash and were fetched again.
    pub chunks_rejected: u64,
    /// Range requests that failed.
    pub requests_failed: u64,
    /// Sources given up on.
    pub sources_dropped: Vec<String>,
    /// The first failures, one line each (at most 20).
    pub failures: Vec<String>,
    /// Chunks that did not match their hash: the source's URL and the chunk (at most 64).
    pub rejected: Vec<(String, u64)>,
}

/// Fetches one artifact from several sources at once, each chunk verified before it is written.
pub struct Downloader {
    /// The client requests go through.
    pub client: HttpClient,
    /// The node key that signs requests to sources marked `signed`.
    pub key: Option<SigningKey>,
    /// A bandwidth limit shared with other transfers.
    pub limiter: Option<Arc<RateLimiter>>,
    /// The transfer engine's settings.
    pub config: TransferConfig,
    /// Which redirects sources may send.
    pub redirects: Redirects,
}

enum Msg {
    Chunk(RequestId, u64, Bytes),
    End(RequestId, Result<(), String>),
    Written(u64, Result<(), String>),
}

impl Downloader {
    /// Fetches every chunk `partial` lacks (`have` lists those it holds) from `sources`, each
    /// verified before it is written. Returns the partial file, complete, for the caller to seal
    /// and publish; `progress` is told the bytes verified so far.
    pub async fn download(
        &self,
        manifest: &ChunkManifest,
        sources: &[Source],
        partial: PartialFile,
        have: Vec<u64>,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(PartialFile, Report), (NetError, Report)> {
        let clock = Clock::start();
        let mut report = Report { chunks_resumed: have.len() as u64, ..Report::default() };
        let resumed_bytes: u64 = have.iter().filter_map(|i| manifest.chunk_range(*i)).map(|r| r.end - r.start).sum();
        let mut machine = Transfer::new(manifest.clone(), have, sources.len() as u32, self.config.clone(), clock.now());
        let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
        let mut tasks: HashMap<RequestId, AbortHandle> = HashMap::new();
        let manifest = Arc::new(manifest.clone());
        let outcome = loop {
            while let Some(effect) = machine.poll_effect() {
                match effect {
                    Effect::Fetch { id, source, range, chunks } => {
                        let src = sources[source.0 as usize].clone();
                        let fetch = fetch_range(
                            self.client.clone(),
                            self.key.clone(),
                            self.limiter.clone(),
                            self.redirects,
                            src,
                            manifest.clone(),
                            id,
                            range,
                            chunks,
                            tx.clone(),
                        );
                        tasks.insert(id, tokio::spawn(fetch).abort_handle());
                    }
                    Effect::Cancel { id } => {
                        if let Some(task) = tasks.remove(&id) {
                            task.abort();
                        }
                    }
                    Effect::Write { index, data } => {
                        let (partial, tx) = (partial.clone(), tx.clone());
                        tokio::spawn(async move {
                            crash::point("chunk-received");
                            let result = partial.write_chunk(index, data).await.map_err(|e| e.to_string());
                            crash::point("chunk-written");
                            let _ = tx.send(Msg::Written(index, result));
                        });
                    }
                    Effect::Finish => machine.handle_finished(Ok(())),
                }
            }
            while let Some(event) = machine.poll_event() {
                match event {
                    Event::ChunkRejected { source, index } => {
                        report.chunks_rejected += 1;
                        if report.rejected.len() < MAX_REJECTED {
                            report.rejected.push((sources[source.0 as usize].url.clone(), index));
                        }
                        tracing::warn!(source = %sources[source.0 as usize].url, chunk = index, "chunk did not match its hash; fetching it elsewhere");
                    }
                    Event::RequestFailed { source, reason } => {
                        report.requests_failed += 1;
                        tracing::debug!(source = %sources[source.0 as usize].url, %reason, "range request failed");
                        if report.failures.len() < 20 {
                            report.failures.push(format!("{}: {reason}", sources[source.0 as usize].url));
                        }
                    }
                    Event::SourceDropped { source, reason } => {
                        tracing::warn!(source = %sources[source.0 as usize].url, %reason, "source dropped");
                        report.sources_dropped.push(sources[source.0 as usize].url.clone());
                    }
                    Event::Done | Event::Failed { .. } => {}
                }
            }
            if let Some(outcome) = machine.outcome() {
                break outcome.clone();
            }
            progress(resumed_bytes + machine.bytes_good);
            let timer = clock.sleep_until(machine.poll_timeout());
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::Chunk(id, index, data)) => machine.handle_chunk(id, index, data, clock.now()),
                    Some(Msg::End(id, result)) => {
                        tasks.remove(&id);
                        machine.handle_end(id, result, clock.now());
                    }
                    Some(Msg::Written(index, result)) => machine.handle_written(index, result, clock.now()),
                    None => unreachable!("the loop holds a sender"),
                },
                () = timer => machine.handle_timeout(clock.now()),
            }
        };
        for task in tasks.into_values() {
            task.abort();
        }
        report.bytes_fetched = machine.bytes_good;
        report.bytes_rejected = machine.bytes_rejected;
        match outcome {
            Outcome::Done => Ok((partial, report)),
            Outcome::Failed(reason) => Err((NetError::Protocol(format!("cannot download {}: {reason}", manifest.digest())), report)),
        }
    }
}

/// Tells the directory at `directory` (its base URL) which sources sent bad chunks of `digest`
/// (`POST /report`, one report per source), so it audits those relays at once. Best effort: a
/// report that cannot be delivered changes nothing for the download.
pub async fn report_rejected(client: &HttpClient, directory: &str, digest: odi_core::Digest, report: &Report) {
    let mut told = std::collections::BTreeSet::new();
    for (url, chunk) in &report.rejected {
        if !told.insert(url.as_str()) {
            continue;
        }
        let body = odi_core::message::ChunkReport { url: url.clone(), digest, chunk: *chunk };
        let Ok(body) = serde_json::to_vec(&body) else { continue };
        let req =
            Request::post(format!("{}/report", directory.trim_end_matches('/'))).header(header::CONTENT_TYPE, "application/json").body(crate::body::full(body));
        let Ok(req) = req else { continue };
        match client.send(req, Duration::from_secs(5)).await {
            Ok(resp) => tracing::debug!(%url, chunk, status = %resp.status(), "reported a bad chunk to the directory"),
            Err(e) => tracing::debug!(%url, chunk, error = %e, "cannot report a bad chunk to the directory"),
        }
    }
}

/// One range request: checks the response is exactly the range asked for, then hands over each
/// complete chunk as it arrives. Holds at most one chunk plus one frame in memory.
#[allow(clippy::too_many_arguments)]
async fn fetch_range(
    client: HttpClient,
    key: Option<SigningKey>,
    limiter: Option<Arc<RateLimiter>>,
    redirects: Redirects,
    source: Source,
    manifest: Arc<ChunkManifest>,
    id: RequestId,
    range: Range<u64>,
    chunks: Range<u64>,
    tx: mpsc::UnboundedSender<Msg>,
) {
    let result = fetch_range_inner(&client, key.as_ref(), limiter.as_deref(), redirects, &source, &manifest, id, range, chunks, &tx).await;
    let _ = tx.send(Msg::End(id, result));
}

#[allow(clippy::too_many_arguments)]
async fn fetch_range_inner(
    client: &HttpClient,
    key: Option<&SigningKey>,
    limiter: Option<&RateLimiter>,
    redirects: Redirects,
    source: &Source,
    manifest: &ChunkManifest,
    id: RequestId,
    range: Range<u64>,
    chunks: Range<u64>,
    tx: &mpsc::UnboundedSender<Msg>,
) -> Result<(), String> {
    let total = manifest.total_len();
    if range.is_empty() {
        // Zero-length artifacts have no chunks; nothing to fetch.
        return Ok(());
    }
    let range_header = format!("bytes={}-{}", range.start, range.end - 1);
    let mut url = source.url.clone();
    let mut hops = 0;
    let resp = loop {
        // A signature is a credential: it goes only to the source's own origin (scheme, host,
        // port), never along a redirect to anywhere else.
        let same_origin = redirect::same_origin(&url, &source.url);
        let r = if let (true, true, Some(key)) = (source.signed, same_origin, key) {
            let uri: http::Uri = url.parse().map_err(|_| format!("bad source URL {url}"))?;
            let (path, query) = (uri.path().to_owned(), uri.query().unwrap_or("").to_owned());
            let signed = odi_core::auth::sign(key, "GET", &path, &query, b"", crate::unix_now(), &crate::random_bytes::<16>());
            let req = Request::builder()
                .method(Method::GET)
                .uri(uri)
                .header(header::RANGE, &range_header)
                .header("content-digest", signed.content_digest)
                .header("signature-input", signed.signature_input)
                .header("signature", signed.signature)
                .body(crate::body::empty())
                .map_err(|e| e.to_string())?;
            client.send(req, Duration::from_secs(15)).await
        } else {
            let req = Request::get(&url).header(header::RANGE, &range_header).body(crate::body::empty()).map_err(|e| e.to_string())?;
            client.send(req, Duration::from_secs(15)).await
        }
        .map_err(|e| e.to_string())?;
        match redirect::next(redirects, &source.url, &url, r.status(), r.headers(), hops)? {
            Some(next) => {
                url = next;
                hops += 1;
            }
            None => break r,
        }
    };
    let status = resp.status();
    let whole = range.start == 0 && range.end == total;
    match status {
        StatusCode::PARTIAL_CONTENT => {
            let expected = format!("bytes {}-{}/{total}", range.start, range.end - 1);
            let got = resp.headers().get(header::CONTENT_RANGE).and_then(|v| v.to_str().ok()).unwrap_or("");
            if got != expected {
                return Err(format!("Content-Range `{got}` is not the range asked for ({expected})"));
            }
        }
        StatusCode::OK if whole => {}
        StatusCode::OK => return Err("the source ignored the Range header".into()),
        other => return Err(format!("answered {other}")),
    }
    let mut body = BodyStream::new(resp.into_body());
    let mut index = chunks.start;
    let mut want = chunk_len(manifest, index);
    let mut buf = BytesMut::with_capacity(want);
    while let Some(frame) = body.next().await {
        let frame = frame.map_err(|e| format!("body: {e}"))?;
        let Ok(mut data) = frame.into_data() else { continue };
        if let Some(limiter) = limiter {
            limiter.take(data.len()).await;
        }
        while !data.is_empty() {
            if index >= chunks.end {
                return Err("sent more bytes than asked for".into());
            }
            let take = (want - buf.len()).min(data.len());
            buf.extend_from_slice(&data.split_to(take));
            if buf.len() < want && buf.len() * 2 >= want {
                crash::point("mid-chunk");
            }
            if buf.len() == want {
                if tx.send(Msg::Chunk(id, index, buf.split().freeze())).is_err() {
                    return Ok(()); // the transfer is over
                }
                index += 1;
                if index < chunks.end {
                    want = chunk_len(manifest, index);
                    buf.reserve(want);
                }
            }
        }
    }
    Ok(())
}

fn chunk_len(manifest: &ChunkManifest, index: u64) -> usize {
    manifest.chunk_range(index).map_or(0, |r| (r.end - r.start) as usize)
}
