//! Content-addressed blobs in an object store (S3, GCS, Azure, or in memory for tests).
//!
//! Blobs live under `blobs/sha256/{64 hex digits}`. An object store makes a put visible all
//! at once, so a blob is put only after all of its bytes are in and verified. This adapter
//! buffers a blob in memory before putting it; multipart upload is the path for large blobs.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt, stream};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use odi_core::digest::Digest;
use odi_core::manifest::{ChunkManifest, ChunkVerifier, ManifestBuilder};
use odi_core::storage::{BlobStore, ByteStream, GetResult, Result, StorageError, clamp_range};

/// The store name used in errors.
const STORE: &str = "object store";
/// The folder every blob key starts with.
const PREFIX: &str = "blobs/sha256";

/// Content-addressed blobs in any [`ObjectStore`].
#[derive(Debug)]
pub struct ObjectBlobStore {
    inner: Arc<dyn ObjectStore>,
}

impl ObjectBlobStore {
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self { inner: store }
    }

    /// The object store underneath.
    pub fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    fn key(digest: &Digest) -> Path {
        Path::from(format!("{PREFIX}/{}", digest.to_hex()))
    }

    /// Collects `body`, passing every piece to `check` as it arrives.
    async fn receive(mut body: ByteStream<'_>, mut check: impl FnMut(&[u8]) -> Result<()> + Send) -> Result<Vec<Bytes>> {
        let mut pieces = Vec::new();
        while let Some(piece) = body.next().await {
            let piece = piece?;
            check(&piece)?;
            pieces.push(piece);
        }
        Ok(pieces)
    }

    /// Puts a verified blob, unless it is already there.
    async fn commit(&self, digest: &Digest, pieces: Vec<Bytes>) -> Result<()> {
        let key = Self::key(digest);
        let payload: PutPayload = pieces.into_iter().collect();
        match self.inner.put_opts(&key, payload.clone(), PutOptions::from(PutMode::Create)).await {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
            // A store without create-only puts: overwriting a blob with the same verified
            // bytes is harmless.
            Err(object_store::Error::NotImplemented { .. }) => {
                self.inner.put(&key, payload).await.map_err(|e| backend_error(digest, e))?;
                Ok(())
            }
            Err(e) => Err(backend_error(digest, e)),
        }
    }
}

#[async_trait]
impl BlobStore for ObjectBlobStore {
    async fn ingest(&self, chunk_size: u32, body: ByteStream<'_>) -> Result<ChunkManifest> {
        let mut builder = ManifestBuilder::new(chunk_size).map_err(|e| StorageError::Input(format!("cannot ingest: {e}")))?;
        let pieces = Self::receive(body, |piece| builder.update(piece).map_err(|e| StorageError::Input(e.to_string()))).await?;
        let manifest = builder.finish();
        self.commit(&manifest.digest(), pieces).await?;
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
        let pieces = Self::receive(body, |piece| verifier.update(piece).map_err(|source| StorageError::Verify { digest, source })).await?;
        verifier.finish().map_err(|source| StorageError::Verify { digest, source })?;
        self.commit(&digest, pieces).await
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

    #[test]
    fn display_names_the_inner_store() {
        let (store, ()) = in_memory();
        assert_eq!(store.to_string(), "object store InMemory");
    }
}
