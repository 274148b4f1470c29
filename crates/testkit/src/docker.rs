//! A real `dockerd` (Debian's docker.io) inside a host namespace, with its
//! own data root, exec root, pid file and socket, and a busybox image made
//! with `docker import` (no registry is reachable).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tessera_fabric::{spawn_in, Netns};

/// The image tag [`Dockerd::import_busybox`] creates.
pub const BUSYBOX_IMAGE: &str = "tessera/busybox";

/// A dockerd process; on drop its containers are removed, it is stopped and
/// its mounts and directories are removed.
pub struct Dockerd {
    dir: PathBuf,
    socket: PathBuf,
    child: Option<Child>,
}

impl Dockerd {
    /// Starts dockerd inside `netns` with everything under `dir`, and waits until it answers.
    /// Its networking is left to Tessera: no bridge, no iptables.
    pub fn start(netns: &Netns, dir: &Path) -> anyhow::Result<Dockerd> {
        which("dockerd").context("dockerd is missing: apt-get install docker.io")?;
        std::fs::create_dir_all(dir)?;
        let socket = dir.join("docker.sock");
        let log = std::fs::File::create(dir.join("dockerd.log"))?;
        let mut cmd = Command::new("dockerd");
        cmd.arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .args(["--bridge", "none", "--iptables=false", "--ip6tables=false", "--ip-forward=false", "--userland-proxy=false"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = spawn_in(netns, cmd).context("cannot start dockerd")?;
        let d = Dockerd { dir: dir.to_path_buf(), socket, child: Some(child) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if d.docker(&["version", "--format", "{{.Server.Version}}"]).map(|o| o.status.success()).unwrap_or(false) {
                return Ok(d);
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(d.dir.join("dockerd.log")).unwrap_or_default();
                bail!("dockerd did not answer within 60 s; its log ends with:\n{}", tail(&log, 20));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
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
        let busybox = which("busybox").context("busybox is missing: apt-get install busybox-static")?;
        let root = self.dir.join("busybox-rootfs");
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin)?;
        std::fs::copy(&busybox, bin.join("busybox"))?;
        for applet in [
            "sh", "sleep", "ip", "ping", "ping6", "ifconfig", "cat", "ls", "udhcpc", "nc", "route", "hostname", "wget", "httpd",
            "true",
        ] {
            let link = bin.join(applet);
            if !link.exists() {
                std::os::unix::fs::symlink("busybox", link)?;
            }
        }
        let tar = self.dir.join("busybox.tar");
        let status = Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tar).arg(".").status()?;
        if !status.success() {
            bail!("tar of the busybox root file system failed");
        }
        self.docker_ok(&["import", &tar.display().to_string(), BUSYBOX_IMAGE])?;
        Ok(())
    }

    /// Stops the daemon now (SIGTERM, then SIGKILL after 10 s) without cleaning up.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
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
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut under: Vec<&str> =
            mounts.lines().filter_map(|l| l.split_whitespace().nth(1)).filter(|m| Path::new(m).starts_with(&self.dir)).collect();
        under.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in under {
            if let Err(e) = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH) {
                tracing::warn!(mount = m, error = %e, "cannot unmount what dockerd left");
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove dockerd's directory");
        }
    }
}

fn which(program: &str) -> anyhow::Result<PathBuf> {
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
