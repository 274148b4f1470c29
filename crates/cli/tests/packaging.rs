//! What a host installation ships beside the binary (`packaging/`): the
//! default configuration is one every server command accepts, and each
//! systemd unit starts a command this binary has, with everything else in
//! that configuration.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::BIN;

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging")
}

#[test]
fn the_default_configuration_is_accepted_by_every_server_command() {
    // The file as installed: not writable by others.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tessera.toml");
    std::fs::copy(packaging().join("tessera.toml"), &config).unwrap();
    for command in ["controller", "agent", "docker-plugin"] {
        let out = Command::new(BIN)
            .args(["--config-file", config.to_str().unwrap(), "--json", "config", "show", command])
            .env_remove("TESSERA_CONFIG_FILE")
            .output()
            .unwrap();
        assert!(out.status.success(), "[{command}]: {}", String::from_utf8_lossy(&out.stderr));
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let from_file = rows.as_array().unwrap().iter().filter(|r| r["source"].as_str().unwrap().starts_with("file ")).count();
        assert!(from_file > 0, "[{command}] sets something: {rows}");
    }
}

#[test]
fn each_unit_starts_a_command_of_this_binary_configured_by_the_file() {
    let units = ["tessera-controller.service", "tessera-agent.service", "tessera-docker-plugin.service"];
    for unit in units {
        let text = std::fs::read_to_string(packaging().join("systemd").join(unit)).unwrap();
        let exec = text.lines().find_map(|l| l.strip_prefix("ExecStart=")).unwrap_or_else(|| panic!("{unit}: no ExecStart"));
        let words: Vec<&str> = exec.split_whitespace().collect();
        assert_eq!(words[0], "/usr/bin/tessera", "{unit}");
        assert_eq!(words.len(), 2, "{unit}: settings belong in the configuration file: {exec}");
        let help = Command::new(BIN).args([words[1], "--help"]).output().unwrap();
        assert!(help.status.success(), "{unit}: tessera {} is not a command", words[1]);
        assert!(text.contains("[Install]") && text.contains("WantedBy=multi-user.target"), "{unit}");
    }
    let plugin = std::fs::read_to_string(packaging().join("systemd/tessera-docker-plugin.service")).unwrap();
    assert!(plugin.contains("Before=docker.service"), "dockerd finds the plugin when it starts");
}
