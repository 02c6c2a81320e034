//! The storage traits. odi-core defines them and never calls them: its machines emit effects,
//! and drivers (odi-net) run those effects against implementations (odi-storage).

use std::fmt;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_core::Stream;
use serde::{Deserialize, Serialize};

use crate::catalog::{CatalogConfig, LogEntry};
use crate::digest::Digest;
use crate::federation::FedRecord;
use crate::manifest::{ChunkManifest, ManifestError};
use crate::message::{Capacity, NodeId, RelayUrl};
use crate::path::CatalogName;
use crate::time::UnixTime;

/// A stream of bytes going into or out of a store.
pub type ByteStream<'a> = Pin<Box<dyn Stream<Item = Result<Bytes, StorageError>> + Send + 'a>>;

/// The result of a storage call; the error defaults to `StorageError`.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Why a `BlobStore` or `MetaStore` call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The blob is absent: for GC, done; for a pull, ask another source.
    #[error("blob {digest} is not in {store}")]
    NotFound {
        /// The backend that answered (`local`, `sqlite`, …).
        store: &'static str,
        /// The blob asked for.
        digest: Digest,
    },
    /// The bytes offered did not match their manifest; nothing was kept.
    #[error("rejected bytes for {digest}: {source}")]
    Verify {
        /// The blob the bytes were offered as.
        digest: Digest,
        /// Which check they failed.
        source: ManifestError,
    },
    /// A stored blob's bytes no longer match the checksums made when they were verified (bit
    /// rot, or tampering on disk): the blob must be dropped and fetched again.
    #[error("blob {digest} in {store} is corrupt near byte {offset}; drop it and fetch it again")]
    Corrupt {
        /// The backend holding the blob.
        store: &'static str,
        /// The corrupt blob.
        digest: Digest,
        /// Where the block that failed its check starts, in bytes from the start of the blob.
        offset: u64,
    },
    /// The requested range starts at or past the end of the blob.
    #[error("range not satisfiable: the blob has {size} bytes")]
    RangeNotSatisfiable {
        /// The size of the whole blob, in bytes.
        size: u64,
    },
    /// The stream being stored failed (for example, the uploader hung up); nothing was kept.
    #[error("input stream failed: {0}")]
    Input(String),
    /// The backend itself failed (I/O, database, network).
    #[error("{store} backend failed: {source}")]
    Backend {
        /// The backend that failed.
        store: &'static str,
        /// What it reported.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StorageError {
    /// A `Backend` error from `store`, boxing `source`.
    pub fn backend(store: &'static str, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Backend { store, source: source.into() }
    }
}

/// A blob, or a range of one, on its way out of a store.
pub struct GetResult {
    /// The size of the whole blob.
    pub size: u64,
    /// The byte range `stream` yields.
    pub range: Range<u64>,
    /// The bytes of `range`, in order.
    pub stream: ByteStream<'static>,
}

impl fmt::Debug for GetResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetResult").field("size", &self.size).field("range", &self.range).finish_non_exhaustive()
    }
}

