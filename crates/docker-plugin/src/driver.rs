//! The plugin's operations: Docker's calls in; the controller, the host's
//! agent and Docker's Engine API out. The decisions are in the pure modules
//! ([`crate::spec`], [`crate::pool`], [`crate::names`], [`crate::plan`]);
//! this module sequences them and keeps what must be remembered between
//! Docker's calls.
//!
//! Life of a container's network, as Docker 20.10 drives it:
//!
//! 1. `RequestPool` / `RequestAddress` (gateway) / `CreateNetwork`: the
//!    Tessera network is made (or, for a network another host made, found)
//!    and the Docker network ID bound to it.
//! 2. `RequestAddress` per family: an address reserved at the controller by
//!    a fresh owner token.
//! 3. `CreateEndpoint`: the endpoint's reservations are gathered under one
//!    token; the MAC is chosen.
//! 4. `Join`: the agent attaches the sandbox (`SandboxKey`) as the next free
//!    `ethN`, adopting the reserved addresses; Docker moves no interface.
//! 5. `Leave`: the agent detaches; the addresses go back to the reservation.
//! 6. `DeleteEndpoint`, `ReleaseAddress`: the reservation is released.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use tessera_api::agent::{AttachRequest, DetachRequest};
use tessera_model::{Endpoint, ErrorCode, MacAddr, Network, ReservationCreate, Uuid};
use tokio::sync::watch;

use crate::docker::{Docker, DockerError};
use crate::names::{endpoint_mac, next_ifname, ReservationToken, IFNAME_PREFIX};
use crate::netns;
use crate::pool::{self, PoolId, PoolRegistry};
use crate::protocol::{
    CreateEndpointRequest, CreateEndpointResponse, CreateNetworkRequest, EndpointInterface, EngineNetworkCreate, InterfaceName,
    JoinRequest, JoinResponse, PLUGIN_NAME,
};
use crate::reconcile::{self, DockerNetwork, InFlight};
use crate::spec::{self, DockerNetworkSpec, DockerSubnet, SpecError};
use tessera_api::{AgentClient, AgentError, ClientError, ControllerClient};

/// How long a call waits for a network whose Tessera side is being made.
const BIND_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the authz hook's record of a `docker network create` is kept.
const PENDING_CREATE_TTL: Duration = Duration::from_secs(60);
/// Endpoints joined this recently are in flight for the reconciliation.
const RECENT: Duration = Duration::from_secs(120);
/// The prefix of the temporary host-namespace name of an interface Docker moves into a container.
const SRC_PREFIX: &str = "tdk";

/// How the plugin was started.
#[derive(Debug, Clone)]
pub struct Config {
    /// This host's name in the fabric (its agent's `--host`).
    pub host: String,
    /// The controller's URL.
    pub controller: String,
    /// The host agent's socket.
    pub agent_socket: PathBuf,
    /// dockerd's Engine API: `unix:///var/run/docker.sock`.
    pub docker_host: String,
    /// Where the plugin listens: `/run/docker/plugins/tessera.sock`.
    pub socket: PathBuf,
    /// Where the plugin keeps its mirror of the controller (and the staging
    /// namespaces of interfaces on their way into containers).
    pub state_dir: PathBuf,
    /// How long a released address stays reserved for the next container of
    /// this host asking for one in its subnet (a restarted container gets its
    /// address back); zero releases at once.
    pub address_hold: Duration,
}

/// Why a call failed; its text is what `docker` prints.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Controller(#[from] ClientError),
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error("the Tessera agent at {socket}: {message}")]
    Agent { socket: String, message: String },
    #[error("{0}")]
    NotFound(String),
}

type Result<T, E = DriverError> = std::result::Result<T, E>;

/// What a Docker network ID stands for.
#[derive(Debug, Clone)]
enum Bind {
    /// The Tessera network is being made (Docker has not yet said the name).
    Pending,
    Ready(Network),
    /// It could not be made; every call on the network answers this.
    Failed(String),
}

struct NetState {
    tx: watch::Sender<Bind>,
    since: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// `CreateEndpoint` answered; nothing made yet.
    Created,
    Joining,
    Joined,
    /// `Join` failed part way: a Tessera endpoint may exist.
    Failed,
    Left,
}

#[derive(Debug, Clone)]
struct EndpointState {
    ips: Vec<IpNet>,
    mac: MacAddr,
    token: Option<String>,
    /// The container's namespace (Docker's `SandboxKey`).
    sandbox: Option<String>,
    /// The plugin's namespace the agent built the interface in.
    staging: Option<PathBuf>,
    ifname: Option<String>,
    phase: Phase,
    since: Instant,
}

/// A `docker network create` seen by the authz hook: what Docker will not
/// tell the driver (the name and the labels).
#[derive(Debug, Clone)]
pub(crate) struct PendingCreate {
    pub(crate) name: String,
    pub(crate) labels: BTreeMap<String, String>,
    options: BTreeMap<String, String>,
    pools: BTreeSet<IpNet>,
    at: Instant,
}

/// An address Docker released, held for a restarting container.
#[derive(Debug, Clone)]
struct Parked {
    network: Uuid,
    address: IpAddr,
    token: String,
    at: Instant,
}

