//! A running Tessera on this machine: a [`Cluster`] is a [`Fabric`] (hosts
//! as network namespaces on an underlay bridge) with the real `tessera`
//! binary running in it: the controller on the first host, an agent on every
//! host. Containers are namespaces (or real Docker containers, started by the
//! tests that start dockerd). `tessera demo`, the multi-host tests and the
//! benchmarks use it; everything it starts is stopped and every namespace it
//! made is removed when it is dropped.
//!
//! By default one controller runs on the first host with the embedded redb
//! store; with [`ControlPlane::Etcd`] a controller runs on each of several
//! hosts, all sharing one etcd cluster, and agents fail over between them.
//! The etcd cluster must be running before [`Cluster::run`]: start it
//! between [`Cluster::build`] and [`Cluster::run`] (the test kit's
//! `start_cluster_on_etcd` runs it in the underlay namespace).
//!
//! It drives the `tessera` binary as a person would (its CLI, its JSON), so
//! its errors are `anyhow`'s: they end in a demo's or a test's message.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub use crate::control_plane::{controller_url, ControlPlane, CONTROLLER_PORT};
use crate::fabric::{Container, Fabric, FabricSpec, DEFAULT_UNDERLAY};
use crate::netns::{exec_in, spawn_in, Netns};

/// The variable that gives every agent of a cluster `--dataplane VALUE`
/// (`kernel` or `ebpf`): how the tests run on one data plane or the other.
pub const DATAPLANE_ENV: &str = "TESSERA_TEST_DATAPLANE";

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Unique prefix of every namespace (`tsk-<pid>-<n>`, `tdemo`).
    pub prefix: String,
    pub hosts: Vec<String>,
    /// The underlay subnet; hosts get its first addresses in order.
    pub underlay: ipnet::Ipv4Net,
    /// The `tessera` binary.
    pub bin: PathBuf,
    /// Where stores, sockets and logs go; created if missing.
    pub run_dir: PathBuf,
    /// The controllers and their store (one on redb by default).
    pub control_plane: ControlPlane,
}

impl ClusterSpec {
    pub fn new(prefix: &str, hosts: &[&str], bin: impl Into<PathBuf>, run_dir: impl Into<PathBuf>) -> Self {
        ClusterSpec {
            prefix: prefix.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            underlay: DEFAULT_UNDERLAY,
            bin: bin.into(),
            run_dir: run_dir.into(),
            control_plane: ControlPlane::Redb,
        }
    }
}

/// A fabric running the controllers and one agent per host.
pub struct Cluster {
    pub fabric: Fabric,
    spec: ClusterSpec,
    /// The (first) controller's URL, reachable from every host namespace.
    pub url: String,
    /// Every controller's URL, in the order agents try them, comma-separated
    /// (`--controller`); [`Cluster::url`] alone with one controller.
    pub urls: String,
    /// The fabric's certificates (`tessera pki init` and `issue-host`).
    pki: PathBuf,
    /// The running controllers by host. Behind a lock so that a test can
    /// kill one while other threads use the cluster.
    controllers: Mutex<BTreeMap<String, Child>>,
    agents: BTreeMap<String, Child>,
    /// Arguments the controller is started with besides the usual ones.
    controller_args: Vec<String>,
    /// Arguments an agent is started with besides the usual ones.
    agent_args: BTreeMap<String, Vec<String>>,
    containers: BTreeMap<String, Container>,
    /// Other `tessera` binaries for some processes, by log name
    /// (`controller`, `agent-h1`): an earlier version beside this one.
    bins: BTreeMap<String, PathBuf>,
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

impl Cluster {
    /// Builds the fabric, starts the controllers and an agent on every
    /// host, and waits until every host is registered: [`Cluster::build`]
    /// then [`Cluster::run`].
    pub fn start(spec: ClusterSpec) -> anyhow::Result<Cluster> {
        let mut c = Cluster::build(spec)?;
        c.run()?;
        Ok(c)
    }

