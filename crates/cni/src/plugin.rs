//! Tessera as a CNI plugin: one invocation of the `tessera` binary by a
//! runtime (installed in its plugin directory under the configuration's
//! `type`, `tessera`, and run with `CNI_COMMAND` set). The plugin is a thin
//! translator: the agent's local API does the work, through
//! [`tessera_api::AgentClient`].
//!
//! | CNI       | agent                                            |
//! |-----------|--------------------------------------------------|
//! | ADD       | `GET /v1/networks/{network}`, `POST /v1/attach`  |
//! | DEL       | `POST /v1/detach` (what is gone is not an error) |
//! | CHECK     | `POST /v1/check`                                 |
//! | STATUS    | `GET /v1/status`                                 |
//! | GC        | `POST /v1/gc`                                    |
//! | VERSION   | answered by the plugin                           |
//!
//! Agent errors become CNI codes: unreachable agent or controller, or a
//! timeout: 11 (try again later); unknown network or a bad field: 7; a
//! missing attachment at CHECK: 3; any other refusal: 100 with the agent's
//! message.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::json;
use tessera_api::agent::{AttachRequest, CheckRequest, DetachRequest, GcRequest, KnownAttachment, DEFAULT_SOCKET};
use tessera_api::{AgentClient, AgentError};
use tessera_model::names::host_veth_name;
use tessera_model::ErrorCode;

use crate::{attach_result, endpoint_name, CniError, Code, Command, Invocation, NetConf, Version, ENDPOINT_PREFIX};

/// Runs one CNI invocation: reads the environment and standard input,
/// prints a result or an error document on standard output. Exit status 0
/// on success, 1 on error (the document says why).
pub fn plugin_main() -> ExitCode {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let version = NetConf::version_of(&stdin).unwrap_or_else(|| Version::LATEST.as_str().to_string());
    let outcome = match read {
        Err(e) => Err(CniError::new(Code::Io, "cannot read the network configuration from standard input", e.to_string())),
        Ok(_) => match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt.block_on(invoke(&stdin)),
            Err(e) => Err(CniError::new(Code::Io, "cannot start the runtime", e.to_string())),
        },
    };
    let (doc, code) = match outcome {
        Ok(Some(doc)) => (Some(doc), ExitCode::SUCCESS),
        Ok(None) => (None, ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("tessera CNI plugin: {e}");
            (Some(e.to_json(&version)), ExitCode::FAILURE)
        }
    };
    if let Some(doc) = doc {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{doc}");
        let _ = out.flush();
    }
    code
}

async fn invoke(stdin: &[u8]) -> Result<Option<serde_json::Value>, CniError> {
    let inv = Invocation::from_env(|k| std::env::var(k).ok())?;
    if inv.command == Command::Version {
        let asked = NetConf::version_of(stdin).and_then(|v| Version::parse(&v).ok()).unwrap_or(Version::LATEST);
        let supported: Vec<&str> = Version::SUPPORTED.iter().map(|v| v.as_str()).collect();
        return Ok(Some(json!({ "cniVersion": asked.as_str(), "supportedVersions": supported })));
    }
    let conf = NetConf::parse(stdin)?;
    let needs = |ok: bool, since: &str| {
        if ok {
            Ok(())
        } else {
            Err(CniError::new(
                Code::IncompatibleVersion,
                format!("{:?} is not defined for cniVersion {}", inv.command, conf.version),
                format!("it exists from {since} on"),
            ))
        }
    };
    let agent = AgentClient::new(conf.agent.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)));
    let container_id = inv.container_id.clone().unwrap_or_default();
    let ifname = inv.ifname.clone().unwrap_or_default();
    match inv.command {
        Command::Version => unreachable!("answered above"),
        Command::Add => add(&agent, &conf, &inv, &container_id, &ifname).await.map(Some),
        Command::Del => {
            let req = DetachRequest {
                container_id: Some(container_id),
                network: Some(conf.network.clone()),
                ifname: Some(ifname),
                netns: None,
            };
            match agent.detach(&req).await {
                Ok(_) => Ok(None),
                // A network that is gone holds no attachment: nothing to delete.
                Err(e) if e.status() == 404 => Ok(None),
                Err(e) => Err(into_cni(e, Code::Refused)),
            }
        }
        Command::Check => {
            needs(conf.version.has_check(), "0.4.0")?;
            let netns = inv.netns.clone().unwrap_or_default();
            let req = CheckRequest { network: conf.network.clone(), container_id, ifname, netns };
            let found = agent.check(&req).await.map_err(|e| match e.status() {
                404 => into_cni(e, Code::UnknownContainer),
                _ => into_cni(e, Code::Refused),
            })?;
            if let Some(prev) = &conf.prev_result {
                for ip in &found.endpoint.ips {
                    if !prev.ips.iter().any(|p| p.address == *ip) {
                        return Err(CniError::new(
                            Code::Refused,
                            format!("the attachment has {ip}, which prevResult does not list"),
                            "the runtime's cached result and the attachment disagree",
                        ));
                    }
                }
            }
            Ok(None)
        }
        Command::Status => {
            needs(conf.version.has_status_and_gc(), "1.1.0")?;
            let status = agent
                .status()
                .await
                .map_err(|e| CniError::new(Code::NotAvailable, "the Tessera agent is not available", e.to_string()))?;
            if let Some(why) = &status.holding {
                return Err(CniError::new(
                    Code::NotAvailable,
                    format!("the Tessera agent of host {} holds its data plane", status.host),
                    why.clone(),
                ));
            }
            if !status.controller_connected {
                return Err(CniError::new(
                    Code::NotAvailable,
                    format!("the Tessera agent of host {} cannot reach its controller", status.host),
                    format!("controller {}; running containers keep their connectivity", status.controller),
                ));
            }
            Ok(None)
        }
        Command::Gc => {
            needs(conf.version.has_status_and_gc(), "1.1.0")?;
            let valid = conf
                .valid_attachments
                .iter()
                .map(|a| KnownAttachment { container_id: a.container_id.clone(), ifname: a.ifname.clone() })
                .collect();
            let req = GcRequest { network: conf.network.clone(), name_prefix: ENDPOINT_PREFIX.into(), valid };
            match agent.gc(&req).await {
                Ok(_) => Ok(None),
                Err(e) if e.status() == 404 => Ok(None),
                Err(e) => Err(into_cni(e, Code::Refused)),
            }
        }
    }
}

