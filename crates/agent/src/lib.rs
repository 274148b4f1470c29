//! Tessera's host agent.
//!
//! One per host. It registers the host, mirrors the controller's intent
//! ([`tessera_api::mirror`]), turns it into this host's desired data plane
//! ([`desired`], pure) and reconciles the kernel to it ([`reconcile`])
//! through a [`tessera_dataplane::Dataplane`]. It serves a local API on a
//! unix socket ([`api`], the types are [`tessera_api::agent`]'s) for the CLI
//! and the runtime plugins. When the controller is away it keeps the last
//! known intent (also saved on disk) and the kernel as it is; when it
//! returns, the agent resyncs.
#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod chains;
pub mod counters;
pub mod desired;
pub mod dhcp;
pub mod dhcp6_answer;
pub mod dhcp_answer;
pub mod drops;
pub mod egress;
pub mod error;
pub mod flows;
pub mod follow;
pub mod health;
pub mod host_ns;
pub mod inventory;
pub mod metrics;
pub mod metrics_http;
pub mod reconcile;
pub mod runner;
pub mod verdicts;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tessera_api::{mirror, ControllerClient};
use tessera_dataplane::Dataplane;
use tessera_model::GatewayRegister;
use tokio::sync::{watch, Notify};

pub use crate::agent::Agent;
use crate::agent::Progress;
use crate::desired::{HostIdentity, IntentCompiler};
pub use tessera_api::agent::DEFAULT_SOCKET;

const HEARTBEAT_EVERY: Duration = Duration::from_secs(30);
/// How often a gateway's agent renews its host's lease (the controller ends
/// one not renewed for 1.5 s).
const LEASE_EVERY: Duration = Duration::from_millis(500);
/// Attempts of one controller call while the controller is unreachable
/// (about 6 s in all): every call the agent makes is idempotent.
const CONTROLLER_ATTEMPTS: u32 = 6;

/// How the agent was started.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub host: String,
    pub underlay_ip: IpAddr,
    pub controller: String,
    /// How the agent proves it is this host to the controller.
    pub credentials: tessera_api::auth::Credentials,
    pub socket: PathBuf,
    /// Besides root, members of this group may use the local API.
    pub socket_group: Option<u32>,
    pub state_dir: PathBuf,
    /// The external networks this host is a gateway for (name or UUID) and
    /// the interface where each one's addresses live.
    pub gateways: Vec<(String, String)>,
    /// The host's Docker Engine socket: containers attached through Docker
    /// are followed across restarts. Not followed when `None`.
    pub docker_socket: Option<PathBuf>,
    /// Where to serve Prometheus metrics (`/metrics`, plain HTTP); not served when `None`.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Record flows (conntrack) and report them to the controller.
    pub flows: bool,
    /// The data plane asked for; `None`: the eBPF fast path where it can
    /// run, the kernel path otherwise.
    pub dataplane: Option<DataplaneKind>,
}

/// Which data plane carries the traffic of established flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataplaneKind {
    /// Bridges, routing tables, nftables and VXLAN devices only.
    Kernel,
    /// The kernel path, and the TC-eBPF fast path for the packets of flows
    /// it allowed.
    Ebpf,
}

/// The least time between two syncs of the fast path's maps.
const FASTPATH_SYNC_PAUSE: Duration = Duration::from_millis(250);

