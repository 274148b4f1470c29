//! What the kernel of a host holds that belongs to Tessera.
//!
//! Pure types, filled by a [`crate::Dataplane`]'s `observe`. Ownership is
//! decided by name and number only, so an agent that restarts adopts what an
//! earlier run left:
//! - links named `tb<digits>` (bridges), `tx<digits>` (VXLAN devices),
//!   `tv<8 hex digits>` (host sides of endpoint veths);
//! - routes in tables at or above [`TABLE_BASE`]: the networks' VRFs
//!   (`TABLE_BASE + VNI`), the gateway table and the steering targets'
//!   tables (from [`crate::names::STEER_TABLE_BASE`]);
//! - rules at [`RULE_PRIORITY`] whose input interface is `tb*` or `tx*`, or
//!   whose firewall mark is the number of the table they select; the
//!   steering rules at [`crate::names::STEER_PRIORITY`];
//! - neighbour and FDB entries on `tx*`, proxy neighbour entries on `tb*`,
//!   addresses on `tb*`;
//! - the nftables tables `inet tessera`, `bridge tessera` and
//!   `inet tessera_policy`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tessera_model::{MacAddr, Vni};

use tessera_policy::flow::Fnv;

use crate::names::{
    log_chain_passes, SysctlKey, BRIDGE_PREFIX, RULE_PRIORITY, TABLE_BASE, VERIFIED_MARK, VETH_PREFIX, VXLAN_PREFIX,
};

/// The Tessera-owned part of a host's kernel state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    /// Owned links, by name.
    pub links: BTreeMap<String, LinkState>,
    /// Addresses on owned bridges.
    pub addresses: BTreeSet<AddressEntry>,
    /// Routes in owned tables (kernel-made clones excluded).
    pub routes: BTreeSet<RouteEntry>,
    /// Owned rules.
    pub rules: BTreeSet<RuleEntry>,
    /// Permanent neighbour entries on owned VXLAN devices.
    pub neighbours: BTreeSet<NeighEntry>,
    /// FDB entries with a remote destination on owned VXLAN devices.
    pub fdb: BTreeSet<FdbEntry>,
    /// Proxy neighbour entries on owned bridges.
    pub proxy_neighbours: BTreeSet<ProxyNeighEntry>,
    /// The values of the parameters Tessera sets, for the links it owns and
    /// the host-wide ones. A parameter that cannot be read is absent.
    pub sysctls: BTreeMap<SysctlKey, String>,
    pub nft: NftState,
}

/// One link, as far as the planner cares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkState {
    pub kind: LinkKind,
    pub mtu: u32,
    pub mac: Option<MacAddr>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Name of the bridge the link is a port of.
    pub master: Option<String>,
    /// `ip link set DEV alias ...`: Tessera's mark ([`crate::names::LINK_MARK`];
    /// on an endpoint's host veth, [`crate::names::veth_mark`] once the
    /// container side is fully configured).
    pub alias: Option<String>,
    /// `bridge_slave isolated`: the bridge port forwards only to the bridge
    /// itself, never to another port.
    #[serde(default)]
    pub isolated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkKind {
    Bridge,
    Vxlan(VxlanState),
    Veth,
    /// Any other kind (named like ours, but not what we would have made).
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VxlanState {
    pub vni: u32,
    pub local: Option<IpAddr>,
    pub port: u16,
    /// Name of the device the tunnel is bound to.
    pub underlay: Option<String>,
    pub learning: bool,
}

/// `ip addr add ADDR dev DEV`
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AddressEntry {
    pub dev: String,
    pub addr: IpNet,
}

/// A route of a VRF table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RouteEntry {
    pub table: u32,
    pub dst: IpNet,
    pub target: RouteTarget,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RouteTarget {
    /// `dev DEV scope link`: the destination is on the link.
    Dev(String),
    /// `unreachable`, at [`crate::names::VRF_UNREACHABLE_METRIC`].
    Unreachable,
    /// `via GATEWAY dev DEV [onlink]` (an IPv6 gateway of an IPv4 route is
    /// `via inet6 GATEWAY`): a network's way to the outside.
    Via { dev: String, gateway: IpAddr },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn of(addr: IpAddr) -> Self {
        if addr.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        }
    }
    /// The `ip` option selecting the family (`-4` / `-6`).
    pub fn flag(self) -> &'static str {
        match self {
            IpFamily::V4 => "-4",
            IpFamily::V6 => "-6",
        }
    }
}

