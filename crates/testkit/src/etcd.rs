//! A real etcd cluster on this machine, for the store's and the CLI's tests
//! and the benchmarks: `N` members (1 or 3) of Debian's `etcd` 3.4 on
//! loopback, each with free ports and a data directory of its own.
//!
//! [`EtcdCluster::start`] returns once every member answers `/health`; a
//! member can be killed with SIGKILL ([`EtcdCluster::kill`]) and started
//! again on its data ([`EtcdCluster::restart`]). Dropping the cluster kills
//! every member, waits for it and removes the data directories, so no
//! process or file is left behind.
//!
//! [`EtcdCluster::start_tls`] serves clients over TLS only, asking for a
//! client certificate of the given CA (`--client-cert-auth`); `/health` is
//! then read on a plain metrics listener of each member.
//!
//! [`EtcdCluster::start_in`] runs the members inside a network namespace
//! (a fabric's underlay, see [`crate::start_cluster_on_etcd`]) on one
//! address of it, so that controllers in the fabric's hosts reach them; its
//! health checks run in that namespace too.
//!
//! The members take big transactions and requests (`--max-txn-ops`,
//! `--max-request-bytes`), as Tessera's deployments must (see the README).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tessera_fabric::{run_in, spawn_in, Netns};

/// The program the members run (Debian's `etcd-server` package).
pub const ETCD: &str = "/usr/bin/etcd";

/// How long a cluster may take to become healthy.
const STARTUP: Duration = Duration::from_secs(30);

/// A running etcd cluster; see the module docs.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Member>,
    tls: Option<EtcdTls>,
    /// The namespace the members run in (not owned); `None` for the
    /// caller's own (loopback).
    netns: Option<Netns>,
    dir: tempfile::TempDir,
}

/// The certificates of a cluster that serves clients over TLS (PEM files).
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// The CA that signs the members' certificate and the clients' ones.
    pub ca: PathBuf,
    /// The members' certificate (its SAN must name 127.0.0.1).
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

#[derive(Debug)]
struct Member {
    name: String,
    client: SocketAddr,
    peer: SocketAddr,
    /// Plain HTTP `/health` and `/metrics`.
    metrics: SocketAddr,
    data: PathBuf,
    log: PathBuf,
    process: Option<Child>,
}

impl EtcdCluster {
    /// Starts `members` members and waits until every one is healthy.
    ///
    /// Panics, saying what is missing, when etcd is not installed (`apt-get
    /// install etcd-server etcd-client`, which `./x setup` does) or when the
    /// cluster does not become healthy in time (with the members' logs).
    pub fn start(members: usize) -> EtcdCluster {
        Self::start_with(members, None, None)
    }

    /// [`Self::start`], serving clients over TLS with `tls` and requiring a
    /// client certificate of its CA.
    pub fn start_tls(members: usize, tls: EtcdTls) -> EtcdCluster {
        Self::start_with(members, None, Some(tls))
    }

    /// [`Self::start`] inside `netns`, every member listening on `ip` (an
    /// address of that namespace) on the ports [`Self::endpoints_at`] names.
    /// The namespace must outlive the members, or be torn down with them in
    /// it: dropping the cluster then only reaps them.
    pub fn start_in(netns: &Netns, ip: Ipv4Addr, members: usize) -> EtcdCluster {
        let netns = Netns::open(netns.name()).unwrap_or_else(|e| panic!("cannot open the namespace for etcd: {e}"));
        Self::start_with(members, Some((netns, ip)), None)
    }

    /// The client URLs of the members [`Self::start_in`] starts on `ip`,
    /// comma-separated as `--etcd-endpoints` takes them: member `i` serves
    /// clients on port `2379 + 2i` (and its peers on the next port).
    pub fn endpoints_at(ip: Ipv4Addr, members: usize) -> String {
        (0..members).map(|i| format!("http://{}", placed_port(ip, i, 0))).collect::<Vec<_>>().join(",")
    }

    fn start_with(members: usize, place: Option<(Netns, Ipv4Addr)>, tls: Option<EtcdTls>) -> EtcdCluster {
        assert!(members > 0, "an etcd cluster has at least one member");
        assert!(
            Path::new(ETCD).exists(),
            "{ETCD} is missing: these tests need a real etcd 3.4 (`apt-get install etcd-server etcd-client`, or `./x setup`)"
        );
        let dir = tempfile::Builder::new().prefix("tessera-etcd-").tempdir().expect("temporary directory for etcd");
        // In a namespace of its own address every port is free; on loopback
        // ask the kernel for free ones.
        let port = |i: usize, which: u16| match &place {
            Some((_, ip)) => placed_port(*ip, i, which),
            None => free_port(),
        };
        let members: Vec<Member> = (0..members)
            .map(|i| Member {
                name: format!("m{i}"),
                client: port(i, 0),
                peer: port(i, 1),
                metrics: port(i, 20),
                data: dir.path().join(format!("m{i}.etcd")),
                log: dir.path().join(format!("m{i}.log")),
                process: None,
            })
            .collect();
        let netns = place.map(|(netns, _)| netns);
        let mut cluster = EtcdCluster { members, tls, netns, dir };
        for i in 0..cluster.members.len() {
            cluster.spawn(i);
        }
        cluster.wait_healthy();
        cluster
    }

