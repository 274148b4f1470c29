//! `tessera store migrate`: copies a stopped fabric's store into an empty
//! one, redb ↔ etcd, then verifies it.
//!
//! The operator stops every controller, migrates, and starts the
//! controllers on the new store. The fabric keeps its cluster ID (agents
//! accept the new store as the same fabric), but the new store's revisions
//! are its own: the migration gives the new store a new epoch
//! (`/tessera/store-epoch`, in every snapshot), and a watch that resumes
//! from a revision with the old epoch is refused with 410, so the agent
//! takes a new snapshot (as agents' mirrors also do whenever their watch
//! breaks). No revision of the old store is used against the new one.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tessera_controller::keys;
use tessera_store::{Compare, EtcdConfig, EtcdStore, KeyValue, Op, RedbStore, Store, StoreError, StoreOptions, Txn};

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Copy every key of a stopped fabric's store into an EMPTY store and
    /// verify it byte for byte. Stop the controllers first.
    Migrate(MigrateArgs),
}

#[derive(clap::Args)]
pub struct MigrateArgs {
    /// The store to copy: a data directory (with `tessera.redb`) or
    /// `etcd://HOST:PORT,...`. Its controllers must be stopped.
    #[arg(long, value_name = "DATA_DIR|etcd://HOST:PORT,...")]
    from: String,
    /// The store to fill, which must hold nothing under `/tessera/`: a data
    /// directory or `etcd://HOST:PORT,...`.
    #[arg(long, value_name = "DATA_DIR|etcd://HOST:PORT,...")]
    to: String,
    /// The CA of etcd's certificates (PEM): etcd is then reached over https.
    #[arg(long, value_name = "FILE")]
    etcd_ca: Option<PathBuf>,
    /// The client certificate presented to etcd (PEM; with --etcd-key).
    #[arg(long, value_name = "FILE", requires = "etcd_key")]
    etcd_cert: Option<PathBuf>,
    /// The client certificate's key (PEM; with --etcd-cert).
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
    /// Keys written per transaction (etcd refuses more than 128 ops per
    /// transaction by default).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    batch_keys: u64,
}

/// Bytes of values written per transaction (etcd refuses requests over
/// 1.5 MiB by default).
const BATCH_BYTES: usize = 1024 * 1024;

pub async fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Migrate(args) => migrate(args).await,
    }
}

/// A store named on the command line.
enum Location {
    Redb(PathBuf),
    Etcd(Vec<String>),
}

impl Location {
    fn parse(text: &str, args: &MigrateArgs) -> anyhow::Result<Location> {
        match text.strip_prefix("etcd://") {
            Some(hosts) => {
                let scheme = if args.etcd_ca.is_some() || args.etcd_cert.is_some() { "https" } else { "http" };
                let endpoints: Vec<String> =
                    hosts.split(',').map(str::trim).filter(|h| !h.is_empty()).map(|h| format!("{scheme}://{h}")).collect();
                if endpoints.is_empty() {
                    anyhow::bail!("{text}: name at least one etcd member (etcd://HOST:PORT,...)");
                }
                Ok(Location::Etcd(endpoints))
            }
            None => Ok(Location::Redb(PathBuf::from(text).join("tessera.redb"))),
        }
    }

    fn name(&self) -> String {
        match self {
            Location::Redb(path) => path.display().to_string(),
            Location::Etcd(endpoints) => format!("etcd {}", endpoints.join(",")),
        }
    }

    /// Opens the store; a source redb file must exist, and must not be in
    /// use (redb's lock says whether a controller holds it).
    async fn open(&self, args: &MigrateArgs, source: bool) -> anyhow::Result<Arc<dyn Store>> {
        match self {
            Location::Redb(path) => {
                if source && std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) == 0 {
                    anyhow::bail!("--from: no store at {} (the file is missing or empty)", path.display());
                }
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
                }
                match RedbStore::open_with(path, StoreOptions::default()) {
                    Ok(store) => Ok(Arc::new(store)),
                    Err(StoreError::AlreadyOpen { .. }) => anyhow::bail!(
                        "{} {} is in use (a controller runs on it): stop it before migrating",
                        if source { "--from" } else { "--to" },
                        path.display()
                    ),
                    Err(e) => Err(e).with_context(|| format!("cannot open {}", path.display())),
                }
            }
            Location::Etcd(endpoints) => {
                let config = EtcdConfig {
                    ca: args.etcd_ca.clone(),
                    cert: args.etcd_cert.clone(),
                    key: args.etcd_key.clone(),
                    timeout: Duration::from_secs(30),
                    ..EtcdConfig::new(endpoints.clone())
                };
                Ok(Arc::new(EtcdStore::connect(&config).await.with_context(|| format!("cannot connect to {}", self.name()))?))
            }
        }
    }
}

