//! Privileged tier: restarting the Tessera Docker plugin, the agent or
//! dockerd keeps containers connected, and the state stays consistent: no
//! leaked addresses, no orphan endpoints (the plugin removes leftovers when
//! it starts).

mod privileged_docker_support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use privileged_docker_support::*;
use serde_json::{json, Value};

/// A JSON request to the controller, made from inside the controller's host namespace.
fn controller(f: &Fabric, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let url = format!("{}{path}", f.c.url);
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let builder = tessera_testkit::admin_http(&f.c).unwrap();
    tessera_fabric::run_in(f.c.host_netns("h1").unwrap(), move || {
        let client = builder.build().unwrap();
        let mut req = client.request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().expect("the controller answers");
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    })
    .unwrap()
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

#[test]
fn privileged_restarting_the_plugin_the_agent_and_dockerd_keeps_containers_connected() {
    let mut f = Fabric::start();
    create_network(&f.d1, "net4", &["--subnet", "192.168.4.0/24", "--subnet", "2002:1::/64", "--ipv6"]);
    wait_for("net4 on host 2", Duration::from_secs(30), || network_names(&f.d2).contains("net4"));
    run(&f.d1, "r1", &["--net", "net4"]);
    run(&f.d2, "r2", &["--net", "net4"]);
    let (r1, _) = container_ips(&f.d1, "r1", "net4");
    let (r2, r2_v6) = container_ips(&f.d2, "r2", "net4");
    assert!(reaches(&f.d1, "r1", &r2), "r1 -> r2 before any restart\n{}", f.logs());

    // The plugin is not on the data path: killed, traffic flows; restarted, it serves again.
    // (Host 1's dockerd asks it, as its authz hook, about every API call: docker commands
    // on host 1 wait for it, so the traffic is checked from host 2.)
    f.d1.kill_plugin();
    assert!(ping(&f.d2, "r2", &r1), "r2 -> r1 with host 1's plugin down");
    f.d1.start_plugin().unwrap();
    run(&f.d1, "r3", &["--net", "net4"]);
    assert!(reaches(&f.d1, "r3", &r2), "a container started after the plugin's restart\n{}", f.logs());
    assert_agree(&f, "net4");

    // The agent: killed and restarted, it finds its data plane as it left it.
    f.c.kill_agent("h1");
    assert!(ping(&f.d1, "r1", &r2), "r1 -> r2 with the agent down");
    f.c.start_agent("h1").unwrap();
    assert!(ping(&f.d1, "r1", &r2), "r1 -> r2 after the agent's restart");
    assert!(ping(&f.d2, "r2", &r1), "r2 -> r1 after the agent's restart");

    // dockerd, with live restore: the containers keep running, connected. (Containers
    // restored by the new dockerd cannot be entered by docker exec in this test setup:
    // each dockerd lives in a mount namespace of its own, and the restored containers'
    // shims in the previous one; their namespace is entered directly.)
    f.d1.dockerd_mut().restart().unwrap();
    let running = ok(&f.d1, &["ps", "--format", "{{.Names}}"]);
    assert!(running.contains("r1") && running.contains("r3"), "{running}");
    assert_eq!(container_ips(&f.d1, "r1", "net4").0, r1, "r1 keeps its address");
    assert!(ping_from_netns(&f.d1, "r1", &r2), "r1 -> r2 after dockerd's restart\n{}", f.logs());
    assert!(ping_from_netns(&f.d1, "r1", &r2_v6), "r1 -> r2 over IPv6 after dockerd's restart");
    assert!(ping(&f.d2, "r2", &r1), "r2 -> r1 after dockerd's restart");
    assert_agree(&f, "net4");
    run(&f.d1, "r4", &["--net", "net4"]);
    assert!(reaches(&f.d1, "r4", &r2), "a container started after dockerd's restart\n{}", f.logs());

    // Consistent to the end: every container's endpoint, nothing else; nothing left after removal.
    assert_agree(&f, "net4");
    assert_eq!(f.show("net4")["endpoints"].as_array().unwrap().len(), 4);
    ok(&f.d1, &["rm", "-f", "r1", "r3", "r4"]);
    ok(&f.d2, &["rm", "-f", "r2"]);
    assert!(f.tessera_endpoints().is_empty(), "no orphan endpoint: {:?}", f.tessera_endpoints());
    wait_no_reservations(&f, "net4");
    assert_eq!(f.allocated("net4"), 0, "no address leaked");
}

#[test]
fn privileged_the_plugin_removes_leftovers_when_it_starts() {
    let mut f = Fabric::start();
    create_network(&f.d1, "left", &["--subnet", "10.76.0.0/24"]);
    run(&f.d1, "l1", &["--net", "left"]);
    f.d1.kill_plugin();

    // What a plugin killed at the wrong moment leaves behind: an endpoint of a Docker
    // endpoint that is gone, an old reservation nobody holds, a staging namespace.
    let gone = "deadbeef".repeat(8);
    let (s, orphan) = controller(
        &f,
        "POST",
        "/v1/endpoints",
        Some(json!({"network": "left", "host": "h1", "name": gone, "ips": ["10.76.0.200"],
            "owner": {"docker_endpoint_id": gone, "netns": "/run/netns/nonexistent"}})),
    );
    assert_eq!(s, 201, "{orphan}");
    let old = format!("docker.h1.{}.00000001", now_ms() - 600_000);
    let young = format!("docker.h1.{}.00000002", now_ms());
    let other_host = format!("docker.h2.{}.00000003", now_ms() - 600_000);
    for (owner, addr) in [(&old, "10.76.0.201"), (&young, "10.76.0.202"), (&other_host, "10.76.0.203")] {
        let (s, r) = controller(&f, "POST", "/v1/networks/left/reservations", Some(json!({"owner": owner, "address": addr})));
        assert_eq!(s, 201, "{r}");
    }
    let staging = f.d1.plugin_staging_dir().join("0123456789ab");
    std::fs::create_dir_all(staging.parent().unwrap()).unwrap();
    std::fs::write(&staging, b"").unwrap();
    let made = std::process::Command::new("unshare").arg(format!("--net={}", staging.display())).arg("true").status().unwrap();
    assert!(made.success(), "unshare --net=FILE");

    f.d1.start_plugin().unwrap();
    wait_for("the orphan endpoint to be deleted", Duration::from_secs(30), || {
        f.tessera_endpoints().iter().all(|e| e["name"] != gone.as_str())
    });
    wait_for("the old reservation to be released", Duration::from_secs(30), || {
        !f.reservations("left").contains(&"10.76.0.201".to_string())
    });
    wait_for("the stale staging namespace to be removed", Duration::from_secs(30), || !staging.exists());
    let left = f.reservations("left");
    assert!(left.contains(&"10.76.0.202".to_string()), "a young reservation is in flight: kept ({left:?})");
    assert!(left.contains(&"10.76.0.203".to_string()), "another host's reservation is its own: kept ({left:?})");
    // The live container is untouched.
    assert_eq!(f.show("left")["endpoints"].as_array().unwrap().len(), 1);
    assert_agree(&f, "left");
}
