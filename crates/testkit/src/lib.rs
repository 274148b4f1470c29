//! `tessera-testkit`: what the tests and benchmarks run beside Tessera.
//!
//! The running fabric itself ([`Cluster`]: hosts as namespaces, the
//! controller and agents as real processes) is `tessera_fabric::cluster`,
//! shared with `tessera demo`, and re-exported here. The test kit adds the
//! real runtimes: [`docker`] (a dockerd per host namespace, the busybox image,
//! the plugin), [`podman`] (Debian's Podman with CNI per host) and [`cni`]
//! (runs plugins and chains exactly as a runtime does).
#![forbid(unsafe_code)]

pub mod cni;
pub mod docker;
pub mod podman;

pub use tessera_fabric::cluster::{addresses, ping_in, unmount_under, Cluster, ClusterSpec, CONTROLLER_PORT};
pub use tessera_fabric::{exec_in, Container, Fabric, FabricSpec, Netns};
