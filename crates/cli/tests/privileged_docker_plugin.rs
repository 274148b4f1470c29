//! Privileged tier: Tessera as Docker's network and IPAM driver, against real
//! dockerds (Debian's docker.io), two hosts, one plugin per host.
//!
//! Each host of the fabric runs its agent, `tessera docker-plugin` and a
//! dockerd with its own data root, exec root, socket and plugin directory
//! (a private mount namespace), using the plugin as its authz hook and with
//! live restore. Containers are busybox, imported (no registry is reachable).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tessera_testkit::docker::{DockerHost, BUSYBOX_IMAGE};
use tessera_testkit::{Cluster, ClusterSpec};

static N: AtomicUsize = AtomicUsize::new(0);

/// A two-host fabric with Docker on both hosts. Field order is drop order:
/// the Docker hosts go first (their containers leave through plugin and agent).
struct Fabric {
    d1: DockerHost,
    d2: DockerHost,
    c: Cluster,
    _dir: tempfile::TempDir,
}

impl Fabric {
    fn start() -> Fabric {
        let dir = tempfile::tempdir().unwrap();
        let prefix = format!("tdp{}-{}", std::process::id() % 100_000, N.fetch_add(1, Ordering::SeqCst));
        let c = Cluster::start(ClusterSpec::new(&prefix, &["h1", "h2"], env!("CARGO_BIN_EXE_tessera"), dir.path().join("run")))
            .unwrap_or_else(|e| panic!("cannot start a Tessera fabric: {e:#}"));
        let start = |h: &str| {
            let d = DockerHost::start(&c, h, &dir.path().join(format!("docker-{h}")))
                .unwrap_or_else(|e| panic!("cannot start dockerd and the plugin on {h} (apt-get install docker.io): {e:#}"));
            d.dockerd().import_busybox().unwrap();
            d
        };
        let d1 = start("h1");
        let d2 = start("h2");
        Fabric { d1, d2, c, _dir: dir }
    }

    fn logs(&self) -> String {
        format!("{}{}{}", self.d1.logs_tail(40), self.d2.logs_tail(40), self.c.logs_tail(20))
    }

    /// `tessera network show NAME --json`.
    fn show(&self, network: &str) -> Value {
        self.c.cli_json(&["network", "show", network]).unwrap_or_else(|e| panic!("{e:#}\n{}", self.logs()))
    }
}

fn ok(d: &DockerHost, args: &[&str]) -> String {
    d.docker_ok(args).unwrap_or_else(|e| {
        let pid = std::fs::read_to_string(d.plugins_dir().parent().unwrap().join("docker/dockerd.pid")).unwrap_or_default();
        let theirs = std::fs::read_to_string(format!("/proc/{}/mountinfo", pid.trim())).unwrap_or_default();
        let ours = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        panic!("{e:#}\nDEBUG theirs:\n{theirs}\nours:\n{ours}")
    })
}

/// Runs a docker command that must fail; returns its error output.
fn fails(d: &DockerHost, args: &[&str]) -> String {
    let out = d.docker(args).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "docker {} succeeded; stdout: {}", args.join(" "), String::from_utf8_lossy(&out.stdout));
    stderr
}

fn inspect(d: &DockerHost, what: &str, name: &str) -> Value {
    let v: Value = serde_json::from_str(&ok(d, &[what, "inspect", name])).unwrap();
    v[0].clone()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// (subnet, gateway) of each `IPAM.Config` entry of a `docker network inspect`.
fn docker_subnets(inspected: &Value) -> BTreeSet<(String, Option<String>)> {
    inspected["IPAM"]["Config"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["Subnet"].as_str().unwrap().to_string(), c["Gateway"].as_str().map(str::to_string)))
        .collect()
}

fn network_names(d: &DockerHost) -> BTreeSet<String> {
    ok(d, &["network", "ls", "--format", "{{.Name}}"]).lines().map(str::to_string).collect()
}

/// The container's addresses in a network, as `docker inspect` reports them.
fn container_ips(d: &DockerHost, container: &str, network: &str) -> (String, String) {
    let v = inspect(d, "container", container);
    let n = &v["NetworkSettings"]["Networks"][network];
    (n["IPAddress"].as_str().unwrap_or_default().to_string(), n["GlobalIPv6Address"].as_str().unwrap_or_default().to_string())
}

fn ping(d: &DockerHost, container: &str, dst: &str) -> bool {
    let cmd = if dst.contains(':') { "ping6" } else { "ping" };
    d.docker(&["exec", container, cmd, "-c", "2", "-W", "2", dst]).map(|o| o.status.success()).unwrap_or(false)
}

/// The endpoints of a `tessera network show --json`, by name (the Docker endpoint ID).
fn tessera_endpoints(shown: &Value) -> Vec<(String, String, BTreeSet<String>)> {
    shown["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let ips = e["ips"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_string()).collect();
            (e["name"].as_str().unwrap().to_string(), e["mac"].as_str().unwrap().to_string(), ips)
        })
        .collect()
}

