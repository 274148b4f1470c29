//! The Linux data plane of a Tessera host.
//!
//! Given the desired state of the networks on a host ([`DesiredHost`]), a
//! [`Dataplane`] observes what the kernel holds ([`Observed`]), the pure
//! [`plan()`](plan::plan) computes the ordered [`KernelOp`]s between them, and the data
//! plane applies those. [`reconcile`] does the three steps.
//!
//! Shape of the kernel data plane (see `ARCHITECTURE.md`): per network (VNI
//! `v`) a bridge `tb<v>` holding the gateways and answering ARP/NS for remote
//! endpoints, a VXLAN device `tx<v>` (not enslaved: the overlay is routed), a
//! routing table `0x10000 + v` selected by `ip rule iif`, and a conntrack
//! zone; per local endpoint a veth `tv<id8>` on the bridge; anti-spoofing and
//! zones in nftables sets and maps.
//!
//! Choices worth knowing:
//! - every VRF table ends in `unreachable default` (IPv4 and IPv6), so a
//!   lookup that misses never falls through to the host's main table;
//! - routes to remote endpoints are device routes (`dev tx<v> scope link`)
//!   with a permanent neighbour entry: the kernel refuses `onlink` on a
//!   route without a gateway;
//! - the container side of a veth is created directly in the container's
//!   namespace with its final name, MAC and MTU (one netlink request);
//! - the host side's alias holds the endpoint id once the container side is
//!   configured: an endpoint without it is configured again;
//! - reverse-path filtering is turned off on `tb*`/`tx*` (it does not see
//!   `ip rule`); a host-wide strict `net.ipv4.conf.all.rp_filter=1` would
//!   override that and must not be set (loose, 2, works);
//! - traffic the host itself originates towards containers (an answer from
//!   a gateway address) is routed by the main table, which holds no overlay
//!   routes: containers get ARP/NS answers from their gateway but, for now,
//!   no ping reply from it.
//!
//! - every endpoint port is an *isolated* bridge port and the bridge answers
//!   ARP (`proxy_arp_pvlan`) and NS (a proxy entry per address) for every
//!   address of the network: traffic between two endpoints on one host is
//!   routed through the host (TTL decremented once, ICMP redirects dropped)
//!   and so meets the firewall in the forward hook exactly as traffic
//!   between hosts does;
//! - a network's VRF may import another network's routes (route leaking by
//!   policy or route target): its subnets through that network's bridge,
//!   its remote endpoints through that network's VXLAN device, so the
//!   packet travels on the destination network's VNI and the receiving host
//!   delivers it with its own VRF; the network imported from is present on
//!   the host for that (its devices), even without local endpoints;
//! - the firewall of flows between and within networks is
//!   `table inet tessera_policy` ([`policy`]): per pair of networks, a chain
//!   of a few verdict-map lookups built by `tessera-policy`; `reject` marks
//!   the packet with the source network's table number, and with
//!   `fwmark_reflect` plus one `ip rule fwmark` per network the reset or
//!   ICMP error is routed in that VRF;
//! - when a change may refuse flows it let through, the conntrack zone of
//!   the pair is flushed (`conntrack -D -w ZONE`), so running flows end;
//! - service chains steer a flow's packets to a service instance without
//!   changing their addresses: the policy table's `steer` chain (prerouting)
//!   marks them with the number of an instance, picked by a hash of the
//!   flow that every host and both directions compute alike, and an `ip
//!   rule` per instance sends them to its table (`default via INSTANCE
//!   onlink`); a service instance's port may send any source address with
//!   its own MAC, and its namespace forwards.
//!
//! Modules: [`names`], [`desired`], [`observed`], [`op`], [`mod@plan`],
//! [`policy`] and [`nft`] are pure; [`mod@dataplane`] holds the [`Dataplane`]
//! trait and [`reconcile`], [`Reconciler`] plans against what it knows the
//! kernel holds (`follow` carries actions out on it), [`error`] its error; [`linux`] talks to the kernel
//! (netlink, `nft`, `conntrack`, `/proc/sys`, with [`nfnetlink`] and
//! [`conntrack`]); [`handover`] moves a staged interface to the host's
//! namespace for a runtime (Docker's `Join`); [`fake`] is the recording
//! stand-in for tests.
#![deny(unsafe_code)]

pub mod conntrack;
pub mod ct_events;
pub mod dataplane;
pub mod desired;
pub mod error;
pub mod fake;
pub mod fastpath;
mod follow;
pub mod handover;
pub mod linux;
pub mod names;
pub mod nflog;
pub mod nfnetlink;
pub mod nft;
pub mod nft_events;
pub mod observed;
pub mod op;
pub mod plan;
pub mod policy;
mod reconciler;
pub mod vif;

pub use dataplane::{reconcile, ApplyReport, Dataplane, KernelOpFailure};
pub use desired::{
    bridge_name, host_veth_name, table_id, vtep_mac, vxlan_name, DesiredError, DesiredHost, DesiredNetwork, DesiredSubnet,
    LocalEndpoint, PairPolicy, PairWatch, PairZone, RemoteEndpoint,
};
pub use error::DataplaneError;
pub use fake::FakeDataplane;
pub use linux::LinuxDataplane;
pub use observed::Observed;
pub use op::KernelOp;
pub use plan::{plan, plan_with, PlanMemo};
pub use policy::RuleCounter;
pub use reconciler::{Look, Reconciler};
/// The policy compiler whose programs [`DesiredHost::policies`] holds.
pub use vif::{VifEntry, VifKind};
