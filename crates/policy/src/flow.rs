//! Flows and flow boxes: the values rules are compiled to.
//!
//! A [`FlowBox`] is the set of flows whose source address, destination
//! address, IP protocol, source port and destination port each lie in an
//! inclusive range: exactly one element of an nftables concatenated interval
//! map `ADDR . ADDR . inet_proto . inet_service . inet_service`. Addresses are
//! kept as `u128` (an IPv4 address in its low 32 bits) beside their
//! [`Family`], so that overlap and containment are integer comparisons.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// An IP address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    pub fn of(addr: IpAddr) -> Family {
        if addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    /// The largest address of the family, as a `u128`.
    pub fn max(self) -> u128 {
        match self {
            Family::V4 => u128::from(u32::MAX),
            Family::V6 => u128::MAX,
        }
    }

    /// The address `v` of this family (`v` must fit).
    pub fn addr(self, v: u128) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(Ipv4Addr::from(v as u32)),
            Family::V6 => IpAddr::V6(Ipv6Addr::from(v)),
        }
    }

    /// Bits in an address of the family.
    pub fn bits(self) -> u32 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

/// An address as a `u128` (IPv4 in the low 32 bits).
pub fn addr_bits(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The inclusive address range of a prefix.
pub fn net_range(n: &IpNet) -> (u128, u128) {
    let n = n.trunc();
    (addr_bits(n.network()), addr_bits(n.broadcast()))
}

/// One concrete flow (the original direction of a connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    /// 0 for protocols without ports.
    pub sport: u16,
    pub dport: u16,
}

/// A box of flows of one family: inclusive ranges on five fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FlowBox {
    pub family: Family,
    pub src: (u128, u128),
    pub dst: (u128, u128),
    pub proto: (u8, u8),
    pub sport: (u16, u16),
    pub dport: (u16, u16),
}

