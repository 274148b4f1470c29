//! Privileged tier: Debian's Podman with `network_backend = "cni"` runs
//! containers on Tessera networks across two hosts (a Podman per host
//! namespace, the plugin and configuration put in place by `tessera cni
//! install`): they ping each other, networks stay isolated until a policy
//! connects them, a static `--ip` is honoured and `podman rm` releases the
//! address; `podman run -p` publishes a port through Tessera (the
//! `portMappings` capability), reached from another host and from the host.

use std::path::PathBuf;

use tessera_testkit::cni::REFERENCE_PLUGINS;
use tessera_testkit::podman::{Podman, BUSYBOX_IMAGE};
use tessera_testkit::{Cluster, ClusterSpec};

fn podman_ip(p: &Podman, container: &str, network: &str) -> String {
    let ip =
        p.podman_ok(&["inspect", "-f", &format!("{{{{.NetworkSettings.Networks.{network}.IPAddress}}}}"), container]).unwrap();
    assert!(ip.parse::<std::net::Ipv4Addr>().is_ok(), "podman inspect gave {ip:?} for {container}");
    ip
}

fn ping(p: &Podman, container: &str, dst: &str) -> bool {
    p.podman(&["exec", container, "ping", "-c", "2", "-W", "2", dst]).unwrap().status.success()
}

fn endpoint_addresses(c: &Cluster, network: &str) -> Vec<String> {
    let eps = c.cli_json(&["endpoint", "list", "--network", network]).unwrap();
    eps.as_array().unwrap().iter().flat_map(tessera_testkit::addresses).collect()
}

#[test]
fn privileged_podman_containers_on_two_hosts_use_tessera_networks() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("tpm{}", std::process::id() % 100_000);
    let c = Cluster::start(ClusterSpec::new(&prefix, &["h1", "h2"], env!("CARGO_BIN_EXE_tessera"), dir.path().join("run")))
        .unwrap_or_else(|e| panic!("cannot start a Tessera fabric: {e:#}"));
    c.cli_ok(&["network", "add", "red", "--subnet", "10.63.0.0/24"]).unwrap();
    c.cli_ok(&["network", "add", "green", "--subnet", "10.64.0.0/24"]).unwrap();

    let bin_dir = dir.path().join("cni-bin");
    let mut podmans = Vec::new();
    for host in ["h1", "h2"] {
        let conf_dir = dir.path().join(host).join("net.d");
        let sock = c.agent_socket(host).display().to_string();
        for network in ["red", "green"] {
            let out = c
                .tessera_on(
                    host,
                    &[
                        "cni",
                        "install",
                        "--network",
                        network,
                        "--socket",
                        &sock,
                        "--bin-dir",
                        bin_dir.to_str().unwrap(),
                        "--conf-dir",
                        conf_dir.to_str().unwrap(),
                    ],
                    &[],
                )
                .unwrap();
            assert!(out.status.success(), "tessera cni install: {}", String::from_utf8_lossy(&out.stderr));
        }
        let p = Podman::start(
            c.host_netns(host).unwrap(),
            &dir.path().join(host).join("podman"),
            &[bin_dir.clone(), PathBuf::from(REFERENCE_PLUGINS)],
            &conf_dir,
        )
        .unwrap_or_else(|e| panic!("cannot prepare podman on {host}: {e:#}"));
        let networks = p.podman_ok(&["network", "ls", "--format", "{{.Name}}"]).unwrap();
        assert!(networks.contains("red") && networks.contains("green"), "podman network ls: {networks}");
        podmans.push(p);
    }
    let (p1, p2) = (&podmans[0], &podmans[1]);
    let run = |p: &Podman, name: &str, network: &str, extra: &[&str]| {
        let mut args = vec!["run", "-d", "--name", name, "--network", network];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[BUSYBOX_IMAGE, "sleep", "3600"]);
        p.podman_ok(&args).unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs_tail(20)));
    };
    run(p1, "r1", "red", &[]);
    run(p2, "r2", "red", &["--ip", "10.63.0.50"]);
    run(p2, "g1", "green", &[]);
    let (r1, r2, g1) = (podman_ip(p1, "r1", "red"), podman_ip(p2, "r2", "red"), podman_ip(p2, "g1", "green"));
    assert_eq!(r2, "10.63.0.50", "podman run --ip is honoured");
    assert!(endpoint_addresses(&c, "red").contains(&r1), "Tessera allocated {r1}");

    // Across hosts over the overlay.
    assert!(ping(p1, "r1", &r2), "r1 (h1) cannot ping r2 (h2)");
    assert!(ping(p2, "r2", &r1), "r2 (h2) cannot ping r1 (h1)");
    // Isolation: green does not reach red...
    assert!(!ping(p2, "g1", &r1), "green reached red without a policy");
    // ...until a policy attached to both connects them.
    c.cli_ok(&["policy", "add", "red-green", "--rule", "pass any red any <> green any"]).unwrap();
    c.cli_ok(&["network", "update", "red", "--policy", "red-green"]).unwrap();
    c.cli_ok(&["network", "update", "green", "--policy", "red-green"]).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !ping(p2, "g1", &r1) {
        assert!(std::time::Instant::now() < deadline, "green cannot reach red with the policy attached");
    }
    assert!(ping(p1, "r1", &g1), "both ways: red reaches green");

    // podman rm releases the address (CNI DEL), and the next container may take it.
    p1.podman_ok(&["rm", "-f", "-t", "0", "r1"]).unwrap();
    assert!(!endpoint_addresses(&c, "red").contains(&r1), "{r1} still allocated after podman rm");
    run(p1, "r3", "red", &[]);
    assert_eq!(podman_ip(p1, "r3", "red"), r1, "the released address is reused");
    assert!(ping(p1, "r3", &r2));
    drop(podmans);
    assert!(endpoint_addresses(&c, "red").is_empty(), "podman rm -a left endpoints: {:?}", endpoint_addresses(&c, "red"));
}

