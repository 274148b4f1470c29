//! The firewall of flows between (and within) networks, as nftables objects
//! of `table inet tessera_policy` (pure).
//!
//! Where it runs: the `forward` hook, after conntrack. The skeleton's base
//! chain accepts `ct state established,related` first (replies and packets
//! of allowed flows never walk rules), then jumps to `dispatch`, which looks
//! up the input and output interfaces in one anonymous verdict map:
//! `"tb<S>" . "tb<D>"` and `"tb<S>" . "tx<D>"` jump to the program of flows
//! from network `S` to network `D`; for flows that arrive through a tunnel
//! for a local endpoint, `"tx<D>" . SOURCE-SUBNET . "tb<D>"` (one map per
//! family, the subnets of `S`) jumps to the same program. Both ends judge
//! every flow: the host where it starts and the host where it ends, so a
//! host that does not judge (its firewall flushed, or a host sending
//! whatever it likes) gets no more through than the policy allows. A flow
//! between two hosts is therefore counted by the hit counters of both.
//!
//! Objects, for the program of flows from VNI `S` to VNI `D`:
//! - chain `p<S>_<D>`: `jump l<S>_<D>_0; jump l<S>_<D>_1; accept`;
//! - chain `l<S>_<D>_<i>` (rule list `i`): for each layer (see
//!   `tessera_policy::layer`), for each family, one lookup per map of the
//!   layer, then the list's default verdict. Each lookup rule ends in the
//!   map's tail, `goto dn<S>` or `goto rj<S>` (`… vmap @m goto dn<S>`),
//!   reached only when the element found says `continue`: an element's
//!   verdict is `return` for pass (the next list decides), `continue` for
//!   the refusal of the tail, `goto dn<S>` / `goto rj<S>` for the other, or
//!   `goto g…` for a rule marked `log`; a miss ends the rule. The tail is the
//!   refusal most of the map's entries make (deny when none refuses), so
//!   that turning a pass into that refusal adds no element that jumps:
//!   adding one makes the kernel validate every jump of the table, every
//!   element of every verdict map included (10–20 ms at 50,000 elements, on
//!   every such change). The boxes of a layer never overlap, so the maps of
//!   a layer can be looked up in any order;
//! - hash maps `h<S>_<D>_<i>_<layer>_<4|6>_<template><shard>_<fields>`: boxes
//!   that are exact points in some fields and share the same ranges in the
//!   others (a list of ports, of host addresses, of address and port pairs)
//!   are looked up by their exact fields, behind plain matches on the shared
//!   ranges (`meta nfproto ipv4 meta l4proto 6 th dport vmap @h… goto dn<S>`). A hash
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
//!
//! The table also steers the traffic of service chains to service
//! instances, in its prerouting hook: chain `steer` ([`steer_chain`]).
//!
//! Files: `keys` (the key fields and types of the verdict maps), `chains`
//! (chain names and kinds), `digest` (the entries of `digests`), `objects`
//! (the objects the planner wants), `lists` (the objects of one rule list),
//! `programs` (the objects of every program of a host, and the memo of rule
//! lists), `steer` (the steer chain) and `counters` (hit counters per
//! rule).

mod chains;
mod counters;
mod digest;
mod keys;
mod lists;
mod objects;
mod programs;
mod steer;

pub use chains::{
    chain_pair, deny_chain, list_chain, map_list_chain, object_list, pair_chain, reject_chain, ChainKind, ChainSpec,
};
pub use counters::{rule_counters, ElementCounter, RuleCounter};
pub use digest::{
    chain_digest_value, decode_chain_value, decode_map_value, derive_digests, list_fingerprint_digest, map_digest_value,
    name_key, skeleton_marker, watch_digest,
};
pub use keys::{
    key_ranges, key_text, lookup_key, map_family, map_fields, map_is_interval, map_key_text, map_type, selective_order,
    CANONICAL_ORDER,
};
pub use lists::{shard_count, HASH_MIN, MAX_HASH_ELEMENTS, MAX_MAP_ELEMENTS};
pub use objects::{MapDelta, MapSpec, PolicyObjects};
pub use programs::{policy_objects, policy_objects_except};
pub use steer::steer_chain;

#[cfg(test)]
mod tests;
