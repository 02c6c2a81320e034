//! odi-client: the client side of ODI as a library, for programs that fetch from or administer
//! ODI nodes without linking any server or storage code (no SQLite, no object store).
//!
//! It holds the HTTP client ([`HttpClient`]: plain or TLS, an optional [`client::AddressGuard`],
//! signed node requests), the process's TLS trust ([`tls`]), the body type requests carry
//! ([`body`]) and the metalink reader ([`metalink`]). odi-net builds its servers on it and
//! re-exports these modules under their old paths.
//!
//! ```
//! let client = odi_client::HttpClient::new();
//! let _ = client; // requests go through `client.send(...)` and friends
//! ```
#![warn(missing_docs)]

use std::time::{SystemTime, UNIX_EPOCH};

use odi_core::time::UnixTime;

pub mod admin;
pub mod body;
pub mod client;
pub mod metalink;
pub mod tls;

pub use client::HttpClient;

/// What a network operation failed with; its `Display` is one line for an operator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// A setting or file that cannot be used.
    #[error("{0}")]
    Config(String),
    /// A local I/O failure, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The peer could not be reached.
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// The URL tried.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// The peer answered with an error status.
    #[error("{status}: {reason}")]
    Status {
        /// The HTTP status.
        status: ::http::StatusCode,
        /// The peer's one-line reason.
        reason: String,
    },
    /// The peer answered something that breaks the protocol.
    #[error("{0}")]
    Protocol(String),
    /// A storage failure.
    #[error(transparent)]
    Storage(#[from] odi_core::storage::StorageError),
}

impl NetError {
    /// An [`NetError::Io`] with its context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }
}

/// Wall-clock seconds, for catalog timestamps and signatures.
pub fn unix_now() -> UnixTime {
    UnixTime(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

/// `N` bytes from the operating system's random number generator (nonces, keys, tokens).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    // The OS RNG failing means the machine cannot make keys at all: nothing sensible remains.
    getrandom::fill(&mut out).expect("the operating system's random number generator failed");
    out
}
