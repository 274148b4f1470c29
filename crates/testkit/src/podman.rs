//! A real Podman (Debian's, 4.x) on one host namespace, using CNI
//! (`network_backend = "cni"`) with its plugin and configuration directories
//! of our choosing, its own storage, run and temporary directories, and a
//! busybox image made with `podman import` (no registry is reachable).
//!
//! The containers' limits are this process's own hard limits: Podman's
//! defaults (`nofile=1048576`) cannot be set without `CAP_SYS_RESOURCE`,
//! which this machine's root does not hold (the same need as `--ulimit host`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context};
use tessera_fabric::{spawn_in, Netns};

use crate::docker::busybox_tar;
use crate::unmount_under;

/// The image tag [`Podman::start`] imports.
pub const BUSYBOX_IMAGE: &str = "localhost/tessera/busybox";

pub struct Podman {
    netns: PathBuf,
    dir: PathBuf,
    conf: PathBuf,
}

/// The hard limit of `name` (a row of /proc/self/limits, like "Max open files").
fn hard_limit(name: &str) -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().nth(1)?.parse().ok()
}

impl Podman {
    /// Prepares Podman for `netns` under `dir`, finding CNI plugins in
    /// `plugin_dirs` and network configuration lists in `conf_dir`, and
    /// imports the busybox image.
    pub fn start(netns: &Netns, dir: &Path, plugin_dirs: &[PathBuf], conf_dir: &Path) -> anyhow::Result<Podman> {
        std::fs::create_dir_all(dir)?;
        std::fs::create_dir_all(conf_dir)?;
        let nofile = hard_limit("Max open files").unwrap_or(1024);
        let nproc = hard_limit("Max processes").unwrap_or(4096).min(32768);
        let dirs: Vec<String> = plugin_dirs.iter().map(|d| format!("{:?}", d.display().to_string())).collect();
        let conf = dir.join("containers.conf");
        std::fs::write(
            &conf,
            format!(
                "[containers]\ndefault_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc={nproc}:{nproc}\"]\n\n\
                 [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [{}]\nnetwork_config_dir = {:?}\n\n\
                 [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
                dirs.join(", "),
                conf_dir.display().to_string()
            ),
        )?;
        let p = Podman { netns: netns.path().to_path_buf(), dir: dir.to_path_buf(), conf };
        let tar = busybox_tar(dir)?;
        p.podman_ok(&["import", &tar.display().to_string(), BUSYBOX_IMAGE]).context("podman import (apt-get install podman)")?;
        Ok(p)
    }

    /// Runs `podman ARGS` in the host namespace with this instance's directories.
    pub fn podman(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut cmd = Command::new("podman");
        let d = |sub: &str| self.dir.join(sub).display().to_string();
        cmd.env("CONTAINERS_CONF", &self.conf)
            .args(["--root", &d("root"), "--runroot", &d("runroot"), "--tmpdir", &d("tmp"), "--storage-driver", "vfs"])
            .args(["--events-backend", "file", "--cgroup-manager", "cgroupfs"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let ns = Netns::open(self.netns.file_name().and_then(|n| n.to_str()).unwrap_or_default())?;
        Ok(spawn_in(&ns, cmd).context("cannot run podman (apt-get install podman)")?.wait_with_output()?)
    }

    /// [`Podman::podman`], failing with Podman's error output; returns standard output, trimmed.
    pub fn podman_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.podman(args)?;
        if !out.status.success() {
            bail!("podman {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for Podman {
    /// Removes every container (their CNI DELs run), then the directories.
    fn drop(&mut self) {
        if let Err(e) = self.podman_ok(&["rm", "-af", "-t", "0"]) {
            tracing::warn!(error = %e, "cannot remove podman's containers");
        }
        unmount_under(&self.dir);
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove podman's directory");
        }
    }
}
