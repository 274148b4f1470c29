//! Privileged tier: CNI conformance after the spec's rules. Every call execs
//! the `tessera` binary as runtimes do (CNI_* environment, configuration on
//! standard input) against a real controller and agents; chains run
//! Debian's reference `bandwidth` plugin after Tessera, which publishes the
//! ports of the `portMappings` capability itself.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde_json::{json, Value};
use tessera_testkit::cni::{tessera_config, Runtime, Target, REFERENCE_PLUGINS};
use tessera_testkit::{exec_in, Cluster, ClusterSpec};

static N: AtomicUsize = AtomicUsize::new(0);
/// One fabric at a time: the machine is small.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

struct Setup {
    c: Cluster,
    _dir: tempfile::TempDir,
}

fn cluster(hosts: &[&str]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("tcn{}-{}", std::process::id() % 100_000, N.fetch_add(1, Ordering::SeqCst));
    let c = Cluster::start(ClusterSpec::new(&prefix, hosts, env!("CARGO_BIN_EXE_tessera"), dir.path().join("run")))
        .unwrap_or_else(|e| panic!("cannot start a Tessera fabric: {e:#}"));
    c.cli_ok(&["network", "add", "red", "--subnet", "10.61.0.0/24", "--dns", "10.61.0.53"]).unwrap();
    c.cli_ok(&["network", "add", "green", "--subnet", "10.62.0.0/24"]).unwrap();
    Setup { c, _dir: dir }
}

fn runtime(c: &Cluster, host: &str) -> Runtime {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_tessera")).parent().unwrap().to_path_buf();
    Runtime::new(&[bin_dir, PathBuf::from(REFERENCE_PLUGINS)], Some(c.host_netns(host).unwrap()))
}

fn conf(c: &Cluster, host: &str, version: &str, network: &str) -> Value {
    tessera_config(version, network, &c.agent_socket(host))
}

fn target<'a>(id: &'a str, ns: &'a str) -> Target<'a> {
    Target { container_id: id, netns: Some(ns), ifname: "eth0" }
}

fn ns_path(c: &Cluster, name: &str) -> String {
    c.netns_of(name).unwrap().path().display().to_string()
}

/// The addresses a result gives, without prefix lengths.
fn result_ips(doc: &Value) -> Vec<String> {
    doc["ips"].as_array().unwrap().iter().map(|i| i["address"].as_str().unwrap().split('/').next().unwrap().to_string()).collect()
}

fn endpoints(c: &Cluster, network: &str) -> Vec<Value> {
    c.cli_json(&["endpoint", "list", "--network", network]).unwrap().as_array().unwrap().clone()
}

