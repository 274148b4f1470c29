//! Network policies: ordered L3/L4 rules that connect networks on purpose.
//!
//! A rule reads like the seed's config tool, in one line:
//!
//! ```text
//! ACTION PROTOCOL SRC SRC_PORTS DIRECTION DST DST_PORTS [log]
//! pass   tcp      red any       <>        green 80
//! deny   any      any any       >         10.0.0.0/8 any log
//! ```
//!
//! `SRC`/`DST` are `any`, a CIDR, or a network name (bare or fully
//! qualified). Ports are `any`, a number, a range `1000-2000`, or a comma list
//! of those. Direction `>` matches from SRC to DST only, `<>` both ways.

use std::fmt;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::network::parse_cidr;
use crate::{FieldError, FqName, ProjectName};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    Pass,
    /// Drop silently.
    Deny,
    /// Answer with a TCP reset or an ICMP unreachable.
    Reject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Direction {
    /// From source to destination only.
    #[serde(rename = ">")]
    OneWay,
    /// Both ways.
    #[serde(rename = "<>")]
    Both,
}

/// An IP protocol to match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Protocol {
    Any,
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
    Number(u8),
}

impl Protocol {
    /// Whether port matches make sense for this protocol (TCP, UDP, SCTP, UDP-Lite, DCCP).
    pub fn has_ports(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Udp | Protocol::Number(6 | 17 | 33 | 132 | 136))
    }
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "any" | "all" => Protocol::Any,
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "icmp" => Protocol::Icmp,
            "icmpv6" | "ipv6-icmp" | "icmp6" => Protocol::Icmpv6,
            other => match other.parse::<u8>() {
                Ok(6) => Protocol::Tcp,
                Ok(17) => Protocol::Udp,
                Ok(1) => Protocol::Icmp,
                Ok(58) => Protocol::Icmpv6,
                Ok(n) => Protocol::Number(n),
                Err(_) => return Err(format!("{s:?} is not a protocol; use any, tcp, udp, icmp, icmpv6 or a number 0-255")),
            },
        })
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::Any => f.write_str("any"),
            Protocol::Tcp => f.write_str("tcp"),
            Protocol::Udp => f.write_str("udp"),
            Protocol::Icmp => f.write_str("icmp"),
            Protocol::Icmpv6 => f.write_str("icmpv6"),
            Protocol::Number(n) => write!(f, "{n}"),
        }
    }
}

impl TryFrom<String> for Protocol {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Protocol> for String {
    fn from(p: Protocol) -> String {
        p.to_string()
    }
}

/// One side of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Endpoint {
    Any,
    Network(FqName),
    Cidr(IpNet),
}

impl Endpoint {
    fn parse(field: &str, s: &str, project: &ProjectName) -> Result<Self, FieldError> {
        if s.eq_ignore_ascii_case("any") {
            Ok(Endpoint::Any)
        } else if s.contains('/') {
            Ok(Endpoint::Cidr(parse_cidr(field, s)?))
        } else {
            FqName::resolve(s, project).map(Endpoint::Network).map_err(|r| FieldError::new(field, r))
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Any => f.write_str("any"),
            Endpoint::Network(n) => write!(f, "{n}"),
            Endpoint::Cidr(c) => write!(f, "{c}"),
        }
    }
}

impl TryFrom<String> for Endpoint {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Endpoint::parse("", &s, &ProjectName::default_project()).map_err(|e| e.reason)
    }
}

impl From<Endpoint> for String {
    fn from(e: Endpoint) -> String {
        e.to_string()
    }
}

/// An inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// Parses `any`, `80`, `1000-2000` or a comma list; `any` is the empty list.
fn parse_ports(field: &str, s: &str) -> Result<Vec<PortRange>, FieldError> {
    if s.eq_ignore_ascii_case("any") {
        return Ok(Vec::new());
    }
    let port =
        |p: &str| p.trim().parse::<u16>().map_err(|_| FieldError::new(field, format!("{p:?} is not a port number 0-65535")));
    s.split(',')
        .map(|part| {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let r = PortRange { start: port(a)?, end: port(b)? };
            if r.start > r.end {
                return Err(FieldError::new(field, format!("port range {part} is reversed")));
            }
            Ok(r)
        })
        .collect()
}

fn ports_to_string(p: &[PortRange]) -> String {
    if p.is_empty() {
        "any".into()
    } else {
        p.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
    }
}

/// The most services one rule's chain may name.
pub const MAX_CHAIN: usize = 8;

/// A validated policy rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Rule {
    pub action: RuleAction,
    pub protocol: Protocol,
    pub src: Endpoint,
    /// Empty means any port.
    pub src_ports: Vec<PortRange>,
    pub direction: Direction,
    pub dst: Endpoint,
    pub dst_ports: Vec<PortRange>,
    pub log: bool,
    /// `apply-service fw1,fw2`: the services the matched traffic is steered
    /// through, in order (a `pass` between two networks only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<String>)]
    pub services: Vec<FqName>,
}

