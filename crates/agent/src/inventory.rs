//! What runtimes ask of the agent beyond attach and detach: the network an
//! attachment would join, whether an attachment is intact (CNI CHECK), and
//! the removal of attachments a runtime no longer knows (CNI GC).

use std::collections::BTreeSet;

use tessera_api::agent::{CheckRequest, CheckResponse, GcRequest};
use tessera_dataplane::desired::host_veth_name;
use tessera_dataplane::linux::LinuxDataplane;
use tessera_dataplane::Dataplane;
use tessera_model::names::DEFAULT_PROJECT;
use tessera_model::{Endpoint, ErrorCode, Network};
use uuid::Uuid;

use crate::agent::Agent;
use crate::desired;
use crate::error::{controller_error, ApiError};

fn check_failed(message: String) -> ApiError {
    ApiError::new(ErrorCode::CheckFailed, message, None)
}

impl Agent {
    /// The network `reference` (a UUID, a fully qualified name or a name in
    /// the default project) names: from the mirror when it holds it (no
    /// round trip, and it works while the controller is away), else from the
    /// controller, which also resolves names in other projects.
    pub async fn network(&self, reference: &str) -> Result<Network, ApiError> {
        let mirrored = self.snapshot.borrow().as_ref().and_then(|s| {
            s.networks
                .iter()
                .find(|n| {
                    n.id.to_string() == reference
                        || n.fq_name.to_string() == reference
                        || n.fq_name.to_string() == format!("{DEFAULT_PROJECT}:{reference}")
                })
                .cloned()
        });
        match mirrored {
            Some(n) => Ok(n),
            None => self.client.network(reference).await.map_err(controller_error),
        }
    }

    /// The endpoints of this host in `network` that belong to `container_id`
    /// (and to `ifname`, when given).
    async fn endpoints_of(&self, network: Uuid, container_id: &str, ifname: Option<&str>) -> Result<Vec<Endpoint>, ApiError> {
        let mine = self.client.endpoints(None, Some(&self.me.name)).await.map_err(controller_error)?;
        Ok(mine
            .into_iter()
            .filter(|e| {
                e.network == network
                    && e.owner.container_id.as_deref() == Some(container_id)
                    && ifname.is_none_or(|i| e.owner.ifname.as_deref().unwrap_or(desired::DEFAULT_IFNAME) == i)
            })
            .collect())
    }

    /// Verifies an attachment end to end: the endpoint exists and is
    /// programmed, the host side of its veth exists, and the interface in
    /// the namespace carries the endpoint's MAC and every address. The error
    /// says what is missing.
    pub async fn check(&self, req: CheckRequest) -> Result<CheckResponse, ApiError> {
        let net = self.network(&req.network).await?;
        let ep = self.endpoints_of(net.id, &req.container_id, Some(&req.ifname)).await?.into_iter().next().ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                format!("container {} has no interface {} in network {}", req.container_id, req.ifname, req.network),
                None,
            )
        })?;
        if !self.progress.borrow().programmed.contains(&ep.id) {
            let last = self.progress.borrow().last_error.clone().unwrap_or_else(|| "no error reported".into());
            return Err(check_failed(format!("endpoint {} is not programmed; last data plane error: {last}", ep.name)));
        }
        let internal = |e: tessera_dataplane::DataplaneError| ApiError::new(ErrorCode::Internal, e.to_string(), None);
        let host_ifname = host_veth_name(ep.id);
        let host_side = self.dp.interfaces().await.map_err(internal)?.into_iter().find(|v| v.name == host_ifname);
        let Some(host_side) = host_side else {
            return Err(check_failed(format!("the host side {host_ifname} of endpoint {} is missing", ep.name)));
        };
        if !std::path::Path::new(&req.netns).exists() {
            return Err(check_failed(format!("network namespace {} does not exist", req.netns)));
        }
        let inside = LinuxDataplane::in_netns(&req.netns).await.map_err(internal)?.interfaces().await.map_err(internal)?;
        let Some(iface) = inside.into_iter().find(|v| v.name == req.ifname) else {
            return Err(check_failed(format!("{} has no interface {}", req.netns, req.ifname)));
        };
        if iface.mac != Some(ep.mac) {
            return Err(check_failed(format!(
                "{} in {} has MAC {}, the endpoint has {}",
                req.ifname,
                req.netns,
                iface.mac.map(|m| m.to_string()).unwrap_or_else(|| "none".into()),
                ep.mac
            )));
        }
        let have: BTreeSet<_> = iface.addrs.iter().collect();
        // By DHCP, the container's client sets the addresses when it likes.
        if let Some(missing) = ep.ips.iter().find(|a| !ep.owner.dhcp && !have.contains(a)) {
            return Err(check_failed(format!("{} in {} lacks the address {missing}", req.ifname, req.netns)));
        }
        if !iface.flags.iter().any(|f| f == "up") {
            return Err(check_failed(format!("{} in {} is down", req.ifname, req.netns)));
        }
        Ok(CheckResponse { endpoint: ep, host_ifname, mtu: host_side.mtu })
    }

    /// Detaches this host's attachments of a runtime that the runtime no
    /// longer knows; returns what it detached.
    pub async fn gc(&self, req: GcRequest) -> Result<Vec<Endpoint>, ApiError> {
        if req.name_prefix.is_empty() {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                "name_prefix must not be empty: it keeps GC to one runtime's attachments",
                Some("name_prefix"),
            ));
        }
        let net = self.network(&req.network).await?;
        let valid: BTreeSet<(&str, &str)> = req.valid.iter().map(|a| (a.container_id.as_str(), a.ifname.as_str())).collect();
        let mine = self.client.endpoints(None, Some(&self.me.name)).await.map_err(controller_error)?;
        let stale: Vec<Endpoint> = mine
            .into_iter()
            .filter(|e| e.network == net.id && e.name.starts_with(&req.name_prefix))
            .filter(|e| {
                let key = (
                    e.owner.container_id.as_deref().unwrap_or_default(),
                    e.owner.ifname.as_deref().unwrap_or(desired::DEFAULT_IFNAME),
                );
                !valid.contains(&key)
            })
            .collect();
        tracing::info!(network = %req.network, stale = stale.len(), known = req.valid.len(), "garbage collection");
        self.remove(stale).await
    }
}