#[test]
fn privileged_cni_add_del_check_follow_the_spec() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Setup { mut c, _dir } = cluster(&["h1", "h2"]);
    let rt = runtime(&c, "h1");
    c.container("h1", "a").unwrap();
    c.container("h2", "peer").unwrap();
    let peer = tessera_testkit::addresses(&c.attach("peer", "red", &[]).unwrap())[0].clone();
    let (a_ns, red) = (ns_path(&c, "a"), conf(&c, "h1", "1.1.0", "red"));

    // VERSION lists every version the plugin reads.
    let v = rt.version("tessera", "1.1.0").unwrap();
    assert!(v.success, "{v:?}");
    for want in ["0.4.0", "1.0.0", "1.1.0"] {
        assert!(v.doc["supportedVersions"].as_array().unwrap().iter().any(|s| s == want), "{}", v.doc);
    }

    // ADD: a result with the host and container interfaces, the address, the route and DNS.
    let add = rt.exec("ADD", Some(&target("ctr-a", &a_ns)), &red).unwrap();
    assert!(add.success, "ADD failed: {} {}", add.doc, add.stderr);
    let doc = &add.doc;
    assert_eq!(doc["cniVersion"], "1.1.0");
    assert_eq!(doc["interfaces"][1]["name"], "eth0");
    assert_eq!(doc["interfaces"][1]["sandbox"], a_ns.as_str());
    assert!(doc["interfaces"][0].get("sandbox").is_none(), "the host side has no sandbox: {doc}");
    assert_eq!(doc["ips"][0]["interface"], 1);
    assert_eq!(doc["ips"][0]["gateway"], "10.61.0.1");
    assert_eq!(doc["routes"][0], json!({"dst": "0.0.0.0/0", "gw": "10.61.0.1"}));
    assert_eq!(doc["dns"]["nameservers"], json!(["10.61.0.53"]));
    let ip = result_ips(doc)[0].clone();
    // The container really has it, and reaches a container on another host.
    let shown = exec_in(c.netns_of("a").unwrap(), "ip", ["-o", "addr", "show", "eth0"]).unwrap();
    assert!(String::from_utf8_lossy(&shown.stdout).contains(&format!("{ip}/24")), "{shown:?}");
    assert_eq!(c.ping("a", &peer, 2).unwrap(), 2, "the CNI-attached container reaches its peer");
    assert_eq!(c.ping("peer", &ip, 2).unwrap(), 2);

    // ADD twice: the same attachment, the same address.
    let again = rt.exec("ADD", Some(&target("ctr-a", &a_ns)), &red).unwrap();
    assert!(again.success, "{again:?}");
    assert_eq!(result_ips(&again.doc), vec![ip.clone()]);
    assert_eq!(endpoints(&c, "red").len(), 2, "one endpoint for ctr-a, one for the peer");

    // CHECK after ADD passes, with ADD's result as prevResult.
    let mut checked = red.clone();
    checked["prevResult"] = add.doc.clone();
    let ok = rt.exec("CHECK", Some(&target("ctr-a", &a_ns)), &checked).unwrap();
    assert!(ok.success, "CHECK after ADD: {} {}", ok.doc, ok.stderr);
    // ...and fails, saying why, once the attachment is broken inside the container.
    let del_addr = exec_in(c.netns_of("a").unwrap(), "ip", ["addr", "del", &format!("{ip}/24"), "dev", "eth0"]).unwrap();
    assert!(del_addr.status.success());
    let broken = rt.exec("CHECK", Some(&target("ctr-a", &a_ns)), &checked).unwrap();
    assert!(!broken.success, "CHECK passed on a broken attachment");
    assert!(broken.code().is_some() && broken.msg().contains(&ip), "the error names the missing address: {}", broken.doc);
    // CHECK of an attachment that was never made: container unknown (3).
    let unknown = rt.exec("CHECK", Some(&target("ctr-nobody", &a_ns)), &checked).unwrap();
    assert_eq!(unknown.code(), Some(3), "{}", unknown.doc);

    // DEL releases the address and removes the interface; DEL again succeeds.
    for _ in 0..2 {
        let del = rt.exec("DEL", Some(&Target { container_id: "ctr-a", netns: None, ifname: "eth0" }), &red).unwrap();
        assert!(del.success, "DEL: {} {}", del.doc, del.stderr);
        assert_eq!(del.doc, Value::Null, "DEL prints nothing on success");
    }
    let links = exec_in(c.netns_of("a").unwrap(), "ip", ["-o", "link"]).unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains("eth0"), "eth0 left behind");
    assert_eq!(endpoints(&c, "red").len(), 1, "only the peer's endpoint remains");
    // DEL without ADD (and with a namespace that never had it) succeeds.
    let never = rt.exec("DEL", Some(&target("ctr-never", &a_ns)), &red).unwrap();
    assert!(never.success, "{never:?}");

    // The released address is free again: the next ADD may take it.
    let reuse = rt.exec("ADD", Some(&target("ctr-b", &a_ns)), &red).unwrap();
    assert!(reuse.success, "{reuse:?}");
    assert_eq!(result_ips(&reuse.doc), vec![ip], "the lowest free address, released by DEL, is reused");
}

