//! [`LinuxDataplane`]: the kernel data plane, through rtnetlink, `nft` and
//! `/proc/sys`.
//!
//! Namespaces are explicit. A `LinuxDataplane` owns one dedicated OS thread
//! (never a tokio worker) that stays in the data plane's network namespace
//! for its whole life and runs a single-threaded runtime: its netlink socket,
//! the `nft` processes it starts and its `/proc/sys` writes all belong to
//! that namespace. [`LinuxDataplane::new`] uses the namespace of the calling
//! thread; [`LinuxDataplane::in_netns`] enters the namespace at a path first.
//! Work inside a container's namespace (configuring the container side of a
//! veth) runs on a short-lived thread that enters the container's namespace,
//! opens a netlink socket there, and exits.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::{FutureExt, TryStreamExt};
use ipnet::IpNet;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope};
use rtnetlink::packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, IpVersion, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder};
use tessera_model::MacAddr;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::desired::{bridge_sysctls, host_sysctls, vxlan_sysctls, DesiredHost, SysctlKey, VRF_UNREACHABLE_METRIC};
use crate::nfnetlink::{element_batch, NetfilterSocket};
use crate::nft::{parse_policy_listing, parse_tables, script};
use crate::observed::{
    owned_link_name, owned_rule, owned_table, AddressEntry, FdbEntry, IpFamily, LinkKind, LinkState, MapElement, NeighEntry,
    NftState, Observed, ObservedMap, OwnedName, ProxyNeighEntry, RouteEntry, RouteTarget, RuleEntry, RuleSelector, VxlanState,
};
use crate::op::KernelOp;
use crate::policy::{derive_digests, element_hash, map_digest, rule_counters, RuleCounter, POLICY_TABLE};
use crate::vif::{VifEntry, VifKind};
use crate::{ApplyReport, Dataplane, DataplaneError, KernelOpFailure};

const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const ENODEV: i32 = 19;
const EEXIST: i32 = 17;
const EADDRNOTAVAIL: i32 = 99;

/// The `nft` program, looked up in `PATH`.
const NFT: &str = "nft";

enum Request {
    Observe(oneshot::Sender<Result<Observed, DataplaneError>>),
    Apply(Vec<KernelOp>, oneshot::Sender<ApplyReport>),
    Interfaces(oneshot::Sender<Result<Vec<VifEntry>, DataplaneError>>),
    LinkWithAddress(IpAddr, oneshot::Sender<Result<Option<(String, u32)>, DataplaneError>>),
}

/// The Linux data plane of one network namespace (the host's, for an agent).
pub struct LinuxDataplane {
    requests: mpsc::UnboundedSender<Request>,
    /// The namespace, when not the creating thread's.
    netns: Option<PathBuf>,
}

impl LinuxDataplane {
    /// A data plane for the network namespace of the calling thread.
    pub async fn new() -> Result<Self, DataplaneError> {
        Self::start(None).await
    }

    /// A data plane for the network namespace at `path` (`/run/netns/NAME`,
    /// `/proc/PID/ns/net`). The calling thread's namespace is not changed.
    pub async fn in_netns(path: impl Into<PathBuf>) -> Result<Self, DataplaneError> {
        Self::start(Some(path.into())).await
    }

    async fn start(netns: Option<PathBuf>) -> Result<Self, DataplaneError> {
        let (requests, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("tessera-dataplane".into())
            .spawn({
                let netns = netns.clone();
                move || worker(netns, ready_tx, rx)
            })
            .map_err(|source| DataplaneError::Kernel { op: "spawn", object: "data plane thread".into(), source })?;
        ready_rx.await.map_err(|_| DataplaneError::WorkerGone)??;
        Ok(LinuxDataplane { requests, netns })
    }

    /// The interface that holds the address `ip`, and its MTU: how an agent
    /// finds its underlay device.
    pub async fn link_with_address(&self, ip: IpAddr) -> Result<Option<(String, u32)>, DataplaneError> {
        self.call(|tx| Request::LinkWithAddress(ip, tx)).await?
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Request) -> Result<T, DataplaneError> {
        let (tx, rx) = oneshot::channel();
        self.requests.send(make(tx)).map_err(|_| DataplaneError::WorkerGone)?;
        rx.await.map_err(|_| DataplaneError::WorkerGone)
    }
}

#[async_trait]
impl Dataplane for LinuxDataplane {
    async fn observe(&self) -> Result<Observed, DataplaneError> {
        self.call(Request::Observe).await?
    }

    async fn apply(&self, actions: &[KernelOp]) -> Result<ApplyReport, DataplaneError> {
        let actions = actions.to_vec();
        self.call(|tx| Request::Apply(actions, tx)).await
    }

    async fn interfaces(&self) -> Result<Vec<VifEntry>, DataplaneError> {
        self.call(Request::Interfaces).await?
    }

    /// The element counters are dumped through a netfilter socket of a
    /// thread of their own in the namespace, beside the data plane's other
    /// work (a reconcile never waits for it), then attributed to rules.
    async fn policy_counters(&self, desired: &DesiredHost) -> Result<Vec<RuleCounter>, DataplaneError> {
        let netns = self.netns.clone();
        let desired = desired.clone();
        let (tx, rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("tessera-counters".into())
            .spawn(move || {
                let read = || -> Result<Vec<RuleCounter>, DataplaneError> {
                    lowest_cpu_priority();
                    if let Some(path) = &netns {
                        enter_netns(path)?;
                    }
                    let err = |source| DataplaneError::Kernel { op: "list counters", object: POLICY_TABLE.into(), source };
                    let mut socket = NetfilterSocket::open().map_err(err)?;
                    let counters = crate::nfnetlink::policy_counters(&mut socket).map_err(err)?;
                    Ok(rule_counters(&desired, &counters))
                };
                let _ = tx.send(read());
            })
            .map_err(|source| DataplaneError::Kernel { op: "spawn", object: "counter thread".into(), source })?;
        rx.await.map_err(|_| DataplaneError::WorkerGone)?
    }
}

/// Gives the calling thread the lowest CPU priority (nice 19), so that work
/// nothing waits on (a dump of 50,000 counters costs the kernel a few
/// hundred milliseconds) yields to the data plane, the agent and the
/// controller. Best effort: a failure leaves the priority as it was.
#[allow(unsafe_code)]
fn lowest_cpu_priority() {
    // SAFETY: setpriority takes no pointers; on Linux, PRIO_PROCESS with
    // who 0 changes the nice value of the calling thread only.
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
}

/// Enters the network namespace at `path`, for the calling thread only.
fn enter_netns(path: &Path) -> Result<(), DataplaneError> {
    let netns_err = |source: io::Error| DataplaneError::Netns { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(netns_err)?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| netns_err(io::Error::from(e)))
}

fn runtime() -> Result<tokio::runtime::Runtime, DataplaneError> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|source| DataplaneError::Kernel {
        op: "start runtime",
        object: "data plane thread".into(),
        source,
    })
}

fn connect() -> Result<Handle, DataplaneError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| DataplaneError::Kernel {
        op: "open",
        object: "netlink socket".into(),
        source,
    })?;
    tokio::spawn(conn);
    Ok(handle)
}

