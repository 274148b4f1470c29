//! Floating IPs and source NAT: addresses of external networks, translated
//! one to one to an endpoint's fixed address (a floating IP) or shared by a
//! network's outbound flows (its SNAT addresses). Both live in the external
//! network's IPAM, owned by `floating-ip:<uuid>` and `snat:<network>`.
//!
//! A network reaches the outside through one external network only (its
//! gateway carries all of the network's outside traffic), so a floating IP
//! of another external network, or SNAT through another, is refused; so is
//! an external network whose subnets overlap the network's (its addresses
//! would be on both sides of the translation).

use std::net::IpAddr;

use ipnet::IpNet;
use tessera_model::floating_ip::{FLOATING_IP_OWNER_PREFIX, SNAT_OWNER_PREFIX};
use tessera_model::{Endpoint, FieldError, FloatingIp, FloatingIpAssociate, FloatingIpCreate, Network, ProjectName, Snat};
use tessera_store::{Compare, Op};
use uuid::Uuid;

use super::controller::{Controller, Created};
use super::txn::{del, put, put_str, Guard, GuardedTxn, Outcome, MAX_ATTEMPTS};
use crate::error::{Error, Result};
use crate::keys;

// ---------------------------------------------------------------- validation

fn parse_id(field: &str, id: &str) -> Result<Uuid> {
    Ok(id.trim().parse().map_err(|_| FieldError::new(field, format!("{id:?} is not a UUID")))?)
}

fn parse_addr(field: &str, a: &str) -> Result<IpAddr> {
    Ok(a.trim().parse().map_err(|_| FieldError::new(field, format!("{a:?} is not an IP address")))?)
}

/// The external network behind `reference`, refused when it is not one.
fn require_external(field: &str, net: &Network) -> Result<()> {
    if !net.external {
        return Err(FieldError::new(
            field,
            format!("network {} is not external: floating IPs and SNAT addresses come from external networks", net.fq_name),
        )
        .into());
    }
    Ok(())
}

/// Whether the external network `ext` can carry `net`'s traffic: usable by
/// its project, and no subnet of one overlapping a subnet of the other.
fn check_reachable(field: &str, ext: &Network, net: &Network) -> Result<()> {
    if !ext.usable_by(net.fq_name.project()) {
        return Err(FieldError::new(
            field,
            format!("external network {} is not shared with project {}", ext.fq_name, net.fq_name.project()),
        )
        .into());
    }
    for a in &net.subnets {
        if let Some(b) = ext.subnets.iter().find(|b| overlap(&a.cidr, &b.cidr)) {
            return Err(FieldError::new(
                field,
                format!(
                    "external network {} has no route to network {}: its subnet {} overlaps {}",
                    ext.fq_name, net.fq_name, b.cidr, a.cidr
                ),
            )
            .into());
        }
    }
    Ok(())
}

fn overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

// ---------------------------------------------------------------- operations