#[test]
fn privileged_cni_gc_status_and_errors() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Setup { mut c, _dir } = cluster(&["h1"]);
    let rt = runtime(&c, "h1");
    for n in ["a", "b", "x"] {
        c.container("h1", n).unwrap();
    }
    // An attachment made outside CNI must survive CNI's GC.
    c.attach("x", "red", &[]).unwrap();
    let red = conf(&c, "h1", "1.1.0", "red");
    for (id, ns) in [("ctr-a", "a"), ("ctr-b", "b")] {
        let out = rt.exec("ADD", Some(&target(id, &ns_path(&c, ns))), &red).unwrap();
        assert!(out.success, "{out:?}");
    }
    assert_eq!(endpoints(&c, "red").len(), 3);

    // STATUS: ready.
    let status = rt.exec("STATUS", None, &red).unwrap();
    assert!(status.success, "STATUS: {} {}", status.doc, status.stderr);

    // GC keeps what the runtime knows (ctr-a) and what CNI did not make (x).
    let mut gc = red.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "ctr-a", "ifname": "eth0"}]);
    let out = rt.exec("GC", None, &gc).unwrap();
    assert!(out.success, "GC: {} {}", out.doc, out.stderr);
    let left: Vec<String> = endpoints(&c, "red").iter().map(|e| e["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().any(|n| n.contains("ctr-a")), "{left:?}");
    assert!(!left.iter().any(|n| n.contains("ctr-b")), "ctr-b was collected: {left:?}");
    let b_links = exec_in(c.netns_of("b").unwrap(), "ip", ["-o", "link"]).unwrap();
    assert!(!String::from_utf8_lossy(&b_links.stdout).contains("eth0"), "ctr-b's interface removed by GC");

    // Older versions: the result in their shape; CHECK and GC only where defined.
    let old = conf(&c, "h1", "0.4.0", "green");
    let add = rt.exec("ADD", Some(&target("ctr-old", &ns_path(&c, "b"))), &old).unwrap();
    assert!(add.success, "{add:?}");
    assert_eq!(add.doc["cniVersion"], "0.4.0");
    assert_eq!(add.doc["ips"][0]["version"], "4");
    let gc_old = rt.exec("GC", None, &old).unwrap();
    assert_eq!(gc_old.code(), Some(1), "GC is not defined before 1.1.0: {}", gc_old.doc);

    // Bad input: each a clear CNI error, nothing half-made.
    let before = c.cli_json(&["endpoint", "list"]).unwrap().as_array().unwrap().len();
    let a_ns = ns_path(&c, "a");
    let t = target("ctr-bad", &a_ns);
    let cases: Vec<(Value, u64, &str)> = vec![
        (
            json!({"cniVersion": "1.1.0", "name": "red", "type": "tessera", "network": "nosuch", "agent": c.agent_socket("h1")}),
            7,
            "nosuch",
        ),
        (json!({"cniVersion": "1.1.0", "type": "tessera"}), 7, "name"),
        (json!({"cniVersion": "7.0.0", "name": "red", "type": "tessera"}), 1, "7.0.0"),
        (
            json!({"cniVersion": "1.1.0", "name": "red", "type": "tessera", "agent": c.agent_socket("h1"), "runtimeConfig": {"ips": ["10.99.0.5/24"]}}),
            7,
            "10.99.0.5",
        ),
    ];
    for (conf, code, needle) in cases {
        let out = rt.exec("ADD", Some(&t), &conf).unwrap();
        assert!(!out.success, "{conf} was accepted");
        assert_eq!(out.code(), Some(code), "{conf}: {}", out.doc);
        assert!(out.msg().contains(needle), "{conf}: the error does not mention {needle}: {}", out.doc);
    }
    let garbage = {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"));
        cmd.env("CNI_COMMAND", "ADD").env("CNI_CONTAINERID", "x").env("CNI_NETNS", "/run/netns/x").env("CNI_IFNAME", "eth0");
        cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"{ not json").unwrap();
        child.wait_with_output().unwrap()
    };
    let doc: Value = serde_json::from_slice(&garbage.stdout).unwrap();
    assert_eq!(doc["code"], 6, "{doc}");
    assert_eq!(c.cli_json(&["endpoint", "list"]).unwrap().as_array().unwrap().len(), before, "a refused ADD left an endpoint");

    // The agent away: STATUS says unavailable (50); ADD is retryable (11).
    c.stop_agent("h1");
    let status = rt.exec("STATUS", None, &red).unwrap();
    assert_eq!(status.code(), Some(50), "{}", status.doc);
    let add = rt.exec("ADD", Some(&target("ctr-c", &ns_path(&c, "a"))), &red).unwrap();
    assert_eq!(add.code(), Some(11), "{}", add.doc);
    assert!(add.msg().contains("agent"), "{}", add.doc);
}

