//! Tessera's policy compiler: networks, policies and route targets in; route
//! leaks and per-network-pair firewall programs out. Pure: no IO, no async.
//!
//! # Semantics (identical on every host)
//!
//! - **Order.** The rules that apply to a network are those of the policies
//!   attached to it, in the network's attach order, each policy's rules in
//!   their order. The first rule that matches a flow decides.
//! - **Stateful.** Rules decide *new* flows (connections; for ICMP echo,
//!   the request). Replies and related packets (ICMP errors) of a flow that
//!   was let through pass without evaluation, and never walk the rules.
//! - **Within one network** a flow passes unless the first rule of the
//!   network's policies that matches it is `deny` or `reject`.
//! - **Between two networks** `A → B` a flow passes only when the policies
//!   attached to `A` pass it (evaluated for the flow leaving `A`) *and* the
//!   policies attached to `B` pass it (the flow entering `B`). A list in
//!   which no rule matches denies, except between networks a route target
//!   connects, where it passes ("route targets connect unless a rule
//!   denies").
//! - **Matching.** `src > dst` matches flows from `src` to `dst`; `src <>
//!   dst` also flows from `dst` to `src` (ports swapped). An endpoint `any`
//!   matches any address, a CIDR the addresses in it, a network name the
//!   flows of *that* network (by identity, so an unrelated network with the
//!   same addresses never matches). Protocol `any` matches every protocol,
//!   `icmp` only IPv4's ICMP, `icmpv6` only ICMPv6; ports apply to TCP, UDP
//!   and the other port protocols, empty meaning any.
//! - **Verdicts.** `pass`; `deny` drops silently; `reject` answers a TCP
//!   reset for TCP and an ICMP(v6) port unreachable otherwise. A rule marked
//!   `log` logs every new flow it decides (see [`Entry::log`]).
//! - **Route leaking** ([`Topology`]). When the policies of `A` and of `B`
//!   each have a `pass` rule that can match traffic between them, each VRF
//!   gets the other's routes. A network that imports a route target another
//!   exports gets that network's routes (one way when only one imports; as
//!   in an L3VPN, replies then have no route). Overlapping subnets are never
//!   leaked into a VRF (a warning says so); both networks keep working.
//!
//! # Compilation
//!
//! [`compile_pair`] turns the two lists of a pair of networks into a
//! [`PairProgram`] of [`RuleList`]s; each list is a set of [`FlowBox`]es with
//! verdicts in a few *layers* of non-overlapping boxes ([`layer`]), so that a
//! data plane evaluates it with one map lookup per layer: a list of 50,000
//! disjoint rules is one lookup, whatever their verdicts.
#![forbid(unsafe_code)]

pub mod entries;
pub mod flow;
pub mod layer;
pub mod program;
pub mod refusal;
pub mod rules;
pub mod topology;

use std::collections::HashMap;

pub use flow::{Family, Flow, FlowBox};
pub use program::{
    compile_list, compile_pair, compile_pair_cached, list_fingerprint, policy_hash, reference_verdict, Entry, ListCache,
    PairProgram, Patch, RuleList, RuleRef, Verdict,
};
pub use refusal::Refusals;
pub use topology::{LeakWarning, Topology};

use tessera_model::{Network, Policy};
use uuid::Uuid;

/// The intent of a whole fabric, indexed for compilation.
#[derive(Debug, Clone)]
pub struct Compiler<'a> {
    networks: HashMap<Uuid, &'a Network>,
    policies: HashMap<Uuid, &'a Policy>,
    /// [`policy_hash`] of every policy, computed once: a big policy is
    /// hashed once per compilation, not once per list or watched pair.
    hashes: HashMap<Uuid, u64>,
    topology: Topology,
}

impl<'a> Compiler<'a> {
    /// Indexes the intent and computes the route leaks.
    pub fn new(networks: &'a [Network], policies: &'a [Policy]) -> Self {
        Compiler {
            networks: networks.iter().map(|n| (n.id, n)).collect(),
            policies: policies.iter().map(|p| (p.id, p)).collect(),
            hashes: policies.iter().map(|p| (p.id, policy_hash(p))).collect(),
            topology: Topology::compute(networks, policies),
        }
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    pub fn network(&self, id: Uuid) -> Option<&'a Network> {
        self.networks.get(&id).copied()
    }

    /// The program of new flows from `src` to `dst` (`None` for an unknown
    /// network).
    pub fn program(&self, src: Uuid, dst: Uuid) -> Option<PairProgram> {
        Some(compile_pair(self.network(src)?, self.network(dst)?, &self.policies, &self.topology))
    }

    /// A fingerprint of everything the program of flows from `src` to `dst`
    /// depends on (the two networks' names and subnets, the contents of the
    /// policies attached to each, in order, and whether a route target
    /// connects them): it changes whenever the program may. A host that does
    /// not enforce a pair (the flows arrive through a tunnel, decided where
    /// they start) watches [`Compiler::refusal_fingerprint`] instead, to
    /// know when to end the pair's flows without compiling the program.
    /// Stable for one build.
    pub fn fingerprint(&self, src: Uuid, dst: Uuid) -> Option<u64> {
        self.fingerprint_by(src, dst, |p| self.policy_hash(p))
    }

    /// [`Compiler::fingerprint`] with each policy's content standing for
    /// its [`Refusals`] epoch: it changes when the program may now refuse
    /// flows it let through, not when it only lets more through (what a
    /// watching host needs to know to end the pair's flows).
    pub fn refusal_fingerprint(&self, src: Uuid, dst: Uuid, refusals: &Refusals) -> Option<u64> {
        self.fingerprint_by(src, dst, |p| refusals.epoch(p))
    }

    fn fingerprint_by(&self, src: Uuid, dst: Uuid, policy_value: impl Fn(&Policy) -> u64) -> Option<u64> {
        use std::hash::{Hash, Hasher};
        let mut h = flow::Fnv::new();
        for id in [src, dst] {
            let net = self.network(id)?;
            net.fq_name.hash(&mut h);
            for s in &net.subnets {
                s.cidr.hash(&mut h);
            }
            for p in topology::attached(net, &self.policies) {
                h.write_u64(policy_value(p));
            }
            h.write_u8(0xff);
        }
        self.topology.route_target_connected(src, dst).hash(&mut h);
        Some(h.finish())
    }

    /// [`Compiler::program`], taking unchanged lists from `cache`.
    pub fn program_cached(&self, src: Uuid, dst: Uuid, cache: &mut ListCache) -> Option<PairProgram> {
        let hash_of = |p: &Policy| self.policy_hash(p);
        Some(program::compile_pair_hashed(
            self.network(src)?,
            self.network(dst)?,
            &self.policies,
            &self.topology,
            cache,
            &hash_of,
        ))
    }

    /// The [`policy_hash`] of `p`, computed once by [`Compiler::new`] (or now
    /// for a policy it was not given).
    fn policy_hash(&self, p: &Policy) -> u64 {
        self.hashes.get(&p.id).copied().unwrap_or_else(|| policy_hash(p))
    }

    /// The reference verdict of `flow` from `src` to `dst` (see
    /// [`reference_verdict`]); `None` for an unknown network.
    pub fn reference(&self, src: Uuid, dst: Uuid, flow: &Flow) -> Option<Verdict> {
        Some(reference_verdict(self.network(src)?, self.network(dst)?, &self.policies, &self.topology, flow))
    }
}
