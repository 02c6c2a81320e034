//! `odi-metrics-scale`: the directory's `/metrics` scrape at scale, in process: a directory
//! machine with R relays holding N artifacts (built as `odi-directory-scale` builds it), then
//! S scrapes, each the snapshot taken under the lock plus the text encoding, timed apart. The
//! reference in the same run is what `GET /api/v1/relays` (`odi relays --json`) costs at that
//! size: the relay table as JSON. Timings are printed, never asserted.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use odi_benches::machine_line;
use odi_benches::scale;
use odi_net::metrics::{DirectoryMetrics, DirectorySnapshot};

const USAGE: &str = "usage: odi-metrics-scale [--artifacts N] [--relays R] [--scrapes S]
  --artifacts N  artifacts in the catalog (default 100_000)
  --relays R     relays (default 10_000)
  --scrapes S    scrapes to time (default 20)";

fn main() -> anyhow::Result<()> {
    let (mut artifacts, mut relays, mut scrapes) = (100_000usize, 10_000usize, 20usize);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = || -> anyhow::Result<usize> {
            let v = args.next().with_context(|| format!("{arg} needs a number\n{USAGE}"))?;
            v.replace('_', "").parse().with_context(|| format!("{arg} {v}: not a number\n{USAGE}"))
        };
        match arg.as_str() {
            "--artifacts" => artifacts = number()?,
            "--relays" => relays = number()?,
            "--scrapes" => scrapes = number()?.max(1),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument `{other}`\n{USAGE}"),
        }
    }
    println!("{}", machine_line());
    let started = Instant::now();
    let (fleet, _) = scale::build(1, artifacts, relays)?;
    println!("built {relays} relays holding {artifacts} artifacts in {:.1} s", started.elapsed().as_secs_f64());
    let (dir, now) = (fleet.directory(), fleet.now());
    let metrics = std::sync::Arc::new(DirectoryMetrics::default());
    let (mut locked, mut encoded, mut bytes) = (Vec::new(), Vec::new(), 0);
    for _ in 0..scrapes {
        let t = Instant::now();
        let snap = DirectorySnapshot::of(dir, now);
        let t1 = Instant::now();
        let text = metrics.encode(snap);
        locked.push(t1 - t);
        encoded.push(t1.elapsed());
        bytes = text.len();
        black_box(text);
    }
    let mut reference = Vec::new();
    for _ in 0..scrapes {
        let t = Instant::now();
        let json = serde_json::to_vec(&dir.relays(now))?;
        reference.push(t.elapsed());
        black_box(json);
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (l, e, r) = (median(&mut locked), median(&mut encoded), median(&mut reference));
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("scrape: {:.2} ms median ({:.2} ms snapshot under the lock + {:.3} ms encoding), {bytes} bytes", ms(l + e), ms(l), ms(e));
    println!("reference, the relay table as JSON (GET /api/v1/relays): {:.2} ms median", ms(r));
    println!("scrape / relay table: {:.2}", (l + e).as_secs_f64() / r.as_secs_f64());
    Ok(())
}
