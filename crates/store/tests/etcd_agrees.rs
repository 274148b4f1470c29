//! etcd agrees with the in-memory fake on arbitrary transaction sequences:
//! same results, same errors, same contents, same event log (including
//! compaction).
//!
//! Each case runs on a fresh single-member etcd (`tessera_testkit::etcd`);
//! without etcd installed the test fails saying so.

use proptest::prelude::*;
mod txns;

use tessera_store::{EtcdConfig, EtcdStore, MemStore, Store, StoreOptions};
use tessera_testkit::etcd::EtcdCluster;
use txns::{txn, KEYS};

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
