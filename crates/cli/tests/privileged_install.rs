//! Privileged tier: the Debian package, as an operator uses it. `./x package`
//! packs this build's binary; it is installed with dpkg into two fresh
//! Debian 12 root file systems (debootstrap, with only what the package
//! depends on), one per host of a two-host fabric. Each host starts the
//! controller and the agent from the installed units' lines (systemd does
//! not run here: the test does what `systemctl start` would, in the host's
//! namespace, chrooted), with certificates from `tessera pki` and the
//! installed configuration file edited as the README says; a namespace
//! attached on each host pings the other across the overlay. Then the
//! units are stopped and the package purged: no link, rule, route or
//! nftables table of Tessera's is left on either host, and each root file
//! system holds exactly the files it held before the install.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tessera_testkit::{Fabric, FabricSpec, Netns};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");
const MIRROR: &str = "http://deb.debian.org/debian";
/// What the package depends on besides libc (its control file's Depends).
const DEPENDS: &str = "nftables,iputils-ping";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn ok(what: &str, out: std::io::Result<Output>) -> String {
    let out = out.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Root file systems with `/proc` mounted in each; on drop the mounts go,
/// then (only when every unmount succeeded) the directories.
struct Roots {
    dir: PathBuf,
    mounts: Vec<PathBuf>,
}

impl Drop for Roots {
    fn drop(&mut self) {
        let mut unmounted = true;
        for m in self.mounts.iter().rev() {
            let umount = |args: &[&str]| Command::new("umount").args(args).arg(m).status().is_ok_and(|s| s.success());
            unmounted &= umount(&[]) || umount(&["-l"]);
        }
        if unmounted {
            let _ = Command::new("rm").args(["-rf", "--one-file-system"]).arg(&self.dir).status();
        } else {
            eprintln!("kept {}: a mount under it could not be removed", self.dir.display());
        }
    }
}

/// Every path under `root` on its file system, but dpkg's and apt's own
/// records and logs (which name what was installed and removed).
fn files(root: &Path) -> BTreeSet<String> {
    let out = ok("find", Command::new("find").arg(root).arg("-xdev").output());
    let prefix = root.display().to_string();
    let bookkeeping = ["/var/lib/dpkg", "/var/log", "/var/cache/debconf", "/var/cache/ldconfig", "/var/lib/apt", "/tmp"];
    out.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter(|p| !bookkeeping.iter().any(|b| p.starts_with(b)))
        .map(str::to_string)
        .collect()
}

/// `chroot ROOT ARGS` inside `netns`.
fn chroot(netns: &Netns, root: &Path, args: &[&str]) -> std::io::Result<Output> {
    tessera_testkit::exec_in(netns, "chroot", std::iter::once(root.as_os_str()).chain(args.iter().map(|a| a.as_ref())))
}

/// What `systemctl start UNIT` would do, from the installed unit: its
/// runtime and state directories made, its ExecStart run (chrooted, in the
/// host's namespace), output to `log`.
fn start_unit(fabric: &Fabric, host: &str, root: &Path, unit: &str, log: &Path) -> Child {
    let text = std::fs::read_to_string(root.join("lib/systemd/system").join(unit)).unwrap_or_else(|e| panic!("{unit}: {e}"));
    let value = |key: &str| text.lines().find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_string));
    if let Some(dir) = value("RuntimeDirectory") {
        std::fs::create_dir_all(root.join("run").join(dir)).unwrap();
    }
    if let Some(dir) = value("StateDirectory") {
        let path = root.join("var/lib").join(dir);
        std::fs::create_dir_all(&path).unwrap();
        let mode = value("StateDirectoryMode").map_or(0o755, |m| u32::from_str_radix(&m, 8).unwrap());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let exec = value("ExecStart").unwrap_or_else(|| panic!("{unit}: no ExecStart"));
    let out = std::fs::File::create(log).unwrap();
    let mut cmd = Command::new("chroot");
    cmd.arg(root).args(exec.split_whitespace()).stdin(Stdio::null()).stdout(out.try_clone().unwrap()).stderr(out);
    fabric.spawn(host, cmd).unwrap_or_else(|e| panic!("{unit} on {host}: {e}"))
}

/// What `systemctl stop` does: SIGTERM, then (past its timeout) SIGKILL.
/// A unit that needs the SIGKILL fails the test.
fn stop(mut child: Child, unit: &str) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{unit} did not stop within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!("{}:\n{}", path.display(), lines[lines.len().saturating_sub(20)..].join("\n"))
}

