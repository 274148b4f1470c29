//! Service chaining (seed 002, dockwall): containers that are network
//! functions between networks.
//!
//! A *service template* says which interfaces a function has (left, right,
//! management) and how it forwards; a *service* is a function between two
//! networks (its left and right), with the behaviour of the chain when none
//! of its instances is healthy; its *instances* are containers or
//! namespaces whose interfaces are endpoints of those networks, marked in
//! their owner ([`ServicePort`]). A policy rule `pass … apply-service fw`
//! steers the traffic it matches through the services it names, in order.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{FieldError, FqName};

/// How a service's instances forward.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceMode {
    /// Routed: the function has an address in its left and right networks
    /// and forwards between them, keeping the packets' addresses.
    #[default]
    InNetwork,
    /// Bump in the wire at layer 2. Not offered: networks are routed (every
    /// port is isolated and the bridge routes), so there is no segment to
    /// put a function into.
    Transparent,
}

/// The role of a service interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InterfaceRole {
    /// Towards the networks traffic comes from.
    Left,
    /// Towards the networks traffic goes to.
    Right,
    /// For managing the function; carries no chained traffic.
    Management,
}

impl InterfaceRole {
    /// Whether the interface has a routing table of its own in the instance
    /// (left and right: what enters one leaves by the other); a management
    /// interface keeps the main table, as any other interface.
    pub fn own_table(self) -> bool {
        self != InterfaceRole::Management
    }

    /// The interface's name in the instance (`left`, `right`, `mgmt`).
    pub fn ifname(self) -> &'static str {
        match self {
            InterfaceRole::Left => "left",
            InterfaceRole::Right => "right",
            InterfaceRole::Management => "mgmt",
        }
    }
}

impl FromStr for InterfaceRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "left" => Ok(InterfaceRole::Left),
            "right" => Ok(InterfaceRole::Right),
            "mgmt" | "management" => Ok(InterfaceRole::Management),
            other => Err(format!("{other:?} is not an interface role; use left, right or mgmt")),
        }
    }
}

impl fmt::Display for InterfaceRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.ifname())
    }
}

/// A kind of network function: its interfaces, in order, and its mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceTemplate {
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    pub fq_name: FqName,
    pub mode: ServiceMode,
    pub interfaces: Vec<InterfaceRole>,
}

/// Request to create a service template (`POST /v1/service-templates`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceTemplateCreate {
    pub name: String,
    #[serde(default)]
    pub project: Option<String>,
    /// `in-network` (the default).
    #[serde(default)]
    pub mode: Option<ServiceMode>,
    /// Roles in order: `left`, `right`, optionally `mgmt`.
    pub interfaces: Vec<String>,
}

impl ServiceTemplateCreate {
    /// The interfaces and mode, checked: a left and a right interface, each
    /// role once, and a mode this data plane offers.
    pub fn validate(&self) -> Result<(ServiceMode, Vec<InterfaceRole>), FieldError> {
        let mode = self.mode.unwrap_or_default();
        if mode == ServiceMode::Transparent {
            return Err(FieldError::new(
                "mode",
                "transparent services are not offered: Tessera's networks are routed (isolated ports, the bridge routes), so there is no layer-2 segment to put a function into; use in-network",
            ));
        }
        crate::limits::check_count("interfaces", &self.interfaces, 3, "interfaces")?;
        let mut roles = Vec::new();
        for (i, s) in self.interfaces.iter().enumerate() {
            let role: InterfaceRole = s.parse().map_err(|r| FieldError::new(format!("interfaces[{i}]"), r))?;
            if roles.contains(&role) {
                return Err(FieldError::new(format!("interfaces[{i}]"), format!("{role} is listed twice")));
            }
            roles.push(role);
        }
        for needed in [InterfaceRole::Left, InterfaceRole::Right] {
            if !roles.contains(&needed) {
                return Err(FieldError::new(
                    "interfaces",
                    format!("a service template needs a {needed} interface (traffic enters left and leaves right)"),
                ));
            }
        }
        Ok((mode, roles))
    }
}

/// What a chain does when a service of it has no healthy instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// The chain's traffic stops.
    #[default]
    Closed,
    /// The chain's traffic goes directly, as the rule's plain `pass` would.
    Open,
}

/// How an instance's health is checked beyond its links being up: from
/// its host, towards the address of each of its interfaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Probe {
    /// An ICMP echo answered.
    Ping,
    /// A TCP connection accepted on this port.
    Tcp(u16),
}

