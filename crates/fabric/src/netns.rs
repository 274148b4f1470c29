//! Named network namespaces (`/run/netns/<name>`, the ones `ip netns` shows) and the ways to run
//! code inside one: a child process (`spawn_in`, `exec_in`), a closure on a dedicated thread
//! (`run_in`), rtnetlink requests bound to the namespace (`with_netlink_in`) and per-namespace
//! sysctls (`sysctl_write`).
//!
//! Everything here is done with system calls and netlink, never by running `ip`. A namespace is
//! always an explicit value: code that enters one does so on a thread or process of its own, so no
//! shared thread (a tokio worker, the test harness) ever changes namespace.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, PoisonError};
use std::thread;

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use rtnetlink::{Handle, LinkUnspec};
use tracing::debug;

use crate::names::validate_netns_name;
use crate::FabricError;

/// Where named network namespaces live, as iproute2 keeps them.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Interface index of `lo`, the first device of every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

/// A named network namespace: a bind mount of an nsfs inode on `/run/netns/<name>`.
///
/// A value from [`Netns::create`] owns the namespace and deletes it when dropped, unless
/// [`Netns::keep`] was called; a value from [`Netns::open`] only refers to it. The handle is the
/// name: it does not hold the namespace open, so once deleted the namespace is gone as soon as
/// no process or interface keeps it alive.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
    owned: bool,
}

