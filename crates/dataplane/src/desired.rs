//! The desired state of the data plane of one host, and the names and numbers
//! derived from it.
//!
//! Pure values: the agent builds a [`DesiredHost`] from what the controller
//! streams, the planner compares it with what the kernel holds. Every kernel
//! name Tessera uses (`tb<vni>`, `tx<vni>`, `tv<uuid8>`), every table id and
//! every MAC address it invents is computed here (from the prefixes and
//! numbers of [`crate::names`]), so the planner, the observer and the tests
//! agree on them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tessera_model::{MacAddr, Vni};
use uuid::Uuid;

/// Kernel parameter keys, here for the users of [`host_sysctls`] and the
/// like.
pub use crate::names::SysctlKey;
use crate::names::{BRIDGE_PREFIX, STEER_TARGETS_MAX, TABLE_BASE, VXLAN_PREFIX};

/// The IANA VXLAN UDP port.
pub const VXLAN_PORT: u16 = 4789;

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// Everything Tessera wants in the kernel of one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredHost {
    /// The host's address on the underlay: the local end of every VXLAN tunnel.
    pub underlay_ip: IpAddr,
    /// The device that holds `underlay_ip`; VXLAN devices are bound to it.
    pub underlay_ifname: String,
    /// MTU of the underlay device; overlay MTUs are derived from it.
    pub underlay_mtu: u32,
    /// The underlay addresses of the other hosts of the fabric: VXLAN is
    /// accepted from these (and from the hosts of remote endpoints) only.
    #[serde(default)]
    pub peers: Vec<IpAddr>,
    /// The networks that have at least one endpoint on this host (or that the
    /// agent otherwise wants present, such as a network whose routes a local
    /// network imports: its VXLAN device carries the traffic towards it).
    pub networks: Vec<DesiredNetwork>,
    /// Conntrack zones shared by two networks that route to each other, so
    /// that both directions of a flow between them meet in one zone.
    #[serde(default)]
    pub pair_zones: Vec<PairZone>,
    /// The firewall programs of new flows between networks (or within one)
    /// that start on this host (from a local network's bridge) or end here
    /// (arriving through a tunnel for a local endpoint); a pair without a
    /// program passes everything.
    #[serde(default)]
    pub policies: Vec<PairPolicy>,
    /// Pairs of networks present here whose flows neither start nor end
    /// here: the fingerprint of their program's inputs, so that a change
    /// ends any of their flows here too.
    #[serde(default)]
    pub watches: Vec<PairWatch>,
    /// The interfaces where the outside is, on a gateway host.
    #[serde(default)]
    pub uplinks: Vec<DesiredUplink>,
    /// Ports of this host that lead to local endpoints.
    #[serde(default)]
    pub published: Vec<DesiredPublished>,
    /// Traffic of service chains this host steers to service instances.
    #[serde(default)]
    pub steering: Vec<DesiredSteer>,
}

/// Traffic of a service chain that enters network `vni`'s VRF on this host
/// (from its bridge or its tunnel) and is routed to an instance of the
/// chain's next service instead of towards its destination (service
/// chaining, seed 002). Addresses are kept (in-network services), so a
/// packet is recognised by its five-tuple wherever it enters the network;
/// the instance is chosen by a hash of the five-tuple that every host
/// computes alike (the same seed, and with `reverse`, source and destination
/// swapped), so both directions of a flow take one instance on every host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredSteer {
    /// The network the packets travel in.
    pub vni: Vni,
    /// For people: the service and the hop (`fw1 left`), in the rule's comment.
    pub label: String,
    /// Source and destination prefixes, all of one address family.
    pub src: Vec<IpNet>,
    pub dst: Vec<IpNet>,
    /// The IP protocol number; any when `None`.
    pub protocol: Option<u8>,
    /// Inclusive port ranges (TCP, UDP and the like); empty means any.
    pub src_ports: Vec<(u16, u16)>,
    pub dst_ports: Vec<(u16, u16)>,
    /// The answers of the chain's flows: the hash takes the five-tuple with
    /// source and destination swapped.
    pub reverse: bool,
    /// Host ports (`tv…`) whose packets are not steered: the ports of the
    /// instances this hop steers to (what an instance sends back out of the
    /// interface it received on would come round again).
    pub skip_ports: Vec<String>,
    /// The healthy instances, in the order every host uses. Empty: the
    /// chain fails closed and the traffic is dropped.
    pub targets: Vec<SteerTarget>,
}

