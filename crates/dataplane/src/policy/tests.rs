//! Unit tests of the policy objects: names, keys, digests, and rule lists
//! built, patched and memoised.

use std::collections::BTreeSet;

use tessera_model::Vni;
use tessera_policy::{Family, Verdict};

use super::chains::{chain_pair, list_chain, map_list_chain, object_list, pair_chain, ChainKind};
use super::digest::{chain_digest_value, decode_chain_value, decode_map_value, map_digest_value, name_key};
use super::keys::{
    key_text, lookup_key, map_family, map_fields, map_is_interval, map_type, selective_order, template_matches, CANONICAL_ORDER,
};
use super::lists::{list_objects, shard_count, MAX_MAP_ELEMENTS};
use super::objects::{MapSpec, PolicyObjects};
use super::programs::{policy_objects, policy_objects_except, MEMO_ROUNDS};
use crate::desired::{DesiredHost, PairPolicy};
use crate::names::log_chain_passes;
use crate::observed::{map_digest, ElementVerdict, MapElement};

#[test]
fn names_round_trip() {
    let (s, d) = (Vni::new(100).unwrap(), Vni::new(200).unwrap());
    assert_eq!(chain_pair(&pair_chain(s, d)), Some((100, 200)));
    assert_eq!(chain_pair(&list_chain(s, d, 1)), Some((100, 200)));
    assert_eq!(map_list_chain("m100_200_1_0_4_3_40123").as_deref(), Some("l100_200_1"));
    assert_eq!(map_list_chain("h100_200_1_0_4_0badcafe0_4").as_deref(), Some("l100_200_1"));
    assert_eq!(map_fields("m100_200_1_0_4_3_40123"), vec![4, 0, 1, 2, 3]);
    assert_eq!(map_fields("m100_200_1_0_4_3_40023"), CANONICAL_ORDER.to_vec(), "not a permutation");
    assert_eq!(map_fields("h100_200_1_0_4_0badcafe0_04"), vec![0, 4]);
    assert!(!map_is_interval("h100_200_1_0_4_0badcafe0_04"));
    assert_eq!(map_family("h100_200_1_0_4_0badcafe0_04"), Some(Family::V4));
    assert_eq!(map_family("m100_200_1_2_6_3_40123"), Some(Family::V6));
    assert_eq!(map_family("digests"), None);
    assert_eq!(object_list("g1_2_0_abcdef01_3p").as_deref(), Some("l1_2_0"));
    assert_eq!(object_list("h1_2_1_0_4_0badcafe0_4").as_deref(), Some("l1_2_1"));
    assert_eq!(object_list("l1_2_0").as_deref(), Some("l1_2_0"));
    assert_eq!(object_list("p1_2"), None);
    assert_eq!(ChainKind::of("rj100"), Some(ChainKind::Reject));
    assert_eq!(ChainKind::of("dispatch"), Some(ChainKind::Dispatch));
    assert_eq!(ChainKind::of("steer"), Some(ChainKind::Steer));
    assert_eq!(object_list("steer"), None, "the steer chain belongs to no rule list");
    assert!(log_chain_passes("g1_2_0_abcdef01_3p") && !log_chain_passes("g1_2_0_abcdef01_3d"));
}

#[test]
fn shards_grow_by_powers_of_two() {
    assert_eq!(shard_count(0), 1);
    assert_eq!(shard_count(MAX_MAP_ELEMENTS), 1);
    assert_eq!(shard_count(MAX_MAP_ELEMENTS + 1), 2);
    assert_eq!(shard_count(50_000), 8);
}

#[test]
fn keys_follow_the_map_order() {
    let key = tessera_policy::FlowBox { dport: (80, 80), proto: (6, 6), ..tessera_policy::FlowBox::everything(Family::V4) };
    assert_eq!(key_text(&key, &[4, 2, 0, 1, 3]), "80 . 6 . 0.0.0.0/0 . 0.0.0.0/0 . 0-65535");
    assert_eq!(lookup_key(Family::V6, &[4, 2, 0, 1, 3]), "th dport . meta l4proto . ip6 saddr . ip6 daddr . th sport");
    assert_eq!(
        map_type("m1_2_0_0_4_0_40123", Family::V4),
        "type inet_service . ipv4_addr . ipv4_addr . inet_proto . inet_service : verdict; flags interval; counter;"
    );
    assert_eq!(map_type("h1_2_0_0_4_0badcafe0_4", Family::V4), "type inet_service : verdict; counter;");
    assert_eq!(template_matches(&key, &[4]), "meta nfproto ipv4 meta l4proto 6");
    let ports: Vec<tessera_policy::FlowBox> = (1..5).map(|p| tessera_policy::FlowBox { dport: (p, p), ..key }).collect();
    assert_eq!(selective_order(ports.iter()), [4, 0, 1, 2, 3]);
}