    /// The members' client URLs (`http://127.0.0.1:PORT`, or `https://`
    /// with TLS), in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| format!("{}://{}", self.scheme(), m.client)).collect()
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The client URLs joined by commas, as `--etcd-endpoints` takes them.
    pub fn endpoints_arg(&self) -> String {
        self.endpoints().join(",")
    }

    /// `etcd://host:port,...`: the cluster as `tessera store migrate` names it.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.members.iter().map(|m| m.client.to_string()).collect::<Vec<_>>().join(","))
    }

    /// Kills member `i` with SIGKILL and reaps it. Killing a dead member is Ok.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data directory (after [`Self::kill`])
    /// and waits until it answers `/health`.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        let deadline = Instant::now() + STARTUP;
        while !self.healthy(self.members[i].metrics) {
            assert!(Instant::now() < deadline, "etcd member {i} is not healthy after a restart:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every running member answers `/health` with true.
    pub fn wait_healthy(&self) {
        let deadline = Instant::now() + STARTUP;
        for m in self.members.iter().filter(|m| m.process.is_some()) {
            while !self.healthy(m.metrics) {
                assert!(Instant::now() < deadline, "the etcd cluster is not healthy in time:\n{}", self.logs());
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// The tail of every member's log, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for m in &self.members {
            let text = std::fs::read_to_string(&m.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            out.push_str(&format!("--- etcd {} ({}):\n", m.name, m.log.display()));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// The directory that holds the members' data and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// [`healthy`], asked from the members' namespace.
    fn healthy(&self, metrics: SocketAddr) -> bool {
        match &self.netns {
            Some(netns) => run_in(netns, move || healthy(metrics)).unwrap_or(false),
            None => healthy(metrics),
        }
    }

    fn spawn(&mut self, i: usize) {
        let initial: Vec<String> = self.members.iter().map(|m| format!("{}=http://{}", m.name, m.peer)).collect();
        let scheme = self.scheme();
        let m = &self.members[i];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&m.log).expect("etcd log file");
        let mut command = Command::new(ETCD);
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        command
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data)
            .arg("--listen-client-urls")
            .arg(format!("{scheme}://{}", m.client))
            .arg("--advertise-client-urls")
            .arg(format!("{scheme}://{}", m.client))
            .arg("--listen-metrics-urls")
            .arg(format!("http://{}", m.metrics))
            .arg("--listen-peer-urls")
            .arg(format!("http://{}", m.peer))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://{}", m.peer))
            .arg("--initial-cluster")
            .arg(initial.join(","))
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg(self.dir.path().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--max-txn-ops", "100000", "--max-request-bytes", "33554432"])
            .args(["--snapshot-count", "100000", "--log-level", "warn", "--logger", "zap"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log file"))
            .stderr(log);
        let child = match &self.netns {
            Some(netns) => spawn_in(netns, command),
            None => command.spawn(),
        }
        .unwrap_or_else(|e| panic!("cannot start {ETCD}: {e}"));
        self.members[i].process = Some(child);
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        // The temporary directory (data and logs) goes with `self.dir`.
    }
}

/// The address of member `i` of a cluster placed on `ip`: its client port
/// (`which` 0), peer port (1) or metrics port (20).
fn placed_port(ip: Ipv4Addr, i: usize, which: u16) -> SocketAddr {
    SocketAddr::from((ip, 2379 + 2 * i as u16 + which))
}

/// A loopback address with a port that was free a moment ago.
/// A free loopback port below the kernel's range of ephemeral ports: a
/// member restarted on its ports must find them free, and a port of that
/// range may meanwhile be the source port of one of the many connections
/// the other members and the clients open to the dead member.
fn free_port() -> SocketAddr {
    let lowest_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next().and_then(|p| p.parse::<u16>().ok()))
        .unwrap_or(32768);
    let (low, high) = (10_000u16, lowest_ephemeral.max(10_001));
    // Spread over the range from a per-process, per-call start.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(7919).wrapping_add(NEXT.fetch_add(104_729, std::sync::atomic::Ordering::Relaxed));
    let span = u32::from(high - low);
    for attempt in 0..span {
        let port = low + u16::try_from((seed.wrapping_add(attempt)) % span).unwrap_or(0);
        if let Ok(listener) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            return listener.local_addr().expect("its address");
        }
    }
    panic!("no free loopback port between {low} and {high}")
}

/// `GET /health` on a member's metrics listener answers
/// `{"health":"true"}` (a member with a leader that serves reads).
fn healthy(metrics: SocketAddr) -> bool {
    let client = metrics;
    let Ok(mut stream) = TcpStream::connect_timeout(&client, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(format!("GET /health HTTP/1.0\r\nHost: {client}\r\n\r\n").as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.contains("\"health\":\"true\"")
}