/// `ip rule add SELECTOR lookup TABLE pref PRIORITY`
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RuleEntry {
    pub family: IpFamily,
    pub selector: RuleSelector,
    pub table: u32,
    pub priority: u32,
}

/// What an `ip rule` matches.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RuleSelector {
    /// `iif NAME`: packets that came in on a network's bridge or tunnel
    /// (what earlier versions installed; no longer wanted).
    Iif(String),
    /// `iif NAME fwmark VERIFIED/VERIFIED`: packets that came in on a
    /// network's bridge or tunnel and that nftables let in.
    IifVerified(String),
    /// `iif NAME` → `blackhole`: what a network's bridge or tunnel brings in
    /// that nftables did not mark (its tables are gone). The entry's table
    /// is the network's, for bookkeeping; the kernel's rule has none.
    IifUnverified(String),
    /// `fwmark MARK`: packets the host itself answers for a network (reject
    /// replies), marked with the network's table number.
    FwMark(u32),
    /// `iif UPLINK` → the gateway table, at
    /// [`crate::names::UPLINK_PRIORITY`]: a gateway's uplink.
    Uplink(String),
    /// `fwmark PUBLISHED/PUBLISHED` → the main table, at
    /// [`crate::names::PUBLISHED_PRIORITY`]: answers of published ports.
    PublishedReply,
    /// `fwmark MARK/STEER_MASK` → a steering target's table, at
    /// [`crate::names::STEER_PRIORITY`]: what the steer chain sends to
    /// target `MARK & 0xffff` ([`crate::names::steer_mark`]).
    Steer(u32),
}

impl fmt::Display for RuleSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleSelector::Iif(name) | RuleSelector::IifUnverified(name) | RuleSelector::Uplink(name) => write!(f, "iif {name}"),
            RuleSelector::IifVerified(name) => write!(f, "iif {name} fwmark {VERIFIED_MARK:#x}/{VERIFIED_MARK:#x}"),
            RuleSelector::FwMark(mark) => write!(f, "fwmark {mark:#x}"),
            RuleSelector::PublishedReply => {
                write!(f, "fwmark {:#x}/{:#x}", crate::names::PUBLISHED_MARK, crate::names::PUBLISHED_MARK)
            }
            RuleSelector::Steer(mark) => write!(f, "fwmark {mark:#x}/{:#x}", crate::names::STEER_MASK),
        }
    }
}

/// `ip neigh add IP lladdr MAC dev DEV nud permanent`
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NeighEntry {
    pub dev: String,
    pub ip: IpAddr,
    pub mac: MacAddr,
}

/// `bridge fdb add MAC dev DEV dst DST self permanent`
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FdbEntry {
    pub dev: String,
    pub mac: MacAddr,
    pub dst: IpAddr,
}

/// `ip neigh add proxy IP dev DEV`
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProxyNeighEntry {
    pub dev: String,
    pub ip: IpAddr,
}

/// Tessera's nftables tables.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NftState {
    /// The skeleton version marker found in all three tables (the comment
    /// of a rule of each); `None` when a table is missing or carries no
    /// marker.
    pub skeleton: Option<String>,
    /// Elements of the sets and maps of `inet tessera` and `bridge tessera`.
    pub elements: BTreeSet<NftElement>,
    /// The chains and maps of `inet tessera_policy` that the planner manages.
    #[serde(default)]
    pub policy: PolicyState,
}

