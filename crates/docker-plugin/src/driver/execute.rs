//! What the authz hook and the reconciliation ask of the plugin: the pending
//! `docker network create`s, and the execution of [`crate::reconcile`]'s
//! steps.

use super::*;

impl Plugin {
    // --------------------------------------------------------------- authz

    /// Takes the authz hook's record of the `docker network create` that
    /// Docker is carrying out: same pools, same options.
    pub(crate) fn take_pending_create(
        &self,
        pools: &BTreeSet<IpNet>,
        options: &BTreeMap<String, String>,
    ) -> Option<PendingCreate> {
        let mut st = self.state();
        st.creates.retain(|p| p.at.elapsed() < PENDING_CREATE_TTL);
        let i = st.creates.iter().position(|p| p.pools == *pools && p.options == *options)?;
        Some(st.creates.remove(i))
    }

    /// Records a `docker network create` the authz hook saw.
    pub(crate) fn push_pending_create(&self, create: &EngineNetworkCreate, pools: BTreeSet<IpNet>) {
        let mut st = self.state();
        st.creates.retain(|p| p.at.elapsed() < PENDING_CREATE_TTL);
        st.creates.push(PendingCreate {
            name: create.name.clone(),
            labels: create.labels.clone(),
            options: create.options.clone(),
            pools,
            at: Instant::now(),
        });
    }

    /// The Tessera network a Docker network (name or ID) of this host is bound to, if any.
    pub(crate) async fn bound_network(&self, reference: &str) -> Result<Option<Network>> {
        let Some(d) = self.docker.network(reference).await? else { return Ok(None) };
        let bind = self.state().networks.get(&d.id).map(|ns| ns.tx.borrow().clone());
        match bind {
            Some(Bind::Ready(n)) => Ok(Some(*n)),
            Some(_) => Ok(None),
            None => match self.network_of(&d.id).await {
                Ok(n) => Ok(Some(n)),
                Err(DriverError::NotFound(_)) | Err(DriverError::Invalid(_)) => Ok(None),
                Err(e) => Err(e),
            },
        }
    }

    // ----------------------------------------------------- reconciliation

    /// Removes staging namespaces that no endpoint of this host uses (left by
    /// a plugin that was killed between `Join` and `Leave`).
    pub(crate) fn remove_stale_staging(&self, endpoints: &[Endpoint]) {
        let dir = &self.cfg.staging_dir;
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        let busy: BTreeSet<PathBuf> = self.state().endpoints.values().filter_map(|e| e.staging.clone()).collect();
        for entry in entries.flatten() {
            let path = entry.path();
            let used = endpoints.iter().any(|e| e.owner.netns.as_deref() == Some(path.to_string_lossy().as_ref()));
            if used || busy.contains(&path) {
                continue;
            }
            match netns::delete(&path) {
                Ok(()) => tracing::info!(path = %path.display(), "removed a stale staging namespace"),
                Err(e) => tracing::warn!(error = %e, "cannot remove a stale staging namespace"),
            }
        }
    }

    /// Executes one reconciliation plan; every action is tried, failures
    /// are logged (the next round retries them).
    pub(crate) async fn execute(&self, actions: Vec<reconcile::SyncStep>, networks: &[Network], docker: &[DockerNetwork]) {
        let mut fresh: Option<Vec<Network>> = None;
        for a in actions {
            let result: Result<()> = match &a {
                reconcile::SyncStep::Bind { docker_id, network } => {
                    if let (Some(n), Some(d)) =
                        (networks.iter().find(|n| n.id == *network), docker.iter().find(|d| d.id == *docker_id))
                    {
                        if !self.is_bound_to(docker_id, n.id) {
                            self.bind(docker_id, n.clone(), &d.subnets);
                        }
                    }
                    Ok(())
                }
                reconcile::SyncStep::CreateDockerNetwork { request, .. } => {
                    tracing::info!(network = %request.name, "creating the network in this host's Docker");
                    // Of the driver this dockerd knows Tessera by.
                    let mut request = request.clone();
                    request.driver = self.cfg.driver.clone();
                    if let Some(ipam) = &mut request.ipam {
                        ipam.driver = self.cfg.driver.clone();
                    }
                    self.docker.create_network(&request).await.map(|_| ()).map_err(Into::into)
                }
                reconcile::SyncStep::DeleteDockerNetwork { docker_id, name } => {
                    // The snapshot may lag behind the controller: ask it before removing anything.
                    let fresh = match &fresh {
                        Some(f) => f,
                        None => fresh.insert(self.ctl.networks().await.unwrap_or_else(|_| networks.to_vec())),
                    };
                    let d = docker.iter().find(|d| d.id == *docker_id);
                    match d.and_then(|d| reconcile::tessera_network_of(d, fresh).map(|n| (d, n))) {
                        Some((d, n)) => {
                            self.bind(docker_id, n.clone(), &d.subnets);
                            Ok(())
                        }
                        None => {
                            tracing::info!(network = %name, "removing a network whose Tessera network is gone from this host's Docker");
                            let r = self.docker.delete_network(docker_id).await;
                            if r.is_ok() {
                                self.forget_network(docker_id);
                            }
                            r.map_err(Into::into)
                        }
                    }
                }
                reconcile::SyncStep::DeleteEndpoint { id, name } => {
                    tracing::info!(endpoint = %name, "deleting an endpoint whose Docker endpoint is gone");
                    self.ctl.delete_endpoint(*id).await.map_err(Into::into)
                }
                reconcile::SyncStep::ReleaseReservation { network, address, owner } => {
                    tracing::info!(%address, owner = %owner, "releasing a reservation no Docker endpoint holds");
                    self.ctl.release(*network, *address, Some(owner)).await.map_err(Into::into)
                }
            };
            if let Err(e) = result {
                tracing::warn!(action = ?a, error = %e, "reconciliation step failed; will retry");
            }
        }
    }
}
