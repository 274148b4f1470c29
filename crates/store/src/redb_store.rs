//! [`RedbStore`]: the durable [`Store`], one crash-safe file managed by
//! [redb](https://docs.rs/redb). The on-disk layout and the durability
//! guarantees are documented on the type, so they appear in the public docs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use redb::{Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::codec;
use crate::engine::{self, EventLog, TxnView};
use crate::store::Page;
use crate::{Event, KeyValue, RangeResult, Store, StoreError, StoreOptions, Txn, TxnResult};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const EVENTS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("events");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const META_FORMAT: &str = "format";
const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";
const FORMAT: u64 = 1;

/// The most transactions committed together (see [`RedbStore`]).
pub const GROUP_COMMIT_MAX: usize = 256;

/// Where a transaction's outcome goes.
type Reply = tokio::sync::oneshot::Sender<Result<TxnResult, StoreError>>;

/// A transaction waiting for the committer, and where its outcome goes.
type Waiting = (Txn, Reply);

/// A [`Store`] kept in one redb file. Cheap to clone: clones share the open
/// database, which is closed when the last clone is dropped.
///
/// # Durability and concurrency
///
/// Each [`Store::txn`] that changes something is committed in a redb write
/// transaction with [`redb::Durability::Immediate`] (fsync) before `txn`
/// returns, so an acknowledged write survives `kill -9` or power loss; a
/// write transaction that changes nothing is aborted and costs no fsync.
/// redb serializes writers, so transactions that arrive while one commits
/// wait, and are then committed together (group commit, up to
/// [`GROUP_COMMIT_MAX`]): one after the other in one write transaction, each
/// with its own revision and seeing the changes of those before it, and one
/// fsync for all. A transaction refused as invalid leaves the others of its
/// group alone; any other failure commits none of the group, which is then
/// committed one transaction at a time, so each gets its own outcome.
/// Reads run in MVCC read transactions concurrently with writes. All redb
/// calls block, so they run on [`tokio::task::spawn_blocking`].
///
/// Only one process may open the file (redb locks it); a second open fails
/// with [`StoreError::AlreadyOpen`]. A file left by a killed process is
/// repaired by redb on open.
///
/// # On-disk layout (format 1)
///
/// Three redb tables:
///
/// | table    | key                         | value                      |
/// |----------|-----------------------------|----------------------------|
/// | `kv`     | key (`&str`)                | key-value record (below)   |
/// | `events` | `(revision u64, index u32)` | event record (below)       |
/// | `meta`   | name (`&str`)               | `u64`                      |
///
/// `meta` holds `format` (layout version, 1), `revision` (current revision)
/// and `compacted` (newest revision whose events were discarded, 0 if none).
/// `index` orders the events of one transaction (etcd's sub-revision).
///
/// Records are little-endian and start with a format byte (1):
///
/// * key-value record: `[1] [create_revision u64] [mod_revision u64]
///   [version u64] [value bytes ..]`
/// * event record: `[1] [kind u8: 0 put, 1 delete] [create_revision u64]
///   [mod_revision u64] [version u64] [key length u32] [key UTF-8 ..]
///   [value bytes ..]`
#[derive(Clone)]
pub struct RedbStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// The open database; `None` after a failed reopen.
    db: std::sync::RwLock<Option<Database>>,
    /// An I/O error left the database unusable until it is opened again
    /// (redb answers `PreviousIo` to everything after a failed write).
    broken: std::sync::atomic::AtomicBool,
    path: PathBuf,
    retain_events: u64,
    revisions: tokio::sync::watch::Sender<u64>,
    /// Transactions waiting to be committed, and whether a committer runs.
    queue: std::sync::Mutex<(Vec<Waiting>, bool)>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").field("path", &self.inner.path).field("retain_events", &self.inner.retain_events).finish()
    }
}

fn backend<E: Into<redb::Error>>(op: &'static str) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError::backend(op, e.into())
}

