use std::path::PathBuf;

use uuid::Uuid;

use super::*;
use crate::ct_events::FiveTuple;
use crate::desired::{DesiredNetwork, DesiredSteer, LocalEndpoint, RemoteEndpoint};

fn vni(v: u32) -> Vni {
    Vni::new(v).unwrap()
}

fn endpoint(n: u8, ips: &[&str], service: bool) -> LocalEndpoint {
    LocalEndpoint {
        id: Uuid::from_u128(u128::from(n) << 96),
        mac: MacAddr([2, 0, 0, 0, 0, n]),
        ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
        netns: PathBuf::from("/run/netns/c"),
        ifname: "eth0".into(),
        dhcp: false,
        own_table: false,
        service,
    }
}

fn network(v: u32, zone: u16, local: Vec<LocalEndpoint>, remote: &[(&str, &str)]) -> DesiredNetwork {
    DesiredNetwork {
        vni: vni(v),
        zone,
        subnets: vec![],
        local,
        remote: remote
            .iter()
            .map(|(ip, host)| RemoteEndpoint { ip: ip.parse().unwrap(), host_underlay: host.parse().unwrap() })
            .collect(),
        imports: vec![],
        egress: None,
        domain: None,
    }
}

/// A service chain that steers network `v`'s traffic.
fn steer(v: u32) -> DesiredSteer {
    DesiredSteer {
        vni: vni(v),
        label: "fw left".into(),
        src: vec![],
        dst: vec![],
        protocol: None,
        src_ports: vec![],
        dst_ports: vec![],
        reverse: false,
        skip_ports: vec![],
        targets: vec![],
    }
}

fn host(networks: Vec<DesiredNetwork>) -> DesiredHost {
    DesiredHost {
        underlay_ip: "10.99.0.1".parse().unwrap(),
        underlay_ifname: "eth0".into(),
        underlay_mtu: 1500,
        peers: vec![],
        networks,
        pair_zones: vec![],
        policies: vec![],
        watches: vec![],
        uplinks: vec![],
        published: vec![],
        steering: vec![],
    }
}

#[test]
fn endpoints_become_sources_and_destinations_of_their_network() {
    let d = host(vec![network(
        100,
        1,
        vec![endpoint(1, &["10.0.0.2/24", "2001:db8::2/64"], false), endpoint(2, &["10.0.0.9/24"], true)],
        &[("10.0.0.3", "10.99.0.2"), ("2001:db8::3", "10.99.0.2")],
    )]);
    let t = tables(&d).unwrap();
    let port = host_veth_name(Uuid::from_u128(1 << 96));
    assert_eq!(
        t.sources.iter().cloned().collect::<Vec<_>>(),
        ["10.0.0.2", "2001:db8::2"]
            .map(|a| Source { port: port.clone(), addr: a.parse().unwrap(), mac: MacAddr([2, 0, 0, 0, 0, 1]), vni: vni(100) })
            .to_vec(),
        "both families; a service instance's port is not a source"
    );
    let local = Place { vni: vni(100), at: At::Local { port: port.clone(), mac: MacAddr([2, 0, 0, 0, 0, 1]) } };
    let remote = Place { vni: vni(100), at: At::Remote { underlay: "10.99.0.2".parse().unwrap() } };
    assert_eq!(
        t.destinations.iter().map(|((v, a), p)| (v.get(), a.to_string(), p.clone())).collect::<Vec<_>>(),
        vec![
            (100, "10.0.0.2".into(), local.clone()),
            (100, "10.0.0.3".into(), remote.clone()),
            (100, "2001:db8::2".into(), local),
            (100, "2001:db8::3".into(), remote),
        ]
    );
    assert_eq!(t.ports.iter().cloned().collect::<Vec<_>>(), vec![port]);
    assert_eq!(t.tunnels.get(&vni(100)).map(String::as_str), Some("tx100"));
    assert_eq!(t.zones.get(&1), Some(&vec![vni(100)]));
}

