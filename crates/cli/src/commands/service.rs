//! `tessera service-template add|list|show|delete` and `tessera service
//! add|list|show|delete`: network functions between networks (dockwall).
//! `service add` with `--docker` or `--netns` also attaches an instance on
//! this host, through its agent: one interface per role of the template
//! (`left`, `right`, `mgmt`), each with a routing table of its own.

use std::path::PathBuf;

use tessera_api::agent::{AttachRequest, DEFAULT_SOCKET};
use tessera_api::controller::seg;
use tessera_api::AgentClient;
use tessera_model::{
    FailMode, Network, Probe, Service, ServiceCreate, ServicePort, ServiceTemplate, ServiceTemplateCreate, ServiceView,
};

use super::agent::{resolve, Target};
use super::{join, Ctx};
use crate::table::Table;

#[derive(clap::Subcommand)]
pub enum TemplateCmd {
    /// Make a service template: its interfaces in order and its mode.
    Add {
        name: String,
        /// An interface role, in order: left, right, mgmt (left and right are required).
        #[arg(long = "interface", required = true)]
        interfaces: Vec<String>,
        /// in-network (routed, addresses kept; the default) or transparent (refused: networks are routed).
        #[arg(long, value_parser = ["in-network", "transparent"])]
        mode: Option<String>,
        #[arg(long)]
        project: Option<String>,
    },
    List,
    Show {
        template: String,
    },
    /// Delete templates no service is made from; deleting a missing one succeeds.
    Delete {
        #[arg(required = true)]
        templates: Vec<String>,
    },
}

#[derive(clap::Args)]
#[group(required = false, multiple = false)]
pub struct InstanceSource {
    /// A network namespace: a path, or a name under /run/netns.
    #[arg(long)]
    netns: Option<String>,
    /// The network namespace of a running process.
    #[arg(long)]
    pid: Option<u32>,
    /// A running Docker container (name or id).
    #[arg(long)]
    docker: Option<String>,
}

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Make a service between a left and a right network (and, with
    /// --docker, --netns or --pid, attach an instance of it on this host);
    /// with --service, attach NAME as another instance of that service.
    Add(Box<AddArgs>),
    /// Services with their instances, hosts and health.
    List,
    /// A service: its networks, and each instance's host, health, interfaces and traffic.
    Show { service: String },
    /// Delete services without instances (`tessera detach` removes an
    /// instance) that no rule applies; deleting a missing one succeeds.
    Delete {
        #[arg(required = true)]
        services: Vec<String>,
    },
}

/// `tessera service add`.
#[derive(clap::Args)]
pub struct AddArgs {
    /// The service's name; with --service, the instance's.
    name: String,
    /// Add an instance to this existing service instead of making one.
    #[arg(long, conflicts_with_all = ["template", "left", "right", "mgmt", "fail", "probe"])]
    service: Option<String>,
    /// The service template (name or UUID).
    #[arg(long, required_unless_present = "service")]
    template: Option<String>,
    /// The network of the instances' left interfaces.
    #[arg(long, required_unless_present = "service")]
    left: Option<String>,
    /// The network of the instances' right interfaces.
    #[arg(long, required_unless_present = "service")]
    right: Option<String>,
    /// The network of their management interfaces (templates with mgmt).
    #[arg(long)]
    mgmt: Option<String>,
    /// closed (traffic stops) or open (traffic passes directly) when no instance is healthy.
    #[arg(long, value_parser = ["closed", "open"])]
    fail: Option<String>,
    /// Health probe beyond link state: ping, or tcp:PORT.
    #[arg(long)]
    probe: Option<Probe>,
    /// The project, DOMAIN:PROJECT.
    #[arg(long)]
    project: Option<String>,
    #[command(flatten)]
    source: InstanceSource,
    /// Let the hosts' agents run the instances: a Docker image present on
    /// the hosts given with --host.
    #[arg(long, requires = "hosts", conflicts_with_all = ["netns", "pid", "docker", "service"])]
    image: Option<String>,
    /// A host to run instances of --image on (repeat: instances go to them in turn).
    #[arg(long = "host", requires = "image")]
    hosts: Vec<String>,
    /// How many instances of --image to run.
    #[arg(long, default_value_t = 1, requires = "image")]
    instances: u32,
    /// KEY=VALUE for the environment of --image's containers (repeatable).
    #[arg(long = "env", requires = "image")]
    env: Vec<String>,
    /// The instance's name (the container's or namespace's by default).
    #[arg(long)]
    instance: Option<String>,
    /// The agent's socket.
    #[arg(long, env = "TESSERA_AGENT_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
}

