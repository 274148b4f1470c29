//! `docker run` to a container with a working network, Tessera ÷ Docker's
//! own bridge driver, measured in the same run on the same machine.
//!
//! One host of a Tessera fabric (controller, agent, `tessera docker-plugin`)
//! with two real dockerds side by side in its namespace: one using Tessera
//! (`-d tessera --ipam-driver tessera`, the plugin also its authz hook, as
//! the privileged tests run it), one plain with a user-defined bridge network
//! (`-d bridge`, Docker's IPAM). For each, `CONTAINERS` times, interleaved:
//! the time from `docker run -d` until a ping from inside the new container
//! to a peer container of its network first succeeds. Prints the figures and
//! the ratio (goal: Tessera ≤ 1.2 × bridge).
//!
//! `TESSERA_BENCH_AUTHZ=0` runs the plugin as network and IPAM driver only
//! (not as dockerd's authz hook); `TESSERA_BENCH_VERBOSE=1` also prints each
//! container's figures, the plugin's `Join` timings and dockerd's warnings.

use std::time::{Duration, Instant};

use tessera_testkit::docker::{DockerHost, Dockerd, BUSYBOX_IMAGE};
use tessera_testkit::{Cluster, ClusterSpec};

const CONTAINERS: usize = 20;

/// Runs a container and pings `peer` from inside until it answers; the elapsed time.
fn run_until_ping(d: &Dockerd, name: &str, network: &str, peer: &str) -> Duration {
    let t = Instant::now();
    d.docker_ok(&["run", "-d", "--name", name, "--net", network, BUSYBOX_IMAGE, "sleep", "3600"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let deadline = t + Duration::from_secs(30);
    let started = t.elapsed();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let out = d.docker(&["exec", name, "ping", "-c", "1", "-W", "1", peer]).unwrap();
        if out.status.success() {
            if std::env::var_os("TESSERA_BENCH_VERBOSE").is_some() {
                println!("  {name}: running after {:.1} ms, {attempts} ping attempt(s)", started.as_secs_f64() * 1e3);
            }
            return t.elapsed();
        }
        assert!(Instant::now() < deadline, "{name} never reached {peer}");
    }
}

struct Stats {
    median: f64,
    p90: f64,
    mean: f64,
    min: f64,
    max: f64,
}

fn stats(mut ms: Vec<f64>) -> Stats {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
    Stats { median: at(0.5), p90: at(0.9), mean: ms.iter().sum::<f64>() / ms.len() as f64, min: ms[0], max: ms[ms.len() - 1] }
}

fn show(label: &str, s: &Stats) {
    println!(
        "  {label:<8} median {:>7.1} ms  p90 {:>7.1} ms  mean {:>7.1} ms  min {:>7.1} ms  max {:>7.1} ms",
        s.median, s.p90, s.mean, s.min, s.max
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("tdb{}", std::process::id() % 100_000);
    let c = Cluster::start(ClusterSpec::new(&prefix, &["h1"], env!("CARGO_BIN_EXE_tessera"), dir.path().join("run")))
        .unwrap_or_else(|e| panic!("cannot start a Tessera fabric (run as root): {e:#}"));
    // TESSERA_BENCH_AUTHZ=0: the plugin as network and IPAM driver only, not as dockerd's authz hook.
    let authz = std::env::var("TESSERA_BENCH_AUTHZ").map_or(true, |v| v != "0");
    let tessera = DockerHost::start_with(&c, "h1", &dir.path().join("tessera"), authz)
        .unwrap_or_else(|e| panic!("cannot start dockerd with the plugin (apt-get install docker.io): {e:#}"));
    let bridge = Dockerd::start(c.host_netns("h1").unwrap(), &dir.path().join("bridge")).unwrap();
    tessera.dockerd().import_busybox().unwrap();
    bridge.import_busybox().unwrap();
    tessera
        .docker_ok(&["network", "create", "-d", "tessera", "--ipam-driver", "tessera", "--subnet", "10.91.0.0/24", "tnet"])
        .unwrap();
    bridge.docker_ok(&["network", "create", "-d", "bridge", "--subnet", "10.92.0.0/24", "bnet"]).unwrap();

    // A peer in each network to ping, started untimed (it also warms the caches).
    let peer = |d: &Dockerd, network: &str| {
        d.docker_ok(&["run", "-d", "--name", "peer", "--net", network, BUSYBOX_IMAGE, "sleep", "3600"]).unwrap();
        d.docker_ok(&["inspect", "-f", &format!("{{{{.NetworkSettings.Networks.{network}.IPAddress}}}}"), "peer"]).unwrap()
    };
    let t_peer = peer(tessera.dockerd(), "tnet");
    let b_peer = peer(&bridge, "bnet");
    run_until_ping(tessera.dockerd(), "warm-t", "tnet", &t_peer);
    run_until_ping(&bridge, "warm-b", "bnet", &b_peer);

    let mut t_ms = Vec::new();
    let mut b_ms = Vec::new();
    for i in 0..CONTAINERS {
        t_ms.push(run_until_ping(tessera.dockerd(), &format!("t{i}"), "tnet", &t_peer).as_secs_f64() * 1e3);
        b_ms.push(run_until_ping(&bridge, &format!("b{i}"), "bnet", &b_peer).as_secs_f64() * 1e3);
    }
    if std::env::var_os("TESSERA_BENCH_VERBOSE").is_some() {
        for (i, (t, b)) in t_ms.iter().zip(&b_ms).enumerate() {
            println!("  #{i:<2} tessera {t:>7.1} ms  bridge {b:>7.1} ms");
        }
    }
    let (t, b) = (stats(t_ms), stats(b_ms));
    let hook = if authz { "with" } else { "without" };
    println!(
        "docker run until the first ping from inside to a peer succeeds, {CONTAINERS} containers each (interleaved; tessera {hook} the authz hook):"
    );
    show("tessera", &t);
    show("bridge", &b);
    println!(
        "  ratio tessera ÷ bridge: median {:.2}, mean {:.2}, p90 {:.2} (goal ≤ 1.2)",
        t.median / b.median,
        t.mean / b.mean,
        t.p90 / b.p90
    );
    if std::env::var_os("TESSERA_BENCH_VERBOSE").is_some() {
        let log = std::fs::read_to_string(tessera.plugin_log()).unwrap_or_default();
        for l in log.lines().filter(|l| l.contains("interface built") || l.contains("answered") || l.contains("asked")) {
            println!("{l}");
        }
        let dlog = std::fs::read_to_string(tessera.dockerd().log()).unwrap_or_default();
        for l in dlog.lines().filter(|l| l.contains("level=warn") || l.contains("level=error")) {
            println!("dockerd: {l}");
        }
    }
    drop(bridge);
    drop(tessera);
}
