//! Content-addressed blobs on a local disk.
//!
//! Layout under the store's root:
//!
//! ```text
//! blobs/sha256/{first 2 hex digits}/{64 hex digits}   finished, verified blobs
//! blobs/sha256/{first 2 hex digits}/{64 hex}.sums     their block checksums (see `sums`)
//! tmp/                                                 blobs still arriving
//! ```
//!
//! Bytes stream into a file in `tmp/`, are fsynced once complete and verified, and are then
//! renamed to their final path and the directory fsynced. A file under `blobs/` is therefore
//! always whole and correct; a crash leaves at most a stray file in `tmp/`, removed at the next
//! [`LocalStore::open`]. A root belongs to one process at a time.
//!
//! Every read is checked on the way out: a small blob against its digest, a large one block by
//! block against the checksums written (before the blob's rename) from the very bytes whose
//! SHA-256 matched. A mismatch is [`StorageError::Corrupt`], raised before the bad block is
//! handed out, so a caller streaming a blob to a client never sends a wrong byte.

use std::fmt;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, stream};
use odi_core::digest::Digest;
use odi_core::manifest::{ChunkManifest, ChunkVerifier};
use odi_core::storage::{BlobStore, ByteStream, GetResult, Result, StorageError, clamp_range};

use crate::hashing::ManifestHasher;
use crate::partial::{PartialFile, SealedPartial};
use crate::sums::{BlockSums, SumsBuilder, read_sums, sums_path, write_sums};
use tokio::fs::{File, OpenOptions};
use tokio::io::{AsyncWriteExt, BufWriter};

/// The store name used in errors.
const STORE: &str = "local";
/// Bytes read or buffered per step when streaming a blob in or out.
const PIECE: usize = 256 * 1024;
/// Blobs up to this size can be kept in memory, verified, for serving.
pub const CACHED_BLOB_MAX: u64 = 64 << 10;
/// Memory for those copies, by default.
pub const DEFAULT_CACHE_BYTES: u64 = 64 << 20;
/// Attempts at finding an unused temp file name before giving up.
const TEMP_ATTEMPTS: u32 = 16;

/// Distinguishes temp files created by this process.
static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

/// Content-addressed blobs in a directory on local disk.
#[derive(Debug)]
pub struct LocalStore {
    root: PathBuf,
    blobs: PathBuf,
    tmp: PathBuf,
    small: SmallBlobs,
}

/// Copies of small blobs in memory, each checked against its digest when read from disk, so a
/// hot small blob is served with no file I/O and the memory never holds a wrong byte. A blob's
/// bytes never change, so a copy needs no invalidation except when the blob is deleted.
struct SmallBlobs {
    /// `None` when the store keeps no copies.
    cache: Option<quick_cache::sync::Cache<Digest, Bytes, ByLength>>,
    /// Bumped by every delete. A copy read before a delete may not be kept after it, so a
    /// deleted blob cannot come back from memory.
    deletes: AtomicU64,
}

#[derive(Clone, Copy)]
struct ByLength;

impl quick_cache::Weighter<Digest, Bytes> for ByLength {
    fn weight(&self, _: &Digest, bytes: &Bytes) -> u64 {
        // Empty blobs still take an entry.
        bytes.len().max(1) as u64
    }
}

impl SmallBlobs {
    fn new(capacity: u64) -> Self {
        let items = (capacity / 4096).clamp(16, 1 << 20) as usize;
        let cache = (capacity > 0).then(|| quick_cache::sync::Cache::with_weighter(items, capacity, ByLength));
        Self { cache, deletes: AtomicU64::new(0) }
    }

    fn get(&self, digest: &Digest) -> Option<Bytes> {
        self.cache.as_ref()?.get(digest)
    }

    /// Keeps `bytes`, verified as the blob `digest` after being read while the delete count was
    /// `epoch`, unless a delete happened since.
    fn keep(&self, digest: Digest, bytes: Bytes, epoch: u64) {
        if let Some(cache) = &self.cache
            && self.deletes.load(Ordering::Acquire) == epoch
        {
            cache.insert(digest, bytes);
            // A delete between the check and the insert: take the copy out again.
            if self.deletes.load(Ordering::Acquire) != epoch {
                cache.remove(&digest);
            }
        }
    }

    fn forget(&self, digest: &Digest) {
        self.deletes.fetch_add(1, Ordering::AcqRel);
        if let Some(cache) = &self.cache {
            cache.remove(digest);
        }
    }
}

impl fmt::Debug for SmallBlobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cache = self.cache.as_ref();
        f.debug_struct("SmallBlobs").field("blobs", &cache.map_or(0, |c| c.len())).field("bytes", &cache.map_or(0, |c| c.weight())).finish()
    }
}

