//! [`EtcdStore`]: the [`Store`] on an etcd v3 cluster (3.4 or later), for a
//! control plane that runs on a distributed engine. How Tessera's model
//! maps onto etcd's is documented on the type.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions, KvClient};

use crate::engine;
use crate::etcd_conv::{self, header_revision, key_value, prefix_range, to_etcd};
use crate::etcd_events::{self, Followed, Link};
use crate::etcd_group::{self, Waiting};
use crate::etcd_txn::{self, Plan};
use crate::{KeyValue, RangeResult, Store, StoreError, StoreOptions, Txn, TxnResult};

/// Largest gRPC message the store reads from etcd (a range of a whole
/// fabric, a page of events).
const MAX_MESSAGE: usize = 512 * 1024 * 1024;

/// Where the etcd cluster is and how to talk to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs of the members (`https://e1:2379`, or `http://` without
    /// TLS). Requests are spread over those that answer.
    pub endpoints: Vec<String>,
    /// TLS: the CA that signed the members' certificates (PEM).
    pub ca: Option<PathBuf>,
    /// TLS: the client certificate presented to etcd (PEM), with `key`.
    pub cert: Option<PathBuf>,
    /// TLS: the client certificate's private key (PEM).
    pub key: Option<PathBuf>,
    /// Bound of every etcd call: past it, the call fails with
    /// [`StoreError::Unavailable`].
    pub timeout: Duration,
    /// Tuning shared by every backend.
    pub options: StoreOptions,
}

impl EtcdConfig {
    /// The default bound of an etcd call.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

    /// A configuration for `endpoints`, without TLS, with the default
    /// timeout and options.
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        EtcdConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            ca: None,
            cert: None,
            key: None,
            timeout: Self::DEFAULT_TIMEOUT,
            options: StoreOptions::default(),
        }
    }
}

/// A [`Store`] kept in an etcd v3 cluster. Cheap to clone: clones share the
/// connection and the watch that follows the revision, which stops when the
/// last clone is dropped.
///
/// # How Tessera's model maps onto etcd's
///
/// * **Revisions**: Tessera's revision is etcd's minus one (etcd's empty
///   store is at 1, Tessera's at 0), in every result, event, key-value and
///   compare. etcd, like Tessera, creates no revision for a transaction
///   that changes nothing.
/// * **Transactions** are one etcd transaction each, or, when several wait
///   together and touch nothing another writes, one etcd transaction for
///   the group, which then share one revision (`etcd_group`). Compares map one to one
///   (`PrefixEmpty` is `version == 0` over the prefix's range). etcd does
///   not say which compare failed, so the failure branch first reads every
///   compared key, atomically with the evaluation, and
///   [`TxnResult::failed`] is computed from those reads. Invalid
///   transactions are refused before etcd sees them, with the same rules
///   as every backend.
/// * **Reads** are linearizable: `get`, `range` and `revision` need a
///   quorum, like writes; without one they fail with
///   [`StoreError::Unavailable`] rather than answer stale data. Only
///   `range_keys_relaxed` is etcd's serializable read, answered by the
///   member the call reaches.
/// * **Events** are etcd's history, read with a watch from a revision;
///   a watch refused because its start was compacted is
///   [`StoreError::Compacted`]. [`Store::subscribe`] is fed by one watch of
///   every key, opened again after a failure, which also keeps the recent
///   events in memory (`etcd_recent`): a read of the events after a
///   revision it still holds is answered from there, once the watch
///   delivered every revision this process knows of (its own writes
///   included), without a call to etcd. A revision another controller
///   committed is thus in `events_since` when this process's watch
///   delivered it, as in a watch.
/// * **Retention**: after a write, when the events this process has seen
///   (its writes and the others', through its watch) exceed
///   `retain_events` by more than a sixteenth, the store compacts etcd so
///   that `retain_events` or fewer remain, discarding whole revisions (etcd
///   compacted at its revision `r` is Tessera's compaction point `r − 1`);
///   the history from before the store was opened goes at the first
///   compaction.
///   With several controllers each compacts from what it has seen.
/// * **Unavailability**: every call is bounded by [`EtcdConfig::timeout`];
///   no leader (the client asks etcd to refuse at once without one),
///   every endpoint down, or no answer in time is
///   [`StoreError::Unavailable`]. The client reconnects by itself.
///
/// The cluster must accept Tessera's biggest transactions: run etcd with
/// `--max-txn-ops` and `--max-request-bytes` above its defaults (128 ops,
/// 1.5 MiB; a policy of 100,000 rules writes about 400 chunks).
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

