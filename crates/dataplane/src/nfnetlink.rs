//! nfnetlink, the netfilter side of netlink, spoken directly for the
//! requests on the path of a policy change or an attach: policy map element
//! changes and endpoints' source elements (the bridge table's `ep4`, `ep6`,
//! `epmac` and `svcmac`) as one nftables transaction (a batch of
//! `NFT_MSG_NEWSETELEM` and `NFT_MSG_DELSETELEM` messages), and conntrack
//! zone flushes.
//!
//! An `nft -f` process costs 15–30 ms per transaction however small it is:
//! starting the process, reading the ruleset's tables, chains and sets, and
//! closing its netlink socket (which waits for an RCU grace period). The
//! same transaction sent on a socket the data plane keeps open costs the
//! kernel's commit alone, well under a millisecond for a few elements. So
//! the element changes a rule edit makes (a verdict flipped, a few elements
//! added and deleted, the `digests` entries that record them) travel here;
//! everything else, and big changes, still go through `nft -f`, which knows
//! how to declare maps, chains and rules.
//!
//! The encoding follows `linux/netfilter/nf_tables.h` and is what `nft`
//! sends for the same script: keys in network byte order; in a concatenated
//! key each field padded to 4 bytes; an interval map's element carries the
//! first and last value of each field (`NFTA_SET_ELEM_KEY` and
//! `NFTA_SET_ELEM_KEY_END`). Elements get the map's per-element counter
//! from the map's declaration, as with `nft`. The pure part (messages and
//! acknowledgements) is apart from [`NetfilterSocket`], which does the IO.

use std::io;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use tessera_policy::Family;

use crate::names::{DIGESTS, POLICY_TABLE};
use crate::observed::{ElementVerdict, MapElement, NftElement};
use crate::op::KernelOp;
use crate::policy::{key_ranges, map_family, map_fields, map_is_interval, ElementCounter};

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 0x2;
const NLMSG_DONE: u16 = 0x3;
const NLA_F_NESTED: u16 = 0x8000;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_GETSET: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFPROTO_INET: u8 = 1;
const NFPROTO_BRIDGE: u8 = 7;
/// The bridge table of endpoints' sources (`bridge tessera`).
const BRIDGE_TABLE: &str = "tessera";
/// `IFNAMSIZ`: an `ifname` key is the name, zero-padded to this.
const IFNAMSIZ: usize = 16;

const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_EXPR: u16 = 7;
const NFTA_SET_ELEM_KEY_END: u16 = 10;
const NFTA_SET_ELEM_EXPRESSIONS: u16 = 11;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

const NF_DROP: i32 = 0;
const NFT_CONTINUE: i32 = -1;
const NFT_GOTO: i32 = -4;
const NFT_RETURN: i32 = -5;

/// `NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE`.
const CT_DELETE: u16 = (1 << 8) | 2;
/// `CTA_ZONE`: a big-endian u16.
const CTA_ZONE: u16 = 18;

/// Most elements in one message: an attribute's length is 16 bits, and an
/// element of a 5-field IPv6 interval map takes about 130 bytes.
const ELEMENTS_PER_MESSAGE: usize = 256;

/// Most bytes of a batch sent on the socket; bigger transactions go through
/// `nft -f` (a socket's send buffer bounds one message).
pub const BATCH_MAX_BYTES: usize = 128 * 1024;

/// Netlink messages being written into one buffer.
#[derive(Default)]
pub struct Messages {
    buf: Vec<u8>,
    /// Where the open message and the open nested attributes start.
    open: Vec<usize>,
    /// The sequence numbers of the messages that asked for an
    /// acknowledgement.
    acked: Vec<u32>,
    /// The sequence number after the last message's.
    next_seq: u32,
}

