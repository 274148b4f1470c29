//! Published ports: `ProgramExternalConnectivity` publishes the ports of
//! `docker run -p` for the endpoint (at the controller, which keeps a host
//! port for one endpoint; the agent programs them), `RevokeExternalConnectivity`
//! withdraws them, and `EndpointOperInfo` reports them.

use super::*;
use crate::ports::{bindings, published, PORT_MAP};
use crate::protocol::{EndpointInfoResponse, ProgramExternalConnectivityRequest};

impl Plugin {
    /// `NetworkDriver.ProgramExternalConnectivity`.
    pub async fn program_external(&self, req: ProgramExternalConnectivityRequest) -> Result<()> {
        let ports = published(&req.options)?;
        if ports.is_empty() {
            return Ok(());
        }
        for p in &ports {
            tessera_api::ports::check_free(p).map_err(DriverError::Invalid)?;
        }
        let net = self.network_of(&req.network_id).await?;
        let ep = self
            .tessera_endpoint(net.id, &req.endpoint_id)
            .await?
            .ok_or_else(|| DriverError::NotFound(format!("endpoint {} is not joined on this host", req.endpoint_id)))?;
        let done = self.ctl.set_endpoint_ports(ep.id, &ports).await?;
        tracing::info!(endpoint = %req.endpoint_id, ports = done.ports.len(), "ports published");
        Ok(())
    }

    /// `NetworkDriver.RevokeExternalConnectivity`.
    pub async fn revoke_external(&self, network_id: &str, eid: &str) -> Result<()> {
        let net = match self.network_of(network_id).await {
            Ok(n) => n,
            Err(DriverError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        if let Some(ep) = self.tessera_endpoint(net.id, eid).await?.filter(|e| !e.ports.is_empty()) {
            self.ctl.set_endpoint_ports(ep.id, &[]).await?;
            tracing::info!(endpoint = %eid, "ports withdrawn");
        }
        Ok(())
    }

    /// `NetworkDriver.EndpointOperInfo`: the endpoint's published ports.
    pub async fn endpoint_info(&self, network_id: &str, eid: &str) -> Result<EndpointInfoResponse> {
        let mut info = EndpointInfoResponse::default();
        let Ok(net) = self.network_of(network_id).await else { return Ok(info) };
        if let Some(ep) = self.tessera_endpoint(net.id, eid).await?.filter(|e| !e.ports.is_empty()) {
            let value = serde_json::to_value(bindings(&ep.ports)).unwrap_or_default();
            info.value.insert(PORT_MAP.into(), value);
        }
        Ok(info)
    }
}
