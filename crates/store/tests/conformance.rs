//! The conformance suite every [`Store`] backend must pass.
//!
//! Each spec in [`specs`] is written once against `Arc<dyn Store>` and run
//! against every backend by [`conformance_suite!`], so the test names read
//! `mem_store::<spec>`, `redb_store::<spec>` and `etcd_store::<spec>` (each
//! etcd spec on a fresh single-member etcd 3.4 of its own, started by
//! `tessera_testkit::etcd`; without etcd installed they fail saying so). A
//! property test then checks that the embedded backends agree on arbitrary
//! transaction sequences (`etcd_agrees.rs` does the same for etcd).

mod txns;

use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use tessera_store::{EtcdConfig, EtcdStore, MemStore, RedbStore, Store, StoreOptions};
use tessera_testkit::etcd::EtcdCluster;

/// A store under test, plus whatever must live as long as it.
pub struct Backend {
    pub store: Arc<dyn Store>,
    _dir: Option<TempDir>,
    _etcd: Option<EtcdCluster>,
}

/// Opens a fresh, empty store of one backend.
pub type Opener = fn(StoreOptions) -> Backend;

fn open_mem(options: StoreOptions) -> Backend {
    Backend { store: Arc::new(MemStore::with_options(options)), _dir: None, _etcd: None }
}

fn open_redb(options: StoreOptions) -> Backend {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = RedbStore::open_with(&dir.path().join("store.redb"), options).expect("open redb store");
    Backend { store: Arc::new(store), _dir: Some(dir), _etcd: None }
}

/// A fresh single-member etcd and a store on it. Called inside a
/// multi-threaded tokio runtime (the specs'), or outside any runtime.
fn open_etcd(options: StoreOptions) -> Backend {
    let etcd = EtcdCluster::start(1);
    let config = EtcdConfig { options, ..EtcdConfig::new(etcd.endpoints()) };
    let connect = async { EtcdStore::connect(&config).await.unwrap_or_else(|e| panic!("connect to etcd: {e}\n{}", etcd.logs())) };
    let store = match tokio::runtime::Handle::try_current() {
        Ok(handle) => tokio::task::block_in_place(|| handle.block_on(connect)),
        Err(_) => tokio::runtime::Runtime::new().expect("runtime").block_on(connect),
    };
    Backend { store: Arc::new(store), _dir: None, _etcd: Some(etcd) }
}

/// Upper bound for anything a test awaits, so a bug hangs no CI job.
const PATIENCE: Duration = Duration::from_secs(30);

macro_rules! conformance_suite {
    ($($spec:ident),* $(,)?) => {
        mod mem_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $spec() {
                    crate::specs::$spec(crate::open_mem).await;
                }
            )*
        }
        mod redb_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $spec() {
                    crate::specs::$spec(crate::open_redb).await;
                }
            )*
        }
        mod etcd_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $spec() {
                    crate::specs::$spec(crate::open_etcd).await;
                }
            )*
        }
    };
}

conformance_suite!(
    an_empty_store_is_at_revision_zero,
    each_changing_txn_increments_the_revision_by_exactly_one,
    all_changes_of_one_txn_share_its_revision,
    create_revision_mod_revision_and_version_track_the_key_history,
    a_txn_that_changes_nothing_creates_no_revision_and_no_event,
    deleting_a_missing_key_is_ok,
    absent_and_exists_compares,
    mod_revision_compare,
    version_compare,
    prefix_empty_compare,
    value_equals_compare,
    failed_lists_the_index_of_every_compare_that_did_not_hold,
    the_failure_branch_is_applied_when_a_compare_fails,
    delete_prefix_deletes_exactly_the_keys_under_the_prefix,
    range_is_sorted_by_key_and_limited_to_the_prefix,
    range_keys_gives_the_keys_and_revisions_without_values,
    range_reports_the_revision_of_its_snapshot,
    an_invalid_txn_is_rejected_and_changes_nothing,
    events_since_returns_later_events_in_order_and_filtered_by_prefix,
    events_since_pages_by_whole_revisions,
    a_paged_watch_delivers_a_long_history_once_in_order_then_live_events,
    a_delete_event_carries_the_key_and_the_deletion_revision,
    events_before_the_retention_window_are_compacted,
    compaction_discards_whole_revisions,
    subscribe_reports_the_latest_revision_before_txn_returns,
    watch_delivers_history_then_live_events,
    watch_only_delivers_keys_under_its_prefix,
    watch_reports_compaction_and_ends,
    a_watcher_of_a_quiet_prefix_is_not_compacted_away,
    watch_sees_every_write_of_concurrent_writers_once_in_order,
    list_then_watch_misses_nothing_and_repeats_nothing,
    concurrent_compare_and_swaps_each_see_the_writes_committed_before_them,
    concurrent_transactions_on_different_keys_each_get_their_own_answer,
);

