//! Tessera's nftables tables, as values: the skeleton, the script that
//! carries out a plan's nftables actions in one transaction, and the parsers
//! of `nft -j list` output. Pure; [`crate::linux`] runs `nft`.
//!
//! `table inet tessera` gives each network's traffic its own conntrack zone
//! (`ct zone set iifname map @zones`), so that overlapping addresses in
//! different networks never share conntrack entries. Two networks that route
//! to each other share a *pair zone* for the flows between them (maps `pz4`
//! and `pz6`: a packet entering a bridge towards the other network's
//! subnets, or a tunnel from them), so that both directions of such a flow
//! meet in one zone on every host; the first `ct zone set` that matches a
//! packet wins, so the pair lookups come first. Its output chain also drops
//! the ICMP redirects the host would send on a bridge: traffic between two
//! endpoints of one bridge is routed through the host on purpose (see
//! [`crate::desired::bridge_sysctls`]).
//!
//! Its input chain is the host's own guard: VXLAN (UDP port 4789, and the
//! fast path's 4799) is
//! accepted only from the underlay addresses of the fabric's hosts (sets
//! `vteps4`, `vteps6`), so a packet injected on the underlay from elsewhere
//! never reaches a network; and nothing that enters from a network (a bridge
//! or a tunnel) reaches the host itself but IPv6 neighbour discovery (the
//! bridge answers for its gateway addresses): a container cannot reach the
//! host's services (the controller's port included), nor any of its
//! addresses, the gateway's included.
//!
//! On a gateway host, its uplinks (set `uplinks`) are where the outside
//! is: what arrives there for an external address (a floating IP, a
//! network's SNAT address) gets its network's conntrack zone and the mark
//! of its network's table (`extzone4|6`, `extmark4|6`), and a floating IP
//! is translated to its endpoint's address (`fipin4|6`, chain `gw_dnat`);
//! nothing else from the outside is forwarded (`gw_forward`). What leaves
//! by an uplink is translated to its endpoint's floating IP (`fipout4|6`)
//! or its network's SNAT address (`snat4|6`, TCP and UDP ports of the
//! host's slice: sets `slice0`..`slice15`), or dropped (`gw_snat`); a
//! forwarded packet that leaves untranslated (an answer the gateway has no
//! flow for, after a gateway took a network over) is dropped too
//! (`gw_out`), so no private address ever reaches the outside.
//!
//! A packet that enters a tunnel leaves its mark behind (`tunnel_out`):
//! the marks that chose its network's table (a translated packet's, a
//! reject's) would otherwise choose the route of the encapsulated packet
//! too, and the underlay is reached through the host's own tables.
//!
//! `table bridge tessera` is the anti-spoofing filter of endpoint ports: a
//! frame that enters a `tv*` port passes only if its (port, MAC, source
//! address) is in a set, so the cost per frame does not grow with the number
//! of endpoints. A service instance's port (set `svcmac`) forwards traffic
//! of other addresses: its IP packets pass with its own MAC, whatever their
//! source address.
//!
//! The agent's health probes of service instances are answered through the
//! host guard: `probe_out` marks the connections the host opens into a
//! bridge with a network's table as socket mark (see the skeleton).
//!
//! `table inet tessera_policy` is the firewall of flows between and within
//! networks (see [`crate::policy`]), and steers the packets of service
//! chains to service instances (chain `steer`, jumped to from its
//! prerouting hook).
//!
//! Everything is written in nft's own syntax, as one script per plan run by
//! `nft -f -`: one transaction. (nft 1.0.6, Debian 12, cannot declare a
//! `typeof ... : ct zone` map in JSON.) Listings are read as JSON.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;
use tessera_model::MacAddr;
use tessera_policy::Family;

use crate::names::{DIGESTS, POLICY_TABLE, SKELETON_VERSION};
use crate::observed::{NftElement, NftState, ObservedChain, ObservedMap};
use crate::op::KernelOp;
pub mod external;
mod skeleton;
pub use skeleton::skeleton_script;

use crate::policy::{derive_digests, map_family, map_fields, map_key_text, map_type, skeleton_marker, ElementCounter};

/// Longest error text kept from `nft` (it echoes the offending input, which
/// may be a line of thousands of elements).
const ERROR_MAX: usize = 2000;

/// `message`, cut to [`ERROR_MAX`] bytes.
pub fn shorten(mut message: String) -> String {
    if message.len() > ERROR_MAX {
        let mut cut = ERROR_MAX;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str(" …");
    }
    message
}

