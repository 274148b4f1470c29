//! Specification of `SubnetLayout`: validation, reserved addresses, default
//! gateways, capacity and the lowest-free `next_free` policy.

use std::net::IpAddr;

use ipnet::IpNet;
use tessera_ipam::{default_gateway, IpamError, Range, SubnetLayout};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address literal")
}

fn net(s: &str) -> IpNet {
    s.parse().expect("test CIDR literal")
}

fn range(start: &str, end: &str) -> Range {
    Range::new(ip(start), ip(end))
}

fn plan(cidr: &str, gateway: Option<&str>, pools: Vec<Range>) -> SubnetLayout {
    SubnetLayout::new(net(cidr), gateway.map(ip), pools).expect("valid test plan")
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| ip(s)).collect()
}

// ---- default gateway -------------------------------------------------------

#[test]
fn default_gateway_of_ipv4_24_is_network_plus_one() {
    assert_eq!(default_gateway(net("10.0.0.0/24")), Some(ip("10.0.0.1")));
}

#[test]
fn default_gateway_of_ipv4_30_is_network_plus_one() {
    assert_eq!(default_gateway(net("10.0.0.4/30")), Some(ip("10.0.0.5")));
}

#[test]
fn ipv4_31_has_no_default_gateway() {
    assert_eq!(default_gateway(net("10.0.0.0/31")), None);
}

#[test]
fn ipv4_32_has_no_default_gateway() {
    assert_eq!(default_gateway(net("10.0.0.7/32")), None);
}

#[test]
fn default_gateway_of_ipv6_64_is_network_plus_one() {
    assert_eq!(default_gateway(net("fd00:1::/64")), Some(ip("fd00:1::1")));
}

#[test]
fn ipv6_127_has_no_default_gateway() {
    assert_eq!(default_gateway(net("fd00::/127")), None);
}

#[test]
fn ipv6_128_has_no_default_gateway() {
    assert_eq!(default_gateway(net("fd00::5/128")), None);
}

// ---- reserved addresses ----------------------------------------------------

#[test]
fn ipv4_24_reserves_network_gateway_and_broadcast() {
    let plan = plan("10.0.0.0/24", Some("10.0.0.1"), vec![]);
    assert_eq!(plan.reserved(), ips(&["10.0.0.0", "10.0.0.1", "10.0.0.255"]));
}

#[test]
fn ipv4_31_reserves_nothing_without_gateway() {
    assert_eq!(plan("10.0.0.0/31", None, vec![]).reserved(), Vec::<IpAddr>::new());
}

#[test]
fn ipv4_32_reserves_nothing_without_gateway() {
    assert_eq!(plan("10.0.0.9/32", None, vec![]).reserved(), Vec::<IpAddr>::new());
}

#[test]
fn ipv6_64_reserves_only_subnet_router_anycast_and_gateway() {
    let plan = plan("fd00::/64", Some("fd00::1"), vec![]);
    assert_eq!(plan.reserved(), ips(&["fd00::", "fd00::1"]));
}

#[test]
fn ipv6_127_reserves_nothing_without_gateway() {
    assert_eq!(plan("fd00::/127", None, vec![]).reserved(), Vec::<IpAddr>::new());
}

#[test]
fn ipv6_does_not_reserve_the_all_ones_address() {
    let plan = plan("fd00::/120", None, vec![]);
    assert_eq!(plan.is_allocatable(ip("fd00::ff")), Ok(()));
}

// ---- capacity --------------------------------------------------------------

#[test]
fn ipv4_24_with_gateway_has_253_allocatable_addresses() {
    assert_eq!(plan("10.0.0.0/24", Some("10.0.0.1"), vec![]).capacity(), 253);
}

#[test]
fn ipv4_30_with_gateway_has_one_allocatable_address() {
    assert_eq!(plan("10.0.0.0/30", Some("10.0.0.1"), vec![]).capacity(), 1);
}

#[test]
fn ipv4_31_has_two_allocatable_addresses() {
    assert_eq!(plan("10.0.0.0/31", None, vec![]).capacity(), 2);
}

#[test]
fn ipv4_32_has_one_allocatable_address() {
    assert_eq!(plan("10.0.0.9/32", None, vec![]).capacity(), 1);
}

#[test]
fn ipv6_64_capacity_is_counted_without_enumeration() {
    let plan = plan("fd00::/64", Some("fd00::1"), vec![]);
    assert_eq!(plan.capacity(), (1u128 << 64) - 2);
}

#[test]
fn ipv6_slash_zero_capacity_is_all_but_the_anycast_address() {
    assert_eq!(plan("::/0", None, vec![]).capacity(), u128::MAX);
}

