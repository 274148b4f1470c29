//! The hosts' configuration file (`--config-file`, else
//! /etc/tessera/tessera.toml): a controller runs from the file alone; a flag
//! wins over its variable, which wins over the file, which wins over the
//! default, as `tessera config show` reports; a mistake in the file is
//! refused at start naming the file, the section and the key; a file others
//! may write, or a token others may read, is refused.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use support::BIN;

fn file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn tessera(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("TESSERA_LOG_FORMAT").env_remove("TESSERA_CONFIG_FILE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn show(config: &Path, command: Option<&str>, env: &[(&str, &str)]) -> Vec<Value> {
    let mut args = vec!["--config-file", config.to_str().unwrap(), "--json", "config", "show"];
    args.extend(command);
    let out = tessera(&args, env);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Value>(&out.stdout).unwrap().as_array().unwrap().clone()
}

fn entry<'a>(rows: &'a [Value], key: &str) -> &'a Value {
    rows.iter().find(|r| r["key"] == key).unwrap_or_else(|| panic!("no {key} in {rows:?}"))
}

#[test]
fn a_controller_runs_from_the_file_alone_and_a_flag_wins_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = file(
        dir.path(),
        "tessera.toml",
        &format!(
            "log-format = \"json\"\n[controller]\nlisten = \"127.0.0.1:0\"\ndata-dir = \"{}\"\ninit = true\ninsecure-loopback = true\n",
            data.display()
        ),
        0o644,
    );
    let config = config.to_str().unwrap();
    let log = support::controller_log(&["--config-file", config, "controller"]);
    let serving: Value =
        log.lines().find(|l| l.contains("controller serving")).map(|l| serde_json::from_str(l).unwrap()).unwrap();
    assert!(serving["fields"]["store"].as_str().unwrap().contains(data.to_str().unwrap()), "{serving}");
    assert!(data.join("tessera.redb").exists(), "the store is where the file says");
    // The flag wins: text, not JSON.
    let log = support::controller_log(&["--config-file", config, "--log-format", "text", "controller"]);
    assert!(log.lines().any(|l| l.contains(" INFO ") && l.contains("controller serving")), "{log}");
}

#[test]
fn config_show_reports_the_variable_over_the_file_over_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let config = file(dir.path(), "t.toml", "[agent]\nhost = \"h7\"\nstate-dir = \"/var/lib/t\"\n", 0o644);
    let rows = show(&config, Some("agent"), &[("TESSERA_AGENT_STATE_DIR", "/srv/t")]);
    let host = entry(&rows, "host");
    assert_eq!((host["value"].as_str(), host["source"].as_str().unwrap().starts_with("file ")), (Some("h7"), true), "{host}");
    let state = entry(&rows, "state-dir");
    assert_eq!(
        (state["value"].as_str(), state["source"].as_str()),
        (Some("/srv/t"), Some("environment TESSERA_AGENT_STATE_DIR"))
    );
    let socket = entry(&rows, "socket");
    assert_eq!(socket["source"], "default", "{socket}");
    let out = tessera(&["--config-file", config.to_str().unwrap(), "config", "show", "agent"], &[]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("KEY") && table.contains("h7") && table.contains(config.to_str().unwrap()), "{table}");
}

#[test]
fn mistakes_in_the_file_are_refused_naming_the_file_the_section_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[controller]\nlisen = \"127.0.0.1:1\"\n", "[controller] lisen: unknown key"),
        ("[controller]\nlisten = \"nope\"\n", "[controller] listen: invalid value 'nope'"),
        ("[controler]\nlisten = \"127.0.0.1:1\"\n", "unknown section [controler]"),
        ("[controller]\ninit = \"yes\"\n", "[controller] init: must be true or false"),
        ("[controller]\nlisten = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n", "[controller] listen: takes one value"),
        ("log-format = \"xml\"\n", "log-format: invalid value 'xml'"),
        ("not toml", "is not valid TOML"),
        ("[global]\nconfig-file = \"/etc/other.toml\"\n", "config-file: a configuration file cannot name another"),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let config = file(dir.path(), &format!("c{i}.toml"), text, 0o644);
        let out = tessera(&["--config-file", config.to_str().unwrap(), "controller"], &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        assert!(err.contains(config.to_str().unwrap()) && err.contains(expected), "{text}: {err}");
    }
    let missing = dir.path().join("missing.toml");
    let out = tessera(&["--config-file", missing.to_str().unwrap(), "status"], &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the configuration file"), "a named file must exist");
}

#[test]
fn a_file_others_may_write_or_a_token_others_may_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let writable = file(dir.path(), "w.toml", "[agent]\nhost = \"h1\"\n", 0o666);
    let out = tessera(&["--config-file", writable.to_str().unwrap(), "config", "show"], &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("may be written by others"), "{out:?}");
    let token = file(dir.path(), "t.toml", "token = \"secret\"\n", 0o644);
    let out = tessera(&["--config-file", token.to_str().unwrap(), "config", "show"], &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds a token but others may read it"), "{out:?}");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let rows = show(&token, None, &[]);
    assert_eq!(entry(&rows, "token")["value"], "(set)", "a token is never printed");
}

#[test]
fn required_flags_come_from_the_file_and_a_commands_section_reaches_its_own_commands() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = file(
        dir.path(),
        "tessera.toml",
        &format!("[controller]\ndata-dir = \"{}\"\n[agent]\nhost = \"h1\"\nunderlay-ip = \"192.0.2.77\"\n", data.display()),
        0o644,
    );
    let config = config.to_str().unwrap();
    // The agent's --host and --underlay-ip are required; the file gives
    // them, so the agent gets as far as looking for its underlay address.
    let out = tessera(&["--config-file", config, "agent", "--state-dir", dir.path().join("agent").to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!stderr.contains("required arguments"), "{stderr}");
    assert!(stderr.contains("192.0.2.77"), "{stderr}");
    // `tessera controller init` makes the fabric where [controller] says,
    // once; a second run finds it.
    let first = tessera(&["--config-file", config, "controller", "init"], &[]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(data.join("tessera.redb").exists(), "the store is where the file says");
    let again = tessera(&["--config-file", config, "controller", "init"], &[]);
    assert_eq!(again.stdout, first.stdout, "the same fabric");
    // A flag of `init` wins over the file.
    let other = dir.path().join("other");
    let out = tessera(&["--config-file", config, "controller", "init", "--data-dir", other.to_str().unwrap()], &[]);
    assert!(out.status.success() && other.join("tessera.redb").exists(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn an_empty_variable_is_as_if_unset() {
    let dir = tempfile::tempdir().unwrap();
    let config = file(dir.path(), "tessera.toml", "[docker-plugin]\nhost = \"h7\"\n", 0o644);
    let rows = show(&config, Some("docker-plugin"), &[("TESSERA_DOCKER_PLUGIN_HOST", ""), ("DOCKER_HOST", "")]);
    assert_eq!(entry(&rows, "host")["value"], "h7", "{rows:?}");
    assert!(entry(&rows, "host")["source"].as_str().unwrap().starts_with("file "), "{rows:?}");
    assert_eq!(entry(&rows, "docker-host")["source"], "default", "{rows:?}");
    let globals = show(&config, None, &[("TESSERA_CONTROLLER", "")]);
    assert_ne!(entry(&globals, "controller")["source"], "environment TESSERA_CONTROLLER", "{globals:?}");
}
