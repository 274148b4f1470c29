//! `tessera policy add|update|rule|show|list|delete`.

use std::collections::BTreeMap;

use tessera_model::{Policy, PolicyCreate, PolicyUpdate, PolicyView, PolicyWarning, RuleChange, RuleInsert, RuleSpec};

use super::Ctx;
use crate::table::Table;
use tessera_api::controller::seg;

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Create a policy from rules such as "pass tcp red any <> green 80".
    ///
    /// A rule is ACTION PROTOCOL SRC SRC_PORTS DIRECTION DST DST_PORTS [apply-service S1,S2] [log]:
    /// ACTION pass|deny|reject; PROTOCOL any|tcp|udp|icmp|icmpv6|NUMBER;
    /// SRC/DST any, a CIDR or a network name; PORTS any, N, N-M or a comma list;
    /// DIRECTION > (one way) or <> (both ways); apply-service steers what a pass
    /// between two networks matches through services, in order. Rules apply in
    /// order; the first match wins.
    Add {
        name: String,
        #[arg(long = "rule")]
        rules: Vec<String>,
        #[arg(long)]
        project: Option<String>,
    },
    /// Replace a policy's rules (in order).
    Update {
        policy: String,
        #[arg(long = "rule")]
        rules: Vec<String>,
    },
    /// Change one rule of a policy: only that rule is sent, stored and
    /// passed to the hosts (the way to edit a big policy).
    #[command(subcommand)]
    Rule(RuleCmd),
    /// Show a policy, its rules and their hit counters (new flows each rule
    /// decided, packets and bytes, summed over hosts).
    Show { policy: String },
    /// List policies.
    List,
    /// Delete policies; deleting a missing policy succeeds.
    Delete {
        #[arg(required = true)]
        policies: Vec<String>,
    },
}

#[derive(clap::Subcommand)]
pub enum RuleCmd {
    /// Replace rule INDEX (from 0, as `policy show` numbers them).
    Set { policy: String, index: usize, rule: String },
    /// Insert a rule before rule --at (at the end without it).
    Insert {
        policy: String,
        rule: String,
        #[arg(long)]
        at: Option<usize>,
    },
    /// Delete rule INDEX; the later rules move up one.
    Delete { policy: String, index: usize },
}

async fn rule(ctx: &Ctx, cmd: RuleCmd) -> anyhow::Result<()> {
    let c = &ctx.client;
    let (ch, verb): (RuleChange, &str) = match cmd {
        RuleCmd::Set { policy, index, rule } => {
            (c.put(&format!("/v1/policies/{}/rules/{index}", seg(&policy)), &RuleSpec::Line(rule)).await?, "replaced")
        }
        RuleCmd::Insert { policy, rule, at } => {
            let req = RuleInsert { rule: RuleSpec::Line(rule), at };
            (c.post(&format!("/v1/policies/{}/rules", seg(&policy)), &req).await?, "inserted")
        }
        RuleCmd::Delete { policy, index } => {
            (c.delete_for(&format!("/v1/policies/{}/rules/{index}", seg(&policy))).await?, "deleted")
        }
    };
    warn(&ch.warnings);
    ctx.print(&ch, || {
        let what = ch.rule.as_ref().map(|r| format!(": {r}")).unwrap_or_default();
        format!("policy {} rule {} {verb}{what}; {} rules\n", ch.fq_name, ch.index, ch.rules)
    })
}

pub async fn run(ctx: &Ctx, cmd: Cmd) -> anyhow::Result<()> {
    let c = &ctx.client;
    match cmd {
        Cmd::Add { name, rules, project } => {
            let req = PolicyCreate { name, project, rules: rules.into_iter().map(RuleSpec::Line).collect() };
            let v: PolicyView = c.post("/v1/policies", &req).await?;
            warn(&v.warnings);
            let p = &v.policy;
            ctx.print(&v, || format!("policy {} with {} rules, id {}\n", p.fq_name, p.rules.len(), p.id))
        }
        Cmd::Update { policy, rules } => {
            let req = PolicyUpdate { rules: rules.into_iter().map(RuleSpec::Line).collect() };
            let v: PolicyView = c.patch(&format!("/v1/policies/{}", seg(&policy)), &req).await?;
            warn(&v.warnings);
            let p = &v.policy;
            ctx.print(&v, || format!("policy {} now has {} rules\n", p.fq_name, p.rules.len()))
        }
        Cmd::Rule(r) => rule(ctx, r).await,
        Cmd::Show { policy } => {
            let v: PolicyView = c.get(&format!("/v1/policies/{}", seg(&policy))).await?;
            ctx.print(&v, || {
                let p = &v.policy;
                let mut out = format!("Policy\nName: {}\nUUID: {}\nRules:\n", p.fq_name, p.id);
                let mut t = Table::new(&["#", "RULE", "PACKETS", "BYTES"]);
                for (i, r) in p.rules.iter().enumerate() {
                    let hits = v.counters.as_ref().and_then(|c| c.rules.get(i));
                    let (packets, bytes) =
                        hits.map_or(("-".into(), "-".into()), |h| (h.packets.to_string(), h.bytes.to_string()));
                    t.row(vec![i.to_string(), r.to_string(), packets, bytes]);
                }
                for line in t.render().lines() {
                    out += &format!("    {line}\n");
                }
                for w in &v.warnings {
                    out += &format!("Warning: {}\n", w.message);
                }
                out
            })
        }
        Cmd::List => {
            let ps: Vec<Policy> = c.get("/v1/policies").await?;
            ctx.print(&ps, || {
                let mut t = Table::new(&["NAME", "RULES", "ID"]);
                for p in &ps {
                    t.row(vec![p.fq_name.to_string(), p.rules.len().to_string(), p.id.to_string()]);
                }
                t.render()
            })
        }
        Cmd::Delete { policies } => {
            for p in &policies {
                c.delete(&format!("/v1/policies/{}", seg(p))).await?;
            }
            ctx.print(&BTreeMap::from([("deleted", &policies)]), || {
                policies.iter().map(|p| format!("policy {p} deleted\n")).collect()
            })
        }
    }
}

/// Prints the warnings about a policy's rules on standard error.
fn warn(warnings: &[PolicyWarning]) {
    for w in warnings {
        eprintln!("warning: {}", w.message);
    }
}
