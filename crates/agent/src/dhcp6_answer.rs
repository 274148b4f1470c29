//! IPv6 for a network's clients that configure themselves (pure): router
//! advertisements (the bridge as default router, the prefix on link, the
//! MTU, the DNS servers; the managed flag, so clients ask DHCPv6 for their
//! address) and the DHCPv6 server's answers (`dhcproto`), which give an
//! endpoint's own MAC its allocated IPv6 address and nothing to anyone
//! else.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;

use dhcproto::v6::{DhcpOption, IAAddr, Message, MessageType, OptionCode, IANA};
use ipnet::Ipv6Net;
use tessera_dataplane::desired::{bridge_mac, bridge_name, DesiredHost};
use tessera_model::MacAddr;

/// How long addresses and the router last.
pub const LIFETIME_SECS: u32 = 3600;

/// What one port of a network may lease over IPv6.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease6 {
    pub address: Ipv6Addr,
}

/// The IPv6 side of one network on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network6 {
    pub bridge: String,
    pub bridge_mac: MacAddr,
    pub prefixes: Vec<Ipv6Net>,
    pub dns: Vec<Ipv6Addr>,
    pub mtu: u32,
    pub leases: BTreeMap<MacAddr, Lease6>,
}

/// The IPv6 side of every network of `desired` with local endpoints and an
/// IPv6 subnet.
pub fn networks6(desired: &DesiredHost) -> Vec<Network6> {
    let mut out = Vec::new();
    for net in desired.networks.iter().filter(|n| !n.local.is_empty()) {
        let prefixes: Vec<Ipv6Net> = net
            .subnets
            .iter()
            .filter_map(|s| match s.cidr {
                ipnet::IpNet::V6(c) => Some(c.trunc()),
                ipnet::IpNet::V4(_) => None,
            })
            .collect();
        if prefixes.is_empty() {
            continue;
        }
        let dns = net
            .subnets
            .iter()
            .flat_map(|s| &s.dns)
            .filter_map(|a| match a {
                std::net::IpAddr::V6(v) => Some(*v),
                std::net::IpAddr::V4(_) => None,
            })
            .collect();
        let leases = net
            .local
            .iter()
            .filter_map(|e| {
                let a = e.ips.iter().find_map(|n| match n {
                    ipnet::IpNet::V6(v) => Some(v.addr()),
                    ipnet::IpNet::V4(_) => None,
                })?;
                Some((e.mac, Lease6 { address: a }))
            })
            .collect();
        out.push(Network6 {
            bridge: bridge_name(net.vni),
            bridge_mac: bridge_mac(net.vni),
            prefixes,
            dns,
            mtu: desired.overlay_mtu(),
            leases,
        });
    }
    out
}

/// A router advertisement of `net` (the ICMPv6 message; the kernel adds
/// the checksum): managed and other flags set, the prefixes on link but not
/// for autoconfiguration (addresses are leased), the MTU, the bridge's MAC
/// and the DNS servers.
pub fn router_advertisement(net: &Network6) -> Vec<u8> {
    let mut m = vec![134, 0, 0, 0, 64, 0xc0];
    m.extend_from_slice(&1800u16.to_be_bytes());
    m.extend_from_slice(&[0; 8]);
    m.extend_from_slice(&[1, 1]);
    m.extend_from_slice(&net.bridge_mac.0);
    m.extend_from_slice(&[5, 1, 0, 0]);
    m.extend_from_slice(&net.mtu.to_be_bytes());
    for p in &net.prefixes {
        m.extend_from_slice(&[3, 4, p.prefix_len(), 0x80]);
        m.extend_from_slice(&LIFETIME_SECS.to_be_bytes());
        m.extend_from_slice(&LIFETIME_SECS.to_be_bytes());
        m.extend_from_slice(&[0; 4]);
        m.extend_from_slice(&p.network().octets());
    }
    if !net.dns.is_empty() {
        m.extend_from_slice(&[25, (1 + 2 * net.dns.len()) as u8, 0, 0]);
        m.extend_from_slice(&LIFETIME_SECS.to_be_bytes());
        for d in &net.dns {
            m.extend_from_slice(&d.octets());
        }
    }
    m
}

/// The DUID of the server of `net`: DUID-LL of the bridge's MAC.
pub fn server_duid(net: &Network6) -> Vec<u8> {
    let mut d = vec![0, 3, 0, 1];
    d.extend_from_slice(&net.bridge_mac.0);
    d
}

/// The MAC of a client, from its DUID (link-layer, with or without time,
/// Ethernet) or else from its EUI-64 link-local source address.
pub fn client_mac(req: &Message, source: Ipv6Addr) -> Option<MacAddr> {
    if let Some(DhcpOption::ClientId(duid)) = req.opts().get(OptionCode::ClientId) {
        let ll = match duid.get(..2) {
            Some([0, 1]) if duid.len() == 14 && duid[2..4] == [0, 1] => Some(&duid[8..14]),
            Some([0, 3]) if duid.len() == 10 && duid[2..4] == [0, 1] => Some(&duid[4..10]),
            _ => None,
        };
        if let Some(mac) = ll {
            let mut m = [0u8; 6];
            m.copy_from_slice(mac);
            return Some(MacAddr(m));
        }
    }
    let o = source.octets();
    (o[11] == 0xff && o[12] == 0xfe).then(|| MacAddr([o[8] ^ 0x02, o[9], o[10], o[13], o[14], o[15]]))
}

