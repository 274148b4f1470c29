//! The TC-eBPF fast path of the calling process's network namespace
//! (`tessera agent --dataplane ebpf`): the programs of `bpf/fastpath.bpf.c`
//! (built by clang at build time, loaded with aya), the metadata-mode VXLAN
//! device they tunnel through ([`MD_DEVICE`]), and their maps, kept equal to
//! the [`Tables`] of the host's desired state.
//!
//! Flows enter the fast path when conntrack says the kernel path allowed
//! them: a reader of the namespace's conntrack update and destroy events
//! admits and removes them ([`admission`]), and a dump of the table every
//! [`RESYNC_EVERY`] puts right what events were lost. A change that may
//! refuse flows flushes their conntrack zone; the agent also tells the fast
//! path ([`FastPath::zones_flushed`]), which drops the zone's flows at once,
//! so their next packets meet the kernel path's new rules.
//!
//! `from_underlay` is attached (with a tcx link, which goes with the agent)
//! to the device that holds the underlay address: it decapsulates the
//! datagrams of carried flows itself and delivers them, sparing them the
//! host's stack; what it leaves, and everything while no agent runs, takes
//! the metadata-mode device and `from_tunnel`. `to_underlay` is attached
//! (tcx, egress) to each network's VXLAN device but one with queueing
//! disciplines of its own, when `from_underlay` is on the underlay device
//! (an Ethernet one): it encapsulates the kernel path's packets to other
//! hosts, but GSO ones, as the device would, and sends them on the underlay
//! device; while no agent runs the devices do it.
//!
//! `from_tunnel` is attached to the metadata-mode device with netlink
//! (cls_bpf, direct action) and stays attached when the agent stops: what
//! arrives from other hosts' fast paths is still delivered. `from_container`
//! is attached to host ports with tcx links, which coexist with the
//! queueing disciplines others put there and go with the agent (the ports'
//! packets then take the kernel path until it is back). A new agent replaces them (and their maps) and admits the
//! running flows again from a dump of conntrack; until then their packets
//! take the kernel path. A packet is never dropped for want of a fast-path
//! entry: whatever the maps lack goes through the kernel path.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap as BpfHash, MapData};
use aya::programs::tc::SchedClassifierLinkId;
use aya::Ebpf;
use tessera_model::Vni;

use crate::ct_events::{CtEvent, GROUP_DESTROY, GROUP_UPDATE};
use crate::fastpath::{
    admission, bytes, maps, remote_mac, Admission, At, Carried, FlowKey, Owner, Tables, FASTPATH_PORT, FROM_CONTAINER,
    FROM_TUNNEL, MD_DEVICE, TO_UNDERLAY,
};

mod load;

use load::{attach, attach_tcx, attach_underlay, delete_filter, earlier_maps, filters, load, md_device, program, take};
pub use load::{md_device_present, FastPathError};

/// How long a new host port takes the kernel path before the fast path
/// takes it (when no queueing discipline of its own came meanwhile).
pub const SETTLE: Duration = Duration::from_secs(2);
/// How often the ports' queueing disciplines are checked between syncs.
pub const PORTS_EVERY: Duration = Duration::from_secs(1);
/// How often the flows are compared with a dump of conntrack.
pub const RESYNC_EVERY: Duration = Duration::from_secs(10);
/// How long the counts of a flow that left the fast path are kept for the
/// flow records after its connection ended (or, for one that left while
/// closing, after a resync last found its entry).
const RETIRED_KEEP: Duration = Duration::from_secs(30);
/// How many times a flow's counts are kept apart; the oldest go first.
const RETIRED_PER_FLOW: usize = 8;
/// Conntrack's liberal TCP window tracking (of the namespace).
const TCP_LIBERAL: &str = "/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal";
/// `BPF_NOEXIST`: an update that makes an entry only.
const BPF_NOEXIST: u64 = 1;
/// The tc priority of Tessera's filters.
const PRIORITY: u16 = 1;

type Flows = BpfHash<MapData, [u8; 44], [u8; 24]>;

