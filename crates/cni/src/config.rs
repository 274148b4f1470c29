//! The network configuration a runtime writes on the plugin's standard
//! input: the spec's fields, Tessera's own (`network`, `agent`), the
//! runtime's `runtimeConfig`, the chain's `prevResult` and GC's
//! `cni.dev/valid-attachments`. Unknown fields are allowed, as the spec
//! requires (runtimes add their own).

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{CniError, Code};
use crate::result::CniResult;
use crate::version::Version;

/// Tessera's plugin type: the `type` of its configuration and the name of
/// the binary runtimes execute.
pub const PLUGIN_TYPE: &str = "tessera";

/// A checked network configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub version: Version,
    /// The CNI network's name.
    pub name: String,
    /// The Tessera network to attach to (name, `domain:project:name` or
    /// UUID); the CNI network's name when absent.
    pub network: String,
    /// The agent's local API socket; the agent's default when absent.
    pub agent: Option<PathBuf>,
    pub runtime_config: RuntimeConfig,
    /// The container configures its addresses itself, by DHCP (`"dhcp":
    /// true`): the agent answers its client; the result still lists them.
    pub dhcp: bool,
    /// The previous plugin's result in a chain (or ADD's result, for CHECK).
    pub prev_result: Option<CniResult>,
    /// GC: the attachments the runtime still knows; every other attachment
    /// of this network made through CNI is removed.
    pub valid_attachments: Vec<Attachment>,
}

/// Capability arguments the runtime passes (`"capabilities": {"ips": true,
/// "mac": true, "portMappings": true}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RuntimeConfig {
    /// Static addresses with or without a prefix length (`10.0.0.5/24`).
    #[serde(default)]
    pub ips: Vec<String>,
    #[serde(default)]
    pub mac: Option<String>,
    /// Ports of the host to publish for the container (`podman run -p`).
    #[serde(default, rename = "portMappings")]
    pub port_mappings: Vec<PortMapping>,
}

/// One entry of the `portMappings` capability.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct PortMapping {
    #[serde(rename = "hostPort")]
    pub host_port: u16,
    #[serde(rename = "containerPort")]
    pub container_port: u16,
    /// `tcp` (the default) or `udp`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// The host address; every address when absent or unspecified.
    #[serde(default, rename = "hostIP")]
    pub host_ip: Option<String>,
}

/// One attachment the runtime knows, for GC.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The configuration as written; [`NetConf::parse`] checks it.
#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "cniVersion")]
    cni_version: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    network: Option<String>,
    agent: Option<String>,
    #[serde(rename = "runtimeConfig", default)]
    runtime_config: Option<Value>,
    #[serde(rename = "prevResult")]
    prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments", default)]
    valid_attachments: Option<Value>,
    #[serde(default)]
    dhcp: Option<bool>,
}

fn invalid(field: &str, why: impl Into<String>) -> CniError {
    CniError::new(Code::InvalidConfig, format!("network configuration field {field:?}: {}", why.into()), "")
}

impl NetConf {
    /// The `cniVersion` of a document, when it has a readable one: errors
    /// are printed with it.
    pub fn version_of(stdin: &[u8]) -> Option<String> {
        serde_json::from_slice::<Value>(stdin).ok()?.get("cniVersion")?.as_str().map(String::from)
    }

    /// Decodes and checks a configuration. Not JSON: error 6; a missing or
    /// bad field: error 7 naming the field; an unknown version: error 1.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let raw: Raw = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(Code::Decode, "the network configuration is not valid JSON of the expected shape", e.to_string())
        })?;
        let version = Version::parse(raw.cni_version.as_deref().ok_or_else(|| invalid("cniVersion", "is required"))?)?;
        let name = raw.name.ok_or_else(|| invalid("name", "is required"))?;
        check_network_name(&name).map_err(|why| invalid("name", why))?;
        match raw.plugin_type.as_deref() {
            Some(PLUGIN_TYPE) => {}
            Some(other) => return Err(invalid("type", format!("is {other:?}; this plugin is {PLUGIN_TYPE:?}"))),
            None => return Err(invalid("type", "is required")),
        }
        let network = match raw.network {
            Some(n) if n.trim().is_empty() => return Err(invalid("network", "must not be empty")),
            Some(n) => n,
            None => name.clone(),
        };
        let agent = match raw.agent {
            Some(a) if !a.starts_with('/') => return Err(invalid("agent", format!("{a:?} is not an absolute socket path"))),
            a => a.map(PathBuf::from),
        };
        let runtime_config: RuntimeConfig = match raw.runtime_config {
            Some(v) => serde_json::from_value(v).map_err(|e| invalid("runtimeConfig", e.to_string()))?,
            None => RuntimeConfig::default(),
        };
        let prev_result = match raw.prev_result {
            Some(v) => Some(CniResult::from_json(&v).map_err(|e| invalid("prevResult", e))?),
            None => None,
        };
        let valid_attachments = match raw.valid_attachments {
            Some(v) => serde_json::from_value(v).map_err(|e| invalid("cni.dev/valid-attachments", e.to_string()))?,
            None => Vec::new(),
        };
        Ok(NetConf {
            version,
            name,
            network,
            agent,
            runtime_config,
            prev_result,
            valid_attachments,
            dhcp: raw.dhcp.unwrap_or(false),
        })
    }
}