/// Content-addressed blob storage. A blob becomes visible under its digest only once all of it
/// is verified and durable, so a reader never sees a partial or wrong blob.
#[async_trait]
pub trait BlobStore: fmt::Debug + fmt::Display + Send + Sync + 'static {
    /// Stores bytes of unknown digest (a publish), hashing them into a manifest as they stream.
    async fn ingest(&self, chunk_size: u32, body: ByteStream<'_>) -> Result<ChunkManifest>;

    /// Stores bytes that must match `manifest`, checking each chunk as it completes.
    async fn put_verified(&self, manifest: &ChunkManifest, body: ByteStream<'_>) -> Result<()>;

    /// Reads a blob, or the part of it in `range` (clamped to its end).
    async fn get(&self, digest: &Digest, range: Option<Range<u64>>) -> Result<GetResult>;

    /// The size of a stored blob.
    async fn size(&self, digest: &Digest) -> Result<u64>;

    /// Removes a blob; removing an absent blob succeeds.
    async fn delete(&self, digest: &Digest) -> Result<()>;

    /// Every stored blob with its size, in digest order.
    async fn list(&self) -> Result<Vec<(Digest, u64)>>;
}

macro_rules! forward_blob_store {
    ($ty:ty) => {
        #[async_trait]
        impl<T: BlobStore + ?Sized> BlobStore for $ty {
            async fn ingest(&self, chunk_size: u32, body: ByteStream<'_>) -> Result<ChunkManifest> {
                (**self).ingest(chunk_size, body).await
            }
            async fn put_verified(&self, manifest: &ChunkManifest, body: ByteStream<'_>) -> Result<()> {
                (**self).put_verified(manifest, body).await
            }
            async fn get(&self, digest: &Digest, range: Option<Range<u64>>) -> Result<GetResult> {
                (**self).get(digest, range).await
            }
            async fn size(&self, digest: &Digest) -> Result<u64> {
                (**self).size(digest).await
            }
            async fn delete(&self, digest: &Digest) -> Result<()> {
                (**self).delete(digest).await
            }
            async fn list(&self) -> Result<Vec<(Digest, u64)>> {
                (**self).list().await
            }
        }
    };
}
forward_blob_store!(Arc<T>);
forward_blob_store!(Box<T>);

/// Clamps a requested range to a blob of `size` bytes; `None` means the whole blob.
pub fn clamp_range(range: Option<Range<u64>>, size: u64) -> Result<Range<u64>> {
    match range {
        None => Ok(0..size),
        Some(r) if r.start >= size && !(size == 0 && r.start == 0) => Err(StorageError::RangeNotSatisfiable { size }),
        Some(r) => Ok(r.start..r.end.min(size).max(r.start)),
    }
}

/// What a directory persists. Restoring is replaying these records in order into a fresh
/// `Directory`, the same code path as applying them live.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum Record {
    /// A catalog was created with this configuration.
    Catalog(CatalogConfig),
    /// An entry appended to a catalog's log.
    Log {
        /// The catalog whose log it extends.
        catalog: CatalogName,
        /// The entry, with its sequence number.
        entry: LogEntry,
    },
    /// A relay enrolled, or its record changed; a later record for the same id replaces it.
    Relay(RelayRecord),
    /// The relay is forgotten: gone for long, or replaced by another key at its URL.
    RelayForgotten {
        /// The relay's key.
        id: NodeId,
    },
    /// A named enrollment token, one per relay operator, that an admin can revoke.
    EnrollToken(EnrollTokenRecord),
    /// The directory's own token for `role`, replacing any earlier one.
    Token {
        /// What the token lets its holder do.
        role: TokenRole,
        /// HMAC-SHA256 of the token under the directory's token key; the token itself is never
        /// stored.
        hash: Digest,
    },
    /// Federation state: accepted signed entries, links, cursors, held blobs (see
    /// [`crate::federation::FedRecord`]). Replayed in the order persisted.
    Fed(FedRecord),
    /// What heartbeats taught one process of a directory whose store several processes share,
    /// for the others (see [`DirectoryConfig::share_heartbeats`](crate::directory::DirectoryConfig)):
    /// soft state, carried by the store's change feed only. Stores keep no table of it, and
    /// `load` never returns it.
    Heard {
        /// The heartbeats taken since the last such record, in the order taken.
        relays: Vec<HeardRelay>,
    },
}

/// One heartbeat a process took, as the other processes apply it: the relay, its load, and
/// its held report as a change the others check against their copy of the relay's set (the
/// whole set when the report changed it from a whole set, else a delta, empty when nothing
/// changed, named by the set's digest either way).
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct HeardRelay {
    /// The relay that sent it.
    pub relay: NodeId,
    /// Its report; `generation` means nothing to the other processes and is 0.
    pub report: crate::message::Heartbeat,
    /// When the relay had applied the state the process would have sent it: each of its
    /// catalogs' log positions then. It knows every name bound up to them, so a process that
    /// does not answer it may send clients to it by those names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<(CatalogName, u64)>,
}

/// A named token an admin handed out: its keyed hash (never the token), and whether it was
/// revoked. An enrollment token for one relay operator, or (with `catalog`) a publisher's token
/// that may publish and tag in that one catalog and nothing else.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct EnrollTokenRecord {
    /// The name the admin gave it, unique among named tokens; relays enrolled with it record it.
    pub name: String,
    /// HMAC-SHA256 of the token under the directory's token key.
    pub hash: Digest,
    /// When the admin created it.
    pub created_at: UnixTime,
    /// An admin revoked it: it admits no one any more.
    #[serde(default)]
    pub revoked: bool,
    /// A publisher's token, scoped to this catalog (it enrolls nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog: Option<CatalogName>,
    /// An enrollment token that enrolls one relay only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub single_use: bool,
    /// The relay a single-use token enrolled: that relay may enroll with it again (after a
    /// restart), no other may.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_by: Option<NodeId>,
}

impl EnrollTokenRecord {
    /// A new, unrestricted enrollment token.
    pub fn enroll(name: &str, hash: Digest, created_at: UnixTime) -> Self {
        Self { name: name.to_owned(), hash, created_at, revoked: false, catalog: None, single_use: false, used_by: None }
    }
}

/// What a directory keeps about an enrolled relay: what it asked for when it enrolled and the
/// admin's and directory's decisions about it.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct RelayRecord {
    /// The relay's key.
    pub id: NodeId,
    /// Where clients reach it.
    pub public_url: RelayUrl,
    /// The disk and bandwidth it offered.
    pub capacity: Capacity,
    /// The catalogs it carries; empty: all of them.
    pub catalogs: Vec<CatalogName>,
    /// When it last enrolled.
    pub enrolled_at: UnixTime,
    /// Why the relay is barred from serving (it failed a content audit); cleared by an admin.
    #[serde(default)]
    pub quarantined: Option<String>,
    /// Set by an admin: no new assignments; it leaves the redirect set once its artifacts have
    /// their replicas elsewhere.
    #[serde(default)]
    pub draining: bool,
    /// Passed its probation: plain clients (which cannot check what they get) may be sent to it.
    /// A record stored before probation existed was a serving relay, and stays one.
    #[serde(default = "proven_by_default")]
    pub proven: bool,
    /// The named enrollment token it enrolled with (`None`: the directory's own token).
    #[serde(default)]
    pub token: Option<String>,
    /// Only artifacts carrying one of these tags are assigned to it; empty: any artifact.
    #[serde(default)]
    pub tags: Vec<String>,
}