impl Messages {
    /// Starts a message: the netlink header and the netfilter header
    /// (`nfgenmsg`: family, version 0, resource id big-endian).
    fn begin(&mut self, kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) {
        self.open.push(self.buf.len());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&[family, 0]);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        if flags & NLM_F_ACK != 0 {
            self.acked.push(seq);
        }
        self.next_seq = seq.wrapping_add(1);
    }

    /// Ends the open message or nested attribute: writes its length.
    fn end(&mut self) {
        let start = self.open.pop().expect("an open message or attribute");
        let len = self.buf.len() - start;
        if self.open.is_empty() {
            self.buf[start..start + 4].copy_from_slice(&(len as u32).to_ne_bytes());
        } else {
            self.buf[start..start + 2].copy_from_slice(&(len as u16).to_ne_bytes());
        }
    }

    fn pad(&mut self) {
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }

    fn attr(&mut self, kind: u16, payload: &[u8]) {
        self.buf.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
    }

    /// A NUL-terminated string attribute.
    fn attr_str(&mut self, kind: u16, s: &str) {
        let mut payload = Vec::with_capacity(s.len() + 1);
        payload.extend_from_slice(s.as_bytes());
        payload.push(0);
        self.attr(kind, &payload);
    }

    fn nest(&mut self, kind: u16) {
        self.open.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    }

    /// `NFTA_DATA_VALUE` nested in `kind`.
    fn value(&mut self, kind: u16, bytes: &[u8]) {
        self.nest(kind);
        self.attr(NFTA_DATA_VALUE, bytes);
        self.end();
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The sequence numbers whose acknowledgements say the request was
    /// carried out.
    pub fn acked(&self) -> &[u32] {
        &self.acked
    }
}

/// The conntrack flush of `zone` (`conntrack -D -w ZONE` done by the kernel,
/// see [`crate::conntrack`]): `IPCTNL_MSG_CT_DELETE` with only `CTA_ZONE`.
pub fn zone_flush(zone: u16, seq: u32) -> Messages {
    let mut m = Messages::default();
    m.begin(CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, seq, 0, 0);
    m.attr(CTA_ZONE, &zone.to_be_bytes());
    m.end();
    m
}

/// `conntrack -L` as a request: a dump of the namespace's connections, both
/// families.
pub fn conntrack_dump(seq: u32) -> Messages {
    let mut m = Messages::default();
    m.begin((1 << 8) | 1, NLM_F_REQUEST | NLM_F_DUMP, seq, 0, 0);
    m.end();
    m
}

/// The connections of the calling thread's namespace, read through `socket`.
pub fn conntrack_table(socket: &mut NetfilterSocket) -> io::Result<Vec<crate::ct_events::CtEvent>> {
    let mut out = Vec::new();
    socket.dump(&conntrack_dump(socket.next_seq()), |payload| {
        out.extend(crate::ct_events::entry(crate::ct_events::CtEventKind::New, payload));
        Ok(())
    })?;
    Ok(out)
}

/// `nft list sets inet tessera_policy` as a request: a dump of the policy
/// table's sets and maps.
pub fn policy_sets_dump(seq: u32) -> Messages {
    let mut m = Messages::default();
    m.begin((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSET, NLM_F_REQUEST | NLM_F_DUMP, seq, NFPROTO_INET, 0);
    m.attr_str(NFTA_SET_TABLE, POLICY_TABLE);
    m.end();
    m
}

/// `nft list map inet tessera_policy SET` as a request: a dump of its
/// elements, with their counters.
pub fn set_elements_dump(set: &str, seq: u32) -> Messages {
    let mut m = Messages::default();
    m.begin((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM, NLM_F_REQUEST | NLM_F_DUMP, seq, NFPROTO_INET, 0);
    m.attr_str(NFTA_SET_ELEM_LIST_TABLE, POLICY_TABLE);
    m.attr_str(NFTA_SET_ELEM_LIST_SET, set);
    m.end();
    m
}

/// The attributes in `b`: (kind without flags, payload).
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        if len < 4 || len > b.len() {
            return None;
        }
        let out = (u16::from_ne_bytes([b[2], b[3]]) & !NLA_F_NESTED, &b[4..len]);
        b = &b[len.next_multiple_of(4).min(b.len())..];
        Some(out)
    })
}

fn attr(b: &[u8], kind: u16) -> Option<&[u8]> {
    attrs(b).find(|(k, _)| *k == kind).map(|(_, p)| p)
}

fn string(b: &[u8]) -> String {
    String::from_utf8_lossy(b.split(|c| *c == 0).next().unwrap_or_default()).into_owned()
}

fn be64(b: &[u8]) -> u64 {
    b.get(..8).map(|x| u64::from_be_bytes(x.try_into().expect("8 bytes"))).unwrap_or(0)
}