async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let from = Location::parse(&args.from, &args)?;
    let to = Location::parse(&args.to, &args)?;
    let source = from.open(&args, true).await?;
    let target = to.open(&args, false).await?;

    let present = target.range_keys(keys::ROOT).await.with_context(|| format!("cannot read {}", to.name()))?;
    if let Some(first) = present.kvs.first() {
        anyhow::bail!(
            "--to {} is not empty: it holds {} keys under {} (the first is {}); migrate only into an empty store",
            to.name(),
            present.kvs.len(),
            keys::ROOT,
            first.key
        );
    }
    let listing = source.range(keys::ROOT).await.with_context(|| format!("cannot read {}", from.name()))?;
    if listing.kvs.is_empty() {
        anyhow::bail!("--from {} holds nothing under {}: there is no fabric to migrate", from.name(), keys::ROOT);
    }
    let total = listing.kvs.len();
    let bytes: usize = listing.kvs.iter().map(|kv| kv.value.len()).sum();
    eprintln!("copying {total} keys ({bytes} bytes) from {} (revision {}) to {}", from.name(), listing.revision, to.name());

    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut copied = 0;
    for (n, batch) in batches(&listing.kvs, args.batch_keys as usize).into_iter().enumerate() {
        let mut txn = Txn::new().then_all(batch.iter().map(|kv| Op::put(kv.key.clone(), kv.value.clone())));
        if n == 0 {
            // Nothing may have appeared since the check.
            txn = txn.when(Compare::prefix_empty(keys::ROOT));
        }
        let result = target.txn(txn).await.with_context(|| format!("cannot write to {} after {copied} keys", to.name()))?;
        if !result.succeeded {
            anyhow::bail!("--to {} is not empty any more: something writes to it; stop it and start again", to.name());
        }
        copied += batch.len();
        if last_report.elapsed() >= Duration::from_secs(1) || copied == total {
            eprintln!("copied {copied}/{total} keys");
            last_report = Instant::now();
        }
    }

    let written = target.range(keys::ROOT).await.with_context(|| format!("cannot read back {}", to.name()))?;
    verify(&listing.kvs, &written.kvs).with_context(|| format!("{} does not hold what was copied", to.name()))?;
    // The new store's revisions are not the source's: a new epoch says so.
    let epoch = uuid::Uuid::new_v4();
    target
        .txn(Txn::new().then(Op::put(keys::STORE_EPOCH, epoch.to_string())))
        .await
        .with_context(|| format!("cannot write the store epoch to {}", to.name()))?;
    eprintln!(
        "verified {total} keys and {bytes} bytes of values byte for byte in {:.1} s; {} is at revision {}, store epoch {epoch}: \
         start the controllers on it (agents take a new snapshot)",
        started.elapsed().as_secs_f64(),
        to.name(),
        written.revision
    );
    println!("{total} keys, {bytes} bytes copied and verified");
    Ok(())
}

/// `kvs` in transactions of at most `keys` keys and [`BATCH_BYTES`] bytes
/// (a bigger value goes alone).
fn batches(kvs: &[KeyValue], keys: usize) -> Vec<&[KeyValue]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut size = 0;
    for (i, kv) in kvs.iter().enumerate() {
        let len = kv.key.len() + kv.value.len();
        if i > start && (i - start >= keys || size + len > BATCH_BYTES) {
            out.push(&kvs[start..i]);
            start = i;
            size = 0;
        }
        size += len;
    }
    if start < kvs.len() {
        out.push(&kvs[start..]);
    }
    out
}

/// Every key and value of `source` is in `target`, and nothing else.
fn verify(source: &[KeyValue], target: &[KeyValue]) -> anyhow::Result<()> {
    if source.len() != target.len() {
        anyhow::bail!("{} keys copied, {} read back", source.len(), target.len());
    }
    for (a, b) in source.iter().zip(target) {
        if a.key != b.key {
            anyhow::bail!("key {} copied, {} read back in its place", a.key, b.key);
        }
        if a.value != b.value {
            anyhow::bail!("the value of {} differs ({} bytes copied, {} read back)", a.key, a.value.len(), b.value.len());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, len: usize) -> KeyValue {
        KeyValue { key: key.into(), value: vec![0; len], create_revision: 1, mod_revision: 1, version: 1 }
    }

    #[test]
    fn batches_are_bounded_by_keys_and_bytes() {
        let kvs: Vec<_> = (0..5).map(|i| kv(&format!("k{i}"), 10)).collect();
        assert_eq!(batches(&kvs, 2).iter().map(|b| b.len()).collect::<Vec<_>>(), [2, 2, 1]);
        let big = [kv("a", BATCH_BYTES), kv("b", 1), kv("c", BATCH_BYTES)];
        assert_eq!(batches(&big, 100).iter().map(|b| b.len()).collect::<Vec<_>>(), [1, 1, 1]);
    }
}
