//! What a gateway translates, read from a listing of `inet tessera` (`nft
//! -j list table inet tessera`): its uplinks and, per external address, the
//! network, the endpoint address (floating IPs) and the packets and bytes
//! counted coming in (`extmark4|6`) and going out (`extout4|6`). Pure.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde_json::Value;
use tessera_model::vif::Translation;
use tessera_model::Vni;

/// The uplinks and the translations of a listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct External {
    pub uplinks: BTreeSet<String>,
    pub translations: Vec<Translation>,
}

fn unwrap(v: &Value) -> &Value {
    v.get("elem").and_then(|e| e.get("val")).unwrap_or(v)
}

fn counter(v: &Value) -> (u64, u64) {
    let c = v.get("elem").and_then(|e| e.get("counter"));
    let get = |k: &str| c.and_then(|c| c.get(k)).and_then(Value::as_u64).unwrap_or(0);
    (get("packets"), get("bytes"))
}

/// Reads `doc`; what it cannot read is left out.
pub fn external(doc: &str) -> External {
    let v: Value = serde_json::from_str(doc).unwrap_or_default();
    let mut out = External::default();
    let mut zones: BTreeMap<u64, Vni> = BTreeMap::new();
    let mut addr_zone: BTreeMap<IpAddr, u64> = BTreeMap::new();
    let mut fixed: BTreeMap<IpAddr, IpAddr> = BTreeMap::new();
    let mut inbound: BTreeMap<IpAddr, (u64, u64)> = BTreeMap::new();
    let mut outbound: BTreeMap<IpAddr, (u64, u64)> = BTreeMap::new();
    for obj in v["nftables"].as_array().into_iter().flatten() {
        let Some(set) = obj.get("set").or_else(|| obj.get("map")) else { continue };
        let name = set.get("name").and_then(Value::as_str).unwrap_or_default();
        for e in set.get("elem").and_then(Value::as_array).into_iter().flatten() {
            let pair = e.as_array();
            let key = pair.and_then(|p| p.first()).unwrap_or(e);
            let value = pair.and_then(|p| p.get(1));
            let addr = unwrap(key).as_str().and_then(|s| s.parse::<IpAddr>().ok());
            match (name, addr, value) {
                ("uplinks", _, _) => {
                    if let Some(s) = unwrap(e).as_str() {
                        out.uplinks.insert(s.to_string());
                    }
                }
                ("zones", _, Some(z)) => {
                    let vni = unwrap(key).as_str().and_then(|n| n.strip_prefix("tb")).and_then(|d| d.parse().ok());
                    if let (Some(vni), Some(z)) = (vni.and_then(|v| Vni::new(v).ok()), z.as_u64()) {
                        zones.insert(z, vni);
                    }
                }
                ("extzone4" | "extzone6", Some(a), Some(z)) => {
                    addr_zone.insert(a, z.as_u64().unwrap_or(0));
                }
                ("fipin4" | "fipin6", Some(a), Some(f)) => {
                    if let Some(f) = f.as_str().and_then(|s| s.parse().ok()) {
                        fixed.insert(a, f);
                    }
                }
                ("extmark4" | "extmark6", Some(a), Some(_)) => {
                    inbound.insert(a, counter(key));
                }
                ("extout4" | "extout6", _, None) => {
                    if let Some(a) = unwrap(e).as_str().and_then(|s| s.parse().ok()) {
                        outbound.insert(a, counter(e));
                    }
                }
                _ => {}
            }
        }
    }
    for (external, (in_packets, in_bytes)) in inbound {
        let (out_packets, out_bytes) = outbound.get(&external).copied().unwrap_or_default();
        out.translations.push(Translation {
            external,
            vni: addr_zone.get(&external).and_then(|z| zones.get(z)).copied(),
            fixed: fixed.get(&external).copied(),
            in_packets,
            in_bytes,
            out_packets,
            out_bytes,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_uplinks_translations_and_their_counters() {
        let doc = r#"{"nftables": [
          {"set": {"family": "inet", "name": "uplinks", "table": "tessera", "type": "ifname", "elem": ["up0"]}},
          {"map": {"family": "inet", "name": "zones", "table": "tessera", "type": "ifname", "map": "integer", "elem": [["tb100", 3], ["tx100", 3]]}},
          {"map": {"family": "inet", "name": "extzone4", "table": "tessera", "elem": [["203.0.113.10", 3], ["203.0.113.3", 3]]}},
          {"map": {"family": "inet", "name": "fipin4", "table": "tessera", "elem": [["203.0.113.10", "10.1.0.2"]]}},
          {"map": {"family": "inet", "name": "extmark4", "table": "tessera", "elem": [
             [{"elem": {"val": "203.0.113.10", "counter": {"packets": 5, "bytes": 420}}}, 65636],
             [{"elem": {"val": "203.0.113.3", "counter": {"packets": 1, "bytes": 60}}}, 65636]]}},
          {"set": {"family": "inet", "name": "extout4", "table": "tessera", "elem": [
             {"elem": {"val": "203.0.113.10", "counter": {"packets": 4, "bytes": 336}}}]}}]}"#;
        let x = external(doc);
        assert_eq!(x.uplinks, BTreeSet::from(["up0".to_string()]));
        let find = |a: &str| x.translations.iter().find(|t| t.external == a.parse::<IpAddr>().unwrap()).unwrap();
        let fip = find("203.0.113.10");
        assert_eq!(fip.vni, Some(Vni::new(100).unwrap()));
        assert_eq!(fip.fixed, Some("10.1.0.2".parse().unwrap()));
        assert_eq!((fip.in_packets, fip.in_bytes, fip.out_packets, fip.out_bytes), (5, 420, 4, 336));
        let snat = find("203.0.113.3");
        assert_eq!((snat.fixed, snat.in_packets, snat.out_packets), (None, 1, 0));
    }
}
