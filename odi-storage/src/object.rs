//! Content-addressed blobs in an object store (S3, GCS, Azure, or in memory for tests).
//!
//! Blobs live under `blobs/sha256/{64 hex digits}`. An object store makes a put visible all
//! at once, so a blob is put only after all of its bytes are in and verified. This adapter
//! buffers a blob in memory before putting it; multipart upload is the path for large blobs.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt, stream};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, WriteMultipart};
use odi_core::digest::Digest;
use odi_core::manifest::{ChunkManifest, ChunkVerifier};
use odi_core::storage::{BlobStore, ByteStream, GetResult, Result, StorageError, clamp_range};

use crate::hashing::ManifestHasher;

/// The store name used in errors.
const STORE: &str = "object store";
/// The folder every blob key starts with.
const PREFIX: &str = "blobs/sha256";
/// The folder uploads stream into before they are verified.
const TEMP: &str = "tmp";
/// Multipart parts being uploaded at once, per blob.
const PARTS_IN_FLIGHT: usize = 4;

/// Content-addressed blobs in any [`ObjectStore`].
#[derive(Debug)]
pub struct ObjectBlobStore {
    inner: Arc<dyn ObjectStore>,
}

impl ObjectBlobStore {
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self { inner: store }
    }

    /// Blobs in the S3 bucket at `url` (`s3://bucket` or `s3://bucket/prefix`), with region
    /// and credentials from the usual `AWS_*` environment variables and, for an S3-compatible
    /// server, its `endpoint` (`http://` allowed there). Blobs stream in as multipart uploads
    /// to `tmp/` and are copied create-only to their digest key once verified.
    #[cfg(feature = "s3")]
    pub fn s3(url: &str, endpoint: Option<&str>) -> Result<Self> {
        use object_store::aws::{AmazonS3Builder, S3ConditionalPut, S3CopyIfNotExists};
        let rest = url
            .strip_prefix("s3://")
            .filter(|r| !r.is_empty() && !r.starts_with('/'))
            .ok_or_else(|| StorageError::backend(STORE, format!("{url:?} is not an S3 URL; expected s3://bucket or s3://bucket/prefix")))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_copy_if_not_exists(S3CopyIfNotExists::Multipart);
        if let Some(endpoint) = endpoint {
            builder = builder.with_endpoint(endpoint).with_allow_http(endpoint.starts_with("http://")).with_virtual_hosted_style_request(false);
        }
        let s3 = builder.build().map_err(|e| StorageError::backend(STORE, format!("cannot use {url}: {e}")))?;
        let prefix = prefix.trim_matches('/');
        Ok(if prefix.is_empty() { Self::new(Arc::new(s3)) } else { Self::new(Arc::new(object_store::prefix::PrefixStore::new(s3, prefix))) })
    }

    /// The object store underneath.
    pub fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    fn key(digest: &Digest) -> Path {
        Path::from(format!("{PREFIX}/{}", digest.to_hex()))
    }

    /// A fresh key under `tmp/` for bytes on their way in: never a key `get` or `list` sees.
    fn temp_key() -> Path {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        Path::from(format!("{TEMP}/{nanos:x}-{:x}-{:x}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)))
    }

    /// Streams `body` to a temporary key as a multipart upload (parts of 5 MiB, a few in flight,
    /// never the whole blob in memory), passing every piece to `check` as it arrives; on any
    /// failure the upload is aborted and nothing is left.
    async fn receive(&self, mut body: ByteStream<'_>, mut check: impl FnMut(&Bytes) -> Result<()> + Send) -> Result<Path> {
        let temp = Self::temp_key();
        let fail = |e: object_store::Error| StorageError::backend(STORE, format!("cannot upload to {temp} in {}: {e}", self.inner));
        let mut upload = WriteMultipart::new(self.inner.put_multipart(&temp).await.map_err(fail)?);
        let outcome: Result<()> = async {
            while let Some(piece) = body.next().await {
                let piece = piece?;
                check(&piece)?;
                upload.wait_for_capacity(PARTS_IN_FLIGHT).await.map_err(fail)?;
                upload.put(piece);
            }
            Ok(())
        }
        .await;
        match outcome {
            Ok(()) => {
                upload.finish().await.map_err(fail)?;
                Ok(temp)
            }
            Err(e) => {
                if let Err(abort) = upload.abort().await {
                    tracing::warn!(key = %temp, "cannot abort an upload that failed: {abort}");
                }
                Err(e)
            }
        }
    }

    /// Makes verified bytes at `temp` visible under their digest, unless the blob is already
    /// there (a create-only copy), then removes `temp`.
    async fn commit(&self, digest: &Digest, temp: &Path) -> Result<()> {
        let key = Self::key(digest);
        let copied = match self.inner.copy_if_not_exists(temp, &key).await {
            Ok(()) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
            // A store without create-only copies: overwriting a blob with the same verified
            // bytes is harmless.
            Err(object_store::Error::NotImplemented { .. } | object_store::Error::NotSupported { .. }) => {
                self.inner.copy(temp, &key).await.map_err(|e| backend_error(digest, e))
            }
            Err(e) => Err(backend_error(digest, e)),
        };
        self.discard(temp).await;
        copied
    }

    /// Removes a temporary upload; a failure only leaves garbage under `tmp/`, so it is logged.
    async fn discard(&self, temp: &Path) {
        match self.inner.delete(temp).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => tracing::warn!(key = %temp, "cannot remove a temporary upload: {e}"),
        }
    }
}

