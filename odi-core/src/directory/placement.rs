//! The placement child: which relays are assigned which artifacts, and the generation that
//! numbers every change relays must learn of.
//!
//! **Consistent hashing on a ring of virtual nodes** (Karger et al., "Consistent hashing and
//! random trees", STOC 1997), with the replica rule of Dynamo's preference lists and full relays
//! passed over as bins over capacity are in consistent hashing with bounded loads (Mirrokni,
//! Thorup and Zadimoghaddam, SODA 2018). Every relay puts points on the ring of its *class* (the
//! catalogs and tags it subscribes to), as many as its weight asks (`vnodes`). An artifact's
//! point is its digest's first 8 bytes, so digest order is ring order. It is assigned to the
//! first `replicas` distinct relays met walking clockwise from its point over the rings of the
//! classes that may hold it, skipping relays without room for it.
//!
//! Costs: placing one artifact is a bucket lookup and a short binary search per ring, then about
//! `replicas` steps: O(replicas + log relays). A relay joining takes only artifacts whose point
//! lies within `max_want` distinct relays before one of its points; only those are looked at
//! (`candidates`). A relay leaving gives up exactly what it was assigned. Either way the work is
//! O(moved · log) plus one linear merge of the ring's points. A changed relay set is still
//! coalesced (`rebalance_delay`) and worked through in slices (`rebalance_slice`).
//!
//! It reads the catalogs and hot children through `&` arguments and changes only itself; the
//! relays it may use arrive as [`Eligible`] values. Every generation bump is queued for the
//! parent (`poll_generation`), which turns it into an `Event::GenerationChanged`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use super::catalogs::{Blob, Catalogs};
use super::hot::Hot;
use super::small_set::IndexSet;
use crate::digest::Digest;
use crate::message::NodeId;
use crate::path::CatalogName;
use crate::time::Instant;

/// Ring points of the heaviest relay when the unit of weight is chosen; the others get points in
/// proportion to their weight (at least one). A share's spread is about 1/√points.
const TARGET_VNODES: f64 = 256.0;
/// The unit is chosen again (and every relay's points follow) when the heaviest relay would get
/// more than this many points, or fewer than `TARGET_VNODES / 16`.
const MAX_VNODES: f64 = 4096.0;
/// Placement work counted against `rebalance_slice`, per artifact placed.
pub(super) const PLACE_COST: usize = 64;

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

/// A relay on the rings, by its dense index.
#[derive(Debug)]
struct Slot {
    id: NodeId,
    class: u32,
    vnodes: u32,
    budget: u64,
    used: u64,
    assigned: BTreeSet<Digest>,
}

/// Relays with the same subscriptions share a ring.
#[derive(Debug)]
struct Class {
    /// Sorted; empty: every catalog.
    catalogs: Vec<CatalogName>,
    /// Sorted; empty: any artifact.
    tags: Vec<String>,
    relays: usize,
    ring: Ring,
}

/// Points sorted clockwise, each with its relay; `starts` finds the run of points that share
/// their top `bits` bits at once, so a lookup binary-searches a handful of points.
#[derive(Debug, Default)]
struct Ring {
    points: Vec<u64>,
    owners: Vec<u32>,
    starts: Vec<u32>,
    bits: u32,
}

impl Ring {
    fn len(&self) -> usize {
        self.points.len()
    }

    /// The first point at or clockwise after `pos` (wrapping to the first).
    fn first_at(&self, pos: u64) -> usize {
        let k = (pos >> (64 - self.bits)) as usize;
        let (lo, hi) = (self.starts[k] as usize, self.starts[k + 1] as usize);
        let i = lo + self.points[lo..hi].partition_point(|p| *p < pos);
        if i == self.points.len() { 0 } else { i }
    }

