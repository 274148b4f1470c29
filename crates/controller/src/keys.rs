//! The controller's key layout in the store.
//!
//! Objects live under `/tessera/<kind>/<id>`; secondary indexes that enforce
//! uniqueness (names, VNIs, MACs, addresses) live under `/tessera/index/...`
//! and are written in the same transaction as the object they index, with a
//! `Compare::Absent` on the index key. Agents watch `/tessera/` from a revision.

use std::net::IpAddr;

use tessera_model::{FqName, MacAddr, ProjectName, Vni};
use uuid::Uuid;

pub const ROOT: &str = "/tessera/";
/// The cluster ID, written once when the store is made (`--init`).
pub const CLUSTER: &str = "/tessera/cluster";
/// The store's epoch: a new UUID written by `tessera store migrate` into the
/// store it fills, whose revisions are not the source's (see
/// `Snapshot::epoch`). Absent in a store made with `--init`.
pub const STORE_EPOCH: &str = "/tessera/store-epoch";
/// Written by the readiness check after a failed write, to see whether the
/// store takes writes again.
pub const PROBE: &str = "/tessera/probe";
/// Controllers' registrations, `controllers/<id>` (see `service::members`).
pub const CONTROLLERS: &str = "/tessera/controllers/";
/// The leader key: which controller does the work that runs once.
pub const LEADER: &str = "/tessera/leader";

pub fn controller(id: Uuid) -> String {
    format!("{CONTROLLERS}{id}")
}
/// Bearer tokens, by the SHA-256 of their secret.
pub const TOKENS: &str = "/tessera/tokens/";
pub const PROJECTS: &str = "/tessera/projects/";
pub const NETWORKS: &str = "/tessera/networks/";
pub const ENDPOINTS: &str = "/tessera/endpoints/";
pub const HOSTS: &str = "/tessera/hosts/";
pub const POLICIES: &str = "/tessera/policies/";
/// Chunks of policies' rules: `/tessera/policy-rules/<policy>/<chunk, 16 hex digits>`.
pub const POLICY_RULES: &str = "/tessera/policy-rules/";
pub const VNI_INDEX: &str = "/tessera/index/vni/";

/// The objects agents mirror whole, by the kind a watch names them with
/// and their prefix (policies' chunks of rules are apart).
pub const MIRRORED: [(&str, &str); 6] = [
    ("network", NETWORKS),
    ("endpoint", ENDPOINTS),
    ("host", HOSTS),
    ("policy", POLICIES),
    ("floating_ip", FLOATING_IPS),
    ("service", SERVICES),
];

pub fn project(p: &ProjectName) -> String {
    format!("{PROJECTS}{p}")
}

pub fn network(id: Uuid) -> String {
    format!("{NETWORKS}{id}")
}

pub fn network_name(n: &FqName) -> String {
    format!("/tessera/index/network-name/{n}")
}

/// Prefix of the name index of the networks of one project.
pub fn network_names_of(p: &ProjectName) -> String {
    format!("/tessera/index/network-name/{p}:")
}

pub fn vni(v: Vni) -> String {
    format!("{VNI_INDEX}{:08}", v.get())
}

pub fn endpoint(id: Uuid) -> String {
    format!("{ENDPOINTS}{id}")
}

/// Endpoint names are unique within their network; this prefix lists a network's endpoints.
pub fn endpoints_of(network: Uuid) -> String {
    format!("/tessera/index/endpoint-name/{network}/")
}

pub fn endpoint_name(network: Uuid, name: &str) -> String {
    format!("{}{name}", endpoints_of(network))
}

pub fn mac(m: MacAddr) -> String {
    format!("/tessera/index/mac/{m}")
}

/// Address allocations of one subnet, sorted numerically by their key.
pub fn allocations_of(network: Uuid, subnet: usize) -> String {
    format!("/tessera/ipam/{network}/{subnet}/")
}

pub fn allocations_of_network(network: Uuid) -> String {
    format!("/tessera/ipam/{network}/")
}

pub fn allocation(network: Uuid, subnet: usize, addr: IpAddr) -> String {
    format!("{}{}", allocations_of(network, subnet), tessera_ipam::sort_key(addr))
}