/// ADD: finds the network, attaches (idempotent: a retried ADD returns the
/// same endpoint), and answers the result in the configuration's version,
/// after the previous plugins' result when chained. An attach that fails
/// after the endpoint was made is undone.
async fn add(
    agent: &AgentClient,
    conf: &NetConf,
    inv: &Invocation,
    container_id: &str,
    ifname: &str,
) -> Result<serde_json::Value, CniError> {
    let network = agent.network(&conf.network).await.map_err(|e| into_cni(e, Code::InvalidConfig))?;
    let netns = inv.netns.clone().unwrap_or_default();
    let arg = |k: &str| inv.args.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    let mut ips: Vec<String> =
        conf.runtime_config.ips.iter().map(|a| a.split('/').next().unwrap_or_default().to_string()).collect();
    if ips.is_empty() {
        ips.extend(arg("IP").into_iter().flat_map(|v| v.split(',').map(String::from).collect::<Vec<_>>()));
    }
    let req = AttachRequest {
        network: conf.network.clone(),
        netns: netns.clone(),
        ips,
        ifname: Some(ifname.to_string()),
        container_id: Some(container_id.to_string()),
        name: Some(endpoint_name(container_id, ifname)),
        mac: conf.runtime_config.mac.clone().or_else(|| arg("MAC")),
        ports: published(&conf.runtime_config.port_mappings)?,
        dhcp: conf.dhcp,
        ..AttachRequest::default()
    };
    let ep = match agent.attach(&req).await {
        Ok(ep) => ep,
        Err(e) => {
            let err = into_cni(e, Code::Refused);
            if err.code == Code::TryAgainLater as u32 {
                let undo = DetachRequest {
                    container_id: Some(container_id.to_string()),
                    network: Some(conf.network.clone()),
                    ifname: Some(ifname.to_string()),
                    netns: None,
                };
                if let Err(e) = agent.detach(&undo).await {
                    eprintln!("tessera CNI plugin: undoing the failed attach: {e}");
                }
            }
            return Err(err);
        }
    };
    let mine = attach_result(&ep, &network, ifname, &netns, &host_veth_name(ep.id), None);
    let result = match conf.prev_result.clone() {
        Some(prev) => prev.merged(mine),
        None => mine,
    };
    Ok(result.to_json(conf.version))
}

/// An agent's refusal as a CNI error: the agent or its controller away, or
/// too slow, is "try again later"; a bad field or an unknown network (where
/// `otherwise` is "invalid configuration") is "invalid configuration"; the
/// rest is `otherwise`, with the agent's message.
fn into_cni(e: AgentError, otherwise: Code) -> CniError {
    let status = e.status();
    let code = match (status, e.code()) {
        (502..=504, _)
        | (_, Some(ErrorCode::Unavailable | ErrorCode::StoreUnavailable | ErrorCode::Timeout | ErrorCode::Conflict)) => {
            Code::TryAgainLater
        }
        (_, Some(ErrorCode::InvalidArgument)) => Code::InvalidConfig,
        (404, _) if otherwise == Code::InvalidConfig => Code::InvalidConfig,
        _ => otherwise,
    };
    let detail = match e.code() {
        Some(c) => format!("agent: HTTP {status} {}", c.as_str()),
        None => format!("agent: HTTP {status}"),
    };
    CniError::new(code, e.to_string(), detail)
}

/// The `portMappings` capability as published ports: `tcp` when no
/// protocol is given; an unspecified host address means every address.
fn published(mappings: &[crate::PortMapping]) -> Result<Vec<tessera_model::PublishedPort>, CniError> {
    let bad = |i: usize, why: String| CniError::new(Code::InvalidConfig, "bad portMappings", format!("portMappings[{i}]: {why}"));
    mappings
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let protocol = match m.protocol.as_deref().map(str::to_ascii_lowercase).as_deref() {
                None | Some("") | Some("tcp") => tessera_model::PortProtocol::Tcp,
                Some("udp") => tessera_model::PortProtocol::Udp,
                Some(other) => return Err(bad(i, format!("protocol {other:?} is not tcp or udp"))),
            };
            let host_ip = match m.host_ip.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
                None => None,
                Some(s) => match s.parse::<std::net::IpAddr>() {
                    Ok(ip) if ip.is_unspecified() => None,
                    Ok(ip) => Some(ip),
                    Err(_) => return Err(bad(i, format!("hostIP {s:?} is not an IP address"))),
                },
            };
            if m.container_port == 0 || m.host_port == 0 {
                return Err(bad(i, "hostPort and containerPort must be 1 to 65535".into()));
            }
            Ok(tessera_model::PublishedPort { protocol, host_ip, host_port: m.host_port, container_port: m.container_port })
        })
        .collect()
}