fn worker(
    netns: Option<PathBuf>,
    ready: oneshot::Sender<Result<(), DataplaneError>>,
    mut requests: mpsc::UnboundedReceiver<Request>,
) {
    let setup = || -> Result<tokio::runtime::Runtime, DataplaneError> {
        if let Some(path) = &netns {
            enter_netns(path)?;
        }
        runtime()
    };
    let rt = match setup() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    rt.block_on(async move {
        let handle = match connect() {
            Ok(h) => h,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        let kernel = Kernel {
            handle,
            policy_cache: RefCell::new(HashMap::new()),
            nft_seen: RefCell::new(None),
            ct_in_kernel: crate::conntrack::kernel_flushes_by_zone(),
            flusher: crate::conntrack::kernel_flushes_by_zone().then(Flusher::start).flatten(),
            netfilter: RefCell::new(None),
            nft_generation: std::cell::Cell::new(0),
            relisting: RefCell::new(Relisting::default()),
        };
        while let Some(req) = requests.recv().await {
            match req {
                Request::Observe(reply) => {
                    let _ = reply.send(kernel.observe().await);
                }
                Request::Apply(actions, reply) => {
                    let _ = reply.send(kernel.apply(&actions).await);
                }
                Request::Interfaces(reply) => {
                    let _ = reply.send(kernel.interfaces().await);
                }
                Request::LinkWithAddress(ip, reply) => {
                    let _ = reply.send(kernel.link_with_address(ip).await);
                }
            }
        }
    });
}

/// The interface of the calling thread's network namespace that holds `ip`,
/// and its MTU (see [`LinuxDataplane::link_with_address`]).
pub async fn link_with_address(ip: IpAddr) -> Result<Option<(String, u32)>, DataplaneError> {
    LinuxDataplane::new().await?.link_with_address(ip).await
}

/// Runs `f` with a netlink handle whose socket lives in the network namespace
/// at `path`, on a thread of its own that exits afterwards.
async fn in_netns<T, F, Fut>(path: &Path, f: F) -> Result<T, DataplaneError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, DataplaneError>>,
{
    let path = path.to_path_buf();
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("tessera-netns".into())
        .spawn(move || {
            let run = || -> Result<T, DataplaneError> {
                enter_netns(&path)?;
                runtime()?.block_on(async move { f(connect()?).await })
            };
            let _ = tx.send(run());
        })
        .map_err(|source| DataplaneError::Kernel { op: "spawn", object: "namespace thread".into(), source })?;
    rx.await.map_err(|_| DataplaneError::WorkerGone)?
}

fn nl_io(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

fn kernel_err(op: &'static str, object: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> DataplaneError {
    let object = object.into();
    move |e| DataplaneError::Kernel { op, object, source: nl_io(e) }
}

fn errno_err(op: &'static str, object: impl Into<String>, errno: i32) -> DataplaneError {
    DataplaneError::Kernel { op, object: object.into(), source: io::Error::from_raw_os_error(errno) }
}

fn mac_of(bytes: &[u8]) -> Option<MacAddr> {
    <[u8; 6]>::try_from(bytes).ok().map(MacAddr)
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn neigh_addr(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        NeighbourAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        // FDB entries (AF_BRIDGE) carry the remote's address undecoded.
        NeighbourAddress::Other(bytes) => match bytes.len() {
            4 => <[u8; 4]>::try_from(bytes.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(bytes.as_slice()).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    }
}

/// One link as read from the kernel.
struct RawLink {
    index: u32,
    name: String,
    kind: Option<InfoKind>,
    vxlan: Vec<InfoVxlan>,
    flags: LinkFlags,
    mtu: u32,
    mac: Option<MacAddr>,
    master: Option<u32>,
    alias: Option<String>,
    isolated: bool,
    stats: Option<rtnetlink::packet_route::link::Stats64>,
}

fn raw_link(msg: LinkMessage) -> RawLink {
    let mut l = RawLink {
        index: msg.header.index,
        name: String::new(),
        kind: None,
        vxlan: Vec::new(),
        flags: msg.header.flags,
        mtu: 0,
        mac: None,
        master: None,
        alias: None,
        isolated: false,
        stats: None,
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => l.name = n,
            LinkAttribute::Mtu(m) => l.mtu = m,
            LinkAttribute::Address(a) => l.mac = mac_of(&a),
            LinkAttribute::Controller(m) => l.master = Some(m),
            LinkAttribute::IfAlias(a) => l.alias = Some(a),
            LinkAttribute::Stats64(s) => l.stats = Some(s),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => l.kind = Some(k),
                        LinkInfo::Data(InfoData::Vxlan(v)) => l.vxlan = v,
                        LinkInfo::PortData(InfoPortData::BridgePort(port)) => {
                            l.isolated = port.iter().any(|p| matches!(p, InfoBridgePort::Isolated(true)));
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    l
}

/// The kernel of one namespace, driven through one netlink handle.
struct Kernel {
    handle: Handle,
    /// The elements of the policy maps as this data plane last read or
    /// wrote them, with their digest: used while the digest in the comment
    /// of the rule that looks a map up is the same, so that big maps are not
    /// listed on every observation.
    policy_cache: RefCell<HashMap<String, CachedMap>>,
    /// The nftables state as last listed, kept in step with the element
    /// changes applied since (see [`Kernel::nft_observe`]).
    nft_seen: RefCell<Option<(NftState, Instant)>>,
    /// Whether conntrack zones are flushed by the kernel (see
    /// [`crate::conntrack`]).
    ct_in_kernel: bool,
    /// The netfilter netlink socket of policy element changes and zone
    /// flushes, opened on first use and again after a failure.
    netfilter: RefCell<Option<NetfilterSocket>>,
    /// Where conntrack zones are flushed by the kernel: a thread of their
    /// own (see [`Flusher`]); `None` where the `conntrack` program does it.
    flusher: Option<Flusher>,
    /// How many nftables transactions were tried: a listing started before
    /// one is out of date.
    nft_generation: std::cell::Cell<u64>,
    /// The listing in the background (see [`Kernel::relisted`]).
    relisting: RefCell<Relisting>,
}

/// How long an nftables state may be carried forward from writes before it
/// is listed again (in the background; see [`Kernel::nft_observe`]): with
/// the periodic reconcile, what bounds how long a change made behind
/// Tessera's back (an `nft flush`) goes unrepaired.
const NFT_RELIST_AFTER: Duration = Duration::from_secs(5);

/// Conntrack zone flushes by the kernel, carried out in the order they are
/// handed over by a thread of their own, in the data plane's namespace (it
/// is started from the data plane's thread, whose namespace it inherits).
///
/// A flush walks the kernel's whole conntrack table (5–25 ms, more on a
/// busy host) and comes after the transaction that made the new rules
/// effective; handed over, it no longer holds up the next change. A flush
/// that fails is logged: the flows it should have ended then end by
/// themselves, as on a kernel that cannot flush.
struct Flusher {
    zones: std::sync::mpsc::Sender<u16>,
}

impl Flusher {
    fn start() -> Option<Flusher> {
        let (zones, rx) = std::sync::mpsc::channel::<u16>();
        let spawned = std::thread::Builder::new().name("tessera-ct-flush".into()).spawn(move || {
            let mut socket: Option<NetfilterSocket> = None;
            while let Ok(zone) = rx.recv() {
                let started = Instant::now();
                let result = match socket.as_mut() {
                    Some(s) => Ok(s),
                    None => NetfilterSocket::open().map(|s| socket.insert(s)),
                }
                .map_err(|source| DataplaneError::Kernel {
                    op: "ConntrackZoneFlush",
                    object: "netfilter netlink socket".into(),
                    source,
                })
                .and_then(|s| crate::conntrack::flush_zone_in_kernel(s, zone));
                match result {
                    Ok(()) => tracing::debug!(zone, elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "conntrack zone flushed"),
                    Err(e) => {
                        tracing::warn!(zone, error = %e, "conntrack zone flush failed");
                        socket = None;
                    }
                }
            }
        });
        spawned.ok().map(|_| Flusher { zones })
    }

    /// Queues the flush of `zone`; `false` when the thread is gone.
    fn hand_over(&self, zone: u16) -> bool {
        self.zones.send(zone).is_ok()
    }
}

/// Why a request on the netfilter socket failed.
enum NetfilterFailure<E> {
    /// The socket could not be opened.
    Open(io::Error),
    Request(E),
}

/// A policy map as last read or written, and its digest.
struct CachedMap {
    digest: u64,
    elements: Arc<BTreeSet<MapElement>>,
}

impl CachedMap {
    fn of(elements: impl IntoIterator<Item = MapElement>) -> Self {
        let elements: BTreeSet<MapElement> = elements.into_iter().collect();
        CachedMap { digest: map_digest(&elements), elements: Arc::new(elements) }
    }
}

impl Kernel {
    async fn links(&self) -> Result<Vec<RawLink>, DataplaneError> {
        let msgs: Vec<LinkMessage> =
            self.handle.link().get().execute().try_collect().await.map_err(kernel_err("observe", "links"))?;
        Ok(msgs.into_iter().map(raw_link).collect())
    }

    async fn addresses(&self) -> Result<Vec<(u32, IpNet, AddressScope)>, DataplaneError> {
        address_dump(&self.handle, None).await
    }

    async fn link_index(&self, name: &str) -> Result<Option<u32>, DataplaneError> {
        link_index(&self.handle, name).await
    }

    async fn need_index(&self, op: &'static str, name: &str) -> Result<u32, DataplaneError> {
        self.link_index(name).await?.ok_or_else(|| errno_err(op, name, ENODEV))
    }

    async fn observe(&self) -> Result<Observed, DataplaneError> {
        let mut obs = Observed::default();
        let links = self.links().await?;
        let names: BTreeMap<u32, String> = links.iter().map(|l| (l.index, l.name.clone())).collect();
        let mut owned: BTreeMap<u32, OwnedName> = BTreeMap::new();
        for l in &links {
            let Some(which) = owned_link_name(&l.name) else { continue };
            owned.insert(l.index, which);
            let kind = match &l.kind {
                Some(InfoKind::Bridge) => LinkKind::Bridge,
                Some(InfoKind::Veth) => LinkKind::Veth,
                Some(InfoKind::Vxlan) => LinkKind::Vxlan(vxlan_state(&l.vxlan, &names)),
                Some(other) => LinkKind::Other(format!("{other:?}").to_lowercase()),
                None => LinkKind::Other("none".into()),
            };
            obs.links.insert(
                l.name.clone(),
                LinkState {
                    kind,
                    mtu: l.mtu,
                    mac: l.mac,
                    up: l.flags.contains(LinkFlags::Up),
                    master: l.master.and_then(|m| names.get(&m).cloned()),
                    alias: l.alias.clone(),
                    isolated: l.isolated,
                },
            );
        }
        let is_bridge = |i: u32| matches!(owned.get(&i), Some(OwnedName::Bridge(_)));
        let is_vxlan = |i: u32| matches!(owned.get(&i), Some(OwnedName::Vxlan(_)));
        let name_of = |i: u32| names.get(&i).cloned().unwrap_or_default();

        for (index, addr, scope) in self.addresses().await? {
            // Link-local addresses are the kernel's, not ours.
            if is_bridge(index) && scope == AddressScope::Universe {
                obs.addresses.insert(AddressEntry { dev: name_of(index), addr });
            }
        }

        for version in [IpVersion::V4, IpVersion::V6] {
            let template = match version {
                IpVersion::V4 => RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
                IpVersion::V6 => RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
            };
            let routes: Vec<RouteMessage> =
                self.handle.route().get(template).execute().try_collect().await.map_err(kernel_err("observe", "routes"))?;
            for r in routes {
                if let Some(entry) = route_entry(&r, &names) {
                    obs.routes.insert(entry);
                }
            }
            let rules: Vec<RuleMessage> =
                self.handle.rule().get(version.clone()).execute().try_collect().await.map_err(kernel_err("observe", "rules"))?;
            for r in rules {
                if let Some(entry) = rule_entry(&r) {
                    obs.rules.insert(entry);
                }
            }
        }

        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let neighs: Vec<NeighbourMessage> = self
                .handle
                .neighbours()
                .get()
                .set_address_family(family)
                .execute()
                .try_collect()
                .await
                .map_err(kernel_err("observe", "neighbours"))?;
            for n in neighs {
                if n.header.state != NeighbourState::Permanent || !is_vxlan(n.header.ifindex) {
                    continue;
                }
                let (ip, mac) = neigh_ip_mac(&n);
                if let (Some(ip), Some(mac)) = (ip, mac) {
                    obs.neighbours.insert(NeighEntry { dev: name_of(n.header.ifindex), ip, mac });
                }
            }
            let proxies: Vec<NeighbourMessage> = self
                .handle
                .neighbours()
                .get()
                .proxies()
                .set_address_family(family)
                .execute()
                .try_collect()
                .await
                .map_err(kernel_err("observe", "proxy neighbours"))?;
            for n in proxies {
                if !is_bridge(n.header.ifindex) {
                    continue;
                }
                if let (Some(ip), _) = neigh_ip_mac(&n) {
                    obs.proxy_neighbours.insert(ProxyNeighEntry { dev: name_of(n.header.ifindex), ip });
                }
            }
        }

        let fdb: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute()
            .try_collect()
            .await
            .map_err(kernel_err("observe", "fdb"))?;
        for n in fdb {
            if !is_vxlan(n.header.ifindex) {
                continue;
            }
            if let (Some(dst), Some(mac)) = neigh_ip_mac(&n) {
                obs.fdb.insert(FdbEntry { dev: name_of(n.header.ifindex), mac, dst });
            }
        }

        let mut keys: Vec<SysctlKey> = host_sysctls().into_iter().map(|(k, _)| k).collect();
        for (index, which) in &owned {
            let name = name_of(*index);
            match which {
                OwnedName::Bridge(_) => keys.extend(bridge_sysctls(&name).into_iter().map(|(k, _)| k)),
                OwnedName::Vxlan(_) => keys.extend(vxlan_sysctls(&name).into_iter().map(|(k, _)| k)),
                OwnedName::HostVeth => {}
            }
        }
        for key in keys {
            if let Ok(v) = std::fs::read_to_string(Path::new("/proc/sys").join(&key.0)) {
                obs.sysctls.insert(key, v.trim().to_string());
            }
        }

        obs.nft = self.nft_observe().await?;
        Ok(obs)
    }

    /// The three tables: `inet tessera` and `bridge tessera` listed in full;
    /// of `inet tessera_policy`, the chain names, the maps (tersely) and the
    /// `digests` map, all cheap whatever the maps hold. A policy map's
    /// elements come from the cache when the digest recorded for it is the
    /// one the cache holds, and are left unknown otherwise (the planner then
    /// refills the map if it must change it).
    ///
    /// Listing costs an `nft` process per table (10–20 ms together), the
    /// bulk of an observation; so the state last listed is carried forward
    /// through the element changes applied since (what attaching and
    /// detaching endpoints and rule edits write), and listed again at once
    /// after any other nftables change or a failed transaction. Once it is
    /// [`NFT_RELIST_AFTER`] old, a listing runs in the background and
    /// replaces it when done, unless a transaction came in between (then
    /// another is tried as long after); at three times that age it is
    /// listed before the observation returns.
    async fn nft_observe(&self) -> Result<NftState, DataplaneError> {
        let age = self.nft_seen.borrow().as_ref().map(|(_, at)| at.elapsed());
        let listed = match age {
            Some(age) if age < NFT_RELIST_AFTER => None,
            Some(age) => match self.relisted() {
                Some(state) => Some(state),
                None if age >= NFT_RELIST_AFTER * 3 => Some(self.nft_list_state().await?),
                None => None,
            },
            None => Some(self.nft_list_state().await?),
        };
        if let Some(state) = listed {
            *self.nft_seen.borrow_mut() = Some((state, Instant::now()));
        }
        Ok(self.nft_seen.borrow().as_ref().expect("listed or carried forward").0.clone())
    }

    /// The state listed in the background, once a listing that no
    /// transaction came after is done; starts a listing when none runs and
    /// none started in the last [`NFT_RELIST_AFTER`] (under a stream of
    /// changes, listings keep being overtaken: one is tried that often, and
    /// [`Kernel::nft_observe`] lists in the foreground when they all are).
    /// The listing's `nft` processes run beside the data plane's other work,
    /// so a change does not wait for them.
    fn relisted(&self) -> Option<NftState> {
        let mut relist = self.relisting.borrow_mut();
        let generation = self.nft_generation.get();
        if let Some((started, handle)) = relist.running.take() {
            if !handle.is_finished() {
                relist.running = Some((started, handle));
                return None;
            }
            let listed = handle.now_or_never().and_then(Result::ok).and_then(Result::ok);
            if let Some(state) = listed.filter(|_| started == generation).and_then(|l| self.nft_state_of(&l).ok()) {
                return Some(state);
            }
        }
        if relist.last_start.is_none_or(|at| at.elapsed() >= NFT_RELIST_AFTER) {
            relist.last_start = Some(Instant::now());
            relist.running = Some((generation, tokio::spawn(nft_listings())));
        }
        None
    }

    /// The state of the three tables from their listings; the policy maps'
    /// elements from the cache where their digests agree.
    fn nft_state_of(&self, l: &NftListings) -> Result<NftState, DataplaneError> {
        let nft_err = |message: String| DataplaneError::Nft { op: "list", message };
        let listing = match &l.digests {
            None => None,
            Some(digests) => Some(
                parse_policy_listing(
                    l.chains.as_deref().unwrap_or_default(),
                    l.maps.as_deref().unwrap_or_default(),
                    Some(digests),
                )
                .map_err(nft_err)?,
            ),
        };
        let mut state = parse_tables(l.inet.as_deref(), l.bridge.as_deref(), listing.as_ref()).map_err(nft_err)?;
        let mut cache = self.policy_cache.borrow_mut();
        cache.retain(|name, c| state.policy.maps.get(name).is_some_and(|m| m.digest == Some(c.digest)));
        for (name, m) in state.policy.maps.iter_mut() {
            m.elements = cache.get(name).map(|c| c.elements.clone());
        }
        Ok(state)
    }

    /// Lists the three tables (no carrying forward).
    async fn nft_list_state(&self) -> Result<NftState, DataplaneError> {
        self.nft_state_of(&nft_listings().await?)
    }

    /// Applies a plan's nftables actions as one `nft -f -` transaction. When
    /// it fails, the tables are read again, deletions of what is already
    /// gone are left out, and it is retried once. The policy map cache
    /// follows what the kernel holds.
    async fn nft_apply<'a>(&self, block: &[&'a KernelOp]) -> Vec<(&'a KernelOp, Result<(), DataplaneError>)> {
        let outcome = match self.nft_elements_netlink(block) {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "policy element batch failed; running it with nft");
                self.nft_transact(block).await
            }
            None => self.nft_transact(block).await,
        };
        match &outcome {
            Ok(()) => {
                self.seen_release(block);
                self.cache_follow(block);
            }
            Err(_) => self.cache_forget(block),
        }
        self.seen_follow(block, outcome.is_ok());
        block.iter().map(|a| (*a, outcome.clone().map_err(|message| DataplaneError::Nft { op: "apply", message }))).collect()
    }

    /// Sends `block` as a batch of element messages when it only changes
    /// policy map elements (see [`crate::nfnetlink`]); `None` when it does
    /// more, or is too big.
    fn nft_elements_netlink(&self, block: &[&KernelOp]) -> Option<Result<(), String>> {
        let started = Instant::now();
        let sent = self.with_netfilter(|s| match element_batch(block, s.next_seq()) {
            Err(unsupported) => Ok(Err(unsupported)),
            Ok(messages) => s.transact(&messages).map(|()| Ok(messages.bytes().len())),
        });
        let result = match sent {
            Ok(Err(_)) => return None,
            Ok(Ok(bytes)) => {
                tracing::debug!(elapsed_ms = started.elapsed().as_secs_f64() * 1e3, bytes, "nftables element batch");
                Ok(())
            }
            Err(NetfilterFailure::Open(e)) => Err(format!("netfilter netlink socket: {e}")),
            Err(NetfilterFailure::Request(e)) => Err(format!("nftables element batch: {e}")),
        };
        Some(result)
    }

    /// Runs `f` with the netfilter socket, opened if it is not; a failed
    /// request closes it (its answers may still be on their way).
    fn with_netfilter<T, E>(&self, f: impl FnOnce(&mut NetfilterSocket) -> Result<T, E>) -> Result<T, NetfilterFailure<E>> {
        let mut slot = self.netfilter.borrow_mut();
        let socket = match slot.as_mut() {
            Some(s) => s,
            None => slot.insert(NetfilterSocket::open().map_err(NetfilterFailure::Open)?),
        };
        let result = f(socket).map_err(NetfilterFailure::Request);
        if result.is_err() {
            *slot = None;
        }
        result
    }

    /// Runs `block` as one `nft -f -` transaction; when it fails, the tables
    /// are read again, deletions of what is already gone are left out, and
    /// it is retried once.
    async fn nft_transact(&self, block: &[&KernelOp]) -> Result<(), String> {
        let text = script(block, &|_| false);
        let started = Instant::now();
        let first_try = nft_run(&["-f", "-"], Some(&text)).await;
        if tracing::enabled!(tracing::Level::DEBUG) {
            let ms = started.elapsed().as_secs_f64() * 1e3;
            if text.len() <= 4096 {
                tracing::debug!(elapsed_ms = ms, ok = first_try.is_ok(), script = %text, "nft transaction");
            } else {
                tracing::debug!(elapsed_ms = ms, ok = first_try.is_ok(), bytes = text.len(), "nft transaction");
            }
        }
        match first_try {
            Ok(_) => Ok(()),
            Err(first) => match self.nft_list_state().await {
                Err(e) => Err(format!("{first}; then {e}")),
                Ok(now) => {
                    let trimmed: Vec<KernelOp> = block.iter().filter_map(|a| without_absent(a, &now)).collect();
                    if trimmed.len() == block.len() && trimmed.iter().zip(block).all(|(a, b)| a == *b) {
                        Err(first)
                    } else {
                        let refs: Vec<&KernelOp> = trimmed.iter().collect();
                        nft_run(&["-f", "-"], Some(&script(&refs, &|_| false)))
                            .await
                            .map(|_| ())
                            .map_err(|e| format!("{first}; retried: {e}"))
                    }
                }
            },
        }
    }

    /// Carries the listed nftables state through a transaction that
    /// succeeded: set element changes and the policy table's chains, maps,
    /// map elements and digests are applied to it (the policy map elements
    /// from the cache, which [`Kernel::cache_follow`] has already brought in
    /// line); the skeleton's installation, or a failure, drops it so that the
    /// next observation lists the tables.
    fn seen_follow(&self, block: &[&KernelOp], ok: bool) {
        self.nft_generation.set(self.nft_generation.get() + 1);
        let mut seen = self.nft_seen.borrow_mut();
        let Some((state, _)) = seen.as_mut() else { return };
        if !ok || block.iter().any(|a| !a.is_nft() || matches!(a, KernelOp::NftTablesInstall)) {
            *seen = None;
            return;
        }
        let mut policy_changed = false;
        for a in block {
            match a {
                KernelOp::NftSetElementAdd(e) => {
                    state.elements.insert(e.clone());
                }
                KernelOp::NftSetElementDelete(e) => {
                    state.elements.remove(e);
                }
                KernelOp::NftMapAdd { name, family } => {
                    policy_changed = true;
                    state.policy.maps.insert(name.clone(), ObservedMap { family: *family, digest: None, elements: None });
                }
                KernelOp::NftMapDelete { name } => {
                    policy_changed = true;
                    state.policy.maps.remove(name);
                }
                KernelOp::NftChainInstall { name, .. } => {
                    policy_changed = true;
                    state.policy.chains.entry(name.clone()).or_default();
                }
                KernelOp::NftChainDelete { name } => {
                    policy_changed = true;
                    state.policy.chains.remove(name);
                }
                KernelOp::NftDigestsUpdate { deletes, adds } => {
                    policy_changed = true;
                    for (k, _) in deletes {
                        state.policy.digests.remove(k);
                    }
                    state.policy.digests.extend(adds.iter().copied());
                }
                KernelOp::NftMapElementsAdd { .. } | KernelOp::NftMapElementsDelete { .. } | KernelOp::NftMapFlush { .. } => {
                    policy_changed = true;
                }
                _ => {}
            }
        }
        if policy_changed {
            derive_digests(&mut state.policy);
            let cache = self.policy_cache.borrow();
            for (name, m) in state.policy.maps.iter_mut() {
                m.elements = cache.get(name).filter(|c| m.digest == Some(c.digest)).map(|c| c.elements.clone());
            }
        }
    }

    /// Lets go of the carried-forward state's share of the cached elements
    /// of the maps `block` changes, so that [`Kernel::cache_follow`] changes
    /// them in place rather than copying a 50,000-element map for a
    /// one-element change ([`Kernel::seen_follow`] shares them again).
    fn seen_release(&self, block: &[&KernelOp]) {
        let mut seen = self.nft_seen.borrow_mut();
        let Some((state, _)) = seen.as_mut() else { return };
        for a in block {
            if let KernelOp::NftMapElementsAdd { map, .. } | KernelOp::NftMapElementsDelete { map, .. } = a {
                if let Some(m) = state.policy.maps.get_mut(map) {
                    m.elements = None;
                }
            }
        }
    }

    /// Brings the policy map cache in line with a transaction that succeeded.
    fn cache_follow(&self, block: &[&KernelOp]) {
        let mut cache = self.policy_cache.borrow_mut();
        for a in block {
            match a {
                KernelOp::NftTablesInstall => cache.clear(),
                KernelOp::NftMapAdd { name, .. } => {
                    cache.insert(name.clone(), CachedMap::of([]));
                }
                KernelOp::NftMapDelete { name } => {
                    cache.remove(name);
                }
                KernelOp::NftMapFlush { map } => {
                    cache.insert(map.clone(), CachedMap::of([]));
                }
                KernelOp::NftMapElementsAdd { map, elements } => {
                    if let Some(c) = cache.get_mut(map) {
                        let set = Arc::make_mut(&mut c.elements);
                        for e in elements {
                            if set.insert(e.clone()) {
                                c.digest = c.digest.wrapping_add(element_hash(e));
                            }
                        }
                    }
                }
                KernelOp::NftMapElementsDelete { map, elements } => {
                    if let Some(c) = cache.get_mut(map) {
                        let set = Arc::make_mut(&mut c.elements);
                        for e in elements {
                            if set.remove(e) {
                                c.digest = c.digest.wrapping_sub(element_hash(e));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// Forgets the cached maps a failed transaction was about.
    fn cache_forget(&self, block: &[&KernelOp]) {
        let mut cache = self.policy_cache.borrow_mut();
        for a in block {
            match a {
                KernelOp::NftTablesInstall => cache.clear(),
                KernelOp::NftMapAdd { name, .. } | KernelOp::NftMapDelete { name } => {
                    cache.remove(name);
                }
                KernelOp::NftMapElementsAdd { map, .. }
                | KernelOp::NftMapElementsDelete { map, .. }
                | KernelOp::NftMapFlush { map } => {
                    cache.remove(map);
                }
                _ => {}
            }
        }
    }

    /// Applies the plan: the nftables block (one transaction) runs beside
    /// the netlink actions, which run in the plan's order; conntrack zone
    /// flushes come after both. Nothing in the
    /// kernel orders the two: set and map elements name interfaces by name,
    /// whether they exist yet or not, and the bridge table drops what a port
    /// sends until the port's elements are in (so a port up before them is
    /// closed, not open).
    async fn apply(&self, actions: &[KernelOp]) -> ApplyReport {
        let block: Vec<&KernelOp> = actions.iter().filter(|a| a.is_nft()).collect();
        let nft = async {
            if block.is_empty() {
                Vec::new()
            } else {
                self.nft_apply(&block).await
            }
        };
        let netlink = async {
            let mut out = Vec::new();
            for action in actions.iter().filter(|a| !a.is_nft() && !a.is_conntrack()) {
                let span = tracing::debug_span!("action", op = action.op());
                let mut result = self.apply_one(action).instrument(span).await;
                if action.is_removal() {
                    if let Err(e) = &result {
                        if matches!(e.errno(), Some(ENOENT | ESRCH | ENODEV | EADDRNOTAVAIL)) {
                            result = Ok(());
                        }
                    }
                }
                out.push((action, result));
            }
            out
        };
        let (nft_results, netlink_results) = futures::join!(nft, netlink);
        let mut report = ApplyReport::default();
        for (action, result) in nft_results.into_iter().chain(netlink_results) {
            record(&mut report, action, result);
        }
        // Last, once the transaction has made the new rules effective: a
        // flow ended earlier could start again under the old ones. The zones
        // are independent: side by side (handed to the flusher where the
        // kernel flushes them).
        let started = std::time::Instant::now();
        let flushes = actions.iter().filter(|a| a.is_conntrack()).map(|a| async move { (a, self.apply_one(a).await) });
        let flushed = futures::future::join_all(flushes).await;
        if !flushed.is_empty() {
            tracing::debug!(
                zones = flushed.len(),
                elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                "conntrack zone flushes done or handed over"
            );
        }
        for (action, result) in flushed {
            record(&mut report, action, result);
        }
        report
    }

    async fn apply_one(&self, action: &KernelOp) -> Result<(), DataplaneError> {
        let op = action.op();
        let h = &self.handle;
        match action {
            KernelOp::SysctlWrite { key, value } => std::fs::write(Path::new("/proc/sys").join(&key.0), value)
                .map_err(|source| DataplaneError::Kernel { op, object: key.dotted(), source }),
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
            | KernelOp::NftChainDelete { .. } => {
                unreachable!("nft actions are applied as one batch")
            }
            KernelOp::ConntrackZoneFlush { zone } if self.ct_in_kernel && *zone != 0 => {
                if self.flusher.as_ref().is_some_and(|f| f.hand_over(*zone)) {
                    return Ok(());
                }
                self.with_netfilter(|s| crate::conntrack::flush_zone_in_kernel(s, *zone)).map_err(|e| match e {
                    NetfilterFailure::Open(source) => {
                        DataplaneError::Kernel { op, object: "netfilter netlink socket".into(), source }
                    }
                    NetfilterFailure::Request(e) => e,
                })
            }
            KernelOp::ConntrackZoneFlush { zone } => crate::conntrack::flush_zone_with_program(*zone).await,
            KernelOp::BridgePortIsolate { name } => {
                let index = self.need_index(op, name).await?;
                bridge_port_isolate(h, index).await.map_err(kernel_err(op, name))
            }
            KernelOp::LinkAddBridge { name, mac, mtu } => {
                let msg = LinkBridge::new(name).mcast_snooping(false).mtu(*mtu).address(mac.0.to_vec()).up().build();
                h.link().add(msg).execute().await.map_err(kernel_err(op, name))
            }
            KernelOp::LinkAddVxlan { name, vni, local, underlay, port, mac, mtu } => {
                let dev = self.need_index(op, underlay).await?;
                let b = LinkVxlan::new(name, vni.get()).dev(dev).port(*port).learning(false);
                let b = match local {
                    IpAddr::V4(v4) => b.local(*v4),
                    IpAddr::V6(v6) => b.local6(*v6),
                };
                let msg = b.mtu(*mtu).address(mac.0.to_vec()).up().build();
                h.link().add(msg).execute().await.map_err(kernel_err(op, name))
            }
            KernelOp::VethAdd { name, bridge, mtu, netns, peer_ifname, peer_mac } => {
                let master = self.need_index(op, bridge).await?;
                let ns = File::open(netns).map_err(|source| DataplaneError::Netns { path: netns.clone(), source })?;
                let peer = LinkUnspec::new_with_name(peer_ifname)
                    .address(peer_mac.0.to_vec())
                    .mtu(*mtu)
                    .setns_by_fd(ns.as_raw_fd())
                    .build();
                let msg = LinkVeth::new(name, peer_ifname)
                    .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                    .mtu(*mtu)
                    .controller(master)
                    .up()
                    .build();
                let result = h.link().add(msg).execute().await.map_err(kernel_err(op, name));
                drop(ns);
                result?;
                let index = self.need_index(op, name).await?;
                bridge_port_isolate(h, index).await.map_err(kernel_err(op, name))
            }
            KernelOp::LinkSetUp { name } => {
                let index = self.need_index(op, name).await?;
                h.link().set(LinkUnspec::new_with_index(index).up().build()).execute().await.map_err(kernel_err(op, name))
            }
            KernelOp::LinkSetMtu { name, mtu } => {
                let index = self.need_index(op, name).await?;
                h.link().set(LinkUnspec::new_with_index(index).mtu(*mtu).build()).execute().await.map_err(kernel_err(op, name))
            }
            KernelOp::LinkDelete { name } => {
                let index = self.need_index(op, name).await?;
                h.link().del(index).execute().await.map_err(kernel_err(op, name))
            }
            KernelOp::AddressInstall(a) => {
                let index = self.need_index(op, &a.dev).await?;
                let mut req = h.address().add(index, a.addr.addr(), a.addr.prefix_len()).replace();
                if a.addr.addr().is_ipv6() {
                    req.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad | AddressFlags::Noprefixroute));
                }
                req.execute().await.map_err(kernel_err(op, a.addr.to_string()))
            }
            KernelOp::AddressUninstall(a) => {
                let index = self.need_index(op, &a.dev).await?;
                h.address().del(address_message(index, a.addr)).execute().await.map_err(kernel_err(op, a.addr.to_string()))
            }
            KernelOp::RuleInstall(r) => {
                let req = h.rule().add().table_id(r.table).priority(r.priority).action(RuleAction::ToTable);
                let req = match &r.selector {
                    RuleSelector::Iif(name) => req.input_interface(name.clone()),
                    RuleSelector::FwMark(mark) => req.fw_mark(*mark),
                };
                let result = match r.family {
                    IpFamily::V4 => req.v4().execute().await,
                    IpFamily::V6 => req.v6().execute().await,
                };
                match result.map_err(kernel_err(op, action.to_string())) {
                    Err(e) if e.errno() == Some(EEXIST) => Ok(()),
                    other => other,
                }
            }
            KernelOp::RuleUninstall(r) => {
                h.rule().del(rule_message(r)).execute().await.map_err(kernel_err(op, action.to_string()))
            }
            KernelOp::RouteInstall(r) => {
                let msg = self.route_message(op, r, false).await?;
                h.route().add(msg).replace().execute().await.map_err(kernel_err(op, action.to_string()))
            }
            KernelOp::RouteUninstall(r) => {
                let msg = self.route_message(op, r, true).await?;
                h.route().del(msg).execute().await.map_err(kernel_err(op, action.to_string()))
            }
            KernelOp::NeighInstall(n) => {
                let index = self.need_index(op, &n.dev).await?;
                h.neighbours()
                    .add(index, n.ip)
                    .link_layer_address(&n.mac.0)
                    .state(NeighbourState::Permanent)
                    .replace()
                    .execute()
                    .await
                    .map_err(kernel_err(op, action.to_string()))
            }
            KernelOp::NeighUninstall(n) => {
                let index = self.need_index(op, &n.dev).await?;
                h.neighbours()
                    .del(neigh_message(index, n.ip, NeighbourFlags::empty()))
                    .execute()
                    .await
                    .map_err(kernel_err(op, action.to_string()))
            }
            KernelOp::FdbInstall(f) => {
                let index = self.need_index(op, &f.dev).await?;
                h.neighbours()
                    .add_bridge(index, &f.mac.0)
                    .destination(f.dst)
                    .flags(NeighbourFlags::Own)
                    .state(NeighbourState::Permanent)
                    .replace()
                    .execute()
                    .await
                    .map_err(kernel_err(op, action.to_string()))
            }
            KernelOp::FdbUninstall(f) => {
                let index = self.need_index(op, &f.dev).await?;
                let mut msg = NeighbourMessage::default();
                msg.header.family = AddressFamily::Bridge;
                msg.header.ifindex = index;
                msg.header.flags = NeighbourFlags::Own;
                msg.attributes.push(NeighbourAttribute::LinkLayerAddress(f.mac.0.to_vec()));
                msg.attributes.push(NeighbourAttribute::Destination(ip_to_neigh(f.dst)));
                h.neighbours().del(msg).execute().await.map_err(kernel_err(op, action.to_string()))
            }
            KernelOp::ProxyNeighInstall(p) => {
                let index = self.need_index(op, &p.dev).await?;
                h.neighbours()
                    .add(index, p.ip)
                    .flags(NeighbourFlags::Proxy)
                    .state(NeighbourState::Permanent)
                    .execute()
                    .await
                    .map_err(kernel_err(op, action.to_string()))
            }
            KernelOp::ProxyNeighUninstall(p) => {
                let index = self.need_index(op, &p.dev).await?;
                h.neighbours()
                    .del(neigh_message(index, p.ip, NeighbourFlags::Proxy))
                    .execute()
                    .await
                    .map_err(kernel_err(op, action.to_string()))
            }
            KernelOp::ContainerIfaceConfigure { host_veth, endpoint, netns, ifname, mac, addrs, gateways, mtu } => {
                let host_index = self.need_index(op, host_veth).await?;
                let (ifname, mac, addrs, gateways, mtu) = (ifname.clone(), *mac, addrs.clone(), gateways.clone(), *mtu);
                in_netns(netns, move |handle| async move {
                    configure_container_iface(&handle, &ifname, mac, &addrs, &gateways, mtu).await
                })
                .await?;
                // Last: the mark that the endpoint is complete.
                h.link()
                    .set(LinkUnspec::new_with_index(host_index).alias(endpoint.to_string()).build())
                    .execute()
                    .await
                    .map_err(kernel_err(op, host_veth.clone()))
            }
        }
    }

    async fn route_message(&self, op: &'static str, r: &RouteEntry, for_delete: bool) -> Result<RouteMessage, DataplaneError> {
        let b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(r.dst.addr(), r.dst.prefix_len())
            .map_err(|e| DataplaneError::Kernel { op, object: r.dst.to_string(), source: io::Error::other(e.to_string()) })?
            .table_id(r.table);
        let b = match &r.target {
            RouteTarget::Dev(dev) => {
                let index = self.need_index(op, dev).await?;
                let scope = if r.dst.addr().is_ipv4() { RouteScope::Link } else { RouteScope::Universe };
                b.output_interface(index).scope(scope)
            }
            RouteTarget::Unreachable => b.kind(RouteType::Unreachable).priority(VRF_UNREACHABLE_METRIC),
        };
        let b = if for_delete { b.protocol(RouteProtocol::Unspec).scope(RouteScope::NoWhere) } else { b };
        Ok(b.build())
    }

    async fn link_with_address(&self, ip: IpAddr) -> Result<Option<(String, u32)>, DataplaneError> {
        let Some(index) = self.addresses().await?.into_iter().find(|(_, a, _)| a.addr() == ip).map(|(i, _, _)| i) else {
            return Ok(None);
        };
        Ok(self.links().await?.into_iter().find(|l| l.index == index).map(|l| (l.name, l.mtu)))
    }

    async fn interfaces(&self) -> Result<Vec<VifEntry>, DataplaneError> {
        let links = self.links().await?;
        let names: BTreeMap<u32, String> = links.iter().map(|l| (l.index, l.name.clone())).collect();
        let mut addrs: BTreeMap<u32, Vec<IpNet>> = BTreeMap::new();
        for (index, addr, _) in self.addresses().await? {
            addrs.entry(index).or_default().push(addr);
        }
        let mut out = Vec::new();
        for l in links {
            let master = l.master.and_then(|m| names.get(&m).cloned());
            let owned = owned_link_name(&l.name);
            let (kind, vni) = match owned {
                Some(OwnedName::Bridge(v)) => (VifKind::Bridge, Some(v)),
                Some(OwnedName::Vxlan(v)) => (VifKind::Tunnel, Some(v)),
                Some(OwnedName::HostVeth) => {
                    let vni = master.as_deref().and_then(owned_link_name).and_then(|o| match o {
                        OwnedName::Bridge(v) => Some(v),
                        _ => None,
                    });
                    (VifKind::Endpoint, vni)
                }
                None if l.kind.is_none() && !l.flags.contains(LinkFlags::Loopback) => (VifKind::Physical, None),
                None => (VifKind::Host, None),
            };
            let s = l.stats.unwrap_or_default();
            out.push(VifEntry {
                name: l.name,
                index: l.index,
                kind,
                mac: l.mac,
                addrs: addrs.remove(&l.index).unwrap_or_default(),
                vni,
                master,
                flags: flag_names(l.flags),
                mtu: l.mtu,
                rx_packets: s.rx_packets,
                rx_bytes: s.rx_bytes,
                rx_errors: s.rx_errors,
                rx_dropped: s.rx_dropped,
                tx_packets: s.tx_packets,
                tx_bytes: s.tx_bytes,
                tx_errors: s.tx_errors,
                tx_dropped: s.tx_dropped,
            });
        }
        Ok(out)
    }
}

fn flag_names(flags: LinkFlags) -> Vec<String> {
    [
        (LinkFlags::Loopback, "loopback"),
        (LinkFlags::Broadcast, "broadcast"),
        (LinkFlags::Noarp, "noarp"),
        (LinkFlags::Promisc, "promisc"),
        (LinkFlags::Multicast, "multicast"),
        (LinkFlags::Up, "up"),
        (LinkFlags::LowerUp, "lower_up"),
        (LinkFlags::Running, "running"),
    ]
    .into_iter()
    .filter(|(f, _)| flags.contains(*f))
    .map(|(_, name)| name.to_string())
    .collect()
}

fn record(report: &mut ApplyReport, action: &KernelOp, result: Result<(), DataplaneError>) {
    match result {
        Ok(()) => report.applied.push(action.clone()),
        Err(error) => report.failures.push(KernelOpFailure { action: action.clone(), error }),
    }
}

async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, DataplaneError> {
    let mut stream = handle.link().get().match_name(name.to_string()).execute();
    match stream.try_next().await {
        Ok(Some(msg)) => Ok(Some(msg.header.index)),
        Ok(None) => Ok(None),
        Err(e) => {
            let e = kernel_err("find link", name)(e);
            if e.errno() == Some(ENODEV) {
                Ok(None)
            } else {
                Err(e)
            }
        }
    }
}

async fn address_dump(handle: &Handle, index: Option<u32>) -> Result<Vec<(u32, IpNet, AddressScope)>, DataplaneError> {
    let mut req = handle.address().get();
    if let Some(i) = index {
        req = req.set_link_index_filter(i);
    }
    let msgs: Vec<AddressMessage> = req.execute().try_collect().await.map_err(kernel_err("observe", "addresses"))?;
    let mut out = Vec::new();
    for m in msgs {
        let addr = m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        });
        let addr = addr.or_else(|| {
            m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })
        });
        if let Some(addr) = addr {
            if let Ok(net) = IpNet::new(addr, m.header.prefix_len) {
                out.push((m.header.index, net, m.header.scope));
            }
        }
    }
    Ok(out)
}

fn address_message(index: u32, addr: IpNet) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = if addr.addr().is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    m.header.prefix_len = addr.prefix_len();
    m.header.index = index;
    m.attributes.push(AddressAttribute::Local(addr.addr()));
    m.attributes.push(AddressAttribute::Address(addr.addr()));
    m
}

fn ip_to_neigh(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    }
}

