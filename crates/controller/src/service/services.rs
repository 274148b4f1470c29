//! Service chaining: service templates, services (a function between a
//! left and a right network), their instances (endpoints whose owner is a
//! [`ServicePort`]) and the chains policy rules name (`apply-service`).
//!
//! A chain goes from the rule's source network to its destination network
//! through its services in order: the first service's left network is the
//! source, each next service's left network is the one before's right
//! network, and the last's right network is the destination. A service
//! whose left and right are one network would loop, and is refused.

use std::collections::HashMap;

use tessera_model::service::instances_of;
use tessera_model::{
    limits, Endpoint, EndpointStatus, FieldError, FqName, Health, HealthReport, InstancePort, InstanceView, InterfaceRole,
    Network, Owner, ProjectName, Rule, Service, ServiceCreate, ServiceRun, ServiceTemplate, ServiceTemplateCreate, ServiceView,
};
use tessera_store::{Compare, Op};
use uuid::Uuid;

use super::controller::{Controller, Created};
use super::projects::project_of;
use super::txn::{del, put, put_str, uuid_of, Guard, GuardedTxn, Outcome, MAX_ATTEMPTS};
use crate::error::{Error, Result};
use crate::keys;

// ---------------------------------------------------------------- validation

fn not_found_in(e: Error, field: &str) -> Error {
    match e {
        Error::NotFound { kind, name, .. } => Error::NotFound { kind, name, field: Some(field.into()) },
        other => other,
    }
}

/// Whether an instance's interfaces are all programmed and reported
/// healthy, and why not.
fn instance_health(ports: &[&Endpoint]) -> (bool, Option<String>) {
    for p in ports {
        let role = p.owner.service.as_ref().map_or("?", |s| s.role.ifname());
        if p.status != EndpointStatus::Active {
            return (false, Some(format!("{role}: not programmed ({:?})", p.status).to_lowercase()));
        }
        match &p.health {
            Some(Health { healthy: true, .. }) => {}
            Some(Health { message, .. }) => {
                return (false, Some(format!("{role}: {}", message.as_deref().unwrap_or("unhealthy"))));
            }
            None => return (false, Some(format!("{role}: not checked yet"))),
        }
    }
    (true, None)
}

// ---------------------------------------------------------------- operations

impl Controller {
    pub async fn create_service_template(&self, req: ServiceTemplateCreate) -> Result<Created<ServiceTemplate>> {
        let project = project_of("project", &req.project)?;
        let fq_name = FqName::resolve(&req.name, &project).map_err(|r| FieldError::new("name", r))?;
        let (mode, interfaces) = req.validate()?;
        self.require_project("project", fq_name.project()).await?;
        let t = ServiceTemplate { id: Uuid::new_v4(), fq_name: fq_name.clone(), mode, interfaces };
        let txn = GuardedTxn::new()
            .guard(Guard::NameTaken, Compare::Absent(keys::service_template_name(&fq_name)))
            .then(put(keys::service_template(t.id), &t))
            .then(put_str(keys::service_template_name(&fq_name), &t.id.to_string()));
        if self.commit(txn).await?.is_committed() {
            tracing::info!(template = %fq_name, "service template created");
            return Ok(Created { object: t, created: true });
        }
        let existing = self.get_service_template(&fq_name.to_string()).await?;
        if existing.mode == t.mode && existing.interfaces == t.interfaces {
            return Ok(Created { object: existing, created: false });
        }
        Err(Error::AlreadyExists {
            what: format!("service template {fq_name} already exists with other interfaces or mode"),
            field: Some("name".into()),
        })
    }

    async fn service_template_id(&self, reference: &str) -> Result<Uuid> {
        if let Ok(id) = reference.parse::<Uuid>() {
            return Ok(id);
        }
        let fq = FqName::resolve(reference, &ProjectName::default_project()).map_err(|r| FieldError::new("template", r))?;
        let kv = self
            .store
            .get(&keys::service_template_name(&fq))
            .await?
            .ok_or_else(|| Error::not_found("service template", reference))?;
        uuid_of(&kv)
    }

    pub async fn get_service_template(&self, reference: &str) -> Result<ServiceTemplate> {
        let id = self.service_template_id(reference).await?;
        Ok(self.get_json(&keys::service_template(id)).await?.ok_or_else(|| Error::not_found("service template", reference))?.0)
    }

