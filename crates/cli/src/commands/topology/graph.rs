//! The fabric as one value (pure): hosts with their endpoints, networks,
//! the networks each policy connects, and the traffic between networks,
//! built from what the REST API answers; and its readable summary.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;
use tessera_controller::service::TopEntry;
use tessera_model::{Direction, Endpoint, Host, Network, Policy, RuleAction, RuleEndpoint};
use uuid::Uuid;

use crate::commands::join as list;

/// What `tessera topology` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Topology {
    /// By name.
    pub hosts: Vec<HostNode>,
    /// By fully qualified name.
    pub networks: Vec<NetworkNode>,
    /// By fully qualified name.
    pub policies: Vec<PolicyNode>,
    /// Most bytes first, as the controller answers.
    pub traffic: Vec<Traffic>,
}

/// A host and the endpoints on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostNode {
    pub name: String,
    /// Absent when the caller may not list hosts (a project's token): the
    /// host is known from its endpoints only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub underlay_ip: Option<IpAddr>,
    /// By name.
    pub endpoints: Vec<EndpointNode>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointNode {
    pub id: Uuid,
    pub name: String,
    /// The network's fully qualified name (its id when the network is not
    /// listed).
    pub network: String,
    pub ips: Vec<IpNet>,
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkNode {
    /// Fully qualified.
    pub name: String,
    pub vni: u32,
    pub subnets: Vec<IpNet>,
    pub external: bool,
    pub shared: bool,
    /// The attached policies, fully qualified, in evaluation order.
    pub policies: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyNode {
    /// Fully qualified.
    pub name: String,
    /// The networks that attach it.
    pub attached_to: Vec<String>,
    /// The pairs of networks its `pass` rules name, each once.
    pub connects: Vec<PolicyLink>,
}

/// Two networks a policy's `pass` rules connect: from `src` to `dst`, or
/// both ways (then `src` sorts before `dst`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct PolicyLink {
    pub src: String,
    pub dst: String,
    pub both_ways: bool,
}

/// Flows from one network to another (`outside` for a side that is not
/// the fabric's), bytes and packets both ways.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Traffic {
    pub src: String,
    pub dst: String,
    pub flows: u64,
    pub packets: u64,
    pub bytes: u64,
}

impl Topology {
    /// The topology of what the API answered. `hosts` may be empty (a
    /// project's token lists none); the hosts of endpoints are added.
    pub fn build(hosts: &[Host], networks: &[Network], endpoints: &[Endpoint], policies: &[Policy], top: &[TopEntry]) -> Self {
        let network_name: BTreeMap<Uuid, String> = networks.iter().map(|n| (n.id, n.fq_name.to_string())).collect();
        let policy_name: BTreeMap<Uuid, String> = policies.iter().map(|p| (p.id, p.fq_name.to_string())).collect();

        let mut by_host: BTreeMap<String, HostNode> = hosts
            .iter()
            .map(|h| (h.name.clone(), HostNode { name: h.name.clone(), underlay_ip: Some(h.underlay_ip), endpoints: Vec::new() }))
            .collect();
        for e in endpoints {
            let host = by_host.entry(e.host.clone()).or_insert_with(|| HostNode {
                name: e.host.clone(),
                underlay_ip: None,
                endpoints: Vec::new(),
            });
            host.endpoints.push(EndpointNode {
                id: e.id,
                name: e.name.clone(),
                network: network_name.get(&e.network).cloned().unwrap_or_else(|| e.network.to_string()),
                ips: e.ips.clone(),
                status: format!("{:?}", e.status).to_lowercase(),
            });
        }
        for h in by_host.values_mut() {
            h.endpoints.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        }

        let mut network_nodes: Vec<NetworkNode> = networks
            .iter()
            .map(|n| NetworkNode {
                name: n.fq_name.to_string(),
                vni: n.vni.get(),
                subnets: n.subnets.iter().map(|s| s.cidr).collect(),
                external: n.external,
                shared: n.shared,
                policies: n.policies.iter().map(|id| policy_name.get(id).cloned().unwrap_or_else(|| id.to_string())).collect(),
            })
            .collect();
        network_nodes.sort_by(|a, b| a.name.cmp(&b.name));

        let mut policy_nodes: Vec<PolicyNode> = policies
            .iter()
            .map(|p| PolicyNode {
                name: p.fq_name.to_string(),
                attached_to: network_nodes
                    .iter()
                    .filter(|n| n.policies.contains(&p.fq_name.to_string()))
                    .map(|n| n.name.clone())
                    .collect(),
                connects: links(p),
            })
            .collect();
        policy_nodes.sort_by(|a, b| a.name.cmp(&b.name));

        let traffic = top
            .iter()
            .filter_map(|e| {
                Some(Traffic { src: e.src.clone()?, dst: e.dst.clone()?, flows: e.flows, packets: e.packets, bytes: e.bytes })
            })
            .collect();
        Topology { hosts: by_host.into_values().collect(), networks: network_nodes, policies: policy_nodes, traffic }
    }

