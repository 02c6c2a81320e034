//! The relay table: each relay's state at a dense index, found by id.
//!
//! The holders index names relays by these indexes (4 bytes, not a 32-byte id), and a redirect
//! reaches each holder's state by one array access instead of a search of a map of 10,000 ids.
//! An index is used again only after the relay it named is removed, and `Relays::forget` takes
//! it out of every holder set first.

use std::collections::BTreeMap;

use slab::Slab;

use super::RelayState;
use crate::directory::small_set::IndexSet;
use crate::message::NodeId;

#[derive(Debug, Default)]
pub(super) struct Table {
    /// States by index.
    pub(super) slots: Slab<RelayState>,
    /// Index by id, in id order: every walk of the table goes in this order.
    pub(super) index: BTreeMap<NodeId, u32>,
}

impl Table {
    pub(super) fn ix(&self, id: &NodeId) -> Option<u32> {
        self.index.get(id).copied()
    }

    pub(super) fn at(&self, ix: u32) -> Option<&RelayState> {
        self.slots.get(ix as usize)
    }

    pub(super) fn at_mut(&mut self, ix: u32) -> Option<&mut RelayState> {
        self.slots.get_mut(ix as usize)
    }

    pub(super) fn get(&self, id: &NodeId) -> Option<&RelayState> {
        self.at(self.ix(id)?)
    }

    pub(super) fn get_mut(&mut self, id: &NodeId) -> Option<&mut RelayState> {
        let ix = self.ix(id)?;
        self.at_mut(ix)
    }

    pub(super) fn contains_key(&self, id: &NodeId) -> bool {
        self.index.contains_key(id)
    }

    /// The state of `id` and its index, made with `new` if there is none.
    pub(super) fn get_or_insert_with(&mut self, id: NodeId, new: impl FnOnce() -> RelayState) -> (u32, &mut RelayState) {
        let slots = &mut self.slots;
        let ix = *self.index.entry(id).or_insert_with(|| u32::try_from(slots.insert(new())).expect("fewer than 2^32 relays"));
        (ix, &mut self.slots[ix as usize])
    }

    /// Removes `id`: its state and the index it had.
    pub(super) fn remove(&mut self, id: &NodeId) -> Option<(u32, RelayState)> {
        let ix = self.index.remove(id)?;
        Some((ix, self.slots.remove(ix as usize)))
    }

    /// Every relay, in id order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&NodeId, &RelayState)> {
        self.index.iter().map(|(id, ix)| (id, &self.slots[*ix as usize]))
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &RelayState> {
        self.iter().map(|(_, r)| r)
    }
}

/// Who may be sent clients for each blob, by the blob's slot (`catalogs::Blob::slot`): the
/// holders' table indexes.
#[derive(Debug, Default)]
pub(super) struct Holders(Vec<IndexSet>);

impl Holders {
    pub(super) fn of(&self, slot: u32) -> &[u32] {
        self.0.get(slot as usize).map_or(&[], IndexSet::as_slice)
    }

    pub(super) fn insert(&mut self, slot: u32, ix: u32) {
        let at = slot as usize;
        if self.0.len() <= at {
            self.0.resize_with(at + 1, IndexSet::default);
        }
        self.0[at].insert(ix);
    }

    pub(super) fn remove(&mut self, slot: u32, ix: u32) {
        if let Some(h) = self.0.get_mut(slot as usize) {
            h.remove(ix);
        }
    }

    /// Empties `slot` (its blob is gone), returning who held it.
    pub(super) fn take(&mut self, slot: u32) -> IndexSet {
        self.0.get_mut(slot as usize).map(std::mem::take).unwrap_or_default()
    }

    /// Takes `ix` out of every set.
    pub(super) fn remove_everywhere(&mut self, ix: u32) {
        for h in &mut self.0 {
            h.remove(ix);
        }
    }
}
