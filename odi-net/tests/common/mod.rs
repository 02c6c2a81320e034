//! A directory and relays in this process, on real loopback sockets, for end-to-end tests.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use odi_net::HttpClient;
use odi_net::directory::{DirectoryOptions, DirectoryServer};
use odi_net::http::{Body, empty, full};
use odi_net::relay::{RelayOptions, RelayServer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const ADMIN: &str = "a1d4c6e8f0b2a4c6e8f0a2b4c6d8e0f2a4b6c8d0e2f4a6b8c0d2e4f6a8b0c2d4";
pub const ENROLL: &str = "e5f7a9b1c3d5e7f9a1b3c5d7e9f1a3b5c7d9e1f3a5b7c9d1e3f5a7b9c1d3e5f7";
pub const HEARTBEAT: Duration = Duration::from_millis(300);
pub const LEASE: Duration = Duration::from_millis(1500);

/// With `ODI_TEST_TLS=1` every node these helpers start serves HTTPS with a certificate from a
/// test CA that this process's clients trust, and its URL is `https://`.
pub fn tls_mode() -> bool {
    std::env::var_os("ODI_TEST_TLS").is_some_and(|v| v == "1")
}

/// The test CA's files (made once per process, trusted by every client of this process).
pub fn test_certs() -> &'static odi_net::tls::DevCerts {
    static CERTS: std::sync::OnceLock<(tempfile::TempDir, odi_net::tls::DevCerts)> = std::sync::OnceLock::new();
    &CERTS
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("temp dir for the test CA");
            let certs = odi_net::tls::write_dev_ca(dir.path(), &["127.0.0.1", "localhost", "127.0.0.2", "::1"]).expect("test CA");
            odi_net::tls::trust_ca_file(&certs.ca).expect("trust the test CA");
            (dir, certs)
        })
        .1
}

/// `listener` as the helpers serve it: TLS in [`tls_mode`], plain otherwise.
pub fn listener(tcp: TcpListener) -> odi_net::Listener {
    if tls_mode() {
        let certs = test_certs();
        odi_net::Listener::tls(tcp, odi_net::tls::ServerTls::from_pem_files(&certs.cert, &certs.key).expect("test certificate"))
    } else {
        odi_net::Listener::plain(tcp)
    }
}

/// The scheme of the nodes' URLs: `https` in [`tls_mode`].
pub fn scheme() -> &'static str {
    if tls_mode() { "https" } else { "http" }
}

pub struct Node {
    pub url: String,
    pub data: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), odi_net::NetError>>>,
}

impl Node {
    /// Stops the node (graceful: it stops heartbeating and closes its listener).
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("node task").expect("node ran cleanly");
        }
    }
}

pub fn shutdown() -> (oneshot::Sender<()>, impl Future<Output = ()> + Send + 'static) {
    let (tx, rx) = oneshot::channel::<()>();
    (tx, async move {
        let _ = rx.await;
    })
}

pub async fn start_directory(data: &Path, addr: Option<std::net::SocketAddr>) -> Node {
    start_directory_with(data, addr, |_| {}).await
}

pub async fn start_directory_with(data: &Path, addr: Option<std::net::SocketAddr>, tune: impl FnOnce(&mut DirectoryOptions)) -> Node {
    let listener = listener(TcpListener::bind(addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap())).await.expect("bind directory"));
    let url = format!("{}://{}", listener.scheme(), listener.local_addr().unwrap());
    let mut options = DirectoryOptions::new(data);
    options.heartbeat_interval = HEARTBEAT;
    options.lease = LEASE;
    options.admin_token = Some(ADMIN.into());
    options.enroll_token = Some(ENROLL.into());
    options.public_url = Some(url.clone());
    // Plain clients go to fresh relays at once; probation has tests of its own.
    options.probation = Duration::ZERO;
    tune(&mut options);
    let server = DirectoryServer::open(options).await.expect("open directory");
    let (stop, signal) = shutdown();
    let task = tokio::spawn(server.run(listener, signal));
    Node { url, data: data.to_path_buf(), stop: Some(stop), task: Some(task) }
}

pub async fn start_relay(data: &Path, directory: &str, budget: u64, addr: Option<std::net::SocketAddr>) -> Node {
    start_relay_with_token(data, directory, budget, addr, ENROLL).await
}

pub async fn start_relay_with_token(data: &Path, directory: &str, budget: u64, addr: Option<std::net::SocketAddr>, token: &str) -> Node {
    let listener = TcpListener::bind(addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap())).await.expect("bind relay");
    let url = format!("{}://{}", scheme(), listener.local_addr().unwrap());
    start_relay_on(listener, &url, data, directory, budget, 0, token).await
}

