//! Privileged tests of the Linux data plane (root; they fail, saying why, when
//! they cannot run). Each test builds its own fabric of namespaces (see
//! `support`): an underlay bridge, two host namespaces `h1`, `h2` with
//! `eth0` on it, and container namespaces. A `LinuxDataplane::in_netns` per
//! host runs the reconcile from a thread that entered that host's namespace;
//! the test thread never changes namespace. Checks use real packets.

mod support;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use support::{Fabric, Host};
use tessera_dataplane::{
    plan, reconcile, Dataplane, DesiredHost, DesiredNetwork, DesiredSubnet, LinuxDataplane, LocalEndpoint, RemoteEndpoint,
    VifKind,
};
use tessera_model::{MacAddr, Vni};
use uuid::Uuid;

fn subnet(cidr: &str, gw: &str) -> DesiredSubnet {
    DesiredSubnet { dns: vec![], cidr: cidr.parse().unwrap(), gateway: Some(gw.parse().unwrap()) }
}

fn endpoint(id: u128, mac: &str, ips: &[&str], netns: &str) -> LocalEndpoint {
    LocalEndpoint {
        own_table: false,
        service: false,
        dhcp: false,
        // Distinct first 8 hex digits for small test ids.
        id: Uuid::from_u128(if id >> 96 == 0 { (id << 96) | 0x4000_8000_0000_0000_0000 } else { id }),
        mac: mac.parse::<MacAddr>().unwrap(),
        ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
        netns: PathBuf::from(format!("/run/netns/{netns}")),
        ifname: "eth0".into(),
    }
}

fn remote(ip: &str, host: &Host) -> RemoteEndpoint {
    RemoteEndpoint { ip: ip.parse::<IpAddr>().unwrap(), host_underlay: host.underlay_ip }
}

fn host_state(h: &Host, networks: Vec<DesiredNetwork>) -> DesiredHost {
    DesiredHost {
        published: vec![],
        steering: vec![],
        uplinks: vec![],
        underlay_ip: h.underlay_ip,
        underlay_ifname: "eth0".into(),
        underlay_mtu: 1500,
        peers: vec![],
        networks,
        pair_zones: vec![],
        policies: vec![],
        watches: vec![],
    }
}

/// Network `red` (VNI 100) with an IPv4 and an IPv6 subnet.
fn red(local: Vec<LocalEndpoint>, remote: Vec<RemoteEndpoint>) -> DesiredNetwork {
    DesiredNetwork {
        domain: None,
        egress: None,
        vni: Vni::new(100).unwrap(),
        zone: 1,
        subnets: vec![subnet("10.0.0.0/24", "10.0.0.1"), subnet("2001:db8:100::/64", "2001:db8:100::1")],
        local,
        remote,
        imports: vec![],
    }
}

async fn converge(dp: &LinuxDataplane, desired: &DesiredHost) {
    let report = reconcile(dp, desired).await.expect("reconcile");
    assert!(report.is_ok(), "failed actions: {:#?}", report.failures);
}

/// Two hosts, a container on each, both in `red`.
struct RedPair {
    h1: Host,
    h2: Host,
    c1: String,
    c2: String,
    d1: DesiredHost,
    d2: DesiredHost,
    dp1: LinuxDataplane,
    dp2: LinuxDataplane,
}

const EP1: u128 = 0xe1e1e1e1_0000_4000_8000_000000000001;
const EP2: u128 = 0xe2e2e2e2_0000_4000_8000_000000000002;

async fn red_pair(f: &mut Fabric) -> RedPair {
    let h1 = f.host("h1");
    let h2 = f.host("h2");
    let c1 = f.netns("c1");
    let c2 = f.netns("c2");
    let d1 = host_state(
        &h1,
        vec![red(
            vec![endpoint(EP1, "02:00:00:00:01:02", &["10.0.0.2/24", "2001:db8:100::2/64"], &c1)],
            vec![remote("10.0.0.3", &h2), remote("2001:db8:100::3", &h2)],
        )],
    );
    let d2 = host_state(
        &h2,
        vec![red(
            vec![endpoint(EP2, "02:00:00:00:01:03", &["10.0.0.3/24", "2001:db8:100::3/64"], &c2)],
            vec![remote("10.0.0.2", &h1), remote("2001:db8:100::2", &h1)],
        )],
    );
    let dp1 = LinuxDataplane::in_netns(h1.netns_path()).await.expect("data plane in h1");
    let dp2 = LinuxDataplane::in_netns(h2.netns_path()).await.expect("data plane in h2");
    converge(&dp1, &d1).await;
    converge(&dp2, &d2).await;
    RedPair { h1, h2, c1, c2, d1, d2, dp1, dp2 }
}