struct Inner {
    kv: KvClient,
    link: Link,
    retain_events: u64,
    followed: Arc<Followed>,
    /// Serialises compactions of this process.
    compacting: tokio::sync::Mutex<()>,
    /// The transactions waiting to be committed in groups, and whether a
    /// committer runs (see `etcd_group`).
    queue: std::sync::Mutex<(Vec<Waiting>, bool)>,
    follower: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").field("endpoints", &self.inner.link.endpoints).finish()
    }
}

impl EtcdStore {
    /// Connects to the cluster and reads its revision; fails with
    /// [`StoreError::Unavailable`] when it cannot serve within the timeout,
    /// and with [`StoreError::Open`] when a TLS file cannot be read.
    /// Must be called inside a tokio runtime.
    pub async fn connect(config: &EtcdConfig) -> Result<EtcdStore, StoreError> {
        let endpoints: Arc<str> = config.endpoints.join(",").into();
        if config.endpoints.is_empty() {
            return Err(StoreError::Unavailable { endpoints: String::new(), reason: "no etcd endpoint given".into() });
        }
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.timeout)
            .with_keep_alive(Duration::from_secs(2), config.timeout)
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        if let Some(tls) = tls_options(config)? {
            options = options.with_tls(tls);
        }
        let client = match tokio::time::timeout(config.timeout, Client::connect(&config.endpoints, Some(options))).await {
            Err(_) => return Err(etcd_conv::timed_out("connect", &endpoints, config.timeout)),
            Ok(Err(e)) => return Err(etcd_conv::error("connect", &endpoints, e)),
            Ok(Ok(client)) => client,
        };
        let kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
        let watch = client.watch_client().max_decoding_message_size(MAX_MESSAGE);
        let link = Link { watch, endpoints, timeout: config.timeout };
        let head = read_head(&kv, &link).await?;
        let followed = Arc::new(Followed::new(head));
        let follower = tokio::spawn(etcd_events::follow(link.clone(), kv.clone(), Arc::clone(&followed), head));
        Ok(EtcdStore {
            inner: Arc::new(Inner {
                kv,
                link,
                retain_events: config.options.retain_events,
                followed,
                compacting: tokio::sync::Mutex::new(()),
                queue: Default::default(),
                follower,
            }),
        })
    }

    /// The endpoints, comma-separated.
    pub fn endpoints(&self) -> &str {
        &self.inner.link.endpoints
    }

    /// Runs one etcd call, bounded by the timeout, mapping its errors.
    async fn call<T>(
        &self,
        op: &'static str,
        fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        bounded(&self.inner.link, op, fut).await
    }

    /// Every key under `prefix`, read with the options `with` adds.
    async fn range_with(
        &self,
        op: &'static str,
        prefix: &str,
        with: impl FnOnce(GetOptions) -> GetOptions,
    ) -> Result<RangeResult, StoreError> {
        let (start, end) = prefix_range(prefix);
        let mut kv = self.inner.kv.clone();
        let response = self.call(op, kv.get(start, Some(with(GetOptions::new().with_range(end))))).await?;
        let kvs = response.kvs().iter().map(key_value).collect::<Result<_, _>>()?;
        Ok(RangeResult { kvs, revision: header_revision(response.header()) })
    }

    /// Commits one transaction as one etcd transaction.
    async fn commit_alone(&self, txn: &Txn, plan: &Plan) -> Result<TxnResult, StoreError> {
        let mut kv = self.inner.kv.clone();
        let response = self.call("commit a transaction", kv.txn(plan.txn())).await?;
        let revision = header_revision(response.header());
        let responses = response.op_responses();
        let (failed, events) = if response.succeeded() {
            (Vec::new(), etcd_txn::events_of(&responses, 0))
        } else {
            let failed = etcd_txn::failed_compares(txn, plan, &responses)?;
            if failed.is_empty() {
                return Err(StoreError::backend("commit a transaction", "etcd took the failure branch but every compare held"));
            }
            (failed, etcd_txn::events_of(&responses, plan.reads()))
        };
        self.committed(revision, events).await;
        Ok(TxnResult { succeeded: failed.is_empty(), revision, failed })
    }

    /// Commits `group` as one etcd transaction (see `etcd_group`) and
    /// answers each of its transactions.
    async fn commit_group(&self, mut group: Vec<Waiting>) {
        loop {
            if group.len() == 1 {
                let w = group.remove(0);
                let result = self.commit_alone(&w.txn, &w.plan).await;
                let _ = w.reply.send(result);
                return;
            }
            let mut kv = self.inner.kv.clone();
            let response = match self.call("commit a transaction", kv.txn(etcd_group::joined(&group))).await {
                Ok(response) => response,
                Err(e) => {
                    for w in group {
                        let _ = w.reply.send(Err(etcd_group::shared(&e)));
                    }
                    return;
                }
            };
            let revision = header_revision(response.header());
            let responses = response.op_responses();
            if response.succeeded() {
                self.committed(revision, etcd_txn::events_of(&responses, 0)).await;
                for w in group {
                    let _ = w.reply.send(Ok(TxnResult { succeeded: true, revision, failed: Vec::new() }));
                }
                return;
            }
            // Each transaction's reads, in the group's order: those whose
            // compares failed are answered, the others go again.
            let size = group.len();
            let mut again = Vec::new();
            let mut at = 0;
            for w in group {
                let reads = responses.get(at..at + w.plan.reads()).unwrap_or(&[]);
                at += w.plan.reads();
                match etcd_txn::failed_compares(&w.txn, &w.plan, reads) {
                    Ok(failed) if failed.is_empty() => again.push(w),
                    Ok(failed) => {
                        let _ = w.reply.send(Ok(TxnResult { succeeded: false, revision, failed }));
                    }
                    Err(e) => {
                        let _ = w.reply.send(Err(e));
                    }
                }
            }
            if again.len() == size {
                // etcd failed the group but every compare held: one at a time.
                for w in again {
                    let result = self.commit_alone(&w.txn, &w.plan).await;
                    let _ = w.reply.send(result);
                }
                return;
            }
            group = again;
            if group.is_empty() {
                return;
            }
        }
    }

    /// Accounts for a committed revision that made `events` events, and
    /// publishes it, before its transactions are answered.
    async fn committed(&self, revision: u64, events: u64) {
        if events > 0 {
            self.inner.followed.log.lock().unwrap_or_else(|p| p.into_inner()).record(revision, events);
            self.inner.followed.advance(revision);
            self.compact_if_due().await;
        }
    }

    /// Discards the history beyond `retain_events` (see the type's docs).
    /// A failure is logged, not returned: the write it follows succeeded.
    async fn compact_if_due(&self) {
        let retain = self.inner.retain_events;
        let _one_at_a_time = self.inner.compacting.lock().await;
        let point = self.inner.followed.log.lock().unwrap_or_else(|p| p.into_inner()).compaction(retain, retain / 16);
        let Some(point) = point else { return };
        // Compacting etcd at `to_etcd(point)` discards Tessera's revisions
        // up to `point` (see `etcd_events`).
        let mut kv = self.inner.kv.clone();
        match self.call("compact the event log", kv.compact(to_etcd(point), None)).await {
            Ok(_) => {
                self.inner.followed.compacted(point);
                tracing::debug!(revision = point, "compacted the etcd history")
            }
            // Another controller compacted further: nothing to do.
            Err(StoreError::Backend { source, .. }) if source.to_string().contains("compacted") => {}
            Err(e) => tracing::warn!(error = %e, revision = point, "cannot compact the etcd history"),
        }
    }
}