    /// Takes out the points of relays `gone` says, merges `added` in (sorted by point, then
    /// relay id), and rebuilds the lookup table: one linear pass.
    fn update(&mut self, gone: impl Fn(u32) -> bool, added: &[(u64, NodeId, u32)], id_of: impl Fn(u32) -> NodeId) {
        let mut points = Vec::with_capacity(self.points.len() + added.len());
        let mut owners = Vec::with_capacity(points.capacity());
        let mut add = added.iter().peekable();
        for (&p, &o) in self.points.iter().zip(&self.owners) {
            if gone(o) {
                continue;
            }
            // Ids are compared only on a tie of points (one in 2^64).
            while let Some((ap, _, ai)) = add.next_if(|(ap, aid, _)| *ap < p || (*ap == p && *aid < id_of(o))) {
                points.push(*ap);
                owners.push(*ai);
            }
            points.push(p);
            owners.push(o);
        }
        for (ap, _, ai) in add {
            points.push(*ap);
            owners.push(*ai);
        }
        self.points = points;
        self.owners = owners;
        self.bits = (usize::BITS - self.points.len().max(2).leading_zeros()).clamp(1, 20);
        let buckets = 1usize << self.bits;
        self.starts = Vec::with_capacity(buckets + 1);
        let mut i = 0;
        for k in 0..=buckets {
            while i < self.points.len() && ((self.points[i] >> (64 - self.bits)) as usize) < k {
                i += 1;
            }
            self.starts.push(i as u32);
        }
    }
}

/// What a rebalance still has to place: every artifact (many relays changed), or a set.
#[derive(Debug)]
enum Work {
    All { after: Option<Digest>, changed: bool },
    Some { queue: BTreeSet<Digest>, changed: bool },
}

#[derive(Debug)]
pub(super) struct Placement {
    slots: Vec<Option<Slot>>,
    index: BTreeMap<NodeId, u32>,
    free: Vec<u32>,
    classes: Vec<Class>,
    class_of: BTreeMap<(Vec<CatalogName>, Vec<String>), u32>,
    /// Each artifact's relays, by dense index; absent: on none.
    assignment: BTreeMap<Digest, IndexSet>,
    /// Artifacts with fewer relays than they want: tried again whenever relays join.
    short: BTreeSet<Digest>,
    /// The most replicas an artifact asked for: how far back a joining relay's reach goes.
    max_want: usize,
    /// Weight per ring point (0: not chosen yet).
    unit: f64,
    /// The relay set changed: rebalance at `rebalance_at`.
    dirty: bool,
    rebalance_at: Option<Instant>,
    /// Artifacts to place (or place again) without a rebalance.
    to_place: BTreeSet<Digest>,
    /// A rebalance under way, done slice by slice.
    rebalancing: Option<Work>,
    /// When the rebalance under way paused (its next slice is due then).
    rebalance_paused: Option<Instant>,
    generation: u64,
    bumped: VecDeque<u64>,
    /// Artifacts placed (looked at) so far: the work placement did.
    places: u64,
}

impl Default for Placement {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            index: BTreeMap::new(),
            free: Vec::new(),
            classes: Vec::new(),
            class_of: BTreeMap::new(),
            assignment: BTreeMap::new(),
            short: BTreeSet::new(),
            max_want: 1,
            unit: 0.0,
            dirty: false,
            rebalance_at: None,
            to_place: BTreeSet::new(),
            rebalancing: None,
            rebalance_paused: None,
            generation: 1,
            bumped: VecDeque::new(),
            places: 0,
        }
    }
}

impl Placement {
    // ---- mutators ----

    /// The relay set (or a relay's eligibility) changed: a rebalance follows.
    pub(super) fn relays_changed(&mut self) {
        self.dirty = true;
    }

    /// A name now holds `digest`: place it without a rebalance.
    pub(super) fn named(&mut self, digest: Digest) {
        self.to_place.insert(digest);
    }

    /// `digest` wants another number of replicas, or other relays: place it again. Relays that
    /// keep it keep it; only the difference moves.
    pub(super) fn replace(&mut self, digest: Digest, _footprint: u64) {
        self.to_place.insert(digest);
    }

    /// Gives `digest`'s place back: no relay is assigned it, and their room grows by `footprint`.
    pub(super) fn unplace(&mut self, digest: &Digest, footprint: u64) {
        self.short.remove(digest);
        let Some(set) = self.assignment.remove(digest) else { return };
        for &i in set.as_slice() {
            if let Some(slot) = self.slots[i as usize].as_mut() {
                slot.used = slot.used.saturating_sub(footprint);
                slot.assigned.remove(digest);
            }
        }
    }

    /// A relay is gone for good: its assignment goes at once, and what it held is placed again.
    pub(super) fn forget(&mut self, relay: &NodeId) {
        if let Some(i) = self.index.get(relay).copied() {
            let class = self.slots[i as usize].as_ref().map_or(0, |s| s.class);
            self.detach(i);
            self.update_rings(&[i], &mut BTreeMap::from([(class, Vec::new())]));
        }
        self.dirty = true;
    }

