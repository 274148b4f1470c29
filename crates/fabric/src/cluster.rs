//! A running Tessera on this machine: a [`Cluster`] is a [`Fabric`] (hosts
//! as network namespaces on an underlay bridge) with the real `tessera`
//! binary running in it: the controller on the first host, an agent on every
//! host. Containers are namespaces (or real Docker containers, started by the
//! tests that start dockerd). `tessera demo`, the multi-host tests and the
//! benchmarks use it; everything it starts is stopped and every namespace it
//! made is removed when it is dropped.
//!
//! It drives the `tessera` binary as a person would (its CLI, its JSON), so
//! its errors are `anyhow`'s: they end in a demo's or a test's message.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::fabric::{Container, Fabric, FabricSpec, DEFAULT_UNDERLAY};
use crate::netns::{exec_in, spawn_in, Netns};

/// The controller's port inside the fabric.
pub const CONTROLLER_PORT: u16 = 8082;

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
}

impl ClusterSpec {
    pub fn new(prefix: &str, hosts: &[&str], bin: impl Into<PathBuf>, run_dir: impl Into<PathBuf>) -> Self {
        ClusterSpec {
            prefix: prefix.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            underlay: DEFAULT_UNDERLAY,
            bin: bin.into(),
            run_dir: run_dir.into(),
        }
    }
}

/// A fabric running the controller and one agent per host.
pub struct Cluster {
    pub fabric: Fabric,
    spec: ClusterSpec,
    /// The controller's URL, reachable from every host namespace.
    pub url: String,
    /// The fabric's certificates (`tessera pki init` and `issue-host`).
    pki: PathBuf,
    controller: Option<Child>,
    agents: BTreeMap<String, Child>,
    /// Arguments the controller is started with besides the usual ones.
    controller_args: Vec<String>,
    /// Arguments an agent is started with besides the usual ones.
    agent_args: BTreeMap<String, Vec<String>>,
    containers: BTreeMap<String, Container>,
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
    /// Builds the fabric, starts the controller on the first host and an
    /// agent on every host, and waits until every host is registered.
    pub fn start(spec: ClusterSpec) -> anyhow::Result<Cluster> {
        Fabric::preflight().context("this machine cannot run a Tessera fabric")?;
        std::fs::create_dir_all(&spec.run_dir).with_context(|| format!("cannot create {}", spec.run_dir.display()))?;
        let fabric =
            Fabric::build(FabricSpec { prefix: spec.prefix.clone(), hosts: spec.hosts.clone(), underlay: spec.underlay })?;
        let first = fabric.hosts().first().context("a cluster needs at least one host")?;
        let url = format!("https://{}:{CONTROLLER_PORT}", first.underlay_ip);
        let controller_ip = first.underlay_ip.to_string();
        let pki = spec.run_dir.join("pki");
        let mut c = Cluster {
            fabric,
            spec,
            url,
            pki,
            controller: None,
            agents: BTreeMap::new(),
            agent_args: BTreeMap::new(),
            controller_args: Vec::new(),
            containers: BTreeMap::new(),
        };
        c.pki_run(&["pki", "init", "--san", &controller_ip])?;
        for h in c.spec.hosts.clone() {
            c.pki_run(&["pki", "issue-host", &h])?;
        }
        c.start_controller()?;
        for h in c.spec.hosts.clone() {
            c.start_agent(&h)?;
        }
        let n = c.spec.hosts.len();
        wait_until("every host to register", Duration::from_secs(30), || {
            c.cli_json(&["host", "list"]).ok().and_then(|v| v.as_array().map(|a| a.len())) == Some(n)
        })?;
        Ok(c)
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

    pub fn controller_host(&self) -> &str {
        &self.spec.hosts[0]
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
        let mut cmd = Command::new(&self.spec.bin);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .env("TESSERA_LOG", std::env::var("TESSERA_LOG").unwrap_or_else(|_| "info".into()));
        Ok(self.fabric.spawn(host, cmd)?)
    }

    /// Starts (or restarts) the controller on its data directory and waits until it serves.
    pub fn start_controller(&mut self) -> anyhow::Result<()> {
        let host = self.controller_host().to_string();
        let ip = self.underlay_ip(&host)?;
        let data = self.spec.run_dir.join("controller");
        let mut args = vec![
            "controller".into(),
            "--init".into(),
            "--data-dir".into(),
            data.display().to_string(),
            "--listen".into(),
            format!("{ip}:{CONTROLLER_PORT}"),
            "--pki".into(),
            self.pki.display().to_string(),
        ];
        args.extend(self.controller_args.iter().cloned());
        let child = self.spawn_logged(&host, &args, &self.log("controller"))?;
        self.controller = Some(child);
        wait_until("the controller to serve", Duration::from_secs(30), || {
            self.cli(&["host", "list"]).map(|o| o.status.success()).unwrap_or(false)
        })
    }

    /// Arguments the controller is started with from its next start on.
    pub fn set_controller_args(&mut self, args: &[&str]) {
        self.controller_args = args.iter().map(|a| a.to_string()).collect();
    }

    /// Sends SIGKILL to the controller and reaps it.
    pub fn kill_controller(&mut self) {
        if let Some(mut c) = self.controller.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts (or restarts) the agent of `host` and waits until its socket answers.
    pub fn start_agent(&mut self, host: &str) -> anyhow::Result<()> {
        let dir = self.spec.run_dir.join(host);
        std::fs::create_dir_all(&dir)?;
        let ip = self.underlay_ip(host)?;
        let sock = self.agent_socket(host);
        let _ = std::fs::remove_file(&sock);
        let mut args: Vec<String> = vec!["--controller".into(), self.url.clone()];
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
        args.extend(self.agent_args.get(host).cloned().unwrap_or_default());
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

    /// Runs the CLI with `--controller` and the administrator's certificate
    /// inside the controller's host.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        let creds = self.credential_args("admin");
        let mut full = vec!["--controller", self.url.as_str()];
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
        let mut full = vec!["--controller", self.url.as_str(), "--json"];
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

    /// The last `lines` lines of every log (controller and agents), for failure messages.
    pub fn logs_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        let mut names = vec!["controller".to_string()];
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
        self.kill_controller();
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