pub fn host(name: &str) -> String {
    format!("{HOSTS}{name}")
}

/// The host whose tunnels end at `ip` (no two hosts share an underlay address).
pub fn underlay(ip: IpAddr) -> String {
    format!("{ROOT}index/underlay/{ip}")
}

pub fn policy(id: Uuid) -> String {
    format!("{POLICIES}{id}")
}

pub fn policy_rules_of(id: Uuid) -> String {
    format!("{POLICY_RULES}{id}/")
}

pub fn policy_rules(id: Uuid, chunk: u64) -> String {
    format!("{POLICY_RULES}{id}/{chunk:016x}")
}

pub fn policy_name(n: &FqName) -> String {
    format!("/tessera/index/policy-name/{n}")
}

pub fn policy_names_of(p: &ProjectName) -> String {
    format!("/tessera/index/policy-name/{p}:")
}

pub fn token(hash: &str) -> String {
    format!("{TOKENS}{hash}")
}

pub const FLOATING_IPS: &str = "/tessera/floating-ips/";

pub fn floating_ip(id: Uuid) -> String {
    format!("{FLOATING_IPS}{id}")
}

/// The floating IPs of an external network: `.../<external>/<fip>`.
pub fn floating_ips_of(external: Uuid) -> String {
    format!("/tessera/index/floating-ip/{external}/")
}

pub fn floating_ip_of(external: Uuid, fip: Uuid) -> String {
    format!("{}{fip}", floating_ips_of(external))
}

/// The floating IPs associated with an endpoint: `.../<endpoint>/<fixed ip>`
/// holds the floating IP's UUID, so a fixed address has at most one.
pub fn fixed_ips_of(endpoint: Uuid) -> String {
    format!("/tessera/index/fixed-ip/{endpoint}/")
}

pub fn fixed_ip(endpoint: Uuid, ip: IpAddr) -> String {
    format!("{}{ip}", fixed_ips_of(endpoint))
}

/// The networks source-NATed through an external network: `.../<external>/<network>`.
pub fn snat_users_of(external: Uuid) -> String {
    format!("/tessera/index/snat/{external}/")
}

pub fn snat_user(external: Uuid, network: Uuid) -> String {
    format!("{}{network}", snat_users_of(external))
}

/// The host ports published on a host for one protocol:
/// `.../<host>/<protocol>/<port, 5 digits>` holds the endpoint's UUID.
pub fn host_ports_of(host: &str, protocol: &str) -> String {
    format!("/tessera/index/host-port/{host}/{protocol}/")
}

pub fn host_port(host: &str, protocol: &str, port: u16) -> String {
    format!("{}{port:05}", host_ports_of(host, protocol))
}

pub const SERVICE_TEMPLATES: &str = "/tessera/service-templates/";
pub const SERVICES: &str = "/tessera/services/";

pub fn service_template(id: Uuid) -> String {
    format!("{SERVICE_TEMPLATES}{id}")
}

pub fn service_template_name(n: &FqName) -> String {
    format!("/tessera/index/service-template-name/{n}")
}

/// The services made from a template: `.../<template>/<service>`.
pub fn services_of_template(template: Uuid) -> String {
    format!("/tessera/index/template-service/{template}/")
}

pub fn service(id: Uuid) -> String {
    format!("{SERVICES}{id}")
}

pub fn service_name(n: &FqName) -> String {
    format!("/tessera/index/service-name/{n}")
}

/// The ports of a service's instances: `.../<service>/<endpoint>`.
pub fn service_ports_of(service: Uuid) -> String {
    format!("/tessera/index/service-port/{service}/")
}

pub fn service_port(service: Uuid, endpoint: Uuid) -> String {
    format!("{}{endpoint}", service_ports_of(service))
}

/// The services of a network (left, right or management): `.../<network>/<service>`;
/// a network is not deleted while a service names it.
pub fn services_of_network(network: Uuid) -> String {
    format!("/tessera/index/network-service/{network}/")
}

pub fn network_service(network: Uuid, service: Uuid) -> String {
    format!("{}{service}", services_of_network(network))
}
