//! Block checksums kept beside each stored blob, so every read can be checked on the way out.
//!
//! A blob's SHA-256 is checked once, when it arrives. Checking it again on every read would
//! cost a whole-file hash per answer (and a range could not be checked at all), so the store
//! also keeps one xxh3-64 checksum per [`SUM_BLOCK`] of the blob, made from exactly the byte
//! stream whose SHA-256 matched, in a sidecar file `{blob}.sums`. A reader hashes each block it
//! reads (xxh3 runs at memory speed) and stops at the first block that does not match: bit rot
//! or a hand-edited file is never served as the blob.
//!
//! Sidecar format (little endian): `ODISUMS1`, block size `u32`, blob length `u64`, one `u64`
//! per block, then the xxh3-64 of everything before it, so a damaged sidecar reads as missing
//! (and the blob is then verified whole against its digest and the sidecar written again).

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::{Xxh3, xxh3_64};

/// Bytes covered by one checksum: the store's serving read size, so each read is one check.
pub const SUM_BLOCK: u32 = 1 << 20;
const MAGIC: &[u8; 8] = b"ODISUMS1";
const HEADER: usize = 8 + 4 + 8;

/// The checksums of one blob's blocks.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct BlockSums {
    block: u32,
    len: u64,
    sums: Vec<u64>,
}

impl BlockSums {
    /// Bytes per block (the last block may be shorter).
    pub fn block_size(&self) -> u32 {
        self.block
    }

    /// The length of the blob these sums describe.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The byte range of block `index`.
    pub fn block_range(&self, index: u64) -> Option<std::ops::Range<u64>> {
        let start = index.checked_mul(u64::from(self.block))?;
        (start < self.len).then(|| start..(start + u64::from(self.block)).min(self.len))
    }

    /// True when `data` is exactly block `index` as it was verified.
    pub fn check(&self, index: u64, data: &[u8]) -> bool {
        let Some(range) = self.block_range(index) else { return false };
        let Some(sum) = usize::try_from(index).ok().and_then(|i| self.sums.get(i)) else { return false };
        range.end - range.start == data.len() as u64 && xxh3_64(data) == *sum
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + 8 * self.sums.len() + 8);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.block.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
        for sum in &self.sums {
            out.extend_from_slice(&sum.to_le_bytes());
        }
        let trailer = xxh3_64(&out);
        out.extend_from_slice(&trailer.to_le_bytes());
        out
    }

    /// Parses a sidecar; `None` if it is damaged or describes a blob of another length.
    pub fn decode(bytes: &[u8], len: u64) -> Option<Self> {
        let body_len = bytes.len().checked_sub(8)?;
        let (body, trailer) = bytes.split_at(body_len);
        if body.len() < HEADER || &body[..8] != MAGIC || u64::from_le_bytes(trailer.try_into().ok()?) != xxh3_64(body) {
            return None;
        }
        let block = u32::from_le_bytes(body[8..12].try_into().ok()?);
        let stored_len = u64::from_le_bytes(body[12..20].try_into().ok()?);
        let rest = &body[HEADER..];
        if block == 0 || stored_len != len || rest.len() % 8 != 0 || (rest.len() / 8) as u64 != len.div_ceil(u64::from(block)) {
            return None;
        }
        let sums = rest.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default())).collect();
        Some(Self { block, len, sums })
    }
}

/// Builds the checksums of a byte stream fed in order.
#[derive(Clone)]
pub struct SumsBuilder {
    hasher: Xxh3,
    in_block: u32,
    len: u64,
    sums: Vec<u64>,
}

impl Default for SumsBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl SumsBuilder {
    pub fn new() -> Self {
        Self { hasher: Xxh3::new(), in_block: 0, len: 0, sums: Vec::new() }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let take = ((SUM_BLOCK - self.in_block) as usize).min(data.len());
            let (head, rest) = data.split_at(take);
            self.hasher.update(head);
            self.in_block += take as u32;
            self.len += take as u64;
            data = rest;
            if self.in_block == SUM_BLOCK {
                self.sums.push(self.hasher.digest());
                self.hasher.reset();
                self.in_block = 0;
            }
        }
    }

    pub fn finish(mut self) -> BlockSums {
        if self.in_block > 0 {
            self.sums.push(self.hasher.digest());
        }
        BlockSums { block: SUM_BLOCK, len: self.len, sums: self.sums }
    }
}

