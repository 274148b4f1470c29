//! Service chaining through a real controller process: templates,
//! services, instances (service ports), the chains of `apply-service`
//! rules, health reports, and the refusals of bad requests (nothing half
//! made).

mod support;

use serde_json::{json, Value};
use support::{assert_error, Api, Caller, ControllerProcess};

fn net(api: &Api, name: &str, cidr: &str) {
    let (s, b) = api.post("/v1/networks", json!({"name": name, "subnets": [{"cidr": cidr}]}));
    assert_eq!(s, 201, "{b}");
}

/// Networks red, green, blue, a template `fw` and a service `fw1` from red
/// to green; host h1.
fn setup(api: &Api) -> Value {
    net(api, "red", "10.1.0.0/24");
    net(api, "green", "10.2.0.0/24");
    net(api, "blue", "10.3.0.0/24");
    assert_eq!(api.put("/v1/hosts/h1", json!({"underlay_ip": "10.99.0.1"})).0, 200);
    let (s, t) = api.post("/v1/service-templates", json!({"name": "fw", "interfaces": ["left", "right"]}));
    assert_eq!(s, 201, "{t}");
    assert_eq!(t["mode"], "in-network");
    let (s, svc) = api.post("/v1/services", json!({"name": "fw1", "template": "fw", "left": "red", "right": "green"}));
    assert_eq!(s, 201, "{svc}");
    assert_eq!(svc["fail"], "closed", "closed by default");
    svc
}

fn port(api: &Api, svc: &Value, network: &str, role: &str, instance: &str) -> (u16, Value) {
    api.post(
        "/v1/endpoints",
        json!({"network": network, "host": "h1", "name": format!("{instance}-{role}"),
               "owner": {"netns": "/run/netns/x", "ifname": role, "own_table": true,
                         "service": {"service": svc["id"], "instance": instance, "role": role}}}),
    )
}

#[test]
fn templates_services_and_instances_are_made_checked_and_removed() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    let svc = setup(&api);

    // Retries are safe; a different one of the same name is refused.
    assert_eq!(
        api.post("/v1/services", json!({"name": "fw1", "template": "fw", "left": "red", "right": "green"})),
        (200, svc.clone())
    );
    assert_error(
        &api.post("/v1/services", json!({"name": "fw1", "template": "fw", "left": "red", "right": "blue"})),
        409,
        "already_exists",
        Some("name"),
    );

    // Instances: their ports must be in the service's networks.
    let (s, left) = port(&api, &svc, "red", "left", "i1");
    assert_eq!(s, 201, "{left}");
    let (s, right) = port(&api, &svc, "green", "right", "i1");
    assert_eq!(s, 201, "{right}");
    assert_error(&port(&api, &svc, "blue", "left", "i2"), 400, "invalid_argument", Some("network"));
    assert_error(&port(&api, &svc, "red", "mgmt", "i2"), 400, "invalid_argument", Some("owner.service.role"));

    // Health: unchecked, then healthy once both ports are active and reported.
    let (_, view) = api.get("/v1/services/fw1");
    assert_eq!(view["instances"].as_array().unwrap().len(), 1, "{view}");
    assert_eq!(view["instances"][0]["healthy"], false);
    for p in [&left, &right] {
        let id = p["id"].as_str().unwrap();
        assert_eq!(api.put(&format!("/v1/endpoints/{id}/status"), json!({"status": "active"})).0, 200);
        let (s, b) = api.put(
            &format!("/v1/endpoints/{id}/health"),
            json!({"health": {"healthy": true}, "traffic": {"packets_in": 3, "bytes_in": 300, "packets_out": 2, "bytes_out": 200}}),
        );
        assert_eq!(s, 200, "{b}");
    }
    let (_, view) = api.get("/v1/services/fw1");
    let i = &view["instances"][0];
    assert_eq!((i["name"].as_str(), i["host"].as_str(), &i["healthy"]), (Some("i1"), Some("h1"), &json!(true)), "{view}");
    assert_eq!(i["ports"][0]["traffic"]["packets_in"], 3);
    // Agents mirror services, and the ports' health.
    let (_, snap) = api.get("/v1/snapshot");
    assert_eq!(snap["services"][0]["id"], svc["id"]);
    assert!(snap["endpoints"].as_array().unwrap().iter().any(|e| e["health"]["healthy"] == true));
    // Health is reported only for service ports.
    let (_, plain) = api.post("/v1/endpoints", json!({"network": "red", "host": "h1", "name": "plain"}));
    let id = plain["id"].as_str().unwrap();
    assert_error(
        &api.put(&format!("/v1/endpoints/{id}/health"), json!({"health": {"healthy": true}})),
        400,
        "invalid_argument",
        Some("id"),
    );

    // In use: the service has instances; its networks and template are named by it.
    assert_error(&api.delete("/v1/services/fw1"), 409, "in_use", None);
    assert_error(&api.delete("/v1/service-templates/fw"), 409, "in_use", None);
    assert_error(&api.delete("/v1/networks/red"), 409, "in_use", None);
    for p in [&left, &right] {
        assert_eq!(api.delete(&format!("/v1/endpoints/{}", p["id"].as_str().unwrap())).0, 204);
    }
    assert_eq!(api.delete("/v1/services/fw1").0, 204);
    assert_eq!(api.delete("/v1/service-templates/fw").0, 204);
    assert_eq!(api.get("/v1/services").1, json!([]));
}

