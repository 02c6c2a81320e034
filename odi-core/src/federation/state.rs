//! The effective federated catalog state: a pure function of a set of entries.
//!
//! [`FedState`] maintains it incrementally, one [`FedState::apply`] per entry, and reports what
//! each entry changed as [`Change`] values; [`from_entries`] computes the same [`View`] naively
//! from scratch and is the reference the tests and the simulation compare against. Neither looks
//! at the order entries arrive in:
//! - **Catalog config**: the Catalog entry with the least `(at, origin, seq)` wins; equal configs
//!   are the same config whoever wins.
//! - **Binding** of `(catalog, path)`, only once the catalog exists: the candidates are the Put
//!   entries for it that no known Put supersedes and no expunge covers; the winner is the
//!   greatest by `(generation, digest, origin, seq)`. The other candidates are **conflicts**.
//! - **Expunges**: `ExpungeDigest(d)` covers every Put of `d`, in every catalog, known now or
//!   later; `ExpungePath { path, digest }` covers every Put of `digest` at `path` in its catalog.
//!   Covered is forever: no later entry uncovers anything.
//! - **Tags** of a Put: its own tags, then every Tag entry for its `(catalog, path, digest)` in
//!   `(at, origin, seq)` order, each doing `tags := (tags − remove) ∪ add`.
//!
//! Every rule is a union, a minimum or a maximum over the set, so any order of `apply` ends in
//! the same state.

use std::collections::{BTreeMap, BTreeSet};

use crate::catalog::CatalogConfig;
use crate::digest::Digest;
use crate::manifest::ChunkManifest;
use crate::message::NodeId;
use crate::path::{ArtifactPath, CatalogName};
use crate::time::UnixTime;

use super::entry::{Entry, EntryId, Op, SignedEntry};

/// A path in a catalog.
pub type PathKey = (CatalogName, ArtifactPath);
/// An artifact: a path holding a digest.
type ArtifactKey = (CatalogName, ArtifactPath, Digest);
/// Deterministic order of tag ops and catalog creates.
type OpOrder = (UnixTime, NodeId, u64);
/// A Tag entry's `(add, remove)`.
type TagOp = (Vec<String>, Vec<String>);

/// What a path is bound to.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Binding {
    /// The winning Put entry.
    pub entry: EntryId,
    /// The winning Put's manifest: the bytes the path serves.
    pub manifest: ChunkManifest,
    /// The winning Put's media type.
    pub media_type: String,
    /// The Put's own tags folded with every known Tag entry for its artifact.
    pub tags: BTreeSet<String>,
    /// The winning Put's generation (see `Op::Put`).
    pub generation: u64,
}

impl Binding {
    /// The digest of the bound blob.
    pub fn digest(&self) -> Digest {
        self.manifest.digest()
    }
}

/// The effective state, as values: what two directories compare to know they agree.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct View {
    /// Every created catalog, with its winning config.
    pub catalogs: BTreeMap<CatalogName, CatalogConfig>,
    /// Every bound path, with what it is bound to; an unbound path is absent.
    pub bindings: BTreeMap<PathKey, Binding>,
    /// The losing candidates of every path that has more than one.
    pub conflicts: BTreeMap<PathKey, BTreeSet<EntryId>>,
    /// Every digest an `ExpungeDigest` entry bars.
    pub barred: BTreeSet<Digest>,
}

