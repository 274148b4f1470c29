//! The [`Controller`] value: the store it writes, its in-process state
//! (per-network IPAM locks, hosts' hit counters, the cache of parsed rule
//! chunks), and the read, commit and address-allocation helpers every
//! resource module uses.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use tessera_ipam::SubnetLayout;
use tessera_model::{HostCounters, RuleChunk};
use tessera_store::Store;
use uuid::Uuid;

use super::txn::{decode, GuardedTxn, Outcome};
use crate::error::{Error, Result};
use crate::keys;

/// The controller: the source of truth, over a [`Store`].
pub struct Controller {
    pub(super) store: Arc<dyn Store>,
    /// Serialises address allocation per network inside this process, so
    /// concurrent requests do not race for the same free address (the store's
    /// compares still guard against other controllers).
    ipam_locks: std::sync::Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
    /// Addresses endpoint creates picked and have not yet settled (see
    /// `claims`): concurrent creates in one network do not wait for each other.
    pub(super) claims: super::claims::AddressClaims,
    /// The addresses allocated in each subnet, followed from the log
    /// (see `allocations`).
    pub(super) allocations: super::allocations::KnownAllocations,
    /// Networks as endpoint creates found them (see `seen_networks`).
    pub(super) seen_networks: super::seen_networks::SeenNetworks,
    /// The last hit-counter report of each host. Counters are observations,
    /// not intent: they live in memory only (a restarted controller shows
    /// zeros until the agents report again, within seconds).
    pub(super) counters: std::sync::Mutex<HashMap<String, HostCounters>>,
    /// Chunks of policy rules as last read, by key, with their revision:
    /// reading a big policy parses only the chunks that changed.
    pub(super) chunks: std::sync::Mutex<HashMap<String, (u64, Arc<RuleChunk>)>>,
    /// Why the last write failed in the store, until one succeeds: the
    /// controller is not ready meanwhile.
    storage_fault: std::sync::Mutex<Option<String>>,
    /// Serialises the changes that choose a network's way out (floating IP
    /// associations, SNAT) inside this process: each checks that the
    /// network uses one external network only. Across controllers the
    /// network's revision guards it (both write the network).
    pub(super) egress_lock: tokio::sync::Mutex<()>,
    /// When each host last renewed its lease here (see `leases`).
    pub(super) leases: std::sync::Mutex<HashMap<String, std::time::Instant>>,
    /// When this controller started: a lease recorded in the store is kept
    /// for one lease time after, for its agent to renew it here.
    pub(super) started: std::time::Instant,
    /// The traffic of each service port, as its host last reported it (in
    /// memory only, like hit counters).
    pub(super) port_traffic: std::sync::Mutex<HashMap<Uuid, tessera_model::PortTraffic>>,
    /// The flow records agents report (in memory only).
    pub(super) flows: std::sync::Mutex<super::flow_store::FlowStore>,
    /// What `GET /metrics` reports.
    pub metrics: crate::metrics::ControllerMetrics,
    /// The snapshots and watch streams hosts mirror, shared between them.
    hub: Arc<crate::watch_hub::WatchHub>,
    /// Which store this is, for people (`redb PATH`, `etcd ENDPOINTS`).
    store_name: String,
    /// This controller among the controllers of the store (see `members`).
    pub(super) id: Uuid,
    pub(super) advertise_url: Option<String>,
    pub(super) started_ms: u64,
    pub(super) members: std::sync::Mutex<super::peers::Members>,
    /// Serialises writes of this controller's registration.
    pub(super) registrar: tokio::sync::Mutex<()>,
}

/// The result of a create: the object, and whether this request made it
/// (`false` when an identical object already existed: a safe retry).
#[derive(Debug, Clone)]
pub struct Created<T> {
    pub object: T,
    pub created: bool,
}

impl Controller {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Controller {
            hub: crate::watch_hub::WatchHub::new(store.clone()),
            store_name: "a store".into(),
            store,
            ipam_locks: Default::default(),
            claims: Default::default(),
            seen_networks: Default::default(),
            allocations: Default::default(),
            counters: Default::default(),
            chunks: Default::default(),
            storage_fault: Default::default(),
            egress_lock: Default::default(),
            leases: Default::default(),
            started: std::time::Instant::now(),
            port_traffic: Default::default(),
            metrics: Default::default(),
            flows: Default::default(),
            id: Uuid::new_v4(),
            advertise_url: None,
            started_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            members: Default::default(),
            registrar: Default::default(),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Names the store for `GET /v1/status` (`redb PATH`, `etcd ENDPOINTS`).
    pub fn with_store_name(mut self, name: impl Into<String>) -> Self {
        self.store_name = name.into();
        self
    }

