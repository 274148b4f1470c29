//! Privileged tier: service chaining (seed 002, dockwall) with real
//! packets. A client in `red` on h1, a server in `green` on h2, network
//! functions on h3 (and h2): with a rule `pass … apply-service`, traffic
//! between them goes through the function's left and right interfaces in
//! both directions (tcpdump there), keeps its addresses, and obeys the
//! function's own firewall. Several instances share flows; a dead one
//! leaves the chain; with none left the chain fails closed or open. Needs
//! root; fails with the reason when it cannot run.

use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tessera_testkit::docker::Dockerd;
use tessera_testkit::vnf::{import_vnf, VNF_IMAGE};
use tessera_testkit::{addresses, exec_in, Cluster};

/// A process stopped and reaped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(c: &Cluster, container: &str, args: &[&str]) -> String {
    let out = exec_in(c.netns_of(container).unwrap(), args[0], &args[1..]).unwrap();
    assert!(out.status.success(), "{}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// red and green, a template, service `name` between them with its
/// instance `vnf` (a namespace on `host`) attached through that host's
/// agent, the client on h1 and the server on h2; returns (client, server)
/// addresses.
fn fabric(c: &mut Cluster, extra: &[&str]) -> (String, String) {
    c.cli_ok(&["network", "add", "red", "--subnet", "10.91.0.0/24"]).unwrap();
    c.cli_ok(&["network", "add", "green", "--subnet", "10.92.0.0/24"]).unwrap();
    c.cli_ok(&["service-template", "add", "fw", "--interface", "left", "--interface", "right"]).unwrap();
    let mut args = vec!["service", "add", "fw1", "--template", "fw", "--left", "red", "--right", "green"];
    args.extend_from_slice(extra);
    c.cli_ok(&args).unwrap();
    c.container("h1", "client").unwrap();
    c.container("h2", "server").unwrap();
    let client = addresses(&c.attach("client", "red", &[]).unwrap())[0].clone();
    let server = addresses(&c.attach("server", "green", &[]).unwrap())[0].clone();
    (client, server)
}

/// Attaches namespace `name` on `host` as an instance of `service`, with a
/// firewall that counts what it forwards and drops TCP port 22.
fn instance(c: &mut Cluster, host: &str, service: &str, name: &str) {
    c.container(host, name).unwrap();
    let ns = c.netns_of(name).unwrap().path().display().to_string();
    let sock = c.agent_socket(host).display().to_string();
    c.cli_on(host, &["service", "add", name, "--service", service, "--netns", &ns, "--socket", &sock], &[]).unwrap();
    let rules = "table inet vnf {\n chain forward {\n  type filter hook forward priority 0; policy accept;\n  tcp dport 22 counter drop\n  counter\n }\n}\n";
    let file = std::env::temp_dir().join(format!("tessera-vnf-{}-{name}.nft", std::process::id()));
    std::fs::write(&file, rules).unwrap();
    run(c, name, &["nft", "-f", &file.display().to_string()]);
    let _ = std::fs::remove_file(file);
}

/// Packets the instance forwarded (its firewall's counter).
fn forwarded(c: &Cluster, name: &str) -> u64 {
    counted(&run(c, name, &["nft", "-j", "list", "chain", "inet", "vnf", "forward"]))
}

/// The packets of the plain counter of `nft -j list chain inet vnf forward`.
fn counted(json: &str) -> u64 {
    let v: Value = serde_json::from_str(json).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["rule"]["expr"].as_array())
        .filter(|e| e.len() == 1)
        .filter_map(|e| e[0]["counter"]["packets"].as_u64())
        .sum()
}

fn service(c: &Cluster, name: &str) -> Value {
    c.cli_json(&["service", "show", name]).unwrap()
}

/// Waits until `service` has `n` healthy instances.
fn wait_healthy(c: &Cluster, name: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = service(c, name);
        let healthy = v["instances"].as_array().unwrap().iter().filter(|i| i["healthy"] == true).count();
        if healthy == n {
            return;
        }
        assert!(Instant::now() < deadline, "service {name} never had {n} healthy instances: {v}\n{}", c.logs_tail(30));
        thread::sleep(Duration::from_millis(100));
    }
}

fn attach_policy(c: &Cluster, rule: &str) {
    c.cli_ok(&["policy", "add", "p", "--rule", rule]).unwrap();
    c.cli_ok(&["network", "update", "red", "--policy", "p"]).unwrap();
    c.cli_ok(&["network", "update", "green", "--policy", "p"]).unwrap();
}

