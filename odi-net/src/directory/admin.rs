//! The admin API, `/api/v1/...` behind `Authorization: Bearer {admin token}`: catalogs,
//! publishing and expunging, relays (drain, readmit), named tokens, stats. A publisher's token
//! (scoped to one catalog) may publish and tag there and nothing else (`authorize`). Every change is
//! planned under the writer lock and made durable before it applies (`plan_and_commit`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use odi_core::Digest;
use odi_core::api::{
    ArtifactView, CatalogListing, ChangeTags, CreateCatalog, CreateLink, CreateToken, DigestExpunged, LinkCreated, LinkRemoved, PathExpunged, Published, Stats,
    Tagged, TokenCreated, TokenRevoked,
};
use odi_core::catalog::{DEFAULT_REPLICAS, LogEntry, LogOp};
use odi_core::directory::{AdminError, Directory, Outcome, TokenScope};
use odi_core::manifest::{ChunkManifest, DEFAULT_CHUNK_SIZE};
use odi_core::message::NodeId;
use odi_core::path::{ArtifactPath, CatalogName};
use odi_core::storage::{Record, StorageError, TokenRole};

use super::audit::Who;
use super::effects::execute;
use super::events::What;
use super::{Shared, peers, webhooks};
use crate::client;
use crate::driver::Driver as _;
use crate::guard::ClientAddr;
use crate::http::{Body, error, json};
use crate::{keys, unix_now};

/// Longest JSON body accepted from the admin API or a relay's heartbeat.
pub(super) const MAX_REQUEST_JSON: usize = 16 << 20;

/// Wrong admin tokens one client address may send per window before it gets 429s.
pub(super) const ADMIN_FAILURES: u32 = 10;
pub(super) const ADMIN_FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Who may call `/api/v1/{rest}`: the admin token anything; a publisher's token only listing
/// (`GET catalogs/{C}`), publishing (`PUT catalogs/{C}/artifacts/...`) and tagging
/// (`POST catalogs/{C}/tags`) in its one catalog C.
#[allow(clippy::result_large_err, reason = "the error is the response to send, built once per refused request")]
pub(super) async fn authorize(shared: &Shared, req: &Request<Incoming>, rest: &str) -> Result<Who, Response<Body>> {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        let mut resp = error(
            StatusCode::UNAUTHORIZED,
            "admin API needs `Authorization: Bearer {token}`; the token is in the directory's admin.token file or ODI_ADMIN_TOKEN",
        );
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return Err(resp);
    };
    if let Some(basic) = value.to_str().ok().and_then(|v| v.strip_prefix("Basic ")) {
        let client = req.extensions().get::<ClientAddr>().map(|c| c.0);
        return super::ldap::basic(shared, client, basic.trim()).await.map(Who::User);
    }
    let token = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).unwrap_or_default().trim();
    match holder_of(shared, req, token) {
        Ok(Holder::Admin) => Ok(Who::Admin),
        Ok(Holder::Publisher(catalog)) if publisher_catalog(req.method(), rest) == Some(catalog.as_str()) => {
            Ok(Who::Token(shared.lock().publisher_name(token).unwrap_or_default()))
        }
        Ok(Holder::Publisher(catalog)) => Err(error(
            StatusCode::FORBIDDEN,
            format!("this token may only list, publish and tag in catalog `{catalog}`; other catalogs and admin actions need the admin token"),
        )),
        Err(Refused::Limited(secs)) => {
            let mut resp = error(StatusCode::TOO_MANY_REQUESTS, format!("too many wrong admin tokens from this address; try again in {secs}s"));
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
            Err(resp)
        }
        Err(Refused::Wrong) => Err(error(StatusCode::FORBIDDEN, "admin token is wrong")),
    }
}

/// Who holds a token the directory knows.
pub(super) enum Holder {
    Admin,
    /// A publisher's token, for this one catalog.
    Publisher(CatalogName),
}