mod specs {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use futures::stream::{BoxStream, StreamExt};
    use tessera_store::{watch, watch_paged, Compare, Event, EventKind, KeyValue, Op, Store, StoreError, StoreOptions, Txn};
    use tokio::time::timeout;

    use crate::{Opener, PATIENCE};

    fn open(open: Opener) -> (crate::Backend, Arc<dyn Store>) {
        let backend = open(StoreOptions::default());
        let store = Arc::clone(&backend.store);
        (backend, store)
    }

    async fn put(store: &Arc<dyn Store>, key: &str, value: &str) -> u64 {
        let result = store.txn(Txn::new().then(Op::put(key, value))).await.unwrap();
        assert!(result.succeeded);
        result.revision
    }

    async fn delete(store: &Arc<dyn Store>, key: &str) -> u64 {
        store.txn(Txn::new().then(Op::delete(key))).await.unwrap().revision
    }

    /// Runs `compare` alone and returns whether it held.
    async fn holds(store: &Arc<dyn Store>, compare: Compare) -> bool {
        let before = store.revision().await.unwrap();
        let result = store.txn(Txn::new().when(compare.clone())).await.unwrap();
        assert_eq!(result.revision, before, "a compare-only txn changes nothing");
        assert_eq!(result.failed.is_empty(), result.succeeded, "{compare:?}");
        result.succeeded
    }

    async fn next(stream: &mut BoxStream<'static, Result<Event, StoreError>>) -> Event {
        timeout(PATIENCE, stream.next()).await.expect("event in time").expect("stream open").expect("no error")
    }

    fn keys(events: &[Event]) -> Vec<(u64, EventKind, &str)> {
        events.iter().map(|e| (e.revision, e.kind, e.kv.key.as_str())).collect()
    }

    pub async fn an_empty_store_is_at_revision_zero(open: Opener) {
        let (_b, store) = self::open(open);
        assert_eq!(store.revision().await.unwrap(), 0);
        assert_eq!(store.get("a").await.unwrap(), None);
        let listing = store.range("").await.unwrap();
        assert!(listing.kvs.is_empty());
        assert_eq!(listing.revision, 0);
        assert!(store.events_since("", 0, usize::MAX).await.unwrap().is_empty());
    }

    pub async fn each_changing_txn_increments_the_revision_by_exactly_one(open: Opener) {
        let (_b, store) = self::open(open);
        assert_eq!(put(&store, "a", "1").await, 1);
        assert_eq!(put(&store, "b", "1").await, 2);
        assert_eq!(put(&store, "a", "2").await, 3);
        assert_eq!(delete(&store, "b").await, 4);
        assert_eq!(store.revision().await.unwrap(), 4);
    }

    pub async fn all_changes_of_one_txn_share_its_revision(open: Opener) {
        let (_b, store) = self::open(open);
        put(&store, "gone", "x").await;
        let result =
            store.txn(Txn::new().then(Op::put("b", "1")).then(Op::put("a", "1")).then(Op::delete("gone"))).await.unwrap();
        assert_eq!(result.revision, 2);
        assert_eq!(store.get("a").await.unwrap().unwrap().mod_revision, 2);
        assert_eq!(store.get("b").await.unwrap().unwrap().mod_revision, 2);
        let events = store.events_since("", 1, usize::MAX).await.unwrap();
        assert_eq!(
            keys(&events),
            [(2, EventKind::Put, "b"), (2, EventKind::Put, "a"), (2, EventKind::Delete, "gone")],
            "events of one txn come in op order"
        );
    }

    pub async fn create_revision_mod_revision_and_version_track_the_key_history(open: Opener) {
        let (_b, store) = self::open(open);
        let kv = |value: &str, create_revision, mod_revision, version| KeyValue {
            key: "k".into(),
            value: value.into(),
            create_revision,
            mod_revision,
            version,
        };
        put(&store, "k", "v1").await;
        assert_eq!(store.get("k").await.unwrap(), Some(kv("v1", 1, 1, 1)));
        put(&store, "other", "x").await;
        put(&store, "k", "v2").await;
        assert_eq!(store.get("k").await.unwrap(), Some(kv("v2", 1, 3, 2)));
        put(&store, "k", "v2").await;
        assert_eq!(store.get("k").await.unwrap(), Some(kv("v2", 1, 4, 3)), "an identical put is still a change");
        delete(&store, "k").await;
        assert_eq!(store.get("k").await.unwrap(), None);
        put(&store, "k", "again").await;
        assert_eq!(store.get("k").await.unwrap(), Some(kv("again", 6, 6, 1)), "re-creation starts over");
    }

