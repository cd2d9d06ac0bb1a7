//! The incremental planner against the full plan, for every backend: random sequences of peer
//! events (joins, departures, moved underlay addresses, new and copied identities, impostors,
//! widened and broken pod CIDRs, hostile records, renames, renewals, this node's own changes),
//! a few at a time; after each update the planner's plan equals [`plan`] with the same
//! incumbents, its operations are exactly the diff of the two full datapaths and take a model of
//! the previous datapath to the new one, and its index equals one rebuilt from the plan (VXLAN
//! also with direct routing on for part of the peers). Then the cases that must take the fast
//! path, and those that must not.

use std::collections::BTreeMap;

use ipnet::IpNet;
use proptest::prelude::*;
use weft_proto::lease::Lease;
use weft_proto::names::NodeName;

use super::claims::ClaimIndex;
use super::{Last, Planner, Update};
use crate::backend::vxlan::Vxlan;
use crate::backend::wireguard::{userspace::Launcher, Implementation, WireGuard, DEFAULT_DEVICE};
use crate::plan::admission::Incumbents;
use crate::plan::model::{big_config, underlay_v4, Change, Lcg, ModelSubject};
use crate::plan::{plan, BackendPlan, Plan, PlanConfig};

fn wireguard() -> WireGuard {
    WireGuard {
        device: weft_proto::names::IfName::new(DEFAULT_DEVICE).unwrap(),
        keepalive: Some(25),
        implementation: Implementation::Userspace,
        keys: Default::default(),
        launcher: Launcher {
            program: "weft-wg".into(),
            threads: 1,
            log: "/dev/null".into(),
            spawn: false,
        },
    }
}

fn name(text: String) -> NodeName {
    NodeName::new(text).unwrap()
}

/// The cluster as a test drives it: this node, its peers by name, the config.
struct World {
    own: Lease,
    peers: BTreeMap<NodeName, Lease>,
    config: PlanConfig,
    next: u32,
}

impl World {
    fn new<B: ModelSubject>(backend: &B, peers: u32) -> World {
        World::with(backend, peers, big_config())
    }

    fn with<B: ModelSubject>(backend: &B, peers: u32, config: PlanConfig) -> World {
        let mut world = World {
            own: backend.peer(1, 1, 1),
            peers: BTreeMap::new(),
            config,
            next: 1,
        };
        for _ in 0..peers {
            world.join(backend, 0);
        }
        world
    }

    fn fresh(&mut self) -> u32 {
        self.next += 1;
        self.next
    }

    /// Peer number `pick` (modulo their count), if any.
    fn nth(&self, pick: u64) -> Option<NodeName> {
        let count = self.peers.len() as u64;
        (count > 0).then(|| self.peers.keys().nth((pick % count) as usize).cloned())?
    }

    /// A fresh honest peer: dual stack, or without IPv6 (`drop` 1) or IPv4 (`drop` 2) pods.
    fn join<B: ModelSubject>(&mut self, backend: &B, drop: u64) -> NodeName {
        let n = self.fresh();
        let mut lease = backend.peer(n, n, n);
        match drop {
            1 => lease.pod_cidrs.v6 = None,
            2 => lease.pod_cidrs.v4 = None,
            _ => {}
        }
        let node = lease.node.clone();
        self.peers.insert(node.clone(), lease);
        node
    }

    fn lease(&mut self, node: &NodeName) -> &mut Lease {
        self.peers.get_mut(node).unwrap()
    }
}