#[test]
fn privileged_the_package_installs_into_fresh_debian_runs_a_two_host_fabric_and_purges_without_a_trace() {
    let work = tempfile::Builder::new().prefix("install-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let logs = work.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();

    // The package of this build's binary.
    let out = Command::new("bash")
        .arg(repo().join("x"))
        .args(["package", "--binary", BIN, "--out"])
        .arg(work.path().join("pkg"))
        .current_dir(repo())
        .output();
    let deb = PathBuf::from(ok("./x package", out).trim());
    assert!(deb.is_file(), "{}", deb.display());

    // A fresh Debian 12 with what the package depends on, and a copy per host.
    let mut roots = Roots { dir: work.path().join("roots"), mounts: Vec::new() };
    let base = roots.dir.join("base");
    std::fs::create_dir_all(&roots.dir).unwrap();
    let made = Command::new("debootstrap")
        .args(["--variant=minbase", &format!("--include={DEPENDS}"), "bookworm"])
        .arg(&base)
        .arg(MIRROR)
        .output();
    let made = made.unwrap_or_else(|e| panic!("debootstrap (./x setup installs it): {e}"));
    assert!(
        made.status.success(),
        "debootstrap could not make a Debian 12 root file system from {MIRROR}: {}",
        String::from_utf8_lossy(&made.stderr)
    );

    let prefix = format!("tin{}", std::process::id() % 100_000);
    let fabric = Fabric::build(FabricSpec::new(&prefix, ["h1", "h2"])).expect("a two-host fabric (root, iproute2)");
    let hosts = ["h1", "h2"];
    let ip = |h: &str| fabric.host(h).unwrap().underlay_ip.to_string();
    let netns = |h: &str| &fabric.host(h).unwrap().netns;
    let mut root = Vec::new();
    let mut before = Vec::new();
    for h in hosts {
        let r = roots.dir.join(h);
        ok("cp", Command::new("cp").arg("-a").arg(&base).arg(&r).output());
        ok("mount proc", Command::new("mount").args(["-t", "proc", "proc"]).arg(r.join("proc")).output());
        roots.mounts.push(r.join("proc"));
        before.push(files(&r));
        std::fs::copy(&deb, r.join("tmp/tessera.deb")).unwrap();
        ok(&format!("dpkg -i on {h}"), chroot(netns(h), &r, &["dpkg", "-i", "/tmp/tessera.deb"]));
        root.push(r);
    }

    // What the package put in place.
    for path in [
        "usr/bin/tessera",
        "lib/systemd/system/tessera-controller.service",
        "lib/systemd/system/tessera-agent.service",
        "lib/systemd/system/tessera-docker-plugin.service",
        "etc/tessera/tessera.toml",
        "usr/share/bash-completion/completions/tessera",
        "usr/share/zsh/vendor-completions/_tessera",
        "usr/share/fish/vendor_completions.d/tessera.fish",
        "usr/share/man/man1/tessera.1.gz",
        "usr/share/man/man1/tessera-network-add.1.gz",
        "usr/lib/cni/tessera",
    ] {
        assert!(root[0].join(path).exists(), "the package installs /{path}");
    }

    // Certificates (made on h1, the host's own copied to h2) and each host's
    // configuration: the installed file with its addresses and names.
    let pki = |args: &[&str]| {
        let mut all = vec!["tessera", "pki"];
        all.extend(args);
        ok("tessera pki", chroot(netns("h1"), &root[0], &all));
    };
    pki(&["init", "--dir", "/etc/tessera/pki", "--san", &ip("h1")]);
    pki(&["issue-host", "h1", "--dir", "/etc/tessera/pki"]);
    pki(&["issue-host", "h2", "--dir", "/etc/tessera/pki"]);
    std::fs::create_dir_all(root[1].join("etc/tessera/pki/hosts")).unwrap();
    for f in ["ca.pem", "hosts/h2.pem", "hosts/h2-key.pem"] {
        std::fs::copy(root[0].join("etc/tessera/pki").join(f), root[1].join("etc/tessera/pki").join(f)).unwrap();
    }
    let controller = format!("https://{}:8082", ip("h1"));
    for (i, h) in hosts.iter().enumerate() {
        let path = root[i].join("etc/tessera/tessera.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let edited = text
            .replace("controller = \"https://127.0.0.1:8082\"", &format!("controller = \"{controller}\""))
            .replace("hosts/localhost", &format!("hosts/{h}"))
            .replace("listen = \"127.0.0.1:8082\"", &format!("listen = \"{}:8082\"", ip("h1")))
            .replace("host = \"localhost\"", &format!("host = \"{h}\""))
            .replace("underlay-ip = \"127.0.0.1\"", &format!("underlay-ip = \"{}\"", ip(h)));
        assert_ne!(text, edited);
        std::fs::write(&path, edited).unwrap();
    }

    // The fabric, made once; then the units, as systemd would start them.
    ok("tessera controller init", chroot(netns("h1"), &root[0], &["tessera", "controller", "init"]));
    let mut running = vec![(
        "the controller".to_string(),
        start_unit(&fabric, "h1", &root[0], "tessera-controller.service", &logs.join("controller")),
    )];
    for (i, h) in hosts.iter().enumerate() {
        let agent = start_unit(&fabric, h, &root[i], "tessera-agent.service", &logs.join(format!("agent-{h}")));
        running.push((format!("the agent of {h}"), agent));
    }
    let all_logs = || ["controller", "agent-h1", "agent-h2"].map(|n| tail(&logs.join(n))).join("\n");

    // The first network, as the administrator (the configuration names the
    // controller and its CA).
    let admin = ["tessera", "--cert", "/etc/tessera/pki/admin.pem", "--key", "/etc/tessera/pki/admin-key.pem"];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut args = admin.to_vec();
        args.extend(["network", "add", "blue", "--subnet", "10.61.0.0/24"]);
        let out = chroot(netns("h1"), &root[0], &args).unwrap();
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "network add: {}\n{}", String::from_utf8_lossy(&out.stderr), all_logs());
        std::thread::sleep(Duration::from_millis(200));
    }

    // A namespace on each host, attached by the process in it.
    let mut address = Vec::new();
    let mut containers = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let c = fabric.add_container(h, "c").unwrap();
        let mut sleep = Command::new("sleep");
        sleep.arg("600");
        let pid = fabric.spawn_in_netns(&c.netns, sleep).unwrap().id().to_string();
        let deadline = Instant::now() + Duration::from_secs(20);
        let attached = loop {
            let out = chroot(netns(h), &root[i], &["tessera", "--json", "attach", "--network", "blue", "--pid", &pid]).unwrap();
            if out.status.success() {
                break serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap();
            }
            assert!(Instant::now() < deadline, "attach on {h}: {}\n{}", String::from_utf8_lossy(&out.stderr), all_logs());
            std::thread::sleep(Duration::from_millis(200));
        };
        address.push(tessera_testkit::addresses(&attached)[0].clone());
        containers.push(c);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while tessera_testkit::ping_in(&containers[0].netns, &address[1], 1).unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "h1's namespace does not reach {} on h2\n{}", address[1], all_logs());
    }
    assert_eq!(tessera_testkit::ping_in(&containers[1].netns, &address[0], 3).unwrap(), 3, "h2 → h1\n{}", all_logs());

    // Stopped as `systemctl stop` would, then purged.
    // The controller first, while both agents watch it (as when its host is
    // stopped on a fabric of many hosts), then the agents.
    for (unit, child) in running {
        stop(child, &unit);
    }
    for (i, h) in hosts.iter().enumerate() {
        ok(&format!("dpkg --purge on {h}"), chroot(netns(h), &root[i], &["dpkg", "--purge", "tessera"]));
        let status = chroot(netns(h), &root[i], &["dpkg", "-s", "tessera"]).unwrap();
        assert!(!status.status.success(), "tessera is gone from {h}'s dpkg");
        let left = tessera_testkit::leftovers(netns(h)).unwrap();
        assert!(left.is_empty(), "left in {h}'s kernel after the purge: {left:#?}");
        let after = files(&root[i]);
        let added: Vec<_> = after.difference(&before[i]).collect();
        let removed: Vec<_> = before[i].difference(&after).collect();
        assert!(added.is_empty() && removed.is_empty(), "{h}'s files after the purge: added {added:#?}, removed {removed:#?}");
    }
    let containers_left = tessera_testkit::exec_in(&containers[0].netns, "ip", ["-o", "link"]).unwrap();
    assert!(
        !String::from_utf8_lossy(&containers_left.stdout).contains("eth0"),
        "the namespace's interface went with its host veth"
    );
    drop(fabric);
    drop(roots);
}
