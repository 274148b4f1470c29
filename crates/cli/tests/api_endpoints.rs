//! Endpoints, IPAM, hosts and policies through a real controller process.

mod support;

use std::collections::HashSet;

use serde_json::json;
use support::{assert_error, Api, ControllerProcess};

fn setup(api: &Api, cidrs: &[&str]) {
    let subnets: Vec<_> = cidrs.iter().map(|c| json!({"cidr": c})).collect();
    let (s, b) = api.post("/v1/networks", json!({"name": "net", "subnets": subnets}));
    assert_eq!(s, 201, "{b}");
    assert_eq!(api.put("/v1/hosts/h1", json!({"underlay_ip": "10.99.0.1"})).0, 200);
}

fn ep(api: &Api, body: serde_json::Value) -> (u16, serde_json::Value) {
    api.post("/v1/endpoints", body)
}

#[test]
fn endpoint_gets_one_address_per_family_and_a_local_mac() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    setup(&api, &["192.168.4.0/24", "2002:1::/64"]);
    let (s, e) =
        ep(&api, json!({"network": "net", "host": "h1", "owner": {"container_id": "abc", "netns": "/proc/4242/ns/net"}}));
    assert_eq!(s, 201, "{e}");
    assert_eq!(e["ips"], json!(["192.168.4.2/24", "2002:1::2/64"]));
    let mac = e["mac"].as_str().unwrap();
    let first = u8::from_str_radix(&mac[..2], 16).unwrap();
    assert_eq!(first & 0x03, 0x02, "locally administered unicast: {mac}");
    assert_eq!(e["status"], "pending");
    assert_eq!(e["owner"]["container_id"], "abc");
    let id = e["id"].as_str().unwrap();
    assert_eq!(api.get(&format!("/v1/endpoints/{id}")).1, e);
    let (_, list) = api.get("/v1/endpoints?network=net&host=h1");
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (s, up) = api.put(&format!("/v1/endpoints/{id}/status"), json!({"status": "active"}));
    assert_eq!((s, up["status"].as_str()), (200, Some("active")));
}

#[test]
fn static_address_is_honoured_and_a_taken_one_refused() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    setup(&api, &["192.168.4.0/24"]);
    let (s, e) = ep(&api, json!({"network": "net", "host": "h1", "ips": ["192.168.4.77"]}));
    assert_eq!(s, 201, "{e}");
    assert_eq!(e["ips"], json!(["192.168.4.77/24"]));
    assert_error(
        &ep(&api, json!({"network": "net", "host": "h1", "ips": ["192.168.4.77"]})),
        409,
        "already_exists",
        Some("ips[0]"),
    );
    assert_error(
        &ep(&api, json!({"network": "net", "host": "h1", "ips": ["192.168.4.1"]})),
        400,
        "invalid_argument",
        Some("ips[0]"),
    );
    assert_error(
        &ep(&api, json!({"network": "net", "host": "h1", "ips": ["192.168.4.0"]})),
        400,
        "invalid_argument",
        Some("ips[0]"),
    );
    assert_error(
        &ep(&api, json!({"network": "net", "host": "h1", "ips": ["10.0.0.1"]})),
        400,
        "invalid_argument",
        Some("ips[0]"),
    );
    assert_error(&ep(&api, json!({"network": "net", "host": "h1", "ips": ["nope"]})), 400, "invalid_argument", Some("ips[0]"));
}

#[test]
fn exhausted_subnet_is_reported_and_release_allows_reuse() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    setup(&api, &["10.0.0.0/29"]); // .1 gateway, .2-.6 usable
    let mut ids = Vec::new();
    for _ in 0..5 {
        let (s, e) = ep(&api, json!({"network": "net", "host": "h1"}));
        assert_eq!(s, 201, "{e}");
        ids.push(e["id"].as_str().unwrap().to_string());
    }
    let r = ep(&api, json!({"network": "net", "host": "h1"}));
    assert_error(&r, 409, "exhausted", None);
    assert!(r.1["error"]["message"].as_str().unwrap().contains("10.0.0.0/29"));
    assert_eq!(api.delete(&format!("/v1/endpoints/{}", ids[1])).0, 204);
    let (_, e) = ep(&api, json!({"network": "net", "host": "h1"}));
    assert_eq!(e["ips"], json!(["10.0.0.3/29"]), "the released address is reused");
}

#[test]
fn retried_create_with_the_same_name_returns_the_same_endpoint() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    setup(&api, &["10.0.0.0/24"]);
    let body = json!({"network": "net", "host": "h1", "name": "c1-eth0"});
    let (s1, a) = ep(&api, body.clone());
    let (s2, b) = ep(&api, body);
    assert_eq!((s1, s2), (201, 200));
    assert_eq!(a, b);
    let (_, ipam) = api.get("/v1/networks/net/ipam");
    assert_eq!(ipam["subnets"][0]["allocated"], 1, "no address leaked: {ipam}");
    let r = ep(&api, json!({"network": "net", "host": "h2", "name": "c1-eth0"}));
    assert_eq!(r.0, 404, "unknown host is refused first: {}", r.1);
}

