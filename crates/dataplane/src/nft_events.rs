//! nftables notifications (the `NFNLGRP_NFTABLES` netlink group), read for
//! one thing: whether something took away part of Tessera's tables behind
//! the data plane's back (`nft flush ruleset`, `nft delete table ...`, a
//! rule of a base chain deleted), so that the agent restores them at once
//! instead of at its next periodic resync. Pure: [`crate::linux`] owns the
//! socket.
//!
//! What counts: a table of Tessera's deleted; a base chain of those tables
//! deleted or a rule of one deleted; one of their sets or maps that the
//! skeleton declares deleted. The data plane itself deletes none of these
//! but when it installs the skeleton again, which costs one extra resync.

use crate::names::POLICY_TABLE;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_DELSET: u16 = 11;
const NFPROTO_INET: u8 = 1;
const NFPROTO_BRIDGE: u8 = 7;
/// `NFTA_TABLE_NAME`, `NFTA_CHAIN_TABLE`, `NFTA_RULE_TABLE`, `NFTA_SET_TABLE`.
const ATTR_TABLE: u16 = 1;
/// `NFTA_RULE_CHAIN`.
const NFTA_RULE_CHAIN: u16 = 2;
/// `NFTA_CHAIN_NAME`.
const NFTA_CHAIN_NAME: u16 = 3;
/// `NFTA_SET_NAME`.
const NFTA_SET_NAME: u16 = 2;

/// The base chains and skeleton sets of each of Tessera's tables.
fn skeleton_of(family: u8, table: &str) -> Option<(&'static [&'static str], &'static [&'static str])> {
    match (family, table) {
        (NFPROTO_INET, "tessera") => Some((
            &["prerouting", "output", "input", "from_overlay", "probe_out", "isolation"],
            &["zones", "pz4", "pz6", "reach4", "reach6", "vteps4", "vteps6"],
        )),
        (NFPROTO_BRIDGE, "tessera") => Some((&["prerouting"], &["ep4", "ep6", "epmac", "svcmac"])),
        // `dispatch` and `steer` are the planner's: it replaces their rules.
        (NFPROTO_INET, t) if t == POLICY_TABLE => Some((&["forward", "prerouting"], &["digests"])),
        _ => None,
    }
}

/// What was taken away, when the notifications in `buf` (one `recv`: one
/// or more netlink messages) delete part of Tessera's tables; `None` when
/// they do not.
pub fn tessera_deletion(buf: &[u8]) -> Option<String> {
    let mut rest = buf;
    while rest.len() >= 16 {
        let len = u32::from_ne_bytes(rest[0..4].try_into().ok()?) as usize;
        if len < 16 || len > rest.len() {
            return None;
        }
        let ty = u16::from_ne_bytes(rest[4..6].try_into().ok()?);
        if let Some(what) = deletion(ty, &rest[16..len]) {
            return Some(what);
        }
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
    }
    None
}

/// One message: its type and its payload (the `nfgenmsg` header, then
/// attributes).
fn deletion(ty: u16, payload: &[u8]) -> Option<String> {
    if ty >> 8 != NFNL_SUBSYS_NFTABLES || payload.len() < 4 {
        return None;
    }
    let family = payload[0];
    let attrs = &payload[4..];
    let table = string_attr(attrs, ATTR_TABLE)?;
    let (chains, sets) = skeleton_of(family, &table)?;
    let fam = if family == NFPROTO_BRIDGE { "bridge" } else { "inet" };
    match ty & 0xff {
        NFT_MSG_DELTABLE => Some(format!("table {fam} {table} deleted")),
        NFT_MSG_DELCHAIN => {
            let chain = string_attr(attrs, NFTA_CHAIN_NAME)?;
            chains.contains(&chain.as_str()).then(|| format!("chain {chain} of {fam} {table} deleted"))
        }
        NFT_MSG_DELRULE => {
            let chain = string_attr(attrs, NFTA_RULE_CHAIN)?;
            chains.contains(&chain.as_str()).then(|| format!("a rule of chain {chain} of {fam} {table} deleted"))
        }
        NFT_MSG_DELSET => {
            let set = string_attr(attrs, NFTA_SET_NAME)?;
            sets.contains(&set.as_str()).then(|| format!("set {set} of {fam} {table} deleted"))
        }
        _ => None,
    }
}