fn overlap<T: Ord>(a: &(T, T), b: &(T, T)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

fn within<T: Ord>(inner: &(T, T), outer: &(T, T)) -> bool {
    outer.0 <= inner.0 && inner.1 <= outer.1
}

impl FlowBox {
    /// Every flow of `family`.
    pub fn everything(family: Family) -> FlowBox {
        FlowBox {
            family,
            src: (0, family.max()),
            dst: (0, family.max()),
            proto: (0, u8::MAX),
            sport: (0, u16::MAX),
            dport: (0, u16::MAX),
        }
    }

    /// Whether some flow is in both boxes.
    pub fn overlaps(&self, o: &FlowBox) -> bool {
        self.family == o.family
            && overlap(&self.src, &o.src)
            && overlap(&self.dst, &o.dst)
            && overlap(&self.proto, &o.proto)
            && overlap(&self.sport, &o.sport)
            && overlap(&self.dport, &o.dport)
    }

    /// Whether every flow of `self` is in `outer`.
    pub fn within(&self, outer: &FlowBox) -> bool {
        self.family == outer.family
            && within(&self.src, &outer.src)
            && within(&self.dst, &outer.dst)
            && within(&self.proto, &outer.proto)
            && within(&self.sport, &outer.sport)
            && within(&self.dport, &outer.dport)
    }

    /// Whether `flow` is in the box.
    pub fn contains(&self, flow: &Flow) -> bool {
        let (s, d) = (addr_bits(flow.src), addr_bits(flow.dst));
        Family::of(flow.src) == self.family
            && Family::of(flow.dst) == self.family
            && (self.src.0..=self.src.1).contains(&s)
            && (self.dst.0..=self.dst.1).contains(&d)
            && (self.proto.0..=self.proto.1).contains(&flow.proto)
            && (self.sport.0..=self.sport.1).contains(&flow.sport)
            && (self.dport.0..=self.dport.1).contains(&flow.dport)
    }

    /// The five ranges as `u128` pairs, in key order.
    pub fn dims(&self) -> [(u128, u128); 5] {
        [
            self.src,
            self.dst,
            (u128::from(self.proto.0), u128::from(self.proto.1)),
            (u128::from(self.sport.0), u128::from(self.sport.1)),
            (u128::from(self.dport.0), u128::from(self.dport.1)),
        ]
    }

    /// A stable 64-bit hash of the box, the same in every build and on
    /// every host (a multiply-xorshift mix of its fields).
    pub fn stable_hash(&self) -> u64 {
        let mut h = mix(0x243f_6a88_85a3_08d3, self.family as u64);
        for v in [self.src.0, self.src.1, self.dst.0, self.dst.1] {
            h = mix(mix(h, v as u64), (v >> 64) as u64);
        }
        let small = u64::from(self.proto.0)
            | u64::from(self.proto.1) << 8
            | u64::from(self.sport.0) << 16
            | u64::from(self.sport.1) << 32
            | u64::from(self.dport.0) << 48;
        mix(mix(h, small), u64::from(self.dport.1))
    }
}

/// One step of a stable 64-bit mixing hash.
pub fn mix(h: u64, v: u64) -> u64 {
    let x = (h ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^ (x >> 29)
}

/// Writes an address range the way nft does: `A`, `A/LEN` or `A-B`.
pub fn fmt_addr_range(f: &mut fmt::Formatter<'_>, family: Family, (lo, hi): (u128, u128)) -> fmt::Result {
    if lo == hi {
        return write!(f, "{}", family.addr(lo));
    }
    let span = hi - lo;
    // A prefix: the span is 2^k - 1 and lo is aligned to it.
    if span.checked_add(1).map_or(lo == 0, |n| n.is_power_of_two() && lo & span == 0) {
        let host_bits = 128 - span.leading_zeros();
        return write!(f, "{}/{}", family.addr(lo), family.bits() - host_bits);
    }
    write!(f, "{}-{}", family.addr(lo), family.addr(hi))
}

fn fmt_range<T: fmt::Display + PartialEq>(f: &mut fmt::Formatter<'_>, (lo, hi): (T, T)) -> fmt::Result {
    if lo == hi {
        write!(f, "{lo}")
    } else {
        write!(f, "{lo}-{hi}")
    }
}

impl fmt::Display for FlowBox {
    /// The box as an nft concatenated key: `SRC . DST . PROTO . SPORT . DPORT`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_addr_range(f, self.family, self.src)?;
        f.write_str(" . ")?;
        fmt_addr_range(f, self.family, self.dst)?;
        f.write_str(" . ")?;
        fmt_range(f, self.proto)?;
        f.write_str(" . ")?;
        fmt_range(f, self.sport)?;
        f.write_str(" . ")?;
        fmt_range(f, self.dport)
    }
}

/// FNV-1a, 64 bits: a stable hash for digests and names.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl Fnv {
    pub fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    pub fn byte(&mut self, b: u8) {
        self.0 ^= u64::from(b);
        self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
    }
    pub fn bytes(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.byte(*b);
        }
    }
    pub fn finish(&self) -> u64 {
        self.0
    }
}

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.bytes(bytes);
    }
}

impl Default for Fnv {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Show(FlowBox);
    impl fmt::Display for Show {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            self.0.fmt(f)
        }
    }

    #[test]
    fn boxes_print_as_nft_keys() {
        let mut b = FlowBox::everything(Family::V4);
        assert_eq!(Show(b).to_string(), "0.0.0.0/0 . 0.0.0.0/0 . 0-255 . 0-65535 . 0-65535");
        b.src = net_range(&"10.0.0.0/24".parse().unwrap());
        b.dst = (addr_bits("10.0.1.5".parse().unwrap()), addr_bits("10.0.1.9".parse().unwrap()));
        b.proto = (6, 6);
        b.dport = (80, 80);
        assert_eq!(Show(b).to_string(), "10.0.0.0/24 . 10.0.1.5-10.0.1.9 . 6 . 0-65535 . 80");
        let six = FlowBox::everything(Family::V6);
        assert_eq!(Show(six).to_string(), "::/0 . ::/0 . 0-255 . 0-65535 . 0-65535");
    }

    #[test]
    fn overlap_needs_every_field() {
        let a = FlowBox { dport: (80, 80), ..FlowBox::everything(Family::V4) };
        let b = FlowBox { dport: (81, 90), ..FlowBox::everything(Family::V4) };
        assert!(!a.overlaps(&b));
        assert!(a.overlaps(&FlowBox::everything(Family::V4)));
        assert!(!a.overlaps(&FlowBox::everything(Family::V6)));
        assert!(a.within(&FlowBox::everything(Family::V4)));
        assert!(!FlowBox::everything(Family::V4).within(&a));
    }
}
