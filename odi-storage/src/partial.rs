//! Partial downloads that survive a crash: one file per artifact, written chunk by chunk at each
//! chunk's offset.
//!
//! There is no journal to keep in step with the data: the file *is* the state. Reopening it
//! re-hashes every chunk it covers and keeps exactly those that match the manifest, so a crash
//! at any point (mid-chunk, before or after an fsync, before the rename) costs at most the chunks
//! that were not yet written, and can never leave a wrong chunk counted as done.
//!
//! Finishing checks the whole-file SHA-256 before the atomic rename into place. For a download
//! that started from nothing, that digest is computed from the chunks as they are written, in
//! order (a chunk that arrives early waits in memory for the ones before it, up to a bound); a
//! resumed download, or one whose chunks came too far out of order, re-reads the file instead.
//! Each write also starts the disk's write-back of its range, so the final fsync waits for the
//! last writes only, not for the whole file.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use odi_core::Digest;
use odi_core::manifest::{ChunkManifest, ManifestError};
use odi_core::storage::{Result, StorageError};
use sha2::{Digest as _, Sha256};

use crate::local::{io_error, sync_dir};
use crate::sums::{BlockSums, SumsBuilder};

/// Bytes read at a time when re-verifying.
const READ_PIECE: usize = 1 << 20;
/// Bytes of chunks written ahead of the whole-file hash that may wait in memory for it; past
/// this, `seal` re-reads the file instead. Twice what the transfer engine keeps in flight with
/// 1 MiB chunks, so in-order-enough downloads never hit it, and bounded per download.
const AHEAD_LIMIT: u64 = 32 << 20;

/// A partial file that is complete, durable and verified, waiting to be renamed into place.
#[derive(Debug)]
pub struct SealedPartial {
    path: PathBuf,
    /// Block sums of the bytes whose whole-file SHA-256 matched (see `crate::sums`).
    sums: BlockSums,
}

impl SealedPartial {
    /// The block sums of the sealed bytes (a store writes them before publishing the blob).
    pub fn sums(&self) -> &BlockSums {
        &self.sums
    }

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
    running: Arc<Mutex<RunningHash>>,
}

/// The whole-file SHA-256 of the chunks written so far, fed in order.
struct RunningHash {
    /// `None` once it cannot cover the whole file (resumed, or too far out of order).
    hasher: Option<Sha256>,
    /// The block sums of the same in-order stream.
    sums: SumsBuilder,
    /// The next chunk to feed it.
    next: u64,
    /// Chunks written ahead of `next`, waiting for it.
    ahead: BTreeMap<u64, Bytes>,
    ahead_bytes: u64,
}

impl RunningHash {
    fn new(from_start: bool) -> Self {
        Self { hasher: from_start.then(Sha256::new), sums: SumsBuilder::new(), next: 0, ahead: BTreeMap::new(), ahead_bytes: 0 }
    }

    /// Takes chunk `index`, just written; feeds it and any chunks waiting behind it.
    fn written(&mut self, index: u64, data: Bytes) {
        let Some(hasher) = &mut self.hasher else { return };
        if index < self.next {
            return;
        }
        if index > self.next {
            self.ahead_bytes += data.len() as u64;
            if let Some(old) = self.ahead.insert(index, data) {
                self.ahead_bytes -= old.len() as u64;
            }
            if self.ahead_bytes > AHEAD_LIMIT {
                *self = Self::new(false);
            }
            return;
        }
        hasher.update(&data);
        self.sums.update(&data);
        self.next += 1;
        while let Some(data) = self.ahead.remove(&self.next) {
            self.ahead_bytes -= data.len() as u64;
            hasher.update(&data);
            self.sums.update(&data);
            self.next += 1;
        }
    }

    /// The whole-file digest and block sums, if every one of `chunks` chunks was fed.
    fn finish(&mut self, chunks: u64) -> Option<(Digest, BlockSums)> {
        if self.next != chunks {
            return None;
        }
        let digest = Digest::from_bytes(self.hasher.take()?.finalize().into());
        Some((digest, std::mem::take(&mut self.sums).finish()))
    }
}

