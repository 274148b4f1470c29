//! The DHCPv4 server's decisions (pure): what a network's ports may lease
//! (from this host's desired data plane: each local endpoint's own address,
//! by its MAC) and the answer to one client message, built with
//! `dhcproto`.
//!
//! Only an endpoint's own MAC gets its address, and only the address the
//! controller allocated: a request for any other is refused (NAK), a
//! client Tessera does not know is ignored. The answer carries the
//! network's gateway, DNS servers, the overlay MTU and, as classless static
//! routes, the default route and the routes to the networks this one
//! imports.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode};
use ipnet::Ipv4Net;
use tessera_dataplane::desired::{bridge_name, DesiredHost};
use tessera_model::MacAddr;

/// How long a lease lasts (the client renews at half of it).
pub const LEASE_SECS: u32 = 3600;

/// What one port of a network may lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub mtu: u16,
    /// Routes besides the default: the networks this one imports.
    pub routes: Vec<Ipv4Net>,
    pub domain: Option<String>,
}

/// The leases of one network on this host: its bridge, the server address
/// (its IPv4 gateway), and a lease per local endpoint's MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkLeases {
    pub bridge: String,
    pub server: Ipv4Addr,
    pub leases: BTreeMap<MacAddr, Lease>,
}

/// The leases of every network of `desired` that has local endpoints and
/// an IPv4 subnet with a gateway.
pub fn leases(desired: &DesiredHost) -> Vec<NetworkLeases> {
    let mtu = desired.overlay_mtu().min(u32::from(u16::MAX)) as u16;
    let mut out = Vec::new();
    for net in desired.networks.iter().filter(|n| !n.local.is_empty()) {
        let v4 = |a: &IpAddr| match a {
            IpAddr::V4(v) => Some(*v),
            IpAddr::V6(_) => None,
        };
        let Some(server) = net.subnets.iter().filter_map(|s| s.gateway.as_ref().and_then(v4)).next() else { continue };
        let routes: Vec<Ipv4Net> = net
            .imports
            .iter()
            .filter_map(|v| desired.networks.iter().find(|n| n.vni == *v))
            .flat_map(|n| &n.subnets)
            .filter_map(|s| match s.cidr {
                ipnet::IpNet::V4(c) => Some(c.trunc()),
                ipnet::IpNet::V6(_) => None,
            })
            .collect();
        let mut leases = BTreeMap::new();
        for ep in &net.local {
            let Some(ip) = ep.ips.iter().find_map(|n| match n {
                ipnet::IpNet::V4(v) => Some(*v),
                ipnet::IpNet::V6(_) => None,
            }) else {
                continue;
            };
            let subnet = net.subnets.iter().find(|s| s.cidr.contains(&IpAddr::V4(ip.addr())));
            let gateway = subnet.and_then(|s| s.gateway.as_ref().and_then(v4));
            let dns = subnet.map(|s| s.dns.iter().filter_map(v4).collect()).unwrap_or_default();
            leases.insert(
                ep.mac,
                Lease {
                    address: ip.addr(),
                    prefix: ip.prefix_len(),
                    gateway,
                    dns,
                    mtu,
                    routes: routes.clone(),
                    domain: net.domain.clone(),
                },
            );
        }
        out.push(NetworkLeases { bridge: bridge_name(net.vni), server, leases });
    }
    out
}

/// What to do with one client message.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Send this reply (broadcast to the client's port).
    Reply(Box<Message>),
    /// Say nothing, for this reason (counted).
    Ignore(&'static str),
}

