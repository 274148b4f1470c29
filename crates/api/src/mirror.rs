//! Mirrors the controller's intent: a snapshot, then the watch stream after
//! it; reconnects with backoff, and keeps the last state while the
//! controller is away so the host keeps forwarding.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use tessera_model::watch::{Snapshot, WatchEvent};
use tokio::sync::watch;

use crate::controller::{ClientError, ControllerClient};
use crate::saved::SnapshotFiles;
use crate::scope::Scope;

/// The longest pause between two tries to reach the controller: a controller
/// that comes back is followed again within about a second.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
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

/// How the mirror stands with its controller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MirrorState {
    /// The mirror follows the controller's watch.
    pub connected: bool,
    /// Why the mirror keeps the state it has instead of the controller's
    /// (a store of another cluster, an intent emptied behind the host's back).
    pub holding: Option<String>,
    /// The controller the mirror follows (or followed last).
    pub controller: String,
    /// How many times the watch moved to another controller after its own
    /// broke.
    pub failovers: u64,
    /// How many snapshots the mirror took (one at start; another when a
    /// watch cannot continue from the last revision seen, or when the host
    /// needs other networks' endpoints).
    pub snapshots: u64,
    /// The scope of the snapshot the mirror follows.
    pub scope: Scope,
}

/// How often a holding mirror looks at the controller again.
const HOLD_RETRY: Duration = Duration::from_secs(5);

/// Why a fresh snapshot `next` must not replace the state `held` (the last
/// one published, or the one saved by an earlier run), if it must not:
///
/// - it is of another cluster (the controller was given a new store): the
///   host keeps the data plane of the fabric it belongs to;
/// - it holds no network at all where the held one had some (a store that
///   lost everything looks like that).
///
/// The operator who means it stops the agent, removes its state directory
/// and starts it again: a mirror with nothing held takes any snapshot.
pub fn hold_reason(held: Option<&Snapshot>, next: &Snapshot, controller: &str) -> Option<String> {
    let held = held?;
    match (held.cluster, next.cluster) {
        (Some(mine), Some(theirs)) if mine != theirs => {
            return Some(format!(
                "the controller at {controller} serves cluster {theirs}, this host belongs to cluster {mine}: \
                 holding the data plane as it is (to join the new cluster, stop the agent, remove its state directory and start it)"
            ))
        }
        (Some(mine), None) => {
            return Some(format!(
                "the controller at {controller} serves no cluster, this host belongs to cluster {mine}: holding the data plane as it is"
            ))
        }
        _ => {}
    }
    if next.networks.is_empty() && !held.networks.is_empty() {
        return Some(format!(
            "the controller at {controller} holds no network where this host knew {}: holding the data plane as it is \
             (if that is meant, stop the agent, remove its state directory and start it)",
            held.networks.len()
        ));
    }
    None
}

