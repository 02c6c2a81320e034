//! odi-storage: the storage backends behind odi-core's storage traits.
//!
//! - [`LocalStore`]: content-addressed blobs on a local disk, for relays.
//! - [`ObjectBlobStore`]: the same over any [`object_store::ObjectStore`] (S3 and friends).
//! - [`SqliteMeta`]: a directory's durable metadata in SQLite.
//! - [`FaultyMeta`]: any metadata store, failing on demand (for tests of the failure paths).
//!
//! Every blob store keeps one promise: a blob becomes visible under its digest only once all
//! of its bytes are in and verified, so a reader never sees a partial or wrong blob. The
//! `conformance` module (feature `conformance`, outside semver) checks that promise, and the
//! rest of the [`BlobStore`](odi_core::storage::BlobStore) contract, for any backend.

pub mod faulty;
pub mod hashing;
#[cfg(feature = "local-fs")]
pub mod local;
#[cfg(feature = "object-store")]
pub mod object;
#[cfg(feature = "local-fs")]
pub mod partial;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(feature = "local-fs")]
pub mod sums;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
#[cfg(any(test, feature = "conformance"))]
pub mod meta_conformance;

pub use faulty::{FaultSwitch, FaultyMeta};
pub use hashing::ManifestHasher;
#[cfg(feature = "local-fs")]
pub use local::{Adopted, LocalStore, OpenedBlob};
#[cfg(feature = "object-store")]
pub use object::ObjectBlobStore;
#[cfg(feature = "local-fs")]
pub use partial::{PartialFile, SealedPartial};
#[cfg(feature = "postgres")]
pub use postgres::PostgresMeta;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteMeta;

/// A relay record stored under an older, looser URL rule, whose `public_url` today's rule
/// refuses: metadata stores drop it on load (the relay must enroll again, and its URL is then
/// judged by today's rule) rather than report the table corrupt.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn relay_url_is_outdated(record: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(record)
        .ok()
        .and_then(|v| v.get("public_url").and_then(|u| u.as_str()).map(|u| odi_core::message::RelayUrl::new(u).is_err()))
        .unwrap_or(false)
}
