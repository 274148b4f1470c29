//! Tessera as a CNI plugin, and `tessera cni install|uninstall`.
//!
//! Runtimes execute the `tessera` binary (installed in their plugin
//! directory under the configuration's `type`, `tessera`) with `CNI_COMMAND`
//! set; `main` then calls [`plugin_main`] instead of the CLI. The plugin is a
//! thin translator: the agent's local API does the work.
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
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use hyper::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use tessera_agent::api::{AgentStatus, AttachRequest, DetachRequest, DetachResponse};
use tessera_agent::inventory::{CheckRequest, CheckResponse, GcRequest, KnownAttachment};
use tessera_agent::DEFAULT_SOCKET;
use tessera_cni::config::PLUGIN_TYPE;
use tessera_cni::{attach_result, endpoint_name, CniError, Code, Command, Invocation, NetConf, Version, ENDPOINT_PREFIX};
use tessera_dataplane::desired::host_veth_name;
use tessera_model::{Endpoint, Network};

use super::agent::{agent_request, Refusal};
use super::Ctx;

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
    let agent = Agent { socket: conf.agent.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)) };
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
            match agent.call::<DetachResponse>(Method::POST, "/v1/detach", Some(&req)).await {
                Ok(_) => Ok(None),
                // A network that is gone holds no attachment: nothing to delete.
                Err(Refusal { status: StatusCode::NOT_FOUND, .. }) => Ok(None),
                Err(r) => Err(r.into_cni(Code::Refused)),
            }
        }
        Command::Check => {
            needs(conf.version.has_check(), "0.4.0")?;
            let netns = inv.netns.clone().unwrap_or_default();
            let req = CheckRequest { network: conf.network.clone(), container_id, ifname, netns };
            let found: CheckResponse = agent.call(Method::POST, "/v1/check", Some(&req)).await.map_err(|r| match r.status {
                StatusCode::NOT_FOUND => r.into_cni(Code::UnknownContainer),
                _ => r.into_cni(Code::Refused),
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
            let status: AgentStatus = agent
                .call(Method::GET, "/v1/status", None::<&()>)
                .await
                .map_err(|r| CniError::new(Code::NotAvailable, "the Tessera agent is not available", r.message))?;
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
            match agent.call::<DetachResponse>(Method::POST, "/v1/gc", Some(&req)).await {
                Ok(_) | Err(Refusal { status: StatusCode::NOT_FOUND, .. }) => Ok(None),
                Err(r) => Err(r.into_cni(Code::Refused)),
            }
        }
    }
}

/// ADD: finds the network, attaches (idempotent: a retried ADD returns the
/// same endpoint), and answers the result in the configuration's version,
/// after the previous plugins' result when chained. An attach that fails
/// after the endpoint was made is undone.
async fn add(
    agent: &Agent,
    conf: &NetConf,
    inv: &Invocation,
    container_id: &str,
    ifname: &str,
) -> Result<serde_json::Value, CniError> {
    let network: Network = agent
        .call(Method::GET, &format!("/v1/networks/{}", conf.network), None::<&()>)
        .await
        .map_err(|r| r.into_cni(Code::InvalidConfig))?;
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
        ..AttachRequest::default()
    };
    let ep: Endpoint = match agent.call(Method::POST, "/v1/attach", Some(&req)).await {
        Ok(ep) => ep,
        Err(r) => {
            let err = r.into_cni(Code::Refused);
            if err.code == Code::TryAgainLater as u32 {
                let undo = DetachRequest {
                    container_id: Some(container_id.to_string()),
                    network: Some(conf.network.clone()),
                    ifname: Some(ifname.to_string()),
                    netns: None,
                };
                if let Err(e) = agent.call::<DetachResponse>(Method::POST, "/v1/detach", Some(&undo)).await {
                    eprintln!("tessera CNI plugin: undoing the failed attach: {}", e.message);
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

/// The agent's local API, as the plugin sees it.
struct Agent {
    socket: PathBuf,
}

impl Agent {
    async fn call<T: DeserializeOwned>(&self, method: Method, path: &str, body: Option<&impl Serialize>) -> Result<T, Refusal> {
        agent_request(&self.socket, method, path, body).await
    }
}

impl Refusal {
    /// The CNI error: retryable (11) when the agent, the controller or the
    /// data plane is unavailable or slow; 7 for bad input; `otherwise` else.
    fn into_cni(self, otherwise: Code) -> CniError {
        let code = match (self.status, self.code.as_str()) {
            (StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT | StatusCode::BAD_GATEWAY, _) => Code::TryAgainLater,
            (_, "unreachable" | "unavailable" | "timeout" | "conflict") => Code::TryAgainLater,
            (_, "invalid_argument") => Code::InvalidConfig,
            (StatusCode::NOT_FOUND, _) if otherwise == Code::InvalidConfig => Code::InvalidConfig,
            _ => otherwise,
        };
        CniError::new(code, self.message, format!("agent: HTTP {} {}", self.status.as_u16(), self.code))
    }
}

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Put the plugin and a network configuration list in place for a runtime.
    Install(InstallArgs),
    /// Remove a network configuration list written by `install`.
    Uninstall(UninstallArgs),
}

#[derive(clap::Args)]
pub struct InstallArgs {
    /// The Tessera network (name, domain:project:name or UUID).
    #[arg(long)]
    network: String,
    /// The CNI network's name (what `podman run --network` names); the
    /// network's bare name when absent.
    #[arg(long)]
    name: Option<String>,
    /// Where the runtime looks for plugin binaries.
    #[arg(long, default_value = "/opt/cni/bin")]
    bin_dir: PathBuf,
    /// Where the runtime reads network configuration lists.
    #[arg(long, default_value = "/etc/cni/net.d")]
    conf_dir: PathBuf,
    /// The agent's socket, written into the configuration.
    #[arg(long, env = "TESSERA_AGENT_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// The configuration's cniVersion. 1.0.0 by default: the newest that
    /// Debian 12's Podman and reference plugins read.
    #[arg(long, default_value = "1.0.0")]
    cni_version: String,
    /// Reference plugins to chain after Tessera, in order: `portmap`
    /// (podman run -p), `bandwidth` (rate limits), `firewall`, `tuning`.
    #[arg(long = "chain", value_parser = ["portmap", "bandwidth", "firewall", "tuning"])]
    chain: Vec<String>,
}

#[derive(clap::Args)]
pub struct UninstallArgs {
    /// The CNI network's name.
    #[arg(long)]
    name: String,
    #[arg(long, default_value = "/etc/cni/net.d")]
    conf_dir: PathBuf,
}

/// The configuration list `install` writes.
pub fn config_list(name: &str, network: &str, socket: &Path, cni_version: &str, chain: &[String]) -> serde_json::Value {
    let mut plugins = vec![json!({
        "type": PLUGIN_TYPE,
        "network": network,
        "agent": socket.display().to_string(),
        "capabilities": {"ips": true, "mac": true},
    })];
    for p in chain {
        plugins.push(match p.as_str() {
            "portmap" => json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}),
            "bandwidth" => json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}),
            other => json!({ "type": other }),
        });
    }
    json!({ "cniVersion": cni_version, "name": name, "plugins": plugins })
}

