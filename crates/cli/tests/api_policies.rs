//! The policy API of a real controller process: warnings about shadowed
//! rules, and the hit counters agents report.

mod support;

use serde_json::json;
use support::{assert_error, Api, ControllerProcess};

fn networks(api: &Api) {
    for (name, cidr) in [("red", "192.168.10.0/24"), ("green", "192.168.20.0/24")] {
        let (s, b) = api.post("/v1/networks", json!({"name": name, "subnets": [{"cidr": cidr}]}));
        assert_eq!(s, 201, "{b}");
    }
}

#[test]
fn a_shadowed_rule_is_stored_with_a_warning_naming_the_earlier_rule() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    networks(&api);
    let (s, p) = api.post(
        "/v1/policies",
        json!({"name": "web", "rules": ["pass tcp red any <> green any", "deny tcp red any > green 22", "pass icmp red any <> green any"]}),
    );
    assert_eq!(s, 201, "{p}");
    let w = p["warnings"].as_array().expect("a warnings array");
    assert_eq!(w.len(), 1, "{p}");
    assert_eq!(w[0]["field"], "rules[1]");
    assert_eq!(w[0]["earlier"], "rules[0]");
    assert_eq!(w[0]["code"], "shadowed");
    assert!(w[0]["message"].as_str().unwrap().contains("rules[1] is shadowed by rules[0]"), "{p}");
    let (_, stored) = api.get("/v1/policies/web");
    assert_eq!(stored["rules"].as_array().unwrap().len(), 3, "the policy is stored whole");

    let (s, up) =
        api.patch("/v1/policies/web", json!({"rules": ["deny tcp red any > green 22", "pass tcp red any <> green any"]}));
    assert_eq!(s, 200, "{up}");
    assert!(up.get("warnings").is_none(), "no rule is shadowed any more: {up}");
    let (s, up) = api.patch("/v1/policies/web", json!({"rules": ["deny any any any > any any", "pass udp red 53 > any any"]}));
    assert_eq!(s, 200, "{up}");
    assert_eq!(up["warnings"][0]["field"], "rules[1]");
}

#[test]
fn the_cli_prints_warnings_on_stderr() {
    let c = ControllerProcess::start();
    networks(&Api::new(&c));
    let (code, _, err) =
        c.cli(&["policy", "add", "p", "--rule", "pass any any any <> any any", "--rule", "deny tcp any any > any 22"]);
    assert_eq!(code, 0);
    assert!(err.contains("warning: rules[1] is shadowed by rules[0]"), "{err}");
}

#[test]
fn counters_reported_by_hosts_are_summed_per_rule() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    networks(&api);
    let (_, p) = api
        .post("/v1/policies", json!({"name": "web", "rules": ["pass tcp red any <> green 80", "deny any any any <> any any"]}));
    let id = p["id"].as_str().unwrap().to_string();
    for (h, ip) in [("h1", "10.99.0.1"), ("h2", "10.99.0.2")] {
        assert_eq!(api.put(&format!("/v1/hosts/{h}"), json!({"underlay_ip": ip})).0, 200);
    }
    let report = |packets: u64| json!({"rules": [{"policy": id, "rule": 0, "packets": packets, "bytes": packets * 60}, {"policy": id, "rule": 1, "packets": 0, "bytes": 0}]});
    assert_eq!(api.put("/v1/hosts/h1/counters", report(3)).0, 204);
    assert_eq!(api.put("/v1/hosts/h2/counters", report(4)).0, 204);
    let (s, counters) = api.get("/v1/policies/web/counters");
    assert_eq!(s, 200, "{counters}");
    assert_eq!(counters["rules"], json!([{"rule": 0, "packets": 7, "bytes": 420}, {"rule": 1, "packets": 0, "bytes": 0}]));
    assert_eq!(counters["hosts"]["h1"][0]["packets"], 3);
    let (_, shown) = api.get(&format!("/v1/policies/{id}"));
    assert_eq!(shown["counters"], counters, "the policy shows its counters");

    // A newer report replaces the host's previous one.
    assert_eq!(api.put("/v1/hosts/h1/counters", report(10)).0, 204);
    assert_eq!(api.get("/v1/policies/web/counters").1["rules"][0]["packets"], 14);

    assert_error(&api.put("/v1/hosts/ghost/counters", report(1)), 404, "not_found", None);
    let (code, out, _) = c.cli(&["policy", "show", "web"]);
    assert_eq!(code, 0);
    let row = out.lines().find(|l| l.contains("green 80")).unwrap_or_else(|| panic!("{out}"));
    assert!(row.split_whitespace().rev().take(2).eq(["840", "14"]), "packets and bytes of rule 0: {out}");
}

#[test]
fn the_openapi_document_describes_counters_and_warnings() {
    let c = ControllerProcess::start();
    let (_, doc) = Api::new(&c).get("/v1/openapi.json");
    assert!(doc["paths"]["/v1/policies/{id}/counters"]["get"].is_object());
    assert!(doc["paths"]["/v1/hosts/{name}/counters"]["put"].is_object());
    assert!(doc["components"]["schemas"]["PolicyView"].is_object());
    assert!(doc["components"]["schemas"]["PolicyWarning"].is_object());
}
