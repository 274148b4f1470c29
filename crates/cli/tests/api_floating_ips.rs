//! Floating IPs, SNAT and gateways through a real controller process:
//! allocation from external networks, association with endpoints, the
//! refusals of bad requests (nothing half made), leases of gateway hosts,
//! and what agents mirror.

mod support;

use serde_json::{json, Value};
use support::{allocations, assert_error, Api, ControllerProcess};

/// An external network `public`, a network `red` with an endpoint `e1` on
/// host h1; returns e1's id.
fn setup(api: &Api) -> String {
    let (s, b) = api.post(
        "/v1/networks",
        json!({"name": "public", "external": true, "subnets": [{"cidr": "203.0.113.0/24"}, {"cidr": "2001:db8:ff::/64"}]}),
    );
    assert_eq!(s, 201, "{b}");
    let (s, b) = api.post("/v1/networks", json!({"name": "red", "subnets": [{"cidr": "10.1.0.0/24"}, {"cidr": "fd00:1::/64"}]}));
    assert_eq!(s, 201, "{b}");
    assert_eq!(api.put("/v1/hosts/h1", json!({"underlay_ip": "10.99.0.1"})).0, 200);
    endpoint(api, "red", "e1")
}

fn endpoint(api: &Api, network: &str, name: &str) -> String {
    let (s, ep) = api.post("/v1/endpoints", json!({"network": network, "host": "h1", "name": name}));
    assert_eq!(s, 201, "{ep}");
    ep["id"].as_str().unwrap().to_string()
}

fn fip(api: &Api, body: Value) -> Value {
    let (s, f) = api.post("/v1/floating-ips", body);
    assert_eq!(s, 201, "{f}");
    f
}

#[test]
fn floating_ips_are_allocated_associated_moved_and_released() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    let e1 = setup(&api);
    let e2 = endpoint(&api, "red", "e2");

    let f4 = fip(&api, json!({"network": "public"}));
    assert_eq!(f4["address"], "203.0.113.2", "the lowest free address");
    let f6 = fip(&api, json!({"network": "public", "family": 6}));
    assert_eq!(f6["address"], "2001:db8:ff::2");
    let chosen = fip(&api, json!({"network": "public", "address": "203.0.113.50"}));
    let again = api.post("/v1/floating-ips", json!({"network": "public", "address": "203.0.113.50"}));
    assert_eq!(again, (200, chosen.clone()), "a retry with the address returns the same floating IP");
    let id = f4["id"].as_str().unwrap();
    assert!(allocations(&api, "public").contains(&("203.0.113.2".into(), format!("floating-ip:{id}"))));

    let (s, a) = api.put(&format!("/v1/floating-ips/{id}/association"), json!({"endpoint": e1}));
    assert_eq!(s, 200, "{a}");
    assert_eq!(a["endpoint"], e1.as_str());
    assert_eq!(a["fixed_ip"], "10.1.0.2", "the endpoint's address of the floating IP's family");
    let same = api.put(&format!("/v1/floating-ips/{id}/association"), json!({"endpoint": e1}));
    assert_eq!(same, (200, a.clone()), "associating again changes nothing");
    assert_error(
        &api.put(&format!("/v1/floating-ips/{id}/association"), json!({"endpoint": e2})),
        409,
        "already_exists",
        Some("endpoint"),
    );
    let (s, moved) = api.put(&format!("/v1/floating-ips/{id}/association?move=true"), json!({"endpoint": e2}));
    assert_eq!(s, 200, "{moved}");
    assert_eq!(moved["fixed_ip"], "10.1.0.3");
    // By address too.
    let (s, shown) = api.get("/v1/floating-ips/203.0.113.2");
    assert_eq!((s, &shown), (200, &moved));

    // The mirror carries floating IPs.
    let (_, snap) = api.get("/v1/snapshot");
    assert_eq!(snap["floating_ips"].as_array().unwrap().len(), 3);

    // A second floating IP for e2's address is refused; e2 deleted disassociates.
    let other = chosen["id"].as_str().unwrap();
    assert_error(
        &api.put(&format!("/v1/floating-ips/{other}/association"), json!({"endpoint": e2})),
        409,
        "already_exists",
        Some("fixed_ip"),
    );
    assert_eq!(api.delete(&format!("/v1/endpoints/{e2}")).0, 204);
    let (_, after) = api.get(&format!("/v1/floating-ips/{id}"));
    assert!(after.get("endpoint").is_none() && after.get("fixed_ip").is_none(), "{after}");

    let (s, d) = api.delete(&format!("/v1/floating-ips/{id}/association"));
    assert_eq!(s, 200, "{d}");
    assert_eq!(api.delete(&format!("/v1/floating-ips/{id}")).0, 204);
    assert_eq!(api.delete(&format!("/v1/floating-ips/{id}")).0, 204, "releasing a missing floating IP succeeds");
    assert!(!allocations(&api, "public").iter().any(|(a, _)| a == "203.0.113.2"), "the address is free again");
}

