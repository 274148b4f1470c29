//! `tessera project add|list|delete`.

use std::collections::BTreeMap;

use tessera_controller::service::{Project, ProjectCreate};

use super::Ctx;
use crate::table::Table;
use tessera_api::controller::seg;

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Create a project, DOMAIN:PROJECT.
    Add { name: String },
    /// List projects.
    List,
    /// Delete projects that hold no networks or policies.
    Delete {
        #[arg(required = true)]
        projects: Vec<String>,
    },
}

pub async fn run(ctx: &Ctx, cmd: Cmd) -> anyhow::Result<()> {
    let c = &ctx.client;
    match cmd {
        Cmd::Add { name } => {
            let p: Project = c.post("/v1/projects", &ProjectCreate { name }).await?;
            ctx.print(&p, || format!("project {} id {}\n", p.fq_name, p.id))
        }
        Cmd::List => {
            let ps: Vec<Project> = c.get("/v1/projects").await?;
            ctx.print(&ps, || {
                let mut t = Table::new(&["NAME", "ID"]);
                for p in &ps {
                    t.row(vec![p.fq_name.to_string(), p.id.to_string()]);
                }
                t.render()
            })
        }
        Cmd::Delete { projects } => {
            for p in &projects {
                c.delete(&format!("/v1/projects/{}", seg(p))).await?;
            }
            ctx.print(&BTreeMap::from([("deleted", &projects)]), || {
                projects.iter().map(|p| format!("project {p} deleted\n")).collect()
            })
        }
    }
}
