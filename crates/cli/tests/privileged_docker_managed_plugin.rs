//! Privileged tier: Tessera as Docker's managed plugin (v2). `./x
//! docker-plugin` makes the plugin (a root file system with this build's
//! binary and config.json); each host's dockerd (Debian's docker.io)
//! creates it with `docker plugin create`, is given the host's settings
//! with `docker plugin set` and enables it; then Docker uses it as its
//! network and IPAM driver `tessera:latest` across two hosts, as with the
//! plugin run as a service.

mod privileged_docker_support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use privileged_docker_support::*;
use tessera_testkit::docker::MANAGED_DRIVER;

#[test]
fn privileged_the_managed_plugin_serves_docker_networks_across_two_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("plugin");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new("bash")
        .arg(repo.join("x"))
        .args(["docker-plugin", "--binary", env!("CARGO_BIN_EXE_tessera"), "--out"])
        .arg(&plugin)
        .current_dir(&repo)
        .output()
        .unwrap();
    assert!(out.status.success(), "./x docker-plugin: {}", String::from_utf8_lossy(&out.stderr));

    let f = Fabric::start_managed(&plugin);
    let listed = ok(&f.d1, &["plugin", "ls", "--format", "{{.Name}} {{.Enabled}}"]);
    assert_eq!(listed.trim(), "tessera:latest true", "{listed}");

    create_network_of(&f.d1, MANAGED_DRIVER, "mnet", &["--subnet", "10.81.0.0/24"]);
    let d = inspect(&f.d1, "network", "mnet");
    assert_eq!((d["Driver"].as_str(), d["IPAM"]["Driver"].as_str()), (Some(MANAGED_DRIVER), Some(MANAGED_DRIVER)), "{d}");
    assert!(f.tessera_has("mnet"), "the network is Tessera's");
    // Made on host 2 by its plugin, of the driver host 2 knows Tessera by.
    wait_for("mnet in host 2's docker network ls", Duration::from_secs(30), || network_names(&f.d2).contains("mnet"));
    assert_eq!(inspect(&f.d2, "network", "mnet")["Driver"], MANAGED_DRIVER);

    run(&f.d1, "m1", &["--net", "mnet"]);
    run(&f.d2, "m2", &["--net", "mnet"]);
    let (m1, _) = container_ips(&f.d1, "m1", "mnet");
    let (m2, _) = container_ips(&f.d2, "m2", "mnet");
    assert!(m1.starts_with("10.81.0.") && m2.starts_with("10.81.0.") && m1 != m2, "{m1} {m2}");
    assert!(reaches(&f.d1, "m1", &m2), "m1 -> m2 {m2}\n{}", f.logs());
    assert!(ping(&f.d2, "m2", &m1), "m2 -> m1 {m1}\n{}", f.logs());
    assert_agree(&f, "mnet");

    ok(&f.d1, &["rm", "-f", "m1"]);
    ok(&f.d2, &["rm", "-f", "m2"]);
    assert!(f.show("mnet")["endpoints"].as_array().unwrap().is_empty(), "the endpoints left with the containers");
}
