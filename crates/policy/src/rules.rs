//! From one rule to flow boxes, for one ordered pair of networks, and the
//! reference (uncompiled) matcher the compiled form is checked against.
//!
//! A rule is specialised to a flow from network `S` to network `D`: an
//! endpoint `Network(N)` matches the side whose network *is* `N` (identity,
//! not address, so that overlapping subnets of unrelated networks never
//! match by accident); `Any` matches any address of the side; `Cidr(C)`
//! matches addresses in `C`, and cannot match a side none of whose subnets
//! overlaps `C` (its endpoints' addresses are in its subnets: anti-spoofing
//! sees to that on the way in, and routes on the way out).

use tessera_model::{Direction, Network, PortRange, Protocol, Rule, RuleEndpoint};

use crate::flow::{addr_bits, net_range, Family, Flow, FlowBox};

/// What rule specialisation needs to know about one side of a pair: the
/// network, the families of its subnets and their ranges.
#[derive(Debug, Clone)]
pub struct Side<'a> {
    pub network: &'a Network,
    families: [bool; 2],
    ranges: Vec<(Family, (u128, u128))>,
}

impl<'a> Side<'a> {
    /// The side of `network`: its subnets; for an external network, the
    /// whole outside of the families of its subnets (its flows come from,
    /// and go to, any address beyond its gateways).
    pub fn of(network: &'a Network) -> Self {
        let mut ranges: Vec<(Family, (u128, u128))> =
            network.subnets.iter().map(|s| (Family::of(s.cidr.addr()), net_range(&s.cidr))).collect();
        let families = [ranges.iter().any(|r| r.0 == Family::V4), ranges.iter().any(|r| r.0 == Family::V6)];
        if network.external {
            ranges = [Family::V4, Family::V6]
                .into_iter()
                .zip(families)
                .filter(|(_, present)| *present)
                .map(|(f, _)| (f, (0, f.max())))
                .collect();
        }
        Side { network, families, ranges }
    }
}

/// At most two address ranges (one per family).
type Ranges = [Option<(Family, (u128, u128))>; 2];

/// The address ranges an endpoint matches on `side`, by family; `None` when
/// it cannot match that side at all.
fn endpoint_ranges(e: &RuleEndpoint, side: &Side) -> Option<Ranges> {
    let all = || -> Ranges {
        let f = |i: usize, fam: Family| side.families[i].then_some((fam, (0, fam.max())));
        [f(0, Family::V4), f(1, Family::V6)]
    };
    match e {
        RuleEndpoint::Any => Some(all()),
        RuleEndpoint::Network(n) if *n == side.network.fq_name => Some(all()),
        RuleEndpoint::Network(_) => None,
        RuleEndpoint::Cidr(c) => {
            let family = Family::of(c.addr());
            let range = net_range(c);
            let touches = side.ranges.iter().any(|(f, (lo, hi))| *f == family && *lo <= range.1 && range.0 <= *hi);
            touches.then_some([Some((family, range)), None])
        }
    }
}

/// The protocol range a rule's protocol matches, and the only family it can
/// occur in (`icmp` is IPv4's, `icmpv6` IPv6's).
pub(crate) fn protocol_range(p: Protocol) -> ((u8, u8), Option<Family>) {
    match p {
        Protocol::Any => ((0, u8::MAX), None),
        Protocol::Tcp => ((6, 6), None),
        Protocol::Udp => ((17, 17), None),
        Protocol::Icmp => ((1, 1), Some(Family::V4)),
        Protocol::Icmpv6 => ((58, 58), Some(Family::V6)),
        Protocol::Number(n) => ((n, n), None),
    }
}

const ANY_PORT: [PortRange; 1] = [PortRange { start: 0, end: u16::MAX }];

fn port_ranges(ports: &[PortRange]) -> &[PortRange] {
    if ports.is_empty() {
        &ANY_PORT
    } else {
        ports
    }
}

/// The boxes of flows from `src` to `dst` that `rule` matches: pairwise
/// disjoint (a `<>` rule's two directions overlap where both ports match; the
/// overlap is cut out of the second), in a deterministic order. Empty when
/// the rule cannot match such a flow.
pub fn rule_boxes(rule: &Rule, src: &Network, dst: &Network) -> Vec<FlowBox> {
    let mut out = Vec::new();
    rule_boxes_into(rule, &Side::of(src), &Side::of(dst), &mut out);
    out
}

