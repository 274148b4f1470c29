//! Threads in a network namespace: entering a namespace, the
//! single-threaded runtime and netlink connection of a thread that lives in
//! one, running work in another namespace on a thread of its own, and giving
//! a thread that nothing waits on the lowest CPU priority (or, for periodic
//! work that must keep up, one below normal).

use std::fs::File;
use std::future::Future;
use std::io;
use std::path::Path;

use rtnetlink::Handle;
use tokio::sync::oneshot;

use crate::error::DataplaneError;

/// Gives the calling thread the lowest CPU priority (nice 19), so that work
/// nothing waits on (a dump of 50,000 counters costs the kernel a few
/// hundred milliseconds) yields to the data plane, the agent and the
/// controller. Best effort: a failure leaves the priority as it was.
pub(super) fn lowest_cpu_priority() {
    lowest_cpu_priority_of(0);
}

/// Gives thread or process `who` (0: the calling thread) the lowest CPU
/// priority. Best effort, as [`lowest_cpu_priority`].
pub(super) fn lowest_cpu_priority_of(who: u32) {
    nice(who, LOWEST_NICE);
}

/// Sets the nice value of thread or process `who` (0: the calling thread).
/// Best effort.
#[allow(unsafe_code)]
fn nice(who: u32, value: i32) {
    // SAFETY: setpriority takes no pointers; on Linux, PRIO_PROCESS with
    // who 0 changes the nice value of the calling thread only, and with a
    // process ID that of that process (a child that exited: ESRCH).
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, who, value) };
}

/// The lowest CPU priority's nice value.
const LOWEST_NICE: i32 = 19;

/// The nice value of [`below_normal`]'s threads: beside a busy thread of
/// normal priority such a thread gets about a tenth of the core.
const BELOW_NORMAL_NICE: i32 = 10;

/// Runs `f` on a thread of its own at the lowest CPU priority (in the
/// calling thread's network namespace, which a new thread inherits), for
/// work nothing waits on soon, such as parsing a background listing: it
/// yields to a change being applied. Not for work that must finish under
/// load: beside busy threads of normal priority it gets a few percent of
/// a core.
pub(super) async fn in_background<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    on_thread_at(name, LOWEST_NICE, f).await
}

/// Runs `f` on a thread of its own below normal CPU priority (nice 10;
/// in the calling thread's network namespace), for periodic work that
/// must keep up under load but not delay a change being applied: a dump
/// of a conntrack table that short connections have filled (100,000
/// entries cost the kernel and the parser a few hundred milliseconds).
pub async fn below_normal<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    on_thread_at(name, BELOW_NORMAL_NICE, f).await
}

async fn on_thread_at<T: Send + 'static>(name: &str, value: i32, f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name(name.into()).spawn(move || {
        nice(0, value);
        let _ = tx.send(f());
    })?;
    rx.await.map_err(|_| io::Error::other(format!("thread {name} ended without an answer")))
}

/// Enters the network namespace at `path`, for the calling thread only.
pub(super) fn enter_netns(path: &Path) -> Result<(), DataplaneError> {
    let netns_err = |source: io::Error| DataplaneError::Netns { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(netns_err)?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| netns_err(io::Error::from(e)))
}

pub(super) fn runtime() -> Result<tokio::runtime::Runtime, DataplaneError> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|source| DataplaneError::Kernel {
        op: "start runtime",
        object: "data plane thread".into(),
        source,
    })
}

pub(super) fn connect() -> Result<Handle, DataplaneError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| DataplaneError::Kernel {
        op: "open",
        object: "netlink socket".into(),
        source,
    })?;
    tokio::spawn(conn);
    Ok(handle)
}

/// Runs `f` with a netlink handle whose socket lives in the network namespace
/// at `path`, on a thread of its own that exits afterwards.
pub(super) async fn in_netns<T, F, Fut>(path: &Path, f: F) -> Result<T, DataplaneError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, DataplaneError>>,
{
    let path = path.to_path_buf();
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("tessera-netns".into())
        .spawn(move || {
            let run = || -> Result<T, DataplaneError> {
                enter_netns(&path)?;
                runtime()?.block_on(async move { f(connect()?).await })
            };
            let _ = tx.send(run());
        })
        .map_err(|source| DataplaneError::Kernel { op: "spawn", object: "namespace thread".into(), source })?;
    rx.await.map_err(|_| DataplaneError::WorkerGone)?
}
