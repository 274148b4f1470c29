//! The policy compiler as a specification: each case states one rule of the
//! semantics (crate docs) and checks the compiled program, and the property
//! test checks that compiled programs agree with the reference matcher on
//! random rules and flows.

use std::net::IpAddr;
use std::time::Instant;

use proptest::prelude::*;
use tessera_model::{Network, Policy, ProjectName, RouteTarget, Rule, Subnet, Vni};
use tessera_policy::{Compiler, Family, Flow, Verdict};
use uuid::Uuid;

fn net(n: u128, name: &str, cidrs: &[&str]) -> Network {
    Network {
        domain: None,
        snat: None,
        id: Uuid::from_u128(n),
        fq_name: format!("default-domain:admin:{name}").parse().unwrap(),
        vni: Vni::new(n as u32).unwrap(),
        subnets: cidrs
            .iter()
            .map(|c| Subnet { cidr: c.parse().unwrap(), gateway: None, pools: vec![], dns_servers: vec![] })
            .collect(),
        import_targets: vec![],
        export_targets: vec![],
        shared: false,
        shared_with: vec![],
        external: false,
        policies: vec![],
        labels: Default::default(),
    }
}

fn red() -> Network {
    net(1, "red", &["192.168.10.0/24", "2001:db8:10::/64"])
}
fn green() -> Network {
    net(2, "green", &["192.168.20.0/24", "2001:db8:20::/64"])
}
fn blue() -> Network {
    net(3, "blue", &["192.168.30.0/24"])
}

fn policy(n: u128, name: &str, rules: &[&str]) -> Policy {
    Policy {
        id: Uuid::from_u128(0x1000 + n),
        fq_name: format!("default-domain:admin:{name}").parse().unwrap(),
        rules: rules
            .iter()
            .enumerate()
            .map(|(i, r)| Rule::parse(&format!("rules[{i}]"), r, &ProjectName::default_project()).unwrap())
            .collect(),
    }
}

fn attach(mut n: Network, p: &[&Policy]) -> Network {
    n.policies = p.iter().map(|p| p.id).collect();
    n
}

fn tcp(src: &str, dst: &str, dport: u16) -> Flow {
    Flow { src: src.parse().unwrap(), dst: dst.parse().unwrap(), proto: 6, sport: 40000, dport }
}

fn icmp(src: &str, dst: &str) -> Flow {
    let s: IpAddr = src.parse().unwrap();
    Flow { src: s, dst: dst.parse().unwrap(), proto: if s.is_ipv4() { 1 } else { 58 }, sport: 0, dport: 0 }
}

/// Compiles and checks that the compiled verdict equals the reference one;
/// returns the verdict.
fn verdict(networks: &[Network], policies: &[Policy], src: u128, dst: u128, flow: Flow) -> Verdict {
    let c = Compiler::new(networks, policies);
    let (s, d) = (Uuid::from_u128(src), Uuid::from_u128(dst));
    let compiled = c.program(s, d).unwrap().verdict(&flow);
    assert_eq!(Some(compiled), c.reference(s, d, &flow), "compiled and reference disagree on {flow:?}");
    compiled
}

#[test]
fn networks_without_policy_are_isolated_and_have_no_leaks() {
    let nets = [red(), green()];
    let c = Compiler::new(&nets, &[]);
    assert_eq!(c.topology().imports(Uuid::from_u128(1)).count(), 0);
    assert_eq!(verdict(&nets, &[], 1, 2, tcp("192.168.10.2", "192.168.20.2", 80)), Verdict::Deny);
}

#[test]
fn within_a_network_no_match_passes_and_costs_nothing() {
    let nets = [red()];
    let c = Compiler::new(&nets, &[]);
    assert!(c.program(Uuid::from_u128(1), Uuid::from_u128(1)).unwrap().is_pass_all());
    assert_eq!(verdict(&nets, &[], 1, 1, tcp("192.168.10.2", "192.168.10.3", 22)), Verdict::Pass);
}

