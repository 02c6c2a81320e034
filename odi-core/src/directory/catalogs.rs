//! The catalogs child: every catalog with its log position, the names in it, the manifests
//! (blobs) those names hold, and the digests barred for good. It validates admin changes
//! (`plan_*`, pure), applies durable `Record::Catalog` and `Record::Log` records, and answers
//! what other children need to know about an artifact as values ([`CatalogChange`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use slab::Slab;

use super::names::Names;
use super::small_set::SmallSet;
use super::{AdminError, CatalogView, LookupError};
use crate::catalog::{Artifact, CatalogConfig, LogEntry, LogOp, MAX_REPLICAS};
use crate::digest::Digest;
use crate::federation::{Change, MAX_ENTRY_TAGS, MAX_TAG_LEN};
use crate::manifest::{ChunkManifest, check_chunk_size};
use crate::path::{ArtifactPath, CatalogName};
use crate::relay::footprint;
use crate::storage::Record;
use crate::time::UnixTime;

#[derive(Debug)]
struct CatalogState {
    config: CatalogConfig,
    seq: u64,
    artifacts: Names,
    /// Expunged paths (410), with the bytes each held when it was expunged.
    expunged: BTreeMap<ArtifactPath, Digest>,
    /// The sum (mod 2^256) of SHA-256(path, digest) over every name: an order-free digest of
    /// the names, kept up to date at each change, that the catalog's signed head carries.
    names_sum: NamesSum,
}

/// A 256-bit sum of one hash per name (four little-endian limbs): adding a name adds its term,
/// removing it subtracts it, so the digest of the state follows the state and not its history.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
struct NamesSum([u64; 4]);

impl NamesSum {
    fn term(path: &ArtifactPath, entry: &Entry) -> [u64; 4] {
        let h = Digest::of(format!("{path}\0{}", entry.artifact.digest().to_hex()).as_bytes());
        let b = h.as_bytes();
        std::array::from_fn(|i| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes")))
    }

    fn add(&mut self, t: [u64; 4]) {
        let mut carry = false;
        for (limb, x) in self.0.iter_mut().zip(t) {
            let (v, c1) = limb.overflowing_add(x);
            let (v, c2) = v.overflowing_add(u64::from(carry));
            *limb = v;
            carry = c1 || c2;
        }
    }

    fn sub(&mut self, t: [u64; 4]) {
        let mut borrow = false;
        for (limb, x) in self.0.iter_mut().zip(t) {
            let (v, b1) = limb.overflowing_sub(x);
            let (v, b2) = v.overflowing_sub(u64::from(borrow));
            *limb = v;
            borrow = b1 || b2;
        }
    }

    fn digest(&self) -> Digest {
        let bytes: Vec<u8> = self.0.iter().flat_map(|l| l.to_le_bytes()).collect();
        Digest::of(&bytes)
    }
}

impl CatalogState {
    fn insert(&mut self, entry: Entry) -> Option<Entry> {
        let path = entry.artifact.path.clone();
        self.names_sum.add(NamesSum::term(&path, &entry));
        let old = self.artifacts.insert(entry);
        if let Some(old) = &old {
            self.names_sum.sub(NamesSum::term(&path, old));
        }
        old
    }

    fn remove(&mut self, path: &ArtifactPath) -> Option<Entry> {
        let old = self.artifacts.remove(path.as_str());
        if let Some(old) = &old {
            self.names_sum.sub(NamesSum::term(path, old));
        }
        old
    }
}

#[derive(Debug)]
pub(super) struct Entry {
    pub(super) artifact: Artifact,
    /// The generation at which this name got this digest; relays must have applied it.
    pub(super) generation: u64,
    /// The catalog's log position when it did: the same in every process of the directory.
    pub(super) seq: u64,
    /// Its blob's slot.
    pub(super) slot: u32,
}

#[derive(Debug)]
pub(super) struct Blob {
    pub(super) manifest: Arc<ChunkManifest>,
    pub(super) names: SmallSet<(CatalogName, ArtifactPath)>,
    /// A dense index while it is known, used again once it is gone: the holders index and the
    /// request counters are arrays over these slots, so a redirect reaches them without a
    /// search by digest. A change that drops or bars a blob carries its slot, so the other
    /// children forget it before the slot is handed out again.
    pub(super) slot: u32,
}

impl Blob {
    /// Room it takes on a relay, counted as the relay counts it: content plus block sums.
    pub(super) fn footprint(&self) -> u64 {
        footprint(self.manifest.total_len())
    }
}

/// What a publish asks for.
pub(super) struct Publish {
    pub(super) path: ArtifactPath,
    pub(super) manifest: ChunkManifest,
    pub(super) media_type: String,
    pub(super) tags: Vec<String>,
}

/// What applying a log entry means for the other children, in the order it happened.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub(super) enum CatalogChange {
    /// A name now holds `digest`: place it (again).
    Named(Digest),
    /// `digest` lost its last name and is gone (it took `footprint` bytes on a relay).
    Dropped { digest: Digest, footprint: u64, slot: u32 },
    /// `digest` is barred for good; every name that held it is expunged (`slot`: the one it had,
    /// if it was known).
    Barred { digest: Digest, footprint: u64, slot: Option<u32> },
    /// A name holding `digest` has other tags: its placement may change.
    Retagged(Digest),
}