impl LocalStore {
    /// Opens (creating if needed) a store rooted at `root`, and removes any temp files a crash
    /// left behind.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        let blobs = root.join("blobs").join("sha256");
        let tmp = root.join("tmp");
        for dir in [&blobs, &tmp] {
            std::fs::create_dir_all(dir).map_err(io_error("create directory", dir))?;
        }
        let removed = clean_dir(&tmp)?;
        if removed > 0 {
            tracing::info!(removed, tmp = %tmp.display(), "removed unfinished blobs left by an earlier run");
        }
        Ok(Self { root, blobs, tmp, small: SmallBlobs::new(DEFAULT_CACHE_BYTES) })
    }

    /// Sets the memory kept for verified copies of small blobs (0 keeps none).
    #[must_use]
    pub fn with_cache_bytes(mut self, bytes: u64) -> Self {
        self.small = SmallBlobs::new(bytes);
        self
    }

    /// The root directory this store was opened at.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob `digest` lives once stored (whether or not it is there now).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        let mut buf = [0u8; 64];
        let hex = hex::encode_to_slice(digest.as_bytes(), &mut buf).ok().and_then(|()| std::str::from_utf8(&buf).ok()).unwrap_or_default();
        let mut path = PathBuf::with_capacity(self.blobs.as_os_str().len() + 68);
        path.push(&self.blobs);
        path.push(hex.get(..2).unwrap_or_default());
        path.push(hex);
        path
    }

    /// Opens a blob for serving in one trip to the blocking pool: the file, its size, and for
    /// blobs of at most `small` bytes the whole content, so a small response needs no more I/O.
    /// A small blob is checked against its digest here; a larger one is checked block by block
    /// as it is streamed (a blob stored without sums is first verified whole and given them).
    /// Bytes that fail a check are [`StorageError::Corrupt`].
    pub async fn open_blob(&self, digest: &Digest, small: u64) -> Result<OpenedBlob> {
        if let Some(bytes) = self.small.get(digest) {
            return Ok(OpenedBlob { size: bytes.len() as u64, content: Opened::Small(bytes) });
        }
        self.open_from_disk(digest, small).await
    }

    /// Opens a blob to check what is on disk (a scrub): never answered from memory, always
    /// streamed through the block checks.
    pub async fn open_on_disk(&self, digest: &Digest) -> Result<OpenedBlob> {
        self.open_from_disk(digest, 0).await
    }

    async fn open_from_disk(&self, digest: &Digest, small: u64) -> Result<OpenedBlob> {
        let path = self.blob_path(digest);
        let digest = *digest;
        let epoch = self.small.deletes.load(Ordering::Acquire);
        let tmp = self.tmp.clone();
        let (opened, keep) = tokio::task::spawn_blocking(move || {
            let mut file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StorageError::NotFound { store: STORE, digest }),
                Err(e) => return Err(io_error("open", &path)(e)),
            };
            let size = file.metadata().map_err(io_error("read metadata of", &path))?.len();
            if size <= small {
                let mut content = Vec::with_capacity(size as usize);
                io::Read::read_to_end(&mut file, &mut content).map_err(io_error("read", &path))?;
                if content.len() as u64 != size || Digest::of(&content) != digest {
                    tracing::error!(path = %path.display(), "stored blob does not match its digest; not serving it");
                    return Err(StorageError::Corrupt { store: STORE, digest, offset: 0 });
                }
                return Ok((OpenedBlob { size, content: Opened::Small(Bytes::from(content)) }, size <= CACHED_BLOB_MAX));
            }
            let sums = match read_sums(&path, size) {
                Some(sums) => sums,
                None => verify_whole(&file, &path, digest, size, &tmp)?,
            };
            Ok((OpenedBlob { size, content: Opened::File(PieceReader { file, path, digest, sums }) }, false))
        })
        .await
        .map_err(|e| StorageError::backend(STORE, format!("blocking task stopped: {e}")))??;
        if let (true, Opened::Small(bytes)) = (keep, &opened.content) {
            self.small.keep(digest, bytes.clone(), epoch);
        }
        Ok(opened)
    }

    /// Opens the resumable partial download of `manifest`'s blob, with the chunks it already
    /// holds verified. Partial files live in `partial/` and survive restarts (unlike `tmp/`).
    pub async fn open_partial(&self, manifest: ChunkManifest) -> Result<(PartialFile, Vec<u64>)> {
        let path = self.root.join("partial").join(manifest.digest().to_hex());
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(io_error("create directory", dir))?;
        }
        PartialFile::open(path, manifest).await
    }

    /// Publishes a sealed (complete, verified, durable) partial download as a blob, its block
    /// sums written first.
    pub async fn commit_partial(&self, sealed: SealedPartial, digest: &Digest) -> Result<()> {
        let dest = self.blob_path(digest);
        if let Some(shard) = dest.parent() {
            tokio::fs::create_dir_all(shard).await.map_err(io_error("create directory", shard))?;
        }
        self.write_sums(&dest, sealed.sums().clone()).await?;
        sealed.publish(&dest).await
    }

    /// Writes the block sums of the blob that will live at `dest`, durably.
    async fn write_sums(&self, dest: &Path, sums: BlockSums) -> Result<()> {
        let (dest, tmp) = (dest.to_path_buf(), self.tmp.clone());
        tokio::task::spawn_blocking(move || write_sums(&dest, &sums, &tmp).map_err(io_error("write block sums for", &dest)))
            .await
            .map_err(|e| StorageError::backend(STORE, format!("blocking task stopped: {e}")))?
    }

    /// Every partial download on disk, with its current length.
    pub async fn partials(&self) -> Result<Vec<(Digest, u64)>> {
        let dir = self.root.join("partial");
        let mut out = Vec::new();
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_error("read directory", &dir)(e)),
        };
        while let Some(entry) = entries.next_entry().await.map_err(io_error("read directory", &dir))? {
            let Some(digest) = entry.file_name().to_str().and_then(|n| Digest::from_hex(n).ok()) else { continue };
            let len = entry.metadata().await.map_err(io_error("inspect", &entry.path()))?.len();
            out.push((digest, len));
        }
        out.sort();
        Ok(out)
    }

    /// Removes the partial download of `digest`, if any (its blob is no longer wanted).
    pub async fn discard_partial(&self, digest: &Digest) -> Result<()> {
        let path = self.root.join("partial").join(digest.to_hex());
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("remove", &path)(e)),
        }
    }

    /// Takes the file at `source` (e.g. in a mirror's own tree) as the blob of `manifest`, if
    /// its bytes match: hard-linked into the store when both are on one filesystem (no second
    /// copy on disk), copied otherwise. The bytes checked are those of the link or copy that
    /// becomes the blob, chunk by chunk against the manifest, and the block sums are computed
    /// from them, so a later change to the file in place (an `rsync --inplace`) is caught as
    /// [`StorageError::Corrupt`] when read, never served. Removing the blob later removes only
    /// the store's link. Bytes that do not match are [`StorageError::Verify`], and nothing is
    /// kept; a blob already stored is [`Adopted::Held`].
    pub async fn adopt(&self, manifest: &ChunkManifest, source: &Path) -> Result<Adopted> {
        let digest = manifest.digest();
        if self.contains(&digest).await? {
            return Ok(Adopted::Held);
        }
        let (manifest, source, tmp) = (manifest.clone(), source.to_path_buf(), self.tmp.clone());
        let (file, temp, sums, how) = tokio::task::spawn_blocking(move || adopt_into_temp(&manifest, &source, &tmp))
            .await
            .map_err(|e| StorageError::backend(STORE, format!("blocking task stopped: {e}")))??;
        let held_before = self.contains(&digest).await?;
        self.commit(Staged { file: File::from_std(file), temp, sums }, &digest).await?;
        Ok(if held_before { Adopted::Held } else { how })
    }

    async fn contains(&self, digest: &Digest) -> Result<bool> {
        let path = self.blob_path(digest);
        tokio::fs::try_exists(&path).await.map_err(io_error("check for", &path))
    }

    /// Streams `body` into a new temp file, passing every piece to `check` before writing it.
    async fn receive(&self, mut body: ByteStream<'_>, mut check: impl FnMut(&Bytes) -> Result<()> + Send) -> Result<Staged> {
        let (file, temp) = self.create_temp().await?;
        let mut out = BufWriter::with_capacity(PIECE, file);
        let mut sums = SumsBuilder::new();
        while let Some(piece) = body.next().await {
            let piece = piece?;
            check(&piece)?;
            sums.update(&piece);
            out.write_all(&piece).await.map_err(io_error("write", &temp.path))?;
        }
        out.flush().await.map_err(io_error("write", &temp.path))?;
        Ok(Staged { file: out.into_inner(), temp, sums: sums.finish() })
    }

    async fn create_temp(&self) -> Result<(File, TempFile)> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let mut last_error = None;
        for _ in 0..TEMP_ATTEMPTS {
            let n = NEXT_TEMP.fetch_add(1, Ordering::Relaxed);
            let path = self.tmp.join(format!("{}-{n}-{nanos:08x}.part", std::process::id()));
            match OpenOptions::new().write(true).create_new(true).open(&path).await {
                Ok(file) => return Ok((file, TempFile { path, armed: true })),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_error = Some(e),
                Err(e) => return Err(io_error("create temp file", &path)(e)),
            }
        }
        let e = last_error.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists));
        Err(io_error("find an unused temp file name in", &self.tmp)(e))
    }

    /// Makes a complete, verified temp file durable and visible as the blob `digest`.
    async fn commit(&self, staged: Staged, digest: &Digest) -> Result<()> {
        let Staged { file, mut temp, sums } = staged;
        file.sync_all().await.map_err(io_error("fsync", &temp.path))?;
        drop(file);

        let dest = self.blob_path(digest);
        let shard = self.blobs.join(&digest.to_hex()[..2]);
        let new_shard = !tokio::fs::try_exists(&shard).await.map_err(io_error("check for", &shard))?;
        if new_shard {
            tokio::fs::create_dir_all(&shard).await.map_err(io_error("create directory", &shard))?;
        }
        if tokio::fs::try_exists(&dest).await.map_err(io_error("check for", &dest))? {
            // Already stored, and only verified blobs are ever renamed into place: keep that one.
            return Ok(());
        }
        // The sums are durable before the blob is visible: no reader finds a blob without them.
        self.write_sums(&dest, sums).await?;
        if let Err(e) = tokio::fs::rename(&temp.path, &dest).await {
            // A concurrent writer of the same bytes may have won the race (or, on platforms
            // where rename does not replace, made ours fail): either way the blob is there.
            if !tokio::fs::try_exists(&dest).await.unwrap_or(false) {
                return Err(io_error("rename temp file to", &dest)(e));
            }
            return Ok(());
        }
        temp.armed = false;
        sync_dir(&shard).await?;
        if new_shard {
            sync_dir(&self.blobs).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl BlobStore for LocalStore {
    async fn ingest(&self, chunk_size: u32, body: ByteStream<'_>) -> Result<ChunkManifest> {
        let mut builder = ManifestHasher::new(chunk_size).map_err(|e| StorageError::Input(format!("cannot ingest: {e}")))?;
        let staged = self.receive(body, |piece| builder.update(piece).map_err(|e| StorageError::Input(e.to_string()))).await?;
        let manifest = builder.finish();
        self.commit(staged, &manifest.digest()).await?;
        Ok(manifest)
    }

    async fn put_verified(&self, manifest: &ChunkManifest, body: ByteStream<'_>) -> Result<()> {
        let digest = manifest.digest();
        if self.contains(&digest).await? {
            return Ok(());
        }
        let mut verifier = ChunkVerifier::new(manifest);
        let staged = self.receive(body, |piece| verifier.update(piece).map_err(|source| StorageError::Verify { digest, source })).await?;
        verifier.finish().map_err(|source| StorageError::Verify { digest, source })?;
        self.commit(staged, &digest).await
    }

    async fn get(&self, digest: &Digest, range: Option<Range<u64>>) -> Result<GetResult> {
        let blob = self.open_blob(digest, 0).await?;
        let (size, range) = (blob.size, clamp_range(range, blob.size)?);
        Ok(GetResult { size, range: range.clone(), stream: blob.stream(range) })
    }

    async fn size(&self, digest: &Digest) -> Result<u64> {
        let path = self.blob_path(digest);
        match tokio::fs::metadata(&path).await {
            Ok(meta) => Ok(meta.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StorageError::NotFound { store: STORE, digest: *digest }),
            Err(e) => Err(io_error("read metadata of", &path)(e)),
        }
    }

    async fn delete(&self, digest: &Digest) -> Result<()> {
        // Before and after the unlink: a read racing with it cannot keep its copy either way.
        self.small.forget(digest);
        let path = self.blob_path(digest);
        let removed = tokio::fs::remove_file(&path).await;
        self.small.forget(digest);
        // The blob goes first: sums without a blob are only a stray file.
        let _ = tokio::fs::remove_file(sums_path(&path)).await;
        match removed {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("delete", &path)(e)),
        }
    }

    async fn list(&self) -> Result<Vec<(Digest, u64)>> {
        let blobs = self.blobs.clone();
        tokio::task::spawn_blocking(move || list_blobs(&blobs))
            .await
            .map_err(|e| StorageError::backend(STORE, format!("listing {} stopped: {e}", self.blobs.display())))?
    }
}

impl fmt::Display for LocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "local store at {}", self.root.display())
    }
}

