//! `odi-bench`: whole-system comparisons of odi against reference tools. Each comparison runs
//! both sides in the same run, on the same files, on the same machine, alternating sides run by
//! run, and prints the best run of each side and their ratio (above 1 favours odi). Timings are
//! printed, never asserted: the machines this runs on are small and noisy.
//!
//! 1. a relay serving 1 GiB to curl, against nginx (`sendfile on`);
//! 2. a relay serving 1000 artifacts of 1 KiB to wrk, against nginx, with the same path list;
//! 3. `ManifestBuilder` (whole-file and per-chunk SHA-256) over a 1 GiB file, against
//!    `openssl dgst -sha256`;
//! 4. a relay syncing ~1 GiB of small and large artifacts from a directory, against `xargs -P`
//!    curl fetching the same files from the same directory.
//!
//! Everything listens on 127.0.0.1 only; data lives in a temporary directory removed at the end
//! (also on error or SIGINT/SIGTERM). `benches/run.sh` installs the tools and runs this in release.

mod data;
mod nginx;
mod odi;
mod report;
mod tools;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::data::{BIG_CATALOG, Dataset, MIB, SMALL_CATALOG, SYNC_CATALOG, Sizes};
use crate::odi::{Admin, Node};
use crate::report::{Better, Comparison, size};
use crate::tools::WrkLoad;

const USAGE: &str = "usage: odi-bench [--quick] [--runs N] [--per-curl N]
  --quick       small data set, short wrk runs: checks the harness, figures mean little
  --runs N      measured runs per side (default 3); each figure is the best of them
  --per-curl N  URLs per curl process in the sync comparison (default 16)";

/// Downloads at a time, on both sides of the sync comparison (relay `max_fetches`, `xargs -P`).
const SYNC_PARALLEL: usize = 4;
/// Upload concurrency when publishing the many small files.
const PUBLISH_PARALLEL: usize = 8;
const READY_LIMIT: Duration = Duration::from_secs(300);
const LEASE_WAIT_LIMIT: Duration = Duration::from_secs(15);

#[derive(Clone, Copy, Debug)]
struct Options {
    sizes: Sizes,
    runs: usize,
    per_curl: usize,
    wrk: WrkLoad,
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> anyhow::Result<Self> {
        let mut options = Self { sizes: Sizes::FULL, runs: 3, per_curl: 16, wrk: WrkLoad { threads: 2, connections: 32, duration: Duration::from_secs(5) } };
        let number = |flag: &str, value: Option<String>| -> anyhow::Result<usize> {
            let value = value.with_context(|| format!("{flag} needs a number\n{USAGE}"))?;
            let n: usize = value.parse().with_context(|| format!("{flag} {value}: not a number\n{USAGE}"))?;
            ensure!((1..=100).contains(&n), "{flag} {n}: expected 1 to 100");
            Ok(n)
        };
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => {
                    options.sizes = Sizes::QUICK;
                    options.wrk.duration = Duration::from_secs(2);
                }
                "--runs" => options.runs = number("--runs", args.next())?,
                "--per-curl" => options.per_curl = number("--per-curl", args.next())?,
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => bail!("unknown argument `{other}`\n{USAGE}"),
            }
        }
        Ok(options)
    }
}

fn main() -> anyhow::Result<()> {
    let options = Options::parse(std::env::args().skip(1))?;
    // The servers run on the runtime's worker threads (one per core, as in the `odi` binary);
    // this thread only orchestrates, and may block on child processes without stealing a worker.
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let comparisons = runtime.block_on(async {
        // Registered before any work, so a signal at any point stops the run cleanly.
        let mut stop = Interrupts::register()?;
        tokio::select! {
            result = run(options) => result,
            signal = stop.recv() => bail!("stopped by {signal}; nginx was stopped and the temporary data removed"),
        }
    })?;
    runtime.shutdown_timeout(Duration::from_secs(5));
    for c in &comparisons {
        println!("{c}");
    }
    println!("{}", report::machine_line());
    Ok(())
}

/// SIGINT and SIGTERM, caught so that dropping the run stops nginx and removes the data.
struct Interrupts {
    int: Signal,
    term: Signal,
}

impl Interrupts {
    fn register() -> anyhow::Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt()).context("cannot catch SIGINT")?,
            term: signal(SignalKind::terminate()).context("cannot catch SIGTERM")?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

