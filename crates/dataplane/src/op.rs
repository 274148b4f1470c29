//! The operations a plan is made of: one variant per kernel operation, named
//! after the kernel concept, each documented with its iproute2 / nft
//! equivalent (which is also what `Display` prints, for logs and golden
//! files).
//!
//! Contracts shared by every appliers ([`crate::Dataplane::apply`]):
//! - `*Install` and `*Add` replace an existing object of the same key where the
//!   kernel allows it, so retrying is safe;
//! - `*Uninstall`, `*Delete` of an object that is already gone succeed;
//! - actions run in the order given (an applier may configure containers'
//!   interfaces, `ContainerIfaceConfigure` without an own table, after the
//!   other actions and side by side: each needs only its own `VethAdd`), and
//!   a failed action does not stop the ones after it.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tessera_model::{MacAddr, Vni};
use uuid::Uuid;

use crate::names::{veth_mark, SysctlKey, LINK_MARK, POLICY_TABLE, SKELETON_VERSION, VRF_UNREACHABLE_METRIC};
use crate::observed::{
    AddressEntry, FdbEntry, IpFamily, MapElement, NeighEntry, NftElement, ProxyNeighEntry, RouteEntry, RouteTarget, RuleEntry,
    RuleSelector,
};
use crate::policy::{map_key_text, map_type};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KernelOp {
    /// `sysctl -w KEY=VALUE` (a write to `/proc/sys/KEY` in the data plane's
    /// namespace).
    SysctlWrite { key: SysctlKey, value: String },
    /// `nft -f SKELETON`: creates `table inet tessera` (conntrack zone maps
    /// and raw-priority chains), `table bridge tessera` (anti-spoofing sets
    /// and chain) and `table inet tessera_policy` (the forward and
    /// prerouting hooks and empty dispatch and steer chains), replacing
    /// older versions of them together with their elements, chains and maps.
    NftTablesInstall,
    /// `nft add element FAMILY tessera SET { ELEMENT }`. Adding an element
    /// that exists succeeds.
    NftSetElementAdd(NftElement),
    /// `nft delete element FAMILY tessera SET { ELEMENT }`.
    NftSetElementDelete(NftElement),
    /// `nft add map inet tessera_policy NAME { type ADDR . ADDR . inet_proto
    /// . inet_service . inet_service : verdict; flags interval; counter; }`
    NftMapAdd { name: String, family: tessera_policy::Family },
    /// `nft delete map inet tessera_policy NAME` (once no rule looks it up).
    NftMapDelete { name: String },
    /// `nft add element inet tessera_policy MAP { KEY : VERDICT, ... }`
    NftMapElementsAdd { map: String, elements: Vec<MapElement> },
    /// `nft delete element inet tessera_policy MAP { KEY, ... }`
    NftMapElementsDelete { map: String, elements: Vec<MapElement> },
    /// `nft flush map inet tessera_policy NAME`: empties a map whose elements
    /// are not known (before adding them all).
    NftMapFlush { map: String },
    /// `nft delete element inet tessera_policy digests { KEY, ... }; add
    /// element inet tessera_policy digests { KEY : VALUE, ... }` (128-bit
    /// keys and values written as IPv6 addresses): records the digests of
    /// the chains and maps the same transaction writes.
    NftDigestsUpdate { deletes: Vec<(u128, u128)>, adds: Vec<(u128, u128)> },
    /// `nft add chain inet tessera_policy NAME; flush chain ...; add rule
    /// inet tessera_policy NAME RULE` for each rule: creates the chain or
    /// replaces its rules.
    NftChainInstall { name: String, rules: Vec<String> },
    /// `nft delete chain inet tessera_policy NAME` (once nothing jumps to it).
    NftChainDelete { name: String },
    /// `conntrack -D -w ZONE`: deletes every conntrack entry of the zone (both
    /// address families), so that flows a policy change no longer allows
    /// end; flows still allowed are picked up again, as new, by their next
    /// packet. Runs after the nftables transaction.
    ConntrackZoneFlush { zone: u16 },
    /// `conntrack -D -w ZONE --orig-dst ADDRESS --reply-src FIXED; conntrack
    /// -D -w ZONE --orig-src FIXED --reply-dst ADDRESS`: ends the flows a
    /// floating IP carried to or from its old endpoint (`FIXED`) when it
    /// moved or went (they would go on); flows to its new endpoint stay.
    /// After the transaction.
    ConntrackAddressFlush { zone: u16, address: IpAddr, fixed: IpAddr },
    /// `ip link set NAME type bridge_slave isolated on`: the port may talk to
    /// the bridge only, so traffic between two endpoints on the host is
    /// routed (and firewalled) rather than bridged.
    BridgePortIsolate { name: String },
    /// `ip link add NAME address MAC mtu MTU up type bridge mcast_snooping 0`
    LinkAddBridge { name: String, mac: MacAddr, mtu: u32 },
    /// `ip link add NAME address MAC mtu MTU up type vxlan id VNI local LOCAL
    /// dev UNDERLAY dstport PORT nolearning noudpcsum` (over IPv6, with UDP
    /// checksums: IPv6 requires them)
    LinkAddVxlan { name: String, vni: Vni, local: IpAddr, underlay: String, port: u16, mac: MacAddr, mtu: u32 },
    /// `ip link add NAME mtu MTU master BRIDGE up type veth peer name IFNAME
    /// address MAC mtu MTU netns NETNS; ip link set NAME type bridge_slave
    /// isolated on`: the container side is created directly inside the
    /// container's namespace, with its final name; the host side is an
    /// isolated port of the bridge.
    VethAdd { name: String, bridge: String, mtu: u32, netns: PathBuf, peer_ifname: String, peer_mac: MacAddr },
    /// `ip link set NAME up`
    LinkSetUp { name: String },
    /// `ip link set NAME alias ALIAS`: Tessera's mark on a link it adopts.
    LinkSetAlias { name: String, alias: String },
    /// `ip link set NAME mtu MTU`
    LinkSetMtu { name: String, mtu: u32 },
    /// `ip link del NAME`. Routes, neighbour, FDB and proxy entries, addresses
    /// and parameters of the link go with it; deleting one end of a veth
    /// deletes the other.
    LinkDelete { name: String },
    /// `ip addr add ADDR dev DEV` (IPv4 /32: no connected route), or
    /// `ip -6 addr add ADDR dev DEV nodad noprefixroute`.
    AddressInstall(AddressEntry),
    /// `ip addr del ADDR dev DEV`
    AddressUninstall(AddressEntry),
    /// `ip [-6] rule add iif IIF|fwmark MARK[/MASK] lookup TABLE pref PRIORITY`
    RuleInstall(RuleEntry),
    /// `ip [-6] rule del iif IIF|fwmark MARK[/MASK] lookup TABLE pref PRIORITY`
    RuleUninstall(RuleEntry),
    /// `ip [-6] route replace DST dev DEV [scope link] table TABLE`,
    /// `ip [-6] route replace DST via GATEWAY dev DEV [onlink] table TABLE`,
    /// or `ip [-6] route replace unreachable DST metric 4278198272 table
    /// TABLE`.
    RouteInstall(RouteEntry),
    /// `ip [-6] route del ...` (same arguments as the install).
    RouteUninstall(RouteEntry),
    /// `ip neigh replace IP lladdr MAC dev DEV nud permanent`
    NeighInstall(NeighEntry),
    /// `ip neigh del IP dev DEV`
    NeighUninstall(NeighEntry),
    /// `bridge fdb replace MAC dev DEV dst DST self permanent`
    FdbInstall(FdbEntry),
    /// `bridge fdb del MAC dev DEV dst DST self`
    FdbUninstall(FdbEntry),
    /// `ip -6 neigh add proxy IP dev DEV`
    ProxyNeighInstall(ProxyNeighEntry),
    /// `ip -6 neigh del proxy IP dev DEV`
    ProxyNeighUninstall(ProxyNeighEntry),
    /// `arping -U -I DEV ADDR` for IPv4 addresses, an unsolicited neighbour
    /// advertisement (override) for IPv6 ones: tells the link that this
    /// host now answers for them (a gateway taking a floating IP over).
    /// Sent again twice within a second.
    Announce { dev: String, addresses: Vec<IpAddr> },
    /// Inside the container's namespace NETNS:
    /// `ip link set IFNAME address MAC mtu MTU up`,
    /// `ip addr replace ADDR dev IFNAME [nodad]` for each address (other
    /// global addresses removed), `ip [-6] route replace default via GW` for
    /// each gateway, and for a service port its parameters; then, on the
    /// host, `ip link set HOST_VETH alias ID`, which marks the endpoint as
    /// complete. Idempotent.
    ContainerIfaceConfigure {
        host_veth: String,
        endpoint: Uuid,
        netns: PathBuf,
        ifname: String,
        mac: MacAddr,
        addrs: Vec<IpNet>,
        gateways: Vec<IpAddr>,
        mtu: u32,
        /// The container configures its addresses and routes itself (DHCP):
        /// they are neither written nor removed.
        #[serde(default)]
        dhcp: bool,
        /// The interface's own routing table in the container, and the
        /// tables of the namespace's other such interfaces, which route what
        /// arrives on it (`ip rule add iif IFNAME lookup TABLE`).
        #[serde(default)]
        own_table: Option<OwnTable>,
        /// A service instance's interface: inside the namespace,
        /// `sysctl -w` of [`crate::desired::service_sysctls`] (forwarding
        /// on, reverse-path filtering off). Only ever turned on: an
        /// interface whose flag goes off leaves its namespace's parameters
        /// as they are (a port is a service port from its creation).
        #[serde(default)]
        service: bool,
    },
}

