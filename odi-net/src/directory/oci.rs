//! The OCI distribution API (spec v1.1) at `/v2/`: pull, push, content discovery and
//! management, over the catalogs (the mapping is `odi_core::oci`).
//!
//! - Reads are anonymous. Manifests are served by the directory from its own store, byte for
//!   byte as pushed, with their media type and `Docker-Content-Digest`; blob `GET`s answer `307`
//!   to a relay holding a verified copy (the same choice and `Link` headers as `/r/`), or the
//!   directory's own bytes.
//! - Writes need the admin token, as `Bearer` or as the password of `Basic` (any user name), or
//!   a short-lived token from `GET /v2/token` (`odi_core::oci::token`). `GET /v2/` and writes
//!   without credentials answer `401` with `WWW-Authenticate: Bearer realm=".../v2/token"`,
//!   which is how clients (containers/image, docker, oras) learn to ask for one.
//! - Upload sessions live in `{data dir}/oci-uploads/`: `{id}.repo` names the repository and
//!   `{id}.data` holds the bytes received, each chunk synced before it is acknowledged. A blob
//!   is acknowledged (`201`) only once it is stored under its digest and its `Put` is durable.
//! - Layer federation: a blob a manifest names by `urls` only is fetched from them on first pull,
//!   untrusted, and kept only if its size and digest match the descriptor (`federate`).

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt as _;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use odi_core::Digest;
use odi_core::directory::{AdminError, LookupError};
use odi_core::oci::token::Access;
use odi_core::oci::{
    self, ContentRange, ErrorCode, ManifestInfo, OciError, Reference, RepoName, Route, UploadSession, digest_string, parse_digest, parse_route,
};
use odi_core::path::ArtifactPath;
use odi_core::storage::{ByteStream, StorageError};

use super::Shared;
use super::admin::{Holder, Refused, holder_of, ingest_and_publish, plan_and_commit, publish_ingested};
use crate::driver::Driver as _;
use crate::http::{BlobRequest, Body, empty, full, serve_blob};
use crate::{client, keys, unix_now};

pub(super) const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");
pub(super) const CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
const UPLOAD_UUID: HeaderName = HeaderName::from_static("docker-upload-uuid");
const OCI_SUBJECT: HeaderName = HeaderName::from_static("oci-subject");
const FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");
/// Most tags listed in one answer when the client does not say `n`.
const MAX_TAGS_PAGE: usize = 10_000;

/// The upload sessions of this directory (see the module docs).
#[derive(Debug)]
pub(super) struct Uploads {
    dir: PathBuf,
    /// Sessions a request is writing now: one writer per session.
    busy: Mutex<BTreeSet<String>>,
    /// Held while a federated layer is fetched from its `urls`.
    pub(super) fetching: tokio::sync::Mutex<()>,
}

impl Uploads {
    pub(super) fn new(dir: PathBuf) -> Self {
        Self { dir, busy: Mutex::new(BTreeSet::new()), fetching: tokio::sync::Mutex::new(()) }
    }

    pub(super) fn data(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.data"))
    }

    fn repo_file(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.repo"))
    }

    /// Creates a session for `repo`: durable before its id is handed out.
    pub(super) async fn create(&self, repo: &RepoName) -> Result<String, OciError> {
        let id = hex::encode(keys::random_bytes::<16>());
        let (dir, data, repo_file, name) = (self.dir.clone(), self.data(&id), self.repo_file(&id), repo.to_string());
        blocking(move || {
            std::fs::create_dir_all(&dir)?;
            std::fs::File::create(&data)?.sync_all()?;
            let mut f = std::fs::File::create(&repo_file)?;
            f.write_all(name.as_bytes())?;
            f.sync_all()?;
            std::fs::File::open(&dir)?.sync_all()
        })
        .await
        .map_err(|e| unavailable(&format!("cannot start an upload: {e}")))?;
        Ok(id)
    }

    /// The session `id` of `repo`, as far as it was received.
    async fn open(&self, repo: &RepoName, id: &str) -> Result<UploadSession, OciError> {
        let (data, repo_file) = (self.data(id), self.repo_file(id));
        let found = blocking(move || Ok((std::fs::read_to_string(&repo_file)?, std::fs::metadata(&data)?.len()))).await;
        match found {
            Ok((name, offset)) if name == repo.to_string() => Ok(UploadSession { repo: repo.clone(), offset }),
            _ => Err(OciError::new(ErrorCode::BlobUploadUnknown, format!("no upload `{id}` in {repo}; start one with POST /v2/{repo}/blobs/uploads/"))),
        }
    }

    pub(super) async fn remove(&self, id: &str) {
        let (data, repo_file) = (self.data(id), self.repo_file(id));
        let _ = blocking(move || {
            let _ = std::fs::remove_file(&repo_file);
            std::fs::remove_file(&data)
        })
        .await;
    }

    /// Removes the sessions no chunk was written to for `max_age` (a client that gave up), except
    /// one a request is writing now. The sessions removed.
    pub(super) fn sweep(&self, max_age: std::time::Duration) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return 0 };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".data")) else { continue };
            let idle = entry.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
            if idle.is_none_or(|idle| idle < max_age) {
                continue;
            }
            let busy = self.busy.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if busy.contains(id) {
                continue;
            }
            let _ = std::fs::remove_file(self.repo_file(id));
            if std::fs::remove_file(self.data(id)).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    fn claim(self: &Arc<Self>, id: &str) -> Result<Claim, OciError> {
        let mut busy = self.busy.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !busy.insert(id.to_owned()) {
            return Err(OciError::new(ErrorCode::BlobUploadInvalid, "another request is writing this upload now; wait for it, then ask where it stands (GET)"));
        }
        Ok(Claim { uploads: self.clone(), id: id.to_owned() })
    }
}

/// An upload session no chunk was written to for this long is abandoned.
pub(super) const UPLOAD_MAX_IDLE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Sweeps abandoned upload sessions every hour; runs until aborted.
pub(super) async fn sweep_loop(shared: Arc<Shared>) {
    loop {
        let uploads = shared.oci_uploads.clone();
        let removed = tokio::task::spawn_blocking(move || uploads.sweep(UPLOAD_MAX_IDLE)).await.unwrap_or(0);
        if removed > 0 {
            tracing::info!(removed, "removed abandoned OCI upload sessions");
        }
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
    }
}

