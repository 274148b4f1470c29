//! Privileged tier: builds real fabrics of network namespaces. Needs root; when the machine
//! cannot run them, `Fabric::preflight` makes every test fail with the reason (never a skip).
//!
//! Each test uses its own prefix `tsk-<pid>-<n>` so the tests run in parallel, and marks the
//! processes it starts with `TESSERA_FABRIC_TEST_MARK=<prefix>` in their environment, so that
//! "no process left" is checked by a mark no other test or namespace can share.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use futures::TryStreamExt;
use netlink_packet_route::link::{LinkAttribute, LinkFlags};
use tessera_fabric::{exec_in, spawn_in, sysctl_read, with_netlink_in, Fabric, FabricError, FabricSpec, Netns, NETNS_RUN_DIR};

const MARK: &str = "TESSERA_FABRIC_TEST_MARK";

fn unique_prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("tsk-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

fn preflight() -> Result<()> {
    Fabric::preflight().context("privileged fabric tests cannot run on this machine")
}

fn two_hosts(prefix: &str) -> FabricSpec {
    FabricSpec {
        prefix: prefix.to_owned(),
        hosts: vec!["host1".into(), "host2".into()],
        underlay: "10.99.7.0/24".parse().unwrap(),
    }
}

/// A long-running process carrying the test's mark.
fn marked_sleep(prefix: &str) -> Command {
    let mut cmd = Command::new("sleep");
    cmd.arg("600").env(MARK, prefix).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    cmd
}

/// Pids of live (non-zombie) processes whose environment carries `MARK=prefix`.
fn marked_processes(prefix: &str) -> Vec<u32> {
    let needle = format!("{MARK}={prefix}");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        if environ.split(|b| *b == 0).any(|var| var == needle.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    let dash = format!("{prefix}-");
    Netns::list().unwrap_or_default().into_iter().filter(|n| n.starts_with(&dash)).collect()
}

fn assert_nothing_left(prefix: &str) -> Result<()> {
    let namespaces = namespaces_with_prefix(prefix);
    ensure!(namespaces.is_empty(), "namespaces left behind: {namespaces:?}");
    let processes = marked_processes(prefix);
    ensure!(processes.is_empty(), "processes left behind: {processes:?}");
    let scan = Fabric::scan_prefix(prefix)?;
    ensure!(scan.is_empty(), "scan_prefix still finds {scan:?}");
    Ok(())
}

fn netns_inode_of(pid: u32) -> Result<u64> {
    Ok(std::fs::metadata(format!("/proc/{pid}/ns/net"))?.ino())
}

#[test]
fn privileged_two_hosts_reach_each_other_over_the_underlay_and_leave_nothing_behind() -> Result<()> {
    preflight()?;
    let prefix = unique_prefix();
    let started = Instant::now();
    let fabric = Fabric::build(two_hosts(&prefix))?;
    eprintln!("build of a 2-host fabric: {:?}", started.elapsed());

    let mut expected: HashSet<String> =
        [format!("{prefix}-ul"), format!("{prefix}-host1"), format!("{prefix}-host2")].into_iter().collect();
    let container = fabric.add_container("host1", "c1")?;
    expected.insert(container.netns.name().to_owned());
    for name in &expected {
        ensure!(Path::new(NETNS_RUN_DIR).join(name).exists(), "{name} is not in {NETNS_RUN_DIR}");
    }
    ensure!(namespaces_with_prefix(&prefix).into_iter().collect::<HashSet<_>>() == expected);

    let host1 = fabric.host("host1")?;
    let host2 = fabric.host("host2")?;
    assert_eq!(host1.underlay_ip, Ipv4Addr::new(10, 99, 7, 1));
    assert_eq!(host2.underlay_ip, Ipv4Addr::new(10, 99, 7, 2));
    let ping = exec_in(&host1.netns, "ping", ["-c", "1", "-W", "2", &host2.underlay_ip.to_string()])?;
    ensure!(
        ping.status.success(),
        "ping from host1 to host2 failed: {}{}",
        String::from_utf8_lossy(&ping.stdout),
        String::from_utf8_lossy(&ping.stderr)
    );

    // One process registered with the fabric, one started behind its back: both must go.
    let _registered = fabric.spawn("host2", marked_sleep(&prefix))?;
    let _unregistered = spawn_in(&container.netns, marked_sleep(&prefix))?;
    ensure!(marked_processes(&prefix).len() == 2);

    let started = Instant::now();
    drop(fabric);
    eprintln!("teardown of a 2-host fabric with 2 processes: {:?}", started.elapsed());
    assert_nothing_left(&prefix)
}

#[test]
fn privileged_hosts_have_eth0_up_with_mtu_1500_and_forwarding_on() -> Result<()> {
    preflight()?;
    let prefix = unique_prefix();
    let fabric = Fabric::build(two_hosts(&prefix))?;
    let host = fabric.host("host2")?;

    let links =
        with_netlink_in(&host.netns, |handle| async move { handle.link().get().execute().try_collect::<Vec<_>>().await })??;
    let mut names = Vec::new();
    for link in &links {
        let name = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        });
        let mtu = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        });
        if name.as_deref() == Some("eth0") {
            ensure!(mtu == Some(1500), "eth0 mtu is {mtu:?}");
            ensure!(link.header.flags.contains(LinkFlags::Up), "eth0 is not up");
        }
        if name.as_deref() == Some("lo") {
            ensure!(link.header.flags.contains(LinkFlags::Up), "lo is not up");
        }
        names.extend(name);
    }
    names.sort();
    assert_eq!(names, ["eth0", "lo"]);

    assert_eq!(sysctl_read(&host.netns, "net.ipv4.ip_forward")?, "1");
    assert_eq!(sysctl_read(&host.netns, "net.ipv6.conf.all.forwarding")?, "1");
    let addr = exec_in(&host.netns, "ip", ["-4", "-o", "addr", "show", "dev", "eth0"])?;
    ensure!(String::from_utf8_lossy(&addr.stdout).contains("10.99.7.2/24"), "eth0 lacks 10.99.7.2/24");
    Ok(())
}

