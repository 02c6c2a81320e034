//! `odi-bench`: whole-system comparisons of odi against reference tools. Each comparison runs
//! both sides in the same run, on the same files, on the same machine, alternating sides run by
//! run, and prints the best run of each side and their ratio (above 1 favours odi). Timings are
//! printed, never asserted: the machines this runs on are small and noisy.
//!
//! 1. a relay serving 1 GiB to curl, against nginx (`sendfile on`);
//! 2. a relay serving 1000 artifacts of 1 KiB to wrk, against nginx, with the same path list;
//! 3. checking every 1 MiB chunk of a 1 GiB file against its SHA-256 (what a relay or client
//!    does with each chunk it receives), against `openssl dgst -sha256`; then a publish's
//!    hashing (`ManifestHasher`: whole-file and per-chunk SHA-256, on two threads when there are
//!    two cores) on the same file, against the same single openssl pass;
//! 4. a relay syncing ~1 GiB of small and large artifacts from a directory to disk, against
//!    `xargs -P` curl fetching the same files from the same directory, then flushing them;
//! 5. the directory answering `302` for 1000 small artifacts held by 2 ready relays under wrk,
//!    against nginx answering the same paths with `return 302`;
//! 6. over HTTPS, the same certificate (ECDSA P-256) and TLS 1.3 cipher suite on both sides: a
//!    relay serving 1 GiB to curl and 1000 x 1 KiB to wrk, against nginx, and full TLS
//!    handshakes a second (`openssl s_time -new`) against nginx.
//! 7. a meta-directory (three references, a GeoIP lookup per request) answering `302` to a
//!    directory for the same paths, against nginx `return 302` to that directory; and, for
//!    context, against Fedora's mirrorlist-server as published (1/36 of nginx at 300 hosts).
//! 8. the OCI API against Debian's `docker-registry`: pushing the 1 GiB file as a layer (curl),
//!    pulling it through a relay (`curl -L`), and 1 KiB blob GETs under wrk (see `oci`).
//!
//! Everything listens on 127.0.0.1 only; data lives in a temporary directory removed at the end
//! (also on error or SIGINT/SIGTERM). `benches/run.sh` installs the tools and runs this in release.

mod data;
mod nginx;
mod oci;
mod odi;
mod report;
mod tools;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::data::{BIG_CATALOG, Dataset, MIB, REDIRECT_CATALOG, SMALL_CATALOG, SYNC_CATALOG, Sizes};
use crate::odi::{Admin, Node};
use crate::report::{Better, Comparison, size};
use crate::tools::WrkLoad;

/// The allocator the `odi` binary uses, so the servers run here as they do there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: odi-bench [--quick] [--runs N] [--per-curl N] [--only LIST]
  --quick       small data set, short wrk runs: checks the harness, figures mean little
  --only LIST   run only these comparisons, comma-separated: serve, hash, sync, 302, tls, meta, oci
  --runs N      measured runs per side (default 3); each figure is the best of them
  --per-curl N  URLs per curl process in the sync comparison (default 16)";

/// Downloads at a time, on both sides of the sync comparison (relay `max_fetches`, `xargs -P`).
const SYNC_PARALLEL: usize = 4;
/// Upload concurrency when publishing the many small files.
const PUBLISH_PARALLEL: usize = 8;
/// Relays holding the redirect catalog (its replicas), so each `302` names one and lists another.
const REDIRECT_RELAYS: usize = 2;
const READY_LIMIT: Duration = Duration::from_secs(300);
const LEASE_WAIT_LIMIT: Duration = Duration::from_secs(15);

/// The comparisons `--only` can pick; `Serve` is the pair that shares one relay and nginx.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
enum Part {
    Serve,
    Hash,
    Sync,
    Redirect,
    Tls,
    Meta,
    Oci,
}

impl Part {
    const ALL: [Self; 7] = [Self::Serve, Self::Hash, Self::Sync, Self::Redirect, Self::Tls, Self::Meta, Self::Oci];

