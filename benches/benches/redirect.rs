//! criterion micro-bench of the directory's redirect decision (`Directory::redirect`) over
//! random paths of a catalog at scale, one decision per iteration.
//!
//! `cargo bench -p odi-benches --bench redirect` builds the state once (`ODI_BENCH_ARTIFACTS`
//! artifacts, default 100_000; `ODI_BENCH_RELAYS` relays, default 1000; a few seconds in release)
//! and measures. Without `--bench` (as `cargo test --all-targets` runs it) the state is 2,000
//! artifacts on 20 relays and criterion runs the decision once: a smoke test of the harness.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use odi_benches::scale::{self, Rng};

const SEED: u64 = 1;

/// Artifacts and relays: from the environment under `cargo bench`, small otherwise.
fn sizes() -> (usize, usize) {
    if !std::env::args().any(|a| a == "--bench") {
        return (2000, 20);
    }
    let env = |name: &str, default: usize| -> usize {
        match std::env::var(name) {
            Ok(v) => v.replace('_', "").parse().unwrap_or_else(|_| panic!("{name}={v}: expected a number")),
            Err(_) => default,
        }
    };
    (env("ODI_BENCH_ARTIFACTS", 100_000), env("ODI_BENCH_RELAYS", 1000))
}

fn redirect(c: &mut Criterion) {
    let (artifacts, relays) = sizes();
    let built = std::time::Instant::now();
    let (mut fleet, paths) = scale::build(SEED, artifacts, relays).expect("the fleet builds");
    eprintln!("redirect bench: {artifacts} artifacts on {relays} relays built in {:.1} s", built.elapsed().as_secs_f64());
    let mut rng = Rng::new(SEED);
    let mut group = c.benchmark_group("directory");
    group.throughput(Throughput::Elements(1));
    group.bench_function(format!("redirect/{artifacts}_artifacts/{relays}_relays"), |b| {
        b.iter(|| {
            let path = &paths[rng.below(paths.len() as u64) as usize];
            black_box(fleet.redirect(path).expect("every path is published"))
        })
    });
    group.finish();
}

criterion_group!(benches, redirect);
criterion_main!(benches);
