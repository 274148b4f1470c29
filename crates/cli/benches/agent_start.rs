//! Agent start benchmark: an agent restarted on a host whose data plane is
//! already programmed adopts it instead of rebuilding it.
//!
//! The fabric is the test kit's (hosts h1 and h2 as namespaces, the real
//! controller and agents). The agent of h1 is restarted (SIGTERM, then
//! started again) first with one endpoint on the host (the baseline), then
//! with 1,000 endpoints and a network with 50,000 policy rules (five
//! policies of 10,000); each time, from its start until it reports its first
//! reconcile through `tessera status`, and what that reconcile changed in
//! the kernel (from its log). Goals: ready within 2 s with no kernel change;
//! the agent's RSS with 1,000 endpoints and 50,000 rules ≤ 150 MB.
//! `--endpoints N` for another count. Needs root, iproute2 and nftables.

use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tessera_testkit::Cluster;

const NETWORK: &str = "start";
const POLICIES: usize = 5;
const RULES_PER_POLICY: usize = 10_000;
const WORKERS: usize = 16;

/// A restart of h1's agent: how long until its first reconcile, what that
/// reconcile planned, and the agent's memory then.
struct Restart {
    ready: Duration,
    planned: usize,
    rss_mb: f64,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return Ok(()); // `cargo test --benches` asks benches to list tests; there are none.
    }
    let endpoints = args
        .iter()
        .position(|a| a == "--endpoints")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse::<usize>())
        .transpose()?
        .unwrap_or(1_000);
    let (mut c, _run) = tessera_testkit::start_cluster("tas", &["h1", "h2"], env!("CARGO_BIN_EXE_tessera"));
    c.cli_ok(&["network", "add", NETWORK, "--subnet", "10.50.0.0/20"])?;
    c.container("h1", "first")?;
    c.attach("first", NETWORK, &[])?;
    let baseline = restart(&mut c)?;
    eprintln!(
        "baseline (1 endpoint): ready in {:?}, {} changes, RSS {:.0} MB",
        baseline.ready, baseline.planned, baseline.rss_mb
    );

    for p in 0..POLICIES {
        let rules: Vec<String> = (0..RULES_PER_POLICY)
            .map(|i| format!("pass tcp 10.50.0.0/20 any > 10.60.0.0/16 {}", p * RULES_PER_POLICY + i + 1))
            .collect();
        let mut args = vec!["policy".to_owned(), "add".into(), format!("big{p}")];
        for r in rules {
            args.push("--rule".into());
            args.push(r);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        c.cli_ok(&args)?;
        c.cli_ok(&["network", "update", NETWORK, "--policy", &format!("big{p}")])?;
    }
    fill(&mut c, endpoints)?;
    // Let the agent settle what the fill asked before it is restarted.
    thread::sleep(Duration::from_secs(3));
    let full = restart(&mut c)?;
    eprintln!(
        "{endpoints} endpoints, 50,000 rules: ready in {:?}, {} changes, RSS {:.0} MB",
        full.ready, full.planned, full.rss_mb
    );

    println!(
        "agent restart → ready with {endpoints} endpoints and {} policy rules: {} ms, {} kernel changes; baseline 1 endpoint {} ms, {} changes; ratio {:.2} (goal ≤ 2000 ms, no change)",
        POLICIES * RULES_PER_POLICY,
        full.ready.as_millis(),
        full.planned,
        baseline.ready.as_millis(),
        baseline.planned,
        full.ready.as_secs_f64() / baseline.ready.as_secs_f64()
    );
    println!(
        "agent RSS with {endpoints} endpoints and {} rules: {:.0} MB; baseline 1 endpoint {:.0} MB; ratio {:.1} (goal ≤ 150 MB)",
        POLICIES * RULES_PER_POLICY,
        full.rss_mb,
        baseline.rss_mb,
        full.rss_mb / baseline.rss_mb
    );
    Ok(())
}

/// Restarts h1's agent and waits for its first reconcile.
fn restart(c: &mut Cluster) -> Result<Restart> {
    let log = c.log("agent-h1");
    c.stop_agent("h1");
    let before = std::fs::read_to_string(&log).unwrap_or_default().len();
    let t = Instant::now();
    c.start_agent("h1")?;
    let sock = c.agent_socket("h1").display().to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = c.tessera_on("h1", &["status", "--socket", &sock, "--json"], &[])?;
        if out.status.success() {
            let s: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            if s["reconciles"].as_u64().unwrap_or(0) >= 1 {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!("the agent of h1 made no reconcile within 120 s:\n{}", c.logs_tail(30));
        }
        thread::sleep(Duration::from_millis(20));
    }
    let ready = t.elapsed();
    let text = std::fs::read_to_string(&log)?;
    // The log is the new agent's alone when its start truncated the file.
    let after = if text.len() < before { text.as_str() } else { text.get(before..).unwrap_or_default() };
    // A reconcile that changes nothing logs no plan (only at debug level).
    let planned = after
        .lines()
        .filter(|l| l.contains("plan applied"))
        .filter_map(|l| l.split("planned=").nth(1))
        .filter_map(|v| v.split(|ch: char| !ch.is_ascii_digit()).next())
        .filter_map(|n| n.parse::<usize>().ok())
        .sum();
    Ok(Restart { ready, planned, rss_mb: rss_mb(&sock)? })
}

/// The resident memory of the agent serving `socket`, in MB.
fn rss_mb(socket: &str) -> Result<f64> {
    for entry in std::fs::read_dir("/proc")? {
        let path = entry?.path();
        let Ok(cmdline) = std::fs::read(path.join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(" agent ") && cmdline.contains(socket) {
            let status = std::fs::read_to_string(path.join("status"))?;
            let kb: f64 = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .context("no VmRSS")?;
            return Ok(kb / 1024.0);
        }
    }
    bail!("no agent process serves {socket}")
}

/// Attaches containers on h1 until it holds `total` endpoints.
fn fill(c: &mut Cluster, total: usize) -> Result<()> {
    let names: Vec<String> = (1..total).map(|i| format!("f{i}")).collect();
    for n in &names {
        c.container("h1", n)?;
    }
    let t = Instant::now();
    c.attach_all(&names, NETWORK, WORKERS)?;
    eprintln!("{} endpoints attached on h1 in {:.1?}", names.len(), t.elapsed());
    Ok(())
}
