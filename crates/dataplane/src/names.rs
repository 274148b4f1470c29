//! The names and numbers Tessera's kernel objects share: the prefixes of its
//! links, its routing tables and `ip rule` priorities, its packet and
//! connection mark bits, the metric that ends a VRF, kernel parameter keys,
//! and the names of its nftables objects (the skeleton's version, the policy
//! table, its dispatch and steer chains and `digests` map).
//!
//! A leaf: it refers to no other module of the crate, so the modules that
//! compute objects ([`crate::desired`], [`crate::policy`]), read them
//! ([`crate::observed`]), write them ([`crate::op`], [`crate::nft`]) or plan
//! them ([`mod@crate::plan`]) all agree on these without referring to each
//! other.

use std::fmt;

use serde::{Deserialize, Serialize};

/// First routing table id used for a network's VRF: the VRF of VNI `v` is
/// table `TABLE_BASE + v`. Tables at or above this id belong to Tessera.
pub const TABLE_BASE: u32 = 0x10000;

/// Priority of the `ip rule`s that select a network's VRF by incoming
/// interface. Rules at this priority whose interface is `tb*` or `tx*` belong
/// to Tessera.
pub const RULE_PRIORITY: u32 = 1000;

/// The routing table of a gateway host's external addresses (floating IPs
/// and SNAT addresses it answers for), looked up for what arrives on an
/// uplink: `ADDRESS dev tb<VNI>` for each, so the kernel answers ARP for
/// them there (a proxy entry answers only for a destination routed through
/// another device). Its translated packets are routed in their network's
/// table, by the mark nftables gives them.
pub const GATEWAY_TABLE: u32 = TABLE_BASE;

/// Priority of the `iif UPLINK lookup GATEWAY_TABLE` rules: after the
/// networks' rules, so a marked packet finds its network first.
pub const UPLINK_PRIORITY: u32 = RULE_PRIORITY + 2;

/// The packet and connection mark bit of published ports: the connection
/// of a published port carries it (its `ct mark`), and so do the answers
/// from its endpoint, which the rule at [`PUBLISHED_PRIORITY`] routes by
/// the host's main table (towards the client), not the network's.
pub const PUBLISHED_MARK: u32 = 0x4000_0000;

/// Priority of `fwmark PUBLISHED/PUBLISHED lookup main`: before the
/// networks' rules.
pub const PUBLISHED_PRIORITY: u32 = RULE_PRIORITY - 1;

/// The host's main routing table.
pub const MAIN_TABLE: u32 = 254;

/// The SNAT port slices: a gateway translates TCP and UDP flows to ports
/// of its own slice (its rank among the external network's gateways,
/// modulo this), so two gateways never hand out the same address and port.
pub const SNAT_SLICES: u16 = 16;

/// The ports of SNAT slice `slice`: 1024 to 65535 in [`SNAT_SLICES`] parts.
pub fn snat_ports(slice: u16) -> (u16, u16) {
    let width = (65536 - 1024) / u32::from(SNAT_SLICES);
    let lo = 1024 + width * u32::from(slice % SNAT_SLICES);
    (lo as u16, (lo + width - 1) as u16)
}

/// Metric of the `unreachable default` route that ends every VRF, the same as
/// the Linux VRF device uses, so that a lookup that misses in a VRF never
/// falls through to the host's main table.
pub const VRF_UNREACHABLE_METRIC: u32 = 4_278_198_272;

/// Prefix of the bridge of a network (`tb` + decimal VNI).
pub const BRIDGE_PREFIX: &str = "tb";
/// Prefix of the VXLAN device of a network (`tx` + decimal VNI).
pub const VXLAN_PREFIX: &str = "tx";
/// The prefix of endpoints' host-side veths (`tv<8 hex of the endpoint id>`).
pub use tessera_model::names::VETH_PREFIX;

/// A kernel parameter under `/proc/sys`, as a path relative to it
/// (`net/ipv4/conf/tb100/proxy_arp`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SysctlKey(pub String);

impl SysctlKey {
    /// `net/ipv4/conf/DEV/PARAM`
    pub fn ipv4_conf(dev: &str, param: &str) -> Self {
        SysctlKey(format!("net/ipv4/conf/{dev}/{param}"))
    }
    /// `net/ipv6/conf/DEV/PARAM`
    pub fn ipv6_conf(dev: &str, param: &str) -> Self {
        SysctlKey(format!("net/ipv6/conf/{dev}/{param}"))
    }
    /// `net/ipv4/neigh/DEV/PARAM`
    pub fn ipv4_neigh(dev: &str, param: &str) -> Self {
        SysctlKey(format!("net/ipv4/neigh/{dev}/{param}"))
    }
    /// `net/ipv6/neigh/DEV/PARAM`
    pub fn ipv6_neigh(dev: &str, param: &str) -> Self {
        SysctlKey(format!("net/ipv6/neigh/{dev}/{param}"))
    }
    /// The dotted name `sysctl(8)` uses.
    pub fn dotted(&self) -> String {
        self.0.replace('/', ".")
    }
}