#[derive(Debug, Default)]
pub(super) struct Catalogs {
    catalogs: BTreeMap<CatalogName, CatalogState>,
    blobs: BTreeMap<Digest, Blob>,
    /// Barred digests (`ExpungeDigest`): never published, placed or served again.
    barred: BTreeSet<Digest>,
    /// One shared copy of each media type.
    media_types: BTreeSet<Arc<str>>,
    /// One per known blob, at its slot (the slab hands out the slots, and those of blobs that
    /// are gone again): the redirects to it since the hot child last took the counts
    /// (`take_requests`), counted under the machine's read lock, so atomically.
    requests: Slab<AtomicU32>,
}

impl Catalogs {
    // ---- plans (pure) ----

    pub(super) fn plan_create_catalog(&self, name: CatalogName, replicas: u32, chunk_size: u64, mutable: bool, at: UnixTime) -> Result<Record, AdminError> {
        if self.catalogs.contains_key(&name) {
            return Err(AdminError::CatalogExists(name));
        }
        if !(1..=MAX_REPLICAS).contains(&replicas) {
            return Err(AdminError::Replicas(replicas));
        }
        let chunk_size = check_chunk_size(chunk_size).map_err(|e| AdminError::ChunkSize(e.to_string()))?;
        Ok(Record::Catalog(CatalogConfig { name, replicas, chunk_size, created_at: at, mutable, origin: None }))
    }

    pub(super) fn plan_publish(&self, catalog: &CatalogName, publish: Publish, candidates: &[Digest], at: UnixTime) -> Result<Option<Record>, AdminError> {
        let Publish { path, manifest, media_type, tags } = publish;
        let cat = self.catalogs.get(catalog).ok_or_else(|| AdminError::UnknownCatalog(catalog.clone()))?;
        let tags = normal_tags(tags)?;
        if manifest.chunk_size() != cat.config.chunk_size {
            return Err(AdminError::ChunkSizeMismatch { catalog: catalog.clone(), expected: cat.config.chunk_size, got: manifest.chunk_size() });
        }
        if self.barred.contains(&manifest.digest()) {
            return Err(AdminError::ExpungedDigest(manifest.digest()));
        }
        let digest = manifest.digest();
        // A path in conflict (concurrent bindings from linked directories) is resolved by
        // publishing one of its candidates again: a Put that supersedes all of them.
        let resolves = candidates.contains(&digest);
        match cat.artifacts.get(path.as_str()).map(|e| (e.artifact.digest(), &e.artifact.tags)) {
            _ if resolves => {}
            Some((current, current_tags)) if current == digest && (tags.is_empty() || *current_tags == tags) => return Ok(None),
            Some((current, _)) if current == digest => {}
            Some((current, _)) if !cat.config.mutable => return Err(AdminError::Rebind { catalog: catalog.clone(), path, current }),
            _ => {}
        }
        if let Some(previous) = cat.expunged.get(&path).filter(|d| **d != digest && !cat.config.mutable && !resolves) {
            return Err(AdminError::ExpungedPath { catalog: catalog.clone(), path, previous: *previous });
        }
        let artifact = Artifact { catalog: catalog.clone(), path, media_type: media_type.into(), tags, published_at: at, manifest: Arc::new(manifest) };
        Ok(Some(Record::Log { catalog: catalog.clone(), entry: LogEntry { seq: cat.seq + 1, at, op: LogOp::Put(artifact) } }))
    }

