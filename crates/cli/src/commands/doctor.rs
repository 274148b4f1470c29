//! `tessera doctor`: what a host needs for Tessera, checked one by one,
//! each failure with its fix. The kernel's features are proved in a
//! throw-away namespace (a veth pair, a bridge, a VXLAN device, an
//! nftables table that sets conntrack zones, a policy-routing rule), so the
//! host itself is never changed; then the underlay's MTU, the agent, the
//! controller (and the clocks' difference with it) and the other hosts' VTEPs.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use serde::Serialize;
use tessera_api::AgentClient;
use tessera_fabric::{with_netlink_in, Fabric, Netns};

use super::Ctx;
use crate::table::Table;

/// VXLAN over IPv4 adds this much to every packet.
const VXLAN_OVERHEAD: u32 = 50;
/// The smallest MTU IPv6 allows: the overlay's must not be below it.
const IPV6_MIN_MTU: u32 = 1280;

#[derive(clap::Args)]
pub struct Args {
    /// The agent's local socket.
    #[arg(long, default_value = tessera_api::agent::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// The host's underlay address (default: the running agent's).
    #[arg(long)]
    underlay_ip: Option<IpAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Outcome {
    Ok,
    Warn,
    Fail,
    Skipped,
}

#[derive(Debug, Serialize)]
struct Check {
    check: &'static str,
    result: Outcome,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

impl Check {
    fn ok(check: &'static str, detail: impl Into<String>) -> Check {
        Check { check, result: Outcome::Ok, detail: detail.into(), fix: None }
    }

    fn bad(check: &'static str, result: Outcome, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check { check, result, detail: detail.into(), fix: Some(fix.into()) }
    }
}

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let mut checks = Vec::new();
    let root = nix::unistd::geteuid().is_root();
    if root {
        checks.push(Check::ok("privileges", "running as root"));
        checks.extend(tokio::task::spawn_blocking(kernel_checks).await?);
    } else {
        checks.push(Check::bad(
            "privileges",
            Outcome::Skipped,
            "not root: the kernel's features are not probed",
            "run `sudo tessera doctor` (the agent runs as root)",
        ));
    }
    let status = AgentClient::new(args.socket.clone()).status().await;
    let underlay = args.underlay_ip.or(status.as_ref().ok().map(|s| s.underlay_ip));
    checks.push(match underlay {
        Some(ip) => mtu_check(ip).await,
        None => {
            Check::bad("underlay MTU", Outcome::Skipped, "no underlay address known", "give --underlay-ip, or start the agent")
        }
    });
    if let Ok(s) = &status {
        checks.push(dataplane_check(s));
    }
    checks.push(match &status {
        Ok(s) if s.holding.is_some() => Check::bad(
            "agent",
            Outcome::Warn,
            format!("host {}: holding its data plane: {}", s.host, s.holding.as_deref().unwrap_or_default()),
            "see `tessera status`; the agent resumes once the controller serves this fabric's intent",
        ),
        Ok(s) if !s.controller_connected => Check::bad(
            "agent",
            Outcome::Fail,
            format!("host {}: not connected to its controller {}", s.host, s.controller),
            "check the agent's --controller and certificate, and that a controller runs",
        ),
        Ok(s) => match &s.last_error {
            Some(e) => Check::bad(
                "agent",
                Outcome::Warn,
                format!("host {}: {} reconciles, last error: {e}", s.host, s.reconciles),
                "see the agent's log for the object and the action",
            ),
            None => Check::ok(
                "agent",
                format!("host {}: connected, revision {}, {} reconciles, no error", s.host, s.revision, s.reconciles),
            ),
        },
        Err(e) => Check::bad(
            "agent",
            Outcome::Fail,
            format!("no agent answers on {}: {e}", args.socket.display()),
            "start it: `systemctl start tessera-agent` (or `tessera agent --host NAME ...`)",
        ),
    });
    // `/readyz` answers 200 with a line of text when the controller serves.
    let ready = match ctx.client.get::<serde_json::Value>("/readyz").await {
        Ok(_) => Ok("ready".to_owned()),
        Err(tessera_api::ClientError::BadResponse { status: 200, body }) => Ok(body.trim().to_owned()),
        Err(e) => Err(e),
    };
    checks.push(match &ready {
        Ok(line) => Check::ok("controller", format!("reachable: {line}")),
        Err(e) => Check::bad(
            "controller",
            Outcome::Fail,
            format!("{e}"),
            "check --controller (or `controller` in the configuration file), the CA and the certificate, and that the controller runs",
        ),
    });
    if ready.is_ok() {
        checks.push(clock_check(ctx.client.clock().await));
        checks.push(vtep_check(ctx, underlay).await);
    }
    report(ctx, &checks)
}

fn report(ctx: &Ctx, checks: &[Check]) -> anyhow::Result<()> {
    ctx.print(&checks, || {
        let mut t = Table::new(&["CHECK", "RESULT", "DETAIL", "FIX"]);
        for c in checks {
            let result = serde_json::to_value(c.result).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
            t.row(vec![c.check.into(), result, one_line(&c.detail), c.fix.clone().unwrap_or_default()]);
        }
        t.render()
    })?;
    let failed: Vec<&str> = checks.iter().filter(|c| c.result == Outcome::Fail).map(|c| c.check).collect();
    if !failed.is_empty() {
        anyhow::bail!("{} check(s) failed: {}", failed.len(), failed.join(", "));
    }
    Ok(())
}

/// `text` on one line of at most 160 characters, for the table (the JSON
/// keeps it whole).
fn one_line(text: &str) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(160) {
        Some((at, _)) => format!("{}…", &flat[..at]),
        None => flat,
    }
}