#[async_trait]
impl BlobStore for ObjectBlobStore {
    async fn ingest(&self, chunk_size: u32, body: ByteStream<'_>) -> Result<ChunkManifest> {
        let mut builder = ManifestHasher::new(chunk_size).map_err(|e| StorageError::Input(format!("cannot ingest: {e}")))?;
        let temp = self.receive(body, |piece| builder.update(piece).map_err(|e| StorageError::Input(e.to_string()))).await?;
        let manifest = builder.finish();
        self.commit(&manifest.digest(), &temp).await?;
        Ok(manifest)
    }

    async fn put_verified(&self, manifest: &ChunkManifest, body: ByteStream<'_>) -> Result<()> {
        let digest = manifest.digest();
        match self.inner.head(&Self::key(&digest)).await {
            Ok(_) => return Ok(()),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(backend_error(&digest, e)),
        }
        let mut verifier = ChunkVerifier::new(manifest);
        let temp = self.receive(body, |piece| verifier.update(piece).map_err(|source| StorageError::Verify { digest, source })).await?;
        if let Err(source) = verifier.finish() {
            self.discard(&temp).await;
            return Err(StorageError::Verify { digest, source });
        }
        self.commit(&digest, &temp).await
    }

    async fn get(&self, digest: &Digest, range: Option<Range<u64>>) -> Result<GetResult> {
        let key = Self::key(digest);
        let (size, range) = match range {
            // The whole blob: one request, which also reports the size.
            None => (None, None),
            Some(range) => {
                let size = self.inner.head(&key).await.map_err(|e| object_error(digest, e))?.size;
                let range = clamp_range(Some(range), size)?;
                if range.is_empty() {
                    // Object stores refuse empty ranges; there is nothing to fetch anyway.
                    return Ok(GetResult { size, range, stream: Box::pin(stream::empty()) });
                }
                (Some(size), Some(GetRange::Bounded(range)))
            }
        };
        let options = GetOptions { range, ..GetOptions::default() };
        let result = self.inner.get_opts(&key, options).await.map_err(|e| object_error(digest, e))?;
        let size = size.unwrap_or(result.meta.size);
        let range = result.range.clone();
        let digest = *digest;
        let stream = result.into_stream().map_err(move |e| backend_error(&digest, e));
        Ok(GetResult { size, range, stream: Box::pin(stream) })
    }

    async fn size(&self, digest: &Digest) -> Result<u64> {
        let meta = self.inner.head(&Self::key(digest)).await.map_err(|e| object_error(digest, e))?;
        Ok(meta.size)
    }

    async fn delete(&self, digest: &Digest) -> Result<()> {
        match self.inner.delete(&Self::key(digest)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(backend_error(digest, e)),
        }
    }

