//! Prometheus metrics for the directory and the relay: `GET /metrics` in the OpenMetrics text
//! format, encoded with `prometheus-client`.
//!
//! Two kinds of numbers, kept apart:
//! - **Counters** that move on the request path or with the machines' events live in atomics
//!   ([`HttpMetrics`], [`DirectoryCounters`], [`RelayCounters`]): a request adds to them without
//!   taking any lock, and the drivers' `on_event` adds to them while they drain the machine.
//! - **Gauges** (relays by state, sync progress, replication lag, expunges pending) are read from
//!   the machine when a scraper asks, in one short lock, into a snapshot that is then encoded
//!   with no lock held.
//!
//! Every metric name is listed in OPERATING.md ("Metrics").

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use crate::http::{Body, Listener, error, full};

/// What `GET /metrics` answers with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Response statuses counted by their own label; any other is counted as `other`.
const STATUSES: [u16; 20] = [200, 201, 204, 206, 302, 304, 400, 401, 403, 404, 405, 409, 410, 412, 413, 416, 429, 500, 503, 504];

/// Upper bounds (seconds) of the latency histograms' buckets: from a cached redirect (well under
/// a millisecond) to a long poll.
pub const LATENCY_BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A histogram in atomics: one count per bucket (not cumulative), the sum in microseconds.
#[derive(Debug, Default)]
pub struct AtomicHistogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl AtomicHistogram {
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let i = LATENCY_BUCKETS.iter().position(|b| secs <= *b).unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(elapsed.as_micros().min(u128::from(u64::MAX)) as u64, Ordering::Relaxed);
    }

    fn encode(&self, encoder: &mut MetricEncoder<'_>) -> std::fmt::Result {
        // Per-bucket counts: the encoder writes them cumulative.
        let buckets: Vec<(f64, u64)> =
            LATENCY_BUCKETS.iter().copied().chain([f64::INFINITY]).zip(&self.buckets).map(|(bound, n)| (bound, n.load(Ordering::Relaxed))).collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

/// Requests by route and status, and the time to each response's head by route, in atomics.
/// A driver names its routes once; index `i` of [`HttpMetrics::observe`] is `routes[i]`.
#[derive(Debug)]
pub struct HttpMetrics {
    routes: &'static [&'static str],
    /// `routes.len()` rows of `STATUSES.len() + 1` (the last: any other status).
    requests: Vec<AtomicU64>,
    latency: Vec<AtomicHistogram>,
}