    pub async fn a_txn_that_changes_nothing_creates_no_revision_and_no_event(open: Opener) {
        let (_b, store) = self::open(open);
        put(&store, "a", "1").await;
        let no_ops = [
            Txn::new(),
            Txn::new().then(Op::delete("missing")),
            Txn::new().then(Op::delete_prefix("nothing/")),
            Txn::new().when(Compare::absent("a")).then(Op::put("a", "2")),
        ];
        for txn in no_ops {
            let result = store.txn(txn.clone()).await.unwrap();
            assert_eq!(result.revision, 1, "{txn:?}");
        }
        assert_eq!(store.revision().await.unwrap(), 1);
        assert_eq!(keys(&store.events_since("", 0, usize::MAX).await.unwrap()), [(1, EventKind::Put, "a")]);
    }

    pub async fn deleting_a_missing_key_is_ok(open: Opener) {
        let (_b, store) = self::open(open);
        let result = store.txn(Txn::new().then(Op::delete("missing"))).await.unwrap();
        assert!(result.succeeded);
        assert_eq!(result.revision, 0);
    }

    pub async fn absent_and_exists_compares(open: Opener) {
        let (_b, store) = self::open(open);
        assert!(holds(&store, Compare::absent("k")).await);
        assert!(!holds(&store, Compare::exists("k")).await);
        put(&store, "k", "v").await;
        assert!(!holds(&store, Compare::absent("k")).await);
        assert!(holds(&store, Compare::exists("k")).await);
        delete(&store, "k").await;
        assert!(holds(&store, Compare::absent("k")).await);
    }

    pub async fn mod_revision_compare(open: Opener) {
        let (_b, store) = self::open(open);
        assert!(holds(&store, Compare::mod_revision("k", 0)).await, "a missing key has mod revision 0");
        put(&store, "k", "v").await;
        put(&store, "other", "v").await;
        assert!(holds(&store, Compare::mod_revision("k", 1)).await);
        assert!(!holds(&store, Compare::mod_revision("k", 2)).await);
        assert!(!holds(&store, Compare::mod_revision("k", 0)).await);
    }

    pub async fn version_compare(open: Opener) {
        let (_b, store) = self::open(open);
        assert!(holds(&store, Compare::version("k", 0)).await, "a missing key has version 0");
        put(&store, "k", "v").await;
        put(&store, "k", "v").await;
        assert!(holds(&store, Compare::version("k", 2)).await);
        assert!(!holds(&store, Compare::version("k", 1)).await);
    }

    pub async fn prefix_empty_compare(open: Opener) {
        let (_b, store) = self::open(open);
        assert!(holds(&store, Compare::prefix_empty("")).await, "an empty store is empty");
        put(&store, "net/a", "v").await;
        put(&store, "nets", "v").await;
        assert!(!holds(&store, Compare::prefix_empty("net/")).await);
        assert!(!holds(&store, Compare::prefix_empty("net/a")).await, "the prefix itself is under the prefix");
        assert!(holds(&store, Compare::prefix_empty("net/b")).await);
        assert!(holds(&store, Compare::prefix_empty("net/a/")).await);
        assert!(holds(&store, Compare::prefix_empty("m")).await);
        assert!(holds(&store, Compare::prefix_empty("o")).await);
        assert!(!holds(&store, Compare::prefix_empty("")).await);
        store.txn(Txn::new().then(Op::delete_prefix("net/"))).await.unwrap();
        assert!(holds(&store, Compare::prefix_empty("net/")).await);
    }

    pub async fn value_equals_compare(open: Opener) {
        let (_b, store) = self::open(open);
        assert!(!holds(&store, Compare::value_equals("k", "")).await, "never holds for a missing key");
        put(&store, "k", "v").await;
        assert!(holds(&store, Compare::value_equals("k", "v")).await);
        assert!(!holds(&store, Compare::value_equals("k", "w")).await);
        put(&store, "empty", "").await;
        assert!(holds(&store, Compare::value_equals("empty", "")).await);
    }

    pub async fn failed_lists_the_index_of_every_compare_that_did_not_hold(open: Opener) {
        let (_b, store) = self::open(open);
        put(&store, "a", "1").await;
        let result = store
            .txn(
                Txn::new()
                    .when(Compare::exists("a"))
                    .when(Compare::absent("a"))
                    .when(Compare::version("a", 1))
                    .when(Compare::exists("b"))
                    .then(Op::put("x", "success")),
            )
            .await
            .unwrap();
        assert!(!result.succeeded);
        assert_eq!(result.failed, [1, 3]);
        assert_eq!(store.get("x").await.unwrap(), None);

        let result = store.txn(Txn::new().when(Compare::exists("a")).when(Compare::absent("b"))).await.unwrap();
        assert!(result.succeeded);
        assert!(result.failed.is_empty());
    }

