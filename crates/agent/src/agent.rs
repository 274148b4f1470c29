//! The agent itself: the host's identity, its controller client, its data
//! plane and the progress of reconciling; attach and detach write intent at
//! the controller, then wait with a deadline for the data plane and report
//! the last error.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::Duration;

use tessera_api::agent::{AgentStatus, AttachRequest, DetachRequest, VifEntry};
use tessera_api::ControllerClient;
use tessera_dataplane::handover::link_hand_over;
use tessera_dataplane::Dataplane;
use tessera_model::watch::Snapshot;
use tessera_model::{limits, Endpoint, EndpointCreate, ErrorCode, Owner};
use tokio::sync::{watch, Notify};
use uuid::Uuid;

use crate::counters;
use crate::desired::{self, HostIdentity, IntentCompiler};
use crate::error::{controller_error, ApiError};

/// How long attach and detach wait for the data plane.
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(20);

/// What the last reconcile achieved.
#[derive(Debug, Clone, Default)]
pub(crate) struct Progress {
    pub(crate) reconciles: u64,
    pub(crate) revision: u64,
    pub(crate) networks: usize,
    /// Local endpoints of the last desired state that are programmed.
    pub(crate) programmed: BTreeSet<Uuid>,
    /// Local endpoints of the last desired state (programmed or not).
    pub(crate) present: BTreeSet<Uuid>,
    /// Local endpoints of the intent that cannot be programmed, and why.
    pub(crate) skipped: BTreeMap<Uuid, String>,
    pub(crate) last_error: Option<String>,
    /// The last reconcile's intent held every endpoint the host needs (its
    /// mirror's scope covered the networks it programs).
    pub(crate) complete: bool,
}

