//! Subnet layouts: which addresses of a subnet may be handed out, and which one
//! is next.
//!
//! A [`SubnetLayout`] is a CIDR, an optional gateway and a set of
//! non-overlapping allocation pools ([`Range`]s). Nothing here enumerates a
//! subnet: every operation costs at most O(number of pools + number of
//! allocated addresses given), whatever the subnet size.

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::addr::{addr_to_u128, u128_to_addr};
use crate::error::IpamError;
use crate::range::Range;

const NETWORK_ADDRESS: &str = "network address";
const BROADCAST_ADDRESS: &str = "broadcast address";
const SUBNET_ROUTER_ANYCAST: &str = "subnet-router anycast address";
const GATEWAY: &str = "gateway";

impl FromStr for Range {
    type Err = IpamError;

    /// Parses `"<start>-<end>"`; whitespace around either address is allowed.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let invalid = || IpamError::InvalidRange { input: input.to_owned() };
        let (start, end) = input.split_once('-').ok_or_else(invalid)?;
        let start = start.trim().parse().map_err(|_| invalid())?;
        let end = end.trim().parse().map_err(|_| invalid())?;
        Ok(Range { start, end })
    }
}

/// A validated layout for one subnet: its CIDR, its gateway and the pools that
/// addresses are handed out from.
///
/// Build it with [`SubnetLayout::new`] (deserialisation validates the same
/// way). The fields are public for reading; a layout assembled by hand is never
/// a cause of panics, but only a validated layout gets the documented
/// guarantees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SubnetLayoutSpec")]
pub struct SubnetLayout {
    /// The subnet, without host bits.
    pub cidr: IpNet,
    /// The gateway, if any; it is reserved and never handed out.
    pub gateway: Option<IpAddr>,
    /// The allocation pools, sorted by start and non-overlapping. Never empty
    /// for a validated layout: no pools given means the whole usable subnet.
    pub pools: Vec<Range>,
}

/// The unvalidated shape of a [`SubnetLayout`], as found in serialised form.
#[derive(Deserialize)]
struct SubnetLayoutSpec {
    cidr: IpNet,
    #[serde(default)]
    gateway: Option<IpAddr>,
    #[serde(default)]
    pools: Vec<Range>,
}

impl TryFrom<SubnetLayoutSpec> for SubnetLayout {
    type Error = IpamError;

    fn try_from(spec: SubnetLayoutSpec) -> Result<Self, Self::Error> {
        SubnetLayout::new(spec.cidr, spec.gateway, spec.pools)
    }
}

/// The default gateway of `cidr`: its first usable address (network + 1).
///
/// `None` for IPv4 `/31` and `/32` and IPv6 `/127` and `/128`, where every
/// address is a host address and there is no room for a gateway.
pub fn default_gateway(cidr: IpNet) -> Option<IpAddr> {
    let subnet = Subnet::of(cidr);
    if subnet.has_network_reserved() {
        Some(subnet.addr(subnet.network + 1))
    } else {
        None
    }
}

