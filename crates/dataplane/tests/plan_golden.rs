//! Golden tests of the planner: each case starts from the kernel state a
//! previous desired state converged to (computed by running the plan through
//! the fake data plane's kernel model), plans a new desired state, and
//! compares the actions, one `Display` per line, with
//! `tests/golden/<case>.txt`. `UPDATE_GOLDEN=1 cargo test` rewrites the files.

use std::net::IpAddr;
use std::path::PathBuf;

use tessera_dataplane::{
    plan, reconcile, DesiredHost, DesiredNetwork, DesiredSubnet, FakeDataplane, LocalEndpoint, Observed, RemoteEndpoint,
};
use tessera_model::{MacAddr, Vni};
use uuid::Uuid;

const EP_A: &str = "a1b2c3d4-0000-4000-8000-00000000000a";
const EP_B: &str = "b1b2c3d4-0000-4000-8000-00000000000b";

fn host(networks: Vec<DesiredNetwork>) -> DesiredHost {
    DesiredHost { underlay_ip: "10.99.0.1".parse().unwrap(), underlay_ifname: "eth0".into(), underlay_mtu: 1500, networks }
}

fn network(vni: u32, zone: u16) -> DesiredNetwork {
    DesiredNetwork {
        vni: Vni::new(vni).unwrap(),
        zone,
        subnets: vec![
            DesiredSubnet { cidr: "10.0.0.0/24".parse().unwrap(), gateway: Some("10.0.0.1".parse().unwrap()) },
            DesiredSubnet { cidr: "2001:db8::/64".parse().unwrap(), gateway: Some("2001:db8::1".parse().unwrap()) },
        ],
        local: vec![],
        remote: vec![],
    }
}

fn endpoint(id: &str, mac: &str, ips: &[&str], netns: &str) -> LocalEndpoint {
    LocalEndpoint {
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
    let actual: String = plan(to, &converged(from)).iter().map(|a| format!("{a}\n")).collect();
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
    assert_eq!(actual[0], "nft -f tessera-skeleton-tessera-v1 # inet tessera, bridge tessera");
    assert_eq!(actual.len(), 1 + 2 + 3, "skeleton, two zones, three port elements: {actual:#?}");
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
fn endpoint_without_completion_mark_is_configured_again() {
    let desired = host(vec![with_endpoint(network(100, 1))]);
    let mut kernel = converged(&desired);
    kernel.links.get_mut("tva1b2c3d4").unwrap().alias = None;
    let actions = plan(&desired, &kernel);
    assert_eq!(actions.len(), 1);
    assert!(matches!(actions[0], tessera_dataplane::Action::ContainerIfaceConfigure { .. }));
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

fn check_against(case: &str, desired: &DesiredHost, kernel: &Observed) {
    let actual: String = plan(desired, kernel).iter().map(|a| format!("{a}\n")).collect();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(format!("{case}.txt"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap();
    assert_eq!(actual, expected, "plan for {case} differs from {}", path.display());
}