pub struct Agent {
    pub(crate) me: HostIdentity,
    pub(crate) client: ControllerClient,
    pub(crate) dp: Arc<dyn Dataplane>,
    /// Plans a change of intent against what the kernel is known to hold.
    pub(crate) reconciler: tessera_dataplane::Reconciler,
    pub(crate) snapshot: watch::Receiver<Option<Arc<Snapshot>>>,
    pub(crate) mirror: watch::Receiver<tessera_api::mirror::MirrorState>,
    /// The endpoints this host needs mirrored, as the last reconcile found.
    pub(crate) scope: watch::Sender<tessera_api::scope::Scope>,
    pub(crate) progress: watch::Sender<Progress>,
    pub(crate) kick: Notify,
    pub(crate) intents: std::sync::Mutex<IntentCompiler>,
    pub(crate) counters: Arc<counters::Counters>,
    pub(crate) dhcp: Arc<crate::dhcp::DhcpCounters>,
    pub(crate) follower: crate::follow::Follower,
    pub(crate) metrics: crate::metrics::AgentMetrics,
    /// The eBPF fast path, when it runs (`--dataplane`).
    pub(crate) fastpath: Option<Arc<tessera_dataplane::linux::fastpath::FastPath>>,
    /// Without it: why.
    pub(crate) kernel_only: tessera_api::agent::Dataplane,
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
            .map_err(|e| ApiError::new(ErrorCode::InvalidArgument, format!("{}: {e}", req.netns), Some("netns")))?
            .ino();
        Ok(format!("ns{ino}-{ifname}"))
    }

    /// Creates the endpoint at the controller and waits until this host's
    /// data plane has programmed it.
    pub async fn attach(&self, req: AttachRequest) -> Result<Endpoint, ApiError> {
        limits::check_netns("netns", &req.netns)?;
        if !std::path::Path::new(&req.netns).exists() {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                format!("network namespace {} does not exist", req.netns),
                Some("netns"),
            ));
        }
        if let Some(why) = crate::host_ns::is_host_namespace(std::path::Path::new(&req.netns)) {
            return Err(ApiError::new(ErrorCode::InvalidArgument, format!("{} {why}", req.netns), Some("netns")));
        }
        let default_ifname = req.service.as_ref().map_or(desired::DEFAULT_IFNAME, |s| s.role.ifname());
        let ifname = req.ifname.clone().unwrap_or_else(|| default_ifname.into());
        limits::check_ifname("ifname", &ifname)?;
        if let Some(h) = &req.handover {
            limits::check_ifname("handover", h)?;
        }
        for (i, p) in req.ports.iter().enumerate() {
            tessera_api::ports::check_free(p)
                .map_err(|why| ApiError::new(ErrorCode::AlreadyExists, why, Some(&format!("ports[{i}]"))))?;
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
                dhcp: req.dhcp,
                own_table: req.own_table || req.service.as_ref().is_some_and(|s| s.role.own_table()),
                service: req.service.clone(),
            },
        };
        let mut ep = self.client.create_endpoint(&create).await.map_err(controller_error)?;
        if !req.ports.is_empty() && ep.ports != req.ports {
            match self.client.set_endpoint_ports(ep.id, &req.ports).await {
                Ok(with_ports) => ep = with_ports,
                Err(e) => {
                    // Nothing half made: the endpoint goes with its refusal.
                    if let Err(undo) = self.client.delete_endpoint(ep.id).await {
                        tracing::warn!(endpoint = %ep.name, error = %undo, "cannot undo the endpoint whose ports were refused");
                    }
                    return Err(controller_error(e));
                }
            }
        }
        tracing::info!(endpoint = %ep.name, network = %req.network, netns = %req.netns, "attaching");
        // A first endpoint in a network: the mirror asks for the network's
        // endpoints now, not after the reconcile that finds it needs them.
        self.scope.send_if_modified(|s| match s {
            tessera_api::scope::Scope::Networks(ids) => ids.insert(ep.network),
            tessera_api::scope::Scope::Everything => false,
        });
        // A new endpoint reaches the mirror through the watch, and that change
        // reconciles; a kick now would only reconcile the old intent first.
        // Kick when the mirror already holds it (a retried attach) unprogrammed.
        let mirrored = self.snapshot.borrow().as_ref().is_some_and(|s| s.endpoints.iter().any(|e| e.id == ep.id));
        if mirrored && !self.progress.borrow().programmed.contains(&ep.id) {
            self.kick.notify_one();
        }
        // Programmed, and with the network's other endpoints (and those of
        // the networks it reaches) known, so it reaches them at once; a
        // host whose controller went away meanwhile answers with what it has.
        let mirror = self.mirror.clone();
        self.wait(
            |p| p.programmed.contains(&ep.id) && (p.complete || !mirror.borrow().connected),
            &format!("endpoint {} to be programmed", ep.name),
            |p| p.skipped.get(&ep.id).map(|why| format!("endpoint {} cannot be programmed: {why}", ep.name)),
        )
        .await?;
        if let Some(new_name) = &req.handover {
            let ifname = ep.owner.ifname.as_deref().unwrap_or(desired::DEFAULT_IFNAME);
            link_hand_over(std::path::Path::new(&req.netns), ifname, new_name)
                .await
                .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string(), Some("handover")))?;
            tracing::info!(endpoint = %ep.name, ifname = %new_name, "interface handed over to the host namespace");
        }
        Ok(ep)
    }

    /// Deletes the matching endpoints of this host and waits until the data
    /// plane has removed them. Detaching what is not attached succeeds.
    pub async fn detach(&self, req: DetachRequest) -> Result<Vec<Endpoint>, ApiError> {
        if req.netns.is_none() && req.container_id.is_none() {
            return Err(ApiError::new(ErrorCode::InvalidArgument, "name a netns or a container", Some("netns")));
        }
        let mine = self.client.endpoints(None, Some(&self.me.name)).await.map_err(controller_error)?;
        let network = match &req.network {
            Some(n) => Some(self.client.network(n).await.map_err(controller_error)?.id),
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
    pub(crate) async fn remove(&self, victims: Vec<Endpoint>) -> Result<Vec<Endpoint>, ApiError> {
        for e in &victims {
            self.client.delete_endpoint(e.id).await.map_err(controller_error)?;
            tracing::info!(endpoint = %e.name, "detaching");
        }
        let ids: BTreeSet<Uuid> = victims.iter().map(|e| e.id).collect();
        self.kick.notify_one();
        self.wait(|p| p.present.is_disjoint(&ids), "the data plane to remove the endpoints", |_| None).await?;
        Ok(victims)
    }

    /// Waits until `done`, or until `refused` says why it never will be, or
    /// [`PROGRAM_TIMEOUT`] (then with the data plane's last error).
    async fn wait(
        &self,
        done: impl Fn(&Progress) -> bool,
        what: &str,
        refused: impl Fn(&Progress) -> Option<String>,
    ) -> Result<(), ApiError> {
        let mut rx = self.progress.subscribe();
        let deadline = tokio::time::Instant::now() + PROGRAM_TIMEOUT;
        loop {
            if done(&rx.borrow_and_update()) {
                return Ok(());
            }
            if let Some(why) = refused(&rx.borrow()) {
                return Err(ApiError::new(ErrorCode::InvalidArgument, why, None));
            }
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                let last = rx.borrow().last_error.clone().unwrap_or_else(|| "no error reported".into());
                return Err(ApiError::new(
                    ErrorCode::Timeout,
                    format!("timed out after {PROGRAM_TIMEOUT:?} waiting for {what}; last data plane error: {last}"),
                    None,
                ));
            }
        }
    }

    pub async fn vifs(&self) -> Result<Vec<VifEntry>, ApiError> {
        let mut vifs = self.dp.interfaces().await.map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string(), None))?;
        // An endpoint's port shows what the DHCP server did for its MAC.
        if let Some(desired) = self.counters.reconciled_states().borrow().clone() {
            let macs: std::collections::HashMap<String, tessera_model::MacAddr> = desired
                .networks
                .iter()
                .flat_map(|n| n.local.iter().map(|e| (tessera_model::names::host_veth_name(e.id), e.mac)))
                .collect();
            for v in &mut vifs {
                if let Some(mac) = macs.get(&v.name) {
                    v.dhcp = Some(self.dhcp.of(*mac).unwrap_or_default());
                }
            }
        }
        // An endpoint's port says which path its established flows take,
        // and counts what the fast path delivered through it.
        let delivered = self.fastpath.as_ref().map(|fp| fp.delivered()).unwrap_or_default();
        for v in vifs.iter_mut().filter(|v| v.kind == tessera_model::vif::VifKind::Endpoint) {
            if let Some((packets, bytes)) = delivered.get(&v.name) {
                v.tx_packets += packets;
                v.tx_bytes += bytes;
            }
            v.path = Some(match &self.fastpath {
                Some(fp) => match fp.port_path(&v.name, v.vni) {
                    tessera_dataplane::linux::fastpath::PortPath::Fast => "ebpf".to_string(),
                    tessera_dataplane::linux::fastpath::PortPath::Kernel(why) => format!("kernel: {why}"),
                },
                None => "kernel: the agent runs the kernel path only".to_string(),
            });
        }
        // A service instance's port says whose it is.
        if let Some(snap) = self.snapshot.borrow().clone() {
            for e in snap.endpoints.iter().filter(|e| e.host == self.me.name) {
                let Some(sp) = &e.owner.service else { continue };
                let name = tessera_model::names::host_veth_name(e.id);
                let service = snap
                    .services
                    .iter()
                    .find(|s| s.id == sp.service)
                    .map_or(sp.service.to_string(), |s| s.fq_name.name().to_string());
                if let Some(v) = vifs.iter_mut().find(|v| v.name == name) {
                    v.service = Some(format!("{service}/{} {}", sp.instance, sp.role));
                }
            }
        }
        Ok(vifs)
    }

    pub fn status(&self) -> AgentStatus {
        let p = self.progress.borrow().clone();
        let mut local_networks = Vec::new();
        if let Some(snap) = self.snapshot.borrow().as_ref() {
            // This host's endpoints by network: (in the intent, programmed).
            let mut counts: std::collections::BTreeMap<Uuid, (usize, usize)> = Default::default();
            for e in snap.endpoints.iter().filter(|e| e.host == self.me.name) {
                let c = counts.entry(e.network).or_default();
                c.0 += 1;
                c.1 += usize::from(p.present.contains(&e.id));
            }
            for n in snap.networks.iter() {
                if let Some(&(endpoints, programmed)) = counts.get(&n.id) {
                    let name = n.fq_name.to_string();
                    local_networks.push(tessera_api::agent::LocalNetwork { name, vni: n.vni.get(), endpoints, programmed });
                }
            }
        }
        local_networks.sort_by(|a, b| a.name.cmp(&b.name));
        AgentStatus {
            host: self.me.name.clone(),
            underlay_ip: self.me.underlay_ip,
            controller: self.client.url().to_string(),
            controller_connected: self.mirror.borrow().connected,
            holding: self.mirror.borrow().holding.clone(),
            revision: p.revision,
            networks: p.networks,
            local_endpoints: p.present.len(),
            reconciles: p.reconciles,
            last_error: p.last_error,
            local_networks,
            dataplane: Some(match &self.fastpath {
                Some(fp) => {
                    use tessera_dataplane::linux::fastpath::Decapsulation;
                    let underlay = match fp.decapsulation() {
                        Decapsulation::Program(device) => {
                            tessera_api::agent::Decapsulation { device: device.clone(), stack: None }
                        }
                        Decapsulation::Stack(device, why) => {
                            tessera_api::agent::Decapsulation { device: device.clone(), stack: Some(why.clone()) }
                        }
                    };
                    tessera_api::agent::Dataplane::Ebpf { flows: fp.flows(), underlay: Some(underlay) }
                }
                None => self.kernel_only.clone(),
            }),
        }
    }
}