#[test]
fn bad_requests_are_refused_with_their_field_and_nothing_is_made() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    let e1 = setup(&api);

    // Not an external network.
    assert_error(&api.post("/v1/floating-ips", json!({"network": "red"})), 400, "invalid_argument", Some("network"));
    assert_error(&api.post("/v1/floating-ips", json!({"network": "nope"})), 404, "not_found", Some("network"));
    assert_error(
        &api.post("/v1/floating-ips", json!({"network": "public", "address": "198.51.100.1"})),
        400,
        "invalid_argument",
        Some("address"),
    );
    assert_error(
        &api.post("/v1/floating-ips", json!({"network": "public", "family": 5})),
        400,
        "invalid_argument",
        Some("family"),
    );
    // An external network holds no endpoints.
    assert_error(
        &api.post("/v1/endpoints", json!({"network": "public", "host": "h1", "name": "x"})),
        400,
        "invalid_argument",
        Some("network"),
    );
    // External subnets never overlap.
    assert_error(
        &api.post("/v1/networks", json!({"name": "public2", "external": true, "subnets": [{"cidr": "203.0.113.128/25"}]})),
        400,
        "invalid_argument",
        Some("subnets[0]"),
    );
    // Whether a network is external is fixed.
    assert_error(&api.patch("/v1/networks/red", json!({"external": true})), 400, "invalid_argument", Some("external"));

    // An endpoint the external network has no route to (overlapping subnets).
    let (s, _) = api.post("/v1/networks", json!({"name": "clash", "subnets": [{"cidr": "203.0.113.0/25"}]}));
    assert_eq!(s, 201);
    let clash = endpoint(&api, "clash", "c1");
    let f = fip(&api, json!({"network": "public"}));
    let id = f["id"].as_str().unwrap();
    assert_error(
        &api.put(&format!("/v1/floating-ips/{id}/association"), json!({"endpoint": clash})),
        400,
        "invalid_argument",
        Some("endpoint"),
    );
    assert_error(&api.patch("/v1/networks/clash", json!({"snat": "public"})), 400, "invalid_argument", Some("snat"));
    // A fixed address that is not the endpoint's, of another family, an unknown endpoint.
    let path = format!("/v1/floating-ips/{id}/association");
    assert_error(&api.put(&path, json!({"endpoint": e1, "fixed_ip": "10.1.0.99"})), 400, "invalid_argument", Some("fixed_ip"));
    assert_error(&api.put(&path, json!({"endpoint": e1, "fixed_ip": "fd00:1::2"})), 400, "invalid_argument", Some("fixed_ip"));
    assert_error(
        &api.put(&path, json!({"endpoint": "0b6f3c1e-0000-4000-8000-000000000000"})),
        404,
        "not_found",
        Some("endpoint"),
    );
    let (_, still) = api.get(&format!("/v1/floating-ips/{id}"));
    assert!(still.get("endpoint").is_none(), "nothing half made: {still}");

    // SNAT through a network that is not external; a network reaches the
    // outside through one external network only.
    assert_error(&api.patch("/v1/networks/red", json!({"snat": "clash"})), 400, "invalid_argument", Some("snat"));
    let (s, b) = api.post("/v1/networks", json!({"name": "public2", "external": true, "subnets": [{"cidr": "198.51.100.0/24"}]}));
    assert_eq!(s, 201, "{b}");
    assert_eq!(api.put(&path, json!({"endpoint": e1})).0, 200);
    assert_error(&api.patch("/v1/networks/red", json!({"snat": "public2"})), 400, "invalid_argument", Some("snat"));
    let (_, red) = api.get("/v1/networks/red");
    assert!(red.get("snat").is_none(), "{red}");

    // A gateway of a network that is not external.
    assert_error(
        &api.put("/v1/hosts/g1", json!({"underlay_ip": "10.99.0.2", "gateways": [{"network": "red", "interface": "eth1"}]})),
        400,
        "invalid_argument",
        Some("gateways[0].network"),
    );
    assert_error(
        &api.put(
            "/v1/hosts/g1",
            json!({"underlay_ip": "10.99.0.2", "gateways": [{"network": "public", "interface": "bad/name"}]}),
        ),
        400,
        "invalid_argument",
        Some("gateways[0].interface"),
    );
    assert_eq!(api.get("/v1/hosts/g1").0, 404, "nothing half made");

    // An external network in use is not deleted.
    assert_error(&api.delete("/v1/networks/public"), 409, "in_use", None);
}

