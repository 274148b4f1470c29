//! Trust at the controller's edge, with a real controller process serving
//! HTTPS: every call names its caller (a certificate of the fabric, or a
//! bearer token); a host acts only for itself; a token acts in its project
//! with its role; only an administrator manages the fabric.

mod support;

use serde_json::json;
use support::{assert_error, Api, Caller, ControllerProcess};

fn fabric(c: &ControllerProcess) {
    let admin = Api::new(c);
    assert_eq!(admin.post("/v1/networks", json!({"name": "net", "subnets": [{"cidr": "10.8.0.0/24"}]})).0, 201);
    assert_eq!(admin.post("/v1/projects", json!({"name": "default-domain:blue"})).0, 201);
}

#[test]
fn a_call_without_credentials_is_refused_with_401_but_health_is_open() {
    let c = ControllerProcess::start();
    let nobody = Api::as_caller(&c, &Caller::Nobody);
    assert_error(&nobody.get("/v1/networks"), 401, "unauthenticated", None);
    assert_error(&nobody.put("/v1/hosts/h1", json!({"underlay_ip": "10.99.0.1"})), 401, "unauthenticated", None);
    assert_eq!(nobody.get("/healthz").0, 200);
    assert_eq!(nobody.get("/readyz").0, 200);
    assert_eq!(nobody.get("/v1/openapi.json").0, 200);
    assert_error(&Api::as_caller(&c, &Caller::Token("tsr_nope".into())).get("/v1/networks"), 401, "unauthenticated", None);
}

#[test]
fn plain_http_to_a_tls_controller_reaches_nothing() {
    let c = ControllerProcess::start();
    let plain = format!("http://127.0.0.1:{}/v1/networks", c.port);
    let r = reqwest::blocking::Client::new().get(plain).send();
    assert!(r.is_err() || !r.unwrap().status().is_success(), "a plain request must not be served");
}

#[test]
fn a_host_certificate_acts_only_for_its_host() {
    let c = ControllerProcess::start();
    fabric(&c);
    let h1 = Api::as_caller(&c, &Caller::Host("h1".into()));
    assert_eq!(h1.put("/v1/hosts/h1", json!({"underlay_ip": "10.99.0.1"})).0, 200);
    let r = h1.put("/v1/hosts/h2", json!({"underlay_ip": "10.99.0.2"}));
    assert_error(&r, 403, "permission_denied", None);
    assert!(r.1["error"]["message"].as_str().unwrap().contains("host h1"), "{}", r.1);
    assert_eq!(Api::new(&c).put("/v1/hosts/h2", json!({"underlay_ip": "10.99.0.2"})).0, 200);

    // Endpoints: its own, never another host's.
    let (s, mine) = h1.post("/v1/endpoints", json!({"network": "net", "host": "h1", "owner": {"netns": "/run/netns/a"}}));
    assert_eq!(s, 201, "{mine}");
    let r = h1.post("/v1/endpoints", json!({"network": "net", "host": "h2", "owner": {"netns": "/run/netns/b"}}));
    assert_error(&r, 403, "permission_denied", None);
    let (s, theirs) =
        Api::new(&c).post("/v1/endpoints", json!({"network": "net", "host": "h2", "owner": {"netns": "/run/netns/b"}}));
    assert_eq!(s, 201, "{theirs}");
    let theirs_id = theirs["id"].as_str().unwrap();
    assert_error(&h1.delete(&format!("/v1/endpoints/{theirs_id}")), 403, "permission_denied", None);
    assert_error(
        &h1.put(&format!("/v1/endpoints/{theirs_id}/status"), json!({"status": "active"})),
        403,
        "permission_denied",
        None,
    );
    assert_eq!(h1.put(&format!("/v1/endpoints/{}/status", mine["id"].as_str().unwrap()), json!({"status": "active"})).0, 200);

    // What is not the data plane's is not a host's to read or change.
    assert_error(&h1.get("/v1/policies"), 403, "permission_denied", None);
    assert_error(&h1.get("/v1/projects"), 403, "permission_denied", None);
    assert_error(&h1.post("/v1/projects", json!({"name": "default-domain:x"})), 403, "permission_denied", None);
    assert_error(&h1.delete("/v1/hosts/h2"), 403, "permission_denied", None);
    assert_error(&h1.get("/v1/tokens"), 403, "permission_denied", None);
    assert_eq!(h1.get("/v1/snapshot").0, 200, "the mirror is a host's to read");
}

