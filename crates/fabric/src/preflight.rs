//! `Fabric::preflight`: proves, with a throw-away probe namespace, that this machine can build a
//! fabric, and otherwise says exactly what is missing and how to fix it.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use rtnetlink::{LinkBridge, LinkUnspec, LinkVeth};

use crate::netns::{ensure_run_dir, sysctl_write, with_netlink_in, Netns};
use crate::{FabricError, PreflightError};

pub(crate) fn run() -> Result<(), PreflightError> {
    let euid = nix::unistd::geteuid().as_raw();
    if euid != 0 {
        return Err(PreflightError::NotRoot { euid });
    }
    for path in ["/proc/thread-self/ns/net", "/proc/sys/net/ipv4/ip_forward"] {
        if let Err(source) = std::fs::metadata(path) {
            return Err(PreflightError::ProcUnavailable { path: Path::new(path).into(), source });
        }
    }
    ensure_run_dir().map_err(|e| PreflightError::NetnsDirUnusable { source: Box::new(e) })?;

    static PROBES: AtomicU32 = AtomicU32::new(0);
    let name = format!("tessera-preflight-{}-{}", std::process::id(), PROBES.fetch_add(1, Ordering::Relaxed));
    let probe = Netns::create(&name).map_err(|e| PreflightError::NetnsUnsupported { source: Box::new(e) })?;
    let checked = probe_kernel(&probe);
    // Delete explicitly so a failure to clean up is reported, not just logged.
    let deleted = probe.delete();
    checked?;
    deleted.map_err(|e| PreflightError::CleanupFailed { source: Box::new(e) })
}

/// Inside the probe namespace: a bridge, a veth pair with one end enslaved, and the forwarding
/// sysctls a host needs. The probe's interfaces vanish with the namespace.
fn probe_kernel(probe: &Netns) -> Result<(), PreflightError> {
    let netlink = |op: &str| {
        let (netns, op) = (probe.name().to_owned(), op.to_owned());
        move |source| Box::new(FabricError::Netlink { netns, op, source })
    };
    let probe_name = probe.name();
    let thread = |e: FabricError| PreflightError::NetnsUnsupported { source: Box::new(e) };

    with_netlink_in(
        probe,
        |handle| async move { handle.link().add(LinkVeth::new("probe-a", "probe-b").build()).execute().await },
    )
    .map_err(thread)?
    .map_err(netlink("add veth probe-a peer probe-b"))
    .map_err(|source| PreflightError::VethUnsupported { source })?;

    with_netlink_in(probe, |handle| async move {
        handle.link().add(LinkBridge::new("probe-br").build()).execute().await.map_err(netlink("add bridge probe-br"))?;
        let index = |name: &'static str| {
            let handle = handle.clone();
            async move {
                use futures::TryStreamExt;
                match handle.link().get().match_name(name).execute().try_next().await {
                    Ok(Some(link)) => Ok(link.header.index),
                    Ok(None) => Err(Box::new(FabricError::LinkNotFound { netns: probe_name.to_owned(), ifname: name.into() })),
                    Err(e) => Err(netlink("get link")(e)),
                }
            }
        };
        let (bridge, port) = (index("probe-br").await?, index("probe-a").await?);
        handle
            .link()
            .set(LinkUnspec::new_with_index(port).controller(bridge).up().build())
            .execute()
            .await
            .map_err(netlink("set probe-a master probe-br up"))
    })
    .map_err(thread)?
    .map_err(|source| PreflightError::BridgeUnsupported { source })?;

    for key in ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"] {
        sysctl_write(probe, key, "1").map_err(|e| PreflightError::ForwardingUnavailable { source: Box::new(e) })?;
    }
    Ok(())
}
