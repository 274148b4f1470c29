//! The plugin's staging network namespaces, and the names of a sandbox's
//! interfaces.
//!
//! Why staging: Docker calls `Join` before the container's network namespace
//! exists (runc makes it when the container starts, and Docker then moves the
//! interfaces the drivers named into it, before the container's process
//! runs). So the agent builds the endpoint's interface in a namespace of the
//! plugin's (`ip netns add`), fully configured, and hands its container end
//! over to the host namespace under a temporary name (the attach request's
//! `handover`); Docker moves it into the container as `ethN`.

use std::fs::File;
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

/// A failed namespace operation, naming the namespace and what was done.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {reason}")]
pub struct NetnsError {
    pub op: &'static str,
    pub path: String,
    pub reason: String,
}

fn err(op: &'static str, path: &Path, reason: impl ToString) -> NetnsError {
    NetnsError { op, path: path.display().to_string(), reason: reason.to_string() }
}

/// The names of the links of the namespace at `path` (`if_nameindex(3)` on
/// a thread of its own inside it; the caller's thread is not touched).
pub async fn link_names(path: &Path) -> Result<Vec<String>, NetnsError> {
    let p = path.to_path_buf();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("tessera-netns".into())
        .spawn(move || {
            let run = || -> Result<Vec<String>, String> {
                let target = File::open(&p).map_err(|e| e.to_string())?;
                setns(&target, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns: {e}"))?;
                let names = nix::net::if_::if_nameindex().map_err(|e| format!("if_nameindex: {e}"))?;
                Ok(names.iter().map(|i| i.name().to_string_lossy().into_owned()).collect())
            };
            let _ = tx.send(run());
        })
        .map_err(|e| err("list links of", path, e))?;
    rx.await.map_err(|_| err("list links of", path, "the namespace thread died"))?.map_err(|e| err("list links of", path, e))
}

/// Whether `path` holds a network namespace (an nsfs mount).
pub fn is_netns(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// `ip netns add`: a new, empty network namespace bind-mounted at `path`.
/// Idempotent: a namespace already there is kept.
pub async fn create(path: &Path) -> Result<(), NetnsError> {
    if is_netns(path) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err("create the directory of", path, e))?;
    }
    File::create(path).map_err(|e| err("create", path, e))?;
    let p = path.to_path_buf();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("tessera-netns-add".into())
        .spawn(move || {
            let run = || -> Result<(), String> {
                unshare(CloneFlags::CLONE_NEWNET).map_err(|e| format!("unshare: {e}"))?;
                mount(Some("/proc/thread-self/ns/net"), &p, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                    .map_err(|e| format!("bind mount: {e}"))
            };
            // The thread ends here, in the new namespace, which the mount keeps.
            let _ = tx.send(run());
        })
        .map_err(|e| err("create", path, e))?;
    let result = rx.await.map_err(|_| err("create", path, "the namespace thread died"))?;
    if let Err(e) = result {
        let _ = std::fs::remove_file(path);
        return Err(err("create", path, e));
    }
    Ok(())
}

/// `ip netns delete`: unmounts and removes `path`. Deleting what is gone is Ok.
pub fn delete(path: &Path) -> Result<(), NetnsError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(err("unmount", path, e)),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err("remove", path, e)),
    }
}
