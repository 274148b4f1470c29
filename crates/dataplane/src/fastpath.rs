//! The TC-eBPF fast path's tables as values (`tessera agent --dataplane
//! ebpf`): what a host's desired state puts in the programs' maps, the bytes
//! each entry is in the kernel (the layout of `bpf/fastpath.bpf.c`), which
//! conntrack entries admit a flow, and the difference between the entries
//! wanted and those held. Pure; `linux::fastpath` loads the programs and
//! carries the differences out.
//!
//! What the fast path carries: IPv4 and IPv6 TCP and UDP packets of a
//! flow the kernel path allowed (an assured, untranslated conntrack entry in
//! the network's own zone, or the zone of two networks that import each
//! other; TCP only while established), from an endpoint's own MAC and
//! address, to an endpoint the network reaches. Everything else takes the
//! kernel path, which judges it: new flows, translated flows (floating IPs,
//! SNAT, published ports), service instances' ports and networks with
//! service chains, ICMP, DHCP, neighbour discovery.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use tessera_model::{MacAddr, Vni};

use crate::ct_events::{status, CtEvent, CtEventKind, TCP_ESTABLISHED};
use crate::desired::{host_veth_name, vtep_mac, vxlan_name, DesiredHost};

/// The UDP port of the metadata-mode VXLAN device: fast-path packets
/// travel between hosts there (a metadata-mode device cannot share 4789
/// with the networks' own devices). The host guard accepts it from the
/// fabric's VTEPs only, as 4789.
pub const FASTPATH_PORT: u16 = 4799;

/// The metadata-mode VXLAN device.
pub const MD_DEVICE: &str = "tfast";

/// The programs, by their names in the object.
pub const FROM_CONTAINER: &str = "from_container";
pub const FROM_TUNNEL: &str = "from_tunnel";
pub const FROM_UNDERLAY: &str = "from_underlay";
pub const TO_UNDERLAY: &str = "to_underlay";

/// The maps, by their names in the object.
pub mod maps {
    pub const SRC: &str = "ts_src";
    pub const DST: &str = "ts_dst";
    pub const FLOWS: &str = "ts_flows";
    pub const TUNNELS: &str = "ts_tunnels";
    pub const CONFIG: &str = "ts_config";
    pub const PORTS: &str = "ts_ports";
    /// Rebuilt by each agent (not among [`ALL`], which an agent takes over).
    pub const ENCAP: &str = "ts_encap";
    pub const ALL: [&str; 6] = [SRC, DST, FLOWS, TUNNELS, CONFIG, PORTS];
}

/// An address a local endpoint may send from, on its host port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Source {
    pub port: String,
    pub addr: IpAddr,
    pub mac: MacAddr,
    pub vni: Vni,
}

/// Where an endpoint a network reaches is: its own network `vni` (the
/// network itself, or one whose routes it imports), and its host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Place {
    pub vni: Vni,
    pub at: At,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum At {
    /// On this host, behind its host port.
    Local { port: String, mac: MacAddr },
    /// On the host at this underlay address.
    Remote { underlay: Ipv4Addr },
}

/// One direction of a flow within network `vni`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowKey {
    pub vni: Vni,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
}

impl FlowKey {
    /// The original direction of connection `t`, keyed under network `vni`.
    pub fn of(vni: Vni, t: &crate::ct_events::FiveTuple) -> FlowKey {
        FlowKey { vni, src: t.src, dst: t.dst, sport: t.sport, dport: t.dport, protocol: t.protocol }
    }

    pub fn reversed(self) -> FlowKey {
        FlowKey { src: self.dst, dst: self.src, sport: self.dport, dport: self.sport, ..self }
    }
}

/// What the fast path's maps should hold on a host, by interface names
/// (the kernel's indexes are looked up when the entries are written).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tables {
    pub sources: BTreeSet<Source>,
    pub destinations: BTreeMap<(Vni, IpAddr), Place>,
    /// Each network's own VXLAN device.
    pub tunnels: BTreeMap<Vni, String>,
    /// The conntrack zones whose flows may take the fast path: a network's
    /// own, or the zone two networks that import each other share (flows
    /// between them), with its networks.
    pub zones: BTreeMap<u16, Vec<Vni>>,
    /// Host ports that get the program.
    pub ports: BTreeSet<String>,
    /// Networks whose traffic keeps the kernel path, and why.
    pub kernel_only: BTreeMap<Vni, &'static str>,
}

