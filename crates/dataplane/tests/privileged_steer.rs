//! Privileged tests of service chaining on the Linux data plane (root; they
//! fail, saying why, when they cannot run). Each test builds its own fabric
//! of namespaces (see `support`): a host `h1` and, on it, a client in
//! network red (VNI 100), a server in network blue (VNI 200) and a service
//! instance `fw` with a port in each (its own routing table per port, as
//! the agent gives service instances). Red and blue do not route to each
//! other: what the client sends to the server arrives only if the host
//! steers it through the instance, and the answers only if they are
//! steered back.

mod support;

use std::path::PathBuf;

use support::{Fabric, Host};
use tessera_dataplane::desired::{DesiredSteer, SteerTarget};
use tessera_dataplane::{plan, reconcile, Dataplane, DesiredHost, DesiredNetwork, DesiredSubnet, LinuxDataplane, LocalEndpoint};
use tessera_model::{MacAddr, Vni};
use uuid::Uuid;

const CLIENT: u128 = 0xc1c1c1c1_0000_4000_8000_000000000001;
const SERVER: u128 = 0x5e5e5e5e_0000_4000_8000_000000000002;
const FW_LEFT: u128 = 0xf1f1f1f1_0000_4000_8000_000000000003;
const FW_RIGHT: u128 = 0xf2f2f2f2_0000_4000_8000_000000000004;

fn endpoint(id: u128, mac: &str, ip: &str, netns: &str, ifname: &str) -> LocalEndpoint {
    LocalEndpoint {
        own_table: false,
        service: false,
        dhcp: false,
        id: Uuid::from_u128(id),
        mac: mac.parse::<MacAddr>().unwrap(),
        ips: vec![ip.parse().unwrap()],
        netns: PathBuf::from(format!("/run/netns/{netns}")),
        ifname: ifname.into(),
    }
}

/// A service instance's port: its own table, forwarding.
fn service_port(mut e: LocalEndpoint) -> LocalEndpoint {
    e.own_table = true;
    e.service = true;
    e
}

fn network(vni: u32, zone: u16, cidr: &str, gateway: &str, local: Vec<LocalEndpoint>) -> DesiredNetwork {
    DesiredNetwork {
        domain: None,
        egress: None,
        vni: Vni::new(vni).unwrap(),
        zone,
        subnets: vec![DesiredSubnet { dns: vec![], cidr: cidr.parse().unwrap(), gateway: Some(gateway.parse().unwrap()) }],
        local,
        remote: vec![],
        imports: vec![],
    }
}

fn target(address: &str, dev: &str) -> SteerTarget {
    SteerTarget { address: address.parse().unwrap(), dev: dev.into() }
}

fn steer(vni: u32, label: &str, src: &str, dst: &str, reverse: bool, targets: Vec<SteerTarget>) -> DesiredSteer {
    DesiredSteer {
        vni: Vni::new(vni).unwrap(),
        label: label.into(),
        src: vec![src.parse().unwrap()],
        dst: vec![dst.parse().unwrap()],
        protocol: None,
        src_ports: vec![],
        dst_ports: vec![],
        reverse,
        skip_ports: vec![],
        targets,
    }
}

/// The namespaces of one test.
struct Chain {
    h1: Host,
    client: String,
    server: String,
    fw: String,
    /// Without steering.
    plain: DesiredHost,
    dp: LinuxDataplane,
}

async fn chain(f: &mut Fabric) -> Chain {
    let h1 = f.host("h1");
    let (client, server, fw) = (f.netns("client"), f.netns("server"), f.netns("fw"));
    let red = network(
        100,
        1,
        "10.1.0.0/24",
        "10.1.0.1",
        vec![
            endpoint(CLIENT, "02:00:00:00:01:02", "10.1.0.2/24", &client, "eth0"),
            service_port(endpoint(FW_LEFT, "02:00:00:00:01:0a", "10.1.0.10/24", &fw, "left")),
        ],
    );
    let blue = network(
        200,
        2,
        "10.2.0.0/24",
        "10.2.0.1",
        vec![
            endpoint(SERVER, "02:00:00:00:02:02", "10.2.0.2/24", &server, "eth0"),
            service_port(endpoint(FW_RIGHT, "02:00:00:00:02:0a", "10.2.0.10/24", &fw, "right")),
        ],
    );
    let plain = DesiredHost {
        published: vec![],
        steering: vec![],
        uplinks: vec![],
        underlay_ip: h1.underlay_ip,
        underlay_ifname: "eth0".into(),
        underlay_mtu: 1500,
        peers: vec![],
        networks: vec![red, blue],
        pair_zones: vec![],
        policies: vec![],
        watches: vec![],
    };
    let dp = LinuxDataplane::in_netns(h1.netns_path()).await.expect("data plane in h1");
    converge(&dp, &plain).await;
    Chain { h1, client, server, fw, plain, dp }
}