impl RedbStore {
    /// Opens (creating if missing) the store file at `path` with default
    /// options. Blocking: call it at startup or inside `spawn_blocking`.
    ///
    /// Fails with [`StoreError::AlreadyOpen`] if another process (or another
    /// handle in this process) has the file open, with [`StoreError::Open`]
    /// if the file is not a store or cannot be repaired.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, StoreOptions::default())
    }

    /// [`RedbStore::open`] with explicit options. The retention applies from
    /// the next write on.
    pub fn open_with(path: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        let (db, revision) = open_db(path)?;
        tracing::debug!(path = %path.display(), revision, "opened store");
        Ok(RedbStore {
            inner: Arc::new(Inner {
                db: std::sync::RwLock::new(Some(db)),
                broken: Default::default(),
                path: path.to_owned(),
                retain_events: options.retain_events,
                revisions: tokio::sync::watch::channel(revision).0,
                queue: Default::default(),
            }),
        })
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn blocking<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner)).await.map_err(|e| StoreError::backend(op, e))?
    }
}

/// Opens (creating if missing) the database at `path`, makes its tables and
/// checks the layout version; returns it with its current revision.
fn open_db(path: &Path) -> Result<(Database, u64), StoreError> {
    let db = Database::create(path).map_err(|e| match e {
        DatabaseError::DatabaseAlreadyOpen => StoreError::AlreadyOpen { path: path.to_owned() },
        other => StoreError::Open { path: path.to_owned(), source: Box::new(other) },
    })?;

    // Create the tables and check the layout version.
    let mut write = db.begin_write().map_err(backend("begin write transaction"))?;
    write.set_durability(Durability::Immediate).map_err(backend("set durability"))?;
    let revision = {
        write.open_table(KV).map_err(backend("open table kv"))?;
        write.open_table(EVENTS).map_err(backend("open table events"))?;
        let mut meta = write.open_table(META).map_err(backend("open table meta"))?;
        let format = meta.get(META_FORMAT).map_err(backend("read meta"))?.map(|g| g.value());
        match format {
            None => {
                meta.insert(META_FORMAT, FORMAT).map_err(backend("write meta"))?;
            }
            Some(FORMAT) => {}
            Some(other) => {
                return Err(StoreError::Corrupt {
                    key: format!("meta/{META_FORMAT}"),
                    reason: format!("{} has layout version {other}, this build understands {FORMAT}", path.display()),
                })
            }
        }
        read_meta(&meta, META_REVISION)?
    };
    write.commit().map_err(backend("commit write transaction"))?;
    Ok((db, revision))
}

/// Whether `e` is an I/O failure of redb (which leaves the database
/// unusable until it is opened again), and if so whether it is a full disk.
fn io_failure(e: &StoreError) -> Option<bool> {
    let StoreError::Backend { source, .. } = e else { return None };
    match source.downcast_ref::<redb::Error>()? {
        redb::Error::Io(io) => Some(matches!(io.raw_os_error(), Some(ENOSPC | EDQUOT))),
        redb::Error::PreviousIo => Some(false),
        _ => None,
    }
}

/// `ENOSPC` and `EDQUOT` on Linux.
const ENOSPC: i32 = 28;
const EDQUOT: i32 = 122;

fn read_meta(meta: &impl ReadableTable<&'static str, u64>, name: &'static str) -> Result<u64, StoreError> {
    Ok(meta.get(name).map_err(backend("read meta"))?.map_or(0, |g| g.value()))
}

impl Inner {
    /// Runs `f` on the open database, opening it again first when an I/O
    /// error left it unusable (a disk that was full may have space again).
    /// An I/O error of `f` marks it for reopening; running out of space is
    /// [`StoreError::NoSpace`].
    fn with_db<T>(&self, op: &'static str, f: impl FnOnce(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        use std::sync::atomic::Ordering;
        if self.broken.load(Ordering::Acquire) {
            self.reopen()?;
        }
        let guard = self.db.read().unwrap_or_else(|p| p.into_inner());
        let Some(db) = guard.as_ref() else {
            drop(guard);
            self.broken.store(true, Ordering::Release);
            return Err(StoreError::backend(op, "the store file could not be opened again"));
        };
        match f(db) {
            Err(e) if io_failure(&e).is_some() => {
                self.broken.store(true, Ordering::Release);
                let no_space = io_failure(&e) == Some(true);
                tracing::warn!(path = %self.path.display(), op, error = %e, "store I/O failed; it is opened again before the next use");
                Err(if no_space { StoreError::NoSpace { path: self.path.clone(), op } } else { e })
            }
            other => other,
        }
    }