#[test]
fn an_imported_network_is_reached_in_its_own_vni_and_the_pair_zone_admits_both() {
    let mut d = host(vec![
        network(100, 1, vec![endpoint(1, &["10.0.0.2/24"], false)], &[]),
        network(200, 2, vec![], &[("10.1.0.5", "10.99.0.2")]),
    ]);
    d.networks[0].imports = vec![vni(200)];
    d.networks[1].imports = vec![vni(100)];
    d.pair_zones.push(crate::desired::PairZone { a: vni(100), b: vni(200), zone: 9 });
    let t = tables(&d).unwrap();
    let remote = Place { vni: vni(200), at: At::Remote { underlay: "10.99.0.2".parse().unwrap() } };
    assert_eq!(t.destinations.get(&(vni(100), "10.1.0.5".parse().unwrap())), Some(&remote), "through the import");
    assert_eq!(t.destinations.get(&(vni(200), "10.1.0.5".parse().unwrap())), Some(&remote));
    assert_eq!(t.destinations.get(&(vni(200), "10.0.0.2".parse().unwrap())).map(|p| p.vni), Some(vni(100)));
    assert_eq!(t.zones.get(&9), Some(&vec![vni(100), vni(200)]));
    let mut ev = event(CtEventKind::New, 9, 6, Some(TCP_ESTABLISHED), status::ASSURED);
    ev.tuple.dst = "10.1.0.5".parse().unwrap();
    let Admission::Admit(keys) = admission(&ev, &t.zones) else { panic!("not admitted") };
    assert_eq!(keys.len(), 4, "each direction under each network: {keys:?}");
}

#[test]
fn a_network_with_service_chains_keeps_the_kernel_path() {
    let mut d = host(vec![network(100, 1, vec![endpoint(1, &["10.0.0.2/24"], false)], &[]), network(200, 2, vec![], &[])]);
    d.steering.push(steer(100));
    let t = tables(&d).unwrap();
    assert!(t.sources.is_empty() && t.destinations.is_empty() && t.ports.is_empty());
    assert!(!t.zones.contains_key(&1), "its flows are never admitted");
    assert_eq!(t.zones.get(&2), Some(&vec![vni(200)]));
    assert!(t.kernel_only.contains_key(&vni(100)));
    assert!(t.tunnels.contains_key(&vni(100)), "what arrives for it still reaches its tunnel");
}

#[test]
fn an_ipv6_underlay_is_refused_with_its_reason() {
    let mut d = host(vec![]);
    d.underlay_ip = "2001:db8:99::1".parse().unwrap();
    assert!(tables(&d).unwrap_err().to_string().contains("IPv6"));
}

fn event(kind: CtEventKind, zone: u16, protocol: u8, tcp_state: Option<u8>, status: u32) -> CtEvent {
    CtEvent {
        kind,
        id: 1,
        zone,
        tuple: FiveTuple {
            protocol,
            src: "10.0.0.2".parse().unwrap(),
            dst: "10.0.0.3".parse().unwrap(),
            sport: 40000,
            dport: 5201,
        },
        orig: (0, 0),
        reply: (0, 0),
        start_ns: None,
        tcp_state,
        status,
    }
}

/// A TCP flow of network 100 from 10.0.0.2:40000 to 10.0.0.3:5201.
fn iperf_flow() -> FlowKey {
    FlowKey {
        vni: vni(100),
        src: "10.0.0.2".parse().unwrap(),
        dst: "10.0.0.3".parse().unwrap(),
        sport: 40000,
        dport: 5201,
        protocol: 6,
    }
}

#[test]
fn assured_untranslated_flows_of_a_fast_network_are_admitted_both_ways() {
    let zones = BTreeMap::from([(7, vec![vni(100)])]);
    let key = iperf_flow();
    let both = vec![key, key.reversed()];
    let tcp = |state, st| admission(&event(CtEventKind::New, 7, 6, Some(state), st), &zones);
    assert_eq!(tcp(TCP_ESTABLISHED, status::ASSURED), Admission::Admit(both.clone()));
    assert_eq!(tcp(TCP_ESTABLISHED, 0), Admission::Remove(both.clone()), "not assured yet");
    assert_eq!(tcp(2, status::ASSURED), Admission::Remove(both.clone()), "SYN_RECV");
    assert_eq!(tcp(5, status::ASSURED), Admission::Remove(both.clone()), "closing");
    assert_eq!(tcp(TCP_ESTABLISHED, status::ASSURED | status::DST_NAT), Admission::Remove(both.clone()), "translated");
    assert_eq!(admission(&event(CtEventKind::Destroy, 7, 6, None, status::ASSURED), &zones), Admission::Remove(both));
    let udp = admission(&event(CtEventKind::New, 7, 17, None, status::ASSURED), &zones);
    assert!(matches!(&udp, Admission::Admit(k) if k[0].protocol == 17));
    assert_eq!(admission(&event(CtEventKind::New, 8, 6, Some(3), status::ASSURED), &zones), Admission::Ignore, "other zone");
    assert_eq!(admission(&event(CtEventKind::New, 7, 1, None, status::ASSURED), &zones), Admission::Ignore, "ICMP");
}

