//! Rule change at the API → enforcement, end to end, on a host holding
//! 50,000 rules ÷ the same with 10 rules, measured in the same run.
//!
//! A two-host Tessera (controller, agents) with two pairs of networks, each
//! pair connected by a policy attached to both: `red → green` under a
//! 50,000-rule policy, `blue → yellow` under a 10-rule one; in both the
//! matching rule (`tcp SRC any > DST 5001`) is last, after deny rules for
//! other ports; the two networks of a pair share a route target, so they
//! route to each other whatever the rules say, and the rules decide. A
//! client container on h1 probes a server container on h2.
//! One change toggles the last rule between `pass` and `reject` with
//! `PUT /v1/policies/{name}/rules/{index}` (one rule travels, is stored and
//! reaches the agents as one chunk); the time runs from sending the request
//! until a probe connection sees the new verdict (accepted, or refused by
//! the reject's reset). Changes of the two policies are interleaved. Prints
//! p50 and p99 of each, the ratio, and how long the API call itself took;
//! the goal is p99 ≤ 50 ms with 50,000 rules.
//!
//! The data plane part alone (desired state, plan, apply, without the
//! controller and the watch) is `cargo bench -p tessera-dataplane --bench policy`.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use serde_json::json;
use tessera_testkit::{addresses, Cluster, ClusterSpec, Netns};

const PORT: u16 = 5001;
const CHANGES: usize = 100;
/// The pause between two probes: the resolution of the measurement.
const PROBE_EVERY: Duration = Duration::from_millis(1);
const BIG: usize = 50_000;
const SMALL: usize = 10;

/// `n` rules from `src` to `dst`, the matching one (`ACTION tcp SRC any >
/// DST PORT`) last, deny rules for other ports first. Naming the networks
/// (not `any`) keeps each policy to its own pair: a pass rule to `any` would
/// connect the pairs to each other, and a change would also change routes.
fn rules(n: usize, src: &str, dst: &str, last: &str) -> Vec<String> {
    let mut r: Vec<String> = (0..n - 1).map(|i| format!("deny tcp {src} any > {dst} {}", 10_000 + i)).collect();
    r.push(last_rule(src, dst, last));
    r
}

/// The matching rule, last in the policy.
fn last_rule(src: &str, dst: &str, action: &str) -> String {
    format!("{action} tcp {src} any > {dst} {PORT}")
}

/// A server accepting (and dropping) connections on `ip:PORT` inside `ns`.
fn serve(ns: &Netns, ip: &str) {
    let addr: SocketAddr = format!("{ip}:{PORT}").parse().unwrap();
    let listener = tessera_fabric::run_in(ns, move || TcpListener::bind(addr)).unwrap().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });
}

/// Whether a connection from `ns` to `dst` is accepted now (`Some(true)`),
/// refused (`Some(false)`), or neither within the timeout (`None`).
fn probe(ns: &Netns, dst: SocketAddr) -> Option<bool> {
    tessera_fabric::run_in(ns, move || match TcpStream::connect_timeout(&dst, Duration::from_millis(20)) {
        Ok(_) => Some(true),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Some(false),
        Err(_) => None,
    })
    .unwrap()
}

fn wait_for(ns: &Netns, dst: SocketAddr, want: bool, limit: Duration) -> Result<Duration, String> {
    let t = Instant::now();
    loop {
        let seen = probe(ns, dst);
        if seen == Some(want) {
            return Ok(t.elapsed());
        }
        if t.elapsed() > limit {
            return Err(format!("the verdict did not become {want} within {limit:?}; probes see {seen:?}"));
        }
        // Probing without a pause would take a core of the two from the
        // agents and the controller being measured.
        std::thread::sleep(PROBE_EVERY);
    }
}