/// How many map elements go on one line of a script.
const ELEMENTS_PER_LINE: usize = 512;

fn element_lines<'a>(out: &mut String, verb: &str, map: &str, items: impl Iterator<Item = String> + 'a) {
    let items: Vec<String> = items.collect();
    for chunk in items.chunks(ELEMENTS_PER_LINE) {
        let _ = writeln!(out, "{verb} element inet {POLICY_TABLE} {map} {{ {} }}", chunk.join(", "));
    }
}

/// The nft script of a block of nftables actions, in their order. With
/// `skip_deletes`, deletions of the given objects are left out (what a retry
/// does after finding them gone).
pub fn script(block: &[&KernelOp], skip: &dyn Fn(&KernelOp) -> bool) -> String {
    let mut out = String::new();
    for action in block {
        if skip(action) {
            continue;
        }
        match action {
            KernelOp::NftTablesInstall => out.push_str(&skeleton_script()),
            KernelOp::NftSetElementAdd(e) => {
                let _ = writeln!(out, "add element {e}");
            }
            KernelOp::NftSetElementDelete(e) => {
                let _ = writeln!(out, "delete element {e}");
            }
            KernelOp::NftMapAdd { name, family } => {
                let _ = writeln!(out, "add map inet {POLICY_TABLE} {name} {{ {} }}", map_type(name, *family));
            }
            KernelOp::NftMapDelete { name } => {
                let _ = writeln!(out, "delete map inet {POLICY_TABLE} {name}");
            }
            KernelOp::NftMapElementsAdd { map, elements } => {
                element_lines(
                    &mut out,
                    "add",
                    map,
                    elements.iter().map(|e| format!("{} : {}", map_key_text(map, &e.key), e.verdict)),
                );
            }
            KernelOp::NftMapElementsDelete { map, elements } => {
                element_lines(&mut out, "delete", map, elements.iter().map(|e| map_key_text(map, &e.key)));
            }
            KernelOp::NftChainInstall { name, rules } => {
                let _ = writeln!(out, "add chain inet {POLICY_TABLE} {name}");
                let _ = writeln!(out, "flush chain inet {POLICY_TABLE} {name}");
                for r in rules {
                    let _ = writeln!(out, "add rule inet {POLICY_TABLE} {name} {r}");
                }
            }
            KernelOp::NftChainDelete { name } => {
                let _ = writeln!(out, "delete chain inet {POLICY_TABLE} {name}");
            }
            KernelOp::NftMapFlush { map } => {
                let _ = writeln!(out, "flush map inet {POLICY_TABLE} {map}");
            }
            KernelOp::NftDigestsUpdate { deletes, adds } => {
                let v6 = |x: &u128| std::net::Ipv6Addr::from(*x).to_string();
                let dels = deletes.iter().map(|(k, _)| v6(k));
                element_lines(&mut out, "delete", DIGESTS, dels);
                let ads = adds.iter().map(|(k, v)| format!("{} : {}", v6(k), v6(v)));
                element_lines(&mut out, "add", DIGESTS, ads);
            }
            _ => {}
        }
    }
    out
}

/// What the cheap listings of `inet tessera_policy` say: `nft -j list
/// chains` (the planner-managed chains: those of the table without a hook),
/// `nft -j -t list maps` (the verdict maps and their families) and `nft -j
/// list map inet tessera_policy digests`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyListing {
    pub chains: BTreeSet<String>,
    pub maps: BTreeMap<String, Family>,
    pub digests: BTreeMap<u128, u128>,
}

fn nft_objects(doc: &str) -> Result<Vec<Value>, String> {
    let v: Value = serde_json::from_str(doc).map_err(|e| format!("nft output is not JSON: {e}"))?;
    match v {
        Value::Object(mut o) => match o.remove("nftables") {
            Some(Value::Array(objects)) => Some(objects),
            _ => None,
        },
        _ => None,
    }
    .ok_or_else(|| "nft output has no \"nftables\" array".to_string())
}

fn ours(obj: &Value) -> bool {
    obj.get("family").and_then(Value::as_str) == Some("inet") && obj.get("table").and_then(Value::as_str) == Some(POLICY_TABLE)
}

