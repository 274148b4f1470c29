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

/// A blocking HTTPS client builder for `c`'s controller that presents the
/// administrator's certificate (build it inside the controller's host
/// namespace, where the controller's address is reachable).
pub fn admin_http(c: &Cluster) -> anyhow::Result<reqwest::blocking::ClientBuilder> {
    use anyhow::Context;
    let pki = c.pki_dir();
    let read = |name: &str| std::fs::read(pki.join(name)).with_context(|| format!("cannot read {name} in {}", pki.display()));
    let ca = reqwest::Certificate::from_pem(&read("ca.pem")?)?;
    let mut pem = read("admin.pem")?;
    pem.push(b'\n');
    pem.extend(read("admin-key.pem")?);
    Ok(reqwest::blocking::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .identity(reqwest::Identity::from_pem(&pem)?))
}
