//! The directory driver: runs `odi_core::directory::Directory` behind an HTTP server.
//!
//! Routes (see ARCHITECTURE.md for the full API):
//! - clients: `GET|HEAD /r/{catalog}/{path}`, `GET|HEAD /blobs/sha256/{hex}`, `GET /healthz`
//! - admin (`Authorization: Bearer`): `/api/v1/catalogs`, `/api/v1/catalogs/{name}`,
//!   `PUT|DELETE /api/v1/catalogs/{name}/artifacts/{path}`, `DELETE /api/v1/blobs/sha256/{hex}`,
//!   `/api/v1/relays`
//! - nodes (signed): `POST /odi/v1/enroll`, `POST /odi/v1/heartbeat`, `GET /odi/v1/watch`,
//!   `GET /odi/v1/blobs/sha256/{hex}`

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use odi_core::Digest;
use odi_core::auth::{Claim, ReplayGuard, SignedRequest};
use odi_core::directory::{AuditError, AuditRequest, AuditShape, Directory, DirectoryConfig, Effect, Event, LookupError, Outcome, Reply};
use odi_core::message::{AddressClass, AddressPolicy, Message, NodeId, Refusal, RefusalCode, RelayUrl, classify_ip};
use odi_core::rng::Seed;
use odi_core::storage::{BlobStore, MetaStore, TokenRole};
use odi_core::time::{Instant, UnixTime};
use odi_storage::{LocalStore, SqliteMeta};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::client::{self, AddressGuard, HttpClient};
use crate::guard::{ClientAddr, FailureLimiter, LogLimiter};
use crate::http::{BlobRequest, Body, DIGEST_HEADERS_KEPT, DigestHeaders, error, json, serve_blob};
use crate::lock::DataDirLock;
use crate::{Clock, NetError, keys, unix_now};

mod admin;
mod clients;

/// Longest enrollment body: read before the sender is known to hold the token.
const MAX_ENROLL_BODY: usize = 64 << 10;
/// Node endpoints that carry no body still get a little slack.
const MAX_EMPTY_BODY: usize = 1 << 10;
/// A node request's or a report's whole body must arrive within this.
const BODY_DEADLINE: Duration = Duration::from_secs(30);
/// Nonces remembered per node: a relay sends a few requests a second, and a nonce is kept for at
/// most its lifetime plus the clock skew (about six minutes).
const NONCES_PER_NODE: usize = 8192;
/// Past this many per-node guards, the empty ones are dropped.
const REPLAY_SWEEP_AT: usize = 4096;
/// Wrong enrollment tokens accepted from one address per minute.
const ENROLL_FAILURES_PER_MINUTE: u32 = 10;
/// How long a watch request is held before it answers with no news.
const WATCH_HOLD: Duration = Duration::from_secs(25);
const SELF_TEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest `/healthz` answer read from a relay.
const HEALTH_BODY_LIMIT: usize = 4096;

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
    /// The metadata store; `None` opens `{data_dir}/directory.sqlite3`.
    pub meta: Option<Arc<dyn MetaStore>>,
    /// Accept loopback and private relay URLs whatever class the directory's own URL is in.
    pub allow_private_relays: bool,
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
            meta: None,
            allow_private_relays: false,
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
}

struct Shared {
    machine: Mutex<Directory>,
    store: Arc<dyn BlobStore>,
    meta: Arc<dyn MetaStore>,
    /// Serializes plan → persist → apply, so admin changes are applied in log order.
    writer: tokio::sync::Mutex<()>,
    generation: watch::Sender<u64>,
    /// Nonces seen, per signing node.
    replay: Mutex<HashMap<NodeId, ReplayGuard>>,
    /// Signatures made before this instant are refused: their nonces may predate the guards.
    started: UnixTime,
    refusal_log: LogLimiter,
    enroll_failures: FailureLimiter,
    timer: Notify,
    clock: Clock,
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
}

