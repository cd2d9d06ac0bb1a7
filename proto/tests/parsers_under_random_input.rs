//! Every parser of untrusted input in `weft-proto`, under random input (proptest): node records
//! and their `weft.dev/*` annotations (what a peer publishes, in every store), the CNI network
//! configuration, environment, `CNI_ARGS` and results (what a runtime or another plugin hands
//! over), and the shim's socket protocol. None may panic; each either parses or returns its
//! error, and what parses encodes back to the same thing.
//!
//! Cases per property: [`CASES`] (proptest's shrinking then gives the smallest failing input).
//! Run: `cargo test -p weft-proto --test parsers_under_random_input`.

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::Value;
use weft_proto::annotations;
use weft_proto::cni::{parse_cni_args, CniEnv, CniResult, NetConf};
use weft_proto::lease::{Lease, NodeRecord, PodCidrs};
use weft_proto::shim;

/// Cases per property.
const CASES: u32 = 2000;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        ..ProptestConfig::default()
    }
}

/// Any JSON value, a few levels deep, with keys and strings that look like weft's own.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Strings that are sometimes weft's own values (addresses, CIDRs, versions, keys) and
/// sometimes anything at all.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9a-f:./-]{0,40}",
        Just("10.244.1.0/24".to_string()),
        Just("fd00:10:244:1::/64".to_string()),
        Just("1.0.0".to_string()),
        Just("0.4.0".to_string()),
        Just("weft".to_string()),
        Just("vxlan".to_string()),
        Just("wireguard".to_string()),
        Just("02:00:00:00:01:04".to_string()),
        Just("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".to_string()),
    ]
}

/// Object keys: the ones weft reads, and random ones.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "cniVersion",
            "name",
            "type",
            "ipMasq",
            "mtu",
            "daemonSocket",
            "prevResult",
            "runtimeConfig",
            "capabilities",
            "ips",
            "routes",
            "interfaces",
            "dns",
            "address",
            "gateway",
            "interface",
            "dst",
            "gw",
            "mac",
            "sandbox",
            "cni.dev/attachments",
            "cni.dev/valid-attachments",
            "containerID",
            "ifname",
            "podCIDRs",
            "annotations",
            "expires",
        ])
        .prop_map(String::from),
        any::<String>(),
    ]
}

/// `weft.dev/*` annotations with values that are often nearly right.
fn annotation_map() -> impl Strategy<Value = BTreeMap<String, String>> {
    let keys = prop::sample::select(vec![
        "weft.dev/backend",
        "weft.dev/public-ip",
        "weft.dev/public-ipv6",
        "weft.dev/vtep-mac",
        "weft.dev/vtep-mac-v6",
        "weft.dev/wireguard-public-key",
        "weft.dev/wireguard-port",
        "weft.dev/unknown",
        "other.io/thing",
    ])
    .prop_map(String::from);
    prop::collection::btree_map(prop_oneof![keys, any::<String>()], text(), 0..8)
}

