//! Names the plugin makes up (pure): the container's interface name, the
//! MAC of an endpoint, and the owner tokens of its address reservations.

use std::collections::BTreeSet;

use tessera_model::MacAddr;

/// The interface name prefix inside containers, as Docker's own drivers use.
pub const IFNAME_PREFIX: &str = "eth";

/// The lowest `ethN` that is not among `taken` (the sandbox's links and the
/// interfaces being attached to it).
pub fn next_ifname<'a>(taken: impl IntoIterator<Item = &'a str>) -> String {
    let used: BTreeSet<u32> =
        taken.into_iter().filter_map(|n| n.strip_prefix(IFNAME_PREFIX)).filter_map(|n| n.parse().ok()).collect();
    let n = (0..).find(|n| !used.contains(n)).unwrap_or_default();
    format!("{IFNAME_PREFIX}{n}")
}

/// A locally administered unicast MAC derived from a Docker endpoint ID, so
/// that the answer to `CreateEndpoint` and the interface made at `Join` agree
/// without the plugin having to remember anything in between.
pub fn endpoint_mac(endpoint_id: &str) -> MacAddr {
    // FNV-1a over the ID, 64 bits; the low 48 make the address.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in endpoint_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    MacAddr::local_from([b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// The owner token of an address this host's plugin reserved:
/// `docker.<host>.<unix ms>.<random>`. The host lets a plugin recognise its
/// own reservations, the time lets it leave young ones (in flight) alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationToken {
    pub host: String,
    pub created_ms: u64,
    pub nonce: u32,
}

const TOKEN_PREFIX: &str = "docker.";

impl ReservationToken {
    pub fn encode(&self) -> String {
        format!("{TOKEN_PREFIX}{}.{}.{:08x}", self.host, self.created_ms, self.nonce)
    }

    /// Parses a token made by [`ReservationToken::encode`]; `None` for any other owner.
    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.strip_prefix(TOKEN_PREFIX)?;
        let mut parts = rest.rsplitn(3, '.');
        let nonce = u32::from_str_radix(parts.next()?, 16).ok()?;
        let created_ms = parts.next()?.parse().ok()?;
        let host = parts.next()?.to_string();
        if host.is_empty() {
            return None;
        }
        Some(ReservationToken { host, created_ms, nonce })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_interface_is_eth0_and_gaps_are_filled() {
        assert_eq!(next_ifname(["lo"]), "eth0");
        assert_eq!(next_ifname(["lo", "eth0", "eth2"]), "eth1");
        assert_eq!(next_ifname(["lo", "eth0", "eth1", "ethx", "veth3"]), "eth2");
    }

    #[test]
    fn endpoint_macs_are_stable_local_and_unicast() {
        let a = endpoint_mac("50edfb99aa19cb58a9b4cd4103d0c43cfa8f3b7f0a49000336b4e4f969084586");
        assert_eq!(a, endpoint_mac("50edfb99aa19cb58a9b4cd4103d0c43cfa8f3b7f0a49000336b4e4f969084586"));
        assert_ne!(a, endpoint_mac("8ef9c9c17cf2d6ef0c10ee673a3f21b9becdb361bf33a0174fd939c716775b9c"));
        assert!(a.is_unicast());
        assert_eq!(a.0[0] & 0x02, 0x02);
    }

    #[test]
    fn tokens_round_trip_even_with_dots_in_the_host_name() {
        let t = ReservationToken { host: "h1.example".into(), created_ms: 1_700_000_000_123, nonce: 0xdead_beef };
        let s = t.encode();
        assert_eq!(s, "docker.h1.example.1700000000123.deadbeef");
        assert!(tessera_model::names::check_component(&s).is_ok());
        assert_eq!(ReservationToken::parse(&s), Some(t));
        assert_eq!(ReservationToken::parse("cni.h1.1.00000000"), None);
        assert_eq!(ReservationToken::parse("docker..1.00000000"), None);
    }
}
