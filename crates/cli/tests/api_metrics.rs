//! The controller's Prometheus metrics through a real controller process:
//! administrators only, in a format `promtool check metrics` accepts, and
//! moving with the requests and objects.

mod support;

use serde_json::{json, Value};
use support::{Api, Caller, ControllerProcess};

/// Runs `promtool check metrics` on `text`; panics with its complaints.
pub fn promtool_check(text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is missing: apt-get install prometheus");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of the sample `name{labels}` (labels as written, sorted by the encoder).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

fn metrics(api: &Api) -> String {
    let (s, body) = api.get("/metrics");
    assert_eq!(s, 200, "{body}");
    match body {
        Value::String(t) => t,
        other => panic!("metrics are not text: {other}"),
    }
}

#[test]
fn the_controller_serves_metrics_that_move_with_its_work() {
    let c = ControllerProcess::start();
    let api = Api::new(&c);
    let before = metrics(&api);
    promtool_check(&before);
    assert_eq!(sample(&before, "tessera_controller_objects{kind=\"network\"}"), Some(0.0), "{before}");

    let (s, b) = api.post("/v1/networks", json!({"name": "red", "subnets": [{"cidr": "10.1.0.0/24"}]}));
    assert_eq!(s, 201, "{b}");
    let after = metrics(&api);
    promtool_check(&after);
    assert_eq!(sample(&after, "tessera_controller_objects{kind=\"network\"}"), Some(1.0), "{after}");
    let created = "tessera_controller_http_requests_total{method=\"POST\",route=\"/v1/networks\",status=\"201\"}";
    assert_eq!(sample(&after, created), Some(1.0), "{after}");
    assert!(
        sample(&after, "tessera_controller_store_revision").unwrap()
            > sample(&before, "tessera_controller_store_revision").unwrap()
    );
    let latency = "tessera_controller_http_request_duration_seconds_count{method=\"POST\",route=\"/v1/networks\"}";
    assert_eq!(sample(&after, latency), Some(1.0), "{after}");

    // A host may not read them.
    let (s, body) = Api::as_caller(&c, &Caller::Host("h1".into())).get("/metrics");
    assert_eq!(s, 403, "{body}");
}
