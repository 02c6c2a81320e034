//! The relay driver: runs `odi_core::relay::Relay`, syncs its assignments from the directories
//! it is enrolled with (one or several, each on its own; one store and disk budget for all)
//! (every chunk verified before a blob becomes visible), and serves what it holds.
//!
//! This file opens the relay and holds what the others share; `serving.rs` answers clients
//! (`GET|HEAD /r/{catalog}/{path}`, `GET|HEAD /blobs/sha256/{hex}`: 404 at once when not held, so
//! clients fall back fast; `GET /healthz` names the relay, for the self-test); `syncing.rs`
//! talks to the directory, downloads the assignment and scrubs the store.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use odi_core::message::{Capacity, NodeId, RelayUrl};
use odi_core::path::CatalogName;
use odi_core::relay::{Effect, Event, Relay, RelayConfig, Upstream, UpstreamConfig};
use odi_core::storage::BlobStore;
use odi_core::transfer::TransferConfig;
use odi_core::{Digest, time::Instant};
use odi_storage::LocalStore;

use crate::client::HttpClient;
use crate::driver::{self, Core, Driver};
use crate::http::{DIGEST_HEADERS_KEPT, DigestHeaders};
use crate::limit::RateLimiter;
use crate::lock::DataDirLock;
use crate::transfer::{Downloader, Redirects};
use crate::{Clock, Listener, NetError};

mod serving;
mod syncing;
mod trust;

/// The scrub's default read rate: 8 MiB/s re-reads 100 GiB in under four hours, a small share
/// of any disk, and never the serving limiter's.
pub const DEFAULT_SCRUB_RATE: u64 = 8 << 20;

#[derive(Clone, Debug)]
pub struct RelayOptions {
    pub data_dir: PathBuf,
    /// Base URLs of the directories to enroll with, e.g. `http://127.0.0.1:7700`; at least one.
    pub directories: Vec<String>,
    /// The URL clients reach this relay at; the directory self-tests it before trusting it.
    pub public_url: String,
    pub disk_budget: u64,
    /// Bytes per second; 0 is unlimited.
    pub bandwidth: u64,
    pub catalogs: Vec<String>,
    /// Hold only artifacts carrying one of these tags; empty: any.
    pub tags: Vec<String>,
    /// The enrollment token, used with every directory; or one per directory, in the order of
    /// `directories`, separated by commas or white space.
    pub enroll_token: String,
    pub max_fetches: usize,
    /// Bytes per second the background scrub re-reads held blobs at, checking every block
    /// against its sums; 0 turns the scrub off (reads are still checked while served).
    pub scrub_rate: u64,
    /// The directories' keys to pin (`--directory-key`), in the order of `directories`; empty:
    /// each is pinned on first use. A key given replaces one pinned before.
    pub directory_keys: Vec<String>,
    /// Trees on this machine that already hold a catalog's artifacts under their paths, e.g.
    /// the mirror this relay runs beside (`--local-tree`): an assigned artifact found there
    /// with the right bytes is linked into the store (copied across filesystems) instead of
    /// downloaded. Empty: everything is downloaded.
    pub local_trees: Vec<LocalTree>,
}

/// A catalog's artifacts already on disk, at `dir/{artifact path}` (`--local-tree CATALOG=DIR`).
///
/// The relay reads a file there only for an artifact a directory assigned it under that name,
/// and keeps it only if every chunk matches the catalog's hashes (see
/// `odi_storage::LocalStore::adopt`); a file that differs is left alone and the artifact is
/// downloaded. The tree stays the mirror's: the relay never writes or deletes in it.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct LocalTree {
    /// The catalog whose paths the tree mirrors.
    pub catalog: String,
    /// The tree's root: the artifact `pool/a.deb` of the catalog is looked for at `dir/pool/a.deb`.
    pub dir: PathBuf,
}

impl std::str::FromStr for LocalTree {
    type Err = String;

