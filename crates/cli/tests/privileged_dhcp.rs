//! Privileged tier: the agent's DHCPv4 server with a real client. A
//! namespace attached with `--dhcp` gets only its link from Tessera; busybox
//! `udhcpc` in it then gets the endpoint's address, gateway, DNS servers,
//! MTU and classless routes from its host's agent, and reaches a container
//! on another host; a client that stays sees a change of the network's DNS
//! servers at its next renewal; ISC dhclient does the same. A client of
//! another network gets that network's address, never this one's. An
//! IPv6-only client gets its address by DHCPv6 (`dhclient -6`) and its
//! default route from the bridge's router advertisements. Needs root; fails with the reason when it
//! cannot run.

use std::path::Path;

use tessera_testkit::{addresses, exec_in, Cluster};

/// The client's hook: records what it was given, then configures the
/// interface as a DHCP client's script does.
const SCRIPT: &str = r#"#!/bin/sh
env > "$(dirname "$0")/$1.env"
case "$1" in
  bound|renew)
    ip addr flush dev "$interface" scope global
    ip addr add "$ip/$mask" dev "$interface"
    [ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
    set -- $staticroutes
    while [ $# -ge 2 ]; do ip route replace "$1" via "$2" dev "$interface"; shift 2; done
    ;;
esac
"#;

/// ISC dhclient's hook: records each event, configures on BOUND.
const DHCLIENT_SCRIPT: &str = r#"#!/bin/sh
env > "$(dirname "$0")/$reason.env"
case "$reason" in
  PREINIT) ip link set "$interface" up ;;
  BOUND|RENEW|REBIND|REBOOT)
    ip addr add "$new_ip_address/$new_subnet_mask" dev "$interface"
    for r in $new_routers; do ip route replace default via "$r" dev "$interface"; break; done
    ;;
esac
exit 0
"#;