    /// Builds the fabric and the certificates (the controllers' carries
    /// every controller host's underlay address); starts nothing. What the
    /// controllers need besides (an etcd cluster) can be started in the
    /// fabric before [`Cluster::run`].
    pub fn build(spec: ClusterSpec) -> anyhow::Result<Cluster> {
        Fabric::preflight().context("this machine cannot run a Tessera fabric")?;
        std::fs::create_dir_all(&spec.run_dir).with_context(|| format!("cannot create {}", spec.run_dir.display()))?;
        let controller_hosts = spec.control_plane.controller_hosts(&spec.hosts);
        if controller_hosts.is_empty() {
            bail!("a cluster needs at least one host to run a controller");
        }
        let fabric =
            Fabric::build(FabricSpec { prefix: spec.prefix.clone(), hosts: spec.hosts.clone(), underlay: spec.underlay })?;
        let mut ips = Vec::new();
        for h in &controller_hosts {
            ips.push(
                fabric.host(h).with_context(|| format!("the controller host {h} is not a host of the cluster"))?.underlay_ip,
            );
        }
        let urls: Vec<String> = ips.iter().map(|ip| controller_url(*ip)).collect();
        let pki = spec.run_dir.join("pki");
        let c = Cluster {
            fabric,
            spec,
            url: urls[0].clone(),
            urls: urls.join(","),
            pki,
            controllers: Mutex::new(BTreeMap::new()),
            agents: BTreeMap::new(),
            agent_args: BTreeMap::new(),
            controller_args: Vec::new(),
            containers: BTreeMap::new(),
            bins: BTreeMap::new(),
        };
        let mut init = vec!["pki".to_string(), "init".into()];
        for ip in ips {
            init.extend(["--san".into(), ip.to_string()]);
        }
        c.pki_run(&init.iter().map(String::as_str).collect::<Vec<_>>())?;
        for h in c.spec.hosts.clone() {
            c.pki_run(&["pki", "issue-host", &h])?;
        }
        Ok(c)
    }