/// Where a steered packet goes: `via ADDRESS dev DEV onlink`, `DEV` the
/// network's bridge for an instance on this host, its tunnel otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SteerTarget {
    pub address: IpAddr,
    pub dev: String,
}

/// A port of the host published for a local endpoint of network `vni`:
/// what arrives for it (from anywhere but a network) is translated to
/// `fixed`:`container_port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredPublished {
    pub vni: Vni,
    pub protocol: tessera_model::PortProtocol,
    /// The host address it is published on (of `fixed`'s family); every
    /// address of the host when `None`.
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub fixed: IpAddr,
    pub container_port: u16,
}

/// An interface of a gateway host where an external network's addresses
/// live: the host answers ARP and neighbour discovery for the external
/// addresses of the networks it carries, and translates them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredUplink {
    pub ifname: String,
    /// The external network whose addresses live there.
    pub external: Vni,
    /// The SNAT port slice of this host ([`crate::names::snat_ports`]).
    pub slice: u16,
    /// The external addresses this host answers for on it.
    pub addresses: Vec<ExternalAddress>,
}

/// An external address of network `vni`, translated by its gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalAddress {
    pub vni: Vni,
    pub address: IpAddr,
    pub kind: ExternalKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExternalKind {
    /// One to one with an endpoint's fixed address.
    Floating { fixed: IpAddr },
    /// The network's outbound flows, with ports of the host's slice.
    Snat,
}

/// How a network's traffic to the outside leaves a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Egress {
    /// The external network the outside is reached through.
    pub external: Vni,
    /// The families the outside is reached in (the external network's).
    pub v4: bool,
    pub v6: bool,
    pub via: EgressVia,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EgressVia {
    /// This host is the network's gateway: out of its uplink, to the
    /// external network's gateways (on link when a family has none).
    Uplink { ifname: String, gateways: Vec<IpAddr> },
    /// Through the tunnel to the gateway host at this underlay address.
    Host(IpAddr),
}

/// A pair of networks this host does not enforce but whose flows it carries
/// (see [`DesiredHost::watches`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairWatch {
    pub src: Vni,
    pub dst: Vni,
    /// Changes whenever the pair's program may (`tessera_policy::Compiler::fingerprint`).
    pub fingerprint: u64,
}

/// The conntrack zone of flows between networks `a` and `b` (which import
/// each other's routes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairZone {
    pub a: Vni,
    pub b: Vni,
    pub zone: u16,
}

/// The program that decides new flows entering the host from network `src`'s
/// bridge towards network `dst` (`src == dst` for flows within a network).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairPolicy {
    pub src: Vni,
    pub dst: Vni,
    /// Evaluated in order; the flow passes when every list passes.
    pub lists: Vec<tessera_policy::RuleList>,
}

/// One network (one VRF) on a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredNetwork {
    pub vni: Vni,
    /// Conntrack zone of the network's traffic; unique per host, never 0.
    pub zone: u16,
    pub subnets: Vec<DesiredSubnet>,
    /// Endpoints attached on this host.
    pub local: Vec<LocalEndpoint>,
    /// Endpoints of this network on other hosts.
    pub remote: Vec<RemoteEndpoint>,
    /// Networks (present on the host) whose routes this network's VRF holds:
    /// their subnets through their bridge, their remote endpoints through
    /// their VXLAN device. None may overlap this network's subnets or each
    /// other.
    #[serde(default)]
    pub imports: Vec<Vni>,
    /// The way to the outside, when the network has one.
    #[serde(default)]
    pub egress: Option<Egress>,
    /// The DNS domain the agent's DHCP server hands out.
    #[serde(default)]
    pub domain: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredSubnet {
    pub cidr: IpNet,
    /// The gateway the containers use; held by the network's bridge.
    pub gateway: Option<IpAddr>,
    /// The DNS servers the agent's DHCP server hands out.
    #[serde(default)]
    pub dns: Vec<IpAddr>,
}

