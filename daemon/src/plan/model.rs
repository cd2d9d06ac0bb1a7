//! The model test every backend runs (`run_model`): random peer changes — joins, moved underlay
//! addresses, new identity claims, departures, impostors copying an accepted peer's pod CIDR,
//! hostile records in the service range — each planned, diffed against a model of the kernel and
//! applied to it with the backend's own [`BackendPlan::model_apply`]. After every step the model
//! equals the plan, a second diff is empty, the refusals and incumbents are exactly the expected
//! ones, and the step cost exactly the operations the backend says it should. At the end a fresh
//! plan from a snapshot of the same peers reaches the same state (snapshot or events, same output).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use weft_proto::lease::Lease;
use weft_proto::names::NodeName;

use super::admission::Incumbents;
use super::{plan, BackendPlan, PlanConfig};

/// What a backend tells the model test about its peers and its costs.
pub trait ModelSubject: BackendPlan {
    /// Peer `k` of a large dual-stack cluster: pods 10.(k/256).(k%256).0/24 and
    /// fd00:10:0:k::/64, underlay address number `ip` ([`underlay_v4`]), identity number
    /// `serial`.
    fn peer(&self, k: u32, ip: u32, serial: u32) -> Lease;
    /// Give `lease` a new identity claim numbered `serial` (for one family, where the backend
    /// has one per family).
    fn new_identity(&self, lease: &mut Lease, serial: u32);
    /// Operations expected for `change` of an accepted peer holding `families` pod CIDRs.
    fn expected_ops(&self, change: Change, families: usize) -> usize;
    /// Operations expected to set up this node alone, from an empty kernel.
    fn expected_start_ops(&self) -> usize;
    /// What must hold between any two operations for traffic to keep flowing (VXLAN: every
    /// route resolves to a MAC the FDB knows); checked after each one. Nothing by default.
    fn check_between_ops(&self, _state: &Self::State, _after: &Self::Op) {}
}

/// A change of one accepted peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Join,
    Move,
    NewIdentity,
    Leave,
}

/// A 64-bit linear congruential generator (Knuth's MMIX constants): enough randomness for choosing
/// changes, and the same sequence on every run.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// The underlay address numbered `n`, in 198.18.0.0/15.
pub fn underlay_v4(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + n)
}

/// The cluster of [`ModelSubject::peer`]: 10.0.0.0/8 and fd00:10::/48, services in 172.20.0.0/16.
pub fn big_config() -> PlanConfig {
    PlanConfig {
        cluster_cidrs: vec![
            "10.0.0.0/8".parse().unwrap(),
            "fd00:10::/48".parse().unwrap(),
        ],
        service_cidrs: vec![
            "172.20.0.0/16".parse().unwrap(),
            "fd00:20::/112".parse().unwrap(),
        ],
        underlay_mtu: 1500,
        mtu: None,
        node_prefix_v4: None,
        node_prefix_v6: None,
        direct_routing: None,
    }
}

/// Diff `model` against `desired`, apply each op to the model (checking what must hold between
/// operations), check it then equals `desired` and a second diff is empty. Returns the ops, as their log lines.
pub fn converge<B: ModelSubject>(
    backend: &B,
    desired: &B::State,
    model: &mut B::State,
) -> Vec<String> {
    let ops = backend.diff(desired, model);
    let lines: Vec<String> = ops.iter().map(|op| op.to_string()).collect();
    for op in &ops {
        backend
            .model_apply(model, op)
            .unwrap_or_else(|e| panic!("{e}\nall ops:\n{}", lines.join("\n")));
        backend.check_between_ops(model, op);
    }
    assert_eq!(model, desired, "ops:\n{}", lines.join("\n"));
    assert!(
        backend.diff(desired, model).is_empty(),
        "a second diff is empty"
    );
    lines
}

