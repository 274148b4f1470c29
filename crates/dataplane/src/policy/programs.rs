//! The objects of every program of a host ([`policy_objects`]), through a
//! memo of the rule lists planned lately, so that planning a list again
//! costs nothing and a patched list costs in proportion to its change.

use std::collections::BTreeSet;

use tessera_model::Vni;

use super::chains::{chain, deny_chain, list_chain, pair_chain, reject_chain, ChainKind};
use super::lists::{list_objects, ListObjects};
use super::objects::PolicyObjects;
use crate::desired::{bridge_name, table_id, vxlan_name, DesiredHost, PairPolicy};
use crate::names::{DISPATCH, STEER};
use crate::nflog::DropKind;

/// The objects of every program of `desired`.
pub fn policy_objects(desired: &DesiredHost) -> PolicyObjects {
    policy_objects_except(desired, &BTreeSet::new())
}

/// [`policy_objects`] without the objects of the rule lists named in `kept`
/// (their chain, maps and log chains), which the kernel already holds as
/// they should be. The `dispatch` and `steer` chains are always there.
pub fn policy_objects_except(desired: &DesiredHost, kept: &BTreeSet<String>) -> PolicyObjects {
    let mut out = PolicyObjects::default();
    let mut dispatch: Vec<String> = Vec::new();
    // Flows that arrive through a tunnel for a local endpoint, by family:
    // the tunnel they arrive by and the bridge they leave by say the
    // destination network, their source address the source network (the
    // networks a VRF holds never overlap).
    let (mut arrivals4, mut arrivals6): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
    let mut sources: BTreeSet<Vni> = BTreeSet::new();
    let external = |v: Vni| {
        desired.uplinks.iter().any(|u| u.external == v)
            || desired.networks.iter().any(|n| n.egress.as_ref().is_some_and(|e| e.external == v))
    };
    let uplinks_of = |v: Vni| desired.uplinks.iter().filter(move |u| u.external == v).map(|u| u.ifname.as_str());
    // Per local network, the program of what arrives from the outside.
    let mut from_outside: std::collections::BTreeMap<Vni, String> = std::collections::BTreeMap::new();
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
        if external(s) {
            // From the outside: on the gateway, from its uplink; on the
            // endpoint's host, through the tunnel from the gateway.
            for up in uplinks_of(s) {
                dispatch.push(format!("\"{up}\" . \"{tb_d}\" : jump {pname}"));
                dispatch.push(format!("\"{up}\" . \"{tx_d}\" : jump {pname}"));
            }
            from_outside.insert(d, pname);
            continue;
        }
        if external(d) {
            // To the outside, on the gateway.
            for up in uplinks_of(d) {
                dispatch.push(format!("\"{tb_s}\" . \"{up}\" : jump {pname}"));
                dispatch.push(format!("\"{}\" . \"{up}\" : jump {pname}", vxlan_name(s)));
            }
            continue;
        }
        dispatch.push(format!("\"{tb_s}\" . \"{tb_d}\" : jump {pname}"));
        dispatch.push(format!("\"{tb_s}\" . \"{tx_d}\" : jump {pname}"));
        let source = desired.networks.iter().find(|n| n.vni == s);
        for sub in source.into_iter().flat_map(|n| &n.subnets) {
            let entry = format!("\"{tx_d}\" . {} . \"{tb_d}\" : jump {pname}", sub.cidr.trunc());
            if sub.cidr.addr().is_ipv4() {
                arrivals4.push(entry)
            } else {
                arrivals6.push(entry)
            }
        }
    }
    // What else may arrive through a network's tunnel for a local endpoint:
    // from the network itself and from the networks it exchanges routes
    // with (their pairs pass everything when they have no program), and,
    // when it reaches the outside, from the outside. Anything else was
    // forged by a host of the fabric: dropped.
    let programmed: BTreeSet<String> = arrivals4
        .iter()
        .chain(arrivals6.iter())
        .map(|e| e.rsplit_once(" : ").map(|(k, _)| k.to_string()).unwrap_or_default())
        .collect();
    let mut catch_all: Vec<String> = Vec::new();
    for d in desired.networks.iter().filter(|n| !n.local.is_empty()) {
        let (tb_d, tx_d) = (bridge_name(d.vni), vxlan_name(d.vni));
        let peers =
            desired.networks.iter().filter(|n| n.vni == d.vni || d.imports.contains(&n.vni) || n.imports.contains(&d.vni));
        // A service chain's traffic crosses the networks between its
        // services with the addresses of its ends (judged where it ends).
        let chained = desired.steering.iter().filter(|s| s.vni == d.vni).flat_map(|s| s.src.iter().copied());
        let mut seen = BTreeSet::new();
        for cidr in peers.flat_map(|n| n.subnets.iter().map(|s| s.cidr.trunc())).chain(chained) {
            let key = format!("\"{tx_d}\" . {cidr} . \"{tb_d}\"");
            if programmed.contains(&key) || !seen.insert(key.clone()) {
                continue;
            }
            let entry = format!("{key} : return");
            if cidr.addr().is_ipv4() {
                arrivals4.push(entry)
            } else {
                arrivals6.push(entry)
            }
        }
        let verdict = match (from_outside.get(&d.vni), &d.egress) {
            (Some(p), _) => format!("jump {p}"),
            (None, Some(_)) => "return".to_string(),
            (None, None) => "drop".to_string(),
        };
        catch_all.push(format!("\"{tx_d}\" . \"{tb_d}\" : {verdict}"));
    }
    for s in sources.iter().copied() {
        let mut rules = vec![DropKind::Reject(s.get()).log_statement()];
        // A flow from the outside is answered through the host's own tables.
        if !external(s) {
            rules.push(format!("meta mark set {:#x}", table_id(s)));
        }
        rules.push("meta l4proto tcp reject with tcp reset".to_string());
        out.chains.insert(reject_chain(s), chain(ChainKind::Reject, rules, "reject", None));
        let log = vec![DropKind::Deny(s.get()).log_statement()];
        out.chains.insert(deny_chain(s), chain(ChainKind::Reject, log, "drop", None));
    }
    memo.forget_unused();
    drop(memo);
    let mut body = Vec::new();
    if !dispatch.is_empty() {
        body.push(format!("iifname . oifname vmap {{ {} }}", dispatch.join(", ")));
    }
    if !arrivals4.is_empty() {
        body.push(format!("iifname . ip saddr . oifname vmap {{ {} }}", arrivals4.join(", ")));
    }
    if !arrivals6.is_empty() {
        body.push(format!("iifname . ip6 saddr . oifname vmap {{ {} }}", arrivals6.join(", ")));
    }
    if !catch_all.is_empty() {
        body.push(format!("iifname . oifname vmap {{ {} }}", catch_all.join(", ")));
    }
    out.chains.insert(DISPATCH.to_string(), chain(ChainKind::Dispatch, body, "return", None));
    out.chains.insert(STEER.to_string(), super::steer::steer_chain(desired));
    out
}

