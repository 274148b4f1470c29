//! Compiled programs: what a host's firewall evaluates for the new flows of
//! one ordered pair of networks.
//!
//! A [`PairProgram`] for flows from `S` to `D` is a list of [`RuleList`]s;
//! the flow passes when every list passes, and otherwise gets the verdict of
//! the first list that does not pass. For `S == D` there is one list: the
//! policies attached to `S`, default pass. For `S != D` there are two: the
//! policies attached to `S` (the flow leaving `S`) and those attached to `D`
//! (the flow entering `D`), each defaulting to deny, or to pass when a route
//! target connects the two networks. Lists that can only pass are left out,
//! and two identical lists (the same policies attached to both networks)
//! are evaluated once; a program with no list passes everything.
//!
//! Each list is a set of [`Entry`]s in layers (see [`crate::layer`]): the
//! entry of the lowest layer that contains the flow decides; no entry means
//! the list's default.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tessera_model::{Network, Policy, RuleAction};
use uuid::Uuid;

use crate::flow::{Flow, FlowBox};
use crate::layer::assign_layers;
use crate::rules::{rule_boxes_into, rule_matches, Side};
use crate::topology::{attached, Topology};

/// What happens to a new flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Verdict {
    Pass,
    /// Dropped silently.
    Deny,
    /// Answered with a TCP reset or an ICMP(v6) port unreachable.
    Reject,
}

impl From<RuleAction> for Verdict {
    fn from(a: RuleAction) -> Self {
        match a {
            RuleAction::Pass => Verdict::Pass,
            RuleAction::Deny => Verdict::Deny,
            RuleAction::Reject => Verdict::Reject,
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "pass",
            Verdict::Deny => "deny",
            Verdict::Reject => "reject",
        })
    }
}

/// A rule of a policy: the policy and the rule's index in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RuleRef {
    pub policy: Uuid,
    pub rule: usize,
}

/// One compiled box of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry {
    pub key: FlowBox,
    pub verdict: Verdict,
    /// The rule the box comes from (hit counters are summed per rule).
    pub origin: RuleRef,
    /// For rules marked `log`: the kernel log prefix of the flows they
    /// match, `tessera POLICY#RULE SRC>DST VERDICT ` (at most 127 bytes).
    pub log: Option<String>,
    /// The layer (lookup) that holds the box; boxes of one layer never
    /// overlap.
    pub layer: u32,
}

/// A list's entries, in shared chunks ([`crate::entries`]).
pub type Entries = crate::entries::Chunks<Entry>;

/// One policy list specialised to a pair of networks.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RuleList {
    /// The verdict when no entry matches.
    pub default: Verdict,
    /// In rule order (the order of the policies, then of their rules).
    /// In shared chunks: a copy of a 50,000-rule list (the cache hands one
    /// out per plan) copies pointers, and a patch copies the chunks it
    /// changes.
    pub entries: Entries,
    /// A hash of everything the list is compiled from
    /// ([`list_fingerprint`]): equal fingerprints, equal lists. A data plane
    /// uses it to leave alone what did not change, a [`ListCache`] to
    /// compile only what did.
    #[serde(default)]
    pub fingerprint: u64,
    /// How the list was made from an earlier one, when only verdicts or
    /// log flags of some rules changed: a data plane holding that earlier
    /// list updates those entries instead of rebuilding everything. Not
    /// part of the list's value (ignored by `==` and hashing).
    #[serde(skip)]
    pub patch: Patch,
}

/// Provenance of a [`RuleList`] patched from an earlier one
/// ([`ListCache`]): the earlier list's fingerprint and the indexes of the
/// entries whose verdict or log prefix changed (the entries are otherwise
/// identical, in the same order). Two patches always compare equal.
#[derive(Debug, Clone, Default)]
pub struct Patch(pub Option<std::sync::Arc<(u64, Vec<usize>)>>);

