//! The errors of IP address management.
//!
//! Every variant carries the offending value (address, range or subnet) so
//! that the message alone tells a user what to fix.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::range::Range;

/// Why a subnet layout was rejected or an address could not be handed out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// The subnet CIDR has bits set in its host part (e.g. `10.0.0.1/24`).
    #[error("subnet {cidr} has host bits set; did you mean {}?", cidr.trunc())]
    HostBitsSet {
        /// The CIDR as given.
        cidr: IpNet,
    },

    /// The gateway is not inside the subnet.
    #[error("gateway {gateway} is outside subnet {cidr}")]
    GatewayOutsideSubnet {
        /// The rejected gateway.
        gateway: IpAddr,
        /// The subnet it should belong to.
        cidr: IpNet,
    },

    /// The gateway is an address that can never be assigned to a host, such
    /// as the IPv4 network or broadcast address.
    #[error("gateway {gateway} cannot be used: it is the {reason} of subnet {cidr}")]
    GatewayReserved {
        /// The rejected gateway.
        gateway: IpAddr,
        /// The subnet.
        cidr: IpNet,
        /// What the address is, e.g. `"broadcast address"`.
        reason: &'static str,
    },

    /// An allocation pool reaches outside the subnet.
    #[error("pool {pool} is not entirely inside subnet {cidr}")]
    PoolOutsideSubnet {
        /// The rejected pool.
        pool: Range,
        /// The subnet.
        cidr: IpNet,
    },

    /// An allocation pool ends before it starts.
    #[error("pool {pool} is reversed: its start is after its end")]
    PoolReversed {
        /// The rejected pool.
        pool: Range,
    },

    /// Two allocation pools share at least one address.
    #[error("pools {first} and {second} overlap")]
    PoolsOverlap {
        /// The pool that starts first.
        first: Range,
        /// The pool that starts inside `first`.
        second: Range,
    },

    /// An address (a gateway, a pool bound or a requested address) is not of
    /// the subnet's IP family.
    #[error("address {addr} is not of the same IP family as subnet {cidr}")]
    FamilyMismatch {
        /// The address of the wrong family.
        addr: IpAddr,
        /// The subnet.
        cidr: IpNet,
    },

    /// A requested address is not inside the subnet.
    #[error("address {addr} is outside subnet {cidr}")]
    OutsideSubnet {
        /// The requested address.
        addr: IpAddr,
        /// The subnet.
        cidr: IpNet,
    },

    /// A requested address is inside the subnet but in none of its pools.
    #[error("address {addr} is inside subnet {cidr} but outside its allocation pools")]
    OutsidePools {
        /// The requested address.
        addr: IpAddr,
        /// The subnet.
        cidr: IpNet,
    },

    /// A requested address is reserved and never handed out.
    #[error("address {addr} is reserved: it is the {reason}")]
    Reserved {
        /// The requested address.
        addr: IpAddr,
        /// What the address is, e.g. `"gateway"` or `"network address"`.
        reason: &'static str,
    },

    /// A requested address is already held by another owner.
    #[error("address {addr} is already in use by another owner")]
    InUse {
        /// The requested address.
        addr: IpAddr,
    },

    /// Every allocatable address of the subnet is in use.
    #[error("subnet {cidr} is exhausted: all {capacity} allocatable addresses are in use")]
    Exhausted {
        /// The exhausted subnet.
        cidr: IpNet,
        /// How many addresses the subnet can hand out in total.
        capacity: u128,
    },

    /// A range could not be parsed from text.
    #[error("invalid address range {input:?}: expected \"<first>-<last>\", e.g. \"10.0.0.10-10.0.0.20\"")]
    InvalidRange {
        /// The text as given.
        input: String,
    },
}