fn udhcpc(c: &Cluster, dir: &Path, container: &str) -> std::collections::BTreeMap<String, String> {
    let d = dir.join(format!("dhcp-{container}"));
    std::fs::create_dir_all(&d).unwrap();
    let script = d.join("hook");
    std::fs::write(&script, SCRIPT).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let s = script.display().to_string();
    let out = exec_in(
        c.netns_of(container).unwrap(),
        "busybox",
        ["udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "5", "-T", "1", "-s", &s],
    )
    .expect("busybox udhcpc");
    assert!(out.status.success(), "udhcpc in {container}: {}\n{}", String::from_utf8_lossy(&out.stderr), c.logs_tail(20));
    let env = std::fs::read_to_string(d.join("bound.env")).expect("udhcpc bound a lease");
    env.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn wait_for_file(p: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !p.exists() {
        assert!(std::time::Instant::now() < deadline, "{} never appeared", p.display());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn privileged_a_dhcp_client_configures_itself_from_the_agent() {
    let (mut c, run) = tessera_testkit::start_cluster("tdh", &["h1", "h2"], env!("CARGO_BIN_EXE_tessera"));
    c.cli_ok(&["network", "add", "red", "--subnet", "10.66.0.0/24", "--dns", "10.66.0.53"]).unwrap();
    c.cli_ok(&["network", "add", "green", "--subnet", "10.67.0.0/24"]).unwrap();
    c.container("h1", "c1").unwrap();
    c.container("h2", "c2").unwrap();
    c.container("h1", "g1").unwrap();
    let e1 = c.attach("c1", "red", &["--dhcp"]).unwrap();
    let a2 = addresses(&c.attach("c2", "red", &[]).unwrap());
    let eg = c.attach("g1", "green", &["--dhcp"]).unwrap();
    let inside =
        String::from_utf8_lossy(&exec_in(c.netns_of("c1").unwrap(), "ip", ["-4", "addr", "show", "eth0"]).unwrap().stdout)
            .into_owned();
    assert!(!inside.contains("10.66.0."), "with --dhcp Tessera writes no address: {inside}");

    let lease = udhcpc(&c, run.dir.path(), "c1");
    assert_eq!(lease["ip"], addresses(&e1)[0], "the endpoint's allocated address: {lease:?}");
    assert_eq!(lease["router"], "10.66.0.1");
    assert_eq!(lease["dns"].trim(), "10.66.0.53");
    assert_eq!(lease["mtu"], "1450", "the overlay MTU");
    assert!(lease["staticroutes"].contains("0.0.0.0/0 10.66.0.1"), "{lease:?}");
    assert_eq!(lease["serverid"], "10.66.0.1");
    assert_eq!(c.ping("c1", &a2[0], 2).unwrap(), 2, "the client reaches a container on another host");
    // The port's row of the interface table counts the exchange.
    let sock = c.agent_socket("h1").display().to_string();
    let vifs = c.tessera_on("h1", &["vif", "list", "--socket", &sock, "--json"], &[]).unwrap();
    let vifs: serde_json::Value = serde_json::from_slice(&vifs.stdout).unwrap();
    let port = tessera_model::names::host_veth_name(e1["id"].as_str().unwrap().parse().unwrap());
    let row = vifs.as_array().unwrap().iter().find(|v| v["name"] == port.as_str()).expect("c1's port");
    assert!(row["dhcp"]["requests"].as_u64() >= Some(2) && row["dhcp"]["acks"].as_u64() >= Some(1), "{row}");

    // A client that stays renews, and sees a change of the network's DNS.
    let d = run.dir.path().join("dhcp-c1");
    let _ = std::fs::remove_file(d.join("bound.env"));
    let hook = d.join("hook").display().to_string();
    let mut cmd = std::process::Command::new("busybox");
    cmd.args(["udhcpc", "-i", "eth0", "-f", "-t", "5", "-T", "1", "-s", &hook]);
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let mut client = c.fabric.spawn_in_netns(c.netns_of("c1").unwrap(), cmd).expect("busybox udhcpc");
    wait_for_file(&d.join("bound.env"));
    c.cli_ok(&["network", "update", "red", "--dns", "10.66.0.54"]).unwrap();
    let renewed = d.join("renew.env");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(client.id() as i32), nix::sys::signal::Signal::SIGUSR1);
        std::thread::sleep(std::time::Duration::from_millis(500));
        let env = std::fs::read_to_string(&renewed).unwrap_or_default();
        if env.lines().any(|l| l == "dns=10.66.0.54" || l == "dns=10.66.0.54 ") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the renewal never brought the new DNS server: {env}");
    }
    let _ = client.kill();
    let _ = client.wait();

    // ISC dhclient, on the other host.
    c.container("h2", "c4").unwrap();
    let e4 = c.attach("c4", "red", &["--dhcp"]).unwrap();
    let dir4 = run.dir.path().join("dhclient-c4");
    std::fs::create_dir_all(&dir4).unwrap();
    let hook4 = dir4.join("hook");
    std::fs::write(&hook4, DHCLIENT_SCRIPT).unwrap();
    std::fs::set_permissions(&hook4, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (h, lf, pf) =
        (hook4.display().to_string(), dir4.join("leases").display().to_string(), dir4.join("pid").display().to_string());
    let out = exec_in(c.netns_of("c4").unwrap(), "dhclient", ["-1", "-sf", &h, "-lf", &lf, "-pf", &pf, "eth0"])
        .expect("dhclient (install isc-dhcp-client)");
    assert!(out.status.success(), "dhclient: {}", String::from_utf8_lossy(&out.stderr));
    let bound = std::fs::read_to_string(dir4.join("BOUND.env")).expect("dhclient bound a lease");
    let env: std::collections::BTreeMap<&str, &str> = bound.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(env["new_ip_address"], addresses(&e4)[0], "{bound}");
    assert_eq!(env["new_routers"], "10.66.0.1");
    assert_eq!(env["new_domain_name_servers"], "10.66.0.54");
    assert_eq!(env["new_interface_mtu"], "1450");
    let _ = exec_in(c.netns_of("c4").unwrap(), "dhclient", ["-x", "-sf", &h, "-lf", &lf, "-pf", &pf, "eth0"]);
    assert_eq!(c.ping("c4", &a2[0], 2).unwrap(), 2, "dhclient's container reaches another");

    let green = udhcpc(&c, run.dir.path(), "g1");
    assert_eq!(green["ip"], addresses(&eg)[0], "green's client gets green's address: {green:?}");
    assert!(green["ip"].starts_with("10.67.0."));
}

/// ISC dhclient's hook for IPv6: records each event, configures on BOUND6.
const DHCLIENT6_SCRIPT: &str = r#"#!/bin/sh
env > "$(dirname "$0")/$reason.env"
case "$reason" in
  PREINIT6) ip link set "$interface" up ;;
  BOUND6|RENEW6|REBIND6) ip -6 addr add "$new_ip6_address/$new_ip6_prefixlen" dev "$interface" nodad ;;
esac
exit 0
"#;

#[test]
fn privileged_an_ipv6_client_configures_itself_by_router_advertisement_and_dhcpv6() {
    let (mut c, run) = tessera_testkit::start_cluster("tdv", &["h1", "h2"], env!("CARGO_BIN_EXE_tessera"));
    c.cli_ok(&["network", "add", "six", "--subnet", "fd00:69::/64", "--dns", "fd00:69::53"]).unwrap();
    c.container("h1", "c5").unwrap();
    c.container("h2", "c6").unwrap();
    let e5 = c.attach("c5", "six", &["--dhcp"]).unwrap();
    let a6 = addresses(&c.attach("c6", "six", &[]).unwrap());
    let d = run.dir.path().join("dhclient6");
    std::fs::create_dir_all(&d).unwrap();
    let hook = d.join("hook");
    std::fs::write(&hook, DHCLIENT6_SCRIPT).unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (h, lf, pf) = (hook.display().to_string(), d.join("leases").display().to_string(), d.join("pid").display().to_string());
    // A DHCPv6 client speaks from its link-local address, once that has
    // passed duplicate address detection.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let ll = exec_in(c.netns_of("c5").unwrap(), "ip", ["-6", "addr", "show", "dev", "eth0", "scope", "link"]).unwrap();
        let text = String::from_utf8_lossy(&ll.stdout).into_owned();
        if text.contains("fe80::") && !text.contains("tentative") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no usable link-local address: {text}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let out = exec_in(c.netns_of("c5").unwrap(), "dhclient", ["-6", "-1", "-sf", &h, "-lf", &lf, "-pf", &pf, "eth0"])
        .expect("dhclient");
    assert!(out.status.success(), "dhclient -6: {}\n{}", String::from_utf8_lossy(&out.stderr), c.logs_tail(20));
    let bound = std::fs::read_to_string(d.join("BOUND6.env")).expect("dhclient -6 bound a lease");
    let env: std::collections::BTreeMap<&str, &str> = bound.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(env["new_ip6_address"], addresses(&e5)[0], "{bound}");
    assert_eq!(env["new_dhcp6_name_servers"], "fd00:69::53", "{bound}");
    let _ = exec_in(c.netns_of("c5").unwrap(), "dhclient", ["-6", "-x", "-sf", &h, "-lf", &lf, "-pf", &pf, "eth0"]);
    // The default route comes from the bridge's router advertisements.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let routes =
            String::from_utf8_lossy(&exec_in(c.netns_of("c5").unwrap(), "ip", ["-6", "route"]).unwrap().stdout).into_owned();
        if routes.contains("default via fe80::") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no default route from router advertisements: {routes}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert_eq!(c.ping("c5", &a6[0], 2).unwrap(), 2, "the IPv6-only client reaches a container on another host");
}

/// A DHCP DISCOVER for `chaddr` with transaction `xid`.
fn discover(chaddr: [u8; 6], xid: u32) -> Vec<u8> {
    let mut m = vec![0u8; 240];
    m[0] = 1;
    m[1] = 1;
    m[2] = 6;
    m[4..8].copy_from_slice(&xid.to_be_bytes());
    m[28..34].copy_from_slice(&chaddr);
    m[236..240].copy_from_slice(&[99, 130, 83, 99]);
    m.extend_from_slice(&[53, 1, 1, 255]);
    m
}

/// Whether an answer to `xid` arrives on `socket` within a second.
fn answered(socket: &std::net::UdpSocket, xid: u32) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    let mut buf = [0u8; 1500];
    while std::time::Instant::now() < deadline {
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            if n > 8 && buf[0] == 2 && buf[4..8] == xid.to_be_bytes() {
                return true;
            }
        }
    }
    false
}