/// The planner-managed part of `inet tessera_policy`: chains and verdict
/// maps, with the digests recorded for them in the `digests` map (see
/// [`crate::policy`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyState {
    pub chains: BTreeMap<String, ObservedChain>,
    pub maps: BTreeMap<String, ObservedMap>,
    /// The elements of the `digests` map, as they are.
    pub digests: BTreeMap<u128, u128>,
}

/// A chain of `inet tessera_policy`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedChain {
    /// The digest of its rules recorded in `digests`; `None` when none is.
    pub digest: Option<u64>,
    /// For rule-list chains: the verdict of flows no entry matches.
    pub default: Option<tessera_policy::Verdict>,
}

/// A verdict map of `inet tessera_policy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedMap {
    pub family: tessera_policy::Family,
    /// The digest of its elements recorded in `digests`
    /// ([`map_digest`]); `None` when none is.
    pub digest: Option<u64>,
    /// Its elements, when known: the Linux data plane does not list big maps
    /// on every observation; it shares what it remembers while the recorded
    /// digest says it is still right.
    pub elements: Option<std::sync::Arc<BTreeSet<MapElement>>>,
}

impl ObservedMap {
    /// A map holding `elements` (known).
    pub fn of(family: tessera_policy::Family, elements: BTreeSet<MapElement>) -> Self {
        ObservedMap { family, digest: Some(map_digest(&elements)), elements: Some(std::sync::Arc::new(elements)) }
    }
}

/// One element of a policy verdict map: a flow box and what it does.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MapElement {
    pub key: tessera_policy::FlowBox,
    pub verdict: ElementVerdict,
}

/// The verdict of a [`MapElement`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ElementVerdict {
    /// `return`: the list passes the flow.
    Return,
    /// `drop`
    Drop,
    /// `continue`: the rest of the lookup's rule runs, which refuses as
    /// the map's tail says (`… vmap @m goto dn<S>`, or `goto rj<S>`). Such
    /// an element is not a `goto`: adding one would make the kernel
    /// validate every jump of the table, every element of every verdict map
    /// included.
    Continue,
    /// `goto g…`: log, then decide.
    Goto(String),
}

impl ElementVerdict {
    /// Whether the element lets the flow through its list (a log chain's
    /// name says what it does after logging).
    pub fn passes(&self) -> bool {
        match self {
            ElementVerdict::Return => true,
            ElementVerdict::Drop | ElementVerdict::Continue => false,
            ElementVerdict::Goto(chain) => log_chain_passes(chain),
        }
    }
}

impl fmt::Display for ElementVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ElementVerdict::Return => f.write_str("return"),
            ElementVerdict::Drop => f.write_str("drop"),
            ElementVerdict::Continue => f.write_str("continue"),
            ElementVerdict::Goto(c) => write!(f, "goto {c}"),
        }
    }
}

impl fmt::Display for MapElement {
    /// `KEY : VERDICT`, as in `nft add element`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} : {}", self.key, self.verdict)
    }
}

/// A stable hash of one map element.
pub fn element_hash(e: &MapElement) -> u64 {
    let v = match &e.verdict {
        ElementVerdict::Return => 1,
        ElementVerdict::Drop => 2,
        ElementVerdict::Continue => 4,
        ElementVerdict::Goto(c) => {
            let mut h = Fnv::new();
            h.bytes(c.as_bytes());
            h.finish() | 3
        }
    };
    tessera_policy::flow::mix(e.key.stable_hash(), v)
}

/// The digest of a map's elements, as recorded in the policy table's
/// `digests` map (see [`crate::policy`]): the (wrapping) sum of their
/// hashes, so it does not depend on their order and follows adds and
/// deletes.
pub fn map_digest<'a>(elements: impl IntoIterator<Item = &'a MapElement>) -> u64 {
    elements.into_iter().fold(0u64, |acc, e| acc.wrapping_add(element_hash(e)))
}

