//! `tessera network add|show|list|update|delete`.

use std::collections::BTreeMap;

use anyhow::bail;
use serde::Serialize;
use tessera_controller::service::NetworkIpam;
use tessera_model::{Endpoint, Network, NetworkCreate, NetworkUpdate, Policy, SubnetCreate};

use super::{join, Ctx};
use crate::table::Table;
use tessera_api::controller::seg;

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Create a network.
    Add {
        name: String,
        /// An IPv4 or IPv6 subnet; repeat for several.
        #[arg(long = "subnet", required = true)]
        subnets: Vec<String>,
        /// Gateway of the subnet that contains it (default: each subnet's first usable address).
        #[arg(long = "gateway")]
        gateways: Vec<String>,
        /// A DNS server for the containers, given to every subnet of its address family; repeat for several.
        #[arg(long = "dns")]
        dns: Vec<String>,
        /// Route target imported and exported, ASN:N or IPV4:N; repeat for several.
        #[arg(long = "route-target")]
        route_targets: Vec<String>,
        /// VNI (1-16777215); assigned when absent.
        #[arg(long)]
        vni: Option<u32>,
        /// Project, DOMAIN:PROJECT.
        #[arg(long)]
        project: Option<String>,
        /// Policy to attach; repeat for several, in order.
        #[arg(long = "policy")]
        policies: Vec<String>,
        /// Every project may use it (attach, name it in a policy, import its routes).
        #[arg(long)]
        shared: bool,
        /// A project (`domain:project`) that may use it as if it were shared; repeat for several.
        #[arg(long = "share-with")]
        share_with: Vec<String>,
        /// The network's addresses live outside, behind gateway hosts: it
        /// holds floating IPs and SNAT addresses, not endpoints.
        #[arg(long)]
        external: bool,
        /// The DNS domain DHCP clients are given.
        #[arg(long)]
        domain: Option<String>,
    },
    /// Show a network: names, VNI, route targets, subnets, policies, endpoints.
    Show { network: String },
    /// List networks.
    List {
        #[arg(long)]
        project: Option<String>,
    },
    /// Change route targets, attached policies and sharing.
    Update {
        network: String,
        #[arg(long = "add-route-target")]
        add_route_targets: Vec<String>,
        #[arg(long = "remove-route-target")]
        remove_route_targets: Vec<String>,
        /// Attach a policy (appended to the ordered list).
        #[arg(long = "policy")]
        attach: Vec<String>,
        #[arg(long = "detach-policy")]
        detach: Vec<String>,
        /// Share with a project (`domain:project`); repeat for several.
        #[arg(long = "share-with")]
        share_with: Vec<String>,
        /// Stop sharing with a project.
        #[arg(long = "unshare-with")]
        unshare_with: Vec<String>,
        /// Share with every project (`true`) or only the listed ones (`false`).
        #[arg(long)]
        shared: Option<bool>,
        /// Endpoints without a floating IP reach the outside through this
        /// external network, source-NATed.
        #[arg(long, conflicts_with = "no_snat")]
        snat: Option<String>,
        /// Turn source NAT to the outside off.
        #[arg(long)]
        no_snat: bool,
        /// Replace the DNS servers of the subnets (repeat for several); DHCP
        /// clients get them at their next renewal.
        #[arg(long = "dns")]
        dns: Vec<String>,
        /// The DNS domain DHCP clients are given ("" removes it).
        #[arg(long)]
        domain: Option<String>,
    },
    /// Delete networks; deleting a missing network succeeds.
    Delete {
        #[arg(required = true)]
        networks: Vec<String>,
    },
}

/// Everything `network show` tells.
#[derive(Serialize)]
struct Shown {
    network: Network,
    ipam: NetworkIpam,
    policies: Vec<String>,
    floating_ip_pools: Vec<String>,
    endpoints: Vec<Endpoint>,
}

fn subnets_with_gateways(subnets: &[String], gateways: &[String], dns: &[String]) -> anyhow::Result<Vec<SubnetCreate>> {
    let mut out: Vec<SubnetCreate> = subnets.iter().map(|s| SubnetCreate::cidr(s)).collect();
    for d in dns {
        let Ok(addr) = d.parse::<std::net::IpAddr>() else {
            bail!("--dns: {d:?} is not an IP address");
        };
        let same_family: Vec<&mut SubnetCreate> = out
            .iter_mut()
            .filter(|s| s.cidr.parse::<ipnet::IpNet>().is_ok_and(|n| n.addr().is_ipv4() == addr.is_ipv4()))
            .collect();
        if same_family.is_empty() {
            bail!("--dns: no subnet of {addr}'s address family");
        }
        same_family.into_iter().for_each(|s| s.dns_servers.push(d.clone()));
    }
    for g in gateways {
        let Ok(addr) = g.parse::<std::net::IpAddr>() else {
            bail!("--gateway: {g:?} is not an IP address");
        };
        let Some(s) = out.iter_mut().find(|s| s.cidr.parse::<ipnet::IpNet>().is_ok_and(|n| n.contains(&addr))) else {
            bail!("--gateway: {addr} is in none of the given subnets");
        };
        s.gateway = Some(g.clone());
    }
    Ok(out)
}

