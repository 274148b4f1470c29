//! The planner: desired state and observed kernel state in, an ordered list of
//! [`KernelOp`]s out. Pure and deterministic.
//!
//! The plan is minimal: an object that is present and right is left alone,
//! so a converged host gets an empty plan and an agent that restarts adopts
//! what the kernel holds without touching running traffic.
//!
//! Order of a plan:
//! 1. host-wide parameters (forwarding, fwmark reflection);
//! 2. nftables, as one block (one transaction when applied): the tables'
//!    skeleton if missing or outdated; set element deletes; the policy
//!    table's changes in an order where every reference is valid (see
//!    `policy_actions`); set element adds;
//! 3. teardown of what is no longer wanted: rules, routes, proxy neighbour,
//!    neighbour and FDB entries, addresses, then links (endpoint veths, VXLAN
//!    devices, bridges). Objects that live on a link being deleted are not
//!    removed one by one: they go with the link;
//! 4. per network, by VNI: bridge (and its parameters, addresses), VXLAN
//!    device (and its parameters), rules, routes, FDB, neighbour and proxy
//!    entries, then its endpoints: veth, container side;
//! 5. a gateway's uplinks (parameters, rules, proxy entries of external
//!    addresses, announced when new) and the networks' routes to the
//!    outside;
//! 6. routes leaked from other networks (they need those networks'
//!    devices), and the gateway table's;
//! 7. steering of service chains: each target's route (its table's
//!    default), then the rule that selects its table;
//! 8. conntrack: the zones of flows a change may no longer allow are
//!    flushed (see `conntrack_flushes`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::desired::{
    bridge_mac, bridge_name, bridge_sysctls, host_sysctls, host_veth_name, table_id, uplink_sysctls, vtep_mac, vxlan_name,
    vxlan_sysctls, DesiredHost, DesiredNetwork, DesiredUplink, LocalEndpoint, VXLAN_PORT,
};
use crate::names::{is_steer_table, veth_mark, SysctlKey, DISPATCH, LINK_MARK, SKELETON_VERSION, STEER};
use crate::observed::{
    link_mark, LinkKind, LinkMark, LinkState, MapElement, NftElement, Observed, PolicyState, RouteEntry, RouteTarget,
    RuleSelector,
};
use crate::op::KernelOp;

mod want;
use crate::policy::{list_chain, pair_chain, policy_objects_except, ChainKind, PolicyObjects};
pub use want::PlanMemo;
use want::{port_elements, Want};

/// Computes the actions that take the kernel from `observed` to `desired`.
///
/// `desired` should have passed [`DesiredHost::validate`]; the planner does
/// not check it again.
pub fn plan(desired: &DesiredHost, observed: &Observed) -> Vec<KernelOp> {
    plan_with(desired, observed, &mut PlanMemo::default())
}