/// A blob opened for serving by [`LocalStore::open_blob`].
#[derive(Debug)]
pub struct OpenedBlob {
    pub size: u64,
    content: Opened,
}

#[derive(Debug)]
enum Opened {
    Small(Bytes),
    File(PieceReader),
}

impl OpenedBlob {
    /// The bytes in `range` (clamped by the caller to the blob's size). From a file, each block
    /// is read whole and checked against its sums before any of it is yielded; a mismatch
    /// ends the stream with [`StorageError::Corrupt`] instead of the block.
    pub fn stream(self, range: Range<u64>) -> ByteStream<'static> {
        match self.content {
            Opened::Small(bytes) => {
                let slice = bytes.slice(range.start as usize..range.end as usize);
                Box::pin(stream::once(async move { Ok(slice) }))
            }
            Opened::File(reader) => {
                // Block reads on the blocking pool, straight into the buffer that becomes the
                // frame, with the next block already being read while hyper writes this one.
                let reader = Arc::new(reader);
                let state = (reader, range.start, range.end, None);
                Box::pin(stream::try_unfold(state, |(reader, mut next, end, ahead): PieceState| async move {
                    let Some(current) = ahead.or_else(|| start_read(&reader, &mut next, end)) else { return Ok(None) };
                    let piece = current.await.map_err(|e| StorageError::backend(STORE, format!("blocking read stopped: {e}")))??;
                    let ahead = start_read(&reader, &mut next, end);
                    Ok(Some((piece, (reader, next, end, ahead))))
                }))
            }
        }
    }
}

