//! odi-core: the pure core of ODI, the Open Distribution Initiative.
//!
//! It holds the types (digests, chunk manifests, catalogs, paths), the node-to-node wire
//! messages, request signing, the storage traits, and the state machines of a directory
//! ([`directory::Directory`]) and a relay ([`relay::Relay`]).
//!
//! odi-core is deterministic: it performs no I/O, reads no clock and draws no unseeded
//! randomness. Drivers feed it inputs and carry out the effects it asks for:
//!
//! ```no_run
//! # use odi_core::{directory::*, message::NodeId, rng::Seed, time::{Instant, UnixTime}};
//! let mut dir = Directory::new(DirectoryConfig::new(NodeId([1; 32])), Seed(7));
//! # let now = Instant::ZERO;
//! loop {
//!     while let Some(effect) = dir.poll_effect() { /* persist records, self-test a relay */ }
//!     while let Some(event) = dir.poll_event() { /* log it, wake watchers */ }
//!     // wait for a request, an effect's outcome, or `dir.poll_timeout()`, then one of:
//!     dir.handle_timeout(now);
//! }
//! ```

#![warn(missing_docs)]

pub mod api;
pub mod audit;
pub mod auth;
pub mod catalog;
pub mod digest;
pub mod directory;
pub mod federation;
pub mod held;
pub mod manifest;
pub mod message;
pub mod meta;
pub mod oci;
pub mod path;
pub mod relay;
pub mod rng;
#[cfg(any(test, feature = "__sim"))]
pub mod sim;
pub mod storage;
pub mod time;
pub mod transfer;
pub mod webhook;

pub use digest::Digest;
pub use manifest::ChunkManifest;
pub use message::NodeId;
