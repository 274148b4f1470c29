//! From the mirrored intent to the desired data plane of this host (pure).
//!
//! A network is *local* on a host while at least one of its endpoints lives
//! there. Its VRF then holds the network's subnets and, for every endpoint of
//! the network on another *known* host, a route through that host's VTEP; an
//! endpoint whose host is no longer registered contributes nothing, so
//! removing a host drops its routes everywhere.
//!
//! Policies and route targets (compiled by `tessera-policy`):
//! - a network whose routes a local network imports is *present* too, even
//!   without local endpoints: its VXLAN device carries the traffic towards
//!   it, and its bridge holds the route to its subnets;
//! - every present network imports the present networks the topology says
//!   it imports (route leaking; overlapping subnets are never leaked);
//! - two present networks that import each other share a conntrack zone for
//!   the flows between them (after the networks' own zones, probing from a
//!   hash of the pair, so the same networks always get the same zones);
//! - every ordered pair of networks whose flows start here (a local network
//!   to itself or to a network it imports) gets its compiled program, unless
//!   the program passes everything; flows that start elsewhere are decided
//!   there;
//! - every pair whose flows arrive here through a tunnel (a present network
//!   without local endpoints to a network it imports) is watched by a
//!   fingerprint of its program's inputs, so that a change ends its flows
//!   here too.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;

use tessera_api::scope::Scope;
use tessera_dataplane::desired::{
    DesiredHost, DesiredNetwork, DesiredSubnet, LocalEndpoint, PairPolicy, PairWatch, PairZone, RemoteEndpoint,
};
use tessera_model::names::host_veth_name;
use tessera_model::watch::Snapshot;
use tessera_model::{Endpoint, Vni};
use tessera_policy::{self, Compiler};
use uuid::Uuid;

/// Interface name inside the container when the owner names none.
pub const DEFAULT_IFNAME: &str = "eth0";

/// This host as the agent was started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostIdentity {
    pub name: String,
    pub underlay_ip: IpAddr,
    pub underlay_ifname: String,
    pub underlay_mtu: u32,
}

/// Local endpoints that cannot be programmed, with the reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Skipped(pub Vec<(Uuid, String)>);

/// Conntrack zones handed out (1 to 65,535; zone 0 is the host's). Taking
/// one probes upwards from a start; when probing meets a crowd, the free
/// zones are listed once and found by range from then on, so taking stays
/// cheap however full the zones are.
struct FreeZones {
    used: BTreeSet<u16>,
    /// Built when a probe first runs long.
    free: Option<BTreeSet<u16>>,
}

/// Probes this long before listing the free zones.
const SHORT_PROBE: u16 = 64;

impl FreeZones {
    fn except(used: &BTreeSet<u16>) -> Self {
        FreeZones { used: used.clone(), free: None }
    }

    /// The first free zone from `start` upwards (wrapping past 0), taken;
    /// `None` when all are.
    fn take(&mut self, start: u16) -> Option<u16> {
        if self.free.is_none() {
            let mut z = start;
            for _ in 0..SHORT_PROBE {
                if z != 0 && self.used.insert(z) {
                    return Some(z);
                }
                z = z.wrapping_add(1);
            }
            self.free = Some((1..=u16::MAX).filter(|z| !self.used.contains(z)).collect());
        }
        let free = self.free.as_mut().expect("listed above");
        let z = *free.range(start..).next().or_else(|| free.iter().next())?;
        free.remove(&z);
        Some(z)
    }
}

/// Conntrack zones for a host's networks: the low 16 bits of the VNI (0
/// becomes 1), probing upwards on collision, assigned in VNI order so the
/// same set of networks always gets the same zones. Networks past the
/// 65,535th get none.
pub fn zones(vnis: &BTreeSet<Vni>) -> BTreeMap<Vni, u16> {
    let mut free = FreeZones::except(&BTreeSet::new());
    vnis.iter().filter_map(|v| free.take((v.get() & 0xffff) as u16).map(|z| (*v, z))).collect()
}

/// Conntrack zones of pairs of networks: from a hash of the pair, probing
/// upwards past zone 0 and the zones in `used`, in pair order. Pairs for
/// which no zone is left get none.
pub fn pair_zones(pairs: &BTreeSet<(Vni, Vni)>, used: &BTreeSet<u16>) -> BTreeMap<(Vni, Vni), u16> {
    let mut free = FreeZones::except(used);
    let mut out = BTreeMap::new();
    for (a, b) in pairs {
        let mut h = tessera_policy::flow::Fnv::new();
        h.bytes(&a.get().to_be_bytes());
        h.bytes(&b.get().to_be_bytes());
        if let Some(z) = free.take((h.finish() & 0xffff) as u16) {
            out.insert((*a, *b), z);
        }
    }
    out
}

