//! Overlay benchmarks (issue 3): Tessera's kernel data plane across two hosts
//! ÷ the same hosts routed without an overlay, measured in the same run.
//!
//! The fabric is the test kit's: hosts h1, h2 and h3 as network namespaces on an
//! underlay bridge, the real controller and one agent per host. Benchmarks:
//!
//! 1. single-stream TCP throughput (iperf3) between a container on h1 and one
//!    on h2 of one Tessera network ÷ the baseline: two more containers joined
//!    to their hosts by plain veth pairs and routed over the underlay (no
//!    encapsulation, MTU 1500);
//! 2. TCP request/response (1-byte request, 1-byte reply, one connection,
//!    TCP_NODELAY): rate and p99, overlay ÷ baseline. Client and server are
//!    this binary, re-executed inside the containers (`--rr-server`,
//!    `--rr-client`);
//! 3. endpoint attach → reachable from another host, 100 concurrent attaches
//!    spread over h1, h2 and h3, each probed from a container on another host
//!    (a TCP SYN answered by an RST proves
//!    the path both ways; the prober is this binary, `--probe`), each through
//!    `tessera attach` (a process each) and, in a second pass, through the
//!    agent's local API as the Docker and CNI plugins call it (one process).
//!    Two more passes explain the figure: probing only once each call has
//!    returned, and 20 attaches one at a time;
//! 4. forwarding throughput with 1,000 endpoints of the network on the hosts
//!    ÷ with 10: benchmarks 1 and 2 run with 10 endpoints, then the network is
//!    filled up to 1,000 (counting the 320 of benchmark 3), split evenly
//!    between the hosts. The baseline is measured again as a control for the
//!    machine's drift.
//!
//! 5. new TCP connections per second (connect and reset, one at a time) ÷ the
//!    baseline: the first packets of every connection take the kernel path;
//! 6. throughput with a 50,000-rule policy on the network (the flow's rule
//!    last) ÷ with a 10-rule one, at the size of benchmark 4;
//! 7. under that policy, a running stream (1 KiB a millisecond, established
//!    for a second: on the fast path when the agents run it) refused by a
//!    change of its rule to `deny`: from the request until the server's last
//!    read, 30 changes (10 with `--quick`); goal p99 ≤ 50 ms.
//!
//! The goals printed are those of the data plane the agents run
//! (`--dataplane`): the eBPF fast path's, or the kernel path's. With the fast
//! path, the measures begin once every port of h1 and h2 takes it (`tessera
//! vif list` shows each port's path; a new port does after 2 s).
//!
//! Throughput and request/response runs alternate overlay and baseline and
//! report the median of three. `--quick`: one run each, 2 s instead of 5, and
//! 200 endpoints instead of 1,000 (so benchmark 4 compares the 330 that
//! benchmark 3 leaves with 10). `--attach-only`, `--connections-only`: benchmark 3 or 5
//! alone. `--dataplane kernel|ebpf`: the agents' data
//! plane (the agent's default otherwise). `--keep-logs`: keep the run directory (the
//! controller's and agents' logs). Needs root, iproute2, nftables and iperf3;
//! fails with the reason when it cannot run.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tessera_fabric::sysctl_write;
use tessera_testkit::{addresses, exec_in, Cluster, ClusterSpec, Netns};

#[path = "common/connect.rs"]
mod connect;
#[path = "overlay/stream_end.rs"]
mod stream_end;

/// The network every overlay container joins.
const NETWORK: &str = "bench";
const SUBNET: &str = "10.20.0.0/20";
/// Static addresses of the attach-latency containers of each pass (far above what IPAM hands
/// out first).
const PROBED_BASE: Ipv4Addr = Ipv4Addr::new(10, 20, 12, 0);
const PROBED_AFTER_BASE: Ipv4Addr = Ipv4Addr::new(10, 20, 13, 0);
const PROBED_SEQUENTIAL_BASE: Ipv4Addr = Ipv4Addr::new(10, 20, 14, 0);
const PROBED_API_BASE: Ipv4Addr = Ipv4Addr::new(10, 20, 15, 0);
/// Concurrent attaches of benchmark 3.
const CONCURRENT_ATTACHES: usize = 100;
/// Attaches one at a time, for comparison: the cost of one attach without contention.
const SEQUENTIAL_ATTACHES: usize = 20;
/// Endpoints of the network on the hosts for the "few endpoints" throughput.
const FEW_ENDPOINTS: usize = 10;
/// Workers attaching the filler endpoints of benchmark 4.
const FILL_WORKERS: usize = 16;

const RR_PORT: u16 = 7001;
const IPERF_PORT: u16 = 5201;
const CONNECT_PORT: u16 = 7002;
/// The policies of benchmark 6.
const FEW_RULES: usize = 10;
const MANY_RULES: usize = 50_000;
/// Nothing listens here: a SYN to it is answered by an RST once the path works.
const PROBE_PORT: u16 = 9;
/// How long one probe waits for its answer before sending a new SYN.
const PROBE_ATTEMPT: Duration = Duration::from_millis(20);

/// Baseline addresses: one /32 per container, from a range Tessera does not use.
const BASE_H1: Ipv4Addr = Ipv4Addr::new(172, 30, 1, 2);
const BASE_H2: Ipv4Addr = Ipv4Addr::new(172, 30, 2, 2);
/// The baseline containers' next hop: link-local, pinned to the host veth's MAC.
const BASE_NEXT_HOP: &str = "169.254.1.1";
const BASE_HOST_MAC: &str = "ee:ee:ee:ee:ee:ee";

/// How much to measure.
#[derive(Debug, Clone, Copy)]
struct Plan {
    runs: usize,
    secs: u64,
    endpoints: usize,
    /// Only the attach passes (`--attach-only`): for work on attach latency.
    attach_only: bool,
    /// Only benchmark 5 (`--connections-only`): for work on the cost of new connections.
    connections_only: bool,
}