#[test]
fn a_patched_list_gives_the_objects_of_a_fresh_build_and_the_exact_delta() {
    let mut rules: Vec<String> = (0..100).map(|i| format!("deny tcp any any > any {}", 2000 + i)).collect();
    rules.extend((0..40).map(|i| format!("pass udp 10.0.0.{i}/32 any > any {}-{}", 100 * i, 100 * i + 50)));
    rules.push("pass icmp any any > any any log".into());
    let mut cache = tessera_policy::ListCache::new();
    let base = policy_objects(&host_cached(&rules, (901, 902), &mut cache));
    rules[7] = "reject tcp any any > any 2007".into();
    rules[120] = "deny udp 10.0.0.20/32 any > any 2000-2050 log".into();
    rules[140] = "deny icmp any any > any any".into();
    let host = host_cached(&rules, (901, 902), &mut cache);
    assert!(host.policies[0].lists[0].patch.base().is_some(), "the cache patched the list");
    let patched = policy_objects(&host);
    let fresh = list_objects(Vni::new(901).unwrap(), Vni::new(902).unwrap(), 0, &host.policies[0].lists[0]).objects;
    for (name, c) in &fresh.chains {
        assert_eq!(patched.chains.get(name), Some(c), "chain {name}");
    }
    let list_chains =
        |o: &PolicyObjects| o.chains.keys().filter(|n| n.contains("901_902") && !n.starts_with('p')).cloned().collect::<Vec<_>>();
    assert_eq!(list_chains(&patched), list_chains(&fresh), "no stale log chain is left");
    assert_eq!(patched.maps.keys().collect::<Vec<_>>(), fresh.maps.keys().collect::<Vec<_>>());
    let set = |m: &MapSpec| m.elements.iter().map(|(e, _)| e.clone()).collect::<BTreeSet<MapElement>>();
    for (name, m) in &fresh.maps {
        let p = &patched.maps[name];
        assert_eq!((p.digest, set(p)), (m.digest, set(m)), "map {name}");
        match patched.deltas.get(name) {
            Some(d) => {
                assert_eq!(d.base_digest, base.maps[name].digest);
                let mut applied = set(&base.maps[name]);
                for e in &d.deletes {
                    assert!(applied.remove(e), "{e:?} was in the base map");
                }
                applied.extend(d.adds.iter().cloned());
                assert_eq!(applied, set(m), "base − deletes + adds = the new map {name}");
            }
            None => assert_eq!(base.maps[name].digest, m.digest, "an unchanged map {name} has no delta"),
        }
    }
    assert_eq!(patched.deltas.values().map(|d| d.adds.len()).sum::<usize>(), 3, "one element per changed rule");
}

#[test]
fn a_list_held_unchanged_through_many_plans_is_still_patched() {
    let mut rules: Vec<String> = (0..50).map(|i| format!("deny tcp any any > any {}", 3000 + i)).collect();
    let mut cache = tessera_policy::ListCache::new();
    let host = host_cached(&rules, (903, 904), &mut cache);
    policy_objects(&host);
    // Plans that leave the list alone (the kernel holds it as it is).
    let kept: BTreeSet<String> = [list_chain(Vni::new(903).unwrap(), Vni::new(904).unwrap(), 0)].into();
    for _ in 0..2 * MEMO_ROUNDS {
        policy_objects_except(&host, &kept);
    }
    rules[10] = "pass tcp any any > any 3010".into();
    let patched = policy_objects(&host_cached(&rules, (903, 904), &mut cache));
    assert_eq!(patched.deltas.values().map(|d| d.adds.len()).sum::<usize>(), 1, "derived from the held objects");
}