fn pod_cidrs() -> impl Strategy<Value = PodCidrs> {
    (any::<Option<[u8; 2]>>(), any::<Option<u16>>()).prop_map(|(v4, v6)| PodCidrs {
        v4: v4.map(|[a, b]| format!("10.{a}.{b}.0/24").parse().unwrap()),
        v6: v6.map(|n| format!("fd00:10:244:{n:x}::/64").parse().unwrap()),
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn annotations_decode_or_refuse_and_what_decodes_encodes_back(
        map in annotation_map(),
        cidrs in pod_cidrs(),
    ) {
        if let Ok((ips, backend)) = annotations::decode(&map, &cidrs) {
            let encoded = annotations::encode(&ips, &backend);
            prop_assert_eq!(annotations::decode(&encoded, &cidrs).ok(), Some((ips, backend)));
        }
    }

    #[test]
    fn node_records_parse_or_refuse(record in json()) {
        if let Ok(record) = serde_json::from_value::<NodeRecord>(record) {
            if let Ok(lease) = Lease::from_record(&record) {
                let back = Lease::from_record(&lease.to_record());
                prop_assert_eq!(back.ok(), Some(lease));
            }
        }
    }

    #[test]
    fn node_records_from_raw_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(record) = serde_json::from_slice::<NodeRecord>(&bytes) {
            let _ = Lease::from_record(&record);
        }
    }

    #[test]
    fn network_configurations_parse_or_name_the_problem(value in json()) {
        let bytes = serde_json::to_vec(&value).unwrap();
        if let Err(e) = NetConf::parse(&bytes) {
            prop_assert!(matches!(e.code, 1 | 6 | 7), "code {}: {}", e.code, e.msg);
            prop_assert!(!e.msg.is_empty());
        }
    }

    #[test]
    fn configuration_bytes_that_are_not_json_are_code_6(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if serde_json::from_slice::<Value>(&bytes).is_err() {
            let e = NetConf::parse(&bytes).unwrap_err();
            prop_assert_eq!(e.code, 6);
        }
    }

    #[test]
    fn results_of_other_plugins_parse_or_refuse(value in json()) {
        let _ = CniResult::from_json(&value);
    }

    #[test]
    fn the_cni_environment_parses_or_refuses(
        env in prop::collection::btree_map(
            prop_oneof![
                prop::sample::select(vec![
                    "CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS",
                    "CNI_PATH",
                ]).prop_map(String::from),
                any::<String>(),
            ],
            prop_oneof![
                prop::sample::select(vec!["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION", "eth0", "/var/run/netns/x"]).prop_map(String::from),
                any::<String>(),
            ],
            0..8,
        ),
    ) {
        let _ = CniEnv::from_map(&env);
    }

    #[test]
    fn cni_args_parse_or_refuse(raw in any::<String>()) {
        let _ = parse_cni_args(&raw);
    }

    #[test]
    fn the_shim_protocol_decodes_or_refuses(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        let _ = shim::decode_request(&bytes);
        let _ = shim::decode_reply(&bytes);
    }

    #[test]
    fn the_shim_protocol_survives_json_that_is_nearly_right(value in json()) {
        let bytes = serde_json::to_vec(&value).unwrap();
        let _ = shim::decode_request(&bytes);
        let _ = shim::decode_reply(&bytes);
    }
}

/// A node's published data as it could really be: one backend, MACs for the families it holds.
fn published() -> impl Strategy<
    Value = (
        PodCidrs,
        weft_proto::lease::PublicIps,
        weft_proto::lease::BackendData,
    ),
> {
    use weft_proto::lease::{BackendData, MacAddr, PublicIps, WgPublicKey};
    // At least one underlay address (a record without one is refused), from the documentation
    // ranges: unicast, as a real node's.
    let ips = (any::<u8>(), any::<u16>(), 0..3u8).prop_map(|(a, b, which)| PublicIps {
        v4: (which != 1).then(|| std::net::Ipv4Addr::new(192, 0, 2, a)),
        v6: (which != 0).then(|| std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, b)),
    });
    let mac = any::<[u8; 5]>().prop_map(|m| MacAddr([0x02, m[0], m[1], m[2], m[3], m[4]]));
    (
        pod_cidrs(),
        ips,
        mac.clone(),
        mac,
        any::<[u8; 32]>(),
        1..=u16::MAX,
        any::<bool>(),
    )
        .prop_map(|(cidrs, ips, m4, m6, key, port, wireguard)| {
            let backend = if wireguard {
                BackendData::WireGuard {
                    public_key: WgPublicKey(key),
                    port,
                }
            } else {
                BackendData::Vxlan {
                    vtep_mac: cidrs.v4.map(|_| m4),
                    vtep_mac_v6: cidrs.v6.map(|_| m6),
                }
            };
            (cidrs, ips, backend)
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn what_a_node_publishes_decodes_to_itself((cidrs, ips, backend) in published()) {
        let encoded = annotations::encode(&ips, &backend);
        prop_assert_eq!(annotations::decode(&encoded, &cidrs).ok(), Some((ips, backend)));
    }

    #[test]
    fn a_refused_annotation_is_named(map in annotation_map(), cidrs in pod_cidrs()) {
        if let Err(e) = annotations::decode(&map, &cidrs) {
            let text = e.to_string();
            prop_assert!(text.contains("weft.dev/"), "{}", text);
        }
    }
}
