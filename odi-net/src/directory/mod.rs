//! The directory driver: runs `odi_core::directory::Directory` behind an HTTP server.
//!
//! One file per audience (see ARCHITECTURE.md for the full API); this one opens the directory,
//! holds the state they share and routes each request:
//! - `clients.rs`: `GET|HEAD /r/{catalog}/{path}`, `GET|HEAD /blobs/sha256/{hex}`,
//!   `GET /metalink/...`, `POST /report`; `GET /healthz` and `GET /catalogs` (the catalog names,
//!   public: what a meta-directory probes) are answered here
//! - `admin.rs` (`Authorization: Bearer`): `/api/v1/catalogs`, `/api/v1/catalogs/{name}`,
//!   `PUT|DELETE /api/v1/catalogs/{name}/artifacts/{path}`, `DELETE /api/v1/blobs/sha256/{hex}`,
//!   `/api/v1/relays`, `/api/v1/tokens`, `/api/v1/stats`; `/api/v1/webhooks` goes to `webhooks.rs`
//! - `openapi.rs`: `GET /api/v1/openapi.json` (no token), the admin API's OpenAPI document,
//!   `odi-net/openapi.json`, and the tests that hold it to the router
//! - `audit.rs`: `GET /api/v1/audit`, and the entry every admin change leaves; `ldap.rs`: named
//!   admins (`Authorization: Basic`, the dashboard's user login) checked against LDAP
//! - `events.rs`: the live event stream; `webhooks.rs`: webhooks and their delivery queue
//! - `node.rs` (signed by relays): `POST /odi/v1/enroll`, `POST /odi/v1/heartbeat`,
//!   `GET /odi/v1/watch`, `GET /odi/v1/blobs/sha256/{hex}`
//! - `peers.rs` (signed by linked directories): `POST /peer/v1/link`, `POST /peer/v1/notify`,
//!   `GET /peer/v1/changes`, `GET /peer/v1/holders`, `GET|HEAD /peer/v1/blobs/sha256/{hex}`,
//!   and the client side of each (handshake, notify, pull, blob fetch)
//! - `effects.rs`: no route; carries out the machine's effects and logs its events
//! - `oci.rs`: the OCI distribution API at `/v2/` (pull anonymous, push with the admin token)
//! - `origins.rs`: origin catalogs (`--origin`): the schedule, `POST /api/v1/catalogs/{name}/sync`,
//!   on-demand fetches of unknown paths

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use odi_core::auth::ReplayGuard;
use odi_core::directory::{Directory, DirectoryConfig, LookupError};
use odi_core::federation::FederationConfig;
use odi_core::message::{AddressClass, AddressPolicy, NodeId, RelayUrl, classify_ip};
use odi_core::rng::Seed;
use odi_core::storage::Record;
use odi_core::storage::{BlobStore, MetaStore, TokenRole};
use odi_core::time::UnixTime;
use odi_storage::{LocalStore, SqliteMeta};
use tokio::sync::watch;

use crate::client::{AddressGuard, HttpClient};
use crate::driver::{self, Core, Driver as _};
use crate::guard::{FailureLimiter, LogLimiter};
use crate::http::{Body, DIGEST_HEADERS_KEPT, DigestHeaders, error, json};
use crate::lock::DataDirLock;
use crate::metrics::{DirectoryMetrics, DirectorySnapshot, directory_route};
use crate::{Clock, Listener, NetError, keys, unix_now};

pub use ldap::LdapOptions;

mod admin;
mod audit;
mod clients;
mod effects;
mod events;
mod feed;
mod ldap;
mod node;
mod oci;
mod openapi;
mod origins;
mod peers;
mod ui;
mod upstream;
mod webhooks;

