//! Crash points for testing recovery: with `ODI_CRASH_POINT=name:n` in the environment, the
//! process aborts (no destructors, no flushing: as `kill -9`) the `n`th time it reaches the
//! point `name`. Unset, each point is one relaxed atomic load.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

static CONFIG: OnceLock<Option<(String, u64)>> = OnceLock::new();
static HITS: AtomicU64 = AtomicU64::new(0);

/// Reaches the crash point `name`.
pub fn point(name: &str) {
    let config = CONFIG.get_or_init(|| {
        let value = std::env::var("ODI_CRASH_POINT").ok()?;
        let (point, n) = value.split_once(':')?;
        Some((point.to_owned(), n.parse().ok()?))
    });
    if let Some((point, n)) = config
        && point == name
        && HITS.fetch_add(1, Ordering::Relaxed) + 1 == *n
    {
        eprintln!("crash point {name}:{n} reached; aborting");
        std::process::abort();
    }
}