#[derive(Default)]
pub(crate) struct State {
    /// Per pool, the most recently released addresses last.
    parked: HashMap<IpNet, Vec<Parked>>,
    pools: PoolRegistry,
    networks: HashMap<String, NetState>,
    creates: Vec<PendingCreate>,
    /// The owner token of each address this plugin reserved.
    reserved: HashMap<(Uuid, IpAddr), String>,
    endpoints: HashMap<String, EndpointState>,
}

/// The plugin: one per host, next to its dockerd and agent.
pub struct Plugin {
    pub cfg: Config,
    pub(crate) ctl: ControllerClient,
    agent: AgentClient,
    pub(crate) docker: Docker,
    state: Mutex<State>,
    sandboxes: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Wakes the synchronisation loop.
    pub(crate) kick: tokio::sync::Notify,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn subnets_of(req: &CreateNetworkRequest, pools: &PoolRegistry) -> Vec<DockerSubnet> {
    req.pools()
        .map(|d| DockerSubnet {
            pool: d.pool,
            gateway: d.gateway.map(|g| g.addr()),
            ip_range: pools.get(d.pool).and_then(|e| e.ip_range),
        })
        .collect()
}

/// `domain:project:name` of the network a create request makes, for lookups.
fn reference_of(create: &tessera_model::NetworkCreate) -> String {
    match &create.project {
        Some(p) => format!("{p}:{}", create.name),
        None => create.name.clone(),
    }
}

impl Plugin {
    pub fn new(cfg: Config) -> Self {
        let ctl = ControllerClient::new(&cfg.controller);
        let docker = Docker::new(&cfg.docker_host);
        Plugin {
            agent: AgentClient::new(&cfg.agent_socket),
            cfg,
            ctl,
            docker,
            state: Mutex::default(),
            sandboxes: Mutex::default(),
            kick: tokio::sync::Notify::new(),
        }
    }

    pub(crate) fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ------------------------------------------------------------ bindings

    /// Binds a Docker network ID to its Tessera network and its pools.
    pub(crate) fn bind(&self, docker_id: &str, net: Network, subnets: &[DockerSubnet]) {
        let mut st = self.state();
        for s in subnets {
            st.pools.bind(s.pool, s.ip_range, docker_id, Some(spec::docker_name(&net)));
        }
        match st.networks.get(docker_id) {
            Some(ns) => {
                ns.tx.send_replace(Bind::Ready(net));
            }
            None => {
                st.networks.insert(docker_id.into(), NetState { tx: watch::channel(Bind::Ready(net)).0, since: Instant::now() });
            }
        }
    }

    fn mark(&self, docker_id: &str, bind: Bind) {
        let mut st = self.state();
        match st.networks.get(docker_id) {
            Some(ns) => {
                ns.tx.send_replace(bind);
            }
            None => {
                st.networks.insert(docker_id.into(), NetState { tx: watch::channel(bind).0, since: Instant::now() });
            }
        }
    }

    /// The Tessera network of a Docker network: from memory, waiting while it
    /// is being made, else found again through Docker's view (after a restart).
    async fn network_of(&self, docker_id: &str) -> Result<Network> {
        let rx = self.state().networks.get(docker_id).map(|ns| ns.tx.subscribe());
        let mut rx = match rx {
            Some(rx) => rx,
            None => {
                self.bind_from_docker(docker_id).await?;
                self.state()
                    .networks
                    .get(docker_id)
                    .map(|ns| ns.tx.subscribe())
                    .ok_or_else(|| DriverError::NotFound(format!("Docker network {docker_id} has no Tessera network")))?
            }
        };
        let bind = tokio::time::timeout(BIND_TIMEOUT, rx.wait_for(|b| !matches!(b, Bind::Pending)))
            .await
            .map_err(|_| DriverError::NotFound(format!("the Tessera network of Docker network {docker_id} is still being made")))?
            .map_err(|_| DriverError::NotFound(format!("Docker network {docker_id} was removed")))?
            .clone();
        match bind {
            Bind::Ready(n) => Ok(n),
            Bind::Failed(reason) => Err(DriverError::Invalid(reason)),
            Bind::Pending => unreachable!("waited for a settled binding"),
        }
    }

    /// Finds the Tessera network of one Docker network through Docker's view.
    async fn bind_from_docker(&self, docker_id: &str) -> Result<()> {
        let d = self
            .docker
            .network(docker_id)
            .await?
            .ok_or_else(|| DriverError::NotFound(format!("Docker knows no network {docker_id}")))?;
        let networks = self.ctl.networks().await?;
        let net = reconcile::tessera_network_of(&d, &networks)
            .ok_or_else(|| DriverError::NotFound(format!("Docker network {} has no Tessera network", d.name)))?;
        self.bind(&d.id, net.clone(), &d.subnets);
        Ok(())
    }

    /// Whether a Docker network is bound to that Tessera network (not to an
    /// older one of the same name, nor pending).
    fn is_bound_to(&self, docker_id: &str, network: Uuid) -> bool {
        let st = self.state();
        let bind = st.networks.get(docker_id).map(|ns| ns.tx.borrow().clone());
        matches!(bind, Some(Bind::Ready(n)) if n.id == network)
    }

    /// Binds every Docker network of the tessera driver (after a restart).
    pub(crate) async fn bind_all(&self, docker: &[DockerNetwork], networks: &[Network]) {
        for d in docker {
            if let Some(n) = reconcile::tessera_network_of(d, networks) {
                if !self.is_bound_to(&d.id, n.id) {
                    self.bind(&d.id, n.clone(), &d.subnets);
                }
            }
        }
    }

