//! The data plane's worker: a [`LinuxDataplane`] hands its requests to a
//! thread of its own that stays in the data plane's namespace and runs a
//! single-threaded runtime, where a [`Kernel`] answers them; the
//! [`Dataplane`] implementation is the glue. An apply is ordered here: the
//! nftables transaction beside the netlink actions, each action sent to the
//! file of its kind of object, conntrack zone flushes last.

use std::net::IpAddr;
use std::path::PathBuf;

use async_trait::async_trait;
use futures::StreamExt;
use rtnetlink::Handle;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::common::{Netfilter, EADDRNOTAVAIL, ENODEV, ENOENT, ESRCH};
use super::conntrack::Conntrack;
use super::netns::{connect, enter_netns, lowest_cpu_priority, runtime};
use super::nftables::NftTables;
use super::{links, neigh, observe, routes, vif};
use crate::dataplane::{ApplyReport, Dataplane, KernelOpFailure};
use crate::desired::DesiredHost;
use crate::error::DataplaneError;
use crate::names::POLICY_TABLE;
use crate::nfnetlink::{policy_counters, NetfilterSocket};
use crate::observed::{NftState, Observed};
use crate::op::KernelOp;
use crate::policy::{rule_counters, RuleCounter};
use crate::vif::VifEntry;

enum Request {
    Observe(oneshot::Sender<Result<Observed, DataplaneError>>),
    ObserveNft(oneshot::Sender<Result<NftState, DataplaneError>>),
    Apply(Vec<KernelOp>, oneshot::Sender<ApplyReport>),
    Interfaces(oneshot::Sender<Result<Vec<VifEntry>, DataplaneError>>),
    LinkWithAddress(IpAddr, oneshot::Sender<Result<Option<(String, u32)>, DataplaneError>>),
    LinkExists(String, oneshot::Sender<Result<bool, DataplaneError>>),
}

/// The Linux data plane of one network namespace (the host's, for an agent).
pub struct LinuxDataplane {
    requests: mpsc::UnboundedSender<Request>,
    /// The namespace, when not the creating thread's.
    netns: Option<PathBuf>,
    /// Moves when Tessera's nftables tables change behind its back.
    nft_changes: tokio::sync::watch::Receiver<u64>,
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
        let (changes_tx, nft_changes) = tokio::sync::watch::channel(0);
        std::thread::Builder::new()
            .name("tessera-dataplane".into())
            .spawn({
                let netns = netns.clone();
                move || worker(netns, ready_tx, rx, changes_tx)
            })
            .map_err(|source| DataplaneError::Kernel { op: "spawn", object: "data plane thread".into(), source })?;
        ready_rx.await.map_err(|_| DataplaneError::WorkerGone)??;
        Ok(LinuxDataplane { requests, netns, nft_changes })
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

    async fn observe_nft(&self) -> Result<NftState, DataplaneError> {
        self.call(Request::ObserveNft).await?
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
                    let counters = policy_counters(&mut socket).map_err(err)?;
                    Ok(rule_counters(&desired, &counters))
                };
                let _ = tx.send(read());
            })
            .map_err(|source| DataplaneError::Kernel { op: "spawn", object: "counter thread".into(), source })?;
        rx.await.map_err(|_| DataplaneError::WorkerGone)?
    }

    fn nft_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.nft_changes.clone())
    }
}

/// How many containers' interfaces are configured at a time.
const CONFIGURE_BESIDE: usize = 8;

/// How many requests of one run of independent actions (see
/// [`independent`]) are in flight on the netlink socket at a time.
const IN_FLIGHT: usize = 16;

/// Whether consecutive actions of `action`'s kind are independent of each
/// other, so that they may be carried out side by side: each makes or
/// removes its own object on links that exist before the run (entries of
/// remote endpoints, endpoints' veths). Not routes through a gateway (the
/// kernel checks the gateway against the table's other routes), nor links
/// that others of the run stand on.
fn independent(action: &KernelOp) -> bool {
    match action {
        KernelOp::VethAdd { .. }
        | KernelOp::NeighInstall(_)
        | KernelOp::NeighUninstall(_)
        | KernelOp::FdbInstall(_)
        | KernelOp::FdbUninstall(_)
        | KernelOp::ProxyNeighInstall(_)
        | KernelOp::ProxyNeighUninstall(_)
        | KernelOp::RouteUninstall(_) => true,
        KernelOp::RouteInstall(r) => !matches!(r.target, crate::observed::RouteTarget::Via { .. }),
        _ => false,
    }
}