/// One element of a set or map of Tessera's nftables tables.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum NftElement {
    /// `inet tessera` map `zones`: `"IFNAME" : ZONE`, the conntrack zone of
    /// packets entering (or leaving by) a network's bridge or VXLAN device.
    Zone {
        ifname: String,
        zone: u16,
    },
    /// `bridge tessera` set `ep4`: `"PORT" . MAC . IPV4`, an IPv4 source an
    /// endpoint may use (also checked as ARP sender).
    Ep4 {
        port: String,
        mac: MacAddr,
        ip: std::net::Ipv4Addr,
    },
    /// `bridge tessera` set `ep6`: `"PORT" . MAC . IPV6`.
    Ep6 {
        port: String,
        mac: MacAddr,
        ip: std::net::Ipv6Addr,
    },
    /// `bridge tessera` set `epmac`: `"PORT" . MAC`, the port's own MAC
    /// (link-local NDP, DHCP, ARP sender hardware address).
    EpMac {
        port: String,
        mac: MacAddr,
    },
    /// `bridge tessera` set `svcmac`: `"PORT" . MAC`, a service instance's
    /// port, which may send IP packets of any source address with its own
    /// MAC (it forwards the traffic of a service chain).
    SvcMac {
        port: String,
        mac: MacAddr,
    },
    /// `inet tessera` map `pz4` or `pz6`: `"IFNAME" . PREFIX : ZONE`, the
    /// conntrack zone shared by two networks that route to each other: a
    /// packet entering a bridge towards `PREFIX`, or a tunnel from `PREFIX`,
    /// belongs to a flow between the two networks.
    PairZone {
        ifname: String,
        net: IpNet,
        zone: u16,
    },
    /// `inet tessera` set `reach4` or `reach6`: `"BRIDGE" . PREFIX`, where
    /// a new flow from a network's bridge may go (what its table routes);
    /// a new flow towards anywhere else is refused by isolation, and logged.
    Reach {
        ifname: String,
        net: IpNet,
    },
    /// `inet tessera` set `vteps4` or `vteps6`: the underlay address of a
    /// host of the fabric, from which VXLAN is accepted.
    Vtep {
        ip: IpAddr,
    },
    /// `inet tessera` set `uplinks`: an interface where the outside is.
    Uplink {
        ifname: String,
    },
    /// `inet tessera` set `slice<N>`: the uplink's SNAT port slice.
    UplinkSlice {
        ifname: String,
        slice: u16,
    },
    /// `inet tessera` maps `extzone4|6` and `extmark4|6`: what arrives on
    /// an uplink for an external address belongs to the conntrack zone of
    /// its network and is routed in its table.
    ExtZone {
        address: IpAddr,
        zone: u16,
    },
    ExtMark {
        address: IpAddr,
        mark: u32,
    },
    /// `inet tessera` set `extout4|6`: what leaves an uplink from an
    /// external address is counted.
    ExtOut {
        address: IpAddr,
    },
    /// `inet tessera` map `fipin4|6`: a floating IP's destination NAT.
    FipIn {
        floating: IpAddr,
        fixed: IpAddr,
    },
    /// `inet tessera` map `fipout4|6`: `ZONE . FIXED : FLOATING`, the source
    /// NAT of flows a floating IP's endpoint starts.
    FipOut {
        zone: u16,
        fixed: IpAddr,
        floating: IpAddr,
    },
    /// `inet tessera` map `snat4|6`: `ZONE : ADDRESS`, a network's SNAT.
    Snat {
        zone: u16,
        address: IpAddr,
    },
    /// `inet tessera` maps `pubz…`, `pubm…`, `pubd…` (see [`PubKey::map`]):
    /// a published port's conntrack zone, the mark of its network's table,
    /// and its destination NAT.
    PubZone {
        key: PubKey,
        zone: u16,
    },
    PubMark {
        key: PubKey,
        mark: u32,
    },
    PubDnat {
        key: PubKey,
        fixed: IpAddr,
        port: u16,
    },
}

/// The key of a published port in the `pub…` maps.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PubKey {
    pub v6: bool,
    /// `None`: every address of the host (the `…any` maps).
    pub host_ip: Option<IpAddr>,
    pub protocol: tessera_model::PortProtocol,
    pub port: u16,
}