/// Commits what waits in `store`'s queue, in groups, until it is empty.
async fn commit_waiting(store: EtcdStore) {
    loop {
        let waiting = {
            let mut queue = store.inner.queue.lock().unwrap_or_else(|p| p.into_inner());
            if queue.0.is_empty() {
                queue.1 = false;
                return;
            }
            std::mem::take(&mut queue.0)
        };
        let groups = etcd_group::partition(waiting);
        futures::future::join_all(groups.into_iter().map(|g| store.commit_group(g))).await;
    }
}

/// Reads the client's TLS files, if any.
fn tls_options(config: &EtcdConfig) -> Result<Option<etcd_client::TlsOptions>, StoreError> {
    if config.ca.is_none() && config.cert.is_none() && config.key.is_none() {
        return Ok(None);
    }
    let read = |path: &PathBuf| std::fs::read(path).map_err(|e| StoreError::Open { path: path.clone(), source: Box::new(e) });
    let mut tls = etcd_client::TlsOptions::new();
    if let Some(ca) = &config.ca {
        tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
    }
    match (&config.cert, &config.key) {
        (Some(cert), Some(key)) => tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?)),
        (None, None) => {}
        (Some(path), None) | (None, Some(path)) => {
            return Err(StoreError::Open {
                path: path.clone(),
                source: "a client certificate needs its key, and a key its certificate".into(),
            })
        }
    }
    Ok(Some(tls))
}

