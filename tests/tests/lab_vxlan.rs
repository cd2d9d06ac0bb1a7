//! Across nodes, in the lab: VXLAN tunnels, routes, masquerade, node churn, restarts and hostile
//! peer records. Each test builds its own lab (root) and removes it when it ends, even on failure.
//!
//! Run: `cargo build --workspace && cargo test -p weft-lab --test lab_vxlan`.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use weft_lab::capture::{read, Capture};
use weft_lab::flow::TcpFlow;
use weft_lab::lab::{render_matrix, Lab, LabConfig, OUTSIDE_V4, OUTSIDE_V6};

fn lab(nodes: usize, pods: usize) -> Lab {
    Lab::up(LabConfig {
        nodes,
        pods_per_node: pods,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

fn node_exec(lab: &Lab, node: usize, args: &[&str]) -> String {
    lab.nodes[node]
        .netns
        .exec(args)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The address `listener_ns` sees when `client_ns` connects to `target`.
fn peer_address_seen(
    lab: &Lab,
    client: &weft_lab::netns::NetnsGuard,
    server: &weft_lab::netns::NetnsGuard,
    target: IpAddr,
) -> IpAddr {
    let listener = server.tcp_listen(SocketAddr::new(target, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let accept = std::thread::spawn(move || listener.accept().map(|(_, peer)| peer.ip()));
    let _ = lab;
    let stream = client
        .tcp_connect(SocketAddr::new(target, port), Duration::from_secs(3))
        .expect("connect");
    drop(stream);
    accept.join().unwrap().unwrap()
}

#[test]
fn three_nodes_dual_stack_every_pod_reaches_every_pod_and_the_outside() {
    let lab = lab(3, 2);
    let probes = lab.wait_converged(Duration::from_secs(10));
    let matrix = render_matrix(&probes);
    let pod_pairs = probes.iter().filter(|p| p.to != "outside").count();
    assert_eq!(pod_pairs, 30 * 2, "30 ordered pairs on both families");
    assert!(
        probes.iter().all(|p| p.ok),
        "not everything answered:\n{matrix}"
    );

    // Egress: the outside sees the node's address; pod to pod keeps the pod's address.
    for pod in &lab.pods {
        let node = &lab.nodes[pod.node];
        let seen = peer_address_seen(&lab, &pod.netns, &lab.outside, IpAddr::V4(OUTSIDE_V4));
        assert_eq!(seen, IpAddr::V4(node.underlay_v4), "{} → outside", pod.name);
        let seen = peer_address_seen(&lab, &pod.netns, &lab.outside, IpAddr::V6(OUTSIDE_V6));
        assert_eq!(
            seen,
            IpAddr::V6(node.underlay_v6),
            "{} → outside (IPv6)",
            pod.name
        );
    }
    let (a, b) = (&lab.pods[0], &lab.pods[5]);
    assert_ne!(a.node, b.node);
    for (target, source) in [
        (IpAddr::V4(b.v4.unwrap()), IpAddr::V4(a.v4.unwrap())),
        (IpAddr::V6(b.v6.unwrap()), IpAddr::V6(a.v6.unwrap())),
    ] {
        assert_eq!(
            peer_address_seen(&lab, &a.netns, &b.netns, target),
            source,
            "pod-to-pod keeps its source"
        );
    }
}

#[test]
fn the_node_shows_what_a_flannel_user_expects() {
    let lab = lab(2, 1);
    lab.wait_converged(Duration::from_secs(10));
    let link = node_exec(&lab, 0, &["ip", "-d", "link", "show", "weft.vxlan"]);
    for words in [
        "vxlan id 1",
        "local 192.0.2.11",
        "dstport 8472",
        "nolearning",
        "mtu 1450",
    ] {
        assert!(
            link.contains(words),
            "ip -d link show weft.vxlan lacks {words:?}:\n{link}"
        );
    }
    let link6 = node_exec(&lab, 0, &["ip", "-d", "link", "show", "weft-v6.vxlan"]);
    assert!(link6.contains("vxlan id 2"), "{link6}");
    let routes = node_exec(&lab, 0, &["ip", "route"]);
    assert!(
        routes.contains("10.244.1.0/24 via 10.244.1.0 dev weft.vxlan proto 87 onlink"),
        "{routes}"
    );
    let routes6 = node_exec(&lab, 0, &["ip", "-6", "route"]);
    assert!(
        routes6.contains("fd00:10:244:1::/64 via fd00:10:244:1:: dev weft-v6.vxlan"),
        "{routes6}"
    );
    let fdb = node_exec(&lab, 0, &["bridge", "fdb", "show", "dev", "weft.vxlan"]);
    assert!(fdb.contains("dst 192.0.2.12 self permanent"), "{fdb}");
    let neigh = node_exec(&lab, 0, &["ip", "neigh", "show", "dev", "weft.vxlan"]);
    assert!(
        neigh.contains("10.244.1.0 lladdr") && neigh.contains("PERMANENT"),
        "{neigh}"
    );
    let nft = node_exec(&lab, 0, &["nft", "list", "table", "inet", "weft"]);
    assert!(
        nft.contains("ip saddr 10.244.0.0/24 ip daddr != 10.244.0.0/16 masquerade"),
        "{nft}"
    );
    let tables = node_exec(&lab, 0, &["nft", "list", "tables"]);
    assert_eq!(
        tables.trim(),
        "table inet weft",
        "no other table is created"
    );
}

#[test]
fn a_new_node_is_reachable_within_two_seconds_and_a_removed_one_leaves_nothing() {
    let mut lab = lab(2, 1);
    lab.wait_converged(Duration::from_secs(10));
    let node = lab.add_node().unwrap();
    let pod = lab.add_pod(node).unwrap();
    let started = Instant::now();
    let target = lab.pods[pod].v4.unwrap().to_string();
    let target6 = lab.pods[pod].v6.unwrap().to_string();
    let reached = weft_lab::procs::wait_for(Duration::from_secs(5), || {
        lab.pods[..pod]
            .iter()
            .all(|p| p.netns.ping(&target, 1) && p.netns.ping(&target6, 1))
            .then_some(())
    });
    let took = started.elapsed();
    eprintln!("new node reachable from every pod after {took:?}");
    assert!(
        reached.is_some() && took < Duration::from_secs(2),
        "took {took:?}"
    );

    // Node 3 leaves: its lease goes, and the others remove its route, neighbour and FDB entries.
    let leaving_cidr = "10.244.2.0/24";
    assert!(node_exec(&lab, 0, &["ip", "route"]).contains(leaving_cidr));
    lab.remove_pod(pod);
    lab.stop_daemon(node, false);
    let mut leave = lab.weftd_command(node);
    let args: Vec<_> = leave.get_args().map(|a| a.to_owned()).collect();
    let leave_args: Vec<_> = args
        .iter()
        .skip_while(|a| *a != "run")
        .skip(1)
        .cloned()
        .collect();
    let status = lab.nodes[node]
        .netns
        .command(weft_lab::procs::bin_path("weftd").to_str().unwrap())
        .arg("leave")
        .args(leave_args)
        .status()
        .unwrap();
    assert!(status.success());
    let _ = &mut leave;
    let gone = weft_lab::procs::wait_for(Duration::from_secs(5), || {
        [0, 1]
            .iter()
            .all(|n| {
                let state = node_exec(&lab, *n, &["ip", "route"])
                    + &node_exec(&lab, *n, &["ip", "neigh", "show", "dev", "weft.vxlan"])
                    + &node_exec(&lab, *n, &["bridge", "fdb", "show", "dev", "weft.vxlan"]);
                !state.contains("10.244.2.0") && !state.contains("192.0.2.13")
            })
            .then_some(())
    });
    assert!(
        gone.is_some(),
        "node-3's entries remain:\n{}",
        node_exec(&lab, 0, &["ip", "route"])
    );
}

#[test]
fn a_tcp_stream_survives_weftd_restarts_on_both_ends() {
    let mut lab = lab(2, 1);
    lab.wait_converged(Duration::from_secs(10));
    let (client_pod, server_pod) = (&lab.pods[0], &lab.pods[1]);
    let target = SocketAddr::new(IpAddr::V4(server_pod.v4.unwrap()), 5201);
    let flow = TcpFlow::start(&client_pod.netns, &server_pod.netns, target).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    lab.stop_daemon(0, false); // SIGTERM
    lab.start_daemon(0).unwrap();
    lab.stop_daemon(1, true); // SIGKILL
    lab.start_daemon(1).unwrap();
    assert!(
        flow.time_to_progress(Duration::from_millis(1500)).is_some(),
        "bytes kept flowing after the restarts"
    );
    let (sent, received) = flow.finish(Duration::from_secs(2));
    assert_eq!(
        received,
        sent.expect("the stream never broke"),
        "every byte sent arrived"
    );
    for node in &lab.nodes {
        let log = node.log();
        assert!(
            log.matches("lease acquired").count() >= 2,
            "{} restarted:\n{log}",
            node.name
        );
        for removal in [
            "op=ip route del",
            "op=ip neigh del",
            "op=bridge fdb del",
            "op=ip link del",
        ] {
            assert!(
                !log.contains(removal),
                "{}: a restart removed entries ({removal}):\n{log}",
                node.name
            );
        }
    }
}

#[test]
fn hostile_peer_records_are_refused_and_the_real_owner_keeps_working() {
    let lab = lab(2, 1);
    // The owner must be accepted (an incumbent) before the thief shows up; otherwise the thief is
    // an open conflict that refuses both, which is the policy, not what this test is about.
    let probes = lab.wait_converged(Duration::from_secs(30));
    assert!(probes.iter().all(|p| p.ok), "{}", render_matrix(&probes));
    let nodes_dir = lab.dir.join("store").join("nodes");
    let record = |name: &str, cidr: &str, ip: &str, mac: &str| {
        serde_json::json!({
            "name": name,
            "podCIDRs": [cidr],
            "annotations": {
                "weft.dev/backend": "vxlan",
                "weft.dev/public-ip": ip,
                "weft.dev/vtep-mac": mac,
            },
            "expires": 4_000_000_000u64,
        })
        .to_string()
    };
    // A malformed VTEP MAC, and a node claiming node-2's pod CIDR.
    std::fs::write(
        nodes_dir.join("bad-mac.json"),
        record("bad-mac", "10.244.7.0/24", "192.0.2.77", "zz:zz"),
    )
    .unwrap();
    std::fs::write(
        nodes_dir.join("thief.json"),
        record("thief", "10.244.1.0/24", "192.0.2.66", "02:00:00:00:66:66"),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));

    let log = lab.nodes[0].log();
    assert!(
        log.contains("bad-mac.json") && log.contains("weft.dev/vtep-mac"),
        "the malformed record is named:\n{log}"
    );
    assert!(
        log.contains("peer thief refused"),
        "the thief is refused with a warning:\n{log}"
    );
    let state = node_exec(&lab, 0, &["ip", "route"])
        + &node_exec(&lab, 0, &["bridge", "fdb", "show", "dev", "weft.vxlan"]);
    assert!(
        !state.contains("192.0.2.66")
            && !state.contains("192.0.2.77")
            && !state.contains("10.244.7.0"),
        "{state}"
    );
    assert!(
        state.contains("10.244.1.0/24 via 10.244.1.0 dev weft.vxlan"),
        "the owner's route stays:\n{state}"
    );
    let probes = lab.probes();
    assert!(
        probes.iter().all(|p| p.ok),
        "the owner's traffic is unaffected:\n{}",
        render_matrix(&probes)
    );
}

#[test]
fn single_stack_clusters_get_single_stack_pods() {
    for (ipv6, ipv6_only) in [(false, false), (false, true)] {
        let config = LabConfig {
            nodes: 2,
            pods_per_node: 1,
            ipv6,
            ipv6_only,
            ..Default::default()
        };
        let lab = Lab::up(config).unwrap_or_else(|e| panic!("{e}"));
        for pod in &lab.pods {
            assert_eq!(
                pod.v4.is_some(),
                !ipv6_only,
                "{}: {:?}",
                pod.name,
                pod.addresses()
            );
            assert_eq!(
                pod.v6.is_some(),
                ipv6_only,
                "{}: {:?}",
                pod.name,
                pod.addresses()
            );
        }
        let links = node_exec(&lab, 0, &["ip", "-o", "link", "show"]);
        assert_eq!(links.contains("weft.vxlan"), !ipv6_only, "{links}");
        assert_eq!(links.contains("weft-v6.vxlan"), ipv6_only, "{links}");
        let probes = lab.wait_converged(Duration::from_secs(10));
        assert!(
            probes.iter().all(|p| p.ok),
            "ipv6_only={ipv6_only}:\n{}",
            render_matrix(&probes)
        );
    }
}

#[test]
fn an_ipv6_underlay_carries_both_pod_families() {
    let config = LabConfig {
        nodes: 2,
        pods_per_node: 1,
        ipv6_underlay: true,
        ..Default::default()
    };
    let lab = Lab::up(config).unwrap_or_else(|e| panic!("{e}"));
    let probes = lab.wait_converged(Duration::from_secs(10));
    assert!(probes.iter().all(|p| p.ok), "\n{}", render_matrix(&probes));
    let link = node_exec(&lab, 0, &["ip", "-d", "link", "show", "weft.vxlan"]);
    assert!(
        link.contains("local 2001:db8::11") && link.contains("mtu 1430"),
        "{link}"
    );
    let fdb = node_exec(&lab, 0, &["bridge", "fdb", "show", "dev", "weft-v6.vxlan"]);
    assert!(fdb.contains("dst 2001:db8::12"), "{fdb}");
}

#[test]
fn cleanup_removes_everything_weft_made() {
    // node-1 routes node-2 directly (the routed underlay's shared subnet) and node-3 through
    // VXLAN: both kinds of route must go.
    let mut lab = Lab::up(LabConfig {
        nodes: 3,
        pods_per_node: 1,
        routed_underlay: true,
        direct_routing: true,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    lab.wait_converged(Duration::from_secs(10));
    let before = node_exec(&lab, 0, &["ip", "route", "show", "proto", "87"]);
    assert!(
        before.contains("dev eth0"),
        "a direct route to clean up:\n{before}"
    );
    lab.wait_converged(Duration::from_secs(10));
    lab.stop_daemon(0, false);
    let weftd = weft_lab::procs::bin_path("weftd");
    let status = lab.nodes[0]
        .netns
        .command(weftd.to_str().unwrap())
        .arg("cleanup")
        .status()
        .unwrap();
    assert!(status.success());
    let links = node_exec(&lab, 0, &["ip", "-o", "link", "show"]);
    assert!(
        !links.contains("vxlan") && !links.contains(": weft"),
        "{links}"
    );
    let tables = node_exec(&lab, 0, &["nft", "list", "tables"]);
    assert!(tables.trim().is_empty(), "{tables}");
    let routes = node_exec(&lab, 0, &["ip", "route"]) + &node_exec(&lab, 0, &["ip", "-6", "route"]);
    assert!(
        !routes.contains("10.244.") && !routes.contains("fd00:10:244"),
        "{routes}"
    );
    // The other node is untouched.
    assert!(node_exec(&lab, 1, &["ip", "-o", "link", "show"]).contains("weft.vxlan"));
}

#[test]
fn a_node_whose_underlay_address_changes_is_followed_without_a_restart() {
    let config = LabConfig {
        nodes: 2,
        pods_per_node: 1,
        detect_underlay: true,
        ..Default::default()
    };
    let lab = Lab::up(config).unwrap_or_else(|e| panic!("{e}"));
    assert!(lab
        .wait_converged(Duration::from_secs(10))
        .iter()
        .all(|p| p.ok));
    let node2 = &lab.nodes[1].netns;
    node2
        .exec(&["ip", "addr", "del", "192.0.2.12/24", "dev", "eth0"])
        .unwrap();
    node2
        .exec(&["ip", "addr", "add", "192.0.2.42/24", "dev", "eth0"])
        .unwrap();
    node2
        .exec(&["ip", "route", "replace", "default", "via", "192.0.2.254"])
        .unwrap();
    let started = Instant::now();
    let followed = weft_lab::procs::wait_for(Duration::from_secs(15), || {
        let fdb = lab.nodes[0]
            .netns
            .exec(&["bridge", "fdb", "show", "dev", "weft.vxlan"])
            .ok()?;
        fdb.contains("dst 192.0.2.42").then_some(())
    });
    eprintln!(
        "peer followed the new underlay address after {:?}",
        started.elapsed()
    );
    assert!(
        followed.is_some(),
        "node-1 still tunnels to the old address"
    );
    let probes = lab.wait_converged(Duration::from_secs(10));
    assert!(probes.iter().all(|p| p.ok), "\n{}", render_matrix(&probes));
    assert!(lab.nodes[1].daemon.is_some());
    let link = node2
        .exec(&["ip", "-d", "link", "show", "weft.vxlan"])
        .unwrap();
    assert!(link.contains("local 192.0.2.42"), "{link}");
}

#[test]
fn the_lab_runs_on_etcd_too() {
    let config = LabConfig {
        nodes: 2,
        pods_per_node: 1,
        store: weft_lab::lab::StoreKind::Etcd,
        ..Default::default()
    };
    let lab = Lab::up(config).unwrap_or_else(|e| panic!("{e}"));
    let probes = lab.wait_converged(Duration::from_secs(10));
    assert!(probes.iter().all(|p| p.ok), "\n{}", render_matrix(&probes));
}

#[test]
fn entries_weft_did_not_create_are_never_touched() {
    let mut lab = lab(2, 1);
    lab.wait_converged(Duration::from_secs(10));
    // An operator's route and neighbour entry on weft's device, and a route of their own elsewhere.
    node_exec(
        &lab,
        0,
        &[
            "ip",
            "route",
            "add",
            "198.51.100.0/24",
            "via",
            "10.244.1.0",
            "dev",
            "weft.vxlan",
            "onlink",
        ],
    );
    node_exec(
        &lab,
        0,
        &[
            "ip",
            "neigh",
            "add",
            "198.51.100.1",
            "lladdr",
            "02:aa:bb:cc:dd:ee",
            "dev",
            "weft.vxlan",
            "nud",
            "permanent",
        ],
    );
    node_exec(
        &lab,
        0,
        &["ip", "route", "add", "203.0.113.0/24", "via", "192.0.2.254"],
    );
    // A restart reads the kernel from scratch; a new node makes the reconciler act.
    lab.stop_daemon(0, false);
    lab.start_daemon(0).unwrap();
    let node = lab.add_node().unwrap();
    lab.add_pod(node).unwrap();
    assert!(lab
        .wait_converged(Duration::from_secs(10))
        .iter()
        .all(|p| p.ok));
    let routes = node_exec(&lab, 0, &["ip", "route"]);
    assert!(
        routes.contains("198.51.100.0/24 via 10.244.1.0 dev weft.vxlan onlink"),
        "{routes}"
    );
    assert!(
        routes.contains("203.0.113.0/24 via 192.0.2.254"),
        "{routes}"
    );
    assert!(
        routes.contains("10.244.2.0/24 via 10.244.2.0 dev weft.vxlan proto 87 onlink"),
        "{routes}"
    );
    let neigh = node_exec(&lab, 0, &["ip", "neigh", "show", "dev", "weft.vxlan"]);
    assert!(
        neigh.contains("198.51.100.1 lladdr 02:aa:bb:cc:dd:ee PERMANENT"),
        "{neigh}"
    );
}

/// nftables has no cross-table accept, so weft cannot override another table's forward drop
/// policy without editing that table (which it never does); it names the chain in a warning.
#[test]
fn a_forward_drop_policy_elsewhere_is_named_in_a_warning_and_left_alone() {
    let mut lab = lab(1, 1);
    node_exec(&lab, 0, &["nft", "add", "table", "inet", "hostfw"]);
    node_exec(
        &lab,
        0,
        &[
            "nft",
            "add",
            "chain",
            "inet",
            "hostfw",
            "forward",
            "{ type filter hook forward priority 0; policy drop; }",
        ],
    );
    lab.stop_daemon(0, false);
    lab.start_daemon(0).unwrap();
    let warned = weft_lab::procs::wait_for(Duration::from_secs(5), || {
        let log = lab.nodes[0].log();
        log.contains("drops forwarded packets by policy")
            .then_some(log)
    });
    let log = warned.unwrap_or_else(|| panic!("no warning:\n{}", lab.nodes[0].log()));
    assert!(log.contains("chain=inet hostfw forward"), "{log}");
    let chains = node_exec(&lab, 0, &["nft", "list", "table", "inet", "hostfw"]);
    assert!(
        chains.contains("policy drop"),
        "the host's table is untouched:\n{chains}"
    );
}

/// Forwarding turned off under a running weftd (both families) is turned on again at the next
/// resync, named in a warning, and pod traffic across the node flows again.
#[test]
fn drifted_forwarding_is_restored_and_named_at_the_next_resync() {
    let lab = Lab::up(LabConfig {
        nodes: 2,
        pods_per_node: 1,
        weftd_args: vec!["--resync-interval".into(), "3".into()],
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let probes = lab.wait_converged(Duration::from_secs(10));
    assert!(probes.iter().all(|p| p.ok), "{}", render_matrix(&probes));
    let keys = ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"];
    for key in keys {
        node_exec(&lab, 1, &["sysctl", "-w", &format!("{key}=0")]);
    }
    let started = Instant::now();
    let restored = weft_lab::procs::wait_for(Duration::from_secs(3 + 5), || {
        keys.iter()
            .all(|key| node_exec(&lab, 1, &["sysctl", "-n", key]).trim() == "1")
            .then_some(())
    });
    let log = lab.nodes[1].log();
    assert!(
        restored.is_some(),
        "forwarding still off after {:?}:\n{log}",
        started.elapsed()
    );
    for path in [
        "/proc/sys/net/ipv4/ip_forward",
        "/proc/sys/net/ipv6/conf/all/forwarding",
    ] {
        let named = weft_lab::procs::wait_for(Duration::from_secs(2), || {
            lab.nodes[1]
                .log()
                .lines()
                .any(|line| line.contains("sysctl drifted; restored: 0 → 1") && line.contains(path))
                .then_some(())
        });
        assert!(named.is_some(), "no drift named for {path}:\n{log}");
    }
    let probes = lab.wait_converged(Duration::from_secs(5));
    assert!(probes.iter().all(|p| p.ok), "{}", render_matrix(&probes));
}

/// SIGTERM ends weftd at once (a DaemonSet rollout waits for it on every node), and what it must
/// keep is kept: a restart finds the same lease and its pods still reachable.
#[test]
fn weftd_exits_within_half_a_second_of_sigterm_and_a_restart_finds_its_lease_and_pods() {
    let mut lab = lab(2, 1);
    let probes = lab.wait_converged(Duration::from_secs(10));
    assert!(probes.iter().all(|p| p.ok), "{}", render_matrix(&probes));
    // Past the store's first polls and a renewal (TTL 10 s → every 3.3 s).
    std::thread::sleep(Duration::from_millis(3500));
    let mut daemon = lab.nodes[0].daemon.take().expect("node-1's weftd runs");
    let started = Instant::now();
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    let status = daemon.wait_timeout(Duration::from_secs(5));
    let took = started.elapsed();
    eprintln!("weftd exited {took:?} after SIGTERM");
    let log = lab.nodes[0].log();
    assert!(
        status.is_some_and(|s| s.success()),
        "weftd did not exit cleanly ({status:?}):\n{log}"
    );
    assert!(
        took < Duration::from_millis(500),
        "exit took {took:?}:\n{log}"
    );
    assert!(
        log.contains("the lease is kept for the next start"),
        "{log}"
    );
    drop(daemon);
    lab.start_daemon(0).unwrap();
    let probes = lab.wait_converged(Duration::from_secs(10));
    assert!(probes.iter().all(|p| p.ok), "{}", render_matrix(&probes));
    let log = lab.nodes[0].log();
    let cidrs: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("lease acquired"))
        .filter_map(|line| line.split("pod_cidrs=").nth(1))
        .filter_map(|rest| rest.split(' ').next())
        .collect();
    assert!(
        cidrs.len() == 2 && cidrs[0] == cidrs[1],
        "the restart got its lease back ({cidrs:?}):\n{log}"
    );
    assert!(!log.contains("op=ip link del"), "{log}");
}

/// A VXLAN frame for VNI 1 carrying an IPv4/UDP packet from `inner_src` to `inner_dst`, for the
/// device whose MAC is `dst_mac`: what an attacker hand-builds to inject into the overlay.
fn forged_vxlan(dst_mac: [u8; 6], inner_src: [u8; 4], inner_dst: [u8; 4]) -> Vec<u8> {
    let mut frame = vec![0x08, 0, 0, 0, 0, 0, 1, 0]; // flags: VNI valid; VNI 1
    frame.extend_from_slice(&dst_mac);
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0x99, 0x99, 0x08, 0x00]);
    let payload = b"forged";
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        0,
        0,
        0,
        64,
        17,
        0,
        0,
    ];
    ip.extend_from_slice(&inner_src);
    ip.extend_from_slice(&inner_dst);
    let sum = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let folded = !(((sum & 0xffff) + (sum >> 16)) as u16);
    ip[10..12].copy_from_slice(&folded.to_be_bytes());
    frame.extend_from_slice(&ip);
    let udp_len = (8 + payload.len()) as u16;
    frame.extend_from_slice(&[0x30, 0x39, 0, 9, (udp_len >> 8) as u8, udp_len as u8, 0, 0]);
    frame.extend_from_slice(payload);
    frame
}

/// Packets the node's `weft.vxlan` device has received (decapsulated).
fn vxlan_rx_packets(lab: &Lab, node: usize) -> u64 {
    let out = node_exec(lab, node, &["ip", "-s", "-j", "link", "show", "weft.vxlan"]);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    json[0]["stats64"]["rx"]["packets"].as_u64().unwrap()
}

/// Issue "Faults and hostile input", case 5: a VXLAN packet built by hand, sent to a node's UDP
/// 8472 from outside the cluster or from a pod, is dropped before the VXLAN device sees it; the
/// peers' own tunnel traffic still flows.
#[test]
fn only_peers_may_send_into_the_vxlan_tunnel() {
    let lab = lab(2, 1);
    let probes = lab.wait_converged(Duration::from_secs(10));
    assert!(probes.iter().all(|p| p.ok), "{}", render_matrix(&probes));
    let link = node_exec(&lab, 0, &["ip", "-j", "link", "show", "weft.vxlan"]);
    let link: serde_json::Value = serde_json::from_str(&link).unwrap();
    let mac: Vec<u8> = link[0]["address"]
        .as_str()
        .unwrap()
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    let pod_v4 = lab.pods[0].v4.unwrap().octets();
    let frame = forged_vxlan(mac.try_into().unwrap(), [10, 244, 99, 9], pod_v4);
    let send = |netns: &weft_lab::netns::NetnsGuard, target: &str| {
        let (frame, target) = (frame.clone(), target.to_string());
        netns
            .within(move || {
                let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
                for _ in 0..5 {
                    socket.send_to(&frame, (target.as_str(), 8472))?;
                }
                Ok(())
            })
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
    };
    // The device's own counters also count the peers' health probes (one every 2 s), so what
    // must not appear is the forged inner packet itself, from 10.244.99.9.
    let before = vxlan_rx_packets(&lab, 0);
    let forged = ["src", "10.244.99.9"];
    let path = lab.dir.join("forged.pcap");
    let capture = Capture::start(&lab.nodes[0].netns, "weft.vxlan", &path, &forged).unwrap();
    send(&lab.outside, "192.0.2.11");
    // From a pod on node-2, to node-1's tunnel port (forwarded by node-2, which drops it).
    send(&lab.pods[1].netns, "192.0.2.11");
    let seen = read(&lab.nodes[0].netns, &capture.stop(), &[]).unwrap();
    assert_eq!(
        seen.lines().count(),
        0,
        "a host outside the cluster or a pod got into the tunnel:\n{seen}"
    );
    let table = node_exec(&lab, 0, &["nft", "list", "set", "inet", "weft", "peers4"]);
    assert!(table.contains("192.0.2.12"), "node-2 is a peer:\n{table}");
    let probes = lab.probes();
    assert!(
        probes.iter().all(|p| p.ok),
        "peers still talk:\n{}",
        render_matrix(&probes)
    );
    assert!(
        vxlan_rx_packets(&lab, 0) > before,
        "and their packets are decapsulated"
    );
}

/// Issue "Faults and hostile input", case 3: a second weftd started with node-1's name from
/// another machine (node-2's namespace, its own state directory) is refused with one line and
/// exits; node-1 keeps its lease, its published address and its traffic.
#[test]
fn a_second_machine_with_a_nodes_name_is_refused_and_the_first_keeps_working() {
    let lab = lab(2, 1);
    assert!(lab
        .wait_converged(Duration::from_secs(10))
        .iter()
        .all(|p| p.ok));
    let work = tempfile::tempdir().unwrap();
    let output = lab.nodes[1]
        .netns
        .command(weft_lab::procs::bin_path("weftd").to_str().unwrap())
        .args(["run", "--node-name", "node-1", "--public-ip", "192.0.2.12"])
        .args([
            "--cluster-cidr",
            "10.244.0.0/16,fd00:10:244::/48",
            "--store",
            "file",
        ])
        .arg("--store-dir")
        .arg(lab.dir.join("store"))
        .arg("--state-dir")
        .arg(work.path().join("state"))
        .arg("--run-dir")
        .arg(work.path().join("run"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the clone must stop:\n{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("held by another machine"))
        .unwrap_or_else(|| panic!("one clear line:\n{stderr}"));
    assert!(
        line.contains("node-1") && line.contains("--node-name"),
        "{line}"
    );
    let record = std::fs::read_to_string(lab.dir.join("store/nodes/node-1.json")).unwrap();
    assert!(
        record.contains("192.0.2.11") && !record.contains("192.0.2.12"),
        "{record}"
    );
    let probes = lab.probes();
    assert!(probes.iter().all(|p| p.ok), "{}", render_matrix(&probes));
}
