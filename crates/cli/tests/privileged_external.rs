//! Privileged tier: external access with real packets. An "outside"
//! namespace sits on the uplinks of two gateway hosts (not on the
//! underlay); containers on a third host are reached from it through
//! floating IPs (IPv4 and IPv6) and reach it with their floating IP or their
//! network's SNAT address as source; a network without either reaches
//! nothing outside, and nothing outside reaches a container but through its
//! floating IP. Moving a floating IP, two projects with the same private
//! subnet, a gateway whose agent is killed, and the refusals of a bad
//! gateway. Needs root; fails with the reason when it cannot run.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use tessera_testkit::{addresses, exec_in, Cluster, Netns};

const OUTSIDE4: &str = "203.0.113.1";
const OUTSIDE6: &str = "2001:db8:ff::1";

fn run(ns: &Netns, args: &[&str]) {
    let out = exec_in(ns, args[0], &args[1..]).unwrap_or_else(|e| panic!("{}: {e}", args.join(" ")));
    assert!(out.status.success(), "{} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// The outside: a bridge holding the external network's gateway addresses,
/// with a veth to each gateway host, whose end there is `up0` (with an
/// address of the external network, as an operator gives an uplink).
fn outside(c: &Cluster, gateways: &[&str]) -> Netns {
    let out = c.fabric.add_namespace("out").expect("outside namespace");
    run(&out, &["ip", "link", "add", "br0", "type", "bridge"]);
    run(&out, &["ip", "link", "set", "br0", "up"]);
    run(&out, &["ip", "addr", "add", &format!("{OUTSIDE4}/24"), "dev", "br0"]);
    run(&out, &["ip", "-6", "addr", "add", &format!("{OUTSIDE6}/64"), "dev", "br0", "nodad"]);
    for (i, g) in gateways.iter().enumerate() {
        let host = c.host_netns(g).unwrap();
        let peer = format!("g{i}");
        run(&out, &["ip", "link", "add", &peer, "type", "veth", "peer", "name", "up0", "netns", host.name()]);
        run(&out, &["ip", "link", "set", &peer, "master", "br0", "up"]);
        run(host, &["ip", "link", "set", "up0", "up"]);
        run(host, &["ip", "addr", "add", &format!("203.0.113.{}/24", 250 + i), "dev", "up0"]);
        run(host, &["ip", "-6", "addr", "add", &format!("2001:db8:ff::{}/64", 250 + i), "dev", "up0", "nodad"]);
    }
    out
}

/// Serves `http://ADDR:8080/who` (answers `name`) and `/cgi-bin/peer` (the
/// client's address as the server sees it) in `ns`, with busybox httpd.
fn serve(c: &Cluster, dir: &Path, ns: &Netns, name: &str) -> Server {
    let root = dir.join(format!("www-{name}"));
    std::fs::create_dir_all(root.join("cgi-bin")).unwrap();
    std::fs::write(root.join("who"), format!("{name}\n")).unwrap();
    let cgi = root.join("cgi-bin/peer");
    std::fs::write(&cgi, "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n%s\\n' \"$REMOTE_ADDR\"\n").unwrap();
    std::fs::set_permissions(&cgi, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut cmd = std::process::Command::new("busybox");
    cmd.args(["httpd", "-f", "-p", "8080", "-h"]).arg(&root);
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    Server(c.fabric.spawn_in_netns(ns, cmd).expect("busybox httpd (install busybox-static)"))
}

/// A server process, stopped and reaped on drop.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What `url` answers from `ns`, trimmed (a client address without the
/// brackets and the IPv4-mapped prefix busybox httpd gives it); `None` when
/// nothing does within 2 s.
fn http(ns: &Netns, url: &str) -> Option<String> {
    let out = exec_in(ns, "curl", ["-s", "-g", "-m", "2", url]).expect("curl (install curl)");
    let text = String::from_utf8_lossy(&out.stdout).trim().trim_start_matches('[').trim_end_matches(']').to_string();
    out.status.success().then(|| text.strip_prefix("::ffff:").map(str::to_string).unwrap_or(text))
}

/// Waits up to `within` for `f` to hold; how long it took.
fn until(what: &str, within: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < within {
        if f() {
            return start.elapsed();
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {within:?} waiting for {what}");
}

fn url(addr: &str, path: &str) -> String {
    if addr.contains(':') {
        format!("http://[{addr}]:8080/{path}")
    } else {
        format!("http://{addr}:8080/{path}")
    }
}

/// Restarts the agents of `gateways` as gateways of `public` on `up0` and
/// waits until the controller holds them alive.
fn make_gateways(c: &mut Cluster, gateways: &[&str]) {
    for g in gateways {
        c.set_agent_args(g, &["--gateway", "public=up0"]);
        c.stop_agent(g);
        c.start_agent(g).unwrap();
    }
    until("the gateways to be alive", Duration::from_secs(15), || {
        let hosts = c.cli_json(&["host", "list"]).unwrap_or_default();
        gateways.iter().all(|g| {
            hosts.as_array().into_iter().flatten().any(|h| h["name"] == *g && h["alive"] == true && h["gateways"].is_array())
        })
    });
}

/// The gateway whose uplink answers for `addr` (holds its proxy entry).
fn carrier(c: &Cluster, gateways: &[&str], addr: &str) -> Option<String> {
    gateways
        .iter()
        .find(|g| {
            let out = exec_in(c.host_netns(g).unwrap(), "ip", ["neigh", "show", "proxy", "dev", "up0"]).unwrap();
            String::from_utf8_lossy(&out.stdout).lines().any(|l| l.split_whitespace().next() == Some(addr))
        })
        .map(|g| g.to_string())
}

#[test]
fn privileged_floating_ips_snat_moves_and_isolation() {
    let (mut c, run_dir) = tessera_testkit::start_cluster("tfx", &["h1", "g1", "g2"], env!("CARGO_BIN_EXE_tessera"));
    let dir = run_dir.dir.path().to_path_buf();
    c.cli_ok(&["network", "add", "public", "--external", "--subnet", "203.0.113.0/24", "--subnet", "2001:db8:ff::/64"]).unwrap();
    let out = outside(&c, &["g1", "g2"]);
    make_gateways(&mut c, &["g1", "g2"]);
    let mut servers = vec![serve(&c, &dir, &out, "out")];

    c.cli_ok(&["network", "add", "red", "--subnet", "10.71.0.0/24", "--subnet", "fd00:71::/64"]).unwrap();
    for name in ["c1", "c2"] {
        c.container("h1", name).unwrap();
    }
    let e1 = c.attach("c1", "red", &[]).unwrap();
    let e2 = c.attach("c2", "red", &[]).unwrap();
    let (id1, id2) = (e1["id"].as_str().unwrap().to_string(), e2["id"].as_str().unwrap().to_string());
    let a2 = addresses(&e2);
    for name in ["c1", "c2"] {
        servers.push(serve(&c, &dir, c.netns_of(name).unwrap(), name));
    }

    // Floating IPs, IPv4 and IPv6, on c1.
    for ip in ["203.0.113.10", "2001:db8:ff::10"] {
        c.cli_ok(&["floating-ip", "add", "public", "--ip", ip]).unwrap();
        c.cli_ok(&["floating-ip", "associate", ip, "--endpoint", &id1]).unwrap();
    }
    until("the outside to reach c1 by its floating IP", Duration::from_secs(10), || {
        http(&out, &url("203.0.113.10", "who")).as_deref() == Some("c1")
    });
    assert_eq!(http(&out, &url("203.0.113.10", "cgi-bin/peer")).as_deref(), Some(OUTSIDE4), "c1 sees the outside's address");
    assert_eq!(tessera_testkit::ping_in(&out, "203.0.113.10", 3).unwrap(), 3, "the outside pings the floating IP");
    // The carrying gateway's interface table shows its uplink and counts the floating IP both ways.
    let g = carrier(&c, &["g1", "g2"], "203.0.113.10").expect("a gateway answers for the floating IP");
    let sock = c.agent_socket(&g).display().to_string();
    let vifs = c.tessera_on(&g, &["vif", "list", "--socket", &sock, "--json"], &[]).unwrap();
    let vifs: serde_json::Value = serde_json::from_slice(&vifs.stdout).unwrap();
    let up = vifs.as_array().unwrap().iter().find(|v| v["name"] == "up0").expect("up0 in the interface table");
    assert_eq!(up["kind"], "uplink", "{up}");
    let fip =
        up["translations"].as_array().unwrap().iter().find(|t| t["external"] == "203.0.113.10").expect("the floating IP").clone();
    assert_eq!(fip["fixed"], addresses(&e1)[0].as_str(), "{fip}");
    assert!(fip["in_packets"].as_u64() >= Some(3) && fip["out_packets"].as_u64() >= Some(3), "{fip}");
    until("the outside to reach c1 by its IPv6 floating IP", Duration::from_secs(10), || {
        http(&out, &url("2001:db8:ff::10", "who")).as_deref() == Some("c1")
    });
    assert_eq!(http(&out, &url("2001:db8:ff::10", "cgi-bin/peer")).as_deref(), Some(OUTSIDE6));
    assert_eq!(
        http(c.netns_of("c1").unwrap(), &url(OUTSIDE4, "cgi-bin/peer")).as_deref(),
        Some("203.0.113.10"),
        "c1 reaches the outside with its floating IP as source"
    );
    assert_eq!(http(c.netns_of("c1").unwrap(), &url(OUTSIDE6, "cgi-bin/peer")).as_deref(), Some("2001:db8:ff::10"));

    // An endpoint on a gateway host works as on any host.
    c.container("g2", "c4").unwrap();
    let e4 = c.attach("c4", "red", &[]).unwrap();
    servers.push(serve(&c, &dir, c.netns_of("c4").unwrap(), "c4"));
    c.cli_ok(&["floating-ip", "add", "public", "--ip", "203.0.113.40"]).unwrap();
    c.cli_ok(&["floating-ip", "associate", "203.0.113.40", "--endpoint", e4["id"].as_str().unwrap()]).unwrap();
    until("the outside to reach c4 on a gateway host", Duration::from_secs(10), || {
        http(&out, &url("203.0.113.40", "who")).as_deref() == Some("c4")
    });
    assert_eq!(http(c.netns_of("c4").unwrap(), &url(OUTSIDE4, "cgi-bin/peer")).as_deref(), Some("203.0.113.40"));
    assert_eq!(http(c.netns_of("c4").unwrap(), &url(&addresses(&e1)[0], "who")).as_deref(), Some("c1"), "and its network");

    // c2 has no floating IP and red no SNAT: nothing outside, and nothing
    // from outside, even routed at a gateway by its private address.
    assert_eq!(http(c.netns_of("c2").unwrap(), &url(OUTSIDE4, "who")), None, "without SNAT nothing outside is reached");
    run(&out, &["ip", "route", "add", "10.71.0.0/24", "via", "203.0.113.250"]);
    run(&out, &["ip", "route", "add", "10.71.1.0/24", "via", "203.0.113.251"]);
    assert_eq!(http(&out, &url(&a2[0], "who")), None, "the outside reaches no private address");

    // SNAT: blue reaches the outside with its SNAT address, and is not reached.
    c.cli_ok(&["network", "add", "blue", "--subnet", "10.72.0.0/24"]).unwrap();
    let blue = c.cli_json(&["network", "update", "blue", "--snat", "public"]).unwrap();
    let snat = blue["snat"]["addresses"][0].as_str().expect("blue's SNAT address").to_string();
    c.container("h1", "c3").unwrap();
    c.attach("c3", "blue", &[]).unwrap();
    servers.push(serve(&c, &dir, c.netns_of("c3").unwrap(), "c3"));
    until("c3 to reach the outside through SNAT", Duration::from_secs(10), || {
        http(c.netns_of("c3").unwrap(), &url(OUTSIDE4, "cgi-bin/peer")).as_deref() == Some(snat.as_str())
    });
    assert_eq!(http(&out, &url(&snat, "who")), None, "a SNAT address lets nothing in");

    // A connection through the floating IP, open while it moves.
    let mut cmd = std::process::Command::new("busybox");
    cmd.args(["nc", "-l", "-p", "9000"]).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::null());
    let held = Server(c.fabric.spawn_in_netns(c.netns_of("c1").unwrap(), cmd).expect("busybox nc"));
    thread::sleep(Duration::from_millis(300));
    let mut old =
        tessera_fabric::run_in(&out, || std::net::TcpStream::connect("203.0.113.10:9000")).unwrap().expect("connect to c1");
    std::io::Write::write_all(&mut old, b"before\n").expect("the connection works before the move");

    // Moving the floating IP: new connections reach c2.
    c.cli_ok(&["floating-ip", "associate", "203.0.113.10", "--endpoint", &id2, "--move"]).unwrap();
    let took = until("the moved floating IP to reach c2", Duration::from_secs(10), || {
        http(&out, &url("203.0.113.10", "who")).as_deref() == Some("c2")
    });
    println!("floating IP move: new connections reach the new endpoint after {} ms", took.as_millis());
    // The old flow stops (the gateway ends it just after the move): what
    // it sends then meets c2, which resets it.
    old.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let wrote = std::io::Write::write_all(&mut old, b"after\n");
        let mut buf = [0u8; 8];
        let read = std::io::Read::read(&mut old, &mut buf);
        let reset = |r: &std::io::Result<()>| matches!(r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset || e.kind() == std::io::ErrorKind::BrokenPipe);
        if reset(&wrote) || matches!(read, Err(ref e) if e.kind() == std::io::ErrorKind::ConnectionReset) {
            break;
        }
        assert!(Instant::now() < deadline, "the old flow goes on: {read:?}");
    }
    drop(held);
    c.cli_ok(&["floating-ip", "disassociate", "203.0.113.10"]).unwrap();
    until("the disassociated floating IP to reach nothing", Duration::from_secs(10), || {
        http(&out, &url("203.0.113.10", "who")).is_none()
    });

    // Two projects with the same private subnet. The external network is
    // the admin project's: usable by others once shared.
    c.cli_ok(&["project", "add", "default-domain:p1"]).unwrap();
    let refused = c.cli(&["floating-ip", "add", "public", "--project", "default-domain:p1"]).unwrap();
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is not shared with project"), "{refused:?}");
    c.cli_ok(&["network", "update", "public", "--shared", "true"]).unwrap();
    for (project, net, container, fip) in
        [("default-domain:p1", "a", "ca", "203.0.113.20"), ("default-domain:p2", "b", "cb", "203.0.113.21")]
    {
        if project.ends_with("p2") {
            c.cli_ok(&["project", "add", project]).unwrap();
        }
        let fq = format!("{project}:{net}");
        c.cli_ok(&["network", "add", &fq, "--subnet", "10.80.0.0/24"]).unwrap();
        c.container("h1", container).unwrap();
        let ep = c.attach(container, &fq, &[]).unwrap();
        assert_eq!(addresses(&ep)[0], "10.80.0.2");
        servers.push(serve(&c, &dir, c.netns_of(container).unwrap(), container));
        c.cli_ok(&["floating-ip", "add", "public", "--ip", fip, "--project", project]).unwrap();
        c.cli_ok(&["floating-ip", "associate", fip, "--endpoint", ep["id"].as_str().unwrap()]).unwrap();
    }
    for (fip, container) in [("203.0.113.20", "ca"), ("203.0.113.21", "cb")] {
        until(&format!("{fip} to reach {container}"), Duration::from_secs(10), || {
            http(&out, &url(fip, "who")).as_deref() == Some(container)
        });
    }
    // Policy at the edge: network a lets the outside in on port 8080 only,
    // and keeps its endpoints from the outside's port 8080.
    c.cli_ok(&[
        "policy",
        "add",
        "default-domain:p1:edge",
        "--rule",
        "pass tcp default-domain:admin:public any > default-domain:p1:a 8080",
        "--rule",
        "deny any default-domain:admin:public any > default-domain:p1:a any",
        "--rule",
        "deny tcp default-domain:p1:a any > default-domain:admin:public 8080",
    ])
    .unwrap();
    c.cli_ok(&["network", "update", "default-domain:p1:a", "--policy", "default-domain:p1:edge"]).unwrap();
    until("the edge policy to refuse ping from the outside", Duration::from_secs(10), || {
        tessera_testkit::ping_in(&out, "203.0.113.20", 1).unwrap() == 0
    });
    assert_eq!(http(&out, &url("203.0.113.20", "who")).as_deref(), Some("ca"), "port 8080 is let in");
    assert_eq!(http(c.netns_of("ca").unwrap(), &url(OUTSIDE4, "who")), None, "the outside's port 8080 is refused to a");
    assert_eq!(http(c.netns_of("cb").unwrap(), &url(OUTSIDE4, "who")).as_deref(), Some("out"), "b has no such policy");
    assert_eq!(tessera_testkit::ping_in(&out, "203.0.113.21", 1).unwrap(), 1, "nor does the floating IP of b");

    let leftovers = c.cli_ok(&["floating-ip", "list"]).unwrap();
    assert!(leftovers.contains("203.0.113.20") && leftovers.contains("203.0.113.21"), "{leftovers}");
}

#[test]
fn privileged_a_gateway_whose_agent_dies_is_taken_over() {
    let (mut c, run_dir) = tessera_testkit::start_cluster("tfg", &["h1", "g1", "g2"], env!("CARGO_BIN_EXE_tessera"));
    let dir = run_dir.dir.path().to_path_buf();
    c.cli_ok(&["network", "add", "public", "--external", "--subnet", "203.0.113.0/24"]).unwrap();
    let out = outside(&c, &["g1", "g2"]);
    make_gateways(&mut c, &["g1", "g2"]);
    c.cli_ok(&["network", "add", "red", "--subnet", "10.73.0.0/24"]).unwrap();
    c.container("h1", "c1").unwrap();
    let id = c.attach("c1", "red", &[]).unwrap()["id"].as_str().unwrap().to_string();
    let _server = serve(&c, &dir, c.netns_of("c1").unwrap(), "c1");
    c.cli_ok(&["floating-ip", "add", "public", "--ip", "203.0.113.30"]).unwrap();
    c.cli_ok(&["floating-ip", "associate", "203.0.113.30", "--endpoint", &id]).unwrap();
    until("the floating IP to reach c1", Duration::from_secs(10), || {
        http(&out, &url("203.0.113.30", "who")).as_deref() == Some("c1")
    });
    let first = carrier(&c, &["g1", "g2"], "203.0.113.30").expect("a gateway answers for the floating IP");

    // Ping every 100 ms through the floating IP; kill -9 the carrier's agent.
    let mut cmd = std::process::Command::new("ping");
    cmd.args(["-n", "-i", "0.1", "-c", "100", "-W", "1", "203.0.113.30"]).stdout(std::process::Stdio::piped());
    let ping = c.fabric.spawn_in_netns(&out, cmd).expect("ping");
    thread::sleep(Duration::from_secs(2));
    c.kill_agent(&first);
    let other = if first == "g1" { "g2" } else { "g1" };
    until("the other gateway to answer for the floating IP", Duration::from_secs(10), || {
        carrier(&c, &[other], "203.0.113.30").is_some()
    });
    let text = String::from_utf8_lossy(&ping.wait_with_output().unwrap().stdout).into_owned();
    let seqs: Vec<u32> =
        text.lines().filter_map(|l| l.split("icmp_seq=").nth(1)?.split_whitespace().next()?.parse().ok()).collect();
    assert!(seqs.len() > 50, "pings answered: {}\n{text}", seqs.len());
    let gap = seqs.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    println!("gateway failover: replies stopped for {} ms", gap * 100);
    assert!(gap <= 30, "replies stopped for {} ms (goal: at most 3 s)\n{text}", gap * 100);
    assert!(seqs.last().copied().unwrap_or(0) >= 95, "replies resumed through {other}: {text}");
}

#[test]
fn privileged_a_bad_gateway_is_refused() {
    let (c, run_dir) = tessera_testkit::start_cluster("tfb", &["h1"], env!("CARGO_BIN_EXE_tessera"));
    c.cli_ok(&["network", "add", "public", "--external", "--subnet", "203.0.113.0/24"]).unwrap();
    c.cli_ok(&["network", "add", "red", "--subnet", "10.74.0.0/24"]).unwrap();
    let ip = c.underlay_ip("h1").unwrap().to_string();
    let state = run_dir.dir.path().join("bad-agent");
    let sock = state.join("agent.sock");
    let mut base: Vec<String> = vec!["--controller".into(), c.url.clone()];
    base.extend(c.credential_args("hosts/h1"));
    for (gateway, why) in [("public=nope0", "interface nope0 does not exist"), ("red=lo", "is not external")] {
        let mut args = base.clone();
        args.extend(["agent", "--host", "h1", "--underlay-ip", &ip, "--socket"].map(String::from));
        args.push(sock.display().to_string());
        args.push("--state-dir".into());
        args.push(state.display().to_string());
        args.extend(["--gateway".to_string(), gateway.to_string()]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let outcome = c.tessera_on("h1", &refs, &[]).unwrap();
        let err = String::from_utf8_lossy(&outcome.stderr);
        assert!(!outcome.status.success(), "an agent with --gateway {gateway} must not start");
        assert!(err.contains(why), "--gateway {gateway}: {err}");
    }
}
