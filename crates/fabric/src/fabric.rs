//! A fabric of hosts on one machine: an underlay namespace holding a Linux bridge, one namespace
//! per host joined to it by a veth pair, and container namespaces that Tessera attaches later.
//!
//! ```text
//!  <prefix>-ul:     ul0 (bridge) ── <host1> ── <host2> ...      (underlay ports, veth)
//!                                     │           │
//!  <prefix>-host1:               eth0 10.99.0.1   │
//!  <prefix>-host2:                           eth0 10.99.0.2
//!  <prefix>-host1-<c>: lo only (a container, not connected)
//! ```
//!
//! A [`Fabric`] owns all of it: dropping it stops the processes it started and any other
//! process left in its namespaces, then deletes the namespaces. [`Fabric::teardown_prefix`]
//! does the same for a fabric that was kept (`tessera demo --keep`) by a process now gone.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::{Mutex, PoisonError};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth};
use tracing::{info, info_span, warn};

use crate::error::chain;
use crate::names::{
    belongs_to_prefix, container_netns_name, host_addresses, host_netns_name, underlay_netns_name, underlay_port_names,
    validate_component, UNDERLAY_SUFFIX,
};
use crate::netns::{spawn_in, sysctl_write, with_netlink_in, Netns, NETNS_RUN_DIR};
use crate::process::{pidfds_in_netns, terminate, Pidfd, TERM_GRACE};
use crate::FabricError;

/// The underlay subnet used when a spec does not name one.
pub const DEFAULT_UNDERLAY: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(10, 99, 0, 0), 24);

/// Name of the bridge in the underlay namespace.
pub const UNDERLAY_BRIDGE: &str = "ul0";

/// Name of each host's underlay interface.
pub const HOST_IFNAME: &str = "eth0";

/// MTU of the underlay (bridge, ports and hosts' `eth0`).
pub const UNDERLAY_MTU: u32 = 1500;

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FabricSpec {
    /// Prefix of every namespace name; unique per test or demo (`tsk-<pid>-<n>`, `tdemo`).
    pub prefix: String,
    /// Host names, in order; host `i` gets the `i+1`-th address of `underlay`.
    pub hosts: Vec<String>,
    /// Underlay subnet, e.g. `10.99.7.0/24`.
    pub underlay: Ipv4Net,
}

impl FabricSpec {
    /// A spec on [`DEFAULT_UNDERLAY`].
    pub fn new<I, S>(prefix: impl Into<String>, hosts: I) -> FabricSpec
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        FabricSpec { prefix: prefix.into(), hosts: hosts.into_iter().map(Into::into).collect(), underlay: DEFAULT_UNDERLAY }
    }
}

/// One host of a fabric.
#[derive(Debug)]
#[non_exhaustive]
pub struct Host {
    /// The name from the spec.
    pub name: String,
    /// `<prefix>-<name>`, owned by the fabric.
    pub netns: Netns,
    /// Address of the host's `eth0` (prefix length: the underlay's).
    pub underlay_ip: Ipv4Addr,
    /// Name of the host's port on `ul0`, in the underlay namespace.
    pub underlay_port: String,
}

/// A container namespace: `lo` up, nothing else. Its namespace belongs to the fabric, which
/// deletes it on teardown; this value only refers to it.
#[derive(Debug)]
#[non_exhaustive]
pub struct Container {
    /// The name given to [`Fabric::add_container`].
    pub name: String,
    /// The host it was created for.
    pub host: String,
    /// `<prefix>-<host>-<name>` (a non-owning handle).
    pub netns: Netns,
}

/// What a prefix currently has on the machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefixScan {
    /// Namespaces named `<prefix>-*`, sorted.
    pub namespaces: Vec<String>,
    /// Processes (other than the caller) whose network namespace is one of them, sorted.
    pub processes: Vec<u32>,
}

impl PrefixScan {
    /// Nothing with this prefix exists.
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty() && self.processes.is_empty()
    }
}

