//! Observation: the netlink dumps (links, addresses, routes, rules,
//! neighbour, proxy neighbour and FDB entries), the `/proc/sys` reads and
//! the nftables state an [`Observed`] is made of, keeping only what Tessera
//! owns.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressScope;
use rtnetlink::packet_route::link::{InfoKind, LinkFlags};
use rtnetlink::packet_route::neighbour::{NeighbourMessage, NeighbourState};
use rtnetlink::packet_route::route::RouteMessage;
use rtnetlink::packet_route::rule::RuleMessage;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};

use super::common::kernel_err;
use super::links::{addresses, links, vxlan_state};
use super::neigh::neigh_ip_mac;
use super::nftables::NftTables;
use super::routes::{route_entry, rule_entry};
use crate::desired::{bridge_sysctls, host_sysctls, uplink_sysctls, vxlan_sysctls};
use crate::error::DataplaneError;
use crate::names::SysctlKey;
use crate::observed::{
    link_mark, owned_link_name, AddressEntry, FdbEntry, LinkKind, LinkMark, LinkState, NeighEntry, Observed, OwnedName,
    ProxyNeighEntry, RuleSelector,
};

/// Every link's name, and which links are Tessera's, by index.
struct Owned {
    names: BTreeMap<u32, String>,
    owned: BTreeMap<u32, OwnedName>,
}

impl Owned {
    fn is_bridge(&self, i: u32) -> bool {
        matches!(self.owned.get(&i), Some(OwnedName::Bridge(_)))
    }
    fn is_vxlan(&self, i: u32) -> bool {
        matches!(self.owned.get(&i), Some(OwnedName::Vxlan(_)))
    }
    fn name_of(&self, i: u32) -> String {
        self.names.get(&i).cloned().unwrap_or_default()
    }
}

/// Reads the Tessera-owned part of the kernel state of the namespace of `h`,
/// and the nftables state `nft` carries forward or lists.
pub(super) async fn observe(h: &Handle, nft: &NftTables) -> Result<Observed, DataplaneError> {
    let mut obs = Observed::default();
    let owned = observe_links(h, &mut obs).await?;
    observe_addresses(h, &owned, &mut obs).await?;
    for version in [IpVersion::V4, IpVersion::V6] {
        observe_routes_and_rules(h, version, &owned, &mut obs).await?;
    }
    // A gateway's uplinks are the host's links; they are known by the rules
    // Tessera made for them.
    let uplinks: BTreeSet<String> = obs
        .rules
        .iter()
        .filter_map(|r| match &r.selector {
            RuleSelector::Uplink(name) => Some(name.clone()),
            _ => None,
        })
        .collect();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        observe_neighbours(h, family, &owned, &uplinks, &mut obs).await?;
    }
    observe_fdb(h, &owned, &mut obs).await?;
    observe_sysctls(&owned, &uplinks, &mut obs);
    obs.nft = nft.observe().await?;
    Ok(obs)
}

/// Owned links into `obs`; every link's name and the owned ones, for the
/// dumps that follow.
async fn observe_links(h: &Handle, obs: &mut Observed) -> Result<Owned, DataplaneError> {
    let links = links(h).await?;
    let names: BTreeMap<u32, String> = links.iter().map(|l| (l.index, l.name.clone())).collect();
    let mut owned: BTreeMap<u32, OwnedName> = BTreeMap::new();
    for l in &links {
        let Some(which) = owned_link_name(&l.name) else { continue };
        // Named like ours, marked by someone else: not ours.
        if link_mark(l.alias.as_deref()) == LinkMark::Foreign {
            continue;
        }
        owned.insert(l.index, which);
        let kind = match &l.kind {
            Some(InfoKind::Bridge) => LinkKind::Bridge,
            Some(InfoKind::Veth) => LinkKind::Veth,
            Some(InfoKind::Vxlan) => LinkKind::Vxlan(vxlan_state(&l.vxlan, &names)),
            Some(other) => LinkKind::Other(format!("{other:?}").to_lowercase()),
            None => LinkKind::Other("none".into()),
        };
        obs.links.insert(
            l.name.clone(),
            LinkState {
                kind,
                mtu: l.mtu,
                mac: l.mac,
                up: l.flags.contains(LinkFlags::Up),
                master: l.master.and_then(|m| names.get(&m).cloned()),
                alias: l.alias.clone(),
                isolated: l.isolated,
            },
        );
    }
    Ok(Owned { names, owned })
}

/// Addresses of owned bridges into `obs`.
async fn observe_addresses(h: &Handle, owned: &Owned, obs: &mut Observed) -> Result<(), DataplaneError> {
    for (index, addr, scope) in addresses(h).await? {
        // Link-local addresses are the kernel's, not ours.
        if owned.is_bridge(index) && scope == AddressScope::Universe {
            obs.addresses.insert(AddressEntry { dev: owned.name_of(index), addr });
        }
    }
    Ok(())
}