impl Plan {
    fn from_args(args: &[String]) -> Result<Plan> {
        let attach_only = args.iter().any(|a| a == "--attach-only");
        let connections_only = args.iter().any(|a| a == "--connections-only");
        if attach_only && connections_only {
            bail!("--attach-only and --connections-only each select one benchmark: give one of them");
        }
        Ok(if args.iter().any(|a| a == "--quick") {
            Plan { runs: 1, secs: 2, endpoints: 200, attach_only, connections_only }
        } else {
            Plan { runs: 3, secs: 5, endpoints: 1_000, attach_only, connections_only }
        })
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    // Roles of this binary re-executed inside a container: handled before anything else.
    match args.get(1).map(String::as_str) {
        Some("--rr-server") => return rr_server(args.get(2).context("--rr-server PORT")?.parse()?),
        Some("--rr-client") => {
            let addr = args.get(2).context("--rr-client ADDR:PORT SECS")?.parse()?;
            let secs = args.get(3).context("--rr-client ADDR:PORT SECS")?.parse()?;
            return rr_client(addr, Duration::from_secs_f64(secs));
        }
        Some("--probe") => return probe_server(args.get(2).context("--probe PORT")?.parse()?),
        Some("--accept-server") => return connect::accept_server(args.get(2).context("PORT")?.parse()?),
        Some("--connect-client") => {
            let addr = args.get(2).context("--connect-client ADDR:PORT SECS")?.parse()?;
            let secs = args.get(3).context("--connect-client ADDR:PORT SECS")?.parse()?;
            return connect::connect_client(addr, Duration::from_secs_f64(secs), false);
        }
        _ => {}
    }
    if args.iter().any(|a| a == "--list") {
        return Ok(()); // `cargo test --benches` asks benches to list tests; there are none.
    }
    let plan = Plan::from_args(&args)?;
    let started = Instant::now();
    let dir = tempfile::tempdir().context("temporary directory")?;
    let prefix = format!("tbn{}", std::process::id() % 100_000);
    let spec = ClusterSpec::new(&prefix, &["h1", "h2", "h3"], env!("CARGO_BIN_EXE_tessera"), dir.path());
    let mut cluster = Cluster::build(spec).context("cannot start a Tessera fabric (root, iproute2, nftables needed)")?;
    if let Some(dataplane) =
        args.iter().position(|a| a == "--dataplane").map(|i| args.get(i + 1).context("--dataplane kernel|ebpf"))
    {
        let dataplane = dataplane?;
        for h in ["h1", "h2", "h3"] {
            cluster.set_agent_args(h, &["--dataplane", dataplane]);
        }
    }
    cluster.run().context("cannot start Tessera in the fabric")?;
    let dataplane = args.iter().position(|a| a == "--dataplane").and_then(|i| args.get(i + 1)).cloned().unwrap_or_default();
    eprintln!("fabric {prefix} up in {:.1?}; plan {plan:?}", started.elapsed());
    let result = run(&mut cluster, plan, &dataplane).map(|mut r| {
        r.dataplane = dataplane;
        r
    });
    if result.is_err() {
        eprintln!("{}", cluster.logs_tail(30));
    }
    let report = result?;
    drop(cluster);
    if args.iter().any(|a| a == "--keep-logs") {
        eprintln!("logs kept in {}", dir.keep().display());
    }
    report.print(plan, started.elapsed());
    Ok(())
}

/// Everything the final table shows.
#[derive(Debug, Default)]
struct Report {
    mtu_overlay: u32,
    mtu_baseline: u32,
    /// The paths of the ports of h1 and h2 when the measures began.
    paths: String,
    tput: Pair<Iperf>,
    rr: Pair<Rr>,
    /// Probing from the start of each attach call (the benchmark's figure).
    attach: AttachLatency,
    /// Probing only once each attach call has returned (see [`ProbeFrom`]).
    attach_after: AttachLatency,
    attach_api: AttachLatency,
    /// [`SEQUENTIAL_ATTACHES`] attaches one at a time, probing after each call.
    attach_sequential: AttachLatency,
    fill_secs: f64,
    endpoints_many: usize,
    tput_many: Pair<Iperf>,
    cps: Pair<f64>,
    tput_few_rules: Pair<Iperf>,
    tput_many_rules: Pair<Iperf>,
    /// 7: how long a running stream lasted after the request that refused it, ms.
    stream_end: Vec<f64>,
    /// The agents' `--dataplane` (empty: their default).
    dataplane: String,
}

/// Runs of the overlay and of its baseline, in the order they ran.
#[derive(Debug)]
struct Pair<T> {
    overlay: Vec<T>,
    baseline: Vec<T>,
}

impl<T> Default for Pair<T> {
    fn default() -> Self {
        Pair { overlay: Vec::new(), baseline: Vec::new() }
    }
}

/// The two containers of one side of a comparison.
struct Side {
    label: &'static str,
    client: String,
    server: String,
    server_addr: Ipv4Addr,
}

fn run(c: &mut Cluster, plan: Plan, dataplane: &str) -> Result<Report> {
    let mut report = Report::default();
    c.cli_ok(&["network", "add", NETWORK, "--subnet", SUBNET])?;

    // The measured pair, the fillers that make FEW_ENDPOINTS, and the baseline pair.
    c.container("h1", "c1")?;
    c.container("h2", "c2")?;
    c.attach("c1", NETWORK, &[])?;
    let c2 = first_v4(&c.attach("c2", NETWORK, &[])?)?;
    let fillers: Vec<(String, &str)> =
        (0..FEW_ENDPOINTS - 2).map(|i| (format!("f{i}"), if i % 2 == 0 { "h1" } else { "h2" })).collect();
    for (name, host) in &fillers {
        c.container(host, name)?;
        c.attach(name, NETWORK, &[])?;
    }
    c.container("h1", "b1")?;
    c.container("h2", "b2")?;
    let (u1, u2) = (c.underlay_ip("h1")?, c.underlay_ip("h2")?);
    baseline_connect(c, "h1", "b1", "bv1", BASE_H1, BASE_H2, u2)?;
    baseline_connect(c, "h2", "b2", "bv2", BASE_H2, BASE_H1, u1)?;
    report.mtu_overlay = mtu(c.netns_of("c1")?)?;
    report.mtu_baseline = mtu(c.netns_of("b1")?)?;

    let overlay = Side { label: "overlay", client: "c1".into(), server: "c2".into(), server_addr: c2 };
    let baseline = Side { label: "baseline", client: "b1".into(), server: "b2".into(), server_addr: BASE_H2 };
    for p in [&overlay, &baseline] {
        if c.ping(&p.client, &p.server_addr.to_string(), 2)? == 0 {
            bail!("{}: {} cannot reach {} ({})", p.label, p.client, p.server, p.server_addr);
        }
    }

    report.paths = wait_for_fast_path(c, dataplane)?;
    eprintln!("agents (their CPU is sampled during each iperf3 run): pids {:?}", agent_pids(c));
    if !plan.attach_only && !plan.connections_only {
        eprintln!("== 1. cross-host TCP throughput, {FEW_ENDPOINTS} endpoints");
        report.tput = measure_pair(plan, &overlay, &baseline, |p| iperf(c, p, plan.secs))?;
        eprintln!("== 2. cross-host TCP request/response");
        report.rr = measure_pair(plan, &overlay, &baseline, |p| rr(c, p, plan.secs))?;
    }
    if !plan.attach_only {
        eprintln!("== 5. new TCP connections per second");
        report.cps = measure_pair(plan, &overlay, &baseline, |p| connections(c, p, plan.secs))?;
    }
    if plan.connections_only {
        return Ok(report);
    }
    eprintln!("== 3. {CONCURRENT_ATTACHES} concurrent attaches across h1, h2 and h3, each probed from another host");
    let pass = AttachPass {
        prefix: "a",
        base: PROBED_BASE,
        count: CONCURRENT_ATTACHES,
        concurrent: true,
        from: ProbeFrom::AttachStart,
        via: Via::Cli,
        hosts: &["h1", "h2", "h3"],
    };
    report.attach = attach_to_reachable(c, pass)?;
    eprintln!("   probing from the attach start: {}", report.attach);
    let api = AttachPass { prefix: "p", base: PROBED_API_BASE, via: Via::AgentApi, ..pass };
    report.attach_api = attach_to_reachable(c, api)?;
    eprintln!("   through the agent's API, probing from the attach start: {}", report.attach_api);
    let pass = AttachPass { prefix: "r", base: PROBED_AFTER_BASE, from: ProbeFrom::AttachReturn, ..pass };
    report.attach_after = attach_to_reachable(c, pass)?;
    eprintln!("   probing once the attach returned: {}", report.attach_after);
    let pass = AttachPass {
        prefix: "q",
        base: PROBED_SEQUENTIAL_BASE,
        count: SEQUENTIAL_ATTACHES,
        concurrent: false,
        hosts: &["h2"],
        ..pass
    };
    report.attach_sequential = attach_to_reachable(c, pass)?;
    eprintln!("   {SEQUENTIAL_ATTACHES} attaches one at a time: {}", report.attach_sequential);
    if plan.attach_only {
        return Ok(report);
    }

    eprintln!("== 4. scaling the network to {} endpoints", plan.endpoints);
    let t = Instant::now();
    fill(c, plan.endpoints)?;
    report.fill_secs = t.elapsed().as_secs_f64();
    report.endpoints_many = endpoint_count(c)?;
    report.tput_many = measure_pair(plan, &overlay, &baseline, |p| iperf(c, p, plan.secs))?;
    eprintln!("== 6. throughput under a {FEW_RULES}-rule and a {MANY_RULES}-rule policy");
    policy(c, "few", FEW_RULES, None)?;
    report.tput_few_rules = measure_pair(plan, &overlay, &baseline, |p| iperf(c, p, plan.secs))?;
    policy(c, "many", MANY_RULES, Some("few"))?;
    report.tput_many_rules = measure_pair(plan, &overlay, &baseline, |p| iperf(c, p, plan.secs))?;
    eprintln!("== 7. a deny rule ends a running stream, under the {MANY_RULES}-rule policy");
    let server = SocketAddr::from((c2, IPERF_PORT));
    report.stream_end = stream_end::stream_end(c, "many", MANY_RULES - 1, NETWORK, server, 10 * plan.runs)?;
    Ok(report)
}

/// Attaches a policy of `n` rules to the network, iperf3's rule last (deny
/// rules for other ports before it), in place of the one `replaces` (a
/// network's policies are an ordered list: the earlier one's pass would
/// match first), and waits for the agents to enforce it.
fn policy(c: &Cluster, name: &str, n: usize, replaces: Option<&str>) -> Result<()> {
    let mut rules: Vec<String> = (0..n - 1).map(|i| format!("deny tcp {NETWORK} any > {NETWORK} {}", 10_000 + i)).collect();
    rules.push(format!("pass tcp {NETWORK} any > {NETWORK} {IPERF_PORT}"));
    let builder = tessera_testkit::admin_http(c)?;
    let http = tessera_fabric::run_in(c.host_netns(c.controller_host())?, || {
        builder.no_proxy().timeout(Duration::from_secs(120)).build()
    })??;
    let resp = http.post(format!("{}/v1/policies", c.url)).json(&serde_json::json!({ "name": name, "rules": rules })).send()?;
    if !resp.status().is_success() {
        bail!("policy {name}: {} {}", resp.status(), resp.text().unwrap_or_default());
    }
    match replaces {
        Some(old) => c.cli_ok(&["network", "update", NETWORK, "--detach-policy", old, "--policy", name])?,
        None => c.cli_ok(&["network", "update", NETWORK, "--policy", name])?,
    };
    // The agents compile and install it (a second or two for 50,000 rules).
    thread::sleep(Duration::from_secs(if n > 1_000 { 10 } else { 2 }));
    Ok(())
}

/// This binary in `p.server` (`--accept-server`) and in `p.client`
/// (`--connect-client`): connections per second.
fn connections(c: &Cluster, p: &Side, secs: u64) -> Result<f64> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(&exe);
    cmd.args(["--accept-server", &CONNECT_PORT.to_string()]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let server = c.fabric.spawn_in_netns(c.netns_of(&p.server)?, cmd)?;
    thread::sleep(Duration::from_millis(300));
    let target = format!("{}:{CONNECT_PORT}", p.server_addr);
    let out = c.exec(&p.client, &exe.display().to_string(), &["--connect-client", &target, &secs.to_string()])?;
    reap(server, Duration::from_millis(100));
    if !out.status.success() {
        bail!("connect client failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().next().context("no rate printed")?.parse().context("the client's rate")
}

/// Runs `f` on the overlay and on the baseline alternately, `plan.runs` times each.
fn measure_pair<T: std::fmt::Debug>(
    plan: Plan,
    overlay: &Side,
    baseline: &Side,
    mut f: impl FnMut(&Side) -> Result<T>,
) -> Result<Pair<T>> {
    let mut pair = Pair::default();
    for i in 1..=plan.runs {
        for (side, runs) in [(overlay, &mut pair.overlay), (baseline, &mut pair.baseline)] {
            let r = f(side).with_context(|| format!("{} run {i}", side.label))?;
            eprintln!("   {:<8} run {i}: {r:?}", side.label);
            runs.push(r);
        }
    }
    Ok(pair)
}

fn first_v4(endpoint: &serde_json::Value) -> Result<Ipv4Addr> {
    addresses(endpoint)
        .iter()
        .find_map(|a| a.parse().ok())
        .with_context(|| format!("endpoint without an IPv4 address: {endpoint}"))
}

/// Runs `ip ARGS` in `ns`, failing with its stderr.
fn ip(ns: &Netns, args: &[&str]) -> Result<String> {
    let out = exec_in(ns, "ip", args).context("cannot run ip (install iproute2)")?;
    if !out.status.success() {
        bail!("ip {} in {}: {}", args.join(" "), ns.name(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The baseline: `container` joined to `host` by a plain veth pair and routed over the underlay,
/// the way a routed container network without an overlay (Calico without IPIP) does it:
///
/// ```text
/// host:      ip link add VETH address ee:ee:ee:ee:ee:ee type veth peer name eth0 netns C
///            sysctl net.ipv4.conf.VETH.proxy_arp=1
///            ip route add ADDR/32 dev VETH
///            ip route add PEER/32 via PEER_UNDERLAY dev eth0
/// container: ip addr add ADDR/32 dev eth0
///            ip route add 169.254.1.1 dev eth0 scope link
///            ip neigh replace 169.254.1.1 lladdr ee:ee:ee:ee:ee:ee dev eth0 nud permanent
///            ip route add default via 169.254.1.1
/// ```
///
/// Proxy ARP alone does not answer for 169.254.1.1 here: the kernel answers by proxy only for a
/// target it has a route to, and the fabric's hosts have no default route. So the container's
/// neighbour entry for the next hop is pinned to the host veth's fixed MAC instead.
fn baseline_connect(
    c: &Cluster,
    host: &str,
    container: &str,
    veth: &str,
    addr: Ipv4Addr,
    peer: Ipv4Addr,
    peer_underlay: Ipv4Addr,
) -> Result<()> {
    let h = c.host_netns(host)?;
    let n = c.netns_of(container)?;
    let (addr32, peer32, via) = (format!("{addr}/32"), format!("{peer}/32"), peer_underlay.to_string());
    ip(h, &["link", "add", veth, "address", BASE_HOST_MAC, "type", "veth", "peer", "name", "eth0", "netns", n.name()])?;
    ip(h, &["link", "set", veth, "up"])?;
    sysctl_write(h, &format!("net.ipv4.conf.{veth}.proxy_arp"), "1")?;
    ip(h, &["route", "add", &addr32, "dev", veth])?;
    ip(h, &["route", "add", &peer32, "via", &via, "dev", "eth0"])?;
    ip(n, &["addr", "add", &addr32, "dev", "eth0"])?;
    ip(n, &["link", "set", "eth0", "up"])?;
    ip(n, &["route", "add", BASE_NEXT_HOP, "dev", "eth0", "scope", "link"])?;
    ip(n, &["neigh", "replace", BASE_NEXT_HOP, "lladdr", BASE_HOST_MAC, "dev", "eth0", "nud", "permanent"])?;
    ip(n, &["route", "add", "default", "via", BASE_NEXT_HOP])?;
    Ok(())
}

/// Waits until the endpoint ports of h1 and h2 (the measured pair's among
/// them) take the fast path, as `tessera vif list` shows (a new port does
/// after a moment), unless the agents run the kernel path; returns the ports'
/// paths, counted. With `--dataplane ebpf`, a port still on the kernel path
/// after 15 s is an error.
fn wait_for_fast_path(c: &Cluster, dataplane: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut paths = BTreeMap::<String, usize>::new();
        for host in ["h1", "h2"] {
            let socket = c.agent_socket(host).display().to_string();
            let out = c.tessera_on(host, &["--json", "vif", "list", "--socket", &socket], &[])?;
            let vifs: serde_json::Value = serde_json::from_slice(&out.stdout).context("vif list --json")?;
            for v in vifs.as_array().into_iter().flatten().filter(|v| v["kind"] == "endpoint") {
                *paths.entry(v["path"].as_str().unwrap_or("unknown").to_string()).or_default() += 1;
            }
        }
        let shown = paths.iter().map(|(path, n)| format!("{n} {path}")).collect::<Vec<_>>().join(", ");
        if dataplane == "kernel" || paths.keys().all(|p| p == "ebpf") {
            return Ok(shown);
        }
        if Instant::now() >= deadline {
            if dataplane == "ebpf" {
                bail!("the ports of h1 and h2 do not all take the fast path: {shown}");
            }
            return Ok(shown);
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// MTU of `eth0` in `ns`.
fn mtu(ns: &Netns) -> Result<u32> {
    let v: serde_json::Value = serde_json::from_str(&ip(ns, &["-j", "link", "show", "dev", "eth0"])?)?;
    v[0]["mtu"].as_u64().map(|m| m as u32).context("no mtu in ip -j link")
}

/// Kills (if still running) and reaps a child of ours.
fn reap(mut child: Child, grace: Duration) {
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

// ---------------------------------------------------------------------------------------------
// 1 and 4: iperf3

/// One iperf3 run.
#[derive(Debug, Clone, Copy)]
struct Iperf {
    gbps: f64,
    retransmits: u64,
    /// CPU used by the sending and the receiving iperf3 processes, % of one core.
    cpu_sender: f64,
    cpu_receiver: f64,
    /// CPU used by both agents during the run, % of one core.
    cpu_agents: f64,
}

/// `iperf3 -c SERVER -t SECS -J` from `p.client` to an `iperf3 -s -1` in `p.server`.
fn iperf(c: &Cluster, p: &Side, secs: u64) -> Result<Iperf> {
    let mut cmd = Command::new("iperf3");
    cmd.args(["-s", "-1", "-p", &IPERF_PORT.to_string()]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let server = c.fabric.spawn_in_netns(c.netns_of(&p.server)?, cmd).context("cannot run iperf3 (install iperf3)")?;
    let agents = agent_pids(c);
    let mut result = Err(anyhow::anyhow!("iperf3 never ran"));
    for _attempt in 0..20 {
        thread::sleep(Duration::from_millis(150)); // the server starts listening
        let cpu0 = (cpu_ticks(&agents), Instant::now());
        let out = c.exec(
            &p.client,
            "iperf3",
            &["-c", &p.server_addr.to_string(), "-p", &IPERF_PORT.to_string(), "-t", &secs.to_string(), "-J"],
        )?;
        let cpu_agents = (cpu_ticks(&agents) - cpu0.0) as f64 / cpu0.1.elapsed().as_secs_f64(); // 100 ticks/s
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if out.status.success() {
            let end = &v["end"];
            result = Ok(Iperf {
                gbps: end["sum_received"]["bits_per_second"].as_f64().context("iperf3 -J: no sum_received")? / 1e9,
                retransmits: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
                cpu_sender: end["cpu_utilization_percent"]["host_total"].as_f64().unwrap_or(f64::NAN),
                cpu_receiver: end["cpu_utilization_percent"]["remote_total"].as_f64().unwrap_or(f64::NAN),
                cpu_agents,
            });
            break;
        }
        let error = v["error"].as_str().unwrap_or_default().to_string();
        result = Err(anyhow::anyhow!("iperf3 client failed: {error} {}", String::from_utf8_lossy(&out.stderr).trim()));
        if !error.contains("connect") {
            break;
        }
    }
    reap(server, Duration::from_secs(2));
    result
}

/// Pids of this cluster's agents (their command line names our run directory).
fn agent_pids(c: &Cluster) -> Vec<u32> {
    let run_dir = c.spec().run_dir.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.contains(&b"agent".as_slice()) && String::from_utf8_lossy(&cmdline).contains(&run_dir)
        })
        .collect()
}

/// utime + stime of `pids`, in clock ticks (100 per second on Linux).
fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split(' ').collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

// ---------------------------------------------------------------------------------------------
// 2: request/response

/// One request/response run, as `--rr-client` prints it.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct Rr {
    transactions: u64,
    rate: f64,
    p50_us: f64,
    p99_us: f64,
}

/// `--rr-server PORT`: serves one connection, answering every byte with one byte, until EOF.
fn rr_server(port: u16) -> Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port))?;
    let (mut conn, _) = listener.accept()?;
    conn.set_nodelay(true)?;
    let mut b = [0u8; 1];
    loop {
        match conn.read(&mut b)? {
            0 => return Ok(()),
            _ => conn.write_all(&b)?,
        }
    }
}

/// `--rr-client ADDR:PORT SECS`: one connection, 1-byte request and 1-byte reply for SECS;
/// prints an [`Rr`] as JSON.
fn rr_client(addr: SocketAddr, secs: Duration) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut conn = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(c) => break c,
            Err(e) if Instant::now() > deadline => return Err(e).context(format!("connect {addr}")),
            Err(_) => thread::sleep(Duration::from_millis(50)),
        }
    };
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut lat_ns: Vec<u64> = Vec::with_capacity(1 << 20);
    let mut b = [1u8; 1];
    let start = Instant::now();
    while start.elapsed() < secs {
        let t = Instant::now();
        conn.write_all(&b)?;
        conn.read_exact(&mut b)?;
        lat_ns.push(t.elapsed().as_nanos() as u64);
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat_ns.sort_unstable();
    let us = |p: f64| percentile_u64(&lat_ns, p) as f64 / 1e3;
    let rr = Rr { transactions: lat_ns.len() as u64, rate: lat_ns.len() as f64 / elapsed, p50_us: us(0.50), p99_us: us(0.99) };
    println!("{}", serde_json::to_string(&rr)?);
    Ok(())
}

/// This binary in `p.server` (`--rr-server`) and in `p.client` (`--rr-client`).
fn rr(c: &Cluster, p: &Side, secs: u64) -> Result<Rr> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(&exe);
    cmd.args(["--rr-server", &RR_PORT.to_string()]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let server = c.fabric.spawn_in_netns(c.netns_of(&p.server)?, cmd)?;
    let target = format!("{}:{RR_PORT}", p.server_addr);
    let out = c.exec(&p.client, &exe.display().to_string(), &["--rr-client", &target, &secs.to_string()])?;
    reap(server, Duration::from_secs(2));
    if !out.status.success() {
        bail!("rr client failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

// ---------------------------------------------------------------------------------------------
// 3: attach → reachable

/// `--probe PORT`: reads `ID ADDR` lines on stdin; for each, sends SYNs to ADDR:PORT (a new one
/// every [`PROBE_ATTEMPT`]) until one is answered (an RST, or an accept), then prints `ID ok`
/// (`ID timeout` after 30 s).
fn probe_server(port: u16) -> Result<()> {
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let Some((id, addr)) = line.split_once(' ') else { continue };
        let (id, addr): (String, SocketAddr) = (id.to_string(), SocketAddr::new(addr.trim().parse()?, port));
        thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            let verdict = loop {
                let t = Instant::now();
                match TcpStream::connect_timeout(&addr, PROBE_ATTEMPT) {
                    Ok(_) => break "ok",
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break "ok",
                    Err(_) if Instant::now() > deadline => break "timeout",
                    // An immediate error (no route, host unreachable): do not spin.
                    Err(_) => thread::sleep(PROBE_ATTEMPT.saturating_sub(t.elapsed()).max(Duration::from_millis(1))),
                }
            };
            println!("{id} {verdict}");
        });
    }
    thread::sleep(Duration::from_secs(31)); // stdin closed: let the last probes finish
    Ok(())
}

/// When the prober starts sending SYNs to a new endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeFrom {
    /// With the attach call: the benchmark's definition of attach → reachable.
    AttachStart,
    /// Once the attach call has returned (the latency is still counted from its start). Traffic
    /// sent to the endpoint before its host has programmed it can leave an unresolved
    /// neighbour entry there that delays reachability; this pass shows the latency without it.
    AttachReturn,
}

/// Latencies of one pass of concurrent attaches, in ms, in container order.
#[derive(Debug, Default)]
struct AttachLatency {
    /// From the start of the attach call until the prober on another host got an answer.
    reach: Vec<f64>,
    /// The attach call alone (`tessera attach` on h2, until the agent has programmed it).
    call: Vec<f64>,
}

/// One pass of attaches, each probed from another host.
#[derive(Debug, Clone, Copy)]
struct AttachPass {
    /// Containers are named `<prefix><i>` and get the static address `base + 1 + i`, so that
    /// probing can start with the attach call.
    prefix: &'static str,
    base: Ipv4Addr,
    count: usize,
    /// All at once (released together by a barrier), or one after the other.
    concurrent: bool,
    from: ProbeFrom,
    /// Through `tessera attach` (a process each), or the agent's local API
    /// as the Docker and CNI plugins call it (one process, many requests).
    via: Via,
    /// The hosts the containers are spread over, in turn. Those on h1 are
    /// probed from `c2` on h2, the others from `c1` on h1.
    hosts: &'static [&'static str],
}

/// How a pass attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Cli,
    AgentApi,
}

