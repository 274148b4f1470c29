//! The packets Tessera's rules refuse, as nftables logs them to
//! `nfnetlink_log` (`log group` [`DROP_LOG_GROUP`]): the messages that bind
//! a socket to the group, and the decoding of the packets that arrive.
//! Pure: [`crate::linux`] owns the socket.
//!
//! Every rule that logs there is rate limited in nftables (`limit rate`
//! before `log`), so a flood of refused packets costs the host a bounded
//! number of messages. The prefix of each says which rule refused the
//! packet ([`DropKind`]); the packet itself (its first [`COPY_RANGE`]
//! bytes) says what it was.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The `nfnetlink_log` group of Tessera's refused packets.
pub const DROP_LOG_GROUP: u16 = 7373;
/// At most this many refused packets per second are logged by each logging
/// rule (and this many more in a burst).
pub const DROP_LOG_RATE: u32 = 200;
/// How much of each packet is copied: enough for the IP and transport headers.
pub const COPY_RANGE: u32 = 128;
/// The prefix of every log of refused packets.
pub const DROP_PREFIX: &str = "tessera-drop";

const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;
const NFULA_PACKET_HDR: u16 = 1;
const NFULA_IFINDEX_INDEV: u16 = 4;
const NFULA_IFINDEX_OUTDEV: u16 = 5;
const NFULA_IFINDEX_PHYSINDEV: u16 = 6;
const NFULA_HWADDR: u16 = 8;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULA_CFG_TIMEOUT: u16 = 4;
const NFULA_CFG_QTHRESH: u16 = 5;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_COPY_PACKET: u8 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const ETH_P_ARP: u16 = 0x0806;

/// Which of Tessera's rules refused a packet (what follows
/// [`DROP_PREFIX`] in the log prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropKind {
    /// Denied by the program of flows from network `VNI` (a rule or the
    /// default of a rule list): `tessera-drop deny VNI`.
    Deny(u32),
    /// Rejected by the program of flows from network `VNI`:
    /// `tessera-drop reject VNI`.
    Reject(u32),
    /// Not the source address or MAC of the endpoint of the port it came
    /// from: `tessera-drop spoof`.
    Spoof,
    /// The first packet of a flow from a network's bridge towards where its
    /// table has no route (no policy joins the networks):
    /// `tessera-drop isolation`.
    Isolation,
}

impl DropKind {
    /// The log prefix of the rule.
    pub fn prefix(&self) -> String {
        match self {
            DropKind::Deny(v) => format!("{DROP_PREFIX} deny {v}"),
            DropKind::Reject(v) => format!("{DROP_PREFIX} reject {v}"),
            DropKind::Spoof => format!("{DROP_PREFIX} spoof"),
            DropKind::Isolation => format!("{DROP_PREFIX} isolation"),
        }
    }

    /// The kind a log prefix names; `None` for another's logs.
    pub fn parse(prefix: &str) -> Option<DropKind> {
        let rest = prefix.strip_prefix(DROP_PREFIX)?.trim();
        let mut words = rest.split_whitespace();
        match (words.next()?, words.next()) {
            ("deny", Some(v)) => Some(DropKind::Deny(v.parse().ok()?)),
            ("reject", Some(v)) => Some(DropKind::Reject(v.parse().ok()?)),
            ("spoof", None) => Some(DropKind::Spoof),
            ("isolation", None) => Some(DropKind::Isolation),
            _ => None,
        }
    }

    /// The nftables statements that log a packet for this rule, rate limited.
    pub fn log_statement(&self) -> String {
        format!(
            "limit rate {DROP_LOG_RATE}/second burst {DROP_LOG_RATE} packets log prefix \"{}\" group {DROP_LOG_GROUP}",
            self.prefix()
        )
    }
}

/// The TCP flags of a packet, as in its header.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// What a refused packet was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub kind: DropKind,
    /// The interfaces it came in by (a bridge, for a packet a bridge
    /// brought in) and would have left by (their index).
    pub indev: Option<u32>,
    /// The bridge port it came in by, for a packet a bridge brought in.
    pub port: Option<u32>,
    pub outdev: Option<u32>,
    /// Its source MAC, when the kernel knew it.
    pub src_mac: Option<[u8; 6]>,
    /// IP protocol number; 0 for ARP.
    pub protocol: u8,
    /// For ARP: the sender's and the target's protocol addresses.
    pub src: IpAddr,
    pub dst: IpAddr,
    /// 0 for protocols without ports.
    pub sport: u16,
    pub dport: u16,
    /// The TCP flags of the packet ([`tcp_flags`]).
    pub tcp_flags: u8,
    /// Its length (IP layer).
    pub bytes: u32,
}

