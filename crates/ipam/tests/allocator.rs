//! Specification of the in-memory `Allocator`: lowest-free allocation,
//! idempotency, static requests, release and reuse, exhaustion.

use std::net::IpAddr;

use ipnet::IpNet;
use tessera_ipam::{addr_to_u128, default_gateway, u128_to_addr, Allocator, IpamError, Range, SubnetLayout};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address literal")
}

fn net(s: &str) -> IpNet {
    s.parse().expect("test CIDR literal")
}

/// An allocator for `cidr` with its default gateway and no explicit pools.
fn allocator<O: Ord + Clone>(cidr: &str) -> Allocator<O> {
    let cidr = net(cidr);
    Allocator::new(SubnetLayout::new(cidr, default_gateway(cidr), vec![]).expect("valid test plan"))
}

fn allocator_with_pools<O: Ord + Clone>(cidr: &str, pools: &[(&str, &str)]) -> Allocator<O> {
    let cidr = net(cidr);
    let pools = pools.iter().map(|(start, end)| Range::new(ip(start), ip(end))).collect();
    Allocator::new(SubnetLayout::new(cidr, default_gateway(cidr), pools).expect("valid test plan"))
}

// ---- dynamic allocation ----------------------------------------------------

#[test]
fn first_allocation_in_ipv4_24_is_dot_two_after_the_gateway() {
    let mut alloc = allocator("10.0.0.0/24");
    assert_eq!(alloc.allocate("a"), Ok(ip("10.0.0.2")));
}

#[test]
fn ipv4_24_hands_out_dot_two_to_dot_254_and_never_network_or_broadcast() {
    let mut alloc = allocator("10.0.0.0/24");
    let handed_out: Vec<IpAddr> = (0..253u32).map(|i| alloc.allocate(i).expect("capacity is 253")).collect();
    let expected: Vec<IpAddr> = (2..=254u8).map(|i| IpAddr::from([10, 0, 0, i])).collect();
    assert_eq!(handed_out, expected);
}

#[test]
fn ipv4_24_is_exhausted_after_253_allocations() {
    let mut alloc = allocator("10.0.0.0/24");
    for i in 0..253u32 {
        alloc.allocate(i).expect("capacity is 253");
    }
    assert_eq!(alloc.allocate(253), Err(IpamError::Exhausted { cidr: net("10.0.0.0/24"), capacity: 253 }));
}

#[test]
fn ipv4_30_has_room_for_exactly_one_host() {
    let mut alloc = allocator("10.0.0.0/30");
    assert_eq!(alloc.allocate("a"), Ok(ip("10.0.0.2")));
    assert_eq!(alloc.allocate("b"), Err(IpamError::Exhausted { cidr: net("10.0.0.0/30"), capacity: 1 }));
}

#[test]
fn ipv4_31_hands_out_both_addresses() {
    let mut alloc = allocator("10.0.0.0/31");
    assert_eq!(alloc.allocate("a"), Ok(ip("10.0.0.0")));
    assert_eq!(alloc.allocate("b"), Ok(ip("10.0.0.1")));
}

#[test]
fn ipv4_32_hands_out_its_one_address_once() {
    let mut alloc = allocator("10.9.9.9/32");
    assert_eq!(alloc.allocate("a"), Ok(ip("10.9.9.9")));
    assert!(matches!(alloc.allocate("b"), Err(IpamError::Exhausted { .. })));
}

#[test]
fn ipv6_64_allocates_many_addresses_without_materialising_the_subnet() {
    let mut alloc = allocator("fd00:1::/64");
    let network = addr_to_u128(ip("fd00:1::"));
    for i in 0..20_000u32 {
        let expected = u128_to_addr(network + 2 + u128::from(i), true);
        assert_eq!(alloc.allocate(i), Ok(expected));
    }
    assert_eq!(alloc.len(), 20_000);
}

#[test]
fn ipv6_127_hands_out_both_addresses() {
    let mut alloc = allocator("fd00::/127");
    assert_eq!(alloc.allocate("a"), Ok(ip("fd00::")));
    assert_eq!(alloc.allocate("b"), Ok(ip("fd00::1")));
    assert!(matches!(alloc.allocate("c"), Err(IpamError::Exhausted { .. })));
}

