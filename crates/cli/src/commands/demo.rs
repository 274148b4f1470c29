//! `tessera demo`: the seeds' scenario on a fabric of namespaces on this machine.
//!
//! Hosts `h1` and `h2` are network namespaces on an underlay bridge; the
//! controller runs on `h1`, an agent on each host; containers are namespaces.
//! Networks `red` and `green` get a container on each host; containers of one
//! network reach each other across hosts over VXLAN, and red and green stay
//! isolated. Every step prints what it did and whether it worked.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tessera_fabric::{exec_in, Fabric, FabricSpec, Netns};

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

/// Runs the tessera CLI inside `ns` and returns its stdout, failing with its stderr.
fn tessera_in(ns: &Netns, args: &[&str]) -> anyhow::Result<String> {
    let out = exec_in(ns, exe()?, args).with_context(|| format!("cannot run tessera {}", args.join(" ")))?;
    if !out.status.success() {
        bail!("tessera {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Pings `dst` from `ns`; returns the number of replies out of `count`.
fn ping(ns: &Netns, dst: &str, count: u32) -> anyhow::Result<u32> {
    let out = exec_in(ns, "ping", ["-c", &count.to_string(), "-i", "0.2", "-W", "1", dst])
        .context("cannot run ping (install iputils-ping)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .find_map(|l| l.split(", ").find_map(|p| p.strip_suffix(" received").and_then(|n| n.parse().ok())))
        .unwrap_or(0))
}

fn spawn_logged(fabric: &Fabric, host: &str, args: &[&str], log: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut cmd = Command::new(exe()?);
    cmd.args(args).stdin(Stdio::null()).stdout(file.try_clone()?).stderr(file).env("TESSERA_LOG", "info");
    fabric.spawn(host, cmd)?;
    Ok(())
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
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
    std::fs::create_dir_all(&run_dir)?;
    let mut step = Step { n: 0, total: 9, failures: 0 };
    println!("Tessera demo: two hosts on this machine, networks red and green, containers on both hosts.\n");

    step.start("fabric: underlay bridge and hosts h1, h2 as network namespaces");
    let mut fabric = Fabric::build(FabricSpec::new(PREFIX, ["h1", "h2"]))?;
    let h1 = fabric.host("h1")?;
    let h2 = fabric.host("h2")?;
    let (ip1, ip2) = (h1.underlay_ip.to_string(), h2.underlay_ip.to_string());
    step.ok(&format!("h1 {ip1}, h2 {ip2} on {}", fabric.underlay()));

    step.start("controller on h1");
    let url = format!("http://{ip1}:8082");
    let data = run_dir.join("controller");
    spawn_logged(
        &fabric,
        "h1",
        &["controller", "--data-dir", data.to_str().unwrap_or(RUN_DIR), "--listen", &format!("{ip1}:8082")],
        &run_dir.join("controller.log"),
    )?;
    let h1ns = &fabric.host("h1")?.netns;
    wait_until("the controller", Duration::from_secs(20), || tessera_in(h1ns, &["--controller", &url, "host", "list"]).is_ok())?;
    step.ok(&format!("serving {url}"));

    step.start("agents on h1 and h2");
    for (h, ip) in [("h1", &ip1), ("h2", &ip2)] {
        let dir = run_dir.join(h);
        std::fs::create_dir_all(&dir)?;
        let sock = dir.join("agent.sock");
        spawn_logged(
            &fabric,
            h,
            &[
                "--controller",
                &url,
                "agent",
                "--host",
                h,
                "--underlay-ip",
                ip,
                "--socket",
                sock.to_str().unwrap_or_default(),
                "--state-dir",
                dir.to_str().unwrap_or_default(),
            ],
            &run_dir.join(format!("agent-{h}.log")),
        )?;
    }
    wait_until("both hosts to register", Duration::from_secs(20), || {
        tessera_in(h1ns, &["--controller", &url, "host", "list", "--json"])
            .ok()
            .and_then(|o| serde_json::from_str::<serde_json::Value>(&o).ok())
            .and_then(|v| v.as_array().map(|a| a.len()))
            == Some(2)
    })?;
    step.ok("h1 and h2 registered");

    step.start("networks red 192.168.10.0/24 and green 192.168.20.0/24");
    tessera_in(
        h1ns,
        &["--controller", &url, "network", "add", "red", "--subnet", "192.168.10.0/24", "--subnet", "fd00:10::/64"],
    )?;
    tessera_in(h1ns, &["--controller", &url, "network", "add", "green", "--subnet", "192.168.20.0/24"])?;
    step.ok("created");

    step.start("containers red1, green1 on h1 and red2, green2 on h2, attached");
    let mut addrs = std::collections::BTreeMap::new();
    let mut containers = std::collections::BTreeMap::new();
    for (name, host, network) in
        [("red1", "h1", "red"), ("red2", "h2", "red"), ("green1", "h1", "green"), ("green2", "h2", "green")]
    {
        let c = fabric.add_container(host, name)?;
        let sock = run_dir.join(host).join("agent.sock");
        let out = tessera_in(
            &fabric.host(host)?.netns,
            &[
                "attach",
                "--network",
                network,
                "--netns",
                c.netns.path().to_str().unwrap_or_default(),
                "--socket",
                sock.to_str().unwrap_or_default(),
                "--json",
            ],
        )?;
        let ep: serde_json::Value = serde_json::from_str(&out)?;
        let ips: Vec<String> = ep["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
            .map(|s| s.split('/').next().unwrap_or(s).to_string())
            .collect();
        addrs.insert(name, ips);
        containers.insert(name, c);
    }
    step.ok(&addrs.iter().map(|(n, a)| format!("{n} {}", a.join(" "))).collect::<Vec<_>>().join(", "));

    let check_ping = |step: &mut Step, from: &str, to: &str, family: usize, expect: bool| -> anyhow::Result<()> {
        let dst = addrs[to].get(family).cloned().unwrap_or_default();
        let got = ping(&containers[from].netns, &dst, 3)?;
        let passed = if expect { got == 3 } else { got == 0 };
        let verdict = if expect { "reachable" } else { "isolated" };
        step.check(passed, &format!("{got}/3 replies from {dst}: {}", if passed { verdict } else { "unexpected" }));
        Ok(())
    };
    step.start("red1 (h1) -> red2 (h2), IPv4 across hosts over VXLAN");
    check_ping(&mut step, "red1", "red2", 0, true)?;
    step.start("red1 (h1) -> red2 (h2), IPv6 across hosts over VXLAN");
    check_ping(&mut step, "red1", "red2", 1, true)?;
    step.start("green2 (h2) -> green1 (h1)");
    check_ping(&mut step, "green2", "green1", 0, true)?;
    step.start("red1 (h1) -> green1 (h1) and red1 -> green2 (h2): different networks");
    let g1 = ping(&containers["red1"].netns, &addrs["green1"][0], 2)?;
    let g2 = ping(&containers["red1"].netns, &addrs["green2"][0], 2)?;
    step.check(g1 == 0 && g2 == 0, &format!("{}/4 replies: {}", g1 + g2, if g1 + g2 == 0 { "isolated" } else { "NOT isolated" }));

    println!();
    if args.keep {
        fabric.keep();
        let sock1 = run_dir.join("h1/agent.sock");
        println!("The fabric is still running. Explore it:");
        println!("  ip netns exec {PREFIX}-h1 {} --controller {url} network show red", exe()?.display());
        println!("  {} vif list --socket {}", exe()?.display(), sock1.display());
        println!("  ip netns exec {PREFIX}-h1-red1 ping {}", addrs["red2"][0]);
        println!("  ip netns exec {PREFIX}-h1 tcpdump -ni eth0 udp port 4789");
        println!("  logs: {RUN_DIR}/*.log");
        println!("Remove it with: {} demo down", exe()?.display());
    }
    if step.failures > 0 {
        bail!("{} of {} steps failed; logs are in {RUN_DIR}", step.failures, step.total);
    }
    println!("demo passed: containers of one network reach each other across hosts; networks are isolated");
    if !args.keep {
        drop(fabric);
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    Ok(())
}