#[test]
fn counting_the_rules_of_an_older_state_leaves_the_planner_its_base() {
    let mut rules: Vec<String> = (0..50).map(|i| format!("deny tcp any any > any {}", 4000 + i)).collect();
    let mut cache = tessera_policy::ListCache::new();
    let older = host_cached(&rules, (905, 906), &mut cache);
    policy_objects(&older);
    rules[3] = "pass tcp any any > any 4003".into();
    let newer = host_cached(&rules, (905, 906), &mut cache);
    policy_objects(&newer);
    // The counters still read with the state reconciled before.
    let counted = super::rule_counters(&older, &[]);
    assert_eq!(counted.len(), 50, "every rule of the older state is counted");
    rules[4] = "pass tcp any any > any 4004".into();
    let patched = policy_objects(&host_cached(&rules, (905, 906), &mut cache));
    assert_eq!(patched.deltas.values().map(|d| d.adds.len()).sum::<usize>(), 1, "derived from the newer objects");
}

fn host_with(rules: &[String]) -> DesiredHost {
    host_cached(rules, (1, 2), &mut tessera_policy::ListCache::new())
}

/// A desired host enforcing `rules` from network `a` to network `b`
/// (ids and VNIs), the list compiled through `cache`.
fn host_cached(rules: &[String], (a, b): (u128, u128), cache: &mut tessera_policy::ListCache) -> DesiredHost {
    use tessera_model::{Network, Policy, ProjectName, Rule, Subnet};
    let net = |id: u128, cidr: &str| Network {
        domain: None,
        snat: None,
        id: uuid::Uuid::from_u128(id),
        fq_name: format!("default-domain:admin:n{id}").parse().unwrap(),
        vni: Vni::new(id as u32).unwrap(),
        subnets: vec![Subnet { cidr: cidr.parse().unwrap(), gateway: None, pools: vec![], dns_servers: vec![] }],
        import_targets: vec![],
        export_targets: vec![],
        shared: false,
        shared_with: vec![],
        external: false,
        policies: vec![],
        labels: Default::default(),
    };
    let p = Policy {
        id: uuid::Uuid::from_u128(9),
        fq_name: "default-domain:admin:p".parse().unwrap(),
        rules: rules.iter().map(|r| Rule::parse("r", r, &ProjectName::default_project()).unwrap()).collect(),
    };
    let (a, b) = (net(a, "10.0.0.0/24"), net(b, "10.1.0.0/24"));
    let list = cache.get_or_compile(&[&p], &a, &b, Verdict::Deny);
    DesiredHost {
        published: vec![],
        steering: vec![],
        uplinks: vec![],
        underlay_ip: "10.99.0.1".parse().unwrap(),
        underlay_ifname: "eth0".into(),
        underlay_mtu: 1500,
        peers: vec![],
        networks: vec![],
        pair_zones: vec![],
        policies: vec![PairPolicy { src: a.vni, dst: b.vni, lists: vec![list] }],
        watches: vec![],
    }
}

#[test]
fn a_list_of_port_rules_is_one_hash_lookup() {
    let rules: Vec<String> = (0..100).map(|p| format!("deny tcp any any > any {}", 1000 + p)).collect();
    let o = policy_objects(&host_with(&rules));
    assert_eq!(o.maps.len(), 1, "{:?}", o.maps.keys());
    let (name, map) = o.maps.iter().next().unwrap();
    assert!(name.starts_with("h1_2_0_0_4_") && name.ends_with("_4"), "{name}");
    assert_eq!(map.elements.len(), 100);
    assert_eq!(map_type(name, Family::V4), "type inet_service : verdict; counter;");
    let list = &o.chains["l1_2_0"].rules;
    assert_eq!(list[0], format!("meta nfproto ipv4 meta l4proto 6 th dport vmap @{name} goto dn1"));
    assert_eq!(list[1], "goto dn1", "a denied flow is logged (rate limited), then dropped");
    assert_eq!(o.chains["dn1"].rules.last().map(String::as_str), Some("drop"));
    // Deny elements run on to the lookup's `goto dn1`: none jumps.
    assert!(map.elements.iter().all(|(e, _)| e.verdict == ElementVerdict::Continue));
}