    pub async fn the_failure_branch_is_applied_when_a_compare_fails(open: Opener) {
        let (_b, store) = self::open(open);
        put(&store, "lock", "holder-1").await;
        let txn = Txn::new()
            .when(Compare::value_equals("lock", "holder-2"))
            .then(Op::put("granted", "yes"))
            .otherwise(Op::put("denied", "yes"))
            .otherwise(Op::delete("lock"));
        let result = store.txn(txn).await.unwrap();
        assert!(!result.succeeded);
        assert_eq!(result.revision, 2);
        assert_eq!(store.get("granted").await.unwrap(), None);
        assert_eq!(store.get("denied").await.unwrap().unwrap().mod_revision, 2);
        assert_eq!(store.get("lock").await.unwrap(), None);
    }

    pub async fn delete_prefix_deletes_exactly_the_keys_under_the_prefix(open: Opener) {
        let (_b, store) = self::open(open);
        for key in ["a", "a/1", "a/2", "a/2/x", "ab", "b"] {
            put(&store, key, "v").await;
        }
        let result = store.txn(Txn::new().then(Op::delete_prefix("a/"))).await.unwrap();
        assert_eq!(result.revision, 7);
        let left: Vec<_> = store.range("").await.unwrap().kvs.into_iter().map(|kv| kv.key).collect();
        assert_eq!(left, ["a", "ab", "b"]);
        assert_eq!(
            keys(&store.events_since("", 6, usize::MAX).await.unwrap()),
            [(7, EventKind::Delete, "a/1"), (7, EventKind::Delete, "a/2"), (7, EventKind::Delete, "a/2/x")]
        );
        store.txn(Txn::new().then(Op::delete_prefix(""))).await.unwrap();
        assert!(store.range("").await.unwrap().kvs.is_empty(), "the empty prefix deletes everything");
    }

