//! Privileged tier: Tessera as Docker's network and IPAM driver, against real
//! dockerds (Debian's docker.io), two hosts, one plugin per host: the seed's
//! steps 1–10, several networks per container, static addresses.
//!
//! Each host of the fabric runs its agent, `tessera docker-plugin` and a
//! dockerd with its own data root, exec root, socket and plugin directory
//! (a private mount namespace), using the plugin as its authz hook and with
//! live restore. Containers are busybox, imported (no registry is reachable).

mod privileged_docker_support;

use std::collections::BTreeSet;
use std::time::Duration;

use privileged_docker_support::*;

const NET4: &[&str] = &["--subnet", "192.168.4.0/24", "--subnet", "2002:1::/64", "--ipv6", "--label", "rt=64512:100,64512:200"];

#[test]
fn privileged_seed_steps_create_inspect_run_and_ping_across_two_hosts() {
    let f = Fabric::start();
    // 1. Create the network on host 1.
    let id = create_network(&f.d1, "net4", NET4);
    assert_eq!(id.len(), 64, "docker network create prints the network ID: {id}");

    // 2./3. Docker's view and Tessera's view agree.
    let d = inspect(&f.d1, "network", "net4");
    assert_eq!((d["Driver"].as_str(), d["IPAM"]["Driver"].as_str()), (Some("tessera"), Some("tessera")));
    assert_eq!(d["Labels"]["rt"], "64512:100,64512:200");
    let t = f.show("net4");
    let tessera_subnets: BTreeSet<(String, String)> = t["network"]["subnets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["cidr"].as_str().unwrap().to_string(), s["gateway"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(
        tessera_subnets,
        BTreeSet::from([("192.168.4.0/24".into(), "192.168.4.1".into()), ("2002:1::/64".into(), "2002:1::1".into())])
    );
    // Docker shows the subnets (and a gateway only where --gateway named one).
    assert_eq!(docker_subnets(&d), tessera_subnets.iter().map(|(s, _)| (s.clone(), None)).collect());
    for side in ["import_targets", "export_targets"] {
        assert_eq!(t["network"][side], serde_json::json!(["target:64512:100", "target:64512:200"]), "{side}");
    }
    assert_eq!(t["network"]["labels"]["docker"], "true");

    // 7. The network appears on host 2 with no manual step.
    wait_for("net4 in host 2's docker network ls", Duration::from_secs(30), || network_names(&f.d2).contains("net4"));
    let d2 = inspect(&f.d2, "network", "net4");
    assert_eq!(d2["Driver"], "tessera");
    assert_eq!(d2["Labels"]["rt"], "64512:100,64512:200");
    // Host 2's network was made from Tessera's, gateways included.
    assert_eq!(docker_subnets(&d2), tessera_subnets.iter().map(|(s, g)| (s.clone(), Some(g.clone()))).collect());

    // 4./8. A container on each host.
    run(&f.d1, "ub1", &["--net", "net4"]);
    run(&f.d2, "ub2", &["--net", "net4"]);

    // 9. Their addresses, from Tessera's IPAM.
    let (ub1_v4, ub1_v6) = container_ips(&f.d1, "ub1", "net4");
    let (ub2_v4, ub2_v6) = container_ips(&f.d2, "ub2", "net4");
    for a in [&ub1_v4, &ub2_v4] {
        assert!(a.starts_with("192.168.4."), "{a}");
    }
    for a in [&ub1_v6, &ub2_v6] {
        assert!(a.starts_with("2002:1::"), "{a}");
    }
    assert_ne!(ub1_v4, ub2_v4);
    let c1 = inspect(&f.d1, "container", "ub1");
    assert_eq!(c1["NetworkSettings"]["Networks"]["net4"]["Gateway"], "192.168.4.1");
    assert_eq!(c1["NetworkSettings"]["Networks"]["net4"]["IPv6Gateway"], "2002:1::1");

    // Inside the container: the address, the routes via the gateways, the overlay MTU.
    let addr = ok(&f.d1, &["exec", "ub1", "ip", "addr", "show", "eth0"]);
    assert!(addr.contains(&format!("{ub1_v4}/24")) && addr.contains(&format!("{ub1_v6}/64")), "{addr}");
    assert!(addr.contains("mtu 1450"), "{addr}");
    let routes = ok(&f.d1, &["exec", "ub1", "ip", "route"]);
    assert!(routes.contains("default via 192.168.4.1"), "{routes}");
    let routes6 = ok(&f.d1, &["exec", "ub1", "ip", "-6", "route"]);
    assert!(routes6.contains("default via 2002:1::1"), "{routes6}");

    // 5. docker network inspect and tessera network show agree on the attached containers.
    assert_agree(&f, "net4");
    assert_eq!(f.show("net4")["endpoints"].as_array().unwrap().len(), 2);

    // 10. They ping each other, IPv4 and IPv6.
    assert!(reaches(&f.d1, "ub1", &ub2_v4), "ub1 -> ub2 {ub2_v4}\n{}", f.logs());
    assert!(ping(&f.d2, "ub2", &ub1_v4), "ub2 -> ub1 {ub1_v4}");
    assert!(reaches(&f.d1, "ub1", &ub2_v6), "ub1 -> ub2 {ub2_v6}\n{}", f.logs());
    assert!(ping(&f.d2, "ub2", &ub1_v6), "ub2 -> ub1 {ub1_v6}");

    // Removing the containers leaves nothing behind.
    ok(&f.d1, &["rm", "-f", "ub1"]);
    ok(&f.d2, &["rm", "-f", "ub2"]);
    assert!(f.show("net4")["endpoints"].as_array().unwrap().is_empty());
    wait_no_reservations(&f, "net4");
    assert_eq!(f.allocated("net4"), 0, "no address leaked");
}

