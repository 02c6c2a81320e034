//! Chunk manifests: the whole-file SHA-256 plus the SHA-256 of every fixed-size chunk, so bytes
//! can be verified chunk by chunk as they arrive, from any source, in any order.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;

/// Default chunk size: 1 MiB.
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
/// Smallest accepted chunk size (4 KiB): smaller chunks make manifests larger than they save.
pub const MIN_CHUNK_SIZE: u32 = 1 << 12;
/// Largest accepted chunk size (64 MiB): a chunk is buffered whole while it is verified.
pub const MAX_CHUNK_SIZE: u32 = 1 << 26;
/// Largest artifact accepted (4 TiB); declared sizes beyond it are refused before any allocation.
pub const MAX_ARTIFACT_LEN: u64 = 1 << 42;

/// Why a manifest was refused, or why bytes do not match one.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// A chunk size, in bytes, outside `MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE`.
    #[error("chunk size {0} is outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE} bytes")]
    ChunkSize(u64),
    /// A length, in bytes, beyond `MAX_ARTIFACT_LEN`.
    #[error("declared size {0} exceeds the {MAX_ARTIFACT_LEN}-byte limit")]
    TooLarge(u64),
    /// The chunk list does not fit the declared size and chunk size.
    #[error("manifest lists {listed} chunks but {total_len} bytes in {chunk_size}-byte chunks need {needed}")]
    ChunkCount {
        /// Chunks the manifest lists.
        listed: usize,
        /// Chunks `total_len` bytes take.
        needed: u64,
        /// The declared size, in bytes.
        total_len: u64,
        /// The declared chunk size, in bytes.
        chunk_size: u32,
    },
    /// A chunk's bytes do not hash to its listed SHA-256, or are not its length, or it has no
    /// such index.
    #[error("chunk {index} does not match its SHA-256")]
    ChunkMismatch {
        /// The chunk, counted from 0.
        index: u64,
    },
    /// More or fewer bytes arrived than the manifest declares.
    #[error("got {got} bytes, expected {expected}")]
    Length {
        /// Bytes received (so far, when too many).
        got: u64,
        /// The manifest's `total_len`.
        expected: u64,
    },
    /// Every chunk matched but the whole file did not.
    #[error("whole-file SHA-256 is {got}, expected {expected}")]
    DigestMismatch {
        /// The SHA-256 of the bytes received.
        got: Digest,
        /// The manifest's `digest`.
        expected: Digest,
    },
    /// The wire form is not JSON of a manifest; holds the parser's message.
    #[error("malformed manifest: {0}")]
    Malformed(String),
}

/// A validated manifest: holding one means the chunk count matches the size.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct ChunkManifest {
    total_len: u64,
    chunk_size: u32,
    digest: Digest,
    /// Empty for a one-chunk artifact whose chunk hash is its digest (most artifacts: a
    /// directory keeps a million of these, and the list would be an allocation each);
    /// `chunks()` gives the list either way.
    chunks: Box<[Digest]>,
}

/// The wire form as written: the same fields, the chunk list always in full.
#[derive(Serialize)]
struct WireManifest<'a> {
    total_len: u64,
    chunk_size: u32,
    digest: &'a Digest,
    chunks: &'a [Digest],
}

impl Serialize for ChunkManifest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        WireManifest { total_len: self.total_len, chunk_size: self.chunk_size, digest: &self.digest, chunks: self.chunks() }.serialize(s)
    }
}

/// The unvalidated wire form.
#[derive(Deserialize)]
struct RawManifest {
    total_len: u64,
    chunk_size: u32,
    digest: Digest,
    chunks: Vec<Digest>,
}

impl<'de> Deserialize<'de> for ChunkManifest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawManifest::deserialize(d)?;
        Self::new(raw.total_len, raw.chunk_size, raw.digest, raw.chunks).map_err(serde::de::Error::custom)
    }
}

/// The chunk size as a `u32` if it is in `MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE`, else
/// `ManifestError::ChunkSize`.
pub fn check_chunk_size(chunk_size: u64) -> Result<u32, ManifestError> {
    if (u64::from(MIN_CHUNK_SIZE)..=u64::from(MAX_CHUNK_SIZE)).contains(&chunk_size) {
        Ok(chunk_size as u32)
    } else {
        Err(ManifestError::ChunkSize(chunk_size))
    }
}

