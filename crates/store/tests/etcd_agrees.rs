//! etcd agrees with the in-memory fake on arbitrary transaction sequences:
//! same results, same errors, same contents, same event log (including
//! compaction).
//!
//! Each case runs on a fresh single-member etcd (`tessera_testkit::etcd`);
//! without etcd installed the test fails saying so.

use proptest::prelude::*;
use tessera_store::{Compare, EtcdConfig, EtcdStore, MemStore, Op, Store, StoreOptions, Txn};
use tessera_testkit::etcd::EtcdCluster;

const KEYS: &[&str] = &["a", "a/1", "a/2", "a/2/x", "ab", "b", "b/é", ""];

fn key() -> impl Strategy<Value = String> {
    proptest::sample::select(KEYS).prop_map(str::to_owned)
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    proptest::sample::select(vec![b"".to_vec(), b"1".to_vec(), b"2".to_vec()])
}

fn compare() -> impl Strategy<Value = Compare> {
    prop_oneof![
        key().prop_map(Compare::Absent),
        key().prop_map(Compare::Exists),
        (key(), 0..6u64).prop_map(|(k, r)| Compare::ModRevision(k, r)),
        (key(), 0..3u64).prop_map(|(k, v)| Compare::Version(k, v)),
        key().prop_map(Compare::PrefixEmpty),
        (key(), value()).prop_map(|(k, v)| Compare::ValueEquals(k, v)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (key(), value()).prop_map(|(key, value)| Op::Put { key, value }),
        1 => key().prop_map(|key| Op::Delete { key }),
        1 => key().prop_map(|prefix| Op::DeletePrefix { prefix }),
    ]
}

fn txn() -> impl Strategy<Value = Txn> {
    (proptest::collection::vec(compare(), 0..3), proptest::collection::vec(op(), 0..4), proptest::collection::vec(op(), 0..3))
        .prop_map(|(compares, success, failure)| Txn { compares, success, failure })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]
    #[test]
    fn etcd_agrees_with_the_fake_on_any_sequence_of_transactions(txns in proptest::collection::vec(txn(), 1..20), retain in 1..12u64) {
        let etcd = EtcdCluster::start(1);
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async {
            let options = StoreOptions { retain_events: retain };
            let mem = MemStore::with_options(options);
            let config = EtcdConfig { options, ..EtcdConfig::new(etcd.endpoints()) };
            let real = EtcdStore::connect(&config).await.unwrap_or_else(|e| panic!("connect to etcd: {e}\n{}", etcd.logs()));
            for txn in txns {
                let a = mem.txn(txn.clone()).await.map_err(|e| e.to_string());
                let b = real.txn(txn.clone()).await.map_err(|e| e.to_string());
                prop_assert_eq!(a, b, "{:?}", txn);
            }
            for prefix in KEYS {
                prop_assert_eq!(mem.range(prefix).await.unwrap(), real.range(prefix).await.unwrap());
            }
            let head = mem.revision().await.unwrap();
            prop_assert_eq!(head, real.revision().await.unwrap());
            for after in 0..=head {
                for prefix in ["", "a/", "b"] {
                    for limit in [1, 3, usize::MAX] {
                        let a = mem.events_since(prefix, after, limit).await.map_err(|e| e.to_string());
                        let b = real.events_since(prefix, after, limit).await.map_err(|e| e.to_string());
                        prop_assert_eq!(a, b, "after {} prefix {:?} limit {}", after, prefix, limit);
                    }
                }
            }
            Ok(())
        })?;
    }
}
