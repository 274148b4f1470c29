//! Where a [`Cluster`](crate::cluster::Cluster)'s controllers run and which
//! store they keep the fabric in: one controller on the first host with the
//! embedded redb store (the default), or a controller on each of several
//! hosts, all sharing one etcd cluster. Pure: it names the controllers'
//! hosts, URLs, logs and command lines; the cluster starts them.

use std::net::Ipv4Addr;
use std::path::Path;

/// The controller's port inside the fabric.
pub const CONTROLLER_PORT: u16 = 8082;

/// The controllers of a cluster and their store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ControlPlane {
    /// One controller on the first host, on a redb file in the run directory.
    #[default]
    Redb,
    /// A controller on each of `hosts`, all on the etcd cluster whose client
    /// URLs `endpoints` lists (comma-separated, reachable from those hosts).
    /// The first host's controller makes the fabric (`--init`) and starts
    /// first; the others join it.
    Etcd {
        /// The hosts that run a controller, in the order agents try them.
        hosts: Vec<String>,
        /// etcd's client URLs, as `--etcd-endpoints` takes them.
        endpoints: String,
    },
}

impl ControlPlane {
    /// The hosts that run a controller, in order, among the cluster's
    /// `hosts` (the first of them for [`ControlPlane::Redb`]).
    pub fn controller_hosts(&self, hosts: &[String]) -> Vec<String> {
        match self {
            ControlPlane::Redb => hosts.iter().take(1).cloned().collect(),
            ControlPlane::Etcd { hosts, .. } => hosts.clone(),
        }
    }

    /// The name of the log of the controller on `host`, without `.log`:
    /// `controller` for the one controller on redb, `controller-HOST` when
    /// there are several.
    pub fn log_name(&self, host: &str) -> String {
        match self {
            ControlPlane::Redb => "controller".to_string(),
            ControlPlane::Etcd { .. } => format!("controller-{host}"),
        }
    }

    /// The arguments of `tessera controller` on `host`, whose underlay
    /// address is `ip`, serving HTTPS with the certificates of `pki`; a redb
    /// store goes in `run_dir/controller`.
    pub fn controller_args(&self, host: &str, ip: Ipv4Addr, run_dir: &Path, pki: &Path) -> Vec<String> {
        let mut args = vec!["controller".to_string()];
        match self {
            ControlPlane::Redb => {
                args.extend(["--init".into(), "--data-dir".into(), run_dir.join("controller").display().to_string()]);
            }
            ControlPlane::Etcd { hosts, endpoints } => {
                if hosts.first().map(String::as_str) == Some(host) {
                    args.push("--init".into());
                }
                args.extend([
                    "--store".into(),
                    "etcd".into(),
                    "--etcd-endpoints".into(),
                    endpoints.clone(),
                    "--advertise-url".into(),
                    controller_url(ip),
                ]);
            }
        }
        args.extend(["--listen".into(), format!("{ip}:{CONTROLLER_PORT}"), "--pki".into(), pki.display().to_string()]);
        args
    }
}

/// `https://IP:8082`: the URL of the controller on the host at `ip`.
pub fn controller_url(ip: Ipv4Addr) -> String {
    format!("https://{ip}:{CONTROLLER_PORT}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> Vec<String> {
        vec!["h1".into(), "h2".into(), "h3".into()]
    }

    #[test]
    fn the_default_is_one_controller_on_redb_on_the_first_host() {
        let plane = ControlPlane::default();
        assert_eq!(plane.controller_hosts(&hosts()), ["h1"]);
        assert_eq!(plane.log_name("h1"), "controller");
        let args = plane.controller_args("h1", Ipv4Addr::new(10, 99, 0, 1), Path::new("/run/t"), Path::new("/run/t/pki"));
        assert_eq!(
            args,
            ["controller", "--init", "--data-dir", "/run/t/controller", "--listen", "10.99.0.1:8082", "--pki", "/run/t/pki"]
        );
    }

    #[test]
    fn on_etcd_the_first_controller_makes_the_fabric_and_every_one_advertises_its_url() {
        let plane = ControlPlane::Etcd { hosts: vec!["h1".into(), "h2".into()], endpoints: "http://10.99.0.254:2379".into() };
        assert_eq!(plane.controller_hosts(&hosts()), ["h1", "h2"]);
        assert_eq!(plane.log_name("h2"), "controller-h2");
        let pki = Path::new("/run/t/pki");
        let first = plane.controller_args("h1", Ipv4Addr::new(10, 99, 0, 1), Path::new("/run/t"), pki);
        let second = plane.controller_args("h2", Ipv4Addr::new(10, 99, 0, 2), Path::new("/run/t"), pki);
        assert_eq!(
            second,
            [
                "controller",
                "--store",
                "etcd",
                "--etcd-endpoints",
                "http://10.99.0.254:2379",
                "--advertise-url",
                "https://10.99.0.2:8082",
                "--listen",
                "10.99.0.2:8082",
                "--pki",
                "/run/t/pki"
            ]
        );
        assert_eq!(first[..2], ["controller", "--init"], "the first makes the fabric");
        assert_eq!(first[6..8], ["--advertise-url", "https://10.99.0.1:8082"]);
        assert_eq!(first[8..10], ["--listen", "10.99.0.1:8082"]);
    }
}