/// [`plan`], with the kernel objects of the desired state taken from `memo`
/// when they are those of the last desired state it planned, and kept there
/// for the next. The plan is the same as [`plan`]'s.
pub fn plan_with(desired: &DesiredHost, observed: &Observed, memo: &mut PlanMemo) -> Vec<KernelOp> {
    let want = memo.want(desired);
    let mut out = Vec::new();

    // 1. Host-wide parameters.
    for (key, value) in host_sysctls() {
        sysctl(&mut out, observed, &BTreeSet::new(), key, value);
    }

    // 2. nftables.
    let skeleton_ok = observed.nft.skeleton.as_deref() == Some(SKELETON_VERSION);
    let empty = BTreeSet::new();
    let empty_policy = PolicyState::default();
    let have_elements = if skeleton_ok { &observed.nft.elements } else { &empty };
    let have_policy = if skeleton_ok { &observed.nft.policy } else { &empty_policy };
    if !skeleton_ok {
        out.push(KernelOp::NftTablesInstall);
    }
    for e in have_elements.difference(&want.elements) {
        out.push(KernelOp::NftSetElementDelete(e.clone()));
    }
    // Rule lists the kernel holds as they should be (same fingerprint) are
    // left alone: neither rebuilt nor diffed.
    let mut kept: BTreeSet<String> = BTreeSet::new();
    let mut list_digests: Vec<(u128, u128)> = Vec::new();
    for prog in desired.policies.iter().filter(|p| !p.lists.is_empty()) {
        for (i, list) in prog.lists.iter().enumerate() {
            let lname = list_chain(prog.src, prog.dst, i);
            let (k, v) = crate::policy::list_fingerprint_digest(&lname, list.fingerprint);
            if list.fingerprint != 0 && have_policy.digests.get(&k) == Some(&v) && have_policy.chains.contains_key(&lname) {
                kept.insert(lname);
            }
            list_digests.push((k, v));
        }
    }
    let want_policy = policy_objects_except(desired, &kept);
    let diffs = map_diffs(&want_policy, have_policy);
    let mut want_digests = want_policy.digests();
    want_digests.extend(desired.watches.iter().map(crate::policy::watch_digest));
    want_digests.extend(list_digests);
    let keeps = |name: &str| crate::policy::object_list(name).is_some_and(|l| kept.contains(&l));
    for name in have_policy.chains.keys().chain(have_policy.maps.keys()).filter(|n| keeps(n)) {
        let key = crate::policy::name_key(name);
        if let Some(v) = have_policy.digests.get(&key) {
            want_digests.insert(key, *v);
        }
    }
    policy_actions(&mut out, &want_policy, &want_digests, have_policy, &diffs, &keeps);
    for e in want.elements.difference(have_elements) {
        out.push(KernelOp::NftSetElementAdd(e.clone()));
    }

    // 3. Teardown. Links named like Tessera's but without its mark are
    // never deleted, nor is anything on them: they are adopted (marked) when
    // wanted as they are, and left alone otherwise.
    let left_alone = links_left_alone(want, observed);
    let doomed = doomed_links(want, observed, &left_alone);
    let on_doomed = |dev: &str| doomed.contains(dev) || left_alone.contains(dev);
    for r in observed.rules.difference(&want.rules) {
        let on_left_alone = matches!(&r.selector,
            RuleSelector::Iif(dev) | RuleSelector::IifVerified(dev) | RuleSelector::IifUnverified(dev) if left_alone.contains(dev));
        if !on_left_alone {
            out.push(KernelOp::RuleUninstall(r.clone()));
        }
    }
    for r in observed.routes.difference(&want.routes) {
        // A steering target that changes is replaced in place (its table
        // never goes empty, which would let its packets fall through).
        let replaced = is_steer_table(r.table)
            && want.routes.iter().any(|w| w.table == r.table && w.dst == r.dst && w.target != RouteTarget::Unreachable);
        if !matches!(&r.target, RouteTarget::Dev(d) if on_doomed(d)) && !replaced {
            out.push(KernelOp::RouteUninstall(r.clone()));
        }
    }
    for p in observed.proxy_neighbours.difference(&want.proxy_neighbours) {
        if !on_doomed(&p.dev) {
            out.push(KernelOp::ProxyNeighUninstall(p.clone()));
        }
    }
    let wanted_neigh_keys: BTreeSet<(&str, IpAddr)> = want.neighbours.iter().map(|n| (n.dev.as_str(), n.ip)).collect();
    for n in observed.neighbours.difference(&want.neighbours) {
        // A neighbour that only changes its MAC is replaced in place below.
        if !on_doomed(&n.dev) && !wanted_neigh_keys.contains(&(n.dev.as_str(), n.ip)) {
            out.push(KernelOp::NeighUninstall(n.clone()));
        }
    }
    for e in observed.fdb.difference(&want.fdb) {
        if !on_doomed(&e.dev) {
            out.push(KernelOp::FdbUninstall(e.clone()));
        }
    }
    for a in observed.addresses.difference(&want.addresses) {
        if !on_doomed(&a.dev) {
            out.push(KernelOp::AddressUninstall(a.clone()));
        }
    }
    // Endpoint veths first, then tunnels, then bridges.
    let mut doomed_sorted: Vec<&String> = doomed.iter().collect();
    doomed_sorted.sort_by_key(|n| (link_rank(n), n.to_string()));
    for name in doomed_sorted {
        out.push(KernelOp::LinkDelete { name: name.clone() });
    }

    // 4. Build, network by network.
    let present = |name: &str| -> Option<&LinkState> {
        if doomed.contains(name) || left_alone.contains(name) {
            None
        } else {
            observed.links.get(name)
        }
    };
    let mut networks: Vec<&DesiredNetwork> = desired.networks.iter().collect();
    networks.sort_by_key(|n| n.vni);
    let mtu = desired.overlay_mtu();
    // With the skeleton in place, the anti-spoofing elements tell which MAC
    // and addresses each port was given.
    let have_ports = port_elements(&observed.nft.elements);
    for net in networks {
        let tb = bridge_name(net.vni);
        let tx = vxlan_name(net.vni);

        // Bridge.
        match present(&tb) {
            None => out.push(KernelOp::LinkAddBridge { name: tb.clone(), mac: bridge_mac(net.vni), mtu }),
            Some(link) => link_fixups(&mut out, &tb, link, mtu),
        }
        for (key, value) in bridge_sysctls(&tb) {
            sysctl(&mut out, observed, &doomed, key, value);
        }
        for a in want.addresses.iter().filter(|a| a.dev == tb) {
            if doomed.contains(&tb) || !observed.addresses.contains(a) {
                out.push(KernelOp::AddressInstall(a.clone()));
            }
        }

        // VXLAN device.
        match present(&tx) {
            None => out.push(KernelOp::LinkAddVxlan {
                name: tx.clone(),
                vni: net.vni,
                local: desired.underlay_ip,
                underlay: desired.underlay_ifname.clone(),
                port: VXLAN_PORT,
                mac: vtep_mac(desired.underlay_ip),
                mtu,
            }),
            Some(link) => link_fixups(&mut out, &tx, link, mtu),
        }
        for (key, value) in vxlan_sysctls(&tx) {
            sysctl(&mut out, observed, &doomed, key, value);
        }

        // Rules selecting the VRF.
        for r in want.rules.iter().filter(|r| r.table == table_id(net.vni)) {
            if !observed.rules.contains(r) {
                out.push(KernelOp::RuleInstall(r.clone()));
            }
        }

        // The VRF's own routes (leaked ones come once every device exists).
        let missing = |dev: &str, present_in_observed: bool| doomed.contains(dev) || !present_in_observed;
        let own = |r: &&RouteEntry| match &r.target {
            RouteTarget::Dev(d) => *d == tb || *d == tx,
            RouteTarget::Unreachable => true,
            RouteTarget::Via { .. } => false,
        };
        for r in want.routes.iter().filter(|r| r.table == table_id(net.vni)).filter(own) {
            let dev_doomed = matches!(&r.target, RouteTarget::Dev(d) if doomed.contains(d));
            if dev_doomed || !observed.routes.contains(r) {
                out.push(KernelOp::RouteInstall(r.clone()));
            }
        }

        // Tunnel endpoints: FDB before the neighbour entries that use them.
        for e in want.fdb.iter().filter(|e| e.dev == tx) {
            if missing(&e.dev, observed.fdb.contains(e)) {
                out.push(KernelOp::FdbInstall(e.clone()));
            }
        }
        // Remote endpoints behind the tunnel, and local ones on the bridge
        // (the host knows their addresses: no resolution that can fail).
        for n in want.neighbours.iter().filter(|n| n.dev == tx || n.dev == tb) {
            if missing(&n.dev, observed.neighbours.contains(n)) {
                out.push(KernelOp::NeighInstall(n.clone()));
            }
        }
        for p in want.proxy_neighbours.iter().filter(|p| p.dev == tb) {
            if missing(&p.dev, observed.proxy_neighbours.contains(p)) {
                out.push(KernelOp::ProxyNeighInstall(p.clone()));
            }
        }

        // Endpoints.
        let mut endpoints: Vec<&LocalEndpoint> = net.local.iter().collect();
        endpoints.sort_by_cached_key(|e| host_veth_name(e.id));
        for ep in endpoints {
            let name = host_veth_name(ep.id);
            let configure = || configure_op(desired, net, ep, mtu);
            match present(&name) {
                None => {
                    out.push(KernelOp::VethAdd {
                        name: name.clone(),
                        bridge: tb.clone(),
                        mtu,
                        netns: ep.netns.clone(),
                        peer_ifname: ep.ifname.clone(),
                        peer_mac: ep.mac,
                    });
                    out.push(configure());
                }
                Some(link) => {
                    let mtu_wrong = link.mtu != mtu;
                    link_fixups(&mut out, &name, link, mtu);
                    if !link.isolated {
                        out.push(KernelOp::BridgePortIsolate { name: name.clone() });
                    }
                    let complete = link.alias.as_deref() == Some(veth_mark(ep.id).as_str());
                    let elements_differ = skeleton_ok && !same_elements(have_ports.get(name.as_str()), want.ports.get(&name));
                    if !complete || mtu_wrong || elements_differ {
                        out.push(configure());
                    }
                }
            }
        }
    }

    // An interface with a table of its own that is (re)configured changes
    // the tables that route its namespace's other such interfaces: they are
    // configured again too.
    let configured: BTreeSet<uuid::Uuid> = out
        .iter()
        .filter_map(|a| match a {
            KernelOp::ContainerIfaceConfigure { endpoint, own_table: Some(_), .. } => Some(*endpoint),
            _ => None,
        })
        .collect();
    let touched: BTreeSet<&std::path::PathBuf> =
        desired.networks.iter().flat_map(|n| &n.local).filter(|e| configured.contains(&e.id)).map(|e| &e.netns).collect();
    for net in &desired.networks {
        for ep in net.local.iter().filter(|e| e.own_table && touched.contains(&e.netns) && !configured.contains(&e.id)) {
            if present(&host_veth_name(ep.id)).is_some() {
                out.push(configure_op(desired, net, ep, mtu));
            }
        }
    }

    // 5. Uplinks of a gateway: parameters, the rule to the gateway table,
    // the proxy entries of the external addresses (announced when new), and
    // the networks' ways out.
    let mut uplinks: Vec<&DesiredUplink> = desired.uplinks.iter().collect();
    uplinks.sort_by(|a, b| a.ifname.cmp(&b.ifname));
    for up in uplinks {
        for (key, value) in uplink_sysctls(&up.ifname) {
            sysctl(&mut out, observed, &doomed, key, value);
        }
        for r in want.rules.iter().filter(|r| matches!(&r.selector, RuleSelector::Uplink(u) if *u == up.ifname)) {
            if !observed.rules.contains(r) {
                out.push(KernelOp::RuleInstall(r.clone()));
            }
        }
        let mut announce = Vec::new();
        for p in want.proxy_neighbours.iter().filter(|p| p.dev == up.ifname) {
            if !observed.proxy_neighbours.contains(p) {
                out.push(KernelOp::ProxyNeighInstall(p.clone()));
                announce.push(p.ip);
            }
        }
        if !announce.is_empty() {
            out.push(KernelOp::Announce { dev: up.ifname.clone(), addresses: announce });
        }
    }
    // Published ports: their answers are routed by the main table; one
    // published on loopback is reached through its network's bridge.
    for r in want.rules.iter().filter(|r| r.selector == RuleSelector::PublishedReply) {
        if !observed.rules.contains(r) {
            out.push(KernelOp::RuleInstall(r.clone()));
        }
    }
    let localnet: BTreeSet<_> =
        desired.published.iter().filter(|p| p.host_ip.is_some_and(|ip| ip.is_loopback())).map(|p| p.vni).collect();
    for vni in localnet {
        sysctl(&mut out, observed, &doomed, SysctlKey::ipv4_conf(&bridge_name(vni), "route_localnet"), "1");
    }
    for r in want.routes.iter().filter(|r| matches!(r.target, RouteTarget::Via { .. }) && !is_steer_table(r.table)) {
        let dev_doomed = matches!(&r.target, RouteTarget::Via { dev, .. } if doomed.contains(dev));
        if dev_doomed || !observed.routes.contains(r) {
            out.push(KernelOp::RouteInstall(r.clone()));
        }
    }

    // 6. Leaked routes: through another network's bridge or tunnel (and the
    // gateway table's routes of external addresses).
    for r in &want.routes {
        let RouteTarget::Dev(dev) = &r.target else { continue };
        let table_dev_vni = crate::observed::owned_link_name(dev).and_then(|o| match o {
            crate::observed::OwnedName::Bridge(v) | crate::observed::OwnedName::Vxlan(v) => Some(v),
            crate::observed::OwnedName::HostVeth => None,
        });
        if table_dev_vni.is_some_and(|v| table_id(v) == r.table) {
            continue;
        }
        if doomed.contains(dev) || !observed.routes.contains(r) {
            out.push(KernelOp::RouteInstall(r.clone()));
        }
    }

    // 7. Steering: the targets' routes, then the rules that select them.
    for r in want.routes.iter().filter(|r| is_steer_table(r.table)) {
        let dev_doomed = matches!(&r.target, RouteTarget::Via { dev, .. } if doomed.contains(dev));
        if dev_doomed || !observed.routes.contains(r) {
            out.push(KernelOp::RouteInstall(r.clone()));
        }
    }
    for r in want.rules.iter().filter(|r| matches!(r.selector, RuleSelector::Steer(_))) {
        if !observed.rules.contains(r) {
            out.push(KernelOp::RuleInstall(r.clone()));
        }
    }

    // 8. Conntrack.
    let have_zones = if skeleton_ok { &observed.nft.elements } else { &empty };
    for zone in conntrack_flushes(desired, &want_policy, have_policy, have_zones, &diffs, &kept) {
        out.push(KernelOp::ConntrackZoneFlush { zone });
    }
    // A floating IP that moved or went: its flows end (they would go on to
    // its old endpoint).
    for e in have_elements.difference(&want.elements) {
        if let NftElement::FipOut { zone, floating, fixed } = e {
            out.push(KernelOp::ConntrackAddressFlush { zone: *zone, address: *floating, fixed: *fixed });
        }
    }
    out
}

