//! Which VRF holds which other network's routes: route leaking by policy and
//! by route target, with the overlap guard.
//!
//! Network `M` *imports* network `N` (M's VRF gets N's connected subnets and
//! endpoints) when
//! - `M` imports a route target that `N` exports (L3VPN semantics: one way
//!   when only one side imports), or
//! - the policies attached to `M` and those attached to `N` each hold a
//!   `pass` rule that can match some flow between `M` and `N` (then both
//!   import each other).
//!
//! Overlap guard: `M` never imports a network whose subnets overlap its own,
//! nor two networks whose subnets overlap each other (both are left out).
//! Each such refusal is a [`LeakWarning`]; neither network is affected
//! otherwise, they simply stay apart.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use tessera_model::{Network, Policy, RouteTarget, RuleAction};
use uuid::Uuid;

use crate::flow::{net_range, Family};
use crate::rules::rule_boxes;

/// Why a leak that the intent asks for was not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeakWarning {
    /// The network whose VRF would have received the routes.
    pub importer: String,
    /// The network whose routes were not leaked.
    pub exporter: String,
    pub reason: String,
}

impl fmt::Display for LeakWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "routes of {} are not leaked into {}: {}", self.exporter, self.importer, self.reason)
    }
}

/// The connections between networks that the intent asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    imports: BTreeMap<Uuid, BTreeSet<Uuid>>,
    route_target_pairs: BTreeSet<(Uuid, Uuid)>,
    policy_pairs: BTreeSet<(Uuid, Uuid)>,
    pub warnings: Vec<LeakWarning>,
}

fn pair(a: Uuid, b: Uuid) -> (Uuid, Uuid) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

/// Whether some subnet of `a` overlaps some subnet of `b`.
pub fn subnets_overlap(a: &Network, b: &Network) -> bool {
    a.subnets.iter().any(|x| {
        b.subnets.iter().any(|y| {
            let (xl, xh) = net_range(&x.cidr);
            let (yl, yh) = net_range(&y.cidr);
            Family::of(x.cidr.addr()) == Family::of(y.cidr.addr()) && xl <= yh && yl <= xh
        })
    })
}

/// The policies attached to `net`, in its order (unknown ids are skipped).
pub fn attached<'a>(net: &Network, policies: &HashMap<Uuid, &'a Policy>) -> Vec<&'a Policy> {
    net.policies.iter().filter_map(|id| policies.get(id).copied()).collect()
}

/// Whether one of `list`'s pass rules can match a flow between `a` and `b`
/// (either way). Shadowing by earlier rules is not considered: a pass rule
/// that a deny rule hides still connects the networks, and the deny rule
/// still stops the traffic.
fn allows_some(list: &[&Policy], a: &Network, b: &Network) -> bool {
    list.iter().flat_map(|p| &p.rules).filter(|r| r.action == RuleAction::Pass).any(|r| {
        let (ab, ba) = (rule_boxes(r, a, b), rule_boxes(r, b, a));
        !ab.is_empty() || !ba.is_empty()
    })
}

impl Topology {
    /// Computes the imports of every network.
    pub fn compute(networks: &[Network], policies: &[Policy]) -> Topology {
        let by_id: HashMap<Uuid, &Network> = networks.iter().map(|n| (n.id, n)).collect();
        let pols: HashMap<Uuid, &Policy> = policies.iter().map(|p| (p.id, p)).collect();
        let mut t = Topology::default();
        let mut candidates: BTreeMap<Uuid, BTreeSet<Uuid>> = BTreeMap::new();

        let mut exporters: HashMap<RouteTarget, Vec<Uuid>> = HashMap::new();
        for n in networks {
            for rt in &n.export_targets {
                exporters.entry(*rt).or_default().push(n.id);
            }
        }
        // A route target joins another project's network only when that
        // network is shared (with everyone, or with the importer's project).
        let consents = |m: &Network, n: &Uuid| by_id.get(n).is_some_and(|n| n.usable_by(m.fq_name.project()));
        for m in networks {
            for rt in &m.import_targets {
                for n in exporters.get(rt).into_iter().flatten() {
                    if *n != m.id && consents(m, n) {
                        candidates.entry(m.id).or_default().insert(*n);
                        t.route_target_pairs.insert(pair(m.id, *n));
                    }
                }
            }
        }

        let with_pass: Vec<(&Network, Vec<&Policy>)> = networks
            .iter()
            .map(|n| (n, attached(n, &pols)))
            .filter(|(_, list)| list.iter().any(|p| p.rules.iter().any(|r| r.action == RuleAction::Pass)))
            .collect();
        for (i, (a, la)) in with_pass.iter().enumerate() {
            for (b, lb) in &with_pass[i + 1..] {
                if allows_some(la, a, b) && allows_some(lb, a, b) {
                    candidates.entry(a.id).or_default().insert(b.id);
                    candidates.entry(b.id).or_default().insert(a.id);
                    t.policy_pairs.insert(pair(a.id, b.id));
                }
            }
        }

        for (m, cands) in candidates {
            let Some(mnet) = by_id.get(&m) else { continue };
            let mut keep: Vec<&Network> = Vec::new();
            for n in &cands {
                let Some(nnet) = by_id.get(n) else { continue };
                if subnets_overlap(mnet, nnet) {
                    t.warnings.push(LeakWarning {
                        importer: mnet.fq_name.to_string(),
                        exporter: nnet.fq_name.to_string(),
                        reason: "their subnets overlap".into(),
                    });
                } else {
                    keep.push(nnet);
                }
            }
            let mut refused: BTreeSet<Uuid> = BTreeSet::new();
            for (i, x) in keep.iter().enumerate() {
                for y in &keep[i + 1..] {
                    if subnets_overlap(x, y) {
                        refused.insert(x.id);
                        refused.insert(y.id);
                        for (e, other) in [(x, y), (y, x)] {
                            t.warnings.push(LeakWarning {
                                importer: mnet.fq_name.to_string(),
                                exporter: e.fq_name.to_string(),
                                reason: format!("its subnets overlap those of {}, which it would also import", other.fq_name),
                            });
                        }
                    }
                }
            }
            let kept: BTreeSet<Uuid> = keep.iter().map(|n| n.id).filter(|id| !refused.contains(id)).collect();
            if !kept.is_empty() {
                t.imports.insert(m, kept);
            }
        }
        t
    }

    /// The networks whose routes `m`'s VRF holds.
    pub fn imports(&self, m: Uuid) -> impl Iterator<Item = Uuid> + '_ {
        self.imports.get(&m).into_iter().flatten().copied()
    }

    /// Whether `m`'s VRF holds `n`'s routes.
    pub fn imports_from(&self, m: Uuid, n: Uuid) -> bool {
        self.imports.get(&m).is_some_and(|s| s.contains(&n))
    }

    /// Whether each of `a` and `b` holds the other's routes (traffic can go
    /// both ways).
    pub fn bidirectional(&self, a: Uuid, b: Uuid) -> bool {
        self.imports_from(a, b) && self.imports_from(b, a)
    }

    /// Whether a route target connects `a` and `b` (in either direction).
    pub fn route_target_connected(&self, a: Uuid, b: Uuid) -> bool {
        self.route_target_pairs.contains(&pair(a, b))
    }

    /// Whether the policies of `a` and `b` connect them.
    pub fn policy_connected(&self, a: Uuid, b: Uuid) -> bool {
        self.policy_pairs.contains(&pair(a, b))
    }
}