impl PubKey {
    /// The map of `kind` (`z`, `m` or `d`) that holds the key:
    /// `pub<kind><4|6>[any]`.
    pub fn map(&self, kind: char) -> &'static str {
        const NAMES: [&str; 12] = [
            "pubz4", "pubz4any", "pubz6", "pubz6any", "pubm4", "pubm4any", "pubm6", "pubm6any", "pubd4", "pubd4any", "pubd6",
            "pubd6any",
        ];
        let k = match kind {
            'z' => 0,
            'm' => 4,
            _ => 8,
        };
        NAMES[k + 2 * usize::from(self.v6) + usize::from(self.host_ip.is_none())]
    }
}

impl fmt::Display for PubKey {
    /// `[ADDRESS . ]PROTOCOL . PORT`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(ip) = self.host_ip {
            write!(f, "{ip} . ")?;
        }
        write!(f, "{} . {}", self.protocol.name(), self.port)
    }
}

impl NftElement {
    /// `(family, table, set)` that holds the element.
    pub fn location(&self) -> (&'static str, &'static str, &'static str) {
        match self {
            NftElement::Zone { .. } => ("inet", "tessera", "zones"),
            NftElement::Ep4 { .. } => ("bridge", "tessera", "ep4"),
            NftElement::Ep6 { .. } => ("bridge", "tessera", "ep6"),
            NftElement::EpMac { .. } => ("bridge", "tessera", "epmac"),
            NftElement::SvcMac { .. } => ("bridge", "tessera", "svcmac"),
            NftElement::PairZone { net, .. } if net.addr().is_ipv4() => ("inet", "tessera", "pz4"),
            NftElement::PairZone { .. } => ("inet", "tessera", "pz6"),
            NftElement::Reach { net, .. } if net.addr().is_ipv4() => ("inet", "tessera", "reach4"),
            NftElement::Reach { .. } => ("inet", "tessera", "reach6"),
            NftElement::Vtep { ip: IpAddr::V4(_) } => ("inet", "tessera", "vteps4"),
            NftElement::Vtep { ip: IpAddr::V6(_) } => ("inet", "tessera", "vteps6"),
            NftElement::Uplink { .. } => ("inet", "tessera", "uplinks"),
            NftElement::UplinkSlice { slice, .. } => {
                ("inet", "tessera", SLICE_SETS[usize::from(*slice % crate::names::SNAT_SLICES)])
            }
            NftElement::ExtZone { address, .. } => ("inet", "tessera", if address.is_ipv4() { "extzone4" } else { "extzone6" }),
            NftElement::ExtMark { address, .. } => ("inet", "tessera", if address.is_ipv4() { "extmark4" } else { "extmark6" }),
            NftElement::ExtOut { address } => ("inet", "tessera", if address.is_ipv4() { "extout4" } else { "extout6" }),
            NftElement::FipIn { floating, .. } => ("inet", "tessera", if floating.is_ipv4() { "fipin4" } else { "fipin6" }),
            NftElement::FipOut { floating, .. } => ("inet", "tessera", if floating.is_ipv4() { "fipout4" } else { "fipout6" }),
            NftElement::Snat { address, .. } => ("inet", "tessera", if address.is_ipv4() { "snat4" } else { "snat6" }),
            NftElement::PubZone { key, .. } => ("inet", "tessera", key.map('z')),
            NftElement::PubMark { key, .. } => ("inet", "tessera", key.map('m')),
            NftElement::PubDnat { key, .. } => ("inet", "tessera", key.map('d')),
        }
    }

    /// The endpoint port the element is about, for port elements.
    pub fn port(&self) -> Option<&str> {
        match self {
            NftElement::Ep4 { port, .. }
            | NftElement::Ep6 { port, .. }
            | NftElement::EpMac { port, .. }
            | NftElement::SvcMac { port, .. } => Some(port),
            _ => None,
        }
    }
}