struct State {
    ebpf: Ebpf,
    src: BpfHash<MapData, [u8; 20], [u8; 12]>,
    dst: BpfHash<MapData, [u8; 20], [u8; 20]>,
    flows: Flows,
    tunnels: BpfHash<MapData, u32, u32>,
    /// What the fast path delivered behind each host port.
    delivered: BpfHash<MapData, u32, [u8; 16]>,
    /// The ports `delivered` has an entry of.
    counted: std::collections::BTreeSet<u32>,
    /// What `to_underlay` encapsulates each network's VXLAN device's packets
    /// with, by the device's index.
    encap: BpfHash<MapData, u32, [u8; 8]>,
    held_encap: BTreeMap<u32, [u8; 8]>,
    /// The networks' VXLAN devices with `to_underlay` (at their tcx egress),
    /// as `attached`.
    encapsulating: BTreeMap<String, (u32, SchedClassifierLinkId)>,
    held_src: BTreeMap<[u8; 20], [u8; 12]>,
    held_dst: BTreeMap<[u8; 20], [u8; 20]>,
    held_tunnels: BTreeMap<u32, u32>,
    /// Host ports with the program: the index it was attached at, and its
    /// link (tcx: it coexists with the qdiscs of others, and goes with the
    /// agent).
    attached: BTreeMap<String, (u32, SchedClassifierLinkId)>,
    /// The tables of the last sync, for the checks in between.
    last: Option<Tables>,
    /// Host ports left on the kernel path for their queueing disciplines.
    shaped: std::collections::BTreeSet<String>,
    /// When each port not attached yet was first seen (by its index).
    seen: BTreeMap<String, (u32, Instant)>,
    zones: BTreeMap<u16, Vec<Vni>>,
    /// The flows `flows` holds, with the connection each was admitted for
    /// (nothing known of an earlier agent's).
    admitted: HashMap<FlowKey, Owner>,
    /// Counts of flows that left the fast path, kept for flow records, each
    /// time apart (the next connection of a five-tuple may have the id of
    /// the one before), and when each was retired or last found in
    /// conntrack.
    retired: HashMap<FlowKey, Vec<(Carried, Instant)>>,
    kernel_only: BTreeMap<Vni, &'static str>,
    /// When the zones of these networks were last flushed.
    flushed_at: HashMap<Vni, Instant>,
}

/// The fast path of this namespace.
pub struct FastPath {
    state: Mutex<State>,
    md_ifindex: u32,
    netlink: rtnetlink::Handle,
    /// Told when the first tables arrive: flows are admitted from a dump of
    /// conntrack then (which networks' zones they are in is known).
    first_tables: tokio::sync::Notify,
    /// Held by a sync.
    syncing: tokio::sync::Mutex<()>,
    decapsulation: Decapsulation,
}

/// Who takes the datagrams other hosts' fast paths send this host off the
/// underlay ([`FastPath::decapsulation`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decapsulation {
    /// `from_underlay` on this device.
    Program(String),
    /// The host's stack (to the metadata-mode device): the device, and why
    /// the program is not on it.
    Stack(String, String),
}

/// What [`FastPath::status`] reports of a host port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortPath {
    /// The program runs on it.
    Fast,
    /// It takes the kernel path, and why.
    Kernel(String),
}

fn link_indexes() -> Result<super::common::LinkIndexes, FastPathError> {
    super::common::LinkIndexes::open().map_err(|e| FastPathError::Kernel("socket".into(), e.to_string()))
}

