//! The plan from a node's point of view (Kilo style: one fixture of named nodes, whole expected
//! lists), the trust checks, the diff's operation counts, and a model test of random peer changes.

use std::net::IpAddr;
use std::time::Instant;

use weft_proto::lease::{BackendData, Lease, MacAddr, PodCidrs, PublicIps, WgPublicKey};
use weft_proto::names::{IfName, NodeName};

use super::*;
use crate::plan::admission::Refusal;
use crate::plan::model::{big_config, run_model, underlay_v4, Change, ModelSubject};

// ---------------------------------------------------------------------------------------------
// Fixture: nodes a, b, c (index 1, 2, 3), dual-stack pods, IPv4 + IPv6 underlay.
//   node i: pods 10.244.i.0/24 and fd00:10:244:i::/64, underlay 192.0.2.i and 2001:db8::i,
//           VTEP MACs 02:00:00:00:0i:04 (weft.vxlan) and 02:00:00:00:0i:06 (weft-v6.vxlan).
// ---------------------------------------------------------------------------------------------

fn name(s: &str) -> NodeName {
    NodeName::new(s).unwrap()
}

fn dev(s: &str) -> IfName {
    IfName::new(s).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn mac(node: u8, family: u8) -> MacAddr {
    MacAddr([0x02, 0, 0, 0, node, family])
}

fn node(n: &str, i: u8) -> Lease {
    Lease {
        node: name(n),
        pod_cidrs: PodCidrs {
            v4: Some(format!("10.244.{i}.0/24").parse().unwrap()),
            v6: Some(format!("fd00:10:244:{i}::/64").parse().unwrap()),
        },
        public_ips: PublicIps {
            v4: Some(format!("192.0.2.{i}").parse().unwrap()),
            v6: Some(format!("2001:db8::{i}").parse().unwrap()),
        },
        backend: BackendData::Vxlan {
            vtep_mac: Some(mac(i, 4)),
            vtep_mac_v6: Some(mac(i, 6)),
        },
        expires: None,
        machine: None,
    }
}

fn a() -> Lease {
    node("a", 1)
}
fn b() -> Lease {
    node("b", 2)
}
fn c() -> Lease {
    node("c", 3)
}
fn d() -> Lease {
    node("d", 4)
}

fn v4_only(mut lease: Lease) -> Lease {
    lease.pod_cidrs.v6 = None;
    if let BackendData::Vxlan { vtep_mac_v6, .. } = &mut lease.backend {
        *vtep_mac_v6 = None;
    }
    lease
}

fn v6_only(mut lease: Lease) -> Lease {
    lease.pod_cidrs.v4 = None;
    if let BackendData::Vxlan { vtep_mac, .. } = &mut lease.backend {
        *vtep_mac = None;
    }
    lease
}

fn v6_underlay(mut lease: Lease) -> Lease {
    lease.public_ips.v4 = None;
    lease
}

fn set_mac(lease: &mut Lease, family: Family, new: Option<MacAddr>) {
    if let BackendData::Vxlan {
        vtep_mac,
        vtep_mac_v6,
    } = &mut lease.backend
    {
        match family {
            Family::V4 => *vtep_mac = new,
            Family::V6 => *vtep_mac_v6 = new,
        }
    }
}

fn cfg() -> PlanConfig {
    PlanConfig {
        cluster_cidrs: vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:10:244::/56".parse().unwrap(),
        ],
        service_cidrs: vec![
            "10.96.0.0/12".parse().unwrap(),
            "fd00:10:96::/112".parse().unwrap(),
        ],
        underlay_mtu: 1500,
        mtu: None,
        node_prefix_v4: None,
        node_prefix_v6: None,
        direct_routing: None,
    }
}

/// No incumbents: the plan at start-up.
fn none() -> Incumbents {
    Incumbents::default()
}

fn plan_with(own: &Lease, peers: &[&Lease], config: &PlanConfig) -> Plan {
    desired(own, peers.iter().copied(), config, &none()).unwrap()
}

/// The plan once `previous` is the one being programmed: its accepted claims are the incumbents.
fn plan_after(own: &Lease, peers: &[&Lease], previous: &Plan) -> Plan {
    desired(own, peers.iter().copied(), &cfg(), &previous.accepted).unwrap()
}

fn plan(own: &Lease, peers: &[&Lease]) -> Plan {
    plan_with(own, peers, &cfg())
}

fn lines(ops: &[Op]) -> Vec<String> {
    ops.iter().map(|op| op.to_string()).collect()
}

/// Every route's gateway resolves through a neighbour entry to a MAC the FDB knows: what must hold
/// between any two operations for traffic to keep flowing.
fn assert_resolvable(dp: &Datapath, after: &Op) {
    // A direct route's gateway is a neighbour on the underlay, not modelled here.
    for route in dp
        .routes
        .values()
        .filter(|r| state::is_tunnel_device(&r.dev))
    {
        let neighbour = dp
            .neighbours
            .get(&(route.dev.clone(), route.gateway))
            .unwrap_or_else(|| panic!("after `{after}`: route {route:?} has no neighbour"));
        assert!(
            dp.fdb.contains_key(&(neighbour.dev.clone(), neighbour.mac)),
            "after `{after}`: neighbour {neighbour:?} has no FDB entry"
        );
    }
}

/// Diff `observed` against `desired`, apply the ops to a model of the kernel one by one (checking
/// the model accepts each and traffic stays resolvable), and check the result is `desired` and a
/// second diff is empty. Returns the ops.
fn converge(desired: &Datapath, observed: &mut Datapath) -> Vec<Op> {
    let ops = diff(desired, observed);
    for op in &ops {
        observed
            .apply(op)
            .unwrap_or_else(|e| panic!("{e}\nall ops:\n{}", lines(&ops).join("\n")));
        assert_resolvable(observed, op);
    }
    assert_eq!(observed, desired, "ops:\n{}", lines(&ops).join("\n"));
    assert_eq!(diff(desired, observed), vec![], "a second diff is empty");
    ops
}

/// The state the kernel has once `desired` was applied to an empty node.
fn applied(desired: &Datapath) -> Datapath {
    let mut observed = Datapath::default();
    converge(desired, &mut observed);
    observed
}

// ---------------------------------------------------------------------------------------------
// Whole plans from one node's point of view.
// ---------------------------------------------------------------------------------------------

#[test]
fn full_from_a_on_an_empty_node() {
    let (a, b, c) = (a(), b(), c());
    let plan = plan(&a, &[&b, &c]);
    assert_eq!(plan.refused, vec![]);
    let ops = converge(&plan.datapath, &mut Datapath::default());
    assert_eq!(
        lines(&ops),
        [
            "ip link add weft-v6.vxlan up address 02:00:00:00:01:06 mtu 1450 type vxlan id 2 local 192.0.2.1 dstport 8472 nolearning",
            "ip link add weft.vxlan up address 02:00:00:00:01:04 mtu 1450 type vxlan id 1 local 192.0.2.1 dstport 8472 nolearning",
            "ip addr replace fd00:10:244:1::/128 dev weft-v6.vxlan",
            "ip addr replace 10.244.1.0/32 dev weft.vxlan",
            "bridge fdb replace 02:00:00:00:02:06 dev weft-v6.vxlan dst 192.0.2.2 self permanent",
            "bridge fdb replace 02:00:00:00:03:06 dev weft-v6.vxlan dst 192.0.2.3 self permanent",
            "bridge fdb replace 02:00:00:00:02:04 dev weft.vxlan dst 192.0.2.2 self permanent",
            "bridge fdb replace 02:00:00:00:03:04 dev weft.vxlan dst 192.0.2.3 self permanent",
            "ip neigh replace fd00:10:244:2:: lladdr 02:00:00:00:02:06 dev weft-v6.vxlan nud permanent",
            "ip neigh replace fd00:10:244:3:: lladdr 02:00:00:00:03:06 dev weft-v6.vxlan nud permanent",
            "ip neigh replace 10.244.2.0 lladdr 02:00:00:00:02:04 dev weft.vxlan nud permanent",
            "ip neigh replace 10.244.3.0 lladdr 02:00:00:00:03:04 dev weft.vxlan nud permanent",
            "ip route replace 10.244.2.0/24 via 10.244.2.0 dev weft.vxlan onlink",
            "ip route replace 10.244.3.0/24 via 10.244.3.0 dev weft.vxlan onlink",
            "ip route replace fd00:10:244:2::/64 via fd00:10:244:2:: dev weft-v6.vxlan onlink",
            "ip route replace fd00:10:244:3::/64 via fd00:10:244:3:: dev weft-v6.vxlan onlink",
        ]
    );
}