/// One event, from three random numbers (so proptest shrinks them and a fixed generator replays
/// them): mostly the everyday changes, some conflicts and hostile records.
fn event<B: ModelSubject>(backend: &B, world: &mut World, roll: u64, a: u64, b: u64) {
    let (pa, pb) = (world.nth(a), world.nth(b));
    match (roll % 100, pa, pb) {
        (0..=24, _, _) | (_, None, _) => {
            world.join(backend, a % 5);
        }
        (25..=36, Some(p), _) => {
            world.peers.remove(&p);
        }
        (37..=46, Some(p), _) => {
            let ip = world.fresh();
            world.lease(&p).public_ips.v4 = Some(underlay_v4(ip));
        }
        (47..=53, Some(p), _) => {
            let serial = world.fresh();
            backend.new_identity(world.lease(&p), serial);
        }
        (54..=58, _, _) => hostile(backend, world),
        (59..=62, Some(p), _) => world.lease(&p).expires = Some(a),
        (63..=65, _, _) => {}
        (66..=69, Some(p), _) => {
            let bad = format!("172.20.{}.0/24", a % 256).parse().unwrap();
            world.lease(&p).pod_cidrs.v4 = Some(bad);
        }
        (70..=73, Some(p), _) => {
            let n = world.fresh();
            world.lease(&p).pod_cidrs = backend.peer(n, n, n).pod_cidrs;
        }
        (74..=77, Some(p), _) => impostor(backend, world, &p, b.is_multiple_of(2)),
        (78..=80, Some(p), Some(q)) => world.lease(&p).public_ips = world.peers[&q].public_ips,
        (81..=83, Some(p), Some(q)) => world.lease(&p).backend = world.peers[&q].backend,
        (84..=85, Some(p), _) => widen(world.lease(&p)),
        (86..=89, Some(p), _) => {
            let mut lease = world.peers.remove(&p).unwrap();
            lease.node = name(format!("ren-{}", world.fresh()));
            world.peers.insert(lease.node.clone(), lease);
        }
        (90..=91, _, _) => world.own.public_ips.v4 = Some(underlay_v4(1_000_000 + a as u32 % 1000)),
        (92..=93, _, _) => {
            world.config.mtu = a.is_multiple_of(2).then_some(1300 + (b % 100) as u32)
        }
        (94..=95, _, _) => {
            // A record carrying this node's own name: refused on its own checks.
            let n = world.fresh();
            let mut lease = backend.peer(n, n, n);
            lease.node = world.own.node.clone();
            world.peers.insert(lease.node.clone(), lease);
        }
        _ => world.own.expires = Some(a),
    }
}

/// A record with pods in the service range: refused on its own checks.
fn hostile<B: ModelSubject>(backend: &B, world: &mut World) {
    let n = world.fresh();
    let mut lease = backend.peer(n, n, n);
    lease.pod_cidrs.v4 = Some(format!("172.20.{}.0/24", n % 256).parse().unwrap());
    lease.node = name(format!("bad-{n}"));
    world.peers.insert(lease.node.clone(), lease);
}

/// A record under a new name claiming `victim`'s pod CIDRs: a copy of its record (`exact`), or
/// the upper half of each of its pod CIDRs with an identity and an underlay address of its own.
fn impostor<B: ModelSubject>(backend: &B, world: &mut World, victim: &NodeName, exact: bool) {
    let n = world.fresh();
    let mut lease = match exact {
        true => world.peers[victim].clone(),
        false => backend.peer(n, n, n),
    };
    if !exact {
        let victim = &world.peers[victim];
        let half = |net: IpNet| net.subnets(net.prefix_len() + 1).unwrap().last().unwrap();
        lease.pod_cidrs.v4 = victim.pod_cidrs.v4.map(|net| match half(net.into()) {
            IpNet::V4(h) => h,
            IpNet::V6(_) => unreachable!(),
        });
        lease.pod_cidrs.v6 = victim.pod_cidrs.v6.map(|net| match half(net.into()) {
            IpNet::V6(h) => h,
            IpNet::V4(_) => unreachable!(),
        });
    }
    lease.node = name(format!("imp-{n}"));
    world.peers.insert(lease.node.clone(), lease);
}

/// Its IPv4 pod CIDR grows to the /16 around it, over its neighbours' (or it gets one).
fn widen(lease: &mut Lease) {
    let v4 = lease.pod_cidrs.v4.unwrap_or("10.0.0.0/24".parse().unwrap());
    lease.pod_cidrs.v4 = Some(ipnet::Ipv4Net::new(v4.network(), 16).unwrap().trunc());
}

/// How one update went.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Paths {
    fast: usize,
    full: usize,
}

