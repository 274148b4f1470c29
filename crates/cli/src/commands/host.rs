//! `tessera host list`.

use std::time::{SystemTime, UNIX_EPOCH};

use tessera_model::Host;

use super::Ctx;
use crate::table::Table;

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// List registered hosts.
    List,
}

pub async fn run(ctx: &Ctx, cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::List => {
            let hosts: Vec<Host> = ctx.client.get("/v1/hosts").await?;
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            ctx.print(&hosts, || {
                let mut t = Table::new(&["NAME", "UNDERLAY", "LAST SEEN"]);
                for h in &hosts {
                    t.row(vec![h.name.clone(), h.underlay_ip.to_string(), format!("{}s ago", now.saturating_sub(h.last_seen))]);
                }
                t.render()
            })
        }
    }
}