/// An endpoint attached on this host: a veth pair whose far end lives in the
/// container's network namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalEndpoint {
    pub id: Uuid,
    pub mac: MacAddr,
    /// Addresses with the prefix length of their subnet (`10.0.0.2/24`).
    pub ips: Vec<IpNet>,
    /// The container's network namespace: `/proc/PID/ns/net` or
    /// `/run/netns/NAME`.
    pub netns: PathBuf,
    /// Name of the interface inside the container (`eth0`).
    pub ifname: String,
    /// The container configures its addresses itself, by DHCP.
    #[serde(default)]
    pub dhcp: bool,
    /// The interface has a routing table of its own in the container.
    #[serde(default)]
    pub own_table: bool,
    /// A service instance's interface: it forwards traffic of other
    /// addresses, so anti-spoofing checks its MAC only, and its namespace
    /// forwards (no reverse-path filter).
    #[serde(default)]
    pub service: bool,
}

/// An endpoint of the network on another host, reached through VXLAN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteEndpoint {
    pub ip: IpAddr,
    /// Underlay address of the host that holds it.
    pub host_underlay: IpAddr,
}

/// Why a [`DesiredHost`] cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct DesiredError {
    /// Path of the offending field, such as `networks[1].local[0].ifname`.
    pub field: String,
    pub reason: String,
}

impl DesiredError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        DesiredError { field: field.into(), reason: reason.into() }
    }
}

/// `tb<vni>`: the network's bridge, its local L2 segment.
pub fn bridge_name(vni: Vni) -> String {
    format!("{BRIDGE_PREFIX}{}", vni.get())
}

/// `tx<vni>`: the network's VXLAN device.
pub fn vxlan_name(vni: Vni) -> String {
    format!("{VXLAN_PREFIX}{}", vni.get())
}

pub use tessera_model::names::host_veth_name;

/// The routing table that is the network's VRF.
pub fn table_id(vni: Vni) -> u32 {
    TABLE_BASE + vni.get()
}

/// The MAC address of every VXLAN device of the host whose underlay address is
/// `ip`: `0e:00:a:b:c:d` for IPv4 `a.b.c.d`; for IPv6 `0e` followed by five
/// bytes of the FNV-1a hash of the address (stable across builds and hosts).
/// Remote hosts compute the same value, so neighbour and FDB entries need no
/// exchange of MAC addresses.
pub fn vtep_mac(ip: IpAddr) -> MacAddr {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            MacAddr([0x0e, 0x00, a, b, c, d])
        }
        IpAddr::V6(v6) => {
            let h = fnv1a64(&v6.octets()).to_be_bytes();
            MacAddr([0x0e, h[0], h[1], h[2], h[3], h[4]])
        }
    }
}

/// The IPv6 link-local address (EUI-64 of [`vtep_mac`]) a host's tunnels
/// are reached at as a next hop: a network's default route towards its
/// gateway host is `via inet6 THIS dev tx<vni>`, for IPv4 too, so no
/// address of any network is taken for it.
pub fn vtep_next_hop(underlay: IpAddr) -> std::net::Ipv6Addr {
    let m = vtep_mac(underlay).0;
    std::net::Ipv6Addr::from([0xfe, 0x80, 0, 0, 0, 0, 0, 0, m[0] ^ 0x02, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]])
}

/// Parameters of a gateway's uplink: it answers ARP and NS at once for the
/// addresses it holds proxy entries for, and reverse-path filtering (blind
/// to the marks that route translated packets) is off.
pub fn uplink_sysctls(dev: &str) -> Vec<(SysctlKey, &'static str)> {
    vec![
        (SysctlKey::ipv4_conf(dev, "rp_filter"), "0"),
        (SysctlKey::ipv4_neigh(dev, "proxy_delay"), "0"),
        (SysctlKey::ipv6_conf(dev, "proxy_ndp"), "1"),
        (SysctlKey::ipv6_neigh(dev, "proxy_delay"), "0"),
    ]
}

