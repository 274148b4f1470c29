//! The watch hub against a real store (the in-memory one): watchers from
//! any revision get every change of a mirrored object once and in order,
//! whether it comes from the shared ring or, for a watcher behind it, from
//! the store's log; a watcher behind the log gets `compacted`.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tessera_controller::keys;
use tessera_controller::watch::Scope;
use tessera_controller::watch_hub::WatchHub;
use tessera_model::watch::{Object, WatchEvent};
use tessera_model::Host;
use tessera_store::{MemStore, Op, Store, StoreOptions, Txn};

const PATIENCE: Duration = Duration::from_secs(10);
const EVERY: Duration = tessera_controller::watch::PROGRESS_EVERY;

async fn put_host(store: &Arc<dyn Store>, name: &str) -> u64 {
    let h = Host { name: name.into(), underlay_ip: "10.0.0.1".parse().unwrap(), last_seen: 0, gateways: vec![], alive: false };
    store.txn(Txn::new().then(Op::put(keys::host(name), serde_json::to_vec(&h).unwrap()))).await.unwrap().revision
}

/// The events of `n` lines of a watch (progress lines skipped).
async fn take(stream: &mut (impl futures::Stream<Item = axum::body::Bytes> + Unpin), n: usize) -> Vec<WatchEvent> {
    let mut out = Vec::new();
    while out.len() < n {
        let piece = tokio::time::timeout(PATIENCE, stream.next()).await.expect("a line in time").expect("the stream goes on");
        for line in piece.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice::<WatchEvent>(line).unwrap() {
                WatchEvent::Progress { .. } => {}
                ev => out.push(ev),
            }
        }
    }
    out
}

fn names(events: &[WatchEvent]) -> Vec<(u64, String)> {
    events
        .iter()
        .map(|e| match e {
            WatchEvent::Put { revision, object } => match object.as_ref() {
                Object::Host(h) => (*revision, h.name.clone()),
                other => panic!("not a host: {other:?}"),
            },
            other => panic!("not a put: {other:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_from_before_and_after_the_hub_started_get_every_change_once_in_order() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    for i in 0..100 {
        put_host(&store, &format!("early{i}")).await;
    }
    let hub = WatchHub::new(store.clone());
    // The hub starts at revision 100: this watcher reads 1..=100 from the
    // store's log, then the ring.
    let mut from_zero = Box::pin(hub.watch(0, EVERY, "test".into(), Scope::default()));
    let mut from_fifty = Box::pin(hub.watch(50, EVERY, "test".into(), Scope::default()));
    let early = take(&mut from_zero, 100).await;
    let expected: Vec<(u64, String)> = (0..100).map(|i| (i + 1, format!("early{i}"))).collect();
    assert_eq!(names(&early), expected);
    assert_eq!(names(&take(&mut from_fifty, 50).await), expected[50..].to_vec());
    let mut from_now = Box::pin(hub.watch(100, EVERY, "test".into(), Scope::default()));
    for i in 0..300 {
        put_host(&store, &format!("late{i}")).await;
    }
    let expected: Vec<(u64, String)> = (0..300).map(|i| (101 + i, format!("late{i}"))).collect();
    for stream in [&mut from_zero, &mut from_fifty, &mut from_now] {
        assert_eq!(names(&take(stream, 300).await), expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_watch_sends_progress_at_the_current_revision() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    put_host(&store, "a").await;
    // A change agents do not mirror moves the revision too.
    store.txn(Txn::new().then(Op::put(format!("{}other", keys::ROOT), b"x".to_vec()))).await.unwrap();
    let hub = WatchHub::new(store.clone());
    let mut stream = Box::pin(hub.watch(2, EVERY, "test".into(), Scope::default()));
    let piece = tokio::time::timeout(PATIENCE, stream.next()).await.unwrap().unwrap();
    let ev: WatchEvent = serde_json::from_slice(piece.strip_suffix(b"\n").unwrap()).unwrap();
    assert_eq!(ev, WatchEvent::Progress { revision: 2 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_behind_the_log_is_told_compacted_and_its_stream_ends() {
    let store: Arc<dyn Store> = Arc::new(MemStore::with_options(StoreOptions { retain_events: 10 }));
    for i in 0..50 {
        put_host(&store, &format!("h{i}")).await;
    }
    let hub = WatchHub::new(store.clone());
    let mut stream = Box::pin(hub.watch(1, EVERY, "test".into(), Scope::default()));
    let piece = tokio::time::timeout(PATIENCE, stream.next()).await.unwrap().unwrap();
    match serde_json::from_slice::<WatchEvent>(piece.strip_suffix(b"\n").unwrap()).unwrap() {
        WatchEvent::Error { code, .. } => assert_eq!(code, "compacted"),
        other => panic!("expected compacted, got {other:?}"),
    }
    assert!(tokio::time::timeout(PATIENCE, stream.next()).await.unwrap().is_none(), "the stream ends after the error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_snapshot_per_revision_is_shared() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    put_host(&store, "a").await;
    let hub = WatchHub::new(store.clone());
    let first = hub.snapshot_pieces().await.unwrap();
    let again = hub.snapshot_pieces().await.unwrap();
    assert!(Arc::ptr_eq(&first, &again), "the same revision's snapshot is made once");
    put_host(&store, "b").await;
    let later = hub.snapshot_pieces().await.unwrap();
    assert!(!Arc::ptr_eq(&first, &later));
    let json: Vec<u8> = later.iter().flat_map(|p| p.to_vec()).collect();
    let snap: tessera_model::watch::Snapshot = serde_json::from_slice(&json).unwrap();
    assert_eq!(snap.revision, 2);
    assert_eq!(snap.hosts.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_comes_on_time_while_changes_no_agent_mirrors_keep_coming() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    put_host(&store, "a").await;
    let hub = WatchHub::new(store.clone());
    let mut stream = Box::pin(hub.watch(1, EVERY, "test".into(), Scope::default()));
    let every = EVERY;
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every / 10).await;
                store.txn(Txn::new().then(Op::put(format!("{}heartbeat", keys::ROOT), b"x".to_vec()))).await.unwrap();
            }
        })
    };
    let t = std::time::Instant::now();
    let piece = tokio::time::timeout(every * 3, stream.next()).await.expect("progress in time").unwrap();
    writer.abort();
    let ev: WatchEvent = serde_json::from_slice(piece.strip_suffix(b"\n").unwrap()).unwrap();
    match ev {
        WatchEvent::Progress { revision } => assert!(revision > 1, "progress stands at the current revision: {revision}"),
        other => panic!("expected progress, got {other:?}"),
    }
    assert!(t.elapsed() < every * 2, "progress within its interval: {:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_watches_are_listed_with_how_far_behind_they_are() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    for i in 0..10 {
        put_host(&store, &format!("h{i}")).await;
    }
    let hub = WatchHub::new(store.clone());
    let mut reading = Box::pin(hub.watch(0, EVERY, "host h1".into(), Scope::default()));
    let idle = Box::pin(hub.watch(0, EVERY, "host h2".into(), Scope::default()));
    take(&mut reading, 10).await;
    let listed = hub.watchers();
    assert_eq!(listed.len(), 2);
    assert_eq!((listed[0].who.as_str(), listed[0].revision, listed[0].lag), ("host h2", 0, 10), "{listed:?}");
    assert_eq!((listed[1].who.as_str(), listed[1].revision, listed[1].lag), ("host h1", 10, 0), "{listed:?}");
    drop(idle);
    assert_eq!(hub.watchers().len(), 1, "a closed watch leaves the list");
}