/// The cluster as the test drives it.
struct World {
    own: Lease,
    peers: BTreeMap<NodeName, Lease>,
    /// Records copying an accepted peer's pod CIDR: impostor → the peer imitated.
    impostors: BTreeMap<NodeName, (Lease, NodeName)>,
    next: u32,
    bad: usize,
    imitated: usize,
}

impl World {
    fn fresh(&mut self) -> u32 {
        self.next += 1;
        self.next
    }

    fn name(text: String) -> NodeName {
        NodeName::new(text).unwrap()
    }

    /// A random peer and the pod CIDRs it holds (0 for a refused one).
    fn pick(&self, rng: &mut Lcg) -> (NodeName, usize) {
        let i = rng.below(self.peers.len() as u64) as usize;
        let node = self.peers.keys().nth(i).cloned().unwrap();
        let held = match node.as_str().starts_with("bad-") {
            true => 0,
            false => self.peers[&node].pod_cidrs.iter().count(),
        };
        (node, held)
    }

    fn honest(&self) -> Vec<&NodeName> {
        let honest = self
            .peers
            .keys()
            .filter(|n| n.as_str().starts_with("node-"));
        honest.collect()
    }
}

/// One random step on `world`: its name and the operations it should cost.
fn step<B: ModelSubject>(
    backend: &B,
    world: &mut World,
    rng: &mut Lcg,
) -> Option<(&'static str, usize)> {
    let roll = if world.peers.is_empty() {
        0
    } else {
        rng.below(100)
    };
    Some(match roll {
        0..=34 => {
            let n = world.fresh();
            let mut lease = backend.peer(n, n, n);
            match rng.below(5) {
                0 => lease.pod_cidrs.v6 = None,
                1 => lease.pod_cidrs.v4 = None,
                _ => {}
            }
            let ops = backend.expected_ops(Change::Join, lease.pod_cidrs.iter().count());
            world.peers.insert(lease.node.clone(), lease);
            ("join", ops)
        }
        35..=54 => {
            let (node, held) = world.pick(rng);
            let ip = world.fresh();
            world.peers.get_mut(&node).unwrap().public_ips.v4 = Some(underlay_v4(ip));
            ("move", backend.expected_ops(Change::Move, held))
        }
        55..=69 => {
            let (node, held) = world.pick(rng);
            let serial = world.fresh();
            backend.new_identity(world.peers.get_mut(&node).unwrap(), serial);
            (
                "new identity",
                backend.expected_ops(Change::NewIdentity, held),
            )
        }
        70..=89 => {
            // Its impostors go with it (else the first of them would take its place).
            let (node, held) = world.pick(rng);
            world.peers.remove(&node);
            world.impostors.retain(|_, (_, victim)| *victim != node);
            ("leave", backend.expected_ops(Change::Leave, held))
        }
        90..=94 => ("impostor", add_impostor(backend, world, rng)?),
        _ => {
            // A hostile record: pods in the service range. Refused, so nothing changes.
            let n = world.fresh();
            let mut lease = backend.peer(n, n, n);
            lease.pod_cidrs.v4 = Some(format!("172.20.{}.0/24", world.bad % 256).parse().unwrap());
            lease.node = World::name(format!("bad-{}", world.bad));
            world.bad += 1;
            world.peers.insert(lease.node.clone(), lease);
            ("bad", 0)
        }
    })
}