#[tokio::test]
async fn privileged_containers_on_two_hosts_ping_over_vxlan_ipv4_and_ipv6() {
    let mut f = Fabric::new();
    let p = red_pair(&mut f).await;

    assert!(f.ping(&p.c1, "10.0.0.3", 3), "c1 -> c2 over IPv4");
    assert!(f.ping(&p.c2, "10.0.0.2", 3), "c2 -> c1 over IPv4");
    assert!(f.ping(&p.c1, "2001:db8:100::3", 3), "c1 -> c2 over IPv6");
    assert!(f.ping(&p.c2, "2001:db8:100::2", 3), "c2 -> c1 over IPv6");

    let link = f.exec_ok(&p.h1.ns, "ip", &["-d", "link", "show", "tx100"]);
    for want in ["vxlan id 100", &format!("local {}", p.h1.underlay_ip), "dev eth0", "dstport 4789", "nolearning", "mtu 1450"] {
        assert!(link.contains(want), "`ip -d link show tx100` lacks {want:?}:\n{link}");
    }
    let veth = f.exec_ok(&p.c1, "ip", &["-d", "link", "show", "eth0"]);
    assert!(veth.contains("mtu 1450") && veth.contains("02:00:00:00:01:02"), "{veth}");
    let main = f.exec_ok(&p.h1.ns, "ip", &["route", "show", "table", "main"]);
    assert!(!main.contains("10.0.0."), "no overlay route may land in the main table:\n{main}");
    let main6 = f.exec_ok(&p.h1.ns, "ip", &["-6", "route", "show", "table", "main"]);
    assert!(!main6.contains("2001:db8:100"), "no overlay route may land in the main table:\n{main6}");

    // On the wire: VXLAN with the network's VNI between the two underlay addresses.
    let dump = f.tcpdump_underlay(2, "udp port 4789");
    assert!(f.ping(&p.c1, "10.0.0.3", 1));
    let seen = f.wait(dump, Duration::from_secs(5));
    assert!(seen.contains("VXLAN") && seen.contains("vni 100"), "tcpdump on the underlay:\n{seen}");
    assert!(seen.contains(&format!("{}.", p.h1.underlay_ip)) && seen.contains(&format!("{}.4789", p.h2.underlay_ip)), "{seen}");

    // The interface table.
    let vifs = p.dp1.interfaces().await.unwrap();
    let tv = vifs.iter().find(|v| v.kind == VifKind::Endpoint).expect("endpoint vif");
    assert_eq!(tv.vni, Some(Vni::new(100).unwrap()));
    assert_eq!(tv.master.as_deref(), Some("tb100"));
    assert!(tv.flags.iter().any(|f| f == "up") && tv.rx_packets > 0 && tv.tx_packets > 0, "{tv:?}");
    let tb = vifs.iter().find(|v| v.name == "tb100").unwrap();
    assert_eq!(tb.kind, VifKind::Bridge);
    assert!(tb.addrs.contains(&"10.0.0.1/32".parse().unwrap()), "{tb:?}");
    assert_eq!(vifs.iter().find(|v| v.name == "tx100").unwrap().kind, VifKind::Tunnel);
    assert_eq!(vifs.iter().find(|v| v.name == "eth0").unwrap().kind, VifKind::Host, "a veth is not physical");
    assert_eq!(p.dp1.link_with_address(p.h1.underlay_ip).await.unwrap(), Some(("eth0".to_string(), 1500)));
}

