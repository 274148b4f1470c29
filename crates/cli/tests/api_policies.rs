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
    assert!(doc["paths"]["/v1/policies/{id}/rules/{index}"]["put"].is_object());
    assert!(doc["paths"]["/v1/policies/{id}/rules/{index}"]["delete"].is_object());
    assert!(doc["paths"]["/v1/policies/{id}/rules"]["post"].is_object());
    assert!(doc["components"]["schemas"]["RuleChange"].is_object());
}

/// The ports of the rules of `policy` as the API and the snapshot agents
/// start from show them (they must agree).
fn stored_ports(api: &Api, policy: &str) -> Vec<u64> {
    let (_, p) = api.get(&format!("/v1/policies/{policy}"));
    let ports: Vec<u64> = p["rules"].as_array().unwrap().iter().map(|r| r["dst_ports"][0]["start"].as_u64().unwrap()).collect();
    let (_, snap) = api.get("/v1/snapshot");
    let sp = snap["policies"].as_array().unwrap().iter().find(|x| x["id"] == p["id"]).expect("the policy is in the snapshot");
    let from_snapshot: Vec<u64> = sp["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["rules"].as_array().unwrap().iter().map(|r| r["dst_ports"][0]["start"].as_u64().unwrap()))
        .collect();
    assert_eq!(ports, from_snapshot, "the API and the snapshot disagree");
    ports
}

#[test]
fn one_rule_is_replaced_inserted_and_deleted_in_a_big_policy() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    networks(&api);
    let n = 1000u64;
    let rules: Vec<String> = (0..n).map(|i| format!("deny tcp red any > green {}", 10_000 + i)).collect();
    let (s, p) = api.post("/v1/policies", json!({"name": "big", "rules": rules}));
    assert_eq!(s, 201, "{p}");
    let mut want: Vec<u64> = (0..n).map(|i| 10_000 + i).collect();
    assert_eq!(stored_ports(&api, "big"), want);

    // Replace: the answer names the rule and the policy's size.
    let (s, ch) = api.put("/v1/policies/big/rules/700", json!("pass tcp red any > green 80"));
    assert_eq!(s, 200, "{ch}");
    assert_eq!((ch["index"].as_u64(), ch["rules"].as_u64()), (Some(700), Some(n)));
    assert_eq!(ch["rule"]["action"], "pass");
    want[700] = 80;
    assert_eq!(stored_ports(&api, "big"), want);
    // The same change again is the same state (retry-safe).
    let (s, _) = api.put("/v1/policies/big/rules/700", json!("pass tcp red any > green 80"));
    assert_eq!(s, 200);
    assert_eq!(stored_ports(&api, "big"), want);

    // Insert in the middle (chunks fill and split), at the start, at the end.
    for k in 0..300u64 {
        let (s, ch) =
            api.post("/v1/policies/big/rules", json!({"rule": format!("deny udp red any > green {}", 30_000 + k), "at": 5}));
        assert_eq!(s, 200, "{ch}");
        want.insert(5, 30_000 + k);
    }
    let (s, _) = api.post("/v1/policies/big/rules", json!({"rule": "deny tcp red any > green 1", "at": 0}));
    assert_eq!(s, 200);
    want.insert(0, 1);
    let (s, ch) = api.post("/v1/policies/big/rules", json!({"rule": "deny tcp red any > green 2"}));
    assert_eq!(s, 200);
    assert_eq!(ch["index"].as_u64(), Some(want.len() as u64));
    want.push(2);
    assert_eq!(stored_ports(&api, "big"), want);

    // Delete: the later rules move up.
    for last in [false, false, false, true] {
        let i = if last { want.len() - 1 } else { [0usize, 100, 500][want.len() % 3] };
        let (s, ch) = api.delete(&format!("/v1/policies/big/rules/{i}"));
        assert_eq!(s, 200, "{ch}");
        assert!(ch.get("rule").is_none());
        want.remove(i);
    }
    assert_eq!(stored_ports(&api, "big"), want);

    // A whole update keeps working after rule-level edits.
    let (s, _) = api.patch("/v1/policies/big", json!({"rules": ["deny tcp red any > green 9"]}));
    assert_eq!(s, 200);
    assert_eq!(stored_ports(&api, "big"), vec![9]);
    let (s, _) = api.delete("/v1/policies/big/rules/0");
    assert_eq!(s, 200);
    let (_, p) = api.get("/v1/policies/big");
    assert_eq!(p["rules"].as_array().unwrap().len(), 0);
    let (s, _) = api.post("/v1/policies/big/rules", json!({"rule": "deny tcp red any > green 3"}));
    assert_eq!(s, 200);
    assert_eq!(stored_ports(&api, "big"), vec![3]);
    let (s, _) = api.delete("/v1/policies/big");
    assert_eq!(s, 204);
    let (_, snap) = api.get("/v1/snapshot");
    assert_eq!(snap["policies"].as_array().unwrap().len(), 0, "{snap}");
}