fn neigh_message(index: u32, ip: IpAddr, flags: NeighbourFlags) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = if ip.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    m.header.ifindex = index;
    m.header.flags = flags;
    m.attributes.push(NeighbourAttribute::Destination(ip_to_neigh(ip)));
    m
}

fn neigh_ip_mac(n: &NeighbourMessage) -> (Option<IpAddr>, Option<MacAddr>) {
    let mut ip = None;
    let mut mac = None;
    for a in &n.attributes {
        match a {
            NeighbourAttribute::Destination(d) => ip = neigh_addr(d),
            NeighbourAttribute::LinkLayerAddress(l) => mac = mac_of(l),
            _ => {}
        }
    }
    (ip, mac)
}

fn rule_message(r: &RuleEntry) -> RuleMessage {
    let mut m = RuleMessage::default();
    m.header.family = match r.family {
        IpFamily::V4 => AddressFamily::Inet,
        IpFamily::V6 => AddressFamily::Inet6,
    };
    m.header.action = RuleAction::ToTable;
    match &r.selector {
        RuleSelector::Iif(name) => m.attributes.push(RuleAttribute::Iifname(name.clone())),
        RuleSelector::FwMark(mark) => m.attributes.push(RuleAttribute::FwMark(*mark)),
    }
    m.attributes.push(RuleAttribute::Table(r.table));
    m.attributes.push(RuleAttribute::Priority(r.priority));
    m
}