    /// What the reconciliation must leave alone.
    pub(crate) fn in_flight(&self) -> InFlight {
        let st = self.state();
        let mut f = InFlight::default();
        for (id, ns) in &st.networks {
            match &*ns.tx.borrow() {
                Bind::Pending | Bind::Failed(_) => {
                    f.docker_networks.insert(id.clone());
                }
                // Bound moments ago: this dockerd has it, though its list may not show it yet.
                Bind::Ready(n) if ns.since.elapsed() < RECENT => {
                    f.tessera_networks.insert(n.id);
                }
                Bind::Ready(_) => {}
            }
        }
        for (eid, e) in &st.endpoints {
            if e.phase == Phase::Joining || e.since.elapsed() < RECENT {
                f.endpoints.insert(eid.clone());
            }
        }
        f
    }

    /// Forgets a Docker network that is gone.
    pub(crate) fn forget_network(&self, docker_id: &str) {
        let mut st = self.state();
        st.networks.remove(docker_id);
        st.pools.unbind_network(docker_id);
    }

    // ------------------------------------------------------------ networks

    /// Creates the Tessera network, or finds the one another host made.
    async fn create_or_adopt(&self, create: &tessera_model::NetworkCreate, subnets: &[DockerSubnet]) -> Result<Network> {
        match self.ctl.create_network(create).await {
            Ok((n, _)) => Ok(n),
            Err(e) if e.code() == Some(ErrorCode::AlreadyExists) => {
                let existing = self.ctl.find_network(&reference_of(create)).await?.ok_or(e)?;
                if !spec::is_docker_network(&existing) {
                    return Err(DriverError::Invalid(format!(
                        "Tessera network {} exists and was not made through Docker; use -o {}={} to use it",
                        existing.fq_name,
                        spec::OPT_NETWORK,
                        existing.fq_name
                    )));
                }
                spec::subnets_match(&existing, subnets).map_err(DriverError::Invalid)?;
                tracing::info!(network = %existing.fq_name, "the network exists already (made through another host's Docker)");
                Ok(existing)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// `NetworkDriver.CreateNetwork`.
    pub async fn create_network(self: &Arc<Self>, req: CreateNetworkRequest) -> Result<()> {
        let nid = req.network_id.clone();
        let driver_options = req.driver_options();
        let opts = spec::driver_options(&driver_options)?;
        let subnets = subnets_of(&req, &self.state().pools);
        let pools: BTreeSet<IpNet> = subnets.iter().map(|s| s.pool).collect();
        let seen = self.take_pending_create(&pools, &driver_options);

        if let Some(reference) = &opts.network {
            let net = self.ctl.find_network(reference).await?.ok_or_else(|| {
                DriverError::NotFound(format!("option {}: there is no Tessera network {reference}", spec::OPT_NETWORK))
            })?;
            spec::subnets_match(&net, &subnets).map_err(DriverError::Invalid)?;
            tracing::info!(docker_network = %nid, network = %net.fq_name, "Docker network mapped onto a Tessera network");
            self.bind(&nid, net, &subnets);
            return Ok(());
        }
        if let Some(p) = seen {
            let spec = DockerNetworkSpec { name: p.name, labels: p.labels, options: driver_options, subnets: subnets.clone() };
            let create = spec::network_create(&spec)?;
            let net = self.create_or_adopt(&create, &subnets).await?;
            tracing::info!(docker_network = %nid, network = %net.fq_name, vni = %net.vni, "network created");
            self.bind(&nid, net, &subnets);
            self.kick.notify_one();
            return Ok(());
        }
        // Without the authz hook Docker tells neither the name nor the labels
        // now: check what can be checked, and finish once Docker shows the network.
        let probe = DockerNetworkSpec { name: "pending".into(), labels: BTreeMap::new(), options: driver_options, subnets };
        spec::network_create(&probe)?;
        self.mark(&nid, Bind::Pending);
        for s in &probe.subnets {
            self.state().pools.bind(s.pool, s.ip_range, &nid, None);
        }
        let me = self.clone();
        tokio::spawn(async move { me.finish_create(nid).await });
        Ok(())
    }

    /// Makes the Tessera network of a Docker network once Docker shows its
    /// name and labels (the path without the authz hook).
    async fn finish_create(self: Arc<Self>, nid: String) {
        let deadline = Instant::now() + BIND_TIMEOUT;
        let mut delay = Duration::from_millis(10);
        let d = loop {
            if !self.state().networks.contains_key(&nid) {
                return; // Docker rolled the creation back
            }
            match self.docker.network(&nid).await {
                Ok(Some(d)) => break d,
                Ok(None) | Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(200));
                }
                Ok(None) => return self.mark(&nid, Bind::Failed(format!("Docker never showed network {nid}"))),
                Err(e) => return self.mark(&nid, Bind::Failed(e.to_string())),
            }
        };
        let spec = DockerNetworkSpec { name: d.name.clone(), labels: d.labels, options: d.options, subnets: d.subnets.clone() };
        let result = match spec::network_create(&spec) {
            Ok(create) => self.create_or_adopt(&create, &d.subnets).await,
            Err(e) => Err(e.into()),
        };
        match result {
            Ok(net) => {
                tracing::info!(docker_network = %d.name, network = %net.fq_name, vni = %net.vni, "network created");
                self.bind(&nid, net, &d.subnets);
                self.kick.notify_one();
            }
            Err(e) => {
                let reason = format!("Docker network {} cannot be used: {e}; remove it and create it again", d.name);
                tracing::error!(docker_network = %d.name, error = %e, "network not created in Tessera");
                self.mark(&nid, Bind::Failed(reason));
            }
        }
    }

    /// `NetworkDriver.DeleteNetwork`: deletes the Tessera network (fabric
    /// wide) when it was made through Docker; a network mapped with
    /// `-o tessera.network` is only unmapped. A network with endpoints on any
    /// host is kept in Tessera (the authz hook refuses such a removal before
    /// Docker makes it; without the hook, the synchronisation brings the
    /// Docker network back).
    pub async fn delete_network(&self, docker_id: &str) -> Result<()> {
        let net = match self.network_of(docker_id).await {
            Ok(n) => Some(n),
            Err(DriverError::NotFound(_)) | Err(DriverError::Invalid(_)) => None,
            Err(e) => return Err(e),
        };
        // Docker removes its network whatever the driver answers (only its
        // own checks can refuse); the authz hook is where Tessera can refuse.
        self.forget_network(docker_id);
        self.kick.notify_one();
        if let Some(net) = net.filter(spec::is_docker_network) {
            if let Err(e) = self.ctl.delete_network(net.id).await {
                if e.code() == Some(ErrorCode::InUse) {
                    return Err(DriverError::Invalid(format!(
                        "network {} is in use elsewhere in the fabric and stays in Tessera: {e}",
                        net.fq_name
                    )));
                }
                return Err(e.into());
            }
            tracing::info!(network = %net.fq_name, "network deleted");
        }
        Ok(())
    }

    // ---------------------------------------------------------------- IPAM

    /// `IpamDriver.RequestPool`.
    pub fn request_pool(&self, pool: Option<IpNet>, sub_pool: Option<IpNet>, v6: bool) -> Result<(PoolId, IpNet)> {
        let family = if v6 { "IPv6" } else { "IPv4" };
        let pool = pool.ok_or_else(|| {
            DriverError::Invalid(format!("the {PLUGIN_NAME} IPAM driver needs an {family} --subnet (it never picks one)"))
        })?;
        let id = self.state().pools.request(pool, sub_pool, v6).map_err(DriverError::Invalid)?;
        Ok((id, pool))
    }

    /// `IpamDriver.ReleasePool`.
    pub fn release_pool(&self, id: &str) -> Result<()> {
        if let Ok(id) = id.parse::<PoolId>() {
            let mut st = self.state();
            if st.pools.get(id.0).is_some_and(|e| e.network.is_none()) {
                st.pools.release(id);
            }
        }
        Ok(())
    }

    /// The Docker network using a pool, found again through Docker after a restart.
    async fn network_of_pool(&self, pool: IpNet) -> Result<String> {
        if let Some(n) = self.state().pools.network_of(pool) {
            return Ok(n.to_string());
        }
        let docker = self.docker.tessera_networks().await?;
        let networks = self.ctl.networks().await?;
        self.bind_all(&docker, &networks).await;
        self.state()
            .pools
            .network_of(pool)
            .map(str::to_string)
            .ok_or_else(|| DriverError::NotFound(format!("no Docker network of this host uses pool {pool}")))
    }

    fn new_token(&self) -> String {
        ReservationToken { host: self.cfg.host.clone(), created_ms: now_ms(), nonce: rand::random() }.encode()
    }

    /// `IpamDriver.RequestAddress`: the gateway (computed; Tessera's IPAM
    /// never hands it out) or an endpoint's address, reserved at the
    /// controller: the chosen one, else the one this host released last in
    /// the subnet (so that `docker restart` keeps a container's address),
    /// else the lowest free one.
    pub async fn request_address(&self, pool_id: &str, address: Option<IpAddr>, gateway: bool) -> Result<IpNet> {
        let id: PoolId = pool_id.parse().map_err(DriverError::Invalid)?;
        if gateway {
            return pool::gateway(id.0, address).map_err(DriverError::Invalid);
        }
        let nid = self.network_of_pool(id.0).await?;
        let net = self.network_of(&nid).await?;
        if address.is_none() {
            while let Some(p) = self.unpark(id.0, net.id) {
                let token = self.new_token();
                let take = ReservationCreate {
                    owner: token.clone(),
                    subnet: None,
                    address: Some(p.address.to_string()),
                    from: Some(p.token.clone()),
                };
                match self.ctl.reserve(net.id, &take).await {
                    Ok(r) => {
                        self.state().reserved.insert((net.id, r.address), token);
                        return Ok(r.address_with_prefix());
                    }
                    Err(e) => tracing::debug!(address = %p.address, error = %e, "a held address is gone"),
                }
            }
        }
        let token = self.new_token();
        // A chosen address this host holds (its container is restarting) is taken over.
        let from = address.and_then(|a| self.unpark_address(id.0, net.id, a)).map(|p| p.token);
        let req = ReservationCreate {
            owner: token.clone(),
            subnet: Some(id.0.to_string()),
            address: address.map(|a| a.to_string()),
            from,
        };
        let r = self.ctl.reserve(net.id, &req).await?;
        self.state().reserved.insert((net.id, r.address), token);
        Ok(r.address_with_prefix())
    }

    /// The most recently held address of a pool that is still within its hold.
    fn unpark(&self, pool: IpNet, network: Uuid) -> Option<Parked> {
        let hold = self.cfg.address_hold;
        let mut st = self.state();
        let stack = st.parked.get_mut(&pool)?;
        let i = stack.iter().rposition(|p| p.network == network && p.at.elapsed() < hold)?;
        Some(stack.remove(i))
    }

    /// A held address, taken out of the hold (whatever its age: it is still reserved).
    fn unpark_address(&self, pool: IpNet, network: Uuid, address: IpAddr) -> Option<Parked> {
        let mut st = self.state();
        let stack = st.parked.get_mut(&pool)?;
        let i = stack.iter().position(|p| p.network == network && p.address == address)?;
        Some(stack.remove(i))
    }

    /// When the next held address is due for release.
    pub(crate) fn next_release_in(&self) -> Option<Duration> {
        let hold = self.cfg.address_hold;
        self.state().parked.values().flatten().map(|p| hold.saturating_sub(p.at.elapsed())).min()
    }

    /// Releases held addresses whose hold is over. Best effort: what fails
    /// stays for the next round (or for the reconciliation of orphans).
    pub(crate) async fn release_expired(&self) {
        let hold = self.cfg.address_hold;
        let expired: Vec<Parked> = {
            let mut st = self.state();
            let mut out = Vec::new();
            for stack in st.parked.values_mut() {
                let (old, keep): (Vec<Parked>, Vec<Parked>) = stack.drain(..).partition(|p| p.at.elapsed() >= hold);
                *stack = keep;
                out.extend(old);
            }
            st.parked.retain(|_, v| !v.is_empty());
            out
        };
        for p in expired {
            if let Err(e) = self.ctl.release(p.network, p.address, Some(&p.token)).await {
                if e.code() != Some(ErrorCode::InUse) {
                    tracing::warn!(address = %p.address, error = %e, "cannot release a held address");
                }
            }
        }
    }

    /// `IpamDriver.ReleaseAddress`: the address is held for this host's next
    /// container in the subnet for [`Config::address_hold`], then released;
    /// the gateway and addresses of networks that are gone need nothing.
    pub async fn release_address(&self, pool_id: &str, address: IpAddr) -> Result<()> {
        let Ok(id) = pool_id.parse::<PoolId>() else { return Ok(()) };
        let nid = match self.network_of_pool(id.0).await {
            Ok(n) => n,
            Err(DriverError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let net = match self.network_of(&nid).await {
            Ok(n) => n,
            Err(DriverError::NotFound(_)) | Err(DriverError::Invalid(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        if net.subnets.iter().any(|s| s.gateway == Some(address)) {
            return Ok(());
        }
        let held = self.state().reserved.remove(&(net.id, address));
        if !self.cfg.address_hold.is_zero() {
            let current = match held {
                Some(t) => Some(t),
                None => self.token_of(net.id, address).await?,
            };
            if let Some(from) = current {
                let token = self.new_token();
                let park = ReservationCreate {
                    owner: token.clone(),
                    subnet: None,
                    address: Some(address.to_string()),
                    from: Some(from),
                };
                if self.ctl.reserve(net.id, &park).await.is_ok() {
                    let parked = Parked { network: net.id, address, token, at: Instant::now() };
                    self.state().parked.entry(id.0).or_default().push(parked);
                    self.kick.notify_one(); // to release it when its hold is over
                    return Ok(());
                }
            }
        }
        match self.ctl.release(net.id, address, None).await {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some(ErrorCode::InUse) => {
                // An endpoint still holds it (its Leave failed); the reconciliation deletes it.
                tracing::warn!(network = %net.fq_name, %address, error = %e, "address still held by an endpoint");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The owner token of a reserved address: remembered, else asked for.
    async fn token_of(&self, network: Uuid, address: IpAddr) -> Result<Option<String>> {
        if let Some(t) = self.state().reserved.get(&(network, address)) {
            return Ok(Some(t.clone()));
        }
        Ok(self.ctl.reservations(network).await?.into_iter().find(|r| r.address == address).map(|r| r.owner))
    }

    // ----------------------------------------------------------- endpoints

    /// `NetworkDriver.CreateEndpoint`: gathers the endpoint's reserved
    /// addresses under one owner and picks its MAC.
    pub async fn create_endpoint(&self, req: CreateEndpointRequest) -> Result<CreateEndpointResponse> {
        let net = self.network_of(&req.network_id).await?;
        let iface = req.interface.clone().unwrap_or_default();
        let ips: Vec<IpNet> = [iface.address, iface.address_ipv6].into_iter().flatten().collect();
        let mut token: Option<String> = None;
        for ip in &ips {
            let Some(t) = self.token_of(net.id, ip.addr()).await? else { continue };
            match &token {
                None => token = Some(t),
                Some(first) if *first != t => {
                    let take = ReservationCreate {
                        owner: first.clone(),
                        subnet: None,
                        address: Some(ip.addr().to_string()),
                        from: Some(t),
                    };
                    self.ctl.reserve(net.id, &take).await?;
                    self.state().reserved.insert((net.id, ip.addr()), first.clone());
                }
                Some(_) => {}
            }
        }
        let mac = iface.mac_address.unwrap_or_else(|| endpoint_mac(&req.endpoint_id));
        self.state().endpoints.insert(
            req.endpoint_id.clone(),
            EndpointState {
                ips,
                mac,
                token,
                sandbox: None,
                staging: None,
                ifname: None,
                phase: Phase::Created,
                since: Instant::now(),
            },
        );
        let interface = iface.mac_address.is_none().then_some(EndpointInterface { mac_address: Some(mac), ..Default::default() });
        Ok(CreateEndpointResponse { interface })
    }

    fn sandbox_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut s = self.sandboxes.lock().unwrap_or_else(|p| p.into_inner());
        s.entry(key.to_string()).or_default().clone()
    }

    /// Where the agent builds the interface of a Docker endpoint.
    pub(crate) fn staging_path(&self, eid: &str) -> PathBuf {
        let short: String = eid.chars().take(12).collect();
        self.cfg.state_dir.join("netns").join(short)
    }

    /// The interface name the endpoint will likely get in the container:
    /// the lowest `ethN` that neither the container (if it runs already) nor
    /// another of its endpoints holds. (Docker picks the name; this one names
    /// the interface until then.)
    async fn predicted_ifname(&self, sandbox: &str, eid: &str) -> Result<String> {
        let mut taken = if netns::is_netns(Path::new(sandbox)) {
            netns::link_names(Path::new(sandbox)).await.map_err(|e| DriverError::Invalid(e.to_string()))?
        } else {
            Vec::new()
        };
        let st = self.state();
        taken.extend(
            st.endpoints
                .iter()
                .filter(|(id, e)| id.as_str() != eid && e.sandbox.as_deref() == Some(sandbox))
                .filter_map(|(_, e)| e.ifname.clone()),
        );
        Ok(next_ifname(taken.iter().map(String::as_str)))
    }

    /// An agent's refusal or absence, as Docker shows it.
    fn agent_error(&self, e: AgentError) -> DriverError {
        DriverError::Agent { socket: self.cfg.agent_socket.display().to_string(), message: e.to_string() }
    }

    /// `NetworkDriver.Join`: the agent builds the endpoint's interface in a
    /// staging namespace (MAC, addresses, MTU, the host side in the network's
    /// bridge); the plugin moves its container end into the host namespace
    /// under a temporary name, which the answer names for Docker to move into
    /// the container (Docker calls `Join` before the container's namespace
    /// exists) with the network's gateways for its default routes.
    pub async fn join(&self, req: JoinRequest) -> Result<JoinResponse> {
        let eid = req.endpoint_id.clone();
        let ep = self.state().endpoints.get(&eid).cloned().ok_or_else(|| {
            DriverError::NotFound(format!("endpoint {eid} was not created through this plugin (was it restarted?); retry"))
        })?;
        let net = self.network_of(&req.network_id).await?;
        let lock = self.sandbox_lock(&req.sandbox_key);
        let _guard = lock.lock().await;
        let ifname = match &ep.ifname {
            Some(i) => i.clone(),
            None => self.predicted_ifname(&req.sandbox_key, &eid).await?,
        };
        let staging = self.staging_path(&eid);
        if let Some(e) = self.state().endpoints.get_mut(&eid) {
            e.sandbox = Some(req.sandbox_key.clone());
            e.staging = Some(staging.clone());
            e.ifname = Some(ifname.clone());
            e.phase = Phase::Joining;
        }
        let result = self.build_interface(&net, &eid, &ep, &staging, &ifname).await;
        if let Some(e) = self.state().endpoints.get_mut(&eid) {
            e.phase = if result.is_ok() { Phase::Joined } else { Phase::Failed };
            e.since = Instant::now();
        }
        let src_name = result?;
        let gateway = |v4: bool| net.subnets.iter().filter(|s| s.cidr.addr().is_ipv4() == v4).find_map(|s| s.gateway);
        let has = |v4: bool| ep.ips.iter().any(|ip| ip.addr().is_ipv4() == v4);
        tracing::info!(network = %net.fq_name, endpoint = %eid, ifname = %ifname, ips = ?ep.ips, "joined");
        Ok(JoinResponse {
            interface_name: Some(InterfaceName { src_name, dst_prefix: IFNAME_PREFIX.into() }),
            gateway: gateway(true).filter(|_| has(true)),
            gateway_ipv6: gateway(false).filter(|_| has(false)),
            static_routes: Vec::new(),
            disable_gateway_service: true,
        })
    }

    /// The agent attaches the staging namespace; its container end is then
    /// moved to the host namespace. Returns the interface's name there.
    async fn build_interface(
        &self,
        net: &Network,
        eid: &str,
        ep: &EndpointState,
        staging: &Path,
        ifname: &str,
    ) -> Result<String> {
        let t = Instant::now();
        netns::create(staging).await.map_err(|e| DriverError::Invalid(e.to_string()))?;
        let staged = t.elapsed();
        let attach = AttachRequest {
            network: net.id.to_string(),
            netns: staging.display().to_string(),
            ips: ep.ips.iter().map(|ip| ip.addr().to_string()).collect(),
            ifname: Some(ifname.to_string()),
            container_id: None,
            name: Some(eid.to_string()),
            mac: Some(ep.mac.to_string()),
            docker_endpoint_id: Some(eid.to_string()),
            reservation: ep.token.clone(),
        };
        self.agent.attach(&attach).await.map_err(|e| self.agent_error(e))?;
        let attached = t.elapsed();
        let src_name = format!("{SRC_PREFIX}{}", eid.chars().take(8).collect::<String>());
        netns::move_to_host(staging, ifname, &src_name).await.map_err(|e| DriverError::Invalid(e.to_string()))?;
        tracing::debug!(
            staging_ms = staged.as_millis() as u64,
            attach_ms = (attached - staged).as_millis() as u64,
            move_ms = (t.elapsed() - attached).as_millis() as u64,
            "interface built"
        );
        Ok(src_name)
    }

    /// The Tessera endpoint of a Docker endpoint, if any.
    async fn tessera_endpoint(&self, network: Uuid, eid: &str) -> Result<Option<Endpoint>> {
        Ok(self.ctl.endpoints(Some(network), Some(&self.cfg.host)).await?.into_iter().find(|e| e.name == eid))
    }

    /// `NetworkDriver.Leave`: the agent removes the interface; the addresses
    /// go back to the reservation until `ReleaseAddress`.
    pub async fn leave(&self, network_id: &str, eid: &str) -> Result<()> {
        let net = match self.network_of(network_id).await {
            Ok(n) => n,
            Err(DriverError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let known = self.state().endpoints.get(eid).cloned();
        let (netns, ifname) = match known.as_ref().and_then(|e| Some((e.staging.clone()?, e.ifname.clone()?))) {
            Some((s, i)) => (s.display().to_string(), i),
            None => match self.tessera_endpoint(net.id, eid).await? {
                Some(e) => (e.owner.netns.unwrap_or_default(), e.owner.ifname.unwrap_or_default()),
                None => {
                    let _ = netns::delete(&self.staging_path(eid));
                    return Ok(());
                }
            },
        };
        let detach = DetachRequest {
            netns: Some(netns.clone()),
            container_id: None,
            network: Some(net.id.to_string()),
            ifname: Some(ifname),
        };
        self.agent.detach(&detach).await.map_err(|e| self.agent_error(e))?;
        if let Err(e) = netns::delete(Path::new(&netns)) {
            tracing::warn!(error = %e, "cannot remove the staging namespace");
        }
        if let Some(e) = self.state().endpoints.get_mut(eid) {
            e.phase = Phase::Left;
        }
        tracing::info!(network = %net.fq_name, endpoint = %eid, "left");
        Ok(())
    }

    /// `NetworkDriver.DeleteEndpoint`: forgets the endpoint; a Tessera
    /// endpoint left behind by a failed `Join` is deleted.
    pub async fn delete_endpoint(&self, network_id: &str, eid: &str) -> Result<()> {
        let known = self.state().endpoints.remove(eid);
        if let Some(sandbox) = known.as_ref().and_then(|e| e.sandbox.clone()) {
            let mut s = self.sandboxes.lock().unwrap_or_else(|p| p.into_inner());
            if s.get(&sandbox).is_some_and(|l| Arc::strong_count(l) == 1) {
                s.remove(&sandbox);
            }
        }
        if known.as_ref().is_some_and(|e| matches!(e.phase, Phase::Created | Phase::Left)) {
            return Ok(());
        }
        let net = match self.network_of(network_id).await {
            Ok(n) => n,
            Err(DriverError::NotFound(_)) | Err(DriverError::Invalid(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        if let Some(e) = self.tessera_endpoint(net.id, eid).await? {
            self.ctl.delete_endpoint(e.id).await?;
            tracing::info!(network = %net.fq_name, endpoint = %eid, "endpoint deleted");
        }
        if let Err(e) = netns::delete(&self.staging_path(eid)) {
            tracing::warn!(error = %e, "cannot remove the staging namespace");
        }
        Ok(())
    }

    // --------------------------------------------------------------- authz

    /// Takes the authz hook's record of the `docker network create` that
    /// Docker is carrying out: same pools, same options.
    pub(crate) fn take_pending_create(
        &self,
        pools: &BTreeSet<IpNet>,
        options: &BTreeMap<String, String>,
    ) -> Option<PendingCreate> {
        let mut st = self.state();
        st.creates.retain(|p| p.at.elapsed() < PENDING_CREATE_TTL);
        let i = st.creates.iter().position(|p| p.pools == *pools && p.options == *options)?;
        Some(st.creates.remove(i))
    }

    /// Records a `docker network create` the authz hook saw.
    pub(crate) fn push_pending_create(&self, create: &EngineNetworkCreate, pools: BTreeSet<IpNet>) {
        let mut st = self.state();
        st.creates.retain(|p| p.at.elapsed() < PENDING_CREATE_TTL);
        st.creates.push(PendingCreate {
            name: create.name.clone(),
            labels: create.labels.clone(),
            options: create.options.clone(),
            pools,
            at: Instant::now(),
        });
    }

    /// The Tessera network a Docker network (name or ID) of this host is bound to, if any.
    pub(crate) async fn bound_network(&self, reference: &str) -> Result<Option<Network>> {
        let Some(d) = self.docker.network(reference).await? else { return Ok(None) };
        let bind = self.state().networks.get(&d.id).map(|ns| ns.tx.borrow().clone());
        match bind {
            Some(Bind::Ready(n)) => Ok(Some(n)),
            Some(_) => Ok(None),
            None => match self.network_of(&d.id).await {
                Ok(n) => Ok(Some(n)),
                Err(DriverError::NotFound(_)) | Err(DriverError::Invalid(_)) => Ok(None),
                Err(e) => Err(e),
            },
        }
    }

    // ----------------------------------------------------- reconciliation

    /// Removes staging namespaces that no endpoint of this host uses (left by
    /// a plugin that was killed between `Join` and `Leave`).
    pub(crate) fn remove_stale_staging(&self, endpoints: &[Endpoint]) {
        let dir = self.cfg.state_dir.join("netns");
        let Ok(entries) = std::fs::read_dir(&dir) else { return };
        let busy: BTreeSet<PathBuf> = self.state().endpoints.values().filter_map(|e| e.staging.clone()).collect();
        for entry in entries.flatten() {
            let path = entry.path();
            let used = endpoints.iter().any(|e| e.owner.netns.as_deref() == Some(path.to_string_lossy().as_ref()));
            if used || busy.contains(&path) {
                continue;
            }
            match netns::delete(&path) {
                Ok(()) => tracing::info!(path = %path.display(), "removed a stale staging namespace"),
                Err(e) => tracing::warn!(error = %e, "cannot remove a stale staging namespace"),
            }
        }
    }

    /// Executes one reconciliation plan; every action is tried, failures
    /// are logged (the next round retries them).
    pub(crate) async fn execute(&self, actions: Vec<reconcile::SyncStep>, networks: &[Network], docker: &[DockerNetwork]) {
        let mut fresh: Option<Vec<Network>> = None;
        for a in actions {
            let result: Result<()> = match &a {
                reconcile::SyncStep::Bind { docker_id, network } => {
                    if let (Some(n), Some(d)) =
                        (networks.iter().find(|n| n.id == *network), docker.iter().find(|d| d.id == *docker_id))
                    {
                        if !self.is_bound_to(docker_id, n.id) {
                            self.bind(docker_id, n.clone(), &d.subnets);
                        }
                    }
                    Ok(())
                }
                reconcile::SyncStep::CreateDockerNetwork { request, .. } => {
                    tracing::info!(network = %request.name, "creating the network in this host's Docker");
                    self.docker.create_network(request).await.map(|_| ()).map_err(Into::into)
                }
                reconcile::SyncStep::DeleteDockerNetwork { docker_id, name } => {
                    // The snapshot may lag behind the controller: ask it before removing anything.
                    let fresh = match &fresh {
                        Some(f) => f,
                        None => fresh.insert(self.ctl.networks().await.unwrap_or_else(|_| networks.to_vec())),
                    };
                    let d = docker.iter().find(|d| d.id == *docker_id);
                    match d.and_then(|d| reconcile::tessera_network_of(d, fresh).map(|n| (d, n))) {
                        Some((d, n)) => {
                            self.bind(docker_id, n.clone(), &d.subnets);
                            Ok(())
                        }
                        None => {
                            tracing::info!(network = %name, "removing a network whose Tessera network is gone from this host's Docker");
                            let r = self.docker.delete_network(docker_id).await;
                            if r.is_ok() {
                                self.forget_network(docker_id);
                            }
                            r.map_err(Into::into)
                        }
                    }
                }
                reconcile::SyncStep::DeleteEndpoint { id, name } => {
                    tracing::info!(endpoint = %name, "deleting an endpoint whose Docker endpoint is gone");
                    self.ctl.delete_endpoint(*id).await.map_err(Into::into)
                }
                reconcile::SyncStep::ReleaseReservation { network, address, owner } => {
                    tracing::info!(%address, owner = %owner, "releasing a reservation no Docker endpoint holds");
                    self.ctl.release(*network, *address, Some(owner)).await.map_err(Into::into)
                }
            };
            if let Err(e) = result {
                tracing::warn!(action = ?a, error = %e, "reconciliation step failed; will retry");
            }
        }
    }
}

/// A plugin on host `h1` whose controller, agent and dockerd are all
/// unreachable: for unit tests of what needs none of them.
#[cfg(test)]
pub(crate) fn unconnected_plugin() -> Plugin {
    Plugin::new(Config {
        host: "h1".into(),
        controller: "http://127.0.0.1:1".into(),
        agent_socket: "/nonexistent/agent.sock".into(),
        docker_host: "unix:///nonexistent/docker.sock".into(),
        socket: "/nonexistent/tessera.sock".into(),
        state_dir: "/nonexistent".into(),
        address_hold: Duration::from_secs(30),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::EngineIpam;

    fn plugin() -> Plugin {
        unconnected_plugin()
    }

    #[test]
    fn a_pool_without_subnet_is_refused_with_the_reason() {
        let p = plugin();
        let e = p.request_pool(None, None, true).unwrap_err();
        assert!(e.to_string().contains("needs an IPv6 --subnet"), "{e}");
        let (id, pool) = p.request_pool(Some("10.0.0.0/24".parse().unwrap()), None, false).unwrap();
        assert_eq!((id.to_string(), pool.to_string()), ("tessera/10.0.0.0/24".to_string(), "10.0.0.0/24".to_string()));
        let _ = EngineIpam::default();
    }
}
