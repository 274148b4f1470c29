//! `tessera flow list|follow|top`: the flow records the hosts reported:
//! newest first, live as they come (like `hubble observe -f`), or grouped
//! by bytes (by pair, endpoint, port or pair of networks).

use tessera_model::FlowRecord;

use super::Ctx;
use crate::table::Table;

/// Which flows.
#[derive(clap::Args, Default)]
pub struct Filter {
    /// A network on either side.
    #[arg(long)]
    network: Option<String>,
    /// An endpoint (name) on either side.
    #[arg(long)]
    endpoint: Option<String>,
    /// The host that recorded it.
    #[arg(long)]
    host: Option<String>,
    /// forwarded, denied, rejected or spoofed.
    #[arg(long, value_parser = ["forwarded", "denied", "rejected", "spoofed"])]
    verdict: Option<String>,
    #[arg(long)]
    src: Option<String>,
    #[arg(long)]
    dst: Option<String>,
    /// A port on either side.
    #[arg(long)]
    port: Option<u16>,
}

impl Filter {
    fn query(self) -> Vec<String> {
        let mut q = Vec::new();
        for (k, v) in [
            ("network", self.network),
            ("endpoint", self.endpoint),
            ("host", self.host),
            ("verdict", self.verdict),
            ("src", self.src),
            ("dst", self.dst),
            ("port", self.port.map(|p| p.to_string())),
        ] {
            if let Some(v) = v {
                q.push(format!("{k}={}", tessera_api::controller::seg(&v)));
            }
        }
        q
    }
}

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Flows, newest first: who talked to whom, how much, and what happened to it.
    List {
        #[command(flatten)]
        filter: Filter,
        /// The most flows shown.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Flows as the hosts report them (started, running, ended), until interrupted.
    Follow {
        #[command(flatten)]
        filter: Filter,
    },
    /// Flows grouped by pair, endpoint, port or pair of networks, by bytes both ways.
    Top {
        /// pair, endpoint, port or network (source and destination networks).
        #[arg(long, default_value = "pair", value_parser = ["pair", "endpoint", "port", "network"])]
        by: String,
        /// Only flows that ran in the last SECONDS.
        #[arg(long)]
        since: Option<u64>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

fn protocol(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        n => n.to_string(),
    }
}

fn side(addr: std::net::IpAddr, port: u16, endpoint: &Option<String>) -> String {
    let a = if port == 0 {
        addr.to_string()
    } else if addr.is_ipv6() {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    };
    match endpoint {
        Some(e) => format!("{a} ({e})"),
        None => a,
    }
}

fn row(f: &FlowRecord) -> Vec<String> {
    vec![
        f.host.clone(),
        protocol(f.protocol),
        side(f.src, f.sport, &f.src_endpoint),
        side(f.dst, f.dport, &f.dst_endpoint),
        format!("{:?}", f.verdict).to_lowercase(),
        f.packets.to_string(),
        f.bytes.to_string(),
        f.reply_packets.to_string(),
        f.reply_bytes.to_string(),
        if f.end_ms.is_some() { "ended".into() } else { "running".into() },
        if f.tcp_flags.is_empty() { "-".into() } else { f.tcp_flags.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",") },
        // The rule that decided, or why the flow was refused.
        f.rule.clone().or_else(|| f.reason.clone()).unwrap_or_else(|| "-".into()),
    ]
}

const HEADER: [&str; 12] = [
    "HOST",
    "PROTO",
    "SOURCE",
    "DESTINATION",
    "VERDICT",
    "PKTS",
    "BYTES",
    "REPLY PKTS",
    "REPLY BYTES",
    "STATE",
    "TCP FLAGS",
    "RULE / REASON",
];

pub async fn run(ctx: &Ctx, cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::List { filter, limit } => {
            let mut q = filter.query();
            q.push(format!("limit={limit}"));
            let flows: Vec<FlowRecord> = ctx.client.get(&format!("/v1/flows?{}", q.join("&"))).await?;
            ctx.print(&flows, || {
                let mut t = Table::new(&HEADER);
                for f in &flows {
                    t.row(row(f));
                }
                t.render()
            })
        }
        Cmd::Follow { filter } => {
            use futures::StreamExt;
            let mut stream =
                Box::pin(ctx.client.ndjson::<FlowRecord>(&format!("/v1/flows/follow?{}", filter.query().join("&"))).await?);
            if !ctx.json {
                println!("{}", HEADER.join("  "));
            }
            while let Some(r) = stream.next().await {
                let f = r?;
                if ctx.json {
                    println!("{}", serde_json::to_string(&f)?);
                } else {
                    println!("{}", row(&f).join("  "));
                }
            }
            Ok(())
        }
        Cmd::Top { by, since, limit } => {
            let mut q = vec![format!("by={by}"), format!("limit={limit}")];
            if let Some(s) = since {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
                q.push(format!("since={}", now.saturating_sub(s * 1000)));
            }
            let top: Vec<serde_json::Value> = ctx.client.get(&format!("/v1/flows/top?{}", q.join("&"))).await?;
            ctx.print(&top, || {
                let mut t = Table::new(&[by.to_uppercase().as_str(), "FLOWS", "PACKETS", "BYTES"]);
                for e in &top {
                    t.row(vec![
                        e["key"].as_str().unwrap_or_default().to_string(),
                        e["flows"].to_string(),
                        e["packets"].to_string(),
                        e["bytes"].to_string(),
                    ]);
                }
                t.render()
            })
        }
    }
}
