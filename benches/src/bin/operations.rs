//! `odi-operations`: the operator's view at scale, against a real directory on loopback.
//!
//! 1. Dashboard and `/metrics`: a directory opened on a metadata store holding one catalog of N
//!    artifacts and R relays (`scale::stored_records`), some admin changes (for the audit page)
//!    and redirects (for the hot page); then every `/ui/` page fetched with curl after a login:
//!    answer size, time to the first byte and to the whole answer (median of 5), and the same for
//!    a `/metrics` scrape and, as a reference, `GET /api/v1/relays` (the whole relay table).
//!    A page over 1 MiB fails the run: pages paginate.
//! 2. Webhooks: K notices (catalogs created) delivered to a local receiver that answers 500 to its
//!    first requests, then leaves some hanging past the attempt timeout, then answers 503 until the
//!    directory has been stopped and opened again in the middle of the run; every signature is
//!    checked (`odi_core::webhook::verify`) and deliveries are counted by `ODI-Delivery`.
//!
//! Timings are printed, never asserted; counts are checked.

use std::collections::HashSet;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use odi_benches::{machine_line, scale};
use odi_core::storage::MetaStore as _;
use odi_net::directory::{DirectoryOptions, DirectoryServer};

const ADMIN: &str = "3c9e1f7a5b2d4c6e8f0a1b3c5d7e9f1a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e";
const ENROLL: &str = "8d0e2f4a6b8c0d1e3f5a7b9c1d2e4f6a8b0c1d3e5f7a9b1c2d4e6f8a0b1c3d5e";
const LINK: &str = "1b3d5f7a9c1e2f4a6b8d0e1f3a5c7e9b0d2f4a6c8e0b1d3f5a7c9e1b2d4f6a8c";
/// Largest page allowed: anything bigger means a page lists without paginating.
const MAX_PAGE: u64 = 1 << 20;

const USAGE: &str = "usage: odi-operations [--artifacts N] [--relays R] [--notices K]
  --artifacts N  artifacts in the catalog (default 100_000)
  --relays R     relays (default 10_000)
  --notices K    webhook notices to deliver (default 1_000; 0 skips the webhook run)";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (mut artifacts, mut relays, mut notices) = (100_000usize, 10_000usize, 1000usize);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = || -> anyhow::Result<usize> {
            let v = args.next().with_context(|| format!("{arg} needs a number\n{USAGE}"))?;
            v.replace('_', "").parse().with_context(|| format!("{arg} {v}: not a number\n{USAGE}"))
        };
        match arg.as_str() {
            "--artifacts" => artifacts = number()?,
            "--relays" => relays = number()?,
            "--notices" => notices = number()?,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument `{other}`\n{USAGE}"),
        }
    }
    ensure!(Command::new("curl").arg("--version").output().is_ok_and(|o| o.status.success()), "curl is needed (apt-get install curl)");
    println!("{}", machine_line());
    dashboard(artifacts, relays).await?;
    if notices > 0 {
        webhooks(notices).await?;
    }
    Ok(())
}

fn options(data: &Path) -> DirectoryOptions {
    let mut o = DirectoryOptions::new(data);
    o.admin_token = Some(ADMIN.into());
    o.enroll_token = Some(ENROLL.into());
    o.link_token = Some(LINK.into());
    // The restored relays are at names that do not resolve: no probes or audits during the run.
    o.probe_interval = Duration::from_secs(3600);
    o.audit_interval = Duration::from_secs(3600);
    o
}

/// A directory serving on a loopback port until the sender is dropped or sent to.
struct Running {
    url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), odi_net::NetError>>,
}

async fn start(options: DirectoryOptions) -> anyhow::Result<Running> {
    let server = DirectoryServer::open(options).await.context("open the directory")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(listener, async move {
        let _ = stopped.await;
    }));
    Ok(Running { url, stop, task })
}

impl Running {
    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await?.context("the directory's run")?;
        Ok(())
    }
}

