//! Arbitrary transactions over a few overlapping keys, for the property
//! tests that compare backends (`conformance`, `etcd_agrees`).

use proptest::prelude::*;
use tessera_store::{Compare, Op, Txn};

/// The keys transactions touch (also every prefix the tests list).
pub const KEYS: &[&str] = &["a", "a/1", "a/2", "a/2/x", "ab", "b", "b/é", ""];

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

/// One transaction: up to 2 compares, 3 success and 2 failure ops.
pub fn txn() -> impl Strategy<Value = Txn> {
    (proptest::collection::vec(compare(), 0..3), proptest::collection::vec(op(), 0..4), proptest::collection::vec(op(), 0..3))
        .prop_map(|(compares, success, failure)| Txn { compares, success, failure })
}