/// An impostor of an accepted peer: its pod CIDRs exactly (a copy of its record under another
/// name) or the upper half of each (a fresh identity and underlay address). Refused: 0 ops.
fn add_impostor<B: ModelSubject>(backend: &B, world: &mut World, rng: &mut Lcg) -> Option<usize> {
    let honest = world.honest();
    if honest.is_empty() {
        return None;
    }
    let victim = world.peers[honest[rng.below(honest.len() as u64) as usize]].clone();
    let mut lease = match rng.below(2) {
        0 => victim.clone(),
        _ => {
            let n = world.fresh();
            let mut lease = backend.peer(n, n, n);
            let half = |n: ipnet::IpNet| n.subnets(n.prefix_len() + 1).unwrap().last().unwrap();
            lease.pod_cidrs.v4 = victim.pod_cidrs.v4.map(|n| match half(n.into()) {
                ipnet::IpNet::V4(h) => h,
                ipnet::IpNet::V6(_) => unreachable!(),
            });
            lease.pod_cidrs.v6 = victim.pod_cidrs.v6.map(|n| match half(n.into()) {
                ipnet::IpNet::V6(h) => h,
                ipnet::IpNet::V4(_) => unreachable!(),
            });
            lease
        }
    };
    lease.node = World::name(format!("imp-{}", world.imitated));
    world.imitated += 1;
    world
        .impostors
        .insert(lease.node.clone(), (lease, victim.node));
    Some(0)
}

/// Run `steps` random changes on `backend` (see the module documentation).
pub fn run_model<B: ModelSubject>(backend: &B, steps: usize) {
    let config = big_config();
    let mut world = World {
        own: backend.peer(1, 1, 1),
        peers: BTreeMap::new(),
        impostors: BTreeMap::new(),
        next: 1,
        bad: 0,
        imitated: 0,
    };
    let mut rng = Lcg(0x005e_ed0f_3eff);
    let mut model = B::State::default();
    let first = plan(backend, &world.own, [], &config, &Incumbents::default()).unwrap();
    let start = converge(backend, &first.datapath, &mut model);
    assert_eq!(start.len(), backend.expected_start_ops(), "{start:#?}");
    let mut incumbents = first.accepted;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for i in 0..steps {
        let Some((kind, expected)) = step(backend, &mut world, &mut rng) else {
            continue;
        };
        let all = world
            .peers
            .values()
            .chain(world.impostors.values().map(|(l, _)| l));
        let planned = plan(backend, &world.own, all, &config, &incumbents).unwrap();
        incumbents = planned.accepted.clone();
        let bad = world
            .peers
            .keys()
            .filter(|n| n.as_str().starts_with("bad-"))
            .count();
        assert_eq!(
            planned.refused.len(),
            bad + world.impostors.len(),
            "step {i}: {:?}",
            planned.refused
        );
        assert_eq!(
            incumbents.nodes().collect::<Vec<_>>(),
            world.honest(),
            "step {i}"
        );
        let ops = converge(backend, &planned.datapath, &mut model);
        assert_eq!(ops.len(), expected, "step {i} ({kind}): {ops:#?}");
        *counts.entry(kind).or_default() += 1;
    }
    snapshot_reaches_the_same_state(backend, &world, &config, &model, &incumbents);
    eprintln!(
        "model test: {counts:?}; {} peers at the end",
        world.peers.len()
    );
}

/// A fresh node given the same peers in one snapshot reaches the model's state; with the
/// impostors too, it knows no incumbent and refuses their victims as well.
fn snapshot_reaches_the_same_state<B: ModelSubject>(
    backend: &B,
    world: &World,
    config: &PlanConfig,
    model: &B::State,
    incumbents: &Incumbents,
) {
    let fresh = plan(
        backend,
        &world.own,
        world.peers.values(),
        config,
        &Incumbents::default(),
    )
    .unwrap();
    let mut from_empty = B::State::default();
    converge(backend, &fresh.datapath, &mut from_empty);
    assert_eq!(&from_empty, model);
    assert_eq!(&fresh.accepted, incumbents);
    if !world.impostors.is_empty() {
        let all = world
            .peers
            .values()
            .chain(world.impostors.values().map(|(l, _)| l));
        let with = plan(backend, &world.own, all, config, &Incumbents::default()).unwrap();
        let victims: BTreeSet<&NodeName> = world.impostors.values().map(|(_, v)| v).collect();
        assert_eq!(
            with.refused.len(),
            fresh.refused.len() + world.impostors.len() + victims.len()
        );
    }
}
