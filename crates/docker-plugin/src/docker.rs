//! A small client of the Docker Engine API on its unix socket: the networks
//! of the tessera driver, their creation and removal.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use hyper::{Method, StatusCode};
use ipnet::IpNet;
use serde::Deserialize;
use tessera_api::uds;

use crate::protocol::{EngineIpam, EngineNetworkCreate};
use crate::reconcile::DockerNetwork;
use crate::spec::DockerSubnet;

/// The Engine API version used (Docker 20.10; newer daemons serve it too).
const API: &str = "/v1.41";

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("Docker at {socket} is unreachable: {reason}")]
    Unreachable { socket: String, reason: String },
    #[error("Docker refused {what} ({status}): {message}")]
    Refused { what: String, status: u16, message: String },
    #[error("Docker sent an unreadable answer to {what}: {reason}")]
    Decode { what: String, reason: String },
}

impl DockerError {
    pub fn status(&self) -> Option<u16> {
        match self {
            DockerError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The parts of a network's inspect output the plugin reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EngineNetwork {
    id: String,
    name: String,
    #[serde(default)]
    driver: String,
    #[serde(rename = "IPAM", default)]
    ipam: EngineIpam,
    #[serde(default)]
    options: Option<BTreeMap<String, String>>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    containers: Option<BTreeMap<String, EngineEndpoint>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EngineEndpoint {
    #[serde(rename = "EndpointID", default)]
    endpoint_id: String,
    #[serde(rename = "IPv4Address", default)]
    ipv4_address: String,
    #[serde(rename = "IPv6Address", default)]
    ipv6_address: String,
}

impl From<EngineNetwork> for DockerNetwork {
    fn from(n: EngineNetwork) -> Self {
        let subnets = n
            .ipam
            .config
            .iter()
            .filter_map(|c| Some(DockerSubnet { pool: c.subnet?, gateway: c.gateway, ip_range: c.ip_range }))
            .collect();
        let endpoints = n
            .containers
            .unwrap_or_default()
            .into_values()
            .filter(|e| !e.endpoint_id.is_empty())
            .map(|e| {
                let addrs: Vec<IpAddr> = [e.ipv4_address, e.ipv6_address]
                    .iter()
                    .filter_map(|a| a.parse::<IpNet>().ok().map(|n| n.addr()).or_else(|| a.parse().ok()))
                    .collect();
                (e.endpoint_id, addrs)
            })
            .collect();
        DockerNetwork {
            id: n.id,
            name: n.name,
            options: n.options.unwrap_or_default(),
            labels: n.labels.unwrap_or_default(),
            subnets,
            endpoints,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreatedNetwork {
    id: String,
}

/// The Engine API of one dockerd.
#[derive(Debug, Clone)]
pub struct Docker {
    socket: PathBuf,
}

/// Percent-encodes a query value.
fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Docker {
    /// `unix:///path` or a plain path.
    pub fn new(host: &str) -> Self {
        Docker { socket: PathBuf::from(host.strip_prefix("unix://").unwrap_or(host)) }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn call(&self, method: Method, path: &str, body: Option<Vec<u8>>, what: &str) -> Result<Vec<u8>, DockerError> {
        let (status, bytes) = uds::request(&self.socket, method, &format!("{API}{path}"), body)
            .await
            .map_err(|e| DockerError::Unreachable { socket: self.socket.display().to_string(), reason: e.to_string() })?;
        if status.is_success() {
            return Ok(bytes.to_vec());
        }
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let message = v["message"].as_str().map(str::to_string).unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        Err(DockerError::Refused { what: what.into(), status: status.as_u16(), message })
    }

    fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, DockerError> {
        serde_json::from_slice(bytes).map_err(|e| DockerError::Decode { what: what.into(), reason: e.to_string() })
    }

    /// `GET /_ping`.
    pub async fn ping(&self) -> Result<(), DockerError> {
        self.call(Method::GET, "/_ping", None, "ping").await.map(|_| ())
    }

    /// One network with its endpoints; `None` when Docker does not know it.
    pub async fn network(&self, id: &str) -> Result<Option<DockerNetwork>, DockerError> {
        match self.call(Method::GET, &format!("/networks/{}", query_escape(id)), None, "network inspect").await {
            Ok(bytes) => Ok(Some(Self::parse::<EngineNetwork>(&bytes, "network inspect")?.into())),
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND.as_u16()) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every network of the driver `driver` (Tessera's name in this
    /// dockerd), with its endpoints.
    pub async fn tessera_networks(&self, driver: &str) -> Result<Vec<DockerNetwork>, DockerError> {
        let filter = query_escape(&format!(r#"{{"driver":{{"{driver}":true}}}}"#));
        let bytes = self.call(Method::GET, &format!("/networks?filters={filter}"), None, "network ls").await?;
        let listed: Vec<EngineNetwork> = Self::parse(&bytes, "network ls")?;
        let mut out = Vec::new();
        for n in listed.into_iter().filter(|n| n.driver == driver) {
            // The list leaves the endpoints out; inspect each network.
            if let Some(full) = self.network(&n.id).await? {
                out.push(full);
            }
        }
        Ok(out)
    }

    /// `docker network create`; returns the new network's ID.
    pub async fn create_network(&self, req: &EngineNetworkCreate) -> Result<String, DockerError> {
        let mut body = serde_json::to_value(req)
            .map_err(|e| DockerError::Decode { what: "network create".into(), reason: e.to_string() })?;
        body["CheckDuplicate"] = true.into();
        let bytes = self.call(Method::POST, "/networks/create", Some(body.to_string().into_bytes()), "network create").await?;
        Ok(Self::parse::<CreatedNetwork>(&bytes, "network create")?.id)
    }

    /// `docker network rm`; removing a network that is gone is Ok.
    pub async fn delete_network(&self, id: &str) -> Result<(), DockerError> {
        match self.call(Method::DELETE, &format!("/networks/{}", query_escape(id)), None, "network rm").await {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND.as_u16()) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspect_output_becomes_the_plan_view() {
        let json = r#"{"Name":"net4","Id":"abc","Driver":"tessera","EnableIPv6":true,
            "IPAM":{"Driver":"tessera","Options":null,"Config":[{"Subnet":"192.168.4.0/24","Gateway":"192.168.4.1"},{"Subnet":"2002:1::/64","Gateway":"2002:1::1"}]},
            "Containers":{"c1":{"Name":"ub1","EndpointID":"e1","MacAddress":"02:00:00:00:00:01","IPv4Address":"192.168.4.2/24","IPv6Address":"2002:1::2/64"}},
            "Options":{"tessera.network":"u"},"Labels":{"rt":"64512:100"}}"#;
        let n: DockerNetwork = serde_json::from_str::<EngineNetwork>(json).unwrap().into();
        assert_eq!((n.id.as_str(), n.name.as_str()), ("abc", "net4"));
        assert_eq!(n.subnets.len(), 2);
        assert_eq!(n.subnets[0].gateway.unwrap().to_string(), "192.168.4.1");
        assert_eq!(n.endpoints["e1"], ["192.168.4.2".parse::<IpAddr>().unwrap(), "2002:1::2".parse().unwrap()]);
        assert_eq!(n.labels["rt"], "64512:100");
    }

    #[test]
    fn queries_are_escaped() {
        assert_eq!(query_escape(r#"{"driver":{"tessera":true}}"#), "%7B%22driver%22%3A%7B%22tessera%22%3Atrue%7D%7D");
    }
}
