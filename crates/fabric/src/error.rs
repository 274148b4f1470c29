//! Errors of the fabric crate: one enum for every operation, each variant carrying the object
//! that failed (namespace, interface, process, prefix) and the underlying cause.

use std::io;
use std::path::PathBuf;

use ipnet::Ipv4Net;

/// Everything that can go wrong while building, using or tearing down namespaces and fabrics.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FabricError {
    /// A namespace, host, container or prefix name cannot be used.
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidName { kind: &'static str, name: String, reason: &'static str },

    /// `Netns::create` found `/run/netns/<name>` already there.
    #[error("network namespace {name:?} already exists (remove it with `ip netns delete {name}`)")]
    NetnsExists { name: String },

    /// `Netns::open` found no namespace with that name.
    #[error("network namespace {name:?} does not exist")]
    NetnsNotFound { name: String },

    /// A system call on a namespace failed (`unshare`, `mount`, `setns`, `umount`, `unlink`...).
    #[error("network namespace {netns:?}: {op}")]
    Netns {
        netns: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },

    /// A file or directory operation outside any single namespace failed.
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A netlink request inside a namespace failed.
    #[error("network namespace {netns:?}: netlink: {op}")]
    Netlink {
        netns: String,
        op: String,
        #[source]
        source: rtnetlink::Error,
    },

    /// An interface the fabric relies on is missing.
    #[error("network namespace {netns:?}: no interface {ifname:?}")]
    LinkNotFound { netns: String, ifname: String },

    /// Writing or reading a sysctl inside a namespace failed.
    #[error("network namespace {netns:?}: sysctl {key}")]
    Sysctl {
        netns: String,
        key: String,
        #[source]
        source: io::Error,
    },

    /// `Fabric::build` found namespaces already using the prefix.
    #[error(
        "fabric prefix {prefix:?} is already in use by network namespaces {namespaces:?}; \
         remove them first (`tessera demo down`, or Fabric::teardown_prefix({prefix:?}))"
    )]
    PrefixInUse { prefix: String, namespaces: Vec<String> },

    /// The underlay subnet has no room for one address per host.
    #[error("underlay {underlay} has room for {capacity} hosts, {requested} requested")]
    UnderlayTooSmall { underlay: Ipv4Net, capacity: u64, requested: usize },

    /// The same host appears twice in a `FabricSpec`.
    #[error("host {host:?} appears more than once in the fabric spec")]
    DuplicateHost { host: String },

    /// A host name that is not part of the fabric.
    #[error("fabric {prefix:?} has no host {host:?}")]
    UnknownHost { prefix: String, host: String },

    /// Starting a process inside a namespace failed.
    #[error("network namespace {netns:?}: spawning {program:?}")]
    Spawn {
        netns: String,
        program: String,
        #[source]
        source: io::Error,
    },

    /// Signalling or watching a process failed.
    #[error("process {pid}: {op}")]
    Process {
        pid: u32,
        op: &'static str,
        #[source]
        source: io::Error,
    },

    /// A process was still alive after SIGTERM, the grace period, SIGKILL and a further wait.
    #[error("process {pid} survived SIGKILL")]
    ProcessSurvived { pid: u32 },

    /// A helper thread that entered a namespace could not be started or died.
    #[error("network namespace {netns:?}: helper thread: {reason}")]
    Thread { netns: String, reason: String },

    /// The machine cannot run a fabric; the message says what is missing and how to fix it.
    #[error(transparent)]
    Preflight(#[from] PreflightError),

    /// A teardown finished but some steps failed; every failure is listed.
    #[error("teardown of {target}: {}", join_failures(.failures))]
    Teardown { target: String, failures: Vec<FabricError> },
}

fn join_failures(failures: &[FabricError]) -> String {
    let mut out = format!("{} failure(s)", failures.len());
    for f in failures {
        out.push_str("; ");
        out.push_str(&chain(f));
    }
    out
}

/// An error and its sources on one line, `outer: inner: root`, for logs and summaries.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// What `Fabric::preflight` found missing. Each message names the missing piece and the fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PreflightError {
    #[error(
        "fabric preflight: must run as root (effective uid is {euid}); \
         fix: run the tests or `tessera demo` with sudo, or as root in a --privileged container"
    )]
    NotRoot { euid: u32 },

    #[error(
        "fabric preflight: {path} is unavailable; \
         fix: mount procfs (`mount -t proc proc /proc`)"
    )]
    ProcUnavailable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "fabric preflight: cannot prepare /run/netns; \
         fix: make /run writable and run with CAP_SYS_ADMIN (in a container: --privileged)"
    )]
    NetnsDirUnusable {
        #[source]
        source: Box<FabricError>,
    },

    #[error(
        "fabric preflight: cannot create a network namespace; \
         fix: run with CAP_SYS_ADMIN and a seccomp profile that allows unshare/setns/mount \
         (in a container: --privileged)"
    )]
    NetnsUnsupported {
        #[source]
        source: Box<FabricError>,
    },

    #[error(
        "fabric preflight: cannot create a veth pair; \
         fix: load the veth module (`modprobe veth`, kernel option CONFIG_VETH)"
    )]
    VethUnsupported {
        #[source]
        source: Box<FabricError>,
    },

    #[error(
        "fabric preflight: cannot create a Linux bridge or enslave a port to it; \
         fix: load the bridge module (`modprobe bridge`, kernel option CONFIG_BRIDGE)"
    )]
    BridgeUnsupported {
        #[source]
        source: Box<FabricError>,
    },

    #[error(
        "fabric preflight: cannot enable IPv4/IPv6 forwarding inside a namespace; \
         fix: boot without ipv6.disable=1 and make /proc/sys writable (in a container: --privileged)"
    )]
    ForwardingUnavailable {
        #[source]
        source: Box<FabricError>,
    },

    #[error(
        "fabric preflight: cannot remove the probe namespace; \
         fix: check that /run/netns allows umount and unlink"
    )]
    CleanupFailed {
        #[source]
        source: Box<FabricError>,
    },
}
