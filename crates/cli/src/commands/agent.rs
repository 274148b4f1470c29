//! `tessera agent`, `tessera attach|detach` and `tessera vif list`: the host
//! side, reached through the agent's unix socket.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use hyper::Method;
use tessera_agent::AgentConfig;
use tessera_api::agent::{AttachRequest, DetachRequest, DEFAULT_SOCKET};
use tessera_api::auth::Credentials;
use tessera_api::{uds, AgentClient};

use super::{join, Ctx};
use crate::table::Table;

#[derive(clap::Args)]
pub struct AgentArgs {
    /// This host's name in the fabric.
    #[arg(long)]
    host: String,
    /// This host's underlay address: the local end of every VXLAN tunnel.
    #[arg(long)]
    underlay_ip: IpAddr,
    /// The local API socket.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// A group (name or number) whose members may use the local API besides
    /// root; the socket is mode 0660, and other callers are refused.
    #[arg(long)]
    socket_group: Option<String>,
    /// Where the agent keeps the last intent it saw.
    #[arg(long, default_value = "/var/lib/tessera/agent")]
    state_dir: PathBuf,
    /// Makes this host a gateway of an external network: `NETWORK=IFACE`,
    /// the interface where that network's addresses live (repeatable).
    #[arg(long = "gateway", value_name = "NETWORK=IFACE", value_parser = parse_gateway)]
    gateways: Vec<(String, String)>,
    /// The host's Docker Engine socket, to follow containers attached with
    /// --docker across restarts (their namespace changes).
    #[arg(long, env = "TESSERA_DOCKER_SOCKET", default_value = "/var/run/docker.sock")]
    docker_socket: PathBuf,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9108).
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Record no flows (conntrack accounting and events stay as they are).
    #[arg(long)]
    no_flows: bool,
    /// The data plane: `ebpf` adds the TC-eBPF fast path for the packets
    /// of established flows within a network to the kernel path (refused
    /// with the reason when this host cannot run it); `kernel` is the
    /// kernel path alone. Default: ebpf where this host can run it, kernel
    /// otherwise (the reason is logged).
    #[arg(long, value_enum)]
    dataplane: Option<DataplaneArg>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum DataplaneArg {
    Kernel,
    Ebpf,
}

fn parse_gateway(s: &str) -> Result<(String, String), String> {
    let (net, iface) = s.split_once('=').ok_or_else(|| format!("{s:?} is not NETWORK=IFACE"))?;
    if net.trim().is_empty() || iface.trim().is_empty() {
        return Err(format!("{s:?} is not NETWORK=IFACE"));
    }
    tessera_model::limits::check_ifname("--gateway", iface.trim()).map_err(|e| e.reason)?;
    Ok((net.trim().to_string(), iface.trim().to_string()))
}

pub async fn run_agent(controller: &str, credentials: &Credentials, a: AgentArgs) -> anyhow::Result<()> {
    let config = AgentConfig {
        host: a.host,
        underlay_ip: a.underlay_ip,
        controller: controller.to_string(),
        credentials: credentials.clone(),
        socket: a.socket,
        socket_group: a
            .socket_group
            .as_deref()
            .map(tessera_api::local::group_id)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--socket-group: {e}"))?,
        state_dir: a.state_dir,
        gateways: a.gateways,
        docker_socket: Some(a.docker_socket),
        metrics_listen: a.metrics_listen,
        flows: !a.no_flows,
        dataplane: a.dataplane.map(|d| match d {
            DataplaneArg::Kernel => tessera_agent::DataplaneKind::Kernel,
            DataplaneArg::Ebpf => tessera_agent::DataplaneKind::Ebpf,
        }),
    };
    tessera_agent::run(config, super::controller::shutdown_signal()).await
}

/// Which namespace: exactly one of these.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
pub struct Target {
    /// A network namespace: a path, or a name under /run/netns.
    #[arg(long)]
    pub netns: Option<String>,
    /// The network namespace of a running process.
    #[arg(long)]
    pub pid: Option<u32>,
    /// A running Docker container (name or id).
    #[arg(long)]
    pub docker: Option<String>,
}