#[test]
fn privileged_only_the_endpoint_s_own_mac_is_answered_and_a_flood_is_limited() {
    let (mut c, _run) = tessera_testkit::start_cluster("tdf", &["h1"], env!("CARGO_BIN_EXE_tessera"));
    c.cli_ok(&["network", "add", "red", "--subnet", "10.70.0.0/24", "--domain", "red.example"]).unwrap();
    c.container("h1", "c1").unwrap();
    let ep = c.attach("c1", "red", &[]).unwrap();
    let mac: Vec<u8> = ep["mac"].as_str().unwrap().split(':').map(|h| u8::from_str_radix(h, 16).unwrap()).collect();
    let own: [u8; 6] = mac.try_into().unwrap();
    let (foreign, mine) = tessera_fabric::run_in(c.netns_of("c1").unwrap(), move || {
        let s = std::net::UdpSocket::bind(("0.0.0.0", 68)).unwrap();
        s.set_broadcast(true).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_millis(100))).unwrap();
        let ask = |chaddr, xid| {
            s.send_to(&discover(chaddr, xid), ("255.255.255.255", 67)).unwrap();
            answered(&s, xid)
        };
        // The server may start listening just after the attach answers.
        let mut mine = false;
        for xid in 1..20 {
            if ask(own, xid) {
                mine = true;
                break;
            }
        }
        let foreign = ask([2, 0xde, 0xad, 0xbe, 0xef, 1], 100);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        // A thousand DISCOVERs a second, for a second: fifty are answered.
        let start = std::time::Instant::now();
        for (i, xid) in (1000..2000).enumerate() {
            let _ = s.send_to(&discover(own, xid), ("255.255.255.255", 67));
            if let Some(wait) = std::time::Duration::from_millis(i as u64 + 1).checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        (foreign, mine)
    })
    .unwrap();
    assert!(mine, "the endpoint's own MAC gets an offer");
    assert!(!foreign, "a foreign MAC gets no offer");
    let sock = c.agent_socket("h1").display().to_string();
    let port = tessera_model::names::host_veth_name(ep["id"].as_str().unwrap().parse().unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let vifs = c.tessera_on("h1", &["vif", "list", "--socket", &sock, "--json"], &[]).unwrap();
        let vifs: serde_json::Value = serde_json::from_slice(&vifs.stdout).unwrap();
        let row = vifs.as_array().unwrap().iter().find(|v| v["name"] == port.as_str()).cloned().unwrap();
        let (requests, ignored) = (row["dhcp"]["requests"].as_u64().unwrap_or(0), row["dhcp"]["ignored"].as_u64().unwrap_or(0));
        if requests >= 900 {
            // At most fifty a second are answered: this second's, the last's, and the first lease's.
            assert!(requests - ignored <= 120, "the flood was answered: {row}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the flood was not limited and counted: {row}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