    /// Starts the controllers, one after the other (the first makes the
    /// fabric), then an agent on every host, and waits until every host is
    /// registered.
    pub fn run(&mut self) -> anyhow::Result<()> {
        self.start_controller()?;
        for h in self.spec.hosts.clone() {
            self.start_agent(&h)?;
        }
        let n = self.spec.hosts.len();
        wait_until("every host to register", Duration::from_secs(30), || {
            self.cli_json(&["host", "list"]).ok().and_then(|v| v.as_array().map(|a| a.len())) == Some(n)
        })
    }

    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    /// Runs `tessera pki ... --dir PKI`.
    fn pki_run(&self, args: &[&str]) -> anyhow::Result<()> {
        let out = Command::new(&self.spec.bin).args(args).arg("--dir").arg(&self.pki).output()?;
        if !out.status.success() {
            bail!("tessera {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    /// The fabric's certificates (`tessera pki init`, one per host).
    pub fn pki_dir(&self) -> &Path {
        &self.pki
    }

    /// `--ca`, `--cert` and `--key` for the certificate pair `name` of the
    /// fabric (`admin`, or `hosts/NAME` for a host's agent and plugin).
    pub fn credential_args(&self, name: &str) -> Vec<String> {
        vec![
            "--ca".into(),
            self.pki.join("ca.pem").display().to_string(),
            "--cert".into(),
            self.pki.join(format!("{name}.pem")).display().to_string(),
            "--key".into(),
            self.pki.join(format!("{name}-key.pem")).display().to_string(),
        ]
    }

    /// The host of the (first) controller, where [`Cluster::cli`] runs.
    pub fn controller_host(&self) -> &str {
        match &self.spec.control_plane {
            ControlPlane::Etcd { hosts, .. } => &hosts[0],
            ControlPlane::Redb => &self.spec.hosts[0],
        }
    }

    /// The hosts that run a controller, in the order agents try them.
    pub fn controller_hosts(&self) -> Vec<String> {
        self.spec.control_plane.controller_hosts(&self.spec.hosts)
    }

    pub fn underlay_ip(&self, host: &str) -> anyhow::Result<Ipv4Addr> {
        Ok(self.fabric.host(host)?.underlay_ip)
    }

    pub fn host_netns(&self, host: &str) -> anyhow::Result<&Netns> {
        Ok(&self.fabric.host(host)?.netns)
    }

    pub fn agent_socket(&self, host: &str) -> PathBuf {
        self.spec.run_dir.join(host).join("agent.sock")
    }

    pub fn log(&self, name: &str) -> PathBuf {
        self.spec.run_dir.join(format!("{name}.log"))
    }

    fn spawn_logged(&self, host: &str, args: &[String], log: &Path) -> anyhow::Result<Child> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let name = log.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut cmd = Command::new(self.bins.get(&name).unwrap_or(&self.spec.bin));
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .env("TESSERA_LOG", std::env::var("TESSERA_LOG").unwrap_or_else(|_| "info".into()));
        Ok(self.fabric.spawn(host, cmd)?)
    }

    /// Starts (or restarts) every controller that is not running, in
    /// order, each on its store, waiting until each serves.
    pub fn start_controller(&mut self) -> anyhow::Result<()> {
        for host in self.controller_hosts() {
            if !self.controllers.get_mut().unwrap_or_else(PoisonError::into_inner).contains_key(&host) {
                self.start_controller_on(&host)?;
            }
        }
        Ok(())
    }

    /// Starts (or restarts) the controller of `host` and waits until it serves.
    pub fn start_controller_on(&mut self, host: &str) -> anyhow::Result<()> {
        self.kill_controller_on(host);
        let ip = self.underlay_ip(host)?;
        let plane = &self.spec.control_plane;
        let mut args = plane.controller_args(host, ip, &self.spec.run_dir, &self.pki);
        args.extend(self.controller_args.iter().cloned());
        let child = self.spawn_logged(host, &args, &self.log(&plane.log_name(host)))?;
        self.controllers.get_mut().unwrap_or_else(PoisonError::into_inner).insert(host.to_string(), child);
        let url = controller_url(ip);
        wait_until(&format!("the controller of {host} to serve"), Duration::from_secs(30), || {
            self.cli_via(&url, &["host", "list"]).map(|o| o.status.success()).unwrap_or(false)
        })
    }

    /// Runs the process logged as `name` (`controller`, `agent-h1`) from
    /// `bin` instead of the cluster's binary, from its next start on.
    pub fn set_bin(&mut self, name: &str, bin: impl Into<PathBuf>) {
        self.bins.insert(name.to_string(), bin.into());
    }

    /// Arguments the controllers are started with from their next start on.
    pub fn set_controller_args(&mut self, args: &[&str]) {
        self.controller_args = args.iter().map(|a| a.to_string()).collect();
    }

    /// Sends SIGKILL to every controller and reaps them.
    pub fn kill_controller(&mut self) {
        for host in self.controller_hosts() {
            self.kill_controller_on(&host);
        }
    }

    /// Sends SIGKILL to the controller of `host` and reaps it; returns
    /// whether one was running. Takes `&self` so that a test can kill a
    /// controller while other threads attach containers.
    pub fn kill_controller_on(&self, host: &str) -> bool {
        let child = self.controllers.lock().unwrap_or_else(PoisonError::into_inner).remove(host);
        match child {
            Some(mut c) => {
                let _ = c.kill();
                let _ = c.wait();
                true
            }
            None => false,
        }
    }

    /// Starts (or restarts) the agent of `host` and waits until its socket
    /// answers; with `--dataplane` from [`DATAPLANE_ENV`] when it is set.
    pub fn start_agent(&mut self, host: &str) -> anyhow::Result<()> {
        let dir = self.spec.run_dir.join(host);
        std::fs::create_dir_all(&dir)?;
        let ip = self.underlay_ip(host)?;
        let sock = self.agent_socket(host);
        let _ = std::fs::remove_file(&sock);
        let mut args: Vec<String> = vec!["--controller".into(), self.urls.clone()];
        args.extend(self.credential_args(&format!("hosts/{host}")));
        args.extend([
            "agent".into(),
            "--host".into(),
            host.into(),
            "--underlay-ip".into(),
            ip.to_string(),
            "--socket".into(),
            sock.display().to_string(),
            "--state-dir".into(),
            dir.display().to_string(),
        ]);
        let extra = self.agent_args.get(host).cloned().unwrap_or_default();
        // The data plane the tests ask for, unless this agent's own
        // arguments choose one.
        if let Ok(dataplane) = std::env::var(DATAPLANE_ENV) {
            if !dataplane.is_empty() && !extra.iter().any(|a| a == "--dataplane") {
                args.extend(["--dataplane".into(), dataplane]);
            }
        }
        args.extend(extra);
        let child = self.spawn_logged(host, &args, &self.log(&format!("agent-{host}")))?;
        self.agents.insert(host.to_string(), child);
        wait_until(&format!("the agent of {host} to listen"), Duration::from_secs(30), || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        })
    }

    /// The arguments the agent of `host` gets, besides the usual ones, from
    /// its next start on (`--gateway public=up0`).
    pub fn set_agent_args(&mut self, host: &str, args: &[&str]) {
        self.agent_args.insert(host.to_string(), args.iter().map(|a| a.to_string()).collect());
    }

    /// Sends SIGKILL to the agent of `host` and reaps it.
    pub fn kill_agent(&mut self, host: &str) {
        if let Some(mut c) = self.agents.remove(host) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM to the agent of `host` and waits for it to exit.
    pub fn stop_agent(&mut self, host: &str) {
        if let Some(mut c) = self.agents.remove(host) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
            let _ = c.wait();
        }
    }

    /// Runs the CLI with `--controller` (every controller) and the
    /// administrator's certificate inside the first controller's host.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.cli_via(&self.urls, args)
    }