#[derive(clap::Args)]
pub struct AttachArgs {
    /// The network (name, domain:project:name or UUID).
    #[arg(long)]
    network: String,
    #[command(flatten)]
    target: Target,
    /// A static address (at most one per address family).
    #[arg(long = "ip")]
    ips: Vec<String>,
    /// Interface name inside the namespace.
    #[arg(long, default_value = "eth0")]
    ifname: String,
    /// Leave the addresses to the container's own DHCP client (the agent
    /// answers it): only the interface's MAC, MTU and link are set.
    #[arg(long)]
    dhcp: bool,
    /// Give the interface a routing table of its own in the container
    /// (dockwall's scheme: its default route there; what arrives on it is
    /// routed by the other such interfaces' tables).
    #[arg(long)]
    own_table: bool,
    /// The agent's socket.
    #[arg(long, env = "TESSERA_AGENT_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
}

#[derive(clap::Args)]
pub struct DetachArgs {
    /// Only this network; every network of the namespace when absent.
    #[arg(long)]
    network: Option<String>,
    #[command(flatten)]
    target: Target,
    #[arg(long)]
    ifname: Option<String>,
    #[arg(long, env = "TESSERA_AGENT_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
}

#[derive(clap::Subcommand)]
pub enum VifCmd {
    /// The host's interface table: kind, MAC, addresses, VRF, flags, MTU, counters.
    List {
        #[arg(long, env = "TESSERA_AGENT_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
}

#[derive(clap::Args)]
pub struct StatusArgs {
    #[arg(long, env = "TESSERA_AGENT_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
}

/// Resolves the target to (netns path, container id).
pub async fn resolve(t: &Target) -> anyhow::Result<(String, Option<String>)> {
    if let Some(ns) = &t.netns {
        let path = if ns.contains('/') { ns.clone() } else { format!("/run/netns/{ns}") };
        return Ok((path, None));
    }
    if let Some(pid) = t.pid {
        return Ok((format!("/proc/{pid}/ns/net"), None));
    }
    let name = t.docker.as_deref().unwrap_or_default();
    let sock = std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(str::to_string))
        .unwrap_or_else(|| "/var/run/docker.sock".into());
    let (status, bytes) = uds::request(Path::new(&sock), Method::GET, &format!("/containers/{name}/json"), None)
        .await
        .with_context(|| format!("cannot reach Docker at {sock}"))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    if !status.is_success() {
        bail!("docker: {}", v["message"].as_str().unwrap_or("container not found"));
    }
    let pid = v["State"]["Pid"].as_u64().unwrap_or(0);
    if pid == 0 {
        bail!("docker container {name} is not running");
    }
    Ok((format!("/proc/{pid}/ns/net"), v["Id"].as_str().map(str::to_string)))
}

pub async fn attach(ctx: &Ctx, a: AttachArgs) -> anyhow::Result<()> {
    let (netns, container_id) = resolve(&a.target).await?;
    let req = AttachRequest {
        network: a.network,
        netns,
        ips: a.ips,
        ifname: Some(a.ifname),
        container_id,
        name: None,
        dhcp: a.dhcp,
        own_table: a.own_table,
        service: None,
        ..Default::default()
    };
    let ep = AgentClient::new(a.socket).attach(&req).await?;
    ctx.print(&ep, || format!("attached {} to {}: {} mac {}\n", req.netns, req.network, join(&ep.ips), ep.mac))
}

pub async fn detach(ctx: &Ctx, a: DetachArgs) -> anyhow::Result<()> {
    let (netns, container_id) = resolve(&a.target).await?;
    let req = DetachRequest {
        netns: if container_id.is_some() { None } else { Some(netns) },
        container_id,
        network: a.network,
        ifname: a.ifname,
    };
    let r = AgentClient::new(a.socket).detach(&req).await?;
    ctx.print(&r, || {
        if r.detached.is_empty() {
            "nothing to detach\n".to_string()
        } else {
            r.detached.iter().map(|e| format!("detached {} ({})\n", e.name, join(&e.ips))).collect()
        }
    })
}

