//! From a Docker network (its name, `--label`s, `-o` options and pools) to
//! the Tessera network it stands for, and back (pure).
//!
//! Tessera reads these keys, from `-o` options and from labels alike:
//!
//! | key | meaning |
//! |---|---|
//! | `rt` | route targets, comma separated (`64512:100,64512:200`) |
//! | `vni` | the network's VNI (assigned when absent) |
//! | `project` | the project, `domain:project` (`default-domain:admin` when absent) |
//! | `dhcp` | `true`: containers configure their addresses themselves, by DHCP (the agent answers their client) |
//! | `tessera.network` (option only) | use this existing Tessera network (name or UUID) |
//!
//! Any other `-o` option is refused (it would otherwise be silently
//! ignored); other labels are kept on the Tessera network. A network made
//! through Docker carries the labels `docker=true` and `docker.name=<name>`,
//! which is how every host's plugin knows to create it in its own dockerd.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use tessera_model::network::{parse_route_targets, validate_subnets};
use tessera_model::{FieldError, Network, NetworkCreate, ProjectName, SubnetCreate, Vni};

use crate::protocol::{EngineIpam, EngineIpamConfig, EngineNetworkCreate, PLUGIN_NAME};

pub const KEY_RT: &str = "rt";
pub const KEY_VNI: &str = "vni";
pub const KEY_PROJECT: &str = "project";
/// `dhcp=true`: the network's containers configure themselves by DHCP.
pub const KEY_DHCP: &str = "dhcp";
/// `-o tessera.network=NAME|UUID`: use an existing Tessera network.
pub const OPT_NETWORK: &str = "tessera.network";
/// Label of every Tessera network made through Docker.
pub const LABEL_DOCKER: &str = "docker";
/// Label holding the Docker network's name.
pub const LABEL_DOCKER_NAME: &str = "docker.name";

/// What a Docker network asks of Tessera, found invalid: where it came from
/// (`option vni`, `label rt`, `--subnet 10.0.0.0/8`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_of}: {reason}")]
pub struct SpecError {
    pub source_of: String,
    pub reason: String,
}

impl SpecError {
    fn new(source_of: impl Into<String>, reason: impl Into<String>) -> Self {
        SpecError { source_of: source_of.into(), reason: reason.into() }
    }
}

/// The `-o` options Tessera understands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriverOptions {
    pub route_targets: Vec<String>,
    pub vni: Option<u32>,
    pub project: Option<String>,
    /// `tessera.network`: an existing Tessera network to use.
    pub network: Option<String>,
    /// `dhcp`: containers configure their addresses by DHCP.
    pub dhcp: Option<bool>,
}

fn parse_bool(source: &str, v: &str) -> Result<bool, SpecError> {
    match v.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(SpecError::new(source, format!("{other:?} is not true or false"))),
    }
}

/// Whether the containers of a Tessera network made through Docker
/// configure their addresses by DHCP.
pub fn dhcp(net: &Network) -> bool {
    net.labels.get(KEY_DHCP).is_some_and(|v| v == "true")
}

fn split_list(s: &str) -> Vec<String> {
    s.split([',', ' ']).map(str::trim).filter(|t| !t.is_empty()).map(str::to_string).collect()
}

fn parse_vni(source: &str, v: &str) -> Result<u32, SpecError> {
    let n: u32 = v.trim().parse().map_err(|_| SpecError::new(source, format!("{v:?} is not a number")))?;
    Vni::new(n).map_err(|r| SpecError::new(source, r))?;
    Ok(n)
}

fn parse_project(source: &str, v: &str) -> Result<String, SpecError> {
    v.trim().parse::<ProjectName>().map_err(|r| SpecError::new(source, r))?;
    Ok(v.trim().to_string())
}

fn check_route_targets(source: &str, list: &[String]) -> Result<(), SpecError> {
    parse_route_targets(source, list).map(|_| ()).map_err(|e| SpecError::new(source, e.reason))
}

/// Parses the `-o` options; an unknown one is an error naming the known ones.
pub fn driver_options(opts: &BTreeMap<String, String>) -> Result<DriverOptions, SpecError> {
    let mut out = DriverOptions::default();
    for (k, v) in opts {
        let source = format!("option {k}");
        match k.as_str() {
            KEY_RT => {
                out.route_targets = split_list(v);
                check_route_targets(&source, &out.route_targets)?;
            }
            KEY_VNI => out.vni = Some(parse_vni(&source, v)?),
            KEY_PROJECT => out.project = Some(parse_project(&source, v)?),
            KEY_DHCP => out.dhcp = Some(parse_bool(&source, v)?),
            OPT_NETWORK if !v.trim().is_empty() => out.network = Some(v.trim().to_string()),
            OPT_NETWORK => return Err(SpecError::new(source, "names no network")),
            _ => {
                return Err(SpecError::new(
                    source,
                    format!(
                        "unknown option; the {PLUGIN_NAME} driver knows {KEY_RT}, {KEY_VNI}, {KEY_PROJECT}, {KEY_DHCP} and {OPT_NETWORK}"
                    ),
                ))
            }
        }
    }
    Ok(out)
}