/// One line per entry, in the order of the maps: what the golden tests
/// compare.
impl std::fmt::Display for Tables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for p in &self.ports {
            writeln!(f, "port {p}")?;
        }
        for s in &self.sources {
            writeln!(f, "source {} {} {} vni {}", s.port, s.addr, s.mac, s.vni.get())?;
        }
        for ((vni, addr), place) in &self.destinations {
            let at = match &place.at {
                At::Local { port, mac } => format!("local {port} {mac}"),
                At::Remote { underlay } => format!("remote {underlay}"),
            };
            writeln!(f, "destination vni {} {addr} -> vni {} {at}", vni.get(), place.vni.get())?;
        }
        for (vni, dev) in &self.tunnels {
            writeln!(f, "tunnel vni {} {dev}", vni.get())?;
        }
        for (zone, vnis) in &self.zones {
            let vnis: Vec<String> = vnis.iter().map(|v| v.get().to_string()).collect();
            writeln!(f, "zone {zone} vni {}", vnis.join(", "))?;
        }
        for (vni, why) in &self.kernel_only {
            writeln!(f, "kernel path vni {}: {why}", vni.get())?;
        }
        Ok(())
    }
}

/// Why a host cannot use the fast path at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsupported {
    #[error("the underlay address {0} is IPv6; the fast path tunnels over IPv4 only")]
    Ipv6Underlay(IpAddr),
}

/// The fast path's tables for `desired`.
pub fn tables(desired: &DesiredHost) -> Result<Tables, Unsupported> {
    if desired.underlay_ip.is_ipv6() {
        return Err(Unsupported::Ipv6Underlay(desired.underlay_ip));
    }
    let steered: BTreeSet<Vni> = desired.steering.iter().map(|s| s.vni).collect();
    let mut t = Tables::default();
    // Each network's endpoints, where they are.
    let mut reached: BTreeMap<Vni, Vec<(IpAddr, At)>> = BTreeMap::new();
    for net in &desired.networks {
        // The network's tunnel takes what arrives for it, fast or not.
        t.tunnels.insert(net.vni, vxlan_name(net.vni));
        if steered.contains(&net.vni) {
            t.kernel_only.insert(net.vni, "service chains steer its traffic");
            continue;
        }
        t.zones.insert(net.zone, vec![net.vni]);
        let endpoints = reached.entry(net.vni).or_default();
        for ep in net.local.iter().filter(|ep| !ep.service) {
            let port = host_veth_name(ep.id);
            t.ports.insert(port.clone());
            for addr in ep.ips.iter().map(|n| n.addr()) {
                t.sources.insert(Source { port: port.clone(), addr, mac: ep.mac, vni: net.vni });
                endpoints.push((addr, At::Local { port: port.clone(), mac: ep.mac }));
            }
        }
        for r in &net.remote {
            if let IpAddr::V4(underlay) = r.host_underlay {
                endpoints.push((r.ip, At::Remote { underlay }));
            }
        }
    }
    for net in desired.networks.iter().filter(|n| reached.contains_key(&n.vni)) {
        for vni in std::iter::once(&net.vni).chain(&net.imports) {
            for (addr, at) in reached.get(vni).into_iter().flatten() {
                t.destinations.entry((net.vni, *addr)).or_insert(Place { vni: *vni, at: at.clone() });
            }
        }
    }
    for pz in &desired.pair_zones {
        if reached.contains_key(&pz.a) && reached.contains_key(&pz.b) {
            t.zones.insert(pz.zone, vec![pz.a, pz.b]);
        }
    }
    Ok(t)
}

/// What a conntrack event means for the fast path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// The flow is allowed and established: both directions may take the
    /// fast path.
    Admit(Vec<FlowKey>),
    /// The flow ended or is closing: both directions take the kernel path.
    Remove(Vec<FlowKey>),
    /// Not a flow the fast path carries.
    Ignore,
}

impl Admission {
    /// This admission, or nothing when it admits a flow of a network whose
    /// zone was flushed (`flushed_at`) at or after `since`, when what it
    /// was read from began (an event batch, a dump): conntrack allowed the
    /// flow under the rules of before (the flush ended its entry), and the
    /// flow comes back when conntrack allows it again.
    pub fn unless_flushed_since(self, flushed_at: &HashMap<Vni, Instant>, since: Instant) -> Admission {
        match &self {
            Admission::Admit(keys) if keys.iter().any(|k| flushed_at.get(&k.vni).is_some_and(|at| *at >= since)) => {
                Admission::Ignore
            }
            _ => self,
        }
    }
}

