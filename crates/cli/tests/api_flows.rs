//! Flow records through a real controller process: a host reports its
//! own, bounded; administrators query them by filter and in groups.

mod support;

use serde_json::{json, Value};
use support::{assert_error, Api, Caller, ControllerProcess};

fn record(host: &str, id: u64, dport: u16, bytes: u64, end: Option<u64>) -> Value {
    json!({"host": host, "id": id, "protocol": 6, "src": "10.1.0.2", "sport": 40000 + id, "dst": "10.1.0.3", "dport": dport,
           "src_endpoint": "a", "dst_endpoint": if dport == 80 { "web" } else { "db" }, "src_network": "default-domain:admin:red",
           "verdict": "forwarded", "start_ms": 1000 + id, "end_ms": end, "packets": 3, "bytes": bytes,
           "reply_packets": 2, "reply_bytes": 10})
}

#[test]
fn hosts_report_their_flows_and_administrators_query_them() {
    let c = ControllerProcess::start();
    let admin = Api::new(&c);
    assert_eq!(admin.put("/v1/hosts/h1", json!({"underlay_ip": "10.99.0.1"})).0, 200);
    let h1 = Api::as_caller(&c, &Caller::Host("h1".into()));
    let records = json!({"records": [record("h1", 1, 80, 5000, Some(2000)), record("h1", 2, 5432, 100, None), record("h1", 3, 80, 700, None)]});
    let (s, b) = h1.post("/v1/hosts/h1/flows", records);
    assert_eq!(s, 204, "{b}");
    // A running flow reported again is updated, not doubled.
    assert_eq!(h1.post("/v1/hosts/h1/flows", json!({"records": [record("h1", 3, 80, 900, Some(2500))]})).0, 204);

    let (s, all) = admin.get("/v1/flows");
    assert_eq!(s, 200, "{all}");
    let ids: Vec<u64> = all.as_array().unwrap().iter().map(|f| f["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, vec![3, 2, 1], "newest first, each once");
    assert_eq!(all[0]["bytes"], 900);
    assert_eq!(admin.get("/v1/flows?port=5432").1.as_array().unwrap().len(), 1);
    assert_eq!(admin.get("/v1/flows?endpoint=web&limit=1").1.as_array().unwrap().len(), 1);
    assert_eq!(admin.get("/v1/flows?network=red").1.as_array().unwrap().len(), 3);
    assert_eq!(admin.get("/v1/flows?host=h2").1, json!([]));
    assert_error(&admin.get("/v1/flows?limit=100000"), 400, "invalid_argument", Some("limit"));
    let (_, top) = admin.get("/v1/flows/top?by=port");
    assert_eq!(top[0]["key"], "6/80", "{top}");
    assert_eq!(top[0]["flows"], 2);
    assert_eq!(top[0]["bytes"], 5000 + 10 + 900 + 10);

    // A host reports only its own flows, within bounds; it reads none.
    assert_error(&h1.post("/v1/hosts/h2/flows", json!({"records": []})), 403, "permission_denied", None);
    assert_error(
        &h1.post("/v1/hosts/h1/flows", json!({"records": [record("h2", 9, 80, 1, None)]})),
        400,
        "invalid_argument",
        Some("records[0].host"),
    );
    let mut long = record("h1", 9, 80, 1, None);
    long["src_endpoint"] = json!("x".repeat(300));
    assert_error(
        &h1.post("/v1/hosts/h1/flows", json!({"records": [long]})),
        400,
        "invalid_argument",
        Some("records[0].src_endpoint"),
    );
    let many: Vec<Value> = (0..10_001).map(|i| record("h1", 100 + i, 80, 1, None)).collect();
    assert_error(&h1.post("/v1/hosts/h1/flows", json!({"records": many})), 400, "invalid_argument", Some("records"));
    assert_error(&h1.get("/v1/flows"), 403, "permission_denied", None);
    assert_eq!(admin.get("/v1/flows").1.as_array().unwrap().len(), 3, "nothing of the refused reports was kept");
}
