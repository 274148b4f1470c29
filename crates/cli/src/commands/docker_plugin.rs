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
    /// Where the plugin keeps its state (a mirror of the controller).
    #[arg(long, default_value = "/var/lib/tessera/docker-plugin")]
    state_dir: PathBuf,
    /// Where the plugin keeps the namespaces the agent builds containers'
    /// interfaces in before Docker moves them; under `/run/tessera/`, the
    /// only place besides the runtimes' own where endpoint namespaces may be.
    #[arg(long, default_value = "/run/tessera/staging")]
    staging_dir: PathBuf,
    /// Seconds a released address stays held for the next container of this
    /// host in its subnet, so that a restarted container keeps its address.
    #[arg(long, default_value_t = 30)]
    address_hold: u64,
    /// The driver name dockerd knows the plugin by: `tessera` when it finds
    /// the plugin's socket, the name and tag a managed plugin was installed
    /// under (`tessera:latest`) otherwise. Networks made in this dockerd for
    /// networks made elsewhere are of this driver.
    #[arg(long, default_value = tessera_docker_plugin::protocol::PLUGIN_NAME)]
    driver_name: String,
}

pub async fn run(controller: &str, credentials: &tessera_api::auth::Credentials, a: Args) -> anyhow::Result<()> {
    let probe = a.staging_dir.join("probe");
    tessera_model::limits::check_netns("--staging-dir", &probe.to_string_lossy()).map_err(|_| {
        anyhow::anyhow!("--staging-dir: {} is not under /run/tessera/, where endpoint namespaces may be", a.staging_dir.display())
    })?;
    let cfg = Config {
        host: a.host,
        controller: controller.to_string(),
        credentials: credentials.clone(),
        agent_socket: a.agent_socket,
        docker_host: a.docker_host,
        socket: a.socket,
        state_dir: a.state_dir,
        staging_dir: a.staging_dir,
        address_hold: std::time::Duration::from_secs(a.address_hold),
        driver: a.driver_name,
    };
    tessera_docker_plugin::run(cfg, super::controller::shutdown_signal()).await
}