/// One request's hold on a session, released when dropped.
struct Claim {
    uploads: Arc<Uploads>,
    id: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.uploads.busy.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.id);
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

fn unavailable(message: &str) -> OciError {
    OciError::new(ErrorCode::BlobUploadInvalid, message)
}

/// Everything under `/v2/`: `rest` is the path after it.
pub(super) async fn v2(shared: &Arc<Shared>, req: Request<Incoming>, rest: &str) -> Response<Body> {
    let mut resp = route(shared, req, rest).await;
    resp.headers_mut().insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    resp
}

async fn route(shared: &Arc<Shared>, req: Request<Incoming>, rest: &str) -> Response<Body> {
    if rest == "token" {
        return issue_token(shared, &req);
    }
    let method = req.method().clone();
    let route = match parse_route(rest) {
        None => return oci_error(&OciError::new(ErrorCode::NameUnknown, format!("no such endpoint: /v2/{}", rest.chars().take(200).collect::<String>()))),
        // A read of a reference no tag could have is of a manifest that does not exist (the
        // conformance suite asks for `.INVALID_MANIFEST_NAME`); a push of it is refused.
        Some(Err(e)) if e.code == ErrorCode::ManifestInvalid && matches!(method, Method::GET | Method::HEAD) => {
            return oci_error(&OciError::new(ErrorCode::ManifestUnknown, e.message));
        }
        Some(Err(e)) => return oci_error(&e),
        Some(Ok(route)) => route,
    };
    let write = !matches!(method, Method::GET | Method::HEAD);
    if (write || route == Route::Base)
        && let Err(resp) = check_credentials(shared, &req, if write { Access::Push } else { Access::Pull })
    {
        return resp;
    }
    if write {
        let client = req.extensions().get::<crate::guard::ClientAddr>().map(|c| c.0);
        let audited = audited(&route, &method);
        let resp = answer(shared, req, route, method).await;
        return match audited {
            Some((action, target)) => audit_write(shared, action, target, client, resp).await,
            None => resp,
        };
    }
    answer(shared, req, route, method).await
}

async fn answer(shared: &Arc<Shared>, req: Request<Incoming>, route: Route, method: Method) -> Response<Body> {
    match (route, method) {
        (Route::Base, Method::GET | Method::HEAD) => json(StatusCode::OK, b"{}".to_vec()),
        (Route::Manifest(repo, reference), Method::GET | Method::HEAD) => get_manifest(shared, &req, &repo, &reference).await,
        (Route::Manifest(repo, reference), Method::PUT) => put_manifest(shared, req, &repo, &reference).await,
        (Route::Manifest(repo, reference), Method::DELETE) => delete_manifest(shared, &repo, &reference).await,
        (Route::Blob(repo, digest), Method::GET | Method::HEAD) => get_blob(shared, &req, &repo, &digest).await,
        (Route::Blob(repo, digest), Method::DELETE) => delete_path(shared, &repo, repo.blob_path(&digest), ErrorCode::BlobUnknown).await,
        (Route::UploadStart(repo), Method::POST) => start_upload(shared, req, &repo).await,
        (Route::Upload(repo, id), Method::GET) => upload_status(shared, &repo, &id).await,
        (Route::Upload(repo, id), Method::PATCH) => patch_upload(shared, req, &repo, &id).await,
        (Route::Upload(repo, id), Method::PUT) => finish_upload(shared, req, &repo, &id).await,
        (Route::Upload(repo, id), Method::DELETE) => cancel_upload(shared, &repo, &id).await,
        (Route::Tags(repo), Method::GET) => list_tags(shared, &req, &repo),
        (Route::Referrers(repo, digest), Method::GET) => referrers(shared, &req, &repo, &digest).await,
        (_, method) => {
            let mut resp = oci_error(&OciError::new(ErrorCode::Unsupported, format!("{method} is not supported on this endpoint")));
            *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            resp
        }
    }
}

/// What the audit log calls a `/v2/` write, `(action, target)`: pushes that complete a blob
/// or a manifest, deletes, cancelled uploads. Opening an upload session and sending a chunk
/// change nothing anyone sees and are not logged.
fn audited(route: &Route, method: &Method) -> Option<(&'static str, String)> {
    let reference = |r: &Reference| match r {
        Reference::Tag(t) => format!(":{t}"),
        Reference::Digest(d) => format!("@{}", digest_string(d)),
    };
    Some(match (route, method) {
        (Route::Manifest(repo, r), &Method::PUT) => ("oci push manifest", format!("{repo}{}", reference(r))),
        (Route::Manifest(repo, r), &Method::DELETE) => ("oci delete manifest", format!("{repo}{}", reference(r))),
        (Route::Blob(repo, d), &Method::DELETE) => ("oci delete blob", format!("{repo}@{}", digest_string(d))),
        (Route::UploadStart(repo), &Method::POST) | (Route::Upload(repo, _), &Method::PUT) => ("oci push blob", repo.to_string()),
        (Route::Upload(repo, _), &Method::DELETE) => ("oci cancel upload", repo.to_string()),
        _ => return None,
    })
}

/// Logs the `/v2/` write `action` on `target` once its answer is known, and passes the answer
/// on: the digest it names on success, the error on a refusal. A `202` to an upload's `POST`
/// (a session opened, nothing stored) and the `401` of the token flow are not logged.
async fn audit_write(shared: &Shared, action: &str, target: String, client: Option<std::net::IpAddr>, resp: Response<Body>) -> Response<Body> {
    let status = resp.status();
    if status == StatusCode::UNAUTHORIZED || (action == "oci push blob" && status == StatusCode::ACCEPTED) {
        return resp;
    }
    let detail = resp.headers().get(CONTENT_DIGEST).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let (resp, error) = if status.is_success() {
        (resp, String::new())
    } else {
        // Refusals are the spec's small JSON errors: read back whole.
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.map(http_body_util::Collected::to_bytes).unwrap_or_default();
        let error: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let error = format!("{}: {}", error["errors"][0]["code"].as_str().unwrap_or_default(), error["errors"][0]["message"].as_str().unwrap_or_default());
        (Response::from_parts(parts, full(bytes)), error)
    };
    super::audit::record(shared, &super::audit::Who::Admin, action.to_owned(), target, detail, client, status, error);
    resp
}