/// Per planner-managed policy map: the elements to delete and to add.
struct MapDiff {
    /// The kernel's elements are not known: empty the map first.
    flush: bool,
    deletes: Vec<MapElement>,
    adds: Vec<MapElement>,
}

/// `have` minus `want` and `want` minus `have`: `want` is sorted (rule
/// order is usually key order already, so this is close to linear) and
/// merged with `have`, which is in order.
fn element_diff<'a>(
    have: &'a BTreeSet<MapElement>,
    want: impl Iterator<Item = &'a MapElement>,
) -> (Vec<MapElement>, Vec<MapElement>) {
    let mut want: Vec<&MapElement> = want.collect();
    want.sort_unstable();
    want.dedup();
    let (mut deletes, mut adds) = (Vec::new(), Vec::new());
    let mut h = have.iter().peekable();
    let mut w = want.into_iter().peekable();
    loop {
        match (h.peek(), w.peek()) {
            (Some(x), Some(y)) => match (*x).cmp(*y) {
                std::cmp::Ordering::Equal => {
                    h.next();
                    w.next();
                }
                std::cmp::Ordering::Less => deletes.push(h.next().cloned().expect("peeked")),
                std::cmp::Ordering::Greater => adds.push(w.next().cloned().expect("peeked")),
            },
            (Some(_), None) => deletes.push(h.next().cloned().expect("peeked")),
            (None, Some(_)) => adds.push(w.next().cloned().expect("peeked")),
            (None, None) => break,
        }
    }
    (deletes, adds)
}

