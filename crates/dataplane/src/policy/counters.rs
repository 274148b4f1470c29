//! Hit counters of the policy rules: the kernel's per-element counters of
//! the verdict maps, summed per rule of the programs that compiled them.

use std::collections::BTreeMap;

use tessera_policy::RuleRef;

use super::keys::{key_ranges, map_fields};
use super::programs::list_objects_read;
use crate::desired::DesiredHost;

/// One rule's hit counter: packets and bytes of the new flows it decided
/// (the first packet of each flow it let through; every packet of flows it
/// dropped or rejected, since those never become established). A rule that
/// applies to several pairs of networks, or to both ends of one pair, sums
/// the hits of each place it is evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct RuleCounter {
    pub policy: uuid::Uuid,
    pub rule: usize,
    pub packets: u64,
    pub bytes: u64,
}

/// A map element's counter as the kernel reports it: the element's key as
/// ranges of the map's key fields ([`map_fields`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElementCounter {
    pub map: String,
    pub key: Vec<(u128, u128)>,
    pub packets: u64,
    pub bytes: u64,
}

/// Sums element counters per rule, attributing each element to the rule
/// `desired` compiles it from. Elements `desired` does not hold are ignored;
/// rules without hits are reported with zeros.
#[allow(clippy::type_complexity)] // a local map keyed by (map name, element key)
pub fn rule_counters(desired: &DesiredHost, counters: &[ElementCounter]) -> Vec<RuleCounter> {
    let lists = list_objects_read(desired);
    let mut origin: BTreeMap<(&str, Vec<(u128, u128)>), RuleRef> = BTreeMap::new();
    let mut sums: BTreeMap<RuleRef, (u64, u64)> = BTreeMap::new();
    for (name, map) in lists.iter().flat_map(|l| &l.objects.maps) {
        let fields = map_fields(name);
        for (e, r) in map.elements.iter() {
            origin.insert((name.as_str(), key_ranges(&e.key, &fields)), *r);
            sums.entry(*r).or_default();
        }
    }
    for c in counters {
        if let Some(r) = origin.get(&(c.map.as_str(), c.key.clone())) {
            let s = sums.entry(*r).or_default();
            s.0 += c.packets;
            s.1 += c.bytes;
        }
    }
    sums.into_iter().map(|(r, (packets, bytes))| RuleCounter { policy: r.policy, rule: r.rule, packets, bytes }).collect()
}