/// What the Directory must apply to its local catalogs, as a value.
#[derive(Clone, Debug, Eq, PartialEq)]
#[non_exhaustive]
pub enum Change {
    /// The catalog exists with this config (first seen, or a concurrent create with a lesser
    /// `(at, origin, seq)` arrived and now wins).
    CatalogConfigured(CatalogConfig),
    /// The path is now bound to this (it was unbound, or bound to another entry).
    Bound {
        /// The path's catalog.
        catalog: CatalogName,
        /// The path now bound.
        path: ArtifactPath,
        /// What it is bound to now.
        binding: Binding,
    },
    /// The path is still bound to the same entry, with other tags.
    TagsChanged {
        /// The path's catalog.
        catalog: CatalogName,
        /// The bound path.
        path: ArtifactPath,
        /// Its tags now.
        tags: BTreeSet<String>,
    },
    /// The path is no longer bound (its candidates were all expunged or superseded by expunged
    /// ones): it answers 410.
    Unbound {
        /// The path's catalog.
        catalog: CatalogName,
        /// The path no longer bound.
        path: ArtifactPath,
    },
    /// The digest is barred everywhere: delete it, refuse it, never serve it.
    DigestBarred(Digest),
}

#[derive(Clone, Debug)]
struct PutInfo {
    catalog: CatalogName,
    path: ArtifactPath,
    manifest: ChunkManifest,
    media_type: String,
    tags: Vec<String>,
    generation: u64,
}

/// The effective state, maintained incrementally.
#[derive(Clone, Debug, Default)]
pub struct FedState {
    applied: BTreeSet<EntryId>,
    creates: BTreeMap<CatalogName, BTreeMap<OpOrder, CatalogConfig>>,
    puts: BTreeMap<EntryId, PutInfo>,
    puts_at: BTreeMap<PathKey, BTreeSet<EntryId>>,
    puts_of: BTreeMap<Digest, BTreeSet<PathKey>>,
    superseded: BTreeSet<EntryId>,
    path_expunged: BTreeSet<ArtifactKey>,
    tag_ops: BTreeMap<ArtifactKey, BTreeMap<OpOrder, TagOp>>,
    view: View,
}

impl FedState {
    /// The state of no entries: no catalog, no binding.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one entry (already verified by the caller) and returns what it changed. An entry
    /// applied before changes nothing.
    pub fn apply(&mut self, signed: &SignedEntry) -> Vec<Change> {
        self.apply_entry(&signed.entry)
    }

    /// [`FedState::apply`] for an unsigned entry (the reference tests build these).
    pub fn apply_entry(&mut self, entry: &Entry) -> Vec<Change> {
        let id = entry.id();
        if !self.applied.insert(id) {
            return Vec::new();
        }
        let mut changes = Vec::new();
        let mut touched: BTreeSet<PathKey> = BTreeSet::new();
        let catalog = &entry.catalog;
        match &entry.op {
            Op::Catalog(config) => {
                let before = self.view.catalogs.get(catalog).cloned();
                let creates = self.creates.entry(catalog.clone()).or_default();
                creates.insert((entry.at, entry.origin, entry.seq), config.clone());
                let winner = creates.values().next().cloned().expect("just inserted");
                if before.as_ref() != Some(&winner) {
                    self.view.catalogs.insert(catalog.clone(), winner.clone());
                    changes.push(Change::CatalogConfigured(winner));
                }
                if before.is_none() {
                    touched.extend(self.puts_at.keys().filter(|(c, _)| c == catalog).cloned());
                }
            }
            Op::Put { path, manifest, media_type, tags, supersedes, generation } => {
                let key = (catalog.clone(), path.clone());
                self.puts.insert(
                    id,
                    PutInfo {
                        catalog: catalog.clone(),
                        path: path.clone(),
                        manifest: manifest.clone(),
                        media_type: media_type.clone(),
                        tags: tags.clone(),
                        generation: *generation,
                    },
                );
                self.puts_at.entry(key.clone()).or_default().insert(id);
                self.puts_of.entry(manifest.digest()).or_default().insert(key.clone());
                touched.insert(key);
                for old in supersedes {
                    if self.superseded.insert(*old)
                        && let Some(info) = self.puts.get(old)
                    {
                        touched.insert((info.catalog.clone(), info.path.clone()));
                    }
                }
            }
            Op::Tag { path, digest, add, remove } => {
                let ops = self.tag_ops.entry((catalog.clone(), path.clone(), *digest)).or_default();
                ops.insert((entry.at, entry.origin, entry.seq), (add.clone(), remove.clone()));
                touched.insert((catalog.clone(), path.clone()));
            }
            Op::ExpungePath { path, digest } => {
                self.path_expunged.insert((catalog.clone(), path.clone(), *digest));
                touched.insert((catalog.clone(), path.clone()));
            }
            Op::ExpungeDigest { digest } => {
                if self.view.barred.insert(*digest) {
                    changes.push(Change::DigestBarred(*digest));
                }
                touched.extend(self.puts_of.get(digest).into_iter().flatten().cloned());
            }
        }
        for key in touched {
            self.recompute(key, &mut changes);
        }
        changes
    }