    pub async fn list_service_templates(&self) -> Result<Vec<ServiceTemplate>> {
        let mut out: Vec<ServiceTemplate> = self.list_json(keys::SERVICE_TEMPLATES).await?;
        out.sort_by(|a, b| a.fq_name.cmp(&b.fq_name));
        Ok(out)
    }

    /// Deletes a template no service is made from. Deleting a missing one is Ok.
    pub async fn delete_service_template(&self, reference: &str) -> Result<()> {
        let t = match self.get_service_template(reference).await {
            Ok(t) => t,
            Err(Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let users = keys::services_of_template(t.id);
        let txn = GuardedTxn::new()
            .guard(Guard::TemplateHasServices, Compare::PrefixEmpty(users.clone()))
            .then(del(keys::service_template(t.id)))
            .then(del(keys::service_template_name(&t.fq_name)));
        if self.commit(txn).await?.is_committed() {
            tracing::info!(template = %t.fq_name, "service template deleted");
            return Ok(());
        }
        let users = self.service_names(&users).await?;
        Err(Error::InUse { kind: "service template", name: t.fq_name.to_string(), users })
    }

    /// The fq names of the services whose ids end the keys under `prefix`.
    pub(super) async fn service_names(&self, prefix: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for kv in self.store.range(prefix).await?.kvs {
            let id = kv.key[prefix.len()..].parse::<Uuid>().ok();
            match id {
                Some(id) => match self.get_json::<Service>(&keys::service(id)).await? {
                    Some((s, _)) => out.push(format!("service {}", s.fq_name)),
                    None => out.push(format!("service {id}")),
                },
                None => out.push(kv.key[prefix.len()..].to_string()),
            }
        }
        Ok(out)
    }

    /// Creates a service between two networks of (or shared with) its
    /// project, from a template; a service whose left and right are one
    /// network, or whose management network the template does not have, is
    /// refused.
    pub async fn create_service(&self, req: ServiceCreate) -> Result<Created<Service>> {
        let project = project_of("project", &req.project)?;
        let fq_name = FqName::resolve(&req.name, &project).map_err(|r| FieldError::new("name", r))?;
        self.require_project("project", fq_name.project()).await?;
        let template = self.get_service_template(&req.template).await.map_err(|e| not_found_in(e, "template"))?;
        let owner = fq_name.project().clone();
        let owner = &owner;
        let network = |field: &'static str, reference: String| async move {
            let (net, _) = self.find_network(&reference).await.map_err(|e| not_found_in(e, field))?;
            if net.external {
                return Err(FieldError::new(
                    field,
                    format!("network {} is external: a service sits between networks", net.fq_name),
                )
                .into());
            }
            if !net.usable_by(owner) {
                return Err(FieldError::new(field, format!("network {} is not shared with project {owner}", net.fq_name)).into());
            }
            Ok::<Network, Error>(net)
        };
        let left = network("left", req.left.clone()).await?;
        let right = network("right", req.right.clone()).await?;
        if left.id == right.id {
            return Err(FieldError::new(
                "right",
                format!(
                    "left and right are both network {}: traffic leaving the service would enter it again (a chain loop)",
                    left.fq_name
                ),
            )
            .into());
        }
        let management = match (&req.management, template.interfaces.contains(&InterfaceRole::Management)) {
            (Some(m), true) => {
                let m = network("management", m.clone()).await?;
                if m.id == left.id || m.id == right.id {
                    return Err(FieldError::new("management", "the management network must differ from left and right").into());
                }
                Some(m)
            }
            (Some(_), false) => {
                return Err(
                    FieldError::new("management", format!("template {} has no management interface", template.fq_name)).into()
                )
            }
            (None, true) => {
                return Err(FieldError::new(
                    "management",
                    format!("template {} has a management interface: name its network", template.fq_name),
                )
                .into())
            }
            (None, false) => None,
        };
        if let Some(run) = &req.run {
            run.validate()?;
            for (i, h) in run.hosts.iter().enumerate() {
                if self.store.get(&keys::host(h)).await?.is_none() {
                    return Err(Error::NotFound {
                        kind: "host",
                        name: format!("{h} (no agent has registered it: instances run where an agent does)"),
                        field: Some(format!("run.hosts[{i}]")),
                    });
                }
            }
        }
        let service = Service {
            id: Uuid::new_v4(),
            fq_name: fq_name.clone(),
            template: template.id,
            left: left.id,
            right: right.id,
            management: management.as_ref().map(|m| m.id),
            fail: req.fail.unwrap_or_default(),
            probe: req.probe,
            run: req.run.clone(),
        };
        let mut txn = GuardedTxn::new()
            .guard(Guard::NameTaken, Compare::Absent(keys::service_name(&fq_name)))
            .guard(Guard::TemplateMissing, Compare::Exists(keys::service_template(template.id)))
            .then(put(keys::service(service.id), &service))
            .then(put_str(keys::service_name(&fq_name), &service.id.to_string()))
            .then(put_str(keys::services_of_template(template.id) + &service.id.to_string(), ""));
        for net in [Some(&left), Some(&right), management.as_ref()].into_iter().flatten() {
            txn = txn
                .guard(Guard::NetworkMissing, Compare::Exists(keys::network(net.id)))
                .then(put_str(keys::network_service(net.id, service.id), ""));
        }
        match self.commit(txn).await? {
            Outcome::Committed => {
                tracing::info!(service = %fq_name, left = %left.fq_name, right = %right.fq_name, "service created");
                Ok(Created { object: service, created: true })
            }
            Outcome::Refused(Guard::NameTaken) => {
                let existing = self.get_service(&fq_name.to_string()).await?;
                let same = Service { id: existing.id, fq_name: existing.fq_name.clone(), ..service };
                if same == existing {
                    return Ok(Created { object: existing, created: false });
                }
                Err(Error::AlreadyExists {
                    what: format!("service {fq_name} already exists with other settings"),
                    field: Some("name".into()),
                })
            }
            Outcome::Refused(Guard::TemplateMissing) => Err(Error::not_found("service template", &req.template)),
            Outcome::Refused(_) => Err(Error::Conflict(format!("a network of service {fq_name} was deleted; try again"))),
        }
    }

    async fn service_id(&self, reference: &str, project: &ProjectName) -> Result<Uuid> {
        if let Ok(id) = reference.parse::<Uuid>() {
            return Ok(id);
        }
        let fq = FqName::resolve(reference, project).map_err(|r| FieldError::new("service", r))?;
        let kv = self.store.get(&keys::service_name(&fq)).await?.ok_or_else(|| Error::not_found("service", reference))?;
        uuid_of(&kv)
    }

    pub async fn get_service(&self, reference: &str) -> Result<Service> {
        let id = self.service_id(reference, &ProjectName::default_project()).await?;
        Ok(self.get_json(&keys::service(id)).await?.ok_or_else(|| Error::not_found("service", reference))?.0)
    }

    pub async fn list_services(&self) -> Result<Vec<Service>> {
        let mut out: Vec<Service> = self.list_json(keys::SERVICES).await?;
        out.sort_by(|a, b| a.fq_name.cmp(&b.fq_name));
        Ok(out)
    }

    /// A service with its instances, their health and their traffic.
    pub async fn show_service(&self, reference: &str) -> Result<ServiceView> {
        let service = self.get_service(reference).await?;
        let endpoints: Vec<Endpoint> = self.list_json(keys::ENDPOINTS).await?;
        Ok(self.view_of(service, &endpoints))
    }

    /// Every service with its instances.
    pub async fn list_service_views(&self) -> Result<Vec<ServiceView>> {
        let endpoints: Vec<Endpoint> = self.list_json(keys::ENDPOINTS).await?;
        Ok(self.list_services().await?.into_iter().map(|s| self.view_of(s, &endpoints)).collect())
    }

    fn view_of(&self, service: Service, endpoints: &[Endpoint]) -> ServiceView {
        let traffic = self.port_traffic.lock().unwrap_or_else(|p| p.into_inner());
        let instances = instances_of(service.id, endpoints)
            .into_iter()
            .map(|(name, mut ports)| {
                ports.sort_by_key(|p| p.owner.service.as_ref().map(|s| s.role));
                let (healthy, message) = instance_health(&ports);
                InstanceView {
                    name: name.to_string(),
                    host: ports.first().map(|p| p.host.clone()).unwrap_or_default(),
                    healthy,
                    message,
                    ports: ports
                        .iter()
                        .map(|p| InstancePort {
                            role: p.owner.service.as_ref().map_or(InterfaceRole::Management, |s| s.role),
                            endpoint: p.id,
                            ips: p.ips.clone(),
                            traffic: traffic.get(&p.id).copied().unwrap_or_default(),
                        })
                        .collect(),
                }
            })
            .collect();
        ServiceView { service, instances }
    }

    /// Deletes a service that has no instance and that no policy rule
    /// names. Deleting a missing one is Ok.
    pub async fn delete_service(&self, reference: &str) -> Result<()> {
        let service = match self.get_service(reference).await {
            Ok(s) => s,
            Err(Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut users = Vec::new();
        for p in self.list_policies().await? {
            if let Some(i) = p.rules.iter().position(|r| r.services.contains(&service.fq_name)) {
                users.push(format!("policy {} rules[{i}]", p.fq_name));
            }
        }
        if !users.is_empty() {
            return Err(Error::InUse { kind: "service", name: service.fq_name.to_string(), users });
        }
        // The instances Tessera runs go with it (their hosts' agents then
        // remove the containers); instances attached by hand must be detached.
        if let Some(run) = &service.run {
            // First no instance is asked for (the agents stop attaching
            // them), then their ports go. A retry finds the count at 0.
            if run.instances != 0 {
                let stopped = Service { run: Some(ServiceRun { instances: 0, ..run.clone() }), ..service.clone() };
                let txn = GuardedTxn::new()
                    .guard(Guard::ServiceMissing, Compare::Exists(keys::service(service.id)))
                    .then(put(keys::service(service.id), &stopped));
                self.commit(txn).await?;
            }
            let prefix = format!("{}-", service.fq_name.name());
            let managed = |name: &str| name.strip_prefix(&prefix).is_some_and(|n| n.parse::<u32>().is_ok());
            let endpoints: Vec<Endpoint> = self.list_json(keys::ENDPOINTS).await?;
            for (name, ports) in instances_of(service.id, &endpoints) {
                if managed(name) {
                    for p in ports {
                        self.delete_endpoint(&p.id.to_string()).await?;
                    }
                }
            }
        }
        let ports = keys::service_ports_of(service.id);
        let mut txn = GuardedTxn::new()
            .guard(Guard::ServiceHasInstances, Compare::PrefixEmpty(ports.clone()))
            .then(del(keys::service(service.id)))
            .then(del(keys::service_name(&service.fq_name)))
            .then(del(keys::services_of_template(service.template) + &service.id.to_string()));
        for net in [Some(service.left), Some(service.right), service.management].into_iter().flatten() {
            txn = txn.then(del(keys::network_service(net, service.id)));
        }
        if self.commit(txn).await?.is_committed() {
            tracing::info!(service = %service.fq_name, "service deleted");
            return Ok(());
        }
        let users = self.store.range(&ports).await?.kvs.iter().map(|kv| format!("endpoint {}", &kv.key[ports.len()..])).collect();
        Err(Error::InUse { kind: "service", name: service.fq_name.to_string(), users })
    }

    /// For an endpoint about to be made in `net` as a service port: checks
    /// that its service exists and has `net` for the port's role, and gives
    /// the guard and the index op its creation adds.
    pub(super) async fn service_port_ops(
        &self,
        owner: &Owner,
        net: &Network,
        endpoint: Uuid,
        txn: GuardedTxn,
    ) -> Result<GuardedTxn> {
        let Some(sp) = &owner.service else { return Ok(txn) };
        let service = self
            .get_json::<Service>(&keys::service(sp.service))
            .await?
            .ok_or_else(|| Error::NotFound {
                kind: "service",
                name: sp.service.to_string(),
                field: Some("owner.service.service".into()),
            })?
            .0;
        match service.network_of(sp.role) {
            Some(n) if n == net.id => {}
            Some(_) => {
                return Err(FieldError::new(
                    "network",
                    format!("the {} interface of service {} is not in network {}", sp.role, service.fq_name, net.fq_name),
                )
                .into())
            }
            None => {
                return Err(FieldError::new(
                    "owner.service.role",
                    format!("service {} has no {} interface", service.fq_name, sp.role),
                )
                .into())
            }
        }
        if owner.own_table != sp.role.own_table() {
            let why = if sp.role.own_table() {
                "a left or right service port has a routing table of its own"
            } else {
                "a management port keeps the main table (what enters left or right must not leave by it)"
            };
            return Err(FieldError::new("owner.own_table", why).into());
        }
        Ok(txn
            .guard(Guard::ServiceMissing, Compare::Exists(keys::service(service.id)))
            .then(put_str(keys::service_port(service.id, endpoint), &sp.instance)))
    }

    /// The op that forgets an endpoint as a service port.
    pub(super) fn service_port_release(ep: &Endpoint) -> Option<Op> {
        ep.owner.service.as_ref().map(|sp| del(keys::service_port(sp.service, ep.id)))
    }

    /// Records a service port's health (in the store, when it changed) and
    /// its traffic (in memory), as its host's agent reports them.
    pub async fn report_health(&self, id: &str, report: HealthReport) -> Result<Endpoint> {
        let uuid: Uuid = id.parse().map_err(|_| FieldError::new("id", format!("{id:?} is not a UUID")))?;
        if let Some(m) = &report.health.message {
            limits::check_text("health.message", m, limits::MAX_LABEL_VALUE)?;
        }
        for _ in 0..MAX_ATTEMPTS {
            let (mut ep, rev) =
                self.get_json::<Endpoint>(&keys::endpoint(uuid)).await?.ok_or_else(|| Error::not_found("endpoint", id))?;
            if ep.owner.service.is_none() {
                return Err(FieldError::new("id", format!("endpoint {} is not a service port", ep.name)).into());
            }
            self.port_traffic.lock().unwrap_or_else(|p| p.into_inner()).insert(uuid, report.traffic);
            if ep.health.as_ref() == Some(&report.health) {
                return Ok(ep);
            }
            ep.health = Some(report.health.clone());
            let txn = GuardedTxn::new()
                .guard(Guard::EndpointChanged, Compare::ModRevision(keys::endpoint(uuid), rev))
                .then(put(keys::endpoint(uuid), &ep));
            if self.commit(txn).await?.is_committed() {
                tracing::info!(endpoint = %ep.name, healthy = report.health.healthy, "service port health");
                return Ok(ep);
            }
        }
        Err(Error::Conflict(format!("endpoint {id}")))
    }

    /// Checks the chains of `rules` (in `project`): every service exists and
    /// is usable by the project, and each chain joins the rule's source
    /// network to its destination through its services' left and right
    /// networks in order. Errors name `rules[i].services`.
    pub(super) async fn check_rule_services(&self, project: &ProjectName, rules: &[Rule]) -> Result<()> {
        let mut services: HashMap<FqName, Service> = HashMap::new();
        let mut networks: HashMap<FqName, Option<Uuid>> = HashMap::new();
        for (i, rule) in rules.iter().enumerate().filter(|(_, r)| !r.services.is_empty()) {
            let field = format!("rules[{i}].services");
            let mut ends = Vec::new();
            for e in [&rule.src, &rule.dst] {
                let tessera_model::RuleEndpoint::Network(n) = e else { continue };
                if !networks.contains_key(n) {
                    let id = match self.store.get(&keys::network_name(n)).await? {
                        Some(kv) => Some(uuid_of(&kv)?),
                        None => None,
                    };
                    networks.insert(n.clone(), id);
                }
                ends.push(networks[n]);
            }
            let [Some(src), Some(dst)] = ends[..] else { continue };
            let mut at = src;
            let mut names = Vec::new();
            for name in &rule.services {
                if !services.contains_key(name) {
                    let Some(kv) = self.store.get(&keys::service_name(name)).await? else {
                        return Err(Error::NotFound { kind: "service", name: name.to_string(), field: Some(field) });
                    };
                    let Some((s, _)) = self.get_json::<Service>(&keys::service(uuid_of(&kv)?)).await? else {
                        return Err(Error::NotFound { kind: "service", name: name.to_string(), field: Some(field) });
                    };
                    services.insert(name.clone(), s);
                }
                let s = &services[name];
                if s.fq_name.project() != project {
                    return Err(FieldError::new(
                        field,
                        format!(
                            "service {} is project {}'s; a rule applies services of its own project",
                            name,
                            s.fq_name.project()
                        ),
                    )
                    .into());
                }
                if s.left != at {
                    let expected = if names.is_empty() {
                        format!("the rule's source network {}", rule.src)
                    } else {
                        format!("the right network of {}", names.join(","))
                    };
                    return Err(FieldError::new(
                        field,
                        format!("service {name}'s left network is not {expected}: a chain goes from the source through each service's left and right networks in order"),
                    )
                    .into());
                }
                at = s.right;
                names.push(name.to_string());
            }
            if at != dst {
                return Err(FieldError::new(
                    field,
                    format!(
                        "the chain ends in service {}'s right network, not in the rule's destination {}",
                        names.join(","),
                        rule.dst
                    ),
                )
                .into());
            }
        }
        Ok(())
    }
}