impl std::fmt::Display for AttachLatency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = |v: &[f64], q: f64| percentile(v, q);
        let dist = |v: &[f64]| {
            format!("min {:.0} p50 {:.0} p90 {:.0} p99 {:.0} max {:.0}", p(v, 0.0), p(v, 0.5), p(v, 0.9), p(v, 0.99), p(v, 1.0))
        };
        write!(f, "→ reachable ms {}; call ms {}", dist(&self.reach), dist(&self.call))
    }
}

/// Attaches `pass.count` new containers spread over `pass.hosts` while a
/// prober on another host (in `c1` on h1, or `c2` on h2 for those on h1)
/// sends SYNs to each from `pass.from` on.
fn attach_to_reachable(c: &mut Cluster, pass: AttachPass) -> Result<AttachLatency> {
    let AttachPass { prefix, base, count, concurrent, from, hosts, .. } = pass;
    let names: Vec<String> = (0..count).map(|i| format!("{prefix}{i}")).collect();
    let host_of = |i: usize| hosts[i % hosts.len()];
    for (i, n) in names.iter().enumerate() {
        c.container(host_of(i), n)?;
    }
    let c = &*c;
    let prober_of = |host: &str| if host == "h1" { "c2" } else { "c1" };
    let (reached_tx, reached_rx) = mpsc::channel::<(usize, bool, Instant)>();
    let mut probers: BTreeMap<&str, (Child, std::sync::Mutex<std::process::ChildStdin>, thread::JoinHandle<()>)> =
        BTreeMap::new();
    for host in hosts {
        let from = prober_of(host);
        if probers.contains_key(from) {
            continue;
        }
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(["--probe", &PROBE_PORT.to_string()]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut prober = c.fabric.spawn_in_netns(c.netns_of(from)?, cmd)?;
        let (Some(probe_in), Some(probe_out)) = (prober.stdin.take(), prober.stdout.take()) else {
            reap(prober, Duration::ZERO);
            bail!("prober without pipes");
        };
        let reached_tx = reached_tx.clone();
        let reader = thread::spawn(move || {
            for line in BufReader::new(probe_out).lines().map_while(Result::ok) {
                let now = Instant::now();
                if let Some((id, verdict)) = line.split_once(' ') {
                    if let Ok(id) = id.parse() {
                        let _ = reached_tx.send((id, verdict == "ok", now));
                    }
                }
            }
        });
        probers.insert(from, (prober, std::sync::Mutex::new(probe_in), reader));
    }
    drop(reached_tx);
    let probe = |i: usize, addr: &str| -> Result<()> {
        let (_, input, _) = &probers[prober_of(host_of(i))];
        Ok(writeln!(input.lock().unwrap_or_else(|e| e.into_inner()), "{i} {addr}")?)
    };
    let barrier = Barrier::new(if concurrent { names.len() } else { 1 });
    let rt = tokio::runtime::Runtime::new()?;
    let agents: BTreeMap<&str, tessera_api::agent_client::AgentClient> =
        hosts.iter().map(|h| (*h, tessera_api::agent_client::AgentClient::new(c.agent_socket(h)))).collect();
    let one = |i: usize, n: &String| -> Result<(Instant, Duration)> {
        let addr = Ipv4Addr::from(u32::from(base) + 1 + i as u32).to_string();
        let netns = c.netns_of(n)?.path().display().to_string();
        barrier.wait();
        let start = Instant::now();
        if from == ProbeFrom::AttachStart {
            probe(i, &addr)?;
        }
        match pass.via {
            Via::Cli => {
                c.attach(n, NETWORK, &["--ip", &addr])?;
            }
            Via::AgentApi => {
                let req = tessera_api::agent::AttachRequest {
                    network: NETWORK.into(),
                    netns,
                    ips: vec![addr.clone()],
                    ..Default::default()
                };
                rt.block_on(agents[host_of(i)].attach(&req))
                    .map_err(|e| anyhow::anyhow!("attach {n} through the agent's API: {e}"))?;
            }
        }
        let call = start.elapsed();
        if from == ProbeFrom::AttachReturn {
            probe(i, &addr)?;
        }
        Ok((start, call))
    };
    let calls: Vec<Result<(Instant, Duration)>> = if concurrent {
        thread::scope(|s| {
            let handles: Vec<_> = names.iter().enumerate().map(|(i, n)| s.spawn(move || one(i, n))).collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("attach thread panicked")))).collect()
        })
    } else {
        names.iter().enumerate().map(|(i, n)| one(i, n)).collect()
    };
    let mut reached: BTreeMap<usize, (bool, Instant)> = BTreeMap::new();
    let calls: Result<Vec<(Instant, Duration)>> = calls.into_iter().collect();
    if calls.is_ok() {
        while reached.len() < names.len() {
            let Ok((id, ok, at)) = reached_rx.recv_timeout(Duration::from_secs(40)) else { break };
            reached.insert(id, (ok, at));
        }
    }
    for (_, (prober, input, reader)) in probers {
        drop(input);
        reap(prober, Duration::ZERO);
        let _ = reader.join();
    }
    let calls = calls?;
    let failed: Vec<&String> =
        names.iter().enumerate().filter(|(i, _)| reached.get(i).is_none_or(|r| !r.0)).map(|(_, n)| n).collect();
    if !failed.is_empty() {
        bail!("endpoints never reachable from another host: {failed:?}");
    }
    Ok(AttachLatency {
        reach: calls.iter().zip(reached.values()).map(|((start, _), (_, at))| ms(at.duration_since(*start))).collect(),
        call: calls.iter().map(|(_, d)| ms(*d)).collect(),
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ---------------------------------------------------------------------------------------------
// 4: many endpoints

/// Attaches containers, half on each host, until the network holds `total` endpoints, then
/// waits until each host routes every endpoint of the other.
fn fill(c: &mut Cluster, total: usize) -> Result<()> {
    let eps = c.cli_json(&["endpoint", "list"])?;
    let per_host = |h: &str| eps.as_array().map_or(0, |a| a.iter().filter(|e| e["host"] == h).count());
    let (on_h1, on_h2, on_h3) = (per_host("h1"), per_host("h2"), per_host("h3"));
    // As even a split as the endpoints already there allow (h3 holds only
    // benchmark 3's).
    let need = total.saturating_sub(on_h1 + on_h2 + on_h3);
    let add_h1 = (total / 2).saturating_sub(on_h1).min(need);
    let (want_h1, want_h2) = (on_h1 + add_h1, on_h2 + need - add_h1);
    let mut names = Vec::new();
    for (host, have, want) in [("h1", on_h1, want_h1), ("h2", on_h2, want_h2)] {
        for i in have..want {
            let name = format!("s{host}-{i}");
            c.container(host, &name)?;
            names.push(name);
        }
    }
    eprintln!("   {} containers made; attaching with {FILL_WORKERS} workers", names.len());
    let t = Instant::now();
    c.attach_all(&names, NETWORK, FILL_WORKERS)?;
    // Converged when each host has a route over VXLAN for every endpoint of the other.
    let deadline = Instant::now() + Duration::from_secs(120);
    for (host, remote) in [("h1", want_h2 + on_h3), ("h2", want_h1 + on_h3)] {
        loop {
            let routes = ip(c.host_netns(host)?, &["-4", "route", "show", "table", "all"])?;
            let n = routes.lines().filter(|l| l.contains(" dev tx")).count();
            if n >= remote {
                break;
            }
            if Instant::now() > deadline {
                bail!("{host} routes {n} remote endpoints over VXLAN, expected {remote}");
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
    eprintln!("   converged in {:.1?}", t.elapsed());
    Ok(())
}

fn endpoint_count(c: &Cluster) -> Result<usize> {
    Ok(c.cli_json(&["endpoint", "list"])?.as_array().map_or(0, Vec::len))
}

// ---------------------------------------------------------------------------------------------
// Statistics and the table

/// Nearest-rank percentile of sorted values.
fn percentile_u64(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    percentile(&values.into_iter().collect::<Vec<_>>(), 0.5)
}

fn list(values: impl IntoIterator<Item = f64>, decimals: usize) -> String {
    values.into_iter().map(|v| format!("{v:.decimals$}")).collect::<Vec<_>>().join(" / ")
}

impl Report {
    fn print(&self, plan: Plan, elapsed: Duration) {
        let gbps = |runs: &[Iperf]| median(runs.iter().map(|r| r.gbps));
        let (t_o, t_b) = (gbps(&self.tput.overlay), gbps(&self.tput.baseline));
        let rate = |runs: &[Rr]| median(runs.iter().map(|r| r.rate));
        let p99 = |runs: &[Rr]| median(runs.iter().map(|r| r.p99_us));
        let p50 = |runs: &[Rr]| median(runs.iter().map(|r| r.p50_us));
        let (r_o, r_b) = (rate(&self.rr.overlay), rate(&self.rr.baseline));
        let (l_o, l_b) = (p99(&self.rr.overlay), p99(&self.rr.baseline));
        let (m_o, m_b) = (gbps(&self.tput_many.overlay), gbps(&self.tput_many.baseline));
        let n = self.endpoints_many;

        println!();
        println!(
            "Tessera overlay benchmarks: 2 hosts (namespaces on one {}-core machine), median of {} run(s) of {} s",
            thread::available_parallelism().map_or(0, |n| n.get()),
            plan.runs,
            plan.secs
        );
        println!("MTU: overlay {} (VXLAN), baseline {} (no encapsulation)", self.mtu_overlay, self.mtu_baseline);
        println!();
        let fast = self.dataplane != "kernel";
        println!(
            "data plane: {} (goals of the {})",
            if self.dataplane.is_empty() { "the agent's default" } else { &self.dataplane },
            if fast { "eBPF fast path" } else { "kernel path" }
        );
        println!("ports of h1 and h2: {}", self.paths);
        let goal = |ebpf: &'static str, kernel: &'static str| if fast { ebpf } else { kernel };
        println!("{:<48} {:>14} {:>14} {:>8}  goal", "benchmark", "tessera", "baseline", "ratio");
        let row = |name: &str, o: String, b: String, ratio: f64, goal: &str| {
            println!("{name:<48} {o:>14} {b:>14} {ratio:>8.2}  {goal}");
        };
        let (c_o, c_b) = (median(self.cps.overlay.iter().copied()), median(self.cps.baseline.iter().copied()));
        let cps_runs = || {
            let (o, b) = (list(self.cps.overlay.iter().copied(), 0), list(self.cps.baseline.iter().copied(), 0));
            println!("  5. connections/s tessera: {o}; baseline: {b}");
        };
        if plan.connections_only {
            row("5. new TCP connections per second", format!("{c_o:.0}"), format!("{c_b:.0}"), c_o / c_b, goal("≥ 0.90", ""));
            cps_runs();
            println!("total run time {:.0} s", elapsed.as_secs_f64());
            return;
        }
        if !plan.attach_only {
            row(
                "1. TCP throughput, 1 stream (Gbit/s)",
                format!("{t_o:.2}"),
                format!("{t_b:.2}"),
                t_o / t_b,
                goal("≥ 0.95", "≥ 0.70"),
            );
            row("2. TCP_RR rate (transactions/s)", format!("{r_o:.0}"), format!("{r_b:.0}"), r_o / r_b, goal("≥ 0.95", "≥ 0.85"));
            row(
                "   TCP_RR p99 latency (µs; ratio tessera÷base)",
                format!("{l_o:.1}"),
                format!("{l_b:.1}"),
                l_o / l_b,
                goal("≤ 1.05", "≤ 1.18 (= 1/0.85)"),
            );
            row(
                "   TCP_RR p50 latency (µs)",
                format!("{:.1}", p50(&self.rr.overlay)),
                format!("{:.1}", p50(&self.rr.baseline)),
                p50(&self.rr.overlay) / p50(&self.rr.baseline),
                "",
            );
        }
        let p = |v: &[f64], q: f64| percentile(v, q);
        let (a, b) = (&self.attach, &self.attach_after);
        let lat_row = |name: &str, v: &[f64], goal: &str| {
            println!("{name:<48} {:>14} {:>14} {:>8}  {goal}", format!("p50 {:.0}", p(v, 0.5)), "—", "");
        };
        lat_row(
            &format!("3. attach → reachable, {CONCURRENT_ATTACHES} concurrent (ms)"),
            &a.reach,
            &format!("p99 {:.0} ms; goal p99 ≤ 100", p(&a.reach, 0.99)),
        );
        lat_row("   attach call alone (ms)", &a.call, &format!("p99 {:.0} ms", p(&a.call, 0.99)));
        let api = &self.attach_api;
        lat_row(
            "   → reachable, through the agent's API (ms)",
            &api.reach,
            &format!("p99 {:.0} ms (the call: p50 {:.0}, p99 {:.0})", p(&api.reach, 0.99), p(&api.call, 0.5), p(&api.call, 0.99)),
        );
        lat_row(
            "   → reachable, probing after the call (ms)",
            &b.reach,
            &format!("p99 {:.0} ms (the call: p50 {:.0}, p99 {:.0})", p(&b.reach, 0.99), p(&b.call, 0.5), p(&b.call, 0.99)),
        );
        let q = &self.attach_sequential;
        lat_row(
            &format!("   → reachable, {SEQUENTIAL_ATTACHES} one at a time (ms)"),
            &q.reach,
            &format!("p99 {:.0} ms (the call: p50 {:.0}, p99 {:.0})", p(&q.reach, 0.99), p(&q.call, 0.5), p(&q.call, 0.99)),
        );
        if !plan.attach_only {
            row(
                &format!("4. TCP throughput, {n} ÷ {FEW_ENDPOINTS} endpoints (Gbit/s)"),
                format!("{m_o:.2}"),
                format!("{t_o:.2}"),
                m_o / t_o,
                "≥ 0.95",
            );
            row("5. new TCP connections per second", format!("{c_o:.0}"), format!("{c_b:.0}"), c_o / c_b, goal("≥ 0.90", ""));
            let (f_o, f_b) = (gbps(&self.tput_few_rules.overlay), gbps(&self.tput_few_rules.baseline));
            let (g_o, g_b) = (gbps(&self.tput_many_rules.overlay), gbps(&self.tput_many_rules.baseline));
            row(
                &format!("6. TCP throughput, {MANY_RULES} ÷ {FEW_RULES} rules (Gbit/s)"),
                format!("{g_o:.2}"),
                format!("{f_o:.2}"),
                g_o / f_o,
                "≥ 0.95",
            );
            row("   control: baseline path, same two runs", format!("{g_b:.2}"), format!("{f_b:.2}"), g_b / f_b, "");
            row(
                &format!("   control: baseline path, {n} ÷ {FEW_ENDPOINTS} endpoints"),
                format!("{m_b:.2}"),
                format!("{t_b:.2}"),
                m_b / t_b,
                "",
            );
            // The machine drifts between the two measurements (the control shows by how much); this
            // compares the overlay with the baseline measured beside it at each size instead.
            row(
                &format!("   tessera÷baseline at {n} (col 1) and at {FEW_ENDPOINTS} (col 2)"),
                format!("{:.2}", m_o / m_b),
                format!("{:.2}", t_o / t_b),
                (m_o / m_b) / (t_o / t_b),
                "drift-corrected 4.",
            );
            let v = &self.stream_end;
            lat_row(
                &format!("7. deny rule → a running stream stops (ms, {MANY_RULES} rules)"),
                v,
                &format!("p99 {:.0} ms; goal p99 ≤ 50 (max {:.0}, {} changes)", p(v, 0.99), p(v, 1.0), v.len()),
            );
        }
        println!();
        println!("Runs (in order; tessera / baseline):");
        let tput = |name: &str, p: &Pair<Iperf>| {
            for (label, runs) in [("tessera", &p.overlay), ("baseline", &p.baseline)] {
                println!(
                    "  {name} {label:<8}: Gbit/s {}; retransmits {}; CPU % sender {} receiver {} agents {}",
                    list(runs.iter().map(|r| r.gbps), 2),
                    list(runs.iter().map(|r| r.retransmits as f64), 0),
                    list(runs.iter().map(|r| r.cpu_sender), 0),
                    list(runs.iter().map(|r| r.cpu_receiver), 0),
                    list(runs.iter().map(|r| r.cpu_agents), 1),
                );
            }
        };
        let all = !plan.attach_only;
        if all {
            tput(&format!("1. {FEW_ENDPOINTS:>4} endpoints"), &self.tput);
        }
        for (label, runs) in [("tessera", &self.rr.overlay), ("baseline", &self.rr.baseline)].into_iter().filter(|_| all) {
            println!(
                "  2. TCP_RR        {label:<8}: tx/s {}; p50 µs {}; p99 µs {}",
                list(runs.iter().map(|r| r.rate), 0),
                list(runs.iter().map(|r| r.p50_us), 1),
                list(runs.iter().map(|r| r.p99_us), 1),
            );
        }
        println!("  3. {CONCURRENT_ATTACHES} concurrent, probing from the attach start: {a}");
        println!("  3. {CONCURRENT_ATTACHES} concurrent, probing after the call:        {b}");
        println!("  3. {CONCURRENT_ATTACHES} concurrent through the agent's API:        {}", self.attach_api);
        println!("  3. {SEQUENTIAL_ATTACHES} one at a time, probing after the call:     {}", self.attach_sequential);
        if all {
            tput(&format!("4. {n:>4} endpoints"), &self.tput_many);
            println!("  4. attaching up to {n} endpoints ({FILL_WORKERS} at a time) and converging took {:.1} s", self.fill_secs);
            cps_runs();
            tput(&format!("6. {FEW_RULES:>5} rules"), &self.tput_few_rules);
            tput(&format!("6. {MANY_RULES:>5} rules"), &self.tput_many_rules);
            println!("  7. ms from the request to the stream's last byte: {}", list(self.stream_end.iter().copied(), 1));
        }
        println!();
        println!("total run time {:.0} s", elapsed.as_secs_f64());
    }
}
