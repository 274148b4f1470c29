//! Virtual networks: subnets with their IPAM layout, VNI, route targets, policies.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tessera_ipam::{Range, SubnetLayout};
use uuid::Uuid;

use crate::limits;
use crate::{FieldError, FqName, ProjectName, RouteTarget, Vni};

/// A virtual network: one VRF on every host that has an endpoint in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Network {
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    pub fq_name: FqName,
    pub vni: Vni,
    pub subnets: Vec<Subnet>,
    pub import_targets: Vec<RouteTarget>,
    pub export_targets: Vec<RouteTarget>,
    /// Every project may use it: attach endpoints, name it in a policy,
    /// import its routes with a route target.
    pub shared: bool,
    /// Projects (`domain:project`) that may use it as if it were shared.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<String>)]
    pub shared_with: Vec<ProjectName>,
    /// The network's addresses live outside the fabric, behind gateway
    /// hosts: it holds floating IPs and SNAT addresses, never endpoints.
    pub external: bool,
    /// Endpoints without a floating IP reach the outside through this
    /// external network, source-NATed (`--snat`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snat: Option<crate::Snat>,
    /// Attached policies, in evaluation order.
    #[schema(value_type = Vec<String>)]
    pub policies: Vec<Uuid>,
    /// Free-form labels, such as those given to `docker network create --label`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The DNS domain its DHCP clients are given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

impl Network {
    pub fn name(&self) -> &str {
        self.fq_name.name()
    }

    /// Whether `project` may use this network: its own project's, shared,
    /// or shared with `project`.
    pub fn usable_by(&self, project: &ProjectName) -> bool {
        self.shared || self.fq_name.project() == project || self.shared_with.contains(project)
    }

    /// The subnet that contains `addr`, with its index.
    pub fn subnet_of(&self, addr: IpAddr) -> Option<(usize, &Subnet)> {
        self.subnets.iter().enumerate().find(|(_, s)| s.cidr.contains(&addr))
    }
}

/// One IPv4 or IPv6 subnet of a network, with its IPAM settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Subnet {
    #[schema(value_type = String, example = "192.168.10.0/24")]
    pub cidr: IpNet,
    /// The gateway address the host side answers for; none on /31, /32, /127, /128.
    #[schema(value_type = Option<String>, example = "192.168.10.1")]
    pub gateway: Option<IpAddr>,
    /// Allocation pools (inclusive ranges); empty means the whole usable subnet.
    #[schema(value_type = Vec<Object>)]
    pub pools: Vec<Range>,
    #[schema(value_type = Vec<String>)]
    pub dns_servers: Vec<IpAddr>,
}

impl Subnet {
    /// The IPAM layout of this subnet. A stored subnet was validated on the way
    /// in, so this cannot fail for it.
    pub fn layout(&self) -> Result<SubnetLayout, tessera_ipam::IpamError> {
        SubnetLayout::new(self.cidr, self.gateway, self.pools.clone())
    }
}

/// Request to create a network (`POST /v1/networks`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkCreate {
    /// A bare name (in `project`) or a fully qualified `domain:project:name`.
    pub name: String,
    /// The project, `domain:project`; `default-domain:admin` when absent.
    #[serde(default)]
    pub project: Option<String>,
    #[serde(default)]
    pub subnets: Vec<SubnetCreate>,
    /// A chosen VNI; assigned automatically when absent.
    #[serde(default)]
    pub vni: Option<u32>,
    /// Route targets both imported and exported.
    #[serde(default)]
    pub route_targets: Vec<String>,
    #[serde(default)]
    pub import_targets: Vec<String>,
    #[serde(default)]
    pub export_targets: Vec<String>,
    #[serde(default)]
    pub shared: bool,
    /// Projects (`domain:project`) that may use the network as if it were shared.
    #[serde(default)]
    pub shared_with: Vec<String>,
    #[serde(default)]
    pub external: bool,
    /// Policies to attach, by name or UUID, in order.
    #[serde(default)]
    pub policies: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The DNS domain its DHCP clients are given.
    #[serde(default)]
    pub domain: Option<String>,
}

/// One subnet of a [`NetworkCreate`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubnetCreate {
    #[schema(example = "192.168.10.0/24")]
    pub cidr: String,
    /// Defaults to the first usable address.
    #[serde(default)]
    pub gateway: Option<String>,
    /// Allocation pools as `FIRST-LAST`.
    #[serde(default)]
    pub pools: Vec<String>,
    #[serde(default)]
    pub dns_servers: Vec<String>,
}

impl SubnetCreate {
    pub fn cidr(cidr: &str) -> Self {
        SubnetCreate { cidr: cidr.into(), ..Default::default() }
    }
}