/// [`rule_boxes`] for prepared sides, appended to `out`.
pub fn rule_boxes_into(rule: &Rule, src: &Side, dst: &Side, out: &mut Vec<FlowBox>) {
    let (proto, only) = protocol_range(rule.protocol);
    let first = out.len();
    let add = |out: &mut Vec<FlowBox>, from: &RuleEndpoint, to: &RuleEndpoint, sports: &[PortRange], dports: &[PortRange]| {
        let (Some(s), Some(d)) = (endpoint_ranges(from, src), endpoint_ranges(to, dst)) else { return };
        for (sf, sr) in s.iter().flatten() {
            for (df, dr) in d.iter().flatten() {
                if sf != df || only.is_some_and(|f| f != *sf) {
                    continue;
                }
                for sp in port_ranges(sports) {
                    for dp in port_ranges(dports) {
                        let b = FlowBox {
                            family: *sf,
                            src: *sr,
                            dst: *dr,
                            proto,
                            sport: (sp.start, sp.end),
                            dport: (dp.start, dp.end),
                        };
                        if !out[first..].iter().any(|e| e.overlaps(&b)) {
                            out.push(b);
                            continue;
                        }
                        let mut pieces = vec![b];
                        for earlier in &out[first..] {
                            pieces = pieces.into_iter().flat_map(|p| subtract(p, earlier)).collect();
                        }
                        out.extend(pieces);
                    }
                }
            }
        }
    };
    add(out, &rule.src, &rule.dst, &rule.src_ports, &rule.dst_ports);
    if rule.direction == Direction::Both {
        // The other way: from the rule's destination to its source, ports swapped.
        add(out, &rule.dst, &rule.src, &rule.dst_ports, &rule.src_ports);
    }
}

/// `b` minus `a`: at most two pieces per dimension, disjoint from `a` and
/// from each other.
fn subtract(b: FlowBox, a: &FlowBox) -> Vec<FlowBox> {
    if !b.overlaps(a) {
        return vec![b];
    }
    fn cut<T: Copy + Ord + Step>(
        out: &mut Vec<FlowBox>,
        rest: &mut FlowBox,
        get: impl Fn(&mut FlowBox) -> &mut (T, T),
        (alo, ahi): (T, T),
    ) {
        let (lo, hi) = *get(rest);
        if lo < alo {
            let mut piece = *rest;
            *get(&mut piece) = (lo, alo.prev());
            out.push(piece);
            get(rest).0 = alo;
        }
        if hi > ahi {
            let mut piece = *rest;
            *get(&mut piece) = (ahi.next(), hi);
            out.push(piece);
            get(rest).1 = ahi;
        }
    }
    let mut out = Vec::new();
    let mut rest = b;
    cut(&mut out, &mut rest, |x| &mut x.src, a.src);
    cut(&mut out, &mut rest, |x| &mut x.dst, a.dst);
    cut(&mut out, &mut rest, |x| &mut x.proto, a.proto);
    cut(&mut out, &mut rest, |x| &mut x.sport, a.sport);
    cut(&mut out, &mut rest, |x| &mut x.dport, a.dport);
    // What is left of `b` lies inside `a`.
    out
}

/// Neighbouring values (only called away from the type's ends).
trait Step {
    fn prev(self) -> Self;
    fn next(self) -> Self;
}

macro_rules! step {
    ($($t:ty),*) => {$(
        impl Step for $t {
            fn prev(self) -> Self { self - 1 }
            fn next(self) -> Self { self + 1 }
        }
    )*};
}
step!(u8, u16, u128);

fn endpoint_matches(e: &RuleEndpoint, side: &Network, addr: std::net::IpAddr) -> bool {
    match e {
        RuleEndpoint::Any => true,
        RuleEndpoint::Network(n) => *n == side.fq_name,
        RuleEndpoint::Cidr(c) => c.contains(&addr),
    }
}

fn port_matches(ports: &[PortRange], port: u16) -> bool {
    ports.is_empty() || ports.iter().any(|r| (r.start..=r.end).contains(&port))
}

/// The reference matcher: whether `rule` matches `flow` going from network
/// `src` to network `dst`, read straight from the rule (no compilation).
/// The compiled form must agree with it on every flow; the tests check that.
pub fn rule_matches(rule: &Rule, src: &Network, dst: &Network, flow: &Flow) -> bool {
    let ((plo, phi), only) = protocol_range(rule.protocol);
    if !(plo..=phi).contains(&flow.proto) || only.is_some_and(|f| f != Family::of(flow.src)) {
        return false;
    }
    let one_way = |from: &RuleEndpoint, to: &RuleEndpoint, sports: &[PortRange], dports: &[PortRange]| {
        endpoint_matches(from, src, flow.src)
            && endpoint_matches(to, dst, flow.dst)
            && port_matches(sports, flow.sport)
            && port_matches(dports, flow.dport)
    };
    one_way(&rule.src, &rule.dst, &rule.src_ports, &rule.dst_ports)
        || (rule.direction == Direction::Both && one_way(&rule.dst, &rule.src, &rule.dst_ports, &rule.src_ports))
}

/// Whether `addr` lies in one of the network's subnets.
pub fn in_network(net: &Network, addr: std::net::IpAddr) -> bool {
    let a = addr_bits(addr);
    net.subnets.iter().any(|s| {
        let (lo, hi) = net_range(&s.cidr);
        Family::of(s.cidr.addr()) == Family::of(addr) && (lo..=hi).contains(&a)
    })
}
