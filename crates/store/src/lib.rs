//! Tessera's revisioned key-value store, shaped like etcd v3.
//!
//! The controller keeps all its objects here. Callers program against the
//! [`Store`] trait, whose semantics are exactly etcd's, so the embedded
//! backend can later be swapped for etcd without touching them:
//!
//! * a global revision, incremented by one per transaction that changes
//!   something, and per-key revisions and versions ([`KeyValue`]);
//! * atomic compare-and-swap transactions ([`Txn`]: [`Compare`]s, then the
//!   success or failure [`Op`]s), reporting which compares failed;
//! * consistent reads ([`Store::get`], [`Store::range`]);
//! * a durable event log with automatic compaction
//!   ([`Store::events_since`]) and [`watch`] streams built on it.
//!
//! # Watch contract
//!
//! A client that mirrors part of the store:
//!
//! 1. lists with [`Store::range`], a consistent snapshot at
//!    [`RangeResult::revision`];
//! 2. watches with `watch(store, prefix, listing.revision)`: every change
//!    after the snapshot, in revision order, with no gap and no duplicate;
//! 3. when the stream yields an error — [`StoreError::Compacted`] if the
//!    watcher fell behind [`StoreOptions::retain_events`] — the stream ends;
//!    it goes back to 1.
//!
//! Backends:
//!
//! * [`RedbStore`]: one crash-safe file (redb); every acknowledged write is
//!   fsynced;
//! * [`EtcdStore`]: an etcd v3 cluster, for a control plane on a
//!   distributed engine (revisions, compares and watch map as documented on
//!   the type);
//! * [`MemStore`]: the in-memory fake, with error injection for tests.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use tessera_store::{Compare, MemStore, Op, Store, Txn};
//!
//! let store = MemStore::new();
//! let created = store
//!     .txn(Txn::new().when(Compare::absent("/a")).then(Op::put("/a", "1")))
//!     .await
//!     .unwrap();
//! assert!(created.succeeded);
//! assert_eq!(created.revision, 1);
//!
//! // The same transaction again fails its compare and changes nothing.
//! let again = store
//!     .txn(Txn::new().when(Compare::absent("/a")).then(Op::put("/a", "1")))
//!     .await
//!     .unwrap();
//! assert_eq!((again.succeeded, again.revision, again.failed), (false, 1, vec![0]));
//! # });
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod codec;
mod engine;
mod error;
mod etcd_conv;
mod etcd_events;
mod etcd_group;
mod etcd_recent;
mod etcd_store;
mod etcd_txn;
mod mem;
mod redb_store;
mod store;
mod types;

pub use error::{BoxError, StoreError};
pub use etcd_store::{EtcdConfig, EtcdStore};
pub use mem::MemStore;
pub use redb_store::RedbStore;
pub use store::{watch, watch_paged, Store, WATCH_PAGE};
pub use types::{Compare, Event, EventKind, KeyValue, Op, RangeResult, StoreOptions, Txn, TxnResult};
