//! `tessera token create|list|delete`: bearer tokens for people and
//! automation. Only a fabric administrator manages them.

use tessera_api::auth::{Role, Token, TokenCreate, TokenCreated};
use tessera_api::controller::seg;

use super::Ctx;
use crate::table::Table;

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Make a token; its secret is printed this once.
    Create {
        /// Who or what uses it.
        #[arg(long)]
        name: String,
        /// The project it acts in (`domain:project`); none for a fabric administrator.
        #[arg(long)]
        project: Option<String>,
        /// reader, member or admin.
        #[arg(long, value_parser = ["reader", "member", "admin"])]
        role: String,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by its id; revoking a missing one succeeds.
    Delete { id: String },
}

pub async fn run(ctx: &Ctx, cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Create { name, project, role } => {
            let role = match role.as_str() {
                "reader" => Role::Reader,
                "member" => Role::Member,
                _ => Role::Admin,
            };
            let t: TokenCreated = ctx.client.post("/v1/tokens", &TokenCreate { name, project, role }).await?;
            ctx.print(&t, || format!("{}\n", t.secret))
        }
        Cmd::List => {
            let tokens: Vec<Token> = ctx.client.get("/v1/tokens").await?;
            ctx.print(&tokens, || {
                let mut t = Table::new(&["ID", "NAME", "PROJECT", "ROLE"]);
                for k in &tokens {
                    t.row(vec![
                        k.id.clone(),
                        k.name.clone(),
                        k.project.clone().unwrap_or_else(|| "(fabric)".into()),
                        format!("{:?}", k.role).to_lowercase(),
                    ]);
                }
                t.render()
            })
        }
        Cmd::Delete { id } => {
            ctx.client.delete(&format!("/v1/tokens/{}", seg(&id))).await?;
            ctx.print(&serde_json::json!({ "deleted": id }), || format!("deleted token {id}\n"))
        }
    }
}
