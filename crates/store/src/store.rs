//! The [`Store`] trait every backend implements, and [`watch`], built once
//! on top of it. The watch contract (list, watch, re-list on
//! [`StoreError::Compacted`]) is described in the crate docs.

use std::collections::VecDeque;
use std::sync::Arc;

use futures::stream::{BoxStream, StreamExt};

use crate::{Event, KeyValue, RangeResult, StoreError, Txn, TxnResult};

/// A revisioned key-value store with etcd v3's semantics.
///
/// Implementations: [`RedbStore`](crate::RedbStore) (embedded, durable) and
/// [`MemStore`](crate::MemStore) (in memory, with error injection for
/// tests). Both pass the same conformance suite.
///
/// Keys are compared and ordered as bytes (their UTF-8 encoding). A
/// "prefix" selects every key that starts with it; the empty prefix selects
/// every key.
///
/// Cancellation: dropping a pending [`Store::txn`] future does not cancel the
/// transaction, which may or may not be applied; a caller that needs to know
/// must read back (or make the transaction idempotent with compares).
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The key's current value and revisions, `None` if it does not exist.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// All key-values whose key starts with `prefix`, sorted by key, from one
    /// consistent snapshot, with that snapshot's revision.
    async fn range(&self, prefix: &str) -> Result<RangeResult, StoreError>;

    /// [`Store::range`] without the values (each `value` is empty): the
    /// keys and their revisions, for a caller that keeps values it already
    /// read by key and mod revision (etcd's `keys_only`).
    async fn range_keys(&self, prefix: &str) -> Result<RangeResult, StoreError> {
        let mut r = self.range(prefix).await?;
        for kv in &mut r.kvs {
            kv.value = Vec::new();
        }
        Ok(r)
    }

    /// [`Store::range_keys`] that may answer from a replica a little behind
    /// the latest revision (etcd's serializable read, served by the member
    /// the call reaches, without a quorum): for a caller whose transaction
    /// compares what it read, so that a stale answer only makes it try
    /// again. A backend without replicas answers as [`Store::range_keys`].
    async fn range_keys_relaxed(&self, prefix: &str) -> Result<RangeResult, StoreError> {
        self.range_keys(prefix).await
    }

    /// Evaluates `txn` atomically (see [`Txn`]).
    ///
    /// A transaction that changes something gets revision `current + 1`,
    /// shared by all its changes; one that changes nothing (no ops, deletes
    /// of missing keys, ...) creates no revision and no event, and reports
    /// the current revision. Transactions committed concurrently may share
    /// one revision when none of them touches a key another writes (the
    /// etcd backend commits them as one etcd transaction): each is still
    /// applied whole and sees none of the others' changes, and a caller
    /// that waits for one before it sends the next gets a new revision for
    /// each. When `txn` returns `Ok`, the change is durable
    /// (for durable backends) and visible to every later read.
    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError>;

    /// The current revision (0 for a store that was never written).
    async fn revision(&self) -> Result<u64, StoreError>;

    /// The logged events with revision `> after` on keys starting with
    /// `prefix`, in revision order (and, within a revision, in the order of
    /// the transaction's ops).
    ///
    /// Fails with [`StoreError::Compacted`] if events after `after` may have
    /// been discarded (`after` is older than the compaction point); the
    /// caller must then re-list with [`Store::range`] and continue from the
    /// revision it returns. `after` at or beyond the current revision yields
    /// an empty list.
    ///
    /// A page: whole revisions, stopping after the revision during which
    /// the list reached `limit` events (so it holds at most `limit` plus one
    /// revision's events). Fewer than `limit` events means there were no
    /// more at the time of reading; otherwise the caller asks again after
    /// the last revision returned. `usize::MAX` reads everything.
    async fn events_since(&self, prefix: &str, after: u64, limit: usize) -> Result<Vec<Event>, StoreError>;

    /// A receiver of the latest revision, updated after each committed
    /// change (after the change is visible to [`Store::events_since`]). Only
    /// a wake-up signal: intermediate values may be skipped.
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64>;
}

/// Streams every event on keys starting with `prefix` with revision `>
/// after`: first those already logged, then live ones as they are
/// committed, in revision order, with no gap and no duplicate.
///
/// The stream never ends on its own while the store lives. It yields an
/// error — typically [`StoreError::Compacted`] when `after` is (or the
/// watcher fell) behind the compaction point — and then ends: the caller
/// re-lists with [`Store::range`] and watches again from the revision it
/// returns (see the crate docs).
///
/// Works for any backend: it polls [`Store::events_since`] each time
/// [`Store::subscribe`] signals a new revision.
pub fn watch(store: Arc<dyn Store>, prefix: String, after: u64) -> BoxStream<'static, Result<Event, StoreError>> {
    watch_paged(store, prefix, after, WATCH_PAGE)
}

/// Events a [`watch`] reads from the store at a time: what a watcher holds
/// in memory, whatever the revision it starts from.
pub const WATCH_PAGE: usize = 64;

/// [`watch`], reading the store `page` events at a time.
pub fn watch_paged(
    store: Arc<dyn Store>,
    prefix: String,
    after: u64,
    page: usize,
) -> BoxStream<'static, Result<Event, StoreError>> {
    let state =
        WatchState { revisions: store.subscribe(), store, prefix, cursor: after, pending: VecDeque::new(), finished: false };
    futures::stream::unfold(state, move |mut state| async move {
        loop {
            if state.finished {
                return None;
            }
            if let Some(event) = state.pending.pop_front() {
                return Some((Ok(event), state));
            }
            // Mark the current revision as seen *before* reading: a commit
            // after this point will wake `changed()` below, and every commit
            // up to `seen` is already visible to `events_since`.
            let seen = *state.revisions.borrow_and_update();
            let full = match state.store.events_since(&state.prefix, state.cursor, page).await {
                Err(err) => {
                    state.finished = true;
                    return Some((Err(err), state));
                }
                Ok(events) => {
                    let full = events.len() >= page;
                    let last = events.last().map_or(0, |e| e.revision);
                    // A full page may have more behind it: continue after its
                    // last revision. Otherwise everything up to `seen` is
                    // delivered, and advancing past `seen` even without
                    // matching events keeps a watcher of a quiet prefix ahead
                    // of compaction.
                    state.cursor = if full { last } else { state.cursor.max(seen).max(last) };
                    state.pending.extend(events);
                    full
                }
            };
            if state.pending.is_empty() && !full && state.revisions.changed().await.is_err() {
                return None;
            }
        }
    })
    .boxed()
}

struct WatchState {
    store: Arc<dyn Store>,
    revisions: tokio::sync::watch::Receiver<u64>,
    prefix: String,
    /// Every matching event with revision `<= cursor` was delivered or is in
    /// `pending`.
    cursor: u64,
    pending: VecDeque<Event>,
    finished: bool,
}

/// A page of [`Store::events_since`] being filled: whole revisions, ending
/// with the revision during which it reached its limit.
pub(crate) struct Page {
    pub(crate) events: Vec<Event>,
    limit: usize,
}

impl Page {
    pub(crate) fn new(limit: usize) -> Self {
        Page { events: Vec::new(), limit }
    }

    /// Whether an event of `revision` belongs on the page.
    pub(crate) fn takes(&self, revision: u64) -> bool {
        self.events.len() < self.limit || self.events.last().is_some_and(|e| e.revision == revision)
    }
}
