//! Tessera's nftables tables, as values: the skeleton, the JSON batch that
//! adds and deletes elements, and the parser of `nft -j list table` output.
//! Pure; [`crate::linux`] runs `nft`.
//!
//! `table inet tessera` gives each network's traffic its own conntrack zone,
//! with one map lookup per packet (`ct zone set iifname map @zones`), so that
//! overlapping addresses in different networks never share conntrack entries.
//!
//! `table bridge tessera` is the anti-spoofing filter of endpoint ports: a
//! frame that enters a `tv*` port passes only if its (port, MAC, source
//! address) is in a set, so the cost per frame does not grow with the number
//! of endpoints.
//!
//! The skeleton is written in nft's own syntax because nft 1.0.6 (Debian 12)
//! cannot declare a `typeof ... : ct zone` map in JSON; it is installed in one
//! transaction and only when missing or outdated. Elements, the part that
//! changes with every endpoint, go through the `nftables` crate's JSON.

use std::borrow::Cow;
use std::net::IpAddr;

use nftables::batch::Batch;
use nftables::expr::{Expression, NamedExpression};
use nftables::schema::{Element, NfListObject, Nftables};
use nftables::types::NfFamily;
use serde_json::Value;
use tessera_model::MacAddr;

use crate::observed::{NftElement, NftState};

/// Version marker of the skeleton, kept as the comment of the last rule of
/// each table. Change it whenever [`skeleton_script`] changes: agents then
/// replace the tables.
pub const SKELETON_VERSION: &str = "tessera-v1";

/// The nft script that (re)creates both tables, in one transaction. Creating
/// and deleting first makes it work whether or not the tables exist; their
/// elements are lost and must be added again.
pub fn skeleton_script() -> String {
    format!(
        r#"table inet tessera {{}}
delete table inet tessera
table inet tessera {{
    map zones {{
        typeof iifname : ct zone
    }}
    chain prerouting {{
        type filter hook prerouting priority raw; policy accept;
        ct zone set iifname map @zones
    }}
    chain output {{
        type filter hook output priority raw; policy accept;
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
    chain prerouting {{
        type filter hook prerouting priority filter; policy accept;
        iifname != "tv*" accept
        ether type ip iifname . ether saddr . ip saddr @ep4 accept
        ether type arp iifname . ether saddr . arp saddr ip @ep4 iifname . arp saddr ether @epmac accept
        ether type ip6 iifname . ether saddr . ip6 saddr @ep6 accept
        ether type ip6 ip6 saddr fe80::/10 iifname . ether saddr @epmac accept
        ether type ip6 ip6 saddr :: ip6 nexthdr icmpv6 iifname . ether saddr @epmac accept
        ether type ip ip saddr 0.0.0.0 udp sport 68 udp dport 67 iifname . ether saddr @epmac accept
        counter drop comment "{v}"
    }}
}}
"#,
        v = SKELETON_VERSION
    )
}

fn element_object(e: &NftElement) -> NfListObject<'static> {
    let (family, table, set) = e.location();
    let s = |v: String| Expression::String(Cow::Owned(v));
    let value = match e {
        NftElement::Zone { ifname, zone } => Expression::List(vec![s(ifname.clone()), Expression::Number(u32::from(*zone))]),
        NftElement::Ep4 { port, mac, ip } => {
            Expression::Named(NamedExpression::Concat(vec![s(port.clone()), s(mac.to_string()), s(ip.to_string())]))
        }
        NftElement::Ep6 { port, mac, ip } => {
            Expression::Named(NamedExpression::Concat(vec![s(port.clone()), s(mac.to_string()), s(ip.to_string())]))
        }
        NftElement::EpMac { port, mac } => Expression::Named(NamedExpression::Concat(vec![s(port.clone()), s(mac.to_string())])),
    };
    NfListObject::Element(Element {
        family: if family == "inet" { NfFamily::INet } else { NfFamily::Bridge },
        table: Cow::Borrowed(table),
        name: Cow::Borrowed(set),
        elem: Cow::Owned(vec![value]),
    })
}

/// One JSON batch (one `nft -j -f` transaction): the deletes, then the adds.
pub fn element_batch<'a>(
    deletes: impl IntoIterator<Item = &'a NftElement>,
    adds: impl IntoIterator<Item = &'a NftElement>,
) -> Nftables<'static> {
    let mut batch = Batch::new();
    for e in deletes {
        batch.delete(element_object(e));
    }
    for e in adds {
        batch.add(element_object(e));
    }
    batch.to_nftables()
}

