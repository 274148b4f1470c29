//! Address reservations through a real controller process: the IPAM of
//! Docker's plugin, which asks for an address before the endpoint exists.

mod support;

use serde_json::json;
use support::{allocations, assert_error, Api, ControllerProcess};

fn setup(api: &Api, cidrs: &[&str]) -> String {
    let subnets: Vec<_> = cidrs.iter().map(|c| json!({"cidr": c})).collect();
    let (s, b) = api.post("/v1/networks", json!({"name": "net", "subnets": subnets}));
    assert_eq!(s, 201, "{b}");
    assert_eq!(api.put("/v1/hosts/h1", json!({"underlay_ip": "10.99.0.1"})).0, 200);
    b["id"].as_str().unwrap().to_string()
}

fn reserve(api: &Api, body: serde_json::Value) -> (u16, serde_json::Value) {
    api.post("/v1/networks/net/reservations", body)
}

fn owners(api: &Api) -> Vec<(String, String)> {
    allocations(api, "net")
}

fn reserved(api: &Api) -> Vec<String> {
    let (_, list) = api.get("/v1/networks/net/reservations");
    list.as_array().unwrap().iter().map(|r| r["address"].as_str().unwrap().to_string()).collect()
}

#[test]
fn reservation_takes_the_lowest_free_address_and_a_retry_returns_it_again() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    let id = setup(&api, &["192.168.4.0/24", "2002:1::/64"]);
    let (s, r) = reserve(&api, json!({"owner": "t1", "subnet": "192.168.4.0/24"}));
    assert_eq!(s, 201, "{r}");
    assert_eq!(r, json!({"network": id, "subnet": "192.168.4.0/24", "address": "192.168.4.2", "owner": "t1"}));
    let (s, again) = reserve(&api, json!({"owner": "t1", "subnet": "192.168.4.0/24"}));
    assert_eq!((s, &again), (200, &r), "a retry does not leak a second address");
    let (_, v6) = reserve(&api, json!({"owner": "t1", "subnet": "2002:1::/64"}));
    assert_eq!(v6["address"], "2002:1::2");
    let (_, other) = reserve(&api, json!({"owner": "t2", "subnet": "192.168.4.0/24"}));
    assert_eq!(other["address"], "192.168.4.3");
    assert_eq!(reserved(&api).len(), 3);
    assert!(owners(&api).contains(&("192.168.4.2".into(), "reservation:t1".into())));
}

#[test]
fn a_reserved_address_is_never_handed_to_an_endpoint_without_the_token() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    setup(&api, &["10.0.0.0/24"]);
    reserve(&api, json!({"owner": "t1", "address": "10.0.0.2"}));
    let (s, e) = api.post("/v1/endpoints", json!({"network": "net", "host": "h1"}));
    assert_eq!(s, 201, "{e}");
    assert_eq!(e["ips"], json!(["10.0.0.3/24"]), "the dynamic allocation skips the reservation");
    assert_error(
        &api.post("/v1/endpoints", json!({"network": "net", "host": "h1", "ips": ["10.0.0.2"]})),
        409,
        "already_exists",
        Some("ips[0]"),
    );
    let stranger = json!({"network": "net", "host": "h1", "ips": ["10.0.0.2"], "owner": {"reservation": "someone-else"}});
    assert_error(&api.post("/v1/endpoints", stranger), 409, "already_exists", Some("ips[0]"));
}

#[test]
fn an_endpoint_adopts_its_reservation_and_gives_it_back_when_deleted() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    setup(&api, &["10.0.0.0/24", "fd00::/64"]);
    reserve(&api, json!({"owner": "t1", "address": "10.0.0.9"}));
    reserve(&api, json!({"owner": "t1", "address": "fd00::9"}));
    let body =
        json!({"network": "net", "host": "h1", "name": "ep", "ips": ["10.0.0.9", "fd00::9"], "owner": {"reservation": "t1"}});
    let (s, e) = api.post("/v1/endpoints", body.clone());
    assert_eq!(s, 201, "{e}");
    assert_eq!(e["ips"], json!(["10.0.0.9/24", "fd00::9/64"]));
    let endpoint_owner = format!("endpoint:{}", e["id"].as_str().unwrap());
    assert!(owners(&api).iter().all(|(_, o)| *o == endpoint_owner), "adopted: {:?}", owners(&api));
    assert!(reserved(&api).is_empty());
    assert_eq!(api.post("/v1/endpoints", body).0, 200, "a retried create is idempotent");

    assert_eq!(api.delete(&format!("/v1/endpoints/{}", e["id"].as_str().unwrap())).0, 204);
    assert_eq!(reserved(&api), ["10.0.0.9", "fd00::9"], "the addresses return to the reservation");
    assert_eq!(api.delete("/v1/networks/net/reservations/10.0.0.9?owner=t1").0, 204);
    assert_eq!(api.delete("/v1/networks/net/reservations/fd00::9").0, 204);
    assert_eq!(owners(&api), Vec::<(String, String)>::new(), "nothing leaked");
}