/// A local endpoint as the data plane takes it, or why it cannot be: the
/// agent checks again what the controller checked (a store written by hand
/// or by an older version is not trusted), so one bad endpoint is skipped
/// with its reason instead of failing the whole host.
fn local_endpoint(e: &Endpoint) -> Result<LocalEndpoint, String> {
    let netns = match &e.owner.netns {
        Some(ns) if !ns.is_empty() => ns,
        _ => return Err("the endpoint names no network namespace".into()),
    };
    e.owner.check().map_err(|f| f.to_string())?;
    if !e.mac.is_unicast() {
        return Err(format!("its MAC {} is not unicast", e.mac));
    }
    Ok(LocalEndpoint {
        id: e.id,
        mac: e.mac,
        ips: e.ips.clone(),
        netns: PathBuf::from(netns),
        ifname: e.owner.ifname.clone().unwrap_or_else(|| DEFAULT_IFNAME.into()),
        dhcp: e.owner.dhcp,
        own_table: e.owner.own_table || e.owner.service.as_ref().is_some_and(|s| s.role.own_table()),
        service: e.owner.service.is_some(),
    })
}

/// This host's desired data plane and what could not be part of it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostIntent {
    pub desired: DesiredHost,
    pub skipped: Skipped,
    /// Route leaks the intent asks for that were refused (overlapping
    /// subnets), worth a warning.
    pub leak_warnings: Vec<tessera_policy::LeakWarning>,
    /// What of the intent this host cannot program as a whole (no
    /// conntrack zone left for a network or a pair of networks).
    pub errors: Vec<String>,
    /// The endpoints this host needs mirrored ([`scope_of`]).
    pub scope: Scope,
}

/// The endpoints host `me` needs from the controller: those of the
/// networks it programs (`present`: with a local endpoint, imported by
/// one, or behind it as a gateway) and of every service's networks (its
/// chains' instances). A gateway host receives every endpoint: it finds
/// the networks behind it from their endpoints' floating IPs.
pub fn scope_of(snap: &Snapshot, me: &str, present: &BTreeSet<Uuid>) -> Scope {
    if snap.hosts.iter().any(|h| h.name == me && !h.gateways.is_empty()) {
        return Scope::Everything;
    }
    let mut ids = present.clone();
    ids.extend(snap.services.iter().flat_map(|s| [s.left, s.right]));
    Scope::of(ids)
}

/// [`scope_of`] `me` for a snapshot not compiled yet (the one a previous
/// run saved, before the mirror asks the controller for the current one).
pub fn scope(snap: &Snapshot, me: &str) -> Scope {
    let topology = tessera_policy::Topology::compute(&snap.networks, &snap.policies);
    let local: BTreeSet<Uuid> = snap
        .endpoints
        .iter()
        .filter(|e| e.host == me && e.owner.netns.as_ref().is_some_and(|n| !n.is_empty()))
        .map(|e| e.network)
        .collect();
    let present = local.iter().flat_map(|l| std::iter::once(*l).chain(topology.imports(*l))).collect();
    scope_of(snap, me, &present)
}

/// Computes the desired data plane of `me` from `snap`.
pub fn desired_host(snap: &Snapshot, me: &HostIdentity) -> (DesiredHost, Skipped) {
    let intent = host_intent(snap, me);
    (intent.desired, intent.skipped)
}

/// Computes the desired data plane of `me` from `snap`, with the warnings
/// about refused route leaks.
pub fn host_intent(snap: &Snapshot, me: &HostIdentity) -> HostIntent {
    host_intent_cached(snap, me, &mut tessera_policy::ListCache::new(), &mut tessera_policy::Refusals::new())
}

