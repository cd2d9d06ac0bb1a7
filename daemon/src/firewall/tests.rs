//! `desired`, its rendering, `Observed::summarise` and `diff`: no kernel involved.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde_json::{json, Value};

use super::nft::parse_objects;
use super::*;

fn dual_stack() -> PodCidrs {
    PodCidrs {
        v4: Some("10.244.1.0/24".parse().unwrap()),
        v6: Some("fd00:10:244:1::/64".parse().unwrap()),
    }
}

fn cluster_dual() -> Vec<IpNet> {
    vec![
        "10.244.0.0/16".parse().unwrap(),
        "fd00:10:244::/48".parse().unwrap(),
    ]
}

fn addresses(list: &[&str]) -> BTreeSet<IpAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

/// `[ip|ip6] FIELD OP PREFIX` as nft JSON.
fn prefix_match(protocol: &str, field: &str, op: &str, net: &str) -> Value {
    let (addr, len) = net.split_once('/').unwrap();
    let len: u32 = len.parse().unwrap();
    json!({"match": {"left": {"payload": {"protocol": protocol, "field": field}},
                     "right": {"prefix": {"addr": addr, "len": len}}, "op": op}})
}

fn rule(chain: &str, expr: Vec<Value>) -> Value {
    json!({"add": {"rule": {"family": "inet", "table": "weft", "chain": chain, "expr": expr}}})
}

fn nomasq_return(protocol: &str, set: &str) -> Value {
    rule(
        "postrouting",
        vec![
            json!({"match": {"left": {"payload": {"protocol": protocol, "field": "saddr"}}, "right": format!("@{set}"), "op": "=="}}),
            json!({"return": null}),
        ],
    )
}

fn masquerade(protocol: &str, pods: &str, cluster: &str) -> Value {
    rule(
        "postrouting",
        vec![
            prefix_match(protocol, "saddr", "==", pods),
            prefix_match(protocol, "daddr", "!=", cluster),
            json!({"masquerade": null}),
        ],
    )
}

fn accepts(protocol: &str, cluster: &str) -> Vec<Value> {
    Vec::from(["saddr", "daddr"].map(|field| {
        rule(
            "forward",
            vec![
                prefix_match(protocol, field, "==", cluster),
                json!({"accept": null}),
            ],
        )
    }))
}

/// `rule` as the first of its chain: it carries the fingerprint.
fn first(mut rule: Value, fingerprint: &str) -> Value {
    rule["add"]["rule"]["comment"] = json!(format!("weft:{fingerprint}"));
    rule
}