/// A blob file being streamed out, with the sums each block read is checked against.
#[derive(Debug)]
struct PieceReader {
    file: std::fs::File,
    path: PathBuf,
    digest: Digest,
    sums: BlockSums,
}

/// The reader, the offset of the next byte to yield, the end, and the piece being read.
type PieceState = (Arc<PieceReader>, u64, u64, Option<tokio::task::JoinHandle<Result<Bytes>>>);

/// Starts reading the block holding `*next` (from the block's start, so it can be checked),
/// advancing `*next` past the part of it that is in `..end`; `None` at `end`.
fn start_read(reader: &Arc<PieceReader>, next: &mut u64, end: u64) -> Option<tokio::task::JoinHandle<Result<Bytes>>> {
    if *next >= end {
        return None;
    }
    let index = *next / u64::from(reader.sums.block_size());
    let block = reader.sums.block_range(index)?;
    let (from, to) = (*next - block.start, end.min(block.end) - block.start);
    *next = end.min(block.end);
    let reader = reader.clone();
    Some(tokio::task::spawn_blocking(move || {
        use std::io::{Read as _, Seek as _};
        // Read into fresh capacity (no zeroing of a whole block first); one block in flight at a
        // time, so the file's own position is ours to set.
        let len = (block.end - block.start) as usize;
        let mut file = &reader.file;
        file.seek(io::SeekFrom::Start(block.start)).map_err(io_error("seek in", &reader.path))?;
        let mut buf = Vec::with_capacity(len);
        file.take(len as u64).read_to_end(&mut buf).map_err(io_error("read", &reader.path))?;
        if buf.len() < len {
            tracing::error!(path = %reader.path.display(), "stored blob is shorter than its recorded size");
            return Err(StorageError::Corrupt { store: STORE, digest: reader.digest, offset: block.start });
        }
        if !reader.sums.check(index, &buf) {
            tracing::error!(path = %reader.path.display(), offset = block.start, "stored blob does not match its block sums; not serving it");
            return Err(StorageError::Corrupt { store: STORE, digest: reader.digest, offset: block.start });
        }
        Ok(Bytes::from(buf).slice(from as usize..to as usize))
    }))
}

/// Verifies a blob stored without sums (by an older version, or its sums were damaged) against
/// its digest, and writes its sums; a mismatch is [`StorageError::Corrupt`].
fn verify_whole(file: &std::fs::File, path: &Path, digest: Digest, size: u64, tmp: &Path) -> Result<BlockSums> {
    use sha2::Digest as _;
    use std::os::unix::fs::FileExt as _;
    let mut whole = sha2::Sha256::new();
    let mut sums = SumsBuilder::new();
    let mut buf = vec![0u8; PIECE * 4];
    let mut offset = 0u64;
    while offset < size {
        let n = file.read_at(&mut buf, offset).map_err(io_error("read", path))?;
        if n == 0 {
            break;
        }
        whole.update(&buf[..n]);
        sums.update(&buf[..n]);
        offset += n as u64;
    }
    if offset != size || Digest::from_bytes(whole.finalize().into()) != digest {
        tracing::error!(path = %path.display(), "stored blob does not match its digest; not serving it");
        return Err(StorageError::Corrupt { store: STORE, digest, offset: 0 });
    }
    let sums = sums.finish();
    write_sums(path, &sums, tmp).map_err(io_error("write block sums for", path))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_error("fsync directory", dir))?;
    }
    tracing::info!(path = %path.display(), "verified a blob stored without block sums and wrote them");
    Ok(sums)
}