    async fn list(&self) -> Result<Vec<(Digest, u64)>> {
        let prefix = Path::from(PREFIX);
        let metas: Vec<_> = self
            .inner
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| StorageError::backend(STORE, format!("cannot list {prefix} in {}: {e}", self.inner)))?;
        let mut found: Vec<_> = metas
            .into_iter()
            .filter_map(|meta| {
                let digest = Digest::from_hex(meta.location.filename()?).ok()?;
                // Only keys `get` would find: nothing nested deeper under the prefix.
                (meta.location == Self::key(&digest)).then_some((digest, meta.size))
            })
            .collect();
        found.sort_unstable_by_key(|(digest, _)| *digest);
        Ok(found)
    }
}

impl fmt::Display for ObjectBlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "object store {}", self.inner)
    }
}

/// Maps an object store's "not found" to ours, and anything else to a backend failure.
fn object_error(digest: &Digest, e: object_store::Error) -> StorageError {
    match e {
        object_store::Error::NotFound { .. } => StorageError::NotFound { store: STORE, digest: *digest },
        e => backend_error(digest, e),
    }
}

fn backend_error(digest: &Digest, e: object_store::Error) -> StorageError {
    StorageError::backend(STORE, format!("blob {digest}: {e}"))
}

#[cfg(test)]
mod tests {
    use object_store::PutPayload;
    use object_store::memory::InMemory;

    use super::*;
    use crate::conformance;

    fn in_memory() -> (ObjectBlobStore, ()) {
        (ObjectBlobStore::new(Arc::new(InMemory::new())), ())
    }

    crate::conformance_tests!(object_conformance, in_memory());

    #[tokio::test]
    async fn blobs_live_under_their_key() {
        let inner = Arc::new(InMemory::new());
        let store = ObjectBlobStore::new(inner.clone());
        let data = conformance::sample(5000, 2);
        let manifest = store.ingest(4096, conformance::body(&data, 700)).await.unwrap();
        let key = Path::from(format!("blobs/sha256/{}", manifest.digest().to_hex()));
        assert_eq!(inner.get(&key).await.unwrap().bytes().await.unwrap(), data);
    }

    #[tokio::test]
    async fn list_ignores_foreign_keys() {
        let inner = Arc::new(InMemory::new());
        let store = ObjectBlobStore::new(inner.clone());
        let data = conformance::sample(10, 1);
        let manifest = store.ingest(4096, conformance::body(&data, 3)).await.unwrap();
        let hex = Digest::of(b"other").to_hex();
        for key in ["blobs/sha256/README".to_owned(), format!("blobs/sha256/nested/{hex}"), format!("elsewhere/{hex}")] {
            inner.put(&Path::from(key), PutPayload::from_static(b"x")).await.unwrap();
        }
        assert_eq!(store.list().await.unwrap(), vec![(manifest.digest(), 10)]);
    }

    /// Every upload leaves nothing behind under `tmp/`, whether it was kept or refused.
    #[tokio::test]
    async fn uploads_leave_no_temporary_keys() {
        let inner = Arc::new(InMemory::new());
        let store = ObjectBlobStore::new(inner.clone());
        let data = conformance::sample(300_000, 3);
        let manifest = store.ingest(65536, conformance::body(&data, 7000)).await.unwrap();
        let mut wrong = data.clone();
        wrong[100_000] ^= 1;
        let other = ChunkManifest::of(&conformance::sample(300_000, 4), 65536).unwrap();
        store.put_verified(&other, conformance::body(&wrong, 7000)).await.unwrap_err();
        store.ingest(65536, conformance::failing_body(&data, 7000)).await.unwrap_err();
        let keys: Vec<String> = inner.list(None).map_ok(|m| m.location.to_string()).try_collect().await.unwrap();
        assert_eq!(keys, vec![format!("blobs/sha256/{}", manifest.digest().to_hex())]);
    }

    #[test]
    fn display_names_the_inner_store() {
        let (store, ()) = in_memory();
        assert_eq!(store.to_string(), "object store InMemory");
    }
}

