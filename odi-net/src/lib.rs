//! odi-net: the network drivers of ODI. They run odi-core's machines over real sockets:
//! [`directory::run`] and [`relay::run`] take a bound listener, options and a shutdown future,
//! so the `odi` binary and the end-to-end tests start them the same way.
//!
//! Drivers are the only code that reads the clock, spawns tasks, or touches storage and sockets.

pub mod acme;
pub use odi_client::client;
pub use odi_client::crash;
pub mod directory;
mod driver;
#[doc(hidden)]
pub mod fuzz;
pub mod guard;
pub mod http;
pub mod keys;
pub use odi_client::limit;
pub mod lock;
pub mod meta;
pub use odi_client::metalink;
pub mod metrics;
pub mod origin;
pub mod relay;
pub mod tls;
pub use odi_client::transfer;

pub use client::HttpClient;
pub use http::Listener;
pub(crate) use http::serve;

pub use odi_client::{NetError, unix_now};

pub use odi_client::Clock;
