//! Admin commands: talk to a directory's `/api/v1` with the admin token.

use std::path::Path;

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::Bytes;
use indicatif::ProgressBar;
use odi_client::admin::AdminClient;
use odi_core::api::Published;

/// A directory's admin API with the token the user gave; derefs to the typed client.
pub(crate) struct Admin {
    pub(crate) directory: String,
    client: AdminClient,
}

impl std::ops::Deref for Admin {
    type Target = AdminClient;
    fn deref(&self) -> &AdminClient {
        &self.client
    }
}

impl Admin {
    pub(crate) fn new(directory: &str, token: String) -> Self {
        let client = AdminClient::new(directory, token);
        Self { directory: client.directory().to_owned(), client }
    }

    /// Reads the token from `--token-file`, else `ODI_ADMIN_TOKEN`.
    pub(crate) fn from_env(directory: &str, token_file: Option<&Path>) -> Result<Self> {
        let token = match token_file {
            Some(path) => std::fs::read_to_string(path).with_context(|| format!("cannot read token file {}", path.display()))?,
            None => std::env::var("ODI_ADMIN_TOKEN")
                .map_err(|_| anyhow!("no admin token: set ODI_ADMIN_TOKEN or pass --token-file (the directory wrote one to admin.token in its data dir)"))?,
        };
        let token = token.trim().to_owned();
        if token.is_empty() {
            bail!("the admin token is empty");
        }
        Ok(Self::new(directory, token))
    }

    /// Streams a file to `PUT /api/v1/catalogs/{catalog}/artifacts/{path}` (`path` already
    /// percent-encoded), advancing `progress` by the bytes sent; `tags` go in the query.
    pub(crate) async fn publish_file(&self, catalog: &str, path: &str, tags: &[String], file: &Path, progress: &ProgressBar) -> Result<Published> {
        use futures_util::StreamExt as _;
        use http_body_util::BodyExt as _;
        use tokio::io::AsyncReadExt as _;

        let f = tokio::fs::File::open(file).await.with_context(|| format!("cannot open {}", file.display()))?;
        let stream = futures_util::stream::unfold((f, progress.clone()), |(mut f, progress)| async move {
            let mut buf = vec![0u8; 256 * 1024];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    progress.inc(n as u64);
                    Some((Ok(hyper::body::Frame::data(Bytes::from(buf))), (f, progress)))
                }
                Err(e) => Some((Err(Box::new(e) as odi_net::http::BoxError), (f, progress))),
            }
        });
        let body = http_body_util::StreamBody::new(stream.boxed()).boxed_unsync();
        Ok(self.client.publish(catalog, path, tags, media_type_for(path), body).await?)
    }
}

/// A few common release-artifact types; anything else is octet-stream.
fn media_type_for(path: &str) -> &'static str {
    let lower = path.to_ascii_lowercase();
    let table: &[(&str, &str)] = &[
        (".tar.gz", "application/gzip"),
        (".tgz", "application/gzip"),
        (".gz", "application/gzip"),
        (".xz", "application/x-xz"),
        (".zst", "application/zstd"),
        (".zip", "application/zip"),
        (".iso", "application/x-iso9660-image"),
        (".json", "application/json"),
        (".txt", "text/plain; charset=utf-8"),
        (".asc", "application/pgp-signature"),
        (".sig", "application/pgp-signature"),
        (".deb", "application/vnd.debian.binary-package"),
        (".rpm", "application/x-rpm"),
    ];
    table.iter().find(|(ext, _)| lower.ends_with(ext)).map_or("application/octet-stream", |(_, t)| t)
}

/// Percent-encodes each segment of an artifact path for a URL.
pub(crate) fn encode_path(path: &str) -> Result<String> {
    let p = odi_core::path::ArtifactPath::new(path).map_err(|e| anyhow!("bad artifact path `{path}`: {e}"))?;
    Ok(p.to_url().into_owned())
}
