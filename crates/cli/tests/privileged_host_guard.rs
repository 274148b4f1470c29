//! Privileged tier: the host's own guard. VXLAN from an address on the
//! underlay that is not a host of the fabric reaches no container, and a
//! container cannot reach its host's services (the controller's port) nor
//! any address of its host, while IPv6 neighbour discovery with the gateway
//! works and the network carries traffic across hosts. Needs root;
//! fails with the reason when it cannot run.

use std::thread;
use std::time::Duration;

use tessera_testkit::intruder::{guard_drops, Intruder};
use tessera_testkit::{addresses, exec_in, nft_counted, Cluster, CONTROLLER_PORT};

fn cluster(hosts: &[&str]) -> (Cluster, tessera_testkit::TestRun) {
    tessera_testkit::start_cluster("thg", hosts, env!("CARGO_BIN_EXE_tessera"))
}

/// Starts tcpdump for ICMP on the container's `eth0`; the caller sends, then
/// [`captured`] says whether anything arrived.
fn watch_icmp(c: &Cluster, container: &str) -> std::process::Child {
    let mut cmd = std::process::Command::new("tcpdump");
    cmd.args(["-n", "-i", "eth0", "-c", "1", "icmp"]).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null());
    let dump = c.fabric.spawn_in_netns(c.netns_of(container).unwrap(), cmd).expect("run tcpdump (install tcpdump)");
    thread::sleep(Duration::from_millis(500));
    dump
}

fn captured(mut dump: std::process::Child) -> Option<String> {
    thread::sleep(Duration::from_millis(300));
    let done = dump.try_wait().unwrap().is_some();
    let _ = dump.kill();
    let out = dump.wait_with_output().unwrap();
    done.then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn privileged_vxlan_from_an_address_outside_the_fabric_reaches_no_container() {
    let (mut c, _dir) = cluster(&["h1", "h2"]);
    c.cli_ok(&["network", "add", "blue", "--subnet", "10.61.0.0/24", "--vni", "6100"]).unwrap();
    c.container("h1", "c1").unwrap();
    c.container("h2", "c2").unwrap();
    let a1 = addresses(&c.attach("c1", "blue", &[]).unwrap());
    let a2 = addresses(&c.attach("c2", "blue", &[]).unwrap());
    assert_eq!(c.ping("c2", &a1[0], 2).unwrap(), 2, "the fabric's own hosts carry the network");

    // An intruder on the underlay (the underlay's own namespace, with an
    // address no host registered) speaks VXLAN with the network's VNI to h1,
    // addressed exactly as a host would (h1's VTEP MAC), from an address of
    // the network's subnet: on the networks' VXLAN port and on the fast
    // path's (whose packets a host hands to the network's tunnel when it
    // does not carry their flow).
    for port in [4789, 4799] {
        let intruder = Intruder::new(&c, "h1", port, 6100, "10.61.0.250", &[&a1[0]]);
        let before = guard_drops(&c, "h1");
        let dump = watch_icmp(&c, "c1");
        let _ = intruder.exec("ping", &["-c", "3", "-i", "0.2", "-W", "1", &a1[0]]);
        let got = captured(dump);
        assert_eq!(got, None, "a packet injected on the underlay (port {port}) reached c1");
        let after = guard_drops(&c, "h1");
        assert!(
            after >= before + 3,
            "h1 did not see (and drop) the intruder's VXLAN on port {port}: {before} then {after} packets counted"
        );
    }

    // The fabric's own traffic is untouched.
    assert_eq!(c.ping("c1", &a2[0], 2).unwrap(), 2, "c1 still reaches c2 across hosts");
}

/// `true` when a TCP connection from the container to `ip:port` is accepted
/// within two seconds.
fn tcp_connects(c: &Cluster, container: &str, ip: &str, port: u16) -> bool {
    let script = format!("exec 3<>/dev/tcp/{ip}/{port}");
    let out = c.exec(container, "timeout", &["2", "bash", "-c", &script]).expect("bash and timeout");
    out.status.success()
}

#[test]
fn privileged_a_container_cannot_reach_its_host_but_its_network_works() {
    let (mut c, _dir) = cluster(&["h1", "h2"]);
    c.cli_ok(&["network", "add", "red", "--subnet", "10.62.0.0/24", "--subnet", "fd00:62::/64"]).unwrap();
    let controller_host = c.controller_host().to_string();
    let other = if controller_host == "h1" { "h2" } else { "h1" };
    c.container(&controller_host, "near").unwrap();
    c.container(other, "far").unwrap();
    let near = addresses(&c.attach("near", "red", &[]).unwrap());
    let far = addresses(&c.attach("far", "red", &[]).unwrap());
    let host_ip = c.underlay_ip(&controller_host).unwrap().to_string();

    // The controller answers on the underlay (from the host itself) ...
    let probe = format!("exec 3<>/dev/tcp/{host_ip}/{CONTROLLER_PORT}");
    let from_host = exec_in(c.host_netns(&controller_host).unwrap(), "bash", ["-c", &probe]).unwrap();
    assert!(from_host.status.success(), "the controller is not listening on {host_ip}:{CONTROLLER_PORT}");
    // ... but not to a container of that host, nor to one of another host.
    let before = nft_counted(&c, &controller_host, "from_overlay", "towards the host itself");
    assert!(!tcp_connects(&c, "near", &host_ip, CONTROLLER_PORT), "a container reached the controller on its host");
    assert!(!tcp_connects(&c, "far", &host_ip, CONTROLLER_PORT), "a container reached the controller on another host");
    assert!(
        !tcp_connects(&c, "near", "10.62.0.1", CONTROLLER_PORT),
        "a container reached the controller through its gateway address"
    );
    let after = nft_counted(&c, &controller_host, "from_overlay", "towards the host itself");
    assert!(after > before, "the host's guard counted nothing: {before} then {after}");
    assert_eq!(c.ping("near", &host_ip, 1).unwrap(), 0, "a container pinged its host's underlay address");
    let before = nft_counted(&c, &controller_host, "from_overlay", "towards the host itself");
    assert_eq!(c.ping("near", "10.62.0.1", 1).unwrap(), 0, "a container pinged its gateway address");
    assert!(
        nft_counted(&c, &controller_host, "from_overlay", "towards the host itself") > before,
        "the guard did not count the ping"
    );

    // What a container may still do: reach its network across hosts, over
    // IPv6 too (neighbour discovery with the gateway passes the guard).
    assert_eq!(c.ping("near", &far[0], 2).unwrap(), 2);
    assert_eq!(c.ping("far", &near[1], 2).unwrap(), 2);
}