/// A node request's or a report's whole body must arrive within this.
const BODY_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct DirectoryOptions {
    pub data_dir: PathBuf,
    /// The URL clients and relays reach this directory at (for messages and metalinks).
    pub public_url: Option<String>,
    pub heartbeat_interval: Duration,
    pub lease: Duration,
    /// How often each relay's public URL is checked (a failed check stops redirects at once).
    pub probe_interval: Duration,
    /// How often each relay gets a content audit (one random whole chunk, hash-checked).
    pub audit_interval: Duration,
    /// How long a new or readmitted relay serves only verifying clients (`Duration::ZERO`: off).
    pub probation: Duration,
    /// The admin token; `None` reads or creates `{data_dir}/admin.token`.
    pub admin_token: Option<String>,
    /// The enrollment token; `None` reads or creates `{data_dir}/enroll.token`.
    pub enroll_token: Option<String>,
    /// The link token other directories' admins present to link with this one; `None` reads or
    /// creates `{data_dir}/link.token`.
    pub link_token: Option<String>,
    /// The metadata store; `None` opens `{data_dir}/directory.sqlite3`.
    pub meta: Option<Arc<dyn MetaStore>>,
    /// The blob store; `None` opens `{data_dir}/blobs`.
    pub blobs: Option<Arc<dyn BlobStore>>,
    /// Accept loopback and private relay URLs whatever class the directory's own URL is in.
    pub allow_private_relays: bool,
    /// Let origin catalogs reach loopback and private addresses (tests, `odi dev`).
    pub allow_private_origins: bool,
    /// How long a signed catalog head holds on a relay without renewal (`--head-ttl`).
    pub head_ttl: Duration,
    /// Webhook retries and attempt timeout (defaults 1 s doubling to 1 h, give up after 24 h,
    /// 10 s per attempt); webhooks reach private addresses only with `allow_private_origins`.
    pub webhook_retry: odi_core::webhook::RetryPolicy,
    /// Named admins checked against LDAP (`--ldap-url`); `None`: the admin token only.
    pub ldap: Option<LdapOptions>,
}

impl DirectoryOptions {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            public_url: None,
            heartbeat_interval: Duration::from_secs(5),
            lease: Duration::from_secs(15),
            probe_interval: Duration::from_secs(10),
            audit_interval: Duration::from_secs(30),
            probation: odi_core::directory::DEFAULT_PROBATION,
            admin_token: None,
            enroll_token: None,
            link_token: None,
            meta: None,
            blobs: None,
            allow_private_relays: false,
            allow_private_origins: false,
            head_ttl: odi_core::directory::DEFAULT_HEAD_TTL,
            webhook_retry: odi_core::webhook::RetryPolicy::default(),
            ldap: None,
        }
    }
}

/// An opened directory: state restored, keys and tokens in place, not yet listening.
pub struct DirectoryServer {
    /// Held until `run` returns or the server is dropped: one daemon per data directory.
    _data_lock: DataDirLock,
    shared: Arc<Shared>,
    /// Where the admin token was written, when it came from a file.
    pub admin_token_path: Option<PathBuf>,
    pub enroll_token_path: Option<PathBuf>,
    pub link_token_path: Option<PathBuf>,
    /// `--metrics-listen`: where `/metrics` is served instead of the public port.
    metrics_listener: Option<Listener>,
    /// Stored records that did not apply when opened, tried again once federation started.
    skipped: Vec<Record>,
}

