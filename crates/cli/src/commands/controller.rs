//! `tessera controller`: runs the REST API on the embedded store (redb, the
//! default) or on an etcd cluster (`--store etcd`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tessera_controller::tls::TlsFiles;
use tessera_controller::Controller;
use tessera_store::{EtcdConfig, EtcdStore, RedbStore, Store, StoreOptions};

/// Where the controller keeps the fabric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// One crash-safe file in --data-dir, for one controller.
    Redb,
    /// An etcd v3 cluster (--etcd-endpoints), which several controllers
    /// may share.
    Etcd,
}

/// What `tessera controller` does besides serving.
#[derive(clap::Subcommand)]
pub enum Action {
    /// A running controller's status: its store (revision, ready), the
    /// controllers sharing it (alive, leader) and the hosts watching it,
    /// with how far behind each is.
    Status,
    /// Make a new fabric in the store (--data-dir, or etcd) and exit; a
    /// store that already holds one is left as it is. Run once before the
    /// first start (a service then starts without --init).
    Init(Box<StoreArgs>),
}

/// The store options shared by `tessera controller` and the commands that
/// open a store.
#[derive(clap::Args)]
pub struct StoreArgs {
    /// Where the fabric is kept.
    #[arg(long = "store", value_enum, default_value = "redb")]
    pub kind: StoreKind,
    /// Directory of the store file (`tessera.redb`); created if missing
    /// (--store redb; default /var/lib/tessera).
    #[arg(long, env = "TESSERA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// etcd's client URLs, comma-separated (`https://e1:2379,https://e2:2379`;
    /// --store etcd).
    #[arg(long, value_delimiter = ',', value_name = "URL,...")]
    pub etcd_endpoints: Vec<String>,
    /// The CA that signed etcd's certificates (PEM; --store etcd).
    #[arg(long, value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// The client certificate presented to etcd (PEM; with --etcd-key).
    #[arg(long, value_name = "FILE", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// The client certificate's key (PEM; with --etcd-cert).
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// Seconds within which etcd must answer each call; past it the request
    /// fails with 503 `store_unavailable`.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub etcd_timeout: u64,
}

/// The opened store and a name for it in messages.
pub struct Opened {
    pub store: Arc<dyn Store>,
    pub name: String,
}

impl StoreArgs {
    /// Checks that the flags describe one store, naming the flag that
    /// contradicts `--store`.
    pub fn check(&self) -> anyhow::Result<()> {
        match self.kind {
            StoreKind::Redb => {
                let etcd_flag = [
                    (!self.etcd_endpoints.is_empty(), "--etcd-endpoints"),
                    (self.etcd_ca.is_some(), "--etcd-ca"),
                    (self.etcd_cert.is_some(), "--etcd-cert"),
                    (self.etcd_key.is_some(), "--etcd-key"),
                ]
                .into_iter()
                .find_map(|(given, flag)| given.then_some(flag));
                if let Some(flag) = etcd_flag {
                    anyhow::bail!(
                        "{flag} is for --store etcd, and the store is redb (the default): add --store etcd, or drop {flag}"
                    );
                }
            }
            StoreKind::Etcd => {
                if self.data_dir.is_some() {
                    anyhow::bail!(
                        "--data-dir (or TESSERA_DATA_DIR) is for --store redb, and the store is etcd: drop it, or use --store redb"
                    );
                }
                if self.etcd_endpoints.iter().all(|e| e.trim().is_empty()) {
                    anyhow::bail!("--store etcd needs --etcd-endpoints URL,... (etcd's client URLs)");
                }
                let tls = self.etcd_ca.is_some() || self.etcd_cert.is_some();
                if let Some(plain) = self.etcd_endpoints.iter().find(|e| tls && e.starts_with("http://")) {
                    anyhow::bail!(
                        "--etcd-endpoints {plain} is plain http while --etcd-ca/--etcd-cert ask for TLS: use https:// URLs"
                    );
                }
            }
        }
        Ok(())
    }

    /// The etcd configuration these flags describe.
    pub fn etcd_config(&self, options: StoreOptions) -> EtcdConfig {
        EtcdConfig {
            endpoints: self.etcd_endpoints.iter().map(|e| e.trim().to_owned()).filter(|e| !e.is_empty()).collect(),
            ca: self.etcd_ca.clone(),
            cert: self.etcd_cert.clone(),
            key: self.etcd_key.clone(),
            timeout: std::time::Duration::from_secs(self.etcd_timeout),
            options,
        }
    }

    /// The redb data directory (default /var/lib/tessera).
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| PathBuf::from("/var/lib/tessera"))
    }

    /// Opens the store; `init` allows a missing redb file.
    pub async fn open(&self, options: StoreOptions, init: bool) -> anyhow::Result<Opened> {
        self.check()?;
        match self.kind {
            StoreKind::Redb => {
                let dir = self.data_dir();
                std::fs::create_dir_all(&dir).with_context(|| format!("cannot create data directory {}", dir.display()))?;
                let path = dir.join("tessera.redb");
                let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                if size == 0 && !init {
                    anyhow::bail!(
                        "no store at {} (the file is missing or empty): start with --init to make a new fabric, or point --data-dir at the existing one",
                        path.display()
                    );
                }
                let store =
                    RedbStore::open_with(&path, options).with_context(|| format!("cannot open store {}", path.display()))?;
                Ok(Opened { store: Arc::new(store), name: format!("redb {}", path.display()) })
            }
            StoreKind::Etcd => {
                let config = self.etcd_config(options);
                let store = EtcdStore::connect(&config).await.context("cannot connect to etcd")?;
                Ok(Opened { name: format!("etcd {}", store.endpoints()), store: Arc::new(store) })
            }
        }
    }
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    pub action: Option<Action>,
    #[command(flatten)]
    store: StoreArgs,
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

/// `tessera controller init`: the store opened with `--init`, the fabric
/// made in it when it has none, and nothing served.
pub async fn init(store: StoreArgs) -> anyhow::Result<()> {
    store.check()?;
    let Opened { store, name } = store.open(StoreOptions::default(), true).await?;
    let controller = Controller::new(store).with_store_name(name.clone());
    let cluster = controller.bootstrap(true).await.with_context(|| format!("cannot make a fabric in the store {name}"))?;
    println!("fabric {cluster} in {name}");
    Ok(())
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
    args.store.check()?;
    let tls = tls_files.as_ref().map(tessera_controller::tls::server_config).transpose()?;
    let Opened { store, name } = args.store.open(StoreOptions { retain_events: args.retain_events }, args.init).await?;
    let controller =
        Arc::new(Controller::new(store).with_advertise_url(args.advertise_url.clone()).with_store_name(name.clone()));
    controller.set_flow_records(args.flow_records as usize);
    let cluster = controller.bootstrap(args.init).await.with_context(|| format!("cannot serve the store {name}"))?;
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(listen = %listener.local_addr()?, store = %name, %cluster, id = %controller.id(), tls = tls_files.is_some(), "controller serving");
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
