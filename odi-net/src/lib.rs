//! odi-net: the network drivers of ODI. They run odi-core's machines over real sockets:
//! [`directory::run`] and [`relay::run`] take a bound listener, options and a shutdown future,
//! so the `odi` binary and the end-to-end tests start them the same way.
//!
//! Drivers are the only code that reads the clock, spawns tasks, or touches storage and sockets.

use std::time::Duration;

pub mod acme;
pub use odi_client::client;
pub mod crash;
pub mod directory;
mod driver;
#[doc(hidden)]
pub mod fuzz;
pub mod guard;
pub mod http;
pub mod keys;
pub mod limit;
pub mod lock;
pub mod meta;
pub use odi_client::metalink;
pub mod metrics;
pub mod origin;
pub mod relay;
pub mod tls;
pub mod transfer;

pub use client::HttpClient;
pub use http::Listener;
pub(crate) use http::serve;

pub use odi_client::{NetError, unix_now};

/// A monotonic clock with its origin at driver start, in the core's `Instant` units.
#[derive(Clone, Copy, Debug)]
pub struct Clock(std::time::Instant);

impl Clock {
    pub fn start() -> Self {
        Self(std::time::Instant::now())
    }

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
