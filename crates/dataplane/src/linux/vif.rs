//! The interface table (`tessera vif list`): every link of the data plane's
//! namespace with its Tessera role, addresses, flags and counters.

use std::collections::BTreeMap;

use ipnet::IpNet;
use rtnetlink::packet_route::link::LinkFlags;
use rtnetlink::Handle;

use super::links::{addresses, links};
use crate::error::DataplaneError;
use crate::observed::{owned_link_name, OwnedName};
use crate::vif::{VifEntry, VifKind};

/// `ip -s addr show`, as the interface table: each link's role (a network's
/// bridge or tunnel, an endpoint's veth, a physical or other host link), its
/// network and bridge, addresses, flags and counters.
pub(super) async fn interfaces(h: &Handle) -> Result<Vec<VifEntry>, DataplaneError> {
    let links = links(h).await?;
    let names: BTreeMap<u32, String> = links.iter().map(|l| (l.index, l.name.clone())).collect();
    let mut addrs: BTreeMap<u32, Vec<IpNet>> = BTreeMap::new();
    for (index, addr, _) in addresses(h).await? {
        addrs.entry(index).or_default().push(addr);
    }
    let mut out = Vec::new();
    for l in links {
        let master = l.master.and_then(|m| names.get(&m).cloned());
        let owned = owned_link_name(&l.name);
        let (kind, vni) = match owned {
            Some(OwnedName::Bridge(v)) => (VifKind::Bridge, Some(v)),
            Some(OwnedName::Vxlan(v)) => (VifKind::Tunnel, Some(v)),
            Some(OwnedName::HostVeth) => {
                let vni = master.as_deref().and_then(owned_link_name).and_then(|o| match o {
                    OwnedName::Bridge(v) => Some(v),
                    _ => None,
                });
                (VifKind::Endpoint, vni)
            }
            // The fast path's metadata-mode VXLAN device: every network's.
            None if l.name == crate::fastpath::MD_DEVICE && l.alias.as_deref() == Some(crate::names::LINK_MARK) => {
                (VifKind::Tunnel, None)
            }
            None if l.kind.is_none() && !l.flags.contains(LinkFlags::Loopback) => (VifKind::Physical, None),
            None => (VifKind::Host, None),
        };
        let s = l.stats.unwrap_or_default();
        out.push(VifEntry {
            name: l.name,
            index: l.index,
            kind,
            mac: l.mac,
            addrs: addrs.remove(&l.index).unwrap_or_default(),
            vni,
            master,
            flags: flag_names(l.flags),
            mtu: l.mtu,
            rx_packets: s.rx_packets,
            rx_bytes: s.rx_bytes,
            rx_errors: s.rx_errors,
            rx_dropped: s.rx_dropped,
            tx_packets: s.tx_packets,
            tx_bytes: s.tx_bytes,
            tx_errors: s.tx_errors,
            tx_dropped: s.tx_dropped,
            translations: Vec::new(),
            dhcp: None,
            service: None,
            path: None,
        });
    }
    // A gateway's uplinks, with what they translate.
    if let Ok(Some(doc)) = super::nftables::nft_list(&["-j", "list", "table", "inet", "tessera"]).await {
        let ext = crate::nft::external::external(&doc);
        for v in out.iter_mut().filter(|v| ext.uplinks.contains(&v.name)) {
            v.kind = VifKind::Uplink;
            v.translations = ext.translations.clone();
        }
    }
    Ok(out)
}

fn flag_names(flags: LinkFlags) -> Vec<String> {
    [
        (LinkFlags::Loopback, "loopback"),
        (LinkFlags::Broadcast, "broadcast"),
        (LinkFlags::Noarp, "noarp"),
        (LinkFlags::Promisc, "promisc"),
        (LinkFlags::Multicast, "multicast"),
        (LinkFlags::Up, "up"),
        (LinkFlags::LowerUp, "lower_up"),
        (LinkFlags::Running, "running"),
    ]
    .into_iter()
    .filter(|(f, _)| flags.contains(*f))
    .map(|(_, name)| name.to_string())
    .collect()
}