async fn run(options: Options) -> anyhow::Result<Vec<Comparison>> {
    let tmp = tempfile::Builder::new().prefix("odi-bench-").tempdir().context("cannot create a temporary directory")?;
    let work = tmp.path();
    let sizes = options.sizes;
    progress(&format!("generating data in {}", work.display()));
    let data = Dataset::generate(&work.join("www"), &sizes)?;
    flush_to_disk();
    checkpoint().await;

    let directory = odi::start_directory(&work.join("directory")).await?;
    let admin = Admin::new(&directory.url);
    progress(&format!("directory at {}; publishing", directory.url));
    for catalog in [BIG_CATALOG, SMALL_CATALOG, SYNC_CATALOG] {
        admin.create_catalog(catalog).await?;
    }
    admin.publish(&data.big).await?;
    admin.publish_all(&data.small, PUBLISH_PARALLEL).await?;
    admin.publish_all(&data.sync, SYNC_PARALLEL).await?;
    flush_to_disk();
    checkpoint().await;

    let mut comparisons = Vec::new();
    comparisons.push(hashing(&data, &options).await?);
    comparisons.push(relay_sync(work, &directory, &admin, &data, &options).await?);

    progress("starting the serving relay and nginx");
    let since = Instant::now();
    let relay = odi::start_relay(&work.join("relay-serve"), &directory.url, &[BIG_CATALOG, SMALL_CATALOG], SYNC_PARALLEL).await?;
    let synced = admin.wait_ready(&relay.url, 1 + data.small.len() as u64, since, READY_LIMIT).await?;
    progress(&format!("serving relay at {} ready after {:.2} s", relay.url, synced.ready.as_secs_f64()));
    let mut nginx = nginx::Nginx::start(&work.join("nginx"), &data.www)?;
    progress(&format!("nginx at {}", nginx.url));

    let serving = async {
        let big = serve_big(&relay.url, &nginx.url, &data, &options).await?;
        let small = serve_small(&relay.url, &nginx.url, work, &data, &options).await?;
        anyhow::Ok([big, small])
    };
    let served = serving.await;
    nginx.stop();
    relay.stop().await?;
    directory.stop().await?;
    let [big, small] = served?;
    // Printed in README.md's order: serving one large, serving many small, hashing, sync.
    comparisons.insert(0, small);
    comparisons.insert(0, big);
    drop(tmp);
    Ok(comparisons)
}

fn progress(msg: &str) {
    eprintln!("odi-bench: {msg}");
}

/// Writes dirty pages out now, so write-back from set-up does not land inside a measurement.
fn flush_to_disk() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// Lets a pending SIGINT/SIGTERM win between blocking steps (child processes, hashing), which
/// run on this thread and do not yield by themselves.
async fn checkpoint() {
    tokio::task::yield_now().await;
}

fn finish(c: Comparison) -> Comparison {
    progress(&c.runs());
    c
}

/// Comparison 1: one large download, curl as the client of both sides.
async fn serve_big(relay: &str, nginx: &str, data: &Dataset, options: &Options) -> anyhow::Result<Comparison> {
    let path = data.big.url_path();
    let (odi_url, nginx_url) = (format!("{relay}{path}"), format!("{nginx}{path}"));
    progress(&format!("serving {}: curl {odi_url} and {nginx_url}", size(data.big.len)));
    let mib_s = |url: &str| tools::curl_speed(url, data.big.len).map(|bps| bps / MIB as f64);
    // One unmeasured run each: connection set-up paths and page cache warm on both sides.
    mib_s(&odi_url)?;
    mib_s(&nginx_url)?;
    let mut c = Comparison {
        name: format!("serve {} over loopback (curl)", size(data.big.len)),
        unit: "MiB/s",
        tool: "nginx".into(),
        better: Better::Higher,
        target: 0.9,
        decimals: 0,
        odi: Vec::new(),
        reference: Vec::new(),
    };
    for _ in 0..options.runs {
        c.odi.push(mib_s(&odi_url)?);
        c.reference.push(mib_s(&nginx_url)?);
        checkpoint().await;
    }
    Ok(finish(c))
}

/// Comparison 2: many small artifacts under wrk, rotating through every path.
async fn serve_small(relay: &str, nginx: &str, work: &Path, data: &Dataset, options: &Options) -> anyhow::Result<Comparison> {
    let script = work.join("rotate.lua");
    tools::wrk_script(&script, &data.small.iter().map(data::Artifact::url_path).collect::<Vec<_>>())?;
    let load = options.wrk;
    progress(&format!("serving {} x {}: {} over both", data.small.len(), size(data.small[0].len), load.describe()));
    let warm = WrkLoad { duration: Duration::from_secs(1), ..load };
    tools::wrk(relay, &script, warm)?;
    tools::wrk(nginx, &script, warm)?;
    let mut c = Comparison {
        name: format!("serve {} x {} ({})", data.small.len(), size(data.small[0].len), load.describe()),
        unit: "req/s",
        tool: "nginx".into(),
        better: Better::Higher,
        target: 0.8,
        decimals: 0,
        odi: Vec::new(),
        reference: Vec::new(),
    };
    for _ in 0..options.runs {
        c.odi.push(tools::wrk(relay, &script, load)?);
        checkpoint().await;
        c.reference.push(tools::wrk(nginx, &script, load)?);
        checkpoint().await;
    }
    Ok(finish(c))
}