impl Rule {
    /// Parses the one-line form (see the module doc); bare network names
    /// resolve in `project`. `field` names the rule in errors.
    pub fn parse(field: &str, line: &str, project: &ProjectName) -> Result<Self, FieldError> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (words, log) = match words.split_last() {
            Some((&"log", rest)) => (rest.to_vec(), true),
            _ => (words, false),
        };
        let (words, services) = match words.as_slice() {
            [rest @ .., apply, names] if apply.eq_ignore_ascii_case("apply-service") => {
                let field = format!("{field}.services");
                let services = names
                    .split(',')
                    .map(|n| FqName::resolve(n.trim(), project).map_err(|r| FieldError::new(field.clone(), r)))
                    .collect::<Result<Vec<_>, _>>()?;
                (rest.to_vec(), services)
            }
            _ => (words, Vec::new()),
        };
        let [action, protocol, src, src_ports, direction, dst, dst_ports] = words.as_slice() else {
            return Err(FieldError::new(
                field,
                format!("{line:?} has {} words; expected ACTION PROTOCOL SRC SRC_PORTS DIRECTION DST DST_PORTS [apply-service S1,S2] [log], e.g. \"pass tcp red any <> green 80\"", words.len()),
            ));
        };
        let action = match action.to_ascii_lowercase().as_str() {
            "pass" | "allow" => RuleAction::Pass,
            "deny" | "drop" => RuleAction::Deny,
            "reject" => RuleAction::Reject,
            other => return Err(FieldError::new(format!("{field}.action"), format!("{other:?} is not pass, deny or reject"))),
        };
        let direction = match *direction {
            ">" => Direction::OneWay,
            "<>" => Direction::Both,
            other => return Err(FieldError::new(format!("{field}.direction"), format!("{other:?} is not > or <>"))),
        };
        let protocol: Protocol = protocol.parse().map_err(|r| FieldError::new(format!("{field}.protocol"), r))?;
        let rule = Rule {
            action,
            protocol,
            src: Endpoint::parse(&format!("{field}.src"), src, project)?,
            src_ports: parse_ports(&format!("{field}.src_ports"), src_ports)?,
            direction,
            dst: Endpoint::parse(&format!("{field}.dst"), dst, project)?,
            dst_ports: parse_ports(&format!("{field}.dst_ports"), dst_ports)?,
            log,
            services,
        };
        rule.check(field)?;
        Ok(rule)
    }

    /// Checks what the types cannot: ports only on protocols that have them;
    /// address families that can meet (an IPv4 source with an IPv6
    /// destination, or ICMP with IPv6 addresses, never matches anything).
    pub fn check(&self, field: &str) -> Result<(), FieldError> {
        let family = |e: &Endpoint| match e {
            Endpoint::Cidr(net) => Some(if net.addr().is_ipv4() { 4 } else { 6 }),
            _ => None,
        };
        if let (Some(s), Some(d)) = (family(&self.src), family(&self.dst)) {
            if s != d {
                return Err(FieldError::new(
                    format!("{field}.dst"),
                    format!("an IPv{s} source and an IPv{d} destination never match; write one rule per family"),
                ));
            }
        }
        let wanted = match self.protocol {
            Protocol::Icmp => Some(4),
            Protocol::Icmpv6 => Some(6),
            _ => None,
        };
        for (side, e) in [("src", &self.src), ("dst", &self.dst)] {
            if let (Some(w), Some(f)) = (wanted, family(e)) {
                if w != f {
                    return Err(FieldError::new(
                        format!("{field}.{side}"),
                        format!("protocol {} carries IPv{w} only; {} is an IPv{f} network", self.protocol, e),
                    ));
                }
            }
        }
        if !self.services.is_empty() {
            let services = format!("{field}.services");
            if self.action != RuleAction::Pass {
                return Err(FieldError::new(
                    services,
                    "apply-service steers traffic a rule lets through; the action must be pass",
                ));
            }
            for (side, e) in [("src", &self.src), ("dst", &self.dst)] {
                if !matches!(e, Endpoint::Network(_)) {
                    return Err(FieldError::new(
                        format!("{field}.{side}"),
                        format!("a rule with apply-service goes between two networks; {e} is not a network"),
                    ));
                }
            }
            crate::limits::check_count(&services, &self.services, MAX_CHAIN, "services")?;
        }
        for (name, ports) in [("src_ports", &self.src_ports), ("dst_ports", &self.dst_ports)] {
            if !ports.is_empty() && !self.protocol.has_ports() {
                return Err(FieldError::new(
                    format!("{field}.{name}"),
                    format!("protocol {} has no ports; use any", self.protocol),
                ));
            }
            if let Some(r) = ports.iter().find(|r| r.start > r.end) {
                return Err(FieldError::new(format!("{field}.{name}"), format!("port range {r} is reversed")));
            }
        }
        Ok(())
    }

    /// Networks this rule names.
    pub fn networks(&self) -> impl Iterator<Item = &FqName> {
        [&self.src, &self.dst].into_iter().filter_map(|e| match e {
            Endpoint::Network(n) => Some(n),
            _ => None,
        })
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = match self.action {
            RuleAction::Pass => "pass",
            RuleAction::Deny => "deny",
            RuleAction::Reject => "reject",
        };
        let dir = match self.direction {
            Direction::OneWay => ">",
            Direction::Both => "<>",
        };
        write!(
            f,
            "{action} {} {} {} {dir} {} {}",
            self.protocol,
            self.src,
            ports_to_string(&self.src_ports),
            self.dst,
            ports_to_string(&self.dst_ports)
        )?;
        if !self.services.is_empty() {
            let names: Vec<String> = self.services.iter().map(ToString::to_string).collect();
            write!(f, " apply-service {}", names.join(","))?;
        }
        if self.log {
            f.write_str(" log")?;
        }
        Ok(())
    }
}

