//! The objects of one rule list: its chain, its verdict maps (hash maps of
//! exact keys, sharded interval maps for the rest) and its log chains, with
//! where each entry's element is, so that a list whose verdicts alone
//! changed is patched rather than rebuilt.

use std::collections::{BTreeMap, BTreeSet};

use tessera_model::Vni;
use tessera_policy::flow::Fnv;
use tessera_policy::{Entry, Family, RuleRef, Verdict};

use super::chains::{chain, deny_chain, list_chain, plain_verdict, reject_chain, verdict_letter, ChainKind};
use super::keys::{lookup_key, selective_order, template_matches};
use super::objects::{MapDelta, MapSpec, PolicyObjects};
use crate::observed::{element_hash, map_digest, ElementVerdict, MapElement};

/// Most elements in one interval map (see the module docs of [`crate::policy`]).
pub const MAX_MAP_ELEMENTS: usize = 8192;

/// The number of maps a layer of `n` elements is spread over.
pub fn shard_count(n: usize) -> usize {
    n.div_ceil(MAX_MAP_ELEMENTS).max(1).next_power_of_two()
}

/// A fast hasher for in-memory grouping (not stable across builds; only
/// used for `HashMap`s that never leave the process).
#[derive(Default)]
struct MixHasher(u64);

impl std::hash::Hasher for MixHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.0 = tessera_policy::flow::mix(self.0, u64::from_le_bytes(w));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = tessera_policy::flow::mix(self.0, v);
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = tessera_policy::flow::mix(tessera_policy::flow::mix(self.0, v as u64), (v >> 64) as u64);
    }
}

/// Smallest group of boxes worth a hash map of its own.
pub const HASH_MIN: usize = 32;
/// Most elements in one hash map.
pub const MAX_HASH_ELEMENTS: usize = 65_536;

fn element_verdict(out: &mut PolicyObjects, s: Vni, d: Vni, i: usize, e: &Entry, tail: Tail) -> ElementVerdict {
    match &e.log {
        None => match (e.verdict, tail) {
            (Verdict::Pass, _) => ElementVerdict::Return,
            (Verdict::Deny, Tail::Deny) | (Verdict::Reject, Tail::Reject) => ElementVerdict::Continue,
            (Verdict::Deny, Tail::Reject) => ElementVerdict::Goto(deny_chain(s)),
            (Verdict::Reject, Tail::Deny) => ElementVerdict::Goto(reject_chain(s)),
        },
        Some(prefix) => {
            let policy8 = &e.origin.policy.simple().to_string()[..8];
            let g = format!("g{s}_{d}_{i}_{policy8}_{}{}", e.origin.rule, verdict_letter(e.verdict));
            out.chains.entry(g.clone()).or_insert_with(|| {
                let log = format!("log prefix \"{}\" level info", prefix.replace('"', "'"));
                chain(ChainKind::Log, vec![log], &plain_verdict(e.verdict, s), None)
            });
            ElementVerdict::Goto(g)
        }
    }
}

/// What a map's lookup rule does after a `continue` element (its tail):
/// refuse as a deny (`goto dn<S>`) or as a reject (`goto rj<S>`). Elements
/// of that refusal are `continue`s, those of the other `goto`s: adding an
/// element that jumps makes the kernel validate every jump of the table,
/// every element of every verdict map included (10–20 ms at 50,000
/// elements), so the tail is the refusal most of the map's entries make,
/// deny when none refuses: turning a pass into that refusal (or back)
/// adds no jump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tail {
    Deny,
    Reject,
}

impl Tail {
    fn of<'e>(entries: impl Iterator<Item = &'e Entry>) -> Tail {
        let (mut deny, mut reject) = (0usize, 0usize);
        for e in entries.filter(|e| e.log.is_none()) {
            match e.verdict {
                Verdict::Deny => deny += 1,
                Verdict::Reject => reject += 1,
                Verdict::Pass => {}
            }
        }
        if reject > deny {
            Tail::Reject
        } else {
            Tail::Deny
        }
    }

    fn chain(self, s: Vni) -> String {
        match self {
            Tail::Deny => deny_chain(s),
            Tail::Reject => reject_chain(s),
        }
    }
}