    pub(super) fn plan_expunge(&self, catalog: &CatalogName, path: &ArtifactPath, at: UnixTime) -> Result<Record, AdminError> {
        let cat = self.catalogs.get(catalog).ok_or_else(|| AdminError::UnknownCatalog(catalog.clone()))?;
        let entry = cat.artifacts.get(path.as_str()).ok_or_else(|| AdminError::NotFound { catalog: catalog.clone(), path: path.clone() })?;
        let op = LogOp::ExpungePath { path: path.clone(), digest: entry.artifact.digest() };
        Ok(Record::Log { catalog: catalog.clone(), entry: LogEntry { seq: cat.seq + 1, at, op } })
    }

    pub(super) fn plan_tag(
        &self,
        catalog: &CatalogName,
        path: &ArtifactPath,
        add: Vec<String>,
        remove: Vec<String>,
        at: UnixTime,
    ) -> Result<Record, AdminError> {
        let cat = self.catalogs.get(catalog).ok_or_else(|| AdminError::UnknownCatalog(catalog.clone()))?;
        let entry = cat.artifacts.get(path.as_str()).ok_or_else(|| AdminError::NotFound { catalog: catalog.clone(), path: path.clone() })?;
        let (add, remove) = (normal_tags(add)?, normal_tags(remove)?);
        if add.is_empty() && remove.is_empty() {
            return Err(AdminError::NoTagChange);
        }
        let op = LogOp::Tag { path: path.clone(), digest: entry.artifact.digest(), add, remove };
        Ok(Record::Log { catalog: catalog.clone(), entry: LogEntry { seq: cat.seq + 1, at, op } })
    }

    pub(super) fn plan_expunge_digest(&self, digest: Digest, at: UnixTime) -> Result<Vec<Record>, AdminError> {
        if self.barred.contains(&digest) {
            return Ok(Vec::new());
        }
        if self.catalogs.is_empty() {
            return Err(AdminError::NoCatalogs(digest));
        }
        Ok(self
            .catalogs
            .iter()
            .map(|(name, cat)| Record::Log { catalog: name.clone(), entry: LogEntry { seq: cat.seq + 1, at, op: LogOp::ExpungeDigest { digest } } })
            .collect())
    }

    // ---- apply (durable records) ----

    /// Applies a `Record::Catalog`; `false` if the catalog exists already.
    pub(super) fn apply_catalog(&mut self, config: &CatalogConfig) -> bool {
        if self.catalogs.contains_key(&config.name) {
            return false;
        }
        let state = CatalogState { config: config.clone(), seq: 0, artifacts: Names::default(), expunged: BTreeMap::new(), names_sum: NamesSum::default() };
        self.catalogs.insert(config.name.clone(), state);
        true
    }

    /// Applies a `Record::Log` entry; names it binds get `generation`. `None` when it does not
    /// fit (unknown catalog, out of sequence): nothing changed.
    pub(super) fn apply_log(&mut self, catalog: &CatalogName, entry: &LogEntry, generation: u64) -> Option<Vec<CatalogChange>> {
        if self.catalogs.get(catalog).is_none_or(|cat| entry.seq != cat.seq + 1) {
            return None;
        }
        let mut changes = Vec::new();
        let cat = self.catalogs.get_mut(catalog).expect("checked above");
        cat.seq = entry.seq;
        match &entry.op {
            LogOp::Put(artifact) => self.bind(catalog, artifact.clone(), generation, &mut changes),
            LogOp::ExpungePath { path, digest } => {
                let removed = cat.remove(path);
                let tagged = removed.as_ref().is_some_and(|e| !e.artifact.tags.is_empty());
                let held = removed.map_or(*digest, |e| e.artifact.digest());
                cat.expunged.insert(path.clone(), held);
                self.unname(held, catalog, path, tagged, &mut changes);
            }
            LogOp::ExpungeDigest { digest } => self.bar(digest, &mut changes),
            LogOp::Tag { path, digest, add, remove } => {
                if let Some(e) = cat.artifacts.get_mut(path.as_str()).filter(|e| e.artifact.digest() == *digest) {
                    e.artifact.tags = fold_tags(&e.artifact.tags, add, remove);
                    changes.push(CatalogChange::Retagged(*digest));
                }
            }
            LogOp::Expunge { path, digest } => {
                // The meaning such records were written with: the digest is barred.
                cat.expunged.insert(path.clone(), *digest);
                let held = cat.remove(path).map(|e| e.artifact.digest()).filter(|d| d != digest);
                if let Some(held) = held {
                    self.unname(held, catalog, path, false, &mut changes);
                }
                self.bar(digest, &mut changes);
            }
        }
        Some(changes)
    }

