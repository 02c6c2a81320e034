//! odi-net: the network drivers of ODI. They run odi-core's machines over real sockets:
//! [`directory::run`] and [`relay::run`] take a bound listener, options and a shutdown future,
//! so the `odi` binary and the end-to-end tests start them the same way.
//!
//! Drivers are the only code that reads the clock, spawns tasks, or touches storage and sockets.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use odi_core::time::UnixTime;
use tokio::net::TcpListener;

pub mod client;
pub mod crash;
pub mod directory;
mod driver;
pub mod guard;
pub mod http;
pub mod keys;
pub mod limit;
pub mod lock;
pub mod meta;
pub mod metalink;
pub mod origin;
pub mod relay;
pub mod transfer;

pub use client::HttpClient;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    #[error("{0}")]
    Config(String),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{status}: {reason}")]
    Status { status: ::http::StatusCode, reason: String },
    #[error("{0}")]
    Protocol(String),
    #[error(transparent)]
    Storage(#[from] odi_core::storage::StorageError),
}

impl NetError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }
}

/// Wall-clock seconds, for catalog timestamps and signatures.
pub fn unix_now() -> UnixTime {
    UnixTime(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

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

/// Time allowed for a client to send its request head (slowloris guard).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(15);
/// Connections still open this long after shutdown begins are cut.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Accepts HTTP/1.1 connections on `listener` and answers each request with `handler` until
/// `shutdown` completes, then lets open connections finish for a short grace period.
pub(crate) async fn serve<H, F>(listener: TcpListener, handler: Arc<H>, shutdown: impl Future<Output = ()>) -> Result<(), NetError>
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<http::Body>> + Send + 'static,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).keep_alive(true);
    let conns = guard::ConnTracker::new(guard::ConnLimits::for_fd_limit(guard::raise_fd_limit()));
    let shed_log = guard::LogLimiter::new(1, Duration::from_secs(10));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Past its share (per address, or in all), a connection is closed before it costs more.
        let Some(permit) = conns.admit(peer.ip()) else {
            if let Some(held_back) = shed_log.allow() {
                tracing::warn!(client = %peer.ip(), open = conns.open(), shed = conns.shed(), held_back, "too many connections; closing new ones from this address");
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let client = guard::ClientAddr(peer.ip());
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(client);
            let fut = handler(req);
            async move { Ok::<_, std::convert::Infallible>(fut.await) }
        });
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
    Ok(())
}