/// The element changes of every wanted map whose recorded digest differs
/// from the wanted one (an element whose verdict changes is deleted and
/// added; a map whose elements are not known is emptied and filled).
fn map_diffs(want: &PolicyObjects, have: &PolicyState) -> BTreeMap<String, MapDiff> {
    let mut out = BTreeMap::new();
    let all = |spec: &crate::policy::MapSpec| -> Vec<MapElement> {
        let mut adds: Vec<MapElement> = spec.elements.iter().map(|(e, _)| e.clone()).collect();
        adds.sort();
        adds
    };
    for (name, spec) in &want.maps {
        let diff = match have.maps.get(name) {
            None => MapDiff { flush: false, deletes: vec![], adds: all(spec) },
            Some(m) if m.digest == Some(spec.digest) => continue,
            // The kernel holds the map this one was patched from: the
            // patch is the diff.
            Some(m) if want.deltas.get(name).is_some_and(|d| m.digest == Some(d.base_digest)) => {
                let d = &want.deltas[name];
                MapDiff { flush: false, deletes: d.deletes.clone(), adds: d.adds.clone() }
            }
            Some(m) => match &m.elements {
                None => MapDiff { flush: true, deletes: vec![], adds: all(spec) },
                Some(have) => {
                    let (deletes, adds) = element_diff(have, spec.elements.iter().map(|(e, _)| e));
                    MapDiff { flush: false, deletes, adds }
                }
            },
        };
        out.insert(name.clone(), diff);
    }
    out
}

