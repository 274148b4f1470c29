//! Privileged tests of policies and route targets on the Linux data plane
//! (root; they fail, saying why, when they cannot run). Each test builds its
//! own fabric (two host namespaces on an underlay bridge, container
//! namespaces; see `support`), computes each host's desired state from an
//! intent the way the agent does (`support::intent`), reconciles it with a
//! `LinuxDataplane` per host, and checks with real packets from inside the
//! containers.

mod support;

use std::io::ErrorKind;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::intent::{network, placed, policy, route_targets, tcp_connect, Intent, TcpServers};
use support::{Fabric, Host};
use tessera_dataplane::{reconcile, Dataplane, DesiredHost, LinuxDataplane};
use uuid::Uuid;

const RED: u128 = 1;
const GREEN: u128 = 2;

/// Two hosts and their data planes.
struct Pair {
    h1: Host,
    h2: Host,
    dp1: LinuxDataplane,
    dp2: LinuxDataplane,
}

impl Pair {
    async fn new(f: &mut Fabric) -> Pair {
        let h1 = f.host("h1");
        let h2 = f.host("h2");
        let dp1 = LinuxDataplane::in_netns(h1.netns_path()).await.expect("data plane in h1");
        let dp2 = LinuxDataplane::in_netns(h2.netns_path()).await.expect("data plane in h2");
        Pair { h1, h2, dp1, dp2 }
    }

    /// Reconciles both hosts to `intent`; returns their desired states.
    async fn converge(&self, intent: &Intent) -> (DesiredHost, DesiredHost) {
        let hosts = [&self.h1, &self.h2];
        let d1 = intent.desired(&hosts, &self.h1);
        let d2 = intent.desired(&hosts, &self.h2);
        for (dp, d) in [(&self.dp1, &d1), (&self.dp2, &d2)] {
            let report = reconcile(dp, d).await.expect("reconcile");
            assert!(report.is_ok(), "failed actions: {:#?}", report.failures);
            let again = reconcile(dp, d).await.expect("reconcile");
            assert!(again.is_noop(), "a converged host must plan nothing, got {:#?}", again.applied);
        }
        (d1, d2)
    }
}

/// red (VNI 100) with a container on h1, green (VNI 200) with one on h2.
fn red_green(f: &mut Fabric, p: &Pair) -> (Intent, String, String) {
    let r1 = f.netns("r1");
    let g1 = f.netns("g1");
    let red = network(RED, "red", 100, "192.168.10.0/24", "2001:db8:10::/64");
    let green = network(GREEN, "green", 200, "192.168.20.0/24", "2001:db8:20::/64");
    let endpoints = vec![
        placed(1, &red, &p.h1, &r1, &["192.168.10.2/24", "2001:db8:10::2/64"]),
        placed(2, &green, &p.h2, &g1, &["192.168.20.2/24", "2001:db8:20::2/64"]),
    ];
    (Intent { networks: vec![red, green], policies: vec![], endpoints, ..Default::default() }, r1, g1)
}

fn both(intent: &mut Intent, policies: &[u128]) {
    intent.attach("red", policies);
    intent.attach("green", policies);
}

const PASS_ALL: u128 = 0x100;

/// Waits (up to 5 s) for the first ping from `ns` to `dst` to be answered:
/// the first packets of a path also resolve neighbours, which a loaded
/// machine may make slow. Later checks are strict.
fn comes_up(f: &Fabric, ns: &str, dst: &str) -> bool {
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        if f.ping(ns, dst, 1) {
            return true;
        }
    }
    false
}

/// Waits (up to 5 s) for a first TCP connection from `ns` to `addr`.
fn connects_eventually(ns: &str, addr: &str) -> std::io::Result<()> {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        match tcp_connect(ns, addr, Duration::from_secs(1)) {
            Err(e) if Instant::now() < until && e.kind() == ErrorKind::TimedOut => continue,
            other => return other,
        }
    }
}

