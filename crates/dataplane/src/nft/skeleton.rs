//! The skeleton of Tessera's three nftables tables: what
//! [`crate::op::KernelOp::NftTablesInstall`] writes (see the module above
//! for what each table does).
//!
//! The agent's health probes of service instances leave the host by a
//! network's bridge with the socket mark of the network's table (so `fwmark
//! T lookup T` routes them in its VRF); `probe_out` marks their connections
//! with [`crate::names::PROBE_MARK`] and the host guard lets the answers in.
//! It matches only connections the host opens (`ct state new`; so it runs
//! after conntrack, at mangle priority, not in `output`, which runs before
//! at raw priority), with a mark of a network's table. What else the host
//! sends into a bridge with a mark is what the kernel answers for a
//! forwarded packet: the TCP resets and ICMP errors of `reject` (marked
//! with the source network's table) and errors such as TTL exceeded (with
//! the packet's mark, by `fwmark_reflect`). They belong to the forwarded
//! packet's connection (state `related`) or to none (`invalid`), never
//! `new`, so they mark nothing. (Were such a connection marked, its answers
//! would still be forwarded to whoever opened it, never delivered to the
//! host: the guard's `ct direction reply` is only ever met by connections
//! the host opened.)

use std::fmt::Write as _;

use crate::names::{POLICY_TABLE, SKELETON_VERSION};
use crate::policy::skeleton_marker;