#[test]
fn a_map_refuses_as_most_of_its_entries_do() {
    let mut rules: Vec<String> = (0..40).map(|p| format!("reject tcp any any > any {}", 1000 + p)).collect();
    rules.push("deny tcp any any > any 2000".into());
    rules.push("pass tcp any any > any 2001".into());
    let o = policy_objects(&host_with(&rules));
    assert_eq!(o.maps.len(), 1, "{:?}", o.maps.keys());
    let (name, map) = o.maps.iter().next().unwrap();
    assert_eq!(o.chains["l1_2_0"].rules[0], format!("meta nfproto ipv4 meta l4proto 6 th dport vmap @{name} goto rj1"));
    let count = |v: ElementVerdict| map.elements.iter().filter(|(e, _)| e.verdict == v).count();
    assert_eq!(count(ElementVerdict::Continue), 40, "the rejects run on to the lookup's goto rj1");
    assert_eq!(count(ElementVerdict::Goto("dn1".into())), 1, "the one deny jumps");
    assert_eq!(count(ElementVerdict::Return), 1);
}

#[test]
fn ranges_go_to_interval_maps() {
    let rules: Vec<String> = (0..40).map(|p| format!("deny tcp any any > any {}-{}", 1000 + 10 * p, 1005 + 10 * p)).collect();
    let o = policy_objects(&host_with(&rules));
    assert_eq!(o.maps.len(), 1);
    let name = o.maps.keys().next().unwrap();
    assert!(name.starts_with("m1_2_0_0_4_0_4"), "the port is the most selective field: {name}");
}

#[test]
fn digests_do_not_depend_on_order() {
    let e = |p: u16, v: ElementVerdict| MapElement {
        key: tessera_policy::FlowBox { dport: (p, p), ..tessera_policy::FlowBox::everything(Family::V4) },
        verdict: v,
    };
    let (a, b) = (e(1, ElementVerdict::Return), e(2, ElementVerdict::Drop));
    assert_eq!(map_digest([&a, &b]), map_digest([&b, &a]));
    assert_ne!(map_digest([&a]), map_digest([&e(1, ElementVerdict::Drop)]));
}

#[test]
fn digest_values_round_trip() {
    assert_eq!(
        decode_chain_value(chain_digest_value(0xdead_beef, Some(Verdict::Deny))),
        Some((0xdead_beef, Some(Verdict::Deny)))
    );
    assert_eq!(decode_chain_value(map_digest_value(7)), None);
    assert_eq!(decode_map_value(map_digest_value(7)), Some(7));
    assert_ne!(name_key("l1_2_0"), name_key("l1_2_1"));
}

#[test]
fn the_steer_chain_is_always_planned_and_numbers_targets_host_wide() {
    use crate::desired::{DesiredSteer, SteerTarget};
    let mut host = host_with(&[]);
    let idle = &policy_objects(&host).chains[crate::names::STEER];
    assert_eq!((idle.kind, idle.rules.clone()), (ChainKind::Steer, vec!["return".to_string()]));
    let steer = |vni: u32, n: usize| DesiredSteer {
        vni: Vni::new(vni).unwrap(),
        label: format!("s{vni}"),
        src: vec!["10.0.0.0/24".parse().unwrap()],
        dst: vec!["10.1.0.0/24".parse().unwrap()],
        protocol: Some(17),
        src_ports: vec![],
        dst_ports: vec![],
        reverse: vni == 2,
        skip_ports: vec![],
        targets: (0..n)
            .map(|i| SteerTarget { address: format!("10.0.0.{}", 10 + i).parse().unwrap(), dev: format!("tb{vni}") })
            .collect(),
    };
    host.steering = vec![steer(1, 3), steer(2, 2), steer(1, 0)];
    let rules = policy_objects(&host).chains[crate::names::STEER].rules.clone();
    assert_eq!(rules.len(), 4, "{rules:#?}");
    assert!(
        rules[0].ends_with("ip saddr . ip daddr . th sport . th dport mod 3 seed 0x54657373 offset 0x28000000 comment \"s1\"")
    );
    assert!(
        rules[1].ends_with("ip daddr . ip saddr . th dport . th sport mod 2 seed 0x54657373 offset 0x28000003 comment \"s2\"")
    );
    assert!(rules[2].ends_with("counter drop comment \"s1: no healthy instance\""), "{}", rules[2]);
    assert_eq!(rules[3], "return");
}
