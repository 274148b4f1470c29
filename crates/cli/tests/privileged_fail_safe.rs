//! Privileged tier: agents fail safe. A controller started on a new store
//! (another cluster) does not tear down the hosts' data planes: traffic keeps
//! flowing and the agents say why they hold. An endpoint the agent cannot
//! program shows its error and leaves the host's other endpoints working.
//! Needs root; fails with the reason when it cannot run.

use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tessera_testkit::{addresses, admin_http, exec_in, Cluster};

fn cluster(hosts: &[&str]) -> (Cluster, tessera_testkit::TestRun) {
    tessera_testkit::start_cluster("tfs", hosts, env!("CARGO_BIN_EXE_tessera"))
}

/// `tessera status --json` of the agent of `host`.
fn agent_status(c: &Cluster, host: &str) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["status", "--json", "--socket"])
        .arg(c.agent_socket(host))
        .output()
        .expect("run tessera status");
    assert!(out.status.success(), "tessera status failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("tessera status --json prints JSON")
}

#[test]
fn privileged_a_controller_on_a_new_store_does_not_stop_running_traffic() {
    let (mut c, _dir) = cluster(&["h1", "h2"]);
    c.cli_ok(&["network", "add", "blue", "--subnet", "10.71.0.0/24"]).unwrap();
    c.container("h1", "c1").unwrap();
    c.container("h2", "c2").unwrap();
    addresses(&c.attach("c1", "blue", &[]).unwrap());
    let a2 = addresses(&c.attach("c2", "blue", &[]).unwrap());
    assert_eq!(c.ping("c1", &a2[0], 2).unwrap(), 2);

    // An iperf3 stream of 8 s from c1 to c2, reported per second.
    let mut server = Command::new("iperf3");
    server.args(["-s", "-1"]).stdout(Stdio::null()).stderr(Stdio::null());
    let mut srv = c.fabric.spawn_in_netns(c.netns_of("c2").unwrap(), server).expect("iperf3 (install iperf3)");
    thread::sleep(Duration::from_millis(300));
    let mut client = Command::new("iperf3");
    client.args(["-c", &a2[0], "-t", "8", "-i", "1", "-J"]).stdout(Stdio::piped()).stderr(Stdio::piped());
    let stream = c.fabric.spawn_in_netns(c.netns_of("c1").unwrap(), client).unwrap();
    thread::sleep(Duration::from_secs(1));

    // The controller's store is lost; an operator starts it on a new one.
    c.kill_controller();
    std::fs::remove_dir_all(c.spec().run_dir.join("controller")).expect("remove the controller's store");
    c.start_controller().expect("the controller starts on a new store with --init");

    // Both agents notice and hold, saying why.
    let deadline = Instant::now() + Duration::from_secs(10);
    for host in ["h1", "h2"] {
        loop {
            let s = agent_status(&c, host);
            if s["holding"].as_str().is_some_and(|h| h.contains("cluster")) {
                break;
            }
            assert!(Instant::now() < deadline, "the agent of {host} does not report the other cluster: {s}");
            thread::sleep(Duration::from_millis(200));
        }
    }
    let shown = c.tessera_on("h1", &["status", "--socket", &c.agent_socket("h1").display().to_string()], &[]).unwrap();
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("holding:") && text.contains("cluster"), "tessera status does not say the agent holds: {text}");

    let out = stream.wait_with_output().unwrap();
    let _ = srv.wait();
    assert!(out.status.success(), "iperf3 failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 -J");
    let per_second: Vec<u64> =
        v["intervals"].as_array().expect("iperf3 intervals").iter().map(|i| i["sum"]["bytes"].as_u64().unwrap_or(0)).collect();
    assert!(per_second.len() >= 7, "iperf3 reported {per_second:?}");
    assert!(
        per_second.iter().all(|b| *b > 0),
        "traffic stopped while the controller changed stores: bytes per second {per_second:?}"
    );
    assert_eq!(c.ping("c1", &a2[0], 2).unwrap(), 2, "the data plane is still in place");
    assert_eq!(c.cli_json(&["network", "list"]).unwrap().as_array().map(Vec::len), Some(0), "the new store is empty");
}