#[test]
fn privileged_a_container_connects_to_and_disconnects_from_a_second_network() {
    let f = Fabric::start();
    create_network(&f.d1, "front", &["--subnet", "10.61.0.0/24"]);
    create_network(&f.d1, "back", &["--subnet", "10.62.0.0/24", "--subnet", "fd62::/64", "--ipv6"]);
    wait_for("back on host 2", Duration::from_secs(30), || network_names(&f.d2).contains("back"));
    run(&f.d1, "web", &["--net", "front"]);
    run(&f.d2, "db", &["--net", "back"]);
    let (db_v4, db_v6) = container_ips(&f.d2, "db", "back");

    ok(&f.d1, &["network", "connect", "back", "web"]);
    let (web_back, _) = container_ips(&f.d1, "web", "back");
    assert!(web_back.starts_with("10.62.0."), "{web_back}");
    let links = ok(&f.d1, &["exec", "web", "ip", "-o", "addr"]);
    assert!(links.contains("eth0") && links.contains("eth1") && links.contains(&web_back), "{links}");
    assert!(reaches(&f.d1, "web", &db_v4), "web -> db over back\n{}", f.logs());
    assert!(reaches(&f.d1, "web", &db_v6), "web -> db over back (IPv6)\n{}", f.logs());
    assert_agree(&f, "back");
    assert_agree(&f, "front");

    ok(&f.d1, &["network", "disconnect", "back", "web"]);
    let links = ok(&f.d1, &["exec", "web", "ip", "-o", "link"]);
    assert!(!links.contains("eth1"), "eth1 left in the container: {links}");
    assert!(!ping(&f.d1, "web", &db_v4), "disconnected, web no longer reaches db");
    assert_agree(&f, "back");
    assert_eq!(f.show("back")["endpoints"].as_array().unwrap().len(), 1, "only db is left in back");

    // Connected again: a second interface again, and traffic.
    ok(&f.d1, &["network", "connect", "back", "web"]);
    assert!(reaches(&f.d1, "web", &db_v4), "reconnected web -> db\n{}", f.logs());
    assert_agree(&f, "back");
}

