//! Log lines as an operator's tools read them: a controller writing to a
//! file (not a terminal) writes no colour escapes, `--log-format json`
//! writes one JSON object per line, an unknown format is refused naming
//! the flag, and `--log` (`TESSERA_LOG`, `log` in the file) sets levels
//! per module.

mod support;

use std::process::Command;

use support::BIN;

/// A controller with its log in a file (not a terminal), until it serves.
fn controller_log(extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec![
        "controller",
        "--insecure-loopback",
        "--listen",
        "127.0.0.1:0",
        "--init",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    support::controller_log(&args)
}

#[test]
fn a_log_written_to_a_file_holds_no_colour_escapes() {
    let text = controller_log(&[]);
    assert!(!text.contains('\u{1b}'), "escape codes in a log file:\n{text:?}");
    assert!(text.lines().any(|l| l.contains(" INFO ") && l.contains("controller serving")), "{text}");
}

#[test]
fn json_logs_are_one_object_per_line_with_level_target_and_fields() {
    let text = controller_log(&["--log-format", "json"]);
    let mut serving = false;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string() && v["target"].is_string(), "{line}");
        let message = v["fields"]["message"].as_str().unwrap_or_else(|| panic!("no message: {line}"));
        if message == "controller serving" {
            serving = true;
            assert_eq!(v["level"], "INFO");
            assert!(v["fields"]["listen"].as_str().is_some_and(|l| l.starts_with("127.0.0.1:")), "{line}");
        }
    }
    assert!(serving, "{text}");
}

#[test]
fn an_unknown_log_format_is_refused_naming_the_flag() {
    let out = Command::new(BIN).args(["--log-format", "xml", "network", "list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--log-format") && err.contains("xml") && err.contains("json"), "{err}");
}

#[test]
fn levels_per_module_come_from_the_log_setting_and_a_bad_filter_is_refused() {
    // A new store: the controller's service says so at INFO.
    let all = controller_log(&[]);
    assert!(all.contains("cluster made"), "{all}");
    let quiet = controller_log(&["--log", "info,tessera_controller=warn"]);
    assert!(!quiet.contains("cluster made"), "tessera_controller's INFO lines are off: {quiet}");
    let out = Command::new(BIN).args(["--log", "info,=bogus=", "network", "list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--log") && err.contains("not a log filter"), "{err}");
}
