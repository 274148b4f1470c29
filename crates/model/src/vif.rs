//! The interface table behind `tessera vif list` (the agent's `GET /v1/vifs`):
//! every link of a data plane's namespace, its Tessera role, addresses, state
//! and counters.

use crate::{MacAddr, Vni};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The role of an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VifKind {
    /// A device without a software kind (a NIC), such as the underlay.
    Physical,
    /// Any other interface of the host: loopback, other software devices.
    Host,
    /// The host side of an endpoint's veth (`tv*`).
    Endpoint,
    /// A network's VXLAN device (`tx*`).
    Tunnel,
    /// A network's bridge (`tb*`).
    Bridge,
    /// A gateway's uplink: where an external network's addresses live.
    Uplink,
}

/// What the agent's DHCP server did for one endpoint's port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DhcpCounts {
    pub requests: u64,
    pub acks: u64,
    pub naks: u64,
    /// Ignored: not a message a server answers, or beyond the client's rate.
    pub ignored: u64,
}

/// An external address a gateway translates on one of its uplinks, with
/// what went through it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Translation {
    pub external: std::net::IpAddr,
    /// The network it translates for.
    pub vni: Option<Vni>,
    /// A floating IP's endpoint address; `None` for a network's SNAT address.
    pub fixed: Option<std::net::IpAddr>,
    /// Packets and bytes that came in for the address, and that left with it.
    pub in_packets: u64,
    pub in_bytes: u64,
    pub out_packets: u64,
    pub out_bytes: u64,
}

/// One row of the interface table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VifEntry {
    pub name: String,
    pub index: u32,
    pub kind: VifKind,
    pub mac: Option<MacAddr>,
    pub addrs: Vec<IpNet>,
    /// The network (VRF) the interface belongs to.
    pub vni: Option<Vni>,
    /// For an endpoint: the bridge it is a port of.
    pub master: Option<String>,
    /// Interface flags, lower case, in the order `ip link` shows them:
    /// `loopback`, `broadcast`, `noarp`, `promisc`, `multicast`, `up`,
    /// `lower_up`, `running`.
    pub flags: Vec<String>,
    pub mtu: u32,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
    /// On a gateway's uplink: the floating IPs and SNAT addresses it translates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub translations: Vec<Translation>,
    /// On an endpoint's port: what the DHCP server did for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp: Option<DhcpCounts>,
    /// On a service instance's port: `SERVICE/INSTANCE ROLE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// On an endpoint's port: the path its established flows take,
    /// `ebpf`, or `kernel` with the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}
