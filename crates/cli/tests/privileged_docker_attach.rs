//! Privileged tier: `tessera attach --docker` puts a running container started
//! by a real dockerd (Debian's docker.io) into a network, and `detach` takes
//! it out again, leaving nothing behind.

use std::sync::atomic::{AtomicUsize, Ordering};

use tessera_testkit::docker::{Dockerd, BUSYBOX_IMAGE};
use tessera_testkit::{addresses, Cluster, ClusterSpec};

static N: AtomicUsize = AtomicUsize::new(0);

fn attach_docker(c: &Cluster, d: &Dockerd, host: &str, id: &str, network: &str) -> serde_json::Value {
    let sock = c.agent_socket(host).display().to_string();
    let out = c
        .tessera_on(
            host,
            &["attach", "--network", network, "--docker", id, "--socket", &sock, "--json"],
            &[("DOCKER_HOST", &d.host())],
        )
        .unwrap();
    assert!(out.status.success(), "attach --docker failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn privileged_running_docker_container_is_attached_detached_and_reattached() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("tdk{}-{}", std::process::id() % 100_000, N.fetch_add(1, Ordering::SeqCst));
    let mut c = Cluster::start(ClusterSpec::new(&prefix, &["h1", "h2"], env!("CARGO_BIN_EXE_tessera"), dir.path().join("run")))
        .unwrap_or_else(|e| panic!("cannot start a Tessera fabric: {e:#}"));
    let d = Dockerd::start(c.host_netns("h1").unwrap(), &dir.path().join("docker"))
        .unwrap_or_else(|e| panic!("cannot start dockerd (apt-get install docker.io): {e:#}"));
    d.import_busybox().unwrap();
    c.cli_ok(&["network", "add", "red", "--subnet", "10.7.0.0/24"]).unwrap();
    c.container("h2", "peer").unwrap();
    let peer = addresses(&c.attach("peer", "red", &[]).unwrap());

    let id = d.docker_ok(&["run", "-d", "--net", "none", "--name", "web", BUSYBOX_IMAGE, "sleep", "3600"]).unwrap();
    let ep = attach_docker(&c, &d, "h1", "web", "red");
    assert_eq!(ep["owner"]["container_id"], id.as_str());
    let ip = addresses(&ep)[0].clone();
    // Inside the container, as docker exec sees it:
    let inside = d.docker_ok(&["exec", "web", "ip", "addr", "show", "eth0"]).unwrap();
    assert!(inside.contains(&ip), "the container's eth0 lacks {ip}: {inside}");
    let ping = d.docker_ok(&["exec", "web", "ping", "-c", "2", "-W", "2", &peer[0]]).unwrap();
    assert!(ping.contains("2 packets received"), "{ping}");
    assert_eq!(c.ping("peer", &ip, 2).unwrap(), 2);

    let sock = c.agent_socket("h1").display().to_string();
    let out =
        c.tessera_on("h1", &["detach", "--docker", "web", "--socket", &sock, "--json"], &[("DOCKER_HOST", &d.host())]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let links = d.docker_ok(&["exec", "web", "ip", "-o", "link"]).unwrap();
    assert!(!links.contains("eth0"), "eth0 left in the container: {links}");
    assert_eq!(c.ping("peer", &ip, 1).unwrap(), 0);

    let again = attach_docker(&c, &d, "h1", "web", "red");
    assert_eq!(c.ping("peer", &addresses(&again)[0], 2).unwrap(), 2, "re-attached container is reachable");
}
