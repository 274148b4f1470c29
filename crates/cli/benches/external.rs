//! External access benchmark: an "outside" namespace on a gateway host's
//! uplink reaches a container on another host through its floating IP, and,
//! in the same run, two baselines routed without NAT over the same two
//! hosts: a plain container (veth, the hosts' main tables, the underlay; no
//! overlay) and the same container through the network's tunnel (the
//! gateway routes the outside's packets into the network's table by an `ip
//! rule`; the overlay without the translation). Prints:
//!
//! 1. iperf3 throughput, one stream, outside → container: floating IP ÷ each baseline (goal ≥ 0.65);
//! 2. new TCP connections per second, outside → container: floating IP ÷ each baseline (goal ≥ 0.85);
//! 3. moving the floating IP between two containers: how long until new
//!    connections reach the new one, p50 and p99 over the moves (goal: p99 ≤ 1 s).
//!
//! Run: `cargo bench -p tessera --bench external` (root). `--quick` for short runs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tessera_testkit::{exec_in, Cluster, ClusterSpec, Netns};

const CONN_PORT: u16 = 7101;
const ID_PORT: u16 = 7102;
const IPERF_PORT: u16 = 5201;
const FIP: &str = "203.0.113.10";
const BASE_ADDR: &str = "172.31.1.2";
const BASE_OUT: &str = "198.18.0.1";
const BASE_GW: &str = "198.18.0.2";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--accept-server") => return accept_server(args.get(2).context("PORT")?.parse()?, None),
        Some("--id-server") => {
            return accept_server(args.get(2).context("PORT")?.parse()?, Some(args.get(3).context("ID")?.clone()))
        }
        Some("--connect-client") => {
            return connect_client(
                args.get(2).context("ADDR:PORT")?.parse()?,
                Duration::from_secs_f64(args.get(3).context("SECS")?.parse()?),
            )
        }
        _ => {}
    }
    if args.iter().any(|a| a == "--list") {
        return Ok(());
    }
    let quick = args.iter().any(|a| a == "--quick");
    let dir = tempfile::tempdir()?;
    let prefix = format!("tbx{}", std::process::id() % 100_000);
    let mut c = Cluster::start(ClusterSpec::new(&prefix, &["h1", "g1"], env!("CARGO_BIN_EXE_tessera"), dir.path()))
        .context("cannot start a Tessera fabric (root needed)")?;
    let result = run(&mut c, dir.path(), quick);
    if result.is_err() {
        eprintln!("{}", c.logs_tail(30));
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

fn run(c: &mut Cluster, dir: &std::path::Path, quick: bool) -> Result<()> {
    let secs = if quick { 3 } else { 8 };
    let moves = if quick { 10 } else { 30 };
    // The outside, on g1's uplink (up0) and, for the baseline, on a plain
    // routed link of g1 (up1).
    let out = c.fabric.add_namespace("out")?;
    let g1 = c.host_netns("g1")?.name().to_string();
    sh(&out, &["ip", "link", "add", "o0", "type", "veth", "peer", "name", "up0", "netns", &g1])?;
    sh(&out, &["ip", "link", "add", "o1", "type", "veth", "peer", "name", "up1", "netns", &g1])?;
    sh(&out, &["ip", "addr", "add", "203.0.113.1/24", "dev", "o0"])?;
    sh(&out, &["ip", "addr", "add", &format!("{BASE_OUT}/24"), "dev", "o1"])?;
    for l in ["o0", "o1"] {
        sh(&out, &["ip", "link", "set", l, "up"])?;
    }
    {
        let gns = c.host_netns("g1")?;
        sh(gns, &["ip", "addr", "add", "203.0.113.250/24", "dev", "up0"])?;
        sh(gns, &["ip", "addr", "add", &format!("{BASE_GW}/24"), "dev", "up1"])?;
        for l in ["up0", "up1"] {
            sh(gns, &["ip", "link", "set", l, "up"])?;
        }
    }
    c.cli_ok(&["network", "add", "public", "--external", "--subnet", "203.0.113.0/24"])?;
    c.set_agent_args("g1", &["--gateway", "public=up0"]);
    c.stop_agent("g1");
    c.start_agent("g1")?;
    c.cli_ok(&["network", "add", "red", "--subnet", "10.90.0.0/24"])?;
    let mut ids = Vec::new();
    for name in ["c1", "c2"] {
        c.container("h1", name)?;
        ids.push(c.attach(name, "red", &[])?["id"].as_str().context("endpoint id")?.to_string());
    }
    c.cli_ok(&["floating-ip", "add", "public", "--ip", FIP])?;
    c.cli_ok(&["floating-ip", "associate", FIP, "--endpoint", &ids[0]])?;

    // The baseline container on h1, routed through g1 by the main tables.
    c.container("h1", "b1")?;
    let (h1, b1, gns) = (c.host_netns("h1")?, c.netns_of("b1")?, c.host_netns("g1")?);
    let (h1_ul, g1_ul) = (c.underlay_ip("h1")?.to_string(), c.underlay_ip("g1")?.to_string());
    sh(h1, &["ip", "link", "add", "vb1", "type", "veth", "peer", "name", "eth0", "netns", b1.name()])?;
    sh(h1, &["ip", "link", "set", "vb1", "up"])?;
    sh(h1, &["ip", "route", "add", &format!("{BASE_ADDR}/32"), "dev", "vb1"])?;
    sh(h1, &["ip", "route", "add", "198.18.0.0/24", "via", &g1_ul])?;
    sh(b1, &["ip", "addr", "add", &format!("{BASE_ADDR}/24"), "dev", "eth0"])?;
    sh(b1, &["ip", "link", "set", "eth0", "up"])?;
    sh(b1, &["ip", "route", "add", "default", "dev", "eth0"])?;
    sh(h1, &["sysctl", "-qw", "net.ipv4.conf.vb1.proxy_arp=1"])?;
    sh(gns, &["ip", "route", "add", &format!("{BASE_ADDR}/32"), "via", &h1_ul])?;
    sh(&out, &["ip", "route", "add", "172.31.1.0/24", "via", BASE_GW])?;
    // The overlay without NAT: the gateway routes what comes from the
    // baseline link for the network into its table, and the answers back
    // by its main table (rules of the operator's, not Tessera's).
    let c1_addr = tessera_testkit::addresses(&c.cli_json(&["endpoint", "show", &ids[0]])?)[0].clone();
    let table = (0x10000 + c.cli_json(&["network", "show", "red"])?["network"]["vni"].as_u64().context("vni")?).to_string();
    let vni = c.cli_json(&["network", "show", "red"])?["network"]["vni"].as_u64().context("vni")?;
    for args in [
        vec!["ip", "rule", "add", "iif", "up1", "to", "10.90.0.0/24", "lookup", &table, "pref", "900"],
        vec!["ip", "rule", "add", "to", "198.18.0.0/24", "lookup", "main", "pref", "901"],
    ] {
        sh(gns, &args)?;
    }
    let _ = vni;
    sh(&out, &["ip", "route", "add", "10.90.0.0/24", "via", BASE_GW])?;

    wait("the floating IP and the baseline to answer ping", || {
        [FIP, BASE_ADDR, c1_addr.as_str()]
            .iter()
            .all(|a| exec_in(&out, "ping", ["-c", "1", "-W", "1", a]).map(|o| o.status.success()).unwrap_or(false))
    })?;

    let exe = std::env::current_exe()?;
    let serve = |ns: &Netns, args: &[&str]| -> Result<Child> {
        let mut cmd = Command::new(&exe);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        Ok(c.fabric.spawn_in_netns(ns, cmd)?)
    };

    // 1. Throughput.
    let iperf = |server: &Netns, addr: &str| -> Result<f64> {
        let mut cmd = Command::new("iperf3");
        cmd.args(["-s", "-1", "-p", &IPERF_PORT.to_string()]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let mut s = c.fabric.spawn_in_netns(server, cmd)?;
        thread::sleep(Duration::from_millis(300));
        let o = exec_in(&out, "iperf3", ["-c", addr, "-p", &IPERF_PORT.to_string(), "-t", &secs.to_string(), "-J"])?;
        let _ = s.kill();
        let _ = s.wait();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        v["end"]["sum_received"]["bits_per_second"].as_f64().map(|b| b / 1e9).context("iperf3 gave no result")
    };
    let fip_gbps = iperf(c.netns_of("c1")?, FIP)?;
    let base_gbps = iperf(b1, BASE_ADDR)?;
    let overlay_gbps = iperf(c.netns_of("c1")?, &c1_addr)?;

    // 2. New connections per second.
    let cps = |server: &Netns, addr: &str| -> Result<f64> {
        let mut s = serve(server, &["--accept-server", &CONN_PORT.to_string()])?;
        thread::sleep(Duration::from_millis(200));
        let o = exec_in(&out, &exe, ["--connect-client", &format!("{addr}:{CONN_PORT}"), &secs.to_string()])?;
        let _ = s.kill();
        let _ = s.wait();
        if !o.status.success() {
            bail!("connect client: {}", String::from_utf8_lossy(&o.stderr));
        }
        Ok(String::from_utf8_lossy(&o.stdout).trim().parse()?)
    };
    let fip_cps = cps(c.netns_of("c1")?, FIP)?;
    let base_cps = cps(b1, BASE_ADDR)?;
    let overlay_cps = cps(c.netns_of("c1")?, &c1_addr)?;

    // 3. Moves.
    let mut servers = vec![serve(c.netns_of("c1")?, &["--id-server", &ID_PORT.to_string(), "c1"])?];
    servers.push(serve(c.netns_of("c2")?, &["--id-server", &ID_PORT.to_string(), "c2"])?);
    let target: SocketAddr = format!("{FIP}:{ID_PORT}").parse()?;
    let mut took = Vec::new();
    for i in 0..moves {
        let (to, name) = if i % 2 == 0 { (&ids[1], "c2") } else { (&ids[0], "c1") };
        let start = Instant::now();
        c.cli_ok(&["floating-ip", "associate", FIP, "--endpoint", to, "--move"])?;
        loop {
            if who(&out, target)?.as_deref() == Some(name) {
                break;
            }
            if start.elapsed() > Duration::from_secs(10) {
                bail!("move {i}: {name} not reached after 10 s");
            }
        }
        took.push(start.elapsed());
    }
    for mut s in servers {
        let _ = s.kill();
        let _ = s.wait();
    }
    took.sort();
    let pct = |p: f64| took[((took.len() as f64 - 1.0) * p).round() as usize];
    let _ = dir;

    println!();
    println!("external access: outside → container on another host than the gateway, same run");
    println!("{:<44} {:>12} {:>10} {:>8} {:>16} {:>8}", "", "floating IP", "routed", "ratio", "overlay, no NAT", "ratio");
    println!(
        "{:<44} {:>12.2} {:>10.2} {:>8.2} {:>16.2} {:>8.2}",
        "1. iperf3 one stream (Gbit/s), goal ≥ 0.65",
        fip_gbps,
        base_gbps,
        fip_gbps / base_gbps,
        overlay_gbps,
        fip_gbps / overlay_gbps
    );
    println!(
        "{:<44} {:>12.0} {:>10.0} {:>8.2} {:>16.0} {:>8.2}",
        "2. new connections per second, goal ≥ 0.85",
        fip_cps,
        base_cps,
        fip_cps / base_cps,
        overlay_cps,
        fip_cps / overlay_cps
    );
    println!(
        "3. floating IP move → new connections reach the new endpoint, {} moves: p50 {:.0} ms, p99 {:.0} ms (goal p99 ≤ 1000 ms)",
        took.len(),
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3
    );
    Ok(())
}

fn wait(what: &str, mut f: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if f() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(100));
    }
    bail!("timed out waiting for {what}")
}