/// The name of the set a `NEWSET` message (its payload after the netfilter
/// header) describes.
pub fn set_name(payload: &[u8]) -> Option<String> {
    attr(payload, NFTA_SET_NAME).map(string)
}

/// The counter of an element expression (`NFTA_EXPR_NAME` "counter").
fn counter_of(expr: &[u8]) -> Option<(u64, u64)> {
    if attr(expr, NFTA_EXPR_NAME).map(string).as_deref() != Some("counter") {
        return None;
    }
    let data = attr(expr, NFTA_EXPR_DATA)?;
    Some((attr(data, NFTA_COUNTER_PACKETS).map(be64).unwrap_or(0), attr(data, NFTA_COUNTER_BYTES).map(be64).unwrap_or(0)))
}

/// Reads a key of policy map `map` back into the ranges of its key fields
/// (the inverse of the encoding of [`element_batch`]).
fn key_of(map: &str, key: &[u8], key_end: Option<&[u8]>) -> Option<Vec<(u128, u128)>> {
    let family = map_family(map)?;
    let fields = map_fields(map);
    let concatenated = fields.len() > 1;
    let mut out = Vec::with_capacity(fields.len());
    let mut at = 0;
    for f in &fields {
        let width = field_width(family, *f);
        let padded = if concatenated { width.next_multiple_of(4) } else { width };
        let read = |b: &[u8]| b.get(at..at + width).map(|x| x.iter().fold(0u128, |v, byte| (v << 8) | u128::from(*byte)));
        let lo = read(key)?;
        let hi = match key_end {
            Some(end) => read(end)?,
            None => lo,
        };
        out.push((lo, hi));
        at += padded;
    }
    Some(out)
}

/// The element counters in a `NEWSETELEM` message of policy map `map` (its
/// payload after the netfilter header).
pub fn element_counters(map: &str, payload: &[u8], out: &mut Vec<ElementCounter>) -> Result<(), String> {
    let Some(list) = attr(payload, NFTA_SET_ELEM_LIST_ELEMENTS) else { return Ok(()) };
    for (_, elem) in attrs(list) {
        let value = |kind: u16| attr(elem, kind).and_then(|v| attr(v, NFTA_DATA_VALUE));
        let key = value(NFTA_SET_ELEM_KEY).ok_or_else(|| format!("an element of {map} has no key"))?;
        let key = key_of(map, key, value(NFTA_SET_ELEM_KEY_END))
            .ok_or_else(|| format!("an element of {map} has a key of {} bytes", key.len()))?;
        let single = attr(elem, NFTA_SET_ELEM_EXPR).and_then(counter_of);
        let listed = || attr(elem, NFTA_SET_ELEM_EXPRESSIONS).and_then(|l| attrs(l).find_map(|(_, e)| counter_of(e)));
        let (packets, bytes) = single.or_else(listed).unwrap_or((0, 0));
        out.push(ElementCounter { map: map.to_string(), key, packets, bytes });
    }
    Ok(())
}

/// The element counters of every policy map, dumped from the kernel
/// through `socket` (`nft list table inet tessera_policy` without `nft`:
/// no process, no JSON, and dump batches as big as the kernel makes them).
/// No table means no counters.
pub fn policy_counters(socket: &mut NetfilterSocket) -> io::Result<Vec<ElementCounter>> {
    let mut maps = Vec::new();
    let listed = socket.dump(&policy_sets_dump(socket.next_seq()), |payload| {
        // Policy maps only: not `digests`, nor the anonymous maps (`__map0`)
        // of rules such as the dispatch.
        maps.extend(set_name(payload).filter(|n| n != DIGESTS && !n.starts_with("__") && map_family(n).is_some()));
        Ok(())
    });
    match listed {
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOENT as i32) => return Ok(Vec::new()),
        r => r?,
    }
    let mut out = Vec::new();
    for map in maps {
        let dumped =
            socket.dump(&set_elements_dump(&map, socket.next_seq()), |payload| element_counters(&map, payload, &mut out));
        match dumped {
            // Deleted since it was listed.
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOENT as i32) => {}
            r => r?,
        }
    }
    Ok(out)
}

/// One element of a map: key, end of the key's ranges (interval maps) and
/// data.
struct Element {
    key: Vec<u8>,
    key_end: Option<Vec<u8>>,
    data: Option<Data>,
}

enum Data {
    Value(Vec<u8>),
    Verdict(ElementVerdict),
}