    fn name(self) -> &'static str {
        match self {
            Self::Serve => "serve",
            Self::Hash => "hash",
            Self::Sync => "sync",
            Self::Redirect => "302",
            Self::Tls => "tls",
            Self::Meta => "meta",
            Self::Oci => "oci",
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Options {
    sizes: Sizes,
    runs: usize,
    per_curl: usize,
    wrk: WrkLoad,
    /// Which comparisons run, indexed like `Part::ALL`.
    parts: [bool; 7],
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> anyhow::Result<Self> {
        let mut options = Self {
            sizes: Sizes::FULL,
            runs: 3,
            per_curl: 16,
            wrk: WrkLoad { threads: 2, connections: 32, duration: Duration::from_secs(5) },
            parts: [true; 7],
        };
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
                "--only" => {
                    let list = args.next().with_context(|| format!("--only needs a list\n{USAGE}"))?;
                    options.parts = [false; 7];
                    for name in list.split(',') {
                        let i = Part::ALL.iter().position(|p| p.name() == name).with_context(|| format!("--only: no comparison `{name}`\n{USAGE}"))?;
                        options.parts[i] = true;
                    }
                }
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => bail!("unknown argument `{other}`\n{USAGE}"),
            }
        }
        Ok(options)
    }

    fn wants(&self, part: Part) -> bool {
        Part::ALL.iter().zip(self.parts).any(|(p, on)| *p == part && on)
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
    println!("{}", odi_benches::machine_line());
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

    // Trusted before any node starts: the directory self-tests the TLS relay at its https:// URL.
    let certs = if options.wants(Part::Tls) {
        let certs = odi_net::tls::write_dev_ca(&work.join("tls"), &["127.0.0.1"])?;
        odi_net::tls::trust_ca_file(&certs.ca)?;
        Some(certs)
    } else {
        None
    };
    let directory = odi::start_directory(&work.join("directory")).await?;
    let admin = Admin::new(&directory.url);
    progress(&format!("directory at {}; publishing", directory.url));
    for catalog in [BIG_CATALOG, SMALL_CATALOG, SYNC_CATALOG] {
        admin.create_catalog(catalog, 1).await?;
    }
    admin.create_catalog(REDIRECT_CATALOG, REDIRECT_RELAYS as u32).await?;
    admin.create_catalog(oci::OCI_CATALOG, 1).await?;
    if options.wants(Part::Serve) || options.wants(Part::Tls) {
        admin.publish(&data.big).await?;
        admin.publish_all(&data.small, PUBLISH_PARALLEL).await?;
    }
    if options.wants(Part::Sync) {
        admin.publish_all(&data.sync, SYNC_PARALLEL).await?;
    }
    if options.wants(Part::Redirect) {
        admin.publish_all(&data.redirect, PUBLISH_PARALLEL).await?;
    }
    flush_to_disk();
    checkpoint().await;

    // Printed in README.md's order: serving one large, serving many small, hashing, sync, 302s.
    let compared = async {
        let mut comparisons = Vec::new();
        if options.wants(Part::Serve) {
            comparisons.extend(serving(work, &directory, &admin, &data, &options).await?);
        }
        if options.wants(Part::Hash) {
            comparisons.extend(hashing(&data, &options).await?);
        }
        if options.wants(Part::Sync) {
            comparisons.push(relay_sync(work, &directory, &admin, &data, &options).await?);
        }
        if options.wants(Part::Redirect) {
            comparisons.push(redirect_302(work, &directory, &admin, &data, &options).await?);
        }
        if let Some(certs) = &certs {
            comparisons.extend(tls_serving(work, certs, &directory, &admin, &data, &options).await?);
        }
        if options.wants(Part::Meta) {
            comparisons.extend(meta_302(work, &directory, &data, &options).await?);
        }
        if options.wants(Part::Oci) {
            comparisons.extend(oci::registry(work, &directory, &admin, &data, &options).await?);
        }
        anyhow::Ok(comparisons)
    }
    .await;
    directory.stop().await?;
    drop(tmp);
    compared
}

/// Comparisons 1 and 2, which share one serving relay and one nginx.
async fn serving(work: &Path, directory: &Node, admin: &Admin, data: &Dataset, options: &Options) -> anyhow::Result<[Comparison; 2]> {
    progress("starting the serving relay and nginx");
    let since = Instant::now();
    let relay = odi::start_relay(&work.join("relay-serve"), &directory.url, &[BIG_CATALOG, SMALL_CATALOG], SYNC_PARALLEL).await?;
    let synced = admin.wait_ready(&relay.url, 1 + data.small.len() as u64, since, READY_LIMIT).await?;
    progress(&format!("serving relay at {} ready after {:.2} s", relay.url, synced.ready.as_secs_f64()));
    let mut nginx = nginx::Nginx::start(&work.join("nginx"), &data.www)?;
    progress(&format!("nginx at {}", nginx.url));

    let serving = async {
        let big = serve_big(&relay.url, &nginx.url, data, options).await?;
        let small = serve_small(&relay.url, &nginx.url, work, data, options).await?;
        anyhow::Ok([big, small])
    };
    let served = serving.await;
    nginx.stop();
    relay.stop().await?;
    served
}

/// The one TLS 1.3 cipher suite both sides use in comparison 6 (OpenSSL's and rustls' first
/// choice on this hardware).
const TLS_SUITE: &str = "TLS_AES_256_GCM_SHA384";
/// `openssl s_time` processes at once in the handshake comparison.
const HANDSHAKE_CLIENTS: usize = 2;

/// Comparison 6: a TLS relay and nginx with the same certificate and cipher suite.
async fn tls_serving(
    work: &Path,
    certs: &odi_net::tls::DevCerts,
    directory: &Node,
    admin: &Admin,
    data: &Dataset,
    options: &Options,
) -> anyhow::Result<[Comparison; 3]> {
    progress("starting a TLS relay and nginx with TLS");
    let tls = odi_net::tls::ServerTls::from_pem_files(&certs.cert, &certs.key)?;
    let since = Instant::now();
    let relay = odi::start_relay_tls(&work.join("relay-tls"), &directory.url, &[BIG_CATALOG, SMALL_CATALOG], SYNC_PARALLEL, Some(tls)).await?;
    admin.wait_ready(&relay.url, 1 + data.small.len() as u64, since, READY_LIMIT).await?;
    let mut nginx = nginx::Nginx::start_tls(&work.join("nginx-tls"), &data.www, nginx::Tls { cert: &certs.cert, key: &certs.key, ciphersuite: TLS_SUITE })?;
    progress(&format!("TLS relay at {}, nginx at {}", relay.url, nginx.url));
    let compared = async {
        let ca = certs.ca.display().to_string();
        let curl_tls = ["--cacert", ca.as_str(), "--http1.1", "--tlsv1.3", "--tls13-ciphers", TLS_SUITE];
        let path = data.big.url_path();
        let (odi_url, nginx_url) = (format!("{}{path}", relay.url), format!("{}{path}", nginx.url));
        progress(&format!("serving {} over HTTPS: curl {odi_url} and {nginx_url}", size(data.big.len)));
        let mib_s = |url: &str| tools::curl_speed_with(url, data.big.len, &curl_tls).map(|bps| bps / MIB as f64);
        mib_s(&odi_url)?;
        mib_s(&nginx_url)?;
        let mut big = Comparison::new(format!("HTTPS serve {} (curl, HTTP/1.1, {TLS_SUITE})", size(data.big.len)), "MiB/s", "nginx", Better::Higher, 1.0, 0);
        for _ in 0..options.runs {
            big.odi.push(mib_s(&odi_url)?);
            big.reference.push(mib_s(&nginx_url)?);
            checkpoint().await;
        }
        let big = finish(big);

        let script = work.join("rotate-tls.lua");
        tools::wrk_script(&script, &data.small.iter().map(data::Artifact::url_path).collect::<Vec<_>>())?;
        let load = options.wrk;
        progress(&format!("serving {} x {} over HTTPS: {} over both", data.small.len(), size(data.small[0].len), load.describe()));
        let warm = WrkLoad { duration: Duration::from_secs(1), ..load };
        tools::wrk(&relay.url, &script, warm)?;
        tools::wrk(&nginx.url, &script, warm)?;
        let mut small = Comparison::new(
            format!("HTTPS serve {} x {} ({})", data.small.len(), size(data.small[0].len), load.describe()),
            "req/s",
            "nginx",
            Better::Higher,
            0.8,
            0,
        );
        for _ in 0..options.runs {
            small.odi.push(tools::wrk(&relay.url, &script, load)?);
            checkpoint().await;
            small.reference.push(tools::wrk(&nginx.url, &script, load)?);
            checkpoint().await;
        }
        let small = finish(small);

        let secs = load.duration.as_secs().max(1);
        let addr = |url: &str| url.trim_start_matches("https://").to_owned();
        progress(&format!("full TLS handshakes: {HANDSHAKE_CLIENTS} x openssl s_time -new for {secs}s against both"));
        tools::tls_handshakes(&addr(&relay.url), 1, 1, TLS_SUITE)?;
        tools::tls_handshakes(&addr(&nginx.url), 1, 1, TLS_SUITE)?;
        let mut handshakes = Comparison::new(
            format!("TLS 1.3 full handshakes ({HANDSHAKE_CLIENTS} x openssl s_time -new, ECDSA P-256)"),
            "handshakes/s",
            "nginx",
            Better::Higher,
            None,
            0,
        );
        for _ in 0..options.runs {
            handshakes.odi.push(tools::tls_handshakes(&addr(&relay.url), HANDSHAKE_CLIENTS, secs, TLS_SUITE)?);
            checkpoint().await;
            handshakes.reference.push(tools::tls_handshakes(&addr(&nginx.url), HANDSHAKE_CLIENTS, secs, TLS_SUITE)?);
            checkpoint().await;
        }
        anyhow::Ok([big, small, finish(handshakes)])
    };
    let compared = compared.await;
    nginx.stop();
    relay.stop().await?;
    compared
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
    let mut c = Comparison::new(format!("serve {} over loopback (curl)", size(data.big.len)), "MiB/s", "nginx", Better::Higher, 0.9, 0);
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
    let mut c =
        Comparison::new(format!("serve {} x {} ({})", data.small.len(), size(data.small[0].len), load.describe()), "req/s", "nginx", Better::Higher, 0.8, 0);
    for _ in 0..options.runs {
        c.odi.push(tools::wrk(relay, &script, load)?);
        checkpoint().await;
        c.reference.push(tools::wrk(nginx, &script, load)?);
        checkpoint().await;
    }
    Ok(finish(c))
}

/// Comparison 3: hashing a large file from a warm page cache.
/// Comparison 3, and the manifest line after it (context, no target).
async fn hashing(data: &Dataset, options: &Options) -> anyhow::Result<[Comparison; 2]> {
    let file = &data.big.file;
    progress(&format!("hashing {}: chunk checks, ManifestHasher and openssl dgst -sha256", size(data.big.len)));
    // The unmeasured first pass warms the page cache and checks both agree on the digest.
    let (_, manifest) = tools::odi_manifest(file)?;
    let (_, hex) = tools::openssl_sha256(file)?;
    let digest = manifest.digest();
    ensure!(digest.to_hex() == hex, "odi and openssl disagree on the SHA-256 of {}: {digest} vs {hex}", file.display());
    let mib = data.big.len as f64 / MIB as f64;
    let openssl = "openssl dgst -sha256";
    let mut chunks =
        Comparison::new(format!("chunk hashing {} (per-chunk SHA-256 of 1 MiB chunks)", size(data.big.len)), "MiB/s", openssl, Better::Higher, 1.0, 0);
    // A publish hashes every byte twice (the whole file, and its chunk): on two threads when
    // there are two cores, against one pass of openssl.
    let mut whole =
        Comparison::new(format!("publish hashing {} (whole-file + per-chunk SHA-256)", size(data.big.len)), "MiB/s", openssl, Better::Higher, 0.9, 0);
    for _ in 0..options.runs {
        chunks.odi.push(mib / tools::odi_chunk_check(file, &manifest)?.as_secs_f64());
        whole.odi.push(mib / tools::odi_manifest(file)?.0.as_secs_f64());
        let reference = mib / tools::openssl_sha256(file)?.0.as_secs_f64();
        chunks.reference.push(reference);
        whole.reference.push(reference);
        checkpoint().await;
    }
    Ok([finish(chunks), finish(whole)])
}

/// Comparison 4: a fresh relay syncing the mix from the directory, against curl fetching the
/// same files from the same directory while no relay is alive (so it answers `200`, not `302`).
async fn relay_sync(work: &Path, directory: &Node, admin: &Admin, data: &Dataset, options: &Options) -> anyhow::Result<Comparison> {
    let sizes = options.sizes;
    let mix = format!("{} x {} + {} x {}", sizes.sync_small_count, size(sizes.sync_small_len), sizes.sync_big_count, size(sizes.sync_big_len));
    progress(&format!("sync {mix}: relay (max_fetches {SYNC_PARALLEL}) and xargs -P {SYNC_PARALLEL} -n {} curl", options.per_curl));
    let mut c = Comparison::new(
        format!("relay sync {} ({mix}) to disk, time; ratio = curl / odi", size(sizes.sync_total())),
        "s",
        format!("curl (xargs -P {SYNC_PARALLEL} -n {}) + syncfs", options.per_curl),
        Better::Lower,
        0.9,
        2,
    );
    for run in 0..options.runs {
        admin.wait_no_live_relays(LEASE_WAIT_LIMIT).await?;
        let out = work.join(format!("curl-{run}"));
        let curl = tools::curl_batch(&directory.url, &data.sync, SYNC_PARALLEL, options.per_curl, work, &out)?;
        // The relay reports a blob held only once it is on disk (fsynced), so curl's figure
        // includes flushing its files (one syncfs for all of them, cheaper than curl fsyncing
        // each, had it a way to).
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
            "  run {}: curl {:.2} s ({:.2} s fetching, then {:.2} s flushing its files to disk); relay {:.2} s ({:.2} s of it before the first assignment)",
            run + 1,
            (curl + flush).as_secs_f64(),
            curl.as_secs_f64(),
            flush.as_secs_f64(),
            times.ready.as_secs_f64(),
            times.assigned.as_secs_f64()
        ));
        c.reference.push((curl + flush).as_secs_f64());
        c.odi.push(times.ready.as_secs_f64());
    }
    Ok(finish(c))
}