fn nlmsg(ty: u16, flags: u16, seq: u32, family: u8, res_id: u16, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut body = vec![family, 0];
    body.extend_from_slice(&res_id.to_be_bytes());
    for (kind, value) in attrs {
        let len = 4 + value.len();
        body.extend_from_slice(&(len as u16).to_ne_bytes());
        body.extend_from_slice(&kind.to_ne_bytes());
        body.extend_from_slice(value);
        body.resize(body.len().next_multiple_of(4), 0);
    }
    let mut out = Vec::with_capacity(16 + body.len());
    out.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&body);
    out
}

/// The messages that bind a socket to `group`: bind, copy the first
/// [`COPY_RANGE`] bytes of each packet, and deliver each packet at once
/// (queue threshold 1) rather than in batches.
pub fn bind_messages(group: u16) -> Vec<Vec<u8>> {
    let ty = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG;
    let flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut mode = COPY_RANGE.to_be_bytes().to_vec();
    mode.extend_from_slice(&[NFULNL_COPY_PACKET, 0]);
    vec![
        nlmsg(ty, flags, 1, 0, group, &[(NFULA_CFG_CMD, vec![NFULNL_CFG_CMD_BIND])]),
        nlmsg(ty, flags, 2, 0, group, &[(NFULA_CFG_MODE, mode)]),
        nlmsg(ty, flags, 3, 0, group, &[(NFULA_CFG_QTHRESH, 1u32.to_be_bytes().to_vec())]),
        nlmsg(ty, flags, 4, 0, group, &[(NFULA_CFG_TIMEOUT, 1u32.to_be_bytes().to_vec())]),
    ]
}

/// The error of an acknowledgement among `buf`'s messages, as an errno.
pub fn ack_error(buf: &[u8]) -> Option<i32> {
    messages(buf).find_map(|(ty, body)| {
        (ty == 2 && body.len() >= 4).then(|| i32::from_ne_bytes(body[0..4].try_into().unwrap_or_default())).filter(|e| *e != 0)
    })
}

fn messages(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < 16 {
            return None;
        }
        let len = u32::from_ne_bytes(rest[0..4].try_into().ok()?) as usize;
        if len < 16 || len > rest.len() {
            return None;
        }
        let ty = u16::from_ne_bytes(rest[4..6].try_into().ok()?);
        let body = &rest[16..len];
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
        Some((ty, body))
    })
}

fn attributes(mut rest: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if len < 4 || len > rest.len() {
            return None;
        }
        let value = &rest[4..len];
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
        Some((kind, value))
    })
}

/// The refused packets of one read (one or more netlink messages); logs
/// of other prefixes and packets that cannot be read are skipped.
pub fn parse(buf: &[u8]) -> Vec<Refused> {
    let packet_type = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET;
    messages(buf).filter(|(ty, body)| *ty == packet_type && body.len() >= 4).filter_map(|(_, body)| packet(&body[4..])).collect()
}

fn be32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

fn packet(attrs: &[u8]) -> Option<Refused> {
    let (mut kind, mut hw_protocol, mut indev, mut physindev, mut outdev, mut src_mac, mut payload) =
        (None, 0, None, None, None, None, None);
    for (ty, v) in attributes(attrs) {
        match ty {
            NFULA_PACKET_HDR if v.len() >= 2 => hw_protocol = u16::from_be_bytes([v[0], v[1]]),
            NFULA_IFINDEX_INDEV => indev = be32(v),
            NFULA_IFINDEX_OUTDEV => outdev = be32(v),
            NFULA_IFINDEX_PHYSINDEV => physindev = be32(v),
            NFULA_HWADDR if v.len() >= 10 && u16::from_be_bytes([v[0], v[1]]) == 6 => {
                src_mac = v[4..10].try_into().ok();
            }
            NFULA_PAYLOAD => payload = Some(v),
            NFULA_PREFIX => kind = DropKind::parse(std::str::from_utf8(v).ok()?.trim_end_matches('\0')),
            _ => {}
        }
    }
    let (kind, payload) = (kind?, payload?);
    let mut r = match hw_protocol {
        ETH_P_ARP => arp(payload)?,
        _ => ip(payload)?,
    };
    (r.kind, r.indev, r.port, r.outdev, r.src_mac) = (kind, indev, physindev, outdev, src_mac);
    Some(r)
}

fn refused(protocol: u8, src: IpAddr, dst: IpAddr, bytes: u32) -> Refused {
    Refused {
        kind: DropKind::Spoof,
        indev: None,
        port: None,
        outdev: None,
        src_mac: None,
        protocol,
        src,
        dst,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        bytes,
    }
}

/// An ARP packet for IPv4 over Ethernet.
fn arp(p: &[u8]) -> Option<Refused> {
    if p.len() < 28 || p[4] != 6 || p[5] != 4 {
        return None;
    }
    let sender = Ipv4Addr::new(p[14], p[15], p[16], p[17]);
    let target = Ipv4Addr::new(p[24], p[25], p[26], p[27]);
    Some(refused(0, sender.into(), target.into(), 28))
}