    pub(super) fn bump_generation(&mut self) {
        self.generation += 1;
        self.bumped.push_back(self.generation);
    }

    /// Brings the assignment up to date: new artifacts are placed at once; a changed relay set
    /// is rebalanced `delay` after the first change (coalescing the rest), `slice` units of work
    /// per call (`PLACE_COST` an artifact). `eligible` is asked for the relays only when a
    /// rebalance starts.
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
        if self.rebalancing.is_none() && self.rebalance_at.is_some_and(|t| t <= now) {
            self.dirty = false;
            self.rebalance_at = None;
            self.start_rebalance(eligible());
        }
        if self.rebalancing.is_some() {
            self.rebalance(slice, catalogs, hot);
            self.rebalance_paused = self.rebalancing.as_ref().map(|_| now);
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

    /// Takes in the relays eligible now: relays gone or changed give their artifacts back,
    /// joining ones go on their rings, and the artifacts that may move are queued.
    fn start_rebalance(&mut self, relays: Vec<Eligible>) {
        let mut seen = vec![false; self.slots.len()];
        let mut queue = BTreeSet::new();
        let mut added: BTreeMap<u32, Vec<(u64, NodeId, u32)>> = BTreeMap::new();
        let (mut gone, mut joined) = (Vec::new(), Vec::new());
        let mut changed = false;
        let mut grew = false;
        let heaviest = relays.iter().map(|e| e.weight).fold(0.0, f64::max);
        if heaviest > 0.0 && (self.unit <= 0.0 || !(TARGET_VNODES / 16.0..=MAX_VNODES).contains(&(heaviest / self.unit))) {
            self.unit = heaviest / TARGET_VNODES;
        }
        for e in relays {
            let mut catalogs = e.catalogs;
            catalogs.sort();
            catalogs.dedup();
            let mut tags = e.tags;
            tags.sort();
            tags.dedup();
            let class = self.class_for(catalogs, tags);
            let vnodes = vnodes(e.weight, self.unit);
            let i = match self.index.get(&e.id) {
                Some(&i) => {
                    let slot = self.slots[i as usize].as_mut().expect("an indexed slot is live");
                    grew |= e.budget > slot.budget;
                    slot.budget = e.budget;
                    seen[i as usize] = true;
                    if slot.class == class && slot.vnodes == vnodes {
                        continue;
                    }
                    // Another share or other subscriptions: off its ring, back on as it is now.
                    gone.push(i);
                    added.entry(slot.class).or_default();
                    self.classes[slot.class as usize].relays -= 1;
                    queue.extend(slot.assigned.iter().copied());
                    slot.class = class;
                    slot.vnodes = vnodes;
                    i
                }
                None => {
                    let slot = Slot { id: e.id, class, vnodes, budget: e.budget, used: 0, assigned: BTreeSet::new() };
                    let i = match self.free.pop() {
                        Some(i) => {
                            self.slots[i as usize] = Some(slot);
                            i
                        }
                        None => {
                            self.slots.push(Some(slot));
                            self.slots.len() as u32 - 1
                        }
                    };
                    self.index.insert(e.id, i);
                    if let Some(seen) = seen.get_mut(i as usize) {
                        *seen = true;
                    }
                    i
                }
            };
            self.classes[class as usize].relays += 1;
            let points = added.entry(class).or_default();
            points.extend((0..vnodes).map(|v| (vnode_point(&e.id, v), e.id, i)));
            joined.push(i);
            changed = true;
        }
        for (i, seen) in seen.iter().enumerate() {
            if !seen && self.slots[i].is_some() {
                let slot = self.slots[i].as_ref().expect("checked");
                added.entry(slot.class).or_default();
                queue.extend(slot.assigned.iter().copied());
                self.detach(i as u32);
                gone.push(i as u32);
                changed = true;
            }
        }
        for slot in self.slots.iter().flatten() {
            debug_assert!(slot.vnodes > 0);
        }
        let joining: usize = added.values().map(Vec::len).sum();
        let total: usize = self.classes.iter().map(|c| c.ring.len()).sum::<usize>() + joining;
        self.update_rings(&gone, &mut added);
        if joining * 3 > total {
            // A third of the ring is new (a first start): placing everything is cheaper than
            // finding what moves.
            self.rebalancing = Some(Work::All { after: None, changed });
            return;
        }
        for i in joined {
            self.candidates(i, &mut queue);
        }
        if joining > 0 || grew {
            queue.extend(self.short.iter().copied());
        }
        self.rebalancing = Some(Work::Some { queue, changed });
    }

    /// The class ring of relays with these (sorted) subscriptions.
    fn class_for(&mut self, catalogs: Vec<CatalogName>, tags: Vec<String>) -> u32 {
        let key = (catalogs, tags);
        if let Some(&c) = self.class_of.get(&key) {
            return c;
        }
        let c = self.classes.len() as u32;
        self.classes.push(Class { catalogs: key.0.clone(), tags: key.1.clone(), relays: 0, ring: Ring::default() });
        self.class_of.insert(key, c);
        c
    }

    /// Takes relay `i` off every artifact it was assigned and frees its index (its ring points
    /// go in `update_rings`). The artifacts are short of a replica until placed again.
    fn detach(&mut self, i: u32) {
        let Some(slot) = self.slots[i as usize].take() else { return };
        self.classes[slot.class as usize].relays -= 1;
        for d in &slot.assigned {
            if let Some(set) = self.assignment.get_mut(d) {
                set.remove(i);
                if set.is_empty() {
                    self.assignment.remove(d);
                }
            }
            self.short.insert(*d);
        }
        self.index.remove(&slot.id);
        self.free.push(i);
    }

    /// Rebuilds the rings of the classes in `added` (every class a gone relay was on must be
    /// there too): points of `gone` relays out, the added points in.
    fn update_rings(&mut self, gone: &[u32], added: &mut BTreeMap<u32, Vec<(u64, NodeId, u32)>>) {
        let mut out = vec![false; self.slots.len()];
        for &i in gone {
            out[i as usize] = true;
        }
        let slots = &self.slots;
        for (class, points) in added.iter_mut() {
            points.sort_unstable();
            let ring = &mut self.classes[*class as usize].ring;
            let live = |o: u32| slots[o as usize].as_ref().map_or(NodeId([0; 32]), |s| s.id);
            ring.update(|o| out[o as usize] || slots[o as usize].is_none(), points, live);
        }
    }

    /// Adds to `queue` every placed artifact relay `i` may take: those whose point lies after
    /// `max_want` other distinct relays before one of its points, on its ring (the union of rings
    /// an artifact walks has at least those relays before that point too).
    fn candidates(&self, i: u32, queue: &mut BTreeSet<Digest>) {
        let Some(slot) = self.slots[i as usize].as_ref() else { return };
        let ring = &self.classes[slot.class as usize].ring;
        let n = ring.len();
        for v in 0..slot.vnodes {
            let p = vnode_point(&slot.id, v);
            let at = ring.first_at(p);
            let mut others: Vec<u32> = Vec::with_capacity(self.max_want);
            let mut from = None;
            for step in 1..n {
                let k = (at + n - step) % n;
                let o = ring.owners[k];
                if o != i && !others.contains(&o) {
                    others.push(o);
                    if others.len() == self.max_want {
                        from = Some(ring.points[k]);
                        break;
                    }
                }
            }
            let Some(q) = from else {
                // Fewer other relays than an artifact may want: any artifact may take it.
                queue.extend(self.assignment.keys().copied());
                return;
            };
            let lo = q.wrapping_add(1);
            if lo <= p {
                queue.extend(self.assignment.range(bound(lo, 0)..=bound(p, 0xff)).map(|(d, _)| *d));
            } else {
                queue.extend(self.assignment.range(bound(lo, 0)..).map(|(d, _)| *d));
                queue.extend(self.assignment.range(..=bound(p, 0xff)).map(|(d, _)| *d));
            }
        }
    }

    /// Places the next slice of the rebalance under way; at its end, bumps the generation if
    /// anything moved.
    fn rebalance(&mut self, slice: usize, catalogs: &Catalogs, hot: &Hot) {
        let budget = (slice / PLACE_COST).max(1);
        let Some(mut work) = self.rebalancing.take() else { return };
        let done = match &mut work {
            Work::All { after, changed } => {
                let batch: Vec<Digest> = catalogs.blobs_after(*after).take(budget).map(|(d, _)| *d).collect();
                for d in &batch {
                    *changed |= self.place(d, catalogs, hot);
                }
                *after = batch.last().copied().or(*after);
                batch.len() < budget
            }
            Work::Some { queue, changed } => {
                for _ in 0..budget {
                    let Some(d) = queue.pop_first() else { break };
                    *changed |= self.place(&d, catalogs, hot);
                }
                queue.is_empty()
            }
        };
        if !done {
            self.rebalancing = Some(work);
            return;
        }
        if let Work::All { changed: true, .. } | Work::Some { changed: true, .. } = work {
            self.bump_generation();
        }
    }

    /// Places one artifact on the first distinct relays with room clockwise from its point, and
    /// moves it off relays no longer among them. `true` if anything changed.
    fn place(&mut self, digest: &Digest, catalogs: &Catalogs, hot: &Hot) -> bool {
        self.places += 1;
        let Some(blob) = catalogs.blob(digest) else {
            // Gone meanwhile (`unplace` took it out already): nothing to hold.
            self.short.remove(digest);
            return false;
        };
        let (size, want) = (blob.footprint(), replicas(catalogs, hot, digest, blob));
        self.max_want = self.max_want.max(want);
        let current = self.assignment.get(digest);
        let target =
            self.walk(point(digest), want, blob, catalogs, |i, slot| current.is_some_and(|c| c.contains(i)) || slot.used.saturating_add(size) <= slot.budget);
        if target.len() < want {
            self.short.insert(*digest);
        } else {
            self.short.remove(digest);
        }
        let current = current.map(|c| c.as_slice().to_vec()).unwrap_or_default();
        let mut changed = false;
        for &i in current.iter().filter(|i| !target.contains(i)) {
            let slot = self.slots[i as usize].as_mut().expect("an assigned relay is live");
            slot.used = slot.used.saturating_sub(size);
            slot.assigned.remove(digest);
            changed = true;
        }
        for &i in target.iter().filter(|i| !current.contains(i)) {
            let slot = self.slots[i as usize].as_mut().expect("a ring's relay is live");
            slot.used += size;
            slot.assigned.insert(*digest);
            changed = true;
        }
        if changed {
            let mut set = IndexSet::default();
            for &i in &target {
                set.insert(i);
            }
            if set.is_empty() {
                self.assignment.remove(digest);
            } else {
                self.assignment.insert(*digest, set);
            }
        }
        changed
    }

    /// The first `want` distinct relays `accept`ed, walking clockwise from `pos` over the rings
    /// of every class that may hold `blob` at once (nearest point first).
    fn walk(&self, pos: u64, want: usize, blob: &Blob, catalogs: &Catalogs, mut accept: impl FnMut(u32, &Slot) -> bool) -> Vec<u32> {
        let mut cursors: Vec<(&Ring, usize, usize)> = Vec::new();
        let mut relays = 0;
        for class in &self.classes {
            if class.ring.len() > 0 && class.admits(blob, catalogs) {
                cursors.push((&class.ring, class.ring.first_at(pos), 0));
                relays += class.relays;
            }
        }
        let mut chosen = Vec::with_capacity(want);
        let mut tried: Vec<u32> = Vec::with_capacity(want + 2);
        while chosen.len() < want && tried.len() < relays {
            // The cursor whose next point is nearest clockwise.
            let Some(c) =
                (0..cursors.len()).filter(|&c| cursors[c].2 < cursors[c].0.len()).min_by_key(|&c| (cursors[c].0.points[cursors[c].1].wrapping_sub(pos), c))
            else {
                break;
            };
            let (ring, at, steps) = &mut cursors[c];
            let owner = ring.owners[*at];
            *at = (*at + 1) % ring.len();
            *steps += 1;
            if tried.contains(&owner) {
                continue;
            }
            tried.push(owner);
            let slot = self.slots[owner as usize].as_ref().expect("a ring's relay is live");
            if accept(owner, slot) {
                chosen.push(owner);
            }
        }
        chosen
    }

    // ---- output and queries ----

    /// The next generation bump, for the parent to announce.
    #[must_use]
    pub(super) fn poll_generation(&mut self) -> Option<u64> {
        self.bumped.pop_front()
    }

    #[must_use]
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.rebalance_at.into_iter().chain(self.rebalance_paused.filter(|_| self.rebalancing.is_some())).min()
    }

    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    pub(super) fn assigned(&self, relay: &NodeId) -> Option<&BTreeSet<Digest>> {
        let i = self.index.get(relay)?;
        self.slots[*i as usize].as_ref().map(|s| &s.assigned)
    }