    /// Parses `CATALOG=DIR`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('=') {
            Some((catalog, dir)) if !catalog.is_empty() && !dir.is_empty() => Ok(Self { catalog: catalog.to_owned(), dir: PathBuf::from(dir) }),
            _ => Err(format!("`{s}` is not CATALOG=DIR, e.g. debian=/srv/mirror/debian")),
        }
    }
}

pub struct RelayServer {
    /// Held until `run` returns or the server is dropped: one daemon per data directory.
    _data_lock: DataDirLock,
    shared: Arc<Shared>,
    /// `--metrics-listen`: where `/metrics` is served instead of the public port.
    metrics_listener: Option<Listener>,
}

/// What serving and syncing share; the machine is in `core` (see `crate::driver`).
struct Shared {
    core: Core<Relay>,
    store: Arc<LocalStore>,
    key: SigningKey,
    id: NodeId,
    /// The directories' base URLs, indexed by `odi_core::relay::Upstream`.
    directories: Vec<String>,
    client: HttpClient,
    /// The `--bandwidth` limit, shared by serving and syncing.
    limiter: Option<Arc<RateLimiter>>,
    downloader: Downloader,
    digests: DigestHeaders,
    scrub_rate: u64,
    /// Where the pinned keys and applied heads are kept (`trust.json`).
    trust_file: trust::TrustFile,
    /// `/metrics`: request counters and latency, counters fed by `on_event` (see `crate::metrics`).
    metrics: Arc<crate::metrics::RelayMetrics>,
    /// `RelayOptions::local_trees`, checked.
    local_trees: Vec<(CatalogName, PathBuf)>,
    /// The names in `local_trees`' catalogs by digest, as of a `Relay::names_version`: rebuilt
    /// once per assignment, so finding a blob's names costs no scan of them all.
    local_names: std::sync::Mutex<LocalNames>,
}

/// See `Shared::local_names`.
#[derive(Default)]
struct LocalNames {
    version: Option<u64>,
    by_digest: std::collections::HashMap<Digest, Vec<(CatalogName, odi_core::path::ArtifactPath)>>,
}

/// Opens the relay in `options.data_dir` and serves on `listener` until `shutdown`.
pub async fn run(listener: impl Into<Listener>, options: RelayOptions, shutdown: impl Future<Output = ()>) -> Result<(), NetError> {
    RelayServer::open(options).await?.run(listener, shutdown).await
}

impl RelayServer {
    /// Opens the relay in `options.data_dir`, its blobs in the store at `{data_dir}/blobs`.
    pub async fn open(options: RelayOptions) -> Result<Self, NetError> {
        Self::open_with(options, None).await
    }

    /// Opens the relay in `options.data_dir` (its key, lock and pinned directory keys) over a
    /// store the caller opened, e.g. on the disk an embedding mirror daemon keeps its cache on,
    /// with its own memory for small blobs. The store must be this relay's alone while it runs.
    pub async fn with_store(options: RelayOptions, store: LocalStore) -> Result<Self, NetError> {
        Self::open_with(options, Some(store)).await
    }