#[test]
fn full_from_b_as_data() {
    let (a, b, c) = (a(), b(), c());
    let plan = plan(&b, &[&c, &a]);
    assert_eq!(plan.refused, vec![]);

    let (v4, v6) = (dev("weft.vxlan"), dev("weft-v6.vxlan"));
    let mut expected = Datapath::default();
    for (name, vni, mac) in [(&v4, 1, mac(2, 4)), (&v6, 2, mac(2, 6))] {
        expected.insert_device(VxlanDevice {
            name: name.clone(),
            vni,
            port: 8472,
            local: ip("192.0.2.2"),
            mac,
            mtu: 1450,
            learning: false,
            up: true,
        });
    }
    expected.insert_address(Address {
        dev: v4.clone(),
        address: "10.244.2.0/32".parse().unwrap(),
    });
    expected.insert_address(Address {
        dev: v6.clone(),
        address: "fd00:10:244:2::/128".parse().unwrap(),
    });
    for i in [1u8, 3] {
        for (dev, dst, gateway, family) in [
            (&v4, format!("10.244.{i}.0/24"), format!("10.244.{i}.0"), 4),
            (
                &v6,
                format!("fd00:10:244:{i}::/64"),
                format!("fd00:10:244:{i}::"),
                6,
            ),
        ] {
            expected.insert_route(Route {
                dst: dst.parse().unwrap(),
                gateway: ip(&gateway),
                dev: dev.clone(),
                onlink: true,
            });
            expected.insert_neighbour(Neighbour {
                dev: dev.clone(),
                ip: ip(&gateway),
                mac: mac(i, family),
            });
            expected.insert_fdb(Fdb {
                dev: dev.clone(),
                mac: mac(i, family),
                dst: ip(&format!("192.0.2.{i}")),
            });
        }
    }
    assert_eq!(plan.datapath, expected);
}

#[test]
fn peer_order_does_not_matter() {
    let (a, b, c, d) = (a(), b(), c(), d());
    assert_eq!(plan(&a, &[&b, &c, &d]), plan(&a, &[&d, &c, &b]));
}

#[test]
fn alone_a_node_has_its_devices_and_addresses_only() {
    let plan = plan(&a(), &[]);
    assert_eq!(plan.datapath.devices.len(), 2);
    assert_eq!(plan.datapath.addresses.len(), 2);
    assert!(plan.datapath.routes.is_empty());
    assert!(plan.datapath.neighbours.is_empty());
    assert!(plan.datapath.fdb.is_empty());
}

#[test]
fn single_stack_v4_cluster() {
    let (a, b, c) = (v4_only(a()), v4_only(b()), v4_only(c()));
    let config = PlanConfig {
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
        ..cfg()
    };
    let plan = plan_with(&a, &[&b, &c], &config);
    assert_eq!(plan.refused, vec![]);
    let ops = converge(&plan.datapath, &mut Datapath::default());
    assert_eq!(
        lines(&ops),
        [
            "ip link add weft.vxlan up address 02:00:00:00:01:04 mtu 1450 type vxlan id 1 local 192.0.2.1 dstport 8472 nolearning",
            "ip addr replace 10.244.1.0/32 dev weft.vxlan",
            "bridge fdb replace 02:00:00:00:02:04 dev weft.vxlan dst 192.0.2.2 self permanent",
            "bridge fdb replace 02:00:00:00:03:04 dev weft.vxlan dst 192.0.2.3 self permanent",
            "ip neigh replace 10.244.2.0 lladdr 02:00:00:00:02:04 dev weft.vxlan nud permanent",
            "ip neigh replace 10.244.3.0 lladdr 02:00:00:00:03:04 dev weft.vxlan nud permanent",
            "ip route replace 10.244.2.0/24 via 10.244.2.0 dev weft.vxlan onlink",
            "ip route replace 10.244.3.0/24 via 10.244.3.0 dev weft.vxlan onlink",
        ]
    );
}

#[test]
fn single_stack_v6_cluster_over_a_v6_underlay() {
    let nodes: Vec<Lease> = [a(), b(), c()]
        .into_iter()
        .map(|l| v6_underlay(v6_only(l)))
        .collect();
    let config = PlanConfig {
        cluster_cidrs: vec!["fd00:10:244::/56".parse().unwrap()],
        service_cidrs: vec!["fd00:10:96::/112".parse().unwrap()],
        ..cfg()
    };
    let plan = plan_with(&nodes[0], &[&nodes[1], &nodes[2]], &config);
    assert_eq!(plan.refused, vec![]);
    let ops = converge(&plan.datapath, &mut Datapath::default());
    assert_eq!(
        lines(&ops),
        [
            "ip link add weft-v6.vxlan up address 02:00:00:00:01:06 mtu 1430 type vxlan id 2 local 2001:db8::1 dstport 8472 nolearning",
            "ip addr replace fd00:10:244:1::/128 dev weft-v6.vxlan",
            "bridge fdb replace 02:00:00:00:02:06 dev weft-v6.vxlan dst 2001:db8::2 self permanent",
            "bridge fdb replace 02:00:00:00:03:06 dev weft-v6.vxlan dst 2001:db8::3 self permanent",
            "ip neigh replace fd00:10:244:2:: lladdr 02:00:00:00:02:06 dev weft-v6.vxlan nud permanent",
            "ip neigh replace fd00:10:244:3:: lladdr 02:00:00:00:03:06 dev weft-v6.vxlan nud permanent",
            "ip route replace fd00:10:244:2::/64 via fd00:10:244:2:: dev weft-v6.vxlan onlink",
            "ip route replace fd00:10:244:3::/64 via fd00:10:244:3:: dev weft-v6.vxlan onlink",
        ]
    );
}

#[test]
fn single_stack_v6_pods_over_a_v4_underlay() {
    let (a, b) = (v6_only(a()), v6_only(b()));
    let plan = plan(&a, &[&b]);
    assert_eq!(plan.refused, vec![]);
    let device = &plan.datapath.devices[&dev("weft-v6.vxlan")];
    assert_eq!((device.local, device.mtu), (ip("192.0.2.1"), 1450));
    assert_eq!(plan.datapath.devices.len(), 1);
    let fdb: Vec<&Fdb> = plan.datapath.fdb.values().collect();
    assert_eq!(fdb.len(), 1);
    assert_eq!(fdb[0].dst, ip("192.0.2.2"));
}

#[test]
fn v6_only_underlay_with_dual_stack_pods() {
    let (a, b) = (v6_underlay(a()), v6_underlay(b()));
    let c = c(); // has both underlay families: its IPv6 one is used
    let mut d = d();
    d.public_ips.v6 = None; // IPv4 underlay only: unreachable from a
    let plan = plan(&a, &[&b, &c, &d]);

    for device in plan.datapath.devices.values() {
        assert_eq!(device.local, ip("2001:db8::1"), "{}", device.name);
        assert_eq!(device.mtu, 1430, "{}", device.name);
    }
    let dsts: Vec<String> = plan
        .datapath
        .fdb
        .values()
        .map(|e| format!("{} {}", e.dev, e.dst))
        .collect();
    assert_eq!(
        dsts,
        [
            "weft-v6.vxlan 2001:db8::2",
            "weft-v6.vxlan 2001:db8::3",
            "weft.vxlan 2001:db8::2",
            "weft.vxlan 2001:db8::3",
        ]
    );
    assert_eq!(
        plan.refused,
        vec![Refusal {
            node: name("d"),
            reason: "publishes no IPv6 underlay address, and this node's tunnels run over IPv6"
                .into(),
        }]
    );
}

#[test]
fn a_peer_of_another_stack_shares_what_it_can() {
    // a is dual-stack; b only IPv4 pods, c only IPv6 pods.
    let (a, b, c) = (a(), v4_only(b()), v6_only(c()));
    let plan = plan(&a, &[&b, &c]);
    assert_eq!(plan.refused, vec![]);
    let routes: Vec<String> = plan.datapath.routes.keys().map(|k| k.to_string()).collect();
    assert_eq!(routes, ["10.244.2.0/24", "fd00:10:244:3::/64"]);
}