/// Network names start with a letter or digit and go on with letters,
/// digits, `_`, `.` and `-` (spec: "Network configuration").
fn check_network_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    match chars.next() {
        None => return Err("must not be empty".into()),
        Some(c) if !c.is_ascii_alphanumeric() => return Err(format!("{name:?} must start with a letter or a digit")),
        _ => {}
    }
    match chars.find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        Some(c) => Err(format!("{name:?} contains {c:?}")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(doc: serde_json::Value) -> Result<NetConf, CniError> {
        NetConf::parse(doc.to_string().as_bytes())
    }

    #[test]
    fn minimal_config_attaches_to_the_network_of_its_name() {
        let c = parse(serde_json::json!({"cniVersion": "1.1.0", "name": "red", "type": "tessera"})).unwrap();
        assert_eq!((c.version, c.name.as_str(), c.network.as_str(), c.agent.clone()), (Version::V1_1_0, "red", "red", None));
    }

    #[test]
    fn tessera_fields_and_runtime_config_are_read() {
        let c = parse(serde_json::json!({
            "cniVersion": "0.4.0", "name": "n", "type": "tessera", "network": "admin:red",
            "agent": "/run/h1/agent.sock", "capabilities": {"ips": true},
            "runtimeConfig": {"ips": ["10.0.0.9/24"], "mac": "02:00:00:00:00:09"},
            "podman_labels": {"x": "y"}
        }))
        .unwrap();
        assert_eq!(c.network, "admin:red");
        assert_eq!(c.agent, Some(PathBuf::from("/run/h1/agent.sock")));
        assert_eq!(c.runtime_config.ips, vec!["10.0.0.9/24"]);
        assert_eq!(c.runtime_config.mac.as_deref(), Some("02:00:00:00:00:09"));
    }

    #[test]
    fn gc_reads_the_valid_attachments() {
        let c = parse(serde_json::json!({
            "cniVersion": "1.1.0", "name": "red", "type": "tessera",
            "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]
        }))
        .unwrap();
        assert_eq!(c.valid_attachments, vec![Attachment { container_id: "c1".into(), ifname: "eth0".into() }]);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (serde_json::json!({"name": "red", "type": "tessera"}), 7, "cniVersion"),
            (serde_json::json!({"cniVersion": "9.9.9", "name": "red", "type": "tessera"}), 1, "9.9.9"),
            (serde_json::json!({"cniVersion": "1.0.0", "type": "tessera"}), 7, "\"name\""),
            (serde_json::json!({"cniVersion": "1.0.0", "name": "-red", "type": "tessera"}), 7, "\"name\""),
            (serde_json::json!({"cniVersion": "1.0.0", "name": "red", "type": "bridge"}), 7, "\"type\""),
            (serde_json::json!({"cniVersion": "1.0.0", "name": "red", "type": "tessera", "agent": "x.sock"}), 7, "\"agent\""),
            (
                serde_json::json!({"cniVersion": "1.0.0", "name": "red", "type": "tessera", "runtimeConfig": {"ips": "x"}}),
                7,
                "runtimeConfig",
            ),
            (
                serde_json::json!({"cniVersion": "1.0.0", "name": "red", "type": "tessera", "prevResult": {"ips": [{"address": "x"}]}}),
                7,
                "prevResult",
            ),
        ];
        for (doc, code, needle) in cases {
            let e = parse(doc.clone()).unwrap_err();
            assert_eq!(e.code, code, "{doc}: {e:?}");
            assert!(e.msg.contains(needle) || e.details.contains(needle), "{doc}: {e:?} does not mention {needle}");
        }
    }

    #[test]
    fn not_json_is_error_6() {
        assert_eq!(NetConf::parse(b"{not json").unwrap_err().code, 6);
        assert_eq!(NetConf::parse(b"[1,2]").unwrap_err().code, 6);
    }
}
