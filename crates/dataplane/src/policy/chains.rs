//! The chains of `inet tessera_policy`: their names (`p<S>_<D>`,
//! `l<S>_<D>_<i>`, `rj<S>`, `dn<S>`, `g…`, `dispatch`, `steer`), their kinds (the order they are installed
//! in), and a chain's rules with their digest.

use tessera_model::Vni;
use tessera_policy::flow::Fnv;
use tessera_policy::Verdict;

use crate::names::{DISPATCH, STEER};

/// What a chain is for; chains are installed in this order (a chain only
/// refers to chains of an earlier kind) and deleted in the reverse order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChainKind {
    /// `steer`: refers to no chain.
    Steer,
    /// `rj<S>` and `dn<S>`.
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
        if name == STEER {
            return Some(ChainKind::Steer);
        }
        match name.as_bytes().first()? {
            b'r' if name.starts_with("rj") => Some(ChainKind::Reject),
            b'd' if name.starts_with("dn") => Some(ChainKind::Reject),
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

/// `dn<S>`: logs (rate limited) and drops what the program of flows from
/// `S` denies.
pub fn deny_chain(src: Vni) -> String {
    format!("dn{src}")
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

/// The (source, destination) VNIs of a pair or rule-list chain name.
pub fn chain_pair(name: &str) -> Option<(u32, u32)> {
    let rest = name.strip_prefix('p').or_else(|| name.strip_prefix('l'))?;
    let mut parts = rest.split('_');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn digest_of<'a>(parts: impl IntoIterator<Item = &'a str>) -> u64 {
    let mut h = Fnv::new();
    for p in parts {
        h.bytes(p.as_bytes());
        h.byte(b'\n');
    }
    h.finish()
}

pub(super) fn chain(kind: ChainKind, mut body: Vec<String>, last: &str, default: Option<Verdict>) -> ChainSpec {
    body.push(last.to_string());
    let digest = digest_of(body.iter().map(String::as_str));
    ChainSpec { rules: body, digest, kind, default }
}

pub(super) fn verdict_letter(v: Verdict) -> char {
    match v {
        Verdict::Pass => 'p',
        Verdict::Deny => 'd',
        Verdict::Reject => 'r',
    }
}

pub(super) fn plain_verdict(v: Verdict, src: Vni) -> String {
    match v {
        Verdict::Pass => "return".into(),
        Verdict::Deny => format!("goto {}", deny_chain(src)),
        Verdict::Reject => format!("goto {}", reject_chain(src)),
    }
}
