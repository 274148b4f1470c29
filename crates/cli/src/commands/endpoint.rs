//! `tessera endpoint list|show`.

use tessera_model::Endpoint;

use super::{join, Ctx};
use crate::table::Table;
use tessera_api::controller::seg;

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// List endpoints, optionally of one network or host.
    List {
        #[arg(long)]
        network: Option<String>,
        #[arg(long)]
        host: Option<String>,
    },
    /// Show one endpoint by UUID.
    Show { id: String },
}

pub async fn run(ctx: &Ctx, cmd: Cmd) -> anyhow::Result<()> {
    let c = &ctx.client;
    match cmd {
        Cmd::List { network, host } => {
            let mut q = Vec::new();
            if let Some(n) = network {
                q.push(format!("network={}", seg(&n)));
            }
            if let Some(h) = host {
                q.push(format!("host={}", seg(&h)));
            }
            let path = if q.is_empty() { "/v1/endpoints".to_string() } else { format!("/v1/endpoints?{}", q.join("&")) };
            let eps: Vec<Endpoint> = c.get(&path).await?;
            ctx.print(&eps, || {
                let mut t = Table::new(&["NAME", "NETWORK", "HOST", "MAC", "ADDRESSES", "STATUS", "ID"]);
                for e in &eps {
                    t.row(vec![
                        e.name.clone(),
                        e.network.to_string(),
                        e.host.clone(),
                        e.mac.to_string(),
                        join(&e.ips),
                        format!("{:?}", e.status).to_lowercase(),
                        e.id.to_string(),
                    ]);
                }
                t.render()
            })
        }
        Cmd::Show { id } => {
            let e: Endpoint = c.get(&format!("/v1/endpoints/{}", seg(&id))).await?;
            ctx.print(&e, || {
                format!(
                    "Endpoint\nName: {}\nUUID: {}\nNetwork: {}\nHost: {}\nMAC: {}\nAddresses: {}\nStatus: {:?}\nOwner: {}\n",
                    e.name,
                    e.id,
                    e.network,
                    e.host,
                    e.mac,
                    join(&e.ips),
                    e.status,
                    serde_json::to_string(&e.owner).unwrap_or_default()
                )
            })
        }
    }
}