impl PartialEq for Patch {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Patch {}

impl std::hash::Hash for Patch {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}

impl Patch {
    /// The earlier list's fingerprint and the changed entries.
    pub fn base(&self) -> Option<(u64, &[usize])> {
        self.0.as_ref().map(|p| (p.0, p.1.as_slice()))
    }
}

/// The fingerprint of the list compiled from `list` for flows from `src` to
/// `dst` with `default`: a hash of the policies (ids, names and rules, in
/// order), of the two networks' names and subnets, and of the default.
/// Stable for one build.
pub fn list_fingerprint(list: &[&Policy], src: &Network, dst: &Network, default: Verdict) -> u64 {
    fingerprint_of(list.iter().map(|p| policy_hash(p)), src, dst, default)
}

/// A hash of one policy's id, name and rules (in order): what a list's
/// fingerprint takes from each of its policies. A [`crate::Compiler`]
/// computes it once per policy, however many lists the policy is part of;
/// the rules' part is [`tessera_model::Rules::fingerprint`], from the hashes
/// the rule chunks keep (a chunk shared with an earlier copy of the policy
/// is not hashed again).
pub fn policy_hash(p: &Policy) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = crate::flow::Fnv::new();
    p.id.hash(&mut h);
    p.fq_name.hash(&mut h);
    h.write_u64(p.rules.fingerprint());
    h.finish()
}

/// [`list_fingerprint`] from the [`policy_hash`]es of the list's policies.
fn fingerprint_of(policy_hashes: impl Iterator<Item = u64>, src: &Network, dst: &Network, default: Verdict) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = crate::flow::Fnv::new();
    for p in policy_hashes {
        h.write_u64(p);
    }
    for n in [src, dst] {
        h.write_u8(0xff);
        n.fq_name.hash(&mut h);
        for s in &n.subnets {
            s.cidr.hash(&mut h);
        }
    }
    default.hash(&mut h);
    h.finish()
}

/// Compiled lists by fingerprint, kept between compilations so that a
/// change recompiles only the lists it touches. Lists not used by the last
/// [`ListCache::retain_used`] round are dropped then.
///
/// A list whose rules changed only in their verdicts or log flags (the
/// usual edit: a rule turned from pass to reject) is not recompiled: its
/// boxes and layers depend on the rules' matches alone, so the earlier list
/// of the same policies and networks is copied and the entries of the
/// changed rules get their new verdicts ([`RuleList::patch`] says which).
#[derive(Debug, Clone, Default)]
pub struct ListCache {
    lists: HashMap<u64, RuleList>,
    used: std::collections::HashSet<u64>,
    /// Per list identity (its policies' ids, the networks, the default):
    /// the fingerprint of the last list compiled for it and the policies it
    /// was compiled from.
    last: HashMap<ListIdentity, (u64, Vec<Policy>)>,
}

/// What stays the same when only a list's rules change.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ListIdentity {
    policies: Vec<Uuid>,
    src: Uuid,
    dst: Uuid,
    /// The networks' names and subnets and the default ([`fingerprint_of`] of no policy).
    context: u64,
}

impl ListIdentity {
    fn of(list: &[&Policy], src: &Network, dst: &Network, default: Verdict) -> Self {
        ListIdentity {
            policies: list.iter().map(|p| p.id).collect(),
            src: src.id,
            dst: dst.id,
            context: fingerprint_of(std::iter::empty(), src, dst, default),
        }
    }
}

/// Two rules that differ at most in their action and log flag.
pub(crate) fn same_match(a: &tessera_model::Rule, b: &tessera_model::Rule) -> bool {
    a.protocol == b.protocol
        && a.src == b.src
        && a.src_ports == b.src_ports
        && a.direction == b.direction
        && a.dst == b.dst
        && a.dst_ports == b.dst_ports
}