#[test]
fn privileged_container_namespace_has_only_lo_up() -> Result<()> {
    preflight()?;
    let prefix = unique_prefix();
    let fabric = Fabric::build(two_hosts(&prefix))?;
    let container = fabric.add_container("host2", "web")?;
    assert_eq!(container.netns.name(), format!("{prefix}-host2-web"));
    let links =
        with_netlink_in(&container.netns, |handle| async move { handle.link().get().execute().try_collect::<Vec<_>>().await })??;
    ensure!(links.len() == 1, "a container starts with lo only, found {} links", links.len());
    ensure!(links[0].header.flags.contains(LinkFlags::Up), "lo is not up");
    ensure!(matches!(fabric.add_container("nohost", "x"), Err(FabricError::UnknownHost { .. })));
    Ok(())
}

#[test]
fn privileged_panicking_test_body_still_cleans_up() -> Result<()> {
    preflight()?;
    let prefix = unique_prefix();
    let outcome = std::panic::catch_unwind(|| {
        let fabric = Fabric::build(two_hosts(&prefix)).expect("build");
        fabric.add_container("host1", "c1").expect("container");
        // The child is left to the fabric, whose teardown stops and reaps it.
        fabric.spawn("host1", marked_sleep(&prefix)).map(drop).expect("spawn");
        assert_eq!(marked_processes(&prefix).len(), 1);
        panic!("test body fails while the fabric is up");
    });
    ensure!(outcome.is_err(), "the closure was expected to panic");
    assert_nothing_left(&prefix)
}

#[test]
fn privileged_spawn_in_runs_the_process_inside_the_namespace() -> Result<()> {
    preflight()?;
    let name = format!("{}-solo", unique_prefix());
    let netns = Netns::create(&name)?;
    let mut child = spawn_in(&netns, marked_sleep(&name))?;
    let inside = netns_inode_of(child.id());
    child.kill()?;
    child.wait()?;
    assert_eq!(inside?, netns.inode()?);
    ensure!(netns_inode_of(std::process::id())? != netns.inode()?, "the test process itself must not move");
    drop(netns);
    ensure!(!Path::new(NETNS_RUN_DIR).join(&name).exists(), "{name} survived drop");
    Ok(())
}

