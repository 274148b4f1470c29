//! Pure naming and addressing rules of a fabric: which names are valid, how namespaces and
//! underlay ports are named, and which underlay address each host gets. No IO here.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::FabricError;

/// Longest interface name Linux accepts (`IFNAMSIZ - 1`).
pub const IFNAME_MAX: usize = 15;

/// Longest file name, and so longest network namespace name (`NAME_MAX`).
pub const NETNS_NAME_MAX: usize = 255;

/// Suffix of the underlay namespace: `<prefix>-ul`.
pub const UNDERLAY_SUFFIX: &str = "ul";

/// Checks a network namespace name the way iproute2 does: a single path component.
pub fn validate_netns_name(name: &str) -> Result<(), FabricError> {
    let invalid = |reason| Err(FabricError::InvalidName { kind: "network namespace", name: name.to_owned(), reason });
    if name.is_empty() {
        return invalid("empty");
    }
    if name.len() > NETNS_NAME_MAX {
        return invalid("longer than 255 bytes");
    }
    if name == "." || name == ".." {
        return invalid("not a file name");
    }
    if name.contains('/') || name.contains('\0') {
        return invalid("contains '/' or NUL");
    }
    Ok(())
}

/// Checks a fabric prefix, host name or container name: ASCII letters, digits, `-`, `_`, `.`,
/// not starting with `-` or `.` (so names stay safe in file names, shell commands and logs).
pub fn validate_component(kind: &'static str, name: &str) -> Result<(), FabricError> {
    let invalid = |reason| Err(FabricError::InvalidName { kind, name: name.to_owned(), reason });
    if name.is_empty() {
        return invalid("empty");
    }
    if name.len() > 64 {
        return invalid("longer than 64 bytes");
    }
    if name.starts_with('-') || name.starts_with('.') {
        return invalid("starts with '-' or '.'");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
        return invalid("only ASCII letters, digits, '-', '_' and '.' are allowed");
    }
    Ok(())
}

/// `<prefix>-ul`: the namespace that holds the underlay bridge.
pub fn underlay_netns_name(prefix: &str) -> String {
    format!("{prefix}-{UNDERLAY_SUFFIX}")
}

/// `<prefix>-<host>`: a host's namespace.
pub fn host_netns_name(prefix: &str, host: &str) -> String {
    format!("{prefix}-{host}")
}

/// `<prefix>-<host>-<container>`: a container's namespace.
pub fn container_netns_name(prefix: &str, host: &str, container: &str) -> String {
    format!("{prefix}-{host}-{container}")
}

/// Whether `netns` is a namespace a fabric with this prefix would create (`<prefix>-*`).
pub fn belongs_to_prefix(prefix: &str, netns: &str) -> bool {
    netns.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('-') && rest.len() > 1)
}

/// Names of the underlay-side veth ports, one per host, in order: the host name when it fits in
/// 15 bytes, otherwise a truncation; a suffix `-<n>` (n = 1-based host index) resolves clashes
/// with earlier ports and with the reserved names `lo` and `bridge`.
pub fn underlay_port_names(hosts: &[String], bridge: &str) -> Vec<String> {
    let mut used: HashSet<String> = ["lo".to_owned(), bridge.to_owned()].into_iter().collect();
    let mut out = Vec::with_capacity(hosts.len());
    for (i, host) in hosts.iter().enumerate() {
        let mut candidate = truncate(host, IFNAME_MAX).to_owned();
        let mut attempt = 0usize;
        while used.contains(&candidate) {
            attempt += 1;
            let suffix = if attempt == 1 { format!("-{}", i + 1) } else { format!("-{}-{attempt}", i + 1) };
            candidate = format!("{}{suffix}", truncate(host, IFNAME_MAX.saturating_sub(suffix.len())));
        }
        used.insert(candidate.clone());
        out.push(candidate);
    }
    out
}

