//! A real `dockerd` (Debian's docker.io) inside a host namespace, with its
//! own data root, exec root, pid file and socket, and a busybox image made
//! with `docker import` (no registry is reachable).
//!
//! Several dockerds on one machine each need their own plugin directory
//! (dockerd finds plugins at the fixed path `/run/docker/plugins`): with
//! [`DockerdOptions::plugins_dir`] dockerd runs in a mount namespace of its
//! own where that directory is bind-mounted over `/run/docker/plugins`. Its
//! exec root is made a shared mount first, so the network namespaces dockerd
//! mounts there for its containers (the `SandboxKey`s plugins are given) are
//! visible to the plugin and the agent outside.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tessera_fabric::{spawn_in, Netns};

use crate::unmount_under;

/// The image tag [`Dockerd::import_busybox`] creates.
pub const BUSYBOX_IMAGE: &str = "tessera/busybox";

/// How long the plugins of [`DockerHost`]s hold a released address (short, so
/// that tests need not wait long to see every address free again).
pub const ADDRESS_HOLD_SECS: u64 = 8;

/// Where dockerd looks for plugin sockets.
const PLUGINS_DIR: &str = "/run/docker/plugins";

/// How to start dockerd, beyond the defaults (no bridge, no iptables).
#[derive(Debug, Clone, Default)]
pub struct DockerdOptions {
    /// Run dockerd in a private mount namespace with this directory over
    /// `/run/docker/plugins` (put the plugin's socket in it).
    pub plugins_dir: Option<PathBuf>,
    /// `--authorization-plugin` for each name.
    pub authorization_plugins: Vec<String>,
    /// `--live-restore`: containers keep running while dockerd restarts.
    pub live_restore: bool,
}

/// A dockerd process; on drop its containers are removed, it is stopped and
/// its mounts and directories are removed.
pub struct Dockerd {
    dir: PathBuf,
    socket: PathBuf,
    netns: String,
    options: DockerdOptions,
    child: Option<Child>,
}

impl Dockerd {
    /// Starts dockerd inside `netns` with everything under `dir`, and waits until it answers.
    /// Its networking is left to Tessera: no bridge, no iptables.
    pub fn start(netns: &Netns, dir: &Path) -> anyhow::Result<Dockerd> {
        Self::start_with(netns, dir, DockerdOptions::default())
    }

    /// [`Dockerd::start`] with options.
    pub fn start_with(netns: &Netns, dir: &Path, options: DockerdOptions) -> anyhow::Result<Dockerd> {
        which("dockerd").context("dockerd is missing: apt-get install docker.io")?;
        std::fs::create_dir_all(dir)?;
        let socket = dir.join("docker.sock");
        let mut d = Dockerd { dir: dir.to_path_buf(), socket, netns: netns.name().to_string(), options, child: None };
        d.spawn(netns)?;
        Ok(d)
    }

