//! Property tests: random IPv4 and IPv6 plans (edge prefix lengths included)
//! and random sequences of allocate / allocate_static / release, checked
//! against an independent model of the rules.
//!
//! Properties:
//! 1. no address is ever held by two owners (the allocator agrees with a
//!    model map address → owner at every step);
//! 2. every allocated address is inside the subnet, inside a pool and not
//!    reserved;
//! 3. `allocate` fails with `Exhausted` exactly when every allocatable
//!    address is taken;
//! 4. on small subnets, `next_free` equals the brute-force lowest free
//!    address, and `capacity` equals the brute-force count;
//! 5. `sort_key` order equals numeric order, and keys parse back.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::prelude::*;
use tessera_ipam::{
    addr_to_u128, default_gateway, parse_sort_key, sort_key, u128_to_addr, Allocator, IpamError, Range, SubnetLayout,
};

/// Largest subnet (in addresses) that the brute-force oracles walk.
const BRUTE_FORCE_LIMIT: u128 = 1 << 10;

type Owner = u8;

/// One step of a random scenario.
#[derive(Debug, Clone)]
enum Op {
    /// Dynamic allocation for an owner.
    Allocate(Owner),
    /// Static request for a random address inside the subnet.
    StaticInside(Owner, u128),
    /// Static request for an arbitrary address, usually outside the subnet.
    StaticAnywhere(Owner, u128),
    /// Static request for an edge address (network, last, gateway, pool
    /// bounds and their neighbours), picked by index.
    StaticEdge(Owner, usize),
    /// Static request for an already allocated address, picked by index.
    StaticHeld(Owner, usize),
    /// Release of every address of an owner.
    Release(Owner),
}

fn op() -> impl Strategy<Value = Op> {
    let owner = 0..6u8;
    prop_oneof![
        4 => owner.clone().prop_map(Op::Allocate),
        1 => (owner.clone(), any::<u128>()).prop_map(|(o, r)| Op::StaticInside(o, r)),
        1 => (owner.clone(), any::<u128>()).prop_map(|(o, r)| Op::StaticAnywhere(o, r)),
        1 => (owner.clone(), any::<usize>()).prop_map(|(o, i)| Op::StaticEdge(o, i)),
        1 => (owner.clone(), any::<usize>()).prop_map(|(o, i)| Op::StaticHeld(o, i)),
        2 => owner.prop_map(Op::Release),
    ]
}

/// A prefix length biased towards the edge sizes of a family with `bits`
/// address bits.
fn prefix_len(bits: u8, smallest_prefix: u8) -> impl Strategy<Value = u8> {
    prop_oneof![Just(bits), Just(bits - 1), Just(bits - 2), Just(bits - 3), smallest_prefix..=bits,]
}

/// A random subnet of either family. With `small`, at most
/// [`BRUTE_FORCE_LIMIT`] addresses; otherwise any size down to `/0`.
fn cidr(small: bool) -> impl Strategy<Value = IpNet> {
    let (v4_min, v6_min) = if small { (22, 118) } else { (0, 0) };
    let v4 = (any::<u32>(), prefix_len(32, v4_min))
        .prop_map(|(addr, len)| IpNet::V4(Ipv4Net::new(addr.into(), len).expect("prefix <= 32").trunc()));
    let v6 = (any::<u128>(), prefix_len(128, v6_min))
        .prop_map(|(addr, len)| IpNet::V6(Ipv6Net::new(addr.into(), len).expect("prefix <= 128").trunc()));
    prop_oneof![v4, v6]
}

/// Numeric facts about a subnet, computed independently of the crate.
#[derive(Debug, Clone, Copy)]
struct Facts {
    v6: bool,
    network: u128,
    last: u128,
    host_mask: u128,
    host_bits: u32,
}

impl Facts {
    fn of(cidr: IpNet) -> Self {
        let v6 = matches!(cidr, IpNet::V6(_));
        let bits = if v6 { 128 } else { 32 };
        let host_bits = bits - u32::from(cidr.prefix_len());
        let host_mask = if host_bits == 128 { u128::MAX } else { (1u128 << host_bits) - 1 };
        let network = addr_to_u128(cidr.network());
        Facts { v6, network, last: network | host_mask, host_mask, host_bits }
    }

    fn addr(&self, value: u128) -> IpAddr {
        u128_to_addr(value, self.v6)
    }

    fn inside(&self, offset: u128) -> IpAddr {
        self.addr(self.network | (offset & self.host_mask))
    }

