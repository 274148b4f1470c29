//! Controller benchmarks: IPAM allocation and API create throughput.
//!
//! Each figure is printed beside its baseline measured in the same run:
//! - in-memory IPAM allocation ÷ inserting the same addresses into a BTreeMap
//!   (the data structure's floor);
//! - endpoint creation through the HTTP API of a real controller process
//!   (validation, IPAM, indexes, one durable transaction each) ÷ bare durable
//!   transactions on the same store engine with the same concurrency;
//! - the controller's memory with 1,000 concurrent watches from revision 0 of
//!   a store holding 100,000 events, who do not read what they are sent (a
//!   watch holds one page of the log, whatever it starts from) ÷ the same
//!   controller's at rest.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tessera_ipam::{Allocator, SubnetLayout};
use tessera_store::{Compare, Op, RedbStore, Store, Txn};

const IPAM_ALLOCS: usize = 60_000;
const API_CREATES: usize = 2_000;
const CONCURRENCY: usize = 32;

fn ipam() {
    let plan = SubnetLayout::new("10.0.0.0/16".parse().unwrap(), Some("10.0.0.1".parse().unwrap()), vec![]).unwrap();
    let mut alloc: Allocator<u32> = Allocator::new(plan);
    let t = Instant::now();
    let mut got = Vec::with_capacity(IPAM_ALLOCS);
    for i in 0..IPAM_ALLOCS as u32 {
        got.push(alloc.allocate(i).unwrap());
    }
    let ipam_rate = IPAM_ALLOCS as f64 / t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut map: BTreeMap<IpAddr, u32> = BTreeMap::new();
    for (i, a) in got.iter().enumerate() {
        map.insert(*a, i as u32);
    }
    let base_rate = IPAM_ALLOCS as f64 / t.elapsed().as_secs_f64();
    std::hint::black_box(map);
    println!(
        "ipam allocate (/16, {IPAM_ALLOCS} addresses): {:.0}/s; baseline BTreeMap insert {:.0}/s; ratio {:.2}",
        ipam_rate,
        base_rate,
        ipam_rate / base_rate
    );
}

async fn store_baseline() -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("bench.redb")).unwrap());
    let t = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in (w..API_CREATES).step_by(CONCURRENCY) {
                    let key = format!("/bench/{i}");
                    let txn = Txn::new().when(Compare::Absent(key.clone())).then(Op::Put { key, value: vec![0u8; 400] });
                    assert!(store.txn(txn).await.unwrap().succeeded);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    API_CREATES as f64 / t.elapsed().as_secs_f64()
}