/// The MAC address of a network's bridge (the containers' gateway MAC):
/// `0e:01:` + the 24-bit VNI + `:01`, the same on every host so that it never
/// changes under a container.
pub fn bridge_mac(vni: Vni) -> MacAddr {
    let [_, a, b, c] = vni.get().to_be_bytes();
    MacAddr([0x0e, 0x01, a, b, c, 0x01])
}

/// MTU of the overlay on an underlay of `underlay_mtu`: VXLAN costs 50 bytes
/// over IPv4 and 70 over IPv6.
pub fn overlay_mtu(underlay_ip: IpAddr, underlay_mtu: u32) -> u32 {
    let overhead = if underlay_ip.is_ipv4() { 50 } else { 70 };
    underlay_mtu.saturating_sub(overhead)
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Host-wide parameters the data plane needs: forwarding on; replies the
/// kernel makes for a packet (TCP resets and ICMP errors of `reject`) carry
/// the packet's firewall mark, so that an `ip rule fwmark` routes them in the
/// network's VRF.
pub fn host_sysctls() -> Vec<(SysctlKey, &'static str)> {
    vec![
        (SysctlKey("net/ipv4/ip_forward".into()), "1"),
        (SysctlKey("net/ipv6/conf/all/forwarding".into()), "1"),
        (SysctlKey("net/ipv4/fwmark_reflect".into()), "1"),
        (SysctlKey("net/ipv6/fwmark_reflect".into()), "1"),
    ]
}

/// Parameters of a network's bridge: it answers ARP and NS for every address
/// of the network at once (proxy, no delay; `proxy_arp_pvlan` also for
/// addresses behind the bridge itself, since its ports are isolated and all
/// traffic between two local endpoints is routed through the host, where the
/// firewall sees it), forwards, and never runs DAD on its gateway addresses.
/// Reverse-path filtering is off: the VRF is chosen by `ip rule`, which the
/// reverse-path check does not see.
pub fn bridge_sysctls(dev: &str) -> Vec<(SysctlKey, &'static str)> {
    vec![
        (SysctlKey::ipv4_conf(dev, "forwarding"), "1"),
        (SysctlKey::ipv4_conf(dev, "proxy_arp"), "1"),
        (SysctlKey::ipv4_conf(dev, "proxy_arp_pvlan"), "1"),
        (SysctlKey::ipv4_conf(dev, "rp_filter"), "0"),
        (SysctlKey::ipv4_neigh(dev, "proxy_delay"), "0"),
        (SysctlKey::ipv6_conf(dev, "forwarding"), "1"),
        (SysctlKey::ipv6_conf(dev, "proxy_ndp"), "1"),
        (SysctlKey::ipv6_conf(dev, "accept_dad"), "0"),
        (SysctlKey::ipv6_neigh(dev, "proxy_delay"), "0"),
    ]
}

/// Parameters a service instance's namespace gets when its interface
/// `ifname` (a service port) is configured, written inside that namespace:
/// it forwards the chain's traffic, whose source addresses are of other
/// networks, so reverse-path filtering (the stricter of `all` and the
/// interface's applies) is off.
pub fn service_sysctls(ifname: &str) -> Vec<(SysctlKey, &'static str)> {
    vec![
        (SysctlKey("net/ipv4/ip_forward".into()), "1"),
        (SysctlKey("net/ipv6/conf/all/forwarding".into()), "1"),
        (SysctlKey::ipv4_conf("all", "rp_filter"), "0"),
        (SysctlKey::ipv4_conf(ifname, "rp_filter"), "0"),
    ]
}

/// Parameters of a network's VXLAN device.
pub fn vxlan_sysctls(dev: &str) -> Vec<(SysctlKey, &'static str)> {
    vec![
        (SysctlKey::ipv4_conf(dev, "forwarding"), "1"),
        (SysctlKey::ipv4_conf(dev, "rp_filter"), "0"),
        (SysctlKey::ipv6_conf(dev, "forwarding"), "1"),
        (SysctlKey::ipv6_conf(dev, "accept_dad"), "0"),
    ]
}

fn ifname_error(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("must not be empty".into())
    } else if name.len() > IFNAME_MAX {
        Some(format!("{name:?} is longer than {IFNAME_MAX} bytes"))
    } else if name == "." || name == ".." || name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        Some(format!("{name:?} is not a valid interface name"))
    } else {
        None
    }
}

