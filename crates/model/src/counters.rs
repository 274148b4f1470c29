//! Hit counters of policy rules, as they travel: from each agent to the
//! controller (`PUT /v1/hosts/{name}/counters`), and from the controller to
//! users, summed over hosts (`GET /v1/policies/{id}/counters`, and the
//! `counters` of `GET /v1/policies/{id}`).
//!
//! A hit is a new flow a rule decided: for a flow it let through, its first
//! packet; for a flow it dropped or rejected, every packet (they never
//! become established). Counters are observations, not intent: the
//! controller keeps each host's last report in memory only, so they start
//! again from zero when the controller restarts, and a rule's counter on a
//! host starts again from zero when that host reinstalls the rule's map
//! elements (after a change that moves them).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Packets and bytes of one rule of one policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RuleHits {
    #[schema(value_type = String, format = Uuid)]
    pub policy: Uuid,
    /// The rule's index in the policy.
    pub rule: usize,
    pub packets: u64,
    pub bytes: u64,
}

/// What an agent reports: the counters of the rules its host enforces (a
/// rule left out counts zero); the report replaces the host's previous one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HostCounters {
    pub rules: Vec<RuleHits>,
}

/// Packets and bytes of one rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RuleCount {
    /// The rule's index in the policy.
    pub rule: usize,
    pub packets: u64,
    pub bytes: u64,
}

/// The hit counters of a policy's rules: one entry per rule, in rule
/// order, summed over the hosts that reported; and per host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicyCounters {
    pub rules: Vec<RuleCount>,
    /// Per reporting host (hosts that enforce the policy), its own counts.
    pub hosts: BTreeMap<String, Vec<RuleCount>>,
}

impl PolicyCounters {
    /// The counters of policy `policy` of `rules` rules from the hosts'
    /// last reports. Counts of rule indices the policy no longer has (a
    /// report from before an update) are left out.
    pub fn sum<'a>(policy: Uuid, rules: usize, reports: impl IntoIterator<Item = (&'a str, &'a HostCounters)>) -> Self {
        let zeros = || (0..rules).map(|rule| RuleCount { rule, packets: 0, bytes: 0 }).collect::<Vec<_>>();
        let mut out = PolicyCounters { rules: zeros(), hosts: BTreeMap::new() };
        for (host, report) in reports {
            let mine: Vec<&RuleHits> = report.rules.iter().filter(|h| h.policy == policy).collect();
            if mine.is_empty() {
                continue;
            }
            let per_host = out.hosts.entry(host.to_string()).or_insert_with(zeros);
            for h in mine.into_iter().filter(|h| h.rule < rules) {
                for c in [&mut per_host[h.rule], &mut out.rules[h.rule]] {
                    c.packets += h.packets;
                    c.bytes += h.bytes;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits(policy: u128, rule: usize, packets: u64) -> RuleHits {
        RuleHits { policy: Uuid::from_u128(policy), rule, packets, bytes: packets * 100 }
    }

    #[test]
    fn counters_are_summed_over_hosts_per_rule() {
        let h1 = HostCounters { rules: vec![hits(1, 0, 3), hits(1, 1, 0), hits(2, 0, 50)] };
        let h2 = HostCounters { rules: vec![hits(1, 0, 4), hits(1, 1, 2)] };
        let c = PolicyCounters::sum(Uuid::from_u128(1), 2, [("h1", &h1), ("h2", &h2)]);
        assert_eq!(c.rules, vec![RuleCount { rule: 0, packets: 7, bytes: 700 }, RuleCount { rule: 1, packets: 2, bytes: 200 }]);
        assert_eq!(c.hosts["h1"][0].packets, 3);
        assert_eq!(c.hosts["h2"][1].packets, 2);
    }

    #[test]
    fn every_rule_has_an_entry_and_stale_indices_are_dropped() {
        let h1 = HostCounters { rules: vec![hits(1, 5, 9)] };
        let c = PolicyCounters::sum(Uuid::from_u128(1), 3, [("h1", &h1)]);
        assert_eq!(c.rules.len(), 3);
        assert!(c.rules.iter().all(|r| r.packets == 0));
    }

    #[test]
    fn hosts_that_do_not_enforce_the_policy_are_not_listed() {
        let h1 = HostCounters { rules: vec![hits(2, 0, 9)] };
        assert!(PolicyCounters::sum(Uuid::from_u128(1), 1, [("h1", &h1)]).hosts.is_empty());
    }

    #[test]
    fn a_report_round_trips() {
        let r = HostCounters { rules: vec![hits(1, 0, 3)] };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<HostCounters>(&text).unwrap(), r);
    }
}