/// Starts a relay on `listener`, announcing `public_url` (which may be a proxy in front of it);
/// it serves TLS when `public_url` is `https://` in [`tls_mode`].
pub async fn start_relay_on(tcp: TcpListener, public_url: &str, data: &Path, directory: &str, budget: u64, bandwidth: u64, token: &str) -> Node {
    let url = public_url.to_owned();
    let options = RelayOptions {
        data_dir: data.to_path_buf(),
        directories: vec![directory.to_owned()],
        public_url: url.clone(),
        disk_budget: budget,
        bandwidth,
        catalogs: Vec::new(),
        tags: Vec::new(),
        enroll_token: token.into(),
        max_fetches: 4,
        scrub_rate: odi_net::relay::DEFAULT_SCRUB_RATE,
        directory_keys: Vec::new(),
        local_trees: Vec::new(),
    };
    let server = RelayServer::open(options).await.expect("open relay");
    let (stop, signal) = shutdown();
    let listener = if url.starts_with("https://") { listener(tcp) } else { odi_net::Listener::plain(tcp) };
    let task = tokio::spawn(server.run(listener, signal));
    Node { url, data: data.to_path_buf(), stop: Some(stop), task: Some(task) }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// One request, no redirect following.
pub async fn request(method: Method, url: &str, headers: &[(&str, &str)], body: Body) -> Reply {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = HttpClient::new().send(req.body(body).unwrap(), Duration::from_secs(20)).await.unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = odi_net::client::read_body(resp.into_body(), 64 << 20).await.expect("body");
    Reply { status, headers, body }
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    request(Method::GET, url, headers, empty()).await
}

pub async fn admin(method: Method, dir: &str, path: &str, body: Body) -> Reply {
    request(method, &format!("{dir}/api/v1/{path}"), &[("authorization", &format!("Bearer {ADMIN}"))], body).await
}

pub async fn create_catalog(dir: &str, name: &str, replicas: u32) {
    let r = admin(Method::POST, dir, "catalogs", full(format!(r#"{{"name":"{name}","replicas":{replicas}}}"#))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
}

pub async fn publish(dir: &str, catalog: &str, path: &str, data: &[u8]) -> serde_json::Value {
    let r = admin(Method::PUT, dir, &format!("catalogs/{catalog}/artifacts/{path}"), full(data.to_vec())).await;
    assert!(r.status.is_success(), "publish {path}: {} {}", r.status, r.text());
    r.json()
}

/// Follows redirects like `curl -L`; returns the final reply and the URLs visited.
pub async fn follow(url: &str, headers: &[(&str, &str)]) -> (Reply, Vec<String>) {
    let mut visited = vec![url.to_owned()];
    let mut reply = get(url, headers).await;
    while reply.status == StatusCode::FOUND {
        let next = reply.header("location").expect("302 has a Location").to_owned();
        visited.push(next.clone());
        reply = get(&next, headers).await;
        assert!(visited.len() < 5, "redirect loop: {visited:?}");
    }
    (reply, visited)
}

pub async fn relays(dir: &str) -> Vec<serde_json::Value> {
    let r = admin(Method::GET, dir, "relays", empty()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json().as_array().cloned().unwrap_or_default()
}

/// Polls `check` until it holds, for at most `secs` seconds.
pub async fn wait_for<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {secs}s waiting for {what}");
}

pub fn sample(len: usize, tag: u8) -> Vec<u8> {
    (0..len).map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 11) as u8 ^ tag).collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    odi_core::Digest::of(data).to_hex()
}

/// The blob files (not their `.sums` sidecars) under a data dir, with their modification times, to
/// prove nothing was rewritten.
pub fn blob_files(dir: &Path) -> Vec<(PathBuf, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.join("blobs")];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if !path.strip_prefix(dir).is_ok_and(|rel| rel.components().any(|c| c.as_os_str() == "tmp")) && path.extension().is_none_or(|e| e != "sums")
            {
                out.push((path.clone(), entry.metadata().unwrap().modified().unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Flips one byte in every chunk of the relay's stored copy (bit rot, or a relay that lies).
pub fn corrupt_relay_copy(relay: &Node, digest_hex: &str, chunk: usize) {
    let path = relay.data.join("blobs/blobs/sha256").join(&digest_hex[..2]).join(digest_hex);
    let mut bytes = std::fs::read(&path).expect("relay holds the blob");
    for at in (17..bytes.len()).step_by(chunk) {
        bytes[at] ^= 0xff;
    }
    std::fs::write(&path, bytes).unwrap();
}
