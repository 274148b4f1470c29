//! Fuzzing the decoders with proptest (stable Rust has no cargo-fuzz): any
//! input gives a value or an error, never a panic, and every result the
//! plugin can write reads back the same.

use proptest::prelude::*;
use serde_json::Value;
use tessera_cni::{CniResult, Dns, Interface, IpConfig, NetConf, Route, Version};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "[a-z0-9./:\"-]{0,12}".prop_map(Value::from),
        prop_oneof![Just("1.1.0"), Just("0.4.0"), Just("tessera"), Just("10.0.0.1/24"), Just("eth0")].prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("cniVersion".to_string()),
                    Just("name".to_string()),
                    Just("type".to_string()),
                    Just("prevResult".to_string()),
                    Just("ips".to_string()),
                    Just("interfaces".to_string()),
                    Just("address".to_string()),
                    Just("interface".to_string()),
                    Just("routes".to_string()),
                    Just("dns".to_string()),
                    Just("runtimeConfig".to_string()),
                    "[a-z]{1,6}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn result() -> impl Strategy<Value = CniResult> {
    let iface = (
        "[a-z0-9]{1,15}",
        proptest::option::of("02:[0-9a-f]{2}:00:00:00:01"),
        proptest::option::of(Just("/run/netns/x".to_string())),
    )
        .prop_map(|(name, mac, sandbox)| Interface { name, mac, mtu: None, sandbox });
    (prop::collection::vec(iface, 1..3), prop::collection::vec((any::<[u8; 4]>(), 0u8..=32), 0..3)).prop_map(
        |(interfaces, v4)| {
            let ips = v4
                .into_iter()
                .map(|(a, p)| IpConfig {
                    address: ipnet::IpNet::new(std::net::Ipv4Addr::from(a).into(), p).unwrap(),
                    gateway: None,
                    interface: Some(0),
                })
                .collect();
            CniResult {
                interfaces,
                ips,
                routes: vec![Route { dst: "0.0.0.0/0".parse().unwrap(), gw: Some("10.0.0.1".parse().unwrap()) }],
                dns: Dns::default(),
            }
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn config_decoder_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = NetConf::parse(&bytes);
    }

    #[test]
    fn config_decoder_never_panics_on_json(doc in json_value()) {
        let _ = NetConf::parse(doc.to_string().as_bytes());
        let _ = CniResult::from_json(&doc);
    }

    #[test]
    fn results_round_trip(r in result(), v in prop::sample::select(Version::SUPPORTED.to_vec())) {
        prop_assert_eq!(CniResult::from_json(&r.to_json(v)).unwrap(), r);
    }
}
