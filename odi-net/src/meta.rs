//! The meta-directory driver (`odi directory --meta`): runs `odi_core::meta::MetaDirectory`
//! behind an HTTP server.
//!
//! Routes:
//! - `GET|HEAD /r/{catalog}/{path}` → `302 Location: {directory}/r/{catalog}/{path}`
//!   (`Cache-Control: no-store`: the choice depends on the client and on health), `404` when no
//!   reference serves the catalog, `503` when every one that does is down, `400` for a
//!   malformed path;
//! - `GET /healthz` → `200` with each reference's health and catalogs.
//!
//! Each reference is probed with `GET {url}/catalogs` every `probe_interval`; the client's
//! country and continent come from a MaxMind database (`--geoip`), looked up for the
//! connection's address, or for `X-Forwarded-For` when the connection is from a
//! `--trust-forwarded-for` range.
//!
//! The request path takes no lock and writes nothing shared: each worker thread keeps the
//! [`Routes`] snapshot it last saw and replaces it only when the prober published a new
//! version (one atomic load per request), and keeps the locations of the addresses it saw
//! last ([`GEO_CACHED`], the database never changes while the server runs).

use std::borrow::Cow;
use std::cell::RefCell;
use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use odi_core::message::RelayUrl;
use odi_core::meta::{ChooseError, Cidr, Effect, Event, Location, MetaConfig, MetaDirectory, RefId, Reference, Routes, client_address};
use odi_core::path::{ArtifactPath, CatalogName};
use serde::Deserialize;
use tokio::sync::{Notify, watch};

use crate::client::{self, HttpClient};
use crate::guard::ClientAddr;
use crate::http::{Body, Values, error, json};
use crate::lock::DataDirLock;
use crate::{Clock, NetError};

/// Longest `/catalogs` answer read from a directory.
const CATALOGS_BODY_LIMIT: usize = 1 << 20;
/// Name of the header a trusted proxy puts the client's address in.
const FORWARDED_FOR: &str = "x-forwarded-for";

#[derive(Clone, Debug)]
pub struct MetaOptions {
    /// Holds the lock that keeps a second daemon out (the meta-directory keeps no other state).
    pub data_dir: PathBuf,
    pub references: Vec<Reference>,
    /// A MaxMind database (GeoLite2-Country, GeoIP2-City, or one with the same fields); without
    /// one every client counts as from nowhere and goes to references with no region.
    pub geoip: Option<PathBuf>,
    /// Connections from these ranges may name the client in `X-Forwarded-For`.
    pub trust_forwarded_for: Vec<Cidr>,
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
}

impl MetaOptions {
    pub fn new(data_dir: impl Into<PathBuf>, references: Vec<Reference>) -> Self {
        let defaults = MetaConfig::default();
        Self {
            data_dir: data_dir.into(),
            references,
            geoip: None,
            trust_forwarded_for: Vec::new(),
            probe_interval: defaults.probe_interval,
            probe_timeout: defaults.probe_timeout,
        }
    }
}

/// An opened meta-directory, not yet listening.
pub struct MetaServer {
    _data_lock: DataDirLock,
    shared: Arc<Shared>,
}

struct Shared {
    machine: RwLock<MetaDirectory>,
    /// Tells this server's entries in the worker threads' caches from another's.
    id: u64,
    /// The machine's routes as of `routes_version`; replaced (never changed) by the prober.
    routes: RwLock<Arc<Routes>>,
    routes_version: AtomicU64,
    clock: Clock,
    geoip: Option<maxminddb::Reader<Vec<u8>>>,
    trusted: Vec<Cidr>,
    client: HttpClient,
    /// Wakes the timer when a probe's answer moves the next deadline.
    timer: Notify,
}

/// The fields read from a GeoIP record (those of GeoLite2-Country and GeoIP2-City).
#[derive(Deserialize)]
struct GeoRecord<'a> {
    #[serde(borrow, default)]
    country: Option<IsoCode<'a>>,
    #[serde(borrow, default)]
    continent: Option<ContinentCode<'a>>,
}

#[derive(Deserialize)]
struct IsoCode<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct ContinentCode<'a> {
    #[serde(borrow, default)]
    code: Option<&'a str>,
}

/// Opens a MaxMind database, checking that it can be read.
pub fn open_geoip(path: &Path) -> Result<maxminddb::Reader<Vec<u8>>, NetError> {
    let reader = maxminddb::Reader::open_readfile(path).map_err(|e| NetError::Config(format!("cannot read the GeoIP database {}: {e}", path.display())))?;
    Ok(reader)
}

/// Where `geoip` puts `ip`; unknown parts (or no database) are `None`.
pub fn locate(geoip: Option<&maxminddb::Reader<Vec<u8>>>, ip: IpAddr) -> Location {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let Some(reader) = geoip else { return Location::default() };
    let Ok(found) = reader.lookup(ip) else { return Location::default() };
    match found.decode::<GeoRecord<'_>>() {
        Ok(Some(r)) => Location::from_codes(r.country.and_then(|c| c.iso_code), r.continent.and_then(|c| c.code)),
        _ => Location::default(),
    }
}