impl FastPath {
    /// Loads the programs, makes the metadata-mode VXLAN device (MTU `mtu`)
    /// and starts admitting flows; `from_underlay` goes on `underlay_dev`,
    /// the device that holds the host's underlay address `underlay` (when it
    /// cannot, the tunnel's datagrams take the host's stack, with the reason
    /// logged). Runs in the calling thread's namespace.
    pub async fn start(underlay: Ipv4Addr, underlay_dev: &str, mtu: u32) -> Result<Arc<FastPath>, FastPathError> {
        let (conn, netlink, _) =
            rtnetlink::new_connection().map_err(|e| FastPathError::Kernel("netlink".into(), e.to_string()))?;
        tokio::spawn(conn);
        let md_ifindex = md_device(&netlink, mtu).await?;
        // Conntrack does not see the packets the fast path carries, so its
        // TCP window tracking would find the connection's end out of window
        // and never see it close: it checks only resets, as it does for a
        // connection picked up mid-stream.
        std::fs::write(TCP_LIBERAL, "1").map_err(|e| FastPathError::Kernel(TCP_LIBERAL.into(), e.to_string()))?;
        let earlier = filters(&netlink, md_ifindex, FROM_TUNNEL).await?;
        let mut ebpf = load(earlier_maps(&earlier))?;
        // The new program runs beside the earlier one, then alone: what
        // arrives meanwhile meets one or the other, with the same maps.
        let priority = if earlier.iter().any(|f| f.header.info >> 16 == u32::from(PRIORITY)) { PRIORITY + 1 } else { PRIORITY };
        attach(&mut ebpf, FROM_TUNNEL, MD_DEVICE, priority)?;
        for f in earlier {
            delete_filter(&netlink, f).await?;
        }
        let mut config: Array<MapData, [u8; 16]> = take(&mut ebpf, maps::CONFIG)?;
        // Whose neighbours the other hosts in the underlay prefix are.
        let prefix = super::links::addresses(&netlink)
            .await
            .ok()
            .and_then(|a| a.into_iter().find(|(_, net, _)| net.addr() == std::net::IpAddr::V4(underlay)))
            .map_or(0, |(_, net, _)| net.prefix_len());
        config
            .set(0, bytes::config(md_ifindex, underlay, prefix), 0)
            .map_err(|e| FastPathError::Map(maps::CONFIG, e.to_string()))?;
        let src: BpfHash<MapData, [u8; 20], [u8; 12]> = take(&mut ebpf, maps::SRC)?;
        let dst: BpfHash<MapData, [u8; 20], [u8; 20]> = take(&mut ebpf, maps::DST)?;
        let tunnels: BpfHash<MapData, u32, u32> = take(&mut ebpf, maps::TUNNELS)?;
        let delivered: BpfHash<MapData, u32, [u8; 16]> = take(&mut ebpf, maps::PORTS)?;
        // What an earlier agent's maps hold, so that what the host no
        // longer wants is removed.
        let (held_src, held_dst, held_tunnels) = (
            src.iter().filter_map(Result::ok).collect(),
            dst.iter().filter_map(Result::ok).collect(),
            tunnels.iter().filter_map(Result::ok).collect(),
        );
        let flows: Flows = take(&mut ebpf, maps::FLOWS)?;
        let encap: BpfHash<MapData, u32, [u8; 8]> = take(&mut ebpf, maps::ENCAP)?;
        // Last, once the maps say where this host's tunnel ends.
        let decapsulation = match attach_underlay(&mut ebpf, &netlink, underlay_dev).await {
            Ok(_) => {
                tracing::info!(device = underlay_dev, "the fast path decapsulates its tunnel's datagrams on the underlay");
                Decapsulation::Program(underlay_dev.to_string())
            }
            Err(e) => {
                tracing::warn!(device = underlay_dev, error = %e, "the fast path's tunnel datagrams take the host's stack");
                Decapsulation::Stack(underlay_dev.to_string(), e.to_string())
            }
        };
        let admitted = flows
            .keys()
            .filter_map(Result::ok)
            .filter_map(|k| bytes::parse_flow_key(&k))
            .map(|k| (k, Owner::default()))
            .collect();
        let state = State {
            src,
            dst,
            flows,
            tunnels,
            counted: delivered.keys().filter_map(Result::ok).collect(),
            encap,
            held_encap: BTreeMap::new(),
            encapsulating: BTreeMap::new(),
            delivered,
            ebpf,
            held_src,
            held_dst,
            held_tunnels,
            attached: BTreeMap::new(),
            last: None,
            shaped: Default::default(),
            seen: BTreeMap::new(),
            zones: BTreeMap::new(),
            admitted,
            retired: HashMap::new(),
            kernel_only: BTreeMap::new(),
            flushed_at: HashMap::new(),
        };
        let fp = Arc::new(FastPath {
            state: Mutex::new(state),
            md_ifindex,
            netlink,
            first_tables: tokio::sync::Notify::new(),
            syncing: tokio::sync::Mutex::new(()),
            decapsulation,
        });
        let events = super::conntrack_events_of(&[GROUP_UPDATE, GROUP_DESTROY])
            .map_err(|e| FastPathError::Kernel("conntrack events".into(), e.to_string()))?;
        tokio::spawn(fp.clone().admit(events));
        tracing::info!(device = MD_DEVICE, port = FASTPATH_PORT, "eBPF fast path loaded");
        Ok(fp)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the maps and the programs' ports what `tables` says: ports not
    /// made yet are left for the next call, and so are ports with queueing
    /// disciplines of their own (rate limits such as CNI's `bandwidth`
    /// plugin sets, which the fast path would bypass): they keep the kernel
    /// path.
    pub async fn sync(&self, tables: &Tables) -> Result<(), FastPathError> {
        // One at a time (the agent's and the check every second): two dumps
        // at once on the one netlink socket fail (EBUSY).
        let _one = self.syncing.lock().await;
        let shaped = self.shaped_ports().await?;
        let mut s = self.state();
        let s = &mut *s;
        let mut ports = BTreeMap::new();
        s.shaped.clear();
        let links = link_indexes()?;
        for port in &tables.ports {
            let Some(index) = links.get(port) else { continue };
            if shaped.contains(&index) {
                s.shaped.insert(port.clone());
                if let Some((_, link)) = s.attached.remove(port) {
                    let _ = program(&mut s.ebpf, FROM_CONTAINER)?.detach(link);
                }
                continue;
            }
            match s.attached.remove(port) {
                Some((at, link)) if at == index => {
                    ports.insert(port.clone(), (index, link));
                    continue;
                }
                Some((_, link)) => {
                    let _ = program(&mut s.ebpf, FROM_CONTAINER)?.detach(link);
                }
                None => {}
            }
            // A new port waits: a runtime's later plugins (CNI's
            // `bandwidth`) add their queueing disciplines just after the
            // attach, and the fast path must not bypass them meanwhile.
            let first = s.seen.entry(port.clone()).or_insert((index, Instant::now()));
            if first.0 != index {
                *first = (index, Instant::now());
            }
            // Ports there when the agent starts were an earlier agent's.
            if first.1.elapsed() < SETTLE && s.last.is_some() {
                continue;
            }
            s.seen.remove(port);
            ports.insert(port.clone(), (index, attach_tcx(&mut s.ebpf, FROM_CONTAINER, port)?));
        }
        s.seen.retain(|p, _| tables.ports.contains(p));
        for (_, (_, link)) in std::mem::replace(&mut s.attached, ports) {
            // A port gone (its link went with it) or now shaped.
            let _ = program(&mut s.ebpf, FROM_CONTAINER)?.detach(link);
        }
        // A counter per attached port: made when it is attached, kept (an
        // earlier agent's) while it stays, removed with it.
        let indexes: std::collections::BTreeSet<u32> = s.attached.values().map(|(i, _)| *i).collect();
        for i in s.counted.difference(&indexes) {
            let _ = s.delivered.remove(i);
        }
        for i in indexes.difference(&s.counted) {
            s.delivered.insert(i, [0u8; 16], 0).map_err(|e| FastPathError::Map(maps::PORTS, e.to_string()))?;
        }
        s.counted = indexes;
        if s.last.replace(tables.clone()).is_none() {
            self.first_tables.notify_one();
        }
        let attached: BTreeMap<&String, u32> = s.attached.iter().map(|(p, (i, _))| (p, *i)).collect();
        let src: BTreeMap<_, _> = tables
            .sources
            .iter()
            .filter_map(|e| Some((bytes::src_key(*attached.get(&e.port)?, e.addr), bytes::src_value(e.mac, e.vni))))
            .collect();
        let dst: BTreeMap<_, _> = tables
            .destinations
            .iter()
            .filter_map(|((vni, addr), place)| {
                let value = match &place.at {
                    At::Local { port, mac } => bytes::dst_value(*attached.get(port)?, Ipv4Addr::UNSPECIFIED, *mac, place.vni),
                    At::Remote { underlay } => bytes::dst_value(0, *underlay, remote_mac(*underlay), place.vni),
                };
                Some((bytes::dst_key(*vni, *addr), value))
            })
            .collect();
        let tunnels: BTreeMap<u32, u32> =
            tables.tunnels.iter().filter_map(|(vni, dev)| Some((vni.get(), links.get(dev)?))).collect();
        converge(&mut s.src, &mut s.held_src, src).map_err(|e| FastPathError::Map(maps::SRC, e))?;
        converge(&mut s.dst, &mut s.held_dst, dst).map_err(|e| FastPathError::Map(maps::DST, e))?;
        converge(&mut s.tunnels, &mut s.held_tunnels, tunnels).map_err(|e| FastPathError::Map(maps::TUNNELS, e))?;
        self.encapsulate(s, tables, &links, &shaped)?;
        let fast: std::collections::BTreeSet<Vni> = tables.zones.values().flatten().copied().collect();
        let gone: Vec<Vni> = s.zones.values().flatten().filter(|v| !fast.contains(v)).copied().collect();
        s.zones = tables.zones.clone();
        s.kernel_only = tables.kernel_only.clone();
        s.drop_flows(|k| gone.contains(&k.vni));
        Ok(())
    }

    /// Puts `to_underlay` on each network's VXLAN device, but one with
    /// queueing disciplines of its own (which it would bypass), and its
    /// entry in `ts_encap`; only onto an Ethernet underlay device, which
    /// `from_underlay`'s attachment showed it is. A device it cannot be
    /// attached to keeps doing the work itself.
    fn encapsulate(
        &self,
        s: &mut State,
        tables: &Tables,
        links: &super::common::LinkIndexes,
        shaped: &std::collections::BTreeSet<u32>,
    ) -> Result<(), FastPathError> {
        let underlay = match &self.decapsulation {
            Decapsulation::Program(dev) => links.get(dev),
            Decapsulation::Stack(..) => None,
        };
        let mut encapsulating = BTreeMap::new();
        let mut encap = BTreeMap::new();
        for (vni, dev) in tables.tunnels.iter().filter(|_| underlay.is_some()) {
            let Some(index) = links.get(dev).filter(|i| !shaped.contains(i)) else { continue };
            let link = match s.encapsulating.remove(dev) {
                Some((at, link)) if at == index => link,
                earlier => {
                    if let Some((_, link)) = earlier {
                        let _ = program(&mut s.ebpf, TO_UNDERLAY)?.detach(link);
                    }
                    match attach_tcx(&mut s.ebpf, TO_UNDERLAY, dev) {
                        Ok(link) => link,
                        Err(e) => {
                            tracing::warn!(device = %dev, error = %e, "the network's VXLAN device encapsulates by itself");
                            continue;
                        }
                    }
                }
            };
            encapsulating.insert(dev.clone(), (index, link));
            encap.extend(underlay.map(|u| (index, bytes::encap_value(*vni, u))));
        }
        for (_, (_, link)) in std::mem::replace(&mut s.encapsulating, encapsulating) {
            let _ = program(&mut s.ebpf, TO_UNDERLAY)?.detach(link);
        }
        converge(&mut s.encap, &mut s.held_encap, encap).map_err(|e| FastPathError::Map(maps::ENCAP, e))
    }

    /// The sync of the last tables again: a port that got a queueing
    /// discipline since leaves the fast path.
    async fn sync_again(&self) {
        let last = self.state().last.clone();
        if let Some(t) = last {
            if let Err(e) = self.sync(&t).await {
                tracing::warn!(error = %e, "the fast path's maps are not up to date");
            }
        }
    }

    /// The indexes of links with a queueing discipline other than the
    /// default (`noqueue`).
    async fn shaped_ports(&self) -> Result<std::collections::BTreeSet<u32>, FastPathError> {
        use futures::TryStreamExt;
        use rtnetlink::packet_route::tc::TcAttribute;
        let mut shaped = std::collections::BTreeSet::new();
        let mut dump = self.netlink.qdisc().get().execute();
        while let Some(q) = dump.try_next().await.map_err(|e| FastPathError::Kernel("qdisc list".into(), e.to_string()))? {
            let kind = q.attributes.iter().find_map(|a| match a {
                TcAttribute::Kind(k) => Some(k.as_str()),
                _ => None,
            });
            if kind.is_some_and(|k| k != "noqueue") {
                shaped.insert(q.header.index as u32);
            }
        }
        Ok(shaped)
    }

    /// Conntrack zones `zones` were flushed: their flows leave the fast path
    /// now, and come back when the kernel path allows them again.
    pub fn zones_flushed(&self, zones: &[u16]) {
        let mut s = self.state();
        let vnis: Vec<Vni> = zones.iter().filter_map(|z| s.zones.get(z)).flatten().copied().collect();
        if !vnis.is_empty() {
            let now = Instant::now();
            // Events and dumps read before now may admit them again: not those.
            s.flushed_at.retain(|_, at| now.duration_since(*at) < 2 * RESYNC_EVERY);
            s.flushed_at.extend(vnis.iter().map(|v| (*v, now)));
            s.drop_flows(|k| vnis.contains(&k.vni));
        }
    }

    /// Adds what the fast path carried to the conntrack entries of its
    /// flows ([`crate::fastpath::add_counts`]), and takes closed connections
    /// off it, keeping their counts while their entry lives: those the
    /// program marked closing and those the entries show closed (an RST or
    /// FIN by the kernel path, through the network's VXLAN device, passed no
    /// program of this host). Not two minutes after a FIN, when conntrack
    /// forgets them.
    pub fn add_counts(&self, entries: &mut [CtEvent]) {
        let mut s = self.state();
        s.learn(entries);
        let (counts, closing) = s.flow_counts();
        crate::fastpath::add_counts(entries, &s.zones, &counts);
        let closed = entries.iter().filter(|e| e.tcp_state.is_some_and(crate::ct_events::tcp_closed));
        let closed = closed.filter_map(|e| match admission(e, &s.zones) {
            Admission::Remove(keys) => Some(keys),
            _ => None,
        });
        let doomed: Vec<FlowKey> = closing.into_iter().chain(closed.flatten()).collect();
        doomed.into_iter().for_each(|k| s.retire(k, None));
    }

    /// Packets and bytes the fast path delivered into the containers behind
    /// host ports (their link counters do not see them), by port name.
    pub fn delivered(&self) -> HashMap<String, (u64, u64)> {
        let s = self.state();
        s.attached
            .iter()
            .filter_map(|(port, (index, _))| {
                let v = s.delivered.get(index, 0).ok()?;
                let half = |i: usize| u64::from_ne_bytes(v[i..i + 8].try_into().unwrap_or([0; 8]));
                Some((port.clone(), (half(0), half(8))))
            })
            .collect()
    }

    /// How many flows (one direction each) the fast path holds.
    pub fn flows(&self) -> usize {
        self.state().admitted.len()
    }

    /// Which path a host port's packets take, and why.
    pub fn port_path(&self, port: &str, vni: Option<Vni>) -> PortPath {
        let s = self.state();
        if let Some(why) = vni.and_then(|v| s.kernel_only.get(&v)) {
            return PortPath::Kernel((*why).to_string());
        }
        if s.attached.contains_key(port) {
            PortPath::Fast
        } else if s.shaped.contains(port) {
            PortPath::Kernel("the port has queueing disciplines (rate limits) the fast path would bypass".into())
        } else {
            PortPath::Kernel("not a port of the fast path (a service instance's, or not made yet)".into())
        }
    }

    /// The index of the metadata-mode device.
    pub fn device_index(&self) -> u32 {
        self.md_ifindex
    }

    /// Who takes other hosts' datagrams off the underlay: the program, or
    /// the host's stack and why (decided when the fast path started).
    pub fn decapsulation(&self) -> &Decapsulation {
        &self.decapsulation
    }

    async fn admit(self: Arc<Self>, mut events: tokio::sync::mpsc::Receiver<super::CtMessage>) {
        let mut resync = tokio::time::interval(RESYNC_EVERY);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ports = tokio::time::interval(PORTS_EVERY);
        ports.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.first_tables.notified() => resync.reset_immediately(),
                _ = ports.tick() => self.sync_again().await,
                m = events.recv() => match m {
                    Some(super::CtMessage::Events(batch, since)) => self.state().apply(&batch, since),
                    Some(super::CtMessage::Lost) => resync.reset_immediately(),
                    None => {
                        tracing::warn!("conntrack events ended; flows enter the fast path only at each resync");
                        std::future::pending::<()>().await;
                    }
                },
                _ = resync.tick() => {
                    let since = Instant::now();
                    // Below normal CPU priority, as the flow records' dump.
                    let table = super::below_normal("tessera-ct-resync", || {
                        let mut socket = crate::nfnetlink::NetfilterSocket::open()?;
                        crate::nfnetlink::conntrack_table(&mut socket)
                    })
                    .await;
                    match table {
                        Ok(Ok(entries)) => self.state().resync(&entries, since),
                        Ok(Err(e)) => tracing::warn!(error = %e, "dumping conntrack for the fast path failed"),
                        Err(e) => tracing::warn!(error = %e, "dumping conntrack for the fast path failed"),
                    }
                }
            }
        }
    }
}

