//! Shadowed rules: a rule of a policy that an earlier rule of the same
//! policy covers entirely can never decide a flow (the first match wins).
//! Such a policy is still valid; the API warns about it on create and
//! update.
//!
//! The check is sound, not complete: rule `j` is reported when *one*
//! earlier rule `i` matches everything `j` matches, judged from the rules
//! alone. Endpoints compare as sets of flows: `any` covers everything, a
//! CIDR covers the CIDRs inside it, a network covers only itself (a network
//! is matched by identity, so no CIDR is known to lie inside it, and a CIDR
//! is not assumed to cover a network). A rule covered only by the union of
//! several earlier rules is not reported.
//!
//! Cost: rules whose destination ports are one port are indexed by it, so
//! a policy of many single-port rules is checked in about linear time; the
//! other rules are compared with each later rule (quadratic in their
//! number, bounded by [`MAX_COMPARISONS`]).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::policy::{Direction, Endpoint, Policy, PolicyView, PolicyWarning, PortRange, Protocol, Rule};

/// Most rule comparisons one check makes; past it, the rules not yet
/// checked are not reported (a warning is advice, never a refusal).
pub const MAX_COMPARISONS: usize = 20_000_000;

/// A rule that never decides a flow, and the earlier rule that covers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ShadowedRule {
    /// Index of the shadowed rule.
    pub rule: usize,
    /// Index of the first earlier rule that matches everything it matches.
    pub by: usize,
}

impl PolicyView {
    /// The policy with the warnings about its rules.
    pub fn of(policy: Policy) -> Self {
        let warnings = rule_warnings(&policy.rules.to_vec());
        PolicyView { policy, warnings, counters: None }
    }
}

impl From<ShadowedRule> for PolicyWarning {
    fn from(s: ShadowedRule) -> Self {
        PolicyWarning {
            field: format!("rules[{}]", s.rule),
            code: "shadowed".into(),
            earlier: format!("rules[{}]", s.by),
            message: format!(
                "rules[{}] is shadowed by rules[{}]: every flow it matches is matched by rules[{}] first, so it never decides a flow",
                s.rule, s.by, s.by
            ),
        }
    }
}

/// The warnings about `rules` (one per shadowed rule, in rule order).
pub fn rule_warnings(rules: &[Rule]) -> Vec<PolicyWarning> {
    shadowed_rules(rules).into_iter().map(PolicyWarning::from).collect()
}

/// One direction a rule matches: protocol, source, source ports,
/// destination, destination ports (ports merged and sorted; empty is any).
#[derive(Debug, Clone)]
struct Part<'r> {
    protocol: Protocol,
    src: &'r Endpoint,
    sports: Vec<PortRange>,
    dst: &'r Endpoint,
    dports: Vec<PortRange>,
}

const ALL_PORTS: PortRange = PortRange { start: 0, end: u16::MAX };

/// Sorted, merged, never empty (`any` is `0-65535`).
fn merged(ports: &[PortRange]) -> Vec<PortRange> {
    let mut v: Vec<PortRange> = if ports.is_empty() { vec![ALL_PORTS] } else { ports.to_vec() };
    v.sort_by_key(|r| (r.start, r.end));
    let mut out: Vec<PortRange> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(last) if u32::from(r.start) <= u32::from(last.end) + 1 => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

fn parts(rule: &Rule) -> Vec<Part<'_>> {
    let forward = Part {
        protocol: rule.protocol,
        src: &rule.src,
        sports: merged(&rule.src_ports),
        dst: &rule.dst,
        dports: merged(&rule.dst_ports),
    };
    match rule.direction {
        Direction::OneWay => vec![forward],
        Direction::Both => {
            let back = Part {
                protocol: rule.protocol,
                src: &rule.dst,
                sports: forward.dports.clone(),
                dst: &rule.src,
                dports: forward.sports.clone(),
            };
            vec![forward, back]
        }
    }
}

/// The smallest range holding every port of `ports` (all ports when empty).
fn hull(ports: &[PortRange]) -> (u16, u16) {
    ports
        .iter()
        .fold(None, |acc: Option<(u16, u16)>, r| Some(acc.map_or((r.start, r.end), |(lo, hi)| (lo.min(r.start), hi.max(r.end)))))
        .unwrap_or((0, u16::MAX))
}