#[test]
fn a_pass_all_policy_on_both_ends_connects_and_leaks_both_ways() {
    let p = policy(1, "pass-all", &["pass any any any <> any any"]);
    let nets = [attach(red(), &[&p]), attach(green(), &[&p])];
    let c = Compiler::new(&nets, std::slice::from_ref(&p));
    assert!(c.topology().bidirectional(Uuid::from_u128(1), Uuid::from_u128(2)));
    let prog = c.program(Uuid::from_u128(1), Uuid::from_u128(2)).unwrap();
    assert_eq!(prog.lists.len(), 1, "the same policy on both ends is evaluated once");
    assert_eq!(verdict(&nets, std::slice::from_ref(&p), 1, 2, icmp("192.168.10.2", "192.168.20.2")), Verdict::Pass);
    assert_eq!(verdict(&nets, std::slice::from_ref(&p), 2, 1, icmp("2001:db8:20::2", "2001:db8:10::2")), Verdict::Pass);
}

#[test]
fn a_policy_on_one_end_only_neither_leaks_nor_passes() {
    let p = policy(1, "pass-all", &["pass any any any <> any any"]);
    let nets = [attach(red(), &[&p]), green()];
    let c = Compiler::new(&nets, std::slice::from_ref(&p));
    assert!(!c.topology().imports_from(Uuid::from_u128(1), Uuid::from_u128(2)));
    assert_eq!(verdict(&nets, std::slice::from_ref(&p), 1, 2, icmp("192.168.10.2", "192.168.20.2")), Verdict::Deny);
}

#[test]
fn first_match_wins() {
    let p = policy(1, "p", &["deny tcp any any <> any 22", "pass tcp any any <> any any", "deny any any any <> any any"]);
    let nets = [attach(red(), &[&p]), attach(green(), &[&p])];
    let ps = [p];
    assert_eq!(verdict(&nets, &ps, 1, 2, tcp("192.168.10.2", "192.168.20.2", 80)), Verdict::Pass);
    assert_eq!(verdict(&nets, &ps, 1, 2, tcp("192.168.10.2", "192.168.20.2", 22)), Verdict::Deny);
    assert_eq!(verdict(&nets, &ps, 1, 2, icmp("192.168.10.2", "192.168.20.2")), Verdict::Deny);
}

#[test]
fn policies_are_evaluated_in_attach_order() {
    let allow = policy(1, "allow", &["pass tcp any any <> any 22"]);
    let block = policy(2, "block", &["deny tcp any any <> any 22", "pass any any any <> any any"]);
    let both = [allow.clone(), block.clone()];
    let nets = [attach(red(), &[&allow, &block]), attach(green(), &[&allow, &block])];
    assert_eq!(verdict(&nets, &both, 1, 2, tcp("192.168.10.2", "192.168.20.2", 22)), Verdict::Pass);
    let nets = [attach(red(), &[&block, &allow]), attach(green(), &[&block, &allow])];
    assert_eq!(verdict(&nets, &both, 1, 2, tcp("192.168.10.2", "192.168.20.2", 22)), Verdict::Deny);
}

#[test]
fn tcp_80_passes_and_tcp_22_is_denied_between_networks() {
    let p = policy(1, "web", &["pass tcp red any <> green 80", "pass icmp any any <> any any"]);
    let nets = [attach(red(), &[&p]), attach(green(), &[&p])];
    let ps = [p];
    assert_eq!(verdict(&nets, &ps, 1, 2, tcp("192.168.10.2", "192.168.20.2", 80)), Verdict::Pass);
    assert_eq!(verdict(&nets, &ps, 1, 2, tcp("192.168.10.2", "192.168.20.2", 22)), Verdict::Deny);
    // `<>` also matches green -> red with the ports swapped: source port 80.
    let mut back = tcp("192.168.20.2", "192.168.10.2", 5555);
    back.sport = 80;
    assert_eq!(verdict(&nets, &ps, 2, 1, back), Verdict::Pass);
    assert_eq!(verdict(&nets, &ps, 2, 1, tcp("192.168.20.2", "192.168.10.2", 80)), Verdict::Deny);
}

