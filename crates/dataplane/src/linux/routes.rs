//! The routes of the VRF tables and the `ip rule`s that select them: the
//! messages that install and remove them, and reading them from a dump
//! (only what Tessera owns).

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;

use ipnet::IpNet;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteScope, RouteType, RouteVia,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, RouteMessageBuilder};

use super::common::{kernel_err, need_index, EEXIST};
use crate::error::DataplaneError;
use crate::names::{
    is_steer_table, MAIN_TABLE, PUBLISHED_MARK, PUBLISHED_PRIORITY, STEER_MARK, STEER_MASK, STEER_PRIORITY, UNVERIFIED_PRIORITY,
    VERIFIED_MARK, VRF_UNREACHABLE_METRIC,
};
use crate::observed::{owned_rule, owned_table, table_of_link, IpFamily, RouteEntry, RouteTarget, RuleEntry, RuleSelector};
use crate::op::KernelOp;

/// Carries out a route or rule action: `RuleInstall`, `RuleUninstall`,
/// `RouteInstall` and `RouteUninstall`.
pub(super) async fn apply(h: &Handle, action: &KernelOp) -> Result<(), DataplaneError> {
    let op = action.op();
    match action {
        KernelOp::RuleInstall(r) => match rule_install(h, r).await.map_err(kernel_err(op, action.to_string())) {
            Err(e) if e.errno() == Some(EEXIST) => Ok(()),
            other => other,
        },
        KernelOp::RuleUninstall(r) => h.rule().del(rule_message(r)).execute().await.map_err(kernel_err(op, action.to_string())),
        KernelOp::RouteInstall(r) => {
            let msg = route_message(h, op, r, false).await?;
            h.route().add(msg).replace().execute().await.map_err(kernel_err(op, action.to_string()))
        }
        KernelOp::RouteUninstall(r) => {
            let msg = route_message(h, op, r, true).await?;
            h.route().del(msg).execute().await.map_err(kernel_err(op, action.to_string()))
        }
        other => unreachable!("{} is not a route or rule action", other.op()),
    }
}

/// `ip [-6] rule add iif IIF|fwmark MARK[/MASK] lookup TABLE pref PRIORITY`
async fn rule_install(h: &Handle, r: &RuleEntry) -> Result<(), rtnetlink::Error> {
    let req = h.rule().add().priority(r.priority);
    let mut req = match &r.selector {
        RuleSelector::Iif(name) | RuleSelector::Uplink(name) => {
            req.table_id(r.table).action(RuleAction::ToTable).input_interface(name.clone())
        }
        RuleSelector::IifVerified(name) => {
            req.table_id(r.table).action(RuleAction::ToTable).input_interface(name.clone()).fw_mark(VERIFIED_MARK)
        }
        RuleSelector::IifUnverified(name) => req.action(RuleAction::Blackhole).input_interface(name.clone()),
        RuleSelector::FwMark(mark) => req.table_id(r.table).action(RuleAction::ToTable).fw_mark(*mark),
        RuleSelector::PublishedReply => req.table_id(r.table).action(RuleAction::ToTable).fw_mark(PUBLISHED_MARK),
        RuleSelector::Steer(mark) => req.table_id(r.table).action(RuleAction::ToTable).fw_mark(*mark),
    };
    let mask = match r.selector {
        RuleSelector::IifVerified(_) => Some(VERIFIED_MARK),
        RuleSelector::PublishedReply => Some(PUBLISHED_MARK),
        RuleSelector::Steer(_) => Some(STEER_MASK),
        _ => None,
    };
    if let Some(mask) = mask {
        req.message_mut().attributes.push(RuleAttribute::FwMask(mask));
    }
    match r.family {
        IpFamily::V4 => req.v4().execute().await,
        IpFamily::V6 => req.v6().execute().await,
    }
}

/// The message of `ip [-6] rule del iif IIF|fwmark MARK lookup TABLE pref
/// PRIORITY`.
fn rule_message(r: &RuleEntry) -> RuleMessage {
    let mut m = RuleMessage::default();
    m.header.family = match r.family {
        IpFamily::V4 => AddressFamily::Inet,
        IpFamily::V6 => AddressFamily::Inet6,
    };
    m.header.action = RuleAction::ToTable;
    match &r.selector {
        RuleSelector::Iif(name) | RuleSelector::Uplink(name) => m.attributes.push(RuleAttribute::Iifname(name.clone())),
        RuleSelector::IifVerified(name) => {
            m.attributes.push(RuleAttribute::Iifname(name.clone()));
            m.attributes.push(RuleAttribute::FwMark(VERIFIED_MARK));
            m.attributes.push(RuleAttribute::FwMask(VERIFIED_MARK));
        }
        RuleSelector::IifUnverified(name) => {
            m.header.action = RuleAction::Blackhole;
            m.attributes.push(RuleAttribute::Iifname(name.clone()));
        }
        RuleSelector::FwMark(mark) => m.attributes.push(RuleAttribute::FwMark(*mark)),
        RuleSelector::PublishedReply => {
            m.attributes.push(RuleAttribute::FwMark(PUBLISHED_MARK));
            m.attributes.push(RuleAttribute::FwMask(PUBLISHED_MARK));
        }
        RuleSelector::Steer(mark) => {
            m.attributes.push(RuleAttribute::FwMark(*mark));
            m.attributes.push(RuleAttribute::FwMask(STEER_MASK));
        }
    }
    if !matches!(r.selector, RuleSelector::IifUnverified(_)) {
        m.attributes.push(RuleAttribute::Table(r.table));
    }
    m.attributes.push(RuleAttribute::Priority(r.priority));
    m
}

