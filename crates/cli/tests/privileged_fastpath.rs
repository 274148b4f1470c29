//! Privileged tier: the TC-eBPF fast path (`tessera agent --dataplane
//! ebpf`) with real packets. The established flows of a network travel
//! between hosts on the fast path's port (4799, seen by tcpdump on the
//! underlay; the receiving host takes them off its underlay device without
//! its metadata-mode device) and between local containers without crossing
//! the network's bridge, while what must be judged still is: a policy
//! change ends a running fast-path flow, a datagram from outside the fabric
//! meets the host's guard (on either port: a host also takes the kernel
//! path's handshakes and pings off its underlay, and encapsulates them
//! itself at its networks' VXLAN devices), and flow records count what the fast path
//! carried (each connection its own, when one reuses another's
//! five-tuple). Needs root, clang-built programs and bpftool; fails with
//! the reason when it cannot run.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::Duration;

use tessera_dataplane::desired::VXLAN_PORT;
use tessera_dataplane::fastpath::FASTPATH_PORT;
use tessera_testkit::intruder::{guard_drops, Intruder};
use tessera_testkit::{addresses, exec_in, Cluster};

fn cluster(hosts: &[&str]) -> (Cluster, tessera_testkit::TestRun) {
    let (mut c, run) = tessera_testkit::start_cluster("tfp", hosts, env!("CARGO_BIN_EXE_tessera"));
    for h in hosts {
        c.set_agent_args(h, &["--dataplane", "ebpf"]);
        c.stop_agent(h);
        c.start_agent(h).unwrap();
        assert!(
            std::fs::read_to_string(c.log(&format!("agent-{h}"))).unwrap_or_default().contains("eBPF fast path loaded"),
            "the agent of {h} runs without the fast path:\n{}",
            c.logs_tail(40)
        );
    }
    c.cli_ok(&["network", "add", "blue", "--subnet", "10.61.0.0/24", "--vni", "6100"]).unwrap();
    (c, run)
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until every endpoint port of `hosts` takes the fast path (a new
/// port does after a moment, see `SETTLE`).
fn settled(c: &Cluster, hosts: &[&str]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    for h in hosts {
        let socket = c.agent_socket(h).display().to_string();
        loop {
            let out = c.tessera_on(h, &["--json", "vif", "list", "--socket", &socket], &[]).unwrap();
            let vifs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let ports: Vec<&serde_json::Value> =
                vifs.as_array().into_iter().flatten().filter(|v| v["kind"] == "endpoint").collect();
            if ports.iter().all(|v| v["path"] == "ebpf") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the ports of {h} do not take the fast path: {vifs}");
            thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Packets tcpdump sees on `iface` of `host` matching `filter` while
/// `during` runs.
fn captured(c: &Cluster, host: &str, iface: &str, filter: &[&str], during: impl FnOnce()) -> Vec<String> {
    captured_in(c.host_netns(host).unwrap(), iface, filter, during)
}

/// Packets tcpdump sees on `iface` of namespace `ns` matching `filter`
/// while `during` runs.
fn captured_in(ns: &tessera_testkit::Netns, iface: &str, filter: &[&str], during: impl FnOnce()) -> Vec<String> {
    let mut cmd = Command::new("tcpdump");
    cmd.args(["-n", "-l", "-q", "-i", iface]).args(filter).stdout(Stdio::piped()).stderr(Stdio::null());
    let dump = tessera_fabric::spawn_in(ns, cmd).expect("run tcpdump (install tcpdump)");
    thread::sleep(Duration::from_millis(500));
    during();
    thread::sleep(Duration::from_millis(300));
    let _ = Command::new("kill").args(["-INT", &dump.id().to_string()]).status();
    let out = dump.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect()
}

/// Runs an iperf3 server in `server` (one test) and a client in `client`
/// for `secs`; the client's JSON report.
fn iperf(c: &Cluster, client: &str, server: &str, dst: &str, args: &[&str]) -> serde_json::Value {
    iperf_on(c, client, server, dst, "5201", args)
}

/// [`iperf`] on server port `port`.
fn iperf_on(c: &Cluster, client: &str, server: &str, dst: &str, port: &str, args: &[&str]) -> serde_json::Value {
    let mut s = Command::new("iperf3");
    s.args(["-s", "-1", "-p", port]).stdout(Stdio::null()).stderr(Stdio::null());
    let mut srv = c.fabric.spawn_in_netns(c.netns_of(server).unwrap(), s).expect("iperf3 (install iperf3)");
    thread::sleep(Duration::from_millis(300));
    let mut a = vec!["-c", dst, "-J", "-p", port];
    a.extend_from_slice(args);
    let out = ok(c.exec(client, "iperf3", &a).unwrap(), "iperf3 client");
    let _ = srv.kill();
    let _ = srv.wait();
    serde_json::from_str(&out).unwrap()
}

/// The ids of the eBPF programs on `iface` of `host`, as tc lists them.
fn programs_on(c: &Cluster, host: &str, iface: &str) -> Vec<String> {
    let out =
        ok(exec_in(c.host_netns(host).unwrap(), "tc", ["filter", "show", "dev", iface, "ingress"]).unwrap(), "tc filter show");
    out.split_whitespace().skip_while(|w| *w != "id").nth(1).map(|id| vec![id.to_string()]).unwrap_or_default()
}

#[test]
fn privileged_fast_path_carries_established_flows_across_and_within_hosts() {
    let (mut c, _dir) = cluster(&["h1", "h2"]);
    for (name, host) in [("c1", "h1"), ("c2", "h2"), ("c3", "h1")] {
        c.container(host, name).unwrap();
    }
    c.attach("c1", "blue", &[]).unwrap();
    let a2 = addresses(&c.attach("c2", "blue", &[]).unwrap());
    let e3 = c.attach("c3", "blue", &[]).unwrap();
    let a3 = addresses(&e3);
    let port3 = format!("tv{}", &e3["id"].as_str().unwrap()[..8]);
    assert_eq!(c.ping("c1", &a2[0], 2).unwrap(), 2, "ping across hosts (kernel path: ICMP)");
    settled(&c, &["h1", "h2"]);

    // Each endpoint's port says its established flows take the fast path.
    let socket = c.agent_socket("h1").display().to_string();
    let vifs = c.tessera_on("h1", &["--json", "vif", "list", "--socket", &socket], &[]).unwrap();
    let vifs: serde_json::Value = serde_json::from_slice(&vifs.stdout).unwrap();
    let paths: Vec<&str> =
        vifs.as_array().unwrap().iter().filter(|v| v["kind"] == "endpoint").filter_map(|v| v["path"].as_str()).collect();
    assert_eq!(paths, ["ebpf", "ebpf"], "{vifs}");
    // Other hosts' datagrams are decapsulated by the program on the
    // underlay device, and the agent's status says so.
    let status = ok(c.tessera_on("h1", &["--json", "status", "--socket", &socket], &[]).unwrap(), "status");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let underlay = &status["dataplane"]["underlay"];
    assert_eq!(underlay["device"], tessera_fabric::HOST_IFNAME, "{status}");
    assert!(underlay.get("stack").is_none(), "the host's stack decapsulates: {status}");
    let shown = ok(c.tessera_on("h1", &["status", "--socket", &socket], &[]).unwrap(), "status");
    assert!(shown.contains(&format!("decapsulation:   a program on {}", tessera_fabric::HOST_IFNAME)), "{shown}");

    // The programs are loaded and attached: bpftool knows them by name.
    let on_tunnel = programs_on(&c, "h1", "tfast");
    assert_eq!(on_tunnel.len(), 1, "no program on h1's tfast");
    let shown = ok(Command::new("bpftool").args(["prog", "show", "id", &on_tunnel[0]]).output().expect("bpftool"), "bpftool");
    assert!(shown.contains("from_tunnel"), "bpftool prog show: {shown}");

    // Across hosts: once established, a TCP flow travels on the fast
    // path's port, not on the network's VXLAN port (its first packets,
    // until conntrack says it is established, took the kernel path).
    across_hosts_on_the_fast_path(&c, "c2", &a2[0]);

    // Within a host: an established flow's packets do not cross the bridge.
    let (on_bridge, _, sent) = steady(&c, "c1", "c3", &a3[0], |c| {
        (captured(c, "h1", "tb6100", &["tcp"], || thread::sleep(Duration::from_secs(1))), vec![])
    });
    assert!(sent > 10_000_000, "iperf3 moved {sent} bytes");
    assert!(on_bridge.is_empty(), "TCP packets of an established flow crossed the bridge: {on_bridge:?}");
    // c3's port counts what the fast path delivered to c3.
    let vifs = c.tessera_on("h1", &["--json", "vif", "list", "--socket", &socket], &[]).unwrap();
    let vifs: serde_json::Value = serde_json::from_slice(&vifs.stdout).unwrap();
    let counted = vifs.as_array().unwrap().iter().find(|v| v["name"] == port3.as_str()).map(|v| v["tx_bytes"].as_u64().unwrap());
    assert!(counted.is_some_and(|b| b >= sent), "c3's port {port3} counts {counted:?} bytes sent to c3, iperf3 moved {sent}");

    // Nothing is left once the hosts are gone: the programs go with the
    // devices they are attached to, and their maps with them.
    drop(c);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while Command::new("bpftool").args(["prog", "show", "id", &on_tunnel[0]]).output().unwrap().status.success() {
        assert!(std::time::Instant::now() < deadline, "program {} is still loaded after the hosts went", on_tunnel[0]);
        thread::sleep(Duration::from_millis(200));
    }
}

/// c1 on h1 and c2 on h2 in network blue; c2's addresses.
fn two_hosts() -> (Cluster, tessera_testkit::TestRun, Vec<String>) {
    let (mut c, dir) = cluster(&["h1", "h2"]);
    c.container("h1", "c1").unwrap();
    c.container("h2", "c2").unwrap();
    c.attach("c1", "blue", &[]).unwrap();
    let a2 = addresses(&c.attach("c2", "blue", &[]).unwrap());
    settled(&c, &["h1", "h2"]);
    (c, dir, a2)
}

#[test]
fn privileged_flow_records_count_what_the_fast_path_carried() {
    let (c, _dir, a2) = two_hosts();
    let mut s = Command::new("iperf3");
    s.args(["-s", "-1", "-p", "5301"]).stdout(Stdio::null()).stderr(Stdio::null());
    let mut srv = c.fabric.spawn_in_netns(c.netns_of("c2").unwrap(), s).expect("iperf3 (install iperf3)");
    thread::sleep(Duration::from_millis(300));
    let out = ok(c.exec("c1", "iperf3", &["-c", &a2[0], "-p", "5301", "-t", "2", "-J"]).unwrap(), "iperf3 client");
    let _ = srv.wait();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let sent = v["end"]["sum_sent"]["bytes"].as_f64().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    loop {
        let flows = c.cli_json(&["flow", "list", "--port", "5301"]).unwrap();
        let all = flows.as_array().unwrap();
        let data = all.iter().max_by_key(|f| f["bytes"].as_u64().unwrap_or(0));
        let ratio = data.map_or(0.0, |d| d["bytes"].as_f64().unwrap() / sent);
        if all.len() == 2 && all.iter().all(|f| f["end_ms"].is_u64()) && (0.98..=1.02).contains(&ratio) {
            eprintln!("iperf3 sent {sent} bytes; the record counts {ratio:.4} of them");
            // The dump that ended the records took the closed connections
            // off the fast path, keeping their counts: they do not hold
            // their entries until conntrack forgets them.
            let socket = c.agent_socket("h1").display().to_string();
            let status = ok(c.tessera_on("h1", &["--json", "status", "--socket", &socket], &[]).unwrap(), "status");
            let status: serde_json::Value = serde_json::from_str(&status).unwrap();
            assert_eq!(status["dataplane"]["flows"], 0, "closed connections still on h1's fast path: {status}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stream's records are not whole, ended and exact (iperf3 sent {sent}, ratio {ratio:.4}): {flows}"
        );
        thread::sleep(Duration::from_millis(300));
    }
}

/// A connection made in c1 from its port `sport` to `to`.
fn connect_from(c: &Cluster, sport: u16, to: SocketAddrV4) -> TcpStream {
    use nix::sys::socket::{bind, connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};
    use std::os::fd::AsRawFd;
    tessera_fabric::run_in(c.netns_of("c1").unwrap(), move || {
        let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
        setsockopt(&fd, sockopt::ReuseAddr, &true).unwrap();
        bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, sport))).unwrap();
        connect(fd.as_raw_fd(), &SockaddrIn::from(to)).unwrap();
        TcpStream::from(fd)
    })
    .unwrap()
}

/// Sends on `conn` for `secs` (at least one write), half-closes it, waits for
/// the server's one-byte answer and resets it (no TIME_WAIT: the five-tuple
/// is free again at once); the bytes sent.
fn send_and_reset(mut conn: TcpStream, secs: f64) -> u64 {
    let chunk = vec![7u8; 64 * 1024];
    let (started, mut sent) = (std::time::Instant::now(), 0u64);
    while sent == 0 || started.elapsed().as_secs_f64() < secs {
        conn.write_all(&chunk).unwrap();
        sent += chunk.len() as u64;
    }
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    conn.read_exact(&mut [0u8; 1]).unwrap();
    let linger = nix::libc::linger { l_onoff: 1, l_linger: 0 };
    nix::sys::socket::setsockopt(&conn, nix::sys::socket::sockopt::Linger, &linger).unwrap();
    sent
}

#[test]
fn privileged_a_connection_reusing_a_five_tuple_is_counted_alone() {
    let (c, _dir, a2) = two_hosts();
    let to = SocketAddrV4::new(a2[0].parse().unwrap(), 5303);
    let listener = tessera_fabric::run_in(c.netns_of("c2").unwrap(), || TcpListener::bind(("0.0.0.0", 5303)).unwrap()).unwrap();
    // Reads each of two connections to its end and answers with a byte.
    let server = thread::spawn(move || {
        for _ in 0..2 {
            let (mut conn, _) = listener.accept().unwrap();
            std::io::copy(&mut conn, &mut std::io::sink()).unwrap();
            conn.write_all(b"k").unwrap();
            let _ = conn.read(&mut [0u8; 1]);
        }
    });
    // Each connection runs long enough to take the fast path. Once the
    // first's record ended (a dump found it closed), the second, from the
    // same port to the same place, reuses its five-tuple (and conntrack's
    // entry, and its id).
    let first = send_and_reset(connect_from(&c, 40003, to), 1.5);
    let one = records_until(&c, "5303", |r| matches!(r, [one] if exact(one, first)));
    let second = send_and_reset(connect_from(&c, 40003, to), 0.5);
    server.join().unwrap();
    let both = records_until(&c, "5303", |r| r.len() == 2 && r.iter().any(|one| exact(one, second)));
    eprintln!("sent {first} then {second} bytes from one port; records: {one:?} then {both:?}");
}

/// Whether a record (bytes, ended) ended and counts `sent` bytes, within
/// 2 % (their headers).
fn exact((bytes, ended): &(u64, bool), sent: u64) -> bool {
    *ended && (0.98..=1.02).contains(&(*bytes as f64 / sent as f64))
}

/// The records of server port `port` (bytes, ended), once `done` says so
/// (within 8 s).
fn records_until(c: &Cluster, port: &str, done: impl Fn(&[(u64, bool)]) -> bool) -> Vec<(u64, bool)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    loop {
        let flows = c.cli_json(&["flow", "list", "--port", port]).unwrap();
        let records: Vec<(u64, bool)> =
            flows.as_array().unwrap().iter().map(|f| (f["bytes"].as_u64().unwrap_or(0), f["end_ms"].is_u64())).collect();
        if done(&records) {
            return records;
        }
        assert!(std::time::Instant::now() < deadline, "the records of port {port} are not as they should be: {flows}");
        thread::sleep(Duration::from_millis(300));
    }
}

/// Once established, a TCP stream from c1 (on h1) to `server` at `dst` (on
/// h2) travels on the fast path's port, not on the network's VXLAN port
/// (its first packets, until conntrack says it is established, took the
/// kernel path). `server` is on h2, which takes the stream's datagrams off
/// the underlay itself: they do not cross its metadata-mode device.
fn across_hosts_on_the_fast_path(c: &Cluster, server: &str, dst: &str) {
    let mut through_device = 0;
    let (fast, kernel_path, sent) = steady(c, "c1", server, dst, |c| {
        let mut kernel_path = vec![];
        let before = received_by(c, "h2", "tfast");
        let fast = captured(c, "h1", "eth0", &["udp", "port", "4799"], || {
            kernel_path = captured(c, "h1", "eth0", &["udp", "port", "4789"], || thread::sleep(Duration::from_secs(1)));
        });
        through_device = received_by(c, "h2", "tfast") - before;
        // The stream's TCP packets, not what else the network carries.
        kernel_path.retain(|l| l.contains(": tcp"));
        (fast, kernel_path)
    });
    assert!(sent > 10_000_000, "iperf3 moved {sent} bytes");
    assert!(fast.len() > 100, "only {} packets on the fast path's port (and {kernel_path:?} on 4789)", fast.len());
    assert!(kernel_path.is_empty(), "packets of an established flow took the kernel path's tunnel: {kernel_path:?}");
    assert!(
        through_device < 10,
        "{through_device} packets crossed h2's tfast while {} arrived on the fast path's port",
        fast.len()
    );
}

/// The packets device `dev` of `host` received.
fn received_by(c: &Cluster, host: &str, dev: &str) -> u64 {
    packets_of(c, host, dev, "rx")
}

/// The packets device `dev` of `host` received (`rx`) or sent (`tx`).
fn packets_of(c: &Cluster, host: &str, dev: &str, way: &str) -> u64 {
    let out = ok(exec_in(c.host_netns(host).unwrap(), "ip", ["-j", "-s", "link", "show", dev]).unwrap(), "ip -s link");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["stats64"][way]["packets"].as_u64().unwrap_or_else(|| panic!("no {way} counter of {dev}: {out}"))
}

/// Runs `watch` one second into a 4-second iperf3 stream from `client` to
/// `server` at `dst`: what it saw, and the bytes the stream moved.
type Seen = Vec<String>;

fn steady(c: &Cluster, client: &str, server: &str, dst: &str, watch: impl FnOnce(&Cluster) -> (Seen, Seen)) -> (Seen, Seen, u64) {
    thread::scope(|s| {
        let stream = s.spawn(|| iperf(c, client, server, dst, &["-t", "4"]));
        thread::sleep(Duration::from_secs(1));
        let (a, b) = watch(c);
        let report = stream.join().unwrap();
        (a, b, report["end"]["sum_received"]["bytes"].as_u64().unwrap())
    })
}

#[test]
fn privileged_a_policy_change_ends_a_running_fast_path_flow() {
    let (c, _dir, a2) = two_hosts();
    c.cli_ok(&["policy", "add", "open", "--rule", "pass any any any <> any any"]).unwrap();
    c.cli_ok(&["network", "update", "blue", "--policy", "open"]).unwrap();

    // A stream whose data connection leaves c1 from port 40000 (iperf3's
    // control connection uses another port and stays allowed).
    thread::scope(|s| {
        let stream = s.spawn(|| iperf(&c, "c1", "c2", &a2[0], &["-t", "5", "--cport", "40000"]));
        thread::sleep(Duration::from_secs(1));
        let fast = captured(&c, "h1", "eth0", &["udp", "port", "4799"], || thread::sleep(Duration::from_millis(500)));
        assert!(fast.len() > 100, "the stream is not on the fast path: {} packets on 4799", fast.len());

        c.cli_ok(&[
            "policy",
            "update",
            "open",
            "--rule",
            "deny tcp any 40000 <> any any",
            "--rule",
            "pass any any any <> any any",
        ])
        .unwrap();
        thread::sleep(Duration::from_millis(300));
        let reached = captured_in(c.netns_of("c2").unwrap(), "eth0", &["tcp", "port", "40000"], || {
            thread::sleep(Duration::from_secs(1));
        });
        assert!(reached.is_empty(), "packets of the refused flow still reached c2: {reached:?}");
        let _ = stream.join();
    });
}

#[test]
fn privileged_an_agent_restart_keeps_the_fast_path_and_its_counts() {
    let (mut c, _dir, a2) = two_hosts();
    let mut s = Command::new("iperf3");
    s.args(["-s", "-1", "-p", "5302"]).stdout(Stdio::null()).stderr(Stdio::null());
    let mut srv = c.fabric.spawn_in_netns(c.netns_of("c2").unwrap(), s).expect("iperf3 (install iperf3)");
    thread::sleep(Duration::from_millis(300));
    let mut client = Command::new("iperf3");
    client.args(["-c", &a2[0], "-p", "5302", "-t", "8", "-J"]).stdout(Stdio::piped()).stderr(Stdio::null());
    let client = c.fabric.spawn_in_netns(c.netns_of("c1").unwrap(), client).unwrap();
    thread::sleep(Duration::from_millis(1500));
    // kill -9: the programs stay attached to the devices, and arriving
    // packets still reach c1 on the fast path while no agent runs.
    c.kill_agent("h1");
    let h1 = c.underlay_ip("h1").unwrap().to_string();
    let arriving = captured(&c, "h1", "eth0", &["udp", "dst", "port", "4799", "and", "dst", "host", &h1], || {
        thread::sleep(Duration::from_millis(500))
    });
    assert!(arriving.len() > 10, "nothing arrived on the fast path while h1's agent was away: {arriving:?}");
    c.start_agent("h1").unwrap();
    let log = std::fs::read_to_string(c.log("agent-h1")).unwrap_or_default();
    assert!(log.contains("carries on with the earlier agent's maps"), "the new agent started afresh:\n{}", c.logs_tail(30));
    // Once it runs again (and has admitted the flows from a dump of
    // conntrack), the stream's packets leave h1 on the fast path too.
    let restarted = std::time::Instant::now();
    loop {
        let leaving = captured(&c, "h1", "eth0", &["udp", "dst", "port", "4799", "and", "src", "host", &h1], || {
            thread::sleep(Duration::from_millis(500))
        });
        if leaving.len() > 10 {
            eprintln!("the stream left h1 on the fast path again {:?} after the restart", restarted.elapsed());
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(4),
            "the stream does not leave h1 on the fast path 4 s after the restart: {leaving:?}"
        );
    }
    let out = client.wait_with_output().unwrap();
    let _ = srv.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 -J output");
    let sent = v["end"]["sum_sent"]["bytes"].as_f64().unwrap();
    // What the fast path carried before the restart is still counted.
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    loop {
        let flows = c.cli_json(&["flow", "list", "--port", "5302"]).unwrap();
        let all = flows.as_array().unwrap();
        let data = all.iter().max_by_key(|f| f["bytes"].as_u64().unwrap_or(0));
        let ratio = data.map_or(0.0, |d| d["bytes"].as_f64().unwrap() / sent);
        if all.iter().all(|f| f["end_ms"].is_u64()) && (0.98..=1.02).contains(&ratio) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after the restart the stream's record is not whole (iperf3 sent {sent}, ratio {ratio:.4}): {flows}"
        );
        thread::sleep(Duration::from_millis(300));
    }
}

/// The lines tcpdump prints in `container`'s `eth0` for `filter` while
/// `during` runs.
fn seen_by(c: &Cluster, container: &str, filter: &[&str], during: impl FnOnce()) -> Vec<String> {
    captured_in(c.netns_of(container).unwrap(), "eth0", filter, during)
}

#[test]
fn privileged_overlapping_networks_stay_apart_on_the_fast_path() {
    let (mut c, _dir) = cluster(&["h1", "h2"]);
    c.cli_ok(&["project", "add", "default-domain:other"]).unwrap();
    c.cli_ok(&["network", "add", "blue", "--project", "default-domain:other", "--subnet", "10.61.0.0/24", "--vni", "6200"])
        .unwrap();
    for (name, host) in [("a1", "h1"), ("a2", "h2"), ("b1", "h1"), ("b2", "h2")] {
        c.container(host, name).unwrap();
    }
    let a1 = addresses(&c.attach("a1", "blue", &[]).unwrap());
    let a2 = addresses(&c.attach("a2", "blue", &[]).unwrap());
    let b1 = addresses(&c.attach("b1", "default-domain:other:blue", &[]).unwrap());
    let b2 = addresses(&c.attach("b2", "default-domain:other:blue", &[]).unwrap());
    assert_eq!((&a1, &a2), (&b1, &b2), "the same addresses in both projects");
    settled(&c, &["h1", "h2"]);
    // Two streams at once between the same addresses and ports, one in each
    // network: each arrives whole, and b2 sees nothing of a1's.
    let (mut ra, mut rb) = (serde_json::Value::Null, serde_json::Value::Null);
    let seen = seen_by(&c, "b2", &["tcp", "port", "5202"], || {
        thread::scope(|s| {
            let a = s.spawn(|| iperf_on(&c, "a1", "a2", &a2[0], "5202", &["-t", "3"]));
            let b = s.spawn(|| iperf_on(&c, "b1", "b2", &b2[0], "5203", &["-t", "3"]));
            ra = a.join().unwrap();
            rb = b.join().unwrap();
        })
    });
    for (r, what) in [(&ra, "blue"), (&rb, "other:blue")] {
        let got = r["end"]["sum_received"]["bytes"].as_u64().unwrap();
        assert!(got > 10_000_000, "the stream in {what} moved {got} bytes");
    }
    assert!(seen.is_empty(), "b2 saw packets of the other project's stream: {:?}", &seen[..seen.len().min(5)]);
}

#[test]
fn privileged_a_spoofed_packet_of_a_fast_path_flow_is_dropped() {
    let (mut c, _dir, a2) = two_hosts();
    c.container("h1", "c3").unwrap();
    c.attach("c3", "blue", &[]).unwrap();
    settled(&c, &["h1"]);
    let a1 = first_v4(&c, "c1");
    let mut echo = udp_flow_on_the_fast_path(&c, &a1, &a2[0]);
    // c3 gives itself c1's address and sends datagrams of c1's flow.
    ok(c.exec("c3", "ip", &["addr", "add", &format!("{a1}/32"), "dev", "eth0"]).unwrap(), "ip addr add");
    let seen = seen_by(&c, "c2", &["udp", "port", "7001"], || {
        let _ = c.exec("c3", "python3", &["-c", &udp_send(&a1, &a2[0], "forged", 20)]);
    });
    let _ = echo.kill();
    let _ = echo.wait();
    assert!(seen.is_empty(), "c2 received datagrams c3 forged with c1's address: {seen:?}");
}

/// A Python program that sends `count` datagrams `payload` from `from`:7000
/// to `to`:7001, one every 50 ms.
fn udp_send(from: &str, to: &str, payload: &str, count: u32) -> String {
    format!("import socket,time; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('{from}', 7000))\nfor i in range({count}):\n s.sendto(b'{payload}', ('{to}', 7001)); time.sleep(0.05)")
}

/// A UDP flow from c1 at `a1`:7000 to c2 at `a2`:7001 that the fast path
/// carries (conntrack calls a UDP flow assured once it has lasted 2 s with
/// answers); c2's echo server, to be killed by the caller.
fn udp_flow_on_the_fast_path(c: &Cluster, a1: &str, a2: &str) -> std::process::Child {
    let listen = format!("import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('{a2}', 7001));\nwhile True:\n d,a=s.recvfrom(2000); s.sendto(d,a)");
    let mut echo = Command::new("python3");
    echo.args(["-c", &listen]).stdout(Stdio::null()).stderr(Stdio::null());
    let echo = c.fabric.spawn_in_netns(c.netns_of("c2").unwrap(), echo).expect("python3");
    thread::sleep(Duration::from_millis(300));
    let fast = captured(c, "h1", "eth0", &["udp", "port", "4799"], || {
        ok(c.exec("c1", "python3", &["-c", &udp_send(a1, a2, "genuine", 80)]).unwrap(), "c1's datagrams");
    });
    assert!(!fast.is_empty(), "c1's flow did not take the fast path");
    echo
}

/// The IPv4 address of `container`.
fn first_v4(c: &Cluster, container: &str) -> String {
    let shown = ok(c.exec(container, "ip", &["-4", "-o", "addr", "show", "dev", "eth0"]).unwrap(), "ip addr");
    shown.split_whitespace().skip_while(|w| *w != "inet").nth(1).and_then(|a| a.split('/').next()).unwrap().to_string()
}

#[test]
fn privileged_a_fast_path_datagram_from_outside_the_fabric_reaches_no_container() {
    let (c, _dir, a2) = two_hosts();
    let a1 = first_v4(&c, "c1");
    let mut echo = udp_flow_on_the_fast_path(&c, &a1, &a2[0]);
    // An intruder on the underlay sends datagrams of that very flow to h2 on
    // the fast path's port, as h1 would: h2 takes off the underlay only what
    // comes from the host of the inner packet's source, so these meet the
    // host's guard.
    let intruder = Intruder::new(&c, "h2", FASTPATH_PORT, 6100, &a1, &[&a2[0]]);
    let before = guard_drops(&c, "h2");
    let seen = seen_by(&c, "c2", &["udp", "port", "7001"], || {
        ok(intruder.exec("python3", &["-c", &udp_send(&a1, &a2[0], "forged", 20)]), "the intruder's datagrams");
    });
    let dropped = guard_drops(&c, "h2") - before;
    let _ = echo.kill();
    let _ = echo.wait();
    assert!(seen.is_empty(), "c2 received datagrams an intruder sent on the fast path's port: {seen:?}");
    assert!(dropped >= 20, "h2's guard dropped {dropped} of the intruder's 20 datagrams");
}

#[test]
fn privileged_flows_between_networks_a_policy_connects_take_the_fast_path() {
    let (mut c, _dir) = cluster(&["h1", "h2"]);
    c.cli_ok(&["network", "add", "green", "--subnet", "10.62.0.0/24", "--vni", "6300"]).unwrap();
    c.cli_ok(&["policy", "add", "blue-green", "--rule", "pass any blue any <> green any"]).unwrap();
    for n in ["blue", "green"] {
        c.cli_ok(&["network", "update", n, "--policy", "blue-green"]).unwrap();
    }
    for (name, host) in [("c1", "h1"), ("c2", "h2"), ("c3", "h1")] {
        c.container(host, name).unwrap();
    }
    c.attach("c1", "blue", &[]).unwrap();
    let g2 = addresses(&c.attach("c2", "green", &[]).unwrap());
    let g3 = addresses(&c.attach("c3", "green", &[]).unwrap());
    assert_eq!(c.ping("c1", &g2[0], 2).unwrap(), 2, "blue reaches green across hosts");
    settled(&c, &["h1", "h2"]);

    across_hosts_on_the_fast_path(&c, "c2", &g2[0]);

    let (on_bridges, _, sent) = steady(&c, "c1", "c3", &g3[0], |c| {
        let mut on_green = vec![];
        let mut on_blue = captured(c, "h1", "tb6100", &["tcp"], || {
            on_green = captured(c, "h1", "tb6300", &["tcp"], || thread::sleep(Duration::from_secs(1)));
        });
        on_blue.extend(on_green);
        (on_blue, vec![])
    });
    assert!(sent > 10_000_000, "iperf3 moved {sent} bytes");
    assert!(on_bridges.is_empty(), "TCP packets between the networks crossed a bridge: {on_bridges:?}");
}

#[test]
fn privileged_ipv6_flows_take_the_fast_path() {
    let (mut c, _dir) = cluster(&["h1", "h2"]);
    c.cli_ok(&["network", "add", "six", "--subnet", "fd61::/64", "--vni", "6400"]).unwrap();
    c.container("h1", "c1").unwrap();
    c.container("h2", "c2").unwrap();
    c.attach("c1", "six", &[]).unwrap();
    let a2 = addresses(&c.attach("c2", "six", &[]).unwrap());
    assert_eq!(c.ping("c1", &a2[0], 2).unwrap(), 2, "IPv6 across hosts (kernel path: ICMPv6)");
    settled(&c, &["h1", "h2"]);
    across_hosts_on_the_fast_path(&c, "c2", &a2[0]);
}

/// The UDP datagrams the host's own stack received (`Udp: InDatagrams` of
/// its namespace).
fn udp_received(c: &Cluster, host: &str) -> u64 {
    let snmp = ok(exec_in(c.host_netns(host).unwrap(), "cat", ["/proc/net/snmp"]).unwrap(), "/proc/net/snmp");
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let (names, values) = (udp.next().unwrap_or_default(), udp.next().unwrap_or_default());
    let at = names.split_whitespace().position(|n| n == "InDatagrams").expect("Udp: InDatagrams in /proc/net/snmp");
    values.split_whitespace().nth(at).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("Udp counters: {values}"))
}

