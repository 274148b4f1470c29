//! `tessera topology` against a real controller process: the fabric's
//! hosts, endpoints, networks, policies and the traffic between networks,
//! as text, JSON and a Graphviz digraph that Graphviz itself renders.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use support::{Api, Caller, ControllerProcess};

/// Two networks a policy connects, an endpoint in each on two hosts, and a
/// flow from red to green that h1 reported.
fn fabric(c: &ControllerProcess) {
    let admin = Api::new(c);
    for (name, cidr) in [("red", "10.1.0.0/24"), ("green", "10.2.0.0/24")] {
        let (s, b) = admin.post("/v1/networks", json!({"name": name, "subnets": [{"cidr": cidr}]}));
        assert_eq!(s, 201, "{b}");
    }
    let (s, b) = admin.post("/v1/policies", json!({"name": "web", "rules": ["pass tcp red any <> green 80"]}));
    assert_eq!(s, 201, "{b}");
    for net in ["red", "green"] {
        let (s, b) = admin.patch(&format!("/v1/networks/{net}"), json!({"attach_policies": ["web"]}));
        assert_eq!(s, 200, "{b}");
    }
    for (host, ip, net, ep) in [("h1", "10.99.0.1", "red", "client"), ("h2", "10.99.0.2", "green", "server")] {
        assert_eq!(admin.put(&format!("/v1/hosts/{host}"), json!({"underlay_ip": ip})).0, 200);
        let (s, b) = admin.post(
            "/v1/endpoints",
            json!({"network": net, "name": ep, "host": host, "owner": {"netns": format!("/run/netns/{ep}")}}),
        );
        assert_eq!(s, 201, "{b}");
    }
    let h1 = Api::as_caller(c, &Caller::Host("h1".into()));
    let record = json!({"host": "h1", "id": 7, "protocol": 6, "src": "10.1.0.2", "sport": 40000, "dst": "10.2.0.2", "dport": 80,
        "src_network": "default-domain:admin:red", "dst_network": "default-domain:admin:green", "src_endpoint": "client",
        "dst_endpoint": "server", "verdict": "forwarded", "start_ms": 1000, "packets": 10, "bytes": 1300, "reply_packets": 8,
        "reply_bytes": 2400});
    let (s, b) = h1.post("/v1/hosts/h1/flows", json!({"records": [record]}));
    assert_eq!(s, 204, "{b}");
}

/// Graphviz's `dot`, or a failure that says how to get it.
fn dot_to_svg(source: &str) -> String {
    let mut child = Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run Graphviz's dot ({e}): install Debian's graphviz (./x setup)"));
    child.stdin.take().unwrap().write_all(source.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "dot refused the digraph: {}\n{source}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn topology_dot_renders_with_graphviz_and_names_the_networks_and_the_traffic() {
    let c = ControllerProcess::start();
    fabric(&c);
    let (code, dot, err) = c.cli(&["topology", "--dot"]);
    assert_eq!(code, 0, "{err}");
    for needle in [
        "subgraph cluster_host_0 {",
        "label=\"host h1\\n10.99.0.1\"",
        "\"net:default-domain:admin:red\" [label=\"default-domain:admin:red\\nVNI",
        "\"net:default-domain:admin:green\" [label=\"default-domain:admin:green\\nVNI",
        "\"net:default-domain:admin:green\" -> \"net:default-domain:admin:red\" [style=dashed, dir=both",
        "\"net:default-domain:admin:red\" -> \"net:default-domain:admin:green\" [color=firebrick, fontcolor=firebrick, penwidth=2, label=\"3.7 kB\\n1 flow\"]",
    ] {
        assert!(dot.contains(needle), "missing {needle} in\n{dot}");
    }
    // Graphviz writes '-' in texts as `&#45;`.
    let svg = dot_to_svg(&dot).replace("&#45;", "-");
    assert!(svg.contains("<svg"), "{svg}");
    for text in ["default-domain:admin:red", "default-domain:admin:green", "host h1", "client", "3.7 kB"] {
        assert!(svg.contains(text), "the picture does not show {text}:\n{svg}");
    }
    // The traffic edge is drawn: Graphviz titles an edge `tail->head`.
    assert!(
        svg.contains("<title>net:default-domain:admin:red-&gt;net:default-domain:admin:green</title>"),
        "no edge from red to green in\n{svg}"
    );
}

#[test]
fn topology_prints_a_summary_and_its_structure_as_json() {
    let c = ControllerProcess::start();
    fabric(&c);
    let (code, text, err) = c.cli(&["topology"]);
    assert_eq!(code, 0, "{err}");
    for needle in [
        "Hosts\n  h1 (10.99.0.1)\n    client  default-domain:admin:red  10.1.0.",
        "  h2 (10.99.0.2)\n    server  default-domain:admin:green",
        "policies: default-domain:admin:web",
        "connects: default-domain:admin:green <> default-domain:admin:red",
        "Traffic\n  default-domain:admin:red > default-domain:admin:green  1 flow  18 packets  3.7 kB",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    let t: Value = c.cli_json(&["topology"]);
    assert_eq!(t["hosts"][0]["endpoints"][0]["name"], "client", "{t}");
    assert_eq!(t["policies"][0]["attached_to"], json!(["default-domain:admin:green", "default-domain:admin:red"]));
    assert_eq!(
        t["traffic"],
        json!([{"src": "default-domain:admin:red", "dst": "default-domain:admin:green", "flows": 1, "packets": 18, "bytes": 3700}])
    );
}

#[test]
fn a_project_token_sees_its_own_topology_with_the_hosts_of_its_endpoints() {
    let c = ControllerProcess::start();
    fabric(&c);
    let admin = Api::new(&c);
    assert_eq!(admin.post("/v1/projects", json!({"name": "default-domain:blue"})).0, 201);
    let (s, b) = admin.post("/v1/networks", json!({"name": "default-domain:blue:web", "subnets": [{"cidr": "10.3.0.0/24"}]}));
    assert_eq!(s, 201, "{b}");
    let (s, b) = admin.post(
        "/v1/endpoints",
        json!({"network": "default-domain:blue:web", "name": "site", "host": "h2",
        "owner": {"netns": "/run/netns/site"}}),
    );
    assert_eq!(s, 201, "{b}");
    let (_, token) = admin.post("/v1/tokens", json!({"name": "blue", "project": "default-domain:blue", "role": "reader"}));
    let out = Command::new(support::BIN)
        .args(["topology", "--json"])
        .env("TESSERA_CONTROLLER", &c.url)
        .env("TESSERA_CA", c.pki.join("ca.pem"))
        .env("TESSERA_TOKEN", token["secret"].as_str().unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let t: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        t["hosts"],
        json!([{"name": "h2", "endpoints": [t["hosts"][0]["endpoints"][0].clone()]}]),
        "only the host of its endpoint, without its underlay"
    );
    assert_eq!(t["hosts"][0]["endpoints"][0]["name"], "site");
    assert_eq!(t["networks"].as_array().unwrap().len(), 1, "{t}");
    assert_eq!(t["traffic"], json!([]), "admin's flows are not blue's: {t}");
}