/// The replies a `ping -n` output shows, by sequence number.
fn replied_seqs(out: &str) -> Vec<u32> {
    out.lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.split("icmp_seq=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect()
}

#[tokio::test]
async fn privileged_seed_scenario_pass_all_connects_and_detaching_isolates_a_running_ping() {
    let mut f = Fabric::new();
    let p = Pair::new(&mut f).await;
    let (mut intent, r1, g1) = red_green(&mut f, &p);
    intent.policies.push(policy(PASS_ALL, "pass-all", &["pass any any any <> any any"]));
    p.converge(&intent).await;
    assert!(f.ping_fails(&r1, "192.168.20.2"), "red and green start isolated");
    assert!(f.ping_fails(&g1, "2001:db8:10::2"), "red and green start isolated (IPv6)");
    let table = f.exec_ok(&p.h1.ns, "ip", &["route", "show", "table", "65636"]);
    assert!(!table.contains("192.168.20"), "no leak without a policy:\n{table}");

    both(&mut intent, &[PASS_ALL]);
    p.converge(&intent).await;
    let table = f.exec_ok(&p.h1.ns, "ip", &["route", "show", "table", "65636"]);
    assert!(table.contains("192.168.20.0/24 dev tb200") && table.contains("192.168.20.2 dev tx200"), "{table}");
    assert!(comes_up(&f, &r1, "192.168.20.2"), "red -> green");
    assert!(f.ping(&r1, "192.168.20.2", 3), "red -> green");
    assert!(f.ping(&g1, "192.168.10.2", 3), "green -> red");
    assert!(f.ping(&r1, "2001:db8:20::2", 3), "red -> green over IPv6");

    // A ping runs while the policy is detached from both networks.
    let running = f.spawn(&r1, "ping", &["-n", "-i", "0.1", "-c", "60", "-W", "1", "192.168.20.2"], Stdio::null());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    both(&mut intent, &[]);
    let detached = Instant::now();
    p.converge(&intent).await;
    let converged_in = detached.elapsed();
    let out = f.wait(running, Duration::from_secs(15));
    let seqs = replied_seqs(&out);
    let last = seqs.iter().max().copied().unwrap_or(0);
    let allowed = 15 + (converged_in.as_millis() / 100) as u32 + 5;
    assert!(seqs.len() >= 5, "the running ping worked before the change:\n{out}");
    assert!(last <= allowed, "the running ping kept getting replies after the detach (last {last} > {allowed}):\n{out}");
    assert!(f.ping_fails(&r1, "192.168.20.2"), "isolated again");
    assert!(f.ping_fails(&g1, "192.168.10.2"), "isolated again, the other way");
    let table = f.exec_ok(&p.h1.ns, "ip", &["route", "show", "table", "65636"]);
    assert!(!table.contains("192.168.20"), "routes of green left in red's VRF:\n{table}");
    let links = f.exec_ok(&p.h1.ns, "ip", &["-br", "link"]);
    assert!(!links.contains("tb200"), "green's devices left on h1:\n{links}");
}

#[tokio::test]
async fn privileged_removing_the_pass_rule_ends_a_running_ping_while_routes_stay() {
    let mut f = Fabric::new();
    let p = Pair::new(&mut f).await;
    let (mut intent, r1, g1) = red_green(&mut f, &p);
    intent.policies.push(policy(0x200, "web-and-ping", &["pass tcp any any <> any 80", "pass icmp any any <> any any"]));
    both(&mut intent, &[0x200]);
    p.converge(&intent).await;
    assert!(comes_up(&f, &r1, "192.168.20.2"));
    let _web = TcpServers::start(&g1, &[80]);

    let running = f.spawn(&r1, "ping", &["-n", "-i", "0.1", "-c", "60", "-W", "1", "192.168.20.2"], Stdio::null());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    intent.policies[0] = policy(0x200, "web-and-ping", &["pass tcp any any <> any 80"]);
    let changed = Instant::now();
    let (d1, _) = p.converge(&intent).await;
    let converged_in = changed.elapsed();
    assert!(d1.networks[0].imports.contains(&tessera_model::Vni::new(200).unwrap()), "still connected by the web rule");
    let out = f.wait(running, Duration::from_secs(15));
    let seqs = replied_seqs(&out);
    let allowed = 15 + (converged_in.as_millis() / 100) as u32 + 5;
    assert!(seqs.len() >= 5, "{out}");
    assert!(
        seqs.iter().all(|s| *s <= allowed),
        "an established ping survived the removal of the rule that allowed it (conntrack not flushed):\n{out}"
    );
    assert!(f.ping_fails(&r1, "192.168.20.2"));
    tcp_connect(&r1, "192.168.20.2:80", Duration::from_secs(2)).expect("tcp/80 still passes");
}

#[tokio::test]
async fn privileged_tcp_80_passes_and_tcp_22_is_denied_between_networks() {
    let mut f = Fabric::new();
    let p = Pair::new(&mut f).await;
    let (mut intent, r1, g1) = red_green(&mut f, &p);
    intent.policies.push(policy(0x300, "web", &["pass tcp red any <> green 80"]));
    both(&mut intent, &[0x300]);
    p.converge(&intent).await;
    let _servers = TcpServers::start(&g1, &[80, 22]);
    connects_eventually(&r1, "192.168.20.2:80").expect("tcp/80 passes");
    tcp_connect(&r1, "[2001:db8:20::2]:80", Duration::from_secs(2)).expect("tcp/80 passes over IPv6");
    let e = tcp_connect(&r1, "192.168.20.2:22", Duration::from_millis(1500)).expect_err("tcp/22 must be denied");
    assert_eq!(e.kind(), ErrorKind::TimedOut, "deny drops silently: {e}");
    assert!(f.ping_fails(&r1, "192.168.20.2"), "icmp is not in the policy");
}

#[tokio::test]
async fn privileged_the_destination_host_judges_too_when_the_source_host_does_not() {
    let mut f = Fabric::new();
    let p = Pair::new(&mut f).await;
    let (mut intent, r1, g1) = red_green(&mut f, &p);
    intent.policies.push(policy(0x310, "web", &["pass tcp red any <> green 80"]));
    both(&mut intent, &[0x310]);
    p.converge(&intent).await;
    let _servers = TcpServers::start(&g1, &[80, 22]);
    connects_eventually(&r1, "192.168.20.2:80").expect("tcp/80 passes");

    // h1 (the source) stops judging: a host whose firewall is gone or that
    // sends what it likes. h2, where the flows end, still refuses tcp/22.
    f.exec_ok(&p.h1.ns, "nft", &["flush", "chain", "inet", "tessera_policy", "dispatch"]);
    let e = tcp_connect(&r1, "192.168.20.2:22", Duration::from_millis(1500)).expect_err("tcp/22 must be denied at h2");
    assert_eq!(e.kind(), ErrorKind::TimedOut, "h2 drops it: {e}");
    let e6 = tcp_connect(&r1, "[2001:db8:20::2]:22", Duration::from_millis(1500)).expect_err("tcp/22 over IPv6 too");
    assert_eq!(e6.kind(), ErrorKind::TimedOut, "h2 drops it: {e6}");
    assert!(f.ping_fails(&r1, "192.168.20.2"), "icmp is not in the policy, at h2 either");
    tcp_connect(&r1, "192.168.20.2:80", Duration::from_secs(2)).expect("what the policy passes still passes");
}

#[tokio::test]
async fn privileged_reject_is_refused_at_once_while_deny_times_out() {
    let mut f = Fabric::new();
    let p = Pair::new(&mut f).await;
    let (mut intent, r1, g1) = red_green(&mut f, &p);
    intent.policies.push(policy(
        0x400,
        "p",
        &[
            "reject tcp any any <> any 22",
            "deny tcp any any <> any 23",
            "reject icmp any any <> any any",
            "pass any any any <> any any",
        ],
    ));
    both(&mut intent, &[0x400]);
    p.converge(&intent).await;
    let _servers = TcpServers::start(&g1, &[22, 23, 80]);
    connects_eventually(&r1, "192.168.20.2:80").expect("the rest passes");

    let t = Instant::now();
    let refused = tcp_connect(&r1, "192.168.20.2:22", Duration::from_secs(3)).expect_err("tcp/22 is rejected");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused, "reject answers a TCP reset: {refused}");
    assert!(t.elapsed() < Duration::from_secs(1), "a reset comes at once");
    let refused6 = tcp_connect(&r1, "[2001:db8:20::2]:22", Duration::from_secs(3)).expect_err("tcp/22 is rejected");
    assert_eq!(refused6.kind(), ErrorKind::ConnectionRefused, "reject answers a TCP reset over IPv6: {refused6}");

    let dropped = tcp_connect(&r1, "192.168.20.2:23", Duration::from_millis(1500)).expect_err("tcp/23 is denied");
    assert_eq!(dropped.kind(), ErrorKind::TimedOut, "deny drops silently: {dropped}");

    let ping = f.exec(&r1, "ping", &["-n", "-c", "1", "-W", "2", "192.168.20.2"]);
    let text = String::from_utf8_lossy(&ping.stdout);
    assert!(text.contains("Unreachable"), "a rejected ping gets an ICMP unreachable:\n{text}");
}

