//! The hot child: request statistics (exponentially decayed counters per digest) and the extra
//! replicas they earn. Redirects count into it; `tick` says which digests changed level, as
//! values the parent hands to placement.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::digest::Digest;
use crate::time::Instant;

/// How request rates earn an artifact extra replicas, and how fast they are forgotten.
#[derive(Clone, Debug)]
pub struct HotConfig {
    /// A request's weight halves every `half_life`.
    pub half_life: Duration,
    /// Requests per second at which an artifact earns its first extra replica; each doubling
    /// earns one more.
    pub rate: f64,
    /// Most extra replicas an artifact can earn.
    pub max_extra: u32,
    /// How often hotness is re-evaluated (and assignments follow).
    pub tick: Duration,
}

impl Default for HotConfig {
    fn default() -> Self {
        Self { half_life: Duration::from_secs(600), rate: 1.0, max_extra: 4, tick: Duration::from_secs(10) }
    }
}

/// Request counters and the extra replicas each digest earned.
#[derive(Debug, Default)]
pub(super) struct Hot {
    hits: BTreeMap<Digest, Decayed>,
    extra: BTreeMap<Digest, u32>,
    next_tick: Option<Instant>,
    /// One more than the millisecond instant of the first request counted (by the catalogs'
    /// per-blob counters) since the last tick; 0 when there was none. Redirects set it under the
    /// read lock; the tick after it takes the counts.
    armed: AtomicU64,
}

impl Hot {
    /// Counts `n` requests for `digest`.
    #[cfg(test)]
    pub(super) fn add(&mut self, digest: Digest, n: u32, now: Instant, config: &HotConfig) {
        self.count(digest, n, now, config);
        self.next_tick.get_or_insert(now + config.tick);
    }

    fn count(&mut self, digest: Digest, n: u32, now: Instant, config: &HotConfig) {
        self.hits.entry(digest).or_insert_with(|| Decayed::new(now)).add(f64::from(n), now, config.half_life);
    }

