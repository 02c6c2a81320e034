//! Pull-through from an upstream registry (`odi catalog create NAME --origin
//! registry+https://host[:port][/prefix]`): a manifest the catalog does not have is fetched from
//! the upstream on first pull, a blob on the first pull that asks for it. The upstream is
//! trusted for nothing but availability:
//!
//! - a manifest asked for by digest is kept only if its bytes hash to it; one asked for by tag
//!   only if its bytes hash to the `Docker-Content-Digest` the upstream states (when it states
//!   one), and it is kept under the digest of its bytes;
//! - a blob is fetched only if a manifest this repository holds names it, and kept only if its
//!   size and digest are the descriptor's. It is then published like a pushed blob, so relays
//!   distribute it;
//! - every request goes through the SSRF-checked [`OriginFetcher`] (`--allow-private-origins`
//!   for a registry on a private address), with an anonymous `Bearer` token when the upstream
//!   asks for one (`WWW-Authenticate: Bearer realm=...`).

use std::sync::Arc;

use futures_util::StreamExt as _;
use http::{Method, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use odi_core::Digest;
use odi_core::oci::upstream::{BearerChallenge, MANIFEST_ACCEPT, Upstream, verify_manifest};
use odi_core::oci::{self, ManifestInfo, Reference, RepoName};
use odi_core::storage::{ByteStream, StorageError};

use super::Shared;
use super::admin::ingest_and_publish;
use super::oci::{publish_file, write_body};
use crate::driver::Driver as _;
use crate::origin::fetch::OriginFetcher;

/// The upstream registry of `repo`'s catalog, if its origin is one.
pub(super) fn upstream_of(shared: &Shared, repo: &RepoName) -> Option<Upstream> {
    let m = shared.lock();
    let origin = m.catalog_config(repo.catalog())?.origin.clone()?;
    Upstream::parse(&origin.url)?.ok()
}

/// `GET url` on the upstream, with the anonymous token flow if it answers `401` with a `Bearer`
/// challenge.
async fn get(fetcher: &OriginFetcher, upstream: &Upstream, repo: &RepoName, url: &str, accept: Option<&str>) -> Result<Response<Incoming>, String> {
    let (resp, _) = fetcher.request_with(Method::GET, url, accept, None).await.map_err(|e| e.to_string())?;
    if resp.status() != StatusCode::UNAUTHORIZED {
        return Ok(resp);
    }
    let Some(challenge) = resp.headers().get(header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).and_then(BearerChallenge::parse) else {
        return Err(format!("{url}: the upstream asks for credentials other than an anonymous Bearer token (401)"));
    };
    let token_url = challenge.token_url(&upstream.scope(repo));
    let (resp, _) = fetcher.request(Method::GET, &token_url).await.map_err(|e| format!("token service: {e}"))?;
    if resp.status() != StatusCode::OK {
        return Err(format!("{token_url}: the token service answered {}", resp.status()));
    }
    #[derive(serde::Deserialize)]
    struct TokenAnswer {
        token: Option<String>,
        access_token: Option<String>,
    }
    let body = crate::client::read_body(resp.into_body(), 64 << 10).await.map_err(|e| format!("{token_url}: {e}"))?;
    let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|e| format!("{token_url}: not a token answer: {e}"))?;
    let token = answer.token.or(answer.access_token).ok_or_else(|| format!("{token_url}: the answer has no token"))?;
    let (resp, _) = fetcher.request_with(Method::GET, url, accept, Some(&token)).await.map_err(|e| e.to_string())?;
    Ok(resp)
}

fn fetcher_for(shared: &Shared, upstream: &Upstream) -> Result<OriginFetcher, String> {
    OriginFetcher::new(&upstream.fetch_root(), shared.allow_private_origins).map_err(|e| e.to_string())
}