/// The credentials of a write (`Push`) or of the version check (`Pull`): the admin token as
/// `Bearer` or as the `Basic` password, or a token from `GET /v2/token` granting `need`.
/// Without credentials: `401` with the challenge; with a pull token on a write: `403`, after
/// which clients ask for a token again with their credentials.
#[allow(clippy::result_large_err, reason = "the error is the response to send, built once per refused request")]
fn check_credentials(shared: &Shared, req: &Request<Incoming>, need: Access) -> Result<(), Response<Body>> {
    let Some(value) = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return Err(challenge(
            shared,
            req,
            "pushing needs the admin token: as the password of Basic auth (any user, e.g. --creds odi:TOKEN), as a Bearer token, or a token from /v2/token",
        ));
    };
    let token = token_of(value).unwrap_or_default();
    match (shared.oci_tokens.check(&token, unix_now().0), need) {
        (Some(Access::Push), _) | (Some(Access::Pull), Access::Pull) => Ok(()),
        (Some(Access::Pull), Access::Push) => {
            Err(oci_error(&OciError::new(ErrorCode::Denied, "this token only pulls: ask /v2/token for one with the admin token as the Basic password")))
        }
        (None, _) => admin_holder(shared, req, &token),
    }
}

/// `Ok` if `token` is the admin token; the `401` (or `429`) to answer otherwise.
#[allow(clippy::result_large_err, reason = "the error is the response to send, built once per refused request")]
fn admin_holder(shared: &Shared, req: &Request<Incoming>, token: &str) -> Result<(), Response<Body>> {
    match holder_of(shared, req, token) {
        Ok(Holder::Admin) => Ok(()),
        Err(Refused::Limited(secs)) => {
            let mut resp = oci_error(&OciError::new(ErrorCode::TooManyRequests, format!("too many wrong tokens from this address; try again in {secs}s")));
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
            Err(resp)
        }
        // A publisher's token publishes files to its catalog, not images.
        Ok(Holder::Publisher(_)) | Err(Refused::Wrong) => Err(challenge(shared, req, "the token is wrong (or expired): push with the directory's admin token")),
    }
}

/// A `401 UNAUTHORIZED` whose `WWW-Authenticate` names this directory's token endpoint, as the
/// client reached it (its `Host`, the listener's scheme).
fn challenge(shared: &Shared, req: &Request<Incoming>, message: &str) -> Response<Body> {
    let mut resp = oci_error(&OciError::new(ErrorCode::Unauthorized, message));
    let public = shared.public_url.get().map(String::as_str).unwrap_or("http://localhost");
    let scheme = public.split_once("://").map_or("http", |(s, _)| s);
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).filter(|h| !h.is_empty() && !h.contains(['"', '\\', ' ']));
    let base = match host {
        Some(host) => format!("{scheme}://{host}"),
        None => public.to_owned(),
    };
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, header_value(&oci::token::challenge(&base)));
    resp
}

/// `GET /v2/token`: a short-lived push token for the admin token (as the Basic password or as
/// `Bearer`); without credentials, a pull token (what anyone may do, as the token spec's
/// anonymous flow expects). With a wrong token: `401`.
fn issue_token(shared: &Shared, req: &Request<Incoming>) -> Response<Body> {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut resp = oci_error(&OciError::new(ErrorCode::Unsupported, "the token endpoint answers GET with Basic credentials"));
        *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        return resp;
    }
    let access = match req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        None => Access::Pull,
        Some(value) => match admin_holder(shared, req, &token_of(value).unwrap_or_default()) {
            Ok(()) => Access::Push,
            Err(resp) => return resp,
        },
    };
    let now = unix_now().0;
    let token = shared.oci_tokens.issue(access, now);
    let mut resp = json(StatusCode::OK, oci::token::answer(&token, now));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The token in an `Authorization` value: `Bearer T`, or `Basic base64(user:T)`.
fn token_of(value: &str) -> Option<String> {
    use base64::Engine as _;
    let (scheme, rest) = value.trim().split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_owned());
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_user, password) = text.split_once(':')?;
    Some(password.to_owned())
}

/// A refusal from the shared publish and admin paths (one line of text) as the spec's JSON,
/// with the same status.
async fn as_oci(resp: Response<Body>) -> Response<Body> {
    let status = resp.status();
    // Our own one-line answers: small, and already in memory.
    let text = match resp.into_body().collect().await {
        Ok(c) => String::from_utf8_lossy(&c.to_bytes()).trim().to_owned(),
        Err(_) => status.to_string(),
    };
    let code = match status {
        StatusCode::NOT_FOUND => ErrorCode::NameUnknown,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::SizeInvalid,
        StatusCode::BAD_REQUEST => ErrorCode::BlobUploadInvalid,
        _ => ErrorCode::Denied,
    };
    let mut out = oci_error(&OciError::new(code, text));
    *out.status_mut() = status;
    out
}

fn oci_error(e: &OciError) -> Response<Body> {
    let status = StatusCode::from_u16(e.code.status()).unwrap_or(StatusCode::BAD_REQUEST);
    json(status, e.code.body(&e.message).into_bytes())
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn header_value(s: &str) -> HeaderValue {
    // Our own paths and digests: always valid header text.
    HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""))
}

fn lookup_to_oci(e: &LookupError, code: ErrorCode, what: &str) -> OciError {
    match e {
        LookupError::UnknownCatalog(c) => {
            OciError::new(ErrorCode::NameUnknown, format!("no catalog `{c}`: a repository lives in the catalog its name starts with"))
        }
        _ => OciError::new(code, format!("{what} is not in this repository")),
    }
}

fn admin_to_oci(e: &AdminError) -> OciError {
    match e {
        AdminError::UnknownCatalog(c) => OciError::new(ErrorCode::NameUnknown, format!("no catalog `{c}`; create it first with `odi catalog create {c}`")),
        AdminError::Rebind { catalog, .. } => OciError::new(
            ErrorCode::Denied,
            format!("catalog `{catalog}` is immutable: a tag there names one manifest for good (create the catalog --mutable to move tags)"),
        ),
        AdminError::ExpungedDigest(_) => OciError::new(ErrorCode::Denied, e.to_string()),
        _ => OciError::new(ErrorCode::Denied, e.to_string()),
    }
}

pub(super) fn manifest_path(repo: &RepoName, reference: &Reference) -> ArtifactPath {
    match reference {
        Reference::Tag(tag) => repo.tag_path(tag),
        Reference::Digest(d) => repo.manifest_path(d),
    }
}

