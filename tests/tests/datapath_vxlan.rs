//! weftd's VXLAN backend (`weftd::backend::vxlan`: its plan, diff and `driver::VxlanDriver`)
//! against the kernel, as root, in a network namespace of the test's own: one thread enters a new
//! namespace (`unshare(CLONE_NEWNET)`), runs a current-thread tokio runtime there and does all the
//! work; `ip` and `bridge`, run as its children, inherit the namespace and play the operator. The
//! namespace with everything in it is gone when the thread ends, whether the test passes or
//! panics. Nothing on the host is read or changed.
//!
//! The node is `a` (index 1) of a dual-stack fixture like the backend's unit tests: node `i` has
//! pods 10.244.i.0/24 and fd00:10:244:i::/64, underlay 192.0.2.i (and 2001:db8::i) and VTEP MACs
//! 02:00:00:00:0i:04 (`weft.vxlan`) and 02:00:00:00:0i:06 (`weft-v6.vxlan`). Both devices send
//! from the IPv4 underlay, so every FDB `dst` is an IPv4 address.
//!
//! Run: `cargo test -p weft-lab --test datapath_vxlan`.

use std::collections::BTreeSet;
use std::net::IpAddr;
use weft_lab::netns::in_fresh_netns_async;

use serde_json::Value;
use weft_proto::lease::{BackendData, Lease, MacAddr, PodCidrs, PublicIps};
use weft_proto::names::NodeName;
use weftd::backend::vxlan::driver::VxlanDriver;
use weftd::backend::vxlan::{device_name, Datapath, Fdb, Neighbour, Op, Route, Vxlan};
use weftd::backend::{Backend, Driver};
use weftd::plan::admission::Incumbents;
use weftd::plan::{plan, BackendPlan, Family, Plan, PlanConfig};

