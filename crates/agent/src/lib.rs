//! Tessera's host agent.
//!
//! One per host. It registers the host, mirrors the controller's intent
//! ([`mirror`]), turns it into this host's desired data plane ([`desired`],
//! pure) and reconciles the kernel to it through a
//! [`tessera_dataplane::Dataplane`]. It serves a local API on a unix socket
//! ([`api`]) for the CLI and the runtime plugins. When the controller is
//! away it keeps the last known intent (also saved on disk) and the kernel as
//! it is; when it returns, the agent resyncs.
#![forbid(unsafe_code)]

pub mod api;
pub mod controller;
pub mod counters;
pub mod desired;
pub mod inventory;
pub mod mirror;
pub mod saved;
pub mod uds;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use tessera_dataplane::Dataplane;
use tessera_model::watch::Snapshot;
use tessera_model::{Endpoint, EndpointCreate, EndpointStatus, Owner};
use tokio::sync::{watch, Notify};
use uuid::Uuid;

use crate::api::{AgentStatus, ApiError, AttachRequest, DetachRequest};
use crate::controller::{ControllerClient, ControllerError};
use crate::desired::{HostIdentity, IntentCompiler};

/// The default path of the agent's local API socket.
pub const DEFAULT_SOCKET: &str = "/run/tessera/agent.sock";
/// The kernel is compared with the intent at least this often.
const RESYNC_EVERY: Duration = Duration::from_secs(10);
const HEARTBEAT_EVERY: Duration = Duration::from_secs(30);
/// How long attach and detach wait for the data plane.
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(20);

/// How the agent was started.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub host: String,
    pub underlay_ip: IpAddr,
    pub controller: String,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
}

/// What the last reconcile achieved.
#[derive(Debug, Clone, Default)]
struct Progress {
    reconciles: u64,
    revision: u64,
    networks: usize,
    /// Local endpoints of the last desired state that are programmed.
    programmed: BTreeSet<Uuid>,
    /// Local endpoints of the last desired state (programmed or not).
    present: BTreeSet<Uuid>,
    last_error: Option<String>,
}

pub struct Agent {
    me: HostIdentity,
    client: ControllerClient,
    dp: Arc<dyn Dataplane>,
    snapshot: watch::Receiver<Option<Arc<Snapshot>>>,
    connected: watch::Receiver<bool>,
    progress: watch::Sender<Progress>,
    kick: Notify,
    intents: std::sync::Mutex<IntentCompiler>,
    counters: Arc<counters::Counters>,
}

fn controller_error(e: ControllerError) -> ApiError {
    match e {
        ControllerError::Refused { status, body, .. } => {
            ApiError { status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY), body }
        }
        other => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", other.to_string(), None),
    }
}

impl Agent {
    /// The endpoint name an attach uses when the request gives none: stable
    /// for the same container (or namespace) and interface, so retries are
    /// idempotent.
    fn attach_name(req: &AttachRequest, ifname: &str) -> Result<String, ApiError> {
        if let Some(n) = &req.name {
            return Ok(n.clone());
        }
        if let Some(c) = &req.container_id {
            let short: String = c.chars().filter(|c| c.is_ascii_alphanumeric()).take(12).collect();
            return Ok(format!("{short}-{ifname}"));
        }
        let ino = std::fs::metadata(&req.netns)
            .map_err(|e| {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", format!("{}: {e}", req.netns), Some("netns"))
            })?
            .ino();
        Ok(format!("ns{ino}-{ifname}"))
    }