/// The string attribute `kind` among `attrs` (NUL-terminated).
fn string_attr(mut attrs: &[u8], kind: u16) -> Option<String> {
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let ty = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if ty == kind {
            let value = &attrs[4..len];
            let value = value.split(|b| *b == 0).next().unwrap_or_default();
            return std::str::from_utf8(value).ok().map(str::to_string);
        }
        attrs = &attrs[len.next_multiple_of(4).min(attrs.len())..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, value: &str) -> Vec<u8> {
        let mut v = value.as_bytes().to_vec();
        v.push(0);
        let len = 4 + v.len();
        let mut out = Vec::new();
        out.extend_from_slice(&(len as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&v);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out
    }

    fn message(msg: u16, family: u8, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut payload = vec![family, 0, 0, 0];
        for a in attrs {
            payload.extend_from_slice(a);
        }
        let len = 16 + payload.len();
        let mut out = Vec::new();
        out.extend_from_slice(&(len as u32).to_ne_bytes());
        out.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | msg).to_ne_bytes());
        out.extend_from_slice(&[0; 10]);
        out.extend_from_slice(&payload);
        out
    }

    #[test]
    fn deleting_a_table_of_tessera_is_seen() {
        let m = message(NFT_MSG_DELTABLE, NFPROTO_INET, &[attr(ATTR_TABLE, "tessera_policy")]);
        assert_eq!(tessera_deletion(&m).as_deref(), Some("table inet tessera_policy deleted"));
        let m = message(NFT_MSG_DELTABLE, NFPROTO_BRIDGE, &[attr(ATTR_TABLE, "tessera")]);
        assert_eq!(tessera_deletion(&m).as_deref(), Some("table bridge tessera deleted"));
    }

    #[test]
    fn other_tables_and_the_data_plane_s_own_changes_are_not() {
        let others = message(NFT_MSG_DELTABLE, NFPROTO_INET, &[attr(ATTR_TABLE, "filter")]);
        assert_eq!(tessera_deletion(&others), None);
        // A policy list chain or a rule of it: the planner's own work.
        let list = message(NFT_MSG_DELRULE, NFPROTO_INET, &[attr(ATTR_TABLE, POLICY_TABLE), attr(NFTA_RULE_CHAIN, "l1_2_0")]);
        assert_eq!(tessera_deletion(&list), None);
        let map =
            message(NFT_MSG_DELSET, NFPROTO_INET, &[attr(ATTR_TABLE, POLICY_TABLE), attr(NFTA_SET_NAME, "m1_2_0_0_4_0_01234")]);
        assert_eq!(tessera_deletion(&map), None);
    }

    #[test]
    fn a_rule_of_a_base_chain_or_a_skeleton_set_is_seen_in_a_buffer_of_several_messages() {
        let mut buf = message(NFT_MSG_DELTABLE, NFPROTO_INET, &[attr(ATTR_TABLE, "filter")]);
        buf.extend(message(NFT_MSG_DELRULE, NFPROTO_INET, &[attr(ATTR_TABLE, "tessera"), attr(NFTA_RULE_CHAIN, "input")]));
        assert_eq!(tessera_deletion(&buf).as_deref(), Some("a rule of chain input of inet tessera deleted"));
        let set = message(NFT_MSG_DELSET, NFPROTO_BRIDGE, &[attr(ATTR_TABLE, "tessera"), attr(NFTA_SET_NAME, "ep4")]);
        assert_eq!(tessera_deletion(&set).as_deref(), Some("set ep4 of bridge tessera deleted"));
    }

    #[test]
    fn garbage_is_not_a_deletion() {
        assert_eq!(tessera_deletion(&[]), None);
        assert_eq!(tessera_deletion(&[0xff; 40]), None);
        let mut m = message(NFT_MSG_DELTABLE, NFPROTO_INET, &[attr(ATTR_TABLE, "tessera")]);
        m.truncate(18);
        assert_eq!(tessera_deletion(&m), None);
    }
}