/// One subnet of a Docker network: `--subnet`, `--gateway`, `--ip-range`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DockerSubnet {
    pub pool: IpNet,
    pub gateway: Option<IpAddr>,
    pub ip_range: Option<IpNet>,
}

impl DockerSubnet {
    fn to_create(self) -> SubnetCreate {
        SubnetCreate {
            cidr: self.pool.to_string(),
            gateway: self.gateway.map(|g| g.to_string()),
            pools: self.ip_range.map(|r| format!("{}-{}", first_host(r), last_host(r))).into_iter().collect(),
            dns_servers: Vec::new(),
        }
    }
}

fn first_host(r: IpNet) -> IpAddr {
    r.network()
}

fn last_host(r: IpNet) -> IpAddr {
    r.broadcast()
}

/// Everything a Docker network tells about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerNetworkSpec {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
    pub subnets: Vec<DockerSubnet>,
}

/// The Tessera network a Docker network stands for: the request that creates
/// it, validated here so that bad input is refused before anything is made.
pub fn network_create(spec: &DockerNetworkSpec) -> Result<NetworkCreate, SpecError> {
    let opts = driver_options(&spec.options)?;
    let mut route_targets = opts.route_targets.clone();
    let mut vni = opts.vni;
    let mut project = opts.project.clone();
    let mut labels = BTreeMap::new();
    for (k, v) in &spec.labels {
        let source = format!("label {k}");
        match k.as_str() {
            KEY_RT => {
                let list = split_list(v);
                check_route_targets(&source, &list)?;
                for rt in list {
                    if !route_targets.contains(&rt) {
                        route_targets.push(rt);
                    }
                }
            }
            KEY_VNI => {
                let n = parse_vni(&source, v)?;
                if vni.is_some_and(|o| o != n) {
                    return Err(SpecError::new(source, format!("{n} differs from option vni {}", vni.unwrap_or_default())));
                }
                vni = Some(n);
            }
            KEY_PROJECT => {
                let p = parse_project(&source, v)?;
                if project.as_ref().is_some_and(|o| *o != p) {
                    return Err(SpecError::new(source, format!("{p} differs from option project")));
                }
                project = Some(p);
            }
            KEY_DHCP => {
                parse_bool(&source, v)?;
            }
            LABEL_DOCKER | LABEL_DOCKER_NAME => {
                return Err(SpecError::new(source, "is set by the tessera driver itself"));
            }
            _ => {}
        }
        labels.insert(k.clone(), v.clone());
    }
    if spec.subnets.is_empty() {
        return Err(SpecError::new("--subnet", format!("the {PLUGIN_NAME} IPAM driver needs at least one --subnet")));
    }
    let subnets: Vec<SubnetCreate> = spec.subnets.iter().map(|s| s.to_create()).collect();
    validate_subnets(&subnets).map_err(|e| subnet_error(&spec.subnets, e))?;
    if let Some(d) = opts.dhcp {
        labels.insert(KEY_DHCP.into(), d.to_string());
    }
    labels.insert(LABEL_DOCKER.into(), "true".into());
    labels.insert(LABEL_DOCKER_NAME.into(), spec.name.clone());
    Ok(NetworkCreate { name: spec.name.clone(), project, subnets, vni, route_targets, labels, ..Default::default() })
}

/// Names the `--subnet` a subnet validation error is about.
fn subnet_error(subnets: &[DockerSubnet], e: FieldError) -> SpecError {
    let index: Option<usize> = e.field.strip_prefix("subnets[").and_then(|r| r.split(']').next()).and_then(|i| i.parse().ok());
    match index.and_then(|i| subnets.get(i)) {
        Some(s) => SpecError::new(format!("--subnet {}", s.pool), e.reason),
        None => SpecError::new("--subnet", e.to_string()),
    }
}