impl State {
    /// What the fast path carried of each direction of each flow it
    /// carries or carried lately, and the flows the program marked closing
    /// (its packets take the kernel path already).
    fn flow_counts(&self) -> (HashMap<FlowKey, Vec<Carried>>, Vec<FlowKey>) {
        let mut out: HashMap<FlowKey, Vec<Carried>> = HashMap::new();
        for (k, retired) in &self.retired {
            out.entry(*k).or_default().extend(retired.iter().map(|(c, _)| *c));
        }
        let mut closing = Vec::new();
        for (k, v) in self.flows.iter().filter_map(Result::ok) {
            if let Some(key) = bytes::parse_flow_key(&k) {
                let owner = self.admitted.get(&key).copied().unwrap_or_default();
                out.entry(key).or_default().push(Carried { counts: bytes::flow_counts(&v), owner, retired_ns: None });
                if bytes::flow_closing(&v) {
                    closing.push(key);
                }
            }
        }
        (out, closing)
    }

    /// Applies a batch of events: per connection only its last event
    /// counts (a short connection that became assured and ended within the
    /// batch costs nothing), and only flows the map does not hold or holds
    /// are written. A flow removed and admitted again within the batch (a
    /// connection ended and the next of its five-tuple began) is retired
    /// first: the next one's counts start from nothing.
    fn apply(&mut self, events: &[CtEvent], since: Instant) {
        let mut last: HashMap<FlowKey, (Admission, Owner, Option<Owner>)> = HashMap::new();
        for ev in events {
            let a = admission(ev, &self.zones).unless_flushed_since(&self.flushed_at, since);
            let (Admission::Admit(keys) | Admission::Remove(keys)) = &a else { continue };
            let Some(first) = keys.first().copied() else { continue };
            let removed = last.remove(&first).and_then(|(before, owner, removed)| match before {
                Admission::Remove(_) => Some(owner),
                _ => removed,
            });
            last.insert(first, (a, Owner::of(ev), removed));
        }
        for (a, owner, removed) in last.into_values() {
            match a {
                Admission::Admit(keys) => {
                    for k in keys {
                        if removed.is_some() {
                            self.retire(k, removed);
                        }
                        self.admit(k, owner);
                    }
                }
                Admission::Remove(keys) => keys.into_iter().for_each(|k| self.retire(k, Some(owner))),
                Admission::Ignore => {}
            }
        }
    }

