//! The `steer` chain of `inet tessera_policy`: which packets of a service
//! chain go to which service instance (pure).
//!
//! The policy table's `prerouting` base chain (`priority mangle + 10`:
//! after `inet tessera`'s raw-priority prerouting, which marks what comes
//! out of a tunnel as verified, and after the bridge table's
//! anti-spoofing, which marks what a port may send) jumps to `steer`. Per
//! [`DesiredSteer`], in order, a rule matches what enters the network's
//! bridge or tunnel (`iifname { "tb<V>", "tx<V>" }`), not from the ports
//! of the instances it steers to, verified, of the steering's addresses,
//! protocol and ports, and sets the packet mark to
//! `VERIFIED_MARK | STEER_MARK | i`: `i` is the host-wide number of the
//! target ([`DesiredHost::steer_first_targets`] plus the target's place),
//! picked by `jhash` of the flow's addresses (and ports, for TCP and UDP)
//! modulo the number of targets, with the seed [`STEER_SEED`] every host
//! uses. A reverse steering (the answers) hashes the same fields with
//! source and destination swapped, so both directions of a flow take one
//! instance on every host. The rule `fwmark STEER|i/STEER_MASK lookup
//! STEER_TABLE_BASE+i` then routes the packet by the target's table
//! (`default via ADDRESS dev tb<V>|tx<V> onlink`).
//!
//! A steering without targets fails closed: its packets are counted and
//! dropped. The mark keeps [`VERIFIED_MARK`]: between the chain's install
//! and its target's rule and route (a plan applies nftables and netlink
//! side by side), a packet is routed by its network as if it were not
//! steered. The mark's other bits are replaced.
//!
//! The chain, like `dispatch`, is the skeleton's (never deleted) and its
//! rules the planner's, replaced when their digest changes.

use crate::desired::{bridge_name, vxlan_name, DesiredHost, DesiredSteer};
use crate::names::{STEER_MARK, STEER_SEED, VERIFIED_MARK};

use super::chains::{chain, ChainKind, ChainSpec};

/// Longest comment nft keeps (`NFT_USERDATA_MAXLEN` is 256 bytes, nft
/// refuses more than 128).
const COMMENT_MAX: usize = 120;

/// The `steer` chain of `desired`: the rules of its steerings, in order,
/// then `return`.
pub fn steer_chain(desired: &DesiredHost) -> ChainSpec {
    let mut rules = Vec::new();
    for (s, first) in desired.steering.iter().zip(desired.steer_first_targets()) {
        steer_rules(&mut rules, s, first);
    }
    chain(ChainKind::Steer, rules, "return", None)
}