/// How [`LocalStore::adopt`] took a file.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Adopted {
    /// Hard-linked: the store and the tree share the bytes on disk.
    Linked,
    /// Copied, the tree being on another filesystem (or not linkable by this user).
    Copied,
    /// The store already held the blob; the file was not needed.
    Held,
}

/// Links (or copies) `source` into a new temp file in `tmp` and checks the temp file's bytes
/// against `manifest`, computing their block sums: what `LocalStore::commit` takes.
fn adopt_into_temp(manifest: &ChunkManifest, source: &Path, tmp: &Path) -> Result<(std::fs::File, TempFile, BlockSums, Adopted)> {
    use std::io::Read as _;
    let digest = manifest.digest();
    let meta = std::fs::metadata(source).map_err(io_error("inspect", source))?;
    if !meta.is_file() || meta.len() != manifest.total_len() {
        return Err(StorageError::Input(format!("{} is not the artifact: {} bytes, the artifact is {}", source.display(), meta.len(), manifest.total_len())));
    }
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let n = NEXT_TEMP.fetch_add(1, Ordering::Relaxed);
    let temp = TempFile { path: tmp.join(format!("{}-{n}-{nanos:08x}.adopt", std::process::id())), armed: true };
    let how = match std::fs::hard_link(source, &temp.path) {
        Ok(()) => Adopted::Linked,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(io_error("link", source)(e)),
        Err(_) => {
            std::fs::copy(source, &temp.path).map_err(io_error("copy", source))?;
            Adopted::Copied
        }
    };
    let mut file = std::fs::File::open(&temp.path).map_err(io_error("open", &temp.path))?;
    let mut verifier = ChunkVerifier::new(manifest);
    let mut sums = SumsBuilder::new();
    let mut buf = vec![0u8; PIECE * 4];
    loop {
        let n = file.read(&mut buf).map_err(io_error("read", &temp.path))?;
        if n == 0 {
            break;
        }
        verifier.update(&buf[..n]).map_err(|source| StorageError::Verify { digest, source })?;
        sums.update(&buf[..n]);
    }
    verifier.finish().map_err(|source| StorageError::Verify { digest, source })?;
    Ok((file, temp, sums.finish(), how))
}

/// A finished temp file waiting to be committed.
struct Staged {
    file: File,
    temp: TempFile,
    sums: BlockSums,
}

/// A temp file that is removed when dropped unless it was renamed into place, so an error,
/// or a caller dropping the future, leaves nothing behind.
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempFile {
    // A blocking unlink of one file: quick enough to run on an async worker.
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove temp file; it will be removed at the next open");
        }
    }
}

/// An I/O failure on a named path.
#[derive(Debug)]
struct IoError {
    op: &'static str,
    path: PathBuf,
    source: io::Error,
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot {} {}: {}", self.op, self.path.display(), self.source)?;
        match self.source.kind() {
            io::ErrorKind::PermissionDenied => f.write_str("; check that the store's directory is writable by this user"),
            io::ErrorKind::StorageFull => f.write_str("; free disk space or lower the relay's disk budget"),
            _ => Ok(()),
        }
    }
}

impl std::error::Error for IoError {}

pub(crate) fn io_error(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StorageError + use<> {
    let path = path.to_path_buf();
    move |source| StorageError::backend(STORE, IoError { op, path, source })
}

/// Removes everything in `dir`, returning how many entries it removed.
fn clean_dir(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).map_err(io_error("read directory", dir))? {
        let entry = entry.map_err(io_error("read directory", dir))?;
        let path = entry.path();
        let is_dir = entry.file_type().map_err(io_error("inspect", &path))?.is_dir();
        let result = if is_dir { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        match result {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("remove leftover", &path)(e)),
        }
    }
    Ok(removed)
}

/// Every blob under `blobs` (`{2 hex}/{64 hex}`), ignoring anything else, in digest order.
fn list_blobs(blobs: &Path) -> Result<Vec<(Digest, u64)>> {
    let mut found = Vec::new();
    for shard in std::fs::read_dir(blobs).map_err(io_error("read directory", blobs))? {
        let shard = shard.map_err(io_error("read directory", blobs))?;
        let shard_path = shard.path();
        let Some(prefix) = shard.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if prefix.len() != 2 || !shard.file_type().map_err(io_error("inspect", &shard_path))?.is_dir() {
            continue;
        }
        let entries = match std::fs::read_dir(&shard_path) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error("read directory", &shard_path)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_error("read directory", &shard_path))?;
            let name = entry.file_name();
            let Some(digest) = name.to_str().filter(|n| n.starts_with(&prefix)).and_then(|n| Digest::from_hex(n).ok()) else {
                continue;
            };
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                // Deleted while we were listing.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error("read metadata of", &entry.path())(e)),
            };
            if meta.is_file() {
                found.push((digest, meta.len()));
            }
        }
    }
    found.sort_unstable_by_key(|(digest, _)| *digest);
    Ok(found)
}

/// Makes a directory's entries (a rename into it, a new subdirectory) durable. An empty path
/// (the `parent()` of a bare file name) is the current directory.
pub(crate) async fn sync_dir(dir: &Path) -> Result<()> {
    if cfg!(windows) {
        // Windows cannot open a directory as a file; NTFS journals renames itself.
        return Ok(());
    }
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let dir_file = File::open(dir).await.map_err(io_error("open directory", dir))?;
    dir_file.sync_all().await.map_err(io_error("fsync directory", dir))
}

#[cfg(test)]
mod tests {
    use futures_util::future::Either;

    use super::*;
    use crate::conformance;

    #[tokio::test]
    async fn the_empty_parent_of_a_bare_file_name_is_the_current_directory() {
        assert_eq!(Path::new("file.bin").parent(), Some(Path::new("")));
        sync_dir(Path::new("")).await.expect("an empty path syncs the current directory");
    }

