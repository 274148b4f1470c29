//! The plugin's operations: Docker's calls in; the controller, the host's
//! agent and Docker's Engine API out. The decisions are in the pure modules
//! ([`crate::spec`], [`crate::pool`], [`crate::names`], [`crate::reconcile`]);
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
//!
//! One file per concern: [`networks`], [`ipam`], [`endpoints`], [`ports`]
//! (`docker run -p`), and
//! [`execute`] (what the authz hook and the reconciliation ask); this one
//! holds the plugin's state and the binding of Docker networks.

mod endpoints;
mod execute;
mod ipam;
mod networks;
mod ports;

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
    /// How the plugin proves it is this host's to the controller.
    pub credentials: tessera_api::auth::Credentials,
    /// The host agent's socket.
    pub agent_socket: PathBuf,
    /// dockerd's Engine API: `unix:///var/run/docker.sock`.
    pub docker_host: String,
    /// Where the plugin listens: `/run/docker/plugins/tessera.sock`.
    pub socket: PathBuf,
    /// Where the plugin keeps its mirror of the controller.
    pub state_dir: PathBuf,
    /// Where the staging namespaces are (one per joining endpoint); must
    /// be under `/run/tessera/`, where endpoint namespaces are accepted.
    pub staging_dir: PathBuf,
    /// How long a released address stays reserved for the next container of
    /// this host asking for one in its subnet (a restarted container gets its
    /// address back); zero releases at once.
    pub address_hold: Duration,
    /// The driver name dockerd knows the plugin by: `tessera` for the
    /// plugin on its socket, a managed plugin's name and tag
    /// (`tessera:latest`) otherwise; the networks it makes in dockerd and
    /// finds there are of this driver.
    pub driver: String,
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
    Ready(Box<Network>),
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
    /// Docker networks whose Tessera network `CreateNetwork` is making, by
    /// Docker ID, with their name.
    creating: HashMap<String, String>,
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
    /// A plugin for `cfg`; fails when its credentials cannot be read.
    pub fn new(cfg: Config) -> Result<Self, ClientError> {
        let ctl = ControllerClient::with_credentials(&cfg.controller, &cfg.credentials)?;
        let docker = Docker::new(&cfg.docker_host);
        Ok(Plugin {
            agent: AgentClient::new(&cfg.agent_socket),
            cfg,
            ctl,
            docker,
            state: Mutex::default(),
            sandboxes: Mutex::default(),
            kick: tokio::sync::Notify::new(),
        })
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
                ns.tx.send_replace(Bind::Ready(Box::new(net)));
            }
            None => {
                st.networks.insert(
                    docker_id.into(),
                    NetState { tx: watch::channel(Bind::Ready(Box::new(net))).0, since: Instant::now() },
                );
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
            Bind::Ready(n) => Ok(*n),
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
        // `docker network create`s under way: seen by the authz hook, or in `CreateNetwork`.
        f.docker_names.extend(st.creates.iter().filter(|p| p.at.elapsed() < PENDING_CREATE_TTL).map(|p| p.name.clone()));
        f.docker_names.extend(st.creating.values().cloned());
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
}

/// A plugin on host `h1` whose controller, agent and dockerd are all
/// unreachable: for unit tests of what needs none of them.
#[cfg(test)]
pub(crate) fn unconnected_plugin() -> Plugin {
    Plugin::new(Config {
        host: "h1".into(),
        controller: "http://127.0.0.1:1".into(),
        credentials: Default::default(),
        agent_socket: "/nonexistent/agent.sock".into(),
        docker_host: "unix:///nonexistent/docker.sock".into(),
        socket: "/nonexistent/tessera.sock".into(),
        state_dir: "/nonexistent".into(),
        staging_dir: "/run/tessera/nonexistent".into(),
        address_hold: Duration::from_secs(30),
        driver: PLUGIN_NAME.into(),
    })
    .expect("no credential files to read")
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
