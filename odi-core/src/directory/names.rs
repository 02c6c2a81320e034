//! The names of one catalog: each path's entry, found by hash and listed in path order.
//!
//! A redirect looks its path up among a million or more. In a `BTreeMap` keyed by the path that
//! is some forty string comparisons, each through the key's pointer to a string elsewhere in
//! memory: a cache miss each, most of a decision's time. Here the entries live in a slab, a hash
//! table of slab indexes finds one in a probe or two, and a `BTreeMap` of path to index keeps the
//! order that listings page through. Together they take about what the map of whole entries
//! took: its nodes held each 104-byte entry at B-tree fill, these hold 4 bytes.

use std::collections::BTreeMap;
use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};
use slab::Slab;

use super::catalogs::Entry;
use crate::path::ArtifactPath;

#[derive(Debug, Default)]
pub(super) struct Names {
    slots: Slab<Entry>,
    /// Path order, for listings.
    order: BTreeMap<ArtifactPath, u32>,
    /// Slab indexes by the hash of their path (a random seed per table: paths are chosen by
    /// publishers, and a fixed hash could be made to collide).
    lookup: HashTable<u32>,
    hasher: DefaultHashBuilder,
}

/// Whether slab index `ix` holds `path`.
fn holds<'a>(slots: &'a Slab<Entry>, path: &'a str) -> impl Fn(&u32) -> bool + 'a {
    move |&ix| slots[ix as usize].artifact.path.as_str() == path
}

impl Names {
    fn hash(&self, path: &str) -> u64 {
        self.hasher.hash_one(path)
    }

    fn index(&self, path: &str) -> Option<u32> {
        self.lookup.find(self.hash(path), holds(&self.slots, path)).copied()
    }

    pub(super) fn get(&self, path: &str) -> Option<&Entry> {
        self.index(path).map(|ix| &self.slots[ix as usize])
    }

    /// The entry, to change anything but its path.
    pub(super) fn get_mut(&mut self, path: &str) -> Option<&mut Entry> {
        let ix = self.index(path)?;
        Some(&mut self.slots[ix as usize])
    }

    pub(super) fn len(&self) -> usize {
        self.order.len()
    }

    /// Binds the entry's path to it, and returns the entry it replaces.
    pub(super) fn insert(&mut self, entry: Entry) -> Option<Entry> {
        let path = entry.artifact.path.clone();
        let hash = self.hash(path.as_str());
        if let Some(&ix) = self.lookup.find(hash, holds(&self.slots, path.as_str())) {
            return Some(std::mem::replace(&mut self.slots[ix as usize], entry));
        }
        let ix = u32::try_from(self.slots.insert(entry)).expect("fewer than 2^32 names in a catalog");
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.lookup.insert_unique(hash, ix, |&i| hasher.hash_one(slots[i as usize].artifact.path.as_str()));
        self.order.insert(path, ix);
        None
    }

    pub(super) fn remove(&mut self, path: &str) -> Option<Entry> {
        let found = self.lookup.find_entry(self.hash(path), holds(&self.slots, path)).ok()?;
        let (ix, _) = found.remove();
        let entry = self.slots.remove(ix as usize);
        self.order.remove(&entry.artifact.path);
        Some(entry)
    }

    /// Every entry, in path order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&ArtifactPath, &Entry)> {
        self.order.iter().map(|(p, ix)| (p, &self.slots[*ix as usize]))
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Entry> {
        self.iter().map(|(_, e)| e)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::catalog::Artifact;
    use crate::digest::Digest;
    use crate::manifest::ChunkManifest;
    use crate::path::CatalogName;
    use crate::time::UnixTime;

    fn entry(path: &str, n: u8) -> Entry {
        let digest = Digest::of(&[n]);
        let manifest = Arc::new(ChunkManifest::new(1, 1 << 20, digest, vec![digest]).unwrap());
        let artifact = Artifact {
            catalog: CatalogName::new("c").unwrap(),
            path: ArtifactPath::new(path).unwrap(),
            media_type: Arc::from("application/octet-stream"),
            tags: Vec::new(),
            published_at: UnixTime(0),
            manifest,
        };
        Entry { artifact, generation: u64::from(n), seq: u64::from(n), slot: 0 }
    }

    /// Against a `BTreeMap` of the same entries, through inserts, replacements and removals.
    #[test]
    fn behaves_as_a_map_in_path_order() {
        let mut names = Names::default();
        let mut model: BTreeMap<String, u64> = BTreeMap::new();
        let mut rng = crate::rng::SeededRng::new(crate::rng::Seed(7));
        for step in 0..5000u32 {
            let path = format!("d{}/f{}", rng.below(7), rng.below(60));
            if rng.below(3) == 0 {
                assert_eq!(names.remove(&path).map(|e| e.generation), model.remove(&path), "remove {path} at {step}");
            } else {
                let n = (step % 250) as u8;
                assert_eq!(names.insert(entry(&path, n)).map(|e| e.generation), model.insert(path.clone(), u64::from(n)), "insert {path} at {step}");
            }
            assert_eq!(names.len(), model.len());
        }
        let listed: Vec<(String, u64)> = names.iter().map(|(p, e)| (p.to_string(), e.generation)).collect();
        assert_eq!(listed, model.iter().map(|(p, g)| (p.clone(), *g)).collect::<Vec<_>>(), "path order");
        for (p, g) in &model {
            assert_eq!(names.get(p).map(|e| e.generation), Some(*g));
            assert_eq!(names.get(p).map(|e| e.artifact.path.to_string()), Some(p.clone()));
        }
        assert!(names.get("d9/none").is_none() && names.get_mut("d9/none").is_none());
        assert!(names.slots.vacant_key() <= 7 * 60, "removed slots are used again: {}", names.slots.vacant_key());
    }
}