/// A rule's source and destination port hulls, computed once for a rule
/// compared with many.
#[derive(Clone, Copy)]
struct Hulls {
    src: (u16, u16),
    dst: (u16, u16),
}

impl Hulls {
    fn of(rule: &Rule) -> Self {
        Hulls { src: hull(&rule.src_ports), dst: hull(&rule.dst_ports) }
    }
}

/// A necessary condition of [`covers`]`(outer, inner)` that needs no
/// allocation: the protocols nest, and `inner`'s forward direction fits one
/// direction of `outer` by endpoints and by the hulls of the port lists.
/// Most pairs of rules fail it, and the full check is left for the others.
#[cfg(test)]
fn may_cover(outer: &Rule, inner: &Rule) -> bool {
    may_cover_with(outer, Hulls::of(outer), inner, Hulls::of(inner))
}

/// [`may_cover`] with the rules' hulls given.
fn may_cover_with(outer: &Rule, o: Hulls, inner: &Rule, i: Hulls) -> bool {
    let fits = |o: (u16, u16), i: (u16, u16)| o.0 <= i.0 && i.1 <= o.1;
    // Cheapest first: numbers, then endpoints (network names are strings).
    let forward = || {
        fits(o.src, i.src)
            && fits(o.dst, i.dst)
            && endpoint_within(&inner.src, &outer.src)
            && endpoint_within(&inner.dst, &outer.dst)
    };
    let backward = || {
        outer.direction == Direction::Both
            && fits(o.dst, i.src)
            && fits(o.src, i.dst)
            && endpoint_within(&inner.src, &outer.dst)
            && endpoint_within(&inner.dst, &outer.src)
    };
    protocol_within(inner.protocol, outer.protocol) && (forward() || backward())
}

fn protocol_within(inner: Protocol, outer: Protocol) -> bool {
    outer == Protocol::Any || inner == outer
}

fn endpoint_within(inner: &Endpoint, outer: &Endpoint) -> bool {
    match (inner, outer) {
        (_, Endpoint::Any) => true,
        (Endpoint::Network(a), Endpoint::Network(b)) => a == b,
        (Endpoint::Cidr(a), Endpoint::Cidr(b)) => b.contains(a),
        _ => false,
    }
}

/// Both merged: every inner range lies inside one outer range.
fn ports_within(inner: &[PortRange], outer: &[PortRange]) -> bool {
    inner.iter().all(|r| outer.iter().any(|o| o.start <= r.start && r.end <= o.end))
}

fn part_within(inner: &Part, outer: &Part) -> bool {
    protocol_within(inner.protocol, outer.protocol)
        && endpoint_within(inner.src, outer.src)
        && endpoint_within(inner.dst, outer.dst)
        && ports_within(&inner.sports, &outer.sports)
        && ports_within(&inner.dports, &outer.dports)
}

/// The one destination port a part matches, if it matches only one.
fn single_dport(p: &Part) -> Option<u16> {
    match p.dports.as_slice() {
        [r] if r.start == r.end => Some(r.start),
        _ => None,
    }
}

/// Whether `outer` matches every flow `inner` matches.
pub fn covers(outer: &Rule, inner: &Rule) -> bool {
    let o = parts(outer);
    parts(inner).iter().all(|p| o.iter().any(|x| part_within(p, x)))
}

/// The warnings that involve rule `i` of `rules`, in linear time (what a
/// one-rule change is told): rule `i` is shadowed by the first earlier rule
/// that covers it; a later rule that rule `i` covers is shadowed by it (an
/// even earlier rule may cover it too).
pub fn warnings_about<'a>(rules: impl IntoIterator<Item = &'a Rule>, i: usize) -> Vec<PolicyWarning> {
    let rules: Vec<&Rule> = rules.into_iter().collect();
    let Some(rule) = rules.get(i) else { return Vec::new() };
    let mine = parts(rule);
    let within = |inner: &[Part], outer: &[Part]| inner.iter().all(|p| outer.iter().any(|x| part_within(p, x)));
    let mut out = Vec::new();
    // 50,000 rules are compared with this one on every one-rule change:
    // its hulls are computed once.
    let h = Hulls::of(rule);
    if let Some(j) = rules[..i].iter().position(|r| may_cover_with(r, Hulls::of(r), rule, h) && within(&mine, &parts(r))) {
        out.push(ShadowedRule { rule: i, by: j }.into());
    }
    for (k, r) in rules.iter().enumerate().skip(i + 1) {
        if may_cover_with(rule, h, r, Hulls::of(r)) && within(&parts(r), &mine) {
            out.push(ShadowedRule { rule: k, by: i }.into());
        }
    }
    out
}

