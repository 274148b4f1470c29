//! The controller's operations: validation, reference checks and atomic
//! writes of objects with their uniqueness indexes.
//!
//! Every write is one store transaction whose compares guard what must hold
//! (a name is free, a referenced object exists, nothing changed since it was
//! read), so concurrent requests and several controllers on one store never
//! break an invariant. Where a compare fails because another request won a
//! race for a generated value (a VNI, a MAC, an address), the operation picks
//! again and retries.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tessera_ipam::SubnetLayout;
use tessera_model::network::{parse_route_targets, validate_subnets};
use tessera_model::reservation::{check_owner, reservation_owner, RESERVATION_OWNER_PREFIX};
use tessera_model::watch::{ChunkRef, PolicyHeader, PolicyRules};
use tessera_model::{
    Endpoint, EndpointCreate, EndpointStatus, FieldError, FqName, Host, HostCounters, HostRegister, MacAddr, Network,
    NetworkCreate, NetworkUpdate, Policy, PolicyCounters, PolicyCreate, PolicyUpdate, PolicyView, ProjectName, Reservation,
    ReservationCreate, RouteTarget, RuleChange, RuleChunk, RuleInsert, RuleSpec, Rules, Vni, RULE_CHUNK,
};
use tessera_store::{Compare, KeyValue, Op, Store, Txn};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::keys;

/// How many times an operation re-reads and retries after losing a race.
const MAX_ATTEMPTS: usize = 64;

/// A project, `domain:project`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Project {
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    pub fq_name: ProjectName,
}

/// Request to create a project (`POST /v1/projects`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectCreate {
    /// `domain:project`, or a bare project name in `default-domain`.
    pub name: String,
}

/// The result of a create: the object, and whether this request made it
/// (`false` when an identical object already existed: a safe retry).
#[derive(Debug, Clone)]
pub struct Created<T> {
    pub object: T,
    pub created: bool,
}

/// The address allocations of one network.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NetworkIpam {
    pub network: FqName,
    pub subnets: Vec<SubnetUsage>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SubnetUsage {
    #[schema(value_type = String)]
    pub cidr: IpNet,
    #[schema(value_type = Option<String>)]
    pub gateway: Option<IpAddr>,
    /// Allocatable addresses (as a string: IPv6 subnets exceed 64 bits).
    pub capacity: String,
    pub allocated: usize,
    pub allocations: Vec<Allocation>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Allocation {
    #[schema(value_type = String)]
    pub address: IpAddr,
    /// `endpoint:<uuid>`, or `reservation:<owner>` for a reserved address.
    pub owner: String,
}

/// Filters of `GET /v1/endpoints`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
pub struct EndpointFilter {
    /// Network name or UUID.
    pub network: Option<String>,
    pub host: Option<String>,
}

/// The controller: the source of truth, over a [`Store`].
pub struct Controller {
    store: Arc<dyn Store>,
    /// Serialises address allocation per network inside this process, so
    /// concurrent requests do not race for the same free address (the store's
    /// compares still guard against other controllers).
    ipam_locks: std::sync::Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
    /// The last hit-counter report of each host. Counters are observations,
    /// not intent: they live in memory only (a restarted controller shows
    /// zeros until the agents report again, within seconds).
    counters: std::sync::Mutex<HashMap<String, HostCounters>>,
    /// Chunks of policy rules as last read, by key, with their revision:
    /// reading a big policy parses only the chunks that changed.
    chunks: std::sync::Mutex<HashMap<String, (u64, Arc<RuleChunk>)>>,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("model types always serialise")
}

fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Result<T> {
    serde_json::from_slice(&kv.value).map_err(|e| Error::Corrupt { key: kv.key.clone(), reason: e.to_string() })
}

fn put<T: Serialize>(key: String, v: &T) -> Op {
    Op::Put { key, value: encode(v) }
}

fn put_str(key: String, v: &str) -> Op {
    Op::Put { key, value: v.as_bytes().to_vec() }
}

fn del(key: String) -> Op {
    Op::Delete { key }
}

fn uuid_of(kv: &KeyValue) -> Result<Uuid> {
    std::str::from_utf8(&kv.value)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::Corrupt { key: kv.key.clone(), reason: "not a UUID".into() })
}

fn project_of(field: &str, p: &Option<String>) -> Result<ProjectName> {
    match p {
        Some(p) if !p.is_empty() => p.parse().map_err(|r| FieldError::new(field, r).into()),
        _ => Ok(ProjectName::default_project()),
    }
}

fn random_mac() -> MacAddr {
    MacAddr::local_from(rand::random())
}

impl Controller {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Controller { store, ipam_locks: Default::default(), counters: Default::default(), chunks: Default::default() }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Makes sure the default project exists. Idempotent.
    pub async fn bootstrap(&self) -> Result<()> {
        self.create_project(ProjectCreate { name: tessera_model::DEFAULT_PROJECT.into() }).await?;
        Ok(())
    }

    async fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<(T, u64)>> {
        match self.store.get(key).await? {
            Some(kv) => Ok(Some((decode(&kv)?, kv.mod_revision))),
            None => Ok(None),
        }
    }

    async fn list_json<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>> {
        self.store.range(prefix).await?.kvs.iter().map(decode).collect()
    }

    async fn commit(&self, txn: Txn) -> Result<tessera_store::TxnResult> {
        Ok(self.store.txn(txn).await?)
    }

    // ---------------------------------------------------------------- projects

    pub async fn create_project(&self, req: ProjectCreate) -> Result<Created<Project>> {
        let fq_name: ProjectName = req.name.parse().map_err(|r| FieldError::new("name", r))?;
        let key = keys::project(&fq_name);
        let project = Project { id: Uuid::new_v4(), fq_name };
        let r = self.commit(Txn::new().when(Compare::Absent(key.clone())).then(put(key.clone(), &project))).await?;
        if r.succeeded {
            return Ok(Created { object: project, created: true });
        }
        let (existing, _) = self.get_json::<Project>(&key).await?.ok_or_else(|| Error::Conflict(key))?;
        Ok(Created { object: existing, created: false })
    }

    pub async fn get_project(&self, name: &str) -> Result<Project> {
        let fq: ProjectName = name.parse().map_err(|r| FieldError::new("project", r))?;
        Ok(self.get_json(&keys::project(&fq)).await?.ok_or_else(|| Error::not_found("project", name))?.0)
    }

    pub async fn list_projects(&self) -> Result<Vec<Project>> {
        self.list_json(keys::PROJECTS).await
    }

    /// Deletes a project that holds no networks or policies. Deleting a
    /// missing project is Ok.
    pub async fn delete_project(&self, name: &str) -> Result<()> {
        let fq: ProjectName = name.parse().map_err(|r| FieldError::new("project", r))?;
        let nets = keys::network_names_of(&fq);
        let pols = keys::policy_names_of(&fq);
        let r = self
            .commit(
                Txn::new()
                    .when(Compare::PrefixEmpty(nets.clone()))
                    .when(Compare::PrefixEmpty(pols.clone()))
                    .then(del(keys::project(&fq))),
            )
            .await?;
        if r.succeeded {
            return Ok(());
        }
        let mut users = Vec::new();
        for prefix in [nets, pols] {
            for kv in self.store.range(&prefix).await?.kvs {
                users.push(kv.key.rsplit('/').next().unwrap_or_default().to_string());
            }
        }
        Err(Error::InUse { kind: "project", name: fq.to_string(), users })
    }