    /// A readable summary: hosts and their endpoints, networks, policies,
    /// traffic.
    pub fn text(&self) -> String {
        let mut out = String::from("Hosts\n");
        for h in &self.hosts {
            match h.underlay_ip {
                Some(ip) => out.push_str(&format!("  {} ({ip})\n", h.name)),
                None => out.push_str(&format!("  {}\n", h.name)),
            }
            for e in &h.endpoints {
                out.push_str(&format!("    {}  {}  {}  {}\n", e.name, e.network, list(&e.ips), e.status));
            }
        }
        out.push_str("Networks\n");
        for n in &self.networks {
            let mut kind = Vec::new();
            if n.external {
                kind.push("external");
            }
            if n.shared {
                kind.push("shared");
            }
            let kind = if kind.is_empty() { String::new() } else { format!("  ({})", kind.join(", ")) };
            out.push_str(&format!("  {}  VNI {}  {}  policies: {}{kind}\n", n.name, n.vni, list(&n.subnets), list(&n.policies)));
        }
        out.push_str("Policies\n");
        for p in &self.policies {
            let links: Vec<String> =
                p.connects.iter().map(|l| format!("{} {} {}", l.src, if l.both_ways { "<>" } else { ">" }, l.dst)).collect();
            out.push_str(&format!("  {}  attached to: {}  connects: {}\n", p.name, list(&p.attached_to), list(&links)));
        }
        out.push_str("Traffic\n");
        for t in &self.traffic {
            let (flows, packets) = (count(t.flows, "flow"), count(t.packets, "packet"));
            out.push_str(&format!("  {} > {}  {flows}  {packets}  {}\n", t.src, t.dst, bytes(t.bytes)));
        }
        out
    }
}

/// The pairs of distinct networks `policy`'s `pass` rules name, each once.
fn links(policy: &Policy) -> Vec<PolicyLink> {
    let mut out = BTreeSet::new();
    for r in &policy.rules {
        let (RuleEndpoint::Network(src), RuleEndpoint::Network(dst)) = (&r.src, &r.dst) else {
            continue;
        };
        if r.action != RuleAction::Pass || src == dst {
            continue;
        }
        let (src, dst) = (src.to_string(), dst.to_string());
        out.insert(match r.direction {
            Direction::Both if dst < src => PolicyLink { src: dst, dst: src, both_ways: true },
            Direction::Both => PolicyLink { src, dst, both_ways: true },
            Direction::OneWay => PolicyLink { src, dst, both_ways: false },
        });
    }
    out.into_iter().collect()
}

/// `1 flow`, `2 flows`.
pub fn count(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// Bytes for people: `950 B`, `1.3 kB`, `4.2 MB` (powers of 1000).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1000.0;
    let mut unit = 0;
    while v >= 999.95 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}
