//! The placement child: which relays are assigned which artifacts, and the generation that
//! numbers every change relays must learn of. New artifacts are placed at once on the
//! best-ranked relays with room (`place`); a changed relay set is rebalanced as a whole
//! (`Rebalancing`), slice by slice, `rebalance_delay` after the first change.
//!
//! It reads the catalogs and hot children through `&` arguments and changes only itself; the
//! relays it may use arrive as [`Eligible`] values. Every generation bump is queued for the
//! parent (`poll_generation`), which turns it into an `Event::GenerationChanged`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use super::catalogs::{Blob, Catalogs};
use super::hot::Hot;
use super::small_set::SmallSet;
use crate::digest::Digest;
use crate::message::NodeId;
use crate::path::{ArtifactPath, CatalogName};
use crate::time::Instant;

/// A relay placement may assign work to: its id, its share (see `assignment_weight`), the
/// catalogs it carries (empty: all) and its disk budget.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Eligible {
    pub(super) id: NodeId,
    pub(super) weight: f64,
    pub(super) catalogs: Vec<CatalogName>,
    /// Tags it carries (empty: any artifact).
    pub(super) tags: Vec<String>,
    pub(super) budget: u64,
}

/// A relay as ranking sees it: id, weight, catalogs, tags.
type Ranked = (NodeId, f64, Vec<CatalogName>, Vec<String>);

#[derive(Debug)]
pub(super) struct Placement {
    assignment: BTreeMap<NodeId, BTreeSet<Digest>>,
    /// The relay set changed: rebalance everything at `rebalance_at`.
    dirty: bool,
    rebalance_at: Option<Instant>,
    /// Artifacts to place (or place again) without a full rebalance.
    to_place: BTreeSet<Digest>,
    /// Relays eligible at the last rebalance, with their weight and catalogs, and the room
    /// their assignment leaves in their budget.
    eligible: Vec<Ranked>,
    room: BTreeMap<NodeId, u64>,
    /// A rebalance under way, done slice by slice.
    rebalancing: Option<Rebalancing>,
    /// When the rebalance under way paused (its next slice is due then).
    rebalance_paused: Option<Instant>,
    generation: u64,
    bumped: VecDeque<u64>,
}

/// A rebalance under way: the relays it ranks, their room, the assignment being built, and the
/// last artifact done.
#[derive(Debug)]
struct Rebalancing {
    eligible: Vec<Ranked>,
    room: BTreeMap<NodeId, u64>,
    next: BTreeMap<NodeId, BTreeSet<Digest>>,
    after: Option<Digest>,
    /// Published behind the cursor while it ran.
    missed: Vec<Digest>,
}

impl Default for Placement {
    fn default() -> Self {
        Self {
            assignment: BTreeMap::new(),
            dirty: false,
            rebalance_at: None,
            to_place: BTreeSet::new(),
            eligible: Vec::new(),
            room: BTreeMap::new(),
            rebalancing: None,
            rebalance_paused: None,
            generation: 1,
            bumped: VecDeque::new(),
        }
    }
}

impl Placement {
    // ---- mutators ----

    /// The relay set (or a relay's eligibility) changed: a rebalance follows.
    pub(super) fn relays_changed(&mut self) {
        self.dirty = true;
    }

    /// A name now holds `digest`: place it without a full rebalance.
    pub(super) fn named(&mut self, digest: Digest) {
        self.to_place.insert(digest);
        // A rebalance under way has passed this artifact: it must place it when it ends.
        if let Some(work) = &mut self.rebalancing
            && work.after.is_some_and(|after| digest <= after)
        {
            work.missed.push(digest);
        }
    }

    /// `digest` wants another number of replicas: place it again.
    pub(super) fn replace(&mut self, digest: Digest, footprint: u64) {
        self.unplace(&digest, footprint);
        self.to_place.insert(digest);
    }

    /// Gives `digest`'s place back: no relay is assigned it, and their room grows by `footprint`.
    pub(super) fn unplace(&mut self, digest: &Digest, footprint: u64) {
        for (id, set) in &mut self.assignment {
            if set.remove(digest)
                && let Some(room) = self.room.get_mut(id)
            {
                *room += footprint;
            }
        }
        // And from the assignment a rebalance under way is building.
        if let Some(work) = &mut self.rebalancing {
            for (id, set) in &mut work.next {
                if set.remove(digest)
                    && let Some(room) = work.room.get_mut(id)
                {
                    *room += footprint;
                }
            }
        }
    }