/// The reference: the full plan of `world` after `previous`, and the checks of the planner's
/// update against it (see the module documentation). Returns the new reference.
fn check<B: ModelSubject>(
    backend: &B,
    planner: &mut Planner<B>,
    world: &World,
    previous: Option<&Plan<B::State>>,
    paths: &mut Paths,
) -> Plan<B::State> {
    let update = planner
        .update(backend, &world.own, world.peers.values(), &world.config)
        .unwrap();
    let incumbents = previous.map(|p| p.accepted.clone()).unwrap_or_default();
    let full = plan(
        backend,
        &world.own,
        world.peers.values(),
        &world.config,
        &incumbents,
    )
    .unwrap();
    let got = planner.plan().unwrap();
    assert_eq!(got.refused, full.refused, "refused");
    assert_eq!(got.accepted, full.accepted, "accepted");
    assert_eq!(got.datapath, full.datapath, "datapath");
    let before = previous.map(|p| p.datapath.clone());
    match update {
        Update::Incremental(ops) => {
            paths.fast += 1;
            let mut model = before.expect("an incremental update has a previous plan");
            assert_eq!(
                ops,
                backend.diff(&full.datapath, &model),
                "ops = the full diff"
            );
            for op in &ops {
                backend.model_apply(&mut model, op).unwrap();
            }
            assert_eq!(
                model, full.datapath,
                "ops take the previous datapath to the new"
            );
        }
        Update::Full { previous } => {
            paths.full += 1;
            assert_eq!(previous, before, "the previous datapath, as it was");
        }
    }
    check_state(backend, planner, world);
    full
}

/// The planner's kept state equals the state rebuilt from its plan and the inputs.
fn check_state<B: BackendPlan>(backend: &B, planner: &Planner<B>, world: &World) {
    let last = planner.last.as_ref().unwrap();
    let peers: Vec<&Lease> = world.peers.values().collect();
    let rebuilt = Last::new(
        backend,
        &world.own,
        &peers,
        &world.config,
        last.plan.clone(),
    );
    assert_eq!(last.claims, rebuilt.claims, "the claim index");
    assert_eq!(last.conflicted, rebuilt.conflicted, "conflicted");
    assert_eq!(
        last.peers.keys().collect::<Vec<_>>(),
        world.peers.keys().collect::<Vec<_>>()
    );
}

/// [`big_config`] with direct routing on (where the backend has it): peers whose underlay
/// address is one of the first 64 are on the underlay interface's subnet, the others (and those
/// that move) are not.
fn direct_config() -> PlanConfig {
    PlanConfig {
        direct_routing: Some(crate::plan::DirectRouting {
            iface: weft_proto::names::IfName::new("eth1").unwrap(),
            subnets: vec![
                "198.18.0.0/26".parse().unwrap(),
                "2001:db8::/122".parse().unwrap(),
            ],
        }),
        ..big_config()
    }
}

/// Run `steps` (each a few events, as three numbers each) from a cluster of `start` peers.
fn run<B: ModelSubject>(backend: &B, start: u32, steps: &[Vec<(u64, u64, u64)>]) -> Paths {
    run_with(backend, big_config(), start, steps)
}

/// [`run`] with `config`.
fn run_with<B: ModelSubject>(
    backend: &B,
    config: PlanConfig,
    start: u32,
    steps: &[Vec<(u64, u64, u64)>],
) -> Paths {
    let mut world = World::with(backend, start, config);
    let mut planner = Planner::new();
    let mut paths = Paths::default();
    let mut reference = check(backend, &mut planner, &world, None, &mut paths);
    for events in steps {
        for &(roll, a, b) in events {
            match roll {
                // The operator removes every record refused (false records, broken nodes).
                HEAL => world.peers.retain(|n, _| refusal(&reference, n).is_none()),
                _ => event(backend, &mut world, roll, a, b),
            }
        }
        reference = check(backend, &mut planner, &world, Some(&reference), &mut paths);
    }
    paths
}

/// The roll of the event that removes every peer the last plan refused.
const HEAL: u64 = 100;