impl fmt::Display for NftElement {
    /// The element in nft syntax, after `inet tessera zones` or the like.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (family, table, set) = self.location();
        write!(f, "{family} {table} {set} {{ ")?;
        match self {
            NftElement::Zone { ifname, zone } => write!(f, "\"{ifname}\" : {zone}")?,
            NftElement::Ep4 { port, mac, ip } => write!(f, "\"{port}\" . {mac} . {ip}")?,
            NftElement::Ep6 { port, mac, ip } => write!(f, "\"{port}\" . {mac} . {ip}")?,
            NftElement::EpMac { port, mac } | NftElement::SvcMac { port, mac } => write!(f, "\"{port}\" . {mac}")?,
            NftElement::PairZone { ifname, net, zone } => write!(f, "\"{ifname}\" . {net} : {zone}")?,
            NftElement::Reach { ifname, net } => write!(f, "\"{ifname}\" . {net}")?,
            NftElement::Vtep { ip } => write!(f, "{ip}")?,
            NftElement::Uplink { ifname } | NftElement::UplinkSlice { ifname, .. } => write!(f, "\"{ifname}\"")?,
            NftElement::ExtZone { address, zone } => write!(f, "{address} : {zone}")?,
            NftElement::ExtMark { address, mark } => write!(f, "{address} : {mark:#x}")?,
            NftElement::ExtOut { address } => write!(f, "{address}")?,
            NftElement::FipIn { floating, fixed } => write!(f, "{floating} : {fixed}")?,
            NftElement::FipOut { zone, fixed, floating } => write!(f, "{zone} . {fixed} : {floating}")?,
            NftElement::Snat { zone, address } => write!(f, "{zone} : {address}")?,
            NftElement::PubZone { key, zone } => write!(f, "{key} : {zone}")?,
            NftElement::PubMark { key, mark } => write!(f, "{key} : {mark:#x}")?,
            NftElement::PubDnat { key, fixed, port } => write!(f, "{key} : {fixed} . {port}")?,
        }
        f.write_str(" }")
    }
}

/// The sets that hold the uplinks of each SNAT port slice.
pub const SLICE_SETS: [&str; crate::names::SNAT_SLICES as usize] = [
    "slice0", "slice1", "slice2", "slice3", "slice4", "slice5", "slice6", "slice7", "slice8", "slice9", "slice10", "slice11",
    "slice12", "slice13", "slice14", "slice15",
];

/// Whose a link named like one of Tessera's is, by its alias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkMark {
    /// Tessera's mark: Tessera's to change and to delete.
    Ours,
    /// No alias (or, on a veth, an endpoint id without the mark: what
    /// earlier versions wrote): adopted (marked) when Tessera wants a link
    /// of that name and kind, never deleted.
    Unmarked,
    /// Someone else's alias: not Tessera's, left alone.
    Foreign,
}

/// The mark of a link with alias `alias`.
pub fn link_mark(alias: Option<&str>) -> LinkMark {
    match alias {
        None => LinkMark::Unmarked,
        Some(a) if a == crate::names::LINK_MARK => LinkMark::Ours,
        Some(a)
            if a.strip_prefix(crate::names::LINK_MARK)
                .and_then(|r| r.strip_prefix(':'))
                .is_some_and(|id| id.parse::<uuid::Uuid>().is_ok()) =>
        {
            LinkMark::Ours
        }
        Some(a) if a.parse::<uuid::Uuid>().is_ok() => LinkMark::Unmarked,
        Some(_) => LinkMark::Foreign,
    }
}

/// What kind of Tessera object a link name denotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnedName {
    Bridge(Vni),
    Vxlan(Vni),
    HostVeth,
}

