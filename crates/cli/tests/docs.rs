//! Shell completions and manual pages, generated from the CLI itself: the
//! scripts load in their shell and know the commands, and every command
//! has its page.

mod support;

use std::process::Command;

use support::BIN;

fn completions(shell: &str) -> String {
    let out = Command::new(BIN).args(["completions", shell]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_bash_script_parses_and_completes_commands_and_their_flags() {
    let script = completions("bash");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tessera.bash");
    std::fs::write(&path, &script).unwrap();
    let check = Command::new("bash").arg("-n").arg(&path).output().expect("bash");
    assert!(check.status.success(), "bash -n: {}", String::from_utf8_lossy(&check.stderr));
    // Completing `tessera network a` in a shell that sourced the script.
    let probe = format!(
        "source {}; COMP_WORDS=(tessera network a); COMP_CWORD=2; _tessera tessera a network; echo \"${{COMPREPLY[@]}}\"",
        path.display()
    );
    let out = Command::new("bash").args(["-c", &probe]).output().unwrap();
    let offered = String::from_utf8_lossy(&out.stdout);
    assert!(offered.split_whitespace().any(|w| w == "add"), "completions of `tessera network a`: {offered:?}");
    for word in ["floating-ip", "--log-format", "attach", "man-pages"] {
        assert!(script.contains(word), "the bash script knows {word}");
    }
}

#[test]
fn zsh_and_fish_scripts_name_the_commands() {
    assert!(completions("zsh").starts_with("#compdef tessera"));
    let fish = completions("fish");
    assert!(fish.contains("complete -c tessera") && fish.contains("floating-ip"), "{}", &fish[..200.min(fish.len())]);
}

#[test]
fn every_command_has_a_manual_page() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN).args(["man-pages", "--dir"]).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for page in ["tessera.1", "tessera-network.1", "tessera-network-add.1", "tessera-agent.1", "tessera-controller-status.1"] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page} is a manual page: {}", &text[..100.min(text.len())]);
    }
    let add = std::fs::read_to_string(dir.path().join("tessera-network-add.1")).unwrap();
    assert!(add.contains("subnet"), "the page of `network add` documents its flags");
    let pages = std::fs::read_dir(dir.path()).unwrap().count();
    assert!(pages > 50, "a page per command at every depth: {pages}");
}
