//! The `tessera` command line against a real controller: tables, `--json`, exit codes.

mod support;

use support::ControllerProcess;

#[test]
fn network_add_show_list_update_delete() {
    let c = ControllerProcess::start();
    let (code, out, err) = c.cli(&[
        "network",
        "add",
        "net4",
        "--subnet",
        "192.168.4.0/24",
        "--subnet",
        "2002:1::/64",
        "--gateway",
        "192.168.4.4",
        "--route-target",
        "64512:100",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("default-domain:admin:net4"), "{out}");

    let (code, out, _) = c.cli(&["network", "show", "net4"]);
    assert_eq!(code, 0);
    for want in [
        "Name: default-domain:admin:net4",
        "target:64512:100",
        "subnet: 192.168.4.0/24, gateway: 192.168.4.4",
        "subnet: 2002:1::/64, gateway: 2002:1::1",
        "Policies:",
        "Floating IP pools:",
        "Endpoints:",
    ] {
        assert!(out.contains(want), "show lacks {want:?}:\n{out}");
    }
    let shown = c.cli_json(&["network", "show", "net4"]);
    assert_eq!(shown["network"]["subnets"][0]["gateway"], "192.168.4.4");
    assert_eq!(shown["ipam"]["subnets"][0]["allocated"], 0);

    let (code, out, _) = c.cli(&["network", "list"]);
    assert_eq!(code, 0);
    assert!(out.lines().next().unwrap().starts_with("NAME"), "{out}");
    assert!(out.contains("192.168.4.0/24,2002:1::/64"), "{out}");
    assert_eq!(c.cli_json(&["network", "list"]).as_array().unwrap().len(), 1);

    assert_eq!(c.cli(&["policy", "add", "allow-all", "--rule", "pass any any any <> any any"]).0, 0);
    let up = c.cli_json(&[
        "network",
        "update",
        "net4",
        "--policy",
        "allow-all",
        "--add-route-target",
        "target:64512:200",
        "--remove-route-target",
        "64512:100",
    ]);
    assert_eq!(up["import_targets"], serde_json::json!(["target:64512:200"]));
    assert_eq!(up["policies"].as_array().unwrap().len(), 1);
    let (_, out, _) = c.cli(&["network", "show", "net4"]);
    assert!(out.contains("default-domain:admin:allow-all"), "{out}");

    assert_eq!(c.cli(&["network", "update", "net4", "--detach-policy", "allow-all"]).0, 0);
    assert_eq!(c.cli(&["network", "delete", "net4"]).0, 0);
    assert_eq!(c.cli(&["network", "delete", "net4"]).0, 0, "deleting what is gone succeeds");
    assert_eq!(c.cli(&["network", "show", "net4"]).0, 1);
}

#[test]
fn errors_go_to_stderr_with_a_non_zero_exit() {
    let c = ControllerProcess::start();
    let (code, out, err) = c.cli(&["network", "add", "x", "--subnet", "10.0.0.1/24"]);
    assert_eq!(code, 1);
    assert!(out.is_empty(), "nothing on stdout: {out}");
    assert!(err.contains("subnets[0].cidr") && err.contains("host bits"), "{err}");
    let (code, _, err) = c.cli(&["network", "show", "ghost"]);
    assert_eq!(code, 1);
    assert!(err.contains("not found"), "{err}");
    let (code, _, err) = c.cli(&["network", "add", "x", "--subnet", "10.0.0.0/24", "--gateway", "10.9.9.9"]);
    assert_eq!(code, 1);
    assert!(err.contains("--gateway"), "{err}");
}

#[test]
fn usage_errors_and_unreachable_controller_have_their_own_exit_codes() {
    let c = ControllerProcess::start();
    assert_eq!(c.cli(&["network", "add", "x"]).0, 2, "missing --subnet is a usage error");
    let out = std::process::Command::new(support::BIN)
        .args(["network", "list", "--controller", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unreachable"));
}

#[test]
fn policy_add_show_list_delete() {
    let c = ControllerProcess::start();
    c.cli(&["network", "add", "red", "--subnet", "192.168.10.0/24"]);
    c.cli(&["network", "add", "green", "--subnet", "192.168.20.0/24"]);
    let p = c.cli_json(&[
        "policy",
        "add",
        "web",
        "--rule",
        "pass tcp red any <> green 80",
        "--rule",
        "deny any any any <> any any log",
    ]);
    assert_eq!(p["rules"].as_array().unwrap().len(), 2);
    let (code, out, _) = c.cli(&["policy", "show", "web"]);
    assert_eq!(code, 0);
    assert!(out.contains("pass tcp default-domain:admin:red any <> default-domain:admin:green 80"), "{out}");
    assert!(out.contains("deny any any any <> any any log"), "{out}");
    let (_, out, _) = c.cli(&["policy", "list"]);
    assert!(out.contains("default-domain:admin:web"));
    let up = c.cli_json(&["policy", "update", "web", "--rule", "pass icmp red any <> green any"]);
    assert_eq!(up["rules"].as_array().unwrap().len(), 1);
    let (code, _, err) = c.cli(&["policy", "add", "bad", "--rule", "pass tcp red any => green 80"]);
    assert_eq!(code, 1);
    assert!(err.contains("rules[0].direction"), "{err}");
    assert_eq!(c.cli(&["policy", "delete", "web"]).0, 0);
    assert_eq!(c.cli_json(&["policy", "list"]).as_array().unwrap().len(), 0);
}

#[test]
fn endpoint_and_host_listings() {
    let c = ControllerProcess::start();
    let api = support::Api::new(&c);
    c.cli(&["network", "add", "red", "--subnet", "192.168.10.0/24"]);
    api.put("/v1/hosts/h1", serde_json::json!({"underlay_ip": "10.99.0.1"}));
    let (_, e) = api.post("/v1/endpoints", serde_json::json!({"network": "red", "host": "h1", "name": "c1"}));
    let (code, out, _) = c.cli(&["endpoint", "list", "--network", "red"]);
    assert_eq!(code, 0);
    assert!(out.contains("192.168.10.2/24") && out.contains("pending"), "{out}");
    let shown = c.cli_json(&["endpoint", "show", e["id"].as_str().unwrap()]);
    assert_eq!(shown["name"], "c1");
    let (_, out, _) = c.cli(&["host", "list"]);
    assert!(out.contains("h1") && out.contains("10.99.0.1"), "{out}");
    assert_eq!(c.cli_json(&["host", "list"])[0]["name"], "h1");
    let (_, out, _) = c.cli(&["network", "show", "red"]);
    assert!(out.contains("c1") && out.contains("h1"), "{out}");
}

#[test]
fn a_configuration_file_gives_the_controller_and_the_credential() {
    use std::os::unix::fs::PermissionsExt;
    let c = ControllerProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], home: &std::path::Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(args)
            .env_clear()
            .env("HOME", home)
            .env("TESSERA_LOG", "warn")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The user's file: certificate paths relative to the file.
    let conf = dir.path().join(".config/tessera");
    std::fs::create_dir_all(&conf).unwrap();
    for f in ["ca.pem", "admin.pem", "admin-key.pem"] {
        std::fs::copy(c.pki.join(f), conf.join(f)).unwrap();
    }
    std::fs::write(
        conf.join("client.toml"),
        format!("controller = \"{}\"\nca = \"ca.pem\"\ncert = \"admin.pem\"\nkey = \"admin-key.pem\"\n", c.url),
    )
    .unwrap();
    let (code, out, err) = run(&["network", "list", "--json"], dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.trim_start().starts_with('['), "{out}");

    // A token in a file others may read is refused before anything is sent.
    let (_, tok) = support::Api::new(&c)
        .post("/v1/tokens", serde_json::json!({"name": "ci", "project": "default-domain:admin", "role": "member"}));
    let token_file = dir.path().join("token.toml");
    std::fs::write(
        &token_file,
        format!(
            "controller = \"{}\"\nca = \"{}\"\ntoken = \"{}\"\n",
            c.url,
            conf.join("ca.pem").display(),
            tok["secret"].as_str().unwrap()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = run(&["--config", token_file.to_str().unwrap(), "network", "list"], dir.path());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, _, err) = run(&["--config", token_file.to_str().unwrap(), "network", "list"], dir.path());
    assert_eq!(code, 0, "the token from the file is used: {err}");
}