#[test]
fn rule_level_changes_refuse_bad_input_and_warn_about_shadowing() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    networks(&api);
    let (s, _) =
        api.post("/v1/policies", json!({"name": "web", "rules": ["pass tcp red any <> green 80", "deny any any any > any any"]}));
    assert_eq!(s, 201);
    assert_error(&api.put("/v1/policies/web/rules/5", json!("pass tcp red any > green 80")), 404, "not_found", Some("index"));
    assert_error(
        &api.put("/v1/policies/web/rules/x", json!("pass tcp red any > green 80")),
        400,
        "invalid_argument",
        Some("index"),
    );
    assert_error(&api.put("/v1/policies/web/rules/0", json!("pass tcp red any > blue 80")), 404, "not_found", Some("rule.dst"));
    assert_error(
        &api.put("/v1/policies/web/rules/0", json!("pass icmp red 80 > green any")),
        400,
        "invalid_argument",
        Some("rule.src_ports"),
    );
    assert_error(
        &api.post("/v1/policies/web/rules", json!({"rule": "pass any any any > any any", "at": 3})),
        400,
        "invalid_argument",
        Some("at"),
    );
    assert_error(&api.delete("/v1/policies/web/rules/2"), 404, "not_found", Some("index"));
    assert_error(&api.put("/v1/policies/nope/rules/0", json!("pass any any any > any any")), 404, "not_found", None);
    let (_, p) = api.get("/v1/policies/web");
    assert_eq!(p["rules"].as_array().unwrap().len(), 2, "nothing changed: {p}");

    // A rule the earlier one covers is stored, with a warning about it.
    let (s, ch) = api.post("/v1/policies/web/rules", json!({"rule": "deny tcp red any > green 80"}));
    assert_eq!(s, 200, "{ch}");
    assert_eq!(ch["warnings"][0]["field"], "rules[2]", "{ch}");
    assert_eq!(ch["warnings"][0]["earlier"], "rules[0]", "{ch}");
}

#[test]
fn the_cli_changes_one_rule() {
    let c = ControllerProcess::start();
    networks(&Api::new(&c));
    let (code, _, err) =
        c.cli(&["policy", "add", "p", "--rule", "deny tcp red any > green 22", "--rule", "pass any any any <> any any"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = c.cli(&["policy", "rule", "set", "p", "0", "reject tcp red any > green 23"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("rule 0 replaced") && out.contains("2 rules"), "{out}");
    let (code, out, _) = c.cli(&["policy", "rule", "insert", "p", "deny udp red any > green 53", "--at", "1", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["index"].as_u64(), v["rules"].as_u64()), (Some(1), Some(3)), "{v}");
    // A rule the last one covers: inserted, with a warning on stderr.
    let (code, _, err) = c.cli(&["policy", "rule", "insert", "p", "deny icmp red any > green any"]);
    assert_eq!(code, 0);
    assert!(err.contains("warning: rules[3] is shadowed by rules[2]"), "{err}");
    let (code, _, _) = c.cli(&["policy", "rule", "delete", "p", "3"]);
    assert_eq!(code, 0);
    let (_, out, _) = c.cli(&["policy", "show", "p"]);
    let lines: Vec<&str> = out.lines().filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit())).collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].contains("reject tcp") && lines[1].contains("deny udp") && lines[2].contains("pass any"), "{out}");
    let (code, _, err) = c.cli(&["policy", "rule", "delete", "p", "7"]);
    assert_eq!(code, 1, "a missing rule is refused");
    assert!(err.contains("not found") && err.contains("3 rules"), "{err}");
}