pub(super) enum Refused {
    /// Too many wrong tokens from the request's address: try again in this many seconds.
    Limited(u64),
    Wrong,
}

/// Whose `token` is, with guessing bounded per client address: over the limit the token is not
/// even checked, and an unknown token counts against the address.
pub(super) fn holder_of(shared: &Shared, req: &Request<Incoming>, token: &str) -> Result<Holder, Refused> {
    holder_for(shared, req.extensions().get::<ClientAddr>().map(|c| c.0), token)
}

/// [`holder_of`] for a request from `client` whose body was already read (a login form).
pub(super) fn holder_for(shared: &Shared, client: Option<std::net::IpAddr>, token: &str) -> Result<Holder, Refused> {
    if let Some(Err(wait)) = client.map(|ip| shared.admin_failures.check(ip)) {
        return Err(Refused::Limited(wait.as_secs().max(1)));
    }
    let scope = {
        let m = shared.lock();
        if m.check_token(TokenRole::Admin, token) {
            return Ok(Holder::Admin);
        }
        m.publish_scope(token)
    };
    if let Some(catalog) = scope {
        return Ok(Holder::Publisher(catalog));
    }
    if let Some(ip) = client {
        shared.admin_failures.failed(ip);
    }
    Err(Refused::Wrong)
}

/// The catalog an endpoint a publisher's token may call acts on: listing, publishing or tagging.
fn publisher_catalog<'a>(method: &Method, rest: &'a str) -> Option<&'a str> {
    match (method, rest.splitn(4, '/').collect::<Vec<_>>().as_slice()) {
        (&Method::PUT, ["catalogs", catalog, "artifacts", path]) if !path.is_empty() => Some(catalog),
        (&Method::POST, ["catalogs", catalog, "tags"]) => Some(catalog),
        // `odi publish` and `odi tag` read the catalog's listing first.
        (&Method::GET, ["catalogs", catalog]) => Some(catalog),
        _ => None,
    }
}