/// The kernel's features, proved in a throw-away namespace.
fn kernel_checks() -> Vec<Check> {
    let mut out = Vec::new();
    out.push(match Fabric::preflight() {
        Ok(()) => Check::ok("kernel: veth, bridge, forwarding", "a veth pair and a bridge work, forwarding can be turned on"),
        Err(e) => Check::bad(
            "kernel: veth, bridge, forwarding",
            Outcome::Fail,
            e.to_string(),
            "load the modules: `modprobe veth bridge`",
        ),
    });
    static PROBES: AtomicU32 = AtomicU32::new(0);
    let name = format!("tessera-doctor-{}-{}", std::process::id(), PROBES.fetch_add(1, Ordering::Relaxed));
    let probe = match Netns::create(&name) {
        Ok(p) => p,
        Err(e) => {
            out.push(Check::bad("kernel: namespaces", Outcome::Fail, e.to_string(), "the kernel needs network namespaces"));
            return out;
        }
    };
    out.push(vxlan_check(&probe));
    out.push(nft_check(&probe));
    out.push(rule_check(&probe));
    if let Err(e) = probe.delete() {
        out.push(Check::bad("cleanup", Outcome::Warn, e.to_string(), format!("ip netns delete {name}")));
    }
    out
}

fn vxlan_check(probe: &Netns) -> Check {
    let vxlan = rtnetlink::LinkVxlan::new("probe-vx", 42).port(4789).build();
    link_kind_check(probe, "kernel: vxlan", "vxlan", vxlan, "Tessera's tunnels between hosts are VXLAN")
}

/// Whether the kernel makes a `kind` device (`link`, in `probe`): the
/// module to load when it does not.
fn link_kind_check(
    probe: &Netns,
    check: &'static str,
    kind: &str,
    link: rtnetlink::packet_route::link::LinkMessage,
    why: &str,
) -> Check {
    match with_netlink_in(probe, |handle| async move { handle.link().add(link).execute().await }) {
        Ok(Ok(())) => Check::ok(check, format!("a {kind} device can be made")),
        Ok(Err(e)) => Check::bad(
            check,
            Outcome::Fail,
            format!("cannot make a {kind} device: {e}"),
            format!("load the module: `modprobe {kind}` ({why})"),
        ),
        Err(e) => Check::bad(check, Outcome::Fail, e.to_string(), "the kernel needs network namespaces"),
    }
}

/// Past this, the clocks' difference is worth a warning (logs and flow
/// records of two hosts no longer line up).
const CLOCK_WARN_SECS: f64 = 2.0;
/// Past this, a failure: certificates valid from "now" look not yet valid
/// on the slow side, and leases end early or late.
const CLOCK_FAIL_SECS: f64 = 300.0;

