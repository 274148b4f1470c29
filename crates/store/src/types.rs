//! The data model shared by every backend: key-values with revisions,
//! transactions (compares + ops), their results, and watch events.
//!
//! This is etcd v3's model, reduced to what Tessera needs:
//!
//! * one global revision counter, `0` for an empty store, incremented by
//!   exactly one by each transaction that changes something; all changes of
//!   one transaction share its revision;
//! * per key a `create_revision`, a `mod_revision` and a `version` (number of
//!   puts since the key was last created; a deleted then re-created key
//!   starts again at 1).

/// A key with its value and revision bookkeeping, as read from the store.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value (empty in a [`EventKind::Delete`] event).
    pub value: Vec<u8>,
    /// The revision of the put that created this key (0 in a delete event).
    pub create_revision: u64,
    /// The revision of the last change to this key (for a delete event: the
    /// deletion's revision).
    pub mod_revision: u64,
    /// Number of puts since creation, starting at 1 (0 in a delete event).
    pub version: u64,
}

/// The result of [`Store::range`](crate::Store::range): one consistent
/// snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeResult {
    /// The key-values under the prefix, sorted by key (byte order).
    pub kvs: Vec<KeyValue>,
    /// The store's revision at the snapshot. Watching from this revision
    /// (`after = revision`) continues exactly where the listing stops.
    pub revision: u64,
}

/// A condition of a [`Txn`], evaluated against the state before the
/// transaction.
///
/// As in etcd, a missing key compares as a key with version, create and mod
/// revision 0, except for [`Compare::ValueEquals`], which never holds for a
/// missing key (not even against an empty value).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Compare {
    /// The key does not exist.
    Absent(String),
    /// The key exists.
    Exists(String),
    /// The key's `mod_revision` equals the given revision (0: absent).
    ModRevision(String, u64),
    /// The key's `version` equals the given version (0: absent).
    Version(String, u64),
    /// No key starts with the prefix (in etcd: `version == 0` over the prefix
    /// range). The empty prefix means "the store is empty".
    PrefixEmpty(String),
    /// The key exists and its value equals the given bytes.
    ValueEquals(String, Vec<u8>),
}

impl Compare {
    /// [`Compare::Absent`].
    pub fn absent(key: impl Into<String>) -> Self {
        Compare::Absent(key.into())
    }

    /// [`Compare::Exists`].
    pub fn exists(key: impl Into<String>) -> Self {
        Compare::Exists(key.into())
    }

    /// [`Compare::ModRevision`].
    pub fn mod_revision(key: impl Into<String>, revision: u64) -> Self {
        Compare::ModRevision(key.into(), revision)
    }

    /// [`Compare::Version`].
    pub fn version(key: impl Into<String>, version: u64) -> Self {
        Compare::Version(key.into(), version)
    }

    /// [`Compare::PrefixEmpty`].
    pub fn prefix_empty(prefix: impl Into<String>) -> Self {
        Compare::PrefixEmpty(prefix.into())
    }

    /// [`Compare::ValueEquals`].
    pub fn value_equals(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Compare::ValueEquals(key.into(), value.into())
    }
}

/// A change applied by a [`Txn`] branch. Ops of one branch apply in order
/// and share the transaction's revision.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    /// Create or overwrite `key`. Always a change (even with an identical
    /// value): bumps `mod_revision` and `version`.
    Put {
        /// The key (must not be empty).
        key: String,
        /// The new value.
        value: Vec<u8>,
    },
    /// Delete `key`. Deleting a missing key is Ok and changes nothing.
    Delete {
        /// The key (must not be empty).
        key: String,
    },
    /// Delete every key starting with `prefix` (the empty prefix deletes
    /// everything). Deleting nothing is Ok and changes nothing.
    DeletePrefix {
        /// The prefix.
        prefix: String,
    },
}