#[test]
fn an_admission_read_before_a_flush_of_its_network_is_ignored() {
    let key = iperf_flow();
    let admit = Admission::Admit(vec![key, key.reversed()]);
    let read_from = std::time::Instant::now();
    let flushed = HashMap::from([(vni(100), read_from + std::time::Duration::from_millis(5))]);
    assert_eq!(admit.clone().unless_flushed_since(&flushed, read_from), Admission::Ignore, "read before the flush");
    let later = read_from + std::time::Duration::from_millis(10);
    assert_eq!(admit.clone().unless_flushed_since(&flushed, later), admit, "read after the flush");
    let other = HashMap::from([(vni(200), later)]);
    assert_eq!(admit.clone().unless_flushed_since(&other, read_from), admit, "another network was flushed");
    let removal = Admission::Remove(vec![key]);
    assert_eq!(removal.clone().unless_flushed_since(&flushed, read_from), removal, "removals always apply");
}

#[test]
fn keys_and_values_have_the_programs_layout() {
    let key = FlowKey {
        vni: vni(0x0001_0203),
        src: "10.0.0.2".parse().unwrap(),
        dst: "10.0.0.3".parse().unwrap(),
        sport: 0x1234,
        dport: 80,
        protocol: 6,
    };
    let b = bytes::flow_key(&key);
    assert_eq!(&b[4..20], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 2], "IPv4 mapped");
    assert_eq!(&b[36..41], &[0x12, 0x34, 0, 80, 6]);
    assert_eq!(bytes::parse_flow_key(&b), Some(key));
    let v6 = FlowKey { src: "2001:db8::2".parse().unwrap(), dst: "2001:db8::3".parse().unwrap(), ..key };
    assert_eq!(bytes::parse_flow_key(&bytes::flow_key(&v6)), Some(v6));
    let v = bytes::dst_value(7, "10.99.0.2".parse().unwrap(), remote_mac("10.99.0.2".parse().unwrap()), vni(200));
    assert_eq!(&v[4..8], &[10, 99, 0, 2]);
    assert_eq!(&v[8..14], &[0x0e, 0, 10, 99, 0, 2]);
    assert_eq!(&v[16..], &200u32.to_ne_bytes());
    let c = bytes::config(3, "10.99.0.1".parse().unwrap(), 24);
    assert_eq!(&c[8..14], &[0x0e, 0, 10, 99, 0, 1]);
    assert_eq!(c[14], 24, "the underlay prefix");
    let e = bytes::encap_value(vni(200), 9);
    assert_eq!((&e[..4], &e[4..]), (&200u32.to_ne_bytes()[..], &9u32.to_ne_bytes()[..]));
    let mut counts = [0u8; 24];
    counts[..8].copy_from_slice(&5u64.to_ne_bytes());
    counts[8..16].copy_from_slice(&700u64.to_ne_bytes());
    assert_eq!(bytes::flow_counts(&counts), (5, 700));
    assert!(!bytes::flow_closing(&counts));
    counts[16..20].copy_from_slice(&1u32.to_ne_bytes());
    assert!(bytes::flow_closing(&counts), "the program's `closing`");
    assert_eq!(bytes::flow_counts(&counts), (5, 700));
}

/// The tables of a host with a network of its own endpoints and remote
/// ones, a network it imports (and shares a zone with), and a network a
/// service chain steers; compared with `tests/golden/fastpath_tables.txt`
/// (`UPDATE_GOLDEN=1` rewrites it).
#[test]
fn golden_tables() {
    let mut d = host(vec![
        network(100, 1, vec![endpoint(1, &["10.0.0.2/24", "2001:db8::2/64"], false)], &[("10.0.0.3", "10.99.0.2")]),
        network(200, 2, vec![endpoint(2, &["10.1.0.2/24"], false)], &[("10.1.0.5", "10.99.0.3")]),
        network(300, 3, vec![endpoint(3, &["10.2.0.2/24"], false)], &[]),
    ]);
    d.networks[0].imports = vec![vni(200)];
    d.networks[1].imports = vec![vni(100)];
    d.pair_zones.push(crate::desired::PairZone { a: vni(100), b: vni(200), zone: 9 });
    d.steering.push(steer(300));
    let actual = tables(&d).unwrap().to_string();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/fastpath_tables.txt");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1 to create it)", path.display()));
    assert_eq!(actual, expected, "the fast path's tables differ from {}", path.display());
}