    /// Creates the endpoint at the controller and waits until this host's
    /// data plane has programmed it.
    pub async fn attach(&self, req: AttachRequest) -> Result<Endpoint, ApiError> {
        if !std::path::Path::new(&req.netns).exists() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                format!("network namespace {} does not exist", req.netns),
                Some("netns"),
            ));
        }
        let ifname = req.ifname.clone().unwrap_or_else(|| desired::DEFAULT_IFNAME.into());
        if ifname.is_empty() || ifname.len() > 15 || ifname.contains(['/', ' ', ':']) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                format!("{ifname:?} is not an interface name"),
                Some("ifname"),
            ));
        }
        let name = Self::attach_name(&req, &ifname)?;
        let create = EndpointCreate {
            network: req.network.clone(),
            name: Some(name),
            host: self.me.name.clone(),
            mac: req.mac.clone(),
            ips: req.ips.clone(),
            owner: Owner {
                container_id: req.container_id.clone(),
                netns: Some(req.netns.clone()),
                docker_endpoint_id: req.docker_endpoint_id.clone(),
                ifname: Some(ifname),
                reservation: req.reservation.clone(),
            },
        };
        let ep = self.client.create_endpoint(&create).await.map_err(controller_error)?;
        tracing::info!(endpoint = %ep.name, network = %req.network, netns = %req.netns, "attaching");
        // A new endpoint reaches the mirror through the watch, and that change
        // reconciles; a kick now would only reconcile the old intent first.
        // Kick when the mirror already holds it (a retried attach) unprogrammed.
        let mirrored = self.snapshot.borrow().as_ref().is_some_and(|s| s.endpoints.iter().any(|e| e.id == ep.id));
        if mirrored && !self.progress.borrow().programmed.contains(&ep.id) {
            self.kick.notify_one();
        }
        self.wait(|p| p.programmed.contains(&ep.id), &format!("endpoint {} to be programmed", ep.name)).await?;
        Ok(ep)
    }

    /// Deletes the matching endpoints of this host and waits until the data
    /// plane has removed them. Detaching what is not attached succeeds.
    pub async fn detach(&self, req: DetachRequest) -> Result<Vec<Endpoint>, ApiError> {
        if req.netns.is_none() && req.container_id.is_none() {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", "name a netns or a container", Some("netns")));
        }
        let mine = self.client.list_endpoints(&self.me.name).await.map_err(controller_error)?;
        let network = match &req.network {
            Some(n) => Some(self.client.get_network(n).await.map_err(controller_error)?.id),
            None => None,
        };
        let victims: Vec<Endpoint> = mine
            .into_iter()
            .filter(|e| {
                let owner_matches = req.netns.as_ref().is_some_and(|n| e.owner.netns.as_ref() == Some(n))
                    || req.container_id.as_ref().is_some_and(|c| e.owner.container_id.as_ref() == Some(c));
                owner_matches
                    && network.is_none_or(|n| e.network == n)
                    && req.ifname.as_ref().is_none_or(|i| e.owner.ifname.as_deref().unwrap_or(desired::DEFAULT_IFNAME) == i)
            })
            .collect();
        self.remove(victims).await
    }

    /// Deletes `victims` at the controller and waits until this host's data
    /// plane no longer holds them; returns them.
    async fn remove(&self, victims: Vec<Endpoint>) -> Result<Vec<Endpoint>, ApiError> {
        for e in &victims {
            self.client.delete_endpoint(e.id).await.map_err(controller_error)?;
            tracing::info!(endpoint = %e.name, "detaching");
        }
        let ids: BTreeSet<Uuid> = victims.iter().map(|e| e.id).collect();
        self.kick.notify_one();
        self.wait(|p| p.present.is_disjoint(&ids), "the data plane to remove the endpoints").await?;
        Ok(victims)
    }

    async fn wait(&self, done: impl Fn(&Progress) -> bool, what: &str) -> Result<(), ApiError> {
        let mut rx = self.progress.subscribe();
        let deadline = tokio::time::Instant::now() + PROGRAM_TIMEOUT;
        loop {
            if done(&rx.borrow_and_update()) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                let last = rx.borrow().last_error.clone().unwrap_or_else(|| "no error reported".into());
                return Err(ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "timeout",
                    format!("timed out after {PROGRAM_TIMEOUT:?} waiting for {what}; last data plane error: {last}"),
                    None,
                ));
            }
        }
    }

    pub async fn vifs(&self) -> Result<Vec<tessera_dataplane::VifEntry>, ApiError> {
        self.dp.interfaces().await.map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string(), None))
    }

    pub fn status(&self) -> AgentStatus {
        let p = self.progress.borrow().clone();
        AgentStatus {
            host: self.me.name.clone(),
            underlay_ip: self.me.underlay_ip,
            controller: self.client.url().to_string(),
            controller_connected: *self.connected.borrow(),
            revision: p.revision,
            networks: p.networks,
            local_endpoints: p.present.len(),
            reconciles: p.reconciles,
            last_error: p.last_error,
        }
    }

    /// Reconciles whenever the intent changes, when kicked, and periodically.
    async fn reconcile_loop(self: Arc<Self>) {
        let mut rx = self.snapshot.clone();
        loop {
            let snap = rx.borrow_and_update().clone();
            if let Some(snap) = snap {
                self.reconcile_once(&snap).await;
            }
            tokio::select! {
                _ = rx.changed() => {}
                _ = self.kick.notified() => {}
                _ = tokio::time::sleep(RESYNC_EVERY) => {}
            }
        }
    }

    async fn reconcile_once(&self, snap: &Snapshot) {
        let span = tracing::info_span!("reconcile", revision = snap.revision);
        let _enter = span.enter();
        let started = std::time::Instant::now();
        let (intent, leak_warnings) = self.intents.lock().unwrap_or_else(|p| p.into_inner()).compile(snap, &self.me);
        tracing::debug!(elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "desired state computed");
        for w in leak_warnings.iter().flatten() {
            tracing::warn!(importer = %w.importer, exporter = %w.exporter, "{w}");
        }
        let (desired, skipped) = (Arc::new(intent.desired), intent.skipped);
        for (id, reason) in &skipped.0 {
            tracing::warn!(endpoint = %id, reason, "endpoint cannot be programmed");
        }
        let present: BTreeSet<Uuid> = desired.networks.iter().flat_map(|n| n.local.iter().map(|l| l.id)).collect();
        let started = std::time::Instant::now();
        let result = tessera_dataplane::reconcile(self.dp.as_ref(), &desired).await;
        tracing::debug!(elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "reconciled");
        let (programmed, last_error) = match &result {
            Ok(report) if report.failures.is_empty() => (present.clone(), None),
            Ok(report) => {
                let failed: BTreeSet<Uuid> = report.failed_endpoints().collect();
                let msg = report.failures.iter().map(|f| f.to_string()).collect::<Vec<_>>().join("; ");
                tracing::warn!(failures = report.failures.len(), error = %msg, "reconcile incomplete");
                (present.difference(&failed).copied().collect(), Some(msg))
            }
            Err(e) => {
                tracing::warn!(error = %e, "reconcile failed");
                (BTreeSet::new(), Some(e.to_string()))
            }
        };
        drop(_enter);
        self.counters.reconciled(desired.clone());
        self.report_status(snap, &programmed, &skipped);
        self.progress.send_modify(|p| {
            p.reconciles += 1;
            p.revision = snap.revision;
            p.networks = desired.networks.len();
            p.programmed = programmed;
            p.present = present;
            p.last_error = last_error;
        });
    }

    /// Tells the controller which local endpoints are active or failed (best effort, in the background).
    fn report_status(&self, snap: &Snapshot, programmed: &BTreeSet<Uuid>, skipped: &desired::Skipped) {
        let failed: BTreeSet<Uuid> = skipped.0.iter().map(|(id, _)| *id).collect();
        for e in snap.endpoints.iter().filter(|e| e.host == self.me.name) {
            let want = if programmed.contains(&e.id) {
                EndpointStatus::Active
            } else if failed.contains(&e.id) {
                EndpointStatus::Failed
            } else {
                continue;
            };
            if e.status != want {
                let client = self.client.clone();
                let id = e.id;
                tokio::spawn(async move {
                    if let Err(e) = client.set_endpoint_status(id, want).await {
                        tracing::debug!(endpoint = %id, error = %e, "cannot report endpoint status");
                    }
                });
            }
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
    let client = ControllerClient::new(&config.controller);
    let dp: Arc<dyn Dataplane> = Arc::new(tessera_dataplane::linux::LinuxDataplane::new().await?);

    let saved = mirror::load_saved(&config.state_dir).map(Arc::new);
    if saved.is_some() {
        tracing::info!("starting from the intent saved by the previous run");
    }
    let (snap_tx, snap_rx) = watch::channel(saved);
    let (conn_tx, conn_rx) = watch::channel(false);
    let agent = Arc::new(Agent {
        me: me.clone(),
        client: client.clone(),
        dp,
        snapshot: snap_rx,
        connected: conn_rx,
        progress: watch::channel(Progress::default()).0,
        kick: Notify::new(),
        intents: std::sync::Mutex::new(IntentCompiler::new()),
        counters: Arc::new(counters::Counters::new()),
    });
    tokio::spawn(agent.counters.clone().run(agent.dp.clone(), client.clone(), me.name.clone()));

    // Register, then keep the registration fresh.
    let reg = client.clone();
    let (name, ip) = (me.name.clone(), me.underlay_ip);
    tokio::spawn(async move {
        loop {
            match reg.register_host(&name, ip).await {
                Ok(_) => tokio::time::sleep(HEARTBEAT_EVERY).await,
                Err(e) => {
                    tracing::debug!(error = %e, "host registration failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    tokio::spawn(mirror::run(client, config.state_dir.clone(), snap_tx, conn_tx));
    tokio::spawn(agent.clone().reconcile_loop());

    if let Some(dir) = config.socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&config.socket);
    let listener = tokio::net::UnixListener::bind(&config.socket)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.socket.display()))?;
    tracing::info!(host = %me.name, underlay = %me.underlay_ip, ifname = %me.underlay_ifname, socket = %config.socket.display(), "agent serving");
    axum::serve(listener, api::router(agent)).with_graceful_shutdown(shutdown).await?;
    let _ = std::fs::remove_file(&config.socket);
    tracing::info!("agent stopped; the data plane stays as it is");
    Ok(())
}