    /// Moves `catalog`'s log position to `seq` if it is the next one, without applying the
    /// entry: for a local entry whose change the catalog already holds through its signed
    /// federation entry (written in the same transaction).
    pub(super) fn advance_seq(&mut self, catalog: &CatalogName, seq: u64) -> bool {
        match self.catalogs.get_mut(catalog) {
            Some(cat) if seq == cat.seq + 1 => {
                cat.seq = seq;
                true
            }
            _ => false,
        }
    }

    // ---- federation ----

    /// Applies a federation [`Change`] (idempotent: applying it twice changes nothing the second
    /// time). Unlike a local publish, a federation-caused rebinding of a path in an immutable
    /// catalog is applied: it is how concurrent publishes on linked directories converge.
    /// `published_at` is the winning entry's time; names it binds get `generation`.
    pub(super) fn apply_change(&mut self, change: &Change, published_at: Option<UnixTime>, generation: u64) -> Vec<CatalogChange> {
        let mut changes = Vec::new();
        match change {
            Change::CatalogConfigured(config) => match self.catalogs.get_mut(&config.name) {
                Some(cat) => cat.config = config.clone(),
                None => {
                    self.apply_catalog(config);
                }
            },
            Change::Bound { catalog, path, binding } => {
                let Some(cat) = self.catalogs.get(catalog) else { return changes };
                let digest = binding.digest();
                let tags: Vec<String> = binding.tags.iter().cloned().collect();
                if cat.artifacts.get(path.as_str()).is_some_and(|e| e.artifact.digest() == digest && e.artifact.tags == tags) || self.barred.contains(&digest) {
                    return changes;
                }
                let artifact = Artifact {
                    catalog: catalog.clone(),
                    path: path.clone(),
                    media_type: binding.media_type.as_str().into(),
                    tags,
                    published_at: published_at.unwrap_or(UnixTime(0)),
                    manifest: Arc::new(binding.manifest.clone()),
                };
                self.bind(catalog, artifact, generation, &mut changes);
            }
            Change::TagsChanged { catalog, path, tags } => {
                let tags: Vec<String> = tags.iter().cloned().collect();
                if let Some(e) = self.catalogs.get_mut(catalog).and_then(|c| c.artifacts.get_mut(path.as_str()))
                    && e.artifact.tags != tags
                {
                    e.artifact.tags = tags;
                    changes.push(CatalogChange::Retagged(e.artifact.digest()));
                }
            }
            Change::Unbound { catalog, path } => self.unbind(catalog, path, &mut changes),
            Change::DigestBarred(digest) => self.bar(digest, &mut changes),
        }
        changes
    }

    /// Withdraws `catalog/path` (it answers 410) if it is bound.
    pub(super) fn unbind(&mut self, catalog: &CatalogName, path: &ArtifactPath, changes: &mut Vec<CatalogChange>) {
        let Some(cat) = self.catalogs.get_mut(catalog) else { return };
        let Some(old) = cat.remove(path) else { return };
        cat.expunged.insert(path.clone(), old.artifact.digest());
        self.unname(old.artifact.digest(), catalog, path, !old.artifact.tags.is_empty(), changes);
    }

    /// True when the artifact at `catalog/path` carries one of `tags`.
    pub(super) fn carries_tag(&self, catalog: &CatalogName, path: &ArtifactPath, tags: &[String]) -> bool {
        self.catalogs.get(catalog).and_then(|c| c.artifacts.get(path.as_str())).is_some_and(|e| e.artifact.tags.iter().any(|t| tags.contains(t)))
    }

