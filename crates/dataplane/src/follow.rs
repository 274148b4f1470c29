//! How an action changes the Tessera-owned state of a kernel, as the kernel
//! carries it out: the modelled kernel of [`crate::FakeDataplane`], and the
//! state a [`crate::Reconciler`] knows the kernel holds after an apply.
//!
//! The model follows the kernel where the order of a plan matters: an object
//! on a link that does not exist fails with `ENODEV`, a link that exists
//! cannot be added again (`EEXIST`), deleting a link takes its routes,
//! neighbour and FDB entries, addresses and parameters with it, and removing
//! what is gone succeeds.

use std::io;

use crate::names::{veth_mark, DISPATCH, LINK_MARK, SKELETON_VERSION, STEER};
use crate::observed::{LinkKind, LinkState, Observed, ObservedChain, ObservedMap, RouteTarget, VxlanState};
use crate::op::KernelOp;
use crate::policy::{derive_digests, skeleton_marker};

fn err(errno: i32) -> io::Error {
    io::Error::from_raw_os_error(errno)
}

/// Links not named like Tessera's (a gateway's uplink) are the host's:
/// present, and not modelled.
fn need_link(k: &Observed, dev: &str) -> io::Result<()> {
    if k.links.contains_key(dev) || crate::observed::owned_link_name(dev).is_none() {
        Ok(())
    } else {
        Err(err(ENODEV))
    }
}

// Errno values, spelled out to keep the crate free of a libc dependency.
const ENODEV: i32 = 19;
const EEXIST: i32 = 17;
const ENOENT: i32 = 2;

/// A link as Tessera makes it: up, marked, and (a port of `master`)
/// isolated.
fn made(kind: LinkKind, mtu: u32, mac: Option<tessera_model::MacAddr>, master: Option<String>) -> LinkState {
    let isolated = master.is_some();
    LinkState { kind, mtu, mac, up: true, master, alias: Some(LINK_MARK.into()), isolated }
}