/// The chain red → fw → blue (and back), plus steerings no packet of the
/// test takes: two instances behind the tunnel, IPv6, and one without
/// instances.
fn steered(plain: &DesiredHost) -> DesiredHost {
    let mut d = plain.clone();
    let left = tessera_dataplane::host_veth_name(Uuid::from_u128(FW_LEFT));
    let right = tessera_dataplane::host_veth_name(Uuid::from_u128(FW_RIGHT));
    let mut forward = steer(100, "fw left", "10.1.0.0/24", "10.2.0.0/24", false, vec![target("10.1.0.10", "tb100")]);
    forward.skip_ports = vec![left];
    let mut back = steer(200, "fw right", "10.2.0.0/24", "10.1.0.0/24", true, vec![target("10.2.0.10", "tb200")]);
    back.skip_ports = vec![right];
    let remote =
        steer(100, "far", "10.1.0.0/24", "10.9.0.0/24", false, vec![target("10.1.0.3", "tx100"), target("10.1.0.4", "tx100")]);
    let v6 = steer(100, "six", "2001:db8:1::/64", "2001:db8:2::/64", false, vec![target("2001:db8:1::10", "tb100")]);
    let closed = steer(100, "closed", "10.1.0.0/24", "10.8.0.0/24", false, vec![]);
    d.steering = vec![forward, back, remote, v6, closed];
    d
}

async fn converge(dp: &LinuxDataplane, desired: &DesiredHost) {
    let report = reconcile(dp, desired).await.expect("reconcile");
    assert!(report.is_ok(), "failed actions: {:#?}", report.failures);
    let actions = plan(desired, &dp.observe().await.expect("observe"));
    assert!(actions.is_empty(), "a converged host must plan nothing, got {actions:#?}");
}

/// The packets counted by the `fw` namespace's forward hook.
fn forwarded(f: &Fabric, fw: &str) -> u64 {
    let chain = f.exec_ok(fw, "nft", &["list", "chain", "inet", "vnf", "through"]);
    chain
        .split("packets ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in\n{chain}"))
}

