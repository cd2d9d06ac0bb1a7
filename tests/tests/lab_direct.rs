//! VXLAN's direct routing in the lab's routed underlay: node-1 and node-2 share a subnet (br0),
//! node-3 sits on another one behind a router namespace. Pods on node-1 and node-2 talk over a
//! plain route between the nodes, with no VXLAN; pods on node-3 go through the tunnel. Both
//! families. Each test builds its own lab (root) and removes it when it ends, even on failure.
//!
//! Run: `cargo build --workspace && cargo test -p weft-lab --test lab_direct`.

use std::net::IpAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use weft_lab::capture::{read, send_marker, Capture};
use weft_lab::lab::{render_matrix, Lab, LabConfig, ROUTER_SECOND_V4, ROUTER_SECOND_V6};
use weft_lab::procs::wait_for;

fn routed_lab(detect_underlay: bool) -> Lab {
    let lab = Lab::up(LabConfig {
        nodes: 3,
        pods_per_node: 1,
        routed_underlay: true,
        direct_routing: true,
        detect_underlay,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let probes = lab.wait_converged(Duration::from_secs(15));
    assert!(probes.iter().all(|p| p.ok), "\n{}", render_matrix(&probes));
    lab
}

/// weft's routes (`proto 87`) of both families in node `node`.
fn weft_routes(lab: &Lab, node: usize) -> String {
    let netns = &lab.nodes[node].netns;
    let v4 = netns
        .exec(&["ip", "-4", "route", "show", "proto", "87"])
        .unwrap();
    let v6 = netns
        .exec(&["ip", "-6", "route", "show", "proto", "87"])
        .unwrap();
    format!("{v4}{v6}")
}

/// The pod CIDRs (IPv4 /24, IPv6 /64) of the pod `pod`, as `ip route` prints them.
fn pod_cidrs(lab: &Lab, pod: usize) -> (String, String) {
    let pod = &lab.pods[pod];
    let v4 = pod.v4.expect("IPv4 pod").octets();
    let v6 = pod.v6.expect("IPv6 pod").segments();
    (
        format!("{}.{}.{}.0/24", v4[0], v4[1], v4[2]),
        format!("{:x}:{:x}:{:x}:{:x}::/64", v6[0], v6[1], v6[2], v6[3]),
    )
}

/// The route line to `dst` in `routes`, or "".
fn route_to<'r>(routes: &'r str, dst: &str) -> &'r str {
    let prefix = format!("{dst} ");
    routes
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or("")
}

#[test]
fn peers_on_the_same_subnet_are_routed_directly_and_the_routed_pair_uses_vxlan() {
    let lab = routed_lab(false);
    let (n2_v4, n2_v6) = pod_cidrs(&lab, 1);
    let (n3_v4, n3_v6) = pod_cidrs(&lab, 2);

    let routes = weft_routes(&lab, 0);
    let to_n2 = route_to(&routes, &n2_v4);
    assert!(to_n2.contains("via 192.0.2.12 dev eth0"), "{routes}");
    let to_n2_v6 = route_to(&routes, &n2_v6);
    assert!(to_n2_v6.contains("via 2001:db8::12 dev eth0"), "{routes}");
    assert!(
        route_to(&routes, &n3_v4).contains("dev weft.vxlan onlink"),
        "{routes}"
    );
    assert!(
        route_to(&routes, &n3_v6).contains("dev weft-v6.vxlan"),
        "{routes}"
    );
    // node-3 sees node-1 and node-2 behind the router: both through the tunnel.
    let routes3 = weft_routes(&lab, 2);
    assert_eq!(routes3.matches("dev weft.vxlan").count(), 2, "{routes3}");
    assert!(!routes3.contains("dev eth0"), "{routes3}");
    // Only node-3 is in node-1's FDB.
    let fdb = lab.nodes[0]
        .netns
        .exec(&["bridge", "fdb", "show", "dev", "weft.vxlan"])
        .unwrap();
    assert!(fdb.contains("dst 198.51.100.13"), "{fdb}");
    assert!(!fdb.contains("192.0.2.12"), "{fdb}");

    // br0 carries node-1, node-2 and the router's leg towards node-3.
    let capture = Capture::start(&lab.underlay, "br0", &lab.dir.join("br0.pcap"), &[]).unwrap();
    for (to, marker) in [
        (1, "weft-direct-marker-1212"),
        (2, "weft-routed-marker-1313"),
    ] {
        let (client, server) = (&lab.pods[0].netns, &lab.pods[to].netns);
        send_marker(client, server, &lab.pods[to].addresses(), marker).unwrap();
    }
    let path = capture.stop();

    let vxlan = read(&lab.underlay, &path, &["udp", "port", "8472"]).unwrap();
    let between = |a: &str, b: &str| {
        vxlan
            .lines()
            .filter(|l| l.contains(&format!(" {a}.")) && l.contains(&format!(" {b}.")))
            .count()
    };
    assert_eq!(
        between("192.0.2.11", "192.0.2.12"),
        0,
        "no VXLAN on the shared subnet:\n{vxlan}"
    );
    assert!(
        between("192.0.2.11", "198.51.100.13") >= 4,
        "VXLAN to node-3:\n{vxlan}"
    );
    // The direct pair's packets crossed br0 as they are, pod address to pod address.
    let (a, b) = (&lab.pods[0], &lab.pods[1]);
    for (from, to) in [
        (IpAddr::from(a.v4.unwrap()), IpAddr::from(b.v4.unwrap())),
        (IpAddr::from(a.v6.unwrap()), IpAddr::from(b.v6.unwrap())),
    ] {
        let (from, to) = (from.to_string(), to.to_string());
        let filter = ["src", from.as_str(), "and", "dst", to.as_str()];
        let plain = read(&lab.underlay, &path, &filter).unwrap();
        assert!(
            plain.lines().count() >= 2,
            "{from} → {to} in clear on br0:\n{plain}"
        );
    }
}