impl Netns {
    /// `ip netns add NAME`: creates a new network namespace and brings its `lo` up.
    ///
    /// Makes `/run/netns` a shared mount first if it is not a mount point yet, as iproute2 does,
    /// so the namespace stays visible to processes in other mount namespaces. Fails with
    /// [`FabricError::NetnsExists`] when the name is taken. On any failure nothing is left
    /// behind. The returned value deletes the namespace on drop unless [`Netns::keep`] is called.
    pub fn create(name: &str) -> Result<Netns, FabricError> {
        validate_netns_name(name)?;
        ensure_run_dir()?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        match OpenOptions::new().write(true).create_new(true).mode(0o000).open(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(FabricError::NetnsExists { name: name.to_owned() }),
            Err(source) => return Err(FabricError::Netns { netns: name.to_owned(), op: "create mount point", source }),
        }
        // From here on, dropping `netns` removes the mount point (and the mount, once made).
        let netns = Netns { name: name.to_owned(), path, owned: true };
        let (netns_name, netns_path) = (netns.name.as_str(), netns.path.as_path());
        let created = thread::scope(|s| {
            let worker =
                thread::Builder::new().name("tessera-netns".into()).spawn_scoped(s, move || {
                    let sys = |op| move |e: Errno| FabricError::Netns { netns: netns_name.to_owned(), op, source: e.into() };
                    // This thread is ours alone: it leaves the process's namespace for a new one and
                    // ends right after, so no other code ever runs in a namespace it did not ask for.
                    unshare(CloneFlags::CLONE_NEWNET).map_err(sys("unshare(CLONE_NEWNET)"))?;
                    mount(Some("/proc/thread-self/ns/net"), netns_path, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                        .map_err(sys("bind-mount /proc/thread-self/ns/net"))?;
                    netlink_here(netns_name, |handle| async move {
                        handle.link().set(LinkUnspec::new_with_index(LOOPBACK_IFINDEX).up().build()).execute().await.map_err(
                            |source| FabricError::Netlink { netns: netns_name.to_owned(), op: "set lo up".into(), source },
                        )
                    })?
                });
            match worker {
                Ok(worker) => worker.join().unwrap_or_else(|p| panic::resume_unwind(p)),
                Err(e) => Err(thread_error(netns_name, e)),
            }
        });
        created?;
        debug!(netns = name, "network namespace created");
        Ok(netns)
    }

    /// Refers to an existing namespace `/run/netns/<name>` without owning it (drop does nothing).
    /// Fails with [`FabricError::NetnsNotFound`] when there is no such namespace, and with
    /// [`FabricError::Netns`] when the file exists but is not a namespace (a stale mount point).
    pub fn open(name: &str) -> Result<Netns, FabricError> {
        validate_netns_name(name)?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        match nix::sys::statfs::statfs(&path) {
            Ok(st) if st.filesystem_type() == nix::sys::statfs::NSFS_MAGIC => {
                Ok(Netns { name: name.to_owned(), path, owned: false })
            }
            Ok(_) => Err(FabricError::Netns {
                netns: name.to_owned(),
                op: "open",
                source: io::Error::new(io::ErrorKind::InvalidData, "not a namespace (stale mount point?)"),
            }),
            Err(Errno::ENOENT) => Err(FabricError::NetnsNotFound { name: name.to_owned() }),
            Err(e) => Err(FabricError::Netns { netns: name.to_owned(), op: "statfs", source: e.into() }),
        }
    }

    /// Names of all namespaces in `/run/netns`, sorted. A missing directory means none.
    pub fn list() -> Result<Vec<String>, FabricError> {
        let entries = match fs::read_dir(NETNS_RUN_DIR) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(FabricError::Io { op: "read directory", path: NETNS_RUN_DIR.into(), source }),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| FabricError::Io { op: "read directory", path: NETNS_RUN_DIR.into(), source })?;
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// `ip netns delete NAME`: unmounts and unlinks `/run/netns/<name>`.
    ///
    /// Idempotent: deleting a namespace that does not exist is Ok, and a stale mount point (a
    /// file with nothing mounted on it) is removed. Processes still inside keep the namespace
    /// alive until they exit; kill them first if it must disappear.
    pub fn delete_named(name: &str) -> Result<(), FabricError> {
        validate_netns_name(name)?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        match umount2(&path, MntFlags::MNT_DETACH) {
            // EINVAL: not a mount point (stale file); ENOENT: already gone.
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(FabricError::Netns { netns: name.to_owned(), op: "umount", source: e.into() }),
        }
        match fs::remove_file(&path) {
            Ok(()) => {
                debug!(netns = name, "network namespace deleted");
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(FabricError::Netns { netns: name.to_owned(), op: "unlink", source }),
        }
    }

    /// Deletes this namespace now (see [`Netns::delete_named`]); deleting a missing one is Ok.
    pub fn delete(mut self) -> Result<(), FabricError> {
        self.owned = false;
        Netns::delete_named(&self.name)
    }

    /// Leaves the namespace in place when this value is dropped.
    pub fn keep(&mut self) {
        self.owned = false;
    }

    /// Whether dropping this value deletes the namespace.
    pub fn is_owned(&self) -> bool {
        self.owned
    }

    /// The namespace's name, as `ip netns` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The nsfs inode number: the `N` of `net:[N]` in `/proc/<pid>/ns/net` of processes inside.
    pub fn inode(&self) -> Result<u64, FabricError> {
        fs::metadata(&self.path).map(|m| m.ino()).map_err(|source| FabricError::Netns {
            netns: self.name.clone(),
            op: "stat",
            source,
        })
    }

    /// Opens the namespace file (`O_RDONLY | O_CLOEXEC`), e.g. for `setns(2)` or `IFLA_NET_NS_FD`.
    pub fn open_fd(&self) -> Result<File, FabricError> {
        File::open(&self.path).map_err(|source| FabricError::Netns { netns: self.name.clone(), op: "open", source })
    }

    /// Another, non-owning handle to the same namespace.
    pub(crate) fn alias(&self) -> Netns {
        Netns { name: self.name.clone(), path: self.path.clone(), owned: false }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.owned {
            if let Err(error) = Netns::delete_named(&self.name) {
                tracing::warn!(netns = %self.name, error = %crate::error::chain(&error), "deleting network namespace on drop");
            }
        }
    }
}

/// Makes `/run/netns` exist and be a shared mount, once per process (iproute2's
/// `netns_add` preamble): try `mount --make-rshared`; if it is not a mount point yet (EINVAL),
/// bind-mount it onto itself and try again.
pub(crate) fn ensure_run_dir() -> Result<(), FabricError> {
    static READY: Mutex<bool> = Mutex::new(false);
    let mut ready = READY.lock().unwrap_or_else(PoisonError::into_inner);
    if *ready {
        return Ok(());
    }
    let dir = Path::new(NETNS_RUN_DIR);
    fs::DirBuilder::new().recursive(true).mode(0o755).create(dir).map_err(|source| FabricError::Io {
        op: "create directory",
        path: dir.into(),
        source,
    })?;
    let mut bound = false;
    loop {
        match mount(None::<&str>, dir, Some("none"), MsFlags::MS_SHARED | MsFlags::MS_REC, None::<&str>) {
            Ok(()) => break,
            Err(Errno::EINVAL) if !bound => {
                mount(Some(dir), dir, Some("none"), MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
                    .map_err(|e| FabricError::Io { op: "bind-mount onto itself", path: dir.into(), source: e.into() })?;
                bound = true;
            }
            Err(e) => return Err(FabricError::Io { op: "make shared mount", path: dir.into(), source: e.into() }),
        }
    }
    *ready = true;
    Ok(())
}

fn thread_error(netns: &str, e: io::Error) -> FabricError {
    FabricError::Thread { netns: netns.to_owned(), reason: format!("cannot start: {e}") }
}

/// Runs `f` on a new thread that has entered `netns`, and returns its result.
///
/// Blocks the caller until `f` returns; the thread ends with `f`, so its namespace never leaks
/// into other code. Only the network namespace changes: the mount namespace is the process's, so
/// `/proc/sys/net` and `/proc/net` show `netns`, while `/sys/class/net` still shows the
/// namespace `/sys` was mounted in. A panic in `f` is resumed in the caller.
pub fn run_in<F, T>(netns: &Netns, f: F) -> Result<T, FabricError>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let fd = netns.open_fd()?;
    let name = netns.name();
    thread::scope(|s| {
        let worker = thread::Builder::new().name("tessera-netns".into()).spawn_scoped(s, move || {
            setns(&fd, CloneFlags::CLONE_NEWNET).map_err(|e| FabricError::Netns {
                netns: name.to_owned(),
                op: "setns(CLONE_NEWNET)",
                source: e.into(),
            })?;
            drop(fd);
            Ok(f())
        });
        match worker {
            Ok(worker) => worker.join().unwrap_or_else(|p| panic::resume_unwind(p)),
            Err(e) => Err(thread_error(name, e)),
        }
    })
}

/// Runs rtnetlink requests inside `netns`: `f` gets a [`Handle`] whose socket was opened in
/// `netns`, on a dedicated thread (see [`run_in`]) that owns a current-thread tokio runtime and
/// the netlink connection. Returns what `f`'s future returns.
///
/// Blocks the caller until the future completes; from async code use
/// [`with_netlink_in_async`]. The future need not be `Send`. Errors of the requests themselves
/// are `f`'s to report in `T`; the `Err` here is only about entering the namespace or setting up
/// the runtime and socket.
pub fn with_netlink_in<F, Fut, T>(netns: &Netns, f: F) -> Result<T, FabricError>
where
    F: FnOnce(Handle) -> Fut + Send,
    Fut: Future<Output = T>,
    T: Send,
{
    let name = netns.name();
    run_in(netns, move || netlink_here(name, f))?
}

/// [`with_netlink_in`] for async callers: the namespace thread runs apart and this future waits
/// for it without blocking the caller's runtime.
pub async fn with_netlink_in_async<F, Fut, T>(netns: &Netns, f: F) -> Result<T, FabricError>
where
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let alias = netns.alias();
    let (tx, rx) = tokio::sync::oneshot::channel();
    thread::Builder::new()
        .name("tessera-netns".into())
        .spawn(move || {
            let result = panic::catch_unwind(AssertUnwindSafe(|| with_netlink_in(&alias, f)));
            // The receiver only goes away if the caller stopped waiting; nothing to report then.
            let _ = tx.send(result);
        })
        .map_err(|e| thread_error(netns.name(), e))?;
    match rx.await {
        Ok(Ok(result)) => result,
        Ok(Err(panic_payload)) => panic::resume_unwind(panic_payload),
        Err(_) => Err(FabricError::Thread { netns: netns.name().to_owned(), reason: "ended without a result".into() }),
    }
}

/// Builds a current-thread runtime and a netlink connection in the calling thread's namespace.
fn netlink_here<F, Fut, T>(netns: &str, f: F) -> Result<T, FabricError>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = T>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| FabricError::Thread { netns: netns.to_owned(), reason: format!("cannot build tokio runtime: {e}") })?;
    runtime.block_on(async move {
        let (connection, handle, _messages) = rtnetlink::new_connection().map_err(|source| FabricError::Netns {
            netns: netns.to_owned(),
            op: "open netlink socket",
            source,
        })?;
        tokio::spawn(connection);
        Ok(f(handle).await)
    })
}

