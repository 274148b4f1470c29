//! The firewall of flows between (and within) networks, as nftables objects
//! of `table inet tessera_policy` (pure).
//!
//! Where it runs: the `forward` hook, after conntrack. The skeleton's base
//! chain accepts `ct state established,related` first (replies and packets
//! of allowed flows never walk rules), then jumps to `dispatch`, which looks
//! up the input and output interfaces in one anonymous verdict map:
//! `"tb<S>" . "tb<D>"` and `"tb<S>" . "tx<D>"` jump to the program of flows
//! from network `S` to network `D`. Only flows that enter from a local
//! bridge are evaluated: every flow is decided once, on the host where it
//! starts, and traffic that arrives through a tunnel was decided there
//! (each host still removes the conntrack entries of flows that a change
//! no longer allows, on both sides).
//!
//! Objects, for the program of flows from VNI `S` to VNI `D`:
//! - chain `p<S>_<D>`: `jump l<S>_<D>_0; jump l<S>_<D>_1; accept`;
//! - chain `l<S>_<D>_<i>` (rule list `i`): for each layer (see
//!   `tessera_policy::layer`), for each family, one lookup per map of the
//!   layer, then the list's default verdict. Each lookup rule ends in `goto
//!   rj<S>` (`… vmap @m goto rj<S>`), reached only when the element found
//!   says `continue`: an element's verdict is `return` for pass (the next
//!   list decides), `drop` for deny, `continue` for reject, or `goto g…` for
//!   a rule marked `log`; a miss ends the rule. Reject elements are not
//!   `goto`s because adding an element that jumps makes the kernel validate
//!   every jump of the table, every element of every verdict map included
//!   (10–40 ms at 50,000 elements, on every such change). The boxes of a
//!   layer never overlap, so the maps of a layer can be looked up in any
//!   order;
//! - hash maps `h<S>_<D>_<i>_<layer>_<4|6>_<template><shard>_<fields>`: boxes
//!   that are exact points in some fields and share the same ranges in the
//!   others (a list of ports, of host addresses, of address and port pairs)
//!   are looked up by their exact fields, behind plain matches on the shared
//!   ranges (`meta nfproto ipv4 meta l4proto 6 th dport vmap @h… goto rj<S>`). A hash
//!   map's lookup, insertion and deletion cost the same whatever its size,
//!   so a list of 50,000 port rules is one lookup and a one-rule change two
//!   element operations;
//! - interval maps `m<S>_<D>_<i>_<layer>_<4|6>_<shard>_<order>` for the
//!   other boxes: concatenated `ADDR . ADDR . inet_proto . inet_service .
//!   inet_service` with `flags interval` (the kernel's `pipapo`). The key's
//!   fields are concatenated most selective first (`<order>` lists them: 0
//!   source, 1 destination, 2 protocol, 3 source port, 4 destination port),
//!   because a lookup (and an insertion) costs in proportion to the elements
//!   that still match after each field. Updating such a map costs time in
//!   proportion to its size, so a layer's boxes are spread over `2^k` maps of
//!   at most [`MAX_MAP_ELEMENTS`] by a stable hash of their key;
//! - chain `g<S>_<D>_<i>_<policy8>_<rule><p|d|r>`: `log prefix "tessera
//!   POLICY#RULE SRC>DST VERDICT " level info`, then the verdict (the kernel
//!   log is the log of flows: `IN=` and `OUT=` name the networks' devices,
//!   `SRC= DST= PROTO= SPT= DPT=` the five-tuple);
//! - chain `rj<S>`: sets the packet mark to the VRF table of `S` (with
//!   `fwmark_reflect`, the reset or ICMP error the kernel sends back carries
//!   it, and `ip rule fwmark` routes it in `S`'s VRF), then `reject with tcp
//!   reset` for TCP and `reject` (ICMP port unreachable) otherwise.
//!
//! Every map has `counter`: a hit counter per element, summed per rule by
//! [`rule_counters`].
//!
//! Digests: the map `digests` (`ipv6_addr : ipv6_addr`) holds, for every
//! chain and map the planner manages, the 128-bit hash of its name (the key)
//! and the digest of its content (the value: [`chain_digest_value`],
//! [`map_digest_value`]), written in the same transaction as the object.
//! Listing it is cheap whatever the size of the maps (listing a rule that
//! looks up a big map, or a big map, is not: `nft` reads every element), so
//! the planner replaces a chain only when its digest differs, changes a map
//! only when its digest differs, and the Linux data plane knows whether the
//! elements it remembers are those the kernel holds. The map also holds the
//! skeleton's marker; for every rule list, the fingerprint of what it was
//! compiled from (a list whose fingerprint is unchanged is left alone: its
//! objects are neither rebuilt nor compared, so a change costs in proportion
//! to the lists it touches); and for every watched pair (flows that arrive
//! through a tunnel), the fingerprint of its program's inputs.

use std::collections::{BTreeMap, BTreeSet};

use tessera_model::Vni;
use tessera_policy::flow::Fnv;
use tessera_policy::{Entry, Family, RuleRef, Verdict};

use crate::desired::{bridge_name, table_id, vxlan_name, DesiredHost, PairPolicy};
use crate::observed::{ElementVerdict, MapElement};