/// Comparison 5: the directory's `302` for many small artifacts that two ready relays hold,
/// against nginx answering the same paths with `return 302`, both under the same wrk load.
async fn redirect_302(work: &Path, directory: &Node, admin: &Admin, data: &Dataset, options: &Options) -> anyhow::Result<Comparison> {
    let artifacts = &data.redirect;
    progress(&format!("starting {REDIRECT_RELAYS} relays for the {} redirect artifacts", artifacts.len()));
    let since = Instant::now();
    let mut relays = Vec::new();
    for i in 0..REDIRECT_RELAYS {
        relays.push(odi::start_relay(&work.join(format!("relay-302-{i}")), &directory.url, &[REDIRECT_CATALOG], SYNC_PARALLEL).await?);
    }
    let mut nginx = None;
    let result = async {
        for relay in &relays {
            let ready = admin.wait_ready(&relay.url, artifacts.len() as u64, since, READY_LIMIT).await?;
            progress(&format!("  relay at {} ready after {:.2} s", relay.url, ready.ready.as_secs_f64()));
        }
        let relay_urls: Vec<&str> = relays.iter().map(|r| r.url.as_str()).collect();
        // nginx points every 302 at the first relay, with the same path: the same Location a
        // directory 302 carries, from a fixed rule instead of a choice among holders.
        let redirect = nginx::Redirect { location: &format!("/r/{REDIRECT_CATALOG}/"), to: relay_urls[0] };
        let n = nginx.insert(nginx::Nginx::start_with(&work.join("nginx-302"), &data.www, Some(redirect))?);
        progress(&format!("nginx at {} answers /r/{REDIRECT_CATALOG}/* with return 302 {}$uri", n.url, relay_urls[0]));
        redirect_runs(work, (&directory.url, &n.url), n.pid(), &relay_urls, artifacts, ("redirect 302", 0.8), options).await
    }
    .await;
    if let Some(mut n) = nginx {
        n.stop();
    }
    for relay in relays {
        relay.stop().await?;
    }
    result
}

