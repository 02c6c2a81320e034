//! `odi-directory-scale`: one directory machine at scale, in process, through
//! `odi_core::directory::Directory`'s public API only (no sockets, no disk, virtual time).
//!
//! Publishes N one-chunk artifacts with Debian pool paths into one catalog (2 replicas), enrolls
//! R relays with 10 TiB budgets, runs the full rebalance, feeds every relay's heartbeats until
//! the directory counts it as the holder of its whole assignment, measures a heartbeat with
//! nothing new (reporting the whole held set, as before deltas, and as a delta), then measures
//! redirect decisions on one thread over random paths. Prints the time of each step, the
//! process's RSS growth for the whole state, and the decision rate and latency. Timings are
//! printed, never asserted.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use odi_benches::scale::{self, Fleet, REPLICAS, Rng};
use odi_benches::{machine_line, rss_bytes};

const USAGE: &str = "usage: odi-directory-scale [--artifacts N] [--relays R] [--decisions D] [--seed S]
  --artifacts N  artifacts in the catalog (default 1_000_000)
  --relays R     relays, each with a 10 TiB budget (default 1000)
  --decisions D  redirect decisions to measure (default 2_000_000)
  --seed S       seed for paths, digests, relay ids and the path picks (default 1)";

/// The allocator the `odi` binary uses: the state's size depends on it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Decisions timed together; latency percentiles are over these batches' mean per decision.
const BATCH: usize = 100;
/// Paths checked for `REPLICAS` eligible relays before measuring.
const CHECK_SAMPLE: usize = 10_000;
/// Artifacts published once relays are placed, to show the per-publish cost at this size.
const LATE_PUBLISH: usize = 1000;
/// Relays that join (then leave, drained) one at a time, each followed by its rebalance.
const CHURN: usize = 5;
const MIB: f64 = (1u64 << 20) as f64;

#[derive(Clone, Copy, Debug)]
struct Options {
    artifacts: usize,
    relays: usize,
    decisions: usize,
    seed: u64,
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> anyhow::Result<Self> {
        let mut options = Self { artifacts: 1_000_000, relays: 1000, decisions: 2_000_000, seed: 1 };
        let number = |flag: &str, value: Option<String>| -> anyhow::Result<u64> {
            let value = value.with_context(|| format!("{flag} needs a number\n{USAGE}"))?;
            value.replace('_', "").parse().with_context(|| format!("{flag} {value}: not a number\n{USAGE}"))
        };
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--artifacts" => options.artifacts = number("--artifacts", args.next())? as usize,
                "--relays" => options.relays = number("--relays", args.next())? as usize,
                "--decisions" => options.decisions = number("--decisions", args.next())? as usize,
                "--seed" => options.seed = number("--seed", args.next())?,
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => bail!("unknown argument `{other}`\n{USAGE}"),
            }
        }
        ensure!((1..=50_000_000).contains(&options.artifacts), "--artifacts {}: expected 1 to 50_000_000", options.artifacts);
        ensure!((REPLICAS as usize..=100_000).contains(&options.relays), "--relays {}: expected {REPLICAS} to 100_000", options.relays);
        ensure!((BATCH..=1_000_000_000).contains(&options.decisions), "--decisions {}: expected {BATCH} to 1_000_000_000", options.decisions);
        Ok(options)
    }
}