/// `curl -s ARGS`, its stdout; fails on a non-zero exit.
fn curl(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("curl").arg("-sS").args(args).output().context("run curl")?;
    ensure!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Many requests over one connection: `curl -K` with one block per request; the status codes.
fn curl_many(dir: &Path, blocks: impl Iterator<Item = String>) -> anyhow::Result<Vec<String>> {
    let config = dir.join("requests.curl");
    let blocks: Vec<String> = blocks.map(|b| format!("{b}output = \"/dev/null\"\nwrite-out = \"%{{http_code}}\\n\"\n")).collect();
    let text = blocks.join("next\n");
    std::fs::write(&config, text)?;
    Ok(curl(&["--max-time", "600", "-K", config.to_str().context("a UTF-8 path")?])?.lines().map(str::to_owned).collect())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Fetches `url` five times: (status, bytes, median seconds to the first byte, median to the end).
fn fetch(url: &str, extra: &[&str]) -> anyhow::Result<(u16, u64, f64, f64)> {
    let (mut first, mut whole, mut status, mut size) = (Vec::new(), Vec::new(), 0, 0);
    for _ in 0..5 {
        let mut args = vec!["-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_starttransfer} %{time_total}"];
        args.extend_from_slice(extra);
        args.push(url);
        let out = curl(&args)?;
        let f: Vec<&str> = out.split_whitespace().collect();
        ensure!(f.len() == 4, "curl wrote `{out}`");
        status = f[0].parse()?;
        size = f[1].parse()?;
        first.push(f[2].parse::<f64>()?);
        whole.push(f[3].parse::<f64>()?);
    }
    Ok((status, size, median(first), median(whole)))
}

async fn dashboard(artifacts: usize, relays: usize) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("dir");
    std::fs::create_dir_all(&data)?;
    let started = Instant::now();
    {
        let meta = odi_storage::SqliteMeta::open(data.join("directory.sqlite3"))?;
        let records = scale::stored_records(1, artifacts, relays);
        for batch in records.chunks(10_000) {
            meta.apply(batch).await?;
        }
    }
    println!("stored {artifacts} artifacts and {relays} relays in {:.1} s", started.elapsed().as_secs_f64());
    let opened = Instant::now();
    let dir = start(options(&data)).await?;
    println!("directory opened and listening in {:.1} s at {}", opened.elapsed().as_secs_f64(), dir.url);
    let url = dir.url.clone();
    let bearer = format!("Authorization: Bearer {ADMIN}");

    // 200 admin changes for the audit log, and 2,000 client requests for the hot list.
    let codes = curl_many(
        tmp.path(),
        (0..200)
            .map(|i| format!("url = \"{url}/api/v1/tokens\"\nrequest = \"POST\"\nheader = \"{bearer}\"\ndata = \"{{\\\"name\\\": \\\"operator-{i}\\\"}}\"\n")),
    )?;
    ensure!(codes.iter().filter(|c| *c == "201").count() == 200, "tokens made: {codes:?}");
    let paths = scale::artifact_paths(1, artifacts.min(50));
    let codes = curl_many(tmp.path(), (0..2000).map(|i| format!("url = \"{url}/r/{}/{}\"\n", scale::CATALOG, paths[i % paths.len()])))?;
    ensure!(codes.len() == 2000, "client requests answered: {}", codes.len());

    let login = curl(&["-D", "-", "-o", "/dev/null", "--data-urlencode", &format!("token={ADMIN}"), &format!("{url}/ui/login")])?;
    let session = login
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase().starts_with("set-cookie: odi_session=").then(|| l["set-cookie: ".len()..].split(';').next().unwrap_or_default().to_owned())
        })
        .context("the login set no session cookie")?;

    println!("\n{:<48}  status     bytes  first byte ms  whole ms", format!("page ({relays} relays, {artifacts} artifacts)"));
    let cookie = ["-b", session.as_str()];
    let last = relays.div_ceil(100).max(1);
    let pages = [
        "/ui/relays".to_owned(),
        format!("/ui/relays?page={last}"),
        "/ui/relays?state=unhealthy".to_owned(),
        "/ui/catalogs".to_owned(),
        format!("/ui/catalogs/{}", scale::CATALOG),
        format!("/ui/catalogs/{}?page=500", scale::CATALOG),
        format!("/ui/catalogs/{}?q=-dev_", scale::CATALOG),
        format!("/ui/catalogs/{}?q=-dev_&page=20", scale::CATALOG),
        format!("/ui/catalogs/{}?q=no-such-name", scale::CATALOG),
        "/ui/hot".to_owned(),
        "/ui/events".to_owned(),
        "/ui/audit".to_owned(),
    ];
    let mut worst = 0;
    for page in &pages {
        let (status, bytes, first, whole) = fetch(&format!("{url}{page}"), &cookie)?;
        println!("{page:<48}  {status}  {bytes:>8}  {:>8.1}  {:>8.1}", first * 1e3, whole * 1e3);
        ensure!(status == 200, "{page} answered {status}");
        worst = worst.max(bytes);
    }
    let header = ["-H", bearer.as_str()];
    for (name, path) in [("/metrics scrape", "/metrics"), ("reference: GET /api/v1/relays", "/api/v1/relays")] {
        let (status, bytes, first, whole) = fetch(&format!("{url}{path}"), &header)?;
        println!("{name:<48}  {status}  {bytes:>8}  {:>8.1}  {:>8.1}", first * 1e3, whole * 1e3);
        ensure!(status == 200, "{path} answered {status}");
    }
    ensure!(worst <= MAX_PAGE, "a dashboard page is {worst} bytes: over {MAX_PAGE}, it does not paginate");
    println!("largest dashboard page: {worst} bytes");
    dir.stop().await
}

/// What the receiver saw.
#[derive(Default)]
struct Received {
    requests: AtomicUsize,
    /// `ODI-Delivery` of every request answered 200.
    ok: Mutex<Vec<String>>,
    bad_signatures: AtomicUsize,
    secret: Mutex<String>,
    restarted: AtomicBool,
}