#[tokio::test]
async fn privileged_restarted_agent_plans_nothing_and_does_not_interrupt_traffic() {
    let mut f = Fabric::new();
    let p = red_pair(&mut f).await;
    assert!(f.ping(&p.c1, "10.0.0.3", 2));

    // A ping running through the "restart".
    let c1 = p.c1.clone();
    let running = f.spawn(&c1, "ping", &["-n", "-i", "0.05", "-c", "60", "-W", "1", "10.0.0.3"], Stdio::null());
    drop(p.dp1);
    drop(p.dp2);
    let dp1 = LinuxDataplane::in_netns(p.h1.netns_path()).await.unwrap();
    let dp2 = LinuxDataplane::in_netns(p.h2.netns_path()).await.unwrap();
    for (dp, d) in [(&dp1, &p.d1), (&dp2, &p.d2)] {
        let observed = dp.observe().await.unwrap();
        let actions = plan(d, &observed);
        assert!(actions.is_empty(), "a converged host must plan nothing, got:\n{}", lines(&actions));
        assert!(reconcile(dp, d).await.unwrap().is_noop());
    }
    let out = f.wait(running, Duration::from_secs(10));
    assert!(out.contains(" 0% packet loss"), "the running ping lost packets:\n{out}");
}

#[tokio::test]
async fn privileged_overlapping_subnets_in_two_networks_work_and_stay_apart() {
    let mut f = Fabric::new();
    let h1 = f.host("h1");
    let h2 = f.host("h2");
    let (r1, r2, b1, b2) = (f.netns("r1"), f.netns("r2"), f.netns("b1"), f.netns("b2"));
    let net = |vni: u32, zone: u16, local: Vec<LocalEndpoint>, remote: Vec<RemoteEndpoint>| DesiredNetwork {
        domain: None,
        egress: None,
        vni: Vni::new(vni).unwrap(),
        zone,
        subnets: vec![subnet("10.0.0.0/24", "10.0.0.1")],
        local,
        remote,
        imports: vec![],
    };
    // red: 10.0.0.2 on h1, 10.0.0.3 on h2. blue: 10.0.0.2 on h1, 10.0.0.4 on h2.
    let d1 = host_state(
        &h1,
        vec![
            net(100, 1, vec![endpoint(1, "02:00:00:00:01:02", &["10.0.0.2/24"], &r1)], vec![remote("10.0.0.3", &h2)]),
            net(200, 2, vec![endpoint(2, "02:00:00:00:02:02", &["10.0.0.2/24"], &b1)], vec![remote("10.0.0.4", &h2)]),
        ],
    );
    let d2 = host_state(
        &h2,
        vec![
            net(100, 1, vec![endpoint(3, "02:00:00:00:01:03", &["10.0.0.3/24"], &r2)], vec![remote("10.0.0.2", &h1)]),
            net(200, 2, vec![endpoint(4, "02:00:00:00:02:04", &["10.0.0.4/24"], &b2)], vec![remote("10.0.0.2", &h1)]),
        ],
    );
    let dp1 = LinuxDataplane::in_netns(h1.netns_path()).await.unwrap();
    let dp2 = LinuxDataplane::in_netns(h2.netns_path()).await.unwrap();
    converge(&dp1, &d1).await;
    converge(&dp2, &d2).await;

    assert!(f.ping(&r1, "10.0.0.3", 3), "red works");
    assert!(f.ping(&b1, "10.0.0.4", 3), "blue works with the same addresses");
    assert!(f.ping(&r2, "10.0.0.2", 2) && f.ping(&b2, "10.0.0.2", 2), "both 10.0.0.2 answer, each in its network");
    assert!(f.ping_fails(&r1, "10.0.0.4"), "red must not reach blue's 10.0.0.4");
    assert!(f.ping_fails(&b1, "10.0.0.3"), "blue must not reach red's 10.0.0.3");
    assert!(f.ping_fails(&r1, &h2.underlay_ip.to_string()), "a VRF ends in unreachable: no way into the underlay");

    // The answering 10.0.0.2 is the one of the sender's own network: its MAC.
    let neigh = f.exec_ok(&h2.ns, "ip", &["neigh", "show", "dev", "tb100"]);
    assert!(neigh.contains("02:00:00:00:01:03") && !neigh.contains("02:00:00:00:02:04"), "{neigh}");

    // Conntrack keeps the two flows apart, one zone per network.
    let ct = f.exec_ok(&h1.ns, "conntrack", &["-L"]);
    assert!(ct.contains("zone=1") && ct.contains("zone=2"), "conntrack entries:\n{ct}");
}

