//! Flow records through a real controller process: a host reports its
//! own, bounded; administrators query them all by filter and in groups, a
//! project's tokens those with a side in its networks; hosts read none.

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

/// A record of `host` between two networks (`None`: outside the fabric).
fn between(host: &str, id: u64, src_network: Option<&str>, dst_network: Option<&str>, bytes: u64) -> Value {
    json!({"host": host, "id": id, "protocol": 17, "src": "10.1.0.2", "sport": 50000 + id, "dst": "10.2.0.3", "dport": 53,
           "src_network": src_network, "dst_network": dst_network, "verdict": "forwarded", "start_ms": 5000 + id,
           "packets": 1, "bytes": bytes, "reply_packets": 1, "reply_bytes": 0})
}

fn ids(flows: &Value) -> Vec<u64> {
    flows.as_array().unwrap_or_else(|| panic!("not a list: {flows}")).iter().map(|f| f["id"].as_u64().unwrap()).collect()
}

/// Two projects, blue and red, each with a reader's token; a host `h1` that
/// reported flows within blue, within red, from blue to red and from the
/// outside to nowhere of the fabric. Returns (blue's token, red's token).
fn two_projects(c: &ControllerProcess) -> (String, String) {
    let admin = Api::new(c);
    let mut secrets = Vec::new();
    for (project, cidr) in [("blue", "10.1.0.0/24"), ("red", "10.2.0.0/24")] {
        assert_eq!(admin.post("/v1/projects", json!({"name": format!("default-domain:{project}")})).0, 201);
        let (s, b) =
            admin.post("/v1/networks", json!({"name": format!("default-domain:{project}:net"), "subnets": [{"cidr": cidr}]}));
        assert_eq!(s, 201, "{b}");
        let (s, t) =
            admin.post("/v1/tokens", json!({"name": project, "project": format!("default-domain:{project}"), "role": "reader"}));
        assert_eq!(s, 201, "{t}");
        secrets.push(t["secret"].as_str().unwrap().to_string());
    }
    assert_eq!(admin.put("/v1/hosts/h1", json!({"underlay_ip": "10.99.0.1"})).0, 200);
    let h1 = Api::as_caller(c, &Caller::Host("h1".into()));
    let (blue, red) = (Some("default-domain:blue:net"), Some("default-domain:red:net"));
    let records = json!({"records": [between("h1", 1, blue, blue, 100), between("h1", 2, red, red, 200),
        between("h1", 3, blue, red, 300), between("h1", 4, None, None, 400)]});
    let (s, b) = h1.post("/v1/hosts/h1/flows", records);
    assert_eq!(s, 204, "{b}");
    (secrets.remove(0), secrets.remove(0))
}

#[test]
fn a_project_token_reads_only_the_flows_of_its_networks() {
    let c = ControllerProcess::start();
    let (blue, red) = two_projects(&c);
    let blue = Api::as_caller(&c, &Caller::Token(blue));
    let red = Api::as_caller(&c, &Caller::Token(red));

    assert_eq!(ids(&Api::new(&c).get("/v1/flows").1), vec![4, 3, 2, 1], "an administrator sees every flow");
    assert_eq!(ids(&blue.get("/v1/flows").1), vec![3, 1], "blue: within blue, and blue to red");
    assert_eq!(ids(&red.get("/v1/flows").1), vec![3, 2], "red: within red, and blue to red");
    assert_eq!(ids(&blue.get("/v1/flows?network=default-domain:red:net").1), vec![3], "filters apply within the scope");

    let (s, top) = blue.get("/v1/flows/top?by=endpoint");
    assert_eq!(s, 200, "{top}");
    assert_eq!(top.as_array().unwrap().iter().map(|e| e["flows"].as_u64().unwrap()).sum::<u64>(), 4, "2 flows, 2 sides: {top}");
    let (_, top) = red.get("/v1/flows/top?by=network");
    let keys: Vec<&str> = top.as_array().unwrap().iter().map(|e| e["key"].as_str().unwrap()).collect();
    assert_eq!(keys, vec!["default-domain:blue:net > default-domain:red:net", "default-domain:red:net > default-domain:red:net"]);
}

#[test]
fn a_project_token_follows_only_the_flows_of_its_networks() {
    use std::io::BufRead;
    let c = ControllerProcess::start();
    let (blue, _) = two_projects(&c);
    let stream = c.http(&Caller::Token(blue)).get(format!("{}/v1/flows/follow", c.url)).send().expect("follow");
    assert_eq!(stream.status().as_u16(), 200);
    // The stream is open (its handler subscribed before answering): red's
    // record comes first, then blue's; only blue's may arrive.
    let h1 = Api::as_caller(&c, &Caller::Host("h1".into()));
    let (red, blue) = (Some("default-domain:red:net"), Some("default-domain:blue:net"));
    assert_eq!(h1.post("/v1/hosts/h1/flows", json!({"records": [between("h1", 10, red, red, 1)]})).0, 204);
    assert_eq!(h1.post("/v1/hosts/h1/flows", json!({"records": [between("h1", 11, red, blue, 1)]})).0, 204);
    let first = std::io::BufReader::new(stream)
        .lines()
        .map(|l| l.expect("a line of the stream"))
        .find(|l| !l.trim().is_empty())
        .expect("a record before the stream ends");
    let first: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(first["id"], 11, "red's own flow is not blue's to see: {first}");
}

#[test]
fn a_host_reads_no_flows_and_says_why() {
    let c = ControllerProcess::start();
    two_projects(&c);
    let h1 = Api::as_caller(&c, &Caller::Host("h1".into()));
    for path in ["/v1/flows", "/v1/flows/follow", "/v1/flows/top?by=network"] {
        let r = h1.get(path);
        assert_error(&r, 403, "permission_denied", None);
        assert!(r.1["error"]["message"].as_str().unwrap().contains("a host reports its flows"), "{path}: {}", r.1);
    }
}

#[test]
fn top_by_network_sums_the_flows_between_two_networks() {
    let c = ControllerProcess::start();
    two_projects(&c);
    let admin = Api::new(&c);
    let h1 = Api::as_caller(&c, &Caller::Host("h1".into()));
    let (blue, red) = (Some("default-domain:blue:net"), Some("default-domain:red:net"));
    assert_eq!(h1.post("/v1/hosts/h1/flows", json!({"records": [between("h1", 5, blue, red, 1000)]})).0, 204);
    let (s, top) = admin.get("/v1/flows/top?by=network");
    assert_eq!(s, 200, "{top}");
    assert_eq!(
        top[0],
        json!({"key": "default-domain:blue:net > default-domain:red:net", "src": "default-domain:blue:net",
               "dst": "default-domain:red:net", "flows": 2, "packets": 4, "bytes": 1300}),
        "{top}"
    );
    assert_eq!(top[1]["key"], "outside > outside", "a side of no network is outside: {top}");
    assert_eq!(top.as_array().unwrap().len(), 4);
    let (code, out, err) = c.cli(&["flow", "top", "--by", "network"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("NETWORK"), "{out}");
    assert!(out.lines().nth(1).unwrap().contains("default-domain:blue:net > default-domain:red:net"), "{out}");
}
