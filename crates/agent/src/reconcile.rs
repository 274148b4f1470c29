//! The reconcile loop: on every change of the mirrored intent, when kicked
//! and every [`RESYNC_EVERY`], compute this host's desired data plane
//! (pure, [`crate::desired`]), reconcile the kernel to it, and report
//! endpoint status and progress.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tessera_model::watch::Snapshot;
use tessera_model::EndpointStatus;
use uuid::Uuid;

use crate::agent::Agent;
use crate::desired;

/// The kernel is compared with the intent at least this often.
const RESYNC_EVERY: Duration = Duration::from_secs(10);

impl Agent {
    /// Reconciles whenever the intent changes, when kicked, and periodically.
    pub(crate) async fn reconcile_loop(self: Arc<Self>) {
        let mut rx = self.snapshot.clone();
        loop {
            let snap = rx.borrow_and_update().clone();
            if let Some(snap) = snap {
                self.reconcile_once(&snap).await;
            }
            tokio::select! {
                _ = rx.changed() => {}
                _ = self.kick.notified() => {}
                _ = tokio::time::sleep(RESYNC_EVERY) => {}
            }
        }
    }

    async fn reconcile_once(&self, snap: &Snapshot) {
        let span = tracing::info_span!("reconcile", revision = snap.revision);
        let _enter = span.enter();
        let started = std::time::Instant::now();
        let (intent, leak_warnings) = self.intents.lock().unwrap_or_else(|p| p.into_inner()).compile(snap, &self.me);
        tracing::debug!(elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "desired state computed");
        for w in leak_warnings.iter().flatten() {
            tracing::warn!(importer = %w.importer, exporter = %w.exporter, "{w}");
        }
        let (desired, skipped) = (Arc::new(intent.desired), intent.skipped);
        for (id, reason) in &skipped.0 {
            tracing::warn!(endpoint = %id, reason, "endpoint cannot be programmed");
        }
        let present: BTreeSet<Uuid> = desired.networks.iter().flat_map(|n| n.local.iter().map(|l| l.id)).collect();
        let started = std::time::Instant::now();
        let result = tessera_dataplane::reconcile(self.dp.as_ref(), &desired).await;
        tracing::debug!(elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "reconciled");
        let (programmed, last_error) = match &result {
            Ok(report) if report.failures.is_empty() => (present.clone(), None),
            Ok(report) => {
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
        self.counters.reconciled(desired.clone());
        self.report_status(snap, &programmed, &skipped);
        self.progress.send_modify(|p| {
            p.reconciles += 1;
            p.revision = snap.revision;
            p.networks = desired.networks.len();
            p.programmed = programmed;
            p.present = present;
            p.last_error = last_error;
        });
    }

    /// Tells the controller which local endpoints are active or failed (best effort, in the background).
    fn report_status(&self, snap: &Snapshot, programmed: &BTreeSet<Uuid>, skipped: &desired::Skipped) {
        let failed: BTreeSet<Uuid> = skipped.0.iter().map(|(id, _)| *id).collect();
        for e in snap.endpoints.iter().filter(|e| e.host == self.me.name) {
            let want = if programmed.contains(&e.id) {
                EndpointStatus::Active
            } else if failed.contains(&e.id) {
                EndpointStatus::Failed
            } else {
                continue;
            };
            if e.status != want {
                let client = self.client.clone();
                let id = e.id;
                tokio::spawn(async move {
                    if let Err(e) = client.set_endpoint_status(id, want).await {
                        tracing::debug!(endpoint = %id, error = %e, "cannot report endpoint status");
                    }
                });
            }
        }
    }
}