impl std::fmt::Debug for RunningHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningHash").field("hashing", &self.hasher.is_some()).field("next", &self.next).field("ahead", &self.ahead.len()).finish()
    }
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
        let running = Arc::new(Mutex::new(RunningHash::new(have.is_empty())));
        Ok((Self { path, file: Arc::new(file), manifest, running }, have))
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
        let (file, path, running) = (self.file.clone(), self.path.clone(), self.running.clone());
        blocking(move || {
            file.write_all_at(&data, offset).map_err(io_error("write", &path))?;
            start_writeback(&file, offset, data.len() as u64);
            running.lock().unwrap_or_else(PoisonError::into_inner).written(index, data);
            Ok(())
        })
        .await
    }

    /// Checks the whole file against the manifest, makes it durable, and renames it to `dest`
    /// (fsyncing `dest`'s directory). On a mismatch the partial file is removed.
    pub async fn finish(self, dest: &Path) -> Result<()> {
        self.seal().await?.publish(dest).await
    }

    /// First half of `finish`: sizes the file, fsyncs it, and checks the whole-file SHA-256
    /// (each chunk was checked as it arrived), from the running hash when it covers every chunk,
    /// else by re-reading the file. On a mismatch the partial file is removed.
    pub async fn seal(self) -> Result<SealedPartial> {
        let (file, path, manifest) = (self.file.clone(), self.path.clone(), self.manifest.clone());
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner).finish(manifest.chunk_count());
        let sums = blocking(move || {
            file.set_len(manifest.total_len()).map_err(io_error("size", &path))?;
            file.sync_all().map_err(io_error("fsync", &path))?;
            if let Some((got, sums)) = running {
                if got != manifest.digest() {
                    let _ = std::fs::remove_file(&path);
                    return Err(StorageError::Verify { digest: manifest.digest(), source: ManifestError::DigestMismatch { got, expected: manifest.digest() } });
                }
                return Ok(sums);
            }
            let mut whole = Sha256::new();
            let mut sums = SumsBuilder::new();
            let mut buf = vec![0u8; READ_PIECE];
            let mut offset = 0u64;
            while offset < manifest.total_len() {
                let n = file.read_at(&mut buf, offset).map_err(io_error("read", &path))?;
                if n == 0 {
                    break;
                }
                offset += n as u64;
                whole.update(&buf[..n]);
                sums.update(&buf[..n]);
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
            Ok(sums.finish())
        })
        .await?;
        Ok(SealedPartial { path: self.path, sums })
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

/// Asks the kernel to start writing `len` bytes at `offset` to disk now, without waiting, so a
/// large download reaches the disk while it arrives instead of all at the final fsync. Only a
/// hint: a failure here changes nothing (the fsync in `seal` is what makes the file durable).
fn start_writeback(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd as _;
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else { return };
        // SAFETY: the descriptor is open for the whole call (borrowed from `file`), and
        // sync_file_range reads no memory of ours.
        unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
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
        // A download saved for a user (`odi get`) gets no sidecar: only a store writes sums.
        assert_eq!(std::fs::read_dir(tmp.path().join("out")).unwrap().count(), 1);
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
    async fn the_running_hash_checks_a_fresh_download_whatever_order_its_chunks_came_in() {
        let (tmp, data, m) = setup(6 * MIN_CHUNK_SIZE as usize + 7);
        let (p, _) = PartialFile::open(tmp.path().join("p"), m.clone()).await.unwrap();
        for i in [5, 1, 6, 0, 3, 2, 4] {
            p.write_chunk(i, chunk(&data, &m, i)).await.unwrap();
        }
        p.finish(&tmp.path().join("blob")).await.unwrap();
        assert_eq!(std::fs::read(tmp.path().join("blob")).unwrap(), data);

        // A manifest whose chunk hashes describe other bytes than its digest: every chunk passes
        // its own check, the whole file does not.
        let other: Vec<u8> = data.iter().map(|b| b ^ 0x55).collect();
        let lying = ChunkManifest::of(&other, MIN_CHUNK_SIZE).unwrap();
        let lying = ChunkManifest::new(lying.total_len(), MIN_CHUNK_SIZE, m.digest(), lying.chunks().to_vec()).unwrap();
        let (p, _) = PartialFile::open(tmp.path().join("q"), lying.clone()).await.unwrap();
        for i in 0..lying.chunk_count() {
            p.write_chunk(i, chunk(&other, &lying, i)).await.unwrap();
        }
        let refused = p.finish(&tmp.path().join("lie")).await;
        assert!(matches!(refused, Err(StorageError::Verify { source: ManifestError::DigestMismatch { .. }, .. })), "{refused:?}");
        assert!(!tmp.path().join("lie").exists() && !tmp.path().join("q").exists());
    }

    #[test]
    fn the_running_hash_gives_up_when_too_much_waits_for_an_early_chunk() {
        static MIB: [u8; 1 << 20] = [0; 1 << 20];
        let mut r = RunningHash::new(true);
        for (i, piece) in [b"c", b"b", b"a"].into_iter().enumerate().map(|(i, p)| (2 - i as u64, p)) {
            r.written(i, Bytes::from_static(piece));
        }
        assert_eq!(r.finish(3).map(|(d, _)| d), Some(Digest::of(b"abc")));
        let mut r = RunningHash::new(true);
        for i in 1..=(AHEAD_LIMIT >> 20) + 1 {
            r.written(i, Bytes::from_static(&MIB));
        }
        assert!(r.hasher.is_none() && r.ahead.is_empty(), "{r:?}");
        r.written(0, Bytes::from_static(&MIB));
        assert_eq!(r.finish((AHEAD_LIMIT >> 20) + 2), None, "seal re-reads the file instead");
        assert_eq!(RunningHash::new(false).finish(0), None, "a resumed download re-reads");
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