#[test]
fn an_endpoint_made_from_a_reservation_needs_a_static_address_per_family() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    setup(&api, &["10.0.0.0/24", "fd00::/64"]);
    reserve(&api, json!({"owner": "t1", "address": "10.0.0.9"}));
    let body = json!({"network": "net", "host": "h1", "ips": ["10.0.0.9"], "owner": {"reservation": "t1"}});
    let r = api.post("/v1/endpoints", body);
    assert_error(&r, 400, "invalid_argument", Some("ips"));
    assert!(r.1["error"]["message"].as_str().unwrap().contains("IPv6"), "{}", r.1);
}

#[test]
fn a_reservation_can_be_taken_over_from_its_owner_only() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    setup(&api, &["10.0.0.0/24"]);
    reserve(&api, json!({"owner": "t1", "address": "10.0.0.5"}));
    let (s, r) = reserve(&api, json!({"owner": "t2", "address": "10.0.0.5", "from": "t1"}));
    assert_eq!((s, r["owner"].as_str()), (201, Some("t2")), "{r}");
    let stranger = json!({"owner": "t3", "address": "10.0.0.5", "from": "t1"});
    assert_error(&reserve(&api, stranger), 409, "already_exists", Some("address"));
    assert_error(&reserve(&api, json!({"owner": "t3", "from": "t2"})), 400, "invalid_argument", Some("address"));
}

#[test]
fn taken_reserved_and_invalid_addresses_are_refused_naming_the_field() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    setup(&api, &["10.0.0.0/24"]);
    assert_eq!(api.post("/v1/endpoints", json!({"network": "net", "host": "h1", "ips": ["10.0.0.7"]})).0, 201);
    assert_error(&reserve(&api, json!({"owner": "t1", "address": "10.0.0.7"})), 409, "already_exists", Some("address"));
    assert_error(&reserve(&api, json!({"owner": "t1", "address": "10.0.0.1"})), 400, "invalid_argument", Some("address"));
    assert_error(&reserve(&api, json!({"owner": "t1", "address": "10.9.0.1"})), 400, "invalid_argument", Some("address"));
    assert_error(&reserve(&api, json!({"owner": "t1", "subnet": "10.9.0.0/24"})), 400, "invalid_argument", Some("subnet"));
    assert_error(&reserve(&api, json!({"owner": "t1"})), 400, "invalid_argument", Some("subnet"));
    let bad_owner = json!({"owner": "bad owner", "subnet": "10.0.0.0/24"});
    assert_error(&reserve(&api, bad_owner), 400, "invalid_argument", Some("owner"));
    let missing = api.post("/v1/networks/nope/reservations", json!({"owner": "t1", "subnet": "10.0.0.0/24"}));
    assert_error(&missing, 404, "not_found", None);
}

#[test]
fn an_exhausted_subnet_is_reported() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    setup(&api, &["10.0.0.0/30"]); // .1 gateway, .2 usable
    assert_eq!(reserve(&api, json!({"owner": "t1", "subnet": "10.0.0.0/30"})).0, 201);
    let r = reserve(&api, json!({"owner": "t2", "subnet": "10.0.0.0/30"}));
    assert_error(&r, 409, "exhausted", None);
    assert!(r.1["error"]["message"].as_str().unwrap().contains("10.0.0.0/30"), "{}", r.1);
}

#[test]
fn releasing_is_idempotent_and_never_takes_an_endpoints_address() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    setup(&api, &["10.0.0.0/24"]);
    reserve(&api, json!({"owner": "t1", "address": "10.0.0.5"}));
    assert_error(&api.delete("/v1/networks/net/reservations/10.0.0.5?owner=t2"), 409, "in_use", None);
    assert_eq!(api.delete("/v1/networks/net/reservations/10.0.0.5?owner=t1").0, 204);
    assert_eq!(api.delete("/v1/networks/net/reservations/10.0.0.5").0, 204, "releasing a free address is Ok");
    assert_eq!(api.delete("/v1/networks/gone/reservations/10.0.0.5").0, 204, "so is releasing in a network that is gone");
    let (_, e) = api.post("/v1/endpoints", json!({"network": "net", "host": "h1", "ips": ["10.0.0.6"]}));
    let r = api.delete("/v1/networks/net/reservations/10.0.0.6");
    assert_error(&r, 409, "in_use", None);
    assert_eq!(r.1["error"]["details"]["used_by"], json!([format!("endpoint:{}", e["id"].as_str().unwrap())]));
    assert_error(&api.delete("/v1/networks/net/reservations/nope"), 400, "invalid_argument", Some("address"));
}

#[test]
fn deleting_a_network_drops_its_reservations() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    setup(&api, &["10.0.0.0/24"]);
    reserve(&api, json!({"owner": "t1", "subnet": "10.0.0.0/24"}));
    assert_eq!(api.delete("/v1/networks/net").0, 204);
    let (s, b) = api.post("/v1/networks", json!({"name": "net", "subnets": [{"cidr": "10.0.0.0/24"}]}));
    assert_eq!(s, 201, "{b}");
    assert!(reserved(&api).is_empty());
}

#[test]
fn the_openapi_document_lists_the_reservation_paths() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    let (_, doc) = api.get("/v1/openapi.json");
    assert!(doc["paths"]["/v1/networks/{id}/reservations"]["post"].is_object());
    assert!(doc["paths"]["/v1/networks/{id}/reservations/{address}"]["delete"].is_object());
}