/// The rules of `rules` that an earlier rule covers entirely, in rule order,
/// each with the first earlier rule that does.
pub fn shadowed_rules(rules: &[Rule]) -> Vec<ShadowedRule> {
    let all: Vec<Vec<Part>> = rules.iter().map(parts).collect();
    // Earlier parts, as (rule index, part index): by their single destination port, or in one list.
    let mut by_port: HashMap<u16, Vec<(usize, usize)>> = HashMap::new();
    let mut general: Vec<(usize, usize)> = Vec::new();
    let mut budget = MAX_COMPARISONS;
    let mut out = Vec::new();
    'rules: for (j, inner) in all.iter().enumerate() {
        // Earlier rules with a part that covers this rule's first part, in
        // order; the first of them whose parts cover all of this rule's.
        let first = &inner[0];
        let exact = single_dport(first).and_then(|p| by_port.get(&p)).map(Vec::as_slice).unwrap_or_default();
        let mut candidates: Vec<usize> = Vec::new();
        for &(i, k) in exact.iter().chain(general.iter()) {
            if budget == 0 {
                break 'rules;
            }
            budget -= 1;
            if part_within(first, &all[i][k]) {
                candidates.push(i);
            }
        }
        candidates.sort_unstable();
        candidates.dedup();
        for i in candidates {
            budget = budget.saturating_sub(inner.len() * all[i].len());
            if inner[1..].iter().all(|p| all[i].iter().any(|o| part_within(p, o))) {
                out.push(ShadowedRule { rule: j, by: i });
                break;
            }
        }
        for (k, part) in inner.iter().enumerate() {
            match single_dport(part) {
                Some(p) => by_port.entry(p).or_default().push((j, k)),
                None => general.push((j, k)),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ProjectName;

    fn rules(lines: &[&str]) -> Vec<Rule> {
        lines
            .iter()
            .enumerate()
            .map(|(i, l)| Rule::parse(&format!("rules[{i}]"), l, &ProjectName::default_project()).unwrap())
            .collect()
    }

    fn shadowed(lines: &[&str]) -> Vec<(usize, usize)> {
        shadowed_rules(&rules(lines)).into_iter().map(|s| (s.rule, s.by)).collect()
    }

    #[test]
    fn warnings_about_one_rule_name_what_shadows_it_and_what_it_shadows() {
        let r = rules(&[
            "pass tcp any any > any 80",
            "deny tcp red any > green 80",
            "deny any any any > any any",
            "pass udp any any > any 53",
        ]);
        let about = |i| warnings_about(&r, i).into_iter().map(|w| (w.field, w.earlier)).collect::<Vec<_>>();
        assert_eq!(about(1), vec![("rules[1]".into(), "rules[0]".into())]);
        assert_eq!(about(2), vec![("rules[3]".into(), "rules[2]".into())]);
        assert_eq!(about(0), vec![("rules[1]".into(), "rules[0]".into())]);
        assert!(about(9).is_empty());
        assert!(covers(&r[2], &r[3]) && !covers(&r[3], &r[2]));
    }

    #[test]
    fn the_cheap_filter_never_rejects_a_rule_that_covers() {
        let mut lines = Vec::new();
        for proto in ["any", "tcp", "udp"] {
            for (s, d) in [("any", "any"), ("red", "green"), ("green", "red"), ("10.0.0.0/8", "any"), ("10.1.0.0/16", "green")] {
                for (sp, dp) in [("any", "any"), ("any", "80"), ("1-100", "80"), ("50-60,61-70", "80,443"), ("55-65", "1-1000")] {
                    let (sp, dp) = if proto == "any" { ("any", "any") } else { (sp, dp) };
                    for dir in [">", "<>"] {
                        lines.push(format!("pass {proto} {s} {sp} {dir} {d} {dp}"));
                    }
                }
            }
        }
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let r = rules(&refs);
        let mut covering = 0;
        for outer in &r {
            for inner in &r {
                if covers(outer, inner) {
                    covering += 1;
                    assert!(may_cover(outer, inner), "{outer:?} covers {inner:?}");
                }
            }
        }
        assert!(covering > r.len(), "the cases include real covers ({covering})");
    }

    #[test]
    fn a_rule_after_a_pass_all_is_shadowed() {
        assert_eq!(shadowed(&["pass any any any <> any any", "deny tcp red any > green 22"]), vec![(1, 0)]);
    }

    #[test]
    fn a_repeated_rule_is_shadowed_by_the_first() {
        assert_eq!(
            shadowed(&["deny tcp any any > any 22", "pass tcp any any > any 80", "deny tcp any any > any 22"]),
            vec![(2, 0)]
        );
    }

    #[test]
    fn a_narrower_port_range_and_cidr_are_shadowed() {
        assert_eq!(
            shadowed(&["deny tcp 10.0.0.0/8 any > any 1000-2000", "pass tcp 10.1.0.0/16 any > any 1500,1600-1700"]),
            vec![(1, 0)]
        );
    }

    #[test]
    fn a_wider_later_rule_is_not_shadowed() {
        assert!(shadowed(&["deny tcp any any > any 22", "pass tcp any any > any any"]).is_empty());
        assert!(shadowed(&["deny tcp 10.1.0.0/16 any > any 80", "pass tcp 10.0.0.0/8 any > any 80"]).is_empty());
    }

    #[test]
    fn protocol_any_covers_tcp_but_not_the_reverse() {
        assert_eq!(shadowed(&["deny any red any > green any", "pass tcp red any > green 80"]), vec![(1, 0)]);
        assert!(shadowed(&["deny tcp red any > green any", "pass any red any > green any"]).is_empty());
    }

    #[test]
    fn direction_matters() {
        assert!(shadowed(&["pass tcp red any > green 80", "deny tcp green any > red 80"]).is_empty());
        assert!(shadowed(&["pass tcp red any > green 80", "deny tcp red any <> green 80"]).is_empty(), "<> also matches back");
        assert_eq!(shadowed(&["pass tcp red any <> green 80", "deny tcp green 80 > red any"]), vec![(1, 0)]);
        assert_eq!(shadowed(&["pass tcp red any <> green any", "deny tcp red any <> green 22"]), vec![(1, 0)]);
    }

    #[test]
    fn a_network_is_covered_by_any_or_itself_only() {
        assert!(shadowed(&["pass any 10.0.0.0/8 any > any any", "deny any red any > any any"]).is_empty());
        assert!(shadowed(&["pass any red any > any any", "deny any 10.0.0.0/8 any > any any"]).is_empty());
        assert_eq!(shadowed(&["pass any red any > any any", "deny icmp red any > 10.0.0.0/8 any"]), vec![(1, 0)]);
    }

    #[test]
    fn the_first_covering_rule_is_named() {
        assert_eq!(
            shadowed(&["pass tcp any any > any 80", "pass any any any > any any", "deny tcp any any > any 80"]),
            vec![(2, 0)]
        );
    }

    #[test]
    fn parts_covered_by_different_rules_are_not_reported() {
        assert!(
            shadowed(&["pass tcp red any > green 80", "pass tcp green 80 > red any", "deny tcp red any <> green 80"]).is_empty()
        );
    }

    #[test]
    fn a_long_list_of_single_port_rules_is_checked_through_the_port_index() {
        let mut lines: Vec<String> = (0..50_000).map(|i| format!("deny tcp any any > any {}", 10_000 + i)).collect();
        lines.push("pass tcp any any > any 10007".into());
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        assert_eq!(shadowed(&refs), vec![(50_000, 7)]);
    }

    #[test]
    fn warnings_name_the_rule_and_the_earlier_one() {
        let w = rule_warnings(&rules(&["pass any any any <> any any", "deny tcp any any > any 22"]));
        assert_eq!(w.len(), 1);
        assert_eq!((w[0].field.as_str(), w[0].earlier.as_str(), w[0].code.as_str()), ("rules[1]", "rules[0]", "shadowed"));
        assert!(w[0].message.contains("rules[1] is shadowed by rules[0]"));
    }
}
