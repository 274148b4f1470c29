//! Which rule decides a flow between two networks of this host: the
//! programs the data plane holds ([`DesiredHost::policies`]) evaluated for
//! the flow, as the kernel evaluates them (each rule list in order, the
//! first that does not pass decides; within a list, the entry of the
//! lowest layer that holds the flow, or the list's default). Pure.

use std::collections::HashMap;
use std::net::IpAddr;

use tessera_dataplane::DesiredHost;
use tessera_model::watch::Snapshot;
use tessera_model::Vni;
use tessera_policy::flow::Flow;
use tessera_policy::{RuleRef, Verdict};
use uuid::Uuid;

/// A program's decision for a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// The rule that decided; `None` when a list's default did.
    pub rule: Option<RuleRef>,
}

/// The decision of the program of flows from `src` to `dst` for `flow`;
/// `None` when the host has no such program (the networks are one, or
/// everything passes between them).
pub fn decide(desired: &DesiredHost, src: Vni, dst: Vni, flow: &Flow) -> Option<Decision> {
    let program = desired.policies.iter().find(|p| p.src == src && p.dst == dst && !p.lists.is_empty())?;
    let mut allowing = None;
    for list in &program.lists {
        let entry = list.entries.iter().filter(|e| e.key.contains(flow)).min_by_key(|e| e.layer);
        let verdict = entry.map_or(list.default, |e| e.verdict);
        let rule = entry.map(|e| e.origin);
        if verdict != Verdict::Pass {
            return Some(Decision { verdict, rule });
        }
        allowing = allowing.or(rule);
    }
    Some(Decision { verdict: Verdict::Pass, rule: allowing })
}

/// The network (of this host) a flow from `src` to address `dst` goes to:
/// the destination network of one of `src`'s programs whose subnets hold it.
pub fn destination(desired: &DesiredHost, src: Vni, dst: IpAddr) -> Option<Vni> {
    let holds =
        |vni: Vni| desired.networks.iter().any(|n| n.vni == vni && n.subnets.iter().any(|s| s.cidr.trunc().contains(&dst)));
    desired.policies.iter().filter(|p| p.src == src).map(|p| p.dst).find(|d| holds(*d))
}

/// Names of the fabric's policies and networks, for records.
#[derive(Default)]
pub struct Names {
    policies: HashMap<Uuid, String>,
    networks: HashMap<Vni, String>,
    revision: u64,
}

impl Names {
    /// Brings the names up to `snap`'s.
    pub fn refresh(&mut self, snap: &Snapshot) {
        if snap.revision == self.revision && !self.networks.is_empty() {
            return;
        }
        self.revision = snap.revision;
        self.policies = snap.policies.iter().map(|p| (p.id, p.fq_name.to_string())).collect();
        self.networks = snap.networks.iter().map(|n| (n.vni, n.fq_name.to_string())).collect();
    }

    /// `POLICY rules[i]`.
    pub fn rule(&self, r: &RuleRef) -> String {
        let policy = self.policies.get(&r.policy).cloned().unwrap_or_else(|| r.policy.to_string());
        format!("{policy} rules[{}]", r.rule)
    }

    /// A network's fully qualified name (its VNI when unknown).
    pub fn network(&self, vni: Vni) -> String {
        self.networks.get(&vni).cloned().unwrap_or_else(|| format!("vni {vni}"))
    }
}

/// The rules that allowed the forwarded flows of reports, found once per
/// flow and data plane: a report's records are attributed until a time
/// budget is spent (a burst of new flows between networks with long rule
/// lists leaves the rest unattributed rather than delay the report).
#[derive(Default)]
pub struct Attribution {
    names: Names,
    vnis: HashMap<String, Vni>,
    desired: Option<std::sync::Arc<DesiredHost>>,
    found: HashMap<u64, Option<String>>,
}

/// The most attributions remembered.
const MAX_FOUND: usize = 65_536;

