//! Privileged tier: policy hit counters as a user sees them, with the real
//! controller and agents on hosts-as-namespaces. Needs root; fails with the
//! reason when it cannot run.

use std::time::{Duration, Instant};

use tessera_testkit::{addresses, Cluster};

fn cluster(hosts: &[&str]) -> (Cluster, tessera_testkit::TestRun) {
    tessera_testkit::start_cluster("tpc", hosts, env!("CARGO_BIN_EXE_tessera"))
}

/// Packets and bytes of rule `rule` of `policy`, as `tessera policy show --json` prints them.
fn hits(c: &Cluster, policy: &str, rule: usize) -> (u64, u64) {
    let v = c.cli_json(&["policy", "show", policy]).expect("tessera policy show");
    let r = &v["counters"]["rules"][rule];
    assert_eq!(r["rule"].as_u64(), Some(rule as u64), "one counter per rule, in order: {v}");
    (r["packets"].as_u64().unwrap(), r["bytes"].as_u64().unwrap())
}

/// Waits until rule `rule` of `policy` shows at least `packets` packets; returns what it shows.
fn wait_for_hits(c: &Cluster, policy: &str, rule: usize, packets: u64) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = hits(c, policy, rule);
        if now.0 >= packets {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "rule {rule} of {policy} shows {now:?}, expected at least {packets} packets\n{}",
            c.logs_tail(15)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn privileged_rule_hit_counters_increase_with_traffic() {
    let (mut c, _dir) = cluster(&["h1", "h2"]);
    c.cli_ok(&["network", "add", "red", "--subnet", "10.21.0.0/24", "--subnet", "fd00:21::/64"]).unwrap();
    c.cli_ok(&["network", "add", "green", "--subnet", "10.22.0.0/24", "--subnet", "fd00:22::/64"]).unwrap();
    c.cli_ok(&[
        "policy",
        "add",
        "web",
        "--rule",
        "pass icmp red any <> green any",
        "--rule",
        "pass icmpv6 red any <> green any",
        "--rule",
        "deny tcp red any > green 22",
    ])
    .unwrap();
    for n in ["red", "green"] {
        c.cli_ok(&["network", "update", n, "--policy", "web"]).unwrap();
    }
    c.container("h1", "r1").unwrap();
    c.container("h2", "g1").unwrap();
    c.attach("r1", "red", &[]).unwrap();
    let g1 = addresses(&c.attach("g1", "green", &[]).unwrap());

    // The policy reaches both hosts; the first flow that passes is a hit.
    let deadline = Instant::now() + Duration::from_secs(15);
    while c.ping("r1", &g1[0], 1).unwrap() != 1 {
        assert!(Instant::now() < deadline, "red never reached green through the policy\n{}", c.logs_tail(15));
    }
    let (p0, b0) = wait_for_hits(&c, "web", 0, 1);
    assert!(b0 > 0, "a hit has bytes");

    // Each ping process is one new ICMP flow: three more flows, three more hits.
    for _ in 0..3 {
        assert_eq!(c.ping("r1", &g1[0], 1).unwrap(), 1);
    }
    let (_, b1) = wait_for_hits(&c, "web", 0, p0 + 3);
    assert!(b1 > b0, "bytes grow with packets: {b0} then {b1}");

    // IPv6 hits its own rule; the deny rule, which no traffic matched, stays at zero.
    assert_eq!(c.ping("r1", &g1[1], 1).unwrap(), 1, "ICMPv6 passes");
    wait_for_hits(&c, "web", 1, 1);
    assert_eq!(hits(&c, "web", 2), (0, 0), "no traffic matched rule 2");

    // Both ends judge each flow, so both hosts count its first packet (four
    // flows each) and the total is their sum; the table a user reads shows it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let v = loop {
        let v = c.cli_json(&["policy", "show", "web"]).unwrap();
        let host = |h: &str| v["counters"]["hosts"][h][0]["packets"].as_u64().unwrap_or(0);
        if host("h1") >= 4 && host("h2") >= 4 {
            assert_eq!(v["counters"]["rules"][0]["packets"].as_u64(), Some(host("h1") + host("h2")), "{v}");
            break v;
        }
        assert!(Instant::now() < deadline, "both hosts should count the four flows: {v}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let p1 = v["counters"]["rules"][0]["packets"].as_u64().unwrap();
    let table = c.cli_ok(&["policy", "show", "web"]).unwrap();
    assert!(table.contains("PACKETS") && table.contains("BYTES"), "{table}");
    let row = table.lines().find(|l| l.contains("pass icmp ")).unwrap_or_else(|| panic!("{table}"));
    let packets: u64 = row.split_whitespace().rev().nth(1).and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("{row}"));
    assert!(packets >= p1, "the table shows {packets} packets for rule 0, the API {p1}: {table}");
}