/// What `url` answers from `host`'s namespace; `None` when nothing does.
fn http(c: &Cluster, host: &str, url: &str) -> Option<String> {
    let out = tessera_testkit::exec_in(c.host_netns(host).unwrap(), "curl", ["-s", "-g", "-m", "2", url]).expect("curl");
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A fabric of `hosts` with network `red` on `subnet`, and on h1 the plugin
/// and its configuration put in place by `tessera cni install` with
/// `install` (more options), and Podman using it.
fn podman_on_h1(tag: &str, hosts: &[&str], subnet: &str, install: &[&str]) -> (tempfile::TempDir, Cluster, Podman) {
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("{tag}{}", std::process::id() % 100_000);
    let c = Cluster::start(ClusterSpec::new(&prefix, hosts, env!("CARGO_BIN_EXE_tessera"), dir.path().join("run")))
        .unwrap_or_else(|e| panic!("cannot start a Tessera fabric: {e:#}"));
    c.cli_ok(&["network", "add", "red", "--subnet", subnet]).unwrap();
    let (bin_dir, conf_dir) = (dir.path().join("cni-bin"), dir.path().join("h1").join("net.d"));
    let sock = c.agent_socket("h1").display().to_string();
    let mut args = vec!["cni", "install", "--network", "red", "--socket", &sock];
    let (b, d) = (bin_dir.to_str().unwrap(), conf_dir.to_str().unwrap());
    args.extend_from_slice(&["--bin-dir", b, "--conf-dir", d]);
    args.extend_from_slice(install);
    let out = c.tessera_on("h1", &args, &[]).unwrap();
    assert!(out.status.success(), "tessera cni install: {}", String::from_utf8_lossy(&out.stderr));
    let p = Podman::start(
        c.host_netns("h1").unwrap(),
        &dir.path().join("h1").join("podman"),
        &[bin_dir.clone(), PathBuf::from(REFERENCE_PLUGINS)],
        &conf_dir,
    )
    .unwrap_or_else(|e| panic!("cannot prepare podman: {e:#}"));
    (dir, c, p)
}

#[test]
fn privileged_podman_run_p_publishes_a_port_through_tessera() {
    let (_dir, c, p) = podman_on_h1("tpp", &["h1", "h2"], "10.65.0.0/24", &[]);
    let sock = c.agent_socket("h1").display().to_string();
    let refused = c
        .tessera_on(
            "h1",
            &["cni", "install", "--network", "red", "--socket", &sock, "--chain", "portmap", "--conf-dir", "/nonexistent"],
            &[],
        )
        .unwrap();
    assert!(!refused.status.success(), "portmap would translate Tessera's ports a second time");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("publishes ports itself"));
    let script = "mkdir -p /www && echo web > /www/who && exec httpd -f -p 80 -h /www";
    p.podman_ok(&["run", "-d", "--name", "web", "--network", "red", "-p", "8080:80", BUSYBOX_IMAGE, "sh", "-c", script])
        .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs_tail(20)));
    let h1 = c.underlay_ip("h1").unwrap().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while http(&c, "h2", &format!("http://{h1}:8080/who")).as_deref() != Some("web") {
        assert!(std::time::Instant::now() < deadline, "podman -p 8080:80 is not reached from another host\n{}", c.logs_tail(20));
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(http(&c, "h1", &format!("http://{h1}:8080/who")).as_deref(), Some("web"), "from the host itself");
    p.podman_ok(&["rm", "-f", "-t", "0", "web"]).unwrap();
    assert_eq!(http(&c, "h2", &format!("http://{h1}:8080/who")), None, "podman rm withdraws the port");
}

#[test]
fn privileged_podman_container_gets_its_address_by_dhcp() {
    let (_dir, c, p) = podman_on_h1("tpd", &["h1"], "10.68.0.0/24", &["--dhcp"]);
    // The container's own client asks; the address it gets is the one Tessera allocated.
    let script = "ip -4 addr show eth0 | grep -c 'inet ' ; udhcpc -i eth0 -n -q -t 5 -T 1 -s /bin/true 2>&1";
    let out = p
        .podman_ok(&["run", "--rm", "--name", "d1", "--network", "red", BUSYBOX_IMAGE, "sh", "-c", script])
        .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs_tail(20)));
    let allocated = endpoint_addresses(&c, "red");
    assert!(out.lines().next() == Some("0"), "with dhcp Tessera writes no address: {out}");
    assert!(out.contains("lease of 10.68.0.") && out.contains("obtained"), "udhcpc: {out}");
    assert!(allocated.is_empty(), "podman run --rm released the address: {allocated:?}");
    let leased = out.split("lease of ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or_default().to_string();
    assert!(leased.starts_with("10.68.0."), "{out}");
}