/// Carries out one action on `k`.
pub(crate) fn follow(k: &mut Observed, action: &KernelOp) -> io::Result<()> {
    match action {
        KernelOp::SysctlWrite { key, value } => {
            let dev = key.0.split('/').nth(3);
            if let Some(dev) = dev.filter(|d| !matches!(*d, "all" | "default")) {
                need_link(k, dev).map_err(|_| err(ENOENT))?;
            }
            k.sysctls.insert(key.clone(), value.clone());
        }
        KernelOp::Announce { .. } => {}
        KernelOp::NftTablesInstall => {
            k.nft.skeleton = Some(SKELETON_VERSION.to_string());
            k.nft.elements.clear();
            k.nft.policy = Default::default();
            k.nft.policy.chains.insert(DISPATCH.into(), ObservedChain::default());
            k.nft.policy.chains.insert(STEER.into(), ObservedChain::default());
            let (mk, mv) = skeleton_marker();
            k.nft.policy.digests.insert(mk, mv);
        }
        KernelOp::NftMapAdd { name, family } => {
            if k.nft.skeleton.is_none() || k.nft.policy.maps.contains_key(name) {
                return Err(err(if k.nft.skeleton.is_none() { ENOENT } else { EEXIST }));
            }
            k.nft
                .policy
                .maps
                .insert(name.clone(), ObservedMap { family: *family, digest: None, elements: Some(Default::default()) });
        }
        KernelOp::NftMapDelete { name } => {
            k.nft.policy.maps.remove(name);
        }
        KernelOp::NftMapElementsAdd { map, elements } => {
            let m = k.nft.policy.maps.get_mut(map).ok_or_else(|| err(ENOENT))?;
            let mut set = m.elements.as_deref().cloned().unwrap_or_default();
            let keys: std::collections::BTreeSet<_> = set.iter().map(|x| x.key).collect();
            if elements.iter().any(|e| keys.contains(&e.key)) {
                return Err(err(EEXIST));
            }
            set.extend(elements.iter().cloned());
            m.elements = Some(std::sync::Arc::new(set));
        }
        KernelOp::NftMapElementsDelete { map, elements } => {
            if let Some(m) = k.nft.policy.maps.get_mut(map) {
                let mut set = m.elements.as_deref().cloned().unwrap_or_default();
                for e in elements {
                    set.retain(|x| x.key != e.key);
                }
                m.elements = Some(std::sync::Arc::new(set));
            }
        }
        KernelOp::NftMapFlush { map } => {
            let m = k.nft.policy.maps.get_mut(map).ok_or_else(|| err(ENOENT))?;
            m.elements = Some(Default::default());
        }
        KernelOp::NftDigestsUpdate { deletes, adds } => {
            if k.nft.skeleton.is_none() {
                return Err(err(ENOENT));
            }
            for (key, _) in deletes {
                k.nft.policy.digests.remove(key);
            }
            for (key, v) in adds {
                k.nft.policy.digests.insert(*key, *v);
            }
            derive_digests(&mut k.nft.policy);
        }
        KernelOp::NftChainInstall { name, rules } => {
            if k.nft.skeleton.is_none() {
                return Err(err(ENOENT));
            }
            let _ = rules;
            k.nft.policy.chains.entry(name.clone()).or_default();
            derive_digests(&mut k.nft.policy);
        }
        KernelOp::NftChainDelete { name } => {
            k.nft.policy.chains.remove(name);
        }
        KernelOp::ConntrackZoneFlush { .. } | KernelOp::ConntrackAddressFlush { .. } => {}
        KernelOp::BridgePortIsolate { name } => {
            k.links.get_mut(name).ok_or_else(|| err(ENODEV))?.isolated = true;
        }
        KernelOp::NftSetElementAdd(e) => {
            if k.nft.skeleton.is_none() {
                return Err(err(ENOENT));
            }
            k.nft.elements.insert(e.clone());
        }
        KernelOp::NftSetElementDelete(e) => {
            k.nft.elements.remove(e);
        }
        KernelOp::LinkAddBridge { name, mac, mtu } => {
            add_link(k, name, made(LinkKind::Bridge, *mtu, Some(*mac), None))?;
        }
        KernelOp::LinkAddVxlan { name, vni, local, underlay, port, mac, mtu } => {
            let kind = LinkKind::Vxlan(VxlanState {
                vni: vni.get(),
                local: Some(*local),
                port: *port,
                underlay: Some(underlay.clone()),
                learning: false,
            });
            add_link(k, name, made(kind, *mtu, Some(*mac), None))?;
        }
        KernelOp::VethAdd { name, bridge, mtu, .. } => {
            need_link(k, bridge)?;
            add_link(k, name, made(LinkKind::Veth, *mtu, None, Some(bridge.clone())))?;
        }
        KernelOp::LinkSetUp { name } => {
            k.links.get_mut(name).ok_or_else(|| err(ENODEV))?.up = true;
        }
        KernelOp::LinkSetAlias { name, alias } => {
            k.links.get_mut(name).ok_or_else(|| err(ENODEV))?.alias = Some(alias.clone());
        }
        KernelOp::LinkSetMtu { name, mtu } => {
            k.links.get_mut(name).ok_or_else(|| err(ENODEV))?.mtu = *mtu;
        }
        KernelOp::LinkDelete { name } => {
            if k.links.remove(name).is_some() {
                k.addresses.retain(|a| &a.dev != name);
                k.routes.retain(|r| !matches!(&r.target, RouteTarget::Dev(d) | RouteTarget::Via { dev: d, .. } if d == name));
                k.neighbours.retain(|n| &n.dev != name);
                k.fdb.retain(|f| &f.dev != name);
                k.proxy_neighbours.retain(|p| &p.dev != name);
                k.sysctls.retain(|key, _| key.0.split('/').nth(3) != Some(name.as_str()));
                for link in k.links.values_mut() {
                    if link.master.as_ref() == Some(name) {
                        link.master = None;
                    }
                }
            }
        }
        KernelOp::AddressInstall(a) => {
            need_link(k, &a.dev)?;
            k.addresses.insert(a.clone());
        }
        KernelOp::AddressUninstall(a) => {
            k.addresses.remove(a);
        }
        KernelOp::RuleInstall(r) => {
            k.rules.insert(r.clone());
        }
        KernelOp::RuleUninstall(r) => {
            k.rules.remove(r);
        }
        KernelOp::RouteInstall(r) => {
            if let RouteTarget::Dev(d) | RouteTarget::Via { dev: d, .. } = &r.target {
                need_link(k, d)?;
            }
            // A replace takes the place of the route of the same
            // destination and metric (the unreachable one has its own).
            let unreachable = |t: &RouteTarget| matches!(t, RouteTarget::Unreachable);
            k.routes.retain(|o| !(o.table == r.table && o.dst == r.dst && unreachable(&o.target) == unreachable(&r.target)));
            k.routes.insert(r.clone());
        }
        KernelOp::RouteUninstall(r) => {
            k.routes.remove(r);
        }
        KernelOp::NeighInstall(n) => {
            need_link(k, &n.dev)?;
            k.neighbours.retain(|o| !(o.dev == n.dev && o.ip == n.ip));
            k.neighbours.insert(n.clone());
        }
        KernelOp::NeighUninstall(n) => {
            k.neighbours.retain(|o| !(o.dev == n.dev && o.ip == n.ip));
        }
        KernelOp::FdbInstall(f) => {
            need_link(k, &f.dev)?;
            k.fdb.insert(f.clone());
        }
        KernelOp::FdbUninstall(f) => {
            k.fdb.remove(f);
        }
        KernelOp::ProxyNeighInstall(p) => {
            need_link(k, &p.dev)?;
            k.proxy_neighbours.insert(p.clone());
        }
        KernelOp::ProxyNeighUninstall(p) => {
            k.proxy_neighbours.remove(p);
        }
        KernelOp::ContainerIfaceConfigure { host_veth, endpoint, .. } => {
            let link = k.links.get_mut(host_veth).ok_or_else(|| err(ENODEV))?;
            link.alias = Some(veth_mark(*endpoint));
        }
    }
    Ok(())
}

fn add_link(k: &mut Observed, name: &str, link: LinkState) -> io::Result<()> {
    if k.links.contains_key(name) {
        return Err(err(EEXIST));
    }
    k.links.insert(name.to_string(), link);
    Ok(())
}