impl FromStr for Probe {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("ping") {
            return Ok(Probe::Ping);
        }
        match s.strip_prefix("tcp:").map(str::parse::<u16>) {
            Some(Ok(p)) if p != 0 => Ok(Probe::Tcp(p)),
            _ => Err(format!("{s:?} is not a probe; use ping or tcp:PORT")),
        }
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Probe::Ping => f.write_str("ping"),
            Probe::Tcp(p) => write!(f, "tcp:{p}"),
        }
    }
}

impl TryFrom<String> for Probe {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Probe> for String {
    fn from(p: Probe) -> String {
        p.to_string()
    }
}

/// A network function between two networks; its instances are the
/// endpoints whose owner names it ([`ServicePort`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Service {
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    pub fq_name: FqName,
    #[schema(value_type = String, format = Uuid)]
    pub template: Uuid,
    /// The network of the instances' left interfaces.
    #[schema(value_type = String, format = Uuid)]
    pub left: Uuid,
    /// The network of the instances' right interfaces.
    #[schema(value_type = String, format = Uuid)]
    pub right: Uuid,
    /// The network of their management interfaces, when the template has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Uuid)]
    pub management: Option<Uuid>,
    pub fail: FailMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "tcp:80")]
    pub probe: Option<Probe>,
    /// Instances Tessera runs itself: the hosts' agents start them in their
    /// Docker and attach them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<ServiceRun>,
}

/// The most instances a service may ask Tessera to run.
pub const MAX_RUN_INSTANCES: u32 = 16;

/// Instances of a service that its hosts' agents run in Docker: `instances`
/// containers of `image`, placed on `hosts` in turn, named
/// `SERVICE-1`, `SERVICE-2`, ….
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceRun {
    /// A Docker image present on the hosts (`tessera/vnf`).
    pub image: String,
    pub hosts: Vec<String>,
    pub instances: u32,
    /// `KEY=VALUE` for the containers' environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
}

impl ServiceRun {
    /// Checks the image, hosts, count and environment; fields are named
    /// `run.image`, `run.hosts[i]`, ….
    pub fn validate(&self) -> Result<(), FieldError> {
        let image = &self.image;
        crate::limits::check_text("run.image", image, 255)?;
        if image.is_empty() || image.contains(char::is_whitespace) || image.starts_with('-') {
            return Err(FieldError::new("run.image", format!("{image:?} is not an image name")));
        }
        if self.hosts.is_empty() {
            return Err(FieldError::new("run.hosts", "name at least one host to run the instances on"));
        }
        crate::limits::check_count("run.hosts", &self.hosts, MAX_RUN_INSTANCES as usize, "hosts")?;
        for (i, h) in self.hosts.iter().enumerate() {
            crate::names::check_component(h).map_err(|r| FieldError::new(format!("run.hosts[{i}]"), r))?;
        }
        if self.instances == 0 || self.instances > MAX_RUN_INSTANCES {
            return Err(FieldError::new("run.instances", format!("{} is not 1 to {MAX_RUN_INSTANCES}", self.instances)));
        }
        crate::limits::check_count("run.env", &self.env, 64, "variables")?;
        for (i, e) in self.env.iter().enumerate() {
            let field = format!("run.env[{i}]");
            crate::limits::check_text(&field, e, 4096)?;
            match e.split_once('=') {
                Some((k, _)) if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {}
                _ => return Err(FieldError::new(field, format!("{e:?} is not KEY=VALUE"))),
            }
        }
        Ok(())
    }

    /// The instances to run: (instance name, host), in order.
    pub fn placement(&self, service: &str) -> Vec<(String, String)> {
        (0..self.instances as usize).map(|i| (format!("{service}-{}", i + 1), self.hosts[i % self.hosts.len()].clone())).collect()
    }
}

impl Service {
    /// The network of the interface of `role`.
    pub fn network_of(&self, role: InterfaceRole) -> Option<Uuid> {
        match role {
            InterfaceRole::Left => Some(self.left),
            InterfaceRole::Right => Some(self.right),
            InterfaceRole::Management => self.management,
        }
    }
}

/// Request to create a service (`POST /v1/services`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceCreate {
    pub name: String,
    #[serde(default)]
    pub project: Option<String>,
    /// The template, by name, fq name or UUID.
    pub template: String,
    /// Networks, by name, fq name or UUID.
    pub left: String,
    pub right: String,
    #[serde(default)]
    pub management: Option<String>,
    /// `closed` (the default) or `open`.
    #[serde(default)]
    pub fail: Option<FailMode>,
    /// `ping` or `tcp:PORT`; links only when absent.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "tcp:80")]
    pub probe: Option<Probe>,
    /// Instances for the hosts' agents to run in Docker.
    #[serde(default)]
    pub run: Option<ServiceRun>,
}

/// An endpoint that is an interface of a service instance, in its
/// [`Owner`](crate::Owner).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServicePort {
    #[schema(value_type = String, format = Uuid)]
    pub service: Uuid,
    /// The instance's name, unique within the service.
    pub instance: String,
    pub role: InterfaceRole,
}

