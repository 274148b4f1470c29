//! When an edit of a policy may refuse flows it let through.
//!
//! A host that does not enforce a pair of networks (its flows arrive through
//! a tunnel, decided on the host where they start) ends the pair's flows
//! when the pair's program may have narrowed, without compiling it: it
//! watches a fingerprint of the program's inputs. Made of the policies'
//! contents, that fingerprint changes on every edit, and every edit then
//! ends every flow of the pair on the watching host (a conntrack zone flush
//! walks the kernel's whole table), even one that only lets more through.
//! [`Refusals`] gives each policy an epoch instead, which moves only when
//! an edit may refuse something:
//!
//! - a rule whose verdict went from `pass` to `deny` or `reject`, or any
//!   other change of a rule (its match);
//! - a `pass` rule removed (what it passed now meets the rules after it), a
//!   `deny` or `reject` rule inserted;
//! - anything else (several rules inserted or removed, a rename).
//!
//! Edits that only widen keep the epoch: a rule turned from `deny` or
//! `reject` to `pass`, a `deny` turned to `reject` or back, a `log` flag
//! set or cleared, a `pass` rule inserted, a `deny` or `reject` rule
//! removed. Traffic between two networks passes when the policies of both
//! pass it, so a policy that only widens never narrows a pair.

use std::collections::HashMap;

use tessera_model::{Policy, Rule, RuleAction, Rules};
use uuid::Uuid;

use crate::program::{differing_rules, same_match};
use crate::Compiler;

/// Per policy, its refusal epoch (see the module docs), kept between
/// compilations. A policy seen for the first time (a new policy, an agent
/// started again) gets an epoch of its content, so a restarted host ends
/// the pairs' flows once, conservatively.
#[derive(Debug, Clone, Default)]
pub struct Refusals {
    by_policy: HashMap<Uuid, Seen>,
}

#[derive(Debug, Clone)]
struct Seen {
    hash: u64,
    last: Policy,
    epoch: u64,
}

impl Refusals {
    pub fn new() -> Self {
        Self::default()
    }

    /// Follows the policies of `compiler`: a policy whose content changed
    /// gets a new epoch unless the change only widens what it passes.
    /// Policies gone are forgotten.
    pub fn update(&mut self, compiler: &Compiler<'_>) {
        let mut next = HashMap::with_capacity(compiler.policies.len());
        for (id, p) in &compiler.policies {
            let hash = compiler.policy_hash(p);
            let epoch = match self.by_policy.remove(id) {
                Some(seen) if seen.hash == hash || only_widens(&seen.last, p) => seen.epoch,
                // Chained, so that narrowing back to an earlier content is
                // still a new epoch.
                Some(seen) => crate::flow::mix(seen.epoch, hash),
                None => hash,
            };
            next.insert(*id, Seen { hash, last: (*p).clone(), epoch });
        }
        self.by_policy = next;
    }

    /// The epoch of `p` (its content's hash when [`Refusals::update`] has
    /// not seen it).
    pub fn epoch(&self, p: &Policy) -> u64 {
        self.by_policy.get(&p.id).map(|s| s.epoch).unwrap_or_else(|| crate::policy_hash(p))
    }
}

/// Whether `new` passes everything `old` passes (for sure: `false` when it
/// cannot tell), the edits recognised being those of the module docs.
pub fn only_widens(old: &Policy, new: &Policy) -> bool {
    if old.id != new.id || old.fq_name != new.fq_name {
        return false;
    }
    let refuses = |r: &Rule| r.action != RuleAction::Pass;
    let (o, n) = (old.rules.len(), new.rules.len());
    if o == n {
        differing_rules(old, new).all(|(_, x, y)| same_match(x, y) && (refuses(x) || !refuses(y)))
    } else if n == o + 1 {
        inserted(&old.rules, &new.rules).is_some_and(|r| !refuses(r))
    } else if o == n + 1 {
        inserted(&new.rules, &old.rules).is_some_and(refuses)
    } else {
        false
    }
}

/// The rule `longer` (one rule longer) has when it is `shorter` with one
/// rule inserted.
fn inserted<'r>(shorter: &Rules, longer: &'r Rules) -> Option<&'r Rule> {
    let front = shorter.iter().zip(longer.iter()).take_while(|(a, b)| a == b).count();
    let back = shorter.iter().rev().zip(longer.iter().rev()).take_while(|(a, b)| a == b).count();
    // `longer[..front]` and `longer[front + 1..]` are then `shorter`.
    (front + back >= shorter.len()).then(|| longer.get(front)).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_model::{FqName, ProjectName};

    fn policy(rules: &[&str]) -> Policy {
        let project = ProjectName::default_project();
        let rules: Vec<Rule> = rules.iter().map(|r| Rule::parse("r", r, &project).unwrap()).collect();
        Policy {
            id: Uuid::from_u128(7),
            fq_name: FqName::resolve("p", &ProjectName::default_project()).unwrap(),
            rules: Rules::from_vec(rules),
        }
    }

    const BASE: [&str; 3] = ["pass tcp any any > any 80", "deny tcp any any > any 22", "pass icmp any any <> any any"];

    fn edited(i: usize, rule: &str) -> Policy {
        let mut r = BASE.to_vec();
        r[i] = rule;
        policy(&r)
    }

    #[test]
    fn verdict_changes_towards_pass_widen_and_the_others_narrow() {
        let old = policy(&BASE);
        assert!(only_widens(&old, &edited(1, "pass tcp any any > any 22")), "deny → pass");
        assert!(only_widens(&old, &edited(1, "reject tcp any any > any 22")), "deny → reject");
        assert!(only_widens(&old, &edited(0, "pass tcp any any > any 80 log")), "a log flag");
        assert!(!only_widens(&old, &edited(0, "reject tcp any any > any 80")), "pass → reject");
        assert!(!only_widens(&old, &edited(1, "deny tcp any any > any 23")), "a match changed");
        assert!(only_widens(&old, &old.clone()));
    }

    #[test]
    fn inserting_a_pass_or_removing_a_refusal_widens() {
        let old = policy(&BASE);
        assert!(only_widens(&old, &policy(&[BASE[0], "pass udp any any > any 53", BASE[1], BASE[2]])));
        assert!(!only_widens(&old, &policy(&[BASE[0], "deny udp any any > any 53", BASE[1], BASE[2]])));
        assert!(only_widens(&old, &policy(&[BASE[0], BASE[2]])), "the deny removed");
        assert!(!only_widens(&old, &policy(&[BASE[1], BASE[2]])), "a pass removed");
        assert!(!only_widens(&old, &policy(&[BASE[2]])), "two removed");
        assert!(!only_widens(&old, &policy(&[BASE[1], BASE[0], BASE[2]])), "reordered");
    }

    #[test]
    fn the_epoch_moves_only_when_an_edit_may_refuse_and_never_comes_back() {
        let networks = [];
        let epoch_after = |refusals: &mut Refusals, p: &Policy| {
            let policies = [p.clone()];
            refusals.update(&Compiler::new(&networks, &policies));
            refusals.epoch(p)
        };
        let mut refusals = Refusals::new();
        let start = policy(&BASE);
        let first = epoch_after(&mut refusals, &start);
        let wider = edited(1, "pass tcp any any > any 22");
        assert_eq!(epoch_after(&mut refusals, &wider), first, "widening keeps the epoch");
        let back = epoch_after(&mut refusals, &start);
        assert_ne!(back, first, "narrowing back to the first content is a new epoch");
        assert_eq!(epoch_after(&mut refusals, &start), back, "nothing changed");
    }
}