/// The table of the firewall of network pairs.
pub const POLICY_TABLE: &str = "tessera_policy";
/// The chain the forward hook jumps to: the pair dispatch.
pub const DISPATCH: &str = "dispatch";
/// Most elements in one interval map (see the module docs).
pub const MAX_MAP_ELEMENTS: usize = 8192;

/// What a chain is for; chains are installed in this order (a chain only
/// refers to chains of an earlier kind) and deleted in the reverse order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChainKind {
    Reject,
    Log,
    List,
    Pair,
    Dispatch,
}

impl ChainKind {
    /// The kind of a chain name Tessera gives.
    pub fn of(name: &str) -> Option<ChainKind> {
        if name == DISPATCH {
            return Some(ChainKind::Dispatch);
        }
        match name.as_bytes().first()? {
            b'r' if name.starts_with("rj") => Some(ChainKind::Reject),
            b'g' => Some(ChainKind::Log),
            b'l' => Some(ChainKind::List),
            b'p' => Some(ChainKind::Pair),
            _ => None,
        }
    }
}

/// A chain as the planner wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSpec {
    /// Rules in nft syntax.
    pub rules: Vec<String>,
    pub digest: u64,
    pub kind: ChainKind,
    /// For rule-list chains: the verdict of flows no entry matches.
    pub default: Option<Verdict>,
}

/// A verdict map as the planner wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapSpec {
    pub family: Family,
    /// Each element with the rule it comes from, in no particular order;
    /// keys are unique. Shared: copies of a map's spec cost nothing.
    pub elements: std::sync::Arc<Vec<(MapElement, RuleRef)>>,
    /// [`map_digest`] of the elements.
    pub digest: u64,
}

/// The canonical field order of a flow box key.
pub const CANONICAL_ORDER: [usize; 5] = [0, 1, 2, 3, 4];

/// The key fields of a map, from the last part of its name (0 source, 1
/// destination, 2 protocol, 3 source port, 4 destination port): all five
/// for an interval map (`m…`), in lookup order; the exact fields for a hash
/// map (`h…`). Canonical when the name has no valid list.
pub fn map_fields(name: &str) -> Vec<usize> {
    let Some(last) = name.rsplit('_').next() else { return CANONICAL_ORDER.to_vec() };
    let fields: Vec<usize> = last.bytes().map(|b| usize::from(b.wrapping_sub(b'0'))).collect();
    let mut seen = [false; 5];
    let valid = !fields.is_empty() && fields.iter().all(|f| *f < 5 && !std::mem::replace(&mut seen[*f], true));
    let complete = fields.len() == 5 || name.starts_with('h');
    if valid && complete {
        fields
    } else {
        CANONICAL_ORDER.to_vec()
    }
}

/// The address family of a policy map, from its name
/// (`m|h<S>_<D>_<i>_<layer>_<4|6>_…`).
pub fn map_family(name: &str) -> Option<Family> {
    match name.get(1..)?.split('_').nth(4)? {
        "4" => Some(Family::V4),
        "6" => Some(Family::V6),
        _ => None,
    }
}

/// Whether a map is a concatenated interval map (`m…`), rather than a hash
/// of exact keys (`h…`).
pub fn map_is_interval(name: &str) -> bool {
    !name.starts_with('h')
}

/// The data type of a key field.
fn field_type(family: Family, field: usize) -> &'static str {
    match (field, family) {
        (0 | 1, Family::V4) => "ipv4_addr",
        (0 | 1, Family::V6) => "ipv6_addr",
        (2, _) => "inet_proto",
        _ => "inet_service",
    }
}

/// The declaration of the policy verdict map `name`: `type ... : verdict;
/// [flags interval;] counter;`.
pub fn map_type(name: &str, family: Family) -> String {
    let types: Vec<&str> = map_fields(name).iter().map(|f| field_type(family, *f)).collect();
    let flags = if map_is_interval(name) { " flags interval;" } else { "" };
    format!("type {} : verdict;{flags} counter;", types.join(" . "))
}

fn field_expr(family: Family, field: usize) -> String {
    let sel = match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    };
    match field {
        0 => format!("{sel} saddr"),
        1 => format!("{sel} daddr"),
        2 => "meta l4proto".to_string(),
        3 => "th sport".to_string(),
        _ => "th dport".to_string(),
    }
}

/// The key expression that looks up a map with these key fields.
pub fn lookup_key(family: Family, fields: &[usize]) -> String {
    fields.iter().map(|f| field_expr(family, *f)).collect::<Vec<_>>().join(" . ")
}

/// A flow box as a key of a map with these key fields (the box's other
/// fields are the map's template).
pub fn key_text(key: &tessera_policy::FlowBox, fields: &[usize]) -> String {
    let canonical = key.to_string();
    let parts: Vec<&str> = canonical.split(" . ").collect();
    fields.iter().map(|f| parts[*f]).collect::<Vec<_>>().join(" . ")
}

/// The key of a flow box in the map `name`.
pub fn map_key_text(name: &str, key: &tessera_policy::FlowBox) -> String {
    key_text(key, &map_fields(name))
}