/// The head every replacement starts with: the table replaced, both sets, both base chains.
fn head(v4: &[&str], v6: &[&str]) -> Vec<Value> {
    let table = json!({"family": "inet", "name": "weft"});
    let set = |name: &str, kind: &str, elements: &[&str]| {
        let mut set = json!({"family": "inet", "table": "weft", "name": name, "type": kind});
        if !elements.is_empty() {
            set["elem"] = json!(elements);
        }
        json!({"add": {"set": set}})
    };
    vec![
        json!({"add": {"table": table}}),
        json!({"delete": {"table": table}}),
        json!({"add": {"table": table}}),
        set("nomasq4", "ipv4_addr", v4),
        set("nomasq6", "ipv6_addr", v6),
        json!({"add": {"chain": {"family": "inet", "table": "weft", "name": "postrouting",
            "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}}),
        json!({"add": {"chain": {"family": "inet", "table": "weft", "name": "forward",
            "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}}),
    ]
}

/// The rules of the dual-stack node 10.244.1.0/24, fd00:10:244:1::/64 in 10.244.0.0/16,
/// fd00:10:244::/48, in chain order.
fn dual_stack_rules(fingerprint: &str) -> Vec<Value> {
    let mut rules = vec![
        first(nomasq_return("ip", "nomasq4"), fingerprint),
        masquerade("ip", "10.244.1.0/24", "10.244.0.0/16"),
        nomasq_return("ip6", "nomasq6"),
        masquerade("ip6", "fd00:10:244:1::/64", "fd00:10:244::/48"),
    ];
    let mut forward = accepts("ip", "10.244.0.0/16");
    forward.extend(accepts("ip6", "fd00:10:244::/48"));
    forward[0] = first(forward[0].clone(), fingerprint);
    rules.extend(forward);
    rules
}

fn rendered(firewall: &Firewall) -> Value {
    serde_json::to_value(firewall.replacement()).unwrap()
}

#[test]
fn dual_stack_ruleset_is_the_documented_one() {
    let firewall = desired(&dual_stack(), &cluster_dual(), &BTreeSet::new(), None);
    assert_eq!(
        firewall,
        Firewall {
            masquerade: vec![
                Masquerade {
                    pods: "10.244.1.0/24".parse().unwrap(),
                    cluster: "10.244.0.0/16".parse().unwrap(),
                },
                Masquerade {
                    pods: "fd00:10:244:1::/64".parse().unwrap(),
                    cluster: "fd00:10:244::/48".parse().unwrap(),
                },
            ],
            forward: cluster_dual(),
            unmasqueraded: BTreeSet::new(),
            tunnel: None,
        }
    );
    let fingerprint = firewall.fingerprint();
    let mut expected = head(&[], &[]);
    expected.extend(dual_stack_rules(&fingerprint));
    assert_eq!(rendered(&firewall), json!({ "nftables": expected }));
}

#[test]
fn single_stack_ruleset_has_no_rule_of_the_other_family() {
    let own = PodCidrs {
        v4: Some("10.244.1.0/24".parse().unwrap()),
        v6: None,
    };
    let cluster: Vec<IpNet> = vec!["10.244.0.0/16".parse().unwrap()];
    let firewall = desired(&own, &cluster, &BTreeSet::new(), None);
    let fingerprint = firewall.fingerprint();
    let mut expected = head(&[], &[]);
    expected.extend([
        first(nomasq_return("ip", "nomasq4"), &fingerprint),
        masquerade("ip", "10.244.1.0/24", "10.244.0.0/16"),
    ]);
    let mut forward = accepts("ip", "10.244.0.0/16");
    forward[0] = first(forward[0].clone(), &fingerprint);
    expected.extend(forward);
    assert_eq!(rendered(&firewall), json!({ "nftables": expected }));
}

#[test]
fn unmasqueraded_pods_fill_the_set_of_their_family() {
    let unmasqueraded = addresses(&["10.244.1.7", "fd00:10:244:1::7", "10.244.1.3"]);
    let firewall = desired(&dual_stack(), &cluster_dual(), &unmasqueraded, None);
    let mut expected = head(&["10.244.1.3", "10.244.1.7"], &["fd00:10:244:1::7"]);
    expected.extend(dual_stack_rules(&firewall.fingerprint()));
    assert_eq!(rendered(&firewall), json!({ "nftables": expected }));

    let refill = serde_json::to_value(firewall.refill()).unwrap();
    let set = |name: &str| json!({"family": "inet", "table": "weft", "name": name});
    let mut flush4 = set("nomasq4");
    flush4["type"] = json!("ipv4_addr");
    let mut flush6 = set("nomasq6");
    flush6["type"] = json!("ipv6_addr");
    let mut add4 = set("nomasq4");
    add4["elem"] = json!(["10.244.1.3", "10.244.1.7"]);
    let mut add6 = set("nomasq6");
    add6["elem"] = json!(["fd00:10:244:1::7"]);
    assert_eq!(
        refill,
        json!({"nftables": [
            {"flush": {"set": flush4}}, {"add": {"element": add4}},
            {"flush": {"set": flush6}}, {"add": {"element": add6}},
        ]})
    );
}

#[test]
fn the_fingerprint_follows_the_shape_not_the_set_elements() {
    let base = desired(&dual_stack(), &cluster_dual(), &BTreeSet::new(), None);
    let with_pods = desired(
        &dual_stack(),
        &cluster_dual(),
        &addresses(&["10.244.1.9"]),
        None,
    );
    assert_eq!(base.fingerprint(), with_pods.fingerprint());
    assert_eq!(base.fingerprint().len(), 16);
    let other_cluster = desired(
        &dual_stack(),
        &["10.240.0.0/12".parse().unwrap(), cluster_dual()[1]],
        &BTreeSet::new(),
        None,
    );
    assert_ne!(base.fingerprint(), other_cluster.fingerprint());
    let removal = serde_json::to_value(removal()).unwrap();
    assert_eq!(
        removal,
        json!({"nftables": [
            {"add": {"table": {"family": "inet", "name": "weft"}}},
            {"delete": {"table": {"family": "inet", "name": "weft"}}},
        ]})
    );
}

/// What nft 1.0.6 prints (`nft -j list table inet weft`) for the dual-stack ruleset with one
/// unmasqueraded IPv4 pod (captured), the fingerprint in its comments replaced by `FINGERPRINT`.
const LISTING_1_0_6: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "inet", "name": "weft", "handle": 2}}, {"set": {"family": "inet", "name": "nomasq4", "table": "weft", "type": "ipv4_addr", "handle": 1, "elem": ["10.244.1.9"]}}, {"set": {"family": "inet", "name": "nomasq6", "table": "weft", "type": "ipv6_addr", "handle": 2}}, {"chain": {"family": "inet", "table": "weft", "name": "postrouting", "handle": 3, "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}, {"chain": {"family": "inet", "table": "weft", "name": "forward", "handle": 4, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}, {"rule": {"family": "inet", "table": "weft", "chain": "postrouting", "handle": 5, "comment": "weft:FINGERPRINT", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@nomasq4"}}, {"return": null}]}}, {"rule": {"family": "inet", "table": "weft", "chain": "postrouting", "handle": 6, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.244.1.0", "len": 24}}}}, {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "10.244.0.0", "len": 16}}}}, {"masquerade": null}]}}, {"rule": {"family": "inet", "table": "weft", "chain": "postrouting", "handle": 7, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}}, "right": "@nomasq6"}}, {"return": null}]}}, {"rule": {"family": "inet", "table": "weft", "chain": "postrouting", "handle": 8, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}}, "right": {"prefix": {"addr": "fd00:10:244:1::", "len": 64}}}}, {"match": {"op": "!=", "left": {"payload": {"protocol": "ip6", "field": "daddr"}}, "right": {"prefix": {"addr": "fd00:10:244::", "len": 48}}}}, {"masquerade": null}]}}, {"rule": {"family": "inet", "table": "weft", "chain": "forward", "handle": 9, "comment": "weft:FINGERPRINT", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.244.0.0", "len": 16}}}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "weft", "chain": "forward", "handle": 10, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "10.244.0.0", "len": 16}}}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "weft", "chain": "forward", "handle": 11, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}}, "right": {"prefix": {"addr": "fd00:10:244::", "len": 48}}}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "weft", "chain": "forward", "handle": 12, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "daddr"}}, "right": {"prefix": {"addr": "fd00:10:244::", "len": 48}}}}, {"accept": null}]}}]}"#;