#[test]
fn privileged_cni_chains_with_bandwidth_and_publishes_ports() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Setup { mut c, _dir } = cluster(&["h1"]);
    let rt = runtime(&c, "h1");
    c.container("h1", "a").unwrap();
    c.container("h1", "server").unwrap();
    let server = tessera_testkit::addresses(&c.attach("server", "red", &[]).unwrap())[0].clone();
    // The configuration list `tessera cni install` writes, at the version the reference plugins read.
    let list = {
        let conf_dir = _dir.path().join("net.d");
        let bin_dir = _dir.path().join("bin");
        let sock = c.agent_socket("h1").display().to_string();
        let out = c
            .cli_json(&[
                "cni",
                "install",
                "--network",
                "red",
                "--socket",
                &sock,
                "--conf-dir",
                conf_dir.to_str().unwrap(),
                "--bin-dir",
                bin_dir.to_str().unwrap(),
                "--chain",
                "bandwidth",
            ])
            .unwrap();
        assert!(bin_dir.join("tessera").is_file(), "install put the plugin in place");
        serde_json::from_str::<Value>(&std::fs::read_to_string(out["config"].as_str().unwrap()).unwrap()).unwrap()
    };
    let caps = json!({
        "portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}],
        "bandwidth": {"egressRate": 8_000_000, "egressBurst": 1_000_000, "ingressRate": 8_000_000, "ingressBurst": 1_000_000},
    });
    let a_ns = ns_path(&c, "a");
    let t = target("ctr-chain", &a_ns);
    let tessera_only = {
        let conf = Runtime::plugin_config(&list, 0, &caps, None);
        let out = rt.exec("ADD", Some(&t), &conf).unwrap();
        assert!(out.success, "{out:?}");
        out.doc
    };
    let result = rt.add_list(&list, &t, &caps).unwrap();
    // The reference plugins read Tessera's result and pass it on (bandwidth adds its ifb device after ours).
    assert_eq!(result["interfaces"].as_array().unwrap()[..2], tessera_only["interfaces"].as_array().unwrap()[..], "{result}");
    assert_eq!(result["ips"], tessera_only["ips"], "{result}");
    let ip = result_ips(&result)[0].clone();
    let host_veth = result["interfaces"][0]["name"].as_str().unwrap().to_string();
    let host = c.host_netns("h1").unwrap();
    // bandwidth found Tessera's host-side veth through the result and shaped it.
    let qdisc = String::from_utf8_lossy(&exec_in(host, "tc", ["qdisc", "show", "dev", &host_veth]).unwrap().stdout).into_owned();
    assert!(qdisc.contains("tbf"), "no rate limit on {host_veth}: {qdisc}");
    // ...and the limit holds for real traffic: 8 Mbit/s out of the container.
    let iperf = tessera_fabric::spawn_in(c.netns_of("server").unwrap(), {
        let mut cmd = std::process::Command::new("iperf3");
        cmd.args(["-s", "-1", "-B", &server]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        cmd
    })
    .unwrap();
    let mut iperf = scopeguard(iperf);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let run = exec_in(c.netns_of("a").unwrap(), "iperf3", ["-c", &server, "-t", "3", "-J"]).unwrap();
    let _ = iperf.0.wait();
    let report: Value =
        serde_json::from_slice(&run.stdout).unwrap_or_else(|_| panic!("iperf3: {}", String::from_utf8_lossy(&run.stderr)));
    let bps = report["end"]["sum_received"]["bits_per_second"].as_f64().unwrap();
    assert!(bps > 1e6 && bps < 12e6, "egress shaped to 8 Mbit/s, measured {:.1} Mbit/s", bps / 1e6);
    // Tessera took the portMappings capability and published the port to the container.
    let published = || {
        String::from_utf8_lossy(&exec_in(host, "nft", ["list", "map", "inet", "tessera", "pubd4any"]).unwrap().stdout)
            .into_owned()
    };
    assert!(published().contains(&format!("tcp . 18080 : {ip} . 80")), "no published port to {ip}:80: {}", published());

    // DEL through the chain in reverse order removes it all.
    rt.del_list(&list, &t, &caps, Some(&result)).unwrap();
    assert!(!published().contains("18080"), "published port left behind: {}", published());
    let links = String::from_utf8_lossy(&exec_in(host, "ip", ["-o", "link"]).unwrap().stdout).into_owned();
    assert!(!links.contains(&host_veth), "{host_veth} left behind");
    assert_eq!(endpoints(&c, "red").len(), 1, "only the server's endpoint remains");
}

/// Kills the child when dropped.
struct Guard(std::process::Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
fn scopeguard(c: std::process::Child) -> Guard {
    Guard(c)
}
