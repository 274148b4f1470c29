//! What a desired state asks of the kernel, keyed like
//! [`Observed`](crate::observed::Observed): every
//! link, address, route, rule, neighbour, FDB and proxy entry and nftables
//! element, computed once per plan, or kept from the last plan
//! ([`PlanMemo`]) when the parts of the desired state it reads did not change.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::desired::{
    bridge_mac, bridge_name, host_veth_name, table_id, vtep_mac, vtep_next_hop, vxlan_name, DesiredHost, DesiredNetwork,
    DesiredPublished, DesiredSteer, DesiredUplink, EgressVia, ExternalKind, PairZone, VXLAN_PORT,
};
use crate::names::{
    steer_mark, steer_table, veth_mark, GATEWAY_TABLE, LINK_MARK, MAIN_TABLE, PUBLISHED_PRIORITY, RULE_PRIORITY, SNAT_SLICES,
    STEER_PRIORITY, UNVERIFIED_PRIORITY, UPLINK_PRIORITY,
};
use crate::observed::{
    AddressEntry, FdbEntry, IpFamily, LinkKind, LinkState, NeighEntry, NftElement, ProxyNeighEntry, PubKey, RouteEntry,
    RouteTarget, RuleEntry, RuleSelector, VxlanState,
};

/// The kernel objects a desired state implies, keyed like [`Observed`](crate::observed::Observed).
pub(super) struct Want {
    pub(super) links: BTreeMap<String, LinkState>,
    pub(super) addresses: BTreeSet<AddressEntry>,
    pub(super) routes: BTreeSet<RouteEntry>,
    pub(super) rules: BTreeSet<RuleEntry>,
    pub(super) neighbours: BTreeSet<NeighEntry>,
    pub(super) fdb: BTreeSet<FdbEntry>,
    pub(super) proxy_neighbours: BTreeSet<ProxyNeighEntry>,
    pub(super) elements: BTreeSet<NftElement>,
    /// The anti-spoofing elements of each endpoint port, in `elements`' order.
    pub(super) ports: BTreeMap<String, Vec<NftElement>>,
}

/// What the planner keeps from one plan to the next: the kernel objects
/// the last desired state implied, and the parts of that state they were
/// computed from (everything but its policies and watches). A change of
/// policy alone, the usual change on a host with many endpoints, does not
/// compute them again.
#[derive(Default)]
pub struct PlanMemo {
    last: Option<(WantInputs, Want)>,
}

impl PlanMemo {
    /// The kernel objects `desired` implies.
    pub(super) fn want(&mut self, desired: &DesiredHost) -> &Want {
        if !self.last.as_ref().is_some_and(|(inputs, _)| inputs.same(desired)) {
            self.last = Some((WantInputs::of(desired), Want::of(desired)));
        }
        &self.last.as_ref().expect("set above").1
    }
}

/// The parts of a desired state [`Want::of`] reads.
struct WantInputs {
    underlay_ip: IpAddr,
    underlay_ifname: String,
    underlay_mtu: u32,
    peers: Vec<IpAddr>,
    networks: Vec<DesiredNetwork>,
    pair_zones: Vec<PairZone>,
    uplinks: Vec<DesiredUplink>,
    published: Vec<DesiredPublished>,
    steering: Vec<DesiredSteer>,
}

impl WantInputs {
    fn of(d: &DesiredHost) -> Self {
        WantInputs {
            underlay_ip: d.underlay_ip,
            underlay_ifname: d.underlay_ifname.clone(),
            underlay_mtu: d.underlay_mtu,
            peers: d.peers.clone(),
            networks: d.networks.clone(),
            pair_zones: d.pair_zones.clone(),
            uplinks: d.uplinks.clone(),
            published: d.published.clone(),
            steering: d.steering.clone(),
        }
    }

    fn same(&self, d: &DesiredHost) -> bool {
        self.underlay_ip == d.underlay_ip
            && self.underlay_ifname == d.underlay_ifname
            && self.underlay_mtu == d.underlay_mtu
            && self.peers == d.peers
            && self.pair_zones == d.pair_zones
            && self.uplinks == d.uplinks
            && self.published == d.published
            && self.steering == d.steering
            && self.networks == d.networks
    }
}

