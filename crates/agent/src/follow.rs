//! Containers attached through Docker (`tessera attach --docker`, `tessera
//! service add --docker`) keep their interfaces across restarts: a
//! restarted container has a new network namespace, so when a local
//! endpoint's namespace is gone and the endpoint names its container (and
//! was not made by Docker's own network driver, which re-joins by itself),
//! the agent asks the host's Docker where the container is now and moves
//! the endpoint there at the controller (`PUT /v1/endpoints/{id}/netns`);
//! the change comes back through the watch, and the next reconcile builds
//! the interfaces in the new namespace.

use std::path::PathBuf;

use tessera_api::{uds, ControllerClient};
use tessera_model::watch::Snapshot;
use tessera_model::EndpointNetns;
use uuid::Uuid;

/// The host's Docker.
pub struct Follower {
    /// The Docker Engine's socket; `None`: not followed.
    socket: Option<PathBuf>,
}

impl Follower {
    pub fn new(socket: Option<PathBuf>) -> Self {
        Follower { socket }
    }

    /// For each endpoint of `missing` (local endpoints whose namespace is
    /// gone) that names its container, asks Docker for the container's
    /// namespace now and moves the endpoint there (in the background).
    pub fn follow(&self, snap: &Snapshot, missing: &[Uuid], client: &ControllerClient) {
        let Some(socket) = self.socket.clone() else { return };
        for id in missing {
            let Some(ep) = snap.endpoints.iter().find(|e| e.id == *id) else { continue };
            let Some(container) = ep.owner.container_id.clone() else { continue };
            if ep.owner.docker_endpoint_id.is_some() {
                continue;
            }
            let (socket, client, id, old) = (socket.clone(), client.clone(), *id, ep.owner.netns.clone());
            tokio::spawn(async move {
                let netns = match where_is(&socket, &container).await {
                    Ok(Some(ns)) => ns,
                    Ok(None) => return,
                    Err(e) => {
                        tracing::debug!(container, error = %e, "cannot ask Docker where the container is");
                        return;
                    }
                };
                // Moving again to the same namespace changes nothing.
                if Some(&netns) == old.as_ref() {
                    return;
                }
                match client
                    .put::<serde_json::Value>(&format!("/v1/endpoints/{id}/netns"), &EndpointNetns { netns: netns.clone() })
                    .await
                {
                    Ok(_) => tracing::info!(endpoint = %id, container, netns, "endpoint follows its restarted container"),
                    Err(e) => tracing::warn!(endpoint = %id, error = %e, "cannot move the endpoint to its container's namespace"),
                }
            });
        }
    }
}

/// The namespace of `container` when it runs: `/proc/PID/ns/net`.
async fn where_is(socket: &std::path::Path, container: &str) -> anyhow::Result<Option<String>> {
    let (status, body) = uds::request(socket, hyper::Method::GET, &format!("/containers/{container}/json"), None).await?;
    if !status.is_success() {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    let pid = v["State"]["Pid"].as_u64().unwrap_or(0);
    Ok((v["State"]["Running"] == true && pid > 1).then(|| format!("/proc/{pid}/ns/net")))
}
