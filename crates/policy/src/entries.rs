//! A compiled list's entries, in chunks shared between copies.
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

use crate::program::Entry;

/// The entries a chunk holds (all chunks but the last).
pub const ENTRY_CHUNK: usize = 1024;

/// A list's entries, in order (see the module docs). Serialised as a plain
/// list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Entries {
    chunks: Vec<Arc<Vec<Entry>>>,
    len: usize,
}

impl Entries {
    pub fn from_vec(entries: Vec<Entry>) -> Self {
        let len = entries.len();
        let mut chunks = Vec::with_capacity(len.div_ceil(ENTRY_CHUNK));
        let mut rest = entries.into_iter();
        loop {
            let chunk: Vec<Entry> = rest.by_ref().take(ENTRY_CHUNK).collect();
            if chunk.is_empty() {
                break;
            }
            chunks.push(Arc::new(chunk));
        }
        Entries { chunks, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, k: usize) -> Option<&Entry> {
        self.chunks.get(k / ENTRY_CHUNK)?.get(k % ENTRY_CHUNK)
    }

    /// Entry `k` to change: its chunk is copied first when another list
    /// shares it.
    pub fn get_mut(&mut self, k: usize) -> Option<&mut Entry> {
        Arc::make_mut(self.chunks.get_mut(k / ENTRY_CHUNK)?).get_mut(k % ENTRY_CHUNK)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Entry> + '_ {
        self.chunks.iter().flat_map(|c| c.iter())
    }

    /// The index of the first entry for which `pred` is false, the entries
    /// being those for which it is true and then the others (as
    /// `slice::partition_point`).
    pub fn partition_point(&self, mut pred: impl FnMut(&Entry) -> bool) -> usize {
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

impl std::ops::Index<usize> for Entries {
    type Output = Entry;
    fn index(&self, k: usize) -> &Entry {
        self.get(k).unwrap_or_else(|| panic!("entry {k} of {}", self.len))
    }
}

impl From<Vec<Entry>> for Entries {
    fn from(v: Vec<Entry>) -> Self {
        Entries::from_vec(v)
    }
}

impl FromIterator<Entry> for Entries {
    fn from_iter<I: IntoIterator<Item = Entry>>(iter: I) -> Self {
        Entries::from_vec(iter.into_iter().collect())
    }
}

impl Serialize for Entries {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<Entry>::deserialize(d).map(Entries::from_vec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::program::{RuleRef, Verdict};

    fn entry(rule: usize) -> Entry {
        let key = crate::FlowBox::everything(crate::Family::V4);
        Entry { key, verdict: Verdict::Deny, origin: RuleRef { policy: uuid::Uuid::nil(), rule }, log: None, layer: 0 }
    }

    fn rules(e: &Entries) -> Vec<usize> {
        e.iter().map(|e| e.origin.rule).collect()
    }

    #[test]
    fn chunks_keep_the_order_and_an_index_finds_its_entry() {
        let n = ENTRY_CHUNK * 2 + 5;
        let e: Entries = (0..n).map(entry).collect();
        assert_eq!(e.len(), n);
        assert_eq!(rules(&e), (0..n).collect::<Vec<_>>());
        assert_eq!(e[ENTRY_CHUNK + 3].origin.rule, ENTRY_CHUNK + 3);
        assert!(e.get(n).is_none());
        assert_eq!(e.partition_point(|x| x.origin.rule < ENTRY_CHUNK + 7), ENTRY_CHUNK + 7);
        assert_eq!(e.partition_point(|_| true), n);
        assert!(Entries::default().is_empty());
    }

    #[test]
    fn a_change_copies_only_its_chunk() {
        let e: Entries = (0..ENTRY_CHUNK * 3).map(entry).collect();
        let mut changed = e.clone();
        changed.get_mut(ENTRY_CHUNK + 1).unwrap().verdict = Verdict::Pass;
        assert!(Arc::ptr_eq(&e.chunks[0], &changed.chunks[0]));
        assert!(!Arc::ptr_eq(&e.chunks[1], &changed.chunks[1]));
        assert_eq!(e[ENTRY_CHUNK + 1].verdict, Verdict::Deny, "the earlier list is left as it was");
        assert_ne!(e, changed);
        changed.get_mut(ENTRY_CHUNK + 1).unwrap().verdict = Verdict::Deny;
        assert_eq!(e, changed);
    }

    #[test]
    fn serde_is_a_plain_list() {
        let e: Entries = (0..ENTRY_CHUNK + 1).map(entry).collect();
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json.as_array().unwrap().len(), ENTRY_CHUNK + 1);
        assert_eq!(serde_json::from_value::<Entries>(json).unwrap(), e);
    }
}