/// The objects of every rule list of `desired`, as the memo holds them
/// or built now, for readers other than the planner (the counters): the
/// memo is neither changed nor held while a list is built, so a reader of
/// an older desired state never evicts the objects the next plan patches
/// from, nor keeps the planner waiting.
pub(super) fn list_objects_read(desired: &DesiredHost) -> Vec<std::sync::Arc<ListObjects>> {
    let mut out = Vec::new();
    for prog in desired.policies.iter().filter(|p| !p.lists.is_empty()) {
        for (i, list) in prog.lists.iter().enumerate() {
            let lname = list_chain(prog.src, prog.dst, i);
            let held = MEMO.lock().unwrap_or_else(|p| p.into_inner()).held(&lname, list.fingerprint);
            out.push(held.unwrap_or_else(|| std::sync::Arc::new(list_objects(prog.src, prog.dst, i, list))));
        }
    }
    out
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
pub(super) const MEMO_ROUNDS: u64 = 8;

impl Memo {
    /// The objects held for `lname` when they are those of the list with
    /// `fingerprint`.
    fn held(&self, lname: &str, fingerprint: u64) -> Option<std::sync::Arc<ListObjects>> {
        let (_, o) = self.lists.get(lname)?;
        (o.fingerprint == fingerprint && fingerprint != 0).then(|| o.clone())
    }

    fn objects(&mut self, lname: &str, s: Vni, d: Vni, i: usize, list: &tessera_policy::RuleList) -> std::sync::Arc<ListObjects> {
        let objects = match self.held(lname, list.fingerprint) {
            Some(o) => o,
            None => {
                // The held objects are handed over to be patched: changed in
                // place unless a reader still holds them.
                let held = self.lists.remove(lname).map(|(_, o)| o);
                let patched = match (held, list.patch.base()) {
                    (Some(o), Some((base, changed))) if o.fingerprint == base && o.places.len() == list.entries.len() => {
                        let owned = std::sync::Arc::try_unwrap(o).unwrap_or_else(|shared| (*shared).clone());
                        owned.patched(s, d, i, list, changed)
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