/// The containers of a `docker network inspect`, as (endpoint ID, MAC, addresses).
fn docker_endpoints(inspected: &Value) -> Vec<(String, String, BTreeSet<String>)> {
    inspected["Containers"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| {
            let ips = ["IPv4Address", "IPv6Address"]
                .iter()
                .filter_map(|k| c[k].as_str().filter(|s| !s.is_empty()).map(str::to_string))
                .collect();
            (c["EndpointID"].as_str().unwrap().to_string(), c["MacAddress"].as_str().unwrap().to_string(), ips)
        })
        .collect()
}

const NET4: &[&str] = &[
    "network",
    "create",
    "-d",
    "tessera",
    "--ipam-driver",
    "tessera",
    "--subnet",
    "192.168.4.0/24",
    "--subnet",
    "2002:1::/64",
    "--ipv6",
    "--label",
    "rt=64512:100,64512:200",
    "net4",
];

#[test]
fn privileged_seed_steps_create_inspect_run_and_ping_across_two_hosts() {
    let f = Fabric::start();
    // 1. Create the network on host 1.
    let id = ok(&f.d1, NET4);
    assert_eq!(id.len(), 64, "docker network create prints the network ID: {id}");

    // 2./3. Docker's view and Tessera's view agree.
    let d = inspect(&f.d1, "network", "net4");
    assert_eq!((d["Driver"].as_str(), d["IPAM"]["Driver"].as_str()), (Some("tessera"), Some("tessera")));
    assert_eq!(d["Labels"]["rt"], "64512:100,64512:200");
    let t = f.show("net4");
    let tessera_subnets: BTreeSet<(String, String)> = t["network"]["subnets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["cidr"].as_str().unwrap().to_string(), s["gateway"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(
        tessera_subnets,
        BTreeSet::from([("192.168.4.0/24".into(), "192.168.4.1".into()), ("2002:1::/64".into(), "2002:1::1".into())])
    );
    // Docker shows the subnets (and a gateway only where --gateway named one).
    assert_eq!(docker_subnets(&d), tessera_subnets.iter().map(|(s, _)| (s.clone(), None)).collect());
    for side in ["import_targets", "export_targets"] {
        assert_eq!(t["network"][side], serde_json::json!(["target:64512:100", "target:64512:200"]), "{side}");
    }
    assert_eq!(t["network"]["labels"]["docker"], "true");

    // 7. The network appears on host 2 with no manual step.
    wait_for("net4 in host 2's docker network ls", Duration::from_secs(30), || network_names(&f.d2).contains("net4"));
    let d2 = inspect(&f.d2, "network", "net4");
    assert_eq!(d2["Driver"], "tessera");
    assert_eq!(d2["Labels"]["rt"], "64512:100,64512:200");
    // Host 2's network was made from Tessera's, gateways included.
    assert_eq!(docker_subnets(&d2), tessera_subnets.iter().map(|(s, g)| (s.clone(), Some(g.clone()))).collect());

    // 4./8. A container on each host.
    ok(&f.d1, &["run", "-d", "--name", "ub1", "--net", "net4", BUSYBOX_IMAGE, "sleep", "3600"]);
    ok(&f.d2, &["run", "-d", "--name", "ub2", "--net", "net4", BUSYBOX_IMAGE, "sleep", "3600"]);

    // 9. Their addresses, from Tessera's IPAM.
    let (ub1_v4, ub1_v6) = container_ips(&f.d1, "ub1", "net4");
    let (ub2_v4, ub2_v6) = container_ips(&f.d2, "ub2", "net4");
    for a in [&ub1_v4, &ub2_v4] {
        assert!(a.starts_with("192.168.4."), "{a}");
    }
    for a in [&ub1_v6, &ub2_v6] {
        assert!(a.starts_with("2002:1::"), "{a}");
    }
    assert_ne!(ub1_v4, ub2_v4);

    // Inside the container: the address, the routes via the gateway.
    let addr = ok(&f.d1, &["exec", "ub1", "ip", "addr", "show", "eth0"]);
    assert!(addr.contains(&format!("{ub1_v4}/24")) && addr.contains(&format!("{ub1_v6}/64")), "{addr}");
    let routes = ok(&f.d1, &["exec", "ub1", "ip", "route"]);
    assert!(routes.contains("default via 192.168.4.1"), "{routes}");
    let routes6 = ok(&f.d1, &["exec", "ub1", "ip", "-6", "route"]);
    assert!(routes6.contains("default via 2002:1::1"), "{routes6}");

    // 5. docker network inspect and tessera network show agree on the attached containers.
    let mut both = tessera_endpoints(&f.show("net4"));
    let mut docker_side = docker_endpoints(&inspect(&f.d1, "network", "net4"));
    docker_side.extend(docker_endpoints(&inspect(&f.d2, "network", "net4")));
    both.sort();
    docker_side.sort();
    assert_eq!(both, docker_side, "Tessera's endpoints are Docker's containers");
    assert_eq!(both.len(), 2);

    // 10. They ping each other, IPv4 and IPv6.
    assert!(ping(&f.d1, "ub1", &ub2_v4), "ub1 -> ub2 {ub2_v4}\n{}", f.logs());
    assert!(ping(&f.d2, "ub2", &ub1_v4), "ub2 -> ub1 {ub1_v4}");
    assert!(ping(&f.d1, "ub1", &ub2_v6), "ub1 -> ub2 {ub2_v6}\n{}", f.logs());
    assert!(ping(&f.d2, "ub2", &ub1_v6), "ub2 -> ub1 {ub1_v6}");
}