#[tokio::test]
async fn privileged_one_way_rule_lets_connections_start_from_one_side_only() {
    let mut f = Fabric::new();
    let p = Pair::new(&mut f).await;
    let (mut intent, r1, g1) = red_green(&mut f, &p);
    intent.policies.push(policy(0x500, "oneway", &["pass tcp red any > green 80"]));
    both(&mut intent, &[0x500]);
    p.converge(&intent).await;
    let _g = TcpServers::start(&g1, &[80]);
    let _r = TcpServers::start(&r1, &[80]);
    connects_eventually(&r1, "192.168.20.2:80").expect("red -> green:80 starts");
    let e = tcp_connect(&g1, "192.168.10.2:80", Duration::from_millis(1500)).expect_err("green -> red:80 must not start");
    assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
}

#[tokio::test]
async fn privileged_route_targets_both_ways_connect_and_one_way_only_leaks_one_way() {
    let mut f = Fabric::new();
    let p = Pair::new(&mut f).await;
    let (mut intent, r1, g1) = red_green(&mut f, &p);
    for net in ["red", "green"] {
        intent.network_mut(net).import_targets = route_targets(&["64512:100"]);
        intent.network_mut(net).export_targets = route_targets(&["64512:100"]);
    }
    p.converge(&intent).await;
    assert!(comes_up(&f, &r1, "192.168.20.2"), "RT both ways: red -> green without any policy");
    assert!(f.ping(&g1, "192.168.10.2", 2), "RT both ways: green -> red");
    assert!(f.ping(&g1, "2001:db8:10::2", 2), "RT both ways over IPv6");

    // A deny rule still applies between RT-connected networks.
    intent.policies.push(policy(0x600, "no-icmp", &["deny icmp any any <> any any"]));
    intent.attach("green", &[0x600]);
    p.converge(&intent).await;
    assert!(f.ping_fails(&r1, "192.168.20.2"), "green's deny rule applies to traffic entering green");
    assert!(f.ping(&r1, "2001:db8:20::2", 2), "icmpv6 is not denied");

    // One way: red imports green's routes, green does not import red's.
    intent.attach("green", &[]);
    intent.network_mut("green").import_targets = route_targets(&["64512:999"]);
    p.converge(&intent).await;
    let red_table = f.exec_ok(&p.h1.ns, "ip", &["route", "show", "table", "65636"]);
    assert!(red_table.contains("192.168.20.0/24") && red_table.contains("192.168.20.2 dev tx200"), "{red_table}");
    let green_table = f.exec_ok(&p.h2.ns, "ip", &["route", "show", "table", "65736"]);
    assert!(!green_table.contains("192.168.10"), "green must not get red's routes:\n{green_table}");
    assert!(f.ping_fails(&r1, "192.168.20.2"), "replies have no route back: one way is routes only");
    assert!(f.ping_fails(&g1, "192.168.10.2"), "green has no route to red");
}