/// Run a command as the operator would; its standard output.
fn sh(args: &[&str]) -> String {
    weft_lab::netns::run(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Run one command line (split on whitespace) as the operator would; its standard output.
fn cli(line: &str) -> String {
    sh(&line.split_whitespace().collect::<Vec<_>>())
}

/// The JSON array a `-j` command prints (nothing printed reads as empty).
fn json(args: &[&str]) -> Vec<Value> {
    let out = sh(args);
    if out.trim().is_empty() {
        return Vec::new();
    }
    match serde_json::from_str(&out) {
        Ok(Value::Array(items)) => items,
        other => panic!("{}: not a JSON array: {other:?}\n{out}", args.join(" ")),
    }
}

/// `key` of a JSON object as text ("" when absent); arrays joined with spaces.
fn text(item: &Value, key: &str) -> String {
    match &item[key] {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The node's underlay: a veth pair with 192.0.2.1/24 and 2001:db8::1/64 on `u0`, both ends up.
fn underlay() {
    cli("ip link add u0 type veth peer name u1");
    cli("ip addr add 192.0.2.1/24 dev u0");
    cli("ip addr add 2001:db8::1/64 dev u0 nodad");
    cli("ip link set u0 up");
    cli("ip link set u1 up");
}

fn mac(node: u8, family: Family) -> MacAddr {
    let last = match family {
        Family::V4 => 4,
        Family::V6 => 6,
    };
    MacAddr([0x02, 0, 0, 0, node, last])
}

/// Node `i` of the fixture, its IPv4 underlay address `underlay_v4`.
fn node(i: u8, underlay_v4: &str) -> Lease {
    Lease {
        node: NodeName::new(format!("node-{i}")).unwrap(),
        pod_cidrs: PodCidrs {
            v4: Some(format!("10.244.{i}.0/24").parse().unwrap()),
            v6: Some(format!("fd00:10:244:{i}::/64").parse().unwrap()),
        },
        public_ips: PublicIps {
            v4: Some(underlay_v4.parse().unwrap()),
            v6: Some(format!("2001:db8::{i}").parse().unwrap()),
        },
        backend: BackendData::Vxlan {
            vtep_mac: Some(mac(i, Family::V4)),
            vtep_mac_v6: Some(mac(i, Family::V6)),
        },
        expires: None,
        machine: None,
    }
}

/// A peer of the fixture at its usual underlay address.
fn peer(i: u8) -> Lease {
    node(i, &format!("192.0.2.{i}"))
}

fn config() -> PlanConfig {
    PlanConfig {
        cluster_cidrs: vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:10:244::/56".parse().unwrap(),
        ],
        service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
        underlay_mtu: 1500,
        mtu: None,
        node_prefix_v4: Some(24),
        node_prefix_v6: Some(64),
        direct_routing: None,
    }
}

/// Node 1's plan with `peers`, every one of them accepted.
fn plan_for(peers: &[Lease], incumbents: &Incumbents) -> Plan<Datapath> {
    let plan = plan(&Vxlan, &peer(1), peers, &config(), incumbents).expect("a plan");
    assert!(
        plan.refused.is_empty(),
        "every peer is accepted: {:?}",
        plan.refused
    );
    plan
}

fn driver() -> VxlanDriver {
    let handle = weftd::datapath::netns::connect_here().expect("a netlink connection");
    Vxlan.driver(handle, &config().cluster_cidrs)
}

/// Observe, diff, apply every operation; the operations applied.
async fn converge(driver: &mut VxlanDriver, desired: &Datapath) -> Vec<Op> {
    let observed = driver.observe().await.expect("observe");
    let ops = Vxlan.diff(desired, &observed);
    for op in &ops {
        driver
            .apply(op)
            .await
            .unwrap_or_else(|e| panic!("{op}: {e}"));
    }
    ops
}

/// The kernel holds exactly `desired`: observing again finds nothing to do.
async fn assert_converged(driver: &mut VxlanDriver, desired: &Datapath) {
    let observed = driver.observe().await.expect("observe");
    let left = Vxlan.diff(desired, &observed);
    assert!(left.is_empty(), "nothing left to do: {left:#?}");
    assert_eq!(&observed, desired, "the kernel reads back as the plan");
}

/// Sort operations by their log line (the diff's order is the unit tests' business).
fn sorted(mut ops: Vec<Op>) -> Vec<Op> {
    ops.sort_by_key(|op| op.to_string());
    ops
}

/// Peer `i`'s gateway address in `family`: the network address of its pod CIDR.
fn gateway(i: u8, family: Family) -> IpAddr {
    match family {
        Family::V4 => format!("10.244.{i}.0").parse().unwrap(),
        Family::V6 => format!("fd00:10:244:{i}::").parse().unwrap(),
    }
}

fn route(i: u8, family: Family) -> Route {
    let len = if family == Family::V4 { 24 } else { 64 };
    Route {
        dst: ipnet::IpNet::new(gateway(i, family), len).unwrap(),
        gateway: gateway(i, family),
        dev: device_name(family),
        onlink: true,
    }
}

fn neighbour(i: u8, family: Family) -> Neighbour {
    Neighbour {
        dev: device_name(family),
        ip: gateway(i, family),
        mac: mac(i, family),
    }
}

fn fdb(i: u8, family: Family, dst: &str) -> Fdb {
    Fdb {
        dev: device_name(family),
        mac: mac(i, family),
        dst: dst.parse().unwrap(),
    }
}

/// What an operator sees of weft's VXLAN datapath, as `ip` / `bridge` lines.
#[derive(Debug, PartialEq, Eq)]
struct View {
    devices: Vec<String>,
    routes: BTreeSet<String>,
    neighbours: BTreeSet<String>,
    fdb: BTreeSet<String>,
}

impl View {
    /// Read from the kernel with `ip -j` and `bridge -j`.
    fn kernel() -> View {
        let mut view = View {
            devices: Vec::new(),
            routes: BTreeSet::new(),
            neighbours: BTreeSet::new(),
            fdb: BTreeSet::new(),
        };
        for (family, flag) in [(Family::V4, "-4"), (Family::V6, "-6")] {
            let dev = device_name(family).to_string();
            view.devices.push(device_line(&dev));
            for r in json(&["ip", flag, "-j", "route", "show", "proto", "87"]) {
                let (dst, via) = (text(&r, "dst"), text(&r, "gateway"));
                let (on, flags) = (text(&r, "dev"), text(&r, "flags"));
                view.routes
                    .insert(format!("{dst} via {via} dev {on} {flags}"));
            }
            for n in json(&["ip", flag, "-j", "neigh", "show", "dev", &dev]) {
                let (ip, lladdr) = (text(&n, "dst"), text(&n, "lladdr"));
                let state = text(&n, "state");
                view.neighbours
                    .insert(format!("{ip} lladdr {lladdr} dev {dev} {state}"));
            }
        }
        for dev in ["weft.vxlan", "weft-v6.vxlan"] {
            for e in json(&["bridge", "-j", "fdb", "show", "dev", dev]) {
                let (mac, dst, state) = (text(&e, "mac"), text(&e, "dst"), text(&e, "state"));
                view.fdb
                    .insert(format!("{mac} dev {dev} dst {dst} {state}"));
            }
        }
        view
    }

    /// What node 1 should show with peers `(index, IPv4 underlay)`.
    fn expected(peers: &[(u8, &str)]) -> View {
        let mut view = View {
            devices: vec![
                "weft.vxlan vxlan id 1 port 8472 local 192.0.2.1 learning false \
                 mtu 1450 address 02:00:00:00:01:04 UP: 10.244.1.0/32"
                    .to_string(),
                "weft-v6.vxlan vxlan id 2 port 8472 local 192.0.2.1 learning false \
                 mtu 1450 address 02:00:00:00:01:06 UP: fd00:10:244:1::/128"
                    .to_string(),
            ],
            routes: BTreeSet::new(),
            neighbours: BTreeSet::new(),
            fdb: BTreeSet::new(),
        };
        for &(i, underlay) in peers {
            for family in Family::ALL {
                let (dev, gw, mac) = (device_name(family), gateway(i, family), mac(i, family));
                let r = route(i, family);
                view.routes
                    .insert(format!("{} via {gw} dev {dev} onlink", r.dst));
                view.neighbours
                    .insert(format!("{gw} lladdr {mac} dev {dev} PERMANENT"));
                view.fdb
                    .insert(format!("{mac} dev {dev} dst {underlay} permanent"));
            }
        }
        view
    }
}

/// One device as `ip -d -j link` and `ip -j addr` show it: kind, VXLAN attributes, MTU, MAC,
/// whether it is up, and its global addresses.
fn device_line(dev: &str) -> String {
    let Some(link) = json(&["ip", "-d", "-j", "link", "show", dev]).pop() else {
        return format!("{dev} missing");
    };
    let info = &link["linkinfo"];
    let data = &info["info_data"];
    let up = if text(&link, "flags").split(' ').any(|f| f == "UP") {
        "UP"
    } else {
        "DOWN"
    };
    let addresses: Vec<String> = json(&["ip", "-j", "addr", "show", "dev", dev])
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter(|a| text(a, "scope") == "global")
        .map(|a| format!("{}/{}", text(&a, "local"), text(&a, "prefixlen")))
        .collect();
    format!(
        "{dev} {} id {} port {} local {} learning {} mtu {} address {} {up}: {}",
        text(info, "info_kind"),
        text(data, "id"),
        text(data, "port"),
        text(data, "local"),
        text(data, "learning"),
        text(&link, "mtu"),
        text(&link, "address"),
        addresses.join(" ")
    )
}

#[test]
fn three_peers_converge_then_one_goes_and_one_moves() {
    in_fresh_netns_async(|| async {
        underlay();
        let mut driver = driver();
        assert_eq!(
            driver.observe().await.unwrap(),
            Datapath::default(),
            "a fresh namespace holds nothing of weft's"
        );
        let first = plan_for(&[peer(2), peer(3), peer(4)], &Incumbents::default());
        let ops = converge(&mut driver, &first.datapath).await;
        let creates = ops
            .iter()
            .filter(|op| matches!(op, Op::CreateDevice(_)))
            .count();
        // Two devices, their two addresses, and per peer and family a route, a neighbour and an FDB entry.
        assert_eq!((ops.len(), creates), (2 + 2 + 3 * 2 * 3, 2), "{ops:#?}");
        assert_converged(&mut driver, &first.datapath).await;
        let three = [(2, "192.0.2.2"), (3, "192.0.2.3"), (4, "192.0.2.4")];
        assert_eq!(View::kernel(), View::expected(&three));

        // Node 4 leaves and node 3's underlay address moves: only their entries change.
        let second = plan_for(&[peer(2), node(3, "192.0.2.33")], &first.accepted);
        let ops = converge(&mut driver, &second.datapath).await;
        let mut expected = Vec::new();
        for family in Family::ALL {
            expected.extend([
                Op::DeleteRoute(route(4, family)),
                Op::DeleteNeighbour(neighbour(4, family)),
                Op::DeleteFdb(fdb(4, family, "192.0.2.4")),
                Op::ReplaceFdb(fdb(3, family, "192.0.2.33")),
            ]);
        }
        assert_eq!(sorted(ops), sorted(expected));
        assert_converged(&mut driver, &second.datapath).await;
        assert_eq!(
            View::kernel(),
            View::expected(&[(2, "192.0.2.2"), (3, "192.0.2.33")])
        );
    });
}

#[test]
fn drift_is_repaired_and_an_operators_entries_are_left_alone() {
    in_fresh_netns_async(|| async {
        underlay();
        let mut driver = driver();
        let desired = plan_for(&[peer(2), peer(3)], &Incumbents::default()).datapath;
        converge(&mut driver, &desired).await;

        // An operator deletes one route and one FDB entry, and adds a route and a neighbour of
        // their own on weft.vxlan (no proto 87; an address outside the cluster CIDRs).
        cli("ip route del 10.244.2.0/24 dev weft.vxlan");
        cli("bridge fdb del 02:00:00:00:03:04 dev weft.vxlan dst 192.0.2.3");
        cli("ip route add 198.51.100.0/24 dev weft.vxlan");
        cli("ip neigh add 198.51.100.7 lladdr 02:aa:00:00:00:07 dev weft.vxlan nud permanent");

        let ops = converge(&mut driver, &desired).await;
        assert_eq!(
            ops,
            [
                Op::ReplaceFdb(fdb(3, Family::V4, "192.0.2.3")),
                Op::ReplaceRoute(route(2, Family::V4)),
            ],
            "exactly what was deleted comes back, FDB before route"
        );
        assert_converged(&mut driver, &desired).await;
        let mut with_theirs = View::expected(&[(2, "192.0.2.2"), (3, "192.0.2.3")]);
        let theirs = "198.51.100.7 lladdr 02:aa:00:00:00:07 dev weft.vxlan PERMANENT";
        with_theirs.neighbours.insert(theirs.to_string());
        assert_eq!(
            View::kernel(),
            with_theirs,
            "the operator's neighbour stays"
        );
        let theirs = json(&["ip", "-j", "route", "show", "198.51.100.0/24"]);
        assert_eq!(theirs.len(), 1, "the operator's route stays: {theirs:?}");
        assert_eq!(text(&theirs[0], "dev"), "weft.vxlan");
    });
}

/// A stale FDB entry made by hand (`bridge fdb append … permanent` leaves the state
/// PERMANENT|NOARP) toward a node that does not exist is seen as weft's, and pruned.
#[test]
fn a_stale_fdb_entry_made_by_hand_is_pruned() {
    in_fresh_netns_async(|| async {
        underlay();
        let mut driver = driver();
        let desired = plan_for(&[peer(2)], &Incumbents::default()).datapath;
        converge(&mut driver, &desired).await;
        cli("bridge fdb append 02:00:00:00:09:04 dev weft.vxlan dst 192.0.2.9 permanent");
        let ops = converge(&mut driver, &desired).await;
        assert_eq!(ops, [Op::DeleteFdb(fdb(9, Family::V4, "192.0.2.9"))]);
        assert_converged(&mut driver, &desired).await;
        assert_eq!(View::kernel(), View::expected(&[(2, "192.0.2.2")]));
    });
}

#[test]
fn a_device_set_down_by_hand_comes_back_up_with_its_entries() {
    in_fresh_netns_async(|| async {
        underlay();
        let mut driver = driver();
        let desired = plan_for(&[peer(2), peer(3)], &Incumbents::default()).datapath;
        converge(&mut driver, &desired).await;
        cli("ip route add 198.51.100.0/24 dev weft.vxlan");

        // Down: the kernel drops the device's routes (the operator's too) and neighbour entries;
        // its FDB entries and address stay. weft brings it up and restores exactly its own.
        cli("ip link set weft.vxlan down");
        let ops = converge(&mut driver, &desired).await;
        assert_eq!(
            ops,
            [
                Op::SetUp(device_name(Family::V4)),
                Op::ReplaceNeighbour(neighbour(2, Family::V4)),
                Op::ReplaceNeighbour(neighbour(3, Family::V4)),
                Op::ReplaceRoute(route(2, Family::V4)),
                Op::ReplaceRoute(route(3, Family::V4)),
            ]
        );
        assert_converged(&mut driver, &desired).await;
        assert_eq!(
            View::kernel(),
            View::expected(&[(2, "192.0.2.2"), (3, "192.0.2.3")])
        );
        let theirs = json(&["ip", "-j", "route", "show", "198.51.100.0/24"]);
        assert!(theirs.is_empty(), "not weft's to restore: {theirs:?}");
    });
}

#[test]
fn a_foreign_link_on_weft_s_name_is_recreated() {
    in_fresh_netns_async(|| async {
        underlay();
        cli("ip link add weft.vxlan type veth peer name x0");
        let mut driver = driver();
        let desired = plan_for(&[peer(2)], &Incumbents::default()).datapath;
        let ops = converge(&mut driver, &desired).await;
        let recreated: Vec<&str> = ops
            .iter()
            .filter_map(|op| match op {
                Op::RecreateDevice { device, reason } => {
                    assert!(reason.contains("vni 0 → 1"), "{reason}");
                    Some(device.name.as_str())
                }
                _ => None,
            })
            .collect();
        assert_eq!(recreated, ["weft.vxlan"], "{ops:#?}");
        assert_converged(&mut driver, &desired).await;
        assert_eq!(View::kernel(), View::expected(&[(2, "192.0.2.2")]));
        let gone = json(&["ip", "-j", "link", "show"]);
        assert!(
            gone.iter().all(|l| text(l, "ifname") != "x0"),
            "the squatter's veth peer went with it"
        );
    });
}
