//! The manifest of an upload, hashed on two threads when the machine has two cores.
//!
//! A publish hashes every byte twice: once into the whole-file SHA-256, once into its chunk's.
//! One thread does both at half the speed of `openssl dgst -sha256`; here, once an upload is
//! past [`THREAD_AFTER`] bytes, the whole-file hash moves to a helper thread fed the same
//! `Bytes` (reference-counted, not copied) in order, while the caller's thread hashes the
//! chunks. Small uploads never pay for a thread.

use std::sync::OnceLock;
use std::sync::mpsc::{self, SyncSender};
use std::thread::JoinHandle;

use bytes::Bytes;
use odi_core::digest::Digest;
use odi_core::manifest::{ChunkHashes, ChunkManifest, ManifestError};
use sha2::{Digest as _, Sha256};

/// Bytes hashed on the caller's thread before the whole-file hash moves to its own: below a
/// few MiB the thread's start costs about what it saves.
pub const THREAD_AFTER: u64 = 4 * 1024 * 1024;

/// Pieces queued for the whole-file thread before `update` waits for it: bounds what an upload
/// holds in memory to this many pieces while the two hashes run at slightly different speeds.
const QUEUE: usize = 16;

/// Builds a [`ChunkManifest`] from a stream of pieces, as [`odi_core::manifest::ManifestBuilder`]
/// does, with the whole-file hash on a second thread once the stream is large enough.
pub struct ManifestHasher {
    chunks: ChunkHashes,
    whole: Whole,
    /// Whether this machine has a second core to give the whole-file hash.
    parallel: bool,
}

enum Whole {
    Here(Sha256),
    Thread { queue: SyncSender<Bytes>, done: JoinHandle<[u8; 32]> },
}

impl ManifestHasher {
    /// An empty hasher; fails if `chunk_size` is out of bounds.
    pub fn new(chunk_size: u32) -> Result<Self, ManifestError> {
        Ok(Self { chunks: ChunkHashes::new(chunk_size)?, whole: Whole::Here(Sha256::new()), parallel: two_cores() })
    }

    /// As [`new`](Self::new), on one thread whatever the machine (for comparisons).
    pub fn single_threaded(chunk_size: u32) -> Result<Self, ManifestError> {
        Ok(Self { parallel: false, ..Self::new(chunk_size)? })
    }

    /// Hashes the next piece; fails once the total would pass `MAX_ARTIFACT_LEN`, and then
    /// takes none of it.
    pub fn update(&mut self, piece: &Bytes) -> Result<(), ManifestError> {
        self.chunks.update(piece)?;
        match &mut self.whole {
            Whole::Here(hash) => {
                hash.update(piece);
                if self.parallel && self.chunks.len() >= THREAD_AFTER {
                    self.move_whole_to_thread();
                }
            }
            Whole::Thread { queue, .. } => {
                if queue.send(piece.clone()).is_err() {
                    // The thread only stops early by panicking; surface that here.
                    self.join_whole();
                }
            }
        }
        Ok(())
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.chunks.len()
    }

    /// True until a byte has been hashed.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// The manifest of every piece given; waits for the whole-file thread to finish its queue.
    pub fn finish(mut self) -> ChunkManifest {
        let whole = self.join_whole();
        self.chunks.finish(Digest::from_bytes(whole))
    }

    fn move_whole_to_thread(&mut self) {
        let Whole::Here(hash) = &self.whole else { return };
        let (queue, pieces) = mpsc::sync_channel::<Bytes>(QUEUE);
        let mut hash = hash.clone();
        let spawned = std::thread::Builder::new().name("odi-hash".into()).spawn(move || {
            for piece in pieces {
                hash.update(&piece);
            }
            hash.finalize().into()
        });
        match spawned {
            Ok(done) => self.whole = Whole::Thread { queue, done },
            // No thread to be had: carry on here, as on one core.
            Err(e) => {
                tracing::debug!("cannot start a hashing thread, hashing on one: {e}");
                self.parallel = false;
            }
        }
    }

    /// The whole-file digest, waiting for the thread if it has one; a panic there resumes here.
    fn join_whole(&mut self) -> [u8; 32] {
        match std::mem::replace(&mut self.whole, Whole::Here(Sha256::new())) {
            Whole::Here(hash) => hash.finalize().into(),
            Whole::Thread { queue, done } => {
                drop(queue);
                done.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            }
        }
    }
}

fn two_cores() -> bool {
    static TWO: OnceLock<bool> = OnceLock::new();
    *TWO.get_or_init(|| std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use odi_core::manifest::{MIN_CHUNK_SIZE, ManifestBuilder};

    fn pieces(len: usize, piece: usize) -> (Vec<u8>, Vec<Bytes>) {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4099) as u8).collect();
        let pieces = data.chunks(piece).map(Bytes::copy_from_slice).collect();
        (data, pieces)
    }

    fn hashed(mut hasher: ManifestHasher, pieces: &[Bytes]) -> ChunkManifest {
        for p in pieces {
            hasher.update(p).unwrap();
        }
        hasher.finish()
    }

    #[test]
    fn gives_the_single_threaded_manifest_below_and_above_the_thread_threshold() {
        for (len, piece) in [(0, 1), (1000, 333), (THREAD_AFTER as usize - 1, 65_536), (THREAD_AFTER as usize * 3 + 12_345, 40_000)] {
            let (data, pieces) = pieces(len, piece);
            let reference = ChunkManifest::of(&data, MIN_CHUNK_SIZE).unwrap();
            let mut parallel = ManifestHasher::new(MIN_CHUNK_SIZE).unwrap();
            parallel.parallel = true;
            assert_eq!(hashed(parallel, &pieces), reference, "two threads, {len} bytes in pieces of {piece}");
            assert_eq!(hashed(ManifestHasher::single_threaded(MIN_CHUNK_SIZE).unwrap(), &pieces), reference, "one thread, {len} bytes");
        }
    }

    #[test]
    fn moves_the_whole_hash_to_a_thread_once_past_the_threshold() {
        let (_, pieces) = pieces(THREAD_AFTER as usize + 1, 1 << 20);
        let mut hasher = ManifestHasher::new(MIN_CHUNK_SIZE).unwrap();
        hasher.parallel = true;
        for p in &pieces {
            hasher.update(p).unwrap();
        }
        assert!(matches!(hasher.whole, Whole::Thread { .. }));
        let mut builder = ManifestBuilder::new(MIN_CHUNK_SIZE).unwrap();
        pieces.iter().for_each(|p| builder.update(p).unwrap());
        assert_eq!(hasher.finish(), builder.finish());
    }
}
