//! What the directory answers clients: `GET|HEAD /r/{catalog}/{path}` and
//! `/blobs/sha256/{hex}` (a `302` to a relay, or the bytes), `/metalink/...`, and `POST /report`.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use odi_core::Digest;
use odi_core::directory::{LookupError, Redirect};
use odi_core::message::RelayUrl;
use odi_core::path::ArtifactPath;

use super::effects::execute;
use super::{BODY_DEADLINE, Shared, lookup_error};
use crate::driver::Driver as _;
use crate::http::{BlobRequest, Body, Caching, DigestHeaders, Values, error, none_match, serve_blob, split_catalog_path};
use crate::metalink;

/// `POST /report`: a client's word that a relay sent a bad chunk (`ChunkReport`). Unsigned and
/// open to anyone, so it is small, bounded and cheap: the directory at most audits that chunk on
/// that relay (`202`), and ignores reports it cannot act on (`204`).
pub(super) async fn report(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    use odi_core::directory::ReportOutcome;
    use odi_core::message::{ChunkReport, MAX_REPORT_BYTES};
    let body = match tokio::time::timeout(BODY_DEADLINE, http_body_util::Limited::new(req.into_body(), MAX_REPORT_BYTES).collect()).await {
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(_)) => return error(StatusCode::BAD_REQUEST, format!("a report is a JSON body of at most {MAX_REPORT_BYTES} bytes")),
        Err(_) => return error(StatusCode::REQUEST_TIMEOUT, format!("the report did not arrive within {} s", BODY_DEADLINE.as_secs())),
    };
    let report: ChunkReport = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("malformed report, expected {{url, digest, chunk}}: {e}")),
    };
    let (outcome, effects) = shared.with_machine(|d, now| d.handle_report(&report.url, report.digest, report.chunk, now));
    execute(shared, effects).await;
    match outcome {
        ReportOutcome::Auditing => {
            tracing::info!(url = %report.url.chars().take(200).collect::<String>(), digest = %report.digest, chunk = report.chunk, "a client reported a bad chunk; auditing it");
            let mut resp = Response::new(crate::http::empty());
            *resp.status_mut() = StatusCode::ACCEPTED;
            resp
        }
        ReportOutcome::Ignored | ReportOutcome::Busy => {
            let mut resp = Response::new(crate::http::empty());
            *resp.status_mut() = StatusCode::NO_CONTENT;
            resp
        }
    }
}

pub(super) async fn client_artifact(shared: &Arc<Shared>, req: &Request<Incoming>, rest: &str) -> Response<Body> {
    let (catalog, path) = match crate::http::artifact_route(rest) {
        Ok(route) => route,
        Err(resp) => return resp,
    };
    let now = shared.now();
    let mut redirect = shared.read().redirect(catalog, &path, now);
    if matches!(redirect, Err(LookupError::NotFound { .. })) && super::origins::on_demand(shared, catalog, &path).await {
        redirect = shared.read().redirect(catalog, &path, shared.now());
    }
    match redirect {
        Ok(r) => answer(shared, req, r, &["r/", catalog, "/", &path.to_url()]).await,
        Err(e) => lookup_error(&e),
    }
}

