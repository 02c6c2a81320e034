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
}