#[test]
fn counts_carried_are_added_to_their_connection_both_ways() {
    let zones = BTreeMap::from([(7, vec![vni(100)])]);
    let key = iperf_flow();
    let live = |counts, id| Carried { counts, owner: Owner { id, start_ns: None }, retired_ns: None };
    let counts = HashMap::from([(key, vec![live((10, 15_000), Some(1))]), (key.reversed(), vec![live((5, 300), None)])]);
    let mut entries = vec![CtEvent { orig: (3, 180), reply: (2, 120), ..event(CtEventKind::New, 7, 6, Some(3), 0) }];
    add_counts(&mut entries, &zones, &counts);
    assert_eq!((entries[0].orig, entries[0].reply), ((13, 15_180), (7, 420)), "an earlier agent's entry (no id) counts too");
    let mut other_zone = vec![event(CtEventKind::New, 8, 6, Some(3), 0)];
    add_counts(&mut other_zone, &zones, &counts);
    assert_eq!(other_zone[0].orig, (0, 0));
}

#[test]
fn a_connection_that_reuses_a_five_tuple_gets_none_of_its_predecessors_counts() {
    let zones = BTreeMap::from([(7, vec![vni(100)])]);
    let key = iperf_flow();
    // Connection 1 (confirmed at 40,000) was retired at 50,000; its
    // successor has its id (the kernel reused its memory), and the fast
    // path knows only that of what it carries.
    let first = Owner { id: Some(1), start_ns: Some(40_000) };
    let retired = Carried { counts: (100, 1_000_000), owner: first, retired_ns: Some(50_000) };
    let late = Carried { counts: (7, 700), owner: Owner { id: Some(1), start_ns: None }, retired_ns: Some(65_000) };
    let live = Carried { counts: (4, 400), owner: Owner { id: Some(1), start_ns: Some(45_000) }, retired_ns: None };
    let connection = |id, start_ns| CtEvent { id, start_ns, ..event(CtEventKind::New, 7, 6, Some(3), 0) };
    let mut entries = vec![connection(1, Some(40_000))];
    add_counts(&mut entries, &zones, &HashMap::from([(key, vec![retired])]));
    assert_eq!(entries[0].orig, (100, 1_000_000), "the retired connection's own entry");
    let counts = HashMap::from([(key, vec![retired, late, live])]);
    let mut entries = vec![connection(1, Some(45_000)), connection(1, Some(70_000))];
    add_counts(&mut entries, &zones, &counts);
    assert_eq!(entries[0].orig, (11, 1_100), "the next: what it carries, and what was retired after it began");
    assert_eq!(entries[1].orig, (0, 0), "confirmed after every retirement, and not the live one");
}

#[test]
fn owners_are_told_apart_only_by_what_is_known_of_both() {
    let known = Owner { id: Some(1), start_ns: Some(10) };
    assert!(known.may_be(&Owner { id: Some(1), start_ns: None }));
    assert!(known.may_be(&Owner::default()));
    assert!(!known.may_be(&Owner { id: Some(1), start_ns: Some(11) }), "the id again, another connection");
    assert!(!known.may_be(&Owner { id: Some(2), start_ns: None }));
    assert_eq!(Owner { id: Some(1), start_ns: None }.with(&known), known);
}

#[test]
fn the_programs_take_the_ports_this_crate_tunnels_on() {
    let source = include_str!("../../bpf/fastpath.bpf.c");
    let define = format!("\n#define FASTPATH_PORT {FASTPATH_PORT}\n");
    assert!(source.contains(&define), "bpf/fastpath.bpf.c must define FASTPATH_PORT as {FASTPATH_PORT}");
    let define = format!("\n#define VXLAN_PORT {}\n", crate::desired::VXLAN_PORT);
    assert!(source.contains(&define), "bpf/fastpath.bpf.c must define VXLAN_PORT as the networks' port");
}
