//! Redirect choice, pure: from the candidates the relays child lists for an artifact, which one
//! a client is sent to and which are named as alternates. Power of two choices over relays
//! drawn in proportion to their (capped) bandwidth; relays on probation are alternates only.

use crate::message::{NodeId, RelayUrl};
use crate::rng::SharedRng;

/// The redirect weight of a relay no audit has measured yet: 10 MB/s.
const UNMEASURED_BANDWIDTH: u64 = 10_000_000;
/// One audit is one stream from one place; a relay serves many. Its measured rate times this
/// caps its redirect weight.
const MEASURED_HEADROOM: u64 = 4;

/// A relay a client may be sent to, with what the choice weighs.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Candidate {
    pub(super) id: NodeId,
    /// Past its probation (and its copy checked): may be a plain client's `Location`.
    pub(super) proven: bool,
    /// Bandwidth: the chance of being drawn.
    pub(super) weight: u64,
    /// Requests in progress and redirects since the last heartbeat.
    pub(super) load: f64,
    pub(super) draining: bool,
    pub(super) url: RelayUrl,
}

/// The outcome of a choice: the relay a plain client goes to (`None`: the directory serves),
/// and the others, heaviest first.
#[derive(Debug, PartialEq)]
pub(super) struct Choice {
    pub(super) target: Option<(NodeId, RelayUrl)>,
    pub(super) alternates: Vec<RelayUrl>,
}

/// A relay's weight in the redirect choice: the bandwidth it declares, but no more than
/// `MEASURED_HEADROOM` times what its audits measured (a relay not yet measured counts
/// `UNMEASURED_BANDWIDTH`), so declaring 10 GB/s wins no more clients than serving fast does.
pub(super) fn redirect_weight(declared: u64, measured: Option<u64>) -> u64 {
    let cap = measured.map_or(UNMEASURED_BANDWIDTH, |m| m.saturating_mul(MEASURED_HEADROOM));
    declared.min(cap).max(1)
}

/// Draining relays count only while the artifact has too few other holders: with at least
/// `replicas` (capped at the number of candidates) settled ones, they are dropped.
pub(super) fn settle(candidates: &mut Vec<Candidate>, replicas: impl FnOnce() -> usize) {
    let settled = candidates.iter().filter(|c| !c.draining).count();
    if settled > 0 && settled < candidates.len() && settled >= replicas().min(candidates.len()) {
        candidates.retain(|c| !c.draining);
    }
}

/// Power of two choices: two proven candidates drawn in proportion to weight, the one with less
/// load per unit of weight wins. Relays on probation are offered to verifying clients only (as
/// alternates): the `Location` a plain client follows is always a proven relay, or the directory.
pub(super) fn choose(mut candidates: Vec<Candidate>, rng: &SharedRng) -> Choice {
    let proven = candidates.iter().filter(|c| c.proven).count();
    if proven < candidates.len() {
        candidates.sort_by_key(|c| !c.proven);
    }
    let target = if proven == 0 {
        None
    } else {
        let a = weighted_pick(&candidates[..proven], rng);
        let b = weighted_pick(&candidates[..proven], rng);
        let cost = |i: usize| (candidates[i].load + 1.0) / candidates[i].weight as f64;
        let pick = if cost(b) < cost(a) { b } else { a };
        let chosen = candidates.swap_remove(pick);
        Some((chosen.id, chosen.url))
    };
    candidates.sort_by(|a, b| b.weight.cmp(&a.weight).then(a.id.cmp(&b.id)));
    Choice { target, alternates: candidates.into_iter().map(|c| c.url).collect() }
}

fn weighted_pick(candidates: &[Candidate], rng: &SharedRng) -> usize {
    let total = candidates.iter().map(|c| c.weight).fold(0u64, u64::saturating_add).max(1);
    let mut pick = rng.below(total);
    for (i, c) in candidates.iter().enumerate() {
        if pick < c.weight {
            return i;
        }
        pick -= c.weight;
    }
    candidates.len() - 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{Seed, SeededRng};

    fn candidate(n: u8, weight: u64, proven: bool) -> Candidate {
        Candidate { id: NodeId([n; 32]), proven, weight, load: 0.0, draining: false, url: RelayUrl::new(&format!("http://r{n}.example")).unwrap() }
    }

    fn wins(candidates: &[Candidate], rounds: u32) -> Vec<u32> {
        let rng = SeededRng::new(Seed(3)).fork_shared();
        let mut wins = vec![0; candidates.len()];
        for _ in 0..rounds {
            let choice = choose(candidates.to_vec(), &rng);
            let (id, _) = choice.target.expect("a proven candidate");
            wins[candidates.iter().position(|c| c.id == id).unwrap()] += 1;
            assert_eq!(choice.alternates.len(), candidates.len() - 1, "every other candidate is an alternate");
        }
        wins
    }

    #[test]
    fn weight_is_declared_bandwidth_capped_by_what_audits_measured() {
        assert_eq!(redirect_weight(10_000_000_000, None), UNMEASURED_BANDWIDTH, "unmeasured: a modest guess");
        assert_eq!(redirect_weight(10_000_000_000, Some(5_000_000)), 20_000_000, "four times the measured rate");
        assert_eq!(redirect_weight(1_000_000, Some(50_000_000)), 1_000_000, "never more than declared");
        assert_eq!(redirect_weight(0, Some(0)), 1, "never zero");
    }

    #[test]
    fn heavier_relays_win_more_and_load_evens_it_out() {
        let light_heavy = [candidate(1, 1_000_000, true), candidate(2, 9_000_000, true)];
        // Idle, the heavier wins whenever it is drawn at all: the light one only when drawn
        // twice (1 in 100).
        let w = wins(&light_heavy, 2000);
        assert!(w[0] < 60, "{w:?}");
        // Loaded, the light one wins whenever it is drawn at all (19 in 100).
        let mut loaded = light_heavy.clone();
        loaded[1].load = 1000.0;
        let w = wins(&loaded, 2000);
        assert!((300..460).contains(&w[0]), "{w:?}");
    }

    #[test]
    fn relays_on_probation_are_only_alternates() {
        let rng = SeededRng::new(Seed(1)).fork_shared();
        let only_probation = vec![candidate(1, 1_000_000, false), candidate(2, 2_000_000, false)];
        let choice = choose(only_probation, &rng);
        assert_eq!(choice.target, None, "the directory serves plain clients itself");
        assert_eq!(choice.alternates, vec![RelayUrl::new("http://r2.example").unwrap(), RelayUrl::new("http://r1.example").unwrap()], "heaviest first");
        for _ in 0..100 {
            let choice = choose(vec![candidate(1, 1, false), candidate(2, 1_000_000, false), candidate(3, 1, true)], &rng);
            assert_eq!(choice.target.map(|(id, _)| id), Some(NodeId([3; 32])), "however light, the proven one is the target");
        }
    }

    #[test]
    fn draining_relays_count_only_while_too_few_others_hold_it() {
        let mut draining = candidate(3, 1, true);
        draining.draining = true;
        let mut three = vec![candidate(1, 1, true), candidate(2, 1, true), draining.clone()];
        settle(&mut three, || 3);
        assert_eq!(three.len(), 3, "two settled holders are too few for three replicas");
        settle(&mut three, || 2);
        assert_eq!(three.len(), 2, "two settled holders are enough for two");
        let mut alone = vec![draining];
        settle(&mut alone, || unreachable!("no settled holder: nothing to weigh"));
        assert_eq!(alone.len(), 1, "the only holder keeps serving while it drains");
    }
}