impl DesiredNetwork {
    /// The gateway of the subnet that contains `ip`, if that subnet has one.
    pub fn gateway_for(&self, ip: IpAddr) -> Option<IpAddr> {
        self.subnets.iter().find(|s| s.cidr.contains(&ip)).and_then(|s| s.gateway)
    }
}

impl DesiredHost {
    /// MTU of every overlay interface (VXLAN devices, bridges, veths).
    pub fn overlay_mtu(&self) -> u32 {
        overlay_mtu(self.underlay_ip, self.underlay_mtu)
    }

    /// Checks what the planner relies on: unique VNIs, zones, endpoint ids and
    /// interface names; addresses inside the network's subnets; gateways
    /// inside their subnet; remote hosts of the underlay's address family.
    pub fn validate(&self) -> Result<(), DesiredError> {
        if let Some(reason) = ifname_error(&self.underlay_ifname) {
            return Err(DesiredError::new("underlay_ifname", reason));
        }
        if self.overlay_mtu() < 576 {
            return Err(DesiredError::new("underlay_mtu", format!("{} leaves an overlay MTU below 576", self.underlay_mtu)));
        }
        let mut vnis = BTreeSet::new();
        let mut zones = BTreeSet::new();
        let mut veths: BTreeMap<String, Uuid> = BTreeMap::new();
        for (n, net) in self.networks.iter().enumerate() {
            let at = |f: &str| format!("networks[{n}].{f}");
            if !vnis.insert(net.vni) {
                return Err(DesiredError::new(at("vni"), format!("VNI {} appears twice", net.vni)));
            }
            if net.zone == 0 {
                return Err(DesiredError::new(at("zone"), "zone 0 is the host's own; use 1..=65535"));
            }
            if !zones.insert(net.zone) {
                return Err(DesiredError::new(at("zone"), format!("zone {} is used by two networks", net.zone)));
            }
            for (s, sub) in net.subnets.iter().enumerate() {
                if let Some(gw) = sub.gateway {
                    if !sub.cidr.contains(&gw) {
                        return Err(DesiredError::new(
                            at(&format!("subnets[{s}].gateway")),
                            format!("{gw} is outside {}", sub.cidr),
                        ));
                    }
                }
            }
            let mut seen_ips = BTreeSet::new();
            for (e, ep) in net.local.iter().enumerate() {
                let at_ep = |f: &str| at(&format!("local[{e}].{f}"));
                if let Some(reason) = ifname_error(&ep.ifname) {
                    return Err(DesiredError::new(at_ep("ifname"), reason));
                }
                if !ep.mac.is_unicast() {
                    return Err(DesiredError::new(at_ep("mac"), format!("{} is not unicast", ep.mac)));
                }
                let veth = host_veth_name(ep.id);
                if let Some(other) = veths.insert(veth.clone(), ep.id) {
                    return Err(DesiredError::new(
                        at_ep("id"),
                        format!("endpoints {other} and {} share the host interface name {veth}", ep.id),
                    ));
                }
                for (i, ip) in ep.ips.iter().enumerate() {
                    let Some(sub) = net.subnets.iter().find(|s| s.cidr.contains(&ip.addr())) else {
                        return Err(DesiredError::new(
                            at_ep(&format!("ips[{i}]")),
                            format!("{ip} is in none of the network's subnets"),
                        ));
                    };
                    if sub.cidr.prefix_len() != ip.prefix_len() {
                        return Err(DesiredError::new(
                            at_ep(&format!("ips[{i}]")),
                            format!("{ip} must have the prefix length of {}", sub.cidr),
                        ));
                    }
                    if sub.gateway == Some(ip.addr()) {
                        return Err(DesiredError::new(
                            at_ep(&format!("ips[{i}]")),
                            format!("{} is the subnet's gateway", ip.addr()),
                        ));
                    }
                    if !seen_ips.insert(ip.addr()) {
                        return Err(DesiredError::new(
                            at_ep(&format!("ips[{i}]")),
                            format!("{} is used twice in the network", ip.addr()),
                        ));
                    }
                }
            }
            for (i, imp) in net.imports.iter().enumerate() {
                let at_imp = at(&format!("imports[{i}]"));
                let Some(other) = self.networks.iter().find(|o| o.vni == *imp) else {
                    return Err(DesiredError::new(at_imp, format!("VNI {imp} is not a network of this host")));
                };
                if *imp == net.vni {
                    return Err(DesiredError::new(at_imp, "a network does not import itself"));
                }
                let mut seen: Vec<&DesiredSubnet> = net.subnets.iter().collect();
                for earlier in &net.imports[..i] {
                    seen.extend(self.networks.iter().filter(|o| o.vni == *earlier).flat_map(|o| &o.subnets));
                }
                for sub in &other.subnets {
                    if let Some(clash) =
                        seen.iter().find(|s| s.cidr.contains(&sub.cidr.network()) || sub.cidr.contains(&s.cidr.network()))
                    {
                        return Err(DesiredError::new(at_imp, format!("{} of VNI {imp} overlaps {}", sub.cidr, clash.cidr)));
                    }
                }
            }
            for (r, rem) in net.remote.iter().enumerate() {
                let at_rem = |f: &str| at(&format!("remote[{r}].{f}"));
                if rem.host_underlay.is_ipv4() != self.underlay_ip.is_ipv4() {
                    return Err(DesiredError::new(
                        at_rem("host_underlay"),
                        format!("{} is not of the underlay's address family", rem.host_underlay),
                    ));
                }
                if rem.host_underlay == self.underlay_ip {
                    return Err(DesiredError::new(at_rem("host_underlay"), "is this host's own underlay address"));
                }
                if !seen_ips.insert(rem.ip) {
                    return Err(DesiredError::new(at_rem("ip"), format!("{} is used twice in the network", rem.ip)));
                }
            }
        }
        let present = |v: Vni| self.networks.iter().find(|n| n.vni == v);
        let mut uplinks = BTreeSet::new();
        let mut external = BTreeSet::new();
        for (u, up) in self.uplinks.iter().enumerate() {
            if let Some(reason) = ifname_error(&up.ifname) {
                return Err(DesiredError::new(format!("uplinks[{u}].ifname"), reason));
            }
            if !uplinks.insert(up.ifname.as_str()) {
                return Err(DesiredError::new(format!("uplinks[{u}].ifname"), format!("{} appears twice", up.ifname)));
            }
            for (a, addr) in up.addresses.iter().enumerate() {
                let at = format!("uplinks[{u}].addresses[{a}]");
                let Some(net) = present(addr.vni) else {
                    return Err(DesiredError::new(at, format!("VNI {} is not a network of this host", addr.vni)));
                };
                if !external.insert(addr.address) {
                    return Err(DesiredError::new(at, format!("{} is translated twice", addr.address)));
                }
                if let ExternalKind::Floating { fixed } = addr.kind {
                    if fixed.is_ipv4() != addr.address.is_ipv4() || !net.subnets.iter().any(|s| s.cidr.contains(&fixed)) {
                        return Err(DesiredError::new(
                            at,
                            format!("{fixed} is not an address of VNI {} of {}'s family", addr.vni, addr.address),
                        ));
                    }
                }
            }
        }
        let mut published = BTreeSet::new();
        for (i, p) in self.published.iter().enumerate() {
            let at = format!("published[{i}]");
            let Some(net) = present(p.vni) else {
                return Err(DesiredError::new(at, format!("VNI {} is not a network of this host", p.vni)));
            };
            if !net.local.iter().any(|e| e.ips.iter().any(|a| a.addr() == p.fixed)) {
                return Err(DesiredError::new(at, format!("{} is not an address of a local endpoint of VNI {}", p.fixed, p.vni)));
            }
            if p.host_ip.is_some_and(|h| h.is_ipv4() != p.fixed.is_ipv4()) || p.container_port == 0 {
                return Err(DesiredError::new(at, "the host address and the endpoint's must be of one family, the port not 0"));
            }
            if !published.insert((p.fixed.is_ipv4(), p.protocol, p.host_port)) {
                return Err(DesiredError::new(at, format!("port {}/{} is published twice", p.host_port, p.protocol.name())));
            }
        }
        for (n, net) in self.networks.iter().enumerate() {
            if let Some(Egress { via: EgressVia::Uplink { ifname, .. }, .. }) = &net.egress {
                if !uplinks.contains(ifname.as_str()) {
                    return Err(DesiredError::new(
                        format!("networks[{n}].egress"),
                        format!("{ifname} is not an uplink of this host"),
                    ));
                }
            }
        }
        self.validate_steering()?;
        let mut pairs = BTreeSet::new();
        for (i, pz) in self.pair_zones.iter().enumerate() {
            let at = |f: &str| format!("pair_zones[{i}].{f}");
            let (Some(a), Some(b)) = (present(pz.a), present(pz.b)) else {
                return Err(DesiredError::new(at("a"), "both networks of a pair zone must be on the host"));
            };
            if pz.a == pz.b || !a.imports.contains(&pz.b) || !b.imports.contains(&pz.a) {
                return Err(DesiredError::new(at("b"), "a pair zone joins two networks that import each other"));
            }
            if !pairs.insert((pz.a.min(pz.b), pz.a.max(pz.b))) {
                return Err(DesiredError::new(at("b"), "the pair has two zones"));
            }
            if pz.zone == 0 {
                return Err(DesiredError::new(at("zone"), "zone 0 is the host's own; use 1..=65535"));
            }
            if !zones.insert(pz.zone) {
                return Err(DesiredError::new(at("zone"), format!("zone {} is used twice", pz.zone)));
            }
        }
        let mut programs = BTreeSet::new();
        let external = |v: Vni| {
            self.uplinks.iter().any(|u| u.external == v)
                || self.networks.iter().any(|n| n.egress.as_ref().is_some_and(|e| e.external == v))
        };
        for (i, p) in self.policies.iter().enumerate() {
            let known = |v: Vni| present(v).is_some() || external(v);
            if !known(p.src) || !known(p.dst) || (external(p.src) && external(p.dst)) {
                return Err(DesiredError::new(format!("policies[{i}]"), "both networks of a program must be on the host"));
            }
            if !programs.insert((p.src, p.dst)) {
                return Err(DesiredError::new(format!("policies[{i}]"), format!("two programs for {} > {}", p.src, p.dst)));
            }
        }
        for (i, w) in self.watches.iter().enumerate() {
            if present(w.src).is_none() || present(w.dst).is_none() {
                return Err(DesiredError::new(format!("watches[{i}]"), "both networks of a watch must be on the host"));
            }
            if !programs.insert((w.src, w.dst)) {
                return Err(DesiredError::new(
                    format!("watches[{i}]"),
                    format!("{} > {} is programmed or watched twice", w.src, w.dst),
                ));
            }
        }
        Ok(())
    }