#[test]
fn ipv6_128_hands_out_its_one_address_once() {
    let mut alloc = allocator("fd00::9/128");
    assert_eq!(alloc.allocate("a"), Ok(ip("fd00::9")));
    assert!(matches!(alloc.allocate("b"), Err(IpamError::Exhausted { .. })));
}

#[test]
fn allocating_twice_for_the_same_owner_returns_the_same_address() {
    let mut alloc = allocator("10.0.0.0/24");
    let first = alloc.allocate("a");
    assert_eq!(alloc.allocate("a"), first);
    assert_eq!(alloc.len(), 1);
}

#[test]
fn allocating_for_an_owner_with_a_static_address_returns_that_address() {
    let mut alloc = allocator("10.0.0.0/24");
    alloc.allocate_static("a", ip("10.0.0.50")).expect("free address");
    assert_eq!(alloc.allocate("a"), Ok(ip("10.0.0.50")));
}

#[test]
fn a_retry_on_a_full_subnet_still_returns_the_held_address() {
    let mut alloc = allocator("10.0.0.0/30");
    alloc.allocate("a").expect("one address left");
    assert_eq!(alloc.allocate("a"), Ok(ip("10.0.0.2")));
}

#[test]
fn pools_restrict_dynamic_allocation() {
    let mut alloc = allocator_with_pools("10.0.0.0/24", &[("10.0.0.100", "10.0.0.101")]);
    assert_eq!(alloc.allocate("a"), Ok(ip("10.0.0.100")));
    assert_eq!(alloc.allocate("b"), Ok(ip("10.0.0.101")));
    assert_eq!(alloc.allocate("c"), Err(IpamError::Exhausted { cidr: net("10.0.0.0/24"), capacity: 2 }));
}

#[test]
fn allocation_continues_in_the_next_pool() {
    let mut alloc = allocator_with_pools("10.0.0.0/24", &[("10.0.0.200", "10.0.0.200"), ("10.0.0.10", "10.0.0.10")]);
    assert_eq!(alloc.allocate("a"), Ok(ip("10.0.0.10")));
    assert_eq!(alloc.allocate("b"), Ok(ip("10.0.0.200")));
}

#[test]
fn dynamic_allocation_skips_statically_taken_addresses() {
    let mut alloc = allocator("10.0.0.0/24");
    alloc.allocate_static("s", ip("10.0.0.2")).expect("free address");
    assert_eq!(alloc.allocate("a"), Ok(ip("10.0.0.3")));
}

// ---- static allocation -----------------------------------------------------

#[test]
fn a_free_static_address_is_granted() {
    let mut alloc = allocator("10.0.0.0/24");
    assert_eq!(alloc.allocate_static("a", ip("10.0.0.42")), Ok(ip("10.0.0.42")));
    assert_eq!(alloc.owner_of(ip("10.0.0.42")), Some(&"a"));
}

#[test]
fn a_static_address_held_by_another_owner_is_in_use() {
    let mut alloc = allocator("10.0.0.0/24");
    alloc.allocate_static("a", ip("10.0.0.42")).expect("free address");
    assert_eq!(alloc.allocate_static("b", ip("10.0.0.42")), Err(IpamError::InUse { addr: ip("10.0.0.42") }));
}

#[test]
fn a_static_request_for_an_address_the_owner_holds_is_idempotent() {
    let mut alloc = allocator("10.0.0.0/24");
    alloc.allocate_static("a", ip("10.0.0.42")).expect("free address");
    assert_eq!(alloc.allocate_static("a", ip("10.0.0.42")), Ok(ip("10.0.0.42")));
    assert_eq!(alloc.len(), 1);
}

#[test]
fn a_static_request_for_the_gateway_is_refused_as_reserved() {
    let mut alloc = allocator("10.0.0.0/24");
    assert_eq!(alloc.allocate_static("a", ip("10.0.0.1")), Err(IpamError::Reserved { addr: ip("10.0.0.1"), reason: "gateway" }));
}

#[test]
fn a_static_request_for_the_network_address_is_refused_as_reserved() {
    let mut alloc = allocator("10.0.0.0/24");
    assert_eq!(
        alloc.allocate_static("a", ip("10.0.0.0")),
        Err(IpamError::Reserved { addr: ip("10.0.0.0"), reason: "network address" })
    );
}