    /// A relay is gone for good: its assignment goes, and the rest is rebalanced.
    pub(super) fn forget(&mut self, relay: &NodeId) {
        self.assignment.remove(relay);
        self.room.remove(relay);
        self.dirty = true;
    }

    pub(super) fn bump_generation(&mut self) {
        self.generation += 1;
        self.bumped.push_back(self.generation);
    }

    /// Brings the assignment up to date: new artifacts are placed at once; a changed relay set
    /// is rebalanced `delay` after the first change (coalescing the rest). `eligible` is asked
    /// for the relays only when a rebalance starts.
    pub(super) fn handle_timeout(
        &mut self,
        now: Instant,
        delay: Duration,
        slice: usize,
        catalogs: &Catalogs,
        hot: &Hot,
        eligible: impl FnOnce() -> Vec<Eligible>,
    ) {
        if self.dirty && self.rebalance_at.is_none() {
            self.rebalance_at = Some(now + delay);
        }
        if self.rebalancing.is_some() || self.rebalance_at.is_some_and(|t| t <= now) {
            self.rebalance(slice, catalogs, hot, eligible);
            self.rebalance_paused = self.rebalancing.as_ref().map(|_| now);
            return;
        }
        self.place_pending(catalogs, hot);
    }

    fn place_pending(&mut self, catalogs: &Catalogs, hot: &Hot) {
        if self.to_place.is_empty() {
            return;
        }
        let mut changed = false;
        for digest in std::mem::take(&mut self.to_place) {
            changed |= self.place(&digest, catalogs, hot);
        }
        if changed {
            self.bump_generation();
        }
    }

    /// Places one artifact on the best-ranked eligible relays with room. `true` if it moved.
    fn place(&mut self, digest: &Digest, catalogs: &Catalogs, hot: &Hot) -> bool {
        let Some(blob) = catalogs.blob(digest) else { return false };
        let (size, replicas) = (blob.footprint(), replicas(catalogs, hot, digest, blob));
        let mut ranked = Vec::with_capacity(self.eligible.len());
        rank(&self.eligible, digest, &blob.names, catalogs, &mut ranked);
        let already: usize = self.assignment.values().filter(|s| s.contains(digest)).count();
        if already >= replicas {
            return false;
        }
        let (assignment, room) = (&mut self.assignment, &mut self.room);
        let placed = place_in_order(&mut ranked, replicas - already, |id| {
            let set = assignment.entry(id).or_default();
            match room.get_mut(&id) {
                Some(free) if !set.contains(digest) && *free >= size => {
                    *free -= size;
                    set.insert(*digest);
                    true
                }
                _ => false,
            }
        });
        placed > 0
    }