fn tcpdump(c: &Cluster, container: &str, ifname: &str, filter: &str, count: u32) -> Proc {
    let mut cmd = Command::new("timeout");
    cmd.args(["8", "tcpdump", "-l", "-n", "-i", ifname, "-c", &count.to_string(), filter])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    Proc(c.fabric.spawn_in_netns(c.netns_of(container).unwrap(), cmd).expect("run tcpdump (install tcpdump)"))
}

fn dumped(mut p: Proc) -> String {
    let child = std::mem::replace(&mut p.0, Command::new("true").spawn().unwrap());
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A TCP listener on `port` in `container` that accepts any number of connections.
fn listen(c: &Cluster, container: &str, port: u16) -> Proc {
    let mut cmd = Command::new("busybox");
    cmd.args(["nc", "-ll", "-p", &port.to_string(), "-e", "/bin/true"]).stdout(Stdio::null()).stderr(Stdio::null());
    Proc(c.fabric.spawn_in_netns(c.netns_of(container).unwrap(), cmd).expect("busybox nc (install busybox-static)"))
}

/// Whether `container` can open a TCP connection to `dst:port` (from a new
/// source port each time).
fn connects(c: &Cluster, container: &str, dst: &str, port: u16) -> bool {
    let out = exec_in(c.netns_of(container).unwrap(), "busybox", ["nc", "-w", "2", dst, &port.to_string()]).unwrap();
    out.status.success()
}

#[test]
fn privileged_a_chain_steers_both_directions_through_the_function() {
    let (mut c, _run) = tessera_testkit::start_cluster("svc1", &["h1", "h2", "h3"], env!("CARGO_BIN_EXE_tessera"));
    let (client, server) = fabric(&mut c, &[]);
    instance(&mut c, "h3", "fw1", "vnf");
    wait_healthy(&c, "fw1", 1);
    attach_policy(&c, "pass any red any <> green any apply-service fw1");

    // tcpdump on both of the function's interfaces, then real packets.
    let left = tcpdump(&c, "vnf", "left", "icmp", 2);
    let right = tcpdump(&c, "vnf", "right", "icmp", 2);
    thread::sleep(Duration::from_millis(600));
    let replies = c.ping("client", &server, 3).unwrap();
    assert!(replies >= 2, "the client did not reach the server through the function\n{}", c.logs_tail(30));
    for (ifname, dump) in [("left", left), ("right", right)] {
        let text = dumped(dump);
        // The addresses are kept: the server sees the client's own address.
        assert!(text.contains(&format!("{client} > {server}: ICMP echo request")), "{ifname}: {text}");
        assert!(text.contains(&format!("{server} > {client}: ICMP echo reply")), "{ifname}: {text}");
    }

    // The function's own firewall decides: TCP 22 dropped, 80 passes.
    let _web = listen(&c, "server", 80);
    let _ssh = listen(&c, "server", 22);
    thread::sleep(Duration::from_millis(300));
    assert!(connects(&c, "client", &server, 80), "port 80 through the function");
    assert!(!connects(&c, "client", &server, 22), "the function drops port 22, so the chain really goes through it");
    assert!(forwarded(&c, "vnf") > 0);

    // vif list marks the service ports; service show counts their traffic.
    let sock = c.agent_socket("h3").display().to_string();
    let out = c.tessera_on("h3", &["vif", "list", "--socket", &sock, "--json"], &[]).unwrap();
    let vifs: Value = serde_json::from_slice(&out.stdout).unwrap();
    let marked: Vec<&str> = vifs.as_array().unwrap().iter().filter_map(|v| v["service"].as_str()).collect();
    assert_eq!(marked.len(), 2, "{vifs}");
    assert!(marked.contains(&"fw1/vnf left"), "{marked:?}");
    let deadline = Instant::now() + Duration::from_secs(6);
    while service(&c, "fw1")["instances"][0]["ports"][0]["traffic"]["packets_in"].as_u64().unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "no traffic reported: {}", service(&c, "fw1"));
        thread::sleep(Duration::from_millis(200));
    }

    // Without the rule's apply-service, the plain pass goes directly.
    let before = forwarded(&c, "vnf");
    c.cli_ok(&["policy", "update", "p", "--rule", "pass any red any <> green any"]).unwrap();
    thread::sleep(Duration::from_millis(500));
    assert!(c.ping("client", &server, 3).unwrap() >= 2);
    assert!(connects(&c, "client", &server, 22), "port 22 passes directly");
    assert_eq!(forwarded(&c, "vnf"), before, "nothing went through the function");
}

