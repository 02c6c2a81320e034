//! The relay driver: runs `odi_core::relay::Relay`, syncs its assignment from the directory
//! (every chunk verified before a blob becomes visible), and serves what it holds.
//!
//! Routes: `GET|HEAD /r/{catalog}/{path}`, `GET|HEAD /blobs/sha256/{hex}` (404 at once when not
//! held, so clients fall back fast), `GET /healthz` (names the relay, for the self-test).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use odi_core::message::{Capacity, Message, NodeId, RelayUrl};
use odi_core::path::{ArtifactPath, CatalogName};
use odi_core::relay::{Effect, Event, Relay, RelayConfig};
use odi_core::storage::BlobStore;
use odi_core::transfer::TransferConfig;
use odi_core::{ChunkManifest, Digest, time::Instant};
use odi_storage::LocalStore;
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::client::{self, HttpClient};
use crate::driver::{self, Core, Driver};
use crate::http::{BlobRequest, Body, Caching, CorruptBlob, DIGEST_HEADERS_KEPT, DigestHeaders, corrupt_blob, error, json, serve_local, split_catalog_path};
use crate::limit::RateLimiter;
use crate::lock::DataDirLock;
use crate::transfer::{Downloader, Redirects, Source};
use crate::{Clock, NetError, crash};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
const WATCH_TIMEOUT: Duration = Duration::from_secs(40);
/// The scrub's default read rate: 8 MiB/s re-reads 100 GiB in under four hours, a small share
/// of any disk, and never the serving limiter's.
pub const DEFAULT_SCRUB_RATE: u64 = 8 << 20;
/// Wait between scrub passes (and before the first), so an idle relay does not spin.
const SCRUB_PAUSE: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct RelayOptions {
    pub data_dir: PathBuf,
    /// Base URL of the directory, e.g. `http://127.0.0.1:7700`.
    pub directory: String,
    /// The URL clients reach this relay at; the directory self-tests it before trusting it.
    pub public_url: String,
    pub disk_budget: u64,
    /// Bytes per second; 0 is unlimited.
    pub bandwidth: u64,
    pub catalogs: Vec<String>,
    pub enroll_token: String,
    pub max_fetches: usize,
    /// Bytes per second the background scrub re-reads held blobs at, checking every block
    /// against its sums; 0 turns the scrub off (reads are still checked while served).
    pub scrub_rate: u64,
}

pub struct RelayServer {
    /// Held until `run` returns or the server is dropped: one daemon per data directory.
    _data_lock: DataDirLock,
    shared: Arc<Shared>,
}

/// What serving and syncing share; the machine is in `core` (see `crate::driver`).
struct Shared {
    core: Core<Relay>,
    store: Arc<LocalStore>,
    key: SigningKey,
    id: NodeId,
    directory: String,
    client: HttpClient,
    /// The `--bandwidth` limit, shared by serving and syncing.
    limiter: Option<Arc<RateLimiter>>,
    downloader: Downloader,
    digests: DigestHeaders,
    scrub_rate: u64,
}

/// Opens the relay in `options.data_dir` and serves on `listener` until `shutdown`.
pub async fn run(listener: TcpListener, options: RelayOptions, shutdown: impl Future<Output = ()>) -> Result<(), NetError> {
    RelayServer::open(options).await?.run(listener, shutdown).await
}

impl RelayServer {
    pub async fn open(options: RelayOptions) -> Result<Self, NetError> {
        let (data_lock, dir, key) = driver::open_data_dir(&options.data_dir)?;
        let public_url = RelayUrl::new(&options.public_url).map_err(|e| NetError::Config(e.to_string()))?;
        let directory = options.directory.trim_end_matches('/').to_owned();
        if !directory.starts_with("http://") {
            return Err(NetError::Config(format!("directory URL `{directory}` must start with http://")));
        }
        let catalogs =
            options.catalogs.iter().map(|c| CatalogName::new(c).map_err(|e| NetError::Config(format!("--catalog {c}: {e}")))).collect::<Result<Vec<_>, _>>()?;
        if options.enroll_token.trim().is_empty() {
            return Err(NetError::Config("no enrollment token: set ODI_ENROLL_TOKEN to the directory's enroll token".into()));
        }
        let store = Arc::new(LocalStore::open(dir.join("blobs"))?);
        let held = store.list().await?;
        let partials = store.partials().await?;
        let budget = options.disk_budget;
        let on_disk: u64 = held.iter().map(|(_, s)| s).sum();
        tracing::info!(blobs = held.len(), bytes = on_disk, budget, "relay store opened");
        let mut config = RelayConfig::new(public_url, Capacity { disk_budget: budget, bandwidth: options.bandwidth }, options.enroll_token.trim().to_owned());
        config.catalogs = catalogs;
        config.max_fetches = options.max_fetches.max(1);
        config.request_timeout = REQUEST_TIMEOUT + Duration::from_secs(5);
        config.retry_backoff = Duration::from_secs(1);
        let clock = Clock::start();
        let machine = Relay::new(config, held, partials, clock.now());
        let id = NodeId(key.verifying_key().to_bytes());
        let limiter = (options.bandwidth > 0).then(|| Arc::new(RateLimiter::new(options.bandwidth)));
        let client = HttpClient::new();
        let downloader = Downloader {
            client: client.clone(),
            key: Some(key.clone()),
            limiter: limiter.clone(),
            config: TransferConfig::default(),
            redirects: Redirects::SameOrigin,
        };
        let shared = Shared {
            core: Core::new(machine, clock),
            store,
            key,
            id,
            directory,
            client,
            limiter,
            downloader,
            digests: DigestHeaders::new(DIGEST_HEADERS_KEPT),
            scrub_rate: options.scrub_rate,
        };
        Ok(Self { _data_lock: data_lock, shared: Arc::new(shared) })
    }