/// Why a block of actions cannot be sent as elements alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsupported {
    #[error("{0} is not an element change of the policy table")]
    KernelOp(&'static str),
    #[error("map {0}: cannot tell its key from its name")]
    MapName(String),
    #[error("map {map}: a hash map's key field {field} is a range")]
    RangeInHash { map: String, field: usize },
    #[error("the transaction is {0} bytes, over the batch limit")]
    TooBig(usize),
}

/// The width in bytes of key field `field` (see [`crate::policy::map_fields`]).
fn field_width(family: Family, field: usize) -> usize {
    match (field, family) {
        (0 | 1, Family::V4) => 4,
        (0 | 1, Family::V6) => 16,
        (2, _) => 1,
        _ => 2,
    }
}

/// Appends `v` big-endian in `width` bytes, then zeros up to `padded`.
fn push_field(out: &mut Vec<u8>, v: u128, width: usize, padded: usize) {
    out.extend_from_slice(&v.to_be_bytes()[16 - width..]);
    out.resize(out.len() + padded - width, 0);
}

/// A policy map element as nftables holds it.
fn map_element(map: &str, e: &MapElement, with_data: bool) -> Result<Element, Unsupported> {
    let family = map_family(map).ok_or_else(|| Unsupported::MapName(map.to_string()))?;
    let fields = map_fields(map);
    let interval = map_is_interval(map);
    let concatenated = fields.len() > 1;
    let ranges = key_ranges(&e.key, &fields);
    let (mut key, mut end) = (Vec::new(), Vec::new());
    for (f, (lo, hi)) in fields.iter().zip(ranges) {
        let width = field_width(family, *f);
        let padded = if concatenated { width.next_multiple_of(4) } else { width };
        if !interval && lo != hi {
            return Err(Unsupported::RangeInHash { map: map.to_string(), field: *f });
        }
        push_field(&mut key, lo, width, padded);
        push_field(&mut end, hi, width, padded);
    }
    Ok(Element { key, key_end: interval.then_some(end), data: with_data.then(|| Data::Verdict(e.verdict.clone())) })
}

/// An endpoint port's element of the bridge table (`ep4`, `ep6`, `epmac`,
/// `svcmac`), and its set: `ifname . ether_addr [. ipv4_addr | ipv6_addr]`,
/// each field padded to 4 bytes. `None` for other elements (and a name too
/// long for an interface).
fn port_element(e: &NftElement) -> Option<(&'static str, Element)> {
    let (port, mac, ip) = match e {
        NftElement::Ep4 { port, mac, ip } => (port, mac, Some(ip.octets().to_vec())),
        NftElement::Ep6 { port, mac, ip } => (port, mac, Some(ip.octets().to_vec())),
        NftElement::EpMac { port, mac } | NftElement::SvcMac { port, mac } => (port, mac, None),
        _ => return None,
    };
    if port.len() >= IFNAMSIZ || port.as_bytes().contains(&0) {
        return None;
    }
    let mut key = port.as_bytes().to_vec();
    key.resize(IFNAMSIZ, 0);
    key.extend_from_slice(&mac.0);
    key.resize(IFNAMSIZ + 8, 0);
    key.extend(ip.unwrap_or_default());
    Some((e.location().2, Element { key, key_end: None, data: None }))
}

/// One `digests` entry (128-bit key and value, typed `ipv6_addr`).
fn digest_element((k, v): (u128, u128), with_data: bool) -> Element {
    Element { key: k.to_be_bytes().to_vec(), key_end: None, data: with_data.then(|| Data::Value(v.to_be_bytes().to_vec())) }
}

impl Messages {
    /// `NEWSETELEM` or `DELSETELEM` messages for `elements` of `set` in the
    /// policy table, each asking for an acknowledgement.
    fn set_elements(&mut self, add: bool, set: &str, elements: &[Element], seq: &mut u32) {
        self.table_set_elements(add, (NFPROTO_INET, POLICY_TABLE), set, elements, seq)
    }

