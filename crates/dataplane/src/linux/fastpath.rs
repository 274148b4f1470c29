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
use aya::programs::tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use aya::Ebpf;
use tessera_model::Vni;

use crate::ct_events::{CtEvent, GROUP_DESTROY, GROUP_UPDATE};
use crate::fastpath::{
    admission, bytes, maps, remote_mac, Admission, At, FlowKey, Tables, FASTPATH_PORT, FROM_CONTAINER, FROM_TUNNEL, MD_DEVICE,
};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fastpath.bpf.o"));

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
/// Conntrack's liberal TCP window tracking (of the namespace).
const TCP_LIBERAL: &str = "/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal";
/// `BPF_NOEXIST`: an update that makes an entry only.
const BPF_NOEXIST: u64 = 1;
/// The tc priority of Tessera's filters.
const PRIORITY: u16 = 1;

/// Why the fast path cannot run.
#[derive(Debug, thiserror::Error)]
pub enum FastPathError {
    #[error("loading the eBPF programs: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {0}: {1}")]
    Program(&'static str, aya::programs::ProgramError),
    #[error("eBPF map {0}: {1}")]
    Map(&'static str, String),
    #[error("{0}: {1}")]
    Kernel(String, String),
}

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
    /// The flows `flows` holds.
    admitted: std::collections::HashSet<FlowKey>,
    /// Counts of flows that left the fast path, kept for flow records.
    retired: HashMap<FlowKey, ((u64, u64), Instant)>,
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
}

/// What [`FastPath::status`] reports of a host port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortPath {
    /// The program runs on it.
    Fast,
    /// It takes the kernel path, and why.
    Kernel(String),
}

fn ifindex(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}

fn link_indexes() -> Result<super::common::LinkIndexes, FastPathError> {
    super::common::LinkIndexes::open().map_err(|e| FastPathError::Kernel("socket".into(), e.to_string()))
}