fn rule_entry(m: &RuleMessage) -> Option<RuleEntry> {
    let mut iif = None;
    let mut fwmark = None;
    let mut table = u32::from(m.header.table);
    let mut priority = 0;
    for a in &m.attributes {
        match a {
            RuleAttribute::Iifname(n) => iif = Some(n.clone()),
            RuleAttribute::FwMark(mark) => fwmark = Some(*mark),
            RuleAttribute::Table(t) => table = *t,
            RuleAttribute::Priority(p) => priority = *p,
            _ => {}
        }
    }
    if m.header.action != RuleAction::ToTable || !owned_rule(iif.as_deref(), fwmark, priority, table) {
        return None;
    }
    let family = match m.header.family {
        AddressFamily::Inet => IpFamily::V4,
        AddressFamily::Inet6 => IpFamily::V6,
        _ => return None,
    };
    let selector = match (iif, fwmark) {
        (Some(name), _) => RuleSelector::Iif(name),
        (None, Some(mark)) => RuleSelector::FwMark(mark),
        (None, None) => return None,
    };
    Some(RuleEntry { family, selector, table, priority })
}

fn route_entry(m: &RouteMessage, names: &BTreeMap<u32, String>) -> Option<RouteEntry> {
    if m.header.flags.contains(RouteFlags::Cloned) {
        return None;
    }
    let mut table = u32::from(m.header.table);
    let mut dst = None;
    let mut oif = None;
    let mut has_gateway = false;
    for a in &m.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(d) => dst = route_addr(d),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Gateway(_) | RouteAttribute::Via(_) | RouteAttribute::MultiPath(_) => has_gateway = true,
            _ => {}
        }
    }
    if !owned_table(table) {
        return None;
    }
    let any = match m.header.address_family {
        AddressFamily::Inet => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let dst = IpNet::new(dst.unwrap_or(any), m.header.destination_prefix_length).ok()?;
    let target = match m.header.kind {
        RouteType::Unreachable => RouteTarget::Unreachable,
        RouteType::Unicast if !has_gateway => RouteTarget::Dev(names.get(&oif?)?.clone()),
        // Not something Tessera makes: left alone.
        _ => return None,
    };
    Some(RouteEntry { table, dst, target })
}