impl Op {
    /// [`Op::Put`].
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Op::Put { key: key.into(), value: value.into() }
    }

    /// [`Op::Delete`].
    pub fn delete(key: impl Into<String>) -> Self {
        Op::Delete { key: key.into() }
    }

    /// [`Op::DeletePrefix`].
    pub fn delete_prefix(prefix: impl Into<String>) -> Self {
        Op::DeletePrefix { prefix: prefix.into() }
    }
}

/// An atomic transaction: if every compare holds, apply `success`, else
/// apply `failure`.
///
/// Within one branch a key may be put at most once, and a put key may not
/// also be deleted by the same branch (etcd's rule); otherwise the store
/// returns [`StoreError::InvalidTxn`](crate::StoreError::InvalidTxn) and
/// applies nothing.
///
/// ```
/// use tessera_store::{Compare, Op, Txn};
/// // create-if-absent, else read nothing and change nothing
/// let txn = Txn::new()
///     .when(Compare::absent("/networks/blue"))
///     .then(Op::put("/networks/blue", b"{}".to_vec()));
/// assert_eq!(txn.success.len(), 1);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Txn {
    /// Conditions; all must hold for `success` to apply. No compares: always
    /// success.
    pub compares: Vec<Compare>,
    /// Ops applied when all compares hold.
    pub success: Vec<Op>,
    /// Ops applied when at least one compare does not hold.
    pub failure: Vec<Op>,
}

impl Txn {
    /// An empty transaction (no compares: succeeds, changes nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a compare.
    pub fn when(mut self, compare: Compare) -> Self {
        self.compares.push(compare);
        self
    }

    /// Adds an op to the success branch.
    pub fn then(mut self, op: Op) -> Self {
        self.success.push(op);
        self
    }

    /// Adds ops to the success branch, in order.
    pub fn then_all(mut self, ops: impl IntoIterator<Item = Op>) -> Self {
        self.success.extend(ops);
        self
    }

    /// Adds an op to the failure branch.
    pub fn otherwise(mut self, op: Op) -> Self {
        self.failure.push(op);
        self
    }
}

/// What a [`Txn`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResult {
    /// True if all compares held and the success branch was applied.
    pub succeeded: bool,
    /// The store's revision after the transaction: the transaction's own
    /// revision if it changed anything, else the unchanged current revision.
    pub revision: u64,
    /// Indices (into `compares`) of the compares that did not hold, in
    /// increasing order. Empty iff `succeeded`.
    pub failed: Vec<usize>,
}

/// The kind of change an [`Event`] records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// The key was created or overwritten.
    Put,
    /// The key was deleted.
    Delete,
}

/// One change to one key, as delivered by
/// [`Store::events_since`](crate::Store::events_since) and
/// [`watch`](crate::watch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The revision of the transaction that made the change (equal to
    /// `kv.mod_revision`).
    pub revision: u64,
    /// Put or delete.
    pub kind: EventKind,
    /// For a put: the key-value as written. For a delete: the key, an empty
    /// value, `mod_revision` = the deletion's revision, `create_revision`
    /// and `version` 0.
    pub kv: KeyValue,
}

impl Event {
    /// A put event for `kv` (its revision is `kv.mod_revision`).
    pub fn put(kv: KeyValue) -> Self {
        Event { revision: kv.mod_revision, kind: EventKind::Put, kv }
    }

    /// A delete event for `key` at `revision`.
    pub fn delete(key: impl Into<String>, revision: u64) -> Self {
        Event {
            revision,
            kind: EventKind::Delete,
            kv: KeyValue { key: key.into(), value: Vec::new(), create_revision: 0, mod_revision: revision, version: 0 },
        }
    }
}

/// Tuning shared by all backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// The event log keeps at most this many events; older ones are
    /// discarded automatically (whole revisions at a time), after which
    /// watching from before them fails with
    /// [`StoreError::Compacted`](crate::StoreError::Compacted).
    /// Default: 100 000.
    pub retain_events: u64,
}

impl StoreOptions {
    /// The default number of retained events.
    pub const DEFAULT_RETAIN_EVENTS: u64 = 100_000;
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { retain_events: Self::DEFAULT_RETAIN_EVENTS }
    }
}