fn proven_by_default() -> bool {
    true
}

/// What a directory's own token lets its holder do.
#[derive(Clone, Copy, Debug, Deserialize, Eq, Hash, Ord, PartialEq, PartialOrd, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenRole {
    /// Use the admin API.
    Admin,
    /// Enroll a relay.
    Enroll,
    /// What a peer directory presents to link to this one.
    Link,
}

/// A position in a metadata store's change feed (see [`MetaStore::changes`]): every change
/// applied up to it is reflected in what was read at it. 0 is before any change.
#[derive(Clone, Copy, Debug, Default, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub struct Cursor(pub u64);

/// What other handles on a shared metadata store applied since a [`Cursor`].
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Changes {
    /// The records they applied after the cursor, in the order applied, and the cursor after
    /// them (past this handle's own changes too, which are not repeated).
    Records {
        /// The records, batch after batch, each batch in its own order.
        records: Vec<Record>,
        /// Where the next call starts.
        cursor: Cursor,
    },
    /// The feed no longer reaches back to the cursor (it was pruned): read everything again
    /// with [`MetaStore::load_at`].
    Reload,
}

/// Durable directory metadata: an ordered set of records, applied atomically.
///
/// A store may be shared by several processes of one directory (PostgreSQL): each one's
/// `apply` is then serialized with the others', and [`MetaStore::changes`] tells every handle
/// what the others applied. A store one process owns (SQLite) keeps the defaults: no changes
/// but its own.
#[async_trait]
pub trait MetaStore: fmt::Debug + Send + Sync + 'static {
    /// Every record, in an order that replays correctly (tokens, catalogs, logs by sequence, relays).
    async fn load(&self) -> Result<Vec<Record>>;
    /// Applies `records` in one durable transaction: all or none.
    async fn apply(&self, records: &[Record]) -> Result<()>;
    /// Every record, as `load`, and the cursor of the change feed at the same moment: the
    /// changes after it are exactly those `load` did not see.
    async fn load_at(&self) -> Result<(Vec<Record>, Cursor)> {
        Ok((self.load().await?, Cursor(0)))
    }
    /// What other handles applied after `after`, oldest first. By default nothing: the store
    /// has no other writer.
    async fn changes(&self, after: Cursor) -> Result<Changes> {
        Ok(Changes::Records { records: Vec::new(), cursor: after })
    }
    /// Returns when another handle may have applied something since this handle's last call to
    /// `changes` (a hint: callers still poll `changes` now and then, in case a wake-up is
    /// lost). By default never.
    async fn wait_for_changes(&self) {
        std::future::pending::<()>().await
    }
    /// Several processes may write this store at once, each learning the others' changes from
    /// [`MetaStore::changes`]. By default not: one process owns the store.
    fn is_shared(&self) -> bool {
        false
    }
}

#[async_trait]
impl<T: MetaStore + ?Sized> MetaStore for Arc<T> {
    async fn load(&self) -> Result<Vec<Record>> {
        (**self).load().await
    }
    async fn apply(&self, records: &[Record]) -> Result<()> {
        (**self).apply(records).await
    }
    async fn load_at(&self) -> Result<(Vec<Record>, Cursor)> {
        (**self).load_at().await
    }
    async fn changes(&self, after: Cursor) -> Result<Changes> {
        (**self).changes(after).await
    }
    async fn wait_for_changes(&self) {
        (**self).wait_for_changes().await
    }
    fn is_shared(&self) -> bool {
        (**self).is_shared()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_stored_before_probation_existed_stays_proven() {
        let old = r#"{"id":"0101010101010101010101010101010101010101010101010101010101010101","public_url":"http://r.example","capacity":{"disk_budget":1,"bandwidth":0},"catalogs":[],"enrolled_at":1}"#;
        let record: RelayRecord = serde_json::from_str(old).unwrap();
        assert!(record.proven && !record.draining && record.quarantined.is_none());
    }

    #[test]
    fn ranges_clamp_to_the_blob() {
        assert_eq!(clamp_range(None, 10).unwrap(), 0..10);
        assert_eq!(clamp_range(Some(2..5), 10).unwrap(), 2..5);
        assert_eq!(clamp_range(Some(2..u64::MAX), 10).unwrap(), 2..10);
        assert!(clamp_range(Some(10..11), 10).is_err());
        assert_eq!(clamp_range(None, 0).unwrap(), 0..0);
    }
}
