//! The kernel work of the plugin itself: staging network namespaces and
//! moving a container interface out of one (netlink sockets opened
//! explicitly inside the namespace they act on, from a thread of their own).
//!
//! Why staging: Docker calls `Join` before the container's network namespace
//! exists (runc makes it when the container starts, and Docker then moves the
//! interfaces the drivers named into it, before the container's process
//! runs). So the agent builds the endpoint's interface in a namespace of the
//! plugin's (`ip netns add`), fully configured; the plugin moves its
//! container end into the host namespace under a temporary name, and Docker
//! moves it into the container as `ethN`.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::LinkUnspec;

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

/// Runs `f` on a thread of its own, inside the network namespace at `path`
/// (the thread, and the netlink socket it opens, live there; the caller's
/// thread is not touched).
async fn in_netns<T, F, Fut>(op: &'static str, path: &Path, f: F) -> Result<T, NetnsError>
where
    T: Send + 'static,
    F: FnOnce(rtnetlink::Handle, File) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let path = path.to_path_buf();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let p = path.clone();
    std::thread::Builder::new()
        .name("tessera-netns".into())
        .spawn(move || {
            let run = || -> Result<T, String> {
                // The namespace the thread starts in (the plugin's, the host's).
                let home = File::open("/proc/thread-self/ns/net").map_err(|e| e.to_string())?;
                let target = File::open(&p).map_err(|e| e.to_string())?;
                setns(&target, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns: {e}"))?;
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
                rt.block_on(async move {
                    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| e.to_string())?;
                    tokio::spawn(conn);
                    f(handle, home).await
                })
            };
            let _ = tx.send(run());
        })
        .map_err(|e| err(op, &path, e))?;
    rx.await.map_err(|_| err(op, &path, "the namespace thread died"))?.map_err(|e| err(op, &path, e))
}

/// The names of the links of the namespace at `path`.
pub async fn link_names(path: &Path) -> Result<Vec<String>, NetnsError> {
    in_netns("list links of", path, |h, _| async move {
        let msgs: Vec<_> = h.link().get().execute().try_collect().await.map_err(|e| e.to_string())?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| {
                m.attributes.into_iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n),
                    _ => None,
                })
            })
            .collect())
    })
    .await
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

/// `ip -n STAGING link set IFNAME netns HOST name NEW`: moves a link out of a
/// staging namespace into the plugin's own (the host's), renamed. Idempotent:
/// when `ifname` is no longer in the staging namespace, a link named `new`
/// already in the host namespace counts as moved.
pub async fn move_to_host(staging: &Path, ifname: &str, new: &str) -> Result<(), NetnsError> {
    let wanted = ifname.to_string();
    let (ifname, new_name) = (ifname.to_string(), new.to_string());
    let moved = in_netns("move a link out of", staging, move |h, home| async move {
        let mut links = h.link().get().match_name(ifname.clone()).execute();
        let link = match links.try_next().await {
            Ok(l) => l,
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -(nix::errno::Errno::ENODEV as i32) => None,
            Err(e) => return Err(e.to_string()),
        };
        let Some(link) = link else { return Ok(false) };
        h.link()
            .set(LinkUnspec::new_with_index(link.header.index).setns_by_fd(home.as_raw_fd()).name(new_name).build())
            .execute()
            .await
            .map_err(|e| format!("{ifname}: {e}"))?;
        Ok(true)
    })
    .await?;
    if moved {
        return Ok(());
    }
    let host = PathBuf::from("/proc/self/ns/net");
    let names = link_names(&host).await?;
    if names.iter().any(|n| n == new) {
        return Ok(());
    }
    Err(err("move a link out of", staging, format!("no link {wanted} in it, nor {new} in the host")))
}