pub(super) async fn client_blob(shared: &Arc<Shared>, req: &Request<Incoming>, hex: &str) -> Response<Body> {
    let digest = match Digest::from_hex(hex) {
        Ok(d) => d,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let now = shared.now();
    let redirect = shared.read().redirect_blob(&digest, now);
    match redirect {
        Ok(r) => answer(shared, req, r, &["blobs/sha256/", hex]).await,
        Err(e) => lookup_error(&e),
    }
}

/// A `302` to the chosen relay, or the bytes themselves when no relay can serve them; either way
/// with `Link: rel=describedby` to the metalink. `tail`: the request path after the first `/`, in
/// pieces (as a relay serves it too).
async fn answer(shared: &Arc<Shared>, req: &Request<Incoming>, r: Redirect, tail: &[&str]) -> Response<Body> {
    answer_as(shared, req, r, tail, tail, StatusCode::FOUND).await
}

/// [`answer`] with the redirect status (`307` for `/v2/` blobs) and the metalink's own tail,
/// for routes whose metalink lives under another path.
pub(super) async fn answer_as(
    shared: &Arc<Shared>,
    req: &Request<Incoming>,
    r: Redirect,
    tail: &[&str],
    metalink_tail: &[&str],
    status: StatusCode,
) -> Response<Body> {
    let tail_len: usize = tail.iter().chain(metalink_tail).map(|t| t.len()).sum();
    let urls = r.target.iter().chain(&r.alternates).map(|u| u.as_str().len() + tail_len + 32).sum::<usize>();
    let mut values = Values::with_capacity(urls + tail_len + 256);
    let caching = Caching::of_name(r.mutable);
    let mut resp = match &r.target {
        // The client holds these bytes already (the ETag names them): no redirect needed.
        Some(_) if none_match(req.headers(), &shared.digests.etag(&r.digest)) => not_modified(&shared.digests, &r.digest, caching),
        Some(target) => redirect_response(&mut values, &shared.digests, target, tail, &r.alternates, &r.digest, status),
        None => {
            let blob = BlobRequest {
                method: req.method(),
                headers: req.headers(),
                digest: &r.digest,
                digests: &shared.digests,
                media_type: &r.media_type,
                limiter: None,
            };
            let mut resp = serve_blob(shared.store.as_ref(), &blob).await;
            caching.apply(&mut resp);
            // Relays on probation: offered to clients that verify (aria2 reads these).
            if resp.status().is_success() {
                duplicate_links(&mut values, resp.headers_mut(), &r.alternates, tail);
            }
            resp
        }
    };
    if resp.status() == status || resp.status().is_success() {
        let [scheme, base] = base_url(shared);
        if let Some(v) = values
            .text("<")
            .text(scheme)
            .text(base)
            .text("/metalink/")
            .texts(metalink_tail)
            .text(">; rel=describedby; type=\"")
            .text(metalink::MEDIA_TYPE)
            .text("\"")
            .finish()
        {
            resp.headers_mut().append(header::LINK, v);
        }
    }
    resp
}

/// `304 Not Modified` for a name or digest whose current bytes the client already has.
fn not_modified(digests: &DigestHeaders, digest: &Digest, caching: Caching) -> Response<Body> {
    let mut resp = Response::new(crate::http::empty());
    *resp.status_mut() = StatusCode::NOT_MODIFIED;
    let h = resp.headers_mut();
    h.insert(header::ETAG, digests.etag(digest));
    h.insert(header::CACHE_CONTROL, caching.header());
    digests.insert(h, digest);
    resp
}

/// The URL this directory is reached at: `--public-url`, else the address it listens on (never
/// the request's `Host`). Two pieces, as the callers write them one after the other.
fn base_url(shared: &Shared) -> [&str; 2] {
    ["", shared.public_url.get().map_or("http://localhost", String::as_str)]
}

/// `GET /metalink/r/{catalog}/{path}` or `/metalink/blobs/sha256/{hex}`: a Metalink 4 document
/// with every relay that can serve the artifact, the directory last, and per-chunk hashes.
pub(super) fn metalink(shared: &Shared, _req: &Request<Incoming>, rest: &str) -> Response<Body> {
    let now = shared.now();
    let base = base_url(shared).concat();
    let (tail, name, manifest, redirect) = if let Some(r) = rest.strip_prefix("r/") {
        let Some((catalog, raw_path)) = split_catalog_path(r) else { return error(StatusCode::BAD_REQUEST, "expected /metalink/r/{catalog}/{path}") };
        let path = match ArtifactPath::from_url(raw_path) {
            Ok(p) => p,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad artifact path: {e}")),
        };
        let m = shared.read();
        let manifest = match m.lookup(catalog, &path) {
            Ok(a) => (*a.manifest).clone(),
            Err(e) => return lookup_error(&e),
        };
        let redirect = m.redirect(catalog, &path, now);
        (format!("r/{catalog}/{}", path.to_url()), path.file_name().to_owned(), manifest, redirect)
    } else if let Some(hex) = rest.strip_prefix("blobs/sha256/") {
        let Ok(digest) = Digest::from_hex(hex) else { return error(StatusCode::BAD_REQUEST, "malformed digest") };
        let m = shared.read();
        let manifest = match m.manifest(&digest) {
            Ok(manifest) => manifest.clone(),
            Err(e) => return lookup_error(&e),
        };
        let redirect = m.redirect_blob(&digest, now);
        (format!("blobs/sha256/{hex}"), hex.to_owned(), manifest, redirect)
    } else {
        return error(StatusCode::NOT_FOUND, "expected /metalink/r/{catalog}/{path} or /metalink/blobs/sha256/{hex}");
    };
    let relays = match redirect {
        Ok(r) => r.target.into_iter().chain(r.alternates).collect::<Vec<_>>(),
        Err(e) => return lookup_error(&e),
    };
    let urls: Vec<String> = relays.iter().map(|u| format!("{u}/{tail}")).chain([format!("{base}/{tail}")]).collect();
    let document = metalink::render(&name, &manifest, &urls);
    let mut resp = Response::new(crate::http::full(document));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(metalink::MEDIA_TYPE));
    // Its sources change with the relays' health: never reused.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Saved (aria2c without `--follow-metalink=mem`, browsers), the document must not take the
    // artifact's name: aria2c would then find "the artifact" already there, and stop.
    if let Ok(v) = HeaderValue::from_str(&metalink::content_disposition(&name)) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    // No digest header: those describe this answer's bytes, which are the document, not the
    // artifact (aria2c checks the document against them, and fails on the artifact's).
    resp
}

fn redirect_response(
    values: &mut Values,
    digests: &DigestHeaders,
    target: &RelayUrl,
    tail: &[&str],
    alternates: &[RelayUrl],
    digest: &Digest,
    status: StatusCode,
) -> Response<Body> {
    let mut resp = Response::new(crate::http::empty());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    // Location, Cache-Control, Content-Length, two digests, the duplicates and describedby.
    h.reserve(6 + alternates.len());
    if let Some(v) = values.text(target.as_str()).text("/").texts(tail).finish() {
        h.insert(header::LOCATION, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    digests.insert(h, digest);
    duplicate_links(values, h, alternates, tail);
    resp
}

/// `Link: <{relay}/{tail}>; rel=duplicate; pri={n}` for each of `alternates` (RFC 6249).
fn duplicate_links(values: &mut Values, h: &mut http::HeaderMap, alternates: &[RelayUrl], tail: &[&str]) {
    for (i, alt) in (1..).zip(alternates) {
        if let Some(v) = values.text("<").text(alt.as_str()).text("/").texts(tail).text(">; rel=duplicate; pri=").number(i).finish() {
            h.append(header::LINK, v);
        }
    }
}