#[test]
fn capacity_counts_only_pool_addresses() {
    let plan = plan("10.0.0.0/24", Some("10.0.0.1"), vec![range("10.0.0.10", "10.0.0.19"), range("10.0.0.100", "10.0.0.100")]);
    assert_eq!(plan.capacity(), 11);
}

#[test]
fn capacity_excludes_reserved_addresses_inside_pools() {
    let plan = plan("10.0.0.0/24", Some("10.0.0.1"), vec![range("10.0.0.0", "10.0.0.255")]);
    assert_eq!(plan.capacity(), 253);
}

// ---- is_allocatable --------------------------------------------------------

#[test]
fn a_host_address_in_the_pool_is_allocatable() {
    let plan = plan("10.0.0.0/24", Some("10.0.0.1"), vec![]);
    assert_eq!(plan.is_allocatable(ip("10.0.0.77")), Ok(()));
}

#[test]
fn the_gateway_is_not_allocatable() {
    let plan = plan("10.0.0.0/24", Some("10.0.0.1"), vec![]);
    assert_eq!(plan.is_allocatable(ip("10.0.0.1")), Err(IpamError::Reserved { addr: ip("10.0.0.1"), reason: "gateway" }));
}

#[test]
fn the_network_address_is_not_allocatable() {
    let plan = plan("10.0.0.0/24", None, vec![]);
    assert_eq!(plan.is_allocatable(ip("10.0.0.0")), Err(IpamError::Reserved { addr: ip("10.0.0.0"), reason: "network address" }));
}

#[test]
fn the_broadcast_address_is_not_allocatable() {
    let plan = plan("10.0.0.0/24", None, vec![]);
    assert_eq!(
        plan.is_allocatable(ip("10.0.0.255")),
        Err(IpamError::Reserved { addr: ip("10.0.0.255"), reason: "broadcast address" })
    );
}

#[test]
fn the_ipv6_subnet_router_anycast_address_is_not_allocatable() {
    let plan = plan("fd00::/64", None, vec![]);
    assert_eq!(
        plan.is_allocatable(ip("fd00::")),
        Err(IpamError::Reserved { addr: ip("fd00::"), reason: "subnet-router anycast address" })
    );
}

#[test]
fn an_address_outside_the_subnet_is_not_allocatable() {
    let plan = plan("10.0.0.0/24", None, vec![]);
    assert_eq!(
        plan.is_allocatable(ip("10.0.1.5")),
        Err(IpamError::OutsideSubnet { addr: ip("10.0.1.5"), cidr: net("10.0.0.0/24") })
    );
}

#[test]
fn an_address_outside_the_pools_is_not_allocatable() {
    let plan = plan("10.0.0.0/24", None, vec![range("10.0.0.10", "10.0.0.20")]);
    assert_eq!(
        plan.is_allocatable(ip("10.0.0.21")),
        Err(IpamError::OutsidePools { addr: ip("10.0.0.21"), cidr: net("10.0.0.0/24") })
    );
}

#[test]
fn an_address_of_the_other_family_is_not_allocatable() {
    let plan = plan("10.0.0.0/24", None, vec![]);
    assert_eq!(
        plan.is_allocatable(ip("fd00::5")),
        Err(IpamError::FamilyMismatch { addr: ip("fd00::5"), cidr: net("10.0.0.0/24") })
    );
}

// ---- next_free -------------------------------------------------------------

#[test]
fn next_free_in_empty_ipv4_24_with_gateway_is_dot_two() {
    let plan = plan("10.0.0.0/24", Some("10.0.0.1"), vec![]);
    assert_eq!(plan.next_free([]), Ok(ip("10.0.0.2")));
}

#[test]
fn next_free_fills_the_lowest_gap() {
    let plan = plan("10.0.0.0/24", Some("10.0.0.1"), vec![]);
    let allocated = ips(&["10.0.0.2", "10.0.0.3", "10.0.0.5"]);
    assert_eq!(plan.next_free(allocated), Ok(ip("10.0.0.4")));
}

#[test]
fn next_free_skips_the_gateway_inside_a_pool() {
    let plan = plan("10.0.0.0/24", Some("10.0.0.11"), vec![range("10.0.0.10", "10.0.0.20")]);
    assert_eq!(plan.next_free(ips(&["10.0.0.10"])), Ok(ip("10.0.0.12")));
}

#[test]
fn next_free_moves_on_to_the_next_pool_when_one_is_full() {
    let plan = plan("10.0.0.0/24", None, vec![range("10.0.0.100", "10.0.0.101"), range("10.0.0.10", "10.0.0.11")]);
    let allocated = ips(&["10.0.0.10", "10.0.0.11"]);
    assert_eq!(plan.next_free(allocated), Ok(ip("10.0.0.100")));
}

