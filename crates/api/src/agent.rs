//! The agent's local API (on its unix socket, `/run/tessera/agent.sock` by
//! default): the requests and answers the CLI and the runtime plugins send
//! and receive. The agent's server decodes the same types.
//!
//! | call | request | answer |
//! |---|---|---|
//! | `POST /v1/attach` | [`AttachRequest`] | [`Endpoint`] (once programmed) |
//! | `POST /v1/detach` | [`DetachRequest`] | [`DetachResponse`] (once gone) |
//! | `POST /v1/check` | [`CheckRequest`] | [`CheckResponse`] |
//! | `POST /v1/gc` | [`GcRequest`] | [`DetachResponse`] |
//! | `GET /v1/networks/{ref}` | — | [`Network`](tessera_model::Network) |
//! | `GET /v1/vifs` | — | [`VifEntry`]s |
//! | `GET /v1/status` | — | [`AgentStatus`] |
//!
//! Refusals carry the [`crate::ErrorBody`] the controller uses.

use serde::{Deserialize, Serialize};
pub use tessera_model::vif::{VifEntry, VifKind};
use tessera_model::Endpoint;

/// The default path of the agent's local API socket.
pub const DEFAULT_SOCKET: &str = "/run/tessera/agent.sock";

/// `POST /v1/attach`: put a network namespace into a network.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachRequest {
    /// Network name (bare or fully qualified) or UUID.
    pub network: String,
    /// Path of the namespace: `/proc/PID/ns/net` or `/run/netns/NAME`.
    pub netns: String,
    /// Static addresses, at most one per family.
    #[serde(default)]
    pub ips: Vec<String>,
    /// Interface name inside the namespace; `eth0` when absent.
    #[serde(default)]
    pub ifname: Option<String>,
    #[serde(default)]
    pub container_id: Option<String>,
    /// Endpoint name; derived from the container or namespace and the
    /// interface when absent, so that a retried attach is idempotent.
    #[serde(default)]
    pub name: Option<String>,
    /// A chosen MAC for the interface; generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The Docker endpoint this attach serves (the Docker plugin's Join).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_endpoint_id: Option<String>,
    /// The address reservation whose addresses (given in `ips`) the endpoint
    /// adopts, and returns to when it is detached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<String>,
    /// Once programmed, move the interface out of `netns` into the agent's
    /// own (the host's) namespace under this name, for the runtime to move
    /// into the container (Docker's `Join`, which comes before the
    /// container's namespace exists). A retried attach whose interface was
    /// already handed over finds it there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handover: Option<String>,
    /// Ports of the host to publish for the endpoint (CNI `portMappings`);
    /// they replace the endpoint's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<tessera_model::PublishedPort>,
    /// The container configures the interface itself, by DHCP.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dhcp: bool,
    /// The interface gets a routing table of its own in the container.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub own_table: bool,
    /// The interface is one of a service instance's; a left or right one
    /// gets its own table (whatever `own_table` says), and is named after its role when
    /// `ifname` is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<tessera_model::ServicePort>,
}

/// `POST /v1/detach`: take a namespace out of one network or of all.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetachRequest {
    #[serde(default)]
    pub netns: Option<String>,
    #[serde(default)]
    pub container_id: Option<String>,
    /// Only this network; all of the namespace's networks when absent.
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub ifname: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DetachResponse {
    pub detached: Vec<Endpoint>,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentStatus {
    pub host: String,
    pub underlay_ip: std::net::IpAddr,
    pub controller: String,
    pub controller_connected: bool,
    /// Why the agent keeps its data plane as it is instead of applying the
    /// controller's intent (another cluster's store, an emptied intent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holding: Option<String>,
    pub revision: u64,
    pub networks: usize,
    pub local_endpoints: usize,
    pub reconciles: u64,
    pub last_error: Option<String>,
    /// The networks with endpoints on this host, and how many of those
    /// the data plane holds (absent from agents before 0.2).
    #[serde(default)]
    pub local_networks: Vec<LocalNetwork>,
    /// The data plane: `ebpf` (with the flows the fast path carries), or
    /// `kernel` and why (absent from agents before 0.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataplane: Option<Dataplane>,
}

/// Which data plane an agent runs ([`AgentStatus`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Dataplane {
    /// The fast path beside the kernel path; `flows`: the flow directions
    /// it carries now; `underlay`: who takes its datagrams from other
    /// hosts off the underlay (absent from earlier agents).
    Ebpf {
        flows: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        underlay: Option<Decapsulation>,
    },
    /// The kernel path alone, and why.
    Kernel { reason: String, chosen: bool },
}

/// Who takes the fast path's datagrams from other hosts off the underlay
/// ([`Dataplane::Ebpf`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decapsulation {
    /// The device that holds the host's underlay address.
    pub device: String,
    /// Why the host's stack decapsulates them instead of a program on
    /// `device` (`None`: the program does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
}

/// A network with endpoints on the host ([`AgentStatus`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalNetwork {
    /// `domain:project:name`.
    pub name: String,
    pub vni: u32,
    /// This host's endpoints of the network in the intent.
    pub endpoints: usize,
    /// Of those, the ones the data plane holds.
    pub programmed: usize,
}

/// `POST /v1/check`: is this attachment whole?
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
}

/// A whole attachment: its endpoint and both ends of its veth.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckResponse {
    pub endpoint: Endpoint,
    pub host_ifname: String,
    pub mtu: u32,
}

/// One attachment a runtime still knows.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnownAttachment {
    pub container_id: String,
    pub ifname: String,
}

/// `POST /v1/gc`: detach every endpoint of `network` on this host whose name
/// starts with `name_prefix` (the runtime's attachments) and that is not in
/// `valid`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcRequest {
    pub network: String,
    pub name_prefix: String,
    #[serde(default)]
    pub valid: Vec<KnownAttachment>,
}
