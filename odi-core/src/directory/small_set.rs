//! A set kept as a sorted vector: for the directory's per-artifact sets, which hold one to a few
//! elements each (names of a blob, relays holding it). A `BTreeSet` allocates a whole node for
//! one element; a million artifacts make that the bulk of the directory's memory.

#[derive(Clone, Debug, Eq, PartialEq)]
pub(super) struct SmallSet<T>(Vec<T>);

impl<T: Ord> SmallSet<T> {
    pub(super) fn new() -> Self {
        Self(Vec::new())
    }

    pub(super) fn insert(&mut self, value: T) -> bool {
        match self.0.binary_search(&value) {
            Ok(_) => false,
            Err(at) => {
                // Grow by one: these sets stay tiny, and `Vec` would otherwise jump to four slots.
                self.0.reserve_exact(1);
                self.0.insert(at, value);
                true
            }
        }
    }

    pub(super) fn remove(&mut self, value: &T) -> bool {
        match self.0.binary_search(value) {
            Ok(at) => {
                self.0.remove(at);
                true
            }
            Err(_) => false,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }
}

impl<T: Ord> Default for SmallSet<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> IntoIterator for SmallSet<T> {
    type Item = T;
    type IntoIter = std::vec::IntoIter<T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a, T> IntoIterator for &'a SmallSet<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// A sorted set of dense relay indexes, kept inline up to four (an artifact's replicas, most
/// often) and on the heap beyond: 24 bytes for the common case, no allocation.
#[derive(Clone, Debug, Eq, PartialEq)]
pub(super) enum IndexSet {
    Inline { len: u8, ids: [u32; 4] },
    Heap(Box<[u32]>),
}

impl Default for IndexSet {
    fn default() -> Self {
        Self::Inline { len: 0, ids: [0; 4] }
    }
}

impl IndexSet {
    pub(super) fn as_slice(&self) -> &[u32] {
        match self {
            Self::Inline { len, ids } => &ids[..usize::from(*len)],
            Self::Heap(v) => v,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    pub(super) fn contains(&self, id: u32) -> bool {
        self.as_slice().binary_search(&id).is_ok()
    }

    pub(super) fn insert(&mut self, id: u32) -> bool {
        let Err(at) = self.as_slice().binary_search(&id) else { return false };
        match self {
            Self::Inline { len, ids } if usize::from(*len) < ids.len() => {
                ids.copy_within(at..usize::from(*len), at + 1);
                ids[at] = id;
                *len += 1;
            }
            Self::Inline { ids, .. } => {
                let mut v = ids.to_vec();
                v.insert(at, id);
                *self = Self::Heap(v.into_boxed_slice());
            }
            Self::Heap(v) => {
                let mut grown = std::mem::take(v).into_vec();
                grown.insert(at, id);
                *v = grown.into_boxed_slice();
            }
        }
        true
    }

    pub(super) fn remove(&mut self, id: u32) -> bool {
        let Ok(at) = self.as_slice().binary_search(&id) else { return false };
        match self {
            Self::Inline { len, ids } => {
                ids.copy_within(at + 1..usize::from(*len), at);
                *len -= 1;
            }
            Self::Heap(v) => {
                let mut v = std::mem::take(v).into_vec();
                v.remove(at);
                if v.len() > 4 {
                    *self = Self::Heap(v.into_boxed_slice());
                } else {
                    let mut ids = [0; 4];
                    ids[..v.len()].copy_from_slice(&v);
                    *self = Self::Inline { len: v.len() as u8, ids };
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_a_set() {
        let mut s = SmallSet::new();
        assert!(s.insert(3) && s.insert(1) && !s.insert(3));
        assert_eq!(s.iter().copied().collect::<Vec<_>>(), vec![1, 3]);
        assert!(s.iter().any(|v| *v == 1) && !s.iter().any(|v| *v == 2));
        assert!(s.remove(&1) && !s.remove(&1));
        assert!(!s.is_empty());
    }

    #[test]
    fn an_index_set_spills_to_the_heap_and_back() {
        let mut s = IndexSet::default();
        for id in [9, 3, 7, 1, 5, 3] {
            s.insert(id);
        }
        assert_eq!(s.as_slice(), &[1, 3, 5, 7, 9]);
        assert!(matches!(s, IndexSet::Heap(_)) && s.contains(7) && !s.contains(4));
        assert!(s.remove(7) && !s.remove(7));
        assert!(matches!(s, IndexSet::Inline { len: 4, .. }), "{s:?}");
        assert!(s.remove(1) && s.insert(2));
        assert_eq!(s.as_slice(), &[2, 3, 5, 9]);
        assert_eq!(size_of::<IndexSet>(), 24);
    }
}
