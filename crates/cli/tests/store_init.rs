//! A controller serves only a store that holds a fabric: a missing or
//! emptied store file is refused unless `--init` asks for a new fabric, so
//! agents never see a lost store as a fabric with no networks.

mod support;

use std::process::Command;

use serde_json::json;
use support::{Api, ControllerProcess, BIN};

fn controller_without_init(data_dir: &std::path::Path) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["controller", "--insecure-loopback", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("TESSERA_LOG", "warn")
        .output()
        .expect("run tessera controller");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_missing_store_is_refused_without_init() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, stderr) = controller_without_init(tmp.path());
    assert!(!ok, "the controller must not start");
    assert!(stderr.contains("--init") && stderr.contains("tessera.redb"), "{stderr}");
    assert!(!tmp.path().join("tessera.redb").exists(), "nothing is made");
}

#[test]
fn an_empty_store_file_is_refused_without_init() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("tessera.redb"), b"").unwrap();
    let (ok, stderr) = controller_without_init(tmp.path());
    assert!(!ok, "the controller must not start");
    assert!(stderr.contains("missing or empty"), "{stderr}");
}

#[test]
fn a_fabric_made_with_init_is_served_again_without_it_under_the_same_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let mut c = ControllerProcess::start_on(tmp.path(), port);
    let api = Api::new(&c);
    assert_eq!(api.post("/v1/networks", json!({"name": "net", "subnets": [{"cidr": "10.8.0.0/16"}]})).0, 201);
    let cluster = api.get("/v1/snapshot").1["cluster"].clone();
    assert!(cluster.as_str().is_some_and(|c| c.len() == 36), "a snapshot names its cluster: {cluster}");
    c.kill9();
    let c2 = ControllerProcess::restart_on(tmp.path(), port);
    let api = Api::new(&c2);
    assert_eq!(api.get("/v1/snapshot").1["cluster"], cluster, "the cluster is the store's, kept across restarts");
    assert_eq!(api.get("/v1/networks").1.as_array().unwrap().len(), 1);
}