#[test]
fn one_way_rule_lets_connections_start_from_one_side_only() {
    let p = policy(1, "oneway", &["pass tcp red any > green 80"]);
    let nets = [attach(red(), &[&p]), attach(green(), &[&p])];
    let ps = [p];
    assert_eq!(verdict(&nets, &ps, 1, 2, tcp("192.168.10.2", "192.168.20.2", 80)), Verdict::Pass);
    assert_eq!(verdict(&nets, &ps, 2, 1, tcp("192.168.20.2", "192.168.10.2", 80)), Verdict::Deny);
    assert!(Compiler::new(&nets, &ps).topology().bidirectional(Uuid::from_u128(1), Uuid::from_u128(2)), "routes go both ways");
}

#[test]
fn reject_and_deny_are_different_verdicts() {
    let p = policy(1, "p", &["reject tcp any any <> any 22", "deny tcp any any <> any 23", "pass any any any <> any any"]);
    let nets = [attach(red(), &[&p]), attach(green(), &[&p])];
    let ps = [p];
    assert_eq!(verdict(&nets, &ps, 1, 2, tcp("192.168.10.2", "192.168.20.2", 22)), Verdict::Reject);
    assert_eq!(verdict(&nets, &ps, 1, 2, tcp("192.168.10.2", "192.168.20.2", 23)), Verdict::Deny);
}

#[test]
fn both_ends_must_pass_between_networks() {
    let open = policy(1, "open", &["pass any any any <> any any"]);
    let web = policy(2, "web-only", &["pass tcp any any <> any 80"]);
    let nets = [attach(red(), &[&open]), attach(green(), &[&web])];
    let ps = [open, web];
    assert_eq!(verdict(&nets, &ps, 1, 2, tcp("192.168.10.2", "192.168.20.2", 80)), Verdict::Pass);
    assert_eq!(verdict(&nets, &ps, 1, 2, tcp("192.168.10.2", "192.168.20.2", 443)), Verdict::Deny, "green's list says no");
}

#[test]
fn intra_network_deny_applies_within_the_network_only() {
    let p = policy(1, "no-ssh", &["deny tcp any any > any 22"]);
    let nets = [attach(red(), &[&p])];
    let ps = [p];
    assert_eq!(verdict(&nets, &ps, 1, 1, tcp("192.168.10.2", "192.168.10.3", 22)), Verdict::Deny);
    assert_eq!(verdict(&nets, &ps, 1, 1, tcp("192.168.10.2", "192.168.10.3", 80)), Verdict::Pass);
    assert_eq!(verdict(&nets, &ps, 1, 1, icmp("2001:db8:10::2", "2001:db8:10::3")), Verdict::Pass);
}

#[test]
fn network_endpoints_match_by_identity_not_address() {
    // blue2 has red's addresses; a rule naming red must not match blue2.
    let p = policy(1, "p", &["deny any red any > any any"]);
    let blue2 = attach(net(4, "blue2", &["192.168.10.0/24"]), &[&p]);
    let nets = [attach(red(), &[&p]), blue2];
    let ps = [p];
    assert_eq!(verdict(&nets, &ps, 1, 1, icmp("192.168.10.2", "192.168.10.3")), Verdict::Deny);
    assert_eq!(verdict(&nets, &ps, 4, 4, icmp("192.168.10.2", "192.168.10.3")), Verdict::Pass);
}

#[test]
fn ipv6_rules_match_ipv6_flows_only() {
    let p = policy(1, "v6", &["pass tcp 2001:db8:10::/64 any <> 2001:db8:20::/64 443", "pass icmpv6 any any <> any any"]);
    let nets = [attach(red(), &[&p]), attach(green(), &[&p])];
    let ps = [p];
    assert_eq!(verdict(&nets, &ps, 1, 2, tcp("2001:db8:10::2", "2001:db8:20::2", 443)), Verdict::Pass);
    assert_eq!(verdict(&nets, &ps, 1, 2, icmp("2001:db8:10::2", "2001:db8:20::2")), Verdict::Pass);
    assert_eq!(verdict(&nets, &ps, 1, 2, icmp("192.168.10.2", "192.168.20.2")), Verdict::Deny, "icmpv6 is not icmp");
    assert_eq!(verdict(&nets, &ps, 1, 2, tcp("192.168.10.2", "192.168.20.2", 443)), Verdict::Deny);
    let prog = Compiler::new(&nets, &ps).program(Uuid::from_u128(1), Uuid::from_u128(2)).unwrap();
    assert!(prog.lists[0].entries.iter().all(|e| e.key.family == Family::V6));
}