    async fn require_project(&self, field: &str, p: &ProjectName) -> Result<()> {
        if self.store.get(&keys::project(p)).await?.is_none() {
            return Err(Error::NotFound { kind: "project", name: p.to_string(), field: Some(field.into()) });
        }
        Ok(())
    }

    // ---------------------------------------------------------------- networks

    /// Finds a network by UUID, fully qualified name, or bare name in the
    /// default project. Returns it with its mod revision.
    pub async fn find_network(&self, reference: &str) -> Result<(Network, u64)> {
        let id = match reference.parse::<Uuid>() {
            Ok(id) => id,
            Err(_) => {
                let fq =
                    FqName::resolve(reference, &ProjectName::default_project()).map_err(|r| FieldError::new("network", r))?;
                let kv = self.store.get(&keys::network_name(&fq)).await?.ok_or_else(|| Error::not_found("network", reference))?;
                uuid_of(&kv)?
            }
        };
        self.get_json(&keys::network(id)).await?.ok_or_else(|| Error::not_found("network", reference))
    }

    pub async fn get_network(&self, reference: &str) -> Result<Network> {
        Ok(self.find_network(reference).await?.0)
    }

    /// All networks, optionally of one project, sorted by name.
    pub async fn list_networks(&self, project: Option<&str>) -> Result<Vec<Network>> {
        let project: Option<ProjectName> = match project {
            Some(p) => Some(p.parse().map_err(|r| FieldError::new("project", r))?),
            None => None,
        };
        let mut nets: Vec<Network> = self.list_json(keys::NETWORKS).await?;
        nets.retain(|n| project.as_ref().is_none_or(|p| n.fq_name.project() == p));
        nets.sort_by(|a, b| a.fq_name.cmp(&b.fq_name));
        Ok(nets)
    }

    async fn resolve_policies(&self, field: &str, refs: &[String], project: &ProjectName) -> Result<Vec<Uuid>> {
        let mut out = Vec::new();
        for (i, r) in refs.iter().enumerate() {
            let p = self.find_policy_in(r, project).await.map_err(|e| match e {
                Error::NotFound { kind, name, .. } => Error::NotFound { kind, name, field: Some(format!("{field}[{i}]")) },
                other => other,
            })?;
            if !out.contains(&p.0.id) {
                out.push(p.0.id);
            }
        }
        Ok(out)
    }

    async fn lowest_free_vni(&self) -> Result<Vni> {
        let used: BTreeSet<u32> = self
            .store
            .range(keys::VNI_INDEX)
            .await?
            .kvs
            .iter()
            .filter_map(|kv| kv.key.rsplit('/').next()?.parse().ok())
            .collect();
        (Vni::AUTO_START..=Vni::MAX)
            .find(|v| !used.contains(v))
            .and_then(|v| Vni::new(v).ok())
            .ok_or_else(|| Error::Exhausted("every VNI is in use".into()))
    }

    /// Creates a network. A request identical to an existing network of the
    /// same name returns that network with `created: false`.
    pub async fn create_network(&self, req: NetworkCreate) -> Result<Created<Network>> {
        let default_project = project_of("project", &req.project)?;
        let fq_name = FqName::resolve(&req.name, &default_project).map_err(|r| FieldError::new("name", r))?;
        let subnets = validate_subnets(&req.subnets)?;
        let chosen_vni = req.vni.map(|v| Vni::new(v).map_err(|r| FieldError::new("vni", r))).transpose()?;
        let both = parse_route_targets("route_targets", &req.route_targets)?;
        let mut import_targets = both.clone();
        let mut export_targets = both;
        merge(&mut import_targets, parse_route_targets("import_targets", &req.import_targets)?);
        merge(&mut export_targets, parse_route_targets("export_targets", &req.export_targets)?);
        for k in req.labels.keys() {
            if k.is_empty() {
                return Err(FieldError::new("labels", "label keys must not be empty").into());
            }
        }
        self.require_project("project", fq_name.project()).await?;
        let policies = self.resolve_policies("policies", &req.policies, fq_name.project()).await?;

        for _ in 0..MAX_ATTEMPTS {
            let vni = match chosen_vni {
                Some(v) => v,
                None => self.lowest_free_vni().await?,
            };
            let network = Network {
                id: Uuid::new_v4(),
                fq_name: fq_name.clone(),
                vni,
                subnets: subnets.clone(),
                import_targets: import_targets.clone(),
                export_targets: export_targets.clone(),
                shared: req.shared,
                external: req.external,
                policies: policies.clone(),
                labels: req.labels.clone(),
            };
            let mut txn = Txn::new()
                .when(Compare::Absent(keys::network_name(&fq_name)))
                .when(Compare::Absent(keys::vni(vni)))
                .when(Compare::Exists(keys::project(fq_name.project())));
            for p in &policies {
                txn = txn.when(Compare::Exists(keys::policy(*p)));
            }
            let txn = txn
                .then(put(keys::network(network.id), &network))
                .then(put_str(keys::network_name(&fq_name), &network.id.to_string()))
                .then(put_str(keys::vni(vni), &network.id.to_string()));
            let r = self.commit(txn).await?;
            if r.succeeded {
                tracing::info!(network = %fq_name, vni = %vni, "network created");
                return Ok(Created { object: network, created: true });
            }
            match r.failed.first() {
                Some(0) => {
                    let (existing, _) = self.find_network(&fq_name.to_string()).await?;
                    let same = existing.subnets == network.subnets
                        && existing.import_targets == network.import_targets
                        && existing.export_targets == network.export_targets
                        && existing.shared == network.shared
                        && existing.external == network.external
                        && existing.policies == network.policies
                        && existing.labels == network.labels
                        && chosen_vni.is_none_or(|v| v == existing.vni);
                    if same {
                        return Ok(Created { object: existing, created: false });
                    }
                    return Err(Error::AlreadyExists {
                        what: format!("network {fq_name} already exists with different settings"),
                        field: Some("name".into()),
                    });
                }
                Some(1) if chosen_vni.is_some() => {
                    let owner = self.store.get(&keys::vni(vni)).await?.map(|kv| uuid_of(&kv)).transpose()?;
                    let owner = match owner {
                        Some(id) => self.get_json::<Network>(&keys::network(id)).await?.map(|n| n.0.fq_name.to_string()),
                        None => None,
                    };
                    return Err(Error::AlreadyExists {
                        what: format!(
                            "VNI {vni} is already used by network {}",
                            owner.unwrap_or_else(|| "another network".into())
                        ),
                        field: Some("vni".into()),
                    });
                }
                Some(1) => continue,
                Some(2) => {
                    return Err(Error::NotFound {
                        kind: "project",
                        name: fq_name.project().to_string(),
                        field: Some("project".into()),
                    })
                }
                _ => {
                    return Err(Error::NotFound {
                        kind: "policy",
                        name: "attached policy".into(),
                        field: Some("policies".into()),
                    })
                }
            }
        }
        Err(Error::Conflict(format!("network {fq_name}")))
    }