/// `GET|HEAD /v2/{name}/manifests/{reference}`: the bytes as pushed, from the directory.
async fn get_manifest(shared: &Arc<Shared>, req: &Request<Incoming>, repo: &RepoName, reference: &Reference) -> Response<Body> {
    let path = manifest_path(repo, reference);
    let found = shared.lock().lookup(repo.catalog().as_str(), &path).map(|a| (a.digest(), a.media_type.clone()));
    let found = match found {
        // Pull-through: a manifest the catalog does not have yet, from its upstream registry.
        Err(LookupError::NotFound { .. }) if let Some(upstream) = super::upstream::upstream_of(shared, repo) => {
            match super::upstream::pull_manifest(shared, &upstream, repo, reference).await {
                Ok(_) => shared.lock().lookup(repo.catalog().as_str(), &path).map(|a| (a.digest(), a.media_type.clone())),
                Err(why) => {
                    tracing::warn!(%repo, reason = %why, "pull-through of a manifest failed");
                    return oci_error(&OciError::new(ErrorCode::ManifestUnknown, format!("not pulled from the upstream registry: {why}")));
                }
            }
        }
        other => other,
    };
    let (digest, media_type) = match found {
        Ok(found) => found,
        Err(e) => return oci_error(&lookup_to_oci(&e, ErrorCode::ManifestUnknown, "the manifest")),
    };
    let blob = BlobRequest { method: req.method(), headers: req.headers(), digest: &digest, digests: &shared.digests, media_type: &media_type, limiter: None };
    let mut resp = serve_blob(shared.store.as_ref(), &blob).await;
    if matches!(reference, Reference::Tag(_)) {
        // A tag may be moved: caches must ask again.
        crate::http::Caching::Revalidate.apply(&mut resp);
    }
    resp.headers_mut().insert(CONTENT_DIGEST, header_value(&digest_string(&digest)));
    resp
}

/// `GET|HEAD /v2/{name}/blobs/{digest}`: `307` to a relay that holds a verified copy, or the
/// directory's own bytes.
async fn get_blob(shared: &Arc<Shared>, req: &Request<Incoming>, repo: &RepoName, digest: &Digest) -> Response<Body> {
    let path = repo.blob_path(digest);
    let now = shared.now();
    let redirect = if *req.method() == Method::HEAD {
        // A HEAD asks whether the blob is here: answered by the directory, not counted as demand.
        shared.lock().lookup(repo.catalog().as_str(), &path).map(|_| None)
    } else {
        shared.read().redirect(repo.catalog().as_str(), &path, now).map(Some)
    };
    let redirect = match redirect {
        // Only a GET fetches a federated layer: the HEADs a push sends before each upload stay
        // a lookup.
        Err(LookupError::NotFound { .. })
            if *req.method() == Method::GET && (federate(shared, repo, digest).await || super::upstream::pull_blob(shared, repo, digest).await) =>
        {
            // Fetched from a descriptor's `urls` or the upstream and verified: served like any blob
            // from now on.
            let now = shared.now();
            shared.read().redirect(repo.catalog().as_str(), &path, now).map(Some)
        }
        other => other,
    };
    let mut resp = match redirect {
        Err(e) => return oci_error(&lookup_to_oci(&e, ErrorCode::BlobUnknown, "the blob")),
        Ok(None) => {
            let blob = BlobRequest {
                method: req.method(),
                headers: req.headers(),
                digest,
                digests: &shared.digests,
                media_type: "application/octet-stream",
                limiter: None,
            };
            serve_blob(shared.store.as_ref(), &blob).await
        }
        Ok(Some(mut r)) => {
            // A digest names its bytes for good, whatever the catalog.
            r.mutable = false;
            let (hex, name) = (digest.to_hex(), repo.to_string());
            let tail = ["v2/", &name, "/blobs/sha256:", &hex];
            super::clients::answer_as(shared, req, r, &tail, &["blobs/sha256/", &hex], StatusCode::TEMPORARY_REDIRECT).await
        }
    };
    resp.headers_mut().insert(CONTENT_DIGEST, header_value(&digest_string(digest)));
    resp
}

/// `PUT /v2/{name}/manifests/{reference}`.
async fn put_manifest(shared: &Arc<Shared>, req: Request<Incoming>, repo: &RepoName, reference: &Reference) -> Response<Body> {
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = match http_body_util::Limited::new(req.into_body(), oci::MAX_MANIFEST_LEN).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            let mut resp = oci_error(&OciError::new(ErrorCode::ManifestInvalid, format!("a manifest may be at most {} bytes", oci::MAX_MANIFEST_LEN)));
            *resp.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
            return resp;
        }
        Err(e) => return oci_error(&OciError::new(ErrorCode::ManifestInvalid, format!("cannot read the manifest: {e}"))),
    };
    let info = match ManifestInfo::parse(&body, content_type.as_deref()) {
        Ok(info) => info,
        Err(e) => return oci_error(&e),
    };
    let digest = Digest::of(&body);
    if let Reference::Digest(d) = reference
        && *d != digest
    {
        return oci_error(&OciError::new(
            ErrorCode::DigestInvalid,
            format!("the manifest's digest is {} but it was pushed as {}", digest_string(&digest), digest_string(d)),
        ));
    }
    let Some(chunk_size) = shared.lock().catalog_config(repo.catalog()).map(|c| c.chunk_size) else {
        return oci_error(&admin_to_oci(&AdminError::UnknownCatalog(repo.catalog().clone())));
    };
    // Every blob it names must be in this repository, except layers fetched from their `urls`.
    {
        let m = shared.lock();
        for d in info.blobs.iter().filter(|d| d.urls.is_empty()) {
            let Ok(blob) = d.digest() else { continue };
            if m.lookup(repo.catalog().as_str(), &repo.blob_path(&blob)).is_err() {
                return oci_error(&OciError::new(ErrorCode::ManifestBlobUnknown, format!("blob {} is not in {repo}; push it first", d.digest)));
            }
        }
    }
    let mut paths = vec![repo.manifest_path(&digest)];
    if let Reference::Tag(tag) = reference {
        let path = repo.tag_path(tag);
        let m = shared.lock();
        let mutable = m.catalog_config(repo.catalog()).is_some_and(|c| c.mutable);
        if !mutable && m.lookup(repo.catalog().as_str(), &path).is_ok_and(|a| a.digest() != digest) {
            return oci_error(&admin_to_oci(&AdminError::Rebind { catalog: repo.catalog().clone(), path, current: digest }));
        }
        drop(m);
        paths.push(repo.tag_path(tag));
    }
    for path in paths {
        let stream: ByteStream<'static> = Box::pin(futures_util::stream::once(std::future::ready(Ok(body.clone()))));
        if let Err(resp) = ingest_and_publish(shared, repo.catalog(), &path, chunk_size, info.media_type.clone(), Vec::new(), stream).await {
            return as_oci(resp).await;
        }
    }
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::CREATED;
    let h = resp.headers_mut();
    h.insert(header::LOCATION, header_value(&format!("/v2/{repo}/manifests/{}", digest_string(&digest))));
    h.insert(CONTENT_DIGEST, header_value(&digest_string(&digest)));
    if let Some(subject) = info.subject {
        h.insert(OCI_SUBJECT, header_value(&digest_string(&subject)));
    }
    resp
}

