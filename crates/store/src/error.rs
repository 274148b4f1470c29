//! The one error type every [`Store`](crate::Store) backend returns.
//!
//! Variants carry what a caller needs to act: the key or path involved and
//! the underlying cause (kept as a `source`, so `{:#}`-style reporters and
//! `anyhow` chains show it). Backend-specific error types never appear in the
//! public API, so a future etcd backend fits behind the same enum.

use std::path::PathBuf;

/// A boxed underlying cause, as kept in [`StoreError::Backend`] and
/// [`StoreError::Open`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong talking to a [`Store`](crate::Store).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed while performing `op` (a short description such as
    /// `"commit write transaction"`). Whether a failed
    /// [`Store::txn`](crate::Store::txn) was applied is unknown to the
    /// caller in general (as with an etcd request that timed out); the
    /// embedded backend never applies a transaction it reports as failed.
    #[error("store backend failed to {op}: {source}")]
    Backend {
        /// What the store was doing.
        op: &'static str,
        /// The backend's own error.
        #[source]
        source: BoxError,
    },

    /// The events after `requested` are no longer retained: the event log
    /// was compacted up to and including revision `compacted`. A watcher
    /// must re-list with [`Store::range`](crate::Store::range) and watch
    /// again from the revision that `range` returned.
    #[error(
        "revision {requested} is compacted (events up to revision {compacted} were discarded); \
         re-list with range() and watch from its revision"
    )]
    Compacted {
        /// The `after` revision that was asked for.
        requested: u64,
        /// The newest revision whose events were discarded.
        compacted: u64,
    },

    /// The store file is already open, by another process or by another
    /// handle in this process. Only one writer may hold it.
    #[error("store file {} is already open by another process (or another handle in this one)", path.display())]
    AlreadyOpen {
        /// The file that was asked for.
        path: PathBuf,
    },

    /// The store file could not be opened (not a store file, unreadable,
    /// unrecoverable after a crash, ...).
    #[error("cannot open store file {}: {source}", path.display())]
    Open {
        /// The file that was asked for.
        path: PathBuf,
        /// The backend's own error.
        #[source]
        source: BoxError,
    },

    /// A stored record could not be decoded.
    #[error("corrupt store record {key:?}: {reason}")]
    Corrupt {
        /// The key (or table/meta key) whose record is unreadable.
        key: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The transaction is malformed and was not evaluated, e.g. it puts the
    /// same key twice, or puts a key that the same branch also deletes.
    /// etcd rejects such requests ("duplicate key given in txn request"),
    /// and so do all backends here.
    #[error("invalid transaction on key {key:?}: {reason}")]
    InvalidTxn {
        /// The offending key (or prefix).
        key: String,
        /// Why the transaction is rejected.
        reason: String,
    },

    /// The disk holding the store is full (or the quota reached): nothing
    /// was written. The store works again once there is space.
    #[error("the disk holding {} is full: {op} failed and nothing was written", path.display())]
    NoSpace {
        /// The store file.
        path: PathBuf,
        /// What the store was doing.
        op: &'static str,
    },

    /// The store's servers cannot serve the request: every endpoint is down
    /// or unreachable, the cluster has no quorum (no leader), or no answer
    /// came within the store's timeout. Nothing is known to be written: as
    /// for [`StoreError::Backend`], a [`Store::txn`](crate::Store::txn) that
    /// failed this way may or may not have been applied. Retry once the
    /// cluster is back; the store reconnects by itself.
    #[error("the store is unavailable ({endpoints}): {reason}")]
    Unavailable {
        /// The endpoints the store talks to, comma-separated.
        endpoints: String,
        /// What failed: no leader, connection refused, timeout, ...
        reason: String,
    },

    /// A failure injected by a test through [`MemStore`](crate::MemStore).
    /// Real backends never return it.
    #[error("injected failure: {reason}")]
    Injected {
        /// Free text from the test that injected it.
        reason: String,
    },
}

impl StoreError {
    /// Wraps a backend error raised while doing `op`.
    pub fn backend(op: &'static str, source: impl Into<BoxError>) -> Self {
        StoreError::Backend { op, source: source.into() }
    }

    /// An [`StoreError::Injected`] error with the given text.
    pub fn injected(reason: impl Into<String>) -> Self {
        StoreError::Injected { reason: reason.into() }
    }

    /// True for [`StoreError::Unavailable`]: the store's servers cannot
    /// serve now; the same request may succeed later.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }

    /// True for [`StoreError::Compacted`]: the caller must re-list.
    pub fn is_compacted(&self) -> bool {
        matches!(self, StoreError::Compacted { .. })
    }
}