impl ChunkManifest {
    /// Parsing is the check: sizes must add up before anything trusts the manifest.
    pub fn new(total_len: u64, chunk_size: u32, digest: Digest, chunks: Vec<Digest>) -> Result<Self, ManifestError> {
        check_chunk_size(u64::from(chunk_size))?;
        if total_len > MAX_ARTIFACT_LEN {
            return Err(ManifestError::TooLarge(total_len));
        }
        let needed = total_len.div_ceil(u64::from(chunk_size));
        if chunks.len() as u64 != needed {
            return Err(ManifestError::ChunkCount { listed: chunks.len(), needed, total_len, chunk_size });
        }
        Ok(Self::stored(total_len, chunk_size, digest, chunks))
    }

    /// As kept: a one-chunk list that repeats the digest is left out.
    fn stored(total_len: u64, chunk_size: u32, digest: Digest, chunks: Vec<Digest>) -> Self {
        let chunks = if chunks.len() == 1 && chunks[0] == digest { Box::default() } else { chunks.into_boxed_slice() };
        Self { total_len, chunk_size, digest, chunks }
    }

    /// Builds the manifest of bytes held in memory.
    pub fn of(data: &[u8], chunk_size: u32) -> Result<Self, ManifestError> {
        let mut builder = ManifestBuilder::new(chunk_size)?;
        builder.update(data)?;
        Ok(builder.finish())
    }

    /// Decodes the JSON wire form, validating it.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        serde_json::from_slice(bytes).map_err(|e| ManifestError::Malformed(e.to_string()))
    }

    /// The artifact's length in bytes.
    pub fn total_len(&self) -> u64 {
        self.total_len
    }

    /// Bytes per chunk; the last chunk may be shorter.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// The whole-file SHA-256.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// The SHA-256 of each chunk, in order.
    pub fn chunks(&self) -> &[Digest] {
        if self.chunks.is_empty() && self.total_len > 0 { std::slice::from_ref(&self.digest) } else { &self.chunks }
    }

    /// Number of chunks: `total_len` divided by `chunk_size`, rounded up (0 for empty bytes).
    pub fn chunk_count(&self) -> u64 {
        self.chunks().len() as u64
    }

    /// Byte range `start..end` of chunk `index`; `None` past the last chunk.
    pub fn chunk_range(&self, index: u64) -> Option<std::ops::Range<u64>> {
        if index >= self.chunk_count() {
            return None;
        }
        let start = index * u64::from(self.chunk_size);
        Some(start..(start + u64::from(self.chunk_size)).min(self.total_len))
    }

    /// Checks one chunk's bytes against its hash; used when chunks arrive out of order.
    pub fn verify_chunk(&self, index: u64, bytes: &[u8]) -> Result<(), ManifestError> {
        let range = self.chunk_range(index).ok_or(ManifestError::ChunkMismatch { index })?;
        if bytes.len() as u64 != range.end - range.start || Digest::of(bytes) != self.chunks()[index as usize] {
            return Err(ManifestError::ChunkMismatch { index });
        }
        Ok(())
    }
}

/// Hashes a stream of bytes into a manifest, chunk by chunk, in constant memory.
pub struct ManifestBuilder {
    whole: Sha256,
    chunks: ChunkHashes,
}

impl ManifestBuilder {
    /// An empty builder; fails if `chunk_size` is out of bounds.
    pub fn new(chunk_size: u32) -> Result<Self, ManifestError> {
        Ok(Self { whole: Sha256::new(), chunks: ChunkHashes::new(chunk_size)? })
    }

    /// Hashes the next bytes; fails once the total would pass `MAX_ARTIFACT_LEN`, and then
    /// takes none of `data`.
    pub fn update(&mut self, data: &[u8]) -> Result<(), ManifestError> {
        self.chunks.update(data)?;
        self.whole.update(data);
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

    /// The manifest of every byte given, closing a short last chunk.
    pub fn finish(self) -> ChunkManifest {
        self.chunks.finish(Digest::from_bytes(self.whole.finalize().into()))
    }
}

/// The per-chunk half of [`ManifestBuilder`], for a caller that hashes the whole stream itself
/// (on another thread, say): the same bytes, in the same order, must go to both.
pub struct ChunkHashes {
    chunk_size: u32,
    chunk: Sha256,
    chunk_fill: u32,
    total_len: u64,
    chunks: Vec<Digest>,
}

impl ChunkHashes {
    /// No bytes yet; fails if `chunk_size` is out of bounds.
    pub fn new(chunk_size: u32) -> Result<Self, ManifestError> {
        check_chunk_size(u64::from(chunk_size))?;
        Ok(Self { chunk_size, chunk: Sha256::new(), chunk_fill: 0, total_len: 0, chunks: Vec::new() })
    }