/// Whether the connection of `event` may take the fast path, given the
/// zones whose flows may (`Tables::zones`). A flow between two networks
/// is keyed under both (a host keys a packet by the network it enters
/// from: a container's, or the tunnel's).
pub fn admission(event: &CtEvent, zones: &BTreeMap<u16, Vec<Vni>>) -> Admission {
    let Some(vnis) = zones.get(&event.zone) else { return Admission::Ignore };
    let t = &event.tuple;
    if t.protocol != 6 && t.protocol != 17 {
        return Admission::Ignore;
    }
    let both: Vec<FlowKey> = vnis
        .iter()
        .flat_map(|&vni| {
            let key = FlowKey::of(vni, t);
            [key, key.reversed()]
        })
        .collect();
    if event.kind == CtEventKind::Destroy {
        return Admission::Remove(both);
    }
    let translated = event.status & (status::SRC_NAT | status::DST_NAT) != 0;
    let established = t.protocol == 17 || event.tcp_state == Some(TCP_ESTABLISHED);
    if event.status & status::ASSURED != 0 && established && !translated {
        Admission::Admit(both)
    } else {
        Admission::Remove(both)
    }
}

/// The connection a flow of the fast path is of, as far as it is known:
/// conntrack's id (the next connection of a five-tuple often gets the id of
/// the one before: the kernel reuses its memory) and when conntrack
/// confirmed it (ns of wall-clock time; only dumps and destroy events say).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Owner {
    pub id: Option<u32>,
    pub start_ns: Option<u64>,
}

impl Owner {
    /// The connection of `ev`.
    pub fn of(ev: &CtEvent) -> Owner {
        Owner { id: Some(ev.id), start_ns: ev.start_ns }
    }

    /// Whether `other` may be the same connection: nothing known of both
    /// differs.
    pub fn may_be(&self, other: &Owner) -> bool {
        fn differ<T: PartialEq>(a: Option<T>, b: Option<T>) -> bool {
            a.zip(b).is_some_and(|(a, b)| a != b)
        }
        !differ(self.id, other.id) && !differ(self.start_ns, other.start_ns)
    }

    /// This, with what `other` (the same connection) knows besides.
    pub fn with(self, other: &Owner) -> Owner {
        Owner { id: self.id.or(other.id), start_ns: self.start_ns.or(other.start_ns) }
    }
}

/// What the fast path carried of one direction of a flow for one
/// connection: in its map still, or retired (taken off it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Carried {
    /// Packets and bytes.
    pub counts: (u64, u64),
    pub owner: Owner,
    /// When retired counts were retired (ns of wall-clock time, as
    /// conntrack's timestamps): a connection confirmed later is another's.
    pub retired_ns: Option<u64>,
}

impl Carried {
    /// Whether these are counts of the connection of `ev`.
    pub fn of(&self, ev: &CtEvent) -> bool {
        let later = matches!((self.retired_ns, ev.start_ns), (Some(retired), Some(start)) if start > retired);
        self.owner.may_be(&Owner::of(ev)) && !later
    }
}

/// Adds what the fast path carried (`counts`, by direction) to the
/// conntrack entries it carried them for: the kernel's counters see only
/// the packets of the kernel path.
pub fn add_counts(entries: &mut [CtEvent], zones: &BTreeMap<u16, Vec<Vni>>, counts: &HashMap<FlowKey, Vec<Carried>>) {
    if counts.is_empty() {
        return;
    }
    for ev in entries {
        let Some(vnis) = zones.get(&ev.zone) else { continue };
        let (mut orig, mut reply) = (ev.orig, ev.reply);
        for &vni in vnis {
            let key = FlowKey::of(vni, &ev.tuple);
            for (side, k) in [(&mut orig, key), (&mut reply, key.reversed())] {
                for c in counts.get(&k).into_iter().flatten().filter(|c| c.of(ev)) {
                    *side = (side.0 + c.counts.0, side.1 + c.counts.1);
                }
            }
        }
        (ev.orig, ev.reply) = (orig, reply);
    }
}

/// The bytes of the maps' keys and values, as `bpf/fastpath.bpf.c` lays
/// them out (addresses and ports in network order, other numbers in the
/// host's).
pub mod bytes {
    use super::*;

    /// An address in 16 bytes: IPv6 as it is, IPv4 mapped (`::ffff:a.b.c.d`).
    pub fn addr(a: IpAddr) -> [u8; 16] {
        match a {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        }
    }