    /// Notes that a request was counted elsewhere (a blob's counter) at `now`, so a tick comes.
    /// Read-mostly: after the first request of a tick it is one load.
    pub(super) fn arm(&self, now: Instant) {
        if self.armed.load(Ordering::Relaxed) == 0 {
            let _ = self.armed.compare_exchange(0, now.as_millis() + 1, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// The extra replicas `digest` earned.
    pub(super) fn extra(&self, digest: &Digest) -> u32 {
        self.extra.get(digest).copied().unwrap_or(0)
    }

    #[cfg(test)]
    pub(super) fn set_extra(&mut self, digest: Digest, extra: u32) {
        self.extra.insert(digest, extra);
    }

    /// Forgets `digest` (it was barred).
    pub(super) fn forget(&mut self, digest: &Digest) {
        self.hits.remove(digest);
        self.extra.remove(digest);
    }

    /// Re-evaluates every level once the tick is due: the digests whose extra replicas changed,
    /// with their new count, in digest order (counted ones first, then cooled ones).
    /// `take` gives the requests counted elsewhere since the last tick (the catalogs' counters);
    /// they count as made at this tick, at most one `tick` late.
    pub(super) fn handle_timeout<I>(&mut self, now: Instant, config: &HotConfig, take: impl FnOnce() -> I) -> Vec<(Digest, u32)>
    where
        I: IntoIterator<Item = (Digest, u32)>,
    {
        if self.poll_timeout(config).is_none_or(|t| now < t) {
            return Vec::new();
        }
        *self.armed.get_mut() = 0;
        for (digest, n) in take() {
            self.count(digest, n, now, config);
        }
        self.hits.retain(|_, c| c.value(now, config.half_life) >= 0.01);
        let mut changed = Vec::new();
        for (digest, counter) in &self.hits {
            let current = self.extra(digest);
            let next = extra_replicas(counter.rate(now, config.half_life), current, config);
            if next != current {
                changed.push((*digest, next));
            }
        }
        for (digest, current) in &self.extra {
            if !self.hits.contains_key(digest) && *current > 0 {
                changed.push((*digest, 0));
            }
        }
        for (digest, extra) in &changed {
            if *extra == 0 {
                self.extra.remove(digest);
            } else {
                self.extra.insert(*digest, *extra);
            }
        }
        self.next_tick = (!self.hits.is_empty() || !self.extra.is_empty()).then_some(now + config.tick);
        changed
    }

    #[must_use]
    pub(super) fn poll_timeout(&self, config: &HotConfig) -> Option<Instant> {
        let armed = self.armed.load(Ordering::Relaxed);
        let counted = (armed > 0).then(|| Instant::from_millis(armed - 1) + config.tick);
        match (self.next_tick, counted) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The `n` most requested digests, with their decayed rate and extra replicas.
    pub(super) fn hottest(&self, n: usize, now: Instant, config: &HotConfig) -> Vec<(Digest, f64, u32)> {
        let mut rates: Vec<(f64, Digest)> = self.hits.iter().map(|(d, c)| (c.rate(now, config.half_life), *d)).filter(|(r, _)| *r > 0.0).collect();
        rates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        rates.into_iter().take(n).map(|(rate, digest)| (digest, rate, self.extra(&digest))).collect()
    }
}

/// A counter whose past counts fade with a half-life.
#[derive(Clone, Copy, Debug)]
pub(super) struct Decayed {
    value: f64,
    at: Instant,
}

impl Decayed {
    pub(super) fn new(now: Instant) -> Self {
        Self { value: 0.0, at: now }
    }

    pub(super) fn value(&self, now: Instant, half_life: Duration) -> f64 {
        let dt = now.saturating_since(self.at).as_secs_f64();
        self.value * 0.5f64.powf(dt / half_life.as_secs_f64().max(1e-9))
    }

    pub(super) fn add(&mut self, n: f64, now: Instant, half_life: Duration) {
        self.value = self.value(now, half_life) + n;
        self.at = now;
    }

    /// The request rate this counter reflects: a steady `r` per second settles at
    /// `r × half_life / ln 2`.
    pub(super) fn rate(&self, now: Instant, half_life: Duration) -> f64 {
        self.value(now, half_life) * std::f64::consts::LN_2 / half_life.as_secs_f64().max(1e-9)
    }
}

/// Extra replicas for a request rate, with hysteresis: a level is earned at its threshold and
/// kept until the rate falls below half of it, so replicas do not flap.
pub(super) fn extra_replicas(rate: f64, current: u32, config: &HotConfig) -> u32 {
    let level = |r: f64| -> u32 { if r < config.rate { 0 } else { (1 + (r / config.rate).log2().floor() as u32).min(config.max_extra) } };
    let up = level(rate);
    if up >= current {
        up
    } else {
        // Cool down only when even twice the rate would not hold the current level.
        level(rate * 2.0).min(current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_rate_settles_and_earns_replicas_with_hysteresis() {
        let cfg = HotConfig { half_life: Duration::from_secs(60), ..HotConfig::default() };
        let mut c = Decayed::new(Instant::ZERO);
        let mut now = Instant::ZERO;
        for _ in 0..6000 {
            now = now + Duration::from_millis(250); // 4 requests per second
            c.add(1.0, now, cfg.half_life);
        }
        let rate = c.rate(now, cfg.half_life);
        assert!((rate - 4.0).abs() < 0.2, "{rate}");
        assert_eq!(extra_replicas(rate, 0, &cfg), 3); // 1/s → 1, 2/s → 2, 4/s → 3
        assert_eq!(extra_replicas(3.0, 3, &cfg), 3, "a small dip keeps the level");
        assert_eq!(extra_replicas(1.5, 3, &cfg), 2);
        assert_eq!(extra_replicas(0.4, 1, &cfg), 0);
        assert_eq!(extra_replicas(1000.0, 0, &cfg), cfg.max_extra);
        assert!(c.value(now + Duration::from_secs(600), cfg.half_life) < 1.0, "cold after ten half-lives");
    }

    #[test]
    fn a_tick_reports_levels_that_changed_and_cools_down() {
        let cfg = HotConfig { half_life: Duration::from_secs(60), tick: Duration::from_secs(10), ..HotConfig::default() };
        let (hot_one, cold) = (Digest::of(b"hot"), Digest::of(b"cold"));
        let mut hot = Hot::default();
        assert_eq!(hot.poll_timeout(&cfg), None, "nothing counted: no tick");
        let mut now = Instant::ZERO;
        for _ in 0..2500 {
            now = now + Duration::from_millis(200);
            hot.add(hot_one, 1, now, &cfg);
        }
        hot.add(cold, 1, now, &cfg);
        assert_eq!(hot.handle_timeout(now, &cfg, Vec::new), vec![(hot_one, 3)], "5/s earns 3; one request earns none");
        assert_eq!(hot.extra(&hot_one), 3);
        assert_eq!(hot.handle_timeout(now, &cfg, Vec::new), vec![], "not due again yet");
        assert_eq!(hot.hottest(1, now, &cfg)[0].0, hot_one);
        let later = now + Duration::from_secs(3600);
        assert_eq!(hot.handle_timeout(later, &cfg, Vec::new), vec![(hot_one, 0)], "an hour of silence cools it");
        assert_eq!(hot.extra(&hot_one), 0);
        assert_eq!(hot.poll_timeout(&cfg), None, "all forgotten: no more ticks");
    }

    #[test]
    fn requests_counted_elsewhere_arm_a_tick_and_count_there() {
        let cfg = HotConfig { half_life: Duration::from_secs(60), tick: Duration::from_secs(10), ..HotConfig::default() };
        let d = Digest::of(b"counted by its blob");
        let mut hot = Hot::default();
        let start = Instant::ZERO + Duration::from_secs(5);
        hot.arm(start);
        hot.arm(start + Duration::from_secs(3));
        assert_eq!(hot.poll_timeout(&cfg), Some(start + cfg.tick), "the first request of a tick arms it");
        let mut taken = false;
        assert_eq!(
            hot.handle_timeout(start, &cfg, || {
                taken = true;
                Vec::new()
            }),
            vec![]
        );
        assert!(!taken, "counts are taken only when the tick is due");
        let due = start + cfg.tick;
        assert_eq!(hot.handle_timeout(due, &cfg, || vec![(d, 3000)]), vec![(d, 4)], "3000 requests in 10 s earn the most extra replicas");
        assert_eq!(hot.poll_timeout(&cfg), Some(due + cfg.tick), "disarmed; the counter keeps ticking until it cools");
    }
}