/// What every route and effect shares; the machine is in `core` (see `crate::driver`).
struct Shared {
    core: Core<Directory>,
    store: Arc<dyn BlobStore>,
    meta: Arc<dyn MetaStore>,
    /// Serializes plan → persist → apply, so admin changes are applied in log order; it holds
    /// the position in the metadata store's change feed (see `feed`), taken through
    /// `Shared::write_lock`, which first applies what other processes committed.
    writer: tokio::sync::Mutex<odi_core::storage::Cursor>,
    generation: watch::Sender<u64>,
    /// Nonces seen, per signing node.
    replay: Mutex<HashMap<NodeId, ReplayGuard>>,
    /// Signatures made before this instant are refused: their nonces may predate the guards.
    started: UnixTime,
    refusal_log: LogLimiter,
    enroll_failures: FailureLimiter,
    /// Connects to relays only where the relay address policy allows.
    client: HttpClient,
    relay_addresses: AddressGuard,
    allow_private_relays: bool,
    admin_failures: FailureLimiter,
    /// The base URL for links this directory hands out: `--public-url`, or else the address it
    /// listens on (set when it starts to listen). Never the request's `Host`, which any client
    /// chooses, in answers that caches keep.
    public_url: std::sync::OnceLock<String>,
    /// Bytes sent to relays syncing through the node API (what relays did not get from peers).
    node_blob_bytes: std::sync::atomic::AtomicU64,
    digests: DigestHeaders,
    allow_private_origins: bool,
    /// One origin sync at a time (scheduled, `catalog sync`, or on demand).
    origin_sync: tokio::sync::Mutex<()>,
    /// Scratch space for files on their way from an origin.
    origin_work: PathBuf,
    link_failures: FailureLimiter,
    /// Nonces seen, per linked directory (apart from relays', so neither can crowd the other).
    peer_replay: Mutex<HashMap<NodeId, ReplayGuard>>,
    /// This directory's key: its id, and what it signs peer requests and entries with.
    key: ed25519_dalek::SigningKey,
    data_dir: PathBuf,
    /// Blob bytes served to linked directories, and fetched for linked entries (verified).
    peer_blob_bytes_sent: std::sync::atomic::AtomicU64,
    peer_blob_bytes_received: std::sync::atomic::AtomicU64,
    /// OCI blob uploads in progress (`/v2/`), in `{data_dir}/oci-uploads`.
    oci_uploads: Arc<oci::Uploads>,
    /// Short-lived `/v2/` push tokens issued by `GET /v2/token`.
    oci_tokens: odi_core::oci::token::RegistryTokens,
    /// `/metrics`: request counters and latency, counters fed by `on_event` (see `crate::metrics`).
    metrics: Arc<DirectoryMetrics>,
    /// The live event stream (see `events`): machine events and admin changes.
    events: events::EventBus,
    /// Logged-in dashboard sessions (`/ui/`).
    ui_sessions: ui::Sessions,
    /// Webhooks and their durable delivery queue (`{data_dir}/webhooks.sqlite3`).
    webhooks: webhooks::Webhooks,
    /// Who changed what (`{data_dir}/audit.sqlite3`).
    audit: audit::AuditLog,
    /// Named admins, when `--ldap-url` is given.
    ldap: Option<ldap::Ldap>,
}

impl Shared {
    /// Publishes `what` on the event stream and queues it for the webhooks that take its kind
    /// (durably, before this returns).
    fn announce(&self, what: events::What) {
        let notice = self.events.publish(what);
        self.webhooks.enqueue(&notice);
    }
}

/// Opens the directory in `options.data_dir` and serves on `listener` until `shutdown`.
pub async fn run(listener: impl Into<Listener>, options: DirectoryOptions, shutdown: impl Future<Output = ()>) -> Result<(), NetError> {
    DirectoryServer::open(options).await?.run(listener, shutdown).await
}

impl DirectoryServer {
    /// Opens the directory with the blob and metadata stores an embedder chose (any
    /// [`BlobStore`] and [`MetaStore`]), instead of the local ones in `options.data_dir`, which
    /// still holds the directory's key, tokens and scratch space.
    pub async fn with_stores(mut options: DirectoryOptions, blobs: Arc<dyn BlobStore>, meta: Arc<dyn MetaStore>) -> Result<Self, NetError> {
        options.blobs = Some(blobs);
        options.meta = Some(meta);
        Self::open(options).await
    }