impl HttpMetrics {
    pub fn new(routes: &'static [&'static str]) -> Self {
        Self {
            routes,
            requests: (0..routes.len() * (STATUSES.len() + 1)).map(|_| AtomicU64::new(0)).collect(),
            latency: (0..routes.len()).map(|_| AtomicHistogram::default()).collect(),
        }
    }

    /// Counts one answered request. An out-of-range route index is a driver bug; it is dropped.
    pub fn observe(&self, route: usize, status: StatusCode, elapsed: Duration) {
        if route >= self.routes.len() {
            return;
        }
        let s = STATUSES.iter().position(|c| *c == status.as_u16()).unwrap_or(STATUSES.len());
        self.requests[route * (STATUSES.len() + 1) + s].fetch_add(1, Ordering::Relaxed);
        self.latency[route].observe(elapsed);
    }

    fn encode(&self, prefix: &str, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let name = format!("{prefix}_http_requests");
        let mut family = encoder.encode_descriptor(&name, "HTTP requests answered, by route and status", None, MetricType::Counter)?;
        for (r, route) in self.routes.iter().enumerate() {
            for s in 0..=STATUSES.len() {
                let n = self.requests[r * (STATUSES.len() + 1) + s].load(Ordering::Relaxed);
                if n == 0 {
                    continue;
                }
                let status = STATUSES.get(s).map_or_else(|| "other".to_owned(), u16::to_string);
                let labels = [("route", (*route).to_owned()), ("status", status)];
                family.encode_family(&labels)?.encode_counter::<NoLabelSet, _, u64>(&n, None)?;
            }
        }
        let name = format!("{prefix}_http_request_duration_seconds");
        let mut family = encoder.encode_descriptor(&name, "Time from a request's arrival to its response head, by route", None, MetricType::Histogram)?;
        for (r, route) in self.routes.iter().enumerate() {
            let labels = [("route", *route)];
            self.latency[r].encode(&mut family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// Where `/metrics` is served: on the public port (the default), or only on `--metrics-listen`.
#[derive(Debug, Default)]
pub struct Exposure {
    separate: AtomicBool,
}

impl Exposure {
    /// `/metrics` moves to its own listener; the public port answers 404 for it from now on.
    pub fn set_separate(&self) {
        self.separate.store(true, Ordering::Relaxed);
    }

    pub fn on_public_port(&self) -> bool {
        !self.separate.load(Ordering::Relaxed)
    }
}

/// The directory's counters, fed by its driver (events, admin changes, blob bytes).
#[derive(Debug, Default)]
pub struct DirectoryCounters {
    pub relays_enrolled: AtomicU64,
    pub relays_admitted: AtomicU64,
    pub relays_proven: AtomicU64,
    pub relays_lost: AtomicU64,
    pub relays_forgotten: AtomicU64,
    pub self_tests_failed: AtomicU64,
    pub suspensions: AtomicU64,
    pub quarantines: AtomicU64,
    pub audits_passed: AtomicU64,
    pub relay_refusals: AtomicU64,
    pub persist_failures: AtomicU64,
    pub peer_refusals: AtomicU64,
    pub publishes: AtomicU64,
    pub expunges: AtomicU64,
}

/// The directory's gauges, read from its machine in one lock when a scraper asks.
#[derive(Debug, Default)]
pub struct DirectorySnapshot {
    pub generation: u64,
    pub catalogs: usize,
    /// Relays by status name (every status appears, zeros too).
    pub relays_by_status: Vec<(&'static str, u64)>,
    pub relays_proven: u64,
    /// Over the relays known now: audits passed and failed, as the machine counts them.
    pub relay_audits_passed: u64,
    pub relay_audits_failed: u64,
    pub held_bytes: u64,
    pub assigned_bytes: u64,
    pub held_blobs: u64,
    pub assigned_blobs: u64,
    pub expunges_pending: u64,
    pub conflicts: u64,
    /// Per link: peer id, URL, cursor, head, lag.
    pub links: Vec<(String, String, u64, u64, u64)>,
    /// Bytes the directory sent relays syncing from it, and sent to / fetched from peers.
    pub node_blob_bytes: u64,
    pub peer_blob_bytes_sent: u64,
    pub peer_blob_bytes_received: u64,
}

impl DirectorySnapshot {
    /// Reads what the gauges show from the machine (the caller holds its lock only for this).
    pub fn of(dir: &odi_core::directory::Directory, now: odi_core::time::Instant) -> Self {
        use odi_core::message::RelayStatus;
        const ALL: [RelayStatus; 7] = [
            RelayStatus::Enrolled,
            RelayStatus::Syncing,
            RelayStatus::Ready,
            RelayStatus::Draining,
            RelayStatus::Suspended,
            RelayStatus::Unhealthy,
            RelayStatus::Quarantined,
        ];
        let mut snap = Self { generation: dir.generation(), catalogs: dir.catalog_names().len(), ..Self::default() };
        let mut counts = [0u64; ALL.len()];
        for relay in dir.relays(now) {
            if let Some(i) = ALL.iter().position(|s| *s == relay.status) {
                counts[i] += 1;
            }
            snap.relays_proven += u64::from(relay.proven);
            snap.relay_audits_passed += relay.audits_passed;
            snap.relay_audits_failed += relay.audits_failed;
            snap.held_bytes += relay.held_bytes;
            snap.assigned_bytes += relay.assigned_bytes;
            snap.held_blobs += relay.held as u64;
            snap.assigned_blobs += relay.assigned as u64;
        }
        snap.relays_by_status = ALL.iter().zip(counts).map(|(s, n)| (s.as_str(), n)).collect();
        snap.expunges_pending = dir.expunges_pending().len() as u64;
        snap.conflicts = dir.conflicts().len() as u64;
        snap.links = dir.links().into_iter().map(|l| (l.peer.to_string(), l.url, l.cursor, l.head, l.lag)).collect();
        snap
    }
}

/// Everything the directory's `/metrics` shows, encoded at once.
#[derive(Debug)]
pub struct DirectoryMetrics {
    pub http: HttpMetrics,
    pub counters: DirectoryCounters,
    pub exposure: Exposure,
}

/// The directory's routes, as [`HttpMetrics`] labels them.
pub mod directory_route {
    pub const REDIRECT: usize = 0;
    pub const METALINK: usize = 1;
    pub const ADMIN: usize = 2;
    pub const NODE: usize = 3;
    pub const PEER: usize = 4;
    pub const REPORT: usize = 5;
    pub const OTHER: usize = 6;
    pub const NAMES: &[&str] = &["redirect", "metalink", "admin", "node", "peer", "report", "other"];
}

impl Default for DirectoryMetrics {
    fn default() -> Self {
        Self { http: HttpMetrics::new(directory_route::NAMES), counters: DirectoryCounters::default(), exposure: Exposure::default() }
    }
}

impl DirectoryMetrics {
    /// The counters and `snap` in the OpenMetrics text format.
    pub fn encode(self: &Arc<Self>, snap: DirectorySnapshot) -> String {
        encode_text(Scrape(self.clone(), snap))
    }

    fn encode_into(&self, snap: &DirectorySnapshot, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let c = &self.counters;
        self.http.encode("odi_directory", e)?;
        let events: [(&str, &str, &AtomicU64); 14] = [
            ("odi_directory_relays_enrolled", "Relay enrollments accepted", &c.relays_enrolled),
            ("odi_directory_relays_admitted", "Relay self-tests passed (a relay may start serving)", &c.relays_admitted),
            ("odi_directory_relays_proven", "Relays that passed their probation", &c.relays_proven),
            ("odi_directory_relays_lost", "Relays that missed their lease", &c.relays_lost),
            ("odi_directory_relays_forgotten", "Relays forgotten (gone for long, or replaced)", &c.relays_forgotten),
            ("odi_directory_self_tests_failed", "Relay self-tests failed", &c.self_tests_failed),
            ("odi_directory_suspensions", "Relays suspended after a failed health check or audit fetch", &c.suspensions),
            ("odi_directory_quarantines", "Relays quarantined for serving bytes that failed their hash", &c.quarantines),
            ("odi_directory_audits_passed", "Content audits passed", &c.audits_passed),
            ("odi_directory_relay_refusals", "Relay requests the machine refused", &c.relay_refusals),
            ("odi_directory_persist_failures", "Metadata writes that failed", &c.persist_failures),
            ("odi_directory_peer_refusals", "Batches from linked directories refused", &c.peer_refusals),
            ("odi_directory_publishes", "Artifacts published through the admin API", &c.publishes),
            ("odi_directory_expunges", "Expunges accepted through the admin API", &c.expunges),
        ];
        for (name, help, v) in events {
            counter(e, name, help, v.load(Ordering::Relaxed))?;
        }
        counter(e, "odi_directory_node_blob_bytes", "Blob bytes sent to relays syncing from this directory", snap.node_blob_bytes)?;
        counter(e, "odi_directory_peer_blob_bytes_sent", "Blob bytes sent to linked directories", snap.peer_blob_bytes_sent)?;
        counter(e, "odi_directory_peer_blob_bytes_received", "Blob bytes fetched (verified) from linked directories", snap.peer_blob_bytes_received)?;
        gauge(e, "odi_directory_generation", "The assignment generation relays are told", snap.generation)?;
        gauge(e, "odi_directory_catalogs", "Catalogs", snap.catalogs as u64)?;
        {
            let mut family = e.encode_descriptor("odi_directory_relays", "Relays by state", None, MetricType::Gauge)?;
            for (state, n) in &snap.relays_by_status {
                family.encode_family(&[("state", *state)])?.encode_gauge(n)?;
            }
        }
        gauge(e, "odi_directory_relays_proven_now", "Relays past their probation", snap.relays_proven)?;
        {
            let mut family = e.encode_descriptor("odi_directory_relay_audits", "Audits of the relays known now, by result", None, MetricType::Gauge)?;
            family.encode_family(&[("result", "passed")])?.encode_gauge(&snap.relay_audits_passed)?;
            family.encode_family(&[("result", "failed")])?.encode_gauge(&snap.relay_audits_failed)?;
        }
        gauge(e, "odi_directory_assigned_bytes", "Bytes assigned to relays, summed over relays (sync target)", snap.assigned_bytes)?;
        gauge(e, "odi_directory_held_bytes", "Bytes relays report held, summed over relays (sync progress)", snap.held_bytes)?;
        gauge(e, "odi_directory_assigned_blobs", "Blobs assigned to relays, summed over relays", snap.assigned_blobs)?;
        gauge(e, "odi_directory_held_blobs", "Blobs relays report held, summed over relays", snap.held_blobs)?;
        gauge(e, "odi_directory_expunges_pending", "Expunged blobs some relay still holds", snap.expunges_pending)?;
        gauge(e, "odi_directory_conflicts", "Paths with concurrent bindings from linked directories", snap.conflicts)?;
        for (name, help, pick) in [
            ("odi_directory_link_lag_entries", "Entries known to wait on a linked directory's feed (head - cursor)", 4),
            ("odi_directory_link_cursor", "Position consumed in a linked directory's feed", 2),
            ("odi_directory_link_head", "A linked directory's feed head, as last heard", 3),
        ] {
            let mut family = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (peer, url, cursor, head, lag) in &snap.links {
                let v = match pick {
                    2 => cursor,
                    3 => head,
                    _ => lag,
                };
                family.encode_family(&[("peer", peer.as_str()), ("url", url.as_str())])?.encode_gauge(v)?;
            }
        }
        Ok(())
    }
}

/// The relay's routes, as [`HttpMetrics`] labels them.
pub mod relay_route {
    pub const ARTIFACT: usize = 0;
    pub const BLOB: usize = 1;
    pub const OTHER: usize = 2;
    pub const NAMES: &[&str] = &["artifact", "blob", "other"];
}

/// The relay's counters, fed by its driver.
#[derive(Debug, Default)]
pub struct RelayCounters {
    /// Body bytes of successful `GET` answers (the `Content-Length` of each, ranges included).
    pub served_bytes: AtomicU64,
    /// Bytes downloaded while syncing (verified chunks, resumed ones not counted again).
    pub synced_bytes: AtomicU64,
    /// Bytes taken from a local tree (`--local-tree`) instead of downloaded, checked the same.
    pub adopted_bytes: AtomicU64,
    pub blobs_ready: AtomicU64,
    pub fetches_failed: AtomicU64,
    pub evictions: AtomicU64,
    pub corrupt: AtomicU64,
    pub no_room: AtomicU64,
    pub refusals: AtomicU64,
    /// Directory answers refused whole (bad signature, rollback, expired head).
    pub distrusted: AtomicU64,
    /// Catalogs frozen because their signed head expired without renewal.
    pub frozen: AtomicU64,
}

/// The relay's gauges, read from its machine in one lock.
#[derive(Debug, Default)]
pub struct RelaySnapshot {
    pub held_blobs: u64,
    pub used_bytes: u64,
    pub disk_budget: u64,
    pub fetching: u64,
    pub active: u64,
    pub synced: bool,
    /// Per directory: URL and the status it last gave this relay.
    pub standings: Vec<(String, &'static str)>,
}

#[derive(Debug)]
pub struct RelayMetrics {
    pub http: HttpMetrics,
    pub counters: RelayCounters,
    pub exposure: Exposure,
}

impl Default for RelayMetrics {
    fn default() -> Self {
        Self { http: HttpMetrics::new(relay_route::NAMES), counters: RelayCounters::default(), exposure: Exposure::default() }
    }
}

impl RelayMetrics {
    /// The counters and `snap` in the OpenMetrics text format.
    pub fn encode(self: &Arc<Self>, snap: RelaySnapshot) -> String {
        encode_text(Scrape(self.clone(), snap))
    }

    fn encode_into(&self, snap: &RelaySnapshot, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let c = &self.counters;
        self.http.encode("odi_relay", e)?;
        let events: [(&str, &str, &AtomicU64); 11] = [
            ("odi_relay_served_bytes", "Body bytes of successful GET answers to clients", &c.served_bytes),
            ("odi_relay_synced_bytes", "Bytes downloaded (and verified) while syncing assignments", &c.synced_bytes),
            ("odi_relay_adopted_bytes", "Bytes taken (and verified) from a local tree instead of downloaded", &c.adopted_bytes),
            ("odi_relay_blobs_ready", "Blobs downloaded, verified and made visible", &c.blobs_ready),
            ("odi_relay_fetches_failed", "Blob downloads that failed (retried)", &c.fetches_failed),
            ("odi_relay_evictions", "Blobs evicted to make room", &c.evictions),
            ("odi_relay_corrupt_blobs", "Stored copies that failed a read-side check and were dropped", &c.corrupt),
            ("odi_relay_no_room", "Assigned blobs that did not fit the disk budget", &c.no_room),
            ("odi_relay_refusals", "Requests a directory refused", &c.refusals),
            ("odi_relay_directory_answers_distrusted", "Directory answers refused whole: bad signature, rollback or expired head", &c.distrusted),
            ("odi_relay_catalogs_frozen", "Catalogs frozen: their signed head expired without renewal", &c.frozen),
        ];
        for (name, help, v) in events {
            counter(e, name, help, v.load(Ordering::Relaxed))?;
        }
        gauge(e, "odi_relay_held_blobs", "Blobs held and verified", snap.held_blobs)?;
        gauge(e, "odi_relay_used_bytes", "Bytes held", snap.used_bytes)?;
        gauge(e, "odi_relay_disk_budget_bytes", "The disk budget", snap.disk_budget)?;
        gauge(e, "odi_relay_fetches_in_progress", "Blob downloads in progress", snap.fetching)?;
        gauge(e, "odi_relay_active_responses", "Client responses in progress", snap.active)?;
        gauge(e, "odi_relay_synced", "1 when the relay holds its whole assignment", u64::from(snap.synced))?;
        let mut family = e.encode_descriptor("odi_relay_standing", "1 for the status each directory last gave this relay", None, MetricType::Gauge)?;
        for (url, status) in &snap.standings {
            family.encode_family(&[("directory", url.as_str()), ("status", *status)])?.encode_gauge(&1u64)?;
        }
        Ok(())
    }
}

fn counter(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    m.encode_counter::<NoLabelSet, _, u64>(&v, None)
}

fn gauge(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> std::fmt::Result {
    e.encode_descriptor(name, help, None, MetricType::Gauge)?.encode_gauge(&v)
}

/// Encodes `collector` as a registry's only one, in the text format, `# EOF` included.
fn encode_text(collector: impl prometheus_client::collector::Collector) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(collector));
    let mut out = String::new();
    // Writing to a `String` cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// A scrape: the metrics and a snapshot, owned, as the registry wants its collectors.
#[derive(Debug)]
struct Scrape<M, S>(Arc<M>, S);

impl prometheus_client::collector::Collector for Scrape<DirectoryMetrics, DirectorySnapshot> {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        self.0.encode_into(&self.1, &mut encoder)
    }
}

impl prometheus_client::collector::Collector for Scrape<RelayMetrics, RelaySnapshot> {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        self.0.encode_into(&self.1, &mut encoder)
    }
}

/// The answer to `GET /metrics` with `text`.
pub fn response(text: String) -> Response<Body> {
    let mut resp = Response::new(full(text));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    *resp.status_mut() = StatusCode::OK;
    resp
}

/// `--metrics-listen`: a listener of its own that answers `GET|HEAD /metrics` with `render()`
/// and nothing else, until [`OwnListener::stop`].
pub(crate) struct OwnListener {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), crate::NetError>>,
}

/// Serves the scrape `render` makes on `listener` (see [`OwnListener`]).
pub(crate) fn serve_own(listener: Listener, render: impl Fn() -> Response<Body> + Send + Sync + 'static) -> OwnListener {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let render = Arc::new(render);
    let handler = Arc::new(move |req: Request<Incoming>| {
        let render = render.clone();
        async move { only_metrics(&req, || render()) }
    });
    let task = tokio::spawn(crate::serve(listener, handler, async {
        stopped.await.ok();
    }));
    OwnListener { stop, task }
}

impl OwnListener {
    /// Stops accepting and waits for the listener's connections to end.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

fn only_metrics(req: &Request<Incoming>, render: impl FnOnce() -> Response<Body>) -> Response<Body> {
    match (req.uri().path(), matches!(*req.method(), Method::GET | Method::HEAD)) {
        ("/metrics", true) => render(),
        ("/metrics", false) => {
            let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed; use GET, HEAD");
            resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            resp
        }
        (path, _) => error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}; this listener serves /metrics only")),
    }
}