impl SubnetLayout {
    /// Validates and builds a layout.
    ///
    /// * `cidr` must have no host bits set ([`IpamError::HostBitsSet`]).
    /// * `gateway`, if given, must be of the subnet's family
    ///   ([`IpamError::FamilyMismatch`]), inside the subnet
    ///   ([`IpamError::GatewayOutsideSubnet`]) and not the IPv4 network or
    ///   broadcast address nor the IPv6 subnet-router anycast address
    ///   ([`IpamError::GatewayReserved`]). It need not lie in a pool.
    /// * every pool must have both bounds of the subnet's family
    ///   ([`IpamError::FamilyMismatch`]), start no later than it ends
    ///   ([`IpamError::PoolReversed`]), lie inside the subnet
    ///   ([`IpamError::PoolOutsideSubnet`]) and share no address with another
    ///   pool ([`IpamError::PoolsOverlap`]). A pool may include reserved
    ///   addresses; they are simply never handed out.
    ///
    /// No pools means one pool covering the whole usable subnet (everything
    /// but the network/broadcast or subnet-router anycast address). Pools are
    /// stored sorted by start.
    pub fn new(cidr: IpNet, gateway: Option<IpAddr>, pools: Vec<Range>) -> Result<Self, IpamError> {
        if cidr.trunc() != cidr {
            return Err(IpamError::HostBitsSet { cidr });
        }
        let subnet = Subnet::of(cidr);

        if let Some(gateway) = gateway {
            if gateway.is_ipv6() != subnet.v6 {
                return Err(IpamError::FamilyMismatch { addr: gateway, cidr });
            }
            if !subnet.contains(gateway) {
                return Err(IpamError::GatewayOutsideSubnet { gateway, cidr });
            }
            if let Some(reason) = subnet.reserved_reason(addr_to_u128(gateway)) {
                return Err(IpamError::GatewayReserved { gateway, cidr, reason });
            }
        }

        let pools = if pools.is_empty() { vec![subnet.usable_range()] } else { validate_pools(&subnet, pools)? };

        Ok(SubnetLayout { cidr, gateway, pools })
    }

    /// The addresses that are never handed out, in ascending order: the IPv4
    /// network and broadcast addresses (none for `/31` and `/32`, RFC 3021),
    /// the IPv6 subnet-router anycast address, i.e. the all-zeros host part
    /// (none for `/127` and `/128`), and the gateway if any.
    pub fn reserved(&self) -> Vec<IpAddr> {
        let subnet = Subnet::of(self.cidr);
        self.reserved_offsets(&subnet).into_iter().map(|value| subnet.addr(value)).collect()
    }

    /// Whether `addr` may be handed out: `Ok(())` if it is of the subnet's
    /// family, inside the subnet, not reserved and inside a pool.
    ///
    /// Otherwise the error says which check failed, in that order:
    /// [`IpamError::FamilyMismatch`], [`IpamError::OutsideSubnet`],
    /// [`IpamError::Reserved`] (with the reason), [`IpamError::OutsidePools`].
    /// Whether the address is currently in use is not this layout's concern.
    pub fn is_allocatable(&self, addr: IpAddr) -> Result<(), IpamError> {
        let cidr = self.cidr;
        let subnet = Subnet::of(cidr);
        if addr.is_ipv6() != subnet.v6 {
            return Err(IpamError::FamilyMismatch { addr, cidr });
        }
        if !subnet.contains(addr) {
            return Err(IpamError::OutsideSubnet { addr, cidr });
        }
        if let Some(reason) = self.reserved_reason(&subnet, addr_to_u128(addr)) {
            return Err(IpamError::Reserved { addr, reason });
        }
        if !self.pools.iter().any(|pool| pool.contains(addr)) {
            return Err(IpamError::OutsidePools { addr, cidr });
        }
        Ok(())
    }

    /// The next address to hand out: the lowest allocatable address that is
    /// not in `allocated` (lowest-free policy).
    ///
    /// `allocated` must yield the currently allocated addresses of this subnet
    /// in ascending order; duplicates and addresses outside the pools or of
    /// the other family are ignored. If it is not ascending the answer may be
    /// an allocated address, but nothing panics.
    ///
    /// Runs in O(len(allocated) + number of pools), never O(subnet size).
    /// Returns [`IpamError::Exhausted`] when every allocatable address is
    /// taken.
    pub fn next_free<I: IntoIterator<Item = IpAddr>>(&self, allocated: I) -> Result<IpAddr, IpamError> {
        let subnet = Subnet::of(self.cidr);
        let allocated = allocated.into_iter().filter(|addr| addr.is_ipv6() == subnet.v6).map(addr_to_u128);
        self.lowest_free_from(&subnet, 0, allocated).map(|value| subnet.addr(value)).ok_or_else(|| self.exhausted())
    }