#[test]
fn privileged_instances_share_flows_and_a_dead_one_leaves_the_chain() {
    let (mut c, _run) = tessera_testkit::start_cluster("svc2", &["h1", "h2", "h3"], env!("CARGO_BIN_EXE_tessera"));
    let (_client, server) = fabric(&mut c, &["--probe", "ping"]);
    instance(&mut c, "h3", "fw1", "vnf-a");
    instance(&mut c, "h2", "fw1", "vnf-b");
    wait_healthy(&c, "fw1", 2);
    attach_policy(&c, "pass tcp red any > green 80 apply-service fw1");
    let _web = listen(&c, "server", 80);
    thread::sleep(Duration::from_millis(300));

    // Many flows (new source ports): both instances carry some, and each
    // flow's packets both ways went through one (the connections work).
    for _ in 0..24 {
        assert!(connects(&c, "client", &server, 80), "{}", c.logs_tail(20));
    }
    let (a, b) = (forwarded(&c, "vnf-a"), forwarded(&c, "vnf-b"));
    assert!(a > 0 && b > 0, "flows did not spread over both instances: {a} and {b}");

    // One dies (its interfaces go down): new flows go to the other within 2 s.
    let killed = Instant::now();
    run(&c, "vnf-a", &["ip", "link", "set", "left", "down"]);
    let mut ok = 0;
    while ok < 10 {
        if connects(&c, "client", &server, 80) {
            ok += 1;
        } else {
            ok = 0;
        }
        assert!(killed.elapsed() < Duration::from_secs(10), "connections kept failing after an instance left");
    }
    wait_healthy(&c, "fw1", 1);

    // None left: closed stops the traffic.
    run(&c, "vnf-b", &["ip", "link", "set", "right", "down"]);
    wait_healthy(&c, "fw1", 0);
    thread::sleep(Duration::from_millis(500));
    assert!(!connects(&c, "client", &server, 80), "fail closed: nothing passes without an instance");
}

#[test]
fn privileged_fail_open_passes_directly_without_instances() {
    let (mut c, _run) = tessera_testkit::start_cluster("svc3", &["h1", "h2", "h3"], env!("CARGO_BIN_EXE_tessera"));
    let (_client, server) = fabric(&mut c, &["--fail", "open", "--probe", "tcp:9"]);
    attach_policy(&c, "pass any red any <> green any apply-service fw1");
    thread::sleep(Duration::from_millis(500));
    assert!(c.ping("client", &server, 3).unwrap() >= 2, "fail open: the plain pass\n{}", c.logs_tail(20));
    let _ssh = listen(&c, "server", 22);
    // An instance that answers the TCP probe then takes the traffic.
    instance(&mut c, "h3", "fw1", "vnf");
    let probed = listen(&c, "vnf", 9);
    wait_healthy(&c, "fw1", 1);
    thread::sleep(Duration::from_millis(500));
    assert!(!connects(&c, "client", &server, 22), "with an instance, its firewall decides");
    // Its probe fails: it leaves the chain, and the traffic passes directly again.
    drop(probed);
    wait_healthy(&c, "fw1", 0);
    let v = service(&c, "fw1");
    assert!(v["instances"][0]["message"].as_str().unwrap_or_default().contains("tcp:9"), "{v}");
    thread::sleep(Duration::from_millis(500));
    assert!(connects(&c, "client", &server, 22), "fail open without a healthy instance");
}

