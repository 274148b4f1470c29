//! `tessera docker-plugin`: Docker's remote network and IPAM driver (and
//! optional authz hook) for this host, on dockerd's plugin socket.

use std::path::PathBuf;

use tessera_api::agent::DEFAULT_SOCKET as AGENT_SOCKET;
use tessera_docker_plugin::protocol::DEFAULT_SOCKET;
use tessera_docker_plugin::Config;

#[derive(clap::Args)]
pub struct Args {
    /// Where dockerd finds the plugin (`-d tessera`, `--ipam-driver tessera`).
    #[arg(long, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// This host's agent.
    #[arg(long, env = "TESSERA_AGENT_SOCKET", default_value = AGENT_SOCKET)]
    agent_socket: PathBuf,
    /// This host's dockerd.
    #[arg(long, env = "DOCKER_HOST", default_value = "unix:///var/run/docker.sock")]
    docker_host: String,
    /// This host's name in the fabric, as its agent was started with.
    #[arg(long)]
    host: String,
    /// Where the plugin keeps its state (a mirror of the controller, staging namespaces).
    #[arg(long, default_value = "/var/lib/tessera/docker-plugin")]
    state_dir: PathBuf,
    /// Seconds a released address stays held for the next container of this
    /// host in its subnet, so that a restarted container keeps its address.
    #[arg(long, default_value_t = 30)]
    address_hold: u64,
}

pub async fn run(controller: &str, a: Args) -> anyhow::Result<()> {
    let cfg = Config {
        host: a.host,
        controller: controller.to_string(),
        agent_socket: a.agent_socket,
        docker_host: a.docker_host,
        socket: a.socket,
        state_dir: a.state_dir,
        address_hold: std::time::Duration::from_secs(a.address_hold),
    };
    tessera_docker_plugin::run(cfg, super::controller::shutdown_signal()).await
}
