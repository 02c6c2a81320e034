//! `odi-federation`: three directories linked in a triangle (A–B, B–C, A–C), each with one
//! relay, in this process on loopback. Measures
//! - the propagation time of a small publish on A until B and C serve it, and until every
//!   directory redirects it to its relay (best and median of several publishes);
//! - the blob bytes each directory received from its peers for a large artifact, against the
//!   artifact's size (the goal: each directory receives each blob's bytes about once).
//!
//! Timings are printed, never asserted.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use http::{Method, Request, StatusCode, header};
use odi_benches::machine_line;
use odi_net::HttpClient;
use odi_net::directory::{DirectoryOptions, DirectoryServer};
use odi_net::http::{Body, empty, full};
use odi_net::relay::{RelayOptions, RelayServer};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const USAGE: &str = "usage: odi-federation [--small N] [--large-mib M]
  --small N      small publishes timed (default 10)
  --large-mib M  size of the large artifact in MiB (default 64)";

const ADMIN: &str = "b3e1a9d07c5f4e28a6b1d93c0e7f5a2b8c4d6e1f09a3b7c5d2e8f4a6b0c1d3e5";
const ENROLL: &str = "e7d2c9b04a6f1e38b5c0d7a29e4f6b1c3d8e5a0f72b9c4d6e1a3f8b5c0d7e2a4";
const LINK: &str = "a7d2c9b04a6f1e38b5c0d7a29e4f6b1c3d8e5a0f72b9c4d6e1a3f8b5c0d7e2a4";
const POLL: Duration = Duration::from_millis(5);
const LIMIT: Duration = Duration::from_secs(120);

struct Running {
    url: String,
    _stop: oneshot::Sender<()>,
}

async fn listener() -> anyhow::Result<(TcpListener, String)> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", l.local_addr()?);
    Ok((l, url))
}

async fn directory(data: &std::path::Path) -> anyhow::Result<Running> {
    let (l, url) = listener().await?;
    let mut o = DirectoryOptions::new(data);
    o.heartbeat_interval = Duration::from_millis(300);
    o.lease = Duration::from_millis(1500);
    o.probation = Duration::ZERO;
    o.admin_token = Some(ADMIN.into());
    o.enroll_token = Some(ENROLL.into());
    o.link_token = Some(LINK.into());
    o.public_url = Some(url.clone());
    let server = DirectoryServer::open(o).await.context("cannot open a directory")?;
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run(l, async {
        let _ = stopped.await;
    }));
    Ok(Running { url, _stop: stop })
}

async fn relay(data: &std::path::Path, dir: &str) -> anyhow::Result<Running> {
    let (l, url) = listener().await?;
    let o = RelayOptions {
        data_dir: data.to_path_buf(),
        directories: vec![dir.to_owned()],
        public_url: url.clone(),
        disk_budget: 8 << 30,
        bandwidth: 0,
        catalogs: Vec::new(),
        tags: Vec::new(),
        enroll_token: ENROLL.into(),
        max_fetches: 4,
        scrub_rate: 0,
        directory_keys: Vec::new(),
        local_trees: Vec::new(),
    };
    let server = RelayServer::open(o).await.context("cannot open a relay")?;
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run(l, async {
        let _ = stopped.await;
    }));
    Ok(Running { url, _stop: stop })
}

