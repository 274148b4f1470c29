//! `tessera controller status`: a running controller's store, the
//! controllers sharing it, and the hosts watching it with their lag
//! (`GET /v1/status`).

use serde_json::Value;

use super::Ctx;
use crate::table::Table;

pub async fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let status: Value = ctx.client.get("/v1/status").await?;
    ctx.print(&status, || render(&status))
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn ago(now_ms: u64, ms: &Value) -> String {
    match ms.as_u64() {
        Some(ms) => format!("{}s ago", now_ms.saturating_sub(ms) / 1000),
        None => "-".into(),
    }
}

fn render(s: &Value) -> String {
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let store = &s["store"];
    let watch = &s["watch"];
    let mut out = format!("controller {} (version {})\n", text(&s["id"]), text(&s["version"]));
    let ready = if store["ready"].as_bool() == Some(true) {
        "ready".to_string()
    } else {
        format!("NOT READY: {}", text(&store["reason"]))
    };
    out.push_str(&format!("store      {}, revision {}, {ready}\n", text(&store["name"]), text(&store["revision"])));
    out.push_str(&format!(
        "watch      read up to revision {}, {} recent events held ({} KiB)\n",
        text(&watch["revision"]),
        text(&watch["ring_events"]),
        watch["ring_bytes"].as_u64().unwrap_or(0) / 1024
    ));
    let mut t = Table::new(&["CONTROLLER", "URL", "VERSION", "ALIVE", "LEADER", "LEASES", "STARTED"]);
    for c in s["controllers"].as_array().into_iter().flatten() {
        let leases = c["leases"].as_array().map_or(0, |l| l.len());
        t.row(vec![
            text(&c["id"]),
            text(&c["url"]),
            text(&c["version"]),
            if c["alive"].as_bool() == Some(true) { "yes" } else { "no" }.into(),
            if c["leader"].as_bool() == Some(true) { "yes" } else { "" }.into(),
            leases.to_string(),
            ago(now_ms, &c["started_ms"]),
        ]);
    }
    out.push('\n');
    out.push_str(&t.render());
    let watchers = watch["watchers"].as_array().cloned().unwrap_or_default();
    out.push_str(&format!("\n{} watching\n", watchers.len()));
    if !watchers.is_empty() {
        let mut t = Table::new(&["WHO", "REVISION", "LAG", "ENDPOINTS OF", "SINCE"]);
        for w in &watchers {
            let scope = w["networks"].as_u64().map_or("every network".to_string(), |n| format!("{n} networks and its own"));
            t.row(vec![text(&w["who"]), text(&w["revision"]), text(&w["lag"]), scope, ago(now_ms, &w["since_ms"])]);
        }
        out.push_str(&t.render());
    }
    out
}
