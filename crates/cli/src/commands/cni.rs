//! `tessera cni install|uninstall`: puts the CNI plugin (this binary, which
//! runs [`tessera_cni::plugin`] when a runtime executes it with
//! `CNI_COMMAND` set) and a network configuration list in place.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::json;
use tessera_api::agent::DEFAULT_SOCKET;
use tessera_api::AgentClient;
use tessera_cni::config::PLUGIN_TYPE;
use tessera_cni::{NetConf, Version};

use super::Ctx;

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
    /// Reference plugins to chain after Tessera, in order: `bandwidth`
    /// (rate limits), `firewall`, `tuning`. Tessera publishes ports itself
    /// (the `portMappings` capability, `podman run -p`): `portmap` would
    /// translate them a second time, to an address the host's main table
    /// has no route to, and is refused.
    #[arg(long = "chain", value_parser = ["portmap", "bandwidth", "firewall", "tuning"])]
    chain: Vec<String>,
    /// Containers configure their addresses themselves, by DHCP (the
    /// agent answers their client).
    #[arg(long)]
    dhcp: bool,
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
        "capabilities": {"ips": true, "mac": true, "portMappings": true},
    })];
    for p in chain {
        plugins.push(match p.as_str() {
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
            if a.chain.iter().any(|c| c == "portmap") {
                anyhow::bail!(
                    "--chain portmap: Tessera publishes ports itself (the portMappings capability); portmap would translate them a second time"
                );
            }
            let name = a.name.clone().unwrap_or_else(|| a.network.rsplit(':').next().unwrap_or(&a.network).to_string());
            let mut list = config_list(&name, &a.network, &a.socket, &a.cni_version, &a.chain);
            if a.dhcp {
                list["plugins"][0]["dhcp"] = true.into();
            }
            // The plugin's own check of what it will be given.
            let mut first = list["plugins"][0].clone();
            first["cniVersion"] = a.cni_version.clone().into();
            first["name"] = name.clone().into();
            NetConf::parse(first.to_string().as_bytes()).map_err(|e| anyhow::anyhow!("{}", e.msg))?;
            // Catch a mistyped network now rather than at the first container.
            match AgentClient::new(&a.socket).network(&a.network).await {
                Ok(_) => {}
                Err(e) if e.status() == 404 => anyhow::bail!("--network: {e}"),
                Err(e) => eprintln!("warning: cannot verify network {}: {e}", a.network),
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
        let l = config_list("red", "red", Path::new("/run/tessera/agent.sock"), "1.0.0", &["bandwidth".into()]);
        assert_eq!(l["name"], "red");
        let types: Vec<&str> = l["plugins"].as_array().unwrap().iter().map(|p| p["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["tessera", "bandwidth"]);
        assert_eq!(l["plugins"][0]["capabilities"]["portMappings"], true, "Tessera publishes ports itself");
        assert_eq!(l["plugins"][0]["agent"], "/run/tessera/agent.sock");
    }
}