/// The answer to `req` from the server `server` of a network with `leases`.
pub fn answer(req: &Message, server: Ipv4Addr, leases: &BTreeMap<MacAddr, Lease>) -> Answer {
    if req.opcode() != Opcode::BootRequest || req.chaddr().len() < 6 {
        return Answer::Ignore("not a client request");
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&req.chaddr()[..6]);
    let Some(lease) = leases.get(&MacAddr(mac)) else { return Answer::Ignore("unknown client") };
    let ours = |o: &DhcpOption| matches!(o, DhcpOption::ServerIdentifier(s) if *s == server);
    let chosen_other = req.opts().get(dhcproto::v4::OptionCode::ServerIdentifier).is_some_and(|o| !ours(o));
    let asked = match req.opts().get(dhcproto::v4::OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(a)) => Some(*a),
        _ => None,
    }
    .or_else(|| (!req.ciaddr().is_unspecified()).then_some(req.ciaddr()));
    let kind = match req.opts().msg_type() {
        Some(MessageType::Discover) => MessageType::Offer,
        Some(MessageType::Request) if chosen_other => return Answer::Ignore("the client chose another server"),
        Some(MessageType::Request) if asked.is_some_and(|a| a != lease.address) => MessageType::Nak,
        Some(MessageType::Request) => MessageType::Ack,
        Some(MessageType::Inform) => MessageType::Ack,
        Some(MessageType::Release | MessageType::Decline) => return Answer::Ignore("nothing to answer"),
        _ => return Answer::Ignore("not a message a server answers"),
    };
    let inform = req.opts().msg_type() == Some(MessageType::Inform);
    let mut reply = Message::new_with_id(req.xid(), req.ciaddr(), Ipv4Addr::UNSPECIFIED, server, req.giaddr(), &mac);
    reply.set_opcode(Opcode::BootReply).set_flags(req.flags());
    let opts = reply.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::ServerIdentifier(server));
    if kind == MessageType::Nak {
        return Answer::Reply(Box::new(reply));
    }
    if !inform {
        reply.set_yiaddr(lease.address);
        let opts = reply.opts_mut();
        opts.insert(DhcpOption::AddressLeaseTime(LEASE_SECS));
        opts.insert(DhcpOption::Renewal(LEASE_SECS / 2));
        opts.insert(DhcpOption::Rebinding(LEASE_SECS / 8 * 7));
    }
    let net = Ipv4Net::new(lease.address, lease.prefix).unwrap_or_else(|_| Ipv4Net::from(lease.address));
    let opts = reply.opts_mut();
    opts.insert(DhcpOption::SubnetMask(net.netmask()));
    opts.insert(DhcpOption::BroadcastAddr(net.broadcast()));
    opts.insert(DhcpOption::InterfaceMtu(lease.mtu));
    if !lease.dns.is_empty() {
        opts.insert(DhcpOption::DomainNameServer(lease.dns.clone()));
    }
    if let Some(d) = &lease.domain {
        opts.insert(DhcpOption::DomainName(d.clone()));
    }
    if let Some(gw) = lease.gateway {
        opts.insert(DhcpOption::Router(vec![gw]));
        // With classless routes a client ignores the router option: the
        // default route is among them.
        let mut routes: Vec<(Ipv4Net, Ipv4Addr)> = lease.routes.iter().map(|r| (*r, gw)).collect();
        routes.push((Ipv4Net::default(), gw));
        opts.insert(DhcpOption::ClasslessStaticRoute(routes));
    }
    Answer::Reply(Box::new(reply))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::v4::OptionCode;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 9];

    fn leases() -> BTreeMap<MacAddr, Lease> {
        BTreeMap::from([(
            MacAddr(MAC),
            Lease {
                address: "10.1.0.5".parse().unwrap(),
                prefix: 24,
                gateway: Some("10.1.0.1".parse().unwrap()),
                dns: vec!["10.1.0.53".parse().unwrap()],
                mtu: 1450,
                routes: vec!["10.2.0.0/24".parse().unwrap()],
                domain: Some("red.example".into()),
            },
        )])
    }

    fn request(kind: MessageType, mac: [u8; 6], extra: &[DhcpOption]) -> Message {
        let z = Ipv4Addr::UNSPECIFIED;
        let mut m = Message::new_with_id(7, z, z, z, z, &mac);
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        for o in extra {
            m.opts_mut().insert(o.clone());
        }
        m
    }

    fn reply(a: Answer) -> Message {
        match a {
            Answer::Reply(m) => *m,
            Answer::Ignore(why) => panic!("ignored: {why}"),
        }
    }

    #[test]
    fn discover_gets_an_offer_of_the_endpoint_s_own_address_with_its_configuration() {
        let server: Ipv4Addr = "10.1.0.1".parse().unwrap();
        let offer = reply(answer(&request(MessageType::Discover, MAC, &[]), server, &leases()));
        assert_eq!(offer.opcode(), Opcode::BootReply);
        assert_eq!(offer.xid(), 7);
        assert_eq!(offer.yiaddr(), "10.1.0.5".parse::<Ipv4Addr>().unwrap());
        assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
        let o = offer.opts();
        assert_eq!(o.get(OptionCode::SubnetMask), Some(&DhcpOption::SubnetMask("255.255.255.0".parse().unwrap())));
        assert_eq!(o.get(OptionCode::InterfaceMtu), Some(&DhcpOption::InterfaceMtu(1450)));
        assert_eq!(o.get(OptionCode::DomainName), Some(&DhcpOption::DomainName("red.example".into())));
        assert_eq!(o.get(OptionCode::DomainNameServer), Some(&DhcpOption::DomainNameServer(vec!["10.1.0.53".parse().unwrap()])));
        let Some(DhcpOption::ClasslessStaticRoute(routes)) = o.get(OptionCode::ClasslessStaticRoute) else { panic!("no routes") };
        assert!(routes.contains(&("10.2.0.0/24".parse().unwrap(), server)));
        assert!(routes.contains(&(Ipv4Net::default(), server)));
        // The encoding round-trips.
        use dhcproto::{Decodable, Encodable};
        let bytes = offer.to_vec().unwrap();
        assert_eq!(Message::from_bytes(&bytes).unwrap(), offer);
    }

    #[test]
    fn request_is_acked_for_its_own_address_and_refused_for_another() {
        let server: Ipv4Addr = "10.1.0.1".parse().unwrap();
        let mine = [DhcpOption::RequestedIpAddress("10.1.0.5".parse().unwrap()), DhcpOption::ServerIdentifier(server)];
        assert_eq!(
            reply(answer(&request(MessageType::Request, MAC, &mine), server, &leases())).opts().msg_type(),
            Some(MessageType::Ack)
        );
        let other = [DhcpOption::RequestedIpAddress("10.1.0.99".parse().unwrap())];
        let nak = reply(answer(&request(MessageType::Request, MAC, &other), server, &leases()));
        assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
        assert!(nak.yiaddr().is_unspecified());
        let elsewhere = [DhcpOption::ServerIdentifier("10.9.9.9".parse().unwrap())];
        assert!(matches!(answer(&request(MessageType::Request, MAC, &elsewhere), server, &leases()), Answer::Ignore(_)));
    }

    #[test]
    fn a_foreign_mac_gets_nothing() {
        let a = answer(&request(MessageType::Discover, [2, 0, 0, 0, 0, 1], &[]), "10.1.0.1".parse().unwrap(), &leases());
        assert_eq!(a, Answer::Ignore("unknown client"));
        assert!(matches!(
            answer(&request(MessageType::Release, MAC, &[]), "10.1.0.1".parse().unwrap(), &leases()),
            Answer::Ignore(_)
        ));
    }
}