/// `DELETE /v2/{name}/manifests/{reference}`: a tag withdraws that tag; a digest withdraws the
/// manifest and every tag of this repository that names it.
async fn delete_manifest(shared: &Arc<Shared>, repo: &RepoName, reference: &Reference) -> Response<Body> {
    let Reference::Digest(digest) = reference else {
        return delete_path(shared, repo, manifest_path(repo, reference), ErrorCode::ManifestUnknown).await;
    };
    let tags: Vec<ArtifactPath> = {
        let m = shared.lock();
        let prefix = repo.tags_prefix();
        m.artifacts(repo.catalog())
            .into_iter()
            .flatten()
            .filter(|a| a.digest() == *digest && a.path.as_str().strip_prefix(&prefix).is_some_and(|t| !t.contains('/')))
            .map(|a| a.path.clone())
            .collect()
    };
    let resp = delete_path(shared, repo, repo.manifest_path(digest), ErrorCode::ManifestUnknown).await;
    if resp.status() != StatusCode::ACCEPTED {
        return resp;
    }
    for tag in tags {
        if let Err(resp) = plan_and_commit(shared, |d| d.plan_expunge(repo.catalog(), &tag, unix_now())).await {
            return as_oci(resp).await;
        }
    }
    resp
}

/// Withdraws one name of the repository (an expunge by path): `202`.
async fn delete_path(shared: &Arc<Shared>, repo: &RepoName, path: ArtifactPath, unknown: ErrorCode) -> Response<Body> {
    if let Err(e) = shared.lock().lookup(repo.catalog().as_str(), &path) {
        return oci_error(&lookup_to_oci(&e, unknown, "that"));
    }
    match plan_and_commit(shared, |d| d.plan_expunge(repo.catalog(), &path, unix_now())).await {
        Ok(()) => {
            let mut resp = Response::new(empty());
            *resp.status_mut() = StatusCode::ACCEPTED;
            resp
        }
        Err(resp) => as_oci(resp).await,
    }
}

fn query_param<'a>(query: Option<&'a str>, key: &str) -> Option<std::borrow::Cow<'a, str>> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| percent_encoding::percent_decode_str(v).decode_utf8_lossy())
    })
}

fn upload_answer(status: StatusCode, repo: &RepoName, id: &str, session: &UploadSession) -> Response<Body> {
    let mut resp = Response::new(empty());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::LOCATION, header_value(&format!("/v2/{repo}/blobs/uploads/{id}")));
    h.insert(header::RANGE, header_value(&session.range_header()));
    h.insert(UPLOAD_UUID, header_value(id));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    resp
}

fn blob_created(repo: &RepoName, digest: &Digest) -> Response<Body> {
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::CREATED;
    let h = resp.headers_mut();
    h.insert(header::LOCATION, header_value(&format!("/v2/{repo}/blobs/{}", digest_string(digest))));
    h.insert(CONTENT_DIGEST, header_value(&digest_string(digest)));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    resp
}

/// `POST /v2/{name}/blobs/uploads/`: a mount (`?mount=&from=`), a monolithic upload
/// (`?digest=` with the body), or a new session.
async fn start_upload(shared: &Arc<Shared>, req: Request<Incoming>, repo: &RepoName) -> Response<Body> {
    if shared.lock().catalog_config(repo.catalog()).is_none() {
        return oci_error(&admin_to_oci(&AdminError::UnknownCatalog(repo.catalog().clone())));
    }
    let query = req.uri().query().map(str::to_owned);
    let query = query.as_deref();
    if let Some(mount) = query_param(query, "mount") {
        let digest = match parse_digest(&mount) {
            Ok(d) => d,
            Err(e) => return oci_error(&e),
        };
        if let Some(from) = query_param(query, "from")
            && let Ok(from) = RepoName::parse(&from)
            && let Some(resp) = mount_blob(shared, repo, &from, &digest).await
        {
            return resp;
        }
        // Not mountable: an ordinary upload session, as the spec says.
    }
    let id = match shared.oci_uploads.create(repo).await {
        Ok(id) => id,
        Err(e) => return oci_error(&e),
    };
    if let Some(digest) = query_param(query, "digest") {
        let digest = match parse_digest(&digest) {
            Ok(d) => d,
            Err(e) => return oci_error(&e),
        };
        return finish(shared, req, repo, &id, &digest).await;
    }
    upload_answer(StatusCode::ACCEPTED, repo, &id, &UploadSession::new(repo.clone()))
}

/// Publishes `from`'s blob under `repo` (the bytes are stored once): `None` when `from` has no
/// such blob.
async fn mount_blob(shared: &Arc<Shared>, repo: &RepoName, from: &RepoName, digest: &Digest) -> Option<Response<Body>> {
    let source = shared.lock().lookup(from.catalog().as_str(), &from.blob_path(digest)).ok().map(|a| (*a.manifest).clone())?;
    let path = repo.blob_path(digest);
    let writer = shared.write_lock().await;
    let planned = shared.lock().plan_publish(repo.catalog(), path, source, "application/octet-stream".to_owned(), unix_now());
    match planned {
        Ok(Some(record)) => {
            if let Err(resp) = super::admin::commit(shared, &record).await {
                return Some(as_oci(resp).await);
            }
        }
        Ok(None) => {}
        Err(e) => return Some(oci_error(&admin_to_oci(&e))),
    }
    drop(writer);
    Some(blob_created(repo, digest))
}