    /// What the steering rules and routes rely on: a network of the host;
    /// prefixes and targets of one address family; targets behind the
    /// network's bridge or tunnel; ordered port ranges; valid interface
    /// names; at most [`STEER_TARGETS_MAX`] targets in all.
    fn validate_steering(&self) -> Result<(), DesiredError> {
        let mut targets = 0;
        for (i, s) in self.steering.iter().enumerate() {
            let at = |f: &str| format!("steering[{i}].{f}");
            if !self.networks.iter().any(|n| n.vni == s.vni) {
                return Err(DesiredError::new(at("vni"), format!("VNI {} is not a network of this host", s.vni)));
            }
            let Some(v4) = s.src.first().map(|n| n.addr().is_ipv4()) else {
                return Err(DesiredError::new(at("src"), "must not be empty"));
            };
            if s.dst.is_empty() {
                return Err(DesiredError::new(at("dst"), "must not be empty"));
            }
            for (field, nets) in [("src", &s.src), ("dst", &s.dst)] {
                if let Some(n) = nets.iter().find(|n| n.addr().is_ipv4() != v4) {
                    return Err(DesiredError::new(at(field), format!("{n} is not of the family of {}", s.src[0])));
                }
            }
            let devs = [bridge_name(s.vni), vxlan_name(s.vni)];
            for (t, target) in s.targets.iter().enumerate() {
                if target.address.is_ipv4() != v4 || !devs.contains(&target.dev) {
                    return Err(DesiredError::new(
                        at(&format!("targets[{t}]")),
                        format!("must be an address of the prefixes' family behind {} or {}", devs[0], devs[1]),
                    ));
                }
            }
            if s.src_ports.iter().chain(&s.dst_ports).any(|(lo, hi)| lo > hi) {
                return Err(DesiredError::new(at("dst_ports"), "a port range ends before it starts"));
            }
            for (p, port) in s.skip_ports.iter().enumerate() {
                if let Some(reason) = ifname_error(port) {
                    return Err(DesiredError::new(at(&format!("skip_ports[{p}]")), reason));
                }
            }
            targets += s.targets.len();
            if targets > STEER_TARGETS_MAX {
                return Err(DesiredError::new(at("targets"), format!("more than {STEER_TARGETS_MAX} targets on one host")));
            }
        }
        Ok(())
    }