fn vxlan_state(infos: &[InfoVxlan], names: &BTreeMap<u32, String>) -> VxlanState {
    let mut s = VxlanState { vni: 0, local: None, port: 0, underlay: None, learning: true };
    for i in infos {
        match i {
            InfoVxlan::Id(v) => s.vni = *v,
            InfoVxlan::Local(v4) => s.local = Some(IpAddr::V4(*v4)),
            InfoVxlan::Local6(v6) => s.local = Some(IpAddr::V6(*v6)),
            InfoVxlan::Port(p) => s.port = *p,
            InfoVxlan::Link(l) => s.underlay = names.get(l).cloned(),
            InfoVxlan::Learning(l) => s.learning = *l,
            _ => {}
        }
    }
    s
}

/// Inside a container's namespace: the interface's MAC, MTU, addresses,
/// state and default routes.
async fn configure_container_iface(
    handle: &Handle,
    ifname: &str,
    mac: MacAddr,
    addrs: &[IpNet],
    gateways: &[IpAddr],
    mtu: u32,
) -> Result<(), DataplaneError> {
    const OP: &str = "ContainerIfaceConfigure";
    let index = link_index(handle, ifname).await?.ok_or_else(|| errno_err(OP, ifname, ENODEV))?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).address(mac.0.to_vec()).mtu(mtu).up().build())
        .execute()
        .await
        .map_err(kernel_err(OP, ifname))?;
    let want: BTreeSet<IpNet> = addrs.iter().copied().collect();
    for (_, have, scope) in address_dump(handle, Some(index)).await? {
        if scope == AddressScope::Universe && !want.contains(&have) {
            handle.address().del(address_message(index, have)).execute().await.map_err(kernel_err(OP, have.to_string()))?;
        }
    }
    for a in addrs {
        let mut req = handle.address().add(index, a.addr(), a.prefix_len()).replace();
        if a.addr().is_ipv6() {
            req.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute().await.map_err(kernel_err(OP, a.to_string()))?;
    }
    for gw in gateways {
        let any =
            if gw.is_ipv4() { IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED) } else { IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED) };
        let msg = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(any, 0)
            .and_then(|b| b.gateway(*gw))
            .map_err(|e| DataplaneError::Kernel { op: OP, object: gw.to_string(), source: io::Error::other(e.to_string()) })?
            .output_interface(index)
            .build();
        handle.route().add(msg).replace().execute().await.map_err(kernel_err(OP, format!("default via {gw}")))?;
    }
    Ok(())
}