    async fn open_with(options: RelayOptions, store: Option<LocalStore>) -> Result<Self, NetError> {
        let (data_lock, dir, key) = driver::open_data_dir(&options.data_dir)?;
        let public_url = RelayUrl::new(&options.public_url).map_err(|e| NetError::Config(e.to_string()))?;
        let mut directories: Vec<String> = Vec::new();
        for url in &options.directories {
            let directory = url.trim_end_matches('/').to_owned();
            if !(directory.starts_with("http://") || directory.starts_with("https://")) {
                return Err(NetError::Config(format!("directory URL `{directory}` must start with http:// or https://")));
            }
            if directories.contains(&directory) {
                return Err(NetError::Config(format!("--directory {directory} is given twice")));
            }
            directories.push(directory);
        }
        if directories.is_empty() {
            return Err(NetError::Config("no directory to enroll with: give --directory URL".into()));
        }
        let catalogs =
            options.catalogs.iter().map(|c| CatalogName::new(c).map_err(|e| NetError::Config(format!("--catalog {c}: {e}")))).collect::<Result<Vec<_>, _>>()?;
        let tokens: Vec<&str> = options.enroll_token.split(|c: char| c == ',' || c.is_whitespace()).filter(|t| !t.is_empty()).collect();
        let tokens: Vec<String> = match tokens.len() {
            0 => return Err(NetError::Config("no enrollment token: set ODI_ENROLL_TOKEN to the directory's enroll token".into())),
            1 => vec![tokens[0].to_owned(); directories.len()],
            n if n == directories.len() => tokens.iter().map(|t| (*t).to_owned()).collect(),
            n => {
                return Err(NetError::Config(format!(
                    "ODI_ENROLL_TOKEN holds {n} tokens for {} directories: give one token for all, or one per --directory in the same order, separated by commas",
                    directories.len()
                )));
            }
        };
        let keys = match options.directory_keys.len() {
            0 => vec![None; directories.len()],
            n if n == directories.len() => options
                .directory_keys
                .iter()
                .map(|k| crate::keys::parse_directory_key(k).map(Some).map_err(|e| NetError::Config(format!("--directory-key: {e}"))))
                .collect::<Result<Vec<_>, _>>()?,
            n => {
                return Err(NetError::Config(format!(
                    "{n} --directory-key for {} --directory: give one key per directory, in the same order",
                    directories.len()
                )));
            }
        };
        let trust_file = trust::TrustFile::new(dir.join(trust::TRUST_FILE));
        let mut trusted = trust_file.load()?;
        let mut local_trees = Vec::new();
        for tree in &options.local_trees {
            let catalog = CatalogName::new(&tree.catalog).map_err(|e| NetError::Config(format!("--local-tree {}: {e}", tree.catalog)))?;
            if !tree.dir.is_dir() {
                return Err(NetError::Config(format!("--local-tree {}={}: not a directory", tree.catalog, tree.dir.display())));
            }
            tracing::info!(catalog = %catalog, tree = %tree.dir.display(), "artifacts of {catalog} found under {} are taken from there, checked, instead of downloaded", tree.dir.display());
            local_trees.push((catalog, tree.dir.clone()));
        }
        let store = Arc::new(match store {
            Some(store) => store,
            None => LocalStore::open(dir.join("blobs"))?,
        });
        let held = store.list().await?;
        let partials = store.partials().await?;
        let budget = options.disk_budget;
        let on_disk: u64 = held.iter().map(|(_, s)| s).sum();
        tracing::info!(blobs = held.len(), bytes = on_disk, budget, "relay store opened");
        let mut config = RelayConfig::new(public_url, Capacity { disk_budget: budget, bandwidth: options.bandwidth }, String::new());
        config.directories = Vec::new();
        for ((url, enroll_token), given) in directories.iter().zip(tokens).zip(keys) {
            let mut trust = trusted.remove(url).unwrap_or_default();
            match (given, trust.key) {
                (Some(key), Some(pinned)) if key != pinned => {
                    tracing::warn!(directory = %url, %key, previous = %pinned, "--directory-key replaces the key pinned before for {url}");
                    trust.key = Some(key);
                }
                (Some(key), _) => trust.key = Some(key),
                (None, Some(pinned)) => tracing::info!(directory = %url, key = %pinned, "the directory at {url} is pinned to key {pinned}"),
                (None, None) => tracing::info!(directory = %url, "no key pinned for {url}: the key of its first answer will be (or give --directory-key)"),
            }
            config.directories.push(UpstreamConfig { name: url.clone(), enroll_token, trust });
        }
        config.catalogs = catalogs;
        config.tags = options.tags.clone();
        config.max_fetches = options.max_fetches.max(1);
        config.request_timeout = syncing::REQUEST_TIMEOUT + Duration::from_secs(5);
        config.retry_backoff = Duration::from_secs(1);
        let clock = Clock::start();
        for (upstream, url) in directories.iter().enumerate() {
            let share = config.share(upstream);
            tracing::info!(directory = %url, disk_budget = share.disk_budget, bandwidth = share.bandwidth, "enrolling with {url}, offering it its share of the budget");
        }
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
            directories,
            client,
            limiter,
            downloader,
            digests: DigestHeaders::new(DIGEST_HEADERS_KEPT),
            scrub_rate: options.scrub_rate,
            trust_file,
            metrics: Arc::default(),
            local_trees,
            local_names: Default::default(),
        };
        Ok(Self { _data_lock: data_lock, shared: Arc::new(shared), metrics_listener: None })
    }

    pub fn id(&self) -> NodeId {
        self.shared.id
    }

    /// Serves `GET /metrics` on `listener` (`--metrics-listen`) beside the public port, which
    /// stops answering `/metrics`; it ends with the relay's `run`.
    pub fn with_metrics_listener(mut self, listener: impl Into<Listener>) -> Self {
        self.shared.metrics.exposure.set_separate();
        self.metrics_listener = Some(listener.into());
        self
    }

    pub async fn run(self, listener: impl Into<Listener>, shutdown: impl Future<Output = ()>) -> Result<(), NetError> {
        let listener = listener.into();
        let shared = self.shared;
        let watchers: Vec<_> = (0..shared.directories.len()).map(|upstream| tokio::spawn(syncing::watch_directory(shared.clone(), upstream))).collect();
        let scrubber = tokio::spawn(syncing::scrub(shared.clone()));
        // The relay acts at once (it enrolls), not at its first deadline.
        step(&shared, |m, now| m.handle_timeout(now));
        let metrics = self.metrics_listener.map(|l| {
            let shared = shared.clone();
            crate::metrics::serve_own(l, move || serving::metrics_response(&shared))
        });
        let result = driver::run(shared, listener, serving::handle, shutdown).await;
        watchers.iter().for_each(|w| w.abort());
        scrubber.abort();
        if let Some(m) = metrics {
            m.stop().await;
        }
        result
    }
}