#[test]
fn families_this_node_does_not_run_are_not_checked() {
    // a runs IPv4 only; b's IPv6 claim is absurd but programs nothing here, so b's IPv4 tunnel
    // stays up (a cluster moving to dual stack keeps working while nodes change over).
    let a = v4_only(a());
    let mut b = b();
    b.pod_cidrs.v6 = Some("::/0".parse().unwrap());
    let plan = plan(&a, &[&b]);
    assert_eq!(plan.refused, vec![]);
    assert_eq!(plan.datapath.routes.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// MTU.
// ---------------------------------------------------------------------------------------------

#[test]
fn mtu_rules() {
    let mtu_of = |own: &Lease, underlay_mtu: u32, mtu: Option<u32>| -> Vec<u32> {
        let config = PlanConfig {
            underlay_mtu,
            mtu,
            ..cfg()
        };
        plan_with(own, &[], &config)
            .datapath
            .devices
            .values()
            .map(|d| d.mtu)
            .collect()
    };
    assert_eq!(
        mtu_of(&a(), 1500, None),
        [1450, 1450],
        "IPv4 underlay: − 50"
    );
    assert_eq!(mtu_of(&a(), 9000, None), [8950, 8950]);
    let v6 = v6_underlay(a());
    assert_eq!(mtu_of(&v6, 1500, None), [1430, 1430], "IPv6 underlay: − 70");
    assert_eq!(mtu_of(&v6, 9000, None), [8930, 8930]);
    assert_eq!(mtu_of(&a(), 1500, Some(1400)), [1400, 1400], "override");
    assert_eq!(mtu_of(&v6, 9000, Some(1280)), [1280, 1280], "override");
}

#[test]
fn an_mtu_change_is_set_in_place() {
    let (a, b) = (a(), b());
    let mut observed = applied(&plan(&a, &[&b]).datapath);
    let config = PlanConfig {
        underlay_mtu: 9000,
        ..cfg()
    };
    let ops = converge(&plan_with(&a, &[&b], &config).datapath, &mut observed);
    assert_eq!(
        lines(&ops),
        [
            "ip link set weft-v6.vxlan mtu 8950",
            "ip link set weft.vxlan mtu 8950",
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Trust nothing a peer publishes.
// ---------------------------------------------------------------------------------------------

type Mutate = fn(&mut [Lease; 3], &mut PlanConfig);
/// Who is refused, each with a part of the reason, in name order: the whole list.
type Refused = &'static [(&'static str, &'static str)];
/// Who is still programmed exactly as if the refused peers did not exist: the whole list.
type Kept = &'static [&'static str];
/// A label, the spoiling, the outcome at start-up, and the outcome later if it differs.
type Case = (&'static str, Mutate, Refused, Kept, Option<(Refused, Kept)>);

/// From a, with peers b, c, d: each case spoils something and names who is refused and who must
/// still be programmed exactly as before — at start-up (no incumbents), and when the spoilt record
/// arrives after b, c and d were accepted (`None`: the same outcome as at start-up). A conflict
/// between peers refuses every claimant at start-up, and the newcomer alone later.
#[test]
fn refusals_program_nothing_for_the_refused_and_leave_the_others_alone() {
    let cases: &[Case] = &[
        (
            "overlaps this node's pod CIDR",
            |p, _| p[2].pod_cidrs.v4 = Some("10.244.1.128/25".parse().unwrap()),
            &[("d", "pod CIDR 10.244.1.128/25 overlaps this node's pod CIDR 10.244.1.0/24")],
            &["b", "c"],
            None,
        ),
        (
            "contains this node's pod CIDR (IPv6), and everyone else's: refused alone",
            |p, _| p[2].pod_cidrs.v6 = Some("fd00:10:244::/56".parse().unwrap()),
            &[("d", "pod CIDR fd00:10:244::/56 overlaps this node's pod CIDR fd00:10:244:1::/64")],
            &["b", "c"],
            None,
        ),
        (
            "inside the service CIDR",
            |p, _| p[2].pod_cidrs.v4 = Some("10.96.4.0/24".parse().unwrap()),
            &[("d", "pod CIDR 10.96.4.0/24 overlaps the service CIDR 10.96.0.0/12")],
            &["b", "c"],
            None,
        ),
        (
            "around a service CIDR inside the cluster range",
            |_, config| config.service_cidrs.push("10.244.4.128/26".parse().unwrap()),
            &[("d", "pod CIDR 10.244.4.0/24 overlaps the service CIDR 10.244.4.128/26")],
            &["b", "c"],
            None,
        ),
        (
            "default route",
            |p, _| p[2].pod_cidrs.v4 = Some("0.0.0.0/0".parse().unwrap()),
            &[("d", "pod CIDR 0.0.0.0/0 is a default route")],
            &["b", "c"],
            None,
        ),
        (
            "IPv6 default route",
            |p, _| p[2].pod_cidrs.v6 = Some("::/0".parse().unwrap()),
            &[("d", "pod CIDR ::/0 is a default route")],
            &["b", "c"],
            None,
        ),
        (
            "outside the cluster CIDRs",
            |p, _| p[2].pod_cidrs.v4 = Some("10.245.4.0/24".parse().unwrap()),
            &[("d", "pod CIDR 10.245.4.0/24 lies outside the cluster CIDRs (10.244.0.0/16, fd00:10:244::/56)")],
            &["b", "c"],
            None,
        ),
        (
            "host bits set",
            |p, _| p[2].pod_cidrs.v4 = Some("10.244.4.1/24".parse().unwrap()),
            &[("d", "pod CIDR 10.244.4.1/24 has host bits set")],
            &["b", "c"],
            None,
        ),
        (
            "underlay address inside this node's pod CIDR",
            |p, _| p[2].public_ips.v4 = Some("10.244.1.7".parse().unwrap()),
            &[("d", "underlay address 10.244.1.7 lies inside this node's pod CIDR 10.244.1.0/24")],
            &["b", "c"],
            None,
        ),
        (
            "underlay address inside the cluster CIDR",
            |p, _| p[2].public_ips.v4 = Some("10.244.77.1".parse().unwrap()),
            &[("d", "underlay address 10.244.77.1 lies inside the cluster CIDR 10.244.0.0/16")],
            &["b", "c"],
            None,
        ),
        (
            "underlay address (the unused family) inside its own pod CIDR",
            |p, _| p[2].public_ips.v6 = Some("fd00:10:244:4::1".parse().unwrap()),
            &[("d", "underlay address fd00:10:244:4::1 lies inside its own pod CIDR fd00:10:244:4::/64")],
            &["b", "c"],
            None,
        ),
        (
            "underlay address inside the service CIDR",
            |p, _| p[2].public_ips.v4 = Some("10.96.0.1".parse().unwrap()),
            &[("d", "underlay address 10.96.0.1 lies inside the service CIDR 10.96.0.0/12")],
            &["b", "c"],
            None,
        ),
        (
            "underlay address is this node's own (Vagrant)",
            |p, _| p[2].public_ips.v4 = Some("192.0.2.1".parse().unwrap()),
            &[("d", "underlay address 192.0.2.1 is this node's own")],
            &["b", "c"],
            None,
        ),
        (
            "underlay address is loopback",
            |p, _| p[2].public_ips.v4 = Some("127.0.0.1".parse().unwrap()),
            &[("d", "underlay address 127.0.0.1 is not a unicast address")],
            &["b", "c"],
            None,
        ),
        (
            "no underlay address of the tunnels' family",
            |p, _| p[2].public_ips.v4 = None,
            &[("d", "publishes no IPv4 underlay address")],
            &["b", "c"],
            None,
        ),
        (
            "not vxlan",
            |p, _| {
                p[2].backend = BackendData::WireGuard {
                    public_key: WgPublicKey([7; 32]),
                    port: 51820,
                }
            },
            &[("d", "runs the wireguard backend, not vxlan")],
            &["b", "c"],
            None,
        ),
        (
            "no VTEP MAC for a family it holds a pod CIDR of",
            |p, _| set_mac(&mut p[2], Family::V6, None),
            &[("d", "publishes no VTEP MAC for its IPv6 pod CIDR fd00:10:244:4::/64")],
            &["b", "c"],
            None,
        ),
        (
            "this node's own VTEP MAC",
            |p, _| set_mac(&mut p[2], Family::V4, Some(mac(1, 4))),
            &[("d", "VTEP MAC 02:00:00:00:01:04 is this node's own on weft.vxlan")],
            &["b", "c"],
            None,
        ),
        (
            "a multicast VTEP MAC",
            |p, _| set_mac(&mut p[2], Family::V4, Some(MacAddr([1, 0, 0x5e, 0, 0, 1]))),
            &[("d", "VTEP MAC 01:00:5e:00:00:01 is not a unicast address")],
            &["b", "c"],
            None,
        ),
        (
            "this node's own name",
            |p, _| p[2].node = NodeName::new("a").unwrap(),
            &[("a", "carries this node's own name")],
            &["b", "c"],
            None,
        ),
        // Conflicts between peers: every claimant at start-up, only the newcomer once the others
        // were accepted; bystanders never.
        (
            "the same pod CIDR as another peer",
            |p, _| p[2].pod_cidrs.v4 = Some("10.244.3.0/24".parse().unwrap()),
            &[
                ("c", "pod CIDR 10.244.3.0/24 overlaps the pod CIDR of d (10.244.3.0/24); where no claimant held it before, every claimant is refused"),
                ("d", "pod CIDR 10.244.3.0/24 overlaps the pod CIDR of c (10.244.3.0/24); where no claimant held it before, every claimant is refused"),
            ],
            &["b"],
            Some((
                &[("d", "pod CIDR 10.244.3.0/24 overlaps the pod CIDR already programmed for c (10.244.3.0/24)")],
                &["b", "c"],
            )),
        ),
        (
            "a pod CIDR inside another peer's (IPv6)",
            |p, _| p[2].pod_cidrs.v6 = Some("fd00:10:244:2:8000::/65".parse().unwrap()),
            &[
                ("b", "pod CIDR fd00:10:244:2::/64 overlaps the pod CIDR of d (fd00:10:244:2:8000::/65)"),
                ("d", "pod CIDR fd00:10:244:2:8000::/65 overlaps the pod CIDR of b (fd00:10:244:2::/64)"),
            ],
            &["c"],
            Some((
                &[("d", "pod CIDR fd00:10:244:2:8000::/65 overlaps the pod CIDR already programmed for b (fd00:10:244:2::/64)")],
                &["b", "c"],
            )),
        ),
        (
            "a pod CIDR around two other peers'",
            |p, _| p[2].pod_cidrs.v4 = Some("10.244.2.0/23".parse().unwrap()),
            &[
                ("b", "pod CIDR 10.244.2.0/24 overlaps the pod CIDR of d (10.244.2.0/23)"),
                ("c", "pod CIDR 10.244.3.0/24 overlaps the pod CIDR of d (10.244.2.0/23)"),
                ("d", "pod CIDR 10.244.2.0/23 overlaps the pod CIDR of b (10.244.2.0/24), c (10.244.3.0/24)"),
            ],
            &[],
            Some((
                &[("d", "pod CIDR 10.244.2.0/23 overlaps the pod CIDR already programmed for b (10.244.2.0/24), c (10.244.3.0/24)")],
                &["b", "c"],
            )),
        ),
        (
            "another peer's VTEP MAC",
            |p, _| set_mac(&mut p[2], Family::V6, Some(mac(2, 6))),
            &[
                ("b", "VTEP MAC 02:00:00:00:02:06 on weft-v6.vxlan is also published by d"),
                ("d", "VTEP MAC 02:00:00:00:02:06 on weft-v6.vxlan is also published by b"),
            ],
            &["c"],
            Some((
                &[("d", "VTEP MAC 02:00:00:00:02:06 on weft-v6.vxlan is already programmed for b")],
                &["b", "c"],
            )),
        ),
        (
            "another peer's underlay address",
            |p, _| p[2].public_ips.v4 = Some("192.0.2.3".parse().unwrap()),
            &[
                ("c", "underlay address 192.0.2.3 is also published by d"),
                ("d", "underlay address 192.0.2.3 is also published by c"),
            ],
            &["b"],
            Some((
                &[("d", "underlay address 192.0.2.3 is already programmed for c")],
                &["b", "c"],
            )),
        ),
        (
            "another peer's name: incumbency cannot tell the two apart",
            |p, _| p[2].node = NodeName::new("c").unwrap(),
            &[
                ("c", "another lease carries the same node name"),
                ("c", "another lease carries the same node name"),
            ],
            &["b"],
            None,
        ),
    ];

    let own = a();
    let accepted = plan(&own, &[&b(), &c(), &d()]).accepted;
    assert_eq!(accepted.nodes().count(), 3);
    for (label, mutate, refused, kept, later) in cases {
        let mut peers = [b(), c(), d()];
        let mut config = cfg();
        mutate(&mut peers, &mut config);
        let later = later.unwrap_or((refused, kept));
        for (when, incumbents, (refused, kept)) in [
            ("at start-up", &none(), (*refused, *kept)),
            ("later", &accepted, later),
        ] {
            let label = format!("{label} ({when})");
            let plan = desired(&own, peers.iter(), &config, incumbents).unwrap();

            let got: Vec<&str> = plan.refused.iter().map(|r| r.node.as_str()).collect();
            let want: Vec<&str> = refused.iter().map(|(node, _)| *node).collect();
            assert_eq!(got, want, "{label}: {:#?}", plan.refused);
            for (refusal, (_, want_reason)) in plan.refused.iter().zip(refused.iter()) {
                assert!(
                    refusal.reason.contains(want_reason),
                    "{label}: {refusal} should contain {want_reason:?}"
                );
            }

            // The others are programmed exactly as if the spoilt peers did not exist, and they
            // alone hold claims at the next plan.
            let unaffected: Vec<Lease> = [b(), c(), d()]
                .into_iter()
                .filter(|l| kept.contains(&l.node.as_str()))
                .collect();
            let expected = desired(&own, unaffected.iter(), &config, &none()).unwrap();
            assert_eq!(plan.datapath, expected.datapath, "{label}");
            assert_eq!(plan.accepted, expected.accepted, "{label}");
        }
    }
}

#[test]
fn a_refusal_lists_every_problem_and_displays_the_peer() {
    let mut d = d();
    d.pod_cidrs.v4 = Some("10.96.0.0/24".parse().unwrap());
    d.public_ips.v4 = Some("192.0.2.1".parse().unwrap());
    let plan = plan(&a(), &[&d]);
    assert_eq!(plan.refused.len(), 1);
    assert_eq!(
        plan.refused[0].to_string(),
        "peer d refused: pod CIDR 10.96.0.0/24 lies outside the cluster CIDRs (10.244.0.0/16, \
         fd00:10:244::/56); pod CIDR 10.96.0.0/24 overlaps the service CIDR 10.96.0.0/12; \
         underlay address 192.0.2.1 is this node's own (nodes sharing one address, such as \
         Vagrant's 10.0.2.15 NAT address, need --iface or --public-ip)"
    );
}

#[test]
fn a_crowd_of_claimants_is_named_briefly() {
    // Ten peers publishing one underlay address: each is refused, naming three others and a count.
    let leases: Vec<Lease> = (10..20)
        .map(|i| {
            let mut l = node(&format!("n{i}"), i);
            l.public_ips.v4 = Some("192.0.2.99".parse().unwrap());
            l
        })
        .collect();
    let plan = desired(&a(), leases.iter(), &cfg(), &none()).unwrap();
    assert_eq!(plan.refused.len(), 10);
    assert_eq!(
        plan.refused[0].reason,
        "underlay address 192.0.2.99 is also published by n11, n12, n13 and 6 more; where no \
         claimant held it before, every claimant is refused"
    );
    assert!(plan.datapath.routes.is_empty());
}

#[test]
fn a_newly_refused_peer_loses_exactly_its_entries() {
    let (a, b, c) = (a(), b(), c());
    let before = applied(&plan(&a, &[&b, &c]).datapath);
    let mut bad_c = c.clone();
    bad_c.public_ips.v4 = Some("10.244.3.1".parse().unwrap());
    let refused = plan(&a, &[&b, &bad_c]);
    assert_eq!(refused.refused.len(), 1);
    // The same operations as if c had left.
    let gone = plan(&a, &[&b]);
    assert_eq!(refused.datapath, gone.datapath);
    let ops = converge(&refused.datapath, &mut before.clone());
    assert_eq!(ops, diff(&gone.datapath, &before));
    assert_eq!(ops.len(), 6);
}

// ---------------------------------------------------------------------------------------------
// Incumbency: what the plan being programmed accepted stays.
// ---------------------------------------------------------------------------------------------

#[test]
fn accepted_holds_exactly_what_is_programmed() {
    let (a, b, c) = (a(), b(), c());
    let mut d = d();
    d.public_ips.v4 = Some("127.0.0.1".parse().unwrap()); // refused
    let e = v6_only(node("e", 5)); // accepted, but nothing to program on an IPv4-only node
    let plan = plan(&v4_only(a), &[&b, &c, &d, &e]);
    assert_eq!(plan.refused.len(), 1);
    let held = &plan.accepted;
    assert_eq!(
        held.nodes().map(|n| n.as_str()).collect::<Vec<_>>(),
        ["b", "c"]
    );
    let b = name("b");
    assert!(held.holds_pod_cidr(&b, &"10.244.2.0/24".parse().unwrap()));
    assert!(
        !held.holds_pod_cidr(&b, &"fd00:10:244:2::/64".parse().unwrap()),
        "not programmed"
    );
    assert!(
        !held.holds_pod_cidr(&b, &"10.244.2.0/25".parse().unwrap()),
        "exact values only"
    );
    assert!(held.holds_identity(&b, &identity(Family::V4, mac(2, 4))));
    assert!(
        !held.holds_identity(&b, &identity(Family::V6, mac(2, 4))),
        "per device"
    );
    assert!(held.holds_underlay(&b, ip("192.0.2.2")));
    assert!(
        !held.holds_underlay(&b, ip("2001:db8::2")),
        "not the tunnels' family"
    );
    assert!(!held.holds_underlay(&name("c"), ip("192.0.2.2")));
    assert!(none().is_empty() && !held.is_empty());
}

/// Once b is accepted, a record claiming what b holds — its pod CIDR exactly, a part of it, a range
/// around it, its VTEP MAC, its underlay address, or all of it — is refused, and b keeps its route,
/// neighbour and FDB entries: nothing to apply. For as long as the record stays.
#[test]
fn an_attacker_claiming_what_b_holds_is_refused_and_b_is_untouched() {
    type Spoil = fn(&mut Lease);
    let cases: &[(&str, Spoil, &str)] = &[
        (
            "b's pod CIDR",
            |x| x.pod_cidrs.v4 = Some("10.244.2.0/24".parse().unwrap()),
            "pod CIDR 10.244.2.0/24 overlaps the pod CIDR already programmed for b (10.244.2.0/24)",
        ),
        (
            "a part of it",
            |x| x.pod_cidrs.v4 = Some("10.244.2.128/25".parse().unwrap()),
            "pod CIDR 10.244.2.128/25 overlaps the pod CIDR already programmed for b \
             (10.244.2.0/24)",
        ),
        (
            "a range around it (and c's)",
            |x| x.pod_cidrs.v4 = Some("10.244.2.0/23".parse().unwrap()),
            "pod CIDR 10.244.2.0/23 overlaps the pod CIDR already programmed for b \
             (10.244.2.0/24), c (10.244.3.0/24)",
        ),
        (
            "b's IPv6 pod CIDR",
            |x| x.pod_cidrs.v6 = Some("fd00:10:244:2::/64".parse().unwrap()),
            "pod CIDR fd00:10:244:2::/64 overlaps the pod CIDR already programmed for b \
             (fd00:10:244:2::/64)",
        ),
        (
            "b's VTEP MAC",
            |x| set_mac(x, Family::V4, Some(mac(2, 4))),
            "VTEP MAC 02:00:00:00:02:04 on weft.vxlan is already programmed for b",
        ),
        (
            "b's underlay address",
            |x| x.public_ips.v4 = Some("192.0.2.2".parse().unwrap()),
            "underlay address 192.0.2.2 is already programmed for b",
        ),
        (
            "b's whole record",
            |x| *x = Lease { node: x.node.clone(), ..b() },
            "VTEP MAC 02:00:00:00:02:04 on weft.vxlan is already programmed for b; \
             VTEP MAC 02:00:00:00:02:06 on weft-v6.vxlan is already programmed for b; \
             pod CIDR 10.244.2.0/24 overlaps the pod CIDR already programmed for b (10.244.2.0/24); \
             pod CIDR fd00:10:244:2::/64 overlaps the pod CIDR already programmed for b \
             (fd00:10:244:2::/64); underlay address 192.0.2.2 is already programmed for b",
        ),
    ];

    let (a, b, c) = (a(), b(), c());
    let before = plan(&a, &[&b, &c]);
    let observed = applied(&before.datapath);
    let v4 = dev("weft.vxlan");
    for (label, spoil, reason) in cases {
        // Named to sort first: the order of names decides nothing.
        let mut x = node("aa", 9);
        spoil(&mut x);
        let after = plan_after(&a, &[&b, &c, &x], &before);
        assert_eq!(
            after.refused,
            vec![Refusal {
                node: name("aa"),
                reason: reason.to_string()
            }],
            "{label}"
        );
        let dp = &after.datapath;
        let route = &dp.routes[&"10.244.2.0/24".parse().unwrap()];
        assert_eq!(
            (route.gateway, &route.dev),
            (ip("10.244.2.0"), &v4),
            "{label}"
        );
        assert_eq!(
            dp.neighbours[&(v4.clone(), ip("10.244.2.0"))].mac,
            mac(2, 4),
            "{label}"
        );
        assert_eq!(
            dp.fdb[&(v4.clone(), mac(2, 4))].dst,
            ip("192.0.2.2"),
            "{label}"
        );
        assert_eq!(dp, &before.datapath, "{label}");
        assert_eq!(diff(dp, &observed), vec![], "{label}");
        assert_eq!(after.accepted, before.accepted, "{label}");
        // The next plans, carrying the incumbents on, say the same.
        assert_eq!(plan_after(&a, &[&b, &c, &x], &after), after, "{label}");
    }
}

/// Two attackers, one claiming a range around b's and c's CIDRs, one a part of b's: both refused,
/// each naming the peers it lost to as well as the other newcomer.
#[test]
fn nested_newcomers_name_the_holder_they_lost_to() {
    let (a, b, c) = (a(), b(), c());
    let before = plan(&a, &[&b, &c]);
    let (mut x1, mut x2) = (node("x1", 8), node("x2", 9));
    x1.pod_cidrs.v4 = Some("10.244.2.0/23".parse().unwrap());
    x2.pod_cidrs.v4 = Some("10.244.2.128/25".parse().unwrap());
    let after = plan_after(&a, &[&b, &c, &x1, &x2], &before);
    assert_eq!(
        after.refused,
        vec![
            Refusal {
                node: name("x1"),
                reason: "pod CIDR 10.244.2.0/23 overlaps the pod CIDR already programmed for b \
                         (10.244.2.0/24), c (10.244.3.0/24); pod CIDR 10.244.2.0/23 overlaps the \
                         pod CIDR of x2 (10.244.2.128/25); where no claimant held it before, \
                         every claimant is refused"
                    .into()
            },
            Refusal {
                node: name("x2"),
                reason: "pod CIDR 10.244.2.128/25 overlaps the pod CIDR already programmed for b \
                         (10.244.2.0/24); pod CIDR 10.244.2.128/25 overlaps the pod CIDR of x1 \
                         (10.244.2.0/23); where no claimant held it before, every claimant is \
                         refused"
                    .into()
            },
        ]
    );
    assert_eq!(after.datapath, before.datapath);
    assert_eq!(after.accepted, before.accepted);
}

/// An accepted peer whose record changes onto what another accepted peer holds is a newcomer for
/// the new claim: refused (programming nothing, its unchanged claims included), the other peer
/// untouched. Its old record back, it is accepted again.
#[test]
fn a_peer_moving_onto_another_peers_claim_is_refused_and_the_other_keeps_it() {
    type Spoil = fn(&mut Lease);
    let cases: &[(&str, Spoil, &str)] = &[
        (
            "c's pod CIDR",
            |b| b.pod_cidrs.v4 = Some("10.244.3.0/24".parse().unwrap()),
            "pod CIDR 10.244.3.0/24 overlaps the pod CIDR already programmed for c (10.244.3.0/24)",
        ),
        (
            "a range around its own and c's",
            |b| b.pod_cidrs.v4 = Some("10.244.2.0/23".parse().unwrap()),
            "pod CIDR 10.244.2.0/23 overlaps the pod CIDR already programmed for c (10.244.3.0/24)",
        ),
        (
            "a part of c's (IPv6)",
            |b| b.pod_cidrs.v6 = Some("fd00:10:244:3:8000::/65".parse().unwrap()),
            "pod CIDR fd00:10:244:3:8000::/65 overlaps the pod CIDR already programmed for c \
             (fd00:10:244:3::/64)",
        ),
        (
            "c's VTEP MAC",
            |b| set_mac(b, Family::V6, Some(mac(3, 6))),
            "VTEP MAC 02:00:00:00:03:06 on weft-v6.vxlan is already programmed for c",
        ),
        (
            "c's underlay address",
            |b| b.public_ips.v4 = Some("192.0.2.3".parse().unwrap()),
            "underlay address 192.0.2.3 is already programmed for c",
        ),
    ];

    let (a, b, c) = (a(), b(), c());
    let before = plan(&a, &[&b, &c]);
    let observed = applied(&before.datapath);
    let only_c = plan(&a, &[&c]);
    for (label, spoil, reason) in cases {
        let mut moved = b.clone();
        spoil(&mut moved);
        let after = plan_after(&a, &[&moved, &c], &before);
        assert_eq!(
            after.refused,
            vec![Refusal {
                node: name("b"),
                reason: reason.to_string()
            }],
            "{label}"
        );
        assert_eq!(after.datapath, only_c.datapath, "{label}");
        assert_eq!(after.accepted, only_c.accepted, "{label}");
        // Exactly b's entries go; c's stay.
        let ops = converge(&after.datapath, &mut observed.clone());
        assert_eq!(ops, diff(&only_c.datapath, &observed), "{label}");
        assert_eq!(ops.len(), 6, "{label}");
        // Refused, b holds nothing now: still refused at the next plan, c still kept.
        let next = plan_after(&a, &[&moved, &c], &after);
        assert_eq!(next, after, "{label}");
        // Its record fixed, b comes back as a newcomer nobody contests.
        let fixed = plan_after(&a, &[&b, &c], &next);
        assert_eq!(fixed, before, "{label}");
    }
}

/// At start-up (no incumbents) with a conflicting record already present, the plan cannot know who
/// is honest and refuses both claimants; it stays so until the store is fixed, and from then on
/// the honest peer holds its claim.
#[test]
fn at_start_up_every_claimant_of_a_conflict_is_refused() {
    let (a, b, c) = (a(), b(), c());
    let mut x = node("x", 9);
    x.pod_cidrs.v4 = Some("10.244.2.0/24".parse().unwrap());
    let start = plan(&a, &[&b, &c, &x]);
    assert_eq!(
        start.refused,
        vec![
            Refusal {
                node: name("b"),
                reason: "pod CIDR 10.244.2.0/24 overlaps the pod CIDR of x (10.244.2.0/24); where \
                         no claimant held it before, every claimant is refused"
                    .into()
            },
            Refusal {
                node: name("x"),
                reason: "pod CIDR 10.244.2.0/24 overlaps the pod CIDR of b (10.244.2.0/24); where \
                         no claimant held it before, every claimant is refused"
                    .into()
            },
        ]
    );
    let only_c = plan(&a, &[&c]);
    assert_eq!(start.datapath, only_c.datapath);
    assert_eq!(start.accepted, only_c.accepted);

    // Neither holds anything, so the next plans say the same.
    let next = plan_after(&a, &[&b, &c, &x], &start);
    assert_eq!(next, start);
    // The false record removed from the store: b is accepted, and holds its CIDR from then on.
    let fixed = plan_after(&a, &[&b, &c], &next);
    assert_eq!(fixed, plan(&a, &[&b, &c]));
    let back = plan_after(&a, &[&b, &c, &x], &fixed);
    assert_eq!(
        back.refused
            .iter()
            .map(|r| r.node.as_str())
            .collect::<Vec<_>>(),
        ["x"]
    );
    assert_eq!(back.datapath, fixed.datapath);
}

/// This node is the incumbent of its own pod CIDR, VTEP MACs and underlay address: a peer claiming
/// one is refused, whatever it held.
#[test]
fn this_node_is_the_incumbent_of_its_own_claims() {
    type Change = fn(&mut Lease);
    let cases: &[(Change, &str)] = &[
        (
            |own| own.pod_cidrs.v4 = Some("10.244.2.128/25".parse().unwrap()),
            "pod CIDR 10.244.2.0/24 overlaps this node's pod CIDR 10.244.2.128/25",
        ),
        (
            |own| set_mac(own, Family::V6, Some(mac(2, 6))),
            "VTEP MAC 02:00:00:00:02:06 is this node's own on weft-v6.vxlan",
        ),
        (
            |own| own.public_ips.v4 = Some("192.0.2.2".parse().unwrap()),
            "underlay address 192.0.2.2 is this node's own",
        ),
    ];
    let (a, b, c) = (a(), b(), c());
    let before = plan(&a, &[&b, &c]);
    assert!(before.accepted.nodes().any(|n| n.as_str() == "b"));
    for (change, reason) in cases {
        let mut own = a.clone();
        change(&mut own);
        let after = desired(&own, [&b, &c], &cfg(), &before.accepted).unwrap();
        assert_eq!(after.refused.len(), 1, "{reason}: {:?}", after.refused);
        assert_eq!(after.refused[0].node, name("b"));
        assert!(
            after.refused[0].reason.starts_with(reason),
            "{:?} should start with {reason:?}",
            after.refused[0].reason
        );
        assert_eq!(
            after
                .accepted
                .nodes()
                .map(|n| n.as_str())
                .collect::<Vec<_>>(),
            ["c"]
        );
    }
}

#[test]
fn own_lease_problems_are_errors_not_an_empty_plan() {
    let mut wg = a();
    wg.backend = BackendData::WireGuard {
        public_key: WgPublicKey([1; 32]),
        port: 51820,
    };
    assert!(matches!(
        desired(&wg, [], &cfg(), &none()),
        Err(PlanError::WrongBackend { .. })
    ));

    let mut no_ip = a();
    no_ip.public_ips = PublicIps::default();
    assert!(matches!(
        desired(&no_ip, [], &cfg(), &none()),
        Err(PlanError::NoUnderlay { .. })
    ));

    let mut no_mac = a();
    set_mac(&mut no_mac, Family::V6, None);
    let err = desired(&no_mac, [], &cfg(), &none()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "this node (a) holds IPv6 pod CIDR fd00:10:244:1::/64 but its lease has no VTEP MAC for \
         weft-v6.vxlan"
    );
}

// ---------------------------------------------------------------------------------------------
// One peer changes: only that peer's operations.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_peer_added_gives_only_its_operations() {
    let (a, b, c, d) = (a(), b(), c(), d());
    let mut observed = applied(&plan(&a, &[&b, &c]).datapath);
    let ops = converge(&plan(&a, &[&b, &c, &d]).datapath, &mut observed);
    assert_eq!(
        lines(&ops),
        [
            "bridge fdb replace 02:00:00:00:04:06 dev weft-v6.vxlan dst 192.0.2.4 self permanent",
            "bridge fdb replace 02:00:00:00:04:04 dev weft.vxlan dst 192.0.2.4 self permanent",
            "ip neigh replace fd00:10:244:4:: lladdr 02:00:00:00:04:06 dev weft-v6.vxlan nud permanent",
            "ip neigh replace 10.244.4.0 lladdr 02:00:00:00:04:04 dev weft.vxlan nud permanent",
            "ip route replace 10.244.4.0/24 via 10.244.4.0 dev weft.vxlan onlink",
            "ip route replace fd00:10:244:4::/64 via fd00:10:244:4:: dev weft-v6.vxlan onlink",
        ]
    );
}

#[test]
fn a_peer_removed_gives_exactly_its_deletions() {
    let (a, b, c) = (a(), b(), c());
    let mut observed = applied(&plan(&a, &[&b, &c]).datapath);
    let ops = converge(&plan(&a, &[&b]).datapath, &mut observed);
    assert_eq!(
        lines(&ops),
        [
            "ip route del 10.244.3.0/24 via 10.244.3.0 dev weft.vxlan onlink",
            "ip route del fd00:10:244:3::/64 via fd00:10:244:3:: dev weft-v6.vxlan onlink",
            "ip neigh del fd00:10:244:3:: dev weft-v6.vxlan",
            "ip neigh del 10.244.3.0 dev weft.vxlan",
            "bridge fdb del 02:00:00:00:03:06 dev weft-v6.vxlan dst 192.0.2.3 self",
            "bridge fdb del 02:00:00:00:03:04 dev weft.vxlan dst 192.0.2.3 self",
        ]
    );
}

#[test]
fn a_peer_whose_underlay_address_moved_is_one_fdb_replace_per_device() {
    // Single stack: exactly one operation.
    let (a, b) = (v4_only(a()), v4_only(b()));
    let mut observed = applied(&plan(&a, &[&b]).datapath);
    let mut moved = b.clone();
    moved.public_ips.v4 = Some("192.0.2.22".parse().unwrap());
    let ops = converge(&plan(&a, &[&moved]).datapath, &mut observed);
    assert_eq!(
        lines(&ops),
        ["bridge fdb replace 02:00:00:00:02:04 dev weft.vxlan dst 192.0.2.22 self permanent"]
    );

    // Dual stack: one per device (both tunnel over the IPv4 underlay).
    let (a, b) = (self::a(), self::b());
    let mut observed = applied(&plan(&a, &[&b]).datapath);
    let mut moved = b.clone();
    moved.public_ips.v4 = Some("192.0.2.22".parse().unwrap());
    let ops = converge(&plan(&a, &[&moved]).datapath, &mut observed);
    assert_eq!(
        lines(&ops),
        [
            "bridge fdb replace 02:00:00:00:02:06 dev weft-v6.vxlan dst 192.0.2.22 self permanent",
            "bridge fdb replace 02:00:00:00:02:04 dev weft.vxlan dst 192.0.2.22 self permanent",
        ]
    );

    // Its address of the other family (not the tunnels') moving changes nothing.
    let mut moved_v6 = moved.clone();
    moved_v6.public_ips.v6 = Some("2001:db8::22".parse().unwrap());
    let ops = converge(&plan(&a, &[&moved_v6]).datapath, &mut observed);
    assert_eq!(ops, vec![]);
}

#[test]
fn a_peer_with_a_new_vtep_mac_swaps_its_entries_in_order() {
    let (a, b, c) = (a(), b(), c());
    let mut observed = applied(&plan(&a, &[&b, &c]).datapath);
    let mut changed = c.clone();
    set_mac(&mut changed, Family::V4, Some(mac(0x33, 4)));
    let ops = converge(&plan(&a, &[&b, &changed]).datapath, &mut observed);
    assert_eq!(
        lines(&ops),
        [
            "bridge fdb replace 02:00:00:00:33:04 dev weft.vxlan dst 192.0.2.3 self permanent",
            "ip neigh replace 10.244.3.0 lladdr 02:00:00:00:33:04 dev weft.vxlan nud permanent",
            "bridge fdb del 02:00:00:00:03:04 dev weft.vxlan dst 192.0.2.3 self",
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Devices.
// ---------------------------------------------------------------------------------------------

#[test]
fn own_underlay_moved_recreates_the_devices_and_everything_on_them() {
    let (a, b, c) = (a(), b(), c());
    let mut observed = applied(&plan(&a, &[&b, &c]).datapath);
    let mut moved = a.clone();
    moved.public_ips.v4 = Some("192.0.2.9".parse().unwrap());
    let ops = converge(&plan(&moved, &[&b, &c]).datapath, &mut observed);
    assert_eq!(
        ops[1].to_string(),
        "ip link del weft.vxlan && ip link add weft.vxlan up address 02:00:00:00:01:04 mtu 1450 \
         type vxlan id 1 local 192.0.2.9 dstport 8472 nolearning # local 192.0.2.1 → 192.0.2.9"
    );
    let recreated = ops
        .iter()
        .filter(|op| matches!(op, Op::RecreateDevice { .. }))
        .count();
    assert_eq!(recreated, 2);
    assert_eq!(
        ops.len(),
        2 + 2 + 2 * 2 * 3,
        "addresses and entries re-added"
    );
}

#[test]
fn recreate_reasons_list_every_difference() {
    let desired = plan(&v4_only(a()), &[]).datapath;
    let mut observed = desired.clone();
    let device = observed.devices.get_mut(&dev("weft.vxlan")).unwrap();
    device.vni = 7;
    device.port = 4789;
    device.learning = true;
    device.mac = mac(9, 9);
    device.mtu = 1200; // changed in place no more: the device is re-created anyway
    let ops = converge(&desired, &mut observed);
    match &ops[0] {
        Op::RecreateDevice { reason, .. } => assert_eq!(
            reason,
            "vni 7 → 1, port 4789 → 8472, learning true → false, mac 02:00:00:00:09:09 → \
             02:00:00:00:01:04"
        ),
        other => panic!("{other}"),
    }
    assert_eq!(ops.len(), 2, "{:?}", lines(&ops)); // and the address
}

#[test]
fn a_device_found_down_is_brought_up_and_its_routes_restored() {
    let (a, b) = (v4_only(a()), v4_only(b()));
    let desired = plan(&a, &[&b]).datapath;
    let mut observed = applied(&desired);
    // What the kernel leaves after `ip link set weft.vxlan down`: the device down, its routes gone.
    observed.devices.get_mut(&dev("weft.vxlan")).unwrap().up = false;
    observed.routes.clear();
    let ops = converge(&desired, &mut observed);
    assert_eq!(
        lines(&ops),
        [
            "ip link set weft.vxlan up",
            "ip route replace 10.244.2.0/24 via 10.244.2.0 dev weft.vxlan onlink",
        ]
    );
}

#[test]
fn a_family_given_up_deletes_its_device_alone() {
    let (a, b) = (a(), b());
    let mut observed = applied(&plan(&a, &[&b]).datapath);
    let ops = converge(&plan(&v4_only(a), &[&b]).datapath, &mut observed);
    assert_eq!(lines(&ops), ["ip link del weft-v6.vxlan"]);
}

#[test]
fn stale_addresses_and_foreign_entries_are_removed() {
    let (a, b) = (v4_only(a()), v4_only(b()));
    let desired = plan(&a, &[&b]).datapath;
    let mut observed = applied(&desired);
    let v4 = dev("weft.vxlan");
    // Left over from an earlier pod CIDR and a peer long gone.
    observed.insert_address(Address {
        dev: v4.clone(),
        address: "10.244.9.0/32".parse().unwrap(),
    });
    observed.insert_route(Route {
        dst: "10.244.8.0/24".parse().unwrap(),
        gateway: ip("10.244.8.0"),
        dev: v4.clone(),
        onlink: true,
    });
    observed.insert_neighbour(Neighbour {
        dev: v4.clone(),
        ip: ip("10.244.8.0"),
        mac: mac(8, 4),
    });
    observed.insert_fdb(Fdb {
        dev: v4.clone(),
        mac: mac(8, 4),
        dst: ip("192.0.2.8"),
    });
    // And b's neighbour entry pointing at a wrong MAC: replaced, not deleted and re-added.
    observed.insert_neighbour(Neighbour {
        dev: v4.clone(),
        ip: ip("10.244.2.0"),
        mac: mac(8, 4),
    });
    let ops = diff(&desired, &observed);
    assert_eq!(
        lines(&ops),
        [
            "ip addr del 10.244.9.0/32 dev weft.vxlan",
            "ip route del 10.244.8.0/24 via 10.244.8.0 dev weft.vxlan onlink",
            "ip neigh replace 10.244.2.0 lladdr 02:00:00:00:02:04 dev weft.vxlan nud permanent",
            "ip neigh del 10.244.8.0 dev weft.vxlan",
            "bridge fdb del 02:00:00:00:08:04 dev weft.vxlan dst 192.0.2.8 self",
        ]
    );
    for op in &ops {
        observed.apply(op).unwrap();
    }
    assert_eq!(observed, desired);
}

#[test]
fn equal_states_need_nothing() {
    let (a, b, c) = (a(), b(), c());
    let desired = plan(&a, &[&b, &c]).datapath;
    assert_eq!(diff(&desired, &desired.clone()), vec![]);
    assert_eq!(diff(&Datapath::default(), &Datapath::default()), vec![]);
}

#[test]
fn display_of_the_remaining_operations() {
    let cases = [
        (
            Op::SetMtu {
                dev: dev("weft.vxlan"),
                mtu: 1400,
            },
            "ip link set weft.vxlan mtu 1400",
        ),
        (Op::SetUp(dev("weft.vxlan")), "ip link set weft.vxlan up"),
        (
            Op::DeleteDevice(dev("weft-v6.vxlan")),
            "ip link del weft-v6.vxlan",
        ),
        (
            Op::DeleteAddress(Address {
                dev: dev("weft.vxlan"),
                address: "10.244.9.0/32".parse().unwrap(),
            }),
            "ip addr del 10.244.9.0/32 dev weft.vxlan",
        ),
    ];
    for (op, line) in cases {
        assert_eq!(op.to_string(), line);
        assert!(line.contains(op.dev().as_str()), "{line}");
    }
}

#[test]
fn device_names_and_vnis() {
    assert_eq!(device_name(Family::V4).as_str(), "weft.vxlan");
    assert_eq!(device_name(Family::V6).as_str(), "weft-v6.vxlan");
    assert_eq!((vni(Family::V4), vni(Family::V6)), (1, 2));
}

#[test]
fn plan_config_from_the_daemon_config() {
    let raw = crate::config::RawSettings {
        node_name: Some("a".parse().unwrap()),
        cluster_cidr: Some("10.244.0.0/16,fd00:10:244::/56".parse().unwrap()),
        service_cidr: Some("10.96.0.0/12".parse().unwrap()),
        mtu: Some("1400".parse().unwrap()),
        ..Default::default()
    };
    let config = PlanConfig::new(&raw.validate().unwrap(), 1500);
    assert_eq!(
        config,
        PlanConfig {
            cluster_cidrs: vec![
                "10.244.0.0/16".parse().unwrap(),
                "fd00:10:244::/56".parse().unwrap()
            ],
            service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
            underlay_mtu: 1500,
            mtu: Some(1400),
            node_prefix_v4: Some(24),
            node_prefix_v6: Some(64),
            direct_routing: None,
        }
    );
}

// ---------------------------------------------------------------------------------------------
// Model test: random peer changes, ops applied to a model kernel, model equals plan.
// ---------------------------------------------------------------------------------------------

/// Peers of a large cluster: node `k` gets pods 10.(k/256).(k%256).0/24 and fd00:10:0:k::/64,
/// underlay address number `ip`, VTEP MACs number `mac_serial`.
fn big_node(k: u32, ip: u32, mac_serial: u32) -> Lease {
    let [_, hi, lo, _] = (k << 8).to_be_bytes();
    let [_, x, y, z] = mac_serial.to_be_bytes();
    Lease {
        node: name(&format!("node-{k}")),
        pod_cidrs: PodCidrs {
            v4: Some(format!("10.{hi}.{lo}.0/24").parse().unwrap()),
            v6: Some(format!("fd00:10:0:{k:x}::/64").parse().unwrap()),
        },
        public_ips: PublicIps {
            v4: Some(underlay_v4(ip)),
            v6: Some(format!("2001:db8::{ip:x}").parse().unwrap()),
        },
        backend: BackendData::Vxlan {
            vtep_mac: Some(MacAddr([0x02, x, y, z, 0, 4])),
            vtep_mac_v6: Some(MacAddr([0x02, x, y, z, 0, 6])),
        },
        expires: None,
        machine: None,
    }
}

impl ModelSubject for Vxlan {
    fn peer(&self, k: u32, ip: u32, serial: u32) -> Lease {
        big_node(k, ip, serial)
    }

    /// A new VTEP MAC for its first family.
    fn new_identity(&self, lease: &mut Lease, serial: u32) {
        let family = match lease.pod_cidrs.v4 {
            Some(_) => Family::V4,
            None => Family::V6,
        };
        let [_, x, y, z] = serial.to_be_bytes();
        set_mac(lease, family, Some(MacAddr([0x02, x, y, z, 0xee, 0])));
    }

    /// Per family: a route, a neighbour and an FDB entry to join or leave; one FDB replace to
    /// move; FDB add, neighbour replace and FDB delete for a new VTEP MAC (one family).
    fn expected_ops(&self, change: Change, families: usize) -> usize {
        match change {
            Change::Join | Change::Leave => 3 * families,
            Change::Move => families,
            Change::NewIdentity => 3 * families.min(1),
        }
    }

    /// Two devices and their addresses.
    fn expected_start_ops(&self) -> usize {
        4
    }

    fn check_between_ops(&self, state: &Datapath, after: &Op) {
        assert_resolvable(state, after);
    }
}

#[test]
fn model_random_peer_changes_converge_with_few_operations() {
    run_model(&Vxlan, 500);
}

#[test]
fn five_thousand_peers_from_empty() {
    let config = big_config();
    let own = big_node(1, 1, 1);
    let peers: Vec<Lease> = (2..5002).map(|k| big_node(k, k, k)).collect();

    let started = Instant::now();
    let plan = desired(&own, peers.iter(), &config, &Incumbents::default()).unwrap();
    let planned = started.elapsed();
    let ops = diff(&plan.datapath, &Datapath::default());
    let diffed = started.elapsed() - planned;

    assert_eq!(plan.refused, vec![]);
    let dp = &plan.datapath;
    assert_eq!(
        (
            dp.devices.len(),
            dp.addresses.len(),
            dp.routes.len(),
            dp.neighbours.len(),
            dp.fdb.len()
        ),
        (2, 2, 10_000, 10_000, 10_000)
    );
    assert_eq!(ops.len(), 2 + 2 + 5000 * 2 * 3);
    let mut model = Datapath::default();
    for op in &ops {
        model.apply(op).unwrap();
    }
    assert_eq!(&model, dp);
    // And the steady state after: nothing to do.
    let started = Instant::now();
    assert_eq!(diff(dp, &model), vec![]);
    let idle = started.elapsed();
    eprintln!(
        "5000 peers: plan {planned:?}, diff from empty {diffed:?} ({} ops), diff when equal {idle:?}",
        ops.len()
    );
}

#[test]
fn a_peer_claiming_a_pod_cidr_of_the_wrong_size_is_refused() {
    let config = PlanConfig {
        node_prefix_v4: Some(24),
        node_prefix_v6: Some(64),
        direct_routing: None,
        ..cfg()
    };
    let mut squatter = c();
    squatter.pod_cidrs.v4 = Some("10.244.128.0/17".parse().unwrap());
    let plan = plan_with(&a(), &[&b(), &squatter], &config);
    assert_eq!(plan.refused.len(), 1, "{:?}", plan.refused);
    assert!(
        plan.refused[0]
            .reason
            .contains("10.244.128.0/17 is not a /24"),
        "{}",
        plan.refused[0]
    );
    assert!(
        plan.datapath
            .routes
            .contains_key(&"10.244.2.0/24".parse().unwrap()),
        "b is unaffected"
    );
}

// ---------------------------------------------------------------------------------------------
// Direct routing: a is on 192.0.2.0/24 and 2001:db8::/64 (eth1); b shares both, c is elsewhere.
// ---------------------------------------------------------------------------------------------

fn direct_cfg() -> PlanConfig {
    PlanConfig {
        direct_routing: Some(crate::plan::DirectRouting {
            iface: dev("eth1"),
            subnets: vec![
                "192.0.2.0/24".parse().unwrap(),
                "2001:db8::/64".parse().unwrap(),
            ],
        }),
        ..cfg()
    }
}

/// c, on another subnet of both families.
fn c_elsewhere() -> Lease {
    let mut c = c();
    c.public_ips = PublicIps {
        v4: Some("198.51.100.3".parse().unwrap()),
        v6: Some("2001:db8:1::3".parse().unwrap()),
    };
    c
}

fn route_lines(dp: &Datapath) -> Vec<String> {
    dp.routes
        .values()
        .map(|r| Op::ReplaceRoute(r.clone()).to_string())
        .collect()
}

#[test]
fn a_peer_on_a_connected_subnet_is_routed_straight_and_one_elsewhere_through_the_tunnel() {
    let plan = plan_with(&a(), &[&b(), &c_elsewhere()], &direct_cfg());
    assert_eq!(plan.refused, vec![]);
    assert_eq!(
        route_lines(&plan.datapath),
        vec![
            "ip route replace 10.244.2.0/24 via 192.0.2.2 dev eth1",
            "ip route replace 10.244.3.0/24 via 10.244.3.0 dev weft.vxlan onlink",
            "ip route replace fd00:10:244:2::/64 via 2001:db8::2 dev eth1",
            "ip route replace fd00:10:244:3::/64 via fd00:10:244:3:: dev weft-v6.vxlan onlink",
        ]
    );
    // Only c has tunnel entries: one neighbour and one FDB entry per family.
    let fdb: Vec<_> = plan.datapath.fdb.values().map(|f| f.dst).collect();
    assert_eq!(fdb, vec![ip("198.51.100.3"), ip("198.51.100.3")]);
    assert_eq!(plan.datapath.neighbours.len(), 2);
}

#[test]
fn direct_routing_is_decided_per_family() {
    // b shares the IPv4 subnet only: its IPv6 pods go through the tunnel.
    let mut b = b();
    b.public_ips.v6 = Some("2001:db8:1::2".parse().unwrap());
    let plan = plan_with(&a(), &[&b], &direct_cfg());
    assert_eq!(
        route_lines(&plan.datapath),
        vec![
            "ip route replace 10.244.2.0/24 via 192.0.2.2 dev eth1",
            "ip route replace fd00:10:244:2::/64 via fd00:10:244:2:: dev weft-v6.vxlan onlink",
        ]
    );
    // A peer publishing no IPv6 underlay address: its IPv6 pods through the tunnel too.
    let mut b4 = node("b", 2);
    b4.public_ips.v6 = None;
    let plan = plan_with(&a(), &[&b4], &direct_cfg());
    assert_eq!(plan.datapath.fdb.len(), 1);
    assert!(plan.datapath.routes.values().any(|r| r.dev == dev("eth1")));
}

#[test]
fn direct_routing_off_sends_every_peer_through_the_tunnel() {
    let plan = plan_with(&a(), &[&b(), &c_elsewhere()], &cfg());
    assert!(plan
        .datapath
        .routes
        .values()
        .all(|r| state::is_tunnel_device(&r.dev) && r.onlink));
    assert_eq!(plan.datapath.fdb.len(), 4);
}

#[test]
fn a_peer_moving_onto_the_shared_subnet_leaves_the_tunnel_after_its_route_moved() {
    let config = direct_cfg();
    let mut b_far = b();
    b_far.public_ips = c_elsewhere().public_ips;
    b_far.public_ips.v4 = Some("198.51.100.2".parse().unwrap());
    b_far.public_ips.v6 = Some("2001:db8:1::2".parse().unwrap());
    let before = plan_with(&a(), &[&b_far, &c_elsewhere()], &config);
    let after = plan_with(&a(), &[&b(), &c_elsewhere()], &config);
    let mut kernel = before.datapath.clone();
    let ops = converge(&after.datapath, &mut kernel);
    assert_eq!(
        lines(&ops),
        vec![
            "ip route replace 10.244.2.0/24 via 192.0.2.2 dev eth1",
            "ip route replace fd00:10:244:2::/64 via 2001:db8::2 dev eth1",
            "ip neigh del fd00:10:244:2:: dev weft-v6.vxlan",
            "ip neigh del 10.244.2.0 dev weft.vxlan",
            "bridge fdb del 02:00:00:00:02:06 dev weft-v6.vxlan dst 198.51.100.2 self",
            "bridge fdb del 02:00:00:00:02:04 dev weft.vxlan dst 198.51.100.2 self",
        ],
        "b's route moves first, its tunnel entries go after; c is not touched"
    );
    // And back: the tunnel entries come first, the route last.
    let mut kernel = after.datapath.clone();
    let ops = converge(&before.datapath, &mut kernel);
    assert_eq!(
        lines(&ops),
        vec![
            "bridge fdb replace 02:00:00:00:02:06 dev weft-v6.vxlan dst 198.51.100.2 self permanent",
            "bridge fdb replace 02:00:00:00:02:04 dev weft.vxlan dst 198.51.100.2 self permanent",
            "ip neigh replace fd00:10:244:2:: lladdr 02:00:00:00:02:06 dev weft-v6.vxlan nud permanent",
            "ip neigh replace 10.244.2.0 lladdr 02:00:00:00:02:04 dev weft.vxlan nud permanent",
            "ip route replace 10.244.2.0/24 via 10.244.2.0 dev weft.vxlan onlink",
            "ip route del fd00:10:244:2::/64 via 2001:db8::2 dev eth1",
            "ip route replace fd00:10:244:2::/64 via fd00:10:244:2:: dev weft-v6.vxlan onlink",
        ]
    );
}

#[test]
fn a_direct_route_left_behind_is_deleted_and_one_on_the_underlay_survives_a_device_recreation() {
    let config = direct_cfg();
    let with_b = plan_with(&a(), &[&b()], &config);
    let alone = plan_with(&a(), &[], &config);
    let mut kernel = with_b.datapath.clone();
    let ops = converge(&alone.datapath, &mut kernel);
    assert_eq!(
        lines(&ops),
        vec![
            "ip route del 10.244.2.0/24 via 192.0.2.2 dev eth1",
            "ip route del fd00:10:244:2::/64 via 2001:db8::2 dev eth1",
        ]
    );
    // weft.vxlan re-created (its VNI changed under weft): the direct routes on eth1 stay.
    let mut kernel = with_b.datapath.clone();
    kernel.devices.get_mut(&dev("weft.vxlan")).unwrap().vni = 42;
    let ops = converge(&with_b.datapath, &mut kernel);
    assert!(ops.iter().all(|op| op.dev() != &dev("eth1")), "{ops:?}");
}
