//! `odi directory --metadata` and `--blobs`: the stores a directory keeps its records and its
//! blobs in, when not the defaults in its data directory (SQLite and local files).

use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use odi_core::storage::{BlobStore, MetaStore};

/// The metadata store `spec` names: `None` for the default (`sqlite`, in the data directory).
pub(crate) async fn metadata(spec: Option<&str>) -> Result<Option<Arc<dyn MetaStore>>> {
    match spec {
        None | Some("sqlite") => Ok(None),
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => postgres(url).await,
        Some(other) => bail!("--metadata {}: expected `sqlite` or a postgres:// URL", shown(other)),
    }
}

#[cfg(feature = "postgres")]
async fn postgres(url: &str) -> Result<Option<Arc<dyn MetaStore>>> {
    let store = odi_storage::PostgresMeta::connect(url).await.context("--metadata: cannot use the PostgreSQL database")?;
    Ok(Some(Arc::new(store)))
}

#[cfg(not(feature = "postgres"))]
async fn postgres(_: &str) -> Result<Option<Arc<dyn MetaStore>>> {
    bail!("this odi was built without PostgreSQL support (cargo feature `postgres`)")
}

/// The blob store `spec` names: `None` for the default (`local`, in the data directory).
pub(crate) fn blobs(spec: Option<&str>) -> Result<Option<Arc<dyn BlobStore>>> {
    match spec {
        None | Some("local") => Ok(None),
        Some(url) if url.starts_with("s3://") => s3(url),
        Some(other) => bail!("--blobs {}: expected `local` or an s3://bucket[/prefix] URL", shown(other)),
    }
}

#[cfg(feature = "s3")]
fn s3(url: &str) -> Result<Option<Arc<dyn BlobStore>>> {
    let (bucket, endpoint) = match url.split_once('?') {
        None => (url, None),
        Some((bucket, query)) => match query.strip_prefix("endpoint=") {
            Some(endpoint) if !endpoint.is_empty() && !endpoint.contains('&') => (bucket, Some(endpoint)),
            _ => bail!("--blobs {}: the only option is ?endpoint=URL (an S3-compatible server)", shown(url)),
        },
    };
    if let Some(e) = endpoint
        && !(e.starts_with("http://") || e.starts_with("https://"))
    {
        bail!("--blobs: the endpoint {} is not an http:// or https:// URL", shown(e));
    }
    let store = odi_storage::ObjectBlobStore::s3(bucket, endpoint).context("--blobs: cannot use the S3 bucket")?;
    Ok(Some(Arc::new(store)))
}

#[cfg(not(feature = "s3"))]
fn s3(_: &str) -> Result<Option<Arc<dyn BlobStore>>> {
    bail!("this odi was built without S3 support (cargo feature `s3`)")
}

/// `text` for an error message: at most 200 characters, and never a password.
fn shown(text: &str) -> String {
    let text: String = text.chars().take(200).collect();
    if let Some((scheme, rest)) = text.split_once("://")
        && let Some(at) = rest.rfind('@')
    {
        let user = rest[..at].split(':').next().unwrap_or_default();
        return format!("{scheme}://{user}:***@{}", &rest[at + 1..]);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_defaults_and_bad_specs() {
        assert!(metadata(None).await.unwrap().is_none());
        assert!(metadata(Some("sqlite")).await.unwrap().is_none());
        let e = metadata(Some("mysql://root:hunter2@db/odi")).await.err().unwrap().to_string();
        assert_eq!(e, "--metadata mysql://root:***@db/odi: expected `sqlite` or a postgres:// URL");
        assert!(blobs(None).unwrap().is_none());
        assert!(blobs(Some("local")).unwrap().is_none());
        assert!(blobs(Some("gs://bucket")).err().unwrap().to_string().contains("expected `local` or an s3://"));
        assert!(blobs(Some("s3://bucket?region=x")).err().unwrap().to_string().contains("the only option is ?endpoint="));
        assert!(blobs(Some("s3://bucket?endpoint=ftp://x")).err().unwrap().to_string().contains("not an http://"));
    }
}
