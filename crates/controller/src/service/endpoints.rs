//! Endpoints: a named interface of a network on a host, with a MAC (unique
//! among all endpoints) and one address per address family of its network,
//! static or allocated, possibly adopted from a reservation.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
use tessera_model::limits;
use tessera_model::reservation::{check_owner, reservation_owner};
use tessera_model::{Endpoint, EndpointCreate, EndpointStatus, EndpointStatusUpdate, FieldError, MacAddr, Network, Owner};
use tessera_store::Compare;
use uuid::Uuid;

use super::controller::{Controller, Created};
use super::txn::{del, put, put_str, uuid_of, Guard, GuardedTxn, Outcome, MAX_ATTEMPTS};
use crate::error::{Error, Result};
use crate::keys;

/// Filters of `GET /v1/endpoints`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
pub struct EndpointFilter {
    /// Network name or UUID.
    pub network: Option<String>,
    pub host: Option<String>,
}

// ---------------------------------------------------------------- validation

/// The name (generated when absent) and the chosen MAC of a create
/// request, after checking its name, host, owner (what reaches the host's
/// kernel: the namespace and the interface name) and MAC.
fn validate_create(req: &EndpointCreate) -> Result<(String, Option<MacAddr>)> {
    let name = match &req.name {
        Some(n) => tessera_model::names::check_component(n).map(|()| n.clone()).map_err(|r| FieldError::new("name", r))?,
        None => Uuid::new_v4().to_string(),
    };
    tessera_model::names::check_component(&req.host).map_err(|r| FieldError::new("host", r))?;
    req.owner.check()?;
    limits::check_count("ips", &req.ips, limits::MAX_ENDPOINT_IPS, "addresses")?;
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
    Ok((name, chosen_mac))
}

