//! Origin catalogs (`odi catalog create --origin URL`): the directory pulls a project's
//! existing download tree through `crate::origin`, at start and every `origin_interval`, on
//! `POST /api/v1/catalogs/{name}/sync`, and on demand when a client asks for a path the catalog
//! does not have yet. Files are published through the same path as an upload
//! (`admin::ingest_and_publish`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{Response, StatusCode};
use http_body_util::BodyExt as _;
use odi_core::Digest;
use odi_core::catalog::{DEFAULT_ORIGIN_INTERVAL_SECS, OriginConfig};
use odi_core::directory::AdminError;
use odi_core::path::{ArtifactPath, CatalogName};
use odi_core::storage::StorageError;

use super::Shared;
use super::admin::{admin_error, ingest_and_publish};
use crate::NetError;
use crate::driver::Driver as _;
use crate::http::{Body, error, json};
use crate::origin::{self, fetch::OriginFetcher};

/// How often the schedule looks for origin catalogs that are due.
const SCHEDULE_TICK: Duration = Duration::from_secs(1);

/// Checks an origin URL as an admin gives it: its shape, and that the place it names may be
/// reached (no metadata or link-local address; loopback and private only with
/// `--allow-private-origins`).
pub(super) async fn check_origin(shared: &Shared, url: &str, interval: Option<u64>) -> Result<OriginConfig, String> {
    // A registry origin (`registry+https://...`) is pulled through, checked at its `/v2/`.
    let root = match odi_core::oci::upstream::Upstream::parse(url) {
        Some(upstream) => upstream?.fetch_root(),
        None => url.to_owned(),
    };
    let fetcher = OriginFetcher::new(&root, shared.allow_private_origins).map_err(|e| e.to_string())?;
    let uri: http::Uri = root.parse().map_err(|e| format!("origin {url}: {e}"))?;
    fetcher.check(&uri).await.map_err(|why| format!("origin refused: {why}"))?;
    let interval_secs = interval.unwrap_or(DEFAULT_ORIGIN_INTERVAL_SECS);
    if interval_secs == 0 {
        return Err("origin_interval must be at least 1 second".into());
    }
    Ok(OriginConfig { url: url.to_owned(), interval_secs })
}

/// Publishes origin files into one catalog of this directory, as an upload would.
struct LocalPublisher<'a> {
    shared: &'a Arc<Shared>,
    catalog: CatalogName,
    chunk_size: u32,
}

impl origin::Publisher for LocalPublisher<'_> {
    async fn existing(&self) -> Result<BTreeMap<String, (Digest, u64)>, NetError> {
        let m = self.shared.lock();
        Ok(m.artifacts(&self.catalog).into_iter().flatten().map(|a| (a.path.as_str().to_owned(), (a.digest(), a.size()))).collect())
    }

    async fn publish(&self, path: &str, file: &Path) -> Result<(), NetError> {
        let path = ArtifactPath::new(path).map_err(|e| NetError::Protocol(e.to_string()))?;
        let f = tokio::fs::File::open(file).await.map_err(|e| NetError::io(format!("cannot open {}", file.display()), e))?;
        let stream = futures_util::stream::try_unfold(f, |mut f| async move {
            use tokio::io::AsyncReadExt as _;
            let mut buf = bytes::BytesMut::with_capacity(1 << 20);
            let n = f.read_buf(&mut buf).await.map_err(|e| StorageError::Input(e.to_string()))?;
            Ok::<_, StorageError>((n > 0).then(|| (buf.freeze(), f)))
        });
        match ingest_and_publish(self.shared, &self.catalog, &path, self.chunk_size, "application/octet-stream".into(), Vec::new(), Box::pin(stream)).await {
            Ok(_) => Ok(()),
            Err(resp) => {
                let status = resp.status();
                let body = resp.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                Err(NetError::Status { status, reason: String::from_utf8_lossy(&body).trim().to_owned() })
            }
        }
    }
}

fn origin_of(shared: &Shared, catalog: &CatalogName) -> Option<(OriginConfig, u32)> {
    let m = shared.lock();
    let config = m.catalog_config(catalog)?;
    let origin = config.origin.clone()?;
    // A registry origin is pulled through by `/v2/` (`super::upstream`), never listed.
    is_tree(&origin).then_some((origin, config.chunk_size))
}

fn is_tree(origin: &OriginConfig) -> bool {
    odi_core::oci::upstream::Upstream::parse(&origin.url).is_none()
}

