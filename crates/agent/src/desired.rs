//! From the mirrored intent to the desired data plane of this host (pure).
//!
//! A network is present on a host while at least one of its endpoints lives
//! there. Its VRF then holds the network's subnets and, for every endpoint of
//! the network on another *known* host, a route through that host's VTEP; an
//! endpoint whose host is no longer registered contributes nothing, so
//! removing a host drops its routes everywhere.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;

use tessera_dataplane::desired::{DesiredHost, DesiredNetwork, DesiredSubnet, LocalEndpoint, RemoteEndpoint};
use tessera_model::watch::Snapshot;
use tessera_model::{Endpoint, Vni};
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

/// Conntrack zones for a host's networks: the low 16 bits of the VNI (0
/// becomes 1), probing upwards on collision, assigned in VNI order so the
/// same set of networks always gets the same zones.
pub fn zones(vnis: &BTreeSet<Vni>) -> BTreeMap<Vni, u16> {
    let mut used = BTreeSet::new();
    let mut out = BTreeMap::new();
    for v in vnis {
        let mut z = (v.get() & 0xffff) as u16;
        loop {
            if z != 0 && used.insert(z) {
                break;
            }
            z = z.wrapping_add(1);
        }
        out.insert(*v, z);
    }
    out
}

/// Computes the desired data plane of `me` from `snap`.
pub fn desired_host(snap: &Snapshot, me: &HostIdentity) -> (DesiredHost, Skipped) {
    let underlay: HashMap<&str, IpAddr> = snap.hosts.iter().map(|h| (h.name.as_str(), h.underlay_ip)).collect();
    let mut by_network: BTreeMap<Uuid, Vec<&Endpoint>> = BTreeMap::new();
    for e in &snap.endpoints {
        by_network.entry(e.network).or_default().push(e);
    }
    let mut skipped = Skipped::default();
    let mut networks: Vec<DesiredNetwork> = Vec::new();
    for net in &snap.networks {
        let Some(eps) = by_network.get(&net.id) else { continue };
        let mut local = Vec::new();
        let mut remote = Vec::new();
        for e in eps {
            if e.host == me.name {
                match &e.owner.netns {
                    Some(ns) if !ns.is_empty() => local.push(LocalEndpoint {
                        id: e.id,
                        mac: e.mac,
                        ips: e.ips.clone(),
                        netns: PathBuf::from(ns),
                        ifname: e.owner.ifname.clone().unwrap_or_else(|| DEFAULT_IFNAME.into()),
                    }),
                    _ => skipped.0.push((e.id, "the endpoint names no network namespace".into())),
                }
            } else if let Some(host_underlay) = underlay.get(e.host.as_str()) {
                if *host_underlay == me.underlay_ip {
                    continue;
                }
                remote.extend(e.ips.iter().map(|ip| RemoteEndpoint { ip: ip.addr(), host_underlay: *host_underlay }));
            }
        }
        if local.is_empty() {
            continue;
        }
        local.sort_by_key(|l| l.id);
        remote.sort_by_key(|r| (r.ip, r.host_underlay));
        networks.push(DesiredNetwork {
            vni: net.vni,
            zone: 0,
            subnets: net.subnets.iter().map(|s| DesiredSubnet { cidr: s.cidr, gateway: s.gateway }).collect(),
            local,
            remote,
        });
    }
    networks.sort_by_key(|n| n.vni);
    let z = zones(&networks.iter().map(|n| n.vni).collect());
    for n in &mut networks {
        n.zone = z[&n.vni];
    }
    let host = DesiredHost {
        underlay_ip: me.underlay_ip,
        underlay_ifname: me.underlay_ifname.clone(),
        underlay_mtu: me.underlay_mtu,
        networks,
    };
    (host, skipped)
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
            id: Uuid::from_u128(n),
            fq_name: format!("default-domain:admin:n{n}").parse().unwrap(),
            vni: Vni::new(vni).unwrap(),
            subnets: vec![Subnet { cidr, gateway: tessera_ipam::default_gateway(cidr), pools: vec![], dns_servers: vec![] }],
            import_targets: vec![],
            export_targets: vec![],
            shared: false,
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
        }
    }

    fn host(name: &str, ip: &str) -> Host {
        Host { name: name.into(), underlay_ip: ip.parse().unwrap(), last_seen: 0 }
    }

    fn snap() -> Snapshot {
        Snapshot {
            revision: 1,
            networks: vec![net(1, 4096, "192.168.10.0/24"), net(2, 4097, "192.168.20.0/24"), net(3, 4098, "10.0.0.0/24")],
            endpoints: vec![
                ep(11, 1, "h1", "192.168.10.2/24"),
                ep(12, 1, "h2", "192.168.10.3/24"),
                ep(21, 2, "h2", "192.168.20.2/24"),
                ep(31, 3, "h3", "10.0.0.2/24"),
            ],
            hosts: vec![host("h1", "10.99.0.1"), host("h2", "10.99.0.2"), host("h3", "10.99.0.3")],
            policies: vec![],
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
        s.endpoints[0].owner.netns = None;
        let (d, skipped) = desired_host(&s, &me());
        assert!(d.networks.is_empty());
        assert_eq!(skipped.0.len(), 1);
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
