//! What may reach a host's kernel as root, and how big a request may be.
//!
//! The controller checks every request against these before it stores
//! anything, and the agent checks what it mirrors again before it programs
//! the kernel (a store written by an older version, or by hand, is not
//! trusted either). Each check names the field and the reason.
//!
//! Bounds keep one request from costing every agent a large snapshot or the
//! controller seconds of CPU; they are far above what a real network needs.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::FieldError;

/// Subnets of one network.
pub const MAX_SUBNETS: usize = 64;
/// Allocation pools of one subnet.
pub const MAX_POOLS: usize = 64;
/// DNS servers of one subnet.
pub const MAX_DNS_SERVERS: usize = 8;
/// Route targets of one list (import, export, or both).
pub const MAX_ROUTE_TARGETS: usize = 64;
/// Policies attached to one network.
pub const MAX_POLICIES: usize = 64;
/// Projects a network is shared with by name.
pub const MAX_SHARED_WITH: usize = 256;
/// Labels of one object.
pub const MAX_LABELS: usize = 64;
/// Bytes of a label's key.
pub const MAX_LABEL_KEY: usize = 253;
/// Bytes of a label's value.
pub const MAX_LABEL_VALUE: usize = 1024;
/// Rules of one policy.
pub const MAX_RULES: usize = 100_000;
/// Static addresses of one endpoint (one per family).
pub const MAX_ENDPOINT_IPS: usize = 2;
/// External networks one host is a gateway for.
pub const MAX_GATEWAYS: usize = 16;
/// Ports published for one endpoint.
pub const MAX_PORTS: usize = 256;
/// Bytes of a free-form identifier (a container ID, a Docker endpoint ID,
/// a host name).
pub const MAX_ID: usize = 256;
/// Bytes of a namespace path.
pub const MAX_PATH: usize = 4096;
/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// Directories under which runtimes keep network namespaces (and Tessera its
/// staging namespaces): `ip netns`, Docker, CNI runtimes, Tessera itself.
/// An endpoint's namespace is one of these, or a process's `/proc/PID/ns/net`.
pub const NETNS_DIRS: &[&str] =
    &["/run/netns/", "/var/run/netns/", "/run/docker/netns/", "/var/run/docker/netns/", "/run/tessera/"];

/// Refuses a list longer than `max`, naming `field` and `what` it holds.
pub fn check_count<T>(field: &str, list: &[T], max: usize, what: &str) -> Result<(), FieldError> {
    if list.len() > max {
        return Err(FieldError::new(field, format!("has {} {what}; at most {max} are allowed", list.len())));
    }
    Ok(())
}

/// Refuses a string longer than `max` bytes or holding control characters.
pub fn check_text(field: &str, s: &str, max: usize) -> Result<(), FieldError> {
    if s.len() > max {
        return Err(FieldError::new(field, format!("is {} bytes long; at most {max} are allowed", s.len())));
    }
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(FieldError::new(field, format!("contains the control character {c:?}")));
    }
    Ok(())
}

/// Labels: at most [`MAX_LABELS`], keys and values bounded, no control characters.
pub fn check_labels<'a>(field: &str, labels: impl ExactSizeIterator<Item = (&'a String, &'a String)>) -> Result<(), FieldError> {
    if labels.len() > MAX_LABELS {
        return Err(FieldError::new(field, format!("has {} labels; at most {MAX_LABELS} are allowed", labels.len())));
    }
    for (k, v) in labels {
        if k.is_empty() {
            return Err(FieldError::new(field, "a label key must not be empty"));
        }
        check_text(&format!("{field}.{k}"), k, MAX_LABEL_KEY)?;
        check_text(&format!("{field}.{k}"), v, MAX_LABEL_VALUE)?;
    }
    Ok(())
}

/// An interface name Linux takes: 1 to 15 bytes, no `/`, no white space,
/// no `:` (an alias), not `.` or `..`.
pub fn check_ifname(field: &str, name: &str) -> Result<(), FieldError> {
    let bad = name.is_empty()
        || name.len() > IFNAME_MAX
        || name == "."
        || name == ".."
        || name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if bad {
        return Err(FieldError::new(
            field,
            format!("{name:?} is not an interface name: 1 to {IFNAME_MAX} characters, no '/', ':' or white space"),
        ));
    }
    Ok(())
}

