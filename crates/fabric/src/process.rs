//! Finding and stopping the processes that live in a set of network namespaces.
//!
//! Processes are addressed through pidfds (`pidfd_open(2)`), so a signal can never hit an
//! unrelated process that reused a pid. Stopping is SIGTERM, a grace period, then SIGKILL.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitid, Id, WaitPidFlag};

use crate::FabricError;

/// How long processes get between SIGTERM and SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(2);

/// How long to wait for processes to disappear after SIGKILL before reporting them.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// A process held by a pidfd: signals and waits reach this process even if its pid is reused.
#[derive(Debug)]
pub(crate) struct Pidfd {
    pid: u32,
    fd: OwnedFd,
}

impl Pidfd {
    /// `pidfd_open(pid, 0)`.
    pub(crate) fn open(pid: u32) -> io::Result<Pidfd> {
        let raw_pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
        // SAFETY: pidfd_open(2) takes a pid and a flags word by value and returns a new
        // descriptor or -1; no memory is shared with the kernel.
        let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, raw_pid, 0) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        let raw = RawFd::try_from(ret).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
        // SAFETY: `raw` was just returned by pidfd_open, is open, and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Pidfd { pid, fd })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// `pidfd_send_signal(fd, sig, NULL, 0)`. A process that already exited is not an error.
    fn signal(&self, sig: Signal) -> Result<(), FabricError> {
        // SAFETY: pidfd_send_signal(2) gets a descriptor we own, a valid signal number, a NULL
        // siginfo (allowed: it then behaves like kill(2)) and flags 0; no memory is written.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                sig as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0u32,
            )
        };
        if ret == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        let op = if sig == Signal::SIGKILL { "send SIGKILL" } else { "send SIGTERM" };
        Err(FabricError::Process { pid: self.pid, op, source: err })
    }

    /// Whether the process has exited (a pidfd polls readable once it has).
    fn has_exited(&self) -> bool {
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
    }

    /// Reaps the process if it is our own child and has exited; otherwise does nothing.
    fn reap(&self) {
        // ECHILD (not our child, or already reaped) and "still running" are both fine here.
        let _ = waitid(Id::PIDFd(self.fd.as_fd()), WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG);
    }
}

/// The nsfs inode of `/proc/<pid>/ns/net`, or None when the process is gone or is a zombie.
fn netns_inode_of(pid: u32) -> Option<u64> {
    fs::metadata(format!("/proc/{pid}/ns/net")).ok().map(|m| m.ino())
}

/// Pids of processes (thread-group leaders) whose network namespace is one of `inodes`,
/// excluding the calling process itself. Sorted.
pub(crate) fn pids_in_netns(inodes: &HashSet<u64>) -> Result<Vec<u32>, FabricError> {
    let me = std::process::id();
    let mut pids = Vec::new();
    if inodes.is_empty() {
        return Ok(pids);
    }
    let entries =
        fs::read_dir("/proc").map_err(|source| FabricError::Io { op: "read directory", path: "/proc".into(), source })?;
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid != me && netns_inode_of(pid).is_some_and(|ino| inodes.contains(&ino)) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    Ok(pids)
}

/// Opens pidfds for the processes in `inodes`, re-checking each one's namespace after the pidfd
/// is open so that a pid reused between the scan and the open is never targeted.
pub(crate) fn pidfds_in_netns(inodes: &HashSet<u64>) -> Result<Vec<Pidfd>, FabricError> {
    let mut out = Vec::new();
    for pid in pids_in_netns(inodes)? {
        let Ok(pidfd) = Pidfd::open(pid) else { continue }; // exited meanwhile
        if netns_inode_of(pid).is_some_and(|ino| inodes.contains(&ino)) {
            out.push(pidfd);
        }
    }
    Ok(out)
}

/// Stops every process: SIGTERM to all, up to `grace` for them to exit, SIGKILL to the rest,
/// then up to two more seconds. Reaps those that are our children. Keeps going on failure.
///
/// Returns the pids that were still running when signalled, and one error per process that
/// could not be signalled or survived.
pub(crate) fn terminate(targets: Vec<Pidfd>, grace: Duration) -> (Vec<u32>, Vec<FabricError>) {
    let mut failures = Vec::new();
    let mut killed = Vec::new();
    let mut alive: Vec<Pidfd> = Vec::new();
    for target in targets {
        if target.has_exited() {
            target.reap();
            continue;
        }
        killed.push(target.pid());
        match target.signal(Signal::SIGTERM) {
            Ok(()) => alive.push(target),
            Err(e) => failures.push(e),
        }
    }
    alive = wait_until_exited(alive, grace);
    for target in &alive {
        if let Err(e) = target.signal(Signal::SIGKILL) {
            failures.push(e);
        }
    }
    for survivor in wait_until_exited(alive, KILL_WAIT) {
        failures.push(FabricError::ProcessSurvived { pid: survivor.pid() });
    }
    (killed, failures)
}

/// Polls the pidfds until all have exited or `limit` passes; reaps the exited ones and returns
/// those still running.
fn wait_until_exited(mut alive: Vec<Pidfd>, limit: Duration) -> Vec<Pidfd> {
    let deadline = Instant::now() + limit;
    loop {
        alive.retain(|p| {
            let exited = p.has_exited();
            if exited {
                p.reap();
            }
            !exited
        });
        let now = Instant::now();
        if alive.is_empty() || now >= deadline {
            return alive;
        }
        // Sleep until any of them exits, or the deadline.
        let remaining = deadline - now;
        let ms = u16::try_from(remaining.as_millis().min(10_000)).unwrap_or(u16::MAX);
        let mut fds: Vec<PollFd<'_>> = alive.iter().map(|p| PollFd::new(p.fd.as_fd(), PollFlags::POLLIN)).collect();
        // EINTR or any other poll error: loop and re-check, bounded by the deadline.
        let _ = poll(&mut fds, PollTimeout::from(ms.max(1)));
    }
}
