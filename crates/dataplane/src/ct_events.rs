//! Conntrack events as the kernel multicasts them (ctnetlink, groups
//! `NFNLGRP_CONNTRACK_NEW` and `NFNLGRP_CONNTRACK_DESTROY`) and the entries
//! of a dump of the table, decoded without a library: the connection's id,
//! zone, original five-tuple, packets and bytes each way (with
//! `net.netfilter.nf_conntrack_acct` on; events carry them only at the end),
//! its start (with `nf_conntrack_timestamp`, in dumps) and a TCP
//! connection's state. Pure: bytes in, events out.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// `NFNLGRP_CONNTRACK_NEW`.
pub const GROUP_NEW: u32 = 1;
/// `NFNLGRP_CONNTRACK_UPDATE`: a connection's state or status changed
/// (its events are read as [`CtEventKind::New`]).
pub const GROUP_UPDATE: u32 = 2;
/// `NFNLGRP_CONNTRACK_DESTROY`.
pub const GROUP_DESTROY: u32 = 3;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_STATUS: u16 = 3;
const CTA_PROTOINFO: u16 = 4;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
const CTA_TIMESTAMP: u16 = 20;
const CTA_TIMESTAMP_START: u16 = 1;
const CTA_COUNTERS_ORIG: u16 = 9;
const CTA_COUNTERS_REPLY: u16 = 10;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_COUNTERS_PACKETS: u16 = 1;
const CTA_COUNTERS_BYTES: u16 = 2;

/// What happened to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CtEventKind {
    New,
    Destroy,
}

/// The original direction of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FiveTuple {
    pub protocol: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Ports for TCP, UDP and the like; 0 otherwise.
    pub sport: u16,
    pub dport: u16,
}

/// One conntrack event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtEvent {
    pub kind: CtEventKind,
    /// The kernel's id of the connection (unique while it lives).
    pub id: u32,
    pub zone: u16,
    pub tuple: FiveTuple,
    /// Packets and bytes in the original and in the reply direction (on
    /// `Destroy`, with accounting on).
    pub orig: (u64, u64),
    pub reply: (u64, u64),
    /// When the kernel confirmed it (ns since the Unix epoch, wall-clock
    /// time), where it says (timestamps on; dumps and destroy events).
    #[serde(default)]
    pub start_ns: Option<u64>,
    /// A TCP connection's state (`TCP_CONNTRACK_*`).
    #[serde(default)]
    pub tcp_state: Option<u8>,
    /// The connection's status bits (`IPS_*`, see [`status`]).
    #[serde(default)]
    pub status: u32,
}

/// Bits of a connection's status.
pub mod status {
    /// Traffic was seen both ways and the entry will not be dropped early.
    pub const ASSURED: u32 = 1 << 2;
    /// Its source or destination is translated.
    pub const SRC_NAT: u32 = 1 << 4;
    pub const DST_NAT: u32 = 1 << 5;
}

/// `TCP_CONNTRACK_ESTABLISHED`.
pub const TCP_ESTABLISHED: u8 = 3;

/// `TCP_CONNTRACK_TIME_WAIT` and `TCP_CONNTRACK_CLOSE`: the connection is
/// over (its entry lingers a while).
pub fn tcp_closed(state: u8) -> bool {
    state == 7 || state == 8
}

/// The TCP flags (as in a TCP header's flags byte) a connection in `state`
/// has seen: SYN once it is open or opening, ACK once the far end
/// answered, FIN once either end closed, RST when a reset ended it
/// (`TCP_CONNTRACK_CLOSE`).
pub fn tcp_state_flags(state: u8) -> u8 {
    use crate::nflog::tcp_flags::{ACK, FIN, RST, SYN};
    match state {
        1 | 9 => SYN,
        2 | 3 => SYN | ACK,
        4..=7 => SYN | ACK | FIN,
        8 => SYN | ACK | RST,
        _ => 0,
    }
}

fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let kind = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            return None;
        }
        let value = &b[4..len];
        b = &b[((len + 3) & !3).min(b.len())..];
        Some((kind, value))
    })
}

