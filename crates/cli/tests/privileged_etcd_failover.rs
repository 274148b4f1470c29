//! Privileged tier: the distributed control plane under a kill -9, with
//! everything real. Three hosts as namespaces; a 3-member etcd cluster in
//! the underlay; a controller on h1 and one on h2, both on that etcd; an
//! agent on every host with both controllers' URLs. While a container on
//! h2 pings one on h3 every 10 ms and new containers are attached on h2 and
//! h3 one after the other (through their agents' sockets), the controller
//! the agent of h2 watches (and, as a rule, every agent: they start on the
//! first of their list) is killed with SIGKILL. The agents'
//! watches continue on the other controller within 2 s, every endpoint made
//! before, during and after the kill is reachable from the other host, and
//! the running ping loses no packet: the data plane does not depend on a
//! controller. Needs root and etcd; fails with the reason when it cannot run.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use tessera_testkit::{addresses, controller_url, Cluster};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");

/// Containers made for the stream of attaches (it stops earlier): one
/// attach begins every `STREAM_PACE` at most, so the stream outlasts the
/// failover and the 2.5 s after it however fast attaches are.
const STREAM_MAX: usize = 100;
const STREAM_PACE: Duration = Duration::from_millis(50);

/// The controller is killed once this many attaches of the stream are done.
const KILL_AFTER: usize = 20;

/// The continuous ping: one packet every 10 ms for 15 s, longer than the
/// whole stretch from before the first attach of the stream to after its
/// last.
const PING_INTERVAL: &str = "0.01";
const PING_COUNT: u32 = 1500;

/// The hosts watching the controller at `url` (`"host h2"` → `h2`), or
/// `None` when it does not answer.
fn watching(http: &reqwest::blocking::Client, url: &str) -> Option<BTreeSet<String>> {
    let status: Value = http.get(format!("{url}/v1/status")).send().ok()?.error_for_status().ok()?.json().ok()?;
    Some(
        status["watch"]["watchers"]
            .as_array()?
            .iter()
            .filter_map(|w| w["who"].as_str()?.strip_prefix("host ").map(str::to_string))
            .collect(),
    )
}

/// One attach of the stream: the container, its host, when it began and
/// ended (relative to the stream's start), how many tries it took, its
/// address.
#[derive(Debug)]
struct Attached {
    container: String,
    host: String,
    began: Duration,
    done: Duration,
    tries: u32,
    ip: String,
}