fn main() -> anyhow::Result<()> {
    let o = Options::parse(std::env::args().skip(1))?;
    let (n, r) = (o.artifacts, o.relays);
    println!("directory scale: {n} artifacts in one catalog ({REPLICAS} replicas, one chunk each), {r} relays with 10 TiB budgets, seed {}", o.seed);

    let start = Instant::now();
    let paths = scale::artifact_paths(o.seed, n);
    let path_bytes: usize = paths.iter().map(|p| p.as_str().len()).sum();
    progress(&format!("generated {n} paths in {:.2} s (mean length {:.0} bytes), e.g. {}", secs(start.elapsed()), path_bytes as f64 / n as f64, paths[n / 2]));

    // Everything from here on is the directory's state: the path list above and the relays'
    // reports kept to send again are the bench's.
    let mut fleet = Fleet::new(o.seed)?;
    fleet.reserve_heartbeats(n * REPLICAS as usize);
    let rss_before = rss_bytes();

    let start = Instant::now();
    fleet.publish(&paths, 0)?;
    let publish = start.elapsed();
    println!("publish {n} artifacts (no relay enrolled yet): {:.2} s ({:.2} µs each)", secs(publish), micros(publish) / n as f64);
    let rss_published = rss_bytes();

    let start = Instant::now();
    fleet.enroll(r)?;
    let enroll = start.elapsed();
    println!("enroll {r} relays and pass their self-tests: {:.2} s (the rebalance they ask for is coalesced)", secs(enroll));

    let start = Instant::now();
    let (calls, longest) = fleet.rebalance()?;
    let rebalance = start.elapsed();
    let placed = fleet.relay_totals();
    println!(
        "full rebalance, {n} artifacts x {r} relays: {:.2} s ({:.2} µs per artifact, {:.1} ns per artifact-relay pair; {calls} timer calls, the longest {:.1} ms); {} placements",
        secs(rebalance),
        micros(rebalance) / n as f64,
        rebalance.as_nanos() as f64 / (n as f64 * r as f64),
        longest.as_secs_f64() * 1e3,
        placed.assigned
    );
    ensure!(placed.assigned == n * REPLICAS as usize, "expected {} placements, got {}", n * REPLICAS as usize, placed.assigned);

    let start = Instant::now();
    let reported = fleet.heartbeats()?;
    let heartbeats = start.elapsed();
    println!(
        "heartbeats of {r} relays (2 each: fetch the assignment, then report it held; {reported} digests reported): {:.2} s ({:.2} ms per relay)",
        secs(heartbeats),
        heartbeats.as_secs_f64() * 1e3 / r as f64
    );
    let whole = fleet.steady_whole_heartbeats()?;
    let steady = fleet.steady_heartbeats()?;
    let interval = fleet.directory().config().heartbeat_interval.as_secs_f64();
    let every = f64::from(odi_core::relay::FULL_REPORT_EVERY);
    let busy = |d: Duration| d.as_secs_f64() / interval * 100.0;
    println!(
        "steady heartbeats, whole sets (each relay's {:.0} digests again, as before deltas): {:.3} ms per relay; {r} relays every {interval:.0} s keep {:.2}% of one core busy",
        reported as f64 / r as f64,
        whole.as_secs_f64() * 1e3 / r as f64,
        busy(whole),
    );
    println!(
        "steady heartbeats, deltas (nothing new): {:.2} µs per relay, {:.4}% of one core; with the whole set every {every:.0}th beat: {:.4}% of one core",
        steady.as_secs_f64() * 1e6 / r as f64,
        busy(steady),
        busy(steady.mul_f64((every - 1.0) / every) + whole.div_f64(every)),
    );
    let rss_state = rss_bytes();
    let totals = fleet.relay_totals();
    ensure!(totals.ready == r && totals.held == totals.assigned, "not every relay is ready holding its assignment: {totals:?}");
    let grown = rss_state.saturating_sub(rss_before);
    println!(
        "state: RSS +{:.0} MiB ({:.0} MiB after publishing, {:.0} MiB more for placement and holdings), {:.0} bytes per artifact",
        grown as f64 / MIB,
        rss_published.saturating_sub(rss_before) as f64 / MIB,
        rss_state.saturating_sub(rss_published) as f64 / MIB,
        grown as f64 / n as f64
    );

    let mut rng = Rng::new(o.seed ^ 0x0005_ca1e);
    let sample: Vec<_> = (0..CHECK_SAMPLE.min(n)).map(|_| paths[rng.below(n as u64) as usize].clone()).collect();
    let short = fleet.short_of_replicas(&sample)?;
    ensure!(short == 0, "{short} of {} sampled paths have fewer than {REPLICAS} eligible relays", sample.len());
    progress(&format!("checked {} sampled paths: each has {REPLICAS} eligible relays", sample.len()));

    let decisions = o.decisions / BATCH * BATCH;
    let mut per_decision_ns: Vec<f64> = Vec::with_capacity(decisions / BATCH);
    let mut to_relay = 0usize;
    let start = Instant::now();
    for _ in 0..decisions / BATCH {
        let batch = Instant::now();
        for _ in 0..BATCH {
            let path = &paths[rng.below(n as u64) as usize];
            let redirect = fleet.redirect(path).with_context(|| format!("redirect {path}"))?;
            to_relay += usize::from(redirect.target.is_some());
            black_box(redirect);
        }
        per_decision_ns.push(batch.elapsed().as_nanos() as f64 / BATCH as f64);
    }
    let elapsed = start.elapsed();
    per_decision_ns.sort_by(f64::total_cmp);
    let pct = |p: f64| per_decision_ns[((per_decision_ns.len() - 1) as f64 * p).round() as usize] / 1e3;
    println!(
        "redirect decisions (1 thread, {decisions} over random paths): {:.0} per second; latency per decision (mean of each batch of {BATCH}): p50 {:.2} µs, p99 {:.2} µs, max {:.2} µs; {to_relay} of {decisions} to a relay",
        decisions as f64 / elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    ensure!(to_relay == decisions, "{} decisions had no relay: the directory would serve them itself", decisions - to_relay);
    let tick = fleet.hot_tick()?;
    let rss_after = rss_bytes();
    println!(
        "after the decisions and the hot tick that takes their counts ({:.1} ms in the timers): RSS +{:.0} MiB more (the decayed request counters behind hot replicas)",
        tick.as_secs_f64() * 1e3,
        rss_after.saturating_sub(rss_state) as f64 / MIB
    );

    let late: Vec<_> = (n..n + LATE_PUBLISH).map(|i| scale::artifact_path(o.seed, i as u64)).collect();
    let start = Instant::now();
    fleet.publish(&late, n as u64)?;
    let late_publish = start.elapsed();
    println!(
        "publish {LATE_PUBLISH} more with {r} relays placed (each placed at once): {:.3} s ({:.1} µs each)",
        secs(late_publish),
        micros(late_publish) / LATE_PUBLISH as f64
    );
    churn(&mut fleet)?;
    println!("{}", machine_line());
    Ok(())
}

/// One relay joins, `CHURN` times, then `CHURN` relays leave (drained), each change followed by
/// its whole rebalance. Prints the CPU each took (one thread) and the placements that moved
/// (what relays gained) against the ideal: the newcomer's weight share of all placements for a
/// join, what the leaver held for a leave (all relays weigh the same here).
fn churn(fleet: &mut Fleet) -> anyhow::Result<()> {
    let gained = |before: &std::collections::BTreeMap<odi_core::NodeId, usize>, after: &std::collections::BTreeMap<odi_core::NodeId, usize>| -> usize {
        after.iter().map(|(id, n)| n.saturating_sub(before.get(id).copied().unwrap_or(0))).sum()
    };
    let (mut join_cpu, mut join_moved, mut join_ideal) = (Vec::new(), 0usize, 0.0);
    for _ in 0..CHURN {
        let before = fleet.assigned_counts();
        let total: usize = before.values().sum();
        fleet.enroll(1)?;
        let start = Instant::now();
        fleet.rebalance()?;
        join_cpu.push(start.elapsed());
        let after = fleet.assigned_counts();
        join_moved += gained(&before, &after);
        join_ideal += total as f64 / after.len() as f64;
    }
    let (mut leave_cpu, mut leave_moved, mut leave_ideal) = (Vec::new(), 0usize, 0.0);
    for index in 0..CHURN {
        let before = fleet.assigned_counts();
        let total: usize = before.values().sum();
        fleet.drain_relay(index)?;
        let start = Instant::now();
        fleet.rebalance()?;
        leave_cpu.push(start.elapsed());
        let after = fleet.assigned_counts();
        leave_moved += gained(&before, &after);
        leave_ideal += total as f64 / (before.len() - index) as f64;
    }
    let ms = |v: &[Duration]| v.iter().map(|d| format!("{:.1}", d.as_secs_f64() * 1e3)).collect::<Vec<_>>().join(", ");
    println!(
        "relay join, {CHURN} times (enroll, then its rebalance): CPU {} ms; moved {join_moved} placements, ideal (weight share) {join_ideal:.0}: {:.3}x the ideal",
        ms(&join_cpu),
        join_moved as f64 / join_ideal
    );
    println!(
        "relay leave (drained), {CHURN} times: CPU {} ms; moved {leave_moved} placements, ideal (weight share) {leave_ideal:.0}: {:.3}x the ideal",
        ms(&leave_cpu),
        leave_moved as f64 / leave_ideal
    );
    Ok(())
}

fn progress(msg: &str) {
    eprintln!("odi-directory-scale: {msg}");
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
