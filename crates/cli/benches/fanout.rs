//! Fan-out benchmark: one change reaching many hosts.
//!
//! A real controller process, and simulated agents in this process: each
//! takes a snapshot and watches from its revision over its own TLS
//! connection, decoding every line as an agent's mirror does (they program
//! no kernel). Then a network's policy changes, round after round; for each
//! simulated agent the time from the change's request to the moment it
//! decoded the change. Printed for 1,000 agents beside the same with one
//! agent (the baseline, same run), with the ratio, and the controller's
//! memory with 1,000 agents watching beside at rest. Goals: p99 ≤ 1 s with
//! 1,000 agents, controller RSS ≤ 1 GB.
//!
//! Then scoped fan-out: 1,000 agents spread over 10 networks, each asking
//! for its network's endpoints only (`networks=`), while 100 endpoints are
//! created in one network: what the agents received in all, beside the
//! same with every agent asking for everything (the baseline, same run).

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use support::{Api, Caller, ControllerProcess};
use tessera_model::watch::{Object, Snapshot, WatchEvent};

const AGENTS: usize = 1_000;
/// `FANOUT_AGENTS` runs with fewer (a quick look).
fn agents() -> usize {
    std::env::var("FANOUT_AGENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(AGENTS)
}
const ROUNDS: usize = 10;
/// How long one change may take to reach every agent before the run fails.
const PATIENCE: Duration = Duration::from_secs(60);

/// What the simulated agents share with the benchmark: the revision after
/// which a policy event counts, and when each agent decoded one.
struct Round {
    after: AtomicU64,
    seen: Vec<OnceLock<Instant>>,
}

/// One simulated agent: snapshot, then watch, decoding every line; records
/// the first policy event past the round's revision.
async fn agent(
    client: reqwest::Client,
    url: String,
    round: Arc<std::sync::RwLock<Arc<Round>>>,
    watching: Arc<AtomicUsize>,
    me: usize,
) {
    let snap: Snapshot = client.get(format!("{url}/v1/snapshot")).send().await.expect("snapshot").json().await.expect("decode");
    let resp = client.get(format!("{url}/v1/watch?after={}", snap.revision)).send().await.expect("watch");
    assert_eq!(resp.status(), 200, "the watch opens");
    watching.fetch_add(1, Ordering::SeqCst);
    let mut body = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(piece) = body.next().await {
        let Ok(piece) = piece else { return };
        buf.extend_from_slice(&piece);
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            let ev: WatchEvent = serde_json::from_slice(&line).expect("a watch line decodes");
            if std::env::var_os("FANOUT_DEBUG").is_some() {
                eprintln!("agent {me}: {}", String::from_utf8_lossy(&line).chars().take(200).collect::<String>());
            }
            if let WatchEvent::Put { revision, object } = &ev {
                if matches!(object.as_ref(), Object::Policy(_) | Object::PolicyRules(_)) {
                    let r = round.read().unwrap().clone();
                    if *revision > r.after.load(Ordering::SeqCst) {
                        let _ = r.seen[me].set(Instant::now());
                    }
                }
            }
        }
    }
}

fn revision(api: &Api) -> u64 {
    let (_, snap) = api.get("/v1/snapshot");
    snap["revision"].as_u64().expect("a revision")
}

fn percentile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok());
    kb.unwrap_or(0.0) / 1024.0
}