/// A network namespace an endpoint may live in: `/proc/PID/ns/net` of a
/// process other than PID 1 (the host's own namespace), or a file directly
/// under one of [`NETNS_DIRS`] (or a directory of `/run/tessera/`), with no
/// `.` or `..` component.
pub fn check_netns(field: &str, path: &str) -> Result<(), FieldError> {
    check_text(field, path, MAX_PATH)?;
    let refuse = |why: &str| Err(FieldError::new(field, format!("{path:?} {why}")));
    if !path.starts_with('/') {
        return refuse("is not an absolute path");
    }
    if path.split('/').skip(1).any(|c| c.is_empty() || c == "." || c == "..") {
        return refuse("is not a plain path (empty, '.' or '..' components)");
    }
    if let Some(rest) = path.strip_prefix("/proc/") {
        return match rest.split_once('/') {
            Some((pid, "ns/net")) if pid.parse::<u32>().is_ok_and(|p| p > 1) => Ok(()),
            Some(("1", "ns/net")) => refuse("is the host's own network namespace"),
            _ => refuse("is not a process's network namespace, /proc/PID/ns/net"),
        };
    }
    match NETNS_DIRS.iter().find(|d| path.starts_with(*d)) {
        Some(dir) if *dir != "/run/tessera/" && path[dir.len()..].contains('/') => {
            refuse(&format!("is not directly under {dir}"))
        }
        Some(_) => Ok(()),
        None => refuse(&format!(
            "is not a network namespace of a runtime: /proc/PID/ns/net or a file under {}",
            NETNS_DIRS.join(", ")
        )),
    }
}

/// An underlay address a host's tunnels may use: unicast, not unspecified,
/// loopback, link-local, multicast or broadcast.
pub fn check_underlay(field: &str, ip: IpAddr) -> Result<(), FieldError> {
    let why = match ip {
        IpAddr::V4(a) if a.is_unspecified() => Some("unspecified"),
        IpAddr::V4(a) if a.is_loopback() => Some("a loopback address"),
        IpAddr::V4(a) if a.is_link_local() => Some("link-local"),
        IpAddr::V4(a) if a.is_multicast() => Some("multicast"),
        IpAddr::V4(a) if a.is_broadcast() || a.octets()[0] >= 240 => Some("broadcast or reserved"),
        IpAddr::V6(a) if a.is_unspecified() => Some("unspecified"),
        IpAddr::V6(a) if a.is_loopback() => Some("a loopback address"),
        IpAddr::V6(a) if a.is_multicast() => Some("multicast"),
        IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80 => Some("link-local"),
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => Some("an IPv4-mapped address"),
        _ => None,
    };
    match why {
        Some(w) => Err(FieldError::new(field, format!("{ip} is {w}; a host's underlay address must be unicast and routable"))),
        None => Ok(()),
    }
}

/// Address space no virtual network may hold: every address, this host,
/// loopback, link-local, multicast, reserved and broadcast.
const FORBIDDEN_SUBNETS: &[(&str, &str)] = &[
    ("0.0.0.0/8", "\"this network\" (0.0.0.0/8)"),
    ("127.0.0.0/8", "loopback (127.0.0.0/8)"),
    ("169.254.0.0/16", "link-local (169.254.0.0/16)"),
    ("224.0.0.0/4", "multicast (224.0.0.0/4)"),
    ("240.0.0.0/4", "reserved and broadcast (240.0.0.0/4)"),
    ("::/128", "the unspecified address (::/128)"),
    ("::1/128", "loopback (::1/128)"),
    ("::ffff:0:0/96", "IPv4-mapped (::ffff:0:0/96)"),
    ("fe80::/10", "link-local (fe80::/10)"),
    ("ff00::/8", "multicast (ff00::/8)"),
];

/// A subnet a virtual network may hold: not a default route, and overlapping
/// none of the forbidden ranges.
pub fn check_subnet(field: &str, net: IpNet) -> Result<(), FieldError> {
    if net.prefix_len() == 0 {
        return Err(FieldError::new(field, format!("{net} is every address; a network's subnet must be narrower")));
    }
    for (cidr, what) in FORBIDDEN_SUBNETS {
        let bad: IpNet = cidr.parse().expect("a literal CIDR");
        if overlaps(bad, net) {
            return Err(FieldError::new(field, format!("{net} overlaps {what}, which no virtual network may hold")));
        }
    }
    Ok(())
}

