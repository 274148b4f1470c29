//! Privileged tier: dockwall's multi-interface container. Two interfaces
//! attached with `--own-table` each get a routing table of their own in the
//! container, with their default route, and what arrives on one is routed
//! by the other's table; a third interface keeps the main table's default.
//! The same set up by the containers' own DHCP clients with
//! `contrib/udhcpc-own-table.sh`. Needs root; fails with the reason when
//! it cannot run.

use tessera_testkit::exec_in;

fn sh(c: &tessera_testkit::Cluster, args: &[&str]) -> String {
    let out = exec_in(c.netns_of("svc").unwrap(), args[0], &args[1..]).unwrap();
    assert!(out.status.success(), "{}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn privileged_own_tables_route_what_arrives_on_left_out_of_right() {
    let (mut c, _run) = tessera_testkit::start_cluster("tot", &["h1"], env!("CARGO_BIN_EXE_tessera"));
    for (name, subnet) in [("left", "10.81.0.0/24"), ("right", "10.82.0.0/24"), ("mgmt", "10.83.0.0/24")] {
        c.cli_ok(&["network", "add", name, "--subnet", subnet]).unwrap();
    }
    c.container("h1", "svc").unwrap();
    c.attach("svc", "left", &["--ifname", "left", "--own-table"]).unwrap();
    c.attach("svc", "right", &["--ifname", "right", "--own-table"]).unwrap();
    c.attach("svc", "mgmt", &["--ifname", "mgmt"]).unwrap();

    let rules = sh(&c, &["ip", "rule", "show"]);
    assert!(rules.contains("iif left lookup 101") && rules.contains("iif right lookup 100"), "{rules}");
    let left = sh(&c, &["ip", "route", "show", "table", "100"]);
    let right = sh(&c, &["ip", "route", "show", "table", "101"]);
    assert!(left.contains("default via 10.81.0.1 dev left"), "{left}");
    assert!(right.contains("default via 10.82.0.1 dev right"), "{right}");
    let main = sh(&c, &["ip", "route", "show"]);
    assert!(main.contains("default via 10.83.0.1 dev mgmt"), "{main}");
    assert!(!main.contains("dev left") || !main.contains("default via 10.81.0.1"), "{main}");
    assert!(!main.contains("default via 10.82.0.1"), "{main}");

    // What arrives on left for anywhere leaves by right, and the other way.
    sh(&c, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    let via = sh(&c, &["ip", "route", "get", "198.51.100.7", "from", "10.81.0.50", "iif", "left"]);
    assert!(via.contains("via 10.82.0.1 dev right"), "{via}");
    let back = sh(&c, &["ip", "route", "get", "198.51.100.7", "from", "10.82.0.50", "iif", "right"]);
    assert!(back.contains("via 10.81.0.1 dev left"), "{back}");

    // Real packets: the host sends into the left network's bridge, to the
    // container's left interface as next hop; the container forwards them
    // out of right, where tcpdump sees them.
    let host = c.host_netns("h1").unwrap();
    let left_ip = tessera_testkit::addresses(&c.cli_json(&["endpoint", "list", "--network", "left"]).unwrap()[0])[0].clone();
    let vni = c.cli_json(&["network", "show", "left"]).unwrap()["network"]["vni"].as_u64().unwrap();
    let out =
        exec_in(host, "ip", ["route", "add", "198.51.100.7/32", "via", &left_ip, "dev", &format!("tb{vni}"), "onlink"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut cmd = std::process::Command::new("timeout");
    cmd.args(["5", "tcpdump", "-n", "-i", "right", "-c", "1", "icmp and dst host 198.51.100.7"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let dump = c.fabric.spawn_in_netns(c.netns_of("svc").unwrap(), cmd).expect("tcpdump");
    std::thread::sleep(std::time::Duration::from_millis(500));
    for _ in 0..3 {
        let _ = exec_in(host, "ping", ["-c", "1", "-W", "1", "198.51.100.7"]);
    }
    let seen = dump.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&seen.stdout).into_owned();
    assert!(text.contains("198.51.100.7"), "what arrived on left did not leave by right: {text}");
}

#[test]
fn privileged_the_udhcpc_hook_sets_own_tables_from_dhcp() {
    let (mut c, _run) = tessera_testkit::start_cluster("toh", &["h1"], env!("CARGO_BIN_EXE_tessera"));
    for (name, subnet) in [("left", "10.84.0.0/24"), ("right", "10.85.0.0/24")] {
        c.cli_ok(&["network", "add", name, "--subnet", subnet]).unwrap();
    }
    c.container("h1", "svc").unwrap();
    c.attach("svc", "left", &["--ifname", "left", "--dhcp"]).unwrap();
    c.attach("svc", "right", &["--ifname", "right", "--dhcp"]).unwrap();
    let hook = concat!(env!("CARGO_MANIFEST_DIR"), "/../../contrib/udhcpc-own-table.sh");
    for (ifname, table, peer) in [("left", "100", "101"), ("right", "101", "100")] {
        let mut cmd = std::process::Command::new("busybox");
        cmd.args(["udhcpc", "-i", ifname, "-n", "-q", "-t", "5", "-T", "1", "-s", hook])
            .env("TABLE", table)
            .env("PEER_TABLE", peer);
        cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        let out = tessera_fabric::spawn_in(c.netns_of("svc").unwrap(), cmd).unwrap().wait_with_output().unwrap();
        assert!(out.status.success(), "udhcpc on {ifname}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let rules = sh(&c, &["ip", "rule", "show"]);
    assert!(rules.contains("iif left lookup 101") && rules.contains("iif right lookup 100"), "{rules}");
    assert!(sh(&c, &["ip", "route", "show", "table", "100"]).contains("default via 10.84.0.1 dev left"));
    assert!(sh(&c, &["ip", "route", "show", "table", "101"]).contains("default via 10.85.0.1 dev right"));
    sh(&c, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    let via = sh(&c, &["ip", "route", "get", "198.51.100.7", "from", "10.84.0.50", "iif", "left"]);
    assert!(via.contains("via 10.85.0.1 dev right"), "{via}");
}