    pub fn store_name(&self) -> &str {
        &self.store_name
    }

    /// The snapshots and watch streams of the objects hosts mirror.
    pub fn watch_hub(&self) -> &Arc<crate::watch_hub::WatchHub> {
        &self.hub
    }

    /// The metrics in Prometheus' text format, with the store's revision
    /// and the objects by kind read now.
    pub async fn metrics_text(&self) -> Result<String> {
        self.metrics.revision.set(self.store.revision().await? as i64);
        let (events, bytes) = self.hub.held();
        self.metrics.watch_ring_events.set(events as i64);
        self.metrics.watch_ring_bytes.set(bytes as i64);
        for (kind, prefix) in keys::MIRRORED.into_iter().chain([("service_template", keys::SERVICE_TEMPLATES)]) {
            let n = self.store.range_keys(prefix).await?.kvs.len();
            self.metrics.objects.with_label_values(&[kind]).set(n as i64);
        }
        Ok(self.metrics.render())
    }

    pub(super) async fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<(T, u64)>> {
        match self.store.get(key).await? {
            Some(kv) => Ok(Some((decode(&kv)?, kv.mod_revision))),
            None => Ok(None),
        }
    }

    pub(super) async fn list_json<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>> {
        self.store.range(prefix).await?.kvs.iter().map(decode).collect()
    }

    /// Commits `txn`: [`Outcome::Refused`] names the first guard that did
    /// not hold.
    pub(super) async fn commit(&self, txn: GuardedTxn) -> Result<Outcome> {
        let result = txn.commit(self.store.as_ref()).await;
        *self.storage_fault.lock().unwrap_or_else(|p| p.into_inner()) = match &result {
            Err(Error::Store(e)) => Some(e.to_string()),
            _ => None,
        };
        result
    }

    /// Whether the store takes writes: `Ok` when the last write succeeded;
    /// after a failed one, a probe write (the store opens itself again after
    /// an I/O error, so space that came back is seen) decides.
    pub async fn check_storage(&self) -> Result<()> {
        let fault = self.storage_fault.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if fault.is_none() {
            return Ok(());
        }
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        self.commit(GuardedTxn::new().then(super::txn::put_str(keys::PROBE.into(), &stamp.to_string()))).await.map(|_| ())
    }

    /// The lock that serialises address allocation in `network`.
    pub(super) fn ipam_lock(&self, network: Uuid) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.ipam_locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(network).or_default().clone()
    }

    /// Picks the lowest free address in the first subnet of `family` that
    /// has one (and that no concurrent endpoint create claimed).
    pub(super) async fn allocate_in(&self, network: Uuid, family: &[(usize, &tessera_model::Subnet)]) -> Result<(usize, IpAddr)> {
        self.pick_in(network, family, None).await
    }

    /// [`Controller::allocate_in`], claiming the address into `held` so
    /// that concurrent creates pick others without waiting.
    pub(super) async fn claim_in(
        &self,
        network: Uuid,
        family: &[(usize, &tessera_model::Subnet)],
        held: &mut super::claims::Claimed<'_>,
    ) -> Result<(usize, IpAddr)> {
        self.pick_in(network, family, Some(held)).await
    }

    async fn pick_in(
        &self,
        network: Uuid,
        family: &[(usize, &tessera_model::Subnet)],
        mut held: Option<&mut super::claims::Claimed<'_>>,
    ) -> Result<(usize, IpAddr)> {
        let mut full = Vec::new();
        for (i, subnet) in family {
            let plan: SubnetLayout =
                subnet.layout().map_err(|e| Error::Corrupt { key: keys::network(network), reason: e.to_string() })?;
            let prefix = keys::allocations_of(network, *i);
            let taken = self.allocations.taken(self.store.as_ref(), &prefix).await?;
            let next = |claimed: &std::collections::BTreeSet<IpAddr>| {
                let all: std::collections::BTreeSet<IpAddr> = taken.iter().chain(claimed).copied().collect();
                plan.next_free(all)
            };
            let picked = match held.as_deref_mut() {
                Some(held) => self.claims.claim(network, held, next),
                None => self.claims.claim(network, &mut super::claims::Claimed::new(&self.claims, network), next),
            };
            match picked {
                Ok(a) => return Ok((*i, a)),
                Err(tessera_ipam::IpamError::Exhausted { .. }) => full.push(subnet.cidr.to_string()),
                Err(e) => return Err(Error::Corrupt { key: prefix, reason: e.to_string() }),
            }
        }
        Err(Error::Exhausted(format!("no free address left in {}", full.join(", "))))
    }
}