fn percentile(ms: &[f64], q: f64) -> f64 {
    let mut v = ms.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

struct Pair {
    policy: &'static str,
    n: usize,
    nets: (&'static str, &'static str),
    client: String,
    dst: SocketAddr,
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("tpb{}", std::process::id() % 100_000);
    let mut c = Cluster::start(ClusterSpec::new(&prefix, &["h1", "h2"], env!("CARGO_BIN_EXE_tessera"), dir.path().join("run")))
        .unwrap_or_else(|e| panic!("cannot start a Tessera fabric (run as root): {e:#}"));
    let url = c.url.clone();
    // The controller listens inside h1: the client's own thread is made there.
    let builder = tessera_testkit::admin_http(&c).unwrap();
    let http = tessera_fabric::run_in(c.host_netns(c.controller_host()).unwrap(), || {
        builder.no_proxy().timeout(Duration::from_secs(120)).build()
    })
    .unwrap()
    .unwrap();
    let set = |name: &str, n: usize, (src, dst): (&str, &str), last: &str, create: bool| {
        let resp = if create {
            http.post(format!("{url}/v1/policies")).json(&json!({ "name": name, "rules": rules(n, src, dst, last) })).send()
        } else {
            // Only the rule that changes is made (and sent).
            http.put(format!("{url}/v1/policies/{name}/rules/{}", n - 1)).json(&last_rule(src, dst, last)).send()
        }
        .unwrap();
        let status = resp.status();
        assert!(status.is_success(), "policy {name}: {status} {}", resp.text().unwrap_or_default());
    };
    let mut pairs = Vec::new();
    for (policy, n, src, dst, s_net, d_net, rt) in [
        ("big", BIG, "red", "green", "10.83.1.0/24", "10.83.2.0/24", "64512:831"),
        ("small", SMALL, "blue", "yellow", "10.83.3.0/24", "10.83.4.0/24", "64512:832"),
    ] {
        for (net, cidr) in [(src, s_net), (dst, d_net)] {
            c.cli_ok(&["network", "add", net, "--subnet", cidr, "--route-target", rt]).unwrap();
        }
        let t = Instant::now();
        set(policy, n, (src, dst), "pass", true);
        println!("  created policy {policy} ({n} rules) in {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
        for net in [src, dst] {
            c.cli_ok(&["network", "update", net, "--policy", policy]).unwrap();
        }
        let client = format!("{src}-c");
        let server = format!("{dst}-s");
        c.container("h1", &client).unwrap();
        c.container("h2", &server).unwrap();
        c.attach(&client, src, &[]).unwrap();
        let ip = addresses(&c.attach(&server, dst, &[]).unwrap())[0].clone();
        serve(c.netns_of(&server).unwrap(), &ip);
        let dst_addr: SocketAddr = format!("{ip}:{PORT}").parse().unwrap();
        wait_for(c.netns_of(&client).unwrap(), dst_addr, true, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}\n{}", c.logs_tail(20)));
        pairs.push(Pair { policy, n, nets: (src, dst), client, dst: dst_addr });
    }

    let verbose = std::env::var_os("TESSERA_BENCH_VERBOSE").is_some();
    let mut times: Vec<Vec<f64>> = vec![Vec::new(), Vec::new()];
    let mut api: Vec<Vec<f64>> = vec![Vec::new(), Vec::new()];
    for i in 0..CHANGES {
        let (last, want) = if i % 2 == 0 { ("reject", false) } else { ("pass", true) };
        for (k, p) in pairs.iter().enumerate() {
            let started = std::time::SystemTime::now();
            let t = Instant::now();
            set(p.policy, p.n, p.nets, last, false);
            api[k].push(t.elapsed().as_secs_f64() * 1e3);
            wait_for(c.netns_of(&p.client).unwrap(), p.dst, want, Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("{} ({} rules): {e}\n{}", p.policy, p.n, c.logs_tail(20)));
            times[k].push(t.elapsed().as_secs_f64() * 1e3);
            if verbose {
                let at = started.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                println!(
                    "  change {i} of {} at {}.{:06}: API call {:.1} ms, seen after {:.1} ms",
                    p.policy,
                    at.as_secs(),
                    at.subsec_micros(),
                    api[k][i],
                    times[k][i]
                );
            }
        }
    }
    let (big, small) = (&times[0], &times[1]);
    println!("rule change at the API (PUT of one rule) → enforced on the host, seen by probes, {CHANGES} changes each:");
    println!("  {BIG} rules: p50 {:>7.1} ms  p99 {:>7.1} ms", percentile(big, 0.5), percentile(big, 0.99));
    println!("  {SMALL} rules: p50 {:>7.1} ms  p99 {:>7.1} ms", percentile(small, 0.5), percentile(small, 0.99));
    for (k, n) in [(0, BIG), (1, SMALL)] {
        println!(
            "  of which the API call ({n} rules): p50 {:>7.1} ms  p99 {:>7.1} ms",
            percentile(&api[k], 0.5),
            percentile(&api[k], 0.99)
        );
    }
    println!(
        "  ratio {BIG} ÷ {SMALL}: p50 {:.2}, p99 {:.2} (goal: p99 ≤ 50 ms with {BIG} rules)",
        percentile(big, 0.5) / percentile(small, 0.5),
        percentile(big, 0.99) / percentile(small, 0.99)
    );
    if verbose {
        keep_logs(&dir.path().join("run"));
    }
    drop(c);
}

/// Copies the fabric's logs (controller, agents) out of the run directory,
/// which is removed at the end, so a verbose run can be read afterwards.
fn keep_logs(run: &std::path::Path) {
    let kept = std::env::temp_dir().join("tessera-bench-logs");
    let _ = std::fs::create_dir_all(&kept);
    for entry in std::fs::read_dir(run).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") {
            let _ = std::fs::copy(&path, kept.join(entry.file_name()));
        }
    }
    println!("logs kept in {}", kept.display());
}
