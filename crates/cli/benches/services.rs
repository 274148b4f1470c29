//! Service chaining benchmark, on three hosts: a client in `red` on h1, a
//! server in `green` on h2, network functions (namespaces that forward in
//! the kernel) on h3 and h2. In the same run:
//!
//! 1. iperf3 throughput, one stream, client → server through one instance
//!    (`pass … apply-service fw1`) ÷ the same with a plain `pass` between
//!    the networks (goal ≥ 0.45: two extra hops);
//! 2. failover: with two instances, one dies (its interfaces go down): how
//!    long until new connections succeed again every time (they go to the
//!    other), p50 and p99 over the kills (goal: p99 ≤ 2 s).
//!
//! Run: `cargo bench -p tessera --bench services` (root). `--quick` for short runs.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tessera_testkit::{addresses, exec_in, Cluster, ClusterSpec, Netns};

const IPERF_PORT: u16 = 5201;
const CONN_PORT: u16 = 7201;
/// New connections in a row that must succeed for the chain to count as recovered.
const STREAK: u32 = 10;
/// How long one connection attempt may take.
const ATTEMPT: Duration = Duration::from_millis(150);

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--accept-server") => return accept_server(args.get(2).context("PORT")?.parse()?),
        Some("--recover") => return recover(args.get(2).context("ADDR:PORT")?.parse()?),
        _ => {}
    }
    if args.iter().any(|a| a == "--list") {
        return Ok(());
    }
    let quick = args.iter().any(|a| a == "--quick");
    let dir = tempfile::tempdir()?;
    let prefix = format!("tbs{}", std::process::id() % 100_000);
    let mut c = Cluster::start(ClusterSpec::new(&prefix, &["h1", "h2", "h3"], env!("CARGO_BIN_EXE_tessera"), dir.path()))
        .context("cannot start a Tessera fabric (root needed)")?;
    let result = run(&mut c, quick);
    if result.is_err() {
        eprintln!("{}", c.logs_tail(30));
    }
    result
}

/// Accepts connections and closes them, forever.
fn accept_server(port: u16) -> Result<()> {
    let l = TcpListener::bind(("0.0.0.0", port))?;
    for s in l.incoming() {
        drop(s);
    }
    Ok(())
}

/// Opens new connections to `addr` until [`STREAK`] in a row succeed;
/// prints the seconds from the start to the first of them.
fn recover(addr: SocketAddr) -> Result<()> {
    let start = Instant::now();
    let mut streak_from = None;
    let mut streak = 0;
    while streak < STREAK {
        let t = start.elapsed();
        match TcpStream::connect_timeout(&addr, ATTEMPT) {
            Ok(_) => {
                streak_from.get_or_insert(t);
                streak += 1;
            }
            Err(_) => {
                streak_from = None;
                streak = 0;
            }
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("new connections kept failing for 30 s");
        }
    }
    println!("{}", streak_from.unwrap_or_default().as_secs_f64());
    Ok(())
}

