//! Golden tests of the planner: each case starts from the kernel state a
//! previous desired state converged to (computed by running the plan through
//! the fake data plane's kernel model), plans a new desired state, and
//! compares the actions, one `Display` per line, with
//! `tests/golden/<case>.txt`. `UPDATE_GOLDEN=1 cargo test` rewrites the files.

use std::net::IpAddr;
use std::path::PathBuf;

use tessera_dataplane::{
    plan, plan_with, reconcile, DesiredHost, DesiredNetwork, DesiredSubnet, FakeDataplane, LocalEndpoint, Observed, PlanMemo,
    RemoteEndpoint,
};
use tessera_model::{MacAddr, Vni};
use uuid::Uuid;

const EP_A: &str = "a1b2c3d4-0000-4000-8000-00000000000a";
const EP_B: &str = "b1b2c3d4-0000-4000-8000-00000000000b";

fn host(networks: Vec<DesiredNetwork>) -> DesiredHost {
    DesiredHost {
        published: vec![],
        steering: vec![],
        uplinks: vec![],
        underlay_ip: "10.99.0.1".parse().unwrap(),
        underlay_ifname: "eth0".into(),
        underlay_mtu: 1500,
        peers: vec![],
        networks,
        pair_zones: vec![],
        policies: vec![],
        watches: vec![],
    }
}

fn network(vni: u32, zone: u16) -> DesiredNetwork {
    DesiredNetwork {
        domain: None,
        egress: None,
        vni: Vni::new(vni).unwrap(),
        zone,
        subnets: vec![
            DesiredSubnet { dns: vec![], cidr: "10.0.0.0/24".parse().unwrap(), gateway: Some("10.0.0.1".parse().unwrap()) },
            DesiredSubnet { dns: vec![], cidr: "2001:db8::/64".parse().unwrap(), gateway: Some("2001:db8::1".parse().unwrap()) },
        ],
        local: vec![],
        remote: vec![],
        imports: vec![],
    }
}

fn endpoint(id: &str, mac: &str, ips: &[&str], netns: &str) -> LocalEndpoint {
    LocalEndpoint {
        own_table: false,
        service: false,
        dhcp: false,
        id: id.parse::<Uuid>().unwrap(),
        mac: mac.parse::<MacAddr>().unwrap(),
        ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
        netns: PathBuf::from(netns),
        ifname: "eth0".into(),
    }
}

fn remote(ip: &str, host: &str) -> RemoteEndpoint {
    RemoteEndpoint { ip: ip.parse::<IpAddr>().unwrap(), host_underlay: host.parse().unwrap() }
}

fn with_endpoint(mut n: DesiredNetwork) -> DesiredNetwork {
    n.local.push(endpoint(EP_A, "02:00:00:00:00:0a", &["10.0.0.2/24", "2001:db8::2/64"], "/run/netns/c1"));
    n
}

fn with_remote(mut n: DesiredNetwork) -> DesiredNetwork {
    n.remote.push(remote("10.0.0.3", "10.99.0.2"));
    n.remote.push(remote("2001:db8::3", "10.99.0.2"));
    n
}

/// A host kernel with nothing of Tessera's and forwarding off.
fn bare_kernel() -> Observed {
    let mut k = Observed::default();
    k.sysctls.insert(tessera_dataplane::desired::SysctlKey("net/ipv4/ip_forward".into()), "0".into());
    k.sysctls.insert(tessera_dataplane::desired::SysctlKey("net/ipv6/conf/all/forwarding".into()), "0".into());
    k
}

/// The kernel state the fake reaches after reconciling `desired` from
/// nothing (host forwarding off).
fn converged(desired: &DesiredHost) -> Observed {
    let fake = FakeDataplane::with_kernel(bare_kernel());
    let report = futures::executor::block_on(reconcile(&fake, desired)).unwrap();
    assert!(report.is_ok(), "converging failed: {:?}", report.failures);
    fake.kernel()
}

fn check(case: &str, from: &DesiredHost, to: &DesiredHost) {
    to.validate().unwrap();
    let kernel = converged(from);
    // A planner that kept what `from` implied plans `to` the same.
    let mut memo = PlanMemo::default();
    plan_with(from, &kernel, &mut memo);
    assert_eq!(plan_with(to, &kernel, &mut memo), plan(to, &kernel), "{case}: the plan with a memo of the state before");
    check_against(case, to, &kernel);
}