    pub fn id(&self) -> NodeId {
        self.shared.id
    }

    pub async fn run(self, listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<(), NetError> {
        let shared = self.shared;
        let watcher = tokio::spawn(watch_directory(shared.clone()));
        let scrubber = tokio::spawn(scrub(shared.clone()));
        // The relay acts at once (it enrolls), not at its first deadline.
        step(&shared, |m, now| m.handle_timeout(now));
        let result = driver::run(shared, listener, handle, shutdown).await;
        watcher.abort();
        scrubber.abort();
        result
    }
}

impl Driver for Shared {
    type Machine = Relay;

    fn core(&self) -> &Core<Relay> {
        &self.core
    }

    fn on_event(&self, event: Event) {
        log_event(&event);
    }

    /// Starts each effect as a task: nothing here waits on one.
    fn execute(self: &Arc<Self>, effects: Vec<Effect>) -> impl Future<Output = ()> + Send {
        start(self, effects);
        std::future::ready(())
    }
}

/// Runs `f` on the machine (drained as `crate::driver` says) and starts the effects it asked
/// for; for callers that cannot wait, such as a response body's error path.
fn step<R>(shared: &Arc<Shared>, f: impl FnOnce(&mut Relay, Instant) -> R) -> R {
    let (out, effects) = shared.with_machine(f);
    start(shared, effects);
    out
}

/// Starts each effect as a task of its own.
fn start(shared: &Arc<Shared>, effects: Vec<Effect>) {
    for effect in effects {
        let shared = shared.clone();
        match effect {
            Effect::Send(msg) => tokio::spawn(send(shared, msg)),
            Effect::Fetch { manifest, sources } => tokio::spawn(fetch(shared, manifest, sources)),
            Effect::DiscardPartial { digest } => tokio::spawn(async move {
                if let Err(e) = shared.store.discard_partial(&digest).await {
                    tracing::error!(%digest, error = %e, "cannot remove partial download");
                }
            }),
            Effect::Delete { digest } => tokio::spawn(async move {
                if let Err(e) = shared.store.delete(&digest).await {
                    tracing::error!(%digest, error = %e, "cannot delete blob");
                }
            }),
        };
    }
}

fn log_event(event: &Event) {
    match event {
        Event::Enrolled { relay, directory } => tracing::info!(%relay, %directory, "enrolled with the directory"),
        Event::Refused { reason } => tracing::warn!(%reason, "the directory refused a request"),
        Event::Ready { digest } => tracing::info!(%digest, "verified and ready"),
        Event::FetchFailed { digest, reason } => tracing::warn!(%digest, %reason, "download failed; will retry"),
        Event::NoRoom { digest, size } => tracing::warn!(%digest, size, "assigned blob does not fit the disk budget"),
        Event::Evicted { digest } => tracing::info!(%digest, "evicted to make room"),
        Event::StandingChanged { standing } => {
            use odi_core::message::RelayStatus;
            // A step on the way in (enrolled, probation) is news; a failure is the operator's to fix.
            let trouble = matches!(standing.status, RelayStatus::Suspended | RelayStatus::Quarantined | RelayStatus::Unhealthy)
                || standing.reason.as_deref().is_some_and(|r| r.contains("failed"));
            match (&standing.reason, trouble) {
                (None, _) => tracing::info!(status = %standing.status, "the directory sees this relay as {}", standing.status),
                (Some(reason), false) => tracing::info!(status = %standing.status, %reason, "the directory sees this relay as {}: {reason}", standing.status),
                (Some(reason), true) => tracing::warn!(status = %standing.status, %reason, "the directory sends this relay no clients: {reason}"),
            }
        }
        Event::Corrupt { digest } => {
            tracing::error!(%digest, "stored copy failed its check (bit rot or tampering); dropped it, told the directory, fetching it again")
        }
    }
}

async fn send(shared: Arc<Shared>, msg: Message) {
    let endpoint = match &msg {
        Message::Enroll(_) => "enroll",
        _ => "heartbeat",
    };
    let url = format!("{}/odi/v1/{endpoint}", shared.directory);
    let outcome = async {
        let body = serde_json::to_vec(&msg).map_err(|e| NetError::Protocol(e.to_string()))?;
        let resp = shared.client.signed(&shared.key, Method::POST, &url, body, REQUEST_TIMEOUT).await?;
        let status = resp.status();
        let bytes = client::read_body(resp.into_body(), client::MAX_JSON_BODY).await?;
        serde_json::from_slice::<Message>(&bytes)
            .map_err(|_| NetError::Status { status, reason: String::from_utf8_lossy(&bytes).trim().chars().take(300).collect() })
    };
    match outcome.await {
        Ok(reply) => step(&shared, |m, now| m.handle_message(reply, now)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot reach the directory; retrying");
            step(&shared, |m, now| m.handle_send_failed(now));
        }
    }
}

/// Downloads one blob into the store: from the directory and from peer relays at once, every
/// chunk verified, resumable across crashes, published only after a whole-file check.
async fn fetch(shared: Arc<Shared>, manifest: ChunkManifest, peers: Vec<RelayUrl>) {
    let digest = manifest.digest();
    let hex = digest.to_hex();
    let mut sources = vec![Source { url: format!("{}/odi/v1/blobs/sha256/{hex}", shared.directory), signed: true }];
    sources.extend(peers.iter().map(|p| Source { url: format!("{p}/blobs/sha256/{hex}"), signed: false }));
    let outcome = async {
        let (partial, have) = shared.store.open_partial(manifest.clone()).await?;
        let result = shared.downloader.download(&manifest, &sources, partial, have, &|_| {}).await;
        let report = match &result {
            Ok((_, report)) | Err((_, report)) => report,
        };
        crate::transfer::report_rejected(&shared.client, &shared.directory, digest, report).await;
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

/// The stored copy of `digest` failed a read-side check: drop it, tell the directory, fetch it
/// again (all the machine's doing).
fn found_corrupt(shared: &Arc<Shared>, digest: Digest) {
    step(shared, |m, now| m.handle_corrupt(digest, now));
}

/// Re-reads every held blob from disk at `scrub_rate`, checking each block against its sums,
/// so rot in a blob nobody asks for is found within (bytes held / rate) and dropped the same
/// way as rot found while serving. Its own rate, not the serving limiter: it never takes
/// bandwidth from clients, and reads are what it spends.
async fn scrub(shared: Arc<Shared>) {
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

/// Long-polls the directory for a new generation, so changes arrive as pushes, not on the
/// next heartbeat.
async fn watch_directory(shared: Arc<Shared>) {
    #[derive(Deserialize)]
    struct Generation {
        generation: u64,
    }
    loop {
        let (enrolled, after) = {
            let m = shared.lock();
            (m.is_enrolled(), m.generation())
        };
        if !enrolled {
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        }
        let url = format!("{}/odi/v1/watch?after={after}", shared.directory);
        let outcome = async {
            let resp = shared.client.signed(&shared.key, Method::GET, &url, Vec::new(), WATCH_TIMEOUT).await?;
            client::read_json::<Generation>(resp).await
        };
        match outcome.await {
            Ok(g) if g.generation != after => step(&shared, |m, now| m.handle_notify(g.generation, now)),
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method();
    if method != Method::GET && method != Method::HEAD {
        let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed; use GET, HEAD");
        resp.headers_mut().insert(http::header::ALLOW, http::HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    let path = req.uri().path();
    if path == "/healthz" {
        // 200 whenever the process serves (the directory's self-test reads `id`); `status` and
        // `reason` are how the directory last said it sees this relay, so an operator learns
        // here why it gets no clients.
        let (enrolled, synced, standing) = {
            let m = shared.lock();
            (m.is_enrolled(), m.is_synced(), m.standing().cloned())
        };
        let (status, reason) = match (&standing, enrolled) {
            (Some(s), _) => (s.status.as_str(), s.reason.clone()),
            (None, false) => ("enrolling", Some("not enrolled with the directory yet".to_owned())),
            (None, true) => ("enrolled", Some("waiting for the directory's first answer".to_owned())),
        };
        return json(
            StatusCode::OK,
            &serde_json::json!({ "status": status, "reason": reason, "role": "relay", "id": shared.id, "enrolled": enrolled, "synced": synced }),
        );
    }
    // One lock: started? which digest? count it as served (value, load, no eviction).
    enum Want<'a> {
        Name(&'a str, ArtifactPath),
        Blob(Digest),
    }
    let want = if let Some(rest) = path.strip_prefix("/r/") {
        let Some((catalog, raw_path)) = split_catalog_path(rest) else {
            return error(StatusCode::BAD_REQUEST, "expected /r/{catalog}/{path}");
        };
        if CatalogName::check(catalog).is_err() {
            return error(StatusCode::BAD_REQUEST, "malformed catalog name");
        }
        match ArtifactPath::from_url(raw_path) {
            Ok(p) => Want::Name(catalog, p),
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad artifact path: {e}")),
        }
    } else if let Some(hex) = path.strip_prefix("/blobs/sha256/") {
        match Digest::from_hex(hex) {
            Ok(d) => Want::Blob(d),
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        }
    } else {
        return error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}"));
    };
    let (digest, caching) = {
        let mut m = shared.lock();
        if !m.has_assignment() {
            // Until the directory has answered once, a blob on disk may have been expunged while
            // this relay was away: serve nothing before hearing from it.
            return error(StatusCode::NOT_FOUND, "relay is starting; ask the directory");
        }
        let digest = match &want {
            Want::Name(catalog, path) => m.lookup(catalog, path),
            Want::Blob(d) => Some(*d).filter(|d| m.has_bytes(d)),
        };
        let Some(digest) = digest else {
            let named = match &want {
                Want::Name(catalog, path) => m.name_of(catalog, path),
                Want::Blob(d) => Some(*d),
            };
            if named.is_some_and(|d| m.was_dropped(&d)) {
                // Dropped as corrupt a moment ago; the directory is being told. A 404 would be
                // saved as the file by a client that does not check the status (`curl -L`):
                // send it back to the directory, which sends it to a good copy.
                return back_to_directory(&shared.directory, path);
            }
            return error(StatusCode::NOT_FOUND, "not held by this relay; ask the directory");
        };
        m.serving_started(digest);
        // A name in a mutable catalog may be rebound: caches must revalidate it.
        let mutable = matches!(&want, Want::Name(catalog, _) if m.is_mutable(catalog));
        (digest, Caching::of_name(mutable))
    };
    // The blob counts as being served (load, and safe from eviction) until its body is done.
    let guard = ServingGuard { shared: shared.clone(), digest };
    let blob = BlobRequest {
        method,
        headers: req.headers(),
        digest: &digest,
        digests: &shared.digests,
        media_type: "application/octet-stream",
        limiter: shared.limiter.as_ref(),
    };
    let mut resp = serve_local(&shared.store, &blob).await;
    if let Some(CorruptBlob(digest)) = resp.extensions().get::<CorruptBlob>().copied() {
        found_corrupt(&shared, digest);
        return back_to_directory(&shared.directory, path);
    }
    caching.apply(&mut resp);
    let on_error = shared.clone();
    resp.map(|body| {
        body.map_frame(move |frame| {
            let _ = &guard;
            frame
        })
        .map_err(move |e| {
            // The body stops here: hyper cuts the connection, the client sees a failed transfer.
            if let Some(digest) = corrupt_blob(&e) {
                found_corrupt(&on_error, digest);
            }
            e
        })
        .boxed_unsync()
    })
}

/// A `302` to the same path on the directory (`/r/...` and `/blobs/...` mean the same there).
fn back_to_directory(directory: &str, path: &str) -> Response<Body> {
    let mut resp = Response::new(crate::http::empty());
    *resp.status_mut() = StatusCode::FOUND;
    match http::HeaderValue::from_str(&format!("{directory}{path}")) {
        Ok(location) => {
            resp.headers_mut().insert(http::header::LOCATION, location);
            resp.headers_mut().insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
            resp
        }
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "this relay's copy failed its check; ask the directory"),
    }
}

/// Ends a response's `serving_started` when the response body is dropped.
struct ServingGuard {
    shared: Arc<Shared>,
    digest: Digest,
}

impl Drop for ServingGuard {
    fn drop(&mut self) {
        self.shared.lock().serving_ended(self.digest);
    }
}