pub async fn run(ctx: &Ctx, cmd: Cmd) -> anyhow::Result<()> {
    let c = &ctx.client;
    match cmd {
        Cmd::Add {
            name,
            subnets,
            gateways,
            dns,
            route_targets,
            vni,
            project,
            policies,
            shared,
            share_with,
            external,
            domain,
        } => {
            let req = NetworkCreate {
                name,
                project,
                subnets: subnets_with_gateways(&subnets, &gateways, &dns)?,
                vni,
                route_targets,
                shared,
                shared_with: share_with,
                external,
                policies,
                domain,
                ..Default::default()
            };
            let net: Network = c.post("/v1/networks", &req).await?;
            ctx.print(&net, || format!("network {} vni {} id {}\n", net.fq_name, net.vni, net.id))
        }
        Cmd::Show { network } => {
            let net: Network = c.get(&format!("/v1/networks/{}", seg(&network))).await?;
            let ipam: NetworkIpam = c.get(&format!("/v1/networks/{}/ipam", net.id)).await?;
            let mut policies = Vec::new();
            for p in &net.policies {
                let pol: Policy = c.get(&format!("/v1/policies/{p}")).await?;
                policies.push(pol.fq_name.to_string());
            }
            let endpoints: Vec<Endpoint> = c.get(&format!("/v1/endpoints?network={}", net.id)).await?;
            let shown = Shown { network: net, ipam, policies, floating_ip_pools: Vec::new(), endpoints };
            ctx.print(&shown, || render_show(&shown))
        }
        Cmd::List { project } => {
            let path = match project {
                Some(p) => format!("/v1/networks?project={}", seg(&p)),
                None => "/v1/networks".into(),
            };
            let nets: Vec<Network> = c.get(&path).await?;
            ctx.print(&nets, || {
                let mut t = Table::new(&["NAME", "VNI", "SUBNETS", "ROUTE TARGETS", "POLICIES", "ID"]);
                for n in &nets {
                    let subnets: Vec<String> = n.subnets.iter().map(|s| s.cidr.to_string()).collect();
                    let mut rts: Vec<String> = n.import_targets.iter().map(ToString::to_string).collect();
                    for e in &n.export_targets {
                        if !n.import_targets.contains(e) {
                            rts.push(format!("{e} (export)"));
                        }
                    }
                    t.row(vec![
                        n.fq_name.to_string(),
                        n.vni.to_string(),
                        join(&subnets),
                        join(&rts),
                        n.policies.len().to_string(),
                        n.id.to_string(),
                    ]);
                }
                t.render()
            })
        }
        Cmd::Update {
            network,
            add_route_targets,
            remove_route_targets,
            attach,
            detach,
            share_with,
            unshare_with,
            shared,
            snat,
            no_snat,
            dns,
            domain,
        } => {
            let req = NetworkUpdate {
                add_route_targets,
                remove_route_targets,
                attach_policies: attach,
                detach_policies: detach,
                share_with,
                unshare_with,
                shared,
                snat: if no_snat { Some(String::new()) } else { snat },
                dns_servers: (!dns.is_empty()).then_some(dns),
                domain,
                ..Default::default()
            };
            let net: Network = c.patch(&format!("/v1/networks/{}", seg(&network)), &req).await?;
            ctx.print(&net, || format!("network {} updated\n", net.fq_name))
        }
        Cmd::Delete { networks } => {
            for n in &networks {
                c.delete(&format!("/v1/networks/{}", seg(n))).await?;
            }
            ctx.print(&BTreeMap::from([("deleted", &networks)]), || {
                networks.iter().map(|n| format!("network {n} deleted\n")).collect()
            })
        }
    }
}

fn render_show(s: &Shown) -> String {
    let n = &s.network;
    let mut out = String::new();
    out += "Virtual Network\n";
    out += &format!("Name: {}\nUUID: {}\nVNI: {}\n", n.fq_name, n.id, n.vni);
    out += &format!("Flags: shared={} external={}\n", n.shared, n.external);
    if let Some(s) = &n.snat {
        out += &format!("SNAT: through {} as {}\n", s.network, join(&s.addresses));
    }
    if !n.shared_with.is_empty() {
        out += &format!("Shared with: {}\n", join(&n.shared_with));
    }
    out += "Route targets:\n";
    for rt in &n.import_targets {
        let how = if n.export_targets.contains(rt) { "import, export" } else { "import" };
        out += &format!("    {rt} ({how})\n");
    }
    for rt in n.export_targets.iter().filter(|rt| !n.import_targets.contains(rt)) {
        out += &format!("    {rt} (export)\n");
    }
    out += "IPAM subnets:\n";
    for u in &s.ipam.subnets {
        let gw = u.gateway.map(|g| g.to_string()).unwrap_or_else(|| "none".into());
        out += &format!("    subnet: {}, gateway: {gw}, allocated {} of {}\n", u.cidr, u.allocated, u.capacity);
    }
    out += "Policies:\n";
    for p in &s.policies {
        out += &format!("    {p}\n");
    }
    out += "Floating IP pools:\n";
    out += "Endpoints:\n";
    if !s.endpoints.is_empty() {
        let mut t = Table::new(&["NAME", "HOST", "MAC", "ADDRESSES", "STATUS"]);
        for e in &s.endpoints {
            t.row(vec![
                e.name.clone(),
                e.host.clone(),
                e.mac.to_string(),
                join(&e.ips),
                format!("{:?}", e.status).to_lowercase(),
            ]);
        }
        for line in t.render().lines() {
            out += &format!("    {line}\n");
        }
    }
    if !n.labels.is_empty() {
        out += "Labels:\n";
        for (k, v) in &n.labels {
            out += &format!("    {k}={v}\n");
        }
    }
    out
}
