//! Conversions between IP addresses, `u128` offsets and sortable string keys.
//!
//! All arithmetic in this crate happens on `u128`: an IPv4 address is its
//! 32-bit value zero-extended, an IPv6 address is its 128-bit value. The
//! family travels separately (a `v6: bool`), never inside the number.
//!
//! [`sort_key`] renders an address as fixed-width lowercase hex so that a
//! sorted key-value store iterates addresses of one family in numeric order.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Number of hex digits in the sort key of an IPv4 address.
const V4_KEY_LEN: usize = 8;
/// Number of hex digits in the sort key of an IPv6 address.
const V6_KEY_LEN: usize = 32;

/// The numeric value of `addr`: the 32-bit value for IPv4 (zero-extended),
/// the 128-bit value for IPv6.
///
/// The family is not encoded; keep it alongside if you need to convert back
/// with [`u128_to_addr`].
pub fn addr_to_u128(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The address whose numeric value is `value`, IPv6 if `v6`, otherwise IPv4.
///
/// For IPv4 only the low 32 bits of `value` are used; higher bits are
/// discarded. `u128_to_addr(addr_to_u128(a), a.is_ipv6()) == a` for every `a`.
pub fn u128_to_addr(value: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(value))
    } else {
        // Truncation to the low 32 bits is the documented contract.
        IpAddr::V4(Ipv4Addr::from(value as u32))
    }
}

/// A fixed-width lowercase hex key for `addr`: 8 digits for IPv4, 32 for
/// IPv6 (e.g. `10.0.0.1` → `"0a000001"`).
///
/// Within one family, lexicographic order of keys equals numeric order of
/// addresses, so a sorted store yields addresses in ascending order. IPv4 keys
/// are shorter than IPv6 keys, so keep the families under separate prefixes
/// (the subnet already implies the family). [`parse_sort_key`] inverts it.
pub fn sort_key(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(v4) => format!("{:0width$x}", u32::from(v4), width = V4_KEY_LEN),
        IpAddr::V6(v6) => format!("{:0width$x}", u128::from(v6), width = V6_KEY_LEN),
    }
}

/// The address encoded by a key produced by [`sort_key`].
///
/// Returns `None` unless `key` is exactly 8 (IPv4) or 32 (IPv6) lowercase hex
/// digits; in particular uppercase digits, signs and whitespace are rejected,
/// so every accepted key is the canonical key of its address.
pub fn parse_sort_key(key: &str) -> Option<IpAddr> {
    let canonical_digits = key.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !canonical_digits {
        return None;
    }
    let value = u128::from_str_radix(key, 16).ok();
    match key.len() {
        V4_KEY_LEN => value.map(|v| u128_to_addr(v, false)),
        V6_KEY_LEN => value.map(|v| u128_to_addr(v, true)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address literal")
    }

    #[test]
    fn ipv4_value_is_its_32_bit_number() {
        assert_eq!(addr_to_u128(ip("10.0.0.1")), 0x0a00_0001);
    }

    #[test]
    fn ipv6_value_is_its_128_bit_number() {
        assert_eq!(addr_to_u128(ip("::1")), 1);
        assert_eq!(addr_to_u128(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")), u128::MAX);
    }

    #[test]
    fn converting_to_ipv4_discards_bits_above_32() {
        assert_eq!(u128_to_addr((1 << 40) | 0x0a00_0001, false), ip("10.0.0.1"));
    }

    #[test]
    fn ipv4_sort_key_is_eight_lowercase_hex_digits() {
        assert_eq!(sort_key(ip("10.0.0.255")), "0a0000ff");
    }

    #[test]
    fn ipv6_sort_key_is_thirty_two_lowercase_hex_digits() {
        assert_eq!(sort_key(ip("fd00::ab")), "fd0000000000000000000000000000ab");
    }

    #[test]
    fn sort_key_round_trips_through_parse() {
        for s in ["0.0.0.0", "255.255.255.255", "::", "fd00::1", "ffff::ffff"] {
            assert_eq!(parse_sort_key(&sort_key(ip(s))), Some(ip(s)));
        }
    }

    #[test]
    fn parse_sort_key_rejects_uppercase_digits() {
        assert_eq!(parse_sort_key("0A000001"), None);
    }

    #[test]
    fn parse_sort_key_rejects_a_leading_plus_sign() {
        assert_eq!(parse_sort_key("+a000001"), None);
    }

    #[test]
    fn parse_sort_key_rejects_other_lengths() {
        assert_eq!(parse_sort_key(""), None);
        assert_eq!(parse_sort_key("a000001"), None);
        assert_eq!(parse_sort_key("0a0000010"), None);
    }
}