    /// [`Cluster::cli`] with `controllers` as `--controller`.
    pub fn cli_via(&self, controllers: &str, args: &[&str]) -> anyhow::Result<Output> {
        let creds = self.credential_args("admin");
        let mut full = vec!["--controller", controllers];
        full.extend(creds.iter().map(String::as_str));
        full.extend_from_slice(args);
        Ok(exec_in(self.host_netns(self.controller_host())?, &self.spec.bin, &full)?)
    }

    /// Runs the CLI with `--controller` and the administrator's certificate
    /// inside `host` (where `--socket` reaches its agent), with `--json` and
    /// extra environment variables (`DOCKER_HOST`);
    /// parses its output, failing with stderr when it exits non-zero.
    pub fn cli_on(&self, host: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<serde_json::Value> {
        let creds = self.credential_args("admin");
        let mut full = vec!["--controller", self.urls.as_str(), "--json"];
        full.extend(creds.iter().map(String::as_str));
        full.extend_from_slice(args);
        let out = self.tessera_on(host, &full, env)?;
        if !out.status.success() {
            bail!("tessera {} on {host} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Runs the CLI and returns stdout, failing with stderr when it exits non-zero.
    pub fn cli_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.cli(args)?;
        if !out.status.success() {
            bail!("tessera {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs the CLI with `--json` and parses its output.
    pub fn cli_json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut full = args.to_vec();
        full.push("--json");
        Ok(serde_json::from_str(&self.cli_ok(&full)?)?)
    }

    /// Creates a container namespace on `host` (not yet attached).
    pub fn container(&mut self, host: &str, name: &str) -> anyhow::Result<&Container> {
        let c = self.fabric.add_container(host, name)?;
        self.containers.insert(name.to_string(), c);
        Ok(&self.containers[name])
    }

    pub fn netns_of(&self, container: &str) -> anyhow::Result<&Netns> {
        Ok(&self.containers.get(container).with_context(|| format!("no container {container}"))?.netns)
    }

    fn host_of(&self, container: &str) -> anyhow::Result<String> {
        Ok(self.containers.get(container).with_context(|| format!("no container {container}"))?.host.clone())
    }

    /// `tessera attach --network NETWORK --netns <container> [extra...]` on the container's host; returns the endpoint.
    pub fn attach(&self, container: &str, network: &str, extra: &[&str]) -> anyhow::Result<serde_json::Value> {
        let host = self.host_of(container)?;
        let ns = self.netns_of(container)?.path().display().to_string();
        let sock = self.agent_socket(&host).display().to_string();
        let mut args = vec!["attach", "--network", network, "--netns", &ns, "--socket", &sock, "--json"];
        args.extend_from_slice(extra);
        let out = exec_in(self.host_netns(&host)?, &self.spec.bin, &args)?;
        if !out.status.success() {
            bail!("attach {container} to {network} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Attaches `containers` to `network`, `workers` at a time, each
    /// tried up to three times (the agent answers 504 when programming
    /// takes longer than its timeout; an attach is idempotent); reports
    /// progress on stderr every 100.
    pub fn attach_all(&self, containers: &[String], network: &str, workers: usize) -> anyhow::Result<()> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let next = AtomicUsize::new(0);
        let done = AtomicUsize::new(0);
        let t = Instant::now();
        std::thread::scope(|s| -> anyhow::Result<()> {
            let workers: Vec<_> = (0..workers)
                .map(|_| {
                    s.spawn(|| -> anyhow::Result<()> {
                        while let Some(n) = containers.get(next.fetch_add(1, Ordering::SeqCst)) {
                            let mut attempt = 0;
                            while let Err(e) = self.attach(n, network, &[]) {
                                attempt += 1;
                                if attempt == 3 {
                                    return Err(e);
                                }
                                eprintln!("   attach {n} failed, retrying: {e:#}");
                            }
                            let d = done.fetch_add(1, Ordering::SeqCst) + 1;
                            if d % 100 == 0 || d == containers.len() {
                                eprintln!("   {d}/{} attached in {:.1?}", containers.len(), t.elapsed());
                            }
                        }
                        Ok(())
                    })
                })
                .collect();
            workers.into_iter().try_for_each(|w| w.join().unwrap_or_else(|_| Err(anyhow::anyhow!("attach worker panicked"))))
        })
    }

    /// `tessera detach --netns <container> [--network NETWORK]`; returns the detached endpoints.
    pub fn detach(&self, container: &str, network: Option<&str>) -> anyhow::Result<serde_json::Value> {
        let host = self.host_of(container)?;
        let ns = self.netns_of(container)?.path().display().to_string();
        let sock = self.agent_socket(&host).display().to_string();
        let mut args = vec!["detach", "--netns", &ns, "--socket", &sock, "--json"];
        if let Some(n) = network {
            args.extend_from_slice(&["--network", n]);
        }
        let out = exec_in(self.host_netns(&host)?, &self.spec.bin, &args)?;
        if !out.status.success() {
            bail!("detach {container} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// The last `lines` lines of every log (controllers and agents), for failure messages.
    pub fn logs_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        let mut names: Vec<String> = self.controller_hosts().iter().map(|h| self.spec.control_plane.log_name(h)).collect();
        names.extend(self.spec.hosts.iter().map(|h| format!("agent-{h}")));
        for n in names {
            let text = std::fs::read_to_string(self.log(&n)).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out += &format!("==> {n}.log <==\n{}\n", all[all.len().saturating_sub(lines)..].join("\n"));
        }
        out
    }

    /// Runs `tessera ARGS` inside `host` with extra environment variables.
    pub fn tessera_on(&self, host: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Output> {
        let mut cmd = Command::new(&self.spec.bin);
        cmd.args(args).envs(env.iter().copied()).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        Ok(spawn_in(self.host_netns(host)?, cmd)?.wait_with_output()?)
    }

    /// Runs `program args` inside a container.
    pub fn exec(&self, container: &str, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        Ok(exec_in(self.netns_of(container)?, program, args)?)
    }

    /// Pings `dst` from `container` `count` times; returns the number of replies.
    pub fn ping(&self, container: &str, dst: &str, count: u32) -> anyhow::Result<u32> {
        ping_in(self.netns_of(container)?, dst, count)
    }
}

/// Pings `dst` from `ns` (0.2 s apart, 1 s timeout each); returns the number of replies.
pub fn ping_in(ns: &Netns, dst: &str, count: u32) -> anyhow::Result<u32> {
    let out = exec_in(ns, "ping", ["-c", &count.to_string(), "-i", "0.2", "-W", "1", dst])
        .context("cannot run ping (install iputils-ping)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .find_map(|l| l.split(", ").find_map(|p| p.strip_suffix(" received").and_then(|n| n.parse().ok())))
        .unwrap_or(0))
}

/// The addresses of an endpoint (as `tessera attach --json` prints it), without prefix lengths.
pub fn addresses(endpoint: &serde_json::Value) -> Vec<String> {
    endpoint["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .map(|s| s.split('/').next().unwrap_or(s).to_string())
        .collect()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The fabric stops every process in its namespaces and deletes them;
        // reap our own children so none is left a zombie.
        for (_, mut c) in std::mem::take(&mut self.agents) {
            let _ = c.kill();
            let _ = c.wait();
        }
        for (_, mut c) in std::mem::take(self.controllers.get_mut().unwrap_or_else(PoisonError::into_inner)) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Unmounts every mount point below `dir`, deepest first (what dockerd and
/// Podman leave under their directories). Best effort: a failure is logged.
pub fn unmount_under(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut under: Vec<&str> =
        mounts.lines().filter_map(|l| l.split_whitespace().nth(1)).filter(|m| Path::new(m).starts_with(dir)).collect();
    under.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in under {
        if let Err(e) = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(mount = m, error = %e, "cannot unmount");
        }
    }
}