fn truncate(s: &str, max: usize) -> &str {
    // Names are validated ASCII, but stay correct on any UTF-8 input.
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Underlay addresses of `count` hosts: host `i` (0-based) gets the `i+1`-th address of the
/// subnet (`10.99.0.1`, `10.99.0.2`, ... for `10.99.0.0/24`). The network and broadcast
/// addresses are never handed out; /31 and /32 have no room.
pub fn host_addresses(underlay: Ipv4Net, count: usize) -> Result<Vec<Ipv4Addr>, FabricError> {
    let underlay = underlay.trunc();
    let host_bits = 32 - u32::from(underlay.prefix_len());
    let capacity: u64 = if host_bits < 2 { 0 } else { (1u64 << host_bits) - 2 };
    if count as u64 > capacity {
        return Err(FabricError::UnderlayTooSmall { underlay, capacity, requested: count });
    }
    let base = u32::from(underlay.network());
    // count <= capacity < 2^32, so every offset fits in u32 without overflow.
    Ok((0..count).map(|i| Ipv4Addr::from(base + i as u32 + 1)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn netns_names_follow_iproute2_rules() {
        assert!(validate_netns_name("tsk-1-host1").is_ok());
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(validate_netns_name(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(validate_netns_name(&"x".repeat(256)).is_err());
    }

    #[test]
    fn components_are_restricted_to_safe_characters() {
        for good in ["host1", "h_2", "node.a", "tsk-123-4"] {
            assert!(validate_component("host", good).is_ok(), "{good:?} should be accepted");
        }
        for bad in ["", "-x", ".x", "a b", "a/b", "é", "a;b"] {
            assert!(validate_component("host", bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn prefix_membership_requires_a_dash_and_a_suffix() {
        assert!(belongs_to_prefix("tsk-1", "tsk-1-ul"));
        assert!(belongs_to_prefix("tsk-1", "tsk-1-host1-c1"));
        assert!(!belongs_to_prefix("tsk-1", "tsk-12-ul"));
        assert!(!belongs_to_prefix("tsk-1", "tsk-1"));
        assert!(!belongs_to_prefix("tsk-1", "tsk-1-"));
        assert!(!belongs_to_prefix("tsk-1", "other"));
    }

    #[test]
    fn short_host_names_are_their_own_port_names() {
        assert_eq!(underlay_port_names(&strings(&["host1", "host2"]), "ul0"), strings(&["host1", "host2"]));
    }

    #[test]
    fn long_host_names_are_truncated_and_deduplicated() {
        let hosts = strings(&["averyveryverylonghost-a", "averyveryverylonghost-b", "ul0", "lo"]);
        let ports = underlay_port_names(&hosts, "ul0");
        assert_eq!(ports, strings(&["averyveryverylo", "averyveryvery-2", "ul0-3", "lo-4"]));
        assert!(ports.iter().all(|p| p.len() <= IFNAME_MAX));
    }

    #[test]
    fn hosts_get_consecutive_addresses_after_the_network_address() {
        let net: Ipv4Net = "10.99.7.0/24".parse().unwrap();
        let addrs = host_addresses(net, 3).unwrap();
        assert_eq!(addrs, vec![Ipv4Addr::new(10, 99, 7, 1), Ipv4Addr::new(10, 99, 7, 2), Ipv4Addr::new(10, 99, 7, 3)]);
    }

    #[test]
    fn underlay_is_truncated_to_its_network() {
        let net: Ipv4Net = "10.99.7.77/24".parse().unwrap();
        assert_eq!(host_addresses(net, 1).unwrap(), vec![Ipv4Addr::new(10, 99, 7, 1)]);
    }

    #[test]
    fn underlay_capacity_excludes_network_and_broadcast() {
        let net: Ipv4Net = "10.99.7.0/30".parse().unwrap();
        assert_eq!(host_addresses(net, 2).unwrap().len(), 2);
        assert!(matches!(host_addresses(net, 3), Err(FabricError::UnderlayTooSmall { capacity: 2, requested: 3, .. })));
        let tiny: Ipv4Net = "10.99.7.0/31".parse().unwrap();
        assert!(host_addresses(tiny, 1).is_err());
    }
}