async fn bounded<T>(
    link: &Link,
    op: &'static str,
    fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(link.timeout, fut).await {
        Err(_) => Err(etcd_conv::timed_out(op, &link.endpoints, link.timeout)),
        Ok(Err(e)) => Err(etcd_conv::error(op, &link.endpoints, e)),
        Ok(Ok(v)) => Ok(v),
    }
}

/// The cluster's current revision (Tessera's), read with quorum.
async fn read_head(kv: &KvClient, link: &Link) -> Result<u64, StoreError> {
    let mut kv = kv.clone();
    let response = bounded(link, "read the revision", kv.get(vec![0], Some(GetOptions::new().with_count_only()))).await?;
    Ok(header_revision(response.header()))
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        if key.is_empty() {
            return Ok(None);
        }
        let mut kv = self.inner.kv.clone();
        let response = self.call("get", kv.get(key.as_bytes().to_vec(), None)).await?;
        response.kvs().first().map(key_value).transpose()
    }

    async fn range(&self, prefix: &str) -> Result<RangeResult, StoreError> {
        self.range_with("range", prefix, |o| o).await
    }

    async fn range_keys(&self, prefix: &str) -> Result<RangeResult, StoreError> {
        self.range_with("range keys", prefix, GetOptions::with_keys_only).await
    }

    async fn range_keys_relaxed(&self, prefix: &str) -> Result<RangeResult, StoreError> {
        self.range_with("range keys", prefix, |o| o.with_keys_only().with_serializable()).await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        engine::validate(&txn.success)?;
        engine::validate(&txn.failure)?;
        let plan = etcd_txn::plan(&txn);
        let Some(footprint) = etcd_group::groupable(&txn, &plan) else {
            return self.commit_alone(&txn, &plan).await;
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let waiting = Waiting { txn, plan, footprint, reply };
        let start = {
            let mut queue = self.inner.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.0.push(waiting);
            !std::mem::replace(&mut queue.1, true)
        };
        if start {
            tokio::spawn(commit_waiting(self.clone()));
        }
        answer.await.unwrap_or_else(|_| Err(StoreError::backend("commit a transaction", "the committer stopped")))
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        read_head(&self.inner.kv, &self.inner.link).await
    }

    async fn events_since(&self, prefix: &str, after: u64, limit: usize) -> Result<Vec<crate::Event>, StoreError> {
        if let Some(events) = self.inner.followed.recent_since(prefix, after, limit).await {
            return Ok(events);
        }
        let head = read_head(&self.inner.kv, &self.inner.link).await?;
        etcd_events::read_events(&self.inner.link, prefix, after, head, limit).await
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.followed.revisions.subscribe()
    }
}