    /// Learns when the connections of the fast path's flows began, from a
    /// dump of conntrack (`entries`). A flow whose entry now is a later
    /// connection's (the next of its five-tuple, with its id) is retired,
    /// and that connection's admitted in its place when it may be.
    fn learn(&mut self, entries: &[CtEvent]) {
        if self.admitted.is_empty() {
            return;
        }
        let mut later = Vec::new();
        for ev in entries.iter().filter(|ev| ev.start_ns.is_some()) {
            let Some(vnis) = self.zones.get(&ev.zone) else { continue };
            let now = Owner::of(ev);
            for key in vnis.iter().map(|&vni| FlowKey::of(vni, &ev.tuple)) {
                for k in [key, key.reversed()] {
                    match self.admitted.get_mut(&k) {
                        Some(held) if held.may_be(&now) => *held = held.with(&now),
                        Some(held) if held.id == now.id => later.push((k, ev)),
                        _ => {}
                    }
                }
            }
        }
        for (k, ev) in later {
            // Admitting a connection retires the flow another one left.
            match admission(ev, &self.zones) {
                Admission::Admit(_) => self.admit(k, Owner::of(ev)),
                _ => self.retire(k, None),
            }
        }
    }

    /// Puts flow `k` of connection `owner` on the fast path; a flow of
    /// another connection there (its end unseen) is retired first.
    fn admit(&mut self, k: FlowKey, owner: Owner) {
        match self.admitted.get_mut(&k) {
            Some(held) if held.may_be(&owner) => {
                *held = held.with(&owner);
                return;
            }
            Some(_) => self.retire(k, None),
            None => {}
        }
        // BPF_NOEXIST: an entry there (an earlier agent's) keeps its counts.
        match self.flows.insert(bytes::flow_key(&k), bytes::FLOW_ZERO, BPF_NOEXIST) {
            Ok(()) => {
                self.admitted.insert(k, owner);
            }
            Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {
                self.admitted.insert(k, owner);
            }
            Err(e) => tracing::debug!(error = %e, "a flow does not enter the fast path"),
        }
    }

