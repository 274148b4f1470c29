//! Announcing addresses on a link: a gratuitous ARP request for an IPv4
//! address, an unsolicited neighbour advertisement (override) for an IPv6
//! one, so the link's neighbours send to this host at once when it takes
//! an address over (a gateway taking a network's floating IPs over from
//! one that went away). The frames are built here (pure) and sent on a
//! packet socket of the data plane's namespace; each announcement is sent
//! again twice within a second, in case the first is lost.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use rtnetlink::Handle;
use tessera_model::MacAddr;

use super::links::links;
use crate::error::DataplaneError;

/// When the announcements are sent again, after the first.
const REPEATS: [Duration; 2] = [Duration::from_millis(300), Duration::from_millis(1000)];

/// Sends the announcements of `addresses` on `dev` now and, from a task of
/// the data plane's thread, twice again.
pub(super) async fn announce(h: &Handle, dev: &str, addresses: &[IpAddr]) -> Result<(), DataplaneError> {
    let link = links(h).await?.into_iter().find(|l| l.name == dev).ok_or_else(|| DataplaneError::Kernel {
        op: "Announce",
        object: dev.to_string(),
        source: std::io::Error::other("no such link"),
    })?;
    let mac = link.mac.ok_or_else(|| DataplaneError::Kernel {
        op: "Announce",
        object: dev.to_string(),
        source: std::io::Error::other("the link has no MAC address"),
    })?;
    let frames: Vec<Vec<u8>> = addresses.iter().map(|a| frame(mac, *a)).collect();
    send_all(link.index, &frames).map_err(|source| DataplaneError::Kernel { op: "Announce", object: dev.to_string(), source })?;
    let index = link.index;
    tokio::spawn(async move {
        for wait in REPEATS {
            tokio::time::sleep(wait).await;
            if let Err(e) = send_all(index, &frames) {
                tracing::debug!(error = %e, "announcement not sent again");
            }
        }
    });
    Ok(())
}

/// The announcement of `addr` from `mac`.
pub fn frame(mac: MacAddr, addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => garp(mac, a),
        IpAddr::V6(a) => unsolicited_na(mac, a),
    }
}

/// A broadcast ARP request whose sender and target are both `addr`.
fn garp(mac: MacAddr, addr: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac.0);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&mac.0);
    f.extend_from_slice(&addr.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&addr.octets());
    f
}

/// A neighbour advertisement to all nodes, override set, with the target
/// link-layer address option.
fn unsolicited_na(mac: MacAddr, addr: Ipv6Addr) -> Vec<u8> {
    let dst = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let mut icmp = Vec::with_capacity(32);
    icmp.extend_from_slice(&[136, 0, 0, 0]);
    icmp.extend_from_slice(&0x2000_0000u32.to_be_bytes());
    icmp.extend_from_slice(&addr.octets());
    icmp.extend_from_slice(&[2, 1]);
    icmp.extend_from_slice(&mac.0);
    let sum = checksum(addr, dst, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut f = Vec::with_capacity(14 + 40 + icmp.len());
    f.extend_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
    f.extend_from_slice(&mac.0);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[58, 255]);
    f.extend_from_slice(&addr.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&icmp);
    f
}

/// The ICMPv6 checksum of `body` (its checksum field zero) between `src`
/// and `dst`.
fn checksum(src: Ipv6Addr, dst: Ipv6Addr, body: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for chunk in bytes.chunks(2) {
            let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(body.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(body);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends each frame (destination MAC first) on the link of `index`,
/// through a packet socket opened in the calling thread's namespace.
#[allow(unsafe_code)]
fn send_all(index: u32, frames: &[Vec<u8>]) -> std::io::Result<()> {
    // SAFETY: plain socket calls on a descriptor owned here and closed on
    // every path; the address is a fully initialised `sockaddr_ll`.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut result = Ok(());
        for f in frames {
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = index as i32;
            sll.sll_protocol = u16::from_be_bytes([f[12], f[13]]).to_be();
            sll.sll_halen = 6;
            sll.sll_addr[..6].copy_from_slice(&f[..6]);
            let sent = libc::sendto(
                fd,
                f.as_ptr().cast(),
                f.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            if sent < 0 {
                result = Err(std::io::Error::last_os_error());
                break;
            }
        }
        libc::close(fd);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac() -> MacAddr {
        "02:00:00:00:00:07".parse().unwrap()
    }

    #[test]
    fn a_gratuitous_arp_names_the_address_as_sender_and_target() {
        let f = frame(mac(), "203.0.113.10".parse().unwrap());
        assert_eq!(f.len(), 42);
        assert_eq!(&f[..6], &[0xff; 6]);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1], "a request");
        assert_eq!(&f[28..32], &[203, 0, 113, 10]);
        assert_eq!(&f[38..42], &[203, 0, 113, 10]);
    }

    #[test]
    fn an_unsolicited_advertisement_overrides_and_checks_out() {
        let a: Ipv6Addr = "2001:db8:ff::10".parse().unwrap();
        let f = frame(mac(), IpAddr::V6(a));
        assert_eq!(f.len(), 14 + 40 + 32);
        assert_eq!(&f[..6], &[0x33, 0x33, 0, 0, 0, 1]);
        let icmp = &f[54..];
        assert_eq!(icmp[0], 136);
        assert_eq!(icmp[4], 0x20, "override, not solicited");
        assert_eq!(&icmp[8..24], &a.octets());
        assert_eq!(&icmp[26..32], &mac().0);
        // The checksum over the whole message, its own field included, is zero.
        let dst = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
        assert_eq!(checksum(a, dst, icmp), 0);
    }
}