/// An interface's own routing table in a container (dockwall's scheme).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnTable {
    pub table: u32,
    /// The tables that route what arrives on the interface: those of the
    /// namespace's other interfaces with a table of their own.
    pub peers: Vec<u32>,
}

impl KernelOp {
    /// The variant name, for logs and error reports.
    pub fn op(&self) -> &'static str {
        match self {
            KernelOp::SysctlWrite { .. } => "SysctlWrite",
            KernelOp::NftTablesInstall => "NftTablesInstall",
            KernelOp::NftSetElementAdd(_) => "NftSetElementAdd",
            KernelOp::NftSetElementDelete(_) => "NftSetElementDelete",
            KernelOp::NftMapAdd { .. } => "NftMapAdd",
            KernelOp::NftMapDelete { .. } => "NftMapDelete",
            KernelOp::NftMapElementsAdd { .. } => "NftMapElementsAdd",
            KernelOp::NftMapElementsDelete { .. } => "NftMapElementsDelete",
            KernelOp::NftMapFlush { .. } => "NftMapFlush",
            KernelOp::NftDigestsUpdate { .. } => "NftDigestsUpdate",
            KernelOp::NftChainInstall { .. } => "NftChainInstall",
            KernelOp::NftChainDelete { .. } => "NftChainDelete",
            KernelOp::ConntrackZoneFlush { .. } => "ConntrackZoneFlush",
            KernelOp::ConntrackAddressFlush { .. } => "ConntrackAddressFlush",
            KernelOp::BridgePortIsolate { .. } => "BridgePortIsolate",
            KernelOp::LinkAddBridge { .. } => "LinkAddBridge",
            KernelOp::LinkAddVxlan { .. } => "LinkAddVxlan",
            KernelOp::VethAdd { .. } => "VethAdd",
            KernelOp::LinkSetUp { .. } => "LinkSetUp",
            KernelOp::LinkSetAlias { .. } => "LinkSetAlias",
            KernelOp::LinkSetMtu { .. } => "LinkSetMtu",
            KernelOp::LinkDelete { .. } => "LinkDelete",
            KernelOp::AddressInstall(_) => "AddressInstall",
            KernelOp::AddressUninstall(_) => "AddressUninstall",
            KernelOp::RuleInstall(_) => "RuleInstall",
            KernelOp::RuleUninstall(_) => "RuleUninstall",
            KernelOp::RouteInstall(_) => "RouteInstall",
            KernelOp::RouteUninstall(_) => "RouteUninstall",
            KernelOp::NeighInstall(_) => "NeighInstall",
            KernelOp::NeighUninstall(_) => "NeighUninstall",
            KernelOp::FdbInstall(_) => "FdbInstall",
            KernelOp::FdbUninstall(_) => "FdbUninstall",
            KernelOp::ProxyNeighInstall(_) => "ProxyNeighInstall",
            KernelOp::ProxyNeighUninstall(_) => "ProxyNeighUninstall",
            KernelOp::ContainerIfaceConfigure { .. } => "ContainerIfaceConfigure",
            KernelOp::Announce { .. } => "Announce",
        }
    }

    /// Whether the action is carried out by nftables (and so is part of the
    /// plan's single nft transaction).
    pub fn is_nft(&self) -> bool {
        matches!(
            self,
            KernelOp::NftTablesInstall
                | KernelOp::NftSetElementAdd(_)
                | KernelOp::NftSetElementDelete(_)
                | KernelOp::NftMapAdd { .. }
                | KernelOp::NftMapDelete { .. }
                | KernelOp::NftMapElementsAdd { .. }
                | KernelOp::NftMapElementsDelete { .. }
                | KernelOp::NftMapFlush { .. }
                | KernelOp::NftDigestsUpdate { .. }
                | KernelOp::NftChainInstall { .. }
                | KernelOp::NftChainDelete { .. }
        )
    }

    /// Whether the action ends conntrack entries (`conntrack -D`): it must
    /// run after the rules that refuse those flows are in place.
    pub fn is_conntrack(&self) -> bool {
        matches!(self, KernelOp::ConntrackZoneFlush { .. } | KernelOp::ConntrackAddressFlush { .. })
    }

    /// Whether the action removes something (and so succeeds when it is
    /// already gone).
    pub fn is_removal(&self) -> bool {
        matches!(
            self,
            KernelOp::NftSetElementDelete(_)
                | KernelOp::NftMapDelete { .. }
                | KernelOp::NftMapElementsDelete { .. }
                | KernelOp::NftChainDelete { .. }
                | KernelOp::LinkDelete { .. }
                | KernelOp::AddressUninstall(_)
                | KernelOp::RuleUninstall(_)
                | KernelOp::RouteUninstall(_)
                | KernelOp::NeighUninstall(_)
                | KernelOp::FdbUninstall(_)
                | KernelOp::ProxyNeighUninstall(_)
        )
    }
}