#[test]
fn privileged_an_endpoint_the_agent_cannot_program_leaves_the_others_working() {
    let (mut c, _dir) = cluster(&["h1", "h2"]);
    let net = c.cli_json(&["network", "add", "green", "--subnet", "10.72.0.0/24"]).unwrap();
    c.container("h1", "c1").unwrap();
    c.container("h2", "c2").unwrap();
    let a1 = addresses(&c.attach("c1", "green", &[]).unwrap());
    let a2 = addresses(&c.attach("c2", "green", &[]).unwrap());

    // An endpoint on h1 whose namespace does not exist (a valid path: the
    // controller cannot know); the agent of h1 cannot program it.
    let missing = format!("/run/netns/{}-gone", c.fabric.prefix());
    let body = serde_json::json!({
        "network": net["id"], "host": "h1", "name": "ghost",
        "owner": {"netns": missing, "ifname": "eth0"}
    });
    // From inside the controller's host: the underlay is reachable there.
    let (builder, url) = (admin_http(&c).unwrap(), format!("{}/v1/endpoints", c.url));
    let (status, ghost) = tessera_fabric::run_in(c.host_netns(c.controller_host()).unwrap(), move || {
        let resp = builder.build().unwrap().post(url).json(&body).send().expect("the controller answers");
        (resp.status(), resp.json::<serde_json::Value>().unwrap_or_default())
    })
    .unwrap();
    assert!(status.is_success(), "create: {status} {ghost}");
    let id = ghost["id"].as_str().unwrap().to_string();

    let deadline = Instant::now() + Duration::from_secs(15);
    let shown = loop {
        let e = c.cli_json(&["endpoint", "show", &id]).unwrap();
        if e["status"] == "failed" {
            break e;
        }
        assert!(Instant::now() < deadline, "the endpoint never shows its failure: {e}");
        thread::sleep(Duration::from_millis(200));
    };
    let why = shown["status_message"].as_str().unwrap_or_default();
    assert!(why.contains(&missing) || why.contains("namespace"), "the failure does not say what is wrong: {shown}");

    // The host's other endpoint works in both directions, and a new one too.
    assert_eq!(c.ping("c1", &a2[0], 2).unwrap(), 2);
    assert_eq!(c.ping("c2", &a1[0], 2).unwrap(), 2);
    c.container("h1", "c3").unwrap();
    let a3 = addresses(&c.attach("c3", "green", &[]).unwrap());
    assert_eq!(c.ping("c3", &a2[0], 2).unwrap(), 2, "a new endpoint on the same host is programmed");
    assert_eq!(c.ping("c2", &a3[0], 2).unwrap(), 2);
}

/// Whether Tessera's three tables are in `host`'s ruleset.
fn tables_in_place(c: &Cluster, host: &str) -> bool {
    let out = exec_in(c.host_netns(host).unwrap(), "nft", ["list", "tables"]).expect("nft");
    let text = String::from_utf8_lossy(&out.stdout);
    ["table inet tessera\n", "table bridge tessera\n", "table inet tessera_policy\n"].iter().all(|t| text.contains(t))
}