fn with_targets(mut n: Network, import: &[&str], export: &[&str]) -> Network {
    n.import_targets = import.iter().map(|s| s.parse::<RouteTarget>().unwrap()).collect();
    n.export_targets = export.iter().map(|s| s.parse::<RouteTarget>().unwrap()).collect();
    n
}

#[test]
fn route_targets_both_ways_connect_and_pass_unless_denied() {
    let nets = [with_targets(red(), &["64512:100"], &["64512:100"]), with_targets(green(), &["64512:100"], &["64512:100"])];
    let c = Compiler::new(&nets, &[]);
    assert!(c.topology().bidirectional(Uuid::from_u128(1), Uuid::from_u128(2)));
    assert!(c.program(Uuid::from_u128(1), Uuid::from_u128(2)).unwrap().is_pass_all());
    assert_eq!(verdict(&nets, &[], 1, 2, tcp("192.168.10.2", "192.168.20.2", 22)), Verdict::Pass);

    let p = policy(1, "no-ssh", &["deny tcp any any <> any 22"]);
    let nets = [attach(nets[0].clone(), &[&p]), nets[1].clone()];
    let ps = [p];
    assert_eq!(verdict(&nets, &ps, 1, 2, tcp("192.168.10.2", "192.168.20.2", 22)), Verdict::Deny);
    assert_eq!(verdict(&nets, &ps, 1, 2, tcp("192.168.10.2", "192.168.20.2", 80)), Verdict::Pass);
}

#[test]
fn route_target_one_way_imports_one_way() {
    // red imports what green exports; green imports nothing red exports.
    let nets = [with_targets(red(), &["64512:7"], &["64512:8"]), with_targets(green(), &[], &["64512:7"])];
    let t = Compiler::new(&nets, &[]).topology().clone();
    assert!(t.imports_from(Uuid::from_u128(1), Uuid::from_u128(2)));
    assert!(!t.imports_from(Uuid::from_u128(2), Uuid::from_u128(1)));
    assert!(!t.bidirectional(Uuid::from_u128(1), Uuid::from_u128(2)));
}

#[test]
fn a_route_target_joins_another_projects_network_only_when_it_is_shared() {
    let mut green_of_blue = with_targets(green(), &["64512:9"], &["64512:9"]);
    green_of_blue.fq_name = "default-domain:blue:green".parse().unwrap();
    let nets = [with_targets(red(), &["64512:9"], &["64512:9"]), green_of_blue.clone()];
    let t = Compiler::new(&nets, &[]).topology().clone();
    assert!(!t.imports_from(Uuid::from_u128(1), Uuid::from_u128(2)), "blue did not consent");
    assert!(!t.imports_from(Uuid::from_u128(2), Uuid::from_u128(1)), "nor did admin");
    green_of_blue.shared = true;
    let nets = [nets[0].clone(), green_of_blue];
    let t = Compiler::new(&nets, &[]).topology().clone();
    assert!(t.imports_from(Uuid::from_u128(1), Uuid::from_u128(2)), "a shared network may be imported");
    assert!(!t.imports_from(Uuid::from_u128(2), Uuid::from_u128(1)), "red is not shared: blue imports nothing of it");
}

#[test]
fn a_route_target_joins_a_network_shared_with_the_importing_project() {
    let mut green_of_blue = with_targets(green(), &["64512:9"], &["64512:9"]);
    green_of_blue.fq_name = "default-domain:blue:green".parse().unwrap();
    green_of_blue.shared_with = vec!["default-domain:other".parse().unwrap()];
    let nets = [with_targets(red(), &["64512:9"], &["64512:9"]), green_of_blue.clone()];
    let t = Compiler::new(&nets, &[]).topology().clone();
    assert!(!t.imports_from(Uuid::from_u128(1), Uuid::from_u128(2)), "shared with another project, not red's");
    green_of_blue.shared_with.push("default-domain:admin".parse().unwrap());
    let nets = [nets[0].clone(), green_of_blue];
    let t = Compiler::new(&nets, &[]).topology().clone();
    assert!(t.imports_from(Uuid::from_u128(1), Uuid::from_u128(2)), "shared with red's project");
    assert!(!t.imports_from(Uuid::from_u128(2), Uuid::from_u128(1)), "red is shared with nobody");
}

