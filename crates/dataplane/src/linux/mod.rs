//! [`LinuxDataplane`]: the kernel data plane, through rtnetlink, `nft` and
//! `/proc/sys`.
//!
//! Namespaces are explicit. A `LinuxDataplane` owns one dedicated OS thread
//! (never a tokio worker) that stays in the data plane's network namespace
//! for its whole life and runs a single-threaded runtime: its netlink socket,
//! the `nft` processes it starts and its `/proc/sys` writes all belong to
//! that namespace. [`LinuxDataplane::new`] uses the namespace of the calling
//! thread; [`LinuxDataplane::in_netns`] enters the namespace at a path first.
//! Work inside a container's namespace (configuring the container side of a
//! veth) runs on a short-lived thread that enters the container's namespace,
//! opens a netlink socket there, and exits.
//!
//! One file per kind of kernel object, as rtnetlink has a module per kind:
//! `links` (links, veths, bridges, VXLAN devices, addresses, kernel
//! parameters), `routes` (routes and `ip rule`s), `neigh` (neighbour, proxy
//! neighbour and FDB entries), `nftables` (nft transactions and the nftables
//! state carried forward), `conntrack` (zone flushes), `announce` (gratuitous ARP and unsolicited
//! neighbour advertisements); `observe` reads them
//! all, `vif` makes the interface table, `tamper` sees Tessera's nftables
//! tables changed behind its back, and `worker` runs the data plane's
//! thread, implements [`Dataplane`](crate::Dataplane) and orders an apply.
//! `common` and `netns` hold what they share (errors, link indexes, the
//! netfilter socket; threads in a namespace).

mod announce;
mod common;
mod conntrack;
mod ct_watch;
mod drop_watch;
pub mod fastpath;
mod links;
mod neigh;
mod netns;
mod nftables;
mod observe;
mod purge;
mod routes;
mod tamper;
mod vif;
mod worker;

pub use ct_watch::{conntrack_events, conntrack_events_of, CtMessage};
pub use drop_watch::{refused_packets, RefusedPacket};
pub use netns::below_normal;
pub use purge::{purge, Purge, NFT_TABLES};
pub use worker::{link_exists, link_with_address, LinuxDataplane};

/// The CPU time the calling thread has used: beside the wall time of a
/// step, it tells work from waiting (for a lock, a core, the kernel).
pub fn thread_cpu_time() -> std::time::Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map_or(std::time::Duration::ZERO, std::time::Duration::from)
}