async fn upload_status(shared: &Arc<Shared>, repo: &RepoName, id: &str) -> Response<Body> {
    match shared.oci_uploads.open(repo, id).await {
        Ok(session) => upload_answer(StatusCode::NO_CONTENT, repo, id, &session),
        Err(e) => oci_error(&e),
    }
}

async fn cancel_upload(shared: &Arc<Shared>, repo: &RepoName, id: &str) -> Response<Body> {
    if let Err(e) = shared.oci_uploads.open(repo, id).await {
        return oci_error(&e);
    }
    let _claim = match shared.oci_uploads.claim(id) {
        Ok(c) => c,
        Err(e) => return oci_error(&e),
    };
    shared.oci_uploads.remove(id).await;
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}

/// Appends the request's body to session `id` if it starts where the session stands; synced
/// before it returns. On any failure the session is cut back to where it was.
async fn append(shared: &Arc<Shared>, req: Request<Incoming>, id: &str, session: &mut UploadSession) -> Result<(), OciError> {
    let range = match req.headers().get(header::CONTENT_RANGE).and_then(|v| v.to_str().ok()).map(ContentRange::parse).transpose() {
        Ok(r) => r,
        Err(e) => return Err(e.to_oci()),
    };
    let length = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    session.check_chunk(range, length).map_err(|e| e.to_oci())?;
    let path = shared.oci_uploads.data(id);
    let before = session.offset;
    let written = write_body(&path, before, client::body_stream(req.into_body())).await;
    let outcome = match written {
        Ok(n) => session.accept(range, n).map_err(|e| e.to_oci()),
        Err(e) => Err(e),
    };
    if outcome.is_err() {
        session.offset = before;
        let _ = blocking(move || std::fs::OpenOptions::new().write(true).open(&path)?.set_len(before)).await;
    }
    outcome
}

/// Writes `body` at `offset` of the file at `path` and syncs it; the bytes written.
pub(super) async fn write_body(path: &std::path::Path, offset: u64, mut body: ByteStream<'static>) -> Result<u64, OciError> {
    use tokio::io::{AsyncSeekExt as _, AsyncWriteExt as _};
    let io = |e: std::io::Error| unavailable(&format!("cannot store the chunk: {e}"));
    let mut file = tokio::fs::OpenOptions::new().write(true).open(path).await.map_err(io)?;
    file.set_len(offset).await.map_err(io)?;
    file.seek(std::io::SeekFrom::Start(offset)).await.map_err(io)?;
    let mut n = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| OciError::new(ErrorCode::BlobUploadInvalid, format!("the chunk did not arrive whole: {e}")))?;
        file.write_all(&chunk).await.map_err(io)?;
        n += chunk.len() as u64;
    }
    file.flush().await.map_err(io)?;
    file.sync_all().await.map_err(io)?;
    Ok(n)
}

/// `PATCH /v2/{name}/blobs/uploads/{id}`: one chunk, `202` with where the upload stands, `416`
/// for a chunk that does not start there.
async fn patch_upload(shared: &Arc<Shared>, req: Request<Incoming>, repo: &RepoName, id: &str) -> Response<Body> {
    let _claim = match shared.oci_uploads.claim(id) {
        Ok(c) => c,
        Err(e) => return oci_error(&e),
    };
    let mut session = match shared.oci_uploads.open(repo, id).await {
        Ok(s) => s,
        Err(e) => return oci_error(&e),
    };
    match append(shared, req, id, &mut session).await {
        Ok(()) => upload_answer(StatusCode::ACCEPTED, repo, id, &session),
        Err(e) => {
            let mut resp = oci_error(&e);
            if e.code == ErrorCode::RangeInvalid {
                let h = resp.headers_mut();
                h.insert(header::LOCATION, header_value(&format!("/v2/{repo}/blobs/uploads/{id}")));
                h.insert(header::RANGE, header_value(&session.range_header()));
            }
            resp
        }
    }
}

/// `PUT /v2/{name}/blobs/uploads/{id}?digest=`: the last chunk (if any), then the blob.
async fn finish_upload(shared: &Arc<Shared>, req: Request<Incoming>, repo: &RepoName, id: &str) -> Response<Body> {
    let Some(digest) = query_param(req.uri().query(), "digest").map(|d| parse_digest(&d)) else {
        return oci_error(&OciError::new(ErrorCode::DigestInvalid, "closing an upload needs ?digest=sha256:..."));
    };
    let digest = match digest {
        Ok(d) => d,
        Err(e) => return oci_error(&e),
    };
    finish(shared, req, repo, id, &digest).await
}

/// Takes the request's body as the last chunk of session `id`, checks the whole against
/// `digest`, stores and publishes it: `201` once the blob is durable and named.
async fn finish(shared: &Arc<Shared>, req: Request<Incoming>, repo: &RepoName, id: &str, digest: &Digest) -> Response<Body> {
    let _claim = match shared.oci_uploads.claim(id) {
        Ok(c) => c,
        Err(e) => return oci_error(&e),
    };
    let mut session = match shared.oci_uploads.open(repo, id).await {
        Ok(s) => s,
        Err(e) => return oci_error(&e),
    };
    if session.offset == 0 && !req.headers().contains_key(header::CONTENT_RANGE) {
        return finish_whole(shared, req, repo, id, digest).await;
    }
    if let Err(e) = append(shared, req, id, &mut session).await {
        return oci_error(&e);
    }
    let path = shared.oci_uploads.data(id);
    if let Err(resp) = publish_file(shared, repo, &path, digest, session.offset).await {
        return resp;
    }
    shared.oci_uploads.remove(id).await;
    blob_created(repo, digest)
}