    /// The command line: dockerd, or a shell that enters a private mount
    /// namespace, mounts the plugin directory and execs dockerd.
    fn command(&self) -> anyhow::Result<Command> {
        let exec_root = self.dir.join("exec");
        let mut args: Vec<String> = vec![
            "--data-root".into(),
            self.dir.join("data").display().to_string(),
            "--exec-root".into(),
            exec_root.display().to_string(),
            "--pidfile".into(),
            self.dir.join("dockerd.pid").display().to_string(),
            "--host".into(),
            format!("unix://{}", self.socket.display()),
        ];
        args.extend(
            ["--bridge", "none", "--iptables=false", "--ip6tables=false", "--ip-forward=false", "--userland-proxy=false"]
                .map(String::from),
        );
        for p in &self.options.authorization_plugins {
            args.push(format!("--authorization-plugin={p}"));
        }
        if self.options.live_restore {
            args.push("--live-restore".into());
        }
        let Some(plugins) = &self.options.plugins_dir else {
            let mut cmd = Command::new("dockerd");
            cmd.args(&args);
            return Ok(cmd);
        };
        std::fs::create_dir_all(plugins)?;
        std::fs::create_dir_all(PLUGINS_DIR)?;
        share_mount(&exec_root)?;
        // In the new mount namespace: keep the exec root shared with the host's
        // (so container namespaces mounted there are seen outside), make the mount
        // holding /run/docker/plugins private (so the bind below stays inside),
        // then put this dockerd's plugin directory in place.
        let script = r#"set -e
parent=$(findmnt -n -o TARGET --target /run/docker/plugins)
mount --make-private "$parent"
mount --make-private /
mount --bind "$1" /run/docker/plugins
shift
exec dockerd "$@""#;
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "unchanged", "sh", "-c", script, "sh"]).arg(plugins).args(&args);
        Ok(cmd)
    }

    fn spawn(&mut self, netns: &Netns) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("dockerd.log"))?;
        let _ = std::fs::remove_file(self.dir.join("dockerd.pid"));
        let mut cmd = self.command()?;
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        self.child = Some(spawn_in(netns, cmd).context("cannot start dockerd")?);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.docker(&["version", "--format", "{{.Server.Version}}"]).map(|o| o.status.success()).unwrap_or(false) {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                let log = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
                bail!("dockerd exited ({status}); its log ends with:\n{}", tail(&log, 20));
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
                bail!("dockerd did not answer within 60 s; its log ends with:\n{}", tail(&log, 20));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops dockerd (SIGTERM) and starts it again on the same directories.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let netns = Netns::open(&self.netns)?;
        self.spawn(&netns)
    }

    /// The log of this dockerd.
    pub fn log(&self) -> PathBuf {
        self.dir.join("dockerd.log")
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `unix://<socket>`, for `DOCKER_HOST`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Runs the docker CLI against this daemon.
    pub fn docker(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(Command::new("docker").arg("--host").arg(self.host()).args(args).stdin(Stdio::null()).output()?)
    }

    /// Runs the docker CLI and returns stdout, failing with stderr.
    pub fn docker_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.docker(args)?;
        if !out.status.success() {
            bail!("docker {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Imports a busybox root file system (from busybox-static) as [`BUSYBOX_IMAGE`].
    pub fn import_busybox(&self) -> anyhow::Result<()> {
        let tar = busybox_tar(&self.dir)?;
        self.docker_ok(&["import", &tar.display().to_string(), BUSYBOX_IMAGE])?;
        Ok(())
    }

    /// Stops the daemon now (SIGTERM, then SIGKILL after 30 s) without cleaning up.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            if let Ok(ids) = self.docker_ok(&["ps", "-aq"]) {
                let ids: Vec<&str> = ids.split_whitespace().collect();
                if !ids.is_empty() {
                    let mut args = vec!["rm", "-f"];
                    args.extend(ids);
                    let _ = self.docker(&args);
                }
            }
        }
        self.stop();
        // Unmount what dockerd left under its directories, deepest first.
        unmount_under(&self.dir);
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove dockerd's directory");
        }
    }
}

/// `mount --bind DIR DIR; mount --make-shared DIR` (once: a directory that is
/// already a mount point is only made shared).
fn share_mount(dir: &Path) -> anyhow::Result<()> {
    use nix::mount::{mount, MsFlags};
    std::fs::create_dir_all(dir)?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let is_mount_point = mounts.lines().filter_map(|l| l.split_whitespace().nth(1)).any(|m| Path::new(m) == dir);
    if !is_mount_point {
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .with_context(|| format!("cannot bind-mount {} onto itself", dir.display()))?;
    }
    mount(None::<&str>, dir, None::<&str>, MsFlags::MS_SHARED, None::<&str>)
        .with_context(|| format!("cannot make {} a shared mount", dir.display()))?;
    Ok(())
}

/// Makes `DIR/busybox.tar`: a root file system of busybox-static and the
/// applets the tests use, for `docker import` and `podman import`.
pub fn busybox_tar(dir: &Path) -> anyhow::Result<PathBuf> {
    let root = busybox_rootfs(&dir.join("busybox-rootfs"))?;
    let tar = dir.join("busybox.tar");
    let status = Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tar).arg(".").status()?;
    if !status.success() {
        bail!("tar of the busybox root file system failed");
    }
    Ok(tar)
}

