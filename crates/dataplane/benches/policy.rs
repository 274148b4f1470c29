//! Policy benchmarks on a two-host fabric (root; it fails, saying why, when
//! it cannot run). Each figure is printed beside its baseline from the same
//! run, and the ratio:
//!
//! 1. new-connection rate (a TCP connect / wait-for-close loop, one client
//!    thread in a container namespace of h1, the server in a container of h2)
//!    between two networks under a 10-rule policy (the matching rule last)
//!    ÷ within one network with no policy;
//! 2. the same between two networks under a 50,000-rule policy (the
//!    matching rule last) ÷ under the 10-rule policy;
//! 3. time from applying one rule change (computing the host's desired
//!    state from the intent, planning, applying) to its enforcement, seen by
//!    probe connections, on a host holding 50,000 rules (p50 and p99 over 20
//!    changes) ÷ the same on the 10-rule policy.
//!
//! Layout: red (r1 on h1, r2 on h2), green (g1 on h2) and blue (b1 on h2);
//! red, green and blue share a route target (so red's empty policy list
//! passes), green has the 50,000-rule policy attached, blue the 10-rule one.
//! Measurements of a subject and its baseline are interleaved in short
//! rounds (conntrack flushed between rounds) and the medians compared.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::intent::{in_netns, network, placed, policy, route_targets, Intent, TcpServers};
use support::{Fabric, Host};
use tessera_dataplane::{reconcile, LinuxDataplane};

const PORT: u16 = 5001;
const ROUND: Duration = Duration::from_millis(1500);
const ROUNDS: usize = 5;
const CHANGES: usize = 20;
/// The pause between two probes of a change: the resolution of its measurement.
const PROBE_EVERY: Duration = Duration::from_millis(1);
const BIG: usize = 50_000;
const SMALL: usize = 10;
const BIG_POLICY: u128 = 0x50;
const SMALL_POLICY: u128 = 0x10;

/// `n` rules, the matching one (`ACTION tcp any any > any PORT`) last: deny
/// rules for other ports first.
fn rules(n: usize, last: &str) -> Vec<String> {
    let mut r: Vec<String> = (0..n - 1).map(|i| format!("deny tcp any any > any {}", 10_000 + i)).collect();
    r.push(format!("{last} tcp any any > any {PORT}"));
    r
}

fn set_policy(intent: &mut Intent, id: u128, n: usize, last: &str) {
    let lines = rules(n, last);
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let p = policy(id, &format!("p{n}"), &refs);
    match intent.policies.iter_mut().find(|x| x.id == p.id) {
        Some(slot) => *slot = p,
        None => intent.policies.push(p),
    }
}