    /// Hashes the next bytes into their chunks; fails once the total would pass
    /// `MAX_ARTIFACT_LEN`, and then takes none of `data`.
    pub fn update(&mut self, mut data: &[u8]) -> Result<(), ManifestError> {
        let total = self.total_len.saturating_add(data.len() as u64);
        if total > MAX_ARTIFACT_LEN {
            return Err(ManifestError::TooLarge(total));
        }
        self.total_len = total;
        while !data.is_empty() {
            let room = (self.chunk_size - self.chunk_fill) as usize;
            let take = room.min(data.len());
            self.chunk.update(&data[..take]);
            self.chunk_fill += take as u32;
            data = &data[take..];
            if self.chunk_fill == self.chunk_size {
                self.chunks.push(Digest::from_bytes(std::mem::take(&mut self.chunk).finalize().into()));
                self.chunk_fill = 0;
            }
        }
        Ok(())
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.total_len
    }

    /// True until a byte has been hashed.
    pub fn is_empty(&self) -> bool {
        self.total_len == 0
    }

    /// The manifest of every byte given, closing a short last chunk, with `digest` as the
    /// SHA-256 of the whole stream (the caller's to get right: nothing here checks it).
    pub fn finish(mut self, digest: Digest) -> ChunkManifest {
        if self.chunk_fill > 0 {
            self.chunks.push(Digest::from_bytes(self.chunk.finalize().into()));
        }
        ChunkManifest::stored(self.total_len, self.chunk_size, digest, self.chunks)
    }
}

/// Verifies an in-order byte stream against a manifest as it arrives. A mismatching chunk is
/// reported as soon as its last byte is in, and a stream longer than declared as soon as it
/// overflows, so a writer never keeps more than one bad chunk.
pub struct ChunkVerifier<'m> {
    manifest: &'m ChunkManifest,
    chunk: Sha256,
    whole: Sha256,
    chunk_fill: u32,
    index: u64,
    seen: u64,
}

impl<'m> ChunkVerifier<'m> {
    /// A verifier at the start of `manifest`'s bytes.
    pub fn new(manifest: &'m ChunkManifest) -> Self {
        Self { manifest, chunk: Sha256::new(), whole: Sha256::new(), chunk_fill: 0, index: 0, seen: 0 }
    }

    /// Checks the next bytes of the stream: `Length` if they run past the declared size,
    /// `ChunkMismatch` as soon as a chunk they complete does not match.
    pub fn update(&mut self, mut data: &[u8]) -> Result<(), ManifestError> {
        let expected = self.manifest.total_len;
        let got = self.seen.saturating_add(data.len() as u64);
        if got > expected {
            return Err(ManifestError::Length { got, expected });
        }
        self.seen = got;
        self.whole.update(data);
        while !data.is_empty() {
            let this_chunk = self.manifest.chunk_range(self.index).map_or(0, |r| (r.end - r.start) as u32);
            let take = ((this_chunk - self.chunk_fill) as usize).min(data.len());
            self.chunk.update(&data[..take]);
            self.chunk_fill += take as u32;
            data = &data[take..];
            if self.chunk_fill == this_chunk {
                let got = Digest::from_bytes(std::mem::take(&mut self.chunk).finalize().into());
                if got != self.manifest.chunks()[self.index as usize] {
                    return Err(ManifestError::ChunkMismatch { index: self.index });
                }
                self.index += 1;
                self.chunk_fill = 0;
            }
        }
        Ok(())
    }

    /// Chunks fully received and verified so far.
    pub fn verified_chunks(&self) -> u64 {
        self.index
    }