/// Maps a sysctl key (`net.ipv4.ip_forward`, or with `/` separators when a component holds a
/// dot, like `net/ipv4/conf/eth0.100/rp_filter`) to its file under `/proc/sys`.
fn sysctl_path(key: &str) -> Option<PathBuf> {
    let sep = if key.contains('/') { '/' } else { '.' };
    let mut path = PathBuf::from("/proc/sys");
    for part in key.split(sep) {
        if part.is_empty() || part == "." || part == ".." || part.contains('\0') {
            return None;
        }
        path.push(part);
    }
    Some(path)
}

/// `ip netns exec NETNS sysctl -w KEY=VALUE`: writes a `net.*` sysctl as seen from inside
/// `netns` (`/proc/sys/net` is per network namespace). Keys outside `net.*` are global to the
/// machine and are refused.
pub fn sysctl_write(netns: &Netns, key: &str, value: &str) -> Result<(), FabricError> {
    let path = sysctl_net_path(key)?;
    run_in(netns, || fs::write(&path, value))?.map_err(|source| FabricError::Sysctl {
        netns: netns.name().to_owned(),
        key: key.to_owned(),
        source,
    })
}

/// `ip netns exec NETNS sysctl -n KEY`: reads a `net.*` sysctl inside `netns`, trimmed.
pub fn sysctl_read(netns: &Netns, key: &str) -> Result<String, FabricError> {
    let path = sysctl_net_path(key)?;
    run_in(netns, || fs::read_to_string(&path))?.map(|s| s.trim().to_owned()).map_err(|source| FabricError::Sysctl {
        netns: netns.name().to_owned(),
        key: key.to_owned(),
        source,
    })
}

