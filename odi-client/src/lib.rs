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

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use odi_core::time::UnixTime;

pub mod admin;
pub mod body;
pub mod client;
pub mod crash;
pub mod fetch;
pub mod limit;
pub mod metalink;
pub mod redirect;
pub mod tls;
pub mod transfer;

pub use client::HttpClient;
pub use fetch::{GetError, GetOptions, Progress, Report, get, get_stream};

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

/// A monotonic clock with its origin at driver start, in the core's `Instant` units.
#[derive(Clone, Copy, Debug)]
pub struct Clock(std::time::Instant);

impl Clock {
    /// A clock whose origin is now.
    pub fn start() -> Self {
        Self(std::time::Instant::now())
    }

    /// The time since the origin.
    pub fn now(&self) -> odi_core::time::Instant {
        odi_core::time::Instant::from_millis(self.0.elapsed().as_millis() as u64)
    }

    /// The tokio instant at which the core instant `at` falls.
    pub fn deadline(&self, at: odi_core::time::Instant) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.0 + Duration::from_millis(at.as_millis()))
    }

    /// Sleeps until a machine's `poll_timeout`; with none, for an hour (drivers are woken by a
    /// notification long before).
    pub fn sleep_until(&self, at: Option<odi_core::time::Instant>) -> tokio::time::Sleep {
        match at {
            Some(at) => tokio::time::sleep_until(self.deadline(at)),
            None => tokio::time::sleep(Duration::from_secs(3600)),
        }
    }
}