pub async fn vif(ctx: &Ctx, cmd: VifCmd) -> anyhow::Result<()> {
    let VifCmd::List { socket } = cmd;
    let vifs = AgentClient::new(socket).vifs().await?;
    ctx.print(&vifs, || {
        let mut t = Table::new(&[
            "NAME",
            "KIND",
            "MAC",
            "ADDRESSES",
            "VRF",
            "FLAGS",
            "MTU",
            "RX PKTS",
            "RX BYTES",
            "RX ERR/DROP",
            "TX PKTS",
            "TX BYTES",
            "TX ERR/DROP",
            "DHCP REQ/ACK/NAK/IGN",
            "SERVICE",
            "PATH",
        ]);
        for v in &vifs {
            t.row(vec![
                v.name.clone(),
                format!("{:?}", v.kind).to_lowercase(),
                v.mac.map(|m| m.to_string()).unwrap_or_else(|| "-".into()),
                join(&v.addrs),
                v.vni.map(|n| format!("vni {n}")).unwrap_or_else(|| "-".into()),
                v.flags.join(","),
                v.mtu.to_string(),
                v.rx_packets.to_string(),
                v.rx_bytes.to_string(),
                format!("{}/{}", v.rx_errors, v.rx_dropped),
                v.tx_packets.to_string(),
                v.tx_bytes.to_string(),
                format!("{}/{}", v.tx_errors, v.tx_dropped),
                v.dhcp.map(|d| format!("{}/{}/{}/{}", d.requests, d.acks, d.naks, d.ignored)).unwrap_or_else(|| "-".into()),
                v.service.clone().unwrap_or_else(|| "-".into()),
                v.path.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        let mut out = t.render();
        let mut seen = std::collections::BTreeSet::new();
        let translations: Vec<_> = vifs.iter().flat_map(|v| &v.translations).filter(|x| seen.insert(x.external)).collect();
        if !translations.is_empty() {
            let mut n =
                Table::new(&["EXTERNAL", "KIND", "VRF", "ENDPOINT ADDRESS", "IN PKTS", "IN BYTES", "OUT PKTS", "OUT BYTES"]);
            for x in translations {
                n.row(vec![
                    x.external.to_string(),
                    if x.fixed.is_some() { "floating IP" } else { "SNAT" }.to_string(),
                    x.vni.map(|v| format!("vni {v}")).unwrap_or_else(|| "-".into()),
                    x.fixed.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
                    x.in_packets.to_string(),
                    x.in_bytes.to_string(),
                    x.out_packets.to_string(),
                    x.out_bytes.to_string(),
                ]);
            }
            out += "\nTranslated on this gateway's uplinks:\n";
            out += &n.render();
        }
        out
    })
}

/// `tessera status`: the agent of this host, as its local API reports it.
pub async fn status(ctx: &Ctx, a: StatusArgs) -> anyhow::Result<()> {
    let s = AgentClient::new(a.socket).status().await?;
    ctx.print(&s, || {
        let connected = if s.controller_connected { "connected" } else { "not connected" };
        let mut out = format!(
            "host:            {} ({})\ncontroller:      {} ({connected})\nrevision:        {}\nnetworks:        {}\nlocal endpoints: {}\nreconciles:      {}\n",
            s.host, s.underlay_ip, s.controller, s.revision, s.networks, s.local_endpoints, s.reconciles
        );
        if let Some(why) = &s.holding {
            out.push_str(&format!("holding:         {why}\n"));
        }
        if let Some(e) = &s.last_error {
            out.push_str(&format!("last error:      {e}\n"));
        }
        match &s.dataplane {
            Some(tessera_api::agent::Dataplane::Ebpf { flows, underlay }) => {
                out.push_str(&format!("data plane:      ebpf fast path ({flows} flow directions on it) and kernel path\n"));
                match underlay {
                    Some(tessera_api::agent::Decapsulation { device, stack: None }) => {
                        out.push_str(&format!("decapsulation:   a program on {device}\n"))
                    }
                    Some(tessera_api::agent::Decapsulation { device, stack: Some(why) }) => {
                        out.push_str(&format!("decapsulation:   the host's stack ({device}: {why})\n"))
                    }
                    None => {}
                }
            }
            Some(tessera_api::agent::Dataplane::Kernel { reason, .. }) => {
                out.push_str(&format!("data plane:      kernel path ({reason})\n"))
            }
            None => {}
        }
        if !s.local_networks.is_empty() {
            let mut t = Table::new(&["NETWORK", "VNI", "ENDPOINTS", "PROGRAMMED"]);
            for n in &s.local_networks {
                t.row(vec![n.name.clone(), n.vni.to_string(), n.endpoints.to_string(), n.programmed.to_string()]);
            }
            out.push('\n');
            out.push_str(&t.render());
        }
        out
    })
}