    /// Closes the database and opens it again (redb refuses every use after
    /// a failed write until then).
    fn reopen(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        let mut guard = self.db.write().unwrap_or_else(|p| p.into_inner());
        if !self.broken.load(Ordering::Acquire) {
            return Ok(());
        }
        // Drop the old handle first: it holds the file's lock.
        *guard = None;
        let (db, revision) = open_db(&self.path)?;
        *guard = Some(db);
        self.broken.store(false, Ordering::Release);
        tracing::info!(path = %self.path.display(), revision, "store opened again");
        Ok(())
    }

    /// Commits `txns` in one write transaction, in order (see [`RedbStore`]):
    /// each one's outcome; `Err` when none of them could be committed.
    fn txns(&self, db: &Database, txns: &[&Txn]) -> Result<Vec<Result<TxnResult, StoreError>>, StoreError> {
        let mut write = db.begin_write().map_err(backend("begin write transaction"))?;
        write.set_durability(Durability::Immediate).map_err(backend("set durability"))?;
        let mut results = Vec::with_capacity(txns.len());
        let (before, after) = {
            let mut meta = write.open_table(META).map_err(backend("open table meta"))?;
            let before = read_meta(&meta, META_REVISION)?;
            let mut kv = write.open_table(KV).map_err(backend("open table kv"))?;
            let mut events = write.open_table(EVENTS).map_err(backend("open table events"))?;
            let mut current = before;
            for txn in txns {
                // An invalid transaction is refused before it reads or
                // writes anything; any other error may leave this one half
                // applied, so the whole write transaction is dropped.
                let applied = match engine::execute(&mut KvView(&mut kv), txn, current) {
                    Err(e @ StoreError::InvalidTxn { .. }) => {
                        results.push(Err(e));
                        continue;
                    }
                    other => other?,
                };
                if !applied.events.is_empty() {
                    current = applied.result.revision;
                    for (index, event) in applied.events.iter().enumerate() {
                        let index = u32::try_from(index).map_err(|_| StoreError::InvalidTxn {
                            key: event.kv.key.clone(),
                            reason: "more than 2^32 changes in one transaction".into(),
                        })?;
                        events
                            .insert((current, index), codec::encode_event(event).as_slice())
                            .map_err(backend("append event"))?;
                    }
                }
                results.push(Ok(applied.result));
            }
            if current != before {
                meta.insert(META_REVISION, current).map_err(backend("write meta"))?;
                if let Some(compacted) = engine::compact(&mut EventsLog(&mut events), self.retain_events)? {
                    let previous = read_meta(&meta, META_COMPACTED)?;
                    meta.insert(META_COMPACTED, previous.max(compacted)).map_err(backend("write meta"))?;
                }
            }
            (before, current)
        };
        if after == before {
            // Nothing changed: no revision, nothing to make durable.
            write.abort().map_err(backend("abort write transaction"))?;
            return Ok(results);
        }
        write.commit().map_err(backend("commit write transaction"))?;
        // Commits are serialized but their notifications may race: keep the
        // published revision monotonic.
        self.revisions.send_if_modified(|latest| {
            let newer = after > *latest;
            *latest = (*latest).max(after);
            newer
        });
        Ok(results)
    }