    /// Applies an update; adding what is there and removing what is not are no-ops.
    pub async fn update_network(&self, reference: &str, req: NetworkUpdate) -> Result<Network> {
        let add_both = parse_route_targets("add_route_targets", &req.add_route_targets)?;
        let rm_both = parse_route_targets("remove_route_targets", &req.remove_route_targets)?;
        let add_import = parse_route_targets("add_import_targets", &req.add_import_targets)?;
        let rm_import = parse_route_targets("remove_import_targets", &req.remove_import_targets)?;
        let add_export = parse_route_targets("add_export_targets", &req.add_export_targets)?;
        let rm_export = parse_route_targets("remove_export_targets", &req.remove_export_targets)?;
        for _ in 0..MAX_ATTEMPTS {
            let (mut net, rev) = self.find_network(reference).await?;
            let project = net.fq_name.project().clone();
            let attach = self.resolve_policies("attach_policies", &req.attach_policies, &project).await?;
            let detach = self.resolve_policies("detach_policies", &req.detach_policies, &project).await?;
            merge(&mut net.import_targets, add_both.iter().chain(&add_import).copied().collect());
            merge(&mut net.export_targets, add_both.iter().chain(&add_export).copied().collect());
            net.import_targets.retain(|rt| !rm_both.contains(rt) && !rm_import.contains(rt));
            net.export_targets.retain(|rt| !rm_both.contains(rt) && !rm_export.contains(rt));
            for p in attach {
                if !net.policies.contains(&p) {
                    net.policies.push(p);
                }
            }
            net.policies.retain(|p| !detach.contains(p));
            if let Some(s) = req.shared {
                net.shared = s;
            }
            if let Some(e) = req.external {
                net.external = e;
            }
            let mut txn = Txn::new().when(Compare::ModRevision(keys::network(net.id), rev));
            for p in &net.policies {
                txn = txn.when(Compare::Exists(keys::policy(*p)));
            }
            let r = self.commit(txn.then(put(keys::network(net.id), &net))).await?;
            if r.succeeded {
                tracing::info!(network = %net.fq_name, "network updated");
                return Ok(net);
            }
        }
        Err(Error::Conflict(format!("network {reference}")))
    }