    /// The host-wide number of the first target of each of
    /// [`DesiredHost::steering`], in order: targets are numbered in the
    /// order of the steerings, then of their targets, from 0. Target `n`
    /// is routed by table [`crate::names::steer_table`]`(n)`, selected by
    /// the mark [`crate::names::steer_mark`]`(n)`.
    pub fn steer_first_targets(&self) -> Vec<u32> {
        let mut next = 0u32;
        self.steering
            .iter()
            .map(|s| {
                let first = next;
                next += s.targets.len() as u32;
                first
            })
            .collect()
    }

    /// The conntrack zone of flows from network `src` to network `dst`: the
    /// pair's zone between two networks, the network's own within one.
    pub fn flow_zone(&self, src: Vni, dst: Vni) -> Option<u16> {
        if src == dst {
            return self.networks.iter().find(|n| n.vni == src).map(|n| n.zone);
        }
        self.pair_zones.iter().find(|p| (p.a == src && p.b == dst) || (p.a == dst && p.b == src)).map(|p| p.zone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vni(v: u32) -> Vni {
        Vni::new(v).unwrap()
    }

    #[test]
    fn names_follow_the_vni_and_the_endpoint_id() {
        assert_eq!(bridge_name(vni(100)), "tb100");
        assert_eq!(vxlan_name(vni(16_777_215)), "tx16777215");
        let id: Uuid = "a1b2c3d4-0000-4000-8000-000000000001".parse().unwrap();
        assert_eq!(host_veth_name(id), "tva1b2c3d4");
        assert_eq!(table_id(vni(1)), 0x10001);
    }

    #[test]
    fn vtep_mac_embeds_an_ipv4_underlay_address() {
        assert_eq!(vtep_mac("10.99.1.2".parse().unwrap()).to_string(), "0e:00:0a:63:01:02");
    }

    #[test]
    fn vtep_mac_of_ipv6_is_stable_and_local_unicast() {
        let a = vtep_mac("2001:db8::1".parse().unwrap());
        assert_eq!(a, vtep_mac("2001:db8::1".parse().unwrap()));
        assert_ne!(a, vtep_mac("2001:db8::2".parse().unwrap()));
        assert_eq!(a.0[0], 0x0e);
        assert!(a.is_unicast());
    }

    #[test]
    fn overlay_mtu_subtracts_the_vxlan_overhead() {
        assert_eq!(overlay_mtu("10.0.0.1".parse().unwrap(), 1500), 1450);
        assert_eq!(overlay_mtu("2001:db8::1".parse().unwrap(), 1500), 1430);
    }
}
