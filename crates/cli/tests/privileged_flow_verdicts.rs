//! Privileged tier: what policy and anti-spoofing do to flows, as flow
//! records show it. Between two networks joined by a policy, an allowed
//! connection names the rule that allowed it, a connection a rule denies
//! names that rule, one no rule matches names the default, one towards a
//! network no policy joins shows as isolated, and a packet with a forged
//! source shows as spoofed; `tessera flow follow` prints each
//! refused one within a second. Needs root, busybox and ping; fails with
//! the reason when it cannot run.

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tessera_testkit::{addresses, exec_in, CONTROLLER_PORT};

/// Waits for the first line `follow` printed after `since` that `pick`
/// accepts; returns it and how long after `since` it came.
fn next_line(
    rx: &mpsc::Receiver<(Instant, Value)>,
    since: Instant,
    what: &str,
    pick: impl Fn(&Value) -> bool,
) -> (Value, Duration) {
    let deadline = since + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (at, v) = rx.recv_timeout(left).unwrap_or_else(|_| panic!("flow follow printed no record of {what}"));
        if pick(&v) {
            return (v, at.saturating_duration_since(since));
        }
    }
}

#[test]
fn privileged_refused_flows_show_with_their_rule_or_reason() {
    let (mut c, _run) = tessera_testkit::start_cluster("tfv", &["h1", "h2"], env!("CARGO_BIN_EXE_tessera"));
    c.cli_ok(&["network", "add", "red", "--subnet", "10.96.0.0/24"]).unwrap();
    c.cli_ok(&["network", "add", "green", "--subnet", "10.97.0.0/24"]).unwrap();
    c.cli_ok(&[
        "policy",
        "add",
        "web",
        "--rule",
        "pass tcp red any > green 80",
        "--rule",
        "deny tcp red any > green 22",
        "--rule",
        "pass icmp red any <> green any",
    ])
    .unwrap();
    for n in ["red", "green"] {
        c.cli_ok(&["network", "update", n, "--policy", "web"]).unwrap();
    }
    c.container("h1", "r1").unwrap();
    c.container("h2", "g1").unwrap();
    let r1 = c.attach("r1", "red", &[]).unwrap();
    let g1 = c.attach("g1", "green", &[]).unwrap();
    let green = addresses(&g1)[0].clone();
    c.cli_ok(&["network", "add", "blue", "--subnet", "10.95.0.0/24"]).unwrap();
    c.container("h2", "b1").unwrap();
    let blue = addresses(&c.attach("b1", "blue", &[]).unwrap())[0].clone();
    let r1_name = r1["name"].as_str().unwrap().to_string();
    let g1_name = g1["name"].as_str().unwrap().to_string();
    assert!(c.ping("r1", &green, 3).unwrap() >= 1, "red reaches green by ICMP\n{}", c.logs_tail(20));

    // Follow every record, on h1.
    let url = format!("https://{}:{CONTROLLER_PORT}", c.underlay_ip("h1").unwrap());
    let mut args = vec!["--controller".to_string(), url];
    args.extend(c.credential_args("admin"));
    args.extend(["flow", "follow", "--json"].map(String::from));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tessera"));
    cmd.args(&args).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut follow = c.fabric.spawn_in_netns(c.host_netns("h1").unwrap(), cmd).unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send((Instant::now(), v));
            }
        }
    });
    thread::sleep(Duration::from_millis(500));
    let web = "default-domain:admin:web";

    // Allowed: the record names the rule that allowed it.
    let mut cmd = Command::new("busybox");
    cmd.args(["nc", "-ll", "-p", "80", "-e", "/bin/true"]).stdout(Stdio::null()).stderr(Stdio::null());
    let mut listener = c.fabric.spawn_in_netns(c.netns_of("g1").unwrap(), cmd).expect("busybox nc");
    thread::sleep(Duration::from_millis(300));
    let out = exec_in(c.netns_of("r1").unwrap(), "busybox", ["nc", "-w", "2", &green, "80"]).unwrap();
    assert!(out.status.success(), "red connects to green's port 80");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let flows = c.cli_json(&["flow", "list", "--port", "80"]).unwrap();
        let allowed = flows.as_array().unwrap().iter().find(|f| f["rule"].is_string()).cloned();
        if let Some(f) = allowed {
            assert_eq!(f["verdict"], "forwarded", "{f}");
            assert_eq!(f["rule"], format!("{web} rules[0]"), "the allowing rule: {f}");
            assert_eq!(
                (f["src_network"].as_str(), f["dst_network"].as_str()),
                (Some("default-domain:admin:red"), Some("default-domain:admin:green"))
            );
            assert!(f["tcp_flags"].as_array().is_some_and(|x| x.contains(&Value::from("SYN"))), "{f}");
            break;
        }
        assert!(Instant::now() < deadline, "the allowed connection names no rule: {flows}\n{}", c.logs_tail(20));
        thread::sleep(Duration::from_millis(200));
    }
    let _ = listener.kill();
    let _ = listener.wait();

    // Denied by a rule: named, within a second.
    let tried = Instant::now();
    let out = exec_in(c.netns_of("r1").unwrap(), "busybox", ["nc", "-w", "1", &green, "22"]).unwrap();
    assert!(!out.status.success(), "port 22 is denied");
    let (f, took) = next_line(&rx, tried, "the denied connection to port 22", |v| v["dport"] == 22);
    eprintln!("flow follow printed the denied connection {took:?} after it was tried");
    assert_eq!(f["verdict"], "denied", "{f}");
    assert_eq!(f["rule"], format!("{web} rules[1]"), "{f}");
    assert_eq!((f["src_endpoint"].as_str(), f["dst_endpoint"].as_str()), (Some(r1_name.as_str()), Some(g1_name.as_str())), "{f}");
    assert_eq!(f["host"], "h1", "refused where it starts: {f}");
    assert!(f["tcp_flags"].as_array().is_some_and(|x| x == &[Value::from("SYN")]), "{f}");
    assert!(took < Duration::from_secs(1), "follow took {took:?} to print the denied connection");

    // No rule matches: the default refuses it, and says so.
    let tried = Instant::now();
    let _ = exec_in(c.netns_of("r1").unwrap(), "busybox", ["nc", "-w", "1", &green, "8080"]).unwrap();
    let (f, took) = next_line(&rx, tried, "the connection to port 8080", |v| v["dport"] == 8080);
    eprintln!("flow follow printed the connection no rule allows {took:?} after it was tried");
    assert_eq!(f["verdict"], "denied", "{f}");
    assert!(f["rule"].is_null(), "{f}");
    assert!(f["reason"].as_str().is_some_and(|r| r.contains("default")), "{f}");
    assert!(took < Duration::from_secs(1), "follow took {took:?}");

    // A network no policy joins: refused by isolation, and said so.
    let tried = Instant::now();
    let _ = exec_in(c.netns_of("r1").unwrap(), "busybox", ["nc", "-w", "1", &blue, "443"]).unwrap();
    let (f, took) = next_line(&rx, tried, "the connection to the isolated network", |v| v["dport"] == 443);
    eprintln!("flow follow printed the connection to an isolated network {took:?} after it was tried");
    assert_eq!(f["verdict"], "denied", "{f}");
    assert_eq!(f["dst_network"], "default-domain:admin:blue", "{f}");
    assert!(f["reason"].as_str().is_some_and(|r| r.contains("isolated")), "{f}");
    assert!(took < Duration::from_secs(1), "follow took {took:?}");

    // A forged source address: spoofed, by the endpoint of the port it came from.
    let forged = "10.96.0.250";
    exec_in(c.netns_of("r1").unwrap(), "ip", ["addr", "add", &format!("{forged}/32"), "dev", "eth0"]).unwrap();
    let tried = Instant::now();
    let _ = exec_in(c.netns_of("r1").unwrap(), "ping", ["-c", "2", "-W", "1", "-I", forged, &green]).unwrap();
    let (f, took) = next_line(&rx, tried, "the forged packets", |v| v["verdict"] == "spoofed" && v["protocol"] == 1);
    eprintln!("flow follow printed the forged packets {took:?} after they were sent");
    assert_eq!(f["src"], forged, "{f}");
    assert_eq!(f["src_endpoint"].as_str(), Some(r1_name.as_str()), "the endpoint whose port sent them: {f}");
    assert!(f["reason"].as_str().is_some_and(|r| r.contains("is not endpoint")), "{f}");
    assert!(took < Duration::from_secs(1), "follow took {took:?}");

    // The refused flows can be asked for.
    let denied = c.cli_json(&["flow", "list", "--verdict", "denied"]).unwrap();
    let ports: Vec<u64> = denied.as_array().unwrap().iter().filter_map(|f| f["dport"].as_u64()).collect();
    assert!(ports.contains(&22) && ports.contains(&8080), "{denied}");
    let spoofed = c.cli_json(&["flow", "list", "--verdict", "spoofed"]).unwrap();
    assert!(!spoofed.as_array().unwrap().is_empty(), "{spoofed}");
    let _ = follow.kill();
    let _ = follow.wait();
}
