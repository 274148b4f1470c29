//! `tessera controller`: runs the REST API on the embedded store.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tessera_controller::tls::TlsFiles;
use tessera_controller::Controller;
use tessera_store::{RedbStore, Store, StoreOptions};

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
    /// Serve HTTPS with the certificates `tessera pki init` wrote in DIR
    /// (`controller.pem`, its key, and `ca.pem` for client certificates).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["tls_cert", "insecure_loopback"])]
    pki: Option<PathBuf>,
    /// Serve HTTPS with this certificate (PEM; with --tls-key and --client-ca).
    #[arg(long, requires_all = ["tls_key", "client_ca"], conflicts_with = "insecure_loopback")]
    tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The CA whose client certificates are accepted.
    #[arg(long, requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// Serve plain HTTP on a loopback address, where every caller acts as a
    /// fabric administrator: no certificates, no tokens. For one machine
    /// whose local users are all trusted.
    #[arg(long)]
    insecure_loopback: bool,
    /// Connections served at once; more wait in the kernel's backlog until
    /// one closes.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_connections: u32,
    /// Seconds after which a connection on which nothing moved is closed.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    idle_timeout: u64,
    /// Events the store keeps for watchers; a watcher further behind takes
    /// a new snapshot.
    #[arg(long, default_value_t = StoreOptions::DEFAULT_RETAIN_EVENTS, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    retain_events: u64,
    /// The URL other controllers and operators reach this one at, recorded
    /// in its registration in the store (several controllers may share one
    /// store; `GET /v1/controllers` lists them).
    #[arg(long)]
    advertise_url: Option<String>,
    /// Flow records kept (in memory) per host; the oldest go first.
    #[arg(long, default_value_t = tessera_controller::service::DEFAULT_FLOW_RECORDS as u64, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    flow_records: u64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let tls_files = match (&args.pki, &args.tls_cert, &args.tls_key, &args.client_ca) {
        (Some(dir), ..) => Some(TlsFiles::from_pki(dir)),
        (None, Some(cert), Some(key), Some(ca)) => Some(TlsFiles { cert: cert.clone(), key: key.clone(), client_ca: ca.clone() }),
        _ if args.insecure_loopback => {
            if !args.listen.ip().is_loopback() {
                anyhow::bail!("--insecure-loopback serves plain HTTP to anyone who reaches it: --listen {} is not a loopback address", args.listen);
            }
            None
        }
        _ => anyhow::bail!(
            "the controller serves HTTPS: give --pki DIR (made by `tessera pki init --dir DIR`) or --tls-cert, --tls-key and --client-ca; \
             or --insecure-loopback for plain HTTP on a loopback address"
        ),
    };
    let tls = tls_files.as_ref().map(tessera_controller::tls::server_config).transpose()?;
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
    let store: Arc<dyn Store> = Arc::new(
        RedbStore::open_with(&path, StoreOptions { retain_events: args.retain_events })
            .with_context(|| format!("cannot open store {}", path.display()))?,
    );
    let controller = Arc::new(Controller::new(store).with_advertise_url(args.advertise_url.clone()));
    controller.set_flow_records(args.flow_records as usize);
    let cluster = controller.bootstrap(args.init).await.with_context(|| format!("cannot serve the store {}", path.display()))?;
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(listen = %listener.local_addr()?, store = %path.display(), %cluster, id = %controller.id(), tls = tls_files.is_some(), "controller serving");
    let limits = tessera_controller::conn::ConnLimits {
        max_connections: args.max_connections as usize,
        idle_timeout: std::time::Duration::from_secs(args.idle_timeout),
    };
    raise_open_files(limits.max_connections);
    tessera_controller::serve(listener, tls, limits, controller, shutdown_signal()).await?;
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

/// Raises the soft limit of open files to the hard limit, so that
/// `--max-connections` connections, the store and the logs fit; says so
/// when even the hard limit is below what the connections need.
fn raise_open_files(connections: usize) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return };
    if soft < hard {
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            tracing::warn!(error = %e, soft, hard, "cannot raise the limit of open files");
        }
    }
    let want = connections as u64 + 64;
    if hard < want {
        tracing::warn!(
            limit = hard,
            max_connections = connections,
            "the limit of open files is below --max-connections: connections past it wait until one closes"
        );
    }
}