/// A monolithic push (the whole blob in the closing `PUT`, nothing received before): the body
/// goes straight into the store, hashed on the way, instead of through the session file, so
/// its bytes are written once. Published only if they hash to `digest`; otherwise
/// `DIGEST_INVALID`, and the session stays open and empty (the bytes are not named by
/// anything).
async fn finish_whole(shared: &Arc<Shared>, req: Request<Incoming>, repo: &RepoName, id: &str, digest: &Digest) -> Response<Body> {
    let Some(chunk_size) = shared.read().catalog_config(repo.catalog()).map(|c| c.chunk_size) else {
        return oci_error(&admin_to_oci(&AdminError::UnknownCatalog(repo.catalog().clone())));
    };
    let manifest = match shared.store.ingest(chunk_size, client::body_stream(req.into_body())).await {
        Ok(m) => m,
        Err(StorageError::Input(e)) => return oci_error(&OciError::new(ErrorCode::BlobUploadInvalid, format!("the blob did not arrive whole: {e}"))),
        Err(e) => return oci_error(&unavailable(&format!("cannot store the blob: {e}"))),
    };
    if manifest.digest() != *digest {
        return oci_error(&OciError::new(
            ErrorCode::DigestInvalid,
            format!("the {} bytes uploaded have digest {}, not {}", manifest.total_len(), digest_string(&manifest.digest()), digest_string(digest)),
        ));
    }
    match publish_ingested(shared, repo.catalog(), &repo.blob_path(digest), manifest, "application/octet-stream".to_owned(), Vec::new()).await {
        Ok(_) => {
            shared.oci_uploads.remove(id).await;
            blob_created(repo, digest)
        }
        Err(resp) => as_oci(resp).await,
    }
}

/// Hashes the file at `path`; if it is `digest`, stores and publishes it as `repo`'s blob. The
/// `Err` is the answer to send (the file is kept: an upload stays open).
pub(super) async fn publish_file(shared: &Arc<Shared>, repo: &RepoName, path: &std::path::Path, digest: &Digest, len: u64) -> Result<(), Response<Body>> {
    let hashed = {
        let path = path.to_owned();
        blocking(move || {
            use sha2::Digest as _;
            let mut file = std::fs::File::open(&path)?;
            let mut hasher = sha2::Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            Ok(Digest::from_bytes(hasher.finalize().into()))
        })
        .await
    };
    let actual = match hashed {
        Ok(d) => d,
        Err(e) => return Err(oci_error(&unavailable(&format!("cannot read the upload: {e}")))),
    };
    if actual != *digest {
        return Err(oci_error(&OciError::new(
            ErrorCode::DigestInvalid,
            format!("the {len} bytes uploaded have digest {}, not {}; the upload stays open", digest_string(&actual), digest_string(digest)),
        )));
    }
    let Some(chunk_size) = shared.lock().catalog_config(repo.catalog()).map(|c| c.chunk_size) else {
        return Err(oci_error(&admin_to_oci(&AdminError::UnknownCatalog(repo.catalog().clone()))));
    };
    let stream = match file_stream(path).await {
        Ok(s) => s,
        Err(e) => return Err(oci_error(&unavailable(&format!("cannot read the upload: {e}")))),
    };
    match ingest_and_publish(shared, repo.catalog(), &repo.blob_path(digest), chunk_size, "application/octet-stream".to_owned(), Vec::new(), stream).await {
        Ok((_, stored, _)) if stored == *digest => Ok(()),
        Ok(_) => Err(oci_error(&unavailable("the upload changed while it was stored; push it again"))),
        Err(resp) => Err(as_oci(resp).await),
    }
}

/// Layer federation: a blob this repository does not hold, but one of its manifests names
/// with `urls`, is fetched from those URLs as an **untrusted** source, kept only if its size
/// and digest match the descriptor, then published like a pushed blob (and so distributed by
/// relays). Whether the blob is now held.
async fn federate(shared: &Arc<Shared>, repo: &RepoName, digest: &Digest) -> bool {
    let Some(descriptor) = foreign_descriptor(shared, repo, digest).await else { return false };
    // One fetch per blob at a time: a second puller waits, then finds it held.
    let _fetching = shared.oci_uploads.fetching.lock().await;
    if shared.lock().lookup(repo.catalog().as_str(), &repo.blob_path(digest)).is_ok() {
        return true;
    }
    let id = match shared.oci_uploads.create(repo).await {
        Ok(id) => id,
        Err(_) => return false,
    };
    let path = shared.oci_uploads.data(&id);
    let mut held = false;
    for url in descriptor.urls.iter().take(8) {
        // The same SSRF checks as an origin's: a manifest's pusher picks these URLs.
        let fetched = match crate::origin::fetch::OriginFetcher::new(url, shared.allow_private_origins) {
            Ok(fetcher) => fetcher.request(Method::GET, url).await.map(|(r, _)| r),
            Err(e) => Err(e),
        };
        let resp = match fetched {
            Ok(r) if r.status() == StatusCode::OK => r,
            Ok(r) => {
                tracing::info!(%url, status = %r.status(), digest = %digest, "a layer source did not serve the layer");
                continue;
            }
            Err(e) => {
                tracing::info!(%url, error = %e, digest = %digest, "a layer source is unreachable");
                continue;
            }
        };
        // At most one byte more than the descriptor says: enough to know a source lies.
        let body = http_body_util::Limited::new(resp.into_body(), usize::try_from(descriptor.size.saturating_add(1)).unwrap_or(usize::MAX));
        let stream: ByteStream<'static> = Box::pin(http_body_util::BodyStream::new(body).filter_map(|frame| async move {
            match frame {
                Ok(frame) => frame.into_data().ok().map(Ok),
                Err(e) => Some(Err(StorageError::Input(e.to_string()))),
            }
        }));
        match write_body(&path, 0, stream).await {
            Ok(n) if n == descriptor.size => {}
            Ok(n) => {
                tracing::warn!(%url, got = n, expected = descriptor.size, digest = %digest, "a layer source served the wrong size; not kept");
                continue;
            }
            Err(e) => {
                tracing::warn!(%url, error = %e, digest = %digest, "a layer source failed mid-way; not kept");
                continue;
            }
        }
        match publish_file(shared, repo, &path, digest, descriptor.size).await {
            Ok(()) => {
                tracing::info!(%url, digest = %digest, size = descriptor.size, "fetched a federated layer; its digest matched");
                held = true;
                break;
            }
            Err(_) => tracing::warn!(%url, digest = %digest, "a layer source served bytes that do not match the digest; not kept"),
        }
    }
    shared.oci_uploads.remove(&id).await;
    held
}

/// The descriptor with `urls` for `digest` in one of `repo`'s manifests, if any.
async fn foreign_descriptor(shared: &Arc<Shared>, repo: &RepoName, digest: &Digest) -> Option<oci::Descriptor> {
    let wanted = digest_string(digest);
    for (manifest, _) in repo_manifests(shared, repo) {
        let Some(info) = read_manifest(shared, &manifest).await else { continue };
        if let Some(d) = info.blobs.into_iter().find(|d| d.digest == wanted && !d.urls.is_empty()) {
            return Some(d);
        }
    }
    None
}

