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
}

/// Request to register a host (`PUT /v1/hosts/{name}`); idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HostRegister {
    pub underlay_ip: String,
}