#[test]
fn overlapping_subnets_are_not_leaked_and_warned_about() {
    let p = policy(1, "pass-all", &["pass any any any <> any any"]);
    let clash = attach(net(4, "clash", &["192.168.10.128/25"]), &[&p]);
    let nets = [attach(red(), &[&p]), clash];
    let c = Compiler::new(&nets, std::slice::from_ref(&p));
    assert_eq!(c.topology().imports(Uuid::from_u128(1)).count(), 0);
    assert_eq!(c.topology().imports(Uuid::from_u128(4)).count(), 0);
    assert_eq!(c.topology().warnings.len(), 2, "{:?}", c.topology().warnings);
    assert!(c.topology().warnings[0].to_string().contains("overlap"));
}

#[test]
fn two_imports_that_overlap_each_other_are_both_refused() {
    // hub imports spoke1 and spoke2, whose subnets overlap: neither is leaked into hub,
    // while each spoke still gets hub's routes.
    let hub = with_targets(net(1, "hub", &["10.0.0.0/24"]), &["1:2"], &["1:1"]);
    let s1 = with_targets(net(2, "spoke1", &["10.1.0.0/24"]), &["1:1"], &["1:2"]);
    let s2 = with_targets(net(3, "spoke2", &["10.1.0.0/25"]), &["1:1"], &["1:2"]);
    let nets = [hub, s1, s2];
    let t = Compiler::new(&nets, &[]).topology().clone();
    assert_eq!(t.imports(Uuid::from_u128(1)).count(), 0);
    assert!(t.imports_from(Uuid::from_u128(2), Uuid::from_u128(1)));
    assert!(t.imports_from(Uuid::from_u128(3), Uuid::from_u128(1)));
    assert_eq!(t.warnings.len(), 2);
}

#[test]
fn rules_naming_other_networks_do_not_connect_unrelated_pairs() {
    let p = policy(1, "red-green", &["pass any red any <> green any"]);
    let nets = [attach(red(), &[&p]), attach(green(), &[&p]), attach(blue(), &[&p])];
    let t = Compiler::new(&nets, std::slice::from_ref(&p)).topology().clone();
    assert!(t.bidirectional(Uuid::from_u128(1), Uuid::from_u128(2)));
    assert!(!t.imports_from(Uuid::from_u128(1), Uuid::from_u128(3)));
    assert!(!t.imports_from(Uuid::from_u128(3), Uuid::from_u128(2)));
}

#[test]
fn log_rules_carry_a_prefix_naming_policy_rule_and_networks() {
    let p = policy(1, "audit", &["pass tcp any any <> any 80 log"]);
    let nets = [attach(red(), &[&p]), attach(green(), &[&p])];
    let prog = Compiler::new(&nets, std::slice::from_ref(&p)).program(Uuid::from_u128(1), Uuid::from_u128(2)).unwrap();
    let e = &prog.lists[0].entries[0];
    assert_eq!(e.log.as_deref(), Some("tessera audit#0 red>green pass "));
    assert_eq!(e.origin.rule, 0);
}

#[test]
fn shadowed_rules_produce_no_entries() {
    let p = policy(1, "p", &["pass any any any <> any any", "deny tcp any any <> any 22"]);
    let nets = [attach(red(), &[&p])];
    let prog = Compiler::new(&nets, std::slice::from_ref(&p)).program(Uuid::from_u128(1), Uuid::from_u128(1)).unwrap();
    assert!(prog.is_pass_all(), "a pass-everything list within a network needs no firewall: {prog:?}");
}

