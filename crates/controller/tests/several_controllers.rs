//! Several controllers sharing one store, in one process: two `Controller`
//! values over one `MemStore`, each running its duties as `serve` does.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tessera_controller::service::{LEADER_TTL, LEASE_TIME};
use tessera_controller::Controller;
use tessera_store::{MemStore, Store};

async fn two_controllers() -> (Arc<Controller>, Arc<Controller>) {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let a = Arc::new(Controller::new(store.clone()).with_advertise_url(Some("https://a:8082".into())));
    let b = Arc::new(Controller::new(store).with_advertise_url(Some("https://b:8082".into())));
    a.bootstrap(true).await.unwrap();
    b.bootstrap(false).await.unwrap();
    (a, b)
}

/// Runs `ctl`'s duties every 200 ms, as `serve` does, until dropped.
struct Duties(tokio::task::JoinHandle<()>);

impl Duties {
    fn start(ctl: &Arc<Controller>) -> Self {
        let ctl = ctl.clone();
        Duties(tokio::spawn(async move {
            loop {
                ctl.run_duties().await.unwrap();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }))
    }
}

impl Drop for Duties {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn host(ctl: &Controller, name: &str, ip: &str) {
    ctl.register_host(name, serde_json::from_value(json!({"underlay_ip": ip})).unwrap()).await.unwrap();
}

#[tokio::test]
async fn one_controller_leads_and_leadership_moves_when_the_leader_stops_renewing() {
    let (a, b) = two_controllers().await;
    a.run_duties().await.unwrap();
    let (da, db) = (Duties::start(&a), Duties::start(&b));
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(a.is_leader() != b.is_leader(), "exactly one leads");
    }
    assert!(a.is_leader());
    let peers = b.peers().await.unwrap();
    assert_eq!(peers.len(), 2);
    assert!(peers.iter().all(|p| p.alive));
    assert_eq!(peers.iter().find(|p| p.leader).map(|p| p.record.id), Some(a.id()));

    drop(da);
    let stopped = Instant::now();
    while !b.is_leader() {
        assert!(stopped.elapsed() < LEADER_TTL + Duration::from_secs(2), "b takes over within a few seconds");
        assert!(!a.is_leader() || stopped.elapsed() < LEADER_TTL, "a stops leading before its key may be taken");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!a.is_leader(), "never two leaders");
    assert!(stopped.elapsed() >= LEADER_TTL - Duration::from_secs(1), "not before the key expired: {:?}", stopped.elapsed());
    drop(db);
}

#[tokio::test]
async fn a_dead_controllers_registration_is_removed_by_the_leader() {
    let (a, b) = two_controllers().await;
    a.run_duties().await.unwrap();
    b.run_duties().await.unwrap();
    let da = Duties::start(&a);
    let started = Instant::now();
    loop {
        let peers = a.peers().await.unwrap();
        if peers.len() == 1 {
            assert_eq!(peers[0].record.id, a.id());
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "b's registration outlives its TTL: {peers:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(da);
}

#[tokio::test]
async fn a_host_renewing_on_one_controller_is_not_reaped_by_the_other() {
    let (a, b) = two_controllers().await;
    host(&a, "gw1", "10.99.0.1").await;
    a.run_duties().await.unwrap();
    let (_da, _db) = (Duties::start(&a), Duties::start(&b));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(a.is_leader(), "a leads and reaps");
    let mut stopped = Instant::now();
    for _ in 0..10 {
        b.renew_lease("gw1").await.unwrap();
        stopped = Instant::now();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(a.get_host("gw1").await.unwrap().alive, "a lease renewed on b holds on a");
    }
    while a.get_host("gw1").await.unwrap().alive {
        assert!(stopped.elapsed() < LEASE_TIME + Duration::from_secs(2), "a lease no one renews ends");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stopped.elapsed() >= LEASE_TIME, "not before the lease time: {:?}", stopped.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_creates_split_between_two_controllers_give_no_duplicate_address_mac_or_name() {
    let (a, b) = two_controllers().await;
    host(&a, "h1", "10.99.0.1").await;
    a.create_network(serde_json::from_value(json!({"name": "net", "subnets": [{"cidr": "10.20.0.0/22"}]})).unwrap())
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..500 {
        let ctl = if i % 2 == 0 { a.clone() } else { b.clone() };
        // Every name twice, once on each controller: one create makes it,
        // the other returns the same endpoint.
        let name = format!("ep{}", i / 2);
        tasks.push(tokio::spawn(async move {
            let req = serde_json::from_value(json!({"network": "net", "host": "h1", "name": name})).unwrap();
            ctl.create_endpoint(req).await.map(|c| c.object)
        }));
    }
    let mut made = Vec::new();
    for t in tasks {
        made.push(t.await.unwrap().expect("every create succeeds"));
    }
    let ids: HashSet<_> = made.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), 250, "one endpoint per name");
    let listed = a.list_endpoints(&Default::default()).await.unwrap();
    assert_eq!(listed.len(), 250);
    let addrs: HashSet<_> = listed.iter().flat_map(|e| e.ips.iter().map(|n| n.addr())).collect();
    let macs: HashSet<_> = listed.iter().map(|e| e.mac).collect();
    let names: HashSet<_> = listed.iter().map(|e| e.name.clone()).collect();
    assert_eq!((addrs.len(), macs.len(), names.len()), (250, 250, 250), "no duplicate address, MAC or name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_endpoint_creates_split_between_two_controllers_get_distinct_addresses() {
    let (a, b) = two_controllers().await;
    host(&a, "h1", "10.99.0.1").await;
    a.create_network(serde_json::from_value(json!({"name": "net", "subnets": [{"cidr": "10.20.0.0/22"}]})).unwrap())
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..500 {
        let ctl = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let req = serde_json::from_value(json!({"network": "net", "host": "h1", "name": format!("ep{i}")})).unwrap();
            ctl.create_endpoint(req).await.map(|c| c.object)
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("every create succeeds");
    }
    let listed = a.list_endpoints(&Default::default()).await.unwrap();
    let addrs: HashSet<_> = listed.iter().flat_map(|e| e.ips.iter().map(|n| n.addr())).collect();
    let macs: HashSet<_> = listed.iter().map(|e| e.mac).collect();
    let names: HashSet<_> = listed.iter().map(|e| e.name.clone()).collect();
    assert_eq!((listed.len(), addrs.len(), macs.len(), names.len()), (500, 500, 500, 500));
}

#[tokio::test]
async fn a_watch_sends_progress_on_time_while_only_keys_no_agent_mirrors_change() {
    use futures::StreamExt;
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let ctl = Arc::new(Controller::new(store.clone()));
    ctl.bootstrap(true).await.unwrap();
    let after = store.revision().await.unwrap();
    let mut watch = Box::pin(tessera_controller::watch::watch(store.clone(), after, Duration::from_millis(300)));
    let _duties = Duties::start(&ctl);
    let writer = tokio::spawn(async move {
        loop {
            let put = tessera_store::Op::Put { key: "/tessera/probe".into(), value: b"x".to_vec() };
            store.txn(tessera_store::Txn::new().then(put)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let ev = tokio::time::timeout(Duration::from_secs(1), watch.next()).await.expect("progress within its interval");
    writer.abort();
    match ev {
        Some(tessera_model::watch::WatchEvent::Progress { revision }) => assert!(revision > after),
        other => panic!("expected progress, got {other:?}"),
    }
}