pub async fn run_templates(ctx: &Ctx, cmd: TemplateCmd) -> anyhow::Result<()> {
    let c = &ctx.client;
    match cmd {
        TemplateCmd::Add { name, interfaces, mode, project } => {
            let mode = mode.map(|m| serde_json::from_value(serde_json::Value::String(m))).transpose()?;
            let t: ServiceTemplate =
                c.post("/v1/service-templates", &ServiceTemplateCreate { name, project, mode, interfaces }).await?;
            ctx.print(&t, || format!("service template {} ({})\n", t.fq_name, t.id))
        }
        TemplateCmd::List => {
            let all: Vec<ServiceTemplate> = c.get("/v1/service-templates").await?;
            ctx.print(&all, || {
                let mut t = Table::new(&["NAME", "MODE", "INTERFACES", "ID"]);
                for s in &all {
                    t.row(vec![s.fq_name.to_string(), mode_name(s), roles(s), s.id.to_string()]);
                }
                t.render()
            })
        }
        TemplateCmd::Show { template } => {
            let t: ServiceTemplate = c.get(&format!("/v1/service-templates/{}", seg(&template))).await?;
            ctx.print(&t, || format!("name: {}\nid: {}\nmode: {}\ninterfaces: {}\n", t.fq_name, t.id, mode_name(&t), roles(&t)))
        }
        TemplateCmd::Delete { templates } => {
            for t in templates {
                c.delete(&format!("/v1/service-templates/{}", seg(&t))).await?;
                if !ctx.json {
                    println!("service template {t} deleted");
                }
            }
            Ok(())
        }
    }
}

