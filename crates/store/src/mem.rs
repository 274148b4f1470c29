//! [`MemStore`]: the in-memory fake of [`Store`], with the exact semantics
//! of the durable backend (it shares the transaction engine and passes the
//! same conformance suite) plus error injection for testing callers.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::engine::{self, EventLog, TxnView};
use crate::store::Page;
use crate::{Event, KeyValue, RangeResult, Store, StoreError, StoreOptions, Txn, TxnResult};

/// An in-memory [`Store`]. Cheap to clone: clones share the same state.
///
/// Nothing is persisted. Failures can be injected with
/// [`MemStore::fail_next_txn`], [`MemStore::fail_next_txn_after_apply`] and
/// [`MemStore::fail_next_read`]; each injected error is returned exactly once,
/// in injection order per kind.
#[derive(Clone)]
pub struct MemStore {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    revisions: tokio::sync::watch::Sender<u64>,
}

struct State {
    kv: BTreeMap<String, KeyValue>,
    events: VecDeque<Event>,
    revision: u64,
    compacted: u64,
    retain_events: u64,
    fail_txn: VecDeque<Injected>,
    fail_read: VecDeque<StoreError>,
}

enum Injected {
    BeforeApply(StoreError),
    AfterApply(StoreError),
}

impl Default for MemStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("MemStore")
            .field("keys", &state.kv.len())
            .field("revision", &state.revision)
            .field("compacted", &state.compacted)
            .finish()
    }
}

impl MemStore {
    /// An empty store at revision 0 with default options.
    pub fn new() -> Self {
        Self::with_options(StoreOptions::default())
    }

    /// An empty store at revision 0.
    pub fn with_options(options: StoreOptions) -> Self {
        MemStore {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    kv: BTreeMap::new(),
                    events: VecDeque::new(),
                    revision: 0,
                    compacted: 0,
                    retain_events: options.retain_events,
                    fail_txn: VecDeque::new(),
                    fail_read: VecDeque::new(),
                }),
                revisions: tokio::sync::watch::channel(0).0,
            }),
        }
    }

    /// The next [`Store::txn`] returns `error` without applying anything.
    pub fn fail_next_txn(&self, error: StoreError) {
        self.lock().fail_txn.push_back(Injected::BeforeApply(error));
    }

    /// The next [`Store::txn`] is applied (and notified to watchers) but
    /// returns `error`: the ambiguous outcome of a request that timed out
    /// after reaching the server. Use it to test that callers are idempotent.
    pub fn fail_next_txn_after_apply(&self, error: StoreError) {
        self.lock().fail_txn.push_back(Injected::AfterApply(error));
    }

    /// The next read ([`Store::get`], [`Store::range`], [`Store::revision`]
    /// or [`Store::events_since`]) returns `error`.
    pub fn fail_next_read(&self, error: StoreError) {
        self.lock().fail_read.push_back(error);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing under the lock panics short of a bug; if it did, keep
        // serving the state rather than cascade the panic into every caller.
        self.inner.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read<T>(&self, f: impl FnOnce(&State) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut state = self.lock();
        if let Some(error) = state.fail_read.pop_front() {
            return Err(error);
        }
        f(&state)
    }
}

struct MapView<'a>(&'a mut BTreeMap<String, KeyValue>);

fn under<'a>(map: &'a BTreeMap<String, KeyValue>, prefix: &'a str) -> impl Iterator<Item = &'a KeyValue> + 'a {
    map.range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
        .take_while(move |(key, _)| key.starts_with(prefix))
        .map(|(_, kv)| kv)
}

impl TxnView for MapView<'_> {
    fn get(&mut self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.0.get(key).cloned())
    }
    fn prefix_is_empty(&mut self, prefix: &str) -> Result<bool, StoreError> {
        Ok(under(self.0, prefix).next().is_none())
    }
    fn keys_with_prefix(&mut self, prefix: &str) -> Result<Vec<String>, StoreError> {
        Ok(under(self.0, prefix).map(|kv| kv.key.clone()).collect())
    }
    fn put(&mut self, kv: KeyValue) -> Result<(), StoreError> {
        self.0.insert(kv.key.clone(), kv);
        Ok(())
    }
    fn delete(&mut self, key: &str) -> Result<bool, StoreError> {
        Ok(self.0.remove(key).is_some())
    }
}

impl EventLog for VecDeque<Event> {
    fn len(&mut self) -> Result<u64, StoreError> {
        Ok(VecDeque::len(self) as u64)
    }
    fn oldest_revision(&mut self) -> Result<Option<u64>, StoreError> {
        Ok(self.front().map(|e| e.revision))
    }
    fn pop_oldest(&mut self) -> Result<Option<u64>, StoreError> {
        Ok(self.pop_front().map(|e| e.revision))
    }
}

#[async_trait::async_trait]
impl Store for MemStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.read(|state| Ok(state.kv.get(key).cloned()))
    }

    async fn range(&self, prefix: &str) -> Result<RangeResult, StoreError> {
        self.read(|state| Ok(RangeResult { kvs: under(&state.kv, prefix).cloned().collect(), revision: state.revision }))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        let (result, after_apply) = {
            let mut state = self.lock();
            let after_apply = match state.fail_txn.pop_front() {
                Some(Injected::BeforeApply(error)) => return Err(error),
                Some(Injected::AfterApply(error)) => Some(error),
                None => None,
            };
            let state = &mut *state;
            // The in-memory view cannot fail, and validation precedes any
            // change, so an error here leaves the state untouched.
            let applied = engine::execute(&mut MapView(&mut state.kv), &txn, state.revision)?;
            if !applied.events.is_empty() {
                state.revision = applied.result.revision;
                state.events.extend(applied.events);
                if let Some(compacted) = engine::compact(&mut state.events, state.retain_events)? {
                    state.compacted = state.compacted.max(compacted);
                }
                let revision = state.revision;
                self.inner.revisions.send_if_modified(|latest| {
                    let newer = revision > *latest;
                    *latest = (*latest).max(revision);
                    newer
                });
            }
            (applied.result, after_apply)
        };
        match after_apply {
            Some(error) => Err(error),
            None => Ok(result),
        }
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        self.read(|state| Ok(state.revision))
    }

    async fn events_since(&self, prefix: &str, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.read(|state| {
            if after < state.compacted {
                return Err(StoreError::Compacted { requested: after, compacted: state.compacted });
            }
            // Events are in revision order; skip the old ones by binary search.
            let start = state.events.partition_point(|e| e.revision <= after);
            let mut page = Page::new(limit);
            for e in state.events.range(start..).filter(|e| e.kv.key.starts_with(prefix)) {
                if !page.takes(e.revision) {
                    break;
                }
                page.events.push(e.clone());
            }
            Ok(page.events)
        })
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.revisions.subscribe()
    }
}