/// What a successful teardown did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TeardownReport {
    /// Processes that were running and were signalled.
    pub processes_stopped: Vec<u32>,
    /// Namespaces removed (those already gone are not listed).
    pub namespaces_deleted: Vec<String>,
}

/// A running fabric. See the module docs for the layout and [`Fabric::build`].
#[derive(Debug)]
pub struct Fabric {
    prefix: String,
    underlay: Ipv4Net,
    underlay_netns: Option<Netns>,
    hosts: Vec<Host>,
    containers: Mutex<Vec<Netns>>,
    children: Mutex<Vec<Pidfd>>,
    keep: bool,
}

impl Fabric {
    /// Checks that this machine can run a fabric: root, `/proc`, `/run/netns`, namespace
    /// creation, veth, bridge and per-namespace forwarding sysctls, by building and removing a
    /// probe namespace. The error says what is missing and how to fix it. Call it first in
    /// tests and in the demo, so they fail with a reason instead of somewhere deep inside.
    pub fn preflight() -> Result<(), FabricError> {
        crate::preflight::run().map_err(FabricError::from)
    }

    /// Builds the fabric described by `spec` (see the module docs). Blocking; from async code
    /// call it inside `spawn_blocking`.
    ///
    /// Fails with [`FabricError::PrefixInUse`] (naming the namespaces) if any namespace
    /// `<prefix>-*` exists already. On any failure, everything created so far is removed
    /// before the error is returned.
    pub fn build(spec: FabricSpec) -> Result<Fabric, FabricError> {
        let FabricSpec { prefix, hosts, underlay } = spec;
        let underlay = underlay.trunc();
        validate_component("fabric prefix", &prefix)?;
        let mut seen = HashSet::new();
        for host in &hosts {
            validate_component("host", host)?;
            if host == UNDERLAY_SUFFIX {
                return Err(FabricError::InvalidName {
                    kind: "host",
                    name: host.clone(),
                    reason: "reserved for the underlay namespace",
                });
            }
            if !seen.insert(host.as_str()) {
                return Err(FabricError::DuplicateHost { host: host.clone() });
            }
        }
        let addresses = host_addresses(underlay, hosts.len())?;
        let ports = underlay_port_names(&hosts, UNDERLAY_BRIDGE);

        let existing = namespaces_with_prefix(&prefix)?;
        if !existing.is_empty() {
            return Err(FabricError::PrefixInUse { prefix, namespaces: existing });
        }

        let span = info_span!("fabric_build", prefix = %prefix, underlay = %underlay, hosts = hosts.len());
        let _enter = span.enter();
        // Everything created is recorded in `fabric` at once, so an early return tears it down.
        let mut fabric = Fabric {
            prefix,
            underlay,
            underlay_netns: None,
            hosts: Vec::with_capacity(hosts.len()),
            containers: Mutex::new(Vec::new()),
            children: Mutex::new(Vec::new()),
            keep: false,
        };

        let ul = Netns::create(&underlay_netns_name(&fabric.prefix))?;
        let ul = fabric.underlay_netns.insert(ul);
        bridge_create(ul)?;

        for ((name, underlay_ip), underlay_port) in hosts.into_iter().zip(addresses).zip(ports) {
            let netns = Netns::create(&host_netns_name(&fabric.prefix, &name))?;
            fabric.hosts.push(Host { name, netns, underlay_ip, underlay_port });
        }
        if let Some(ul) = &fabric.underlay_netns {
            underlay_ports_create(ul, &fabric.hosts)?;
        }
        for host in &fabric.hosts {
            host_configure(host, underlay.prefix_len())?;
        }
        info!(prefix = %fabric.prefix, hosts = fabric.hosts.len(), "fabric built");
        Ok(fabric)
    }

    /// The prefix of every namespace of this fabric.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The underlay subnet (hosts' `eth0` addresses use its prefix length).
    pub fn underlay(&self) -> Ipv4Net {
        self.underlay
    }