/// The rules at the same index of two policies of as many rules that
/// differ, with their index. With the same chunking, chunks shared with the
/// earlier copy are skipped (a one-rule edit of 50,000 rules compares 256).
pub(crate) fn differing_rules<'r>(
    o: &'r Policy,
    n: &'r Policy,
) -> Box<dyn Iterator<Item = (usize, &'r tessera_model::Rule, &'r tessera_model::Rule)> + 'r> {
    let (oc, nc) = (o.rules.chunks(), n.rules.chunks());
    let aligned = oc.len() == nc.len() && oc.iter().zip(nc).all(|(a, b)| a.rules.len() == b.rules.len());
    let pairs: Box<dyn Iterator<Item = _> + 'r> = if aligned {
        Box::new(
            oc.iter()
                .zip(nc)
                .scan(0, |start, (a, b)| {
                    let s = *start;
                    *start += a.rules.len();
                    Some((s, a, b))
                })
                .filter(|(_, a, b)| !std::sync::Arc::ptr_eq(a, b))
                .flat_map(|(s, a, b)| a.rules.iter().zip(&b.rules).enumerate().map(move |(k, (x, y))| (s + k, x, y))),
        )
    } else {
        Box::new(o.rules.iter().zip(n.rules.iter()).enumerate().map(|(k, (x, y))| (k, x, y)))
    };
    Box::new(pairs.filter(|(_, x, y)| x != y))
}

/// The rules (policy position in the list, rule index) whose verdict or log
/// flag differ between `old` and `new`, or `None` when anything else
/// differs (a match, a rule count, a policy's name).
fn verdict_changes(old: &[Policy], new: &[&Policy]) -> Option<Vec<(usize, usize)>> {
    if old.len() != new.len() {
        return None;
    }
    let mut out = Vec::new();
    for (p, (o, n)) in old.iter().zip(new).enumerate() {
        if o.id != n.id || o.fq_name != n.fq_name || o.rules.len() != n.rules.len() {
            return None;
        }
        for (k, x, y) in differing_rules(o, n) {
            if !same_match(x, y) {
                return None;
            }
            out.push((p, k));
        }
    }
    Some(out)
}

/// `base` with the entries of the rules in `changed` given the verdicts and
/// log prefixes of `list`'s rules.
fn patch_list(
    base: &RuleList,
    base_fingerprint: u64,
    changed: &[(usize, usize)],
    list: &[&Policy],
    src: &Network,
    dst: &Network,
    fingerprint: u64,
) -> RuleList {
    let pos: HashMap<Uuid, usize> = list.iter().enumerate().map(|(i, p)| (p.id, i)).collect();
    let order = |e: &Entry| (pos.get(&e.origin.policy).copied().unwrap_or(usize::MAX), e.origin.rule);
    let mut entries = base.entries.clone();
    let mut touched = Vec::new();
    for &(p, i) in changed {
        let policy = list[p];
        let rule = &policy.rules[i];
        let verdict = Verdict::from(rule.action);
        let log = rule.log.then(|| log_prefix(policy, i, src, dst, verdict));
        let from = entries.partition_point(|e| order(e) < (p, i));
        for k in from..entries.len() {
            // Looked at before it is changed: a chunk is copied only for an entry of the rule.
            if entries.get(k).is_none_or(|e| order(e) != (p, i)) {
                break;
            }
            let Some(e) = entries.get_mut(k) else { break };
            e.verdict = verdict;
            e.log = log.clone();
            touched.push(k);
        }
    }
    RuleList { default: base.default, entries, fingerprint, patch: Patch(Some(std::sync::Arc::new((base_fingerprint, touched)))) }
}

