//! Hosts: the machines agents run on, with the underlay address their
//! tunnels end at, and the hit counters their agents last reported. A host
//! can be removed only once it owns no endpoints.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use tessera_model::{FieldError, Host, HostCounters, HostGateway, HostRegister};
use tessera_store::Compare;

use super::controller::Controller;
use super::endpoints::EndpointFilter;
use super::txn::{del, put, put_str, Guard, GuardedTxn, MAX_ATTEMPTS};
use crate::error::{Error, Result};
use crate::keys;

// ---------------------------------------------------------------- validation

/// The underlay address of a registration, after checking the host's name
/// and that the address can terminate tunnels.
fn validate_register(name: &str, req: &HostRegister) -> Result<IpAddr> {
    tessera_model::names::check_component(name).map_err(|r| FieldError::new("name", r))?;
    tessera_model::limits::check_count("gateways", &req.gateways, tessera_model::limits::MAX_GATEWAYS, "gateways")?;
    for (i, g) in req.gateways.iter().enumerate() {
        tessera_model::limits::check_ifname(&format!("gateways[{i}].interface"), &g.interface)?;
    }
    let underlay_ip: IpAddr = req
        .underlay_ip
        .trim()
        .parse()
        .map_err(|_| FieldError::new("underlay_ip", format!("{:?} is not an IP address", req.underlay_ip)))?;
    tessera_model::limits::check_underlay("underlay_ip", underlay_ip)?;
    Ok(underlay_ip)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

// ---------------------------------------------------------------- operations

impl Controller {
    /// Registers a host or refreshes its underlay address and last-seen time. Idempotent.
    ///
    /// No two hosts share an underlay address: each address is held by an
    /// index key naming its host, moved with the host's registration.
    pub async fn register_host(&self, name: &str, req: HostRegister) -> Result<Host> {
        let underlay_ip = validate_register(name, &req)?;
        let mut gateways: Vec<HostGateway> = Vec::new();
        for (i, g) in req.gateways.iter().enumerate() {
            let field = format!("gateways[{i}].network");
            let (net, _) = self.find_network(&g.network).await.map_err(|e| match e {
                Error::NotFound { kind, name, .. } => Error::NotFound { kind, name, field: Some(field.clone()) },
                other => other,
            })?;
            if !net.external {
                return Err(FieldError::new(
                    field,
                    format!("network {} is not external: a gateway serves an external network", net.fq_name),
                )
                .into());
            }
            if gateways.iter().any(|o| o.network == net.id) {
                return Err(FieldError::new(field, format!("network {} is named twice", net.fq_name)).into());
            }
            if gateways.iter().any(|o| o.interface == g.interface) {
                return Err(FieldError::new(
                    format!("gateways[{i}].interface"),
                    format!("{} serves another external network", g.interface),
                )
                .into());
            }
            gateways.push(HostGateway { network: net.id, interface: g.interface.clone() });
        }
        for _ in 0..MAX_ATTEMPTS {
            let old = self.get_json::<Host>(&keys::host(name)).await?;
            let alive = old.as_ref().is_some_and(|(h, _)| h.alive);
            let host = Host { name: name.into(), underlay_ip, last_seen: now(), gateways: gateways.clone(), alive };
            let index = keys::underlay(underlay_ip);
            let held_by = self.store().get(&index).await?.map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
            let index_guard = match held_by {
                Some(other) if other != name => {
                    return Err(Error::AlreadyExists {
                        what: format!("underlay address {underlay_ip} is host {other}'s"),
                        field: Some("underlay_ip".into()),
                    });
                }
                Some(_) => Compare::ValueEquals(index.clone(), name.as_bytes().to_vec()),
                None => Compare::Absent(index.clone()),
            };
            let host_guard = match &old {
                Some((_, rev)) => Compare::ModRevision(keys::host(name), *rev),
                None => Compare::Absent(keys::host(name)),
            };
            let mut txn = GuardedTxn::new()
                .guard(Guard::UnderlayTaken, index_guard)
                .guard(Guard::HostChanged, host_guard)
                .then(put(keys::host(name), &host))
                .then(put_str(index, name));
            if let Some((prev, _)) = old.as_ref().filter(|(p, _)| p.underlay_ip != underlay_ip) {
                txn = txn.then(del(keys::underlay(prev.underlay_ip)));
            }
            if self.commit(txn).await?.is_committed() {
                tracing::info!(host = name, underlay = %underlay_ip, "host registered");
                return Ok(host);
            }
        }
        Err(Error::Conflict(format!("host {name}")))
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
        let mut txn = GuardedTxn::new().then(del(keys::host(name)));
        if let Some((h, _)) = self.get_json::<Host>(&keys::host(name)).await? {
            let index = keys::underlay(h.underlay_ip);
            if self.store().get(&index).await?.is_some_and(|kv| kv.value == name.as_bytes()) {
                txn = txn.then(del(index));
            }
        }
        self.commit(txn).await?;
        self.counters.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        Ok(())
    }

    /// Replaces the hit counters `host` last reported. The host must be registered.
    pub async fn report_counters(&self, host: &str, report: HostCounters) -> Result<()> {
        self.get_host(host).await?;
        self.counters.lock().unwrap_or_else(|p| p.into_inner()).insert(host.to_string(), report);
        Ok(())
    }
}