#[test]
fn privileged_a_host_takes_what_the_kernel_path_must_judge_off_its_underlay_and_judges_it() {
    let (c, _dir, a2) = two_hosts();
    let a1 = first_v4(&c, "c1");
    // Pings (ICMP never takes the fast path) cross the network's own tunnel:
    // h1's program on the network's VXLAN device encapsulates them (the
    // device sends none itself), h2 takes them off its underlay device (its
    // UDP socket, and so `vxlan_rcv`, sees none of them), and c2 still
    // answers every one.
    let (before, sent_before) = (udp_received(&c, "h2"), packets_of(&c, "h1", "tx6100", "tx"));
    let mut answered = 0;
    let tunnel = captured(&c, "h1", "eth0", &["udp", "port", &VXLAN_PORT.to_string()], || {
        answered = c.ping("c1", &a2[0], 10).unwrap();
    });
    let (received, sent) = (udp_received(&c, "h2") - before, packets_of(&c, "h1", "tx6100", "tx") - sent_before);
    assert_eq!(answered, 10, "c2 answered {answered} of c1's 10 pings");
    assert!(tunnel.len() >= 20, "only {} datagrams crossed the network's tunnel: {tunnel:?}", tunnel.len());
    assert!(received < 5, "h2's UDP socket received {received} datagrams while 10 pings crossed to c2");
    // h2's program took h1's datagrams only as the device would have sent
    // them (h1's underlay address, the network's VNI, a zero checksum,
    // lengths that fill the packet): the UDP socket saw none of them.
    assert!(sent < 5, "h1's tx6100 sent {sent} packets itself while 10 pings crossed to c2");

    // An intruder on the underlay sends h2 pings from c1's address on the
    // networks' port, as h1 would: h2 takes off its underlay only what comes
    // from the host of the inner packet's source, so these meet its guard.
    let intruder = Intruder::new(&c, "h2", VXLAN_PORT, 6100, &a1, &[&a2[0]]);
    let before = guard_drops(&c, "h2");
    let seen = seen_by(&c, "c2", &["icmp"], || {
        let _ = intruder.exec("ping", &["-c", "5", "-i", "0.2", "-W", "1", &a2[0]]);
    });
    let dropped = guard_drops(&c, "h2") - before;
    assert!(seen.is_empty(), "c2 received pings an intruder sent on the networks' port: {seen:?}");
    assert!(dropped >= 5, "h2's guard dropped {dropped} of the intruder's 5 pings");
}
