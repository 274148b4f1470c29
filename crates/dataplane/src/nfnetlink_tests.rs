//! Tests of [`crate::nfnetlink`]'s messages (the pure part).

use super::*;
use tessera_policy::FlowBox;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn attrs(b: &[u8]) -> Vec<(u16, &[u8])> {
    super::attrs(b).collect()
}

fn box_of(family: Family, src: (u128, u128), proto: u8, dport: (u16, u16)) -> FlowBox {
    FlowBox { family, src, dst: (0, family.max()), proto: (proto, proto), sport: (0, 65535), dport }
}

#[test]
fn the_zone_flush_carries_the_zone_big_endian() {
    let m = zone_flush(0x1234, 7);
    let b = m.bytes();
    assert_eq!(b.len(), 28);
    assert_eq!(u32::from_ne_bytes(b[0..4].try_into().unwrap()), 28);
    assert_eq!(u16_at(b, 4), 0x0102);
    assert_eq!(u32::from_ne_bytes(b[8..12].try_into().unwrap()), 7);
    assert_eq!(&b[16..20], &[0, 0, 0, 0]);
    assert_eq!(attrs(&b[20..]), vec![(CTA_ZONE, &[0x12, 0x34][..])]);
    assert_eq!(m.acked(), &[7]);
}

#[test]
fn a_concatenated_interval_key_pads_each_field_and_carries_its_end() {
    // m…_01234: saddr . daddr . l4proto . sport . dport, IPv4.
    let map = "m1_2_0_0_4_0_01234";
    let key = box_of(Family::V4, (0x0a00_0000, 0x0a00_00ff), 6, (80, 89));
    let e = map_element(map, &MapElement { key, verdict: ElementVerdict::Return }, true).unwrap();
    assert_eq!(
        e.key,
        [[10, 0, 0, 0], [0, 0, 0, 0], [6, 0, 0, 0], [0, 0, 0, 0], [0, 80, 0, 0]].concat(),
        "each field padded to 4 bytes, in network order"
    );
    assert_eq!(e.key_end.unwrap(), [[10, 0, 0, 255], [255; 4], [6, 0, 0, 0], [255, 255, 0, 0], [0, 89, 0, 0]].concat());
}

#[test]
fn a_single_field_hash_key_is_not_padded_and_a_range_is_refused() {
    let map = "h1_2_0_0_4_0abc_4";
    let exact = box_of(Family::V4, (0, u128::from(u32::MAX)), 6, (5001, 5001));
    let e = map_element(map, &MapElement { key: exact, verdict: ElementVerdict::Drop }, false).unwrap();
    assert_eq!(e.key, vec![0x13, 0x89]);
    assert!(e.key_end.is_none() && e.data.is_none());
    let range = box_of(Family::V4, (0, u128::from(u32::MAX)), 6, (5001, 5002));
    assert_eq!(
        map_element(map, &MapElement { key: range, verdict: ElementVerdict::Drop }, false).err(),
        Some(Unsupported::RangeInHash { map: map.into(), field: 4 })
    );
}