    /// Every bound name, as `(catalog, path, digest)`.
    pub(super) fn bound(&self) -> Vec<(CatalogName, ArtifactPath, Digest)> {
        self.catalogs.iter().flat_map(|(c, cat)| cat.artifacts.iter().map(move |(p, e)| (c.clone(), p.clone(), e.artifact.digest()))).collect()
    }

    pub(super) fn barred(&self) -> impl Iterator<Item = &Digest> {
        self.barred.iter()
    }

    fn bind(&mut self, catalog: &CatalogName, artifact: Artifact, generation: u64, changes: &mut Vec<CatalogChange>) {
        let digest = artifact.digest();
        let requests = &mut self.requests;
        let blob = self.blobs.entry(digest).or_insert_with(|| {
            let slot = u32::try_from(requests.insert(AtomicU32::new(0))).expect("fewer than 2^32 blobs");
            Blob { manifest: artifact.manifest.clone(), names: SmallSet::new(), slot }
        });
        let slot = blob.slot;
        blob.names.insert((catalog.clone(), artifact.path.clone()));
        let mut artifact = artifact;
        artifact.manifest = blob.manifest.clone();
        artifact.media_type = match self.media_types.get(&artifact.media_type) {
            Some(shared) => shared.clone(),
            None => {
                self.media_types.insert(artifact.media_type.clone());
                artifact.media_type
            }
        };
        let cat = self.catalogs.get_mut(catalog).expect("the caller checked the catalog");
        cat.expunged.remove(&artifact.path);
        let path = artifact.path.clone();
        let tags = artifact.tags.clone();
        let seq = cat.seq;
        let old = cat.insert(Entry { artifact, generation, seq, slot }).map(|e| (e.artifact.digest(), e.artifact.tags));
        match old {
            Some((old, old_tags)) if old != digest => self.unname(old, catalog, &path, !old_tags.is_empty(), changes),
            // The same bytes under other tags: placement must look again.
            Some((_, old_tags)) if old_tags != tags => changes.push(CatalogChange::Retagged(digest)),
            _ => {}
        }
        changes.push(CatalogChange::Named(digest));
    }

    /// Bars `digest`: every name holding it is expunged. Applying it again (its copy in another
    /// catalog's log) changes nothing.
    fn bar(&mut self, digest: &Digest, changes: &mut Vec<CatalogChange>) {
        if !self.barred.insert(*digest) {
            return;
        }
        let footprint = self.blobs.get(digest).map_or(0, Blob::footprint);
        let slot = self.blobs.remove(digest).map(|blob| {
            self.requests.remove(blob.slot as usize);
            for (cat, path) in blob.names {
                if let Some(c) = self.catalogs.get_mut(&cat) {
                    c.remove(&path);
                    c.expunged.insert(path, *digest);
                }
            }
            blob.slot
        });
        changes.push(CatalogChange::Barred { digest: *digest, footprint, slot });
    }

    /// Takes the name `catalog/path` from `digest`; `tagged`: the name carried tags, so the
    /// tags its other names give it may have changed.
    pub(super) fn unname(&mut self, digest: Digest, catalog: &CatalogName, path: &ArtifactPath, tagged: bool, changes: &mut Vec<CatalogChange>) {
        if let Some(blob) = self.blobs.get_mut(&digest) {
            blob.names.remove(&(catalog.clone(), path.clone()));
            if blob.names.is_empty() {
                let (footprint, slot) = (blob.footprint(), blob.slot);
                self.blobs.remove(&digest);
                self.requests.remove(slot as usize);
                changes.push(CatalogChange::Dropped { digest, footprint, slot });
            } else if tagged {
                changes.push(CatalogChange::Retagged(digest));
            }
        }
    }

    // ---- queries ----

    /// `catalog`'s log position.
    pub(super) fn seq(&self, catalog: &CatalogName) -> Option<u64> {
        self.catalogs.get(catalog).map(|c| c.seq)
    }

    /// What `catalog`'s signed head states: its log position and the digest of its names.
    pub(super) fn head_state(&self, catalog: &CatalogName) -> Option<(u64, Digest)> {
        self.catalogs.get(catalog).map(|c| (c.seq, c.names_sum.digest()))
    }

    pub(super) fn names(&self) -> Vec<CatalogName> {
        self.catalogs.keys().cloned().collect()
    }

