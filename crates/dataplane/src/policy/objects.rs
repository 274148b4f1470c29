//! The objects of `inet tessera_policy` as the planner wants them: chains,
//! verdict maps, and how maps patched from an earlier list differ from it.

use std::collections::BTreeMap;

use tessera_policy::{Family, RuleRef};

use super::chains::ChainSpec;
use super::digest::{chain_digest_value, map_digest_value, name_key, skeleton_marker};
use crate::observed::MapElement;

/// A verdict map as the planner wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapSpec {
    pub family: Family,
    /// Each element with the rule it comes from, in no particular order;
    /// keys are unique. Shared: copies of a map's spec cost nothing.
    pub elements: std::sync::Arc<Vec<(MapElement, RuleRef)>>,
    /// [`map_digest`](crate::observed::map_digest) of the elements.
    pub digest: u64,
}

/// All planner-managed objects of `inet tessera_policy`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyObjects {
    pub chains: BTreeMap<String, ChainSpec>,
    pub maps: BTreeMap<String, MapSpec>,
    /// Maps of rule lists patched from an earlier list
    /// ([`tessera_policy::RuleList::patch`]): the earlier map's digest, and
    /// the elements to delete from it and to add to it to get this one.
    pub deltas: BTreeMap<String, MapDelta>,
}

/// How a map differs from the map of the list it was patched from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapDelta {
    pub base_digest: u64,
    pub deletes: Vec<MapElement>,
    pub adds: Vec<MapElement>,
}

impl PolicyObjects {
    /// The elements of the `digests` map: every chain and map, and the
    /// skeleton marker.
    pub fn digests(&self) -> BTreeMap<u128, u128> {
        let mut out: BTreeMap<u128, u128> = BTreeMap::new();
        let (k, v) = skeleton_marker();
        out.insert(k, v);
        for (name, c) in &self.chains {
            out.insert(name_key(name), chain_digest_value(c.digest, c.default));
        }
        for (name, m) in &self.maps {
            out.insert(name_key(name), map_digest_value(m.digest));
        }
        out
    }
}
