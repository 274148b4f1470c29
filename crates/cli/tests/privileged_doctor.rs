//! Privileged tier: `tessera doctor` on a host of a real fabric (hosts as
//! namespaces, the real controller and agents): every check passes on a
//! healthy host; an unreachable controller, an underlay MTU too small for
//! the overlay and a clock 10 minutes off the controller's are each
//! reported, with their fix, and fail the command.

use serde_json::Value;
use tessera_testkit::{exec_in, Cluster};

fn checks(out: &std::process::Output) -> Vec<Value> {
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap_or_else(|e| {
            panic!("doctor's JSON ({e}): {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
        })
        .as_array()
        .unwrap()
        .clone()
}

fn check<'a>(all: &'a [Value], name: &str) -> &'a Value {
    all.iter().find(|c| c["check"] == name).unwrap_or_else(|| panic!("no check {name}: {all:?}"))
}

/// `tessera doctor --json` on `host` with the administrator's certificate
/// and `controller` as `--controller`.
fn doctor(c: &Cluster, host: &str, controller: &str) -> std::process::Output {
    let args = doctor_args(c, host, controller);
    c.tessera_on(host, &args.iter().map(String::as_str).collect::<Vec<_>>(), &[]).unwrap()
}

fn doctor_args(c: &Cluster, host: &str, controller: &str) -> Vec<String> {
    let mut args = vec!["--controller".to_string(), controller.to_string(), "--json".to_string()];
    args.extend(c.credential_args("admin"));
    args.extend(["doctor".to_string(), "--socket".to_string(), c.agent_socket(host).display().to_string()]);
    args
}

#[test]
fn privileged_doctor_passes_a_healthy_host_and_reports_an_unreachable_controller_a_small_mtu_and_a_skewed_clock() {
    let (c, _run) = tessera_testkit::start_cluster("tdr", &["h1", "h2"], env!("CARGO_BIN_EXE_tessera"));

    let out = doctor(&c, "h1", &c.urls);
    let all = checks(&out);
    assert!(out.status.success(), "a healthy host: {all:#?}");
    for name in [
        "privileges",
        "kernel: veth, bridge, forwarding",
        "kernel: vxlan",
        "kernel: nftables, conntrack zones",
        "kernel: ip rule",
    ] {
        assert_eq!(check(&all, name)["result"], "ok", "{name}: {all:#?}");
    }
    let mtu = check(&all, "underlay MTU");
    assert_eq!(mtu["result"], "ok", "{mtu}");
    assert!(mtu["detail"].as_str().unwrap().contains("eth0"), "{mtu}");
    assert_eq!(check(&all, "agent")["result"], "ok", "{all:#?}");
    assert_eq!(check(&all, "controller")["result"], "ok");
    assert_eq!(check(&all, "clock")["result"], "ok", "{all:#?}");
    let vteps = check(&all, "other hosts' VTEPs");
    assert_eq!(vteps["result"], "ok", "{vteps}");
    assert!(vteps["detail"].as_str().unwrap().starts_with("1 host"), "h2 answers: {vteps}");

    // A controller nobody serves.
    let ip = c.underlay_ip(c.controller_host()).unwrap();
    let out = doctor(&c, "h1", &format!("https://{ip}:9"));
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let all = checks(&out);
    let controller = check(&all, "controller");
    assert_eq!(controller["result"], "fail", "{controller}");
    assert!(controller["fix"].as_str().unwrap().contains("--controller"), "{controller}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("controller"), "the failed checks are named");

    // An underlay MTU the overlay cannot carry IPv6 over.
    let h2 = c.host_netns("h2").unwrap();
    let set = exec_in(h2, "ip", ["link", "set", "eth0", "mtu", "1300"]).unwrap();
    assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));
    let out = doctor(&c, "h2", &c.urls);
    assert_eq!(out.status.code(), Some(1));
    let all = checks(&out);
    let mtu = check(&all, "underlay MTU");
    assert_eq!(mtu["result"], "fail", "{mtu}");
    assert!(mtu["detail"].as_str().unwrap().contains("1250") && mtu["fix"].as_str().unwrap().contains("mtu 1500"), "{mtu}");
    let _ = exec_in(h2, "ip", ["link", "set", "eth0", "mtu", "1500"]);

    // This host's clock 10 minutes ahead of the controller's (libfaketime
    // moves the clock doctor reads; the monotonic clock stays).
    let mut args = vec!["-f".to_string(), "+600s".to_string(), env!("CARGO_BIN_EXE_tessera").to_string()];
    args.extend(doctor_args(&c, "h2", &c.urls));
    let out = exec_in(c.host_netns("h2").unwrap(), "env", {
        let mut all = vec!["FAKETIME_DONT_FAKE_MONOTONIC=1".to_string(), "faketime".to_string()];
        all.extend(args);
        all
    })
    .expect("faketime (./x setup installs it)");
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let all = checks(&out);
    let clock = check(&all, "clock");
    assert_eq!(clock["result"], "fail", "{clock}");
    let detail = clock["detail"].as_str().unwrap();
    assert!(detail.contains("behind this host's"), "{clock}");
    let behind: f64 = detail.split(" is ").nth(1).and_then(|d| d.split(' ').next()).and_then(|n| n.parse().ok()).unwrap();
    assert!((595.0..=605.0).contains(&behind), "{clock}");
    assert!(clock["fix"].as_str().unwrap().contains("chrony"), "{clock}");
}