pub(super) async fn admin(shared: &Arc<Shared>, req: Request<Incoming>, rest: &str) -> Response<Body> {
    let method = req.method().clone();
    let segments: Vec<&str> = rest.splitn(4, '/').collect();
    if segments.first() == Some(&"webhooks") {
        let rest: Vec<&str> = rest.split('/').skip(1).filter(|s| !s.is_empty()).collect();
        return webhooks::route(shared, req, &rest).await;
    }
    match (method, segments.as_slice()) {
        (Method::GET, ["catalogs"]) => json(StatusCode::OK, &shared.lock().catalogs()),
        (Method::POST, ["catalogs"]) => create_catalog(shared, req).await,
        (Method::GET, ["catalogs", name]) => {
            let Ok(name) = CatalogName::new(name) else {
                return error(StatusCode::BAD_REQUEST, "malformed catalog name");
            };
            let m = shared.lock();
            let Some(view) = m.catalogs().into_iter().find(|c| c.name == name) else {
                return error(StatusCode::NOT_FOUND, format!("no catalog named `{name}`"));
            };
            let artifacts: Vec<ArtifactView> = m
                .artifacts(&name)
                .into_iter()
                .flatten()
                .map(|a| ArtifactView {
                    path: a.path.clone(),
                    digest: a.digest(),
                    size: a.size(),
                    media_type: a.media_type.to_string(),
                    published_at: a.published_at.0,
                    tags: a.tags.clone(),
                })
                .collect();
            let conflicts = m.conflicts().into_iter().filter(|c| c.catalog == name).collect();
            json(StatusCode::OK, &CatalogListing { catalog: view, artifacts, conflicts })
        }
        (Method::PUT, ["catalogs", name, "artifacts", path]) => {
            let (name, path) = (name.to_string(), path.to_string());
            publish(shared, req, &name, &path).await
        }
        (Method::DELETE, ["catalogs", name, "artifacts", path]) => expunge(shared, name, path).await,
        (Method::POST, ["catalogs", name, "sync"]) => {
            let Ok(name) = CatalogName::new(name) else {
                return error(StatusCode::BAD_REQUEST, "malformed catalog name");
            };
            super::origins::sync_now(shared, &name).await
        }
        (Method::DELETE, ["blobs", "sha256", hex]) => expunge_digest(shared, hex).await,
        (Method::GET, ["stats"]) => {
            let now = shared.now();
            let m = shared.lock();
            let node_blob_bytes = shared.node_blob_bytes.load(std::sync::atomic::Ordering::Relaxed);
            json(
                StatusCode::OK,
                &Stats {
                    generation: m.generation(),
                    node_blob_bytes,
                    peer_blob_bytes_sent: shared.peer_blob_bytes_sent.load(std::sync::atomic::Ordering::Relaxed),
                    peer_blob_bytes_received: shared.peer_blob_bytes_received.load(std::sync::atomic::Ordering::Relaxed),
                    hottest: m.hottest(10, now),
                    expunges_pending: m.expunges_pending(),
                },
            )
        }
        (Method::POST, ["relays", id, action @ ("drain" | "undrain" | "readmit")]) => {
            let Ok(id) = id.parse::<NodeId>() else { return error(StatusCode::BAD_REQUEST, "malformed relay id; `odi relays --json` shows them") };
            let (drain, readmit) = match *action {
                "drain" => (Some(true), false),
                "undrain" => (Some(false), false),
                _ => (None, true),
            };
            if let Err(resp) = plan_and_commit(shared, |d| d.plan_relay_admin(&id, drain, readmit)).await {
                return resp;
            }
            let relay = id.to_string();
            shared.announce(match *action {
                "drain" => What::RelayDrained { relay },
                "undrain" => What::RelayUndrained { relay },
                _ => What::RelayReadmitted { relay },
            });
            let now = shared.now();
            let view = shared.lock().relays(now).into_iter().find(|r| r.id == id);
            json(StatusCode::OK, &view)
        }
        (Method::GET, ["relays"]) => {
            let now = shared.now();
            json(StatusCode::OK, &shared.lock().relays(now))
        }
        (Method::GET, ["events"]) => super::events::stream(&shared.events, &req, true),
        (Method::GET, ["links"]) => json(StatusCode::OK, &shared.lock().links()),
        (Method::POST, ["links"]) => create_link(shared, req).await,
        (Method::DELETE, ["links", which]) => remove_link(shared, which).await,
        (Method::POST, ["catalogs", name, "tags"]) => {
            let name = name.to_string();
            change_tags(shared, req, &name).await
        }
        (Method::GET, ["catalogs", name, "conflicts"]) => {
            let Ok(name) = CatalogName::new(name) else {
                return error(StatusCode::BAD_REQUEST, "malformed catalog name");
            };
            let m = shared.lock();
            if m.catalog_config(&name).is_none() {
                return admin_error(&AdminError::UnknownCatalog(name));
            }
            let list: Vec<_> = m.conflicts().into_iter().filter(|c| c.catalog == name).collect();
            json(StatusCode::OK, &list)
        }
        (Method::GET, ["tokens"]) => json(StatusCode::OK, &shared.lock().enroll_tokens()),
        (Method::POST, ["tokens"]) => create_enroll_token(shared, req).await,
        (Method::DELETE, ["tokens", name]) => {
            let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy().into_owned();
            if let Err(resp) = plan_and_commit(shared, |d| d.plan_revoke_token(&name)).await {
                return resp;
            }
            shared.announce(What::TokenRevoked { name: name.clone() });
            let now = shared.now();
            let barred: Vec<NodeId> = shared.lock().relays(now).into_iter().filter(|r| r.token.as_deref() == Some(name.as_str())).map(|r| r.id).collect();
            json(StatusCode::OK, &TokenRevoked { name, revoked: true, quarantined: barred })
        }
        (method, _) => super::openapi::unrouted(&method, rest),
    }
}