/// Syncs one origin catalog now (under the one-sync lock).
async fn run_sync(shared: &Arc<Shared>, catalog: &CatalogName, origin: &OriginConfig, chunk_size: u32) -> Result<origin::SyncReport, NetError> {
    let fetcher = OriginFetcher::new(&origin.url, shared.allow_private_origins)?;
    let _one = shared.origin_sync.lock().await;
    let publisher = LocalPublisher { shared, catalog: catalog.clone(), chunk_size };
    let report = origin::sync(&fetcher, &origin.url, &publisher, &shared.origin_work).await?;
    tracing::info!(
        catalog = %catalog,
        origin = %origin.url,
        published = report.published.len(),
        unchanged = report.unchanged,
        refused = report.refused.len(),
        failed = report.failed.len(),
        "origin synced"
    );
    Ok(report)
}

/// `POST /api/v1/catalogs/{name}/sync`: pull from the catalog's origin now; the answer is the
/// report (published, unchanged, refused with reasons, failed).
pub(super) async fn sync_now(shared: &Arc<Shared>, catalog: &CatalogName) -> Response<Body> {
    if shared.lock().catalog_config(catalog).is_none() {
        return admin_error(&AdminError::UnknownCatalog(catalog.clone()));
    }
    let Some((origin, chunk_size)) = origin_of(shared, catalog) else {
        let has_registry = shared.lock().catalog_config(catalog).is_some_and(|c| c.origin.is_some());
        return error(
            StatusCode::BAD_REQUEST,
            if has_registry {
                format!("catalog `{catalog}` pulls through from a registry on demand: there is nothing to sync")
            } else {
                format!("catalog `{catalog}` has no origin; create it with --origin URL")
            },
        );
    };
    match run_sync(shared, catalog, &origin, chunk_size).await {
        Ok(report) => json(StatusCode::OK, &report),
        Err(e) => error(StatusCode::BAD_GATEWAY, format!("cannot sync from {}: {e}", origin.url)),
    }
}

/// Syncs each origin catalog at start and then every `interval_secs`; runs until aborted.
pub(super) async fn origin_loop(shared: Arc<Shared>) {
    let mut last: BTreeMap<CatalogName, tokio::time::Instant> = BTreeMap::new();
    loop {
        let due: Vec<(CatalogName, OriginConfig, u32)> = {
            let m = shared.lock();
            m.catalog_names()
                .into_iter()
                .filter_map(|name| {
                    let c = m.catalog_config(&name)?;
                    let origin = c.origin.clone().filter(is_tree)?;
                    let is_due = last.get(&name).is_none_or(|t| t.elapsed() >= Duration::from_secs(origin.interval_secs));
                    is_due.then_some((name, origin, c.chunk_size))
                })
                .collect()
        };
        for (name, origin, chunk_size) in due {
            last.insert(name.clone(), tokio::time::Instant::now());
            if let Err(e) = run_sync(&shared, &name, &origin, chunk_size).await {
                tracing::warn!(catalog = %name, origin = %origin.url, error = %e, "scheduled origin sync failed");
            }
        }
        tokio::time::sleep(SCHEDULE_TICK).await;
    }
}

/// A client asked for a path an origin catalog does not have yet: fetch it from the origin (its
/// directory's listing and the checksum files above it, then the file), if the origin has it.
/// True if it was published. One fetch or sync at a time: unknown paths cannot make the
/// directory fetch more than that.
pub(super) async fn on_demand(shared: &Arc<Shared>, catalog: &str, path: &ArtifactPath) -> bool {
    let Ok(name) = CatalogName::new(catalog) else { return false };
    let Some((origin, chunk_size)) = origin_of(shared, &name) else { return false };
    let Ok(fetcher) = OriginFetcher::new(&origin.url, shared.allow_private_origins) else { return false };
    let _one = shared.origin_sync.lock().await;
    // Another request (or a sync) may have published it while this one waited.
    if shared.read().redirect(catalog, path, shared.now()).is_ok() {
        return true;
    }
    let p = path.as_str();
    let prefix = p.rfind('/').map_or("", |i| &p[..=i]);
    let listing = match origin::list_dir(&fetcher, &origin.url, prefix).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(catalog, origin = %origin.url, error = %e, "on-demand origin listing failed");
            return false;
        }
    };
    let Some(file) = listing.files.iter().find(|f| f.path == p) else { return false };
    let publisher = LocalPublisher { shared, catalog: name, chunk_size };
    let mut report = origin::SyncReport::default();
    origin::sync_file(&fetcher, &listing, file, None, &publisher, &shared.origin_work, &mut report).await;
    !report.published.is_empty()
}