#[test]
fn bad_templates_and_services_are_refused_with_their_field() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    setup(&api);
    let bad = |body: Value| api.post("/v1/service-templates", body);
    assert_error(&bad(json!({"name": "t", "interfaces": ["left", "mgmt"]})), 400, "invalid_argument", Some("interfaces"));
    assert_error(
        &bad(json!({"name": "t", "interfaces": ["left", "right", "up"]})),
        400,
        "invalid_argument",
        Some("interfaces[2]"),
    );
    assert_error(
        &bad(json!({"name": "t", "interfaces": ["left", "right"], "mode": "transparent"})),
        400,
        "invalid_argument",
        Some("mode"),
    );
    let svc = |body: Value| api.post("/v1/services", body);
    assert_error(
        &svc(json!({"name": "loop", "template": "fw", "left": "red", "right": "red"})),
        400,
        "invalid_argument",
        Some("right"),
    );
    assert_error(
        &svc(json!({"name": "s", "template": "nope", "left": "red", "right": "green"})),
        404,
        "not_found",
        Some("template"),
    );
    assert_error(&svc(json!({"name": "s", "template": "fw", "left": "nope", "right": "green"})), 404, "not_found", Some("left"));
    assert_error(
        &svc(json!({"name": "s", "template": "fw", "left": "red", "right": "green", "management": "blue"})),
        400,
        "invalid_argument",
        Some("management"),
    );
    assert_error(
        &svc(json!({"name": "s", "template": "fw", "left": "red", "right": "green", "probe": "http"})),
        400,
        "invalid_argument",
        Some("probe"),
    );
    // Instances to run go where an agent is.
    assert_error(
        &svc(json!({"name": "s", "template": "fw", "left": "red", "right": "green",
                    "run": {"image": "tessera/vnf", "hosts": ["h9"], "instances": 1}})),
        404,
        "not_found",
        Some("run.hosts[0]"),
    );
    assert_error(
        &svc(json!({"name": "s", "template": "fw", "left": "red", "right": "green",
                    "run": {"image": "tessera/vnf", "hosts": ["h1"], "instances": 99}})),
        400,
        "invalid_argument",
        Some("run.instances"),
    );
    // Only a fabric administrator has containers run on hosts.
    let (s, member) = api.post("/v1/tokens", json!({"name": "m", "project": "default-domain:admin", "role": "member"}));
    assert_eq!(s, 201, "{member}");
    let m = Api::as_caller(&c, &Caller::Token(member["secret"].as_str().unwrap().into()));
    assert_error(
        &m.post(
            "/v1/services",
            json!({"name": "s", "template": "fw", "left": "red", "right": "green",
                    "run": {"image": "tessera/vnf", "hosts": ["h1"], "instances": 1}}),
        ),
        403,
        "permission_denied",
        None,
    );
    // Nothing was made by the refusals.
    let (_, all) = api.get("/v1/services");
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");
    assert_eq!(api.get("/v1/service-templates").1.as_array().unwrap().len(), 1);
}

#[test]
fn rules_apply_chains_that_join_their_networks() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    setup(&api);
    // A second service from green to blue, to chain after fw1.
    let (s, b) = api.post("/v1/services", json!({"name": "fw2", "template": "fw", "left": "green", "right": "blue"}));
    assert_eq!(s, 201, "{b}");
    let policy = |rules: Value| api.post("/v1/policies", json!({"name": "p", "rules": rules}));

    let (s, p) = policy(json!(["pass tcp red any > green 80 apply-service fw1"]));
    assert_eq!(s, 201, "{p}");
    assert_eq!(p["rules"][0]["services"], json!(["default-domain:admin:fw1"]));
    assert_eq!(api.delete(&format!("/v1/policies/{}", p["id"].as_str().unwrap())).0, 204);
    let (s, p) = policy(json!(["pass any red any <> blue any apply-service fw1,fw2"]));
    assert_eq!(s, 201, "a chain of two joined by green: {p}");
    // A rule naming a chained service cannot lose it.
    assert_error(&api.delete("/v1/services/fw2"), 409, "in_use", None);
    assert_eq!(api.delete(&format!("/v1/policies/{}", p["id"].as_str().unwrap())).0, 204);

    let refused = |rules: Value, code: u16, field: &str| {
        let r = policy(rules);
        assert_error(&r, code, if code == 404 { "not_found" } else { "invalid_argument" }, Some(field));
    };
    refused(json!(["pass tcp red any > green 80 apply-service nope"]), 404, "rules[0].services");
    refused(json!(["pass any any any > any any", "pass tcp green any > red 80 apply-service fw1"]), 400, "rules[1].services");
    refused(json!(["pass tcp red any > blue 80 apply-service fw1"]), 400, "rules[0].services");
    refused(json!(["pass tcp red any > blue 80 apply-service fw2,fw1"]), 400, "rules[0].services");
    refused(json!(["deny tcp red any > green 80 apply-service fw1"]), 400, "rules[0].services");
    refused(json!(["pass tcp red any > 10.2.0.0/24 80 apply-service fw1"]), 400, "rules[0].dst");
    assert_eq!(api.get("/v1/policies").1, json!([]), "nothing half made");

    // Rule-level edits are checked the same way.
    let (s, p) = policy(json!(["pass any any any <> any any"]));
    assert_eq!(s, 201, "{p}");
    let id = p["id"].as_str().unwrap();
    let r = api.put(&format!("/v1/policies/{id}/rules/0"), json!("pass tcp red any > blue 80 apply-service fw1"));
    assert_error(&r, 400, "invalid_argument", Some("rule.services"));
    let (s, b) = api.put(&format!("/v1/policies/{id}/rules/0"), json!("pass tcp red any > green 80 apply-service fw1"));
    assert_eq!(s, 200, "{b}");
}