impl fmt::Display for SysctlKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.dotted())
    }
}

/// Version marker of the skeleton, kept as the comment of a rule of each
/// table. Change it whenever [`crate::nft::skeleton_script`] changes: agents
/// then replace the tables.
pub const SKELETON_VERSION: &str = "tessera-v11";

/// The packet mark bit nftables sets on what it lets in from a port (after
/// anti-spoofing) or a tunnel; the `ip rule`s that select a network's table
/// match only packets that carry it, so without Tessera's nftables nothing
/// from a container or a tunnel is forwarded (fail closed).
pub const VERIFIED_MARK: u32 = 0x2000_0000;

/// The packet mark bit of steered packets: the steer chain marks a packet
/// of a service chain `VERIFIED_MARK | STEER_MARK | i`, `i` the host-wide
/// number of the service instance (target) it goes to, and the rule at
/// [`STEER_PRIORITY`] sends it to that target's table.
pub const STEER_MARK: u32 = 0x0800_0000;

/// The bits of the mark the steering rules match: [`STEER_MARK`] and the
/// target's number (below `0xffff`).
pub const STEER_MASK: u32 = 0x0800_ffff;

/// The routing table of steering target `i` is `STEER_TABLE_BASE + i`
/// ([`steer_table`]): above every VRF table (`TABLE_BASE + VNI` ends at
/// `0x0100_ffff`), and at or above [`TABLE_BASE`], so Tessera's.
pub const STEER_TABLE_BASE: u32 = 0x0800_0000;

/// How many steering targets a host can have.
pub const STEER_TARGETS_MAX: usize = 0xffff;

/// Priority of `fwmark STEER|i/STEER_MASK lookup STEER_TABLE_BASE+i`:
/// before [`PUBLISHED_PRIORITY`] and the networks' rules.
pub const STEER_PRIORITY: u32 = RULE_PRIORITY - 5;

/// The seed of the hash that picks a steered flow's target: the same on
/// every host, so every host picks the same instance for a flow.
pub const STEER_SEED: u32 = 0x5465_7373;

/// The routing table of steering target `index`.
pub fn steer_table(index: u32) -> u32 {
    STEER_TABLE_BASE + index
}

/// The packet mark (under [`STEER_MASK`]) of what goes to steering target
/// `index`.
pub fn steer_mark(index: u32) -> u32 {
    STEER_MARK | index
}

/// Whether a routing table is a steering target's.
pub fn is_steer_table(table: u32) -> bool {
    (STEER_TABLE_BASE..STEER_TABLE_BASE + STEER_TARGETS_MAX as u32).contains(&table)
}

/// The connection mark bit of the agent's health probes: set (in `inet
/// tessera`'s `probe_out`) on the connections the host opens into a
/// network's bridge with a socket mark of a network's table, so the host
/// guard lets their answers in.
pub const PROBE_MARK: u32 = 0x1000_0000;

/// Priority of the rules that drop what a network's bridge or tunnel
/// brings in without [`VERIFIED_MARK`] (right after [`RULE_PRIORITY`]).
pub const UNVERIFIED_PRIORITY: u32 = RULE_PRIORITY + 1;

/// The table of the firewall of network pairs.
pub const POLICY_TABLE: &str = "tessera_policy";

/// The mark Tessera sets on the links it makes (`ip link set DEV alias
/// tessera`): a link is Tessera's by this mark, not by its name. A host veth
/// carries `tessera` from its creation and `tessera:<endpoint id>` once the
/// container side is fully configured ([`veth_mark`]).
pub const LINK_MARK: &str = "tessera";

/// The alias of a host veth whose container side is fully configured.
pub fn veth_mark(endpoint: uuid::Uuid) -> String {
    format!("{LINK_MARK}:{endpoint}")
}
/// The chain the forward hook jumps to: the pair dispatch.
pub const DISPATCH: &str = "dispatch";
/// The chain the policy table's prerouting hook jumps to: the steering of
/// service chains' traffic to service instances (its rules are the
/// policy module's `steer_chain`).
pub const STEER: &str = "steer";
/// The name of the map of digests.
pub const DIGESTS: &str = "digests";

/// Whether the log chain `name` passes the flow after logging it.
pub fn log_chain_passes(name: &str) -> bool {
    name.starts_with('g') && name.ends_with('p')
}