    fn recompute(&mut self, key: PathKey, changes: &mut Vec<Change>) {
        let (winner, losers) = self.candidates(&key);
        let (catalog, path) = key.clone();
        match (self.view.bindings.get(&key), winner) {
            (None, None) => {}
            (Some(_), None) => {
                self.view.bindings.remove(&key);
                changes.push(Change::Unbound { catalog, path });
            }
            (old, Some(new)) => {
                match old {
                    Some(old) if old.entry == new.entry && old.tags == new.tags => {}
                    Some(old) if old.entry == new.entry => changes.push(Change::TagsChanged { catalog, path, tags: new.tags.clone() }),
                    _ => changes.push(Change::Bound { catalog, path, binding: new.clone() }),
                }
                self.view.bindings.insert(key.clone(), new);
            }
        }
        if losers.is_empty() {
            self.view.conflicts.remove(&key);
        } else {
            self.view.conflicts.insert(key, losers);
        }
    }

    /// The winner and the losing candidates of a path.
    fn candidates(&self, key: &PathKey) -> (Option<Binding>, BTreeSet<EntryId>) {
        if !self.view.catalogs.contains_key(&key.0) {
            return (None, BTreeSet::new());
        }
        let mut live: Vec<(u64, Digest, NodeId, u64)> = self
            .puts_at
            .get(key)
            .into_iter()
            .flatten()
            .filter(|id| !self.superseded.contains(id))
            .filter_map(|id| {
                let info = &self.puts[id];
                (!self.covers(&info.catalog, &info.path, &info.manifest.digest())).then(|| (info.generation, info.manifest.digest(), id.origin, id.seq))
            })
            .collect();
        live.sort();
        let Some(&(_, _, origin, seq)) = live.last() else { return (None, BTreeSet::new()) };
        let win = EntryId { origin, seq };
        let info = &self.puts[&win];
        let tags = fold_tags(
            &info.tags,
            self.tag_ops.get(&(info.catalog.clone(), info.path.clone(), info.manifest.digest())).into_iter().flat_map(|ops| ops.values()),
        );
        let losers = live[..live.len() - 1].iter().map(|&(_, _, origin, seq)| EntryId { origin, seq }).collect();
        (Some(Binding { entry: win, manifest: info.manifest.clone(), media_type: info.media_type.clone(), tags, generation: info.generation }), losers)
    }

    fn covers(&self, catalog: &CatalogName, path: &ArtifactPath, digest: &Digest) -> bool {
        self.view.barred.contains(digest) || self.path_expunged.contains(&(catalog.clone(), path.clone(), *digest))
    }

    /// Whether an expunge covers a Put of `digest` at `catalog/path` (it would never bind).
    pub fn is_covered(&self, catalog: &CatalogName, path: &ArtifactPath, digest: &Digest) -> bool {
        self.covers(catalog, path, digest)
    }

    /// Whether `entry` is applied.
    pub fn contains(&self, id: &EntryId) -> bool {
        self.applied.contains(id)
    }