/// The rules of one steering whose first target has number `first`.
fn steer_rules(out: &mut Vec<String>, s: &DesiredSteer, first: u32) {
    let v4 = s.src.first().or(s.dst.first()).is_none_or(|n| n.addr().is_ipv4());
    let ip = if v4 { "ip" } else { "ip6" };
    let mut matches = format!("iifname {{ \"{}\", \"{}\" }}", bridge_name(s.vni), vxlan_name(s.vni));
    if !s.skip_ports.is_empty() {
        let ports: Vec<String> = s.skip_ports.iter().map(|p| format!("\"{p}\"")).collect();
        matches.push_str(&format!(" iifname != {{ {} }}", ports.join(", ")));
    }
    matches.push_str(&format!(" meta mark & {VERIFIED_MARK:#x} == {VERIFIED_MARK:#x}"));
    for (field, nets) in [("saddr", &s.src), ("daddr", &s.dst)] {
        if !nets.is_empty() {
            let nets: Vec<String> = nets.iter().map(|n| n.trunc().to_string()).collect();
            matches.push_str(&format!(" {ip} {field} {{ {} }}", nets.join(", ")));
        }
    }
    let ports = |field: &str, ranges: &[(u16, u16)]| -> String {
        if ranges.is_empty() {
            return String::new();
        }
        let items: Vec<String> =
            ranges.iter().map(|(lo, hi)| if lo == hi { lo.to_string() } else { format!("{lo}-{hi}") }).collect();
        format!(" th {field} {{ {} }}", items.join(", "))
    };
    let ports = format!("{}{}", ports("sport", &s.src_ports), ports("dport", &s.dst_ports));
    let label = sanitize(&s.label);
    if s.targets.is_empty() {
        let protocol = s.protocol.map(|p| format!(" meta l4proto {p}")).unwrap_or_default();
        let comment = sanitize(&format!("{label}: no healthy instance"));
        out.push(format!("{matches}{protocol}{ports} counter drop comment \"{comment}\""));
        return;
    }
    let n = s.targets.len();
    let mark = VERIFIED_MARK | STEER_MARK | first;
    let (a, b) = if s.reverse { ("daddr", "saddr") } else { ("saddr", "daddr") };
    let addresses = format!("{ip} {a} . {ip} {b}");
    let hashed_ports = if s.reverse { "th dport . th sport" } else { "th sport . th dport" };
    let action = |with_ports: bool| -> String {
        if n == 1 {
            return format!("meta mark set {mark:#x}");
        }
        let fields = if with_ports { format!("{addresses} . {hashed_ports}") } else { addresses.clone() };
        format!("meta mark set jhash {fields} mod {n} seed {STEER_SEED:#x} offset {mark:#x}")
    };
    let rule =
        |protocol: &str, with_ports: bool| format!("{matches}{protocol}{ports} {} comment \"{label}\"", action(with_ports));
    match s.protocol {
        // One target: nothing to hash, one rule.
        None if n == 1 => out.push(rule("", false)),
        None => {
            out.push(rule(" meta l4proto { tcp, udp }", true));
            out.push(rule(" meta l4proto != { tcp, udp }", false));
        }
        Some(p) => out.push(rule(&format!(" meta l4proto {p}"), matches!(p, 6 | 17))),
    }
}