    /// Number of allocatable addresses (pool addresses that are not
    /// reserved), saturating at `u128::MAX`.
    pub fn capacity(&self) -> u128 {
        let subnet = Subnet::of(self.cidr);
        let reserved = self.reserved_offsets(&subnet);
        self.spans(&subnet)
            .into_iter()
            .map(|(start, end)| {
                let reserved_inside = reserved.iter().filter(|&&r| start <= r && r <= end).count() as u128;
                // The span holds (end - start) + 1 addresses; the reserved
                // ones inside it are distinct, so at most that many.
                match reserved_inside.checked_sub(1) {
                    Some(extra) => (end - start).saturating_sub(extra),
                    None => (end - start).saturating_add(1),
                }
            })
            .fold(0u128, u128::saturating_add)
    }

    /// The error for a layout with no free address left.
    pub(crate) fn exhausted(&self) -> IpamError {
        IpamError::Exhausted { cidr: self.cidr, capacity: self.capacity() }
    }

    /// Whether this layout hands out IPv6 addresses.
    pub(crate) fn is_ipv6(&self) -> bool {
        Subnet::of(self.cidr).v6
    }

    /// The lowest allocatable value `>= from` that `allocated` does not
    /// yield. `allocated` yields values of this layout's family, ascending.
    pub(crate) fn lowest_free_from(&self, subnet: &Subnet, from: u128, allocated: impl Iterator<Item = u128>) -> Option<u128> {
        let reserved = self.reserved_offsets(subnet);
        let mut allocated = allocated.peekable();
        for (start, end) in self.spans(subnet) {
            if end < from {
                continue;
            }
            let mut candidate = start.max(from);
            loop {
                while allocated.next_if(|&taken| taken < candidate).is_some() {}
                let taken = allocated.peek() == Some(&candidate) || reserved.contains(&candidate);
                if !taken {
                    return Some(candidate);
                }
                if candidate == end {
                    break;
                }
                candidate += 1;
            }
        }
        None
    }

    /// The pools as `(start, end)` values, clipped to the subnet, sorted and
    /// merged; pools of the wrong family are dropped. For a validated layout
    /// this is exactly `pools`, already sorted, so it costs O(pools).
    fn spans(&self, subnet: &Subnet) -> Vec<(u128, u128)> {
        let mut spans: Vec<(u128, u128)> = self
            .pools
            .iter()
            .filter(|pool| pool.start.is_ipv6() == subnet.v6 && pool.end.is_ipv6() == subnet.v6)
            .map(|pool| (addr_to_u128(pool.start).max(subnet.network), addr_to_u128(pool.end).min(subnet.last)))
            .filter(|(start, end)| start <= end)
            .collect();
        spans.sort_unstable();
        let mut merged: Vec<(u128, u128)> = Vec::with_capacity(spans.len());
        for (start, end) in spans {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        merged
    }

    /// The reserved values of this layout, ascending and without duplicates.
    fn reserved_offsets(&self, subnet: &Subnet) -> Vec<u128> {
        let mut reserved = subnet.reserved_offsets();
        if let Some(gateway) = self.gateway_offset(subnet) {
            reserved.push(gateway);
        }
        reserved.sort_unstable();
        reserved.dedup();
        reserved
    }

    /// Why `value` is reserved in this layout, if it is.
    fn reserved_reason(&self, subnet: &Subnet, value: u128) -> Option<&'static str> {
        subnet.reserved_reason(value).or_else(|| (self.gateway_offset(subnet) == Some(value)).then_some(GATEWAY))
    }

    /// The gateway as a value, if it exists and is of the subnet's family.
    fn gateway_offset(&self, subnet: &Subnet) -> Option<u128> {
        self.gateway.filter(|gateway| gateway.is_ipv6() == subnet.v6).map(addr_to_u128)
    }
}