#[test]
fn a_node_moving_to_the_other_subnet_switches_route_kind_while_other_pods_keep_talking() {
    let lab = routed_lab(true);
    let (n2_v4, n2_v6) = pod_cidrs(&lab, 1);
    // A ping from node-1's pod to node-3's pod (through the tunnel) runs through the move.
    let target = lab.pods[2].v4.unwrap().to_string();
    let ping = lab.pods[0]
        .netns
        .command("ping")
        .args(["-i", "0.05", "-c", "300", "-q", &target])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));

    // node-2's link moves from br0 to br1, with addresses and routes of the second subnet.
    lab.underlay
        .exec(&["ip", "link", "set", "n2", "master", "br1"])
        .unwrap();
    let node2 = &lab.nodes[1].netns;
    for args in [
        "ip addr del 192.0.2.12/24 dev eth0",
        "ip addr del 2001:db8::12/64 dev eth0",
        "ip addr add 198.51.100.12/24 dev eth0",
        "ip addr add 2001:db8:1::12/64 dev eth0 nodad",
    ] {
        node2.exec(&args.split(' ').collect::<Vec<_>>()).unwrap();
    }
    let (gw4, gw6) = (ROUTER_SECOND_V4.to_string(), ROUTER_SECOND_V6.to_string());
    node2
        .exec(&["ip", "-4", "route", "replace", "default", "via", &gw4])
        .unwrap();
    node2
        .exec(&["ip", "-6", "route", "replace", "default", "via", &gw6])
        .unwrap();

    let started = Instant::now();
    let switched = wait_for(Duration::from_secs(20), || {
        let from_n1 = weft_routes(&lab, 0);
        let from_n3 = weft_routes(&lab, 2);
        let tunnelled = route_to(&from_n1, &n2_v4).contains("dev weft.vxlan")
            && route_to(&from_n1, &n2_v6).contains("dev weft-v6.vxlan");
        let direct = route_to(&from_n3, &n2_v4).contains("via 198.51.100.12 dev eth0")
            && route_to(&from_n3, &n2_v6).contains("via 2001:db8:1::12 dev eth0");
        (tunnelled && direct).then_some(())
    });
    eprintln!("routes switched after {:?}", started.elapsed());
    assert!(
        switched.is_some(),
        "node-1:\n{}\nnode-3:\n{}",
        weft_routes(&lab, 0),
        weft_routes(&lab, 2)
    );
    let probes = lab.wait_converged(Duration::from_secs(15));
    assert!(probes.iter().all(|p| p.ok), "\n{}", render_matrix(&probes));

    let output = ping.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        summary.contains("300 packets transmitted, 300 received"),
        "node-1 → node-3 lost nothing while node-2 moved:\n{summary}"
    );
}