impl Want {
    pub(super) fn of(desired: &DesiredHost) -> Self {
        let mtu = desired.overlay_mtu();
        let mut w = Want {
            links: BTreeMap::new(),
            addresses: BTreeSet::new(),
            routes: BTreeSet::new(),
            rules: BTreeSet::new(),
            neighbours: BTreeSet::new(),
            fdb: BTreeSet::new(),
            proxy_neighbours: BTreeSet::new(),
            elements: BTreeSet::new(),
            ports: BTreeMap::new(),
        };
        // The hosts VXLAN is accepted from: the fabric's, and whichever holds
        // a remote endpoint (its host is one of the fabric's by construction).
        let remote_hosts = desired.networks.iter().flat_map(|n| n.remote.iter().map(|r| r.host_underlay));
        for ip in desired.peers.iter().copied().chain(remote_hosts) {
            w.elements.insert(NftElement::Vtep { ip });
        }
        for net in &desired.networks {
            let tb = bridge_name(net.vni);
            let tx = vxlan_name(net.vni);
            let table = table_id(net.vni);
            w.links.insert(
                tb.clone(),
                LinkState {
                    kind: LinkKind::Bridge,
                    mtu,
                    mac: Some(bridge_mac(net.vni)),
                    up: true,
                    master: None,
                    alias: Some(LINK_MARK.to_string()),
                    isolated: false,
                },
            );
            w.links.insert(
                tx.clone(),
                LinkState {
                    kind: LinkKind::Vxlan(VxlanState {
                        vni: net.vni.get(),
                        local: Some(desired.underlay_ip),
                        port: VXLAN_PORT,
                        underlay: Some(desired.underlay_ifname.clone()),
                        learning: false,
                    }),
                    mtu,
                    mac: Some(vtep_mac(desired.underlay_ip)),
                    up: true,
                    master: None,
                    alias: Some(LINK_MARK.to_string()),
                    isolated: false,
                },
            );
            for family in [IpFamily::V4, IpFamily::V6] {
                for iif in [&tb, &tx] {
                    // Only what nftables let in is routed; the rest is dropped.
                    w.rules.insert(RuleEntry {
                        family,
                        selector: RuleSelector::IifVerified(iif.clone()),
                        table,
                        priority: RULE_PRIORITY,
                    });
                    w.rules.insert(RuleEntry {
                        family,
                        selector: RuleSelector::IifUnverified(iif.clone()),
                        table,
                        priority: UNVERIFIED_PRIORITY,
                    });
                }
                w.rules.insert(RuleEntry { family, selector: RuleSelector::FwMark(table), table, priority: RULE_PRIORITY });
                let any: IpNet = match family {
                    IpFamily::V4 => "0.0.0.0/0".parse().expect("literal"),
                    IpFamily::V6 => "::/0".parse().expect("literal"),
                };
                w.routes.insert(RouteEntry { table, dst: any, target: RouteTarget::Unreachable });
            }
            for sub in &net.subnets {
                w.routes.insert(RouteEntry { table, dst: sub.cidr.trunc(), target: RouteTarget::Dev(tb.clone()) });
                if let Some(gw) = sub.gateway {
                    w.addresses.insert(AddressEntry { dev: tb.clone(), addr: IpNet::from(gw) });
                }
            }
            for rem in &net.remote {
                let mac = vtep_mac(rem.host_underlay);
                w.routes.insert(RouteEntry { table, dst: IpNet::from(rem.ip), target: RouteTarget::Dev(tx.clone()) });
                w.neighbours.insert(NeighEntry { dev: tx.clone(), ip: rem.ip, mac });
                w.fdb.insert(FdbEntry { dev: tx.clone(), mac, dst: rem.host_underlay });
                if rem.ip.is_ipv6() {
                    w.proxy_neighbours.insert(ProxyNeighEntry { dev: tb.clone(), ip: rem.ip });
                }
            }
            for imp in &net.imports {
                let Some(other) = desired.networks.iter().find(|n| n.vni == *imp) else { continue };
                let (otb, otx) = (bridge_name(other.vni), vxlan_name(other.vni));
                for sub in &other.subnets {
                    w.routes.insert(RouteEntry { table, dst: sub.cidr.trunc(), target: RouteTarget::Dev(otb.clone()) });
                }
                for rem in &other.remote {
                    w.routes.insert(RouteEntry { table, dst: IpNet::from(rem.ip), target: RouteTarget::Dev(otx.clone()) });
                }
            }
            w.elements.insert(NftElement::Zone { ifname: tb.clone(), zone: net.zone });
            w.elements.insert(NftElement::Zone { ifname: tx.clone(), zone: net.zone });
            for ep in &net.local {
                let port = host_veth_name(ep.id);
                w.links.insert(
                    port.clone(),
                    LinkState {
                        kind: LinkKind::Veth,
                        mtu,
                        mac: None,
                        up: true,
                        master: Some(tb.clone()),
                        alias: Some(veth_mark(ep.id)),
                        isolated: true,
                    },
                );
                w.elements.insert(NftElement::EpMac { port: port.clone(), mac: ep.mac });
                if ep.service {
                    w.elements.insert(NftElement::SvcMac { port: port.clone(), mac: ep.mac });
                }
                for ip in &ep.ips {
                    // The host knows its endpoints' addresses: no resolution,
                    // and an entry that failed while the endpoint was not
                    // there yet (traffic that came first) is replaced at once.
                    w.neighbours.insert(NeighEntry { dev: tb.clone(), ip: ip.addr(), mac: ep.mac });
                    // Isolated ports: the bridge answers NS for local endpoints too.
                    if ip.addr().is_ipv6() {
                        w.proxy_neighbours.insert(ProxyNeighEntry { dev: tb.clone(), ip: ip.addr() });
                    }
                    w.elements.insert(match ip.addr() {
                        IpAddr::V4(ip) => NftElement::Ep4 { port: port.clone(), mac: ep.mac, ip },
                        IpAddr::V6(ip) => NftElement::Ep6 { port: port.clone(), mac: ep.mac, ip },
                    });
                }
            }
        }
        for net in &desired.networks {
            let Some(egress) = &net.egress else { continue };
            let table = table_id(net.vni);
            let any4: IpNet = "0.0.0.0/0".parse().expect("literal");
            let any6: IpNet = "::/0".parse().expect("literal");
            let families = [(egress.v4, any4), (egress.v6, any6)];
            match &egress.via {
                EgressVia::Uplink { ifname, gateways } => {
                    for (wanted, any) in families.into_iter().filter(|(w, _)| *w) {
                        let _ = wanted;
                        let target = match gateways.iter().find(|g| g.is_ipv4() == any.addr().is_ipv4()) {
                            Some(g) => RouteTarget::Via { dev: ifname.clone(), gateway: *g },
                            None => RouteTarget::Dev(ifname.clone()),
                        };
                        w.routes.insert(RouteEntry { table, dst: any, target });
                    }
                }
                EgressVia::Host(underlay) => {
                    let tx = vxlan_name(net.vni);
                    let hop = IpAddr::V6(vtep_next_hop(*underlay));
                    let mac = vtep_mac(*underlay);
                    for (_, any) in families.into_iter().filter(|(w, _)| *w) {
                        w.routes.insert(RouteEntry {
                            table,
                            dst: any,
                            target: RouteTarget::Via { dev: tx.clone(), gateway: hop },
                        });
                    }
                    w.neighbours.insert(NeighEntry { dev: tx.clone(), ip: hop, mac });
                    w.fdb.insert(FdbEntry { dev: tx, mac, dst: *underlay });
                }
            }
        }
        for up in &desired.uplinks {
            w.elements.insert(NftElement::Uplink { ifname: up.ifname.clone() });
            w.elements.insert(NftElement::UplinkSlice { ifname: up.ifname.clone(), slice: up.slice % SNAT_SLICES });
            for family in [IpFamily::V4, IpFamily::V6] {
                w.rules.insert(RuleEntry {
                    family,
                    selector: RuleSelector::Uplink(up.ifname.clone()),
                    table: GATEWAY_TABLE,
                    priority: UPLINK_PRIORITY,
                });
            }
            for ext in &up.addresses {
                let Some(net) = desired.networks.iter().find(|n| n.vni == ext.vni) else { continue };
                let a = ext.address;
                w.proxy_neighbours.insert(ProxyNeighEntry { dev: up.ifname.clone(), ip: a });
                w.routes.insert(RouteEntry {
                    table: GATEWAY_TABLE,
                    dst: IpNet::from(a),
                    target: RouteTarget::Dev(bridge_name(net.vni)),
                });
                w.elements.insert(NftElement::ExtZone { address: a, zone: net.zone });
                w.elements.insert(NftElement::ExtMark { address: a, mark: table_id(net.vni) });
                w.elements.insert(NftElement::ExtOut { address: a });
                match ext.kind {
                    ExternalKind::Floating { fixed } => {
                        w.elements.insert(NftElement::FipIn { floating: a, fixed });
                        w.elements.insert(NftElement::FipOut { zone: net.zone, fixed, floating: a });
                    }
                    ExternalKind::Snat => {
                        w.elements.insert(NftElement::Snat { zone: net.zone, address: a });
                    }
                }
            }
        }
        for p in &desired.published {
            let Some(net) = desired.networks.iter().find(|n| n.vni == p.vni) else { continue };
            let key = PubKey { v6: p.fixed.is_ipv6(), host_ip: p.host_ip, protocol: p.protocol, port: p.host_port };
            w.elements.insert(NftElement::PubZone { key: key.clone(), zone: net.zone });
            w.elements.insert(NftElement::PubMark { key: key.clone(), mark: table_id(net.vni) });
            w.elements.insert(NftElement::PubDnat { key, fixed: p.fixed, port: p.container_port });
            let family = if p.fixed.is_ipv4() { IpFamily::V4 } else { IpFamily::V6 };
            w.rules.insert(RuleEntry {
                family,
                selector: RuleSelector::PublishedReply,
                table: MAIN_TABLE,
                priority: PUBLISHED_PRIORITY,
            });
        }
        // Steering: each target's table routes to it; a rule per target
        // selects its table by the mark the steer chain gives its packets.
        for (s, first) in desired.steering.iter().zip(desired.steer_first_targets()) {
            for (i, target) in (first..).zip(&s.targets) {
                let (family, any) = match target.address {
                    IpAddr::V4(_) => (IpFamily::V4, "0.0.0.0/0".parse().expect("literal")),
                    IpAddr::V6(_) => (IpFamily::V6, "::/0".parse().expect("literal")),
                };
                let table = steer_table(i);
                let gateway = target.address;
                w.routes.insert(RouteEntry { table, dst: any, target: RouteTarget::Via { dev: target.dev.clone(), gateway } });
                w.rules.insert(RuleEntry {
                    family,
                    selector: RuleSelector::Steer(steer_mark(i)),
                    table,
                    priority: STEER_PRIORITY,
                });
            }
        }
        for net in &desired.networks {
            let (tb, table) = (bridge_name(net.vni), table_id(net.vni));
            let routed = w.routes.iter().filter(|r| r.table == table && r.target != RouteTarget::Unreachable).map(|r| r.dst);
            for net in reach(routed) {
                w.elements.insert(NftElement::Reach { ifname: tb.clone(), net });
            }
        }
        for pz in &desired.pair_zones {
            for (x, y) in [(pz.a, pz.b), (pz.b, pz.a)] {
                let Some(other) = desired.networks.iter().find(|n| n.vni == y) else { continue };
                for sub in &other.subnets {
                    for ifname in [bridge_name(x), vxlan_name(x)] {
                        w.elements.insert(NftElement::PairZone { ifname, net: sub.cidr.trunc(), zone: pz.zone });
                    }
                }
            }
        }
        w.ports = port_elements(&w.elements)
            .into_iter()
            .map(|(port, elements)| (port.to_string(), elements.into_iter().cloned().collect()))
            .collect();
        w
    }
}

/// The elements of `elements` that name a bridge port, by port.
pub(super) fn port_elements(elements: &BTreeSet<NftElement>) -> BTreeMap<&str, Vec<&NftElement>> {
    let mut out: BTreeMap<&str, Vec<&NftElement>> = BTreeMap::new();
    for e in elements {
        if let Some(port) = e.port() {
            out.entry(port).or_default().push(e);
        }
    }
    out
}

/// Where a new flow from a network's bridge may go: the prefixes its table
/// routes, and the local multicast, broadcast and link-local ranges (DHCP,
/// neighbour discovery), without those another holds (the set's intervals
/// may not overlap).
fn reach(routed: impl Iterator<Item = IpNet>) -> Vec<IpNet> {
    let always = ["224.0.0.0/4", "255.255.255.255/32", "ff00::/8", "fe80::/10"];
    let mut all: Vec<IpNet> = routed.chain(always.iter().map(|n| n.parse().expect("literal"))).collect();
    all.sort_by_key(|n| (n.addr().is_ipv6(), n.prefix_len()));
    let mut out: Vec<IpNet> = Vec::new();
    for n in all {
        if !out.iter().any(|o| o.contains(&n)) {
            out.push(n);
        }
    }
    out
}