/// The nft script that (re)creates the three tables, in one transaction.
/// Creating and deleting first makes it work whether or not the tables
/// exist; their elements, chains and maps are lost and must be added again.
pub fn skeleton_script() -> String {
    format!(
        r#"table inet tessera {{}}
delete table inet tessera
table inet tessera {{
    map zones {{
        typeof iifname : ct zone
    }}
    map pz4 {{
        typeof iifname . ip daddr : ct zone
        flags interval
    }}
    map pz6 {{
        typeof iifname . ip6 daddr : ct zone
        flags interval
    }}
    set reach4 {{
        typeof iifname . ip daddr
        flags interval
    }}
    set reach6 {{
        typeof iifname . ip6 daddr
        flags interval
    }}
    set uplinks {{
        type ifname
    }}
{slice_sets}    map extzone4 {{
        typeof ip daddr : ct zone
    }}
    map extzone6 {{
        typeof ip6 daddr : ct zone
    }}
    map extmark4 {{
        type ipv4_addr : mark; counter;
    }}
    map extmark6 {{
        type ipv6_addr : mark; counter;
    }}
    set extout4 {{
        type ipv4_addr; counter;
    }}
    set extout6 {{
        type ipv6_addr; counter;
    }}
    map fipin4 {{
        type ipv4_addr : ipv4_addr
    }}
    map fipin6 {{
        type ipv6_addr : ipv6_addr
    }}
    map fipout4 {{
        typeof ct zone . ip saddr : ip saddr
    }}
    map fipout6 {{
        typeof ct zone . ip6 saddr : ip6 saddr
    }}
    map snat4 {{
        typeof ct zone : ip saddr
    }}
    map snat6 {{
        typeof ct zone : ip6 saddr
    }}
{pub_maps}
    set vteps4 {{
        type ipv4_addr
    }}
    set vteps6 {{
        type ipv6_addr
    }}
    chain prerouting {{
        type filter hook prerouting priority raw; policy accept;
        iifname @uplinks jump from_uplink
        udp dport {{ {vxlan}, {fast} }} ip saddr @vteps4 notrack accept comment "the fabric's tunnels: their flows are tracked inside, in their networks' zones; nothing below is for them"
        udp dport {{ {vxlan}, {fast} }} ip6 saddr @vteps6 notrack accept
        iifname != "tb*" iifname != "tx*" meta l4proto {{ tcp, udp }} fib daddr type local jump to_published
        iifname "tb*" ct zone set iifname . ip daddr map @pz4
        iifname "tx*" ct zone set iifname . ip saddr map @pz4
        iifname "tb*" ct zone set iifname . ip6 daddr map @pz6
        iifname "tx*" ct zone set iifname . ip6 saddr map @pz6
        ct zone set iifname map @zones
        iifname "tx*" meta mark set meta mark | {verified:#x}
    }}
    chain isolation {{
        type filter hook prerouting priority mangle; policy accept;
        ct state new ct event set new,related,assured,destroy comment "no event per TCP state: flow records read new ones, the fast path assured and ended ones"
        iifname "tb*" ct state new meta nfproto ipv4 iifname . ip daddr != @reach4 {isolation_log}
        iifname "tb*" ct state new meta nfproto ipv6 iifname . ip6 daddr != @reach6 {isolation_log}
    }}
    chain from_uplink {{
        ct zone set ip daddr map @extzone4
        ct zone set ip6 daddr map @extzone6
        meta mark set ip daddr map @extmark4
        meta mark set ip6 daddr map @extmark6
    }}
    chain to_published {{
{pub_rules}    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        udp dport {{ {vxlan}, {fast} }} ip saddr != @vteps4 counter drop comment "VXLAN from a host outside the fabric"
        udp dport {{ {vxlan}, {fast} }} ip6 saddr != @vteps6 counter drop comment "VXLAN from a host outside the fabric"
        iifname "tb*" jump from_overlay
        iifname "tx*" jump from_overlay
    }}
    chain from_overlay {{
        icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, mld-listener-report, mld2-listener-report }} accept
        ct direction reply ct mark & {published:#x} == {published:#x} accept comment "answers to the host's own use of a published port"
        ct direction reply ct mark & {probe:#x} == {probe:#x} accept comment "answers to the agent's health probes"
        iifname "tb*" udp dport 67 accept comment "DHCP, answered by the agent"
        iifname "tb*" udp dport 547 accept comment "DHCPv6, answered by the agent"
        counter drop comment "a container towards the host itself"
    }}
    chain gw_dnat {{
        type nat hook prerouting priority dstnat; policy accept;
        iifname @uplinks dnat ip to ip daddr map @fipin4
        iifname @uplinks dnat ip6 to ip6 daddr map @fipin6
        iifname != "tb*" iifname != "tx*" meta l4proto {{ tcp, udp }} fib daddr type local jump published_dnat
    }}
    chain pub_dnat_out {{
        type nat hook output priority -100; policy accept;
        meta l4proto {{ tcp, udp }} fib daddr type local jump published_dnat
    }}
    chain published_dnat {{
{pub_dnat}    }}
    chain published {{
        type filter hook prerouting priority mangle; policy accept;
        ct direction original ct zone != 0 iifname != "tb*" iifname != "tx*" fib daddr type local ct mark set ct mark | {published:#x}
        ct direction reply ct mark & {published:#x} == {published:#x} meta mark set meta mark | {published:#x}
    }}
    chain published_out {{
        type filter hook output priority mangle; policy accept;
        ct direction original ct zone != 0 fib daddr type local ct mark set ct mark | {published:#x}
    }}
    chain probe_out {{
        type filter hook output priority mangle; policy accept;
        oifname "tb*" ct state new meta mark {vrf_lo:#x}-{vrf_hi:#x} ct mark set ct mark | {probe:#x} comment "the agent's health probes"
    }}
    chain pub_snat {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "tb*" ct mark & {published:#x} == {published:#x} ip saddr 127.0.0.0/8 masquerade
    }}
    chain gw_forward {{
        type filter hook forward priority filter - 10; policy accept;
        iifname @uplinks jump from_outside
    }}
    chain from_outside {{
        ct state established,related accept
        ct status dnat accept
        counter drop comment "from the outside, to no floating IP"
    }}
    chain gw_snat {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname @uplinks jump to_outside_nat
    }}
    chain to_outside_nat {{
        snat ip to ct zone . ip saddr map @fipout4
        snat ip6 to ct zone . ip6 saddr map @fipout6
{slice_rules}        snat ip to ct zone map @snat4
        snat ip6 to ct zone map @snat6
        counter drop comment "towards the outside, with no floating IP or SNAT"
    }}
    chain tunnel_out {{
        type filter hook postrouting priority filter; policy accept;
        oifname "tx*" meta mark set 0 comment "the tunnel's own route is the host's"
    }}
    chain gw_out {{
        type filter hook postrouting priority srcnat + 10; policy accept;
        oifname @uplinks jump to_outside
    }}
    chain to_outside {{
        udp dport {{ {vxlan}, {fast} }} ip daddr @vteps4 accept comment "the fabric's tunnels (not tracked)"
        udp dport {{ {vxlan}, {fast} }} ip6 daddr @vteps6 accept
        ct state invalid,untracked counter drop comment "towards the outside, not tracked"
        ct zone 0 accept
        ip saddr @extout4
        ip6 saddr @extout6
        ct status snat accept
        ct status dnat accept
        counter drop comment "towards the outside, untranslated"
    }}
    chain output {{
        type filter hook output priority raw; policy accept;
        udp dport {{ {vxlan}, {fast} }} ip daddr @vteps4 notrack accept comment "the fabric's tunnels; nothing below is for them"
        udp dport {{ {vxlan}, {fast} }} ip6 daddr @vteps6 notrack accept
        meta l4proto {{ tcp, udp }} fib daddr type local jump to_published
        oifname "tb*" icmp type redirect drop
        oifname "tb*" icmpv6 type nd-redirect drop
        ct zone set oifname map @zones comment "{v}"
    }}
}}
table bridge tessera {{}}
delete table bridge tessera
table bridge tessera {{
    set ep4 {{
        type ifname . ether_addr . ipv4_addr
    }}
    set ep6 {{
        type ifname . ether_addr . ipv6_addr
    }}
    set epmac {{
        type ifname . ether_addr
    }}
    set svcmac {{
        type ifname . ether_addr
    }}
    chain prerouting {{
        type filter hook prerouting priority filter; policy accept;
        iifname != "tv*" accept
        ether type ip iifname . ether saddr . ip saddr @ep4 meta mark set meta mark | {verified:#x} accept
        ether type arp iifname . ether saddr . arp saddr ip @ep4 iifname . arp saddr ether @epmac meta mark set meta mark | {verified:#x} accept
        ether type ip6 iifname . ether saddr . ip6 saddr @ep6 meta mark set meta mark | {verified:#x} accept
        ether type ip6 ip6 saddr fe80::/10 iifname . ether saddr @epmac meta mark set meta mark | {verified:#x} accept
        ether type ip6 ip6 saddr :: ip6 nexthdr icmpv6 iifname . ether saddr @epmac meta mark set meta mark | {verified:#x} accept
        ether type ip ip saddr 0.0.0.0 udp sport 68 udp dport 67 iifname . ether saddr @epmac accept
        ether type ip iifname . ether saddr @svcmac meta mark set meta mark | {verified:#x} accept
        ether type ip6 iifname . ether saddr @svcmac meta mark set meta mark | {verified:#x} accept
        {spoof_log}
        counter drop comment "{v}"
    }}
}}
table inet {p} {{}}
delete table inet {p}
table inet {p} {{
    map digests {{
        type ipv6_addr : ipv6_addr
        elements = {{ {mk} : {mv} }}
    }}
    chain dispatch {{
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        ct state established,related accept
        jump dispatch
    }}
    chain {steer} {{
    }}
    chain prerouting {{
        type filter hook prerouting priority mangle + 10; policy accept;
        jump {steer}
    }}
}}
"#,
        v = SKELETON_VERSION,
        slice_sets = slice_sets(),
        pub_maps = pub_maps(),
        pub_rules = pub_rules(),
        pub_dnat = pub_dnat(),
        published = crate::names::PUBLISHED_MARK,
        slice_rules = slice_rules(),
        vxlan = crate::desired::VXLAN_PORT,
        fast = crate::fastpath::FASTPATH_PORT,
        verified = crate::names::VERIFIED_MARK,
        probe = crate::names::PROBE_MARK,
        vrf_lo = crate::names::TABLE_BASE + tessera_model::Vni::MIN,
        vrf_hi = crate::names::TABLE_BASE + tessera_model::Vni::MAX,
        steer = crate::names::STEER,
        spoof_log = crate::nflog::DropKind::Spoof.log_statement(),
        isolation_log = crate::nflog::DropKind::Isolation.log_statement(),
        p = POLICY_TABLE,
        mk = std::net::Ipv6Addr::from(skeleton_marker().0),
        mv = std::net::Ipv6Addr::from(skeleton_marker().1),
    )
}

/// The maps of published ports: `pub<z|m|d><4|6>[any]` (zone, mark,
/// destination NAT), keyed by host address, protocol and port, or (`any`)
/// protocol and port.
fn pub_maps() -> String {
    let mut out = String::new();
    for (fam, addr) in [("4", "ip"), ("6", "ip6")] {
        for (any, key) in
            [("", format!("{addr} daddr . meta l4proto . th dport")), ("any", "meta l4proto . th dport".to_string())]
        {
            for (kind, value) in
                [("z", "ct zone".to_string()), ("m", "meta mark".to_string()), ("d", format!("{addr} daddr . th dport"))]
            {
                let _ = writeln!(out, "    map pub{kind}{fam}{any} {{\n        typeof {key} : {value}\n    }}");
            }
        }
    }
    out
}

/// The rules that give what is for a published port (a TCP or UDP packet
/// for a local address, from anywhere but a network) its network's zone
/// and the mark of its network's table (which routes it there once
/// translated).
fn pub_rules() -> String {
    let mut out = String::new();
    for (kind, what) in [("z", "ct zone"), ("m", "meta mark")] {
        for (fam, addr, proto) in [("4", "ip", "ipv4"), ("6", "ip6", "ipv6")] {
            let _ = writeln!(out, "        {what} set {addr} daddr . meta l4proto . th dport map @pub{kind}{fam}");
            let _ = writeln!(out, "        meta nfproto {proto} {what} set meta l4proto . th dport map @pub{kind}{fam}any");
        }
    }
    out
}

/// The destination NAT of published ports.
fn pub_dnat() -> String {
    let mut out = String::new();
    for (fam, addr, proto) in [("4", "ip", "ipv4"), ("6", "ip6", "ipv6")] {
        let _ = writeln!(out, "        dnat {addr} to {addr} daddr . meta l4proto . th dport map @pubd{fam}");
        let _ = writeln!(out, "        meta nfproto {proto} dnat {addr} to meta l4proto . th dport map @pubd{fam}any");
    }
    out
}

/// The sets of uplinks of each SNAT port slice.
fn slice_sets() -> String {
    crate::observed::SLICE_SETS.iter().map(|s| format!("    set {s} {{\n        type ifname\n    }}\n")).collect()
}

/// The SNAT of TCP and UDP to the ports of the uplink's slice.
fn slice_rules() -> String {
    let mut out = String::new();
    for (i, set) in crate::observed::SLICE_SETS.iter().enumerate() {
        let (lo, hi) = crate::names::snat_ports(i as u16);
        for (family, map) in [("ip", "snat4"), ("ip6", "snat6")] {
            for proto in ["tcp", "udp"] {
                let _ =
                    writeln!(out, "        oifname @{set} meta l4proto {proto} snat {family} to ct zone map @{map} : {lo}-{hi}");
            }
        }
    }
    out
}