/// `POST /api/v1/tokens {"name": ..., "catalog": C?, "single_use": bool?}`: a named token, shown
/// once in the answer (only its keyed hash is kept): an enrollment token for one relay operator
/// (with `single_use`, for one relay), or with `catalog` a publisher's token for that catalog.
async fn create_enroll_token(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let body = match read_request_json(req).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let create: CreateToken = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("malformed JSON, expected {{\"name\": ...}}: {e}")),
    };
    let scope = match (create.catalog, create.single_use) {
        (Some(_), true) => return error(StatusCode::BAD_REQUEST, "a publisher's token (catalog) cannot be single-use; single-use is for enrollment tokens"),
        (Some(catalog), false) => TokenScope::Publish(catalog),
        (None, single_use) => TokenScope::Enroll { single_use },
    };
    let role = if matches!(scope, TokenScope::Publish(_)) { "publish" } else { "enroll" };
    let token = keys::new_token();
    if let Err(resp) = plan_and_commit(shared, |d| d.plan_named_token(&create.name, &token, unix_now(), scope)).await {
        return resp;
    }
    shared.announce(What::TokenAdded { name: create.name.clone(), role: role.to_owned() });
    json(StatusCode::CREATED, &TokenCreated { name: create.name, role: role.to_owned(), token })
}

pub(super) fn admin_error(e: &AdminError) -> Response<Body> {
    let status = match e {
        AdminError::CatalogExists(_)
        | AdminError::ExpungedDigest(_)
        | AdminError::Rebind { .. }
        | AdminError::ExpungedPath { .. }
        | AdminError::TokenExists(_) => StatusCode::CONFLICT,
        AdminError::UnknownCatalog(_) | AdminError::NotFound { .. } | AdminError::UnknownRelay(_) | AdminError::NoCatalogs(_) | AdminError::UnknownToken(_) => {
            StatusCode::NOT_FOUND
        }
        _ => StatusCode::BAD_REQUEST,
    };
    error(status, e)
}

/// Plans one admin change under the writer lock (so changes apply in order) and commits it.
pub(super) async fn plan_and_commit(shared: &Arc<Shared>, plan: impl FnOnce(&Directory) -> Result<Record, AdminError>) -> Result<(), Response<Body>> {
    let _writer = shared.write_lock().await;
    let planned = plan(&shared.lock());
    let record = planned.map_err(|e| admin_error(&e))?;
    commit(shared, &record).await
}

/// Makes `record` durable, then applies it: the write-ahead rule of the directory, through the
/// machine's one persistence path.
pub(super) async fn commit(shared: &Arc<Shared>, record: &Record) -> Result<(), Response<Body>> {
    commit_all(shared, std::slice::from_ref(record)).await
}

/// Makes `records` durable in one transaction (all or none), then applies them in order.
async fn commit_all(shared: &Arc<Shared>, records: &[Record]) -> Result<(), Response<Body>> {
    let (id, effects) = shared.with_machine(|d, _| d.commit_all(records.to_vec()));
    let id = id.map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, e))?;
    execute(shared, effects).await;
    match shared.with_machine(|d, _| d.take_outcome(id)).0 {
        Some(Outcome::Applied) => {
            super::committed(shared, records);
            Ok(())
        }
        Some(Outcome::Failed(e)) => Err(error(StatusCode::SERVICE_UNAVAILABLE, format!("cannot save the change, nothing was changed: {e}"))),
        other => Err(error(StatusCode::INTERNAL_SERVER_ERROR, format!("the change ended unexpectedly: {other:?}"))),
    }
}