/// Whether an existing Tessera network matches the subnets Docker holds for
/// it (same CIDRs and gateways, in any order): the check made before a Docker
/// network is mapped onto it.
pub fn subnets_match(net: &Network, subnets: &[DockerSubnet]) -> Result<(), String> {
    let mut have: Vec<(IpNet, Option<IpAddr>)> = net.subnets.iter().map(|s| (s.cidr, s.gateway)).collect();
    let mut want: Vec<(IpNet, Option<IpAddr>)> =
        subnets.iter().map(|s| (s.pool, s.gateway.or_else(|| tessera_ipam_default_gateway(s.pool)))).collect();
    have.sort();
    want.sort();
    if have == want {
        return Ok(());
    }
    let show = |l: &[(IpNet, Option<IpAddr>)]| {
        l.iter()
            .map(|(c, g)| format!("{c} gateway {}", g.map(|g| g.to_string()).unwrap_or_else(|| "none".into())))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(format!("Tessera network {} has subnets {} but Docker asks for {}", net.fq_name, show(&have), show(&want)))
}

fn tessera_ipam_default_gateway(cidr: IpNet) -> Option<IpAddr> {
    crate::pool::default_gateway(cidr)
}

/// Whether a Tessera network was made through Docker (and so belongs in
/// every host's dockerd).
pub fn is_docker_network(net: &Network) -> bool {
    net.labels.get(LABEL_DOCKER).is_some_and(|v| v == "true")
}

/// The Docker name of a Tessera network made through Docker.
pub fn docker_name(net: &Network) -> &str {
    net.labels.get(LABEL_DOCKER_NAME).map(String::as_str).unwrap_or_else(|| net.name())
}

/// The Docker Engine request that creates, in another host's dockerd, the
/// Docker network of a Tessera network made through Docker: same name,
/// subnets, gateways, pools and user labels, and the option that maps it
/// onto the existing Tessera network.
pub fn engine_create_for(net: &Network) -> EngineNetworkCreate {
    let labels: BTreeMap<String, String> = net
        .labels
        .iter()
        .filter(|(k, _)| k.as_str() != LABEL_DOCKER && k.as_str() != LABEL_DOCKER_NAME)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let config = net
        .subnets
        .iter()
        .map(|s| EngineIpamConfig {
            subnet: Some(s.cidr),
            gateway: s.gateway,
            ip_range: s.pools.first().and_then(|r| range_as_cidr(r.start, r.end)),
        })
        .collect();
    EngineNetworkCreate {
        name: docker_name(net).to_string(),
        driver: PLUGIN_NAME.into(),
        ipam: Some(EngineIpam { driver: PLUGIN_NAME.into(), options: BTreeMap::new(), config }),
        enable_ipv6: net.subnets.iter().any(|s| s.cidr.addr().is_ipv6()),
        options: BTreeMap::from([(OPT_NETWORK.to_string(), net.id.to_string())]),
        labels,
    }
}

/// The CIDR whose network and broadcast addresses are `start` and `end`, if any.
fn range_as_cidr(start: IpAddr, end: IpAddr) -> Option<IpNet> {
    (0..=128u8).filter_map(|p| IpNet::new(start, p).ok()).find(|n| n.network() == start && n.broadcast() == end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(labels: &[(&str, &str)], options: &[(&str, &str)], subnets: &[&str]) -> DockerNetworkSpec {
        DockerNetworkSpec {
            name: "net4".into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            options: options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            subnets: subnets.iter().map(|s| DockerSubnet { pool: s.parse().unwrap(), gateway: None, ip_range: None }).collect(),
        }
    }

    #[test]
    fn the_seed_network_becomes_a_tessera_network_with_route_targets() {
        let req = network_create(&spec(&[("rt", "64512:100,64512:200")], &[], &["192.168.4.0/24", "2002:1::/64"])).unwrap();
        assert_eq!(req.name, "net4");
        assert_eq!(req.route_targets, ["64512:100", "64512:200"]);
        assert_eq!(req.subnets.iter().map(|s| s.cidr.as_str()).collect::<Vec<_>>(), ["192.168.4.0/24", "2002:1::/64"]);
        assert_eq!(req.labels["docker"], "true");
        assert_eq!(req.labels["docker.name"], "net4");
        assert_eq!(req.labels["rt"], "64512:100,64512:200");
    }

    #[test]
    fn vni_and_project_come_from_options_or_labels() {
        let req = network_create(&spec(&[("project", "acme:web")], &[("vni", "5000")], &["10.0.0.0/24"])).unwrap();
        assert_eq!((req.vni, req.project.as_deref()), (Some(5000), Some("acme:web")));
    }

    #[test]
    fn an_unknown_option_is_refused_naming_the_known_ones() {
        let e = network_create(&spec(&[], &[("colour", "red")], &["10.0.0.0/24"])).unwrap_err();
        assert_eq!(e.source_of, "option colour");
        assert!(e.reason.contains("rt, vni, project"), "{e}");
    }

    #[test]
    fn a_malformed_rt_label_is_refused() {
        let e = network_create(&spec(&[("rt", "64512:100,banana")], &[], &["10.0.0.0/24"])).unwrap_err();
        assert_eq!(e.source_of, "label rt");
        assert!(e.to_string().contains("banana"), "{e}");
    }

    #[test]
    fn a_vni_out_of_range_is_refused() {
        let e = network_create(&spec(&[], &[("vni", "16777216")], &["10.0.0.0/24"])).unwrap_err();
        assert_eq!(e.source_of, "option vni");
    }

    #[test]
    fn overlapping_subnets_are_refused_naming_the_subnet() {
        let e = network_create(&spec(&[], &[], &["10.0.0.0/16", "10.0.5.0/24"])).unwrap_err();
        assert_eq!(e.source_of, "--subnet 10.0.5.0/24");
        assert!(e.reason.contains("overlaps"), "{e}");
    }

    #[test]
    fn a_network_without_subnets_is_refused() {
        assert_eq!(network_create(&spec(&[], &[], &[])).unwrap_err().source_of, "--subnet");
    }

    #[test]
    fn conflicting_vni_in_label_and_option_is_refused() {
        let e = network_create(&spec(&[("vni", "7")], &[("vni", "8")], &["10.0.0.0/24"])).unwrap_err();
        assert_eq!(e.source_of, "label vni");
    }

    #[test]
    fn the_driver_reserves_its_own_labels() {
        assert!(network_create(&spec(&[("docker.name", "x")], &[], &["10.0.0.0/24"])).is_err());
    }

    #[test]
    fn ip_range_becomes_an_allocation_pool() {
        let mut s = spec(&[], &[], &[]);
        s.subnets.push(DockerSubnet {
            pool: "10.0.0.0/24".parse().unwrap(),
            gateway: Some("10.0.0.254".parse().unwrap()),
            ip_range: Some("10.0.0.128/25".parse().unwrap()),
        });
        let req = network_create(&s).unwrap();
        assert_eq!(req.subnets[0].pools, ["10.0.0.128-10.0.0.255"]);
        assert_eq!(req.subnets[0].gateway.as_deref(), Some("10.0.0.254"));
    }

    #[test]
    fn engine_request_for_another_host_carries_name_subnets_labels_and_the_mapping() {
        let req = network_create(&spec(&[("rt", "64512:100")], &[], &["192.168.4.0/24", "2002:1::/64"])).unwrap();
        let subnets = validate_subnets(&req.subnets).unwrap();
        let net = Network {
            domain: None,
            snat: None,
            id: tessera_model::Uuid::from_u128(9),
            fq_name: "default-domain:admin:net4".parse().unwrap(),
            vni: Vni::new(4096).unwrap(),
            subnets,
            import_targets: vec![],
            export_targets: vec![],
            shared: false,
            shared_with: vec![],
            external: false,
            policies: vec![],
            labels: req.labels.clone(),
        };
        assert!(is_docker_network(&net));
        let e = engine_create_for(&net);
        assert_eq!(e.name, "net4");
        assert!(e.enable_ipv6);
        assert_eq!(e.options[OPT_NETWORK], net.id.to_string());
        assert_eq!(e.labels, BTreeMap::from([("rt".to_string(), "64512:100".to_string())]));
        let ipam = e.ipam.unwrap();
        assert_eq!(ipam.config[0].gateway.unwrap().to_string(), "192.168.4.1");
        let back: Vec<DockerSubnet> = ipam
            .config
            .iter()
            .map(|c| DockerSubnet { pool: c.subnet.unwrap(), gateway: c.gateway, ip_range: c.ip_range })
            .collect();
        assert!(subnets_match(&net, &back).is_ok());
        let other = [DockerSubnet { pool: "192.168.5.0/24".parse().unwrap(), gateway: None, ip_range: None }];
        assert!(subnets_match(&net, &other).unwrap_err().contains("192.168.5.0/24"));
    }

    #[test]
    fn a_range_round_trips_as_a_cidr() {
        let r: IpNet = "10.0.0.128/25".parse().unwrap();
        assert_eq!(range_as_cidr(r.network(), r.broadcast()), Some(r));
        assert_eq!(range_as_cidr("10.0.0.3".parse().unwrap(), "10.0.0.9".parse().unwrap()), None);
    }
}