    /// Recomputes the whole assignment: weighted rendezvous hashing over assignable relays
    /// subscribed to each artifact's catalogs, within each relay's disk budget, `replicas` (plus
    /// hot extras) relays per artifact. O(artifacts × relays), with a partial sort per artifact,
    /// done in slices of about `slice` scores: between slices `poll_timeout` is due at once, so
    /// the driver releases the machine and redirects go on. The current assignment stays in
    /// force until the new one is complete.
    fn rebalance(&mut self, slice: usize, catalogs: &Catalogs, hot: &Hot, eligible: impl FnOnce() -> Vec<Eligible>) {
        let mut work = match self.rebalancing.take() {
            Some(work) => work,
            None => {
                self.dirty = false;
                self.rebalance_at = None;
                let relays = eligible();
                let room = relays.iter().map(|e| (e.id, e.budget)).collect();
                let eligible = relays.into_iter().map(|e| (e.id, e.weight, e.catalogs, e.tags)).collect();
                Rebalancing { eligible, room, next: BTreeMap::new(), after: None, missed: Vec::new() }
            }
        };
        let slice = (slice / work.eligible.len().max(1)).max(1);
        let mut ranked = Vec::with_capacity(work.eligible.len());
        let mut done = 0;
        let mut last = None;
        for (digest, blob) in catalogs.blobs_after(work.after) {
            if done == slice {
                break;
            }
            done += 1;
            last = Some(*digest);
            let size = blob.footprint();
            let replicas = replicas(catalogs, hot, digest, blob);
            rank(&work.eligible, digest, &blob.names, catalogs, &mut ranked);
            let (room, next) = (&mut work.room, &mut work.next);
            place_in_order(&mut ranked, replicas, |id| {
                let free = room.get_mut(&id).expect("every ranked relay has room");
                if *free < size {
                    return false;
                }
                *free -= size;
                next.entry(id).or_default().insert(*digest);
                true
            });
        }
        if done == slice && last.is_some() {
            work.after = last;
            self.rebalancing = Some(work);
            return;
        }
        // Complete. Artifacts expunged or renamed away meanwhile were taken out by `unplace`;
        // those published meanwhile behind the cursor are placed now.
        let Rebalancing { eligible, room, next, missed, .. } = work;
        self.eligible = eligible;
        self.room = room;
        self.to_place = missed.into_iter().collect();
        if next != self.assignment {
            self.assignment = next;
            self.bump_generation();
        }
        let mut changed = false;
        for digest in std::mem::take(&mut self.to_place) {
            changed |= self.place(&digest, catalogs, hot);
        }
        if changed {
            self.bump_generation();
        }
    }

    // ---- output and queries ----

    /// The next generation bump, for the parent to announce.
    #[must_use]
    pub(super) fn poll_generation(&mut self) -> Option<u64> {
        self.bumped.pop_front()
    }

    #[must_use]
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.rebalance_at.into_iter().chain(self.rebalance_paused).min()
    }

    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    pub(super) fn assigned(&self, relay: &NodeId) -> Option<&BTreeSet<Digest>> {
        self.assignment.get(relay)
    }

    /// Which relays the current assignment gives `digest` to.
    pub(super) fn assigned_to(&self, digest: &Digest) -> Vec<NodeId> {
        self.assignment.iter().filter(|(_, set)| set.contains(digest)).map(|(id, _)| *id).collect()
    }

    pub(super) fn is_rebalancing(&self) -> bool {
        self.rebalancing.is_some()
    }

    /// A rebalance is due or under way: any relay's assignment may still change.
    pub(super) fn is_settling(&self) -> bool {
        self.rebalance_at.is_some() || self.rebalancing.is_some()
    }
}

/// How many relays should hold `digest`: what its catalogs ask, plus what its hotness earned.
fn replicas(catalogs: &Catalogs, hot: &Hot, digest: &Digest, blob: &Blob) -> usize {
    (catalogs.replicas(blob) + hot.extra(digest)) as usize
}

/// Scores, into `ranked` (reused, so a rebalance allocates once), every eligible relay that
/// carries one of `names`' catalogs for `digest` and, if it has a tag filter, one of the tags a
/// name of it carries.
fn rank(eligible: &[Ranked], digest: &Digest, names: &SmallSet<(CatalogName, ArtifactPath)>, catalogs: &Catalogs, ranked: &mut Vec<(f64, NodeId)>) {
    ranked.clear();
    ranked.extend(
        eligible
            .iter()
            .filter(|(_, _, cats, _)| cats.is_empty() || names.iter().any(|(c, _)| cats.contains(c)))
            .filter(|(_, _, _, tags)| tags.is_empty() || names.iter().any(|(c, p)| catalogs.carries_tag(c, p, tags)))
            .map(|(id, weight, _, _)| (rendezvous_score(id, digest, *weight), *id)),
    );
}

