//! The example network function (`contrib/vnf/vnf.sh`, dockwall's modern
//! equivalent) as a Docker image made by `docker import`: busybox, `nft`
//! with the libraries it links, and the script as its command. It counts
//! what it forwards and drops the TCP ports given in `DROP`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::docker::{busybox_rootfs, which, Dockerd};

/// The image's name.
pub const VNF_IMAGE: &str = "tessera/vnf";

/// The script the image runs.
pub fn vnf_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/vnf/vnf.sh")
}

/// Makes `DIR/vnf.tar`: the busybox root file system with `nft`, its
/// libraries (as `ldd` lists them) and `/vnf.sh`.
pub fn vnf_tar(dir: &Path) -> anyhow::Result<PathBuf> {
    let root = busybox_rootfs(&dir.join("vnf"))?;
    let nft = which("nft").or_else(|_| Ok::<_, anyhow::Error>(PathBuf::from("/usr/sbin/nft")))?;
    if !nft.is_file() {
        bail!("nft is missing: apt-get install nftables");
    }
    let out = Command::new("ldd").arg(&nft).output().context("cannot run ldd")?;
    let mut files = vec![nft.clone()];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libx.so => /lib/.../libx.so (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = line.split("=>").last().unwrap_or_default().split_whitespace().next().unwrap_or_default();
        if path.starts_with('/') {
            files.push(PathBuf::from(path));
        }
    }
    for f in &files {
        let to = root.join(f.strip_prefix("/").unwrap_or(f));
        std::fs::create_dir_all(to.parent().unwrap_or(&root))?;
        std::fs::copy(f, &to).with_context(|| format!("cannot copy {}", f.display()))?;
    }
    std::fs::create_dir_all(root.join("tmp"))?;
    std::fs::copy(vnf_script(), root.join("vnf.sh")).context("cannot copy contrib/vnf/vnf.sh")?;
    let tar = dir.join("vnf.tar");
    let status = Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tar).arg(".").status()?;
    if !status.success() {
        bail!("tar of the network function's root file system failed");
    }
    Ok(tar)
}

/// Imports the image into `dockerd` as [`VNF_IMAGE`].
pub fn import_vnf(dockerd: &Dockerd, dir: &Path) -> anyhow::Result<()> {
    let tar = vnf_tar(dir)?;
    dockerd.docker_ok(&["import", "--change", "CMD [\"/vnf.sh\"]", &tar.display().to_string(), VNF_IMAGE])?;
    Ok(())
}
