//! The controller on etcd against the controller on its embedded store:
//! endpoint creates per second through the HTTPS API of a real controller
//! process, with its store in a 3-member etcd cluster on this machine
//! (`tessera_testkit::etcd`), ÷ the same with the store in redb, in the same
//! run, with the same concurrency (goal ≥ 0.5): all on one network, then
//! spread over 8 networks.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use serde_json::json;
use tessera_testkit::etcd::EtcdCluster;

const CREATES: usize = 1_000;
const CONCURRENCY: usize = 32;

/// Creates `CREATES` endpoints on `c` with `CONCURRENCY` clients, over
/// `networks` networks (new ones, named after `tag`); returns creates per
/// second.
fn endpoint_creates(c: &support::ControllerProcess, tag: &str, networks: usize) -> f64 {
    let api = support::Api::new(c);
    for n in 0..networks {
        let (s, b) = api.post(
            "/v1/networks",
            json!({"name": format!("{tag}{n}"), "subnets": [{"cidr": format!("10.{}.0.0/16", n + 1 + 10 * networks)}]}),
        );
        assert_eq!(s, 201, "{b}");
    }
    assert!(api.put("/v1/hosts/h1", json!({"underlay_ip": "10.99.0.1"})).0 < 300);
    let tag = tag.to_owned();
    let client = c.async_http(&support::Caller::Admin);
    let url = c.url.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let t = Instant::now();
        let tasks: Vec<_> = (0..CONCURRENCY)
            .map(|w| {
                let (client, url, tag) = (client.clone(), url.clone(), tag.clone());
                tokio::spawn(async move {
                    for i in (w..CREATES).step_by(CONCURRENCY) {
                        let r = client
                            .post(format!("{url}/v1/endpoints"))
                            .json(&json!({"network": format!("{tag}{}", i % networks), "host": "h1", "name": format!("e{i}")}))
                            .send()
                            .await
                            .unwrap();
                        let status = r.status().as_u16();
                        assert_eq!(status, 201, "{}", r.text().await.unwrap_or_default());
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        CREATES as f64 / t.elapsed().as_secs_f64()
    })
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks benches to list tests; there are none.
    }
    let redb = support::ControllerProcess::start();
    let etcd = EtcdCluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let on_etcd = support::ControllerProcess::start_on_etcd(dir.path(), support::free_port(), &etcd.endpoints_arg(), &["--init"]);
    for (tag, networks) in [("one", 1), ("spread", 8)] {
        let redb_rate = endpoint_creates(&redb, tag, networks);
        let etcd_rate = endpoint_creates(&on_etcd, tag, networks);
        println!(
            "api endpoint create over mTLS ({CREATES}, {CONCURRENCY} concurrent, {networks} network(s)): etcd (3 members) {etcd_rate:.0}/s; \
             baseline redb {redb_rate:.0}/s; ratio {:.2} (goal >= 0.5)",
            etcd_rate / redb_rate
        );
    }
}
