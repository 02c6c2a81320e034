//! The odi side: a directory and relays started in this process through odi-net's public API,
//! on 127.0.0.1 ports the OS picks, and the admin calls that publish and watch them.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt as _, TryStreamExt as _};
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;
use odi_net::HttpClient;
use odi_net::directory::{DirectoryOptions, DirectoryServer};
use odi_net::http::{Body, BoxError, empty, full};
use odi_net::relay::{RelayOptions, RelayServer};
use serde_json::Value;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::data::{Artifact, GIB};

pub(crate) const ADMIN_TOKEN: &str = "b3e1a9d07c5f4e28a6b1d93c0e7f5a2b8c4d6e1f09a3b7c5d2e8f4a6b0c1d3e5";
const ENROLL_TOKEN: &str = "e7d2c9b04a6f1e38b5c0d7a29e4f6b1c3d8e5a0f72b9c4d6e1a3f8b5c0d7e2a4";
/// The intervals odi's own end-to-end tests use: quick to notice, still far from busy.
const HEARTBEAT: Duration = Duration::from_millis(300);
const LEASE: Duration = Duration::from_millis(1500);
const RELAY_DISK_BUDGET: u64 = 4 * GIB;
/// Upload read size, the same as the local store's piece size.
const UPLOAD_PIECE: usize = 256 * 1024;
/// Longest wait for an admin answer; a 1 GiB publish answers once its bytes are durable.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(300);
const POLL: Duration = Duration::from_millis(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A running directory or relay.
pub(crate) struct Node {
    pub(crate) url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), odi_net::NetError>>>,
}

impl Node {
    fn spawn<F>(url: String, run: impl FnOnce(oneshot::Receiver<()>) -> F) -> Self
    where
        F: Future<Output = Result<(), odi_net::NetError>> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(stopped));
        Self { url, stop: Some(stop), task: Some(task) }
    }

    /// Graceful stop: the listener closes and open connections get the node's grace period.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            match tokio::time::timeout(STOP_TIMEOUT, task).await {
                Ok(joined) => joined.context("node task panicked")?.with_context(|| format!("node {} failed", self.url))?,
                Err(_) => bail!("node {} did not stop within {}s", self.url, STOP_TIMEOUT.as_secs()),
            }
        }
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn loopback_listener() -> anyhow::Result<(TcpListener, String)> {
    let listener = TcpListener::bind("127.0.0.1:0").await.context("cannot bind a loopback port")?;
    let url = format!("http://{}", listener.local_addr()?);
    Ok((listener, url))
}

pub(crate) async fn start_directory(data: &Path) -> anyhow::Result<Node> {
    let (listener, url) = loopback_listener().await?;
    let mut options = DirectoryOptions::new(data);
    options.heartbeat_interval = HEARTBEAT;
    options.lease = LEASE;
    // Relays on probation get only verifying clients: curl and wrk would be served by the
    // directory itself, and the 302 comparison would measure nothing.
    options.probation = Duration::ZERO;
    options.admin_token = Some(ADMIN_TOKEN.into());
    options.enroll_token = Some(ENROLL_TOKEN.into());
    options.public_url = Some(url.clone());
    let server = DirectoryServer::open(options).await.context("cannot open the directory")?;
    Ok(Node::spawn(url, |stopped| async move {
        server
            .run(listener, async {
                let _ = stopped.await;
            })
            .await
    }))
}

/// Starts a meta-directory referring to `references` (`[REGION=]URL`), locating clients with
/// the MaxMind database `geoip`.
pub(crate) async fn start_meta(data: &Path, references: &[String], geoip: &Path) -> anyhow::Result<Node> {
    let (listener, url) = loopback_listener().await?;
    let refs = references.iter().map(|r| odi_core::meta::Reference::parse(r).map_err(anyhow::Error::msg)).collect::<anyhow::Result<Vec<_>>>()?;
    let mut options = odi_net::meta::MetaOptions::new(data, refs);
    options.geoip = Some(geoip.to_path_buf());
    let server = odi_net::meta::MetaServer::open(options).context("cannot open the meta-directory")?;
    Ok(Node::spawn(url, |stopped| async move {
        server
            .run(listener, async {
                let _ = stopped.await;
            })
            .await
    }))
}

/// Starts a relay of `directory` subscribed to `catalogs`, downloading `max_fetches` at a time.
pub(crate) async fn start_relay(data: &Path, directory: &str, catalogs: &[&str], max_fetches: usize) -> anyhow::Result<Node> {
    start_relay_tls(data, directory, catalogs, max_fetches, None).await
}

/// `start_relay`, serving HTTPS with `tls` when given.
pub(crate) async fn start_relay_tls(
    data: &Path,
    directory: &str,
    catalogs: &[&str],
    max_fetches: usize,
    tls: Option<odi_net::tls::ServerTls>,
) -> anyhow::Result<Node> {
    let (tcp, url) = loopback_listener().await?;
    let (listener, url) = match tls {
        Some(tls) => (odi_net::Listener::tls(tcp, tls), url.replacen("http://", "https://", 1)),
        None => (odi_net::Listener::plain(tcp), url),
    };
    let options = RelayOptions {
        data_dir: data.to_path_buf(),
        directories: vec![directory.to_owned()],
        public_url: url.clone(),
        disk_budget: RELAY_DISK_BUDGET,
        bandwidth: 0,
        catalogs: catalogs.iter().map(|c| (*c).to_owned()).collect(),
        tags: Vec::new(),
        enroll_token: ENROLL_TOKEN.into(),
        max_fetches,
        scrub_rate: odi_net::relay::DEFAULT_SCRUB_RATE,
        directory_keys: Vec::new(),
        local_trees: Vec::new(),
    };
    let server = RelayServer::open(options).await.context("cannot open the relay")?;
    Ok(Node::spawn(url, |stopped| async move {
        server
            .run(listener, async {
                let _ = stopped.await;
            })
            .await
    }))
}

