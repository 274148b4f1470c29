//! `tessera flow list`: the flow records the hosts reported, newest first.

use tessera_model::FlowRecord;

use super::Ctx;
use crate::table::Table;

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Flows: who talked to whom, how much, and what happened to it.
    List {
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
        /// The most flows shown.
        #[arg(long, default_value_t = 100)]
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

pub async fn run(ctx: &Ctx, cmd: Cmd) -> anyhow::Result<()> {
    let Cmd::List { network, endpoint, host, verdict, src, dst, port, limit } = cmd;
    let mut q: Vec<(String, String)> = vec![("limit".into(), limit.to_string())];
    for (k, v) in [("network", network), ("endpoint", endpoint), ("host", host), ("verdict", verdict), ("src", src), ("dst", dst)]
    {
        if let Some(v) = v {
            q.push((k.into(), v));
        }
    }
    if let Some(p) = port {
        q.push(("port".into(), p.to_string()));
    }
    let query: Vec<String> = q.iter().map(|(k, v)| format!("{k}={}", tessera_api::controller::seg(v))).collect();
    let flows: Vec<FlowRecord> = ctx.client.get(&format!("/v1/flows?{}", query.join("&"))).await?;
    ctx.print(&flows, || {
        let mut t = Table::new(&[
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
        ]);
        for f in &flows {
            t.row(vec![
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
            ]);
        }
        t.render()
    })
}
