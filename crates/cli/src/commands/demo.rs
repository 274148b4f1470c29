//! `tessera demo`: the seeds' scenario on a fabric of namespaces on this machine.
//!
//! Hosts `h1` and `h2` are network namespaces on an underlay bridge; the
//! controller runs on `h1`, an agent on each host; containers are namespaces.
//! Networks `red` and `green` get a container on each host; containers of one
//! network reach each other across hosts over VXLAN, and red and green stay
//! isolated. Every step prints what it did and whether it worked.

use std::path::PathBuf;

use anyhow::{bail, Context};
use tessera_fabric::cluster::{addresses, Cluster, ClusterSpec};
use tessera_fabric::{exec_in, Fabric};

/// Prefix of every namespace the demo makes.
pub const PREFIX: &str = "tdemo";
/// Where the demo keeps the controller's store, the agents' sockets and the logs.
pub const RUN_DIR: &str = "/run/tessera-demo";

#[derive(clap::Args)]
pub struct Args {
    /// Leave the fabric running and print the commands to explore it.
    #[arg(long)]
    keep: bool,
    #[command(subcommand)]
    action: Option<Action>,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Remove everything a kept demo made.
    Down,
}

struct Step {
    n: usize,
    total: usize,
    failures: usize,
}

impl Step {
    fn start(&mut self, what: &str) {
        self.n += 1;
        print!("[{}/{}] {what} ... ", self.n, self.total);
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }

    fn ok(&self, result: &str) {
        println!("ok: {result}");
    }

    fn check(&mut self, passed: bool, result: &str) {
        if passed {
            println!("ok: {result}");
        } else {
            self.failures += 1;
            println!("FAILED: {result}");
        }
    }
}

fn exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("cannot find the tessera binary")
}

pub fn down() -> anyhow::Result<()> {
    let report = Fabric::teardown_prefix(PREFIX)?;
    let _ = std::fs::remove_dir_all(RUN_DIR);
    println!(
        "demo removed: {} processes stopped, {} namespaces deleted",
        report.processes_stopped.len(),
        report.namespaces_deleted.len()
    );
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(Action::Down) = args.action {
        return down();
    }
    Fabric::preflight().context("this machine cannot run the demo fabric")?;
    if !Fabric::scan_prefix(PREFIX)?.is_empty() {
        println!("removing the previous demo fabric ({PREFIX}-*)");
        down()?;
    }
    let run_dir = PathBuf::from(RUN_DIR);
    let _ = std::fs::remove_dir_all(&run_dir);
    let mut step = Step { n: 0, total: 8, failures: 0 };
    println!("Tessera demo: two hosts on this machine, networks red and green, containers on both hosts.\n");

    step.start("fabric: hosts h1 and h2 as network namespaces on an underlay bridge; controller on h1, an agent on each host");
    let mut cluster = Cluster::start(ClusterSpec::new(PREFIX, &["h1", "h2"], exe()?, &run_dir))?;
    let (ip1, ip2) = (cluster.underlay_ip("h1")?, cluster.underlay_ip("h2")?);
    step.ok(&format!("h1 {ip1}, h2 {ip2}; controller {}; both hosts registered", cluster.url));

    step.start("networks red 192.168.10.0/24 + fd00:10::/64 and green 192.168.20.0/24");
    cluster.cli_ok(&["network", "add", "red", "--subnet", "192.168.10.0/24", "--subnet", "fd00:10::/64"])?;
    cluster.cli_ok(&["network", "add", "green", "--subnet", "192.168.20.0/24"])?;
    step.ok("created");

    step.start("containers red1, green1 on h1 and red2, green2 on h2, attached with tessera attach");
    let mut addrs = std::collections::BTreeMap::new();
    for (name, host, network) in
        [("red1", "h1", "red"), ("red2", "h2", "red"), ("green1", "h1", "green"), ("green2", "h2", "green")]
    {
        cluster.container(host, name)?;
        let ep = cluster.attach(name, network, &[])?;
        addrs.insert(name, addresses(&ep));
    }
    step.ok(&addrs.iter().map(|(n, a)| format!("{n} {}", a.join(" "))).collect::<Vec<_>>().join(", "));

    let check_ping = |step: &mut Step, from: &str, to: &str, family: usize| -> anyhow::Result<()> {
        let dst = addrs[to].get(family).cloned().unwrap_or_default();
        let got = cluster.ping(from, &dst, 3)?;
        step.check(got == 3, &format!("{got}/3 replies from {dst}: {}", if got == 3 { "reachable" } else { "NOT reachable" }));
        Ok(())
    };
    step.start("red1 (h1) -> red2 (h2), IPv4 across hosts over VXLAN");
    check_ping(&mut step, "red1", "red2", 0)?;
    step.start("red1 (h1) -> red2 (h2), IPv6 across hosts over VXLAN");
    check_ping(&mut step, "red1", "red2", 1)?;
    step.start("green2 (h2) -> green1 (h1)");
    check_ping(&mut step, "green2", "green1", 0)?;
    step.start("red1 -> green1 (same host) and red1 -> green2 (other host): different networks");
    let g1 = cluster.ping("red1", &addrs["green1"][0], 2)?;
    let g2 = cluster.ping("red1", &addrs["green2"][0], 2)?;
    step.check(g1 + g2 == 0, &format!("{}/4 replies: {}", g1 + g2, if g1 + g2 == 0 { "isolated" } else { "NOT isolated" }));
    step.start("interface table of h1 (tessera vif list)");
    let vifs: serde_json::Value = {
        let sock = cluster.agent_socket("h1").display().to_string();
        let out = exec_in(cluster.host_netns("h1")?, exe()?, ["vif", "list", "--socket", &sock, "--json"])?;
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    };
    let kinds: Vec<String> = vifs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| Some(format!("{} ({})", v["name"].as_str()?, v["kind"].as_str()?)))
        .collect();
    step.check(!kinds.is_empty(), &kinds.join(", "));

    println!();
    if args.keep {
        cluster.fabric.keep();
        let admin = cluster.credential_args("admin").join(" ");
        std::mem::forget(cluster);
        let bin = exe()?.display().to_string();
        println!("The fabric is still running. Explore it:");
        println!("  ip netns exec {PREFIX}-h1 {bin} --controller https://{ip1}:8082 {admin} network show red");
        println!("  {bin} vif list --socket {RUN_DIR}/h1/agent.sock");
        println!("  ip netns exec {PREFIX}-h1-red1 ping {}", addrs["red2"][0]);
        println!("  ip netns exec {PREFIX}-h1 tcpdump -ni eth0 udp port 4789");
        println!("  logs: {RUN_DIR}/*.log");
        println!("Remove it with: {bin} demo down");
    }
    if step.failures > 0 {
        bail!("{} of {} steps failed; logs are in {RUN_DIR}", step.failures, step.total);
    }
    println!("demo passed: containers of one network reach each other across hosts; networks are isolated");
    if !args.keep {
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    Ok(())
}