    fn scratch() -> (LocalStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("create a temp dir for the test");
        let store = LocalStore::open(dir.path()).expect("open a local store in a temp dir");
        (store, dir)
    }

    fn files_under(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() { out.extend(files_under(&path)) } else { out.push(path) }
        }
        out
    }

    crate::conformance_tests!(local_conformance, scratch());

    /// Bytes of `len` that differ block to block, so a changed block changes its sum.
    fn varied(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    async fn read_all(store: &LocalStore, digest: &Digest) -> Result<Vec<u8>> {
        let got = store.get(digest, None).await?;
        let mut out = Vec::new();
        let mut stream = got.stream;
        while let Some(piece) = stream.next().await {
            out.extend_from_slice(&piece?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn adopting_a_matching_file_links_it_and_serves_it_checked() {
        use std::os::unix::fs::MetadataExt as _;
        let (store, dir) = scratch();
        let tree = dir.path().join("mirror/pool");
        std::fs::create_dir_all(&tree).unwrap();
        let data = varied(3 << 20);
        let source = tree.join("big.iso");
        std::fs::write(&source, &data).unwrap();
        let manifest = ChunkManifest::of(&data, 1 << 20).unwrap();

        assert_eq!(store.adopt(&manifest, &source).await.expect("a matching file is adopted"), Adopted::Linked);
        let blob = store.blob_path(&manifest.digest());
        assert_eq!(std::fs::metadata(&blob).unwrap().ino(), std::fs::metadata(&source).unwrap().ino(), "one inode, no second copy");
        assert_eq!(read_all(&store, &manifest.digest()).await.unwrap(), data);
        assert_eq!(store.adopt(&manifest, &source).await.unwrap(), Adopted::Held);
        assert!(files_under(&dir.path().join("tmp")).is_empty(), "no temp link left behind");

        // The mirror rewrites the file in place: the store's copy is the same inode, and the
        // change is caught when read, not served.
        let mut changed = data.clone();
        changed[(2 << 20) + 5] ^= 0xff;
        std::fs::write(&source, &changed).unwrap();
        let err = read_all(&store, &manifest.digest()).await.expect_err("a changed block is not served");
        assert!(matches!(err, StorageError::Corrupt { offset, .. } if offset >= 2 << 20), "{err:?}");

        // Dropping the blob removes the store's link only.
        store.delete(&manifest.digest()).await.unwrap();
        assert_eq!(std::fs::read(&source).unwrap(), changed, "the tree's file is untouched");
    }

    #[tokio::test]
    async fn adopting_from_another_filesystem_copies_and_checks_the_copy() {
        use std::os::unix::fs::MetadataExt as _;
        let (store, dir) = scratch();
        // /dev/shm is a tmpfs on Linux: another filesystem than the store's temp dir.
        let other = tempfile::tempdir_in("/dev/shm").expect("a temp dir on /dev/shm (Linux tmpfs)");
        assert_ne!(std::fs::metadata(other.path()).unwrap().dev(), std::fs::metadata(dir.path()).unwrap().dev(), "the test needs two filesystems");
        let data = varied(1 << 20);
        let source = other.path().join("small.tar");
        std::fs::write(&source, &data).unwrap();
        let manifest = ChunkManifest::of(&data, 256 << 10).unwrap();
        assert_eq!(store.adopt(&manifest, &source).await.unwrap(), Adopted::Copied);
        assert_eq!(read_all(&store, &manifest.digest()).await.unwrap(), data);
        assert_ne!(std::fs::metadata(store.blob_path(&manifest.digest())).unwrap().ino(), std::fs::metadata(&source).unwrap().ino());
    }

    #[tokio::test]
    async fn adopting_a_file_that_does_not_match_keeps_nothing() {
        let (store, dir) = scratch();
        let data = varied(2 << 20);
        let manifest = ChunkManifest::of(&data, 1 << 20).unwrap();
        let source = dir.path().join("other.iso");
        let mut wrong = data.clone();
        wrong[10] ^= 1;
        std::fs::write(&source, &wrong).unwrap();
        let err = store.adopt(&manifest, &source).await.expect_err("other bytes are refused");
        assert!(matches!(err, StorageError::Verify { .. }), "{err:?}");
        std::fs::write(&source, &data[..data.len() - 1]).unwrap();
        let err = store.adopt(&manifest, &source).await.expect_err("a shorter file is refused");
        assert!(matches!(err, StorageError::Input(ref m) if m.contains("not the artifact")), "{err:?}");
        assert!(matches!(store.adopt(&manifest, &dir.path().join("absent")).await, Err(StorageError::Backend { .. })));
        assert!(store.list().await.unwrap().is_empty());
        assert!(files_under(&dir.path().join("tmp")).is_empty(), "no temp link left behind");
        assert_eq!(std::fs::read(&source).unwrap(), &data[..data.len() - 1], "the tree's file is untouched");
    }

    #[test]
    fn open_removes_crash_leftovers_from_tmp() {
        let dir = tempfile::tempdir().unwrap();
        drop(LocalStore::open(dir.path()).unwrap());
        std::fs::write(dir.path().join("tmp/123-0-0.part"), b"half a blob").unwrap();
        std::fs::create_dir(dir.path().join("tmp/stray-dir")).unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        assert!(files_under(&dir.path().join("tmp")).is_empty(), "{store}");
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0, "{store}");
    }

    #[tokio::test]
    async fn blobs_live_at_their_digest_path() {
        let (store, dir) = scratch();
        let data = conformance::sample(10_000, 3);
        let manifest = store.ingest(4096, conformance::body(&data, 1000)).await.unwrap();
        let path = store.blob_path(&manifest.digest());
        let hex = manifest.digest().to_hex();
        assert_eq!(path, dir.path().join("blobs/sha256").join(&hex[..2]).join(&hex));
        assert_eq!(std::fs::read(&path).unwrap(), data);
        assert!(files_under(&dir.path().join("tmp")).is_empty());
    }

    async fn read_small(store: &LocalStore, digest: &Digest) -> Result<Vec<u8>> {
        let blob = store.open_blob(digest, CACHED_BLOB_MAX).await?;
        let size = blob.size;
        let mut stream = blob.stream(0..size);
        let mut out = Vec::new();
        while let Some(piece) = stream.next().await {
            out.extend_from_slice(&piece?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn small_blobs_are_served_from_memory_once_read_until_deleted() {
        let (store, _dir) = scratch();
        let data = conformance::sample(1024, 5);
        let digest = store.ingest(4096, conformance::body(&data, 1000)).await.unwrap().digest();
        assert_eq!(read_small(&store, &digest).await.unwrap(), data);
        // Gone from disk behind the store's back: the verified copy still answers.
        std::fs::remove_file(store.blob_path(&digest)).unwrap();
        assert_eq!(read_small(&store, &digest).await.unwrap(), data);
        store.delete(&digest).await.unwrap();
        assert!(matches!(read_small(&store, &digest).await, Err(StorageError::NotFound { .. })));
    }

    #[tokio::test]
    async fn a_small_blob_that_fails_its_check_is_never_served_nor_kept_in_memory() {
        let (store, _dir) = scratch();
        let data = conformance::sample(1024, 6);
        let digest = store.ingest(4096, conformance::body(&data, 1000)).await.unwrap().digest();
        let path = store.blob_path(&digest);
        let mut rotten = data.clone();
        rotten[100] ^= 0x80;
        std::fs::write(&path, &rotten).unwrap();
        assert!(matches!(read_small(&store, &digest).await, Err(StorageError::Corrupt { .. })));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(read_small(&store, &digest).await, Err(StorageError::NotFound { .. })));
        // A store that keeps no copies checks every read too.
        let (plain, _dir) = scratch();
        let plain = plain.with_cache_bytes(0);
        let digest = plain.ingest(4096, conformance::body(&data, 1000)).await.unwrap().digest();
        assert_eq!(read_small(&plain, &digest).await.unwrap(), data);
        std::fs::write(plain.blob_path(&digest), &rotten).unwrap();
        assert!(matches!(read_small(&plain, &digest).await, Err(StorageError::Corrupt { .. })));
    }

    /// Reads `range` of a blob through the serving path: the bytes before the first error, and
    /// the error.
    async fn read_range(store: &LocalStore, digest: &Digest, range: Range<u64>) -> (Vec<u8>, Option<StorageError>) {
        let mut stream = match store.open_blob(digest, CACHED_BLOB_MAX).await {
            Ok(blob) => blob.stream(range),
            Err(e) => return (Vec::new(), Some(e)),
        };
        let mut out = Vec::new();
        while let Some(piece) = stream.next().await {
            match piece {
                Ok(piece) => out.extend_from_slice(&piece),
                Err(e) => return (out, Some(e)),
            }
        }
        (out, None)
    }

    async fn read_ok(store: &LocalStore, digest: &Digest, range: Range<u64>) -> Vec<u8> {
        let (got, err) = read_range(store, digest, range).await;
        assert!(err.is_none(), "{err:?}");
        got
    }

    const MIB: u64 = 1 << 20;

    #[tokio::test]
    async fn every_way_in_writes_block_sums_and_a_flipped_byte_stops_the_read_before_its_block() {
        let (store, _dir) = scratch();
        let data = conformance::sample(3 * MIB as usize + 4321, 11);
        let manifest = ChunkManifest::of(&data, 1 << 20).unwrap();
        let digest = manifest.digest();
        // Through a partial download (the relay's way in) ...
        let (partial, have) = store.open_partial(manifest.clone()).await.unwrap();
        assert!(have.is_empty());
        for i in 0..manifest.chunk_count() {
            let r = manifest.chunk_range(i).unwrap();
            partial.write_chunk(i, Bytes::copy_from_slice(&data[r.start as usize..r.end as usize])).await.unwrap();
        }
        store.commit_partial(partial.seal().await.unwrap(), &digest).await.unwrap();
        let path = store.blob_path(&digest);
        assert!(sums_path(&path).is_file(), "sums beside the blob");
        assert_eq!(read_ok(&store, &digest, 0..data.len() as u64).await, data.clone());
        // ... and through put_verified and ingest (the directory's).
        let (other, _odir) = scratch();
        other.put_verified(&manifest, conformance::body(&data, 70_000)).await.unwrap();
        assert!(sums_path(&other.blob_path(&digest)).is_file());
        let (third, _tdir) = scratch();
        third.ingest(1 << 20, conformance::body(&data, 99_999)).await.unwrap();
        assert_eq!(std::fs::read(sums_path(&third.blob_path(&digest))).unwrap(), std::fs::read(sums_path(&path)).unwrap());

        // 16 bytes rot in the third block.
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &[0xAA; 16], 2 * MIB + 500).unwrap();
        let (got, err) = read_range(&store, &digest, 0..data.len() as u64).await;
        assert_eq!(got, data[..2 * MIB as usize], "the blocks before it are served, none of it");
        assert!(matches!(err, Some(StorageError::Corrupt { offset, .. }) if offset == 2 * MIB), "{err:?}");
        // A range that starts after the rot is still served, checked.
        let tail = 3 * MIB + 10..data.len() as u64;
        assert_eq!(read_ok(&store, &digest, tail.clone()).await, data[tail.start as usize..].to_vec());
        // A range that starts mid-block reads from the block's start to check it.
        let (got, err) = read_range(&store, &digest, 2 * MIB + 1000..2 * MIB + 2000).await;
        assert!(got.is_empty() && matches!(err, Some(StorageError::Corrupt { .. })), "{err:?}");
        let mid = MIB + 7..2 * MIB - 3;
        assert_eq!(read_ok(&store, &digest, mid.clone()).await, data[mid.start as usize..mid.end as usize].to_vec());
        // Truncation is caught too.
        file.set_len(3 * MIB).unwrap();
        let (_, err) = read_range(&store, &digest, 0..data.len() as u64).await;
        assert!(matches!(err, Some(StorageError::Corrupt { .. })), "{err:?}");
    }

    #[tokio::test]
    async fn a_blob_without_sums_is_verified_whole_on_first_open() {
        let (store, _dir) = scratch();
        let data = conformance::sample(2 * MIB as usize + 1, 12);
        let digest = store.ingest(1 << 20, conformance::body(&data, 65_536)).await.unwrap().digest();
        let path = store.blob_path(&digest);
        // As an older version left it: no sums; then sums damaged.
        std::fs::remove_file(sums_path(&path)).unwrap();
        assert_eq!(read_ok(&store, &digest, 5..data.len() as u64).await, data[5..].to_vec());
        let written = std::fs::read(sums_path(&path)).unwrap();
        std::fs::write(sums_path(&path), b"garbage").unwrap();
        assert_eq!(read_ok(&store, &digest, 0..10).await, data[..10].to_vec());
        assert_eq!(std::fs::read(sums_path(&path)).unwrap(), written);
        // Without sums and rotten: refused before anything is sent.
        std::fs::remove_file(sums_path(&path)).unwrap();
        let mut rotten = data.clone();
        rotten[MIB as usize + 3] ^= 1;
        std::fs::write(&path, &rotten).unwrap();
        let (got, err) = read_range(&store, &digest, 0..10).await;
        assert!(got.is_empty() && matches!(err, Some(StorageError::Corrupt { .. })), "{err:?}");
        assert!(!sums_path(&path).exists(), "no sums are made for wrong bytes");
        // A delete takes the sums too.
        store.delete(&digest).await.unwrap();
        std::fs::write(sums_path(&path), &written).unwrap();
        store.delete(&digest).await.unwrap();
        assert!(!sums_path(&path).exists() && !path.exists());
    }

    #[tokio::test]
    async fn a_scrub_reads_the_disk_not_the_memory_copy() {
        let (store, _dir) = scratch();
        let data = conformance::sample(1024, 13);
        let digest = store.ingest(4096, conformance::body(&data, 1000)).await.unwrap().digest();
        assert_eq!(read_small(&store, &digest).await.unwrap(), data);
        let mut rotten = data.clone();
        rotten[0] ^= 4;
        std::fs::write(store.blob_path(&digest), &rotten).unwrap();
        assert_eq!(read_small(&store, &digest).await.unwrap(), data, "the verified copy in memory");
        let blob = store.open_on_disk(&digest).await.unwrap();
        let size = blob.size;
        let mut stream = blob.stream(0..size);
        assert!(matches!(stream.next().await, Some(Err(StorageError::Corrupt { .. }))));
    }

    #[tokio::test]
    async fn a_rejected_put_leaves_no_file_anywhere() {
        let (store, dir) = scratch();
        let data = conformance::sample(3 * 4096 + 1, 5);
        let manifest = ChunkManifest::of(&data, 4096).unwrap();
        let mut bad = data.clone();
        bad[4096 * 2 + 7] ^= 0x40;
        let err = store.put_verified(&manifest, conformance::body(&bad, 999)).await.unwrap_err();
        assert!(matches!(err, StorageError::Verify { .. }), "{err}");
        assert!(files_under(dir.path()).is_empty(), "{:?}", files_under(dir.path()));
    }

    #[tokio::test]
    async fn a_dropped_upload_leaves_no_temp_file() {
        let (store, dir) = scratch();
        let data = conformance::sample(4096, 9);
        let manifest = ChunkManifest::of(&data, 4096).unwrap();
        // A body that yields a piece, says so, then never ends: the caller gives up on it.
        let (taken_tx, taken_rx) = tokio::sync::oneshot::channel::<()>();
        let first = Bytes::copy_from_slice(&data[..100]);
        let body: ByteStream<'_> = Box::pin(
            stream::once(async move {
                let _ = taken_tx.send(());
                Ok(first)
            })
            .chain(stream::pending()),
        );
        let put = Box::pin(store.put_verified(&manifest, body));
        let Either::Right((_, put)) = futures_util::future::select(put, taken_rx).await else {
            panic!("a body that never ends cannot finish a put");
        };
        assert_eq!(files_under(&dir.path().join("tmp")).len(), 1, "the upload is in progress");
        drop(put);
        assert!(files_under(dir.path()).is_empty(), "{:?}", files_under(dir.path()));
    }

    #[tokio::test]
    async fn list_ignores_foreign_files() {
        let (store, dir) = scratch();
        let data = conformance::sample(10, 1);
        let manifest = store.ingest(4096, conformance::body(&data, 3)).await.unwrap();
        let blobs = dir.path().join("blobs/sha256");
        std::fs::write(blobs.join("README"), b"x").unwrap();
        std::fs::create_dir_all(blobs.join("zz")).unwrap();
        std::fs::write(blobs.join("zz/not-a-digest"), b"x").unwrap();
        // A well-formed name in the wrong shard is not a blob `get` could find.
        let other = Digest::of(b"other").to_hex();
        let wrong_shard = if other.starts_with("00") { "01" } else { "00" };
        std::fs::create_dir_all(blobs.join(wrong_shard)).unwrap();
        std::fs::write(blobs.join(wrong_shard).join(other), b"x").unwrap();
        assert_eq!(store.list().await.unwrap(), vec![(manifest.digest(), 10)]);
    }

    #[test]
    fn display_names_the_root() {
        let (store, dir) = scratch();
        assert_eq!(store.to_string(), format!("local store at {}", dir.path().display()));
    }
}