/// Fetches `reference` of `repo` from the upstream, checks it and publishes it (under its
/// digest, and under the tag when it was asked for by tag). `Ok(false)`: the upstream does not
/// have it.
pub(super) async fn pull_manifest(shared: &Arc<Shared>, upstream: &Upstream, repo: &RepoName, reference: &Reference) -> Result<bool, String> {
    let fetcher = fetcher_for(shared, upstream)?;
    let _one = shared.oci_uploads.fetching.lock().await;
    if shared.lock().lookup(repo.catalog().as_str(), &super::oci::manifest_path(repo, reference)).is_ok() {
        return Ok(true);
    }
    let url = upstream.manifest_url(repo, reference);
    let resp = get(&fetcher, upstream, repo, &url, Some(MANIFEST_ACCEPT)).await?;
    match resp.status() {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => return Ok(false),
        s => return Err(format!("{url}: the upstream answered {s}")),
    }
    let content_type = resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let stated = resp.headers().get(super::oci::CONTENT_DIGEST).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = crate::client::read_body(resp.into_body(), oci::MAX_MANIFEST_LEN).await.map_err(|e| format!("{url}: {e}"))?;
    let digest = verify_manifest(&body, reference, stated.as_deref()).map_err(|e| format!("{url}: {e}; not kept"))?;
    let info = ManifestInfo::parse(&body, content_type.as_deref()).map_err(|e| format!("{url}: {}; not kept", e.message))?;
    let Some(chunk_size) = shared.lock().catalog_config(repo.catalog()).map(|c| c.chunk_size) else {
        return Err(format!("no catalog `{}`", repo.catalog()));
    };
    let mut paths = vec![repo.manifest_path(&digest)];
    if let Reference::Tag(tag) = reference {
        paths.push(repo.tag_path(tag));
    }
    for path in paths {
        let stream: ByteStream<'static> = Box::pin(futures_util::stream::once(std::future::ready(Ok(body.clone()))));
        if let Err(resp) = ingest_and_publish(shared, repo.catalog(), &path, chunk_size, info.media_type.clone(), Vec::new(), stream).await {
            let text = resp.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
            return Err(format!("cannot publish it: {}", String::from_utf8_lossy(&text).trim()));
        }
    }
    tracing::info!(%repo, %url, digest = %digest, "pulled a manifest through from the upstream");
    Ok(true)
}

/// The descriptor of blob `digest` in one of `repo`'s manifests, if one names it.
async fn descriptor(shared: &Arc<Shared>, repo: &RepoName, digest: &Digest) -> Option<oci::Descriptor> {
    let wanted = oci::digest_string(digest);
    for (manifest, _) in super::oci::repo_manifests(shared, repo) {
        let Some(info) = super::oci::read_manifest(shared, &manifest).await else { continue };
        if let Some(d) = info.blobs.into_iter().find(|d| d.digest == wanted) {
            return Some(d);
        }
    }
    None
}

/// Fetches blob `digest` of `repo` from the upstream if one of `repo`'s manifests names it;
/// kept only if its size and digest are the descriptor's. Whether the blob is now held.
pub(super) async fn pull_blob(shared: &Arc<Shared>, repo: &RepoName, digest: &Digest) -> bool {
    let Some(upstream) = upstream_of(shared, repo) else { return false };
    let Some(descriptor) = descriptor(shared, repo, digest).await else { return false };
    let fetcher = match fetcher_for(shared, &upstream) {
        Ok(f) => f,
        Err(_) => return false,
    };
    let _one = shared.oci_uploads.fetching.lock().await;
    if shared.lock().lookup(repo.catalog().as_str(), &repo.blob_path(digest)).is_ok() {
        return true;
    }
    let url = upstream.blob_url(repo, digest);
    let resp = match get(&fetcher, &upstream, repo, &url, None).await {
        Ok(r) if r.status() == StatusCode::OK => r,
        Ok(r) => {
            tracing::warn!(%url, status = %r.status(), "the upstream did not serve a blob");
            return false;
        }
        Err(e) => {
            tracing::warn!(%url, error = %e, "the upstream is unreachable");
            return false;
        }
    };
    let Ok(id) = shared.oci_uploads.create(repo).await else { return false };
    let path = shared.oci_uploads.data(&id);
    // At most one byte more than the descriptor says: enough to know the upstream lies.
    let body = http_body_util::Limited::new(resp.into_body(), usize::try_from(descriptor.size.saturating_add(1)).unwrap_or(usize::MAX));
    let stream: ByteStream<'static> = Box::pin(http_body_util::BodyStream::new(body).filter_map(|frame| async move {
        match frame {
            Ok(frame) => frame.into_data().ok().map(Ok),
            Err(e) => Some(Err(StorageError::Input(e.to_string()))),
        }
    }));
    let held = match write_body(&path, 0, stream).await {
        Ok(n) if n == descriptor.size => match publish_file(shared, repo, &path, digest, n).await {
            Ok(()) => {
                tracing::info!(%repo, %url, size = n, "pulled a blob through from the upstream; its digest matched");
                true
            }
            Err(_) => {
                tracing::warn!(%repo, %url, "the upstream served bytes that do not match the blob's digest; not kept");
                false
            }
        },
        Ok(n) => {
            tracing::warn!(%repo, %url, got = n, expected = descriptor.size, "the upstream served the wrong size; not kept");
            false
        }
        Err(e) => {
            tracing::warn!(%repo, %url, error = %e.message, "the upstream failed mid-blob; not kept");
            false
        }
    };
    shared.oci_uploads.remove(&id).await;
    held
}
