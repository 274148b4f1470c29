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
//!   the pair is flushed (`conntrack -D -w ZONE`), so running flows end.
//!
//! Modules: [`desired`], [`observed`], [`action`], [`mod@plan`], [`policy`]
//! and [`nft`] are pure; [`linux`] talks to the kernel (netlink, `nft`,
//! `conntrack`, `/proc/sys`); [`fake`] is the recording stand-in for tests.
#![deny(unsafe_code)]

pub mod conntrack;
pub mod desired;
pub mod fake;
pub mod linux;
pub mod nfnetlink;
pub mod nft;
pub mod observed;
pub mod op;
pub mod plan;
pub mod policy;
pub mod vif;

use std::io;
use std::path::PathBuf;

use async_trait::async_trait;
use tracing::Instrument;

pub use desired::{
    bridge_name, host_veth_name, table_id, vtep_mac, vxlan_name, DesiredError, DesiredHost, DesiredNetwork, DesiredSubnet,
    LocalEndpoint, PairPolicy, PairWatch, PairZone, RemoteEndpoint,
};
pub use fake::FakeDataplane;
pub use linux::LinuxDataplane;
pub use observed::Observed;
pub use op::KernelOp;
pub use plan::plan;
pub use policy::RuleCounter;
/// The policy compiler whose programs [`DesiredHost::policies`] holds.
pub use tessera_policy;
pub use vif::{VifEntry, VifKind};

/// Why an observation or an action failed.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("invalid desired state: {0}")]
    Invalid(#[from] DesiredError),
    /// A netlink request, a `/proc/sys` write or another system call failed.
    #[error("{op} {object}: {source}")]
    Kernel {
        /// The operation, such as `LinkAddBridge` or `observe links`.
        op: &'static str,
        /// The object it was about, such as `tb100`.
        object: String,
        #[source]
        source: io::Error,
    },
    /// `nft` failed, or its output could not be read.
    #[error("nft {op}: {message}")]
    Nft { op: &'static str, message: String },
    /// `conntrack` failed.
    #[error("conntrack -D -w {zone}: {message}")]
    Conntrack { zone: u16, message: String },
    /// A network namespace could not be opened or entered.
    #[error("network namespace {}: {source}", path.display())]
    Netns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The thread that owns the data plane's sockets has stopped.
    #[error("the data plane worker thread has stopped")]
    WorkerGone,
}

impl DataplaneError {
    /// The OS error number, when the kernel gave one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            DataplaneError::Kernel { source, .. } | DataplaneError::Netns { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// One action that failed, and why.
#[derive(Debug)]
pub struct KernelOpFailure {
    pub action: KernelOp,
    pub error: DataplaneError,
}

impl std::fmt::Display for KernelOpFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.action, self.error)
    }
}

/// What an [`Dataplane::apply`] did.
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// The actions that succeeded, in order.
    pub applied: Vec<KernelOp>,
    /// The actions that failed, in order; the others were still carried out.
    pub failures: Vec<KernelOpFailure>,
}

impl ApplyReport {
    /// True when every action succeeded (also when there were none).
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty()
    }
    /// True when there was nothing to do.
    pub fn is_noop(&self) -> bool {
        self.applied.is_empty() && self.failures.is_empty()
    }
    /// The local endpoints whose container side could not be configured
    /// (which includes those whose veth could not be made).
    pub fn failed_endpoints(&self) -> impl Iterator<Item = uuid::Uuid> + '_ {
        self.failures.iter().filter_map(|f| match &f.action {
            KernelOp::ContainerIfaceConfigure { endpoint, .. } => Some(*endpoint),
            _ => None,
        })
    }
}

/// A data plane: the only code that touches the kernel of a host.
#[async_trait]
pub trait Dataplane: Send + Sync {
    /// Reads the Tessera-owned part of the kernel state.
    async fn observe(&self) -> Result<Observed, DataplaneError>;

    /// Carries out `actions` in order. A failed action is reported in
    /// [`ApplyReport::failures`] and does not stop the actions after it;
    /// removing what is already gone succeeds. All nftables actions run as
    /// one transaction, at the place of the first of them. `Err` only when
    /// nothing could be attempted.
    async fn apply(&self, actions: &[KernelOp]) -> Result<ApplyReport, DataplaneError>;

    /// The interface table (`tessera vif list`): every link of the data
    /// plane's namespace with its Tessera role and counters.
    async fn interfaces(&self) -> Result<Vec<VifEntry>, DataplaneError>;

    /// Hit counters of the policy rules, attributed to rules as `desired`
    /// (the state last reconciled) compiles them; one entry per rule of the
    /// programs of `desired`, zeros included. See [`RuleCounter`] for what a
    /// hit is. Counters start at zero when an element is installed (a rule
    /// whose boxes move to another map starts again).
    async fn policy_counters(&self, desired: &DesiredHost) -> Result<Vec<RuleCounter>, DataplaneError>;
}

/// Validates `desired`, observes, plans and applies. Returns the apply report
/// (which lists any failed action); `Err` when the desired state is invalid or
/// the kernel could not be observed.
pub async fn reconcile(dp: &dyn Dataplane, desired: &DesiredHost) -> Result<ApplyReport, DataplaneError> {
    let span = tracing::info_span!("reconcile", underlay = %desired.underlay_ip, networks = desired.networks.len());
    async move {
        let t0 = std::time::Instant::now();
        desired.validate()?;
        let observed = dp.observe().await?;
        let t1 = std::time::Instant::now();
        let actions = plan(desired, &observed);
        // The data plane updates its own copy of what it observed as it
        // applies: it must not have to copy what this one still shares.
        drop(observed);
        let t2 = std::time::Instant::now();
        let ms = |a: std::time::Instant, b: std::time::Instant| (b - a).as_secs_f64() * 1e3;
        if actions.is_empty() {
            tracing::debug!(observe_ms = ms(t0, t1), plan_ms = ms(t1, t2), "data plane converged");
            return Ok(ApplyReport::default());
        }
        if tracing::enabled!(tracing::Level::DEBUG) {
            let mut ops: std::collections::BTreeMap<&str, usize> = Default::default();
            for a in &actions {
                *ops.entry(a.op()).or_default() += 1;
            }
            tracing::debug!(?ops, "applying");
        }
        let report = dp.apply(&actions).await?;
        tracing::info!(
            planned = actions.len(),
            failed = report.failures.len(),
            observe_ms = ms(t0, t1),
            plan_ms = ms(t1, t2),
            apply_ms = ms(t2, std::time::Instant::now()),
            "data plane plan applied"
        );
        Ok(report)
    }
    .instrument(span)
    .await
}