fn observed(listing: &str) -> Observed {
    let (objects, unreadable) = parse_objects(listing.as_bytes()).unwrap();
    assert!(unreadable.is_empty(), "{unreadable:?}");
    Observed::summarise(&objects)
}

fn with_pod() -> Firewall {
    desired(
        &dual_stack(),
        &cluster_dual(),
        &addresses(&["10.244.1.9"]),
        None,
    )
}

fn listing_of(firewall: &Firewall) -> String {
    LISTING_1_0_6.replace("FINGERPRINT", &firewall.fingerprint())
}

#[test]
fn an_unchanged_table_as_nft_lists_it_needs_nothing() {
    let firewall = with_pod();
    let seen = observed(&listing_of(&firewall));
    assert_eq!(seen, Observed::Table(firewall.summary()));
    assert_eq!(diff(&firewall, &seen), None);
}

#[test]
fn a_missing_or_unreadable_table_is_replaced() {
    let firewall = with_pod();
    assert_eq!(
        diff(&firewall, &Observed::Absent),
        Some(FirewallOp::Replace {
            firewall: firewall.clone(),
            drift: Drift::Missing,
        })
    );
    let listing = observed(r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}]}"#);
    assert_eq!(listing, Observed::Absent, "a listing without weft's table");

    let strange = listing_of(&firewall).replace(r#"{"return": null}"#, r#"{"frobnicate": 1}"#);
    let (objects, unreadable) = parse_objects(strange.as_bytes()).unwrap();
    assert_eq!(
        unreadable.len(),
        2,
        "the two rules with the unknown statement"
    );
    assert_eq!(objects.len(), 12);
    let op = diff(&firewall, &Observed::Unreadable(unreadable[0].clone())).unwrap();
    assert!(
        matches!(
            op,
            FirewallOp::Replace {
                drift: Drift::Unreadable(_),
                ..
            }
        ),
        "{op:?}"
    );
}

