//! Handing an endpoint's interface over to a runtime: `ip -n STAGING link
//! set IFNAME netns HOST name NEW`. Docker calls its driver's `Join` before
//! the container's network namespace exists, so the agent builds the
//! interface, fully configured, in a staging namespace and then moves its
//! container end into its own (the host's) namespace under a temporary name;
//! Docker moves it into the container. Netlink sockets are opened
//! explicitly inside the namespace they act on, from a thread of their own.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use nix::sched::{setns, CloneFlags};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::LinkUnspec;

/// A failed handover, naming the namespace and what was done.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {reason}")]
pub struct HandoverError {
    pub op: &'static str,
    pub path: String,
    pub reason: String,
}

fn err(op: &'static str, path: &Path, reason: impl ToString) -> HandoverError {
    HandoverError { op, path: path.display().to_string(), reason: reason.to_string() }
}

/// Runs `f` on a thread of its own, inside the network namespace at `path`
/// (the thread, and the netlink socket it opens, live there; the caller's
/// thread is not touched).
async fn in_netns<T, F, Fut>(op: &'static str, path: &Path, f: F) -> Result<T, HandoverError>
where
    T: Send + 'static,
    F: FnOnce(rtnetlink::Handle, File) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let path = path.to_path_buf();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let p = path.clone();
    std::thread::Builder::new()
        .name("tessera-handover".into())
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
async fn link_names(path: &Path) -> Result<Vec<String>, HandoverError> {
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

/// `ip -n STAGING link set IFNAME netns HOST name NEW`: moves a link out of a
/// staging namespace into the caller's own (the host's), renamed. Idempotent:
/// when `ifname` is no longer in the staging namespace, a link named `new`
/// already in the host namespace counts as moved.
pub async fn link_hand_over(staging: &Path, ifname: &str, new: &str) -> Result<(), HandoverError> {
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