fn clock_check(reading: Result<tessera_api::ClockReading, tessera_api::ClientError>) -> Check {
    const CHECK: &str = "clock";
    const FIX: &str = "synchronise the clocks of the hosts and the controllers (systemd-timesyncd, chrony or ntpd)";
    let reading = match reading {
        Ok(r) => r,
        Err(e) => return Check::bad(CHECK, Outcome::Warn, format!("cannot read the controller's clock: {e}"), FIX),
    };
    let Some(skew) = reading.skew_secs() else {
        return Check {
            check: CHECK,
            result: Outcome::Skipped,
            detail: "the controller's answer carries no Date".into(),
            fix: None,
        };
    };
    let side = if skew > 0.0 { "ahead of" } else { "behind" };
    let detail = format!("the controller's clock is {:.1} s {side} this host's", skew.abs());
    match skew.abs() {
        s if s > CLOCK_FAIL_SECS => Check::bad(CHECK, Outcome::Fail, detail, FIX),
        s if s > CLOCK_WARN_SECS => Check::bad(CHECK, Outcome::Warn, detail, FIX),
        _ => Check::ok(CHECK, "within a second of the controller's"),
    }
}

fn nft_check(probe: &Netns) -> Check {
    let ruleset =
        "table inet tessera_doctor {\n  chain pre {\n    type filter hook prerouting priority -300;\n    ct zone set 7\n  }\n}\n";
    match nft_in(probe, ruleset) {
        Ok(out) if out.status.success() => {
            Check::ok("kernel: nftables, conntrack zones", "a table that sets conntrack zones loads")
        }
        Ok(out) => Check::bad(
            "kernel: nftables, conntrack zones",
            Outcome::Fail,
            format!("nft refused a table that sets conntrack zones: {}", String::from_utf8_lossy(&out.stderr).trim()),
            "load the modules: `modprobe nf_tables nf_conntrack nft_ct`",
        ),
        Err(e) => Check::bad(
            "kernel: nftables, conntrack zones",
            Outcome::Fail,
            format!("cannot run nft: {e}"),
            "install nftables: `apt-get install nftables`",
        ),
    }
}

/// `nft -f -` with `ruleset` on its standard input, inside `probe`.
fn nft_in(probe: &Netns, ruleset: &str) -> std::io::Result<std::process::Output> {
    use std::io::Write;
    use std::process::Stdio;
    let mut cmd = Command::new("nft");
    cmd.args(["-f", "-"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = tessera_fabric::spawn_in(probe, cmd)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(ruleset.as_bytes())?;
    }
    child.wait_with_output()
}

/// `ip rule add pref 100 lookup 65636` inside `probe` (a table above 255,
/// as the networks' VRFs use).
fn rule_check(probe: &Netns) -> Check {
    use rtnetlink::packet_route::rule::RuleAction;
    let added = with_netlink_in(probe, |handle| async move {
        handle.rule().add().v4().priority(100).table_id(65_636).action(RuleAction::ToTable).execute().await
    });
    match added {
        Ok(Ok(())) => Check::ok("kernel: ip rule", "policy routing rules can be added"),
        Ok(Err(e)) => Check::bad(
            "kernel: ip rule",
            Outcome::Fail,
            format!("cannot add a routing rule: {e}"),
            "the kernel needs CONFIG_IP_MULTIPLE_TABLES (policy routing)",
        ),
        Err(e) => Check::bad("kernel: ip rule", Outcome::Fail, e.to_string(), "the kernel needs network namespaces"),
    }
}

/// The name and MTU of the link that holds `addr` in this namespace, from
/// an address and a link dump (`ip addr show`).
async fn link_holding(addr: IpAddr) -> Result<Option<(String, u32)>, String> {
    use futures::TryStreamExt;
    use rtnetlink::packet_route::address::AddressAttribute;
    use rtnetlink::packet_route::link::LinkAttribute;
    let (connection, handle, _) = rtnetlink::new_connection().map_err(|e| format!("cannot open a netlink socket: {e}"))?;
    let task = tokio::spawn(connection);
    let found = async {
        let addrs: Vec<_> =
            handle.address().get().execute().try_collect().await.map_err(|e| format!("cannot list addresses: {e}"))?;
        let index = addrs.iter().find_map(|m| {
            m.attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Local(ip) | AddressAttribute::Address(ip) if *ip == addr))
                .then_some(m.header.index)
        });
        let Some(index) = index else { return Ok(None) };
        let links: Vec<_> = handle
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| format!("cannot read link {index}: {e}"))?;
        let attrs = links.first().map(|l| l.attributes.as_slice()).unwrap_or_default();
        let name = attrs.iter().find_map(|a| if let LinkAttribute::IfName(n) = a { Some(n.clone()) } else { None });
        let mtu = attrs.iter().find_map(|a| if let LinkAttribute::Mtu(m) = a { Some(*m) } else { None });
        Ok(Some((name.unwrap_or_else(|| format!("#{index}")), mtu.unwrap_or(0))))
    }
    .await;
    task.abort();
    found
}