#[test]
fn tokens_act_in_their_project_with_their_role_and_only_an_administrator_makes_them() {
    let c = ControllerProcess::start();
    fabric(&c);
    let admin = Api::new(&c);
    let (s, reader) = admin.post("/v1/tokens", json!({"name": "ci", "project": "default-domain:blue", "role": "reader"}));
    assert_eq!(s, 201, "{reader}");
    let secret = reader["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("tsr_"));
    let (_, list) = admin.get("/v1/tokens");
    assert!(!list.to_string().contains(&secret), "secrets are never listed: {list}");

    let r = Api::as_caller(&c, &Caller::Token(secret.clone()));
    assert_eq!(r.get("/v1/networks").0, 200, "a reader reads");
    assert_error(
        &r.post("/v1/networks", json!({"name": "x", "project": "default-domain:blue", "subnets": [{"cidr": "10.9.0.0/24"}]})),
        403,
        "permission_denied",
        None,
    );
    assert_error(&r.post("/v1/tokens", json!({"name": "more", "role": "admin"})), 403, "permission_denied", None);
    assert_error(&r.put("/v1/hosts/h9", json!({"underlay_ip": "10.99.0.9"})), 403, "permission_denied", None);

    let (_, member) = admin.post("/v1/tokens", json!({"name": "dev", "project": "default-domain:blue", "role": "member"}));
    let m = Api::as_caller(&c, &Caller::Token(member["secret"].as_str().unwrap().into()));
    assert_eq!(
        m.post("/v1/networks", json!({"name": "x", "project": "default-domain:blue", "subnets": [{"cidr": "10.9.0.0/24"}]})).0,
        201
    );

    assert_error(&admin.post("/v1/tokens", json!({"name": "x", "role": "reader"})), 400, "invalid_argument", Some("project"));
    // Revoked, it opens nothing.
    assert_eq!(admin.delete(&format!("/v1/tokens/{}", reader["id"].as_str().unwrap())).0, 204);
    assert_error(&r.get("/v1/networks"), 401, "unauthenticated", None);
}

#[test]
fn another_projects_policy_and_networks_are_used_only_with_consent() {
    let c = ControllerProcess::start();
    let admin = Api::new(&c);
    assert_eq!(admin.post("/v1/projects", json!({"name": "default-domain:blue"})).0, 201);
    let (s, theirs) =
        admin.post("/v1/policies", json!({"name": "default-domain:blue:theirs", "rules": ["pass any any any <> any any"]}));
    assert_eq!(s, 201, "{theirs}");
    let (s, closed) =
        admin.post("/v1/networks", json!({"name": "default-domain:blue:closed", "subnets": [{"cidr": "10.31.0.0/24"}]}));
    assert_eq!(s, 201, "{closed}");
    let (s, open) = admin
        .post("/v1/networks", json!({"name": "default-domain:blue:open", "shared": true, "subnets": [{"cidr": "10.32.0.0/24"}]}));
    assert_eq!(s, 201, "{open}");

    // A network of the default project attaches blue's policy, by UUID: refused.
    let r = admin.post(
        "/v1/networks",
        json!({"name": "mine", "subnets": [{"cidr": "10.30.0.0/24"}], "policies": [theirs["id"].as_str().unwrap()]}),
    );
    assert_error(&r, 400, "invalid_argument", Some("policies[0]"));
    assert!(r.1["error"]["message"].as_str().unwrap().contains("own project"), "{}", r.1);

    // A policy names blue's network: only the shared one.
    let r = admin.post("/v1/policies", json!({"name": "p1", "rules": ["pass any default-domain:blue:closed any <> any any"]}));
    assert_error(&r, 400, "invalid_argument", Some("rules[0].src"));
    assert!(r.1["error"]["message"].as_str().unwrap().contains("not shared"), "{}", r.1);
    let (s, b) = admin.post("/v1/policies", json!({"name": "p2", "rules": ["pass any default-domain:blue:open any <> any any"]}));
    assert_eq!(s, 201, "a shared network may be named: {b}");
    let r = admin.put("/v1/policies/p2/rules/0", json!("pass any default-domain:blue:closed any <> any any"));
    assert_error(&r, 400, "invalid_argument", Some("rule.src"));
}

#[test]
fn a_network_shared_with_a_project_is_usable_by_that_project_only() {
    let c = ControllerProcess::start();
    fabric(&c);
    let admin = Api::new(&c);
    for p in ["default-domain:blue", "default-domain:green"] {
        let (s, b) = admin.post("/v1/projects", json!({"name": p}));
        assert!(s == 200 || s == 201, "{b}");
    }
    let r = admin.post(
        "/v1/networks",
        json!({"name": "default-domain:blue:x", "shared_with": ["default-domain:nobody"], "subnets": [{"cidr": "10.51.0.0/24"}]}),
    );
    assert_error(&r, 404, "not_found", Some("shared_with[0]"));
    let r = admin.post(
        "/v1/networks",
        json!({"name": "default-domain:blue:x", "shared_with": ["a:b:c"], "subnets": [{"cidr": "10.51.0.0/24"}]}),
    );
    assert_error(&r, 400, "invalid_argument", Some("shared_with[0]"));
    let (s, net) = admin.post(
        "/v1/networks",
        json!({"name": "default-domain:blue:partner", "shared_with": ["default-domain:green"], "subnets": [{"cidr": "10.52.0.0/24"}]}),
    );
    assert_eq!(s, 201, "{net}");
    assert_eq!(net["shared_with"], json!(["default-domain:green"]));

    // green names it in a policy; the default project may not.
    let (s, b) = admin.post(
        "/v1/policies",
        json!({"name": "default-domain:green:p", "rules": ["pass any default-domain:blue:partner any <> any any"]}),
    );
    assert_eq!(s, 201, "shared with green: {b}");
    let r = admin.post("/v1/policies", json!({"name": "p", "rules": ["pass any default-domain:blue:partner any <> any any"]}));
    assert_error(&r, 400, "invalid_argument", Some("rules[0].src"));

    // A token of green lists, reads and attaches to it; one of the default project does not.
    let (_, g) = admin.post("/v1/tokens", json!({"name": "g", "project": "default-domain:green", "role": "member"}));
    let green = Api::as_caller(&c, &Caller::Token(g["secret"].as_str().unwrap().into()));
    let (_, list) = green.get("/v1/networks");
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|n| n["fq_name"].as_str().unwrap()).collect();
    assert_eq!(names, ["default-domain:blue:partner"], "{list}");
    assert_eq!(green.get("/v1/networks/default-domain:blue:partner").0, 200);
    assert_error(
        &green.patch("/v1/networks/default-domain:blue:partner", json!({"shared": true})),
        403,
        "permission_denied",
        None,
    );
    let (_, a) = admin.post("/v1/tokens", json!({"name": "a", "project": "default-domain:admin", "role": "member"}));
    let other = Api::as_caller(&c, &Caller::Token(a["secret"].as_str().unwrap().into()));
    assert_error(&other.get("/v1/networks/default-domain:blue:partner"), 403, "permission_denied", None);

    // Unsharing takes it back.
    let (s, n) = admin.patch("/v1/networks/default-domain:blue:partner", json!({"unshare_with": ["default-domain:green"]}));
    assert_eq!((s, n["shared_with"].clone()), (200, serde_json::Value::Null), "{n}");
    assert_error(&green.get("/v1/networks/default-domain:blue:partner"), 403, "permission_denied", None);
}

