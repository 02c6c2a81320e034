//! Counts failed attempts (wrong tokens) per client address, so that guessing costs time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Addresses tracked at once; past this the entry with the oldest window is forgotten.
const MAX_TRACKED: usize = 65_536;

/// After `limit` failures from one address within `window` of the first, that address is
/// blocked until the window ends. Successes neither count nor reset. IPv6 addresses count per
/// /64, the block a single host usually holds.
#[derive(Debug)]
pub(crate) struct FailureLimiter {
    limit: u32,
    window: Duration,
    counts: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl FailureLimiter {
    pub(crate) fn new(limit: u32, window: Duration) -> Self {
        Self { limit, window, counts: Mutex::new(HashMap::new()) }
    }

    /// How long `ip` must still wait, if it is over the limit.
    pub(crate) fn blocked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let (start, n) = counts.get(&bucket(ip))?;
        let end = *start + self.window;
        (*n >= self.limit && now < end).then(|| end - now)
    }

    pub(crate) fn record(&self, ip: IpAddr, now: Instant) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.len() >= MAX_TRACKED && !counts.contains_key(&bucket(ip)) {
            counts.retain(|_, (start, _)| now < *start + self.window);
            if counts.len() >= MAX_TRACKED {
                #[allow(clippy::disallowed_methods, reason = "any oldest entry will do")]
                let oldest = counts.iter().min_by_key(|(_, (start, _))| *start).map(|(ip, _)| *ip);
                if let Some(oldest) = oldest {
                    counts.remove(&oldest);
                }
            }
        }
        let entry = counts.entry(bucket(ip)).or_insert((now, 0));
        if now >= entry.0 + self.window {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_the_limit_until_the_window_ends() {
        let limiter = FailureLimiter::new(3, Duration::from_secs(60));
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(limiter.blocked(a, t0), None, "failure {i}");
            limiter.record(a, t0);
        }
        assert_eq!(limiter.blocked(a, t0 + Duration::from_secs(10)), Some(Duration::from_secs(50)));
        assert_eq!(limiter.blocked(b, t0), None, "another address is not blocked");
        assert_eq!(limiter.blocked(a, t0 + Duration::from_secs(60)), None, "the window ended");
        limiter.record(a, t0 + Duration::from_secs(61));
        assert_eq!(limiter.blocked(a, t0 + Duration::from_secs(61)), None, "a new window starts at zero");
    }

    #[test]
    fn ipv6_counts_per_64() {
        let limiter = FailureLimiter::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        limiter.record("2001:db8::1".parse().unwrap(), t0);
        limiter.record("2001:db8::2".parse().unwrap(), t0);
        assert!(limiter.blocked("2001:db8::ffff".parse().unwrap(), t0).is_some());
        assert!(limiter.blocked("2001:db8:0:1::1".parse().unwrap(), t0).is_none());
    }
}