/// The policy part of the nftables block, ordered so that every reference
/// is valid at each step: element deletes; the steer chain, reject and log
/// chains (which map elements jump to); new maps and their elements;
/// rule-list, pair and dispatch chains (which look maps up and jump to
/// lists); then deletions, users first: pair and rule-list chains, maps,
/// log and reject chains. The dispatch and steer chains are the
/// skeleton's: never deleted.
fn policy_actions(
    out: &mut Vec<KernelOp>,
    want: &PolicyObjects,
    wanted: &BTreeMap<u128, u128>,
    have: &PolicyState,
    diffs: &BTreeMap<String, MapDiff>,
    kept: &dyn Fn(&str) -> bool,
) {
    for (name, d) in diffs {
        if d.flush {
            out.push(KernelOp::NftMapFlush { map: name.clone() });
        } else if have.maps.contains_key(name) && !d.deletes.is_empty() {
            out.push(KernelOp::NftMapElementsDelete { map: name.clone(), elements: d.deletes.clone() });
        }
    }
    let mut installs: Vec<(&String, &crate::policy::ChainSpec)> =
        want.chains.iter().filter(|(name, spec)| have.chains.get(*name).and_then(|c| c.digest) != Some(spec.digest)).collect();
    installs.sort_by_key(|(name, spec)| (spec.kind, *name));
    let install = |out: &mut Vec<KernelOp>, kinds: &[ChainKind]| {
        for (name, spec) in installs.iter().filter(|(_, s)| kinds.contains(&s.kind)) {
            out.push(KernelOp::NftChainInstall { name: (*name).clone(), rules: spec.rules.clone() });
        }
    };
    install(out, &[ChainKind::Steer, ChainKind::Reject, ChainKind::Log]);
    for (name, spec) in &want.maps {
        if !have.maps.contains_key(name) {
            out.push(KernelOp::NftMapAdd { name: name.clone(), family: spec.family });
        }
    }
    for (name, d) in diffs {
        if !d.adds.is_empty() {
            out.push(KernelOp::NftMapElementsAdd { map: name.clone(), elements: d.adds.clone() });
        }
    }
    install(out, &[ChainKind::List, ChainKind::Pair, ChainKind::Dispatch]);
    let mut deletes: Vec<(ChainKind, &String)> = have
        .chains
        .keys()
        .filter(|n| !want.chains.contains_key(*n) && n.as_str() != DISPATCH && n.as_str() != STEER && !kept(n))
        .map(|n| (ChainKind::of(n).unwrap_or(ChainKind::Pair), n))
        .collect();
    deletes.sort_by(|a, b| b.cmp(a));
    for (_, name) in deletes.iter().filter(|(k, _)| *k >= ChainKind::List) {
        out.push(KernelOp::NftChainDelete { name: (*name).clone() });
    }
    for name in have.maps.keys() {
        if !want.maps.contains_key(name) && !kept(name) {
            out.push(KernelOp::NftMapDelete { name: name.clone() });
        }
    }
    for (_, name) in deletes.iter().filter(|(k, _)| *k < ChainKind::List) {
        out.push(KernelOp::NftChainDelete { name: (*name).clone() });
    }
    let deletes: Vec<(u128, u128)> =
        have.digests.iter().filter(|(k, v)| wanted.get(*k) != Some(*v)).map(|(k, v)| (*k, *v)).collect();
    let adds: Vec<(u128, u128)> =
        wanted.iter().filter(|(k, v)| have.digests.get(*k) != Some(*v)).map(|(k, v)| (*k, *v)).collect();
    if !deletes.is_empty() || !adds.is_empty() {
        out.push(KernelOp::NftDigestsUpdate { deletes, adds });
    }
}