/// Comparison 3: hashing a large file from a warm page cache.
async fn hashing(data: &Dataset, options: &Options) -> anyhow::Result<Comparison> {
    let file = &data.big.file;
    progress(&format!("hashing {}: ManifestBuilder and openssl dgst -sha256", size(data.big.len)));
    // The unmeasured first pass warms the page cache and checks both agree on the digest.
    let (_, digest) = tools::odi_manifest(file)?;
    let (_, hex) = tools::openssl_sha256(file)?;
    ensure!(digest.to_hex() == hex, "odi and openssl disagree on the SHA-256 of {}: {digest} vs {hex}", file.display());
    let mib = data.big.len as f64 / MIB as f64;
    let mut c = Comparison {
        name: format!("hash {} in 1 MiB chunks (whole-file + per-chunk SHA-256)", size(data.big.len)),
        unit: "MiB/s",
        tool: "openssl dgst -sha256".into(),
        better: Better::Higher,
        target: 1.0,
        decimals: 0,
        odi: Vec::new(),
        reference: Vec::new(),
    };
    for _ in 0..options.runs {
        c.odi.push(mib / tools::odi_manifest(file)?.0.as_secs_f64());
        c.reference.push(mib / tools::openssl_sha256(file)?.0.as_secs_f64());
        checkpoint().await;
    }
    Ok(finish(c))
}

/// Comparison 4: a fresh relay syncing the mix from the directory, against curl fetching the
/// same files from the same directory while no relay is alive (so it answers `200`, not `302`).
async fn relay_sync(work: &Path, directory: &Node, admin: &Admin, data: &Dataset, options: &Options) -> anyhow::Result<Comparison> {
    let sizes = options.sizes;
    let mix = format!("{} x {} + {} x {}", sizes.sync_small_count, size(sizes.sync_small_len), sizes.sync_big_count, size(sizes.sync_big_len));
    progress(&format!("sync {mix}: relay (max_fetches {SYNC_PARALLEL}) and xargs -P {SYNC_PARALLEL} -n {} curl", options.per_curl));
    let mut c = Comparison {
        name: format!("relay sync {} ({mix}), time; ratio = curl / odi", size(sizes.sync_total())),
        unit: "s",
        tool: format!("curl (xargs -P {SYNC_PARALLEL} -n {})", options.per_curl),
        better: Better::Lower,
        target: 0.9,
        decimals: 2,
        odi: Vec::new(),
        reference: Vec::new(),
    };
    for run in 0..options.runs {
        admin.wait_no_live_relays(LEASE_WAIT_LIMIT).await?;
        let out = work.join(format!("curl-{run}"));
        let curl = tools::curl_batch(&directory.url, &data.sync, SYNC_PARALLEL, options.per_curl, work, &out)?;
        // Not part of the figure: how long curl's files take to reach the disk, for comparison
        // with the relay, which fsyncs every blob before it reports it held.
        let flush = tools::flush_filesystem(&out)?;
        std::fs::remove_dir_all(&out).with_context(|| format!("cannot remove {}", out.display()))?;
        checkpoint().await;

        let relay_dir = work.join(format!("relay-sync-{run}"));
        let since = Instant::now();
        let relay = odi::start_relay(&relay_dir, &directory.url, &[SYNC_CATALOG], SYNC_PARALLEL).await?;
        let times = admin.wait_ready(&relay.url, data.sync.len() as u64, since, READY_LIMIT).await?;
        relay.stop().await?;
        std::fs::remove_dir_all(&relay_dir).with_context(|| format!("cannot remove {}", relay_dir.display()))?;
        progress(&format!(
            "  run {}: curl {:.2} s (then {:.2} s to flush its files to disk); relay {:.2} s ({:.2} s of it before the first assignment)",
            run + 1,
            curl.as_secs_f64(),
            flush.as_secs_f64(),
            times.ready.as_secs_f64(),
            times.assigned.as_secs_f64()
        ));
        c.reference.push(curl.as_secs_f64());
        c.odi.push(times.ready.as_secs_f64());
    }
    Ok(finish(c))
}