impl ListCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// The compiled list, from the cache or compiled now.
    pub fn get_or_compile(&mut self, list: &[&Policy], src: &Network, dst: &Network, default: Verdict) -> RuleList {
        let fp = list_fingerprint(list, src, dst, default);
        self.get_or_compile_fingerprinted(fp, list, src, dst, default)
    }

    /// [`ListCache::get_or_compile`] when the fingerprint is known.
    fn get_or_compile_fingerprinted(
        &mut self,
        fp: u64,
        list: &[&Policy],
        src: &Network,
        dst: &Network,
        default: Verdict,
    ) -> RuleList {
        self.used.insert(fp);
        if let Some(l) = self.lists.get(&fp) {
            return l.clone();
        }
        let identity = ListIdentity::of(list, src, dst, default);
        let patched = self.last.get(&identity).and_then(|(base_fp, old)| {
            let base = self.lists.get(base_fp)?;
            // A policy twice in one list: entries cannot be told apart by origin.
            let distinct = identity.policies.iter().collect::<std::collections::HashSet<_>>().len() == list.len();
            let changed = verdict_changes(old, list).filter(|_| distinct)?;
            Some(patch_list(base, *base_fp, &changed, list, src, dst, fp))
        });
        let compiled = patched.unwrap_or_else(|| compile_list_fingerprinted(list, src, dst, default, fp));
        self.last.insert(identity, (fp, list.iter().map(|p| (*p).clone()).collect()));
        self.lists.insert(fp, compiled.clone());
        compiled
    }

    /// Drops the lists not asked for since the last call.
    pub fn retain_used(&mut self) {
        let used = std::mem::take(&mut self.used);
        self.lists.retain(|fp, _| used.contains(fp));
        self.last.retain(|_, (fp, _)| used.contains(fp));
    }

    /// Number of lists held.
    pub fn len(&self) -> usize {
        self.lists.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lists.is_empty()
    }
}

impl RuleList {
    /// Number of layers (lookups per family) the list needs.
    pub fn layers(&self) -> u32 {
        self.entries.iter().map(|e| e.layer + 1).max().unwrap_or(0)
    }

    /// The list's verdict for `flow`.
    pub fn verdict(&self, flow: &Flow) -> Verdict {
        self.entries.iter().filter(|e| e.key.contains(flow)).min_by_key(|e| e.layer).map_or(self.default, |e| e.verdict)
    }

    /// Whether every flow passes (and nothing is logged).
    fn passes_everything(&self) -> bool {
        self.default == Verdict::Pass && self.entries.iter().all(|e| e.verdict == Verdict::Pass && e.log.is_none())
    }
}

/// What a host evaluates for new flows from network `src` to network `dst`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PairProgram {
    pub src: Uuid,
    pub dst: Uuid,
    pub lists: Vec<RuleList>,
}

impl PairProgram {
    /// The program's verdict for `flow`: pass if every list passes, else the
    /// verdict of the first list that does not.
    pub fn verdict(&self, flow: &Flow) -> Verdict {
        self.lists.iter().map(|l| l.verdict(flow)).find(|v| *v != Verdict::Pass).unwrap_or(Verdict::Pass)
    }

    /// True when the program lets everything through (no firewall needed).
    pub fn is_pass_all(&self) -> bool {
        self.lists.is_empty()
    }
}

const LOG_PREFIX_MAX: usize = 127;