#[test]
fn a_flushed_chain_or_a_foreign_rule_is_replaced() {
    let firewall = with_pod();
    let listing: Value = serde_json::from_str(&listing_of(&firewall)).unwrap();
    let without_forward_rules: Vec<Value> = listing["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["rule"]["chain"] != "forward")
        .cloned()
        .collect();
    let flushed = json!({ "nftables": without_forward_rules }).to_string();
    let op = diff(&firewall, &observed(&flushed)).unwrap();
    let accept = |rules, comment: Option<String>| {
        Some(ChainSummary {
            rules,
            policy: Some(nftables::types::NfChainPolicy::Accept),
            comment,
        })
    };
    let fingerprint = format!("weft:{}", firewall.fingerprint());
    assert_eq!(
        op,
        FirewallOp::Replace {
            firewall: firewall.clone(),
            drift: Drift::Chain {
                name: "forward".into(),
                want: accept(4, Some(fingerprint)),
                have: accept(0, None),
            },
        }
    );
    assert_eq!(
        op.to_string(),
        "replace table inet weft: chain forward has 0 rules and policy Some(Accept) (want 4 and Some(Accept))"
    );

    let mut extra = listing.clone();
    let rule = json!({"rule": {"family": "inet", "table": "weft", "chain": "forward", "handle": 99,
        "expr": [{"accept": null}]}});
    extra["nftables"].as_array_mut().unwrap().push(rule);
    let op = diff(&firewall, &observed(&extra.to_string())).unwrap();
    assert!(
        matches!(&op, FirewallOp::Replace { drift: Drift::Chain { name, .. }, .. } if name == "forward"),
        "{op:?}"
    );
}

#[test]
fn another_rulesets_table_is_replaced() {
    let firewall = with_pod();
    let old = listing_of(&firewall).replace(&firewall.fingerprint(), "0123456789abcdef");
    let op = diff(&firewall, &observed(&old)).unwrap();
    assert_eq!(
        op,
        FirewallOp::Replace {
            firewall: firewall.clone(),
            drift: Drift::Fingerprint {
                chain: "forward".into(),
                want: Some(format!("weft:{}", firewall.fingerprint())),
                have: Some("weft:0123456789abcdef".into()),
            },
        }
    );
    // A comment-less table (made by hand, or by a weft that predates fingerprints).
    let listing: Value = serde_json::from_str(&listing_of(&firewall)).unwrap();
    let mut bare = listing.clone();
    for object in bare["nftables"].as_array_mut().unwrap() {
        if let Some(rule) = object.get_mut("rule").and_then(Value::as_object_mut) {
            rule.remove("comment");
        }
    }
    let op = diff(&firewall, &observed(&bare.to_string())).unwrap();
    assert!(
        op.to_string()
            .contains("was made for another ruleset (comment None"),
        "{op}"
    );
    // A set someone deleted (nomasq6 is unreferenced on an IPv4-only node) or added.
    for (set, wanted) in [("nomasq6", true), ("extra", false)] {
        let mut changed = listing.clone();
        let objects = changed["nftables"].as_array_mut().unwrap();
        if wanted {
            objects.retain(|o| o["set"]["name"] != set);
        } else {
            objects.push(
                json!({"set": {"family": "inet", "table": "weft", "name": set,
                "type": "ipv4_addr", "handle": 50}}),
            );
        }
        let op = diff(&firewall, &observed(&changed.to_string())).unwrap();
        let drift = Drift::Set {
            name: set.into(),
            wanted,
        };
        assert_eq!(
            op,
            FirewallOp::Replace {
                firewall: firewall.clone(),
                drift
            }
        );
    }
}

#[test]
fn changed_set_elements_are_refilled_not_replaced() {
    let firewall = with_pod();
    let seen = observed(&listing_of(&firewall));
    let more = desired(
        &dual_stack(),
        &cluster_dual(),
        &addresses(&["10.244.1.9", "fd00:10:244:1::9"]),
        None,
    );
    assert_eq!(diff(&more, &seen), Some(FirewallOp::Refill(more.clone())));
    let none = desired(&dual_stack(), &cluster_dual(), &BTreeSet::new(), None);
    let op = diff(&none, &seen).unwrap();
    assert_eq!(op, FirewallOp::Refill(none.clone()));
    assert_eq!(
        op.to_string(),
        "refill sets nomasq4 and nomasq6: 0 address(es) not masqueraded"
    );
    // An element that is no plain address (weft adds none) is refilled away too.
    let odd = listing_of(&firewall).replace(
        r#""elem": ["10.244.1.9"]"#,
        r#""elem": ["10.244.1.9", {"prefix": {"addr": "10.0.0.0", "len": 8}}]"#,
    );
    assert_eq!(
        diff(&firewall, &observed(&odd)),
        Some(FirewallOp::Refill(firewall.clone()))
    );
}