fn conf_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("50-tessera-{name}.conflist"))
}

/// Writes `bytes` to `path` through a temporary file and a rename, so that a
/// runtime never reads half a file.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().context("path has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(".{}.tmp{}", path.file_name().and_then(|n| n.to_str()).unwrap_or("tessera"), std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot move {} into place", path.display()))
}

pub async fn run(ctx: &Ctx, cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Install(a) => {
            Version::parse(&a.cni_version).map_err(|e| anyhow::anyhow!("--cni-version: {} ({})", e.msg, e.details))?;
            let name = a.name.clone().unwrap_or_else(|| a.network.rsplit(':').next().unwrap_or(&a.network).to_string());
            let list = config_list(&name, &a.network, &a.socket, &a.cni_version, &a.chain);
            // The plugin's own check of what it will be given.
            let mut first = list["plugins"][0].clone();
            first["cniVersion"] = a.cni_version.clone().into();
            first["name"] = name.clone().into();
            NetConf::parse(first.to_string().as_bytes()).map_err(|e| anyhow::anyhow!("{}", e.msg))?;
            // Catch a mistyped network now rather than at the first container.
            let agent = Agent { socket: a.socket.clone() };
            match agent.call::<Network>(Method::GET, &format!("/v1/networks/{}", a.network), None::<&()>).await {
                Ok(_) => {}
                Err(r) if r.status == StatusCode::NOT_FOUND => anyhow::bail!("--network: {}", r.message),
                Err(r) => eprintln!("warning: cannot verify network {}: {}", a.network, r.message),
            }
            let exe = std::env::current_exe().context("cannot find the tessera binary")?;
            let bin = a.bin_dir.join(PLUGIN_TYPE);
            if std::fs::canonicalize(&exe).ok() != std::fs::canonicalize(&bin).ok() {
                let bytes = std::fs::read(&exe).with_context(|| format!("cannot read {}", exe.display()))?;
                write_atomically(&bin, &bytes, 0o755)?;
            }
            let conf = conf_path(&a.conf_dir, &name);
            write_atomically(&conf, serde_json::to_string_pretty(&list)?.as_bytes(), 0o644)?;
            let out = json!({ "binary": bin, "config": conf, "name": name, "network": a.network });
            ctx.print(&out, || format!("installed {} and {} (CNI network {name})\n", bin.display(), conf.display()))
        }
        Cmd::Uninstall(a) => {
            let conf = conf_path(&a.conf_dir, &a.name);
            let removed = match std::fs::remove_file(&conf) {
                Ok(()) => true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => return Err(e).with_context(|| format!("cannot remove {}", conf.display())),
            };
            let out = json!({ "config": conf, "removed": removed });
            ctx.print(&out, || {
                if removed {
                    format!("removed {}\n", conf.display())
                } else {
                    format!("{} was not installed\n", conf.display())
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_list_chains_the_reference_plugins_after_tessera() {
        let l = config_list("red", "red", Path::new("/run/tessera/agent.sock"), "1.0.0", &["portmap".into(), "bandwidth".into()]);
        assert_eq!(l["name"], "red");
        let types: Vec<&str> = l["plugins"].as_array().unwrap().iter().map(|p| p["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["tessera", "portmap", "bandwidth"]);
        assert_eq!(l["plugins"][0]["agent"], "/run/tessera/agent.sock");
    }
}
