//! Keeps this host's dockerd in agreement with Tessera: mirrors the
//! controller (snapshot, then watch) and, when the networks made through
//! Docker change, when kicked, and periodically, compares Docker's view with
//! Tessera's and executes [`crate::reconcile`]'s steps. The first round after
//! the plugin starts also removes leftovers (orphan endpoints and
//! reservations); later rounds do so every [`CLEANUP_EVERY`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tessera_api::mirror;
use tessera_model::watch::Snapshot;
use tokio::sync::watch;

use crate::driver::Plugin;
use crate::reconcile::{self, SyncInput, TesseraView};
use crate::spec;

/// A round runs at least this often.
const SYNC_EVERY: Duration = Duration::from_secs(15);
/// Orphans are looked for this often (and at start).
pub const CLEANUP_EVERY: Duration = Duration::from_secs(60);
/// Reservations younger than this are in flight.
pub const RESERVATION_GRACE: Duration = Duration::from_secs(60);

/// What, in a snapshot, calls for a round: the networks made through Docker.
fn docker_networks_key(snap: &Snapshot) -> BTreeMap<String, String> {
    snap.networks
        .iter()
        .filter(|n| spec::is_docker_network(n))
        .map(|n| (n.id.to_string(), format!("{}|{:?}", n.fq_name, n.subnets)))
        .collect()
}

/// Runs forever.
pub async fn run(plugin: Arc<Plugin>) {
    let state_dir = plugin.cfg.state_dir.clone();
    if let Err(e) = std::fs::create_dir_all(&state_dir) {
        tracing::warn!(dir = %state_dir.display(), error = %e, "cannot create the state directory");
    }
    let (tx, mut rx) = watch::channel::<Option<Arc<Snapshot>>>(None);
    let (connected_tx, connected) = watch::channel(mirror::MirrorState::default());
    // The plugin reads networks and its host's endpoints only: it names its
    // host, for credentials that are not the host's (an administrator's).
    let (_scope, own) = watch::channel(tessera_api::scope::Scope::own());
    let client = plugin.ctl.clone().with_scope_host(&plugin.cfg.host);
    tokio::spawn(mirror::run(client, state_dir, tx, connected_tx, own));

    let mut last_key = None;
    let mut last_cleanup: Option<Instant> = None;
    let mut docker_down = false;
    loop {
        let mut forced = false;
        let release_in = plugin.next_release_in();
        let wait = release_in.map_or(SYNC_EVERY, |d| d.min(SYNC_EVERY));
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = plugin.kick.notified() => forced = true,
            _ = tokio::time::sleep(wait) => forced = release_in.is_none_or(|d| d >= SYNC_EVERY),
        }
        plugin.release_expired().await;
        let Some(snap) = rx.borrow_and_update().clone() else { continue };
        let key = docker_networks_key(&snap);
        let cleanup = connected.borrow().connected && last_cleanup.is_none_or(|t| t.elapsed() >= CLEANUP_EVERY);
        if !forced && !cleanup && last_key.as_ref() == Some(&key) {
            continue;
        }
        let docker = match plugin.docker.tessera_networks(&plugin.cfg.driver).await {
            Ok(d) => {
                if docker_down {
                    tracing::info!("Docker reachable again");
                    docker_down = false;
                }
                d
            }
            Err(e) => {
                if !docker_down {
                    tracing::warn!(error = %e, "Docker unreachable; will retry");
                    docker_down = true;
                }
                continue;
            }
        };
        plugin.bind_all(&docker, &snap.networks).await;
        let mut view = TesseraView {
            networks: snap.networks.clone(),
            endpoints: snap.endpoints.iter().filter(|e| e.host == plugin.cfg.host).cloned().collect(),
            reservations: Vec::new(),
        };
        if cleanup {
            for d in &docker {
                let Some(n) = reconcile::tessera_network_of(d, &snap.networks) else { continue };
                match plugin.ctl.reservations(n.id).await {
                    Ok(r) => view.reservations.extend(r),
                    Err(e) => tracing::warn!(network = %n.fq_name, error = %e, "cannot list reservations"),
                }
            }
        }
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let input = SyncInput { host: &plugin.cfg.host, now_ms, grace_ms: RESERVATION_GRACE.as_millis() as u64, cleanup };
        let mut actions = reconcile::steps(&input, &docker, &view, &plugin.in_flight());
        if !connected.borrow().connected {
            // A stale view must not remove anything.
            actions.retain(|a| matches!(a, reconcile::SyncStep::Bind { .. } | reconcile::SyncStep::CreateDockerNetwork { .. }));
        }
        let work = actions.iter().filter(|a| !matches!(a, reconcile::SyncStep::Bind { .. })).count();
        if work > 0 {
            tracing::info!(actions = work, cleanup, "reconciling Docker with Tessera");
        }
        plugin.execute(actions, &snap.networks, &docker).await;
        if cleanup {
            plugin.remove_stale_staging(&view.endpoints);
            last_cleanup = Some(Instant::now());
        }
        last_key = Some(key);
    }
}