/// Routes of owned tables and owned rules of one IP version into `obs`.
async fn observe_routes_and_rules(
    h: &Handle,
    version: IpVersion,
    owned: &Owned,
    obs: &mut Observed,
) -> Result<(), DataplaneError> {
    let template = match version {
        IpVersion::V4 => RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
        IpVersion::V6 => RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    };
    let routes: Vec<RouteMessage> =
        h.route().get(template).execute().try_collect().await.map_err(kernel_err("observe", "routes"))?;
    for r in routes {
        if let Some(entry) = route_entry(&r, &owned.names) {
            obs.routes.insert(entry);
        }
    }
    let rules: Vec<RuleMessage> =
        h.rule().get(version.clone()).execute().try_collect().await.map_err(kernel_err("observe", "rules"))?;
    for r in rules {
        if let Some(entry) = rule_entry(&r) {
            obs.rules.insert(entry);
        }
    }
    Ok(())
}

/// Permanent neighbour entries of owned VXLAN devices (remote endpoints)
/// and bridges (local endpoints), and proxy entries of owned bridges, of
/// one address family, into `obs`.
async fn observe_neighbours(
    h: &Handle,
    family: AddressFamily,
    owned: &Owned,
    uplinks: &BTreeSet<String>,
    obs: &mut Observed,
) -> Result<(), DataplaneError> {
    let neighs: Vec<NeighbourMessage> = h
        .neighbours()
        .get()
        .set_address_family(family)
        .execute()
        .try_collect()
        .await
        .map_err(kernel_err("observe", "neighbours"))?;
    for n in neighs {
        let owned_dev = owned.is_vxlan(n.header.ifindex) || owned.is_bridge(n.header.ifindex);
        if n.header.state != NeighbourState::Permanent || !owned_dev {
            continue;
        }
        let (ip, mac) = neigh_ip_mac(&n);
        if let (Some(ip), Some(mac)) = (ip, mac) {
            obs.neighbours.insert(NeighEntry { dev: owned.name_of(n.header.ifindex), ip, mac });
        }
    }
    let proxies: Vec<NeighbourMessage> = h
        .neighbours()
        .get()
        .proxies()
        .set_address_family(family)
        .execute()
        .try_collect()
        .await
        .map_err(kernel_err("observe", "proxy neighbours"))?;
    for n in proxies {
        if !owned.is_bridge(n.header.ifindex) && !uplinks.contains(&owned.name_of(n.header.ifindex)) {
            continue;
        }
        if let (Some(ip), _) = neigh_ip_mac(&n) {
            obs.proxy_neighbours.insert(ProxyNeighEntry { dev: owned.name_of(n.header.ifindex), ip });
        }
    }
    Ok(())
}

/// FDB entries of owned VXLAN devices into `obs`.
async fn observe_fdb(h: &Handle, owned: &Owned, obs: &mut Observed) -> Result<(), DataplaneError> {
    let fdb: Vec<NeighbourMessage> = h
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Bridge)
        .execute()
        .try_collect()
        .await
        .map_err(kernel_err("observe", "fdb"))?;
    for n in fdb {
        if !owned.is_vxlan(n.header.ifindex) {
            continue;
        }
        if let (Some(dst), Some(mac)) = neigh_ip_mac(&n) {
            obs.fdb.insert(FdbEntry { dev: owned.name_of(n.header.ifindex), mac, dst });
        }
    }
    Ok(())
}

/// The parameters Tessera sets, host-wide and of the owned bridges and VXLAN
/// devices, into `obs` (one that cannot be read is left out).
fn observe_sysctls(owned: &Owned, uplinks: &BTreeSet<String>, obs: &mut Observed) {
    let mut keys: Vec<SysctlKey> = host_sysctls().into_iter().map(|(k, _)| k).collect();
    for up in uplinks {
        keys.extend(uplink_sysctls(up).into_iter().map(|(k, _)| k));
    }
    for (index, which) in &owned.owned {
        let name = owned.name_of(*index);
        match which {
            OwnedName::Bridge(_) => {
                keys.extend(bridge_sysctls(&name).into_iter().map(|(k, _)| k));
                // Set for a network with ports published on loopback.
                keys.push(SysctlKey::ipv4_conf(&name, "route_localnet"));
            }
            OwnedName::Vxlan(_) => keys.extend(vxlan_sysctls(&name).into_iter().map(|(k, _)| k)),
            OwnedName::HostVeth => {}
        }
    }
    for key in keys {
        if let Ok(v) = std::fs::read_to_string(Path::new("/proc/sys").join(&key.0)) {
            obs.sysctls.insert(key, v.trim().to_string());
        }
    }
}
