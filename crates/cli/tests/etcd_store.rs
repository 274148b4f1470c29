//! The controller on a real etcd cluster (`tessera_testkit::etcd`: Debian's
//! etcd 3.4, members on loopback): writes go on with one of three members
//! killed, fail with 503 `store_unavailable` and the reason without quorum,
//! and succeed again once the members are back, without restarting the
//! controller; two controllers on one etcd take 500 concurrent endpoint
//! creates split between them with no address, MAC or name given twice;
//! `tessera store migrate` round-trips a fabric redb → etcd → redb with
//! every object equal; contradictory flags are refused naming the flag. The API is called over HTTPS as the administrator.
//!
//! Reads are linearizable: without quorum they fail with 503 too (the agents
//! keep what they hold and their data planes run on).

mod support;

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{free_port, Api, ControllerProcess, BIN};
use tessera_testkit::etcd::{EtcdCluster, EtcdTls};

/// Posts until the answer is not 503 (an etcd election in progress), at
/// most `patience`; returns the last answer.
fn post_until_served(api: &Api, path: &str, body: Value, patience: Duration) -> (u16, Value) {
    let deadline = Instant::now() + patience;
    loop {
        let answer = api.post(path, body.clone());
        if answer.0 != 503 || Instant::now() > deadline {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn network(name: &str, cidr: &str) -> Value {
    json!({"name": name, "subnets": [{"cidr": cidr}]})
}

#[test]
fn writes_go_on_with_one_etcd_member_down_fail_with_503_without_quorum_and_recover() {
    let mut etcd = EtcdCluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let c = ControllerProcess::start_on_etcd(dir.path(), free_port(), &etcd.endpoints_arg(), &["--init", "--etcd-timeout", "2"]);
    let api = Api::new(&c);
    assert_eq!(api.post("/v1/networks", network("n0", "10.10.0.0/24")).0, 201);

    etcd.kill(0);
    let started = Instant::now();
    let (s, b) = post_until_served(&api, "/v1/networks", network("n1", "10.10.1.0/24"), Duration::from_secs(10));
    assert_eq!(s, 201, "a write with two of three members: {b}\n{}", etcd.logs());
    eprintln!("write with one member killed served after {:?}", started.elapsed());

    etcd.kill(1);
    // The last member loses its leader within the election timeout; from
    // then on every write fails at once (or within --etcd-timeout).
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let (s, b) = api.post("/v1/networks", network("n2", "10.10.2.0/24"));
        if s == 503 {
            break b;
        }
        assert!(Instant::now() < deadline, "writes still succeed without quorum: {s} {b}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(refused["error"]["code"], "store_unavailable", "{refused}");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.contains("unavailable") && message.contains("127.0.0.1"), "the reason names the store: {message}");
    let (s, b) = api.get("/v1/networks");
    assert_eq!((s, &b["error"]["code"]), (503, &json!("store_unavailable")), "reads need quorum too: {b}");
    let ready = c.http(&support::Caller::Nobody).get(format!("{}/readyz", c.url)).send().unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    let body: Value = ready.json().unwrap();
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");

    etcd.restart(0);
    etcd.restart(1);
    etcd.wait_healthy();
    let (s, b) = post_until_served(&api, "/v1/networks", network("n2", "10.10.2.0/24"), Duration::from_secs(15));
    assert!(s == 201 || s == 200, "writes succeed again without restarting the controller: {s} {b}");
    // Right after the members return, etcd may still move its leader: a
    // read may meet one 503 then.
    let deadline = Instant::now() + Duration::from_secs(15);
    let listed = loop {
        let (s, b) = api.get("/v1/networks");
        if s != 503 || Instant::now() > deadline {
            assert_eq!(s, 200, "{b}");
            break b;
        }
        eprintln!("read after recovery: {b}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(listed.as_array().unwrap().len(), 3, "n0, n1 and n2, once each: {listed}");
}

/// Each controller picks addresses from what it knows of the allocations
/// (followed from its watch of etcd) and commits concurrent creates in
/// groups: picks that clash with the other controller's are refused by
/// etcd and made again, so every create succeeds, once.
#[test]
fn five_hundred_creates_split_between_two_controllers_on_one_etcd_give_no_duplicate() {
    let etcd = EtcdCluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let a = ControllerProcess::start_on_etcd(dir.path(), free_port(), &etcd.endpoints_arg(), &["--init"]);
    let b = ControllerProcess::start_on_etcd(dir.path(), free_port(), &etcd.endpoints_arg(), &[]);
    let api = Api::new(&a);
    assert_eq!(api.put("/v1/hosts/h1", json!({"underlay_ip": "10.99.0.1"})).0, 200);
    assert_eq!(api.post("/v1/networks", network("net", "10.40.0.0/22")).0, 201);
    let clients =
        [(a.async_http(&support::Caller::Admin), a.url.clone()), (b.async_http(&support::Caller::Admin), b.url.clone())];
    let rt = tokio::runtime::Runtime::new().unwrap();
    let made: Vec<Value> = rt.block_on(async {
        let tasks: Vec<_> = (0..500)
            .map(|i| {
                let (client, url) = clients[i % 2].clone();
                tokio::spawn(async move {
                    let r = client
                        .post(format!("{url}/v1/endpoints"))
                        .json(&json!({"network": "net", "host": "h1", "name": format!("ep{i}")}))
                        .send()
                        .await
                        .unwrap();
                    let status = r.status().as_u16();
                    let body: Value = r.json().await.unwrap();
                    assert_eq!(status, 201, "ep{i} through controller {}: {body}", i % 2);
                    body
                })
            })
            .collect();
        let mut made = Vec::new();
        for t in tasks {
            made.push(t.await.unwrap());
        }
        made
    });
    let (s, listed) = Api::new(&b).get("/v1/endpoints?network=net");
    assert_eq!(s, 200, "{listed}");
    let listed = listed.as_array().unwrap();
    let addrs: HashSet<&str> = listed.iter().map(|e| e["ips"][0].as_str().unwrap()).collect();
    let macs: HashSet<&str> = listed.iter().map(|e| e["mac"].as_str().unwrap()).collect();
    let names: HashSet<&str> = listed.iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!((made.len(), listed.len(), addrs.len(), macs.len(), names.len()), (500, 500, 500, 500, 500));
    let ids: HashSet<&str> = made.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert!(listed.iter().all(|e| ids.contains(e["id"].as_str().unwrap())), "what was answered is what is stored");
}

#[test]
fn a_controller_reaches_etcd_over_tls_with_its_client_certificate_only() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("etcd-pki");
    let made = Command::new(BIN).args(["pki", "init", "--san", "127.0.0.1", "--dir"]).arg(&pki).output().unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let file = |name: &str| pki.join(name).to_str().unwrap().to_owned();
    let tls = EtcdTls { ca: pki.join("ca.pem"), cert: pki.join("controller.pem"), key: pki.join("controller-key.pem") };
    let etcd = EtcdCluster::start_tls(1, tls);
    assert!(etcd.endpoints_arg().starts_with("https://"));

    let out = Command::new(BIN)
        .args(["controller", "--insecure-loopback", "--listen", "127.0.0.1:0", "--init", "--store", "etcd"])
        .args(["--etcd-endpoints", &etcd.endpoints_arg(), "--etcd-ca", &file("ca.pem"), "--etcd-timeout", "3"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "etcd asks for a client certificate: {err}");
    assert!(err.contains("etcd"), "{err}");

    let certs = ["--init", "--etcd-ca", &file("ca.pem"), "--etcd-cert", &file("admin.pem"), "--etcd-key", &file("admin-key.pem")];
    let c = ControllerProcess::start_on_etcd(dir.path(), free_port(), &etcd.endpoints_arg(), &certs);
    let (s, b) = Api::new(&c).post("/v1/networks", network("tls", "10.20.0.0/24"));
    assert_eq!(s, 201, "{b}");
}

#[test]
fn contradictory_store_flags_are_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(BIN).arg("controller").args(args).args(["--insecure-loopback"]).output().unwrap();
        assert!(!out.status.success(), "{args:?} must be refused");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let data = dir.path().to_str().unwrap();
    let err = run(&["--store", "etcd", "--etcd-endpoints", "http://127.0.0.1:1", "--data-dir", data]);
    assert!(err.contains("--data-dir"), "{err}");
    let err = run(&["--data-dir", data, "--etcd-endpoints", "http://127.0.0.1:1"]);
    assert!(err.contains("--etcd-endpoints") && err.contains("--store etcd"), "{err}");
    let err = run(&["--store", "etcd"]);
    assert!(err.contains("--etcd-endpoints"), "{err}");
}

/// Every object the API shows, read as the administrator, to compare one
/// store with another (the snapshot without its revision).
fn fabric(api: &Api) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for path in ["/v1/projects", "/v1/networks", "/v1/endpoints", "/v1/policies", "/v1/floating-ips", "/v1/hosts"] {
        let (s, b) = api.get(path);
        assert_eq!(s, 200, "{path}: {b}");
        out.push((path.to_owned(), b));
    }
    let (s, big) = api.get("/v1/policies/big");
    assert_eq!(s, 200, "{big}");
    assert_eq!(big["rules"].as_array().unwrap().len(), 10_000);
    out.push(("/v1/policies/big".into(), big));
    let (_, mut snapshot) = api.get("/v1/snapshot");
    snapshot.as_object_mut().unwrap().remove("revision");
    // Each store filled by a migration has an epoch of its own.
    let epoch = snapshot.as_object_mut().unwrap().remove("epoch").unwrap_or(Value::Null);
    out.push(("epoch".into(), epoch));
    out.push(("/v1/snapshot".into(), snapshot));
    out
}

fn migrate(from: &str, to: &str) -> (bool, String, String) {
    let out = Command::new(BIN).args(["store", "migrate", "--from", from, "--to", to]).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The two fabrics hold the same objects; the second's store epoch is new.
fn assert_same(a: &[(String, Value)], b: &[(String, Value)], what: &str) {
    for ((path, x), (_, y)) in a.iter().zip(b) {
        if path == "epoch" {
            assert!(y.is_string() && x != y, "{what}: a migrated store has a new epoch: {x} then {y}");
        } else {
            assert!(x == y, "{what}: {path} differs:\n{x}\n---\n{y}");
        }
    }
}

/// A watch from a revision of the store a fabric was migrated from, with
/// that store's epoch, is refused with 410: the client takes a snapshot.
fn assert_old_revisions_refused(api: &Api, old_revision: u64, old_epoch: &Value) {
    let path = match old_epoch.as_str() {
        Some(epoch) => format!("/v1/watch?after={old_revision}&epoch={epoch}"),
        None => format!("/v1/watch?after={old_revision}&epoch=00000000-0000-0000-0000-000000000000"),
    };
    let (s, b) = api.get(&path);
    assert_eq!((s, &b["error"]["code"]), (410, &json!("compacted")), "{b}");
}

#[test]
fn migration_round_trips_a_fabric_redb_to_etcd_to_redb() {
    let first = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut c = ControllerProcess::start_on(first.path(), port);
    let api = Api::new(&c);
    let (s, b) = api.post("/v1/networks", json!({"name": "public", "external": true, "subnets": [{"cidr": "203.0.113.0/24"}]}));
    assert_eq!(s, 201, "{b}");
    for (name, cidr) in [("red", "10.1.0.0/24"), ("green", "10.2.0.0/24")] {
        assert_eq!(api.post("/v1/networks", network(name, cidr)).0, 201);
    }
    let rules: Vec<String> = (0..10_000).map(|i| format!("pass tcp red any > green {}", i + 1)).collect();
    let (s, b) = api.post("/v1/policies", json!({"name": "big", "rules": rules}));
    assert_eq!(s, 201, "{b}");
    assert_eq!(api.put("/v1/hosts/h1", json!({"underlay_ip": "10.99.0.1"})).0, 200);
    let mut first_endpoint = String::new();
    for i in 0..20 {
        let (s, ep) = api.post(
            "/v1/endpoints",
            json!({"network": if i % 2 == 0 { "red" } else { "green" }, "host": "h1", "name": format!("e{i}")}),
        );
        assert_eq!(s, 201, "{ep}");
        if i == 0 {
            first_endpoint = ep["id"].as_str().unwrap().to_owned();
        }
    }
    let (s, f) = api.post("/v1/floating-ips", json!({"network": "public"}));
    assert_eq!(s, 201, "{f}");
    let id = f["id"].as_str().unwrap().to_owned();
    let (s, b) = api.put(&format!("/v1/floating-ips/{id}/association"), json!({"endpoint": first_endpoint}));
    assert_eq!(s, 200, "associate: {b}");
    let before = fabric(&api);
    let old_revision = api.get("/v1/snapshot").1["revision"].as_u64().unwrap();
    let data = first.path().to_str().unwrap().to_owned();

    let etcd = EtcdCluster::start(1);
    let (ok, _, err) = migrate(&data, &etcd.url());
    assert!(!ok, "a source in use is refused");
    assert!(err.contains("in use"), "{err}");
    c.kill9();

    let (ok, out, err) = migrate(&data, &etcd.url());
    assert!(ok, "redb → etcd: {err}");
    assert!(out.contains("copied and verified") && err.contains("verified"), "{out}\n{err}");
    let (ok, _, err) = migrate(&data, &etcd.url());
    assert!(
        !ok && err.contains("not empty") && err.contains(&etcd.endpoints()[0]),
        "a non-empty target is refused, named: {err}"
    );

    let on_etcd = ControllerProcess::start_on_etcd(first.path(), free_port(), &etcd.endpoints_arg(), &[]);
    let on_etcd_api = Api::new(&on_etcd);
    let migrated = fabric(&on_etcd_api);
    assert_same(&before, &migrated, "redb → etcd");
    assert_old_revisions_refused(&on_etcd_api, old_revision.min(3), &Value::Null);
    let etcd_epoch = migrated.iter().find(|(p, _)| p == "epoch").unwrap().1.clone();
    let etcd_revision = on_etcd_api.get("/v1/snapshot").1["revision"].as_u64().unwrap();
    let url = format!("{}/v1/watch?after={etcd_revision}&epoch={}", on_etcd.url, etcd_epoch.as_str().unwrap());
    let served = on_etcd.http(&support::Caller::Admin).get(url).send().unwrap();
    assert_eq!(served.status().as_u16(), 200, "a watch with the store's own epoch is served");
    drop(served);
    drop(on_etcd);

    let back = tempfile::tempdir().unwrap();
    let (ok, _, err) = migrate(&etcd.url(), back.path().to_str().unwrap());
    assert!(ok, "etcd → redb: {err}");
    let again = ControllerProcess::restart_on(back.path(), free_port());
    let again_api = Api::new(&again);
    assert_same(&before, &fabric(&again_api), "redb → etcd → redb");
    assert_old_revisions_refused(&again_api, etcd_revision.min(3), &etcd_epoch);
}