    fn parse_addr(b: &[u8]) -> IpAddr {
        let mut o = [0u8; 16];
        o.copy_from_slice(&b[..16]);
        let v6 = std::net::Ipv6Addr::from(o);
        v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
    }

    pub fn src_key(ifindex: u32, a: IpAddr) -> [u8; 20] {
        let mut b = [0; 20];
        b[..4].copy_from_slice(&ifindex.to_ne_bytes());
        b[4..].copy_from_slice(&addr(a));
        b
    }

    pub fn src_value(mac: MacAddr, vni: Vni) -> [u8; 12] {
        let mut b = [0; 12];
        b[..6].copy_from_slice(&mac.0);
        b[8..].copy_from_slice(&vni.get().to_ne_bytes());
        b
    }

    pub fn dst_key(vni: Vni, a: IpAddr) -> [u8; 20] {
        let mut b = [0; 20];
        b[..4].copy_from_slice(&vni.get().to_ne_bytes());
        b[4..].copy_from_slice(&addr(a));
        b
    }

    /// A local endpoint: its host port's index and its MAC; a remote one:
    /// index 0, its host's underlay address and VTEP MAC; and its network.
    pub fn dst_value(ifindex: u32, underlay: Ipv4Addr, mac: MacAddr, vni: Vni) -> [u8; 20] {
        let mut b = [0; 20];
        b[..4].copy_from_slice(&ifindex.to_ne_bytes());
        b[4..8].copy_from_slice(&underlay.octets());
        b[8..14].copy_from_slice(&mac.0);
        b[16..].copy_from_slice(&vni.get().to_ne_bytes());
        b
    }

    pub fn flow_key(k: &FlowKey) -> [u8; 44] {
        let mut b = [0; 44];
        b[..4].copy_from_slice(&k.vni.get().to_ne_bytes());
        b[4..20].copy_from_slice(&addr(k.src));
        b[20..36].copy_from_slice(&addr(k.dst));
        b[36..38].copy_from_slice(&k.sport.to_be_bytes());
        b[38..40].copy_from_slice(&k.dport.to_be_bytes());
        b[40] = k.protocol;
        b
    }

    pub fn parse_flow_key(b: &[u8; 44]) -> Option<FlowKey> {
        Some(FlowKey {
            vni: Vni::new(u32::from_ne_bytes([b[0], b[1], b[2], b[3]])).ok()?,
            src: parse_addr(&b[4..20]),
            dst: parse_addr(&b[20..36]),
            sport: u16::from_be_bytes([b[36], b[37]]),
            dport: u16::from_be_bytes([b[38], b[39]]),
            protocol: b[40],
        })
    }

    /// A new flow's value: nothing carried yet, not closing.
    pub const FLOW_ZERO: [u8; 24] = [0; 24];

    /// Packets and bytes a flow's value holds.
    pub fn flow_counts(b: &[u8; 24]) -> (u64, u64) {
        let half = |i: usize| u64::from_ne_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
        (half(0), half(8))
    }

    /// Whether the program marked the flow closing (its first FIN or RST).
    pub fn flow_closing(b: &[u8; 24]) -> bool {
        b[16..20] != [0; 4]
    }

    /// What `to_underlay` encapsulates the packets of a network's VXLAN
    /// device with: its VNI, and the device its datagrams leave by.
    pub fn encap_value(vni: Vni, underlay_ifindex: u32) -> [u8; 8] {
        let mut b = [0; 8];
        b[..4].copy_from_slice(&vni.get().to_ne_bytes());
        b[4..].copy_from_slice(&underlay_ifindex.to_ne_bytes());
        b
    }

    /// `prefix`: the length of the underlay address's prefix (0: unknown).
    pub fn config(md_ifindex: u32, underlay: Ipv4Addr, prefix: u8) -> [u8; 16] {
        let mut b = [0; 16];
        b[..4].copy_from_slice(&md_ifindex.to_ne_bytes());
        b[4..8].copy_from_slice(&underlay.octets());
        b[8..14].copy_from_slice(&vtep_mac(IpAddr::V4(underlay)).0);
        b[14] = prefix;
        b
    }
}

/// A remote endpoint's destination value: its host's VTEP MAC is the inner
/// destination MAC, as the kernel path's neighbour entry makes it.
pub fn remote_mac(underlay: Ipv4Addr) -> MacAddr {
    vtep_mac(IpAddr::V4(underlay))
}

#[cfg(test)]
mod tests;