/// `text` fit for an nft comment: no quotes, backslashes or control
/// characters, at most [`COMMENT_MAX`] bytes.
fn sanitize(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        let c = match c {
            '"' => '\'',
            '\\' => '/',
            c if c.is_control() => ' ',
            c => c,
        };
        if out.len() + c.len_utf8() > COMMENT_MAX {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::SteerTarget;
    use tessera_model::Vni;

    fn steer(label: &str, src: &[&str], dst: &[&str], protocol: Option<u8>, targets: &[(&str, &str)]) -> DesiredSteer {
        DesiredSteer {
            vni: Vni::new(100).unwrap(),
            label: label.into(),
            src: src.iter().map(|s| s.parse().unwrap()).collect(),
            dst: dst.iter().map(|s| s.parse().unwrap()).collect(),
            protocol,
            src_ports: vec![],
            dst_ports: vec![],
            reverse: false,
            skip_ports: vec![],
            targets: targets.iter().map(|(a, d)| SteerTarget { address: a.parse().unwrap(), dev: d.to_string() }).collect(),
        }
    }

    fn rules(s: &DesiredSteer, first: u32) -> Vec<String> {
        let mut out = Vec::new();
        steer_rules(&mut out, s, first);
        out
    }

    #[test]
    fn a_forward_steering_hashes_source_then_destination() {
        let mut s =
            steer("fw1 left", &["10.1.0.0/24"], &["10.2.0.0/24"], Some(6), &[("10.1.0.10", "tb100"), ("10.1.0.20", "tx100")]);
        s.dst_ports = vec![(80, 80), (8000, 8080)];
        s.skip_ports = vec!["tv00000011".into()];
        assert_eq!(
            rules(&s, 3),
            [concat!(
                r#"iifname { "tb100", "tx100" } iifname != { "tv00000011" } meta mark & 0x20000000 == 0x20000000"#,
                r#" ip saddr { 10.1.0.0/24 } ip daddr { 10.2.0.0/24 } meta l4proto 6 th dport { 80, 8000-8080 }"#,
                r#" meta mark set jhash ip saddr . ip daddr . th sport . th dport mod 2 seed 0x54657373 offset 0x28000003"#,
                r#" comment "fw1 left""#
            )]
        );
    }

    #[test]
    fn a_reverse_steering_hashes_the_same_fields_swapped() {
        let mut s = steer(
            "fw1 right",
            &["2001:db8:2::/64"],
            &["2001:db8:1::/64"],
            Some(17),
            &[("2001:db8:2::10", "tb200"), ("2001:db8:2::20", "tx200"), ("2001:db8:2::30", "tx200")],
        );
        s.vni = Vni::new(200).unwrap();
        s.reverse = true;
        s.src_ports = vec![(53, 53)];
        assert_eq!(
            rules(&s, 0),
            [concat!(
                r#"iifname { "tb200", "tx200" } meta mark & 0x20000000 == 0x20000000"#,
                r#" ip6 saddr { 2001:db8:2::/64 } ip6 daddr { 2001:db8:1::/64 } meta l4proto 17 th sport { 53 }"#,
                r#" meta mark set jhash ip6 daddr . ip6 saddr . th dport . th sport mod 3 seed 0x54657373 offset 0x28000000"#,
                r#" comment "fw1 right""#
            )]
        );
    }

    #[test]
    fn any_protocol_hashes_ports_of_tcp_and_udp_only() {
        let s = steer("f", &["10.1.0.0/24"], &["10.2.0.0/24"], None, &[("10.1.0.10", "tb100"), ("10.1.0.20", "tb100")]);
        let r = rules(&s, 5);
        assert_eq!(r.len(), 2, "{r:#?}");
        assert!(r[0].contains(" meta l4proto { tcp, udp } meta mark set jhash ip saddr . ip daddr . th sport . th dport mod 2"));
        assert!(r[1].contains(" meta l4proto != { tcp, udp } meta mark set jhash ip saddr . ip daddr mod 2"));
        let icmp =
            rules(&steer("f", &["10.1.0.0/24"], &["10.2.0.0/24"], Some(1), &[("10.1.0.10", "tb100"), ("10.1.0.20", "tb100")]), 5);
        assert!(icmp[0].contains(" meta l4proto 1 meta mark set jhash ip saddr . ip daddr mod 2 "), "{icmp:#?}");
    }

    #[test]
    fn one_target_is_a_plain_mark() {
        let s = steer("f", &["10.1.0.0/24"], &["10.2.0.0/24"], None, &[("10.1.0.10", "tb100")]);
        assert_eq!(
            rules(&s, 7),
            [concat!(
                r#"iifname { "tb100", "tx100" } meta mark & 0x20000000 == 0x20000000 ip saddr { 10.1.0.0/24 }"#,
                r#" ip daddr { 10.2.0.0/24 } meta mark set 0x28000007 comment "f""#
            )]
        );
    }

    #[test]
    fn no_target_fails_closed() {
        let s = steer("fw1 \"left\"", &["10.1.0.0/24"], &["10.2.0.0/24"], Some(6), &[]);
        assert_eq!(
            rules(&s, 0),
            [concat!(
                r#"iifname { "tb100", "tx100" } meta mark & 0x20000000 == 0x20000000 ip saddr { 10.1.0.0/24 }"#,
                r#" ip daddr { 10.2.0.0/24 } meta l4proto 6 counter drop comment "fw1 'left': no healthy instance""#
            )]
        );
    }

    #[test]
    fn comments_are_cut_to_what_nft_keeps() {
        assert_eq!(sanitize(&"é".repeat(100)).len(), COMMENT_MAX);
        assert_eq!(sanitize("a\\b\nc"), "a/b c");
    }
}
