//! Networks: a VNI, subnets, route targets and attached policies, unique by
//! name in their project and by VNI. A network can be deleted only once it
//! holds no endpoints; its address allocations go with it.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tessera_model::limits;
use tessera_model::network::{parse_projects, parse_route_targets, validate_subnets};
use tessera_model::{FieldError, FqName, Network, NetworkCreate, NetworkUpdate, ProjectName, RouteTarget, Subnet, Vni};
use tessera_store::{Compare, Op};
use uuid::Uuid;

use super::controller::{Controller, Created};
use super::projects::{parse_project, project_of};
use super::txn::{del, put, put_str, uuid_of, Guard, GuardedTxn, Outcome, MAX_ATTEMPTS};
use crate::error::{Error, Result};
use crate::keys;

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

// ---------------------------------------------------------------- validation

/// A [`NetworkCreate`] checked on its own (its project and policies are
/// looked up afterwards).
struct CheckedCreate {
    fq_name: FqName,
    subnets: Vec<Subnet>,
    /// The VNI the request chose, if any.
    vni: Option<Vni>,
    import_targets: Vec<RouteTarget>,
    export_targets: Vec<RouteTarget>,
    shared_with: Vec<ProjectName>,
}

/// Checks a create request, reporting the first field at fault in the
/// order name, subnets, VNI, route targets, labels, policies, and then that
/// there is a subnet at all.
fn validate_create(req: &NetworkCreate) -> Result<CheckedCreate> {
    let default_project = project_of("project", &req.project)?;
    let fq_name = FqName::resolve(&req.name, &default_project).map_err(|r| FieldError::new("name", r))?;
    let subnets = validate_subnets(&req.subnets)?;
    let vni = req.vni.map(|v| Vni::new(v).map_err(|r| FieldError::new("vni", r))).transpose()?;
    let both = parse_route_targets("route_targets", &req.route_targets)?;
    let mut import_targets = both.clone();
    let mut export_targets = both;
    merge(&mut import_targets, parse_route_targets("import_targets", &req.import_targets)?);
    merge(&mut export_targets, parse_route_targets("export_targets", &req.export_targets)?);
    limits::check_labels("labels", req.labels.iter())?;
    limits::check_count("policies", &req.policies, limits::MAX_POLICIES, "policies")?;
    let shared_with = parse_projects("shared_with", &req.shared_with)?;
    if subnets.is_empty() {
        return Err(FieldError::new("subnets", "a network needs at least one subnet").into());
    }
    Ok(CheckedCreate { fq_name, subnets, vni, import_targets, export_targets, shared_with })
}

/// The route-target changes of a [`NetworkUpdate`], parsed.
struct TargetChanges {
    add_both: Vec<RouteTarget>,
    remove_both: Vec<RouteTarget>,
    add_import: Vec<RouteTarget>,
    remove_import: Vec<RouteTarget>,
    add_export: Vec<RouteTarget>,
    remove_export: Vec<RouteTarget>,
    share_with: Vec<ProjectName>,
    unshare_with: Vec<ProjectName>,
}

fn validate_update(req: &NetworkUpdate) -> Result<TargetChanges> {
    limits::check_count("attach_policies", &req.attach_policies, limits::MAX_POLICIES, "policies")?;
    limits::check_count("detach_policies", &req.detach_policies, limits::MAX_POLICIES, "policies")?;
    Ok(TargetChanges {
        add_both: parse_route_targets("add_route_targets", &req.add_route_targets)?,
        remove_both: parse_route_targets("remove_route_targets", &req.remove_route_targets)?,
        add_import: parse_route_targets("add_import_targets", &req.add_import_targets)?,
        remove_import: parse_route_targets("remove_import_targets", &req.remove_import_targets)?,
        add_export: parse_route_targets("add_export_targets", &req.add_export_targets)?,
        remove_export: parse_route_targets("remove_export_targets", &req.remove_export_targets)?,
        share_with: parse_projects("share_with", &req.share_with)?,
        unshare_with: parse_projects("unshare_with", &req.unshare_with)?,
    })
}

