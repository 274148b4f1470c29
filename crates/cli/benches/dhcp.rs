//! DHCP benchmark: busybox `udhcpc` in a namespace attached with `--dhcp`,
//! answered by its host's agent, against the same client answered by
//! `dnsmasq` over a plain veth pair, in the same run. Prints the DISCOVER →
//! ACK latency at the client (one `udhcpc -q` run each, process start
//! included for both), p50 and p99 over the runs, and the ratio (goal: p99
//! ≤ 1.0). Then, while a container floods its agent with 1,000 DHCP
//! DISCOVERs a second, how long an attach takes to be programmed, against
//! the same without the flood (goal ≤ 1.2).
//!
//! Run: `cargo bench -p tessera --bench dhcp` (root; needs dnsmasq).

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tessera_testkit::{exec_in, Cluster, ClusterSpec, Netns};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--flood") {
        return flood(args.get(2).context("MAC")?, Duration::from_secs_f64(args.get(3).context("SECS")?.parse()?));
    }
    if args.iter().any(|a| a == "--list") {
        return Ok(());
    }
    let runs: usize = if args.iter().any(|a| a == "--quick") { 20 } else { 100 };
    let dir = tempfile::tempdir()?;
    let prefix = format!("tbd{}", std::process::id() % 100_000);
    let mut c = Cluster::start(ClusterSpec::new(&prefix, &["h1"], env!("CARGO_BIN_EXE_tessera"), dir.path()))
        .context("cannot start a Tessera fabric (root needed)")?;
    let result = run(&mut c, runs);
    if result.is_err() {
        eprintln!("{}", c.logs_tail(20));
    }
    result
}