/// Request to change a network (`PATCH /v1/networks/{id}`). Each list adds
/// or removes; adding what is there or removing what is not is a no-op.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkUpdate {
    /// Added to both import and export targets.
    #[serde(default)]
    pub add_route_targets: Vec<String>,
    /// Removed from both import and export targets.
    #[serde(default)]
    pub remove_route_targets: Vec<String>,
    #[serde(default)]
    pub add_import_targets: Vec<String>,
    #[serde(default)]
    pub remove_import_targets: Vec<String>,
    #[serde(default)]
    pub add_export_targets: Vec<String>,
    #[serde(default)]
    pub remove_export_targets: Vec<String>,
    /// Policies appended to the ordered list (by name or UUID).
    #[serde(default)]
    pub attach_policies: Vec<String>,
    #[serde(default)]
    pub detach_policies: Vec<String>,
    #[serde(default)]
    pub shared: Option<bool>,
    /// Projects added to `shared_with`.
    #[serde(default)]
    pub share_with: Vec<String>,
    /// Projects removed from `shared_with`.
    #[serde(default)]
    pub unshare_with: Vec<String>,
    #[serde(default)]
    pub external: Option<bool>,
    /// Source NAT to the outside through this external network (name, fq
    /// name or UUID); an empty string turns it off.
    #[serde(default)]
    pub snat: Option<String>,
    /// Replaces the DNS servers of every subnet, each address given to the
    /// subnets of its family (DHCP clients see them at their next renewal).
    #[serde(default)]
    pub dns_servers: Option<Vec<String>>,
    /// The DNS domain DHCP clients are given; empty removes it.
    #[serde(default)]
    pub domain: Option<String>,
}

/// Checks a DNS domain name (`field` names it on error): labels of letters,
/// digits and `-`, at most 253 bytes.
pub fn check_domain(field: &str, d: &str) -> Result<(), FieldError> {
    let ok = d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(field, format!("{d:?} is not a DNS domain name")))
    }
}