    /// [`Messages::set_elements`] of `set` in `table` of `family`.
    fn table_set_elements(&mut self, add: bool, (family, table): (u8, &str), set: &str, elements: &[Element], seq: &mut u32) {
        let (kind, flags) = if add {
            (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK)
        } else {
            (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK)
        };
        for chunk in elements.chunks(ELEMENTS_PER_MESSAGE) {
            self.begin((NFNL_SUBSYS_NFTABLES << 8) | kind, flags, *seq, family, 0);
            *seq += 1;
            self.attr_str(NFTA_SET_ELEM_LIST_TABLE, table);
            self.attr_str(NFTA_SET_ELEM_LIST_SET, set);
            self.nest(NFTA_SET_ELEM_LIST_ELEMENTS);
            for e in chunk {
                self.nest(NFTA_LIST_ELEM);
                self.value(NFTA_SET_ELEM_KEY, &e.key);
                if let Some(end) = &e.key_end {
                    self.value(NFTA_SET_ELEM_KEY_END, end);
                }
                match &e.data {
                    None => {}
                    Some(Data::Value(v)) => self.value(NFTA_SET_ELEM_DATA, v),
                    Some(Data::Verdict(v)) => {
                        self.nest(NFTA_SET_ELEM_DATA);
                        self.nest(NFTA_DATA_VERDICT);
                        let (code, chain) = match v {
                            ElementVerdict::Return => (NFT_RETURN, None),
                            ElementVerdict::Drop => (NF_DROP, None),
                            ElementVerdict::Continue => (NFT_CONTINUE, None),
                            ElementVerdict::Goto(c) => (NFT_GOTO, Some(c)),
                        };
                        self.attr(NFTA_VERDICT_CODE, &code.to_be_bytes());
                        if let Some(c) = chain {
                            self.attr_str(NFTA_VERDICT_CHAIN, c);
                        }
                        self.end();
                        self.end();
                    }
                }
                self.end();
            }
            self.end();
            self.end();
        }
    }
}

/// The nftables transaction of `block` as one batch, when every action in
/// it changes elements of the policy table's maps (rule verdicts and
/// matches, and the digests that record them) or endpoints' source elements
/// of the bridge table, and it is small enough: the
/// same changes, in the same order, as [`crate::nft::script`] would write.
/// Sequence numbers start at `seq`.
pub fn element_batch(block: &[&KernelOp], seq: u32) -> Result<Messages, Unsupported> {
    let mut m = Messages::default();
    let mut seq = seq;
    m.begin(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, 0, NFNL_SUBSYS_NFTABLES);
    m.end();
    seq += 1;
    for action in block {
        match action {
            KernelOp::NftMapElementsAdd { map, elements } => {
                let els = elements.iter().map(|e| map_element(map, e, true)).collect::<Result<Vec<_>, _>>()?;
                m.set_elements(true, map, &els, &mut seq);
            }
            KernelOp::NftMapElementsDelete { map, elements } => {
                let els = elements.iter().map(|e| map_element(map, e, false)).collect::<Result<Vec<_>, _>>()?;
                m.set_elements(false, map, &els, &mut seq);
            }
            KernelOp::NftDigestsUpdate { deletes, adds } => {
                let dels: Vec<Element> = deletes.iter().map(|d| digest_element(*d, false)).collect();
                let ads: Vec<Element> = adds.iter().map(|d| digest_element(*d, true)).collect();
                m.set_elements(false, DIGESTS, &dels, &mut seq);
                m.set_elements(true, DIGESTS, &ads, &mut seq);
            }
            KernelOp::NftSetElementAdd(e) | KernelOp::NftSetElementDelete(e) => {
                let (set, element) = port_element(e).ok_or(Unsupported::KernelOp(action.op()))?;
                let add = matches!(action, KernelOp::NftSetElementAdd(_));
                m.table_set_elements(add, (NFPROTO_BRIDGE, BRIDGE_TABLE), set, &[element], &mut seq);
            }
            other => return Err(Unsupported::KernelOp(other.op())),
        }
        if m.buf.len() > BATCH_MAX_BYTES {
            return Err(Unsupported::TooBig(m.buf.len()));
        }
    }
    m.begin(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq, 0, NFNL_SUBSYS_NFTABLES);
    m.end();
    Ok(m)
}

/// The acknowledgements and errors in `buf`: (sequence number, errno; 0
/// for success).
pub fn acks(buf: &[u8]) -> Vec<(u32, i32)> {
    let mut out = Vec::new();
    let mut rest = buf;
    while rest.len() >= 16 {
        let word = |at: usize| u32::from_ne_bytes([rest[at], rest[at + 1], rest[at + 2], rest[at + 3]]);
        let len = word(0) as usize;
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        if len < 16 || len > rest.len() {
            break;
        }
        if kind == NLMSG_ERROR && len >= 20 {
            out.push((word(8), -(word(16) as i32)));
        }
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
    }
    out
}

