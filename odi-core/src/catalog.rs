//! Catalogs: named, append-only logs of `Put` and expunge entries with sequence numbers.
//!
//! A catalog is **immutable** by default: once a path is bound to some bytes it is never bound
//! to other bytes, so its answers may be cached for good. A catalog created `mutable` (index
//! files: `Packages`, `repomd.xml`, `latest.txt`) may rebind a path to new bytes, and its names
//! are answered so that caches revalidate (`no-cache` with the ETag).

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

/// A catalog's settings, as created and as replicated in its log.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct CatalogConfig {
    /// The catalog's name, unique in its directory.
    pub name: CatalogName,
    /// Relays that should hold each artifact.
    pub replicas: u32,
    /// Bytes per chunk in the manifests of artifacts published to this catalog.
    pub chunk_size: u32,
    /// When the catalog was created.
    pub created_at: UnixTime,
    /// Paths may be published again with other bytes. Absent in records written before it
    /// existed: those catalogs are immutable.
    #[serde(default)]
    pub mutable: bool,
    /// The download tree this catalog mirrors (`--origin`); absent for catalogs published to
    /// by hand, and in records written before origins existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<OriginConfig>,
}

/// Where an origin catalog pulls from, and how often (set by admins only).
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct OriginConfig {
    /// An `http://` URL of an autoindex page (nginx, Apache, lighttpd).
    pub url: String,
    /// Seconds between scheduled syncs.
    pub interval_secs: u64,
}

/// Scheduled syncs of an origin catalog, unless `--origin-interval` says otherwise.
pub const DEFAULT_ORIGIN_INTERVAL_SECS: u64 = 3600;

/// One published file: where it lives in its catalog and what its bytes are.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct Artifact {
    /// The catalog that publishes it.
    pub catalog: CatalogName,
    /// Its name inside the catalog.
    pub path: ArtifactPath,
    /// Shared: a catalog has few distinct media types.
    pub media_type: Arc<str>,
    /// Labels that decide which tag-filtered relays hold it and which links carry it; empty in
    /// records written before tags existed.
    #[serde(default)]
    pub tags: Vec<String>,
    /// When the `Put` that bound this path to these bytes was written.
    pub published_at: UnixTime,
    /// Shared with the directory's index by digest.
    pub manifest: Arc<ChunkManifest>,
}

impl Artifact {
    /// The whole-file SHA-256, from the manifest.
    pub fn digest(&self) -> Digest {
        self.manifest.digest()
    }

    /// Length in bytes, from the manifest.
    pub fn size(&self) -> u64 {
        self.manifest.total_len()
    }
}

/// One entry of a catalog's log.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct LogEntry {
    /// 1 for a catalog's first entry, then +1 per entry, never reused.
    pub seq: u64,
    /// When the entry was written.
    pub at: UnixTime,
    /// What the entry does.
    pub op: LogOp,
}

#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
/// What a log entry does to its catalog; serialized with an `op` field naming the variant.
#[serde(tag = "op", rename_all = "snake_case")]
pub enum LogOp {
    /// Binds the artifact's path to its bytes (again, in a mutable catalog).
    Put(Artifact),
    /// Withdraws one name: `path` answers 410 from now on. The bytes (`digest`, what the path
    /// held) stay servable under any other name that holds them; once no name does, relays
    /// drop them like any unassigned blob.
    ExpungePath {
        /// The name withdrawn.
        path: ArtifactPath,
        /// The bytes `path` held.
        digest: Digest,
    },
    /// Bars `digest` from the whole directory: every name holding it (in every catalog) answers
    /// 410, `/blobs/` answers 410, publishing it anywhere is refused, and relays delete it at
    /// once. Written to the log of every catalog in one transaction, so each catalog's log
    /// carries it to wherever that catalog is replicated; applying any one copy bars it.
    ExpungeDigest {
        /// The bytes barred.
        digest: Digest,
    },
    /// Changes the tags of the artifact at `path` holding `digest`: `tags := (tags − remove) ∪ add`.
    Tag {
        /// The artifact's name.
        path: ArtifactPath,
        /// The bytes the artifact holds: the entry changes only a `Put` of these bytes at `path`.
        digest: Digest,
        /// Tags to add.
        #[serde(default)]
        add: Vec<String>,
        /// Tags to remove.
        #[serde(default)]
        remove: Vec<String>,
    },
    /// Written by earlier versions for an expunge by path, which barred the digest: replayed
    /// as `ExpungeDigest` (and `path` answers 410). Never written now.
    Expunge {
        /// The name the expunge was asked for.
        path: ArtifactPath,
        /// The bytes it held, barred everywhere.
        digest: Digest,
    },
}