#[test]
fn a_static_request_outside_the_subnet_is_refused() {
    let mut alloc = allocator("10.0.0.0/24");
    assert_eq!(
        alloc.allocate_static("a", ip("192.168.0.5")),
        Err(IpamError::OutsideSubnet { addr: ip("192.168.0.5"), cidr: net("10.0.0.0/24") })
    );
}

#[test]
fn a_static_request_outside_the_pools_is_refused() {
    let mut alloc = allocator_with_pools("10.0.0.0/24", &[("10.0.0.100", "10.0.0.199")]);
    assert_eq!(
        alloc.allocate_static("a", ip("10.0.0.5")),
        Err(IpamError::OutsidePools { addr: ip("10.0.0.5"), cidr: net("10.0.0.0/24") })
    );
}

#[test]
fn a_refused_static_request_allocates_nothing() {
    let mut alloc = allocator("10.0.0.0/24");
    let _ = alloc.allocate_static("a", ip("10.0.0.255"));
    assert!(alloc.is_empty());
}

#[test]
fn an_owner_may_hold_several_static_addresses() {
    let mut alloc = allocator("10.0.0.0/24");
    alloc.allocate_static("a", ip("10.0.0.20")).expect("free address");
    alloc.allocate_static("a", ip("10.0.0.10")).expect("free address");
    assert_eq!(alloc.addresses_of(&"a").collect::<Vec<_>>(), vec![ip("10.0.0.10"), ip("10.0.0.20")]);
}

// ---- release and reuse -----------------------------------------------------

#[test]
fn release_returns_the_owners_addresses() {
    let mut alloc = allocator("10.0.0.0/24");
    alloc.allocate("a").expect("free address");
    alloc.allocate_static("a", ip("10.0.0.9")).expect("free address");
    assert_eq!(alloc.release(&"a"), vec![ip("10.0.0.2"), ip("10.0.0.9")]);
    assert!(alloc.is_empty());
}

#[test]
fn releasing_an_owner_that_holds_nothing_is_fine() {
    let mut alloc = allocator("10.0.0.0/24");
    assert_eq!(alloc.release(&"nobody"), Vec::<IpAddr>::new());
}

#[test]
fn a_released_address_is_the_first_to_be_reused() {
    let mut alloc = allocator("10.0.0.0/24");
    for owner in ["a", "b", "c"] {
        alloc.allocate(owner).expect("free address");
    }
    alloc.release(&"b");
    assert_eq!(alloc.allocate("d"), Ok(ip("10.0.0.3")));
}

#[test]
fn the_lowest_of_several_released_addresses_is_reused_first() {
    let mut alloc = allocator("10.0.0.0/24");
    for owner in ["a", "b", "c", "d"] {
        alloc.allocate(owner).expect("free address");
    }
    alloc.release(&"d");
    alloc.release(&"b");
    assert_eq!(alloc.allocate("e"), Ok(ip("10.0.0.3")));
    assert_eq!(alloc.allocate("f"), Ok(ip("10.0.0.5")));
}

#[test]
fn a_released_address_is_free_for_another_owner() {
    let mut alloc = allocator("10.0.0.0/24");
    alloc.allocate_static("a", ip("10.0.0.42")).expect("free address");
    alloc.release(&"a");
    assert_eq!(alloc.allocate_static("b", ip("10.0.0.42")), Ok(ip("10.0.0.42")));
}

#[test]
fn release_makes_an_exhausted_subnet_usable_again() {
    let mut alloc = allocator("10.0.0.0/30");
    alloc.allocate("a").expect("one address left");
    alloc.release(&"a");
    assert_eq!(alloc.allocate("b"), Ok(ip("10.0.0.2")));
}

// ---- inspection ------------------------------------------------------------

#[test]
fn allocated_lists_addresses_in_ascending_order_with_owners() {
    let mut alloc = allocator("10.0.0.0/24");
    alloc.allocate_static("z", ip("10.0.0.30")).expect("free address");
    alloc.allocate("a").expect("free address");
    let listed: Vec<(IpAddr, &str)> = alloc.allocated().map(|(addr, owner)| (addr, *owner)).collect();
    assert_eq!(listed, vec![(ip("10.0.0.2"), "a"), (ip("10.0.0.30"), "z")]);
}

#[test]
fn owner_of_a_free_address_is_none() {
    let alloc: Allocator<&str> = allocator("10.0.0.0/24");
    assert_eq!(alloc.owner_of(ip("10.0.0.2")), None);
}
