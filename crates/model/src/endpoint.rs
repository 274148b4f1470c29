//! Endpoints (ports): one interface of a container or namespace in a network.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A unicast, locally administered address made from `random` bytes: the
    /// multicast bit is cleared and the locally-administered bit set.
    pub fn local_from(mut random: [u8; 6]) -> Self {
        random[0] = (random[0] & 0xfe) | 0x02;
        MacAddr(random)
    }

    pub fn is_unicast(&self) -> bool {
        self.0[0] & 0x01 == 0
    }

    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(format!("{s:?} is not a MAC address such as 02:00:00:00:00:01"));
        }
        let mut out = [0u8; 6];
        for (o, p) in out.iter_mut().zip(&parts) {
            if p.len() != 2 {
                return Err(format!("{s:?} is not a MAC address such as 02:00:00:00:00:01"));
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| format!("{s:?} is not a MAC address such as 02:00:00:00:00:01"))?;
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

impl TryFrom<String> for MacAddr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(m: MacAddr) -> String {
        m.to_string()
    }
}

/// Who an endpoint belongs to, as the runtime that attached it knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Owner {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// Path of the network namespace, such as `/proc/1234/ns/net` or `/run/netns/c1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_endpoint_id: Option<String>,
    /// Interface name inside the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    /// The address reservation (its owner token) the endpoint's addresses
    /// come from. Creating the endpoint adopts the addresses that token holds;
    /// deleting it returns every address of the endpoint to the reservation,
    /// which its owner then releases (Docker's IPAM does at `ReleaseAddress`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<String>,
    /// The container configures its interface itself, by DHCP: Tessera
    /// sets its MAC, MTU and link, and its host's agent answers its client
    /// with the endpoint's addresses.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dhcp: bool,
    /// The interface gets a routing table of its own in the container
    /// (dockwall's scheme): its default route there, and what arrives on
    /// it is routed by the other such interfaces' tables.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub own_table: bool,
    /// The interface is one of a service instance's (`left`, `right`,
    /// `mgmt`); such an endpoint has its own table, and forwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<crate::ServicePort>,
}

impl Owner {
    /// Checks what of the owner reaches a host's kernel (the namespace and
    /// the interface name) and bounds the rest; fields are named
    /// `owner.netns`, `owner.ifname`, ...
    pub fn check(&self) -> Result<(), crate::FieldError> {
        if let Some(ns) = &self.netns {
            crate::limits::check_netns("owner.netns", ns)?;
        }
        if let Some(i) = &self.ifname {
            crate::limits::check_ifname("owner.ifname", i)?;
        }
        if let Some(sp) = &self.service {
            crate::limits::check_text("owner.service.instance", &sp.instance, crate::limits::MAX_ID)?;
            if sp.instance.is_empty() {
                return Err(crate::FieldError::new("owner.service.instance", "is empty"));
            }
        }
        for (field, v) in [
            ("owner.container_id", &self.container_id),
            ("owner.docker_endpoint_id", &self.docker_endpoint_id),
            ("owner.reservation", &self.reservation),
        ] {
            if let Some(v) = v {
                crate::limits::check_text(field, v, crate::limits::MAX_ID)?;
            }
        }
        Ok(())
    }
}

/// Life cycle of an endpoint as its host's agent reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EndpointStatus {
    /// Stored; the host's agent has not yet programmed it.
    #[default]
    Pending,
    /// Programmed in the host's data plane.
    Active,
    /// The agent failed to program it; see the agent's log.
    Failed,
}

/// An endpoint (port): a MAC and one address per address family of its network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Endpoint {
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    /// Unique within the network; a create with an existing name and the
    /// same request returns the existing endpoint (safe retries).
    pub name: String,
    #[schema(value_type = String, format = Uuid)]
    pub network: Uuid,
    /// The host (agent) that owns the data plane of this endpoint.
    pub host: String,
    pub mac: MacAddr,
    /// Addresses with the prefix length of their subnet.
    #[schema(value_type = Vec<String>, example = json!(["192.168.10.2/24"]))]
    pub ips: Vec<IpNet>,
    pub owner: Owner,
    pub status: EndpointStatus,
    /// Why the host's agent could not program it (with `failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
    /// Ports of its host that lead to it (`docker run -p`, CNI
    /// `portMappings`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PublishedPort>,
    /// A service port's health, as its host's agent last reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::Health>,
}

/// The transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PortProtocol {
    Tcp,
    Udp,
}

impl PortProtocol {
    pub fn name(self) -> &'static str {
        match self {
            PortProtocol::Tcp => "tcp",
            PortProtocol::Udp => "udp",
        }
    }
}

/// A port of the endpoint's host that leads to a port of the endpoint.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishedPort {
    pub protocol: PortProtocol,
    /// The host address it is published on; every address of the host
    /// (but loopback) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "127.0.0.1")]
    pub host_ip: Option<IpAddr>,
    /// The host's port; in a request, 0 takes a free one of 32768-60999.
    pub host_port: u16,
    pub container_port: u16,
}

/// Request to set the ports published for an endpoint
/// (`PUT /v1/endpoints/{id}/ports`); it replaces the list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointPorts {
    pub ports: Vec<PublishedPort>,
}

/// Request to report an endpoint's status (`PUT /v1/endpoints/{id}/status`),
/// which its host's agent sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointStatusUpdate {
    pub status: EndpointStatus,
    /// Why the endpoint could not be programmed; at most 1,024 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Request to move an endpoint to the namespace its container has now
/// (`PUT /v1/endpoints/{id}/netns`), which its host's agent sends when a
/// container it attached through Docker was restarted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointNetns {
    pub netns: String,
}

/// Request to create an endpoint (`POST /v1/endpoints`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointCreate {
    /// Network name (bare or fully qualified) or UUID.
    pub network: String,
    /// Unique within the network; generated when absent.
    #[serde(default)]
    pub name: Option<String>,
    pub host: String,
    /// A chosen MAC; generated (locally administered, unique) when absent.
    #[serde(default)]
    pub mac: Option<String>,
    /// Static addresses, at most one per address family; the others are allocated.
    #[serde(default)]
    pub ips: Vec<String>,
    #[serde(default)]
    pub owner: Owner,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_mac_is_local_unicast() {
        let m = MacAddr::local_from([0xff; 6]);
        assert_eq!(m.to_string(), "fe:ff:ff:ff:ff:ff");
        assert!(m.is_unicast());
        assert_eq!(m.0[0] & 0x02, 0x02);
    }

    #[test]
    fn mac_parses_and_displays() {
        let m: MacAddr = "02:1A:74:99:fe:5f".parse().unwrap();
        assert_eq!(m.to_string(), "02:1a:74:99:fe:5f");
        assert!("02:1a:74:99:fe".parse::<MacAddr>().is_err());
        assert!("02:1a:74:99:fe:5g".parse::<MacAddr>().is_err());
    }
}