/// Checks pools against `subnet` and each other; returns them sorted by start.
fn validate_pools(subnet: &Subnet, mut pools: Vec<Range>) -> Result<Vec<Range>, IpamError> {
    let cidr = subnet.cidr;
    for &pool in &pools {
        for bound in [pool.start, pool.end] {
            if bound.is_ipv6() != subnet.v6 {
                return Err(IpamError::FamilyMismatch { addr: bound, cidr });
            }
        }
        if addr_to_u128(pool.start) > addr_to_u128(pool.end) {
            return Err(IpamError::PoolReversed { pool });
        }
        if !subnet.contains(pool.start) || !subnet.contains(pool.end) {
            return Err(IpamError::PoolOutsideSubnet { pool, cidr });
        }
    }
    pools.sort_by_key(|pool| addr_to_u128(pool.start));
    // Sorted by start, any overlap shows up between neighbours.
    for pair in pools.windows(2) {
        if let [first, second] = pair {
            if addr_to_u128(second.start) <= addr_to_u128(first.end) {
                return Err(IpamError::PoolsOverlap { first: *first, second: *second });
            }
        }
    }
    Ok(pools)
}

/// A subnet as numbers: its family, first and last address.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Subnet {
    cidr: IpNet,
    v6: bool,
    prefix_len: u8,
    /// The first address (network address) as a value.
    network: u128,
    /// The last address (IPv4 broadcast) as a value.
    last: u128,
}

impl Subnet {
    /// The numeric view of `cidr`; host bits, if any, are ignored.
    pub(crate) fn of(cidr: IpNet) -> Self {
        let v6 = matches!(cidr, IpNet::V6(_));
        Subnet {
            cidr,
            v6,
            prefix_len: cidr.prefix_len(),
            network: addr_to_u128(cidr.network()),
            last: addr_to_u128(cidr.broadcast()),
        }
    }

    /// The address with value `value` in this subnet's family.
    pub(crate) fn addr(&self, value: u128) -> IpAddr {
        u128_to_addr(value, self.v6)
    }

    /// Whether `addr` is of this family and between network and last address.
    fn contains(&self, addr: IpAddr) -> bool {
        addr.is_ipv6() == self.v6 && (self.network..=self.last).contains(&addr_to_u128(addr))
    }

    /// Whether the first address is reserved (network address or
    /// subnet-router anycast). False only for IPv4 /31, /32 and IPv6 /127,
    /// /128, where every address is a host address.
    fn has_network_reserved(&self) -> bool {
        let address_bits: u8 = if self.v6 { 128 } else { 32 };
        address_bits.saturating_sub(self.prefix_len) >= 2
    }

    /// Whether the last address is reserved (IPv4 broadcast).
    fn has_broadcast_reserved(&self) -> bool {
        !self.v6 && self.has_network_reserved()
    }

    /// Why `value` is reserved by the subnet itself (the gateway aside).
    fn reserved_reason(&self, value: u128) -> Option<&'static str> {
        if self.has_network_reserved() && value == self.network {
            Some(if self.v6 { SUBNET_ROUTER_ANYCAST } else { NETWORK_ADDRESS })
        } else if self.has_broadcast_reserved() && value == self.last {
            Some(BROADCAST_ADDRESS)
        } else {
            None
        }
    }

    /// The values reserved by the subnet itself, ascending.
    fn reserved_offsets(&self) -> Vec<u128> {
        let mut reserved = Vec::with_capacity(3);
        if self.has_network_reserved() {
            reserved.push(self.network);
        }
        if self.has_broadcast_reserved() {
            reserved.push(self.last);
        }
        reserved
    }

    /// The whole subnet minus the addresses the subnet itself reserves.
    fn usable_range(&self) -> Range {
        let start = if self.has_network_reserved() { self.network + 1 } else { self.network };
        let end = if self.has_broadcast_reserved() { self.last - 1 } else { self.last };
        Range::new(self.addr(start), self.addr(end))
    }
}
