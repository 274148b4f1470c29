//! Neighbour entries: the permanent neighbours (remote endpoints' VTEP MACs)
//! and FDB entries (remote hosts' underlay addresses) of the VXLAN devices,
//! and the proxy neighbour entries of the bridges; the messages that install
//! and remove them, and reading them from a dump.

use std::net::IpAddr;

use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::Handle;
use tessera_model::MacAddr;

use super::common::{kernel_err, mac_of, need_index};
use crate::error::DataplaneError;
use crate::observed::{FdbEntry, NeighEntry, ProxyNeighEntry};
use crate::op::KernelOp;

/// Carries out a neighbour action: `NeighInstall`, `NeighUninstall`,
/// `FdbInstall`, `FdbUninstall`, `ProxyNeighInstall` and
/// `ProxyNeighUninstall`.
pub(super) async fn apply(h: &Handle, action: &KernelOp) -> Result<(), DataplaneError> {
    let op = action.op();
    let object = action.to_string();
    match action {
        KernelOp::NeighInstall(n) => neigh_install(h, op, n, object).await,
        KernelOp::NeighUninstall(n) => {
            let index = need_index(h, op, &n.dev).await?;
            h.neighbours()
                .del(neigh_message(index, n.ip, NeighbourFlags::empty()))
                .execute()
                .await
                .map_err(kernel_err(op, object))
        }
        KernelOp::FdbInstall(f) => fdb_install(h, op, f, object).await,
        KernelOp::FdbUninstall(f) => {
            let index = need_index(h, op, &f.dev).await?;
            h.neighbours().del(fdb_message(index, f)).execute().await.map_err(kernel_err(op, object))
        }
        KernelOp::ProxyNeighInstall(p) => proxy_neigh_install(h, op, p, object).await,
        KernelOp::ProxyNeighUninstall(p) => {
            let index = need_index(h, op, &p.dev).await?;
            h.neighbours().del(neigh_message(index, p.ip, NeighbourFlags::Proxy)).execute().await.map_err(kernel_err(op, object))
        }
        other => unreachable!("{} is not a neighbour action", other.op()),
    }
}

/// `ip neigh replace IP lladdr MAC dev DEV nud permanent`
async fn neigh_install(h: &Handle, op: &'static str, n: &NeighEntry, object: String) -> Result<(), DataplaneError> {
    let index = need_index(h, op, &n.dev).await?;
    h.neighbours()
        .add(index, n.ip)
        .link_layer_address(&n.mac.0)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(kernel_err(op, object))
}

/// `bridge fdb replace MAC dev DEV dst DST self permanent`
async fn fdb_install(h: &Handle, op: &'static str, f: &FdbEntry, object: String) -> Result<(), DataplaneError> {
    let index = need_index(h, op, &f.dev).await?;
    h.neighbours()
        .add_bridge(index, &f.mac.0)
        .destination(f.dst)
        .flags(NeighbourFlags::Own)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(kernel_err(op, object))
}

/// `ip -6 neigh add proxy IP dev DEV`
async fn proxy_neigh_install(h: &Handle, op: &'static str, p: &ProxyNeighEntry, object: String) -> Result<(), DataplaneError> {
    let index = need_index(h, op, &p.dev).await?;
    h.neighbours()
        .add(index, p.ip)
        .flags(NeighbourFlags::Proxy)
        .state(NeighbourState::Permanent)
        .execute()
        .await
        .map_err(kernel_err(op, object))
}

/// The message of `bridge fdb del MAC dev DEV dst DST self`.
fn fdb_message(index: u32, f: &FdbEntry) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = index;
    msg.header.flags = NeighbourFlags::Own;
    msg.attributes.push(NeighbourAttribute::LinkLayerAddress(f.mac.0.to_vec()));
    msg.attributes.push(NeighbourAttribute::Destination(ip_to_neigh(f.dst)));
    msg
}

/// The message of `ip neigh del IP dev DEV` (`proxy` with
/// [`NeighbourFlags::Proxy`]).
fn neigh_message(index: u32, ip: IpAddr, flags: NeighbourFlags) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = if ip.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    m.header.ifindex = index;
    m.header.flags = flags;
    m.attributes.push(NeighbourAttribute::Destination(ip_to_neigh(ip)));
    m
}

fn ip_to_neigh(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    }
}

fn neigh_addr(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        NeighbourAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        // FDB entries (AF_BRIDGE) carry the remote's address undecoded.
        NeighbourAddress::Other(bytes) => match bytes.len() {
            4 => <[u8; 4]>::try_from(bytes.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(bytes.as_slice()).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    }
}

/// The address and link-layer address of a neighbour or FDB entry of a dump.
pub(super) fn neigh_ip_mac(n: &NeighbourMessage) -> (Option<IpAddr>, Option<MacAddr>) {
    let mut ip = None;
    let mut mac = None;
    for a in &n.attributes {
        match a {
            NeighbourAttribute::Destination(d) => ip = neigh_addr(d),
            NeighbourAttribute::LinkLayerAddress(l) => mac = mac_of(l),
            _ => {}
        }
    }
    (ip, mac)
}