/// Runs forever: publishes every new state on `tx` and how the mirror
/// stands on `state`. A snapshot [`hold_reason`] refuses is not published;
/// the mirror says why and looks again every [`HOLD_RETRY`].
///
/// The mirror holds the endpoints of the latest `scope` the host asked for
/// (its own always): when the host needs endpoints the snapshot it
/// follows lacks, it takes a new snapshot of the wider scope at once; when
/// it needs fewer for [`NARROW_AFTER`], a new snapshot of the narrower one.
///
/// With several controllers, a watch that breaks (the connection ends, or
/// no event, not even progress, for [`SILENCE`]) continues on the next
/// controller from the last revision seen: a new snapshot is taken only
/// when that controller no longer holds the events after it (410
/// `compacted`) or refuses the revision (a store of another cluster, a
/// revision beyond its own).
pub async fn run(
    client: ControllerClient,
    state_dir: PathBuf,
    tx: watch::Sender<Option<Arc<Snapshot>>>,
    state: watch::Sender<MirrorState>,
    mut scope: watch::Receiver<Scope>,
) {
    // The mirror paces its own tries: one attempt per call, so a controller
    // that comes back is seen at the next try, not after a caller's retries.
    let client = client.with_attempts(1);
    let mut backoff = Duration::from_millis(100);
    let mut reported_down = false;
    let saver = Saver::new(state_dir);
    let set = |connected: bool, holding: Option<String>, controller: Option<String>| {
        state.send_modify(|s| {
            s.connected = connected;
            s.holding = holding;
            if let Some(c) = controller {
                s.controller = c;
            }
        })
    };
    loop {
        let wanted = scope.borrow_and_update().clone();
        let mut snap = match client.snapshot_of(&wanted).await {
            Ok(mut s) => {
                state.send_modify(|st| st.snapshots += 1);
                s.scope = match &wanted {
                    Scope::Everything => None,
                    Scope::Networks(ids) => Some(ids.clone()),
                };
                s
            }
            Err(e) => {
                if !reported_down {
                    tracing::warn!(controller = client.url(), error = %e, "controller unreachable; keeping the last known state");
                    reported_down = true;
                }
                let holding = state.borrow().holding.clone();
                set(false, holding, None);
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
        let held = tx.borrow().clone();
        if let Some(why) = hold_reason(held.as_deref(), &snap, client.url()) {
            if state.borrow().holding.as_deref() != Some(why.as_str()) {
                tracing::error!(reason = %why, "not applying the controller's intent");
            }
            set(false, Some(why), None);
            tokio::time::sleep(HOLD_RETRY).await;
            continue;
        }
        if state.borrow().holding.is_some() {
            tracing::info!(controller = client.url(), "the controller's intent is acceptable again; applying it");
        }
        set(true, None, Some(client.url().to_string()));
        state.send_modify(|s| s.scope = wanted.clone());
        let published = Arc::new(snap.clone());
        tx.send_replace(Some(published.clone()));
        saver.save(published);
        follow(&client, &mut snap, &wanted, &mut scope, &tx, &saver, &state).await;
        set(false, None, None);
    }
}

/// A watch that shows nothing for this long is dead: the controller sends
/// progress every [`PROGRESS`] when quiet.
const SILENCE: Duration = Duration::from_millis(1200);
/// How often the mirror asks a quiet controller for progress (a timer per
/// watcher at the controller, no store read): a dead stream is noticed
/// within [`SILENCE`], under the 2 s a host may go without its controller.
const PROGRESS: Duration = Duration::from_millis(300);

/// How long a host must need fewer networks' endpoints than its mirror
/// holds before the mirror takes a snapshot of the narrower scope.
pub const NARROW_AFTER: Duration = Duration::from_secs(10);

/// A scope the host asks for that is not the one the mirror holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rescope {
    /// It needs endpoints the mirror lacks: a new snapshot at once.
    Wider,
    /// It needs fewer: a new snapshot after [`NARROW_AFTER`].
    Narrower,
}

/// What a change of the scope the host asks for calls for.
fn rescope(held: &Scope, wanted: &Scope) -> Option<Rescope> {
    if !held.covers(wanted) {
        Some(Rescope::Wider)
    } else if held != wanted {
        Some(Rescope::Narrower)
    } else {
        None
    }
}

/// Follows the watch after `snap` (of scope `held`) on whichever
/// controller answers, moving to the next when one breaks, until a new
/// snapshot is needed (or the host needs another scope).
async fn follow(
    client: &ControllerClient,
    snap: &mut Snapshot,
    held: &Scope,
    scope: &mut watch::Receiver<Scope>,
    tx: &watch::Sender<Option<Arc<Snapshot>>>,
    saver: &Saver,
    state: &watch::Sender<MirrorState>,
) {
    let mut broke_on: Option<String> = None;
    let mut backoff = Duration::from_millis(100);
    let mut reported_down = false;
    let mut scope_open = true;
    let mut narrow_at: Option<tokio::time::Instant> = None;
    loop {
        let (index, stream) = match client.watch_from(snap.revision, snap, held, PROGRESS).await {
            Ok(s) => s,
            Err(ClientError::Refused { body, .. }) => {
                tracing::info!(reason = %body.error.message, revision = snap.revision, "watch refused; taking a new snapshot");
                return;
            }
            Err(e) => {
                if !reported_down {
                    tracing::warn!(error = %e, revision = snap.revision, "no controller takes the watch; keeping the last known state");
                    reported_down = true;
                }
                state.send_modify(|s| s.connected = false);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        reported_down = false;
        let now_on = client.urls()[index].clone();
        if let Some(from) = broke_on.take() {
            let moved = from != now_on;
            if moved {
                tracing::info!(from = %from, to = %now_on, revision = snap.revision, "watch failed over to another controller");
            } else {
                tracing::info!(controller = %now_on, revision = snap.revision, "watch continues");
            }
            state.send_modify(|s| s.failovers += u64::from(moved));
        }
        state.send_modify(|s| {
            s.connected = true;
            s.controller = now_on.clone();
        });
        let mut stream = std::pin::pin!(stream);
        let why = loop {
            let next = tokio::select! {
                next = tokio::time::timeout(SILENCE, stream.next()) => next,
                changed = scope.changed(), if scope_open => {
                    if changed.is_err() {
                        scope_open = false;
                        continue;
                    }
                    let wanted = scope.borrow_and_update().clone();
                    match rescope(held, &wanted) {
                        Some(Rescope::Wider) => {
                            tracing::debug!(revision = snap.revision, "the host needs more endpoints; taking a new snapshot");
                            return;
                        }
                        Some(Rescope::Narrower) => {
                            narrow_at = narrow_at.or(Some(tokio::time::Instant::now() + NARROW_AFTER))
                        }
                        None => narrow_at = None,
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(narrow_at.unwrap_or_else(tokio::time::Instant::now)), if narrow_at.is_some() => {
                    tracing::debug!(revision = snap.revision, "the host needs fewer endpoints; taking a new snapshot");
                    return;
                }
            };
            let first = match next {
                Ok(Some(Ok(ev))) => ev,
                Ok(Some(Err(e))) => break format!("broke: {e}"),
                Ok(None) => break "ended".to_string(),
                Err(_) => break format!("silent for {SILENCE:?}"),
            };
            // Apply everything already received before publishing once.
            let mut changed = false;
            let mut ev = Some(first);
            while let Some(e) = ev.take() {
                match &e {
                    WatchEvent::Error { code, message } => {
                        tracing::info!(code, message, "watch ended by the controller; taking a new snapshot");
                        return;
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
                // Handed over first, copied for the next events after: the
                // copy (cheap: the endpoints and rule chunks are shared) is
                // not in the path of the change.
                let published = Arc::new(std::mem::take(snap));
                tx.send_replace(Some(published.clone()));
                *snap = (*published).clone();
                saver.save(published);
            }
        };
        tracing::warn!(controller = %now_on, revision = snap.revision, "watch {why}; continuing on the next controller");
        client.move_on(index);
        broke_on = Some(now_on);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_model::Network;

    fn snap(cluster: Option<u128>, networks: usize) -> Snapshot {
        let net: Network = serde_json::from_value(serde_json::json!({
            "id": uuid::Uuid::from_u128(1), "fq_name": "default-domain:admin:n", "vni": 4096,
            "subnets": [], "import_targets": [], "export_targets": [], "shared": false, "external": false,
            "policies": [], "labels": {}
        }))
        .unwrap();
        Snapshot { cluster: cluster.map(uuid::Uuid::from_u128), networks: vec![net; networks], ..Default::default() }
    }

    #[test]
    fn a_wider_scope_is_taken_at_once_and_a_narrower_one_later() {
        let nets = |ids: &[u128]| Scope::Networks(ids.iter().map(|i| uuid::Uuid::from_u128(*i)).collect());
        assert_eq!(rescope(&nets(&[1]), &nets(&[1, 2])), Some(Rescope::Wider));
        assert_eq!(rescope(&nets(&[1]), &Scope::Everything), Some(Rescope::Wider));
        assert_eq!(rescope(&nets(&[1, 2]), &nets(&[1])), Some(Rescope::Narrower));
        assert_eq!(rescope(&Scope::Everything, &nets(&[1])), Some(Rescope::Narrower));
        assert_eq!(rescope(&nets(&[1]), &nets(&[1])), None);
    }

    #[test]
    fn a_mirror_with_nothing_held_takes_any_snapshot() {
        assert_eq!(hold_reason(None, &snap(Some(2), 0), "c"), None);
    }

    #[test]
    fn a_snapshot_of_another_cluster_is_held_off() {
        let why = hold_reason(Some(&snap(Some(1), 3)), &snap(Some(2), 3), "http://c").unwrap();
        assert!(why.contains("cluster") && why.contains("holding"), "{why}");
        assert!(hold_reason(Some(&snap(Some(1), 3)), &snap(None, 3), "c").is_some());
    }

    #[test]
    fn an_emptied_intent_is_held_off_and_a_changed_one_taken() {
        assert!(hold_reason(Some(&snap(Some(1), 3)), &snap(Some(1), 0), "c").unwrap().contains("no network"));
        assert_eq!(hold_reason(Some(&snap(Some(1), 3)), &snap(Some(1), 1), "c"), None);
        assert_eq!(
            hold_reason(Some(&snap(None, 3)), &snap(Some(1), 3), "c"),
            None,
            "an earlier version's state adopts a cluster"
        );
        assert_eq!(hold_reason(Some(&snap(Some(1), 0)), &snap(Some(1), 0), "c"), None);
    }
}