impl TargetChanges {
    /// Adds, then removes; adding what is there and removing what is not are no-ops.
    fn apply(&self, net: &mut Network) {
        merge(&mut net.import_targets, self.add_both.iter().chain(&self.add_import).copied().collect());
        merge(&mut net.export_targets, self.add_both.iter().chain(&self.add_export).copied().collect());
        net.import_targets.retain(|rt| !self.remove_both.contains(rt) && !self.remove_import.contains(rt));
        net.export_targets.retain(|rt| !self.remove_both.contains(rt) && !self.remove_export.contains(rt));
        for p in &self.share_with {
            if !net.shared_with.contains(p) {
                net.shared_with.push(p.clone());
            }
        }
        net.shared_with.retain(|p| !self.unshare_with.contains(p));
    }
}

fn merge(into: &mut Vec<RouteTarget>, more: Vec<RouteTarget>) {
    for rt in more {
        if !into.contains(&rt) {
            into.push(rt);
        }
    }
}

// ---------------------------------------------------------------- operations

impl Controller {
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
        let project: Option<ProjectName> = project.map(parse_project).transpose()?;
        let mut nets: Vec<Network> = self.list_json(keys::NETWORKS).await?;
        nets.retain(|n| project.as_ref().is_none_or(|p| n.fq_name.project() == p));
        nets.sort_by(|a, b| a.fq_name.cmp(&b.fq_name));
        Ok(nets)
    }

    /// The ids of the policies `refs` name (in `project`), in order, each
    /// once; a missing one is `not_found` at `field[i]`.
    async fn resolve_policies(&self, field: &str, refs: &[String], project: &ProjectName) -> Result<Vec<Uuid>> {
        let mut out = Vec::new();
        for (i, r) in refs.iter().enumerate() {
            let p = self.find_policy_in(r, project).await.map_err(|e| match e {
                Error::NotFound { kind, name, .. } => Error::NotFound { kind, name, field: Some(format!("{field}[{i}]")) },
                other => other,
            })?;
            if p.0.fq_name.project() != project {
                let reason = format!(
                    "policy {} is project {}'s: a network of {project} attaches only policies of its own project",
                    p.0.fq_name,
                    p.0.fq_name.project()
                );
                return Err(FieldError::new(format!("{field}[{i}]"), reason).into());
            }
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
        let CheckedCreate { fq_name, subnets, vni: chosen_vni, import_targets, export_targets, shared_with } =
            validate_create(&req)?;
        self.require_project("project", fq_name.project()).await?;
        for (i, p) in shared_with.iter().enumerate() {
            self.require_project(&format!("shared_with[{i}]"), p).await?;
        }
        let policies = self.resolve_policies("policies", &req.policies, fq_name.project()).await?;
        let domain = req.domain.as_deref().map(str::trim).filter(|d| !d.is_empty()).map(str::to_string);
        if let Some(d) = &domain {
            tessera_model::network::check_domain("domain", d)?;
        }
        if req.external {
            // The outside has one address plan: external networks never overlap.
            for other in self.list_json::<Network>(keys::NETWORKS).await?.iter().filter(|n| n.external && n.fq_name != fq_name) {
                for (i, s) in subnets.iter().enumerate() {
                    if let Some(o) =
                        other.subnets.iter().find(|o| o.cidr.contains(&s.cidr.network()) || s.cidr.contains(&o.cidr.network()))
                    {
                        return Err(FieldError::new(
                            format!("subnets[{i}]"),
                            format!("{} overlaps {} of external network {}", s.cidr, o.cidr, other.fq_name),
                        )
                        .into());
                    }
                }
            }
        }

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
                shared_with: shared_with.clone(),
                external: req.external,
                snat: None,
                domain: domain.clone(),
                policies: policies.clone(),
                labels: req.labels.clone(),
            };
            let mut txn = GuardedTxn::new()
                .guard(Guard::NameTaken, Compare::Absent(keys::network_name(&fq_name)))
                .guard(Guard::VniTaken, Compare::Absent(keys::vni(vni)))
                .guard(Guard::ProjectMissing, Compare::Exists(keys::project(fq_name.project())));
            for p in &policies {
                txn = txn.guard(Guard::PolicyMissing(*p), Compare::Exists(keys::policy(*p)));
            }
            let txn = txn
                .then(put(keys::network(network.id), &network))
                .then(put_str(keys::network_name(&fq_name), &network.id.to_string()))
                .then(put_str(keys::vni(vni), &network.id.to_string()));
            match self.commit(txn).await? {
                Outcome::Committed => {
                    tracing::info!(network = %fq_name, vni = %vni, "network created");
                    return Ok(Created { object: network, created: true });
                }
                Outcome::Refused(Guard::NameTaken) => {
                    let (existing, _) = self.find_network(&fq_name.to_string()).await?;
                    let same = existing.subnets == network.subnets
                        && existing.import_targets == network.import_targets
                        && existing.export_targets == network.export_targets
                        && existing.shared == network.shared
                        && existing.shared_with == network.shared_with
                        && existing.external == network.external
                        && existing.policies == network.policies
                        && existing.labels == network.labels
                        && existing.domain == network.domain
                        && chosen_vni.is_none_or(|v| v == existing.vni);
                    if same {
                        return Ok(Created { object: existing, created: false });
                    }
                    return Err(Error::AlreadyExists {
                        what: format!("network {fq_name} already exists with different settings"),
                        field: Some("name".into()),
                    });
                }
                Outcome::Refused(Guard::VniTaken) if chosen_vni.is_some() => {
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
                // Another network took the lowest free VNI first: pick again.
                Outcome::Refused(Guard::VniTaken) => continue,
                Outcome::Refused(Guard::ProjectMissing) => {
                    return Err(Error::NotFound {
                        kind: "project",
                        name: fq_name.project().to_string(),
                        field: Some("project".into()),
                    })
                }
                // Guard::PolicyMissing: an attached policy was deleted meanwhile.
                Outcome::Refused(_) => {
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
        let targets = validate_update(&req)?;
        for (i, p) in targets.share_with.iter().enumerate() {
            self.require_project(&format!("share_with[{i}]"), p).await?;
        }
        for _ in 0..MAX_ATTEMPTS {
            let (mut net, rev) = self.find_network(reference).await?;
            let project = net.fq_name.project().clone();
            let attach = self.resolve_policies("attach_policies", &req.attach_policies, &project).await?;
            let detach = self.resolve_policies("detach_policies", &req.detach_policies, &project).await?;
            targets.apply(&mut net);
            for p in attach {
                if !net.policies.contains(&p) {
                    net.policies.push(p);
                }
            }
            net.policies.retain(|p| !detach.contains(p));
            if net.policies.len() > limits::MAX_POLICIES {
                return Err(FieldError::new(
                    "attach_policies",
                    format!("would attach {} policies; at most {} are allowed", net.policies.len(), limits::MAX_POLICIES),
                )
                .into());
            }
            if net.shared_with.len() > limits::MAX_SHARED_WITH {
                return Err(FieldError::new(
                    "share_with",
                    format!(
                        "would share with {} projects; at most {} are allowed",
                        net.shared_with.len(),
                        limits::MAX_SHARED_WITH
                    ),
                )
                .into());
            }
            if let Some(s) = req.shared {
                net.shared = s;
            }
            if let Some(d) = &req.domain {
                let d = d.trim();
                if !d.is_empty() {
                    tessera_model::network::check_domain("domain", d)?;
                }
                net.domain = (!d.is_empty()).then(|| d.to_string());
            }
            if let Some(list) = &req.dns_servers {
                limits::check_count("dns_servers", list, limits::MAX_DNS_SERVERS, "DNS servers")?;
                let mut servers = Vec::new();
                for (i, s) in list.iter().enumerate() {
                    let a: IpAddr = s
                        .trim()
                        .parse()
                        .map_err(|_| FieldError::new(format!("dns_servers[{i}]"), format!("{s:?} is not an IP address")))?;
                    if !net.subnets.iter().any(|sub| sub.cidr.addr().is_ipv4() == a.is_ipv4()) {
                        return Err(FieldError::new(format!("dns_servers[{i}]"), format!("no subnet of {a}'s family")).into());
                    }
                    servers.push(a);
                }
                for sub in &mut net.subnets {
                    sub.dns_servers = servers.iter().copied().filter(|a| a.is_ipv4() == sub.cidr.addr().is_ipv4()).collect();
                }
            }
            if req.external.is_some_and(|e| e != net.external) {
                return Err(FieldError::new(
                    "external",
                    format!(
                        "network {} is {}external: whether a network is external is fixed when it is made",
                        net.fq_name,
                        if net.external { "" } else { "not " }
                    ),
                )
                .into());
            }
            let mut txn = GuardedTxn::new().guard(Guard::NetworkChanged, Compare::ModRevision(keys::network(net.id), rev));
            let _egress;
            if let Some(reference) = &req.snat {
                _egress = self.egress_lock.lock().await;
                let (snat, t) = self.snat_change(&net, reference, txn).await?;
                net.snat = snat;
                txn = t;
            }
            for p in &net.policies {
                txn = txn.guard(Guard::PolicyMissing(*p), Compare::Exists(keys::policy(*p)));
            }
            // Refused (Guard::NetworkChanged or PolicyMissing): read again.
            if self.commit(txn.then(put(keys::network(net.id), &net))).await?.is_committed() {
                tracing::info!(network = %net.fq_name, "network updated");
                return Ok(net);
            }
        }
        Err(Error::Conflict(format!("network {reference}")))
    }

    /// Deletes a network with no endpoints, its indexes and its (empty) IPAM
    /// state. Deleting a missing network is Ok.
    pub async fn delete_network(&self, reference: &str) -> Result<()> {
        let (net, rev) = match self.find_network(reference).await {
            Ok(n) => n,
            Err(Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let eps = keys::endpoints_of(net.id);
        let txn = GuardedTxn::new()
            .guard(Guard::NetworkHasEndpoints, Compare::PrefixEmpty(eps.clone()))
            .guard(Guard::NetworkHasServices, Compare::PrefixEmpty(keys::services_of_network(net.id)));
        let txn = self
            .external_guards(&net, txn)
            .guard(Guard::NetworkChanged, Compare::ModRevision(keys::network(net.id), rev))
            .then(del(keys::network(net.id)))
            .then(del(keys::network_name(&net.fq_name)))
            .then(del(keys::vni(net.vni)))
            .then(Op::DeletePrefix { prefix: keys::allocations_of_network(net.id) })
            .then_all(self.snat_release_ops(&net).await?);
        match self.commit(txn).await? {
            Outcome::Committed => {
                tracing::info!(network = %net.fq_name, "network deleted");
                return Ok(());
            }
            Outcome::Refused(guard @ (Guard::NetworkHasFloatingIps | Guard::NetworkHasSnatUsers)) => {
                let (prefix, what) = match guard {
                    Guard::NetworkHasFloatingIps => (keys::floating_ips_of(net.id), "floating IP"),
                    _ => (keys::snat_users_of(net.id), "SNAT of network"),
                };
                let kvs = self.store.range(&prefix).await?.kvs;
                let users = kvs.iter().map(|kv| format!("{what} {}", &kv.key[prefix.len()..])).collect();
                return Err(Error::InUse { kind: "network", name: net.fq_name.to_string(), users });
            }
            Outcome::Refused(Guard::NetworkChanged) => {
                return Err(Error::Conflict(format!("network {} changed; try again", net.fq_name)))
            }
            Outcome::Refused(Guard::NetworkHasServices) => {
                let users = self.service_names(&keys::services_of_network(net.id)).await?;
                return Err(Error::InUse { kind: "network", name: net.fq_name.to_string(), users });
            }
            Outcome::Refused(_) => {}
        }
        // Guard::NetworkHasEndpoints: name them.
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
}