#[test]
fn fifty_thousand_rules_with_the_match_last_compile_to_one_layer() {
    let mut rules: Vec<String> = (1..50_000u32).map(|i| format!("deny tcp any any > any {}", i + 10_000)).collect();
    rules.push("pass tcp red any > green 5001".into());
    let refs: Vec<&str> = rules.iter().map(String::as_str).collect();
    let p = policy(1, "big", &refs);
    let nets = [attach(red(), &[&p]), attach(green(), &[&p])];
    let ps = [p];
    let t = Instant::now();
    let c = Compiler::new(&nets, &ps);
    let prog = c.program(Uuid::from_u128(1), Uuid::from_u128(2)).unwrap();
    let took = t.elapsed();
    assert_eq!(prog.lists.len(), 1);
    let list = &prog.lists[0];
    assert_eq!(list.layers(), 1, "disjoint rules share one lookup");
    assert_eq!(list.entries.len(), 2 * 50_000, "one box per rule and family");
    let flow = tcp("192.168.10.2", "192.168.20.2", 5001);
    assert_eq!(prog.verdict(&flow), Verdict::Pass);
    assert_eq!(prog.verdict(&tcp("192.168.10.2", "192.168.20.2", 20_000)), Verdict::Deny);
    eprintln!("50,000 rules compiled in {took:?}");
}

#[test]
fn overlapping_rules_of_different_verdicts_stack_in_layers() {
    let p = policy(1, "p", &["deny tcp any any <> any 22", "pass tcp any any <> any 1-1024", "reject any any any <> any any"]);
    let nets = [attach(red(), &[&p])];
    let prog = Compiler::new(&nets, std::slice::from_ref(&p)).program(Uuid::from_u128(1), Uuid::from_u128(1)).unwrap();
    assert_eq!(prog.lists[0].layers(), 3);
}

// ---- property: compiled == reference ----

fn arb_endpoint() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("any".to_string()),
        Just("red".to_string()),
        Just("green".to_string()),
        Just("192.168.10.0/25".to_string()),
        Just("192.168.20.0/24".to_string()),
        Just("192.168.0.0/16".to_string()),
        Just("2001:db8:10::/64".to_string()),
    ]
}

fn arb_rule() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just("pass"), Just("deny"), Just("reject")],
        prop_oneof![Just("any"), Just("tcp"), Just("udp"), Just("icmp"), Just("icmpv6")],
        arb_endpoint(),
        arb_endpoint(),
        prop_oneof![Just(">"), Just("<>")],
        prop_oneof![Just("any"), Just("22"), Just("80"), Just("1-100"), Just("50-60,80")],
        prop_oneof![Just("any"), Just("22"), Just("1000-2000")],
    )
        .prop_map(|(a, p, s, d, dir, dp, sp)| {
            let ports = |x: &str| if matches!(p, "tcp" | "udp") { x.to_string() } else { "any".to_string() };
            format!("{a} {p} {s} {} {dir} {d} {}", ports(sp), ports(dp))
        })
        // Rules whose address families cannot meet are refused at the API.
        .prop_filter("address families that can meet", |r| Rule::parse("r", r, &ProjectName::default_project()).is_ok())
}