async fn call(client: &HttpClient, method: Method, url: &str, body: Body) -> anyhow::Result<(StatusCode, Vec<u8>, Option<String>)> {
    let req = Request::builder().method(method).uri(url).header(header::AUTHORIZATION, format!("Bearer {ADMIN}")).body(body)?;
    let resp = client.send(req, Duration::from_secs(300)).await?;
    let status = resp.status();
    let location = resp.headers().get(header::LOCATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = odi_net::client::read_body(resp.into_body(), 256 << 20).await?;
    Ok((status, body.to_vec(), location))
}

async fn admin_json(client: &HttpClient, method: Method, dir: &str, path: &str, body: Body) -> anyhow::Result<Value> {
    let (status, body, _) = call(client, method, &format!("{dir}/api/v1/{path}"), body).await?;
    if !status.is_success() {
        bail!("{path}: {status} {}", String::from_utf8_lossy(&body));
    }
    Ok(serde_json::from_slice(&body)?)
}

/// What `GET {dir}/r/rel/{path}` answers: `Some(None)` for the bytes, `Some(Some(relay))` for a
/// redirect, `None` for anything else.
async fn served(client: &HttpClient, dir: &str, path: &str) -> Option<Option<String>> {
    let (status, _, location) = call(client, Method::HEAD, &format!("{dir}/r/rel/{path}"), empty()).await.ok()?;
    match status {
        StatusCode::OK => Some(None),
        StatusCode::FOUND => Some(location),
        _ => None,
    }
}

fn arg(args: &[String], name: &str, default: u64) -> anyhow::Result<u64> {
    match args.iter().position(|a| a == name) {
        Some(i) => args.get(i + 1).and_then(|v| v.replace('_', "").parse().ok()).with_context(|| format!("{name} takes a number\n{USAGE}")),
        None => Ok(default),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return Ok(());
    }
    let (small_runs, large_mib) = (arg(&args, "--small", 10)?, arg(&args, "--large-mib", 64)?);
    let tmp = tempfile::tempdir()?;
    let client = HttpClient::new();
    let mut dirs = Vec::new();
    let mut relays = Vec::new();
    for name in ["a", "b", "c"] {
        let d = directory(&tmp.path().join(name)).await?;
        relays.push(relay(&tmp.path().join(format!("{name}-relay")), &d.url).await?);
        dirs.push(d);
    }
    let urls: Vec<String> = dirs.iter().map(|d| d.url.clone()).collect();
    for (x, y) in [(0, 1), (1, 2), (0, 2)] {
        let body = serde_json::json!({ "peer": urls[y], "token": LINK }).to_string();
        admin_json(&client, Method::POST, &urls[x], "links", full(body)).await.context("cannot link")?;
    }
    admin_json(&client, Method::POST, &urls[0], "catalogs", full(r#"{"name":"rel","replicas":1}"#)).await?;
    let start = Instant::now();
    for u in &urls {
        while admin_json(&client, Method::GET, u, "relays", empty()).await?.as_array().is_none_or(|a| !a.iter().any(|r| r["status"] == "ready")) {
            if start.elapsed() > LIMIT {
                bail!("the relays did not become ready");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Small publishes on A: until B and C serve them, and until all three redirect to a relay.
    let mut to_peers = Vec::new();
    let mut to_relays = Vec::new();
    for i in 0..small_runs {
        let path = format!("small-{i}.txt");
        let body = format!("small artifact {i}\n").repeat(64);
        let t0 = Instant::now();
        admin_json(&client, Method::PUT, &urls[0], &format!("catalogs/rel/artifacts/{path}"), full(body)).await?;
        let (mut peers_at, mut relays_at) = (None, None);
        while relays_at.is_none() {
            let mut answers = Vec::new();
            for u in &urls {
                answers.push(served(&client, u, &path).await);
            }
            if peers_at.is_none() && answers[1..].iter().all(Option::is_some) {
                peers_at = Some(t0.elapsed());
            }
            if answers.iter().all(|a| matches!(a, Some(Some(_)))) {
                relays_at = Some(t0.elapsed());
            }
            if t0.elapsed() > LIMIT {
                bail!("{path} did not propagate within {}s", LIMIT.as_secs());
            }
            tokio::time::sleep(POLL).await;
        }
        to_peers.push(peers_at.unwrap_or_default());
        to_relays.push(relays_at.unwrap_or_default());
    }
    let show = |name: &str, v: &mut Vec<Duration>| {
        v.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!("{name}: best {:.1} ms, median {:.1} ms, worst {:.1} ms over {} publishes", ms(v[0]), ms(v[v.len() / 2]), ms(v[v.len() - 1]), v.len());
    };
    show("small publish on A served by B and C", &mut to_peers);
    show("small publish on A redirected to a relay by A, B and C", &mut to_relays);

    // One large artifact on A: the peer blob bytes each directory received.
    let before: Vec<u64> = {
        let mut v = Vec::new();
        for u in &urls {
            v.push(admin_json(&client, Method::GET, u, "stats", empty()).await?["peer_blob_bytes_received"].as_u64().unwrap_or(0));
        }
        v
    };
    let size = large_mib << 20;
    let large: Vec<u8> = (0..size).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let t0 = Instant::now();
    admin_json(&client, Method::PUT, &urls[0], "catalogs/rel/artifacts/large.bin", full(large)).await?;
    let published = t0.elapsed();
    for u in &urls[1..] {
        while served(&client, u, "large.bin").await.is_none() {
            if t0.elapsed() > LIMIT {
                bail!("large.bin did not reach {u}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let everywhere = t0.elapsed();
    println!(
        "large artifact: {large_mib} MiB, published on A in {:.2} s, served by B and C {:.2} s after the publish began",
        published.as_secs_f64(),
        everywhere.as_secs_f64()
    );
    for (i, u) in urls.iter().enumerate() {
        let got = admin_json(&client, Method::GET, u, "stats", empty()).await?["peer_blob_bytes_received"].as_u64().unwrap_or(0) - before[i];
        println!("directory {}: received {got} blob bytes from peers for a {size}-byte artifact ({:.3}x)", ["A", "B", "C"][i], got as f64 / size as f64);
    }
    println!("{}", machine_line());
    drop(relays);
    drop(dirs);
    Ok(())
}