fn be(v: &[u8]) -> u64 {
    v.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

fn tuple(b: &[u8]) -> Option<FiveTuple> {
    let (mut src, mut dst, mut protocol, mut sport, mut dport) = (None, None, None, 0, 0);
    for (k, v) in attrs(b) {
        match k {
            CTA_TUPLE_IP => {
                for (k, v) in attrs(v) {
                    match (k, v.len()) {
                        (CTA_IP_V4_SRC, 4) => src = Some(IpAddr::V4(Ipv4Addr::new(v[0], v[1], v[2], v[3]))),
                        (CTA_IP_V4_DST, 4) => dst = Some(IpAddr::V4(Ipv4Addr::new(v[0], v[1], v[2], v[3]))),
                        (CTA_IP_V6_SRC, 16) => src = <[u8; 16]>::try_from(v).ok().map(|a| IpAddr::V6(Ipv6Addr::from(a))),
                        (CTA_IP_V6_DST, 16) => dst = <[u8; 16]>::try_from(v).ok().map(|a| IpAddr::V6(Ipv6Addr::from(a))),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (k, v) in attrs(v) {
                    match k {
                        CTA_PROTO_NUM if !v.is_empty() => protocol = Some(v[0]),
                        CTA_PROTO_SRC_PORT if v.len() == 2 => sport = be(v) as u16,
                        CTA_PROTO_DST_PORT if v.len() == 2 => dport = be(v) as u16,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(FiveTuple { protocol: protocol?, src: src?, dst: dst?, sport, dport })
}

fn counters(b: &[u8]) -> (u64, u64) {
    let (mut packets, mut bytes) = (0, 0);
    for (k, v) in attrs(b) {
        match k {
            CTA_COUNTERS_PACKETS => packets = be(v),
            CTA_COUNTERS_BYTES => bytes = be(v),
            _ => {}
        }
    }
    (packets, bytes)
}

/// The events in one datagram of the multicast socket (one or more netlink
/// messages); messages that are not conntrack events are skipped.
pub fn parse(mut buf: &[u8]) -> Vec<CtEvent> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        if len < 16 || len > buf.len() {
            break;
        }
        let msg = &buf[16..len];
        buf = &buf[((len + 3) & !3).min(buf.len())..];
        let event = match (kind >> 8, kind & 0xff) {
            (NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_NEW) => CtEventKind::New,
            (NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_DELETE) => CtEventKind::Destroy,
            _ => continue,
        };
        // After the netfilter header (family, version, resource id).
        let Some(body) = msg.get(4..) else { continue };
        out.extend(entry(event, body));
    }
    out
}

/// One connection from the attributes of a ctnetlink message (after its
/// netfilter header): an event's or a dump's.
pub fn entry(kind: CtEventKind, body: &[u8]) -> Option<CtEvent> {
    let (mut id, mut zone, mut t, mut orig, mut reply, mut start_ns, mut tcp_state) = (None, 0, None, (0, 0), (0, 0), None, None);
    let mut status = 0;
    for (k, v) in attrs(body) {
        match k {
            CTA_TUPLE_ORIG => t = tuple(v),
            CTA_ID if v.len() == 4 => id = Some(be(v) as u32),
            CTA_ZONE if v.len() == 2 => zone = be(v) as u16,
            CTA_STATUS if v.len() == 4 => status = be(v) as u32,
            CTA_COUNTERS_ORIG => orig = counters(v),
            CTA_COUNTERS_REPLY => reply = counters(v),
            CTA_TIMESTAMP => start_ns = attrs(v).find(|(k, _)| *k == CTA_TIMESTAMP_START).map(|(_, v)| be(v)),
            CTA_PROTOINFO => {
                tcp_state = attrs(v)
                    .find(|(k, _)| *k == CTA_PROTOINFO_TCP)
                    .and_then(|(_, tcp)| attrs(tcp).find(|(k, _)| *k == CTA_PROTOINFO_TCP_STATE))
                    .and_then(|(_, s)| s.first().copied())
            }
            _ => {}
        }
    }
    Some(CtEvent { kind, id: id?, zone, tuple: t?, orig, reply, start_ns, tcp_state, status })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut v = ((4 + value.len()) as u16).to_ne_bytes().to_vec();
        v.extend(kind.to_ne_bytes());
        v.extend(value);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn a_destroy_event_gives_its_tuple_zone_and_counters() {
        let ip = [nla(CTA_IP_V4_SRC, &[10, 0, 0, 2]), nla(CTA_IP_V4_DST, &[10, 0, 1, 3])].concat();
        let proto = [
            nla(CTA_PROTO_NUM, &[6]),
            nla(CTA_PROTO_SRC_PORT, &40000u16.to_be_bytes()),
            nla(CTA_PROTO_DST_PORT, &80u16.to_be_bytes()),
        ]
        .concat();
        let tuple = [nla(CTA_TUPLE_IP | 0x8000, &ip), nla(CTA_TUPLE_PROTO | 0x8000, &proto)].concat();
        let counters =
            |p: u64, b: u64| [nla(CTA_COUNTERS_PACKETS, &p.to_be_bytes()), nla(CTA_COUNTERS_BYTES, &b.to_be_bytes())].concat();
        let body = [
            vec![2, 0, 0, 0],
            nla(CTA_TUPLE_ORIG | 0x8000, &tuple),
            nla(CTA_COUNTERS_ORIG | 0x8000, &counters(10, 1000)),
            nla(CTA_COUNTERS_REPLY | 0x8000, &counters(8, 5000)),
            nla(CTA_ID, &77u32.to_be_bytes()),
            nla(CTA_ZONE, &5u16.to_be_bytes()),
            nla(CTA_STATUS, &(status::ASSURED | status::DST_NAT).to_be_bytes()),
        ]
        .concat();
        let mut msg = ((16 + body.len()) as u32).to_ne_bytes().to_vec();
        msg.extend(((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE).to_ne_bytes());
        msg.extend([0u8; 10]);
        msg.extend(body);
        let events = parse(&msg);
        assert_eq!(
            events,
            vec![CtEvent {
                kind: CtEventKind::Destroy,
                id: 77,
                zone: 5,
                tuple: FiveTuple {
                    protocol: 6,
                    src: "10.0.0.2".parse().unwrap(),
                    dst: "10.0.1.3".parse().unwrap(),
                    sport: 40000,
                    dport: 80
                },
                orig: (10, 1000),
                reply: (8, 5000),
                start_ns: None,
                tcp_state: None,
                status: status::ASSURED | status::DST_NAT,
            }]
        );
        assert!(parse(&msg[..20]).is_empty(), "a cut message is skipped");
    }
}
