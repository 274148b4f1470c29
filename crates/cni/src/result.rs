//! The ADD result: interfaces, addresses, routes and DNS, encoded for the
//! version the runtime asked for and decoded from any supported version
//! (a chain's `prevResult`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde_json::{json, Map, Value};
use tessera_model::{Endpoint, Network};

use crate::version::Version;

/// A result, independent of the version it is written in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: Option<String>,
    /// Written from 1.1.0 on.
    pub mtu: Option<u32>,
    /// The namespace path for a container interface; none for a host one.
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    /// Index into [`CniResult::interfaces`].
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dns {
    pub nameservers: Vec<IpAddr>,
    pub domain: Option<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

impl Dns {
    fn is_empty(&self) -> bool {
        self.nameservers.is_empty() && self.domain.is_none() && self.search.is_empty() && self.options.is_empty()
    }
}

/// The result of attaching endpoint `ep` of `net` as `ifname` in `netns`:
/// the host side `host_ifname` and the container side (the order the
/// reference plugins use), one address per endpoint address with its
/// subnet's gateway, a default route per family through the gateway of the
/// family's first address (what the data plane installs), and the DNS
/// servers of the endpoint's subnets.
pub fn attach_result(ep: &Endpoint, net: &Network, ifname: &str, netns: &str, host_ifname: &str, mtu: Option<u32>) -> CniResult {
    let interfaces = vec![
        Interface { name: host_ifname.to_string(), mac: None, mtu, sandbox: None },
        Interface { name: ifname.to_string(), mac: Some(ep.mac.to_string()), mtu, sandbox: Some(netns.to_string()) },
    ];
    let mut ips = Vec::new();
    let mut routes: Vec<Route> = Vec::new();
    let mut dns = Dns::default();
    for a in &ep.ips {
        let subnet = net.subnet_of(a.addr()).map(|(_, s)| s);
        let gateway = subnet.and_then(|s| s.gateway);
        ips.push(IpConfig { address: *a, gateway, interface: Some(1) });
        let default = match a.addr() {
            IpAddr::V4(_) => IpNet::new(Ipv4Addr::UNSPECIFIED.into(), 0),
            IpAddr::V6(_) => IpNet::new(Ipv6Addr::UNSPECIFIED.into(), 0),
        }
        .expect("a zero prefix is valid for both families");
        if let Some(gw) = gateway {
            if !routes.iter().any(|r| r.dst == default) {
                routes.push(Route { dst: default, gw: Some(gw) });
            }
        }
        for s in subnet.map(|s| s.dns_servers.as_slice()).unwrap_or_default() {
            if !dns.nameservers.contains(s) {
                dns.nameservers.push(*s);
            }
        }
    }
    CniResult { interfaces, ips, routes, dns }
}

impl CniResult {
    /// Appends `other` to `self` (a plugin after others in a chain adds its
    /// interfaces, addresses and routes to the previous result).
    pub fn merged(mut self, other: CniResult) -> CniResult {
        let offset = self.interfaces.len();
        self.interfaces.extend(other.interfaces);
        self.ips.extend(other.ips.into_iter().map(|ip| IpConfig { interface: ip.interface.map(|i| i + offset), ..ip }));
        self.routes.extend(other.routes);
        for s in other.dns.nameservers {
            if !self.dns.nameservers.contains(&s) {
                self.dns.nameservers.push(s);
            }
        }
        self.dns.domain = self.dns.domain.or(other.dns.domain);
        self.dns.search.extend(other.dns.search);
        self.dns.options.extend(other.dns.options);
        self
    }

    /// The result document in `version`'s shape.
    pub fn to_json(&self, version: Version) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut o = Map::new();
                o.insert("name".into(), i.name.clone().into());
                if let Some(m) = &i.mac {
                    o.insert("mac".into(), m.clone().into());
                }
                if let (Some(m), true) = (i.mtu, version >= Version::V1_1_0) {
                    o.insert("mtu".into(), m.into());
                }
                if let Some(s) = &i.sandbox {
                    o.insert("sandbox".into(), s.clone().into());
                }
                Value::Object(o)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = Map::new();
                if version.tags_ip_version() {
                    o.insert("version".into(), if ip.address.addr().is_ipv4() { "4" } else { "6" }.into());
                }
                o.insert("address".into(), ip.address.to_string().into());
                if let Some(g) = ip.gateway {
                    o.insert("gateway".into(), g.to_string().into());
                }
                if let Some(i) = ip.interface {
                    o.insert("interface".into(), i.into());
                }
                Value::Object(o)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| match r.gw {
                Some(gw) => json!({"dst": r.dst.to_string(), "gw": gw.to_string()}),
                None => json!({"dst": r.dst.to_string()}),
            })
            .collect();
        let mut doc = json!({ "cniVersion": version.as_str(), "interfaces": interfaces, "ips": ips });
        if !routes.is_empty() {
            doc["routes"] = routes.into();
        }
        if !self.dns.is_empty() {
            let mut d = Map::new();
            if !self.dns.nameservers.is_empty() {
                d.insert("nameservers".into(), self.dns.nameservers.iter().map(|s| Value::from(s.to_string())).collect());
            }
            if let Some(dom) = &self.dns.domain {
                d.insert("domain".into(), dom.clone().into());
            }
            if !self.dns.search.is_empty() {
                d.insert("search".into(), self.dns.search.clone().into());
            }
            if !self.dns.options.is_empty() {
                d.insert("options".into(), self.dns.options.clone().into());
            }
            doc["dns"] = Value::Object(d);
        } else {
            doc["dns"] = json!({});
        }
        doc
    }

    /// Reads a result of any supported version; the error says which part is wrong.
    pub fn from_json(doc: &Value) -> Result<CniResult, String> {
        let obj = doc.as_object().ok_or("a result must be a JSON object")?;
        let list = |key: &str| -> Result<Vec<Value>, String> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(a)) => Ok(a.clone()),
                Some(_) => Err(format!("{key} must be an array")),
            }
        };
        let text = |v: &Value, at: &str, key: &str| -> Result<Option<String>, String> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(format!("{at}.{key} must be a string")),
            }
        };
        let addr = |s: Option<String>, at: &str| -> Result<Option<IpAddr>, String> {
            s.map(|s| s.parse::<IpAddr>().map_err(|_| format!("{at}: {s:?} is not an IP address"))).transpose()
        };
        let mut out = CniResult::default();
        for (i, v) in list("interfaces")?.iter().enumerate() {
            let at = format!("interfaces[{i}]");
            let name = text(v, &at, "name")?.ok_or(format!("{at}.name is required"))?;
            let mtu = match v.get("mtu") {
                None | Some(Value::Null) => None,
                Some(m) => Some(m.as_u64().and_then(|m| u32::try_from(m).ok()).ok_or(format!("{at}.mtu must be a number"))?),
            };
            out.interfaces.push(Interface { name, mac: text(v, &at, "mac")?, mtu, sandbox: text(v, &at, "sandbox")? });
        }
        for (i, v) in list("ips")?.iter().enumerate() {
            let at = format!("ips[{i}]");
            let a = text(v, &at, "address")?.ok_or(format!("{at}.address is required"))?;
            let address =
                a.parse::<IpNet>().map_err(|_| format!("{at}.address: {a:?} is not an address with a prefix length"))?;
            let gateway = addr(text(v, &at, "gateway")?, &format!("{at}.gateway"))?;
            let interface = match v.get("interface") {
                None | Some(Value::Null) => None,
                Some(n) => {
                    let n = n.as_u64().ok_or(format!("{at}.interface must be a number"))? as usize;
                    if n >= out.interfaces.len() {
                        return Err(format!("{at}.interface {n} names no interface"));
                    }
                    Some(n)
                }
            };
            out.ips.push(IpConfig { address, gateway, interface });
        }
        for (i, v) in list("routes")?.iter().enumerate() {
            let at = format!("routes[{i}]");
            let d = text(v, &at, "dst")?.ok_or(format!("{at}.dst is required"))?;
            let dst = d.parse::<IpNet>().map_err(|_| format!("{at}.dst: {d:?} is not a prefix"))?;
            out.routes.push(Route { dst, gw: addr(text(v, &at, "gw")?, &format!("{at}.gw"))? });
        }
        if let Some(d) = obj.get("dns").filter(|d| !d.is_null()) {
            let strings = |key: &str| -> Result<Vec<String>, String> {
                match d.get(key) {
                    None | Some(Value::Null) => Ok(Vec::new()),
                    Some(v) => serde_json::from_value(v.clone()).map_err(|_| format!("dns.{key} must be an array of strings")),
                }
            };
            let mut nameservers = Vec::new();
            for s in strings("nameservers")? {
                nameservers.push(s.parse().map_err(|_| format!("dns.nameservers: {s:?} is not an IP address"))?);
            }
            out.dns =
                Dns { nameservers, domain: text(d, "dns", "domain")?, search: strings("search")?, options: strings("options")? };
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface { name: "tv12345678".into(), mac: None, mtu: Some(1450), sandbox: None },
                Interface {
                    name: "eth0".into(),
                    mac: Some("02:00:00:00:00:01".into()),
                    mtu: Some(1450),
                    sandbox: Some("/run/netns/c1".into()),
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.0.0.2/24".parse().unwrap(),
                    gateway: Some("10.0.0.1".parse().unwrap()),
                    interface: Some(1),
                },
                IpConfig { address: "2001:db8::2/64".parse().unwrap(), gateway: None, interface: Some(1) },
            ],
            routes: vec![Route { dst: "0.0.0.0/0".parse().unwrap(), gw: Some("10.0.0.1".parse().unwrap()) }],
            dns: Dns { nameservers: vec!["10.0.0.53".parse().unwrap()], ..Dns::default() },
        }
    }

    #[test]
    fn round_trips_in_every_version() {
        for v in Version::SUPPORTED {
            let doc = sample().to_json(v);
            let mut want = sample();
            if v < Version::V1_1_0 {
                want.interfaces.iter_mut().for_each(|i| i.mtu = None);
            }
            assert_eq!(CniResult::from_json(&doc).unwrap(), want, "{v}: {doc}");
        }
    }

    #[test]
    fn old_versions_tag_addresses_with_their_family() {
        let doc = sample().to_json(Version::V0_4_0);
        assert_eq!(doc["cniVersion"], "0.4.0");
        assert_eq!(doc["ips"][0]["version"], "4");
        assert_eq!(doc["ips"][1]["version"], "6");
        assert!(sample().to_json(Version::V1_0_0)["ips"][0].get("version").is_none());
    }

    #[test]
    fn merging_shifts_interface_indexes() {
        let first =
            CniResult { interfaces: vec![Interface { name: "lo".into(), ..Interface::default() }], ..CniResult::default() };
        let merged = first.merged(sample());
        assert_eq!(merged.interfaces.len(), 3);
        assert_eq!(merged.ips[0].interface, Some(2));
    }

    #[test]
    fn bad_results_say_where() {
        let cases = [
            (json!([]), "object"),
            (json!({"interfaces": {}}), "interfaces must be an array"),
            (json!({"ips": [{"address": "10.0.0.1"}]}), "ips[0].address"),
            (json!({"ips": [{"address": "10.0.0.1/24", "interface": 0}]}), "names no interface"),
            (json!({"routes": [{"gw": "10.0.0.1"}]}), "routes[0].dst is required"),
            (json!({"dns": {"nameservers": ["x"]}}), "dns.nameservers"),
        ];
        for (doc, needle) in cases {
            let e = CniResult::from_json(&doc).unwrap_err();
            assert!(e.contains(needle), "{doc}: {e}");
        }
    }
}