/// The conntrack zones to flush so that flows a change no longer allows
/// end. A zone is flushed when
/// - it was a pair zone and is no longer one (the networks were
///   disconnected, or the zone renumbered);
/// - the fingerprint of a watched pair (flows that arrive through a tunnel)
///   changed;
/// - the program of a pair that uses it may now refuse what it let through:
///   the program is new (restrictions on a pair that passed everything), a
///   rule list is new, its default became deny or reject, a pass element is
///   gone from one of its maps, or a deny or reject element appeared.
///
/// Changes that only widen what passes (pass elements added, deny elements
/// removed, a list or a whole program removed) flush nothing. A flushed flow
/// that is still allowed continues: its next packet is evaluated again as
/// new and conntrack picks it up (TCP included).
fn conntrack_flushes(
    desired: &DesiredHost,
    want: &PolicyObjects,
    have: &PolicyState,
    have_elements: &BTreeSet<NftElement>,
    diffs: &BTreeMap<String, MapDiff>,
    kept: &BTreeSet<String>,
) -> BTreeSet<u16> {
    let mut out = BTreeSet::new();
    let wanted: BTreeSet<u16> = desired.pair_zones.iter().map(|p| p.zone).collect();
    for e in have_elements {
        if let NftElement::PairZone { zone, .. } = e {
            if !wanted.contains(zone) {
                out.insert(*zone);
            }
        }
    }
    for w in &desired.watches {
        let (key, value) = crate::policy::watch_digest(w);
        if have.digests.get(&key) != Some(&value) {
            if let Some(zone) = desired.flow_zone(w.src, w.dst) {
                out.insert(zone);
            }
        }
    }
    for prog in desired.policies.iter().filter(|p| !p.lists.is_empty()) {
        let Some(zone) = desired.flow_zone(prog.src, prog.dst) else { continue };
        let narrowed = !have.chains.contains_key(&pair_chain(prog.src, prog.dst))
            || prog.lists.iter().enumerate().any(|(i, list)| {
                let lname = list_chain(prog.src, prog.dst, i);
                if kept.contains(&lname) {
                    return false;
                }
                let (Some(h), Some(w)) = (have.chains.get(&lname), want.chains.get(&lname)) else { return true };
                if h.digest != Some(w.digest) && h.default != Some(list.default) && list.default != tessera_policy::Verdict::Pass
                {
                    return true;
                }
                let of_list = |n: &String| crate::policy::map_list_chain(n).as_ref() == Some(&lname);
                let mut gone = have.maps.iter().filter(|(n, _)| of_list(n) && !want.maps.contains_key(*n));
                let gone_pass = gone.any(|(_, m)| m.elements.as_ref().is_none_or(|els| els.iter().any(|e| e.verdict.passes())));
                let changed = diffs.iter().filter(|(n, _)| of_list(n)).any(|(_, d)| {
                    d.flush || d.deletes.iter().any(|e| e.verdict.passes()) || d.adds.iter().any(|e| !e.verdict.passes())
                });
                gone_pass || changed
            });
        if narrowed {
            out.insert(zone);
        }
    }
    out
}