    /// Which relays the current assignment gives `digest` to, in id order.
    pub(super) fn assigned_to(&self, digest: &Digest) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> =
            self.assignment.get(digest).into_iter().flat_map(IndexSet::as_slice).filter_map(|i| self.slots[*i as usize].as_ref()).map(|s| s.id).collect();
        ids.sort();
        ids
    }

    pub(super) fn is_rebalancing(&self) -> bool {
        self.rebalancing.is_some()
    }

    /// A rebalance is due or under way: any relay's assignment may still change.
    pub(super) fn is_settling(&self) -> bool {
        self.rebalance_at.is_some() || self.rebalancing.is_some()
    }
}

impl Class {
    /// True when a relay of this class may hold `blob`: it carries one of its names' catalogs
    /// and, if it has a tag filter, one of the tags a name of it carries.
    fn admits(&self, blob: &Blob, catalogs: &Catalogs) -> bool {
        (self.catalogs.is_empty() || blob.names.iter().any(|(c, _)| self.catalogs.binary_search(c).is_ok()))
            && (self.tags.is_empty() || blob.names.iter().any(|(c, p)| catalogs.carries_tag(c, p, &self.tags)))
    }
}

/// How many relays should hold `digest`: what its catalogs ask, plus what its hotness earned.
fn replicas(catalogs: &Catalogs, hot: &Hot, digest: &Digest, blob: &Blob) -> usize {
    (catalogs.replicas(blob) + hot.extra(digest)) as usize
}