#[tokio::test]
async fn privileged_hit_counters_increase_with_traffic() {
    let mut f = Fabric::new();
    let p = Pair::new(&mut f).await;
    let (mut intent, r1, g1) = red_green(&mut f, &p);
    intent.policies.push(policy(0x700, "counted", &["pass tcp any any <> any 80", "pass icmp any any <> any any"]));
    both(&mut intent, &[0x700]);
    let (d1, _) = p.converge(&intent).await;
    let hits = |c: &[tessera_dataplane::RuleCounter], rule: usize| {
        c.iter().filter(|c| c.policy == Uuid::from_u128(0x700) && c.rule == rule).map(|c| c.packets).sum::<u64>()
    };
    let before = p.dp1.policy_counters(&d1).await.unwrap();
    assert_eq!(before.len(), 2, "one counter per rule: {before:?}");
    assert_eq!(hits(&before, 1), 0);
    for _ in 0..3 {
        assert!(f.ping(&r1, "192.168.20.2", 1));
    }
    let _web = TcpServers::start(&g1, &[80]);
    for _ in 0..4 {
        tcp_connect(&r1, "192.168.20.2:80", Duration::from_secs(2)).unwrap();
    }
    let after = p.dp1.policy_counters(&d1).await.unwrap();
    assert!(hits(&after, 1) >= 3, "three pings are three new ICMP flows: {after:?}");
    assert!(hits(&after, 0) >= 4, "four connections are four new TCP flows: {after:?}");
    assert!(after.iter().all(|c| c.bytes >= c.packets * 20), "{after:?}");
}

#[tokio::test]
async fn privileged_ipv6_rule_works() {
    let mut f = Fabric::new();
    let p = Pair::new(&mut f).await;
    let (mut intent, r1, g1) = red_green(&mut f, &p);
    intent.policies.push(policy(
        0x800,
        "v6",
        &["pass icmpv6 any any <> any any", "pass tcp 2001:db8:10::/64 any > 2001:db8:20::/64 443"],
    ));
    both(&mut intent, &[0x800]);
    p.converge(&intent).await;
    let _s = TcpServers::start(&g1, &[443]);
    assert!(comes_up(&f, &r1, "2001:db8:20::2"), "ICMPv6 passes");
    assert!(f.ping_fails(&r1, "192.168.20.2"), "IPv4 ICMP does not");
    connects_eventually(&r1, "[2001:db8:20::2]:443").expect("tcp/443 over IPv6 passes");
    let e = tcp_connect(&r1, "192.168.20.2:443", Duration::from_millis(1500)).expect_err("not over IPv4");
    assert_eq!(e.kind(), ErrorKind::TimedOut);
}