/// Whether the kernel's link `have` is not the link `w` Tessera wants
/// (another kind, MAC, VXLAN parameters or bridge).
fn wrong_link(w: &LinkState, have: &LinkState) -> bool {
    match (&w.kind, &have.kind) {
        (LinkKind::Bridge, LinkKind::Bridge) => have.mac != w.mac,
        (LinkKind::Vxlan(wv), LinkKind::Vxlan(hv)) => wv != hv || have.mac != w.mac,
        (LinkKind::Veth, LinkKind::Veth) => have.master != w.master,
        _ => true,
    }
}

/// Links named like Tessera's but without its mark that Tessera does not
/// adopt: unwanted ones, and wanted ones that are not what it wants (making
/// that link then fails, and says so, rather than deleting someone's).
fn links_left_alone(want: &Want, observed: &Observed) -> BTreeSet<String> {
    observed
        .links
        .iter()
        .filter(|(_, have)| link_mark(have.alias.as_deref()) != LinkMark::Ours)
        .filter(|(name, have)| want.links.get(*name).is_none_or(|w| wrong_link(w, have)))
        .map(|(name, _)| name.clone())
        .collect()
}

/// Links to delete: Tessera's links that are not wanted, and wanted links
/// whose kind or identity is wrong (they are deleted and made again). A veth
/// whose bridge is made again is made again too. Links `left_alone` are not.
fn doomed_links(want: &Want, observed: &Observed, left_alone: &BTreeSet<String>) -> BTreeSet<String> {
    let mut doomed = BTreeSet::new();
    for (name, have) in observed.links.iter().filter(|(name, _)| !left_alone.contains(*name)) {
        let Some(w) = want.links.get(name) else {
            doomed.insert(name.clone());
            continue;
        };
        if wrong_link(w, have) {
            doomed.insert(name.clone());
        }
    }
    let bridges_remade: BTreeSet<String> = doomed.iter().filter(|n| want.links.contains_key(*n)).cloned().collect();
    for (name, have) in observed.links.iter().filter(|(name, _)| !left_alone.contains(*name)) {
        if matches!(have.kind, LinkKind::Veth) && have.master.as_ref().is_some_and(|m| bridges_remade.contains(m)) {
            doomed.insert(name.clone());
        }
    }
    doomed
}