/// Ring points for a weight: in proportion, at least one.
fn vnodes(weight: f64, unit: f64) -> u32 {
    let v = (weight / unit).round();
    if v.is_nan() || v < 1.0 { 1 } else { v.min(MAX_VNODES) as u32 }
}

/// An artifact's point on the ring: its digest's first 8 bytes, so digest order is ring order.
fn point(digest: &Digest) -> u64 {
    u64::from_be_bytes(digest.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// The lowest (`fill` 0) or highest (`fill` 0xff) digest at ring point `p`.
fn bound(p: u64, fill: u8) -> Digest {
    let mut bytes = [fill; 32];
    bytes[..8].copy_from_slice(&p.to_be_bytes());
    Digest::from_bytes(bytes)
}

/// Point `v` of relay `relay`: a hash of both (SplitMix64's finalizer over the id's first 16
/// bytes and the index).
fn vnode_point(relay: &NodeId, v: u32) -> u64 {
    let a = u64::from_le_bytes(relay.0[..8].try_into().expect("8 bytes"));
    let b = u64::from_le_bytes(relay.0[8..16].try_into().expect("8 bytes"));
    mix(a ^ mix(b ^ mix(u64::from(v).wrapping_add(0x9e37_79b9_7f4a_7c15))))
}

fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{LogEntry, LogOp};
    use crate::manifest::ChunkManifest;
    use crate::path::ArtifactPath;
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
        rebalance_to(&mut p, relays, catalogs, slice);
        p
    }

    /// Runs one whole rebalance of `p` onto `relays`; returns how many artifacts it placed.
    fn rebalance_to(p: &mut Placement, relays: &[Eligible], catalogs: &Catalogs, slice: usize) -> u64 {
        let before = p.places;
        p.relays_changed();
        p.handle_timeout(NOW, Duration::ZERO, slice, catalogs, &Hot::default(), || relays.to_vec());
        while p.is_rebalancing() {
            p.handle_timeout(NOW, Duration::ZERO, slice, catalogs, &Hot::default(), || unreachable!("asked once per rebalance"));
        }
        p.places - before
    }

    fn moved(before: &[Vec<NodeId>], after: &[Vec<NodeId>]) -> usize {
        before.iter().zip(after).map(|(b, a)| a.iter().filter(|id| !b.contains(id)).count()).sum()
    }

    #[test]
    fn a_join_looks_only_at_what_may_move_and_moves_about_its_share() {
        let (c, digests) = catalogs(4000, 2);
        let mut relays: Vec<Eligible> = (1..=20).map(|n| relay(n, 1 << 40)).collect();
        let mut p = rebalanced(&relays, &c, usize::MAX);
        let before = holders(&p, &digests);
        relays.push(relay(21, 1 << 40));
        let looked = rebalance_to(&mut p, &relays, &c, usize::MAX);
        let after = holders(&p, &digests);
        assert_eq!(after, holders(&rebalanced(&relays, &c, usize::MAX), &digests), "the same as placing from scratch");
        let new = NodeId([21; 32]);
        let taken = after.iter().filter(|a| a.contains(&new)).count();
        assert_eq!(moved(&before, &after), taken, "only what the newcomer takes moves");
        let ideal = 2.0 * 4000.0 / 21.0;
        assert!((0.75..1.25).contains(&(taken as f64 / ideal)), "{taken} against an ideal of {ideal:.0}");
        assert!(looked as usize <= 2 * taken + 20, "looked at {looked} artifacts to move {taken}");
        assert!(after.iter().all(|a| a.len() == 2));
    }

    #[test]
    fn a_leave_moves_only_what_the_leaver_held() {
        let (c, digests) = catalogs(2000, 2);
        let relays: Vec<Eligible> = (1..=10).map(|n| relay(n, 1 << 40)).collect();
        let mut p = rebalanced(&relays, &c, usize::MAX);
        let before = holders(&p, &digests);
        let gone = NodeId([4; 32]);
        let held = before.iter().filter(|b| b.contains(&gone)).count();
        let rest: Vec<Eligible> = relays.iter().filter(|r| r.id != gone).cloned().collect();
        let looked = rebalance_to(&mut p, &rest, &c, usize::MAX);
        let after = holders(&p, &digests);
        assert_eq!(moved(&before, &after), held, "each artifact the leaver held gets one new relay, no other moves");
        assert_eq!(looked as usize, held);
        assert!(after.iter().all(|a| a.len() == 2 && !a.contains(&gone)));
        assert_eq!(after, holders(&rebalanced(&rest, &c, usize::MAX), &digests));
    }

    #[test]
    fn shares_follow_weights() {
        let (c, digests) = catalogs(3000, 1);
        let heavy = Eligible { weight: 3.0, ..relay(1, 1 << 40) };
        let relays = vec![heavy, relay(2, 1 << 40), relay(3, 1 << 40), relay(4, 1 << 40)];
        let p = rebalanced(&relays, &c, usize::MAX);
        let on = |n: u8| holders(&p, &digests).iter().filter(|h| h.contains(&NodeId([n; 32]))).count() as f64;
        let ratio = on(1) / ((on(2) + on(3) + on(4)) / 3.0);
        assert!((2.4..3.6).contains(&ratio), "three times the weight, {ratio:.2} times the share");
    }

    #[test]
    fn a_relay_subscribed_to_another_catalog_gets_none_of_this_one() {
        let (c, digests) = catalogs(100, 1);
        let other = Eligible { catalogs: vec![CatalogName::new("other").unwrap()], ..relay(1, 1 << 40) };
        let p = rebalanced(&[other, relay(2, 1 << 40)], &c, usize::MAX);
        assert!(holders(&p, &digests).iter().all(|h| *h == vec![NodeId([2; 32])]));
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
    fn hot_extras_add_replicas_without_moving_the_first() {
        let (c, digests) = catalogs(50, 1);
        let relays: Vec<Eligible> = (1..=6).map(|n| relay(n, 1 << 40)).collect();
        let mut p = rebalanced(&relays, &c, usize::MAX);
        let d = digests[7];
        let first = p.assigned_to(&d);
        let mut hot = Hot::default();
        hot.set_extra(d, 2);
        p.replace(d, 0);
        p.handle_timeout(NOW, Duration::ZERO, usize::MAX, &c, &hot, || unreachable!("no rebalance"));
        let three = p.assigned_to(&d);
        assert_eq!(three.len(), 3);
        assert!(three.contains(&first[0]), "the first replica stays");
        p.replace(d, 0);
        p.handle_timeout(NOW, Duration::ZERO, usize::MAX, &c, &Hot::default(), || unreachable!("no rebalance"));
        assert_eq!(p.assigned_to(&d), first, "cooled down: back to the one it had");
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