impl Controller {
    /// Allocates a floating IP of an external network: the chosen address
    /// or the lowest free one. Retry-safe with a chosen address: when the
    /// project already holds it, that floating IP is returned again.
    pub async fn create_floating_ip(&self, req: FloatingIpCreate) -> Result<Created<FloatingIp>> {
        let project: ProjectName = match req.project.as_deref().map(str::trim).filter(|p| !p.is_empty()) {
            Some(p) => p.parse().map_err(|r: String| FieldError::new("project", r))?,
            None => ProjectName::default_project(),
        };
        self.require_project("project", &project).await?;
        let (ext, _) = self.find_network(&req.network).await.map_err(|e| match e {
            Error::NotFound { kind, name, .. } => Error::NotFound { kind, name, field: Some("network".into()) },
            other => other,
        })?;
        require_external("network", &ext)?;
        if !ext.usable_by(&project) {
            return Err(FieldError::new(
                "network",
                format!("external network {} is not shared with project {project}", ext.fq_name),
            )
            .into());
        }
        let chosen = req.address.as_deref().filter(|a| !a.trim().is_empty()).map(|a| parse_addr("address", a)).transpose()?;
        let family_v4 = match (req.family, chosen) {
            (Some(4), _) => Some(true),
            (Some(6), _) => Some(false),
            (Some(f), _) => return Err(FieldError::new("family", format!("{f} is not an address family: use 4 or 6")).into()),
            (None, Some(a)) => Some(a.is_ipv4()),
            (None, None) => None,
        };
        if let (Some(v4), Some(a)) = (family_v4, chosen) {
            if a.is_ipv4() != v4 {
                return Err(FieldError::new("address", format!("{a} is not of family {}", req.family.unwrap_or(0))).into());
            }
        }
        let index = match chosen {
            Some(a) => {
                let (i, s) = ext
                    .subnet_of(a)
                    .ok_or_else(|| FieldError::new("address", format!("{a} is in no subnet of network {}", ext.fq_name)))?;
                let layout = s.layout().map_err(|e| FieldError::new("address", e.to_string()))?;
                layout.is_allocatable(a).map_err(|e| FieldError::new("address", e.to_string()))?;
                Some(i)
            }
            None => None,
        };
        let lock = self.ipam_lock(ext.id);
        let _guard = lock.lock().await;
        for _ in 0..MAX_ATTEMPTS {
            let (i, address) = match (index, chosen) {
                (Some(i), Some(a)) => {
                    if let Some(kv) = self.store.get(&keys::allocation(ext.id, i, a)).await? {
                        let holder = String::from_utf8_lossy(&kv.value).into_owned();
                        if let Some(id) = holder.strip_prefix(FLOATING_IP_OWNER_PREFIX).and_then(|s| s.parse().ok()) {
                            if let Ok(existing) = self.get_floating_ip_by(id).await {
                                if existing.project == project {
                                    return Ok(Created { object: existing, created: false });
                                }
                            }
                        }
                        return Err(Error::AlreadyExists {
                            what: format!("address {a} of network {} is already in use ({holder})", ext.fq_name),
                            field: Some("address".into()),
                        });
                    }
                    (i, a)
                }
                _ => {
                    let family: Vec<(usize, &tessera_model::Subnet)> = ext
                        .subnets
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| family_v4.is_none_or(|v4| s.cidr.addr().is_ipv4() == v4))
                        .collect();
                    if family.is_empty() {
                        return Err(
                            FieldError::new("family", format!("network {} has no subnet of that family", ext.fq_name)).into()
                        );
                    }
                    self.allocate_in(ext.id, &family).await?
                }
            };
            let fip = FloatingIp {
                id: Uuid::new_v4(),
                project: project.clone(),
                network: ext.id,
                address,
                endpoint: None,
                fixed_ip: None,
            };
            let key = keys::allocation(ext.id, i, address);
            let txn = GuardedTxn::new()
                .guard(Guard::NetworkMissing, Compare::Exists(keys::network(ext.id)))
                .guard(Guard::AddressTaken(address), Compare::Absent(key.clone()))
                .then(put_str(key, &format!("{FLOATING_IP_OWNER_PREFIX}{}", fip.id)))
                .then(put(keys::floating_ip(fip.id), &fip))
                .then(put_str(keys::floating_ip_of(ext.id, fip.id), &fip.id.to_string()));
            match self.commit(txn).await? {
                Outcome::Committed => {
                    tracing::info!(network = %ext.fq_name, %address, id = %fip.id, "floating IP allocated");
                    return Ok(Created { object: fip, created: true });
                }
                Outcome::Refused(Guard::NetworkMissing) => return Err(Error::not_found("network", &req.network)),
                // Guard::AddressTaken: taken since read.
                Outcome::Refused(_) => continue,
            }
        }
        Err(Error::Conflict(format!("floating IP in network {}", ext.fq_name)))
    }

    async fn get_floating_ip_by(&self, id: Uuid) -> Result<FloatingIp> {
        Ok(self.get_json(&keys::floating_ip(id)).await?.ok_or_else(|| Error::not_found("floating IP", id.to_string()))?.0)
    }

    /// A floating IP by UUID or by address.
    pub async fn get_floating_ip(&self, reference: &str) -> Result<FloatingIp> {
        Ok(self.find_floating_ip(reference).await?.0)
    }

    async fn find_floating_ip(&self, reference: &str) -> Result<(FloatingIp, u64)> {
        if let Ok(id) = reference.trim().parse::<Uuid>() {
            return self.get_json(&keys::floating_ip(id)).await?.ok_or_else(|| Error::not_found("floating IP", reference));
        }
        let addr = parse_addr("id", reference)?;
        for kv in self.store.range(keys::FLOATING_IPS).await?.kvs {
            let fip: FloatingIp = super::txn::decode(&kv)?;
            if fip.address == addr {
                return Ok((fip, kv.mod_revision));
            }
        }
        Err(Error::not_found("floating IP", reference))
    }

    pub async fn list_floating_ips(&self) -> Result<Vec<FloatingIp>> {
        let mut all: Vec<FloatingIp> = self.list_json(keys::FLOATING_IPS).await?;
        all.sort_by_key(|f| f.address);
        Ok(all)
    }

    /// Releases a floating IP (disassociating it). Deleting a missing one is Ok.
    pub async fn delete_floating_ip(&self, reference: &str) -> Result<()> {
        for _ in 0..MAX_ATTEMPTS {
            let (fip, rev) = match self.find_floating_ip(reference).await {
                Ok(f) => f,
                Err(Error::NotFound { .. }) => return Ok(()),
                Err(e) => return Err(e),
            };
            let mut txn = GuardedTxn::new()
                .guard(Guard::FloatingIpChanged, Compare::ModRevision(keys::floating_ip(fip.id), rev))
                .then(del(keys::floating_ip(fip.id)))
                .then(del(keys::floating_ip_of(fip.network, fip.id)));
            if let Some((ext, _)) = self.get_json::<Network>(&keys::network(fip.network)).await? {
                if let Some((i, _)) = ext.subnet_of(fip.address) {
                    txn = txn.then(del(keys::allocation(ext.id, i, fip.address)));
                }
            }
            if let (Some(ep), Some(ip)) = (fip.endpoint, fip.fixed_ip) {
                txn = txn.then(del(keys::fixed_ip(ep, ip)));
            }
            if self.commit(txn).await?.is_committed() {
                tracing::info!(address = %fip.address, id = %fip.id, "floating IP released");
                return Ok(());
            }
        }
        Err(Error::Conflict(format!("floating IP {reference}")))
    }

    /// Associates a floating IP with an endpoint's fixed address. The same
    /// association again changes nothing; one with another endpoint or
    /// address is refused unless `moving`, which moves it in one write.
    pub async fn associate_floating_ip(&self, reference: &str, req: FloatingIpAssociate, moving: bool) -> Result<FloatingIp> {
        let ep_id = parse_id("endpoint", &req.endpoint)?;
        let wanted_fixed =
            req.fixed_ip.as_deref().filter(|a| !a.trim().is_empty()).map(|a| parse_addr("fixed_ip", a)).transpose()?;
        let _egress = self.egress_lock.lock().await;
        for _ in 0..MAX_ATTEMPTS {
            let (mut fip, rev) = self.find_floating_ip(reference).await?;
            let (ep, ep_rev) = self.get_json::<Endpoint>(&keys::endpoint(ep_id)).await?.ok_or_else(|| Error::NotFound {
                kind: "endpoint",
                name: req.endpoint.clone(),
                field: Some("endpoint".into()),
            })?;
            let fixed = match wanted_fixed {
                Some(a) if ep.ips.iter().any(|n| n.addr() == a) => a,
                Some(a) => {
                    return Err(FieldError::new("fixed_ip", format!("{a} is not an address of endpoint {}", ep.name)).into())
                }
                None => ep.ips.iter().map(|n| n.addr()).find(|a| a.is_ipv4() == fip.address.is_ipv4()).ok_or_else(|| {
                    FieldError::new(
                        "endpoint",
                        format!("endpoint {} has no address of the floating IP {}'s family", ep.name, fip.address),
                    )
                })?,
            };
            if fixed.is_ipv4() != fip.address.is_ipv4() {
                return Err(FieldError::new(
                    "fixed_ip",
                    format!("{fixed} and floating IP {} are of different families", fip.address),
                )
                .into());
            }
            if fip.endpoint == Some(ep.id) && fip.fixed_ip == Some(fixed) {
                return Ok(fip);
            }
            if let (Some(other), false) = (fip.endpoint, moving) {
                return Err(Error::AlreadyExists {
                    what: format!(
                        "floating IP {} is associated with endpoint {other}: disassociate it first, or move it",
                        fip.address
                    ),
                    field: Some("endpoint".into()),
                });
            }
            let (net, net_rev) = self
                .get_json::<Network>(&keys::network(ep.network))
                .await?
                .ok_or_else(|| Error::not_found("network", ep.network.to_string()))?;
            let (ext, _) = self
                .get_json::<Network>(&keys::network(fip.network))
                .await?
                .ok_or_else(|| Error::not_found("network", fip.network.to_string()))?;
            if net.fq_name.project() != &fip.project {
                return Err(FieldError::new(
                    "endpoint",
                    format!(
                        "endpoint {} is in project {}; floating IP {} is project {}'s",
                        ep.name,
                        net.fq_name.project(),
                        fip.address,
                        fip.project
                    ),
                )
                .into());
            }
            check_reachable("endpoint", &ext, &net)?;
            self.check_egress("endpoint", &net, ext.id, Some(fip.id)).await?;
            let index = keys::fixed_ip(ep.id, fixed);
            if let Some(kv) = self.store.get(&index).await? {
                let holder = String::from_utf8_lossy(&kv.value).into_owned();
                if holder != fip.id.to_string() {
                    return Err(Error::AlreadyExists {
                        what: format!("address {fixed} of endpoint {} already has floating IP {holder}", ep.name),
                        field: Some("fixed_ip".into()),
                    });
                }
            }
            let mut txn = GuardedTxn::new()
                .guard(Guard::FloatingIpChanged, Compare::ModRevision(keys::floating_ip(fip.id), rev))
                .guard(Guard::EndpointChanged, Compare::ModRevision(keys::endpoint(ep.id), ep_rev))
                .guard(Guard::NetworkChanged, Compare::ModRevision(keys::network(net.id), net_rev))
                .guard(Guard::AddressTaken(fixed), Compare::Absent(index.clone()));
            if let (Some(old_ep), Some(old_ip)) = (fip.endpoint, fip.fixed_ip) {
                txn = txn.then(del(keys::fixed_ip(old_ep, old_ip)));
            }
            fip.endpoint = Some(ep.id);
            fip.fixed_ip = Some(fixed);
            // The network is written again, unchanged: two associations in
            // one network (on two controllers, which share no lock) each
            // checked its way out against the network's revision, so the
            // second to commit is refused and checks again.
            txn = txn
                .then(put_str(index, &fip.id.to_string()))
                .then(put(keys::floating_ip(fip.id), &fip))
                .then(put(keys::network(net.id), &net));
            if self.commit(txn).await?.is_committed() {
                tracing::info!(address = %fip.address, endpoint = %ep.name, %fixed, "floating IP associated");
                return Ok(fip);
            }
        }
        Err(Error::Conflict(format!("floating IP {reference}")))
    }

    /// Ends a floating IP's association; one without any is returned as it is.
    pub async fn disassociate_floating_ip(&self, reference: &str) -> Result<FloatingIp> {
        for _ in 0..MAX_ATTEMPTS {
            let (mut fip, rev) = self.find_floating_ip(reference).await?;
            let (Some(ep), Some(ip)) = (fip.endpoint.take(), fip.fixed_ip.take()) else { return Ok(fip) };
            let txn = GuardedTxn::new()
                .guard(Guard::FloatingIpChanged, Compare::ModRevision(keys::floating_ip(fip.id), rev))
                .then(del(keys::fixed_ip(ep, ip)))
                .then(put(keys::floating_ip(fip.id), &fip));
            if self.commit(txn).await?.is_committed() {
                tracing::info!(address = %fip.address, "floating IP disassociated");
                return Ok(fip);
            }
        }
        Err(Error::Conflict(format!("floating IP {reference}")))
    }

    /// The ops that disassociate the floating IPs of an endpoint being
    /// deleted, with guards on what they read.
    pub(super) async fn disassociate_ops(&self, endpoint: Uuid, mut txn: GuardedTxn) -> Result<GuardedTxn> {
        let prefix = keys::fixed_ips_of(endpoint);
        for kv in self.store.range(&prefix).await?.kvs {
            txn = txn.then(del(kv.key.clone()));
            let Ok(id) = super::txn::uuid_of(&kv) else { continue };
            if let Some((mut fip, rev)) = self.get_json::<FloatingIp>(&keys::floating_ip(id)).await? {
                if fip.endpoint == Some(endpoint) {
                    fip.endpoint = None;
                    fip.fixed_ip = None;
                    txn = txn
                        .guard(Guard::FloatingIpChanged, Compare::ModRevision(keys::floating_ip(id), rev))
                        .then(put(keys::floating_ip(id), &fip));
                }
            }
        }
        Ok(txn)
    }

    /// Refuses when `net` already reaches the outside through another
    /// external network than `ext` (its SNAT, or a floating IP of one of its
    /// endpoints other than `except`).
    async fn check_egress(&self, field: &str, net: &Network, ext: Uuid, except: Option<Uuid>) -> Result<()> {
        if let Some(s) = net.snat.as_ref().filter(|s| s.network != ext) {
            return Err(FieldError::new(
                field,
                format!(
                    "network {} reaches the outside through external network {} (SNAT); it uses one external network",
                    net.fq_name, s.network
                ),
            )
            .into());
        }
        let endpoints: std::collections::BTreeSet<Uuid> = self
            .list_json::<Endpoint>(keys::ENDPOINTS)
            .await?
            .into_iter()
            .filter(|e| e.network == net.id)
            .map(|e| e.id)
            .collect();
        for fip in self.list_json::<FloatingIp>(keys::FLOATING_IPS).await? {
            if Some(fip.id) != except && fip.network != ext && fip.endpoint.is_some_and(|e| endpoints.contains(&e)) {
                return Err(FieldError::new(
                    field,
                    format!(
                        "network {} reaches the outside through floating IP {} of another external network; it uses one external network",
                        net.fq_name, fip.address
                    ),
                )
                .into());
            }
        }
        Ok(())
    }

    /// What a network update's `snat` makes of `net`: the new [`Snat`] and
    /// the guards and ops that allocate or release its addresses. `reference`
    /// empty turns SNAT off.
    pub(super) async fn snat_change(
        &self,
        net: &Network,
        reference: &str,
        mut txn: GuardedTxn,
    ) -> Result<(Option<Snat>, GuardedTxn)> {
        let release = |mut txn: GuardedTxn, old: &Snat, ext: Option<&Network>| {
            txn = txn.then(del(keys::snat_user(old.network, net.id)));
            if let Some(ext) = ext {
                for a in &old.addresses {
                    if let Some((i, _)) = ext.subnet_of(*a) {
                        txn = txn.then(del(keys::allocation(ext.id, i, *a)));
                    }
                }
            }
            txn
        };
        let old_ext = match &net.snat {
            Some(s) => self.get_json::<Network>(&keys::network(s.network)).await?.map(|(n, _)| n),
            None => None,
        };
        if reference.trim().is_empty() {
            if let Some(old) = &net.snat {
                txn = release(txn, old, old_ext.as_ref());
            }
            return Ok((None, txn));
        }
        if net.external {
            return Err(FieldError::new("snat", format!("network {} is external itself", net.fq_name)).into());
        }
        let (ext, _) = self.find_network(reference).await.map_err(|e| match e {
            Error::NotFound { kind, name, .. } => Error::NotFound { kind, name, field: Some("snat".into()) },
            other => other,
        })?;
        require_external("snat", &ext)?;
        if net.snat.as_ref().is_some_and(|s| s.network == ext.id) {
            return Ok((net.snat.clone(), txn));
        }
        check_reachable("snat", &ext, net)?;
        self.check_egress("snat", &Network { snat: None, ..net.clone() }, ext.id, None).await?;
        if let Some(old) = &net.snat {
            txn = release(txn, old, old_ext.as_ref());
        }
        let owner = format!("{SNAT_OWNER_PREFIX}{}", net.id);
        let mut addresses = Vec::new();
        for v4 in [true, false] {
            let family: Vec<(usize, &tessera_model::Subnet)> =
                ext.subnets.iter().enumerate().filter(|(_, s)| s.cidr.addr().is_ipv4() == v4).take(1).collect();
            if family.is_empty() {
                continue;
            }
            let (i, a) = self.allocate_in(ext.id, &family).await?;
            let key = keys::allocation(ext.id, i, a);
            txn = txn.guard(Guard::AddressTaken(a), Compare::Absent(key.clone())).then(put_str(key, &owner));
            addresses.push(a);
        }
        txn = txn
            .guard(Guard::NetworkMissing, Compare::Exists(keys::network(ext.id)))
            .then(put_str(keys::snat_user(ext.id, net.id), &net.id.to_string()));
        Ok((Some(Snat { network: ext.id, addresses }), txn))
    }

    /// The guards that keep an external network from being deleted while
    /// floating IPs or SNAT users hold it.
    pub(super) fn external_guards(&self, net: &Network, txn: GuardedTxn) -> GuardedTxn {
        if !net.external {
            return txn;
        }
        txn.guard(Guard::NetworkHasFloatingIps, Compare::PrefixEmpty(keys::floating_ips_of(net.id)))
            .guard(Guard::NetworkHasSnatUsers, Compare::PrefixEmpty(keys::snat_users_of(net.id)))
    }

    /// The ops that release a network's SNAT addresses when it is deleted.
    pub(super) async fn snat_release_ops(&self, net: &Network) -> Result<Vec<Op>> {
        let Some(s) = &net.snat else { return Ok(Vec::new()) };
        let mut ops = vec![del(keys::snat_user(s.network, net.id))];
        if let Some((ext, _)) = self.get_json::<Network>(&keys::network(s.network)).await? {
            for a in &s.addresses {
                if let Some((i, _)) = ext.subnet_of(*a) {
                    ops.push(del(keys::allocation(ext.id, i, *a)));
                }
            }
        }
        Ok(ops)
    }
}