/// The refusal of `node` in `plan`, if any.
fn refusal<'p, S>(plan: &'p Plan<S>, node: &NodeName) -> Option<&'p str> {
    let found = plan.refused.iter().find(|r| r.node == *node);
    found.map(|r| r.reason.as_str())
}

/// A fixed random walk of `count` steps, one to three events each, healed one step in eight.
fn walk(seed: u64, count: usize) -> Vec<Vec<(u64, u64, u64)>> {
    let mut rng = Lcg(seed);
    (0..count)
        .map(|_| {
            if rng.below(8) == 0 {
                return vec![(HEAL, 0, 0)];
            }
            let events = if rng.below(10) == 0 { 3 } else { 1 };
            (0..events)
                .map(|_| (rng.below(100), rng.below(1 << 20), rng.below(1 << 20)))
                .collect()
        })
        .collect()
}

#[test]
fn vxlan_random_walk_equals_the_full_plan_and_takes_both_paths() {
    let paths = run(&Vxlan, 20, &walk(0x1ec0_0017, 600));
    eprintln!("{paths:?}");
    assert!(paths.fast >= 150 && paths.full >= 30, "{paths:?}");
}

#[test]
fn wireguard_random_walk_equals_the_full_plan_and_takes_both_paths() {
    let paths = run(&wireguard(), 20, &walk(0x1ec0_0018, 600));
    eprintln!("{paths:?}");
    assert!(paths.fast >= 150 && paths.full >= 30, "{paths:?}");
}

#[test]
fn vxlan_with_direct_routing_random_walk_equals_the_full_plan() {
    let paths = run_with(&Vxlan, direct_config(), 20, &walk(0x1ec0_0019, 400));
    assert!(paths.fast >= 100 && paths.full >= 20, "{paths:?}");
}

fn steps() -> impl Strategy<Value = Vec<Vec<(u64, u64, u64)>>> {
    let event = (0..=HEAL, any::<u64>(), any::<u64>());
    proptest::collection::vec(proptest::collection::vec(event, 1..=3), 1..40)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn vxlan_incremental_plan_equals_the_full_plan(start in 0..12u32, steps in steps()) {
        run(&Vxlan, start, &steps);
    }

    #[test]
    fn vxlan_with_direct_routing_incremental_plan_equals_the_full_plan(
        start in 0..12u32,
        steps in steps(),
    ) {
        run_with(&Vxlan, direct_config(), start, &steps);
    }

    #[test]
    fn wireguard_incremental_plan_equals_the_full_plan(start in 0..12u32, steps in steps()) {
        run(&wireguard(), start, &steps);
    }
}

/// An update and the plan after it.
type Outcome<B> = (
    Update<<B as BackendPlan>::State, <B as BackendPlan>::Op>,
    Plan<<B as BackendPlan>::State>,
);

/// 100 peers planned, then `change` on a peer: the update and the plan after it.
fn one_change<B: ModelSubject>(backend: &B, change: impl FnOnce(&mut World)) -> Outcome<B> {
    let mut world = World::new(backend, 100);
    let mut planner = Planner::new();
    let mut paths = Paths::default();
    let before = check(backend, &mut planner, &world, None, &mut paths);
    change(&mut world);
    let update = planner
        .update(backend, &world.own, world.peers.values(), &world.config)
        .unwrap();
    check_state(backend, &planner, &world);
    let after = planner.plan().unwrap().clone();
    if let Update::Incremental(ops) = &update {
        assert_eq!(ops, &backend.diff(&after.datapath, &before.datapath));
    }
    (update, after)
}

fn assert_fast<S, O>(update: &Update<S, O>, ops: usize) {
    match update {
        Update::Incremental(done) => assert_eq!(done.len(), ops),
        Update::Full { .. } => panic!("planned in full"),
    }
}