#[test]
fn snat_allocates_an_address_per_family_and_gives_it_back() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    setup(&api);
    let (s, red) = api.patch("/v1/networks/red", json!({"snat": "public"}));
    assert_eq!(s, 200, "{red}");
    let addrs = red["snat"]["addresses"].as_array().unwrap().clone();
    assert_eq!(addrs, vec![json!("203.0.113.2"), json!("2001:db8:ff::2")]);
    let owner = format!("snat:{}", red["id"].as_str().unwrap());
    assert!(allocations(&api, "public").contains(&("203.0.113.2".into(), owner.clone())));
    let (s, same) = api.patch("/v1/networks/red", json!({"snat": "public"}));
    assert_eq!((s, &same["snat"]), (200, &red["snat"]), "asking again keeps the addresses");
    assert_error(&api.delete("/v1/networks/public"), 409, "in_use", None);
    let (s, off) = api.patch("/v1/networks/red", json!({"snat": ""}));
    assert_eq!(s, 200, "{off}");
    assert!(off.get("snat").is_none());
    assert!(allocations(&api, "public").is_empty(), "the addresses are free again");
    assert_eq!(api.delete("/v1/networks/public").0, 204, "an external network no one uses is deleted");
}

#[test]
fn a_gateway_is_alive_while_it_renews_its_lease() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    setup(&api);
    let (s, h) =
        api.put("/v1/hosts/g1", json!({"underlay_ip": "10.99.0.2", "gateways": [{"network": "public", "interface": "eth1"}]}));
    assert_eq!(s, 200, "{h}");
    assert_eq!(h["alive"], false);
    assert_eq!(h["gateways"][0]["interface"], "eth1");
    assert_eq!(api.put("/v1/hosts/g1/lease", json!(null)).0, 204);
    let (_, h) = api.get("/v1/hosts/g1");
    assert_eq!(h["alive"], true);
    // Registering again keeps the lease.
    api.put("/v1/hosts/g1", json!({"underlay_ip": "10.99.0.2", "gateways": [{"network": "public", "interface": "eth1"}]}));
    assert_eq!(api.get("/v1/hosts/g1").1["alive"], true);
    // Not renewed for 1.5 s, it ends.
    let start = std::time::Instant::now();
    while api.get("/v1/hosts/g1").1["alive"] == true {
        assert!(start.elapsed() < std::time::Duration::from_secs(5), "the lease never ended");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_error(&api.put("/v1/hosts/nope/lease", json!(null)), 404, "not_found", None);
}

#[test]
fn a_host_renews_its_own_lease_and_publishes_ports_of_its_own_endpoints_only() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    let e1 = setup(&api);
    let h1 = Api::as_caller(&c, &support::Caller::Host("h1".into()));
    let h2 = Api::as_caller(&c, &support::Caller::Host("h2".into()));
    assert_eq!(api.put("/v1/hosts/h2", json!({"underlay_ip": "10.99.0.2"})).0, 200);
    assert_eq!(h1.put("/v1/hosts/h1/lease", json!(null)).0, 204);
    assert_error(&h2.put("/v1/hosts/h1/lease", json!(null)), 403, "permission_denied", None);
    let ports = json!({"ports": [{"protocol": "tcp", "host_port": 8080, "container_port": 80}]});
    assert_error(&h2.put(&format!("/v1/endpoints/{e1}/ports"), ports.clone()), 403, "permission_denied", None);
    let (s, ep) = h1.put(&format!("/v1/endpoints/{e1}/ports"), ports);
    assert_eq!(s, 200, "{ep}");
    // A second endpoint of the host cannot take the port; port 0 takes a free one.
    let e2 = endpoint(&api, "red", "e2");
    let taken = json!({"ports": [{"protocol": "tcp", "host_port": 8080, "container_port": 80}]});
    assert_error(&h1.put(&format!("/v1/endpoints/{e2}/ports"), taken), 409, "already_exists", Some("ports[0].host_port"));
    let (s, any) = h1
        .put(&format!("/v1/endpoints/{e2}/ports"), json!({"ports": [{"protocol": "tcp", "host_port": 0, "container_port": 80}]}));
    assert_eq!(s, 200, "{any}");
    assert_eq!(any["ports"][0]["host_port"], 32768);
    assert_error(
        &h1.put(
            &format!("/v1/endpoints/{e2}/ports"),
            json!({"ports": [{"protocol": "tcp", "host_ip": "::1", "host_port": 9, "container_port": 9}]}),
        ),
        400,
        "invalid_argument",
        Some("ports[0].host_ip"),
    );
    // Deleting the endpoint frees its port.
    assert_eq!(api.delete(&format!("/v1/endpoints/{e1}")).0, 204);
    let again = json!({"ports": [{"protocol": "tcp", "host_port": 8080, "container_port": 80}]});
    assert_eq!(h1.put(&format!("/v1/endpoints/{e2}/ports"), again).0, 200);
}