    /// The underlay namespace `<prefix>-ul`, which holds the bridge `ul0`.
    pub fn underlay_netns(&self) -> Option<&Netns> {
        self.underlay_netns.as_ref()
    }

    /// `ip -n <prefix>-ul addr add IP/<len> dev ul0`: gives the underlay namespace an address
    /// on the underlay, so a service that belongs to no host (an etcd cluster) can listen there
    /// and be reached from every host. `ip` must lie in the underlay and be no host's address.
    /// The address goes with the namespace at teardown.
    pub fn underlay_address_add(&self, ip: Ipv4Addr) -> Result<(), FabricError> {
        let ul =
            self.underlay_netns.as_ref().ok_or_else(|| FabricError::NetnsNotFound { name: underlay_netns_name(&self.prefix) })?;
        let invalid = |reason| FabricError::InvalidName { kind: "underlay address", name: ip.to_string(), reason };
        if !self.underlay.contains(&ip) || ip == self.underlay.network() || ip == self.underlay.broadcast() {
            return Err(invalid("not a host address of the underlay"));
        }
        if self.hosts.iter().any(|h| h.underlay_ip == ip) {
            return Err(invalid("a host's address"));
        }
        let len = self.underlay.prefix_len();
        with_netlink_in(ul, |handle| async move {
            let bridge = link_index(&handle, ul.name(), UNDERLAY_BRIDGE).await?;
            handle
                .address()
                .add(bridge, IpAddr::V4(ip), len)
                .execute()
                .await
                .map_err(netlink_err(ul, format!("add address {ip}/{len} to {UNDERLAY_BRIDGE}")))
        })?
    }

    /// The hosts, in spec order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The host called `name`.
    pub fn host(&self, name: &str) -> Result<&Host, FabricError> {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .ok_or_else(|| FabricError::UnknownHost { prefix: self.prefix.clone(), host: name.to_owned() })
    }

    /// Names of every namespace of the fabric: containers, hosts, then the underlay.
    pub fn namespaces(&self) -> Vec<String> {
        let containers = self.containers.lock().unwrap_or_else(PoisonError::into_inner);
        let mut names: Vec<String> = containers.iter().map(|n| n.name().to_owned()).collect();
        names.extend(self.hosts.iter().map(|h| h.netns.name().to_owned()));
        names.extend(self.underlay_netns.iter().map(|n| n.name().to_owned()));
        names
    }

    /// Creates the container namespace `<prefix>-<host>-<name>` with `lo` up and nothing else:
    /// the container is not connected; Tessera attaches it. The fabric owns the namespace and
    /// deletes it on teardown.
    pub fn add_container(&self, host: &str, name: &str) -> Result<Container, FabricError> {
        let host = self.host(host)?;
        validate_component("container", name)?;
        let netns = Netns::create(&container_netns_name(&self.prefix, &host.name, name))?;
        let container = Container { name: name.to_owned(), host: host.name.clone(), netns: netns.alias() };
        self.containers.lock().unwrap_or_else(PoisonError::into_inner).push(netns);
        Ok(container)
    }

    /// Creates a namespace `<prefix>-<name>` of no host (the "outside" of a
    /// test: what lies beyond a gateway's uplink), deleted with the fabric
    /// together with the processes in it.
    pub fn add_namespace(&self, name: &str) -> Result<Netns, FabricError> {
        validate_component("namespace", name)?;
        let netns = Netns::create(&format!("{}-{name}", self.prefix))?;
        let alias = netns.alias();
        self.containers.lock().unwrap_or_else(PoisonError::into_inner).push(netns);
        Ok(alias)
    }

    /// Spawns `cmd` inside `host`'s namespace (see [`spawn_in`]) and registers the process, so
    /// that teardown stops it (SIGTERM, 2 s grace, SIGKILL) unless the fabric is kept. The caller
    /// may wait for or kill the child itself; teardown then finds it gone.
    pub fn spawn(&self, host: &str, cmd: Command) -> Result<Child, FabricError> {
        let netns = &self.host(host)?.netns;
        self.spawn_in_netns(netns, cmd)
    }

