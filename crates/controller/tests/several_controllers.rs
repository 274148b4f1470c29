//! Several controllers sharing one store, in one process: two `Controller`
//! values over one `MemStore`, each running its duties as `serve` does.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tessera_controller::service::{LEADER_TTL, LEASE_TIME};
use tessera_controller::watch::Scope;
use tessera_controller::Controller;
use tessera_store::{Event, KeyValue, MemStore, RangeResult, Store, StoreError, Txn, TxnResult};

/// A [`MemStore`] whose reads and transactions each wait a moment first,
/// so that requests on two controllers interleave as they do over a network.
struct SlowStore(MemStore);

#[async_trait::async_trait]
impl Store for SlowStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.0.get(key).await
    }
    async fn range(&self, prefix: &str) -> Result<RangeResult, StoreError> {
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.0.range(prefix).await
    }
    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.0.txn(txn).await
    }
    async fn revision(&self) -> Result<u64, StoreError> {
        self.0.revision().await
    }
    async fn events_since(&self, prefix: &str, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.0.events_since(prefix, after, limit).await
    }
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.subscribe()
    }
}

async fn two_controllers() -> (Arc<Controller>, Arc<Controller>) {
    two_controllers_on(Arc::new(MemStore::new())).await
}

async fn two_controllers_on(store: Arc<dyn Store>) -> (Arc<Controller>, Arc<Controller>) {
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
async fn a_leader_that_resigns_is_followed_at_the_next_election_step() {
    let (a, b) = two_controllers().await;
    a.run_duties().await.unwrap();
    b.run_duties().await.unwrap();
    assert!(a.is_leader() && !b.is_leader());
    a.resign().await.unwrap();
    assert!(!a.is_leader());
    let _db = Duties::start(&b);
    let resigned = Instant::now();
    while !b.is_leader() {
        assert!(resigned.elapsed() < Duration::from_millis(1500), "b leads without waiting for the key to expire");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let peers = b.peers().await.unwrap();
    assert_eq!(peers.iter().map(|p| p.record.id).collect::<Vec<_>>(), [b.id()], "a's registration is gone");
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

/// Two controllers over one slow store, a host and a network, and the
/// endpoints `names` created there, split between the controllers in turn,
/// all at once; the first controller and what each create made.
async fn creates_split_between_two_controllers(names: Vec<String>) -> (Arc<Controller>, Vec<tessera_model::Endpoint>) {
    let (a, b) = two_controllers_on(Arc::new(SlowStore(MemStore::new()))).await;
    host(&a, "h1", "10.99.0.1").await;
    a.create_network(serde_json::from_value(json!({"name": "net", "subnets": [{"cidr": "10.20.0.0/22"}]})).unwrap())
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for (i, name) in names.into_iter().enumerate() {
        let ctl = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let req = serde_json::from_value(json!({"network": "net", "host": "h1", "name": name})).unwrap();
            ctl.create_endpoint(req).await.map(|c| c.object)
        }));
    }
    let mut made = Vec::new();
    for t in tasks {
        made.push(t.await.unwrap().expect("every create succeeds"));
    }
    (a, made)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_creates_split_between_two_controllers_give_no_duplicate_address_mac_or_name() {
    // Every name twice, once on each controller: one create makes it,
    // the other returns the same endpoint.
    let (a, made) = creates_split_between_two_controllers((0..500).map(|i| format!("ep{}", i / 2)).collect()).await;
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
    let (a, _) = creates_split_between_two_controllers((0..500).map(|i| format!("ep{i}")).collect()).await;
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
    let mut watch = Box::pin(ctl.watch_hub().watch(after, Duration::from_millis(300), "test".into(), Scope::default()));
    let _duties = Duties::start(&ctl);
    let writer = tokio::spawn(async move {
        loop {
            let put = tessera_store::Op::Put { key: "/tessera/probe".into(), value: b"x".to_vec() };
            store.txn(tessera_store::Txn::new().then(put)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let line = tokio::time::timeout(Duration::from_secs(1), watch.next()).await.expect("progress within its interval");
    writer.abort();
    let ev = line.map(|l| serde_json::from_slice::<tessera_model::watch::WatchEvent>(&l).expect("a watch line"));
    match ev {
        Some(tessera_model::watch::WatchEvent::Progress { revision }) => assert!(revision > after),
        other => panic!("expected progress, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_creates_split_between_two_controllers_give_no_duplicate_vni_or_name() {
    let (a, b) = two_controllers_on(Arc::new(SlowStore(MemStore::new()))).await;
    let mut tasks = Vec::new();
    for i in 0..80 {
        let ctl = if i % 2 == 0 { a.clone() } else { b.clone() };
        // Each name on both controllers: one makes it, the other gets it.
        let req = json!({"name": format!("n{}", i / 2), "subnets": [{"cidr": format!("10.{}.0.0/24", i / 2)}]});
        tasks.push(tokio::spawn(async move { ctl.create_network(serde_json::from_value(req).unwrap()).await.map(|c| c.object) }));
    }
    for t in tasks {
        t.await.unwrap().expect("every create succeeds");
    }
    let nets = b.list_networks(None).await.unwrap();
    let vnis: HashSet<_> = nets.iter().map(|n| n.vni).collect();
    let names: HashSet<_> = nets.iter().map(|n| n.fq_name.to_string()).collect();
    assert_eq!((nets.len(), vnis.len(), names.len()), (40, 40, 40));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_controllers_never_give_a_network_two_ways_out() {
    let (a, b) = two_controllers_on(Arc::new(SlowStore(MemStore::new()))).await;
    host(&a, "h1", "10.99.0.1").await;
    let net = |req: serde_json::Value| serde_json::from_value(req).unwrap();
    a.create_network(net(json!({"name": "inside", "subnets": [{"cidr": "10.20.0.0/24"}]}))).await.unwrap();
    for (i, ext) in ["ext1", "ext2"].iter().enumerate() {
        a.create_network(net(json!({"name": ext, "external": true, "subnets": [{"cidr": format!("198.51.{i}.0/24")}]})))
            .await
            .unwrap();
    }
    for round in 0..20 {
        let ep = |n: &str| serde_json::from_value(json!({"network": "inside", "host": "h1", "name": n})).unwrap();
        let e1 = a.create_endpoint(ep(&format!("a{round}"))).await.unwrap().object;
        let e2 = a.create_endpoint(ep(&format!("b{round}"))).await.unwrap().object;
        let f1 = a.create_floating_ip(serde_json::from_value(json!({"network": "ext1"})).unwrap()).await.unwrap().object;
        let f2 = b.create_floating_ip(serde_json::from_value(json!({"network": "ext2"})).unwrap()).await.unwrap().object;
        let assoc = |e: &tessera_model::Endpoint| serde_json::from_value(json!({"endpoint": e.id.to_string()})).unwrap();
        let (a2, b2, (q1, q2)) = (a.clone(), b.clone(), (assoc(&e1), assoc(&e2)));
        let (id1, id2) = (f1.id.to_string(), f2.id.to_string());
        let t1 = tokio::spawn(async move { a2.associate_floating_ip(&id1, q1, false).await });
        let t2 = tokio::spawn(async move { b2.associate_floating_ip(&id2, q2, false).await });
        let (r1, r2) = (t1.await.unwrap(), t2.await.unwrap());
        assert!(r1.is_err() || r2.is_err(), "round {round}: a network reaches the outside through two external networks");
        // Back to no way out for the next round.
        for f in [&f1, &f2] {
            a.delete_floating_ip(&f.id.to_string()).await.unwrap();
        }
    }
}