/// Opens the directory in `options.data_dir` and serves on `listener` until `shutdown`.
pub async fn run(listener: TcpListener, options: DirectoryOptions, shutdown: impl Future<Output = ()>) -> Result<(), NetError> {
    DirectoryServer::open(options).await?.run(listener, shutdown).await
}

impl DirectoryServer {
    pub async fn open(options: DirectoryOptions) -> Result<Self, NetError> {
        let data_lock = DataDirLock::acquire(&options.data_dir)?;
        let dir = keys::ensure_dir(&options.data_dir)?;
        let key: SigningKey = keys::load_or_create_key(&dir)?;
        let store: Arc<dyn BlobStore> = Arc::new(LocalStore::open(dir.join("blobs"))?);
        let meta: Arc<dyn MetaStore> = match &options.meta {
            Some(meta) => meta.clone(),
            None => Arc::new(SqliteMeta::open(dir.join("directory.sqlite3"))?),
        };
        let mut config = DirectoryConfig::new(NodeId(key.verifying_key().to_bytes()));
        config.token_key = keys::load_or_create_token_key(&dir)?;
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
        let clock = Clock::start();
        let mut machine = Directory::new(config, Seed(u64::from_le_bytes(keys::random_bytes::<8>())));
        let records = meta.load().await?;
        let restored = records.iter().filter(|r| machine.apply(r, clock.now())).count();
        if restored != records.len() {
            tracing::warn!(skipped = records.len() - restored, "some stored records did not apply");
        }
        while machine.poll_event().is_some() {}
        let mut token_paths = [None, None];
        for (i, (role, given, file)) in
            [(TokenRole::Admin, &options.admin_token, "admin.token"), (TokenRole::Enroll, &options.enroll_token, "enroll.token")].into_iter().enumerate()
        {
            let token = match given {
                Some(t) if !t.trim().is_empty() => {
                    let env = if role == TokenRole::Admin { "ODI_ADMIN_TOKEN" } else { "ODI_ENROLL_TOKEN" };
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
        let relay_addresses = AddressGuard::new(machine.config().relay_addresses);
        let generation = watch::Sender::new(machine.generation());
        let shared = Arc::new(Shared {
            machine: Mutex::new(machine),
            store,
            meta,
            writer: tokio::sync::Mutex::new(()),
            generation,
            replay: Mutex::new(HashMap::new()),
            started: unix_now(),
            refusal_log: LogLimiter::new(10, Duration::from_secs(10)),
            enroll_failures: FailureLimiter::new(ENROLL_FAILURES_PER_MINUTE, Duration::from_secs(60)),
            timer: Notify::new(),
            clock,
            client: HttpClient::guarded(relay_addresses.clone()),
            relay_addresses,
            allow_private_relays: options.allow_private_relays,
            admin_failures: FailureLimiter::new(admin::ADMIN_FAILURES, admin::ADMIN_FAILURE_WINDOW),
            public_url: options.public_url.as_ref().map(|u| u.trim_end_matches('/').to_owned()).map(std::sync::OnceLock::from).unwrap_or_default(),
            node_blob_bytes: std::sync::atomic::AtomicU64::new(0),
            digests: DigestHeaders::new(DIGEST_HEADERS_KEPT),
        });
        let [admin_token_path, enroll_token_path] = token_paths;
        Ok(Self { _data_lock: data_lock, shared, admin_token_path, enroll_token_path })
    }

    pub fn id(&self) -> NodeId {
        self.shared.lock().id()
    }

    pub async fn run(self, listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<(), NetError> {
        let shared = self.shared;
        if shared.public_url.get().is_none() {
            let addr = listener.local_addr().map_err(|e| NetError::io("cannot read the listening address", e))?;
            if addr.ip().is_unspecified() {
                return Err(NetError::Config(format!("--public-url is required when listening on {addr}: links and metalinks name the directory by it")));
            }
            let _ = shared.public_url.set(format!("http://{addr}"));
            let policy = AddressPolicy::for_directory(classify_ip(addr.ip()), shared.allow_private_relays);
            shared.relay_addresses.set(policy);
            shared.lock().set_relay_addresses(policy);
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let timer = tokio::spawn(timer_loop(shared.clone(), stop_rx));
        let handler = {
            let shared = shared.clone();
            Arc::new(move |req: Request<Incoming>| handle(shared.clone(), req))
        };
        let result = crate::serve(listener, handler, shutdown).await;
        let _ = stop_tx.send(true);
        let _ = timer.await;
        result
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Directory> {
        // A panic while holding the lock leaves a machine whose invariants were checked
        // before each mutation; serving on is better than refusing every request.
        self.machine.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the machine, then drains it: events are logged, effects returned to run.
    fn with_machine<R>(&self, f: impl FnOnce(&mut Directory, Instant) -> R) -> (R, Vec<Effect>) {
        let mut m = self.lock();
        let out = f(&mut m, self.clock.now());
        let mut effects = Vec::new();
        while let Some(effect) = m.poll_effect() {
            effects.push(effect);
        }
        while let Some(event) = m.poll_event() {
            log_event(&event);
            if let Event::GenerationChanged { generation } = event {
                self.generation.send_replace(generation);
            }
        }
        drop(m);
        self.timer.notify_one();
        (out, effects)
    }
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
    }
}

/// Runs effects: writes are awaited and their outcome reported to the machine (so a caller that
/// awaits this may then take the outcome of its own write); self-tests and audits run in the
/// background and report back. (Boxed: an outcome yields effects that may start more.)
fn execute(shared: &Arc<Shared>, effects: Vec<Effect>) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
    Box::pin(async move {
        for effect in effects {
            match effect {
                Effect::Persist { id, records } => {
                    let outcome = shared.meta.apply(&records).await.map_err(|e| e.to_string());
                    let (_, more) = shared.with_machine(|d, now| d.handle_storage(id, outcome, now));
                    execute(shared, more).await;
                }
                Effect::SelfTest { relay, url, attempt } => {
                    tokio::spawn(self_test(shared.clone(), relay, url, attempt));
                }
                Effect::Audit { relay, url, digest: _, index: _, range, attempt, ask } => {
                    tokio::spawn(audit(shared.clone(), relay, url, range, attempt, ask));
                }
            }
        }
    })
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
    let Ok(Ok(addrs)) = tokio::time::timeout(SELF_TEST_TIMEOUT, tokio::net::lookup_host((host, 80))).await else { return Ok(AddressClass::Public) };
    let classes: Vec<AddressClass> = addrs.map(|a| classify_ip(a.ip())).collect();
    Ok(if classes.is_empty() || classes.iter().any(|c| !matches!(c, AddressClass::Loopback | AddressClass::Private)) {
        AddressClass::Public
    } else if classes.iter().all(|c| *c == AddressClass::Loopback) {
        AddressClass::Loopback
    } else {
        AddressClass::Private
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

async fn timer_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        let sleep = shared.clock.sleep_until(shared.lock().poll_timeout());
        tokio::select! {
            () = sleep => {}
            () = shared.timer.notified() => continue,
            _ = stop.changed() => return,
        }
        let (_, effects) = shared.with_machine(|d, now| d.handle_timeout(now));
        execute(&shared, effects).await;
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
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
        if let Err(resp) = admin::check_admin(&shared, &req) {
            return resp;
        }
        let rest = rest.to_owned();
        return admin::admin(&shared, req, &rest).await;
    }
    if let Some(rest) = path.strip_prefix("/odi/v1/") {
        let rest = rest.to_owned();
        return node(&shared, req, &rest).await;
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

// ---- node API ----

/// Longest body a node may send to each endpoint: an enrollment is small; a heartbeat lists what
/// the relay holds; the rest carry none.
fn node_body_limit(rest: &str) -> usize {
    match rest {
        "enroll" => MAX_ENROLL_BODY,
        "heartbeat" => admin::MAX_REQUEST_JSON,
        _ => MAX_EMPTY_BODY,
    }
}

/// Authenticates a node request, cheapest check first, so that a stranger costs the directory
/// nothing a relay needs: the signature headers are parsed (and must be fresh, and made after this
/// directory started); a key that is not an enrolled relay is refused right there, unless it
/// enrolls, and then only a correct token (read from a body of at most 64 KiB) earns a signature
/// check. For a known relay the signature over the head is checked *before* its body is read;
/// the body (bounded per endpoint, with a deadline) must then match the signed `Content-Digest`.
/// Nonces are remembered per known key, in a guard of bounded size, so no stranger can fill it.
async fn authenticate_node(shared: &Arc<Shared>, parts: &http::request::Parts, body: Incoming, rest: &str) -> Result<(NodeId, Bytes), Response<Body>> {
    let client = parts.extensions.get::<ClientAddr>().map(|c| c.0);
    let log_refusal = |status: StatusCode, why: &str| {
        if let Some(held_back) = shared.refusal_log.allow() {
            tracing::info!(client = ?client, %status, reason = %why, held_back, "refused a node request");
        }
    };
    let refuse = |status: StatusCode, why: String| {
        log_refusal(status, &why);
        error(status, format!("node request refused: {why}"))
    };
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let head = SignedRequest {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        body: &[],
        content_digest: header("content-digest"),
        signature_input: header("signature-input"),
        signature: header("signature"),
    };
    let now = unix_now();
    let claim = match Claim::parse(&head, now, shared.started) {
        Ok(c) => c,
        Err(e) => return Err(refuse(StatusCode::UNAUTHORIZED, e.to_string())),
    };
    let from = claim.keyid();
    let enrolling = parts.method == Method::POST && rest == "enroll";
    if !enrolling && !shared.lock().knows_relay(&from) {
        log_refusal(StatusCode::NOT_FOUND, "not an enrolled relay");
        // The relay's machine enrolls again on this answer (the directory may have lost it).
        let reply = Message::Refused(Refusal { code: RefusalCode::UnknownRelay, reason: "this directory does not know the relay; enroll again".into() });
        return Err(json(StatusCode::NOT_FOUND, &reply));
    }
    if enrolling
        && let Some(addr) = client
        && let Err(wait) = shared.enroll_failures.check(addr)
    {
        let mut resp = error(StatusCode::TOO_MANY_REQUESTS, "too many wrong enrollment tokens from this address; wait and retry");
        if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return Err(resp);
    }
    if !enrolling && let Err(e) = claim.verify() {
        return Err(refuse(StatusCode::UNAUTHORIZED, e.to_string()));
    }
    let limit = node_body_limit(rest);
    let body = match tokio::time::timeout(BODY_DEADLINE, http_body_util::Limited::new(body, limit).collect()).await {
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(refuse(StatusCode::PAYLOAD_TOO_LARGE, format!("body over {limit} bytes for /odi/v1/{rest}")));
        }
        Ok(Err(e)) => return Err(refuse(StatusCode::BAD_REQUEST, format!("cannot read the body: {e}"))),
        Err(_) => return Err(refuse(StatusCode::REQUEST_TIMEOUT, format!("the body did not arrive within {} s", BODY_DEADLINE.as_secs()))),
    };
    if let Err(e) = claim.check_body(&body) {
        return Err(refuse(StatusCode::UNAUTHORIZED, e.to_string()));
    }
    if enrolling {
        // The token first (one keyed hash), the signature only for a holder of the token.
        let token_ok = match serde_json::from_slice::<Message>(&body) {
            Ok(Message::Enroll(req)) => shared.lock().accepts_enroll_token(&req.token),
            _ => return Err(refuse(StatusCode::BAD_REQUEST, "/odi/v1/enroll takes an enroll message".into())),
        };
        if !token_ok {
            if let Some(addr) = client {
                shared.enroll_failures.failed(addr);
            }
            return Err(refuse(StatusCode::FORBIDDEN, "enrollment token is wrong; set ODI_ENROLL_TOKEN to the directory's enroll token".into()));
        }
        if let Err(e) = claim.verify() {
            return Err(refuse(StatusCode::UNAUTHORIZED, e.to_string()));
        }
    }
    let remembered = {
        let mut guards = shared.replay.lock().unwrap_or_else(PoisonError::into_inner);
        let outcome = guards.entry(from).or_insert_with(|| ReplayGuard::new(NONCES_PER_NODE)).check_and_insert(claim.params(), now);
        if guards.len() > REPLAY_SWEEP_AT {
            guards.retain(|_, g| !g.is_empty());
        }
        outcome
    };
    match remembered {
        Ok(()) => Ok((from, body)),
        Err(e) => Err(refuse(StatusCode::UNAUTHORIZED, e.to_string())),
    }
}

async fn node(shared: &Arc<Shared>, req: Request<Incoming>, rest: &str) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let (from, body) = match authenticate_node(shared, &parts, body, rest).await {
        Ok(ok) => ok,
        Err(refusal) => return refusal,
    };
    let known = shared.lock().knows_relay(&from);
    match (&parts.method, rest) {
        (&Method::POST, "enroll" | "heartbeat") => {
            let msg: Message = match serde_json::from_slice(&body) {
                Ok(m) => m,
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")),
            };
            let expected = matches!((&msg, rest), (Message::Enroll(_), "enroll") | (Message::Heartbeat(_), "heartbeat"));
            if !expected {
                return error(StatusCode::BAD_REQUEST, format!("/odi/v1/{rest} takes a {rest} message"));
            }
            let wall = unix_now();
            let (reply, effects) = shared.with_machine(|d, now| d.handle_message(from, msg, now, wall));
            execute(shared, effects).await;
            let reply = match reply {
                Reply::Now(reply) => reply,
                // The write it waited for was reported by `execute`.
                Reply::AfterStorage(id) => match shared.with_machine(|d, _| d.take_outcome(id)).0 {
                    Some(Outcome::Reply(reply)) => reply,
                    other => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("the request ended unexpectedly: {other:?}")),
                },
            };
            let status = match &reply {
                Message::Refused(r) => match r.code {
                    RefusalCode::BadToken => StatusCode::FORBIDDEN,
                    RefusalCode::UnknownRelay => StatusCode::NOT_FOUND,
                    RefusalCode::BadRequest => StatusCode::BAD_REQUEST,
                    RefusalCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                },
                _ => StatusCode::OK,
            };
            json(status, &reply)
        }
        _ if !known => error(StatusCode::FORBIDDEN, "this node is not an enrolled relay"),
        (&Method::GET, "watch") => {
            let after: Option<u64> = parts.uri.query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("after="))).and_then(|v| v.parse().ok());
            let mut rx = shared.generation.subscribe();
            let current = *rx.borrow_and_update();
            if after == Some(current) {
                let _ = tokio::time::timeout(WATCH_HOLD, rx.changed()).await;
            }
            let generation = *rx.borrow();
            json(StatusCode::OK, &serde_json::json!({ "generation": generation }))
        }
        (&Method::GET | &Method::HEAD, blob) if blob.starts_with("blobs/sha256/") => {
            let hex = &blob["blobs/sha256/".len()..];
            let digest = match Digest::from_hex(hex) {
                Ok(d) => d,
                Err(e) => return error(StatusCode::BAD_REQUEST, e),
            };
            if let Err(e) = shared.lock().manifest(&digest) {
                return lookup_error(&e);
            }
            let blob = BlobRequest {
                method: &parts.method,
                headers: &parts.headers,
                digest: &digest,
                digests: &shared.digests,
                media_type: "application/octet-stream",
                limiter: None,
            };
            let resp = serve_blob(shared.store.as_ref(), &blob).await;
            if parts.method == Method::GET && resp.status().is_success() {
                let len = resp.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                shared.node_blob_bytes.fetch_add(len, std::sync::atomic::Ordering::Relaxed);
            }
            resp
        }
        _ => error(StatusCode::NOT_FOUND, format!("no such node endpoint: {} /odi/v1/{rest}", parts.method)),
    }
}