    pub async fn range_is_sorted_by_key_and_limited_to_the_prefix(open: Opener) {
        let (_b, store) = self::open(open);
        for key in ["/n/c", "/m", "/n", "/n/a", "/nz", "/n/b/deep", "/o", "/n/é", "/n/Z"] {
            put(&store, key, key).await;
        }
        let under = |prefix: &'static str| {
            let store = Arc::clone(&store);
            async move {
                let kvs = store.range(prefix).await.unwrap().kvs;
                assert!(kvs.iter().all(|kv| kv.value == kv.key.as_bytes()));
                kvs.into_iter().map(|kv| kv.key).collect::<Vec<_>>()
            }
        };
        assert_eq!(under("/n/").await, ["/n/Z", "/n/a", "/n/b/deep", "/n/c", "/n/é"]);
        assert_eq!(under("/n").await, ["/n", "/n/Z", "/n/a", "/n/b/deep", "/n/c", "/n/é", "/nz"]);
        assert_eq!(under("/n/b").await, ["/n/b/deep"]);
        assert_eq!(under("/p").await, Vec::<String>::new());
        assert_eq!(under("").await.len(), 9);
    }

    pub async fn range_keys_gives_the_keys_and_revisions_without_values(open: Opener) {
        let (_b, store) = self::open(open);
        for key in ["/p/a", "/p/b", "/q"] {
            put(&store, key, "value").await;
        }
        put(&store, "/p/a", "again").await;
        let full = store.range("/p/").await.unwrap();
        let keys = store.range_keys("/p/").await.unwrap();
        assert_eq!(keys.revision, full.revision);
        assert_eq!(keys.kvs.len(), 2);
        for (k, f) in keys.kvs.iter().zip(&full.kvs) {
            assert!(k.value.is_empty(), "{}: no value", k.key);
            assert_eq!(
                (&k.key, k.create_revision, k.mod_revision, k.version),
                (&f.key, f.create_revision, f.mod_revision, f.version)
            );
        }
        assert_eq!((keys.kvs[0].mod_revision, keys.kvs[0].version), (4, 2));
    }

    pub async fn range_reports_the_revision_of_its_snapshot(open: Opener) {
        let (_b, store) = self::open(open);
        put(&store, "a", "1").await;
        put(&store, "b", "1").await;
        let listing = store.range("a").await.unwrap();
        assert_eq!(listing.revision, 2, "the store's revision, not the newest mod revision in the range");
        assert_eq!(listing.kvs.len(), 1);
    }

    pub async fn an_invalid_txn_is_rejected_and_changes_nothing(open: Opener) {
        let (_b, store) = self::open(open);
        put(&store, "a", "1").await;
        let invalid = [
            Txn::new().then(Op::put("b", "1")).then(Op::put("b", "2")),
            Txn::new().then(Op::put("b", "1")).then(Op::delete("b")),
            Txn::new().then(Op::delete_prefix("b")).then(Op::put("b/1", "1")),
            Txn::new().when(Compare::exists("zzz")).otherwise(Op::put("b", "1")).otherwise(Op::put("b", "1")),
            Txn::new().then(Op::put("", "1")),
        ];
        for txn in invalid {
            let err = store.txn(txn.clone()).await.unwrap_err();
            assert!(matches!(err, StoreError::InvalidTxn { .. }), "{txn:?}: {err}");
        }
        assert_eq!(store.revision().await.unwrap(), 1);
        assert_eq!(store.range("").await.unwrap().kvs.len(), 1);
    }

    pub async fn events_since_returns_later_events_in_order_and_filtered_by_prefix(open: Opener) {
        let (_b, store) = self::open(open);
        put(&store, "a/1", "x").await; // 1
        put(&store, "b/1", "x").await; // 2
        put(&store, "a/2", "x").await; // 3
        delete(&store, "a/1").await; // 4
        put(&store, "a/1", "y").await; // 5
        assert_eq!(
            keys(&store.events_since("a/", 0, usize::MAX).await.unwrap()),
            [(1, EventKind::Put, "a/1"), (3, EventKind::Put, "a/2"), (4, EventKind::Delete, "a/1"), (5, EventKind::Put, "a/1"),]
        );
        assert_eq!(
            keys(&store.events_since("a/", 3, usize::MAX).await.unwrap()),
            [(4, EventKind::Delete, "a/1"), (5, EventKind::Put, "a/1")],
            "only events after the given revision"
        );
        assert_eq!(store.events_since("", 0, usize::MAX).await.unwrap().len(), 5);
        assert!(store.events_since("", 5, usize::MAX).await.unwrap().is_empty());
        assert!(store.events_since("", 99, usize::MAX).await.unwrap().is_empty(), "the future is empty, not an error");
        let put_event = &store.events_since("a/1", 4, usize::MAX).await.unwrap()[0];
        assert_eq!(put_event.kv, store.get("a/1").await.unwrap().unwrap(), "a put event carries the full record");
    }

    pub async fn events_since_pages_by_whole_revisions(open: Opener) {
        let (_b, store) = self::open(open);
        put(&store, "a", "1").await; // 1
        store.txn(Txn::new().then(Op::put("b", "1")).then(Op::put("c", "1")).then(Op::put("d", "1"))).await.unwrap(); // 2
        put(&store, "e", "1").await; // 3
        put(&store, "f", "1").await; // 4
        let page = |after, limit| {
            let store = Arc::clone(&store);
            async move {
                let events = store.events_since("", after, limit).await.unwrap();
                events.iter().map(|e| (e.revision, e.kv.key.clone())).collect::<Vec<_>>()
            }
        };
        let k = |r: u64, key: &str| (r, key.to_string());
        assert_eq!(page(0, 1).await, [k(1, "a")], "one event, one revision");
        assert_eq!(
            page(0, 2).await,
            [k(1, "a"), k(2, "b"), k(2, "c"), k(2, "d")],
            "the revision that reaches the limit is whole"
        );
        assert_eq!(page(1, 1).await, [k(2, "b"), k(2, "c"), k(2, "d")], "a revision larger than the limit comes whole");
        assert_eq!(page(2, 2).await, [k(3, "e"), k(4, "f")]);
        assert_eq!(page(2, 3).await, [k(3, "e"), k(4, "f")], "fewer than the limit: nothing more");
        assert_eq!(page(4, 1).await, []);
    }

    pub async fn a_paged_watch_delivers_a_long_history_once_in_order_then_live_events(open: Opener) {
        let (_b, store) = self::open(open);
        for i in 0..50 {
            put(&store, &format!("k{i:02}"), "v").await;
        }
        store.txn(Txn::new().then(Op::put("x", "1")).then(Op::put("y", "1")).then(Op::put("z", "1"))).await.unwrap();
        let mut stream = watch_paged(Arc::clone(&store), String::new(), 10, 4);
        let mut seen = Vec::new();
        for _ in 0..43 {
            let e = next(&mut stream).await;
            seen.push((e.revision, e.kv.key));
        }
        let mut want: Vec<(u64, String)> = (10..50).map(|i| (i as u64 + 1, format!("k{i:02}"))).collect();
        want.extend(["x", "y", "z"].map(|k| (51, k.to_string())));
        assert_eq!(seen, want);
        assert!(timeout(std::time::Duration::from_millis(50), stream.next()).await.is_err(), "nothing more until the next write");
        put(&store, "live", "1").await;
        assert_eq!(next(&mut stream).await.kv.key, "live");
    }

    pub async fn a_delete_event_carries_the_key_and_the_deletion_revision(open: Opener) {
        let (_b, store) = self::open(open);
        put(&store, "k", "value").await;
        delete(&store, "k").await;
        let events = store.events_since("", 1, usize::MAX).await.unwrap();
        assert_eq!(
            events,
            [Event {
                revision: 2,
                kind: EventKind::Delete,
                kv: KeyValue { key: "k".into(), value: vec![], create_revision: 0, mod_revision: 2, version: 0 },
            }]
        );
    }

    pub async fn events_before_the_retention_window_are_compacted(open: Opener) {
        let backend = open(StoreOptions { retain_events: 5 });
        let store = Arc::clone(&backend.store);
        for i in 1..=10 {
            assert_eq!(put(&store, &format!("k{i}"), "v").await, i);
        }
        for after in [0, 4] {
            match store.events_since("", after, usize::MAX).await {
                Err(StoreError::Compacted { requested, compacted }) => {
                    assert_eq!((requested, compacted), (after, 5));
                }
                other => panic!("after {after}: expected Compacted, got {other:?}"),
            }
        }
        let retained = store.events_since("", 5, usize::MAX).await.unwrap();
        assert_eq!(retained.iter().map(|e| e.revision).collect::<Vec<_>>(), [6, 7, 8, 9, 10]);
        assert_eq!(store.range("").await.unwrap().kvs.len(), 10, "compaction drops events, never keys");
    }

    pub async fn compaction_discards_whole_revisions(open: Opener) {
        let backend = open(StoreOptions { retain_events: 3 });
        let store = Arc::clone(&backend.store);
        store.txn(Txn::new().then(Op::put("a", "1")).then(Op::put("b", "1"))).await.unwrap();
        store.txn(Txn::new().then(Op::put("c", "1")).then(Op::put("d", "1"))).await.unwrap();
        // 4 events > 3: keeping 3 would split revision 1, so all of it goes.
        assert!(matches!(store.events_since("", 0, usize::MAX).await, Err(StoreError::Compacted { requested: 0, compacted: 1 })));
        assert_eq!(
            keys(&store.events_since("", 1, usize::MAX).await.unwrap()),
            [(2, EventKind::Put, "c"), (2, EventKind::Put, "d")]
        );
    }

    pub async fn subscribe_reports_the_latest_revision_before_txn_returns(open: Opener) {
        let (_b, store) = self::open(open);
        let mut revisions = store.subscribe();
        assert_eq!(*revisions.borrow_and_update(), 0);
        put(&store, "a", "1").await;
        assert!(revisions.has_changed().unwrap());
        assert_eq!(*revisions.borrow_and_update(), 1);
        store.txn(Txn::new().then(Op::delete("missing"))).await.unwrap();
        assert!(!revisions.has_changed().unwrap(), "a txn that changes nothing notifies nobody");
    }

    pub async fn watch_delivers_history_then_live_events(open: Opener) {
        let (_b, store) = self::open(open);
        put(&store, "a", "1").await;
        put(&store, "b", "1").await;
        put(&store, "c", "1").await;
        let mut stream = watch(Arc::clone(&store), String::new(), 1);
        assert_eq!(next(&mut stream).await.kv.key, "b");
        assert_eq!(next(&mut stream).await.kv.key, "c");
        assert!(timeout(std::time::Duration::from_millis(50), stream.next()).await.is_err(), "nothing more until the next write");
        put(&store, "d", "1").await;
        let live = next(&mut stream).await;
        assert_eq!((live.revision, live.kv.key.as_str()), (4, "d"));
        delete(&store, "a").await;
        let live = next(&mut stream).await;
        assert_eq!((live.revision, live.kind), (5, EventKind::Delete));
    }

    pub async fn watch_only_delivers_keys_under_its_prefix(open: Opener) {
        let (_b, store) = self::open(open);
        let stream = watch(Arc::clone(&store), "a/".into(), 0);
        for i in 0..10 {
            put(&store, &format!("{}/{i}", if i % 2 == 0 { "a" } else { "b" }), "v").await;
        }
        let events: Vec<_> = timeout(PATIENCE, stream.take(5).collect::<Vec<_>>()).await.unwrap();
        let seen: Vec<_> = events.into_iter().map(|e| e.unwrap().kv.key).collect();
        assert_eq!(seen, ["a/0", "a/2", "a/4", "a/6", "a/8"]);
    }

    pub async fn watch_reports_compaction_and_ends(open: Opener) {
        let backend = open(StoreOptions { retain_events: 2 });
        let store = Arc::clone(&backend.store);
        for i in 0..5 {
            put(&store, &format!("k{i}"), "v").await;
        }
        let mut stream = watch(Arc::clone(&store), String::new(), 0);
        let first = timeout(PATIENCE, stream.next()).await.unwrap().unwrap();
        assert!(matches!(first, Err(StoreError::Compacted { requested: 0, compacted: 3 })), "{first:?}");
        assert!(timeout(PATIENCE, stream.next()).await.unwrap().is_none(), "the stream ends after an error");
    }

    pub async fn a_watcher_of_a_quiet_prefix_is_not_compacted_away(open: Opener) {
        let backend = open(StoreOptions { retain_events: 30 });
        let store = Arc::clone(&backend.store);
        let mut stream = watch(Arc::clone(&store), "quiet/".into(), 0);
        for i in 0..100 {
            put(&store, &format!("busy/{i}"), "v").await;
            // Let the watcher look (and find nothing) now and then, long
            // enough for a store across the network (etcd) to answer.
            if i % 5 == 0 {
                if let Ok(got) = timeout(std::time::Duration::from_millis(200), stream.next()).await {
                    panic!("the quiet watcher got {got:?} after busy/{i}");
                }
            }
        }
        put(&store, "quiet/x", "v").await;
        let event = next(&mut stream).await;
        assert_eq!((event.revision, event.kv.key.as_str()), (101, "quiet/x"));
    }

    pub async fn watch_sees_every_write_of_concurrent_writers_once_in_order(open: Opener) {
        const WRITERS: u64 = 8;
        const PUTS: u64 = 100;
        let (_b, store) = self::open(open);
        let stream = watch(Arc::clone(&store), String::new(), 0);
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    for i in 0..PUTS {
                        put(&store, &format!("w{w}/{i:03}"), "v").await;
                    }
                })
            })
            .collect();
        let events =
            timeout(PATIENCE, stream.take((WRITERS * PUTS) as usize).collect::<Vec<_>>()).await.expect("all events in time");
        for writer in writers {
            writer.await.unwrap();
        }
        // Concurrent transactions on different keys may share a revision
        // (a backend may commit them together): every revision up to the
        // store's, in order, none skipped.
        let revisions: Vec<u64> = events.iter().map(|e| e.as_ref().unwrap().revision).collect();
        let mut distinct = revisions.clone();
        distinct.dedup();
        let head = store.revision().await.unwrap();
        assert_eq!(distinct, (1..=head).collect::<Vec<_>>(), "every revision, in order, none skipped");
        let mut per_writer: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for event in events {
            let key = event.unwrap().kv.key;
            per_writer.entry(key[..2].to_owned()).or_default().push(key);
        }
        for (_, keys) in per_writer {
            assert!(keys.windows(2).all(|w| w[0] < w[1]), "each writer's puts in its order");
            assert_eq!(keys.len() as u64, PUTS);
        }
    }

    /// Many writers at once (a backend may commit them together): a create
    /// guarded by absence succeeds once, a counter advanced by compare and
    /// swap loses no increment, and an invalid transaction among them is
    /// refused without failing the others.
    pub async fn concurrent_compare_and_swaps_each_see_the_writes_committed_before_them(open: Opener) {
        const WRITERS: u64 = 32;
        const INCREMENTS: u64 = 10;
        let (_b, store) = self::open(open);
        put(&store, "counter", "0").await;
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let claim = Txn::new().when(Compare::absent("owner")).then(Op::put("owner", w.to_string()));
                    let claimed = store.txn(claim).await.unwrap().succeeded;
                    let invalid = Txn::new().then(Op::put(format!("x{w}"), "1")).then(Op::delete(format!("x{w}")));
                    assert!(matches!(store.txn(invalid).await, Err(StoreError::InvalidTxn { .. })));
                    let mut done = 0;
                    while done < INCREMENTS {
                        let kv = store.get("counter").await.unwrap().unwrap();
                        let n: u64 = String::from_utf8(kv.value.clone()).unwrap().parse().unwrap();
                        let swap = Txn::new()
                            .when(Compare::mod_revision("counter", kv.mod_revision))
                            .then(Op::put("counter", (n + 1).to_string()));
                        if store.txn(swap).await.unwrap().succeeded {
                            done += 1;
                        }
                    }
                    claimed
                })
            })
            .collect();
        let mut claims = 0;
        for w in writers {
            claims += usize::from(w.await.unwrap());
        }
        assert_eq!(claims, 1, "exactly one create of an absent key succeeds");
        let counter = store.get("counter").await.unwrap().unwrap();
        assert_eq!(String::from_utf8(counter.value).unwrap(), (WRITERS * INCREMENTS).to_string(), "no increment lost");
        assert_eq!(store.revision().await.unwrap(), 1 + 1 + WRITERS * INCREMENTS, "one revision per change");
        assert!(store.range("x").await.unwrap().kvs.is_empty(), "nothing of an invalid transaction");
    }

    /// Many creates at once, on different keys, half of them of keys that
    /// exist (a backend may commit them together, and must then answer each
    /// for itself): those of absent keys succeed, the others fail naming
    /// their compare and change nothing.
    pub async fn concurrent_transactions_on_different_keys_each_get_their_own_answer(open: Opener) {
        const WRITERS: usize = 64;
        let (_b, store) = self::open(open);
        for w in (0..WRITERS).step_by(2) {
            put(&store, &format!("k/{w:02}"), "old").await;
        }
        let before = store.revision().await.unwrap();
        // All at once: each creates k/NN if "shared" exists and k/NN does not.
        let creates = |store: &Arc<dyn Store>| {
            let tasks: Vec<_> = (0..WRITERS)
                .map(|w| {
                    let store = Arc::clone(store);
                    tokio::spawn(async move {
                        let key = format!("k/{w:02}");
                        let create = Txn::new()
                            .when(Compare::exists("shared"))
                            .when(Compare::absent(key.clone()))
                            .then(Op::put(key.clone(), "new"))
                            .then(Op::put(format!("index/{w:02}"), key));
                        (w, store.txn(create).await.unwrap())
                    })
                })
                .collect();
            futures::future::join_all(tasks)
        };
        // "shared", which none writes, is absent: all fail first.
        for answer in creates(&store).await {
            let (w, result) = answer.unwrap();
            let failed: &[usize] = if w % 2 == 0 { &[0, 1] } else { &[0] };
            assert!(!result.succeeded && result.failed == failed, "k/{w:02}: {result:?}");
        }
        put(&store, "shared", "x").await;
        for answer in creates(&store).await {
            let (w, result) = answer.unwrap();
            if w % 2 == 0 {
                assert!(!result.succeeded && result.failed == [1], "k/{w:02} existed: {result:?}");
            } else {
                assert!(result.succeeded && result.failed.is_empty(), "k/{w:02} was absent: {result:?}");
                assert!(result.revision > before + 1, "k/{w:02}: {result:?}");
            }
        }
        for w in 0..WRITERS {
            let value = store.get(&format!("k/{w:02}")).await.unwrap().unwrap().value;
            assert_eq!(value, if w % 2 == 0 { b"old".to_vec() } else { b"new".to_vec() }, "k/{w:02}");
        }
        let index = store.range("index/").await.unwrap().kvs;
        let odd: Vec<String> = (1..WRITERS).step_by(2).map(|w| format!("index/{w:02}")).collect();
        assert_eq!(index.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(), odd, "only the successful creates wrote");
    }

    pub async fn list_then_watch_misses_nothing_and_repeats_nothing(open: Opener) {
        let (_b, store) = self::open(open);
        let writer = {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for i in 0..300 {
                    put(&store, &format!("k/{}", i % 50), &i.to_string()).await;
                    if i % 7 == 0 {
                        delete(&store, &format!("k/{}", (i + 3) % 50)).await;
                    }
                }
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        // The mirror: list, then apply watched events on top.
        let listing = store.range("k/").await.unwrap();
        let mut mirror: BTreeMap<String, KeyValue> = listing.kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
        let mut stream = watch(Arc::clone(&store), "k/".into(), listing.revision);
        writer.await.unwrap();
        let last = store.revision().await.unwrap();
        let mut at = listing.revision;
        while at < last {
            let event = next(&mut stream).await;
            assert!(event.revision > at, "no duplicate, no reordering");
            at = event.revision;
            match event.kind {
                EventKind::Put => {
                    mirror.insert(event.kv.key.clone(), event.kv);
                }
                EventKind::Delete => {
                    mirror.remove(&event.kv.key);
                }
            }
        }
        let truth: BTreeMap<String, KeyValue> =
            store.range("k/").await.unwrap().kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
        assert_eq!(mirror, truth);
    }
}

