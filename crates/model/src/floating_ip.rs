//! Floating IPs: addresses of an external network, each translated one to
//! one to the fixed address of an endpoint by the gateway hosts of that
//! external network; and which gateway carries a network's traffic to the
//! outside.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Host, ProjectName};

/// The IPAM owner of a floating IP's address: `floating-ip:<uuid>`.
pub const FLOATING_IP_OWNER_PREFIX: &str = "floating-ip:";
/// The IPAM owner of a network's SNAT address: `snat:<network uuid>`.
pub const SNAT_OWNER_PREFIX: &str = "snat:";

/// An address of an external network, optionally associated with an
/// endpoint's fixed address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FloatingIp {
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    /// The project that allocated it.
    pub project: ProjectName,
    /// The external network it belongs to.
    #[schema(value_type = String, format = Uuid)]
    pub network: Uuid,
    #[schema(value_type = String, example = "203.0.113.10")]
    pub address: IpAddr,
    /// The endpoint it is associated with, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Uuid)]
    pub endpoint: Option<Uuid>,
    /// The endpoint's address it translates to (of the floating IP's family).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "10.1.0.2")]
    pub fixed_ip: Option<IpAddr>,
}

/// Request to allocate a floating IP (`POST /v1/floating-ips`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FloatingIpCreate {
    /// The external network, by name, fq name or UUID.
    pub network: String,
    /// The project (`domain:project`); the caller's, or
    /// `default-domain:admin`, when absent.
    #[serde(default)]
    pub project: Option<String>,
    /// A chosen address; the lowest free one of the first subnet otherwise.
    #[serde(default)]
    pub address: Option<String>,
    /// The family to allocate from when no address is given: `4` or `6`.
    #[serde(default)]
    pub family: Option<u8>,
}

/// Request to associate a floating IP with an endpoint
/// (`PUT /v1/floating-ips/{id}/association`). Associating it again with the
/// same endpoint and address changes nothing; with another, moves it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FloatingIpAssociate {
    /// The endpoint's UUID.
    pub endpoint: String,
    /// Which of the endpoint's addresses; the one of the floating IP's
    /// family when absent.
    #[serde(default)]
    pub fixed_ip: Option<String>,
}

/// A network's way out: source NAT through an external network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Snat {
    /// The external network.
    #[schema(value_type = String, format = Uuid)]
    pub network: Uuid,
    /// The addresses (one per family of the external network) the
    /// network's flows leave with.
    #[schema(value_type = Vec<String>)]
    pub addresses: Vec<IpAddr>,
}

/// The gateway (of those registered for `external` and alive) that carries
/// the traffic of the network of VNI `vni` to and from the outside:
/// rendezvous hashing over the hosts' names, so every host computes the
/// same one, networks spread over the gateways, and only the networks of a
/// gateway that goes away move.
pub fn owner<'a>(vni: u32, external: Uuid, hosts: impl IntoIterator<Item = &'a Host>) -> Option<&'a Host> {
    hosts
        .into_iter()
        .filter(|h| h.alive && h.gateways.iter().any(|g| g.network == external))
        .max_by_key(|h| (score(vni, &h.name), h.name.clone()))
}

fn score(vni: u32, name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in vni.to_be_bytes().iter().chain(name.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // A final mix, so names that differ in their last byte spread too.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::HostGateway;

    fn gw(name: &str, ext: Uuid, alive: bool) -> Host {
        Host {
            name: name.into(),
            underlay_ip: "10.0.0.1".parse().unwrap(),
            last_seen: 0,
            gateways: vec![HostGateway { network: ext, interface: "eth1".into() }],
            alive,
        }
    }

    #[test]
    fn owner_is_stable_spreads_and_skips_dead_gateways() {
        let ext = Uuid::new_v4();
        let hosts = vec![gw("g1", ext, true), gw("g2", ext, true), gw("g3", ext, false)];
        let mut seen = std::collections::BTreeSet::new();
        for vni in 1..200 {
            let o = owner(vni, ext, &hosts).unwrap();
            assert_ne!(o.name, "g3");
            assert_eq!(owner(vni, ext, hosts.iter().rev()).unwrap().name, o.name);
            seen.insert(o.name.clone());
        }
        assert_eq!(seen.len(), 2);
        assert!(owner(1, Uuid::new_v4(), &hosts).is_none());
        // Only the networks of the gateway that went away move.
        let fewer = vec![gw("g1", ext, true), gw("g2", ext, false)];
        for vni in 1..200 {
            if owner(vni, ext, &hosts).unwrap().name == "g1" {
                assert_eq!(owner(vni, ext, &fewer).unwrap().name, "g1");
            }
        }
    }
}