fn sh(ns: &Netns, args: &[&str]) -> Result<String> {
    let out = exec_in(ns, args[0], &args[1..])?;
    if !out.status.success() {
        bail!("{} in {}: {}", args.join(" "), ns.name(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `udhcpc -q` in `ns`, `runs` times (after one untimed lease, once the
/// server answers): how long each took, sorted.
fn leases(ns: &Netns, runs: usize, server: &str) -> Result<Vec<Duration>> {
    let warm = Instant::now();
    while !exec_in(ns, "busybox", ["udhcpc", "-i", "eth0", "-n", "-q", "-t", "2", "-T", "1", "-s", "/bin/true"])?.status.success()
    {
        if warm.elapsed() > Duration::from_secs(20) {
            bail!("{server} never answered udhcpc");
        }
    }
    let mut took = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let out = exec_in(ns, "busybox", ["udhcpc", "-i", "eth0", "-n", "-q", "-t", "3", "-T", "1", "-s", "/bin/true"])?;
        if !out.status.success() {
            bail!("udhcpc against {server}: {}", String::from_utf8_lossy(&out.stderr));
        }
        took.push(t.elapsed());
    }
    took.sort();
    Ok(took)
}

fn pct(v: &[Duration], p: f64) -> Duration {
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn run(c: &mut Cluster, runs: usize) -> Result<()> {
    c.cli_ok(&["network", "add", "red", "--subnet", "10.77.0.0/24"])?;
    c.container("h1", "client")?;
    c.attach("client", "red", &["--dhcp"])?;
    // The baseline: dnsmasq behind a plain veth pair.
    let server = c.fabric.add_namespace("dnsmasq")?;
    let base = c.fabric.add_namespace("base")?;
    sh(&server, &["ip", "link", "add", "s0", "type", "veth", "peer", "name", "eth0", "netns", base.name()])?;
    sh(&server, &["ip", "addr", "add", "10.78.0.1/24", "dev", "s0"])?;
    sh(&server, &["ip", "link", "set", "s0", "up"])?;
    sh(&base, &["ip", "link", "set", "eth0", "up"])?;
    let mut cmd = Command::new("dnsmasq");
    cmd.args([
        "-k",
        "--port=0",
        "--interface=s0",
        "--bind-interfaces",
        "--dhcp-range=10.78.0.10,10.78.0.200,1h",
        "--dhcp-authoritative",
    ]);
    cmd.arg(format!("--dhcp-leasefile={}", c.spec().run_dir.join("dnsmasq.leases").display()));
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let mut dnsmasq = c.fabric.spawn_in_netns(&server, cmd).context("dnsmasq (install dnsmasq-base)")?;
    std::thread::sleep(Duration::from_millis(500));

    let tessera = leases(c.netns_of("client")?, runs, "the agent")?;
    let baseline = leases(&base, runs, "dnsmasq")?;
    let _ = dnsmasq.kill();
    let _ = dnsmasq.wait();

    // Attach latency with and without a flood of DISCOVERs.
    let attach = |c: &mut Cluster, name: &str| -> Result<Duration> {
        c.container("h1", name)?;
        let t = Instant::now();
        c.attach(name, "red", &[])?;
        Ok(t.elapsed())
    };
    let mut quiet = Vec::new();
    for i in 0..5 {
        quiet.push(attach(c, &format!("q{i}"))?);
    }
    c.container("h1", "flooder")?;
    // Configured by Tessera, so its socket can send before any lease.
    let ep = c.attach("flooder", "red", &[])?;
    let mac = ep["mac"].as_str().context("mac")?.to_string();
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(&exe);
    cmd.args(["--flood", &mac, "30"]).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut flooder = c.fabric.spawn_in_netns(c.netns_of("flooder")?, cmd)?;
    std::thread::sleep(Duration::from_millis(500));
    let mut flooded = Vec::new();
    for i in 0..5 {
        flooded.push(attach(c, &format!("f{i}"))?);
    }
    let _ = flooder.kill();
    let _ = flooder.wait();
    quiet.sort();
    flooded.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;

    println!();
    println!("DHCP: DISCOVER → ACK at the client (udhcpc -q, process start included), {runs} runs each, same run");
    println!("{:<14} {:>10} {:>10}", "", "p50 ms", "p99 ms");
    println!("{:<14} {:>10.1} {:>10.1}", "agent", ms(pct(&tessera, 0.5)), ms(pct(&tessera, 0.99)));
    println!("{:<14} {:>10.1} {:>10.1}", "dnsmasq", ms(pct(&baseline, 0.5)), ms(pct(&baseline, 0.99)));
    println!(
        "ratio (agent ÷ dnsmasq): p50 {:.2}, p99 {:.2} (goal p99 ≤ 1.0)",
        ms(pct(&tessera, 0.5)) / ms(pct(&baseline, 0.5)),
        ms(pct(&tessera, 0.99)) / ms(pct(&baseline, 0.99))
    );
    println!(
        "attach → programmed, median of 5: {:.0} ms quiet, {:.0} ms under a flood of 1,000 DISCOVERs/s: ratio {:.2} (goal ≤ 1.2)",
        ms(quiet[2]),
        ms(flooded[2]),
        ms(flooded[2]) / ms(quiet[2])
    );
    Ok(())
}

/// `--flood MAC SECS`: 1,000 DHCP DISCOVERs a second from `MAC` for SECS.
fn flood(mac: &str, secs: Duration) -> Result<()> {
    let mac: Vec<u8> = mac.split(':').map(|h| u8::from_str_radix(h, 16)).collect::<Result<_, _>>()?;
    let socket = UdpSocket::bind(("0.0.0.0", 68))?;
    socket.set_broadcast(true)?;
    let mut msg = vec![0u8; 240];
    msg[0] = 1; // BOOTREQUEST
    msg[1] = 1;
    msg[2] = 6;
    msg[28..34].copy_from_slice(&mac);
    msg[236..240].copy_from_slice(&[99, 130, 83, 99]);
    msg.extend_from_slice(&[53, 1, 1, 255]);
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < secs {
        msg[4..8].copy_from_slice(&(sent as u32).to_be_bytes());
        let _ = socket.send_to(&msg, ("255.255.255.255", 67));
        sent += 1;
        let due = Duration::from_millis(sent);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    Ok(())
}