#[test]
fn privileged_teardown_prefix_removes_a_kept_fabric() -> Result<()> {
    preflight()?;
    let prefix = unique_prefix();
    let mut fabric = Fabric::build(two_hosts(&prefix))?;
    fabric.add_container("host2", "c1")?;
    let child = fabric.spawn("host1", marked_sleep(&prefix))?;
    fabric.keep();
    drop(fabric);

    let scan = Fabric::scan_prefix(&prefix)?;
    assert_eq!(scan.namespaces.len(), 4, "{scan:?}");
    assert_eq!(scan.processes, vec![child.id()]);

    let started = Instant::now();
    let report = Fabric::teardown_prefix(&prefix)?;
    eprintln!("teardown_prefix: {:?} ({report:?})", started.elapsed());
    assert_eq!(report.namespaces_deleted.len(), 4);
    assert_eq!(report.processes_stopped, vec![child.id()]);
    assert_nothing_left(&prefix)?;

    // Idempotent: a second run finds nothing and succeeds.
    assert_eq!(Fabric::teardown_prefix(&prefix)?, Default::default());
    Ok(())
}

#[test]
fn privileged_build_refuses_a_prefix_in_use_and_names_its_namespaces() -> Result<()> {
    preflight()?;
    let prefix = unique_prefix();
    let _first = Fabric::build(two_hosts(&prefix))?;
    match Fabric::build(two_hosts(&prefix)) {
        Err(FabricError::PrefixInUse { prefix: p, namespaces }) => {
            assert_eq!(p, prefix);
            assert_eq!(namespaces, [format!("{prefix}-host1"), format!("{prefix}-host2"), format!("{prefix}-ul")]);
            Ok(())
        }
        Err(e) => anyhow::bail!("expected PrefixInUse, got {e}"),
        Ok(_) => anyhow::bail!("a second fabric with the same prefix was built"),
    }
}

#[test]
fn privileged_netns_delete_is_idempotent_and_open_reports_missing() -> Result<()> {
    preflight()?;
    let name = format!("{}-gone", unique_prefix());
    Netns::delete_named(&name)?;
    ensure!(matches!(Netns::open(&name), Err(FabricError::NetnsNotFound { .. })));
    let netns = Netns::create(&name)?;
    ensure!(matches!(Netns::create(&name), Err(FabricError::NetnsExists { .. })));
    let opened = Netns::open(&name)?;
    assert_eq!(opened.inode()?, netns.inode()?);
    drop(opened); // a handle from open does not delete
    ensure!(Path::new(NETNS_RUN_DIR).join(&name).exists());
    netns.delete()?;
    Netns::delete_named(&name)?;
    ensure!(!Path::new(NETNS_RUN_DIR).join(&name).exists());
    Ok(())
}

#[test]
fn privileged_processes_ignoring_sigterm_are_killed_after_the_grace_period() -> Result<()> {
    preflight()?;
    let prefix = unique_prefix();
    let fabric = Fabric::build(two_hosts(&prefix))?;
    // An ignored signal stays ignored across exec, so both sh and its sleep shrug off SIGTERM.
    let mut stubborn = Command::new("sh");
    stubborn.args(["-c", "trap '' TERM; sleep 600; true"]).env(MARK, &prefix).stdin(Stdio::null());
    let child = fabric.spawn("host1", stubborn)?;
    // Wait until sh has started its sleep, so that two processes are in the namespace.
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    while marked_processes(&prefix).len() < 2 && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    ensure!(marked_processes(&prefix).len() == 2, "sh and sleep should both run");

    let started = Instant::now();
    let report = fabric.teardown()?;
    let took = started.elapsed();
    eprintln!("teardown with SIGTERM ignored: {took:?} ({report:?})");
    ensure!(took >= tessera_fabric::TERM_GRACE, "SIGKILL came before the grace period ended ({took:?})");
    ensure!(report.processes_stopped.contains(&child.id()));
    assert_eq!(report.processes_stopped.len(), 2);
    assert_nothing_left(&prefix)
}