fn fast_path_for_everyday_changes<B: ModelSubject>(backend: &B) {
    let node = |k: u32| name(format!("node-{k}"));
    let (joined, _) = one_change(backend, |w| {
        w.join(backend, 0);
    });
    assert_fast(&joined, backend.expected_ops(Change::Join, 2));
    let (left, plan) = one_change(backend, |w| {
        w.peers.remove(&node(50));
    });
    assert_fast(&left, backend.expected_ops(Change::Leave, 2));
    assert!(!plan.accepted.nodes().any(|n| *n == node(50)));
    let (moved, _) = one_change(backend, |w| {
        w.lease(&node(7)).public_ips.v4 = Some(underlay_v4(9_999));
    });
    assert_fast(&moved, backend.expected_ops(Change::Move, 2));
    let (renewed, _) = one_change(backend, |w| {
        backend.new_identity(w.lease(&node(9)), 9_999);
    });
    assert_fast(&renewed, backend.expected_ops(Change::NewIdentity, 2));
    let (hostile_joined, plan) = one_change(backend, |w| hostile(backend, w));
    assert_fast(&hostile_joined, 0);
    assert_eq!(plan.refused.len(), 1, "{:?}", plan.refused);
    let (own_renewed, _) = one_change(backend, |w| w.own.expires = Some(12));
    assert_fast(&own_renewed, 0);
}

#[test]
fn vxlan_fast_path_for_a_join_a_leave_a_move_a_new_identity_and_a_hostile_record() {
    fast_path_for_everyday_changes(&Vxlan);
}

#[test]
fn wireguard_fast_path_for_a_join_a_leave_a_move_a_new_identity_and_a_hostile_record() {
    fast_path_for_everyday_changes(&wireguard());
}

/// An impostor falls back to the full plan, and so does every update while it is refused for
/// the conflict; once it is gone, the fast path is back.
fn conflicts_fall_back<B: ModelSubject>(backend: &B) {
    let mut world = World::new(backend, 30);
    let mut planner = Planner::new();
    let mut paths = Paths::default();
    let mut reference = check(backend, &mut planner, &world, None, &mut paths);
    let victim = name("node-12".to_string());
    let mut step = |world: &World, paths: &mut Paths| {
        let before = *paths;
        reference = check(backend, &mut planner, world, Some(&reference), paths);
        (paths.fast - before.fast, paths.full - before.full)
    };
    impostor(backend, &mut world, &victim, true);
    assert_eq!(step(&world, &mut paths), (0, 1), "an impostor joins");
    world.join(backend, 0);
    assert_eq!(
        step(&world, &mut paths),
        (0, 1),
        "a join while it is refused"
    );
    world.peers.retain(|n, _| !n.as_str().starts_with("imp-"));
    assert_eq!(step(&world, &mut paths), (0, 1), "it leaves");
    world.join(backend, 0);
    assert_eq!(step(&world, &mut paths), (1, 0), "the next join");
    let moved_onto = world.peers[&victim].public_ips;
    world.lease(&name("node-13".to_string())).public_ips = moved_onto;
    assert_eq!(
        step(&world, &mut paths),
        (0, 1),
        "a peer moves onto another's address"
    );
}

#[test]
fn vxlan_conflicts_fall_back_to_the_full_plan() {
    conflicts_fall_back(&Vxlan);
}

#[test]
fn wireguard_conflicts_fall_back_to_the_full_plan() {
    conflicts_fall_back(&wireguard());
}

#[test]
fn peers_out_of_name_order_or_named_twice_plan_in_full() {
    let world = World::new(&Vxlan, 12);
    let mut planner = Planner::new();
    let backwards: Vec<&Lease> = world.peers.values().rev().collect();
    for _ in 0..2 {
        let update = planner.update(&Vxlan, &world.own, backwards.iter().copied(), &world.config);
        assert!(matches!(update, Ok(Update::Full { .. })));
    }
    let reference = plan(
        &Vxlan,
        &world.own,
        backwards.iter().copied(),
        &world.config,
        &Incumbents::default(),
    )
    .unwrap();
    assert_eq!(planner.plan().unwrap().accepted, reference.accepted);
    let twice: Vec<&Lease> = world
        .peers
        .values()
        .chain(world.peers.values().take(1))
        .collect();
    for _ in 0..2 {
        let update = planner.update(&Vxlan, &world.own, twice.iter().copied(), &world.config);
        assert!(matches!(update, Ok(Update::Full { .. })));
    }
    assert_eq!(planner.plan().unwrap().refused.len(), 2);
}