/// Makes the directory `root`: busybox-static and the applets the tests use.
pub fn busybox_rootfs(root: &Path) -> anyhow::Result<PathBuf> {
    let busybox = which("busybox").context("busybox is missing: apt-get install busybox-static")?;
    let root = root.to_path_buf();
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::copy(&busybox, bin.join("busybox"))?;
    for applet in [
        "sh", "sleep", "ip", "ping", "ping6", "ifconfig", "cat", "ls", "udhcpc", "nc", "route", "hostname", "wget", "httpd",
        "true", "[", "test",
    ] {
        let link = bin.join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link)?;
        }
    }
    Ok(root)
}

pub(crate) fn which(program: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .with_context(|| format!("{program} not found in PATH"))
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One host's Docker in a [`crate::Cluster`]: the Tessera Docker plugin
/// (`tessera docker-plugin`, in the host's namespace, talking to the host's
/// agent) and a dockerd that finds it in its own plugin directory and uses it
/// as its authorization hook, with live restore. Drop it before the cluster:
/// its containers are removed through the plugin and the agent.
pub struct DockerHost {
    dockerd: Option<Dockerd>,
    plugin: Option<Child>,
    host: String,
    netns: String,
    dir: PathBuf,
    bin: PathBuf,
    controller: String,
    /// The host's certificate, which its plugin presents to the controller.
    credentials: Vec<String>,
    agent_socket: PathBuf,
    /// The plugin is Docker's managed plugin [`MANAGED_PLUGIN`], not a process of ours.
    managed: bool,
}

/// The name a managed plugin is created under, and the driver name dockerd
/// knows it by (`docker network create -d tessera:latest`).
pub const MANAGED_PLUGIN: &str = "tessera";
pub const MANAGED_DRIVER: &str = "tessera:latest";

impl DockerHost {
    /// Starts the plugin, then dockerd, on `host`, with everything under `dir`.
    pub fn start(c: &crate::Cluster, host: &str, dir: &Path) -> anyhow::Result<DockerHost> {
        Self::start_with(c, host, dir, true)
    }

    /// [`DockerHost::start`], with dockerd using the plugin as its authz hook or not.
    pub fn start_with(c: &crate::Cluster, host: &str, dir: &Path, authz: bool) -> anyhow::Result<DockerHost> {
        let mut h = Self::new(c, host, dir, false)?;
        let netns = c.host_netns(host)?;
        h.start_plugin()?;
        let options = DockerdOptions {
            plugins_dir: Some(h.plugins_dir()),
            authorization_plugins: if authz { vec!["tessera".into()] } else { Vec::new() },
            live_restore: true,
        };
        h.dockerd = Some(Dockerd::start_with(netns, &dir.join("docker"), options)?);
        Ok(h)
    }

    /// Starts dockerd on `host` and, in it, Tessera as Docker's managed
    /// plugin made from `plugin_dir` (`./x docker-plugin`: a root file
    /// system and config.json): `docker plugin create`, `set` (the host,
    /// the controller, the certificates, the agent's socket, this dockerd's
    /// socket), `enable`. `/run/tessera` must be on a shared mount
    /// ([`SharedRunTessera`]).
    pub fn start_managed(c: &crate::Cluster, host: &str, dir: &Path, plugin_dir: &Path) -> anyhow::Result<DockerHost> {
        let mut h = Self::new(c, host, dir, true)?;
        let netns = c.host_netns(host)?;
        let options = DockerdOptions { plugins_dir: None, authorization_plugins: Vec::new(), live_restore: true };
        h.dockerd = Some(Dockerd::start_with(netns, &dir.join("docker"), options)?);
        let plugin_dir = plugin_dir.display().to_string();
        h.docker_ok(&["plugin", "create", MANAGED_PLUGIN, &plugin_dir])?;
        let agent_dir = h.agent_socket.parent().context("the agent's socket has a directory")?.display().to_string();
        let name = h.agent_socket.file_name().context("the agent's socket has a name")?.to_string_lossy().into_owned();
        let settings = [
            format!("TESSERA_DOCKER_PLUGIN_HOST={host}"),
            format!("TESSERA_CONTROLLER={}", c.url),
            "TESSERA_CA=/etc/tessera/ca.pem".to_string(),
            format!("TESSERA_CERT=/etc/tessera/hosts/{host}.pem"),
            format!("TESSERA_KEY=/etc/tessera/hosts/{host}-key.pem"),
            format!("TESSERA_AGENT_SOCKET=/run/tessera-agent/{name}"),
            format!("TESSERA_DOCKER_PLUGIN_STAGING_DIR={}", h.plugin_staging_dir().display()),
            format!("TESSERA_DOCKER_PLUGIN_ADDRESS_HOLD={ADDRESS_HOLD_SECS}"),
            format!("TESSERA_DOCKER_PLUGIN_DRIVER_NAME={MANAGED_DRIVER}"),
            "TESSERA_LOG=info,tessera_docker_plugin=debug".to_string(),
            format!("etc.source={}", c.pki_dir().display()),
            format!("agent.source={agent_dir}"),
            format!("docker-socket.source={}", h.dockerd().socket().display()),
        ];
        let mut args = vec!["plugin", "set", MANAGED_PLUGIN];
        args.extend(settings.iter().map(String::as_str));
        h.docker_ok(&args)?;
        h.docker_ok(&["plugin", "enable", MANAGED_PLUGIN])?;
        Ok(h)
    }

    /// Nothing started yet: `host`'s in `c`, everything under `dir`.
    fn new(c: &crate::Cluster, host: &str, dir: &Path, managed: bool) -> anyhow::Result<DockerHost> {
        std::fs::create_dir_all(dir)?;
        Ok(DockerHost {
            dockerd: None,
            plugin: None,
            host: host.to_string(),
            netns: c.host_netns(host)?.name().to_string(),
            dir: dir.to_path_buf(),
            bin: c.spec().bin.clone(),
            controller: c.url.clone(),
            credentials: if managed { Vec::new() } else { c.credential_args(&format!("hosts/{host}")) },
            agent_socket: c.agent_socket(host),
            managed,
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn dockerd(&self) -> &Dockerd {
        self.dockerd.as_ref().expect("dockerd runs while the DockerHost lives")
    }

    pub fn dockerd_mut(&mut self) -> &mut Dockerd {
        self.dockerd.as_mut().expect("dockerd runs while the DockerHost lives")
    }

    /// The directory dockerd sees as `/run/docker/plugins`.
    pub fn plugins_dir(&self) -> PathBuf {
        self.dir.join("plugins")
    }

    pub fn plugin_socket(&self) -> PathBuf {
        self.plugins_dir().join("tessera.sock")
    }

    pub fn plugin_log(&self) -> PathBuf {
        self.dir.join("plugin.log")
    }

    /// The plugin's `--state-dir` (its mirror of the controller).
    pub fn plugin_state_dir(&self) -> PathBuf {
        self.dir.join("plugin-state")
    }

    /// The plugin's `--staging-dir`, where it keeps the namespaces the agent
    /// builds interfaces in: under `/run/tessera/`, where the controller
    /// accepts endpoint namespaces, and named after this host's namespace,
    /// which is unique on the machine.
    pub fn plugin_staging_dir(&self) -> PathBuf {
        PathBuf::from("/run/tessera/staging").join(&self.netns)
    }

    /// Starts (or restarts) the plugin and waits until its socket answers.
    pub fn start_plugin(&mut self) -> anyhow::Result<()> {
        std::fs::create_dir_all(self.plugins_dir())?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.plugin_log())?;
        let socket = self.plugin_socket();
        let _ = std::fs::remove_file(&socket);
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--controller")
            .arg(&self.controller)
            .args(&self.credentials)
            .arg("docker-plugin")
            .arg("--host")
            .arg(&self.host)
            .arg("--socket")
            .arg(&socket)
            .arg("--agent-socket")
            .arg(&self.agent_socket)
            .arg("--docker-host")
            .arg(format!("unix://{}", self.dir.join("docker").join("docker.sock").display()))
            .arg("--state-dir")
            .arg(self.plugin_state_dir())
            .arg("--staging-dir")
            .arg(self.plugin_staging_dir())
            .arg("--address-hold")
            .arg(ADDRESS_HOLD_SECS.to_string())
            .env("TESSERA_LOG", "info,tessera_docker_plugin=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let netns = Netns::open(&self.netns)?;
        self.plugin = Some(spawn_in(&netns, cmd).context("cannot start tessera docker-plugin")?);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("the docker plugin of {} did not listen within 30 s; see {}", self.host, self.plugin_log().display())
    }

    /// Stops the plugin (SIGTERM) and waits for it.
    pub fn stop_plugin(&mut self) {
        if let Some(mut c) = self.plugin.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
            let _ = c.wait();
        }
    }

    /// Kills the plugin (SIGKILL) and reaps it.
    pub fn kill_plugin(&mut self) {
        if let Some(mut c) = self.plugin.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn docker(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.dockerd().docker(args)
    }

    pub fn docker_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        self.dockerd().docker_ok(args)
    }

    /// The last lines of the plugin's and dockerd's logs, for failure
    /// messages (a managed plugin's lines are in dockerd's).
    pub fn logs_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for (name, path) in [("plugin", self.plugin_log()), ("dockerd", self.dir.join("docker").join("dockerd.log"))] {
            let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap_or_default()).into_owned();
            let all: Vec<&str> = text.lines().collect();
            out += &format!("==> {} {name} <==\n{}\n", self.host, all[all.len().saturating_sub(lines)..].join("\n"));
        }
        out
    }
}

impl Drop for DockerHost {
    fn drop(&mut self) {
        if self.managed {
            // Containers first, while the plugin serves their leaving; then the plugin.
            if let Ok(ids) = self.docker_ok(&["ps", "-aq"]) {
                for id in ids.split_whitespace() {
                    let _ = self.docker(&["rm", "-f", id]);
                }
            }
            let _ = self.docker(&["plugin", "disable", "-f", MANAGED_PLUGIN]);
            let _ = self.docker(&["plugin", "rm", "-f", MANAGED_PLUGIN]);
        }
        // dockerd first, while the plugin still serves its containers' leaving.
        drop(self.dockerd.take());
        self.kill_plugin();
        // Staging namespaces the plugin left (it cleans up at Leave; a killed one cannot).
        unmount_under(&self.plugin_staging_dir());
        let _ = std::fs::remove_dir_all(self.plugin_staging_dir());
        unmount_under(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `/run/tessera` bind-mounted onto itself with shared propagation while
/// this lives, as a managed plugin's `rshared` mount of it needs (systemd
/// hosts have `/` shared; this machine's is private). Unmounted on drop.
pub struct SharedRunTessera {
    made: bool,
}

impl SharedRunTessera {
    pub fn new() -> anyhow::Result<SharedRunTessera> {
        let dir = Path::new("/run/tessera");
        std::fs::create_dir_all(dir)?;
        let propagation = Command::new("findmnt").args(["-n", "-o", "PROPAGATION", "--mountpoint", "/run/tessera"]).output()?;
        if String::from_utf8_lossy(&propagation.stdout).trim() == "shared" {
            return Ok(SharedRunTessera { made: false });
        }
        for args in [&["--bind", "/run/tessera", "/run/tessera"][..], &["--make-shared", "/run/tessera"][..]] {
            let out = Command::new("mount").args(args).output()?;
            if !out.status.success() {
                bail!("mount {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        Ok(SharedRunTessera { made: true })
    }
}

impl Drop for SharedRunTessera {
    fn drop(&mut self) {
        if self.made {
            let _ = Command::new("umount").args(["-l", "/run/tessera"]).status();
        }
    }
}
