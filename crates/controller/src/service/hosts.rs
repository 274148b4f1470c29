//! Hosts: the machines agents run on, with the underlay address their
//! tunnels end at, and the hit counters their agents last reported. A host
//! can be removed only once it owns no endpoints.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use tessera_model::{FieldError, Host, HostCounters, HostRegister};

use super::controller::Controller;
use super::endpoints::EndpointFilter;
use super::txn::{del, put, GuardedTxn};
use crate::error::{Error, Result};
use crate::keys;

// ---------------------------------------------------------------- validation

/// The underlay address of a registration, after checking the host's name
/// and that the address can terminate tunnels.
fn validate_register(name: &str, req: &HostRegister) -> Result<IpAddr> {
    tessera_model::names::check_component(name).map_err(|r| FieldError::new("name", r))?;
    let underlay_ip: IpAddr = req
        .underlay_ip
        .trim()
        .parse()
        .map_err(|_| FieldError::new("underlay_ip", format!("{:?} is not an IP address", req.underlay_ip)))?;
    if underlay_ip.is_unspecified() || underlay_ip.is_multicast() {
        return Err(FieldError::new("underlay_ip", format!("{underlay_ip} cannot terminate tunnels")).into());
    }
    Ok(underlay_ip)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

// ---------------------------------------------------------------- operations

impl Controller {
    /// Registers a host or refreshes its underlay address and last-seen time. Idempotent.
    pub async fn register_host(&self, name: &str, req: HostRegister) -> Result<Host> {
        let underlay_ip = validate_register(name, &req)?;
        let host = Host { name: name.into(), underlay_ip, last_seen: now() };
        self.commit(GuardedTxn::new().then(put(keys::host(name), &host))).await?;
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
        self.commit(GuardedTxn::new().then(del(keys::host(name)))).await?;
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