impl FastPath {
    /// Loads the programs, makes the metadata-mode VXLAN device (MTU `mtu`)
    /// and starts admitting flows. Runs in the calling thread's namespace.
    pub async fn start(underlay: Ipv4Addr, mtu: u32) -> Result<Arc<FastPath>, FastPathError> {
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
        config.set(0, bytes::config(md_ifindex, underlay), 0).map_err(|e| FastPathError::Map(maps::CONFIG, e.to_string()))?;
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
        let admitted = flows.keys().filter_map(Result::ok).filter_map(|k| bytes::parse_flow_key(&k)).collect();
        let state = State {
            src,
            dst,
            flows,
            tunnels,
            counted: delivered.keys().filter_map(Result::ok).collect(),
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
            ports.insert(port.clone(), (index, attach_port(&mut s.ebpf, port)?));
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
        let fast: std::collections::BTreeSet<Vni> = tables.zones.values().flatten().copied().collect();
        let gone: Vec<Vni> = s.zones.values().flatten().filter(|v| !fast.contains(v)).copied().collect();
        s.zones = tables.zones.clone();
        s.kernel_only = tables.kernel_only.clone();
        s.drop_flows(|k| gone.contains(&k.vni));
        Ok(())
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
        let (counts, closing) = s.flow_counts();
        crate::fastpath::add_counts(entries, &s.zones, &counts);
        let closed = entries.iter().filter(|e| e.tcp_state.is_some_and(crate::ct_events::tcp_closed));
        let closed = closed.filter_map(|e| match admission(e, &s.zones) {
            Admission::Remove(keys) => Some(keys),
            _ => None,
        });
        let doomed: Vec<FlowKey> = closing.into_iter().chain(closed.flatten()).collect();
        doomed.into_iter().for_each(|k| s.retire(k));
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
    /// Packets and bytes the fast path carried of each direction of each
    /// flow it carries or carried lately, and the flows the program marked
    /// closing (its packets take the kernel path already).
    fn flow_counts(&self) -> (HashMap<FlowKey, (u64, u64)>, Vec<FlowKey>) {
        let mut out: HashMap<FlowKey, (u64, u64)> = self.retired.iter().map(|(k, (c, _))| (*k, *c)).collect();
        let mut closing = Vec::new();
        for (k, v) in self.flows.iter().filter_map(Result::ok) {
            if let Some(key) = bytes::parse_flow_key(&k) {
                let (p, b) = bytes::flow_counts(&v);
                let e = out.entry(key).or_default();
                *e = (e.0 + p, e.1 + b);
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
    /// are written.
    fn apply(&mut self, events: &[CtEvent], since: Instant) {
        let mut last: HashMap<FlowKey, Admission> = HashMap::new();
        for ev in events {
            match admission(ev, &self.zones).unless_flushed_since(&self.flushed_at, since) {
                Admission::Ignore => {}
                a @ (Admission::Admit(_) | Admission::Remove(_)) => {
                    let (Admission::Admit(keys) | Admission::Remove(keys)) = &a else { continue };
                    if let Some(first) = keys.first() {
                        last.insert(*first, a.clone());
                    }
                }
            }
        }
        for a in last.into_values() {
            match a {
                Admission::Admit(keys) => keys.into_iter().for_each(|k| self.admit(k)),
                Admission::Remove(keys) => keys.into_iter().for_each(|k| self.retire(k)),
                Admission::Ignore => {}
            }
        }
    }

    fn admit(&mut self, k: FlowKey) {
        if self.admitted.contains(&k) {
            return;
        }
        // BPF_NOEXIST: an entry there (an earlier agent's) keeps its counts.
        match self.flows.insert(bytes::flow_key(&k), bytes::FLOW_ZERO, BPF_NOEXIST) {
            Ok(()) => {
                self.admitted.insert(k);
            }
            Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {
                self.admitted.insert(k);
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
        let (mut admitted, mut live) = (std::collections::HashSet::new(), std::collections::HashSet::new());
        for ev in entries {
            match admission(ev, &self.zones).unless_flushed_since(&self.flushed_at, since) {
                Admission::Admit(keys) => admitted.extend(keys),
                Admission::Remove(keys) => live.extend(keys),
                Admission::Ignore => {}
            }
        }
        // What the map really holds (an earlier agent's flows among them).
        self.admitted = self.flows.keys().filter_map(Result::ok).filter_map(|k| bytes::parse_flow_key(&k)).collect();
        self.drop_flows(|k| !admitted.contains(k));
        for k in admitted {
            self.admit(k);
        }
        // The counts of a flow retired while closing stay while its entry does.
        let now = Instant::now();
        self.retired.iter_mut().filter(|(k, _)| live.contains(*k)).for_each(|(_, (_, at))| *at = now);
        self.retired.retain(|_, (_, at)| now.duration_since(*at) < RETIRED_KEEP);
    }

    /// Takes a flow off the fast path, keeping what it carried.
    fn retire(&mut self, k: FlowKey) {
        if !self.admitted.remove(&k) {
            return;
        }
        let key = bytes::flow_key(&k);
        if let Ok(v) = self.flows.get(&key, 0) {
            let _ = self.flows.remove(&key);
            let (p, b) = bytes::flow_counts(&v);
            let e = self.retired.entry(k).or_insert(((0, 0), Instant::now()));
            e.0 = (e.0 .0 + p, e.0 .1 + b);
            e.1 = Instant::now();
        }
    }

    fn drop_flows(&mut self, doomed: impl Fn(&FlowKey) -> bool) {
        let keys: Vec<FlowKey> = self.admitted.iter().filter(|k| doomed(k)).copied().collect();
        for k in keys {
            self.retire(k);
        }
    }
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

fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier, FastPathError> {
    ebpf.program_mut(name)
        .ok_or_else(|| FastPathError::Kernel(name.into(), "not in the object".into()))?
        .try_into()
        .map_err(|e| FastPathError::Program(name, e))
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, FastPathError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or_else(|| FastPathError::Map(name, "not in the object".into()))?;
    T::try_from(map).map_err(|e| FastPathError::Map(name, e.to_string()))
}

/// Attaches `from_container` at the tcx ingress of host port `dev`.
fn attach_port(ebpf: &mut Ebpf, dev: &str) -> Result<SchedClassifierLinkId, FastPathError> {
    let options = TcAttachOptions::TcxOrder(LinkOrder::default());
    program(ebpf, FROM_CONTAINER)?
        .attach_with_options(dev, TcAttachType::Ingress, options)
        .map_err(|e| FastPathError::Program(FROM_CONTAINER, e))
}

/// Attaches program `name` at the ingress of `dev` with netlink, at
/// `priority`; the attachment outlives the agent.
fn attach(ebpf: &mut Ebpf, name: &'static str, dev: &str, priority: u16) -> Result<(), FastPathError> {
    let kernel = |e: tc::TcError| FastPathError::Kernel(format!("tc on {dev}"), e.to_string());
    match tc::qdisc_add_clsact(dev) {
        Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
        r => r.map_err(kernel)?,
    }
    let prog = program(ebpf, name)?;
    let options = TcAttachOptions::Netlink(NlOptions { priority, ..Default::default() });
    let id = prog.attach_with_options(dev, TcAttachType::Ingress, options).map_err(|e| FastPathError::Program(name, e))?;
    let link = prog.take_link(id).map_err(|e| FastPathError::Program(name, e))?;
    // Dropping the link would detach it: it stays until the device goes or
    // the next agent replaces it.
    std::mem::forget(link);
    Ok(())
}

/// The ingress filters of program `name` on the link at `index`.
async fn filters(
    netlink: &rtnetlink::Handle,
    index: u32,
    name: &str,
) -> Result<Vec<rtnetlink::packet_route::tc::TcMessage>, FastPathError> {
    use futures::TryStreamExt;
    let mut out = Vec::new();
    let mut dump = netlink.clone().traffic_filter(index as i32).get().ingress().execute();
    while let Some(f) = dump.try_next().await.map_err(|e| FastPathError::Kernel("tc filter list".into(), e.to_string()))? {
        if bpf_option(&f, |o| matches!(o, TcFilterBpfOption::ProgName(n) if n == name)).is_some() {
            out.push(f);
        }
    }
    Ok(out)
}

use rtnetlink::packet_route::tc::TcFilterBpfOption;

fn bpf_option(
    f: &rtnetlink::packet_route::tc::TcMessage,
    pick: impl Fn(&TcFilterBpfOption) -> bool,
) -> Option<&TcFilterBpfOption> {
    use rtnetlink::packet_route::tc::{TcAttribute, TcOption};
    f.attributes.iter().find_map(|a| match a {
        TcAttribute::Options(opts) => opts.iter().find_map(|o| match o {
            TcOption::Bpf(b) if pick(b) => Some(b),
            _ => None,
        }),
        _ => None,
    })
}

async fn delete_filter(netlink: &rtnetlink::Handle, f: rtnetlink::packet_route::tc::TcMessage) -> Result<(), FastPathError> {
    use futures::StreamExt;
    use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
    use rtnetlink::packet_route::tc::TcMessage;
    use rtnetlink::packet_route::RouteNetlinkMessage;
    let mut msg = TcMessage::with_index(f.header.index);
    msg.header = f.header;
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::DelTrafficFilter(msg));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let kernel = |e: String| FastPathError::Kernel("tc filter del".into(), e);
    let mut answers = netlink.clone().request(req).map_err(|e| kernel(e.to_string()))?;
    while let Some(answer) = answers.next().await {
        if let NetlinkPayload::Error(e) = answer.payload {
            if e.code.is_some() {
                return Err(kernel(e.to_string()));
            }
        }
    }
    Ok(())
}

/// The maps of the program of the earlier agent's filter, by name.
fn earlier_maps(earlier: &[rtnetlink::packet_route::tc::TcMessage]) -> Vec<(String, MapData)> {
    let ids: Vec<u32> = earlier
        .iter()
        .filter_map(|f| match bpf_option(f, |o| matches!(o, TcFilterBpfOption::ProgId(_))) {
            Some(TcFilterBpfOption::ProgId(id)) => Some(*id),
            _ => None,
        })
        .collect();
    let Some(info) = aya::programs::loaded_programs().filter_map(Result::ok).find(|p| ids.contains(&p.id())) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for id in info.map_ids().ok().flatten().unwrap_or_default() {
        let Ok(data) = MapData::from_id(id) else { continue };
        if let Some(name) = data.info().ok().and_then(|i| i.name_as_str().map(str::to_string)) {
            if maps::ALL.contains(&name.as_str()) {
                out.push((name, data));
            }
        }
    }
    out
}

/// Loads the programs, with the earlier agent's maps when there are any
/// (and they fit these programs), so that its flows, entries and counts
/// carry on; with new maps otherwise.
fn load(earlier: Vec<(String, MapData)>) -> Result<Ebpf, FastPathError> {
    let programs = |mut ebpf: Ebpf| -> Result<Ebpf, FastPathError> {
        for name in [FROM_CONTAINER, FROM_TUNNEL] {
            program(&mut ebpf, name)?.load().map_err(|e| FastPathError::Program(name, e))?;
        }
        Ok(ebpf)
    };
    if !earlier.is_empty() {
        let reused = BpfMount::new().and_then(|mount| {
            let mut paths = Vec::new();
            for (name, data) in &earlier {
                let path = mount.0.join(name);
                data.pin(&path).map_err(|e| FastPathError::Map("pin", e.to_string()))?;
                paths.push((name.as_str(), path));
            }
            let mut loader = aya::EbpfLoader::new();
            for (name, path) in &paths {
                loader.map_pin_path(name, path.as_path());
            }
            programs(loader.load(OBJECT)?)
        });
        match reused {
            Ok(ebpf) => {
                tracing::info!(maps = earlier.len(), "the fast path carries on with the earlier agent's maps");
                return Ok(ebpf);
            }
            Err(e) => tracing::warn!(error = %e, "the earlier agent's maps do not fit; the fast path starts afresh"),
        }
    }
    programs(Ebpf::load(OBJECT)?)
}

/// A bpf file system of the agent's own, mounted while the earlier maps
/// are handed to the new programs (by pinning them there), unmounted (and
/// its pins gone) when dropped.
struct BpfMount(std::path::PathBuf);

impl BpfMount {
    fn new() -> Result<BpfMount, FastPathError> {
        // A directory of its own, made anew (never one someone put there
        // first: root mounts on it).
        let template = std::env::temp_dir().join("tessera-bpf-XXXXXX");
        let kernel = |e: String| FastPathError::Kernel(format!("bpf file system in {}", template.display()), e);
        let dir = nix::unistd::mkdtemp(&template).map_err(|e| kernel(e.to_string()))?;
        if let Err(e) = nix::mount::mount(Some("bpf"), &dir, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>) {
            let _ = std::fs::remove_dir(&dir);
            return Err(kernel(e.to_string()));
        }
        Ok(BpfMount(dir))
    }
}

impl Drop for BpfMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Makes the metadata-mode VXLAN device (`ip link add tfast type vxlan
/// external dstport 4799 nolearning`, alias `tessera`, up) unless it is
/// there; its index.
async fn md_device(handle: &rtnetlink::Handle, mtu: u32) -> Result<u32, FastPathError> {
    let kernel = |e: rtnetlink::Error| FastPathError::Kernel(format!("link {MD_DEVICE}"), e.to_string());
    if ifindex(MD_DEVICE).is_none() {
        let msg = rtnetlink::LinkVxlan::new(MD_DEVICE, 0)
            .port(FASTPATH_PORT)
            .learning(false)
            .collect_metadata(true)
            .mtu(mtu)
            .up()
            .build();
        handle.link().add(msg).execute().await.map_err(kernel)?;
    }
    let index = ifindex(MD_DEVICE).ok_or_else(|| FastPathError::Kernel(MD_DEVICE.into(), "not made".into()))?;
    let set = rtnetlink::LinkUnspec::new_with_index(index)
        .mtu(mtu)
        .up()
        .append_extra_attribute(rtnetlink::packet_route::link::LinkAttribute::IfAlias(crate::names::LINK_MARK.into()))
        .build();
    handle.link().set(set).execute().await.map_err(kernel)?;
    Ok(index)
}

/// Whether this namespace has the fast path's device, marked as Tessera's
/// (what `tessera purge` removes; its programs and maps go with it and with
/// the endpoints' veths).
pub async fn md_device_present() -> Result<bool, FastPathError> {
    use futures::TryStreamExt;
    use rtnetlink::packet_route::link::LinkAttribute;
    let Some(index) = ifindex(MD_DEVICE) else { return Ok(false) };
    let kernel = |e: rtnetlink::Error| FastPathError::Kernel(format!("link {MD_DEVICE}"), e.to_string());
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| FastPathError::Kernel("netlink".into(), e.to_string()))?;
    tokio::spawn(conn);
    let link = handle.link().get().match_index(index).execute().try_next().await.map_err(kernel)?;
    Ok(link.is_some_and(|l| {
        l.attributes.iter().any(|a| matches!(a, LinkAttribute::IfAlias(alias) if alias == crate::names::LINK_MARK))
    }))
}