    /// Checks the end of the stream: exactly `total_len` bytes arrived and they hash to the
    /// whole-file digest.
    pub fn finish(self) -> Result<(), ManifestError> {
        let expected = self.manifest.total_len;
        if self.seen != expected {
            return Err(ManifestError::Length { got: self.seen, expected });
        }
        let got = Digest::from_bytes(self.whole.finalize().into());
        if got != self.manifest.digest {
            return Err(ManifestError::DigestMismatch { got, expected: self.manifest.digest });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn a_one_chunk_manifest_keeps_no_list_but_shows_and_sends_it() {
        let bytes = data(1000);
        let m = ChunkManifest::of(&bytes, MIN_CHUNK_SIZE).unwrap();
        assert!(m.chunks.is_empty(), "not stored");
        assert_eq!(m.chunks(), &[Digest::of(&bytes)]);
        assert_eq!(m.chunk_count(), 1);
        m.verify_chunk(0, &bytes).unwrap();
        let wire = serde_json::to_string(&m).unwrap();
        assert!(wire.ends_with(&format!("\"chunks\":[\"{}\"]}}", Digest::of(&bytes))), "{wire}");
        assert_eq!(ChunkManifest::decode(wire.as_bytes()).unwrap(), m);
        // One chunk whose hash is not the digest (a wrong manifest, kept as sent, then refused
        // by the chunk check) keeps its list.
        let other = ChunkManifest::new(1000, MIN_CHUNK_SIZE, m.digest(), vec![Digest::of(b"x")]).unwrap();
        assert_eq!(other.chunks(), &[Digest::of(b"x")]);
        assert!(other.verify_chunk(0, &bytes).is_err());
        assert_ne!(other, m);
        // Empty bytes: no chunk at all.
        assert_eq!(ChunkManifest::of(b"", MIN_CHUNK_SIZE).unwrap().chunk_count(), 0);
    }

    #[test]
    fn sizes_at_chunk_boundaries_have_the_right_chunk_counts() {
        let cs = MIN_CHUNK_SIZE as usize;
        for (len, count) in [(0, 0), (1, 1), (cs - 1, 1), (cs, 1), (cs + 1, 2), (3 * cs, 3)] {
            let m = ChunkManifest::of(&data(len), cs as u32).unwrap();
            assert_eq!((m.total_len(), m.chunk_count()), (len as u64, count), "len {len}");
            assert_eq!(m.digest(), Digest::of(&data(len)));
        }
    }

    #[test]
    fn builder_is_independent_of_how_input_is_split() {
        let bytes = data(3 * MIN_CHUNK_SIZE as usize + 17);
        let whole = ChunkManifest::of(&bytes, MIN_CHUNK_SIZE).unwrap();
        let mut b = ManifestBuilder::new(MIN_CHUNK_SIZE).unwrap();
        for piece in bytes.chunks(1000) {
            b.update(piece).unwrap();
        }
        assert_eq!(b.finish(), whole);
    }

    #[test]
    fn verifier_accepts_the_original_and_names_the_bad_chunk() {
        let bytes = data(2 * MIN_CHUNK_SIZE as usize + 5);
        let m = ChunkManifest::of(&bytes, MIN_CHUNK_SIZE).unwrap();
        let mut v = ChunkVerifier::new(&m);
        v.update(&bytes).unwrap();
        v.finish().unwrap();

        let mut bad = bytes.clone();
        bad[MIN_CHUNK_SIZE as usize + 3] ^= 1;
        let mut v = ChunkVerifier::new(&m);
        assert_eq!(v.update(&bad), Err(ManifestError::ChunkMismatch { index: 1 }));
        assert_eq!(m.verify_chunk(1, &bad[MIN_CHUNK_SIZE as usize..2 * MIN_CHUNK_SIZE as usize]), Err(ManifestError::ChunkMismatch { index: 1 }));
        assert_eq!(m.verify_chunk(0, &bad[..MIN_CHUNK_SIZE as usize]), Ok(()));
    }

    #[test]
    fn verifier_rejects_short_and_long_streams() {
        let bytes = data(100);
        let m = ChunkManifest::of(&bytes, MIN_CHUNK_SIZE).unwrap();
        let mut v = ChunkVerifier::new(&m);
        v.update(&bytes[..99]).unwrap();
        assert_eq!(v.finish(), Err(ManifestError::Length { got: 99, expected: 100 }));
        let mut v = ChunkVerifier::new(&m);
        assert!(matches!(v.update(&data(101)), Err(ManifestError::Length { got: 101, .. })));
    }

    #[test]
    fn decode_refuses_manifests_that_do_not_add_up() {
        let m = ChunkManifest::of(&data(10_000), MIN_CHUNK_SIZE).unwrap();
        let mut json: serde_json::Value = serde_json::to_value(&m).unwrap();
        assert_eq!(ChunkManifest::decode(json.to_string().as_bytes()), Ok(m));
        json["total_len"] = 1_000_000.into();
        assert!(matches!(ChunkManifest::decode(json.to_string().as_bytes()), Err(ManifestError::Malformed(_))));
        json["total_len"] = u64::MAX.into();
        assert!(ChunkManifest::decode(json.to_string().as_bytes()).is_err());
        json["total_len"] = 10_000.into();
        json["chunk_size"] = 1.into();
        assert!(ChunkManifest::decode(json.to_string().as_bytes()).is_err());
        assert!(ChunkManifest::decode(b"{").is_err());
    }
}