#[tokio::test]
async fn privileged_intra_network_deny_applies_on_one_host_and_across_hosts() {
    let mut f = Fabric::new();
    let p = Pair::new(&mut f).await;
    let (a, b, c) = (f.netns("a"), f.netns("b"), f.netns("c"));
    let red = network(RED, "red", 100, "192.168.10.0/24", "2001:db8:10::/64");
    let endpoints = vec![
        placed(1, &red, &p.h1, &a, &["192.168.10.2/24", "2001:db8:10::2/64"]),
        placed(2, &red, &p.h1, &b, &["192.168.10.3/24", "2001:db8:10::3/64"]),
        placed(3, &red, &p.h2, &c, &["192.168.10.4/24", "2001:db8:10::4/64"]),
    ];
    let mut intent = Intent { networks: vec![red], policies: vec![], endpoints, ..Default::default() };
    p.converge(&intent).await;
    assert!(comes_up(&f, &a, "192.168.10.3"), "same host, no policy");
    assert!(f.ping(&a, "2001:db8:10::3", 2), "same host over IPv6 (proxy NDP on isolated ports)");
    assert!(f.ping(&a, "192.168.10.4", 2), "across hosts, no policy");
    let route = f.exec_ok(&a, "ping", &["-n", "-c", "1", "192.168.10.3"]);
    assert!(route.contains("ttl=63"), "traffic between two local endpoints is routed through the host:\n{route}");

    intent.policies.push(policy(0x900, "no-ping", &["deny icmp any any <> any any", "deny icmpv6 any any <> any any"]));
    intent.attach("red", &[0x900]);
    p.converge(&intent).await;
    assert!(f.ping_fails(&a, "192.168.10.3"), "denied between two containers on the same host");
    assert!(f.ping_fails(&b, "2001:db8:10::2"), "denied on the same host over IPv6");
    assert!(f.ping_fails(&a, "192.168.10.4"), "denied across hosts");
    assert!(f.ping_fails(&c, "192.168.10.3"), "denied across hosts, the other way");
    let _s = TcpServers::start(&b, &[80]);
    tcp_connect(&a, "192.168.10.3:80", Duration::from_secs(2)).expect("the rest of the network's traffic passes");
}

#[tokio::test]
async fn privileged_log_rule_sends_new_flows_through_its_log_chain() {
    let mut f = Fabric::new();
    let p = Pair::new(&mut f).await;
    let (mut intent, r1, _g1) = red_green(&mut f, &p);
    intent.policies.push(policy(0xa00, "audit", &["pass icmp any any <> any any log"]));
    both(&mut intent, &[0xa00]);
    let (d1, _) = p.converge(&intent).await;
    assert!(comes_up(&f, &r1, "192.168.20.2"));
    let chain = format!("g100_200_0_{}_0p", &Uuid::from_u128(0xa00).simple().to_string()[..8]);
    let rules = f.exec_ok(&p.h1.ns, "nft", &["list", "chain", "inet", "tessera_policy", &chain]);
    assert!(rules.contains("log prefix \"tessera audit#0 red>green pass \" level info"), "{rules}");
    let counters = p.dp1.policy_counters(&d1).await.unwrap();
    assert!(counters.iter().any(|c| c.rule == 0 && c.packets >= 1), "the flow went through the log rule: {counters:?}");
    // The kernel writes LOG lines of other namespaces than the first only
    // with net.netfilter.nf_log_all_netns=1; on a host's own namespace it does.
    if std::fs::read_to_string("/proc/sys/net/netfilter/nf_log_all_netns").is_ok_and(|v| v.trim() == "1") {
        let log = support::must("dmesg", &[]);
        assert!(log.contains("tessera audit#0 red>green pass"), "no log line for the flow");
    }
}

/// Entries in conntrack zones 7, 8 and 9 of namespace `ns` (a TCP flow each,
/// made with `conntrack -I`), and a counter of a zone's entries.
fn conntrack_zones<'a>(f: &'a Fabric, ns: &str) -> impl Fn(u16) -> usize + 'a {
    for (zone, sport) in [(7, "1001"), (7, "1002"), (8, "1003"), (9, "1004")] {
        f.exec_ok(
            ns,
            "conntrack",
            &["-I", "-s", "10.7.0.1", "-d", "10.7.0.2", "-p", "tcp", "--sport", sport, "--dport", "80"]
                .into_iter()
                .chain(["--state", "ESTABLISHED", "-t", "300", "-w", &zone.to_string()])
                .collect::<Vec<_>>(),
        );
    }
    let ns = ns.to_string();
    move |zone: u16| {
        let out = f.exec(&ns, "conntrack", &["-L", "-w", &zone.to_string()]);
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("10.7.0.1")).count()
    }
}

