//! `tessera controller`: runs the REST API on the embedded store.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tessera_controller::Controller;
use tessera_store::{RedbStore, Store};

#[derive(clap::Args)]
pub struct Args {
    /// Directory of the store file (`tessera.redb`); created if missing.
    #[arg(long, env = "TESSERA_DATA_DIR", default_value = "/var/lib/tessera")]
    data_dir: PathBuf,
    /// Address to serve the API on.
    #[arg(long, default_value = "127.0.0.1:8082")]
    listen: SocketAddr,
    /// Make a new fabric when the store is missing or empty. Without it the
    /// controller refuses to start on one: a lost or emptied store file must
    /// not look like a fabric with no networks to the agents.
    #[arg(long)]
    init: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data directory {}", args.data_dir.display()))?;
    let path = args.data_dir.join("tessera.redb");
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    if size == 0 && !args.init {
        anyhow::bail!(
            "no store at {} (the file is missing or empty): start with --init to make a new fabric, or point --data-dir at the existing one",
            path.display()
        );
    }
    let store: Arc<dyn Store> =
        Arc::new(RedbStore::open(&path).with_context(|| format!("cannot open store {}", path.display()))?);
    let controller = Arc::new(Controller::new(store));
    let cluster = controller.bootstrap(args.init).await.with_context(|| format!("cannot serve the store {}", path.display()))?;
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(listen = %listener.local_addr()?, store = %path.display(), %cluster, "controller serving");
    tessera_controller::serve(listener, controller, shutdown_signal()).await?;
    tracing::info!("controller stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