#[test]
fn privileged_a_flushed_ruleset_is_restored_within_a_second_and_isolated_networks_stay_apart() {
    let (mut c, _dir) = cluster(&["h1", "h2"]);
    c.cli_ok(&["network", "add", "red", "--subnet", "10.81.0.0/24"]).unwrap();
    c.cli_ok(&["network", "add", "blue", "--subnet", "10.82.0.0/24"]).unwrap();
    for (name, host) in [("r1", "h1"), ("r2", "h2"), ("b2", "h2")] {
        c.container(host, name).unwrap();
    }
    addresses(&c.attach("r1", "red", &[]).unwrap());
    let r2 = addresses(&c.attach("r2", "red", &[]).unwrap());
    let b2 = addresses(&c.attach("b2", "blue", &[]).unwrap());
    assert_eq!(c.ping("r1", &r2[0], 2).unwrap(), 2);
    assert!(tables_in_place(&c, "h1") && tables_in_place(&c, "h2"));

    // b2 listens; r1 (another network) floods it across the flush.
    let mut dump = Command::new("tcpdump");
    dump.args(["-n", "-i", "eth0", "-c", "1", "icmp"]).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut dump = c.fabric.spawn_in_netns(c.netns_of("b2").unwrap(), dump).expect("run tcpdump (install tcpdump)");
    let mut flood = Command::new("ping");
    flood.args(["-n", "-q", "-i", "0.01", "-w", "4", &b2[0]]).stdout(Stdio::null()).stderr(Stdio::null());
    let mut flood = c.fabric.spawn_in_netns(c.netns_of("r1").unwrap(), flood).unwrap();
    thread::sleep(Duration::from_millis(700));

    let mut recovery = Vec::new();
    for host in ["h1", "h2"] {
        let flushed = tessera_testkit::exec_in(c.host_netns(host).unwrap(), "nft", ["flush", "ruleset"]).unwrap();
        assert!(flushed.status.success(), "nft flush ruleset: {}", String::from_utf8_lossy(&flushed.stderr));
        let t = Instant::now();
        while !tables_in_place(&c, host) {
            assert!(t.elapsed() < Duration::from_secs(5), "{host}'s tables are not back after 5 s\n{}", c.logs_tail(20));
            thread::sleep(Duration::from_millis(10));
        }
        recovery.push((host, t.elapsed()));
    }
    let _ = flood.wait();
    thread::sleep(Duration::from_millis(300));
    let captured = dump.try_wait().unwrap().is_some();
    let _ = dump.kill();
    let out = dump.wait_with_output().unwrap();
    assert!(!captured, "a packet of red reached blue during the recovery: {}", String::from_utf8_lossy(&out.stdout));
    for (host, took) in &recovery {
        println!("{host}: Tessera's tables back {took:?} after nft flush ruleset");
        assert!(*took <= Duration::from_secs(1), "{host}'s tables came back after {took:?}");
    }
    // Everything works again: the network, its anti-spoofing and the host's guard.
    assert_eq!(c.ping("r1", &r2[0], 2).unwrap(), 2, "red works again across hosts");
    let guard = exec_in(c.host_netns("h1").unwrap(), "nft", ["list", "chain", "inet", "tessera", "input"]).unwrap();
    assert!(String::from_utf8_lossy(&guard.stdout).contains("vteps4"), "the host's guard is back");
    let spoof = exec_in(c.host_netns("h1").unwrap(), "nft", ["list", "set", "bridge", "tessera", "ep4"]).unwrap();
    assert!(String::from_utf8_lossy(&spoof.stdout).contains("10.81.0."), "anti-spoofing elements are back");
}

#[test]
fn privileged_without_its_nftables_a_host_forwards_nothing_from_its_containers() {
    let (mut c, _dir) = cluster(&["h1", "h2"]);
    c.cli_ok(&["network", "add", "red", "--subnet", "10.83.0.0/24"]).unwrap();
    c.cli_ok(&["network", "add", "green", "--subnet", "10.84.0.0/24"]).unwrap();
    c.cli_ok(&["policy", "add", "open", "--rule", "pass any any any <> any any"]).unwrap();
    for n in ["red", "green"] {
        c.cli_ok(&["network", "update", n, "--policy", "open"]).unwrap();
    }
    for (name, host) in [("r1", "h1"), ("r2", "h2"), ("g2", "h2")] {
        c.container(host, name).unwrap();
    }
    addresses(&c.attach("r1", "red", &[]).unwrap());
    let r2 = addresses(&c.attach("r2", "red", &[]).unwrap());
    let g2 = addresses(&c.attach("g2", "green", &[]).unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.ping("r1", &g2[0], 1).unwrap() != 1 {
        assert!(Instant::now() < deadline, "red never reached green through the policy");
    }
    assert_eq!(c.ping("r1", &r2[0], 1).unwrap(), 1);

    // h1's agent is gone and its nftables with it: nothing that its
    // container sends is forwarded, neither within its network nor to the
    // network a policy connects it to (spoofed or not).
    c.stop_agent("h1");
    let flushed = exec_in(c.host_netns("h1").unwrap(), "nft", ["flush", "ruleset"]).unwrap();
    assert!(flushed.status.success());
    assert_eq!(c.ping("r1", &r2[0], 2).unwrap(), 0, "red was forwarded without its rules");
    assert_eq!(c.ping("r1", &g2[0], 2).unwrap(), 0, "red reached green without the policy's rules");

    // The agent back: everything as before.
    c.start_agent("h1").unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while c.ping("r1", &r2[0], 1).unwrap() != 1 {
        assert!(Instant::now() < deadline, "red does not work again after the agent restored its tables");
    }
    assert_eq!(c.ping("r1", &g2[0], 2).unwrap(), 2);
}