    /// Whether a Put, once applied, could bind its path: not superseded by a known Put and not
    /// covered by a known expunge. Only such Puts wait for their blob; the others are applied at
    /// once (they can never become candidates: superseded and covered are forever).
    pub fn needs_blob(&self, entry: &Entry) -> bool {
        match &entry.op {
            Op::Put { path, manifest, .. } => !self.superseded.contains(&entry.id()) && !self.covers(&entry.catalog, path, &manifest.digest()),
            _ => false,
        }
    }

    /// The tags a Put entry (applied or not) would carry now: its own tags folded with the
    /// applied Tag entries for its artifact.
    pub fn tags_for(&self, entry: &Entry) -> BTreeSet<String> {
        match &entry.op {
            Op::Put { path, manifest, tags, .. } => {
                fold_tags(tags, self.tag_ops.get(&(entry.catalog.clone(), path.clone(), manifest.digest())).into_iter().flat_map(|ops| ops.values()))
            }
            _ => BTreeSet::new(),
        }
    }

    /// Whether `digest` is barred.
    pub fn is_barred(&self, digest: &Digest) -> bool {
        self.view.barred.contains(digest)
    }

    /// The tags the Put `id` carries now (its own, folded with the known Tag entries).
    pub fn tags_of(&self, id: &EntryId) -> Option<BTreeSet<String>> {
        let info = self.puts.get(id)?;
        Some(fold_tags(
            &info.tags,
            self.tag_ops.get(&(info.catalog.clone(), info.path.clone(), info.manifest.digest())).into_iter().flat_map(|ops| ops.values()),
        ))
    }

    /// What `catalog/path` is bound to; `None` when it is unbound.
    pub fn binding(&self, catalog: &CatalogName, path: &ArtifactPath) -> Option<&Binding> {
        self.view.bindings.get(&(catalog.clone(), path.clone()))
    }

    /// The winning config of catalog `name`; `None` until a Catalog entry for it is applied.
    pub fn catalog(&self, name: &CatalogName) -> Option<&CatalogConfig> {
        self.view.catalogs.get(name)
    }

    /// The current effective state.
    pub fn view(&self) -> &View {
        &self.view
    }
}

fn fold_tags<'a>(initial: &[String], ops: impl Iterator<Item = &'a TagOp>) -> BTreeSet<String> {
    let mut tags: BTreeSet<String> = initial.iter().cloned().collect();
    for (add, remove) in ops {
        for t in remove {
            tags.remove(t);
        }
        tags.extend(add.iter().cloned());
    }
    tags
}

