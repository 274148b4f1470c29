//! Links and what lives on them: bridges, VXLAN devices, veths (both sides),
//! bridge port isolation, addresses and kernel parameters (`/proc/sys`);
//! the link and address dumps the observation and the interface table are
//! read from.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::Path;

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope};
use rtnetlink::packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::route::{RouteMessage, RouteScope};
use rtnetlink::packet_route::rule::RuleAction;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder};
use tessera_model::{MacAddr, Vni};

use super::common::{errno_err, kernel_err, link_index, mac_of, need_index, ENODEV};
use super::netns::in_netns;
use crate::desired::service_sysctls;
use crate::error::DataplaneError;
use crate::names::{veth_mark, SysctlKey, LINK_MARK};
use crate::observed::{AddressEntry, VxlanState};
use crate::op::KernelOp;

/// One link as read from the kernel.
pub(super) struct RawLink {
    pub(super) index: u32,
    pub(super) name: String,
    pub(super) kind: Option<InfoKind>,
    pub(super) vxlan: Vec<InfoVxlan>,
    pub(super) flags: LinkFlags,
    pub(super) mtu: u32,
    pub(super) mac: Option<MacAddr>,
    pub(super) master: Option<u32>,
    pub(super) alias: Option<String>,
    pub(super) isolated: bool,
    pub(super) stats: Option<rtnetlink::packet_route::link::Stats64>,
}

fn raw_link(msg: LinkMessage) -> RawLink {
    let mut l = RawLink {
        index: msg.header.index,
        name: String::new(),
        kind: None,
        vxlan: Vec::new(),
        flags: msg.header.flags,
        mtu: 0,
        mac: None,
        master: None,
        alias: None,
        isolated: false,
        stats: None,
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => l.name = n,
            LinkAttribute::Mtu(m) => l.mtu = m,
            LinkAttribute::Address(a) => l.mac = mac_of(&a),
            LinkAttribute::Controller(m) => l.master = Some(m),
            LinkAttribute::IfAlias(a) => l.alias = Some(a),
            LinkAttribute::Stats64(s) => l.stats = Some(s),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => l.kind = Some(k),
                        LinkInfo::Data(InfoData::Vxlan(v)) => l.vxlan = v,
                        LinkInfo::PortData(InfoPortData::BridgePort(port)) => {
                            l.isolated = port.iter().any(|p| matches!(p, InfoBridgePort::Isolated(true)));
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    l
}

/// `ip -d -s link show`: every link of the namespace.
pub(super) async fn links(h: &Handle) -> Result<Vec<RawLink>, DataplaneError> {
    let msgs: Vec<LinkMessage> = h.link().get().execute().try_collect().await.map_err(kernel_err("observe", "links"))?;
    Ok(msgs.into_iter().map(raw_link).collect())
}

/// `ip addr show`: every address of the namespace, with its link's index and
/// its scope.
pub(super) async fn addresses(h: &Handle) -> Result<Vec<(u32, IpNet, AddressScope)>, DataplaneError> {
    address_dump(h, None).await
}

async fn address_dump(handle: &Handle, index: Option<u32>) -> Result<Vec<(u32, IpNet, AddressScope)>, DataplaneError> {
    let mut req = handle.address().get();
    if let Some(i) = index {
        req = req.set_link_index_filter(i);
    }
    let msgs: Vec<AddressMessage> = req.execute().try_collect().await.map_err(kernel_err("observe", "addresses"))?;
    let mut out = Vec::new();
    for m in msgs {
        let addr = m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        });
        let addr = addr.or_else(|| {
            m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })
        });
        if let Some(addr) = addr {
            if let Ok(net) = IpNet::new(addr, m.header.prefix_len) {
                out.push((m.header.index, net, m.header.scope));
            }
        }
    }
    Ok(out)
}

fn address_message(index: u32, addr: IpNet) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = if addr.addr().is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    m.header.prefix_len = addr.prefix_len();
    m.header.index = index;
    m.attributes.push(AddressAttribute::Local(addr.addr()));
    m.attributes.push(AddressAttribute::Address(addr.addr()));
    m
}

/// A VXLAN device's parameters, from its link info (`names`: link names by
/// index, for the underlay device).
pub(super) fn vxlan_state(infos: &[InfoVxlan], names: &BTreeMap<u32, String>) -> VxlanState {
    let mut s = VxlanState { vni: 0, local: None, port: 0, underlay: None, learning: true };
    for i in infos {
        match i {
            InfoVxlan::Id(v) => s.vni = *v,
            InfoVxlan::Local(v4) => s.local = Some(IpAddr::V4(*v4)),
            InfoVxlan::Local6(v6) => s.local = Some(IpAddr::V6(*v6)),
            InfoVxlan::Port(p) => s.port = *p,
            InfoVxlan::Link(l) => s.underlay = names.get(l).cloned(),
            InfoVxlan::Learning(l) => s.learning = *l,
            _ => {}
        }
    }
    s
}