impl MetaServer {
    pub fn open(options: MetaOptions) -> Result<Self, NetError> {
        if options.references.is_empty() {
            return Err(NetError::Config("a meta-directory needs at least one --reference [REGION=]URL".into()));
        }
        std::fs::create_dir_all(&options.data_dir).map_err(|e| NetError::io(format!("cannot create {}", options.data_dir.display()), e))?;
        let lock = DataDirLock::acquire(&options.data_dir)?;
        let geoip = options.geoip.as_deref().map(open_geoip).transpose()?;
        let clock = Clock::start();
        let config = MetaConfig { probe_interval: options.probe_interval, probe_timeout: options.probe_timeout };
        let machine = MetaDirectory::new(config, options.references, clock.now());
        static SERVERS: AtomicU64 = AtomicU64::new(1);
        let shared = Shared {
            routes: RwLock::new(Arc::new(machine.routes())),
            routes_version: AtomicU64::new(machine.version()),
            machine: RwLock::new(machine),
            id: SERVERS.fetch_add(1, Ordering::Relaxed),
            clock,
            geoip,
            trusted: options.trust_forwarded_for,
            client: HttpClient::new(),
            timer: Notify::new(),
        };
        Ok(Self { _data_lock: lock, shared: Arc::new(shared) })
    }

    /// Serves until `shutdown` completes.
    pub async fn run(self, listener: impl Into<crate::Listener>, shutdown: impl Future<Output = ()>) -> Result<(), NetError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let timer = tokio::spawn(timer_loop(self.shared.clone(), stop_rx));
        let shared = self.shared.clone();
        let handler = Arc::new(move |req: Request<Incoming>| {
            let resp = handle(&shared, &req);
            std::future::ready(resp)
        });
        let served = crate::serve(listener.into(), handler, shutdown).await;
        let _ = stop_tx.send(true);
        let _ = timer.await;
        served
    }
}

async fn timer_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        let next = shared.machine.read().unwrap_or_else(PoisonError::into_inner).poll_timeout();
        let sleep = shared.clock.sleep_until(next);
        tokio::select! {
            () = sleep => {}
            () = shared.timer.notified() => {}
            _ = stop.changed() => return,
        }
        let now = shared.clock.now();
        let effects = shared.machine.write().unwrap_or_else(PoisonError::into_inner).handle_timeout(now);
        log_events(&shared);
        for effect in effects {
            let Effect::Probe { reference, url, attempt, timeout } = effect;
            tokio::spawn(probe(shared.clone(), reference, url, attempt, timeout));
        }
    }
}

/// Logs what changed and, if the routes did, publishes the new snapshot.
fn log_events(shared: &Shared) {
    let mut m = shared.machine.write().unwrap_or_else(PoisonError::into_inner);
    let version = m.version();
    if version != shared.routes_version.load(Ordering::Acquire) {
        *shared.routes.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(m.routes());
        // After the snapshot: a thread that sees the new number finds the new routes (or newer).
        shared.routes_version.store(version, Ordering::Release);
    }
    while let Some(event) = m.poll_event() {
        match event {
            Event::Up { url, catalogs } => tracing::info!(directory = %url.as_str(), catalogs, "referenced directory is up"),
            Event::Down { url, reason } => tracing::warn!(directory = %url.as_str(), %reason, "referenced directory is down; sending its clients elsewhere"),
        }
    }
}

/// `GET {url}/catalogs`: the directory's public list of catalog names.
async fn probe(shared: Arc<Shared>, reference: RefId, url: RelayUrl, attempt: u64, timeout: Duration) {
    #[derive(Deserialize)]
    struct Catalogs {
        catalogs: Vec<String>,
    }
    let ask = async {
        let req = Request::get(format!("{}/catalogs", url.as_str())).body(crate::http::empty()).map_err(|e| e.to_string())?;
        let resp = shared.client.send(req, timeout).await.map_err(|e| e.to_string())?;
        if resp.status() != StatusCode::OK {
            return Err(format!("/catalogs answered {}", resp.status()));
        }
        let body = client::read_body(resp.into_body(), CATALOGS_BODY_LIMIT).await.map_err(|e| format!("/catalogs: {e}"))?;
        let list: Catalogs = serde_json::from_slice(&body).map_err(|_| "/catalogs did not answer with a directory's catalog list".to_owned())?;
        Ok(list.catalogs)
    };
    let outcome = match tokio::time::timeout(timeout, ask).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    };
    shared.machine.write().unwrap_or_else(PoisonError::into_inner).handle_probe(reference, attempt, outcome);
    log_events(&shared);
    shared.timer.notify_one();
}

fn handle(shared: &Shared, req: &Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    if let Some(rest) = path.strip_prefix("/r/") {
        return if read { redirect(shared, req, rest) } else { not_allowed() };
    }
    match (path, read) {
        ("/healthz", true) => {
            let references = shared.machine.read().unwrap_or_else(PoisonError::into_inner).references();
            json(StatusCode::OK, &serde_json::json!({ "status": "ok", "role": "meta-directory", "references": references }))
        }
        ("/healthz", false) => not_allowed(),
        _ => error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}; a meta-directory answers /r/{{catalog}}/{{path}}")),
    }
}

