//! Privileged tier: flow records from real traffic. An iperf3 stream
//! between containers on two hosts is recorded once, by the host where it
//! starts, with its networks, endpoints and bytes. Needs root and iperf3;
//! fails with the reason when it cannot run.

use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tessera_testkit::{addresses, exec_in, CONTROLLER_PORT};

#[test]
fn privileged_an_iperf3_stream_is_recorded_once_with_its_bytes() {
    let (mut c, _run) = tessera_testkit::start_cluster("tfl", &["h1", "h2"], env!("CARGO_BIN_EXE_tessera"));
    c.cli_ok(&["network", "add", "red", "--subnet", "10.98.0.0/24"]).unwrap();
    c.container("h1", "c1").unwrap();
    c.container("h2", "c2").unwrap();
    let e1 = c.attach("c1", "red", &[]).unwrap();
    let e2 = c.attach("c2", "red", &[]).unwrap();
    let server = addresses(&e2)[0].clone();

    let mut cmd = Command::new("iperf3");
    cmd.args(["-s", "-1", "-p", "5301"]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let mut srv = c.fabric.spawn_in_netns(c.netns_of("c2").unwrap(), cmd).expect("iperf3 (apt-get install iperf3)");
    thread::sleep(Duration::from_millis(300));
    let out = exec_in(c.netns_of("c1").unwrap(), "iperf3", ["-c", &server, "-p", "5301", "-t", "2", "-J"]).unwrap();
    let _ = srv.wait();
    let v: Value = serde_json::from_slice(&out.stdout).expect("iperf3 -J output");
    let sent = v["end"]["sum_sent"]["bytes"].as_f64().expect("iperf3 bytes sent");

    // The data connection: the largest flow to port 5301, ended.
    let deadline = Instant::now() + Duration::from_secs(5);
    let flows = loop {
        let flows = c.cli_json(&["flow", "list", "--port", "5301"]).unwrap();
        let ended = flows.as_array().unwrap().iter().filter(|f| f["end_ms"].is_u64()).count();
        if ended >= 2 {
            break flows;
        }
        assert!(Instant::now() < deadline, "the stream's flows were not recorded: {flows}\n{}", c.logs_tail(20));
        thread::sleep(Duration::from_millis(200));
    };
    let all = flows.as_array().unwrap();
    assert_eq!(all.len(), 2, "the control and the data connection, each recorded once: {flows}");
    let data = all.iter().max_by_key(|f| f["bytes"].as_u64().unwrap()).unwrap();
    assert_eq!(data["host"], "h1", "recorded where it starts: {data}");
    assert_eq!(data["protocol"], 6);
    assert_eq!(data["dport"], 5301);
    assert_eq!(data["verdict"], "forwarded");
    assert_eq!(data["src_endpoint"], e1["name"], "{data}");
    assert_eq!(data["dst_endpoint"], e2["name"], "{data}");
    assert_eq!(data["src_network"], "default-domain:admin:red");
    let bytes = data["bytes"].as_f64().unwrap();
    let ratio = bytes / sent;
    eprintln!("iperf3 sent {sent} bytes; the flow record counts {bytes} (ratio {ratio:.4})");
    assert!((0.98..=1.02).contains(&ratio), "the record's bytes {bytes} are not iperf3's {sent}: {data}");
    assert!(data["reply_packets"].as_u64().unwrap() > 0);

    // A third container: a smaller pair, for top.
    c.container("h2", "c3").unwrap();
    let small = addresses(&c.attach("c3", "red", &[]).unwrap())[0].clone();
    assert!(c.ping("c1", &small, 3).unwrap() >= 2);

    // follow prints a new connection within a second of it.
    let url = format!("https://{}:{CONTROLLER_PORT}", c.underlay_ip("h1").unwrap());
    let mut args = vec!["--controller".to_string(), url];
    args.extend(c.credential_args("admin"));
    args.extend(["flow", "follow", "--json", "--port", "5302"].map(String::from));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tessera"));
    cmd.args(&args).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut follow = c.fabric.spawn_in_netns(c.host_netns("h1").unwrap(), cmd).unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send((Instant::now(), line));
        }
    });
    thread::sleep(Duration::from_millis(500));
    let mut cmd = Command::new("busybox");
    cmd.args(["nc", "-ll", "-p", "5302", "-e", "/bin/true"]).stdout(Stdio::null()).stderr(Stdio::null());
    let mut listener = c.fabric.spawn_in_netns(c.netns_of("c2").unwrap(), cmd).unwrap();
    thread::sleep(Duration::from_millis(300));
    let connected = Instant::now();
    let out = exec_in(c.netns_of("c1").unwrap(), "busybox", ["nc", "-w", "2", &server, "5302"]).unwrap();
    assert!(out.status.success());
    let (at, line) = rx.recv_timeout(Duration::from_secs(5)).expect("flow follow printed nothing");
    let record: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(record["dport"], 5302, "{line}");
    let took = at.duration_since(connected);
    eprintln!("flow follow printed the connection {took:?} after it was made");
    assert!(took < Duration::from_millis(1500), "flow follow took {took:?}");
    let _ = follow.kill();
    let _ = follow.wait();
    let _ = listener.kill();
    let _ = listener.wait();

    // top orders pairs by bytes: the iperf3 pair first.
    let top = c.cli_json(&["flow", "top", "--by", "pair"]).unwrap();
    let keys: Vec<&str> = top.as_array().unwrap().iter().map(|e| e["key"].as_str().unwrap()).collect();
    let big = format!("{} > {}", e1["name"].as_str().unwrap(), e2["name"].as_str().unwrap());
    assert_eq!(keys.first().copied(), Some(big.as_str()), "{top}");
    let bytes: Vec<u64> = top.as_array().unwrap().iter().map(|e| e["bytes"].as_u64().unwrap()).collect();
    assert!(bytes.windows(2).all(|w| w[0] >= w[1]), "{top}");

    // An agent restarted during a stream finds it again in conntrack: the
    // stream keeps one record per connection, completed with its bytes.
    let mut cmd = Command::new("iperf3");
    cmd.args(["-s", "-1", "-p", "5303"]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let mut srv = c.fabric.spawn_in_netns(c.netns_of("c2").unwrap(), cmd).unwrap();
    thread::sleep(Duration::from_millis(300));
    let mut cmd = Command::new("iperf3");
    cmd.args(["-c", &server, "-p", "5303", "-t", "4", "-J"]).stdout(Stdio::piped()).stderr(Stdio::null());
    let client = c.fabric.spawn_in_netns(c.netns_of("c1").unwrap(), cmd).unwrap();
    thread::sleep(Duration::from_millis(1500));
    c.kill_agent("h1");
    c.start_agent("h1").unwrap();
    let out = client.wait_with_output().unwrap();
    let _ = srv.wait();
    let v: Value = serde_json::from_slice(&out.stdout).expect("iperf3 -J output");
    let sent = v["end"]["sum_sent"]["bytes"].as_f64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let flows = c.cli_json(&["flow", "list", "--port", "5303"]).unwrap();
        let all = flows.as_array().unwrap();
        let data = all.iter().max_by_key(|f| f["bytes"].as_u64().unwrap_or(0));
        let done = all.len() == 2
            && all.iter().all(|f| f["end_ms"].is_u64())
            && data.is_some_and(|d| (0.98..=1.02).contains(&(d["bytes"].as_f64().unwrap() / sent)));
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the agent's restart, the stream's records are not whole (iperf3 sent {sent}): {flows}"
        );
        thread::sleep(Duration::from_millis(300));
    }
}