/// The MTU of the interface that holds `underlay`: the overlay's is 50
/// bytes less, and must carry IPv6 (1280).
async fn mtu_check(underlay: IpAddr) -> Check {
    let (ifname, mtu) = match link_holding(underlay).await {
        Ok(Some(found)) => found,
        Ok(None) => {
            return Check::bad(
                "underlay MTU",
                Outcome::Fail,
                format!("no interface of this host holds the underlay address {underlay}"),
                "give the agent this host's own address (--underlay-ip), or add it to the underlay interface",
            )
        }
        Err(e) => return Check::bad("underlay MTU", Outcome::Fail, e, "run where netlink is available"),
    };
    let overlay = mtu.saturating_sub(VXLAN_OVERHEAD);
    if overlay < IPV6_MIN_MTU {
        return Check::bad(
            "underlay MTU",
            Outcome::Fail,
            format!("{ifname} has MTU {mtu}: the overlay's would be {overlay}, below IPv6's minimum {IPV6_MIN_MTU}"),
            format!("raise it: `ip link set {ifname} mtu 1500` (at least {})", IPV6_MIN_MTU + VXLAN_OVERHEAD),
        );
    }
    Check::ok("underlay MTU", format!("{ifname} ({underlay}) has MTU {mtu}: the overlay's is {overlay}"))
}

/// Every other host's underlay address answers a ping from here.
async fn vtep_check(ctx: &Ctx, underlay: Option<IpAddr>) -> Check {
    let hosts: Vec<tessera_model::Host> = match ctx.client.get("/v1/hosts").await {
        Ok(h) => h,
        Err(e) => {
            return Check::bad(
                "other hosts' VTEPs",
                Outcome::Skipped,
                format!("cannot list the hosts: {e}"),
                "run with an administrator's credentials",
            )
        }
    };
    let others: Vec<IpAddr> = hosts.iter().map(|h| h.underlay_ip).filter(|ip| Some(*ip) != underlay).collect();
    if others.is_empty() {
        return Check::ok("other hosts' VTEPs", "no other host");
    }
    let mut silent = Vec::new();
    for ip in &others {
        let answered = tokio::process::Command::new("ping")
            .args(["-c", "1", "-W", "1", &ip.to_string()])
            .output()
            .await
            .is_ok_and(|o| o.status.success());
        if !answered {
            silent.push(ip.to_string());
        }
    }
    if silent.is_empty() {
        Check::ok("other hosts' VTEPs", format!("{} host(s) answer on the underlay", others.len()))
    } else {
        Check::bad(
            "other hosts' VTEPs",
            Outcome::Warn,
            format!("{} of {} host(s) do not answer a ping on the underlay: {}", silent.len(), others.len(), silent.join(", ")),
            "check the underlay's routes and firewalls (ICMP, and UDP 4789 for VXLAN)",
        )
    }
}