async fn create_catalog(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let body = match read_request_json(req).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let create: CreateCatalog = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")),
    };
    let name = match CatalogName::new(&create.name) {
        Ok(n) => n,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let (replicas, chunk_size) = (create.replicas.unwrap_or(DEFAULT_REPLICAS), create.chunk_size.unwrap_or(u64::from(DEFAULT_CHUNK_SIZE)));
    let origin = match create.origin.as_deref() {
        None if create.origin_interval.is_some() => return error(StatusCode::BAD_REQUEST, "origin_interval needs an origin"),
        None => None,
        Some(url) => match super::origins::check_origin(shared, url, create.origin_interval).await {
            Ok(o) => Some(o),
            Err(why) => return error(StatusCode::BAD_REQUEST, why),
        },
    };
    let plan = |d: &Directory| {
        d.plan_create_catalog(name.clone(), replicas, chunk_size, create.mutable, unix_now()).map(|mut record| {
            if let Record::Catalog(config) = &mut record {
                config.origin = origin.clone();
            }
            record
        })
    };
    if let Err(resp) = plan_and_commit(shared, plan).await {
        return resp;
    }
    shared.announce(What::CatalogCreated { catalog: name.to_string() });
    let view = shared.lock().catalogs().into_iter().find(|c| c.name == name);
    json(StatusCode::CREATED, &view)
}

async fn publish(shared: &Arc<Shared>, req: Request<Incoming>, catalog: &str, raw_path: &str) -> Response<Body> {
    let Ok(catalog) = CatalogName::new(catalog) else {
        return error(StatusCode::BAD_REQUEST, "malformed catalog name");
    };
    let path = match ArtifactPath::from_url(raw_path) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad artifact path: {e}")),
    };
    let Some(chunk_size) = shared.lock().catalog_config(&catalog).map(|c| c.chunk_size) else {
        return admin_error(&AdminError::UnknownCatalog(catalog));
    };
    let tags = query_tags(req.uri().query());
    let media_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 200 && !v.is_empty())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let (created, digest, size) = match ingest_and_publish(shared, &catalog, &path, chunk_size, media_type, tags, client::body_stream(req.into_body())).await {
        Ok(done) => done,
        Err(resp) => return resp,
    };
    let seq = shared.lock().catalogs().into_iter().find(|c| c.name == catalog).map_or(0, |c| c.seq);
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    json(status, &Published { catalog, path, digest, size, seq, created })
}

/// Stores `body` and publishes it under `path`: the one publish path, for uploads and origins.
/// `created` is false when the path already held exactly these bytes.
pub(super) async fn ingest_and_publish(
    shared: &Arc<Shared>,
    catalog: &CatalogName,
    path: &ArtifactPath,
    chunk_size: u32,
    media_type: String,
    tags: Vec<String>,
    body: odi_core::storage::ByteStream<'static>,
) -> Result<(bool, Digest, u64), Response<Body>> {
    // The bytes are durable under their digest before the log entry that names them.
    let manifest = match shared.store.ingest(chunk_size, body).await {
        Ok(m) => m,
        Err(StorageError::Input(e)) => return Err(error(StatusCode::BAD_REQUEST, format!("upload failed, nothing was published: {e}"))),
        Err(StorageError::Verify { source, .. }) => return Err(error(StatusCode::PAYLOAD_TOO_LARGE, source)),
        Err(e) => return Err(error(StatusCode::SERVICE_UNAVAILABLE, format!("cannot store the upload: {e}"))),
    };
    publish_ingested(shared, catalog, path, manifest, media_type, tags).await
}