/// Runs `nft ARGS`, feeding `input` on standard input; returns standard
/// output, or standard error as the error.
async fn nft_run(args: &[&str], input: Option<&str>) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new(NFT);
    cmd.args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {NFT}: {e}"))?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(input.as_bytes()).await.map_err(|e| format!("writing to {NFT}: {e}"))?;
    }
    let out = child.wait_with_output().await.map_err(|e| format!("waiting for {NFT}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(crate::nft::shorten(String::from_utf8_lossy(&out.stderr).trim().to_string()))
    }
}

/// A listing of the nftables state in the background.
#[derive(Default)]
struct Relisting {
    /// The one running, and the transaction generation it started at.
    running: Option<(u64, tokio::task::JoinHandle<Result<NftListings, DataplaneError>>)>,
    /// When the last one started.
    last_start: Option<Instant>,
}

/// The listings the nftables state is read from (`None`: no such table).
struct NftListings {
    inet: Option<String>,
    bridge: Option<String>,
    digests: Option<String>,
    chains: Option<String>,
    maps: Option<String>,
}

/// Lists the three tables: `inet tessera` and `bridge tessera` in full; of
/// `inet tessera_policy`, the `digests` map, the chains and the maps
/// (tersely). Five small listings, each an `nft` process, side by side.
async fn nft_listings() -> Result<NftListings, DataplaneError> {
    let (inet, bridge, digests, chains, maps) = futures::try_join!(
        nft_list(&["-j", "list", "table", "inet", "tessera"]),
        nft_list(&["-j", "list", "table", "bridge", "tessera"]),
        nft_list(&["-j", "list", "map", "inet", POLICY_TABLE, crate::policy::DIGESTS]),
        nft_list(&["-j", "list", "chains", "inet"]),
        nft_list(&["-j", "-t", "list", "maps", "inet"]),
    )?;
    Ok(NftListings { inet, bridge, digests, chains, maps })
}