/// Which data plane the agent runs, and why it runs the kernel path alone
/// when it could not start the fast path.
fn dataplane_check(s: &tessera_api::agent::AgentStatus) -> Check {
    use tessera_api::agent::Dataplane;
    match &s.dataplane {
        Some(Dataplane::Ebpf { flows, underlay }) => {
            let what = format!("eBPF fast path for established flows ({flows} flow directions now), kernel path for the rest");
            match underlay {
                Some(tessera_api::agent::Decapsulation { device, stack: Some(why) }) => Check::bad(
                    "data plane",
                    Outcome::Warn,
                    format!("{what}; other hosts' datagrams take the host's stack on {device}: {why}"),
                    "the fast path decapsulates on the device that holds the underlay address when it is an Ethernet device; restart the agent once it is (a replaced device is found at the agent's start)",
                ),
                Some(tessera_api::agent::Decapsulation { device, stack: None }) => {
                    Check::ok("data plane", format!("{what}; other hosts' datagrams decapsulated by a program on {device}"))
                }
                None => Check::ok("data plane", what),
            }
        }
        Some(Dataplane::Kernel { reason, chosen: true }) => Check::ok("data plane", format!("kernel path ({reason})")),
        Some(Dataplane::Kernel { reason, chosen: false }) => Check::bad(
            "data plane",
            Outcome::Warn,
            format!("kernel path only: the eBPF fast path cannot run: {reason}"),
            "the fast path needs BPF with tcx (Linux 6.6 or later) and an IPv4 underlay; `--dataplane kernel` says the kernel path is meant",
        ),
        None => Check::bad("data plane", Outcome::Skipped, "the agent does not say (older than 0.2)", "upgrade the agent"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This kernel has no `vrf` device (Tessera's VRFs are routing tables):
    /// the probe reports the module to load, as it would for a kernel
    /// without `vxlan`.
    #[test]
    fn privileged_a_device_kind_the_kernel_lacks_is_reported_with_the_module_to_load() {
        let probe = Netns::create(&format!("tessera-doctor-test-{}", std::process::id())).expect("root");
        let vrf = rtnetlink::LinkVrf::new("probe-vrf", 7).build();
        let check = link_kind_check(&probe, "kernel: vrf", "vrf", vrf, "test");
        probe.delete().unwrap();
        assert_eq!(check.result, Outcome::Fail, "{check:?}");
        assert!(check.detail.starts_with("cannot make a vrf device: "), "{check:?}");
        assert_eq!(check.fix.as_deref(), Some("load the module: `modprobe vrf` (test)"));
        // The same probe makes a VXLAN device.
        let probe = Netns::create(&format!("tessera-doctor-test-{}", std::process::id())).expect("root");
        let check = vxlan_check(&probe);
        probe.delete().unwrap();
        assert_eq!(check.result, Outcome::Ok, "{check:?}");
    }

    #[test]
    fn clock_skew_is_told_beyond_the_seconds_a_date_can_tell_apart() {
        let t = |s: u64| std::time::UNIX_EPOCH + std::time::Duration::from_millis(s);
        let reading = |date: u64| tessera_api::ClockReading { before: t(1_000_000), after: t(1_000_200), date: Some(t(date)) };
        // Date 1000 s covers [1000, 1001): the call ran at 1000.0–1000.2.
        assert_eq!(reading(1_000_000).skew_secs(), Some(0.0));
        assert_eq!(reading(999_000).skew_secs(), Some(0.0));
        assert_eq!(clock_check(Ok(reading(1_000_000))).result, Outcome::Ok);
        let ahead = reading(1_010_000);
        assert!((ahead.skew_secs().unwrap() - 9.8).abs() < 1e-6);
        let check = clock_check(Ok(ahead));
        assert_eq!(check.result, Outcome::Warn);
        assert_eq!(check.detail, "the controller's clock is 9.8 s ahead of this host's");
        let behind = clock_check(Ok(reading(600_000)));
        assert_eq!(behind.result, Outcome::Fail);
        assert!(behind.detail.ends_with("399.0 s behind this host's"), "{behind:?}");
        let none = tessera_api::ClockReading { date: None, ..reading(0) };
        assert_eq!(clock_check(Ok(none)).result, Outcome::Skipped);
    }

    #[test]
    fn the_data_plane_check_says_who_decapsulates_other_hosts_datagrams() {
        use tessera_api::agent::{AgentStatus, Dataplane, Decapsulation};
        let status = |underlay| AgentStatus {
            host: "h1".into(),
            underlay_ip: "10.99.0.1".parse().unwrap(),
            controller: "https://c".into(),
            controller_connected: true,
            holding: None,
            revision: 1,
            networks: 0,
            local_endpoints: 0,
            reconciles: 1,
            last_error: None,
            local_networks: Vec::new(),
            dataplane: Some(Dataplane::Ebpf { flows: 2, underlay }),
        };
        let program = dataplane_check(&status(Some(Decapsulation { device: "eth0".into(), stack: None })));
        assert_eq!(program.result, Outcome::Ok);
        assert!(program.detail.ends_with("other hosts' datagrams decapsulated by a program on eth0"), "{program:?}");
        let why = "eth0 is not an Ethernet device".to_string();
        let stack = dataplane_check(&status(Some(Decapsulation { device: "eth0".into(), stack: Some(why) })));
        assert_eq!(stack.result, Outcome::Warn);
        assert!(stack.detail.ends_with("take the host's stack on eth0: eth0 is not an Ethernet device"), "{stack:?}");
        assert_eq!(dataplane_check(&status(None)).result, Outcome::Ok, "an earlier agent says nothing of it");
    }
}