#[test]
fn privileged_conntrack_zone_flush_ends_that_zone_only() {
    let mut f = Fabric::new();
    let kernel = tessera_dataplane::conntrack::kernel_flushes_by_zone();
    // Both ways of flushing: in the kernel (where it can; else the
    // program again) and with the `conntrack` program.
    for (name, in_kernel) in [("k", kernel), ("p", false)] {
        let ns = f.netns(name);
        let count = conntrack_zones(&f, &ns);
        assert_eq!((count(7), count(8), count(9)), (2, 1, 1), "the entries were not made");
        let path = format!("/run/netns/{ns}");
        let flushed = std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                use tessera_dataplane::conntrack::{flush_zone_in_kernel, flush_zone_with_program};
                // A zone without entries is no error: twice each.
                if in_kernel {
                    let mut socket = tessera_dataplane::nfnetlink::NetfilterSocket::open().expect("netfilter socket");
                    flush_zone_in_kernel(&mut socket, 7)?;
                    flush_zone_in_kernel(&mut socket, 7)
                } else {
                    flush_zone_with_program(7).await?;
                    flush_zone_with_program(7).await
                }
            })
        })
        .join()
        .unwrap();
        assert!(flushed.is_ok(), "flush ({name}): {flushed:?}");
        assert_eq!((count(7), count(8), count(9)), (0, 1, 1), "flush in the kernel: {in_kernel}");
    }
}

/// The policy table of namespace `ns` as `nft -j` lists it, each map's
/// elements sorted (a hash map lists them in no fixed order).
fn policy_table(f: &Fabric, ns: &str) -> Vec<String> {
    let out = f.exec_ok(ns, "nft", &["-j", "list", "table", "inet", "tessera_policy"]);
    let doc: serde_json::Value = serde_json::from_str(&out).expect("nft -j output");
    let mut objects: Vec<String> = Vec::new();
    for o in doc["nftables"].as_array().expect("nftables array") {
        let mut o = o.clone();
        if let Some(elem) = o.pointer_mut("/map/elem").and_then(|e| e.as_array_mut()) {
            elem.sort_by_key(|e| e.to_string());
        }
        objects.push(o.to_string());
    }
    objects
}