/// The interface that holds the address `ip`, and its MTU.
pub(super) async fn link_with_address(h: &Handle, ip: IpAddr) -> Result<Option<(String, u32)>, DataplaneError> {
    let Some(index) = addresses(h).await?.into_iter().find(|(_, a, _)| a.addr() == ip).map(|(i, _, _)| i) else {
        return Ok(None);
    };
    Ok(links(h).await?.into_iter().find(|l| l.index == index).map(|l| (l.name, l.mtu)))
}

/// Carries out a link, address or parameter action: `SysctlWrite`,
/// `BridgePortIsolate`, `LinkAddBridge`, `LinkAddVxlan`, `VethAdd`,
/// `LinkSetUp`, `LinkSetMtu`, `LinkDelete`, `AddressInstall`,
/// `AddressUninstall` and `ContainerIfaceConfigure`.
pub(super) async fn apply(h: &Handle, action: &KernelOp) -> Result<(), DataplaneError> {
    let op = action.op();
    match action {
        KernelOp::SysctlWrite { key, value } => sysctl_write(op, key, value),
        KernelOp::BridgePortIsolate { name } => {
            let index = need_index(h, op, name).await?;
            bridge_port_isolate(h, index).await.map_err(kernel_err(op, name))
        }
        KernelOp::LinkAddBridge { name, mac, mtu } => {
            link_add(h, op, name, bridge_message(name, *mac, *mtu)).await?;
            link_set(h, op, name, |l| l.alias(LINK_MARK.to_string())).await
        }
        KernelOp::LinkAddVxlan { name, vni, local, underlay, port, mac, mtu } => {
            let dev = need_index(h, op, underlay).await?;
            link_add(h, op, name, vxlan_message(name, *vni, *local, dev, *port, *mac, *mtu)).await?;
            link_set(h, op, name, |l| l.alias(LINK_MARK.to_string())).await
        }
        KernelOp::VethAdd { name, bridge, mtu, netns, peer_ifname, peer_mac } => {
            veth_add(h, op, name, bridge, *mtu, netns, (peer_ifname.as_str(), *peer_mac)).await
        }
        KernelOp::LinkSetUp { name } => link_set(h, op, name, |l| l.up()).await,
        KernelOp::LinkSetAlias { name, alias } => link_set(h, op, name, |l| l.alias(alias.clone())).await,
        KernelOp::LinkSetMtu { name, mtu } => link_set(h, op, name, |l| l.mtu(*mtu)).await,
        KernelOp::LinkDelete { name } => {
            let index = need_index(h, op, name).await?;
            h.link().del(index).execute().await.map_err(kernel_err(op, name))
        }
        KernelOp::AddressInstall(a) => address_install(h, op, a).await,
        KernelOp::AddressUninstall(a) => {
            let index = need_index(h, op, &a.dev).await?;
            h.address().del(address_message(index, a.addr)).execute().await.map_err(kernel_err(op, a.addr.to_string()))
        }
        KernelOp::ContainerIfaceConfigure {
            host_veth,
            endpoint,
            netns,
            ifname,
            mac,
            addrs,
            gateways,
            mtu,
            dhcp,
            own_table,
            service,
        } => {
            let host_index = need_index(h, op, host_veth).await?;
            let (ifname, mac, addrs, gateways, mtu, dhcp) = (ifname.clone(), *mac, addrs.clone(), gateways.clone(), *mtu, *dhcp);
            let (own_table, service) = (own_table.clone(), *service);
            in_netns(netns, move |handle| async move {
                let config = (!dhcp).then_some((&addrs[..], &gateways[..]));
                configure_container_iface(&handle, &ifname, mac, config, mtu).await?;
                if let Some(t) = own_table.as_ref().filter(|_| !dhcp) {
                    own_table_routes(&handle, &ifname, &addrs, &gateways, t).await?;
                }
                // The thread is in the container's namespace: `/proc/sys/net`
                // is the namespace's.
                if service {
                    for (key, value) in service_sysctls(&ifname) {
                        sysctl_write(op, &key, value)?;
                    }
                }
                Ok(())
            })
            .await?;
            // Last: the mark that the endpoint is complete.
            let alias = LinkUnspec::new_with_index(host_index).alias(veth_mark(*endpoint)).build();
            h.link().set(alias).execute().await.map_err(kernel_err(op, host_veth.clone()))
        }
        other => unreachable!("{} is not a link action", other.op()),
    }
}

