//! What may reach a host's kernel, and how big a request may be: bad input
//! is refused by a real controller process with the field and the reason,
//! and nothing of it is stored.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{assert_error, Api, ControllerProcess};

fn network_with_host(api: &Api) {
    let (s, b) = api.post("/v1/networks", json!({"name": "net", "subnets": [{"cidr": "192.168.4.0/24"}]}));
    assert_eq!(s, 201, "{b}");
    assert_eq!(api.put("/v1/hosts/h1", json!({"underlay_ip": "10.99.0.1"})).0, 200);
}

fn endpoint_with_owner(api: &Api, owner: serde_json::Value) -> (u16, serde_json::Value) {
    api.post("/v1/endpoints", json!({"network": "net", "host": "h1", "owner": owner}))
}

#[test]
fn an_endpoint_in_the_hosts_own_namespace_is_refused() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    network_with_host(&api);
    let r = endpoint_with_owner(&api, json!({"netns": "/proc/1/ns/net"}));
    assert_error(&r, 400, "invalid_argument", Some("owner.netns"));
    assert!(r.1["error"]["message"].as_str().unwrap().contains("host's own"), "{}", r.1);
    for bad in ["/etc/passwd", "/run/netns/../../proc/1/ns/net", "relative/ns", "/proc/self/ns/net"] {
        assert_error(&endpoint_with_owner(&api, json!({"netns": bad})), 400, "invalid_argument", Some("owner.netns"));
    }
    assert_eq!(api.get("/v1/endpoints").1, json!([]), "nothing refused is stored");
}

#[test]
fn an_interface_name_linux_would_not_take_is_refused() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    network_with_host(&api);
    for bad in ["../../x y", "", "a234567890123456", "eth0:1"] {
        let r = endpoint_with_owner(&api, json!({"netns": "/run/netns/c1", "ifname": bad}));
        assert_error(&r, 400, "invalid_argument", Some("owner.ifname"));
    }
    assert_eq!(endpoint_with_owner(&api, json!({"netns": "/run/netns/c1", "ifname": "eth1"})).0, 201);
}

#[test]
fn a_host_may_not_take_a_loopback_broadcast_or_anothers_underlay_address() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    for bad in ["127.0.0.1", "255.255.255.255", "0.0.0.0", "169.254.0.1", "::1", "fe80::1", "ff02::1"] {
        assert_error(&api.put("/v1/hosts/h1", json!({"underlay_ip": bad})), 400, "invalid_argument", Some("underlay_ip"));
    }
    assert_eq!(api.put("/v1/hosts/h1", json!({"underlay_ip": "10.99.0.1"})).0, 200);
    let r = api.put("/v1/hosts/h2", json!({"underlay_ip": "10.99.0.1"}));
    assert_error(&r, 409, "already_exists", Some("underlay_ip"));
    assert!(r.1["error"]["message"].as_str().unwrap().contains("h1"), "{}", r.1);
    // A host may move, and then its old address is free.
    assert_eq!(api.put("/v1/hosts/h1", json!({"underlay_ip": "10.99.0.5"})).0, 200);
    assert_eq!(api.put("/v1/hosts/h2", json!({"underlay_ip": "10.99.0.1"})).0, 200);
    assert_eq!(api.put("/v1/hosts/h2", json!({"underlay_ip": "10.99.0.1"})).0, 200, "a refresh is no conflict");
}

#[test]
fn a_network_may_not_hold_special_address_space_or_no_subnet() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    for bad in ["0.0.0.0/0", "::/0", "127.0.0.0/8", "224.0.0.0/4", "fe80::/10"] {
        let r = api.post("/v1/networks", json!({"name": "n", "subnets": [{"cidr": bad}]}));
        assert_error(&r, 400, "invalid_argument", Some("subnets[0].cidr"));
    }
    assert_error(&api.post("/v1/networks", json!({"name": "n", "subnets": []})), 400, "invalid_argument", Some("subnets"));
    assert_error(&api.post("/v1/networks", json!({"name": "n"})), 400, "invalid_argument", Some("subnets"));
    assert_eq!(api.get("/v1/networks").1, json!([]), "nothing refused is stored");
}

#[test]
fn huge_lists_are_refused_at_once() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    let subnets: Vec<_> = (0..40_000u32).map(|i| json!({"cidr": format!("10.{}.{}.0/24", i / 256, i % 256)})).collect();
    let started = Instant::now();
    let r = api.post("/v1/networks", json!({"name": "n", "subnets": subnets}));
    assert_error(&r, 400, "invalid_argument", Some("subnets"));
    assert!(started.elapsed() < Duration::from_secs(5), "refused in {:?}", started.elapsed());
    let labels: serde_json::Map<String, serde_json::Value> = (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
    let r = api.post("/v1/networks", json!({"name": "n", "subnets": [{"cidr": "10.0.0.0/24"}], "labels": labels}));
    assert_error(&r, 400, "invalid_argument", Some("labels"));
    let r =
        api.post("/v1/networks", json!({"name": "n", "subnets": [{"cidr": "10.0.0.0/24"}], "labels": {"rt": "x".repeat(2000)}}));
    assert_error(&r, 400, "invalid_argument", Some("labels.rt"));
    assert_eq!(api.get("/v1/networks").1, json!([]));
}

/// POSTs `body` on a plain connection while reading the answer, as curl
/// does: the controller answers a body over its limit as soon as the
/// request declares it and closes the connection, so the rest of the body
/// may not be written (the writer stops at the first error).
fn post_while_reading(url: &str, path: &str, body: String) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://").split('/').next().unwrap();
    let mut conn = std::net::TcpStream::connect(addr).expect("connect to the controller");
    let mut writer = conn.try_clone().unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(head.as_bytes());
        for chunk in body.as_bytes().chunks(64 << 10) {
            if writer.write_all(chunk).is_err() {
                return;
            }
        }
    });
    conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 16 << 10];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            // A reset after the answer: the server closed with our body unread.
            Err(_) if !answer.is_empty() => break,
            Err(e) => panic!("no answer from the controller: {e}"),
        }
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, rest)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap()));
            if len.is_some_and(|n| rest.len() >= n) {
                break;
            }
        }
    }
    let _ = conn.shutdown(std::net::Shutdown::Both);
    let _ = sender.join();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status: {head}"));
    (status, serde_json::from_str(rest).unwrap_or_else(|e| panic!("answer body {rest:?}: {e}")))
}

#[test]
fn a_body_over_the_limit_is_refused_with_413() {
    // Plain HTTP, so the test speaks it on its own connection.
    let c = ControllerProcess::start_insecure();
    let api = Api::plain(&c);
    let label = "x".repeat(60 << 20);
    let body = format!(r#"{{"name": "n", "subnets": [{{"cidr": "10.0.0.0/24"}}], "labels": {{"big": "{label}"}}}}"#);
    let r = post_while_reading(&c.url, "/v1/networks", body);
    assert_error(&r, 413, "payload_too_large", Some("body"));
    assert_eq!(api.get("/healthz").0, 200, "the controller still serves");
    assert_eq!(api.get("/v1/networks").1, json!([]));
}
