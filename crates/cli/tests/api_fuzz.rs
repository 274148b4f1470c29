//! Random and mutated JSON to every route of a real controller process:
//! never a 5xx (the controller's storage errors are the only documented
//! ones, and its store is healthy here), never a panic or a hang, always the
//! error body on a refusal, and the controller alive at the end.

mod support;

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};
use support::{Caller, ControllerProcess};

/// Arbitrary JSON, a few levels deep, with the values that break parsers:
/// huge and negative numbers, odd strings, empty and nested containers.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
        prop_oneof![
            Just("10.0.0.0/8"),
            Just("::/0"),
            Just("/proc/1/ns/net"),
            Just("../../x y"),
            Just("default-domain:admin:net"),
            Just("pass tcp any any <> any 80"),
            Just("-1"),
            Just("")
        ]
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    "[a-z_]{1,12}",
                    Just("name".to_string()),
                    Just("subnets".to_string()),
                    Just("rules".to_string()),
                    Just("owner".to_string()),
                    Just("ips".to_string()),
                    Just("network".to_string()),
                    Just("host".to_string())
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid body with one field replaced by arbitrary JSON.
fn mutated(valid: Value) -> impl Strategy<Value = Value> {
    let keys: Vec<String> = valid.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
    (0..keys.len().max(1), any_json()).prop_map(move |(i, v)| {
        let mut body = valid.clone();
        if let (Some(o), Some(k)) = (body.as_object_mut(), keys.get(i)) {
            o.insert(k.clone(), v);
        }
        body
    })
}

const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/projects"),
    ("POST", "/v1/networks"),
    ("PATCH", "/v1/networks/net"),
    ("POST", "/v1/networks/net/reservations"),
    ("POST", "/v1/endpoints"),
    ("PUT", "/v1/endpoints/00000000-0000-0000-0000-000000000001/status"),
    ("PUT", "/v1/hosts/h1"),
    ("PUT", "/v1/hosts/h1/counters"),
    ("POST", "/v1/policies"),
    ("PATCH", "/v1/policies/p"),
    ("POST", "/v1/policies/p/rules"),
    ("PUT", "/v1/policies/p/rules/0"),
    ("POST", "/v1/tokens"),
];

fn valid_body(path: &str) -> Value {
    match path {
        "/v1/projects" => json!({"name": "default-domain:fz"}),
        "/v1/networks" => {
            json!({"name": "n", "subnets": [{"cidr": "10.50.0.0/24"}], "route_targets": ["64512:1"], "labels": {"a": "b"}})
        }
        "/v1/networks/net" => json!({"add_route_targets": ["64512:2"], "attach_policies": ["p"]}),
        "/v1/networks/net/reservations" => json!({"owner": "reservation:fz", "address": "10.8.0.9"}),
        "/v1/endpoints" => {
            json!({"network": "net", "host": "h1", "ips": ["10.8.0.7"], "owner": {"netns": "/run/netns/fz", "ifname": "eth0"}})
        }
        "/v1/hosts/h1" => json!({"underlay_ip": "10.99.0.1"}),
        "/v1/policies" => json!({"name": "q", "rules": ["pass tcp any any <> any 80"]}),
        "/v1/policies/p" => json!({"rules": ["deny any any any <> any any"]}),
        "/v1/policies/p/rules" => json!({"rule": "pass udp any any > any 53", "at": 0}),
        "/v1/policies/p/rules/0" => json!("pass any any any <> any any"),
        "/v1/tokens" => json!({"name": "fz", "role": "reader", "project": "default-domain:admin"}),
        _ => json!({"status": "active"}),
    }
}

#[test]
fn random_and_mutated_json_on_every_route_never_breaks_the_controller() {
    let c = ControllerProcess::start();
    let api = support::Api::new(&c);
    assert_eq!(api.post("/v1/networks", json!({"name": "net", "subnets": [{"cidr": "10.8.0.0/24"}]})).0, 201);
    assert_eq!(api.post("/v1/policies", json!({"name": "p", "rules": ["pass any any any <> any any"]})).0, 201);
    assert_eq!(api.put("/v1/hosts/h1", json!({"underlay_ip": "10.99.0.1"})).0, 200);
    let http = c.http_builder(&Caller::Admin).timeout(Duration::from_secs(10)).build().unwrap();
    let mut runner = TestRunner::new(Config { cases: 48, failure_persistence: None, ..Config::default() });
    for (method, path) in ROUTES {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let body = prop_oneof![any_json(), mutated(valid_body(path))];
        runner
            .run(&body, |b| {
                let r = http
                    .request(method.clone(), format!("{}{path}", c.url))
                    .body(b.to_string())
                    .send()
                    .map_err(|e| TestCaseError::fail(format!("{method} {path} did not answer: {e}")))?;
                let status = r.status().as_u16();
                let text = r.text().unwrap_or_default();
                prop_assert!(status < 500, "{} {} answered {}: {}\nbody sent: {}", method, path, status, text, b);
                if status >= 400 {
                    let v: Value = serde_json::from_str(&text).map_err(|_| TestCaseError::fail(format!("not JSON: {text}")))?;
                    prop_assert!(v["error"]["code"].is_string() && v["error"]["message"].is_string(), "{}", text);
                }
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{e}"));
    }
    // Not JSON at all, and truncated JSON.
    for raw in ["", "{", "[1,2", "\u{0}", "null", "{\"name\": \"x\"", "💥"] {
        for (method, path) in ROUTES {
            let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let r = http.request(m, format!("{}{path}", c.url)).body(raw.to_string()).send().unwrap();
            assert!(r.status().as_u16() < 500, "{method} {path} with {raw:?}: {}", r.status());
        }
    }
    assert_eq!(api.get("/healthz").0, 200, "the controller is alive");
    assert_eq!(api.get("/readyz").0, 200, "and ready");
}