/// Attaches `container` to `network`, retrying a failed attach (a
/// controller gone mid-request) up to 20 times, 100 ms apart; returns the
/// number of tries and the endpoint's first address.
fn attach_retrying(c: &Cluster, container: &str, network: &str, errors: &Mutex<Vec<String>>) -> (u32, String) {
    let mut tries = 0;
    loop {
        tries += 1;
        match c.attach(container, network, &[]) {
            Ok(e) => return (tries, addresses(&e)[0].clone()),
            Err(e) if tries < 20 => {
                errors.lock().unwrap().push(format!("{container} try {tries}: {e:#}"));
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("attach {container} failed {tries} times: {e:#}\n{}", c.logs_tail(30)),
        }
    }
}

/// Pings `dst` from `container` until it answers, at most `patience`.
fn reachable(c: &Cluster, container: &str, dst: &str, patience: Duration) -> bool {
    let deadline = Instant::now() + patience;
    loop {
        if c.ping(container, dst, 1).unwrap() == 1 {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
    }
}

/// `N packets transmitted, M received` of ping's summary.
fn ping_summary(out: &str) -> (u32, u32) {
    let line = out.lines().find(|l| l.contains("packets transmitted")).unwrap_or_else(|| panic!("no ping summary in: {out}"));
    let number = |suffix: &str| -> u32 {
        line.split(", ").find_map(|p| p.strip_suffix(suffix)?.trim().parse().ok()).unwrap_or_else(|| panic!("{suffix} in {line}"))
    };
    (number(" packets transmitted"), number(" received"))
}

#[test]
fn privileged_agents_continue_on_the_other_controller_within_2s_of_a_kill_9_and_traffic_never_stops() {
    let (mut c, _etcd, _run) = tessera_testkit::start_cluster_on_etcd("tef", &["h1", "h2", "h3"], &["h1", "h2"], 3, BIN);
    c.cli_ok(&["network", "add", "blue", "--subnet", "10.7.0.0/24"]).unwrap();
    c.container("h2", "a").unwrap();
    c.container("h3", "b").unwrap();
    let a = addresses(&c.attach("a", "blue", &[]).unwrap())[0].clone();
    let b = addresses(&c.attach("b", "blue", &[]).unwrap())[0].clone();
    let stream_host = |i: usize| if i % 2 == 0 { "h2" } else { "h3" };
    for i in 0..STREAM_MAX {
        c.container(stream_host(i), &format!("s{i}")).unwrap();
    }
    assert!(reachable(&c, "a", &b, Duration::from_secs(10)), "a reaches b before anything happens\n{}", c.logs_tail(30));
    assert!(reachable(&c, "b", &a, Duration::from_secs(10)), "b reaches a before anything happens\n{}", c.logs_tail(30));

    // An administrator's client in h3, where both controllers are reachable.
    let builder = tessera_testkit::admin_http(&c).unwrap().timeout(Duration::from_millis(500));
    let http = tessera_fabric::run_in(c.host_netns("h3").unwrap(), || builder.build()).unwrap().unwrap();
    let urls: Vec<(String, String)> =
        c.controller_hosts().into_iter().map(|h| (h.clone(), controller_url(c.underlay_ip(&h).unwrap()))).collect();
    assert_eq!(urls.len(), 2);

    // Both controllers serve the 3-member etcd and see each other.
    let status: Value = http.get(format!("{}/v1/status", urls[1].1)).send().unwrap().json().unwrap();
    let store = status["store"]["name"].as_str().unwrap_or_default();
    assert!(store.starts_with("etcd ") && store.matches("http://").count() == 3, "{status}");
    assert_eq!(status["controllers"].as_array().map(Vec::len), Some(2), "{status}");

    // The controller the agent of h2 watches (the first of its list unless
    // that one was slow to answer at its start), once h2 and h3 both watch.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (victim, survivor, moving) = loop {
        let on: Vec<BTreeSet<String>> = urls.iter().map(|(_, u)| watching(&http, u).unwrap_or_default()).collect();
        let watches = |h: &str| on.iter().position(|w| w.contains(h));
        if let (Some(v), Some(_)) = (watches("h2"), watches("h3")) {
            break (urls[v].clone(), urls[1 - v].clone(), on[v].clone());
        }
        assert!(Instant::now() < deadline, "h2 and h3 do not both watch a controller: {on:?}\n{}", c.logs_tail(30));
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("the agents of {moving:?} watch the controller of {}; killing it", victim.0);

    // The continuous ping, from h2 to h3, for the whole stretch.
    let mut ping = std::process::Command::new("ping");
    ping.args(["-q", "-n", "-i", PING_INTERVAL, "-c", &PING_COUNT.to_string(), "-W", "1", &b])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let ping = c.fabric.spawn_in_netns(c.netns_of("a").unwrap(), ping).expect("run ping (install iputils-ping)");
    std::thread::sleep(Duration::from_millis(500));

    let stop = AtomicBool::new(false);
    let done = AtomicUsize::new(0);
    let errors = Mutex::new(Vec::new());
    let started = Instant::now();
    let (made, killed_at, moved_after) = std::thread::scope(|s| {
        let stream = s.spawn(|| {
            let mut made = Vec::new();
            for i in 0..STREAM_MAX {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let container = format!("s{i}");
                if let Some(wait) = (STREAM_PACE * i as u32).checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
                let began = started.elapsed();
                let (tries, ip) = attach_retrying(&c, &container, "blue", &errors);
                made.push(Attached { container, host: stream_host(i).to_string(), began, done: started.elapsed(), tries, ip });
                done.fetch_add(1, Ordering::Relaxed);
            }
            made
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while done.load(Ordering::Relaxed) < KILL_AFTER {
            assert!(Instant::now() < deadline, "{KILL_AFTER} attaches before the kill\n{}", c.logs_tail(30));
            std::thread::sleep(Duration::from_millis(10));
        }
        let killed_at = started.elapsed();
        assert!(c.kill_controller_on(&victim.0), "the controller of {} was running", victim.0);
        let killed = Instant::now();
        // The hosts that watched the dead controller watch the other.
        let deadline = killed + Duration::from_secs(10);
        let moved_after = loop {
            let on = watching(&http, &survivor.1).unwrap_or_default();
            if moving.is_subset(&on) {
                break killed.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "{moving:?} do not watch {} after the kill: {on:?}\n{}",
                survivor.1,
                c.logs_tail(30)
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        std::thread::sleep(Duration::from_millis(2500));
        stop.store(true, Ordering::Relaxed);
        (stream.join().unwrap(), killed_at, moved_after)
    });
    let stream_ended = started.elapsed();
    let mut ping = ping;
    assert!(ping.try_wait().unwrap().is_none(), "the ping ran for the whole stretch (make PING_COUNT larger)");

    let errors = errors.into_inner().unwrap();
    // In flight while the agents had no controller: began before they
    // watched the survivor and ended after the kill.
    let in_flight = made.iter().filter(|m| m.began <= killed_at + moved_after && m.done > killed_at).count();
    let after = made.iter().filter(|m| m.done > killed_at).count();
    eprintln!(
        "kill at {killed_at:?}; {moving:?} on {} {moved_after:?} after the kill; {} attaches ({after} ended after the kill, {in_flight} in flight during the failover), {} failed tries: {errors:#?}",
        survivor.0,
        made.len(),
        errors.len()
    );
    for m in made.iter().filter(|m| m.tries > 1) {
        eprintln!("{} on {} took {} tries, done at {:?}", m.container, m.host, m.tries, m.done);
    }
    assert!(moved_after <= Duration::from_secs(2), "the agents continued on the other controller {moved_after:?} after the kill");
    assert!(after >= 3, "attaches went on after the kill: {made:?}");
    assert!(made.iter().any(|m| m.done < killed_at), "attaches before the kill: {made:?}");

    // Every endpoint made is reachable from a container on the other host.
    let mut unreachable = Vec::new();
    for m in &made {
        let from = if m.host == "h2" { "b" } else { "a" };
        if !reachable(&c, from, &m.ip, Duration::from_secs(5)) {
            unreachable.push(m);
        }
    }
    assert!(unreachable.is_empty(), "unreachable endpoints: {unreachable:#?}\n{}", c.logs_tail(40));

    for h in ["h2", "h3"] {
        let log = std::fs::read_to_string(c.log(&format!("agent-{h}"))).unwrap_or_default();
        for l in log.lines().filter(|l| l.contains("failed over") || l.contains("new snapshot")) {
            eprintln!("agent {h}: {l}");
        }
    }

    // The running ping lost nothing.
    let out = ping.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let (sent, received) = ping_summary(&text);
    eprintln!("ping a → b every {PING_INTERVAL} s: {sent} sent, {received} received (stream ended at {stream_ended:?})");
    assert_eq!(sent, PING_COUNT, "{text}");
    assert_eq!(received, sent, "the running traffic was interrupted: {text}\n{}", c.logs_tail(30));
}