/// A rule as a request gives it: the one-line form or the structured form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum RuleSpec {
    Line(String),
    Structured(Rule),
}

/// A policy: an ordered list of rules; the first match wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Policy {
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    pub fq_name: FqName,
    pub rules: crate::Rules,
}

/// A policy as the API answers it: the policy's own fields, the warnings
/// about its rules (shadowed rules), and, from `GET /v1/policies/{id}`, the
/// hit counters of its rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicyView {
    #[serde(flatten)]
    pub policy: Policy,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<PolicyWarning>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<crate::counters::PolicyCounters>,
}

/// Request to create a policy (`POST /v1/policies`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyCreate {
    pub name: String,
    #[serde(default)]
    pub project: Option<String>,
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

/// Request to insert a rule (`POST /v1/policies/{id}/rules`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleInsert {
    /// The rule, in the one-line form or structured.
    pub rule: RuleSpec,
    /// The index the rule takes (the rules from there move down one); the
    /// end when absent.
    #[serde(default)]
    pub at: Option<usize>,
}

/// The answer to a rule-level change of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RuleChange {
    #[schema(value_type = String, format = Uuid)]
    pub policy: Uuid,
    pub fq_name: FqName,
    /// The index of the rule changed, inserted or deleted.
    pub index: usize,
    /// The rule now at `index` (absent for a deletion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<Rule>,
    /// How many rules the policy has now.
    pub rules: usize,
    /// The warnings that involve the rule (it is shadowed, or shadows a
    /// later rule).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<PolicyWarning>,
}

/// Request to replace a policy's rules (`PATCH /v1/policies/{id}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyUpdate {
    /// The new ordered rule list.
    pub rules: Vec<RuleSpec>,
}

impl PolicyUpdate {
    pub fn validate_rules(&self, project: &ProjectName) -> Result<Vec<Rule>, FieldError> {
        validate_rules(&self.rules, project)
    }
}

/// Parses and checks every rule; `rules[i]` names the failing one.
pub fn validate_rules(rules: &[RuleSpec], project: &ProjectName) -> Result<Vec<Rule>, FieldError> {
    crate::limits::check_count("rules", rules, crate::limits::MAX_RULES, "rules")?;
    rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let field = format!("rules[{i}]");
            match r {
                RuleSpec::Line(line) => Rule::parse(&field, line, project),
                RuleSpec::Structured(rule) => rule.check(&field).map(|()| rule.clone()),
            }
        })
        .collect()
}

impl PolicyCreate {
    /// Parses and checks every rule; `rules[i]` names the failing one.
    pub fn validate_rules(&self, project: &ProjectName) -> Result<Vec<Rule>, FieldError> {
        validate_rules(&self.rules, project)
    }
}

/// A warning about a stored policy: the field it is about (`rules[3]`) and
/// what is wrong, for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicyWarning {
    /// The rule the warning is about, `rules[i]`.
    pub field: String,
    /// `shadowed`: an earlier rule matches every flow this one matches.
    pub code: String,
    /// The earlier rule that covers it, `rules[j]`.
    pub earlier: String,
    pub message: String,
}

