//! `tessera-fabric`: a fabric of hosts on one machine, made of network namespaces.
//!
//! Tessera's multi-host privileged tests and the `tessera demo` command both need several
//! "hosts" joined by an underlay network, and "containers" on those hosts. This crate builds
//! them from the kernel's own pieces: a network namespace per host, a Linux bridge in an underlay
//! namespace, a veth pair per host, and bare namespaces for containers.
//!
//! - [`Netns`]: a named network namespace (`/run/netns/<name>`, as `ip netns` shows it), created
//!   with `unshare(2)` and a bind mount, deleted on drop unless kept.
//! - [`spawn_in`], [`exec_in`], [`run_in`], [`with_netlink_in`], [`sysctl_write`]: run a process,
//!   a closure, rtnetlink requests or a sysctl write inside a namespace, always on a thread or
//!   process of its own.
//! - [`Fabric`]: builds the underlay, hosts and containers from a [`FabricSpec`], starts processes
//!   in them, and tears everything down on drop (or later by prefix with
//!   [`Fabric::teardown_prefix`]).
//! - [`Fabric::preflight`]: checks the machine first and says what is missing.
//! - [`cluster::Cluster`]: a fabric with the real `tessera` controller and agents running in
//!   it, for `tessera demo`, the multi-host tests and the benchmarks; one controller on redb,
//!   or several sharing an etcd cluster ([`cluster::ControlPlane`]).
//!
//! Nothing here shells out to `ip`; everything is system calls and netlink. Everything needs
//! root (CAP_SYS_ADMIN and CAP_NET_ADMIN).

pub mod cluster;
mod control_plane;
mod error;
mod fabric;
pub mod names;
mod netns;
mod preflight;
mod process;

pub use error::{FabricError, PreflightError};
pub use fabric::{
    Container, Fabric, FabricSpec, Host, PrefixScan, TeardownReport, DEFAULT_UNDERLAY, HOST_IFNAME, UNDERLAY_BRIDGE, UNDERLAY_MTU,
};
pub use netns::{
    exec_in, run_in, spawn_in, sysctl_read, sysctl_write, with_netlink_in, with_netlink_in_async, Netns, NETNS_RUN_DIR,
};
pub use process::TERM_GRACE;
pub use rtnetlink::Handle as NetlinkHandle;
