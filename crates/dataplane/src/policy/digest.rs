//! The entries of the `digests` map (`ipv6_addr : ipv6_addr`): the key of
//! an object (a hash of its name) and the value recorded for it (its kind
//! and digest), for chains, maps, the skeleton's marker, rule lists'
//! fingerprints and watched pairs; and reading them back.

use tessera_policy::flow::Fnv;
use tessera_policy::Verdict;

use crate::desired::PairWatch;
use crate::names::SKELETON_VERSION;
use crate::observed::PolicyState;

const KIND_CHAIN: u128 = 1;
const KIND_MAP: u128 = 2;
const KIND_SKELETON: u128 = 3;
const KIND_WATCH: u128 = 4;
const KIND_LIST: u128 = 5;

/// A watched pair's entry in `digests`: key and value.
pub fn watch_digest(w: &PairWatch) -> (u128, u128) {
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
    f.bytes(SKELETON_VERSION.as_bytes());
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
pub fn derive_digests(state: &mut PolicyState) {
    for (name, c) in state.chains.iter_mut() {
        let (digest, default) = state.digests.get(&name_key(name)).and_then(|v| decode_chain_value(*v)).unzip();
        c.digest = digest;
        c.default = default.flatten();
    }
    for (name, m) in state.maps.iter_mut() {
        m.digest = state.digests.get(&name_key(name)).and_then(|v| decode_map_value(*v));
    }
}

/// A rule list's fingerprint entry in `digests`: key and value.
pub fn list_fingerprint_digest(list_chain: &str, fingerprint: u64) -> (u128, u128) {
    (name_key(&format!("f{list_chain}")), (KIND_LIST << 120) | u128::from(fingerprint))
}