    pub async fn open(options: DirectoryOptions) -> Result<Self, NetError> {
        let (data_lock, dir, key) = driver::open_data_dir(&options.data_dir)?;
        let store: Arc<dyn BlobStore> = match &options.blobs {
            Some(blobs) => blobs.clone(),
            None => Arc::new(LocalStore::open(dir.join("blobs"))?),
        };
        let meta: Arc<dyn MetaStore> = match &options.meta {
            Some(meta) => meta.clone(),
            None => Arc::new(SqliteMeta::open(dir.join("directory.sqlite3"))?),
        };
        let mut config = DirectoryConfig::new(NodeId(key.verifying_key().to_bytes()));
        config.token_key = keys::load_or_create_token_key(&dir)?;
        let oci_tokens = odi_core::oci::token::RegistryTokens::new(&config.token_key);
        // Without a public URL the class comes from the listening address, in `run`.
        if let Some(url) = &options.public_url {
            config.relay_addresses = AddressPolicy::for_directory(own_address_class(url).await?, options.allow_private_relays);
        }
        config.heartbeat_interval = options.heartbeat_interval;
        config.lease = options.lease;
        config.self_test_retry = options.heartbeat_interval;
        config.probe_interval = options.probe_interval;
        config.audit_interval = options.audit_interval;
        config.probation = options.probation;
        config.share_heartbeats = meta.is_shared();
        let clock = Clock::start();
        let mut machine = Directory::new(config, Seed(u64::from_le_bytes(keys::random_bytes::<8>()))).with_heads(key.clone(), options.head_ttl);
        // Each process would number its own federation feed: on a store several processes
        // share, the directory has no links (`odi link add` says so).
        if !meta.is_shared() {
            machine = machine.with_federation(key.clone(), FederationConfig::default());
        }
        let public_key = NodeId(key.verifying_key().to_bytes());
        let (records, cursor) = meta.load_at().await?;
        // A log entry of a catalog that came from a linked directory does not apply yet: that
        // catalog is made by the federation records, replayed at `federation_start` (in `run`).
        let skipped: Vec<Record> = records.into_iter().filter(|r| !machine.apply(r, clock.now())).collect();
        while machine.poll_event().is_some() {}
        let mut token_paths = [None, None, None];
        let tokens = [
            (TokenRole::Admin, &options.admin_token, "admin.token"),
            (TokenRole::Enroll, &options.enroll_token, "enroll.token"),
            (TokenRole::Link, &options.link_token, "link.token"),
        ];
        for (i, (role, given, file)) in tokens.into_iter().enumerate() {
            let token = match given {
                Some(t) if !t.trim().is_empty() => {
                    let env = match role {
                        TokenRole::Admin => "ODI_ADMIN_TOKEN",
                        TokenRole::Enroll => "ODI_ENROLL_TOKEN",
                        TokenRole::Link => "ODI_LINK_TOKEN",
                    };
                    keys::check_token_strength(t.trim()).map_err(|why| NetError::Config(format!("{env} {why}")))?;
                    t.trim().to_owned()
                }
                _ => {
                    let path = dir.join(file);
                    let t = keys::load_or_create_secret(&path, keys::new_token)?;
                    keys::check_token_strength(&t).map_err(|why| NetError::Config(format!("the token in {} {why}", path.display())))?;
                    token_paths[i] = Some(path);
                    t
                }
            };
            if let Some(record) = machine.plan_token(role, &token) {
                meta.apply(std::slice::from_ref(&record)).await?;
                machine.apply(&record, clock.now());
            }
        }
        let webhooks = webhooks::Webhooks::open(&dir.join("webhooks.sqlite3"), options.allow_private_origins, options.webhook_retry)?;
        let audit = audit::AuditLog::open(&dir.join("audit.sqlite3"))?;
        if let Some(l) = &options.ldap {
            l.check().map_err(NetError::Config)?;
        }
        let relay_addresses = AddressGuard::new(machine.config().relay_addresses);
        let generation = watch::Sender::new(machine.generation());
        let shared = Arc::new(Shared {
            core: Core::new(machine, clock),
            store,
            meta,
            writer: tokio::sync::Mutex::new(cursor),
            generation,
            replay: Mutex::new(HashMap::new()),
            started: unix_now(),
            refusal_log: LogLimiter::new(10, Duration::from_secs(10)),
            enroll_failures: FailureLimiter::new(node::ENROLL_FAILURES_PER_MINUTE, Duration::from_secs(60)),
            client: HttpClient::guarded(relay_addresses.clone()),
            relay_addresses,
            allow_private_relays: options.allow_private_relays,
            admin_failures: FailureLimiter::new(admin::ADMIN_FAILURES, admin::ADMIN_FAILURE_WINDOW),
            public_url: options.public_url.as_ref().map(|u| u.trim_end_matches('/').to_owned()).map(std::sync::OnceLock::from).unwrap_or_default(),
            node_blob_bytes: std::sync::atomic::AtomicU64::new(0),
            digests: DigestHeaders::new(DIGEST_HEADERS_KEPT),
            allow_private_origins: options.allow_private_origins,
            origin_sync: tokio::sync::Mutex::new(()),
            origin_work: dir.join("origin-tmp"),
            link_failures: FailureLimiter::new(peers::LINK_FAILURES_PER_MINUTE, Duration::from_secs(60)),
            peer_replay: Mutex::new(HashMap::new()),
            key,
            data_dir: dir.clone(),
            peer_blob_bytes_sent: std::sync::atomic::AtomicU64::new(0),
            peer_blob_bytes_received: std::sync::atomic::AtomicU64::new(0),
            oci_uploads: Arc::new(oci::Uploads::new(dir.join("oci-uploads"))),
            oci_tokens,
            metrics: Arc::new(DirectoryMetrics::default()),
            events: events::EventBus::new(),
            ui_sessions: ui::Sessions::default(),
            webhooks,
            audit,
            ldap: options.ldap.clone().map(ldap::Ldap::new),
        });
        let [admin_token_path, enroll_token_path, link_token_path] = token_paths;
        // The key relays pin (`odi relay --directory-key`): printed and kept where an operator
        // can copy it from, once the tokens are settled (a weak token stops the start with one
        // line and nothing else).
        keys::write_public(&dir.join(keys::DIRECTORY_KEY_FILE), &public_key.to_hex())?;
        tracing::info!(key = %public_key, file = %dir.join(keys::DIRECTORY_KEY_FILE).display(), "directory key {public_key} (relays pin it; give it to them with --directory-key)");
        Ok(Self { _data_lock: data_lock, shared, admin_token_path, enroll_token_path, link_token_path, metrics_listener: None, skipped })
    }