/// Runs an nft script inside `ns`.
fn nft_script(f: &Fabric, ns: &str, script: &str) {
    let path = std::env::temp_dir().join(format!("{ns}.nft"));
    std::fs::write(&path, script).unwrap();
    f.exec_ok(ns, "nft", &["-f", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn privileged_element_batches_change_the_kernel_as_nft_does() {
    use tessera_dataplane::nfnetlink::{element_batch, NetfilterSocket};
    use tessera_dataplane::observed::{ElementVerdict, MapElement};
    use tessera_dataplane::KernelOp;
    use tessera_policy::{Family, FlowBox};

    let mut f = Fabric::new();
    // The same table in two namespaces: one changed by batches, one by nft.
    let (by_batch, by_nft) = (f.netns("b"), f.netns("n"));
    let v4 = "m1_2_0_0_4_0_40123";
    let v6 = "h1_2_0_0_6_0abc_24";
    let port = "h1_2_1_0_4_0abc_4";
    let mut setup = tessera_dataplane::nft::skeleton_script();
    setup.push_str("add chain inet tessera_policy rj7\n");
    for (name, family) in [(v4, Family::V4), (v6, Family::V6), (port, Family::V4)] {
        setup.push_str(&format!(
            "add map inet tessera_policy {name} {{ {} }}\n",
            tessera_dataplane::policy::map_type(name, family)
        ));
    }
    for ns in [&by_batch, &by_nft] {
        nft_script(&f, ns, &setup);
    }
    let any4 = (0, u128::from(u32::MAX));
    let el = |family: Family, src, proto: u8, dport: (u16, u16), verdict: ElementVerdict| MapElement {
        key: FlowBox { family, src, dst: (0, family.max()), proto: (proto, proto), sport: (0, 65535), dport },
        verdict,
    };
    let goto = || ElementVerdict::Goto("rj7".into());
    let first = [
        KernelOp::NftMapElementsAdd {
            map: v4.into(),
            elements: vec![
                el(Family::V4, (0x0a00_0000, 0x0a00_00ff), 6, (80, 89), ElementVerdict::Return),
                el(Family::V4, any4, 17, (53, 53), goto()),
                el(Family::V4, (0x0a00_0105, 0x0a00_0105), 1, (0, 65535), ElementVerdict::Drop),
            ],
        },
        KernelOp::NftMapElementsAdd {
            map: v6.into(),
            elements: vec![
                el(Family::V6, (0, u128::MAX), 6, (22, 22), goto()),
                el(Family::V6, (0, u128::MAX), 17, (22, 22), ElementVerdict::Return),
            ],
        },
        KernelOp::NftMapElementsAdd {
            map: port.into(),
            elements: vec![el(Family::V4, any4, 6, (5001, 5001), ElementVerdict::Return)],
        },
        KernelOp::NftDigestsUpdate { deletes: vec![], adds: vec![(7, 8), (u128::MAX - 1, 1 << 100)] },
    ];
    // A verdict flipped (delete, then add), a reject element (`continue`), a
    // digest replaced.
    let second = [
        KernelOp::NftMapElementsDelete {
            map: port.into(),
            elements: vec![el(Family::V4, any4, 6, (5001, 5001), ElementVerdict::Return)],
        },
        KernelOp::NftMapElementsAdd { map: port.into(), elements: vec![el(Family::V4, any4, 6, (5001, 5001), goto())] },
        KernelOp::NftMapElementsAdd {
            map: port.into(),
            elements: vec![el(Family::V4, any4, 6, (5002, 5002), ElementVerdict::Continue)],
        },
        KernelOp::NftMapElementsDelete { map: v4.into(), elements: vec![el(Family::V4, any4, 17, (53, 53), goto())] },
        KernelOp::NftDigestsUpdate { deletes: vec![(7, 8)], adds: vec![(7, 9)] },
    ];
    let mut socket = {
        let ns = by_batch.clone();
        support::intent::in_netns(&ns, || NetfilterSocket::open().expect("netfilter socket"))
    };
    for (step, actions) in [("first", &first[..]), ("second", &second[..])] {
        let block: Vec<&KernelOp> = actions.iter().collect();
        let batch = element_batch(&block, socket.next_seq()).expect("element changes only");
        socket.transact(&batch).unwrap_or_else(|e| panic!("{step} batch: {e}"));
        nft_script(&f, &by_nft, &tessera_dataplane::nft::script(&block, &|_| false));
        assert_eq!(policy_table(&f, &by_batch), policy_table(&f, &by_nft), "after the {step} change");
    }

    // All or nothing: an add, then the delete of a missing element.
    let before = policy_table(&f, &by_batch);
    let failing = [
        KernelOp::NftMapElementsAdd {
            map: port.into(),
            elements: vec![el(Family::V4, any4, 6, (443, 443), ElementVerdict::Return)],
        },
        KernelOp::NftMapElementsDelete {
            map: port.into(),
            elements: vec![el(Family::V4, any4, 6, (444, 444), ElementVerdict::Return)],
        },
    ];
    let block: Vec<&KernelOp> = failing.iter().collect();
    let err = socket.transact(&element_batch(&block, socket.next_seq()).unwrap()).expect_err("a missing element");
    assert_eq!(err.raw_os_error(), Some(nix::errno::Errno::ENOENT as i32), "{err}");
    assert_eq!(policy_table(&f, &by_batch), before, "a failed batch changes nothing");
    // The socket still works after a failed batch.
    let ok = [KernelOp::NftDigestsUpdate { deletes: vec![(7, 9)], adds: vec![] }];
    let block: Vec<&KernelOp> = ok.iter().collect();
    socket.transact(&element_batch(&block, socket.next_seq()).unwrap()).expect("a batch after a failed one");
}

#[test]
fn privileged_endpoint_source_elements_sent_as_a_batch_are_those_nft_adds() {
    use tessera_dataplane::nfnetlink::{element_batch, NetfilterSocket};
    use tessera_dataplane::observed::NftElement;
    use tessera_dataplane::KernelOp;
    use tessera_model::MacAddr;

    let mut f = Fabric::new();
    let (by_batch, by_nft) = (f.netns("b"), f.netns("n"));
    for ns in [&by_batch, &by_nft] {
        nft_script(&f, ns, &tessera_dataplane::nft::skeleton_script());
    }
    let mac = MacAddr([0x02, 0x42, 0x0a, 0x00, 0x00, 0x07]);
    let (port, svc) = ("tv0123456789abc".to_string(), "tv7".to_string());
    let elements = [
        NftElement::Ep4 { port: port.clone(), mac, ip: "10.0.0.7".parse().unwrap() },
        NftElement::Ep6 { port: port.clone(), mac, ip: "fd00::7".parse().unwrap() },
        NftElement::EpMac { port: port.clone(), mac },
        NftElement::SvcMac { port: svc, mac },
    ];
    let bridge_table = |ns: &str| -> Vec<String> {
        let out = f.exec_ok(ns, "nft", &["-j", "list", "table", "bridge", "tessera"]);
        let doc: serde_json::Value = serde_json::from_str(&out).expect("nft -j output");
        let sets = doc["nftables"].as_array().expect("nftables array").iter().filter(|o| o.get("set").is_some());
        sets.map(|o| o.to_string()).collect()
    };
    let mut socket = {
        let ns = by_batch.clone();
        support::intent::in_netns(&ns, || NetfilterSocket::open().expect("netfilter socket"))
    };
    let adds: Vec<KernelOp> = elements.iter().cloned().map(KernelOp::NftSetElementAdd).collect();
    let deletes: Vec<KernelOp> = elements[..2].iter().cloned().map(KernelOp::NftSetElementDelete).collect();
    for (step, actions) in [("adds", &adds), ("deletes", &deletes)] {
        let block: Vec<&KernelOp> = actions.iter().collect();
        let batch = element_batch(&block, socket.next_seq()).expect("element changes only");
        socket.transact(&batch).unwrap_or_else(|e| panic!("{step} batch: {e}"));
        nft_script(&f, &by_nft, &tessera_dataplane::nft::script(&block, &|_| false));
        let (batched, added) = (bridge_table(&by_batch), bridge_table(&by_nft));
        assert_eq!(batched, added, "after the {step}");
        let elements_listed = batched.iter().filter(|s| s.contains("\"elem\"")).count();
        assert_eq!(elements_listed, if step == "adds" { 4 } else { 2 }, "sets with elements after the {step}: {batched:?}");
    }
}

#[test]
fn privileged_counters_dumped_through_netlink_are_those_nft_lists() {
    use tessera_dataplane::nfnetlink::NetfilterSocket;
    use tessera_dataplane::policy::ElementCounter;

    let mut f = Fabric::new();
    let ns = f.netns("c");
    // No table yet: no counters, no error.
    let empty = support::intent::in_netns(&ns, || tessera_dataplane::nfnetlink::policy_counters(&mut NetfilterSocket::open()?));
    assert!(empty.expect("a dump without the table").is_empty());

    let v4 = "m1_2_0_0_4_0_40123";
    let v6 = "h1_2_0_0_6_0abc_24";
    let mut setup = tessera_dataplane::nft::skeleton_script();
    setup.push_str(&format!(
        "add map inet tessera_policy {v4} {{ {} }}\n",
        tessera_dataplane::policy::map_type(v4, tessera_policy::Family::V4)
    ));
    setup.push_str(&format!(
        "add map inet tessera_policy {v6} {{ {} }}\n",
        tessera_dataplane::policy::map_type(v6, tessera_policy::Family::V6)
    ));
    setup.push_str(&format!(
        "add element inet tessera_policy {v4} {{ 80 . 10.0.0.0/24 . 0.0.0.0/0 . 6 . 0-65535 counter packets 3 bytes 180 : return, \
         53 . 0.0.0.0/0 . 10.1.0.7 . 17 . 1024-65535 counter packets 1 bytes 60 : drop }}\n"
    ));
    // Enough elements for the dump to come in several parts.
    let many: Vec<String> =
        (0..3000).map(|i| format!("{} . {} counter packets {i} bytes {} : drop", [6, 17][i % 2], 1000 + i, 7 * i)).collect();
    setup.push_str(&format!("add element inet tessera_policy {v6} {{ {} }}\n", many.join(", ")));
    nft_script(&f, &ns, &setup);

    let sorted = |mut v: Vec<ElementCounter>| {
        v.sort_by(|a, b| (&a.map, &a.key).cmp(&(&b.map, &b.key)));
        v
    };
    let listed = f.exec_ok(&ns, "nft", &["-j", "-n", "list", "table", "inet", "tessera_policy"]);
    let by_nft = sorted(tessera_dataplane::nft::policy_table_counters(&listed).expect("nft listing"));
    let by_netlink =
        support::intent::in_netns(&ns, || tessera_dataplane::nfnetlink::policy_counters(&mut NetfilterSocket::open()?));
    let by_netlink = sorted(by_netlink.expect("netlink dump"));
    assert_eq!((by_netlink.len(), by_nft.len()), (3002, 3002));
    if let Some((a, b)) = by_netlink.iter().zip(&by_nft).find(|(a, b)| a != b) {
        panic!("the first element that differs: {a:?} by netlink, {b:?} by nft");
    }
    assert!(by_netlink.iter().any(|c| c.map == v4 && (c.packets, c.bytes) == (3, 180)), "{by_netlink:?}");
}
