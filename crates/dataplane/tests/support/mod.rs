//! A fabric of network namespaces for the privileged tests: an underlay
//! namespace with a bridge, "host" namespaces joined to it by veths (underlay
//! `10.99.<n>.<i>/24`, device `eth0`), and "container" namespaces.
//!
//! Every namespace is named `tsr-<pid>-<n>-<name>`, unique per test; the
//! [`Fabric`] guard kills the processes it started and deletes its
//! namespaces (and with them every device in them) when dropped, also when
//! the test panics. Namespaces left by a test process that no longer exists
//! (killed with SIGKILL) are removed by the next fabric.

#![allow(dead_code)]

pub mod intent;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static NEXT: AtomicU32 = AtomicU32::new(1);

/// Fails the test, saying why, when it cannot run here.
pub fn require_privileges() {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let euid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().nth(1)).unwrap_or("?");
    assert_eq!(
        euid, "0",
        "privileged test: must run as root (effective uid is {euid}); run `sudo -E cargo test` or `./x test` as root"
    );
    for (tool, arg, package) in [
        ("ip", "-V", "iproute2"),
        ("nft", "--version", "nftables"),
        ("ping", "-V", "iputils-ping"),
        ("tcpdump", "--version", "tcpdump"),
        ("conntrack", "--version", "conntrack"),
    ] {
        let ok = Command::new(tool).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status().map(|s| s.success());
        assert!(
            matches!(ok, Ok(true)),
            "privileged test: `{tool}` is missing or broken ({ok:?}); install the Debian package {package} (`./x setup`)"
        );
    }
}

pub fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("cannot run {cmd} {args:?}: {e}"))
}

/// Runs a command and fails the test if it fails.
pub fn must(cmd: &str, args: &[&str]) -> String {
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub struct Fabric {
    prefix: String,
    /// Third octet of the underlay subnet.
    pub n: u32,
    namespaces: Vec<String>,
    children: Vec<Child>,
    hosts: u32,
}

/// A host of the fabric.
#[derive(Clone)]
pub struct Host {
    pub ns: String,
    pub underlay_ip: std::net::IpAddr,
}

impl Host {
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.ns))
    }
}

impl Fabric {
    pub fn new() -> Fabric {
        require_privileges();
        remove_orphans();
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let mut f = Fabric {
            prefix: format!("tsr-{}-{n}", std::process::id()),
            n: n % 250 + 1,
            namespaces: vec![],
            children: vec![],
            hosts: 0,
        };
        let u = f.netns("u");
        f.exec_ok(&u, "ip", &["link", "add", "br0", "type", "bridge"]);
        f.exec_ok(&u, "ip", &["link", "set", "br0", "up"]);
        f
    }

    /// Creates namespace `<prefix>-<name>` with its loopback up.
    pub fn netns(&mut self, name: &str) -> String {
        let ns = format!("{}-{name}", self.prefix);
        must("ip", &["netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        self.exec_ok(&ns, "ip", &["link", "set", "lo", "up"]);
        ns
    }

    /// A host namespace whose `eth0` is on the underlay bridge.
    pub fn host(&mut self, name: &str) -> Host {
        self.hosts += 1;
        let i = self.hosts;
        let ns = self.netns(name);
        let u = format!("{}-u", self.prefix);
        let port = format!("u{i}");
        must("ip", &["link", "add", &port, "netns", &u, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
        self.exec_ok(&u, "ip", &["link", "set", &port, "master", "br0", "up"]);
        let ip = format!("10.99.{}.{i}", self.n);
        self.exec_ok(&ns, "ip", &["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        self.exec_ok(&ns, "ip", &["link", "set", "eth0", "up"]);
        Host { ns, underlay_ip: ip.parse().unwrap() }
    }

    pub fn underlay_ns(&self) -> String {
        format!("{}-u", self.prefix)
    }

    /// `ip netns exec NS CMD ARGS...`
    pub fn exec(&self, ns: &str, cmd: &str, args: &[&str]) -> Output {
        let mut all = vec!["netns", "exec", ns, cmd];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    pub fn exec_ok(&self, ns: &str, cmd: &str, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", ns, cmd];
        all.extend_from_slice(args);
        must("ip", &all)
    }

    /// Starts `CMD ARGS` inside `ns`, killed when the fabric is dropped;
    /// returns its index for [`Fabric::wait`].
    pub fn spawn(&mut self, ns: &str, cmd: &str, args: &[&str], stderr: Stdio) -> usize {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, cmd])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd}: {e}"));
        self.children.push(child);
        self.children.len() - 1
    }

    /// Starts tcpdump on the underlay bridge and waits until it listens.
    pub fn tcpdump_underlay(&mut self, count: u32, filter: &str) -> usize {
        let u = self.underlay_ns();
        let count = count.to_string();
        let index = self.spawn(&u, "tcpdump", &["-i", "br0", "-n", "-l", "-c", &count, filter], Stdio::piped());
        let stderr = self.children[index].stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        loop {
            match lines.next() {
                Some(Ok(l)) if l.contains("listening on") => break,
                Some(Ok(_)) => continue,
                other => panic!("tcpdump did not start: {other:?}"),
            }
        }
        index
    }

    /// Waits (at most `limit`) for a started process and returns its output.
    pub fn wait(&mut self, index: usize, limit: Duration) -> String {
        let start = Instant::now();
        let child = &mut self.children[index];
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.wait();
        let mut out = String::new();
        if let Some(mut s) = child.stdout.take() {
            use std::io::Read;
            let _ = s.read_to_string(&mut out);
        }
        out
    }

    /// `ping` from a container; true when every probe was answered.
    pub fn ping(&self, ns: &str, dst: &str, count: u32) -> bool {
        let count = count.to_string();
        let out = self.exec(ns, "ping", &["-n", "-c", &count, "-i", "0.2", "-W", "2", dst]);
        let text = String::from_utf8_lossy(&out.stdout);
        out.status.success() && text.contains(" 0% packet loss")
    }

    /// `ping` expected to get no answer at all.
    pub fn ping_fails(&self, ns: &str, dst: &str) -> bool {
        let out = self.exec(ns, "ping", &["-n", "-c", "2", "-i", "0.2", "-W", "1", dst]);
        !out.status.success()
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
        }
    }
}

/// Deletes `tsr-<pid>-*` namespaces whose test process is gone.
fn remove_orphans() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("tsr-") else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !PathBuf::from(format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        }
    }
}