#[test]
fn privileged_the_seed_scenario_with_a_docker_function_on_a_third_host() {
    let (mut c, run) = tessera_testkit::start_cluster("svc4", &["h1", "h2", "h3"], env!("CARGO_BIN_EXE_tessera"));
    let (client, server) = fabric(&mut c, &["--probe", "ping"]);
    let d = Dockerd::start(c.host_netns("h3").unwrap(), &run.dir.path().join("docker"))
        .unwrap_or_else(|e| panic!("cannot start dockerd (apt-get install docker.io): {e:#}"));
    import_vnf(&d, run.dir.path()).unwrap();
    // h3's agent follows the containers of this dockerd across restarts.
    let docker_socket = d.socket().display().to_string();
    c.set_agent_args("h3", &["--docker-socket", &docker_socket]);
    c.stop_agent("h3");
    c.start_agent("h3").unwrap();
    // dockwall's modern equivalent, as a real Docker container with no network of Docker's.
    d.docker_ok(&["run", "-d", "--net", "none", "--cap-add", "NET_ADMIN", "-e", "DROP=22", "--name", "fw", VNF_IMAGE]).unwrap();
    let sock = c.agent_socket("h3").display().to_string();
    let added = c
        .cli_on(
            "h3",
            &["service", "add", "fw-a", "--service", "fw1", "--docker", "fw", "--socket", &sock],
            &[("DOCKER_HOST", &d.host())],
        )
        .unwrap();
    assert_eq!(added["instances"][0]["ports"].as_array().unwrap().len(), 2, "{added}");
    let inside = d.docker_ok(&["exec", "fw", "ip", "rule", "show"]).unwrap();
    assert!(inside.contains("iif left lookup") && inside.contains("iif right lookup"), "{inside}");
    wait_healthy(&c, "fw1", 1);
    attach_policy(&c, "pass any red any <> green any apply-service fw1");

    let _web = listen(&c, "server", 80);
    let _ssh = listen(&c, "server", 22);
    thread::sleep(Duration::from_millis(300));
    assert!(c.ping("client", &server, 3).unwrap() >= 2, "{}", c.logs_tail(30));
    assert!(connects(&c, "client", &server, 80));
    assert!(!connects(&c, "client", &server, 22), "the function's firewall drops port 22");
    let json = d.docker_ok(&["exec", "fw", "nft", "-j", "list", "chain", "inet", "vnf", "forward"]).unwrap();
    assert!(counted(&json) > 0, "the function counted nothing it forwarded: {json}");
    // The server saw the client's own address (in-network keeps addresses).
    let dump = tcpdump(&c, "server", "eth0", "icmp", 1);
    thread::sleep(Duration::from_millis(600));
    c.ping("client", &server, 2).unwrap();
    let text = dumped(dump);
    assert!(text.contains(&format!("{client} > {server}")), "{text}");

    // A restarted container has a new namespace: its interfaces follow it,
    // and the chain works again through it.
    d.docker_ok(&["restart", "-t", "1", "fw"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !connects(&c, "client", &server, 80) {
        assert!(Instant::now() < deadline, "the chain did not come back after a restart\n{}", c.logs_tail(30));
        thread::sleep(Duration::from_millis(200));
    }
    let inside = d.docker_ok(&["exec", "fw", "ip", "-o", "link"]).unwrap();
    assert!(inside.contains("left") && inside.contains("right"), "{inside}");
    assert!(!connects(&c, "client", &server, 22), "its firewall is back too");

    // Instances Tessera runs itself: two containers of the image on h3,
    // attached and healthy; deleting the service removes them.
    let image = ["--image", VNF_IMAGE, "--host", "h3", "--instances", "2", "--env", "DROP=23"];
    let mut args = vec!["service", "add", "fw2", "--template", "fw", "--left", "red", "--right", "green"];
    args.extend_from_slice(&image);
    c.cli_ok(&args).unwrap();
    wait_healthy(&c, "fw2", 2);
    let running = d.docker_ok(&["ps", "--filter", "label=tessera.service", "--format", "{{.Names}}"]).unwrap();
    assert_eq!(running.lines().count(), 2, "{running}");
    let names: Vec<&str> = running.lines().collect();
    let rules = d.docker_ok(&["exec", names[0], "nft", "list", "ruleset"]).unwrap();
    assert!(rules.contains("23"), "the environment reached the function: {rules}");
    c.cli_ok(&["service", "delete", "fw2"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !d.docker_ok(&["ps", "-a", "--filter", "label=tessera.service", "-q"]).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the instances' containers stayed");
        thread::sleep(Duration::from_millis(200));
    }
    drop(d);
}

/// The TTL of the first ICMP echo request (or reply) from `src` that
/// tcpdump -v printed.
fn ttl_of(dump: &str, kind: &str, src: &str) -> u32 {
    let lines: Vec<&str> = dump.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim_start().starts_with(src) && l.contains(kind))
        .unwrap_or_else(|| panic!("no {kind} from {src} in: {dump}"));
    let header = lines[at - 1];
    header
        .split("ttl ")
        .nth(1)
        .and_then(|t| t.split(',').next())
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("{header}"))
}

#[test]
fn privileged_a_chain_of_two_services_goes_through_them_in_order() {
    let (mut c, _run) = tessera_testkit::start_cluster("svc5", &["h1", "h2", "h3"], env!("CARGO_BIN_EXE_tessera"));
    let (client, server) = fabric(&mut c, &[]);
    // fw1 goes from red to the transit network blue, fw2 from blue to green.
    c.cli_ok(&["network", "add", "blue", "--subnet", "10.93.0.0/24"]).unwrap();
    c.cli_ok(&["service", "delete", "fw1"]).unwrap();
    c.cli_ok(&["service", "add", "fw1", "--template", "fw", "--left", "red", "--right", "blue"]).unwrap();
    // fw2 has a management interface too: it keeps the main table.
    c.cli_ok(&["network", "add", "mgmt", "--subnet", "10.94.0.0/24"]).unwrap();
    c.cli_ok(&["service-template", "add", "fwm", "--interface", "left", "--interface", "right", "--interface", "mgmt"]).unwrap();
    c.cli_ok(&["service", "add", "fw2", "--template", "fwm", "--left", "blue", "--right", "green", "--mgmt", "mgmt"]).unwrap();
    instance(&mut c, "h3", "fw1", "vnf1");
    instance(&mut c, "h2", "fw2", "vnf2");
    let rules = run(&c, "vnf2", &["ip", "rule", "show"]);
    assert!(rules.contains("iif left lookup") && rules.contains("iif right lookup") && !rules.contains("iif mgmt"), "{rules}");
    let main = run(&c, "vnf2", &["ip", "route", "show"]);
    assert!(main.contains("default via 10.94.0.1 dev mgmt"), "{main}");
    wait_healthy(&c, "fw1", 1);
    wait_healthy(&c, "fw2", 1);
    attach_policy(&c, "pass any red any <> green any apply-service fw1,fw2");

    let one = tcpdump_v(&c, "vnf1", "left");
    let two = tcpdump_v(&c, "vnf2", "left");
    let one_back = tcpdump_v(&c, "vnf1", "right");
    let two_back = tcpdump_v(&c, "vnf2", "right");
    thread::sleep(Duration::from_millis(600));
    assert!(c.ping("client", &server, 3).unwrap() >= 2, "{}", c.logs_tail(30));
    let (one, two, one_back, two_back) = (dumped(one), dumped(two), dumped(one_back), dumped(two_back));
    // Each routed hop takes one from the TTL: the request meets fw1 first,
    // the reply fw2 first.
    let (t1, t2) = (ttl_of(&one, "echo request", &client), ttl_of(&two, "echo request", &client));
    assert!(t1 > t2, "the request reached fw2 (ttl {t2}) before fw1 (ttl {t1})");
    let (r1, r2) = (ttl_of(&one_back, "echo reply", &server), ttl_of(&two_back, "echo reply", &server));
    assert!(r2 > r1, "the reply reached fw1 (ttl {r1}) before fw2 (ttl {r2})");
    assert!(forwarded(&c, "vnf1") > 0 && forwarded(&c, "vnf2") > 0);

    // Taking the chain away leaves no steering rule or table on any host.
    c.cli_ok(&["network", "update", "red", "--detach-policy", "p"]).unwrap();
    c.cli_ok(&["network", "update", "green", "--detach-policy", "p"]).unwrap();
    thread::sleep(Duration::from_millis(800));
    for h in ["h1", "h2", "h3"] {
        let ns = c.host_netns(h).unwrap();
        let rules = exec_in(ns, "ip", ["rule", "show"]).unwrap();
        let rules = String::from_utf8_lossy(&rules.stdout).into_owned();
        assert!(!rules.lines().any(|l| l.starts_with("995:")), "{h} keeps steering rules: {rules}");
        let chain = exec_in(ns, "nft", ["list", "chain", "inet", "tessera_policy", "steer"]).unwrap();
        let chain = String::from_utf8_lossy(&chain.stdout).into_owned();
        assert!(!chain.contains("jhash") && !chain.contains("meta mark set"), "{h} keeps steering: {chain}");
    }
    // The services go once their instances do.
    c.detach("vnf1", None).unwrap();
    c.detach("vnf2", None).unwrap();
    c.cli_ok(&["policy", "delete", "p"]).unwrap();
    c.cli_ok(&["service", "delete", "fw1", "fw2"]).unwrap();
}

/// tcpdump -v of ICMP on `ifname` in `container` (TTLs shown).
fn tcpdump_v(c: &Cluster, container: &str, ifname: &str) -> Proc {
    let mut cmd = Command::new("timeout");
    cmd.args(["8", "tcpdump", "-l", "-v", "-n", "-i", ifname, "-c", "2", "icmp"]).stdout(Stdio::piped()).stderr(Stdio::null());
    Proc(c.fabric.spawn_in_netns(c.netns_of(container).unwrap(), cmd).expect("run tcpdump (install tcpdump)"))
}