    pub fn id(&self) -> NodeId {
        self.shared.lock().id()
    }

    /// Serves `GET /metrics` on `listener` (`--metrics-listen`), with no token, beside the
    /// public port, which stops answering `/metrics`; it ends with the directory's `run`.
    pub fn with_metrics_listener(mut self, listener: impl Into<Listener>) -> Self {
        self.shared.metrics.exposure.set_separate();
        self.metrics_listener = Some(listener.into());
        self
    }

    pub async fn run(self, listener: impl Into<Listener>, shutdown: impl Future<Output = ()>) -> Result<(), NetError> {
        let listener = listener.into();
        let shared = self.shared;
        if shared.public_url.get().is_none() {
            let addr = listener.local_addr().map_err(|e| NetError::io("cannot read the listening address", e))?;
            if addr.ip().is_unspecified() {
                return Err(NetError::Config(format!("--public-url is required when listening on {addr}: links and metalinks name the directory by it")));
            }
            let _ = shared.public_url.set(format!("{}://{addr}", listener.scheme()));
            let policy = AddressPolicy::for_directory(classify_ip(addr.ip()), shared.allow_private_relays);
            shared.relay_addresses.set(policy);
            shared.lock().set_relay_addresses(policy);
        }
        // Catch up with every linked directory, and tell each of them our head.
        let skipped = self.skipped;
        let (left, effects) = shared.with_machine(|d, now| {
            d.federation_start(now);
            skipped.iter().filter(|r| !d.restore_log_position(r)).count()
        });
        if left > 0 {
            tracing::warn!(skipped = left, "some stored records did not apply");
        }
        effects::execute(&shared, effects).await;
        let feed = tokio::spawn(feed::feed_loop(shared.clone()));
        let origins = tokio::spawn(origins::origin_loop(shared.clone()));
        let deliveries = tokio::spawn(webhooks::delivery_loop(shared.clone()));
        let sweeps = tokio::spawn(oci::sweep_loop(shared.clone()));
        let metrics = self.metrics_listener.map(|l| {
            let shared = shared.clone();
            crate::metrics::serve_own(l, move || metrics_response(&shared))
        });
        let result = driver::run(shared, listener, handle, shutdown).await;
        feed.abort();
        origins.abort();
        deliveries.abort();
        let _ = feed.await;
        let _ = origins.await;
        let _ = deliveries.await;
        sweeps.abort();
        let _ = sweeps.await;
        if let Some(m) = metrics {
            m.stop().await;
        }
        result
    }
}