    /// Makes the flows those of the admitted connections in `entries`;
    /// nothing before the first tables (which zones are whose unknown).
    fn resync(&mut self, entries: &[CtEvent], since: Instant) {
        if self.last.is_none() {
            return;
        }
        let (mut admitted, mut live) = (HashMap::new(), std::collections::HashSet::new());
        for ev in entries {
            match admission(ev, &self.zones).unless_flushed_since(&self.flushed_at, since) {
                Admission::Admit(keys) => admitted.extend(keys.into_iter().map(|k| (k, Owner::of(ev)))),
                Admission::Remove(keys) => live.extend(keys),
                Admission::Ignore => {}
            }
        }
        // What the map really holds (an earlier agent's flows among them).
        let owners = std::mem::take(&mut self.admitted);
        let held = self.flows.keys().filter_map(Result::ok).filter_map(|k| bytes::parse_flow_key(&k));
        self.admitted = held.map(|k| (k, owners.get(&k).copied().unwrap_or_default())).collect();
        self.drop_flows(|k| !admitted.contains_key(k));
        for (k, owner) in admitted {
            self.admit(k, owner);
        }
        // The counts of a flow retired while closing stay while its entry does.
        let now = Instant::now();
        for (k, retired) in &mut self.retired {
            if live.contains(k) {
                retired.iter_mut().for_each(|(_, at)| *at = now);
            }
            retired.retain(|(_, at)| now.duration_since(*at) < RETIRED_KEEP);
        }
        self.retired.retain(|_, retired| !retired.is_empty());
    }

