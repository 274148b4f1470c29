//! Service instances Tessera runs itself (`tessera service add … --image
//! IMAGE --host H --instances N`): the agent of each host named by a
//! service's `run` starts the instances placed on it as containers of the
//! host's Docker (no network of Docker's, `NET_ADMIN`, restarted unless
//! stopped, labelled with the service and the instance), attaches each
//! container's interfaces as the instance's ports, and removes the
//! containers it labelled that no service asks for any more. A restarted
//! container is followed to its new namespace ([`crate::follow`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use tessera_api::agent::{AttachRequest, DetachRequest};
use tessera_api::uds;
use tessera_model::watch::Snapshot;
use tessera_model::{InterfaceRole, Service, ServicePort};

use crate::agent::Agent;

/// How often the containers are compared with what services ask.
const EVERY: Duration = Duration::from_secs(2);
/// The label that marks a container Tessera runs, with its service's id.
const SERVICE_LABEL: &str = "tessera.service";
const INSTANCE_LABEL: &str = "tessera.instance";

/// Runs until the agent stops; does nothing on a host without Docker until a
/// service asks it to run something (then it says why it cannot).
pub async fn run(agent: Arc<Agent>, socket: PathBuf) {
    let mut rx = agent.snapshot.clone();
    let mut warned = false;
    loop {
        let snap = rx.borrow_and_update().clone();
        if let Some(snap) = snap {
            let wanted = wanted_here(&snap, &agent.me.name);
            if socket.exists() {
                warned = false;
                if let Err(e) = converge(&agent, &snap, &socket, &wanted).await {
                    tracing::warn!(error = %e, "cannot run the service instances of this host");
                }
            } else if !wanted.is_empty() && !warned {
                tracing::warn!(socket = %socket.display(), "services ask this host to run instances, but its Docker is not there");
                warned = true;
            }
        }
        tokio::select! {
            _ = rx.changed() => {}
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}

/// The instances placed on `me`: (service, instance name).
fn wanted_here<'a>(snap: &'a Snapshot, me: &str) -> Vec<(&'a Service, String)> {
    snap.services
        .iter()
        .filter_map(|s| s.run.as_ref().map(|r| (s, r)))
        .flat_map(|(s, r)| r.placement(s.fq_name.name()).into_iter().filter(|(_, h)| h == me).map(move |(i, _)| (s, i)))
        .collect()
}

/// The container of an instance: `tessera_<domain>_<project>_<instance>`.
fn container_name(s: &Service, instance: &str) -> String {
    format!("tessera_{}_{instance}", s.fq_name.project().to_string().replace(':', "_"))
}

async fn docker(
    socket: &Path,
    method: Method,
    uri: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let body = body.map(|b| serde_json::to_vec(&b)).transpose()?;
    let (status, bytes) = uds::request(socket, method, uri, body).await?;
    Ok((status.as_u16(), serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)))
}

async fn converge(agent: &Agent, snap: &Snapshot, socket: &Path, wanted: &[(&Service, String)]) -> anyhow::Result<()> {
    for (service, instance) in wanted {
        if let Err(e) = ensure(agent, snap, socket, service, instance).await {
            tracing::warn!(service = %service.fq_name, instance, error = %e, "cannot run a service instance");
        }
    }
    // Containers Tessera labelled that nothing asks for any more.
    let filters = "%7B%22label%22%3A%5B%22tessera.service%22%5D%7D";
    let (status, list) = docker(socket, Method::GET, &format!("/containers/json?all=1&filters={filters}"), None).await?;
    if status != 200 {
        anyhow::bail!("Docker answered {status} to the list of containers: {list}");
    }
    for c in list.as_array().into_iter().flatten() {
        let labels = &c["Labels"];
        let (Some(sid), Some(inst), Some(id)) =
            (labels[SERVICE_LABEL].as_str(), labels[INSTANCE_LABEL].as_str(), c["Id"].as_str())
        else {
            continue;
        };
        if wanted.iter().any(|(s, i)| s.id.to_string() == sid && i == inst) {
            continue;
        }
        let detached = agent.detach(DetachRequest { container_id: Some(id.to_string()), ..Default::default() }).await;
        if let Err(e) = detached {
            tracing::warn!(instance = inst, error = %e.body.error.message, "cannot detach a service instance no longer asked for");
            continue;
        }
        let (status, body) = docker(socket, Method::DELETE, &format!("/containers/{id}?force=true"), None).await?;
        if status == 204 || status == 404 {
            tracing::info!(instance = inst, "service instance removed");
        } else {
            tracing::warn!(instance = inst, status, %body, "cannot remove a service instance's container");
        }
    }
    Ok(())
}

/// Makes the instance's container run and attaches its interfaces.
async fn ensure(agent: &Agent, snap: &Snapshot, socket: &Path, service: &Service, instance: &str) -> anyhow::Result<()> {
    let Some(run) = &service.run else { return Ok(()) };
    let name = container_name(service, instance);
    let (status, mut info) = docker(socket, Method::GET, &format!("/containers/{name}/json"), None).await?;
    if status == 404 {
        let spec = serde_json::json!({
            "Image": run.image,
            "Env": run.env,
            "Labels": { SERVICE_LABEL: service.id.to_string(), INSTANCE_LABEL: instance },
            "HostConfig": { "NetworkMode": "none", "CapAdd": ["NET_ADMIN"], "RestartPolicy": { "Name": "unless-stopped" } },
        });
        let (status, body) = docker(socket, Method::POST, &format!("/containers/create?name={name}"), Some(spec)).await?;
        if status != 201 {
            anyhow::bail!("Docker cannot create {name} from {}: {}", run.image, body["message"].as_str().unwrap_or_default());
        }
        tracing::info!(service = %service.fq_name, instance, image = %run.image, "service instance created");
        (_, info) = docker(socket, Method::GET, &format!("/containers/{name}/json"), None).await?;
    }
    if info["State"]["Running"] != true {
        let (status, body) = docker(socket, Method::POST, &format!("/containers/{name}/start"), None).await?;
        if !(status == 204 || status == 304) {
            anyhow::bail!("Docker cannot start {name}: {}", body["message"].as_str().unwrap_or_default());
        }
        (_, info) = docker(socket, Method::GET, &format!("/containers/{name}/json"), None).await?;
    }
    let (Some(pid), Some(id)) = (info["State"]["Pid"].as_u64().filter(|p| *p > 1), info["Id"].as_str()) else {
        anyhow::bail!("{name} is not running");
    };
    for role in [InterfaceRole::Left, InterfaceRole::Right, InterfaceRole::Management] {
        let Some(network) = service.network_of(role) else { continue };
        let attached = snap.endpoints.iter().any(|e| {
            e.host == agent.me.name
                && e.owner
                    .service
                    .as_ref()
                    .is_some_and(|sp| sp.service == service.id && sp.instance == instance && sp.role == role)
        });
        if attached {
            continue;
        }
        let req = AttachRequest {
            network: network.to_string(),
            netns: format!("/proc/{pid}/ns/net"),
            container_id: Some(id.to_string()),
            name: Some(format!("{instance}-{}", role.ifname())),
            ifname: Some(role.ifname().to_string()),
            own_table: role.own_table(),
            service: Some(ServicePort { service: service.id, instance: instance.to_string(), role }),
            ..Default::default()
        };
        agent.attach(req).await.map_err(|e| anyhow::anyhow!("attach of its {role} interface: {}", e.body.error.message))?;
    }
    Ok(())
}
