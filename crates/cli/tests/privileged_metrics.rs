//! Privileged tier: the agent's metrics move with real traffic and pass
//! `promtool check metrics`, and a real Prometheus server scrapes the agent
//! and the controller (over TLS, with the administrator's certificate).
//! Needs root, iputils-ping, curl and prometheus; fails with the reason
//! when it cannot run.

use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tessera_testkit::{addresses, exec_in, Cluster, CONTROLLER_PORT};

const AGENT_METRICS: &str = "127.0.0.1:9108";
const PROMETHEUS: &str = "127.0.0.1:9190";

fn curl(c: &Cluster, host: &str, url: &str) -> String {
    let out = exec_in(c.host_netns(host).unwrap(), "curl", ["-sS", "--max-time", "5", url]).expect("curl (apt-get install curl)");
    assert!(out.status.success(), "curl {url}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn promtool_check(text: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is missing: apt-get install prometheus");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "promtool: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

#[test]
fn privileged_agent_metrics_move_with_traffic_and_prometheus_scrapes_them() {
    let (mut c, run) = tessera_testkit::start_cluster("tmx", &["h1", "h2"], env!("CARGO_BIN_EXE_tessera"));
    c.set_agent_args("h1", &["--metrics-listen", AGENT_METRICS]);
    c.stop_agent("h1");
    c.start_agent("h1").unwrap();
    c.cli_ok(&["network", "add", "red", "--subnet", "10.97.0.0/24"]).unwrap();
    let vni = c.cli_json(&["network", "show", "red"]).unwrap()["network"]["vni"].as_u64().unwrap();
    c.container("h1", "c1").unwrap();
    c.container("h2", "c2").unwrap();
    c.attach("c1", "red", &[]).unwrap();
    let peer = addresses(&c.attach("c2", "red", &[]).unwrap())[0].clone();

    let url = format!("http://{AGENT_METRICS}/metrics");
    let series =
        format!("tessera_agent_network_traffic_total{{device=\"bridge\",direction=\"rx\",unit=\"packets\",vni=\"{vni}\"}}");
    let before = curl(&c, "h1", &url);
    promtool_check(&before);
    assert_eq!(sample(&before, "tessera_agent_endpoints"), 1.0, "{before}");
    assert_eq!(sample(&before, "tessera_agent_controller_connected"), 1.0);
    assert!(sample(&before, "tessera_agent_reconciles_total") >= 1.0);
    let sent_before = sample(&before, &series);
    assert_eq!(c.ping("c1", &peer, 10).unwrap(), 10);
    let after = curl(&c, "h1", &url);
    promtool_check(&after);
    assert!(sample(&after, &series) >= sent_before + 10.0, "the bridge's counter did not move with 10 pings:\n{after}");

    // A real Prometheus server scrapes the agent and the controller.
    let pki = c.pki_dir();
    let controller = format!("{}:{CONTROLLER_PORT}", c.underlay_ip("h1").unwrap());
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: agent\n    static_configs:\n      - targets: ['{AGENT_METRICS}']\n  - job_name: controller\n    scheme: https\n    tls_config:\n      ca_file: {ca}\n      cert_file: {cert}\n      key_file: {key}\n    static_configs:\n      - targets: ['{controller}']\n",
        ca = pki.join("ca.pem").display(),
        cert = pki.join("admin.pem").display(),
        key = pki.join("admin-key.pem").display(),
    );
    let dir = run.dir.path().join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={PROMETHEUS}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut server = c.fabric.spawn_in_netns(c.host_netns("h1").unwrap(), cmd).expect("prometheus (apt-get install prometheus)");
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let query = format!("http://{PROMETHEUS}/api/v1/query?query=up");
        let out = exec_in(c.host_netns("h1").unwrap(), "curl", ["-sS", "--max-time", "2", &query]).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let up: Vec<(String, String)> = v["data"]["result"]
            .as_array()
            .map(|r| {
                r.iter()
                    .map(|s| {
                        (s["metric"]["job"].as_str().unwrap_or("").to_string(), s["value"][1].as_str().unwrap_or("").to_string())
                    })
                    .collect()
            })
            .unwrap_or_default();
        if up.len() == 2 && up.iter().all(|(_, v)| v == "1") {
            break;
        }
        assert!(Instant::now() < deadline, "Prometheus did not scrape both: {up:?}");
        thread::sleep(Duration::from_millis(500));
    }
    let q = format!("http://{PROMETHEUS}/api/v1/query?query=tessera_controller_objects");
    let out = exec_in(c.host_netns("h1").unwrap(), "curl", ["-sS", &q]).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["data"]["result"].as_array().is_some_and(|r| !r.is_empty()), "{v}");
    let _ = server.kill();
    let _ = server.wait();
}