/// Requests answered 500, then requests left hanging past the attempt timeout; then 503s once
/// `BEFORE_RESTART` deliveries are in, until the directory has been opened again.
const FAILING: usize = 300;
const HANGING: usize = 40;
const BEFORE_RESTART: usize = 100;

/// Headers (name lower-cased, value) and body.
type HookRequest = (Vec<(String, String)>, Vec<u8>);

/// Reads one HTTP/1.1 request; `None` at the end of the stream.
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<HookRequest> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let len: usize = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some((headers, body))
}

fn serve(conn: TcpStream, state: &Received) {
    let Ok(read_half) = conn.try_clone() else { return };
    let mut reader = BufReader::new(read_half);
    let mut conn = conn;
    while let Some((headers, body)) = read_request(&mut reader) {
        let n = state.requests.fetch_add(1, Ordering::SeqCst);
        let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default();
        let answer: &[u8] = if n < FAILING {
            b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n"
        } else if n < FAILING + HANGING {
            std::thread::sleep(Duration::from_millis(1500));
            return;
        } else {
            let secret = state.secret.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            let now = odi_net::unix_now().0;
            if odi_core::webhook::verify(&secret, &header("odi-signature"), &body, now).is_err() {
                state.bad_signatures.fetch_add(1, Ordering::SeqCst);
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n"
            } else {
                let mut ok = state.ok.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if ok.len() >= BEFORE_RESTART && !state.restarted.load(Ordering::SeqCst) {
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"
                } else {
                    ok.push(header("odi-delivery"));
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
                }
            }
        };
        if conn.write_all(answer).is_err() {
            return;
        }
    }
}

async fn wait_until(secs: u64, what: &str, mut check: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        ensure!(Instant::now() < deadline, "timed out after {secs} s waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn webhooks(notices: usize) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("dir");
    let mut o = options(&data);
    o.allow_private_origins = true;
    o.webhook_retry.base = Duration::from_millis(50);
    o.webhook_retry.cap = Duration::from_millis(400);
    o.webhook_retry.timeout = Duration::from_millis(500);
    let dir = start(o.clone()).await?;

    let state = Arc::new(Received::default());
    let receiver = TcpListener::bind("127.0.0.1:0")?;
    let hook_url = format!("http://{}/hook", receiver.local_addr()?);
    {
        let state = state.clone();
        std::thread::spawn(move || {
            for conn in receiver.incoming().flatten() {
                let state = state.clone();
                std::thread::spawn(move || serve(conn, &state));
            }
        });
    }
    let bearer = format!("Authorization: Bearer {ADMIN}");
    let added = curl(&[
        "-f",
        "-H",
        &bearer,
        "--json",
        &format!("{{\"url\": \"{hook_url}\", \"events\": [\"catalog.created\"]}}"),
        &format!("{}/api/v1/webhooks", dir.url),
    ])?;
    let added: serde_json::Value = serde_json::from_str(&added)?;
    *state.secret.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = added["secret"].as_str().context("the hook's secret")?.to_owned();

    let create = |url: &str, range: std::ops::Range<usize>| -> anyhow::Result<()> {
        let n = range.len();
        let codes = curl_many(
            tmp.path(),
            range.map(|i| format!("url = \"{url}/api/v1/catalogs\"\nrequest = \"POST\"\nheader = \"{bearer}\"\nheader = \"Content-Type: application/json\"\ndata = \"{{\\\"name\\\": \\\"c{i}\\\"}}\"\n")),
        )?;
        ensure!(codes.iter().filter(|c| *c == "201").count() == n, "catalogs created: {codes:?}");
        Ok(())
    };
    let started = Instant::now();
    create(&dir.url, 0..notices / 2)?;
    let ok_count = || state.ok.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len();
    wait_until(120, "deliveries before the restart", || ok_count() >= BEFORE_RESTART.min(notices / 2)).await?;
    let before_restart = ok_count();
    dir.stop().await?;
    let dir = start(o).await?;
    state.restarted.store(true, Ordering::SeqCst);
    create(&dir.url, notices / 2..notices)?;
    let distinct = || state.ok.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().cloned().collect::<HashSet<_>>().len();
    wait_until(300, "every notice delivered", || distinct() >= notices).await?;
    let elapsed = started.elapsed();
    let delivered = ok_count();
    println!(
        "\nwebhooks: {} of {notices} notices delivered (signatures checked; {} bad), {delivered} answered 200 ({} repeats), {} attempts in all \
         ({FAILING} answered 500, {HANGING} left hanging, 503s until the restart, which came after {before_restart} deliveries), in {:.1} s",
        distinct(),
        state.bad_signatures.load(Ordering::SeqCst),
        delivered - distinct(),
        state.requests.load(Ordering::SeqCst),
        elapsed.as_secs_f64()
    );
    ensure!(state.bad_signatures.load(Ordering::SeqCst) == 0, "bad signatures");
    dir.stop().await
}