/// Parses a list of projects (`domain:project`), naming `field[i]` on error,
/// dropping duplicates; at most [`limits::MAX_SHARED_WITH`].
pub fn parse_projects(field: &str, list: &[String]) -> Result<Vec<ProjectName>, FieldError> {
    limits::check_count(field, list, limits::MAX_SHARED_WITH, "projects")?;
    let mut out: Vec<ProjectName> = Vec::new();
    for (i, s) in list.iter().enumerate() {
        let p: ProjectName = s.parse().map_err(|r: String| FieldError::new(format!("{field}[{i}]"), r))?;
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

/// Parses a list of route targets, naming `field[i]` on error, dropping
/// duplicates; at most [`limits::MAX_ROUTE_TARGETS`].
pub fn parse_route_targets(field: &str, list: &[String]) -> Result<Vec<RouteTarget>, FieldError> {
    limits::check_count(field, list, limits::MAX_ROUTE_TARGETS, "route targets")?;
    let mut out: Vec<RouteTarget> = Vec::new();
    for (i, s) in list.iter().enumerate() {
        let rt: RouteTarget = s.parse().map_err(|r| FieldError::new(format!("{field}[{i}]"), r))?;
        if !out.contains(&rt) {
            out.push(rt);
        }
    }
    Ok(out)
}

fn parse_addr(field: &str, s: &str) -> Result<IpAddr, FieldError> {
    s.trim().parse().map_err(|_| FieldError::new(field, format!("{s:?} is not an IPv4 or IPv6 address")))
}

/// Parses a CIDR strictly: host bits must be zero.
pub fn parse_cidr(field: &str, s: &str) -> Result<IpNet, FieldError> {
    let net: IpNet = s
        .trim()
        .parse()
        .map_err(|_| FieldError::new(field, format!("{s:?} is not a CIDR such as 192.168.10.0/24 or 2001:db8::/64")))?;
    if net.trunc() != net {
        return Err(FieldError::new(field, format!("{s} has host bits set; did you mean {}?", net.trunc())));
    }
    Ok(net)
}

fn parse_pool(field: &str, s: &str) -> Result<Range, FieldError> {
    let (a, b) = s.split_once('-').ok_or_else(|| FieldError::new(field, format!("{s:?} is not a pool; expected FIRST-LAST")))?;
    Ok(Range { start: parse_addr(field, a)?, end: parse_addr(field, b)? })
}

impl SubnetCreate {
    /// Validates one subnet: strict CIDR, gateway inside and not reserved,
    /// pools inside and disjoint, DNS servers as addresses.
    pub fn validate(&self) -> Result<Subnet, FieldError> {
        let cidr = parse_cidr("cidr", &self.cidr)?;
        limits::check_subnet("cidr", cidr)?;
        limits::check_count("pools", &self.pools, limits::MAX_POOLS, "pools")?;
        limits::check_count("dns_servers", &self.dns_servers, limits::MAX_DNS_SERVERS, "DNS servers")?;
        let gateway = match &self.gateway {
            Some(g) if !g.trim().is_empty() => {
                let gw = parse_addr("gateway", g)?;
                if !cidr.contains(&gw) {
                    return Err(FieldError::new("gateway", format!("{gw} is outside subnet {cidr}")));
                }
                Some(gw)
            }
            _ => tessera_ipam::default_gateway(cidr),
        };
        let pools =
            self.pools.iter().enumerate().map(|(i, p)| parse_pool(&format!("pools[{i}]"), p)).collect::<Result<Vec<_>, _>>()?;
        let dns_servers = self
            .dns_servers
            .iter()
            .enumerate()
            .map(|(i, d)| parse_addr(&format!("dns_servers[{i}]"), d))
            .collect::<Result<Vec<_>, _>>()?;
        SubnetLayout::new(cidr, gateway, pools.clone()).map_err(|e| {
            let field = match e {
                tessera_ipam::IpamError::GatewayOutsideSubnet { .. } | tessera_ipam::IpamError::GatewayReserved { .. } => {
                    "gateway"
                }
                tessera_ipam::IpamError::HostBitsSet { .. } => "cidr",
                _ => "pools",
            };
            FieldError::new(field, e.to_string())
        })?;
        Ok(Subnet { cidr, gateway, pools, dns_servers })
    }
}

/// Validates a list of subnets: at most [`limits::MAX_SUBNETS`], each on its
/// own, then no two overlapping (in O(n log n)).
pub fn validate_subnets(list: &[SubnetCreate]) -> Result<Vec<Subnet>, FieldError> {
    limits::check_count("subnets", list, limits::MAX_SUBNETS, "subnets")?;
    let mut out: Vec<Subnet> = Vec::with_capacity(list.len());
    for (i, s) in list.iter().enumerate() {
        out.push(s.validate().map_err(|e| e.within(&format!("subnets[{i}]")))?);
    }
    let cidrs: Vec<IpNet> = out.iter().map(|s| s.cidr).collect();
    if let Some((j, i)) = limits::first_overlap(&cidrs) {
        return Err(FieldError::new(format!("subnets[{i}].cidr"), format!("{} overlaps subnets[{j}] {}", cidrs[i], cidrs[j])));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnets(cidrs: &[&str]) -> Result<Vec<Subnet>, FieldError> {
        validate_subnets(&cidrs.iter().map(|c| SubnetCreate::cidr(c)).collect::<Vec<_>>())
    }

    #[test]
    fn gateway_defaults_to_first_usable_address() {
        let s = subnets(&["192.168.10.0/24"]).unwrap();
        assert_eq!(s[0].gateway, Some("192.168.10.1".parse().unwrap()));
    }

    #[test]
    fn ipv6_gateway_defaults_to_first_usable_address() {
        let s = subnets(&["2002:1::/64"]).unwrap();
        assert_eq!(s[0].gateway, Some("2002:1::1".parse().unwrap()));
    }

    #[test]
    fn malformed_cidr_names_the_field() {
        let e = subnets(&["10.0.0.0/24", "banana"]).unwrap_err();
        assert_eq!(e.field, "subnets[1].cidr");
        assert!(e.reason.contains("banana"));
    }

    #[test]
    fn host_bits_set_is_rejected_with_a_suggestion() {
        let e = subnets(&["10.0.0.5/24"]).unwrap_err();
        assert_eq!(e.field, "subnets[0].cidr");
        assert!(e.reason.contains("10.0.0.0/24"), "{e}");
    }

    #[test]
    fn overlapping_subnets_are_rejected() {
        let e = subnets(&["10.0.0.0/16", "10.0.5.0/24"]).unwrap_err();
        assert_eq!(e.field, "subnets[1].cidr");
        assert!(e.reason.contains("overlaps subnets[0]"));
    }

    #[test]
    fn ipv4_and_ipv6_subnets_coexist() {
        assert_eq!(subnets(&["192.168.4.0/24", "2002:1::/64"]).unwrap().len(), 2);
    }

    #[test]
    fn gateway_outside_subnet_is_rejected() {
        let s = SubnetCreate { cidr: "10.0.0.0/24".into(), gateway: Some("10.0.1.1".into()), ..Default::default() };
        let e = validate_subnets(&[s]).unwrap_err();
        assert_eq!(e.field, "subnets[0].gateway");
        assert!(e.reason.contains("outside"));
    }

    #[test]
    fn malformed_pool_is_rejected() {
        let s = SubnetCreate { cidr: "10.0.0.0/24".into(), pools: vec!["10.0.0.10".into()], ..Default::default() };
        assert_eq!(validate_subnets(&[s]).unwrap_err().field, "subnets[0].pools[0]");
    }

    #[test]
    fn duplicate_route_targets_collapse() {
        let rts = parse_route_targets("route_targets", &["64512:100".into(), "target:64512:100".into()]).unwrap();
        assert_eq!(rts.len(), 1);
    }

    #[test]
    fn bad_route_target_names_its_index() {
        let e = parse_route_targets("route_targets", &["64512:100".into(), "x".into()]).unwrap_err();
        assert_eq!(e.field, "route_targets[1]");
    }
}
