//! Privileged tier: bad input to the Tessera Docker plugin shows its reason
//! in the docker command's error output, and nothing half-made stays in
//! Tessera or in Docker; `docker network rm` of a network in use is refused
//! and Tessera keeps the network.

mod privileged_docker_support;

use std::time::Duration;

use privileged_docker_support::*;
use tessera_testkit::docker::BUSYBOX_IMAGE;

/// Nothing of a refused network: not in either dockerd, not in Tessera.
#[track_caller]
fn assert_nothing_made(f: &Fabric, name: &str) {
    assert!(!network_names(&f.d1).contains(name), "{name} left in host 1's Docker");
    assert!(!network_names(&f.d2).contains(name), "{name} left in host 2's Docker");
    assert!(!f.tessera_has(name), "{name} left in Tessera");
}

#[test]
fn privileged_bad_network_input_is_refused_with_its_reason_and_nothing_is_made() {
    let f = Fabric::start();
    let create = |name: &str, extra: &[&str]| {
        let mut args = vec!["network", "create", "-d", "tessera", "--ipam-driver", "tessera"];
        args.extend_from_slice(extra);
        args.push(name);
        fails(&f.d1, &args)
    };

    let err = create("opt", &["--subnet", "10.70.0.0/24", "-o", "colour=red"]);
    assert!(err.contains("option colour") && err.contains("unknown option"), "{err}");
    assert_nothing_made(&f, "opt");

    let err = create("badrt", &["--subnet", "10.70.1.0/24", "--label", "rt=64512:100,banana"]);
    assert!(err.contains("label rt") && err.contains("banana"), "{err}");
    assert_nothing_made(&f, "badrt");

    let err = create("badvni", &["--subnet", "10.70.2.0/24", "-o", "vni=99999999"]);
    assert!(err.contains("option vni"), "{err}");
    assert_nothing_made(&f, "badvni");

    // (Docker refuses this one itself, before asking the plugin.)
    let err = create("overlap", &["--subnet", "10.71.0.0/16", "--subnet", "10.71.5.0/24"]);
    assert!(err.contains("overlapping subnet"), "{err}");
    assert_nothing_made(&f, "overlap");

    let err = create("nosubnet", &[]);
    assert!(err.contains("--subnet"), "{err}");
    assert_nothing_made(&f, "nosubnet");

    // A subnet this host's Docker already uses in another network.
    create_network(&f.d1, "first", &["--subnet", "10.72.0.0/24"]);
    let err = create("second", &["--subnet", "10.72.0.0/25"]);
    assert!(err.contains("overlaps 10.72.0.0/24 of Docker network first"), "{err}");
    assert_nothing_made(&f, "second");

    // Good input still works afterwards, and the refused names are free.
    create_network(&f.d1, "badrt", &["--subnet", "10.70.1.0/24", "--label", "rt=64512:300"]);
    assert_eq!(f.show("badrt")["network"]["import_targets"], serde_json::json!(["target:64512:300"]));
}

#[test]
fn privileged_an_exhausted_pool_is_reported_by_docker_run_and_nothing_leaks() {
    let f = Fabric::start();
    // A /29: .1 is the gateway, .2 to .6 are the five addresses to hand out.
    create_network(&f.d1, "tiny", &["--subnet", "10.73.0.0/29"]);
    for i in 0..5 {
        run(&f.d1, &format!("t{i}"), &["--net", "tiny"]);
    }
    let err = fails(&f.d1, &["run", "-d", "--name", "t5", "--net", "tiny", BUSYBOX_IMAGE, "sleep", "60"]);
    assert!(err.contains("no free address left in 10.73.0.0/29"), "{err}");
    assert_eq!(f.show("tiny")["endpoints"].as_array().unwrap().len(), 5);
    assert_eq!(f.allocated("tiny"), 5, "the failed run took no address");
    assert!(f.reservations("tiny").is_empty(), "{:?}", f.reservations("tiny"));
    assert_agree(&f, "tiny");
    // The refused container exists in Docker (created, never started) with no network.
    ok(&f.d1, &["rm", "-f", "t5", "t0"]);
    run(&f.d1, "t6", &["--net", "tiny"]);
    assert_eq!(f.allocated("tiny"), 5);
}