/// A netfilter netlink socket of the namespace of the thread that opened it,
/// kept open: closing one costs an RCU grace period.
pub struct NetfilterSocket {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl NetfilterSocket {
    /// Opens the socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Errors carry the header of the failed request only.
        socket.set_cap_ack(true)?;
        socket.set_non_blocking(true)?;
        // Dumps come in parts of up to 32 KB; a bigger buffer reads each whole.
        socket.set_rx_buf_sz(1 << 20)?;
        Ok(NetfilterSocket { socket, seq: 1, buf: vec![0; 64 * 1024] })
    }

    /// The sequence number the next request starts at.
    pub fn next_seq(&self) -> u32 {
        self.seq
    }

    /// Sends `messages`, after dropping answers still queued from an earlier
    /// request that failed half-way (they are stale).
    fn send(&mut self, messages: &Messages) -> io::Result<()> {
        while self.socket.recv(&mut &mut self.buf[..], 0).is_ok() {}
        self.seq = messages.next_seq;
        self.socket.send(messages.bytes(), 0).map(|_| ())
    }

    /// Reads the next answer into the buffer; its length. The kernel answers
    /// while a request is sent (and makes the next part of a dump while one
    /// is read), so nothing to read means it will not answer: `missing`
    /// says what is missing.
    fn receive(&mut self, missing: impl FnOnce() -> String) -> io::Result<usize> {
        match self.socket.recv(&mut &mut self.buf[..], 0) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(io::Error::new(io::ErrorKind::TimedOut, missing())),
            r => r,
        }
    }

    /// Sends `messages` and reads the answers. The kernel handles a request
    /// while it is sent, so the answers are all queued when `send` returns:
    /// `Ok` once every acknowledgement asked for has come, the first error
    /// otherwise (an nftables batch is all or nothing).
    pub fn transact(&mut self, messages: &Messages) -> io::Result<()> {
        self.send(messages)?;
        let mut waiting: Vec<u32> = messages.acked().to_vec();
        while !waiting.is_empty() {
            let answered = messages.acked().len() - waiting.len();
            let n = self.receive(|| format!("the kernel answered {answered} of {} requests", messages.acked().len()))?;
            for (seq, errno) in acks(&self.buf[..n]) {
                if errno != 0 {
                    return Err(io::Error::from_raw_os_error(errno));
                }
                waiting.retain(|s| *s != seq);
            }
        }
        Ok(())
    }

    /// Sends a dump request and hands `each` the payload (after the
    /// netfilter header) of every message of the answer, until its end.
    pub fn dump(&mut self, request: &Messages, mut each: impl FnMut(&[u8]) -> Result<(), String>) -> io::Result<()> {
        self.send(request)?;
        let seq = request.next_seq.wrapping_sub(1);
        let mut failed = None;
        loop {
            // The kernel fills the next part of a dump while it is read.
            let n = self.receive(|| "the kernel stopped answering a dump".to_string())?;
            let mut rest = &self.buf[..n];
            while rest.len() >= 16 {
                let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
                let kind = u16::from_ne_bytes([rest[4], rest[5]]);
                let s = u32::from_ne_bytes(rest[8..12].try_into().expect("4 bytes"));
                if len < 16 || len > rest.len() {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "a truncated netlink message"));
                }
                if s == seq {
                    match kind {
                        NLMSG_DONE => return failed.map_or(Ok(()), |m| Err(io::Error::new(io::ErrorKind::InvalidData, m))),
                        NLMSG_ERROR => {
                            return match acks(&rest[..len]).first().map(|(_, e)| *e).unwrap_or(0) {
                                0 => Ok(()),
                                errno => Err(io::Error::from_raw_os_error(errno)),
                            };
                        }
                        _ if len >= 20 && failed.is_none() => failed = each(&rest[20..len]).err(),
                        _ => {}
                    }
                }
                rest = &rest[len.next_multiple_of(4).min(rest.len())..];
            }
        }
    }
}

#[cfg(test)]
#[path = "nfnetlink_tests.rs"]
mod tests;
