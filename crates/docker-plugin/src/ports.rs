//! Docker's published ports (`docker run -p`), pure: the `PortMap` option of
//! `ProgramExternalConnectivity` as Tessera's published ports, and back as
//! the `PortMap` of `EndpointOperInfo`.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use tessera_model::{PortProtocol, PublishedPort};

use crate::protocol::Options;
use crate::spec::SpecError;

/// The option key of the port bindings (libnetwork's `netlabel.PortMap`).
pub const PORT_MAP: &str = "com.docker.network.portmap";

/// One binding as libnetwork writes it (`types.PortBinding`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PortBinding {
    /// 6 TCP, 17 UDP, 132 SCTP.
    pub proto: u8,
    #[serde(rename = "IP", default)]
    pub ip: String,
    pub port: u16,
    #[serde(rename = "HostIP", default)]
    pub host_ip: String,
    pub host_port: u16,
    #[serde(default)]
    pub host_port_end: u16,
}

/// The ports to publish for `options`; a binding Tessera cannot carry
/// (SCTP, a bad address) is refused with its reason.
pub fn published(options: &Options) -> Result<Vec<PublishedPort>, SpecError> {
    let Some(raw) = options.get(PORT_MAP).filter(|v| !v.is_null()) else { return Ok(Vec::new()) };
    let bindings: Vec<PortBinding> = serde_json::from_value(raw.clone())
        .map_err(|e| SpecError { source_of: "port mapping".into(), reason: format!("cannot read {PORT_MAP}: {e}") })?;
    bindings
        .iter()
        .map(|b| {
            let bad = |reason: String| SpecError { source_of: format!("-p {}:{}", b.host_port, b.port), reason };
            let protocol = match b.proto {
                6 => PortProtocol::Tcp,
                17 => PortProtocol::Udp,
                p => return Err(bad(format!("protocol {p} cannot be published (TCP and UDP can)"))),
            };
            let host_ip = match b.host_ip.trim() {
                "" => None,
                s => match s.parse::<IpAddr>() {
                    Ok(ip) if ip.is_unspecified() => None,
                    Ok(ip) => Some(ip),
                    Err(_) => return Err(bad(format!("{s:?} is not an IP address"))),
                },
            };
            if b.port == 0 {
                return Err(bad("the container port must be 1 to 65535".into()));
            }
            // A range of host ports (`-p 8080-8090:80`) takes its first.
            Ok(PublishedPort { protocol, host_ip, host_port: b.host_port, container_port: b.port })
        })
        .collect()
}

/// The bindings of `ports`, as `EndpointOperInfo` reports them.
pub fn bindings(ports: &[PublishedPort]) -> Vec<PortBinding> {
    ports
        .iter()
        .map(|p| PortBinding {
            proto: match p.protocol {
                PortProtocol::Tcp => 6,
                PortProtocol::Udp => 17,
            },
            ip: String::new(),
            port: p.container_port,
            host_ip: p.host_ip.map(|ip| ip.to_string()).unwrap_or_else(|| "0.0.0.0".into()),
            host_port: p.host_port,
            host_port_end: p.host_port,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn options(v: serde_json::Value) -> Options {
        serde_json::from_value(json!({ PORT_MAP: v })).unwrap()
    }

    #[test]
    fn docker_bindings_become_published_ports_and_back() {
        let o = options(json!([
            {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080},
            {"Proto": 17, "IP": "", "Port": 53, "HostIP": "127.0.0.1", "HostPort": 5353, "HostPortEnd": 5353},
            {"Proto": 6, "IP": "", "Port": 22, "HostIP": "0.0.0.0", "HostPort": 0, "HostPortEnd": 0}
        ]));
        let p = published(&o).unwrap();
        assert_eq!(p[0], PublishedPort { protocol: PortProtocol::Tcp, host_ip: None, host_port: 8080, container_port: 80 });
        assert_eq!(p[1].host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(p[1].protocol, PortProtocol::Udp);
        assert_eq!(p[2].host_port, 0, "the controller picks a free port");
        let back = bindings(&p);
        assert_eq!(back[0].host_ip, "0.0.0.0");
        assert_eq!((back[1].proto, back[1].port, back[1].host_port), (17, 53, 5353));
        assert!(published(&Options::new()).unwrap().is_empty());
    }

    #[test]
    fn what_cannot_be_published_is_refused() {
        let sctp = options(json!([{"Proto": 132, "Port": 9, "HostPort": 9}]));
        assert!(published(&sctp).unwrap_err().reason.contains("132"));
        let bad_ip = options(json!([{"Proto": 6, "Port": 9, "HostIP": "nope", "HostPort": 9}]));
        assert!(published(&bad_ip).is_err());
    }
}