#[test]
fn a_batch_wraps_element_messages_and_asks_each_for_an_acknowledgement() {
    let map = "h1_2_0_0_6_0abc_24";
    let key = FlowBox {
        family: Family::V6,
        src: (0, u128::MAX),
        dst: (0, u128::MAX),
        proto: (17, 17),
        sport: (0, 65535),
        dport: (53, 53),
    };
    let goto = MapElement { key, verdict: ElementVerdict::Goto("rj7".into()) };
    let del = KernelOp::NftMapElementsDelete { map: map.into(), elements: vec![goto.clone()] };
    let add = KernelOp::NftMapElementsAdd { map: map.into(), elements: vec![goto] };
    let digests = KernelOp::NftDigestsUpdate { deletes: vec![(1, 2)], adds: vec![(1, 3)] };
    let m = element_batch(&[&del, &add, &digests], 40).unwrap();
    let mut kinds = Vec::new();
    let mut rest = m.bytes();
    while !rest.is_empty() {
        let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
        kinds.push((u16_at(rest, 4), u32::from_ne_bytes(rest[8..12].try_into().unwrap())));
        if u16_at(rest, 4) == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM && kinds.len() == 3 {
            let top = attrs(&rest[20..len]);
            assert_eq!(top[0], (NFTA_SET_ELEM_LIST_TABLE, &b"tessera_policy\0"[..]));
            assert_eq!(top[1], (NFTA_SET_ELEM_LIST_SET, format!("{map}\0").as_bytes()));
            let elem = attrs(attrs(top[2].1)[0].1);
            let key = attrs(elem[0].1)[0].1;
            assert_eq!(key, [[17, 0, 0, 0], [0, 53, 0, 0]].concat());
            let verdict = attrs(attrs(elem[1].1)[0].1);
            assert_eq!(verdict[0], (NFTA_VERDICT_CODE, &NFT_GOTO.to_be_bytes()[..]));
            assert_eq!(verdict[1], (NFTA_VERDICT_CHAIN, &b"rj7\0"[..]));
        }
        rest = &rest[len..];
    }
    let set = |k: u16| (NFNL_SUBSYS_NFTABLES << 8) | k;
    assert_eq!(
        kinds,
        vec![
            (NFNL_MSG_BATCH_BEGIN, 40),
            (set(NFT_MSG_DELSETELEM), 41),
            (set(NFT_MSG_NEWSETELEM), 42),
            (set(NFT_MSG_DELSETELEM), 43),
            (set(NFT_MSG_NEWSETELEM), 44),
            (NFNL_MSG_BATCH_END, 45),
        ]
    );
    assert_eq!(m.acked(), &[41, 42, 43, 44]);
}

#[test]
fn other_actions_are_left_to_nft() {
    let chain = KernelOp::NftChainDelete { name: "l1".into() };
    assert_eq!(element_batch(&[&chain], 1).err(), Some(Unsupported::KernelOp("NftChainDelete")));
}

#[test]
fn elements_written_read_back_as_the_same_key_ranges() {
    let interval = "m1_2_0_0_6_0_40123";
    let hash = "h1_2_0_0_4_0abc_014";
    let v6 = FlowBox {
        family: Family::V6,
        src: (1 << 120, (1 << 120) + 0xffff),
        dst: (0, u128::MAX),
        proto: (17, 17),
        sport: (1024, 65535),
        dport: (53, 53),
    };
    let v4 = FlowBox {
        family: Family::V4,
        src: (0x0a00_0001, 0x0a00_0001),
        dst: (0x0a01_0002, 0x0a01_0002),
        proto: (6, 6),
        sport: (0, 65535),
        dport: (443, 443),
    };
    for (map, key) in [(interval, v6), (hash, v4)] {
        let add =
            KernelOp::NftMapElementsAdd { map: map.into(), elements: vec![MapElement { key, verdict: ElementVerdict::Drop }] };
        let m = element_batch(&[&add], 1).unwrap();
        // The second message, after the batch's beginning (20 bytes).
        let msg = &m.bytes()[20..];
        let len = u32::from_ne_bytes(msg[0..4].try_into().unwrap()) as usize;
        let mut out = Vec::new();
        element_counters(map, &msg[20..len], &mut out).unwrap();
        assert_eq!(out, vec![ElementCounter { map: map.into(), key: key_ranges(&key, &map_fields(map)), packets: 0, bytes: 0 }]);
    }
}

#[test]
fn acknowledgements_are_read_by_sequence() {
    let ack = |seq: u32, errno: i32| {
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes());
        m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&(-errno).to_ne_bytes());
        m.extend_from_slice(&[0; 16]);
        m
    };
    assert_eq!(acks(&[ack(2, 0), ack(1, 95)].concat()), vec![(2, 0), (1, 95)]);
    assert_eq!(acks(&[1, 2, 3]), vec![]);
}