/// `nft ARGS` for a listing; `None` when the table or map does not exist.
async fn nft_list(args: &[&str]) -> Result<Option<String>, DataplaneError> {
    match nft_run(args, None).await {
        Ok(out) => Ok(Some(out)),
        Err(e) if e.contains("No such file or directory") => Ok(None),
        Err(message) => Err(DataplaneError::Nft { op: "list", message }),
    }
}

/// `action` without the deletions of what `now` no longer holds (`None`:
/// nothing left of it).
fn without_absent(action: &KernelOp, now: &NftState) -> Option<KernelOp> {
    match action {
        KernelOp::NftSetElementDelete(e) if !now.elements.contains(e) => None,
        KernelOp::NftChainDelete { name } if !now.policy.chains.contains_key(name) => None,
        KernelOp::NftMapDelete { name } if !now.policy.maps.contains_key(name) => None,
        KernelOp::NftMapElementsDelete { map, elements } => {
            let have = now.policy.maps.get(map)?;
            let Some(known) = &have.elements else { return Some(action.clone()) };
            let keys: BTreeSet<_> = known.iter().map(|e| e.key).collect();
            let still: Vec<MapElement> = elements.iter().filter(|e| keys.contains(&e.key)).cloned().collect();
            (!still.is_empty()).then(|| KernelOp::NftMapElementsDelete { map: map.clone(), elements: still })
        }
        KernelOp::NftDigestsUpdate { deletes, adds } => {
            let still: Vec<(u128, u128)> = deletes.iter().filter(|(k, _)| now.policy.digests.contains_key(k)).copied().collect();
            Some(KernelOp::NftDigestsUpdate { deletes: still, adds: adds.clone() })
        }
        other => Some(other.clone()),
    }
}

/// `ip link set dev INDEX type bridge_slave isolated on`
async fn bridge_port_isolate(h: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    h.link().change(LinkBridgePort::new(index).append_info_data(InfoBridgePort::Isolated(true)).build()).execute().await
}
