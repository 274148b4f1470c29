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

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use crate::DataplaneError;

/// The `conntrack` program, looked up in `PATH`.
const CONNTRACK: &str = "conntrack";

/// `NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE`.
const CT_DELETE: u16 = (1 << 8) | 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLMSG_ERROR: u16 = 0x2;
/// `CTA_ZONE`: a big-endian u16.
const CTA_ZONE: u16 = 18;

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

/// The flush request for `zone`: a netlink header, `nfgenmsg` (family
/// unspecified, version 0) and the `CTA_ZONE` attribute.
pub fn zone_flush_request(zone: u16, seq: u32) -> Vec<u8> {
    const LEN: u32 = 16 + 4 + 8;
    let mut m = Vec::with_capacity(LEN as usize);
    m.extend_from_slice(&LEN.to_ne_bytes());
    m.extend_from_slice(&CT_DELETE.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[0, 0, 0, 0]);
    m.extend_from_slice(&6u16.to_ne_bytes());
    m.extend_from_slice(&CTA_ZONE.to_ne_bytes());
    m.extend_from_slice(&zone.to_be_bytes());
    m.extend_from_slice(&[0, 0]);
    m
}

/// The errno of the acknowledgement of request `seq` in `buf` (0 for
/// success); `None` when `buf` holds no acknowledgement of it.
pub fn ack_errno(buf: &[u8], seq: u32) -> Option<i32> {
    let mut rest = buf;
    while rest.len() >= 16 {
        let len = u32::from_ne_bytes(rest[0..4].try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(rest[4..6].try_into().ok()?);
        let s = u32::from_ne_bytes(rest[8..12].try_into().ok()?);
        if len < 16 || len > rest.len() {
            return None;
        }
        if kind == NLMSG_ERROR && s == seq && len >= 20 {
            return Some(-i32::from_ne_bytes(rest[16..20].try_into().ok()?));
        }
        rest = &rest[(len + 3) & !3..];
    }
    None
}

/// Deletes the entries of `zone` (not 0: a zone filter of 0 means no
/// filter) through a netlink socket of the calling thread's network
/// namespace. Only for kernels where [`kernel_flushes_by_zone`].
pub fn flush_zone_netlink(zone: u16) -> io::Result<()> {
    if zone == 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "zone 0 cannot be flushed alone"));
    }
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let seq = 1;
    socket.send(&zone_flush_request(zone, seq), 0)?;
    let mut buf = vec![0u8; 8192];
    loop {
        let n = socket.recv(&mut &mut buf[..], 0)?;
        match ack_errno(&buf[..n], seq) {
            Some(0) => return Ok(()),
            // Nothing in the zone.
            Some(errno) if errno == nix::errno::Errno::ENOENT as i32 => return Ok(()),
            Some(errno) => return Err(io::Error::from_raw_os_error(errno)),
            None => continue,
        }
    }
}

/// Deletes the entries of `zone`: in the kernel where it can, else with the
/// `conntrack` program (run in the calling thread's namespace).
pub async fn flush_zone(zone: u16, in_kernel: bool) -> Result<(), DataplaneError> {
    if in_kernel && zone != 0 {
        return flush_zone_netlink(zone).map_err(|source| DataplaneError::Kernel {
            op: "ConntrackZoneFlush",
            object: format!("conntrack zone {zone}"),
            source,
        });
    }
    let zone_arg = zone.to_string();
    let out = tokio::process::Command::new(CONNTRACK)
        .args(["-D", "-w", &zone_arg])
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

    #[test]
    fn the_request_carries_the_zone_big_endian() {
        let m = zone_flush_request(0x1234, 7);
        assert_eq!(m.len(), 28);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 28);
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), 0x0102);
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7);
        assert_eq!(&m[16..20], &[0, 0, 0, 0]);
        assert_eq!(u16::from_ne_bytes(m[20..22].try_into().unwrap()), 6);
        assert_eq!(u16::from_ne_bytes(m[22..24].try_into().unwrap()), CTA_ZONE);
        assert_eq!(&m[24..26], &[0x12, 0x34]);
    }

    #[test]
    fn acks_are_found_by_sequence() {
        let ack = |seq: u32, errno: i32| {
            let mut m = Vec::new();
            m.extend_from_slice(&36u32.to_ne_bytes());
            m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            m.extend_from_slice(&0u16.to_ne_bytes());
            m.extend_from_slice(&seq.to_ne_bytes());
            m.extend_from_slice(&0u32.to_ne_bytes());
            m.extend_from_slice(&(-errno).to_ne_bytes());
            m.extend_from_slice(&[0; 16]);
            m
        };
        assert_eq!(ack_errno(&ack(1, 0), 1), Some(0));
        assert_eq!(ack_errno(&ack(1, 2), 1), Some(2));
        assert_eq!(ack_errno(&ack(2, 0), 1), None);
        let both = [ack(2, 0), ack(1, 95)].concat();
        assert_eq!(ack_errno(&both, 1), Some(95));
        assert_eq!(ack_errno(&[1, 2, 3], 1), None);
    }
}