impl PolicyWarning {
    /// Whether the warning is about rule `i`, or names it as the earlier rule.
    pub fn involves(&self, i: usize) -> bool {
        let name = format!("rules[{i}]");
        self.field == name || self.earlier == name
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rules_whose_address_families_cannot_meet_are_refused_naming_the_side() {
        let p = ProjectName::default_project();
        let e = Rule::parse("rules[0]", "pass tcp 10.0.0.0/8 any > 2001:db8::/32 80", &p).unwrap_err();
        assert_eq!(e.field, "rules[0].dst");
        assert!(e.reason.contains("IPv4 source and an IPv6 destination"), "{e}");
        let e = Rule::parse("rules[1]", "pass icmp 2001:db8::/32 any <> any any", &p).unwrap_err();
        assert_eq!(e.field, "rules[1].src");
        let e = Rule::parse("rules[2]", "pass icmpv6 any any <> 10.0.0.0/8 any", &p).unwrap_err();
        assert_eq!(e.field, "rules[2].dst");
        assert!(Rule::parse("r", "pass icmpv6 2001:db8::/32 any <> any any", &p).is_ok());
        assert!(Rule::parse("r", "pass any 10.0.0.0/8 any <> red any", &p).is_ok());
    }

    use super::*;

    fn parse(line: &str) -> Result<Rule, FieldError> {
        Rule::parse("rules[0]", line, &ProjectName::default_project())
    }

    #[test]
    fn seed_style_rule_parses() {
        let r = parse("pass tcp red any <> green 80").unwrap();
        assert_eq!(r.action, RuleAction::Pass);
        assert_eq!(r.protocol, Protocol::Tcp);
        assert_eq!(r.src, Endpoint::Network("default-domain:admin:red".parse().unwrap()));
        assert_eq!(r.dst_ports, vec![PortRange { start: 80, end: 80 }]);
        assert_eq!(r.direction, Direction::Both);
        assert!(!r.log);
    }

    #[test]
    fn rule_display_round_trips() {
        for line in [
            "pass tcp default-domain:admin:red any <> default-domain:admin:green 80",
            "deny any any any > 10.0.0.0/8 any log",
            "reject udp 2001:db8::/32 1000-2000,3000 <> any 53",
            "pass 47 any any > any any",
            "pass tcp default-domain:admin:red any > default-domain:admin:green 80 apply-service default-domain:admin:fw1,default-domain:admin:fw2 log",
        ] {
            assert_eq!(parse(line).unwrap().to_string(), line);
        }
    }

    #[test]
    fn apply_service_goes_with_pass_between_networks() {
        let r = parse("pass tcp red any > green 80 apply-service fw1,fw2").unwrap();
        assert_eq!(r.services.len(), 2);
        assert_eq!(r.services[1].to_string(), "default-domain:admin:fw2");
        assert_eq!(parse("deny tcp red any > green 80 apply-service fw").unwrap_err().field, "rules[0].services");
        assert_eq!(parse("pass tcp red any > 10.0.0.0/8 80 apply-service fw").unwrap_err().field, "rules[0].dst");
        assert_eq!(parse("pass tcp any any > green 80 apply-service fw").unwrap_err().field, "rules[0].src");
    }

    #[test]
    fn ports_on_icmp_are_rejected() {
        let e = parse("pass icmp red any <> green 80").unwrap_err();
        assert_eq!(e.field, "rules[0].dst_ports");
        assert!(e.reason.contains("no ports"));
    }

    #[test]
    fn cidr_with_host_bits_is_rejected() {
        assert_eq!(parse("pass any 10.0.0.1/8 any <> any any").unwrap_err().field, "rules[0].src");
    }

    #[test]
    fn wrong_word_count_explains_the_form() {
        let e = parse("pass tcp red green").unwrap_err();
        assert!(e.reason.contains("expected ACTION"));
    }

    #[test]
    fn bad_direction_and_action_name_their_field() {
        assert_eq!(parse("pass tcp red any -> green 80").unwrap_err().field, "rules[0].direction");
        assert_eq!(parse("permit tcp red any <> green 80").unwrap_err().field, "rules[0].action");
    }

    #[test]
    fn reversed_port_range_is_rejected() {
        assert!(parse("pass tcp red 90-80 <> green 80").unwrap_err().reason.contains("reversed"));
    }

    #[test]
    fn rule_spec_accepts_line_or_structure() {
        let j = r#"{"name":"p","rules":["pass any any any <> any any"]}"#;
        let p: PolicyCreate = serde_json::from_str(j).unwrap();
        let rules = p.validate_rules(&ProjectName::default_project()).unwrap();
        let structured = serde_json::to_string(&PolicyCreate {
            name: "p".into(),
            project: None,
            rules: vec![RuleSpec::Structured(rules[0].clone())],
        })
        .unwrap();
        let back: PolicyCreate = serde_json::from_str(&structured).unwrap();
        assert_eq!(back.validate_rules(&ProjectName::default_project()).unwrap(), rules);
    }
}