/// The plan from `kernel` to `desired` is the one in the case's file, and
/// a planner that kept what `desired` implies plans the same.
fn check_against(case: &str, desired: &DesiredHost, kernel: &Observed) {
    let planned = plan(desired, kernel);
    let mut memo = PlanMemo::default();
    plan_with(desired, kernel, &mut memo);
    assert_eq!(plan_with(desired, kernel, &mut memo), planned, "{case}: the plan with a memo of the same state");
    let actual: String = planned.iter().map(|a| format!("{a}\n")).collect();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(format!("{case}.txt"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1 to create it)", path.display()));
    assert_eq!(actual, expected, "plan for {case} differs from {}", path.display());
}

#[test]
fn empty_host_gets_one_network() {
    check_against("empty_to_one_network", &host(vec![network(100, 1)]), &bare_kernel());
}

#[test]
fn local_endpoint_is_attached() {
    check("local_endpoint_added", &host(vec![network(100, 1)]), &host(vec![with_endpoint(network(100, 1))]));
}

#[test]
fn remote_endpoints_are_added() {
    check(
        "remote_endpoint_added",
        &host(vec![with_endpoint(network(100, 1))]),
        &host(vec![with_remote(with_endpoint(network(100, 1)))]),
    );
}

#[test]
fn remote_endpoints_are_removed() {
    check(
        "remote_endpoint_removed",
        &host(vec![with_remote(with_endpoint(network(100, 1)))]),
        &host(vec![with_endpoint(network(100, 1))]),
    );
}

#[test]
fn remote_endpoint_moves_to_another_host() {
    let mut moved = with_remote(with_endpoint(network(100, 1)));
    for r in &mut moved.remote {
        r.host_underlay = "10.99.0.3".parse().unwrap();
    }
    check("remote_endpoint_moved", &host(vec![with_remote(with_endpoint(network(100, 1)))]), &host(vec![moved]));
}

#[test]
fn local_endpoint_is_deleted() {
    check(
        "local_endpoint_deleted",
        &host(vec![with_remote(with_endpoint(network(100, 1)))]),
        &host(vec![with_remote(network(100, 1))]),
    );
}

#[test]
fn network_is_deleted() {
    let two = host(vec![with_remote(with_endpoint(network(100, 1))), network(200, 2)]);
    check("network_deleted", &two, &host(vec![network(200, 2)]));
}

#[test]
fn converged_host_gets_an_empty_plan() {
    let desired = host(vec![with_remote(with_endpoint(network(100, 1))), network(200, 2)]);
    assert_eq!(plan(&desired, &converged(&desired)), vec![]);
}

#[test]
fn two_networks_with_overlapping_subnets() {
    let mut red = with_endpoint(network(100, 1));
    let mut blue = network(200, 2);
    blue.local.push(endpoint(EP_B, "02:00:00:00:00:0b", &["10.0.0.2/24"], "/run/netns/c2"));
    red.remote.push(remote("10.0.0.3", "10.99.0.2"));
    blue.remote.push(remote("10.0.0.3", "10.99.0.2"));
    check("overlapping_subnets", &host(vec![]), &host(vec![red, blue]));
}

#[test]
fn outdated_nft_skeleton_is_replaced_with_all_elements() {
    let desired = host(vec![with_endpoint(network(100, 1))]);
    let mut kernel = converged(&desired);
    kernel.nft.skeleton = Some("tessera-v0".into());
    let actual: Vec<String> = plan(&desired, &kernel).iter().map(|a| a.to_string()).collect();
    assert_eq!(actual[0], "nft -f tessera-skeleton-tessera-v11 # inet tessera, bridge tessera, inet tessera_policy");
    assert_eq!(
        actual.len(),
        1 + 2 + 1 + 2 + 3 + 6,
        "skeleton, steer and dispatch chains, digests, two zones, three port elements, six places the bridge reaches \
         (two subnets, multicast, broadcast and link-local): {actual:#?}"
    );
}

#[test]
fn vxlan_is_accepted_from_the_fabric_s_hosts_and_the_hosts_of_remote_endpoints() {
    let mut desired = host(vec![with_remote(with_endpoint(network(100, 1)))]);
    desired.peers = vec!["10.99.0.7".parse().unwrap(), "fd00::7".parse().unwrap()];
    let actual: Vec<String> = plan(&desired, &converged(&host(vec![]))).iter().map(|a| a.to_string()).collect();
    let vteps: Vec<&String> = actual.iter().filter(|a| a.contains(" vteps")).collect();
    assert_eq!(
        vteps,
        [
            "nft add element inet tessera vteps4 { 10.99.0.2 }",
            "nft add element inet tessera vteps4 { 10.99.0.7 }",
            "nft add element inet tessera vteps6 { fd00::7 }"
        ],
        "{actual:#?}"
    );
}

#[test]
fn links_named_like_tessera_s_without_its_mark_are_never_deleted() {
    let desired = host(vec![with_endpoint(network(100, 1))]);
    let mut kernel = converged(&desired);
    let mut stray = kernel.links["tb100"].clone();
    stray.alias = None;
    kernel.links.insert("tb300".into(), stray.clone());
    kernel
        .addresses
        .insert(tessera_dataplane::observed::AddressEntry { dev: "tb300".into(), addr: "10.30.0.1/32".parse().unwrap() });
    let actual: Vec<String> = plan(&desired, &kernel).iter().map(|a| a.to_string()).collect();
    assert!(actual.is_empty(), "an unmarked tb300 and its address are someone else's: {actual:#?}");
    stray.alias = Some(tessera_dataplane::names::LINK_MARK.into());
    kernel.links.insert("tb300".into(), stray);
    let actual: Vec<String> = plan(&desired, &kernel).iter().map(|a| a.to_string()).collect();
    assert!(actual.contains(&"ip link del tb300".to_string()), "a marked tb300 is Tessera's to delete: {actual:#?}");
}

#[test]
fn unmarked_links_an_earlier_version_made_are_adopted_when_wanted() {
    let desired = host(vec![with_endpoint(network(100, 1))]);
    let mut kernel = converged(&desired);
    kernel.links.get_mut("tb100").unwrap().alias = None;
    let veth = kernel.links.keys().find(|n| n.starts_with("tv")).unwrap().clone();
    let legacy = kernel.links[&veth].alias.clone().unwrap().trim_start_matches("tessera:").to_string();
    kernel.links.get_mut(&veth).unwrap().alias = Some(legacy);
    let actual: Vec<String> = plan(&desired, &kernel).iter().map(|a| a.to_string()).collect();
    assert_eq!(actual[0], "ip link set tb100 alias tessera", "{actual:#?}");
    assert_eq!(actual.len(), 2, "the bridge is marked, the veth configured again (which marks it): {actual:#?}");
    assert!(
        actual[1].starts_with("nsenter")
            && actual[1].ends_with(&format!("alias tessera:{}", &kernel.links[&veth].alias.clone().unwrap()))
    );
}

#[test]
fn link_set_down_by_someone_is_set_up_again() {
    let desired = host(vec![with_endpoint(network(100, 1))]);
    let mut kernel = converged(&desired);
    kernel.links.get_mut("tx100").unwrap().up = false;
    let actual: Vec<String> = plan(&desired, &kernel).iter().map(|a| a.to_string()).collect();
    assert_eq!(actual, vec!["ip link set tx100 up"]);
}

#[test]
fn endpoint_port_that_is_not_isolated_is_isolated() {
    let desired = host(vec![with_endpoint(network(100, 1))]);
    let mut kernel = converged(&desired);
    kernel.links.get_mut("tva1b2c3d4").unwrap().isolated = false;
    let actual: Vec<String> = plan(&desired, &kernel).iter().map(|a| a.to_string()).collect();
    assert_eq!(actual, vec!["ip link set tva1b2c3d4 type bridge_slave isolated on"]);
}

#[test]
fn endpoint_without_completion_mark_is_configured_again() {
    let desired = host(vec![with_endpoint(network(100, 1))]);
    let mut kernel = converged(&desired);
    kernel.links.get_mut("tva1b2c3d4").unwrap().alias = None;
    let actions = plan(&desired, &kernel);
    assert_eq!(actions.len(), 1);
    assert!(matches!(actions[0], tessera_dataplane::KernelOp::ContainerIfaceConfigure { .. }));
}

#[test]
fn vxlan_device_with_wrong_local_address_is_made_again_with_its_entries() {
    let desired = host(vec![with_remote(with_endpoint(network(100, 1)))]);
    let mut kernel = converged(&desired);
    if let tessera_dataplane::observed::LinkKind::Vxlan(v) = &mut kernel.links.get_mut("tx100").unwrap().kind {
        v.local = Some("10.99.0.9".parse().unwrap());
    }
    check_against("vxlan_recreated", &desired, &kernel);
}

// ---- policies: route leaks, pair zones, programs ----

mod policies {
    use super::*;
    use tessera_dataplane::{PairPolicy, PairWatch, PairZone};
    use tessera_model::{Network, Policy, ProjectName, Rule, Subnet};
    use tessera_policy::Compiler;

    fn model_net(id: u128, name: &str, vni: u32, cidrs: &[&str], policies: &[u128]) -> Network {
        Network {
            domain: None,
            snat: None,
            id: Uuid::from_u128(id),
            fq_name: format!("default-domain:admin:{name}").parse().unwrap(),
            vni: Vni::new(vni).unwrap(),
            subnets: cidrs
                .iter()
                .map(|c| Subnet { cidr: c.parse().unwrap(), gateway: None, pools: vec![], dns_servers: vec![] })
                .collect(),
            import_targets: vec![],
            export_targets: vec![],
            shared: false,
            shared_with: vec![],
            external: false,
            policies: policies.iter().map(|p| Uuid::from_u128(*p)).collect(),
            labels: Default::default(),
        }
    }

    fn model_policy(id: u128, rules: &[&str]) -> Policy {
        Policy {
            id: Uuid::from_u128(id),
            fq_name: format!("default-domain:admin:p{id}").parse().unwrap(),
            rules: rules.iter().map(|r| Rule::parse("r", r, &ProjectName::default_project()).unwrap()).collect(),
        }
    }

    /// red (VNI 100, 10.0.0.0/24, an endpoint here) and green (VNI 200,
    /// 10.2.0.0/24, an endpoint on 10.99.0.2), connected by `rules`
    /// attached to both; `None`: no policy at all.
    fn connected(rules: Option<&[&str]>) -> DesiredHost {
        let policies: Vec<Policy> = rules.map(|r| vec![model_policy(9, r)]).unwrap_or_default();
        let attached: Vec<u128> = policies.iter().map(|_| 9).collect();
        let nets =
            vec![model_net(1, "red", 100, &["10.0.0.0/24"], &attached), model_net(2, "green", 200, &["10.2.0.0/24"], &attached)];
        let c = Compiler::new(&nets, &policies);
        let mut red = network(100, 1);
        red.subnets.truncate(1);
        red.local.push(endpoint(EP_A, "02:00:00:00:00:0a", &["10.0.0.2/24"], "/run/netns/c1"));
        let mut green = network(200, 2);
        green.subnets =
            vec![DesiredSubnet { dns: vec![], cidr: "10.2.0.0/24".parse().unwrap(), gateway: Some("10.2.0.1".parse().unwrap()) }];
        green.remote.push(remote("10.2.0.3", "10.99.0.2"));
        let (r, g) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let mut d = host(vec![]);
        if c.topology().bidirectional(r, g) {
            red.imports = vec![green.vni];
            green.imports = vec![red.vni];
            d.pair_zones.push(PairZone { a: red.vni, b: green.vni, zone: 3 });
            for (s, dst, sv, dv) in [(r, g, red.vni, green.vni), (r, r, red.vni, red.vni)] {
                let prog = c.program(s, dst).unwrap();
                if !prog.is_pass_all() {
                    d.policies.push(PairPolicy { src: sv, dst: dv, lists: prog.lists });
                }
            }
            // green has no endpoint here: its flows to red arrive through the tunnel.
            d.watches.push(PairWatch { src: green.vni, dst: red.vni, fingerprint: c.fingerprint(g, r).unwrap() });
            d.networks = vec![red, green];
        } else {
            d.networks = vec![red];
        }
        d
    }

    const WEB: &[&str] = &["pass tcp any any <> any 80", "pass icmp any any <> any any"];

    #[test]
    fn a_policy_connects_two_networks() {
        check("policy_connects_two_networks", &connected(None), &connected(Some(WEB)));
    }

    #[test]
    fn changing_a_pass_rule_changes_two_elements_and_flushes_the_pair_zone() {
        check(
            "policy_pass_rule_changed",
            &connected(Some(WEB)),
            &connected(Some(&["pass tcp any any <> any 8080", "pass icmp any any <> any any"])),
        );
    }

    /// The state of a host that enforces the pair (and watches nothing).
    fn enforcing(rules: Option<&[&str]>) -> DesiredHost {
        let mut d = connected(rules);
        d.watches.clear();
        d
    }

    #[test]
    fn adding_a_pass_rule_flushes_nothing_where_the_pair_is_enforced() {
        let wider: &[&str] = &["pass tcp any any <> any 80", "pass icmp any any <> any any", "pass udp any any <> any 53"];
        let actions = plan(&enforcing(Some(wider)), &converged(&enforcing(Some(WEB))));
        assert!(!actions.is_empty());
        assert!(
            !actions.iter().any(|a| matches!(a, tessera_dataplane::KernelOp::ConntrackZoneFlush { .. })),
            "widening must not cut running flows: {actions:#?}"
        );
    }

    #[test]
    fn adding_a_deny_rule_in_front_flushes_the_pair_zone() {
        let narrower: &[&str] = &["deny tcp any any <> any 22", "pass tcp any any <> any 80", "pass icmp any any <> any any"];
        let actions = plan(&enforcing(Some(narrower)), &converged(&enforcing(Some(WEB))));
        assert!(actions.iter().any(|a| matches!(a, tessera_dataplane::KernelOp::ConntrackZoneFlush { zone: 3 })), "{actions:#?}");
    }

    #[test]
    fn detaching_the_policy_removes_leaks_programs_and_flows() {
        check("policy_detached", &connected(Some(WEB)), &connected(None));
    }

    #[test]
    fn any_change_flushes_a_watched_pair() {
        let wider: &[&str] = &["pass tcp any any <> any 80", "pass icmp any any <> any any", "pass udp any any <> any 53"];
        let actions = plan(&connected(Some(wider)), &converged(&connected(Some(WEB))));
        assert!(actions.iter().any(|a| matches!(a, tessera_dataplane::KernelOp::ConntrackZoneFlush { zone: 3 })), "{actions:#?}");
    }

    #[test]
    fn a_converged_policy_plans_nothing() {
        let d = connected(Some(WEB));
        assert_eq!(plan(&d, &converged(&d)), vec![]);
    }
}

// ---- external access: a gateway's uplink, translations, the way out ----

mod external {
    use super::*;
    use tessera_dataplane::desired::{DesiredUplink, Egress, EgressVia, ExternalAddress, ExternalKind};

    fn gateway_host(carries: bool) -> DesiredHost {
        let mut net = with_remote(network(100, 1));
        let via = if carries {
            EgressVia::Uplink {
                ifname: "eth1".into(),
                gateways: vec!["203.0.113.1".parse().unwrap(), "2001:db8:ff::1".parse().unwrap()],
            }
        } else {
            EgressVia::Host("10.99.0.5".parse().unwrap())
        };
        net.egress = Some(Egress { external: Vni::new(50).unwrap(), v4: true, v6: true, via });
        let vni = net.vni;
        let mut h = host(vec![net]);
        let addresses = if carries {
            vec![
                ExternalAddress {
                    vni,
                    address: "203.0.113.10".parse().unwrap(),
                    kind: ExternalKind::Floating { fixed: "10.0.0.3".parse().unwrap() },
                },
                ExternalAddress { vni, address: "2001:db8:ff::10".parse().unwrap(), kind: ExternalKind::Snat },
            ]
        } else {
            vec![]
        };
        h.uplinks = vec![DesiredUplink { ifname: "eth1".into(), external: Vni::new(50).unwrap(), slice: 1, addresses }];
        h
    }

    #[test]
    fn a_gateway_takes_a_network_over_from_another() {
        check("gateway_takes_over", &gateway_host(false), &gateway_host(true));
    }

    #[test]
    fn a_gateway_hands_a_network_over() {
        check("gateway_hands_over", &gateway_host(true), &gateway_host(false));
    }

    #[test]
    fn a_converged_gateway_plans_nothing() {
        for carries in [false, true] {
            let desired = gateway_host(carries);
            let actual = plan(&desired, &converged(&desired));
            assert!(actual.is_empty(), "{actual:#?}");
        }
    }
}

// ---- service chains: steering to service instances, service ports ----

mod steering {
    use super::*;
    use tessera_dataplane::desired::{DesiredSteer, SteerTarget};
    use tessera_dataplane::KernelOp;

    const SVC: &str = "c1c2c3c4-0000-4000-8000-00000000000c";

    /// red (VNI 100: a client here, a service instance's port 10.0.0.10
    /// here and another instance, 10.0.0.3, on 10.99.0.2) and blue (VNI
    /// 200, 10.2.0.0/24 and 2001:db8:2::/64: the servers).
    fn two_networks() -> Vec<DesiredNetwork> {
        let mut red = with_remote(with_endpoint(network(100, 1)));
        let mut svc = endpoint(SVC, "02:00:00:00:00:0c", &["10.0.0.10/24", "2001:db8::10/64"], "/run/netns/fw");
        svc.service = true;
        red.local.push(svc);
        let mut blue = network(200, 2);
        blue.subnets = vec![
            DesiredSubnet { dns: vec![], cidr: "10.2.0.0/24".parse().unwrap(), gateway: Some("10.2.0.1".parse().unwrap()) },
            DesiredSubnet { dns: vec![], cidr: "2001:db8:2::/64".parse().unwrap(), gateway: None },
        ];
        vec![red, blue]
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
            protocol: Some(6),
            src_ports: vec![],
            dst_ports: vec![(80, 80)],
            reverse,
            skip_ports: vec!["tvc1c2c3c4".into()],
            targets,
        }
    }

    /// Red's clients towards blue's servers go through the instances
    /// 10.0.0.10 (here) and 10.0.0.3 (on 10.99.0.2); IPv6 through the one
    /// here; the answers in blue through an instance on 10.99.0.2.
    fn steered(mut h: DesiredHost) -> DesiredHost {
        let (local, remote) = (target("10.0.0.10", "tb100"), target("10.0.0.3", "tx100"));
        h.steering = vec![
            steer(100, "fw left", "10.0.0.0/24", "10.2.0.0/24", false, vec![local, remote]),
            steer(100, "fw left", "2001:db8::/64", "2001:db8:2::/64", false, vec![target("2001:db8::10", "tb100")]),
            steer(200, "fw right", "10.2.0.0/24", "10.0.0.0/24", true, vec![target("10.2.0.9", "tx200")]),
        ];
        h.steering[2].skip_ports.clear();
        h
    }

    fn lines(actions: &[KernelOp]) -> Vec<String> {
        actions.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn steering_is_planned() {
        check("steering_added", &host(two_networks()), &steered(host(two_networks())));
    }

    #[test]
    fn steering_that_goes_leaves_nothing_behind() {
        check("steering_removed", &steered(host(two_networks())), &host(two_networks()));
    }

    #[test]
    fn converged_steering_plans_nothing() {
        let d = steered(host(two_networks()));
        assert_eq!(plan(&d, &converged(&d)), vec![]);
    }

    #[test]
    fn targets_are_numbered_host_wide_in_order() {
        let d = steered(host(two_networks()));
        assert_eq!(d.steer_first_targets(), vec![0, 2, 3]);
        let actual = lines(&plan(&d, &converged(&host(two_networks()))));
        let rules: Vec<&String> = actual.iter().filter(|a| a.contains("rule add")).collect();
        assert_eq!(
            rules,
            [
                "ip rule add fwmark 0x8000000/0x800ffff lookup 134217728 pref 995",
                "ip rule add fwmark 0x8000001/0x800ffff lookup 134217729 pref 995",
                "ip rule add fwmark 0x8000003/0x800ffff lookup 134217731 pref 995",
                "ip -6 rule add fwmark 0x8000002/0x800ffff lookup 134217730 pref 995",
            ]
        );
        let steer = actual.iter().find(|a| a.starts_with("nft add chain inet tessera_policy steer")).unwrap();
        for offset in ["offset 0x28000000 ", "meta mark set 0x28000002 ", "meta mark set 0x28000003 "] {
            assert!(steer.contains(offset), "{offset:?} in {steer}");
        }
    }

    #[test]
    fn a_target_that_changes_is_replaced_in_place() {
        let before = steered(host(two_networks()));
        let mut after = before.clone();
        after.steering[0].targets[1] = target("10.0.0.4", "tx100");
        let actual = lines(&plan(&after, &converged(&before)));
        assert_eq!(actual, ["ip route replace default via 10.0.0.4 dev tx100 onlink table 134217729"], "{actual:#?}");
    }

    #[test]
    fn a_steering_without_instances_drops_and_routes_nothing() {
        let mut closed = steered(host(two_networks()));
        closed.steering.truncate(1);
        closed.steering[0].targets.clear();
        let actual = lines(&plan(&closed, &converged(&host(two_networks()))));
        assert!(!actual.iter().any(|a| a.starts_with("ip ")), "{actual:#?}");
        let steer = actual.iter().find(|a| a.starts_with("nft add chain inet tessera_policy steer")).unwrap();
        assert!(
            steer.ends_with("counter drop comment \"fw left: no healthy instance\"; add rule inet tessera_policy steer return")
        );
    }

    #[test]
    fn a_service_port_sends_any_address_with_its_mac_and_its_namespace_forwards() {
        let actual = lines(&plan(&host(two_networks()), &converged(&host(vec![]))));
        assert!(actual.contains(&"nft add element bridge tessera svcmac { \"tvc1c2c3c4\" . 02:00:00:00:00:0c }".to_string()));
        let svc: Vec<&String> = actual.iter().filter(|a| a.contains("sysctl -w net.ipv4.conf.all.rp_filter=0")).collect();
        assert_eq!(svc.len(), 1, "only the service port's namespace: {actual:#?}");
        assert!(svc[0].starts_with("nsenter --net=/run/netns/fw "), "{}", svc[0]);
        for want in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1", "net.ipv4.conf.eth0.rp_filter=0"] {
            assert!(svc[0].contains(want), "{want} in {}", svc[0]);
        }
    }

    #[test]
    fn an_endpoint_that_becomes_a_service_port_is_configured_again() {
        let mut plain = two_networks();
        plain[0].local[1].service = false;
        let actual = lines(&plan(&host(two_networks()), &converged(&host(plain))));
        assert_eq!(actual.len(), 2, "{actual:#?}");
        assert!(actual[0].starts_with("nft add element bridge tessera svcmac"));
        assert!(actual[1].starts_with("nsenter --net=/run/netns/fw") && actual[1].contains("rp_filter=0"));
    }

    #[test]
    fn steering_is_validated() {
        let bad = |change: fn(&mut DesiredSteer)| {
            let mut d = steered(host(two_networks()));
            change(&mut d.steering[0]);
            d.validate().unwrap_err().field
        };
        assert_eq!(bad(|s| s.vni = Vni::new(300).unwrap()), "steering[0].vni");
        assert_eq!(bad(|s| s.dst = vec!["2001:db8:2::/64".parse().unwrap()]), "steering[0].dst");
        assert_eq!(bad(|s| s.targets[0].dev = "tb200".into()), "steering[0].targets[0]");
        assert_eq!(bad(|s| s.targets[0].address = "2001:db8::10".parse().unwrap()), "steering[0].targets[0]");
        assert_eq!(bad(|s| s.src.clear()), "steering[0].src");
        assert_eq!(bad(|s| s.dst_ports = vec![(90, 80)]), "steering[0].dst_ports");
        assert_eq!(bad(|s| s.skip_ports = vec!["a b".into()]), "steering[0].skip_ports[0]");
        steered(host(two_networks())).validate().unwrap();
    }
}