/// The maps of one rule list. Per layer and family, boxes that are exact
/// points in some fields and share the same ranges in the others (a list of
/// ports, of host addresses, of address-and-port pairs) go to a hash map of
/// their exact fields, looked up behind matches on the shared ranges: its
/// updates and lookups cost the same whatever its size. The other boxes go
/// to concatenated interval maps (`pipapo`), sharded.
pub(super) fn list_objects(s: Vni, d: Vni, i: usize, list: &tessera_policy::RuleList) -> ListObjects {
    type Signature = [Option<(u128, u128)>; 5];
    type Groups<'e> = std::collections::HashMap<Signature, Vec<(usize, &'e Entry)>, std::hash::BuildHasherDefault<MixHasher>>;
    let mut lo = ListObjects {
        fingerprint: list.fingerprint,
        patched_from: None,
        objects: PolicyObjects::default(),
        places: vec![(u32::MAX, u32::MAX); list.entries.len()],
        map_names: Vec::new(),
        tails: Vec::new(),
    };
    let out = &mut lo.objects;
    let mut layers: BTreeMap<(u32, Family), Vec<(usize, &Entry)>> = BTreeMap::new();
    for (k, e) in list.entries.iter().enumerate() {
        layers.entry((e.layer, e.key.family)).or_default().push((k, e));
    }
    let fam_digit = |f: Family| match f {
        Family::V4 => 4,
        Family::V6 => 6,
    };
    let mut lookups = Vec::new();
    for ((layer, family), entries) in layers {
        let mut groups: Groups = Groups::default();
        let mut last: Option<(Signature, Vec<(usize, &Entry)>)> = None;
        for &(k, e) in &entries {
            let sig: Signature = e.key.dims().map(|(lo, hi)| (lo != hi).then_some((lo, hi)));
            // Runs of one signature (the usual case) skip the hash map.
            match &mut last {
                Some((s, run)) if *s == sig => run.push((k, e)),
                _ => {
                    if let Some((s, run)) = last.take() {
                        groups.entry(s).or_default().extend(run);
                    }
                    last = Some((sig, vec![(k, e)]));
                }
            }
        }
        if let Some((s, run)) = last {
            groups.entry(s).or_default().extend(run);
        }
        // In a stable order (the first entry of each group, in rule order).
        let mut groups: Vec<(Signature, Vec<(usize, &Entry)>)> = groups.into_iter().collect();
        groups.sort_by_key(|(_, g)| (g[0].1.origin, g[0].1.key));
        let mut interval: Vec<(usize, &Entry)> = Vec::new();
        for (sig, group) in groups {
            // Exact fields whose value varies are the key; the others are the template.
            let key_fields: Vec<usize> = (0..5)
                .filter(|f| sig[*f].is_none() && group.iter().any(|(_, e)| e.key.dims()[*f] != group[0].1.key.dims()[*f]))
                .collect();
            if group.len() < HASH_MIN || key_fields.is_empty() {
                interval.extend(group);
                continue;
            }
            let template = group[0].1.key;
            let matches = template_matches(&template, &key_fields);
            let mut th = Fnv::new();
            th.bytes(matches.as_bytes());
            let fields: String = key_fields.iter().map(|f| char::from(b'0' + *f as u8)).collect();
            let shards = group.len().div_ceil(MAX_HASH_ELEMENTS).max(1).next_power_of_two();
            let mut maps: Vec<Vec<(MapElement, RuleRef)>> = vec![Vec::new(); shards];
            let tail = Tail::of(group.iter().map(|(_, e)| *e));
            for (k, e) in group {
                let verdict = element_verdict(out, s, d, i, e, tail);
                let shard = (e.key.stable_hash() % shards as u64) as usize;
                lo.places[k] = ((lo.map_names.len() + shard) as u32, maps[shard].len() as u32);
                maps[shard].push((MapElement { key: e.key, verdict }, e.origin));
            }
            let key = lookup_key(family, &key_fields);
            for (k, elements) in maps.into_iter().enumerate() {
                let name = format!("h{s}_{d}_{i}_{layer}_{}_{:08x}{k}_{fields}", fam_digit(family), th.finish() as u32);
                let digest = map_digest(elements.iter().map(|(e, _)| e));
                let lookup = lookup_rule(s, &key, &name, tail);
                lookups.push(if matches.is_empty() { lookup } else { format!("{matches} {lookup}") });
                lo.map_names.push(name.clone());
                lo.tails.push(tail);
                out.maps.insert(name, MapSpec { family, elements: std::sync::Arc::new(elements), digest });
            }
        }
        if interval.is_empty() {
            continue;
        }
        let order = selective_order(interval.iter().map(|(_, e)| &e.key));
        let order_name: String = order.iter().map(|f| char::from(b'0' + *f as u8)).collect();
        let shards = shard_count(interval.len());
        let mut maps: Vec<Vec<(MapElement, RuleRef)>> = vec![Vec::new(); shards];
        let mut placed: Vec<(usize, usize, usize)> = Vec::with_capacity(interval.len());
        let tail = Tail::of(interval.iter().map(|(_, e)| *e));
        for (k, e) in interval {
            let verdict = element_verdict(out, s, d, i, e, tail);
            let shard = (e.key.stable_hash() % shards as u64) as usize;
            placed.push((k, shard, maps[shard].len()));
            maps[shard].push((MapElement { key: e.key, verdict }, e.origin));
        }
        let key = lookup_key(family, &order);
        let mut slot_of = vec![u32::MAX; shards];
        for (k, elements) in maps.into_iter().enumerate() {
            if elements.is_empty() {
                continue;
            }
            let name = format!("m{s}_{d}_{i}_{layer}_{}_{k}_{order_name}", fam_digit(family));
            let digest = map_digest(elements.iter().map(|(e, _)| e));
            lookups.push(lookup_rule(s, &key, &name, tail));
            slot_of[k] = lo.map_names.len() as u32;
            lo.map_names.push(name.clone());
            lo.tails.push(tail);
            out.maps.insert(name, MapSpec { family, elements: std::sync::Arc::new(elements), digest });
        }
        for (k, shard, at) in placed {
            lo.places[k] = (slot_of[shard], at as u32);
        }
    }
    out.chains.insert(list_chain(s, d, i), chain(ChainKind::List, lookups, &plain_verdict(list.default, s), Some(list.default)));
    lo
}