/// The class of the directory's own public URL; a name counts as private only when every
/// address it resolves to now is private (or loopback), as on an on-premise network.
async fn own_address_class(url: &str) -> Result<AddressClass, NetError> {
    let url = RelayUrl::new(url).map_err(|e| NetError::Config(format!("--public-url `{}` {}", e.url, e.why)))?;
    let class = url.address_class();
    if class != AddressClass::Name {
        return Ok(class);
    }
    let odi_core::message::Host::Name(host) = url.host() else { return Ok(class) };
    // Unresolvable now: the strict rule, until the operator says otherwise.
    let Ok(Ok(addrs)) = tokio::time::timeout(effects::SELF_TEST_TIMEOUT, tokio::net::lookup_host((host, 80))).await else { return Ok(AddressClass::Public) };
    let classes: Vec<AddressClass> = addrs.map(|a| classify_ip(a.ip())).collect();
    Ok(if classes.is_empty() || classes.iter().any(|c| !matches!(c, AddressClass::Loopback | AddressClass::Private)) {
        AddressClass::Public
    } else if classes.iter().all(|c| *c == AddressClass::Loopback) {
        AddressClass::Loopback
    } else {
        AddressClass::Private
    })
}

/// Answers `req` and counts it, by route and status, with the time to its response head.
async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let started = std::time::Instant::now();
    let path = req.uri().path();
    let route = if path.starts_with("/r/") || path.starts_with("/blobs/sha256/") {
        directory_route::REDIRECT
    } else if path.starts_with("/metalink/") {
        directory_route::METALINK
    } else if path.starts_with("/api/v1/") {
        directory_route::ADMIN
    } else if path.starts_with("/odi/v1/") {
        directory_route::NODE
    } else if path.starts_with(peers::PREFIX) {
        directory_route::PEER
    } else if path == "/report" {
        directory_route::REPORT
    } else {
        directory_route::OTHER
    };
    let metrics = shared.metrics.clone();
    let resp = route_request(shared, req).await;
    metrics.http.observe(route, resp.status(), started.elapsed());
    resp
}

/// After admin changes are durable and applied: counts publishes and expunges for `/metrics`.
fn committed(shared: &Shared, records: &[Record]) {
    use odi_core::catalog::LogOp;
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    let c = &shared.metrics.counters;
    let mut expunged_digest = false;
    for record in records {
        let Record::Log { entry, .. } = record else { continue };
        match &entry.op {
            LogOp::Put(_) => {
                c.publishes.fetch_add(1, relaxed);
            }
            LogOp::ExpungePath { .. } | LogOp::Expunge { .. } => {
                c.expunges.fetch_add(1, relaxed);
            }
            // One expunge by digest writes one entry per catalog: counted once.
            LogOp::ExpungeDigest { .. } if !expunged_digest => {
                expunged_digest = true;
                c.expunges.fetch_add(1, relaxed);
            }
            LogOp::ExpungeDigest { .. } | LogOp::Tag { .. } => {}
        }
    }
}

/// The scrape: gauges read in one lock, then encoded with none held.
fn metrics_response(shared: &Shared) -> Response<Body> {
    let now = shared.now();
    let mut snap = DirectorySnapshot::of(&shared.lock(), now);
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    snap.node_blob_bytes = shared.node_blob_bytes.load(relaxed);
    snap.peer_blob_bytes_sent = shared.peer_blob_bytes_sent.load(relaxed);
    snap.peer_blob_bytes_received = shared.peer_blob_bytes_received.load(relaxed);
    crate::metrics::response(shared.metrics.encode(snap))
}

