//! Privileged tier: `docker run -p` with real dockerds and the Tessera
//! plugin. A published port reaches the container from another host (the
//! outside of this one) and from the host itself, on every address or on
//! loopback only; the endpoint lists it; a host port another container
//! holds is refused; removing the container withdraws it. A container on a
//! network made with `-o dhcp=true` gets the address Docker shows from its
//! own DHCP client.

mod privileged_docker_support;

use std::time::Duration;

use privileged_docker_support::*;
use tessera_testkit::exec_in;

/// What `url` answers from `host`'s namespace; `None` when nothing does.
fn http(f: &Fabric, host: &str, url: &str) -> Option<String> {
    let out = exec_in(f.c.host_netns(host).unwrap(), "curl", ["-s", "-g", "-m", "2", url]).expect("curl (install curl)");
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn web(f: &Fabric, name: &str, ports: &[&str]) -> std::process::Output {
    let mut args = vec!["run", "-d", "--name", name, "--net", "pub"];
    for p in ports {
        args.extend_from_slice(&["-p", p]);
    }
    let script = format!("mkdir -p /www && echo {name} > /www/who && exec httpd -f -p 80 -h /www");
    args.extend_from_slice(&[tessera_testkit::docker::BUSYBOX_IMAGE, "sh", "-c", &script]);
    f.d1.docker(&args).unwrap()
}

#[test]
fn privileged_docker_run_p_publishes_ports_from_outside_and_from_the_host() {
    let f = Fabric::start();
    create_network(&f.d1, "pub", &["--subnet", "192.168.9.0/24"]);
    let out = web(&f, "web", &["8080:80", "127.0.0.1:8081:80"]);
    assert!(out.status.success(), "docker run -p: {}\n{}", String::from_utf8_lossy(&out.stderr), f.logs());
    let h1 = f.c.underlay_ip("h1").unwrap().to_string();

    wait_for("the published port to answer from another host", Duration::from_secs(15), || {
        http(&f, "h2", &format!("http://{h1}:8080/who")).as_deref() == Some("web")
    });
    assert_eq!(http(&f, "h1", &format!("http://{h1}:8080/who")).as_deref(), Some("web"), "from the host itself");
    assert_eq!(http(&f, "h1", "http://127.0.0.1:8081/who").as_deref(), Some("web"), "on loopback, from the host");
    assert_eq!(
        http(&f, "h2", &format!("http://{h1}:8081/who")),
        None,
        "a port published on loopback is not reached from outside"
    );

    // Docker keeps the bindings asked for; Tessera's endpoint lists what it
    // published. (`docker port` stays empty with a remote driver: the
    // daemon reads typed bindings only from its built-in drivers.)
    let bindings = inspect(&f.d1, "container", "web")["HostConfig"]["PortBindings"].clone();
    assert_eq!(bindings["80/tcp"].as_array().map(Vec::len), Some(2), "{bindings}");
    let ep = f.tessera_endpoints().into_iter().find(|e| e["ports"].is_array()).expect("the endpoint lists its ports");
    let mut published: Vec<(u64, Option<&str>)> =
        ep["ports"].as_array().unwrap().iter().map(|p| (p["host_port"].as_u64().unwrap(), p["host_ip"].as_str())).collect();
    published.sort();
    assert_eq!(published, vec![(8080, None), (8081, Some("127.0.0.1"))], "{ep}");

    // The host port is the first container's.
    let second = web(&f, "web2", &["8080:80"]);
    assert!(!second.status.success(), "a second container took host port 8080");
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("8080") && err.contains("published"), "{err}");
    let _ = f.d1.docker(&["rm", "-f", "web2"]);
    // A port a program of the host listens on is refused too.
    let mut cmd = std::process::Command::new("busybox");
    cmd.args(["nc", "-l", "-p", "9090"]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let mut listener = f.c.fabric.spawn_in_netns(f.c.host_netns("h1").unwrap(), cmd).expect("busybox nc");
    std::thread::sleep(Duration::from_millis(300));
    let third = web(&f, "web3", &["9090:80"]);
    let _ = listener.kill();
    let _ = listener.wait();
    assert!(!third.status.success(), "a container took a port a program of the host listens on");
    assert!(String::from_utf8_lossy(&third.stderr).contains("in use by a program"), "{}", String::from_utf8_lossy(&third.stderr));
    let _ = f.d1.docker(&["rm", "-f", "web3"]);

    // Removing the container withdraws the port.
    ok(&f.d1, &["rm", "-f", "web"]);
    wait_for("the port to be withdrawn", Duration::from_secs(15), || http(&f, "h2", &format!("http://{h1}:8080/who")).is_none());
    let nft = exec_in(f.c.host_netns("h1").unwrap(), "nft", ["list", "map", "inet", "tessera", "pubd4any"]).unwrap();
    assert!(!String::from_utf8_lossy(&nft.stdout).contains("8080"), "{}", String::from_utf8_lossy(&nft.stdout));
}

#[test]
fn privileged_a_docker_container_on_a_dhcp_network_gets_its_address_by_dhcp() {
    let f = Fabric::start();
    create_network(&f.d1, "dnet", &["--subnet", "192.168.11.0/24", "-o", "dhcp=true"]);
    run(&f.d1, "dc", &["--net", "dnet"]);
    let (shown, _) = container_ips(&f.d1, "dc", "dnet");
    let log = f.d1.docker(&["exec", "dc", "sh", "-c", "udhcpc -i eth0 -n -q -t 5 -T 1 -s /bin/true 2>&1"]).unwrap();
    let text = String::from_utf8_lossy(&log.stdout).into_owned();
    assert!(
        text.contains(&format!("lease of {shown} obtained")),
        "udhcpc gets the address Docker shows ({shown}): {text}\n{}",
        f.logs()
    );
    assert_eq!(f.show("dnet")["network"]["labels"]["dhcp"], "true");
}