    /// Takes a flow off the fast path, keeping what it carried (beside what
    /// it or other connections of its five-tuple carried before); `ended`,
    /// the connection whose end (or removal) retires it, says more of its
    /// owner where it may be the same.
    fn retire(&mut self, k: FlowKey, ended: Option<Owner>) {
        let Some(mut owner) = self.admitted.remove(&k) else { return };
        if let Some(ended) = ended.filter(|e| owner.may_be(e)) {
            owner = owner.with(&ended);
        }
        let key = bytes::flow_key(&k);
        if let Ok(v) = self.flows.get(&key, 0) {
            let _ = self.flows.remove(&key);
            let retired = self.retired.entry(k).or_default();
            if retired.len() == RETIRED_PER_FLOW {
                retired.remove(0);
            }
            retired.push((Carried { counts: bytes::flow_counts(&v), owner, retired_ns: Some(wall_ns()) }, Instant::now()));
        }
    }

    fn drop_flows(&mut self, doomed: impl Fn(&FlowKey) -> bool) {
        let keys: Vec<FlowKey> = self.admitted.keys().filter(|k| doomed(k)).copied().collect();
        for k in keys {
            self.retire(k, None);
        }
    }
}

/// Now, in ns of wall-clock time (as conntrack's timestamps).
fn wall_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Writes the differences between `held` (what `map` holds) and `want`.
fn converge<K, V>(map: &mut BpfHash<MapData, K, V>, held: &mut BTreeMap<K, V>, want: BTreeMap<K, V>) -> Result<(), String>
where
    K: aya::Pod + Ord,
    V: aya::Pod + PartialEq,
{
    for k in held.keys().filter(|k| !want.contains_key(*k)) {
        map.remove(k).map_err(|e| e.to_string())?;
    }
    for (k, v) in want.iter().filter(|(k, v)| held.get(*k) != Some(*v)) {
        map.insert(k, v, 0).map_err(|e| e.to_string())?;
    }
    *held = want;
    Ok(())
}