    /// Commits one group; each transaction's outcome with where it goes.
    fn commit_group(&self, group: Vec<Waiting>) -> Vec<(Reply, Result<TxnResult, StoreError>)> {
        let txns: Vec<&Txn> = group.iter().map(|(t, _)| t).collect();
        match self.with_db("commit a transaction", |db| self.txns(db, &txns)) {
            Ok(results) => group.into_iter().map(|(_, reply)| reply).zip(results).collect(),
            Err(e) if group.len() == 1 => {
                let reply = group.into_iter().next().map(|(_, reply)| reply).expect("a group of one");
                vec![(reply, Err(e))]
            }
            // One at a time: each its own outcome.
            Err(_) => group
                .into_iter()
                .map(|(txn, reply)| {
                    let result = self.with_db("commit a transaction", |db| self.txns(db, &[&txn]));
                    (reply, result.and_then(|mut r| r.pop().expect("one outcome per transaction")))
                })
                .collect(),
        }
    }

    fn get(&self, db: &Database, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let read = db.begin_read().map_err(backend("begin read transaction"))?;
        let kv = read.open_table(KV).map_err(backend("open table kv"))?;
        let record = kv.get(key).map_err(backend("read key"))?;
        record.map(|g| codec::decode_kv(key, g.value())).transpose()
    }

    fn range(&self, db: &Database, prefix: &str, with_values: bool) -> Result<RangeResult, StoreError> {
        let decode = if with_values { codec::decode_kv } else { codec::decode_kv_header };
        let read = db.begin_read().map_err(backend("begin read transaction"))?;
        let meta = read.open_table(META).map_err(backend("open table meta"))?;
        let kv = read.open_table(KV).map_err(backend("open table kv"))?;
        let revision = read_meta(&meta, META_REVISION)?;
        let mut kvs = Vec::new();
        for entry in kv.range(prefix..).map_err(backend("range keys"))? {
            let (key, value) = entry.map_err(backend("range keys"))?;
            let key = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            kvs.push(decode(key, value.value())?);
        }
        Ok(RangeResult { kvs, revision })
    }

    fn revision(&self, db: &Database) -> Result<u64, StoreError> {
        let read = db.begin_read().map_err(backend("begin read transaction"))?;
        let meta = read.open_table(META).map_err(backend("open table meta"))?;
        read_meta(&meta, META_REVISION)
    }

    fn events_since(&self, db: &Database, prefix: &str, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let read = db.begin_read().map_err(backend("begin read transaction"))?;
        let meta = read.open_table(META).map_err(backend("open table meta"))?;
        let compacted = read_meta(&meta, META_COMPACTED)?;
        if after < compacted {
            return Err(StoreError::Compacted { requested: after, compacted });
        }
        let Some(first) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let events = read.open_table(EVENTS).map_err(backend("open table events"))?;
        let mut page = Page::new(limit);
        for entry in events.range((first, 0)..).map_err(backend("range events"))? {
            let (id, bytes) = entry.map_err(backend("range events"))?;
            let (revision, index) = id.value();
            let bytes = bytes.value();
            // Decode only matching events (an unreadable key is decoded to
            // report the corruption).
            if codec::event_key(bytes).is_some_and(|k| !k.starts_with(prefix.as_bytes())) {
                continue;
            }
            if !page.takes(revision) {
                break;
            }
            page.events.push(codec::decode_event(revision, index, bytes)?);
        }
        Ok(page.events)
    }
}

struct KvView<'t, 'txn>(&'t mut redb::Table<'txn, &'static str, &'static [u8]>);

impl TxnView for KvView<'_, '_> {
    fn get(&mut self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let record = self.0.get(key).map_err(backend("read key"))?;
        record.map(|g| codec::decode_kv(key, g.value())).transpose()
    }

    fn prefix_is_empty(&mut self, prefix: &str) -> Result<bool, StoreError> {
        let mut range = self.0.range(prefix..).map_err(backend("range keys"))?;
        match range.next() {
            None => Ok(true),
            Some(entry) => {
                let (key, _) = entry.map_err(backend("range keys"))?;
                Ok(!key.value().starts_with(prefix))
            }
        }
    }

    fn keys_with_prefix(&mut self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        for entry in self.0.range(prefix..).map_err(backend("range keys"))? {
            let (key, _) = entry.map_err(backend("range keys"))?;
            let key = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            keys.push(key.to_owned());
        }
        Ok(keys)
    }