fn not_allowed() -> Response<Body> {
    let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed; use GET, HEAD");
    resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    resp
}

/// The address to locate: the connection's, or the forwarded one from a trusted proxy.
fn client_ip(shared: &Shared, req: &Request<Incoming>) -> Option<IpAddr> {
    let peer = req.extensions().get::<ClientAddr>()?.0;
    if shared.trusted.is_empty() {
        return Some(peer);
    }
    // Several header lines are one list, in order (RFC 9110 §5.3).
    let lines: Vec<&str> = req.headers().get_all(FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()).collect();
    let joined = lines.join(",");
    Some(client_address(peer, (!lines.is_empty()).then_some(joined.as_str()), &shared.trusted))
}

/// Addresses whose location each worker thread keeps (direct-mapped by a hash of the address).
pub const GEO_CACHED: usize = 1024;

/// What one worker thread keeps between requests, for one server at a time.
struct Local {
    server: u64,
    version: u64,
    routes: Option<Arc<Routes>>,
    /// Varies per request, to spread clients over equally good directories.
    spread: u64,
    geo: Vec<Option<(IpAddr, Location)>>,
}

impl Local {
    /// Starts over when the thread last served another server (tests run several).
    fn serve(&mut self, shared: &Shared) {
        if self.server != shared.id {
            *self = Self { server: shared.id, version: 0, routes: None, spread: self.spread, geo: vec![None; GEO_CACHED] };
        }
    }

    /// The snapshot to answer from, fetched again only when the prober published another.
    fn routes(&mut self, shared: &Shared) -> &Routes {
        self.serve(shared);
        let version = shared.routes_version.load(Ordering::Acquire);
        if self.routes.is_none() || self.version != version {
            self.routes = Some(shared.routes.read().unwrap_or_else(PoisonError::into_inner).clone());
            self.version = version;
        }
        self.routes.get_or_insert_default()
    }

    fn locate(&mut self, shared: &Shared, ip: IpAddr) -> Location {
        self.serve(shared);
        let bits = match ip {
            IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
            IpAddr::V6(v6) => u128::from(v6),
        };
        let hash = ((bits as u64) ^ ((bits >> 64) as u64)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let slot = (hash >> 54) as usize % GEO_CACHED;
        if let Some(Some((seen, location))) = self.geo.get(slot)
            && *seen == ip
        {
            return *location;
        }
        let location = locate(shared.geoip.as_ref(), ip);
        if let Some(entry) = self.geo.get_mut(slot) {
            *entry = Some((ip, location));
        }
        location
    }
}

thread_local! {
    static LOCAL: RefCell<Local> = const { RefCell::new(Local { server: 0, version: 0, routes: None, spread: 0, geo: Vec::new() }) };
}

fn redirect(shared: &Shared, req: &Request<Incoming>, rest: &str) -> Response<Body> {
    // Most paths are plain (`releases/odi-1.2.tar.gz`) and go into the `Location` as they came;
    // the others are decoded, checked and encoded again, with the directory's `400`s.
    let (catalog, path) = match crate::http::split_catalog_path(rest) {
        Some((catalog, raw)) if CatalogName::check(catalog).is_ok() && ArtifactPath::is_plain_url(raw) => (catalog, Cow::Borrowed(raw)),
        _ => match crate::http::artifact_route(rest) {
            Ok((catalog, path)) => (catalog, Cow::Owned(path.to_url().into_owned())),
            Err(resp) => return resp,
        },
    };
    let ip = client_ip(shared, req);
    let loc = LOCAL.with_borrow_mut(|local| {
        let location = ip.map_or_else(Location::default, |ip| local.locate(shared, ip));
        local.spread = local.spread.wrapping_add(1);
        let spread = local.spread;
        // Borrowed from the thread's own copy: no reference count is touched per request.
        let target = local.routes(shared).choose(catalog, &location, spread)?;
        let mut values = Values::with_capacity(target.location_prefix.len() + path.len());
        Ok::<_, ChooseError>(values.text(&target.location_prefix).text(&path).finish())
    });
    let loc = match loc {
        Ok(Some(loc)) => loc,
        Ok(None) => return error(StatusCode::BAD_REQUEST, "the path cannot be written into a Location header"),
        Err(e @ ChooseError::Unknown(_)) => return error(StatusCode::NOT_FOUND, e),
        Err(e @ ChooseError::AllDown(_)) => {
            let mut resp = error(StatusCode::SERVICE_UNAVAILABLE, e);
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
            return resp;
        }
    };
    let mut resp = Response::new(crate::http::empty());
    *resp.status_mut() = StatusCode::FOUND;
    let h = resp.headers_mut();
    h.insert(header::LOCATION, loc);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // hyper writes `content-length: 0` for an empty body itself, except in answer to HEAD.
    if *req.method() == Method::HEAD {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    }
    resp
}