/// The second half of `ingest_and_publish`: names bytes already durable in the store (as
/// `manifest`) at `path`; `(created, digest, size)`.
pub(super) async fn publish_ingested(
    shared: &Arc<Shared>,
    catalog: &CatalogName,
    path: &ArtifactPath,
    manifest: ChunkManifest,
    media_type: String,
    tags: Vec<String>,
) -> Result<(bool, Digest, u64), Response<Body>> {
    let (digest, size) = (manifest.digest(), manifest.total_len());
    let _writer = shared.write_lock().await;
    let planned = shared.lock().plan_publish_tagged(catalog, path.clone(), manifest, media_type, tags, unix_now());
    match planned {
        Ok(Some(record)) => {
            commit(shared, &record).await?;
            shared.announce(What::ArtifactPublished { catalog: catalog.to_string(), path: path.to_string(), digest: digest.to_string(), size });
            Ok((true, digest, size))
        }
        Ok(None) => Ok((false, digest, size)),
        Err(e) => Err(admin_error(&e)),
    }
}

pub(super) async fn expunge(shared: &Arc<Shared>, catalog: &str, raw_path: &str) -> Response<Body> {
    let Ok(catalog) = CatalogName::new(catalog) else {
        return error(StatusCode::BAD_REQUEST, "malformed catalog name");
    };
    let path = match ArtifactPath::from_url(raw_path) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad artifact path: {e}")),
    };
    let _writer = shared.write_lock().await;
    let planned = shared.lock().plan_expunge(&catalog, &path, unix_now());
    let record = match planned {
        Ok(r) => r,
        Err(e) => return admin_error(&e),
    };
    if let Err(resp) = commit(shared, &record).await {
        return resp;
    }
    let digest = match &record {
        Record::Log { entry: LogEntry { op: LogOp::ExpungePath { digest, .. }, .. }, .. } => Some(*digest),
        _ => None,
    };
    shared.announce(What::ArtifactExpunged { catalog: Some(catalog.to_string()), path: Some(path.to_string()), digest: digest.map(|d| d.to_string()) });
    // The names that still serve those bytes: an expunge by path withdraws only this one.
    let names = digest.map(|d| shared.lock().names_of(&d)).unwrap_or_default();
    json(StatusCode::OK, &PathExpunged { catalog, path, digest, still_named: names })
}

/// `DELETE /api/v1/blobs/sha256/{hex}`: bars the bytes from the directory, under every name.
async fn expunge_digest(shared: &Arc<Shared>, hex: &str) -> Response<Body> {
    let digest = match Digest::from_hex(hex) {
        Ok(d) => d,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let _writer = shared.write_lock().await;
    let (planned, names) = {
        let m = shared.lock();
        (m.plan_expunge_digest(digest, unix_now()), m.names_of(&digest))
    };
    let records = match planned {
        Ok(r) => r,
        Err(e) => return admin_error(&e),
    };
    let already = records.is_empty();
    if let Err(resp) = commit_all(shared, &records).await {
        return resp;
    }
    if !already {
        shared.announce(What::ArtifactExpunged { catalog: None, path: None, digest: Some(digest.to_string()) });
    }
    json(StatusCode::OK, &DigestExpunged { digest, expunged: names, already })
}

pub(super) async fn read_request_json(req: Request<Incoming>) -> Result<Bytes, Response<Body>> {
    match http_body_util::Limited::new(req.into_body(), MAX_REQUEST_JSON).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(error(StatusCode::PAYLOAD_TOO_LARGE, format!("request body over {MAX_REQUEST_JSON} bytes")))
        }
        Err(e) => Err(error(StatusCode::BAD_REQUEST, format!("cannot read request body: {e}"))),
    }
}