/// The admin API of one directory.
#[derive(Clone)]
pub(crate) struct Admin {
    client: HttpClient,
    base: String,
}

impl Admin {
    pub(crate) fn new(directory: &str) -> Self {
        Self { client: HttpClient::new(), base: directory.to_owned() }
    }

    async fn call(&self, method: Method, path: &str, body: Body) -> anyhow::Result<(StatusCode, Bytes)> {
        let url = format!("{}/api/v1/{path}", self.base);
        let req = Request::builder().method(method).uri(&url).header(header::AUTHORIZATION, format!("Bearer {ADMIN_TOKEN}")).body(body)?;
        let resp = self.client.send(req, ADMIN_TIMEOUT).await?;
        let status = resp.status();
        let body = odi_net::client::read_body(resp.into_body(), 64 << 20).await?;
        Ok((status, body))
    }

    pub(crate) async fn create_catalog(&self, name: &str, replicas: u32) -> anyhow::Result<()> {
        let (status, body) = self.call(Method::POST, "catalogs", full(format!(r#"{{"name":"{name}","replicas":{replicas}}}"#))).await?;
        if status != StatusCode::CREATED {
            bail!("cannot create catalog {name}: {status} {}", String::from_utf8_lossy(&body).trim());
        }
        Ok(())
    }

    /// Publishes `artifact` by streaming its file as the PUT body.
    pub(crate) async fn publish(&self, artifact: &Artifact) -> anyhow::Result<()> {
        let file = tokio::fs::File::open(&artifact.file).await.with_context(|| format!("cannot open {}", artifact.file.display()))?;
        let path = format!("catalogs/{}/artifacts/{}", artifact.catalog, artifact.name);
        let (status, body) = self.call(Method::PUT, &path, file_body(file)).await?;
        if !status.is_success() {
            bail!("cannot publish {}: {status} {}", artifact.url_path(), String::from_utf8_lossy(&body).trim());
        }
        Ok(())
    }

    /// Publishes every artifact, `parallel` uploads at a time.
    pub(crate) async fn publish_all(&self, artifacts: &[Artifact], parallel: usize) -> anyhow::Result<()> {
        futures_util::stream::iter(artifacts).map(|a| self.publish(a)).buffer_unordered(parallel).try_collect::<Vec<()>>().await?;
        Ok(())
    }

    pub(crate) async fn relays(&self) -> anyhow::Result<Vec<Value>> {
        let (status, body) = self.call(Method::GET, "relays", empty()).await?;
        if status != StatusCode::OK {
            bail!("cannot list relays: {status} {}", String::from_utf8_lossy(&body).trim());
        }
        let value: Value = serde_json::from_slice(&body).context("relay list is not JSON")?;
        Ok(value.as_array().cloned().unwrap_or_default())
    }

    async fn relay(&self, url: &str) -> anyhow::Result<Option<Value>> {
        Ok(self.relays().await?.into_iter().find(|r| r["url"] == url))
    }

    /// Waits until the directory lists the relay at `url` as `ready` holding `held` blobs. Returns
    /// how long after `since` that was, and when its first assignment was listed.
    pub(crate) async fn wait_ready(&self, url: &str, held: u64, since: Instant, limit: Duration) -> anyhow::Result<ReadyTimes> {
        let mut assigned_after = None;
        loop {
            if let Some(r) = self.relay(url).await? {
                if assigned_after.is_none() && r["assigned"].as_u64().is_some_and(|n| n > 0) {
                    assigned_after = Some(since.elapsed());
                }
                if r["status"] == "ready" && r["held"].as_u64() == Some(held) {
                    let ready = since.elapsed();
                    return Ok(ReadyTimes { ready, assigned: assigned_after.unwrap_or(ready) });
                }
            }
            if since.elapsed() > limit {
                let last = self.relay(url).await?;
                bail!("relay {url} not ready with {held} blobs within {}s; last seen: {last:?}", limit.as_secs());
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until no relay is alive, so the directory serves every artifact itself again.
    pub(crate) async fn wait_no_live_relays(&self, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let relays = self.relays().await?;
            if relays.iter().all(|r| r["status"] == "unhealthy") {
                return Ok(());
            }
            if start.elapsed() > limit {
                bail!("relays still alive after {}s: {relays:?}", limit.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct ReadyTimes {
    /// Until the directory lists the relay as ready with everything held.
    pub(crate) ready: Duration,
    /// Until the directory lists a non-empty assignment (enrollment and self-test done).
    pub(crate) assigned: Duration,
}

/// A file as a streamed request body.
fn file_body(file: tokio::fs::File) -> Body {
    let frames = futures_util::stream::try_unfold(file, |mut file| async move {
        let mut buf = BytesMut::with_capacity(UPLOAD_PIECE);
        let n = file.read_buf(&mut buf).await?;
        Ok::<_, std::io::Error>((n > 0).then(|| (Frame::data(buf.freeze()), file)))
    });
    StreamBody::new(frames.map_err(|e| Box::new(e) as BoxError)).boxed_unsync()
}