/// [`host_intent`], compiling only the rule lists whose inputs changed since
/// the last call with the same `cache` (an agent keeps one across
/// reconciles: a one-rule change in a 50,000-rule policy then recompiles
/// that policy's lists only). Lists the result does not use leave the cache.
/// `refusals` follows the policies' refusal epochs across calls, so that a
/// watched pair's fingerprint changes only when an edit may refuse flows.
pub fn host_intent_cached(
    snap: &Snapshot,
    me: &HostIdentity,
    cache: &mut tessera_policy::ListCache,
    refusals: &mut tessera_policy::Refusals,
) -> HostIntent {
    let underlay: HashMap<&str, IpAddr> = snap.hosts.iter().map(|h| (h.name.as_str(), h.underlay_ip)).collect();
    let mut by_network: BTreeMap<Uuid, Vec<&Endpoint>> = BTreeMap::new();
    for e in snap.endpoints.iter() {
        by_network.entry(e.network).or_default().push(e);
    }
    let compiler = Compiler::new(&snap.networks, &snap.policies);
    refusals.update(&compiler);
    let topology = compiler.topology();
    let has_local = |id: &Uuid| {
        by_network
            .get(id)
            .is_some_and(|eps| eps.iter().any(|e| e.host == me.name && e.owner.netns.as_ref().is_some_and(|n| !n.is_empty())))
    };
    let local_ids: BTreeSet<Uuid> = snap.networks.iter().map(|n| n.id).filter(has_local).collect();
    let external = crate::egress::external_plan(snap, &me.name);
    let present_ids: BTreeSet<Uuid> =
        local_ids.iter().chain(external.present.iter()).flat_map(|l| std::iter::once(*l).chain(topology.imports(*l))).collect();
    let scope = scope_of(snap, &me.name, &present_ids);
    let mut skipped = Skipped::default();
    let mut veths: BTreeMap<String, Uuid> = BTreeMap::new();
    let mut networks: Vec<DesiredNetwork> = Vec::new();
    for net in &snap.networks {
        let eps = by_network.get(&net.id).map(Vec::as_slice).unwrap_or_default();
        if eps.is_empty() && !present_ids.contains(&net.id) {
            continue;
        }
        let mut local = Vec::new();
        let mut remote = Vec::new();
        let mut seen_ips = BTreeSet::new();
        for e in eps {
            if e.host == me.name {
                let checked = local_endpoint(e).and_then(|l| {
                    if let Some(other) = veths.insert(host_veth_name(l.id), l.id) {
                        return Err(format!("its host interface name {} is that of endpoint {other}", host_veth_name(l.id)));
                    }
                    match l.ips.iter().find(|ip| !seen_ips.insert(ip.addr())) {
                        Some(ip) => Err(format!("its address {ip} is another local endpoint's")),
                        None => Ok(l),
                    }
                });
                match checked {
                    Ok(l) => local.push(l),
                    Err(reason) => skipped.0.push((e.id, reason)),
                }
            } else if let Some(host_underlay) = underlay.get(e.host.as_str()) {
                if *host_underlay == me.underlay_ip {
                    continue;
                }
                remote.extend(e.ips.iter().map(|ip| RemoteEndpoint { ip: ip.addr(), host_underlay: *host_underlay }));
            }
        }
        if !present_ids.contains(&net.id) {
            continue;
        }
        local.sort_by_key(|l| l.id);
        remote.sort_by_key(|r| (r.ip, r.host_underlay));
        let mut imports: Vec<Vni> = topology
            .imports(net.id)
            .filter(|i| present_ids.contains(i))
            .filter_map(|i| compiler.network(i).map(|n| n.vni))
            .collect();
        imports.sort();
        networks.push(DesiredNetwork {
            vni: net.vni,
            zone: 0,
            subnets: net
                .subnets
                .iter()
                .map(|s| DesiredSubnet { cidr: s.cidr, gateway: s.gateway, dns: s.dns_servers.clone() })
                .collect(),
            local,
            remote,
            imports,
            egress: external.egress.get(&net.id).cloned(),
            domain: net.domain.clone(),
        });
    }
    networks.sort_by_key(|n| n.vni);
    let z = zones(&networks.iter().map(|n| n.vni).collect());
    let mut errors = Vec::new();
    networks.retain(|n| match z.get(&n.vni) {
        Some(_) => true,
        None => {
            errors.push(format!("no conntrack zone is left on this host for network VNI {}; it is not programmed", n.vni));
            skipped.0.extend(n.local.iter().map(|l| (l.id, "no conntrack zone is left on this host for its network".into())));
            false
        }
    });
    let present_vnis: BTreeSet<Vni> = networks.iter().map(|n| n.vni).collect();
    for n in &mut networks {
        n.zone = z[&n.vni];
        n.imports.retain(|i| present_vnis.contains(i));
    }

    let id_of: BTreeMap<Vni, Uuid> =
        snap.networks.iter().filter(|n| present_ids.contains(&n.id)).map(|n| (n.vni, n.id)).collect();
    let imports_of = |v: Vni| networks.iter().find(|n| n.vni == v).map(|n| n.imports.as_slice()).unwrap_or_default();
    let mut pairs: BTreeSet<(Vni, Vni)> = BTreeSet::new();
    for n in &networks {
        for i in &n.imports {
            if n.vni < *i && imports_of(*i).contains(&n.vni) {
                pairs.insert((n.vni, *i));
            }
        }
    }
    let used: BTreeSet<u16> = networks.iter().map(|n| n.zone).collect();
    let assigned = pair_zones(&pairs, &used);
    // A pair without a shared zone would see its replies as new flows in
    // the other network's zone: it is not connected on this host (fail closed).
    for (a, b) in pairs.iter().filter(|p| !assigned.contains_key(p)) {
        errors.push(format!(
            "no conntrack zone is left on this host for the networks VNI {a} and {b}; they are not connected here"
        ));
        for n in &mut networks {
            if n.vni == *a {
                n.imports.retain(|i| i != b);
            } else if n.vni == *b {
                n.imports.retain(|i| i != a);
            }
        }
    }
    let shared_zones: Vec<PairZone> = assigned.into_iter().map(|((a, b), zone)| PairZone { a, b, zone }).collect();

    // Both ends judge a flow: this host runs the program of every pair whose
    // flows start here (from a local endpoint) or end here (at a local
    // endpoint, arriving through a tunnel). A pair it only carries is
    // watched, so that a change still ends its flows here.
    let with_endpoints: BTreeSet<Vni> = networks.iter().filter(|n| !n.local.is_empty()).map(|n| n.vni).collect();
    let (mut policies, mut watches) = (Vec::new(), Vec::new());
    for n in &networks {
        let Some(s_id) = id_of.get(&n.vni) else { continue };
        for d in std::iter::once(n.vni).chain(n.imports.iter().copied()) {
            let Some(d_id) = id_of.get(&d) else { continue };
            if !n.local.is_empty() || with_endpoints.contains(&d) {
                let Some(program) = compiler.program_cached(*s_id, *d_id, cache) else { continue };
                if !program.is_pass_all() {
                    policies.push(PairPolicy { src: n.vni, dst: d, lists: program.lists });
                }
            } else if d != n.vni {
                let Some(fingerprint) = compiler.refusal_fingerprint(*s_id, *d_id, refusals) else { continue };
                watches.push(PairWatch { src: n.vni, dst: d, fingerprint });
            }
        }
    }

    let published = crate::egress::published(snap, &networks);
    let steering = crate::chains::steering(snap, &networks, &me.name);
    policies.extend(crate::egress::external_programs(snap, &networks, &compiler, cache));

    let mut peers: Vec<IpAddr> = snap.hosts.iter().map(|h| h.underlay_ip).filter(|ip| *ip != me.underlay_ip).collect();
    peers.sort();
    peers.dedup();
    let desired = DesiredHost {
        underlay_ip: me.underlay_ip,
        underlay_ifname: me.underlay_ifname.clone(),
        underlay_mtu: me.underlay_mtu,
        peers,
        networks,
        pair_zones: shared_zones,
        policies,
        watches,
        uplinks: external
            .uplinks
            .into_iter()
            .map(|mut u| {
                u.addresses.retain(|a| present_vnis.contains(&a.vni));
                u
            })
            .collect(),
        published,
        steering,
    };
    cache.retain_used();
    HostIntent { desired, skipped, leak_warnings: topology.warnings.clone(), errors, scope }
}