fn arb_flow() -> impl Strategy<Value = (bool, Flow)> {
    (
        any::<bool>(),
        prop_oneof![Just(1u8), Just(6), Just(17), Just(58), Just(47)],
        prop_oneof![Just(22u16), Just(80), Just(55), Just(1500), Just(3000)],
        prop_oneof![Just(22u16), Just(80), Just(55), Just(1500), Just(3000)],
        0u8..4,
        0u8..4,
        any::<bool>(),
    )
        .prop_map(|(red_to_green, proto, sport, dport, a, b, v6)| {
            let (s, d) = if red_to_green { (10, 20) } else { (20, 10) };
            let addr = |net: u32, host: u8| -> IpAddr {
                if v6 {
                    format!("2001:db8:{net}::{}", host + 2).parse().unwrap()
                } else {
                    format!("192.168.{net}.{}", host * 60 + 2).parse().unwrap()
                }
            };
            (red_to_green, Flow { src: addr(s, a), dst: addr(d, b), proto, sport, dport })
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn compiled_programs_agree_with_the_reference(
        red_rules in proptest::collection::vec(arb_rule(), 0..8),
        green_rules in proptest::collection::vec(arb_rule(), 0..8),
        rt in any::<bool>(),
        flows in proptest::collection::vec(arb_flow(), 1..20),
    ) {
        let rr: Vec<&str> = red_rules.iter().map(String::as_str).collect();
        let gr: Vec<&str> = green_rules.iter().map(String::as_str).collect();
        let (pr, pg) = (policy(1, "pr", &rr), policy(2, "pg", &gr));
        let (mut r, mut g) = (attach(red(), &[&pr]), attach(green(), &[&pg]));
        if rt {
            r = with_targets(r, &["1:1"], &["1:1"]);
            g = with_targets(g, &["1:1"], &["1:1"]);
        }
        let nets = [r, g];
        let ps = [pr, pg];
        let c = Compiler::new(&nets, &ps);
        for (red_to_green, flow) in flows {
            let (s, d) = if red_to_green { (1, 2) } else { (2, 1) };
            for (s, d) in [(s, d), (s, s)] {
                let (s, d) = (Uuid::from_u128(s), Uuid::from_u128(d));
                let mut f = flow;
                if s == d {
                    f.dst = f.src; // a flow within the source network
                }
                prop_assert_eq!(c.program(s, d).unwrap().verdict(&f), c.reference(s, d, &f).unwrap(), "flow {:?}", f);
            }
        }
    }
}

// ---- the list cache: verdict-only changes are patched, not recompiled ----

fn with_action(p: &Policy, i: usize, line: &str) -> Policy {
    let mut q = p.clone();
    q.rules.set(i, Rule::parse("rule", line, &ProjectName::default_project()).unwrap());
    q
}

#[test]
fn a_verdict_change_patches_the_cached_list_and_matches_a_fresh_compile() {
    let mut rules: Vec<String> = (0..600u32).map(|i| format!("deny tcp any any > any {}", i + 10_000)).collect();
    rules.push("pass tcp any any <> any 5001".into());
    let refs: Vec<&str> = rules.iter().map(String::as_str).collect();
    let p = policy(1, "big", &refs);
    let (r, g) = (attach(red(), &[&p]), attach(green(), &[&p]));
    let mut cache = tessera_policy::ListCache::new();
    let before = cache.get_or_compile(&[&p], &r, &g, Verdict::Deny);
    assert!(before.patch.base().is_none(), "a first compile is not a patch");

    let q = with_action(&p, 600, "reject tcp any any <> any 5001 log");
    let after = cache.get_or_compile(&[&q], &r, &g, Verdict::Deny);
    let fresh = tessera_policy::compile_list(&[&q], &r, &g, Verdict::Deny);
    assert_eq!(after, fresh, "the patched list is the list a compile gives");
    assert_eq!(after.fingerprint, fresh.fingerprint);
    let (base, changed) = after.patch.base().expect("a verdict change is a patch");
    assert_eq!(base, before.fingerprint);
    let of_rule: Vec<usize> = after.entries.iter().enumerate().filter(|(_, e)| e.origin.rule == 600).map(|(k, _)| k).collect();
    assert_eq!(changed, of_rule.as_slice(), "exactly the entries of the changed rule");
    assert!(changed.iter().all(|k| after.entries[*k].verdict == Verdict::Reject && after.entries[*k].log.is_some()));

    // A change of a match is compiled whole.
    let m = with_action(&q, 3, "deny tcp any any > any 9");
    let recompiled = cache.get_or_compile(&[&m], &r, &g, Verdict::Deny);
    assert!(recompiled.patch.base().is_none());
    assert_eq!(recompiled, tessera_policy::compile_list(&[&m], &r, &g, Verdict::Deny));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn patched_lists_equal_compiled_ones(
        rules in proptest::collection::vec(arb_rule(), 1..12),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), prop_oneof![Just("pass"), Just("deny"), Just("reject")], any::<bool>()), 1..4),
    ) {
        let refs: Vec<&str> = rules.iter().map(String::as_str).collect();
        let p = policy(1, "p", &refs);
        let (r, g) = (attach(red(), &[&p]), attach(green(), &[&p]));
        let mut cache = tessera_policy::ListCache::new();
        cache.get_or_compile(&[&p], &r, &g, Verdict::Deny);
        let mut q = p.clone();
        for (at, action, log) in flips {
            let i = at.index(rules.len());
            let mut words: Vec<&str> = rules[i].split(' ').collect();
            words[0] = action;
            let mut line = words.join(" ");
            if log {
                line.push_str(" log");
            }
            q = with_action(&q, i, &line);
        }
        let cached = cache.get_or_compile(&[&q], &r, &g, Verdict::Deny);
        prop_assert_eq!(cached, tessera_policy::compile_list(&[&q], &r, &g, Verdict::Deny));
    }
}