/// Runs `ROUNDS` policy changes with `agents` simulated agents watching;
/// the latencies in ms, and the controller's RSS while they watched.
fn run(agents: usize) -> (Vec<f64>, f64, f64) {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    let (s, b) = api.post("/v1/networks", json!({"name": "red", "subnets": [{"cidr": "10.1.0.0/16"}]}));
    assert_eq!(s, 201, "{b}");
    let (s, b) = api.post("/v1/networks", json!({"name": "green", "subnets": [{"cidr": "10.2.0.0/16"}]}));
    assert_eq!(s, 201, "{b}");
    let (s, b) = api.post("/v1/policies", json!({"name": "web", "rules": ["pass tcp red any <> green 80"]}));
    assert_eq!(s, 201, "{b}");
    let (s, b) = api.patch("/v1/networks/red", json!({"attach_policies": ["web"]}));
    assert_eq!(s, 200, "{b}");
    let pid = c.pid().expect("the controller runs");
    let rest = rss_mb(pid);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let round = Arc::new(std::sync::RwLock::new(Arc::new(Round {
        after: AtomicU64::new(u64::MAX),
        seen: (0..agents).map(|_| OnceLock::new()).collect(),
    })));
    let client = c.async_http(&Caller::Admin);
    let started = Instant::now();
    let watching = Arc::new(AtomicUsize::new(0));
    let mut tasks: Vec<_> =
        (0..agents).map(|i| rt.spawn(agent(client.clone(), c.url.clone(), round.clone(), watching.clone(), i))).collect();
    while watching.load(Ordering::SeqCst) < agents {
        if let Some(t) = tasks.iter().position(|t| t.is_finished()) {
            let why = rt.block_on(tasks.remove(t)).err().map(|e| e.to_string()).unwrap_or_default();
            panic!("simulated agent {t} stopped: {why}");
        }
        assert!(started.elapsed() < PATIENCE, "{} of {agents} agents watch after {PATIENCE:?}", watching.load(Ordering::SeqCst));
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!("   {agents} agents took their snapshot and watch within {:.1} s", started.elapsed().as_secs_f64());
    let mut latencies = Vec::new();
    let mut watching = 0.0f64;
    for r in 0..=ROUNDS {
        let next =
            Arc::new(Round { after: AtomicU64::new(revision(&api)), seen: (0..agents).map(|_| OnceLock::new()).collect() });
        *round.write().unwrap() = next.clone();
        let t0 = Instant::now();
        let rule = format!("pass tcp red any <> green {}", 1000 + r);
        let (s, b) = api.patch("/v1/policies/web", json!({"rules": [rule]}));
        assert_eq!(s, 200, "{b}");
        while next.seen.iter().any(|s| s.get().is_none()) {
            if let Some(t) = tasks.iter().position(|t| t.is_finished()) {
                let why = rt.block_on(tasks.remove(t)).err().map(|e| e.to_string()).unwrap_or_default();
                panic!("round {r}: simulated agent {t} stopped: {why}");
            }
            assert!(
                t0.elapsed() < PATIENCE,
                "round {r}: {} of {agents} agents did not see the change within {PATIENCE:?}",
                next.seen.iter().filter(|s| s.get().is_none()).count()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        if r == 0 {
            // A first change, as warm-up.
            continue;
        }
        latencies.extend(next.seen.iter().map(|s| s.get().unwrap().duration_since(t0).as_secs_f64() * 1e3));
        watching = watching.max(rss_mb(pid));
    }
    for t in tasks {
        t.abort();
    }
    (latencies, watching, rest)
}

/// An agent that counts the endpoint lines and bytes it receives, with
/// the snapshot and watch asked for with `query` (`networks=ID` or none).
async fn counting_agent(client: reqwest::Client, url: String, query: String, churn: Arc<Churn>, me: usize) {
    let snap: Snapshot =
        client.get(format!("{url}/v1/snapshot?{query}")).send().await.expect("snapshot").json().await.expect("decode");
    let resp = client.get(format!("{url}/v1/watch?after={}&{query}", snap.revision)).send().await.expect("watch");
    assert_eq!(resp.status(), 200, "the watch opens");
    churn.watching.fetch_add(1, Ordering::SeqCst);
    let mut body = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(Ok(piece)) = body.next().await {
        churn.bytes.fetch_add(piece.len() as u64, Ordering::Relaxed);
        buf.extend_from_slice(&piece);
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            if let WatchEvent::Put { object, .. } = serde_json::from_slice(&line).expect("a watch line decodes") {
                if matches!(object.as_ref(), Object::Endpoint(_)) {
                    churn.endpoints[me].fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }
}

/// What the agents of a churn run received.
struct Churn {
    watching: AtomicUsize,
    bytes: AtomicU64,
    endpoints: Vec<AtomicUsize>,
}

const NETWORKS: usize = 10;
const CREATES: usize = 100;

/// [`CREATES`] endpoint creates in one of [`NETWORKS`] networks with
/// `agents` watching, scoped to one network each or not; the endpoint
/// lines and the bytes they received in all.
fn churn(agents: usize, scoped: bool) -> (usize, u64) {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    let ids: Vec<String> = (0..NETWORKS)
        .map(|i| {
            let (s, b) =
                api.post("/v1/networks", json!({"name": format!("n{i}"), "subnets": [{"cidr": format!("10.{i}.0.0/16")}]}));
            assert_eq!(s, 201, "{b}");
            b["id"].as_str().unwrap().to_string()
        })
        .collect();
    let (s, b) = api.put("/v1/hosts/sim", json!({"underlay_ip": "10.99.0.9"}));
    assert_eq!(s, 200, "{b}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let churn = Arc::new(Churn {
        watching: AtomicUsize::new(0),
        bytes: AtomicU64::new(0),
        endpoints: (0..agents).map(|_| AtomicUsize::new(0)).collect(),
    });
    let client = c.async_http(&Caller::Admin);
    let tasks: Vec<_> = (0..agents)
        .map(|i| {
            let query = if scoped { format!("networks={}", ids[i % NETWORKS]) } else { String::new() };
            rt.spawn(counting_agent(client.clone(), c.url.clone(), query, churn.clone(), i))
        })
        .collect();
    let started = Instant::now();
    while churn.watching.load(Ordering::SeqCst) < agents {
        assert!(started.elapsed() < PATIENCE, "{} of {agents} agents watch", churn.watching.load(Ordering::SeqCst));
        std::thread::sleep(Duration::from_millis(5));
    }
    churn.bytes.store(0, Ordering::SeqCst);
    for i in 0..CREATES {
        let (s, b) = api.post("/v1/endpoints", json!({"network": "n0", "host": "sim", "name": format!("e{i}")}));
        assert_eq!(s, 201, "{b}");
    }
    let interested = |i: &usize| !scoped || i % NETWORKS == 0;
    let t0 = Instant::now();
    while (0..agents).filter(interested).any(|i| churn.endpoints[i].load(Ordering::SeqCst) < CREATES) {
        assert!(t0.elapsed() < PATIENCE, "the interested agents did not see every create");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Give lines the agents should not get time to arrive, if any were sent.
    std::thread::sleep(Duration::from_millis(500));
    for t in tasks {
        t.abort();
    }
    let lines = churn.endpoints.iter().map(|n| n.load(Ordering::SeqCst)).sum();
    (lines, churn.bytes.load(Ordering::SeqCst))
}

fn main() {
    if let Ok((_, hard)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
    let agents = agents();
    let (mut many, rss, rest) = run(agents);
    let (mut one, _, _) = run(1);
    let (p50, p99, max) = (percentile(&mut many, 0.5), percentile(&mut many, 0.99), percentile(&mut many, 1.0));
    let (b50, b99) = (percentile(&mut one, 0.5), percentile(&mut one, 0.99));
    println!(
        "policy change → decoded by every one of {agents} watching agents ({ROUNDS} rounds): p50 {p50:.0} ms p99 {p99:.0} ms max {max:.0} ms; baseline 1 agent p50 {b50:.0} ms p99 {b99:.0} ms; ratio p99 {:.1} (goal p99 ≤ 1000 ms)",
        p99 / b99.max(0.001)
    );
    println!(
        "controller RSS with {agents} agents watching: {rss:.0} MB; at rest {rest:.0} MB; ratio {:.1} (goal ≤ 1024 MB)",
        rss / rest.max(0.001)
    );
    let (scoped_lines, scoped_bytes) = churn(agents, true);
    let (all_lines, all_bytes) = churn(agents, false);
    println!(
        "{CREATES} endpoint creates in one of {NETWORKS} networks, {agents} agents: scoped (one network each) received {scoped_lines} endpoint lines, {:.1} MB; every agent asking for everything (baseline) {all_lines} lines, {:.1} MB; ratio {:.2}",
        scoped_bytes as f64 / 1e6,
        all_bytes as f64 / 1e6,
        scoped_bytes as f64 / all_bytes.max(1) as f64
    );
}
