//! `tessera topology [--dot] [--json]`: a picture of the fabric from the
//! controller's REST API: hosts and their endpoints, networks, the networks
//! each policy connects, and the traffic between networks
//! (`/v1/flows/top?by=network`). A readable summary, the structure as JSON,
//! or a Graphviz digraph (`tessera topology --dot | dot -Tsvg`).
//!
//! With a project's token it shows what the token may read: its project's
//! networks, endpoints, policies and flows, and the hosts of its endpoints.

mod dot;
mod graph;

use tessera_controller::service::TopEntry;
use tessera_model::{Endpoint, ErrorCode, Host, Network, Policy};

use super::Ctx;

/// The most pairs of networks whose traffic is shown.
const TRAFFIC_PAIRS: usize = 1000;

#[derive(clap::Args)]
pub struct Args {
    /// Print a Graphviz digraph instead (render it with `dot -Tsvg`); it wins over `--json`.
    #[arg(long)]
    dot: bool,
}

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let c = &ctx.client;
    let hosts: Vec<Host> = match c.get("/v1/hosts").await {
        Ok(h) => h,
        // A project's token lists no hosts: they are known from the endpoints.
        Err(e) if e.code() == Some(ErrorCode::PermissionDenied) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let networks: Vec<Network> = c.get("/v1/networks").await?;
    let endpoints: Vec<Endpoint> = c.get("/v1/endpoints").await?;
    let policies: Vec<Policy> = c.get("/v1/policies").await?;
    let top: Vec<TopEntry> = c.get(&format!("/v1/flows/top?by=network&limit={TRAFFIC_PAIRS}")).await?;
    let t = graph::Topology::build(&hosts, &networks, &endpoints, &policies, &top);
    if args.dot {
        print!("{}", dot::render(&t));
        return Ok(());
    }
    ctx.print(&t, || t.text())
}