/// A service instance's health as its host's agent checks it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Health {
    pub healthy: bool,
    /// Why it is not healthy; at most 1,024 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Traffic through a service port, as its host counts it (the host side of
/// its veth: `in` is what the instance received).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PortTraffic {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
}

/// Request to report a service port's health (`PUT
/// /v1/endpoints/{id}/health`), which its host's agent sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthReport {
    pub health: Health,
    #[serde(default)]
    pub traffic: PortTraffic,
}

/// The instances of `service` among `endpoints` (their ports), by instance
/// name: the same order on every host and at the controller.
pub fn instances_of(service: Uuid, endpoints: &[crate::Endpoint]) -> std::collections::BTreeMap<&str, Vec<&crate::Endpoint>> {
    let mut out: std::collections::BTreeMap<&str, Vec<&crate::Endpoint>> = std::collections::BTreeMap::new();
    for e in endpoints {
        if let Some(sp) = e.owner.service.as_ref().filter(|sp| sp.service == service) {
            out.entry(sp.instance.as_str()).or_default().push(e);
        }
    }
    out
}

/// Whether a service port is programmed and reported healthy.
pub fn port_healthy(e: &crate::Endpoint) -> bool {
    e.status == crate::EndpointStatus::Active && e.health.as_ref().is_some_and(|h| h.healthy)
}

/// One instance of a service as `GET /v1/services/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceView {
    pub name: String,
    pub host: String,
    /// Healthy when every interface is programmed and reported healthy.
    pub healthy: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub ports: Vec<InstancePort>,
}

/// An interface of an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstancePort {
    pub role: InterfaceRole,
    #[schema(value_type = String, format = Uuid)]
    pub endpoint: Uuid,
    #[schema(value_type = Vec<String>)]
    pub ips: Vec<ipnet::IpNet>,
    pub traffic: PortTraffic,
}

/// A service with its instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceView {
    #[serde(flatten)]
    pub service: Service,
    pub instances: Vec<InstanceView>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(interfaces: &[&str], mode: Option<ServiceMode>) -> ServiceTemplateCreate {
        ServiceTemplateCreate {
            name: "fw".into(),
            project: None,
            mode,
            interfaces: interfaces.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_template_needs_left_and_right_once_each() {
        assert_eq!(
            template(&["left", "right", "mgmt"], None).validate().unwrap(),
            (ServiceMode::InNetwork, vec![InterfaceRole::Left, InterfaceRole::Right, InterfaceRole::Management])
        );
        let e = template(&["left", "mgmt"], None).validate().unwrap_err();
        assert_eq!(e.field, "interfaces");
        assert!(e.reason.contains("right"), "{e}");
        assert_eq!(template(&["left", "left", "right"], None).validate().unwrap_err().field, "interfaces[1]");
        assert_eq!(template(&["left", "up"], None).validate().unwrap_err().field, "interfaces[1]");
        let e = template(&["left", "right"], Some(ServiceMode::Transparent)).validate().unwrap_err();
        assert_eq!(e.field, "mode");
    }

    #[test]
    fn instances_to_run_are_checked_and_placed_in_turn() {
        let run = ServiceRun {
            image: "tessera/vnf".into(),
            hosts: vec!["h3".into(), "h2".into()],
            instances: 3,
            env: vec!["DROP=22".into()],
        };
        run.validate().unwrap();
        assert_eq!(
            run.placement("fw"),
            vec![("fw-1".into(), "h3".into()), ("fw-2".into(), "h2".into()), ("fw-3".into(), "h3".into())]
        );
        let bad = |f: fn(&mut ServiceRun)| {
            let mut r = run.clone();
            f(&mut r);
            r.validate().unwrap_err().field
        };
        assert_eq!(bad(|r| r.instances = 0), "run.instances");
        assert_eq!(bad(|r| r.hosts.clear()), "run.hosts");
        assert_eq!(bad(|r| r.hosts[1] = "h 2".into()), "run.hosts[1]");
        assert_eq!(bad(|r| r.image = "a b".into()), "run.image");
        assert_eq!(bad(|r| r.env[0] = "=x".into()), "run.env[0]");
    }

    #[test]
    fn probes_parse_and_display() {
        assert_eq!("ping".parse::<Probe>().unwrap(), Probe::Ping);
        assert_eq!("tcp:80".parse::<Probe>().unwrap(), Probe::Tcp(80));
        assert_eq!(Probe::Tcp(22).to_string(), "tcp:22");
        assert!("tcp:0".parse::<Probe>().is_err());
        assert!("http".parse::<Probe>().is_err());
    }
}
