//! Two controllers on one etcd (`tessera_testkit::etcd`), served over
//! HTTPS: a host's mirror of the intent (the agent's watch, run here as
//! the agent runs it, with the host's certificate) follows the first
//! controller; that controller is killed with SIGKILL during a stream of
//! endpoint creates through the other; the watch continues on the other
//! within 2 s from the last revision it saw (no new snapshot) and misses no
//! change. Both controllers register in the store and one leads.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{free_port, Api, Caller, ControllerProcess};
use tessera_api::auth::Credentials;
use tessera_api::mirror::MirrorState;
use tessera_api::ControllerClient;
use tessera_testkit::etcd::EtcdCluster;

/// Waits until `state` satisfies `ok`, at most `patience`; returns how long
/// it took.
async fn until(
    state: &mut tokio::sync::watch::Receiver<MirrorState>,
    patience: Duration,
    ok: impl Fn(&MirrorState) -> bool,
) -> Duration {
    let started = Instant::now();
    let reached = tokio::time::timeout(patience, state.wait_for(|s| ok(s))).await.is_ok();
    assert!(reached, "mirror state not reached within {patience:?}: {:?}", *state.borrow());
    started.elapsed()
}

/// A host's mirror of the intent, run here as the agent runs it.
struct Mirror {
    rt: tokio::runtime::Runtime,
    _state_dir: tempfile::TempDir,
    snap: tokio::sync::watch::Receiver<Option<std::sync::Arc<tessera_model::watch::Snapshot>>>,
    state: tokio::sync::watch::Receiver<MirrorState>,
}

impl Mirror {
    /// Starts mirroring through `controllers` (a `--controller` list) as
    /// `creds`; returns once connected to `first`.
    fn start(controllers: &str, creds: &Credentials, first: &str) -> Self {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let state_dir = tempfile::tempdir().unwrap();
        let (snap_tx, snap) = tokio::sync::watch::channel(None);
        let (state_tx, mut state) = tokio::sync::watch::channel(MirrorState::default());
        let client = ControllerClient::with_credentials(controllers, creds).unwrap();
        rt.spawn(tessera_api::mirror::run(
            client,
            state_dir.path().to_path_buf(),
            snap_tx,
            state_tx,
            tokio::sync::watch::channel(tessera_api::scope::Scope::Everything).1,
        ));
        rt.block_on(until(&mut state, Duration::from_secs(10), |s| s.connected && s.controller == first));
        Mirror { rt, _state_dir: state_dir, snap, state }
    }
}