impl Attribution {
    /// Sets the `rule` of the forwarded flows between two networks of
    /// `records` that have none, within `budget`.
    pub fn apply(
        &mut self,
        records: &mut [tessera_model::FlowRecord],
        snap: &Snapshot,
        desired: &std::sync::Arc<DesiredHost>,
        budget: std::time::Duration,
    ) {
        if !self.desired.as_ref().is_some_and(|d| std::sync::Arc::ptr_eq(d, desired)) || self.found.len() > MAX_FOUND {
            self.found.clear();
            self.desired = Some(desired.clone());
        }
        if self.names.revision != snap.revision || self.vnis.is_empty() {
            self.names.refresh(snap);
            self.vnis = snap.networks.iter().map(|n| (n.fq_name.to_string(), n.vni)).collect();
        }
        let started = std::time::Instant::now();
        for r in records.iter_mut() {
            if r.rule.is_some() || r.verdict != tessera_model::FlowVerdict::Forwarded || started.elapsed() > budget {
                continue;
            }
            if let Some(found) = self.found.get(&r.id) {
                r.rule = found.clone();
                continue;
            }
            let vni = |n: &Option<String>| n.as_ref().and_then(|n| self.vnis.get(n).copied());
            let (Some(s), Some(d)) = (vni(&r.src_network), vni(&r.dst_network)) else { continue };
            let flow = Flow { src: r.src, dst: r.dst, proto: r.protocol, sport: r.sport, dport: r.dport };
            let rule = decide(desired, s, d, &flow).and_then(|x| x.rule).map(|x| self.names.rule(&x));
            self.found.insert(r.id, rule.clone());
            r.rule = rule;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_dataplane::desired::PairPolicy;
    use tessera_policy::flow::FlowBox;
    use tessera_policy::{Entry, Family, RuleList};

    fn entry(dport: u16, verdict: Verdict, rule: usize, layer: u32) -> Entry {
        let mut key = FlowBox::everything(Family::V4);
        key.proto = (6, 6);
        key.dport = (dport, dport);
        Entry { key, verdict, origin: RuleRef { policy: Uuid::nil(), rule }, log: None, layer }
    }

    fn list(entries: Vec<Entry>, default: Verdict) -> RuleList {
        RuleList { default, entries: entries.into(), fingerprint: 0, patch: Default::default() }
    }

    fn flow(dport: u16) -> Flow {
        Flow { src: "10.0.0.2".parse().unwrap(), dst: "10.1.0.3".parse().unwrap(), proto: 6, sport: 40000, dport }
    }

    #[test]
    fn the_first_list_that_refuses_decides_and_names_its_rule() {
        let (a, b) = (Vni::new(100).unwrap(), Vni::new(200).unwrap());
        let host = DesiredHost {
            published: vec![],
            steering: vec![],
            uplinks: vec![],
            underlay_ip: "10.99.0.1".parse().unwrap(),
            underlay_ifname: "eth0".into(),
            underlay_mtu: 1500,
            peers: vec![],
            networks: vec![],
            pair_zones: vec![],
            policies: vec![PairPolicy {
                src: a,
                dst: b,
                lists: vec![
                    list(vec![entry(80, Verdict::Pass, 0, 0), entry(22, Verdict::Deny, 1, 0)], Verdict::Deny),
                    list(vec![entry(80, Verdict::Reject, 4, 1), entry(80, Verdict::Pass, 3, 0)], Verdict::Pass),
                ],
            }],
            watches: vec![],
        };
        let d = |port| decide(&host, a, b, &flow(port)).unwrap();
        assert_eq!(d(22), Decision { verdict: Verdict::Deny, rule: Some(RuleRef { policy: Uuid::nil(), rule: 1 }) });
        assert_eq!(d(443), Decision { verdict: Verdict::Deny, rule: None }, "the first list's default");
        assert_eq!(
            d(80),
            Decision { verdict: Verdict::Pass, rule: Some(RuleRef { policy: Uuid::nil(), rule: 0 }) },
            "the lowest layer decides within a list; the first allowing rule is named"
        );
        assert_eq!(decide(&host, b, a, &flow(80)), None, "no program the other way");
    }
}
