//! What the relay answers clients: `GET|HEAD /r/{catalog}/{path}`, `/blobs/sha256/{hex}` and
//! the OCI blob paths `/v2/{name}/blobs/sha256:{hex}` (by digest, exact ranges) from what it holds (a copy that fails its check is dropped, and the client sent back to the
//! directory), and `GET /healthz`.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use odi_core::Digest;
use odi_core::path::{ArtifactPath, CatalogName};

use super::{Shared, found_corrupt};
use crate::driver::Driver as _;
use crate::http::{BlobRequest, Body, Caching, CorruptBlob, corrupt_blob, error, json, serve_local, split_catalog_path};

/// Answers `req` and counts it, by route and status, with the time to its response head.
pub(super) async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    use crate::metrics::relay_route;
    let started = std::time::Instant::now();
    let path = req.uri().path();
    let route = if path.starts_with("/r/") {
        relay_route::ARTIFACT
    } else if path.starts_with("/blobs/sha256/") {
        relay_route::BLOB
    } else {
        relay_route::OTHER
    };
    let metrics = shared.metrics.clone();
    let resp = answer(shared, req).await;
    metrics.http.observe(route, resp.status(), started.elapsed());
    resp
}

/// The scrape: gauges read in one lock, then encoded with none held.
pub(super) fn metrics_response(shared: &Shared) -> Response<Body> {
    let snap = {
        let m = shared.lock();
        crate::metrics::RelaySnapshot {
            held_blobs: m.held().count() as u64,
            used_bytes: m.used(),
            disk_budget: (0..m.upstreams()).filter_map(|i| m.capacity_of(i)).map(|c| c.disk_budget).sum(),
            fetching: m.fetching() as u64,
            active: u64::from(m.active()),
            synced: m.is_synced(),
            standings: (0..m.upstreams()).map(|i| (shared.url(i).to_owned(), standing_of(m.standing_with(i), m.is_enrolled_with(i)).0)).collect(),
        }
    };
    crate::metrics::response(shared.metrics.encode(snap))
}

async fn answer(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method();
    if method != Method::GET && method != Method::HEAD {
        let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed; use GET, HEAD");
        resp.headers_mut().insert(http::header::ALLOW, http::HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    let path = req.uri().path();
    if path == "/metrics" {
        // A relay has no admin token, and its numbers are about the public traffic it serves:
        // open on the public port, unless `--metrics-listen` moved them off it.
        return if shared.metrics.exposure.on_public_port() {
            metrics_response(&shared)
        } else {
            error(StatusCode::NOT_FOUND, "no such endpoint: /metrics; this relay serves it on its --metrics-listen address")
        };
    }
    if path == "/healthz" {
        // 200 whenever the process serves (the directory's self-test reads `id`); `status` and
        // `reason` are how the directory last said it sees this relay, so an operator learns
        // here why it gets no clients.
        let (enrolled, synced, standing, directories) = {
            let m = shared.lock();
            let directories: Vec<serde_json::Value> = (0..m.upstreams())
                .map(|i| {
                    let (status, reason) = standing_of(m.standing_with(i), m.is_enrolled_with(i));
                    let share = m.capacity_of(i).unwrap_or_default();
                    serde_json::json!({ "url": shared.url(i), "status": status, "reason": reason, "enrolled": m.is_enrolled_with(i), "disk_budget": share.disk_budget })
                })
                .collect();
            (m.is_enrolled(), m.is_synced(), m.standing().cloned(), directories)
        };
        // The top-level status is the first directory's; `directories` has each one's.
        let (status, reason) = standing_of(standing.as_ref(), shared.lock().is_enrolled_with(0));
        return json(
            StatusCode::OK,
            &serde_json::json!({ "status": status, "reason": reason, "role": "relay", "id": shared.id, "enrolled": enrolled, "synced": synced, "used": used_now(&shared), "directories": directories }),
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
    } else if let Some(rest) = path.strip_prefix("/v2/") {
        // The OCI blob paths the directory redirects to: served by digest, like `/blobs/`.
        match odi_core::oci::parse_route(rest) {
            Some(Ok(odi_core::oci::Route::Blob(_, d))) => Want::Blob(d),
            Some(Err(e)) => return error(StatusCode::BAD_REQUEST, e),
            _ => return error(StatusCode::NOT_FOUND, "a relay serves only /v2/{name}/blobs/{digest}; ask the directory"),
        }
    } else {
        return error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}"));
    };
    let (digest, caching) = {
        let mut m = shared.lock();
        let digest = match &want {
            Want::Name(catalog, path) => m.lookup(catalog, path),
            Want::Blob(d) => Some(*d).filter(|d| m.has_bytes(d)),
        };
        if digest.is_some_and(|d| !m.may_serve(&d)) {
            // Until the directories have answered once, a blob on disk may have been expunged
            // while this relay was away: serve nothing no directory has vouched for since.
            return error(StatusCode::NOT_FOUND, "relay is starting; ask the directory");
        }
        // The directory a client sent back goes to: the one that names it, or serves its catalog.
        let home = match &want {
            Want::Name(catalog, path) => m.upstream_for(catalog, path),
            Want::Blob(d) => m.upstream_wanting(d),
        };
        let Some(digest) = digest else {
            let named = match &want {
                Want::Name(catalog, path) => m.name_of(catalog, path),
                Want::Blob(d) => Some(*d),
            };
            if named.is_some_and(|d| m.was_dropped(&d)) {
                // Dropped (corrupt, or expunged by one directory while another assigns it) a
                // moment ago; the directories are being told. A 404 would be saved as the file
                // by a client that does not check the status (`curl -L`): send it back to a
                // directory, which sends it to a good copy.
                return back_to_directory(shared.url(home.unwrap_or(0)), path);
            }
            if let (Want::Name(..), Some(home), None, true) = (&want, home, named, m.upstreams() > 1) {
                // Serving several directories, a name none of them gave this relay, in a catalog
                // one of them serves: that directory knows where it is (or that it is gone). A
                // relay of one directory answers 404, and its clients know their directory.
                return back_to_directory(shared.url(home), path);
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
        let home = shared.lock().upstream_wanting(&digest);
        return back_to_directory(shared.url(home.unwrap_or(0)), path);
    }
    caching.apply(&mut resp);
    if path.starts_with("/v2/")
        && let Ok(v) = http::HeaderValue::from_str(&odi_core::oci::digest_string(&digest))
    {
        resp.headers_mut().insert(http::HeaderName::from_static("docker-content-digest"), v);
    }
    let on_error = shared.clone();
    let metrics = shared.metrics.clone();
    resp.map(|body| {
        body.map_frame(move |frame| {
            let _ = &guard;
            if let Some(data) = frame.data_ref() {
                metrics.counters.served_bytes.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
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

/// How a directory sees this relay, as `/healthz` says it: its last word, or how far enrollment got.
fn standing_of(standing: Option<&odi_core::message::Standing>, enrolled: bool) -> (&'static str, Option<String>) {
    match (standing, enrolled) {
        (Some(s), _) => (s.status.as_str(), s.reason.clone()),
        (None, false) => ("enrolling", Some("not enrolled with the directory yet".to_owned())),
        (None, true) => ("enrolled", Some("waiting for the directory's first answer".to_owned())),
    }
}

fn used_now(shared: &Shared) -> u64 {
    shared.lock().used()
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
