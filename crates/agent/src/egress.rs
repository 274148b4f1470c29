//! The way to the outside (pure): which external network each network
//! reaches the outside through, which gateway host carries it, and what a
//! gateway host translates on its uplinks.
//!
//! A network reaches the outside through one external network: the one it
//! is source-NATed through, else the one of the floating IPs of its
//! endpoints. Of the gateways of that external network that are alive, one
//! carries the network ([`tessera_model::floating_ip::owner`], the same on
//! every host): it answers for the network's floating IPs and SNAT
//! addresses on its uplink and translates them; every other host routes
//! the network's outside traffic to it through the network's tunnel. A
//! gateway holds every network of its external networks, so taking one
//! over is a change of routes and proxy entries only.
//!
//! Ports published for local endpoints ([`published`]) are this host's
//! way in.

use std::collections::{BTreeMap, BTreeSet};

use tessera_dataplane::desired::{
    DesiredNetwork, DesiredPublished, DesiredUplink, Egress, EgressVia, ExternalAddress, ExternalKind,
};
use tessera_model::floating_ip::owner;
use tessera_model::watch::Snapshot;
use tessera_model::{Network, Vni};
use uuid::Uuid;

/// What the outside asks of one host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExternalPlan {
    /// Networks this host holds because it is a gateway of their external
    /// network.
    pub present: BTreeSet<Uuid>,
    /// Each network's way out, for those that have one.
    pub egress: BTreeMap<Uuid, Egress>,
    /// This host's uplinks, with the external addresses it answers for.
    pub uplinks: Vec<DesiredUplink>,
}

/// The external network `net` reaches the outside through, if any.
fn external_of<'a>(snap: &'a Snapshot, net: &Network, endpoints: &BTreeSet<Uuid>) -> Option<&'a Network> {
    let id = match &net.snat {
        Some(s) => s.network,
        None => {
            snap.floating_ips.iter().filter(|f| f.endpoint.is_some_and(|e| endpoints.contains(&e))).map(|f| f.network).min()?
        }
    };
    snap.networks.iter().find(|n| n.id == id && n.external)
}

/// The plan of host `me` from the mirrored intent.
pub fn external_plan(snap: &Snapshot, me: &str) -> ExternalPlan {
    let mut plan = ExternalPlan::default();
    let my_gateways: BTreeMap<Uuid, String> = snap
        .hosts
        .iter()
        .find(|h| h.name == me)
        .map(|h| h.gateways.iter().map(|g| (g.network, g.interface.clone())).collect())
        .unwrap_or_default();
    let mut endpoints_of: BTreeMap<Uuid, BTreeSet<Uuid>> = BTreeMap::new();
    for e in snap.endpoints.iter() {
        endpoints_of.entry(e.network).or_default().insert(e.id);
    }
    let empty = BTreeSet::new();
    let mut addresses: BTreeMap<Uuid, Vec<ExternalAddress>> = BTreeMap::new();
    for net in snap.networks.iter().filter(|n| !n.external) {
        let endpoints = endpoints_of.get(&net.id).unwrap_or(&empty);
        let Some(ext) = external_of(snap, net, endpoints) else { continue };
        if my_gateways.contains_key(&ext.id) {
            plan.present.insert(net.id);
        }
        let Some(carrier) = owner(net.vni.get(), ext.id, &snap.hosts) else { continue };
        let v4 = ext.subnets.iter().any(|s| s.cidr.addr().is_ipv4());
        let v6 = ext.subnets.iter().any(|s| s.cidr.addr().is_ipv6());
        let via = match my_gateways.get(&ext.id).filter(|_| carrier.name == me) {
            Some(ifname) => {
                let gateways = ext.subnets.iter().filter_map(|s| s.gateway).collect();
                let mine = addresses.entry(ext.id).or_default();
                mine.extend(external_addresses(snap, net.vni, ext.id, endpoints, net));
                EgressVia::Uplink { ifname: ifname.clone(), gateways }
            }
            None => EgressVia::Host(carrier.underlay_ip),
        };
        plan.egress.insert(net.id, Egress { external: ext.vni, v4, v6, via });
    }
    for (ext, ifname) in &my_gateways {
        let mut peers: Vec<&str> =
            snap.hosts.iter().filter(|h| h.gateways.iter().any(|g| g.network == *ext)).map(|h| h.name.as_str()).collect();
        peers.sort();
        let slice = peers.iter().position(|p| *p == me).unwrap_or(0) as u16;
        let mut addrs = addresses.remove(ext).unwrap_or_default();
        addrs.sort_by_key(|a| a.address);
        let Some(external) = snap.networks.iter().find(|n| n.id == *ext).map(|n| n.vni) else { continue };
        plan.uplinks.push(DesiredUplink { ifname: ifname.clone(), external, slice, addresses: addrs });
    }
    plan.uplinks.sort_by(|a, b| a.ifname.cmp(&b.ifname));
    plan
}

