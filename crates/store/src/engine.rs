//! Transaction semantics shared by the embedded backends: validation,
//! compare evaluation, op application and event generation.
//!
//! A backend provides a [`TxnView`] over its state inside one of its own
//! (atomic) write transactions; [`execute`] decides what the [`Txn`] does and
//! performs it through the view. The backend then persists the returned
//! events and the new revision, or — if nothing changed — discards its write
//! transaction, so a no-op transaction creates no revision (as in etcd).

use std::collections::BTreeSet;

use crate::{Compare, Event, KeyValue, Op, StoreError, Txn, TxnResult};

/// The state a transaction reads and writes, seen from inside one atomic
/// backend transaction.
pub(crate) trait TxnView {
    /// The current record of `key`.
    fn get(&mut self, key: &str) -> Result<Option<KeyValue>, StoreError>;
    /// True if no key starts with `prefix`.
    fn prefix_is_empty(&mut self, prefix: &str) -> Result<bool, StoreError>;
    /// All keys starting with `prefix`, sorted.
    fn keys_with_prefix(&mut self, prefix: &str) -> Result<Vec<String>, StoreError>;
    /// Stores `kv` under `kv.key`, replacing any previous record.
    fn put(&mut self, kv: KeyValue) -> Result<(), StoreError>;
    /// Removes `key`; returns whether it existed.
    fn delete(&mut self, key: &str) -> Result<bool, StoreError>;
}

/// What [`execute`] did: the result to return and the events to log (empty
/// if nothing changed, in which case nothing must be persisted).
#[derive(Debug)]
pub(crate) struct Applied {
    pub result: TxnResult,
    pub events: Vec<Event>,
}

/// Evaluates and applies `txn` on `view`, where `current` is the store's
/// revision before the transaction.
///
/// Validation happens before anything is read or written, so an
/// [`StoreError::InvalidTxn`] leaves the view untouched. A view error may
/// leave it half-applied: the caller must then abort its transaction.
pub(crate) fn execute(view: &mut impl TxnView, txn: &Txn, current: u64) -> Result<Applied, StoreError> {
    validate(&txn.success)?;
    validate(&txn.failure)?;

    let mut failed = Vec::new();
    for (index, compare) in txn.compares.iter().enumerate() {
        if !holds(view, compare)? {
            failed.push(index);
        }
    }
    let succeeded = failed.is_empty();
    let ops = if succeeded { &txn.success } else { &txn.failure };

    let revision = current + 1;
    let mut events = Vec::new();
    for op in ops {
        match op {
            Op::Put { key, value } => {
                let kv = match view.get(key)? {
                    Some(old) => KeyValue {
                        key: key.clone(),
                        value: value.clone(),
                        create_revision: old.create_revision,
                        mod_revision: revision,
                        version: old.version + 1,
                    },
                    None => KeyValue {
                        key: key.clone(),
                        value: value.clone(),
                        create_revision: revision,
                        mod_revision: revision,
                        version: 1,
                    },
                };
                view.put(kv.clone())?;
                events.push(Event::put(kv));
            }
            Op::Delete { key } => {
                if view.delete(key)? {
                    events.push(Event::delete(key.clone(), revision));
                }
            }
            Op::DeletePrefix { prefix } => {
                for key in view.keys_with_prefix(prefix)? {
                    if view.delete(&key)? {
                        events.push(Event::delete(key, revision));
                    }
                }
            }
        }
    }

    let revision = if events.is_empty() { current } else { revision };
    Ok(Applied { result: TxnResult { succeeded, revision, failed }, events })
}

fn holds(view: &mut impl TxnView, compare: &Compare) -> Result<bool, StoreError> {
    Ok(match compare {
        Compare::Absent(key) => view.get(key)?.is_none(),
        Compare::Exists(key) => view.get(key)?.is_some(),
        Compare::ModRevision(key, rev) => view.get(key)?.map_or(0, |kv| kv.mod_revision) == *rev,
        Compare::Version(key, version) => view.get(key)?.map_or(0, |kv| kv.version) == *version,
        Compare::PrefixEmpty(prefix) => view.prefix_is_empty(prefix)?,
        Compare::ValueEquals(key, value) => view.get(key)?.is_some_and(|kv| kv.value == *value),
    })
}

/// etcd's rules for one branch: keys are non-empty, a key is put at most
/// once, and no put key is deleted by the same branch.
pub(crate) fn validate(ops: &[Op]) -> Result<(), StoreError> {
    let invalid = |key: &str, reason: &str| StoreError::InvalidTxn { key: key.to_owned(), reason: reason.to_owned() };
    let mut puts = BTreeSet::new();
    for op in ops {
        match op {
            Op::Put { key, .. } => {
                if key.is_empty() {
                    return Err(invalid(key, "empty key"));
                }
                if !puts.insert(key.as_str()) {
                    return Err(invalid(key, "key is put twice in the same branch"));
                }
            }
            Op::Delete { key } if key.is_empty() => return Err(invalid(key, "empty key")),
            Op::Delete { .. } | Op::DeletePrefix { .. } => {}
        }
    }
    for op in ops {
        let clash = match op {
            Op::Put { .. } => None,
            Op::Delete { key } => puts.contains(key.as_str()).then_some(key),
            Op::DeletePrefix { prefix } => puts.iter().find(|k| k.starts_with(prefix.as_str())).map(|_| prefix),
        };
        if let Some(key) = clash {
            return Err(invalid(key, "the same branch both puts and deletes this key"));
        }
    }
    Ok(())
}

