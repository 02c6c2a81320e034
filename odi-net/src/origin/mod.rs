//! Origins: a catalog that mirrors a project's existing download tree (`--origin URL`).
//!
//! A sync lists the tree from its autoindex pages ([`listing`], recursively), reads the
//! checksum files it finds ([`checksums`]), downloads what the catalog does not have yet (or
//! what changed), checks each file against every checksum file that covers it, and publishes
//! the ones that match through a [`Publisher`] (the directory's normal publish path: hash,
//! chunk manifest, placement). A file whose checksum file disagrees with its bytes is not
//! published and is reported. Files gone from the origin stay in the catalog. Every request
//! goes through the SSRF-checked [`fetch::OriginFetcher`].

pub mod checksums;
pub mod fetch;
pub mod listing;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use futures_util::TryStreamExt as _;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;
use odi_core::Digest;
use odi_core::path::ArtifactPath;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::client::{self, HttpClient};
use crate::http::{Body, BoxError};
use crate::{NetError, client::read_json};
use fetch::OriginFetcher;

/// Files listed per sync at most.
pub const MAX_FILES: usize = 100_000;
/// Directory levels followed below the origin URL.
pub const MAX_DEPTH: usize = 32;
/// Largest listing page or checksum file read.
const MAX_PAGE: usize = 16 << 20;

/// One file of the origin's tree.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct OriginFile {
    /// Its path in the catalog: the path below the origin URL.
    pub path: String,
    pub url: String,
}

/// What a listing found.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    pub files: Vec<OriginFile>,
    /// For each path, the digests checksum files give it, with the checksum file's path.
    pub checksums: BTreeMap<String, Vec<(String, Digest)>>,
    /// Pages or checksum files that could not be read (the rest of the sync goes on).
    pub errors: Vec<String>,
}

pub use odi_core::api::SyncReport;

/// `root` with a trailing `/`.
fn dir_url(root: &str) -> String {
    if root.ends_with('/') { root.to_owned() } else { format!("{root}/") }
}

fn encode_segment(name: &str) -> String {
    percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC).to_string()
}