fn family_flag(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() {
        ""
    } else {
        " -6"
    }
}

fn route_args(r: &RouteEntry) -> String {
    let dst = if r.dst.prefix_len() == 0 { "default".to_string() } else { r.dst.to_string() };
    match &r.target {
        RouteTarget::Dev(dev) if r.dst.addr().is_ipv4() => format!("{dst} dev {dev} scope link table {}", r.table),
        RouteTarget::Dev(dev) => format!("{dst} dev {dev} table {}", r.table),
        RouteTarget::Unreachable => format!("unreachable {dst} metric {VRF_UNREACHABLE_METRIC} table {}", r.table),
        RouteTarget::Via { dev, gateway } if gateway.is_ipv4() != r.dst.addr().is_ipv4() => {
            format!("{dst} via inet6 {gateway} dev {dev} table {}", r.table)
        }
        RouteTarget::Via { dev, gateway: IpAddr::V6(g) } if g.is_unicast_link_local() => {
            format!("{dst} via {g} dev {dev} table {}", r.table)
        }
        RouteTarget::Via { dev, gateway } => format!("{dst} via {gateway} dev {dev} onlink table {}", r.table),
    }
}

fn rule_args(r: &RuleEntry) -> String {
    match r.selector {
        RuleSelector::IifUnverified(_) => format!("{} blackhole pref {}", r.selector, r.priority),
        _ => format!("{} lookup {} pref {}", r.selector, r.table, r.priority),
    }
}