/// `sysctl -w KEY=VALUE`: a write to `/proc/sys/KEY`, in the calling
/// thread's network namespace.
fn sysctl_write(op: &'static str, key: &SysctlKey, value: &str) -> Result<(), DataplaneError> {
    std::fs::write(Path::new("/proc/sys").join(&key.0), value).map_err(|source| DataplaneError::Kernel {
        op,
        object: key.dotted(),
        source,
    })
}

/// `ip link add ...` of the link `msg` describes.
async fn link_add(h: &Handle, op: &'static str, name: &str, msg: LinkMessage) -> Result<(), DataplaneError> {
    h.link().add(msg).execute().await.map_err(kernel_err(op, name))
}

/// `ip link set NAME ...`, with what `change` sets.
async fn link_set(
    h: &Handle,
    op: &'static str,
    name: &str,
    change: impl FnOnce(LinkMessageBuilder<LinkUnspec>) -> LinkMessageBuilder<LinkUnspec>,
) -> Result<(), DataplaneError> {
    let index = need_index(h, op, name).await?;
    h.link().set(change(LinkUnspec::new_with_index(index)).build()).execute().await.map_err(kernel_err(op, name))
}

/// `ip link add NAME address MAC mtu MTU up type bridge mcast_snooping 0`
fn bridge_message(name: &str, mac: MacAddr, mtu: u32) -> LinkMessage {
    LinkBridge::new(name).mcast_snooping(false).mtu(mtu).address(mac.0.to_vec()).up().build()
}

/// `ip link add NAME address MAC mtu MTU up type vxlan id VNI local LOCAL
/// dev DEV dstport PORT nolearning noudpcsum`: over IPv4 without UDP
/// checksums, as RFC 7348 recommends (the inner packet carries its own, and
/// the fast path's program on the receiving host's underlay decapsulates
/// only datagrams without one; IPv6 requires them).
fn vxlan_message(name: &str, vni: Vni, local: IpAddr, dev: u32, port: u16, mac: MacAddr, mtu: u32) -> LinkMessage {
    let b = LinkVxlan::new(name, vni.get()).dev(dev).port(port).learning(false);
    let b = match local {
        IpAddr::V4(v4) => b.local(v4).udp_csum(false),
        IpAddr::V6(v6) => b.local6(v6),
    };
    b.mtu(mtu).address(mac.0.to_vec()).up().build()
}

/// `ip link add NAME mtu MTU master BRIDGE up type veth peer name IFNAME
/// address MAC mtu MTU netns NETNS; ip link set NAME type bridge_slave
/// isolated on`, where `peer` is the container side's name and MAC.
async fn veth_add(
    h: &Handle,
    op: &'static str,
    name: &str,
    bridge: &str,
    mtu: u32,
    netns: &Path,
    (peer_ifname, peer_mac): (&str, MacAddr),
) -> Result<(), DataplaneError> {
    let master = need_index(h, op, bridge).await?;
    let ns = File::open(netns).map_err(|source| DataplaneError::Netns { path: netns.to_path_buf(), source })?;
    let peer = LinkUnspec::new_with_name(peer_ifname).address(peer_mac.0.to_vec()).mtu(mtu).setns_by_fd(ns.as_raw_fd()).build();
    let msg = LinkVeth::new(name, peer_ifname)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .mtu(mtu)
        .controller(master)
        .up()
        .build();
    let result = h.link().add(msg).execute().await.map_err(kernel_err(op, name));
    drop(ns);
    result?;
    // Isolated, and marked Tessera's, in one request.
    let index = need_index(h, op, name).await?;
    let mut port = LinkBridgePort::new(index).append_info_data(InfoBridgePort::Isolated(true)).build();
    port.attributes.push(LinkAttribute::IfAlias(LINK_MARK.to_string()));
    h.link().change(port).execute().await.map_err(kernel_err(op, name))
}

/// `ip link set dev INDEX type bridge_slave isolated on`
async fn bridge_port_isolate(h: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    h.link().change(LinkBridgePort::new(index).append_info_data(InfoBridgePort::Isolated(true)).build()).execute().await
}

/// `ip addr replace ADDR dev DEV`, or `ip -6 addr replace ADDR dev DEV nodad
/// noprefixroute`.
async fn address_install(h: &Handle, op: &'static str, a: &AddressEntry) -> Result<(), DataplaneError> {
    let index = need_index(h, op, &a.dev).await?;
    let mut req = h.address().add(index, a.addr.addr(), a.addr.prefix_len()).replace();
    if a.addr.addr().is_ipv6() {
        req.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad | AddressFlags::Noprefixroute));
    }
    req.execute().await.map_err(kernel_err(op, a.addr.to_string()))
}

