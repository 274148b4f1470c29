//! Privileged tier: a flood of 100,000 short TCP connections from a
//! container on h1 to one on h2, after 10,000 refused ones to as many ports,
//! with flow recording on. The controller keeps at most `--flow-records`
//! records of the host, the agent follows at most its bound of flows,
//! endpoints attached during the flood are programmed, and the flood is in
//! the records (short connections alike made one, with their count). How much slower an attach is during a flood is a
//! figure of the flows benchmark, not asserted here. Needs root and curl;
//! fails with the reason when it cannot run.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use tessera_testkit::{addresses, exec_in, Cluster};

const CONNECTIONS: u64 = 100_000;
const RECORDS: usize = 5_000;
const PORT: u16 = 7401;
/// The first of the closed ports tried, one connection each.
const CLOSED: u16 = 20_000;
const REFUSED: u16 = 10_000;
const AGENT_METRICS: &str = "127.0.0.1:9109";
const LATE: usize = 3;

fn metrics(c: &Cluster) -> String {
    let url = format!("http://{AGENT_METRICS}/metrics");
    let out =
        exec_in(c.host_netns("h1").unwrap(), "curl", ["-sS", "--max-time", "5", &url]).expect("curl (apt-get install curl)");
    assert!(out.status.success(), "curl {url}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

/// Connects to `to` and resets each connection, `n` times one after the
/// other; how many connected.
fn flood(to: SocketAddr, n: u64) -> u64 {
    let mut made = 0;
    for _ in 0..n {
        if let Ok(conn) = TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
            let linger = nix::libc::linger { l_onoff: 1, l_linger: 0 };
            let _ = nix::sys::socket::setsockopt(&conn, nix::sys::socket::sockopt::Linger, &linger);
            made += 1;
        }
    }
    made
}

/// Tries each of `ports` of `to` once; how many refused.
fn refused(to: std::net::IpAddr, ports: std::ops::Range<u16>) -> u16 {
    let mut n = 0;
    for port in ports {
        let e = TcpStream::connect_timeout(&SocketAddr::new(to, port), Duration::from_secs(2));
        if e.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused) {
            n += 1;
        }
    }
    n
}

/// The records of `port` the controller holds for h1, and how many
/// connections they stand for.
fn recorded(c: &Cluster) -> (usize, u64) {
    let flows = c.cli_json(&["flow", "list", "--host", "h1", "--port", &PORT.to_string(), "--limit", "10000"]).unwrap();
    let all = flows.as_array().unwrap();
    (all.len(), all.iter().map(|f| f["connections"].as_u64().unwrap_or(1)).sum())
}

/// How many records the controller holds for h1.
fn held_of_h1(c: &Cluster) -> usize {
    c.cli_json(&["flow", "list", "--host", "h1", "--limit", "10000"]).unwrap().as_array().unwrap().len()
}