async fn route_request(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    if let Some(rest) = path.strip_prefix("/r/") {
        return if read { clients::client_artifact(&shared, &req, rest).await } else { not_allowed("GET, HEAD") };
    }
    if let Some(hex) = path.strip_prefix("/blobs/sha256/") {
        return if read { clients::client_blob(&shared, &req, hex).await } else { not_allowed("GET, HEAD") };
    }
    if let Some(rest) = path.strip_prefix("/metalink/") {
        return if read { clients::metalink(&shared, &req, rest) } else { not_allowed("GET, HEAD") };
    }
    if let Some(rest) = path.strip_prefix("/api/v1/") {
        let rest = rest.to_owned();
        // The API's own description needs no token: what it names is public in the source.
        if rest == "openapi.json" {
            return if read { openapi::document() } else { not_allowed("GET, HEAD") };
        }
        let who = match admin::authorize(&shared, &req, &rest).await {
            Ok(who) => who,
            Err(resp) => return resp,
        };
        if rest == "audit" {
            return if read { audit::list(&shared, &req) } else { not_allowed("GET, HEAD") };
        }
        let client = req.extensions().get::<crate::guard::ClientAddr>().map(|c| c.0);
        let method = req.method().clone();
        let resp = admin::admin(&shared, req, &rest).await;
        return audit::after_call(&shared, &who, &method, &rest, client, resp).await;
    }
    if let Some(rest) = path.strip_prefix("/odi/v1/") {
        let rest = rest.to_owned();
        return node::node(&shared, req, &rest).await;
    }
    if let Some(rest) = path.strip_prefix(peers::PREFIX) {
        let rest = rest.to_owned();
        return peers::peer(&shared, req, &rest).await;
    }
    if let Some(rest) = path.strip_prefix("/v2/").or_else(|| (path == "/v2").then_some("")) {
        let rest = rest.to_owned();
        return oci::v2(&shared, req, &rest).await;
    }
    if let Some(rest) = path.strip_prefix("/ui/").or_else(|| (path == "/ui").then_some("")) {
        let rest = rest.to_owned();
        return ui::ui(&shared, req, &rest).await;
    }
    if path == "/report" {
        return if *req.method() == Method::POST { clients::report(&shared, req).await } else { not_allowed("POST") };
    }
    match (path, read) {
        ("/healthz", true) => {
            let id = shared.lock().id();
            json(StatusCode::OK, &serde_json::json!({ "status": "ok", "role": "directory", "id": id }))
        }
        ("/healthz", false) => not_allowed("GET, HEAD"),
        ("/catalogs", true) => json(StatusCode::OK, &serde_json::json!({ "catalogs": shared.lock().catalog_names() })),
        ("/catalogs", false) => not_allowed("GET, HEAD"),
        // On the public port the metrics are an admin's view (they name linked directories
        // and relay counts): the admin token, unless `--metrics-listen` moved them off it.
        ("/metrics", true) if shared.metrics.exposure.on_public_port() => match admin::authorize(&shared, &req, "metrics").await {
            Ok(_) => metrics_response(&shared),
            Err(resp) => resp,
        },
        ("/metrics", false) if shared.metrics.exposure.on_public_port() => not_allowed("GET, HEAD"),
        ("/metrics", _) => error(StatusCode::NOT_FOUND, "no such endpoint: /metrics; this directory serves it on its --metrics-listen address"),
        _ => error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
    }
}

fn not_allowed(allow: &'static str) -> Response<Body> {
    let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, format!("method not allowed; use {allow}"));
    resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

fn lookup_error(e: &LookupError) -> Response<Body> {
    match e {
        LookupError::Expunged(_) => error(StatusCode::GONE, e),
        _ => error(StatusCode::NOT_FOUND, e),
    }
}