    /// [`Fabric::spawn`] for any namespace, e.g. a container's.
    pub fn spawn_in_netns(&self, netns: &Netns, cmd: Command) -> Result<Child, FabricError> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        let mut child = spawn_in(netns, cmd).map_err(|source| FabricError::Spawn {
            netns: netns.name().to_owned(),
            program: program.clone(),
            source,
        })?;
        match Pidfd::open(child.id()) {
            Ok(pidfd) => {
                self.children.lock().unwrap_or_else(PoisonError::into_inner).push(pidfd);
                Ok(child)
            }
            Err(source) => {
                // Without a pidfd teardown could not stop it reliably: do not leave it running.
                let _ = child.kill();
                let _ = child.wait();
                Err(FabricError::Process { pid: child.id(), op: "pidfd_open", source })
            }
        }
    }

    /// Leaves everything running when the fabric is dropped (`tessera demo --keep`); remove it
    /// later with [`Fabric::teardown_prefix`].
    pub fn keep(&mut self) {
        self.keep = true;
        for netns in self.containers.get_mut().unwrap_or_else(PoisonError::into_inner).iter_mut() {
            netns.keep();
        }
        for host in &mut self.hosts {
            host.netns.keep();
        }
        if let Some(ul) = &mut self.underlay_netns {
            ul.keep();
        }
    }

    /// Tears the fabric down now and reports every failure instead of logging it (drop logs).
    /// Steps, each continuing after failures: stop the registered children, stop any other
    /// process in the fabric's namespaces, delete the container, host and underlay namespaces.
    pub fn teardown(mut self) -> Result<TeardownReport, FabricError> {
        self.keep = true; // drop after this has nothing left to do
        let target = format!("fabric {:?}", self.prefix);
        into_result(target, self.teardown_inner())
    }

    fn teardown_inner(&mut self) -> (TeardownReport, Vec<FabricError>) {
        let mut names = Vec::new();
        let containers = std::mem::take(&mut *self.containers.lock().unwrap_or_else(PoisonError::into_inner));
        let hosts = std::mem::take(&mut self.hosts);
        // The namespaces are deleted by name below; disarm the values so they do not try again.
        for mut netns in containers.into_iter().chain(hosts.into_iter().map(|h| h.netns)).chain(self.underlay_netns.take()) {
            netns.keep();
            names.push(netns.name().to_owned());
        }
        let children = std::mem::take(&mut *self.children.lock().unwrap_or_else(PoisonError::into_inner));
        teardown_namespaces(&names, children)
    }

    /// What exists on this machine for `prefix`: namespaces `<prefix>-*` and the processes
    /// inside them.
    pub fn scan_prefix(prefix: &str) -> Result<PrefixScan, FabricError> {
        validate_component("fabric prefix", prefix)?;
        let namespaces = namespaces_with_prefix(prefix)?;
        let mut inodes = HashSet::new();
        for name in &namespaces {
            if let Ok(netns) = Netns::open(name) {
                inodes.insert(netns.inode()?);
            }
        }
        let processes = crate::process::pids_in_netns(&inodes)?;
        Ok(PrefixScan { namespaces, processes })
    }

    /// Removes whatever exists for `prefix` (`tessera demo down`): stops every process whose
    /// network namespace is one of `<prefix>-*` (SIGTERM, 2 s grace, SIGKILL), then deletes those
    /// namespaces. Idempotent: with nothing there it returns an empty report. Keeps going after
    /// failures and returns them all in [`FabricError::Teardown`].
    pub fn teardown_prefix(prefix: &str) -> Result<TeardownReport, FabricError> {
        validate_component("fabric prefix", prefix)?;
        let names = namespaces_with_prefix(prefix)?;
        into_result(format!("prefix {prefix:?}"), teardown_namespaces(&names, Vec::new()))
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let (report, failures) = self.teardown_inner();
        for error in &failures {
            warn!(prefix = %self.prefix, error = %chain(error), "fabric teardown");
        }
        info!(
            prefix = %self.prefix,
            namespaces = report.namespaces_deleted.len(),
            processes = report.processes_stopped.len(),
            failures = failures.len(),
            "fabric torn down"
        );
    }
}

