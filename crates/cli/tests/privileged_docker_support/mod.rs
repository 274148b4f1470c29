//! Shared by the `privileged_docker_*` tests: a two-host Tessera fabric with
//! a real dockerd and the Tessera Docker plugin on each host, and helpers
//! that run docker and read its answers.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use tessera_testkit::docker::DockerHost;
use tessera_testkit::{Cluster, ClusterSpec};

static N: AtomicUsize = AtomicUsize::new(0);
/// One fabric at a time: each has two dockerds, and the machine is small.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A two-host fabric with Docker on both hosts. Field order is drop order:
/// the Docker hosts go first (their containers leave through plugin and
/// agent), then the cluster, then the lock.
pub struct Fabric {
    pub d1: DockerHost,
    pub d2: DockerHost,
    pub c: Cluster,
    /// For a managed plugin: `/run/tessera` shared while the plugins run.
    _shared: Option<tessera_testkit::docker::SharedRunTessera>,
    _dir: tempfile::TempDir,
    _turn: MutexGuard<'static, ()>,
}

impl Fabric {
    /// Both dockerds use the plugin as their authz hook.
    pub fn start() -> Fabric {
        Self::start_with(true)
    }

    /// With or without the authz hook.
    pub fn start_with(authz: bool) -> Fabric {
        Self::start_docker("tdp", None, |c, h, dir| {
            DockerHost::start_with(c, h, dir, authz)
                .unwrap_or_else(|e| panic!("cannot start dockerd and the plugin on {h} (apt-get install docker.io): {e:#}"))
        })
    }

    /// Tessera as Docker's managed plugin, made from `plugin_dir`
    /// (`./x docker-plugin`), in each host's dockerd.
    pub fn start_managed(plugin_dir: &std::path::Path) -> Fabric {
        let shared = tessera_testkit::docker::SharedRunTessera::new().expect("/run/tessera on a shared mount");
        Self::start_docker("tdm", Some(shared), |c, h, dir| {
            DockerHost::start_managed(c, h, dir, plugin_dir)
                .unwrap_or_else(|e| panic!("cannot start dockerd with Tessera's managed plugin on {h}: {e:#}"))
        })
    }

    /// The cluster (namespaces `TAG<pid>-<n>-*`), then Docker on each host
    /// as `start` makes it, busybox imported.
    fn start_docker(
        tag: &str,
        shared: Option<tessera_testkit::docker::SharedRunTessera>,
        start: impl Fn(&Cluster, &str, &std::path::Path) -> DockerHost,
    ) -> Fabric {
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let prefix = format!("{tag}{}-{}", std::process::id() % 100_000, N.fetch_add(1, Ordering::SeqCst));
        let c = Cluster::start(ClusterSpec::new(&prefix, &["h1", "h2"], env!("CARGO_BIN_EXE_tessera"), dir.path().join("run")))
            .unwrap_or_else(|e| panic!("cannot start a Tessera fabric: {e:#}"));
        let host = |h: &str| {
            let d = start(&c, h, &dir.path().join(format!("docker-{h}")));
            d.dockerd().import_busybox().unwrap_or_else(|e| panic!("cannot import busybox on {h}: {e:#}"));
            d
        };
        let d1 = host("h1");
        let d2 = host("h2");
        Fabric { d1, d2, c, _shared: shared, _dir: dir, _turn: turn }
    }

    pub fn logs(&self) -> String {
        format!("{}{}{}", self.d1.logs_tail(30), self.d2.logs_tail(30), self.c.logs_tail(15))
    }

    /// `tessera network show NAME --json`.
    pub fn show(&self, network: &str) -> Value {
        self.c.cli_json(&["network", "show", network]).unwrap_or_else(|e| panic!("{e:#}\n{}", self.logs()))
    }

    /// Whether Tessera knows a network of that name.
    pub fn tessera_has(&self, network: &str) -> bool {
        let list = self.c.cli_json(&["network", "list"]).unwrap();
        list.as_array().unwrap().iter().any(|n| n["fq_name"].as_str().is_some_and(|f| f.rsplit(':').next() == Some(network)))
    }

    /// Every endpoint Tessera holds.
    pub fn tessera_endpoints(&self) -> Vec<Value> {
        self.c.cli_json(&["endpoint", "list"]).unwrap().as_array().unwrap().clone()
    }

    /// The reservations of a network (addresses reserved and not adopted by an endpoint).
    pub fn reservations(&self, network: &str) -> Vec<String> {
        self.show(network)["ipam"]["subnets"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["allocations"].as_array().unwrap().clone())
            .filter(|a| a["owner"].as_str().is_some_and(|o| o.starts_with("reservation:")))
            .map(|a| a["address"].as_str().unwrap().to_string())
            .collect()
    }

    /// The number of addresses allocated in a network (endpoints and reservations).
    pub fn allocated(&self, network: &str) -> u64 {
        self.show(network)["ipam"]["subnets"].as_array().unwrap().iter().map(|s| s["allocated"].as_u64().unwrap()).sum()
    }
}

/// Runs docker and returns its output, failing with its error and the logs.
pub fn ok(d: &DockerHost, args: &[&str]) -> String {
    d.docker_ok(args).unwrap_or_else(|e| panic!("{e:#}\n{}", d.logs_tail(40)))
}

/// Runs a docker command that must fail; returns its error output.
pub fn fails(d: &DockerHost, args: &[&str]) -> String {
    let out = d.docker(args).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "docker {} succeeded; stdout: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        d.logs_tail(30)
    );
    stderr
}