/// The floating IPs of `ext` associated with endpoints of `net`, and
/// `net`'s SNAT addresses.
fn external_addresses(snap: &Snapshot, vni: Vni, ext: Uuid, endpoints: &BTreeSet<Uuid>, net: &Network) -> Vec<ExternalAddress> {
    let mut out: Vec<ExternalAddress> = snap
        .floating_ips
        .iter()
        .filter(|f| f.network == ext && f.endpoint.is_some_and(|e| endpoints.contains(&e)))
        .filter_map(|f| Some(ExternalAddress { vni, address: f.address, kind: ExternalKind::Floating { fixed: f.fixed_ip? } }))
        .collect();
    if let Some(s) = net.snat.as_ref().filter(|s| s.network == ext) {
        out.extend(s.addresses.iter().map(|a| ExternalAddress { vni, address: *a, kind: ExternalKind::Snat }));
    }
    out
}

/// The ports published for the local endpoints this host programs (those
/// in `networks`): one per address of the endpoint's of the host
/// address's family, or of each family when published on every address.
pub fn published(snap: &Snapshot, networks: &[DesiredNetwork]) -> Vec<DesiredPublished> {
    let mut out = Vec::new();
    for net in networks {
        for local in &net.local {
            let Some(ep) = snap.endpoints.iter().find(|e| e.id == local.id) else { continue };
            for p in &ep.ports {
                // IPv6 loopback is never routed beyond `lo`: not published.
                if p.host_ip.is_some_and(|ip| ip.is_ipv6() && ip.is_loopback()) || p.container_port == 0 {
                    continue;
                }
                for fixed in local.ips.iter().map(|a| a.addr()) {
                    if p.host_ip.is_some_and(|h| h.is_ipv4() != fixed.is_ipv4()) {
                        continue;
                    }
                    out.push(DesiredPublished {
                        vni: net.vni,
                        protocol: p.protocol,
                        host_ip: p.host_ip,
                        host_port: p.host_port,
                        fixed,
                        container_port: p.container_port,
                    });
                }
            }
        }
    }
    out.sort_by_key(|p| (p.fixed.is_ipv4(), p.protocol, p.host_port));
    out.dedup_by(|a, b| (a.fixed.is_ipv4(), a.protocol, a.host_port) == (b.fixed.is_ipv4(), b.protocol, b.host_port));
    out
}

/// The programs of flows between the outside and the networks of
/// `networks` that reach it: on the gateway that carries a network, both
/// ways (it is where they cross); on a host of its endpoints, what comes in
/// (both ends judge).
pub fn external_programs(
    snap: &Snapshot,
    networks: &[DesiredNetwork],
    compiler: &tessera_policy::Compiler,
    cache: &mut tessera_policy::ListCache,
) -> Vec<tessera_dataplane::desired::PairPolicy> {
    let id_of = |v: Vni| snap.networks.iter().find(|n| n.vni == v).map(|n| n.id);
    let mut out = Vec::new();
    for n in networks {
        let Some(egress) = &n.egress else { continue };
        let (Some(ext), Some(net)) = (id_of(egress.external), id_of(n.vni)) else { continue };
        let mut pairs = Vec::new();
        if matches!(egress.via, EgressVia::Uplink { .. }) || !n.local.is_empty() {
            pairs.push((ext, net, egress.external, n.vni));
        }
        if matches!(egress.via, EgressVia::Uplink { .. }) {
            pairs.push((net, ext, n.vni, egress.external));
        }
        for (s, d, sv, dv) in pairs {
            let Some(program) = compiler.program_cached(s, d, cache) else { continue };
            if !program.is_pass_all() {
                out.push(tessera_dataplane::desired::PairPolicy { src: sv, dst: dv, lists: program.lists });
            }
        }
    }
    out
}