/// Whether two CIDRs share an address (one contains the other).
pub fn overlaps(a: IpNet, b: IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The first pair of overlapping CIDRs in `list`, by index, in
/// O(n log n): sorted by first address (wider first), two CIDRs overlap
/// only if one contains the other, and then some pair of neighbours does.
pub fn first_overlap(list: &[IpNet]) -> Option<(usize, usize)> {
    let mut order: Vec<usize> = (0..list.len()).collect();
    order.sort_by_key(|&i| (list[i].addr().is_ipv6(), list[i].network(), list[i].prefix_len()));
    order.windows(2).find(|w| overlaps(list[w[0]], list[w[1]])).map(|w| (w[0].min(w[1]), w[0].max(w[1])))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn namespaces_of_runtimes_and_processes_pass() {
        for ok in ["/proc/4242/ns/net", "/run/netns/c1", "/var/run/docker/netns/0123abcd", "/run/tessera/staging/h1/e1"] {
            assert_eq!(check_netns("owner.netns", ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn the_hosts_namespace_and_odd_paths_are_refused_with_the_reason() {
        for (bad, why) in [
            ("/proc/1/ns/net", "host's own"),
            ("/proc/self/ns/net", "process's network namespace"),
            ("/run/netns/../../etc/passwd", "'..'"),
            ("/etc/passwd", "not a network namespace of a runtime"),
            ("run/netns/c1", "absolute"),
            ("/run/netns/a/b", "directly under"),
            ("/run/netns//c1", "empty"),
        ] {
            let e = check_netns("owner.netns", bad).unwrap_err();
            assert_eq!(e.field, "owner.netns");
            assert!(e.reason.contains(why), "{bad}: {}", e.reason);
        }
    }

    #[test]
    fn interface_names_follow_linux() {
        assert!(check_ifname("ifname", "eth0").is_ok());
        assert!(check_ifname("ifname", "a23456789012345").is_ok());
        for bad in ["", "a234567890123456", "../../x y", "eth0:1", ".", "a b"] {
            assert!(check_ifname("ifname", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn underlay_addresses_must_be_routable_unicast() {
        for bad in ["127.0.0.1", "255.255.255.255", "0.0.0.0", "169.254.1.1", "224.0.0.1", "::1", "fe80::1", "ff02::1", "::"] {
            assert!(check_underlay("underlay_ip", bad.parse().unwrap()).is_err(), "{bad}");
        }
        for ok in ["10.99.0.1", "172.16.0.1", "2001:db8::1"] {
            assert!(check_underlay("underlay_ip", ok.parse().unwrap()).is_ok(), "{ok}");
        }
    }

    #[test]
    fn subnets_may_not_hold_special_address_space() {
        for bad in ["0.0.0.0/0", "::/0", "127.0.0.0/8", "224.0.0.0/4", "fe80::/10", "127.0.0.0/24", "0.0.0.0/1", "ff00::/12"] {
            assert!(check_subnet("subnets[0].cidr", net(bad)).is_err(), "{bad}");
        }
        for ok in ["192.168.10.0/24", "10.0.0.0/8", "2002:1::/64", "fd00::/8"] {
            assert!(check_subnet("subnets[0].cidr", net(ok)).is_ok(), "{ok}");
        }
    }

    #[test]
    fn overlaps_are_found_between_any_two_of_many() {
        let mut list: Vec<IpNet> = (0..40_000u32).map(|i| net(&format!("10.{}.{}.0/24", i / 256, i % 256))).collect();
        assert_eq!(first_overlap(&list), None);
        list.push(net("10.100.0.0/16"));
        assert_eq!(first_overlap(&list), Some((25_600, 40_000)));
        assert_eq!(first_overlap(&[net("2001:db8::/64"), net("10.0.0.0/8"), net("2001:db8::/48")]), Some((0, 2)));
    }

    #[test]
    fn labels_are_bounded() {
        let big = "x".repeat(MAX_LABEL_VALUE + 1);
        let labels = std::collections::BTreeMap::from([("rt".to_string(), big)]);
        assert!(check_labels("labels", labels.iter()).unwrap_err().reason.contains("bytes long"));
    }
}