/// Offers relays to `try_place` best score first until `want` accepted; returns how many did.
/// Only the best `2 × want + 4` are sorted up front (a partial selection, O(relays)); the rest
/// are sorted only if that many relays are full.
fn place_in_order(ranked: &mut [(f64, NodeId)], want: usize, mut try_place: impl FnMut(NodeId) -> bool) -> usize {
    let by_score = |a: &(f64, NodeId), b: &(f64, NodeId)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    let head = (2 * want + 4).min(ranked.len());
    if head == 0 || want == 0 {
        return 0;
    }
    if head < ranked.len() {
        ranked.select_nth_unstable_by(head - 1, by_score);
    }
    ranked[..head].sort_by(by_score);
    let mut placed = 0;
    for (_, id) in &ranked[..head] {
        if placed == want {
            return placed;
        }
        placed += usize::from(try_place(*id));
    }
    if placed < want && head < ranked.len() {
        ranked[head..].sort_by(by_score);
        for (_, id) in &ranked[head..] {
            if placed == want {
                break;
            }
            placed += usize::from(try_place(*id));
        }
    }
    placed
}

/// Weighted rendezvous score: the relays with the highest scores for a digest hold it.
/// `-weight / ln(u)` with `u` uniform in (0, 1) from a hash of both ids gives each relay a share
/// proportional to its weight, and moves only the minimum when relays come and go.
fn rendezvous_score(relay: &NodeId, digest: &Digest, weight: f64) -> f64 {
    let mut x = u64::from_le_bytes(relay.0[..8].try_into().expect("8 bytes")) ^ u64::from_le_bytes(digest.as_bytes()[..8].try_into().expect("8 bytes"));
    x ^= u64::from_le_bytes(digest.as_bytes()[8..16].try_into().expect("8 bytes")).rotate_left(17);
    x ^= u64::from_le_bytes(relay.0[8..16].try_into().expect("8 bytes")).rotate_left(41);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    let u = ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -weight / u.ln()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{LogEntry, LogOp};
    use crate::manifest::ChunkManifest;
    use crate::storage::Record;
    use crate::time::UnixTime;

    const CHUNK: usize = crate::manifest::MIN_CHUNK_SIZE as usize;
    const NOW: Instant = Instant::ZERO;

    /// A catalog of `n` small artifacts with `replicas` replicas each.
    fn catalogs(n: u32, replicas: u32) -> (Catalogs, Vec<Digest>) {
        let mut c = Catalogs::default();
        let name = CatalogName::new("rel").unwrap();
        let Record::Catalog(config) = c.plan_create_catalog(name.clone(), replicas, CHUNK as u64, false, UnixTime(1)).unwrap() else { panic!() };
        assert!(c.apply_catalog(&config));
        let mut digests = Vec::new();
        for i in 0..n {
            let m = ChunkManifest::of(&i.to_le_bytes(), CHUNK as u32).unwrap();
            digests.push(m.digest());
            let path = ArtifactPath::new(&format!("a{i}")).unwrap();
            let Some(Record::Log { entry, .. }) = c
                .plan_publish(&name, super::super::catalogs::Publish { path, manifest: m, media_type: "t".into(), tags: Vec::new() }, &[], UnixTime(1))
                .unwrap()
            else {
                panic!()
            };
            let entry = LogEntry { op: entry.op.clone(), ..entry };
            assert!(matches!(entry.op, LogOp::Put(_)));
            c.apply_log(&name, &entry, 2).unwrap();
        }
        (c, digests)
    }

    fn relay(n: u8, budget: u64) -> Eligible {
        Eligible { id: NodeId([n; 32]), weight: 1.0, catalogs: Vec::new(), tags: Vec::new(), budget }
    }

    fn rebalanced(relays: &[Eligible], catalogs: &Catalogs, slice: usize) -> Placement {
        let mut p = Placement::default();
        p.relays_changed();
        p.handle_timeout(NOW, Duration::ZERO, slice, catalogs, &Hot::default(), || relays.to_vec());
        while p.is_rebalancing() {
            p.handle_timeout(NOW, Duration::ZERO, slice, catalogs, &Hot::default(), || unreachable!("asked once per rebalance"));
        }
        p
    }

    fn holders(p: &Placement, digests: &[Digest]) -> Vec<Vec<NodeId>> {
        digests.iter().map(|d| p.assigned_to(d)).collect()
    }

    #[test]
    fn every_artifact_gets_its_replicas_on_distinct_relays() {
        let (c, digests) = catalogs(50, 2);
        let relays: Vec<Eligible> = (1..=5).map(|n| relay(n, 1 << 30)).collect();
        let p = rebalanced(&relays, &c, usize::MAX);
        for h in holders(&p, &digests) {
            assert_eq!(h.len(), 2, "{h:?}");
        }
        assert!(p.generation() > 1 && p.poll_timeout().is_none());
    }

    #[test]
    fn a_relay_joining_moves_only_what_it_takes() {
        let (c, digests) = catalogs(200, 1);
        let four: Vec<Eligible> = (1..=4).map(|n| relay(n, 1 << 30)).collect();
        let before = holders(&rebalanced(&four, &c, usize::MAX), &digests);
        let mut five = four.clone();
        five.push(relay(5, 1 << 30));
        let after = holders(&rebalanced(&five, &c, usize::MAX), &digests);
        let new = NodeId([5; 32]);
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        let to_new = after.iter().filter(|a| a.contains(&new)).count();
        assert_eq!(moved, to_new, "every artifact that moved went to the new relay");
        assert!((20..=70).contains(&to_new), "about a fifth moved: {to_new}");
    }

    #[test]
    fn sliced_and_whole_rebalances_agree_and_budgets_hold() {
        let (c, digests) = catalogs(60, 2);
        let one_artifact = c.blob(&digests[0]).unwrap().footprint();
        // Relay 1 has room for three artifacts only.
        let relays = vec![relay(1, 3 * one_artifact), relay(2, 1 << 30), relay(3, 1 << 30)];
        let whole = rebalanced(&relays, &c, usize::MAX);
        let sliced = rebalanced(&relays, &c, 7);
        assert_eq!(holders(&whole, &digests), holders(&sliced, &digests));
        assert_eq!(whole.assigned(&NodeId([1; 32])).map_or(0, BTreeSet::len), 3, "full, never over");
    }

    #[test]
    fn new_artifacts_are_placed_at_once_and_unplaced_free_room() {
        let (c, digests) = catalogs(3, 1);
        let mut p = rebalanced(&[relay(1, 1 << 30)], &c, usize::MAX);
        while p.poll_generation().is_some() {}
        let d = digests[1];
        let size = c.blob(&d).unwrap().footprint();
        p.unplace(&d, size);
        assert!(p.assigned_to(&d).is_empty());
        let g = p.generation();
        p.named(d);
        p.handle_timeout(NOW, Duration::from_secs(1), usize::MAX, &c, &Hot::default(), || unreachable!("no rebalance"));
        assert_eq!(p.assigned_to(&d), vec![NodeId([1; 32])]);
        assert_eq!(p.poll_generation(), Some(g + 1));
        p.forget(&NodeId([1; 32]));
        p.handle_timeout(NOW, Duration::from_secs(1), usize::MAX, &c, &Hot::default(), || unreachable!("not due yet"));
        assert_eq!(p.poll_timeout(), Some(NOW + Duration::from_secs(1)), "a relay set change is coalesced");
        assert!(p.is_settling());
    }

    #[test]
    fn a_relay_with_tags_holds_only_artifacts_carrying_one() {
        let (mut c, digests) = catalogs(20, 1);
        let name = CatalogName::new("rel").unwrap();
        let path = ArtifactPath::new("a3").unwrap();
        let gpu = Eligible { tags: vec!["gpu".into()], ..relay(1, 1 << 30) };
        let relays = [gpu.clone(), relay(2, 1 << 30)];
        let p = rebalanced(&relays, &c, 1000);
        assert!(!p.assigned(&relays[1].id).is_none_or(|s| s.is_empty()));
        assert!(p.assigned(&gpu.id).is_none_or(|s| s.is_empty()), "no artifact carries `gpu` yet");
        let Record::Log { entry, .. } = c.plan_tag(&name, &path, vec!["gpu".into()], vec![], UnixTime(2)).unwrap() else { panic!() };
        let changes = c.apply_log(&name, &entry, 3).unwrap();
        assert_eq!(changes, vec![super::super::catalogs::CatalogChange::Retagged(digests[3])]);
        let full = rebalanced(&relays, &c, 1000);
        let on_gpu = full.assigned(&gpu.id).cloned().unwrap_or_default();
        assert!(on_gpu.iter().all(|d| *d == digests[3]), "only the tagged artifact: {on_gpu:?}");
    }
}
