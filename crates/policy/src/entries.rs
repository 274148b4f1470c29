//! A compiled list's entries, in chunks shared between copies
//! ([`crate::program::Entries`] is `Chunks<Entry>`).
//!
//! A list compiled from a 50,000-rule policy holds 100,000 entries (a box
//! per rule and family). When a rule changes only its verdict or log flag,
//! the [`crate::ListCache`] patches the earlier list: with the entries in
//! chunks of [`ENTRY_CHUNK`] behind `Arc`s, the patched list copies the
//! chunk pointers and the chunks it changes, not every entry (copying
//! them was a third of computing a host's desired state on such a change).
//! Every chunk but the last holds exactly `ENTRY_CHUNK` entries, so equal
//! sequences have equal chunks and an index finds its chunk by division.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The entries a chunk holds (all chunks but the last).
pub const ENTRY_CHUNK: usize = 1024;

/// Entries in order (see the module docs). Serialised as a plain list.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Chunks<T> {
    chunks: Vec<Arc<Vec<T>>>,
    len: usize,
}

impl<T> Default for Chunks<T> {
    fn default() -> Self {
        Chunks { chunks: Vec::new(), len: 0 }
    }
}

impl<T: Clone> Chunks<T> {
    pub fn from_vec(entries: Vec<T>) -> Self {
        let len = entries.len();
        let mut chunks = Vec::with_capacity(len.div_ceil(ENTRY_CHUNK));
        let mut rest = entries.into_iter();
        loop {
            let chunk: Vec<T> = rest.by_ref().take(ENTRY_CHUNK).collect();
            if chunk.is_empty() {
                break;
            }
            chunks.push(Arc::new(chunk));
        }
        Chunks { chunks, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, k: usize) -> Option<&T> {
        self.chunks.get(k / ENTRY_CHUNK)?.get(k % ENTRY_CHUNK)
    }

    /// Entry `k` to change: its chunk is copied first when another list
    /// shares it.
    pub fn get_mut(&mut self, k: usize) -> Option<&mut T> {
        Arc::make_mut(self.chunks.get_mut(k / ENTRY_CHUNK)?).get_mut(k % ENTRY_CHUNK)
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.chunks.iter().flat_map(|c| c.iter())
    }

    /// The index of the first entry for which `pred` is false, the entries
    /// being those for which it is true and then the others (as
    /// `slice::partition_point`).
    pub fn partition_point(&self, mut pred: impl FnMut(&T) -> bool) -> usize {
        let (mut lo, mut hi) = (0, self.len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.get(mid).is_some_and(&mut pred) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

impl<T: Clone> std::ops::Index<usize> for Chunks<T> {
    type Output = T;
    fn index(&self, k: usize) -> &T {
        self.get(k).unwrap_or_else(|| panic!("entry {k} of {}", self.len))
    }
}

impl<T: Clone> From<Vec<T>> for Chunks<T> {
    fn from(v: Vec<T>) -> Self {
        Chunks::from_vec(v)
    }
}

impl<T: Clone> FromIterator<T> for Chunks<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        Chunks::from_vec(iter.into_iter().collect())
    }
}

impl<T: Clone + Serialize> Serialize for Chunks<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de, T: Clone + Deserialize<'de>> Deserialize<'de> for Chunks<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<T>::deserialize(d).map(Chunks::from_vec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for a list's entry: its rule and its verdict.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    struct E {
        rule: usize,
        pass: bool,
    }

    fn entry(rule: usize) -> E {
        E { rule, pass: false }
    }

    fn rules(e: &Chunks<E>) -> Vec<usize> {
        e.iter().map(|e| e.rule).collect()
    }

    #[test]
    fn chunks_keep_the_order_and_an_index_finds_its_entry() {
        let n = ENTRY_CHUNK * 2 + 5;
        let e: Chunks<E> = (0..n).map(entry).collect();
        assert_eq!(e.len(), n);
        assert_eq!(rules(&e), (0..n).collect::<Vec<_>>());
        assert_eq!(e[ENTRY_CHUNK + 3].rule, ENTRY_CHUNK + 3);
        assert!(e.get(n).is_none());
        assert_eq!(e.partition_point(|x| x.rule < ENTRY_CHUNK + 7), ENTRY_CHUNK + 7);
        assert_eq!(e.partition_point(|_| true), n);
        assert!(Chunks::<E>::default().is_empty());
    }

    #[test]
    fn a_change_copies_only_its_chunk() {
        let e: Chunks<E> = (0..ENTRY_CHUNK * 3).map(entry).collect();
        let mut changed = e.clone();
        changed.get_mut(ENTRY_CHUNK + 1).unwrap().pass = true;
        assert!(Arc::ptr_eq(&e.chunks[0], &changed.chunks[0]));
        assert!(!Arc::ptr_eq(&e.chunks[1], &changed.chunks[1]));
        assert!(!e[ENTRY_CHUNK + 1].pass, "the earlier list is left as it was");
        assert_ne!(e, changed);
        changed.get_mut(ENTRY_CHUNK + 1).unwrap().pass = false;
        assert_eq!(e, changed);
    }

    #[test]
    fn serde_is_a_plain_list() {
        let e: Chunks<E> = (0..ENTRY_CHUNK + 1).map(entry).collect();
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json.as_array().unwrap().len(), ENTRY_CHUNK + 1);
        assert_eq!(serde_json::from_value::<Chunks<E>>(json).unwrap(), e);
    }
}