async fn read_page(fetcher: &OriginFetcher, url: &str) -> Result<String, NetError> {
    let (resp, _) = fetcher.request(Method::GET, url).await?;
    if resp.status() != StatusCode::OK {
        return Err(NetError::Status { status: resp.status(), reason: format!("{url}: not a listing") });
    }
    let body = client::read_body(resp.into_body(), MAX_PAGE).await?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// Lists the tree under `root` (an autoindex page), recursively.
pub async fn list(fetcher: &OriginFetcher, root: &str) -> Result<Listing, NetError> {
    walk(fetcher, String::new(), dir_url(root), true).await
}

/// Lists one directory of the tree: `prefix` (empty, or ending in `/`) below `root`, with the
/// checksum files in it. Enough to fetch one file on demand.
/// Checksum files in the directories above it are read too (a `SHA256SUMS` at the top often
/// covers the whole tree).
pub async fn list_dir(fetcher: &OriginFetcher, root: &str, prefix: &str) -> Result<Listing, NetError> {
    let segments: Vec<&str> = prefix.split_terminator('/').collect();
    let mut out = Listing::default();
    for depth in 0..=segments.len() {
        let here: String = segments[..depth].iter().map(|s| format!("{s}/")).collect();
        let encoded: String = segments[..depth].iter().map(|s| format!("{}/", encode_segment(s))).collect();
        let level = walk(fetcher, here, format!("{}{encoded}", dir_url(root)), false).await?;
        for (path, claims) in level.checksums {
            out.checksums.entry(path).or_default().extend(claims);
        }
        out.errors.extend(level.errors);
        if depth == segments.len() {
            out.files = level.files;
        }
    }
    Ok(out)
}

async fn walk(fetcher: &OriginFetcher, prefix: String, url: String, recursive: bool) -> Result<Listing, NetError> {
    let mut out = Listing::default();
    let mut queue = vec![(prefix, url, 0usize)];
    let mut first = true;
    while let Some((prefix, url, depth)) = queue.pop() {
        let html = match read_page(fetcher, &url).await {
            Ok(h) => h,
            Err(e) if first => return Err(e),
            Err(e) => {
                out.errors.push(format!("{url}: {e}"));
                continue;
            }
        };
        first = false;
        for entry in listing::parse(&html) {
            let path = format!("{prefix}{}", entry.name);
            if ArtifactPath::new(&path).is_err() {
                out.errors.push(format!("{url}: `{}` is not a valid artifact path; skipped", entry.name));
                continue;
            }
            let entry_url = format!("{url}{}", encode_segment(&entry.name));
            if entry.dir {
                if recursive && depth + 1 < MAX_DEPTH {
                    queue.push((format!("{path}/"), format!("{entry_url}/"), depth + 1));
                }
                continue;
            }
            if checksums::is_checksum_file(&entry.name) {
                match read_page(fetcher, &entry_url).await {
                    Ok(text) => {
                        for (name, digest) in checksums::parse(&entry.name, &text) {
                            out.checksums.entry(format!("{prefix}{name}")).or_default().push((path.clone(), digest));
                        }
                    }
                    Err(e) => out.errors.push(format!("{entry_url}: {e}")),
                }
            }
            if out.files.len() >= MAX_FILES {
                out.errors.push(format!("more than {MAX_FILES} files; the rest is left for later"));
                return Ok(out);
            }
            out.files.push(OriginFile { path, url: entry_url });
        }
    }
    out.files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Where a sync publishes: the directory's catalog.
pub trait Publisher: Sync {
    /// The catalog's paths now, with their digest and size.
    fn existing(&self) -> impl Future<Output = Result<BTreeMap<String, (Digest, u64)>, NetError>> + Send;
    /// Publishes the file at `file` (already checked) under `path`.
    fn publish(&self, path: &str, file: &Path) -> impl Future<Output = Result<(), NetError>> + Send;
}

/// Downloads `url` into `dest`, returning its SHA-256 and size.
async fn download(fetcher: &OriginFetcher, url: &str, dest: &Path) -> Result<(Digest, u64), NetError> {
    let (resp, _) = fetcher.request(Method::GET, url).await?;
    if resp.status() != StatusCode::OK {
        return Err(NetError::Status { status: resp.status(), reason: format!("{url}: the origin did not send the file") });
    }
    if let Some(dir) = dest.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(|e| NetError::io(format!("cannot create {}", dir.display()), e))?;
    }
    let mut file = tokio::fs::File::create(dest).await.map_err(|e| NetError::io(format!("cannot create {}", dest.display()), e))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut stream = client::body_stream(resp.into_body());
    while let Some(chunk) = stream.try_next().await.map_err(|e| NetError::Protocol(format!("{url}: {e}")))? {
        hasher.update(&chunk);
        size += chunk.len() as u64;
        file.write_all(&chunk).await.map_err(|e| NetError::io(format!("cannot write {}", dest.display()), e))?;
    }
    file.flush().await.map_err(|e| NetError::io("flush", e))?;
    let digest: [u8; 32] = hasher.finalize().into();
    Ok((Digest::from_hex(&hex::encode(digest)).map_err(|e| NetError::Protocol(e.to_string()))?, size))
}

/// One sync of `root` into `publisher`; downloads go through `work` (a scratch directory).
pub async fn sync(fetcher: &OriginFetcher, root: &str, publisher: &impl Publisher, work: &Path) -> Result<SyncReport, NetError> {
    let listing = list(fetcher, root).await?;
    let existing = publisher.existing().await?;
    let mut report = SyncReport::default();
    for e in &listing.errors {
        tracing::warn!(origin = %root, error = %e, "origin listing");
    }
    for file in &listing.files {
        sync_file(fetcher, &listing, file, existing.get(&file.path).copied(), publisher, work, &mut report).await;
    }
    Ok(report)
}

/// Fetches, checks and publishes one file of `listing` (on demand, or as part of a sync).
pub async fn sync_file(
    fetcher: &OriginFetcher,
    listing: &Listing,
    file: &OriginFile,
    existing: Option<(Digest, u64)>,
    publisher: &impl Publisher,
    work: &Path,
    report: &mut SyncReport,
) {
    let claims = listing.checksums.get(&file.path).map(Vec::as_slice).unwrap_or_default();
    let expected = claims.first().map(|(_, d)| *d);
    if let Some((source, other)) = claims.iter().find(|(_, d)| Some(*d) != expected) {
        let reason = format!("checksum files disagree: {} says {}, {source} says {other}; not published", claims[0].0, claims[0].1);
        tracing::warn!(path = %file.path, %reason, "origin file refused");
        report.refused.push((file.path.clone(), reason));
        return;
    }
    match (existing, expected) {
        (Some((have, _)), Some(want)) if have == want => {
            report.unchanged += 1;
            return;
        }
        (Some((_, size)), None) => match fetcher.request(Method::HEAD, &file.url).await {
            Ok((resp, _)) if content_length(&resp) == Some(size) => {
                report.unchanged += 1;
                return;
            }
            Ok(_) => {}
            Err(e) => {
                report.failed.push((file.path.clone(), e.to_string()));
                return;
            }
        },
        _ => {}
    }
    let dest: PathBuf = work.join(format!("origin-{}.part", hex::encode(Digest::of(file.path.as_bytes()).as_bytes())));
    let outcome = download(fetcher, &file.url, &dest).await;
    let result = match outcome {
        Err(e) => Err(("failed", e.to_string())),
        Ok((got, _)) if expected.is_some_and(|want| want != got) => Err((
            "refused",
            format!(
                "{} gives sha256:{} but the origin sent sha256:{}; not published",
                claims[0].0,
                expected.map(|d| d.to_hex()).unwrap_or_default(),
                got.to_hex()
            ),
        )),
        Ok((got, _)) if existing.is_some_and(|(have, _)| have == got) => {
            report.unchanged += 1;
            Ok(false)
        }
        Ok(_) => match publisher.publish(&file.path, &dest).await {
            Ok(()) => Ok(true),
            Err(NetError::Status { status, reason }) if status.is_client_error() => Err(("refused", format!("the catalog refused it: {reason}"))),
            Err(e) => Err(("failed", e.to_string())),
        },
    };
    let _ = tokio::fs::remove_file(&dest).await;
    match result {
        Ok(true) => {
            tracing::info!(path = %file.path, "published from the origin");
            report.published.push(file.path.clone());
        }
        Ok(false) => {}
        Err(("refused", reason)) => {
            tracing::warn!(path = %file.path, %reason, "origin file refused");
            report.refused.push((file.path.clone(), reason));
        }
        Err((_, reason)) => {
            tracing::warn!(path = %file.path, %reason, "origin file not fetched; trying again next sync");
            report.failed.push((file.path.clone(), reason));
        }
    }
}

fn content_length<B>(resp: &http::Response<B>) -> Option<u64> {
    resp.headers().get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// A [`Publisher`] that is a directory's admin API (`GET /api/v1/catalogs/{name}`,
/// `PUT /api/v1/catalogs/{name}/artifacts/{path}`): the same publish path as `odi publish`.
#[derive(Clone, Debug)]
pub struct AdminPublisher {
    pub client: HttpClient,
    /// The directory's base URL.
    pub directory: String,
    pub token: String,
    pub catalog: String,
}

impl Publisher for AdminPublisher {
    async fn existing(&self) -> Result<BTreeMap<String, (Digest, u64)>, NetError> {
        #[derive(serde::Deserialize)]
        struct Entry {
            path: String,
            digest: Digest,
            size: u64,
        }
        #[derive(serde::Deserialize)]
        struct CatalogListing {
            artifacts: Vec<Entry>,
        }
        let url = format!("{}/api/v1/catalogs/{}", self.directory.trim_end_matches('/'), self.catalog);
        let req = Request::get(&url)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .body(crate::http::empty())
            .map_err(|e| NetError::Config(e.to_string()))?;
        let listing: CatalogListing = read_json(self.client.send(req, std::time::Duration::from_secs(30)).await?).await?;
        Ok(listing.artifacts.into_iter().map(|e| (e.path, (e.digest, e.size))).collect())
    }

    async fn publish(&self, path: &str, file: &Path) -> Result<(), NetError> {
        let encoded = path.split('/').map(encode_segment).collect::<Vec<_>>().join("/");
        let url = format!("{}/api/v1/catalogs/{}/artifacts/{encoded}", self.directory.trim_end_matches('/'), self.catalog);
        let f = tokio::fs::File::open(file).await.map_err(|e| NetError::io(format!("cannot open {}", file.display()), e))?;
        let req = Request::put(&url)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .body(file_body(f))
            .map_err(|e| NetError::Config(e.to_string()))?;
        let _: serde_json::Value = read_json(self.client.send(req, std::time::Duration::from_secs(300)).await?).await?;
        Ok(())
    }
}

fn file_body(file: tokio::fs::File) -> Body {
    let frames = futures_util::stream::try_unfold(file, |mut file| async move {
        let mut buf = BytesMut::with_capacity(1 << 20);
        let n = file.read_buf(&mut buf).await?;
        Ok::<_, std::io::Error>((n > 0).then(|| (Frame::data(buf.freeze()), file)))
    });
    StreamBody::new(frames.map_err(|e| Box::new(e) as BoxError)).boxed_unsync()
}