fn worker(
    netns: Option<PathBuf>,
    ready: oneshot::Sender<Result<(), DataplaneError>>,
    mut requests: mpsc::UnboundedReceiver<Request>,
    nft_changes: tokio::sync::watch::Sender<u64>,
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
        let nft = NftTables::default();
        if let Err(e) = super::tamper::watch_tables(nft.stale_flag(), nft_changes) {
            tracing::warn!(error = %e, "cannot watch nftables notifications; changes behind Tessera's back wait for the periodic resync");
        }
        let _ = ready.send(Ok(()));
        let kernel = Kernel { handle, netfilter: Netfilter::default(), nft, conntrack: Conntrack::start() };
        while let Some(req) = requests.recv().await {
            match req {
                Request::Observe(reply) => {
                    let _ = reply.send(kernel.observe().await);
                }
                Request::ObserveNft(reply) => {
                    let _ = reply.send(kernel.nft.observe().await);
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
                Request::LinkExists(name, reply) => {
                    let found = links::links(&kernel.handle).await.map(|all| all.iter().any(|l| l.name == name));
                    let _ = reply.send(found);
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

/// Whether the calling thread's network namespace has a link named `name`.
pub async fn link_exists(name: &str) -> Result<bool, DataplaneError> {
    let dp = LinuxDataplane::new().await?;
    let name = name.to_string();
    dp.call(|tx| Request::LinkExists(name, tx)).await?
}

/// The kernel of one namespace, driven through one netlink handle.
struct Kernel {
    handle: Handle,
    /// The netfilter netlink socket of policy element changes and zone
    /// flushes, opened on first use and again after a failure.
    netfilter: Netfilter,
    /// The nftables state carried forward, and the policy map cache.
    nft: NftTables,
    /// How conntrack zones are flushed.
    conntrack: Conntrack,
}

impl Kernel {
    async fn observe(&self) -> Result<Observed, DataplaneError> {
        observe::observe(&self.handle, &self.nft).await
    }

    /// Applies the plan: the nftables block (one transaction) runs beside
    /// the netlink actions, which run in the plan's order (but for the
    /// configurations of containers' interfaces, which come after the
    /// others, up to [`CONFIGURE_BESIDE`] at a time: each runs on a thread
    /// in its container's namespace; and a run of consecutive actions of one
    /// [`independent`] kind, whose requests are in flight together, up to
    /// [`IN_FLIGHT`]); conntrack zone flushes come after both. Nothing in the
    /// kernel orders the two: set and map elements name interfaces by name,
    /// whether they exist yet or not, and the bridge table drops what a port
    /// sends until the port's elements are in (so a port up before them is
    /// closed, not open).
    async fn apply(&self, actions: &[KernelOp]) -> ApplyReport {
        let block: Vec<&KernelOp> = actions.iter().filter(|a| a.is_nft()).collect();
        let started = std::time::Instant::now();
        let ms = |since: std::time::Instant| since.elapsed().as_secs_f64() * 1e3;
        let nft = async {
            if block.is_empty() {
                (Vec::new(), 0.0)
            } else {
                let done = self.nft.apply(&self.netfilter, &block).await;
                (done, ms(started))
            }
        };
        let netlink = async {
            let mut out = Vec::new();
            // Configurations of interfaces in their containers, each in a
            // namespace of its own (none routed by a table of its own,
            // which ties it to the others of its namespace): after the
            // other netlink actions, side by side.
            let (beside, in_order): (Vec<&KernelOp>, Vec<&KernelOp>) = actions
                .iter()
                .filter(|a| !a.is_nft() && !a.is_conntrack())
                .partition(|a| matches!(a, KernelOp::ContainerIfaceConfigure { own_table: None, .. }));
            let mut rest = &in_order[..];
            while let Some(first) = rest.first() {
                let run = match independent(first) {
                    true => rest.iter().take_while(|a| a.op() == first.op() && independent(a)).count(),
                    false => 1,
                };
                let (now, later) = rest.split_at(run);
                rest = later;
                let done = futures::stream::iter(now.iter().map(|a| async move { (*a, self.apply_tolerant(a).await) }));
                out.extend(done.buffered(IN_FLIGHT).collect::<Vec<_>>().await);
            }
            let in_order_ms = ms(started);
            let configured = futures::stream::iter(beside.into_iter().map(|action| async move {
                let span = tracing::debug_span!("action", op = action.op());
                (action, self.apply_one(action).instrument(span).await)
            }))
            .buffer_unordered(CONFIGURE_BESIDE);
            out.extend(configured.collect::<Vec<_>>().await);
            (out, in_order_ms, ms(started))
        };
        let ((nft_results, nft_ms), (netlink_results, in_order_ms, netlink_ms)) = futures::join!(nft, netlink);
        tracing::debug!(nft_ms, in_order_ms, netlink_ms, "applied (ms from the start of the apply)");
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

    /// [`Kernel::apply_one`], where removing what is already gone succeeds.
    async fn apply_tolerant(&self, action: &KernelOp) -> Result<(), DataplaneError> {
        let span = tracing::debug_span!("action", op = action.op());
        let result = self.apply_one(action).instrument(span).await;
        match result {
            Err(e) if action.is_removal() && matches!(e.errno(), Some(ENOENT | ESRCH | ENODEV | EADDRNOTAVAIL)) => Ok(()),
            other => other,
        }
    }

    /// Carries out one action that is not part of the nftables transaction,
    /// in the file of its kind of object.
    async fn apply_one(&self, action: &KernelOp) -> Result<(), DataplaneError> {
        let h = &self.handle;
        match action {
            KernelOp::SysctlWrite { .. }
            | KernelOp::BridgePortIsolate { .. }
            | KernelOp::LinkAddBridge { .. }
            | KernelOp::LinkAddVxlan { .. }
            | KernelOp::VethAdd { .. }
            | KernelOp::LinkSetUp { .. }
            | KernelOp::LinkSetAlias { .. }
            | KernelOp::LinkSetMtu { .. }
            | KernelOp::LinkDelete { .. }
            | KernelOp::AddressInstall(_)
            | KernelOp::AddressUninstall(_)
            | KernelOp::ContainerIfaceConfigure { .. } => links::apply(h, action).await,
            KernelOp::Announce { dev, addresses } => super::announce::announce(h, dev, addresses).await,
            KernelOp::RuleInstall(_) | KernelOp::RuleUninstall(_) | KernelOp::RouteInstall(_) | KernelOp::RouteUninstall(_) => {
                routes::apply(h, action).await
            }
            KernelOp::NeighInstall(_)
            | KernelOp::NeighUninstall(_)
            | KernelOp::FdbInstall(_)
            | KernelOp::FdbUninstall(_)
            | KernelOp::ProxyNeighInstall(_)
            | KernelOp::ProxyNeighUninstall(_) => neigh::apply(h, action).await,
            KernelOp::ConntrackZoneFlush { .. } | KernelOp::ConntrackAddressFlush { .. } => {
                self.conntrack.apply(&self.netfilter, action).await
            }
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
        }
    }

    async fn link_with_address(&self, ip: IpAddr) -> Result<Option<(String, u32)>, DataplaneError> {
        links::link_with_address(&self.handle, ip).await
    }

    async fn interfaces(&self) -> Result<Vec<VifEntry>, DataplaneError> {
        vif::interfaces(&self.handle).await
    }
}

fn record(report: &mut ApplyReport, action: &KernelOp, result: Result<(), DataplaneError>) {
    match result {
        Ok(()) => report.applied.push(action.clone()),
        Err(error) => report.failures.push(KernelOpFailure { action: action.clone(), error }),
    }
}
