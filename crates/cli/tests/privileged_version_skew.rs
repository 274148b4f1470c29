//! Privileged tier: versions side by side. The previous release
//! (`packaging/previous-release`: its version and commit) is built from git
//! history into `target/previous-VERSION` (once; later runs reuse it) and
//! run beside this build on a two-host fabric: an agent of the previous
//! release with this build's controller, then this build's agents with the
//! previous release's controller. Each way, containers on both hosts attach
//! and ping each other, and a policy change reaches both. A caller outside
//! the window (another major version) is refused with `version_skew`.
//! `tessera status` lists the networks of the host's endpoints.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tessera_testkit::{addresses, Cluster, ClusterSpec};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The previous release's binary: built from its commit unless a build of
/// it is already there.
fn previous_release() -> (String, PathBuf) {
    let text = std::fs::read_to_string(repo().join("packaging/previous-release")).unwrap();
    let line = text.lines().find(|l| !l.starts_with('#') && !l.trim().is_empty()).expect("a release line");
    let (version, commit) = line.split_once(' ').expect("VERSION COMMIT");
    let (version, commit) = (version.trim().to_string(), commit.trim().to_string());
    let target = repo().join("target").join(format!("previous-{version}"));
    let bin = target.join("debug/tessera");
    let stamp = target.join("commit");
    if bin.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(commit.as_str()) {
        return (version, bin);
    }
    let git = |args: &[&str]| Command::new("git").arg("-C").arg(repo()).args(args).output().expect("git");
    if !git(&["cat-file", "-e", &format!("{commit}^{{commit}}")]).status.success() {
        // A shallow clone: the history is where it was cloned from.
        let fetched = git(&["fetch", "--quiet", "--unshallow"]);
        assert!(
            git(&["cat-file", "-e", &format!("{commit}^{{commit}}")]).status.success(),
            "the previous release's commit {commit} is not in this clone's history, and fetching it failed: {}",
            String::from_utf8_lossy(&fetched.stderr)
        );
    }
    let src = target.join("src");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src).unwrap();
    let archive = Command::new("sh")
        .arg("-c")
        .arg(format!("git -C '{}' archive {commit} | tar -x -C '{}'", repo().display(), src.display()))
        .status()
        .unwrap();
    assert!(archive.success(), "git archive {commit}");
    eprintln!("building tessera {version} from {commit} into {} (once)", target.display());
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo.args(["build", "--locked", "-p", "tessera", "--bin", "tessera"]).current_dir(&src);
    // The build of another tree: none of this test's cargo settings.
    for (k, _) in std::env::vars() {
        if k.starts_with("CARGO_") && k != "CARGO_HOME" && k != "CARGO_INCREMENTAL" {
            cargo.env_remove(k);
        }
    }
    let built = cargo.env("CARGO_TARGET_DIR", &target).env("CARGO_PROFILE_DEV_DEBUG", "0").status().unwrap();
    assert!(built.success(), "cargo build of tessera {version} ({commit})");
    std::fs::write(&stamp, &commit).unwrap();
    let _ = std::fs::remove_dir_all(&src);
    (version, bin)
}