    /// Deletes a network with no endpoints, its indexes and its (empty) IPAM
    /// state. Deleting a missing network is Ok.
    pub async fn delete_network(&self, reference: &str) -> Result<()> {
        let (net, _) = match self.find_network(reference).await {
            Ok(n) => n,
            Err(Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let eps = keys::endpoints_of(net.id);
        let r = self
            .commit(
                Txn::new()
                    .when(Compare::PrefixEmpty(eps.clone()))
                    .then(del(keys::network(net.id)))
                    .then(del(keys::network_name(&net.fq_name)))
                    .then(del(keys::vni(net.vni)))
                    .then(Op::DeletePrefix { prefix: keys::allocations_of_network(net.id) }),
            )
            .await?;
        if r.succeeded {
            tracing::info!(network = %net.fq_name, "network deleted");
            return Ok(());
        }
        let users = self.store.range(&eps).await?.kvs.iter().map(|kv| kv.key[eps.len()..].to_string()).collect();
        Err(Error::InUse { kind: "network", name: net.fq_name.to_string(), users })
    }

    pub async fn network_ipam(&self, reference: &str) -> Result<NetworkIpam> {
        let (net, _) = self.find_network(reference).await?;
        let mut subnets = Vec::new();
        for (i, s) in net.subnets.iter().enumerate() {
            let prefix = keys::allocations_of(net.id, i);
            let allocations: Vec<Allocation> = self
                .store
                .range(&prefix)
                .await?
                .kvs
                .iter()
                .filter_map(|kv| {
                    Some(Allocation {
                        address: tessera_ipam::parse_sort_key(&kv.key[prefix.len()..])?,
                        owner: String::from_utf8_lossy(&kv.value).into_owned(),
                    })
                })
                .collect();
            let capacity = s.layout().map(|p| p.capacity()).unwrap_or(0);
            subnets.push(SubnetUsage {
                cidr: s.cidr,
                gateway: s.gateway,
                capacity: capacity.to_string(),
                allocated: allocations.len(),
                allocations,
            });
        }
        Ok(NetworkIpam { network: net.fq_name, subnets })
    }

    // --------------------------------------------------------------- endpoints

    fn ipam_lock(&self, network: Uuid) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.ipam_locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(network).or_default().clone()
    }

    /// Creates an endpoint with a MAC and one address per address family of
    /// its network (static where requested, else the lowest free one).
    ///
    /// Retry-safe: a create naming an existing endpoint of the network with
    /// the same host, owner and requested addresses returns it unchanged.
    pub async fn create_endpoint(&self, req: EndpointCreate) -> Result<Created<Endpoint>> {
        let name = match &req.name {
            Some(n) => tessera_model::names::check_component(n).map(|()| n.clone()).map_err(|r| FieldError::new("name", r))?,
            None => Uuid::new_v4().to_string(),
        };
        tessera_model::names::check_component(&req.host).map_err(|r| FieldError::new("host", r))?;
        let chosen_mac = req
            .mac
            .as_deref()
            .map(|m| {
                let mac: MacAddr = m.parse().map_err(|r| FieldError::new("mac", r))?;
                if !mac.is_unicast() {
                    return Err(FieldError::new("mac", format!("{mac} is a multicast address")));
                }
                Ok(mac)
            })
            .transpose()?;
        let (net, _) = self.find_network(&req.network).await.map_err(|e| match e {
            Error::NotFound { kind, name, .. } => Error::NotFound { kind, name, field: Some("network".into()) },
            other => other,
        })?;
        // Static requests: at most one per family, each inside a subnet.
        let mut statics: Vec<(usize, IpAddr)> = Vec::new();
        for (i, s) in req.ips.iter().enumerate() {
            let field = format!("ips[{i}]");
            let addr: IpAddr = s
                .split('/')
                .next()
                .unwrap_or_default()
                .trim()
                .parse()
                .map_err(|_| FieldError::new(&field, format!("{s:?} is not an IP address")))?;
            let (idx, subnet) = net
                .subnet_of(addr)
                .ok_or_else(|| FieldError::new(&field, format!("{addr} is in no subnet of network {}", net.fq_name)))?;
            if statics.iter().any(|(_, a)| a.is_ipv4() == addr.is_ipv4()) {
                return Err(FieldError::new(&field, "only one address per address family may be requested").into());
            }
            let plan = subnet.layout().map_err(|e| FieldError::new(&field, e.to_string()))?;
            plan.is_allocatable(addr).map_err(|e| FieldError::new(&field, e.to_string()))?;
            statics.push((idx, addr));
        }
        if self.store.get(&keys::host(&req.host)).await?.is_none() {
            return Err(Error::NotFound { kind: "host", name: req.host.clone(), field: Some("host".into()) });
        }
        // An endpoint made from a reservation takes all its addresses from it,
        // so that deleting it can give every one of them back.
        let adopt = match &req.owner.reservation {
            Some(token) => {
                check_owner("owner.reservation", token)?;
                for v4 in [true, false] {
                    let has_family = net.subnets.iter().any(|s| s.cidr.addr().is_ipv4() == v4);
                    if has_family && !statics.iter().any(|(_, a)| a.is_ipv4() == v4) {
                        let family = if v4 { "IPv4" } else { "IPv6" };
                        return Err(FieldError::new(
                            "ips",
                            format!("an endpoint made from reservation {token} needs a static {family} address of it"),
                        )
                        .into());
                    }
                }
                Some(reservation_owner(token))
            }
            None => None,
        };

        let lock = self.ipam_lock(net.id);
        let _guard = lock.lock().await;
        for _ in 0..MAX_ATTEMPTS {
            if let Some(kv) = self.store.get(&keys::endpoint_name(net.id, &name)).await? {
                let id = uuid_of(&kv)?;
                if let Some((existing, _)) = self.get_json::<Endpoint>(&keys::endpoint(id)).await? {
                    let same = existing.host == req.host
                        && existing.owner == req.owner
                        && chosen_mac.is_none_or(|m| m == existing.mac)
                        && statics.iter().all(|(_, a)| existing.ips.iter().any(|n| n.addr() == *a));
                    if same {
                        return Ok(Created { object: existing, created: false });
                    }
                    return Err(Error::AlreadyExists {
                        what: format!("endpoint {name} already exists in network {} with different settings", net.fq_name),
                        field: Some("name".into()),
                    });
                }
            }
            let id = Uuid::new_v4();
            let owner = format!("endpoint:{id}");
            let mac = chosen_mac.unwrap_or_else(random_mac);
            let mut ips: Vec<(usize, IpAddr)> = statics.clone();
            for v4 in [true, false] {
                if ips.iter().any(|(_, a)| a.is_ipv4() == v4) {
                    continue;
                }
                let family: Vec<(usize, &tessera_model::Subnet)> =
                    net.subnets.iter().enumerate().filter(|(_, s)| s.cidr.addr().is_ipv4() == v4).collect();
                if family.is_empty() {
                    continue;
                }
                ips.push(self.allocate_in(net.id, &family).await?);
            }
            let endpoint = Endpoint {
                id,
                name: name.clone(),
                network: net.id,
                host: req.host.clone(),
                mac,
                ips: ips
                    .iter()
                    .map(|(i, a)| IpNet::new(*a, net.subnets[*i].cidr.prefix_len()).expect("prefix of a valid subnet"))
                    .collect(),
                owner: req.owner.clone(),
                status: EndpointStatus::Pending,
            };
            let mut txn = Txn::new()
                .when(Compare::Exists(keys::network(net.id)))
                .when(Compare::Absent(keys::endpoint_name(net.id, &name)))
                .when(Compare::Absent(keys::mac(mac)));
            for (i, a) in &ips {
                let key = keys::allocation(net.id, *i, *a);
                // A static address reserved by the endpoint's reservation is adopted; any other must be free.
                let reserved = match &adopt {
                    Some(owner) => self.store.get(&key).await?.filter(|kv| kv.value == owner.as_bytes()),
                    None => None,
                };
                txn = txn.when(match reserved {
                    Some(kv) => Compare::ValueEquals(key, kv.value),
                    None => Compare::Absent(key),
                });
            }
            txn = txn
                .then(put(keys::endpoint(id), &endpoint))
                .then(put_str(keys::endpoint_name(net.id, &name), &id.to_string()))
                .then(put_str(keys::mac(mac), &id.to_string()));
            for (i, a) in &ips {
                txn = txn.then(put_str(keys::allocation(net.id, *i, *a), &owner));
            }
            let r = self.commit(txn).await?;
            if r.succeeded {
                tracing::info!(network = %net.fq_name, endpoint = %name, host = %req.host, "endpoint created");
                return Ok(Created { object: endpoint, created: true });
            }
            match r.failed.first().copied() {
                Some(0) => {
                    return Err(Error::NotFound { kind: "network", name: req.network.clone(), field: Some("network".into()) })
                }
                Some(1) => continue, // created concurrently: the loop returns it or reports the clash
                Some(2) if chosen_mac.is_some() => {
                    return Err(Error::AlreadyExists { what: format!("MAC {mac} is already in use"), field: Some("mac".into()) })
                }
                Some(2) => continue,
                Some(n) => {
                    let (_, addr) = ips[n - 3];
                    if let Some(pos) = statics.iter().position(|(_, a)| *a == addr) {
                        return Err(Error::AlreadyExists {
                            what: format!("address {addr} is already in use in network {}", net.fq_name),
                            field: Some(format!("ips[{pos}]")),
                        });
                    }
                    continue;
                }
                None => continue,
            }
        }
        Err(Error::Conflict(format!("endpoint {name}")))
    }

    /// Picks the lowest free address in the first subnet of `family` that has one.
    async fn allocate_in(&self, network: Uuid, family: &[(usize, &tessera_model::Subnet)]) -> Result<(usize, IpAddr)> {
        let mut full = Vec::new();
        for (i, subnet) in family {
            let plan: SubnetLayout =
                subnet.layout().map_err(|e| Error::Corrupt { key: keys::network(network), reason: e.to_string() })?;
            let prefix = keys::allocations_of(network, *i);
            let taken = self.store.range(&prefix).await?.kvs;
            let allocated = taken.iter().filter_map(|kv| tessera_ipam::parse_sort_key(&kv.key[prefix.len()..]));
            match plan.next_free(allocated) {
                Ok(a) => return Ok((*i, a)),
                Err(tessera_ipam::IpamError::Exhausted { .. }) => full.push(subnet.cidr.to_string()),
                Err(e) => return Err(Error::Corrupt { key: prefix, reason: e.to_string() }),
            }
        }
        Err(Error::Exhausted(format!("no free address left in {}", full.join(", "))))
    }

    pub async fn get_endpoint(&self, id: &str) -> Result<Endpoint> {
        let uuid: Uuid = id.parse().map_err(|_| FieldError::new("id", format!("{id:?} is not a UUID")))?;
        Ok(self.get_json(&keys::endpoint(uuid)).await?.ok_or_else(|| Error::not_found("endpoint", id))?.0)
    }

    pub async fn list_endpoints(&self, filter: &EndpointFilter) -> Result<Vec<Endpoint>> {
        let network = match &filter.network {
            Some(n) => Some(self.find_network(n).await?.0.id),
            None => None,
        };
        let mut eps: Vec<Endpoint> = self.list_json(keys::ENDPOINTS).await?;
        eps.retain(|e| network.is_none_or(|n| e.network == n) && filter.host.as_ref().is_none_or(|h| &e.host == h));
        eps.sort_by(|a, b| (a.network, &a.name).cmp(&(b.network, &b.name)));
        Ok(eps)
    }

    /// Deletes an endpoint and releases its MAC and addresses (or, for an
    /// endpoint made from a reservation, returns them to that reservation).
    /// Deleting a missing endpoint is Ok.
    pub async fn delete_endpoint(&self, id: &str) -> Result<()> {
        let uuid: Uuid = id.parse().map_err(|_| FieldError::new("id", format!("{id:?} is not a UUID")))?;
        for _ in 0..MAX_ATTEMPTS {
            let Some((ep, rev)) = self.get_json::<Endpoint>(&keys::endpoint(uuid)).await? else {
                return Ok(());
            };
            let net: Option<(Network, u64)> = self.get_json(&keys::network(ep.network)).await?;
            let mut txn = Txn::new()
                .when(Compare::ModRevision(keys::endpoint(uuid), rev))
                .then(del(keys::endpoint(uuid)))
                .then(del(keys::endpoint_name(ep.network, &ep.name)))
                .then(del(keys::mac(ep.mac)));
            if let Some((net, _)) = net {
                for ip in &ep.ips {
                    if let Some((i, _)) = net.subnet_of(ip.addr()) {
                        let key = keys::allocation(ep.network, i, ip.addr());
                        txn = txn.then(match &ep.owner.reservation {
                            // The addresses go back to the reservation they came from.
                            Some(token) => put_str(key, &reservation_owner(token)),
                            None => del(key),
                        });
                    }
                }
            }
            if self.commit(txn).await?.succeeded {
                tracing::info!(endpoint = %ep.name, "endpoint deleted");
                return Ok(());
            }
        }
        Err(Error::Conflict(format!("endpoint {id}")))
    }

    /// Records the status an agent reports for one of its endpoints.
    pub async fn set_endpoint_status(&self, id: &str, status: EndpointStatus) -> Result<Endpoint> {
        let uuid: Uuid = id.parse().map_err(|_| FieldError::new("id", format!("{id:?} is not a UUID")))?;
        for _ in 0..MAX_ATTEMPTS {
            let (mut ep, rev) =
                self.get_json::<Endpoint>(&keys::endpoint(uuid)).await?.ok_or_else(|| Error::not_found("endpoint", id))?;
            if ep.status == status {
                return Ok(ep);
            }
            ep.status = status;
            let txn = Txn::new().when(Compare::ModRevision(keys::endpoint(uuid), rev)).then(put(keys::endpoint(uuid), &ep));
            if self.commit(txn).await?.succeeded {
                return Ok(ep);
            }
        }
        Err(Error::Conflict(format!("endpoint {id}")))
    }

    // ------------------------------------------------------------ reservations

    /// Reserves an address of a network for `owner`: the chosen one, or the
    /// lowest free one of a subnet. Retry-safe: when the owner already holds
    /// the chosen address (or, without a chosen one, any address of the
    /// subnet), that reservation is returned with `created: false`.
    pub async fn reserve_address(&self, reference: &str, req: ReservationCreate) -> Result<Created<Reservation>> {
        check_owner("owner", &req.owner)?;
        let (net, _) = self.find_network(reference).await?;
        let chosen: Option<IpAddr> = match req.address.as_deref().map(str::trim) {
            Some(a) if !a.is_empty() => Some(
                a.split('/')
                    .next()
                    .unwrap_or_default()
                    .parse()
                    .map_err(|_| FieldError::new("address", format!("{a:?} is not an IP address")))?,
            ),
            _ => None,
        };
        let take_over = match &req.from {
            Some(from) => {
                check_owner("from", from)?;
                if chosen.is_none() {
                    return Err(FieldError::new("address", "taking a reservation over needs its address").into());
                }
                Some(reservation_owner(from))
            }
            None => None,
        };
        let wanted_subnet: Option<IpNet> = match req.subnet.as_deref().map(str::trim) {
            Some(s) if !s.is_empty() => Some(tessera_model::network::parse_cidr("subnet", s)?),
            _ => None,
        };
        let index = match (chosen, wanted_subnet) {
            (Some(a), _) => {
                let (i, s) = net
                    .subnet_of(a)
                    .ok_or_else(|| FieldError::new("address", format!("{a} is in no subnet of network {}", net.fq_name)))?;
                if let Some(w) = wanted_subnet.filter(|w| *w != s.cidr) {
                    return Err(FieldError::new("address", format!("{a} is not in subnet {w}")).into());
                }
                let plan = s.layout().map_err(|e| FieldError::new("address", e.to_string()))?;
                plan.is_allocatable(a).map_err(|e| FieldError::new("address", e.to_string()))?;
                i
            }
            (None, Some(w)) => net
                .subnets
                .iter()
                .position(|s| s.cidr == w)
                .ok_or_else(|| FieldError::new("subnet", format!("{w} is not a subnet of network {}", net.fq_name)))?,
            (None, None) => return Err(FieldError::new("subnet", "name a subnet or an address to reserve").into()),
        };
        let subnet = net.subnets[index].clone();
        let owner = reservation_owner(&req.owner);
        let reservation = |address| Reservation { network: net.id, subnet: subnet.cidr, address, owner: req.owner.clone() };

        let lock = self.ipam_lock(net.id);
        let _guard = lock.lock().await;
        for _ in 0..MAX_ATTEMPTS {
            let prefix = keys::allocations_of(net.id, index);
            let address = match chosen {
                Some(a) => {
                    if let Some(kv) = self.store.get(&keys::allocation(net.id, index, a)).await? {
                        if kv.value == owner.as_bytes() {
                            return Ok(Created { object: reservation(a), created: false });
                        }
                        if take_over.as_ref().is_some_and(|from| kv.value == from.as_bytes()) {
                            let key = keys::allocation(net.id, index, a);
                            let txn = Txn::new().when(Compare::ValueEquals(key.clone(), kv.value)).then(put_str(key, &owner));
                            if self.commit(txn).await?.succeeded {
                                return Ok(Created { object: reservation(a), created: true });
                            }
                            continue;
                        }
                        return Err(Error::AlreadyExists {
                            what: format!("address {a} is already in use in network {}", net.fq_name),
                            field: Some("address".into()),
                        });
                    }
                    a
                }
                None => {
                    let held = self.store.range(&prefix).await?.kvs.into_iter().find(|kv| kv.value == owner.as_bytes());
                    if let Some(a) = held.and_then(|kv| tessera_ipam::parse_sort_key(&kv.key[prefix.len()..])) {
                        return Ok(Created { object: reservation(a), created: false });
                    }
                    self.allocate_in(net.id, &[(index, &subnet)]).await?.1
                }
            };
            let key = keys::allocation(net.id, index, address);
            let txn = Txn::new()
                .when(Compare::Exists(keys::network(net.id)))
                .when(Compare::Absent(key.clone()))
                .then(put_str(key, &owner));
            let r = self.commit(txn).await?;
            if r.succeeded {
                tracing::info!(network = %net.fq_name, address = %address, owner = %req.owner, "address reserved");
                return Ok(Created { object: reservation(address), created: true });
            }
            if r.failed.first() == Some(&0) {
                return Err(Error::NotFound { kind: "network", name: reference.into(), field: None });
            }
        }
        Err(Error::Conflict(format!("reservation in network {}", net.fq_name)))
    }

    /// The reserved (not yet adopted) addresses of a network.
    pub async fn list_reservations(&self, reference: &str) -> Result<Vec<Reservation>> {
        let (net, _) = self.find_network(reference).await?;
        let mut out = Vec::new();
        for (i, s) in net.subnets.iter().enumerate() {
            let prefix = keys::allocations_of(net.id, i);
            for kv in self.store.range(&prefix).await?.kvs {
                let Some(owner) = std::str::from_utf8(&kv.value).ok().and_then(|v| v.strip_prefix(RESERVATION_OWNER_PREFIX))
                else {
                    continue;
                };
                if let Some(address) = tessera_ipam::parse_sort_key(&kv.key[prefix.len()..]) {
                    out.push(Reservation { network: net.id, subnet: s.cidr, address, owner: owner.to_string() });
                }
            }
        }
        Ok(out)
    }

    /// Releases a reserved address, only if `owner` (when given) holds it.
    /// Releasing an address that is free, or a network that is gone, is Ok;
    /// an address an endpoint holds (or another owner reserved) is `in_use`.
    pub async fn release_reservation(&self, reference: &str, address: &str, owner: Option<&str>) -> Result<()> {
        let addr: IpAddr =
            address.trim().parse().map_err(|_| FieldError::new("address", format!("{address:?} is not an IP address")))?;
        if let Some(o) = owner {
            check_owner("owner", o)?;
        }
        let net = match self.find_network(reference).await {
            Ok((n, _)) => n,
            Err(Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let Some((index, _)) = net.subnet_of(addr) else { return Ok(()) };
        let key = keys::allocation(net.id, index, addr);
        for _ in 0..MAX_ATTEMPTS {
            let Some(kv) = self.store.get(&key).await? else { return Ok(()) };
            let holder = String::from_utf8_lossy(&kv.value).into_owned();
            let releasable = match owner {
                Some(o) => holder == reservation_owner(o),
                None => holder.starts_with(RESERVATION_OWNER_PREFIX),
            };
            if !releasable {
                return Err(Error::InUse { kind: "address", name: addr.to_string(), users: vec![holder] });
            }
            let txn = Txn::new().when(Compare::ValueEquals(key.clone(), kv.value)).then(del(key.clone()));
            if self.commit(txn).await?.succeeded {
                tracing::info!(network = %net.fq_name, address = %addr, owner = %holder, "reservation released");
                return Ok(());
            }
        }
        Err(Error::Conflict(format!("reservation of {addr}")))
    }

    // ------------------------------------------------------------------- hosts

    /// Registers a host or refreshes its underlay address and last-seen time. Idempotent.
    pub async fn register_host(&self, name: &str, req: HostRegister) -> Result<Host> {
        tessera_model::names::check_component(name).map_err(|r| FieldError::new("name", r))?;
        let underlay_ip: IpAddr = req
            .underlay_ip
            .trim()
            .parse()
            .map_err(|_| FieldError::new("underlay_ip", format!("{:?} is not an IP address", req.underlay_ip)))?;
        if underlay_ip.is_unspecified() || underlay_ip.is_multicast() {
            return Err(FieldError::new("underlay_ip", format!("{underlay_ip} cannot terminate tunnels")).into());
        }
        let host = Host { name: name.into(), underlay_ip, last_seen: now() };
        self.commit(Txn::new().then(put(keys::host(name), &host))).await?;
        tracing::info!(host = name, underlay = %underlay_ip, "host registered");
        Ok(host)
    }

    pub async fn get_host(&self, name: &str) -> Result<Host> {
        Ok(self.get_json(&keys::host(name)).await?.ok_or_else(|| Error::not_found("host", name))?.0)
    }

    pub async fn list_hosts(&self) -> Result<Vec<Host>> {
        self.list_json(keys::HOSTS).await
    }

    /// Removes a host that owns no endpoints. Removing a missing host is Ok.
    pub async fn delete_host(&self, name: &str) -> Result<()> {
        let users: Vec<String> = self
            .list_endpoints(&EndpointFilter { network: None, host: Some(name.into()) })
            .await?
            .into_iter()
            .map(|e| e.name)
            .collect();
        if !users.is_empty() {
            return Err(Error::InUse { kind: "host", name: name.into(), users });
        }
        self.commit(Txn::new().then(del(keys::host(name)))).await?;
        self.counters.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        Ok(())
    }

    // ---------------------------------------------------------------- policies

    /// The id of the policy `reference` names (an id, or a name resolved in
    /// `project`).
    async fn policy_id(&self, reference: &str, project: &ProjectName) -> Result<Uuid> {
        match reference.parse::<Uuid>() {
            Ok(id) => Ok(id),
            Err(_) => {
                let fq = FqName::resolve(reference, project).map_err(|r| FieldError::new("policy", r))?;
                let kv = self.store.get(&keys::policy_name(&fq)).await?.ok_or_else(|| Error::not_found("policy", reference))?;
                uuid_of(&kv)
            }
        }
    }

    async fn policy_header(&self, reference: &str) -> Result<(PolicyHeader, u64)> {
        let id = self.policy_id(reference, &ProjectName::default_project()).await?;
        self.get_json(&keys::policy(id)).await?.ok_or_else(|| Error::not_found("policy", reference))
    }

    /// The chunk of rules stored at `key` (listed without its value, at
    /// `mod_revision`): from the cache when it holds that revision, else
    /// read and parsed (once per revision). `None` when the key is gone.
    async fn chunk_at(&self, key: &str, mod_revision: u64) -> Result<Option<Arc<RuleChunk>>> {
        if let Some((rev, c)) = self.chunks.lock().unwrap_or_else(|p| p.into_inner()).get(key) {
            if *rev == mod_revision {
                return Ok(Some(c.clone()));
            }
        }
        let Some(kv) = self.store.get(key).await? else { return Ok(None) };
        let stored: PolicyRules = decode(&kv)?;
        let chunk = Arc::new(RuleChunk::new(stored.id, stored.rules));
        self.chunks.lock().unwrap_or_else(|p| p.into_inner()).insert(kv.key, (kv.mod_revision, chunk.clone()));
        Ok(Some(chunk))
    }

    /// A policy whole: its header (and the header's revision) and its
    /// chunks. The header and the chunks are separate reads; a change
    /// between them (a chunk missing, or of another length than the header
    /// says) is read again.
    async fn read_policy(&self, id: Uuid) -> Result<Option<(Policy, u64)>> {
        for _ in 0..MAX_ATTEMPTS {
            let Some((header, rev)) = self.get_json::<PolicyHeader>(&keys::policy(id)).await? else { return Ok(None) };
            let prefix = keys::policy_rules_of(id);
            // Keys and revisions only: the values of chunks already parsed
            // are not read again (a 50,000-rule policy is ~9 MB of them).
            let kvs = self.store.range_keys(&prefix).await?.kvs;
            let mut by_id = HashMap::new();
            for kv in &kvs {
                if let Some(c) = self.chunk_at(&kv.key, kv.mod_revision).await? {
                    by_id.insert(c.id, c);
                }
            }
            self.chunks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|k, _| !k.starts_with(&prefix) || kvs.iter().any(|kv| &kv.key == k));
            let chunks: Option<Vec<Arc<RuleChunk>>> =
                header.chunks.iter().map(|r| by_id.get(&r.id).filter(|c| c.rules.len() == r.len).cloned()).collect();
            if let Some(chunks) = chunks {
                return Ok(Some((Policy { id, fq_name: header.fq_name, rules: Rules::from_chunks(chunks) }, rev)));
            }
        }
        Err(Error::Conflict(format!("policy {id} changed while it was read")))
    }

    async fn find_policy_in(&self, reference: &str, project: &ProjectName) -> Result<(Policy, u64)> {
        let id = self.policy_id(reference, project).await?;
        self.read_policy(id).await?.ok_or_else(|| Error::not_found("policy", reference))
    }

    pub async fn get_policy(&self, reference: &str) -> Result<Policy> {
        Ok(self.find_policy_in(reference, &ProjectName::default_project()).await?.0)
    }

    /// A policy with the warnings about its rules and their hit counters.
    pub async fn show_policy(&self, reference: &str) -> Result<PolicyView> {
        let policy = self.get_policy(reference).await?;
        let counters = self.counters_of(&policy);
        Ok(PolicyView { counters: Some(counters), ..PolicyView::of(policy) })
    }

    /// The hit counters of a policy's rules, summed over hosts and per host.
    pub async fn policy_counters(&self, reference: &str) -> Result<PolicyCounters> {
        Ok(self.counters_of(&self.get_policy(reference).await?))
    }

    fn counters_of(&self, policy: &Policy) -> PolicyCounters {
        let reports = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        PolicyCounters::sum(policy.id, policy.rules.len(), reports.iter().map(|(h, r)| (h.as_str(), r)))
    }

    /// Replaces the hit counters `host` last reported. The host must be registered.
    pub async fn report_counters(&self, host: &str, report: HostCounters) -> Result<()> {
        self.get_host(host).await?;
        self.counters.lock().unwrap_or_else(|p| p.into_inner()).insert(host.to_string(), report);
        Ok(())
    }

    pub async fn list_policies(&self) -> Result<Vec<Policy>> {
        let headers: Vec<PolicyHeader> = self.list_json(keys::POLICIES).await?;
        let mut out = Vec::with_capacity(headers.len());
        for h in headers {
            // A policy deleted since the listing is left out.
            if let Some((p, _)) = self.read_policy(h.id).await? {
                out.push(p);
            }
        }
        out.sort_by(|a, b| a.fq_name.cmp(&b.fq_name));
        Ok(out)
    }

    /// Creates a policy whose rules name only existing networks. An identical
    /// policy of the same name is returned with `created: false`. Shadowed
    /// rules are stored, and warned about in the answer.
    pub async fn create_policy(&self, req: PolicyCreate) -> Result<Created<PolicyView>> {
        let default_project = project_of("project", &req.project)?;
        let fq_name = FqName::resolve(&req.name, &default_project).map_err(|r| FieldError::new("name", r))?;
        let rules = req.validate_rules(fq_name.project())?;
        self.require_project("project", fq_name.project()).await?;
        self.check_rule_networks(&rules).await?;
        let policy = Policy { id: Uuid::new_v4(), fq_name: fq_name.clone(), rules: Rules::from_vec(rules) };
        let txn = Txn::new()
            .when(Compare::Absent(keys::policy_name(&fq_name)))
            .then_all(policy_ops(&policy, &[]))
            .then(put_str(keys::policy_name(&fq_name), &policy.id.to_string()));
        if self.commit(txn).await?.succeeded {
            tracing::info!(policy = %fq_name, rules = policy.rules.len(), "policy created");
            return Ok(Created { object: PolicyView::of(policy), created: true });
        }
        let (existing, _) = self.find_policy_in(&fq_name.to_string(), &default_project).await?;
        if existing.rules == policy.rules {
            return Ok(Created { object: PolicyView::of(existing), created: false });
        }
        Err(Error::AlreadyExists {
            what: format!("policy {fq_name} already exists with different rules"),
            field: Some("name".into()),
        })
    }

    /// Replaces a policy's rules; the rules must name only existing networks.
    /// Shadowed rules are stored, and warned about in the answer. Chunks of
    /// rules that did not change are kept (not written, not sent to agents).
    pub async fn update_policy(&self, reference: &str, req: PolicyUpdate) -> Result<PolicyView> {
        for _ in 0..MAX_ATTEMPTS {
            let (old, rev) = self.find_policy_in(reference, &ProjectName::default_project()).await?;
            let rules = req.validate_rules(old.fq_name.project())?;
            self.check_rule_networks(&rules).await?;
            let policy = Policy { rules: rechunk(&old.rules, rules), ..old.clone() };
            let old_refs = PolicyHeader::of(&old).chunks;
            let txn =
                Txn::new().when(Compare::ModRevision(keys::policy(policy.id), rev)).then_all(policy_ops(&policy, &old_refs));
            if self.commit(txn).await?.succeeded {
                tracing::info!(policy = %policy.fq_name, rules = policy.rules.len(), "policy updated");
                return Ok(PolicyView::of(policy));
            }
        }
        Err(Error::Conflict(format!("policy {reference}")))
    }

    /// Replaces rule `index` of a policy (one chunk written). The answer
    /// carries the warnings that involve the rule.
    pub async fn set_rule(&self, reference: &str, index: usize, spec: RuleSpec) -> Result<RuleChange> {
        self.edit_rule(reference, RuleEdit::Set(index, spec)).await
    }

    /// Inserts a rule before rule `at` (at the end without `at`).
    pub async fn insert_rule(&self, reference: &str, req: RuleInsert) -> Result<RuleChange> {
        self.edit_rule(reference, RuleEdit::Insert(req.at, req.rule)).await
    }

    /// Removes rule `index` of a policy.
    pub async fn delete_rule(&self, reference: &str, index: usize) -> Result<RuleChange> {
        self.edit_rule(reference, RuleEdit::Delete(index)).await
    }

    /// One rule-level edit: reads the header and the one chunk the rule is
    /// in, writes that chunk (and the header when the chunk's length
    /// changes), each compared with the revision it was read at.
    async fn edit_rule(&self, reference: &str, edit: RuleEdit) -> Result<RuleChange> {
        let started = std::time::Instant::now();
        for _ in 0..MAX_ATTEMPTS {
            let (mut header, rev) = self.policy_header(reference).await?;
            let total: usize = header.chunks.iter().map(|c| c.len).sum();
            let new_rule = match &edit {
                RuleEdit::Set(_, spec) | RuleEdit::Insert(_, spec) => {
                    let rule = tessera_model::policy::validate_rules(std::slice::from_ref(spec), header.fq_name.project())
                        .map_err(|e| FieldError::new(e.field.replacen("rules[0]", "rule", 1), e.reason))?
                        .remove(0);
                    self.check_rule_networks(std::slice::from_ref(&rule)).await.map_err(|e| match e {
                        Error::NotFound { kind, name, field } => {
                            Error::NotFound { kind, name, field: field.map(|f| f.replacen("rules[0]", "rule", 1)) }
                        }
                        e => e,
                    })?;
                    Some(rule)
                }
                RuleEdit::Delete(_) => None,
            };
            let (index, append) = match &edit {
                RuleEdit::Set(i, _) | RuleEdit::Delete(i) => (*i, false),
                RuleEdit::Insert(at, _) => match at {
                    Some(i) if *i <= total => (*i, *i == total),
                    Some(i) => {
                        return Err(FieldError::new("at", format!("{i} is past the end: the policy has {total} rules")).into())
                    }
                    None => (total, true),
                },
            };
            if !append && index >= total {
                return Err(Error::NotFound {
                    kind: "rule",
                    name: format!("{index} of policy {} ({total} rules)", header.fq_name),
                    field: Some("index".into()),
                });
            }
            // The chunk the rule is in (for an append: the last one).
            let mut start = 0;
            let mut at = None;
            for (c, r) in header.chunks.iter().enumerate() {
                if index < start + r.len || (append && c + 1 == header.chunks.len()) {
                    at = Some((c, index - start));
                    break;
                }
                start += r.len;
            }
            let mut txn = Txn::new().when(Compare::ModRevision(keys::policy(header.id), rev));
            let next_id = header.chunks.iter().map(|c| c.id + 1).max().unwrap_or(0);
            match at {
                None => {
                    // An empty policy: the first chunk.
                    let rule = new_rule.clone().expect("only an insert reaches an empty policy");
                    let chunk = PolicyRules { policy: header.id, id: next_id, rules: vec![rule] };
                    txn = txn
                        .when(Compare::Absent(keys::policy_rules(header.id, next_id)))
                        .then(put(keys::policy_rules(header.id, next_id), &chunk));
                    header.chunks.push(ChunkRef { id: next_id, len: 1 });
                    txn = txn.then(put(keys::policy(header.id), &header));
                }
                Some((c, offset)) => {
                    let cref = header.chunks[c];
                    let key = keys::policy_rules(header.id, cref.id);
                    let kv = self.store.get(&key).await?.ok_or_else(|| Error::Conflict(format!("policy {reference}")))?;
                    let mut chunk: PolicyRules = decode(&kv)?;
                    if chunk.rules.len() != cref.len {
                        continue;
                    }
                    txn = txn.when(Compare::ModRevision(key.clone(), kv.mod_revision));
                    match &edit {
                        RuleEdit::Set(..) => {
                            chunk.rules[offset] = new_rule.clone().expect("a set has a rule");
                            txn = txn.then(put(key, &chunk));
                        }
                        RuleEdit::Insert(..) => {
                            chunk.rules.insert(offset, new_rule.clone().expect("an insert has a rule"));
                            if chunk.rules.len() > RULE_CHUNK {
                                let tail = chunk.rules.split_off(chunk.rules.len() / 2);
                                let second = PolicyRules { policy: header.id, id: next_id, rules: tail };
                                header.chunks.insert(c + 1, ChunkRef { id: next_id, len: second.rules.len() });
                                txn = txn.then(put(keys::policy_rules(header.id, next_id), &second));
                            }
                            header.chunks[c].len = chunk.rules.len();
                            txn = txn.then(put(key, &chunk)).then(put(keys::policy(header.id), &header));
                        }
                        RuleEdit::Delete(_) => {
                            chunk.rules.remove(offset);
                            if chunk.rules.is_empty() {
                                header.chunks.remove(c);
                                txn = txn.then(put(keys::policy(header.id), &header)).then(del(key));
                            } else {
                                header.chunks[c].len = chunk.rules.len();
                                txn = txn.then(put(key, &chunk)).then(put(keys::policy(header.id), &header));
                            }
                        }
                    }
                }
            }
            if !self.commit(txn).await?.succeeded {
                continue;
            }
            let rules = header.chunks.iter().map(|c| c.len).sum();
            let stored_ms = started.elapsed().as_secs_f64() * 1e3;
            tracing::info!(policy = %header.fq_name, index, rules, stored_ms, "policy rule {}", edit.verb());
            // Warnings come after the change is stored (and on its way to
            // the agents): they compare the rule with every other one (the
            // chunks are parsed only where they changed).
            let warnings = match (&edit, self.read_policy(header.id).await?) {
                (RuleEdit::Set(..) | RuleEdit::Insert(..), Some((p, _))) => {
                    tessera_model::shadow::warnings_about(p.rules.iter(), index)
                }
                _ => Vec::new(),
            };
            tracing::debug!(policy = %header.fq_name, elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "rule edit answered");
            return Ok(RuleChange { policy: header.id, fq_name: header.fq_name, index, rule: new_rule, rules, warnings });
        }
        Err(Error::Conflict(format!("policy {reference}")))
    }

    /// Checks that every network the rules name exists: each distinct name
    /// once (a 50,000-rule policy names a handful of networks), the error
    /// naming the first rule that uses a missing one.
    async fn check_rule_networks(&self, rules: &[tessera_model::Rule]) -> Result<()> {
        let mut first_use: BTreeMap<&FqName, (usize, &str)> = BTreeMap::new();
        for (i, rule) in rules.iter().enumerate() {
            for (side, ep) in [("src", &rule.src), ("dst", &rule.dst)] {
                if let tessera_model::RuleEndpoint::Network(n) = ep {
                    first_use.entry(n).or_insert((i, side));
                }
            }
        }
        let mut missing: Option<(usize, &str, &FqName)> = None;
        for (n, (i, side)) in first_use {
            if self.store.get(&keys::network_name(n)).await?.is_none() && missing.is_none_or(|(j, _, _)| i < j) {
                missing = Some((i, side, n));
            }
        }
        match missing {
            Some((i, side, n)) => {
                Err(Error::NotFound { kind: "network", name: n.to_string(), field: Some(format!("rules[{i}].{side}")) })
            }
            None => Ok(()),
        }
    }

    /// Deletes a policy attached to no network. Deleting a missing policy is Ok.
    pub async fn delete_policy(&self, reference: &str) -> Result<()> {
        let (policy, rev) = match self.find_policy_in(reference, &ProjectName::default_project()).await {
            Ok(p) => p,
            Err(Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let users: Vec<String> = self
            .list_networks(None)
            .await?
            .into_iter()
            .filter(|n| n.policies.contains(&policy.id))
            .map(|n| n.fq_name.to_string())
            .collect();
        if !users.is_empty() {
            return Err(Error::InUse { kind: "policy", name: policy.fq_name.to_string(), users });
        }
        let mut txn = Txn::new()
            .when(Compare::ModRevision(keys::policy(policy.id), rev))
            .then(del(keys::policy(policy.id)))
            .then(del(keys::policy_name(&policy.fq_name)));
        for c in policy.rules.chunks() {
            txn = txn.then(del(keys::policy_rules(policy.id, c.id)));
        }
        if self.commit(txn).await?.succeeded {
            return Ok(());
        }
        Err(Error::Conflict(format!("policy {reference}")))
    }
}

/// A rule-level edit of a policy.
enum RuleEdit {
    Set(usize, RuleSpec),
    Insert(Option<usize>, RuleSpec),
    Delete(usize),
}

impl RuleEdit {
    fn verb(&self) -> &'static str {
        match self {
            RuleEdit::Set(..) => "replaced",
            RuleEdit::Insert(..) => "inserted",
            RuleEdit::Delete(_) => "deleted",
        }
    }
}

/// The store operations that write `policy`: its chunks that `old` (the
/// chunks stored now) does not hold, then its header, then deletions of the
/// chunks of `old` it no longer has. Chunks first: an agent assembles a
/// policy when its header arrives.
fn policy_ops(policy: &Policy, old: &[ChunkRef]) -> Vec<Op> {
    let mut ops = Vec::new();
    for c in policy.rules.chunks() {
        if !old.iter().any(|o| o.id == c.id) {
            let stored = PolicyRules { policy: policy.id, id: c.id, rules: c.rules.clone() };
            ops.push(put(keys::policy_rules(policy.id, c.id), &stored));
        }
    }
    ops.push(put(keys::policy(policy.id), &PolicyHeader::of(policy)));
    for o in old {
        if !policy.rules.chunks().iter().any(|c| c.id == o.id) {
            ops.push(del(keys::policy_rules(policy.id, o.id)));
        }
    }
    ops
}

/// `rules` in chunks: a chunk equal to one of `old` at the same place keeps
/// it (its id, not rewritten); the others get new ids, so that an agent
/// takes them in only with the header that lists them.
fn rechunk(old: &Rules, rules: Vec<tessera_model::Rule>) -> Rules {
    let fresh = Rules::from_vec(rules);
    let mut next = old.chunks().iter().map(|c| c.id + 1).max().unwrap_or(0);
    let chunks = fresh.chunks().iter().enumerate().map(|(i, c)| match old.chunks().get(i) {
        Some(o) if o.rules == c.rules => o.clone(),
        _ => {
            next += 1;
            Arc::new(RuleChunk::new(next - 1, c.rules.clone()))
        }
    });
    Rules::from_chunks(chunks.collect::<Vec<_>>())
}

fn merge(into: &mut Vec<RouteTarget>, more: Vec<RouteTarget>) {
    for rt in more {
        if !into.contains(&rt) {
            into.push(rt);
        }
    }
}
