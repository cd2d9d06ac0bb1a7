//! weftd's nftables driver (`weftd::firewall::nft`) against the kernel, as root, in a network
//! namespace of the test's own: one thread enters a new namespace (`unshare(CLONE_NEWNET)`) and
//! does all the work there, `nft` running as its child inherits it, and the namespace with
//! everything in it is gone when the thread ends — whether the test passes or panics. Nothing on
//! the host (nor in another test's namespace) is read or changed.
//!
//! Run: `cargo test -p weft-lab --test firewall_nft`.

use std::collections::BTreeSet;
use std::net::IpAddr;
use weft_lab::netns::in_fresh_netns;

use ipnet::IpNet;
use weft_proto::lease::PodCidrs;
use weftd::firewall::nft::{self, NftError};
use weftd::firewall::{self, Drift, Firewall, FirewallOp, Observed};

/// Run `nft ARGS` as the operator would; its standard output.
fn nft_cli(args: &[&str]) -> String {
    weft_lab::netns::run(&[&["nft"], args].concat()).unwrap_or_else(|e| panic!("{e}"))
}

fn node_firewall(unmasqueraded: &[&str]) -> Firewall {
    let own = PodCidrs {
        v4: Some("10.244.3.0/24".parse().unwrap()),
        v6: Some("fd00:10:244:3::/64".parse().unwrap()),
    };
    let cluster: Vec<IpNet> = vec![
        "10.244.0.0/16".parse().unwrap(),
        "fd00:10:244::/48".parse().unwrap(),
    ];
    let unmasqueraded: BTreeSet<IpAddr> =
        unmasqueraded.iter().map(|a| a.parse().unwrap()).collect();
    firewall::desired(&own, &cluster, &unmasqueraded, None)
}

/// Observe, diff, apply what the diff says; the operation applied, if any.
fn converge(desired: &Firewall) -> Result<Option<FirewallOp>, NftError> {
    let op = firewall::diff(desired, &nft::observe()?);
    if let Some(op) = &op {
        nft::apply(op)?;
    }
    Ok(op)
}

#[test]
fn apply_observe_and_repair_a_flushed_chain() {
    in_fresh_netns(|| {
        assert_eq!(nft::observe().unwrap(), Observed::Absent);
        let desired = node_firewall(&["10.244.3.7"]);
        let op = converge(&desired).unwrap().expect("a table to make");
        assert!(
            matches!(
                op,
                FirewallOp::Replace {
                    drift: Drift::Missing,
                    ..
                }
            ),
            "{op:?}"
        );
        assert_eq!(
            firewall::diff(&desired, &nft::observe().unwrap()),
            None,
            "apply → observe → nothing to do"
        );
        let listing = nft_cli(&["list", "table", "inet", "weft"]);
        for line in [
            "ip saddr @nomasq4 return comment",
            "ip saddr 10.244.3.0/24 ip daddr != 10.244.0.0/16 masquerade",
            "ip6 saddr fd00:10:244:3::/64 ip6 daddr != fd00:10:244::/48 masquerade",
            "ip6 daddr fd00:10:244::/48 accept",
            "elements = { 10.244.3.7 }",
        ] {
            assert!(listing.contains(line), "no {line:?} in\n{listing}");
        }

        // An operator flushes a chain: the diff sees it and the table is made whole again.
        nft_cli(&["flush", "chain", "inet", "weft", "forward"]);
        let op = converge(&desired).unwrap().expect("a repair");
        assert!(
            matches!(&op, FirewallOp::Replace { drift: Drift::Chain { name, .. }, .. } if name == "forward"),
            "{op:?}"
        );
        assert_eq!(firewall::diff(&desired, &nft::observe().unwrap()), None);
        let forward = nft_cli(&["list", "chain", "inet", "weft", "forward"]);
        let rules = forward
            .lines()
            .filter(|l| l.trim_start().starts_with("ip"))
            .count();
        assert_eq!(rules, 4, "{forward}");
    });
}

#[test]
fn set_changes_refill_and_removal_leaves_nothing() {
    in_fresh_netns(|| {
        converge(&node_firewall(&[])).unwrap();
        let more = node_firewall(&["10.244.3.9", "fd00:10:244:3::9"]);
        let op = converge(&more).unwrap();
        assert_eq!(op, Some(FirewallOp::Refill(more.clone())));
        assert_eq!(firewall::diff(&more, &nft::observe().unwrap()), None);
        let set6 = nft_cli(&["list", "set", "inet", "weft", "nomasq6"]);
        assert!(set6.contains("fd00:10:244:3::9"), "{set6}");

        // An element added by hand goes at the next pass; emptying both sets works too.
        nft_cli(&[
            "add",
            "element",
            "inet",
            "weft",
            "nomasq4",
            "{ 10.244.3.200 }",
        ]);
        assert_eq!(
            converge(&more).unwrap(),
            Some(FirewallOp::Refill(more.clone()))
        );
        let none = node_firewall(&[]);
        assert_eq!(
            converge(&none).unwrap(),
            Some(FirewallOp::Refill(none.clone()))
        );
        assert_eq!(firewall::diff(&none, &nft::observe().unwrap()), None);

        nft::remove().unwrap();
        assert_eq!(nft::observe().unwrap(), Observed::Absent);
        nft::remove().expect("removing an absent table is fine");
    });
}