#[test]
fn privileged_a_network_in_use_cannot_be_removed_and_removal_propagates_when_free() {
    let f = Fabric::start();
    create_network(&f.d1, "busy", &["--subnet", "10.74.0.0/24"]);
    wait_for("busy on host 2", Duration::from_secs(30), || network_names(&f.d2).contains("busy"));
    run(&f.d1, "b1", &["--net", "busy"]);

    // Docker itself refuses on the host with the container; Tessera keeps the network.
    let err = fails(&f.d1, &["network", "rm", "busy"]);
    assert!(err.contains("active endpoints"), "{err}");
    assert!(f.tessera_has("busy"));

    // On the other host, Docker has nothing attached, so the plugin (its authz hook) refuses for the fabric.
    let err = fails(&f.d2, &["network", "rm", "busy"]);
    assert!(err.contains("network busy is in use") && err.contains("h1"), "{err}");
    assert!(f.tessera_has("busy"));
    assert!(network_names(&f.d2).contains("busy"), "host 2 keeps the network");

    // Once free, removing it anywhere removes it everywhere.
    ok(&f.d1, &["rm", "-f", "b1"]);
    ok(&f.d2, &["network", "rm", "busy"]);
    assert!(!f.tessera_has("busy"));
    wait_for("busy gone from host 1's Docker", Duration::from_secs(30), || !network_names(&f.d1).contains("busy"));

    // Deleting the Tessera network (here through the CLI) removes it from Docker too.
    create_network(&f.d1, "gone", &["--subnet", "10.75.0.0/24"]);
    wait_for("gone on host 2", Duration::from_secs(30), || network_names(&f.d2).contains("gone"));
    f.c.cli_ok(&["network", "delete", "gone"]).unwrap();
    wait_for("gone removed from both dockerds", Duration::from_secs(30), || {
        !network_names(&f.d1).contains("gone") && !network_names(&f.d2).contains("gone")
    });
}

#[test]
fn privileged_without_the_authz_hook_labels_are_read_after_creation_and_a_bad_one_is_reported_at_first_use() {
    let f = Fabric::start_with(false);
    // The driver protocol tells neither name nor labels: the plugin reads them from
    // Docker right after Docker made the network.
    create_network(&f.d1, "lazy", &["--subnet", "10.77.0.0/24", "--label", "rt=64512:77"]);
    wait_for("lazy in Tessera", Duration::from_secs(20), || f.tessera_has("lazy"));
    assert_eq!(f.show("lazy")["network"]["import_targets"], serde_json::json!(["target:64512:77"]));
    wait_for("lazy on host 2", Duration::from_secs(30), || network_names(&f.d2).contains("lazy"));
    run(&f.d1, "z1", &["--net", "lazy"]);
    run(&f.d2, "z2", &["--net", "lazy"]);
    let (z2, _) = container_ips(&f.d2, "z2", "lazy");
    assert!(reaches(&f.d1, "z1", &z2), "z1 -> z2\n{}", f.logs());

    // Options are still checked when the network is made.
    let err = fails(
        &f.d1,
        &[
            "network",
            "create",
            "-d",
            "tessera",
            "--ipam-driver",
            "tessera",
            "--subnet",
            "10.78.1.0/24",
            "-o",
            "colour=red",
            "opt",
        ],
    );
    assert!(err.contains("unknown option"), "{err}");
    assert_nothing_made(&f, "opt");

    // A bad label cannot be refused in time: Docker makes the network, Tessera does not,
    // and the first use says why.
    create_network(&f.d1, "badrt", &["--subnet", "10.78.0.0/24", "--label", "rt=banana"]);
    let err = fails(&f.d1, &["run", "-d", "--name", "z3", "--net", "badrt", BUSYBOX_IMAGE, "sleep", "60"]);
    assert!(err.contains("label rt") && err.contains("banana"), "{err}");
    assert!(!f.tessera_has("badrt"));
    ok(&f.d1, &["rm", "-f", "z3"]);
    ok(&f.d1, &["network", "rm", "badrt"]);
    assert_nothing_made(&f, "badrt");
}