#[test]
fn an_own_lease_that_cannot_be_planned_keeps_the_last_plan() {
    let mut world = World::new(&Vxlan, 5);
    let mut planner = Planner::new();
    planner
        .update(&Vxlan, &world.own, world.peers.values(), &world.config)
        .unwrap();
    let kept = planner.plan().unwrap().clone();
    let good = world.own.clone();
    world.own.public_ips = Default::default();
    let failed = planner.update(&Vxlan, &world.own, world.peers.values(), &world.config);
    assert!(failed.is_err());
    assert_eq!(planner.plan(), Some(&kept));
    world.own = good;
    world.join(&Vxlan, 0);
    let update = planner.update(&Vxlan, &world.own, world.peers.values(), &world.config);
    assert_fast(&update.unwrap(), 6);
}

#[test]
fn the_index_finds_an_overlap_behind_ignored_claims() {
    let mut world = World::new(&Vxlan, 0);
    let (a, b) = (world.join(&Vxlan, 0), world.join(&Vxlan, 0));
    let mut planner = Planner::new();
    planner
        .update(&Vxlan, &world.own, world.peers.values(), &world.config)
        .unwrap();
    let last = planner.last.as_ref().unwrap();
    let mut wide = world.peers[&a].clone();
    widen(&mut wide);
    wide.node = name("wide".to_string());
    wide.public_ips.v4 = Some(underlay_v4(77_777));
    Vxlan.new_identity(&mut wide, 77_777);
    wide.pod_cidrs.v6 = None;
    let admitted = crate::plan::admission::Admitted {
        lease: &wide,
        entries: vec![(
            crate::plan::Family::V4,
            wide.pod_cidrs.v4.unwrap().into(),
            crate::plan::admission::Identity("x".to_string()),
        )],
        underlay: wide.public_ips.v4.unwrap().into(),
    };
    // The /16 covers both /24s: with either ignored, the other is still found.
    assert_eq!(
        last.claims.collision(&admitted, &|n| *n == b),
        Some(a.clone())
    );
    assert_eq!(
        last.claims.collision(&admitted, &|n| *n == a),
        Some(b.clone())
    );
    assert_eq!(
        last.claims.collision(&admitted, &|n| *n == a || *n == b),
        None
    );
    let mut empty = ClaimIndex::default();
    assert!(empty.is_empty());
    empty.insert(&admitted);
    empty.remove(&admitted);
    assert!(empty.is_empty());
}

#[test]
fn changes_merge_the_two_name_orders() {
    let world = World::new(&Vxlan, 6);
    let old: BTreeMap<NodeName, Lease> = world.peers.clone();
    let leases: Vec<Lease> = world.peers.values().cloned().collect();
    let names = |changed: Vec<super::Changed>| -> Vec<(String, bool)> {
        let named = changed.into_iter();
        named
            .map(|(n, new)| (n.to_string(), new.is_some()))
            .collect()
    };
    let same: Vec<&Lease> = leases.iter().collect();
    assert_eq!(names(super::changes(&old, &same).unwrap()), []);
    // The first and the last gone, one renewed only, one moved, one new after all the others.
    let mut renewed = leases[2].clone();
    renewed.expires = Some(99);
    let mut moved = leases[3].clone();
    moved.public_ips.v4 = Some(underlay_v4(4_242));
    let mut last = leases[0].clone();
    last.node = name("zz".to_string());
    let new = [&leases[1], &renewed, &moved, &leases[4], &last];
    let expected = [
        (leases[0].node.to_string(), false),
        (leases[3].node.to_string(), true),
        (leases[5].node.to_string(), false),
        ("zz".to_string(), true),
    ];
    assert_eq!(names(super::changes(&old, &new).unwrap()), expected);
    assert!(super::changes(&old, &[&leases[1], &leases[0]]).is_none());
    assert!(super::changes(&old, &[&leases[1], &leases[1]]).is_none());
}