/// Both backends agree on arbitrary transaction sequences: same results,
/// same errors, same final contents, same event log (including compaction).
mod backends_agree {
    use proptest::prelude::*;
    use tessera_store::StoreOptions;

    use crate::txns::{txn, KEYS};

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        #[test]
        fn on_any_sequence_of_transactions(txns in proptest::collection::vec(txn(), 1..25), retain in 1..12u64) {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
            runtime.block_on(async {
                let options = StoreOptions { retain_events: retain };
                let mem = crate::open_mem(options);
                let redb = crate::open_redb(options);
                for txn in txns {
                    let a = mem.store.txn(txn.clone()).await.map_err(|e| e.to_string());
                    let b = redb.store.txn(txn.clone()).await.map_err(|e| e.to_string());
                    prop_assert_eq!(a, b, "{:?}", txn);
                }
                for prefix in KEYS {
                    prop_assert_eq!(mem.store.range(prefix).await.unwrap(), redb.store.range(prefix).await.unwrap());
                }
                let head = mem.store.revision().await.unwrap();
                prop_assert_eq!(head, redb.store.revision().await.unwrap());
                for after in 0..=head {
                    for prefix in ["", "a/", "b"] {
                        for limit in [1, 3, usize::MAX] {
                            let a = mem.store.events_since(prefix, after, limit).await.map_err(|e| e.to_string());
                            let b = redb.store.events_since(prefix, after, limit).await.map_err(|e| e.to_string());
                            prop_assert_eq!(a, b);
                        }
                    }
                }
                Ok(())
            })?;
        }
    }
}