fn version_of(bin: &Path) -> String {
    let out = Command::new(bin).arg("--version").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `a` on h1 and `b` on h2 in network `net`: each reaches the other. `c`
/// on h2 in `net`-2 is out of `a`'s reach until a policy connects the two
/// networks, and again once its rule is changed to refuse.
fn attach_ping_and_policy(c: &mut Cluster, net: &str, subnets: [&str; 2]) {
    let other = format!("{net}-2");
    c.cli_ok(&["network", "add", net, "--subnet", subnets[0]]).unwrap();
    c.cli_ok(&["network", "add", &other, "--subnet", subnets[1]]).unwrap();
    let (a, b, d) = (format!("{net}-a"), format!("{net}-b"), format!("{net}-c"));
    c.container("h1", &a).unwrap();
    c.container("h2", &b).unwrap();
    c.container("h2", &d).unwrap();
    let ip_a = addresses(&c.attach(&a, net, &[]).unwrap())[0].clone();
    let ip_b = addresses(&c.attach(&b, net, &[]).unwrap())[0].clone();
    let ip_d = addresses(&c.attach(&d, &other, &[]).unwrap())[0].clone();
    let reach = |c: &Cluster, from: &str, to: &str, want: bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = c.ping(from, to, 1).unwrap_or(0) == 1;
            if got == want {
                return;
            }
            assert!(Instant::now() < deadline, "{from} → {to}: want reachable={want}\n{}", c.logs_tail(30));
        }
    };
    reach(c, &a, &ip_b, true);
    reach(c, &b, &ip_a, true);
    reach(c, &a, &ip_d, false);
    let policy = format!("{net}-icmp");
    c.cli_ok(&["policy", "add", &policy, "--rule", &format!("pass icmp {net} any <> {other} any")]).unwrap();
    c.cli_ok(&["network", "update", net, "--policy", &policy]).unwrap();
    c.cli_ok(&["network", "update", &other, "--policy", &policy]).unwrap();
    reach(c, &a, &ip_d, true);
    c.cli_ok(&["policy", "rule", "set", &policy, "0", &format!("deny icmp {net} any <> {other} any")]).unwrap();
    reach(c, &a, &ip_d, false);
    reach(c, &a, &ip_b, true);
}

#[test]
fn privileged_the_previous_release_and_this_one_work_together_both_ways() {
    let (version, previous) = previous_release();
    let ours = version_of(Path::new(BIN));
    assert!(version_of(&previous).ends_with(&version), "{} is {version}", previous.display());
    assert_ne!(version_of(&previous), ours, "two versions");
    eprintln!("{ours} beside tessera {version}");

    // The previous release's agent (h1) with this build's controller.
    let (mut c, _run) = tessera_testkit::start_cluster("tvs", &["h1", "h2"], BIN);
    c.set_bin("agent-h1", &previous);
    c.start_agent("h1").unwrap();
    attach_ping_and_policy(&mut c, "older-agent", ["10.71.0.0/24", "10.73.0.0/24"]);

    // A caller of another major version is refused, naming both versions.
    let builder = tessera_testkit::admin_http(&c).unwrap();
    let http = tessera_fabric::run_in(c.host_netns("h1").unwrap(), || builder.build()).unwrap().unwrap();
    let resp = http.get(format!("{}/v1/networks", c.url)).header("tessera-version", "9.0.0").send().unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!(resp.headers()["tessera-version"].to_str().unwrap(), ours.trim_start_matches("tessera "));
    let body: Value = resp.json().unwrap();
    assert_eq!(body["error"]["code"], "version_skew", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("9.0.0"), "{body}");
    drop(c);
    drop(_run);

    // This build's agents with the previous release's controller.
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("tvt{}", std::process::id() % 100_000);
    let mut c = Cluster::build(ClusterSpec::new(&prefix, &["h1", "h2"], BIN, dir.path())).unwrap();
    c.set_bin("controller", &previous);
    c.run().unwrap();
    attach_ping_and_policy(&mut c, "older-controller", ["10.72.0.0/24", "10.74.0.0/24"]);
    let status = c.tessera_on("h1", &["--json", "status", "--socket", &c.agent_socket("h1").display().to_string()], &[]).unwrap();
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["controller_connected"], true, "{status}");
    // The networks of h1's endpoints, at a glance: its one endpoint,
    // programmed.
    let local = status["local_networks"].as_array().unwrap();
    let net = local.iter().find(|n| n["name"] == "default-domain:admin:older-controller").unwrap_or_else(|| panic!("{status}"));
    assert_eq!((net["endpoints"].as_u64(), net["programmed"].as_u64()), (Some(1), Some(1)), "{status}");
    let text = c.tessera_on("h1", &["status", "--socket", &c.agent_socket("h1").display().to_string()], &[]).unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("NETWORK") && text.contains("default-domain:admin:older-controller"), "{text}");
}