#[test]
fn endpoint_references_must_exist() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    setup(&api, &["10.0.0.0/24"]);
    assert_error(&ep(&api, json!({"network": "nope", "host": "h1"})), 404, "not_found", Some("network"));
    assert_error(&ep(&api, json!({"network": "net", "host": "ghost"})), 404, "not_found", Some("host"));
    assert_error(
        &ep(&api, json!({"network": "net", "host": "h1", "mac": "01:00:00:00:00:01"})),
        400,
        "invalid_argument",
        Some("mac"),
    );
}

#[test]
fn a_create_after_its_network_was_made_again_under_its_name_lands_in_the_new_one() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    setup(&api, &["10.0.0.0/24"]);
    let (s, first) = ep(&api, json!({"network": "net", "host": "h1"}));
    assert_eq!(s, 201, "{first}");
    let (s, b) = api.delete(&format!("/v1/endpoints/{}", first["id"].as_str().unwrap()));
    assert_eq!(s, 204, "{b}");
    let (s, b) = api.delete("/v1/networks/net");
    assert_eq!(s, 204, "{b}");
    assert_error(&ep(&api, json!({"network": "net", "host": "h1"})), 404, "not_found", Some("network"));
    let (s, b) = api.post("/v1/networks", json!({"name": "net", "subnets": [{"cidr": "10.7.0.0/24"}]}));
    assert_eq!(s, 201, "{b}");
    let (s, second) = ep(&api, json!({"network": "net", "host": "h1"}));
    assert_eq!(s, 201, "{second}");
    assert_eq!((second["network"].clone(), second["ips"].clone()), (b["id"].clone(), json!(["10.7.0.2/24"])));
}

#[test]
fn chosen_mac_must_be_unique() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    setup(&api, &["10.0.0.0/24"]);
    assert_eq!(ep(&api, json!({"network": "net", "host": "h1", "mac": "02:00:00:00:00:01"})).0, 201);
    assert_error(
        &ep(&api, json!({"network": "net", "host": "h1", "mac": "02:00:00:00:00:01"})),
        409,
        "already_exists",
        Some("mac"),
    );
}

#[test]
fn deleting_a_missing_endpoint_succeeds() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    assert_eq!(api.delete("/v1/endpoints/7f9c2a4e-0000-4000-8000-000000000000").0, 204);
    assert_error(&api.delete("/v1/endpoints/not-a-uuid"), 400, "invalid_argument", Some("id"));
}

#[test]
fn ipv6_slash_64_allocates_without_materialising() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    setup(&api, &["2001:db8::/64"]);
    let (_, e) = ep(&api, json!({"network": "net", "host": "h1", "ips": ["2001:db8::ffff:ffff:ffff:fffe"]}));
    assert_eq!(e["ips"], json!(["2001:db8::ffff:ffff:ffff:fffe/64"]));
    let (_, e) = ep(&api, json!({"network": "net", "host": "h1"}));
    assert_eq!(e["ips"], json!(["2001:db8::2/64"]));
    let (_, ipam) = api.get("/v1/networks/net/ipam");
    assert_eq!(ipam["subnets"][0]["capacity"], "18446744073709551614");
}