#[test]
fn next_free_ignores_allocated_addresses_outside_the_pools() {
    let plan = plan("10.0.0.0/24", None, vec![range("10.0.0.10", "10.0.0.20")]);
    let allocated = ips(&["10.0.0.2", "10.0.0.3", "10.0.0.10"]);
    assert_eq!(plan.next_free(allocated), Ok(ip("10.0.0.11")));
}

#[test]
fn next_free_uses_both_addresses_of_an_ipv4_31() {
    let plan = plan("10.0.0.0/31", None, vec![]);
    assert_eq!(plan.next_free(ips(&["10.0.0.0"])), Ok(ip("10.0.0.1")));
}

#[test]
fn next_free_in_ipv4_32_is_its_one_address() {
    let plan = plan("192.168.7.7/32", None, vec![]);
    assert_eq!(plan.next_free([]), Ok(ip("192.168.7.7")));
}

#[test]
fn next_free_in_ipv6_128_is_its_one_address() {
    let plan = plan("fd00::7/128", None, vec![]);
    assert_eq!(plan.next_free([]), Ok(ip("fd00::7")));
}

#[test]
fn next_free_in_ipv6_127_starts_at_the_all_zeros_address() {
    let plan = plan("fd00::/127", None, vec![]);
    assert_eq!(plan.next_free([]), Ok(ip("fd00::")));
}

#[test]
fn next_free_in_an_ipv6_8_does_not_enumerate_the_subnet() {
    let plan = plan("fd00::/8", Some("fd00::1"), vec![]);
    assert_eq!(plan.next_free(ips(&["fd00::2"])), Ok(ip("fd00::3")));
}

