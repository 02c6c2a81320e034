//! What keeps an anonymous client from exhausting a daemon: connections per client address and
//! in all, the file-descriptor limit, and logs of refusals that cannot flood the disk.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The address a request came from, put in every request's extensions by the accept loop.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct ClientAddr(pub IpAddr);

/// File descriptors kept back from connections, for store files, the database and outgoing
/// requests (self-tests, audits, sync).
const RESERVED_FDS: usize = 256;

/// Raises the soft limit on open files to the hard limit (a daemon with the common 1,024 runs
/// out under load long before memory does) and returns the soft limit in force.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
        limit.rlim_cur
    }
}

/// How many connections the accept loop keeps open at once, per client address and in all.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct ConnLimits {
    pub per_address: usize,
    pub total: usize,
}

impl ConnLimits {
    /// Limits for a process allowed `fds` open files: all but a reserve for connections, and an
    /// eighth of that (at least 64) per client address, so no one address can take them all.
    pub fn for_fd_limit(fds: u64) -> Self {
        let total = usize::try_from(fds).unwrap_or(usize::MAX).saturating_sub(RESERVED_FDS).max(64);
        Self { per_address: (total / 8).clamp(64, 4096), total }
    }
}

/// Counts open connections; a new one past a limit is closed at once (shed), before it costs
/// a task, a buffer or a parse.
#[derive(Debug)]
pub struct ConnTracker {
    limits: ConnLimits,
    open: Mutex<HashMap<IpAddr, usize>>,
    total: AtomicUsize,
    shed: AtomicU64,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct ConnPermit {
    tracker: Arc<ConnTracker>,
    addr: IpAddr,
}

impl ConnTracker {
    pub fn new(limits: ConnLimits) -> Arc<Self> {
        Arc::new(Self { limits, open: Mutex::new(HashMap::new()), total: AtomicUsize::new(0), shed: AtomicU64::new(0) })
    }

    /// Admits a connection from `addr`, or `None` when it must be shed.
    pub fn admit(self: &Arc<Self>, addr: IpAddr) -> Option<ConnPermit> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let here = open.get(&addr).copied().unwrap_or(0);
        if here >= self.limits.per_address || self.total.load(Ordering::Relaxed) >= self.limits.total {
            self.shed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        open.insert(addr, here + 1);
        self.total.fetch_add(1, Ordering::Relaxed);
        Some(ConnPermit { tracker: self.clone(), addr })
    }

    /// Connections shed so far.
    pub fn shed(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }

    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut open = self.tracker.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.addr);
            }
        }
        self.tracker.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Lets at most `per_window` log lines through per window; the first line of the next window
/// says how many were held back. Refusals of anonymous requests are logged through one, so a
/// flood of them costs a few lines a second, not a full disk.
#[derive(Debug)]
pub struct LogLimiter {
    per_window: u32,
    window: Duration,
    state: Mutex<(Instant, u32, u64)>,
}

impl LogLimiter {
    pub fn new(per_window: u32, window: Duration) -> Self {
        Self { per_window, window, state: Mutex::new((Instant::now(), 0, 0)) }
    }

    /// `Some(suppressed)` if this line may be logged (with the count held back before it).
    pub fn allow(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if now.duration_since(s.0) >= self.window {
            *s = (now, 0, s.2);
        }
        if s.1 < self.per_window {
            s.1 += 1;
            Some(std::mem::take(&mut s.2))
        } else {
            s.2 += 1;
            None
        }
    }
}

/// Counts failures (wrong tokens) per client address in a sliding window; an address over the
/// limit is refused without being checked, until its window passes.
#[derive(Debug)]
pub struct FailureLimiter {
    limit: u32,
    window: Duration,
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl FailureLimiter {
    pub fn new(limit: u32, window: Duration) -> Self {
        Self { limit, window, failures: Mutex::new(HashMap::new()) }
    }

    /// `Err(retry_after)` while `addr` is over its limit.
    pub fn check(&self, addr: IpAddr) -> Result<(), Duration> {
        let f = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match f.get(&addr) {
            Some((since, n)) if now.duration_since(*since) < self.window && *n >= self.limit => Err(self.window - now.duration_since(*since)),
            _ => Ok(()),
        }
    }

    pub fn failed(&self, addr: IpAddr) {
        let mut f = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if f.len() > 100_000 {
            let window = self.window;
            f.retain(|_, (since, _)| now.duration_since(*since) < window);
        }
        let entry = f.entry(addr).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_shed_per_address_and_in_all() {
        let t = ConnTracker::new(ConnLimits { per_address: 2, total: 3 });
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        let p1 = t.admit(a).unwrap();
        let _p2 = t.admit(a).unwrap();
        assert!(t.admit(a).is_none(), "a third from the same address");
        let _p3 = t.admit(b).unwrap();
        assert!(t.admit(b).is_none(), "over the total");
        drop(p1);
        assert!(t.admit(b).is_some(), "a freed place is taken");
        assert_eq!(t.shed(), 2);
    }

    #[test]
    fn fd_limits_leave_a_reserve_and_share_per_address() {
        assert_eq!(ConnLimits::for_fd_limit(1024), ConnLimits { per_address: 96, total: 768 });
        assert_eq!(ConnLimits::for_fd_limit(100), ConnLimits { per_address: 64, total: 64 });
        assert!(ConnLimits::for_fd_limit(1 << 20).per_address <= 4096);
    }

    #[test]
    fn logs_are_limited_and_say_what_they_held_back() {
        let l = LogLimiter::new(2, Duration::from_secs(3600));
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), None);
        assert_eq!(l.allow(), None);
        let l2 = LogLimiter { per_window: 2, window: Duration::ZERO, state: Mutex::new((Instant::now(), 2, 5)) };
        assert_eq!(l2.allow(), Some(5), "a new window reports the lines held back");
    }

    #[test]
    fn failures_lock_an_address_out_for_its_window() {
        let f = FailureLimiter::new(3, Duration::from_secs(60));
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..3 {
            assert!(f.check(a).is_ok());
            f.failed(a);
        }
        assert!(f.check(a).is_err());
        assert!(f.check(b).is_ok(), "another address is not affected");
    }
}