/// Inside a container's namespace, for an interface with a table of its
/// own (dockwall's scheme): its subnets and default route in that table
/// (the default route in the main table removed), and what arrives on it
/// routed by the other such interfaces' tables.
async fn own_table_routes(
    handle: &Handle,
    ifname: &str,
    addrs: &[IpNet],
    gateways: &[IpAddr],
    t: &crate::op::OwnTable,
) -> Result<(), DataplaneError> {
    const OP: &str = "ContainerIfaceConfigure";
    let index = link_index(handle, ifname).await?.ok_or_else(|| errno_err(OP, ifname, ENODEV))?;
    let err =
        |what: String| move |e: String| DataplaneError::Kernel { op: OP, object: what.clone(), source: io::Error::other(e) };
    for a in addrs {
        let net = a.trunc();
        let msg = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(net.addr(), net.prefix_len())
            .map_err(|e| err(net.to_string())(e.to_string()))?
            .output_interface(index)
            .scope(if net.addr().is_ipv4() { RouteScope::Link } else { RouteScope::Universe })
            .table_id(t.table)
            .build();
        handle.route().add(msg).replace().execute().await.map_err(kernel_err(OP, format!("{net} table {}", t.table)))?;
    }
    for gw in gateways {
        let any =
            if gw.is_ipv4() { IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED) } else { IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED) };
        let route = |table: Option<u32>| -> Result<RouteMessage, DataplaneError> {
            let b = RouteMessageBuilder::<IpAddr>::new()
                .destination_prefix(any, 0)
                .and_then(|b| b.gateway(*gw))
                .map_err(|e| err(gw.to_string())(e.to_string()))?
                .output_interface(index);
            Ok(match table {
                Some(t) => b.table_id(t).build(),
                None => b.build(),
            })
        };
        handle
            .route()
            .add(route(Some(t.table))?)
            .replace()
            .execute()
            .await
            .map_err(kernel_err(OP, format!("default via {gw} table {}", t.table)))?;
        // The main table's default stays the other interfaces' (dockwall's management).
        let _ = handle.route().del(route(None)?).execute().await;
        for peer in &t.peers {
            let req = handle
                .rule()
                .add()
                .input_interface(ifname.to_string())
                .table_id(*peer)
                .action(RuleAction::ToTable)
                .priority(32000);
            let done = if gw.is_ipv4() { req.v4().execute().await } else { req.v6().execute().await };
            match done.map_err(kernel_err(OP, format!("iif {ifname} lookup {peer}"))) {
                Err(e) if e.errno() == Some(super::common::EEXIST) => {}
                other => other?,
            }
        }
    }
    Ok(())
}

/// Inside a container's namespace: the interface's MAC, MTU, addresses,
/// state and default routes.
async fn configure_container_iface(
    handle: &Handle,
    ifname: &str,
    mac: MacAddr,
    config: Option<(&[IpNet], &[IpAddr])>,
    mtu: u32,
) -> Result<(), DataplaneError> {
    const OP: &str = "ContainerIfaceConfigure";
    let index = link_index(handle, ifname).await?.ok_or_else(|| errno_err(OP, ifname, ENODEV))?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).address(mac.0.to_vec()).mtu(mtu).up().build())
        .execute()
        .await
        .map_err(kernel_err(OP, ifname))?;
    // By DHCP, the container's client configures the rest.
    let Some((addrs, gateways)) = config else { return Ok(()) };
    let want: BTreeSet<IpNet> = addrs.iter().copied().collect();
    for (_, have, scope) in address_dump(handle, Some(index)).await? {
        if scope == AddressScope::Universe && !want.contains(&have) {
            handle.address().del(address_message(index, have)).execute().await.map_err(kernel_err(OP, have.to_string()))?;
        }
    }
    for a in addrs {
        let mut req = handle.address().add(index, a.addr(), a.prefix_len()).replace();
        if a.addr().is_ipv6() {
            req.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute().await.map_err(kernel_err(OP, a.to_string()))?;
    }
    for gw in gateways {
        let any =
            if gw.is_ipv4() { IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED) } else { IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED) };
        let msg = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(any, 0)
            .and_then(|b| b.gateway(*gw))
            .map_err(|e| DataplaneError::Kernel { op: OP, object: gw.to_string(), source: io::Error::other(e.to_string()) })?
            .output_interface(index)
            .build();
        handle.route().add(msg).replace().execute().await.map_err(kernel_err(OP, format!("default via {gw}")))?;
    }
    Ok(())
}
