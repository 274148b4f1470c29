//! The network API of a real controller process: life cycle and validation.

mod support;

use serde_json::json;
use support::{assert_error, Api, ControllerProcess};

fn red(api: &Api) -> serde_json::Value {
    let (s, b) = api.post("/v1/networks", json!({"name": "red", "subnets": [{"cidr": "192.168.10.0/24"}]}));
    assert_eq!(s, 201, "{b}");
    b
}

#[test]
fn network_is_created_shown_listed_updated_and_deleted() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    let (s, net) = api.post(
        "/v1/networks",
        json!({"name": "net4", "subnets": [{"cidr": "192.168.4.0/24"}, {"cidr": "2002:1::/64"}], "route_targets": ["64512:100", "target:64512:200"]}),
    );
    assert_eq!(s, 201, "{net}");
    assert_eq!(net["fq_name"], "default-domain:admin:net4");
    assert_eq!(net["subnets"][0]["gateway"], "192.168.4.1");
    assert_eq!(net["subnets"][1]["gateway"], "2002:1::1");
    assert_eq!(net["import_targets"], json!(["target:64512:100", "target:64512:200"]));
    assert_eq!(net["export_targets"], json!(["target:64512:100", "target:64512:200"]));
    assert!(net["vni"].as_u64().unwrap() >= 4096);
    let id = net["id"].as_str().unwrap();

    for path in [format!("/v1/networks/{id}"), "/v1/networks/net4".into(), "/v1/networks/default-domain:admin:net4".into()] {
        let (s, got) = api.get(&path);
        assert_eq!(s, 200, "{path}: {got}");
        assert_eq!(got, net, "{path}");
    }
    let (_, list) = api.get("/v1/networks");
    assert_eq!(list.as_array().unwrap().len(), 1);

    let (s, up) =
        api.patch("/v1/networks/net4", json!({"add_route_targets": ["64512:300"], "remove_route_targets": ["64512:100"]}));
    assert_eq!(s, 200, "{up}");
    assert_eq!(up["import_targets"], json!(["target:64512:200", "target:64512:300"]));

    assert_eq!(api.delete("/v1/networks/net4").0, 204);
    assert_eq!(api.get("/v1/networks/net4").0, 404);
    assert_eq!(api.delete("/v1/networks/net4").0, 204, "deleting what is gone succeeds");
}

#[test]
fn identical_create_is_a_safe_retry_but_a_different_one_is_a_duplicate() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    let first = red(&api);
    let (s, again) = api.post("/v1/networks", json!({"name": "red", "subnets": [{"cidr": "192.168.10.0/24"}]}));
    assert_eq!(s, 200);
    assert_eq!(again["id"], first["id"]);
    let r = api.post("/v1/networks", json!({"name": "red", "subnets": [{"cidr": "192.168.11.0/24"}]}));
    assert_error(&r, 409, "already_exists", Some("name"));
}

#[test]
fn malformed_cidr_is_rejected_naming_the_field() {
    let c = ControllerProcess::start();
    let r =
        Api::new(&c).post("/v1/networks", json!({"name": "x", "subnets": [{"cidr": "10.0.0.0/24"}, {"cidr": "10.0.300.0/24"}]}));
    assert_error(&r, 400, "invalid_argument", Some("subnets[1].cidr"));
}

#[test]
fn cidr_with_host_bits_is_rejected() {
    let c = ControllerProcess::start();
    let r = Api::new(&c).post("/v1/networks", json!({"name": "x", "subnets": [{"cidr": "10.0.0.7/24"}]}));
    assert_error(&r, 400, "invalid_argument", Some("subnets[0].cidr"));
    assert!(r.1["error"]["message"].as_str().unwrap().contains("host bits"));
}

#[test]
fn overlapping_subnets_in_one_network_are_rejected() {
    let c = ControllerProcess::start();
    let r =
        Api::new(&c).post("/v1/networks", json!({"name": "x", "subnets": [{"cidr": "10.0.0.0/16"}, {"cidr": "10.0.1.0/24"}]}));
    assert_error(&r, 400, "invalid_argument", Some("subnets[1].cidr"));
}

#[test]
fn gateway_outside_its_subnet_is_rejected() {
    let c = ControllerProcess::start();
    let r = Api::new(&c).post("/v1/networks", json!({"name": "x", "subnets": [{"cidr": "10.0.0.0/24", "gateway": "10.0.1.1"}]}));
    assert_error(&r, 400, "invalid_argument", Some("subnets[0].gateway"));
}

#[test]
fn chosen_gateway_is_kept() {
    let c = ControllerProcess::start();
    let (s, n) = Api::new(&c)
        .post("/v1/networks", json!({"name": "x", "subnets": [{"cidr": "192.168.4.0/24", "gateway": "192.168.4.4"}]}));
    assert_eq!(s, 201);
    assert_eq!(n["subnets"][0]["gateway"], "192.168.4.4");
}

#[test]
fn vni_clash_is_rejected_naming_the_owner() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    assert_eq!(api.post("/v1/networks", json!({"name": "a", "vni": 100, "subnets": [{"cidr": "10.1.0.0/24"}]})).0, 201);
    let r = api.post("/v1/networks", json!({"name": "b", "vni": 100, "subnets": [{"cidr": "10.2.0.0/24"}]}));
    assert_error(&r, 409, "already_exists", Some("vni"));
    assert!(r.1["error"]["message"].as_str().unwrap().contains("default-domain:admin:a"));
}

