//! BGP route targets (RFC 4360 extended communities), as L3VPNs use them to
//! decide which networks import which routes.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A route target: `target:ASN:NUMBER` or `target:IPV4:NUMBER`.
///
/// The three encodings of RFC 4360 / RFC 5668 fit in six bytes of value, so
/// the administrator and the assigned number share them:
/// - a 2-byte ASN with a 4-byte number (`64512:100`),
/// - a 4-byte ASN with a 2-byte number (`4200000000:100`),
/// - an IPv4 address with a 2-byte number (`10.1.1.1:100`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum RouteTarget {
    As2 { asn: u16, number: u32 },
    As4 { asn: u32, number: u16 },
    Ip { addr: Ipv4Addr, number: u16 },
}

impl FromStr for RouteTarget {
    type Err = String;

    /// Accepts `ASN:N`, `IPV4:N`, each optionally prefixed with `target:`.
    fn from_str(input: &str) -> Result<Self, String> {
        let s = input.trim();
        let s = s.strip_prefix("target:").unwrap_or(s);
        let Some((admin, number)) = s.rsplit_once(':') else {
            return Err(format!("{input:?} is not a route target; expected ASN:NUMBER or IPV4:NUMBER"));
        };
        let number: u64 =
            number.parse().map_err(|_| format!("{input:?}: the assigned number {number:?} is not a non-negative integer"))?;
        if let Ok(addr) = admin.parse::<Ipv4Addr>() {
            let number = u16::try_from(number)
                .map_err(|_| format!("{input:?}: with an IPv4 administrator the number must fit in 2 bytes (0..=65535)"))?;
            return Ok(RouteTarget::Ip { addr, number });
        }
        let asn: u64 =
            admin.parse().map_err(|_| format!("{input:?}: the administrator {admin:?} is neither an ASN nor an IPv4 address"))?;
        if asn == 0 {
            return Err(format!("{input:?}: ASN 0 is reserved"));
        }
        if let Ok(asn) = u16::try_from(asn) {
            let number = u32::try_from(number)
                .map_err(|_| format!("{input:?}: with a 2-byte ASN the number must fit in 4 bytes (0..=4294967295)"))?;
            Ok(RouteTarget::As2 { asn, number })
        } else if let Ok(asn) = u32::try_from(asn) {
            let number = u16::try_from(number)
                .map_err(|_| format!("{input:?}: with a 4-byte ASN the number must fit in 2 bytes (0..=65535)"))?;
            Ok(RouteTarget::As4 { asn, number })
        } else {
            Err(format!("{input:?}: ASN {asn} does not fit in 4 bytes"))
        }
    }
}

impl fmt::Display for RouteTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteTarget::As2 { asn, number } => write!(f, "target:{asn}:{number}"),
            RouteTarget::As4 { asn, number } => write!(f, "target:{asn}:{number}"),
            RouteTarget::Ip { addr, number } => write!(f, "target:{addr}:{number}"),
        }
    }
}

impl TryFrom<String> for RouteTarget {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<RouteTarget> for String {
    fn from(rt: RouteTarget) -> String {
        rt.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rt(s: &str) -> Result<RouteTarget, String> {
        s.parse()
    }

    #[test]
    fn short_form_is_a_two_byte_asn() {
        assert_eq!(rt("64512:100").unwrap(), RouteTarget::As2 { asn: 64512, number: 100 });
    }

    #[test]
    fn target_prefix_is_accepted() {
        assert_eq!(rt("target:64512:100").unwrap(), rt("64512:100").unwrap());
    }

    #[test]
    fn displays_with_target_prefix() {
        assert_eq!(rt("64512:100").unwrap().to_string(), "target:64512:100");
    }

    #[test]
    fn two_byte_asn_takes_a_four_byte_number() {
        assert_eq!(rt("65000:4294967295").unwrap(), RouteTarget::As2 { asn: 65000, number: u32::MAX });
        assert!(rt("65000:4294967296").unwrap_err().contains("4 bytes"));
    }

    #[test]
    fn four_byte_asn_takes_a_two_byte_number() {
        assert_eq!(rt("4200000000:7").unwrap(), RouteTarget::As4 { asn: 4_200_000_000, number: 7 });
        assert!(rt("4200000000:65536").unwrap_err().contains("2 bytes"));
    }

    #[test]
    fn ipv4_administrator_takes_a_two_byte_number() {
        assert_eq!(rt("10.1.1.1:5").unwrap(), RouteTarget::Ip { addr: Ipv4Addr::new(10, 1, 1, 1), number: 5 });
        assert!(rt("10.1.1.1:70000").is_err());
    }

    #[test]
    fn malformed_route_targets_are_rejected() {
        for bad in ["", "64512", "target:", "abc:1", "64512:-1", "64512:x", "0:1", "4294967296:1", "1:2:3", "10.1.1:5"] {
            assert!(rt(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    proptest! {
        #[test]
        fn display_then_parse_is_identity(asn in 1u32.., n2 in any::<u16>(), n4 in any::<u32>(), ip in any::<u32>()) {
            let cands = [
                if asn <= 65535 { RouteTarget::As2 { asn: asn as u16, number: n4 } } else { RouteTarget::As4 { asn, number: n2 } },
                RouteTarget::Ip { addr: Ipv4Addr::from(ip), number: n2 },
            ];
            for c in cands {
                prop_assert_eq!(c.to_string().parse::<RouteTarget>().unwrap(), c);
            }
        }
    }
}
