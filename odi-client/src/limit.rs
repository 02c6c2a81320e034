//! A shared bandwidth limit (token bucket) for everything a relay sends and syncs.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Limits the bytes per second that pass through it, across every task that shares it.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// `rate` bytes per second; bursts of up to a tenth of a second (at least 64 KiB) pass at once.
    pub fn new(rate: u64) -> Self {
        let rate = rate.max(1) as f64;
        let burst = (rate / 10.0).max(65_536.0);
        Self { rate, burst, state: Mutex::new((burst, Instant::now())) }
    }

    /// Waits until `n` bytes may pass. Large requests run into debt and wait it off, so the
    /// long-run rate holds without splitting frames.
    pub async fn take(&self, n: usize) {
        let wait = {
            let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = Instant::now();
            let (tokens, last) = *state;
            let tokens = (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.burst) - n as f64;
            *state = (tokens, now);
            if tokens >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-tokens / self.rate) }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn holds_the_rate_over_time() {
        let limiter = RateLimiter::new(1_000_000);
        let start = Instant::now();
        for _ in 0..50 {
            limiter.take(100_000).await;
        }
        // 5 MB at 1 MB/s, less the initial burst: about 4.9 s of (virtual) time.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(4800) && took <= Duration::from_millis(5000), "{took:?}");
    }
}