    fn size(&self) -> Option<u128> {
        1u128.checked_shl(self.host_bits)
    }
}

/// The rules of the crate, restated directly: may `addr` be handed out?
fn oracle_allocatable(plan: &SubnetLayout, addr: IpAddr) -> bool {
    let facts = Facts::of(plan.cidr);
    if addr.is_ipv6() != facts.v6 {
        return false;
    }
    let value = addr_to_u128(addr);
    let in_subnet = facts.network <= value && value <= facts.last;
    let in_pool = plan
        .pools
        .iter()
        .any(|pool| pool.start.is_ipv6() == facts.v6 && addr_to_u128(pool.start) <= value && value <= addr_to_u128(pool.end));
    let network_reserved = facts.host_bits >= 2 && value == facts.network;
    let broadcast_reserved = !facts.v6 && facts.host_bits >= 2 && value == facts.last;
    let gateway = plan.gateway == Some(addr);
    in_subnet && in_pool && !network_reserved && !broadcast_reserved && !gateway
}

/// A random valid plan for a subnet from `cidrs`: no, default or random
/// gateway, and either no pools or up to four disjoint random pools.
fn plan(cidrs: impl Strategy<Value = IpNet>) -> impl Strategy<Value = SubnetLayout> {
    (cidrs, 0..3u8, any::<u128>(), prop::collection::vec(any::<u128>(), 0..8)).prop_map(
        |(cidr, gateway_kind, gateway_offset, pool_offsets)| {
            let facts = Facts::of(cidr);
            let gateway = match gateway_kind {
                0 => None,
                1 => default_gateway(cidr),
                _ => Some(facts.inside(gateway_offset)),
            };
            let mut bounds: Vec<u128> = pool_offsets.iter().map(|&o| facts.network | (o & facts.host_mask)).collect();
            bounds.sort_unstable();
            bounds.dedup();
            // Consecutive pairs of distinct sorted values are disjoint ranges.
            let pools: Vec<Range> = bounds
                .chunks(2)
                .map(|pair| {
                    let end = pair.get(1).copied().unwrap_or(pair[0]);
                    Range::new(facts.addr(pair[0]), facts.addr(end))
                })
                .collect();
            SubnetLayout::new(cidr, gateway, pools.clone())
                .or_else(|_| SubnetLayout::new(cidr, None, pools))
                .expect("generated pools are valid")
        },
    )
}

/// Edge addresses worth requesting statically.
fn edges(plan: &SubnetLayout) -> Vec<IpAddr> {
    let facts = Facts::of(plan.cidr);
    let mut values = vec![
        facts.network,
        facts.network.wrapping_sub(1),
        facts.network.wrapping_add(1),
        facts.last,
        facts.last.wrapping_add(1),
        facts.last.wrapping_sub(1),
    ];
    for pool in &plan.pools {
        let (start, end) = (addr_to_u128(pool.start), addr_to_u128(pool.end));
        values.extend([start, start.wrapping_sub(1), end, end.wrapping_add(1)]);
    }
    let mut addrs: Vec<IpAddr> = values.into_iter().map(|v| facts.addr(v)).collect();
    addrs.extend(plan.gateway);
    addrs
}

/// The lowest address the oracle allows that `model` does not hold, by
/// walking the whole (small) subnet.
fn brute_force_next_free(plan: &SubnetLayout, model: &BTreeMap<IpAddr, Owner>) -> Option<IpAddr> {
    let facts = Facts::of(plan.cidr);
    (facts.network..=facts.last).map(|v| facts.addr(v)).find(|&addr| oracle_allocatable(plan, addr) && !model.contains_key(&addr))
}

fn brute_force_capacity(plan: &SubnetLayout) -> u128 {
    let facts = Facts::of(plan.cidr);
    (facts.network..=facts.last).filter(|&v| oracle_allocatable(plan, facts.addr(v))).count() as u128
}