#[tokio::test]
async fn privileged_steering_objects_are_installed_and_removed() {
    let mut f = Fabric::new();
    let c = chain(&mut f).await;
    converge(&c.dp, &steered(&c.plain)).await;

    let nft = f.exec_ok(&c.h1.ns, "nft", &["list", "chain", "inet", "tessera_policy", "steer"]);
    for want in [
        "meta mark set 0x28000000 comment \"fw left\"",
        "iifname != \"tvf1f1f1f1\"",
        "meta mark set jhash ip saddr . ip daddr . th sport . th dport mod 2 seed 0x54657373 offset 671088642 comment \"far\"",
        "meta mark set jhash ip saddr . ip daddr mod 2 seed 0x54657373 offset 671088642 comment \"far\"",
        "ip6 saddr 2001:db8:1::/64 ip6 daddr 2001:db8:2::/64 meta mark set 0x28000004 comment \"six\"",
        "drop comment \"closed: no healthy instance\"",
    ] {
        assert!(nft.contains(want), "the steer chain lacks {want:?}:\n{nft}");
    }
    let rules = f.exec_ok(&c.h1.ns, "ip", &["rule"]);
    for i in [0, 1, 2, 3] {
        let want = format!("995:\tfrom all fwmark {:#x}/0x800ffff lookup {}", 0x0800_0000 + i, 0x0800_0000 + i);
        assert!(rules.contains(&want), "`ip rule` lacks {want:?}:\n{rules}");
    }
    let rules6 = f.exec_ok(&c.h1.ns, "ip", &["-6", "rule"]);
    assert!(rules6.contains("995:\tfrom all fwmark 0x8000004/0x800ffff lookup 134217732"), "{rules6}");
    for (table, want) in [
        ("134217728", "default via 10.1.0.10 dev tb100 "),
        ("134217729", "default via 10.2.0.10 dev tb200 "),
        ("134217730", "default via 10.1.0.3 dev tx100 "),
        ("134217731", "default via 10.1.0.4 dev tx100 "),
    ] {
        let routes = f.exec_ok(&c.h1.ns, "ip", &["route", "show", "table", table]);
        assert!(routes.contains(want) && routes.contains(" onlink"), "table {table} lacks {want:?}:\n{routes}");
    }
    let routes6 = f.exec_ok(&c.h1.ns, "ip", &["-6", "route", "show", "table", "134217732"]);
    assert!(routes6.contains("default via 2001:db8:1::10 dev tb100"), "{routes6}");
    let svcmac = f.exec_ok(&c.h1.ns, "nft", &["list", "set", "bridge", "tessera", "svcmac"]);
    assert!(
        svcmac.contains("\"tvf1f1f1f1\" . 02:00:00:00:01:0a") && svcmac.contains("\"tvf2f2f2f2\" . 02:00:00:00:02:0a"),
        "{svcmac}"
    );
    for key in ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"] {
        assert_eq!(f.exec_ok(&c.fw, "sysctl", &["-n", key]).trim(), "1", "{key} in the instance");
    }
    for key in ["net.ipv4.conf.all.rp_filter", "net.ipv4.conf.left.rp_filter", "net.ipv4.conf.right.rp_filter"] {
        assert_eq!(f.exec_ok(&c.fw, "sysctl", &["-n", key]).trim(), "0", "{key} in the instance");
    }
    assert_eq!(f.exec_ok(&c.client, "sysctl", &["-n", "net.ipv4.ip_forward"]).trim(), "0", "a plain endpoint does not forward");

    // Steering goes: nothing of it is left.
    converge(&c.dp, &c.plain).await;
    let nft = f.exec_ok(&c.h1.ns, "nft", &["list", "chain", "inet", "tessera_policy", "steer"]);
    assert!(!nft.contains("mark set") && !nft.contains("drop"), "{nft}");
    for fam in ["-4", "-6"] {
        let rules = f.exec_ok(&c.h1.ns, "ip", &[fam, "rule"]);
        assert!(!rules.contains("995:"), "steering rules left behind:\n{rules}");
        let routes = f.exec_ok(&c.h1.ns, "ip", &[fam, "route", "show", "table", "all"]);
        assert!(!routes.contains("table 1342177"), "steering routes left behind:\n{routes}");
    }
}

#[tokio::test]
async fn privileged_a_flow_between_two_networks_goes_through_the_instance_both_ways() {
    let mut f = Fabric::new();
    let c = chain(&mut f).await;
    let vnf = "table inet vnf {\n chain through {\n  type filter hook forward priority 0; policy accept;\n  counter\n }\n}\n";
    let file = std::env::temp_dir().join(format!("tessera-steer-{}.nft", std::process::id()));
    std::fs::write(&file, vnf).unwrap();
    let loaded = f.exec(&c.fw, "nft", &["-f", &file.display().to_string()]);
    let _ = std::fs::remove_file(&file);
    assert!(loaded.status.success(), "{}", String::from_utf8_lossy(&loaded.stderr));

    assert!(f.ping_fails(&c.client, "10.2.0.2"), "red and blue do not route to each other");
    assert_eq!(forwarded(&f, &c.fw), 0);

    converge(&c.dp, &steered(&c.plain)).await;
    assert!(f.ping(&c.client, "10.2.0.2", 3), "client -> server through the instance");
    assert!(f.ping(&c.server, "10.1.0.2", 2), "server -> client through the instance");
    // Each echo and each reply is forwarded by the instance once.
    assert!(forwarded(&f, &c.fw) >= 10, "the instance forwarded {}", forwarded(&f, &c.fw));

    // The host reaches the instance's port as the agent's health probes
    // do (the socket mark of the network's table), and its answers get
    // through the host guard; without the mark there is no way there.
    assert!(
        f.exec(&c.h1.ns, "ping", &["-n", "-c", "2", "-i", "0.2", "-W", "2", "-m", "65636", "10.1.0.10"]).status.success(),
        "a probe of the instance from the host"
    );
    assert!(f.ping_fails(&c.h1.ns, "10.1.0.10"), "the host's own tables have no way into a network");
    assert!(f.ping_fails(&c.fw, "10.1.0.1"), "the instance still cannot reach the host");
    assert!(f.ping_fails(&c.client, "10.1.0.1"), "nor can the client");

    // The chain goes: so does the way between the networks.
    converge(&c.dp, &c.plain).await;
    assert!(f.ping_fails(&c.client, "10.2.0.2"), "without steering red does not reach blue");
}