#[test]
fn vni_out_of_range_is_rejected() {
    let c = ControllerProcess::start();
    let r = Api::new(&c).post("/v1/networks", json!({"name": "a", "vni": 16777216, "subnets": []}));
    assert_error(&r, 400, "invalid_argument", Some("vni"));
}

#[test]
fn automatic_vnis_are_unique() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    let mut vnis = std::collections::BTreeSet::new();
    for i in 0..10 {
        let (s, n) = api.post("/v1/networks", json!({"name": format!("n{i}"), "subnets": [{"cidr": format!("10.{i}.0.0/24")}]}));
        assert_eq!(s, 201);
        assert!(vnis.insert(n["vni"].as_u64().unwrap()));
    }
}

#[test]
fn bad_route_target_is_rejected_naming_its_index() {
    let c = ControllerProcess::start();
    let r = Api::new(&c).post("/v1/networks", json!({"name": "a", "route_targets": ["64512:100", "70000:70000"]}));
    assert_error(&r, 400, "invalid_argument", Some("route_targets[1]"));
}

#[test]
fn unknown_policy_reference_is_rejected() {
    let c = ControllerProcess::start();
    let r = Api::new(&c).post("/v1/networks", json!({"name": "a", "subnets": [{"cidr": "10.1.0.0/24"}], "policies": ["nope"]}));
    assert_error(&r, 404, "not_found", Some("policies[0]"));
}

#[test]
fn unknown_project_is_rejected() {
    let c = ControllerProcess::start();
    let r = Api::new(&c)
        .post("/v1/networks", json!({"name": "a", "subnets": [{"cidr": "10.1.0.0/24"}], "project": "default-domain:nobody"}));
    assert_error(&r, 404, "not_found", Some("project"));
}

#[test]
fn networks_with_the_same_subnet_live_in_different_projects() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    assert_eq!(api.post("/v1/projects", json!({"name": "default-domain:blue"})).0, 201);
    for project in ["default-domain:admin", "default-domain:blue"] {
        let (s, b) = api.post("/v1/networks", json!({"name": "web", "project": project, "subnets": [{"cidr": "10.0.0.0/24"}]}));
        assert_eq!(s, 201, "{b}");
    }
    assert_eq!(api.get("/v1/networks?project=default-domain:blue").1.as_array().unwrap().len(), 1);
    assert_error(&api.delete("/v1/projects/default-domain:blue"), 409, "in_use", None);
}

#[test]
fn unknown_field_and_bad_json_are_rejected() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    let r = api.post("/v1/networks", json!({"name": "a", "subnet": "10.0.0.0/24"}));
    assert_error(&r, 400, "invalid_argument", None);
    assert!(r.1["error"]["message"].as_str().unwrap().contains("subnet"));
    assert_error(&api.post_raw("/v1/networks", "{not json"), 400, "invalid_argument", Some("body"));
    let r = api.post("/v1/networks", json!({"name": "a", "subnets": [{"cidr": 5}]}));
    assert_error(&r, 400, "invalid_argument", Some("subnets[0].cidr"));
}

#[test]
fn network_with_endpoints_cannot_be_deleted_and_the_error_lists_them() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    red(&api);
    api.put("/v1/hosts/h1", json!({"underlay_ip": "10.99.0.1"}));
    let (s, ep) = api.post("/v1/endpoints", json!({"network": "red", "host": "h1", "name": "web1"}));
    assert_eq!(s, 201, "{ep}");
    let r = api.delete("/v1/networks/red");
    assert_error(&r, 409, "in_use", None);
    assert_eq!(r.1["error"]["details"]["used_by"], json!(["web1"]));
    assert_eq!(api.get("/v1/networks/red").0, 200, "nothing was lost");
    assert_eq!(api.delete(&format!("/v1/endpoints/{}", ep["id"].as_str().unwrap())).0, 204);
    assert_eq!(api.delete("/v1/networks/red").0, 204);
}

#[test]
fn policies_attach_in_order_and_detach() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    red(&api);
    for p in ["p1", "p2"] {
        assert_eq!(api.post("/v1/policies", json!({"name": p, "rules": ["pass any any any <> any any"]})).0, 201);
    }
    let (_, n) = api.patch("/v1/networks/red", json!({"attach_policies": ["p2", "p1"]}));
    let p2 = api.get("/v1/policies/p2").1["id"].clone();
    let p1 = api.get("/v1/policies/p1").1["id"].clone();
    assert_eq!(n["policies"], json!([p2, p1]));
    assert_error(&api.delete("/v1/policies/p1"), 409, "in_use", None);
    let (_, n) = api.patch("/v1/networks/red", json!({"detach_policies": ["p2"]}));
    assert_eq!(n["policies"], json!([p1]));
    let r = api.patch("/v1/networks/red", json!({"attach_policies": ["ghost"]}));
    assert_error(&r, 404, "not_found", Some("attach_policies[0]"));
}

#[test]
fn openapi_document_describes_the_api() {
    let c = ControllerProcess::start();
    let (s, doc) = Api::new(&c).get("/v1/openapi.json");
    assert_eq!(s, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in ["/v1/networks", "/v1/networks/{id}", "/v1/endpoints", "/v1/policies", "/v1/hosts/{name}"] {
        assert!(doc["paths"][path].is_object(), "{path} missing from the OpenAPI document");
    }
    assert!(doc["components"]["schemas"]["NetworkCreate"].is_object());
}

#[test]
fn health_and_readiness_answer() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    assert_eq!(api.get("/healthz").0, 200);
    assert_eq!(api.get("/readyz").0, 200);
    assert_error(&api.get("/v1/nothing"), 404, "not_found", None);
}
