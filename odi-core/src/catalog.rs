//! Catalogs: named, append-only logs of `Put` and `Expunge` entries with sequence numbers.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::manifest::ChunkManifest;
use crate::path::{ArtifactPath, CatalogName};
use crate::time::UnixTime;

/// Replicas per artifact when a catalog does not say.
pub const DEFAULT_REPLICAS: u32 = 2;
/// Most replicas a catalog may ask for.
pub const MAX_REPLICAS: u32 = 64;

#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct CatalogConfig {
    pub name: CatalogName,
    /// Relays that should hold each artifact.
    pub replicas: u32,
    pub chunk_size: u32,
    pub created_at: UnixTime,
}

/// One published file: where it lives in its catalog and what its bytes are.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct Artifact {
    pub catalog: CatalogName,
    pub path: ArtifactPath,
    /// Shared: a catalog has few distinct media types.
    pub media_type: Arc<str>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub published_at: UnixTime,
    /// Shared with the directory's index by digest.
    pub manifest: Arc<ChunkManifest>,
}

impl Artifact {
    pub fn digest(&self) -> Digest {
        self.manifest.digest()
    }

    pub fn size(&self) -> u64 {
        self.manifest.total_len()
    }
}

#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct LogEntry {
    /// 1 for a catalog's first entry, then +1 per entry, never reused.
    pub seq: u64,
    pub at: UnixTime,
    pub op: LogOp,
}

#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum LogOp {
    Put(Artifact),
    /// Removes `path` and bars `digest` from the network for good.
    Expunge {
        path: ArtifactPath,
        digest: Digest,
    },
}