/// Runs `ops` against an allocator and a model, checking every property
/// after every step. With `brute_force`, also checks against whole-subnet
/// walks.
fn check_scenario(plan: SubnetLayout, ops: Vec<Op>, brute_force: bool) -> Result<(), TestCaseError> {
    let facts = Facts::of(plan.cidr);
    let mut alloc: Allocator<Owner> = Allocator::new(plan.clone());
    let mut model: BTreeMap<IpAddr, Owner> = BTreeMap::new();
    let capacity = plan.capacity();
    if brute_force {
        prop_assert_eq!(capacity, brute_force_capacity(&plan));
    }

    for op in ops {
        let held_by = |model: &BTreeMap<IpAddr, Owner>, owner: Owner| -> Vec<IpAddr> {
            model.iter().filter(|(_, o)| **o == owner).map(|(a, _)| *a).collect()
        };
        match op {
            Op::Allocate(owner) => {
                let held = held_by(&model, owner);
                let expected_next = plan.next_free(model.keys().copied());
                let result = alloc.allocate(owner);
                if let Some(&first) = held.first() {
                    // Idempotent: an owner holding an address gets it again.
                    prop_assert_eq!(result, Ok(first));
                } else {
                    // Property 3: exhausted exactly when everything is taken.
                    if model.len() as u128 == capacity {
                        prop_assert_eq!(result, Err(IpamError::Exhausted { cidr: plan.cidr, capacity }));
                    } else {
                        // Lowest-free policy, including after releases.
                        prop_assert_eq!(result.clone(), expected_next);
                        let addr = result.expect("not exhausted");
                        prop_assert!(!model.contains_key(&addr), "{} handed out twice", addr);
                        model.insert(addr, owner);
                    }
                }
            }
            Op::StaticInside(owner, _) | Op::StaticAnywhere(owner, _) | Op::StaticEdge(owner, _) | Op::StaticHeld(owner, _) => {
                let addr = match op {
                    Op::StaticInside(_, offset) => facts.inside(offset),
                    Op::StaticAnywhere(_, raw) => facts.addr(raw),
                    Op::StaticEdge(_, index) => {
                        let edges = edges(&plan);
                        edges[index % edges.len()]
                    }
                    Op::StaticHeld(_, index) => match model.keys().nth(index % model.len().max(1)) {
                        Some(&addr) => addr,
                        None => continue,
                    },
                    _ => unreachable!("outer match covers only static requests"),
                };
                let result = alloc.allocate_static(owner, addr);
                if !oracle_allocatable(&plan, addr) {
                    prop_assert!(result.is_err(), "{} granted but not allocatable", addr);
                    prop_assert!(
                        !matches!(result, Err(IpamError::InUse { .. } | IpamError::Exhausted { .. })),
                        "unexpected error {:?}",
                        result
                    );
                } else {
                    match model.get(&addr) {
                        Some(&holder) if holder != owner => {
                            prop_assert_eq!(result, Err(IpamError::InUse { addr }));
                        }
                        _ => {
                            prop_assert_eq!(result, Ok(addr));
                            model.insert(addr, owner);
                        }
                    }
                }
            }
            Op::Release(owner) => {
                let held = held_by(&model, owner);
                prop_assert_eq!(alloc.release(&owner), held.clone());
                for addr in held {
                    model.remove(&addr);
                }
            }
        }

        // Property 1: the allocator holds exactly the model's map, so no
        // address has two owners, and the owner index agrees with it.
        let actual: BTreeMap<IpAddr, Owner> = alloc.allocated().map(|(a, o)| (a, *o)).collect();
        prop_assert_eq!(&actual, &model);
        prop_assert_eq!(alloc.len(), model.len());
        for owner in 0..6u8 {
            let indexed: Vec<IpAddr> = alloc.addresses_of(&owner).collect();
            prop_assert_eq!(indexed, held_by(&model, owner));
        }
        // Property 2: every allocated address is allocatable.
        for &addr in model.keys() {
            prop_assert!(plan.cidr.contains(&addr), "{} outside {}", addr, plan.cidr);
            prop_assert!(oracle_allocatable(&plan, addr), "{} not allocatable", addr);
            prop_assert_eq!(plan.is_allocatable(addr), Ok(()));
        }
        // Property 4: next_free is the brute-force lowest free address.
        if brute_force {
            let expected = brute_force_next_free(&plan, &model).ok_or(IpamError::Exhausted { cidr: plan.cidr, capacity });
            prop_assert_eq!(plan.next_free(model.keys().copied()), expected);
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn random_operations_on_small_subnets_respect_every_property(
        plan in plan(cidr(true)),
        ops in prop::collection::vec(op(), 0..60),
    ) {
        let facts = Facts::of(plan.cidr);
        prop_assert!(facts.size().is_some_and(|size| size <= BRUTE_FORCE_LIMIT));
        check_scenario(plan, ops, true)?;
    }

    #[test]
    fn random_operations_on_subnets_of_any_size_respect_every_property(
        plan in plan(cidr(false)),
        ops in prop::collection::vec(op(), 0..60),
    ) {
        check_scenario(plan, ops, false)?;
    }

    #[test]
    fn is_allocatable_agrees_with_the_rules_for_any_address(
        plan in plan(cidr(false)),
        offset in any::<u128>(),
        raw in any::<u128>(),
    ) {
        let facts = Facts::of(plan.cidr);
        for addr in [facts.inside(offset), facts.addr(raw)] {
            prop_assert_eq!(plan.is_allocatable(addr).is_ok(), oracle_allocatable(&plan, addr));
        }
    }

    #[test]
    fn capacity_equals_the_brute_force_count_on_small_subnets(plan in plan(cidr(true))) {
        prop_assert_eq!(plan.capacity(), brute_force_capacity(&plan));
    }

    #[test]
    fn ipv4_sort_key_order_is_numeric_order(a in any::<u32>(), b in any::<u32>()) {
        let (a, b) = (u128_to_addr(a.into(), false), u128_to_addr(b.into(), false));
        prop_assert_eq!(sort_key(a).cmp(&sort_key(b)), addr_to_u128(a).cmp(&addr_to_u128(b)));
    }

    #[test]
    fn ipv6_sort_key_order_is_numeric_order(a in any::<u128>(), b in any::<u128>()) {
        let (a, b) = (u128_to_addr(a, true), u128_to_addr(b, true));
        prop_assert_eq!(sort_key(a).cmp(&sort_key(b)), addr_to_u128(a).cmp(&addr_to_u128(b)));
    }

    #[test]
    fn ipv6_sort_key_order_is_numeric_order_for_close_addresses(a in any::<u128>(), delta in 0..300u128) {
        let (a, b) = (u128_to_addr(a, true), u128_to_addr(a.saturating_add(delta), true));
        prop_assert_eq!(sort_key(a).cmp(&sort_key(b)), addr_to_u128(a).cmp(&addr_to_u128(b)));
    }

    #[test]
    fn sort_key_parses_back_to_the_address(value in any::<u128>(), v6 in any::<bool>()) {
        let addr = u128_to_addr(value, v6);
        prop_assert_eq!(parse_sort_key(&sort_key(addr)), Some(addr));
    }

    #[test]
    fn parse_sort_key_never_panics(key in ".{0,40}") {
        if let Some(addr) = parse_sort_key(&key) {
            prop_assert_eq!(sort_key(addr), key);
        }
    }

    #[test]
    fn plan_construction_never_panics_on_arbitrary_input(
        cidr in cidr(false),
        raw_cidr in any::<u128>(),
        gateway in proptest::option::of(any::<u128>()),
        gateway_v6 in any::<bool>(),
        pools in prop::collection::vec((any::<u128>(), any::<u128>(), any::<bool>()), 0..4),
    ) {
        let cidr = match cidr {
            IpNet::V4(net) => IpNet::V4(Ipv4Net::new((raw_cidr as u32).into(), net.prefix_len()).expect("valid prefix")),
            IpNet::V6(net) => IpNet::V6(Ipv6Net::new(raw_cidr.into(), net.prefix_len()).expect("valid prefix")),
        };
        let gateway = gateway.map(|g| u128_to_addr(g, gateway_v6));
        let pools = pools
            .into_iter()
            .map(|(s, e, v6)| Range::new(u128_to_addr(s, v6), u128_to_addr(e, v6)))
            .collect();
        if let Ok(plan) = SubnetLayout::new(cidr, gateway, pools) {
            let _ = plan.capacity();
            let _ = plan.reserved();
            let _ = plan.next_free([]);
        }
    }

    #[test]
    fn a_hand_assembled_plan_never_panics(
        cidr in cidr(false),
        gateway in proptest::option::of((any::<u128>(), any::<bool>())),
        pools in prop::collection::vec((any::<u128>(), any::<u128>(), any::<bool>(), any::<bool>()), 0..4),
        allocated in prop::collection::vec((any::<u128>(), any::<bool>()), 0..8),
        probe in any::<u128>(),
    ) {
        let plan = SubnetLayout {
            cidr,
            gateway: gateway.map(|(g, v6)| u128_to_addr(g, v6)),
            pools: pools
                .into_iter()
                .map(|(s, e, v6s, v6e)| Range::new(u128_to_addr(s, v6s), u128_to_addr(e, v6e)))
                .collect(),
        };
        let _ = plan.capacity();
        let _ = plan.reserved();
        let _ = plan.is_allocatable(u128_to_addr(probe, true));
        let _ = plan.is_allocatable(u128_to_addr(probe, false));
        let _ = plan.next_free(allocated.into_iter().map(|(v, v6)| u128_to_addr(v, v6)));
    }
}
