//! `tessera-testkit`: what the tests and benchmarks run beside Tessera.
//!
//! The running fabric itself ([`Cluster`]: hosts as namespaces, the
//! controller and agents as real processes) is `tessera_fabric::cluster`,
//! shared with `tessera demo`, and re-exported here. The test kit adds the
//! real runtimes: [`docker`] (a dockerd per host namespace, the busybox image,
//! the plugin), [`podman`] (Debian's Podman with CNI per host) and [`cni`]
//! (runs plugins and chains exactly as a runtime does), and an [`intruder`]
//! on the underlay.
#![forbid(unsafe_code)]

pub mod cni;
pub mod docker;
pub mod etcd;
pub mod intruder;
pub mod podman;
pub mod vnf;

pub use tessera_fabric::cluster::{
    addresses, controller_url, ping_in, unmount_under, Cluster, ClusterSpec, ControlPlane, CONTROLLER_PORT,
};
pub use tessera_fabric::{exec_in, Container, Fabric, FabricSpec, Netns};

/// One fabric at a time in a test binary: two cores run every host,
/// container and process of a test.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// What keeps a test's fabric apart from the others of its test binary: its
/// run directory (stores, sockets, logs) and the lock that lets one fabric
/// run at a time. Keep it until the [`Cluster`] is dropped (a tuple
/// `(Cluster, TestRun)` drops in that order).
#[derive(Debug)]
pub struct TestRun {
    pub dir: tempfile::TempDir,
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

/// Starts a fabric of `hosts` for a test, with the `tessera` binary `bin`,
/// under a unique prefix (`<tag><pid>-<n>`) and a run directory of its own,
/// after the fabric of any other test of this binary is gone. Panics with
/// what is missing when this machine cannot run one.
pub fn start_cluster(tag: &str, hosts: &[&str], bin: &str) -> (Cluster, TestRun) {
    let (spec, run) = test_spec(tag, hosts, bin);
    let c =
        Cluster::start(spec).unwrap_or_else(|e| panic!("cannot start a Tessera fabric (root, iproute2, nftables needed): {e:#}"));
    (c, run)
}

/// A unique spec for a test's fabric and its [`TestRun`], once the fabric
/// of any other test of this binary is gone.
fn test_spec(tag: &str, hosts: &[&str], bin: &str) -> (ClusterSpec, TestRun) {
    let lock = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().expect("temporary directory");
    let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let prefix = format!("{tag}{}-{n}", std::process::id() % 100_000);
    (ClusterSpec::new(&prefix, hosts, bin, dir.path()), TestRun { dir, _one_at_a_time: lock })
}

/// [`start_cluster`] with a controller on each of `controllers` (hosts of
/// `hosts`) instead of one, all on a real etcd cluster of `members` members
/// that runs in the fabric's underlay namespace on the underlay's last
/// address (10.99.0.254), where every host reaches it. Agents get every
/// controller's URL and fail over between them. Keep the three values
/// until the end of the test, in this order: the fabric goes first, then
/// etcd (whose members the fabric's teardown has stopped), then the run.
pub fn start_cluster_on_etcd(
    tag: &str,
    hosts: &[&str],
    controllers: &[&str],
    members: usize,
    bin: &str,
) -> (Cluster, etcd::EtcdCluster, TestRun) {
    let (mut spec, run) = test_spec(tag, hosts, bin);
    let ip = etcd_address(spec.underlay);
    spec.control_plane = ControlPlane::Etcd {
        hosts: controllers.iter().map(|h| h.to_string()).collect(),
        endpoints: etcd::EtcdCluster::endpoints_at(ip, members),
    };
    let fail = |e: anyhow::Error| -> ! {
        panic!("cannot start a Tessera fabric on etcd (root, iproute2, nftables, etcd needed): {e:#}")
    };
    let mut c = Cluster::build(spec).unwrap_or_else(|e| fail(e));
    c.fabric.underlay_address_add(ip).unwrap_or_else(|e| fail(e.into()));
    let ul = c.fabric.underlay_netns().unwrap_or_else(|| fail(anyhow::anyhow!("the fabric has no underlay namespace")));
    let etcd = etcd::EtcdCluster::start_in(ul, ip, members);
    if let Err(e) = c.run() {
        fail(e.context(c.logs_tail(20)));
    }
    (c, etcd, run)
}

/// The address etcd gets on an underlay: its last host address.
fn etcd_address(underlay: ipnet::Ipv4Net) -> std::net::Ipv4Addr {
    let last = u32::from(underlay.broadcast()) - 1;
    std::net::Ipv4Addr::from(last)
}

/// A blocking HTTPS client builder for `c`'s controller that presents the
/// administrator's certificate (build it inside the controller's host
/// namespace, where the controller's address is reachable).
pub fn admin_http(c: &Cluster) -> anyhow::Result<reqwest::blocking::ClientBuilder> {
    use anyhow::Context;
    let pki = c.pki_dir();
    let read = |name: &str| std::fs::read(pki.join(name)).with_context(|| format!("cannot read {name} in {}", pki.display()));
    let ca = reqwest::Certificate::from_pem(&read("ca.pem")?)?;
    let mut pem = read("admin.pem")?;
    pem.push(b'\n');
    pem.extend(read("admin-key.pem")?);
    Ok(reqwest::blocking::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .identity(reqwest::Identity::from_pem(&pem)?))
}

/// What of Tessera's is left in the kernel of `netns`, as lines a person
/// reads (empty: nothing): links named as Tessera names them (`tb`, `tx`,
/// `tv` and digits), routing rules at Tessera's priorities, routes in its
/// tables (numbers from 0x10000), nftables tables named `tessera*`.
pub fn leftovers(netns: &Netns) -> anyhow::Result<Vec<String>> {
    let run = |program: &str, args: &[&str]| -> anyhow::Result<String> {
        let out = exec_in(netns, program, args)?;
        anyhow::ensure!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let mut left = Vec::new();
    for line in run("ip", &["-o", "link"])?.lines() {
        let name = line.split(": ").nth(1).unwrap_or_default().split('@').next().unwrap_or_default();
        let numbered = |p: &str| name.strip_prefix(p).is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_hexdigit()));
        if numbered("tb") || numbered("tx") || numbered("tv") {
            left.push(format!("link {name}"));
        }
    }
    let rules = run("ip", &["rule"])? + &run("ip", &["-6", "rule"])?;
    for r in rules.lines() {
        let pref: u32 = r.split(':').next().and_then(|p| p.trim().parse().ok()).unwrap_or(0);
        if (995..=1002).contains(&pref) {
            left.push(format!("rule {r}"));
        }
    }
    let routes = run("ip", &["route", "show", "table", "all"])? + &run("ip", &["-6", "route", "show", "table", "all"])?;
    for r in routes.lines() {
        let table = r.split_whitespace().skip_while(|w| *w != "table").nth(1).and_then(|t| t.parse::<u32>().ok());
        if table.is_some_and(|t| t >= 0x10000) {
            left.push(format!("route {r}"));
        }
    }
    for t in run("nft", &["list", "tables"])?.lines().filter(|t| t.contains(" tessera")) {
        left.push(format!("nftables {t}"));
    }
    Ok(left)
}

/// The packets counted by the rules of `chain` of `inet tessera` on `host`
/// whose comment contains `comment`.
pub fn nft_counted(c: &Cluster, host: &str, chain: &str, comment: &str) -> u64 {
    let ns = c.host_netns(host).unwrap_or_else(|e| panic!("the namespace of {host}: {e}"));
    let out = exec_in(ns, "nft", ["-j", "list", "chain", "inet", "tessera", chain]).expect("nft");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut n = 0;
    for obj in v["nftables"].as_array().into_iter().flatten() {
        let rule = &obj["rule"];
        if rule["comment"].as_str().is_some_and(|c| c.contains(comment)) {
            n += rule["expr"].as_array().into_iter().flatten().filter_map(|e| e["counter"]["packets"].as_u64()).sum::<u64>();
        }
    }
    n
}