/// A throwaway S3 server for tests: PyPI `moto[server]`'s `moto_server` on a free loopback
/// port, with one empty bucket, killed when dropped.
#[cfg(any(test, feature = "conformance"))]
pub mod testing {
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    /// A running `moto_server`.
    pub struct Moto {
        child: Child,
        /// Its URL, `http://127.0.0.1:{port}`: the S3 endpoint to give a client.
        pub endpoint: String,
    }

    impl Drop for Moto {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Moto {
        /// Starts moto with the empty bucket `bucket`, or returns `None` (after saying why) when
        /// it is not installed; under `CI` a missing moto fails instead. moto takes any
        /// credentials, but S3 clients need some: `AWS_ACCESS_KEY_ID=testing`,
        /// `AWS_SECRET_ACCESS_KEY=testing`, `AWS_REGION=us-east-1` will do.
        pub fn start(bucket: &str) -> Option<Self> {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let child = match Command::new("moto_server").args(["-H", "127.0.0.1", "-p", &port.to_string()]).stdout(Stdio::null()).stderr(Stdio::null()).spawn()
            {
                Ok(child) => child,
                Err(e) => {
                    let why = format!("cannot run moto_server ({e}); python3 -m pip install 'moto[server]' (scripts/test does it)");
                    assert!(std::env::var_os("CI").is_none(), "{why}");
                    eprintln!("skipped: {why}");
                    return None;
                }
            };
            let moto = Self { child, endpoint: format!("http://127.0.0.1:{port}") };
            let deadline = Instant::now() + Duration::from_secs(30);
            // Creating the bucket (an unsigned PUT, which moto accepts) is also the readiness probe.
            loop {
                let made = Command::new("curl").args(["-sf", "-X", "PUT", &format!("{}/{bucket}", moto.endpoint)]).stdout(Stdio::null()).status();
                if made.map(|s| s.success()).unwrap_or(false) {
                    return Some(moto);
                }
                assert!(Instant::now() < deadline, "moto_server did not answer on {} within 30 s", moto.endpoint);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// The blob conformance suite against S3 as `moto_server` serves it, started by the test on a
/// free loopback port (PyPI `moto[server]`).
#[cfg(all(test, feature = "s3"))]
mod s3_tests {
    use super::testing::Moto;
    use super::*;

    fn s3_store() -> Option<(ObjectBlobStore, Moto)> {
        let moto = Moto::start("odi-blobs")?;
        let store = ObjectBlobStore::s3("s3://odi-blobs/some/prefix", Some(&moto.endpoint)).unwrap();
        Some((store, moto))
    }

    /// moto accepts any credentials; the builder needs some.
    fn set_credentials() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: set once, before any store reads them, and never changed after.
            unsafe {
                std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
                std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
                std::env::set_var("AWS_REGION", "us-east-1");
            }
        });
    }

    // A machine without moto skips (and fails under CI, in `moto`).
    crate::conformance_tests!(s3_conformance, {
        set_credentials();
        let Some(store) = s3_store() else { return };
        store
    });

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_blob_streams_in_parts_under_the_prefix() {
        set_credentials();
        let Some((store, moto)) = s3_store() else { return };
        // 12 MiB: three multipart parts.
        let data = crate::conformance::sample(12 << 20, 9);
        let manifest = store.ingest(1 << 20, crate::conformance::body(&data, 256 << 10)).await.unwrap();
        assert_eq!(crate::conformance::read(&store, &manifest.digest(), None).await.unwrap(), data);
        let bare = ObjectBlobStore::s3("s3://odi-blobs", Some(&moto.endpoint)).unwrap();
        let keys: Vec<String> = bare.inner().list(None).map_ok(|m| m.location.to_string()).try_collect().await.unwrap();
        assert_eq!(keys, vec![format!("some/prefix/blobs/sha256/{}", manifest.digest().to_hex())]);
    }

    #[test]
    fn a_bad_s3_url_is_one_clear_error() {
        let err = ObjectBlobStore::s3("http://bucket", None).unwrap_err();
        assert!(err.to_string().contains("is not an S3 URL"), "{err}");
    }
}