/// Connects to `target` from `ns` (through this binary's client, which runs
/// in the outside) and reads the server's name; `None` when refused or
/// silent.
fn who(ns: &Netns, target: SocketAddr) -> Result<Option<String>> {
    let exe = std::env::current_exe()?;
    let o = exec_in(ns, &exe, ["--connect-client", &target.to_string(), "0"])?;
    let text = String::from_utf8_lossy(&o.stdout).trim().to_string();
    Ok(text.strip_prefix("id ").map(str::to_string))
}

/// `--accept-server PORT [ID]`: accepts connections and closes them (after
/// writing `ID`, when given).
fn accept_server(port: u16, id: Option<String>) -> Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port))?;
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        if let Some(id) = &id {
            let _ = conn.write_all(id.as_bytes());
        }
    }
    Ok(())
}

/// `--connect-client ADDR:PORT SECS`: opens and closes connections for
/// SECS and prints how many per second; with 0 seconds, one connection
/// whose first bytes it prints as `id …`.
fn connect_client(addr: SocketAddr, secs: Duration) -> Result<()> {
    if secs.is_zero() {
        let Ok(mut conn) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else { return Ok(()) };
        conn.set_read_timeout(Some(Duration::from_millis(200)))?;
        let mut buf = [0u8; 16];
        let n = conn.read(&mut buf).unwrap_or(0);
        println!("id {}", String::from_utf8_lossy(&buf[..n]));
        return Ok(());
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < secs {
        let conn = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).context("connect")?;
        // Reset on close: no TIME_WAIT piles up on either side.
        socket_linger_zero(&conn);
        drop(conn);
        n += 1;
    }
    println!("{:.1}", n as f64 / start.elapsed().as_secs_f64());
    Ok(())
}

fn socket_linger_zero(conn: &TcpStream) {
    let linger = nix::libc::linger { l_onoff: 1, l_linger: 0 };
    let _ = nix::sys::socket::setsockopt(conn, nix::sys::socket::sockopt::Linger, &linger);
}
