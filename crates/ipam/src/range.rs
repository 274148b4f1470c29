//! Inclusive ranges of addresses, the allocation pools of a subnet layout.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::addr::addr_to_u128;

/// An inclusive range of addresses `start..=end` of one IP family.
///
/// Displays and parses as `"<start>-<end>"`, e.g. `10.0.0.10-10.0.0.20` or
/// `fd00::10-fd00::ff`. A range on its own is not validated; a
/// [`crate::SubnetLayout`] validates its pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Range {
    /// First address of the range.
    pub start: IpAddr,
    /// Last address of the range (inclusive).
    pub end: IpAddr,
}

impl Range {
    /// The range `start..=end`.
    pub fn new(start: IpAddr, end: IpAddr) -> Self {
        Range { start, end }
    }

    /// Whether `addr` lies in `start..=end` and is of the range's family.
    pub fn contains(&self, addr: IpAddr) -> bool {
        same_family(addr, self.start)
            && same_family(addr, self.end)
            && addr_to_u128(self.start) <= addr_to_u128(addr)
            && addr_to_u128(addr) <= addr_to_u128(self.end)
    }
}

/// Whether `a` and `b` are of the same IP family.
pub(crate) fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv6() == b.is_ipv6()
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}
