//! `tessera purge`: take away everything Tessera made in this host's kernel
//! (what a package's removal runs once the units are stopped).

use std::path::PathBuf;

use anyhow::bail;
use tessera_api::agent::DEFAULT_SOCKET;
use tessera_dataplane::linux::Purge;

use super::Ctx;

#[derive(clap::Args)]
pub struct Args {
    /// Remove what is listed; without it, only list it.
    #[arg(long)]
    yes: bool,
    /// The agent's socket: a purge is refused while an agent answers there
    /// (it would make everything again).
    #[arg(long, env = "TESSERA_AGENT_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
}

pub async fn run(ctx: &Ctx, a: Args) -> anyhow::Result<()> {
    if tokio::net::UnixStream::connect(&a.socket).await.is_ok() {
        bail!(
            "an agent answers at {}: stop it first (systemctl stop tessera-agent), or it makes everything again",
            a.socket.display()
        );
    }
    let found = tessera_dataplane::linux::purge(a.yes).await?;
    ctx.print(&found, || human(&found, a.yes))
}

fn human(p: &Purge, removed: bool) -> String {
    if p.is_empty() {
        return "Tessera has nothing in this host's kernel.\n".to_string();
    }
    let mut out = String::new();
    let mut part = |what: &str, items: &[String]| {
        if !items.is_empty() {
            out.push_str(&format!("{what} ({}):\n", items.len()));
            for i in items {
                out.push_str(&format!("  {i}\n"));
            }
        }
    };
    part("links", &p.links);
    part("routing rules", &p.rules);
    part("routes", &p.routes);
    part("nftables tables", &p.nft_tables);
    out.push_str(if removed { "All removed.\n" } else { "Nothing removed: run again with --yes to remove these.\n" });
    out
}