/// The answer to `req` (sent from link-local `source`), if any.
pub fn answer6(req: &Message, source: Ipv6Addr, net: &Network6) -> Result<Message, &'static str> {
    let ours = server_duid(net);
    if let Some(DhcpOption::ServerId(s)) = req.opts().get(OptionCode::ServerId) {
        if *s != ours {
            return Err("the client chose another server");
        }
    }
    let kind = match req.msg_type() {
        MessageType::Solicit => MessageType::Advertise,
        MessageType::Request
        | MessageType::Renew
        | MessageType::Rebind
        | MessageType::Confirm
        | MessageType::Release
        | MessageType::Decline
        | MessageType::InformationRequest => MessageType::Reply,
        _ => return Err("not a message a server answers"),
    };
    let Some(client) = req.opts().get(OptionCode::ClientId).cloned() else { return Err("no client identifier") };
    let mut reply = Message::new_with_id(kind, req.xid());
    reply.opts_mut().insert(DhcpOption::ServerId(ours));
    reply.opts_mut().insert(client);
    if !net.dns.is_empty() {
        reply.opts_mut().insert(DhcpOption::DomainNameServers(net.dns.clone()));
    }
    if matches!(req.msg_type(), MessageType::InformationRequest | MessageType::Release | MessageType::Decline) {
        return Ok(reply);
    }
    let mac = client_mac(req, source).ok_or("cannot tell the client's MAC")?;
    let lease = net.leases.get(&mac).ok_or("unknown client")?;
    let id = match req.opts().get(OptionCode::IANA) {
        Some(DhcpOption::IANA(ia)) => ia.id,
        _ => return Err("no address asked for"),
    };
    let mut ia_opts = dhcproto::v6::DhcpOptions::new();
    ia_opts.insert(DhcpOption::IAAddr(IAAddr {
        addr: lease.address,
        preferred_life: LIFETIME_SECS,
        valid_life: LIFETIME_SECS,
        opts: dhcproto::v6::DhcpOptions::new(),
    }));
    reply.opts_mut().insert(DhcpOption::IANA(IANA { id, t1: LIFETIME_SECS / 2, t2: LIFETIME_SECS / 5 * 4, opts: ia_opts }));
    if kind == MessageType::Advertise {
        reply.opts_mut().insert(DhcpOption::Preference(255));
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> Network6 {
        Network6 {
            bridge: "tb7".into(),
            bridge_mac: MacAddr([0x0e, 1, 0, 0, 7, 1]),
            prefixes: vec!["fd00:7::/64".parse().unwrap()],
            dns: vec!["fd00:7::53".parse().unwrap()],
            mtu: 1450,
            leases: BTreeMap::from([(MacAddr([2, 0, 0, 0, 0, 9]), Lease6 { address: "fd00:7::9".parse().unwrap() })]),
        }
    }

    fn solicit(duid: Vec<u8>) -> Message {
        let mut m = Message::new_with_id(MessageType::Solicit, [1, 2, 3]);
        m.opts_mut().insert(DhcpOption::ClientId(duid));
        m.opts_mut().insert(DhcpOption::IANA(IANA { id: 7, t1: 0, t2: 0, opts: dhcproto::v6::DhcpOptions::new() }));
        m
    }

    #[test]
    fn a_solicit_of_a_known_mac_gets_its_address() {
        let duid = vec![0, 1, 0, 1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 9];
        let adv = answer6(&solicit(duid), "fe80::1".parse().unwrap(), &net()).unwrap();
        assert_eq!(adv.msg_type(), MessageType::Advertise);
        let Some(DhcpOption::IANA(ia)) = adv.opts().get(OptionCode::IANA) else { panic!("no IA_NA") };
        assert_eq!(ia.id, 7);
        let Some(DhcpOption::IAAddr(a)) = ia.opts.get(OptionCode::IAAddr) else { panic!("no address") };
        assert_eq!(a.addr, "fd00:7::9".parse::<Ipv6Addr>().unwrap());
        use dhcproto::{Decodable, Encodable};
        assert_eq!(Message::from_bytes(&adv.to_vec().unwrap()).unwrap(), adv);
    }

    #[test]
    fn the_mac_comes_from_the_duid_or_the_link_local_address() {
        let unknown = vec![0, 2, 0, 0, 0, 1, 1, 2, 3, 4];
        let m = solicit(unknown);
        assert_eq!(client_mac(&m, "fe80::1".parse().unwrap()), None, "not an EUI-64 address");
        assert_eq!(client_mac(&m, "fe80::ff:fe00:9".parse().unwrap()), Some(MacAddr([2, 0, 0, 0, 0, 9])));
        let ll = solicit(vec![0, 3, 0, 1, 2, 0, 0, 0, 0, 9]);
        assert_eq!(client_mac(&ll, "fe80::1".parse().unwrap()), Some(MacAddr([2, 0, 0, 0, 0, 9])), "DUID-LL");
        assert!(
            answer6(&solicit(vec![0, 3, 0, 1, 2, 0, 0, 0, 0, 1]), "fe80::1".parse().unwrap(), &net()).is_err(),
            "a foreign MAC"
        );
    }

    #[test]
    fn the_advertisement_is_managed_with_the_prefix_on_link_and_the_mtu() {
        let ra = router_advertisement(&net());
        assert_eq!(ra[0], 134);
        assert_eq!(ra[5] & 0xc0, 0xc0, "managed and other");
        let prefix_at = ra.windows(2).position(|w| w == [3, 4]).unwrap();
        assert_eq!(ra[prefix_at + 3], 0x80, "on link, not autonomous");
        assert_eq!(ra.len() % 8, 0);
    }
}