/// Deletion order: endpoint veths, then VXLAN devices, then bridges.
fn link_rank(name: &str) -> u8 {
    use crate::observed::{owned_link_name, OwnedName};
    match owned_link_name(name) {
        Some(OwnedName::HostVeth) => 0,
        Some(OwnedName::Vxlan(_)) => 1,
        Some(OwnedName::Bridge(_)) => 2,
        None => 3,
    }
}

/// MTU and admin state of a link that is kept; Tessera's mark on a bridge
/// or VXLAN device it adopts.
fn link_fixups(out: &mut Vec<KernelOp>, name: &str, link: &LinkState, mtu: u32) {
    if link.alias.as_deref() != Some(LINK_MARK) && !matches!(link.kind, LinkKind::Veth) {
        out.push(KernelOp::LinkSetAlias { name: name.to_string(), alias: LINK_MARK.to_string() });
    }
    if link.mtu != mtu {
        out.push(KernelOp::LinkSetMtu { name: name.to_string(), mtu });
    }
    if !link.up {
        out.push(KernelOp::LinkSetUp { name: name.to_string() });
    }
}

/// A parameter write, unless the kernel already has the value (a parameter of
/// a link being made again is written in any case).
fn sysctl(out: &mut Vec<KernelOp>, observed: &Observed, doomed: &BTreeSet<String>, key: SysctlKey, value: &str) {
    let dev_remade = key.0.split('/').nth(3).is_some_and(|dev| doomed.contains(dev));
    if dev_remade || observed.sysctls.get(&key).map(|v| v.trim()) != Some(value) {
        out.push(KernelOp::SysctlWrite { key, value: value.to_string() });
    }
}

/// The gateways a local endpoint routes through: one per address family, the
/// gateway of the subnet of its first address of that family.
/// The configuration of `ep`'s interface in its container.
fn configure_op(desired: &DesiredHost, net: &DesiredNetwork, ep: &LocalEndpoint, mtu: u32) -> KernelOp {
    KernelOp::ContainerIfaceConfigure {
        host_veth: host_veth_name(ep.id),
        endpoint: ep.id,
        netns: ep.netns.clone(),
        ifname: ep.ifname.clone(),
        mac: ep.mac,
        addrs: ep.ips.clone(),
        gateways: gateways(net, ep),
        mtu,
        dhcp: ep.dhcp,
        own_table: own_table(desired, ep),
        service: ep.service,
    }
}

/// The own routing table of `ep`'s interface in its container, when it
/// asks for one: the namespace's interfaces with one are numbered from
/// 100 in the order of their names, and each is routed by the others'.
fn own_table(desired: &DesiredHost, ep: &LocalEndpoint) -> Option<crate::op::OwnTable> {
    if !ep.own_table {
        return None;
    }
    let mut names: Vec<&str> = desired
        .networks
        .iter()
        .flat_map(|n| &n.local)
        .filter(|e| e.own_table && e.netns == ep.netns)
        .map(|e| e.ifname.as_str())
        .collect();
    names.sort();
    names.dedup();
    let table = |name: &str| 100 + names.iter().position(|n| *n == name).unwrap_or(0) as u32;
    let peers = names.iter().filter(|n| **n != ep.ifname).map(|n| table(n)).collect();
    Some(crate::op::OwnTable { table: table(&ep.ifname), peers })
}

fn gateways(net: &DesiredNetwork, ep: &LocalEndpoint) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for ip in &ep.ips {
        if let Some(gw) = net.gateway_for(ip.addr()) {
            if !out.iter().any(|g| g.is_ipv4() == gw.is_ipv4()) {
                out.push(gw);
            }
        }
    }
    out
}

/// Whether a port holds the elements it should (both in element order).
fn same_elements(have: Option<&Vec<&NftElement>>, want: Option<&Vec<NftElement>>) -> bool {
    let (have, want) = (have.map_or(&[][..], Vec::as_slice), want.map_or(&[][..], Vec::as_slice));
    have.len() == want.len() && have.iter().zip(want).all(|(h, w)| *h == w)
}
