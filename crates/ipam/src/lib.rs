//! Pure IP address management for Tessera.
//!
//! This crate decides *which* address a container gets; it never stores
//! anything and performs no IO. It works for IPv4 and IPv6 subnets of any
//! size — a `/64` or even a `/8` IPv6 subnet — because addresses are handled
//! as `u128` offsets and a subnet is never enumerated.
//!
//! The pieces:
//!
//! * [`SubnetLayout`]: a validated description of a subnet (CIDR, optional
//!   gateway, allocation pools) that answers "may this address be handed
//!   out?" ([`SubnetLayout::is_allocatable`]) and "which address is next?"
//!   ([`SubnetLayout::next_free`]) given the currently allocated addresses.
//! * [`Allocator`]: an in-memory allocator for one subnet keyed by owner, for
//!   tests and for callers that keep their state in memory.
//! * [`sort_key`] / [`parse_sort_key`], [`addr_to_u128`] / [`u128_to_addr`]:
//!   helpers for callers that keep allocations in a sorted key-value store.
//!
//! # Allocation policy: lowest free
//!
//! The next address handed out is always the *lowest* allocatable address
//! that is not currently allocated. After a release the freed address is
//! therefore the first to be reused, which keeps allocations dense and makes
//! results deterministic (the same state always yields the same address).
//!
//! # Reserved addresses
//!
//! Never handed out (see [`SubnetLayout::reserved`]):
//!
//! * IPv4: the network and broadcast addresses, except in `/31` and `/32`
//!   subnets where every address is usable (RFC 3021);
//! * IPv6: the subnet-router anycast address (all-zeros host part), except in
//!   `/127` and `/128` subnets (RFC 6164);
//! * the gateway, if the layout has one.
#![forbid(unsafe_code)]

mod addr;
mod allocator;
mod error;
mod layout;
mod range;

pub use addr::{addr_to_u128, parse_sort_key, sort_key, u128_to_addr};
pub use allocator::Allocator;
pub use error::IpamError;
pub use layout::{default_gateway, SubnetLayout};
pub use range::Range;
