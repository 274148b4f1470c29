//! Service chains (pure): which traffic this host steers to which service
//! instances, from the rules that `apply-service`.
//!
//! A rule `pass P A SP > B DP apply-service s1,…,sn` (in a policy attached
//! to `A` or `B`) makes a chain of segments `A = N0, N1, …, Nn = B`, where
//! `Nk` is `sk`'s right network and `sk+1`'s left. The flow's packets keep
//! their addresses (in-network services), so wherever they enter a
//! segment's VRF they are recognised by the rule's five-tuple: in `Nk-1` a
//! packet from `A` to `B` goes to an instance of `sk` (its left address),
//! and in `Nk` an answer from `B` to `A` goes to an instance of `sk` (its
//! right address). Every host computes the same healthy instances in the
//! same order, and the data plane picks one by a hash both directions of a
//! flow share, so a flow takes one instance of each service both ways.
//!
//! A service with no healthy instance drops its chain's traffic (`closed`,
//! the default) or is left out of it (`open`: the rule's plain `pass`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use tessera_dataplane::desired::{bridge_name, host_veth_name, vxlan_name, DesiredNetwork, DesiredSteer, SteerTarget};
use tessera_model::watch::Snapshot;
use tessera_model::{Endpoint, EndpointStatus, FailMode, FqName, InterfaceRole, Network, Protocol, Rule, Service, Vni};

/// One healthy instance of a service: its left and right ports.
struct Instance<'a> {
    left: &'a Endpoint,
    right: &'a Endpoint,
}

/// Whether an endpoint is a programmed, healthy service port.
fn healthy(e: &Endpoint) -> bool {
    e.status == EndpointStatus::Active && e.health.as_ref().is_some_and(|h| h.healthy)
}

/// The healthy instances of `service`, ordered by name (the same on every
/// host).
fn instances<'a>(service: &Service, endpoints: &'a [Endpoint]) -> Vec<Instance<'a>> {
    let mut by_name: BTreeMap<&str, Vec<&Endpoint>> = BTreeMap::new();
    for e in endpoints {
        if let Some(sp) = e.owner.service.as_ref().filter(|sp| sp.service == service.id) {
            by_name.entry(sp.instance.as_str()).or_default().push(e);
        }
    }
    by_name
        .into_values()
        .filter(|ports| ports.iter().all(|p| healthy(p)))
        .filter_map(|ports| {
            let role = |r| ports.iter().copied().find(|p| p.owner.service.as_ref().is_some_and(|s| s.role == r));
            Some(Instance { left: role(InterfaceRole::Left)?, right: role(InterfaceRole::Right)? })
        })
        .collect()
}

fn protocol_number(p: Protocol) -> Option<u8> {
    match p {
        Protocol::Any => None,
        Protocol::Tcp => Some(6),
        Protocol::Udp => Some(17),
        Protocol::Icmp => Some(1),
        Protocol::Icmpv6 => Some(58),
        Protocol::Number(n) => Some(n),
    }
}

fn ranges(p: &[tessera_model::PortRange]) -> Vec<(u16, u16)> {
    p.iter().map(|r| (r.start, r.end)).collect()
}

fn family<'a>(subnets: impl Iterator<Item = &'a IpNet>, v4: bool) -> Vec<IpNet> {
    subnets.filter(|c| c.addr().is_ipv4() == v4).map(IpNet::trunc).collect()
}

fn address_of(e: &Endpoint, v4: bool) -> Option<IpAddr> {
    e.ips.iter().map(IpNet::addr).find(|a| a.is_ipv4() == v4)
}