fn sh(ns: &Netns, args: &[&str]) -> Result<String> {
    let out = exec_in(ns, args[0], &args[1..])?;
    if !out.status.success() {
        bail!("{} in {}: {}", args.join(" "), ns.name(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits until service fw1 has `n` healthy instances.
fn wait_healthy(c: &Cluster, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = c.cli_json(&["service", "show", "fw1"])?;
        if v["instances"].as_array().map_or(0, |a| a.iter().filter(|i| i["healthy"] == true).count()) == n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("fw1 never had {n} healthy instances: {v}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn run(c: &mut Cluster, quick: bool) -> Result<()> {
    let secs = if quick { 3 } else { 8 };
    let kills = if quick { 5 } else { 20 };
    c.cli_ok(&["network", "add", "red", "--subnet", "10.95.0.0/24"])?;
    c.cli_ok(&["network", "add", "green", "--subnet", "10.96.0.0/24"])?;
    c.cli_ok(&["service-template", "add", "fw", "--interface", "left", "--interface", "right"])?;
    c.cli_ok(&["service", "add", "fw1", "--template", "fw", "--left", "red", "--right", "green"])?;
    c.container("h1", "client")?;
    c.container("h2", "server")?;
    c.attach("client", "red", &[])?;
    let server = addresses(&c.attach("server", "green", &[])?)[0].clone();
    for (host, name) in [("h3", "vnf-a"), ("h2", "vnf-b")] {
        c.container(host, name)?;
        let ns = c.netns_of(name)?.path().display().to_string();
        let sock = c.agent_socket(host).display().to_string();
        c.cli_on(host, &["service", "add", name, "--service", "fw1", "--netns", &ns, "--socket", &sock], &[])?;
    }
    wait_healthy(c, 2)?;
    c.cli_ok(&["policy", "add", "p", "--rule", "pass any red any <> green any"])?;
    c.cli_ok(&["network", "update", "red", "--policy", "p"])?;
    c.cli_ok(&["network", "update", "green", "--policy", "p"])?;
    thread::sleep(Duration::from_millis(500));

    // 1. Throughput: the plain pass, then through one instance (vnf-b down).
    let iperf = |c: &Cluster| -> Result<f64> {
        let mut cmd = Command::new("iperf3");
        cmd.args(["-s", "-1", "-p", &IPERF_PORT.to_string()]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let mut s = c.fabric.spawn_in_netns(c.netns_of("server")?, cmd)?;
        thread::sleep(Duration::from_millis(300));
        let o = exec_in(
            c.netns_of("client")?,
            "iperf3",
            ["-c", &server, "-p", &IPERF_PORT.to_string(), "-t", &secs.to_string(), "-J"],
        )?;
        let _ = s.kill();
        let _ = s.wait();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        v["end"]["sum_received"]["bits_per_second"].as_f64().map(|b| b / 1e9).context("iperf3 gave no result")
    };
    let plain = iperf(c)?;
    sh(c.netns_of("vnf-b")?, &["ip", "link", "set", "left", "down"])?;
    wait_healthy(c, 1)?;
    c.cli_ok(&["policy", "update", "p", "--rule", "pass any red any <> green any apply-service fw1"])?;
    thread::sleep(Duration::from_millis(500));
    let chained = iperf(c)?;
    sh(c.netns_of("vnf-b")?, &["ip", "link", "set", "left", "up"])?;
    wait_healthy(c, 2)?;

    // 2. Failover: an instance dies; new connections recover on the other.
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(&exe);
    cmd.args(["--accept-server", &CONN_PORT.to_string()]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let mut acceptor = c.fabric.spawn_in_netns(c.netns_of("server")?, cmd)?;
    thread::sleep(Duration::from_millis(200));
    let target = format!("{server}:{CONN_PORT}");
    let mut took = Vec::new();
    for i in 0..kills {
        let victim = if i % 2 == 0 { "vnf-a" } else { "vnf-b" };
        let killed = Instant::now();
        sh(c.netns_of(victim)?, &["ip", "link", "set", "left", "down"])?;
        // From the kill: the time until the client started, then what it measured.
        let before = killed.elapsed();
        let o = exec_in(c.netns_of("client")?, &exe, ["--recover", &target])?;
        if !o.status.success() {
            bail!("kill {i}: {}", String::from_utf8_lossy(&o.stderr));
        }
        let at: f64 = String::from_utf8_lossy(&o.stdout).trim().parse()?;
        took.push(before + Duration::from_secs_f64(at));
        sh(c.netns_of(victim)?, &["ip", "link", "set", "left", "up"])?;
        wait_healthy(c, 2)?;
    }
    let _ = acceptor.kill();
    let _ = acceptor.wait();
    took.sort();
    let pct = |p: f64| took[((took.len() as f64 - 1.0) * p).round() as usize];

    println!();
    println!("service chaining: client (h1) → server (h2), function on h3, same run");
    println!("{:<52} {:>10} {:>10} {:>8}", "", "chained", "plain", "ratio");
    println!("{:<52} {:>10.2} {:>10.2} {:>8.2}", "1. iperf3 one stream (Gbit/s), goal ≥ 0.45", chained, plain, chained / plain);
    println!(
        "2. an instance of two dies → new connections succeed again, {} kills: p50 {:.0} ms, p99 {:.0} ms (goal p99 ≤ 2000 ms; ratio p99 ÷ goal {:.2})",
        took.len(),
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() / 2.0
    );
    Ok(())
}
