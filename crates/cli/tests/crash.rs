//! Crash safety: `kill -9` of the controller during a burst of writes loses
//! no acknowledged write, and the store opens cleanly on restart.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use support::{free_port, Api, ControllerProcess};

#[test]
fn acknowledged_writes_survive_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = ControllerProcess::start_on(tmp.path(), free_port());
    let api = Api::new(&c);
    let (s, _) = api.post("/v1/networks", json!({"name": "net", "subnets": [{"cidr": "10.8.0.0/16"}]}));
    assert_eq!(s, 201);
    assert_eq!(api.put("/v1/hosts/h1", json!({"underlay_ip": "10.99.0.1"})).0, 200);

    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let url = c.url.clone();
            let acked = acked.clone();
            let stop = stop.clone();
            let http = c.http_builder(&support::Caller::Admin).timeout(Duration::from_secs(5)).build().unwrap();
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let name = format!("w{w}-{i}");
                    i += 1;
                    let Ok(r) = http
                        .post(format!("{url}/v1/endpoints"))
                        .json(&json!({"network": "net", "host": "h1", "name": name}))
                        .send()
                    else {
                        break;
                    };
                    if r.status().as_u16() == 201 {
                        let body: serde_json::Value = r.json().unwrap();
                        acked
                            .lock()
                            .unwrap()
                            .push((body["id"].as_str().unwrap().to_string(), body["ips"][0].as_str().unwrap().to_string()));
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    c.kill9();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 20, "the burst acknowledged only {} writes", acked.len());

    let c2 = ControllerProcess::restart_on(tmp.path(), free_port());
    let api = Api::new(&c2);
    for (id, ip) in &acked {
        let (s, e) = api.get(&format!("/v1/endpoints/{id}"));
        assert_eq!(s, 200, "acknowledged endpoint {id} lost after kill -9");
        assert_eq!(e["ips"][0], ip.as_str());
    }
    let (_, ipam) = api.get("/v1/networks/net/ipam");
    let (_, eps) = api.get("/v1/endpoints?network=net");
    assert_eq!(
        ipam["subnets"][0]["allocated"].as_u64().unwrap() as usize,
        eps.as_array().unwrap().len(),
        "every allocation belongs to a stored endpoint and vice versa"
    );
    // The store accepts writes again.
    let (s, _) = api.post("/v1/endpoints", json!({"network": "net", "host": "h1", "name": "after"}));
    assert_eq!(s, 201);
}