/// `POST /api/v1/links {peer, token, catalogs, tags}`: the handshake with the peer (its link
/// token), then the link stored here with the key the peer answered with.
async fn create_link(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let body = match read_request_json(req).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let create: CreateLink = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("malformed JSON, expected {{peer, token, catalogs, tags}}: {e}")),
    };
    let peer_url = create.peer.trim().trim_end_matches('/').to_owned();
    if let Err(e) = odi_core::message::RelayUrl::new(&peer_url) {
        return error(StatusCode::BAD_REQUEST, format!("peer URL `{}` {}", e.url, e.why));
    }
    let Some(own_url) = shared.public_url.get().cloned() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "this directory does not know its own URL yet");
    };
    if peer_url == own_url {
        return error(StatusCode::BAD_REQUEST, "a directory cannot link with itself");
    }
    let request = peers::LinkRequest { token: create.token, url: own_url, catalogs: create.catalogs.clone(), tags: create.tags.clone() };
    let answer = match peers::handshake(&shared.client, &shared.key, &peer_url, &request).await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(peer = %peer_url, error = %e, "link handshake failed");
            let status = match e {
                peers::HandshakeError::Unreachable { .. } => StatusCode::BAD_GATEWAY,
                peers::HandshakeError::BadToken { .. } => StatusCode::FORBIDDEN,
                _ => StatusCode::BAD_GATEWAY,
            };
            return error(status, e);
        }
    };
    if answer.id == shared.lock().id() {
        return error(StatusCode::BAD_REQUEST, format!("{peer_url} is this directory itself"));
    }
    let link = odi_core::federation::Link { peer: answer.id, url: peer_url.clone(), catalogs: create.catalogs.clone(), tags: create.tags.clone() };
    if let Err(resp) = plan_and_commit(shared, |d| d.plan_link(link)).await {
        return resp;
    }
    shared.announce(What::LinkAdded { peer: answer.id.to_string(), url: peer_url.clone() });
    tracing::info!(peer = %answer.id, url = %peer_url, "linked with a directory");
    json(StatusCode::CREATED, &LinkCreated { peer: answer.id, url: peer_url, catalogs: create.catalogs, tags: create.tags })
}

/// `DELETE /api/v1/links/{url or id}`.
async fn remove_link(shared: &Arc<Shared>, which: &str) -> Response<Body> {
    let which = percent_encoding::percent_decode_str(which).decode_utf8_lossy().trim().trim_end_matches('/').to_owned();
    let found = shared.lock().links().into_iter().find(|l| l.url == which || l.peer.to_string() == which.to_ascii_lowercase());
    let Some(link) = found else {
        return error(StatusCode::NOT_FOUND, format!("no link to `{which}`; `odi link ls` lists them"));
    };
    if let Err(resp) = plan_and_commit(shared, |d| d.plan_unlink(&link.peer)).await {
        return resp;
    }
    shared.announce(What::LinkRemoved { peer: link.peer.to_string(), url: link.url.clone() });
    tracing::info!(peer = %link.peer, url = %link.url, "removed a link");
    json(StatusCode::OK, &LinkRemoved { peer: link.peer, url: link.url })
}

/// `POST /api/v1/catalogs/{name}/tags {path, add, remove}`.
async fn change_tags(shared: &Arc<Shared>, req: Request<Incoming>, catalog: &str) -> Response<Body> {
    let Ok(catalog) = CatalogName::new(catalog) else {
        return error(StatusCode::BAD_REQUEST, "malformed catalog name");
    };
    let body = match read_request_json(req).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let change: ChangeTags = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("malformed JSON, expected {{path, add, remove}}: {e}")),
    };
    let path = match ArtifactPath::new(&change.path) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad artifact path: {e}")),
    };
    if let Err(resp) = plan_and_commit(shared, |d| d.plan_tag(&catalog, &path, change.add, change.remove, unix_now())).await {
        return resp;
    }
    let tags = shared.lock().lookup(catalog.as_str(), &path).map(|a| a.tags.clone()).unwrap_or_default();
    shared.announce(What::TagSet { catalog: catalog.to_string(), path: path.to_string(), tags: tags.clone() });
    json(StatusCode::OK, &Tagged { catalog, path, tags })
}

/// Tags given to `PUT .../artifacts/{path}?tag=A&tag=B`.
fn query_tags(query: Option<&str>) -> Vec<String> {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|kv| kv.strip_prefix("tag="))
        .map(|v| percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned())
        .collect()
}