/// At most a few elements (keys in the map's field order), then how many
/// there are in all.
fn elements_brief(f: &mut fmt::Formatter<'_>, map: &str, elements: &[MapElement], keys_only: bool) -> fmt::Result {
    const SHOWN: usize = 8;
    for (i, e) in elements.iter().take(SHOWN).enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        f.write_str(&map_key_text(map, &e.key))?;
        if !keys_only {
            write!(f, " : {}", e.verdict)?;
        }
    }
    if elements.len() > SHOWN {
        write!(f, ", ... ({} elements)", elements.len())?;
    }
    Ok(())
}

/// The parameters of a service port's namespace, in a container's
/// command line.
fn service_text(f: &mut fmt::Formatter<'_>, ifname: &str, service: bool) -> fmt::Result {
    if service {
        for (key, value) in crate::desired::service_sysctls(ifname) {
            write!(f, "; sysctl -w {key}={value}")?;
        }
    }
    Ok(())
}

fn rule_flag(f: IpFamily) -> &'static str {
    match f {
        IpFamily::V4 => "",
        IpFamily::V6 => " -6",
    }
}

impl fmt::Display for KernelOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelOp::SysctlWrite { key, value } => write!(f, "sysctl -w {key}={value}"),
            KernelOp::NftTablesInstall => {
                write!(f, "nft -f tessera-skeleton-{SKELETON_VERSION} # inet tessera, bridge tessera, inet {POLICY_TABLE}")
            }
            KernelOp::NftSetElementAdd(e) => write!(f, "nft add element {e}"),
            KernelOp::NftSetElementDelete(e) => write!(f, "nft delete element {e}"),
            KernelOp::NftMapAdd { name, family } => {
                write!(f, "nft add map inet {POLICY_TABLE} {name} {{ {} }}", map_type(name, *family))
            }
            KernelOp::NftMapDelete { name } => write!(f, "nft delete map inet {POLICY_TABLE} {name}"),
            KernelOp::NftMapElementsAdd { map, elements } => {
                write!(f, "nft add element inet {POLICY_TABLE} {map} {{ ")?;
                elements_brief(f, map, elements, false)?;
                f.write_str(" }")
            }
            KernelOp::NftMapElementsDelete { map, elements } => {
                write!(f, "nft delete element inet {POLICY_TABLE} {map} {{ ")?;
                elements_brief(f, map, elements, true)?;
                f.write_str(" }")
            }
            KernelOp::NftChainInstall { name, rules } => {
                write!(f, "nft add chain inet {POLICY_TABLE} {name}; flush chain inet {POLICY_TABLE} {name}")?;
                for r in rules {
                    write!(f, "; add rule inet {POLICY_TABLE} {name} {r}")?;
                }
                Ok(())
            }
            KernelOp::NftChainDelete { name } => write!(f, "nft delete chain inet {POLICY_TABLE} {name}"),
            KernelOp::NftMapFlush { map } => write!(f, "nft flush map inet {POLICY_TABLE} {map}"),
            KernelOp::NftDigestsUpdate { deletes, adds } => {
                let v6 = |x: &u128| std::net::Ipv6Addr::from(*x);
                f.write_str("nft")?;
                if !deletes.is_empty() {
                    let keys: Vec<String> = deletes.iter().map(|(k, _)| v6(k).to_string()).collect();
                    write!(f, " delete element inet {POLICY_TABLE} digests {{ {} }};", keys.join(", "))?;
                }
                if !adds.is_empty() {
                    let pairs: Vec<String> = adds.iter().map(|(k, v)| format!("{} : {}", v6(k), v6(v))).collect();
                    write!(f, " add element inet {POLICY_TABLE} digests {{ {} }}", pairs.join(", "))?;
                }
                Ok(())
            }
            KernelOp::ConntrackZoneFlush { zone } => write!(f, "conntrack -D -w {zone}"),
            KernelOp::ConntrackAddressFlush { zone, address, fixed } => write!(
                f,
                "conntrack -D -w {zone} --orig-dst {address} --reply-src {fixed}; conntrack -D -w {zone} --orig-src {fixed} --reply-dst {address}"
            ),
            KernelOp::BridgePortIsolate { name } => write!(f, "ip link set {name} type bridge_slave isolated on"),
            KernelOp::LinkAddBridge { name, mac, mtu } => {
                write!(f, "ip link add {name} address {mac} mtu {mtu} up type bridge mcast_snooping 0; ip link set {name} alias {LINK_MARK}")
            }
            KernelOp::LinkAddVxlan { name, vni, local, underlay, port, mac, mtu } => write!(
                f,
                "ip link add {name} address {mac} mtu {mtu} up type vxlan id {vni} local {local} dev {underlay} dstport {port} nolearning{}; ip link set {name} alias {LINK_MARK}",
                if local.is_ipv4() { " noudpcsum" } else { "" }
            ),
            KernelOp::VethAdd { name, bridge, mtu, netns, peer_ifname, peer_mac } => write!(
                f,
                "ip link add {name} mtu {mtu} master {bridge} up type veth peer name {peer_ifname} address {peer_mac} mtu {mtu} netns {}; ip link set {name} type bridge_slave isolated on; ip link set {name} alias {LINK_MARK}",
                netns.display()
            ),
            KernelOp::LinkSetUp { name } => write!(f, "ip link set {name} up"),
            KernelOp::LinkSetAlias { name, alias } => write!(f, "ip link set {name} alias {alias}"),
            KernelOp::LinkSetMtu { name, mtu } => write!(f, "ip link set {name} mtu {mtu}"),
            KernelOp::LinkDelete { name } => write!(f, "ip link del {name}"),
            KernelOp::AddressInstall(a) if a.addr.addr().is_ipv4() => write!(f, "ip addr add {} dev {}", a.addr, a.dev),
            KernelOp::AddressInstall(a) => write!(f, "ip -6 addr add {} dev {} nodad noprefixroute", a.addr, a.dev),
            KernelOp::AddressUninstall(a) => write!(f, "ip{} addr del {} dev {}", family_flag(a.addr.addr()), a.addr, a.dev),
            KernelOp::RuleInstall(r) => write!(f, "ip{} rule add {}", rule_flag(r.family), rule_args(r)),
            KernelOp::RuleUninstall(r) => write!(f, "ip{} rule del {}", rule_flag(r.family), rule_args(r)),
            KernelOp::RouteInstall(r) => write!(f, "ip{} route replace {}", family_flag(r.dst.addr()), route_args(r)),
            KernelOp::RouteUninstall(r) => write!(f, "ip{} route del {}", family_flag(r.dst.addr()), route_args(r)),
            KernelOp::NeighInstall(n) => {
                write!(f, "ip{} neigh replace {} lladdr {} dev {} nud permanent", family_flag(n.ip), n.ip, n.mac, n.dev)
            }
            KernelOp::NeighUninstall(n) => write!(f, "ip{} neigh del {} dev {}", family_flag(n.ip), n.ip, n.dev),
            KernelOp::FdbInstall(e) => write!(f, "bridge fdb replace {} dev {} dst {} self permanent", e.mac, e.dev, e.dst),
            KernelOp::FdbUninstall(e) => write!(f, "bridge fdb del {} dev {} dst {} self", e.mac, e.dev, e.dst),
            KernelOp::ProxyNeighInstall(p) => write!(f, "ip{} neigh add proxy {} dev {}", family_flag(p.ip), p.ip, p.dev),
            KernelOp::ProxyNeighUninstall(p) => write!(f, "ip{} neigh del proxy {} dev {}", family_flag(p.ip), p.ip, p.dev),
            KernelOp::Announce { dev, addresses } => {
                let all: Vec<String> = addresses.iter().map(ToString::to_string).collect();
                write!(f, "announce {} on {dev} (gratuitous ARP, unsolicited NA)", all.join(" "))
            }
            KernelOp::ContainerIfaceConfigure { host_veth, endpoint, netns, ifname, mac, mtu, dhcp: true, service, .. } => {
                let link = format!("ip link set {ifname} address {mac} mtu {mtu} up");
                if *service {
                    write!(f, "nsenter --net={} sh -c '{link}", netns.display())?;
                    service_text(f, ifname, true)?;
                    f.write_str("'")?;
                } else {
                    write!(f, "nsenter --net={} {link}", netns.display())?;
                }
                write!(f, " # addresses by DHCP; ip link set {host_veth} alias {}", veth_mark(*endpoint))
            }
            KernelOp::ContainerIfaceConfigure {
                host_veth, endpoint, netns, ifname, mac, addrs, gateways, mtu, own_table: Some(t), service, ..
            } => {
                write!(f, "nsenter --net={} sh -c 'ip link set {ifname} address {mac} mtu {mtu} up", netns.display())?;
                for a in addrs {
                    write!(f, "; ip addr replace {a} dev {ifname}")?;
                }
                for g in gateways {
                    write!(f, "; ip route replace default via {g} dev {ifname} table {}", t.table)?;
                }
                for p in &t.peers {
                    write!(f, "; ip rule add iif {ifname} lookup {p}")?;
                }
                service_text(f, ifname, *service)?;
                write!(f, "'; ip link set {host_veth} alias {}", veth_mark(*endpoint))
            }
            KernelOp::ContainerIfaceConfigure { host_veth, endpoint, netns, ifname, mac, addrs, gateways, mtu, service, .. } => {
                write!(f, "nsenter --net={} sh -c 'ip link set {ifname} address {mac} mtu {mtu} up", netns.display())?;
                for a in addrs {
                    let nodad = if a.addr().is_ipv6() { " nodad" } else { "" };
                    write!(f, "; ip{} addr replace {a} dev {ifname}{nodad}", family_flag(a.addr()))?;
                }
                for g in gateways {
                    write!(f, "; ip{} route replace default via {g} dev {ifname}", family_flag(*g))?;
                }
                service_text(f, ifname, *service)?;
                write!(f, "'; ip link set {host_veth} alias {}", veth_mark(*endpoint))
            }
        }
    }
}