/// The reference model: the effective state of a set of entries, computed from scratch by the
/// rules in the module docs, with no index and no incremental step. An id seen twice counts once
/// (the first copy).
pub fn from_entries<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> View {
    let mut set: BTreeMap<EntryId, &Entry> = BTreeMap::new();
    for e in entries {
        set.entry(e.id()).or_insert(e);
    }
    let all: Vec<&Entry> = set.into_values().collect();
    let mut view = View::default();
    for e in &all {
        if let Op::Catalog(config) = &e.op {
            let better =
                all.iter().filter(|o| o.catalog == e.catalog && matches!(o.op, Op::Catalog(_))).all(|o| (e.at, e.origin, e.seq) <= (o.at, o.origin, o.seq));
            if better {
                view.catalogs.insert(e.catalog.clone(), config.clone());
            }
        }
        if let Op::ExpungeDigest { digest } = &e.op {
            view.barred.insert(*digest);
        }
    }
    let superseded: BTreeSet<EntryId> =
        all.iter().filter_map(|e| if let Op::Put { supersedes, .. } = &e.op { Some(supersedes.clone()) } else { None }).flatten().collect();
    let mut candidates: BTreeMap<PathKey, Vec<&Entry>> = BTreeMap::new();
    for e in &all {
        let Op::Put { path, manifest, .. } = &e.op else { continue };
        let d = manifest.digest();
        let covered = view.barred.contains(&d)
            || all.iter().any(|o| o.catalog == e.catalog && matches!(&o.op, Op::ExpungePath { path: p, digest } if p == path && *digest == d));
        if !superseded.contains(&e.id()) && !covered && view.catalogs.contains_key(&e.catalog) {
            candidates.entry((e.catalog.clone(), path.clone())).or_default().push(e);
        }
    }
    for (key, mut list) in candidates {
        let rank = |e: &Entry| match &e.op {
            Op::Put { manifest, generation, .. } => (*generation, manifest.digest(), e.origin, e.seq),
            _ => unreachable!("only Puts are candidates"),
        };
        list.sort_by_key(|e| rank(e));
        let win = list.pop().expect("a candidate list is never empty");
        let Op::Put { manifest, media_type, tags, generation, .. } = &win.op else { unreachable!("only Puts are candidates") };
        let mut tag_ops: Vec<&Entry> = all
            .iter()
            .copied()
            .filter(|o| o.catalog == key.0 && matches!(&o.op, Op::Tag { path, digest, .. } if *path == key.1 && *digest == manifest.digest()))
            .collect();
        tag_ops.sort_by_key(|o| (o.at, o.origin, o.seq));
        let mut folded: BTreeSet<String> = tags.iter().cloned().collect();
        for o in tag_ops {
            if let Op::Tag { add, remove, .. } = &o.op {
                folded.retain(|t| !remove.contains(t));
                folded.extend(add.iter().cloned());
            }
        }
        if !list.is_empty() {
            view.conflicts.insert(key.clone(), list.iter().map(|e| e.id()).collect());
        }
        view.bindings
            .insert(key, Binding { entry: win.id(), manifest: manifest.clone(), media_type: media_type.clone(), tags: folded, generation: *generation });
    }
    view
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::manifest::MIN_CHUNK_SIZE;

    fn node(n: u8) -> NodeId {
        NodeId([n; 32])
    }
    fn cat() -> CatalogName {
        CatalogName::new("dist").unwrap()
    }
    fn path(p: &str) -> ArtifactPath {
        ArtifactPath::new(p).unwrap()
    }
    fn manifest(bytes: &[u8]) -> ChunkManifest {
        ChunkManifest::of(bytes, MIN_CHUNK_SIZE).unwrap()
    }
    fn entry(origin: u8, seq: u64, at: u64, op: Op) -> Entry {
        Entry { origin: node(origin), seq, at: UnixTime(at), catalog: cat(), op }
    }
    fn create(origin: u8, seq: u64, at: u64, replicas: u32) -> Entry {
        entry(
            origin,
            seq,
            at,
            Op::Catalog(CatalogConfig { name: cat(), replicas, chunk_size: MIN_CHUNK_SIZE, created_at: UnixTime(at), mutable: false, origin: None }),
        )
    }
    fn put(origin: u8, seq: u64, p: &str, bytes: &[u8], supersedes: Vec<EntryId>, generation: u64) -> Entry {
        entry(
            origin,
            seq,
            10,
            Op::Put { path: path(p), manifest: manifest(bytes), media_type: "text/plain".into(), tags: vec!["beta".into()], supersedes, generation },
        )
    }
    fn id(origin: u8, seq: u64) -> EntryId {
        EntryId { origin: node(origin), seq }
    }
    fn incremental<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> FedState {
        let mut s = FedState::new();
        for e in entries {
            s.apply_entry(e);
        }
        s
    }

    #[test]
    fn concurrent_puts_converge_on_one_winner_and_keep_the_loser_as_a_conflict() {
        let es = [create(1, 1, 5, 2), put(1, 2, "a", b"one", vec![], 1), put(2, 1, "a", b"two", vec![], 1)];
        let view = from_entries(&es);
        let digests = [manifest(b"one").digest(), manifest(b"two").digest()];
        let want = if digests[0] > digests[1] { id(1, 2) } else { id(2, 1) };
        let lose = if want == id(1, 2) { id(2, 1) } else { id(1, 2) };
        assert_eq!(view.bindings[&(cat(), path("a"))].entry, want);
        assert_eq!(view.conflicts[&(cat(), path("a"))], BTreeSet::from([lose]));
        assert_eq!(incremental(es.iter().rev()).view(), &view);
    }

    #[test]
    fn a_publish_that_supersedes_resolves_the_conflict() {
        let mut es = vec![create(1, 1, 5, 2), put(1, 2, "a", b"one", vec![], 1), put(2, 1, "a", b"two", vec![], 1)];
        es.push(put(3, 1, "a", b"three", vec![id(1, 2), id(2, 1)], 2));
        let view = from_entries(&es);
        assert_eq!(view.bindings[&(cat(), path("a"))].entry, id(3, 1));
        assert!(view.conflicts.is_empty());
        // A higher generation wins over a lower one whatever the digests.
        let lone = put(4, 1, "a", b"zzzz", vec![], 1);
        es.push(lone);
        let view = from_entries(&es);
        assert_eq!(view.bindings[&(cat(), path("a"))].entry, id(3, 1));
        assert_eq!(view.conflicts[&(cat(), path("a"))], BTreeSet::from([id(4, 1)]));
        assert_eq!(incremental(&es).view(), &view);
    }

    #[test]
    fn an_expunged_digest_never_comes_back() {
        let d = manifest(b"bad").digest();
        let mut es = vec![create(1, 1, 5, 2), put(1, 2, "a", b"bad", vec![], 1), entry(2, 1, 20, Op::ExpungeDigest { digest: d })];
        let mut s = incremental(&es);
        assert!(s.view().bindings.is_empty());
        assert!(s.view().barred.contains(&d));
        // A stale peer re-sends the old Put, and a new origin publishes the same bytes again.
        let again = put(3, 1, "b", b"bad", vec![], 1);
        assert!(!s.needs_blob(&again));
        assert_eq!(s.apply_entry(&es[1]), vec![]);
        assert_eq!(s.apply_entry(&again), vec![]);
        es.push(again);
        assert!(from_entries(&es).bindings.is_empty());
        assert_eq!(s.view(), &from_entries(&es));
    }

    #[test]
    fn an_expunged_path_unbinds_and_the_next_candidate_takes_over() {
        let es = [create(1, 1, 5, 2), put(1, 2, "a", b"one", vec![], 1), put(2, 1, "a", b"two", vec![], 1)];
        let mut s = incremental(&es);
        let winner = s.view().bindings[&(cat(), path("a"))].clone();
        let changes = s.apply_entry(&entry(3, 1, 30, Op::ExpungePath { path: path("a"), digest: winner.digest() }));
        let now = s.view().bindings[&(cat(), path("a"))].clone();
        assert_ne!(now.entry, winner.entry);
        assert!(matches!(&changes[..], [Change::Bound { binding, .. }] if *binding == now));
        let changes = s.apply_entry(&entry(3, 2, 31, Op::ExpungePath { path: path("a"), digest: now.digest() }));
        assert_eq!(changes, vec![Change::Unbound { catalog: cat(), path: path("a") }]);
    }

    #[test]
    fn tags_fold_in_at_origin_seq_order() {
        let d = manifest(b"one").digest();
        let tag = |origin, seq, at, add: &[&str], remove: &[&str]| {
            entry(
                origin,
                seq,
                at,
                Op::Tag {
                    path: path("a"),
                    digest: d,
                    add: add.iter().map(|s| s.to_string()).collect(),
                    remove: remove.iter().map(|s| s.to_string()).collect(),
                },
            )
        };
        let es = [
            create(1, 1, 5, 2),
            put(1, 2, "a", b"one", vec![], 1),
            tag(2, 1, 40, &["prod"], &["beta"]),
            tag(3, 1, 40, &[], &["prod"]),
            tag(1, 3, 50, &["lts"], &[]),
        ];
        let want: BTreeSet<String> = ["lts".to_string()].into();
        assert_eq!(from_entries(&es).bindings[&(cat(), path("a"))].tags, want);
        assert_eq!(incremental(es.iter().rev()).view().bindings[&(cat(), path("a"))].tags, want);
        let mut s = incremental(&es[..2]);
        assert!(matches!(&s.apply_entry(&es[2])[..], [Change::TagsChanged { .. }]));
    }

    #[test]
    fn the_least_catalog_create_wins_and_bindings_wait_for_the_catalog() {
        let es = [put(1, 2, "a", b"one", vec![], 1), create(2, 1, 9, 3), create(1, 1, 5, 2)];
        let mut s = FedState::new();
        assert_eq!(s.apply_entry(&es[0]), vec![]);
        let changes = s.apply_entry(&es[1]);
        assert!(matches!(&changes[..], [Change::CatalogConfigured(c), Change::Bound { .. }] if c.replicas == 3));
        let changes = s.apply_entry(&es[2]);
        assert!(matches!(&changes[..], [Change::CatalogConfigured(c)] if c.replicas == 2));
        assert_eq!(s.view(), &from_entries(&es));
    }

    fn arb_entries() -> impl Strategy<Value = Vec<Entry>> {
        // Entries over 3 origins, 2 paths, 3 contents; supersedes point at earlier Puts.
        prop::collection::vec((0u8..3, 0u8..7, 0usize..2, 0usize..3, any::<u64>()), 1..24).prop_map(|raw| {
            let mut seqs = [0u64; 3];
            let mut out: Vec<Entry> = Vec::new();
            for (origin, kind, p, content, r) in raw {
                seqs[origin as usize] += 1;
                let seq = seqs[origin as usize];
                let o = origin + 1;
                let p = ["a", "b"][p];
                let bytes = [&b"one"[..], b"two", b"three"][content];
                let d = manifest(bytes).digest();
                let at = 10 + r % 5;
                let e = match kind {
                    0 => create(o, seq, at, 1 + (r % 3) as u32),
                    1 | 2 => put(o, seq, p, bytes, vec![], 1),
                    3 => {
                        let prior: Vec<(EntryId, u64)> = out
                            .iter()
                            .filter_map(|e| match &e.op {
                                Op::Put { path: pp, generation, .. } if pp.as_str() == p && r % 2 == 0 => Some((e.id(), *generation)),
                                _ => None,
                            })
                            .collect();
                        let generation = 1 + prior.iter().map(|(_, g)| *g).max().unwrap_or(0);
                        put(o, seq, p, bytes, prior.into_iter().map(|(id, _)| id).collect(), generation)
                    }
                    4 => entry(
                        o,
                        seq,
                        at,
                        Op::Tag { path: path(p), digest: d, add: vec![["prod", "lts"][(r % 2) as usize].into()], remove: vec!["beta".into()] },
                    ),
                    5 => entry(o, seq, at, Op::ExpungePath { path: path(p), digest: d }),
                    _ if r % 4 == 0 => entry(o, seq, at, Op::ExpungeDigest { digest: d }),
                    _ => entry(o, seq, at, Op::Tag { path: path(p), digest: d, add: vec![], remove: vec!["prod".into()] }),
                };
                out.push(e);
            }
            out
        })
    }

    proptest! {
        #[test]
        fn any_order_of_apply_gives_the_reference_state(entries in arb_entries(), shuffle in any::<u64>()) {
            let reference = from_entries(&entries);
            let forward = incremental(&entries);
            prop_assert_eq!(forward.view(), &reference);
            let mut order = entries.clone();
            let mut rng = crate::rng::SeededRng::new(crate::rng::Seed(shuffle));
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i as u64 + 1) as usize);
            }
            // Duplicates are no-ops.
            let dup = order[0].clone();
            order.push(dup);
            let s = incremental(&order);
            prop_assert_eq!(s.view(), &reference);
            for d in &reference.barred {
                prop_assert!(reference.bindings.values().all(|b| b.digest() != *d));
            }
        }
    }
}