/// An IPv4 or IPv6 packet, and its ports and TCP flags.
fn ip(p: &[u8]) -> Option<Refused> {
    let (mut r, l4) = match p.first()? >> 4 {
        4 if p.len() >= 20 => {
            let ihl = (p[0] & 0x0f) as usize * 4;
            let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
            let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
            let len = u16::from_be_bytes([p[2], p[3]]) as u32;
            // Later fragments carry no transport header.
            let fragment = u16::from_be_bytes([p[6], p[7]]) & 0x1fff != 0;
            (refused(p[9], src.into(), dst.into(), len), if fragment { &[][..] } else { p.get(ihl..).unwrap_or_default() })
        }
        6 if p.len() >= 40 => {
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(&p[8..24]).ok()?);
            let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&p[24..40]).ok()?);
            let len = u16::from_be_bytes([p[4], p[5]]) as u32 + 40;
            (refused(p[6], src.into(), dst.into(), len), &p[40..])
        }
        _ => return None,
    };
    match r.protocol {
        6 | 17 | 132 if l4.len() >= 4 => {
            r.sport = u16::from_be_bytes([l4[0], l4[1]]);
            r.dport = u16::from_be_bytes([l4[2], l4[3]]);
            if r.protocol == 6 && l4.len() >= 14 {
                r.tcp_flags = l4[13];
            }
        }
        _ => {}
    }
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ETH_P_IP: u16 = 0x0800;

    fn logged(prefix: &str, hw: u16, payload: &[u8]) -> Vec<u8> {
        let mut hdr = hw.to_be_bytes().to_vec();
        hdr.extend_from_slice(&[1, 0]);
        let mut hwaddr = 6u16.to_be_bytes().to_vec();
        hwaddr.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 9, 0, 0]);
        let mut p = prefix.as_bytes().to_vec();
        p.push(0);
        let ty = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET;
        nlmsg(
            ty,
            0,
            0,
            2,
            DROP_LOG_GROUP,
            &[
                (NFULA_PACKET_HDR, hdr),
                (NFULA_IFINDEX_INDEV, 7u32.to_be_bytes().to_vec()),
                (NFULA_HWADDR, hwaddr),
                (NFULA_PREFIX, p),
                (NFULA_PAYLOAD, payload.to_vec()),
            ],
        )
    }

    fn tcp_syn() -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 60, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 2, 10, 1, 0, 3];
        p.extend_from_slice(&[0x9c, 0x40, 0, 80, 0, 0, 0, 0, 0, 0, 0, 0, 0xa0, 0x02, 0xff, 0xff]);
        p
    }

    #[test]
    fn a_refused_tcp_syn_is_read_with_its_rule_tuple_and_flags() {
        let mut buf = logged(&DropKind::Deny(100).prefix(), ETH_P_IP, &tcp_syn());
        buf.extend(logged("someone else", ETH_P_IP, &tcp_syn()));
        let got = parse(&buf);
        assert_eq!(got.len(), 1, "{got:?}");
        let r = &got[0];
        assert_eq!(r.kind, DropKind::Deny(100));
        assert_eq!((r.src, r.dst), ("10.0.0.2".parse().unwrap(), "10.1.0.3".parse().unwrap()));
        assert_eq!((r.protocol, r.sport, r.dport, r.bytes), (6, 40000, 80, 60));
        assert_eq!(r.tcp_flags, tcp_flags::SYN);
        assert_eq!((r.indev, r.src_mac), (Some(7), Some([2, 0, 0, 0, 0, 9])));
    }

    #[test]
    fn a_forged_arp_is_read_with_its_sender_and_target() {
        let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 9, 10, 0, 0, 99];
        arp.extend_from_slice(&[0, 0, 0, 0, 0, 0, 10, 0, 0, 1]);
        let got = parse(&logged(&DropKind::Spoof.prefix(), ETH_P_ARP, &arp));
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].kind, got[0].protocol), (DropKind::Spoof, 0));
        assert_eq!((got[0].src, got[0].dst), ("10.0.0.99".parse().unwrap(), "10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn prefixes_round_trip_and_others_are_not_ours() {
        for k in [DropKind::Deny(4096), DropKind::Reject(7), DropKind::Spoof, DropKind::Isolation] {
            assert_eq!(DropKind::parse(&k.prefix()), Some(k));
        }
        assert_eq!(DropKind::parse("tessera web#1 a>b deny "), None);
        assert_eq!(DropKind::parse("tessera-drop deny x"), None);
        assert!(DropKind::Spoof.log_statement().contains("group 7373"));
    }

    #[test]
    fn truncated_input_is_skipped() {
        let buf = logged(&DropKind::Spoof.prefix(), ETH_P_IP, &tcp_syn()[..10]);
        assert!(parse(&buf).is_empty());
        assert!(parse(&buf[..20]).is_empty());
    }
}
