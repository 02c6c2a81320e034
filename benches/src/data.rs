//! The files every comparison uses, generated once per run under a temporary directory.
//!
//! They are laid out as `{www}/r/{catalog}/{name}`, so nginx (root `{www}`) answers the same URL
//! paths as a relay, and wrk's path list works unchanged against both.

use std::fs::{self, File};
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;

pub(crate) const KIB: u64 = 1 << 10;
pub(crate) const MIB: u64 = 1 << 20;
pub(crate) const GIB: u64 = 1 << 30;

/// How much data each comparison uses.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sizes {
    /// The one large artifact served (comparison 1) and hashed (comparison 3).
    pub(crate) big: u64,
    /// Small artifacts served under wrk (comparison 2).
    pub(crate) small_count: usize,
    pub(crate) small_len: u64,
    /// The sync mix (comparison 4): many small artifacts plus a few large ones.
    pub(crate) sync_small_count: usize,
    pub(crate) sync_small_len: u64,
    pub(crate) sync_big_count: usize,
    pub(crate) sync_big_len: u64,
    /// Small artifacts the directory answers with `302` under wrk (comparison 5).
    pub(crate) redirect_count: usize,
    pub(crate) redirect_len: u64,
}

impl Sizes {
    pub(crate) const FULL: Self = Self {
        big: GIB,
        small_count: 1000,
        small_len: KIB,
        sync_small_count: 200,
        sync_small_len: 64 * KIB,
        sync_big_count: 4,
        sync_big_len: 250 * MIB,
        redirect_count: 1000,
        redirect_len: KIB,
    };

    /// A smaller set for checking that the harness works; its figures mean little.
    pub(crate) const QUICK: Self = Self {
        big: 64 * MIB,
        small_count: 200,
        small_len: KIB,
        sync_small_count: 40,
        sync_small_len: 64 * KIB,
        sync_big_count: 4,
        sync_big_len: 8 * MIB,
        redirect_count: 200,
        redirect_len: KIB,
    };

    pub(crate) fn sync_total(&self) -> u64 {
        self.sync_small_count as u64 * self.sync_small_len + self.sync_big_count as u64 * self.sync_big_len
    }
}

/// One file of the data set, named as it is published.
#[derive(Clone, Debug)]
pub(crate) struct Artifact {
    pub(crate) catalog: &'static str,
    pub(crate) name: String,
    pub(crate) file: PathBuf,
    pub(crate) len: u64,
}

impl Artifact {
    /// The client path, the same on a relay, the directory and nginx.
    pub(crate) fn url_path(&self) -> String {
        format!("/r/{}/{}", self.catalog, self.name)
    }
}

#[derive(Debug)]
pub(crate) struct Dataset {
    /// Document root: `{www}/r/{catalog}/{name}`.
    pub(crate) www: PathBuf,
    pub(crate) big: Artifact,
    pub(crate) small: Vec<Artifact>,
    pub(crate) sync: Vec<Artifact>,
    /// Published for the directory's `302`s; nginx never reads them (it answers `return 302`).
    pub(crate) redirect: Vec<Artifact>,
}

pub(crate) const BIG_CATALOG: &str = "big";
pub(crate) const SMALL_CATALOG: &str = "small";
pub(crate) const SYNC_CATALOG: &str = "sync";
pub(crate) const REDIRECT_CATALOG: &str = "redirect";

impl Dataset {
    /// Writes every file under `www`, each with its own pseudo-random (incompressible, distinct)
    /// content, so no two artifacts share a digest.
    pub(crate) fn generate(www: &Path, sizes: &Sizes) -> anyhow::Result<Self> {
        let mut seed = 1;
        let mut next = |catalog: &'static str, name: String, len: u64| -> anyhow::Result<Artifact> {
            let dir = www.join("r").join(catalog);
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let file = dir.join(&name);
            seed += 1;
            write_pseudo_random(&file, len, seed)?;
            Ok(Artifact { catalog, name, file, len })
        };
        let big = next(BIG_CATALOG, "big.bin".into(), sizes.big)?;
        let small = (0..sizes.small_count).map(|i| next(SMALL_CATALOG, format!("f{i:04}.bin"), sizes.small_len)).collect::<anyhow::Result<Vec<_>>>()?;
        // Large files spread through the list, so neither side meets them all at once.
        let mut sync =
            (0..sizes.sync_small_count).map(|i| next(SYNC_CATALOG, format!("s{i:03}.bin"), sizes.sync_small_len)).collect::<anyhow::Result<Vec<_>>>()?;
        let stride = sync.len() / sizes.sync_big_count.max(1) + 1;
        for i in 0..sizes.sync_big_count {
            let big = next(SYNC_CATALOG, format!("b{i}.bin"), sizes.sync_big_len)?;
            sync.insert((i * stride).min(sync.len()), big);
        }
        let redirect =
            (0..sizes.redirect_count).map(|i| next(REDIRECT_CATALOG, format!("d{i:04}.bin"), sizes.redirect_len)).collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self { www: www.to_path_buf(), big, small, sync, redirect })
    }
}

/// xorshift64* seeded through splitmix64: fast, deterministic, and distinct per seed.
fn write_pseudo_random(path: &Path, len: u64, seed: u64) -> anyhow::Result<()> {
    let mut state = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    state = (state ^ (state >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    state = (state ^ (state >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    state ^= state >> 31;
    state |= 1;
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = BufWriter::with_capacity(MIB as usize, file);
    let mut buf = vec![0u8; MIB as usize];
    let mut left = len;
    while left > 0 {
        for word in buf.chunks_exact_mut(8) {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            word.copy_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        let take = left.min(buf.len() as u64) as usize;
        out.write_all(&buf[..take]).with_context(|| format!("cannot write {}", path.display()))?;
        left -= take as u64;
    }
    out.flush().with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