/// [`host_intent_cached`] across reconciles: the agent keeps one, so that a
/// change recompiles only the rule lists it touches, and learns when the
/// route-leak warnings change (to log them once, not on every reconcile).
#[derive(Debug, Default)]
pub struct IntentCompiler {
    cache: tessera_policy::ListCache,
    refusals: tessera_policy::Refusals,
    warnings: Vec<tessera_policy::LeakWarning>,
}

impl IntentCompiler {
    pub fn new() -> Self {
        Self::default()
    }

    /// This host's intent, and the leak warnings when they differ from those
    /// of the previous one (`Some(vec![])` when they are all gone).
    pub fn compile(&mut self, snap: &Snapshot, me: &HostIdentity) -> (HostIntent, Option<Vec<tessera_policy::LeakWarning>>) {
        let intent = host_intent_cached(snap, me, &mut self.cache, &mut self.refusals);
        let changed = intent.leak_warnings != self.warnings;
        if changed {
            self.warnings = intent.leak_warnings.clone();
        }
        let warnings = changed.then(|| self.warnings.clone());
        (intent, warnings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_model::{EndpointStatus, Host, MacAddr, Network, Owner, Subnet};

    fn me() -> HostIdentity {
        HostIdentity {
            name: "h1".into(),
            underlay_ip: "10.99.0.1".parse().unwrap(),
            underlay_ifname: "eth0".into(),
            underlay_mtu: 1500,
        }
    }

    fn net(n: u128, vni: u32, cidr: &str) -> Network {
        let cidr: ipnet::IpNet = cidr.parse().unwrap();
        Network {
            domain: None,
            snat: None,
            id: Uuid::from_u128(n),
            fq_name: format!("default-domain:admin:n{n}").parse().unwrap(),
            vni: Vni::new(vni).unwrap(),
            subnets: vec![Subnet { cidr, gateway: tessera_ipam::default_gateway(cidr), pools: vec![], dns_servers: vec![] }],
            import_targets: vec![],
            export_targets: vec![],
            shared: false,
            shared_with: vec![],
            external: false,
            policies: vec![],
            labels: Default::default(),
        }
    }

    fn ep(n: u128, network: u128, host: &str, ip: &str) -> Endpoint {
        Endpoint {
            id: Uuid::from_u128(n),
            name: format!("e{n}"),
            network: Uuid::from_u128(network),
            host: host.into(),
            mac: MacAddr::local_from([0, 0, 0, 0, 0, n as u8]),
            ips: vec![ip.parse().unwrap()],
            owner: Owner { netns: Some(format!("/run/netns/c{n}")), ..Default::default() },
            status: EndpointStatus::Pending,
            status_message: None,
            ports: vec![],
            health: None,
        }
    }

    fn host(name: &str, ip: &str) -> Host {
        Host { name: name.into(), underlay_ip: ip.parse().unwrap(), last_seen: 0, gateways: vec![], alive: false }
    }

    fn snap() -> Snapshot {
        Snapshot {
            floating_ips: vec![],
            services: vec![],
            revision: 1,
            cluster: None,
            epoch: None,
            networks: vec![net(1, 4096, "192.168.10.0/24"), net(2, 4097, "192.168.20.0/24"), net(3, 4098, "10.0.0.0/24")],
            endpoints: std::sync::Arc::new(vec![
                ep(11, 1, "h1", "192.168.10.2/24"),
                ep(12, 1, "h2", "192.168.10.3/24"),
                ep(21, 2, "h2", "192.168.20.2/24"),
                ep(31, 3, "h3", "10.0.0.2/24"),
            ]),
            hosts: vec![host("h1", "10.99.0.1"), host("h2", "10.99.0.2"), host("h3", "10.99.0.3")],
            policies: vec![],
            pending: Default::default(),
            scope: None,
        }
    }

    #[test]
    fn only_networks_with_a_local_endpoint_are_present() {
        let (d, _) = desired_host(&snap(), &me());
        assert_eq!(d.networks.len(), 1);
        assert_eq!(d.networks[0].vni.get(), 4096);
    }

    #[test]
    fn remote_endpoints_of_the_network_route_through_their_host() {
        let (d, _) = desired_host(&snap(), &me());
        assert_eq!(
            d.networks[0].remote,
            vec![RemoteEndpoint { ip: "192.168.10.3".parse().unwrap(), host_underlay: "10.99.0.2".parse().unwrap() }]
        );
        assert_eq!(d.networks[0].local.len(), 1);
        assert_eq!(d.networks[0].local[0].ifname, "eth0");
        assert_eq!(d.networks[0].local[0].netns, PathBuf::from("/run/netns/c11"));
    }

    #[test]
    fn endpoints_of_other_networks_never_appear() {
        let (d, _) = desired_host(&snap(), &me());
        let remote: Vec<String> = d.networks[0].remote.iter().map(|r| r.ip.to_string()).collect();
        assert!(!remote.contains(&"192.168.20.2".to_string()));
    }

    #[test]
    fn removed_host_contributes_no_routes() {
        let mut s = snap();
        s.hosts.retain(|h| h.name != "h2");
        let (d, _) = desired_host(&s, &me());
        assert!(d.networks[0].remote.is_empty());
    }

    #[test]
    fn endpoint_without_netns_is_skipped_with_a_reason() {
        let mut s = snap();
        std::sync::Arc::make_mut(&mut s.endpoints)[0].owner.netns = None;
        let (d, skipped) = desired_host(&s, &me());
        assert!(d.networks.is_empty());
        assert_eq!(skipped.0.len(), 1);
    }

    #[test]
    fn a_bad_endpoint_is_skipped_with_its_reason_and_the_others_are_programmed() {
        let mut s = snap();
        let mut bad = ep(13, 1, "h1", "192.168.10.4/24");
        bad.owner.ifname = Some("../../x y".into());
        let mut host_ns = ep(14, 1, "h1", "192.168.10.5/24");
        host_ns.owner.netns = Some("/proc/1/ns/net".into());
        std::sync::Arc::make_mut(&mut s.endpoints).extend([bad, host_ns]);
        let (d, skipped) = desired_host(&s, &me());
        d.validate().expect("what is left is programmable");
        let local: Vec<u128> = d.networks[0].local.iter().map(|l| l.id.as_u128()).collect();
        assert_eq!(local, vec![11], "the good endpoint stays");
        let reasons: BTreeMap<u128, &str> = skipped.0.iter().map(|(id, r)| (id.as_u128(), r.as_str())).collect();
        assert!(reasons[&13].contains("owner.ifname"), "{reasons:?}");
        assert!(reasons[&14].contains("owner.netns"), "{reasons:?}");
    }

    #[test]
    fn two_endpoints_with_one_host_interface_name_do_not_stop_the_host() {
        let mut s = snap();
        let mut twin = ep(11, 1, "h1", "192.168.10.9/24");
        twin.id = Uuid::from_u128(11 | (7 << 64));
        std::sync::Arc::make_mut(&mut s.endpoints).push(twin);
        let (d, skipped) = desired_host(&s, &me());
        d.validate().expect("what is left is programmable");
        assert_eq!(d.networks[0].local.len(), 1);
        assert!(skipped.0[0].1.contains("host interface name"), "{skipped:?}");
    }

    #[test]
    fn running_out_of_conntrack_zones_leaves_pairs_unconnected_instead_of_hanging() {
        let vnis: Vec<Vni> = (1..=400).map(|v| Vni::new(v).unwrap()).collect();
        let pairs: BTreeSet<(Vni, Vni)> =
            vnis.iter().flat_map(|a| vnis.iter().filter(move |b| a < *b).map(move |b| (*a, *b))).collect();
        assert!(pairs.len() > 65_535);
        let used: BTreeSet<u16> = (1..=400).collect();
        let zones = pair_zones(&pairs, &used);
        assert_eq!(zones.len(), 65_535 - 400, "every zone left is used once");
        assert!(zones.values().all(|z| *z != 0 && !used.contains(z)));
    }

    fn pass_all(n: u128) -> tessera_model::Policy {
        tessera_model::Policy {
            id: Uuid::from_u128(n),
            fq_name: format!("default-domain:admin:p{n}").parse().unwrap(),
            rules: vec![tessera_model::Rule::parse(
                "r",
                "pass any any any <> any any",
                &tessera_model::ProjectName::default_project(),
            )
            .unwrap()]
            .into(),
        }
    }

    /// n1 (local on h1) and n2 (only on h2) with a pass-all policy on both.
    fn connected() -> Snapshot {
        let mut s = snap();
        s.policies.push(pass_all(100));
        for n in &mut s.networks[..2] {
            n.policies = vec![Uuid::from_u128(100)];
        }
        s
    }

    #[test]
    fn a_network_a_local_one_imports_is_present_without_endpoints() {
        let (d, _) = desired_host(&connected(), &me());
        let vnis: Vec<u32> = d.networks.iter().map(|n| n.vni.get()).collect();
        assert_eq!(vnis, vec![4096, 4097]);
        let n2 = &d.networks[1];
        assert!(n2.local.is_empty());
        assert_eq!(n2.remote.len(), 1, "its remote endpoints, so that routes to them work");
        assert_eq!(d.networks[0].imports, vec![Vni::new(4097).unwrap()]);
        assert_eq!(n2.imports, vec![Vni::new(4096).unwrap()]);
        d.validate().unwrap();
    }

    /// `s` as a controller sends it to a host that asks for `scope`.
    fn scoped(s: &Snapshot, scope: &Scope, host: &str) -> Snapshot {
        let mut out = s.clone();
        if let Scope::Networks(ids) = scope {
            std::sync::Arc::make_mut(&mut out.endpoints).retain(|e| ids.contains(&e.network) || e.host == host);
        }
        out
    }

    #[test]
    fn a_host_asks_for_the_networks_it_programs_and_programs_the_same_from_them() {
        let h = |name: &str| HostIdentity { name: name.into(), ..me() };
        let ids = |v: &[u128]| Scope::Networks(v.iter().map(|i| Uuid::from_u128(*i)).collect());
        assert_eq!(host_intent(&snap(), &me()).scope, ids(&[1]));
        assert_eq!(host_intent(&connected(), &me()).scope, ids(&[1, 2]), "a network it imports");
        assert_eq!(host_intent(&connected(), &h("h3")).scope, ids(&[3]));
        for s in [snap(), connected()] {
            for name in ["h1", "h2", "h3"] {
                let whole = host_intent(&s, &h(name));
                assert_eq!(scope(&s, name), whole.scope, "before compiling, {name}");
                let part = host_intent(&scoped(&s, &whole.scope, name), &h(name));
                assert_eq!(part.desired, whole.desired, "{name} programs the same from its scope");
            }
        }
        let mut gateway = snap();
        gateway.hosts[0].gateways = vec![tessera_model::HostGateway { network: Uuid::from_u128(3), interface: "up0".into() }];
        assert_eq!(host_intent(&gateway, &me()).scope, Scope::Everything, "a gateway host needs every endpoint");
    }

    #[test]
    fn networks_that_import_each_other_share_a_zone_apart_from_their_own() {
        let (d, _) = desired_host(&connected(), &me());
        assert_eq!(d.pair_zones.len(), 1);
        let pz = &d.pair_zones[0];
        assert_eq!((pz.a.get(), pz.b.get()), (4096, 4097));
        assert!(d.networks.iter().all(|n| n.zone != pz.zone));
        assert_eq!(desired_host(&connected(), &me()).0.pair_zones, d.pair_zones, "stable");
    }

    /// n1, n2 and n3 all connected by one pass-all policy; only n1 has an
    /// endpoint on h1.
    fn all_connected() -> Snapshot {
        let mut s = snap();
        s.policies.push(pass_all(100));
        for n in &mut s.networks {
            n.policies = vec![Uuid::from_u128(100)];
        }
        s
    }

    #[test]
    fn programs_are_compiled_for_flows_that_start_or_end_here_and_watched_for_the_others() {
        let (d, _) = desired_host(&connected(), &me());
        let pairs: Vec<(u32, u32)> = d.policies.iter().map(|p| (p.src.get(), p.dst.get())).collect();
        assert_eq!(
            pairs,
            vec![(4096, 4097), (4097, 4096)],
            "n1 -> n2 starts here, n2 -> n1 ends here (pass-all between networks is still a list); within n1 nothing"
        );
        assert!(d.watches.is_empty(), "every pair of this host is judged here");
        let (d, _) = desired_host(&all_connected(), &me());
        let watched: Vec<(u32, u32)> = d.watches.iter().map(|w| (w.src.get(), w.dst.get())).collect();
        assert_eq!(watched, vec![(4097, 4098), (4098, 4097)], "n2 and n3 have no endpoint here: their flows are not judged here");
        let mut changed = all_connected();
        changed.policies[0].rules.push(
            tessera_model::Rule::parse("r", "deny tcp any any > any 22", &tessera_model::ProjectName::default_project()).unwrap(),
        );
        assert_ne!(desired_host(&changed, &me()).0.watches[0].fingerprint, d.watches[0].fingerprint);
    }

    #[test]
    fn a_watched_pair_keeps_its_fingerprint_through_edits_that_only_widen() {
        let rule = |r: &str| tessera_model::Rule::parse("r", r, &tessera_model::ProjectName::default_project()).unwrap();
        let watch = |intents: &mut IntentCompiler, s: &Snapshot| intents.compile(s, &me()).0.desired.watches[0].fingerprint;
        let mut intents = IntentCompiler::new();
        let mut s = all_connected();
        s.policies[0].rules.insert(0, rule("deny tcp any any <> any 22"));
        let first = watch(&mut intents, &s);
        s.policies[0].rules.set(0, rule("pass tcp any any <> any 22"));
        assert_eq!(watch(&mut intents, &s), first, "deny → pass lets more through: the pair's flows live on");
        s.policies[0].rules.insert(0, rule("pass udp any any <> any 53"));
        assert_eq!(watch(&mut intents, &s), first, "a pass rule inserted");
        s.policies[0].rules.set(1, rule("reject tcp any any <> any 22"));
        let narrowed = watch(&mut intents, &s);
        assert_ne!(narrowed, first, "pass → reject may refuse running flows: they end");
        assert_eq!(watch(&mut intents, &s), narrowed, "stable while nothing changes");
    }

    #[test]
    fn detaching_the_policy_drops_the_other_network_and_its_program() {
        let mut s = connected();
        s.networks[0].policies.clear();
        let (d, _) = desired_host(&s, &me());
        assert_eq!(d.networks.len(), 1);
        assert!(d.networks[0].imports.is_empty() && d.pair_zones.is_empty() && d.policies.is_empty() && d.watches.is_empty());
    }

    #[test]
    fn a_one_way_route_target_imports_one_way_without_a_shared_zone() {
        let mut s = snap();
        s.networks[0].import_targets = vec!["64512:1".parse().unwrap()];
        s.networks[1].export_targets = vec!["64512:1".parse().unwrap()];
        let (d, _) = desired_host(&s, &me());
        assert_eq!(d.networks[0].imports, vec![Vni::new(4097).unwrap()]);
        assert!(d.networks[1].imports.is_empty());
        assert!(d.pair_zones.is_empty());
        d.validate().unwrap();
    }

    #[test]
    fn overlapping_networks_are_not_leaked_and_warned_about() {
        let mut s = connected();
        s.networks[1].subnets[0].cidr = "192.168.10.128/25".parse().unwrap();
        let intent = host_intent(&s, &me());
        assert_eq!(intent.desired.networks.len(), 1);
        assert!(intent.desired.networks[0].imports.is_empty());
        assert_eq!(intent.leak_warnings.len(), 2);
    }

    #[test]
    fn an_intra_network_deny_compiles_a_program_within_the_network() {
        let mut s = snap();
        let mut p = pass_all(7);
        p.rules =
            vec![tessera_model::Rule::parse("r", "deny tcp any any > any 22", &tessera_model::ProjectName::default_project())
                .unwrap()]
            .into();
        s.policies.push(p);
        s.networks[0].policies = vec![Uuid::from_u128(7)];
        let (d, _) = desired_host(&s, &me());
        assert_eq!(d.policies.len(), 1);
        assert_eq!((d.policies[0].src.get(), d.policies[0].dst.get()), (4096, 4096));
    }

    #[test]
    fn a_cache_recompiles_only_changed_lists_and_gives_the_same_result() {
        let mut cache = tessera_policy::ListCache::new();
        let first = host_intent_cached(&connected(), &me(), &mut cache, &mut tessera_policy::Refusals::new());
        assert_eq!(first.desired, host_intent(&connected(), &me()).desired);
        assert_eq!(cache.len(), 3, "n1 -> n2, n2 -> n1, and n1 within itself (which passes everything)");
        let mut changed = connected();
        changed.policies[0].rules.push(
            tessera_model::Rule::parse("r", "deny tcp any any > any 22", &tessera_model::ProjectName::default_project()).unwrap(),
        );
        let second = host_intent_cached(&changed, &me(), &mut cache, &mut tessera_policy::Refusals::new());
        assert_eq!(second.desired, host_intent(&changed, &me()).desired);
        assert_eq!(cache.len(), 3, "the old lists left the cache");
    }

    #[test]
    fn a_planner_reports_leak_warnings_once_per_change() {
        let mut s = connected();
        s.networks[1].subnets[0].cidr = "192.168.10.128/25".parse().unwrap();
        let mut intents = IntentCompiler::new();
        let (first, warnings) = intents.compile(&s, &me());
        assert_eq!(first, host_intent(&s, &me()));
        assert_eq!(warnings.map(|w| w.len()), Some(2), "new warnings are reported");
        assert_eq!(intents.compile(&s, &me()).1, None, "the same warnings are not reported again");
        assert_eq!(intents.compile(&connected(), &me()).1, Some(vec![]), "their end is reported");
    }

    #[test]
    fn zones_are_unique_and_stable() {
        let vnis: BTreeSet<Vni> = [1u32, 65537, 65536, 131072].iter().map(|v| Vni::new(*v).unwrap()).collect();
        let z = zones(&vnis);
        assert_eq!(z[&Vni::new(1).unwrap()], 1);
        assert_eq!(z[&Vni::new(65536).unwrap()], 2, "0 is not a zone; 1 is taken");
        assert_eq!(z[&Vni::new(65537).unwrap()], 3);
        assert_eq!(z[&Vni::new(131072).unwrap()], 4);
        assert_eq!(zones(&vnis), z);
    }
}