#[test]
fn a_watch_continues_on_the_other_controller_within_2s_of_a_kill_9_and_misses_no_change() {
    let etcd = EtcdCluster::start(1);
    let dir = tempfile::tempdir().unwrap();
    let mut c1 = ControllerProcess::start_on_etcd(
        dir.path(),
        free_port(),
        &etcd.endpoints_arg(),
        &["--init", "--advertise-url", "https://c1.test:8082"],
    );
    let c2 = ControllerProcess::start_on_etcd(
        dir.path(),
        free_port(),
        &etcd.endpoints_arg(),
        &["--advertise-url", "https://c2.test:8082"],
    );
    let admin = Api::new(&c2);
    assert_eq!(admin.put("/v1/hosts/h1", json!({"underlay_ip": "10.99.0.1"})).0, 200);
    assert_eq!(admin.post("/v1/networks", json!({"name": "net", "subnets": [{"cidr": "10.30.0.0/22"}]})).0, 201);
    Api::as_caller(&c1, &Caller::Host("h1".into())); // issues the host's certificate
    let creds = Credentials::from_pki(&c1.pki, "hosts/h1");

    let Mirror { rt, _state_dir, snap: snap_rx, mut state } = Mirror::start(&format!("{},{}", c1.url, c2.url), &creds, &c1.url);

    // Both controllers registered; one leads.
    let (s, peers) = admin.get("/v1/controllers");
    assert_eq!(s, 200, "{peers}");
    let peers = peers.as_array().unwrap().clone();
    assert_eq!(peers.len(), 2, "{peers:?}");
    assert!(peers.iter().all(|p| p["alive"] == true), "{peers:?}");
    let urls: BTreeSet<_> = peers.iter().map(|p| p["url"].as_str().unwrap().to_string()).collect();
    assert_eq!(urls, BTreeSet::from(["https://c1.test:8082".to_string(), "https://c2.test:8082".to_string()]));

    // A stream of creates through c2, one every 20 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, url_api) = (stop.clone(), Api::new(&c2));
        std::thread::spawn(move || {
            let mut made = BTreeSet::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let (s, e) = url_api.post("/v1/endpoints", json!({"network": "net", "host": "h1", "name": format!("ep{i}")}));
                assert_eq!(s, 201, "{e}");
                made.insert(e["id"].as_str().unwrap().to_string());
                i += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            made
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    c1.kill9();
    let moved = rt.block_on(until(&mut state, Duration::from_secs(5), |s| s.connected && s.controller == c2.url));
    eprintln!("watch continued on the other controller {moved:?} after the kill");
    assert!(moved <= Duration::from_secs(2), "failover took {moved:?}");
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::Relaxed);
    let made = writer.join().unwrap();
    assert!(made.len() > 20, "creates went on during the failover: {}", made.len());

    // Every endpoint made reaches the mirror, with no new snapshot.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mirrored: BTreeSet<String> =
            snap_rx.borrow().as_ref().map(|s| s.endpoints.iter().map(|e| e.id.to_string()).collect()).unwrap_or_default();
        if mirrored == made {
            break;
        }
        assert!(Instant::now() < deadline, "the mirror misses {:?}", made.difference(&mirrored).collect::<Vec<_>>());
        std::thread::sleep(Duration::from_millis(50));
    }
    let s = state.borrow().clone();
    assert_eq!((s.failovers, s.snapshots), (1, 1), "one failover, no new snapshot: {s:?}");

    // The survivor leads within a few seconds (the lease reaper runs there).
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let (_, peers) = admin.get("/v1/controllers");
        let leader = peers.as_array().unwrap().iter().find(|p| p["leader"] == true).map(|p| p["url"].clone());
        if leader == Some(json!("https://c2.test:8082")) {
            break;
        }
        assert!(Instant::now() < deadline, "c2 does not lead: {peers}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_watch_leaves_a_controller_that_stopped_answering_within_2s() {
    let etcd = EtcdCluster::start(1);
    let dir = tempfile::tempdir().unwrap();
    let c1 = ControllerProcess::start_on_etcd(dir.path(), free_port(), &etcd.endpoints_arg(), &["--init"]);
    let c2 = ControllerProcess::start_on_etcd(dir.path(), free_port(), &etcd.endpoints_arg(), &[]);
    let admin = Api::new(&c2);
    assert_eq!(admin.put("/v1/hosts/h1", json!({"underlay_ip": "10.99.0.1"})).0, 200);
    assert_eq!(admin.post("/v1/networks", json!({"name": "net", "subnets": [{"cidr": "10.30.0.0/22"}]})).0, 201);
    Api::as_caller(&c1, &Caller::Host("h1".into()));
    let creds = Credentials::from_pki(&c1.pki, "hosts/h1");
    let Mirror { rt, _state_dir, snap: snap_rx, mut state } = Mirror::start(&format!("{},{}", c1.url, c2.url), &creds, &c1.url);

    // SIGSTOP: the connection stays open and nothing comes (a hung or
    // partitioned controller); SIGCONT before the process is dropped.
    let pid = c1.pid().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let stopped = Instant::now();
    let (s, e) = admin.post("/v1/endpoints", json!({"network": "net", "host": "h1", "name": "late"}));
    assert_eq!(s, 201, "{e}");
    let moved = rt.block_on(until(&mut state, Duration::from_secs(5), |s| s.connected && s.controller == c2.url));
    let _ = std::process::Command::new("kill").args(["-CONT", &pid]).status();
    eprintln!("watch left the stopped controller after {:?}", stopped.elapsed());
    assert!(moved <= Duration::from_secs(2), "a silent watch is noticed within 2 s: {moved:?}");
    let deadline = Instant::now() + Duration::from_secs(3);
    while !snap_rx.borrow().as_ref().is_some_and(|s| s.endpoints.iter().any(|x| x.id.to_string() == e["id"].as_str().unwrap())) {
        assert!(Instant::now() < deadline, "the endpoint made meanwhile reaches the mirror");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(state.borrow().snapshots, 1, "no new snapshot");
}

#[test]
fn flow_records_a_host_reports_are_read_on_every_controller_of_its_list() {
    let etcd = EtcdCluster::start(1);
    let dir = tempfile::tempdir().unwrap();
    let c1 = ControllerProcess::start_on_etcd(dir.path(), free_port(), &etcd.endpoints_arg(), &["--init"]);
    let c2 = ControllerProcess::start_on_etcd(dir.path(), free_port(), &etcd.endpoints_arg(), &[]);
    assert_eq!(Api::new(&c1).put("/v1/hosts/h1", json!({"underlay_ip": "10.99.0.1"})).0, 200);
    Api::as_caller(&c1, &Caller::Host("h1".into()));
    let client =
        ControllerClient::with_credentials(&format!("{},{}", c1.url, c2.url), &Credentials::from_pki(&c1.pki, "hosts/h1"))
            .unwrap();
    let record = json!({"host": "h1", "id": 7, "protocol": 6, "src": "10.1.0.2", "sport": 40007, "dst": "10.1.0.3", "dport": 80,
        "src_endpoint": "a", "dst_endpoint": "web", "src_network": "default-domain:admin:red", "verdict": "forwarded",
        "start_ms": 1000, "end_ms": 2000, "packets": 3, "bytes": 500, "reply_packets": 2, "reply_bytes": 10});
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(client.report_flows("h1", &json!({"records": [record]}))).unwrap();
    for c in [&c1, &c2] {
        let (s, flows) = Api::new(c).get("/v1/flows");
        assert_eq!(s, 200, "{flows}");
        assert_eq!(flows.as_array().map(Vec::len), Some(1), "controller {}: {flows}", c.url);
    }
}

#[test]
fn controller_status_shows_the_store_the_controllers_and_the_hosts_watching() {
    let etcd = EtcdCluster::start(1);
    let dir = tempfile::tempdir().unwrap();
    let c1 = ControllerProcess::start_on_etcd(dir.path(), free_port(), &etcd.endpoints_arg(), &["--init"]);
    let c2 = ControllerProcess::start_on_etcd(dir.path(), free_port(), &etcd.endpoints_arg(), &[]);
    let admin = Api::new(&c1);
    assert_eq!(admin.put("/v1/hosts/h1", json!({"underlay_ip": "10.99.0.1"})).0, 200);
    let host = Api::as_caller(&c1, &Caller::Host("h1".into()));
    let creds = Credentials::from_pki(&c1.pki, "hosts/h1");
    let _mirror = Mirror::start(&c1.url, &creds, &c1.url);
    assert_eq!(admin.post("/v1/networks", json!({"name": "net", "subnets": [{"cidr": "10.30.0.0/22"}]})).0, 201);

    // Both controllers registered (each rewrites its record every 2 s) and
    // the host's mirror has taken its snapshot and opened its watch.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let s = c1.cli_json(&["controller", "status"]);
        let both = s["controllers"].as_array().is_some_and(|c| c.len() == 2);
        let watching = s["watch"]["watchers"].as_array().is_some_and(|w| w.iter().any(|w| w["who"] == "host h1"));
        if (both && watching) || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status["store"]["name"].as_str().unwrap().starts_with("etcd "), "{status}");
    assert_eq!(status["store"]["ready"], true, "{status}");
    assert!(status["store"]["revision"].as_u64().unwrap() > 0, "{status}");
    let controllers = status["controllers"].as_array().unwrap();
    assert_eq!(controllers.len(), 2, "{status}");
    assert_eq!(controllers.iter().filter(|c| c["leader"] == true).count(), 1, "one leads: {status}");
    let watchers = status["watch"]["watchers"].as_array().unwrap();
    let h1 = watchers.iter().find(|w| w["who"] == "host h1").unwrap_or_else(|| panic!("h1 watches c1: {status}"));
    assert!(h1["revision"].as_u64().unwrap() > 0, "{status}");
    assert!(h1["lag"].as_u64().unwrap() < 10, "h1 keeps up: {status}");

    let (code, out, err) = c1.cli(&["controller", "status"]);
    assert_eq!(code, 0, "{err}");
    for needle in ["store      etcd ", "ready", "CONTROLLER", "LEADER", "host h1", "LAG"] {
        assert!(out.contains(needle), "the table shows {needle}:\n{out}");
    }
    // Hosts do not read it.
    let (s, body) = host.get("/v1/status");
    assert_eq!(s, 403, "{body}");
    drop(c2);
}