/// Parses the three listings (`None` for the digests when the table does
/// not exist).
pub fn parse_policy_listing(chains: &str, maps: &str, digests: Option<&str>) -> Result<PolicyListing, String> {
    let mut out = PolicyListing::default();
    for obj in nft_objects(chains)? {
        let Some(chain) = obj.get("chain").filter(|c| ours(c)) else { continue };
        if chain.get("hook").is_none() {
            out.chains.insert(chain.get("name").and_then(Value::as_str).unwrap_or_default().to_string());
        }
    }
    for obj in nft_objects(maps)? {
        let Some(map) = obj.get("map").filter(|m| ours(m)) else { continue };
        let name = map.get("name").and_then(Value::as_str).unwrap_or_default();
        if name == DIGESTS {
            continue;
        }
        // The name says the family (a hash of ports has no address field).
        let Some(family) = map_family(name) else { continue };
        out.maps.insert(name.to_string(), family);
    }
    let Some(digests) = digests else { return Ok(out) };
    let v6 = |v: &Value| -> Option<u128> { v.as_str()?.parse::<std::net::Ipv6Addr>().ok().map(u128::from) };
    for obj in nft_objects(digests)? {
        let Some(map) = obj.get("map") else { continue };
        for elem in map.get("elem").and_then(Value::as_array).into_iter().flatten() {
            let pair = elem.as_array().filter(|p| p.len() == 2).ok_or_else(|| format!("cannot read digest {elem}"))?;
            let (Some(k), Some(v)) = (v6(&pair[0]), v6(&pair[1])) else { return Err(format!("cannot read digest {elem}")) };
            out.digests.insert(k, v);
        }
    }
    Ok(out)
}

fn json_u128_addr(v: &Value) -> Option<(Family, u128)> {
    let a: IpAddr = v.as_str()?.parse().ok()?;
    Some((Family::of(a), tessera_policy::flow::addr_bits(a)))
}

/// One field of a concatenated key: `(lo, hi)`, and the family for address
/// fields.
fn json_range(v: &Value) -> Option<(Option<Family>, u128, u128)> {
    if let Some(p) = v.get("prefix") {
        let (family, addr) = json_u128_addr(p.get("addr")?)?;
        let len = u32::try_from(p.get("len")?.as_u64()?).ok()?;
        let host = family.bits().checked_sub(len)?;
        let mask = if host >= 128 { u128::MAX } else { (1u128 << host) - 1 };
        return Some((Some(family), addr & !mask, addr | mask));
    }
    if let Some(r) = v.get("range").and_then(Value::as_array) {
        let (a, b) = (json_range(r.first()?)?, json_range(r.get(1)?)?);
        return Some((a.0, a.1, b.2));
    }
    if let Some(n) = v.as_u64() {
        return Some((None, u128::from(n), u128::from(n)));
    }
    let (family, addr) = json_u128_addr(v)?;
    Some((Some(family), addr, addr))
}

/// An element's key as ranges of `fields` key fields.
fn json_key_ranges(val: &Value, fields: usize) -> Option<Vec<(u128, u128)>> {
    let parts: Vec<&Value> = match val.get("concat") {
        Some(c) => c.as_array()?.iter().collect(),
        None => vec![val],
    };
    if parts.len() != fields {
        return None;
    }
    parts.iter().map(|p| json_range(p).map(|(_, lo, hi)| (lo, hi))).collect()
}

/// The element counters of every policy map in a listing of the policy
/// table (`nft -j list table inet tessera_policy`), read in one pass: each
/// key as ranges of its map's key fields. An element that cannot be read is
/// an error.
pub fn policy_table_counters(doc: &str) -> Result<Vec<ElementCounter>, String> {
    let mut out = Vec::new();
    for obj in nft_objects(doc)? {
        let Some(m) = obj.get("map") else { continue };
        let Some(map) = m.get("name").and_then(Value::as_str).filter(|n| *n != DIGESTS) else { continue };
        let fields = map_fields(map).len();
        for elem in m.get("elem").and_then(Value::as_array).into_iter().flatten() {
            let unreadable = || format!("cannot read element {elem} of {map}");
            let key = elem.as_array().and_then(|p| p.first()).ok_or_else(unreadable)?;
            let inner = key.get("elem");
            let val = inner.and_then(|e| e.get("val")).unwrap_or(key);
            let counter = inner.and_then(|e| e.get("counter"));
            let n = |f: &str| counter.and_then(|c| c.get(f)).and_then(Value::as_u64).unwrap_or(0);
            let key = json_key_ranges(val, fields).ok_or_else(unreadable)?;
            out.push(ElementCounter { map: map.to_string(), key, packets: n("packets"), bytes: n("bytes") });
        }
    }
    Ok(out)
}