fn mode_name(t: &ServiceTemplate) -> String {
    serde_json::to_value(t.mode).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

fn roles(t: &ServiceTemplate) -> String {
    t.interfaces.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

pub async fn run(ctx: &Ctx, cmd: Cmd) -> anyhow::Result<()> {
    let c = &ctx.client;
    match cmd {
        Cmd::Add(a) => {
            let AddArgs {
                name,
                service,
                template,
                left,
                right,
                mgmt,
                fail,
                probe,
                project,
                source,
                instance,
                socket,
                image,
                hosts,
                instances,
                env,
            } = *a;
            let run = image.map(|image| tessera_model::ServiceRun { image, hosts, instances, env });
            let adding = service.is_some();
            let (service, instance_name) = match service {
                Some(existing) => (c.get::<ServiceView>(&format!("/v1/services/{}", seg(&existing))).await?.service, Some(name)),
                None => {
                    let req = ServiceCreate {
                        name,
                        project,
                        template: template.unwrap_or_default(),
                        left: left.unwrap_or_default(),
                        right: right.unwrap_or_default(),
                        management: mgmt,
                        fail: fail.map(|f| if f == "open" { FailMode::Open } else { FailMode::Closed }),
                        probe,
                        run,
                    };
                    (c.post::<Service>("/v1/services", &req).await?, instance)
                }
            };
            let target = Target { netns: source.netns, pid: source.pid, docker: source.docker };
            if target.netns.is_none() && target.pid.is_none() && target.docker.is_none() {
                if adding {
                    anyhow::bail!("an instance needs --docker, --netns or --pid");
                }
                return ctx.print(&service, || format!("service {} ({})\n", service.fq_name, service.id));
            }
            let view = attach_instance(&service, &target, instance_name, socket).await?;
            ctx.print(&view, || {
                let mut out = format!("service {} ({})\n", view.service.fq_name, view.service.id);
                for i in &view.instances {
                    for p in &i.ports {
                        out.push_str(&format!("instance {} {}: {}\n", i.name, p.role, join(&p.ips)));
                    }
                }
                out
            })
        }
        Cmd::List => {
            let all: Vec<ServiceView> = c.get("/v1/services").await?;
            let nets: Vec<Network> = c.get("/v1/networks").await?;
            let name = |id: uuid::Uuid| {
                nets.iter().find(|n| n.id == id).map(|n| n.fq_name.name().to_string()).unwrap_or_else(|| id.to_string())
            };
            ctx.print(&all, || {
                let mut t = Table::new(&["NAME", "LEFT", "RIGHT", "FAIL", "PROBE", "INSTANCES", "HEALTHY"]);
                for v in &all {
                    let s = &v.service;
                    t.row(vec![
                        s.fq_name.to_string(),
                        name(s.left),
                        name(s.right),
                        format!("{:?}", s.fail).to_lowercase(),
                        s.probe.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                        v.instances.len().to_string(),
                        v.instances.iter().filter(|i| i.healthy).count().to_string(),
                    ]);
                }
                t.render()
            })
        }
        Cmd::Show { service } => {
            let v: ServiceView = c.get(&format!("/v1/services/{}", seg(&service))).await?;
            let nets: Vec<Network> = c.get("/v1/networks").await?;
            let name = |id: uuid::Uuid| {
                nets.iter().find(|n| n.id == id).map(|n| n.fq_name.to_string()).unwrap_or_else(|| id.to_string())
            };
            ctx.print(&v, || {
                let s = &v.service;
                let mut out = format!(
                    "name: {}\nid: {}\nleft: {}\nright: {}\nfail: {}\nprobe: {}\n",
                    s.fq_name,
                    s.id,
                    name(s.left),
                    name(s.right),
                    format!("{:?}", s.fail).to_lowercase(),
                    s.probe.map(|p| p.to_string()).unwrap_or_else(|| "links only".into())
                );
                let mut t = Table::new(&[
                    "INSTANCE",
                    "HOST",
                    "HEALTH",
                    "IFACE",
                    "ADDRESSES",
                    "PKTS IN",
                    "BYTES IN",
                    "PKTS OUT",
                    "BYTES OUT",
                ]);
                for i in &v.instances {
                    let health = if i.healthy {
                        "healthy".to_string()
                    } else {
                        format!("unhealthy: {}", i.message.as_deref().unwrap_or("-"))
                    };
                    for p in &i.ports {
                        t.row(vec![
                            i.name.clone(),
                            i.host.clone(),
                            health.clone(),
                            p.role.to_string(),
                            join(&p.ips),
                            p.traffic.packets_in.to_string(),
                            p.traffic.bytes_in.to_string(),
                            p.traffic.packets_out.to_string(),
                            p.traffic.bytes_out.to_string(),
                        ]);
                    }
                }
                out.push_str(&t.render());
                out
            })
        }
        Cmd::Delete { services } => {
            for s in services {
                c.delete(&format!("/v1/services/{}", seg(&s))).await?;
                if !ctx.json {
                    println!("service {s} deleted");
                }
            }
            Ok(())
        }
    }
}

/// Attaches an instance of `service` on this host: one interface per role
/// of its networks, each with its own table. An interface that cannot be
/// attached undoes the ones before it.
async fn attach_instance(
    service: &Service,
    target: &Target,
    name: Option<String>,
    socket: PathBuf,
) -> anyhow::Result<ServiceView> {
    let (netns, container_id) = resolve(target).await?;
    let instance = match name {
        Some(n) => n,
        None => match (&target.docker, &target.netns, target.pid) {
            (Some(d), _, _) => d.clone(),
            (_, Some(ns), _) => ns.rsplit('/').next().unwrap_or(ns).to_string(),
            (_, _, Some(pid)) => format!("pid{pid}"),
            _ => unreachable!("a target is given"),
        },
    };
    let agent = AgentClient::new(socket);
    let roles = [
        (tessera_model::InterfaceRole::Left, Some(service.left)),
        (tessera_model::InterfaceRole::Right, Some(service.right)),
        (tessera_model::InterfaceRole::Management, service.management),
    ];
    let mut done = Vec::new();
    for (role, network) in roles {
        let Some(network) = network else { continue };
        let req = AttachRequest {
            network: network.to_string(),
            netns: netns.clone(),
            container_id: container_id.clone(),
            name: Some(format!("{}-{}-{}", service.fq_name.name(), instance, role.ifname())),
            ifname: Some(role.ifname().to_string()),
            own_table: role.own_table(),
            service: Some(ServicePort { service: service.id, instance: instance.clone(), role }),
            ..Default::default()
        };
        match agent.attach(&req).await {
            Ok(ep) => done.push(ep),
            Err(e) => {
                for ep in done {
                    let undo = tessera_api::agent::DetachRequest {
                        netns: Some(netns.clone()),
                        container_id: None,
                        network: Some(ep.network.to_string()),
                        ifname: ep.owner.ifname.clone(),
                    };
                    let _ = agent.detach(&undo).await;
                }
                return Err(anyhow::anyhow!("cannot attach the {role} interface of instance {instance}: {e}"));
            }
        }
    }
    Ok(ServiceView {
        service: service.clone(),
        instances: vec![tessera_model::InstanceView {
            name: instance,
            host: String::new(),
            healthy: false,
            message: Some("just attached: its host checks it within a second".into()),
            ports: done
                .iter()
                .map(|e| tessera_model::InstancePort {
                    role: e.owner.service.as_ref().map_or(tessera_model::InterfaceRole::Left, |s| s.role),
                    endpoint: e.id,
                    ips: e.ips.clone(),
                    traffic: Default::default(),
                })
                .collect(),
        }],
    })
}
