//! Privileged tier: the overlay across real hosts-as-namespaces, with the real
//! controller and agents. Needs root; fails with the reason when it cannot run.

use std::thread;
use std::time::{Duration, Instant};

use tessera_testkit::{addresses, exec_in, Cluster};

fn cluster(hosts: &[&str]) -> (Cluster, tessera_testkit::TestRun) {
    tessera_testkit::start_cluster("tov", hosts, env!("CARGO_BIN_EXE_tessera"))
}

fn ok(out: std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn privileged_same_network_reaches_across_hosts_over_vxlan() {
    let (mut c, _dir) = cluster(&["h1", "h2"]);
    c.cli_ok(&["network", "add", "blue", "--subnet", "10.1.0.0/24", "--subnet", "fd00:1::/64", "--vni", "5001"]).unwrap();
    c.container("h1", "c1").unwrap();
    c.container("h2", "c2").unwrap();
    let a1 = addresses(&c.attach("c1", "blue", &[]).unwrap());
    let a2 = addresses(&c.attach("c2", "blue", &[]).unwrap());
    assert_eq!(a1, ["10.1.0.2", "fd00:1::2"]);
    assert_eq!(a2, ["10.1.0.3", "fd00:1::3"]);

    // VXLAN with the network's VNI on the underlay, seen by tcpdump on h1's eth0.
    let h1 = c.host_netns("h1").unwrap();
    let mut cmd = std::process::Command::new("tcpdump");
    cmd.args(["-n", "-i", "eth0", "-c", "2", "udp", "port", "4789"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let dump = tessera_fabric::spawn_in(h1, cmd).expect("run tcpdump (install tcpdump)");
    thread::sleep(Duration::from_millis(500));
    assert_eq!(c.ping("c1", &a2[0], 3).unwrap(), 3, "IPv4 across hosts");
    let out = dump.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("VXLAN") && text.contains("vni 5001"), "tcpdump on the underlay saw: {text}");

    assert_eq!(c.ping("c2", &a1[1], 3).unwrap(), 3, "IPv6 across hosts");

    // TCP across hosts: iperf3 for one second.
    let mut server = std::process::Command::new("iperf3");
    server.args(["-s", "-1"]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let mut srv = c.fabric.spawn_in_netns(c.netns_of("c2").unwrap(), server).expect("iperf3 (install iperf3)");
    thread::sleep(Duration::from_millis(300));
    let out = ok(c.exec("c1", "iperf3", &["-c", &a2[0], "-t", "1", "-J"]).unwrap(), "iperf3 client");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["end"]["sum_received"]["bytes"].as_u64().unwrap() > 0, "TCP moved no bytes");
    let _ = srv.wait();
}

#[test]
fn privileged_different_networks_stay_apart_even_with_overlapping_subnets() {
    let (mut c, _dir) = cluster(&["h1", "h2"]);
    c.cli_ok(&["project", "add", "default-domain:other"]).unwrap();
    c.cli_ok(&["network", "add", "web", "--subnet", "10.0.0.0/24"]).unwrap();
    c.cli_ok(&["network", "add", "web", "--project", "default-domain:other", "--subnet", "10.0.0.0/24"]).unwrap();
    c.cli_ok(&["network", "add", "red", "--subnet", "192.168.10.0/24"]).unwrap();
    for (name, host) in [("a1", "h1"), ("a2", "h2"), ("b1", "h1"), ("b2", "h2"), ("r1", "h1")] {
        c.container(host, name).unwrap();
    }
    let a1 = addresses(&c.attach("a1", "web", &[]).unwrap());
    let a2 = addresses(&c.attach("a2", "web", &[]).unwrap());
    let b1 = addresses(&c.attach("b1", "default-domain:other:web", &[]).unwrap());
    let b2 = addresses(&c.attach("b2", "default-domain:other:web", &[]).unwrap());
    let r1 = addresses(&c.attach("r1", "red", &[]).unwrap());
    assert_eq!(a1, b1, "the same addresses in both projects");
    assert_eq!(a2, b2);
    // Each network works on its own...
    assert_eq!(c.ping("a1", &a2[0], 2).unwrap(), 2);
    assert_eq!(c.ping("b1", &b2[0], 2).unwrap(), 2);
    assert_eq!(c.ping("b2", &b1[0], 2).unwrap(), 2);
    // ...and nothing crosses: watch b2 while a1 (other network) and r1 send to it.
    let mut cmd = std::process::Command::new("tcpdump");
    cmd.args(["-n", "-i", "eth0", "-c", "1", "icmp"]).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null());
    let mut dump = c.fabric.spawn_in_netns(c.netns_of("b2").unwrap(), cmd).unwrap();
    thread::sleep(Duration::from_millis(500));
    assert_eq!(c.ping("r1", &a1[0], 2).unwrap(), 0, "red reached web on the same host");
    assert_eq!(c.ping("r1", &a2[0], 2).unwrap(), 0, "red reached web on another host");
    assert_eq!(c.ping("a1", &r1[0], 2).unwrap(), 0, "web reached red");
    assert_eq!(c.ping("a1", "192.168.10.1", 1).unwrap(), 0, "web reached red's gateway");
    thread::sleep(Duration::from_millis(300));
    let captured = dump.try_wait().unwrap().is_some();
    let _ = dump.kill();
    let out = dump.wait_with_output().unwrap();
    assert!(!captured, "a packet reached b2 from another network: {}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn privileged_attach_detach_and_reattach_leave_nothing_behind() {
    let (mut c, _dir) = cluster(&["h1", "h2"]);
    c.cli_ok(&["network", "add", "red", "--subnet", "10.3.0.0/24"]).unwrap();
    c.cli_ok(&["network", "add", "green", "--subnet", "10.4.0.0/24"]).unwrap();
    c.container("h1", "c1").unwrap();
    c.container("h2", "peer").unwrap();
    let peer = addresses(&c.attach("peer", "red", &[]).unwrap());
    let e1 = c.attach("c1", "red", &["--ip", "10.3.0.50"]).unwrap();
    assert_eq!(addresses(&e1), ["10.3.0.50"]);
    assert_eq!(c.attach("c1", "red", &["--ip", "10.3.0.50"]).unwrap()["id"], e1["id"], "attach is idempotent");
    assert_eq!(c.ping("c1", &peer[0], 2).unwrap(), 2);

    // A second network on a second interface.
    c.container("h2", "gpeer").unwrap();
    let gpeer = addresses(&c.attach("gpeer", "green", &[]).unwrap());
    c.attach("c1", "green", &["--ifname", "eth1"]).unwrap();
    assert_eq!(c.ping("c1", &gpeer[0], 2).unwrap(), 2);

    let gone = c.detach("c1", None).unwrap();
    assert_eq!(gone["detached"].as_array().unwrap().len(), 2);
    let links = ok(c.exec("c1", "ip", &["-o", "link"]).unwrap(), "ip link");
    assert!(!links.contains("eth0") && !links.contains("eth1"), "interfaces left in the container: {links}");
    let host_links = ok(exec_in(c.host_netns("h1").unwrap(), "ip", ["-o", "link"]).unwrap(), "ip link");
    assert_eq!(host_links.matches(" tv").count(), 0, "host veths left: {host_links}");
    assert_eq!(c.ping("peer", "10.3.0.50", 1).unwrap(), 0);
    assert_eq!(c.cli_json(&["endpoint", "list", "--host", "h1"]).unwrap().as_array().unwrap().len(), 0);
    assert_eq!(c.detach("c1", None).unwrap()["detached"].as_array().unwrap().len(), 0, "detaching again succeeds");

    c.attach("c1", "red", &[]).unwrap();
    assert_eq!(c.ping("peer", "10.3.0.2", 2).unwrap(), 2, "re-attached and reachable");
}

#[test]
fn privileged_agent_kill_9_does_not_cut_traffic_and_restarts_converge() {
    let (mut c, _dir) = cluster(&["h1", "h2"]);
    c.cli_ok(&["network", "add", "red", "--subnet", "10.5.0.0/24"]).unwrap();
    c.container("h1", "c1").unwrap();
    c.container("h2", "c2").unwrap();
    c.attach("c1", "red", &[]).unwrap();
    let a2 = addresses(&c.attach("c2", "red", &[]).unwrap());

    let mut server = std::process::Command::new("iperf3");
    server.args(["-s", "-1"]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let mut srv = c.fabric.spawn_in_netns(c.netns_of("c2").unwrap(), server).unwrap();
    thread::sleep(Duration::from_millis(300));
    let mut client = std::process::Command::new("iperf3");
    client
        .args(["-c", &a2[0], "-t", "6", "-i", "1", "-J", "-b", "200M"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let cli = c.fabric.spawn_in_netns(c.netns_of("c1").unwrap(), client).unwrap();
    thread::sleep(Duration::from_secs(1));
    c.kill_agent("h1");
    c.kill_agent("h2");
    thread::sleep(Duration::from_millis(800));
    c.start_agent("h1").unwrap();
    c.start_agent("h2").unwrap();
    let out = cli.wait_with_output().unwrap();
    let _ = srv.wait();
    assert!(out.status.success(), "iperf3 stream broke: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (i, iv) in v["intervals"].as_array().unwrap().iter().enumerate() {
        assert!(iv["sum"]["bytes"].as_u64().unwrap() > 0, "interval {i} moved no bytes: the stream was cut");
    }

    // The restarted agents converge: a new endpoint works both ways.
    c.container("h2", "c3").unwrap();
    let a3 = addresses(&c.attach("c3", "red", &[]).unwrap());
    assert_eq!(c.ping("c1", &a3[0], 2).unwrap(), 2);

    // A restarted controller: agents resync and new work flows again.
    c.kill_controller();
    assert_eq!(c.ping("c1", &a2[0], 2).unwrap(), 2, "traffic flows while the controller is away");
    c.start_controller().unwrap();
    c.container("h1", "c4").unwrap();
    let a4 = addresses(&c.attach("c4", "red", &[]).unwrap());
    // An attach answers once its own host has programmed it; the other host
    // follows through its watch, which it opens again within about a second.
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.ping("c3", &a4[0], 1).unwrap() == 0 && Instant::now() < deadline {}
    assert_eq!(c.ping("c3", &a4[0], 2).unwrap(), 2, "a change after the controller restart reached both hosts");
    // Deleted state is removed by restarted agents too.
    c.stop_agent("h2");
    c.detach("c4", None).unwrap();
    c.start_agent("h2").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let routes = ok(exec_in(c.host_netns("h2").unwrap(), "ip", ["route", "show", "table", "all"]).unwrap(), "ip route");
        if !routes.contains(&a4[0]) {
            break;
        }
        assert!(Instant::now() < deadline, "h2 still routes to the detached endpoint {}: {routes}", a4[0]);
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn privileged_two_hundred_endpoints_across_three_hosts_all_reachable() {
    let (mut c, _dir) = cluster(&["h1", "h2", "h3"]);
    c.cli_ok(&["network", "add", "big", "--subnet", "10.6.0.0/22"]).unwrap();
    let hosts = ["h1", "h2", "h3"];
    let names: Vec<String> = (0..200).map(|i| format!("c{i}")).collect();
    for (i, n) in names.iter().enumerate() {
        c.container(hosts[i % 3], n).unwrap();
    }
    let t = Instant::now();
    let addrs: Vec<String> = thread::scope(|s| {
        let handles: Vec<_> = names
            .iter()
            .map(|n| {
                let c = &c;
                s.spawn(move || addresses(&c.attach(n, "big", &[]).unwrap_or_else(|e| panic!("attach {n}: {e:#}")))[0].clone())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    eprintln!("200 concurrent attaches took {:?}", t.elapsed());
    let unique: std::collections::BTreeSet<_> = addrs.iter().collect();
    assert_eq!(unique.len(), 200);
    // From one container on each host, every other endpoint answers (a
    // missed reply is retried: two cores run 200 namespaces here).
    for from in ["c0", "c1", "c2"] {
        let t = Instant::now();
        let mut unreachable: Vec<String> = addrs.clone();
        for _round in 0..5 {
            unreachable = thread::scope(|s| {
                let handles: Vec<_> = unreachable
                    .chunks(10)
                    .map(|chunk| {
                        let c = &c;
                        s.spawn(move || {
                            chunk.iter().filter(|a| c.ping(from, a, 1).unwrap_or(0) == 0).cloned().collect::<Vec<_>>()
                        })
                    })
                    .collect();
                handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
            });
            if unreachable.is_empty() {
                break;
            }
            eprintln!("from {from}: {} not answering yet after {:?}: {unreachable:?}", unreachable.len(), t.elapsed());
        }
        if !unreachable.is_empty() {
            let h = hosts[names.iter().position(|n| n == from).unwrap() % 3];
            let mut report = format!("from {from} on {h}, unreachable: {unreachable:?}\n");
            let run = |ns: &tessera_testkit::Netns, args: &[&str]| {
                String::from_utf8_lossy(&exec_in(ns, args[0], &args[1..]).unwrap().stdout).into_owned()
            };
            for a in unreachable.iter().take(2) {
                let i = addrs.iter().position(|x| x == a).unwrap();
                let (target, th) = (&names[i], hosts[i % 3]);
                report += &format!("== {a} is {target} on {th}\n");
                report += &format!("-- {target}: ip neigh\n{}", run(c.netns_of(target).unwrap(), &["ip", "neigh"]));
                report += &format!("-- {target}: ip -s link\n{}", run(c.netns_of(target).unwrap(), &["ip", "-s", "link"]));
                report += &format!(
                    "-- {th}: ip neigh | grep {a}\n{}",
                    run(c.host_netns(th).unwrap(), &["ip", "neigh"])
                        .lines()
                        .filter(|l| l.starts_with(&format!("{a} ")))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
                report += &format!(
                    "\n-- {th}: routes to {a}\n{}",
                    run(c.host_netns(th).unwrap(), &["ip", "route", "get", a, "iif", "tx4096"])
                );
                report += &format!(
                    "-- {h}: ip route get {a} from c1\n{}",
                    run(c.host_netns(h).unwrap(), &["ip", "route", "show", "table", "all", a])
                );
                report += &format!(
                    "-- {from}: ip neigh {a}\n{}",
                    run(c.netns_of(from).unwrap(), &["ip", "neigh"])
                        .lines()
                        .filter(|l| l.starts_with(&format!("{a} ")))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
                let mut dump = std::process::Command::new("tcpdump");
                dump.args(["-n", "-e", "-i", "eth0", "-c", "20"])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::null());
                let mut dump = tessera_fabric::spawn_in(c.netns_of(target).unwrap(), dump).unwrap();
                thread::sleep(Duration::from_millis(300));
                let _ = c.ping(from, a, 2);
                report +=
                    &format!("-- {th}: host ping {a}\n{}", run(c.host_netns(th).unwrap(), &["ping", "-c", "1", "-W", "1", a]));
                thread::sleep(Duration::from_millis(500));
                let _ = dump.kill();
                report += &format!(
                    "-- tcpdump in {target} while {from} pings\n{}",
                    String::from_utf8_lossy(&dump.wait_with_output().unwrap().stdout)
                );
                report +=
                    &format!("-- {th}: ip -s neigh {a}\n{}", run(c.host_netns(th).unwrap(), &["ip", "-s", "neigh", "show", a]));
                report += &format!(
                    "\n-- {th}: nft counters\n{}",
                    run(c.host_netns(th).unwrap(), &["nft", "list", "ruleset"])
                        .lines()
                        .filter(|l| l.contains("counter"))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            report += &format!("-- {h}: bridge link\n{}", run(c.host_netns(h).unwrap(), &["bridge", "link"]));
            if let Ok(secs) = std::env::var("TESSERA_TEST_HOLD").map(|s| s.parse::<u64>().unwrap_or(0)) {
                eprintln!("{report}\nholding the fabric {} for {secs} s", c.spec().prefix);
                thread::sleep(Duration::from_secs(secs));
            }
            panic!("{report}\n{}", c.logs_tail(10));
        }
    }
}

/// The watcher of `host` in `tessera controller status --json`: how many
/// networks' endpoints it asked for (`None`: every network's).
fn scope_networks(c: &Cluster, host: &str) -> Option<Option<u64>> {
    let status = c.cli_json(&["controller", "status"]).ok()?;
    let who = format!("host {host}");
    let w = status["watch"]["watchers"].as_array()?.iter().find(|w| w["who"] == who.as_str())?.clone();
    Some(w["networks"].as_u64())
}

fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn privileged_a_host_mirrors_only_its_networks_endpoints_widening_and_narrowing_as_it_joins_and_leaves() {
    let (mut c, _dir) = cluster(&["h1", "h2", "h3"]);
    c.cli_ok(&["network", "add", "blue", "--subnet", "10.7.0.0/24"]).unwrap();
    c.cli_ok(&["network", "add", "red", "--subnet", "10.8.0.0/24"]).unwrap();
    for (host, name) in [("h1", "b1"), ("h2", "b2"), ("h3", "r3"), ("h1", "r1")] {
        c.container(host, name).unwrap();
    }
    c.attach("b1", "blue", &[]).unwrap();
    let b2 = addresses(&c.attach("b2", "blue", &[]).unwrap());
    let r3 = addresses(&c.attach("r3", "red", &[]).unwrap());
    // Each host asks for the one network it has endpoints in.
    for h in ["h1", "h2", "h3"] {
        until(&format!("{h} to watch one network's endpoints"), || scope_networks(&c, h) == Some(Some(1)));
    }
    // h1's first red endpoint: it takes red's endpoints too, and reaches r3.
    c.attach("r1", "red", &[]).unwrap();
    until("h1 to watch two networks' endpoints", || scope_networks(&c, "h1") == Some(Some(2)));
    assert!(c.ping("r1", &r3[0], 3).unwrap() >= 2, "r1 reaches r3 on h3:\n{}", c.logs_tail(30));
    assert_eq!(scope_networks(&c, "h3"), Some(Some(1)), "h3 still needs red only");
    // Once h1 holds no red endpoint for a while, it asks for blue's only.
    c.detach("r1", None).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while scope_networks(&c, "h1") != Some(Some(1)) {
        assert!(Instant::now() < deadline, "h1 still watches {:?} networks' endpoints", scope_networks(&c, "h1"));
        thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(c.ping("b1", &b2[0], 2).unwrap(), 2, "blue is still reached");
}
