//! A host's scoped snapshot and watch (`networks=`): only the endpoints of
//! the networks it names and its own host's, every other object whole.

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};

use serde_json::{json, Value};
use support::{assert_error, Api, Caller, ControllerProcess};

fn endpoint(api: &Api, network: &str, host: &str, name: &str) -> String {
    let (s, ep) = api.post("/v1/endpoints", json!({"network": network, "host": host, "name": name}));
    assert_eq!(s, 201, "{ep}");
    ep["id"].as_str().unwrap().to_string()
}

fn names(snapshot: &Value) -> BTreeSet<String> {
    snapshot["endpoints"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap().to_string()).collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[test]
fn a_host_receives_only_its_networks_endpoints_and_its_own() {
    let c = ControllerProcess::start();
    let admin = Api::new(&c);
    for (h, ip) in [("h1", "10.99.0.1"), ("h2", "10.99.0.2")] {
        assert_eq!(admin.put(&format!("/v1/hosts/{h}"), json!({"underlay_ip": ip})).0, 200);
    }
    let mut ids = std::collections::HashMap::new();
    for (n, cidr) in [("a", "10.1.0.0/24"), ("b", "10.2.0.0/24")] {
        let (s, net) = admin.post("/v1/networks", json!({"name": n, "subnets": [{"cidr": cidr}]}));
        assert_eq!(s, 201, "{net}");
        ids.insert(n, net["id"].as_str().unwrap().to_string());
    }
    endpoint(&admin, "a", "h1", "a-h1");
    let a_h2 = endpoint(&admin, "a", "h2", "a-h2");
    let b_h2 = endpoint(&admin, "b", "h2", "b-h2");
    let h1 = Api::as_caller(&c, &Caller::Host("h1".into()));

    // Snapshots: everything without `networks`, the host's own with an empty
    // one, and a network's endpoints with its ID; networks and hosts whole.
    let (s, all) = h1.get("/v1/snapshot");
    assert_eq!(s, 200, "{all}");
    assert_eq!(names(&all), set(&["a-h1", "a-h2", "b-h2"]));
    let (_, own) = h1.get("/v1/snapshot?networks=");
    assert_eq!(names(&own), set(&["a-h1"]));
    assert_eq!(own["networks"].as_array().unwrap().len(), 2, "networks go whole: {own}");
    assert_eq!(own["hosts"].as_array().unwrap().len(), 2, "hosts go whole: {own}");
    let (_, of_a) = h1.get(&format!("/v1/snapshot?networks={}", ids["a"]));
    assert_eq!(names(&of_a), set(&["a-h1", "a-h2"]));
    let (_, of_b) = h1.get(&format!("/v1/snapshot?networks={}", ids["b"]));
    assert_eq!(names(&of_b), set(&["a-h1", "b-h2"]), "its own endpoint in a, b's in b");
    assert_error(&h1.get("/v1/snapshot?networks=nope"), 400, "invalid_argument", Some("networks"));
    // An administrator's credentials name the host (a plugin run with them);
    // a host's name only itself.
    let (_, named) = admin.get("/v1/snapshot?networks=&host=h2");
    assert_eq!(names(&named), set(&["a-h2", "b-h2"]));
    let (_, itself) = h1.get("/v1/snapshot?networks=&host=h1");
    assert_eq!(names(&itself), set(&["a-h1"]));
    assert_error(&h1.get("/v1/snapshot?networks=&host=h2"), 400, "invalid_argument", Some("host"));
    assert_error(&h1.get("/v1/watch?after=1&networks=nope"), 400, "invalid_argument", Some("networks"));

    // A watch scoped to network a, from the snapshot's revision.
    let revision = of_a["revision"].as_u64().unwrap();
    let http = c.http(&Caller::Host("h1".into()));
    let resp = http.get(format!("{}/v1/watch?after={revision}&progress_ms=100&networks={}", c.url, ids["a"])).send().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    endpoint(&admin, "b", "h2", "b-h2-late"); // not for h1
    endpoint(&admin, "a", "h2", "a-h2-late"); // a's
    endpoint(&admin, "b", "h1", "b-h1-late"); // h1's own
    assert_eq!(admin.delete(&format!("/v1/endpoints/{b_h2}")).0, 204); // not for h1
    assert_eq!(admin.delete(&format!("/v1/endpoints/{a_h2}")).0, 204); // a's
                                                                       // A network goes to every watcher: the end of what the test reads.
    assert_eq!(admin.post("/v1/networks", json!({"name": "end", "subnets": [{"cidr": "10.3.0.0/24"}]})).0, 201);

    let mut seen = Vec::new();
    for line in BufReader::new(resp).lines() {
        let ev: Value = serde_json::from_str(&line.unwrap()).unwrap();
        match ev["kind"].as_str().unwrap() {
            "progress" => continue,
            "put" if ev["object"]["type"] == "network" => break,
            "put" => seen.push(format!("put {}", ev["object"]["value"]["name"].as_str().unwrap())),
            "delete" => seen.push(format!("delete {}", ev["object"]["id"].as_str().unwrap())),
            other => panic!("unexpected {other}: {ev}"),
        }
    }
    assert_eq!(seen, vec!["put a-h2-late".to_string(), "put b-h1-late".into(), format!("delete {a_h2}")]);
}