/// Fedora's mirrorlist-server answers about 1/36 of nginx's request rate with 300 hosts (its
/// published figure), the peer of a meta-directory.
const MIRRORLIST_OF_NGINX: f64 = 1.0 / 36.0;

/// Comparison 6: a meta-directory in front of the directory (EU, NA and unregioned references,
/// all to it; GeoIP puts every loopback client in DE, so each answer ranks by continent) against
/// nginx `return 302 {directory}$uri`; then the same figure against mirrorlist-server's.
async fn meta_302(work: &Path, directory: &Node, data: &Dataset, options: &Options) -> anyhow::Result<[Comparison; 2]> {
    let geoip = work.join("meta-geoip.mmdb");
    odi_benches::write_loopback_geoip(&geoip, "DE", "EU")?;
    let d = &directory.url;
    let meta = odi::start_meta(&work.join("meta"), &[format!("NA={d}"), format!("EU={d}"), d.clone()], &geoip).await?;
    let first = format!("{}{}", meta.url, data.redirect[0].url_path());
    let since = Instant::now();
    while tools::probe(&first).ok().map(|p| p.code).as_deref() != Some("302") {
        ensure!(since.elapsed() < Duration::from_secs(10), "the meta-directory did not answer 302 within 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let redirect = nginx::Redirect { location: &format!("/r/{REDIRECT_CATALOG}/"), to: d };
    let mut n = nginx::Nginx::start_with(&work.join("nginx-meta"), &data.www, Some(redirect))?;
    progress(&format!("meta-directory at {}; nginx at {} answers /r/{REDIRECT_CATALOG}/* with return 302 {d}$uri", meta.url, n.url));
    let result = redirect_runs(work, (&meta.url, &n.url), n.pid(), &[d.as_str()], &data.redirect, ("meta-directory 302", 1.0), options).await;
    n.stop();
    meta.stop().await?;
    let c = result?;
    let mut peer = Comparison::new(
        c.name.replace("meta-directory 302", "meta-directory 302 vs mirrorlist-server"),
        "req/s",
        "mirrorlist-server (published: nginx / 36)",
        Better::Higher,
        None,
        0,
    );
    peer.odi = c.odi.clone();
    peer.reference = c.reference.iter().map(|r| r * MIRRORLIST_OF_NGINX).collect();
    Ok([c, peer])
}

async fn redirect_runs(
    work: &Path,
    (odi, nginx): (&str, &str),
    nginx_pid: u32,
    relays: &[&str],
    artifacts: &[data::Artifact],
    (name, target): (&str, f64),
    options: &Options,
) -> anyhow::Result<Comparison> {
    let paths: Vec<String> = artifacts.iter().map(data::Artifact::url_path).collect();
    // Both sides must answer a 302 to a relay URL with the same path; checked before and after
    // every measured odi run, and once per side under load by a script that counts statuses.
    let check = |base: &str, path: &str| -> anyhow::Result<tools::Probe> {
        let p = tools::probe(&format!("{base}{path}"))?;
        ensure!(p.code == "302", "{base}{path} answered {} instead of 302", p.code);
        ensure!(relays.iter().any(|r| p.location == format!("{r}{path}")), "{base}{path} redirected to `{}`, not to a relay with the same path", p.location);
        Ok(p)
    };
    let (first, last) = (&paths[0], &paths[paths.len() - 1]);
    let (o, n) = (check(odi, first)?, check(nginx, first)?);
    progress(&format!(
        "302 answers: odi {} header bytes + {} body bytes, nginx {} header bytes + {} body bytes",
        o.header_bytes, o.body_bytes, n.header_bytes, n.body_bytes
    ));
    let load = options.wrk;
    progress(&format!("redirect 302 x {} paths: {} over both", paths.len(), load.describe()));
    // Unmeasured warm-up, 1 s a side, counting every answer's status (the counting costs wrk time).
    let counting = work.join("count-302.lua");
    tools::wrk_status_script(&counting, &paths)?;
    let warm = WrkLoad { duration: Duration::from_secs(1), ..load };
    for (name, base) in [("odi", odi), ("nginx", nginx)] {
        let (rps, s) = tools::wrk_statuses(base, &counting, warm)?;
        ensure!(s.other == 0 && s.no_location == 0 && s.found > 0, "{name} under wrk: {s:?}; expected only 302s with a Location");
        progress(&format!("  warm-up {name}: {} answers, all 302 with a Location ({rps:.0} req/s while counting)", s.found));
    }
    let script = work.join("rotate-302.lua");
    tools::wrk_script(&script, &paths)?;
    let mut c = Comparison::new(format!("{name} ({})", load.describe()), "req/s", "nginx", Better::Higher, target, 0);
    // Not part of the figure: CPU time each server used per answer (odi: this whole process,
    // directory and both relays; nginx: master and workers), user and system, to tell a slower
    // server from a starved one. wrk shares the same 2 cores with both.
    let seconds = load.duration.as_secs_f64();
    let per_answer = |cpu: tools::CpuTime, rps: f64| {
        let us = |d: Duration| d.as_secs_f64() * 1e6 / (rps * seconds);
        format!(
            "{rps:.0} req/s, {:.1} µs CPU per answer (user {:.1}, system {:.1}; {:.2} cores)",
            us(cpu.total()),
            us(cpu.user),
            us(cpu.system),
            cpu.total().as_secs_f64() / seconds
        )
    };
    for run in 0..options.runs {
        check(odi, first)?;
        let before = tools::cpu_time(std::process::id(), false)?;
        let rps = tools::wrk(odi, &script, load)?;
        let odi_cpu = tools::cpu_time(std::process::id(), false)?.since(&before);
        c.odi.push(rps);
        check(odi, last)?;
        checkpoint().await;
        let before = tools::cpu_time(nginx_pid, true)?;
        let nginx_rps = tools::wrk(nginx, &script, load)?;
        let nginx_cpu = tools::cpu_time(nginx_pid, true)?.since(&before);
        c.reference.push(nginx_rps);
        check(nginx, last)?;
        progress(&format!("  run {}: odi {}; nginx {}", run + 1, per_answer(odi_cpu, rps), per_answer(nginx_cpu, nginx_rps)));
        checkpoint().await;
    }
    Ok(finish(c))
}