fn sysctl_net_path(key: &str) -> Result<PathBuf, FabricError> {
    let invalid = |reason| FabricError::InvalidName { kind: "sysctl", name: key.to_owned(), reason };
    let path = sysctl_path(key).ok_or_else(|| invalid("empty, '.' or '..' component"))?;
    if !path.starts_with("/proc/sys/net") {
        return Err(invalid("only net.* sysctls are per network namespace"));
    }
    Ok(path)
}

/// `ip netns exec NETNS CMD...` without the mount-namespace part: spawns `cmd` with its network
/// namespace switched to `netns` between fork and exec.
///
/// Only the network namespace changes (see [`run_in`] about `/sys`). The caller owns the child:
/// wait for it or kill it. Fails if the namespace cannot be opened or entered, or the program
/// cannot be started.
pub fn spawn_in(netns: &Netns, mut cmd: Command) -> io::Result<Child> {
    let fd: OwnedFd = File::open(netns.path())?.into();
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // operations are allowed. It makes one setns(2) system call on a descriptor the parent
    // opened (O_CLOEXEC, so it does not outlive exec) and, on failure, builds an io::Error from
    // the raw errno, which does not allocate. It touches no lock and no other shared state.
    unsafe {
        cmd.pre_exec(move || setns(&fd, CloneFlags::CLONE_NEWNET).map_err(|e| io::Error::from_raw_os_error(e as i32)));
    }
    cmd.spawn()
}

/// Runs `program args...` inside `netns` to completion and returns its exit status and captured
/// output (stdin is `/dev/null`). A non-zero exit is not an error here: check `status`.
pub fn exec_in<P, I, S>(netns: &Netns, program: P, args: I) -> io::Result<Output>
where
    P: AsRef<OsStr>,
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    spawn_in(netns, cmd)?.wait_with_output()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_keys_map_to_proc_sys_paths() {
        assert_eq!(sysctl_path("net.ipv4.ip_forward"), Some(PathBuf::from("/proc/sys/net/ipv4/ip_forward")));
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0.100/rp_filter"),
            Some(PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/rp_filter"))
        );
    }

    #[test]
    fn sysctl_keys_cannot_escape_proc_sys() {
        for bad in ["", "net..ipv4", "net/../../etc/passwd", "net/./x", "."] {
            assert_eq!(sysctl_path(bad), None, "{bad:?} should be rejected");
        }
    }
}