/// Parses the output of `nft -j list table inet tessera` and
/// `nft -j list table bridge tessera` (`None` for a table that does not
/// exist). Unknown objects are ignored; an element that cannot be read is an
/// error, so that the planner never deletes what it did not understand.
pub fn parse_tables(inet: Option<&str>, bridge: Option<&str>) -> Result<NftState, String> {
    let mut state = NftState::default();
    let mut markers = 0;
    for doc in [inet, bridge] {
        let Some(doc) = doc else { continue };
        let v: Value = serde_json::from_str(doc).map_err(|e| format!("nft output is not JSON: {e}"))?;
        let objects = v.get("nftables").and_then(Value::as_array).ok_or("nft output has no \"nftables\" array")?;
        let mut has_marker = false;
        for obj in objects {
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
    if markers == 2 {
        state.skeleton = Some(SKELETON_VERSION.to_string());
    }
    Ok(state)
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
        ("bridge", "ep4") | ("bridge", "ep6") => {
            let parts = concat(elem)?;
            let [port, m, ip] = parts.as_slice() else { return None };
            match ip.parse::<IpAddr>().ok()? {
                IpAddr::V4(ip) if set == "ep4" => Some(NftElement::Ep4 { port: port.clone(), mac: mac(m)?, ip }),
                IpAddr::V6(ip) if set == "ep6" => Some(NftElement::Ep6 { port: port.clone(), mac: mac(m)?, ip }),
                _ => return None,
            }
        }
        ("bridge", "epmac") => {
            let parts = concat(elem)?;
            let [port, m] = parts.as_slice() else { return None };
            Some(NftElement::EpMac { port: port.clone(), mac: mac(m)? })
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const INET: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
      {"table": {"family": "inet", "name": "tessera", "handle": 1}},
      {"map": {"family": "inet", "name": "zones", "table": "tessera", "type": "ifname", "handle": 2, "map": "integer",
               "elem": [["tb1", 5], ["tx1", 5]]}},
      {"chain": {"family": "inet", "table": "tessera", "name": "prerouting", "handle": 1, "type": "filter", "hook": "prerouting", "prio": -300, "policy": "accept"}},
      {"rule": {"family": "inet", "table": "tessera", "chain": "output", "handle": 4, "comment": "tessera-v1", "expr": []}}]}"#;

    const BRIDGE: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
      {"table": {"family": "bridge", "name": "tessera", "handle": 4}},
      {"set": {"family": "bridge", "name": "ep4", "table": "tessera", "type": ["ifname", "ether_addr", "ipv4_addr"], "handle": 2,
               "elem": [{"concat": ["tv12345678", "02:00:00:00:00:01", "10.0.0.2"]}]}},
      {"set": {"family": "bridge", "name": "ep6", "table": "tessera", "type": ["ifname", "ether_addr", "ipv6_addr"], "handle": 3,
               "elem": [{"elem": {"val": {"concat": ["tv12345678", "02:00:00:00:00:01", "2001:db8::2"]}, "counter": {"packets": 0, "bytes": 0}}}]}},
      {"set": {"family": "bridge", "name": "epmac", "table": "tessera", "type": ["ifname", "ether_addr"], "handle": 4,
               "elem": [{"concat": ["tv12345678", "02:00:00:00:00:01"]}]}},
      {"rule": {"family": "bridge", "table": "tessera", "chain": "prerouting", "handle": 9, "comment": "tessera-v1", "expr": []}}]}"#;

    fn mac() -> MacAddr {
        "02:00:00:00:00:01".parse().unwrap()
    }

    #[test]
    fn parses_both_tables_and_their_elements() {
        let state = parse_tables(Some(INET), Some(BRIDGE)).unwrap();
        assert_eq!(state.skeleton.as_deref(), Some(SKELETON_VERSION));
        let port = "tv12345678".to_string();
        let want: std::collections::BTreeSet<NftElement> = [
            NftElement::Zone { ifname: "tb1".into(), zone: 5 },
            NftElement::Zone { ifname: "tx1".into(), zone: 5 },
            NftElement::Ep4 { port: port.clone(), mac: mac(), ip: "10.0.0.2".parse().unwrap() },
            NftElement::Ep6 { port: port.clone(), mac: mac(), ip: "2001:db8::2".parse().unwrap() },
            NftElement::EpMac { port, mac: mac() },
        ]
        .into();
        assert_eq!(state.elements, want);
    }

    #[test]
    fn a_missing_table_means_no_skeleton() {
        let state = parse_tables(Some(INET), None).unwrap();
        assert_eq!(state.skeleton, None);
        assert_eq!(state.elements.len(), 2);
    }

    #[test]
    fn an_unreadable_element_is_an_error() {
        let bad = BRIDGE.replace("10.0.0.2", "not-an-ip");
        assert!(parse_tables(None, Some(&bad)).is_err());
    }

    #[test]
    fn element_batch_is_one_json_document_with_deletes_first() {
        let add = NftElement::Ep4 { port: "tv12345678".into(), mac: mac(), ip: "10.0.0.2".parse().unwrap() };
        let del = NftElement::Zone { ifname: "tb1".into(), zone: 5 };
        let json = serde_json::to_value(element_batch([&del], [&add])).unwrap();
        let want = serde_json::json!({"nftables": [
            {"delete": {"element": {"family": "inet", "table": "tessera", "name": "zones", "elem": [["tb1", 5]]}}},
            {"add": {"element": {"family": "bridge", "table": "tessera", "name": "ep4",
                "elem": [{"concat": ["tv12345678", "02:00:00:00:00:01", "10.0.0.2"]}]}}}
        ]});
        assert_eq!(json, want);
    }

    #[test]
    fn skeleton_carries_its_version_in_both_tables() {
        assert_eq!(skeleton_script().matches(SKELETON_VERSION).count(), 2);
    }
}