/// Parses the output of `nft -j list table inet tessera` and
/// `nft -j list table bridge tessera` (`None` for a table that does not
/// exist), and the policy table's listings. Unknown objects are ignored; an
/// element that cannot be read is an error. The policy maps' elements are
/// left unknown here.
pub fn parse_tables(inet: Option<&str>, bridge: Option<&str>, policy: Option<&PolicyListing>) -> Result<NftState, String> {
    let mut state = NftState::default();
    let mut markers = 0;
    for doc in [inet, bridge] {
        let Some(doc) = doc else { continue };
        let mut has_marker = false;
        for obj in nft_objects(doc)? {
            if let Some(rule) = obj.get("rule") {
                if rule.get("comment").and_then(Value::as_str) == Some(SKELETON_VERSION) {
                    has_marker = true;
                }
            }
            let set = obj.get("set").or_else(|| obj.get("map"));
            let Some(set) = set else { continue };
            let family = set.get("family").and_then(Value::as_str).unwrap_or_default();
            let name = set.get("name").and_then(Value::as_str).unwrap_or_default();
            let Some(elems) = set.get("elem").and_then(Value::as_array) else { continue };
            for elem in elems {
                let parsed = parse_element(family, name, elem)
                    .ok_or_else(|| format!("cannot read element {elem} of {family} tessera {name}"))?;
                if let Some(e) = parsed {
                    state.elements.insert(e);
                }
            }
        }
        if has_marker {
            markers += 1;
        }
    }
    if let Some(p) = policy {
        let (mk, mv) = skeleton_marker();
        if p.digests.get(&mk) == Some(&mv) {
            markers += 1;
        }
        state.policy.chains = p.chains.iter().map(|n| (n.clone(), ObservedChain::default())).collect();
        state.policy.maps = p
            .maps
            .iter()
            .map(|(name, family)| (name.clone(), ObservedMap { family: *family, digest: None, elements: None }))
            .collect();
        state.policy.digests = p.digests.clone();
        derive_digests(&mut state.policy);
    }
    if markers == 3 {
        state.skeleton = Some(SKELETON_VERSION.to_string());
    }
    Ok(state)
}

/// The prefix an nft JSON range or prefix stands for; `None` when it is
/// not exactly one.
fn json_prefix(v: &Value) -> Option<IpNet> {
    let (f, lo, hi) = json_range(v)?;
    let f = f?;
    let host_bits = 128 - (hi - lo).leading_zeros();
    let net = IpNet::new(f.addr(lo), (f.bits() - host_bits) as u8).ok()?;
    (tessera_policy::flow::net_range(&net) == (lo, hi)).then_some(net)
}

