//! CNI ADD latency, Tessera ÷ the reference `bridge` + `host-local` plugins,
//! measured in the same run on the same host namespace.
//!
//! One host of a Tessera fabric (controller and agent). Every ADD execs the
//! plugin as a runtime does (`tessera_testkit::cni::Runtime`) into a fresh
//! network namespace and is timed from exec to exit: Tessera's through the
//! agent (endpoint at the controller, data plane programmed before the
//! result), the reference through `bridge` (a Linux bridge and veth) and
//! `host-local` (addresses in files). Rounds alternate between the two:
//! `SERIAL` ADDs one at a time, then `ROUNDS` rounds of `CONCURRENT` ADDs at
//! once. Everything is deleted (untimed) between rounds. Prints p50 and p99
//! of each and the ratios (goal: p99 ratio ≤ 1.0).

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Value};
use tessera_testkit::cni::{tessera_config, Runtime, Target, REFERENCE_PLUGINS};
use tessera_testkit::{Cluster, ClusterSpec};

const SERIAL: usize = 30;
const CONCURRENT: usize = 50;
const ROUNDS: usize = 3;

fn percentile(ms: &[f64], q: f64) -> f64 {
    let mut v = ms.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

/// ADDs one container per namespace in `netns`, `parallel` at once; the latency of each in ms.
fn add_all(rt: &Runtime, conf: &Value, tag: &str, netns: &[String], parallel: bool) -> Vec<f64> {
    let one = |i: usize, ns: &String| {
        let id = format!("{tag}{i}");
        let t = Instant::now();
        let out = rt.exec("ADD", Some(&Target { container_id: &id, netns: Some(ns), ifname: "eth0" }), conf).unwrap();
        let ms = t.elapsed().as_secs_f64() * 1e3;
        assert!(out.success, "{} ADD failed: {} {}", conf["type"], out.doc, out.stderr);
        ms
    };
    if !parallel {
        return netns.iter().enumerate().map(|(i, ns)| one(i, ns)).collect();
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = netns.iter().enumerate().map(|(i, ns)| s.spawn(move || one(i, ns))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn del_all(rt: &Runtime, conf: &Value, tag: &str, netns: &[String]) {
    for (i, ns) in netns.iter().enumerate() {
        let id = format!("{tag}{i}");
        let out = rt.exec("DEL", Some(&Target { container_id: &id, netns: Some(ns), ifname: "eth0" }), conf).unwrap();
        assert!(out.success, "{} DEL failed: {}", conf["type"], out.doc);
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("tcb{}", std::process::id() % 100_000);
    let mut c = Cluster::start(ClusterSpec::new(&prefix, &["h1"], env!("CARGO_BIN_EXE_tessera"), dir.path().join("run")))
        .unwrap_or_else(|e| panic!("cannot start a Tessera fabric (run as root): {e:#}"));
    c.cli_ok(&["network", "add", "bench", "--subnet", "10.70.0.0/16"]).unwrap();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_tessera")).parent().unwrap().to_path_buf();
    let rt = Runtime::new(&[bin_dir, PathBuf::from(REFERENCE_PLUGINS)], Some(c.host_netns("h1").unwrap()));
    let tessera = tessera_config("1.0.0", "bench", &c.agent_socket("h1"));
    let reference = json!({
        "cniVersion": "1.0.0", "name": "ref", "type": "bridge", "bridge": "cnibench0", "isGateway": true,
        "ipam": {"type": "host-local", "subnet": "10.80.0.0/16", "dataDir": dir.path().join("host-local").display().to_string()}
    });
    let names: Vec<String> = (0..CONCURRENT.max(SERIAL))
        .map(|i| {
            let name = format!("n{i}");
            c.container("h1", &name).unwrap();
            c.netns_of(&name).unwrap().path().display().to_string()
        })
        .collect();
    // Warm both (the reference makes its bridge on the first ADD; Tessera its VRF).
    for (conf, tag) in [(&tessera, "warm-t"), (&reference, "warm-r")] {
        add_all(&rt, conf, tag, &names[..1], false);
        del_all(&rt, conf, tag, &names[..1]);
    }

    let (mut t1, mut r1, mut tn, mut rn) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let serial = &names[..SERIAL];
    t1.extend(add_all(&rt, &tessera, "t", serial, false));
    del_all(&rt, &tessera, "t", serial);
    r1.extend(add_all(&rt, &reference, "r", serial, false));
    del_all(&rt, &reference, "r", serial);
    let wide = &names[..CONCURRENT];
    for round in 0..ROUNDS {
        let (t_tag, r_tag) = (format!("t{round}-"), format!("r{round}-"));
        tn.extend(add_all(&rt, &tessera, &t_tag, wide, true));
        del_all(&rt, &tessera, &t_tag, wide);
        rn.extend(add_all(&rt, &reference, &r_tag, wide, true));
        del_all(&rt, &reference, &r_tag, wide);
    }

    if std::env::var_os("TESSERA_BENCH_VERBOSE").is_some() {
        let log = std::fs::read_to_string(c.log("agent-h1")).unwrap_or_default();
        for l in log.lines().filter(|l| l.contains("plan applied") || l.contains("attaching")).take(60) {
            println!("agent: {l}");
        }
        let exec: Vec<f64> = (0..20)
            .map(|_| {
                let t = Instant::now();
                assert!(rt.version("tessera", "1.0.0").unwrap().success);
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        println!("plugin exec + VERSION: p50 {:.1} ms", percentile(&exec, 0.5));
    }
    println!("CNI ADD latency, exec to exit (Tessera through its agent ÷ bridge + host-local), same run:");
    for (label, t, r) in [("1 at a time", &t1, &r1), ("50 concurrent", &tn, &rn)] {
        let (tp50, tp99, rp50, rp99) = (percentile(t, 0.5), percentile(t, 0.99), percentile(r, 0.5), percentile(r, 0.99));
        println!(
            "  {label:<14} tessera p50 {tp50:>7.1} ms p99 {tp99:>7.1} ms | reference p50 {rp50:>7.1} ms p99 {rp99:>7.1} ms | ratio p50 {:.2} p99 {:.2} (goal p99 ≤ 1.0) [{} ADDs each]",
            tp50 / rp50,
            tp99 / rp99,
            t.len()
        );
    }
}