/// Whether `name` is one Tessera gives its links, and which.
pub fn owned_link_name(name: &str) -> Option<OwnedName> {
    let vni_of = |digits: &str| -> Option<Vni> {
        if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.starts_with('0') {
            return None;
        }
        Vni::new(digits.parse().ok()?).ok()
    };
    if let Some(rest) = name.strip_prefix(BRIDGE_PREFIX) {
        return vni_of(rest).map(OwnedName::Bridge);
    }
    if let Some(rest) = name.strip_prefix(VXLAN_PREFIX) {
        return vni_of(rest).map(OwnedName::Vxlan);
    }
    if let Some(rest) = name.strip_prefix(VETH_PREFIX) {
        if rest.len() == 8 && rest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Some(OwnedName::HostVeth);
        }
    }
    None
}

/// Whether a routing table id is Tessera's: a network's VRF, the gateway
/// table or a steering target's table (all at or above [`TABLE_BASE`]).
pub fn owned_table(table: u32) -> bool {
    table >= TABLE_BASE
}

/// Whether a rule is Tessera's: at our priority, selecting one of our tables
/// by one of our links, or by a mark equal to the table's number.
pub fn owned_rule(iifname: Option<&str>, fwmark: Option<u32>, priority: u32, table: u32) -> bool {
    if priority == crate::names::UPLINK_PRIORITY {
        return table == crate::names::GATEWAY_TABLE && iifname.is_some() && fwmark.is_none();
    }
    let by_link = matches!(iifname.and_then(owned_link_name), Some(OwnedName::Bridge(_) | OwnedName::Vxlan(_)));
    let by_mark = iifname.is_none() && fwmark == Some(table);
    priority == RULE_PRIORITY && owned_table(table) && (by_link || by_mark)
}

/// The table of the network whose bridge or tunnel `iifname` is.
pub fn table_of_link(iifname: &str) -> Option<u32> {
    match owned_link_name(iifname)? {
        OwnedName::Bridge(v) | OwnedName::Vxlan(v) => Some(TABLE_BASE + v.get()),
        OwnedName::HostVeth => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_is_by_exact_name_shape() {
        assert_eq!(owned_link_name("tb100"), Some(OwnedName::Bridge(Vni::new(100).unwrap())));
        assert_eq!(owned_link_name("tx7"), Some(OwnedName::Vxlan(Vni::new(7).unwrap())));
        assert_eq!(owned_link_name("tv0123abcd"), Some(OwnedName::HostVeth));
        for not_ours in ["tb", "tb0", "tb012", "tbx", "tx99999999", "tv0123ABCD", "tv0123abc", "eth0", "tap1"] {
            assert_eq!(owned_link_name(not_ours), None, "{not_ours}");
        }
    }

    #[test]
    fn steering_tables_are_ours_and_never_a_network_s() {
        use crate::names::{is_steer_table, steer_table, STEER_TARGETS_MAX};
        assert!(owned_table(steer_table(0)) && owned_table(steer_table(STEER_TARGETS_MAX as u32 - 1)));
        assert!(!is_steer_table(steer_table(STEER_TARGETS_MAX as u32)));
        let last_vrf = TABLE_BASE + Vni::MAX;
        assert!(!is_steer_table(last_vrf) && last_vrf < steer_table(0));
        assert!(!is_steer_table(crate::names::GATEWAY_TABLE));
    }

    #[test]
    fn rules_are_owned_only_at_our_priority_and_tables() {
        assert!(owned_rule(Some("tb5"), None, RULE_PRIORITY, TABLE_BASE + 5));
        assert!(!owned_rule(Some("tb5"), None, RULE_PRIORITY + 1, TABLE_BASE + 5));
        assert!(!owned_rule(Some("eth0"), None, RULE_PRIORITY, TABLE_BASE + 5));
        assert!(!owned_rule(Some("tb5"), None, RULE_PRIORITY, 254));
        assert!(!owned_rule(None, None, RULE_PRIORITY, TABLE_BASE + 5));
        assert!(owned_rule(None, Some(TABLE_BASE + 5), RULE_PRIORITY, TABLE_BASE + 5));
        assert!(!owned_rule(None, Some(0x4000), RULE_PRIORITY, TABLE_BASE + 5));
    }
}