/// The projection of a flow box on a map's key fields, as ranges.
pub fn key_ranges(key: &tessera_policy::FlowBox, fields: &[usize]) -> Vec<(u128, u128)> {
    let dims = key.dims();
    fields.iter().map(|f| dims[*f]).collect()
}

/// The matches that stand for a hash map's template: the fields not in the
/// key, where they restrict anything (a full address range only fixes the
/// family).
fn template_matches(template: &tessera_policy::FlowBox, key_fields: &[usize]) -> String {
    let canonical = template.to_string();
    let parts: Vec<&str> = canonical.split(" . ").collect();
    let dims = template.dims();
    let full = |f: usize| match f {
        0 | 1 => (0, template.family.max()),
        2 => (0, 255),
        _ => (0, 65535),
    };
    let mut out: Vec<String> = Vec::new();
    let addresses_free = !key_fields.contains(&0) && !key_fields.contains(&1) && dims[0] == full(0) && dims[1] == full(1);
    if addresses_free {
        out.push(match template.family {
            Family::V4 => "meta nfproto ipv4".into(),
            Family::V6 => "meta nfproto ipv6".into(),
        });
    }
    for f in 0..5 {
        if !key_fields.contains(&f) && dims[f] != full(f) {
            out.push(format!("{} {}", field_expr(template.family, f), parts[f]));
        }
    }
    out.join(" ")
}

/// The most selective first: fields ordered by how many distinct ranges the
/// boxes have in them (estimated on at most 4096 of them; the canonical
/// order breaks ties).
pub fn selective_order<'a>(keys: impl ExactSizeIterator<Item = &'a tessera_policy::FlowBox> + Clone) -> [usize; 5] {
    let step = keys.len().div_ceil(4096).max(1);
    let mut counts = [0usize; 5];
    for (f, count) in counts.iter_mut().enumerate() {
        let mut ranges: Vec<(u128, u128)> = keys.clone().step_by(step).map(|k| k.dims()[f]).collect();
        ranges.sort_unstable();
        ranges.dedup();
        *count = ranges.len();
    }
    let mut order = CANONICAL_ORDER;
    order.sort_by_key(|f| std::cmp::Reverse(counts[*f]));
    order
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

/// The name of the map of digests.
pub const DIGESTS: &str = "digests";

const KIND_CHAIN: u128 = 1;
const KIND_MAP: u128 = 2;
const KIND_SKELETON: u128 = 3;
const KIND_WATCH: u128 = 4;
const KIND_LIST: u128 = 5;

/// A watched pair's entry in `digests`: key and value.
pub fn watch_digest(w: &crate::desired::PairWatch) -> (u128, u128) {
    (name_key(&format!("w{}_{}", w.src, w.dst)), (KIND_WATCH << 120) | u128::from(w.fingerprint))
}

/// The key of an object in the `digests` map: two stable 64-bit hashes of
/// its name.
pub fn name_key(name: &str) -> u128 {
    let mut f = Fnv::new();
    f.bytes(name.as_bytes());
    let mut m = 0x5851_f42d_4c95_7f2du64;
    for b in name.bytes() {
        m = tessera_policy::flow::mix(m, u64::from(b));
    }
    (u128::from(f.finish()) << 64) | u128::from(m)
}

fn verdict_code(v: Option<Verdict>) -> u128 {
    match v {
        None => 0,
        Some(Verdict::Pass) => 1,
        Some(Verdict::Deny) => 2,
        Some(Verdict::Reject) => 3,
    }
}

/// A chain's entry in `digests`: its kind, default verdict and digest.
pub fn chain_digest_value(digest: u64, default: Option<Verdict>) -> u128 {
    (KIND_CHAIN << 120) | (verdict_code(default) << 64) | u128::from(digest)
}

/// A map's entry in `digests`.
pub fn map_digest_value(digest: u64) -> u128 {
    (KIND_MAP << 120) | u128::from(digest)
}

/// The skeleton's marker in `digests`.
pub fn skeleton_marker() -> (u128, u128) {
    let mut f = Fnv::new();
    f.bytes(crate::nft::SKELETON_VERSION.as_bytes());
    (name_key("tessera skeleton"), (KIND_SKELETON << 120) | u128::from(f.finish()))
}

/// Reads an entry of `digests`: the digest, and for chains the default
/// verdict; `None` for a value of another kind.
pub fn decode_chain_value(v: u128) -> Option<(u64, Option<Verdict>)> {
    if v >> 120 != KIND_CHAIN {
        return None;
    }
    let default = match (v >> 64) & 0xff {
        1 => Some(Verdict::Pass),
        2 => Some(Verdict::Deny),
        3 => Some(Verdict::Reject),
        _ => None,
    };
    Some((v as u64, default))
}

/// Reads a map's entry of `digests`.
pub fn decode_map_value(v: u128) -> Option<u64> {
    (v >> 120 == KIND_MAP).then_some(v as u64)
}

/// Fills the digests of `state`'s chains and maps from its `digests`.
pub fn derive_digests(state: &mut crate::observed::PolicyState) {
    for (name, c) in state.chains.iter_mut() {
        let (digest, default) = state.digests.get(&name_key(name)).and_then(|v| decode_chain_value(*v)).unzip();
        c.digest = digest;
        c.default = default.flatten();
    }
    for (name, m) in state.maps.iter_mut() {
        m.digest = state.digests.get(&name_key(name)).and_then(|v| decode_map_value(*v));
    }
}

/// `p<S>_<D>`
pub fn pair_chain(src: Vni, dst: Vni) -> String {
    format!("p{src}_{dst}")
}

/// `l<S>_<D>_<i>`
pub fn list_chain(src: Vni, dst: Vni, i: usize) -> String {
    format!("l{src}_{dst}_{i}")
}

/// `rj<S>`
pub fn reject_chain(src: Vni) -> String {
    format!("rj{src}")
}

/// The rule-list chain a map belongs to (`m<S>_<D>_<i>_…` or
/// `h<S>_<D>_<i>_…` → `l<S>_<D>_<i>`).
pub fn map_list_chain(map: &str) -> Option<String> {
    let rest = map.strip_prefix('m').or_else(|| map.strip_prefix('h'))?;
    let parts: Vec<&str> = rest.split('_').collect();
    (parts.len() >= 4).then(|| format!("l{}_{}_{}", parts[0], parts[1], parts[2]))
}

/// The rule list an object belongs to: the list chain itself, its maps and
/// its log chains (`g<S>_<D>_<i>_…`).
pub fn object_list(name: &str) -> Option<String> {
    if let Some(rest) = name.strip_prefix('g') {
        let parts: Vec<&str> = rest.split('_').collect();
        return (parts.len() >= 4).then(|| format!("l{}_{}_{}", parts[0], parts[1], parts[2]));
    }
    if name.starts_with('l') {
        return Some(name.to_string());
    }
    map_list_chain(name)
}

/// A rule list's fingerprint entry in `digests`: key and value.
pub fn list_fingerprint_digest(list_chain: &str, fingerprint: u64) -> (u128, u128) {
    (name_key(&format!("f{list_chain}")), (KIND_LIST << 120) | u128::from(fingerprint))
}

/// The (source, destination) VNIs of a pair or rule-list chain name.
pub fn chain_pair(name: &str) -> Option<(u32, u32)> {
    let rest = name.strip_prefix('p').or_else(|| name.strip_prefix('l'))?;
    let mut parts = rest.split('_');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Whether the log chain `name` passes the flow after logging it.
pub fn log_chain_passes(name: &str) -> bool {
    name.starts_with('g') && name.ends_with('p')
}

fn digest_of<'a>(parts: impl IntoIterator<Item = &'a str>) -> u64 {
    let mut h = Fnv::new();
    for p in parts {
        h.bytes(p.as_bytes());
        h.byte(b'\n');
    }
    h.finish()
}

/// A stable hash of one map element.
pub fn element_hash(e: &MapElement) -> u64 {
    let v = match &e.verdict {
        ElementVerdict::Return => 1,
        ElementVerdict::Drop => 2,
        ElementVerdict::Continue => 4,
        ElementVerdict::Goto(c) => {
            let mut h = Fnv::new();
            h.bytes(c.as_bytes());
            h.finish() | 3
        }
    };
    tessera_policy::flow::mix(e.key.stable_hash(), v)
}

/// The digest of a map's elements: the (wrapping) sum of their hashes, so
/// it does not depend on their order and follows adds and deletes.
pub fn map_digest<'a>(elements: impl IntoIterator<Item = &'a MapElement>) -> u64 {
    elements.into_iter().fold(0u64, |acc, e| acc.wrapping_add(element_hash(e)))
}