/// The message of `ip [-6] route replace DST dev DEV [scope link] table
/// TABLE` or `ip [-6] route replace unreachable DST metric 4278198272 table
/// TABLE`; for a delete, protocol and scope are left open.
async fn route_message(h: &Handle, op: &'static str, r: &RouteEntry, for_delete: bool) -> Result<RouteMessage, DataplaneError> {
    let b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(r.dst.addr(), r.dst.prefix_len())
        .map_err(|e| DataplaneError::Kernel { op, object: r.dst.to_string(), source: io::Error::other(e.to_string()) })?
        .table_id(r.table);
    let b = match &r.target {
        RouteTarget::Dev(dev) => {
            let index = need_index(h, op, dev).await?;
            let scope = if r.dst.addr().is_ipv4() { RouteScope::Link } else { RouteScope::Universe };
            b.output_interface(index).scope(scope)
        }
        RouteTarget::Unreachable => b.kind(RouteType::Unreachable).priority(VRF_UNREACHABLE_METRIC),
        RouteTarget::Via { dev, gateway } => {
            let index = need_index(h, op, dev).await?;
            let mut msg = b.output_interface(index).build();
            match (r.dst.addr().is_ipv4(), gateway) {
                // An IPv6 next hop of an IPv4 route: RTA_VIA.
                (true, IpAddr::V6(g)) => msg.attributes.push(RouteAttribute::Via(RouteVia::Inet6(*g))),
                (_, g) => {
                    msg.attributes.push(RouteAttribute::Gateway(match g {
                        IpAddr::V4(v4) => RouteAddress::Inet(*v4),
                        IpAddr::V6(v6) => RouteAddress::Inet6(*v6),
                    }));
                    if !matches!(g, IpAddr::V6(v6) if v6.is_unicast_link_local()) {
                        msg.header.flags |= RouteFlags::Onlink;
                    }
                }
            }
            if for_delete {
                msg.header.protocol = RouteProtocol::Unspec;
                msg.header.scope = RouteScope::NoWhere;
            }
            return Ok(msg);
        }
    };
    let b = if for_delete { b.protocol(RouteProtocol::Unspec).scope(RouteScope::NoWhere) } else { b };
    Ok(b.build())
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// A rule of a dump, when it is one of Tessera's.
pub(super) fn rule_entry(m: &RuleMessage) -> Option<RuleEntry> {
    let mut iif = None;
    let mut fwmark = None;
    let mut fwmask = None;
    let mut table = u32::from(m.header.table);
    let mut priority = 0;
    for a in &m.attributes {
        match a {
            RuleAttribute::Iifname(n) => iif = Some(n.clone()),
            RuleAttribute::FwMark(mark) => fwmark = Some(*mark),
            RuleAttribute::FwMask(mask) => fwmask = Some(*mask),
            RuleAttribute::Table(t) => table = *t,
            RuleAttribute::Priority(p) => priority = *p,
            _ => {}
        }
    }
    let family = match m.header.family {
        AddressFamily::Inet => IpFamily::V4,
        AddressFamily::Inet6 => IpFamily::V6,
        _ => return None,
    };
    if m.header.action == RuleAction::Blackhole {
        // `iif tb<v>|tx<v> blackhole` right after the network's rules.
        let name = iif.filter(|_| priority == UNVERIFIED_PRIORITY && fwmark.is_none())?;
        let table = table_of_link(&name)?;
        return Some(RuleEntry { family, selector: RuleSelector::IifUnverified(name), table, priority });
    }
    if priority == PUBLISHED_PRIORITY {
        let ours = m.header.action == RuleAction::ToTable
            && iif.is_none()
            && table == MAIN_TABLE
            && fwmark == Some(PUBLISHED_MARK)
            && fwmask == Some(PUBLISHED_MARK);
        return ours.then_some(RuleEntry { family, selector: RuleSelector::PublishedReply, table, priority });
    }
    if priority == STEER_PRIORITY {
        // `fwmark STEER|i/STEER_MASK lookup STEER_TABLE_BASE+j`.
        let mark = fwmark.filter(|m| m & STEER_MARK != 0 && m & !STEER_MASK == 0)?;
        let ours = m.header.action == RuleAction::ToTable && iif.is_none() && fwmask == Some(STEER_MASK) && is_steer_table(table);
        return ours.then_some(RuleEntry { family, selector: RuleSelector::Steer(mark), table, priority });
    }
    let verified = fwmark == Some(VERIFIED_MARK) && fwmask == Some(VERIFIED_MARK);
    let mark_for_owner = if verified { None } else { fwmark };
    if m.header.action != RuleAction::ToTable || !owned_rule(iif.as_deref(), mark_for_owner, priority, table) {
        return None;
    }
    let selector = match (iif, fwmark) {
        (Some(name), None) if priority == crate::names::UPLINK_PRIORITY => RuleSelector::Uplink(name),
        (Some(name), _) if verified => RuleSelector::IifVerified(name),
        (Some(name), None) => RuleSelector::Iif(name),
        (None, Some(mark)) => RuleSelector::FwMark(mark),
        _ => return None,
    };
    Some(RuleEntry { family, selector, table, priority })
}

/// A route of a dump, when it is in one of Tessera's tables and of a kind
/// Tessera makes (`names`: link names by index).
pub(super) fn route_entry(m: &RouteMessage, names: &BTreeMap<u32, String>) -> Option<RouteEntry> {
    if m.header.flags.contains(RouteFlags::Cloned) {
        return None;
    }
    let mut table = u32::from(m.header.table);
    let mut dst = None;
    let mut oif = None;
    let mut gateway = None;
    let mut multipath = false;
    for a in &m.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(d) => dst = route_addr(d),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Gateway(g) => gateway = route_addr(g),
            RouteAttribute::Via(RouteVia::Inet6(g)) => gateway = Some(IpAddr::V6(*g)),
            RouteAttribute::Via(RouteVia::Inet(g)) => gateway = Some(IpAddr::V4(*g)),
            RouteAttribute::Via(_) | RouteAttribute::MultiPath(_) => multipath = true,
            _ => {}
        }
    }
    if !owned_table(table) {
        return None;
    }
    let any = match m.header.address_family {
        AddressFamily::Inet => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let dst = IpNet::new(dst.unwrap_or(any), m.header.destination_prefix_length).ok()?;
    let target = match m.header.kind {
        RouteType::Unreachable => RouteTarget::Unreachable,
        RouteType::Unicast if multipath => return None,
        RouteType::Unicast => match gateway {
            None => RouteTarget::Dev(names.get(&oif?)?.clone()),
            Some(gateway) => RouteTarget::Via { dev: names.get(&oif?)?.clone(), gateway },
        },
        // Not something Tessera makes: left alone.
        _ => return None,
    };
    Some(RouteEntry { table, dst, target })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(selector: RuleSelector, table: u32, priority: u32) -> RuleEntry {
        RuleEntry { family: IpFamily::V4, selector, table, priority }
    }

    #[test]
    fn rules_read_back_as_they_were_written() {
        let vrf = crate::names::TABLE_BASE + 100;
        for e in [
            entry(RuleSelector::IifVerified("tb100".into()), vrf, crate::names::RULE_PRIORITY),
            entry(RuleSelector::FwMark(vrf), vrf, crate::names::RULE_PRIORITY),
            entry(RuleSelector::PublishedReply, MAIN_TABLE, PUBLISHED_PRIORITY),
            entry(RuleSelector::Steer(crate::names::steer_mark(7)), crate::names::steer_table(7), STEER_PRIORITY),
        ] {
            assert_eq!(rule_entry(&rule_message(&e)), Some(e.clone()), "{}", e.selector);
        }
    }

    #[test]
    fn only_steering_rules_of_our_mask_and_tables_are_ours() {
        let steer = |mark: u32, table: u32| rule_message(&entry(RuleSelector::Steer(mark), table, STEER_PRIORITY));
        assert!(rule_entry(&steer(crate::names::steer_mark(1), crate::names::TABLE_BASE + 1)).is_none(), "a VRF table");
        assert!(rule_entry(&steer(0x1234, crate::names::steer_table(1))).is_none(), "no steering bit");
        let mut other_mask = steer(crate::names::steer_mark(1), crate::names::steer_table(1));
        other_mask.attributes.retain(|a| !matches!(a, RuleAttribute::FwMask(_)));
        assert!(rule_entry(&other_mask).is_none(), "someone else's rule");
    }
}