/// The digests and sizes of `repo`'s manifests.
pub(super) fn repo_manifests(shared: &Shared, repo: &RepoName) -> Vec<(Digest, u64)> {
    let m = shared.lock();
    let prefix = repo.manifests_prefix();
    m.artifacts(repo.catalog()).into_iter().flatten().filter(|a| a.path.as_str().starts_with(&prefix)).map(|a| (a.digest(), a.size())).collect()
}

/// A stored manifest, parsed; `None` if it is too large or not one.
pub(super) async fn read_manifest(shared: &Arc<Shared>, digest: &Digest) -> Option<ManifestInfo> {
    let got = shared.store.get(digest, None).await.ok()?;
    if got.size > oci::MAX_MANIFEST_LEN as u64 {
        return None;
    }
    let chunks: Vec<Bytes> = got.stream.collect::<Vec<_>>().await.into_iter().collect::<Result<_, _>>().ok()?;
    ManifestInfo::parse(&chunks.concat(), None).ok()
}

/// The file at `path` as a byte stream, 1 MiB at a time.
async fn file_stream(path: &std::path::Path) -> std::io::Result<ByteStream<'static>> {
    use tokio::io::AsyncReadExt as _;
    let file = tokio::fs::File::open(path).await?;
    let stream = futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; 1 << 20];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(StorageError::Input(e.to_string())), None)),
        }
    });
    Ok(Box::pin(stream))
}

/// Whether `repo` holds anything at all (a tag, a manifest or a blob).
fn repo_exists(shared: &Shared, repo: &RepoName) -> bool {
    let prefixes = [format!("{}/_tags/", repo.name()), format!("{}/_manifests/", repo.name()), format!("{}/_blobs/", repo.name())];
    shared.lock().artifacts(repo.catalog()).into_iter().flatten().any(|a| prefixes.iter().any(|p| a.path.as_str().starts_with(p.as_str())))
}

/// `GET /v2/{name}/tags/list?n=&last=`.
fn list_tags(shared: &Arc<Shared>, req: &Request<Incoming>, repo: &RepoName) -> Response<Body> {
    let query = req.uri().query();
    let n = match query_param(query, "n").map(|n| n.parse::<usize>()) {
        None => None,
        Some(Ok(n)) => Some(n.min(MAX_TAGS_PAGE)),
        Some(Err(_)) => return oci_error(&OciError::new(ErrorCode::Unsupported, "n must be a number")),
    };
    let last = query_param(query, "last");
    let mut tags: Vec<String> = {
        let m = shared.lock();
        let prefix = repo.tags_prefix();
        m.artifacts(repo.catalog())
            .into_iter()
            .flatten()
            .filter_map(|a| a.path.as_str().strip_prefix(&prefix).filter(|t| !t.contains('/')).map(str::to_owned))
            .collect()
    };
    if tags.is_empty() && !repo_exists(shared, repo) {
        return oci_error(&OciError::new(ErrorCode::NameUnknown, format!("no repository {repo}")));
    }
    tags.sort();
    let (page, more) = oci::tags_page(&tags, n.or(Some(MAX_TAGS_PAGE)), last.as_deref());
    let body = serde_json::to_vec(&serde_json::json!({ "name": repo.to_string(), "tags": page })).unwrap_or_default();
    let mut resp = json(StatusCode::OK, body);
    if more && let Some(last) = page.last() {
        let n = n.unwrap_or(MAX_TAGS_PAGE);
        let link =
            format!("</v2/{repo}/tags/list?n={n}&last={}>; rel=\"next\"", percent_encoding::utf8_percent_encode(last, percent_encoding::NON_ALPHANUMERIC));
        resp.headers_mut().insert(header::LINK, header_value(&link));
    }
    resp
}

/// `GET /v2/{name}/referrers/{digest}?artifactType=`: an image index of the manifests in this
/// repository whose `subject` is `digest`.
async fn referrers(shared: &Arc<Shared>, req: &Request<Incoming>, repo: &RepoName, subject: &Digest) -> Response<Body> {
    let filter = query_param(req.uri().query(), "artifactType").map(|s| s.into_owned());
    let mut found = Vec::new();
    for (digest, size) in repo_manifests(shared, repo) {
        let Some(info) = read_manifest(shared, &digest).await else { continue };
        if info.subject != Some(*subject) {
            continue;
        }
        if filter.as_ref().is_some_and(|f| info.artifact_type.as_ref() != Some(f)) {
            continue;
        }
        found.push(info.referrer(&digest, size));
    }
    found.sort_by(|a, b| a.digest.cmp(&b.digest));
    let mut resp = json(StatusCode::OK, oci::referrers_index(&found));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(oci::OCI_INDEX));
    if filter.is_some() {
        resp.headers_mut().insert(FILTERS_APPLIED, HeaderValue::from_static("artifactType"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abandoned_upload_sessions_are_swept_but_live_and_busy_ones_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let uploads = Arc::new(Uploads::new(tmp.path().to_owned()));
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(25 * 3600);
        for id in ["old", "busy", "new"] {
            std::fs::write(uploads.repo_file(id), "cat/app").unwrap();
            let f = std::fs::File::create(uploads.data(id)).unwrap();
            if id != "new" {
                f.set_modified(old).unwrap();
            }
        }
        let claim = uploads.claim("busy").unwrap();
        assert_eq!(uploads.sweep(UPLOAD_MAX_IDLE), 1);
        assert!(!uploads.data("old").exists() && !uploads.repo_file("old").exists());
        assert!(uploads.data("busy").exists() && uploads.data("new").exists());
        drop(claim);
        assert_eq!(uploads.sweep(UPLOAD_MAX_IDLE), 1, "no longer busy");
        assert!(uploads.data("new").exists());
    }

    #[test]
    fn tokens_come_as_bearer_or_as_the_basic_password() {
        use base64::Engine as _;
        assert_eq!(token_of("Bearer abc").as_deref(), Some("abc"));
        let basic = base64::engine::general_purpose::STANDARD.encode("odi:s3cret:with:colons");
        assert_eq!(token_of(&format!("Basic {basic}")).as_deref(), Some("s3cret:with:colons"));
        assert_eq!(token_of("Basic !!!"), None);
        assert_eq!(token_of("Digest x"), None);
        assert_eq!(token_of("Bearer"), None);
    }
}