#[test]
fn privileged_a_flood_of_short_connections_stays_within_the_bounds_and_is_recorded() {
    let (mut c, _run) = tessera_testkit::start_cluster("tff", &["h1", "h2"], env!("CARGO_BIN_EXE_tessera"));
    c.set_controller_args(&["--flow-records", &RECORDS.to_string()]);
    c.kill_controller();
    c.start_controller().unwrap();
    c.set_agent_args("h1", &["--metrics-listen", AGENT_METRICS]);
    c.stop_agent("h1");
    c.start_agent("h1").unwrap();
    c.cli_ok(&["network", "add", "red", "--subnet", "10.96.0.0/24"]).unwrap();
    c.container("h1", "c1").unwrap();
    c.container("h2", "c2").unwrap();
    for i in 0..LATE {
        c.container("h1", &format!("late{i}")).unwrap();
    }
    c.attach("c1", "red", &[]).unwrap();
    let server: SocketAddr = format!("{}:{PORT}", addresses(&c.attach("c2", "red", &[]).unwrap())[0]).parse().unwrap();

    let listener = tessera_fabric::run_in(c.netns_of("c2").unwrap(), || TcpListener::bind(("0.0.0.0", PORT))).unwrap().unwrap();
    nix::sys::socket::listen(&listener, nix::sys::socket::Backlog::MAXCONN).unwrap();
    listener.set_nonblocking(true).unwrap();
    let stop = AtomicBool::new(false);
    let before = metrics(&c);
    // Flows not alike: a record each, more than the controller keeps.
    let spread = tessera_fabric::run_in(c.netns_of("c1").unwrap(), || refused(server.ip(), CLOSED..CLOSED + REFUSED)).unwrap();
    assert_eq!(spread, REFUSED, "connections to closed ports of c2 were not all refused");
    let deadline = Instant::now() + Duration::from_secs(60);
    while held_of_h1(&c) < RECORDS {
        assert!(Instant::now() < deadline, "the refused connections were not recorded:\n{}", c.logs_tail(20));
        thread::sleep(Duration::from_secs(1));
    }

    let (made, took, attached, most_active) = thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok(conn) => drop(conn),
                    Err(_) => thread::sleep(Duration::from_millis(1)),
                }
            }
        });
        let client = s.spawn(|| {
            let at = Instant::now();
            let made = tessera_fabric::run_in(c.netns_of("c1").unwrap(), || flood(server, CONNECTIONS)).unwrap();
            (made, at.elapsed())
        });
        // Endpoints attached while it runs, and the agent's bound watched.
        thread::sleep(Duration::from_secs(1));
        let mut attached = Vec::new();
        let mut most_active = 0.0f64;
        for i in 0..LATE {
            attached.push(c.attach(&format!("late{i}"), "red", &[]).map_err(|e| format!("{e:#}")));
            most_active = most_active.max(sample(&metrics(&c), "tessera_agent_flows_active"));
        }
        while !client.is_finished() {
            most_active = most_active.max(sample(&metrics(&c), "tessera_agent_flows_active"));
            thread::sleep(Duration::from_millis(500));
        }
        let (made, took) = client.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        (made, took, attached, most_active)
    });
    eprintln!("{made} connections in {took:?} ({:.0} a second)", made as f64 / took.as_secs_f64());
    assert!(made * 100 >= CONNECTIONS * 99, "only {made} of {CONNECTIONS} connections were made");
    for (i, a) in attached.iter().enumerate() {
        assert!(a.is_ok(), "attaching late{i} during the flood failed: {a:?}\n{}", c.logs_tail(20));
    }

    // The flood's records come as dumps of the table find its connections
    // ended (a big table is dumped less often).
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = recorded(&c);
    while last.1 * 10 < made * 9 && Instant::now() < deadline {
        thread::sleep(Duration::from_secs(1));
        last = recorded(&c);
    }
    eprintln!("the records came within {:?} of the flood's end", Instant::now() - (deadline - Duration::from_secs(90)));
    let (records, connections) = last;
    let after = metrics(&c);
    eprintln!(
        "the controller holds {records} records of the flood standing for {connections} connections; \
         the agent followed at most {most_active} flows at once, recorded {} records and lost {}",
        sample(&after, "tessera_agent_flow_records_total"),
        sample(&after, "tessera_agent_flow_records_dropped_total")
    );
    let held = held_of_h1(&c);
    assert!(held <= RECORDS, "the controller holds {held} records of h1, over its bound of {RECORDS}");
    assert!(most_active <= tessera_agent::flows::MAX_ACTIVE as f64, "the agent followed {most_active} flows at once");
    assert!(
        connections * 10 >= made * 9,
        "the {records} records stand for {connections} of the {made} connections made, not nine in ten"
    );
    assert!(records * 10 <= RECORDS, "{records} records for {made} short connections alike: they were not made one");
    assert!(
        sample(&after, "tessera_agent_reconciles_total") > sample(&before, "tessera_agent_reconciles_total"),
        "the agent did not reconcile during the flood"
    );
}
