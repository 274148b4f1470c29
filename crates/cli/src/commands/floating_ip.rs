//! `tessera floating-ip add|list|show|associate|disassociate|delete`:
//! addresses of external networks, translated one to one to an endpoint's
//! address by the external network's gateway hosts.

use std::collections::BTreeMap;

use tessera_api::controller::seg;
use tessera_model::{FloatingIp, FloatingIpAssociate, FloatingIpCreate, Network};

use super::Ctx;
use crate::table::Table;

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Allocate a floating IP of an external network.
    Add {
        /// The external network.
        network: String,
        /// A chosen address (the lowest free one otherwise).
        #[arg(long)]
        ip: Option<String>,
        /// The family to allocate from without --ip: 4 or 6.
        #[arg(long, value_parser = ["4", "6"])]
        family: Option<String>,
        /// The project, DOMAIN:PROJECT.
        #[arg(long)]
        project: Option<String>,
    },
    /// List floating IPs.
    List,
    /// Show a floating IP (by UUID or address).
    Show { floating_ip: String },
    /// Associate a floating IP with an endpoint's address.
    Associate {
        floating_ip: String,
        /// The endpoint's UUID.
        #[arg(long)]
        endpoint: String,
        /// Which of the endpoint's addresses (the one of the floating IP's family by default).
        #[arg(long)]
        fixed_ip: Option<String>,
        /// Move it when it is associated elsewhere (refused otherwise).
        #[arg(long = "move")]
        moving: bool,
    },
    /// End a floating IP's association.
    Disassociate { floating_ip: String },
    /// Release floating IPs; releasing a missing one succeeds.
    Delete {
        #[arg(required = true)]
        floating_ips: Vec<String>,
    },
}

pub async fn run(ctx: &Ctx, cmd: Cmd) -> anyhow::Result<()> {
    let c = &ctx.client;
    match cmd {
        Cmd::Add { network, ip, family, project } => {
            let family = family.map(|f| if f == "4" { 4 } else { 6 });
            let f: FloatingIp = c.post("/v1/floating-ips", &FloatingIpCreate { network, project, address: ip, family }).await?;
            ctx.print(&f, || format!("floating IP {} allocated ({})\n", f.address, f.id))
        }
        Cmd::List => {
            let all: Vec<FloatingIp> = c.get("/v1/floating-ips").await?;
            let nets: Vec<Network> = c.get("/v1/networks").await?;
            let name = |id: uuid::Uuid| {
                nets.iter().find(|n| n.id == id).map(|n| n.fq_name.to_string()).unwrap_or_else(|| id.to_string())
            };
            ctx.print(&all, || {
                let mut t = Table::new(&["ADDRESS", "NETWORK", "ENDPOINT", "FIXED IP", "PROJECT", "ID"]);
                for f in &all {
                    t.row(vec![
                        f.address.to_string(),
                        name(f.network),
                        f.endpoint.map(|e| e.to_string()).unwrap_or_else(|| "-".into()),
                        f.fixed_ip.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
                        f.project.to_string(),
                        f.id.to_string(),
                    ]);
                }
                t.render()
            })
        }
        Cmd::Show { floating_ip } => {
            let f: FloatingIp = c.get(&format!("/v1/floating-ips/{}", seg(&floating_ip))).await?;
            ctx.print(&f, || show(&f))
        }
        Cmd::Associate { floating_ip, endpoint, fixed_ip, moving } => {
            let path = format!("/v1/floating-ips/{}/association{}", seg(&floating_ip), if moving { "?move=true" } else { "" });
            let f: FloatingIp = c.put(&path, &FloatingIpAssociate { endpoint, fixed_ip }).await?;
            ctx.print(&f, || {
                format!("floating IP {} associated with {}\n", f.address, f.fixed_ip.map(|a| a.to_string()).unwrap_or_default())
            })
        }
        Cmd::Disassociate { floating_ip } => {
            let f: FloatingIp = c.delete_for(&format!("/v1/floating-ips/{}/association", seg(&floating_ip))).await?;
            ctx.print(&f, || format!("floating IP {} disassociated\n", f.address))
        }
        Cmd::Delete { floating_ips } => {
            for f in &floating_ips {
                c.delete(&format!("/v1/floating-ips/{}", seg(f))).await?;
            }
            ctx.print(&BTreeMap::from([("deleted", &floating_ips)]), || {
                floating_ips.iter().map(|f| format!("floating IP {f} released\n")).collect()
            })
        }
    }
}

fn show(f: &FloatingIp) -> String {
    let mut out = format!("Floating IP {}\nUUID: {}\nNetwork: {}\nProject: {}\n", f.address, f.id, f.network, f.project);
    match (f.endpoint, f.fixed_ip) {
        (Some(e), Some(a)) => out += &format!("Associated: endpoint {e}, address {a}\n"),
        _ => out += "Associated: no\n",
    }
    out
}