fn chain(kind: ChainKind, mut body: Vec<String>, last: &str, default: Option<Verdict>) -> ChainSpec {
    body.push(last.to_string());
    let digest = digest_of(body.iter().map(String::as_str));
    ChainSpec { rules: body, digest, kind, default }
}

/// The number of maps a layer of `n` elements is spread over.
pub fn shard_count(n: usize) -> usize {
    n.div_ceil(MAX_MAP_ELEMENTS).max(1).next_power_of_two()
}

fn verdict_letter(v: Verdict) -> char {
    match v {
        Verdict::Pass => 'p',
        Verdict::Deny => 'd',
        Verdict::Reject => 'r',
    }
}

fn plain_verdict(v: Verdict, src: Vni) -> String {
    match v {
        Verdict::Pass => "return".into(),
        Verdict::Deny => "drop".into(),
        Verdict::Reject => format!("goto {}", reject_chain(src)),
    }
}

/// The objects of every program of `desired`.
pub fn policy_objects(desired: &DesiredHost) -> PolicyObjects {
    policy_objects_except(desired, &BTreeSet::new())
}

/// [`policy_objects`] without the objects of the rule lists named in `kept`
/// (their chain, maps and log chains), which the kernel already holds as
/// they should be.
pub fn policy_objects_except(desired: &DesiredHost, kept: &BTreeSet<String>) -> PolicyObjects {
    let mut out = PolicyObjects::default();
    let mut dispatch: Vec<String> = Vec::new();
    let mut sources: BTreeSet<Vni> = BTreeSet::new();
    let mut programs: Vec<&PairPolicy> = desired.policies.iter().filter(|p| !p.lists.is_empty()).collect();
    programs.sort_by_key(|p| (p.src, p.dst));
    let mut memo = MEMO.lock().unwrap_or_else(|p| p.into_inner());
    memo.round += 1;
    for prog in programs {
        let (s, d) = (prog.src, prog.dst);
        sources.insert(s);
        let mut jumps = Vec::new();
        for (i, list) in prog.lists.iter().enumerate() {
            let lname = list_chain(s, d, i);
            jumps.push(format!("jump {lname}"));
            if kept.contains(&lname) {
                memo.keep(&lname, list.fingerprint);
            } else {
                let objects = memo.objects(&lname, s, d, i, list);
                out.chains.extend(objects.objects.chains.iter().map(|(k, v)| (k.clone(), v.clone())));
                out.maps.extend(objects.objects.maps.iter().map(|(k, v)| (k.clone(), v.clone())));
                if list.patch.base().is_some_and(|(base, _)| objects.patched_from == Some(base)) {
                    out.deltas.extend(objects.objects.deltas.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
            }
        }
        let pname = pair_chain(s, d);
        out.chains.insert(pname.clone(), chain(ChainKind::Pair, jumps, "accept", None));
        let (tb_s, tb_d, tx_d) = (bridge_name(s), bridge_name(d), vxlan_name(d));
        dispatch.push(format!("\"{tb_s}\" . \"{tb_d}\" : jump {pname}"));
        dispatch.push(format!("\"{tb_s}\" . \"{tx_d}\" : jump {pname}"));
    }
    for s in sources {
        let rules = vec![format!("meta mark set {:#x}", table_id(s)), "meta l4proto tcp reject with tcp reset".to_string()];
        out.chains.insert(reject_chain(s), chain(ChainKind::Reject, rules, "reject", None));
    }
    memo.forget_unused();
    drop(memo);
    let body = if dispatch.is_empty() { vec![] } else { vec![format!("iifname . oifname vmap {{ {} }}", dispatch.join(", "))] };
    out.chains.insert(DISPATCH.to_string(), chain(ChainKind::Dispatch, body, "return", None));
    out
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

fn element_verdict(out: &mut PolicyObjects, s: Vni, d: Vni, i: usize, e: &Entry) -> ElementVerdict {
    match &e.log {
        None => match e.verdict {
            Verdict::Pass => ElementVerdict::Return,
            Verdict::Deny => ElementVerdict::Drop,
            Verdict::Reject => ElementVerdict::Continue,
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

/// The maps of one rule list. Per layer and family, boxes that are exact
/// points in some fields and share the same ranges in the others (a list of
/// ports, of host addresses, of address-and-port pairs) go to a hash map of
/// their exact fields, looked up behind matches on the shared ranges: its
/// updates and lookups cost the same whatever its size. The other boxes go
/// to concatenated interval maps (`pipapo`), sharded.
fn list_objects(s: Vni, d: Vni, i: usize, list: &tessera_policy::RuleList) -> ListObjects {
    type Signature = [Option<(u128, u128)>; 5];
    type Groups<'e> = std::collections::HashMap<Signature, Vec<(usize, &'e Entry)>, std::hash::BuildHasherDefault<MixHasher>>;
    let mut lo = ListObjects {
        fingerprint: list.fingerprint,
        patched_from: None,
        objects: PolicyObjects::default(),
        places: vec![(u32::MAX, u32::MAX); list.entries.len()],
        map_names: Vec::new(),
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
            for (k, e) in group {
                let verdict = element_verdict(out, s, d, i, e);
                let shard = (e.key.stable_hash() % shards as u64) as usize;
                lo.places[k] = ((lo.map_names.len() + shard) as u32, maps[shard].len() as u32);
                maps[shard].push((MapElement { key: e.key, verdict }, e.origin));
            }
            let key = lookup_key(family, &key_fields);
            for (k, elements) in maps.into_iter().enumerate() {
                let name = format!("h{s}_{d}_{i}_{layer}_{}_{:08x}{k}_{fields}", fam_digit(family), th.finish() as u32);
                let digest = map_digest(elements.iter().map(|(e, _)| e));
                let lookup = lookup_rule(s, &key, &name);
                lookups.push(if matches.is_empty() { lookup } else { format!("{matches} {lookup}") });
                lo.map_names.push(name.clone());
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
        for (k, e) in interval {
            let verdict = element_verdict(out, s, d, i, e);
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
            lookups.push(lookup_rule(s, &key, &name));
            slot_of[k] = lo.map_names.len() as u32;
            lo.map_names.push(name.clone());
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
/// element (reject) runs on to `goto rj<S>`, a miss ends the rule.
fn lookup_rule(s: Vni, key: &str, name: &str) -> String {
    format!("{key} vmap @{name} goto {}", reject_chain(s))
}

/// The objects of one rule list (its chain, maps and log chains), with
/// where each entry's element is: what [`Memo`] keeps.
#[derive(Debug, Clone)]
struct ListObjects {
    fingerprint: u64,
    /// The fingerprint of the list these objects were patched from.
    patched_from: Option<u64>,
    objects: PolicyObjects,
    /// Per entry of the list: its map (index in `map_names`) and its index
    /// among that map's elements.
    places: Vec<(u32, u32)>,
    map_names: Vec<String>,
}

impl ListObjects {
    /// These objects (of the list `base` they were built for) for `list`,
    /// which differs from `base` only in the verdicts and log prefixes of
    /// the entries `changed`: the maps holding them get new verdicts, new
    /// digests and a [`MapDelta`]; log chains follow.
    fn patched(&self, s: Vni, d: Vni, i: usize, list: &tessera_policy::RuleList, changed: &[usize]) -> Option<ListObjects> {
        let mut next = ListObjects {
            fingerprint: list.fingerprint,
            patched_from: Some(self.fingerprint),
            objects: PolicyObjects {
                chains: self.objects.chains.clone(),
                maps: self.objects.maps.clone(),
                deltas: BTreeMap::new(),
            },
            places: self.places.clone(),
            map_names: self.map_names.clone(),
        };
        let mut old_logs: BTreeSet<String> = BTreeSet::new();
        let mut new_logs: BTreeSet<String> = BTreeSet::new();
        for &k in changed {
            let (slot, at) = *self.places.get(k)?;
            let name = self.map_names.get(slot as usize)?;
            let e = list.entries.get(k)?;
            let verdict = element_verdict(&mut next.objects, s, d, i, e);
            let spec = next.objects.maps.get_mut(name)?;
            let base_digest = self.objects.maps.get(name)?.digest;
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
            let delta = next.objects.deltas.entry(name.clone()).or_insert_with(|| MapDelta { base_digest, ..Default::default() });
            delta.deletes.push(old);
            delta.adds.push(new);
        }
        for g in old_logs.difference(&new_logs).filter(|g| ChainKind::of(g) == Some(ChainKind::Log)) {
            next.objects.chains.remove(g);
        }
        Some(next)
    }
}

/// The objects of the rule lists planned lately, by list chain name:
/// [`list_objects`] is a pure function of the list, so a list planned
/// again (a plan that does not change it, or a second host of a test) is
/// not rebuilt, and a list patched from the one held
/// ([`tessera_policy::RuleList::patch`]) is derived from it in time
/// proportional to the change. Lists neither planned nor held unchanged
/// for a while are dropped.
#[derive(Default)]
struct Memo {
    lists: std::collections::HashMap<String, (u64, std::sync::Arc<ListObjects>)>,
    round: u64,
}

static MEMO: std::sync::LazyLock<std::sync::Mutex<Memo>> = std::sync::LazyLock::new(Default::default);

/// Rounds a list stays in the [`Memo`] unplanned.
const MEMO_ROUNDS: u64 = 8;

impl Memo {
    fn objects(&mut self, lname: &str, s: Vni, d: Vni, i: usize, list: &tessera_policy::RuleList) -> std::sync::Arc<ListObjects> {
        let held = self.lists.get(lname).map(|(_, o)| o.clone());
        let objects = match held {
            Some(o) if o.fingerprint == list.fingerprint && list.fingerprint != 0 => o,
            held => {
                let patched = match (held, list.patch.base()) {
                    (Some(o), Some((base, changed))) if o.fingerprint == base && o.places.len() == list.entries.len() => {
                        o.patched(s, d, i, list, changed)
                    }
                    _ => None,
                };
                std::sync::Arc::new(patched.unwrap_or_else(|| list_objects(s, d, i, list)))
            }
        };
        self.lists.insert(lname.to_string(), (self.round, objects.clone()));
        objects
    }

    /// Keeps the objects of a list the kernel holds unchanged (they are the
    /// base its next patch is derived from), however long it stays so.
    fn keep(&mut self, lname: &str, fingerprint: u64) {
        let round = self.round;
        if let Some((seen, o)) = self.lists.get_mut(lname) {
            if o.fingerprint == fingerprint {
                *seen = round;
            }
        }
    }

    fn forget_unused(&mut self) {
        let round = self.round;
        self.lists.retain(|_, (seen, _)| round - *seen < MEMO_ROUNDS);
    }
}

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
    let objects = policy_objects(desired);
    let mut origin: BTreeMap<(&str, Vec<(u128, u128)>), RuleRef> = BTreeMap::new();
    let mut sums: BTreeMap<RuleRef, (u64, u64)> = BTreeMap::new();
    for (name, map) in &objects.maps {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let (s, d) = (Vni::new(100).unwrap(), Vni::new(200).unwrap());
        assert_eq!(chain_pair(&pair_chain(s, d)), Some((100, 200)));
        assert_eq!(chain_pair(&list_chain(s, d, 1)), Some((100, 200)));
        assert_eq!(map_list_chain("m100_200_1_0_4_3_40123").as_deref(), Some("l100_200_1"));
        assert_eq!(map_list_chain("h100_200_1_0_4_0badcafe0_4").as_deref(), Some("l100_200_1"));
        assert_eq!(map_fields("m100_200_1_0_4_3_40123"), vec![4, 0, 1, 2, 3]);
        assert_eq!(map_fields("m100_200_1_0_4_3_40023"), CANONICAL_ORDER.to_vec(), "not a permutation");
        assert_eq!(map_fields("h100_200_1_0_4_0badcafe0_04"), vec![0, 4]);
        assert!(!map_is_interval("h100_200_1_0_4_0badcafe0_04"));
        assert_eq!(map_family("h100_200_1_0_4_0badcafe0_04"), Some(Family::V4));
        assert_eq!(map_family("m100_200_1_2_6_3_40123"), Some(Family::V6));
        assert_eq!(map_family("digests"), None);
        assert_eq!(object_list("g1_2_0_abcdef01_3p").as_deref(), Some("l1_2_0"));
        assert_eq!(object_list("h1_2_1_0_4_0badcafe0_4").as_deref(), Some("l1_2_1"));
        assert_eq!(object_list("l1_2_0").as_deref(), Some("l1_2_0"));
        assert_eq!(object_list("p1_2"), None);
        assert_eq!(ChainKind::of("rj100"), Some(ChainKind::Reject));
        assert_eq!(ChainKind::of("dispatch"), Some(ChainKind::Dispatch));
        assert!(log_chain_passes("g1_2_0_abcdef01_3p") && !log_chain_passes("g1_2_0_abcdef01_3d"));
    }

    #[test]
    fn shards_grow_by_powers_of_two() {
        assert_eq!(shard_count(0), 1);
        assert_eq!(shard_count(MAX_MAP_ELEMENTS), 1);
        assert_eq!(shard_count(MAX_MAP_ELEMENTS + 1), 2);
        assert_eq!(shard_count(50_000), 8);
    }

    #[test]
    fn keys_follow_the_map_order() {
        let key = tessera_policy::FlowBox { dport: (80, 80), proto: (6, 6), ..tessera_policy::FlowBox::everything(Family::V4) };
        assert_eq!(key_text(&key, &[4, 2, 0, 1, 3]), "80 . 6 . 0.0.0.0/0 . 0.0.0.0/0 . 0-65535");
        assert_eq!(lookup_key(Family::V6, &[4, 2, 0, 1, 3]), "th dport . meta l4proto . ip6 saddr . ip6 daddr . th sport");
        assert_eq!(
            map_type("m1_2_0_0_4_0_40123", Family::V4),
            "type inet_service . ipv4_addr . ipv4_addr . inet_proto . inet_service : verdict; flags interval; counter;"
        );
        assert_eq!(map_type("h1_2_0_0_4_0badcafe0_4", Family::V4), "type inet_service : verdict; counter;");
        assert_eq!(template_matches(&key, &[4]), "meta nfproto ipv4 meta l4proto 6");
        let ports: Vec<tessera_policy::FlowBox> = (1..5).map(|p| tessera_policy::FlowBox { dport: (p, p), ..key }).collect();
        assert_eq!(selective_order(ports.iter()), [4, 0, 1, 2, 3]);
    }

    #[test]
    fn a_patched_list_gives_the_objects_of_a_fresh_build_and_the_exact_delta() {
        let mut rules: Vec<String> = (0..100).map(|i| format!("deny tcp any any > any {}", 2000 + i)).collect();
        rules.extend((0..40).map(|i| format!("pass udp 10.0.0.{i}/32 any > any {}-{}", 100 * i, 100 * i + 50)));
        rules.push("pass icmp any any > any any log".into());
        let mut cache = tessera_policy::ListCache::new();
        let base = policy_objects(&host_cached(&rules, (901, 902), &mut cache));
        rules[7] = "reject tcp any any > any 2007".into();
        rules[120] = "deny udp 10.0.0.20/32 any > any 2000-2050 log".into();
        rules[140] = "deny icmp any any > any any".into();
        let host = host_cached(&rules, (901, 902), &mut cache);
        assert!(host.policies[0].lists[0].patch.base().is_some(), "the cache patched the list");
        let patched = policy_objects(&host);
        let fresh = list_objects(Vni::new(901).unwrap(), Vni::new(902).unwrap(), 0, &host.policies[0].lists[0]).objects;
        for (name, c) in &fresh.chains {
            assert_eq!(patched.chains.get(name), Some(c), "chain {name}");
        }
        let list_chains = |o: &PolicyObjects| {
            o.chains.keys().filter(|n| n.contains("901_902") && !n.starts_with('p')).cloned().collect::<Vec<_>>()
        };
        assert_eq!(list_chains(&patched), list_chains(&fresh), "no stale log chain is left");
        assert_eq!(patched.maps.keys().collect::<Vec<_>>(), fresh.maps.keys().collect::<Vec<_>>());
        let set = |m: &MapSpec| m.elements.iter().map(|(e, _)| e.clone()).collect::<BTreeSet<MapElement>>();
        for (name, m) in &fresh.maps {
            let p = &patched.maps[name];
            assert_eq!((p.digest, set(p)), (m.digest, set(m)), "map {name}");
            match patched.deltas.get(name) {
                Some(d) => {
                    assert_eq!(d.base_digest, base.maps[name].digest);
                    let mut applied = set(&base.maps[name]);
                    for e in &d.deletes {
                        assert!(applied.remove(e), "{e:?} was in the base map");
                    }
                    applied.extend(d.adds.iter().cloned());
                    assert_eq!(applied, set(m), "base − deletes + adds = the new map {name}");
                }
                None => assert_eq!(base.maps[name].digest, m.digest, "an unchanged map {name} has no delta"),
            }
        }
        assert_eq!(patched.deltas.values().map(|d| d.adds.len()).sum::<usize>(), 3, "one element per changed rule");
    }

    #[test]
    fn a_list_held_unchanged_through_many_plans_is_still_patched() {
        let mut rules: Vec<String> = (0..50).map(|i| format!("deny tcp any any > any {}", 3000 + i)).collect();
        let mut cache = tessera_policy::ListCache::new();
        let host = host_cached(&rules, (903, 904), &mut cache);
        policy_objects(&host);
        // Plans that leave the list alone (the kernel holds it as it is).
        let kept: BTreeSet<String> = [list_chain(Vni::new(903).unwrap(), Vni::new(904).unwrap(), 0)].into();
        for _ in 0..2 * MEMO_ROUNDS {
            policy_objects_except(&host, &kept);
        }
        rules[10] = "pass tcp any any > any 3010".into();
        let patched = policy_objects(&host_cached(&rules, (903, 904), &mut cache));
        assert_eq!(patched.deltas.values().map(|d| d.adds.len()).sum::<usize>(), 1, "derived from the held objects");
    }

    fn host_with(rules: &[String]) -> DesiredHost {
        host_cached(rules, (1, 2), &mut tessera_policy::ListCache::new())
    }

    /// A desired host enforcing `rules` from network `a` to network `b`
    /// (ids and VNIs), the list compiled through `cache`.
    fn host_cached(rules: &[String], (a, b): (u128, u128), cache: &mut tessera_policy::ListCache) -> DesiredHost {
        use tessera_model::{Network, Policy, ProjectName, Rule, Subnet};
        let net = |id: u128, cidr: &str| Network {
            id: uuid::Uuid::from_u128(id),
            fq_name: format!("default-domain:admin:n{id}").parse().unwrap(),
            vni: Vni::new(id as u32).unwrap(),
            subnets: vec![Subnet { cidr: cidr.parse().unwrap(), gateway: None, pools: vec![], dns_servers: vec![] }],
            import_targets: vec![],
            export_targets: vec![],
            shared: false,
            external: false,
            policies: vec![],
            labels: Default::default(),
        };
        let p = Policy {
            id: uuid::Uuid::from_u128(9),
            fq_name: "default-domain:admin:p".parse().unwrap(),
            rules: rules.iter().map(|r| Rule::parse("r", r, &ProjectName::default_project()).unwrap()).collect(),
        };
        let (a, b) = (net(a, "10.0.0.0/24"), net(b, "10.1.0.0/24"));
        let list = cache.get_or_compile(&[&p], &a, &b, Verdict::Deny);
        DesiredHost {
            underlay_ip: "10.99.0.1".parse().unwrap(),
            underlay_ifname: "eth0".into(),
            underlay_mtu: 1500,
            networks: vec![],
            pair_zones: vec![],
            policies: vec![PairPolicy { src: a.vni, dst: b.vni, lists: vec![list] }],
            watches: vec![],
        }
    }

    #[test]
    fn a_list_of_port_rules_is_one_hash_lookup() {
        let rules: Vec<String> = (0..100).map(|p| format!("deny tcp any any > any {}", 1000 + p)).collect();
        let o = policy_objects(&host_with(&rules));
        assert_eq!(o.maps.len(), 1, "{:?}", o.maps.keys());
        let (name, map) = o.maps.iter().next().unwrap();
        assert!(name.starts_with("h1_2_0_0_4_") && name.ends_with("_4"), "{name}");
        assert_eq!(map.elements.len(), 100);
        assert_eq!(map_type(name, Family::V4), "type inet_service : verdict; counter;");
        let list = &o.chains["l1_2_0"].rules;
        assert_eq!(list[0], format!("meta nfproto ipv4 meta l4proto 6 th dport vmap @{name} goto rj1"));
        assert_eq!(list[1], "drop");
    }

    #[test]
    fn ranges_go_to_interval_maps() {
        let rules: Vec<String> = (0..40).map(|p| format!("deny tcp any any > any {}-{}", 1000 + 10 * p, 1005 + 10 * p)).collect();
        let o = policy_objects(&host_with(&rules));
        assert_eq!(o.maps.len(), 1);
        let name = o.maps.keys().next().unwrap();
        assert!(name.starts_with("m1_2_0_0_4_0_4"), "the port is the most selective field: {name}");
    }

    #[test]
    fn digests_do_not_depend_on_order() {
        let e = |p: u16, v: ElementVerdict| MapElement {
            key: tessera_policy::FlowBox { dport: (p, p), ..tessera_policy::FlowBox::everything(Family::V4) },
            verdict: v,
        };
        let (a, b) = (e(1, ElementVerdict::Return), e(2, ElementVerdict::Drop));
        assert_eq!(map_digest([&a, &b]), map_digest([&b, &a]));
        assert_ne!(map_digest([&a]), map_digest([&e(1, ElementVerdict::Drop)]));
    }

    #[test]
    fn digest_values_round_trip() {
        assert_eq!(
            decode_chain_value(chain_digest_value(0xdead_beef, Some(Verdict::Deny))),
            Some((0xdead_beef, Some(Verdict::Deny)))
        );
        assert_eq!(decode_chain_value(map_digest_value(7)), None);
        assert_eq!(decode_map_value(map_digest_value(7)), Some(7));
        assert_ne!(name_key("l1_2_0"), name_key("l1_2_1"));
    }
}