impl Driver for Shared {
    type Machine = Relay;

    fn core(&self) -> &Core<Relay> {
        &self.core
    }

    fn on_event(&self, event: Event) {
        log_event(self, &event);
        let c = &self.metrics.counters;
        let counter = match &event {
            Event::Ready { .. } => &c.blobs_ready,
            Event::FetchFailed { .. } => &c.fetches_failed,
            Event::Evicted { .. } => &c.evictions,
            Event::Corrupt { .. } => &c.corrupt,
            Event::NoRoom { .. } => &c.no_room,
            Event::Refused { .. } => &c.refusals,
            Event::Distrusted { .. } => &c.distrusted,
            Event::Frozen { .. } => &c.frozen,
            Event::Enrolled { .. } | Event::StandingChanged { .. } | Event::Pinned { .. } | Event::Trusted { .. } => return,
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Starts each effect as a task: nothing here waits on one.
    fn execute(self: &Arc<Self>, effects: Vec<Effect>) -> impl Future<Output = ()> + Send {
        start(self, effects);
        std::future::ready(())
    }
}

/// Every input to the relay's machine: runs `f` (drained as `crate::driver` says) and starts
/// the effects it asked for. Nothing waits on them, so it may be called where nothing can
/// wait, such as a response body's error path.
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
            Effect::Send { upstream, msg } => tokio::spawn(syncing::send(shared, upstream, msg)),
            Effect::Fetch { upstream, manifest, sources } => tokio::spawn(syncing::fetch(shared, upstream, manifest, sources)),
            Effect::DiscardPartial { digest } => tokio::spawn(async move {
                if let Err(e) = shared.store.discard_partial(&digest).await {
                    tracing::error!(%digest, error = %e, "cannot remove partial download");
                }
            }),
            Effect::SaveTrust { .. } => tokio::spawn(async move {
                let snapshot = || {
                    let m = shared.lock();
                    (0..shared.directories.len()).filter_map(|u| m.trust(u).map(|t| (shared.url(u).to_owned(), t))).collect()
                };
                if let Err(e) = shared.trust_file.save(snapshot).await {
                    tracing::error!(error = %e, "cannot save the pinned directory keys and heads");
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

impl Shared {
    /// Directory `upstream`'s base URL.
    fn url(&self, upstream: Upstream) -> &str {
        self.directories.get(upstream).map_or("", String::as_str)
    }

    /// The names `digest` has in catalogs with a local tree, from the latest assignments.
    fn local_names(&self, digest: &Digest) -> Vec<(CatalogName, odi_core::path::ArtifactPath)> {
        let m = self.read();
        let mut index = self.local_names.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if index.version != Some(m.names_version()) {
            index.by_digest.clear();
            for (catalog, path, d) in m.names() {
                if self.local_trees.iter().any(|(c, _)| c == catalog) {
                    index.by_digest.entry(*d).or_default().push((catalog.clone(), path.clone()));
                }
            }
            index.version = Some(m.names_version());
        }
        index.by_digest.get(digest).cloned().unwrap_or_default()
    }
}

fn log_event(shared: &Shared, event: &Event) {
    match event {
        Event::Enrolled { upstream, relay, directory } => {
            let url = shared.url(*upstream);
            tracing::info!(%relay, %directory, url, "enrolled with the directory at {url}")
        }
        Event::Refused { upstream, reason } => tracing::warn!(%reason, url = shared.url(*upstream), "the directory refused a request"),
        Event::Ready { digest } => tracing::info!(%digest, "verified and ready"),
        Event::FetchFailed { digest, reason } => tracing::warn!(%digest, %reason, "download failed; will retry"),
        Event::NoRoom { digest, size } => tracing::warn!(%digest, size, "assigned blob does not fit the disk budget"),
        Event::Evicted { digest } => tracing::info!(%digest, "evicted to make room"),
        Event::StandingChanged { upstream, standing } => {
            use odi_core::message::RelayStatus;
            let url = shared.url(*upstream);
            // A step on the way in (enrolled, probation) is news; a failure is the operator's to fix.
            let trouble = matches!(standing.status, RelayStatus::Suspended | RelayStatus::Quarantined | RelayStatus::Unhealthy)
                || standing.reason.as_deref().is_some_and(|r| r.contains("failed"));
            match (&standing.reason, trouble) {
                (None, _) => tracing::info!(status = %standing.status, url, "the directory at {url} sees this relay as {}", standing.status),
                (Some(reason), false) => {
                    tracing::info!(status = %standing.status, %reason, url, "the directory at {url} sees this relay as {}: {reason}", standing.status)
                }
                (Some(reason), true) => tracing::warn!(status = %standing.status, %reason, url, "the directory at {url} sends this relay no clients: {reason}"),
            }
        }
        Event::Pinned { upstream, key } => {
            let url = shared.url(*upstream);
            tracing::info!(%key, url, "pinned the key of the directory at {url}: {key} (trust on first use)")
        }
        Event::Distrusted { upstream, reason } => {
            let url = shared.url(*upstream);
            tracing::error!(%reason, url, "refusing the answers of the directory at {url}, and applying nothing from them: {reason}; serving only what was verified before")
        }
        Event::Trusted { upstream } => {
            let url = shared.url(*upstream);
            tracing::info!(url, "the answers of the directory at {url} verify again")
        }
        Event::Frozen { upstream, catalog, seq } => {
            let url = shared.url(*upstream);
            tracing::error!(%catalog, seq, url, "catalog {catalog} is frozen: its signed head (sequence {seq}) from {url} expired without renewal; not serving it until the directory renews it")
        }
        Event::Corrupt { digest } => {
            tracing::error!(%digest, "stored copy failed its check (bit rot or tampering); dropped it, told the directory, fetching it again")
        }
    }
}

/// The stored copy of `digest` failed a read-side check: drop it, tell the directory, fetch it
/// again (all the machine's doing).
fn found_corrupt(shared: &Arc<Shared>, digest: Digest) {
    step(shared, |m, now| m.handle_corrupt(digest, now));
}