#[test]
fn next_free_reaches_the_top_of_the_ipv6_address_space() {
    let plan = plan("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffc/126", None, vec![]);
    let allocated = ips(&["ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffd", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"]);
    assert_eq!(plan.next_free(allocated), Ok(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
}

#[test]
fn next_free_on_a_full_subnet_reports_exhaustion() {
    let plan = plan("10.0.0.0/30", Some("10.0.0.1"), vec![]);
    assert_eq!(plan.next_free(ips(&["10.0.0.2"])), Err(IpamError::Exhausted { cidr: net("10.0.0.0/30"), capacity: 1 }));
}

#[test]
fn exhaustion_message_names_the_subnet_and_its_capacity() {
    let plan = plan("10.0.0.0/30", Some("10.0.0.1"), vec![]);
    let error = plan.next_free(ips(&["10.0.0.2"])).expect_err("subnet is full");
    assert_eq!(error.to_string(), "subnet 10.0.0.0/30 is exhausted: all 1 allocatable addresses are in use");
}

// ---- validation ------------------------------------------------------------

#[test]
fn a_cidr_with_host_bits_set_is_rejected() {
    assert_eq!(SubnetLayout::new(net("10.0.0.1/24"), None, vec![]), Err(IpamError::HostBitsSet { cidr: net("10.0.0.1/24") }));
}

#[test]
fn host_bits_message_suggests_the_network() {
    let error = SubnetLayout::new(net("10.0.0.1/24"), None, vec![]).expect_err("host bits");
    assert_eq!(error.to_string(), "subnet 10.0.0.1/24 has host bits set; did you mean 10.0.0.0/24?");
}

#[test]
fn a_gateway_outside_the_subnet_is_rejected() {
    assert_eq!(
        SubnetLayout::new(net("10.0.0.0/24"), Some(ip("10.0.1.1")), vec![]),
        Err(IpamError::GatewayOutsideSubnet { gateway: ip("10.0.1.1"), cidr: net("10.0.0.0/24") })
    );
}

#[test]
fn a_gateway_on_the_network_address_is_rejected() {
    assert_eq!(
        SubnetLayout::new(net("10.0.0.0/24"), Some(ip("10.0.0.0")), vec![]),
        Err(IpamError::GatewayReserved { gateway: ip("10.0.0.0"), cidr: net("10.0.0.0/24"), reason: "network address" })
    );
}

#[test]
fn a_gateway_on_the_broadcast_address_is_rejected() {
    assert_eq!(
        SubnetLayout::new(net("10.0.0.0/24"), Some(ip("10.0.0.255")), vec![]),
        Err(IpamError::GatewayReserved { gateway: ip("10.0.0.255"), cidr: net("10.0.0.0/24"), reason: "broadcast address" })
    );
}

#[test]
fn a_gateway_of_the_other_family_is_rejected() {
    assert_eq!(
        SubnetLayout::new(net("10.0.0.0/24"), Some(ip("fd00::1")), vec![]),
        Err(IpamError::FamilyMismatch { addr: ip("fd00::1"), cidr: net("10.0.0.0/24") })
    );
}

#[test]
fn a_gateway_on_an_ipv4_31_is_accepted_and_reserved() {
    let plan = plan("10.0.0.0/31", Some("10.0.0.0"), vec![]);
    assert_eq!(plan.next_free([]), Ok(ip("10.0.0.1")));
}

#[test]
fn a_pool_outside_the_subnet_is_rejected() {
    let pool = range("10.0.0.250", "10.0.1.5");
    assert_eq!(
        SubnetLayout::new(net("10.0.0.0/24"), None, vec![pool]),
        Err(IpamError::PoolOutsideSubnet { pool, cidr: net("10.0.0.0/24") })
    );
}

#[test]
fn a_reversed_pool_is_rejected() {
    let pool = range("10.0.0.20", "10.0.0.10");
    assert_eq!(SubnetLayout::new(net("10.0.0.0/24"), None, vec![pool]), Err(IpamError::PoolReversed { pool }));
}

#[test]
fn a_pool_of_mixed_families_is_rejected() {
    let pool = range("10.0.0.10", "fd00::10");
    assert_eq!(
        SubnetLayout::new(net("10.0.0.0/24"), None, vec![pool]),
        Err(IpamError::FamilyMismatch { addr: ip("fd00::10"), cidr: net("10.0.0.0/24") })
    );
}

#[test]
fn overlapping_pools_are_rejected() {
    let first = range("10.0.0.10", "10.0.0.20");
    let second = range("10.0.0.20", "10.0.0.30");
    assert_eq!(SubnetLayout::new(net("10.0.0.0/24"), None, vec![second, first]), Err(IpamError::PoolsOverlap { first, second }));
}

#[test]
fn a_pool_nested_in_another_is_rejected_as_overlap() {
    let outer = range("10.0.0.10", "10.0.0.50");
    let inner = range("10.0.0.20", "10.0.0.30");
    assert!(matches!(SubnetLayout::new(net("10.0.0.0/24"), None, vec![outer, inner]), Err(IpamError::PoolsOverlap { .. })));
}

#[test]
fn adjacent_pools_are_accepted() {
    let plan = plan("10.0.0.0/24", None, vec![range("10.0.0.10", "10.0.0.19"), range("10.0.0.20", "10.0.0.29")]);
    assert_eq!(plan.capacity(), 20);
}

#[test]
fn no_pools_means_the_whole_usable_ipv4_subnet() {
    let plan = plan("10.0.0.0/24", Some("10.0.0.1"), vec![]);
    assert_eq!(plan.pools, vec![range("10.0.0.1", "10.0.0.254")]);
}

#[test]
fn no_pools_means_the_whole_ipv4_31() {
    assert_eq!(plan("10.0.0.0/31", None, vec![]).pools, vec![range("10.0.0.0", "10.0.0.1")]);
}

#[test]
fn no_pools_means_everything_but_the_anycast_address_in_ipv6() {
    let plan = plan("fd00::/120", None, vec![]);
    assert_eq!(plan.pools, vec![range("fd00::1", "fd00::ff")]);
}

#[test]
fn pools_are_stored_sorted_by_start() {
    let high = range("10.0.0.100", "10.0.0.110");
    let low = range("10.0.0.10", "10.0.0.20");
    assert_eq!(plan("10.0.0.0/24", None, vec![high, low]).pools, vec![low, high]);
}

// ---- ranges and serialisation ----------------------------------------------

#[test]
fn a_range_displays_as_start_dash_end() {
    assert_eq!(range("10.0.0.10", "10.0.0.20").to_string(), "10.0.0.10-10.0.0.20");
}

#[test]
fn a_range_parses_from_its_display_form() {
    assert_eq!("fd00::10-fd00::ff".parse(), Ok(range("fd00::10", "fd00::ff")));
}

#[test]
fn a_range_without_a_dash_does_not_parse() {
    assert_eq!("10.0.0.10".parse::<Range>(), Err(IpamError::InvalidRange { input: "10.0.0.10".to_owned() }));
}

#[test]
fn a_plan_round_trips_through_json() {
    let plan = plan("10.0.0.0/24", Some("10.0.0.1"), vec![range("10.0.0.10", "10.0.0.20")]);
    let json = serde_json::to_string(&plan).expect("serialise");
    assert_eq!(serde_json::from_str::<SubnetLayout>(&json).expect("deserialise"), plan);
}

#[test]
fn deserialising_a_plan_fills_in_the_default_pool() {
    let plan: SubnetLayout = serde_json::from_str(r#"{"cidr":"10.0.0.0/30"}"#).expect("deserialise");
    assert_eq!(plan.pools, vec![range("10.0.0.1", "10.0.0.2")]);
}

#[test]
fn deserialising_an_invalid_plan_fails() {
    let result = serde_json::from_str::<SubnetLayout>(r#"{"cidr":"10.0.0.1/24"}"#);
    assert!(result.is_err());
}
