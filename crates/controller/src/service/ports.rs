//! Published ports: ports of an endpoint's host that lead to the endpoint
//! (`docker run -p`, CNI `portMappings`). A host port (per protocol) leads
//! to one endpoint: an index key per host, protocol and port holds it. A
//! request for port 0 gets the lowest free one of 32768-60999.

use std::collections::BTreeSet;

use tessera_model::{limits, Endpoint, EndpointPorts, FieldError, PublishedPort};
use tessera_store::Compare;
use uuid::Uuid;

use super::controller::Controller;
use super::txn::{del, put, put_str, Guard, GuardedTxn, MAX_ATTEMPTS};
use crate::error::{Error, Result};
use crate::keys;

/// The ports handed out for a request of port 0.
const EPHEMERAL: std::ops::RangeInclusive<u16> = 32768..=60999;

fn validate(req: &EndpointPorts, ep: &Endpoint) -> Result<()> {
    limits::check_count("ports", &req.ports, limits::MAX_PORTS, "published ports")?;
    let mut seen = BTreeSet::new();
    for (i, p) in req.ports.iter().enumerate() {
        let at = |f: &str| format!("ports[{i}].{f}");
        if p.container_port == 0 {
            return Err(FieldError::new(at("container_port"), "must be 1 to 65535").into());
        }
        if let Some(ip) = p.host_ip {
            if ip.is_multicast() || ip.is_unspecified() {
                return Err(FieldError::new(at("host_ip"), format!("{ip} is not an address of a host")).into());
            }
            if ip.is_ipv6() && ip.is_loopback() {
                return Err(FieldError::new(at("host_ip"), "::1 cannot be published: the kernel routes it nowhere but lo").into());
            }
            if !ep.ips.iter().any(|a| a.addr().is_ipv4() == ip.is_ipv4()) {
                return Err(
                    FieldError::new(at("host_ip"), format!("endpoint {} has no address of {ip}'s family", ep.name)).into()
                );
            }
        }
        if p.host_port != 0 && !seen.insert((p.protocol, p.host_port)) {
            return Err(
                FieldError::new(at("host_port"), format!("{}/{} is published twice", p.host_port, p.protocol.name())).into()
            );
        }
    }
    Ok(())
}

impl Controller {
    /// Sets the ports published for an endpoint (replacing the list): each
    /// host port must be free on the endpoint's host, or this endpoint's.
    pub async fn set_endpoint_ports(&self, id: &str, req: EndpointPorts) -> Result<Endpoint> {
        let uuid: Uuid = id.parse().map_err(|_| FieldError::new("id", format!("{id:?} is not a UUID")))?;
        for _ in 0..MAX_ATTEMPTS {
            let (mut ep, rev) =
                self.get_json::<Endpoint>(&keys::endpoint(uuid)).await?.ok_or_else(|| Error::not_found("endpoint", id))?;
            validate(&req, &ep)?;
            let mine = uuid.to_string();
            let mut ports: Vec<PublishedPort> = Vec::new();
            let mut txn = GuardedTxn::new().guard(Guard::EndpointChanged, Compare::ModRevision(keys::endpoint(uuid), rev));
            let mut taken_here: BTreeSet<(&str, u16)> = BTreeSet::new();
            for (i, p) in req.ports.iter().enumerate() {
                let proto = p.protocol.name();
                let host_port = match p.host_port {
                    0 => self.free_host_port(&ep.host, proto, &taken_here).await?,
                    n => n,
                };
                taken_here.insert((proto, host_port));
                let key = keys::host_port(&ep.host, proto, host_port);
                match self.store.get(&key).await? {
                    Some(kv) if kv.value != mine.as_bytes() => {
                        return Err(Error::AlreadyExists {
                            what: format!(
                                "host port {host_port}/{proto} of host {} is published for endpoint {}",
                                ep.host,
                                String::from_utf8_lossy(&kv.value)
                            ),
                            field: Some(format!("ports[{i}].host_port")),
                        });
                    }
                    Some(kv) => txn = txn.guard(Guard::PortTaken(host_port), Compare::ValueEquals(key.clone(), kv.value)),
                    None => txn = txn.guard(Guard::PortTaken(host_port), Compare::Absent(key.clone())),
                }
                txn = txn.then(put_str(key, &mine));
                ports.push(PublishedPort { host_port, ..p.clone() });
            }
            for old in &ep.ports {
                if !taken_here.contains(&(old.protocol.name(), old.host_port)) {
                    txn = txn.then(del(keys::host_port(&ep.host, old.protocol.name(), old.host_port)));
                }
            }
            if ep.ports == ports {
                return Ok(ep);
            }
            ep.ports = ports;
            // Refused (Guard::EndpointChanged, PortTaken): read again.
            if self.commit(txn.then(put(keys::endpoint(uuid), &ep))).await?.is_committed() {
                tracing::info!(endpoint = %ep.name, ports = ep.ports.len(), "published ports set");
                return Ok(ep);
            }
        }
        Err(Error::Conflict(format!("endpoint {id}")))
    }

    async fn free_host_port(&self, host: &str, proto: &str, also: &BTreeSet<(&str, u16)>) -> Result<u16> {
        let prefix = keys::host_ports_of(host, proto);
        let used: BTreeSet<u16> =
            self.store.range_keys(&prefix).await?.kvs.iter().filter_map(|kv| kv.key[prefix.len()..].parse().ok()).collect();
        EPHEMERAL
            .into_iter()
            .find(|p| !used.contains(p) && !also.contains(&(proto, *p)))
            .ok_or_else(|| Error::Exhausted(format!("no free {proto} port left on host {host}")))
    }
}

/// The ops that free an endpoint's host ports when it is deleted.
pub(super) fn release_ops(ep: &Endpoint) -> Vec<tessera_store::Op> {
    ep.ports.iter().map(|p| del(keys::host_port(&ep.host, p.protocol.name(), p.host_port))).collect()
}