#[test]
fn forward_drop_chains_of_other_tables_are_named() {
    in_fresh_netns(|| {
        converge(&node_firewall(&[])).unwrap();
        nft_cli(&["add", "table", "ip", "filt"]);
        nft_cli(&[
            "add",
            "chain",
            "ip",
            "filt",
            "FORWARD",
            "{ type filter hook forward priority 0; policy drop; }",
        ]);
        let chains = nft::list_chains().unwrap();
        assert_eq!(nft::forward_drop_chains(&chains), ["ip filt FORWARD"]);
        let err = nft::apply(&FirewallOp::Replace {
            firewall: Firewall {
                forward: vec!["10.244.0.0/16".parse().unwrap()],
                masquerade: vec![firewall::Masquerade {
                    pods: "10.244.3.0/24".parse().unwrap(),
                    cluster: "fd00:10:244::/48".parse().unwrap(),
                }],
                unmasqueraded: BTreeSet::new(),
                tunnel: None,
            },
            drift: Drift::Missing,
        })
        .unwrap_err();
        assert!(
            matches!(&err, NftError::Failed { stderr, .. } if !stderr.is_empty()),
            "nft's reason is in the error: {err}"
        );
        assert_eq!(
            firewall::diff(&node_firewall(&[]), &nft::observe().unwrap()),
            None,
            "a refused batch changes nothing"
        );
    });
}

/// Issue "Faults and hostile input", case 5: with a tunnel to guard, only current peers may send
/// to its port. Applied, read back without drift, a peer change is a refill of the sets alone, and
/// a real packet from a stranger to the port is dropped while a peer's is not (counted by the
/// input chain's counters, in the test's own namespace over a veth pair).
#[test]
fn the_tunnel_port_takes_only_peers_and_a_peer_change_refills_the_sets() {
    in_fresh_netns(|| {
        for line in [
            "ip link add t0 type veth peer name t1",
            "ip addr add 192.0.2.1/24 dev t0",
            "ip addr add 192.0.2.2/24 dev t1",
            "ip addr add 192.0.2.3/24 dev t1",
            "ip link set t0 up",
            "ip link set t1 up",
            "ip link set lo up",
        ] {
            weft_lab::netns::run(&line.split_whitespace().collect::<Vec<_>>()).unwrap();
        }
        let guarded = |peers: &[&str]| {
            let mut desired = node_firewall(&[]);
            desired.tunnel = Some(firewall::TunnelGuard {
                port: 8472,
                peers: peers.iter().map(|a| a.parse().unwrap()).collect(),
            });
            desired
        };
        let desired = guarded(&["192.0.2.2"]);
        converge(&desired).unwrap().expect("a table to make");
        assert_eq!(firewall::diff(&desired, &nft::observe().unwrap()), None);
        let listing = nft_cli(&["list", "table", "inet", "weft"]);
        for line in [
            "udp dport 8472 ip saddr != @peers4 drop",
            "udp dport 8472 ip6 saddr != @peers6 drop",
            "ip saddr 10.244.0.0/16 udp dport 8472 drop",
            "elements = { 192.0.2.2 }",
        ] {
            assert!(listing.contains(line), "no {line:?} in\n{listing}");
        }
        // The peer set follows the peers without replacing the table.
        let moved = guarded(&["192.0.2.2", "192.0.2.9"]);
        let op = converge(&moved).unwrap().expect("a refill");
        assert!(matches!(op, FirewallOp::Refill(_)), "{op:?}");

        // Packets to 192.0.2.1:8472 from a peer (192.0.2.2) and a stranger (192.0.2.3): only
        // the stranger's is dropped. A listener on the port counts what gets through.
        let listener = std::net::UdpSocket::bind("192.0.2.1:8472").unwrap();
        listener
            .set_read_timeout(Some(std::time::Duration::from_millis(300)))
            .unwrap();
        let got = |from: &str| {
            let sender = std::net::UdpSocket::bind(format!("{from}:0")).unwrap();
            sender.send_to(from.as_bytes(), "192.0.2.1:8472").unwrap();
            let mut buf = [0u8; 64];
            match listener.recv_from(&mut buf) {
                Ok((n, _)) => String::from_utf8_lossy(&buf[..n]).into_owned(),
                Err(_) => String::new(),
            }
        };
        assert_eq!(
            got("192.0.2.2"),
            "192.0.2.2",
            "a peer reaches the tunnel port"
        );
        assert_eq!(got("192.0.2.3"), "", "a stranger does not");
    });
}
