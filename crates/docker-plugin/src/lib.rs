//! Tessera's Docker integration: a libnetwork remote network driver and IPAM
//! driver (plus an optional authz hook) on `/run/docker/plugins/tessera.sock`.
//!
//! The pure part: [`protocol`] (the wire types), [`spec`] (Docker network ↔
//! Tessera network), [`pool`] (pool IDs, gateways, this host's pools),
//! [`names`] (interface names, MACs, reservation tokens) and [`reconcile`] (the
//! reconciliation of a dockerd with Tessera). The IO part: [`driver`] (the
//! operations), [`server`] (the HTTP edge), [`sync`] (the loop that creates
//! Tessera's Docker networks in this host's dockerd and removes leftovers),
//! [`docker`] (a client of the Engine API); the controller and the agent are
//! reached through `tessera_api`'s clients.
#![forbid(unsafe_code)]

pub mod authz;
pub mod docker;
pub mod driver;
pub mod names;
pub mod netns;
pub mod pool;
pub mod ports;
pub mod protocol;
pub mod reconcile;
pub mod server;
pub mod spec;
pub mod sync;

use std::sync::Arc;

pub use driver::{Config, Plugin};

/// Serves the plugin on its socket until `shutdown` resolves. Containers
/// stay connected while the plugin is away: their interfaces belong to the
/// agent's data plane.
pub async fn run(cfg: Config, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    // dockerd runs as root: no group besides.
    let listener = tessera_api::local::LocalListener::bind(&cfg.socket, None)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.socket.display()))?;
    let socket = cfg.socket.clone();
    tracing::info!(host = %cfg.host, socket = %socket.display(), controller = %cfg.controller,
        agent = %cfg.agent_socket.display(), docker = %cfg.docker_host, "docker plugin serving");
    let plugin = Arc::new(Plugin::new(cfg)?);
    let sync = tokio::spawn(sync::run(plugin.clone()));
    let served = axum::serve(listener, server::router(plugin)).with_graceful_shutdown(shutdown).await;
    sync.abort();
    let _ = std::fs::remove_file(&socket);
    tracing::info!("docker plugin stopped; containers stay connected");
    Ok(served?)
}
