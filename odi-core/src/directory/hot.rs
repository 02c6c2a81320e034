//! Request statistics: exponentially decayed counters, and the extra replicas they earn.

use std::time::Duration;

use crate::time::Instant;

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
}