#[test]
fn five_hundred_concurrent_allocations_never_share_an_address() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    setup(&api, &["10.20.0.0/22", "fd00:20::/64"]);
    let url = c.url.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = c.async_http(&support::Caller::Admin);
    let results: Vec<serde_json::Value> = rt.block_on(async move {
        let tasks: Vec<_> = (0..500)
            .map(|i| {
                let client = client.clone();
                let url = url.clone();
                tokio::spawn(async move {
                    let r = client
                        .post(format!("{url}/v1/endpoints"))
                        .json(&json!({"network": "net", "host": "h1", "name": format!("c{i}")}))
                        .send()
                        .await
                        .expect("request");
                    assert_eq!(r.status().as_u16(), 201);
                    r.json::<serde_json::Value>().await.unwrap()
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let mut seen = HashSet::new();
    let mut macs = HashSet::new();
    for e in &results {
        for ip in e["ips"].as_array().unwrap() {
            assert!(seen.insert(ip.as_str().unwrap().to_string()), "address {ip} handed out twice");
        }
        assert!(macs.insert(e["mac"].as_str().unwrap().to_string()), "MAC handed out twice");
    }
    assert_eq!(seen.len(), 1000);
    let (_, ipam) = api.get("/v1/networks/net/ipam");
    assert_eq!(ipam["subnets"][0]["allocated"], 500);
    assert_eq!(ipam["subnets"][1]["allocated"], 500);
}

#[test]
fn host_registration_is_idempotent_and_validated() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    assert_eq!(api.put("/v1/hosts/h1", json!({"underlay_ip": "10.99.0.1"})).0, 200);
    let (s, h) = api.put("/v1/hosts/h1", json!({"underlay_ip": "10.99.0.9"}));
    assert_eq!((s, h["underlay_ip"].as_str()), (200, Some("10.99.0.9")));
    assert_eq!(api.get("/v1/hosts").1.as_array().unwrap().len(), 1);
    assert_error(&api.put("/v1/hosts/h2", json!({"underlay_ip": "x"})), 400, "invalid_argument", Some("underlay_ip"));
    assert_error(&api.put("/v1/hosts/bad%20name", json!({"underlay_ip": "10.0.0.1"})), 400, "invalid_argument", Some("name"));
    assert_eq!(api.delete("/v1/hosts/h1").0, 204);
    assert_eq!(api.delete("/v1/hosts/h1").0, 204);
    assert_eq!(api.get("/v1/hosts/h1").0, 404);
}

#[test]
fn host_with_endpoints_cannot_be_removed() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    setup(&api, &["10.0.0.0/24"]);
    ep(&api, json!({"network": "net", "host": "h1", "name": "e1"}));
    let r = api.delete("/v1/hosts/h1");
    assert_error(&r, 409, "in_use", None);
    assert_eq!(r.1["error"]["details"]["used_by"], json!(["e1"]));
}

#[test]
fn policy_life_cycle_and_rule_validation() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    setup(&api, &["10.0.0.0/24"]);
    let (s, p) = api.post(
        "/v1/policies",
        json!({"name": "web", "rules": ["pass tcp net any <> any 80,443", "deny any any any > 10.0.0.0/8 any log"]}),
    );
    assert_eq!(s, 201, "{p}");
    assert_eq!(p["rules"][0]["protocol"], "tcp");
    assert_eq!(p["rules"][0]["src"], "default-domain:admin:net");
    assert_eq!(p["rules"][0]["dst_ports"], json!([{"start": 80, "end": 80}, {"start": 443, "end": 443}]));
    assert_eq!(p["rules"][1]["direction"], ">");
    assert_eq!(p["rules"][1]["log"], true);
    let mut shown = api.get("/v1/policies/web").1;
    assert_eq!(
        shown["counters"]["rules"].as_array().map(Vec::len),
        Some(2),
        "a counter per rule, zero before any traffic: {shown}"
    );
    shown.as_object_mut().unwrap().remove("counters");
    assert_eq!(shown, p, "show returns the policy as created, with its counters");
    assert_eq!(api.get("/v1/policies").1.as_array().unwrap().len(), 1);
    assert_error(
        &api.post("/v1/policies", json!({"name": "x", "rules": ["pass tcp ghost any <> any 80"]})),
        404,
        "not_found",
        Some("rules[0].src"),
    );
    assert_error(
        &api.post("/v1/policies", json!({"name": "x", "rules": ["pass icmp any 22 <> any any"]})),
        400,
        "invalid_argument",
        Some("rules[0].src_ports"),
    );
    assert_error(
        &api.post("/v1/policies", json!({"name": "x", "rules": ["pass any 10.0.0.1/8 any <> any any"]})),
        400,
        "invalid_argument",
        Some("rules[0].src"),
    );
    assert_error(
        &api.post("/v1/policies", json!({"name": "x", "rules": ["pass tcp"]})),
        400,
        "invalid_argument",
        Some("rules[0]"),
    );
    assert_error(&api.post("/v1/policies", json!({"name": "web", "rules": []})), 409, "already_exists", Some("name"));
    let (s, up) = api.patch("/v1/policies/web", json!({"rules": ["reject udp any any > net 53"]}));
    assert_eq!(s, 200, "{up}");
    assert_eq!(up["rules"].as_array().unwrap().len(), 1);
    assert_eq!(up["id"], p["id"]);
    assert_error(
        &api.patch("/v1/policies/web", json!({"rules": ["pass tcp ghost any <> any 80"]})),
        404,
        "not_found",
        Some("rules[0].src"),
    );
    assert_error(
        &api.patch("/v1/policies/web", json!({"rules": ["pass udp any any <> any 99999"]})),
        400,
        "invalid_argument",
        Some("rules[0].dst_ports"),
    );
    assert_eq!(api.get("/v1/policies/web").1["rules"], up["rules"], "a refused update changes nothing");
    assert_error(&api.patch("/v1/policies/ghost", json!({"rules": []})), 404, "not_found", None);
    assert_eq!(api.delete("/v1/policies/web").0, 204);
    assert_eq!(api.delete("/v1/policies/web").0, 204);
}

#[test]
fn project_life_cycle() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    assert_eq!(api.post("/v1/projects", json!({"name": "acme:prod"})).0, 201);
    assert_eq!(api.post("/v1/projects", json!({"name": "acme:prod"})).0, 200);
    assert_eq!(api.get("/v1/projects/acme:prod").0, 200);
    assert_eq!(api.get("/v1/projects").1.as_array().unwrap().len(), 2, "default project plus acme:prod");
    assert_error(&api.post("/v1/projects", json!({"name": "a:b:c"})), 400, "invalid_argument", Some("name"));
    assert_eq!(api.delete("/v1/projects/acme:prod").0, 204);
    assert_eq!(api.get("/v1/projects/acme:prod").0, 404);
}