    pub(super) fn views(&self) -> Vec<CatalogView> {
        self.catalogs
            .values()
            .map(|c| CatalogView {
                name: c.config.name.clone(),
                replicas: c.config.replicas,
                chunk_size: c.config.chunk_size,
                mutable: c.config.mutable,
                seq: c.seq,
                artifacts: c.artifacts.len(),
                bytes: c.artifacts.values().map(|e| e.artifact.size()).sum(),
            })
            .collect()
    }

    pub(super) fn config(&self, name: &CatalogName) -> Option<&CatalogConfig> {
        self.catalogs.get(name).map(|c| &c.config)
    }

    pub(super) fn is_mutable(&self, name: &str) -> bool {
        self.catalogs.get(name).is_some_and(|c| c.config.mutable)
    }

    pub(super) fn artifacts(&self, catalog: &CatalogName) -> Option<impl Iterator<Item = &Artifact>> {
        self.catalogs.get(catalog).map(|c| c.artifacts.values().map(|e| &e.artifact))
    }

    /// The catalog entry at `catalog/path`: one search of each map (redirects go through here).
    pub(super) fn entry(&self, catalog: &str, path: &ArtifactPath) -> Result<&Entry, LookupError> {
        let cat = self.catalogs.get(catalog).ok_or_else(|| LookupError::UnknownCatalog(catalog.to_owned()))?;
        match cat.artifacts.get(path.as_str()) {
            Some(e) => Ok(e),
            None if cat.expunged.contains_key(path) => Err(LookupError::Expunged(format!("{catalog}/{path}"))),
            None => Err(LookupError::NotFound { catalog: catalog.to_owned(), path: path.to_string() }),
        }
    }

    pub(super) fn manifest(&self, digest: &Digest) -> Result<&ChunkManifest, LookupError> {
        self.known_blob(digest).map(|b| &*b.manifest)
    }

    /// The blob `digest`, or why a client asking for it gets none.
    pub(super) fn known_blob(&self, digest: &Digest) -> Result<&Blob, LookupError> {
        if self.barred.contains(digest) {
            return Err(LookupError::Expunged(digest.to_string()));
        }
        self.blobs.get(digest).ok_or(LookupError::UnknownDigest(*digest))
    }

    pub(super) fn blob(&self, digest: &Digest) -> Option<&Blob> {
        self.blobs.get(digest)
    }

    /// Counts one redirect to the blob in `slot`.
    pub(super) fn count_request(&self, slot: u32) {
        if let Some(n) = self.requests.get(slot as usize) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The redirects counted per blob since the last call, in digest order, resetting each
    /// counter as it is read: no list of them is built (at a million blobs it would be tens of
    /// megabytes for one tick).
    pub(super) fn take_requests(&mut self) -> impl Iterator<Item = (Digest, u32)> + '_ {
        let requests = &mut self.requests;
        self.blobs.iter().filter_map(|(d, b)| {
            let n = std::mem::take(requests[b.slot as usize].get_mut());
            (n > 0).then_some((*d, n))
        })
    }

    /// The blobs after `after` (all of them for `None`), in digest order.
    pub(super) fn blobs_after(&self, after: Option<Digest>) -> impl Iterator<Item = (&Digest, &Blob)> {
        let start = match after {
            Some(after) => std::ops::Bound::Excluded(after),
            None => std::ops::Bound::Unbounded,
        };
        self.blobs.range((start, std::ops::Bound::Unbounded))
    }

    pub(super) fn is_barred(&self, digest: &Digest) -> bool {
        self.barred.contains(digest)
    }

    /// Every name (`catalog/path`) that holds `digest` now.
    pub(super) fn names_of(&self, digest: &Digest) -> Vec<String> {
        self.blobs.get(digest).map(|b| b.names.iter().map(|(c, p)| format!("{c}/{p}")).collect()).unwrap_or_default()
    }

    /// The replicas `blob`'s catalogs ask for: the most any of them asks.
    pub(super) fn replicas(&self, blob: &Blob) -> u32 {
        blob.names.iter().filter_map(|(c, _)| self.catalogs.get(c)).map(|c| c.config.replicas).max().unwrap_or(1)
    }

