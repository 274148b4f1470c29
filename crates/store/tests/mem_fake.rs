//! What only the fake promises: injected failures, for testing callers.

use std::sync::Arc;

use futures::StreamExt;
use tessera_store::{watch, MemStore, Op, Store, StoreError, Txn};

fn put(key: &str) -> Txn {
    Txn::new().then(Op::put(key, "v"))
}

#[tokio::test]
async fn fail_next_txn_fails_exactly_the_next_txn_and_applies_nothing() {
    let store = MemStore::new();
    store.fail_next_txn(StoreError::injected("disk full"));
    let err = store.txn(put("a")).await.unwrap_err();
    assert!(matches!(&err, StoreError::Injected { reason } if reason == "disk full"), "{err}");
    assert_eq!(store.revision().await.unwrap(), 0);
    assert_eq!(store.get("a").await.unwrap(), None);

    assert_eq!(store.txn(put("a")).await.unwrap().revision, 1, "only one txn fails");
}

#[tokio::test]
async fn fail_next_txn_after_apply_applies_the_txn_but_reports_an_error() {
    let store = MemStore::new();
    let mut revisions = store.subscribe();
    store.fail_next_txn_after_apply(StoreError::injected("timeout"));
    assert!(store.txn(put("a")).await.is_err());
    assert_eq!(store.get("a").await.unwrap().unwrap().mod_revision, 1, "the change happened");
    assert_eq!(*revisions.borrow_and_update(), 1, "and watchers were told");
}

#[tokio::test]
async fn injected_txn_failures_are_returned_in_injection_order() {
    let store = MemStore::new();
    store.fail_next_txn(StoreError::injected("first"));
    store.fail_next_txn_after_apply(StoreError::injected("second"));
    let first = store.txn(put("a")).await.unwrap_err();
    let second = store.txn(put("b")).await.unwrap_err();
    assert_eq!((first.to_string(), second.to_string()), ("injected failure: first".into(), "injected failure: second".into()));
    assert_eq!(store.get("a").await.unwrap(), None);
    assert!(store.get("b").await.unwrap().is_some());
}

#[tokio::test]
async fn fail_next_read_fails_exactly_the_next_read() {
    let store = MemStore::new();
    store.txn(put("a")).await.unwrap();
    store.fail_next_read(StoreError::injected("read"));
    assert!(store.range("").await.is_err());
    assert_eq!(store.range("").await.unwrap().kvs.len(), 1);
    store.fail_next_read(StoreError::injected("read"));
    store.txn(put("b")).await.expect("writes are not affected");
    assert!(store.get("a").await.is_err());
}

#[tokio::test]
async fn an_injected_read_failure_ends_a_watch_with_that_error() {
    let store = MemStore::new();
    store.fail_next_read(StoreError::injected("watch broke"));
    let mut stream = watch(Arc::new(store.clone()), String::new(), 0);
    let err = stream.next().await.unwrap().unwrap_err();
    assert!(matches!(err, StoreError::Injected { .. }), "{err}");
    assert!(stream.next().await.is_none());
}

#[tokio::test]
async fn clones_share_one_store() {
    let store = MemStore::new();
    let clone = store.clone();
    clone.txn(put("a")).await.unwrap();
    assert_eq!(store.revision().await.unwrap(), 1);
}
