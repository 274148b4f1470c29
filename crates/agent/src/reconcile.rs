//! The reconcile loop: on every change of the mirrored intent, when kicked
//! and every [`RESYNC_EVERY`], compute this host's desired data plane
//! (pure, [`crate::desired`]), reconcile the kernel to it, and report
//! endpoint status and progress. A change of intent is planned against what
//! the kernel is known to hold (an attach waits for no netlink dump); a
//! kick, the periodic resync and any failed action observe the kernel again
//! ([`tessera_dataplane::Reconciler`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tessera_dataplane::Look;
use tessera_model::watch::Snapshot;
use tessera_model::{EndpointStatus, EndpointStatusUpdate};
use uuid::Uuid;

use crate::agent::Agent;
use crate::desired;

/// The kernel is compared with the intent at least this often.
pub(crate) const RESYNC_EVERY: Duration = Duration::from_secs(10);
/// How old the observation a change is planned against may be: the
/// periodic resync observes every [`RESYNC_EVERY`]; this only bounds it
/// should a resync be late (a busy host).
pub(crate) const KNOWN_FOR: Duration = Duration::from_secs(3 * RESYNC_EVERY.as_secs());

impl Agent {
    /// Reconciles whenever the intent changes, when kicked, and periodically.
    /// Also at once when the data plane sees Tessera's nftables tables
    /// changed behind its back (`nft flush ruleset`): they are restored
    /// within a reconcile.
    pub(crate) async fn reconcile_loop(self: Arc<Self>) {
        let mut rx = self.snapshot.clone();
        let mut tampered = self.dp.nft_changes();
        let mut restoring = false;
        let mut look = Look::Kernel;
        // The periodic resync runs on its own, whatever changes come in
        // between: were it only due after a quiet `RESYNC_EVERY`, under a
        // stream of changes the known state would age out and a change would
        // wait for the observation (50-80 ms with 500 endpoints).
        let mut resync_at = tokio::time::Instant::now();
        loop {
            if look == Look::Kernel {
                resync_at = tokio::time::Instant::now() + RESYNC_EVERY;
            }
            let snap = rx.borrow_and_update().clone();
            if let Some(snap) = snap {
                let restored = self.reconcile_once(&snap, look).await;
                if restoring && restored > 0 {
                    tracing::warn!(
                        nft_changes = restored,
                        "restored Tessera's nftables tables, changed behind its back (nft flush or delete)"
                    );
                }
            }
            restoring = false;
            let nft_changed = async {
                match tampered.as_mut() {
                    Some(t) => t.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            look = tokio::select! {
                _ = rx.changed() => Look::Known,
                _ = self.kick.notified() => Look::Kernel,
                ok = nft_changed => {
                    if ok {
                        restoring = true;
                    } else {
                        tampered = None;
                    }
                    // The nftables state is always read again.
                    Look::Known
                }
                _ = tokio::time::sleep_until(resync_at) => Look::Kernel,
            };
        }
    }

    /// Reconciles once; how many nftables actions it applied.
    async fn reconcile_once(&self, snap: &Snapshot, look: Look) -> usize {
        let span = tracing::info_span!("reconcile", revision = snap.revision);
        let _enter = span.enter();
        let started = std::time::Instant::now();
        let cpu = tessera_dataplane::linux::thread_cpu_time();
        let (intent, leak_warnings) = self.intents.lock().unwrap_or_else(|p| p.into_inner()).compile(snap, &self.me);
        // Whether the snapshot holds the endpoints of every network this
        // host programs (else the mirror is taking one that does).
        let complete = match (&snap.scope, &intent.scope) {
            (None, _) => true,
            (Some(_), tessera_api::scope::Scope::Everything) => false,
            (Some(held), tessera_api::scope::Scope::Networks(needed)) => needed.is_subset(held),
        };
        // The mirror asks for other networks' endpoints when this host
        // needs them (a first endpoint in a network, a new connection).
        self.scope.send_if_modified(|held| {
            let changed = *held != intent.scope;
            if changed {
                *held = intent.scope.clone();
            }
            changed
        });
        tracing::debug!(
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            cpu_ms = tessera_dataplane::linux::thread_cpu_time().saturating_sub(cpu).as_secs_f64() * 1e3,
            "desired state computed"
        );
        for w in leak_warnings.iter().flatten() {
            tracing::warn!(importer = %w.importer, exporter = %w.exporter, "{w}");
        }
        let (mut desired, mut skipped) = (intent.desired, intent.skipped);
        let missing = sort_out_namespaces(&mut desired, &mut skipped);
        let gone: Vec<Uuid> = missing.iter().map(|(id, _)| *id).collect();
        self.follower.follow(snap, &gone, &self.client);
        let desired = Arc::new(desired);
        for (id, reason) in skipped.0.iter().chain(&missing) {
            tracing::warn!(endpoint = %id, reason, "endpoint cannot be programmed");
        }
        for e in &intent.errors {
            tracing::error!(error = %e, "intent not programmed");
        }
        let present: BTreeSet<Uuid> = desired.networks.iter().flat_map(|n| n.local.iter().map(|l| l.id)).collect();
        let started = std::time::Instant::now();
        let result = self.reconciler.reconcile(self.dp.as_ref(), &desired, look).await;
        if let (Some(fp), Ok(report)) = (&self.fastpath, &result) {
            fast_path(fp, report);
        }
        tracing::debug!(elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "reconciled");
        // Endpoints the kernel refused are reported failed with the reason
        // (and tried again at the next reconcile).
        let mut refused = skipped.clone();
        refused.0.extend(missing);
        let (programmed, last_error) = match &result {
            Ok(report) if report.failures.is_empty() => (present.clone(), intent.errors.first().cloned()),
            Ok(report) => {
                refused.0.extend(report.endpoint_failures().map(|(id, f)| (id, f.error.to_string())));
                let failed: BTreeSet<Uuid> = report.failed_endpoints().collect();
                let msg = report.failures.iter().map(|f| f.to_string()).collect::<Vec<_>>().join("; ");
                tracing::warn!(failures = report.failures.len(), error = %msg, "reconcile incomplete");
                (present.difference(&failed).copied().collect(), Some(msg))
            }
            Err(e) => {
                tracing::warn!(error = %e, "reconcile failed");
                (BTreeSet::new(), Some(e.to_string()))
            }
        };
        drop(_enter);
        let m = &self.metrics;
        m.reconciles.inc();
        let outcome = match &result {
            Ok(r) if r.failures.is_empty() => "ok",
            Ok(_) => "incomplete",
            Err(_) => "failed",
        };
        m.reconcile_seconds.with_label_values(&[outcome]).observe(started.elapsed().as_secs_f64());
        if let Ok(r) = &result {
            let nft = r.applied.iter().filter(|a| a.is_nft()).count() as u64;
            m.actions.with_label_values(&["nftables"]).inc_by(nft);
            m.actions.with_label_values(&["netlink"]).inc_by(r.applied.len() as u64 - nft);
            m.failures.inc_by(r.failures.len() as u64);
        }
        m.endpoints.set(programmed.len() as i64);
        m.networks.set(desired.networks.len() as i64);
        m.revision.set(snap.revision as i64);
        self.counters.reconciled(desired.clone());
        self.report_status(snap, &programmed, &refused);
        self.progress.send_modify(|p| {
            p.reconciles += 1;
            p.revision = snap.revision;
            p.networks = desired.networks.len();
            p.programmed = programmed;
            p.present = present;
            p.skipped = skipped.0.iter().cloned().collect();
            p.last_error = last_error;
            p.complete = complete;
        });
        result.map_or(0, |r| r.applied.iter().filter(|a| a.is_nft()).count())
    }

    /// Tells the controller which local endpoints are active or failed (best effort, in the background).
    fn report_status(&self, snap: &Snapshot, programmed: &BTreeSet<Uuid>, skipped: &desired::Skipped) {
        let failed: BTreeMap<Uuid, &str> = skipped.0.iter().map(|(id, why)| (*id, why.as_str())).collect();
        for e in snap.endpoints.iter().filter(|e| e.host == self.me.name) {
            let want = if programmed.contains(&e.id) {
                EndpointStatusUpdate { status: EndpointStatus::Active, message: None }
            } else if let Some(why) = failed.get(&e.id) {
                EndpointStatusUpdate { status: EndpointStatus::Failed, message: Some(why.to_string()) }
            } else {
                continue;
            };
            if e.status != want.status || e.status_message != want.message {
                let client = self.client.clone();
                let id = e.id;
                tokio::spawn(async move {
                    if let Err(e) = client.set_endpoint_status(id, &want).await {
                        tracing::debug!(endpoint = %id, error = %e, "cannot report endpoint status");
                    }
                });
            }
        }
    }
}

/// Takes out of `desired` the local endpoints whose namespace cannot be
/// opened (a container that is gone, a namespace not made yet), returned
/// with the reason: they are reported failed and tried again at the next
/// reconcile, and the host's other endpoints are programmed as usual. Also
/// takes out, into `skipped`, those whose namespace is one of the host's own
/// (the controller cannot tell: `/proc/2/ns/net`, or a bind mount of the
/// host's namespace), so the data plane never configures the host's
/// namespace as a container's. One `stat` per endpoint.
fn sort_out_namespaces(desired: &mut tessera_dataplane::DesiredHost, skipped: &mut desired::Skipped) -> Vec<(Uuid, String)> {
    let host = crate::host_ns::HostNamespaces::read();
    let mut missing = Vec::new();
    for n in &mut desired.networks {
        n.local.retain(|l| match host.check(&l.netns) {
            Ok(None) => true,
            Ok(Some(why)) => {
                skipped.0.push((l.id, format!("{} {why}", l.netns.display())));
                false
            }
            Err(e) => {
                missing.push((l.id, format!("its network namespace {} cannot be opened: {e}", l.netns.display())));
                false
            }
        });
    }
    missing
}

/// After a reconcile: the flows of flushed zones leave the fast path (its
/// maps follow the desired state in a task of their own, `fastpath_sync`).
fn fast_path(fp: &tessera_dataplane::linux::fastpath::FastPath, report: &tessera_dataplane::ApplyReport) {
    let flushed: Vec<u16> = report
        .applied
        .iter()
        .filter_map(|a| match a {
            tessera_dataplane::KernelOp::ConntrackZoneFlush { zone } => Some(*zone),
            _ => None,
        })
        .collect();
    fp.zones_flushed(&flushed);
}