    /// True when `catalog/path` holds `digest`, bound at `generation` or before.
    pub(super) fn binds(&self, catalog: &CatalogName, path: &ArtifactPath, digest: &Digest, generation: u64) -> bool {
        let entry = self.catalogs.get(catalog).and_then(|c| c.artifacts.get(path.as_str()));
        entry.is_some_and(|e| e.artifact.digest() == *digest && e.generation <= generation)
    }
}

/// Tags as stored: sorted, without repeats, each valid.
pub(super) fn normal_tags(tags: Vec<String>) -> Result<Vec<String>, AdminError> {
    if tags.len() > MAX_ENTRY_TAGS {
        return Err(AdminError::Tag { tag: tags[MAX_ENTRY_TAGS].chars().take(80).collect() });
    }
    if let Some(bad) = tags.iter().find(|t| !valid_tag(t)) {
        return Err(AdminError::Tag { tag: bad.chars().take(80).collect() });
    }
    Ok(tags.into_iter().collect::<BTreeSet<_>>().into_iter().collect())
}

/// A tag an admin can type: 1 to `MAX_TAG_LEN` letters, digits, `-`, `_`, `.` or `:`.
pub(super) fn valid_tag(tag: &str) -> bool {
    (1..=MAX_TAG_LEN).contains(&tag.len()) && tag.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// `(tags − remove) ∪ add`, sorted.
fn fold_tags(tags: &[String], add: &[String], remove: &[String]) -> Vec<String> {
    let mut out: BTreeSet<String> = tags.iter().filter(|t| !remove.contains(t)).cloned().collect();
    out.extend(add.iter().cloned());
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: usize = crate::manifest::MIN_CHUNK_SIZE as usize;

    fn name(s: &str) -> CatalogName {
        CatalogName::new(s).unwrap()
    }

    fn path(s: &str) -> ArtifactPath {
        ArtifactPath::new(s).unwrap()
    }

    fn manifest(byte: u8) -> ChunkManifest {
        ChunkManifest::of(&vec![byte; CHUNK + 5], CHUNK as u32).unwrap()
    }

    fn with_catalog(mutable: bool) -> Catalogs {
        let mut c = Catalogs::default();
        let Record::Catalog(config) = c.plan_create_catalog(name("rel"), 2, CHUNK as u64, mutable, UnixTime(1)).unwrap() else { panic!("a catalog") };
        assert!(c.apply_catalog(&config));
        assert!(!c.apply_catalog(&config), "a catalog is created once");
        c
    }

    fn apply(c: &mut Catalogs, record: Record, generation: u64) -> Vec<CatalogChange> {
        let Record::Log { catalog, entry } = record else { panic!("a log record") };
        c.apply_log(&catalog, &entry, generation).expect("in sequence")
    }

    fn publish(c: &mut Catalogs, p: &str, m: ChunkManifest, generation: u64) -> Result<Vec<CatalogChange>, AdminError> {
        match c.plan_publish(
            &name("rel"),
            Publish { path: path(p), manifest: m, media_type: "application/x-test".into(), tags: Vec::new() },
            &[],
            UnixTime(2),
        )? {
            Some(record) => Ok(apply(c, record, generation)),
            None => Ok(Vec::new()),
        }
    }

    #[test]
    fn an_immutable_name_never_changes_and_an_expunged_one_stays_bound() {
        let mut c = with_catalog(false);
        let (a, b) = (manifest(1), manifest(2));
        assert_eq!(publish(&mut c, "x.iso", a.clone(), 5).unwrap(), vec![CatalogChange::Named(a.digest())]);
        assert_eq!(publish(&mut c, "x.iso", a.clone(), 6).unwrap(), vec![], "the same bytes again: idempotent");
        assert!(matches!(publish(&mut c, "x.iso", b.clone(), 6), Err(AdminError::Rebind { current, .. }) if current == a.digest()));
        let record = c.plan_expunge(&name("rel"), &path("x.iso"), UnixTime(3)).unwrap();
        let footprint = footprint(a.total_len());
        assert_eq!(apply(&mut c, record, 6), vec![CatalogChange::Dropped { digest: a.digest(), footprint, slot: 0 }]);
        assert!(matches!(c.entry("rel", &path("x.iso")), Err(LookupError::Expunged(_))));
        assert!(matches!(publish(&mut c, "x.iso", b, 7), Err(AdminError::ExpungedPath { previous, .. }) if previous == a.digest()));
        assert!(publish(&mut c, "x.iso", a.clone(), 7).is_ok(), "the bytes it held may come back");
        assert_eq!(c.blob(&a.digest()).unwrap().slot, 0, "in the slot it left");
    }

    #[test]
    fn a_mutable_name_moves_and_drops_bytes_nothing_else_names() {
        let mut c = with_catalog(true);
        let (a, b) = (manifest(1), manifest(2));
        publish(&mut c, "latest", a.clone(), 2).unwrap();
        publish(&mut c, "pinned", a.clone(), 3).unwrap();
        assert_eq!(publish(&mut c, "latest", b.clone(), 4).unwrap(), vec![CatalogChange::Named(b.digest())], "a still has a name");
        assert_eq!(c.entry("rel", &path("latest")).unwrap().generation, 4);
        assert!(c.binds(&name("rel"), &path("latest"), &b.digest(), 4));
        assert!(!c.binds(&name("rel"), &path("latest"), &b.digest(), 3), "bound after generation 3");
        let changes = publish(&mut c, "pinned", b.clone(), 5).unwrap();
        assert_eq!(
            changes,
            vec![CatalogChange::Dropped { digest: a.digest(), footprint: footprint(a.total_len()), slot: 0 }, CatalogChange::Named(b.digest())]
        );
        assert_eq!(c.entry("rel", &path("pinned")).unwrap().slot, 1, "b took a slot of its own before a left its");
        assert!(matches!(c.manifest(&a.digest()), Err(LookupError::UnknownDigest(_))));
        assert_eq!(c.names_of(&b.digest()), vec!["rel/latest".to_owned(), "rel/pinned".to_owned()]);
    }

    #[test]
    fn a_barred_digest_is_expunged_everywhere_and_refused_for_good() {
        let mut c = with_catalog(true);
        let a = manifest(1);
        publish(&mut c, "one", a.clone(), 2).unwrap();
        publish(&mut c, "two", a.clone(), 3).unwrap();
        let records = c.plan_expunge_digest(a.digest(), UnixTime(4)).unwrap();
        assert_eq!(records.len(), 1, "one entry per catalog");
        let changes = apply(&mut c, records.into_iter().next().unwrap(), 4);
        assert_eq!(changes, vec![CatalogChange::Barred { digest: a.digest(), footprint: footprint(a.total_len()), slot: Some(0) }]);
        assert!(c.is_barred(&a.digest()));
        assert!(matches!(c.manifest(&a.digest()), Err(LookupError::Expunged(_))));
        assert!(matches!(c.entry("rel", &path("two")), Err(LookupError::Expunged(_))));
        assert!(matches!(publish(&mut c, "three", a.clone(), 5), Err(AdminError::ExpungedDigest(d)) if d == a.digest()));
        assert_eq!(c.plan_expunge_digest(a.digest(), UnixTime(5)).unwrap(), vec![], "barred already");
        assert!(matches!(Catalogs::default().plan_expunge_digest(a.digest(), UnixTime(5)), Err(AdminError::NoCatalogs(_))));
    }

    #[test]
    fn log_entries_out_of_sequence_change_nothing() {
        let mut c = with_catalog(false);
        let Some(Record::Log { catalog, mut entry }) = c
            .plan_publish(&name("rel"), Publish { path: path("a"), manifest: manifest(1), media_type: "t".into(), tags: Vec::new() }, &[], UnixTime(1))
            .unwrap()
        else {
            panic!("a log record")
        };
        entry.seq += 1;
        assert_eq!(c.apply_log(&catalog, &entry, 2), None);
        assert_eq!(c.apply_log(&name("other"), &entry, 2), None);
        assert_eq!(c.views()[0].seq, 0);
        assert!(matches!(c.plan_create_catalog(name("rel"), 1, CHUNK as u64, false, UnixTime(1)), Err(AdminError::CatalogExists(_))));
        assert!(matches!(c.plan_create_catalog(name("new"), 0, CHUNK as u64, false, UnixTime(1)), Err(AdminError::Replicas(0))));
        let other = ChunkManifest::of(&[1; 10], 2 * CHUNK as u32).unwrap();
        assert!(matches!(publish(&mut c, "b", other, 2), Err(AdminError::ChunkSizeMismatch { .. })));
    }
}