#[test]
fn privileged_static_addresses_and_gateways_are_honoured() {
    let f = Fabric::start();
    create_network(
        &f.d1,
        "fixed",
        &["--subnet", "10.63.0.0/24", "--gateway", "10.63.0.254", "--subnet", "fd63::/64", "--gateway", "fd63::fe", "--ipv6"],
    );
    let t = f.show("fixed");
    let gateways: BTreeSet<&str> =
        t["network"]["subnets"].as_array().unwrap().iter().map(|s| s["gateway"].as_str().unwrap()).collect();
    assert_eq!(gateways, BTreeSet::from(["10.63.0.254", "fd63::fe"]));
    assert_eq!(
        docker_subnets(&inspect(&f.d1, "network", "fixed")),
        BTreeSet::from([("10.63.0.0/24".into(), Some("10.63.0.254".into())), ("fd63::/64".into(), Some("fd63::fe".into()))])
    );

    run(&f.d1, "s1", &["--net", "fixed", "--ip", "10.63.0.77", "--ip6", "fd63::77"]);
    assert_eq!(container_ips(&f.d1, "s1", "fixed"), ("10.63.0.77".into(), "fd63::77".into()));
    let routes = ok(&f.d1, &["exec", "s1", "ip", "route"]);
    assert!(routes.contains("default via 10.63.0.254"), "{routes}");
    let ep = f.show("fixed")["endpoints"][0].clone();
    assert_eq!(ep["ips"], serde_json::json!(["10.63.0.77/24", "fd63::77/64"]));

    // The same address again is refused with the reason, and leaves nothing in Tessera.
    wait_for("fixed on host 2", Duration::from_secs(30), || network_names(&f.d2).contains("fixed"));
    let err = fails(
        &f.d2,
        &[
            "run",
            "-d",
            "--name",
            "s2",
            "--net",
            "fixed",
            "--ip",
            "10.63.0.77",
            tessera_testkit::docker::BUSYBOX_IMAGE,
            "sleep",
            "60",
        ],
    );
    assert!(err.contains("10.63.0.77 is already in use"), "{err}");
    assert_eq!(f.show("fixed")["endpoints"].as_array().unwrap().len(), 1);
    assert_eq!(f.allocated("fixed"), 2, "only s1's two addresses");

    // A static address survives a restart of its container (Docker asks for it again).
    ok(&f.d1, &["restart", "-t", "0", "s1"]);
    assert_eq!(container_ips(&f.d1, "s1", "fixed"), ("10.63.0.77".into(), "fd63::77".into()));
    assert_agree(&f, "fixed");
}

#[test]
fn privileged_a_restarted_container_keeps_its_address() {
    let f = Fabric::start();
    create_network(&f.d1, "keep", &["--subnet", "10.64.0.0/24"]);
    run(&f.d1, "k1", &["--net", "keep"]);
    run(&f.d1, "k2", &["--net", "keep"]);
    let (k1, _) = container_ips(&f.d1, "k1", "keep");
    let (k2, _) = container_ips(&f.d1, "k2", "keep");
    // A lower address becomes free: the lowest-free rule alone would hand it to k2.
    ok(&f.d1, &["rm", "-f", "k1"]);
    ok(&f.d1, &["restart", "-t", "0", "k2"]);
    assert_eq!(container_ips(&f.d1, "k2", "keep").0, k2, "k2 keeps {k2} (k1 had {k1})");
    ok(&f.d1, &["stop", "-t", "0", "k2"]);
    ok(&f.d1, &["start", "k2"]);
    assert_eq!(container_ips(&f.d1, "k2", "keep").0, k2, "stop and start keep it too");
    assert_agree(&f, "keep");
    ok(&f.d1, &["rm", "-f", "k2"]);
    wait_no_reservations(&f, "keep");
    assert_eq!(f.allocated("keep"), 0, "no address leaked");
}