#[tokio::test]
async fn privileged_spoofed_source_address_or_mac_is_dropped() {
    let mut f = Fabric::new();
    let p = red_pair(&mut f).await;
    assert!(f.ping(&p.c1, "10.0.0.3", 2), "baseline");

    // A second, unassigned address in the container.
    f.exec_ok(&p.c1, "ip", &["addr", "add", "10.0.0.50/32", "dev", "eth0"]);
    let spoofed = f.exec(&p.c1, "ping", &["-n", "-c", "2", "-i", "0.2", "-W", "1", "-I", "10.0.0.50", "10.0.0.3"]);
    assert!(!spoofed.status.success(), "a spoofed IPv4 source must be dropped");
    f.exec_ok(&p.c1, "ip", &["addr", "del", "10.0.0.50/32", "dev", "eth0"]);
    assert!(f.ping(&p.c1, "10.0.0.3", 2), "the real address still works");

    f.exec_ok(&p.c1, "ip", &["-6", "addr", "add", "2001:db8:100::50/128", "dev", "eth0", "nodad"]);
    let spoofed6 = f.exec(&p.c1, "ping", &["-n", "-c", "2", "-i", "0.2", "-W", "1", "-I", "2001:db8:100::50", "2001:db8:100::3"]);
    assert!(!spoofed6.status.success(), "a spoofed IPv6 source must be dropped");

    // A spoofed MAC with the real address.
    f.exec_ok(&p.c1, "ip", &["link", "set", "eth0", "address", "02:00:00:00:01:99"]);
    f.exec_ok(&p.c1, "ip", &["neigh", "flush", "dev", "eth0"]);
    assert!(f.ping_fails(&p.c1, "10.0.0.3"), "a spoofed MAC must be dropped");

    let chain = f.exec_ok(&p.h1.ns, "nft", &["list", "chain", "bridge", "tessera", "prerouting"]);
    let dropped = chain
        .lines()
        .find(|l| l.contains("counter packets") && l.contains(" drop"))
        .and_then(|l| l.split("packets ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(dropped > 0, "the anti-spoofing drop counter did not move:\n{chain}");

    // The agent cannot see inside the container, but an endpoint whose
    // completion mark is gone is configured again, which restores its MAC.
    let veth = tessera_dataplane::host_veth_name(p.d1.networks[0].local[0].id);
    f.exec_ok(&p.h1.ns, "ip", &["link", "set", &veth, "alias", ""]);
    let report = reconcile(&p.dp1, &p.d1).await.unwrap();
    assert!(report.is_ok(), "{:#?}", report.failures);
    assert_eq!(report.applied.len(), 1, "only the container side is configured again: {:#?}", report.applied);
    f.exec_ok(&p.c1, "ip", &["neigh", "flush", "dev", "eth0"]);
    assert!(f.ping(&p.c1, "10.0.0.3", 2), "the real MAC works again");
}

#[tokio::test]
async fn privileged_deleting_endpoint_then_network_leaves_nothing_behind() {
    let mut f = Fabric::new();
    let p = red_pair(&mut f).await;
    assert!(f.ping(&p.c1, "10.0.0.3", 2));

    // The endpoint on h1 goes (h2 learns it is gone too).
    let mut d1 = p.d1.clone();
    d1.networks[0].local.clear();
    let mut d2 = p.d2.clone();
    d2.networks[0].remote.clear();
    converge(&p.dp1, &d1).await;
    converge(&p.dp2, &d2).await;
    let links = f.exec_ok(&p.h1.ns, "ip", &["-br", "link"]);
    assert!(!links.contains("tv"), "endpoint veth left behind:\n{links}");
    let c1_links = f.exec_ok(&p.c1, "ip", &["-br", "link"]);
    assert!(!c1_links.contains("eth0"), "container side left behind:\n{c1_links}");
    let set = f.exec_ok(&p.h1.ns, "nft", &["list", "table", "bridge", "tessera"]);
    assert!(!set.contains("02:00:00:00:01:02"), "anti-spoofing elements left behind:\n{set}");
    let r2 = f.exec_ok(&p.h2.ns, "ip", &["route", "show", "table", "65636"]);
    assert!(!r2.contains("10.0.0.2"), "remote route left on h2:\n{r2}");
    let n2 = f.exec_ok(&p.h2.ns, "ip", &["neigh", "show", "dev", "tx100"]);
    assert!(n2.trim().is_empty(), "remote neighbours left on h2:\n{n2}");
    let fdb2 = f.exec_ok(&p.h2.ns, "bridge", &["fdb", "show", "dev", "tx100"]);
    assert!(!fdb2.contains("dst"), "remote FDB entries left on h2:\n{fdb2}");
    let proxy2 = f.exec_ok(&p.h2.ns, "ip", &["-6", "neigh", "show", "proxy"]);
    // h2 keeps the proxy entry of its own endpoint (ports are isolated), not h1's.
    assert!(!proxy2.contains("2001:db8:100::2"), "proxy entries left on h2:\n{proxy2}");

    // Then the whole network, on both hosts.
    for (dp, h) in [(&p.dp1, &p.h1), (&p.dp2, &p.h2)] {
        converge(dp, &host_state(h, vec![])).await;
        let ns = &h.ns;
        let links = f.exec_ok(ns, "ip", &["-br", "link"]);
        assert!(!links.contains("tb100") && !links.contains("tx100") && !links.contains("tv"), "{links}");
        for fam in ["-4", "-6"] {
            let rules = f.exec_ok(ns, "ip", &[fam, "rule"]);
            assert!(!rules.contains("1000:"), "rules left behind:\n{rules}");
            let routes = f.exec_ok(ns, "ip", &[fam, "route", "show", "table", "all"]);
            assert!(!routes.contains("table 65636"), "VRF routes left behind:\n{routes}");
        }
        // (The policy table's `digests` map keeps the skeleton's marker.)
        for (family, table) in [("inet", "tessera"), ("bridge", "tessera")] {
            let nft = f.exec_ok(ns, "nft", &["-j", "list", "table", family, table]);
            assert!(!nft.contains("\"elem\""), "nft elements left behind:\n{nft}");
        }
        let policy = f.exec_ok(ns, "nft", &["list", "table", "inet", "tessera_policy"]);
        assert!(!policy.contains("chain l") && !policy.contains("map m"), "policy objects left behind:\n{policy}");
        let observed = dp.observe().await.unwrap();
        assert!(observed.links.is_empty() && observed.routes.is_empty() && observed.rules.is_empty(), "{observed:#?}");
        assert!(observed.nft.elements.is_empty());
    }
}

fn lines(actions: &[tessera_dataplane::KernelOp]) -> String {
    actions.iter().map(|a| format!("{a}\n")).collect()
}

#[tokio::test]
async fn privileged_removing_what_is_gone_succeeds() {
    use tessera_dataplane::observed::{FdbEntry, NeighEntry, NftElement, RouteEntry, RouteTarget, RuleEntry};
    use tessera_dataplane::KernelOp;

    let mut f = Fabric::new();
    let h1 = f.host("h1");
    let dp = LinuxDataplane::in_netns(h1.netns_path()).await.unwrap();
    let mac: MacAddr = "02:00:00:00:00:01".parse().unwrap();
    let kept = NftElement::EpMac { port: "tv00000001".into(), mac };
    let actions = vec![
        KernelOp::NftTablesInstall,
        KernelOp::NftSetElementDelete(NftElement::Zone { ifname: "tb999".into(), zone: 9 }),
        KernelOp::NftSetElementAdd(kept.clone()),
        KernelOp::RuleUninstall(RuleEntry {
            family: tessera_dataplane::observed::IpFamily::V4,
            selector: tessera_dataplane::observed::RuleSelector::Iif("tb999".into()),
            table: 0x10000 + 999,
            priority: 1000,
        }),
        KernelOp::RouteUninstall(RouteEntry {
            table: 0x10000 + 999,
            dst: "0.0.0.0/0".parse().unwrap(),
            target: RouteTarget::Unreachable,
        }),
        KernelOp::NeighUninstall(NeighEntry { dev: "tx999".into(), ip: "10.0.0.9".parse().unwrap(), mac }),
        KernelOp::FdbUninstall(FdbEntry { dev: "tx999".into(), mac, dst: "10.99.0.9".parse().unwrap() }),
        KernelOp::LinkDelete { name: "tb999".into() },
    ];
    let report = dp.apply(&actions).await.unwrap();
    assert!(report.is_ok(), "{:#?}", report.failures);
    assert_eq!(report.applied.len(), actions.len());
    assert!(dp.observe().await.unwrap().nft.elements.contains(&kept), "the add in the same batch still happened");
}
