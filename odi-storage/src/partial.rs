//! Partial downloads that survive a crash: one file per artifact, written chunk by chunk at each
//! chunk's offset.
//!
//! There is no journal to keep in step with the data: the file *is* the state. Reopening it
//! re-hashes every chunk it covers and keeps exactly those that match the manifest, so a crash
//! at any point (mid-chunk, before or after an fsync, before the rename) costs at most the chunks
//! that were not yet written, and can never leave a wrong chunk counted as done. Finishing
//! re-reads the whole file against the manifest before the atomic rename into place.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use odi_core::Digest;
use odi_core::manifest::{ChunkManifest, ManifestError};
use odi_core::storage::{Result, StorageError};
use sha2::{Digest as _, Sha256};

use crate::local::{io_error, sync_dir};

/// Bytes read at a time when re-verifying.
const READ_PIECE: usize = 1 << 20;

/// A partial file that is complete, durable and verified, waiting to be renamed into place.
#[derive(Debug)]
pub struct SealedPartial {
    path: PathBuf,
}

impl SealedPartial {
    /// Second half of `finish`: renames into `dest` and fsyncs its directory.
    pub async fn publish(self, dest: &Path) -> Result<()> {
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(io_error("create directory", parent))?;
        }
        tokio::fs::rename(&self.path, dest).await.map_err(io_error("rename partial file to", dest))?;
        if let Some(parent) = dest.parent() {
            sync_dir(parent).await?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
pub struct PartialFile {
    path: PathBuf,
    file: Arc<File>,
    manifest: Arc<ChunkManifest>,
}

impl PartialFile {
    /// Opens (or creates) the partial file at `path` for `manifest`, and returns it with the
    /// chunks it already holds verified.
    pub async fn open(path: impl Into<PathBuf>, manifest: ChunkManifest) -> Result<(Self, Vec<u64>)> {
        let path = path.into();
        let manifest = Arc::new(manifest);
        let (file, have) = {
            let (path, manifest) = (path.clone(), manifest.clone());
            blocking(move || {
                let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io_error("open partial file", &path))?;
                let len = file.metadata().map_err(io_error("inspect", &path))?.len();
                if len > manifest.total_len() {
                    file.set_len(manifest.total_len()).map_err(io_error("truncate", &path))?;
                }
                let have = verified_chunks(&file, &manifest, len.min(manifest.total_len())).map_err(io_error("read", &path))?;
                Ok((file, have))
            })
            .await?
        };
        Ok((Self { path, file: Arc::new(file), manifest }, have))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes chunk `index`. The caller passes only bytes it verified against the chunk's hash
    /// (the transfer machine does); this checks the length, and `seal` checks the whole file.
    pub async fn write_chunk(&self, index: u64, data: Bytes) -> Result<()> {
        let range =
            self.manifest.chunk_range(index).ok_or(StorageError::Verify { digest: self.manifest.digest(), source: ManifestError::ChunkMismatch { index } })?;
        if data.len() as u64 != range.end - range.start {
            return Err(StorageError::Verify { digest: self.manifest.digest(), source: ManifestError::ChunkMismatch { index } });
        }
        let offset = range.start;
        let (file, path) = (self.file.clone(), self.path.clone());
        blocking(move || file.write_all_at(&data, offset).map_err(io_error("write", &path))).await
    }

    /// Checks the whole file against the manifest, makes it durable, and renames it to `dest`
    /// (fsyncing `dest`'s directory). On a mismatch the partial file is removed.
    pub async fn finish(self, dest: &Path) -> Result<()> {
        self.seal().await?.publish(dest).await
    }

    /// First half of `finish`: sizes the file, fsyncs it, and re-reads all of it to check the
    /// whole-file SHA-256 (each chunk was checked as it arrived). On a mismatch the partial file
    /// is removed.
    pub async fn seal(self) -> Result<SealedPartial> {
        let (file, path, manifest) = (self.file.clone(), self.path.clone(), self.manifest.clone());
        blocking(move || {
            file.set_len(manifest.total_len()).map_err(io_error("size", &path))?;
            file.sync_all().map_err(io_error("fsync", &path))?;
            let mut whole = Sha256::new();
            let mut buf = vec![0u8; READ_PIECE];
            let mut offset = 0u64;
            while offset < manifest.total_len() {
                let n = file.read_at(&mut buf, offset).map_err(io_error("read", &path))?;
                if n == 0 {
                    break;
                }
                offset += n as u64;
                whole.update(&buf[..n]);
            }
            let got = Digest::from_bytes(whole.finalize().into());
            if offset != manifest.total_len() || got != manifest.digest() {
                let _ = std::fs::remove_file(&path);
                let source = if offset != manifest.total_len() {
                    ManifestError::Length { got: offset, expected: manifest.total_len() }
                } else {
                    ManifestError::DigestMismatch { got, expected: manifest.digest() }
                };
                return Err(StorageError::Verify { digest: manifest.digest(), source });
            }
            Ok(())
        })
        .await?;
        Ok(SealedPartial { path: self.path })
    }

    /// Removes the partial file.
    pub async fn discard(self) -> Result<()> {
        match tokio::fs::remove_file(&self.path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("remove", &self.path)(e)),
        }
    }
}

/// Chunks wholly inside the first `len` bytes whose hash matches.
fn verified_chunks(file: &File, manifest: &ChunkManifest, len: u64) -> std::io::Result<Vec<u64>> {
    let mut have = Vec::new();
    let mut buf = vec![0u8; manifest.chunk_size() as usize];
    for index in 0..manifest.chunk_count() {
        let Some(range) = manifest.chunk_range(index) else { break };
        if range.end > len {
            break;
        }
        let chunk = &mut buf[..(range.end - range.start) as usize];
        file.read_exact_at(chunk, range.start)?;
        if manifest.verify_chunk(index, chunk).is_ok() {
            have.push(index);
        }
    }
    Ok(have)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| StorageError::backend("local", format!("blocking task stopped: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use odi_core::manifest::MIN_CHUNK_SIZE;

    fn setup(len: usize) -> (tempfile::TempDir, Vec<u8>, ChunkManifest) {
        let data: Vec<u8> = (0..len).map(|i| (i * 13 % 251) as u8).collect();
        let m = ChunkManifest::of(&data, MIN_CHUNK_SIZE).unwrap();
        (tempfile::tempdir().unwrap(), data, m)
    }

    fn chunk(data: &[u8], m: &ChunkManifest, i: u64) -> Bytes {
        let r = m.chunk_range(i).unwrap();
        Bytes::copy_from_slice(&data[r.start as usize..r.end as usize])
    }

    #[tokio::test]
    async fn reopening_keeps_exactly_the_verified_chunks() {
        let (tmp, data, m) = setup(10 * MIN_CHUNK_SIZE as usize + 100);
        let path = tmp.path().join("p");
        let (p, have) = PartialFile::open(&path, m.clone()).await.unwrap();
        assert!(have.is_empty());
        for i in [0, 3, 4, 10] {
            p.write_chunk(i, chunk(&data, &m, i)).await.unwrap();
        }
        // A crash mid-chunk: half of chunk 7 written, the rest never arrived.
        let half = chunk(&data, &m, 7).slice(..100);
        OpenOptions::new().write(true).open(&path).unwrap().write_all_at(&half, m.chunk_range(7).unwrap().start).unwrap();
        // Disk damage in a chunk that was complete.
        let mut bad = chunk(&data, &m, 3).to_vec();
        bad[5] ^= 1;
        OpenOptions::new().write(true).open(&path).unwrap().write_all_at(&bad, m.chunk_range(3).unwrap().start).unwrap();
        drop(p);
        let (p, have) = PartialFile::open(&path, m.clone()).await.unwrap();
        assert_eq!(have, vec![0, 4, 10]);
        for i in (0..m.chunk_count()).filter(|i| !have.contains(i)) {
            p.write_chunk(i, chunk(&data, &m, i)).await.unwrap();
        }
        let dest = tmp.path().join("out/blob");
        p.finish(&dest).await.unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_wrong_chunk_never_reaches_the_disk_and_a_bad_file_is_never_published() {
        let (tmp, data, m) = setup(3 * MIN_CHUNK_SIZE as usize);
        let path = tmp.path().join("p");
        let (p, _) = PartialFile::open(&path, m.clone()).await.unwrap();
        assert!(matches!(p.write_chunk(1, Bytes::from_static(b"short")).await, Err(StorageError::Verify { .. })));
        // Bytes of the wrong chunk: right length, so only the whole-file check at seal sees it.
        p.write_chunk(1, chunk(&data, &m, 0)).await.unwrap();
        p.write_chunk(0, chunk(&data, &m, 0)).await.unwrap();
        let dest = tmp.path().join("blob");
        assert!(matches!(p.finish(&dest).await, Err(StorageError::Verify { .. })), "chunk 1 is wrong and chunk 2 missing");
        assert!(!dest.exists() && !path.exists());
    }

    #[tokio::test]
    async fn empty_artifacts_finish() {
        let (tmp, _, m) = setup(0);
        let (p, have) = PartialFile::open(tmp.path().join("p"), m).await.unwrap();
        assert!(have.is_empty());
        p.finish(&tmp.path().join("blob")).await.unwrap();
        assert_eq!(std::fs::read(tmp.path().join("blob")).unwrap(), b"");
    }
}
