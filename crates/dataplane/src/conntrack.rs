//! Ending the flows of a conntrack zone.
//!
//! Since Linux 6.8 the kernel deletes the entries of one zone itself: one
//! `IPCTNL_MSG_CT_DELETE` request carrying only `CTA_ZONE` is a flush
//! filtered by zone, a walk of the table inside the kernel (a few
//! milliseconds for tens of thousands of entries). Older kernels ignore the
//! attribute in a flush and would delete *every* entry, so there the
//! `conntrack` program does it instead: it dumps the whole table and deletes
//! the zone's entries one request each (hundreds of milliseconds when a
//! zone holds thousands of short connections).

use std::io;
use std::process::Stdio;

use crate::error::DataplaneError;
use crate::nfnetlink::{zone_flush, NetfilterSocket};

/// The `conntrack` program, looked up in `PATH`.
const CONNTRACK: &str = "conntrack";

/// Whether the running kernel filters a conntrack flush by zone (6.8 and
/// later), from `/proc/sys/kernel/osrelease`.
pub fn kernel_flushes_by_zone() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").is_ok_and(|r| release_flushes_by_zone(&r))
}

/// [`kernel_flushes_by_zone`] for a release string such as `6.8.0-45-generic`.
pub fn release_flushes_by_zone(release: &str) -> bool {
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor) >= (6, 8)
}

/// Deletes the entries of `zone` (not 0: a zone filter of 0 means no
/// filter) through `socket`, in its namespace. Only for kernels where
/// [`kernel_flushes_by_zone`]. A zone without entries is no error.
pub fn flush_zone_in_kernel(socket: &mut NetfilterSocket, zone: u16) -> Result<(), DataplaneError> {
    let err = |source| DataplaneError::Kernel { op: "ConntrackZoneFlush", object: format!("conntrack zone {zone}"), source };
    if zone == 0 {
        return Err(err(io::Error::new(io::ErrorKind::InvalidInput, "zone 0 cannot be flushed alone")));
    }
    match socket.transact(&zone_flush(zone, socket.next_seq())) {
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOENT as i32) => Ok(()),
        r => r.map_err(err),
    }
}

/// Deletes the entries of `zone` with the `conntrack` program (run in the
/// calling thread's namespace): for kernels that cannot, and for zone 0.
pub async fn flush_zone_with_program(zone: u16) -> Result<(), DataplaneError> {
    conntrack_delete(zone, &[]).await
}

/// Ends the flows of zone `zone` that an external address carried to or
/// from `fixed` (a floating IP that moved or went): those that came in for
/// it and were translated to `fixed`, and those `fixed` started that left
/// with it.
pub async fn flush_address_with_program(
    zone: u16,
    address: std::net::IpAddr,
    fixed: std::net::IpAddr,
) -> Result<(), DataplaneError> {
    let (a, f) = (address.to_string(), fixed.to_string());
    let family = if address.is_ipv4() { "ipv4" } else { "ipv6" };
    conntrack_delete(zone, &["-f", family, "--orig-dst", &a, "--reply-src", &f]).await?;
    conntrack_delete(zone, &["-f", family, "--orig-src", &f, "--reply-dst", &a]).await
}

async fn conntrack_delete(zone: u16, filter: &[&str]) -> Result<(), DataplaneError> {
    let zone_arg = zone.to_string();
    let out = tokio::process::Command::new(CONNTRACK)
        .args(["-D", "-w", &zone_arg])
        .args(filter)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| DataplaneError::Kernel {
            op: "ConntrackZoneFlush",
            object: format!("cannot run {CONNTRACK}"),
            source,
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || stderr.contains("flow entries have been deleted") {
        Ok(())
    } else {
        Err(DataplaneError::Conntrack { zone, message: stderr.trim().to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_from_6_8_flush_by_zone() {
        for r in ["6.8.0", "6.18.44-fc-v657", "7.0", "6.10.3-arch1\n", "10.1.0"] {
            assert!(release_flushes_by_zone(r), "{r}");
        }
        for r in ["6.7.12", "6.1.0-28-amd64", "5.15.0", "4.19", "", "garbage"] {
            assert!(!release_flushes_by_zone(r), "{r}");
        }
    }
}