/// The rule of a list chain that looks `key` up in map `name`: a `continue`
/// element runs on to the map's `tail`, a miss ends the rule.
fn lookup_rule(s: Vni, key: &str, name: &str, tail: Tail) -> String {
    format!("{key} vmap @{name} goto {}", tail.chain(s))
}

/// The objects of one rule list (its chain, maps and log chains), with
/// where each entry's element is: what the memo of
/// [`programs`](super::programs) keeps.
#[derive(Debug, Clone)]
pub(super) struct ListObjects {
    pub(super) fingerprint: u64,
    /// The fingerprint of the list these objects were patched from.
    pub(super) patched_from: Option<u64>,
    pub(super) objects: PolicyObjects,
    /// Per entry of the list: its map (index in `map_names`) and its index
    /// among that map's elements.
    pub(super) places: Vec<(u32, u32)>,
    pub(super) map_names: Vec<String>,
    /// Per map (as `map_names`): its lookup's [`Tail`].
    pub(super) tails: Vec<Tail>,
}

impl ListObjects {
    /// These objects (of the list `base` they were built for) made those of
    /// `list`, which differs from `base` only in the verdicts and log
    /// prefixes of the entries `changed`: the maps holding them get new
    /// verdicts, new digests and a [`MapDelta`]; log chains follow. A map's
    /// elements are changed in place when nothing else holds them (the
    /// planner's memo hands its own objects over), copied otherwise.
    pub(super) fn patched(
        mut self,
        s: Vni,
        d: Vni,
        i: usize,
        list: &tessera_policy::RuleList,
        changed: &[usize],
    ) -> Option<ListObjects> {
        self.patched_from = Some(self.fingerprint);
        self.fingerprint = list.fingerprint;
        self.objects.deltas = BTreeMap::new();
        let mut old_logs: BTreeSet<String> = BTreeSet::new();
        let mut new_logs: BTreeSet<String> = BTreeSet::new();
        for &k in changed {
            let (slot, at) = *self.places.get(k)?;
            let name = self.map_names.get(slot as usize)?;
            let e = list.entries.get(k)?;
            let tail = *self.tails.get(slot as usize)?;
            let verdict = element_verdict(&mut self.objects, s, d, i, e, tail);
            let spec = self.objects.maps.get_mut(name)?;
            // The map's digest before this patch changed it: the base's.
            let base_digest = spec.digest;
            let slot = std::sync::Arc::make_mut(&mut spec.elements).get_mut(at as usize)?;
            let old = slot.0.clone();
            if let ElementVerdict::Goto(g) = &old.verdict {
                old_logs.insert(g.clone());
            }
            if let ElementVerdict::Goto(g) = &verdict {
                new_logs.insert(g.clone());
            }
            slot.0.verdict = verdict;
            let new = slot.0.clone();
            spec.digest = spec.digest.wrapping_sub(element_hash(&old)).wrapping_add(element_hash(&new));
            let delta = self.objects.deltas.entry(name.clone()).or_insert_with(|| MapDelta { base_digest, ..Default::default() });
            delta.deletes.push(old);
            delta.adds.push(new);
        }
        for g in old_logs.difference(&new_logs).filter(|g| ChainKind::of(g) == Some(ChainKind::Log)) {
            self.objects.chains.remove(g);
        }
        Some(self)
    }
}