fn into_result(target: String, (report, failures): (TeardownReport, Vec<FabricError>)) -> Result<TeardownReport, FabricError> {
    if failures.is_empty() {
        Ok(report)
    } else {
        Err(FabricError::Teardown { target, failures })
    }
}

/// Namespaces in `/run/netns` that a fabric with this prefix would own.
fn namespaces_with_prefix(prefix: &str) -> Result<Vec<String>, FabricError> {
    Ok(Netns::list()?.into_iter().filter(|n| belongs_to_prefix(prefix, n)).collect())
}

/// Stops `children` and every other process in the named namespaces (one round: SIGTERM to
/// all, 2 s grace, SIGKILL), then deletes the namespaces in the given order. Best effort: every
/// step runs whatever failed before.
fn teardown_namespaces(names: &[String], children: Vec<Pidfd>) -> (TeardownReport, Vec<FabricError>) {
    let mut report = TeardownReport::default();
    let mut failures = Vec::new();

    let mut inodes = HashSet::new();
    for name in names {
        // Gone already, or a stale mount point: no process can be inside. Deleted below.
        let Ok(netns) = Netns::open(name) else { continue };
        match netns.inode() {
            Ok(ino) => {
                inodes.insert(ino);
            }
            Err(e) => failures.push(e),
        }
    }
    let mut targets = children;
    match pidfds_in_netns(&inodes) {
        Ok(others) => {
            let registered: HashSet<u32> = targets.iter().map(Pidfd::pid).collect();
            targets.extend(others.into_iter().filter(|p| !registered.contains(&p.pid())));
        }
        Err(e) => failures.push(e),
    }
    let (stopped, errors) = terminate(targets, TERM_GRACE);
    report.processes_stopped = stopped;
    report.processes_stopped.sort_unstable();
    failures.extend(errors);

    for name in names {
        let existed = Path::new(NETNS_RUN_DIR).join(name).exists();
        match Netns::delete_named(name) {
            Ok(()) if existed => report.namespaces_deleted.push(name.clone()),
            Ok(()) => {}
            Err(e) => failures.push(e),
        }
    }
    (report, failures)
}