#[test]
fn a_token_sees_and_changes_only_its_projects_objects() {
    let c = ControllerProcess::start();
    fabric(&c);
    let admin = Api::new(&c);
    let (s, b) = admin.post("/v1/networks", json!({"name": "default-domain:blue:b1", "subnets": [{"cidr": "10.41.0.0/24"}]}));
    assert_eq!(s, 201, "{b}");
    let (s, b) = admin.post("/v1/networks", json!({"name": "common", "shared": true, "subnets": [{"cidr": "10.42.0.0/24"}]}));
    assert_eq!(s, 201, "{b}");
    let (_, member) = admin.post("/v1/tokens", json!({"name": "dev", "project": "default-domain:blue", "role": "member"}));
    let m = Api::as_caller(&c, &Caller::Token(member["secret"].as_str().unwrap().into()));

    let (_, list) = m.get("/v1/networks");
    let mut names: Vec<&str> = list.as_array().unwrap().iter().map(|n| n["fq_name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["default-domain:admin:common", "default-domain:blue:b1"], "its own and the shared one");
    assert_eq!(m.get("/v1/networks/default-domain:admin:common").0, 200, "a shared network may be read");
    assert_error(&m.get("/v1/networks/default-domain:admin:net"), 403, "permission_denied", None);
    assert_error(&m.patch("/v1/networks/default-domain:admin:common", json!({"shared": false})), 403, "permission_denied", None);
    assert_error(&m.delete("/v1/networks/default-domain:admin:net"), 403, "permission_denied", None);
    assert_error(
        &m.post("/v1/networks", json!({"name": "x", "subnets": [{"cidr": "10.43.0.0/24"}]})),
        403,
        "permission_denied",
        None,
    );
    assert_eq!(m.post("/v1/networks", json!({"name": "default-domain:blue:b2", "subnets": [{"cidr": "10.44.0.0/24"}]})).0, 201);
    assert_error(&m.get("/v1/projects/default-domain:admin"), 403, "permission_denied", None);
    assert_eq!(m.get("/v1/projects/default-domain:blue").0, 200);
    assert_error(
        &m.post("/v1/endpoints", json!({"network": "default-domain:admin:net", "host": "h1"})),
        403,
        "permission_denied",
        None,
    );
}
