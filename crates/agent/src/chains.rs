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
use tessera_model::service::{instances_of, port_healthy};
use tessera_model::watch::Snapshot;
use tessera_model::{Endpoint, FailMode, FqName, InterfaceRole, Network, Protocol, Rule, Service, Vni};

/// One healthy instance of a service: its left and right ports.
struct Instance<'a> {
    left: &'a Endpoint,
    right: &'a Endpoint,
}

/// The healthy instances of `service`, ordered by name (the same on every
/// host).
fn instances<'a>(service: &Service, endpoints: &'a [Endpoint]) -> Vec<Instance<'a>> {
    instances_of(service.id, endpoints)
        .into_values()
        .filter(|ports| ports.iter().all(|p| port_healthy(p)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_model::{EndpointStatus, Health, MacAddr, Owner, Policy, Rules, ServicePort, Subnet};
    use uuid::Uuid;

    fn net(n: u128, vni: u32, cidr: &str, policies: Vec<Uuid>) -> Network {
        let cidr: IpNet = cidr.parse().unwrap();
        Network {
            domain: None,
            snat: None,
            id: Uuid::from_u128(n),
            fq_name: format!("default-domain:admin:n{n}").parse().unwrap(),
            vni: Vni::new(vni).unwrap(),
            subnets: vec![Subnet { cidr, gateway: None, pools: vec![], dns_servers: vec![] }],
            import_targets: vec![],
            export_targets: vec![],
            shared: false,
            shared_with: vec![],
            external: false,
            policies,
            labels: Default::default(),
        }
    }

    fn port(n: u128, network: u128, host: &str, ip: &str, instance: &str, role: InterfaceRole, healthy: bool) -> Endpoint {
        Endpoint {
            id: Uuid::from_u128(n),
            name: format!("e{n}"),
            network: Uuid::from_u128(network),
            host: host.into(),
            mac: MacAddr::local_from([0, 0, 0, 0, 0, n as u8]),
            ips: vec![ip.parse().unwrap()],
            owner: Owner {
                netns: Some(format!("/run/netns/{instance}")),
                own_table: true,
                service: Some(ServicePort { service: Uuid::from_u128(99), instance: instance.into(), role }),
                ..Default::default()
            },
            status: EndpointStatus::Active,
            status_message: None,
            ports: vec![],
            health: Some(Health { healthy, message: None }),
        }
    }

    fn desired(vni: u32) -> DesiredNetwork {
        DesiredNetwork {
            vni: Vni::new(vni).unwrap(),
            zone: 1,
            subnets: vec![],
            local: vec![],
            remote: vec![],
            imports: vec![],
            egress: None,
            domain: None,
        }
    }

    /// red (n1, VNI 100) and green (n2, VNI 200), a policy attached to both
    /// whose rule steers TCP 80 from red to green through service fw (n99),
    /// with instances a (on h3) and b (on h2, unhealthy when `b_healthy` is
    /// false).
    fn snapshot(b_healthy: bool, fail: FailMode) -> Snapshot {
        let policy = Uuid::from_u128(50);
        let rule =
            Rule::parse("rules[0]", "pass tcp n1 any > n2 80 apply-service fw", &tessera_model::ProjectName::default_project())
                .unwrap();
        Snapshot {
            networks: vec![net(1, 100, "10.1.0.0/24", vec![policy]), net(2, 200, "10.2.0.0/24", vec![policy])],
            endpoints: std::sync::Arc::new(vec![
                port(11, 1, "h3", "10.1.0.10/24", "a", InterfaceRole::Left, true),
                port(12, 2, "h3", "10.2.0.10/24", "a", InterfaceRole::Right, true),
                port(21, 1, "h2", "10.1.0.20/24", "b", InterfaceRole::Left, b_healthy),
                port(22, 2, "h2", "10.2.0.20/24", "b", InterfaceRole::Right, true),
            ]),
            policies: vec![Policy {
                id: policy,
                fq_name: "default-domain:admin:p".parse().unwrap(),
                rules: Rules::from_vec(vec![rule]),
            }],
            services: vec![Service {
                id: Uuid::from_u128(99),
                fq_name: "default-domain:admin:fw".parse().unwrap(),
                template: Uuid::from_u128(98),
                left: Uuid::from_u128(1),
                right: Uuid::from_u128(2),
                management: None,
                fail,
                probe: None,
                run: None,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_chain_steers_forward_in_the_left_network_and_answers_in_the_right() {
        let snap = snapshot(true, FailMode::Closed);
        let steers = steering(&snap, &[desired(100), desired(200)], "h3");
        assert_eq!(steers.len(), 2, "{steers:#?}");
        let (fwd, back) = (&steers[0], &steers[1]);
        assert_eq!((fwd.vni.get(), fwd.reverse, fwd.protocol), (100, false, Some(6)));
        assert_eq!(fwd.src, vec!["10.1.0.0/24".parse::<IpNet>().unwrap()]);
        assert_eq!(fwd.dst, vec!["10.2.0.0/24".parse::<IpNet>().unwrap()]);
        assert_eq!((fwd.src_ports.clone(), fwd.dst_ports.clone()), (vec![], vec![(80, 80)]));
        // Instances by name: a is local here (the bridge), b is remote (the tunnel).
        assert_eq!(
            fwd.targets,
            vec![
                SteerTarget { address: "10.1.0.10".parse().unwrap(), dev: "tb100".into() },
                SteerTarget { address: "10.1.0.20".parse().unwrap(), dev: "tx100".into() },
            ]
        );
        assert_eq!(fwd.skip_ports, vec![host_veth_name(Uuid::from_u128(11))]);
        assert_eq!((back.vni.get(), back.reverse), (200, true));
        assert_eq!((back.src_ports.clone(), back.dst_ports.clone()), (vec![(80, 80)], vec![]));
        assert_eq!(back.src, fwd.dst);
        assert_eq!(back.targets[0], SteerTarget { address: "10.2.0.10".parse().unwrap(), dev: "tb200".into() });
        // A host where only red is present steers forward only.
        let h1 = steering(&snap, &[desired(100)], "h1");
        assert_eq!(h1.len(), 1);
        assert!(h1[0].targets.iter().all(|t| t.dev == "tx100"));
    }

    #[test]
    fn an_unhealthy_instance_leaves_and_none_left_fails_closed_or_open() {
        let steers = steering(&snapshot(false, FailMode::Closed), &[desired(100), desired(200)], "h1");
        assert_eq!(steers[0].targets.len(), 1, "b's left is unhealthy: b is out of both directions");
        assert_eq!(steers[1].targets.len(), 1);
        let mut none = snapshot(true, FailMode::Closed);
        std::sync::Arc::make_mut(&mut none.endpoints)
            .iter_mut()
            .for_each(|e| e.health = Some(Health { healthy: false, message: None }));
        let closed = steering(&none, &[desired(100), desired(200)], "h1");
        assert_eq!(closed.len(), 2);
        assert!(closed.iter().all(|s| s.targets.is_empty()), "closed: dropped");
        for s in none.services.iter_mut() {
            s.fail = FailMode::Open;
        }
        assert!(steering(&none, &[desired(100), desired(200)], "h1").is_empty(), "open: the plain pass");
        // A policy attached to neither network steers nothing.
        let mut detached = snapshot(true, FailMode::Closed);
        detached.networks.iter_mut().for_each(|n| n.policies.clear());
        assert!(steering(&detached, &[desired(100), desired(200)], "h1").is_empty());
    }
}