impl std::fmt::Debug for SumsBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SumsBuilder").field("len", &self.len).finish()
    }
}

/// Where the sums of the blob stored at `blob` live.
pub fn sums_path(blob: &Path) -> PathBuf {
    let mut name = blob.as_os_str().to_owned();
    name.push(".sums");
    PathBuf::from(name)
}

/// Reads the sums of the blob at `blob` of length `len`; `None` when absent or damaged.
pub fn read_sums(blob: &Path, len: u64) -> Option<BlockSums> {
    let bytes = std::fs::read(sums_path(blob)).ok()?;
    BlockSums::decode(&bytes, len)
}

/// Writes the sums of the blob at `blob` durably and atomically: a temp file in `tmp_dir` (on
/// the same file system, emptied when the store opens, so a crash leaves nothing behind),
/// fsync, rename. The caller fsyncs the blob's directory (the blob's own rename into it does
/// that), so sums are always written before the blob they describe becomes visible.
pub fn write_sums(blob: &Path, sums: &BlockSums, tmp_dir: &Path) -> io::Result<()> {
    let dest = sums_path(blob);
    // Unique per writer: two tasks may store the same blob at once.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = tmp_dir.join(format!("{}-sums-{n}.tmp", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&sums.encode())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &dest)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sums_of(data: &[u8], pieces: usize) -> BlockSums {
        let mut b = SumsBuilder::new();
        for piece in data.chunks(pieces.max(1)) {
            b.update(piece);
        }
        b.finish()
    }

    #[test]
    fn sums_do_not_depend_on_how_the_stream_was_cut_and_catch_a_flipped_byte() {
        let data: Vec<u8> = (0..(2 * SUM_BLOCK as usize + 12_345)).map(|i| (i * 31 % 251) as u8).collect();
        let a = sums_of(&data, 4096);
        assert_eq!(a, sums_of(&data, 1_000_003));
        assert_eq!(a.sums.len(), 3);
        for i in 0..3 {
            let r = a.block_range(i).unwrap();
            assert!(a.check(i, &data[r.start as usize..r.end as usize]));
        }
        let mut bad = data[..SUM_BLOCK as usize].to_vec();
        bad[77] ^= 1;
        assert!(!a.check(0, &bad));
        assert!(!a.check(0, &data[..100]), "a short read is not the block");
        assert!(!a.check(3, &[]), "past the end");
        assert_eq!(sums_of(&[], 1).sums.len(), 0);
    }

    #[test]
    fn the_relay_budgets_exactly_the_sidecar_size() {
        for len in [0u64, 1, 5000, u64::from(SUM_BLOCK), u64::from(SUM_BLOCK) + 1, 3 * u64::from(SUM_BLOCK) + 17] {
            let sums = sums_of(&vec![1u8; len as usize], 65_536);
            assert_eq!(odi_core::relay::footprint(len), len + sums.encode().len() as u64, "len {len}");
        }
    }

    #[test]
    fn a_damaged_or_mismatched_sidecar_reads_as_missing() {
        let data = vec![7u8; 5000];
        let sums = sums_of(&data, 100);
        let enc = sums.encode();
        assert_eq!(BlockSums::decode(&enc, 5000), Some(sums));
        assert_eq!(BlockSums::decode(&enc, 5001), None);
        for at in [0, 9, 13, 21, enc.len() - 1] {
            let mut bad = enc.clone();
            bad[at] ^= 0x10;
            assert_eq!(BlockSums::decode(&bad, 5000), None, "byte {at}");
        }
        assert_eq!(BlockSums::decode(&enc[..enc.len() - 3], 5000), None);
        assert_eq!(BlockSums::decode(b"", 0), None);
    }
}