/// The steering this host programs: for every chain of every rule, the
/// hops whose segment network is present here (`present`).
pub fn steering(snap: &Snapshot, present: &[DesiredNetwork], me: &str) -> Vec<DesiredSteer> {
    let by_fq: BTreeMap<&FqName, &Network> = snap.networks.iter().map(|n| (&n.fq_name, n)).collect();
    let by_id: BTreeMap<uuid::Uuid, &Network> = snap.networks.iter().map(|n| (n.id, n)).collect();
    let services: BTreeMap<&FqName, &Service> = snap.services.iter().map(|s| (&s.fq_name, s)).collect();
    let here: BTreeSet<Vni> = present.iter().map(|n| n.vni).collect();
    let attached: BTreeSet<uuid::Uuid> = snap.networks.iter().flat_map(|n| n.policies.iter().copied()).collect();
    let mut out = Vec::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for policy in snap.policies.iter().filter(|p| attached.contains(&p.id)) {
        for rule in policy.rules.iter().filter(|r| !r.services.is_empty()) {
            let ends = match (&rule.src, &rule.dst) {
                (tessera_model::RuleEndpoint::Network(a), tessera_model::RuleEndpoint::Network(b)) => {
                    by_fq.get(a).zip(by_fq.get(b))
                }
                _ => None,
            };
            let Some((a, b)) = ends else { continue };
            // The policy applies where one of the rule's networks attaches it.
            if !(a.policies.contains(&policy.id) || b.policies.contains(&policy.id)) {
                continue;
            }
            // One chain per distinct rule, however many policies repeat it.
            if !seen.insert(format!("{rule}")) {
                continue;
            }
            chain(rule, a, b, &services, &by_id, snap, &here, me, &mut out);
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn chain(
    rule: &Rule,
    a: &Network,
    b: &Network,
    services: &BTreeMap<&FqName, &Service>,
    by_id: &BTreeMap<uuid::Uuid, &Network>,
    snap: &Snapshot,
    here: &BTreeSet<Vni>,
    me: &str,
    out: &mut Vec<DesiredSteer>,
) {
    let mut segment = a;
    for name in &rule.services {
        // A missing service fails closed: the chain's traffic is dropped
        // where it would have gone to it.
        let service = services.get(name).copied();
        let next = service.and_then(|s| by_id.get(&s.right).copied());
        let found = service.map(|s| instances(s, &snap.endpoints)).unwrap_or_default();
        let fail = service.map_or(FailMode::Closed, |s| s.fail);
        let skip = |left: bool| -> Vec<String> {
            found
                .iter()
                .map(|i| if left { i.left } else { i.right })
                .filter(|p| p.host == me)
                .map(|p| host_veth_name(p.id))
                .collect()
        };
        let label = |side: &str| format!("{} {side}", name.name());
        for v4 in [true, false] {
            let (src, dst) = (family(a.subnets.iter().map(|s| &s.cidr), v4), family(b.subnets.iter().map(|s| &s.cidr), v4));
            if src.is_empty() || dst.is_empty() {
                continue;
            }
            let targets = |left: bool, vni: Vni| -> Vec<SteerTarget> {
                found
                    .iter()
                    .map(|i| if left { i.left } else { i.right })
                    .filter_map(|p| {
                        let address = address_of(p, v4)?;
                        let dev = if p.host == me { bridge_name(vni) } else { vxlan_name(vni) };
                        Some(SteerTarget { address, dev })
                    })
                    .collect()
            };
            let forward = targets(true, segment.vni);
            if here.contains(&segment.vni) && !(forward.is_empty() && fail == FailMode::Open) {
                out.push(DesiredSteer {
                    vni: segment.vni,
                    label: label("left"),
                    src: src.clone(),
                    dst: dst.clone(),
                    protocol: protocol_number(rule.protocol),
                    src_ports: ranges(&rule.src_ports),
                    dst_ports: ranges(&rule.dst_ports),
                    reverse: false,
                    skip_ports: skip(true),
                    targets: forward,
                });
            }
            if let Some(next) = next {
                let back = targets(false, next.vni);
                if here.contains(&next.vni) && !(back.is_empty() && fail == FailMode::Open) {
                    out.push(DesiredSteer {
                        vni: next.vni,
                        label: label("right"),
                        src: dst,
                        dst: src,
                        protocol: protocol_number(rule.protocol),
                        src_ports: ranges(&rule.dst_ports),
                        dst_ports: ranges(&rule.src_ports),
                        reverse: true,
                        skip_ports: skip(false),
                        targets: back,
                    });
                }
            }
        }
        match next {
            Some(n) => segment = n,
            None => return,
        }
    }
}
