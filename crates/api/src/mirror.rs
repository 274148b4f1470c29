//! Mirrors the controller's intent: a snapshot, then the watch stream after
//! it; reconnects with backoff, and keeps the last state while the
//! controller is away so the host keeps forwarding.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use tessera_model::watch::{Snapshot, WatchEvent};
use tokio::sync::watch;

use crate::controller::ControllerClient;
use crate::saved::SnapshotFiles;

/// A watch that shows nothing, not even progress, for this long is dead.
const SILENCE: Duration = Duration::from_secs(15);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a snapshot handed to the [`Saver`] waits before it is written.
const SAVE_AFTER: Duration = Duration::from_secs(1);

/// Loads the snapshot a previous run saved, if any (see [`crate::saved`]).
pub fn load_saved(state_dir: &std::path::Path) -> Option<Snapshot> {
    crate::saved::load(state_dir)
}

/// Saves snapshots on a blocking thread, off the path from a change to the
/// data plane: the newest one handed over is written (only the chunks of
/// rules that changed, see [`crate::saved`]), older ones not yet written
/// are skipped, and a write waits [`SAVE_AFTER`] first, so a burst of
/// changes is written once.
#[derive(Clone)]
struct Saver {
    files: Arc<std::sync::Mutex<SnapshotFiles>>,
    latest: Arc<std::sync::Mutex<Option<Arc<Snapshot>>>>,
    busy: Arc<std::sync::atomic::AtomicBool>,
}

impl Saver {
    fn new(dir: PathBuf) -> Self {
        Saver {
            files: Arc::new(std::sync::Mutex::new(SnapshotFiles::new(dir))),
            latest: Default::default(),
            busy: Default::default(),
        }
    }

    fn save(&self, snap: Arc<Snapshot>) {
        use std::sync::atomic::Ordering;
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = Some(snap);
        if self.busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || loop {
            std::thread::sleep(SAVE_AFTER);
            let next = me.latest.lock().unwrap_or_else(|p| p.into_inner()).take();
            match next {
                Some(s) => me.write(&s),
                None => {
                    me.busy.store(false, Ordering::Release);
                    // A snapshot handed over after the take and before the
                    // store: this thread writes it, unless another started.
                    let more = me.latest.lock().unwrap_or_else(|p| p.into_inner()).is_some();
                    if !more || me.busy.swap(true, Ordering::AcqRel) {
                        return;
                    }
                }
            }
        });
    }
}

impl Saver {
    fn write(&self, snap: &Snapshot) {
        let started = std::time::Instant::now();
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        match files.save(snap) {
            Ok(stats) => tracing::debug!(
                revision = snap.revision,
                chunks_written = stats.chunks_written,
                chunks_removed = stats.chunks_removed,
                elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                "mirrored snapshot saved"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot save the mirrored snapshot"),
        }
    }
}

/// Runs forever: publishes every new state on `tx` and the connection state on `connected`.
pub async fn run(
    client: ControllerClient,
    state_dir: PathBuf,
    tx: watch::Sender<Option<Arc<Snapshot>>>,
    connected: watch::Sender<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut reported_down = false;
    let saver = Saver::new(state_dir);
    loop {
        let mut snap = match client.snapshot().await {
            Ok(s) => s,
            Err(e) => {
                if !reported_down {
                    tracing::warn!(controller = client.url(), error = %e, "controller unreachable; keeping the last known state");
                    reported_down = true;
                }
                connected.send_replace(false);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        if reported_down {
            tracing::info!(controller = client.url(), revision = snap.revision, "controller reachable again; resyncing");
            reported_down = false;
        }
        backoff = Duration::from_millis(100);
        connected.send_replace(true);
        let published = Arc::new(snap.clone());
        tx.send_replace(Some(published.clone()));
        saver.save(published);
        let stream = match client.watch(snap.revision).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "watch refused; retrying");
                continue;
            }
        };
        let mut stream = std::pin::pin!(stream);
        loop {
            let first = match tokio::time::timeout(SILENCE, stream.next()).await {
                Ok(Some(Ok(ev))) => ev,
                Ok(Some(Err(e))) => {
                    tracing::warn!(error = %e, "watch broke; resyncing");
                    break;
                }
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!("watch silent for {SILENCE:?}; resyncing");
                    break;
                }
            };
            // Apply everything already received before publishing once.
            let mut changed = false;
            let mut ev = Some(first);
            let mut resync = false;
            while let Some(e) = ev.take() {
                match &e {
                    WatchEvent::Error { code, message } => {
                        tracing::info!(code, message, "watch ended by the controller; resyncing");
                        resync = true;
                        break;
                    }
                    WatchEvent::Progress { .. } => snap.apply(&e),
                    _ => {
                        snap.apply(&e);
                        changed = true;
                    }
                }
                if let Some(Some(Ok(next))) = stream.next().now_or_never() {
                    ev = Some(next);
                }
            }
            if changed {
                tracing::debug!(revision = snap.revision, "intent changed");
                let published = Arc::new(snap.clone());
                tx.send_replace(Some(published.clone()));
                saver.save(published);
            }
            if resync {
                break;
            }
        }
        connected.send_replace(false);
    }
}