/// The static addresses requested (`ips`), each with the index of its
/// subnet in `net`: at most one per family, each allocatable in its subnet.
fn validate_static_ips(ips: &[String], net: &Network) -> Result<Vec<(usize, IpAddr)>> {
    let mut statics: Vec<(usize, IpAddr)> = Vec::new();
    for (i, s) in ips.iter().enumerate() {
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
    Ok(statics)
}

/// For an endpoint made from a reservation, the allocation owner of that
/// reservation. Such an endpoint takes all its addresses from it (so that
/// deleting it can give every one of them back): it must request a static
/// address of each family of `net`.
fn validate_adoption(owner: &Owner, net: &Network, statics: &[(usize, IpAddr)]) -> Result<Option<String>> {
    let Some(token) = &owner.reservation else { return Ok(None) };
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
    Ok(Some(reservation_owner(token)))
}

/// An endpoint id, from a path.
fn parse_id(id: &str) -> Result<Uuid> {
    Ok(id.parse().map_err(|_| FieldError::new("id", format!("{id:?} is not a UUID")))?)
}

fn random_mac() -> MacAddr {
    MacAddr::local_from(rand::random())
}

// ---------------------------------------------------------------- operations

impl Controller {
    /// Creates an endpoint with a MAC and one address per address family of
    /// its network (static where requested, else the lowest free one).
    ///
    /// Retry-safe: a create naming an existing endpoint of the network with
    /// the same host, owner and requested addresses returns it unchanged.
    pub async fn create_endpoint(&self, req: EndpointCreate) -> Result<Created<Endpoint>> {
        let (name, chosen_mac) = validate_create(&req)?;
        if let Some(net) = self.seen_networks.get(&req.network) {
            match self.create_endpoint_in(&req, net, name.clone(), chosen_mac).await {
                // Deleted since (perhaps made again under its name): look again.
                Err(Error::NotFound { kind: "network", .. }) => self.seen_networks.forget(&req.network),
                done => return done,
            }
        }
        let (net, _) = self.find_network(&req.network).await.map_err(|e| match e {
            Error::NotFound { kind, name, .. } => Error::NotFound { kind, name, field: Some("network".into()) },
            other => other,
        })?;
        self.seen_networks.remember(&req.network, &net);
        self.create_endpoint_in(&req, net, name, chosen_mac).await
    }

    /// [`Self::create_endpoint`] in `net`, the network the request names.
    async fn create_endpoint_in(
        &self,
        req: &EndpointCreate,
        net: Network,
        name: String,
        chosen_mac: Option<MacAddr>,
    ) -> Result<Created<Endpoint>> {
        if net.external {
            return Err(FieldError::new(
                "network",
                format!("network {} is external: it holds floating IPs and SNAT addresses, not endpoints", net.fq_name),
            )
            .into());
        }
        let statics = validate_static_ips(&req.ips, &net)?;
        let adopt = validate_adoption(&req.owner, &net, &statics)?;

        // No lock: concurrent creates claim different addresses (`claims`)
        // and the transaction's compares decide. The host's registration
        // and the name are compares too (no read before): the name is read
        // only once the transaction found it taken (a retried create).
        let mut held = super::claims::Claimed::new(&self.claims, net.id);
        let mut name_taken = false;
        for _ in 0..MAX_ATTEMPTS {
            held.release();
            let existing = match name_taken {
                true => self.store.get(&keys::endpoint_name(net.id, &name)).await?,
                false => None,
            };
            if let Some(kv) = existing {
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
                ips.push(self.claim_in(net.id, &family, &mut held).await?);
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
                status_message: None,
                ports: vec![],
                health: None,
            };
            let mut txn = GuardedTxn::new()
                .guard(Guard::NetworkMissing, Compare::Exists(keys::network(net.id)))
                .guard(Guard::HostMissing, Compare::Exists(keys::host(&req.host)))
                .guard(Guard::NameTaken, Compare::Absent(keys::endpoint_name(net.id, &name)))
                .guard(Guard::MacTaken, Compare::Absent(keys::mac(mac)));
            for (i, a) in &ips {
                let key = keys::allocation(net.id, *i, *a);
                // A static address reserved by the endpoint's reservation is adopted; any other must be free.
                let reserved = match &adopt {
                    Some(owner) => self.store.get(&key).await?.filter(|kv| kv.value == owner.as_bytes()),
                    None => None,
                };
                txn = txn.guard(
                    Guard::AddressTaken(*a),
                    match reserved {
                        Some(kv) => Compare::ValueEquals(key, kv.value),
                        None => Compare::Absent(key),
                    },
                );
            }
            let mut txn = self
                .service_port_ops(&req.owner, &net, id, txn)
                .await?
                .then(put(keys::endpoint(id), &endpoint))
                .then(put_str(keys::endpoint_name(net.id, &name), &id.to_string()))
                .then(put_str(keys::mac(mac), &id.to_string()));
            for (i, a) in &ips {
                txn = txn.then(put_str(keys::allocation(net.id, *i, *a), &owner));
            }
            match self.commit(txn).await? {
                Outcome::Committed => {
                    tracing::info!(network = %net.fq_name, endpoint = %name, host = %req.host, "endpoint created");
                    return Ok(Created { object: endpoint, created: true });
                }
                Outcome::Refused(Guard::NetworkMissing) => {
                    return Err(Error::NotFound { kind: "network", name: req.network.clone(), field: Some("network".into()) })
                }
                Outcome::Refused(Guard::ServiceMissing) => {
                    return Err(Error::NotFound {
                        kind: "service",
                        name: req.owner.service.as_ref().map(|s| s.service.to_string()).unwrap_or_default(),
                        field: Some("owner.service.service".into()),
                    })
                }
                Outcome::Refused(Guard::HostMissing) => {
                    return Err(Error::NotFound { kind: "host", name: req.host.clone(), field: Some("host".into()) })
                }
                // Created before (a retry) or concurrently: the loop returns
                // it or reports the clash.
                Outcome::Refused(Guard::NameTaken) => {
                    name_taken = true;
                    continue;
                }
                Outcome::Refused(Guard::MacTaken) if chosen_mac.is_some() => {
                    return Err(Error::AlreadyExists { what: format!("MAC {mac} is already in use"), field: Some("mac".into()) })
                }
                Outcome::Refused(Guard::AddressTaken(addr)) => {
                    if let Some(pos) = statics.iter().position(|(_, a)| *a == addr) {
                        return Err(Error::AlreadyExists {
                            what: format!("address {addr} is already in use in network {}", net.fq_name),
                            field: Some(format!("ips[{pos}]")),
                        });
                    }
                    // An allocated address another request took first: pick again.
                    continue;
                }
                // Guard::MacTaken of a generated MAC: generate another.
                Outcome::Refused(_) => continue,
            }
        }
        Err(Error::Conflict(format!("endpoint {name}")))
    }

    pub async fn get_endpoint(&self, id: &str) -> Result<Endpoint> {
        let uuid = parse_id(id)?;
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
        let uuid = parse_id(id)?;
        for _ in 0..MAX_ATTEMPTS {
            let Some((ep, rev)) = self.get_json::<Endpoint>(&keys::endpoint(uuid)).await? else {
                return Ok(());
            };
            let net: Option<(Network, u64)> = self.get_json(&keys::network(ep.network)).await?;
            let mut txn = GuardedTxn::new()
                .guard(Guard::EndpointChanged, Compare::ModRevision(keys::endpoint(uuid), rev))
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
            let txn = self
                .disassociate_ops(uuid, txn)
                .await?
                .then_all(super::ports::release_ops(&ep))
                .then_all(Self::service_port_release(&ep));
            // Refused (Guard::EndpointChanged, FloatingIpChanged): read again.
            if self.commit(txn).await?.is_committed() {
                tracing::info!(endpoint = %ep.name, "endpoint deleted");
                return Ok(());
            }
        }
        Err(Error::Conflict(format!("endpoint {id}")))
    }

    /// Moves an endpoint to another namespace of its container (restarted:
    /// same container, new namespace); only for an endpoint that names its
    /// container.
    pub async fn set_endpoint_netns(&self, id: &str, req: tessera_model::EndpointNetns) -> Result<Endpoint> {
        let uuid = parse_id(id)?;
        limits::check_netns("netns", &req.netns)?;
        for _ in 0..MAX_ATTEMPTS {
            let (mut ep, rev) =
                self.get_json::<Endpoint>(&keys::endpoint(uuid)).await?.ok_or_else(|| Error::not_found("endpoint", id))?;
            if ep.owner.container_id.is_none() {
                return Err(FieldError::new("netns", format!("endpoint {} names no container to follow", ep.name)).into());
            }
            if ep.owner.netns.as_deref() == Some(req.netns.as_str()) {
                return Ok(ep);
            }
            ep.owner.netns = Some(req.netns.clone());
            ep.status = EndpointStatus::Pending;
            let txn = GuardedTxn::new()
                .guard(Guard::EndpointChanged, Compare::ModRevision(keys::endpoint(uuid), rev))
                .then(put(keys::endpoint(uuid), &ep));
            if self.commit(txn).await?.is_committed() {
                tracing::info!(endpoint = %ep.name, netns = %req.netns, "endpoint follows its container");
                return Ok(ep);
            }
        }
        Err(Error::Conflict(format!("endpoint {id}")))
    }

    /// Records the status an agent reports for one of its endpoints.
    pub async fn set_endpoint_status(&self, id: &str, update: EndpointStatusUpdate) -> Result<Endpoint> {
        let uuid = parse_id(id)?;
        if let Some(m) = &update.message {
            limits::check_text("message", m, limits::MAX_LABEL_VALUE)?;
        }
        for _ in 0..MAX_ATTEMPTS {
            let (mut ep, rev) =
                self.get_json::<Endpoint>(&keys::endpoint(uuid)).await?.ok_or_else(|| Error::not_found("endpoint", id))?;
            if ep.status == update.status && ep.status_message == update.message {
                return Ok(ep);
            }
            ep.status = update.status;
            ep.status_message = update.message.clone();
            let txn = GuardedTxn::new()
                .guard(Guard::EndpointChanged, Compare::ModRevision(keys::endpoint(uuid), rev))
                .then(put(keys::endpoint(uuid), &ep));
            if self.commit(txn).await?.is_committed() {
                return Ok(ep);
            }
        }
        Err(Error::Conflict(format!("endpoint {id}")))
    }
}
