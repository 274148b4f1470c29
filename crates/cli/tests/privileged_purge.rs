//! Privileged tier: `tessera purge` on a host of a real fabric takes away
//! everything Tessera made in its kernel (endpoints' links, the network's
//! bridge and VXLAN device, its routing rules and routes, the nftables
//! tables) and nothing else; it is refused while the agent runs, and only
//! lists without `--yes`.

use serde_json::Value;
use tessera_testkit::{exec_in, Cluster};

/// `tessera purge --json [EXTRA]` in `host`.
fn purge(c: &Cluster, host: &str, extra: &[&str]) -> (std::process::Output, Option<Value>) {
    let sock = c.agent_socket(host).display().to_string();
    let mut args = vec!["--json", "purge", "--socket", &sock];
    args.extend(extra);
    let out = c.tessera_on(host, &args, &[]).unwrap();
    let json = serde_json::from_slice(&out.stdout).ok();
    (out, json)
}

/// What `command` prints inside `host`.
fn on(c: &Cluster, host: &str, command: &[&str]) -> String {
    let out = exec_in(c.host_netns(host).unwrap(), command[0], &command[1..]).unwrap();
    assert!(out.status.success(), "{command:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn privileged_purge_removes_everything_tessera_made_on_a_host_and_nothing_else() {
    let (mut c, _run) = tessera_testkit::start_cluster("tpg", &["h1", "h2"], env!("CARGO_BIN_EXE_tessera"));
    c.cli_ok(&["network", "add", "blue", "--subnet", "10.9.0.0/24"]).unwrap();
    c.container("h1", "a").unwrap();
    c.container("h2", "b").unwrap();
    c.attach("a", "blue", &[]).unwrap();
    let b = tessera_testkit::addresses(&c.attach("b", "blue", &[]).unwrap())[0].clone();
    assert_eq!(c.ping("a", &b, 2).unwrap(), 2, "a reaches b before the purge\n{}", c.logs_tail(30));
    let links_before = on(&c, "h1", &["ip", "-o", "link"]);

    // Refused while the agent runs.
    let (out, _) = purge(&c, "h1", &["--yes"]);
    assert!(!out.status.success(), "a purge while the agent runs is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("stop it first"), "{}", String::from_utf8_lossy(&out.stderr));

    c.stop_agent("h1");
    // Without --yes: the list, nothing removed.
    let (out, listed) = purge(&c, "h1", &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed = listed.unwrap();
    let names =
        |k: &str| -> Vec<String> { listed[k].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect() };
    assert!(names("links").iter().any(|l| l.starts_with("tb")), "the bridge: {listed}");
    assert!(names("links").iter().any(|l| l.starts_with("tx")), "the VXLAN device: {listed}");
    assert!(names("links").iter().any(|l| l.starts_with("tv")), "a's host veth: {listed}");
    assert!(!names("rules").is_empty() && !names("routes").is_empty(), "{listed}");
    assert!(names("nft_tables").contains(&"inet tessera".to_string()), "{listed}");
    assert_eq!(on(&c, "h1", &["ip", "-o", "link"]), links_before, "nothing removed without --yes");

    let (out, removed) = purge(&c, "h1", &["--yes"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(removed.unwrap(), listed, "what was listed is what was removed");

    // Nothing of Tessera is left; the host's own links are.
    let left = tessera_testkit::leftovers(c.host_netns("h1").unwrap()).unwrap();
    assert!(left.is_empty(), "left after the purge: {left:#?}");
    let links = on(&c, "h1", &["ip", "-o", "link"]);
    assert!(links.contains(": lo:") && links.contains("eth0"), "the host's own links stay: {links}");
    // a's namespace lost its interface with the host veth.
    let a_links = String::from_utf8_lossy(&c.exec("a", "ip", &["-o", "link"]).unwrap().stdout).into_owned();
    assert!(!a_links.contains("eth0"), "{a_links}");

    // A second purge finds nothing; h2 is untouched and its agent still up.
    let (out, again) = purge(&c, "h1", &["--yes"]);
    assert!(out.status.success());
    assert!(again.unwrap()["links"].as_array().unwrap().is_empty());
    assert!(!tessera_testkit::leftovers(c.host_netns("h2").unwrap()).unwrap().is_empty(), "h2 keeps its data plane");
}