pub fn inspect(d: &DockerHost, what: &str, name: &str) -> Value {
    let v: Value = serde_json::from_str(&ok(d, &[what, "inspect", name])).unwrap();
    v[0].clone()
}

pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

pub fn network_names(d: &DockerHost) -> BTreeSet<String> {
    ok(d, &["network", "ls", "--format", "{{.Name}}"]).lines().map(str::to_string).collect()
}

/// (subnet, gateway) of each `IPAM.Config` entry of a `docker network inspect`.
pub fn docker_subnets(inspected: &Value) -> BTreeSet<(String, Option<String>)> {
    inspected["IPAM"]["Config"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["Subnet"].as_str().unwrap().to_string(), c["Gateway"].as_str().map(str::to_string)))
        .collect()
}

/// The container's (IPv4, IPv6) addresses in a network, as `docker inspect` reports them.
pub fn container_ips(d: &DockerHost, container: &str, network: &str) -> (String, String) {
    let v = inspect(d, "container", container);
    let n = &v["NetworkSettings"]["Networks"][network];
    (n["IPAddress"].as_str().unwrap_or_default().to_string(), n["GlobalIPv6Address"].as_str().unwrap_or_default().to_string())
}

/// Two pings from inside a container; whether they got through.
pub fn ping(d: &DockerHost, container: &str, dst: &str) -> bool {
    let cmd = if dst.contains(':') { "ping6" } else { "ping" };
    d.docker(&["exec", container, cmd, "-c", "2", "-W", "2", dst]).map(|o| o.status.success()).unwrap_or(false)
}

/// Two pings from a container's network namespace, by the host's ping (for
/// containers `docker exec` cannot enter: those a restarted dockerd restored
/// from its previous mount namespace).
pub fn ping_from_netns(d: &DockerHost, container: &str, dst: &str) -> bool {
    let pid = ok(d, &["inspect", "-f", "{{.State.Pid}}", container]);
    std::process::Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(["ping", "-c", "2", "-W", "2", dst])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Pings until one gets through (a route may take a moment to reach a host).
pub fn reaches(d: &DockerHost, container: &str, dst: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if ping(d, container, dst) {
            return true;
        }
    }
    false
}

/// The endpoints of a `tessera network show --json`, as (name, MAC, addresses).
pub fn shown_endpoints(shown: &Value) -> Vec<(String, String, BTreeSet<String>)> {
    let mut out: Vec<_> = shown["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let ips = e["ips"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_string()).collect();
            (e["name"].as_str().unwrap().to_string(), e["mac"].as_str().unwrap().to_string(), ips)
        })
        .collect();
    out.sort();
    out
}

/// The containers of `docker network inspect`s, as (endpoint ID, MAC, addresses).
pub fn docker_endpoints(inspected: &[Value]) -> Vec<(String, String, BTreeSet<String>)> {
    let mut out: Vec<_> = inspected
        .iter()
        .flat_map(|i| i["Containers"].as_object().unwrap().values().cloned().collect::<Vec<_>>())
        .map(|c| {
            let ips = ["IPv4Address", "IPv6Address"]
                .iter()
                .filter_map(|k| c[k].as_str().filter(|s| !s.is_empty()).map(str::to_string))
                .collect();
            (c["EndpointID"].as_str().unwrap().to_string(), c["MacAddress"].as_str().unwrap().to_string(), ips)
        })
        .collect();
    out.sort();
    out
}

/// Asserts that Tessera's endpoints of `network` are exactly Docker's containers on both hosts.
#[track_caller]
pub fn assert_agree(f: &Fabric, network: &str) {
    let tessera = shown_endpoints(&f.show(network));
    let mut views = Vec::new();
    for d in [&f.d1, &f.d2] {
        if network_names(d).contains(network) {
            views.push(inspect(d, "network", network));
        }
    }
    assert_eq!(tessera, docker_endpoints(&views), "Tessera's endpoints of {network} are Docker's containers");
}

/// `docker network create -d tessera --ipam-driver tessera ARGS... NAME`.
pub fn create_network(d: &DockerHost, name: &str, args: &[&str]) -> String {
    create_network_of(d, "tessera", name, args)
}

/// `docker network create -d DRIVER --ipam-driver DRIVER ARGS NAME`.
pub fn create_network_of(d: &DockerHost, driver: &str, name: &str, args: &[&str]) -> String {
    let mut all = vec!["network", "create", "-d", driver, "--ipam-driver", driver];
    all.extend_from_slice(args);
    all.push(name);
    ok(d, &all)
}

/// `docker run -d --name NAME ARGS... busybox sleep 3600`.
pub fn run(d: &DockerHost, name: &str, args: &[&str]) -> String {
    let mut all = vec!["run", "-d", "--name", name];
    all.extend_from_slice(args);
    all.extend_from_slice(&[tessera_testkit::docker::BUSYBOX_IMAGE, "sleep", "3600"]);
    ok(d, &all)
}

/// Waits until the plugins have released every reservation of a network (held addresses included).
pub fn wait_no_reservations(f: &Fabric, network: &str) {
    let hold = Duration::from_secs(tessera_testkit::docker::ADDRESS_HOLD_SECS);
    wait_for(&format!("no reservation left in {network}"), hold + Duration::from_secs(40), || f.reservations(network).is_empty());
}