/// Keeps the fast path's maps and ports those of the last desired state
/// reconciled, off the reconcile's path (an attach does not wait for it:
/// until then, its packets take the kernel path).
async fn fastpath_sync(
    fp: Arc<tessera_dataplane::linux::fastpath::FastPath>,
    mut states: watch::Receiver<Option<Arc<tessera_dataplane::DesiredHost>>>,
) {
    loop {
        // A burst of changes (attaches) is one sync.
        tokio::time::sleep(FASTPATH_SYNC_PAUSE).await;
        let desired = states.borrow_and_update().clone();
        if let Some(d) = desired {
            match tessera_dataplane::fastpath::tables(&d) {
                Ok(t) => {
                    if let Err(e) = fp.sync(&t).await {
                        tracing::warn!(error = %e, "the fast path's maps are not up to date");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "no fast path for this host"),
            }
        }
        if states.changed().await.is_err() {
            return;
        }
    }
}

/// Starts the eBPF fast path unless the kernel path is asked for; when it
/// cannot run, the kernel path alone, with the reason logged (an error
/// when `--dataplane ebpf` asked for it).
async fn start_fastpath(
    choice: Option<DataplaneKind>,
    me: &HostIdentity,
) -> anyhow::Result<Result<Arc<tessera_dataplane::linux::fastpath::FastPath>, tessera_api::agent::Dataplane>> {
    use tessera_api::agent::Dataplane as Why;
    if choice == Some(DataplaneKind::Kernel) {
        tracing::info!("data plane: kernel path (--dataplane kernel)");
        return Ok(Err(Why::Kernel { reason: "--dataplane kernel".into(), chosen: true }));
    }
    let started = match me.underlay_ip {
        IpAddr::V4(underlay) => {
            let mtu = tessera_dataplane::desired::overlay_mtu(me.underlay_ip, me.underlay_mtu);
            tessera_dataplane::linux::fastpath::FastPath::start(underlay, &me.underlay_ifname, mtu)
                .await
                .map_err(|e| e.to_string())
        }
        IpAddr::V6(_) => Err("the underlay is IPv6; the fast path tunnels over IPv4 only".to_string()),
    };
    match started {
        Ok(fp) => {
            tracing::info!("data plane: eBPF fast path for established flows, kernel path for the rest");
            Ok(Ok(fp))
        }
        Err(e) if choice == Some(DataplaneKind::Ebpf) => anyhow::bail!("--dataplane ebpf: {e}"),
        Err(e) => {
            tracing::warn!(reason = %e, "data plane: kernel path only; the eBPF fast path cannot run here");
            Ok(Err(Why::Kernel { reason: e, chosen: false }))
        }
    }
}

/// Finds the interface that holds `ip` and its MTU, in this namespace.
async fn underlay_link(ip: IpAddr) -> anyhow::Result<(String, u32)> {
    tessera_dataplane::linux::link_with_address(ip)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no interface of this host has the underlay address {ip}"))
}

/// Runs the agent until `shutdown` resolves. The data plane stays as it is
/// when the agent stops, so running traffic is not interrupted.
pub async fn run(config: AgentConfig, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let (underlay_ifname, underlay_mtu) = underlay_link(config.underlay_ip).await?;
    let me = HostIdentity { name: config.host.clone(), underlay_ip: config.underlay_ip, underlay_ifname, underlay_mtu };
    std::fs::create_dir_all(&config.state_dir)?;
    let client = ControllerClient::with_credentials(&config.controller, &config.credentials)?.with_attempts(CONTROLLER_ATTEMPTS);
    let uplinks: Vec<String> = config.gateways.iter().map(|(_, i)| i.clone()).collect();
    for ifname in &uplinks {
        if !tessera_dataplane::linux::link_exists(ifname).await? {
            anyhow::bail!("--gateway: interface {ifname} does not exist on this host");
        }
    }
    let gateways: Vec<GatewayRegister> =
        config.gateways.iter().map(|(n, i)| GatewayRegister { network: n.clone(), interface: i.clone() }).collect();
    // A registration the controller refuses (a gateway of a network that is
    // not external) stops the agent; an unreachable controller does not.
    match client.clone().with_attempts(1).register_host(&me.name, me.underlay_ip, &gateways).await {
        Err(e @ tessera_api::ClientError::Refused { .. }) => {
            anyhow::bail!("the controller refused to register host {}: {e}", me.name)
        }
        Err(e) => tracing::warn!(error = %e, "cannot register the host yet; retrying"),
        Ok(_) => {}
    }
    let dp: Arc<dyn Dataplane> = Arc::new(tessera_dataplane::linux::LinuxDataplane::new().await?);
    let (fastpath, kernel_only) = match start_fastpath(config.dataplane, &me).await? {
        Ok(fp) => (Some(fp), tessera_api::agent::Dataplane::Ebpf { flows: 0, underlay: None }),
        Err(why) => (None, why),
    };

    let saved = mirror::load_saved(&config.state_dir).map(Arc::new);
    if saved.is_some() {
        tracing::info!("starting from the intent saved by the previous run");
    }
    // The mirror first asks for what the saved intent needs (a fresh host:
    // its own endpoints); each reconcile then says what the host needs.
    let scope = saved.as_deref().map_or_else(tessera_api::scope::Scope::own, |s| desired::scope(s, &me.name));
    let (scope_tx, scope_rx) = watch::channel(scope);
    let (snap_tx, snap_rx) = watch::channel(saved);
    let (conn_tx, conn_rx) = watch::channel(mirror::MirrorState::default());
    let agent = Arc::new(Agent {
        me: me.clone(),
        client: client.clone(),
        dp,
        reconciler: tessera_dataplane::Reconciler::new(reconcile::KNOWN_FOR),
        snapshot: snap_rx,
        mirror: conn_rx,
        scope: scope_tx,
        progress: watch::channel(Progress::default()).0,
        kick: Notify::new(),
        intents: std::sync::Mutex::new(IntentCompiler::new()),
        counters: Arc::new(counters::Counters::new()),
        dhcp: Arc::new(dhcp::DhcpCounters::default()),
        follower: follow::Follower::new(config.docker_socket.clone()),
        metrics: metrics::AgentMetrics::new(),
        fastpath,
        kernel_only,
    });
    if let Some(addr) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("--metrics-listen {addr}: {e}"))?;
        tokio::spawn(metrics_http::serve(agent.clone(), listener));
    }
    tokio::spawn(agent.counters.clone().run(agent.dp.clone(), client.clone(), me.name.clone()));
    if let Some(fp) = agent.fastpath.clone() {
        tokio::spawn(fastpath_sync(fp, agent.counters.reconciled_states()));
    }
    tokio::spawn(dhcp::run(agent.counters.reconciled_states(), agent.dhcp.clone()));
    tokio::spawn(health::run(agent.snapshot.clone(), agent.dp.clone(), client.clone(), me.name.clone()));
    tokio::spawn(dhcp::run6(agent.counters.reconciled_states(), agent.dp.clone(), agent.dhcp.clone()));

    // Register, then keep the registration fresh.
    let reg = client.clone();
    let (name, ip) = (me.name.clone(), me.underlay_ip);
    tokio::spawn(async move {
        loop {
            match reg.register_host(&name, ip, &gateways).await {
                Ok(_) => tokio::time::sleep(HEARTBEAT_EVERY).await,
                Err(e) => {
                    tracing::debug!(error = %e, "host registration failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    if !uplinks.is_empty() {
        let leaser = client.clone().with_attempts(1);
        let name = me.name.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(LEASE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = leaser.renew_lease(&name).await {
                    tracing::debug!(error = %e, "lease renewal failed");
                }
            }
        });
    }
    if config.flows {
        tokio::spawn(flows::run(agent.clone(), client.clone()));
    }
    tokio::spawn(mirror::run(client, config.state_dir.clone(), snap_tx, conn_tx, scope_rx));
    tokio::spawn(agent.clone().reconcile_loop());
    if let Some(socket) = config.docker_socket.clone() {
        tokio::spawn(runner::run(agent.clone(), socket));
    }

    let listener = tessera_api::local::LocalListener::bind(&config.socket, config.socket_group)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.socket.display()))?;
    tracing::info!(host = %me.name, underlay = %me.underlay_ip, ifname = %me.underlay_ifname, socket = %config.socket.display(), "agent serving");
    axum::serve(listener, api::router(agent)).with_graceful_shutdown(shutdown).await?;
    let _ = std::fs::remove_file(&config.socket);
    tracing::info!("agent stopped; the data plane stays as it is");
    Ok(())
}
