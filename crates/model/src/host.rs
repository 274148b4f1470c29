//! Hosts: the machines (or host namespaces) that run an agent.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// A registered host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Host {
    pub name: String,
    /// The address VXLAN tunnels of other hosts reach this host on.
    #[schema(value_type = String, example = "10.99.0.1")]
    pub underlay_ip: IpAddr,
    /// Seconds since the Unix epoch when its agent last registered or reported.
    pub last_seen: u64,
    /// The external networks this host is a gateway for, and the interface
    /// where the outside is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<HostGateway>,
    /// Whether its agent holds a lease at the controller (renewed every
    /// half second by agents of gateways): only gateways that are alive
    /// carry traffic to the outside.
    #[serde(default)]
    pub alive: bool,
}

/// A host's gateway to an external network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostGateway {
    /// The external network.
    #[schema(value_type = String, format = Uuid)]
    pub network: uuid::Uuid,
    /// The host's interface where that network's addresses live.
    pub interface: String,
}

/// A gateway in a [`HostRegister`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewayRegister {
    /// The external network, by name, fq name or UUID.
    pub network: String,
    pub interface: String,
}

/// Request to register a host (`PUT /v1/hosts/{name}`); idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HostRegister {
    pub underlay_ip: String,
    /// The external networks the host is a gateway for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<GatewayRegister>,
}