/// Connect, wait for the server's close, close; as many times as fit in
/// `dur`. Connections per second.
fn crr_rate(ns: &str, addr: SocketAddr, dur: Duration) -> f64 {
    in_netns(ns, move || {
        let start = Instant::now();
        let mut n = 0u64;
        let mut buf = [0u8; 1];
        while start.elapsed() < dur {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
            let _ = s.read(&mut buf);
            n += 1;
        }
        n as f64 / start.elapsed().as_secs_f64()
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

struct Bench {
    f: Fabric,
    h1: Host,
    h2: Host,
    dp1: LinuxDataplane,
    dp2: LinuxDataplane,
    intent: Intent,
    r1: String,
}

impl Bench {
    fn flush_conntrack(&self) {
        for h in [&self.h1, &self.h2] {
            let _ = self.f.exec(&h.ns, "conntrack", &["-F"]);
        }
    }

    /// Median rates of `a` and `b` from `r1`, measured in alternating rounds.
    fn compare(&self, a: SocketAddr, b: SocketAddr) -> (f64, f64) {
        let _ = crr_rate(&self.r1, a, Duration::from_millis(300));
        let _ = crr_rate(&self.r1, b, Duration::from_millis(300));
        let (mut ra, mut rb) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            self.flush_conntrack();
            ra.push(crr_rate(&self.r1, a, ROUND));
            self.flush_conntrack();
            rb.push(crr_rate(&self.r1, b, ROUND));
        }
        (median(ra), median(rb))
    }

    async fn converge_all(&self) {
        let hosts = [&self.h1, &self.h2];
        for (dp, h) in [(&self.dp1, &self.h1), (&self.dp2, &self.h2)] {
            let d = self.intent.desired(&hosts, h);
            let report = reconcile(dp, &d).await.expect("reconcile");
            assert!(report.is_ok(), "{:#?}", report.failures);
        }
    }

    /// Applies `n`-rule policy `id` whose last rule is `last` (pass or
    /// reject) to h1 (timed, with probes from r1 to `target` watching for the
    /// flip), then to h2. Returns the milliseconds from the start of the
    /// change to the start of the first probe that saw it enforced (the
    /// probe before it started earlier and saw the old verdict), and those spent
    /// computing the desired state and reconciling.
    async fn change(&mut self, id: u128, n: usize, last: &str, target: SocketAddr) -> (f64, f64, f64) {
        set_policy(&mut self.intent, id, n, last);
        let should_pass = last == "pass";
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let ns = self.r1.clone();
        let t0 = Instant::now();
        let prober = std::thread::spawn(move || {
            in_netns(&ns, move || loop {
                // When the probe started: a dropped connection is told only
                // when its timeout ends, 15 ms after the drop.
                let started = t0.elapsed();
                let ok = TcpStream::connect_timeout(&target, Duration::from_millis(15)).is_ok();
                if ok == should_pass {
                    return started;
                }
                if flag.load(Ordering::Relaxed) && t0.elapsed() > Duration::from_secs(10) {
                    return Duration::MAX;
                }
                // Probing without a pause would take one of the two cores
                // from the change being measured.
                std::thread::sleep(PROBE_EVERY);
            })
        });
        let hosts = [&self.h1, &self.h2];
        let d1 = self.intent.desired(&hosts, &self.h1);
        let compiled = t0.elapsed();
        let report = reconcile(&self.dp1, &d1).await.expect("reconcile h1");
        assert!(report.is_ok(), "{:#?}", report.failures);
        let reconciled = t0.elapsed() - compiled;
        done.store(true, Ordering::Relaxed);
        let seen = prober.join().unwrap();
        assert!(seen != Duration::MAX, "the change was never enforced");
        let d2 = self.intent.desired(&hosts, &self.h2);
        let report = reconcile(&self.dp2, &d2).await.expect("reconcile h2");
        assert!(report.is_ok(), "{:#?}", report.failures);
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        (ms(seen), ms(compiled), ms(reconciled))
    }

    /// Latencies (ms) of `CHANGES` changes of policy `id` (`n` rules),
    /// alternating its last rule between reject and pass (a refusal a probe
    /// sees at once, where a silent drop is seen only when its timeout
    /// ends, and a probe pending in one would hide the flip back to pass);
    /// and the medians of
    /// the compile and reconcile parts.
    async fn changes(&mut self, id: u128, n: usize, target: SocketAddr) -> (Vec<f64>, f64, f64) {
        let (mut out, mut compile, mut apply) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..CHANGES {
            let last = if i % 2 == 0 { "reject" } else { "pass" };
            let (seen, c, a) = self.change(id, n, last, target).await;
            out.push(seen);
            compile.push(c);
            apply.push(a);
        }
        if CHANGES % 2 == 1 {
            self.change(id, n, "pass", target).await;
        }
        (out, median(compile), median(apply))
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(run());
}

async fn run() {
    let mut f = Fabric::new();
    let h1 = f.host("h1");
    let h2 = f.host("h2");
    let (r1, r2, g1, b1) = (f.netns("r1"), f.netns("r2"), f.netns("g1"), f.netns("b1"));
    let mut red = network(1, "red", 100, "192.168.10.0/24", "2001:db8:10::/64");
    let mut green = network(2, "green", 200, "192.168.20.0/24", "2001:db8:20::/64");
    let mut blue = network(3, "blue", 300, "192.168.30.0/24", "2001:db8:30::/64");
    for n in [&mut red, &mut green, &mut blue] {
        n.import_targets = route_targets(&["64512:1"]);
        n.export_targets = route_targets(&["64512:1"]);
    }
    let endpoints = vec![
        placed(1, &red, &h1, &r1, &["192.168.10.2/24"]),
        placed(2, &red, &h2, &r2, &["192.168.10.3/24"]),
        placed(3, &green, &h2, &g1, &["192.168.20.2/24"]),
        placed(4, &blue, &h2, &b1, &["192.168.30.2/24"]),
    ];
    let mut intent = Intent { networks: vec![red, green, blue], policies: vec![], endpoints, ..Default::default() };
    set_policy(&mut intent, SMALL_POLICY, SMALL, "pass");
    set_policy(&mut intent, BIG_POLICY, BIG, "pass");
    intent.attach("green", &[BIG_POLICY]);
    intent.attach("blue", &[SMALL_POLICY]);

    let dp1 = LinuxDataplane::in_netns(h1.netns_path()).await.expect("data plane in h1");
    let dp2 = LinuxDataplane::in_netns(h2.netns_path()).await.expect("data plane in h2");
    let mut b = Bench { f, h1, h2, dp1, dp2, intent, r1 };
    let t = Instant::now();
    b.converge_all().await;
    println!(
        "setup: {} rules (green) and {} rules (blue) installed on two hosts in {:.1} s",
        BIG,
        SMALL,
        t.elapsed().as_secs_f64()
    );

    let _servers: Vec<TcpServers> = [&r2, &g1, &b1].iter().map(|ns| TcpServers::start(ns, &[PORT])).collect();
    let intra: SocketAddr = "192.168.10.3:5001".parse().unwrap();
    let to_green: SocketAddr = "192.168.20.2:5001".parse().unwrap();
    let to_blue: SocketAddr = "192.168.30.2:5001".parse().unwrap();
    for a in [intra, to_green, to_blue] {
        let n = crr_rate(&b.r1, a, Duration::from_millis(200));
        assert!(n > 0.0, "no connection to {a}");
    }

    let (small, none) = b.compare(to_blue, intra);
    println!(
        "new connections/s between networks, {SMALL}-rule policy: {small:.0}; baseline within one network, no policy: {none:.0}; ratio {:.3} (goal >= 0.90)",
        small / none
    );
    let (big, small2) = b.compare(to_green, to_blue);
    println!(
        "new connections/s between networks, {BIG}-rule policy: {big:.0}; baseline {SMALL}-rule policy: {small2:.0}; ratio {:.3} (goal >= 0.95)",
        big / small2
    );

    b.flush_conntrack();
    let (small_changes, s_compile, s_apply) = b.changes(SMALL_POLICY, SMALL, to_blue).await;
    let (big_changes, b_compile, b_apply) = b.changes(BIG_POLICY, BIG, to_green).await;
    println!(
        "  (medians: compiling the desired state {b_compile:.1} ms and reconciling {b_apply:.1} ms with {BIG} rules; {s_compile:.1} ms and {s_apply:.1} ms with {SMALL})"
    );
    let (bp50, bp99) = (percentile(&big_changes, 0.5), percentile(&big_changes, 0.99));
    let (sp50, sp99) = (percentile(&small_changes, 0.5), percentile(&small_changes, 0.99));
    println!(
        "rule change to enforcement, host holding {BIG} rules: p50 {bp50:.1} ms, p99 {bp99:.1} ms; baseline {SMALL} rules: p50 {sp50:.1} ms, p99 {sp99:.1} ms; ratio p50 {:.2}, p99 {:.2} (goal p99 <= 50 ms)",
        bp50 / sp50,
        bp99 / sp99
    );
}