async fn api_creates(url: String, client: reqwest::Client) -> f64 {
    let t = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|w| {
            let client = client.clone();
            let url = url.clone();
            tokio::spawn(async move {
                for i in (w..API_CREATES).step_by(CONCURRENCY) {
                    let r = client
                        .post(format!("{url}/v1/endpoints"))
                        .json(&json!({"network": "bench", "host": "h1", "name": format!("e{i}")}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status().as_u16(), 201);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    API_CREATES as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks benches to list tests; there are none.
    }
    if std::env::args().any(|a| a == "watch-memory") {
        return watch_memory(); // `cargo bench --bench controller -- watch-memory`: that one alone.
    }
    ipam();
    let c = support::ControllerProcess::start();
    let api = support::Api::new(&c);
    assert_eq!(api.post("/v1/networks", json!({"name": "bench", "subnets": [{"cidr": "10.0.0.0/16"}]})).0, 201);
    assert_eq!(api.put("/v1/hosts/h1", json!({"underlay_ip": "10.99.0.1"})).0, 200);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let base = rt.block_on(store_baseline());
    let t = Instant::now();
    let mut nets = 0;
    for i in 0..200 {
        let (s, _) = api.post(
            "/v1/networks",
            json!({"name": format!("n{i}"), "subnets": [{"cidr": format!("10.{}.{}.0/24", 100 + i / 250, i % 250)}]}),
        );
        assert_eq!(s, 201);
        nets += 1;
    }
    let net_rate = nets as f64 / t.elapsed().as_secs_f64();
    let api_rate = rt.block_on(api_creates(c.url.clone(), c.async_http(&support::Caller::Admin)));
    println!(
        "api endpoint create over mTLS ({API_CREATES}, {CONCURRENCY} concurrent): {:.0}/s; baseline durable store txn {:.0}/s; ratio {:.2}",
        api_rate,
        base,
        api_rate / base
    );
    println!("api network create over mTLS (sequential, one client): {net_rate:.0}/s");
    drop(c);

    // The same creates over plain HTTP (`--insecure-loopback`), same run.
    let plain = support::ControllerProcess::start_insecure();
    let api = support::Api::plain(&plain);
    assert_eq!(api.post("/v1/networks", json!({"name": "bench", "subnets": [{"cidr": "10.0.0.0/16"}]})).0, 201);
    assert_eq!(api.put("/v1/hosts/h1", json!({"underlay_ip": "10.99.0.1"})).0, 200);
    let plain_rate = rt.block_on(api_creates(plain.url.clone(), reqwest::Client::new()));
    println!(
        "api endpoint create over mTLS {api_rate:.0}/s ÷ over plain HTTP {plain_rate:.0}/s: ratio {:.2} (goal ≥ 0.80)",
        api_rate / plain_rate
    );
    drop(plain);
    healthz_under_big_bodies();
    watch_memory();
}

/// `VmRSS` and `VmHWM` of process `pid`, in MB.
fn rss_mb(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The controller's memory with `WATCHES` watches from revision 0 of a store
/// of `EVENTS` events (host records, each written again and again, so the
/// snapshot stays small), ÷ at rest.
fn watch_memory() {
    const WATCHES: usize = 1_000;
    const EVENTS: usize = 100_000;
    const PER_TXN: usize = 10;
    // The benchmark's own end of the connections.
    if let Ok((_, hard)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let mut c = support::ControllerProcess::start_on(dir.path(), port);
    c.kill9();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = RedbStore::open(&dir.path().join("tessera.redb")).unwrap();
        // The log keeps 100,000 events (the default): the controller's own
        // first events and these fill it without discarding any.
        for t in 0..(EVENTS - 100) / PER_TXN {
            let mut txn = Txn::new();
            for i in 0..PER_TXN {
                let n = (t * PER_TXN + i) % 1_000;
                let host = json!({"name": format!("h{n}"), "underlay_ip": format!("10.{}.{}.{}", 100 + n / 65536, (n / 256) % 256, n % 256), "last_seen": t});
                txn = txn.then(Op::put(format!("/tessera/hosts/h{n}"), serde_json::to_vec(&host).unwrap()));
            }
            store.txn(txn).await.unwrap();
        }
    });
    let c = support::ControllerProcess::restart_on(dir.path(), port);
    let pid = c.pid().expect("the controller runs");
    let api = support::Api::new(&c);
    let (_, snap) = api.get("/v1/snapshot");
    let revisions = snap["revision"].as_u64().unwrap_or(0);
    let written = EVENTS - 100;
    let (rest, _) = rss_mb(pid);
    let (held, peak, first_line) = rt.block_on(async {
        let client = c.async_http(&support::Caller::Admin);
        let opened: Vec<reqwest::Response> = futures::future::join_all((0..WATCHES).map(|_| {
            let (client, url) = (client.clone(), format!("{}/v1/watch?after=0", c.url));
            async move { client.get(url).send().await.expect("a watch opens") }
        }))
        .await;
        let refused: Vec<u16> = opened.iter().map(|r| r.status().as_u16()).filter(|s| *s != 200).collect();
        assert!(
            refused.is_empty(),
            "every watch is accepted: {} refused ({:?})",
            refused.len(),
            &refused[..refused.len().min(5)]
        );
        let mut opened = opened;
        let first = opened.pop().unwrap().chunk().await.unwrap().map(|b| b.len()).unwrap_or(0);
        let mut held: f64 = 0.0;
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            held = held.max(rss_mb(pid).0);
        }
        let (_, peak) = rss_mb(pid);
        drop(opened);
        (held, peak, first)
    });
    assert!(first_line > 0, "a watch streams events");
    println!(
        "controller RSS with {WATCHES} watches from revision 0 of a store of {written} host events and the controller's own ({revisions} revisions): {held:.0} MB (peak {peak:.0} MB); at rest {rest:.0} MB; ratio {:.1} (goal ≤ 200 MB)",
        held / rest
    );
}

/// `/healthz` latencies: `n` probes one after another.
fn healthz_probes(c: &support::ControllerProcess, n: usize) -> Vec<f64> {
    let http = c.http(&support::Caller::Nobody);
    (0..n)
        .map(|_| {
            let t = Instant::now();
            assert!(http.get(format!("{}/healthz", c.url)).send().unwrap().status().is_success());
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect()
}

fn p99(mut ms: Vec<f64>) -> f64 {
    ms.sort_by(|a, b| a.total_cmp(b));
    ms[(ms.len() * 99 / 100).min(ms.len() - 1)]
}

/// `/healthz` p99 while 10 clients send bodies of the largest size the API
/// reads (a network create with a 15 MiB label, refused after parsing) ÷
/// the same at rest, same controller, same run.
fn healthz_under_big_bodies() {
    const SENDERS: usize = 10;
    const PROBES: usize = 300;
    let c = support::ControllerProcess::start();
    let rest = p99(healthz_probes(&c, PROBES));
    let body =
        format!(r#"{{"name": "big", "subnets": [{{"cidr": "10.0.0.0/24"}}], "labels": {{"big": "{}"}}}}"#, "x".repeat(15 << 20));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let senders: Vec<_> = (0..SENDERS)
        .map(|_| {
            let (http, url, body, stop, sent) =
                (c.http(&support::Caller::Admin), c.url.clone(), body.clone(), stop.clone(), sent.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = http.post(format!("{url}/v1/networks")).body(body.clone()).send().unwrap();
                    assert_eq!(r.status().as_u16(), 400, "a 15 MiB label is refused after parsing");
                    sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let loaded = p99(healthz_probes(&c, PROBES));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in senders {
        s.join().unwrap();
    }
    println!(
        "/healthz p99 while {SENDERS} clients send 15 MiB bodies ({} sent): {loaded:.1} ms; at rest {rest:.1} ms; ratio {:.1} (goal ≤ 50 ms)",
        sent.load(std::sync::atomic::Ordering::Relaxed),
        loaded / rest
    );
}
