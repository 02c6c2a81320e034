//! The one source of randomness in the core: seeded, so a run is reproducible from its seed.

use std::sync::atomic::{AtomicU64, Ordering};

/// SplitMix64's increment: 2^64 divided by the golden ratio.
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// A seed handed to a machine's constructor by its driver (from the OS) or by a test (fixed).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Seed(pub u64);

/// SplitMix64: tiny, fast, and good enough for load spreading and simulated faults.
/// Not for secrets: keys and nonces come from the OS in the drivers.
#[derive(Clone, Debug)]
pub struct SeededRng {
    state: u64,
}

impl SeededRng {
    /// A generator whose whole stream is fixed by `seed`.
    pub fn new(seed: Seed) -> Self {
        Self { state: seed.0 }
    }

    /// The next 64 uniformly distributed bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`; `n` must be non-zero.
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        // Lemire's multiply-shift; the tiny bias is irrelevant for load spreading.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// True with probability `p` (0.0..=1.0).
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }

    /// An independent child generator, for a sub-component.
    pub fn fork(&mut self) -> Self {
        Self { state: self.next_u64() }
    }

    /// An independent child generator that draws through a shared reference.
    pub fn fork_shared(&mut self) -> SharedRng {
        SharedRng { state: AtomicU64::new(self.next_u64()) }
    }
}

/// SplitMix64 drawn through `&self`, for choices made under a read lock by many threads at once
/// (redirects). SplitMix's state is a counter, so one atomic add per draw keeps every output
/// distinct; a single-threaded run (the simulation) stays reproducible from the seed.
#[derive(Debug)]
pub struct SharedRng {
    state: AtomicU64,
}

impl SharedRng {
    /// The next 64 uniformly distributed bits; safe to call from many threads at once.
    pub fn next_u64(&self) -> u64 {
        let mut z = self.state.fetch_add(GOLDEN_GAMMA, Ordering::Relaxed).wrapping_add(GOLDEN_GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`; `n` must be non-zero.
    pub fn below(&self, n: u64) -> u64 {
        debug_assert!(n > 0);
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_generator_draws_what_the_plain_one_would() {
        let mut plain = SeededRng::new(Seed(7));
        let shared = SeededRng::new(Seed(7)).fork_shared();
        let mut from = SeededRng { state: plain.next_u64() };
        let drawn: Vec<u64> = (0..100).map(|_| shared.next_u64()).collect();
        let expected: Vec<u64> = (0..100).map(|_| from.next_u64()).collect();
        assert_eq!(drawn, expected, "same SplitMix64 stream from the same state");
        assert!((0..1000).all(|_| shared.below(3) < 3));
    }
}