/// The durable event log of a backend, seen from inside one of its write
/// transactions, as needed by [`compact`].
pub(crate) trait EventLog {
    /// Number of logged events.
    fn len(&mut self) -> Result<u64, StoreError>;
    /// Revision of the oldest logged event.
    fn oldest_revision(&mut self) -> Result<Option<u64>, StoreError>;
    /// Removes the oldest logged event and returns its revision.
    fn pop_oldest(&mut self) -> Result<Option<u64>, StoreError>;
}

/// Drops the oldest events until at most `retain` remain, always dropping
/// whole revisions (so a revision is either fully retained or fully gone).
/// Returns the newest dropped revision — the new compaction point — or
/// `None` if nothing was dropped.
pub(crate) fn compact(log: &mut impl EventLog, retain: u64) -> Result<Option<u64>, StoreError> {
    let mut len = log.len()?;
    let mut dropped = None;
    while len > retain {
        match log.pop_oldest()? {
            Some(revision) => dropped = Some(revision),
            None => break,
        }
        len -= 1;
    }
    if let Some(compacted) = dropped {
        while log.oldest_revision()?.is_some_and(|r| r <= compacted) {
            log.pop_oldest()?;
        }
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Default)]
    struct MapView(BTreeMap<String, KeyValue>);

    impl TxnView for MapView {
        fn get(&mut self, key: &str) -> Result<Option<KeyValue>, StoreError> {
            Ok(self.0.get(key).cloned())
        }
        fn prefix_is_empty(&mut self, prefix: &str) -> Result<bool, StoreError> {
            Ok(!self.0.keys().any(|k| k.starts_with(prefix)))
        }
        fn keys_with_prefix(&mut self, prefix: &str) -> Result<Vec<String>, StoreError> {
            Ok(self.0.keys().filter(|k| k.starts_with(prefix)).cloned().collect())
        }
        fn put(&mut self, kv: KeyValue) -> Result<(), StoreError> {
            self.0.insert(kv.key.clone(), kv);
            Ok(())
        }
        fn delete(&mut self, key: &str) -> Result<bool, StoreError> {
            Ok(self.0.remove(key).is_some())
        }
    }

    #[test]
    fn putting_the_same_key_twice_in_one_branch_is_rejected_before_any_change() {
        let mut view = MapView::default();
        let txn = Txn::new().then(Op::put("a", "1")).then(Op::put("b", "1")).then(Op::put("a", "2"));
        let err = execute(&mut view, &txn, 0).unwrap_err();
        assert!(matches!(err, StoreError::InvalidTxn { ref key, .. } if key == "a"), "{err}");
        assert!(view.0.is_empty());
    }

    #[test]
    fn putting_a_key_the_branch_also_deletes_is_rejected() {
        let mut view = MapView::default();
        for txn in [
            Txn::new().then(Op::put("a/1", "x")).then(Op::delete("a/1")),
            Txn::new().then(Op::delete_prefix("a/")).then(Op::put("a/1", "x")),
            Txn::new().otherwise(Op::delete_prefix("")).otherwise(Op::put("z", "x")),
        ] {
            assert!(matches!(execute(&mut view, &txn, 0), Err(StoreError::InvalidTxn { .. })), "{txn:?}");
        }
    }

    #[test]
    fn the_two_branches_are_validated_independently() {
        let mut view = MapView::default();
        let txn = Txn::new().then(Op::put("a", "1")).otherwise(Op::put("a", "2"));
        let applied = execute(&mut view, &txn, 7).unwrap();
        assert!(applied.result.succeeded);
        assert_eq!(applied.result.revision, 8);
    }

    #[test]
    fn empty_keys_are_rejected() {
        let mut view = MapView::default();
        assert!(execute(&mut view, &Txn::new().then(Op::put("", "1")), 0).is_err());
        assert!(execute(&mut view, &Txn::new().then(Op::delete("")), 0).is_err());
        assert!(execute(&mut view, &Txn::new().then(Op::delete_prefix("")), 0).is_ok());
    }

    #[test]
    fn overlapping_deletes_produce_one_event_per_deleted_key() {
        let mut view = MapView::default();
        execute(&mut view, &Txn::new().then(Op::put("a/1", "x")).then(Op::put("a/2", "x")), 0).unwrap();
        let applied = execute(&mut view, &Txn::new().then(Op::delete("a/1")).then(Op::delete_prefix("a/")), 1).unwrap();
        let keys: Vec<_> = applied.events.iter().map(|e| e.kv.key.as_str()).collect();
        assert_eq!(keys, ["a/1", "a/2"]);
        assert_eq!(applied.result.revision, 2);
    }

    impl EventLog for std::collections::VecDeque<u64> {
        fn len(&mut self) -> Result<u64, StoreError> {
            Ok(std::collections::VecDeque::len(self) as u64)
        }
        fn oldest_revision(&mut self) -> Result<Option<u64>, StoreError> {
            Ok(self.front().copied())
        }
        fn pop_oldest(&mut self) -> Result<Option<u64>, StoreError> {
            Ok(self.pop_front())
        }
    }

    #[test]
    fn compaction_drops_nothing_while_within_the_retention() {
        let mut log: std::collections::VecDeque<u64> = [1, 2, 2, 3].into();
        assert_eq!(compact(&mut log, 4).unwrap(), None);
        assert_eq!(log.len(), 4);
    }

    #[test]
    fn compaction_drops_oldest_revisions_whole() {
        // revision 2 has two events; keeping 2 events would split it
        let mut log: std::collections::VecDeque<u64> = [1, 2, 2, 3, 4].into();
        assert_eq!(compact(&mut log, 3).unwrap(), Some(2));
        assert_eq!(log, [3, 4]);
    }

    #[test]
    fn compaction_to_zero_drops_everything() {
        let mut log: std::collections::VecDeque<u64> = [5, 5].into();
        assert_eq!(compact(&mut log, 0).unwrap(), Some(5));
        assert!(log.is_empty());
    }
}