fn log_prefix(policy: &Policy, rule: usize, src: &Network, dst: &Network, verdict: Verdict) -> String {
    let mut s = format!("tessera {}#{rule} {}>{} {verdict} ", policy.fq_name.name(), src.name(), dst.name());
    if s.len() > LOG_PREFIX_MAX {
        let mut cut = LOG_PREFIX_MAX;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// Compiles the policies `list` (in order) for flows from `src` to `dst`.
pub fn compile_list(list: &[&Policy], src: &Network, dst: &Network, default: Verdict) -> RuleList {
    compile_list_fingerprinted(list, src, dst, default, list_fingerprint(list, src, dst, default))
}

fn compile_list_fingerprinted(list: &[&Policy], src: &Network, dst: &Network, default: Verdict, fingerprint: u64) -> RuleList {
    let (s, d) = (Side::of(src), Side::of(dst));
    let mut boxes: Vec<FlowBox> = Vec::new();
    // For each box: the policy (index in `list`) and rule it comes from.
    let mut from: Vec<(u32, u32)> = Vec::new();
    for (p, policy) in list.iter().enumerate() {
        for (i, rule) in policy.rules.iter().enumerate() {
            let before = boxes.len();
            rule_boxes_into(rule, &s, &d, &mut boxes);
            from.extend(std::iter::repeat_n((p as u32, i as u32), boxes.len() - before));
        }
    }
    let layers = assign_layers(&boxes);
    let rules: Vec<Vec<&tessera_model::Rule>> = list.iter().map(|p| p.rules.iter().collect()).collect();
    let mut entries = Vec::with_capacity(boxes.len());
    for ((key, (p, i)), layer) in boxes.into_iter().zip(from).zip(layers) {
        let Some(layer) = layer else { continue };
        let policy = list[p as usize];
        let rule = rules[p as usize][i as usize];
        let verdict = Verdict::from(rule.action);
        let log = rule.log.then(|| log_prefix(policy, i as usize, src, dst, verdict));
        entries.push(Entry { key, verdict, origin: RuleRef { policy: policy.id, rule: i as usize }, log, layer });
    }
    RuleList { default, entries: entries.into(), fingerprint, patch: Patch::default() }
}

/// The default verdict of the lists of flows from `src` to `dst`: pass
/// within a network and between networks a route target connects, deny
/// otherwise.
pub fn default_verdict(topology: &Topology, src: Uuid, dst: Uuid) -> Verdict {
    if src == dst || topology.route_target_connected(src, dst) {
        Verdict::Pass
    } else {
        Verdict::Deny
    }
}

/// The default verdict of the lists of flows from `src` to `dst`: also
/// pass between an external network and a network (what reaches the
/// outside, or comes in through a floating IP or a published port, was let
/// out or in on purpose; policies may refuse some of it).
fn pair_default(topology: &Topology, src: &Network, dst: &Network) -> Verdict {
    if src.external || dst.external {
        Verdict::Pass
    } else {
        default_verdict(topology, src.id, dst.id)
    }
}

/// Compiles the program of new flows from `src` to `dst`.
pub fn compile_pair(src: &Network, dst: &Network, policies: &HashMap<Uuid, &Policy>, topology: &Topology) -> PairProgram {
    compile_pair_cached(src, dst, policies, topology, &mut ListCache::new())
}

/// [`compile_pair`], taking unchanged lists from `cache`.
pub fn compile_pair_cached(
    src: &Network,
    dst: &Network,
    policies: &HashMap<Uuid, &Policy>,
    topology: &Topology,
    cache: &mut ListCache,
) -> PairProgram {
    compile_pair_hashed(src, dst, policies, topology, cache, &|p| policy_hash(p))
}

/// [`compile_pair_cached`] with the policies' [`policy_hash`]es from
/// `hash_of`.
pub(crate) fn compile_pair_hashed(
    src: &Network,
    dst: &Network,
    policies: &HashMap<Uuid, &Policy>,
    topology: &Topology,
    cache: &mut ListCache,
    hash_of: &dyn Fn(&Policy) -> u64,
) -> PairProgram {
    let default = pair_default(topology, src, dst);
    let mut lists: Vec<RuleList> = Vec::new();
    let owners: &[&Network] = if src.id == dst.id { &[src] } else { &[src, dst] };
    let mut compiled: Vec<&[Uuid]> = Vec::new();
    for owner in owners {
        // The same policies in the same order compile to the same list.
        if compiled.contains(&owner.policies.as_slice()) {
            continue;
        }
        compiled.push(&owner.policies);
        let list = attached(owner, policies);
        let fp = fingerprint_of(list.iter().map(|p| hash_of(p)), src, dst, default);
        let list = cache.get_or_compile_fingerprinted(fp, &list, src, dst, default);
        if !list.passes_everything() && !lists.contains(&list) {
            lists.push(list);
        }
    }
    PairProgram { src: src.id, dst: dst.id, lists }
}

/// The reference verdict for `flow` from `src` to `dst`, read straight from
/// the rules: the executable form of the semantics in the crate docs.
pub fn reference_verdict(
    src: &Network,
    dst: &Network,
    policies: &HashMap<Uuid, &Policy>,
    topology: &Topology,
    flow: &Flow,
) -> Verdict {
    let default = pair_default(topology, src, dst);
    let owners: &[&Network] = if src.id == dst.id { &[src] } else { &[src, dst] };
    for owner in owners {
        let first = attached(owner, policies)
            .into_iter()
            .flat_map(|p| p.rules.iter())
            .find(|r| rule_matches(r, src, dst, flow))
            .map_or(default, |r| Verdict::from(r.action));
        if first != Verdict::Pass {
            return first;
        }
    }
    Verdict::Pass
}