    fn put(&mut self, kv: KeyValue) -> Result<(), StoreError> {
        self.0.insert(kv.key.as_str(), codec::encode_kv(&kv).as_slice()).map_err(backend("write key"))?;
        Ok(())
    }

    fn delete(&mut self, key: &str) -> Result<bool, StoreError> {
        Ok(self.0.remove(key).map_err(backend("delete key"))?.is_some())
    }
}

struct EventsLog<'t, 'txn>(&'t mut redb::Table<'txn, (u64, u32), &'static [u8]>);

impl EventLog for EventsLog<'_, '_> {
    fn len(&mut self) -> Result<u64, StoreError> {
        self.0.len().map_err(backend("count events"))
    }

    fn oldest_revision(&mut self) -> Result<Option<u64>, StoreError> {
        let first = self.0.first().map_err(backend("read events"))?;
        Ok(first.map(|(id, _)| id.value().0))
    }

    fn pop_oldest(&mut self) -> Result<Option<u64>, StoreError> {
        let first = self.0.pop_first().map_err(backend("compact events"))?;
        Ok(first.map(|(id, _)| id.value().0))
    }
}

/// Commits what waits in the queue, a group at a time, until it is empty
/// (see [`RedbStore`]). It holds the store only while it commits, never
/// while it answers: a caller that drops the store once its transaction
/// returned may open the file again at once.
fn commit_waiting(store: Weak<Inner>) {
    /// Ends a committer's turn that panicked: the transactions left
    /// waiting get an error, not a wait forever, and the next one starts a
    /// committer again.
    struct Turn<'a>(&'a Weak<Inner>);
    impl Drop for Turn<'_> {
        fn drop(&mut self) {
            if let Some(inner) = self.0.upgrade().filter(|_| std::thread::panicking()) {
                let mut q = inner.queue.lock().unwrap_or_else(|p| p.into_inner());
                q.0.clear();
                q.1 = false;
            }
        }
    }
    let _turn = Turn(&store);
    // Gone: nobody waits (a waiting caller holds the store).
    while let Some(inner) = store.upgrade() {
        let group: Vec<Waiting> = {
            let mut q = inner.queue.lock().unwrap_or_else(|p| p.into_inner());
            if q.0.is_empty() {
                q.1 = false;
                return;
            }
            let n = q.0.len().min(GROUP_COMMIT_MAX);
            q.0.drain(..n).collect()
        };
        let outcomes = inner.commit_group(group);
        drop(inner);
        for (reply, outcome) in outcomes {
            let _ = reply.send(outcome);
        }
    }
}

#[async_trait::async_trait]
impl Store for RedbStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_owned();
        self.blocking("get", move |inner| inner.with_db("get", |db| inner.get(db, &key))).await
    }

    async fn range(&self, prefix: &str) -> Result<RangeResult, StoreError> {
        let prefix = prefix.to_owned();
        self.blocking("range", move |inner| inner.with_db("range", |db| inner.range(db, &prefix, true))).await
    }

    async fn range_keys(&self, prefix: &str) -> Result<RangeResult, StoreError> {
        let prefix = prefix.to_owned();
        self.blocking("range", move |inner| inner.with_db("range", |db| inner.range(db, &prefix, false))).await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        let (reply, outcome) = tokio::sync::oneshot::channel();
        let start = {
            let mut q = self.inner.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.0.push((txn, reply));
            !std::mem::replace(&mut q.1, true)
        };
        if start {
            let store = Arc::downgrade(&self.inner);
            tokio::task::spawn_blocking(move || commit_waiting(store));
        }
        outcome.await.map_err(|_| StoreError::backend("txn", "the committer stopped before this transaction's turn"))?
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        self.blocking("revision", |inner| inner.with_db("revision", |db| inner.revision(db))).await
    }

    async fn events_since(&self, prefix: &str, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let prefix = prefix.to_owned();
        self.blocking("events_since", move |inner| {
            inner.with_db("events_since", |db| inner.events_since(db, &prefix, after, limit))
        })
        .await
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.revisions.subscribe()
    }
}