/// `Some(None)`: a set we do not manage; `None`: unreadable.
fn parse_element(family: &str, set: &str, elem: &Value) -> Option<Option<NftElement>> {
    // An element with options comes wrapped: {"elem": {"val": ...}}.
    let elem = elem.get("elem").and_then(|e| e.get("val")).unwrap_or(elem);
    let concat = |v: &Value| -> Option<Vec<String>> {
        let v = v.get("elem").and_then(|e| e.get("val")).unwrap_or(v);
        v.get("concat")?.as_array()?.iter().map(|x| x.as_str().map(str::to_string)).collect()
    };
    let mac = |s: &str| s.parse::<MacAddr>().ok();
    Some(match (family, set) {
        ("inet", "zones") => {
            let pair = elem.as_array()?;
            let ifname = pair.first()?.as_str()?.to_string();
            let zone = u16::try_from(pair.get(1)?.as_u64()?).ok()?;
            Some(NftElement::Zone { ifname, zone })
        }
        ("inet", "reach4" | "reach6") => {
            let parts = elem.get("concat")?.as_array()?;
            let ifname = parts.first()?.as_str()?.to_string();
            Some(NftElement::Reach { ifname, net: json_prefix(parts.get(1)?)? })
        }
        ("inet", "pz4") | ("inet", "pz6") => {
            let pair = elem.as_array()?;
            let key = pair.first()?;
            let key = key.get("elem").and_then(|e| e.get("val")).unwrap_or(key);
            let parts = key.get("concat")?.as_array()?;
            let ifname = parts.first()?.as_str()?.to_string();
            let net = json_prefix(parts.get(1)?)?;
            let zone = u16::try_from(pair.get(1)?.as_u64()?).ok()?;
            Some(NftElement::PairZone { ifname, net, zone })
        }
        ("inet", "vteps4") | ("inet", "vteps6") => Some(NftElement::Vtep { ip: elem.as_str()?.parse().ok()? }),
        ("inet", "uplinks") => Some(NftElement::Uplink { ifname: elem.as_str()?.to_string() }),
        ("inet", s) if crate::observed::SLICE_SETS.contains(&s) => {
            let slice = crate::observed::SLICE_SETS.iter().position(|x| *x == s)? as u16;
            Some(NftElement::UplinkSlice { ifname: elem.as_str()?.to_string(), slice })
        }
        ("inet", "extout4" | "extout6") => Some(NftElement::ExtOut { address: elem.as_str()?.parse().ok()? }),
        ("inet", "extzone4" | "extzone6" | "extmark4" | "extmark6" | "fipin4" | "fipin6" | "snat4" | "snat6") => {
            let pair = elem.as_array()?;
            let key = pair.first()?;
            let key = key.get("elem").and_then(|e| e.get("val")).unwrap_or(key);
            let value = pair.get(1)?;
            Some(match set {
                "extzone4" | "extzone6" => {
                    NftElement::ExtZone { address: key.as_str()?.parse().ok()?, zone: u16::try_from(value.as_u64()?).ok()? }
                }
                "extmark4" | "extmark6" => {
                    NftElement::ExtMark { address: key.as_str()?.parse().ok()?, mark: u32::try_from(value.as_u64()?).ok()? }
                }
                "fipin4" | "fipin6" => {
                    NftElement::FipIn { floating: key.as_str()?.parse().ok()?, fixed: value.as_str()?.parse().ok()? }
                }
                _ => NftElement::Snat { zone: u16::try_from(key.as_u64()?).ok()?, address: value.as_str()?.parse().ok()? },
            })
        }
        ("inet", s) if s.starts_with("pub") => {
            let pair = elem.as_array()?;
            let key = pair.first()?;
            let key = key.get("elem").and_then(|e| e.get("val")).unwrap_or(key);
            let parts = key.get("concat")?.as_array()?;
            let any = s.ends_with("any");
            let (host_ip, rest) =
                if any { (None, &parts[..]) } else { (Some(parts.first()?.as_str()?.parse().ok()?), &parts[1..]) };
            let protocol = match rest.first()?.as_str()? {
                "tcp" => tessera_model::PortProtocol::Tcp,
                "udp" => tessera_model::PortProtocol::Udp,
                _ => return None,
            };
            let port = u16::try_from(rest.get(1)?.as_u64()?).ok()?;
            let key = crate::observed::PubKey { v6: s.contains('6'), host_ip, protocol, port };
            if key.map(s.as_bytes()[3] as char) != s {
                return Some(None);
            }
            let value = pair.get(1)?;
            Some(match s.as_bytes()[3] {
                b'z' => NftElement::PubZone { key, zone: u16::try_from(value.as_u64()?).ok()? },
                b'm' => NftElement::PubMark { key, mark: u32::try_from(value.as_u64()?).ok()? },
                _ => {
                    let v = value.get("concat")?.as_array()?;
                    NftElement::PubDnat {
                        key,
                        fixed: v.first()?.as_str()?.parse().ok()?,
                        port: u16::try_from(v.get(1)?.as_u64()?).ok()?,
                    }
                }
            })
        }
        ("inet", "fipout4" | "fipout6") => {
            let pair = elem.as_array()?;
            let key = pair.first()?;
            let key = key.get("elem").and_then(|e| e.get("val")).unwrap_or(key);
            let parts = key.get("concat")?.as_array()?;
            let zone = u16::try_from(parts.first()?.as_u64()?).ok()?;
            let fixed = parts.get(1)?.as_str()?.parse().ok()?;
            Some(NftElement::FipOut { zone, fixed, floating: pair.get(1)?.as_str()?.parse().ok()? })
        }
        ("bridge", "ep4") | ("bridge", "ep6") => {
            let parts = concat(elem)?;
            let [port, m, ip] = parts.as_slice() else { return None };
            match ip.parse::<IpAddr>().ok()? {
                IpAddr::V4(ip) if set == "ep4" => Some(NftElement::Ep4 { port: port.clone(), mac: mac(m)?, ip }),
                IpAddr::V6(ip) if set == "ep6" => Some(NftElement::Ep6 { port: port.clone(), mac: mac(m)?, ip }),
                _ => return None,
            }
        }
        ("bridge", "epmac" | "svcmac") => {
            let parts = concat(elem)?;
            let [port, m] = parts.as_slice() else { return None };
            let (port, mac) = (port.clone(), mac(m)?);
            Some(if set == "epmac" { NftElement::EpMac { port, mac } } else { NftElement::SvcMac { port, mac } })
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_policy::Verdict;

    const INET: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
      {"table": {"family": "inet", "name": "tessera", "handle": 1}},
      {"map": {"family": "inet", "name": "zones", "table": "tessera", "type": "ifname", "handle": 2, "map": "integer",
               "elem": [["tb1", 5], ["tx1", 5]]}},
      {"map": {"family": "inet", "name": "pz4", "table": "tessera", "type": ["ifname", "ipv4_addr"], "handle": 3, "map": "integer", "flags": ["interval"],
               "elem": [[{"concat": ["tb1", {"prefix": {"addr": "10.0.1.0", "len": 24}}]}, 7], [{"concat": ["tx1", "10.0.2.5"]}, 7]]}},
      {"set": {"family": "inet", "name": "vteps4", "table": "tessera", "type": "ipv4_addr", "handle": 5, "elem": ["192.0.2.7"]}},
      {"set": {"family": "inet", "name": "vteps6", "table": "tessera", "type": "ipv6_addr", "handle": 6, "elem": ["2001:db8:1::7"]}},
      {"set": {"family": "inet", "name": "uplinks", "table": "tessera", "type": "ifname", "handle": 11, "elem": ["eth1"]}},
      {"set": {"family": "inet", "name": "slice3", "table": "tessera", "type": "ifname", "handle": 15, "elem": ["eth1"]}},
      {"map": {"family": "inet", "name": "extzone4", "table": "tessera", "type": "ipv4_addr", "handle": 28, "map": "integer", "elem": [["203.0.113.10", 5]]}},
      {"map": {"family": "inet", "name": "extmark6", "table": "tessera", "type": "ipv6_addr", "handle": 31, "map": "mark", "elem": [["2001:db8::10", 65541]]}},
      {"map": {"family": "inet", "name": "fipin6", "table": "tessera", "type": "ipv6_addr", "handle": 33, "map": "ipv6_addr", "elem": [["2001:db8::10", "fd00::2"]]}},
      {"map": {"family": "inet", "name": "fipout4", "table": "tessera", "type": ["integer", "ipv4_addr"], "handle": 34, "map": "ipv4_addr", "elem": [[{"concat": [5, "10.0.0.2"]}, "203.0.113.10"]]}},
      {"map": {"family": "inet", "name": "snat6", "table": "tessera", "type": "integer", "handle": 37, "map": "ipv6_addr", "elem": [[5, "2001:db8::3"]]}},
      {"chain": {"family": "inet", "table": "tessera", "name": "prerouting", "handle": 1, "type": "filter", "hook": "prerouting", "prio": -300, "policy": "accept"}},
      {"rule": {"family": "inet", "table": "tessera", "chain": "output", "handle": 4, "comment": "tessera-v11", "expr": []}}]}"#;

    const BRIDGE: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
      {"table": {"family": "bridge", "name": "tessera", "handle": 4}},
      {"set": {"family": "bridge", "name": "ep4", "table": "tessera", "type": ["ifname", "ether_addr", "ipv4_addr"], "handle": 2,
               "elem": [{"concat": ["tv12345678", "02:00:00:00:00:01", "10.0.0.2"]}]}},
      {"set": {"family": "bridge", "name": "ep6", "table": "tessera", "type": ["ifname", "ether_addr", "ipv6_addr"], "handle": 3,
               "elem": [{"elem": {"val": {"concat": ["tv12345678", "02:00:00:00:00:01", "2001:db8::2"]}, "counter": {"packets": 0, "bytes": 0}}}]}},
      {"set": {"family": "bridge", "name": "epmac", "table": "tessera", "type": ["ifname", "ether_addr"], "handle": 4,
               "elem": [{"concat": ["tv12345678", "02:00:00:00:00:01"]}]}},
      {"set": {"family": "bridge", "name": "svcmac", "table": "tessera", "type": ["ifname", "ether_addr"], "handle": 5,
               "elem": [{"concat": ["tv12345678", "02:00:00:00:00:01"]}]}},
      {"rule": {"family": "bridge", "table": "tessera", "chain": "prerouting", "handle": 9, "comment": "tessera-v11", "expr": []}}]}"#;

    const CHAINS: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
      {"chain": {"family": "inet", "table": "tessera_policy", "name": "dispatch", "handle": 1}},
      {"chain": {"family": "inet", "table": "tessera_policy", "name": "steer", "handle": 3}},
      {"chain": {"family": "inet", "table": "tessera_policy", "name": "prerouting", "handle": 4, "type": "filter", "hook": "prerouting", "prio": -140, "policy": "accept"}},
      {"chain": {"family": "inet", "table": "tessera_policy", "name": "forward", "handle": 2, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
      {"chain": {"family": "inet", "table": "tessera_policy", "name": "l1_2_0", "handle": 5}},
      {"chain": {"family": "inet", "table": "other", "name": "l9_9_0", "handle": 5}}]}"#;

    const MAPS: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
      {"map": {"family": "inet", "name": "digests", "table": "tessera_policy", "type": "ipv6_addr", "handle": 2, "map": "ipv6_addr"}},
      {"map": {"family": "inet", "name": "m1_2_0_0_4_0_40123", "table": "tessera_policy", "type": ["inet_service", "ipv4_addr", "ipv4_addr", "inet_proto", "inet_service"], "handle": 3, "map": "verdict", "flags": ["interval"], "stmt": [{"counter": null}]}}]}"#;

    fn digests_doc(pairs: &[(u128, u128)]) -> String {
        let elems: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("[\"{}\", \"{}\"]", std::net::Ipv6Addr::from(*k), std::net::Ipv6Addr::from(*v)))
            .collect();
        format!(
            r#"{{"nftables": [{{"map": {{"family": "inet", "name": "digests", "table": "tessera_policy", "type": "ipv6_addr", "map": "ipv6_addr", "elem": [{}]}}}}]}}"#,
            elems.join(", ")
        )
    }

    fn policy_listing() -> PolicyListing {
        use crate::policy::{chain_digest_value, map_digest_value, name_key};
        let doc = digests_doc(&[
            skeleton_marker(),
            (name_key("l1_2_0"), chain_digest_value(0xcd, Some(Verdict::Deny))),
            (name_key("m1_2_0_0_4_0_40123"), map_digest_value(0xab)),
        ]);
        parse_policy_listing(CHAINS, MAPS, Some(&doc)).unwrap()
    }

    const MAP: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"map": {"family": "inet", "name": "m1_2_0_0_4_0_01234", "table": "tessera_policy",
      "type": ["ipv4_addr", "ipv4_addr", "inet_proto", "inet_service", "inet_service"], "handle": 3, "map": "verdict", "flags": ["interval"],
      "elem": [[{"elem": {"val": {"concat": [{"prefix": {"addr": "10.0.0.0", "len": 24}}, {"prefix": {"addr": "0.0.0.0", "len": 0}}, 6, {"range": [0, 65535]}, 80]}, "counter": {"packets": 3, "bytes": 180}}}, {"return": null}],
               [{"elem": {"val": {"concat": ["10.0.0.5", {"range": ["192.168.0.0", "192.168.0.10"]}, {"range": [0, 255]}, {"range": [1000, 2000]}, {"range": [0, 65535]}]}, "counter": {"packets": 0, "bytes": 0}}}, {"goto": {"target": "rj1"}}]],
      "stmt": [{"counter": null}]}}]}"#;

    fn mac() -> MacAddr {
        "02:00:00:00:00:01".parse().unwrap()
    }

    #[test]
    fn parses_the_tables_and_their_elements() {
        let state = parse_tables(Some(INET), Some(BRIDGE), Some(&policy_listing())).unwrap();
        assert_eq!(state.skeleton.as_deref(), Some(SKELETON_VERSION));
        let port = "tv12345678".to_string();
        let want: BTreeSet<NftElement> = [
            NftElement::Zone { ifname: "tb1".into(), zone: 5 },
            NftElement::Zone { ifname: "tx1".into(), zone: 5 },
            NftElement::PairZone { ifname: "tb1".into(), net: "10.0.1.0/24".parse().unwrap(), zone: 7 },
            NftElement::PairZone { ifname: "tx1".into(), net: "10.0.2.5/32".parse().unwrap(), zone: 7 },
            NftElement::Vtep { ip: "192.0.2.7".parse().unwrap() },
            NftElement::Vtep { ip: "2001:db8:1::7".parse().unwrap() },
            NftElement::Ep4 { port: port.clone(), mac: mac(), ip: "10.0.0.2".parse().unwrap() },
            NftElement::Ep6 { port: port.clone(), mac: mac(), ip: "2001:db8::2".parse().unwrap() },
            NftElement::EpMac { port: port.clone(), mac: mac() },
            NftElement::SvcMac { port, mac: mac() },
            NftElement::Uplink { ifname: "eth1".into() },
            NftElement::UplinkSlice { ifname: "eth1".into(), slice: 3 },
            NftElement::ExtZone { address: "203.0.113.10".parse().unwrap(), zone: 5 },
            NftElement::ExtMark { address: "2001:db8::10".parse().unwrap(), mark: 0x10005 },
            NftElement::FipIn { floating: "2001:db8::10".parse().unwrap(), fixed: "fd00::2".parse().unwrap() },
            NftElement::FipOut { zone: 5, fixed: "10.0.0.2".parse().unwrap(), floating: "203.0.113.10".parse().unwrap() },
            NftElement::Snat { zone: 5, address: "2001:db8::3".parse().unwrap() },
        ]
        .into();
        assert_eq!(state.elements, want);
    }

    #[test]
    fn reads_policy_chains_maps_and_digests() {
        let state = parse_tables(Some(INET), Some(BRIDGE), Some(&policy_listing())).unwrap();
        let p = &state.policy;
        assert_eq!(p.chains["l1_2_0"], ObservedChain { digest: Some(0xcd), default: Some(Verdict::Deny) });
        assert_eq!(p.chains["dispatch"], ObservedChain { digest: None, default: None });
        assert_eq!(p.chains["steer"], ObservedChain { digest: None, default: None });
        assert!(!p.chains.contains_key("forward") && !p.chains.contains_key("prerouting"), "base chains are the skeleton's");
        assert!(!p.chains.contains_key("l9_9_0"), "chains of other tables are not ours");
        let m = &p.maps["m1_2_0_0_4_0_40123"];
        assert_eq!((m.family, m.digest, m.elements.is_none()), (Family::V4, Some(0xab), true));
        assert!(!p.maps.contains_key("digests"));
    }

    #[test]
    fn without_the_marker_the_skeleton_is_outdated() {
        let listing = parse_policy_listing(CHAINS, MAPS, Some(&digests_doc(&[]))).unwrap();
        assert_eq!(parse_tables(Some(INET), Some(BRIDGE), Some(&listing)).unwrap().skeleton, None);
    }

    #[test]
    fn reads_policy_map_counters() {
        let c = policy_table_counters(MAP).unwrap();
        assert_eq!(c.len(), 2);
        let a = |s: &str| tessera_policy::flow::addr_bits(s.parse().unwrap());
        assert_eq!(c[0].key, vec![(a("10.0.0.0"), a("10.0.0.255")), (0, u128::from(u32::MAX)), (6, 6), (0, 65535), (80, 80)]);
        assert_eq!((c[0].packets, c[0].bytes), (3, 180));
        assert_eq!(c[1].key[1], (a("192.168.0.0"), a("192.168.0.10")));
    }

    #[test]
    fn reads_hash_map_counters() {
        let doc = r#"{"nftables": [{"map": {"family": "inet", "name": "h1_2_0_0_4_0badcafe0_4", "table": "tessera_policy",
          "type": "inet_service", "map": "verdict",
          "elem": [[{"elem": {"val": 22, "counter": {"packets": 5, "bytes": 300}}}, {"drop": null}]]}}]}"#;
        let c = policy_table_counters(doc).unwrap();
        assert_eq!(c, vec![ElementCounter { map: "h1_2_0_0_4_0badcafe0_4".into(), key: vec![(22, 22)], packets: 5, bytes: 300 }]);
        assert!(policy_table_counters(&MAP.replace("\"10.0.0.5\"", "\"x\"")).is_err());
    }

    #[test]
    fn a_missing_table_means_no_skeleton() {
        let state = parse_tables(Some(INET), None, None).unwrap();
        assert_eq!(state.skeleton, None);
        assert_eq!(state.elements.len(), 13);
    }

    #[test]
    fn an_unreadable_element_is_an_error() {
        let bad = BRIDGE.replace("10.0.0.2", "not-an-ip");
        assert!(parse_tables(None, Some(&bad), None).is_err());
    }

    #[test]
    fn skeleton_carries_its_version_in_every_table() {
        let script = skeleton_script();
        assert_eq!(script.matches(SKELETON_VERSION).count(), 2);
        assert!(script.contains(&std::net::Ipv6Addr::from(skeleton_marker().1).to_string()));
    }
}