fn netlink_err(netns: &Netns, op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> FabricError {
    let netns = netns.name().to_owned();
    let op = op.into();
    move |source| FabricError::Netlink { netns, op, source }
}

/// Index of interface `ifname`, or [`FabricError::LinkNotFound`].
async fn link_index(handle: &Handle, netns: &str, ifname: &str) -> Result<u32, FabricError> {
    let not_found = || FabricError::LinkNotFound { netns: netns.to_owned(), ifname: ifname.to_owned() };
    match handle.link().get().match_name(ifname).execute().try_next().await {
        Ok(Some(link)) => Ok(link.header.index),
        Ok(None) => Err(not_found()),
        // ENODEV: the kernel's answer to a lookup by name of a missing link.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Err(not_found()),
        Err(source) => Err(FabricError::Netlink { netns: netns.to_owned(), op: format!("get link {ifname}"), source }),
    }
}

/// `ip -n <ul> link add ul0 type bridge mtu 1500 && ip -n <ul> link set ul0 up`.
fn bridge_create(ul: &Netns) -> Result<(), FabricError> {
    let err = netlink_err(ul, format!("add bridge {UNDERLAY_BRIDGE}"));
    with_netlink_in(ul, |handle| async move {
        handle.link().add(LinkBridge::new(UNDERLAY_BRIDGE).mtu(UNDERLAY_MTU).up().build()).execute().await
    })?
    .map_err(err)
}

/// For each host, in the underlay namespace:
/// `ip link add <port> mtu 1500 type veth peer name eth0 mtu 1500 netns <host>` then
/// `ip link set <port> master ul0 up`.
fn underlay_ports_create(ul: &Netns, hosts: &[Host]) -> Result<(), FabricError> {
    let mut host_fds = Vec::with_capacity(hosts.len());
    for host in hosts {
        host_fds.push(host.netns.open_fd()?);
    }
    let ul_name = ul.name();
    with_netlink_in(ul, |handle| async move {
        let bridge = link_index(&handle, ul_name, UNDERLAY_BRIDGE).await?;
        for (host, fd) in hosts.iter().zip(&host_fds) {
            let peer = LinkMessageBuilder::<LinkUnspec>::new()
                .name(HOST_IFNAME.to_owned())
                .mtu(UNDERLAY_MTU)
                .setns_by_fd(fd.as_raw_fd())
                .build();
            let port = LinkVeth::new(&host.underlay_port, HOST_IFNAME)
                .mtu(UNDERLAY_MTU)
                .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                .build();
            handle.link().add(port).execute().await.map_err(|source| FabricError::Netlink {
                netns: ul_name.to_owned(),
                op: format!("add veth {} peer {HOST_IFNAME} in {}", host.underlay_port, host.netns.name()),
                source,
            })?;
            let port_index = link_index(&handle, ul_name, &host.underlay_port).await?;
            handle.link().set(LinkUnspec::new_with_index(port_index).controller(bridge).up().build()).execute().await.map_err(
                |source| FabricError::Netlink {
                    netns: ul_name.to_owned(),
                    op: format!("set {} master {UNDERLAY_BRIDGE} up", host.underlay_port),
                    source,
                },
            )?;
        }
        Ok(())
    })?
}

/// In the host namespace: `ip addr add <ip>/<len> dev eth0 && ip link set eth0 up`, then
/// `sysctl -w net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1`.
fn host_configure(host: &Host, prefix_len: u8) -> Result<(), FabricError> {
    let netns = &host.netns;
    let ip = host.underlay_ip;
    with_netlink_in(netns, |handle| async move {
        let name = netns.name();
        let eth0 = link_index(&handle, name, HOST_IFNAME).await?;
        handle
            .address()
            .add(eth0, IpAddr::V4(ip), prefix_len)
            .execute()
            .await
            .map_err(netlink_err(netns, format!("add address {ip}/{prefix_len} to {HOST_IFNAME}")))?;
        handle
            .link()
            .set(LinkUnspec::new_with_index(eth0).mtu(UNDERLAY_MTU).up().build())
            .execute()
            .await
            .map_err(netlink_err(netns, format!("set {HOST_IFNAME} up")))
    })??;
    sysctl_write(netns, "net.ipv4.ip_forward", "1")?;
    sysctl_write(netns, "net.ipv6.conf.all.forwarding", "1")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn fabric_can_be_shared_across_threads_and_tasks() {
        assert_send_sync::<Fabric>();
        assert_send_sync::<Netns>();
    }

    #[test]
    fn default_spec_uses_the_default_underlay() {
        let spec = FabricSpec::new("tdemo", ["host1", "host2"]);
        assert_eq!(spec.underlay, "10.99.0.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(spec.hosts, ["host1", "host2"]);
    }

    #[test]
    fn invalid_specs_fail_before_touching_the_machine() {
        let bad = [
            FabricSpec::new("", ["h1"]),
            FabricSpec::new("t/x", ["h1"]),
            FabricSpec::new("t", ["h1", "h1"]),
            FabricSpec::new("t", ["ul"]),
            FabricSpec { underlay: "10.0.0.0/30".parse().unwrap(), ..FabricSpec::new("t", ["a", "b", "c"]) },
        ];
        for spec in bad {
            assert!(Fabric::build(spec.clone()).is_err(), "{spec:?} should be rejected");
        }
    }
}
